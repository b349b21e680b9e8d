//! The two contracts of the data path, and the plumbing that runs them.
//!
//! In: a [`Stage`] (a transform: typed input in, typed messages out) or a
//! [`Sink`] (pipeline events in, something written or served out), plus the
//! channels that connect it. Out: a thread running it, and an [`Outlet`]
//! that carries what it emits downstream.
//!
//! ```text
//!            Inlet (primary + side inputs)          Outlet (targets)
//! channel ─┐                                    ┌─▶ next stage   (reliable: waits, says so)
//! channel ─┴─▶ Stage::handle(input, out) ──out──┼─▶ sink         (lossy: drops, counts)
//!                                               └─▶ watchdog     (heartbeats, end of line)
//! ```
//!
//! The outlet is the one place that knows about back-pressure (reliable
//! targets make the sender wait, and say so; lossy ones drop and count),
//! fan-out (one message to many targets, shared behind one `Arc`),
//! counters (messages by kind, readable while running) and the heartbeat
//! (never waited for; at the end of the line it feeds the service
//! watchdog instead of the sinks). A stage itself only sees `&mut Emit`,
//! a closure, so it can be driven offline (calibration, resume replay,
//! tests) with no thread and no channel.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvError, Select, SelectedOperation, SendTimeoutError, Sender, TrySendError, bounded,
};

use crate::types::messages::{IngestEvent, PipelineEvent};

/// What a stage emits through.
pub type Emit<'a, T> = dyn FnMut(T) + 'a;

/// A message that travels between stages.
pub trait Message: Clone + Send + Sync + 'static {
    /// The variant's name, for the counters ("realigned", "beta"…).
    fn kind(&self) -> &'static str;
    /// The instant ingest sent it, when this is a heartbeat.
    fn heartbeat(&self) -> Option<Instant>;
}

/// A transform on the data path: realign, GLM, decode.
pub trait Stage: Send + 'static {
    /// What it takes (an enum when it has side inputs; each input channel's
    /// type converts into it).
    type Input: Send + 'static;
    /// What it emits.
    type Output: Message;
    /// What it leaves behind when its input ends.
    type Summary: Send + 'static;
    /// Its thread's name.
    const NAME: &'static str;

    /// Before the first input (announcements, replayed outputs).
    fn start(&mut self, _out: &mut Emit<'_, Self::Output>) {}

    /// One input: update state, emit what follows from it.
    fn handle(&mut self, input: Self::Input, out: &mut Emit<'_, Self::Output>);

    /// The primary input ended: emit what is still due, and hand back the
    /// summary.
    fn finish(self, out: &mut Emit<'_, Self::Output>) -> Self::Summary;
}

/// How a sink is fed when it falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Never loses an event: the sender waits (and says so).
    Reliable,
    /// Drops and counts when behind, so it can never hold up the scan.
    Lossy,
}

/// The end of the data path: the session store, the console, the hub
/// behind the dashboard and protocol, the BIDS derivatives.
pub trait Sink: Send + 'static {
    /// What servers may ask of it besides events ([`Infallible`]: nothing).
    type Request: Send + 'static;
    /// Its thread's name.
    const NAME: &'static str;
    /// How it is fed.
    const DELIVERY: Delivery;

    /// One event. An error is logged and counted; the sink keeps going.
    fn deliver(&mut self, event: &PipelineEvent) -> std::io::Result<()>;

    /// One request (only sinks with a request channel get any).
    fn request(&mut self, _request: Self::Request) {}

    /// Events ended: flush, and return errors not already returned by
    /// [`Sink::deliver`] (e.g. counted internally).
    fn finish(self) -> u64
    where
        Self: Sized,
    {
        0
    }
}

