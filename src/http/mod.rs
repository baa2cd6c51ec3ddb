//! The HTTP surface: one axum router for the WebSocket endpoint, the API and operations,
//! and with `--metrics-addr` a second one that serves only `/metrics` and the probes
//! (`/livez`, `/readyz`, `/healthz`).

mod error;
mod ops;
mod presence;
mod rate_limit;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};

pub use error::ApiError;
pub use presence::MAX_USER_IDS;
pub use rate_limit::{ApiLimiter, retry_after_secs};

use crate::{app::App, metrics, ws};

/// Request bodies are small: 100 ids of at most 128 bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The API's routes, as the `route` label of its metrics has them.
pub const API_ROUTES: [&str; 3] = ["/api/presence/status", "/api/users/{id}/presence", "/api/groups/{id}/presence"];

/// The public router. `/metrics` is on it only when `public_metrics`; otherwise it answers
/// 404 there like any unknown path, and [`metrics_router`] serves it on its own address.
pub fn router(app: Arc<App>, public_metrics: bool) -> Router {
    let [status, user, group] = API_ROUTES;
    let api = Router::new()
        .route(status, post(presence::status).fallback(method_not_allowed))
        .route(user, get(presence::user).fallback(method_not_allowed))
        .route(group, get(presence::group).fallback(method_not_allowed))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(app.clone(), count_requests));
    let router = Router::new()
        .route("/", get(ws::upgrade))
        .route("/ws", get(ws::upgrade))
        .route("/dashboard", get(ops::dashboard));
    let router = if public_metrics { router.route("/metrics", get(ops::metrics)) } else { router };
    probes(router).merge(api).fallback(not_found).with_state(app)
}

/// The router of `--metrics-addr`: `GET /metrics` and the probes, nothing else. The probes
/// are here so that they reach the router on a listener of its own: on the public port
/// they share the handshake pool with every client, and a prober that is answered 503
/// restarts a healthy router.
pub fn metrics_router(app: Arc<App>) -> Router {
    probes(Router::new().route("/metrics", get(ops::metrics).fallback(method_not_allowed)))
        .fallback(not_found)
        .with_state(app)
}

/// `GET /livez`, `/readyz` and `/healthz` ([`ops`] says what each answers).
fn probes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    router
        .route("/livez", get(ops::live).fallback(method_not_allowed))
        .route("/readyz", get(ops::ready).fallback(method_not_allowed))
        .route("/healthz", get(ops::health).fallback(method_not_allowed))
}

/// Counts API requests by route and status, times them by route, and bounds each one (its
/// body included) by the header-read timeout: a client trickling a body must not hold its
/// connection, and the handshake slot that comes with it, for longer than one sending
/// slow headers.
async fn count_requests(State(app): State<Arc<App>>, path: MatchedPath, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let response = match tokio::time::timeout(app.limits.header_read_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took too long to arrive")
            .into_response(),
    };
    let route = path.as_str().to_owned();
    ::metrics::histogram!(metrics::API_REQUEST_DURATION, "route" => route.clone()).record(started.elapsed());
    ::metrics::counter!(metrics::API_REQUESTS, "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "see docs/PROTOCOL.md for the methods")
}

async fn not_found() -> impl IntoResponse {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
