//! The body of a webhook POST: `{"events": [Event, ...]}`, the transitions of one shard
//! in the order they were decided (docs/PROTOCOL.md, "Webhooks").

use serde::Serialize;

use crate::{
    engine::log::LoggedChange,
    id::Id,
    presence::{Activity, Cause, PresenceUpdate, Status},
};

/// One transition as a webhook receiver gets it. Field names are those of the API's
/// presence and of PRESENCE_UPDATE.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event<'a> {
    /// `<userId>:<version>`: unique per transition, the same on every delivery of it (the
    /// idempotency key a receiver deduplicates by).
    pub id: String,
    pub user_id: &'a Id,
    pub status: Status,
    /// Grows with every transition of the user, cluster-wide.
    pub version: u64,
    /// Unix ms at which the transition was decided.
    pub timestamp: u64,
    pub cause: Cause,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<&'a str>,
    /// The union of the user's live sessions' groups after the transition (once none is
    /// left, the last union).
    pub groups: &'a [Id],
    /// The groups before, when the transition changed them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_groups: Option<&'a [Id]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<u64>,
    /// What the user is doing, while shown online, away or dnd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<&'a Activity>,
}

impl<'a> Event<'a> {
    pub fn of(change: &'a LoggedChange) -> Event<'a> {
        let presence = &change.update.presence;
        Event {
            id: id(&change.update),
            user_id: &presence.user_id,
            status: presence.status,
            version: presence.version,
            timestamp: change.update.timestamp,
            cause: change.update.cause,
            last_seen: presence.last_seen,
            device_id: presence.device_id.as_deref(),
            groups: &presence.groups,
            previous_groups: (change.before != presence.groups).then_some(&change.before[..]),
            status_text: presence.status_text.as_deref(),
            last_activity: presence.last_activity,
            activity: presence.activity.as_ref(),
        }
    }
}

/// The idempotency key of a transition: `<userId>:<version>`.
pub fn id(update: &PresenceUpdate) -> String {
    format!("{}:{}", update.presence.user_id, update.presence.version)
}

/// Each change as its event's JSON.
pub fn events(changes: &[LoggedChange]) -> Vec<String> {
    changes
        .iter()
        .map(|change| serde_json::to_string(&Event::of(change)).expect("an event serialises: strings and numbers only"))
        .collect()
}

/// The body of one POST: `{"events":[...]}` of events as [`events`] made them.
pub fn body(events: &[String]) -> Vec<u8> {
    format!("{{\"events\":[{}]}}", events.join(",")).into_bytes()
}
