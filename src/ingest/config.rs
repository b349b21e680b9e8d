//! Ingest settings.
//!
//! In: a `[ingest]` TOML table (or [`IngestConfig::new`] plus field edits).
//! Out: [`IngestConfig`], checked by [`IngestConfig::validate`] before the
//! stage starts. Durations are given in seconds (`f64`) so that a config
//! file reads `gap_timeout = 3.0` rather than a nested struct.
//!
//! ```toml
//! watch_dir = "/mnt/scanner/export"   # the only required field
//! mode = "auto"                        # auto | events | poll
//! naming = "siemens"                   # auto | bids | siemens | a regex
//! partial_timeout = 10.0
//! reorder_window = 2
//! gap_timeout = 3.0
//! volumes_per_run = 300
//! quarantine_dir = "/data/session/quarantine"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::IngestError;

/// How the export folder is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Native file-system events, cross-checked by a periodic directory
    /// scan; switches to polling when the scan finds files the native
    /// watcher never reported (network shares give no inotify events).
    #[default]
    Auto,
    /// Native file-system events only (falls back to polling only when the
    /// native watcher cannot be created).
    Events,
    /// Poll the folder every `poll_interval`.
    Poll,
}

/// Where native file-system events come from. Not part of the TOML
/// configuration: a hook so that tests can emulate a network share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventSource {
    /// The operating system's watcher (inotify, FSEvents, ...).
    #[default]
    Os,
    /// A watcher that never reports anything, like inotify on an SMB/NFS
    /// mount. Only `auto` mode's periodic scan can notice files then.
    Silent,
    /// A watcher that cannot be created (inotify watch limit reached, say):
    /// ingest falls back to polling.
    Broken,
}

/// Settings of the ingest stage. Every field but `watch_dir` has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// The folder the scanner exports into (watched non-recursively).
    pub watch_dir: PathBuf,

    /// `auto` (default), `events` or `poll`.
    #[serde(default)]
    pub mode: WatchMode,

    /// Polling period in seconds for `poll` mode and after `auto` falls
    /// back to polling. Default 0.1.
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: f64,

    /// How often `auto` mode scans the folder to check that the native
    /// watcher reports what is there, in seconds. Default 1.0.
    #[serde(default = "defaults::scan_interval")]
    pub scan_interval: f64,

    /// How long a file found by the `auto` scan may stay unreported by the
    /// native watcher before ingest concludes the watcher is blind and
    /// switches to polling, in seconds. Default 2.0.
    #[serde(default = "defaults::events_grace")]
    pub events_grace: f64,

    /// File-name rule: `"auto"` (default: try `bids`, then `siemens`, then a
    /// trailing number as the volume of run 1), `"bids"`
    /// (`run-01_vol-0012` anywhere in the name), `"siemens"`
    /// (`001_000007_000012.nii`: session_series_volume, series = run), or a
    /// regular expression with named groups `vol` and optionally `run`
    /// (run 1 when absent), matched against the whole file name.
    #[serde(default = "defaults::naming")]
    pub naming: String,

    /// How long a file may stay unchanged (size and mtime) while still
    /// failing to decode before it is quarantined, in seconds. A file that
    /// keeps changing is never quarantined. Default 10.0.
    #[serde(default = "defaults::partial_timeout")]
    pub partial_timeout: f64,

    /// Period between decode attempts of a file that is not complete yet,
    /// in seconds. Default 0.05.
    #[serde(default = "defaults::retry_interval")]
    pub retry_interval: f64,

    /// How many later volumes of a run may wait for a missing one before
    /// it is declared missing. Default 2.
    #[serde(default = "defaults::reorder_window")]
    pub reorder_window: u32,

    /// How long the first later volume may wait for a missing one before it
    /// is declared missing, in seconds. Default 3.0.
    #[serde(default = "defaults::gap_timeout")]
    pub gap_timeout: f64,

    /// Index of the first volume of every run. Default: from the naming
    /// rule (`bids` names start at 0, `siemens` and trailing-number names
    /// at 1, a custom regex at 0).
    #[serde(default)]
    pub first_index: Option<u32>,

    /// Volumes per run, when known: the run ends as soon as all of them are
    /// accounted for, and missing ones at the end are declared when the
    /// run ends. Default: unknown.
    #[serde(default)]
    pub volumes_per_run: Option<u32>,

    /// A run with no new file for this long is ended, in seconds.
    /// Default 60.0.
    #[serde(default = "defaults::run_idle_timeout")]
    pub run_idle_timeout: f64,

    /// Where unreadable or invalid files are moved. Default:
    /// `<watch_dir>/quarantine`.
    #[serde(default)]
    pub quarantine_dir: Option<PathBuf>,

    /// File-name endings taken as volumes (case-insensitive). Default
    /// `[".nii", ".nii.gz", ".dcm", ".ima"]`: `.nii`/`.nii.gz` are NIfTI,
    /// every other suffix DICOM. Every other file is ignored, with one log
    /// line per distinct extension.
    #[serde(default = "defaults::suffixes")]
    pub suffixes: Vec<String>,

    /// Also take files without an extension (`IM0001`, or UID names such
    /// as `MR.1.3.12.2…`) as DICOM. Default true.
    #[serde(default = "defaults::extensionless_dicom")]
    pub extensionless_dicom: bool,

    /// Tolerance in mm when checking that a volume's grid matches its
    /// run's (dimensions equal, affine entries within this). Default 1e-3.
    #[serde(default = "defaults::grid_tolerance_mm")]
    pub grid_tolerance_mm: f64,

    /// Where native events come from; tests set [`EventSource::Silent`].
    #[serde(skip)]
    pub event_source: EventSource,
}

