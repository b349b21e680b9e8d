//! The hub: the one owner of what clients can ask about the session.
//!
//! In: pipeline events (from the pipeline's `serve` outlet) and [`Request`]s
//! from the servers, each on its own channel. Out: feed messages published
//! to every subscriber (a broadcast channel: a slow subscriber falls behind
//! and is told how many it missed, it never holds the hub up), answers to
//! requests (snapshots, latest values, subscriptions), metrics, and the
//! per-trial result files.
//!
//! The hub runs on its own thread and owns its state; servers on the async
//! runtime talk to it with messages, so there is no shared mutable state and
//! a subscription's snapshot and its stream line up exactly (nothing is
//! missed or seen twice between them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, oneshot, watch};

use super::feed::{self, FeedContext, FeedMessage, Topic, VolumeMsg};
use super::metrics::Metrics;
use super::results::ResultFiles;
use crate::types::key::TrialKey;
use crate::types::messages::{IngestEvent, PipelineEvent};

/// A published message: its topic, the message and its JSON line.
#[derive(Debug)]
pub struct Published {
    /// Its stream.
    pub topic: Topic,
    /// Sequence number, from 1, over the session.
    pub seq: u64,
    /// The message.
    pub message: FeedMessage,
    /// Its JSON (one line, no newline).
    pub json: String,
}

/// A run as the dashboard shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunStatus {
    /// Run number.
    pub run: u32,
    /// `running` or `ended`.
    pub status: &'static str,
    /// Volumes realigned (late ones included).
    pub volumes: u64,
    /// Of those, late.
    pub late: u64,
    /// Indices declared missing.
    pub missing: u64,
    /// Files quarantined.
    pub quarantined: u64,
    /// Duplicate files ignored.
    pub duplicates: u64,
    /// Volumes with FD over the threshold.
    pub fd_over: u64,
    /// Trials decoded.
    pub decoded: u64,
    /// Trials reconstructed.
    pub reconstructed: u64,
    /// Highest volume index seen.
    pub last_index: Option<u32>,
}

/// A trial as the dashboard lists it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TrialRow {
    /// Run number.
    pub run: u32,
    /// Trial number within the run.
    pub trial: usize,
    /// The image shown, when known.
    pub image_id: Option<String>,
    /// Top-k candidates, best first.
    pub top: Vec<feed::Candidate>,
    /// Decoded value.
    pub value: Option<f32>,
    /// Rank of the image shown.
    pub true_rank: Option<usize>,
    /// Reconstruction URL (dashboard), when reconstructed.
    pub recon_url: Option<String>,
    /// Reconstruction path on disk.
    pub recon_path: Option<String>,
    /// Why something is missing, when it is.
    pub skipped: Option<String>,
    /// Trigger → retrieval, ms.
    pub retrieval_ms: Option<f64>,
    /// Trigger → reconstruction, ms.
    pub recon_ms: Option<f64>,
}

/// Session-wide counts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Counts {
    /// Volumes realigned.
    pub received: u64,
    /// Of those, late.
    pub late: u64,
    /// Indices declared missing.
    pub missing: u64,
    /// Files quarantined.
    pub quarantined: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Volumes that could not be realigned.
    pub realign_failed: u64,
    /// Volumes with FD over the threshold.
    pub fd_over: u64,
    /// Betas estimated.
    pub betas: u64,
    /// Trials decoded.
    pub decoded: u64,
    /// Trials reconstructed.
    pub reconstructed: u64,
    /// Trials skipped (no beta, retrieval or reconstruction).
    pub skipped: u64,
}

