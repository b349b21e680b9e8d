//! Crash-safe resume: continuing a session folder after the daemon died.
//!
//! In: a session folder the store wrote (possibly cut short by SIGKILL or a
//! power cut), the configuration of the new start, and the `[session]
//! resume` policy. Out: a [`Resume`] that holds
//! - the folder repaired to its last committed record (a torn last line of
//!   a table is cut off, matrix rows ahead of the table row that commits
//!   them are dropped and the `.npy` header count rewritten, motion.par is
//!   rewritten from the committed volumes);
//! - what the store already has ([`Recorded`]), so nothing is written twice;
//! - realign's state: the stored reference (with its exact grid) and mask,
//!   and per run the last volume's parameters, transform and masked voxels;
//! - ingest's state: per run its first index, the indices settled and the
//!   files they came from, and whether it ended;
//! - the replay: the stored volumes, gaps and run boundaries in the order
//!   the GLM first saw them, fed through the same [`GlmStage`] code so its
//!   models, ring buffers, z-scoring and repeat averages are what they
//!   were, with the outputs the store has suppressed and those it lacks
//!   (betas never written, or written but never decoded) passed on.
//!
//! A damaged store beyond that (a row that does not parse, a committed row
//! whose data is gone) is an error naming the file and line; nothing here
//! panics on what it reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nalgebra::Matrix4;

use crate::config::Config;
use crate::formats::nifti;
use crate::formats::npy::{self, NpyRows};
use crate::glm::stage::GlmStage;
use crate::ingest::reorder::ResumedRun;
use crate::realign::ResumedRealign;
use crate::session::store::{PARAMS_COLS, Recorded, SESSION_TOML_FIRST};
use crate::types::messages::{
    IngestEvent, IngestTiming, MissingReason, PipelineEvent, RealignedVolume, VolumeKey,
};
use crate::types::transform::MotionParams;
use crate::types::volume::{Grid, Volume};

/// Why a session could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The folder holds a session this start may not continue.
    #[error("{0}")]
    Refused(String),
    /// A stored file is damaged beyond a torn last record.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// 1-based line, when the problem is on one.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

fn damaged(path: &Path, line: Option<usize>, message: impl Into<String>) -> ResumeError {
    ResumeError::Damaged {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Settings that may change between a session's start and its resume:
/// they steer how files are watched and how long things are waited for, or
/// which hardware runs the graphs, not what is computed from the data.
const MAY_CHANGE: &[&str] = &[
    "session",
    "console",
    "serve",
    "ingest.mode",
    "ingest.poll_interval",
    "ingest.scan_interval",
    "ingest.events_grace",
    "ingest.partial_timeout",
    "ingest.retry_interval",
    "ingest.reorder_window",
    "ingest.gap_timeout",
    "ingest.run_idle_timeout",
    "ingest.quarantine_dir",
    "ingest.event_source",
    "decode.onnxruntime",
    "decode.device",
    "decode.gpu",
    "decode.require_gpu",
    "decode.threads",
    "decode.warmup_calls",
    "decode.policy",
    "decode.max_queue",
    "decode.max_wait",
];

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

/// The settings that differ between the stored configuration and the new
/// one, ignoring those in [`MAY_CHANGE`]; `Err` when the stored one does
/// not parse.
pub fn config_differences(stored: &str, new: &str) -> Result<Vec<String>, String> {
    let parse = |t: &str| t.parse::<toml::Table>().map_err(|e| e.to_string());
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &parse(stored)?, &mut a);
    flatten("", &parse(new)?, &mut b);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let shown = |v: Option<&toml::Value>| v.map_or("(not set)".to_string(), |v| v.to_string());
    Ok(keys
        .into_iter()
        .filter(|k| {
            !MAY_CHANGE
                .iter()
                .any(|m| *k == m || k.starts_with(&format!("{m}.")))
        })
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} then, {} now", shown(a.get(k)), shown(b.get(k))))
        .collect())
}

// ---------------------------------------------------------------------------
// Tables: torn last lines and tab-separated rows
// ---------------------------------------------------------------------------

/// The lines of a table the store appends to, after cutting off a torn
/// last line (no newline: the write was interrupted). `None` when the file
/// does not exist.
pub fn repair_lines(path: &Path) -> Result<Option<Vec<String>>, ResumeError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(path, None, e.to_string())),
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        tracing::warn!(
            "{}: cutting off a torn last line ({} bytes) left by the crash",
            path.display(),
            bytes.len() - whole
        );
    }
    if whole == 0 {
        // Not even its header: the store writes it afresh.
        std::fs::remove_file(path).map_err(|e| damaged(path, None, e.to_string()))?;
        return Ok(None);
    }
    if whole < bytes.len() {
        truncate_file(path, whole as u64)?;
    }
    let text = std::str::from_utf8(&bytes[..whole]).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        damaged(path, Some(line), "not UTF-8 text")
    })?;
    Ok(Some(text.lines().map(str::to_owned).collect()))
}

fn truncate_file(path: &Path, len: u64) -> Result<(), ResumeError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len).and_then(|()| f.sync_data()));
    f.map_err(|e| damaged(path, None, format!("cutting it to {len} bytes: {e}")))
}

/// Keep the first `n` lines of `lines` (read from `path`) on disk.
fn keep_lines(path: &Path, lines: &[String], n: usize) -> Result<(), ResumeError> {
    if n >= lines.len() {
        return Ok(());
    }
    tracing::warn!(
        "{}: dropping {} row(s) written ahead of their commit",
        path.display(),
        lines.len() - n
    );
    let len: usize = lines[..n].iter().map(|l| l.len() + 1).sum();
    truncate_file(path, len as u64)
}

/// One data row of a table: its fields and 1-based line number.
struct Row<'a> {
    path: &'a Path,
    line: usize,
    fields: Vec<&'a str>,
}

