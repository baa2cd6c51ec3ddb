//! Presence set over HTTP, for backends and apps that hold no WebSocket for it:
//! `POST /api/presence/me/status` (the token's own user), `POST /api/users/{id}/status`
//! (a `service` token: any user within its scope) and `POST /api/presence/typing`.
//!
//! A status belongs to a present user: setting one for a user without a live session is
//! refused with 409 `not_online` and writes nothing (so a backend learns the driver is
//! gone rather than setting a status nobody will see). A user outside the token's scope
//! is answered exactly like one never seen, as on every read.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    ApiError,
    presence::{UserStatus, authorize, json_body, path_id, presence, unavailable},
    rate_limit::{self, Cost},
};
use crate::{
    app::App,
    auth::{Claims, Role},
    id::Id,
    metrics,
    node::{Node, Write},
    presence::{ActivityChange, Mode, unix_ms},
    protocol::{
        self,
        payload::{self, IndicatorKind},
    },
    scope::Scope,
    transient::{Audience, Delivery},
};

/// The routes: own status, a user's status, typing.
pub const ROUTES: [&str; 3] = ["/api/presence/me/status", "/api/users/{id}/status", "/api/presence/typing"];

/// The body of a status request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    /// online, away, dnd or invisible.
    status: String,
    /// The custom text; `null`, empty or missing clears it.
    #[serde(default)]
    text: Option<String>,
    /// What the user is doing: missing leaves it as it is, `null` clears it.
    #[serde(default, deserialize_with = "present")]
    activity: Option<Option<ActivityRequest>>,
}

/// An activity to set: `{type, name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

/// A field that is present, `null` or not: missing stays `None` (by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<ActivityRequest>>, D::Error> {
    Option::<ActivityRequest>::deserialize(d).map(Some)
}

#[derive(Serialize)]
pub struct StatusResponse {
    success: bool,
    /// The user's presence once set, as the token reads it.
    user: UserStatus,
    timestamp: u64,
}

/// `POST /api/presence/me/status`: the token's own user.
pub async fn own(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let claims = authorize(&app, &headers).await?;
    rate_limit::charge(&app, &claims, Cost::One(ROUTES[0]))?;
    let user = claims.sub.clone();
    set_status(&app, &claims, user, &headers, body).await
}

/// `POST /api/users/{id}/status`: a `service` token sets any user's within its scope (any
/// other token only its own user's: 403 `forbidden_role` otherwise).
pub async fn user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let claims = authorize(&app, &headers).await?;
    rate_limit::charge(&app, &claims, Cost::One(ROUTES[1]))?;
    let user = path_id(id, "invalid_user_id")?;
    if user != claims.sub && claims.role != Role::Service {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            "only a service token may set another user's status",
        ));
    }
    set_status(&app, &claims, user, &headers, body).await
}

async fn set_status(
    app: &App,
    claims: &Claims,
    user: Id,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let body = json_body(headers, body)?;
    let request: StatusRequest = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let mode = Mode::parse(&request.status).ok_or_else(|| invalid(payload::PayloadError::Status.to_string()))?;
    let text = payload::status_text(request.text.as_deref().unwrap_or("")).map_err(|e| invalid(e.to_string()))?;
    let activity = match request.activity {
        None => ActivityChange::Keep,
        Some(None) => ActivityChange::Clear,
        Some(Some(a)) => payload::activity_change(&a.kind, a.name.as_deref()).map_err(|e| invalid(e.to_string()))?,
    };
    let node = presence(app)?;
    let scope = Scope::of(claims);
    let before = node.lookup(std::slice::from_ref(&user), &scope).await.map_err(unavailable)?;
    // Out of scope reads like never seen: the same answer as a user without a session.
    if user != claims.sub && before.first().is_none_or(|p| p.version == 0) {
        return Err(not_online());
    }
    if !node.set_user_status(&user, mode, text.as_deref(), &activity).await.map_err(unavailable)? {
        return Err(not_online());
    }
    // The user's connections, on every router, hide or show their own signals.
    let invisible = mode == Mode::Invisible;
    node.send(Delivery {
        audience: Audience::Visibility { user: user.clone(), invisible },
        except: None,
        frame: Bytes::new(),
    });
    let after = node.lookup(std::slice::from_ref(&user), &scope).await.map_err(unavailable)?;
    let user = after.into_iter().next().ok_or_else(|| unavailable_store("the user's presence was not read back"))?;
    Ok(Json(StatusResponse { success: true, user: user.into(), timestamp: unix_ms() }))
}

/// The body of a typing request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TypingRequest {
    /// The group typed in (`channel_id` and `channelId` are read as well).
    #[serde(alias = "channel_id", alias = "channelId")]
    group_id: Id,
    /// false ends the indicator before its lifetime; default true.
    #[serde(default = "active")]
    is_active: bool,
}

