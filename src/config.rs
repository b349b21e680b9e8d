//! The daemon's configuration file (TOML).
//!
//! In: the text of a config file. Out: [`Config`] with every stage's
//! settings, defaults filled in and relative paths resolved against the
//! config file's folder (so a service's config can sit beside its data).
//!
//! ```toml
//! [session]
//! dir = "sessions/sub-01"        # default: sessions/<UTC date-time>
//! resume = "auto"                # auto | never: a folder that holds a session
//!
//! [ingest]
//! watch_dir = "/mnt/scanner/export"
//! mode = "auto"                  # auto | events | poll
//! naming = "auto"                # auto | bids | siemens | a regex with (?P<run>…)(?P<vol>…)
//! volumes_per_run = 192
//!
//! [realign]
//! fd_threshold_mm = 0.5
//!
//! [buffer]
//! capacity = 600
//!
//! [decode]
//! model = "onnx/demo"
//! subject = "onnx/demo/subject-sim01"
//! device = "auto"                # auto | cpu | cuda | tensorrt
//! policy = "queue"               # queue | keep_latest | skip
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decode::DecodeConfig;
use crate::glm::buffer::BufferConfig;
use crate::glm::spec::GlmConfig;
use crate::ingest::IngestConfig;
use crate::realign::RealignConfig;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid configuration.
    #[error("config {where_}: {message}")]
    Parse {
        /// File name (or "text").
        where_: String,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// `[session]`: where this session's outputs go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Session folder; default `sessions/<UTC date-time>` under the current
    /// directory.
    pub dir: Option<PathBuf>,
    /// A folder that already holds a session: `auto` continues it (when
    /// its settings are compatible), `never` refuses to start.
    pub resume: ResumePolicy,
}

/// `[console]`: the live terminal output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Print a line per volume to stdout.
    pub enabled: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { enabled: true }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Session folder.
    #[serde(default)]
    pub session: SessionConfig,
    /// Watching and reading the export folder.
    pub ingest: IngestConfig,
    /// Motion correction.
    #[serde(default)]
    pub realign: RealignConfig,
    /// Ring buffers.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Single-trial betas and per-volume feedback.
    #[serde(default)]
    pub glm: GlmConfig,
    /// Retrieval and reconstruction (off without a model folder).
    #[serde(default)]
    pub decode: DecodeConfig,
    /// Terminal output.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Dashboard, feedback protocol, metrics and result files.
    #[serde(default)]
    pub serve: crate::serve::ServeConfig,
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

fn resolve_opt(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(p) = p.as_mut() {
        resolve(base, p);
    }
}

impl Config {
    /// Parse config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            where_: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Every stage at its defaults, watching `ingest`'s folder, the session
    /// in `session_dir`, no console: for embedding the pipeline (tests,
    /// tools), with the stages that matter set by struct update.
    pub fn embedded(ingest: IngestConfig, session_dir: &Path) -> Config {
        Config {
            session: SessionConfig {
                dir: Some(session_dir.to_path_buf()),
                ..Default::default()
            },
            ingest,
            realign: Default::default(),
            buffer: Default::default(),
            glm: Default::default(),
            decode: Default::default(),
            console: ConsoleConfig { enabled: false },
            serve: Default::default(),
        }
    }

    /// Read and parse a config file, resolving relative paths against its folder.
    pub fn load(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string())?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok((config, text))
    }

    /// Make every relative path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve_opt(base, &mut self.session.dir);
        resolve(base, &mut self.ingest.watch_dir);
        resolve_opt(base, &mut self.ingest.quarantine_dir);
        resolve_opt(base, &mut self.realign.reference);
        resolve_opt(base, &mut self.realign.mask);
        resolve_opt(base, &mut self.realign.target_grid);
        for p in &mut self.glm.events {
            resolve(base, p);
        }
        resolve_opt(base, &mut self.glm.zscore_stats);
        for r in &mut self.glm.feedback.rois {
            resolve(base, &mut r.mask);
        }
        for d in &mut self.glm.feedback.decoders {
            resolve(base, &mut d.weights);
        }
        self.decode.resolve_paths(base);
        self.serve.resolve_paths(base);
    }

    /// The session folder: configured, or `sessions/<UTC date-time>`.
    pub fn session_dir(&self) -> PathBuf {
        self.session
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("sessions").join(timestamp()))
    }
}

/// Current UTC time as `YYYYMMDD-HHMMSS`, for folder names.
pub fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let c = Config::from_toml(include_str!("../systemd/boldstream.toml"), "example").unwrap();
        assert_eq!(c.decode.policy, crate::decode::schedule::ReconPolicy::Queue);
        assert_eq!(c.decode.max_queue, 16);
        assert!(!c.decode.enabled());
        // The dashboard is on, and on loopback only.
        assert_eq!(c.serve.http.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(c.serve.feedback.as_deref(), Some("127.0.0.1:5011"));
        assert!(c.serve.results);
    }

    #[test]
    fn minimal_config_gets_defaults_and_paths_resolve() {
        let mut c = Config::from_toml("[ingest]\nwatch_dir = \"export\"\n", "test").unwrap();
        c.resolve_paths(Path::new("/srv/bold"));
        assert_eq!(c.ingest.watch_dir, PathBuf::from("/srv/bold/export"));
        assert_eq!(c.buffer.capacity, 600);
        assert!(c.console.enabled);
        assert_eq!(c.realign.fd_radius_mm, 50.0);
        assert!(c.session_dir().starts_with("sessions"));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors_with_a_location() {
        let e = Config::from_toml(
            "[ingest]\nwatch_dir = \"x\"\n[realign]\nfd_radius = 3\n",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.toml") && e.contains("fd_radius"), "{e}");
        let e = Config::from_toml("[ingest]\nwatch_dir = 5\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}

/// `[session] resume`: what a start does with a folder that already holds
/// a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumePolicy {
    /// Continue it when its configuration is compatible; refuse otherwise.
    #[default]
    Auto,
    /// Refuse to start in a folder that holds a session.
    Never,
}