impl<'a> Row<'a> {
    fn get(&self, i: usize, what: &str) -> Result<&'a str, ResumeError> {
        self.fields.get(i).copied().ok_or_else(|| {
            damaged(
                self.path,
                Some(self.line),
                format!("no {what} column (column {})", i + 1),
            )
        })
    }

    fn num<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, ResumeError> {
        let v = self.get(i, what)?;
        v.parse().map_err(|_| {
            damaged(
                self.path,
                Some(self.line),
                format!("{what} '{v}' is not a number"),
            )
        })
    }
}

/// The data rows of `lines` (header first, checked to start with `head`).
fn rows<'a>(path: &'a Path, lines: &'a [String], head: &str) -> Result<Vec<Row<'a>>, ResumeError> {
    match lines.first() {
        None => return Ok(Vec::new()),
        Some(h) if h.starts_with(head) => {}
        Some(h) => {
            return Err(damaged(
                path,
                Some(1),
                format!("header '{h}' does not start with '{head}'"),
            ));
        }
    }
    Ok(lines
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, l)| Row {
            path,
            line: i + 1,
            fields: l.split('\t').collect(),
        })
        .collect())
}

// ---------------------------------------------------------------------------
// What the store holds
// ---------------------------------------------------------------------------

/// How a volume index was settled, as qc.tsv records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Realigned; its row in masked.npy / params.npy.
    Realigned {
        /// Delivered after its index had been given up on.
        late: bool,
        /// Row of masked.npy.
        row: usize,
    },
    /// Decoded but not realigned.
    Failed(String),
    /// Never came (or came unusable).
    Missing(String),
}

/// One qc.tsv row.
#[derive(Debug, Clone)]
pub struct QcRow {
    /// Volume index.
    pub index: u32,
    /// The file it came from ("" for a gap).
    pub file: String,
    /// How it was settled.
    pub settled: Settled,
}

/// One run of a stored session.
#[derive(Debug)]
pub struct StoredRun {
    /// Index of the run's first volume.
    pub first_index: u32,
    /// qc.tsv rows, in the order they were written.
    pub rows: Vec<QcRow>,
    /// qc rows written before the run ended (`None`: it had not ended).
    pub ended_after: Option<usize>,
    /// Per masked.npy row: six parameters and the 4×4 matrix.
    pub params: Vec<[f64; PARAMS_COLS]>,
    /// Volume index → parameters (None for a gap), as motion.par has them.
    pub motion: BTreeMap<u32, Option<MotionParams>>,
    masked: PathBuf,
    feedback: BTreeSet<u32>,
}

/// The stored reference, mask and where the reference came from.
#[derive(Debug)]
pub struct StoredReference {
    /// The reference volume on its exact grid.
    pub volume: Volume,
    /// The mask image (output grid).
    pub mask: Volume,
    /// Where it came from, for the log.
    pub source: String,
}

/// A session folder, loaded and repaired.
#[derive(Debug)]
pub struct StoredSession {
    /// The folder.
    pub dir: PathBuf,
    /// The configuration the session started with.
    pub config_text: String,
    /// Reference and mask, once set.
    pub reference: Option<StoredReference>,
    /// Runs with at least one settled volume, by number.
    pub runs: BTreeMap<u32, StoredRun>,
    /// Those runs in the order they started.
    pub run_order: Vec<u32>,
    /// (run, trial) → warm-up, for every stored beta.
    pub betas: BTreeMap<(u32, usize), bool>,
    /// (run, trial) recorded as getting no beta.
    pub trials_skipped: BTreeSet<(u32, usize)>,
    /// (run, trial) with a retrieval row.
    pub decoded: BTreeSet<(u32, usize)>,
    /// (run, trial) with a reconstruction row.
    pub reconstructed: BTreeSet<(u32, usize)>,
    /// (run, trial, what) recorded as not decoded / not reconstructed.
    pub decode_skipped: BTreeSet<(u32, usize, String)>,
}

fn parse_grid(path: &Path) -> Result<Grid, ResumeError> {
    let text = std::fs::read_to_string(path).map_err(|e| damaged(path, None, e.to_string()))?;
    let mut dims = None;
    let mut pixdim = None;
    let mut affine = None;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut f = line.split('\t');
        let key = f.next().unwrap_or_default();
        let vals: Vec<&str> = f.collect();
        let bad = |m: &str| damaged(path, Some(i + 1), m.to_string());
        let floats = || -> Result<Vec<f64>, ResumeError> {
            vals.iter()
                .map(|v| v.parse::<f64>().map_err(|_| bad("not a number")))
                .collect()
        };
        match key {
            "dims" => {
                let d: Vec<usize> = vals
                    .iter()
                    .map(|v| v.parse::<usize>().map_err(|_| bad("not a dimension")))
                    .collect::<Result<_, _>>()?;
                dims = Some(<[usize; 3]>::try_from(d).map_err(|_| bad("need 3 dims"))?);
            }
            "pixdim" => {
                pixdim = Some(<[f64; 3]>::try_from(floats()?).map_err(|_| bad("need 3 values"))?)
            }
            "affine" => {
                let a = floats()?;
                if a.len() != 16 {
                    return Err(bad("need 16 values"));
                }
                affine = Some(Matrix4::from_fn(|r, c| a[r * 4 + c]));
            }
            _ => return Err(bad("unknown key")),
        }
    }
    match (dims, pixdim, affine) {
        (Some(dims), Some(pixdim), Some(affine)) => Ok(Grid {
            dims,
            pixdim,
            affine,
        }),
        _ => Err(damaged(path, None, "needs dims, pixdim and affine lines")),
    }
}

