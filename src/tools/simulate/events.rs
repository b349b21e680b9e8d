//! Task events for simulated runs: a default design like a MindEye run,
//! and real-time MindEye's own design.
//!
//! In: a run length or a list of image ids, and a random generator. Out:
//! the run's events (onsets in seconds from the run start) and, for the
//! MindEye design, the volumes a run needs.
//!
//! The BIDS `events.tsv` type, reader and writer live in [`crate::events`]
//! (the GLM reads the same files); this module adds the simulator's designs.

use rand::RngExt;
use serde::{Deserialize, Serialize};

pub use crate::formats::events_tsv::{format_events, parse_events, read_events, write_events};
pub use crate::types::events::Event;

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

/// Real-time MindEye's trial structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MindEyeDesign {
    /// Repetition time in seconds.
    pub tr: f64,
    /// Image on screen, seconds.
    pub image_s: f64,
    /// Blank screen after each image, seconds.
    pub blank_s: f64,
    /// Images shown in a run.
    pub images_per_run: usize,
    /// Blank trials (no image) mixed into a run.
    pub blank_trials_per_run: usize,
    /// Seconds before the first trial.
    pub lead_in_s: f64,
    /// Seconds after the last trial, for its response to be sampled.
    pub tail_s: f64,
}

impl Default for MindEyeDesign {
    fn default() -> Self {
        MindEyeDesign {
            tr: 1.5,
            image_s: 3.0,
            blank_s: 1.0,
            images_per_run: 63,
            blank_trials_per_run: 5,
            lead_in_s: 6.0,
            tail_s: 16.0,
        }
    }
}

impl MindEyeDesign {
    /// Seconds from one trial's onset to the next.
    pub fn trial_s(&self) -> f64 {
        self.image_s + self.blank_s
    }
}

/// One MindEye run: `images` in the given order as "stimulus" trials
/// (`image_s` long, `stim_id` set), with `blank_trials_per_run` "blank"
/// trials (no image, also `image_s` long) at random positions, one trial
/// every `image_s + blank_s` seconds after the lead-in.
pub fn mindeye_run<R: rand::Rng>(
    design: &MindEyeDesign,
    images: &[String],
    rng: &mut R,
) -> Vec<Event> {
    let n = images.len() + design.blank_trials_per_run;
    // Pick the blank slots by a partial Fisher–Yates shuffle of 0..n.
    let mut slots: Vec<usize> = (0..n).collect();
    for k in 0..design.blank_trials_per_run {
        let j = rng.random_range(k..n);
        slots.swap(k, j);
    }
    let mut blank = vec![false; n];
    for &s in &slots[..design.blank_trials_per_run] {
        blank[s] = true;
    }
    let mut next_image = images.iter();
    blank
        .iter()
        .enumerate()
        .map(|(k, &is_blank)| {
            let onset = design.lead_in_s + k as f64 * design.trial_s();
            let (trial_type, stim_id) = if is_blank {
                ("blank", None)
            } else {
                ("stimulus", next_image.next().cloned())
            };
            Event {
                onset,
                duration: design.image_s,
                trial_type: trial_type.into(),
                stim_id,
                modulation: 1.0,
            }
        })
        .collect()
}

/// Volumes a run of `n_trials` trials (blanks included) needs: lead-in,
/// the trials and the tail, at the design's TR.
pub fn mindeye_volumes(design: &MindEyeDesign, n_trials: usize) -> usize {
    let seconds = design.lead_in_s + n_trials as f64 * design.trial_s() + design.tail_s;
    // A hair below an exact multiple of the TR is that multiple, not one more.
    (seconds / design.tr - 1e-9).ceil().max(1.0) as usize
}

