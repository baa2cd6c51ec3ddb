//! The HTTP surface: one axum router for the WebSocket endpoint, the API and operations,
//! and with `--metrics-addr` a second one that serves only `/metrics` and the probes
//! (`/livez`, `/readyz`, `/healthz`).

mod cors;
mod dashboard_page;
mod error;
pub mod events;
mod ops;
mod presence;
mod rate_limit;
mod set_presence;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{Method, StatusCode, header::CONTENT_LENGTH},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};

pub use cors::{Cors, CorsOrigins};
pub use error::ApiError;
pub use events::EventStreams;
pub use presence::MAX_USER_IDS;
pub use rate_limit::{ApiLimiter, retry_after_secs};
pub use set_presence::HttpTyping;

use crate::{app::App, metrics, ws};

/// Request bodies are small: 100 ids of at most 128 bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The API's routes, as the `route` label of its metrics has them.
pub const API_ROUTES: [&str; 7] = [
    "/api/presence/status",
    "/api/users/{id}/presence",
    "/api/groups/{id}/presence",
    events::ROUTE,
    set_presence::ROUTES[0],
    set_presence::ROUTES[1],
    set_presence::ROUTES[2],
];

/// What answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The WebSocket handshake ([`ws::upgrade`]).
    WebSocket,
    /// The `/dashboard` page.
    Dashboard,
    Metrics,
    Live,
    Ready,
    Health,
    /// The presence API: bulk, one user, one group.
    Status,
    User,
    Group,
    /// Presence transitions as server-sent events.
    Events,
    /// Setting presence: the token's own status, a user's status, typing.
    OwnStatus,
    UserStatus,
    Typing,
}

/// A method on a path, and what answers it. The routers are built from [`public_routes`]
/// and [`metrics_routes`], so those lists are exactly what is served (docs/openapi.yaml
/// describes each; a test holds the two together). A GET route answers HEAD too; any other
/// method on a route's path gets 405 `method_not_allowed`, and a path on no route 404
/// `not_found`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub endpoint: Endpoint,
}

impl Route {
    fn get(path: &'static str, endpoint: Endpoint) -> Route {
        Route { method: Method::GET, path, endpoint }
    }

    /// An API route: counted in the API's metrics, its body bounded, its requests timed
    /// out, and with `--cors-origins` answering CORS preflights (`OPTIONS`).
    pub fn is_api(&self) -> bool {
        matches!(
            self.endpoint,
            Endpoint::Status
                | Endpoint::User
                | Endpoint::Group
                | Endpoint::Events
                | Endpoint::OwnStatus
                | Endpoint::UserStatus
                | Endpoint::Typing
        )
    }

    fn handler(&self) -> MethodRouter<Arc<App>> {
        let filter = MethodFilter::try_from(self.method.clone()).expect("routes use standard methods");
        let handler = match self.endpoint {
            Endpoint::WebSocket => on(filter, ws::upgrade),
            Endpoint::Dashboard => on(filter, dashboard_page::serve),
            Endpoint::Metrics => on(filter, ops::metrics),
            Endpoint::Live => on(filter, ops::live),
            Endpoint::Ready => on(filter, ops::ready),
            Endpoint::Health => on(filter, ops::health),
            Endpoint::Status => on(filter, presence::status),
            Endpoint::User => on(filter, presence::user),
            Endpoint::Group => on(filter, presence::group),
            Endpoint::Events => on(filter, events::events),
            Endpoint::OwnStatus => on(filter, set_presence::own),
            Endpoint::UserStatus => on(filter, set_presence::user),
            Endpoint::Typing => on(filter, set_presence::typing),
        };
        handler.fallback(method_not_allowed)
    }
}