impl StoredSession {
    /// Load and repair the session in `dir`; `None` when there is none
    /// (no session.toml).
    pub fn load(dir: &Path) -> Result<Option<StoredSession>, ResumeError> {
        let toml_path = dir.join("session.toml");
        let config_text = match std::fs::read_to_string(&toml_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(damaged(&toml_path, None, e.to_string())),
        };
        let config_text = match config_text.split_once('\n') {
            Some((first, rest)) if first.starts_with(SESSION_TOML_FIRST) => rest.to_string(),
            _ => config_text,
        };

        // ingest_log.tsv: the runs, in the order they started and ended.
        let log_path = dir.join("ingest_log.tsv");
        let log = repair_lines(&log_path)?.unwrap_or_default();
        let mut run_order = Vec::new();
        let mut first_index = BTreeMap::new();
        let mut ended = BTreeMap::new();
        for r in rows(&log_path, &log, "time_unix\tevent")? {
            let event = r.get(1, "event")?;
            if event != "run_started" && event != "run_ended" {
                continue;
            }
            // Sessions from before resume existed name an ended run only
            // in the detail ("run 3").
            let run: u32 = match r.get(2, "run")? {
                "n/a" => r
                    .get(5, "detail")?
                    .strip_prefix("run ")
                    .and_then(|d| d.split(';').next())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| damaged(&log_path, Some(r.line), "no run number"))?,
                _ => r.num(2, "run")?,
            };
            if event == "run_started" {
                if !run_order.contains(&run) {
                    run_order.push(run);
                }
                // Sessions from before resume existed left it n/a.
                if let Ok(i) = r.get(3, "volume")?.parse::<u32>() {
                    first_index.insert(run, i);
                }
            } else {
                let detail = r.get(5, "detail")?;
                let rows = detail
                    .split("; ")
                    .nth(1)
                    .and_then(|s| s.strip_suffix(" qc rows"))
                    .and_then(|n| n.parse::<usize>().ok());
                ended.insert(run, rows);
            }
        }

        let reference = StoredSession::load_reference(dir)?;

        let mut runs = BTreeMap::new();
        let run_dirs = std::fs::read_dir(dir).map_err(|e| damaged(dir, None, e.to_string()))?;
        let mut numbers = Vec::new();
        for entry in run_dirs.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("run-")
                .and_then(|n| n.parse::<u32>().ok())
                && entry.path().is_dir()
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        for run in numbers {
            let rd = dir.join(format!("run-{run:02}"));
            let Some(mut stored) = StoredSession::load_run(&rd, reference.as_ref())? else {
                continue;
            };
            if !run_order.contains(&run) {
                return Err(damaged(
                    &rd.join("qc.tsv"),
                    None,
                    format!("has volumes, but ingest_log.tsv never says run {run} started"),
                ));
            }
            stored.first_index = first_index
                .get(&run)
                .copied()
                .or_else(|| stored.rows.iter().map(|r| r.index).min())
                .unwrap_or(0);
            stored.ended_after = ended
                .get(&run)
                .map(|n| n.unwrap_or(stored.rows.len()).min(stored.rows.len()));
            runs.insert(run, stored);
        }
        // A run whose start was logged but nothing settled starts afresh.
        run_order.retain(|r| runs.contains_key(r));