mod defaults {
    use std::path::PathBuf;

    pub fn poll_interval() -> f64 {
        0.1
    }
    pub fn scan_interval() -> f64 {
        1.0
    }
    pub fn events_grace() -> f64 {
        2.0
    }
    pub fn naming() -> String {
        "auto".into()
    }
    pub fn partial_timeout() -> f64 {
        10.0
    }
    pub fn retry_interval() -> f64 {
        0.05
    }
    pub fn reorder_window() -> u32 {
        2
    }
    pub fn gap_timeout() -> f64 {
        3.0
    }
    pub fn run_idle_timeout() -> f64 {
        60.0
    }
    pub fn suffixes() -> Vec<String> {
        vec![
            ".nii".into(),
            ".nii.gz".into(),
            ".dcm".into(),
            ".ima".into(),
        ]
    }
    pub fn extensionless_dicom() -> bool {
        true
    }
    pub fn grid_tolerance_mm() -> f64 {
        1e-3
    }
    pub fn quarantine_dir(watch_dir: &std::path::Path) -> PathBuf {
        watch_dir.join("quarantine")
    }
}

impl IngestConfig {
    /// Defaults for everything, watching `watch_dir`.
    pub fn new(watch_dir: impl Into<PathBuf>) -> IngestConfig {
        IngestConfig {
            watch_dir: watch_dir.into(),
            mode: WatchMode::default(),
            poll_interval: defaults::poll_interval(),
            scan_interval: defaults::scan_interval(),
            events_grace: defaults::events_grace(),
            naming: defaults::naming(),
            partial_timeout: defaults::partial_timeout(),
            retry_interval: defaults::retry_interval(),
            reorder_window: defaults::reorder_window(),
            gap_timeout: defaults::gap_timeout(),
            first_index: None,
            volumes_per_run: None,
            run_idle_timeout: defaults::run_idle_timeout(),
            quarantine_dir: None,
            suffixes: defaults::suffixes(),
            extensionless_dicom: defaults::extensionless_dicom(),
            grid_tolerance_mm: defaults::grid_tolerance_mm(),
            event_source: EventSource::default(),
        }
    }

