//! Session store: everything the pipeline produces, on disk as it happens.
//!
//! In: [`PipelineEvent`]s. Out: the session folder —
//!
//! ```text
//! <session>/
//!   session.toml           the configuration the session ran with
//!   boldstream.log         the daemon's log (written by the binary's logger)
//!   ingest_log.tsv         every non-volume event: gaps, duplicates, late and
//!                          quarantined files, realign failures, notices
//!   quarantine/            files that never decoded, each with a .reason.txt
//!   reference.nii.gz       the session reference volume
//!   reference_grid.tsv     its geometry at full precision (NIfTI-1 keeps
//!                          float32), so a resumed session registers to
//!                          exactly the same reference
//!   mask.nii.gz            the session mask (output grid)
//!   run-01/motion.par      MCFLIRT-convention parameters, one row per volume
//!                          index in order (NaN row for a volume that never came)
//!   run-01/qc.tsv          per volume: status, arrival time, motion, FD, DVARS,
//!                          per-stage latency
//!   run-01/masked.npy      realigned masked voxels (float32, one row per
//!                          volume, arrival order; np.where voxel order)
//!   run-01/masked_rows.tsv row → volume index of masked.npy
//!   run-01/params.npy      per masked.npy row (float64): the six motion
//!                          parameters at full precision, then the 4×4
//!                          reference → volume matrix (row-major); what a
//!                          resumed session continues from
//!   run-01/feedback.tsv    per volume and region/decoder: value, smoothed
//!   betas/raw.npy          one row per trial beta (float32, mask order)
//!   betas/z.npy            the same, z-scored
//!   betas/decode.npy       what decoding gets (z, or the repeat average)
//!   betas/index.tsv        row → run, trial, image id, onset, trigger volume,
//!                          frames, time estimated, latency; trials without a
//!                          beta with the reason
//!   decode/models.tsv      the decoder's graphs: provider, warm-up latency
//!   decode/retrieval.tsv   per decoded trial: image shown, its rank, top-k
//!                          ids and scores, per-graph and end-to-end times
//!   decode/query.npy       the retrieval query per decoded trial (row order
//!                          of retrieval.tsv)
//!   decode/recon.tsv       per reconstruction: PNG, seeds, queue wait,
//!                          prior/decoder/latent-decoder times, overhead
//!   decode/steps.tsv       ONNX Runtime time of every sampler step
//!   decode/recon/run-01_trial-003.png   the reconstructions
//!   decode/skipped.tsv     every trial not decoded or not reconstructed, why
//! ```
//!
//! Every row is flushed to the operating system when written, so a crash
//! of the daemon loses at most the volume in flight. `motion.par` is the one
//! file rewritten (atomically) — when a late volume fills a gap.
//!
//! Each record has one file that commits it, written last: `qc.tsv` for a
//! volume (after masked.npy, params.npy, masked_rows.tsv and motion.par),
//! `betas/index.tsv` for a beta (after the three .npy rows),
//! `decode/retrieval.tsv` for a decode (after query.npy), `recon.tsv` for a
//! reconstruction (after its PNG and steps). A crash leaves at most a torn
//! last line or rows ahead of their commit, which [`crate::session::resume`] cuts
//! off before [`SessionStore::reopen`] appends to the same files.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::formats::nifti::{self, WriteOptions};
use crate::formats::npy::{Dtype, NpyAppender};
use crate::types::messages::{
    IngestEvent, MissingReason, PipelineEvent, RealignedVolume, TrialBeta, VolumeKey,
};
use crate::types::transform::MotionParams;

const QC_HEADER: &str = "volume\tstatus\tfile\tarrival_unix\trx\try\trz\ttx\tty\ttz\tfd\tdvars\tdvars_pct\tdecode_ms\twait_ms\tqueue_ms\trealign_ms\tlatency_ms\tattempts\titerations\tgain\tdetail";