        let mut s = StoredSession {
            dir: dir.to_path_buf(),
            config_text,
            reference,
            runs,
            run_order,
            betas: BTreeMap::new(),
            trials_skipped: BTreeSet::new(),
            decoded: BTreeSet::new(),
            reconstructed: BTreeSet::new(),
            decode_skipped: BTreeSet::new(),
        };
        s.load_betas()?;
        s.load_decode()?;
        Ok(Some(s))
    }

    fn load_reference(dir: &Path) -> Result<Option<StoredReference>, ResumeError> {
        let (r, m, g) = (
            dir.join("reference.nii.gz"),
            dir.join("mask.nii.gz"),
            dir.join("reference_grid.tsv"),
        );
        // The mask is written last: without it the reference was never
        // fully recorded, and no volume can have been realigned against it.
        if !m.is_file() {
            return Ok(None);
        }
        let read = |p: &Path| nifti::read_volume(p).map_err(|e| damaged(p, None, e.to_string()));
        let mut volume = read(&r)?;
        let mask = read(&m)?;
        if !g.is_file() {
            return Err(damaged(
                &g,
                None,
                "missing (written by boldstream since crash-safe resume): the reference's exact geometry is unknown, so this session cannot be continued exactly; start a new session folder",
            ));
        }
        let grid = parse_grid(&g)?;
        if !volume.set_grid(grid) {
            return Err(damaged(&g, None, "dimensions differ from reference.nii.gz"));
        }
        let source = format!("{} (stored session reference)", r.display());
        Ok(Some(StoredReference {
            volume,
            mask,
            source,
        }))
    }

    /// One run folder: qc.tsv commits; everything ahead of it is cut.
    fn load_run(
        rd: &Path,
        reference: Option<&StoredReference>,
    ) -> Result<Option<StoredRun>, ResumeError> {
        let qc_path = rd.join("qc.tsv");
        // Even without a committed row, what was written ahead is cut.
        let qc = repair_lines(&qc_path)?.unwrap_or_default();
        let mut out = Vec::new();
        let mut realigned = 0usize;
        for r in rows(&qc_path, &qc, "volume\tstatus")? {
            let index: u32 = r.num(0, "volume")?;
            let status = r.get(1, "status")?;
            let file = r.get(2, "file")?.to_string();
            let detail = r.fields.last().copied().unwrap_or_default().to_string();
            let settled = match status {
                "ok" | "late" => {
                    realigned += 1;
                    Settled::Realigned {
                        late: status == "late",
                        row: realigned - 1,
                    }
                }
                "failed" => Settled::Failed(detail),
                "missing" => Settled::Missing(detail),
                other => {
                    return Err(damaged(
                        &qc_path,
                        Some(r.line),
                        format!("unknown status '{other}'"),
                    ));
                }
            };
            out.push(QcRow {
                index,
                file,
                settled,
            });
        }

        // masked_rows.tsv, masked.npy and params.npy: one row per realigned
        // qc row, the rest was written ahead of a commit that never came.
        let mr_path = rd.join("masked_rows.tsv");
        let mr = repair_lines(&mr_path)?.unwrap_or_default();
        let mr_rows = rows(&mr_path, &mr, "row\tvolume")?;
        if mr_rows.len() < realigned {
            return Err(damaged(
                &mr_path,
                None,
                format!(
                    "{} rows, but qc.tsv has {realigned} realigned volumes",
                    mr_rows.len()
                ),
            ));
        }
        let realigned_rows: Vec<&QcRow> = out
            .iter()
            .filter(|q| matches!(q.settled, Settled::Realigned { .. }))
            .collect();
        for (i, (m, q)) in mr_rows.iter().zip(&realigned_rows).enumerate() {
            let (row, volume): (usize, u32) = (m.num(0, "row")?, m.num(1, "volume")?);
            if row != i || volume != q.index {
                return Err(damaged(
                    &mr_path,
                    Some(m.line),
                    format!(
                        "row {row} volume {volume}, but qc.tsv's realigned volume {i} is volume {}",
                        q.index
                    ),
                ));
            }
        }
        keep_lines(&mr_path, &mr, realigned + 1)?;
        let masked = rd.join("masked.npy");
        let params_path = rd.join("params.npy");
        let mut params = Vec::with_capacity(realigned);
        for path in [&masked, &params_path] {
            if !path.exists() {
                if realigned > 0 {
                    return Err(damaged(
                        path,
                        None,
                        format!(
                            "missing, but qc.tsv has {realigned} realigned volumes (a session from before crash-safe resume cannot be continued exactly; start a new session folder)"
                        ),
                    ));
                }
                continue;
            }
            let h = npy::truncate_rows(path, realigned).map_err(|e| damaged(path, None, e))?;
            if path == &masked
                && let Some(r) = reference
            {
                let voxels = r
                    .mask
                    .values()
                    .iter()
                    .filter(|v| v.is_finite() && **v != 0.0)
                    .count();
                if h.cols != voxels {
                    return Err(damaged(
                        path,
                        None,
                        format!("rows of {} voxels, the mask has {voxels}", h.cols),
                    ));
                }
            }
        }
        if realigned > 0 {
            if reference.is_none() {
                return Err(damaged(
                    &qc_path,
                    None,
                    "realigned volumes but no stored reference and mask",
                ));
            }
            let mut p = NpyRows::open(&params_path).map_err(|e| damaged(&params_path, None, e))?;
            if p.header().cols != PARAMS_COLS {
                return Err(damaged(
                    &params_path,
                    None,
                    format!("{} columns, expected {PARAMS_COLS}", p.header().cols),
                ));
            }
            for i in 0..realigned {
                let row = p
                    .row_f64(i)
                    .map_err(|e| damaged(&params_path, None, format!("row {i}: {e}")))?;
                let mut a = [0.0; PARAMS_COLS];
                a.copy_from_slice(&row);
                params.push(a);
            }
        }

        // motion.par: rewritten from the committed volumes, as the store's
        // in-memory table would have it.
        let mut motion: BTreeMap<u32, Option<MotionParams>> = BTreeMap::new();
        for q in &out {
            match q.settled {
                Settled::Realigned { row, .. } => {
                    let p = &params[row];
                    motion.insert(
                        q.index,
                        Some(MotionParams([p[0], p[1], p[2], p[3], p[4], p[5]])),
                    );
                }
                // As the store does: a gap's row replaces what was there.
                _ => {
                    motion.insert(q.index, None);
                }
            }
        }
        let par_path = rd.join("motion.par");
        let text = par_text(&motion);
        if std::fs::read_to_string(&par_path).ok().as_deref() != Some(text.as_str()) {
            crate::formats::atomic_write(&par_path, text.as_bytes())
                .map_err(|e| damaged(&par_path, None, format!("rewriting it: {e}")))?;
        }

        let fb_path = rd.join("feedback.tsv");
        let mut feedback = BTreeSet::new();
        if let Some(fb) = repair_lines(&fb_path)? {
            for r in rows(&fb_path, &fb, "volume\tname")? {
                feedback.insert(r.num::<u32>(0, "volume")?);
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(StoredRun {
            first_index: 0,
            rows: out,
            ended_after: None,
            params,
            motion,
            masked,
            feedback,
        }))
    }

    fn load_betas(&mut self) -> Result<(), ResumeError> {
        let dir = self.dir.join("betas");
        let path = dir.join("index.tsv");
        let lines = repair_lines(&path)?.unwrap_or_default();
        let mut count = 0usize;
        for r in rows(&path, &lines, "row\trun\ttrial")? {
            let key = (r.num::<u32>(1, "run")?, r.num::<usize>(2, "trial")?);
            match r.get(0, "row")? {
                "n/a" => {
                    self.trials_skipped.insert(key);
                }
                _ => {
                    let row: usize = r.num(0, "row")?;
                    if row != count {
                        return Err(damaged(
                            &path,
                            Some(r.line),
                            format!("beta row {row}, expected {count}"),
                        ));
                    }
                    count += 1;
                    self.betas.insert(key, r.get(12, "warmup")? == "1");
                }
            }
        }
        for name in ["raw.npy", "z.npy", "decode.npy"] {
            let p = dir.join(name);
            if p.exists() {
                npy::truncate_rows(&p, count).map_err(|e| damaged(&p, None, e))?;
            } else if count > 0 {
                return Err(damaged(
                    &p,
                    None,
                    format!("missing, but index.tsv has {count} betas"),
                ));
            }
        }
        Ok(())
    }

    fn load_decode(&mut self) -> Result<(), ResumeError> {
        let dir = self.dir.join("decode");
        let path = dir.join("retrieval.tsv");
        let lines = repair_lines(&path)?.unwrap_or_default();
        let mut count = 0usize;
        for r in rows(&path, &lines, "row\trun\ttrial")? {
            let row: usize = r.num(0, "row")?;
            if row != count {
                return Err(damaged(
                    &path,
                    Some(r.line),
                    format!("query row {row}, expected {count}"),
                ));
            }
            count += 1;
            self.decoded.insert((r.num(1, "run")?, r.num(2, "trial")?));
        }
        let q = dir.join("query.npy");
        if q.exists() {
            npy::truncate_rows(&q, count).map_err(|e| damaged(&q, None, e))?;
        } else if count > 0 {
            return Err(damaged(
                &q,
                None,
                format!("missing, but retrieval.tsv has {count} rows"),
            ));
        }
        let path = dir.join("recon.tsv");
        for r in rows(
            &path,
            &repair_lines(&path)?.unwrap_or_default(),
            "run\ttrial",
        )? {
            self.reconstructed
                .insert((r.num(0, "run")?, r.num(1, "trial")?));
        }
        // steps.tsv rows precede their recon.tsv row: those of a
        // reconstruction that never committed are at the end.
        let path = dir.join("steps.tsv");
        if let Some(lines) = repair_lines(&path)? {
            let mut keep = lines.len();
            for r in rows(&path, &lines, "run\ttrial")?.iter().rev() {
                let key = (r.num::<u32>(0, "run")?, r.num::<usize>(1, "trial")?);
                if self.reconstructed.contains(&key) {
                    break;
                }
                keep -= 1;
            }
            keep_lines(&path, &lines, keep)?;
        }
        let path = dir.join("skipped.tsv");
        for r in rows(
            &path,
            &repair_lines(&path)?.unwrap_or_default(),
            "time_unix\trun",
        )? {
            self.decode_skipped.insert((
                r.num(1, "run")?,
                r.num(2, "trial")?,
                r.get(4, "what")?.to_string(),
            ));
        }
        Ok(())
    }

    /// Volumes settled (realigned, failed or declared missing).
    pub fn volumes(&self) -> usize {
        self.runs.values().map(|r| r.rows.len()).sum()
    }
}