/// Every route of the public port: the WebSocket endpoint (`/` and `/ws`), the dashboard
/// page, the presence API, the probes, and `/metrics` when `public_metrics`.
pub fn public_routes(public_metrics: bool) -> Vec<Route> {
    let [status, user, group, events, own_status, user_status, typing] = API_ROUTES;
    let mut routes = vec![
        Route::get("/", Endpoint::WebSocket),
        Route::get("/ws", Endpoint::WebSocket),
        Route::get("/dashboard", Endpoint::Dashboard),
        Route { method: Method::POST, path: status, endpoint: Endpoint::Status },
        Route::get(user, Endpoint::User),
        Route::get(group, Endpoint::Group),
        Route::get(events, Endpoint::Events),
        Route { method: Method::POST, path: own_status, endpoint: Endpoint::OwnStatus },
        Route { method: Method::POST, path: user_status, endpoint: Endpoint::UserStatus },
        Route { method: Method::POST, path: typing, endpoint: Endpoint::Typing },
    ];
    routes.extend(probe_routes());
    if public_metrics {
        routes.push(Route::get("/metrics", Endpoint::Metrics));
    }
    routes
}

/// Every route of `--metrics-addr`: `GET /metrics` and the probes, nothing else. The probes
/// are there so that they reach the router on a listener of its own: on the public port
/// they share the handshake pool with every client, and a prober that is answered 503
/// restarts a healthy router.
pub fn metrics_routes() -> Vec<Route> {
    let mut routes = vec![Route::get("/metrics", Endpoint::Metrics)];
    routes.extend(probe_routes());
    routes
}

/// `GET /livez`, `/readyz` and `/healthz` ([`ops`] says what each answers).
fn probe_routes() -> [Route; 3] {
    [
        Route::get("/livez", Endpoint::Live),
        Route::get("/readyz", Endpoint::Ready),
        Route::get("/healthz", Endpoint::Health),
    ]
}

/// The public router, built from [`public_routes`]. `/metrics` is on it only when
/// `public_metrics`; otherwise it answers 404 there like any unknown path, and
/// [`metrics_router`] serves it on its own address. The API's routes have CORS when
/// `app.cors` names origins ([`cors`] says what it answers).
pub fn router(app: Arc<App>, public_metrics: bool) -> Router {
    let (api, rest): (Vec<Route>, Vec<Route>) = public_routes(public_metrics).into_iter().partition(Route::is_api);
    let api = serve(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(app.clone(), count_requests));
    let api = match &app.cors {
        Some(cors) => api.layer(middleware::from_fn_with_state(cors.clone(), cors::gate)),
        None => api,
    };
    serve(rest).merge(api).fallback(not_found_public).with_state(app)
}

/// The router of `--metrics-addr`, built from [`metrics_routes`].
pub fn metrics_router(app: Arc<App>) -> Router {
    serve(metrics_routes()).fallback(not_found).with_state(app)
}

/// A router answering `routes`.
fn serve(routes: Vec<Route>) -> Router<Arc<App>> {
    routes.iter().fold(Router::new(), |router, route| router.route(route.path, route.handler()))
}

/// Counts API requests by route and status, times them by route, and bounds each one (its
/// body included) by the header-read timeout: a client trickling a body must not hold its
/// connection, and the handshake slot that comes with it, for longer than one sending
/// slow headers.
/// A body whose `Content-Length` is past the limit is refused (413) before it is read, not
/// waited for.
async fn count_requests(State(app): State<Arc<App>>, path: MatchedPath, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let response = if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        let message = format!("the body is larger than {MAX_BODY_BYTES} bytes");
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_body", message).into_response()
    } else {
        match tokio::time::timeout(app.limits.header_read_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took too long to arrive")
                    .into_response()
            }
        }
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

/// The public port's 404 `not_found`: under `/api` it is an API answer, with the API's
/// CORS headers when `--cors-origins` names origins, so a page of an allowed origin can
/// read why its request failed.
async fn not_found_public(State(app): State<Arc<App>>, request: Request) -> Response {
    let path = request.uri().path();
    match &app.cors {
        Some(cors) if path == "/api" || path.starts_with("/api/") => {
            let answer = tower::service_fn(|_: Request| async { Ok(not_found().await.into_response()) });
            cors.serve(request, answer).await
        }
        _ => not_found().await.into_response(),
    }
}