struct RunFiles {
    dir: PathBuf,
    feedback: Option<File>,
    qc: File,
    /// Rows in qc.tsv so far (recorded with the run's end, so a resumed
    /// session knows which rows came after it).
    qc_rows: usize,
    par: File,
    masked: Option<NpyAppender>,
    params: Option<NpyAppender>,
    masked_rows: File,
    /// Volume index → parameters (None: never came), in index order; the
    /// source for rewriting motion.par when a late volume fills a gap.
    motion: BTreeMap<u32, Option<MotionParams>>,
}

/// Columns of params.npy: six parameters, then the 4×4 matrix.
pub const PARAMS_COLS: usize = 22;

/// What a resumed session's folder already holds, so that an event
/// replayed on resume is not recorded twice.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The reference, mask and cross-session files are written.
    pub reference: bool,
    /// Voxels in the session mask (0: no reference yet).
    pub mask_voxels: usize,
    /// Per run: volume index → parameters (None for a gap), and qc.tsv rows.
    pub runs: BTreeMap<u32, (BTreeMap<u32, Option<MotionParams>>, usize)>,
    /// (run, trial) with a row in betas/index.tsv (beta or skipped).
    pub trials: HashSet<(u32, usize)>,
    /// (run, trial) with a row in decode/retrieval.tsv.
    pub decoded: HashSet<(u32, usize)>,
    /// (run, trial) with a row in decode/recon.tsv.
    pub reconstructed: HashSet<(u32, usize)>,
    /// (run, trial, what) with a row in decode/skipped.tsv.
    pub decode_skipped: HashSet<(u32, usize, String)>,
    /// Volumes with rows in a run's feedback.tsv.
    pub feedback: HashSet<VolumeKey>,
}

/// The session's beta files (created with the first beta).
struct BetaFiles {
    raw: NpyAppender,
    z: NpyAppender,
    decode: NpyAppender,
}

const BETA_HEADER: &str = "row\trun\ttrial\timage_id\ttrial_type\tonset\tduration\ttrigger_volume\tframes\tregressors\tpresentations\tdelayed\twarmup\testimated_unix\tlatency_ms\tcompute_ms\tstatus";

/// The decode outputs (created with the first decode event).
struct DecodeFiles {
    dir: PathBuf,
    retrieval: File,
    query: Option<NpyAppender>,
    recon: File,
    steps: File,
    skipped: File,
}

/// Writes the session folder.
pub struct SessionStore {
    decode: Option<DecodeFiles>,
    dir: PathBuf,
    betas: Option<BetaFiles>,
    beta_index: Option<File>,
    ingest_log: File,
    runs: BTreeMap<u32, RunFiles>,
    mask_voxels: usize,
    recorded: Recorded,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ms(later: Instant, earlier: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64() * 1e3
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.prec$}"))
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Tabs and newlines inside a field would break the TSV.
fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// The first line of session.toml; the configuration follows it verbatim.
pub const SESSION_TOML_FIRST: &str = "# boldstream ";

impl SessionStore {
    /// Create the session folder and record the configuration.
    pub fn create(dir: &Path, config_text: &str) -> std::io::Result<SessionStore> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(dir.join("quarantine"))?;
        // Atomic: a resumed session compares its configuration with this
        // one, so it must never be half written.
        let text = format!(
            "{SESSION_TOML_FIRST}{} session started {:.3} (unix seconds)\n{config_text}",
            env!("CARGO_PKG_VERSION"),
            unix_seconds(SystemTime::now())
        );
        crate::formats::atomic_write(&dir.join("session.toml"), text.as_bytes())?;
        SessionStore::open(dir, Recorded::default())
    }

    /// Continue a session folder that [`crate::session::resume`] has loaded and
    /// repaired: every file is appended to, and events for what is already
    /// `recorded` are not written again.
    pub fn reopen(dir: &Path, recorded: Recorded) -> std::io::Result<SessionStore> {
        let mut store = SessionStore::open(dir, recorded)?;
        store.mask_voxels = store.recorded.mask_voxels;
        let runs: Vec<u32> = store.recorded.runs.keys().copied().collect();
        for run in runs {
            store.run(run)?;
        }
        Ok(store)
    }

