//! MCFLIRT's `.par` motion parameters: one row per volume, six numbers
//! separated by two spaces — rotations about x, y, z in radians, then
//! translations along x, y, z in mm. A volume that never came is a row of
//! `nan`s, so row n is always volume n.

use std::path::{Path, PathBuf};

use crate::types::transform::MotionParams;

/// Why a `.par` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A row is not six numbers.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn join(v: impl Iterator<Item = String>) -> String {
    v.collect::<Vec<_>>().join("  ")
}

/// One row, 9 significant digits (as the session store writes them); a
/// row of `nan` for a volume that never came.
pub fn line(p: Option<&MotionParams>) -> String {
    match p {
        Some(p) => join(p.0.iter().map(|x| format!("{x:.8e}"))),
        None => ["nan"; 6].join("  "),
    }
}

/// One row in shortest round-trip notation (ground truth, exact).
pub fn exact_line(p: &MotionParams) -> String {
    join(p.0.iter().map(|x| format!("{x:e}")))
}

/// A whole file from its rows, in order.
pub fn text<'a>(rows: impl IntoIterator<Item = Option<&'a MotionParams>>) -> String {
    let mut text = String::new();
    for p in rows {
        text.push_str(&line(p));
        text.push('\n');
    }
    text
}

/// Parse a `.par` file's text (`path` names it in errors); blank lines are
/// skipped, `nan` rows kept.
pub fn parse(text: &str, path: &Path) -> Result<Vec<[f64; 6]>, ParError> {
    let err = |line: usize, message: String| ParError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Vec<f64> = l
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| err(i + 1, format!("not a number: {e}")))?;
            <[f64; 6]>::try_from(v)
                .map_err(|v| err(i + 1, format!("expected 6 values, found {}", v.len())))
        })
        .collect()
}

/// Read a `.par` file.
pub fn read(path: &Path) -> Result<Vec<[f64; 6]>, ParError> {
    let text = std::fs::read_to_string(path).map_err(|source| ParError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_errors_name_the_line() {
        let p = MotionParams([0.01, -0.02, 0.003, 1.5, -2.25, 0.125]);
        let t = text([Some(&p), None]);
        let rows = parse(&t, Path::new("m.par")).unwrap();
        assert_eq!(rows.len(), 2);
        for (a, b) in rows[0].iter().zip(&p.0) {
            assert!((a - b).abs() <= 1e-8 * b.abs());
        }
        assert!(rows[1].iter().all(|v| v.is_nan()));
        let exact = parse(&exact_line(&p), Path::new("m.par")).unwrap();
        assert_eq!(exact[0], p.0);
        let e = parse("1 2 3\n", Path::new("m.par"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.par:1") && e.contains("found 3"), "{e}");
        let e = parse("\n1 2 x 4 5 6\n", Path::new("m.par"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.par:2"), "{e}");
    }
}
