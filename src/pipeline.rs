//! The running daemon: stages on their own threads, wired by bounded channels.
//!
//! In: a [`Config`]. Out: a [`Pipeline`] whose stages run until
//! [`Pipeline::stop`]; what they produce lands in the session store, the
//! ring buffers, the console and any observer channels.
//!
//! ```text
//! ingest ─(bounded)─▶ realign ─(bounded)─▶ glm ─(bounded)─▶ decode ─fan-out─▶ store    (reliable)
//!                         live events ──┘          ▲   │          ├─▶ console  (lossy)
//!                         (TCP/UDP)    reconstruct └───┘          └─▶ observers (reliable)
//!                                      worker (jobs ⇄ results)
//! ```
//!
//! "Reliable" sinks make the fan-out wait when they are behind (a warning
//! says so) because they must not lose data; "lossy" ones drop and count,
//! so a stuck terminal never holds up the scan.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::buffer::RunBuffers;
use crate::config::Config;
use crate::decode::DecodeStage;
use crate::glm::stage::GlmStage;
use crate::ingest::{self, IngestHandle, IngestStats};
use crate::live::{LiveEvent, LiveListener};
use crate::messages::{IngestEvent, PipelineEvent};
use crate::realign::Realigner;
use crate::resume::Resume;
use crate::sinks::console::Console;
use crate::sinks::store::SessionStore;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The session folder could not be created or written.
    #[error("session folder {}: {source}", path.display())]
    Session {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Realign could not be set up (reference, mask or target file).
    #[error("realign: {0}")]
    Realign(#[from] crate::realign::RealignError),
    /// The GLM settings or events tables are unusable.
    #[error("glm: {0}")]
    Glm(String),
    /// The model or subject folder is unusable, or ONNX Runtime is missing.
    #[error("decode: {0}")]
    Decode(#[from] crate::decode::ModelError),
    /// The live-events socket could not be opened.
    #[error("live events on {addr}: {source}")]
    Live {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Ingest could not start.
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// The dashboard, feedback protocol or result files could not start.
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    /// The session folder holds a session that cannot be continued.
    #[error("resume: {0}")]
    Resume(#[from] crate::resume::ResumeError),
    /// A stage thread could not be spawned.
    #[error("could not start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// Channel capacities: volumes in flight between stages. Generous, because a
/// full channel means waiting, and waiting means latency, never loss.
const INGEST_QUEUE: usize = 64;
const SINK_QUEUE: usize = 256;

enum Delivery {
    Reliable,
    Lossy,
}

struct Outlet {
    name: &'static str,
    tx: Sender<Arc<PipelineEvent>>,
    delivery: Delivery,
    dropped: u64,
}

/// Extra outputs for embedding the pipeline (tests, the demo).
#[derive(Default)]
pub struct PipelineOptions {
    /// Every event, in order, to each of these (reliable delivery).
    pub observers: Vec<Sender<PipelineEvent>>,
    /// Where the console sink writes (default stdout when enabled in config).
    pub console: Option<Box<dyn Write + Send>>,
}

/// What a finished pipeline leaves behind.
#[derive(Debug)]
pub struct PipelineSummary {
    /// Ingest counters at the end.
    pub ingest: IngestStats,
    /// The ring buffers as they were at the end.
    pub buffers: RunBuffers,
    /// Volumes realigned.
    pub realigned: u64,
    /// Trial betas produced.
    pub betas: u64,
    /// Trials that got no beta.
    pub trials_skipped: u64,
    /// Trials decoded (retrieval emitted).
    pub decoded: u64,
    /// Trials reconstructed.
    pub reconstructed: u64,
    /// Trials not decoded or not reconstructed (each reported).
    pub decode_skipped: u64,
    /// Volumes that could not be realigned.
    pub realign_failed: u64,
    /// Session-store write errors (each was logged).
    pub store_errors: u64,
    /// The session folder.
    pub session_dir: PathBuf,
}

/// A running pipeline.
pub struct Pipeline {
    ingest: Option<IngestHandle>,
    realign: Option<JoinHandle<()>>,
    sinks: Vec<(&'static str, JoinHandle<u64>)>,
    glm: Option<JoinHandle<RunBuffers>>,
    decode: Option<JoinHandle<()>>,
    live: Option<LiveListener>,
    serve: Option<crate::serve::Serve>,
    heartbeats: Receiver<std::time::Instant>,
    counts: Arc<Counts>,
    session_dir: PathBuf,
}

#[derive(Default)]
struct Counts {
    realigned: AtomicU64,
    failed: AtomicU64,
    betas: AtomicU64,
    skipped: AtomicU64,
    decoded: AtomicU64,
    reconstructed: AtomicU64,
    decode_skipped: AtomicU64,
}

const REALIGN_QUEUE: usize = 64;
const DECODE_QUEUE: usize = 64;

fn spawn_named<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, PipelineError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| PipelineError::Thread(name, e))
}

fn fan_out(outlets: &mut [Outlet], observers: &[Sender<PipelineEvent>], event: PipelineEvent) {
    for o in observers {
        // A dropped observer is simply gone; nothing to wait for.
        let _ = o.send(event.clone());
    }
    let event = Arc::new(event);
    for o in outlets.iter_mut() {
        match o.tx.try_send(event.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => match o.delivery {
                Delivery::Reliable => {
                    tracing::warn!("the {} sink is behind; realign waits for it", o.name);
                    let _ = o.tx.send(ev);
                }
                Delivery::Lossy => {
                    o.dropped += 1;
                    if o.dropped.is_power_of_two() {
                        tracing::warn!(
                            "the {} sink is behind; {} events dropped so far",
                            o.name,
                            o.dropped
                        );
                    }
                }
            },
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Run `handle` on every event from `rx`; count its errors.
fn sink_loop<E: std::fmt::Display>(
    name: &'static str,
    rx: Receiver<Arc<PipelineEvent>>,
    mut handle: impl FnMut(&PipelineEvent) -> Result<(), E>,
) -> u64 {
    let mut errors = 0u64;
    for ev in rx {
        if let Err(e) = handle(&ev) {
            errors += 1;
            tracing::error!("{name} sink: {e}");
        }
    }
    errors
}

impl Pipeline {
    /// Check what can be checked before anything is created on disk (ingest
    /// settings, the watch folder, realign's files), so a wrong setting
    /// leaves no half-made session folder behind.
    pub fn preflight(config: &Config) -> Result<(), PipelineError> {
        config.ingest.validate()?;
        if !config.ingest.watch_dir.is_dir() {
            return Err(ingest::IngestError::WatchDir {
                path: config.ingest.watch_dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not an existing folder"),
            }
            .into());
        }
        config.glm.load_events().map_err(PipelineError::Glm)?;
        let glm_files = config
            .glm
            .feedback
            .rois
            .iter()
            .map(|r| ("feedback ROI mask", &r.mask))
            .chain(
                config
                    .glm
                    .feedback
                    .decoders
                    .iter()
                    .map(|d| ("feedback decoder weights", &d.weights)),
            )
            .chain(config.glm.zscore_stats.iter().map(|p| ("zscore_stats", p)));
        for (what, path) in glm_files {
            if !path.is_file() {
                return Err(PipelineError::Glm(format!(
                    "{what} {}: no such file",
                    path.display()
                )));
            }
        }
        for (what, path) in [
            ("reference", &config.realign.reference),
            ("mask", &config.realign.mask),
            ("target_grid", &config.realign.target_grid),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(PipelineError::Realign(crate::realign::RealignError::Setup(
                    format!("{what} {}: no such file", p.display()),
                )));
            }
        }
        config
            .decode
            .preflight(Pipeline::realign_config(config)?.mask.as_deref())?;
        Ok(())
    }

    /// Realign's settings, with the subject folder's mask as the session
    /// mask when decoding is on and no mask is configured: the adapter's
    /// voxel order is that mask's.
    fn realign_config(config: &Config) -> Result<crate::realign::RealignConfig, PipelineError> {
        let mut realign = config.realign.clone();
        if realign.mask.is_none()
            && config.decode.enabled()
            && let Some(subject) = &config.decode.subject
        {
            let s = crate::decode::manifest::SubjectManifest::load(subject)?;
            if let Some(mask) = s.mask {
                tracing::info!("session mask: the subject's, {}", mask.display());
                realign.mask = Some(mask);
                // The mask lives on the calibration grid: output there.
                if realign.target_grid.is_none()
                    && let Some(reference) = s.reference
                {
                    tracing::info!(
                        "output grid: the subject's calibration reference {}, registered to this session's reference at start",
                        reference.display()
                    );
                    realign.target_grid = Some(reference);
                    realign.register_target = realign.target_to_reference.is_none();
                }
            }
        }
        Ok(realign)
    }

    /// The GLM settings, with the subject's calibration statistics for
    /// z-scoring when the subject folder has them and nothing else is asked.
    fn glm_config(config: &Config) -> Result<crate::glm::stage::GlmConfig, PipelineError> {
        let mut glm = config.glm.clone();
        if glm.zscore_stats.is_none()
            && !glm.session_zscore
            && config.decode.enabled()
            && let Some(subject) = &config.decode.subject
        {
            let s = crate::decode::manifest::SubjectManifest::load(subject)?;
            if let Some(z) = s.zscore {
                tracing::info!(
                    "z-scoring betas with the subject's calibration statistics {}",
                    z.display()
                );
                glm.zscore_stats = Some(z);
            }
        }
        Ok(glm)
    }

    /// Create the session folder, prepare realign, and start every stage.
    /// `config_text` is recorded in the session folder as given. A folder
    /// that already holds a session is continued ([`crate::resume`]).
    pub fn start(
        config: &Config,
        config_text: &str,
        mut options: PipelineOptions,
    ) -> Result<Pipeline, PipelineError> {
        Pipeline::preflight(config)?;
        let session_dir = config.session_dir();
        let session_err = |source| PipelineError::Session {
            path: session_dir.clone(),
            source,
        };
        let resume = Resume::prepare(&session_dir, config, config_text)?;
        let realign_config = Pipeline::realign_config(config)?;
        let reference_first = realign_config.reference.is_some();
        // Only a stored reference is announced by the replay; one set now
        // is announced by realign, as in any session.
        let (mut realigner, stored_reference) =
            match resume.as_ref().map(Resume::realign).transpose()?.flatten() {
                Some(state) => (Realigner::resume(realign_config, state)?, true),
                None => (Realigner::new(realign_config)?, false),
            };
        let mut glm = GlmStage::new(
            Pipeline::glm_config(config)?,
            config.buffer.clone(),
            config.ingest.volumes_per_run,
        )
        .map_err(PipelineError::Glm)?;
        // Models load and warm up before the session folder exists: a bad
        // model folder stops the start, never a run.
        let mut decode = DecodeStage::start(&config.decode)?;
        let mut store = match &resume {
            Some(r) => SessionStore::reopen(&session_dir, r.recorded()),
            None => SessionStore::create(&session_dir, config_text),
        }
        .map_err(session_err)?;
        // The GLM's state is rebuilt before any new volume reaches it; what
        // the store lacks goes downstream first.
        let mut resumed_outputs = Vec::new();
        if let Some(r) = &resume {
            tracing::warn!(
                "resuming session {}: {}",
                session_dir.display(),
                r.summary()
            );
            store.note("resumed", &r.summary()).map_err(session_err)?;
            resumed_outputs = r.replay(
                &mut glm,
                realigner.reference_ready().filter(|_| stored_reference),
                reference_first,
                decode.outputs(),
            )?;
            if config.glm.live_events.is_some() {
                tracing::warn!(
                    "live trials received before the restart are not replayed: betas already stored are kept; trials of the run in progress that were not yet estimated are lost"
                );
            }
        }

        let mut outlets = Vec::new();
        let mut sinks = Vec::new();

        let (tx, rx) = bounded(SINK_QUEUE);
        outlets.push(Outlet {
            name: "store",
            tx,
            delivery: Delivery::Reliable,
            dropped: 0,
        });
        sinks.push((
            "store",
            spawn_named("store", move || {
                sink_loop("store", rx, |ev| store.handle(ev))
            })?,
        ));

        let console_out: Option<Box<dyn Write + Send>> = match options.console.take() {
            Some(w) => Some(w),
            None if config.console.enabled => Some(Box::new(std::io::stdout())),
            None => None,
        };
        if let Some(out) = console_out {
            let (tx, rx) = bounded(SINK_QUEUE);
            outlets.push(Outlet {
                name: "console",
                tx,
                delivery: Delivery::Lossy,
                dropped: 0,
            });
            let mut console = Console::new(out, config.realign.fd_threshold_mm);
            sinks.push((
                "console",
                spawn_named("console", move || {
                    sink_loop("console", rx, |ev| console.handle(ev))
                })?,
            ));
        }

        // The hub feeds the dashboard, the feedback protocol and the
        // result files; reliable because result files must not be lost (the
        // hub itself never waits for a client).
        let (serve, hub, hub_requests) = crate::serve::Serve::start(
            &config.serve,
            &session_dir,
            config.realign.fd_threshold_mm,
        )?;
        {
            let (tx, rx) = bounded(SINK_QUEUE);
            outlets.push(Outlet {
                name: "serve",
                tx,
                delivery: Delivery::Reliable,
                dropped: 0,
            });
            sinks.push((
                "serve",
                spawn_named("serve", move || hub.run(rx, hub_requests))?,
            ));
        }

        let mut ingest_config = config.ingest.clone();
        if ingest_config.quarantine_dir.is_none() {
            ingest_config.quarantine_dir = Some(session_dir.join("quarantine"));
        }
        let (ingest_tx, ingest_rx) = bounded::<IngestEvent>(INGEST_QUEUE);

        let counts = Arc::new(Counts::default());
        let (realign_tx, realign_rx) = bounded::<PipelineEvent>(REALIGN_QUEUE);
        let realign = spawn_named("realign", move || {
            for ev in ingest_rx {
                realigner.handle(ev, &mut |out| match realign_tx.try_send(out) {
                    Ok(()) => {}
                    Err(TrySendError::Full(out)) => {
                        tracing::warn!("the GLM stage is behind; realign waits for it");
                        let _ = realign_tx.send(out);
                    }
                    Err(TrySendError::Disconnected(_)) => {}
                });
            }
            // Dropping realign_tx ends the GLM stage's input.
        })?;

        let (live_tx, live_rx) = bounded::<LiveEvent>(1024);
        let live =
            match &config.glm.live_events {
                Some(addr) => Some(LiveListener::start(addr, live_tx).map_err(|source| {
                    PipelineError::Live {
                        addr: addr.clone(),
                        source,
                    }
                })?),
                None => {
                    drop(live_tx);
                    None
                }
            };
        let observers = std::mem::take(&mut options.observers);
        let c = counts.clone();
        let (heartbeat_tx, heartbeats) = bounded::<std::time::Instant>(16);
        let (decode_tx, decode_rx) = bounded::<PipelineEvent>(DECODE_QUEUE);
        let decode_thread = spawn_named("decode", move || {
            let mut emit = |out: PipelineEvent| {
                if let PipelineEvent::Ingest(IngestEvent::Heartbeat(sent)) = out {
                    // The end of the line: every stage passed it on. Nobody
                    // listening (no service manager) is fine.
                    let _ = heartbeat_tx.try_send(sent);
                    return;
                }
                let counter = match &out {
                    PipelineEvent::Realigned(_) => Some(&c.realigned),
                    PipelineEvent::RealignFailed { .. } => Some(&c.failed),
                    PipelineEvent::Beta(_) => Some(&c.betas),
                    PipelineEvent::TrialSkipped { .. } => Some(&c.skipped),
                    PipelineEvent::Decoded(_) => Some(&c.decoded),
                    PipelineEvent::Reconstructed(_) => Some(&c.reconstructed),
                    PipelineEvent::DecodeSkipped { .. } => Some(&c.decode_skipped),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                fan_out(&mut outlets, &observers, out);
            };
            decode.announce(&mut emit);
            let results = decode.results();
            loop {
                crossbeam_channel::select! {
                    recv(decode_rx) -> ev => match ev {
                        Ok(ev) => decode.handle(ev, &mut emit),
                        Err(_) => break,
                    },
                    recv(results) -> done => {
                        if let Ok(done) = done {
                            decode.done(done, &mut emit);
                        }
                    },
                }
            }
            decode.finish(&mut emit);
            // Dropping the outlets closes the sinks' channels: they drain and end.
        })?;
        let glm = spawn_named("glm", move || {
            let mut emit = |out: PipelineEvent| match decode_tx.try_send(out) {
                Ok(()) => {}
                Err(TrySendError::Full(out)) => {
                    tracing::warn!("the decode stage is behind; the GLM waits for it");
                    let _ = decode_tx.send(out);
                }
                Err(TrySendError::Disconnected(_)) => {}
            };
            for out in resumed_outputs {
                emit(out);
            }
            let mut live_open = true;
            loop {
                let live = if live_open {
                    live_rx.clone()
                } else {
                    crossbeam_channel::never()
                };
                crossbeam_channel::select! {
                    recv(realign_rx) -> ev => match ev {
                        Ok(ev) => glm.handle(ev, &mut emit),
                        Err(_) => break,
                    },
                    recv(live) -> le => match le {
                        Ok(le) => glm.live(le, &mut emit),
                        Err(_) => live_open = false,
                    },
                }
            }
            // Dropping decode_tx ends the decode stage's input.
            glm.into_buffers()
        })?;

        // Ingest starts last: everything downstream is ready for its first event.
        let resumed_runs = resume.as_ref().map(Resume::ingest).unwrap_or_default();
        let ingest = ingest::spawn_resumed(ingest_config, ingest_tx, resumed_runs)?;
        Ok(Pipeline {
            ingest: Some(ingest),
            realign: Some(realign),
            sinks,
            glm: Some(glm),
            decode: Some(decode_thread),
            live,
            serve: Some(serve),
            heartbeats,
            counts,
            session_dir,
        })
    }

    /// The session folder.
    pub fn session_dir(&self) -> &Path {
        &self.session_dir
    }

    /// Where live trial events are accepted, when configured.
    pub fn live_addr(&self) -> Option<std::net::SocketAddr> {
        self.live.as_ref().map(LiveListener::local_addr)
    }

    /// Where the dashboard is served, when configured.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.serve.as_ref().and_then(crate::serve::Serve::http_addr)
    }

    /// The hub behind the dashboard and feedback protocol (its metrics,
    /// snapshots and subscriptions).
    pub fn hub(&self) -> Option<&crate::serve::HubHandle> {
        self.serve.as_ref().map(crate::serve::Serve::hub)
    }

    /// Where the feedback protocol listens, when configured.
    pub fn feedback_addr(&self) -> Option<std::net::SocketAddr> {
        self.serve
            .as_ref()
            .and_then(crate::serve::Serve::feedback_addr)
    }

    /// Heartbeats that made it through every stage (about one a second while
    /// the pipeline moves; each carries the time ingest sent it). Feeds the
    /// service watchdog: when they stop, a stage is stuck.
    pub fn heartbeats(&self) -> Receiver<std::time::Instant> {
        self.heartbeats.clone()
    }

    /// Ingest counters now.
    pub fn ingest_stats(&self) -> Option<IngestStats> {
        self.ingest.as_ref().map(IngestHandle::stats)
    }

    /// Stop watching, let every stage drain what is in flight, and wait for
    /// them. Nothing already noticed is dropped: ingest flushes its held
    /// volumes and declares the remaining gaps before closing.
    pub fn stop(mut self) -> PipelineSummary {
        let ingest = match self.ingest.take().map(IngestHandle::stop) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::error!("{e}");
                IngestStats::default()
            }
            None => IngestStats::default(),
        };
        if let Some(r) = self.realign.take()
            && r.join().is_err()
        {
            tracing::error!("the realign thread panicked");
        }
        let buffers = self
            .glm
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_else(|| RunBuffers::new(Default::default()));
        if let Some(d) = self.decode.take()
            && d.join().is_err()
        {
            tracing::error!("the decode thread panicked");
        }
        if let Some(l) = self.live.take() {
            l.stop();
        }
        let mut store_errors = 0;
        for (name, h) in self.sinks.drain(..) {
            match h.join() {
                Ok(errors) if name == "store" => store_errors = errors,
                Ok(errors) if errors > 0 => {
                    tracing::error!("the {name} sink: {errors} write errors")
                }
                Ok(_) => {}
                Err(_) => tracing::error!("the {name} sink thread panicked"),
            }
        }
        // Clients are disconnected only once every event has been published.
        if let Some(s) = self.serve.take() {
            s.stop();
        }
        PipelineSummary {
            ingest,
            buffers,
            realigned: self.counts.realigned.load(Ordering::Relaxed),
            betas: self.counts.betas.load(Ordering::Relaxed),
            trials_skipped: self.counts.skipped.load(Ordering::Relaxed),
            decoded: self.counts.decoded.load(Ordering::Relaxed),
            reconstructed: self.counts.reconstructed.load(Ordering::Relaxed),
            decode_skipped: self.counts.decode_skipped.load(Ordering::Relaxed),
            realign_failed: self.counts.failed.load(Ordering::Relaxed),
            store_errors,
            session_dir: self.session_dir.clone(),
        }
    }
}