    fn open(dir: &Path, recorded: Recorded) -> std::io::Result<SessionStore> {
        let log_path = dir.join("ingest_log.tsv");
        let new = !log_path.exists();
        let mut ingest_log = append(&log_path)?;
        if new {
            writeln!(ingest_log, "time_unix\tevent\trun\tvolume\tfile\tdetail")?;
        }
        Ok(SessionStore {
            decode: None,
            dir: dir.to_path_buf(),
            betas: None,
            beta_index: None,
            ingest_log,
            runs: BTreeMap::new(),
            mask_voxels: 0,
            recorded,
        })
    }

    /// Write a line to ingest_log.tsv (the resume notice, say).
    pub fn note(&mut self, event: &str, detail: &str) -> std::io::Result<()> {
        self.log(event, None, Path::new(""), detail)
    }

    /// The session folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn run(&mut self, run: u32) -> std::io::Result<&mut RunFiles> {
        if !self.runs.contains_key(&run) {
            let dir = self.dir.join(format!("run-{run:02}"));
            std::fs::create_dir_all(&dir)?;
            let header = |name: &str, h: &str| -> std::io::Result<File> {
                let path = dir.join(name);
                let new = !path.exists();
                let mut f = append(&path)?;
                if new {
                    writeln!(f, "{h}")?;
                }
                Ok(f)
            };
            let qc = header("qc.tsv", QC_HEADER)?;
            let masked_rows = header("masked_rows.tsv", "row\tvolume\tlate")?;
            let par = append(&dir.join("motion.par"))?;
            let (motion, qc_rows) = self.recorded.runs.remove(&run).unwrap_or_default();
            // A resumed run appends to the matrices it had (repaired to
            // its committed rows); a new one creates them with its first
            // volume.
            let reopen = |name: &str, cols: usize, dtype: Dtype| -> std::io::Result<_> {
                let path = dir.join(name);
                if cols > 0 && path.exists() {
                    NpyAppender::open(&path, cols, dtype).map(Some)
                } else {
                    Ok(None)
                }
            };
            let masked = reopen("masked.npy", self.mask_voxels, Dtype::F32)?;
            let params = reopen("params.npy", PARAMS_COLS, Dtype::F64)?;
            self.runs.insert(
                run,
                RunFiles {
                    dir,
                    feedback: None,
                    qc,
                    qc_rows,
                    par,
                    masked,
                    params,
                    masked_rows,
                    motion,
                },
            );
        }
        self.runs
            .get_mut(&run)
            .ok_or_else(|| std::io::Error::other("run files vanished"))
    }

    fn log(
        &mut self,
        event: &str,
        key: Option<VolumeKey>,
        file: &Path,
        detail: &str,
    ) -> std::io::Result<()> {
        let (run, vol) = key.map_or(("n/a".into(), "n/a".into()), |k| {
            (k.run.to_string(), k.index.to_string())
        });
        writeln!(
            self.ingest_log,
            "{:.3}\t{event}\t{run}\t{vol}\t{}\t{}",
            unix_seconds(SystemTime::now()),
            clean(&file.display().to_string()),
            clean(detail)
        )
    }

    /// `cross_session.tsv`: where the calibration reference lies in this
    /// session, so the resampling onto the calibration grid can be redone
    /// offline.
    fn cross_session(&self, c: &crate::types::messages::CrossSession) -> std::io::Result<()> {
        let mut text = String::from(
            "# calibration reference registered to this session's reference\n# target\t",
        );
        text.push_str(&c.target);
        text.push_str("\n# seconds\t");
        text.push_str(&format!("{:.4}", c.seconds));
        text.push_str("\n# params (MCFLIRT convention: rx ry rz rad, tx ty tz mm)\t");
        text.push_str(&crate::formats::par::line(Some(&c.params)));
        text.push_str("\n# target_to_reference world matrix, row-major\n");
        for row in &c.target_to_reference {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.9}")).collect();
            text.push_str(&cells.join("\t"));
            text.push('\n');
        }
        crate::formats::atomic_write(&self.dir.join("cross_session.tsv"), text.as_bytes())
    }

    /// Record one event.
    pub fn handle(&mut self, event: &PipelineEvent) -> std::io::Result<()> {
        match event {
            PipelineEvent::ReferenceReady {
                source,
                mask_voxels,
                reference,
                mask,
                cross_session,
            } => {
                self.mask_voxels = *mask_voxels;
                if self.recorded.reference {
                    // A resumed session announces the reference it had.
                    return Ok(());
                }
                if let Some(c) = cross_session {
                    self.cross_session(c)?;
                }
                let opts = WriteOptions {
                    gzip: true,
                    ..Default::default()
                };
                // Atomic, grid first and mask last: a resumed session takes
                // the reference as set once the mask is there.
                crate::formats::atomic_write(
                    &self.dir.join("reference_grid.tsv"),
                    grid_text(reference.grid()).as_bytes(),
                )?;
                crate::formats::atomic_write(
                    &self.dir.join("reference.nii.gz"),
                    &nifti::encode_volume(reference, &opts)?,
                )?;
                crate::formats::atomic_write(
                    &self.dir.join("mask.nii.gz"),
                    &nifti::encode_volume(&mask.to_volume(), &opts)?,
                )?;
                self.log(
                    "reference",
                    None,
                    Path::new(source),
                    &format!("mask {mask_voxels} voxels"),
                )
            }
            PipelineEvent::Realigned(r) => self.realigned(r),
            PipelineEvent::RealignFailed { key, path, reason } => {
                self.log("realign_failed", Some(*key), path, reason)?;
                self.placeholder(*key, "failed", path, reason)
            }
            PipelineEvent::Ingest(ev) => self.ingest(ev),
            PipelineEvent::Beta(b) => self.beta(b),
            PipelineEvent::TrialSkipped {
                run,
                trial,
                event,
                reason,
            } => {
                if !self.recorded.trials.insert((*run, *trial)) {
                    return Ok(());
                }
                self.log(
                    "trial_skipped",
                    None,
                    Path::new(""),
                    &format!("run {run} trial {trial}: {reason}"),
                )?;
                let index = self.betas_index()?;
                writeln!(
                    index,
                    "n/a\t{run}\t{trial}\t{}\t{}\t{}\t{}\tn/a\tn/a\tn/a\tn/a\tn/a\tn/a\tn/a\tn/a\tn/a\t{}",
                    event.stim_id.as_deref().unwrap_or("n/a"),
                    clean(&event.trial_type),
                    event.onset,
                    event.duration,
                    clean(reason)
                )
            }
            PipelineEvent::Feedback(f) => {
                if !self.recorded.feedback.insert(f.key) {
                    return Ok(());
                }
                let rf = self.run(f.key.run)?;
                if rf.feedback.is_none() {
                    let path = rf.dir.join("feedback.tsv");
                    let new = !path.exists();
                    let mut file = append(&path)?;
                    if new {
                        writeln!(file, "volume\tname\tvalue\tsmoothed")?;
                    }
                    rf.feedback = Some(file);
                }
                if let Some(file) = rf.feedback.as_mut() {
                    // One write for the volume's lines: a crash keeps all
                    // of them or none (but a torn last line).
                    let mut text = String::new();
                    for v in &f.values {
                        text.push_str(&format!(
                            "{}\t{}\t{:.6}\t{:.6}\n",
                            f.key.index,
                            clean(&v.name),
                            v.value,
                            v.smoothed
                        ));
                    }
                    file.write_all(text.as_bytes())?;
                }
                Ok(())
            }
            PipelineEvent::Notice(text) => self.log("notice", None, Path::new(""), text),
            PipelineEvent::DecoderReady(r) => {
                let d = self.decode_files()?;
                let mut f = File::create(d.dir.join("models.tsv"))?;
                writeln!(f, "role\tprovider\tfirst_ms\tmedian_ms\tfile")?;
                for g in &r.graphs {
                    writeln!(
                        f,
                        "{}\t{}\t{:.3}\t{:.3}\t{}",
                        g.role,
                        g.provider,
                        g.first_seconds * 1e3,
                        g.median_seconds * 1e3,
                        clean(&g.file.display().to_string())
                    )?;
                }
                let detail = format!(
                    "model {} subject {} onnxruntime {} ({})",
                    r.model.display(),
                    r.subject,
                    r.version,
                    r.library.display()
                );
                self.log("decoder_ready", None, Path::new(""), &detail)
            }
            PipelineEvent::Decoded(d) => self.decoded(d),
            PipelineEvent::Reconstructed(r) => self.reconstructed(r),
            PipelineEvent::DecodeSkipped {
                run,
                trial,
                stim_id,
                what,
                reason,
            } => {
                if !self
                    .recorded
                    .decode_skipped
                    .insert((*run, *trial, what.to_string()))
                {
                    return Ok(());
                }
                let d = self.decode_files()?;
                writeln!(
                    d.skipped,
                    "{:.3}\t{run}\t{trial}\t{}\t{what}\t{}",
                    unix_seconds(SystemTime::now()),
                    stim_id.as_deref().map_or("n/a".into(), clean),
                    clean(reason)
                )
            }
        }
    }

    fn decode_files(&mut self) -> std::io::Result<&mut DecodeFiles> {
        if self.decode.is_none() {
            let dir = self.dir.join("decode");
            std::fs::create_dir_all(dir.join("recon"))?;
            let header = |name: &str, h: &str| -> std::io::Result<File> {
                let path = dir.join(name);
                let new = !path.exists();
                let mut f = append(&path)?;
                if new {
                    writeln!(f, "{h}")?;
                }
                Ok(f)
            };
            self.decode = Some(DecodeFiles {
                retrieval: header(
                    "retrieval.tsv",
                    "row\trun\ttrial\timage_id\ttrue_rank\tbank_size\ttop_ids\ttop_scores\tadapter_ms\tbackbone_ms\tfast_ms\tsince_beta_ms\tsince_trigger_ms\tnonfinite_voxels",
                )?,
                recon: header(
                    "recon.tsv",
                    "run\ttrial\timage_id\tpng\tprior_seed\tdecoder_seed\tqueued_ms\tprior_steps\tprior_ms\tdecoder_steps\tdecoder_ms\tlatent_decoder_ms\trecon_ms\toverhead_ms\tsince_trigger_ms",
                )?,
                steps: header("steps.tsv", "run\ttrial\tgraph\tstep\tms")?,
                skipped: header(
                    "skipped.tsv",
                    "time_unix\trun\ttrial\timage_id\twhat\treason",
                )?,
                query: None,
                dir,
            });
        }
        self.decode
            .as_mut()
            .ok_or_else(|| std::io::Error::other("decode files vanished"))
    }

    fn decoded(&mut self, t: &crate::types::messages::TrialDecoded) -> std::io::Result<()> {
        if !self.recorded.decoded.insert((t.run, t.trial)) {
            return Ok(());
        }
        let d = self.decode_files()?;
        if d.query.is_none() {
            let path = d.dir.join("query.npy");
            d.query = Some(if path.exists() {
                NpyAppender::open(&path, t.query.len(), Dtype::F32)?
            } else {
                NpyAppender::create(&path, t.query.len())?
            });
        }
        let row = match d.query.as_mut() {
            Some(q) => {
                q.append(&t.query)?;
                q.rows() - 1
            }
            None => 0,
        };
        let graph = |role: &str| {
            t.graphs
                .iter()
                .find(|(r, _)| *r == role)
                .map_or("n/a".to_string(), |(_, s)| format!("{:.3}", s * 1e3))
        };
        let ids: Vec<String> = t.top.iter().map(|(id, _)| clean(id)).collect();
        let scores: Vec<String> = t.top.iter().map(|(_, s)| format!("{s:.4}")).collect();
        writeln!(
            d.retrieval,
            "{row}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}\t{}\t{}",
            t.run,
            t.trial,
            t.stim_id.as_deref().map_or("n/a".into(), clean),
            t.true_rank.map_or("n/a".into(), |r| r.to_string()),
            t.bank_size,
            ids.join(","),
            scores.join(","),
            graph("adapter"),
            graph("backbone"),
            t.seconds * 1e3,
            t.since_beta * 1e3,
            opt(t.since_trigger.map(|s| s * 1e3), 3),
            t.nonfinite_voxels
        )
    }

    fn reconstructed(
        &mut self,
        r: &crate::types::messages::TrialReconstructed,
    ) -> std::io::Result<()> {
        if !self.recorded.reconstructed.insert((r.run, r.trial)) {
            return Ok(());
        }
        let d = self.decode_files()?;
        let name = format!("run-{:02}_trial-{:03}.png", r.run, r.trial);
        let png =
            match crate::formats::png::write_png(&d.dir.join("recon").join(&name), &r.image, r.chw)
            {
                Ok(()) => format!("recon/{name}"),
                Err(e) => {
                    tracing::error!(
                        "reconstruction run {} trial {}: PNG not written: {e}",
                        r.run,
                        r.trial
                    );
                    "n/a".to_string()
                }
            };
        for (graph, steps) in [("prior", &r.prior_steps), ("decoder", &r.decoder_steps)] {
            for (i, s) in steps.iter().enumerate() {
                writeln!(
                    d.steps,
                    "{}\t{}\t{graph}\t{i}\t{:.3}",
                    r.run,
                    r.trial,
                    s * 1e3
                )?;
            }
        }
        if r.latent_decoder_seconds > 0.0 {
            writeln!(
                d.steps,
                "{}\t{}\tlatent_decoder\t0\t{:.3}",
                r.run,
                r.trial,
                r.latent_decoder_seconds * 1e3
            )?;
        }
        writeln!(
            d.recon,
            "{}\t{}\t{}\t{png}\t{}\t{}\t{:.3}\t{}\t{:.3}\t{}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}",
            r.run,
            r.trial,
            r.stim_id.as_deref().map_or("n/a".into(), clean),
            r.prior_seed,
            r.decoder_seed,
            r.queued_seconds * 1e3,
            r.prior_steps.len(),
            r.prior_steps.iter().sum::<f64>() * 1e3,
            r.decoder_steps.len(),
            r.decoder_steps.iter().sum::<f64>() * 1e3,
            r.latent_decoder_seconds * 1e3,
            r.seconds * 1e3,
            r.overhead_seconds * 1e3,
            opt(r.since_trigger.map(|s| s * 1e3), 3)
        )
    }

    fn ingest(&mut self, ev: &IngestEvent) -> std::io::Result<()> {
        match ev {
            IngestEvent::RunStarted { run, first_index } => {
                self.run(*run)?;
                // The volume column is the run's first index: a resumed
                // session restarts the run's ordering from it.
                self.log(
                    "run_started",
                    Some(VolumeKey {
                        run: *run,
                        index: *first_index,
                    }),
                    Path::new(""),
                    &format!("run {run}"),
                )
            }
            IngestEvent::RunEnded { run } => {
                let rf = self.run(*run)?;
                rf.qc.sync_data()?;
                rf.par.sync_data()?;
                let rows = rf.qc_rows;
                // The qc rows before the end: later ones are volumes
                // delivered late to the ended run, replayed after it.
                writeln!(
                    self.ingest_log,
                    "{:.3}\trun_ended\t{run}\tn/a\t\trun {run}; {rows} qc rows",
                    unix_seconds(SystemTime::now()),
                )
            }
            IngestEvent::Missing { key, reason } => {
                let detail = match reason {
                    MissingReason::NotReceived => "not received".to_string(),
                    MissingReason::Quarantined(why) => format!("quarantined: {why}"),
                    MissingReason::StillIncomplete => {
                        "file still incomplete when the wait ran out (delivered late if it completes)".to_string()
                    }
                };
                self.log("missing", Some(*key), Path::new(""), &detail)?;
                self.placeholder(*key, "missing", Path::new(""), &detail)
            }
            IngestEvent::Duplicate { key, path } => self.log(
                "duplicate",
                Some(*key),
                path,
                "ignored: volume already taken",
            ),
            IngestEvent::Quarantined {
                key,
                path,
                moved_to,
                reason,
            } => self.log(
                "quarantined",
                *key,
                path,
                &format!("{reason} (moved to {})", moved_to.display()),
            ),
            IngestEvent::Notice(text) => self.log("notice", None, Path::new(""), text),
            IngestEvent::Heartbeat(_) => Ok(()),
            IngestEvent::Volume(v) => self.log(
                "unrealigned_volume",
                Some(v.key),
                &v.path,
                "volume reached the store without realignment",
            ),
        }
    }

    fn betas_index(&mut self) -> std::io::Result<&mut File> {
        if self.beta_index.is_none() {
            let dir = self.dir.join("betas");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("index.tsv");
            let new = !path.exists();
            let mut f = append(&path)?;
            if new {
                writeln!(f, "{BETA_HEADER}")?;
            }
            self.beta_index = Some(f);
        }
        self.beta_index
            .as_mut()
            .ok_or_else(|| std::io::Error::other("beta index vanished"))
    }

    fn beta(&mut self, b: &TrialBeta) -> std::io::Result<()> {
        if !self.recorded.trials.insert((b.run, b.trial)) {
            return Ok(());
        }
        if self.betas.is_none() {
            let dir = self.dir.join("betas");
            std::fs::create_dir_all(&dir)?;
            let v = b.raw.len();
            let npy = |name: &str| {
                let path = dir.join(name);
                if path.exists() {
                    NpyAppender::open(&path, v, Dtype::F32)
                } else {
                    NpyAppender::create(&path, v)
                }
            };
            self.betas = Some(BetaFiles {
                raw: npy("raw.npy")?,
                z: npy("z.npy")?,
                decode: npy("decode.npy")?,
            });
        }
        let files = self
            .betas
            .as_mut()
            .ok_or_else(|| std::io::Error::other("beta files vanished"))?;
        let row = files.raw.rows();
        files.raw.append(&b.raw)?;
        files.z.append(&b.z)?;
        files.decode.append(&b.decode)?;
        let latency = b
            .trigger_seen
            .map(|t| {
                format!(
                    "{:.3}",
                    b.ready.saturating_duration_since(t).as_secs_f64() * 1e3
                )
            })
            .unwrap_or_else(|| "n/a".into());
        let index = self.betas_index()?;
        writeln!(
            index,
            "{row}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{latency}\t{:.3}\tok",
            b.run,
            b.trial,
            b.event.stim_id.as_deref().unwrap_or("n/a"),
            clean(&b.event.trial_type),
            b.event.onset,
            b.event.duration,
            b.trigger.index,
            b.frames,
            b.regressors,
            b.presentations,
            u8::from(b.delayed),
            u8::from(b.warmup),
            unix_seconds(b.ready_wall),
            b.compute_seconds * 1e3,
        )
    }

    /// A QC row and a NaN motion row for an index with no data.
    fn placeholder(
        &mut self,
        key: VolumeKey,
        status: &str,
        path: &Path,
        detail: &str,
    ) -> std::io::Result<()> {
        let rf = self.run(key.run)?;
        if rf.motion.insert(key.index, None).is_none() {
            writeln!(rf.par, "{}", crate::formats::par::line(None))?;
        }
        let nan = "n/a\t".repeat(14);
        writeln!(
            rf.qc,
            "{}\t{status}\t{}\tn/a\t{nan}n/a\tn/a\tn/a\t{}",
            key.index,
            clean(&path.display().to_string()),
            clean(detail)
        )?;
        rf.qc_rows += 1;
        Ok(())
    }

    fn realigned(&mut self, r: &RealignedVolume) -> std::io::Result<()> {
        let now = Instant::now();
        let t = &r.ingest;
        let lat = crate::types::messages::VolumeLatency::of(r);
        let mask_voxels = self.mask_voxels;
        let rf = self.run(r.key.run)?;
        // Created on the first volume: the mask size is known only once the
        // reference is set, which may be after the run started. Never
        // truncated: a run resumed before its first volume has them.
        let open_or_create = |path: PathBuf, cols: usize, dtype: Dtype| {
            if path.exists() {
                NpyAppender::open(&path, cols, dtype)
            } else {
                NpyAppender::create_typed(&path, cols, dtype)
            }
        };
        if rf.masked.is_none() && mask_voxels > 0 {
            rf.masked = Some(open_or_create(
                rf.dir.join("masked.npy"),
                mask_voxels,
                Dtype::F32,
            )?);
        }
        if rf.params.is_none() {
            rf.params = Some(open_or_create(
                rf.dir.join("params.npy"),
                PARAMS_COLS,
                Dtype::F64,
            )?);
        }
        // qc.tsv last: its row commits the volume (see the module doc).
        if let (Some(m), Some(pm)) = (rf.masked.as_mut(), rf.params.as_mut()) {
            let row = m.rows();
            m.append(&r.masked)?;
            let mut full = Vec::with_capacity(PARAMS_COLS);
            full.extend_from_slice(&r.params.0);
            for i in 0..4 {
                for j in 0..4 {
                    full.push(r.ref_to_volume[(i, j)]);
                }
            }
            pm.append_f64(&full)?;
            writeln!(
                rf.masked_rows,
                "{row}\t{}\t{}",
                r.key.index,
                u8::from(r.late)
            )?;
        }
        let filled_gap = rf.motion.insert(r.key.index, Some(r.params)).is_some();
        if filled_gap {
            rewrite_par(&rf.dir, &rf.motion)?;
            rf.par = append(&rf.dir.join("motion.par"))?;
        } else {
            writeln!(rf.par, "{}", crate::formats::par::line(Some(&r.params)))?;
        }
        let p = r.params.0;
        let status = if r.late { "late" } else { "ok" };
        writeln!(
            rf.qc,
            "{}\t{status}\t{}\t{:.3}\t{:.6}\t{:.6}\t{:.6}\t{:.4}\t{:.4}\t{:.4}\t{}\t{}\t{}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{}\t{}\t{:.4}\t",
            r.key.index,
            clean(&r.path.display().to_string()),
            unix_seconds(t.first_seen_wall),
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            opt(r.fd, 4),
            opt(r.dvars, 3),
            opt(r.dvars_pct, 4),
            lat.read_ms,
            lat.reorder_ms,
            lat.queue_ms,
            lat.realign_ms,
            // Stored: the file's whole way, up to this row.
            ms(now, t.first_seen),
            t.attempts,
            r.iterations
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            r.gain,
        )?;
        rf.qc_rows += 1;
        Ok(())
    }
}