/// A MindEye session over `bank` image ids: run 1 is a warm-up run of
/// `images_per_run` images drawn from the bank; in every later run
/// `repeats` fixed images (the same in each run, for averaging) are shown
/// along with fresh images taken in turn from a shuffled bank (starting
/// over when it runs out), all in a random order per run. Empty when the
/// bank is.
pub fn mindeye_session<R: rand::Rng>(
    design: &MindEyeDesign,
    bank: &[String],
    runs: usize,
    repeats: usize,
    rng: &mut R,
) -> Vec<Vec<Event>> {
    if bank.is_empty() {
        return vec![Vec::new(); runs];
    }
    let shuffle = |v: &mut Vec<String>, rng: &mut R| {
        for i in (1..v.len()).rev() {
            let j = rng.random_range(0..=i);
            v.swap(i, j);
        }
    };
    let mut order = bank.to_vec();
    shuffle(&mut order, rng);
    let repeats = repeats.min(design.images_per_run).min(order.len());
    let repeated: Vec<String> = order[..repeats].to_vec();
    let fresh = &order[repeats..];
    let mut next = 0usize;
    let mut take = |count: usize| -> Vec<String> {
        let pool = if fresh.is_empty() { &order[..] } else { fresh };
        (0..count)
            .map(|_| {
                let id = pool[next % pool.len()].clone();
                next += 1;
                id
            })
            .collect()
    };
    (0..runs)
        .map(|r| {
            let mut images = if r == 0 {
                take(design.images_per_run)
            } else {
                let mut v = repeated.clone();
                v.extend(take(design.images_per_run - repeats));
                v
            };
            shuffle(&mut images, rng);
            mindeye_run(design, &images, rng)
        })
        .collect()
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
    fn mindeye_run_spacing_and_counts() {
        let design = MindEyeDesign::default();
        let ids: Vec<String> = (0..63).map(|i| format!("stim-{i:04}")).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let ev = mindeye_run(&design, &ids, &mut rng);
        assert_eq!(ev.len(), 68);
        assert_eq!(ev.iter().filter(|e| e.trial_type == "blank").count(), 5);
        assert!(
            ev.iter()
                .filter(|e| e.trial_type == "blank")
                .all(|e| e.stim_id.is_none())
        );
        // Images keep their given order.
        let shown: Vec<String> = ev.iter().filter_map(|e| e.stim_id.clone()).collect();
        assert_eq!(shown, ids);
        assert!((ev[0].onset - design.lead_in_s).abs() < 1e-9);
        for w in ev.windows(2) {
            assert!((w[1].onset - w[0].onset - 4.0).abs() < 1e-9);
        }
        assert!(ev.iter().all(|e| e.duration == 3.0));
        // Blanks move with the seed.
        let blanks = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            mindeye_run(&design, &ids, &mut rng)
                .iter()
                .enumerate()
                .filter(|(_, e)| e.stim_id.is_none())
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(blanks(5), blanks(5));
        assert_ne!(blanks(5), blanks(6));
    }

    #[test]
    fn mindeye_volumes_cover_the_run() {
        let design = MindEyeDesign::default();
        for n in [1, 10, 68] {
            let v = mindeye_volumes(&design, n);
            let end = design.lead_in_s + n as f64 * design.trial_s() + design.tail_s;
            assert!(v as f64 * design.tr >= end - 1e-9, "{n}: {v}");
            assert!(((v - 1) as f64) * design.tr < end, "{n}: {v}");
        }
        // The default run (63 images + 5 blanks) is an exact multiple of
        // the TR, which needs no extra volume.
        let secs = design.lead_in_s + 68.0 * design.trial_s() + design.tail_s;
        assert_eq!(secs % design.tr, 0.0);
        assert_eq!(mindeye_volumes(&design, 68), (secs / design.tr) as usize);
    }

    #[test]
    fn mindeye_session_warms_up_then_repeats() {
        let design = MindEyeDesign::default();
        let bank: Vec<String> = (0..150).map(|i| format!("stim-{i:04}")).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let runs = mindeye_session(&design, &bank, 4, 10, &mut rng);
        assert_eq!(runs.len(), 4);
        let ids = |r: &Vec<Event>| -> std::collections::BTreeSet<String> {
            r.iter().filter_map(|e| e.stim_id.clone()).collect()
        };
        for r in &runs {
            assert_eq!(r.iter().filter(|e| e.stim_id.is_some()).count(), 63);
            assert_eq!(r.len(), 68);
        }
        // The same ten images in every run after the warm-up.
        let common: std::collections::BTreeSet<String> = ids(&runs[1])
            .intersection(&ids(&runs[2]))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .intersection(&ids(&runs[3]))
            .cloned()
            .collect();
        assert!(common.len() >= 10, "{}", common.len());
    }
}