    /// Parse a TOML table holding these fields.
    pub fn from_toml(text: &str) -> Result<IngestConfig, IngestError> {
        toml::from_str(text).map_err(|e| IngestError::Config(e.to_string()))
    }

    /// The quarantine folder, defaulted.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.quarantine_dir
            .clone()
            .unwrap_or_else(|| defaults::quarantine_dir(&self.watch_dir))
    }

    /// Check the values; every problem is named.
    pub fn validate(&self) -> Result<(), IngestError> {
        let positive = [
            ("poll_interval", self.poll_interval),
            ("scan_interval", self.scan_interval),
            ("retry_interval", self.retry_interval),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                return Err(IngestError::Config(format!(
                    "{name} = {v} s: must be greater than 0 and at most 3600"
                )));
            }
        }
        let non_negative = [
            ("events_grace", self.events_grace),
            ("partial_timeout", self.partial_timeout),
            ("gap_timeout", self.gap_timeout),
            ("run_idle_timeout", self.run_idle_timeout),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && (0.0..=1e6).contains(&v)) {
                return Err(IngestError::Config(format!(
                    "{name} = {v} s: must be between 0 and 1e6"
                )));
            }
        }
        if !(self.grid_tolerance_mm.is_finite() && self.grid_tolerance_mm >= 0.0) {
            return Err(IngestError::Config(format!(
                "grid_tolerance_mm = {}: must be a non-negative number",
                self.grid_tolerance_mm
            )));
        }
        if self.volumes_per_run == Some(0) {
            return Err(IngestError::Config(
                "volumes_per_run = 0: a run needs at least one volume".into(),
            ));
        }
        if self.suffixes.is_empty() || self.suffixes.iter().any(|s| s.trim().is_empty()) {
            return Err(IngestError::Config(format!(
                "suffixes = {:?}: needs at least one non-empty suffix",
                self.suffixes
            )));
        }
        super::naming::Naming::from_config(&self.naming)?;
        Ok(())
    }

    pub(crate) fn secs(v: f64) -> Duration {
        Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_only_the_folder_takes_the_documented_defaults() {
        let c = IngestConfig::from_toml("watch_dir = \"/data/export\"").unwrap();
        assert_eq!(c.watch_dir, PathBuf::from("/data/export"));
        assert_eq!(c.mode, WatchMode::Auto);
        assert_eq!(c.poll_interval, 0.1);
        assert_eq!(c.partial_timeout, 10.0);
        assert_eq!(c.retry_interval, 0.05);
        assert_eq!(c.reorder_window, 2);
        assert_eq!(c.gap_timeout, 3.0);
        assert_eq!(c.run_idle_timeout, 60.0);
        assert_eq!(c.first_index, None);
        assert_eq!(c.naming, "auto");
        assert_eq!(c.suffixes, vec![".nii", ".nii.gz", ".dcm", ".ima"]);
        assert!(c.extensionless_dicom);
        assert_eq!(c.quarantine_dir(), PathBuf::from("/data/export/quarantine"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_or_bad_values() {
        let c = IngestConfig::from_toml(
            "watch_dir = \"x\"\nmode = \"poll\"\npartial_timeout = 0.3\nfirst_index = 1\n\
             naming = \"siemens\"\nquarantine_dir = \"/q\"",
        )
        .unwrap();
        assert_eq!(c.mode, WatchMode::Poll);
        assert_eq!(c.partial_timeout, 0.3);
        assert_eq!(c.first_index, Some(1));
        assert_eq!(c.quarantine_dir(), PathBuf::from("/q"));
        assert!(IngestConfig::from_toml("watch_dir = \"x\"\npartial_timout = 1.0").is_err());
        assert!(IngestConfig::from_toml("watch_dir = \"x\"\nmode = \"inotify\"").is_err());
        let mut bad = IngestConfig::new("x");
        bad.retry_interval = 0.0;
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains("retry_interval"), "{msg}");
        let mut bad = IngestConfig::new("x");
        bad.naming = "(?P<run>\\d+)".into();
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains("vol"), "{msg}");
    }
}
