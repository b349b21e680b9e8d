//! Prometheus metrics: counters and per-stage latency histograms.
//!
//! In: feed messages and beta events, as the hub sees them; the servers'
//! client counts. Out: the text exposition format at `/metrics`.
//!
//! The metric handles are atomics shared with the servers (that is what
//! Prometheus clients are built for); only the hub and the servers write them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label with one value: `{stage="realign"}`, `{status="late"}`…
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// The value.
    pub name: &'static str,
}

fn histogram() -> Histogram {
    // 0.25 ms … ~33 s: volume steps take milliseconds, reconstructions seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Volumes by outcome: `realigned`, `late`, `missing`, `quarantined`,
    /// `duplicate`, `realign_failed`.
    pub volumes: Family<VolumeLabel, Counter>,
    /// Volumes with FD over the threshold.
    pub fd_over: Counter,
    /// Trials by outcome: `beta`, `beta_skipped`, `decoded`, `reconstructed`,
    /// `decode_skipped`, `reconstruction_skipped`.
    pub trials: Family<TrialLabel, Counter>,
    /// Seconds per stage.
    pub stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Runs started.
    pub runs: Counter,
    /// Connected clients, by surface (`sse`, `tcp`; `udp`: targets).
    pub clients: Family<SurfaceLabel, Gauge>,
    /// Messages a slow client missed (it fell too far behind), by surface.
    pub dropped: Family<SurfaceLabel, Counter>,
    /// Malformed requests answered with an error, by surface.
    pub bad_requests: Family<SurfaceLabel, Counter>,
    /// Result files that could not be written.
    pub result_errors: Counter,
}

/// `{status="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabel {
    /// Outcome.
    pub status: &'static str,
}

/// `{outcome="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrialLabel {
    /// Outcome.
    pub outcome: &'static str,
}

/// `{stage="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Stage.
    pub stage: &'static str,
}

/// `{surface="…"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SurfaceLabel {
    /// `sse`, `tcp` or `udp`.
    pub surface: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("boldstream");
        let volumes = Family::<VolumeLabel, Counter>::default();
        let fd_over = Counter::default();
        let trials = Family::<TrialLabel, Counter>::default();
        let stage_seconds =
            Family::<StageLabel, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let runs = Counter::default();
        let clients = Family::<SurfaceLabel, Gauge>::default();
        let dropped = Family::<SurfaceLabel, Counter>::default();
        let bad_requests = Family::<SurfaceLabel, Counter>::default();
        let result_errors = Counter::default();
        registry.register("volumes", "Volumes by outcome", volumes.clone());
        registry.register(
            "fd_over_threshold",
            "Volumes whose framewise displacement exceeded the threshold",
            fd_over.clone(),
        );
        registry.register("trials", "Trials by outcome", trials.clone());
        registry.register(
            "stage_seconds",
            "Seconds per pipeline stage (read, reorder, queue, realign, volume: file seen to realigned; glm: beta estimation; beta: trigger to beta; retrieval and reconstruction: trigger to result)",
            stage_seconds.clone(),
        );
        registry.register("runs", "Runs started", runs.clone());
        registry.register(
            "clients",
            "Connected dashboard (sse) and feedback (tcp) clients, and UDP targets (udp)",
            clients.clone(),
        );
        registry.register(
            "feed_dropped",
            "Feed messages slow clients missed",
            dropped.clone(),
        );
        registry.register(
            "bad_requests",
            "Malformed client requests answered with an error",
            bad_requests.clone(),
        );
        registry.register(
            "result_file_errors",
            "Per-trial result files that could not be written",
            result_errors.clone(),
        );
        Metrics {
            registry,
            volumes,
            fd_over,
            trials,
            stage_seconds,
            runs,
            clients,
            dropped,
            bad_requests,
            result_errors,
        }
    }

    /// Count a volume outcome.
    pub fn volume(&self, status: &'static str) {
        self.volumes.get_or_create(&VolumeLabel { status }).inc();
    }

    /// Count a trial outcome.
    pub fn trial(&self, outcome: &'static str) {
        self.trials.get_or_create(&TrialLabel { outcome }).inc();
    }

    /// Record a stage's duration.
    pub fn stage(&self, stage: &'static str, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.stage_seconds
                .get_or_create(&StageLabel { stage })
                .observe(seconds);
        }
    }

    /// The gauge of connected clients of a surface.
    pub fn clients(&self, surface: &'static str) -> Gauge {
        self.clients
            .get_or_create(&SurfaceLabel { surface })
            .clone()
    }

    /// Count messages a client of `surface` missed.
    pub fn dropped(&self, surface: &'static str, n: u64) {
        self.dropped
            .get_or_create(&SurfaceLabel { surface })
            .inc_by(n);
    }

    /// Count a malformed request on `surface`.
    pub fn bad_request(&self, surface: &'static str) {
        self.bad_requests
            .get_or_create(&SurfaceLabel { surface })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}
