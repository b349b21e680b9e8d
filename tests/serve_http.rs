//! The dashboard's HTTP surface without a browser: the daemon follows a
//! short simulated run with the dashboard on an ephemeral port, and raw
//! HTTP/1.1 requests over a `TcpStream` check every route — the page, the
//! server-sent events (snapshot first, then each message in order, a clean
//! end when the session stops), `/api/state`, `/metrics` (counters and
//! per-stage histograms), the image routes and their refusal of anything
//! outside their folder. A second test forces a slow client to lag and
//! checks it is told and re-synced.
//!
//! Waits are on the pipeline's own events or the stream's; no sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boldstream::config::Config;
use boldstream::ingest::IngestConfig;
use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::serve::ServeConfig;
use boldstream::tools::simulate::faults::FaultPlan;
use boldstream::tools::simulate::synth::{SynthSeries, SynthSpec};
use boldstream::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use boldstream::types::messages::{IngestEvent, PipelineEvent};
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(120);
const VOLUMES: usize = 12;
const DROPPED: usize = 5;
/// The stages every volume is timed in.
const STAGES: [&str; 5] = ["read", "reorder", "queue", "realign", "volume"];

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One request, sent as written (no normalisation of the path, unlike
/// an HTTP client), on its own connection.
fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete header");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut reply = Reply {
        status,
        headers: head,
        body: raw[split + 4..].to_vec(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut r = BufReader::new(&reply.body[..]);
        let mut body = Vec::new();
        while let Some(chunk) = read_chunk(&mut r) {
            body.extend(chunk);
        }
        reply.body = body;
    }
    reply
}

/// The next chunk of a chunked body; `None` after the last (empty) one.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    r.read_line(&mut line).expect("a chunk header");
    let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
    let mut chunk = vec![0; size + 2];
    r.read_exact(&mut chunk).expect("a whole chunk");
    chunk.truncate(size);
    (size > 0).then_some(chunk)
}

/// One server-sent event.
#[derive(Debug, Default)]
struct Sse {
    event: Option<String>,
    id: Option<u64>,
    data: String,
}

/// A raw `/events` connection.
struct Events {
    r: BufReader<TcpStream>,
    pending: String,
    ended: bool,
}

impl Events {
    fn open(addr: SocketAddr) -> Events {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(GUARD)).unwrap();
        write!(
            s,
            "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        Events {
            r,
            pending: String::new(),
            ended: false,
        }
    }

    /// The next event (keep-alive comments skipped); `None` once the
    /// server has ended the stream cleanly.
    fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut ev = Sse::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if ev.event.is_none() && ev.data.is_empty() {
                    continue; // a comment
                }
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match read_chunk(&mut self.r) {
                Some(c) => self.pending.push_str(&String::from_utf8(c).unwrap()),
                None => self.ended = true,
            }
        }
    }
}

fn config(root: &Path) -> Config {
    let mut ingest = IngestConfig::new(root.join("export"));
    ingest.naming = "bids".into();
    ingest.volumes_per_run = Some(VOLUMES as u32);
    ingest.gap_timeout = 0.5;
    ingest.partial_timeout = 0.6;
    ingest.retry_interval = 0.02;
    ingest.poll_interval = 0.05;
    Config {
        serve: ServeConfig {
            http: Some("127.0.0.1:0".into()),
            stimuli: Some(root.join("stimuli")),
            ..Default::default()
        },
        ..Config::embedded(ingest, &root.join("session"))
    }
}

