//! Task events: BIDS `events.tsv` files.
//!
//! In: a tab-separated file with a header row naming at least `onset` and
//! `duration` (seconds from the run's first volume); `trial_type`, an image
//! identifier (`stim_id`, `image_id`, `stim_file` or `image`) and
//! `modulation` are read when present, other columns are ignored. Out:
//! [`Event`]s, or an error naming the file and the 1-based line that is wrong.
//!
//! Written files have exactly the columns `onset duration trial_type
//! stim_id`, with `n/a` for a missing stimulus id.

use std::path::Path;

use std::path::PathBuf;

use crate::types::events::Event;

/// Why an events table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The file could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A line is malformed.
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

/// Columns accepted as the image identifier, in order of preference.
pub const IMAGE_COLUMNS: [&str; 4] = ["stim_id", "image_id", "stim_file", "image"];

const NA: &str = "n/a";

/// Read a BIDS events file.
pub fn read_events(path: &Path) -> Result<Vec<Event>, EventsError> {
    let text = std::fs::read_to_string(path).map_err(|error| EventsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_events(&text, path)
}

/// Parse the text of an events file; `path` is only used in error messages.
pub fn parse_events(text: &str, path: &Path) -> Result<Vec<Event>, EventsError> {
    let err = |line: usize, message: String| EventsError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (hline, header) = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| {
            err(
                1,
                "empty file: expected a header row with onset and duration".into(),
            )
        })?;
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    let find = |name: &str| cols.iter().position(|c| *c == name);
    let onset_col = find("onset").ok_or_else(|| {
        err(
            hline,
            format!(
                "header has no 'onset' column (columns: {})",
                cols.join(", ")
            ),
        )
    })?;
    let dur_col = find("duration").ok_or_else(|| {
        err(
            hline,
            format!(
                "header has no 'duration' column (columns: {})",
                cols.join(", ")
            ),
        )
    })?;
    let type_col = find("trial_type");
    let stim_col = IMAGE_COLUMNS.iter().find_map(|c| find(c));
    let mod_col = find("modulation");

    let mut events = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        if fields.len() != cols.len() {
            return Err(err(
                n,
                format!(
                    "expected {} tab-separated fields as in the header, found {}",
                    cols.len(),
                    fields.len()
                ),
            ));
        }
        let onset = fields[onset_col];
        let onset: f64 = onset
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| err(n, format!("onset '{onset}' is not a finite number")))?;
        let dur = fields[dur_col];
        // BIDS allows n/a durations; an impulse is the closest meaning.
        let duration: f64 = if dur == NA {
            0.0
        } else {
            dur.parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| err(n, format!("duration '{dur}' is not a non-negative number")))?
        };
        let trial_type = type_col.map_or("stimulus", |c| fields[c]).to_string();
        if trial_type.is_empty() {
            return Err(err(n, "trial_type is empty".into()));
        }
        let stim_id = stim_col
            .map(|c| fields[c])
            .filter(|s| !s.is_empty() && *s != NA)
            .map(str::to_string);
        let modulation = match mod_col.map(|c| fields[c]) {
            None | Some(NA) => 1.0,
            Some(m) => m
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| err(n, format!("modulation '{m}' is not a finite number")))?,
        };
        events.push(Event {
            onset,
            duration,
            trial_type,
            stim_id,
            modulation,
        });
    }
    Ok(events)
}

/// The text of an events file for `events`.
pub fn format_events(events: &[Event]) -> String {
    let mut s = String::from("onset\tduration\ttrial_type\tstim_id\n");
    for e in events {
        s.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            e.onset,
            e.duration,
            e.trial_type,
            e.stim_id.as_deref().unwrap_or(NA)
        ));
    }
    s
}

/// Write `events` as a BIDS events file.
pub fn write_events(path: &Path, events: &[Event]) -> Result<(), EventsError> {
    std::fs::write(path, format_events(events)).map_err(|error| EventsError::Io {
        path: path.to_path_buf(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn na_and_extra_columns() {
        let text = "onset\tduration\tresponse_time\tstim_id\n1.5\tn/a\t0.3\tn/a\n";
        let ev = parse_events(text, Path::new("x.tsv")).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].duration, 0.0);
        assert_eq!(ev[0].stim_id, None);
        assert_eq!(ev[0].trial_type, "stimulus");
        assert_eq!(ev[0].modulation, 1.0);
    }

    #[test]
    fn image_column_alternatives_and_modulation() {
        let text = "onset\tduration\ttrial_type\tstim_file\tmodulation\n2\t3\timage\tshared0042.png\t0.5\n";
        let ev = parse_events(text, Path::new("x.tsv")).unwrap();
        assert_eq!(ev[0].stim_id.as_deref(), Some("shared0042.png"));
        assert_eq!(ev[0].modulation, 0.5);
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        for (text, line, what) in [
            ("onset\tduration\n1\t2\nx\t2\n", 3, "onset 'x'"),
            ("onset\tduration\n1\t-2\n", 2, "duration '-2'"),
            ("onset\tduration\n1\n", 2, "expected 2"),
            ("duration\n1\n", 1, "no 'onset'"),
            ("onset\tduration\tmodulation\n1\t2\tinf\n", 2, "modulation"),
        ] {
            let e = parse_events(text, Path::new("run-01_events.tsv"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("run-01_events.tsv:{line}:")), "{e}");
            assert!(e.contains(what), "{e}");
        }
    }
}
