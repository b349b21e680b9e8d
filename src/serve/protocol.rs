//! The feedback protocol for stimulus programs: JSON lines over TCP, JSON
//! datagrams over UDP.
//!
//! In: the hub (its answers and its feed); on TCP, one JSON object per line
//! from each client. Out: on TCP, one reply line per request and, once
//! subscribed, every feed message of the chosen topics, one per line; on
//! UDP, every feed message of the configured topics as one datagram to each
//! target.
//!
//! TCP requests (`id` is optional, any JSON value, echoed in the reply):
//!
//! ```text
//! {"type":"ping","id":1}                            → {"ok":true,"id":1,"pong":1763800000.123}
//! {"type":"get","what":"status"}                    → {"ok":true,"what":"status","result":{…}}
//! {"type":"get","what":"volume"}                    → the latest volume message (or null)
//! {"type":"get","what":"feedback"}                  → the latest neurofeedback message (or null)
//! {"type":"get","what":"trial","run":1,"trial":3}   → that trial (the latest without run/trial)
//! {"type":"get","what":"run","run":1}               → that run's status (the latest without run)
//! {"type":"get","what":"snapshot"}                  → everything the dashboard starts from
//! {"type":"subscribe","topics":["volume","trial","run"],"snapshot":false}
//!                                                   → {"ok":true,"subscribed":[…]}, then the feed
//! {"type":"unsubscribe"}                            → {"ok":true,"subscribed":[]}
//! ```
//!
//! A line with `"ok"` is a reply; any other line is a feed message with a
//! `type` (see [`super::feed`]), or `{"type":"dropped","missed":N}` (this
//! client fell behind and missed N messages) or `{"type":"closing",
//! "reason":…}` (the session ended; the daemon closes the connection after
//! writing everything published). A request the daemon cannot take gets
//! `{"ok":false,"error":"…"}` naming what is wrong, and the connection stays
//! usable; a line over 64 KiB gets the error and the connection is closed
//! (there is no telling where the next request starts).
//!
//! Nothing here can hold up the hub or the pipeline: each connection reads
//! the feed through its own broadcast receiver (a bounded queue, the
//! `[serve] backlog`); a client that does not keep up misses messages and is
//! told how many, and one whose socket accepts nothing for `write_timeout`
//! is disconnected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc};

use super::feed::Topic;
use super::hub::{FeedGuard, HubError, HubHandle, Published};
use crate::types::key::TrialKey;

/// Longest request line, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// Largest datagram sent: under the 9 KiB default maximum of some stacks
/// (macOS), and fragments of this size reassemble on any LAN.
pub const MAX_DATAGRAM: usize = 8 * 1024;

/// TCP server limits.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// Connections served at once; more are refused with an error line.
    pub max_clients: usize,
    /// A client whose socket accepts nothing for this long is disconnected.
    pub write_timeout: Duration,
    /// Kernel send buffer per connection (bytes). It is part of what a
    /// client may leave unread: bounded, a client that stopped reading is
    /// noticed within minutes at one volume per TR, not hours.
    pub send_buffer: u32,
    /// How long a request may wait for the hub before the client is told
    /// the daemon is busy.
    pub hub_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            max_clients: 64,
            write_timeout: Duration::from_secs(5),
            send_buffer: 64 * 1024,
            hub_timeout: Duration::from_secs(5),
        }
    }
}

/// Replies a connection may have queued before its reader waits for its
/// writer: enough for a burst of requests, small because a client that
/// does not read its replies should be held back, not buffered for.
const REPLY_QUEUE: usize = 64;

/// Bind the TCP protocol on `addr` and serve it on `rt` with the default
/// limits; the bound address comes back.
pub fn start_tcp(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    hub: HubHandle,
) -> std::io::Result<SocketAddr> {
    start_tcp_with(rt, addr, hub, TcpOptions::default())
}

