//! Operator and stimulus-program surfaces: the live dashboard, the feedback
//! protocol, metrics and per-trial result files.
//!
//! In: the pipeline's events, through one reliable outlet. Out:
//! - [`hub`]: owns the session's live state; publishes [`feed`] messages;
//! - [`results`]: per-trial JSON + PNG files in a folder (for pollers);
//! - [`http`]: the dashboard page, its server-sent-event stream, a JSON
//!   snapshot and Prometheus `/metrics` ([`metrics`]);
//! - [`protocol`]: line-oriented JSON over TCP (request/response and
//!   subscribe) and UDP datagrams (fire-and-forget).
//!
//! Network-facing parts run on their own small async runtime; the hub runs on
//! its own thread. Nothing here can hold the pipeline up: the hub never
//! waits for a client, and a client that falls behind misses messages (it is
//! told how many) rather than slowing anyone else.

pub mod feed;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod results;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use hub::{Hub, HubConfig, HubHandle, Request};

/// `[serve]`: where the dashboard, feedback protocol and result files go.
///
/// ```toml
/// [serve]
/// http = "127.0.0.1:8080"       # dashboard, /events (SSE), /api/state, /metrics
/// feedback = "127.0.0.1:5011"   # TCP line protocol (request/response, subscribe)
/// udp_targets = ["127.0.0.1:5012"]   # every feed message as a datagram
/// udp_topics = ["volume", "trial"]   # default: all
/// backlog = 4096                # messages a client may fall behind
/// results = true                # per-trial files in results_dir
/// results_dir = "results"       # default <session>/results
/// stimuli = "stimuli"           # <image_id>.png shown beside reconstructions
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Dashboard address (off when absent). Use a loopback address unless
    /// the control-room network is trusted: there is no authentication.
    pub http: Option<String>,
    /// Feedback protocol TCP address (off when absent).
    pub feedback: Option<String>,
    /// Send every feed message of `udp_topics` to these addresses.
    pub udp_targets: Vec<String>,
    /// Which topics go to the UDP targets (default: all).
    pub udp_topics: Vec<feed::Topic>,
    /// Write per-trial result files.
    pub results: bool,
    /// Where (default `<session>/results`).
    pub results_dir: Option<PathBuf>,
    /// Stimulus images, `<image_id>.png`, for the dashboard's trial list.
    pub stimuli: Option<PathBuf>,
    /// Volumes a newly connected dashboard gets for its plots.
    pub history: usize,
    /// Messages a client may fall behind before it misses some.
    pub backlog: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            http: None,
            feedback: None,
            udp_targets: Vec::new(),
            udp_topics: Vec::new(),
            results: true,
            results_dir: None,
            stimuli: None,
            history: 5000,
            backlog: 4096,
        }
    }
}

impl ServeConfig {
    /// Make relative paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.results_dir, &mut self.stimuli]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Why a surface could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An address could not be bound.
    #[error("{what} on {addr}: {source}")]
    Bind {
        /// `dashboard`, `feedback` or `udp`.
        what: &'static str,
        /// The configured address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime or the results folder could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The running network surfaces (the hub runs on the pipeline's sink thread).
pub struct Serve {
    hub: HubHandle,
    runtime: Option<tokio::runtime::Runtime>,
    http_server: Option<tokio::task::JoinHandle<()>>,
    http_addr: Option<SocketAddr>,
    feedback_addr: Option<SocketAddr>,
}

/// How long [`Serve::stop`] lets clients write out the session's last
/// messages before closing them regardless.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Serve {
    /// Build the hub and start the configured servers. The caller runs
    /// [`Hub::run`] with the returned hub and request receiver on a thread
    /// of its own, feeding it the pipeline's events.
    pub fn start(
        config: &ServeConfig,
        session_dir: &Path,
        fd_threshold_mm: f64,
    ) -> Result<(Serve, Hub, crossbeam_channel::Receiver<Request>), ServeError> {
        let results_dir = config.results.then(|| {
            config
                .results_dir
                .clone()
                .unwrap_or_else(|| session_dir.join("results"))
        });
        let (hub, handle, requests) = Hub::new(HubConfig {
            session_dir: session_dir.to_path_buf(),
            fd_threshold_mm,
            results_dir: results_dir.clone(),
            stimuli: config.stimuli.clone(),
            history: config.history,
            backlog: config.backlog,
        })
        .map_err(|source| ServeError::Setup {
            what: format!(
                "results folder {}",
                results_dir.unwrap_or_default().display()
            ),
            source,
        })?;
        let needs_runtime =
            config.http.is_some() || config.feedback.is_some() || !config.udp_targets.is_empty();
        if !needs_runtime {
            return Ok((
                Serve {
                    hub: handle,
                    runtime: None,
                    http_server: None,
                    http_addr: None,
                    feedback_addr: None,
                },
                hub,
                requests,
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("serve")
            .enable_all()
            .build()
            .map_err(|source| ServeError::Setup {
                what: "the network runtime".into(),
                source,
            })?;
        let (http_addr, http_server) = match &config.http {
            Some(addr) => {
                let (bound, server) =
                    http::start(&runtime, addr, handle.clone()).map_err(|source| {
                        ServeError::Bind {
                            what: "dashboard",
                            addr: addr.clone(),
                            source,
                        }
                    })?;
                (Some(bound), Some(server))
            }
            None => (None, None),
        };
        let feedback_addr = match &config.feedback {
            Some(addr) => Some(protocol::start_tcp(&runtime, addr, handle.clone()).map_err(
                |source| ServeError::Bind {
                    what: "feedback",
                    addr: addr.clone(),
                    source,
                },
            )?),
            None => None,
        };
        if !config.udp_targets.is_empty() {
            let topics = if config.udp_topics.is_empty() {
                feed::Topic::ALL.to_vec()
            } else {
                config.udp_topics.clone()
            };
            protocol::start_udp(&runtime, &config.udp_targets, topics, handle.clone()).map_err(
                |source| ServeError::Bind {
                    what: "udp",
                    addr: config.udp_targets.join(","),
                    source,
                },
            )?;
        }
        Ok((
            Serve {
                hub: handle,
                runtime: Some(runtime),
                http_server,
                http_addr,
                feedback_addr,
            },
            hub,
            requests,
        ))
    }

    /// How to reach the hub (its metrics, snapshots, subscriptions).
    pub fn hub(&self) -> &HubHandle {
        &self.hub
    }

    /// The dashboard's bound address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The feedback protocol's bound address.
    pub fn feedback_addr(&self) -> Option<SocketAddr> {
        self.feedback_addr
    }

    /// Close every connection and stop serving. Called once the hub has
    /// stopped: the dashboard's event streams end cleanly and feedback
    /// clients get what was published (each a bounded wait, so a subscriber
    /// sees the session's last messages), then everything else is dropped.
    pub fn stop(mut self) {
        if let (Some(rt), Some(server)) = (self.runtime.as_ref(), self.http_server.take()) {
            // The timer needs the runtime's context: build it inside.
            let _ = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(2), server).await
            });
        }
        if let Some(rt) = self.runtime.take() {
            let hub = self.hub.clone();
            rt.block_on(async {
                let _ = tokio::time::timeout(DRAIN, hub.drained()).await;
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