fn par_text(motion: &BTreeMap<u32, Option<MotionParams>>) -> String {
    crate::formats::par::text(motion.values().map(Option::as_ref))
}

// ---------------------------------------------------------------------------
// The decision, and what each stage gets
// ---------------------------------------------------------------------------

/// What the decode stage will do with a beta, for deciding which stored
/// betas still need it.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOutputs {
    /// Betas are decoded (a model is loaded).
    pub decodes: bool,
    /// Warm-up runs' betas are decoded too.
    pub warmup: bool,
    /// Decoded betas are reconstructed.
    pub reconstructs: bool,
}

/// A session to continue.
#[derive(Debug)]
pub struct Resume {
    stored: StoredSession,
}

impl Resume {
    /// Apply the policy to `dir`: `None` for a fresh session (no
    /// session.toml there), the loaded and repaired session when it may be
    /// continued, an error saying why not otherwise.
    pub fn prepare(
        dir: &Path,
        config: &Config,
        config_text: &str,
    ) -> Result<Option<Resume>, ResumeError> {
        if !dir.join("session.toml").exists() {
            return Ok(None);
        }
        if config.session.resume == crate::config::ResumePolicy::Never {
            return Err(ResumeError::Refused(format!(
                "session folder {} already holds a session and [session] resume = \"never\": move it away or choose another [session] dir (nothing was changed)",
                dir.display()
            )));
        }
        let toml_path = dir.join("session.toml");
        let stored_text = std::fs::read_to_string(&toml_path)
            .map_err(|e| damaged(&toml_path, None, e.to_string()))?;
        let stored_text = match stored_text.split_once('\n') {
            Some((first, rest)) if first.starts_with(SESSION_TOML_FIRST) => rest,
            _ => stored_text.as_str(),
        };
        let diff = config_differences(stored_text, config_text)
            .map_err(|e| damaged(&toml_path, None, format!("does not parse: {e}")))?;
        if !diff.is_empty() {
            return Err(ResumeError::Refused(format!(
                "session folder {} holds a session started with other settings, so it is not resumed (nothing was changed):\n  {}\nstart with the session's settings to continue it, or choose another [session] dir for a new session",
                dir.display(),
                diff.join("\n  ")
            )));
        }
        let Some(stored) = StoredSession::load(dir)? else {
            return Ok(None);
        };
        Ok(Some(Resume { stored }))
    }

    /// The loaded session.
    pub fn stored(&self) -> &StoredSession {
        &self.stored
    }

    /// One line for the log and ingest_log.tsv.
    pub fn summary(&self) -> String {
        let s = &self.stored;
        let realigned: usize = s
            .runs
            .values()
            .map(|r| {
                r.rows
                    .iter()
                    .filter(|q| matches!(q.settled, Settled::Realigned { .. }))
                    .count()
            })
            .sum();
        format!(
            "{} volumes settled in {} run(s) ({realigned} realigned), {} betas, {} decoded, {} reconstructed already done",
            s.volumes(),
            s.runs.len(),
            s.betas.len(),
            s.decoded.len(),
            s.reconstructed.len()
        )
    }

    /// What the store already holds.
    pub fn recorded(&self) -> Recorded {
        let s = &self.stored;
        let mut r = Recorded {
            reference: s.reference.is_some(),
            mask_voxels: s.reference.as_ref().map_or(0, |r| {
                r.mask
                    .values()
                    .iter()
                    .filter(|v| v.is_finite() && **v != 0.0)
                    .count()
            }),
            trials: s.betas.keys().chain(&s.trials_skipped).copied().collect(),
            decoded: s.decoded.iter().copied().collect(),
            reconstructed: s.reconstructed.iter().copied().collect(),
            decode_skipped: s.decode_skipped.iter().cloned().collect(),
            ..Recorded::default()
        };
        for (&run, sr) in &s.runs {
            r.runs.insert(run, (sr.motion.clone(), sr.rows.len()));
            r.feedback
                .extend(sr.feedback.iter().map(|&index| VolumeKey { run, index }));
        }
        r
    }

