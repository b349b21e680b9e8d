//! The session report: a self-contained folder with one static HTML page.
//!
//! In: [`ReportData`] — every trial's stimulus, top-5 retrievals and
//! reconstruction (as PNG paths), the query embeddings and the bank's
//! embeddings of the shown images, motion parameters and FD, per-stage
//! latency samples, and free notes. Out: `index.html` (inline CSS and SVG, no
//! scripts, no external resources), `metrics.tsv` and `img/` holding a copy of
//! every referenced image, so the folder can be moved or archived as is.
//!
//! Metrics follow MindEye2's evaluation conventions (see [`metrics`]): top-1
//! retrieval among the distinct images shown in the scored trials (chance =
//! 1 / candidates), two-way identification by PixCorr and SSIM, mean PixCorr
//! and SSIM, and p50/p95/max latency from the trigger volume's arrival to
//! retrieval and to reconstruction. Per-run rows score each run's trials
//! against the whole session (its candidates, its other trials), so a run's
//! figures are the session's per-trial scores restricted to that run.

pub mod html;
pub mod metrics;
pub mod plot;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::formats::png::read_png;

use metrics::{SsimImage, percentiles, pixcorr, resize_bilinear, to_grey, top1_hits, two_way_rows};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("image {}: {source}", path.display())]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {run} trial {trial}: stimulus '{id}' has no embedding in the retrieval bank")]
    NoEmbedding { run: u32, trial: usize, id: String },
    #[error(
        "run {run} trial {trial}: query embedding has {query} values, the bank's embedding of '{id}' {bank}"
    )]
    EmbeddingLength {
        run: u32,
        trial: usize,
        id: String,
        query: usize,
        bank: usize,
    },
}

/// One trial as the report shows it.
#[derive(Debug, Clone, Default)]
pub struct TrialRow {
    pub run: u32,
    pub trial: usize,
    /// Id of the image shown (a bank id), when known.
    pub stim_id: Option<String>,
    pub stimulus_png: Option<PathBuf>,
    /// Top-5 retrieved ids with their cosine similarity, best first.
    pub top: Vec<(String, f32)>,
    /// Image of each `top` entry, when the bank has images.
    pub top_png: Vec<Option<PathBuf>>,
    /// Rank of the shown image among the whole bank (1 = first).
    pub rank: Option<usize>,
    pub reconstruction_png: Option<PathBuf>,
    /// The retrieval query embedding (empty when the trial was not decoded).
    pub query: Vec<f32>,
    pub since_trigger_retrieval_ms: Option<f64>,
    pub since_trigger_reconstruction_ms: Option<f64>,
    /// Why the trial has no reconstruction (or was not decoded).
    pub skipped: Option<String>,
}

/// Latency samples of one pipeline stage.
#[derive(Debug, Clone, Default)]
pub struct StageLatency {
    pub stage: String,
    pub samples_ms: Vec<f64>,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    pub title: String,
    pub subject: String,
    /// Free lines: calibration summary, command line, device.
    pub notes: Vec<String>,
    pub trials: Vec<TrialRow>,
    /// Retrieval embedding of (at least) every shown image, by id.
    pub bank_embedding: HashMap<String, Vec<f32>>,
    /// (run, volume, [rx, ry, rz rad, tx, ty, tz mm], FD mm).
    pub motion: Vec<plot::MotionRow>,
    pub fd_threshold: f64,
    pub stages: Vec<StageLatency>,
    /// (label such as "25 %", calibration trials, metrics), when a learning
    /// curve was measured.
    pub learning_curve: Vec<(String, usize, Metrics)>,
}

/// Figures for a set of trials. Fractions are in [0, 1]; NaN where nothing
/// could be scored; latencies are (p50, p95, max) in ms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Trials in the set.
    pub trials: usize,
    /// Trials scored for retrieval (a known stimulus and a query).
    pub retrieved: usize,
    /// Trials scored for reconstruction (a stimulus and a reconstruction
    /// image).
    pub reconstructed: usize,
    /// Distinct images shown in the scored trials (of the session, for a
    /// per-run row).
    pub candidates: usize,
    pub top1: f64,
    pub chance: f64,
    pub two_way_pixcorr: f64,
    pub two_way_ssim: f64,
    /// A constant image has no correlation with anything: its NaN PixCorr
    /// counts as 0 here rather than hiding the trial.
    pub mean_pixcorr: f64,
    pub mean_ssim: f64,
    pub retrieval_ms: (f64, f64, f64),
    pub reconstruction_ms: (f64, f64, f64),
}

