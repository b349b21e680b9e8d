//! The simulated exporter: writes volumes into a folder the way a scanner
//! (or a network share in front of it) does, faults included.
//!
//! In: a [`VolumeSource`] (a [`SynthSeries`] or a replayed 4-D file), a
//! [`FaultPlan`] and [`WriterOptions`]. Out: 3-D NIfTI files in the output
//! folder, the truth folder (see [`super::truth`]), and a
//! [`SimulationReport`] of every file written.
//!
//! Volume `i` owns time slot `i` (`i × TR` after the start, plus any gap
//! between runs). Normal writes are atomic: the bytes go to a hidden
//! `.NAME.tmp` in the same folder, which is then renamed, so a watcher never
//! sees a half file. Late, swapped and duplicated writes happen in a later
//! slot, right after that slot's own volume. Partial writes go straight to
//! the final name in chunks with pauses. Volumes are rendered just before
//! their slot, so pacing holds for long sessions without holding them in
//! memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::events::Event;
use super::faults::{CorruptKind, DupMode, Fault, FaultPlan};
use super::naming::Naming;
use super::synth::{FrameTruth, SynthSeries, SynthSpec};
use super::{SimError, mix_seed, truth};
use crate::formats::nifti::{OutputType, WriteOptions, encode_volume};
use crate::types::messages::VolumeKey;
use crate::types::volume::{Grid, Volume};

const TAG_GARBAGE: u64 = 0x6A2B;

/// Volumes the writer can export.
pub trait VolumeSource: Sync {
    /// Volumes in the session.
    fn len(&self) -> usize;
    /// True when there is nothing to write.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Run and 0-based index of session volume `i`.
    fn key(&self, i: usize) -> VolumeKey;
    /// Repetition time in seconds.
    fn tr(&self) -> f64;
    /// The volume as the scanner would export it.
    fn volume(&self, i: usize) -> Result<Volume, SimError>;
    /// Known truth of volume `i`, when the source is synthetic.
    fn frame_truth(&self, _i: usize) -> Option<FrameTruth> {
        None
    }
    /// The centre of rotation the truth is expressed about.
    fn centre(&self) -> Option<nalgebra::Vector3<f64>> {
        None
    }
    /// Task events of `run`, when known.
    fn events(&self, _run: u32) -> Option<&[Event]> {
        None
    }
    /// The synthetic spec, when there is one (written to the truth folder).
    fn spec(&self) -> Option<&SynthSpec> {
        None
    }
    /// Extra truth images (e.g. the task map) written to the truth folder.
    fn extra_truth(&self, _dir: &Path, _opts: &WriteOptions) -> Result<(), SimError> {
        Ok(())
    }
    /// The name volume `i`'s file (or its duplicate copy) has when the
    /// source is a folder of scanner files; `None`: named by the writer's
    /// naming option.
    fn file_name(&self, _i: usize, _duplicate: bool) -> Option<String> {
        None
    }
    /// The bytes of volume `i`'s file as the scanner wrote it (DICOM
    /// replay); `None`: the writer encodes [`VolumeSource::volume`] as NIfTI.
    fn file_bytes(&self, _i: usize) -> Option<Result<Vec<u8>, SimError>> {
        None
    }
}

impl VolumeSource for SynthSeries {
    fn len(&self) -> usize {
        SynthSeries::len(self)
    }
    fn key(&self, i: usize) -> VolumeKey {
        SynthSeries::key(self, i)
    }
    fn tr(&self) -> f64 {
        SynthSeries::tr(self)
    }
    fn volume(&self, i: usize) -> Result<Volume, SimError> {
        Ok(SynthSeries::volume(self, i))
    }
    fn frame_truth(&self, i: usize) -> Option<FrameTruth> {
        Some(self.frame(i))
    }
    fn centre(&self) -> Option<nalgebra::Vector3<f64>> {
        Some(SynthSeries::centre(self))
    }
    fn events(&self, run: u32) -> Option<&[Event]> {
        Some(SynthSeries::events(self, run))
    }
    fn spec(&self) -> Option<&SynthSpec> {
        Some(SynthSeries::spec(self))
    }
    fn extra_truth(&self, dir: &Path, opts: &WriteOptions) -> Result<(), SimError> {
        let ext = if opts.gzip { "nii.gz" } else { "nii" };
        let f32opts = WriteOptions {
            dtype: OutputType::F32,
            ..opts.clone()
        };
        for (name, vol) in [
            ("task_weight", self.task_map()),
            ("reference_clean", self.clean_volume(0)),
        ] {
            let path = dir.join(format!("{name}.{ext}"));
            crate::formats::nifti::write_volume(&path, &vol, &f32opts)
                .map_err(|error| SimError::Io { path, error })?;
        }
        Ok(())
    }
}