    /// Realign's state: the stored reference and mask, and per run the
    /// last in-sequence volume (`None` before the reference was set).
    pub fn realign(&self) -> Result<Option<ResumedRealign>, ResumeError> {
        let Some(reference) = &self.stored.reference else {
            return Ok(None);
        };
        let mut runs = Vec::new();
        for (&run, sr) in &self.stored.runs {
            let last = sr.rows.iter().rev().find_map(|q| match q.settled {
                Settled::Realigned { late: false, row } => Some(row),
                _ => None,
            });
            let Some(row) = last else { continue };
            let p = &sr.params[row];
            let masked = NpyRows::open(&sr.masked)
                .and_then(|mut m| m.row_f32(row).map_err(|e| e.to_string()))
                .map_err(|e| damaged(&sr.masked, None, format!("row {row}: {e}")))?;
            runs.push(crate::realign::LastVolume {
                run,
                params: MotionParams([p[0], p[1], p[2], p[3], p[4], p[5]]),
                ref_to_volume: Matrix4::from_fn(|r, c| p[6 + r * 4 + c]),
                masked: masked.into(),
            });
        }
        Ok(Some(ResumedRealign {
            reference: reference.volume.clone(),
            mask: reference.mask.clone(),
            source: reference.source.clone(),
            runs,
        }))
    }

    /// Ingest's state: per run what is settled and from which file.
    pub fn ingest(&self) -> Vec<ResumedRun> {
        let s = &self.stored;
        let open = s
            .run_order
            .last()
            .copied()
            .filter(|r| s.runs.get(r).is_some_and(|sr| sr.ended_after.is_none()));
        s.run_order
            .iter()
            .filter_map(|run| {
                let sr = s.runs.get(run)?;
                let taken = sr
                    .rows
                    .iter()
                    .filter(|q| !matches!(q.settled, Settled::Missing(_)))
                    .map(|q| (q.index, q.file.clone()))
                    .collect();
                let next = sr
                    .rows
                    .iter()
                    .map(|q| q.index)
                    .max()
                    .map_or(sr.first_index, |m| m.saturating_add(1).max(sr.first_index));
                Some(ResumedRun {
                    run: *run,
                    first_index: sr.first_index,
                    taken,
                    next,
                    ended: open != Some(*run),
                })
            })
            .collect()
    }

    /// Rebuild the GLM stage's state by replaying the stored session
    /// through it. `reference` is realign's announcement of the stored
    /// reference; `reference_first` says it came from the configuration
    /// (announced before anything else) rather than from the first volume
    /// (announced just before that volume). Returns what must still go
    /// downstream: betas the store lacks or has not decoded, and other
    /// outputs the store lacks.
    pub fn replay(
        &self,
        glm: &mut GlmStage,
        reference: Option<PipelineEvent>,
        reference_first: bool,
        decode: DecodeOutputs,
    ) -> Result<Vec<PipelineEvent>, ResumeError> {
        let s = &self.stored;
        let mut pending = Vec::new();
        let mut forward = |out: PipelineEvent| {
            let keep = match &out {
                PipelineEvent::ReferenceReady { .. } => true,
                PipelineEvent::Beta(b) => {
                    let key = (b.run, b.trial);
                    !s.betas.contains_key(&key) || self.needs_decode(key, b.warmup, decode)
                }
                PipelineEvent::TrialSkipped { run, trial, .. } => {
                    !s.trials_skipped.contains(&(*run, *trial))
                        && !s.betas.contains_key(&(*run, *trial))
                }
                PipelineEvent::Feedback(f) => !s
                    .runs
                    .get(&f.key.run)
                    .is_some_and(|r| r.feedback.contains(&f.key.index)),
                _ => false,
            };
            if keep {
                pending.push(out);
            }
        };
        let mut reference = reference;
        if reference_first && let Some(ev) = reference.take() {
            glm.handle(ev, &mut forward);
        }
        for &run in &s.run_order {
            let Some(sr) = s.runs.get(&run) else { continue };
            let mut masked = None;
            glm.handle(
                PipelineEvent::Ingest(IngestEvent::RunStarted {
                    run,
                    first_index: sr.first_index,
                }),
                &mut forward,
            );
            // Rows after the run's end are volumes delivered late to the
            // ended run. They came after it, perhaps after later runs had
            // started; the GLM ignores frames of an ended run (it keeps them
            // in that run's ring only), so replaying them here is the same.
            let end = sr.ended_after.unwrap_or(sr.rows.len());
            for (i, q) in sr.rows.iter().enumerate() {
                if i == end {
                    glm.handle(
                        PipelineEvent::Ingest(IngestEvent::RunEnded { run }),
                        &mut forward,
                    );
                }
                let key = VolumeKey {
                    run,
                    index: q.index,
                };
                let ev = match &q.settled {
                    Settled::Realigned { late, row } => {
                        if let Some(ev) = reference.take() {
                            glm.handle(ev, &mut forward);
                        }
                        if masked.is_none() {
                            masked = Some(
                                NpyRows::open(&sr.masked)
                                    .map_err(|e| damaged(&sr.masked, None, e))?,
                            );
                        }
                        let Some(m) = masked.as_mut() else { continue };
                        let values = m
                            .row_f32(*row)
                            .map_err(|e| damaged(&sr.masked, None, format!("row {row}: {e}")))?;
                        replayed_volume(key, q, *late, &sr.params[*row], values)
                    }
                    Settled::Failed(reason) => PipelineEvent::RealignFailed {
                        key,
                        path: PathBuf::from(&q.file),
                        reason: reason.clone(),
                    },
                    Settled::Missing(_) => PipelineEvent::Ingest(IngestEvent::Missing {
                        key,
                        reason: MissingReason::NotReceived,
                    }),
                };
                glm.handle(ev, &mut forward);
            }
            if end == sr.rows.len() && sr.ended_after.is_some() {
                glm.handle(
                    PipelineEvent::Ingest(IngestEvent::RunEnded { run }),
                    &mut forward,
                );
            }
        }
        // Set, but no volume realigned against it yet: the next one is.
        if let Some(ev) = reference.take() {
            glm.handle(ev, &mut forward);
        }
        Ok(pending)
    }