/// Per-trial scores against a comparison set, to aggregate over any subset.
struct Scores {
    candidates: usize,
    /// Top-1 correct, for trials scored for retrieval.
    correct: Vec<Option<bool>>,
    /// For trials scored for reconstruction.
    image: Vec<Option<ImageScore>>,
}

/// One reconstruction's scores; a two-way figure is `None` when every other
/// trial showed the same image.
#[derive(Debug, Clone, Copy)]
struct ImageScore {
    two_way_pixcorr: Option<f64>,
    two_way_ssim: Option<f64>,
    pixcorr: f64,
    ssim: f64,
}

/// A decoded PNG: `[C, H, W]` values and its shape.
type Decoded = (Vec<f32>, (usize, usize, usize));

fn same_stimulus(a: &TrialRow, b: &TrialRow) -> bool {
    match (&a.stim_id, &b.stim_id) {
        (Some(x), Some(y)) => x == y,
        _ => a.stimulus_png.is_some() && a.stimulus_png == b.stimulus_png,
    }
}

fn score_retrieval(
    trials: &[&TrialRow],
    bank: &HashMap<String, Vec<f32>>,
) -> Result<(usize, Vec<Option<bool>>), ReportError> {
    let scored: Vec<usize> = (0..trials.len())
        .filter(|&i| trials[i].stim_id.is_some() && !trials[i].query.is_empty())
        .collect();
    let mut ids: Vec<&str> = scored
        .iter()
        .filter_map(|&i| trials[i].stim_id.as_deref())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut candidates = Vec::with_capacity(ids.len());
    for &id in &ids {
        let t = scored
            .iter()
            .map(|&i| trials[i])
            .find(|t| t.stim_id.as_deref() == Some(id));
        let (run, trial) = t.map_or((0, 0), |t| (t.run, t.trial));
        let e = bank.get(id).ok_or_else(|| ReportError::NoEmbedding {
            run,
            trial,
            id: id.to_string(),
        })?;
        candidates.push(e.clone());
    }
    let mut queries = Vec::with_capacity(scored.len());
    let mut truth = Vec::with_capacity(scored.len());
    for &i in &scored {
        let t = trials[i];
        let id = t.stim_id.as_deref().unwrap_or_default();
        let k = ids.binary_search(&id).unwrap_or(usize::MAX);
        if let Some(c) = candidates.get(k)
            && c.len() != t.query.len()
        {
            return Err(ReportError::EmbeddingLength {
                run: t.run,
                trial: t.trial,
                id: id.to_string(),
                query: t.query.len(),
                bank: c.len(),
            });
        }
        queries.push(t.query.clone());
        truth.push(k);
    }
    let hits = top1_hits(&queries, &truth, &candidates);
    let mut correct = vec![None; trials.len()];
    for (&i, h) in scored.iter().zip(hits) {
        correct[i] = Some(h);
    }
    Ok((ids.len(), correct))
}

/// An image ready to compare at one geometry: flat for PixCorr, filtered
/// greyscale for SSIM (`None` below SSIM's 11-pixel window).
struct Prepared {
    flat: Vec<f32>,
    grey: Option<SsimImage>,
}

fn prepare(image: &[f32], chw: (usize, usize, usize), c: usize, h: usize, w: usize) -> Prepared {
    let mut flat = resize_bilinear(image, chw, h, w);
    // A grey stimulus against a colour reconstruction: compare as grey
    // replicated to three channels (PixCorr over all channels then equals
    // that of grey against the reconstruction's channels).
    if chw.0 == 1 && c == 3 {
        flat = flat.repeat(3);
    } else if chw.0 == 3 && c == 1 {
        flat = to_grey(&flat, (3, h, w));
    }
    let grey = SsimImage::new(&to_grey(&flat, (c, h, w)), h, w);
    Prepared { flat, grey }
}

