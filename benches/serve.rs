//! Load on the feedback protocol: the whole daemon on a simulated decoding
//! session played 4× faster than real time, with 1 and then 10 subscribed
//! TCP clients.
//!
//! In: `cargo bench --bench serve -- [RUNS] [IMAGES_PER_RUN] [SPEED]`
//! (defaults 2, 40, 4: 2 runs × 124 volumes, TR 1.5 s written every
//! 0.375 s, every trial decoded and reconstructed by the demo model).
//! Out: per volume, file seen → realigned and file seen → the volume
//! message read by a client (each client parses every line, and checks it
//! got every volume message once), median / p95 / p99 for each client
//! count side by side with the ratio, and per client the messages received
//! and dropped.
//!
//! Both latencies are measured against the wall clock of the file's first
//! sighting (`t` in the volume message), on the same machine as the
//! clients.

#[path = "../tests/common/session.rs"]
mod session;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boldstream::pipeline::{Pipeline, PipelineOptions};
use boldstream::types::messages::{IngestEvent, PipelineEvent};
use serde_json::Value;

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    messages: usize,
    dropped: u64,
    /// (run, index) of every volume message.
    volumes: Vec<(u64, u64)>,
    /// File seen → volume message read, ms.
    received_ms: Vec<f64>,
    /// File seen → realigned, ms (from the message).
    realigned_ms: Vec<f64>,
    /// Realigned → volume message read, ms: the way through the GLM and
    /// decode threads, the hub and the socket.
    delivery_ms: Vec<f64>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn client(addr: SocketAddr, ready: crossbeam_channel::Sender<()>) -> anyhow::Result<ClientReport> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    // Only a guard: the session ends with the daemon's goodbye.
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"{\"type\":\"subscribe\"}\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line)?;
    anyhow::ensure!(reply["ok"] == true, "subscribe refused: {line}");
    let _ = ready.send(());
    let mut report = ClientReport::default();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("the connection ended without the goodbye");
        }
        let now = unix_now();
        let v: Value = serde_json::from_str(&line)?;
        report.messages += 1;
        match v["type"].as_str() {
            Some("volume") => {
                let t = v["t"].as_f64().unwrap_or(f64::NAN);
                let received = (now - t) * 1e3;
                let realigned = v["latency"]["total_ms"].as_f64().unwrap_or(f64::NAN);
                report.received_ms.push(received);
                report.realigned_ms.push(realigned);
                report.delivery_ms.push(received - realigned);
                report.volumes.push((
                    v["run"].as_u64().unwrap_or(0),
                    v["index"].as_u64().unwrap_or(0),
                ));
            }
            Some("dropped") => report.dropped += v["missed"].as_u64().unwrap_or(0),
            Some("closing") => return Ok(report),
            _ => {}
        }
    }
}

/// Linear-interpolated percentile (numpy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

struct Stats {
    p50: f64,
    p95: f64,
    p99: f64,
    n: usize,
}

fn stats(samples: impl IntoIterator<Item = f64>) -> Stats {
    let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(&v, 0.5),
        p95: percentile(&v, 0.95),
        p99: percentile(&v, 0.99),
        n: v.len(),
    }
}

struct Outcome {
    clients: usize,
    realigned: Stats,
    received: Stats,
    delivery: Stats,
    per_client: Vec<(usize, u64)>,
    complete: bool,
    pipeline_realigned: u64,
    reconstructed: u64,
}

