//! The decode stage of the pipeline.
//!
//! In: every [`PipelineEvent`] from the GLM stage. Out: the same events,
//! plus for each decodable trial beta a [`TrialDecoded`] (adapter →
//! backbone → retrieval top-k, at once) and later a [`TrialReconstructed`]
//! from the reconstruction worker, or a `DecodeSkipped` saying why not.
//!
//! The fast path runs on the stage's own thread; reconstructions run on a
//! worker thread that owns the prior and decoder graphs. Jobs go to the
//! worker and results come back over channels; when trials come faster
//! than reconstructions finish, the [`ReconPolicy`] decides, and every
//! dropped trial is reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde::Deserialize;

use super::error::ModelError;
use super::manifest::SubjectManifest;
use super::models::{FastPath, ModelSet, Reconstruction, Reconstructor, warm_up};
use super::runtime::{CudaOptions, DeviceChoice, Runtime, RuntimeConfig, TensorRtOptions};
use super::schedule::{DropReason, ReconPolicy, Scheduler};
use crate::types::messages::{
    DecoderReport, GraphReport, PipelineEvent, TrialBeta, TrialDecoded, TrialReconstructed,
};

/// `[decode]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// Model folder (or its `model.toml`); decoding is off without one.
    pub model: Option<PathBuf>,
    /// Subject folder (or its `subject.toml`).
    pub subject: Option<PathBuf>,
    /// `libonnxruntime.so*` (file or folder); default: see `onnx/README.md`.
    pub onnxruntime: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda` or `tensorrt`.
    pub device: DeviceChoice,
    /// GPU index.
    pub gpu: i32,
    /// Refuse to start when a GPU provider was asked for and is unusable.
    pub require_gpu: bool,
    /// Intra-op threads per graph (0: ONNX Runtime's default).
    pub threads: usize,
    /// What to do when trials come faster than reconstructions.
    pub policy: ReconPolicy,
    /// Most trials waiting for reconstruction (policy `queue`).
    pub max_queue: usize,
    /// Drop a waiting reconstruction that would start later than this many
    /// seconds after its beta (any policy); default: no limit.
    pub max_wait: Option<f64>,
    /// Noise seed for every reconstruction (default: the manifest's).
    pub seed: Option<u64>,
    /// Decode warm-up runs' trials too (default: only stored).
    pub decode_warmup: bool,
    /// Timed calls per graph after the warm-up call, for the start-up report.
    pub warmup_calls: usize,
    /// `[decode.tensorrt]`: fp16, engine cache, timing cache, workspace.
    pub tensorrt: TensorRtOptions,
    /// `[decode.cuda]`: memory limit, cuDNN search, TF32, CUDA graphs.
    pub cuda: CudaOptions,
    /// Start even when a reconstruction graph of more than
    /// `cpu_decoder_limit_gb` would run on CPU (minutes per trial): off by
    /// default, so a machine whose GPU provider failed refuses to start
    /// instead of silently falling behind the scan.
    pub allow_cpu_decoder: bool,
    /// Size, GB, above which a reconstruction graph counts as too big for CPU.
    pub cpu_decoder_limit_gb: f64,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            model: None,
            subject: None,
            onnxruntime: None,
            device: DeviceChoice::Auto,
            gpu: 0,
            require_gpu: false,
            threads: 0,
            policy: ReconPolicy::Queue,
            max_queue: 16,
            max_wait: None,
            seed: None,
            decode_warmup: false,
            warmup_calls: 3,
            tensorrt: TensorRtOptions::default(),
            cuda: CudaOptions::default(),
            allow_cpu_decoder: false,
            cpu_decoder_limit_gb: 1.0,
        }
    }
}

impl DecodeConfig {
    /// Whether decoding is configured.
    pub fn enabled(&self) -> bool {
        self.model.is_some()
    }

    /// `max_wait` as a duration; anything but a positive finite number of
    /// seconds is refused (it is read from the config file, so it may be
    /// `-1`, `nan` or `inf`, which `Duration` would panic on).
    pub fn max_wait(&self) -> Result<Option<Duration>, ModelError> {
        let Some(w) = self.max_wait else {
            return Ok(None);
        };
        match Duration::try_from_secs_f64(w) {
            Ok(d) if w > 0.0 => Ok(Some(d)),
            _ => Err(ModelError::Setting {
                key: "max_wait",
                value: w.to_string(),
                message: "must be a positive number of seconds",
            }),
        }
    }

    /// The ONNX Runtime part.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            onnxruntime: self.onnxruntime.clone(),
            device: self.device,
            gpu: self.gpu,
            require_gpu: self.require_gpu,
            threads: self.threads,
            tensorrt: self.tensorrt.clone(),
            cuda: self.cuda.clone(),
        }
    }

    /// Resolve relative paths against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.model, &mut self.subject, &mut self.onnxruntime]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Check what needs no ONNX Runtime: the manifests parse, and the
    /// subject's voxel count equals the mask's when the mask is a file.
    pub fn preflight(&self, mask: Option<&Path>) -> Result<(), ModelError> {
        self.max_wait()?;
        let Some(model) = &self.model else {
            return Ok(());
        };
        let subject_dir = self.subject.as_ref().ok_or_else(|| ModelError::Manifest {
            path: model.clone(),
            message:
                "[decode] model is set but subject is not (the adapter lives in the subject folder)"
                    .into(),
        })?;
        let manifest = super::manifest::ModelManifest::load(model)?;
        let subject = SubjectManifest::load(subject_dir)?;
        subject.check_against(&manifest)?;
        if let Some(m) = mask.or(subject.mask.as_deref()) {
            let vol = crate::formats::nifti::read_volume(m).map_err(|e| ModelError::Manifest {
                path: m.to_path_buf(),
                message: format!("mask: {e}"),
            })?;
            let n = vol
                .values()
                .iter()
                .filter(|v| v.is_finite() && **v != 0.0)
                .count();
            if n != subject.voxels {
                return Err(ModelError::VoxelCount {
                    subject: subject.subject,
                    adapter: subject.voxels,
                    mask: n,
                });
            }
        }
        Ok(())
    }
}

/// A reconstruction to run.
#[derive(Debug)]
pub struct Job {
    run: u32,
    trial: usize,
    stim_id: Option<String>,
    tokens: Vec<f32>,
    /// The backbone's low-level latent (MindEye2's blurry branch).
    lowlevel: Option<Vec<f32>>,
    trigger_seen: Option<Instant>,
    submitted: Instant,
}

/// What the worker sends back.
#[derive(Debug)]
pub struct Done {
    job: Job,
    started: Instant,
    result: Result<Reconstruction, ModelError>,
}

struct Worker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    handle: Option<JoinHandle<()>>,
}

/// The stage.
pub struct DecodeStage {
    fast: Option<FastPath>,
    disabled: Option<String>,
    worker: Option<Worker>,
    scheduler: Scheduler<Job>,
    decode_warmup: bool,
    report: Option<DecoderReport>,
    notices: Vec<String>,
}

impl std::fmt::Debug for DecodeStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeStage")
            .field("enabled", &self.fast.is_some())
            .finish()
    }
}

fn graph_reports(
    graphs: &[&super::runtime::Graph],
    times: &[(&'static str, f64, f64)],
) -> Vec<GraphReport> {
    graphs
        .iter()
        .zip(times)
        .map(|(g, &(role, first, median))| GraphReport {
            role,
            file: g.path().to_path_buf(),
            provider: g.provider().to_string(),
            first_seconds: first,
            median_seconds: median,
        })
        .collect()
}

/// Models loaded, checked and warmed up.
pub struct Warmed {
    /// Adapter + backbone + retrieval.
    pub fast: FastPath,
    /// Prior + decoder, when the model has a decoder.
    pub recon: Option<Reconstructor>,
    /// What was loaded and how fast each graph ran.
    pub report: DecoderReport,
    /// Fallbacks the operator must be told about.
    pub notices: Vec<String>,
}

/// Bytes of a graph on disk: the `.onnx` and its external data
/// (`<file>.data` or `<file>_data`, as torch and onnx write them).
fn graph_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let name = path.as_os_str().to_string_lossy();
    size(path) + size(Path::new(&format!("{name}.data"))) + size(Path::new(&format!("{name}_data")))
}

/// A multi-GB reconstruction graph on CPU takes minutes per trial: refuse
/// to start (naming the graph and its provider) rather than fall behind.
fn refuse_big_graphs_on_cpu(
    graphs: &[&super::runtime::Graph],
    limit_gb: f64,
) -> Result<(), ModelError> {
    for g in graphs {
        let gb = graph_bytes(g.path()) as f64 / 1e9;
        if g.provider() == super::runtime::Provider::Cpu && gb > limit_gb {
            return Err(ModelError::Graph {
                role: g.role(),
                path: g.path().to_path_buf(),
                message: format!(
                    "{gb:.1} GB would run on CPU (no GPU provider took it): a trial would take minutes. \
                     Fix the GPU set-up (device, onnxruntime-gpu), or set [decode] allow_cpu_decoder = true \
                     (or raise cpu_decoder_limit_gb = {limit_gb}) to run it anyway"
                ),
            });
        }
    }
    Ok(())
}

/// Load, check and warm up a model folder (what `models check` and the
/// stage's start share); `None` when no model is configured.
pub fn load_and_warm(config: &DecodeConfig) -> Result<Option<Warmed>, ModelError> {
    let (Some(model), Some(subject)) = (&config.model, &config.subject) else {
        return Ok(None);
    };
    let rt = Runtime::new(&config.runtime())?;
    let set = ModelSet::load(&rt, model, subject, config.seed)?;
    let manifest_path = set.manifest.path.clone();
    let (mut fast, mut recon) = set.split();
    if let Some(r) = recon.as_ref()
        && !config.allow_cpu_decoder
    {
        refuse_big_graphs_on_cpu(&r.graphs(), config.cpu_decoder_limit_gb)?;
    }
    let mut graphs = Vec::new();
    let mut all: Vec<&mut super::runtime::Graph> = Vec::new();
    {
        let [a, b] = fast.graphs_mut();
        all.push(a);
        all.push(b);
    }
    if let Some(r) = recon.as_mut() {
        all.extend(r.graphs_mut());
    }
    let times = warm_up(&mut all, config.warmup_calls)?;
    drop(all);
    let mut refs: Vec<&super::runtime::Graph> = fast.graphs().to_vec();
    if let Some(r) = recon.as_ref() {
        refs.extend(r.graphs());
    }
    graphs.extend(graph_reports(&refs, &times));
    let report = DecoderReport {
        model: manifest_path,
        subject: fast.subject().subject.clone(),
        library: rt.library().to_path_buf(),
        version: rt.version(),
        graphs,
    };
    Ok(Some(Warmed {
        fast,
        recon,
        report,
        notices: rt.notices(),
    }))
}

impl DecodeStage {
    /// Load and warm up the models (before the session starts, so a bad
    /// model folder stops the start, never a run), and start the worker.
    /// With no model configured the stage only passes events through.
    pub fn start(config: &DecodeConfig) -> Result<DecodeStage, ModelError> {
        let max_wait = config.max_wait()?;
        let scheduler = Scheduler::new(config.policy, config.max_queue, max_wait);
        let Some(Warmed {
            fast,
            recon,
            report,
            notices,
        }) = load_and_warm(config)?
        else {
            return Ok(DecodeStage {
                fast: None,
                disabled: None,
                worker: None,
                scheduler,
                decode_warmup: config.decode_warmup,
                report: None,
                notices: Vec::new(),
            });
        };
        let worker = match recon {
            Some(mut recon) => {
                let (jobs_tx, jobs_rx) = unbounded::<Job>();
                let (done_tx, done_rx) = unbounded::<Done>();
                let handle = std::thread::Builder::new()
                    .name("reconstruct".into())
                    .spawn(move || {
                        for job in jobs_rx {
                            let started = Instant::now();
                            let result = recon.run_blended(&job.tokens, job.lowlevel.as_deref());
                            if done_tx
                                .send(Done {
                                    job,
                                    started,
                                    result,
                                })
                                .is_err()
                            {
                                break;
                            }
                        }
                    })
                    .map_err(|e| ModelError::Graph {
                        role: "reconstruction",
                        path: report.model.clone(),
                        message: format!("could not start the worker thread: {e}"),
                    })?;
                Some(Worker {
                    jobs: Some(jobs_tx),
                    done: done_rx,
                    handle: Some(handle),
                })
            }
            None => None,
        };
        Ok(DecodeStage {
            fast: Some(fast),
            disabled: None,
            worker,
            scheduler,
            decode_warmup: config.decode_warmup,
            report: Some(report),
            notices,
        })
    }

    /// Results from the reconstruction worker (never ready without one).
    pub fn results(&self) -> Receiver<Done> {
        match &self.worker {
            Some(w) => w.done.clone(),
            None => crossbeam_channel::never(),
        }
    }

    /// What this stage does with betas (a resumed session decides from it
    /// which stored betas still need decoding).
    pub fn outputs(&self) -> crate::session::resume::DecodeOutputs {
        crate::session::resume::DecodeOutputs {
            decodes: self.fast.is_some(),
            warmup: self.decode_warmup,
            reconstructs: self.worker.is_some(),
        }
    }

    /// Announce the models (call once, first).
    pub fn announce(&mut self, emit: &mut dyn FnMut(PipelineEvent)) {
        for n in self.notices.drain(..) {
            emit(PipelineEvent::Notice(format!("decode: {n}")));
        }
        if let Some(r) = self.report.take() {
            emit(PipelineEvent::DecoderReady(Box::new(r)));
        }
    }

    fn skip(
        &mut self,
        b: &TrialBeta,
        what: &'static str,
        reason: String,
        emit: &mut dyn FnMut(PipelineEvent),
    ) {
        emit(PipelineEvent::DecodeSkipped {
            run: b.run,
            trial: b.trial,
            stim_id: b.event.stim_id.clone(),
            what,
            reason,
        });
    }

    /// Handle one event from the GLM stage: pass it on, and decode betas.
    pub fn handle(&mut self, ev: PipelineEvent, emit: &mut dyn FnMut(PipelineEvent)) {
        match ev {
            PipelineEvent::ReferenceReady { mask_voxels, .. } => {
                if let Some(f) = &self.fast
                    && f.subject().voxels != mask_voxels
                {
                    let msg = ModelError::VoxelCount {
                        subject: f.subject().subject.clone(),
                        adapter: f.subject().voxels,
                        mask: mask_voxels,
                    }
                    .to_string();
                    tracing::error!("decoding is off for this session: {msg}");
                    emit(PipelineEvent::Notice(format!(
                        "decoding is off for this session: {msg}"
                    )));
                    self.disabled = Some(msg);
                }
                emit(ev);
            }
            PipelineEvent::Beta(b) => {
                let beta = b.clone();
                emit(PipelineEvent::Beta(b));
                self.decode(&beta, emit);
            }
            other => emit(other),
        }
    }

    fn decode(&mut self, b: &TrialBeta, emit: &mut dyn FnMut(PipelineEvent)) {
        if self.fast.is_none() || (b.warmup && !self.decode_warmup) {
            return;
        }
        if let Some(why) = self.disabled.clone() {
            return self.skip(b, "decode", why, emit);
        }
        let Some(fast) = self.fast.as_mut() else {
            return;
        };
        let out = match fast.run(&b.decode) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("decode run {} trial {}: {e}", b.run, b.trial);
                return self.skip(b, "decode", e.to_string(), emit);
            }
        };
        let now = Instant::now();
        let bank = fast.bank();
        let true_rank = match (bank, &b.event.stim_id) {
            (Some(bank), Some(id)) => bank.rank_in(&out.scores, id),
            _ => None,
        };
        let decoded = TrialDecoded {
            run: b.run,
            trial: b.trial,
            stim_id: b.event.stim_id.clone(),
            top: out.top.iter().map(|c| (c.id.clone(), c.score)).collect(),
            true_rank,
            bank_size: bank.map_or(0, |b| b.len()),
            query: Arc::from(out.query.as_slice()),
            graphs: out.graphs.iter().map(|g| (g.role, g.seconds)).collect(),
            seconds: out.wall_seconds,
            since_beta: now.saturating_duration_since(b.ready).as_secs_f64(),
            since_trigger: b
                .trigger_seen
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            nonfinite_voxels: out.nonfinite_voxels,
        };
        emit(PipelineEvent::Decoded(Box::new(decoded)));
        if self.worker.is_some() {
            let job = Job {
                run: b.run,
                trial: b.trial,
                stim_id: b.event.stim_id.clone(),
                tokens: out.tokens,
                lowlevel: out.lowlevel,
                trigger_seen: b.trigger_seen,
                submitted: now,
            };
            let (start, dropped) = self.scheduler.submit(job, now);
            self.dispatch(start, dropped, emit);
        }
    }

    fn dispatch(
        &mut self,
        start: Option<Job>,
        dropped: Vec<(Job, DropReason)>,
        emit: &mut dyn FnMut(PipelineEvent),
    ) {
        for (job, why) in dropped {
            tracing::warn!(
                "reconstruction of run {} trial {} dropped: {why}",
                job.run,
                job.trial
            );
            emit(PipelineEvent::DecodeSkipped {
                run: job.run,
                trial: job.trial,
                stim_id: job.stim_id,
                what: "reconstruction",
                reason: why.to_string(),
            });
        }
        if let Some(job) = start {
            let sent = self
                .worker
                .as_ref()
                .and_then(|w| w.jobs.as_ref())
                .map(|tx| tx.send(job));
            if let Some(Err(crossbeam_channel::SendError(job))) = sent {
                // The worker is gone (it panicked); say so for this trial and
                // every later one rather than waiting for it forever.
                self.scheduler.finished(Instant::now());
                emit(PipelineEvent::DecodeSkipped {
                    run: job.run,
                    trial: job.trial,
                    stim_id: job.stim_id,
                    what: "reconstruction",
                    reason: "the reconstruction worker has stopped".into(),
                });
            }
        }
    }

    /// A reconstruction finished: emit it and start the next.
    pub fn done(&mut self, d: Done, emit: &mut dyn FnMut(PipelineEvent)) {
        let now = Instant::now();
        let Done {
            job,
            started,
            result,
        } = d;
        match result {
            Ok(r) => {
                let seconds = r.wall_seconds;
                emit(PipelineEvent::Reconstructed(Box::new(TrialReconstructed {
                    run: job.run,
                    trial: job.trial,
                    stim_id: job.stim_id,
                    overhead_seconds: (seconds - r.graph_seconds()).max(0.0),
                    image: Arc::from(r.image),
                    chw: r.chw,
                    prior_seed: r.prior_seed,
                    decoder_seed: r.decoder_seed,
                    prior_steps: r.prior_steps,
                    decoder_steps: r.decoder_steps,
                    latent_decoder_seconds: r.latent_decoder_seconds,
                    queued_seconds: started
                        .saturating_duration_since(job.submitted)
                        .as_secs_f64(),
                    seconds,
                    since_trigger: job
                        .trigger_seen
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                })));
            }
            Err(e) => {
                tracing::error!("reconstruction of run {} trial {}: {e}", job.run, job.trial);
                emit(PipelineEvent::DecodeSkipped {
                    run: job.run,
                    trial: job.trial,
                    stim_id: job.stim_id,
                    what: "reconstruction",
                    reason: e.to_string(),
                });
            }
        }
        let (start, dropped) = self.scheduler.finished(now);
        self.dispatch(start, dropped, emit);
    }

    /// The input ended: finish every reconstruction still due (nothing
    /// queued is lost at shutdown), then stop the worker.
    pub fn finish(&mut self, emit: &mut dyn FnMut(PipelineEvent)) {
        let done_rx = self.results();
        while self.scheduler.busy() {
            match done_rx.recv() {
                Ok(d) => self.done(d, emit),
                Err(_) => break,
            }
        }
        if let Some(w) = self.worker.as_mut() {
            w.jobs = None;
            if let Some(h) = w.handle.take()
                && h.join().is_err()
            {
                tracing::error!("the reconstruction worker panicked");
            }
        }
    }
}

/// The decode stage's inputs: betas (and everything else) from the GLM,
/// and the reconstruction worker's results.
pub enum DecodeInput {
    /// From the GLM.
    Event(PipelineEvent),
    /// A reconstruction finished.
    Done(Done),
}

impl From<PipelineEvent> for DecodeInput {
    fn from(e: PipelineEvent) -> Self {
        DecodeInput::Event(e)
    }
}

impl From<Done> for DecodeInput {
    fn from(d: Done) -> Self {
        DecodeInput::Done(d)
    }
}

impl crate::stage::Stage for DecodeStage {
    type Input = DecodeInput;
    type Output = PipelineEvent;
    type Summary = ();
    const NAME: &'static str = "decode";

    fn start(&mut self, emit: &mut crate::stage::Emit<'_, PipelineEvent>) {
        self.announce(emit);
    }

    fn handle(&mut self, input: DecodeInput, emit: &mut crate::stage::Emit<'_, PipelineEvent>) {
        match input {
            DecodeInput::Event(e) => self.handle(e, emit),
            DecodeInput::Done(d) => self.done(d, emit),
        }
    }

    fn finish(mut self, emit: &mut crate::stage::Emit<'_, PipelineEvent>) {
        DecodeStage::finish(&mut self, emit);
    }
}
