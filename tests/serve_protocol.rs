//! The feedback protocol for stimulus programs, from the client's side.
//!
//! Most tests drive a hub directly with crafted pipeline events (fast, and
//! every message is known in advance); the last runs the whole daemon on a
//! simulated decoding session with the demo model, with subscribers, a
//! slow and a vanishing client, UDP targets and a result-file poller
//! beside it.
//!
//! Waits are reads with deadlines; the guards only fail the test.

#[path = "common/session.rs"]
mod session;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::serve::feed::Topic;
use boldstream::serve::metrics::SurfaceLabel;
use boldstream::serve::protocol::{MAX_LINE, TcpOptions, start_tcp_with, start_udp};
use boldstream::serve::{Hub, HubConfig, HubHandle};
use boldstream::types::messages::{
    FeedbackSample, FeedbackValue, IngestEvent, IngestTiming, PipelineEvent, RealignedVolume,
    TrialDecoded, VolumeKey,
};
use boldstream::types::transform::MotionParams;
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(120);

fn deadline() -> Instant {
    Instant::now() + GUARD
}

// ---------------------------------------------------------------- clients

/// A line-protocol client with deadlines on every read.
struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::from(TcpStream::connect(addr).expect("connect"))
    }

    fn from(stream: TcpStream) -> Client {
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone the socket")),
            stream,
        }
    }

    /// A client whose socket is set up by `configure` before connecting.
    fn connect_via(addr: SocketAddr, configure: impl FnOnce(&tokio::net::TcpSocket)) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            configure(&s);
            s.connect(addr).await.unwrap().into_std().unwrap()
        });
        stream.set_nonblocking(false).unwrap();
        Client::from(stream)
    }

    /// A client whose receive buffer is as small as the kernel allows, so
    /// a client that does not read fills up quickly.
    fn connect_small(addr: SocketAddr) -> Client {
        Client::connect_via(addr, |s| s.set_recv_buffer_size(4096).unwrap())
    }

    fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next line; `None` once the daemon closed the connection.
    fn line(&mut self, until: Instant) -> Option<String> {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no line before the deadline");
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end().to_string()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no line before the deadline")
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                None
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    fn json(&mut self, until: Instant) -> Option<Value> {
        self.line(until)
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
    }

    /// Send a request; its reply (feed lines before it are skipped).
    fn request(&mut self, line: &str) -> Value {
        self.send(line);
        self.reply()
    }

    fn reply(&mut self) -> Value {
        let until = deadline();
        loop {
            let v = self
                .json(until)
                .expect("a reply before the connection closed");
            if v.get("ok").is_some() {
                return v;
            }
        }
    }

    /// Feed messages until one matches `stop` (included).
    fn feed_until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let until = deadline();
        let mut out = Vec::new();
        loop {
            let v = self.json(until).expect("the feed ended early");
            let done = stop(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }

    /// The bytes left until the daemon closes the connection (a connection
    /// cut mid-write may end in part of a line).
    fn raw_rest(&mut self) -> String {
        let until = deadline();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "not closed before the deadline");
            self.stream.set_read_timeout(Some(left)).unwrap();
            match std::io::Read::read(&mut self.reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("not closed before the deadline")
                }
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Everything until the daemon closes the connection.
    fn rest(&mut self) -> Vec<Value> {
        let until = deadline();
        std::iter::from_fn(|| self.json(until)).collect()
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    v["type"] == t
}

// ---------------------------------------------------------------- a hub

struct Served {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    hub: HubHandle,
    events: Option<crossbeam_channel::Sender<Arc<PipelineEvent>>>,
    thread: Option<std::thread::JoinHandle<u64>>,
    _tmp: tempfile::TempDir,
}

fn serve(backlog: usize, options: TcpOptions) -> Served {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, handle, requests) = Hub::new(HubConfig {
        session_dir: tmp.path().to_path_buf(),
        fd_threshold_mm: 0.5,
        results_dir: Some(tmp.path().join("results")),
        stimuli: None,
        history: 100,
        backlog,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = start_tcp_with(&rt, "127.0.0.1:0", handle.clone(), options).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(64);
    let thread = std::thread::spawn(move || hub.run(rx, requests));
    Served {
        rt: Some(rt),
        addr,
        hub: handle,
        events: Some(tx),
        thread: Some(thread),
        _tmp: tmp,
    }
}

impl Served {
    fn send(&self, ev: PipelineEvent) {
        self.events
            .as_ref()
            .unwrap()
            .send(Arc::new(ev))
            .expect("the hub is running");
    }

    /// Send an event that makes one feed message, and return once the hub
    /// has published it (requests after this see its effect: the hub takes
    /// events and requests from two channels, in no set order between them).
    fn publish(&self, ev: PipelineEvent) {
        let mut rx = self.hub.stream();
        self.send(ev);
        self.rt().block_on(async {
            tokio::time::timeout(GUARD, rx.recv())
                .await
                .expect("published before the deadline")
                .expect("published");
        });
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().unwrap()
    }

    fn counter(&self, which: &str, surface: &'static str) -> u64 {
        let m = &self.hub.metrics;
        let family = match which {
            "dropped" => &m.dropped,
            "bad_requests" => &m.bad_requests,
            _ => unreachable!(),
        };
        family.get_or_create(&SurfaceLabel { surface }).get()
    }

    fn clients(&self, surface: &'static str) -> i64 {
        self.hub.metrics.clients(surface).get()
    }

    /// End the session: the hub publishes its last message, every client
    /// writes out what it has and is closed.
    fn finish(mut self) {
        drop(self.events.take());
        self.thread.take().unwrap().join().unwrap();
        let rt = self.rt.take().unwrap();
        let hub = self.hub.clone();
        rt.block_on(async {
            tokio::time::timeout(GUARD, hub.drained())
                .await
                .expect("every client drained");
        });
        rt.shutdown_timeout(Duration::from_secs(2));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.events.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------- events

fn run_started(run: u32) -> PipelineEvent {
    PipelineEvent::Ingest(IngestEvent::RunStarted {
        run,
        first_index: 0,
    })
}

fn run_ended(run: u32) -> PipelineEvent {
    PipelineEvent::Ingest(IngestEvent::RunEnded { run })
}

fn volume(run: u32, index: u32) -> PipelineEvent {
    let now = Instant::now();
    PipelineEvent::Realigned(Box::new(RealignedVolume {
        key: VolumeKey { run, index },
        path: PathBuf::from(format!("run-{run}_vol-{index}.nii")),
        late: false,
        params: MotionParams([0.001 * f64::from(index), 0.0, 0.0, 0.1, 0.0, 0.0]),
        fd: (index > 0).then_some(0.1),
        dvars: None,
        dvars_pct: None,
        masked: Arc::from(vec![1.0f32; 10]),
        ingest: IngestTiming {
            first_seen_wall: SystemTime::now(),
            first_seen: now,
            decoded: now,
            released: now,
            attempts: 1,
            decode_seconds: 0.0,
        },
        realigned_at: now,
        realign_seconds: 0.0,
        iterations: vec![3],
        gain: 1.0,
        ref_to_volume: nalgebra::Matrix4::identity(),
    }))
}

fn feedback(run: u32, index: u32, value: f64) -> PipelineEvent {
    PipelineEvent::Feedback(Box::new(FeedbackSample {
        key: VolumeKey { run, index },
        values: vec![FeedbackValue {
            name: "visual".into(),
            value,
            smoothed: value,
        }],
    }))
}

fn decoded(run: u32, trial: usize, ids: &[&str]) -> PipelineEvent {
    PipelineEvent::Decoded(Box::new(TrialDecoded {
        run,
        trial,
        stim_id: Some(ids[0].to_string()),
        top: ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), 0.9 - 0.1 * i as f32))
            .collect(),
        true_rank: Some(1),
        bank_size: 150,
        query: Arc::from(vec![0.0f32; 4]),
        graphs: Vec::new(),
        seconds: 0.001,
        since_beta: 0.001,
        since_trigger: Some(0.01),
        nonfinite_voxels: 0,
    }))
}

fn notice(text: &str) -> PipelineEvent {
    PipelineEvent::Notice(text.to_string())
}

// ---------------------------------------------------------------- tests

#[test]
fn every_request_gets_its_answer_and_subscribers_their_topics() {
    let s = serve(1024, TcpOptions::default());
    let mut sub = Client::connect(s.addr);
    let mut req = Client::connect(s.addr);

    // Before anything happened: nothing to report, but no error either.
    let r = req.request(r#"{"type":"get","what":"volume","id":"v0"}"#);
    assert_eq!(
        (&r["ok"], &r["id"], &r["what"]),
        (&true.into(), &"v0".into(), &"volume".into())
    );
    assert!(r["result"].is_null(), "{r}");
    assert!(req.request(r#"{"type":"get","what":"trial"}"#)["result"].is_null());
    assert!(req.request(r#"{"type":"get","what":"feedback"}"#)["result"].is_null());
    let st = req.request(r#"{"type":"get","what":"status"}"#);
    assert_eq!(st["result"]["counts"]["received"], 0, "{st}");

    let r = sub.request(r#"{"type":"subscribe","id":1}"#);
    assert_eq!(r["ok"], true);
    assert_eq!(r["id"], 1);
    assert_eq!(
        r["subscribed"],
        serde_json::json!(["volume", "trial", "run"])
    );
    assert!(r.get("snapshot").is_none(), "no snapshot unless asked");

    s.send(run_started(1));
    for i in 0..3 {
        s.send(volume(1, i));
    }
    s.send(feedback(1, 2, 0.5));
    s.send(decoded(1, 1, &["stim-0001", "stim-0002", "stim-0003"]));
    s.send(notice("marker"));
    s.send(run_ended(1));
    let feed = sub.feed_until(|v| is_type(v, "run") && v["status"] == "ended");
    let types: Vec<&str> = feed.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "run", "volume", "volume", "volume", "feedback", "trial", "notice", "run"
        ]
    );
    let indices: Vec<u64> = feed
        .iter()
        .filter(|v| is_type(v, "volume"))
        .map(|v| v["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2]);

    let r = req.request(r#"{"type":"ping","id":[1,"a"]}"#);
    assert_eq!(r["id"], serde_json::json!([1, "a"]));
    assert!(r["pong"].as_f64().is_some_and(|t| t > 1.6e9), "{r}");

    let st = &req.request(r#"{"type":"get","what":"status"}"#)["result"];
    assert_eq!(st["counts"]["received"], 3, "{st}");
    assert_eq!(st["counts"]["decoded"], 1);
    assert_eq!(st["runs"][0]["run"], 1);
    assert_eq!(st["runs"][0]["status"], "ended");
    assert_eq!(st["last_volume"], serde_json::json!({"run": 1, "index": 2}));
    assert_eq!(st["last_trial"], serde_json::json!({"run": 1, "trial": 1}));
    assert!(st.get("volumes").is_none(), "status has no history");

    let v = &req.request(r#"{"type":"get","what":"volume"}"#)["result"];
    assert_eq!(
        (v["type"].as_str(), v["run"].as_u64(), v["index"].as_u64()),
        (Some("volume"), Some(1), Some(2))
    );
    assert_eq!(v["motion"].as_array().unwrap().len(), 6);
    assert_eq!(v["fd"], 0.1);
    assert_eq!(v["mean"], 1.0);

    let f = &req.request(r#"{"type":"get","what":"feedback"}"#)["result"];
    assert_eq!((f["run"].as_u64(), f["index"].as_u64()), (Some(1), Some(2)));
    assert_eq!(f["values"][0]["name"], "visual");
    assert_eq!(f["values"][0]["value"], 0.5);

    let t = req.request(r#"{"type":"get","what":"trial","run":1,"trial":1,"id":9}"#);
    assert_eq!((&t["id"], &t["what"]), (&9.into(), &"trial".into()));
    let t = &t["result"];
    assert_eq!(t["trial"], 1);
    assert_eq!(t["image_id"], "stim-0001");
    let ids: Vec<&str> = t["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["stim-0001", "stim-0002", "stim-0003"]);
    assert!((t["value"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    assert_eq!(
        req.request(r#"{"type":"get","what":"trial"}"#)["result"]["trial"],
        1
    );
    let missing = req.request(r#"{"type":"get","what":"trial","run":1,"trial":99}"#);
    assert_eq!(missing["ok"], true);
    assert!(missing["result"].is_null());

    let run = &req.request(r#"{"type":"get","what":"run","run":1}"#)["result"];
    assert_eq!(
        (run["status"].as_str(), run["volumes"].as_u64()),
        (Some("ended"), Some(3))
    );
    assert_eq!(
        req.request(r#"{"type":"get","what":"run"}"#)["result"]["run"],
        1
    );
    assert!(req.request(r#"{"type":"get","what":"run","run":7}"#)["result"].is_null());

    let snap = &req.request(r#"{"type":"get","what":"snapshot"}"#)["result"];
    assert_eq!(snap["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(snap["trials"].as_array().unwrap().len(), 1);

    // A subscription with its snapshot lines up with the feed after it.
    let r = req.request(r#"{"type":"subscribe","topics":["volume"],"snapshot":true}"#);
    assert_eq!(r["subscribed"], serde_json::json!(["volume"]));
    assert_eq!(r["snapshot"]["seq"], st["seq"]);
    assert_eq!(r["snapshot"]["volumes"].as_array().unwrap().len(), 3);

    // Topics filter; re-subscribing changes them without a gap.
    let r = sub.request(r#"{"type":"subscribe","topics":["trial"]}"#);
    assert_eq!(r["subscribed"], serde_json::json!(["trial"]));
    s.send(run_started(2));
    s.send(volume(2, 0));
    s.send(decoded(2, 1, &["stim-0004"]));
    let next = sub.json(deadline()).unwrap();
    assert_eq!(
        (next["type"].as_str(), next["run"].as_u64()),
        (Some("trial"), Some(2)),
        "{next}"
    );
    let next = req.json(deadline()).unwrap();
    assert_eq!(
        (next["type"].as_str(), next["run"].as_u64()),
        (Some("volume"), Some(2)),
        "{next}"
    );

    // Unsubscribed: the next line is the reply to the next request.
    let r = sub.request(r#"{"type":"unsubscribe","id":"u"}"#);
    assert_eq!(
        (&r["id"], &r["subscribed"]),
        (&"u".into(), &serde_json::json!([]))
    );
    s.send(decoded(2, 2, &["stim-0005"]));
    sub.send(r#"{"type":"ping","id":"after"}"#);
    let next = sub.json(deadline()).unwrap();
    assert_eq!(next["id"], "after", "{next}");

    assert_eq!(s.counter("bad_requests", "tcp"), 0);
    assert_eq!(s.clients("tcp"), 2);
    s.finish();
    // The session ended: each client is told, then closed.
    for c in [&mut sub, &mut req] {
        let rest = c.rest();
        let last = rest.last().expect("a closing line");
        assert_eq!(last["type"], "closing", "{rest:?}");
    }
}

#[test]
fn garbage_gets_an_error_line_and_the_connection_stays_usable() {
    let s = serve(1024, TcpOptions::default());
    let mut bad = Client::connect(s.addr);
    let mut good = Client::connect(s.addr);
    good.request(r#"{"type":"subscribe","topics":["run"]}"#);

    let cases: [(&[u8], &str, Option<Value>); 10] = [
        (b"hello\n", "not JSON", None),
        (b"{\"type\":\"get\"\n", "not JSON", None),
        (b"[1,2,3]\n", "expected a JSON object", None),
        (
            b"{\"type\":\"dance\",\"id\":5}\n",
            "unknown request type 'dance'",
            Some(5.into()),
        ),
        (b"{\"id\":6}\n", "missing 'type'", Some(6.into())),
        (
            b"{\"type\":\"get\",\"id\":7}\n",
            "missing field `what`",
            Some(7.into()),
        ),
        (
            b"{\"type\":\"get\",\"what\":\"trial\",\"run\":1}\n",
            "both 'run' and 'trial'",
            None,
        ),
        (
            b"{\"type\":\"get\",\"what\":\"run\",\"run\":\"one\"}\n",
            "invalid type",
            None,
        ),
        (
            b"{\"type\":\"subscribe\",\"topics\":[\"weather\"]}\n",
            "unknown variant `weather`",
            None,
        ),
        (b"\xff\xfe{\"type\":\"ping\"}\n", "not UTF-8", None),
    ];
    for (i, (line, why, id)) in cases.iter().enumerate() {
        bad.send_bytes(line);
        // Blank lines are skipped, not answered.
        bad.send_bytes(b"\n  \n");
        let r = bad.reply();
        assert_eq!(r["ok"], false, "{r}");
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains(why),
            "{}: {error}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(r.get("id"), id.as_ref(), "{r}");
        // Still usable.
        let p = bad.request(&format!(r#"{{"type":"ping","id":{i}}}"#));
        assert_eq!((&p["ok"], &p["id"]), (&true.into(), &i.into()), "{p}");
        assert_eq!(s.counter("bad_requests", "tcp"), i as u64 + 1);
    }

    // Meanwhile the daemon went on for everyone else.
    s.send(run_started(1));
    assert_eq!(good.json(deadline()).unwrap()["status"], "started");

    // A line over 64 KiB: an error, then the connection is closed (there is
    // no telling where the next request would start).
    let long = vec![b'a'; MAX_LINE + 1];
    bad.send_bytes(&long);
    let r = bad.json(deadline()).expect("an error line before closing");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("longer than 65536 bytes"),
        "{r}"
    );
    assert!(
        bad.line(deadline()).is_none(),
        "closed after an over-long line"
    );
    assert_eq!(s.counter("bad_requests", "tcp"), cases.len() as u64 + 1);

    // A line of exactly 64 KiB is still a request (and a bad one here).
    let mut edge = Client::connect(s.addr);
    let mut line = br#"{"type":"ping","pad":""#.to_vec();
    line.resize(MAX_LINE - 2, b'x');
    line.extend_from_slice(b"\"}\n");
    assert_eq!(line.len(), MAX_LINE + 1);
    edge.send_bytes(&line);
    let r = edge.reply();
    assert!(
        r["error"].as_str().unwrap().contains("unknown field `pad`"),
        "{r}"
    );
    assert_eq!(edge.request(r#"{"type":"ping"}"#)["ok"], true);

    s.send(run_ended(1));
    assert_eq!(good.json(deadline()).unwrap()["status"], "ended");
    assert_eq!(good.request(r#"{"type":"ping"}"#)["ok"], true);
    s.finish();
}

/// `n` notices of `size` bytes, then a last one saying `marker`, sent a
/// few at a time, each batch read by `fast` before the next: `fast` keeps
/// up however small the backlog. What `fast` got comes back.
fn flood(s: &Served, fast: &mut Client, n: usize, size: usize) -> Vec<Value> {
    let text = "x".repeat(size);
    let mut got = Vec::new();
    for batch in 0..n / 8 {
        for _ in 0..8 {
            s.send(notice(&text));
        }
        let until = deadline();
        for _ in 0..8 {
            got.push(fast.json(until).expect("the fast client is served"));
        }
        assert!(got.iter().all(|v| is_type(v, "notice")), "batch {batch}");
    }
    s.send(notice("marker"));
    got.extend(fast.feed_until(|v| v["text"] == "marker"));
    got
}

#[test]
fn a_client_that_falls_behind_misses_messages_and_is_told_how_many() {
    // A long write timeout: this client is slow, not gone.
    let s = serve(
        16,
        TcpOptions {
            write_timeout: Duration::from_secs(600),
            ..TcpOptions::default()
        },
    );
    let mut slow = Client::connect_small(s.addr);
    let mut fast = Client::connect(s.addr);
    slow.request(r#"{"type":"subscribe"}"#);
    fast.request(r#"{"type":"subscribe"}"#);
    // 8 MB: far more than the socket buffers between the daemon and a
    // client that is not reading hold, so its writer must block and its
    // queue (16 messages) overflow.
    let n = 1000;
    let all = flood(&s, &mut fast, n, 8 * 1024);
    assert_eq!(all.len(), n + 1, "the fast client got everything");
    assert!(all.iter().all(|v| is_type(v, "notice")));

    // Now the slow one reads: what fitted in the buffers, a dropped notice,
    // then the newest messages, up to the marker.
    let got = slow.feed_until(|v| v["text"] == "marker");
    let missed: u64 = got
        .iter()
        .filter(|v| is_type(v, "dropped"))
        .map(|v| v["missed"].as_u64().unwrap())
        .sum();
    let notices = got.iter().filter(|v| is_type(v, "notice")).count();
    assert!(missed > 0, "no dropped notice in {} lines", got.len());
    assert_eq!(
        notices as u64 + missed,
        n as u64 + 1,
        "every message delivered or counted"
    );
    assert_eq!(s.counter("dropped", "tcp"), missed);
    // Still connected and served.
    assert_eq!(slow.request(r#"{"type":"ping"}"#)["ok"], true);
    assert_eq!(s.clients("tcp"), 2);
    s.finish();
}

#[test]
fn a_client_whose_socket_stays_full_is_disconnected_and_others_go_on() {
    let s = serve(
        16,
        TcpOptions {
            write_timeout: Duration::from_millis(300),
            max_clients: 2,
            ..TcpOptions::default()
        },
    );
    let mut stuck = Client::connect_small(s.addr);
    let mut fast = Client::connect(s.addr);
    stuck.request(r#"{"type":"subscribe"}"#);
    fast.request(r#"{"type":"subscribe"}"#);
    let n = 1000;
    assert_eq!(flood(&s, &mut fast, n, 8 * 1024).len(), n + 1);

    // Reading from it would unblock it; the cap of two clients tells
    // instead when the daemon has given up on it and freed its place.
    let mut third = connect_when_free(s.addr, false);
    assert_eq!(s.clients("tcp"), 2, "the stuck connection is cleaned up");
    assert!(
        s.counter("dropped", "tcp") > 0,
        "what it never got is counted"
    );
    // It got what the socket buffers held, then the connection ended
    // (perhaps mid-line): neither the marker nor a goodbye.
    let got = stuck.raw_rest();
    assert!(
        got.starts_with("{\"type\":\"notice\""),
        "{}",
        &got[..got.len().min(100)]
    );
    assert!(!got.contains("marker") && !got.contains("closing"));
    s.send(run_started(1));
    assert_eq!(fast.json(deadline()).unwrap()["type"], "run");
    assert_eq!(
        third.request(r#"{"type":"get","what":"run"}"#)["result"]["run"],
        1
    );
    s.finish();
}

/// Connect once the single client slot is free again (each refused try
/// gets an error line and is closed).
fn connect_when_free(addr: SocketAddr, reset_on_close: bool) -> Client {
    let until = deadline();
    loop {
        assert!(Instant::now() < until, "the client slot was never freed");
        let mut c = Client::connect_via(addr, |s| {
            if reset_on_close {
                s.set_zero_linger().unwrap();
            }
        });
        c.send(r#"{"type":"ping"}"#);
        match c.json(until) {
            Some(v) if v["ok"] == true => return c,
            Some(v) => assert!(
                v["error"].as_str().unwrap().contains("too many clients"),
                "{v}"
            ),
            None => {}
        }
    }
}

#[test]
fn vanished_clients_are_cleaned_up() {
    let s = serve(
        1024,
        TcpOptions {
            max_clients: 1,
            ..TcpOptions::default()
        },
    );
    // Closes while subscribed.
    let mut a = Client::connect(s.addr);
    a.request(r#"{"type":"subscribe"}"#);
    drop(a);
    s.publish(run_started(1));
    s.publish(volume(1, 0));

    // Resets the connection (RST) while subscribed.
    let mut b = connect_when_free(s.addr, true);
    b.request(r#"{"type":"subscribe"}"#);
    drop(b);
    s.publish(volume(1, 1));

    // Half-closes after a request: still answered, then closed.
    let mut c = connect_when_free(s.addr, false);
    c.send(r#"{"type":"get","what":"volume","id":"last"}"#);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let r = c.reply();
    assert_eq!(
        (&r["id"], &r["result"]["index"]),
        (&"last".into(), &1.into())
    );
    assert!(c.line(deadline()).is_none(), "closed after its half-close");

    // Asks for something big and leaves without reading it.
    let mut d = connect_when_free(s.addr, false);
    for _ in 0..50 {
        d.send(r#"{"type":"get","what":"snapshot"}"#);
    }
    drop(d);

    let mut e = connect_when_free(s.addr, false);
    assert_eq!(s.clients("tcp"), 1);
    s.publish(volume(1, 2));
    assert_eq!(
        e.request(r#"{"type":"get","what":"run"}"#)["result"]["volumes"].as_u64(),
        Some(3)
    );
    s.finish();
}

#[test]
fn clients_over_the_cap_are_refused_with_an_error_line() {
    let s = serve(
        1024,
        TcpOptions {
            max_clients: 2,
            ..TcpOptions::default()
        },
    );
    let mut a = Client::connect(s.addr);
    let mut b = Client::connect(s.addr);
    assert_eq!(a.request(r#"{"type":"ping"}"#)["ok"], true);
    assert_eq!(b.request(r#"{"type":"ping"}"#)["ok"], true);
    let mut c = Client::connect(s.addr);
    let r = c.json(deadline()).expect("an error line");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("too many clients (2 connected)"),
        "{r}"
    );
    assert!(c.line(deadline()).is_none(), "then closed");
    assert_eq!(a.request(r#"{"type":"ping"}"#)["ok"], true);
    assert_eq!(s.clients("tcp"), 2);
    s.finish();
}

fn datagram(sock: &UdpSocket, until: Instant) -> Value {
    let left = until.saturating_duration_since(Instant::now());
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("a datagram before the deadline");
    serde_json::from_slice(&buf[..n]).expect("a datagram is one JSON object")
}

#[test]
fn udp_targets_get_their_topics_and_a_dead_target_breaks_nothing() {
    let s = serve(1024, TcpOptions::default());
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = {
        let d = UdpSocket::bind("127.0.0.1:0").unwrap();
        d.local_addr().unwrap()
    };
    start_udp(
        s.rt(),
        &[dead.to_string(), listener.local_addr().unwrap().to_string()],
        vec![Topic::Volume, Topic::Trial],
        s.hub.clone(),
    )
    .unwrap();
    assert_eq!(s.clients("udp"), 2);
    s.send(run_started(1));
    for i in 0..3 {
        s.send(volume(1, i));
    }
    s.send(decoded(1, 1, &["stim-0001", "stim-0002"]));
    s.send(notice("not for udp"));
    s.send(run_ended(1));
    s.send(volume(1, 3));
    let until = deadline();
    let got: Vec<Value> = (0..5).map(|_| datagram(&listener, until)).collect();
    let summary: Vec<(String, u64)> = got
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v.get("index")
                    .or(v.get("trial"))
                    .and_then(Value::as_u64)
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("volume".into(), 0),
            ("volume".into(), 1),
            ("volume".into(), 2),
            ("trial".into(), 1),
            ("volume".into(), 3)
        ],
        "only the configured topics, in order"
    );
    assert_eq!(got[3]["top"][1]["id"], "stim-0002");
    // The TCP side is unaffected.
    let mut c = Client::connect(s.addr);
    assert_eq!(
        c.request(r#"{"type":"get","what":"run"}"#)["result"]["status"],
        "ended"
    );
    s.finish();
}

// ------------------------------------------------- the whole daemon

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn a_decoding_session_reaches_subscribers_requests_datagrams_and_result_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut session = session::decoding_session(tmp.path(), 1, 6);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let results = tmp.path().join("results");
    session.config.serve = boldstream::serve::ServeConfig {
        feedback: Some("127.0.0.1:0".into()),
        udp_targets: vec![udp.local_addr().unwrap().to_string(), dead.to_string()],
        results_dir: Some(results.clone()),
        // Roomy for the clients that read (a loaded machine may schedule
        // them late), small enough that the one that stops reading falls
        // behind within this short session or is cut off at its end.
        backlog: 256,
        ..Default::default()
    };
    let pipeline = Pipeline::start(&session.config, "# test\n", PipelineOptions::default())
        .expect("the pipeline starts");
    let addr = pipeline.feedback_addr().expect("the feedback port");
    let volumes = session.total_volumes();
    let trials = session.total_trials();

    let mut subscribers: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    for c in &mut subscribers {
        assert_eq!(c.request(r#"{"type":"subscribe"}"#)["ok"], true);
    }
    let mut slow = Client::connect_small(addr);
    slow.request(r#"{"type":"subscribe"}"#);
    let mut garbage = Client::connect(addr);
    let vanishing = Client::connect(addr);
    drop(vanishing);

    let stop_polling = AtomicBool::new(false);
    let (summary, feeds, polled, datagrams) = std::thread::scope(|scope| {
        // A PsychoPy-style poller: every result file it reads is whole JSON
        // and names a PNG that exists.
        let poller = scope.spawn(|| {
            let mut reads = 0usize;
            // Bounded too: a failing test must not leave it spinning.
            let until = deadline();
            while !stop_polling.load(Ordering::Relaxed) && Instant::now() < until {
                for entry in std::fs::read_dir(&results).into_iter().flatten().flatten() {
                    let p = entry.path();
                    if p.extension().is_some_and(|e| e == "json") {
                        let Ok(text) = std::fs::read_to_string(&p) else {
                            continue;
                        };
                        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                            panic!("{} read as partial JSON ({e}): {text}", p.display())
                        });
                        if let Some(png) = v["reconstruction"].as_str() {
                            assert!(is_png(Path::new(png)), "{} names {png}", p.display());
                        }
                        reads += 1;
                    }
                }
                // A poller's pace (PsychoPy polls once per screen frame),
                // not a wait for anything.
                std::thread::sleep(Duration::from_millis(2));
            }
            reads
        });
        let udp_reader = scope.spawn(|| {
            let until = deadline();
            let mut got = Vec::new();
            loop {
                let v = datagram(&udp, until);
                let end = is_type(&v, "run") && v["status"] == "ended";
                got.push(v);
                if end {
                    return got;
                }
            }
        });
        let readers: Vec<_> = subscribers
            .iter_mut()
            .map(|c| scope.spawn(move || c.rest()))
            .collect();

        // Garbage and requests while the session runs.
        let r = garbage.request("{\"type\":\"get\",\"what\":\"everything\"}");
        assert!(
            r["error"].as_str().unwrap().contains("unknown 'what'"),
            "{r}"
        );
        garbage.send_bytes(b"\x00\x01\x02\n");
        assert_eq!(garbage.reply()["ok"], false);
        assert_eq!(garbage.request(r#"{"type":"subscribe"}"#)["ok"], true);

        let writer = scope.spawn(|| session.write(Duration::from_millis(40)));
        garbage.feed_until(|v| is_type(v, "volume") && v["index"] == 10);
        // The slow client, which never reads, asks for far more than its
        // socket holds while the scan goes on.
        for _ in 0..200 {
            slow.send(r#"{"type":"get","what":"snapshot"}"#);
        }
        // The end of the session, as a stimulus program sees it.
        let recons = std::cell::Cell::new(0);
        let ended = std::cell::Cell::new(false);
        garbage.feed_until(|v| {
            if is_type(v, "reconstruction") {
                recons.set(recons.get() + 1);
            }
            if is_type(v, "run") && v["status"] == "ended" {
                ended.set(true);
            }
            ended.get() && recons.get() == trials
        });
        writer.join().unwrap();
        let st = garbage.request(r#"{"type":"get","what":"status"}"#);
        let last = &st["result"]["last_trial"];
        let t = garbage.request(&format!(
            r#"{{"type":"get","what":"trial","run":{},"trial":{},"id":1}}"#,
            last["run"], last["trial"]
        ));
        assert_eq!(t["result"]["top"].as_array().map(Vec::len), Some(5), "{t}");
        assert!(t["result"]["recon_path"].is_string(), "{t}");
        let summary = pipeline.stop();
        stop_polling.store(true, Ordering::Relaxed);
        let feeds: Vec<Vec<Value>> = readers.into_iter().map(|h| h.join().unwrap()).collect();
        (
            summary,
            feeds,
            poller.join().unwrap(),
            udp_reader.join().unwrap(),
        )
    });

    // The pipeline was never held up.
    assert_eq!(summary.realigned as usize, volumes);
    assert_eq!(summary.decoded as usize, trials);
    assert_eq!(summary.reconstructed as usize, trials);

    // Every subscriber got every message, in order, and the goodbye.
    for feed in &feeds {
        assert_eq!(feed.last().unwrap()["type"], "closing");
        assert!(!feed.iter().any(|v| is_type(v, "dropped")));
        let vols: Vec<u64> = feed
            .iter()
            .filter(|v| is_type(v, "volume"))
            .map(|v| v["index"].as_u64().unwrap())
            .collect();
        assert_eq!(vols, (0..volumes as u64).collect::<Vec<_>>());
        for v in feed.iter().filter(|v| is_type(v, "volume")) {
            assert_eq!(v["motion"].as_array().unwrap().len(), 6);
            assert!(v["mean"].as_f64().is_some_and(f64::is_finite), "{v}");
            assert!(v["index"] == 0 || v["fd"].as_f64().is_some(), "{v}");
        }
        let fb = feed.iter().filter(|v| is_type(v, "feedback")).count();
        assert!(
            fb > volumes / 2,
            "{fb} feedback messages for {volumes} volumes"
        );
        assert!(
            feed.iter()
                .filter(|v| is_type(v, "feedback"))
                .all(|v| v["values"][0]["name"] == "visual")
        );
        let trial_msgs: Vec<&Value> = feed.iter().filter(|v| is_type(v, "trial")).collect();
        assert_eq!(trial_msgs.len(), trials);
        for t in &trial_msgs {
            let top = t["top"].as_array().unwrap();
            assert_eq!(top.len(), 5);
            assert!(top.iter().all(|c| {
                session
                    .bank
                    .contains(&c["id"].as_str().unwrap().to_string())
            }));
            assert_eq!(t["value"], top[0]["score"]);
        }
        let recons: Vec<&Value> = feed
            .iter()
            .filter(|v| is_type(v, "reconstruction"))
            .collect();
        assert_eq!(recons.len(), trials);
        for r in &recons {
            let p = PathBuf::from(r["path"].as_str().unwrap());
            assert!(p.starts_with(&results) && is_png(&p), "{r}");
        }
        let runs: Vec<&str> = feed
            .iter()
            .filter(|v| is_type(v, "run"))
            .map(|v| v["status"].as_str().unwrap())
            .collect();
        assert_eq!(runs, ["started", "ended"]);
    }

    // The slow client was dropped from or closed, never waited for.
    // Cut off mid-write, its last line may be partial.
    let slow_got: Vec<Value> = slow
        .raw_rest()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let slow_vols = slow_got.iter().filter(|v| is_type(v, "volume")).count();
    let told = slow_got.iter().any(|v| is_type(v, "dropped"));
    let closed_early = !slow_got.iter().any(|v| is_type(v, "closing"));
    println!(
        "slow client: {slow_vols} of {volumes} volume messages, dropped notice: {told}, closed before the goodbye: {closed_early}; result files read by the poller: {polled}"
    );
    assert!(
        told || closed_early,
        "the slow client got {slow_vols} of {volumes} volumes, no dropped notice, and a normal goodbye"
    );
    assert!(slow_vols < volumes || told);

    // UDP: every volume and trial message, in order.
    let udp_vols: Vec<u64> = datagrams
        .iter()
        .filter(|v| is_type(v, "volume"))
        .map(|v| v["index"].as_u64().unwrap())
        .collect();
    assert_eq!(udp_vols, (0..volumes as u64).collect::<Vec<_>>());
    assert_eq!(
        datagrams.iter().filter(|v| is_type(v, "trial")).count(),
        trials
    );

    // Result files: one per trial, complete.
    assert!(polled > 0, "the poller read result files");
    let files: BTreeSet<String> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for t in feeds[0].iter().filter(|v| is_type(v, "trial")) {
        let key = format!(
            "run-{:02}_trial-{:03}",
            t["run"].as_u64().unwrap(),
            t["trial"].as_u64().unwrap()
        );
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(results.join(format!("{key}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(v["key"], key);
        assert_eq!(v["status"], "reconstructed");
        assert_eq!(v["top"], t["top"]);
        assert_eq!(v["value"], t["value"]);
        let png = PathBuf::from(v["reconstruction"].as_str().unwrap());
        assert_eq!(png, results.join(format!("{key}.png")));
        assert!(is_png(&png));
    }
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".json")).count(),
        trials
    );
    assert_eq!(files.iter().filter(|f| f.ends_with(".png")).count(), trials);
    assert!(!files.iter().any(|f| f.contains(".tmp")), "{files:?}");
}

/// The example Python client (`examples/boldstream_client.py`, the one
/// docs/protocol.md points to), run against the daemon. Needs `python3`
/// (or `$PYTHON`): `cargo test --release --test serve_protocol --
/// --ignored`.
#[test]
#[ignore = "runs python3 (examples/boldstream_client.py)"]
fn the_readme_python_client_follows_a_session() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/boldstream_client.py");
    let code =
        std::fs::read_to_string(&client).unwrap_or_else(|e| panic!("{}: {e}", client.display()));
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("boldstream_client.py");
    std::fs::write(&script, code).unwrap();
    let mut session = session::decoding_session(tmp.path(), 1, 6);
    session.config.serve.feedback = Some("127.0.0.1:0".into());
    let pipeline = Pipeline::start(&session.config, "# test\n", PipelineOptions::default())
        .expect("the pipeline starts");
    let addr = pipeline.feedback_addr().unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("following"), "{first}");
    let mut mine = Client::connect(addr);
    mine.request(r#"{"type":"subscribe","topics":["trial","run"]}"#);
    session.write(Duration::from_millis(40));
    let recons = std::cell::Cell::new(0);
    mine.feed_until(|v| {
        recons.set(recons.get() + usize::from(is_type(v, "reconstruction")));
        recons.get() == session.total_trials()
    });
    pipeline.stop();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    println!("{first}{rest}");
    let count = |p: &str| rest.lines().filter(|l| l.contains(p)).count();
    assert_eq!(count(": FD "), session.total_volumes(), "a line per volume");
    assert!(count("  feedback {'visual'") > 0, "neurofeedback values");
    assert_eq!(count(": shown stim-"), session.total_trials());
    assert_eq!(count(": reconstruction /"), session.total_trials());
    assert!(rest.contains("run 1 started") && rest.contains("run 1 ended"));
    assert!(rest.trim_end().ends_with("session ended"));
}