type Loaded = HashMap<PathBuf, Decoded>;

fn load<'a>(cache: &'a mut Loaded, path: &Path) -> Result<&'a Decoded, ReportError> {
    if !cache.contains_key(path) {
        let img = read_png(path).map_err(|source| ReportError::Image {
            path: path.to_path_buf(),
            source,
        })?;
        cache.insert(path.to_path_buf(), img);
    }
    cache.get(path).ok_or_else(|| ReportError::Image {
        path: path.to_path_buf(),
        source: std::io::Error::other("image cache lost an entry"),
    })
}

fn score_images(trials: &[&TrialRow]) -> Result<Vec<Option<ImageScore>>, ReportError> {
    let scored: Vec<usize> = (0..trials.len())
        .filter(|&i| trials[i].stimulus_png.is_some() && trials[i].reconstruction_png.is_some())
        .collect();
    let mut out = vec![None; trials.len()];
    if scored.is_empty() {
        return Ok(out);
    }
    let mut loaded = Loaded::new();
    // Distinct stimuli, each compared at every reconstruction geometry.
    let mut stim_paths: Vec<&Path> = Vec::new();
    let mut stim_of = Vec::with_capacity(scored.len());
    for &i in &scored {
        let p = trials[i].stimulus_png.as_deref().unwrap_or(Path::new(""));
        let k = match stim_paths.iter().position(|q| *q == p) {
            Some(k) => k,
            None => {
                stim_paths.push(p);
                stim_paths.len() - 1
            }
        };
        stim_of.push(k);
        load(&mut loaded, p)?;
    }
    let mut recons = Vec::with_capacity(scored.len());
    for &i in &scored {
        let p = trials[i]
            .reconstruction_png
            .as_deref()
            .unwrap_or(Path::new(""));
        let (img, chw) = load(&mut loaded, p)?;
        recons.push((prepare(img, *chw, chw.0, chw.1, chw.2), *chw));
    }
    let mut geometries: Vec<(usize, usize, usize)> = recons.iter().map(|r| r.1).collect();
    geometries.sort_unstable();
    geometries.dedup();
    let mut stims: HashMap<((usize, usize, usize), usize), Prepared> = HashMap::new();
    for &g in &geometries {
        for (k, p) in stim_paths.iter().enumerate() {
            let (img, chw) = load(&mut loaded, p)?;
            stims.insert((g, k), prepare(img, *chw, g.0, g.1, g.2));
        }
    }

    // matrix[a][k] = (PixCorr, SSIM) of reconstruction a against stimulus k.
    let n_stim = stim_paths.len();
    let row = |a: usize| -> Vec<(f64, f64)> {
        let (r, g) = &recons[a];
        (0..n_stim)
            .map(|k| match stims.get(&(*g, k)) {
                Some(s) => (
                    pixcorr(&r.flat, &s.flat),
                    match (&r.grey, &s.grey) {
                        (Some(x), Some(y)) => x.ssim(y),
                        _ => f64::NAN,
                    },
                ),
                None => (f64::NAN, f64::NAN),
            })
            .collect()
    };
    // SSIM of every reconstruction against every stimulus is the report's
    // one heavy step (a session of a few hundred trials at 256² is seconds
    // of work), so rows are spread over the cores.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(scored.len());
    let chunk = scored.len().div_ceil(threads);
    let n = scored.len();
    let mut matrix: Vec<Vec<(f64, f64)>> = Vec::with_capacity(scored.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let row = &row;
                s.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(n))
                        .map(row)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A worker can only fail by panicking, which is a bug here, not
            // bad input; propagate it rather than report wrong numbers.
            match h.join() {
                Ok(rows) => matrix.extend(rows),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    });

    let pix: Vec<Vec<f64>> = (0..n)
        .map(|a| (0..n).map(|b| matrix[a][stim_of[b]].0).collect())
        .collect();
    let ssim: Vec<Vec<f64>> = (0..n)
        .map(|a| (0..n).map(|b| matrix[a][stim_of[b]].1).collect())
        .collect();
    let same = |a: usize, b: usize| same_stimulus(trials[scored[a]], trials[scored[b]]);
    let two_pix = two_way_rows(&pix, same);
    let two_ssim = two_way_rows(&ssim, same);
    for (a, &i) in scored.iter().enumerate() {
        out[i] = Some(ImageScore {
            two_way_pixcorr: two_pix[a],
            two_way_ssim: two_ssim[a],
            pixcorr: pix[a][a],
            ssim: ssim[a][a],
        });
    }
    Ok(out)
}

