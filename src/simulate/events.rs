//! Task events for simulated runs: a default design like a MindEye run.
//!
//! The BIDS `events.tsv` type, reader and writer live in [`crate::events`]
//! (the GLM reads the same files); this module adds the simulator's design.

use rand::RngExt;

pub use crate::events::{Event, format_events, parse_events, read_events, write_events};

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
            modulation: 1.0,
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
}