/// Messages sent so far, by kind.
#[derive(Debug, Default)]
pub struct Tally(Mutex<BTreeMap<&'static str, u64>>);

impl Tally {
    fn add(&self, kind: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }

    /// How many of `kind` went out.
    pub fn get(&self, kind: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Every kind seen, with its count.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

enum Tx<T> {
    Owned(Sender<T>),
    Shared(Sender<Arc<T>>),
}

struct Target<T> {
    name: &'static str,
    tx: Tx<T>,
    delivery: Delivery,
    dropped: u64,
    gone: bool,
}

/// How long a reliable send waits between "still behind" warnings.
const STILL_BEHIND: Duration = Duration::from_secs(5);

/// Where a stage's output goes: see the module documentation.
pub struct Outlet<T> {
    from: &'static str,
    targets: Vec<Target<T>>,
    tally: Arc<Tally>,
    watchdog: Option<Sender<Instant>>,
}

impl<T: Message> Outlet<T> {
    /// An outlet of the stage `from`, with no target yet.
    pub fn new(from: &'static str) -> Outlet<T> {
        Outlet {
            from,
            targets: Vec::new(),
            tally: Arc::default(),
            watchdog: None,
        }
    }

    /// Also send each message, by value, to `tx`.
    pub fn to(mut self, name: &'static str, tx: Sender<T>, delivery: Delivery) -> Outlet<T> {
        self.push(name, Tx::Owned(tx), delivery);
        self
    }

    /// Also send each message, shared, to `tx`.
    pub fn to_shared(
        mut self,
        name: &'static str,
        tx: Sender<Arc<T>>,
        delivery: Delivery,
    ) -> Outlet<T> {
        self.push(name, Tx::Shared(tx), delivery);
        self
    }

    fn push(&mut self, name: &'static str, tx: Tx<T>, delivery: Delivery) {
        self.targets.push(Target {
            name,
            tx,
            delivery,
            dropped: 0,
            gone: false,
        });
    }

    /// This is the end of the line: heartbeats go to `tx` (never waited
    /// for) instead of the targets.
    pub fn watchdog(mut self, tx: Sender<Instant>) -> Outlet<T> {
        self.watchdog = Some(tx);
        self
    }

    /// The counters, readable while the stage runs.
    pub fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    /// Every target's receiver is gone (nothing more can be delivered).
    pub fn is_closed(&self) -> bool {
        !self.targets.is_empty() && self.targets.iter().all(|t| t.gone)
    }

    /// Send `msg` to every target, each by its delivery.
    pub fn send(&mut self, msg: T) {
        if let Some(sent) = msg.heartbeat() {
            // A heartbeat is never waited for: a full channel means the
            // stage after is busy, and the next heartbeat will do.
            match &self.watchdog {
                // Nobody listening (no service manager) is fine.
                Some(w) => drop(w.try_send(sent)),
                None => self.each(msg, |t, m| {
                    matches!(t.try_send(m), Err(Refused::Gone)).then_some(())
                }),
            }
            return;
        }
        self.tally.add(msg.kind());
        let from = self.from;
        self.each(msg, |t, m| t.deliver(from, m));
    }

    /// Hand `msg` to each live target (by value to the last owned one);
    /// `f` returns `Some` when the target turned out to be gone.
    fn each(&mut self, msg: T, mut f: impl FnMut(&mut Target<T>, Payload<T>) -> Option<()>) {
        let shared = self
            .targets
            .iter()
            .any(|t| !t.gone && matches!(t.tx, Tx::Shared(_)))
            .then(|| Arc::new(msg.clone()));
        let last_owned = self
            .targets
            .iter()
            .rposition(|t| !t.gone && matches!(t.tx, Tx::Owned(_)));
        let mut msg = Some(msg);
        for (i, t) in self.targets.iter_mut().enumerate() {
            if t.gone {
                continue;
            }
            let payload = match &t.tx {
                Tx::Shared(_) => match &shared {
                    Some(a) => Payload::Shared(a.clone()),
                    None => continue,
                },
                Tx::Owned(_) if Some(i) == last_owned => match msg.take() {
                    Some(m) => Payload::Owned(m),
                    None => continue,
                },
                Tx::Owned(_) => match &msg {
                    Some(m) => Payload::Owned(m.clone()),
                    None => continue,
                },
            };
            if f(t, payload).is_some() {
                t.gone = true;
            }
        }
    }
}

enum Payload<T> {
    Owned(T),
    Shared(Arc<T>),
}

/// What a failed `try_send` hands back, for either kind of channel.
enum Refused<T> {
    Full(Payload<T>),
    Gone,
}

impl<T> Target<T> {
    fn try_send(&self, p: Payload<T>) -> Result<(), Refused<T>> {
        match (&self.tx, p) {
            (Tx::Owned(tx), Payload::Owned(m)) => tx.try_send(m).map_err(|e| match e {
                TrySendError::Full(m) => Refused::Full(Payload::Owned(m)),
                TrySendError::Disconnected(_) => Refused::Gone,
            }),
            (Tx::Shared(tx), Payload::Shared(a)) => tx.try_send(a).map_err(|e| match e {
                TrySendError::Full(a) => Refused::Full(Payload::Shared(a)),
                TrySendError::Disconnected(_) => Refused::Gone,
            }),
            // `each` pairs payloads with their target's kind.
            _ => Ok(()),
        }
    }

    fn send_timeout(&self, p: Payload<T>, wait: Duration) -> Result<(), Refused<T>> {
        match (&self.tx, p) {
            (Tx::Owned(tx), Payload::Owned(m)) => tx.send_timeout(m, wait).map_err(|e| match e {
                SendTimeoutError::Timeout(m) => Refused::Full(Payload::Owned(m)),
                SendTimeoutError::Disconnected(_) => Refused::Gone,
            }),
            (Tx::Shared(tx), Payload::Shared(a)) => tx.send_timeout(a, wait).map_err(|e| match e {
                SendTimeoutError::Timeout(a) => Refused::Full(Payload::Shared(a)),
                SendTimeoutError::Disconnected(_) => Refused::Gone,
            }),
            _ => Ok(()),
        }
    }

    fn queued(&self) -> usize {
        match &self.tx {
            Tx::Owned(tx) => tx.len(),
            Tx::Shared(tx) => tx.len(),
        }
    }

    /// Deliver by this target's rule; `Some` when its receiver is gone.
    fn deliver(&mut self, from: &'static str, p: Payload<T>) -> Option<()> {
        let p = match self.try_send(p) {
            Ok(()) => return None,
            Err(Refused::Gone) => return self.lost(from),
            Err(Refused::Full(p)) => p,
        };
        match self.delivery {
            Delivery::Lossy => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        "the {} is behind; {} events dropped so far",
                        self.name,
                        self.dropped
                    );
                }
                None
            }
            Delivery::Reliable => {
                tracing::warn!(
                    "the {} is behind ({} queued); {from} waits for it (nothing is dropped)",
                    self.name,
                    self.queued()
                );
                let started = Instant::now();
                let mut p = p;
                loop {
                    match self.send_timeout(p, STILL_BEHIND) {
                        Ok(()) => {
                            tracing::info!(
                                "the {} caught up after {:.1} s",
                                self.name,
                                started.elapsed().as_secs_f64()
                            );
                            return None;
                        }
                        Err(Refused::Full(back)) => {
                            tracing::warn!(
                                "the {} is still behind after {:.0} s; {from} keeps waiting",
                                self.name,
                                started.elapsed().as_secs_f64()
                            );
                            p = back;
                        }
                        Err(Refused::Gone) => return self.lost(from),
                    }
                }
            }
        }
    }

    fn lost(&self, from: &'static str) -> Option<()> {
        tracing::debug!("the {} is gone; {from} no longer sends to it", self.name);
        Some(())
    }
}

