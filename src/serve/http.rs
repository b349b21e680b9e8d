//! The dashboard over HTTP.
//!
//! In: the hub. Out, on the configured address:
//! - `/` the dashboard page (one self-contained HTML file compiled into the
//!   binary: no CDN, nothing fetched from elsewhere), and its `/favicon.svg`;
//! - `/events` server-sent events: first a `snapshot` event (the session so
//!   far), then every feed message as an unnamed event whose `id` is its
//!   sequence number. A client that falls more than the backlog behind gets
//!   a `lagged` event (`{"missed": n}`) followed by a fresh `snapshot`, so
//!   it re-syncs instead of drifting. Comments keep idle connections alive;
//! - `/api/state` the snapshot as JSON;
//! - `/metrics` Prometheus (OpenMetrics) text;
//! - `/recon/run-NN_trial-NNN.png` a reconstruction, from the hub's
//!   reconstruction folder;
//! - `/stimulus/<id>.png` a stimulus image, from `[serve] stimuli`;
//! - anything else: 404 with a plain-text list of what exists.
//!
//! File routes accept only the names above (letters, digits, `_`, `-`,
//! `.`; no leading dot, no `..`), so a request can never leave its folder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::broadcast::{self, error::RecvError};

use super::hub::{HubHandle, Published};

/// The page, compiled in.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// Idle connections get a comment this often, so proxies and browsers keep
/// them open between volumes (and notice a dead daemon).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Everything on the page comes from this server; the policy makes that a
/// guarantee rather than a habit.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'";

const NOT_FOUND: &str = "The dashboard serves: / (the page), /events (server-sent events), \
                         /api/state (JSON), /metrics (Prometheus), \
                         /recon/run-NN_trial-NNN.png, /stimulus/<id>.png\n";

/// Bind `addr` and serve on `rt`; the bound address comes back, and the
/// server's task, which ends once the hub has stopped and every open
/// event stream has been closed cleanly (so browsers see the stream end,
/// not a broken connection).
pub fn start(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    hub: HubHandle,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let closed = hub.closed();
    let app = router(hub);
    let server = rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(closed)
            .await
        {
            tracing::error!("dashboard server stopped: {e}");
        }
    });
    Ok((local, server))
}

/// The routes, on `hub`.
pub fn router(hub: HubHandle) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/favicon.svg", get(favicon))
        .route("/events", get(events))
        .route("/api/state", get(state))
        .route("/metrics", get(metrics))
        .route("/recon/{file}", get(recon))
        .route("/stimulus/{file}", get(stimulus))
        .fallback(not_found)
        .with_state(hub)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        DASHBOARD_HTML,
    )
}

/// A dot in the verdict's green, so the tab is findable among others.
async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
         <circle cx=\"8\" cy=\"8\" r=\"7\" fill=\"#1a9e3a\"/></svg>",
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!("not found: {}\n{NOT_FOUND}", uri.path()),
    )
}

async fn state(State(hub): State<HubHandle>) -> Response {
    match hub.snapshot().await {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            json,
        )
            .into_response(),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn metrics(State(hub): State<HubHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics.encode(),
    )
}

/// A file name made only of safe characters, not hidden, no `..`: joined
/// to a folder it stays in that folder.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `run-NN_trial-NNN.png`, the only names reconstructions have.
fn recon_name(name: &str) -> bool {
    let digits = |s: &str, min: usize| s.len() >= min && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("run-")
        .and_then(|s| s.strip_suffix(".png"))
        .and_then(|s| s.split_once("_trial-"))
        .is_some_and(|(run, trial)| digits(run, 2) && digits(trial, 3))
}

/// A PNG from `dir`; `cache` is its Cache-Control (stimuli do not change
/// during a session; a reconstruction's name recurs in the next session).
async fn png(dir: &Path, name: &str, what: &str, cache: &'static str) -> Response {
    let path: PathBuf = dir.join(name);
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || std::fs::read(path)).await
    };
    match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, cache),
            ],
            bytes,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text(StatusCode::NOT_FOUND, format!("no {what} {name}\n"))
        }
        Err(e) => {
            tracing::warn!("dashboard: reading {}: {e}", path.display());
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{what} {name} could not be read\n"),
            )
        }
    }
}

async fn recon(State(hub): State<HubHandle>, UrlPath(file): UrlPath<String>) -> Response {
    if !recon_name(&file) || !safe_name(&file) {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: /recon/{file}\nreconstructions are named run-NN_trial-NNN.png\n"),
        );
    }
    png(&hub.recon_dir, &file, "reconstruction", "no-cache").await
}

