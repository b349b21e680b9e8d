//! The demo: a simulated subject from calibration scan to live
//! reconstructions, with no input.
//!
//! In: [`DemoOptions`] (all defaulted). Out: a calibrated subject folder, a
//! live console while a simulated session with injected faults is written
//! into an export folder and followed by the real pipeline, and at the end a
//! summary and an HTML report (each trial's stimulus, top-5 retrievals and
//! reconstruction, motion/FD, per-stage latency, the metrics the field
//! reports, and a learning curve over the calibration data).
//!
//! The steps:
//! 1. a simulated subject ([`SubjectProfile`]: a visual cortex whose voxels
//!    have population receptive fields and feature tuning) sees the model's
//!    bank images in a calibration session (MindEye's design: 3 s image +
//!    1 s blank, blank trials, repeats), rendered in memory;
//! 2. [`crate::calibrate`] realigns it and estimates betas with the live
//!    path's code and fits the subject's adapter (ridge, reliability-based
//!    voxel selection, both by cross-validation) into a subject folder;
//! 3. a later session of the same subject, the head placed differently in
//!    the scanner, is written into the export folder at TR pace (compressed
//!    by `--speed`) and followed by the daemon: realign onto the
//!    calibration grid, betas, retrieval and reconstruction of every trial
//!    after the warm-up run, on held-out images;
//! 4. the report; the learning curve re-decodes the live betas with
//!    adapters fitted on the first 25 % and 50 % of the calibration trials.
//!
//! Throughout the live session the daemon serves its dashboard (`--http`,
//! 127.0.0.1:8080 by default, an ephemeral port when that one is taken),
//! with the stimulus images it shows copied into `<out>/stimuli` so each
//! trial's reconstruction appears beside its stimulus.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{RecvTimeoutError, unbounded};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::calibrate::{self, BetaSettings, FitOptions, FitReport, RunVolumes, SessionBetas};
use crate::config::{Config, ConsoleConfig, SessionConfig};
use crate::ingest::IngestConfig;
use crate::pipeline::{Pipeline, PipelineOptions, PipelineSummary};
use crate::tools::report::{self, Metrics, ReportData, StageLatency, TrialRow};
use crate::tools::simulate::events::{MindEyeDesign, mindeye_run, mindeye_volumes};
use crate::tools::simulate::faults::FaultPlan;
use crate::tools::simulate::synth::{SynthSeries, SynthSpec};
use crate::tools::simulate::visual::{SubjectProfile, load_images};
use crate::tools::simulate::writer::{Pace, ScanWriter, TruthLocation, WriterOptions};
use crate::tools::simulate::{mix_seed, patterns::StimulusPatterns};
use crate::types::events::Event;
use crate::types::messages::{
    IngestEvent, PipelineEvent, TrialBeta, TrialDecoded, TrialReconstructed,
};

/// What the demo simulates and how fast.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Folder for the export, session, subject, truth and report folders
    /// (a new time-stamped subfolder is made inside).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Simulated subject: sim-01, sim-02 or sim-03.
    #[arg(long, default_value = "sim-01")]
    pub subject: String,
    /// Runs of the calibration session.
    #[arg(long, default_value_t = 6)]
    pub calibration_runs: usize,
    /// Runs of the live session; the first is a warm-up run (not decoded).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Images per run (MindEye: 63).
    #[arg(long, default_value_t = 63)]
    pub images_per_run: usize,
    /// Blank trials per run.
    #[arg(long, default_value_t = 5)]
    pub blank_trials: usize,
    /// Bank images held out of calibration and shown in the decoded runs.
    #[arg(long, default_value_t = 50)]
    pub test_images: usize,
    /// Time compression of the live session: 1 is real time (TR 1.5 s), 10
    /// writes a volume every 0.15 s.
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Inject no faults into the live session (by default a dropped, a
    /// re-ordered, a duplicated, a late, two slowly written and a truncated
    /// file).
    #[arg(long)]
    pub no_faults: bool,
    /// Seed of the sessions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Model folder (its bank images are the stimuli; its `[targets]` what
    /// the adapter is fitted to).
    #[arg(long, default_value = "onnx/demo")]
    pub model: PathBuf,
    /// Seconds after a trial's onset at which its beta is estimated, in
    /// calibration and live alike. Real-time MindEye uses 7.5 s; one TR
    /// more lets the response peak in and keeps the next trials' responses
    /// from leaking into this one's beta (3 s images 4 s apart).
    #[arg(long, default_value_t = 9.0)]
    pub glm_delay: f64,
    /// Skip the learning curve (adapters on 25 % and 50 % of the trials).
    #[arg(long)]
    pub no_learning_curve: bool,
    /// Address of the live dashboard (falls back to an ephemeral port when
    /// this one is taken). It is up during the live session.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub http: String,
    /// Start the live session only once a dashboard page is open (so the
    /// page sees every volume arrive).
    #[arg(long)]
    pub wait_for_dashboard: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("demo-out"),
            subject: "sim-01".into(),
            calibration_runs: 6,
            runs: 3,
            images_per_run: 63,
            blank_trials: 5,
            test_images: 50,
            speed: 10.0,
            no_faults: false,
            seed: 1,
            model: PathBuf::from("onnx/demo"),
            glm_delay: 9.0,
            no_learning_curve: false,
            http: "127.0.0.1:8080".into(),
            wait_for_dashboard: false,
        }
    }
}