    /// Whether a stored beta still needs decoding or reconstruction.
    fn needs_decode(&self, key: (u32, usize), warmup: bool, d: DecodeOutputs) -> bool {
        let s = &self.stored;
        if !d.decodes || (warmup && !d.warmup) {
            return false;
        }
        let skipped = |what: &str| s.decode_skipped.contains(&(key.0, key.1, what.to_string()));
        let decoded = s.decoded.contains(&key) || skipped("decode");
        let reconstructed = !d.reconstructs
            || s.reconstructed.contains(&key)
            || skipped("reconstruction")
            || skipped("decode");
        !(decoded && reconstructed)
    }
}

/// A stored volume as realign handed it to the GLM (timings are now: they
/// are not recorded again).
fn replayed_volume(
    key: VolumeKey,
    q: &QcRow,
    late: bool,
    p: &[f64; PARAMS_COLS],
    masked: Vec<f32>,
) -> PipelineEvent {
    let now = std::time::Instant::now();
    PipelineEvent::Realigned(Box::new(RealignedVolume {
        key,
        path: PathBuf::from(&q.file),
        late,
        params: MotionParams([p[0], p[1], p[2], p[3], p[4], p[5]]),
        ref_to_volume: Matrix4::from_fn(|r, c| p[6 + r * 4 + c]),
        fd: None,
        dvars: None,
        dvars_pct: None,
        masked: Arc::from(masked),
        ingest: IngestTiming {
            first_seen_wall: std::time::SystemTime::now(),
            first_seen: now,
            decoded: now,
            released: now,
            attempts: 1,
            decode_seconds: 0.0,
        },
        realigned_at: now,
        realign_seconds: 0.0,
        iterations: Vec::new(),
        gain: 1.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::npy::{Dtype, NpyAppender, decode_2d};
    use crate::session::store::SessionStore;
    use crate::types::events::Event;
    use crate::types::mask::SessionMask;
    use crate::types::messages::TrialBeta;

    const CONFIG: &str = "[ingest]\nwatch_dir = \"x\"\n";

    fn reference_ready() -> PipelineEvent {
        let grid = Grid::centred([4, 4, 4], [2.0; 3]);
        let mut inside = vec![false; 64];
        for i in [5, 21, 42] {
            inside[i] = true;
        }
        let mut reference = Volume::zeros(grid.clone());
        reference.values_mut()[21] = 7.0;
        PipelineEvent::ReferenceReady {
            source: "test".into(),
            mask_voxels: 3,
            reference: Arc::new(reference),
            mask: Arc::new(SessionMask::from_file_order(grid, &inside).unwrap()),
            cross_session: None,
        }
    }

    fn volume(index: u32) -> PipelineEvent {
        let q = QcRow {
            index,
            file: format!("/export/run-01_vol-{index:04}.nii"),
            settled: Settled::Realigned {
                late: false,
                row: 0,
            },
        };
        let mut p = [0.0; PARAMS_COLS];
        // Values text cannot carry exactly: the sidecar must.
        p[0] = 1.0 / 3.0 + f64::from(index);
        p[5] = std::f64::consts::PI;
        p[6] = 1.0;
        let masked = vec![index as f32 + 0.5, 1.0 / 7.0, -2.0];
        replayed_volume(VolumeKey { run: 1, index }, &q, false, &p, masked)
    }

    fn beta(trial: usize) -> PipelineEvent {
        let now = std::time::Instant::now();
        let values: Arc<[f32]> = Arc::from(vec![trial as f32, 2.0, 3.0]);
        PipelineEvent::Beta(Box::new(TrialBeta {
            run: 1,
            trial,
            event: Event {
                onset: 3.0,
                duration: 1.0,
                trial_type: "image".into(),
                stim_id: Some("stim-0001".into()),
                modulation: 1.0,
            },
            trigger: VolumeKey { run: 1, index: 4 },
            frames: 5,
            regressors: 4,
            delayed: false,
            warmup: false,
            raw: values.clone(),
            z: values.clone(),
            decode: values,
            presentations: 1,
            compute_seconds: 0.0,
            trigger_seen: None,
            ready: now,
            ready_wall: std::time::SystemTime::now(),
        }))
    }

    fn missing(index: u32) -> PipelineEvent {
        PipelineEvent::Ingest(IngestEvent::Missing {
            key: VolumeKey { run: 1, index },
            reason: MissingReason::NotReceived,
        })
    }

    /// A store with run 1 (volumes 0–2, 3 missing, 4) and two betas.
    fn session(dir: &Path) {
        let mut store = SessionStore::create(dir, CONFIG).unwrap();
        let mut events = vec![
            reference_ready(),
            PipelineEvent::Ingest(IngestEvent::RunStarted {
                run: 1,
                first_index: 0,
            }),
        ];
        events.extend((0..3).map(volume));
        events.push(missing(3));
        events.push(volume(4));
        events.push(beta(0));
        events.push(beta(1));
        for ev in &events {
            store.handle(ev).unwrap();
        }
    }

    fn append(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn lines(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.ends_with('\n'), "{}: torn last line", path.display());
        text.lines().map(str::to_owned).collect()
    }

    fn npy_rows(path: &Path) -> usize {
        let (_, rows, _) = decode_2d(&std::fs::read(path).unwrap()).unwrap();
        let h = npy::read_appended_header(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(
            std::fs::metadata(path).unwrap().len() as usize,
            128 + rows * h.row_bytes(),
            "{}: length and header disagree",
            path.display()
        );
        rows
    }

    #[test]
    fn a_torn_store_is_cut_back_to_its_last_committed_records() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        session(dir);
        let run = dir.join("run-01");
        let good_par = std::fs::read_to_string(run.join("motion.par")).unwrap();

        // A crash while volume 5 was being written: its matrix rows, its
        // masked_rows and motion.par lines are out, its qc row is torn.
        let mut m = NpyAppender::open(&run.join("masked.npy"), 3, Dtype::F32).unwrap();
        m.append(&[9.0, 9.0, 9.0]).unwrap();
        append(&run.join("masked.npy"), &[1, 2, 3, 4, 5]);
        let mut p = NpyAppender::open(&run.join("params.npy"), PARAMS_COLS, Dtype::F64).unwrap();
        p.append_f64(&[0.5; PARAMS_COLS]).unwrap();
        append(&run.join("masked_rows.tsv"), b"4\t5\t0\n");
        append(&run.join("motion.par"), b"1  2  3  4  5  6\n");
        append(
            &run.join("qc.tsv"),
            b"5\tok\t/export/run-01_vol-0005.nii\t17",
        );
        // …and a beta whose index row never finished.
        let mut raw = NpyAppender::open(&dir.join("betas/raw.npy"), 3, Dtype::F32).unwrap();
        raw.append(&[1.0, 1.0, 1.0]).unwrap();
        append(&dir.join("betas/index.tsv"), b"2\t1\t2\tstim");

        let stored = StoredSession::load(dir).unwrap().unwrap();
        let r1 = &stored.runs[&1];
        assert_eq!(r1.rows.len(), 5, "volumes 0–4, volume 3 a gap");
        assert_eq!(r1.params.len(), 4);
        assert_eq!(r1.params[3][0], 1.0 / 3.0 + 4.0, "full precision");
        assert_eq!(npy_rows(&run.join("masked.npy")), 4);
        assert_eq!(npy_rows(&run.join("params.npy")), 4);
        assert_eq!(lines(&run.join("masked_rows.tsv")).len(), 1 + 4);
        assert_eq!(lines(&run.join("qc.tsv")).len(), 1 + 5);
        assert_eq!(
            std::fs::read_to_string(run.join("motion.par")).unwrap(),
            good_par
        );
        assert_eq!(
            good_par.lines().nth(3),
            Some("nan  nan  nan  nan  nan  nan")
        );
        assert_eq!(lines(&dir.join("betas/index.tsv")).len(), 1 + 2);
        for f in ["raw.npy", "z.npy", "decode.npy"] {
            assert_eq!(npy_rows(&dir.join("betas").join(f)), 2, "{f}");
        }
        assert!(stored.reference.is_some());

        // What each stage resumes from.
        let resume = Resume { stored };
        let ingest = resume.ingest();
        assert_eq!(ingest.len(), 1);
        assert_eq!((ingest[0].next, ingest[0].ended), (5, false));
        assert_eq!(
            ingest[0].taken.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 4]
        );
        let realign = resume.realign().unwrap().unwrap();
        assert_eq!(realign.runs.len(), 1);
        assert_eq!(&*realign.runs[0].masked, &[4.5, 1.0 / 7.0, -2.0]);
        assert_eq!(realign.runs[0].params.0[5], std::f64::consts::PI);
        assert_eq!(
            realign.reference.grid(),
            &Grid::centred([4, 4, 4], [2.0; 3])
        );

        // The store appends after the committed rows and does not record
        // what it has twice.
        let mut store = SessionStore::reopen(dir, resume.recorded()).unwrap();
        for ev in [reference_ready(), volume(5), beta(1), beta(2)] {
            store.handle(&ev).unwrap();
        }
        drop(store);
        assert_eq!(npy_rows(&run.join("masked.npy")), 5);
        assert_eq!(npy_rows(&run.join("params.npy")), 5);
        assert_eq!(lines(&run.join("masked_rows.tsv"))[5], "4\t5\t0");
        assert_eq!(lines(&run.join("motion.par")).len(), 6);
        let index = lines(&dir.join("betas/index.tsv"));
        assert_eq!(index.len(), 1 + 3, "{index:#?}");
        assert!(index[3].starts_with("2\t1\t2\t"), "{}", index[3]);
        assert_eq!(npy_rows(&dir.join("betas/raw.npy")), 3);
        let again = StoredSession::load(dir).unwrap().unwrap();
        assert_eq!(again.runs[&1].rows.len(), 6);
        assert_eq!(again.betas.len(), 3);
    }

    #[test]
    fn a_damaged_store_is_an_error_naming_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        session(dir);
        let qc = dir.join("run-01/qc.tsv");
        let good = std::fs::read_to_string(&qc).unwrap();
        std::fs::write(&qc, good.replacen("\n1\tok", "\nx\tok", 1)).unwrap();
        let e = StoredSession::load(dir).unwrap_err().to_string();
        assert!(e.contains("qc.tsv:3") && e.contains("volume 'x'"), "{e}");

        // A committed volume whose voxels are gone.
        std::fs::write(&qc, &good).unwrap();
        let masked = dir.join("run-01/masked.npy");
        let bytes = std::fs::read(&masked).unwrap();
        std::fs::write(&masked, &bytes[..bytes.len() - 12]).unwrap();
        let e = StoredSession::load(dir).unwrap_err().to_string();
        assert!(e.contains("masked.npy") && e.contains("need 4"), "{e}");

        assert!(StoredSession::load(&dir.join("nothing")).unwrap().is_none());
    }

    #[test]
    fn only_settings_that_change_results_block_a_resume() {
        let a = "[ingest]\nwatch_dir = \"x\"\npoll_interval = 0.1\n[glm]\ntr = 1.5\n[decode]\ndevice = \"cuda\"\n";
        let b = "[ingest]\nwatch_dir = \"x\"\npoll_interval = 0.5\n[glm]\ntr = 1.5\n[decode]\ndevice = \"cpu\"\n[console]\nenabled = false\n";
        assert_eq!(config_differences(a, b).unwrap(), Vec::<String>::new());
        let c = "[ingest]\nwatch_dir = \"y\"\n[glm]\ntr = 2.0\ndelay = 6\n";
        let d = config_differences(a, c).unwrap();
        assert_eq!(d.len(), 3, "{d:#?}");
        assert!(
            d[0].starts_with("glm.delay: (not set) then, 6 now"),
            "{d:#?}"
        );
        assert!(d[2].starts_with("ingest.watch_dir"), "{d:#?}");
        assert!(config_differences("[x", a).is_err());
    }
}
