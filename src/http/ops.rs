//! Operator endpoints: health and Prometheus metrics.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse},
};

use crate::app::App;

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

/// `GET /dashboard`: a live presence page for browsers (open it as
/// `/dashboard#token=<JWT>`); it authenticates with the Sec-WebSocket-Protocol pair.
pub async fn dashboard() -> impl IntoResponse {
    Html(include_str!("../../static/dashboard.html"))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