/// How the demo went.
#[derive(Debug)]
pub struct DemoReport {
    /// The pipeline's own summary.
    pub pipeline: PipelineSummary,
    /// The calibration fit.
    pub calibration: FitReport,
    /// Calibration trials with a beta.
    pub calibration_trials: usize,
    /// Cross-session registration error against the simulator's session
    /// pose: (degrees, mm), when the registration ran.
    pub cross_session_error: Option<(f64, f64)>,
    /// Volumes written by the simulator (good and bad).
    pub files_written: usize,
    /// RMS motion error against the truth (degrees, mm) over realigned volumes.
    pub rms_error: (f64, f64),
    /// First-seen → realigned latency, ms: p50, p95, max.
    pub latency_ms: (f64, f64, f64),
    /// Trials in the schedule of the decoded runs (images and blanks).
    pub trials: usize,
    /// Image trials in the decoded runs.
    pub image_trials: usize,
    /// Betas produced in decoded runs.
    pub betas: usize,
    /// Trials retrieved.
    pub decoded: usize,
    /// Trials reconstructed.
    pub reconstructed: usize,
    /// Trials skipped by decoding (each reported).
    pub skipped: usize,
    /// Metrics per decoded run.
    pub runs: Vec<(u32, Metrics)>,
    /// Metrics over the session.
    pub session: Metrics,
    /// Learning curve: (label, calibration trials, metrics).
    pub learning_curve: Vec<(String, usize, Metrics)>,
    /// The report page.
    pub report: PathBuf,
    /// Where the dashboard was served during the live session.
    pub dashboard: Option<std::net::SocketAddr>,
    /// Seconds: calibration (simulate + betas + fit), live, report.
    pub seconds: (f64, f64, f64),
}

/// Spatial smoothness of the simulated cortex's responses (Gaussian σ in
/// voxels): neighbouring voxels share much of their tuning, as on cortex,
/// so a response pattern survives motion and resampling as it does in real
/// data.
const SMOOTH_VOXELS: f64 = 1.0;

/// The stimulus set: the model's bank, split into calibration and held-out
/// images.
struct Stimuli {
    images_dir: PathBuf,
    train: Vec<String>,
    test: Vec<String>,
    embeddings: HashMap<String, Vec<f32>>,
}

fn stimuli(opts: &DemoOptions) -> anyhow::Result<Stimuli> {
    let manifest = crate::decode::manifest::ModelManifest::load(&opts.model)?;
    let r = manifest
        .retrieval
        .as_ref()
        .with_context(|| format!("{}: no [retrieval] bank to show", manifest.path.display()))?;
    let images_dir = r
        .images
        .clone()
        .with_context(|| format!("{}: the bank has no images", manifest.path.display()))?;
    let ids: Vec<String> = std::fs::read_to_string(&r.ids)
        .with_context(|| format!("reading {}", r.ids.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let bytes = std::fs::read(&r.embeddings)
        .with_context(|| format!("reading {}", r.embeddings.display()))?;
    let (values, rows, cols) = crate::formats::npy::decode_2d(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", r.embeddings.display()))?;
    anyhow::ensure!(
        rows == ids.len(),
        "{}: {rows} rows for {} ids",
        r.embeddings.display(),
        ids.len()
    );
    let embeddings = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.clone(),
                values[i * cols..(i + 1) * cols]
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
            )
        })
        .collect();
    anyhow::ensure!(
        opts.test_images >= 2 && opts.test_images + 10 <= ids.len(),
        "--test-images {} must leave at least 10 of the bank's {} images for calibration",
        opts.test_images,
        ids.len()
    );
    let mut shuffled = ids.clone();
    shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(
        opts.seed, 71,
    )));
    let test = shuffled[..opts.test_images].to_vec();
    let train = shuffled[opts.test_images..].to_vec();
    Ok(Stimuli {
        images_dir,
        train,
        test,
        embeddings,
    })
}

/// `runs` runs of `per_run` images cycling through `pool` (each pass
/// reshuffled, so every image is shown before any repeats), laid out in
/// MindEye's design.
fn design(
    pool: &[String],
    runs: usize,
    per_run: usize,
    design: &MindEyeDesign,
    seed: u64,
) -> Vec<Vec<Event>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<String> = Vec::new();
    while order.len() < runs * per_run {
        let mut pass = pool.to_vec();
        pass.shuffle(&mut rng);
        order.extend(pass);
    }
    (0..runs)
        .map(|r| mindeye_run(design, &order[r * per_run..(r + 1) * per_run], &mut rng))
        .collect()
}

/// The default fault plan, spread over the session's volumes.
fn demo_faults(total: usize) -> FaultPlan {
    if total < 30 {
        return FaultPlan::none();
    }
    let at = |f: f64| ((total as f64 * f) as usize).max(2);
    let spec = format!(
        "drop={};swap={};dup={};late={}:3;partial={},{};corrupt={}:truncated",
        at(0.12),
        at(0.2),
        at(0.3),
        at(0.55),
        at(0.05),
        at(0.7),
        at(0.8),
    );
    FaultPlan::parse(&spec).unwrap_or_else(|_| FaultPlan::none())
}

impl DemoOptions {
    /// A new time-stamped folder under `out` for this demo's folders.
    pub fn new_base(&self) -> PathBuf {
        self.out.join(crate::config::timestamp())
    }
}

