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
//!   mask.nii.gz            the session mask (output grid)
//!   run-01/motion.par      MCFLIRT-convention parameters, one row per volume
//!                          index in order (NaN row for a volume that never came)
//!   run-01/qc.tsv          per volume: status, arrival time, motion, FD, DVARS,
//!                          per-stage latency
//!   run-01/masked.npy      realigned masked voxels (float32, one row per
//!                          volume, arrival order; np.where voxel order)
//!   run-01/masked_rows.tsv row → volume index of masked.npy
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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::npy::NpyAppender;
use crate::formats::nifti::{self, WriteOptions};
use crate::messages::{
    IngestEvent, MissingReason, PipelineEvent, RealignedVolume, TrialBeta, VolumeKey,
};
use crate::realign::transform::MotionParams;

const QC_HEADER: &str = "volume\tstatus\tfile\tarrival_unix\trx\try\trz\ttx\tty\ttz\tfd\tdvars\tdvars_pct\tdecode_ms\twait_ms\tqueue_ms\trealign_ms\tlatency_ms\tattempts\titerations\tgain\tdetail";

struct RunFiles {
    dir: PathBuf,
    feedback: Option<File>,
    qc: File,
    par: File,
    masked: Option<NpyAppender>,
    masked_rows: File,
    /// Volume index → parameters (None: never came), in index order; the
    /// source for rewriting motion.par when a late volume fills a gap.
    motion: BTreeMap<u32, Option<MotionParams>>,
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

impl SessionStore {
    /// Create the session folder (or reopen it) and record the configuration.
    pub fn create(dir: &Path, config_text: &str) -> std::io::Result<SessionStore> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(dir.join("quarantine"))?;
        let mut cfg = File::create(dir.join("session.toml"))?;
        writeln!(
            cfg,
            "# boldstream {} session started {:.3} (unix seconds)",
            env!("CARGO_PKG_VERSION"),
            unix_seconds(SystemTime::now())
        )?;
        cfg.write_all(config_text.as_bytes())?;
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
        })
    }

    /// The session folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn run(&mut self, run: u32) -> std::io::Result<&mut RunFiles> {
        if !self.runs.contains_key(&run) {
            let dir = self.dir.join(format!("run-{run:02}"));
            std::fs::create_dir_all(&dir)?;
            let qc_path = dir.join("qc.tsv");
            let new = !qc_path.exists();
            let mut qc = append(&qc_path)?;
            if new {
                writeln!(qc, "{QC_HEADER}")?;
            }
            let par = append(&dir.join("motion.par"))?;
            let mut masked_rows = File::create(dir.join("masked_rows.tsv"))?;
            writeln!(masked_rows, "row\tvolume\tlate")?;
            self.runs.insert(
                run,
                RunFiles {
                    dir,
                    feedback: None,
                    qc,
                    par,
                    masked: None,
                    masked_rows,
                    motion: BTreeMap::new(),
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
    fn cross_session(&self, c: &crate::realign::CrossSession) -> std::io::Result<()> {
        let mut text = String::from(
            "# calibration reference registered to this session's reference\n# target\t",
        );
        text.push_str(&c.target);
        text.push_str("\n# seconds\t");
        text.push_str(&format!("{:.4}", c.seconds));
        text.push_str("\n# params (MCFLIRT convention: rx ry rz rad, tx ty tz mm)\t");
        text.push_str(&c.params.par_line());
        text.push_str("\n# target_to_reference world matrix, row-major\n");
        for row in &c.target_to_reference {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.9}")).collect();
            text.push_str(&cells.join("\t"));
            text.push('\n');
        }
        crate::sinks::atomic_write(&self.dir.join("cross_session.tsv"), text.as_bytes())
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
                if let Some(c) = cross_session {
                    self.cross_session(c)?;
                }
                let opts = WriteOptions {
                    gzip: true,
                    ..Default::default()
                };
                nifti::write_volume(&self.dir.join("reference.nii.gz"), reference, &opts)?;
                nifti::write_volume(&self.dir.join("mask.nii.gz"), &mask.to_volume(), &opts)?;
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
                    for v in &f.values {
                        writeln!(
                            file,
                            "{}\t{}\t{:.6}\t{:.6}",
                            f.key.index,
                            clean(&v.name),
                            v.value,
                            v.smoothed
                        )?;
                    }
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

    fn decoded(&mut self, t: &crate::messages::TrialDecoded) -> std::io::Result<()> {
        let d = self.decode_files()?;
        if d.query.is_none() {
            d.query = Some(NpyAppender::create(
                &d.dir.join("query.npy"),
                t.query.len(),
            )?);
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

    fn reconstructed(&mut self, r: &crate::messages::TrialReconstructed) -> std::io::Result<()> {
        let d = self.decode_files()?;
        let name = format!("run-{:02}_trial-{:03}.png", r.run, r.trial);
        let png =
            match crate::sinks::image::write_png(&d.dir.join("recon").join(&name), &r.image, r.chw)
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
            IngestEvent::RunStarted { run, .. } => {
                self.run(*run)?;
                self.log("run_started", None, Path::new(""), &format!("run {run}"))
            }
            IngestEvent::RunEnded { run } => {
                let rf = self.run(*run)?;
                rf.qc.sync_data()?;
                rf.par.sync_data()?;
                self.log("run_ended", None, Path::new(""), &format!("run {run}"))
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
        if self.betas.is_none() {
            let dir = self.dir.join("betas");
            std::fs::create_dir_all(&dir)?;
            let v = b.raw.len();
            self.betas = Some(BetaFiles {
                raw: NpyAppender::create(&dir.join("raw.npy"), v)?,
                z: NpyAppender::create(&dir.join("z.npy"), v)?,
                decode: NpyAppender::create(&dir.join("decode.npy"), v)?,
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
        let nan = "n/a\t".repeat(14);
        writeln!(
            rf.qc,
            "{}\t{status}\t{}\tn/a\t{nan}n/a\tn/a\tn/a\t{}",
            key.index,
            clean(&path.display().to_string()),
            clean(detail)
        )?;
        if rf.motion.insert(key.index, None).is_none() {
            writeln!(rf.par, "{}", ["nan"; 6].join("  "))?;
        }
        Ok(())
    }

    fn realigned(&mut self, r: &RealignedVolume) -> std::io::Result<()> {
        let now = Instant::now();
        let t = &r.ingest;
        let realign_start = r
            .realigned_at
            .checked_sub(std::time::Duration::from_secs_f64(r.realign_seconds))
            .unwrap_or(r.realigned_at);
        let mask_voxels = self.mask_voxels;
        let rf = self.run(r.key.run)?;
        if rf.masked.is_none() && mask_voxels > 0 {
            // Created on the first volume: the mask size is known only once
            // the reference is set, which may be after the run started.
            rf.masked = Some(NpyAppender::create(
                &rf.dir.join("masked.npy"),
                mask_voxels,
            )?);
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
            t.decode_seconds * 1e3,
            ms(t.released, t.decoded),
            ms(realign_start, t.released),
            r.realign_seconds * 1e3,
            ms(now, t.first_seen),
            t.attempts,
            r.iterations
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            r.gain,
        )?;
        let filled_gap = rf.motion.insert(r.key.index, Some(r.params)).is_some();
        if filled_gap {
            rewrite_par(&rf.dir, &rf.motion)?;
            rf.par = append(&rf.dir.join("motion.par"))?;
        } else {
            writeln!(rf.par, "{}", r.params.par_line())?;
        }
        if let Some(m) = rf.masked.as_mut() {
            let row = m.rows();
            m.append(&r.masked)?;
            writeln!(
                rf.masked_rows,
                "{row}\t{}\t{}",
                r.key.index,
                u8::from(r.late)
            )?;
        }
        Ok(())
    }
}

/// Rewrite motion.par from the in-memory table, atomically (temp + rename).
fn rewrite_par(dir: &Path, motion: &BTreeMap<u32, Option<MotionParams>>) -> std::io::Result<()> {
    let mut text = String::new();
    for p in motion.values() {
        match p {
            Some(p) => text.push_str(&p.par_line()),
            None => text.push_str(&["nan"; 6].join("  ")),
        }
        text.push('\n');
    }
    super::atomic_write(&dir.join("motion.par"), text.as_bytes())
}