fn score(trials: &[&TrialRow], bank: &HashMap<String, Vec<f32>>) -> Result<Scores, ReportError> {
    let (candidates, correct) = score_retrieval(trials, bank)?;
    let image = score_images(trials)?;
    Ok(Scores {
        candidates,
        correct,
        image,
    })
}

fn mean_of(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

fn aggregate(trials: &[&TrialRow], scores: &Scores, subset: &[usize]) -> Metrics {
    let correct: Vec<bool> = subset.iter().filter_map(|&i| scores.correct[i]).collect();
    let image: Vec<_> = subset.iter().filter_map(|&i| scores.image[i]).collect();
    let retrieved = correct.len();
    let lat = |f: fn(&TrialRow) -> Option<f64>| {
        percentiles(
            &subset
                .iter()
                .filter_map(|&i| f(trials[i]))
                .collect::<Vec<_>>(),
        )
    };
    Metrics {
        trials: subset.len(),
        retrieved,
        reconstructed: image.len(),
        candidates: scores.candidates,
        top1: if retrieved == 0 {
            f64::NAN
        } else {
            correct.iter().filter(|&&c| c).count() as f64 / retrieved as f64
        },
        chance: if scores.candidates == 0 {
            f64::NAN
        } else {
            1.0 / scores.candidates as f64
        },
        two_way_pixcorr: mean_of(image.iter().filter_map(|s| s.two_way_pixcorr)),
        two_way_ssim: mean_of(image.iter().filter_map(|s| s.two_way_ssim)),
        mean_pixcorr: mean_of(
            image
                .iter()
                .map(|s| if s.pixcorr.is_nan() { 0.0 } else { s.pixcorr }),
        ),
        mean_ssim: mean_of(image.iter().map(|s| s.ssim)),
        retrieval_ms: lat(|t| t.since_trigger_retrieval_ms),
        reconstruction_ms: lat(|t| t.since_trigger_reconstruction_ms),
    }
}

/// Metrics of `trials`, scored among themselves: retrieval candidates are
/// the distinct images they showed, two-way comparisons are between them.
/// Reads the stimulus and reconstruction PNGs; a stimulus differing in size
/// from its reconstruction is resampled (bilinear) to the reconstruction's.
pub fn compute_metrics(
    trials: &[&TrialRow],
    bank: &HashMap<String, Vec<f32>>,
) -> Result<Metrics, ReportError> {
    let scores = score(trials, bank)?;
    let all: Vec<usize> = (0..trials.len()).collect();
    Ok(aggregate(trials, &scores, &all))
}

/// Metrics per run (in run order) and for the session. Every trial is
/// scored against the whole session, so each run's row is the session's
/// per-trial figures averaged over that run.
pub fn session_metrics(data: &ReportData) -> Result<(Vec<(u32, Metrics)>, Metrics), ReportError> {
    let trials: Vec<&TrialRow> = data.trials.iter().collect();
    let scores = score(&trials, &data.bank_embedding)?;
    let mut runs: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, t) in trials.iter().enumerate() {
        runs.entry(t.run).or_default().push(i);
    }
    let per_run = runs
        .iter()
        .map(|(&run, idx)| (run, aggregate(&trials, &scores, idx)))
        .collect();
    let all: Vec<usize> = (0..trials.len()).collect();
    Ok((per_run, aggregate(&trials, &scores, &all)))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let err = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    crate::formats::atomic_write(path, bytes).map_err(err)
}

/// A file name for the copy of `src` in `img/`, unique among `taken`.
fn image_name(src: &Path, taken: &mut std::collections::HashSet<String>) -> String {
    let stem: String = src
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = if stem.is_empty() {
        "image".to_string()
    } else {
        stem
    };
    let mut name = format!("{stem}.png");
    let mut k = 2;
    while !taken.insert(name.clone()) {
        name = format!("{stem}-{k}.png");
        k += 1;
    }
    name
}