/// How fast volumes appear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// One volume per TR, as the scanner acquires them.
    Realtime,
    /// As fast as possible (partial-write pauses still apply).
    Fast,
    /// One volume per given interval (accelerated or slowed demos).
    Interval(Duration),
}

/// Where the truth folder goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TruthLocation {
    /// `<out>_truth` next to the output folder.
    Sibling,
    /// This folder (may be the output folder itself, if asked for).
    Dir(PathBuf),
    /// Do not write truth files.
    Nowhere,
}

/// How the writer names, encodes and paces files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// File-name convention.
    pub naming: Naming,
    /// Write `.nii.gz`.
    pub gzip: bool,
    /// Sample type (scanners export int16; NaN corruption always uses f32).
    pub dtype: OutputType,
    /// Pacing.
    pub pace: Pace,
    /// Session number in Siemens names.
    pub session: u32,
    /// Pause between runs (paced modes only).
    pub run_gap: Duration,
    /// Truth folder.
    pub truth: TruthLocation,
    /// Told about every file as soon as it is complete on disk (or as
    /// complete as it will get), so tests can wait without sleeping.
    pub notify: Option<crossbeam_channel::Sender<WrittenFile>>,
    /// Set to stop early (between files).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            naming: Naming::Bids,
            gzip: false,
            dtype: OutputType::F32,
            pace: Pace::Realtime,
            session: 1,
            run_gap: Duration::ZERO,
            truth: TruthLocation::Sibling,
            notify: None,
            stop: None,
        }
    }
}

/// One file the writer produced.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenFile {
    /// Session index of the volume it holds (or pretends to).
    pub index: usize,
    /// Run and index its name says.
    pub key: VolumeKey,
    /// Where it is.
    pub path: PathBuf,
    /// `ok`, or the fault label (`late:3`, `duplicate:copy`, `corrupt:nan`…).
    pub label: String,
    /// Written in chunks straight to its final name.
    pub partial: bool,
    /// Final size in bytes.
    pub bytes: usize,
    /// Whether it decodes to the right volume once complete (false for the
    /// corrupt kinds).
    pub valid: bool,
    /// When it was complete, since the start of the simulation.
    pub at: Duration,
}

/// One injected fault, as listed in `faults.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRecord {
    /// Session index.
    pub index: usize,
    /// Run and index.
    pub key: VolumeKey,
    /// `drop`, `duplicate`, `swap`, `late`, `corrupt` or `partial`.
    pub fault: String,
    /// The file it concerns (for a drop, the name that never appears).
    pub file: String,
    /// What exactly happened, in words.
    pub detail: String,
}

/// Count, total and maximum of a repeated step's durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Steps timed.
    pub count: u32,
    /// Sum of their durations.
    pub total: Duration,
    /// The longest.
    pub max: Duration,
}

impl Timing {
    /// Add one step.
    pub fn add(&mut self, d: Duration) {
        self.count += 1;
        self.total += d;
        self.max = self.max.max(d);
    }

    /// Mean duration (zero when nothing was timed).
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.total / self.count
        }
    }
}