/// Everything a newly connected client needs to draw the session.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The session folder.
    pub session: String,
    /// FD threshold, mm.
    pub fd_threshold_mm: f64,
    /// Session-wide counts.
    pub counts: Counts,
    /// Per run.
    pub runs: Vec<RunStatus>,
    /// The latest volumes (oldest first), up to the history length.
    pub volumes: Vec<VolumeMsg>,
    /// Every trial so far.
    pub trials: Vec<TrialRow>,
    /// The latest notices, oldest first.
    pub notices: Vec<String>,
    /// The latest `ingest` messages (gaps, late files, duplicates,
    /// quarantines, realign failures), oldest first.
    pub ingest: Vec<FeedMessage>,
    /// Whether stimulus images are served at `/stimulus/<id>.png`.
    pub stimuli: bool,
    /// The decoder, when loaded.
    pub decoder: Option<FeedMessage>,
    /// Sequence number of the last message included.
    pub seq: u64,
}

/// What a server can ask the hub.
pub enum Request {
    /// The snapshot (as JSON).
    Snapshot(oneshot::Sender<String>),
    /// The snapshot (as JSON) and a receiver positioned right after it.
    Subscribe(oneshot::Sender<(String, broadcast::Receiver<Arc<Published>>)>),
    /// The latest volume.
    LatestVolume(oneshot::Sender<Option<String>>),
    /// A trial's row (latest trial when `None`).
    Trial {
        /// The trial, or the latest.
        key: Option<TrialKey>,
        /// Reply.
        reply: oneshot::Sender<Option<String>>,
    },
    /// A run's status (latest run when `None`).
    Run {
        /// Run number, or the latest.
        run: Option<u32>,
        /// Reply.
        reply: oneshot::Sender<Option<String>>,
    },
    /// The session's counts, runs and latest keys, without the history.
    Status(oneshot::Sender<String>),
    /// The latest neurofeedback message.
    LatestFeedback(oneshot::Sender<Option<String>>),
}

/// Feed clients that still have published messages to write out.
#[derive(Default)]
struct OpenFeeds {
    open: AtomicUsize,
    changed: Notify,
}

/// Held by a client connection while it may still write feed messages;
/// [`HubHandle::drained`] waits for every one to be dropped.
pub struct FeedGuard(Arc<OpenFeeds>);

impl Drop for FeedGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// How servers reach the hub.
#[derive(Clone)]
pub struct HubHandle {
    requests: Sender<Request>,
    broadcast: broadcast::Sender<Arc<Published>>,
    /// The metrics (shared atomics).
    pub metrics: Arc<Metrics>,
    /// The session folder.
    pub session_dir: PathBuf,
    /// Where reconstructions' PNGs are served from.
    pub recon_dir: PathBuf,
    /// Stimulus images (`<image_id>.png`), when configured.
    pub stimuli: Option<PathBuf>,
    finished: watch::Receiver<bool>,
    feeds: Arc<OpenFeeds>,
}

/// Why the hub did not answer.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Too many requests queued: the hub is busy.
    #[error("the daemon is busy; try again")]
    Busy,
    /// The session is over.
    #[error("the session has ended")]
    Gone,
}