/// A stage's inputs: the primary channel, whose end ends the stage, and
/// side channels (live trials, worker results), which may end earlier.
pub struct Inlet<I> {
    ports: Vec<Box<dyn Port<I>>>,
}

trait Port<I>: Send {
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> usize;
    fn take(&self, oper: SelectedOperation<'_>) -> Result<I, RecvError>;
}

struct Mapped<T, I> {
    rx: Receiver<T>,
    into: fn(T) -> I,
}

impl<T: Send, I> Port<I> for Mapped<T, I> {
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> usize {
        sel.recv(&self.rx)
    }

    fn take(&self, oper: SelectedOperation<'_>) -> Result<I, RecvError> {
        oper.recv(&self.rx).map(self.into)
    }
}

impl<I: 'static> Inlet<I> {
    /// The primary input.
    pub fn new<T: Send + Into<I> + 'static>(rx: Receiver<T>) -> Inlet<I> {
        Inlet {
            ports: vec![Box::new(Mapped {
                rx,
                into: Into::into,
            })],
        }
    }

    /// A side input.
    pub fn and<T: Send + Into<I> + 'static>(self, rx: Receiver<T>) -> Inlet<I> {
        self.and_with(rx, Into::into)
    }

    /// A side input, each item made an input by `into`.
    pub fn and_with<T: Send + 'static>(mut self, rx: Receiver<T>, into: fn(T) -> I) -> Inlet<I> {
        self.ports.push(Box::new(Mapped { rx, into }));
        self
    }

    /// The next input from any open channel; `None` once the primary one
    /// has ended.
    fn next(&self, open: &mut [bool]) -> Option<I> {
        loop {
            let mut sel = Select::new();
            let mut which = Vec::with_capacity(self.ports.len());
            for (i, p) in self.ports.iter().enumerate() {
                if open[i] {
                    let at = p.register(&mut sel);
                    which.push((at, i));
                }
            }
            let oper = sel.select();
            let at = oper.index();
            let i = which.iter().find(|(a, _)| *a == at).map_or(0, |(_, i)| *i);
            match self.ports[i].take(oper) {
                Ok(input) => return Some(input),
                Err(RecvError) if i == 0 => return None,
                Err(RecvError) => open[i] = false,
            }
        }
    }
}