#[test]
fn every_route_answers_and_the_event_stream_follows_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for d in ["export", "stimuli"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let stim = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/demo/bank/images/stim-0001.png"),
    )
    .unwrap();
    std::fs::write(root.join("stimuli/stim-0001.png"), &stim).unwrap();
    // Beside the stimuli folder: what a traversal would be after.
    std::fs::write(root.join("secret.png"), b"SECRET").unwrap();

    let (obs, events) = crossbeam_channel::unbounded();
    let pipeline = Pipeline::start(&config(root), "# test\n", PipelineOptions::observed_by(obs))
        .expect("pipeline starts");
    let addr = pipeline.http_addr().expect("the dashboard is served");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // The stream opens before the run: the snapshot is empty.
    let mut sse = Events::open(addr);
    let first = sse.next().unwrap();
    assert_eq!(first.event.as_deref(), Some("snapshot"));
    let snap: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap["counts"]["received"], 0);
    assert_eq!(snap["runs"], serde_json::json!([]));
    assert_eq!(snap["stimuli"], true);
    let mut last_id = snap["seq"].as_u64().unwrap();

    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("boldstream_clients{surface=\"sse\"} 1"),
        "{metrics}"
    );

    // One run, one volume dropped.
    let series = SynthSeries::new(SynthSpec {
        runs: 1,
        volumes_per_run: VOLUMES,
        seed: 5,
        ..SynthSpec::default()
    })
    .unwrap();
    let plan = FaultPlan::parse(&format!("drop={DROPPED}")).unwrap();
    let writer = ScanWriter::new(
        root.join("export"),
        WriterOptions {
            pace: Pace::Interval(Duration::from_millis(20)),
            truth: TruthLocation::Dir(root.join("truth")),
            ..WriterOptions::default()
        },
    );
    std::thread::scope(|s| {
        let w = s.spawn(|| writer.run(&series, &plan));
        let deadline = Instant::now() + GUARD;
        loop {
            let ev = events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the run ends in time");
            if matches!(ev, PipelineEvent::Ingest(IngestEvent::RunEnded { .. })) {
                break;
            }
        }
        w.join().unwrap().expect("the simulator wrote the run");
    });
    let good = VOLUMES - 1;

    // The stream: every message in order, ids consecutive.
    let (mut volumes, mut missing, mut started, mut ended) = (Vec::new(), 0, false, false);
    while !ended {
        let ev = sse.next().expect("the stream carries the run");
        assert_eq!(ev.event, None, "{ev:?}");
        let id = ev.id.expect("messages carry their sequence number");
        assert_eq!(id, last_id + 1, "{ev:?}");
        last_id = id;
        let m: Value = serde_json::from_str(&ev.data).unwrap();
        match m["type"].as_str().unwrap() {
            "volume" => volumes.push(m),
            "ingest" if m["event"] == "missing" => {
                assert_eq!(m["index"], DROPPED);
                missing += 1;
            }
            "run" if m["status"] == "started" => started = true,
            "run" if m["status"] == "ended" => ended = true,
            _ => {}
        }
    }
    assert!(started);
    assert_eq!(missing, 1);
    assert_eq!(volumes.len(), good);
    let v = &volumes[1];
    assert_eq!(v["run"], 1);
    assert_eq!(v["motion"].as_array().unwrap().len(), 6);
    assert!(v["fd"].is_number() && v["dvars"].is_number(), "{v}");
    for k in [
        "read_ms",
        "reorder_ms",
        "queue_ms",
        "realign_ms",
        "total_ms",
    ] {
        assert!(v["latency"][k].as_f64().unwrap() >= 0.0, "{k}: {v}");
    }

    // /api/state: the same session, whole.
    let state = get(addr, "/api/state");
    assert_eq!(state.status, 200);
    assert_eq!(
        state.header("content-type").as_deref(),
        Some("application/json")
    );
    let st: Value = serde_json::from_slice(&state.body).unwrap();
    assert_eq!(st["counts"]["received"], good);
    assert_eq!(st["counts"]["missing"], 1);
    assert_eq!(st["fd_threshold_mm"], 0.5);
    assert_eq!(st["seq"], last_id);
    assert_eq!(st["volumes"].as_array().unwrap().len(), good);
    assert_eq!(st["ingest"][0]["event"], "missing");
    let run = &st["runs"][0];
    assert_eq!(run["run"], 1);
    assert_eq!(run["status"], "ended");
    assert_eq!(run["volumes"], good);
    assert_eq!(run["missing"], 1);
    assert_eq!(run["last_index"], VOLUMES - 1);
    for k in ["trials", "notices"] {
        assert!(st[k].is_array(), "{k}");
    }

    // /metrics: counters, and a histogram per volume stage with every
    // volume in it.
    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        m.header("content-type")
    );
    let text = m.text();
    for line in [
        format!("boldstream_volumes_total{{status=\"realigned\"}} {good}"),
        "boldstream_volumes_total{status=\"missing\"} 1".to_string(),
        "boldstream_runs_total 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    for stage in STAGES {
        let count = format!("boldstream_stage_seconds_count{{stage=\"{stage}\"}} {good}");
        assert!(text.lines().any(|l| l == count), "no `{count}` in\n{text}");
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("boldstream_stage_seconds_bucket{le="))
            .filter(|l| l.contains(&format!("stage=\"{stage}\"")))
            .count();
        assert!(buckets >= 10, "{stage}: {buckets} buckets in\n{text}");
        let inf =
            format!("boldstream_stage_seconds_bucket{{le=\"+Inf\",stage=\"{stage}\"}} {good}");
        assert!(text.lines().any(|l| l == inf), "no `{inf}` in\n{text}");
    }

    // The page: self-contained, live by server push.
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text();
    assert!(html.contains("new EventSource(\"/events\")"));
    // Nothing from elsewhere: no absolute URLs at all.
    assert!(!html.contains("http://") && !html.contains("https://"));

    // Images: served from their folders, never from outside them.
    let recon_dir = root.join("session/results");
    std::fs::write(recon_dir.join("run-01_trial-002.png"), &stim).unwrap();
    let r = get(addr, "/recon/run-01_trial-002.png");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(r.body, stim);
    let s = get(addr, "/stimulus/stim-0001.png");
    assert_eq!((s.status, &s.body), (200, &stim));
    let absent = get(addr, "/recon/run-01_trial-009.png");
    assert_eq!(absent.status, 404);
    assert!(
        absent
            .text()
            .contains("no reconstruction run-01_trial-009.png")
    );
    for path in [
        "/recon/../../../../etc/passwd",
        "/recon/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/recon/..%2Fsecret.png",
        "/recon/%2e%2e%2Fsecret.png",
        "/recon/run-01_trial-002.png%2F..%2F..%2F..%2Fsecret.png",
        "/stimulus/..%2Fsecret.png",
        "/stimulus/../secret.png",
        "/stimulus/%2e%2e%2fsecret.png",
        "/stimulus/.hidden.png",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{path}");
        let body = r.text();
        assert!(
            !body.contains("SECRET") && !body.contains("root:"),
            "{path}: {body}"
        );
        assert!(body.starts_with("not found"), "{path}: {body}");
    }
    let nope = get(addr, "/nope");
    assert_eq!(nope.status, 404);
    assert!(nope.text().contains("not found: /nope"), "{}", nope.text());
    assert!(nope.text().contains("/api/state"));

    // Stopping the session ends the stream cleanly (its last chunk), not
    // with a broken connection.
    let summary = pipeline.stop();
    assert_eq!(summary.realigned as usize, good);
    while let Some(ev) = sse.next() {
        assert_eq!(ev.event, None, "only messages after the run: {ev:?}");
    }
    assert!(sse.ended);
}