fn write_gz(path: &Path, vol: &crate::types::volume::Volume) -> anyhow::Result<()> {
    crate::formats::nifti::write_volume(
        path,
        vol,
        &crate::formats::nifti::WriteOptions {
            gzip: true,
            ..Default::default()
        },
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// A session of `profile` with one run per events table; a `later`
/// session has the subject's head pose for a session after calibration.
fn session_spec(
    profile: &SubjectProfile,
    events: &[Vec<Event>],
    volumes: usize,
    tr: f64,
    seed: u64,
    later: bool,
) -> SynthSpec {
    profile.spec(
        SynthSpec {
            runs: events.len(),
            volumes_per_run: volumes,
            tr,
            seed,
            events: Some(events.to_vec()),
            ..SynthSpec::default()
        },
        later,
    )
}

/// The simulated subject's region: the `n` brain voxels nearest the
/// phantom's visual area, as a mask and in `np.where` order.
fn region(
    series: &SynthSeries,
    n: usize,
) -> anyhow::Result<(crate::types::volume::Volume, Vec<usize>)> {
    Ok(crate::tools::simulate::patterns::pick_region(
        &series.clean_volume(0),
        &series.brain_map(),
        &series.task_map(),
        n,
    )?)
}

/// Run the demo in `base` (see [`DemoOptions::new_base`]).
pub fn run_demo(opts: &DemoOptions, base: &Path) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(
        opts.speed > 0.0 && opts.speed.is_finite(),
        "--speed must be positive"
    );
    anyhow::ensure!(
        opts.runs >= 2 && opts.calibration_runs >= 1 && opts.images_per_run >= 4,
        "need at least 1 calibration run and 2 live runs (a warm-up and a decoded one) of 4 images"
    );
    let profile = SubjectProfile::preset(&opts.subject).with_context(|| {
        format!(
            "no simulated subject '{}' (known: {})",
            opts.subject,
            SubjectProfile::PRESETS.join(", ")
        )
    })?;
    // Decoding needs ONNX Runtime: say so before simulating anything.
    crate::decode::runtime::Runtime::new(&Default::default())
        .context("the demo decodes with ONNX Runtime (`make ort` installs it)")?;
    let dashboard = dashboard_addr(&opts.http)?;
    println!(
        "dashboard: {} (up for the live session, which starts after calibration)",
        dashboard_url(dashboard)
    );
    let base = base.to_path_buf();
    let truth = base.join("truth");
    let export = base.join("export");
    for d in [&truth, &export] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let t_start = Instant::now();
    let stim = stimuli(opts)?;
    let stimuli_dir = base.join("stimuli");
    copy_stimuli(&stim, &stimuli_dir)?;
    let me = MindEyeDesign {
        images_per_run: opts.images_per_run,
        blank_trials_per_run: opts.blank_trials,
        ..MindEyeDesign::default()
    };
    let tr = me.tr;
    let volumes = mindeye_volumes(&me, opts.images_per_run + opts.blank_trials);

    // The subject's responses to every bank image (standardised per voxel).
    let cortex = profile.cortex()?;
    let all_ids: Vec<String> = stim.train.iter().chain(&stim.test).cloned().collect();
    let images = load_images(&stim.images_dir, &all_ids)?;
    let responses = cortex.responses(&images)?;

    // 1. Calibration session, in memory.
    let cal_seed = mix_seed(opts.seed, 1);
    let cal_events = design(
        &stim.train,
        opts.calibration_runs,
        opts.images_per_run,
        &me,
        mix_seed(opts.seed, 2),
    );
    let cal_spec = session_spec(&profile, &cal_events, volumes, tr, cal_seed, false);
    let plain = SynthSeries::new(cal_spec).context("building the calibration session")?;
    let (_, pattern_voxels) = region(&plain, profile.voxels)?;
    let responses = crate::tools::simulate::patterns::smooth_in_space(
        &responses,
        &pattern_voxels,
        plain.grid(),
        SMOOTH_VOXELS,
    );
    // The region calibration searches: twice the responsive voxels.
    let (region_mask, _) = region(&plain, 2 * profile.voxels)?;
    let region_path = truth.join("region_mask.nii.gz");
    write_gz(&region_path, &region_mask)?;
    let cal = plain.with_patterns(profile.patterns(
        pattern_voxels.clone(),
        responses.clone(),
        cal_seed,
    )?)?;
    for (r, ev) in cal_events.iter().enumerate() {
        crate::formats::events_tsv::write_events(
            &truth.join(format!("calibration_run-{:02}_events.tsv", r + 1)),
            ev,
        )?;
    }
    println!(
        "boldstream demo: subject {} ({} responsive voxels with pRFs), calibration session of {} runs x {} volumes (TR {tr} s, {} images + {} blanks per run), rendered in memory",
        profile.name,
        profile.voxels,
        opts.calibration_runs,
        volumes,
        opts.images_per_run,
        opts.blank_trials
    );
    let cal_runs = (0..opts.calibration_runs).map(|r| {
        let series = &cal;
        Ok(RunVolumes {
            label: PathBuf::from(format!("calibration run {}", r + 1)),
            events: cal_events[r].clone(),
            tr: Some(tr),
            planned: Some(volumes),
            volumes: Box::new((0..volumes).map(move |i| Ok(series.volume(r * volumes + i)))),
        })
    });
    let betas = calibrate::estimate_betas_from(cal_runs, &{
        let mut b = BetaSettings {
            region: Some(region_path.clone()),
            ..BetaSettings::default()
        };
        b.glm.delay = opts.glm_delay;
        b
    })?;
    println!(
        "calibration betas: {} trials from {} volumes (realign {:.1} s, GLM {:.1} s), {} region voxels",
        betas.trials.len(),
        betas.volumes,
        betas.seconds.1,
        betas.seconds.2,
        betas.region.len()
    );
    let subject_dir = base.join("subject");
    let fit = calibrate::fit_subject(
        &betas,
        &opts.model,
        &subject_dir,
        &FitOptions {
            subject: profile.name.clone(),
            ..FitOptions::default()
        },
    )?;
    calibrate::print_fit(&fit);
    let seconds_calibration = t_start.elapsed().as_secs_f64();

    // 2. The live session.
    let t_live = Instant::now();
    let live = live_session(
        opts,
        &profile,
        &stim,
        &me,
        volumes,
        &pattern_voxels,
        &responses,
        &base,
        &region_path,
        Dashboard {
            addr: dashboard,
            stimuli: stimuli_dir,
        },
    )?;
    let seconds_live = t_live.elapsed().as_secs_f64();

    // 3. Report and learning curve.
    let t_report = Instant::now();
    let mut data = report_data(opts, &profile, &stim, &live, &fit, &betas)?;
    if !opts.no_learning_curve {
        data.learning_curve =
            learning_curve(opts, &betas, &live, &stim, &base, &fit, &data.trials)?;
    }
    let (runs, session) = report::session_metrics(&data)?;
    let report_path = report::write_report(&base.join("report"), &data)?;
    let seconds_report = t_report.elapsed().as_secs_f64();

    let report = DemoReport {
        calibration_trials: betas.trials.len(),
        calibration: fit,
        cross_session_error: live.cross_session_error,
        files_written: live.files_written,
        rms_error: live.rms_error,
        latency_ms: live.latency_ms,
        trials: live.trials,
        image_trials: live.image_trials,
        betas: live.betas.iter().filter(|b| !b.warmup).count(),
        decoded: live.decoded.len(),
        reconstructed: live.recons.len(),
        skipped: live.skipped.len(),
        runs,
        session,
        learning_curve: data.learning_curve.clone(),
        report: report_path,
        dashboard: live.dashboard,
        seconds: (seconds_calibration, seconds_live, seconds_report),
        pipeline: live
            .summary
            .context("the live session ended without a pipeline summary")?,
    };
    print_report(&report, &base);
    Ok(report)
}

/// What the live session left for the report.
struct Live {
    summary: Option<PipelineSummary>,
    files_written: usize,
    rms_error: (f64, f64),
    latency_ms: (f64, f64, f64),
    cross_session_error: Option<(f64, f64)>,
    trials: usize,
    image_trials: usize,
    realigned: Vec<crate::types::messages::RealignedVolume>,
    betas: Vec<TrialBeta>,
    decoded: Vec<TrialDecoded>,
    recons: Vec<TrialReconstructed>,
    skipped: Vec<(u32, usize, String)>,
    dashboard: Option<std::net::SocketAddr>,
}

/// Where the live session's dashboard goes.
struct Dashboard {
    addr: std::net::SocketAddr,
    stimuli: PathBuf,
}

/// The dashboard's address: `addr` when it can be bound now, else the same
/// host on a port the system picks (said on the console). The probe is
/// closed again at once, so a page opened during calibration is refused
/// plainly instead of hanging.
fn dashboard_addr(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::{TcpListener, ToSocketAddrs};
    let wanted = addr
        .to_socket_addrs()
        .with_context(|| format!("--http {addr}: not an address"))?
        .next()
        .with_context(|| format!("--http {addr}: resolves to no address"))?;
    let probe = match TcpListener::bind(wanted) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let l = TcpListener::bind((wanted.ip(), 0))
                .with_context(|| format!("--http {addr}: binding an ephemeral port"))?;
            println!(
                "dashboard: {wanted} is taken; using {} instead",
                l.local_addr()?
            );
            l
        }
        Err(e) => return Err(e).with_context(|| format!("--http {addr}")),
    };
    Ok(probe.local_addr()?)
}