/// A thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("could not start the {name} thread: {source}")]
pub struct SpawnError {
    /// The thread's name.
    pub name: &'static str,
    /// Why.
    pub source: std::io::Error,
}

/// Run `f` on a thread called `name`.
pub fn thread<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, SpawnError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| SpawnError { name, source })
}

/// Run `stage` on its own thread: see [`drive`].
pub fn spawn<S: Stage>(
    stage: S,
    inlet: Inlet<S::Input>,
    outlet: Outlet<S::Output>,
) -> Result<JoinHandle<S::Summary>, SpawnError> {
    thread(S::NAME, move || drive(stage, inlet, outlet))
}

/// Run `stage` here: start, every input until the primary one ends,
/// finish. Dropping the outlet at the end closes the next stage's input, so
/// the whole line drains in order.
pub fn drive<S: Stage>(
    mut stage: S,
    inlet: Inlet<S::Input>,
    mut outlet: Outlet<S::Output>,
) -> S::Summary {
    let mut out = |m: S::Output| outlet.send(m);
    stage.start(&mut out);
    let mut open = vec![true; inlet.ports.len()];
    while let Some(input) = inlet.next(&mut open) {
        stage.handle(input, &mut out);
    }
    stage.finish(&mut out)
}

/// Run `sink` here on `events` (and `requests`) until the events end;
/// returns its error count.
pub fn run_sink<K: Sink>(
    sink: K,
    events: Receiver<Arc<PipelineEvent>>,
    requests: Option<Receiver<K::Request>>,
) -> u64 {
    drive(
        SinkStage { sink, errors: 0 },
        sink_inlet(events, requests),
        Outlet::new(K::NAME),
    )
}

fn sink_inlet<R: Send + 'static>(
    events: Receiver<Arc<PipelineEvent>>,
    requests: Option<Receiver<R>>,
) -> Inlet<SinkInput<R>> {
    let inlet = Inlet::new(events);
    match requests {
        Some(r) => inlet.and_with(r, SinkInput::Request),
        None => inlet,
    }
}

/// An input of a [`Sink`] run as a stage.
pub enum SinkInput<R> {
    /// A pipeline event.
    Event(Arc<PipelineEvent>),
    /// A request from a server.
    Request(R),
}

impl<R> From<Arc<PipelineEvent>> for SinkInput<R> {
    fn from(e: Arc<PipelineEvent>) -> Self {
        SinkInput::Event(e)
    }
}

/// A sink as a stage that emits nothing: its errors are counted and logged.
struct SinkStage<K> {
    sink: K,
    errors: u64,
}

impl Message for Infallible {
    fn kind(&self) -> &'static str {
        match *self {}
    }
    fn heartbeat(&self) -> Option<Instant> {
        match *self {}
    }
}

impl<K: Sink> Stage for SinkStage<K> {
    type Input = SinkInput<K::Request>;
    type Output = Infallible;
    type Summary = u64;
    const NAME: &'static str = K::NAME;

    fn handle(&mut self, input: Self::Input, _out: &mut Emit<'_, Infallible>) {
        match input {
            SinkInput::Event(e) => {
                if let Err(e) = self.sink.deliver(&e) {
                    self.errors += 1;
                    tracing::error!("{} sink: {e}", K::NAME);
                }
            }
            SinkInput::Request(r) => self.sink.request(r),
        }
    }