/// What a simulation did.
#[derive(Debug, Clone)]
pub struct SimulationReport {
    /// The output folder.
    pub out_dir: PathBuf,
    /// The truth folder, if written.
    pub truth_dir: Option<PathBuf>,
    /// Volumes in the session.
    pub volumes: usize,
    /// Every file written, in the order written (a rewrite appears twice).
    pub written: Vec<WrittenFile>,
    /// Every fault injected (the plan; see `written` for what happened).
    pub faults: Vec<FaultRecord>,
    /// Stopped early through [`WriterOptions::stop`].
    pub stopped: bool,
    /// Wall time of the whole simulation.
    pub elapsed: Duration,
    /// Time to generate (or fetch) each volume written.
    pub generate: Timing,
    /// Time to encode each file's bytes (NIfTI, gzip, corruption).
    pub encode: Timing,
    /// How far behind its slot the writer ever started a file (paced modes).
    pub max_lag: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Content {
    Valid,
    Corrupt(CorruptKind),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Atomic,
    Partial,
    Direct,
}

#[derive(Debug, Clone)]
struct Action {
    slot: usize,
    /// 0: the slot's own volume; 1: delayed writes after it.
    class: u8,
    seq: usize,
    index: usize,
    name: String,
    content: Content,
    mode: Mode,
    label: String,
}

/// The planned writes and the fault manifest, before anything is written.
pub(crate) struct Schedule {
    actions: Vec<Action>,
    pub(crate) faults: Vec<FaultRecord>,
    /// Primary file name and fault label per session volume.
    pub(crate) files: Vec<(String, String)>,
}

impl Schedule {
    /// No writes, no faults: the files column of an offline export.
    pub(crate) fn offline(files: Vec<(String, String)>) -> Schedule {
        Schedule {
            actions: Vec::new(),
            faults: Vec::new(),
            files,
        }
    }
}

pub(crate) fn plan_schedule(
    src: &dyn VolumeSource,
    plan: &FaultPlan,
    opts: &WriterOptions,
) -> Schedule {
    let n = src.len();
    let resolved = plan.resolve(n);
    let mut actions = Vec::new();
    let mut faults = Vec::new();
    let mut files = Vec::with_capacity(n);
    let d = plan.dup_delay.max(1);
    for (i, vf) in resolved.iter().enumerate() {
        let key = src.key(i);
        let name = src
            .file_name(i, false)
            .unwrap_or_else(|| opts.naming.file_name(opts.session, key, false, opts.gzip));
        let base = if vf.partial {
            Mode::Partial
        } else {
            Mode::Atomic
        };
        let mut push = |slot, class, name: &str, content, mode, label: &str| {
            actions.push(Action {
                slot,
                class,
                seq: actions.len(),
                index: i,
                name: name.to_string(),
                content,
                mode,
                label: label.to_string(),
            })
        };
        let mut record = |fault: &str, file: &str, detail: String| {
            faults.push(FaultRecord {
                index: i,
                key,
                fault: fault.to_string(),
                file: file.to_string(),
                detail,
            })
        };
        let label = vf.fault.map_or_else(|| "ok".to_string(), |f| f.label());
        match vf.fault {
            None => push(i, 0, &name, Content::Valid, base, "ok"),
            Some(Fault::Drop) => record("drop", &name, "never written".into()),
            Some(Fault::Swap) => {
                push(i + 1, 1, &name, Content::Valid, base, &label);
                record("swap", &name, format!("written after volume {}", i + 1));
            }
            Some(Fault::Late(k)) => {
                push(i + k, 1, &name, Content::Valid, base, &label);
                record(
                    "late",
                    &name,
                    format!("written {k} volumes late, after volume {}", i + k),
                );
            }
            Some(Fault::Duplicate(mode)) => {
                push(i, 0, &name, Content::Valid, base, "ok");
                if matches!(mode, DupMode::Copy | DupMode::Both) {
                    let dup = src.file_name(i, true).unwrap_or_else(|| {
                        opts.naming
                            .file_name(opts.session, src.key(i), true, opts.gzip)
                    });
                    push(i + d, 1, &dup, Content::Valid, base, &label);
                    record(
                        "duplicate",
                        &dup,
                        format!("copy of {name} written after volume {}", i + d),
                    );
                }
                if matches!(mode, DupMode::Rewrite | DupMode::Both) {
                    push(i + d, 1, &name, Content::Valid, base, &label);
                    record(
                        "duplicate",
                        &name,
                        format!("same name rewritten after volume {}", i + d),
                    );
                }
            }
            Some(Fault::Corrupt(kind)) => {
                let (mode, detail) = match kind {
                    CorruptKind::Garbage => (base, "random bytes, as long as the real file"),
                    CorruptKind::Truncated => (
                        Mode::Direct,
                        "first half of the real file's bytes, never completed",
                    ),
                    CorruptKind::Empty => (Mode::Direct, "zero bytes"),
                    CorruptKind::Nan => (base, "valid float32 file, middle slice all NaN"),
                    CorruptKind::Dims => (base, "valid file with one slice fewer"),
                };
                push(i, 0, &name, Content::Corrupt(kind), mode, &label);
                record("corrupt", &name, format!("{}: {detail}", kind.name()));
            }
        }
        // Truncated and empty files are written directly whatever the plan
        // says, and a dropped volume is not written at all: only files that
        // really went out in chunks are listed as partial.
        let chunked = actions
            .iter()
            .rev()
            .take_while(|a| a.index == i)
            .any(|a| a.mode == Mode::Partial);
        if chunked {
            record(
                "partial",
                &name,
                format!(
                    "written in place in {} chunks, {} ms apart",
                    plan.partial_chunks.max(1),
                    plan.partial_pause.as_millis()
                ),
            );
        }
        let primary = if vf.fault == Some(Fault::Drop) {
            "n/a".to_string()
        } else {
            name
        };
        files.push((primary, label));
    }
    actions.sort_by_key(|a| (a.slot, a.class, a.seq));
    Schedule {
        actions,
        faults,
        files,
    }
}

/// Writes a source's volumes into an output folder.
#[derive(Debug, Clone)]
pub struct ScanWriter {
    out_dir: PathBuf,
    opts: WriterOptions,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |error| SimError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl ScanWriter {
    /// A writer into `out_dir` (created if missing).
    pub fn new(out_dir: impl Into<PathBuf>, opts: WriterOptions) -> ScanWriter {
        ScanWriter {
            out_dir: out_dir.into(),
            opts,
        }
    }

    /// The truth folder this writer uses, if any.
    pub fn truth_dir(&self) -> Option<PathBuf> {
        match &self.opts.truth {
            TruthLocation::Nowhere => None,
            TruthLocation::Dir(d) => Some(d.clone()),
            TruthLocation::Sibling => Some(sibling_truth_dir(&self.out_dir)),
        }
    }

    fn nifti_opts(&self, tr: f64) -> WriteOptions {
        WriteOptions {
            dtype: self.opts.dtype,
            gzip: self.opts.gzip,
            tr: Some(tr),
        }
    }

    /// Write the whole session (blocking; run it on a thread to simulate a
    /// scanner next to the daemon). Truth files are written first, so they
    /// can be read while volumes arrive.
    pub fn run(
        &self,
        src: &dyn VolumeSource,
        plan: &FaultPlan,
    ) -> Result<SimulationReport, SimError> {
        let start = Instant::now();
        std::fs::create_dir_all(&self.out_dir).map_err(io_err(&self.out_dir))?;
        if std::fs::read_dir(&self.out_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            tracing::warn!(dir = %self.out_dir.display(), "output folder is not empty");
        }
        let schedule = plan_schedule(src, plan, &self.opts);
        let nifti = self.nifti_opts(src.tr());
        let truth_dir = self.truth_dir();
        if let Some(dir) = &truth_dir {
            truth::write_truth(dir, src, &schedule, &nifti)?;
        }

        let mut report = SimulationReport {
            out_dir: self.out_dir.clone(),
            truth_dir,
            volumes: src.len(),
            written: Vec::new(),
            faults: schedule.faults.clone(),
            stopped: false,
            elapsed: Duration::ZERO,
            generate: Timing::default(),
            encode: Timing::default(),
            max_lag: Duration::ZERO,
        };
        for action in &schedule.actions {
            if self
                .opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                report.stopped = true;
                break;
            }
            let before_gen = report.generate.total;
            let t0 = Instant::now();
            let (bytes, valid) = self.content(src, plan, action, &nifti, &mut report.generate)?;
            let gen_time = report.generate.total;
            report
                .encode
                .add(t0.elapsed().saturating_sub(gen_time - before_gen));

            if let Some(offset) = self.slot_time(src, action.slot) {
                let target = start + offset;
                let now = Instant::now();
                if target > now {
                    if !self.sleep_until(target) {
                        report.stopped = true;
                        break;
                    }
                } else {
                    let lag = now - target;
                    report.max_lag = report.max_lag.max(lag);
                    if lag > Duration::from_secs_f64(0.5 * src.tr()) {
                        tracing::warn!(
                            slot = action.slot,
                            lag_ms = lag.as_millis() as u64,
                            "writer behind schedule"
                        );
                    }
                }
            }
            let path = self.out_dir.join(&action.name);
            self.write(&path, &bytes, action.mode, plan)?;
            let file = WrittenFile {
                index: action.index,
                key: src.key(action.index),
                path,
                label: action.label.clone(),
                partial: action.mode == Mode::Partial,
                bytes: bytes.len(),
                valid,
                at: start.elapsed(),
            };
            tracing::debug!(file = %action.name, label = %file.label, "wrote");
            if let Some(tx) = &self.opts.notify {
                // A receiver that went away just stops listening.
                let _ = tx.send(file.clone());
            }
            report.written.push(file);
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Sleep until `target`, waking now and then to honour the stop flag;
    /// false when stopped.
    fn sleep_until(&self, target: Instant) -> bool {
        let stopped = || {
            self.opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        };
        loop {
            let now = Instant::now();
            if now >= target {
                return true;
            }
            if stopped() {
                return false;
            }
            std::thread::sleep((target - now).min(Duration::from_millis(50)));
        }
    }

    /// When slot `slot` is due, or `None` when not pacing.
    fn slot_time(&self, src: &dyn VolumeSource, slot: usize) -> Option<Duration> {
        let per = match self.opts.pace {
            Pace::Fast => return None,
            Pace::Realtime => Duration::from_secs_f64(src.tr()),
            Pace::Interval(d) => d,
        };
        let n = src.len();
        let run_index = if n == 0 {
            0
        } else {
            let first_run = src.key(0).run;
            src.key(slot.min(n - 1)).run - first_run
        };
        Some(per * slot as u32 + self.opts.run_gap * run_index)
    }

    fn content(
        &self,
        src: &dyn VolumeSource,
        plan: &FaultPlan,
        action: &Action,
        nifti: &WriteOptions,
        timing: &mut Timing,
    ) -> Result<(Vec<u8>, bool), SimError> {
        // A replayed scanner file: its own bytes, corrupted the same ways.
        if let Some(real) = src.file_bytes(action.index) {
            let t = Instant::now();
            let real = real?;
            timing.add(t.elapsed());
            let bytes = match action.content {
                Content::Valid => return Ok((real, true)),
                Content::Corrupt(CorruptKind::Empty) => Vec::new(),
                Content::Corrupt(CorruptKind::Truncated) => real[..real.len() / 2].to_vec(),
                Content::Corrupt(CorruptKind::Garbage) => garbage(
                    real.len(),
                    mix_seed(plan.seed ^ TAG_GARBAGE, action.index as u64),
                ),
                Content::Corrupt(kind) => super::replay::corrupt_dicom(&real, kind)
                    .map_err(|e| SimError::Spec(format!("{}: {e}", action.name)))?,
            };
            return Ok((bytes, false));
        }
        let mut fetch = || {
            let t = Instant::now();
            let v = src.volume(action.index);
            timing.add(t.elapsed());
            v
        };
        let enc_err = |error| SimError::Io {
            path: self.out_dir.join(&action.name),
            error,
        };
        let kind = match action.content {
            Content::Valid => {
                let vol = fetch()?;
                return Ok((encode_volume(&vol, nifti).map_err(enc_err)?, true));
            }
            Content::Corrupt(k) => k,
        };
        let bytes = match kind {
            CorruptKind::Empty => Vec::new(),
            CorruptKind::Truncated => {
                let mut b = encode_volume(&fetch()?, nifti).map_err(enc_err)?;
                b.truncate(b.len() / 2);
                b
            }
            CorruptKind::Garbage => {
                let len = encode_volume(&fetch()?, nifti).map_err(enc_err)?.len();
                garbage(len, mix_seed(plan.seed ^ TAG_GARBAGE, action.index as u64))
            }
            CorruptKind::Nan => {
                let mut vol = fetch()?;
                let [nx, ny, nz] = vol.grid().dims;
                let k = nz / 2;
                vol.values_mut()[nx * ny * k..nx * ny * (k + 1)].fill(f32::NAN);
                let f32opts = WriteOptions {
                    dtype: OutputType::F32,
                    ..nifti.clone()
                };
                encode_volume(&vol, &f32opts).map_err(enc_err)?
            }
            CorruptKind::Dims => {
                let vol = wrong_dims(&fetch()?);
                encode_volume(&vol, nifti).map_err(enc_err)?
            }
        };
        Ok((bytes, false))
    }

    fn write(
        &self,
        path: &Path,
        bytes: &[u8],
        mode: Mode,
        plan: &FaultPlan,
    ) -> Result<(), SimError> {
        match mode {
            Mode::Direct => std::fs::write(path, bytes).map_err(io_err(path)),
            Mode::Atomic => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = path.with_file_name(format!(".{name}.tmp"));
                std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, path).map_err(io_err(path))
            }
            Mode::Partial => {
                let mut f = std::fs::File::create(path).map_err(io_err(path))?;
                let chunks = plan.partial_chunks.max(1);
                let size = bytes.len().div_ceil(chunks).max(1);
                let mut pieces = bytes.chunks(size).peekable();
                while let Some(piece) = pieces.next() {
                    f.write_all(piece).map_err(io_err(path))?;
                    f.flush().map_err(io_err(path))?;
                    if pieces.peek().is_some() && !plan.partial_pause.is_zero() {
                        std::thread::sleep(plan.partial_pause);
                    }
                }
                Ok(())
            }
        }
    }
}

/// `<out>_truth` next to `out`.
pub fn sibling_truth_dir(out: &Path) -> PathBuf {
    let abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    abs.with_file_name(format!("{name}_truth"))
}

/// Random bytes that do not start like a NIfTI header, a gzip stream or a
/// DICOM file, so they are garbage however a reader sniffs them.
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut b);
    if b.len() >= 4 {
        let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if (b[0] == 0x1f && b[1] == 0x8b)
            || [348, 540].contains(&le)
            || [348, 540].contains(&be)
            || b.starts_with(b"DICM")
        {
            b[0] ^= 0x55;
        }
    }
    if b.len() >= 132 && &b[128..132] == b"DICM" {
        b[128] ^= 0x55;
    }
    b
}

