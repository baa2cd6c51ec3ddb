//! Operator endpoints: the probes and Prometheus metrics.
//!
//! Three probes, for three questions (docs/OPERATIONS.md maps them to Kubernetes):
//! - `/livez`: is the process serving? Always 200 while the accept loop runs. It depends on
//!   nothing else, Redis least of all: during a Redis outage WebSockets stay up and PTT
//!   keeps flowing between users on the same router, so restarting the router would only
//!   cut them off.
//! - `/readyz`: should new clients be sent here? 503 while the engine is degraded or the
//!   router is shutting down, with a JSON body saying which.
//! - `/healthz`: the engine's state with a few figures, 503 while degraded (kept for the
//!   probes and scripts that use it).

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};

use crate::app::App;

/// `GET /livez`: 200 `{"status": "ok"}` whenever the router answers at all.
pub async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 `{"status": "ready"}`; 503 with `"status": "degraded"` while the
/// presence store is unreachable or presence has not been rebuilt since, or
/// `"shutting_down"` once the router has been told to stop (a request that was already
/// being read when SIGTERM arrived). Either way `reason` says it in words.
pub async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    let not_ready = if app.shutdown.is_cancelled() {
        Some(("shutting_down", "the router is shutting down"))
    } else if app.node.is_degraded() {
        Some(("degraded", "the presence store is unreachable or presence is being rebuilt"))
    } else {
        None
    };
    let engine = app.node.engine_name();
    match not_ready {
        None => (StatusCode::OK, Json(serde_json::json!({ "status": "ready", "engine": engine }))),
        Some((status, reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": status, "reason": reason, "engine": engine })),
        ),
    }
}

/// `GET /healthz`: 200 while presence works; 503 `degraded` while the store is
/// unreachable (WebSockets stay up meanwhile).
pub async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    let degraded = app.node.is_degraded();
    let status = if degraded { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (
        status,
        Json(serde_json::json!({
            "status": if degraded { "degraded" } else { "ok" },
            "engine": app.node.engine_name(),
            "router": app.node.router_id(),
            "onlineUsers": app.node.hub().online_count(),
            "connections": app.open_connections(),
        })),
    )
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let body = app.metrics.as_ref().map(crate::metrics::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