fn active() -> bool {
    true
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingResponse {
    success: bool,
    group_id: Id,
    is_active: bool,
    /// Milliseconds until the indicator ends unless announced again (`TYPING_TTL_MS`); 0
    /// when it was ended.
    expires_in_ms: u64,
}

/// `POST /api/presence/typing`: the token's user is typing in one of its groups (its
/// token's `groups`; 403 `not_a_member` otherwise), announced to the group's members and
/// dashboards like the WebSocket INDICATOR and ended after the same lifetime unless
/// announced again. Only for a user shown online, away or dnd: 409 `not_online` otherwise
/// (an invisible user's typing is never shown).
pub async fn typing(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TypingResponse>, ApiError> {
    let claims = authorize(&app, &headers).await?;
    rate_limit::charge(&app, &claims, Cost::One(ROUTES[2]))?;
    let body = json_body(&headers, body)?;
    let request: TypingRequest = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let group = request.group_id;
    if !claims.groups.as_ref().is_some_and(|groups| groups.contains(&group)) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not_a_member", "groupId must be one of the token's groups"));
    }
    let node = presence(&app)?;
    let user = claims.sub.clone();
    let me = node.lookup(std::slice::from_ref(&user), &Scope::everyone()).await.map_err(unavailable)?;
    if !me.first().is_some_and(|p| p.status.is_online()) {
        return Err(not_online());
    }
    let ttl = app.limits.typing_ttl;
    let key = (group.clone(), user);
    if request.is_active {
        if !node.write_soon(Write::Indicator {
            group: group.clone(),
            user: key.1.clone(),
            kind: TYPING,
            ttl: Some(ttl),
        }) {
            return Err(unavailable_store("the presence store is unreachable"));
        }
        if app.http_typing.start(&key, Instant::now() + ttl) {
            announce(node, &key, true);
            tokio::spawn(end_when_due(app.clone(), key));
        }
    } else {
        app.http_typing.stop(&key);
        end(node, &key);
    }
    let expires_in_ms = if request.is_active { ttl.as_millis() as u64 } else { 0 };
    Ok(Json(TypingResponse { success: true, group_id: group, is_active: request.is_active, expires_in_ms }))
}

const TYPING: IndicatorKind = IndicatorKind::Typing;

/// A group and a user in it.
type Key = (Id, Id);

/// The typing indicators this router started over HTTP, and when each ends unless
/// announced again: the same lifetime as a WebSocket connection's, ended by this router
/// (by the Redis engine's sweep of lapsed indicators if this router dies first).
#[derive(Default)]
pub struct HttpTyping {
    live: Mutex<HashMap<Key, Instant>>,
}

impl HttpTyping {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `key` until `until`, or pushes its end there; true when it was not live.
    fn start(&self, key: &Key, until: Instant) -> bool {
        self.live().insert(key.clone(), until).is_none()
    }

    fn stop(&self, key: &Key) {
        self.live().remove(key);
    }

    /// When `key` ends: `None` once it ended (then the caller announces the end).
    fn until(&self, key: &Key, now: Instant) -> Option<Instant> {
        let mut live = self.live();
        let until = *live.get(key)?;
        if until <= now {
            live.remove(key);
            return None;
        }
        Some(until)
    }
}

/// Ends `key`'s indicator once its lifetime passes without another announcement (and
/// nothing, if it was ended meanwhile).
async fn end_when_due(app: Arc<App>, key: Key) {
    while let Some(until) = app.http_typing.until(&key, Instant::now()) {
        tokio::time::sleep_until(until).await;
    }
    if !app.http_typing.live().contains_key(&key) {
        end(&app.node, &key);
    }
}

/// Clears the store's copy of `key`'s indicator and announces its end.
fn end(node: &Node, key: &Key) {
    node.write_soon(Write::Indicator { group: key.0.clone(), user: key.1.clone(), kind: TYPING, ttl: None });
    announce(node, key, false);
}

/// INDICATOR_UPDATE to the group's members and dashboards, never to the user itself.
fn announce(node: &Node, (group, user): &Key, active: bool) {
    let label = if active { "true" } else { "false" };
    ::metrics::counter!(metrics::INDICATORS, "type" => TYPING.as_str(), "active" => label).increment(1);
    let frame = protocol::indicator_frame(group, user, TYPING, active);
    let audience = Audience::Group { group: group.clone(), dashboards: true };
    node.send(Delivery { audience, except: Some(user.clone()), frame });
}

fn invalid(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
}

fn not_online() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_online",
        "the user has no live session (or is invisible, for typing): a status belongs to a present user",
    )
}

fn unavailable_store(message: &str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "presence_unavailable", message)
}
