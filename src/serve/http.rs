//! The dashboard over HTTP.
//!
//! In: the hub. Out, on the configured address: `/` the dashboard page,
//! `/events` server-sent events (the snapshot, then every feed message),
//! `/api/state` the snapshot as JSON, `/metrics` Prometheus text.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::hub::HubHandle;

/// Bind `addr` and serve on `rt`; the bound address comes back.
pub fn start(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    hub: HubHandle,
) -> std::io::Result<SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/api/state", get(state))
        .route("/metrics", get(metrics))
        .with_state(hub);
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("dashboard server stopped: {e}");
        }
    });
    Ok(local)
}

async fn state(State(hub): State<HubHandle>) -> impl IntoResponse {
    match hub.snapshot().await {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
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
