//! Which trial of the session.

/// A trial: its run and its number within the run (order of
/// registration). Trials are keyed by this everywhere outputs are matched
/// (betas, decodes, reconstructions, result files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct TrialKey {
    /// Run number.
    pub run: u32,
    /// Trial number within the run.
    pub trial: usize,
}

impl TrialKey {
    /// The key of `trial` in `run`.
    pub fn new(run: u32, trial: usize) -> TrialKey {
        TrialKey { run, trial }
    }
}

impl std::fmt::Display for TrialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} trial {}", self.run, self.trial)
    }
}
