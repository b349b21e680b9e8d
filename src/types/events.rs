//! One task event of a run, as BIDS `events.tsv` has it (read and written
//! by [`crate::formats::events_tsv`]).

use serde::{Deserialize, Serialize};

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
    /// Amplitude of the event's regressor (BIDS/nilearn `modulation`; 1
    /// when the file has no such column).
    #[serde(default = "one")]
    pub modulation: f64,
}

fn one() -> f64 {
    1.0
}