fn run(clients: usize, runs: usize, images: usize, speed: f64) -> anyhow::Result<Outcome> {
    let tmp = tempfile::tempdir()?;
    let mut s = session::decoding_session(tmp.path(), runs, images);
    s.config.serve.feedback = Some("127.0.0.1:0".into());
    let (obs_tx, obs_rx) = crossbeam_channel::unbounded();
    let pipeline = Pipeline::start(&s.config, "# bench\n", PipelineOptions::observed_by(obs_tx))?;
    let addr = pipeline
        .feedback_addr()
        .ok_or_else(|| anyhow::anyhow!("no feedback address"))?;
    let expected: BTreeSet<(u64, u64)> = (1..=runs as u64)
        .flat_map(|r| (0..s.volumes as u64).map(move |i| (r, i)))
        .collect();
    let trials = s.total_trials() as u64;
    let interval = Duration::from_secs_f64(1.5 / speed);
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let (reports, summary) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let ready = ready_tx.clone();
                scope.spawn(move || client(addr, ready))
            })
            .collect();
        for _ in 0..clients {
            ready_rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| anyhow::anyhow!("a client did not subscribe"))?;
        }
        s.write(interval);
        // Until every run ended and every trial was reconstructed or
        // reported skipped (a guard, not a wait on time).
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut ended, mut done) = (0, 0u64);
        while ended < runs || done < trials {
            match obs_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(PipelineEvent::Ingest(IngestEvent::RunEnded { .. })) => ended += 1,
                Ok(PipelineEvent::Reconstructed(_) | PipelineEvent::DecodeSkipped { .. }) => {
                    done += 1
                }
                Ok(_) => {}
                Err(_) => anyhow::bail!(
                    "the session did not finish: {ended} runs ended, {done} trials done"
                ),
            }
        }
        let summary = pipeline.stop();
        let reports: Vec<ClientReport> = handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a client panicked"))?)
            .collect::<anyhow::Result<_>>()?;
        Ok((reports, summary))
    })?;
    let complete = reports.iter().all(|r| {
        let seen: BTreeSet<(u64, u64)> = r.volumes.iter().copied().collect();
        seen == expected && r.volumes.len() == expected.len()
    });
    Ok(Outcome {
        clients,
        realigned: stats(reports[0].realigned_ms.iter().copied()),
        received: stats(reports.iter().flat_map(|r| r.received_ms.iter().copied())),
        delivery: stats(reports.iter().flat_map(|r| r.delivery_ms.iter().copied())),
        per_client: reports.iter().map(|r| (r.messages, r.dropped)).collect(),
        complete,
        pipeline_realigned: summary.realigned,
        reconstructed: summary.reconstructed,
    })
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = arg(&args, 0, 2usize);
    let images = arg(&args, 1, 40usize);
    let speed = arg(&args, 2, 4.0f64);
    let probe = session::decoding_session(tempfile::tempdir()?.path(), runs, images);
    println!(
        "serve load: {runs} runs x {} volumes (64x64x36, 2,000-voxel mask, {} image trials decoded and reconstructed by the demo model), TR 1.5 s played {speed}x faster (a volume every {:.3} s)",
        probe.volumes,
        probe.total_trials(),
        1.5 / speed
    );
    drop(probe);
    let mut outcomes = Vec::new();
    for clients in [1, 10] {
        let o = run(clients, runs, images, speed)?;
        println!(
            "{clients:>2} client(s): {} volumes realigned, {} reconstructed; every client got every volume message once: {}; per client (messages, dropped): {:?}",
            o.pipeline_realigned, o.reconstructed, o.complete, o.per_client
        );
        outcomes.push(o);
    }
    let f = |s: &Stats| format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p95, s.p99);
    println!();
    println!(
        "| clients | samples | file seen → realigned p50 / p95 / p99 | file seen → volume message read by a client p50 / p95 / p99 | of which realigned → read | messages per client | dropped |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for o in &outcomes {
        let msgs: BTreeSet<usize> = o.per_client.iter().map(|c| c.0).collect();
        let dropped: u64 = o.per_client.iter().map(|c| c.1).sum();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            o.clients,
            o.received.n,
            f(&o.realigned),
            f(&o.received),
            f(&o.delivery),
            msgs.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            dropped
        );
    }
    if let [one, ten] = &outcomes[..] {
        let r = |a: f64, b: f64| format!("{:.2}×", b / a);
        let r3 = |a: &Stats, b: &Stats| {
            format!(
                "{} / {} / {}",
                r(a.p50, b.p50),
                r(a.p95, b.p95),
                r(a.p99, b.p99)
            )
        };
        println!(
            "| ratio 10 / 1 | | {} | {} | {} | | |",
            r3(&one.realigned, &ten.realigned),
            r3(&one.received, &ten.received),
            r3(&one.delivery, &ten.delivery),
        );
    }
    anyhow::ensure!(
        outcomes.iter().all(|o| o.complete),
        "a client missed volume messages"
    );
    Ok(())
}