/// Copy every image the trials reference into `img_dir`; returns source
/// path → file name there.
fn copy_images(
    trials: &[TrialRow],
    img_dir: &Path,
) -> Result<HashMap<PathBuf, String>, ReportError> {
    let mut names: HashMap<PathBuf, String> = HashMap::new();
    let mut taken = std::collections::HashSet::new();
    let paths = trials.iter().flat_map(|t| {
        t.stimulus_png
            .iter()
            .chain(t.reconstruction_png.iter())
            .chain(t.top_png.iter().flatten())
    });
    for src in paths {
        if names.contains_key(src) {
            continue;
        }
        let name = image_name(src, &mut taken);
        let dst = img_dir.join(&name);
        // Through a temporary name: also right when `src` is already the
        // destination (a report rewritten in place), where a direct copy
        // would truncate the source.
        let tmp = img_dir.join(format!(".{name}.part"));
        std::fs::copy(src, &tmp).map_err(|source| ReportError::Image {
            path: src.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &dst).map_err(|source| ReportError::Write { path: dst, source })?;
        names.insert(src.clone(), name);
    }
    Ok(names)
}

/// `metrics.tsv`: a header and one row per run, the session and each
/// learning-curve point. NaN is written `NaN`.
fn metrics_tsv(
    per_run: &[(u32, Metrics)],
    session: &Metrics,
    curve: &[(String, usize, Metrics)],
) -> String {
    let mut s = String::from(
        "scope\tlabel\tcalibration_trials\ttrials\tretrieved\treconstructed\tcandidates\ttop1\tchance\t\
         two_way_pixcorr\ttwo_way_ssim\tmean_pixcorr\tmean_ssim\t\
         retrieval_p50_ms\tretrieval_p95_ms\tretrieval_max_ms\t\
         reconstruction_p50_ms\treconstruction_p95_ms\treconstruction_max_ms\n",
    );
    let mut row = |scope: &str, label: &str, calib: String, m: &Metrics| {
        let label: String = label
            .chars()
            .map(|c| if c == '\t' || c == '\n' { ' ' } else { c })
            .collect();
        s.push_str(&format!(
            "{scope}\t{label}\t{calib}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            m.trials,
            m.retrieved,
            m.reconstructed,
            m.candidates,
            m.top1,
            m.chance,
            m.two_way_pixcorr,
            m.two_way_ssim,
            m.mean_pixcorr,
            m.mean_ssim,
            m.retrieval_ms.0,
            m.retrieval_ms.1,
            m.retrieval_ms.2,
            m.reconstruction_ms.0,
            m.reconstruction_ms.1,
            m.reconstruction_ms.2,
        ));
    };
    for (run, m) in per_run {
        row("run", &run.to_string(), String::new(), m);
    }
    row("session", "session", String::new(), session);
    for (label, calib, m) in curve {
        row("learning_curve", label, calib.to_string(), m);
    }
    s
}

/// Write the report into `dir` (created if needed): `img/` with a copy of
/// every referenced PNG, `metrics.tsv` and `index.html` (each written
/// atomically). Returns the path of `index.html`.
///
/// On the page, fractions are shown as percentages with one decimal
/// (`{:.1} %`), PixCorr and SSIM with three decimals and latencies in ms
/// with one; `metrics.tsv` has the full-precision values. A referenced image
/// that cannot be read fails the report with an error naming it.
pub fn write_report(dir: &Path, data: &ReportData) -> Result<PathBuf, ReportError> {
    let img_dir = dir.join("img");
    std::fs::create_dir_all(&img_dir).map_err(|source| ReportError::Write {
        path: img_dir.clone(),
        source,
    })?;
    let (per_run, session) = session_metrics(data)?;
    let names = copy_images(&data.trials, &img_dir)?;
    write_atomic(
        &dir.join("metrics.tsv"),
        metrics_tsv(&per_run, &session, &data.learning_curve).as_bytes(),
    )?;
    let page = html::page(data, &per_run, &session, &|p: &Path| {
        names.get(p).map(|n| format!("img/{n}"))
    });
    let index = dir.join("index.html");
    write_atomic(&index, page.as_bytes())?;
    Ok(index)
}
