//! WebSocket endpoint: the handshake (auth, limits) and one task per connection.

pub mod close;
mod connection;
pub mod expect_role;
pub mod frame;
mod liveness;
mod membership;
mod ptt;
mod rate_limit;
mod refresh;
mod resume;
mod signals;
mod snapshot;
mod socket;
mod subscriptions;
mod task_size;

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tracing::Instrument;

use crate::{
    app::App,
    auth::Credentials,
    http::ApiError,
    id::Id,
    logging, metrics,
    server::{ClientAddr, ClientBudget},
};

use connection::Connection;

/// `GET /` (and `/ws`): authenticate, then upgrade.
pub async fn upgrade(State(app): State<Arc<App>>, mut request: Request) -> Response {
    let remote = request.extensions().get::<ClientAddr>().map(|client| client.0);
    // The function below, with the client's address.
    let reject = |reason, error| reject(reason, error, remote);
    let headers = request.headers();
    let key = match websocket_key(headers) {
        Ok(key) => key,
        Err(message) => {
            let mut response =
                reject("not_websocket", ApiError::new(StatusCode::UPGRADE_REQUIRED, "websocket_required", message));
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        }
    };
    let credentials = Credentials::from_headers(headers);
    let Some(token) = credentials.token.as_deref() else {
        return reject(
            "missing_token",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "a JWT is required in the `token` (or `voicepingtoken`) header, Authorization: Bearer or Sec-WebSocket-Protocol",
            ),
        );
    };
    let claims = match app.auth.verify(token).await {
        Ok(claims) => claims,
        Err(e) => return reject(e.code(), e.into()),
    };
    if let Err(error) = expect_role::check(request.uri(), claims.role) {
        return reject(error.code, error);
    }
    let device_id = match credentials.device_id.as_deref().map(Id::parse).transpose() {
        Ok(id) => id.map(|id| Arc::<str>::from(id.as_str())),
        Err(e) => {
            return reject(
                "invalid_device_id",
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_device_id", format!("device_id: {e}")),
            );
        }
    };
    if app.shutdown.is_cancelled() {
        return reject(
            "shutting_down",
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "router is restarting"),
        );
    }
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        return reject(
            "too_many_connections",
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_connections", "connection limit reached"),
        );
    };

    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return reject(
            "not_websocket",
            ApiError::new(StatusCode::UPGRADE_REQUIRED, "websocket_required", "the connection cannot be upgraded"),
        );
    };

    let mut connection = Connection::new(app.clone(), claims, device_id.clone());
    connection.resume_from = resume::ResumeFrom::from_query(request.uri().query());
    // Every line the connection logs carries who it is; `session` only for a mobile session.
    let span = tracing::info_span!(
        "conn",
        session = connection.session.as_ref().map(|s| tracing::field::display(&s.id)),
        user = %connection.user,
        role = %connection.role.as_str(),
        device = device_id.as_deref().map(tracing::field::display),
        remote = remote.map(tracing::field::display),
    );
    let client = request.extensions_mut().remove::<ClientBudget>();
    // The connection's future is the task: no wrapper holding a second copy of what it
    // was started with (every idle connection pays for every byte of it).
    app.tracker.spawn(connection.run(on_upgrade, client, permit).instrument(span));

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, key);
    if let Some(protocol) = credentials.protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// Checks the request is a WebSocket version 13 upgrade (RFC 6455 section 4.2.1) and
/// returns the `Sec-WebSocket-Accept` value answering its key.
fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("a WebSocket upgrade is required (Connection: upgrade, Upgrade: websocket)");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("Sec-WebSocket-Key is missing")?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| "Sec-WebSocket-Key is invalid")
}

/// Refuses a handshake: counted under `reason`, logged (at a capped rate) with the client's
/// address, answered with `error`.
fn reject(reason: &'static str, error: ApiError, remote: Option<IpAddr>) -> Response {
    ::metrics::counter!(metrics::HANDSHAKE_REJECTIONS, "reason" => reason).increment(1);
    logging::rejected(error.status.as_u16(), reason, remote);
    error.into_response()
}
