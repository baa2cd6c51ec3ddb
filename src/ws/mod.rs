//! WebSocket endpoint: the handshake (auth, limits) and one task per connection.

pub mod close;
mod connection;
mod ptt;
mod rate_limit;
mod signals;

use std::sync::Arc;

use axum::{
    extract::{State, WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use tracing::Instrument;

use crate::{app::App, auth::Credentials, http::ApiError, id::Id, metrics};

use connection::Connection;

/// The initial read buffer per connection. Heartbeats are ~40 bytes; tungstenite grows
/// the buffer for a larger message (up to `--max-frame-bytes`). 1 KiB instead of the 4 KiB
/// tried first took idle RSS from 8.8 to 5.8 KiB per connection (docs/BENCHMARKS.md).
const READ_BUFFER_BYTES: usize = 1024;

/// Frames fed without a flush collect up to this many bytes before they are written, so a
/// dashboard catching up on many updates pays one write per batch, not per update. Every
/// single send still flushes at once. Allocated only as used. The write buffer has no
/// upper cap: a snapshot is one message (~10 MB for 100k users) and must fit whole; what
/// bounds a slow dashboard is the update ring and the write timeout.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// `GET /` (and `/ws`): authenticate, then upgrade.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return reject(
                "not_websocket",
                ApiError::new(StatusCode::UPGRADE_REQUIRED, "websocket_required", rejection.body_text()),
            );
        }
    };
    let credentials = Credentials::from_headers(&headers);
    let Some(token) = credentials.token.as_deref() else {
        return reject(
            "missing_token",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "a JWT is required in the `token` header or Sec-WebSocket-Protocol",
            ),
        );
    };
    let claims = match app.auth.verify(token) {
        Ok(claims) => claims,
        Err(e) => return reject(e.code(), ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())),
    };
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

    let mut ws = ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_message_size(app.limits.max_frame_bytes)
        .max_frame_size(app.limits.max_frame_bytes);
    if let Some(protocol) = credentials.protocol {
        ws = ws.protocols([protocol]);
    }
    let span = tracing::info_span!("conn", user = %claims.sub, role = claims.role.as_str());
    let connection = Connection::new(app.clone(), claims, device_id);
    let tracker = app.tracker.clone();
    ws.on_upgrade(move |socket| tracker.track_future(connection.run(socket, permit).instrument(span)))
}

fn reject(reason: &'static str, error: ApiError) -> Response {
    ::metrics::counter!(metrics::HANDSHAKE_REJECTIONS, "reason" => reason).increment(1);
    error.into_response()
}