/// [`start_tcp`] with explicit limits.
pub fn start_tcp_with(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    hub: HubHandle,
    options: TcpOptions,
) -> std::io::Result<SocketAddr> {
    let listener = rt.block_on(bind(addr, options.send_buffer))?;
    let local = listener.local_addr()?;
    rt.spawn(accept_loop(listener, hub, Arc::new(options)));
    tracing::info!("feedback protocol: listening on {local} (TCP, JSON lines)");
    Ok(local)
}

async fn bind(addr: &str, send_buffer: u32) -> std::io::Result<tokio::net::TcpListener> {
    let resolved = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{addr}' resolves to no address"),
        )
    })?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted daemon must rebind while its old connections linger.
    socket.set_reuseaddr(true)?;
    // Accepted sockets inherit it (Linux, macOS).
    socket.set_send_buffer_size(send_buffer)?;
    socket.bind(resolved)?;
    socket.listen(128)
}

/// At most one log line per `every` for a repeating condition; counts what
/// was not logged.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when it is time to log (n occurrences were not logged since).
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, hub: HubHandle, options: Arc<TcpOptions>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut errors = Throttle::new(Duration::from_secs(10));
    let mut refusals = Throttle::new(Duration::from_secs(10));
    let finished = hub.finished();
    tokio::pin!(finished);
    loop {
        let accepted = tokio::select! {
            // Session over: connections write out what is left and close;
            // no new ones.
            _ = &mut finished => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: say so, and do not spin.
                if let Some(n) = errors.due() {
                    tracing::warn!("feedback protocol: accept failed: {e} ({n} more not shown)");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if active.load(Ordering::Acquire) >= options.max_clients {
            if let Some(n) = refusals.due() {
                tracing::warn!(
                    "feedback protocol: refused {peer}: {} clients already connected ({n} more refused since the last warning)",
                    options.max_clients
                );
            }
            let line = error_line(
                None,
                &format!(
                    "too many clients ({} connected); try again later",
                    options.max_clients
                ),
            );
            tokio::spawn(refuse(stream, line, options.write_timeout));
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(active.clone());
        let guard = hub.feed_guard();
        tokio::spawn(connection(
            stream,
            peer,
            hub.clone(),
            options.clone(),
            (slot, guard),
        ));
    }
}

/// Tell a client over the cap why, and close.
async fn refuse(mut stream: tokio::net::TcpStream, line: String, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        stream.shutdown().await?;
        // Closing with its request unread would reset the connection, and
        // a reset can discard the error line before the client reads it:
        // take what it sends until it closes too.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One connection's place under the client cap, released however the
/// connection ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection's reader hands its writer, in order.
enum Out {
    /// A reply line (no newline).
    Line(String),
    /// Write `reply`, then the feed of `topics` (from `rx` when given, else
    /// from the receiver already held).
    Subscribe {
        rx: Option<broadcast::Receiver<Arc<Published>>>,
        topics: Vec<Topic>,
        reply: String,
    },
    /// Stop the feed, then write `reply`.
    Unsubscribe { reply: String },
    /// Write this line, then close.
    Close(String),
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    hub: HubHandle,
    options: Arc<TcpOptions>,
    (slot, guard): (Slot, FeedGuard),
) {
    let gauge = hub.metrics.clients("tcp");
    gauge.inc();
    tracing::debug!("feedback protocol: {peer} connected");
    let (read, write) = stream.into_split();
    let mut w = BufWriter::new(write);
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let ended = {
        let reader = read_requests(read, tx, &hub, peer, &options);
        let writer = write_lines(&mut w, rx, &hub, peer, &options);
        tokio::pin!(reader, writer);
        tokio::select! {
            // The client closed its side (or sent an over-long line): its
            // replies are queued; let the writer finish them.
            () = &mut reader => writer.await,
            ended = &mut writer => ended,
        }
        // A reader still waiting for a line is dropped here.
    };
    // Counted out before the socket closes, so whoever sees it closed also
    // sees the count.
    gauge.dec();
    drop(guard);
    if ended.is_ok() {
        let _ = tokio::time::timeout(options.write_timeout, w.shutdown()).await;
    }
    drop(w);
    drop(slot);
    tracing::debug!("feedback protocol: {peer} disconnected");
}

/// Reads request lines and queues their replies; returns at end of input,
/// on a read error, after an over-long line, or when the writer is gone.
async fn read_requests(
    read: OwnedReadHalf,
    out: mpsc::Sender<Out>,
    hub: &HubHandle,
    peer: SocketAddr,
    options: &TcpOptions,
) {
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let mut subscribed = false;
    loop {
        buf.clear();
        // At most MAX_LINE + 1 bytes: a client that never sends a newline
        // must not grow the buffer without bound.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("feedback protocol: {peer}: read failed: {e}");
                return;
            }
        };
        if n > MAX_LINE && buf.last() != Some(&b'\n') {
            hub.metrics.bad_request("tcp");
            tracing::warn!("feedback protocol: {peer}: line over {MAX_LINE} bytes; closing");
            let _ = out
                .send(Out::Close(error_line(
                    None,
                    &format!("line longer than {MAX_LINE} bytes; closing the connection"),
                )))
                .await;
            return;
        }
        let reply = match std::str::from_utf8(&buf) {
            Err(e) => Err(BadRequest {
                id: None,
                error: format!(
                    "not UTF-8 text (invalid byte at offset {}); expected one JSON object per line",
                    e.valid_up_to()
                ),
            }),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => handle_request(text, hub, &mut subscribed, options).await,
        };
        let out_msg = match reply {
            Ok(o) => o,
            Err(bad) => {
                hub.metrics.bad_request("tcp");
                tracing::debug!(
                    "feedback protocol: {peer}: refused a request: {}",
                    bad.error
                );
                Out::Line(error_line(bad.id.as_ref(), &bad.error))
            }
        };
        // Waiting here holds back only this client: its replies are
        // unread.
        if out.send(out_msg).await.is_err() {
            return;
        }
    }
}

/// What a client asks, once its line is parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"get","what":…}`.
    Get(Query),
    /// `{"type":"subscribe"}`.
    Subscribe {
        /// Topics (all when the request named none).
        topics: Vec<Topic>,
        /// Send the snapshot with the reply.
        snapshot: bool,
    },
    /// `{"type":"unsubscribe"}`.
    Unsubscribe,
}

