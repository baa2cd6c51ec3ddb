//! The presence API: `POST /api/presence/status`, bulk presence for up to 100 users,
//! `GET /api/users/{id}/presence`, one user, and `GET /api/groups/{id}/presence`,
//! a group's participants, counts and live indicators.

use std::{collections::HashSet, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::{
    app::App,
    auth::{Claims, Credentials},
    engine::EngineError,
    id::Id,
    node::Node,
    presence::{Activity, Status, UserPresence, unix_ms},
    protocol::payload::IndicatorKind,
    scope::Scope,
};

/// Most ids one request may ask for.
pub const MAX_USER_IDS: usize = 100;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UserStatus {
    user_id: Id,
    status: Status,
    last_seen: Option<u64>,
    device_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_text: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_activity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activity: Option<Activity>,
}

/// While this router's view of presence is stale (see [`crate::hub::Stale`]), the `stale`
/// field of a presence answer: since when (Unix ms) and why. The answer is read from the
/// store, but this router has not been able to keep the store current for its own
/// sessions, nor to hear the other routers, since then.
#[derive(Serialize)]
struct StaleField {
    since: u64,
    reason: &'static str,
}

impl StaleField {
    fn of(node: &Node) -> Option<StaleField> {
        node.hub().staleness().map(|stale| StaleField { since: stale.since_ms, reason: stale.reason.as_str() })
    }
}

#[derive(Serialize)]
pub struct StatusResponse {
    success: bool,
    users: Vec<UserStatus>,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<StaleField>,
}

/// Reads `{"userIds": [...]}` with 1 to [`MAX_USER_IDS`] ids (strings or integers).
/// Pure, so it is property-tested against arbitrary input.
pub fn parse_request(body: &[u8]) -> Result<Vec<Id>, ApiError> {
    let invalid = |detail: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body must be {{\"userIds\": [...]}}: {detail}"),
        )
    };
    // An object with `userIds`, nothing else: serde alone would also take a struct in
    // sequence form (`[["a"]]`), which the property test below caught.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let ids = value.as_object().and_then(|o| o.get("userIds")).ok_or_else(|| invalid("no userIds field".into()))?;
    let user_ids = Vec::<Id>::deserialize(ids).map_err(|e| invalid(e.to_string()))?;
    if let Some(at) = user_ids.iter().position(is_no_user) {
        return Err(invalid(format!("userIds[{at}] is 0, which is never a user id (frames read it as no id)")));
    }
    if user_ids.is_empty() || user_ids.len() > MAX_USER_IDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_ids",
            format!("userIds must hold 1 to {MAX_USER_IDS} ids, got {}", user_ids.len()),
        ));
    }
    Ok(user_ids)
}

pub async fn status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusResponse>, ApiError> {
    let claims = authorize(&app, &headers).await?;
    super::rate_limit::charge(&app, &claims, super::rate_limit::Cost::Status(&body))?;
    let scope = Scope::of(&claims);
    let body = json_body(&headers, body)?;
    let user_ids = parse_request(&body)?;
    let node = presence(&app)?;
    let users = node.lookup(&user_ids, &scope).await.map_err(unavailable)?;
    Ok(Json(StatusResponse {
        success: true,
        users: users.into_iter().map(UserStatus::from).collect(),
        timestamp: unix_ms(),
        stale: StaleField::of(node),
    }))
}

#[derive(Serialize)]
pub struct UserResponse {
    success: bool,
    user: UserStatus,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<StaleField>,
}

