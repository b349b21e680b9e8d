//! The GLM stage on hand-made event streams: a run cut short and
//! restarted under a new series, warm-up runs, bad events tables, and
//! per-volume feedback from a region carrying a known signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use boldstream::formats::events_tsv::write_events;
use boldstream::glm::buffer::BufferConfig;
use boldstream::glm::feedback::{FeedbackConfig, RoiConfig, Smoothing};
use boldstream::glm::model::NoiseModel;
use boldstream::glm::spec::GlmConfig;
use boldstream::glm::stage::GlmStage;
use boldstream::types::events::Event;
use boldstream::types::mask::SessionMask;
use boldstream::types::messages::{
    IngestEvent, IngestTiming, MissingReason, PipelineEvent, RealignedVolume, VolumeKey,
};
use boldstream::types::transform::MotionParams;
use boldstream::types::volume::{Grid, Volume};

const DIMS: [usize; 3] = [6, 5, 4];
const V: usize = 120;

fn grid() -> Grid {
    Grid::centred(DIMS, [3.0, 3.0, 3.0])
}

fn reference_event() -> PipelineEvent {
    let g = grid();
    let mask = SessionMask::from_file_order(g.clone(), &[true; V]).unwrap();
    PipelineEvent::ReferenceReady {
        source: "test".into(),
        mask_voxels: V,
        reference: Arc::new(Volume::zeros(g)),
        mask: Arc::new(mask),
        cross_session: None,
    }
}

fn design_events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            onset: 6.0 + 7.0 * i as f64,
            duration: 3.0,
            trial_type: if i % 5 == 4 {
                "blank".into()
            } else {
                "image".into()
            },
            stim_id: Some(format!("img-{}", i % 7)),
            modulation: 1.0,
        })
        .collect()
}