impl HubHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, HubError> {
        let (tx, rx) = oneshot::channel();
        match self.requests.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(HubError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(HubError::Gone),
        }
        rx.await.map_err(|_| HubError::Gone)
    }

    /// The session snapshot, as JSON.
    pub async fn snapshot(&self) -> Result<String, HubError> {
        self.ask(Request::Snapshot).await
    }

    /// The snapshot and every message after it.
    pub async fn subscribe(
        &self,
    ) -> Result<(String, broadcast::Receiver<Arc<Published>>), HubError> {
        self.ask(Request::Subscribe).await
    }

    /// Every message from now on (no snapshot).
    pub fn stream(&self) -> broadcast::Receiver<Arc<Published>> {
        self.broadcast.subscribe()
    }

    /// Resolves once the hub has stopped (the session is over and every
    /// message has been published), so servers can end their streams
    /// cleanly: the broadcast channel itself stays open while handles exist.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut finished = self.finished.clone();
        // An error means the hub was dropped without running: over too.
        async move {
            let _ = finished.wait_for(|done| *done).await;
        }
    }

    /// The latest volume message.
    pub async fn latest_volume(&self) -> Result<Option<String>, HubError> {
        self.ask(Request::LatestVolume).await
    }

    /// A trial's row (the latest trial for `None`).
    pub async fn trial(&self, key: Option<TrialKey>) -> Result<Option<String>, HubError> {
        self.ask(|reply| Request::Trial { key, reply }).await
    }

    /// A run's status (the latest run for `None`).
    pub async fn run(&self, run: Option<u32>) -> Result<Option<String>, HubError> {
        self.ask(|reply| Request::Run { run, reply }).await
    }

    /// The session's counts, runs and latest keys (a small snapshot).
    pub async fn status(&self) -> Result<String, HubError> {
        self.ask(Request::Status).await
    }

    /// The latest neurofeedback message.
    pub async fn latest_feedback(&self) -> Result<Option<String>, HubError> {
        self.ask(Request::LatestFeedback).await
    }

    /// Resolves once the hub has published its last message (the pipeline's
    /// events ended), or at once if it never runs.
    pub async fn finished(&self) {
        let mut rx = self.finished.clone();
        // An error means the hub was dropped without running: nothing more
        // will be published either.
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Count a client that will write out what was published before it
    /// ends; see [`HubHandle::drained`].
    pub fn feed_guard(&self) -> FeedGuard {
        self.feeds.open.fetch_add(1, Ordering::AcqRel);
        FeedGuard(self.feeds.clone())
    }

    /// Resolves once the hub has finished and every [`FeedGuard`] is gone:
    /// each client has written the session's last messages (or was closed).
    pub async fn drained(&self) {
        self.finished().await;
        loop {
            let changed = self.feeds.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a guard dropped in between
            // still wakes us.
            changed.as_mut().enable();
            if self.feeds.open.load(Ordering::Acquire) == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The session folder.
    pub session_dir: PathBuf,
    /// FD threshold, mm.
    pub fd_threshold_mm: f64,
    /// Per-trial result files here, when on.
    pub results_dir: Option<PathBuf>,
    /// Stimulus images.
    pub stimuli: Option<PathBuf>,
    /// Volumes kept for a new client's plots.
    pub history: usize,
    /// Messages a subscriber may fall behind before it misses some.
    pub backlog: usize,
}

const REQUEST_QUEUE: usize = 1024;
const NOTICES: usize = 50;

/// The hub's state, owned by its thread.
pub struct Hub {
    /// Its own end of the request channel, to answer what is still queued
    /// when the events end.
    requests: Receiver<Request>,
    config: HubConfig,
    ctx: FeedContext,
    broadcast: broadcast::Sender<Arc<Published>>,
    metrics: Arc<Metrics>,
    results: Option<ResultFiles>,
    seq: u64,
    counts: Counts,
    runs: BTreeMap<u32, RunStatus>,
    volumes: std::collections::VecDeque<VolumeMsg>,
    trials: BTreeMap<TrialKey, TrialRow>,
    last_trial: Option<TrialKey>,
    notices: std::collections::VecDeque<String>,
    ingest: std::collections::VecDeque<FeedMessage>,
    decoder: Option<FeedMessage>,
    feedback: Option<FeedMessage>,
    finished: watch::Sender<bool>,
}

impl Hub {
    /// A hub and the handle servers use, plus the receiver its thread reads
    /// requests from.
    pub fn new(config: HubConfig) -> std::io::Result<(Hub, HubHandle, Receiver<Request>)> {
        let recon_dir = match &config.results_dir {
            Some(d) => d.clone(),
            None => config.session_dir.join("decode").join("recon"),
        };
        let results = match &config.results_dir {
            Some(d) => Some(ResultFiles::create(d)?),
            None => None,
        };
        let (broadcast, _) = broadcast::channel(config.backlog.max(16));
        let (req_tx, req_rx) = crossbeam_channel::bounded(REQUEST_QUEUE);
        let metrics = Arc::new(Metrics::new());
        let (finished, finished_rx) = watch::channel(false);
        let handle = HubHandle {
            requests: req_tx,
            broadcast: broadcast.clone(),
            metrics: metrics.clone(),
            session_dir: config.session_dir.clone(),
            recon_dir: recon_dir.clone(),
            stimuli: config.stimuli.clone(),
            finished: finished_rx,
            feeds: Arc::new(OpenFeeds::default()),
        };
        let hub = Hub {
            requests: req_rx.clone(),
            ctx: FeedContext {
                fd_threshold_mm: config.fd_threshold_mm,
                recon_dir,
            },
            config,
            broadcast,
            metrics,
            results,
            seq: 0,
            counts: Counts::default(),
            runs: BTreeMap::new(),
            volumes: Default::default(),
            trials: BTreeMap::new(),
            last_trial: None,
            notices: Default::default(),
            ingest: Default::default(),
            decoder: None,
            feedback: None,
            finished,
        };
        Ok((hub, handle, req_rx))
    }

    /// Serve events and requests until the event channel closes; then
    /// answer what is queued and return the result-file errors.
    pub fn run(self, events: Receiver<Arc<PipelineEvent>>, requests: Receiver<Request>) -> u64 {
        crate::stage::run_sink(self, events, Some(requests))
    }

    fn run_mut(&mut self, run: u32) -> &mut RunStatus {
        self.runs.entry(run).or_insert_with(|| RunStatus {
            run,
            status: "running",
            ..Default::default()
        })
    }

    fn trial_mut(&mut self, run: u32, trial: usize) -> &mut TrialRow {
        let key = TrialKey::new(run, trial);
        self.last_trial = Some(key);
        self.trials.entry(key).or_insert_with(|| TrialRow {
            run,
            trial,
            ..Default::default()
        })
    }

    /// Take one pipeline event: update state, metrics and result files,
    /// then publish.
    pub fn handle(&mut self, ev: &PipelineEvent) {
        self.account(ev);
        let Some(message) = feed::from_event(ev, &self.ctx) else {
            return;
        };
        if let Some(results) = self.results.as_mut() {
            let m = &self.metrics;
            results.record(ev, &message, || {
                m.result_errors.inc();
            });
        }
        self.remember(&message);
        self.seq += 1;
        let published = Arc::new(Published {
            topic: message.topic(),
            seq: self.seq,
            json: message.to_json(),
            message,
        });
        // No receivers is fine: nobody is listening right now.
        let _ = self.broadcast.send(published);
    }

    fn account(&mut self, ev: &PipelineEvent) {
        let m = self.metrics.clone();
        match ev {
            PipelineEvent::Realigned(r) => {
                m.volume(if r.late { "late" } else { "realigned" });
                let lat = feed::VolumeLatency::of(r);
                m.stage("read", lat.read_ms / 1e3);
                m.stage("reorder", lat.reorder_ms / 1e3);
                m.stage("queue", lat.queue_ms / 1e3);
                m.stage("realign", lat.realign_ms / 1e3);
                m.stage("volume", lat.total_ms / 1e3);
                let over = r.fd.is_some_and(|fd| fd > self.config.fd_threshold_mm);
                if over {
                    m.fd_over.inc();
                    self.counts.fd_over += 1;
                }
                self.counts.received += 1;
                self.counts.late += u64::from(r.late);
                let run = self.run_mut(r.key.run);
                run.volumes += 1;
                run.late += u64::from(r.late);
                run.fd_over += u64::from(over);
                run.last_index = Some(run.last_index.map_or(r.key.index, |i| i.max(r.key.index)));
            }
            PipelineEvent::RealignFailed { key, .. } => {
                m.volume("realign_failed");
                self.counts.realign_failed += 1;
                self.run_mut(key.run);
            }
            PipelineEvent::Ingest(ie) => match ie {
                IngestEvent::RunStarted { run, .. } => {
                    m.runs.inc();
                    self.run_mut(*run).status = "running";
                }
                IngestEvent::RunEnded { run } => self.run_mut(*run).status = "ended",
                IngestEvent::Missing { key, .. } => {
                    m.volume("missing");
                    self.counts.missing += 1;
                    self.run_mut(key.run).missing += 1;
                }
                IngestEvent::Duplicate { key, .. } => {
                    m.volume("duplicate");
                    self.counts.duplicates += 1;
                    self.run_mut(key.run).duplicates += 1;
                }
                IngestEvent::Quarantined { key, .. } => {
                    m.volume("quarantined");
                    self.counts.quarantined += 1;
                    if let Some(k) = key {
                        self.run_mut(k.run).quarantined += 1;
                    }
                }
                IngestEvent::Volume(_) | IngestEvent::Notice(_) | IngestEvent::Heartbeat(_) => {}
            },
            PipelineEvent::Beta(b) => {
                m.trial("beta");
                m.stage("glm", b.compute_seconds);
                if let Some(seen) = b.trigger_seen {
                    m.stage(
                        "beta",
                        b.ready.saturating_duration_since(seen).as_secs_f64(),
                    );
                }
                self.counts.betas += 1;
            }
            PipelineEvent::TrialSkipped { .. } => {
                m.trial("beta_skipped");
                self.counts.skipped += 1;
            }
            PipelineEvent::Decoded(t) => {
                m.trial("decoded");
                if let Some(s) = t.since_trigger {
                    m.stage("retrieval", s);
                }
                self.counts.decoded += 1;
                self.run_mut(t.run).decoded += 1;
            }
            PipelineEvent::Reconstructed(r) => {
                m.trial("reconstructed");
                if let Some(s) = r.since_trigger {
                    m.stage("reconstruction", s);
                }
                self.counts.reconstructed += 1;
                self.run_mut(r.run).reconstructed += 1;
            }
            PipelineEvent::DecodeSkipped { what, .. } => {
                m.trial(if *what == "reconstruction" {
                    "reconstruction_skipped"
                } else {
                    "decode_skipped"
                });
                self.counts.skipped += 1;
            }
            PipelineEvent::Feedback(_)
            | PipelineEvent::Notice(_)
            | PipelineEvent::DecoderReady(_)
            | PipelineEvent::ReferenceReady { .. } => {}
        }
    }

    fn remember(&mut self, message: &FeedMessage) {
        match message {
            FeedMessage::Volume(v) => {
                self.volumes.push_back(v.clone());
                while self.volumes.len() > self.config.history.max(1) {
                    self.volumes.pop_front();
                }
            }
            FeedMessage::Trial {
                run,
                trial,
                image_id,
                top,
                value,
                true_rank,
                latency_ms,
                ..
            } => {
                let row = self.trial_mut(*run, *trial);
                row.image_id.clone_from(image_id);
                row.top.clone_from(top);
                row.value = Some(*value);
                row.true_rank = *true_rank;
                row.retrieval_ms = *latency_ms;
            }
            FeedMessage::Reconstruction {
                run,
                trial,
                image_id,
                path,
                url,
                latency_ms,
            } => {
                let row = self.trial_mut(*run, *trial);
                if row.image_id.is_none() {
                    row.image_id.clone_from(image_id);
                }
                row.recon_url = Some(url.clone());
                row.recon_path = Some(path.clone());
                row.recon_ms = *latency_ms;
            }
            FeedMessage::Skipped {
                run,
                trial,
                image_id,
                what,
                reason,
            } => {
                let row = self.trial_mut(*run, *trial);
                if row.image_id.is_none() {
                    row.image_id.clone_from(image_id);
                }
                row.skipped = Some(format!("no {what}: {reason}"));
            }
            FeedMessage::Notice { text } => {
                self.notices.push_back(text.clone());
                while self.notices.len() > NOTICES {
                    self.notices.pop_front();
                }
            }
            FeedMessage::Ingest { .. } => {
                self.ingest.push_back(message.clone());
                while self.ingest.len() > NOTICES {
                    self.ingest.pop_front();
                }
            }
            FeedMessage::Decoder { .. } => self.decoder = Some(message.clone()),
            FeedMessage::Feedback { .. } => self.feedback = Some(message.clone()),
            FeedMessage::Run { .. } => {}
        }
    }

    /// The snapshot as it stands.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            session: self.config.session_dir.display().to_string(),
            fd_threshold_mm: self.config.fd_threshold_mm,
            counts: self.counts.clone(),
            runs: self.runs.values().cloned().collect(),
            volumes: self.volumes.iter().cloned().collect(),
            trials: self.trials.values().cloned().collect(),
            notices: self.notices.iter().cloned().collect(),
            ingest: self.ingest.iter().cloned().collect(),
            stimuli: self.config.stimuli.is_some(),
            decoder: self.decoder.clone(),
            seq: self.seq,
        }
    }

    fn snapshot_json(&self) -> String {
        serde_json::to_string(&self.snapshot()).unwrap_or_else(|_| "{}".into())
    }

    fn answer(&self, req: Request) {
        // A requester that went away meanwhile is simply not answered.
        match req {
            Request::Snapshot(reply) => {
                let _ = reply.send(self.snapshot_json());
            }
            Request::Subscribe(reply) => {
                let rx = self.broadcast.subscribe();
                let _ = reply.send((self.snapshot_json(), rx));
            }
            Request::LatestVolume(reply) => {
                let v = self
                    .volumes
                    .back()
                    .map(|v| FeedMessage::Volume(v.clone()).to_json());
                let _ = reply.send(v);
            }
            Request::Trial { key, reply } => {
                let row = key
                    .or(self.last_trial)
                    .and_then(|k| self.trials.get(&k))
                    .and_then(|r| serde_json::to_string(r).ok());
                let _ = reply.send(row);
            }
            Request::Run { run, reply } => {
                let row = match run {
                    Some(r) => self.runs.get(&r),
                    None => self.runs.values().next_back(),
                }
                .and_then(|r| serde_json::to_string(r).ok());
                let _ = reply.send(row);
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status_json());
            }
            Request::LatestFeedback(reply) => {
                let _ = reply.send(self.feedback.as_ref().map(FeedMessage::to_json));
            }
        }
    }

    fn status_json(&self) -> String {
        let status = Status {
            session: self.config.session_dir.display().to_string(),
            fd_threshold_mm: self.config.fd_threshold_mm,
            seq: self.seq,
            counts: &self.counts,
            runs: self.runs.values().collect(),
            last_volume: self.volumes.back().map(|v| VolumeRef {
                run: v.run,
                index: v.index,
            }),
            last_trial: self.last_trial,
            decoder: self.decoder.as_ref(),
        };
        serde_json::to_string(&status).unwrap_or_else(|_| "{}".into())
    }
}

/// What `status` answers: the snapshot without its history.
#[derive(Serialize)]
struct Status<'a> {
    session: String,
    fd_threshold_mm: f64,
    seq: u64,
    counts: &'a Counts,
    runs: Vec<&'a RunStatus>,
    last_volume: Option<VolumeRef>,
    last_trial: Option<TrialKey>,
    decoder: Option<&'a FeedMessage>,
}

#[derive(Serialize)]
struct VolumeRef {
    run: u32,
    index: u32,
}

impl crate::stage::Sink for Hub {
    type Request = Request;
    const NAME: &'static str = "serve";
    /// Reliable because result files must not be lost; the hub itself
    /// never waits for a client.
    const DELIVERY: crate::stage::Delivery = crate::stage::Delivery::Reliable;

    fn deliver(&mut self, event: &PipelineEvent) -> std::io::Result<()> {
        self.handle(event);
        Ok(())
    }

    fn request(&mut self, request: Request) {
        self.answer(request);
    }

    fn finish(self) -> u64 {
        while let Ok(req) = self.requests.try_recv() {
            self.answer(req);
        }
        // Everything is published: clients may write out their backlog and
        // close.
        self.finished.send_replace(true);
        self.results.as_ref().map_or(0, ResultFiles::errors)
    }
}
