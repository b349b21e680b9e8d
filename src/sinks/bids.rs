//! BIDS derivatives: fMRIPrep-style confounds for each run.
//!
//! In: [`PipelineEvent`]s (realigned volumes, run ends). Out, in the session
//! folder, a BIDS derivative dataset that pandas, nilearn's
//! `load_confounds` and fMRIPrep-minded scripts read as they read
//! fMRIPrep's:
//!
//! ```text
//! <session>/derivatives/dataset_description.json
//! <session>/derivatives/sub-<label>/func/sub-<label>_run-<NN>_desc-confounds_timeseries.tsv
//! <session>/derivatives/sub-<label>/func/sub-<label>_run-<NN>_desc-confounds_timeseries.json
//! ```
//!
//! One row per realigned volume, in the order they were realigned:
//! `trans_x trans_y trans_z` (mm) and `rot_x rot_y rot_z` (radians), the
//! MCFLIRT parameters as fMRIPrep names them; `framewise_displacement`
//! (Power, mm); `dvars` (RMS of the frame-to-frame change inside the mask,
//! signal units) and `std_dvars` (DVARS over its expected value under
//! temporal independence, Nipype's `compute_dvars`: per-voxel robust SD as
//! IQR/1.349 and lag-1 autocorrelation ρ, expectation mean(σ·√(2(1−ρ)))).
//! The first row's FD and DVARS are `n/a`, as in fMRIPrep. Rows are
//! appended as volumes arrive; `std_dvars` needs the whole run, so it is
//! `n/a` until the run ends, when the file is rewritten with it. After a
//! resume, the interrupted run's `std_dvars` uses the frames seen since.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::formats::atomic_write;
use crate::types::messages::{IngestEvent, PipelineEvent, RealignedVolume};

/// The columns, in order.
pub const COLUMNS: [&str; 9] = [
    "trans_x",
    "trans_y",
    "trans_z",
    "rot_x",
    "rot_y",
    "rot_z",
    "framewise_displacement",
    "dvars",
    "std_dvars",
];

struct Row {
    params: [f64; 6],
    fd: Option<f64>,
    dvars: Option<f64>,
}

#[derive(Default)]
struct RunTable {
    rows: Vec<Row>,
    frames: Vec<Arc<[f32]>>,
}

/// The BIDS-derivatives sink.
pub struct BidsConfounds {
    root: PathBuf,
    label: String,
    runs: BTreeMap<u32, RunTable>,
}

/// A BIDS label from free text: letters and digits only.
pub fn label(text: &str) -> String {
    let l: String = text.chars().filter(char::is_ascii_alphanumeric).collect();
    if l.is_empty() { "01".to_string() } else { l }
}

impl BidsConfounds {
    /// The derivative dataset in `<session_dir>/derivatives`, for subject
    /// `label` (letters and digits).
    pub fn create(session_dir: &Path, label: &str) -> std::io::Result<BidsConfounds> {
        let root = session_dir.join("derivatives");
        std::fs::create_dir_all(&root)?;
        let description = serde_json::json!({
            "Name": "boldstream real-time confounds",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{
                "Name": "boldstream",
                "Version": env!("CARGO_PKG_VERSION"),
                "Description": "real-time rigid realignment (MCFLIRT conventions), FD (Power) and DVARS"
            }]
        });
        atomic_write(
            &root.join("dataset_description.json"),
            serde_json::to_string_pretty(&description)
                .map_err(std::io::Error::other)?
                .as_bytes(),
        )?;
        Ok(BidsConfounds {
            root,
            label: self::label(label),
            runs: BTreeMap::new(),
        })
    }

    /// The derivatives of the session in `session_dir`, the subject label
    /// taken from the folder's name.
    pub fn for_session(session_dir: &Path) -> std::io::Result<BidsConfounds> {
        let name = session_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        BidsConfounds::create(session_dir, &name)
    }

    /// The confounds file of `run` (`.tsv`; the sidecar is `.json`).
    pub fn tsv_path(&self, run: u32) -> PathBuf {
        let sub = format!("sub-{}", self.label);
        self.root
            .join(&sub)
            .join("func")
            .join(format!("{sub}_run-{run:02}_desc-confounds_timeseries.tsv"))
    }

    fn realigned(&mut self, v: &RealignedVolume) -> std::io::Result<()> {
        let path = self.tsv_path(v.key.run);
        let table = self.runs.entry(v.key.run).or_default();
        let row = Row {
            params: v.params.0,
            fd: v.fd,
            dvars: v.dvars,
        };
        let first = table.rows.is_empty();
        let line = row_line(&row, None);
        table.rows.push(row);
        table.frames.push(v.masked.clone());
        if first {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            atomic_write(&path.with_extension("json"), sidecar().as_bytes())?;
            // A new run (or a resumed one) starts its table afresh.
            atomic_write(&path, format!("{}\n", COLUMNS.join("\t")).as_bytes())?;
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        writeln!(f, "{line}")
    }

    fn run_ended(&mut self, run: u32) -> std::io::Result<()> {
        let Some(table) = self.runs.remove(&run) else {
            return Ok(());
        };
        let std = std_dvars(&table.frames);
        let mut text = format!("{}\n", COLUMNS.join("\t"));
        for (i, row) in table.rows.iter().enumerate() {
            text.push_str(&row_line(row, std.as_ref().and_then(|s| s[i])));
            text.push('\n');
        }
        atomic_write(&self.tsv_path(run), text.as_bytes())
    }
}