/// A frame: baseline + a per-voxel response to every trial + a slow
/// sinusoid (period 30 s, above the 0.01 Hz drift cut-off) on the first ten voxels (the "region") + deterministic noise.
fn frame(t: usize, events: &[Event], seed: u64) -> Vec<f32> {
    let time = t as f64 * 1.5;
    let bold: f64 = events
        .iter()
        .map(|e| {
            let dt = time - e.onset - 5.0;
            (-dt * dt / 8.0).exp()
        })
        .sum();
    (0..V)
        .map(|v| {
            let mut h =
                (t as u64 * 1_000_003 + v as u64 * 7919 + seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 29;
            let noise = (h % 1000) as f64 / 1000.0 - 0.5;
            let region = if v < 10 {
                20.0 * (std::f64::consts::TAU * time / 30.0).sin()
            } else {
                0.0
            };
            // Scanner drift: 40 units over 180 s on every voxel.
            let drift = 40.0 * time / 180.0;
            (1000.0
                + 10.0 * v as f64
                + (2.0 + v as f64 / 60.0) * bold * 10.0
                + region
                + drift
                + 3.0 * noise) as f32
        })
        .collect()
}

/// Slow head motion, far from the region's 20-volume period.
fn motion(index: u32) -> [f64; 6] {
    let i = index as f64;
    [
        0.001 * (i / 11.0).sin(),
        0.0005 * (i / 17.0).cos(),
        0.0,
        0.01 * i / 50.0,
        0.0,
        0.02 * (i / 29.0).sin(),
    ]
}

fn realigned(run: u32, index: u32, data: Vec<f32>) -> PipelineEvent {
    realigned_with(run, index, data, motion(index))
}

fn realigned_with(run: u32, index: u32, data: Vec<f32>, params: [f64; 6]) -> PipelineEvent {
    let now = Instant::now();
    PipelineEvent::Realigned(Box::new(RealignedVolume {
        key: VolumeKey { run, index },
        path: PathBuf::from("x"),
        late: false,
        params: MotionParams(params),
        ref_to_volume: nalgebra::Matrix4::identity(),
        fd: None,
        dvars: None,
        dvars_pct: None,
        masked: data.into(),
        ingest: IngestTiming {
            first_seen_wall: SystemTime::now(),
            first_seen: now,
            decoded: now,
            released: now,
            attempts: 1,
            decode_seconds: 0.0,
        },
        realigned_at: now,
        realign_seconds: 0.0,
        iterations: vec![],
        gain: 1.0,
    }))
}

fn run_frames(
    stage: &mut GlmStage,
    run: u32,
    frames: std::ops::Range<u32>,
    events: &[Event],
    out: &mut Vec<PipelineEvent>,
) {
    for t in frames {
        stage.handle(
            realigned(run, t, frame(t as usize, events, run as u64)),
            &mut |e| out.push(e),
        );
    }
}

fn write_table(dir: &std::path::Path, events: &[Event]) -> PathBuf {
    let p = dir.join("events.tsv");
    write_events(&p, events).unwrap();
    p
}

#[test]
fn a_run_cut_short_keeps_its_betas_and_the_restart_reuses_the_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let events = design_events(12);
    let cfg = GlmConfig {
        tr: Some(1.5),
        events: vec![write_table(tmp.path(), &events)],
        skip_trial_types: vec!["blank".into()],
        noise_model: NoiseModel::Ols,
        ..GlmConfig::default()
    };
    let mut stage = GlmStage::new(cfg, BufferConfig::default(), Some(60)).unwrap();
    let mut out = Vec::new();
    stage.handle(
        PipelineEvent::Ingest(IngestEvent::RunStarted {
            run: 7,
            first_index: 1,
        }),
        &mut |e| out.push(e),
    );
    stage.handle(reference_event(), &mut |e| out.push(e));
    // The scan is stopped after 30 volumes (45 s) of a 60-volume run.
    run_frames(&mut stage, 7, 1..31, &events, &mut out);
    let before = out
        .iter()
        .filter(|e| matches!(e, PipelineEvent::Beta(_)))
        .count();
    stage.handle(
        PipelineEvent::Ingest(IngestEvent::RunEnded { run: 7 }),
        &mut |e| out.push(e),
    );
    // Trials whose window (onset + 7.5 s) is inside 45 s got betas; the
    // rest are reported, not dropped silently, and nothing is retracted.
    let betas: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Beta(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(betas.len(), before);
    let done: Vec<usize> = betas.iter().map(|b| b.trial).collect();
    assert_eq!(done, vec![0, 1, 2, 3]); // trial 4 is a blank; 5 is due at 48.5 s
    let skipped: Vec<(usize, String)> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::TrialSkipped { trial, reason, .. } => Some((*trial, reason.clone())),
            _ => None,
        })
        .collect();
    let skipped_trials: Vec<usize> = skipped.iter().map(|s| s.0).collect();
    assert_eq!(skipped_trials, vec![5, 6, 7, 8, 10, 11]);
    assert!(
        skipped
            .iter()
            .all(|(_, r)| r.contains("run ended at frame 29")),
        "{skipped:?}"
    );

    // The operator restarts the scan: a new series (run 8). It reuses the
    // same schedule and says so; run 7's betas stay as they were.
    out.clear();
    stage.handle(
        PipelineEvent::Ingest(IngestEvent::RunStarted {
            run: 8,
            first_index: 1,
        }),
        &mut |e| out.push(e),
    );
    let notice = out
        .iter()
        .find_map(|e| match e {
            PipelineEvent::Notice(n) => Some(n.clone()),
            _ => None,
        })
        .expect("a restart notice");
    assert!(
        notice.contains("run 8")
            && notice.contains("restart of run 7")
            && notice.contains("events.tsv"),
        "{notice}"
    );
    run_frames(&mut stage, 8, 1..61, &events, &mut out);
    stage.handle(
        PipelineEvent::Ingest(IngestEvent::RunEnded { run: 8 }),
        &mut |e| out.push(e),
    );
    let run8: Vec<usize> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Beta(b) if b.run == 8 => Some(b.trial),
            _ => None,
        })
        .collect();
    // Every non-blank trial whose window fits in 60 volumes (90 s).
    let want: Vec<usize> = (0..12)
        .filter(|i| i % 5 != 4 && 6.0 + 7.0 * *i as f64 + 7.5 < 88.5)
        .collect();
    assert_eq!(run8, want);
}