/// `GET /api/users/{id}/presence`: one user; last seen is kept for `LAST_SEEN_SECS`
/// (30 days) after the user goes offline.
pub async fn user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserResponse>, ApiError> {
    let claims = authorize(&app, &headers).await?;
    super::rate_limit::charge(&app, &claims, super::rate_limit::Cost::User)?;
    let scope = Scope::of(&claims);
    let id = path_id(id, "invalid_user_id")?;
    if is_no_user(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
            "0 is never a user id (frames read it as no id)",
        ));
    }
    let node = presence(&app)?;
    let user = node.lookup(std::slice::from_ref(&id), &scope).await.map_err(unavailable)?.into_iter().next();
    let user = user.unwrap_or_else(|| UserPresence::unknown(id));
    Ok(Json(UserResponse { success: true, user: user.into(), timestamp: unix_ms(), stale: StaleField::of(node) }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResponse {
    success: bool,
    group_id: Id,
    participants: Vec<UserStatus>,
    online_count: usize,
    away_count: usize,
    dnd_count: usize,
    typing_users: Vec<Id>,
    recording_users: Vec<Id>,
    talking_users: Vec<Id>,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<StaleField>,
}

/// `GET /api/groups/{id}/presence`: the group's participants (users whose sessions named
/// it within the last-seen retention), how many are online, away and dnd, and who is
/// typing, recording or talking. Only groups within the token's scope: its `groups`, or
/// any group for a dashboard or service token without the claim.
///
/// Only participants shown online, away or dnd are listed as typing, recording or
/// talking: the lists agree with the counts, and an invisible user (shown offline) is in
/// neither, whatever the store's copy of its indicators says.
pub async fn group(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupResponse>, ApiError> {
    let claims = authorize(&app, &headers).await?;
    super::rate_limit::charge(&app, &claims, super::rate_limit::Cost::Group)?;
    let scope = Scope::of(&claims);
    let group = path_id(id, "invalid_group_id")?;
    if !scope.covers_group(&group) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_group",
            "the token's groups do not include this group",
        ));
    }
    let node = presence(&app)?;
    let members = node.group_members(&group).await.map_err(unavailable)?;
    if members.len() > super::rate_limit::GROUP_COST as usize {
        super::rate_limit::charge(&app, &claims, super::rate_limit::Cost::GroupBeyond(members.len()))?;
    }
    // A participant that has since left the group (its groups changed) reads like an
    // unknown id here: its presence now belongs to other groups.
    let participants: Vec<UserStatus> = node
        .lookup(&members, &Scope::members_of(&group))
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|p| UserStatus::from(scope.redact(p)))
        .collect();
    let count = |status| participants.iter().filter(|p| p.status == status).count();
    let (online_count, away_count, dnd_count) = (count(Status::Online), count(Status::Away), count(Status::Dnd));
    let indicators = node.indicators(&group).await.map_err(unavailable)?;
    let shown: HashSet<&Id> = participants.iter().filter(|p| p.status.is_online()).map(|p| &p.user_id).collect();
    let users = |kind| -> Vec<Id> {
        indicators.iter().filter(|(k, user)| *k == kind && shown.contains(user)).map(|(_, user)| user.clone()).collect()
    };
    let (typing_users, recording_users, talking_users) =
        (users(IndicatorKind::Typing), users(IndicatorKind::Recording), users(IndicatorKind::Talking));
    Ok(Json(GroupResponse {
        success: true,
        group_id: group,
        participants,
        online_count,
        away_count,
        dnd_count,
        typing_users,
        recording_users,
        talking_users,
        timestamp: unix_ms(),
        stale: StaleField::of(node),
    }))
}

impl From<UserPresence> for UserStatus {
    fn from(p: UserPresence) -> Self {
        UserStatus {
            user_id: p.user_id,
            status: p.status,
            last_seen: p.last_seen,
            device_id: p.device_id,
            status_text: p.status_text,
            last_activity: p.last_activity,
            activity: p.activity,
        }
    }
}

/// A JSON request's body: 415 `unsupported_media_type` without `Content-Type:
/// application/json`, `invalid_body` when it could not be read (too large, cut short).
pub(super) fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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
    body.map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))
}

/// Any valid token may read presence, within its [`Scope`]: `Authorization: Bearer <jwt>`
/// (or a `token` header).
pub(super) async fn authorize(app: &App, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let token = Credentials::from_headers(headers).token.ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing_token", "send `Authorization: Bearer <jwt>`")
    })?;
    Ok(app.auth.verify(&token).await?)
}

/// The id in the path, or a 400 with `code`.
pub(super) fn path_id(id: Result<Path<String>, PathRejection>, code: &'static str) -> Result<Id, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, code, e.body_text()))?;
    Id::parse(&id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string()))
}

/// Whether `id` is `0`, which no token may name as its user (frames read it as "no id"),
/// so the API refuses it like any other id that cannot be a user's.
fn is_no_user(id: &Id) -> bool {
    id.as_str() == "0"
}

/// The presence service, or 503: `presence_disabled` when `PRESENCE_ENABLED` is false,
/// `presence_unavailable` while degraded. A store that still answers reads but refuses
/// writes (out of memory, a read-only replica) would serve presence it can no longer keep
/// current, so its answers are refused too until presence is rebuilt.
pub(super) fn presence(app: &App) -> Result<&Node, ApiError> {
    if !app.presence_enabled {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "presence_disabled", "PRESENCE_ENABLED is false"));
    }
    if app.node.is_degraded() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "presence_unavailable",
            "the presence store is unreachable or refusing writes; presence is rebuilt when it recovers",
        ));
    }
    Ok(&app.node)
}

/// A store that cannot be reached: 503 `presence_unavailable`.
pub(super) fn unavailable(e: EngineError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "presence_unavailable", e.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON value, a few levels deep, with `userIds` a likely key.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                proptest::collection::hash_map("userIds|[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_refused_with_400_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse_request(&body) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn arbitrary_json_is_accepted_only_in_the_documented_shape(value in json()) {
            match parse_request(value.to_string().as_bytes()) {
                Ok(ids) => {
                    let listed = value["userIds"].as_array().expect("accepted only with a userIds array");
                    prop_assert!(!ids.is_empty() && ids.len() <= MAX_USER_IDS && ids.len() == listed.len());
                }
                Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
            }
        }

        #[test]
        fn valid_requests_keep_their_ids_in_order(ids in proptest::collection::vec("[a-zA-Z0-9_-]{1,128}".prop_filter("0 is no id", |id| id != "0"), 1..=MAX_USER_IDS)) {
            let body = serde_json::json!({ "userIds": ids }).to_string();
            let parsed = parse_request(body.as_bytes()).unwrap();
            prop_assert_eq!(
                parsed.iter().map(Id::as_str).collect::<Vec<_>>(),
                ids.iter().map(String::as_str).collect::<Vec<_>>()
            );
        }
    }
}