/// What a `get` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Counts, runs, latest keys.
    Status,
    /// The latest volume message.
    Volume,
    /// The latest neurofeedback message.
    Feedback,
    /// A trial (the latest for `None`).
    Trial(Option<TrialKey>),
    /// A run (the latest for `None`).
    Run(Option<u32>),
    /// The whole snapshot.
    Snapshot,
}

impl Query {
    fn name(self) -> &'static str {
        match self {
            Query::Status => "status",
            Query::Volume => "volume",
            Query::Feedback => "feedback",
            Query::Trial(_) => "trial",
            Query::Run(_) => "run",
            Query::Snapshot => "snapshot",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetFields {
    what: String,
    run: Option<u32>,
    trial: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFields {
    topics: Option<Vec<Topic>>,
    #[serde(default)]
    snapshot: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

fn fields<T: serde::de::DeserializeOwned>(
    kind: &str,
    rest: serde_json::Map<String, Value>,
) -> Result<T, String> {
    serde_json::from_value(Value::Object(rest)).map_err(|e| format!("{kind}: {e}"))
}

/// A request line the daemon cannot take.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    /// The request's `id`, when it could be read.
    pub id: Option<Value>,
    /// What is wrong, in words.
    pub error: String,
}

/// Parse one request line: its `id` (when it had one) and the request.
pub fn parse_request(line: &str) -> Result<(Option<Value>, ClientRequest), BadRequest> {
    let bad = |id: Option<Value>, error: String| BadRequest { id, error };
    let value: Value = serde_json::from_str(line.trim()).map_err(|e| {
        bad(
            None,
            format!("not JSON: {e}; expected one JSON object per line"),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(bad(
            None,
            "expected a JSON object, like {\"type\":\"ping\"}".into(),
        ));
    };
    let id = obj.remove("id");
    let err = |e: String| bad(id.clone(), e);
    let kind = match obj.remove("type") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(err(format!("'type' must be a string, not {other}"))),
        None => {
            return Err(err(
                "missing 'type' (get, subscribe, unsubscribe or ping)".into()
            ));
        }
    };
    let request = match kind.as_str() {
        "ping" => fields::<NoFields>("ping", obj).map(|_| ClientRequest::Ping),
        "unsubscribe" => {
            fields::<NoFields>("unsubscribe", obj).map(|_| ClientRequest::Unsubscribe)
        }
        "subscribe" => fields::<SubscribeFields>("subscribe", obj).and_then(|f| {
            let topics = match f.topics {
                None => Topic::ALL.to_vec(),
                Some(t) if t.is_empty() => {
                    return Err(
                        "subscribe: 'topics' is empty; leave it out for every topic".to_string()
                    );
                }
                Some(mut t) => {
                    t.dedup();
                    t
                }
            };
            Ok(ClientRequest::Subscribe {
                topics,
                snapshot: f.snapshot,
            })
        }),
        "get" => fields::<GetFields>("get", obj).and_then(|f| {
            let no_keys = |what: &str| {
                if f.run.is_some() || f.trial.is_some() {
                    Err(format!(
                        "get {what}: takes no 'run' or 'trial' (it answers the latest)"
                    ))
                } else {
                    Ok(())
                }
            };
            let q = match f.what.as_str() {
                "status" => no_keys("status").map(|_| Query::Status)?,
                "volume" => no_keys("volume").map(|_| Query::Volume)?,
                "feedback" => no_keys("feedback").map(|_| Query::Feedback)?,
                "snapshot" => no_keys("snapshot").map(|_| Query::Snapshot)?,
                "trial" => match (f.run, f.trial) {
                    (Some(r), Some(t)) => Query::Trial(Some(TrialKey::new(r, t))),
                    (None, None) => Query::Trial(None),
                    _ => {
                        return Err("get trial: give both 'run' and 'trial', or neither for the latest trial".into());
                    }
                },
                "run" => {
                    if f.trial.is_some() {
                        return Err("get run: takes 'run' only".into());
                    }
                    Query::Run(f.run)
                }
                other => {
                    return Err(format!(
                        "get: unknown 'what' '{other}' (status, volume, feedback, trial, run or snapshot)"
                    ));
                }
            };
            Ok(ClientRequest::Get(q))
        }),
        other => Err(format!(
            "unknown request type '{other}' (get, subscribe, unsubscribe or ping)"
        )),
    };
    request.map(|r| (id.clone(), r)).map_err(err)
}

/// `{"ok":false,"id":…,"error":…}`.
fn error_line(id: Option<&Value>, error: &str) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("ok".into(), Value::Bool(false));
    if let Some(id) = id {
        obj.insert("id".into(), id.clone());
    }
    obj.insert("error".into(), Value::String(error.into()));
    Value::Object(obj).to_string()
}

/// `{"ok":true,"id":…` followed by `rest` (`,"key":…` pairs) and `}`.
fn ok_line(id: Option<&Value>, rest: &str) -> String {
    match id {
        Some(id) => format!("{{\"ok\":true,\"id\":{id}{rest}}}"),
        None => format!("{{\"ok\":true{rest}}}"),
    }
}

fn topics_json(topics: &[Topic]) -> String {
    serde_json::to_string(topics).unwrap_or_else(|_| "[]".into())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn ask_hub<T>(
    options: &TcpOptions,
    answer: impl std::future::Future<Output = Result<T, HubError>>,
) -> Result<T, String> {
    match tokio::time::timeout(options.hub_timeout, answer).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(HubError::Busy.to_string()),
    }
}

async fn handle_request(
    line: &str,
    hub: &HubHandle,
    subscribed: &mut bool,
    options: &TcpOptions,
) -> Result<Out, BadRequest> {
    let (id, request) = parse_request(line)?;
    let idr = id.as_ref();
    let fail = |error: String| BadRequest {
        id: id.clone(),
        error,
    };
    Ok(match request {
        ClientRequest::Ping => Out::Line(ok_line(idr, &format!(",\"pong\":{}", unix_now()))),
        ClientRequest::Get(q) => {
            let result: Option<String> = match q {
                Query::Status => Some(ask_hub(options, hub.status()).await.map_err(fail)?),
                Query::Snapshot => Some(ask_hub(options, hub.snapshot()).await.map_err(fail)?),
                Query::Volume => ask_hub(options, hub.latest_volume()).await.map_err(fail)?,
                Query::Feedback => ask_hub(options, hub.latest_feedback())
                    .await
                    .map_err(fail)?,
                Query::Trial(key) => ask_hub(options, hub.trial(key)).await.map_err(fail)?,
                Query::Run(run) => ask_hub(options, hub.run(run)).await.map_err(fail)?,
            };
            let result = result.as_deref().unwrap_or("null");
            Out::Line(ok_line(
                idr,
                &format!(",\"what\":\"{}\",\"result\":{result}", q.name()),
            ))
        }
        ClientRequest::Subscribe { topics, snapshot } => {
            let (rx, extra) = if snapshot {
                // Through the hub, so the snapshot and the feed line up.
                let (snap, rx) = ask_hub(options, hub.subscribe()).await.map_err(fail)?;
                (Some(rx), format!(",\"snapshot\":{snap}"))
            } else if *subscribed {
                // Keep the receiver: nothing is lost or repeated.
                (None, String::new())
            } else {
                (Some(hub.stream()), String::new())
            };
            *subscribed = true;
            let reply = ok_line(
                idr,
                &format!(",\"subscribed\":{}{extra}", topics_json(&topics)),
            );
            Out::Subscribe { rx, topics, reply }
        }
        ClientRequest::Unsubscribe => {
            *subscribed = false;
            Out::Unsubscribe {
                reply: ok_line(idr, ",\"subscribed\":[]"),
            }
        }
    })
}

struct Subscription {
    rx: broadcast::Receiver<Arc<Published>>,
    topics: Vec<Topic>,
}

async fn next_published(
    sub: &mut Option<Subscription>,
) -> Result<Arc<Published>, broadcast::error::RecvError> {
    match sub {
        Some(s) => s.rx.recv().await,
        // Not polled without a subscription (guarded in the select).
        None => std::future::pending().await,
    }
}

/// Why a write did not go through.
enum WriteError {
    Stalled,
    Failed(std::io::Error),
}

async fn write_line(
    w: &mut BufWriter<OwnedWriteHalf>,
    line: &str,
    timeout: Duration,
) -> Result<(), WriteError> {
    let write = async {
        w.write_all(line.as_bytes()).await?;
        w.write_all(b"\n").await?;
        w.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Failed(e)),
        Err(_) => Err(WriteError::Stalled),
    }
}

fn dropped_line(missed: u64) -> String {
    format!("{{\"type\":\"dropped\",\"missed\":{missed}}}")
}

/// Writes replies and the subscribed feed until the reader is done and its
/// replies are out, the client is gone or stalls, or the session ends.
async fn write_lines(
    w: &mut BufWriter<OwnedWriteHalf>,
    mut replies: mpsc::Receiver<Out>,
    hub: &HubHandle,
    peer: SocketAddr,
    options: &TcpOptions,
) -> Result<(), WriteError> {
    let mut sub: Option<Subscription> = None;
    let mut lag_warnings = Throttle::new(Duration::from_secs(10));
    let finished = hub.finished();
    tokio::pin!(finished);
    let timeout = options.write_timeout;
    let result: Result<(), WriteError> = async {
        loop {
            tokio::select! {
                // Replies first: a client waiting for an answer gets it
                // ahead of the feed that was queued meanwhile.
                biased;
                cmd = replies.recv() => match cmd {
                    None => return Ok(()),
                    Some(Out::Line(line)) => write_line(w, &line, timeout).await?,
                    Some(Out::Subscribe { rx, topics, reply }) => {
                        match (rx, sub.as_mut()) {
                            (Some(rx), _) => sub = Some(Subscription { rx, topics }),
                            (None, Some(s)) => s.topics = topics,
                            // Unsubscribed meanwhile: start from now.
                            (None, None) => sub = Some(Subscription { rx: hub.stream(), topics }),
                        }
                        write_line(w, &reply, timeout).await?;
                    }
                    Some(Out::Unsubscribe { reply }) => {
                        sub = None;
                        write_line(w, &reply, timeout).await?;
                    }
                    Some(Out::Close(line)) => {
                        write_line(w, &line, timeout).await?;
                        return Ok(());
                    }
                },
                published = next_published(&mut sub), if sub.is_some() => match published {
                    Ok(p) => {
                        if sub.as_ref().is_some_and(|s| s.topics.contains(&p.topic)) {
                            write_line(w, &p.json, timeout).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        hub.metrics.dropped("tcp", n);
                        if let Some(more) = lag_warnings.due() {
                            tracing::warn!(
                                "feedback protocol: {peer} fell behind and missed {n} messages ({more} more such gaps since the last warning)"
                            );
                        }
                        write_line(w, &dropped_line(n), timeout).await?;
                    }
                    // Only when every handle is gone; nothing more will come.
                    Err(broadcast::error::RecvError::Closed) => sub = None,
                },
                () = &mut finished => {
                    // Everything is published: write out the rest, then say
                    // goodbye.
                    if let Some(s) = sub.as_mut() {
                        loop {
                            match s.rx.try_recv() {
                                Ok(p) => {
                                    if s.topics.contains(&p.topic) {
                                        write_line(w, &p.json, timeout).await?;
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                    hub.metrics.dropped("tcp", n);
                                    write_line(w, &dropped_line(n), timeout).await?;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    write_line(
                        w,
                        r#"{"type":"closing","reason":"the session has ended"}"#,
                        timeout,
                    )
                    .await?;
                    return Ok(());
                }
            }
        }
    }
    .await;
    match &result {
        Ok(()) => {}
        Err(WriteError::Stalled) => {
            let missed = sub.as_ref().map_or(0, |s| s.rx.len() as u64);
            hub.metrics.dropped("tcp", missed);
            tracing::warn!(
                "feedback protocol: {peer} read nothing for {:.1} s; disconnected ({missed} messages undelivered)",
                timeout.as_secs_f64()
            );
        }
        Err(WriteError::Failed(e)) => {
            tracing::debug!("feedback protocol: {peer}: write failed: {e}");
        }
    }
    result
}

/// Send every feed message of `topics` to each of `targets` as one
/// datagram (JSON, no newline). Targets are resolved now; a target nobody
/// listens on is no error (its failures are counted and logged at most
/// every 10 s).
pub fn start_udp(
    rt: &tokio::runtime::Runtime,
    targets: &[String],
    topics: Vec<Topic>,
    hub: HubHandle,
) -> std::io::Result<()> {
    let resolved = rt.block_on(async {
        let mut out = Vec::new();
        for t in targets {
            let addr = tokio::net::lookup_host(t.as_str())
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("UDP target '{t}': {e}")))?
                .next()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("UDP target '{t}' resolves to no address"),
                    )
                })?;
            out.push(addr);
        }
        Ok::<_, std::io::Error>(out)
    })?;
    // One socket per address family in use.
    let (v4, v6) = rt.block_on(async {
        let v4 = if resolved.iter().any(SocketAddr::is_ipv4) {
            Some(tokio::net::UdpSocket::bind("0.0.0.0:0").await?)
        } else {
            None
        };
        let v6 = if resolved.iter().any(SocketAddr::is_ipv6) {
            Some(tokio::net::UdpSocket::bind("[::]:0").await?)
        } else {
            None
        };
        Ok::<_, std::io::Error>((v4, v6))
    })?;
    hub.metrics.clients("udp").set(resolved.len() as i64);
    tracing::info!(
        "feedback datagrams: {} to {}",
        topics_json(&topics),
        targets.join(", ")
    );
    let rx = hub.stream();
    // Taken now, so the daemon cannot stop before the task has sent the
    // session's last messages.
    let guard = hub.feed_guard();
    rt.spawn(udp_loop(rx, resolved, topics, (v4, v6), hub, guard));
    Ok(())
}

/// The datagram for a message: its JSON, or for a trial whose top-k makes
/// it too long, the same with fewer candidates and `top_total` saying how
/// many there were; `None` when it cannot be made to fit.
pub fn datagram(json: &str) -> Option<std::borrow::Cow<'_, str>> {
    if json.len() <= MAX_DATAGRAM {
        return Some(json.into());
    }
    let mut v: Value = serde_json::from_str(json).ok()?;
    let obj = v.as_object_mut()?;
    let total = obj.get("top")?.as_array()?.len();
    obj.insert("top_total".into(), total.into());
    loop {
        let top = obj.get_mut("top")?.as_array_mut()?;
        if top.is_empty() {
            return None;
        }
        let keep = top.len() / 2;
        top.truncate(keep);
        let text = Value::Object(obj.clone()).to_string();
        if text.len() <= MAX_DATAGRAM {
            return Some(text.into());
        }
    }
}

async fn udp_loop(
    mut rx: broadcast::Receiver<Arc<Published>>,
    targets: Vec<SocketAddr>,
    topics: Vec<Topic>,
    (v4, v6): (Option<tokio::net::UdpSocket>, Option<tokio::net::UdpSocket>),
    hub: HubHandle,
    _guard: FeedGuard,
) {
    let mut send_errors: Vec<Throttle> = targets
        .iter()
        .map(|_| Throttle::new(Duration::from_secs(10)))
        .collect();
    let mut too_long = Throttle::new(Duration::from_secs(10));
    let finished = hub.finished();
    tokio::pin!(finished);
    let mut draining = false;
    loop {
        let published = if draining {
            match rx.try_recv() {
                Ok(p) => Ok(p),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(_) => return,
            }
        } else {
            tokio::select! {
                p = rx.recv() => p,
                () = &mut finished => {
                    draining = true;
                    continue;
                }
            }
        };
        let p = match published {
            Ok(p) => p,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Sending never waits, so this takes a starved runtime.
                hub.metrics.dropped("udp", n * targets.len() as u64);
                tracing::warn!("feedback datagrams: fell behind, {n} messages not sent");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !topics.contains(&p.topic) {
            continue;
        }
        let Some(payload) = datagram(&p.json) else {
            hub.metrics.dropped("udp", targets.len() as u64);
            if let Some(n) = too_long.due() {
                tracing::warn!(
                    "feedback datagrams: a {} message of {} bytes is over {MAX_DATAGRAM} bytes; not sent ({n} more since the last warning)",
                    topics_json(&[p.topic]),
                    p.json.len()
                );
            }
            continue;
        };
        for (i, target) in targets.iter().enumerate() {
            let socket = if target.is_ipv4() { &v4 } else { &v6 };
            let Some(socket) = socket else { continue };
            // Never waits: a full socket buffer drops the datagram, as the
            // network would.
            if let Err(e) = socket.try_send_to(payload.as_bytes(), *target) {
                hub.metrics.dropped("udp", 1);
                if let Some(n) = send_errors[i].due() {
                    tracing::warn!(
                        "feedback datagrams to {target}: {e} ({n} more failures since the last warning)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_errors_name_the_problem() {
        let (id, r) = parse_request(r#"{"type":"ping","id":7}"#).unwrap();
        assert_eq!((id, r), (Some(Value::from(7)), ClientRequest::Ping));
        let (_, r) = parse_request(r#"{"type":"get","what":"trial","run":1,"trial":3}"#).unwrap();
        assert_eq!(
            r,
            ClientRequest::Get(Query::Trial(Some(TrialKey::new(1, 3))))
        );
        let (_, r) = parse_request(r#"{"type":"get","what":"run"}"#).unwrap();
        assert_eq!(r, ClientRequest::Get(Query::Run(None)));
        let (id, r) = parse_request(r#"{"type":"subscribe","id":"a"}"#).unwrap();
        assert_eq!(id, Some(Value::from("a")));
        assert_eq!(
            r,
            ClientRequest::Subscribe {
                topics: Topic::ALL.to_vec(),
                snapshot: false
            }
        );
        let (_, r) =
            parse_request(r#"{"type":"subscribe","topics":["trial"],"snapshot":true}"#).unwrap();
        assert_eq!(
            r,
            ClientRequest::Subscribe {
                topics: vec![Topic::Trial],
                snapshot: true
            }
        );
        for (bad, why) in [
            ("hello", "not JSON"),
            ("[1,2]", "expected a JSON object"),
            (r#"{"what":"volume"}"#, "missing 'type'"),
            (r#"{"type":3}"#, "'type' must be a string"),
            (r#"{"type":"dance"}"#, "unknown request type 'dance'"),
            (r#"{"type":"get"}"#, "missing field `what`"),
            (
                r#"{"type":"get","what":"weather"}"#,
                "unknown 'what' 'weather'",
            ),
            (
                r#"{"type":"get","what":"trial","run":1}"#,
                "both 'run' and 'trial'",
            ),
            (
                r#"{"type":"get","what":"volume","run":1}"#,
                "takes no 'run'",
            ),
            (r#"{"type":"get","what":"run","run":-1}"#, "invalid value"),
            (
                r#"{"type":"ping","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"type":"subscribe","topics":["weather"]}"#,
                "unknown variant `weather`",
            ),
            (r#"{"type":"subscribe","topics":[]}"#, "'topics' is empty"),
        ] {
            let err = parse_request(bad).unwrap_err().error;
            assert!(err.contains(why), "{bad}: {err}");
        }
        // The id comes back with the error when it could be read.
        let e = parse_request(r#"{"type":"dance","id":[1]}"#).unwrap_err();
        assert_eq!(e.id, Some(serde_json::json!([1])));
    }

    #[test]
    fn reply_lines_are_json_with_the_id() {
        let id = Value::from("x\"y");
        let line = ok_line(Some(&id), ",\"what\":\"volume\",\"result\":null");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["id"], "x\"y");
        assert!(v["result"].is_null());
        let v: Value = serde_json::from_str(&error_line(None, "bad \"thing\"\n")).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "bad \"thing\"\n");
        assert!(v.get("id").is_none());
    }

    #[test]
    fn long_trials_lose_candidates_to_fit_a_datagram_and_say_so() {
        let top: Vec<Value> = (0..400)
            .map(|i| serde_json::json!({"id": format!("image-{i:05}"), "score": 0.5}))
            .collect();
        let msg =
            serde_json::json!({"type": "trial", "run": 1, "trial": 2, "top": top}).to_string();
        assert!(msg.len() > MAX_DATAGRAM);
        let d = datagram(&msg).unwrap();
        assert!(d.len() <= MAX_DATAGRAM);
        let v: Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["top_total"], 400);
        let kept = v["top"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 400);
        assert_eq!(kept[0]["id"], "image-00000", "best first, kept");
        // Short messages go as they are; long ones without candidates not at all.
        assert_eq!(
            datagram("{\"type\":\"run\"}").unwrap(),
            "{\"type\":\"run\"}"
        );
        let notice = serde_json::json!({"type": "notice", "text": "x".repeat(MAX_DATAGRAM)});
        assert!(datagram(&notice.to_string()).is_none());
    }
}