/// The volume on a grid with one slice fewer (one column fewer for a
/// single-slice volume): what a protocol change mid-run looks like.
pub fn wrong_dims(vol: &Volume) -> Volume {
    let g = vol.grid();
    let [nx, ny, nz] = g.dims;
    let (dims, vals) = if nz > 1 {
        (
            [nx, ny, nz - 1],
            vol.values()[..nx * ny * (nz - 1)].to_vec(),
        )
    } else if nx > 1 {
        let vals = vol
            .values()
            .chunks(nx)
            .flat_map(|row| row[..nx - 1].iter().copied())
            .collect();
        ([nx - 1, ny, nz], vals)
    } else {
        ([nx, ny, nz + 1], [vol.values(), vol.values()].concat())
    };
    let grid = Grid {
        dims,
        pixdim: g.pixdim,
        affine: g.affine,
    };
    let len = grid.len();
    Volume::from_file_order(grid.clone(), vals).unwrap_or_else(|| {
        Volume::from_file_order(grid.clone(), vec![0.0; len]).unwrap_or_else(|| Volume::zeros(grid))
    })
}

/// Build a [`SynthSeries`] from `spec` and write it into `out_dir` with the
/// default [`WriterOptions`] (BIDS names, `.nii`, float32, truth in `<out>_truth`) at
/// `pace`. Runs on any thread.
pub fn simulate(
    spec: &SynthSpec,
    plan: &FaultPlan,
    out_dir: &Path,
    pace: Pace,
) -> Result<SimulationReport, SimError> {
    let series = SynthSeries::new(spec.clone())?;
    let opts = WriterOptions {
        pace,
        ..WriterOptions::default()
    };
    ScanWriter::new(out_dir, opts).run(&series, plan)
}