    fn finish(self, _out: &mut Emit<'_, Infallible>) -> u64 {
        self.errors + self.sink.finish()
    }
}

/// Channel capacity of each sink: events in flight before a reliable sink
/// makes the last stage wait (or a lossy one starts dropping).
const SINK_QUEUE: usize = 256;

/// The sinks at the end of the line, and the outlet that feeds them.
pub struct Sinks {
    outlet: Outlet<PipelineEvent>,
    running: Vec<(&'static str, JoinHandle<u64>)>,
}

impl Sinks {
    /// No sink yet; the outlet belongs to the last stage, `from`.
    pub fn new(from: &'static str) -> Sinks {
        Sinks {
            outlet: Outlet::new(from),
            running: Vec::new(),
        }
    }

    /// Start `sink` on its thread and feed it every event.
    pub fn add<K: Sink>(&mut self, sink: K) -> Result<(), SpawnError> {
        self.start(sink, None)
    }

    /// [`Sinks::add`], with a request channel beside the events.
    pub fn add_serving<K: Sink>(
        &mut self,
        sink: K,
        requests: Receiver<K::Request>,
    ) -> Result<(), SpawnError> {
        self.start(sink, Some(requests))
    }

    fn start<K: Sink>(
        &mut self,
        sink: K,
        requests: Option<Receiver<K::Request>>,
    ) -> Result<(), SpawnError> {
        let (tx, rx) = bounded::<Arc<PipelineEvent>>(SINK_QUEUE);
        let handle = spawn(
            SinkStage { sink, errors: 0 },
            sink_inlet(rx, requests),
            Outlet::new(K::NAME),
        )?;
        let outlet = std::mem::replace(&mut self.outlet, Outlet::new(""));
        self.outlet = outlet.to_shared(K::NAME, tx, K::DELIVERY);
        self.running.push((K::NAME, handle));
        Ok(())
    }

    /// Observers embedding the pipeline get every event by value, reliably.
    pub fn observe(&mut self, tx: Sender<PipelineEvent>) {
        let outlet = std::mem::replace(&mut self.outlet, Outlet::new(""));
        self.outlet = outlet.to("observer", tx, Delivery::Reliable);
    }

    /// The outlet for the last stage (heartbeats to `watchdog`), and the
    /// sinks' threads, each returning its error count.
    pub fn into_parts(
        self,
        watchdog: Sender<Instant>,
    ) -> (Outlet<PipelineEvent>, Vec<(&'static str, JoinHandle<u64>)>) {
        (self.outlet.watchdog(watchdog), self.running)
    }
}

impl Message for IngestEvent {
    fn kind(&self) -> &'static str {
        match self {
            IngestEvent::RunStarted { .. } => "run_started",
            IngestEvent::Volume(_) => "volume",
            IngestEvent::Missing { .. } => "missing",
            IngestEvent::Duplicate { .. } => "duplicate",
            IngestEvent::Quarantined { .. } => "quarantined",
            IngestEvent::RunEnded { .. } => "run_ended",
            IngestEvent::Notice(_) => "notice",
            IngestEvent::Heartbeat(_) => "heartbeat",
        }
    }

    fn heartbeat(&self) -> Option<Instant> {
        match self {
            IngestEvent::Heartbeat(t) => Some(*t),
            _ => None,
        }
    }
}

impl Message for PipelineEvent {
    fn kind(&self) -> &'static str {
        match self {
            PipelineEvent::ReferenceReady { .. } => "reference_ready",
            PipelineEvent::Realigned(_) => "realigned",
            PipelineEvent::RealignFailed { .. } => "realign_failed",
            PipelineEvent::Ingest(e) => e.kind(),
            PipelineEvent::Beta(_) => "beta",
            PipelineEvent::TrialSkipped { .. } => "trial_skipped",
            PipelineEvent::Feedback(_) => "feedback",
            PipelineEvent::Notice(_) => "notice",
            PipelineEvent::DecoderReady(_) => "decoder_ready",
            PipelineEvent::Decoded(_) => "decoded",
            PipelineEvent::Reconstructed(_) => "reconstructed",
            PipelineEvent::DecodeSkipped { .. } => "decode_skipped",
        }
    }

    fn heartbeat(&self) -> Option<Instant> {
        match self {
            PipelineEvent::Ingest(e) => e.heartbeat(),
            _ => None,
        }
    }
}