/// reference_grid.tsv: the grid at full precision (`{}` prints the
/// shortest decimal that reads back as the same f64).
pub fn grid_text(g: &crate::types::volume::Grid) -> String {
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join("\t")
    };
    let dims: Vec<String> = g.dims.iter().map(|d| d.to_string()).collect();
    let affine: Vec<f64> = (0..4)
        .flat_map(|i| (0..4).map(move |j| (i, j)))
        .map(|(i, j)| g.affine[(i, j)])
        .collect();
    format!(
        "# geometry of reference.nii.gz at full precision\ndims\t{}\npixdim\t{}\naffine\t{}\n",
        dims.join("\t"),
        join(&g.pixdim),
        join(&affine)
    )
}

/// Rewrite motion.par from the in-memory table, atomically (temp + rename).
fn rewrite_par(dir: &Path, motion: &BTreeMap<u32, Option<MotionParams>>) -> std::io::Result<()> {
    let text = crate::formats::par::text(motion.values().map(Option::as_ref));
    crate::formats::atomic_write(&dir.join("motion.par"), text.as_bytes())
}

impl crate::stage::Sink for SessionStore {
    type Request = std::convert::Infallible;
    const NAME: &'static str = "store";
    /// Everything is kept: the store may make the pipeline wait, never lose.
    const DELIVERY: crate::stage::Delivery = crate::stage::Delivery::Reliable;

    fn deliver(&mut self, event: &PipelineEvent) -> std::io::Result<()> {
        self.handle(event)
    }
}
