//! Task events: BIDS `events.tsv` files and a default design.
//!
//! In: a tab-separated file with a header row naming at least `onset` and
//! `duration` (seconds from the run start); `trial_type` and `stim_id` are
//! read when present, other columns are ignored. Out: [`Event`]s, or an
//! error naming the file and the 1-based line that is wrong.
//!
//! Written files have exactly the columns `onset duration trial_type
//! stim_id`, with `n/a` for a missing stimulus id.

use std::path::Path;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::SimError;

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds from the start of the run (the first volume's acquisition).
    pub onset: f64,
    /// Seconds; 0 is an impulse.
    pub duration: f64,
    /// Condition label.
    pub trial_type: String,
    /// Which image was shown (the decoder's target), when known.
    pub stim_id: Option<String>,
}

const NA: &str = "n/a";

/// Read a BIDS events file.
pub fn read_events(path: &Path) -> Result<Vec<Event>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|error| SimError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_events(&text, path)
}

/// Parse the text of an events file; `path` is only used in error messages.
pub fn parse_events(text: &str, path: &Path) -> Result<Vec<Event>, SimError> {
    let err = |line: usize, message: String| SimError::Parse {
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
    let stim_col = find("stim_id");

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
        let stim_id = stim_col
            .map(|c| fields[c])
            .filter(|s| !s.is_empty() && *s != NA)
            .map(str::to_string);
        events.push(Event {
            onset,
            duration,
            trial_type,
            stim_id,
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
pub fn write_events(path: &Path, events: &[Event]) -> Result<(), SimError> {
    std::fs::write(path, format_events(events)).map_err(|error| SimError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// A rapid event-related design like a MindEye run: 3 s images, onsets
/// 6–8 s apart (uniform jitter, rounded to 10 ms), starting after a 6 s
/// lead-in and ending early enough for the last response to be sampled.
/// Stimulus ids are `img-NNNN`, numbered from `*next_id`; about one trial in
/// five repeats an image from `shown` (earlier runs included), as MindEye
/// sessions repeat images to average.
pub fn default_design<R: rand::Rng>(
    run_seconds: f64,
    rng: &mut R,
    next_id: &mut usize,
    shown: &mut Vec<String>,
) -> Vec<Event> {
    const DURATION: f64 = 3.0;
    const TAIL: f64 = 15.0;
    let mut events = Vec::new();
    let mut onset = 6.0;
    while onset + DURATION + TAIL <= run_seconds {
        let id = if !shown.is_empty() && rng.random_bool(0.2) {
            shown[rng.random_range(0..shown.len())].clone()
        } else {
            let id = format!("img-{:04}", *next_id);
            *next_id += 1;
            shown.push(id.clone());
            id
        };
        events.push(Event {
            onset,
            duration: DURATION,
            trial_type: "stimulus".into(),
            stim_id: Some(id),
        });
        let step: f64 = rng.random_range(6.0..8.0);
        onset = ((onset + step) * 100.0).round() / 100.0;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn default_design_spacing() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut next, mut shown) = (1, Vec::new());
        let ev = default_design(300.0, &mut rng, &mut next, &mut shown);
        assert!(ev.len() > 30, "{}", ev.len());
        for w in ev.windows(2) {
            let d = w[1].onset - w[0].onset;
            assert!((5.99..=8.01).contains(&d), "{d}");
        }
        assert!(ev.last().is_some_and(|e| e.onset + 18.0 <= 300.0));
    }

    #[test]
    fn na_and_extra_columns() {
        let text = "onset\tduration\tresponse_time\tstim_id\n1.5\tn/a\t0.3\tn/a\n";
        let ev = parse_events(text, Path::new("x.tsv")).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].duration, 0.0);
        assert_eq!(ev[0].stim_id, None);
        assert_eq!(ev[0].trial_type, "stimulus");
    }
}