/// The URL a browser on this machine opens for `addr`.
fn dashboard_url(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/", std::net::SocketAddr::new(ip, addr.port()))
}

/// The bank images the demo can show (stimuli and retrieval candidates),
/// as `<id>.png` in `dir`, for the dashboard's trial list.
fn copy_stimuli(stim: &Stimuli, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for id in stim.train.iter().chain(&stim.test) {
        let name = format!("{id}.png");
        let from = stim.images_dir.join(&name);
        std::fs::copy(&from, dir.join(&name))
            .with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
    }
    Ok(())
}

/// Start the pipeline serving the dashboard; when its port was taken
/// since it was probed, on an ephemeral one (said on the console).
fn start_serving(
    config: &mut Config,
    config_text: &str,
    observer: &crossbeam_channel::Sender<PipelineEvent>,
) -> anyhow::Result<Pipeline> {
    let options = || PipelineOptions {
        observers: vec![observer.clone()],
        console: None,
    };
    match Pipeline::start(config, config_text, options()) {
        Err(crate::pipeline::PipelineError::Serve(crate::serve::ServeError::Bind {
            what: "dashboard",
            addr,
            source,
        })) if source.kind() == std::io::ErrorKind::AddrInUse => {
            let fallback = addr
                .parse::<std::net::SocketAddr>()
                .map(|a| std::net::SocketAddr::new(a.ip(), 0).to_string())
                .unwrap_or_else(|_| "127.0.0.1:0".into());
            println!("dashboard: {addr} was taken meanwhile; moving to an ephemeral port");
            config.serve.http = Some(fallback);
            Ok(Pipeline::start(config, config_text, options())?)
        }
        other => Ok(other?),
    }
}

