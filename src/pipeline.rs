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
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::config::Config;
use crate::decode::DecodeStage;
use crate::glm::buffer::RunBuffers;
use crate::glm::live::{LiveEvent, LiveListener};
use crate::glm::stage::GlmStage;
use crate::ingest::{self, IngestHandle, IngestStats};
use crate::realign::Realigner;
use crate::session::resume::Resume;
use crate::session::store::SessionStore;
use crate::sinks::bids::BidsConfounds;
use crate::sinks::console::Console;
use crate::stage::{self, Delivery, Inlet, Outlet, Sinks, Stage, Tally};
use crate::types::messages::{IngestEvent, PipelineEvent};

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
    Resume(#[from] crate::session::resume::ResumeError),
    /// A stage thread could not be spawned.
    #[error(transparent)]
    Thread(#[from] crate::stage::SpawnError),
}

/// Channel capacities: volumes in flight between stages. Generous, because a
/// full channel means waiting, and waiting means latency, never loss.
const INGEST_QUEUE: usize = 64;
const REALIGN_QUEUE: usize = 64;
const DECODE_QUEUE: usize = 64;
const LIVE_QUEUE: usize = 1024;

/// Extra outputs for embedding the pipeline (tests, the demo).
#[derive(Default)]
pub struct PipelineOptions {
    /// Every event, in order, to each of these (reliable delivery).
    pub observers: Vec<Sender<PipelineEvent>>,
    /// Where the console sink writes (default stdout when enabled in config).
    pub console: Option<Box<dyn Write + Send>>,
}

impl PipelineOptions {
    /// Every event to `observer`, and nothing else (how tests and embedders
    /// watch a pipeline).
    pub fn observed_by(observer: Sender<PipelineEvent>) -> PipelineOptions {
        PipelineOptions {
            observers: vec![observer],
            console: None,
        }
    }
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
    glm: Option<JoinHandle<RunBuffers>>,
    decode: Option<JoinHandle<()>>,
    sinks: Vec<(&'static str, JoinHandle<u64>)>,
    live: Option<LiveListener>,
    serve: Option<crate::serve::Serve>,
    heartbeats: Receiver<std::time::Instant>,
    tally: Arc<Tally>,
    session_dir: PathBuf,
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
    fn glm_config(config: &Config) -> Result<crate::glm::spec::GlmConfig, PipelineError> {
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
    /// that already holds a session is continued ([`crate::session::resume`]).
    pub fn start(
        config: &Config,
        config_text: &str,
        mut options: PipelineOptions,
    ) -> Result<Pipeline, PipelineError> {
        Pipeline::preflight(config)?;
        let session_dir = config.session_dir();
        let resume = Resume::prepare(&session_dir, config, config_text)?;
        let (realigner, glm, decode, store) =
            Pipeline::prepare(config, config_text, resume.as_ref())?;

        // Sinks, at the end of the line.
        let session_err = |source| PipelineError::Session {
            path: session_dir.clone(),
            source,
        };
        let mut sinks = Sinks::new(DecodeStage::NAME);
        sinks.add(store)?;
        sinks.add(BidsConfounds::for_session(&session_dir).map_err(session_err)?)?;
        if let Some(out) = options.console.take().or_else(|| {
            config
                .console
                .enabled
                .then(|| Box::new(std::io::stdout()) as Box<dyn Write + Send>)
        }) {
            sinks.add(Console::new(out, config.realign.fd_threshold_mm))?;
        }
        let (serve, hub, hub_requests) = crate::serve::Serve::start(
            &config.serve,
            &session_dir,
            config.realign.fd_threshold_mm,
        )?;
        sinks.add_serving(hub, hub_requests)?;
        for observer in std::mem::take(&mut options.observers) {
            sinks.observe(observer);
        }
        let (heartbeat_tx, heartbeats) = bounded(16);
        let (to_sinks, sinks) = sinks.into_parts(heartbeat_tx);
        let tally = to_sinks.tally();

        // ingest ─▶ realign ─▶ glm (+ live trials) ─▶ decode (+ worker results) ─▶ sinks
        let (ingest_tx, ingest_rx) = bounded::<IngestEvent>(INGEST_QUEUE);
        let (glm_tx, glm_rx) = bounded::<PipelineEvent>(REALIGN_QUEUE);
        let (decode_tx, decode_rx) = bounded::<PipelineEvent>(DECODE_QUEUE);
        let (live_tx, live_rx) = bounded::<LiveEvent>(LIVE_QUEUE);
        let results = decode.results();
        let decode = stage::spawn(decode, Inlet::new(decode_rx).and(results), to_sinks)?;
        let live = Pipeline::listen(config, live_tx)?;
        let glm = stage::spawn(
            glm,
            Inlet::new(glm_rx).and(live_rx),
            Outlet::new(GlmStage::NAME).to(DecodeStage::NAME, decode_tx, Delivery::Reliable),
        )?;
        let realign = stage::spawn(
            realigner,
            Inlet::new(ingest_rx),
            Outlet::new(Realigner::NAME).to(GlmStage::NAME, glm_tx, Delivery::Reliable),
        )?;
        // Ingest starts last: everything downstream is ready for its first event.
        let mut ingest_config = config.ingest.clone();
        if ingest_config.quarantine_dir.is_none() {
            ingest_config.quarantine_dir = Some(session_dir.join("quarantine"));
        }
        let resumed_runs = resume.as_ref().map(Resume::ingest).unwrap_or_default();
        let ingest = ingest::spawn_resumed(ingest_config, ingest_tx, resumed_runs)?;
        Ok(Pipeline {
            ingest: Some(ingest),
            realign: Some(realign),
            glm: Some(glm),
            decode: Some(decode),
            sinks,
            live,
            serve: Some(serve),
            heartbeats,
            tally,
            session_dir,
        })
    }

    /// The stages and the store, set up: realign (continued from the stored
    /// reference when resuming), the GLM (its state rebuilt from the store
    /// when resuming, with what the store lacks queued to go downstream
    /// first), the decoder (models loaded and warmed up before the session
    /// folder exists: a bad model folder stops the start, never a run), and
    /// the session store.
    fn prepare(
        config: &Config,
        config_text: &str,
        resume: Option<&Resume>,
    ) -> Result<(Realigner, GlmStage, DecodeStage, SessionStore), PipelineError> {
        let session_dir = config.session_dir();
        let session_err = |source| PipelineError::Session {
            path: session_dir.clone(),
            source,
        };
        let realign_config = Pipeline::realign_config(config)?;
        let reference_first = realign_config.reference.is_some();
        // Only a stored reference is announced by the replay; one set now
        // is announced by realign, as in any session.
        let (realigner, stored_reference) = match resume.map(Resume::realign).transpose()?.flatten()
        {
            Some(state) => (Realigner::resume(realign_config, state)?, true),
            None => (Realigner::new(realign_config)?, false),
        };
        let mut glm = GlmStage::new(
            Pipeline::glm_config(config)?,
            config.buffer.clone(),
            config.ingest.volumes_per_run,
        )
        .map_err(PipelineError::Glm)?;
        let decode = DecodeStage::start(&config.decode)?;
        let mut store = match resume {
            Some(r) => SessionStore::reopen(&session_dir, r.recorded()),
            None => SessionStore::create(&session_dir, config_text),
        }
        .map_err(session_err)?;
        if let Some(r) = resume {
            tracing::warn!(
                "resuming session {}: {}",
                session_dir.display(),
                r.summary()
            );
            store.note("resumed", &r.summary()).map_err(session_err)?;
            let outputs = r.replay(
                &mut glm,
                realigner.reference_ready().filter(|_| stored_reference),
                reference_first,
                decode.outputs(),
            )?;
            glm.send_first(outputs);
            if config.glm.live_events.is_some() {
                tracing::warn!(
                    "live trials received before the restart are not replayed: betas already stored are kept; trials of the run in progress that were not yet estimated are lost"
                );
            }
        }
        Ok((realigner, glm, decode, store))
    }

    /// The live-events listener, when configured.
    fn listen(
        config: &Config,
        live_tx: Sender<LiveEvent>,
    ) -> Result<Option<LiveListener>, PipelineError> {
        let Some(addr) = &config.glm.live_events else {
            return Ok(None);
        };
        LiveListener::start(addr, live_tx)
            .map(Some)
            .map_err(|source| PipelineError::Live {
                addr: addr.clone(),
                source,
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
        let n = |kind| self.tally.get(kind);
        PipelineSummary {
            ingest,
            buffers,
            realigned: n("realigned"),
            betas: n("beta"),
            trials_skipped: n("trial_skipped"),
            decoded: n("decoded"),
            reconstructed: n("reconstructed"),
            decode_skipped: n("decode_skipped"),
            realign_failed: n("realign_failed"),
            store_errors,
            session_dir: self.session_dir.clone(),
        }
    }
}
