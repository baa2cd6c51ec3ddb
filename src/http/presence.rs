//! `POST /api/presence/status`: bulk presence for up to 100 users (seed 004).

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::{
    app::App,
    auth::Credentials,
    id::Id,
    presence::{Status, unix_ms},
};

/// Most ids one request may ask for.
pub const MAX_USER_IDS: usize = 100;

#[derive(Deserialize)]
struct StatusRequest {
    #[serde(rename = "userIds")]
    user_ids: Vec<Id>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserStatus {
    user_id: Id,
    status: Status,
    last_seen: Option<u64>,
    device_id: Option<Arc<str>>,
}

#[derive(Serialize)]
pub struct StatusResponse {
    success: bool,
    users: Vec<UserStatus>,
    timestamp: u64,
}

pub async fn status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let token = Credentials::from_headers(&headers).token.ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing_token", "send `Authorization: Bearer <jwt>`")
    })?;
    app.auth.verify(&token).map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;

    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    let body = body.map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
    let request: StatusRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("body must be {{\"userIds\": [...]}}: {e}"))
    })?;
    if request.user_ids.is_empty() || request.user_ids.len() > MAX_USER_IDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_ids",
            format!("userIds must hold 1 to {MAX_USER_IDS} ids, got {}", request.user_ids.len()),
        ));
    }
    if !app.presence_enabled {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "presence_disabled", "PRESENCE_ENABLED is false"));
    }
    let users = app
        .node
        .lookup(&request.user_ids)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "presence_unavailable", e.to_string()))?;
    Ok(Json(StatusResponse {
        success: true,
        users: users
            .into_iter()
            .map(|p| UserStatus {
                user_id: p.user_id,
                status: p.status,
                last_seen: p.last_seen,
                device_id: p.device_id,
            })
            .collect(),
        timestamp: unix_ms(),
    }))
}