#[tokio::test]
async fn a_client_that_falls_behind_is_told_and_resynced() {
    use boldstream::serve::http::{FeedItem, feed};
    use boldstream::serve::{Hub, HubConfig};
    use futures_util::StreamExt;

    let tmp = tempfile::tempdir().unwrap();
    let (hub, handle, requests) = Hub::new(HubConfig {
        session_dir: tmp.path().to_path_buf(),
        fd_threshold_mm: 0.5,
        results_dir: None,
        stimuli: None,
        history: 100,
        backlog: 16,
    })
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let thread = std::thread::spawn(move || hub.run(rx, requests));

    let stream = feed(handle.clone()).await.unwrap();
    let mut stream = Box::pin(stream);
    let clients = handle.metrics.clients("sse");
    assert_eq!(clients.get(), 1);

    // 40 messages while the client reads nothing; a second subscriber
    // tells when the hub has published them all.
    let mut watch = handle.stream();
    for i in 1..=40 {
        tx.send(Arc::new(PipelineEvent::Notice(format!("notice {i}"))))
            .unwrap();
    }
    loop {
        match watch.recv().await {
            Ok(p) if p.seq == 40 => break,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }

    let Some(FeedItem::Snapshot(s)) = stream.next().await else {
        panic!("the snapshot comes first")
    };
    assert_eq!(serde_json::from_str::<Value>(&s).unwrap()["seq"], 0);
    // The channel keeps 16: the client missed 24, is told, and gets a
    // snapshot holding all 40.
    match stream.next().await {
        Some(FeedItem::Lagged(n)) => assert_eq!(n, 24),
        other => panic!("expected a lag, got {other:?}"),
    }
    let Some(FeedItem::Snapshot(s)) = stream.next().await else {
        panic!("a fresh snapshot follows the lag")
    };
    let snap: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(snap["seq"], 40);
    assert_eq!(snap["notices"].as_array().unwrap().len(), 40);
    assert!(
        handle
            .metrics
            .encode()
            .contains("boldstream_feed_dropped_total{surface=\"sse\"} 24")
    );

    // Then live again, from the next message on.
    tx.send(Arc::new(PipelineEvent::Notice("notice 41".into())))
        .unwrap();
    match stream.next().await {
        Some(FeedItem::Message(p)) => {
            assert_eq!(p.seq, 41);
            assert!(p.json.contains("notice 41"));
        }
        other => panic!("expected message 41, got {other:?}"),
    }

    // The session ends: the stream ends, and the client is no longer counted.
    drop(tx);
    thread.join().unwrap();
    assert!(stream.next().await.is_none());
    drop(stream);
    assert_eq!(clients.get(), 0);
}