#[test]
fn gaps_warm_up_runs_and_z_scoring() {
    let tmp = tempfile::tempdir().unwrap();
    let events = design_events(8);
    let cfg = GlmConfig {
        tr: Some(1.5),
        events: vec![
            write_table(tmp.path(), &events),
            write_table(tmp.path(), &events),
        ],
        warmup_runs: 1,
        ..GlmConfig::default()
    };
    let mut stage = GlmStage::new(cfg, BufferConfig::default(), Some(50)).unwrap();
    let mut out = Vec::new();
    for run in 1..=2u32 {
        stage.handle(
            PipelineEvent::Ingest(IngestEvent::RunStarted {
                run,
                first_index: 0,
            }),
            &mut |e| out.push(e),
        );
        if run == 1 {
            stage.handle(reference_event(), &mut |e| out.push(e));
        }
        for t in 0..50u32 {
            if run == 2 && t == 19 {
                // A volume that never came: its trial's window still closes.
                stage.handle(
                    PipelineEvent::Ingest(IngestEvent::Missing {
                        key: VolumeKey { run, index: t },
                        reason: MissingReason::NotReceived,
                    }),
                    &mut |e| out.push(e),
                );
                continue;
            }
            stage.handle(
                realigned(run, t, frame(t as usize, &events, run as u64)),
                &mut |e| out.push(e),
            );
        }
        stage.handle(
            PipelineEvent::Ingest(IngestEvent::RunEnded { run }),
            &mut |e| out.push(e),
        );
    }
    let betas: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Beta(b) => Some(b),
            _ => None,
        })
        .collect();
    assert!(betas.iter().filter(|b| b.run == 1).all(|b| b.warmup));
    assert!(betas.iter().filter(|b| b.run == 2).all(|b| !b.warmup));
    // Trial 2 (onset 20 s) is due at volume 19 (27.5 s), which never came:
    // it was estimated when the gap was declared, from volumes 0–18.
    let gap_trial = betas
        .iter()
        .find(|b| b.run == 2 && b.trigger.index == 19)
        .expect("trial due at the gap");
    assert!(gap_trial.trigger_seen.is_none());
    assert_eq!(gap_trial.frames, 19);
    // z-scores: session statistics over every beta so far, ddof 0.
    let n = betas.len();
    let last = betas[n - 1];
    for v in [0usize, 37, 119] {
        let vals: Vec<f64> = betas.iter().map(|b| b.raw[v] as f64).collect();
        let mean = vals.iter().sum::<f64>() / n as f64;
        let sd = (vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let want = (vals[n - 1] - mean) / (sd + 1e-6);
        assert!(
            (last.z[v] as f64 - want).abs() < 1e-4,
            "voxel {v}: {} vs {want}",
            last.z[v]
        );
    }
}

#[test]
fn bad_events_tables_are_refused_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("run-01_events.tsv");
    std::fs::write(
        &p,
        "onset\tduration\ttrial_type\n6\t3\timage\nsoon\t3\timage\n",
    )
    .unwrap();
    let cfg = GlmConfig {
        tr: Some(1.5),
        events: vec![p],
        ..GlmConfig::default()
    };
    let err = GlmStage::new(cfg, BufferConfig::default(), None)
        .err()
        .expect("refused");
    assert!(
        err.contains("run-01_events.tsv:3") && err.contains("onset 'soon'"),
        "{err}"
    );
    // Events without a TR cannot be modelled.
    let cfg = GlmConfig {
        events: vec![tmp.path().join("x.tsv")],
        ..GlmConfig::default()
    };
    let err = GlmStage::new(cfg, BufferConfig::default(), None)
        .err()
        .expect("refused");
    assert!(err.contains("tr"), "{err}");
}

