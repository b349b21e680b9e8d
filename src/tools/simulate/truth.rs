//! The truth folder: what was simulated and what was injected.
//!
//! In: a volume source, the writer's schedule. Out, in the truth folder:
//! - `motion_truth.par`: one MCFLIRT-convention row per session volume (all
//!   runs, in order): `rx ry rz tx ty tz`, radians and mm, two spaces apart,
//!   printed in shortest round-trip form so they parse back exactly;
//! - `truth.tsv`: `session_index run volume time_s file fault rx ry rz tx ty
//!   tz cx cy cz bold drift` — `file` is the volume's primary file name
//!   (`n/a` when dropped), `fault` its fault label (`ok`, `drop`, `late:3`,
//!   …), `c*` the centre of rotation (FSL scaled mm), `bold` the task
//!   response (1 = one lone event's peak) and `drift` the multiplicative
//!   scanner drift; motion columns are `n/a` for replayed data;
//! - `faults.tsv`: `session_index run volume fault file detail`, one row per
//!   injected fault (a partial write is its own row);
//! - `run-01_events.tsv`, …: BIDS events of each run;
//! - `spec.toml`, `task_weight.nii.gz`, `reference_clean.nii.gz` for
//!   synthetic sessions.

use std::fmt::Write as _;
use std::path::Path;

use super::SimError;
use super::writer::{Schedule, VolumeSource};
use crate::formats::events_tsv::write_events;
use crate::formats::nifti::WriteOptions;
use crate::types::transform::MotionParams;

fn write_file(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|error| SimError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// One `.par` row in shortest round-trip notation.
pub fn par_row(p: &MotionParams) -> String {
    crate::formats::par::exact_line(p)
}

/// Read a `.par` file (six whitespace-separated numbers per line).
pub fn read_motion_par(path: &Path) -> Result<Vec<MotionParams>, SimError> {
    let rows = crate::formats::par::read(path).map_err(|e| match e {
        crate::formats::par::ParError::Io { path, source } => SimError::Io {
            path,
            error: source,
        },
        crate::formats::par::ParError::Parse {
            path,
            line,
            message,
        } => SimError::Parse {
            path,
            line,
            message,
        },
    })?;
    Ok(rows.into_iter().map(MotionParams).collect())
}

pub(crate) fn write_truth(
    dir: &Path,
    src: &dyn VolumeSource,
    schedule: &Schedule,
    nifti: &WriteOptions,
) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|error| SimError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let centre = src.centre();
    let mut tsv = String::from(
        "session_index\trun\tvolume\ttime_s\tfile\tfault\trx\try\trz\ttx\tty\ttz\tcx\tcy\tcz\tbold\tdrift\n",
    );
    let mut par = String::new();
    let mut runs = Vec::new();
    for i in 0..src.len() {
        let key = src.key(i);
        if runs.last() != Some(&key.run) {
            runs.push(key.run);
        }
        let (file, label) = &schedule.files[i];
        let _ = write!(tsv, "{i}\t{}\t{}\t", key.run, key.index);
        match (src.frame_truth(i), centre) {
            (Some(f), Some(c)) => {
                let _ = writeln!(
                    tsv,
                    "{}\t{file}\t{label}\t{}\t{:e}\t{:e}\t{:e}\t{:e}\t{}",
                    f.time_s,
                    f.params.0.map(|v| format!("{v:e}")).join("\t"),
                    c.x,
                    c.y,
                    c.z,
                    f.bold,
                    f.drift
                );
                par.push_str(&par_row(&f.params));
                par.push('\n');
            }
            _ => {
                let t = i as f64 * src.tr();
                let _ = writeln!(tsv, "{t}\t{file}\t{label}{}", "\tn/a".repeat(11));
            }
        }
    }
    write_file(&dir.join("truth.tsv"), &tsv)?;
    if !par.is_empty() {
        write_file(&dir.join("motion_truth.par"), &par)?;
    }

    let mut faults = String::from("session_index\trun\tvolume\tfault\tfile\tdetail\n");
    for f in &schedule.faults {
        let _ = writeln!(
            faults,
            "{}\t{}\t{}\t{}\t{}\t{}",
            f.index, f.key.run, f.key.index, f.fault, f.file, f.detail
        );
    }
    write_file(&dir.join("faults.tsv"), &faults)?;

    for run in runs {
        if let Some(ev) = src.events(run) {
            write_events(&dir.join(format!("run-{run:02}_events.tsv")), ev)?;
        }
    }
    if let Some(spec) = src.spec() {
        let text = toml::to_string(spec)
            .map_err(|e| SimError::Spec(format!("cannot serialise the spec: {e}")))?;
        write_file(&dir.join("spec.toml"), &text)?;
    }
    src.extra_truth(dir, nifti)
}