async fn stimulus(State(hub): State<HubHandle>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(dir) = hub.stimuli.as_deref() else {
        return text(
            StatusCode::NOT_FOUND,
            "no stimulus images: [serve] stimuli is not set\n".into(),
        );
    };
    if !file.ends_with(".png") || !safe_name(&file) {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: /stimulus/{file}\nstimuli are <image_id>.png\n"),
        );
    }
    png(dir, &file, "stimulus", "max-age=600").await
}

/// One item of a dashboard client's stream, before SSE framing.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// The session so far (JSON); everything after it follows.
    Snapshot(String),
    /// A feed message.
    Message(Arc<Published>),
    /// The client fell behind and missed this many messages; a fresh
    /// snapshot follows.
    Lagged(u64),
}

/// Decrements the `sse` client gauge when the client's stream is dropped
/// (the connection closed, or the server stopped).
struct ClientGuard(Gauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct FeedState {
    hub: HubHandle,
    rx: broadcast::Receiver<Arc<Published>>,
    next: Option<String>,
    _client: ClientGuard,
}

/// A dashboard client's stream: the snapshot, then every message; after a
/// lag, `Lagged` and a fresh snapshot. Counted as an `sse` client while it
/// lives. Ends when the hub is gone.
pub async fn feed(
    hub: HubHandle,
) -> Result<impl Stream<Item = FeedItem> + Send + 'static, super::hub::HubError> {
    let (snapshot, rx) = hub.subscribe().await?;
    let gauge = hub.metrics.clients("sse");
    gauge.inc();
    let state = FeedState {
        hub,
        rx,
        next: Some(snapshot),
        _client: ClientGuard(gauge),
    };
    Ok(futures_util::stream::unfold(state, |mut st| async move {
        if let Some(snapshot) = st.next.take() {
            return Some((FeedItem::Snapshot(snapshot), st));
        }
        let received = tokio::select! {
            // Everything published before the hub stopped is delivered
            // first; then the stream ends.
            biased;
            r = st.rx.recv() => r,
            () = st.hub.closed() => return None,
        };
        match received {
            Ok(p) => Some((FeedItem::Message(p), st)),
            Err(RecvError::Lagged(n)) => {
                st.hub.metrics.dropped("sse", n);
                // A new subscription rather than reading on: the old
                // receiver's position is past messages the client never
                // saw, and only a snapshot can account for them.
                let (snapshot, rx) = st.hub.subscribe().await.ok()?;
                st.rx = rx;
                st.next = Some(snapshot);
                Some((FeedItem::Lagged(n), st))
            }
            Err(RecvError::Closed) => None,
        }
    }))
}

fn sse_event(item: FeedItem) -> Result<Event, Infallible> {
    Ok(match item {
        FeedItem::Snapshot(json) => Event::default().event("snapshot").data(json),
        FeedItem::Message(p) => Event::default().id(p.seq.to_string()).data(&p.json),
        FeedItem::Lagged(n) => Event::default()
            .event("lagged")
            .data(format!("{{\"missed\":{n}}}")),
    })
}

async fn events(State(hub): State<HubHandle>) -> Response {
    match feed(hub).await {
        Ok(stream) => {
            let stream = futures_util::StreamExt::map(stream, sse_event);
            Sse::new(stream)
                .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
                .into_response()
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reconstruction_names_pass() {
        for ok in ["run-01_trial-003.png", "run-123_trial-0042.png"] {
            assert!(recon_name(ok) && safe_name(ok), "{ok}");
        }
        for bad in [
            "run-1_trial-003.png",
            "run-01_trial-03.png",
            "run-01_trial-003.png.bak",
            "../run-01_trial-003.png",
            "run-01_trial-003/../x.png",
            "run-aa_trial-003.png",
            "run-01_trial-.png",
            "",
        ] {
            assert!(!(recon_name(bad) && safe_name(bad)), "{bad}");
        }
    }

    #[test]
    fn safe_names_stay_in_their_folder() {
        for ok in ["stim-0001.png", "shared0042.png", "a_b.c.png"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in [
            "..png",
            "../x.png",
            ".hidden.png",
            "a/b.png",
            "a\\b.png",
            "a..b.png",
            "%2e%2e.png",
            "a b.png",
            "",
        ] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