#[allow(clippy::too_many_arguments)]
fn live_session(
    opts: &DemoOptions,
    profile: &SubjectProfile,
    stim: &Stimuli,
    me: &MindEyeDesign,
    volumes: usize,
    pattern_voxels: &[usize],
    responses: &HashMap<String, Vec<f32>>,
    base: &Path,
    region_path: &Path,
    dashboard: Dashboard,
) -> anyhow::Result<Live> {
    let tr = me.tr;
    let truth = base.join("truth");
    let export = base.join("export");
    let seed = mix_seed(opts.seed, 3);
    // The warm-up run shows calibration images; the decoded runs the
    // held-out ones, with repeats.
    let mut events = design(
        &stim.train,
        1,
        opts.images_per_run,
        me,
        mix_seed(opts.seed, 4),
    );
    events.extend(design(
        &stim.test,
        opts.runs - 1,
        opts.images_per_run,
        me,
        mix_seed(opts.seed, 5),
    ));
    let spec = session_spec(profile, &events, volumes, tr, seed, true);
    let patterns: StimulusPatterns =
        profile.patterns(pattern_voxels.to_vec(), responses.clone(), seed)?;
    let series = SynthSeries::new(spec)
        .context("building the live session")?
        .with_patterns(patterns)?;
    let interval = Duration::from_secs_f64(tr / opts.speed);
    let plan = if opts.no_faults {
        FaultPlan::none()
    } else {
        demo_faults(series.len())
    };

    let mut ingest = IngestConfig::new(&export);
    ingest.naming = "bids".into();
    ingest.volumes_per_run = Some(volumes as u32);
    // Compressed time: the waits scale with the TR the demo plays at.
    ingest.gap_timeout = (3.0 * interval.as_secs_f64()).max(0.2);
    ingest.partial_timeout = (4.0 * interval.as_secs_f64()).max(0.5);
    ingest.poll_interval = 0.05;
    ingest.retry_interval = 0.02;
    let mut tables = Vec::new();
    let (mut trials, mut image_trials) = (0, 0);
    for (r, ev) in events.iter().enumerate() {
        let path = truth.join(format!("run-{:02}_events.tsv", r + 1));
        crate::formats::events_tsv::write_events(&path, ev)?;
        if r > 0 {
            trials += ev.len();
            image_trials += ev.iter().filter(|e| e.stim_id.is_some()).count();
        }
        tables.push(path);
    }
    let glm = crate::glm::spec::GlmConfig {
        tr: Some(tr),
        events: tables,
        warmup_runs: 1,
        delay: opts.glm_delay,
        skip_trial_types: vec!["blank".into()],
        // As MindEye does for its test images: a repeated image is decoded
        // from the mean of its presentations so far.
        average_repeats: true,
        feedback: crate::glm::feedback::FeedbackConfig {
            rois: vec![crate::glm::feedback::RoiConfig {
                name: "visual".into(),
                mask: region_path.to_path_buf(),
            }],
            decoders: Vec::new(),
            smoothing: crate::glm::feedback::Smoothing::Ema { alpha: 0.5 },
        },
        ..Default::default()
    };
    let mut config = Config {
        session: SessionConfig {
            dir: Some(base.join("session")),
            ..Default::default()
        },
        ingest,
        // The subject folder supplies the mask, the calibration grid and
        // the cross-session registration.
        realign: Default::default(),
        buffer: Default::default(),
        glm,
        decode: crate::decode::DecodeConfig {
            model: Some(opts.model.clone()),
            subject: Some(base.join("subject")),
            ..Default::default()
        },
        console: ConsoleConfig { enabled: true },
        serve: crate::serve::ServeConfig {
            http: Some(dashboard.addr.to_string()),
            stimuli: Some(dashboard.stimuli),
            ..Default::default()
        },
    };
    let config_text = format!(
        "# demo: subject {}, {} live runs x {volumes} volumes, TR {tr} s played {}x faster, faults: {}\n",
        profile.name,
        opts.runs,
        opts.speed,
        if opts.no_faults { "none" } else { "yes" }
    );
    println!(
        "live session: {} runs x {volumes} volumes (64x64x36, 3 mm; head moved {:.1} deg / {:.1} mm since calibration) at {}x real time into {}; run 1 is the warm-up",
        opts.runs,
        profile.session_pose[..3]
            .iter()
            .map(|a| a.to_degrees().powi(2))
            .sum::<f64>()
            .sqrt(),
        profile.session_pose[3..]
            .iter()
            .map(|a| a * a)
            .sum::<f64>()
            .sqrt(),
        opts.speed,
        export.display()
    );
    let (obs_tx, obs_rx) = unbounded();
    let pipeline = start_serving(&mut config, &config_text, &obs_tx)?;
    drop(obs_tx);
    let dashboard = pipeline.http_addr();
    if let Some(addr) = dashboard {
        println!("dashboard live: {}", dashboard_url(addr));
    }
    if opts.wait_for_dashboard
        && let Some(hub) = pipeline.hub()
    {
        println!("waiting for a dashboard page to open (--wait-for-dashboard)");
        let clients = hub.metrics.clients("sse");
        while clients.get() < 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let writer_opts = WriterOptions {
        pace: Pace::Interval(interval),
        truth: TruthLocation::Dir(truth.clone()),
        ..WriterOptions::default()
    };
    let writer_export = export.clone();
    let sim = std::thread::Builder::new()
        .name("simulator".into())
        .spawn(move || {
            ScanWriter::new(&writer_export, writer_opts)
                .run(&series, &plan)
                .map(|r| (r, series))
        })?;

    let budget = interval * (opts.runs * volumes) as u32 * 3 + Duration::from_secs(60);
    let deadline = Instant::now() + budget;
    let mut ended = 0usize;
    let mut live = Live {
        summary: None,
        files_written: 0,
        rms_error: (f64::NAN, f64::NAN),
        latency_ms: (f64::NAN, f64::NAN, f64::NAN),
        cross_session_error: None,
        trials,
        image_trials,
        realigned: Vec::new(),
        betas: Vec::new(),
        decoded: Vec::new(),
        recons: Vec::new(),
        skipped: Vec::new(),
        dashboard,
    };
    let mut cross = None;
    let mut take = |ev: PipelineEvent, live: &mut Live| match ev {
        PipelineEvent::ReferenceReady { cross_session, .. } => cross = cross_session,
        PipelineEvent::Realigned(r) => live.realigned.push(*r),
        PipelineEvent::Beta(b) => live.betas.push(*b),
        PipelineEvent::Decoded(d) => live.decoded.push(*d),
        PipelineEvent::Reconstructed(r) => live.recons.push(*r),
        PipelineEvent::DecodeSkipped {
            run,
            trial,
            what,
            reason,
            ..
        } => live.skipped.push((run, trial, format!("{what}: {reason}"))),
        _ => {}
    };
    while ended < opts.runs {
        let left = deadline.saturating_duration_since(Instant::now());
        match obs_rx.recv_timeout(left) {
            Ok(PipelineEvent::Ingest(IngestEvent::RunEnded { .. })) => ended += 1,
            Ok(ev) => take(ev, &mut live),
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("demo: not every run ended within {budget:?}; stopping");
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let (sim_report, series) = sim
        .join()
        .map_err(|_| anyhow::anyhow!("the simulator thread panicked"))??;
    live.summary = Some(pipeline.stop());
    while let Ok(ev) = obs_rx.try_recv() {
        take(ev, &mut live);
    }
    live.files_written = sim_report.written.len();

    let (mut se_r, mut se_t, mut n) = (0.0, 0.0, 0usize);
    for r in &live.realigned {
        if let Some(i) = series.session_index(r.key) {
            let t = series.truth(i).0;
            for a in 0..3 {
                se_r += (r.params.0[a] - t[a]).to_degrees().powi(2);
                se_t += (r.params.0[a + 3] - t[a + 3]).powi(2);
            }
            n += 3;
        }
    }
    let rms = |s: f64| {
        if n > 0 {
            (s / n as f64).sqrt()
        } else {
            f64::NAN
        }
    };
    live.rms_error = (rms(se_r), rms(se_t));
    let seen_to_realigned: Vec<f64> = live
        .realigned
        .iter()
        .map(|r| {
            r.realigned_at
                .saturating_duration_since(r.ingest.first_seen)
                .as_secs_f64()
                * 1e3
        })
        .collect();
    live.latency_ms = report::metrics::percentiles(&seen_to_realigned);
    live.cross_session_error = cross.map(|c| cross_session_error(&series, &c));
    Ok(live)
}

/// How far the registered cross-session map is from the simulator's: the
/// largest displacement of a brain-sized sphere (50 mm) in rotation (as an
/// angle, degrees) and translation (mm) after composing one with the
/// inverse of the other.
fn cross_session_error(
    series: &SynthSeries,
    c: &crate::types::messages::CrossSession,
) -> (f64, f64) {
    use nalgebra::Matrix4;
    let est = Matrix4::from_fn(|r, k| c.target_to_reference[r][k]);
    // Truth, in the same world → world form as the registration's map:
    // both sessions share the grid, and the simulator knows where the
    // session's FSL frame sits in the calibration's.
    let grid = series.grid();
    let (a, f) = (grid.affine, grid.vox_to_fsl());
    let inv = |m: Matrix4<f64>| m.try_inverse().unwrap_or_else(Matrix4::identity);
    let truth = a * inv(f) * inv(series.calibration_from_session()) * f * inv(a);
    let d = est
        .try_inverse()
        .map_or(Matrix4::identity(), |inv| inv * truth);
    let r = d.fixed_view::<3, 3>(0, 0).into_owned();
    let angle = ((r.trace() - 1.0) / 2.0)
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees();
    let t = d.fixed_view::<3, 1>(0, 3).norm();
    (angle, t)
}

/// Each live reconstruction's PNG in the session store, with its latency
/// from the trigger volume (ms), by (run, trial).
fn live_reconstructions(live: &Live) -> HashMap<(u32, usize), (PathBuf, Option<f64>)> {
    let session_dir = live
        .summary
        .as_ref()
        .map(|s| s.session_dir.clone())
        .unwrap_or_default();
    live.recons
        .iter()
        .map(|r| {
            let path = session_dir
                .join("decode/recon")
                .join(format!("run-{:02}_trial-{:03}.png", r.run, r.trial));
            ((r.run, r.trial), (path, r.since_trigger.map(|s| s * 1e3)))
        })
        .collect()
}

fn png_of(dir: &Path, id: &str) -> Option<PathBuf> {
    let p = dir.join(format!("{id}.png"));
    p.is_file().then_some(p)
}

/// Rows for the report: every decoded run's image trial, with what became
/// of it.
fn trial_rows(
    stim: &Stimuli,
    decoded: &[TrialDecoded],
    recons: &HashMap<(u32, usize), (PathBuf, Option<f64>)>,
    skipped: &[(u32, usize, String)],
) -> Vec<TrialRow> {
    let mut rows: Vec<TrialRow> = decoded
        .iter()
        .map(|d| {
            let recon = recons.get(&(d.run, d.trial));
            TrialRow {
                run: d.run,
                trial: d.trial,
                stim_id: d.stim_id.clone(),
                stimulus_png: d
                    .stim_id
                    .as_deref()
                    .and_then(|i| png_of(&stim.images_dir, i)),
                top: d.top.clone(),
                top_png: d
                    .top
                    .iter()
                    .map(|(id, _)| png_of(&stim.images_dir, id))
                    .collect(),
                rank: d.true_rank,
                reconstruction_png: recon.map(|r| r.0.clone()),
                query: d.query.to_vec(),
                since_trigger_retrieval_ms: d.since_trigger.map(|s| s * 1e3),
                since_trigger_reconstruction_ms: recon.and_then(|r| r.1),
                skipped: skipped
                    .iter()
                    .find(|(r, t, _)| *r == d.run && *t == d.trial)
                    .map(|(_, _, why)| why.clone()),
            }
        })
        .collect();
    rows.sort_by_key(|r| (r.run, r.trial));
    rows
}

fn report_data(
    opts: &DemoOptions,
    profile: &SubjectProfile,
    stim: &Stimuli,
    live: &Live,
    fit: &FitReport,
    betas: &SessionBetas,
) -> anyhow::Result<ReportData> {
    let recons = live_reconstructions(live);
    let trials = trial_rows(stim, &live.decoded, &recons, &live.skipped);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stages = vec![
        StageLatency {
            stage: "file seen → volume read (ingest)".into(),
            samples_ms: live
                .realigned
                .iter()
                .map(|r| {
                    ms(r.ingest
                        .decoded
                        .saturating_duration_since(r.ingest.first_seen))
                })
                .collect(),
        },
        StageLatency {
            stage: "realign + resample onto the calibration grid".into(),
            samples_ms: live
                .realigned
                .iter()
                .map(|r| r.realign_seconds * 1e3)
                .collect(),
        },
        StageLatency {
            stage: "file seen → realigned".into(),
            samples_ms: live
                .realigned
                .iter()
                .map(|r| {
                    ms(r.realigned_at
                        .saturating_duration_since(r.ingest.first_seen))
                })
                .collect(),
        },
        StageLatency {
            stage: "trigger volume seen → z-scored beta".into(),
            samples_ms: live
                .betas
                .iter()
                .filter(|b| !b.warmup)
                .filter_map(|b| {
                    b.trigger_seen
                        .map(|t| ms(b.ready.saturating_duration_since(t)))
                })
                .collect(),
        },
        StageLatency {
            stage: "fast path: adapter + backbone + retrieval".into(),
            samples_ms: live.decoded.iter().map(|d| d.seconds * 1e3).collect(),
        },
        StageLatency {
            stage: "trigger volume seen → retrieval".into(),
            samples_ms: live
                .decoded
                .iter()
                .filter_map(|d| d.since_trigger.map(|s| s * 1e3))
                .collect(),
        },
        StageLatency {
            stage: "reconstruction (prior + decoder sampling)".into(),
            samples_ms: live.recons.iter().map(|r| r.seconds * 1e3).collect(),
        },
        StageLatency {
            stage: "trigger volume seen → reconstruction".into(),
            samples_ms: live
                .recons
                .iter()
                .filter_map(|r| r.since_trigger.map(|s| s * 1e3))
                .collect(),
        },
    ];
    let mut notes = vec![
        format!(
            "Simulated subject {}: {} responsive voxels with population receptive fields and feature tuning (luminance, colour, orientation energy), amplitude {:.1} % per unit response, trial-to-trial noise {}, thermal noise {:.0} % (SNR {:.0}).",
            profile.name,
            profile.voxels,
            100.0 * profile.amplitude,
            profile.response_noise,
            100.0 * profile.thermal_noise,
            1.0 / profile.thermal_noise.max(1e-9)
        ),
        format!(
            "Calibration: {} runs, {} trials with a beta ({} images), {} of {} region voxels selected (reliability threshold {}), ridge in {} form, cross-validated R² {:.3}.",
            opts.calibration_runs,
            betas.trials.len(),
            fit.images,
            fit.selected,
            fit.region_voxels,
            fit.threshold
                .map_or_else(|| "none".to_string(), |t| t.to_string()),
            fit.form,
            fit.cv_r2
        ),
        format!(
            "Live session: {} runs (run 1 a warm-up run, not decoded) at {}× real time (TR 1.5 s), {} held-out images with repeats in the decoded runs; faults injected: {}.",
            opts.runs,
            opts.speed,
            opts.test_images,
            if opts.no_faults { "none" } else { "yes" }
        ),
    ];
    if let Some((deg, mm)) = live.cross_session_error {
        notes.push(format!(
            "Cross-session registration (calibration reference → live reference) error against the simulator's head pose: {deg:.3}° rotation, {mm:.3} mm translation."
        ));
    }
    notes.push(format!(
        "Command: boldstream demo --subject {} --calibration-runs {} --runs {} --speed {} --seed {}",
        opts.subject, opts.calibration_runs, opts.runs, opts.speed, opts.seed
    ));
    Ok(ReportData {
        title: format!("boldstream demo — {}", profile.name),
        subject: profile.name.clone(),
        notes,
        trials,
        bank_embedding: stim.embeddings.clone(),
        motion: live
            .realigned
            .iter()
            .map(|r| (r.key.run, r.key.index as usize, r.params.0, r.fd))
            .collect(),
        fd_threshold: 0.5,
        stages,
        learning_curve: Vec::new(),
    })
}

/// Adapters fitted on the first 25 % and 50 % of the calibration trials,
/// each decoding the live session's betas (z-scored with its own
/// statistics, as live), next to the full calibration's live figures.
fn learning_curve(
    opts: &DemoOptions,
    betas: &SessionBetas,
    live: &Live,
    stim: &Stimuli,
    base: &Path,
    full: &FitReport,
    full_rows: &[TrialRow],
) -> anyhow::Result<Vec<(String, usize, Metrics)>> {
    let rt = crate::decode::runtime::Runtime::new(&Default::default())?;
    let mut curve = Vec::new();
    for fraction in [0.25, 0.5] {
        let label = format!("{:.0} %", fraction * 100.0);
        let dir = base.join(format!("learning/subject-{:.0}", fraction * 100.0));
        let fit = calibrate::fit_subject(
            betas,
            &opts.model,
            &dir,
            &FitOptions {
                subject: format!("{} ({label} of calibration)", opts.subject),
                fraction,
                ..FitOptions::default()
            },
        )?;
        let subject = crate::decode::manifest::SubjectManifest::load(&dir)?;
        let zpath = subject
            .zscore
            .clone()
            .with_context(|| format!("{}: no zscore statistics", dir.display()))?;
        let stats = crate::glm::normalize::read_stats(&zpath, subject.voxels)?;
        let mut norm = crate::glm::normalize::Normalizer::fixed(
            stats,
            crate::glm::spec::GlmConfig::default().zscore_epsilon,
            true,
        );
        let set = crate::decode::models::ModelSet::load(&rt, &opts.model, &dir, None)?;
        let (mut fast, recon) = set.split();
        let mut recon = recon.context("the model has no decoder")?;
        let recon_dir = dir.join("recon");
        std::fs::create_dir_all(&recon_dir)
            .with_context(|| format!("creating {}", recon_dir.display()))?;
        let mut decoded = Vec::new();
        let mut recons = HashMap::new();
        for b in live.betas.iter().filter(|b| !b.warmup) {
            let Some(id) = b.event.stim_id.as_deref() else {
                continue;
            };
            let Some(z) = norm.push(&b.raw, Some(id)) else {
                anyhow::bail!(
                    "run {} trial {}: beta over {} voxels, the subject has {}",
                    b.run,
                    b.trial,
                    b.raw.len(),
                    subject.voxels
                );
            };
            let out = fast.run(&z.decode)?;
            let r = recon.run_blended(&out.tokens, out.lowlevel.as_deref())?;
            let path = recon_dir.join(format!("run-{:02}_trial-{:03}.png", b.run, b.trial));
            crate::formats::png::write_png(&path, &r.image, r.chw)
                .with_context(|| format!("writing {}", path.display()))?;
            recons.insert((b.run, b.trial), (path, None));
            let top: Vec<(String, f32)> = out.top.iter().map(|c| (c.id.clone(), c.score)).collect();
            decoded.push(TrialDecoded {
                run: b.run,
                trial: b.trial,
                stim_id: Some(id.to_string()),
                true_rank: None,
                top,
                bank_size: stim.embeddings.len(),
                query: out.query.into(),
                graphs: Vec::new(),
                seconds: out.wall_seconds,
                since_beta: 0.0,
                since_trigger: None,
                nonfinite_voxels: out.nonfinite_voxels,
            });
        }
        let rows = trial_rows(stim, &decoded, &recons, &[]);
        let refs: Vec<&TrialRow> = rows.iter().collect();
        let m = report::compute_metrics(&refs, &stim.embeddings)?;
        curve.push((label, fit.trials, m));
    }
    // The full calibration: the live session's own figures.
    let refs: Vec<&TrialRow> = full_rows.iter().collect();
    curve.push((
        "100 %".into(),
        full.trials,
        report::compute_metrics(&refs, &stim.embeddings)?,
    ));
    Ok(curve)
}

fn fmt3((a, b, c): (f64, f64, f64)) -> String {
    format!("p50 {a:.1} ms, p95 {b:.1} ms, max {c:.1} ms")
}

fn metrics_line(m: &Metrics) -> String {
    format!(
        "top-1 {:.1} % among {} candidates (chance {:.1} %, {:.1}x), two-way PixCorr {:.1} %, SSIM {:.1} % (chance 50 %); mean PixCorr {:.3}, SSIM {:.3}",
        100.0 * m.top1,
        m.candidates,
        100.0 * m.chance,
        m.top1 / m.chance.max(1e-12),
        100.0 * m.two_way_pixcorr,
        100.0 * m.two_way_ssim,
        m.mean_pixcorr,
        m.mean_ssim
    )
}

fn print_report(r: &DemoReport, base: &Path) {
    let s = &r.pipeline;
    println!();
    println!("== demo summary");
    println!(
        "calibration: {} trials, adapter on {} of {} region voxels (threshold {}), cross-validated R² {:.3}; {:.1} s in all",
        r.calibration_trials,
        r.calibration.selected,
        r.calibration.region_voxels,
        r.calibration
            .threshold
            .map_or_else(|| "none".to_string(), |t| t.to_string()),
        r.calibration.cv_r2,
        r.seconds.0
    );
    if let Some((deg, mm)) = r.cross_session_error {
        println!(
            "cross-session registration onto the calibration grid: error {deg:.3} deg, {mm:.3} mm against the simulated head pose"
        );
    }
    println!(
        "live: files written {}; volumes realigned {} (late {}), missing {}, duplicates {}, quarantined {}, realign failures {}",
        r.files_written,
        s.realigned,
        s.ingest.late,
        s.ingest.missing,
        s.ingest.duplicates,
        s.ingest.quarantined,
        s.realign_failed
    );
    println!(
        "motion vs simulator truth: RMS error {:.3} deg, {:.3} mm; file seen -> realigned {}",
        r.rms_error.0,
        r.rms_error.1,
        fmt3(r.latency_ms)
    );
    println!(
        "decoded runs: {} trials ({} images), {} betas, {} retrieved, {} reconstructed, {} skipped",
        r.trials, r.image_trials, r.betas, r.decoded, r.reconstructed, r.skipped
    );
    for (run, m) in &r.runs {
        println!("  run {run}: {}", metrics_line(m));
    }
    println!("  session: {}", metrics_line(&r.session));
    println!(
        "  trigger volume seen -> retrieval {}; -> reconstruction {}",
        fmt3(r.session.retrieval_ms),
        fmt3(r.session.reconstruction_ms)
    );
    if !r.learning_curve.is_empty() {
        println!(
            "learning curve (live session decoded with adapters fitted on part of the calibration):"
        );
        for (label, n, m) in &r.learning_curve {
            println!("  {label:>5} ({n:>3} trials): {}", metrics_line(m));
        }
    }
    println!(
        "took {:.0} s: calibration {:.0} s, live session {:.0} s, report {:.0} s",
        r.seconds.0 + r.seconds.1 + r.seconds.2,
        r.seconds.0,
        r.seconds.1,
        r.seconds.2
    );
    println!("report: {}", r.report.display());
    if let Some(addr) = r.dashboard {
        println!(
            "dashboard: was live at {} during the live session (it closes with it)",
            dashboard_url(addr)
        );
    }
    println!("subject folder: {}", r.calibration.dir.display());
    println!("session folder: {}", s.session_dir.display());
    println!("simulator truth: {}", base.join("truth").display());
}
