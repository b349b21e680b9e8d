//! Live trial events from the stimulus program.
//!
//! In: JSON lines on a TCP connection (request/response) or UDP datagrams
//! (fire-and-forget), one per trial onset:
//!
//! ```text
//! {"type": "trial", "onset": 12.0, "duration": 3.0, "trial_type": "image", "image_id": "shared0042"}
//! ```
//!
//! `onset` is seconds from the run's first volume; `run` (optional) names
//! the run, otherwise the run in progress (or the next to start) gets it;
//! `modulation` is optional (1). Out: [`LiveEvent`]s on a channel to the GLM
//! stage. Every TCP line gets a reply — `{"ok": true}` or `{"ok": false,
//! "error": "…"}` naming what is wrong — and a bad line never closes the
//! connection or disturbs the daemon; a line over 64 KiB does close it.

use std::net::SocketAddr;
use std::time::Instant;

use crossbeam_channel::Sender;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::types::events::Event;

/// A trial announced live.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The run it belongs to, when the message said.
    pub run: Option<u32>,
    /// The trial.
    pub event: Event,
    /// Who sent it.
    pub peer: String,
    /// When it arrived.
    pub received: Instant,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrialMessage {
    #[serde(rename = "type")]
    kind: String,
    onset: f64,
    #[serde(default)]
    duration: f64,
    #[serde(default = "default_type")]
    trial_type: String,
    #[serde(default)]
    image_id: Option<String>,
    #[serde(default)]
    run: Option<u32>,
    #[serde(default = "one")]
    modulation: f64,
}

fn default_type() -> String {
    "stimulus".into()
}

fn one() -> f64 {
    1.0
}

const MAX_LINE: usize = 64 * 1024;

/// Parse one message; the error says what is wrong with it.
pub fn parse(line: &str) -> Result<(Option<u32>, Event), String> {
    let m: TrialMessage =
        serde_json::from_str(line.trim()).map_err(|e| format!("not a trial message: {e}"))?;
    if m.kind != "trial" {
        return Err(format!(
            "unknown message type '{}' (expected \"trial\")",
            m.kind
        ));
    }
    if !m.onset.is_finite() {
        return Err("onset must be a finite number of seconds".into());
    }
    if !(m.duration.is_finite() && m.duration >= 0.0) {
        return Err("duration must be a non-negative number of seconds".into());
    }
    if !m.modulation.is_finite() {
        return Err("modulation must be a finite number".into());
    }
    if m.trial_type.is_empty() {
        return Err("trial_type must not be empty".into());
    }
    Ok((
        m.run,
        Event {
            onset: m.onset,
            duration: m.duration,
            trial_type: m.trial_type,
            stim_id: m.image_id,
            modulation: m.modulation,
        },
    ))
}

fn reply(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "{\"ok\":true}\n".into(),
        Err(e) => format!("{}\n", serde_json::json!({"ok": false, "error": e})),
    }
}

/// The running listener.
pub struct LiveListener {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveListener {
    /// Listen on `addr` (TCP and UDP on the same port; port 0 picks one).
    pub fn start(addr: &str, out: Sender<LiveEvent>) -> std::io::Result<LiveListener> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tcp, udp) = rt.block_on(async {
            let tcp = tokio::net::TcpListener::bind(addr).await?;
            let udp = tokio::net::UdpSocket::bind(tcp.local_addr()?).await?;
            Ok::<_, std::io::Error>((tcp, udp))
        })?;
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("live-events".into())
            .spawn(move || {
                rt.block_on(serve(tcp, udp, out, rx));
            })?;
        tracing::info!("live trial events: listening on {local} (TCP and UDP)");
        Ok(LiveListener {
            addr: local,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LiveListener {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

async fn serve(
    tcp: tokio::net::TcpListener,
    udp: tokio::net::UdpSocket,
    out: Sender<LiveEvent>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; MAX_LINE];
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(stream, peer, out.clone()));
                }
                Err(e) => tracing::warn!("live events: accept failed: {e}"),
            },
            received = udp.recv_from(&mut buf) => match received {
                Ok((n, peer)) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        if let Err(e) = deliver(line, &peer.to_string(), &out) {
                            tracing::warn!("live events: UDP message from {peer} refused: {e}");
                        }
                    }
                }
                Err(e) => tracing::warn!("live events: UDP receive failed: {e}"),
            },
        }
    }
}

fn deliver(line: &str, peer: &str, out: &Sender<LiveEvent>) -> Result<(), String> {
    let (run, event) = parse(line)?;
    out.try_send(LiveEvent {
        run,
        event,
        peer: peer.to_string(),
        received: Instant::now(),
    })
    .map_err(|_| "the GLM stage is not accepting events (busy or stopped)".to_string())
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, out: Sender<LiveEvent>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        // Read at most MAX_LINE + 1 bytes of a line: a client that never
        // sends a newline must not grow our buffer without bound.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = write
                    .write_all(reply(&Err(format!("unreadable input: {e}"))).as_bytes())
                    .await;
                return;
            }
        };
        if n > MAX_LINE && !line.ends_with('\n') {
            let _ = write
                .write_all(
                    reply(&Err(format!("line longer than {MAX_LINE} bytes; closing"))).as_bytes(),
                )
                .await;
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let result = deliver(&line, &peer.to_string(), &out);
        if let Err(e) = &result {
            tracing::warn!("live events: message from {peer} refused: {e}");
        }
        if write.write_all(reply(&result).as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_defaults_and_errors_say_why() {
        let (run, e) =
            parse(r#"{"type":"trial","onset":12.5,"duration":3,"image_id":"a"}"#).unwrap();
        assert_eq!(run, None);
        assert_eq!((e.onset, e.duration, e.modulation), (12.5, 3.0, 1.0));
        assert_eq!(e.stim_id.as_deref(), Some("a"));
        assert_eq!(e.trial_type, "stimulus");
        for (bad, why) in [
            ("not json", "not a trial message"),
            (r#"{"type":"hello","onset":1}"#, "unknown message type"),
            (r#"{"type":"trial"}"#, "onset"),
            (r#"{"type":"trial","onset":1,"duration":-2}"#, "duration"),
            (r#"{"type":"trial","onset":1,"colour":"red"}"#, "colour"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