#[test]
fn region_feedback_tracks_the_signal_cleaned_of_drift_and_motion() {
    let tmp = tempfile::tempdir().unwrap();
    // A region mask over the first ten voxels (np.where order = file order
    // here, since every voxel is in the session mask... use the mask to place it).
    let g = grid();
    let full = SessionMask::from_file_order(g.clone(), &[true; V]).unwrap();
    let mut roi = Volume::zeros(g.clone());
    for n in 0..10 {
        let [i, j, k] = full.voxel(n).unwrap();
        let idx = roi.linear_index(i, j, k);
        roi.values_mut()[idx] = 1.0;
    }
    let roi_path = tmp.path().join("roi.nii");
    boldstream::formats::nifti::write_volume(&roi_path, &roi, &Default::default()).unwrap();
    // A decoder reading the same ten voxels (weight 0.1 each) plus a bias.
    let mut weights = roi.clone();
    for v in weights.values_mut() {
        *v *= 0.1;
    }
    let weights_path = tmp.path().join("weights.nii");
    boldstream::formats::nifti::write_volume(&weights_path, &weights, &Default::default()).unwrap();
    let cfg = GlmConfig {
        tr: Some(1.5),
        noise_model: NoiseModel::Ols,
        feedback: FeedbackConfig {
            rois: vec![RoiConfig {
                name: "region".into(),
                mask: roi_path,
            }],
            decoders: vec![boldstream::glm::feedback::DecoderConfig {
                name: "decoder".into(),
                weights: weights_path,
                bias: 0.5,
            }],
            smoothing: Smoothing::Ema { alpha: 0.5 },
        },
        ..GlmConfig::default()
    };
    let samples_of = |still: bool, which: usize| -> Vec<(u32, f64, f64)> {
        let mut stage = GlmStage::new(cfg.clone(), BufferConfig::default(), Some(120)).unwrap();
        let mut out = Vec::new();
        stage.handle(
            PipelineEvent::Ingest(IngestEvent::RunStarted {
                run: 1,
                first_index: 0,
            }),
            &mut |e| out.push(e),
        );
        stage.handle(reference_event(), &mut |e| out.push(e));
        // No trials: the region carries its sinusoid, every voxel the drift.
        for t in 0..120u32 {
            let params = if still { [0.0; 6] } else { motion(t) };
            stage.handle(
                realigned_with(1, t, frame(t as usize, &[], 1), params),
                &mut |e| out.push(e),
            );
        }
        out.iter()
            .filter_map(|e| match e {
                PipelineEvent::Feedback(f) => {
                    Some((f.key.index, f.values[which].value, f.values[which].smoothed))
                }
                _ => None,
            })
            .collect()
    };

    // 1. Exactly the definition: the region's mean series regressed on the
    //    motion, drift and constant columns over the frames so far; the
    //    residual of the newest frame, in % of the series' mean.
    let samples = |still: bool| samples_of(still, 0);
    let moving = samples(false);
    let decoded = samples_of(false, 1);
    assert_eq!(moving.len(), 120, "one value per volume");
    use boldstream::glm::design::{cosine_drift, drift_order, frame_times};
    let drift = cosine_drift(&frame_times(120, 1.5, 0.0), 0.01);
    for last in [30usize, 50, 77, 119] {
        let m = last + 1;
        let order = drift_order(m, 1.5, 0.01);
        let z: Vec<f64> = (0..m)
            .map(|t| {
                frame(t, &[], 1)[..10]
                    .iter()
                    .map(|&x| x as f64)
                    .sum::<f64>()
                    / 10.0
            })
            .collect();
        let cols = [0usize, 1, 3, 5];
        let q = cols.len() + order + 1;
        let x = nalgebra::DMatrix::from_fn(m, q, |i, c| {
            if c < cols.len() {
                motion(i as u32)[cols[c]]
            } else if c < cols.len() + order {
                drift[c - cols.len()][i]
            } else {
                1.0
            }
        });
        let qr = x.clone().qr();
        let b = qr
            .r()
            .solve_upper_triangular(&(qr.q().transpose() * nalgebra::DVector::from_vec(z.clone())))
            .unwrap();
        let fitted = (x.row(last) * &b)[(0, 0)];
        let mean = z.iter().sum::<f64>() / m as f64;
        let want = 100.0 * (z[last] - fitted) / mean;
        let got = moving[last].1;
        assert!(
            (got - want).abs() < 1e-6 * want.abs().max(1.0),
            "frame {last}: {got} vs {want}"
        );
        // The decoder: Σ 0.1 × (each voxel's cleaned % signal change) + 0.5.
        let mut want = 0.5;
        for v in 0..10 {
            let y: Vec<f64> = (0..m).map(|t| frame(t, &[], 1)[v] as f64).collect();
            let b = qr
                .r()
                .solve_upper_triangular(
                    &(qr.q().transpose() * nalgebra::DVector::from_vec(y.clone())),
                )
                .unwrap();
            let fitted = (x.row(last) * &b)[(0, 0)];
            let mean = y.iter().sum::<f64>() / m as f64;
            want += 0.1 * 100.0 * (y[last] - fitted) / mean;
        }
        let got = decoded[last].1;
        assert!(
            (got - want).abs() < 1e-6 * want.abs().max(1.0),
            "decoder at frame {last}: {got} vs {want}"
        );
    }

    // 2. What it is for: without motion to confound it, the cleaned value
    //    follows the region's 20·sin(2πt/30) (±1.9 % of its ~1045 mean)
    //    with the 40-unit drift gone. (Real-time cleaning fits only the
    //    frames so far, so the newest point keeps some end-of-window
    //    leverage: correlation, not equality, is the property.)
    let still = samples(true);
    let (mut sx, mut sy, mut sxx, mut syy, mut sxy, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(t, v, _) in still.iter().filter(|s| s.0 >= 40) {
        let truth = (std::f64::consts::TAU * t as f64 * 1.5 / 30.0).sin();
        sx += v;
        sy += truth;
        sxx += v * v;
        syy += truth * truth;
        sxy += v * truth;
        n += 1.0;
    }
    let r = (sxy - sx * sy / n) / ((sxx - sx * sx / n).sqrt() * (syy - sy * sy / n).sqrt());
    assert!(
        r > 0.85,
        "feedback correlates {r:.3} with the region's signal"
    );
    assert!(
        (sx / n).abs() < 0.5,
        "drift left in the feedback: mean {:.3} %",
        sx / n
    );
    let samples = moving;
    // The smoothed value is the EMA of the raw ones.
    for w in samples.windows(2) {
        let want = 0.5 * w[1].1 + 0.5 * w[0].2;
        assert!((w[1].2 - want).abs() < 1e-9);
    }
}