fn row_line(row: &Row, std_dvars: Option<f64>) -> String {
    let [rx, ry, rz, tx, ty, tz] = row.params;
    let na = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.10e}"));
    [tx, ty, tz, rx, ry, rz]
        .iter()
        .map(|v| format!("{v:.10e}"))
        .chain([na(row.fd), na(row.dvars), na(std_dvars)])
        .collect::<Vec<_>>()
        .join("\t")
}

fn sidecar() -> String {
    let d = |desc: &str, units: &str| serde_json::json!({"Description": desc, "Units": units});
    let mut m = serde_json::Map::new();
    for (axis, name) in [("x", "x"), ("y", "y"), ("z", "z")] {
        m.insert(
            format!("trans_{axis}"),
            d(
                &format!("translation along {name} (MCFLIRT convention)"),
                "mm",
            ),
        );
        m.insert(
            format!("rot_{axis}"),
            d(
                &format!("rotation about {name} (MCFLIRT convention)"),
                "rad",
            ),
        );
    }
    m.insert(
        "framewise_displacement".into(),
        d(
            "framewise displacement, Power et al. (2012), 50 mm sphere; n/a for the first volume",
            "mm",
        ),
    );
    m.insert(
        "dvars".into(),
        d(
            "RMS over the mask of the change in realigned intensity from the previous volume; n/a for the first",
            "arbitrary",
        ),
    );
    m.insert(
        "std_dvars".into(),
        d(
            "DVARS divided by its expected value under temporal independence (Nipype compute_dvars: IQR/1.349 robust SD, lag-1 autocorrelation); written when the run ends",
            "arbitrary",
        ),
    );
    let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(m)).unwrap_or_default();
    text.push('\n');
    text
}

/// numpy's `percentile(x, q)` (linear interpolation) of sorted `x`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Standardised DVARS per frame (`None` for the first), as Nipype's
/// `compute_dvars` (which fMRIPrep uses) defines it; `None` overall with
/// fewer than 3 frames or no voxel that varies.
pub fn std_dvars(frames: &[Arc<[f32]>]) -> Option<Vec<Option<f64>>> {
    let t = frames.len();
    let v = frames.first()?.len();
    if t < 3 || frames.iter().any(|f| f.len() != v) {
        return None;
    }
    let mut expected = Vec::with_capacity(v);
    let mut series = vec![0.0f64; t];
    for j in 0..v {
        for (i, f) in frames.iter().enumerate() {
            series[i] = f64::from(f[j]);
        }
        let mut sorted = series.clone();
        sorted.sort_by(f64::total_cmp);
        let sd = (percentile(&sorted, 75.0) - percentile(&sorted, 25.0)) / 1.349;
        let mean = series.iter().sum::<f64>() / t as f64;
        let (mut r0, mut r1) = (0.0, 0.0);
        for i in 0..t {
            let d = series[i] - mean;
            r0 += d * d;
            if i + 1 < t {
                r1 += d * (series[i + 1] - mean);
            }
        }
        // Zero-variance voxels are left out, as Nipype's remove_zerovariance.
        if r0 > 0.0 && sd.is_finite() {
            let rho = r1 / r0;
            expected.push(((1.0 - rho) * 2.0).max(0.0).sqrt() * sd);
        }
    }
    if expected.is_empty() {
        return None;
    }
    let mean_expected = expected.iter().sum::<f64>() / expected.len() as f64;
    if mean_expected <= 0.0 {
        return None;
    }
    let mut out = vec![None];
    for w in frames.windows(2) {
        let ss: f64 = w[1]
            .iter()
            .zip(w[0].iter())
            .map(|(b, a)| {
                let d = f64::from(*b) - f64::from(*a);
                d * d
            })
            .sum();
        out.push(Some((ss / v as f64).sqrt() / mean_expected));
    }
    Some(out)
}

impl crate::stage::Sink for BidsConfounds {
    type Request = std::convert::Infallible;
    const NAME: &'static str = "bids";
    /// Derivatives must be complete: it may make the pipeline wait, never lose.
    const DELIVERY: crate::stage::Delivery = crate::stage::Delivery::Reliable;

    fn deliver(&mut self, event: &PipelineEvent) -> std::io::Result<()> {
        match event {
            PipelineEvent::Realigned(v) => self.realigned(v),
            PipelineEvent::Ingest(IngestEvent::RunEnded { run }) => self.run_ended(*run),
            _ => Ok(()),
        }
    }

    fn finish(mut self) -> u64 {
        // Runs still open at shutdown get their std_dvars too.
        let open: Vec<u32> = self.runs.keys().copied().collect();
        let mut errors = 0;
        for run in open {
            if let Err(e) = self.run_ended(run) {
                tracing::error!("bids sink: run {run}: {e}");
                errors += 1;
            }
        }
        errors
    }
}
