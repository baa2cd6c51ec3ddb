//! Encoding of the frames the router sends, written straight into a byte buffer.
//!
//! An update is encoded once and the same `Bytes` goes to every dashboard, so fan-out
//! costs a reference count per dashboard, not an encode.

use std::time::Duration;

use bytes::Bytes;
use rmp::encode::{self as enc, ByteBuf};
use rmpv::Value;

use super::{
    ChannelType, Frame,
    live::{LiveIndicator, SnapshotContents},
    message_type::{ACK, ERROR, HEARTBEAT, HEARTBEAT_ACK, INDICATOR_UPDATE, PRESENCE_SNAPSHOT, PRESENCE_UPDATE},
    payload::IndicatorKind,
    resume::ViewMark,
};
use crate::{
    id::Id,
    presence::{PresenceUpdate, UserPresence, unix_ms},
};

/// Why the router refused a frame; the `code` field of an ERROR (33) payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not a valid frame (bad msgpack, wrong shape, bad ids); the message says which.
    InvalidFrame,
    /// Text WebSocket messages are not part of the protocol.
    TextNotSupported,
    /// `fromId` is not the token's subject.
    SenderMismatch,
    /// A web/dashboard session sent a HEARTBEAT; only mobile sessions have presence.
    HeartbeatNotAllowed,
    /// A message type this router does not handle.
    UnsupportedType,
    /// The presence store could not be reached; the connection stays up.
    PresenceUnavailable,
    /// The payload of a STATUS or INDICATOR frame is not what the type requires.
    InvalidPayload,
    /// The frame names a group outside the token's `groups`, or needs a group it lacks.
    NotAMember,
    /// AUDIO or STOP from a session that does not hold the channel's floor.
    FloorNotHeld,
    /// Only mobile sessions talk, type and set a status; private channels need a shared group.
    NotAllowed,
    /// A USER_ADD beyond the token's groups would take the session past
    /// `--max-session-groups`.
    TooManyGroups,
    /// A SUBSCRIBE named a group outside the token's scope.
    NotInScope,
    /// An UNSUBSCRIBE named a group the dashboard is not subscribed to.
    NotSubscribed,
    /// A SUBSCRIBE beyond [`super::groups::MAX_SUBSCRIPTIONS`] groups.
    TooManySubscriptions,
    /// The connection's token expired (the connection is then closed with 4001), or a
    /// REFRESH token was refused: the code is the one the HTTP API answers for the same
    /// token (`token_expired`, `invalid_token`, ...), or `token_mismatch` for a token of
    /// another user or role.
    Token(&'static str),
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::TextNotSupported => "text_not_supported",
            ErrorCode::SenderMismatch => "sender_mismatch",
            ErrorCode::HeartbeatNotAllowed => "heartbeat_not_allowed",
            ErrorCode::UnsupportedType => "unsupported_type",
            ErrorCode::PresenceUnavailable => "presence_unavailable",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::FloorNotHeld => "floor_not_held",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::NotInScope => "not_in_scope",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Token(code) => code,
        }
    }
}

// Writes into a `ByteBuf` cannot fail (its error type is `Infallible`), so each
// `let Ok(_) = …` below is irrefutable.

/// Starts a router frame: `[0, type, 0, 0, messageId, ` — the payload follows.
pub(super) fn header(buf: &mut ByteBuf, message_type: u8, message_id: Option<&Value>) {
    let Ok(_) = enc::write_array_len(buf, 6);
    let Ok(_) = enc::write_uint(buf, 0);
    let Ok(_) = enc::write_uint(buf, message_type.into());
    let Ok(_) = enc::write_uint(buf, 0);
    let Ok(_) = enc::write_uint(buf, 0);
    match message_id {
        Some(id) => write_value(buf, id),
        None => {
            let Ok(_) = enc::write_nil(buf);
        }
    }
}

fn write_value(buf: &mut ByteBuf, value: &Value) {
    let mut out = Vec::new();
    // Writing to a Vec only fails on a nesting depth the decoder never lets through.
    if rmpv::encode::write_value(&mut out, value).is_ok() {
        let Ok(_) = rmp::encode::RmpWrite::write_bytes(buf, &out);
    } else {
        let Ok(_) = enc::write_nil(buf);
    }
}

pub(super) fn str_field(buf: &mut ByteBuf, key: &str, value: &str) {
    let Ok(_) = enc::write_str(buf, key);
    let Ok(_) = enc::write_str(buf, value);
}

pub(super) fn uint_field(buf: &mut ByteBuf, key: &str, value: u64) {
    let Ok(_) = enc::write_str(buf, key);
    let Ok(_) = enc::write_uint(buf, value);
}

fn opt_field<T>(buf: &mut ByteBuf, key: &str, value: Option<T>, write: impl FnOnce(&mut ByteBuf, T)) {
    let Ok(_) = enc::write_str(buf, key);
    match value {
        Some(v) => write(buf, v),
        None => {
            let Ok(_) = enc::write_nil(buf);
        }
    }
}

/// `{userId, status, lastSeen, deviceId, version, groups}`, then `statusText` when the user
/// has one, with `activity` `lastActivity` when known, and `activity` (`{type, name?,
/// startedAt}`) when the user has one, plus `extra` more fields the
/// caller writes. Absent rather than nil: a 100k-user snapshot stays as small as it was
/// before statuses existed.
pub(super) fn user_map(buf: &mut ByteBuf, user: &UserPresence, activity: bool, extra: u32) {
    let last_activity = user.last_activity.filter(|_| activity);
    let optional =
        u32::from(user.status_text.is_some()) + u32::from(last_activity.is_some()) + u32::from(user.activity.is_some());
    let Ok(_) = enc::write_map_len(buf, 6 + optional + extra);
    str_field(buf, "userId", user.user_id.as_str());
    str_field(buf, "status", user.status.as_str());
    opt_field(buf, "lastSeen", user.last_seen, |b, v| {
        let Ok(_) = enc::write_uint(b, v);
    });
    opt_field(buf, "deviceId", user.device_id.as_deref(), |b, v| {
        let Ok(_) = enc::write_str(b, v);
    });
    uint_field(buf, "version", user.version);
    let Ok(_) = enc::write_str(buf, "groups");
    let Ok(_) = enc::write_array_len(buf, user.groups.len() as u32);
    for group in user.groups.iter() {
        let Ok(_) = enc::write_str(buf, group.as_str());
    }
    if let Some(text) = user.status_text.as_deref() {
        str_field(buf, "statusText", text);
    }
    if let Some(at) = last_activity {
        uint_field(buf, "lastActivity", at);
    }
    if let Some(activity) = &user.activity {
        let Ok(_) = enc::write_str(buf, "activity");
        let Ok(_) = enc::write_map_len(buf, 2 + u32::from(activity.name.is_some()));
        str_field(buf, "type", &activity.kind);
        if let Some(name) = activity.name.as_deref() {
            str_field(buf, "name", name);
        }
        uint_field(buf, "startedAt", activity.started_at);
    }
}

/// PRESENCE_UPDATE (31): `[0, 31, 0, 0, seq, {userId, status, lastSeen, deviceId, version,
/// cause, timestamp, position}]`. `seq` is the router's event sequence number; `position`
/// the view's position in the change log once it includes this change (absent while the
/// router knows none).
pub fn update_frame(update: &PresenceUpdate, seq: u64, position: Option<&str>) -> Bytes {
    let mut buf = ByteBuf::with_capacity(160);
    header(&mut buf, PRESENCE_UPDATE, Some(&Value::from(seq)));
    user_map(&mut buf, &update.presence, true, 2 + u32::from(position.is_some()));
    str_field(&mut buf, "cause", update.cause.as_str());
    uint_field(&mut buf, "timestamp", update.timestamp);
    if let Some(position) = position {
        str_field(&mut buf, "position", position);
    }
    Bytes::from(buf.into_vec())
}

/// `indicators: [{groupId, userId, type, timestamp}]`.
pub(super) fn indicators_field(buf: &mut ByteBuf, indicators: &[LiveIndicator]) {
    let Ok(_) = enc::write_str(buf, "indicators");
    let Ok(_) = enc::write_array_len(buf, indicators.len() as u32);
    for indicator in indicators {
        let Ok(_) = enc::write_map_len(buf, 4);
        str_field(buf, "groupId", indicator.group.as_str());
        str_field(buf, "userId", indicator.user.as_str());
        str_field(buf, "type", indicator.kind.as_str());
        uint_field(buf, "timestamp", indicator.since);
    }
}

/// PRESENCE_SNAPSHOT (32): `[0, 32, 0, 0, seq, {users: [...], count, groupCounts: {group:
/// {online, away, dnd}}, indicators: [{groupId, userId, type, timestamp}], timestamp}]`.
/// Changes with a sequence number up to `seq` are already contained in it.
pub fn snapshot_frame(contents: &SnapshotContents, seq: u64) -> Bytes {
    Bytes::from(encode_snapshot(contents, seq, None))
}

/// [`snapshot_frame`]'s bytes, for a caller that wraps them itself (the hub charges each
/// snapshot to its budget until the last reference is gone).
/// With `mark`, the payload holds `position` and `view` too (see [`ViewMark`]).
pub fn encode_snapshot(contents: &SnapshotContents, seq: u64, mark: Option<&ViewMark>) -> Vec<u8> {
    let SnapshotContents { users, indicators, group_counts } = contents;
    let mut buf = ByteBuf::with_capacity(snapshot_len_bound(contents) + mark.map_or(0, ViewMark::len_bound));
    header(&mut buf, PRESENCE_SNAPSHOT, Some(&Value::from(seq)));
    let Ok(_) = enc::write_map_len(&mut buf, if mark.is_some() { 7 } else { 5 });
    if let Some(mark) = mark {
        mark.write(&mut buf);
    }
    let Ok(_) = enc::write_str(&mut buf, "users");
    let Ok(_) = enc::write_array_len(&mut buf, users.len() as u32);
    for user in users {
        user_map(&mut buf, user, false, 0);
    }
    uint_field(&mut buf, "count", users.len() as u64);
    let Ok(_) = enc::write_str(&mut buf, "groupCounts");
    let Ok(_) = enc::write_map_len(&mut buf, group_counts.len() as u32);
    for (group, counts) in group_counts {
        let Ok(_) = enc::write_str(&mut buf, group.as_str());
        let Ok(_) = enc::write_map_len(&mut buf, 3);
        uint_field(&mut buf, "online", counts.online.into());
        uint_field(&mut buf, "away", counts.away.into());
        uint_field(&mut buf, "dnd", counts.dnd.into());
    }
    indicators_field(&mut buf, indicators);
    uint_field(&mut buf, "timestamp", unix_ms());
    // Allocated at the bound, a few bytes per user over: snapshots are held while
    // dashboards write them and charged to the snapshot budget by length, so give back
    // the rest (a shrinking realloc, no copy).
    let mut bytes = buf.into_vec();
    bytes.shrink_to_fit();
    bytes
}

/// At least the length of [`snapshot_frame`] of `contents` (at most 16 bytes per user,
/// indicator and group more): one allocation for the frame, and the room a dashboard
/// waits for before encoding it.
pub fn snapshot_len_bound(contents: &SnapshotContents) -> usize {
    /// msgpack str: a header of 1, 2, 3 or 5 bytes, then the bytes.
    fn str(len: usize) -> usize {
        len + match len {
            0..32 => 1,
            32..256 => 2,
            256..65536 => 3,
            _ => 5,
        }
    }
    const UINT: usize = 9;
    let user = |user: &UserPresence| {
        let groups: usize = user.groups.iter().map(|g| str(g.as_str().len())).sum();
        1 + str(6)
            + str(user.user_id.as_str().len())
            + str(6)
            + str(user.status.as_str().len())
            + str(8)
            + UINT
            + str(8)
            + user.device_id.as_deref().map_or(1, |d| str(d.len()))
            + str(7)
            + UINT
            + str(6)
            + 5
            + groups
            + user.status_text.as_deref().map_or(0, |t| str(10) + str(t.len()))
            + user.activity.as_ref().map_or(0, |a| {
                str(8)
                    + 1
                    + str(4)
                    + str(a.kind.len())
                    + a.name.as_deref().map_or(0, |n| str(4) + str(n.len()))
                    + str(9)
                    + UINT
            })
    };
    let indicator = |i: &LiveIndicator| {
        1 + str(7)
            + str(i.group.as_str().len())
            + str(6)
            + str(i.user.as_str().len())
            + str(4)
            + str(i.kind.as_str().len())
            + str(9)
            + UINT
    };
    // A group's counts are u32s: 5 bytes each at most.
    let counts = |group: &Id| str(group.as_str().len()) + 1 + str(6) + str(4) + str(3) + 3 * 5;
    // Header (6-array, 4 small uints, the sequence number), map, "users" and its array
    // header, "count", "groupCounts" and its map header, "indicators" and its array
    // header, "timestamp", with their values.
    let frame = 1 + 4 + UINT + 1 + str(5) + 5 + str(5) + UINT + str(11) + 5 + str(10) + 5 + str(9) + UINT;
    frame
        + contents.users.iter().map(user).sum::<usize>()
        + contents.indicators.iter().map(indicator).sum::<usize>()
        + contents.group_counts.iter().map(|(group, _)| counts(group)).sum::<usize>()
}

/// ERROR (33): `[0, 33, 0, 0, messageId, {code, message, messageType}]`, echoing the
/// refused frame's message id and type when they were readable.
pub fn error_frame(code: ErrorCode, message: &str, message_type: Option<u8>, message_id: Option<&Value>) -> Bytes {
    let mut buf = ByteBuf::with_capacity(64 + message.len());
    header(&mut buf, ERROR, message_id);
    let Ok(_) = enc::write_map_len(&mut buf, 3);
    str_field(&mut buf, "code", code.as_str());
    str_field(&mut buf, "message", message);
    opt_field(&mut buf, "messageType", message_type, |b, v| {
        let Ok(_) = enc::write_uint(b, v.into());
    });
    Bytes::from(buf.into_vec())
}

/// HEARTBEAT_ACK (34): `[0, 34, 0, 0, messageId, {timestamp, presenceTtlMs}]`, echoing the
/// heartbeat's message id, with the router's presence TTL in ms, so that a client learns
/// how often it must heartbeat without being configured for this router.
pub fn heartbeat_ack_frame(message_id: Option<&Value>, presence_ttl: Duration) -> Bytes {
    let mut buf = ByteBuf::with_capacity(48);
    header(&mut buf, HEARTBEAT_ACK, message_id);
    let Ok(_) = enc::write_map_len(&mut buf, 2);
    uint_field(&mut buf, "timestamp", unix_ms());
    uint_field(&mut buf, "presenceTtlMs", presence_ttl.as_millis().try_into().unwrap_or(u64::MAX));
    Bytes::from(buf.into_vec())
}

/// ACK (39): `[0, 39, 0, 0, messageId, {messageType, timestamp}]`: the frame of that type
/// and message id was applied.
pub fn ack_frame(message_type: u8, message_id: Option<&Value>) -> Bytes {
    let mut buf = ByteBuf::with_capacity(40);
    header(&mut buf, ACK, message_id);
    let Ok(_) = enc::write_map_len(&mut buf, 2);
    uint_field(&mut buf, "messageType", message_type.into());
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}

/// INDICATOR_UPDATE (38): `[0, 38, 0, 0, nil, {groupId, userId, type, isActive, timestamp}]`.
pub fn indicator_frame(group: &Id, user: &Id, kind: IndicatorKind, active: bool) -> Bytes {
    let mut buf = ByteBuf::with_capacity(96);
    header(&mut buf, INDICATOR_UPDATE, None);
    let Ok(_) = enc::write_map_len(&mut buf, 5);
    str_field(&mut buf, "groupId", group.as_str());
    str_field(&mut buf, "userId", user.as_str());
    str_field(&mut buf, "type", kind.as_str());
    let Ok(_) = enc::write_str(&mut buf, "isActive");
    let Ok(_) = enc::write_bool(&mut buf, active);
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}

/// The message-id slot of a frame on a channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot<'a> {
    /// Five elements, the payload at index 4 (VoicePing's usual layout).
    Absent,
    /// Six elements: this message id (nil for `None`) at index 4, the payload at 5.
    Id(Option<&'a Value>),
}

impl<'a> Slot<'a> {
    /// The slot as `frame` had it: relays and VoicePing's replies keep the sender's layout.
    pub fn of(frame: &'a Frame) -> Self {
        if frame.with_message_id { Slot::Id(frame.message_id.as_ref()) } else { Slot::Absent }
    }
}

/// A frame on a PTT channel (relayed START, AUDIO, STOP, TEXT, DELIVERED, READ; the
/// router's acks and STOPs): `[channelType, type, fromId, toId, payload]` or, with the
/// slot, `[channelType, type, fromId, toId, messageId, payload]`. Ids are written as
/// canonical strings; `None` is written 0, VoicePing's "no id": as `from`, the router
/// itself; as `to`, a refused frame that named no channel.
pub fn channel_frame(
    channel: ChannelType,
    message_type: u8,
    from: Option<&Id>,
    to: Option<&Id>,
    slot: Slot<'_>,
    payload: &Value,
) -> Bytes {
    let mut buf = ByteBuf::with_capacity(48);
    let Ok(_) = enc::write_array_len(&mut buf, if slot == Slot::Absent { 5 } else { 6 });
    let Ok(_) = enc::write_uint(&mut buf, channel as u64);
    let Ok(_) = enc::write_uint(&mut buf, message_type.into());
    for id in [from, to] {
        match id {
            Some(id) => {
                let Ok(_) = enc::write_str(&mut buf, id.as_str());
            }
            None => {
                let Ok(_) = enc::write_uint(&mut buf, 0);
            }
        }
    }
    match slot {
        Slot::Absent => {}
        Slot::Id(Some(id)) => write_value(&mut buf, id),
        Slot::Id(None) => {
            let Ok(_) = enc::write_nil(&mut buf);
        }
    }
    write_value(&mut buf, payload);
    Bytes::from(buf.into_vec())
}

/// A client frame `[channelType, type, fromId, toId, payload]`, for the examples, tests and
/// the load tool.
pub fn client_frame(channel: ChannelType, message_type: u8, from: &str, to: &str, payload: &Value) -> Bytes {
    let mut buf = ByteBuf::with_capacity(48);
    let Ok(_) = enc::write_array_len(&mut buf, 5);
    let Ok(_) = enc::write_uint(&mut buf, channel as u64);
    let Ok(_) = enc::write_uint(&mut buf, message_type.into());
    let Ok(_) = enc::write_str(&mut buf, from);
    let Ok(_) = enc::write_str(&mut buf, to);
    write_value(&mut buf, payload);
    Bytes::from(buf.into_vec())
}

/// A client's HEARTBEAT (30) as mobile apps send it (docs/PROTOCOL.md):
/// `[0, 30, userId, 0, {type: "heartbeat", timestamp}]`. For the examples, tests and the
/// load tool.
pub fn heartbeat_frame(user_id: &str) -> Bytes {
    let mut buf = ByteBuf::with_capacity(48);
    let Ok(_) = enc::write_array_len(&mut buf, 5);
    let Ok(_) = enc::write_uint(&mut buf, 0);
    let Ok(_) = enc::write_uint(&mut buf, HEARTBEAT.into());
    let Ok(_) = enc::write_str(&mut buf, user_id);
    let Ok(_) = enc::write_uint(&mut buf, 0);
    let Ok(_) = enc::write_map_len(&mut buf, 2);
    str_field(&mut buf, "type", "heartbeat");
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        id::Id,
        presence::{Cause, Status},
        protocol::decode,
    };

    fn alice() -> UserPresence {
        UserPresence {
            user_id: Id::parse("alice").unwrap(),
            status: Status::Online,
            last_seen: Some(1_702_281_234_567),
            device_id: Some("dev-1".into()),
            version: 3,
            groups: crate::presence::Groups::default(),
            status_text: Some("on patrol".into()),
            last_activity: Some(1_702_281_234_000),
            activity: None,
        }
    }

    fn read(bytes: &[u8]) -> Value {
        rmpv::decode::read_value(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn update_payload_is_at_index_5() {
        let update = PresenceUpdate { presence: alice(), cause: Cause::Connect, timestamp: 9, seq: None, shard: 0 };
        let v = read(&update_frame(&update, 77, None));
        assert_eq!(v[1].as_u64(), Some(31));
        assert_eq!(v[4].as_u64(), Some(77));
        let p = &v[5];
        assert_eq!(p["userId"].as_str(), Some("alice"));
        assert_eq!(p["status"].as_str(), Some("online"));
        assert_eq!(p["lastSeen"].as_u64(), Some(1_702_281_234_567));
        assert_eq!(p["deviceId"].as_str(), Some("dev-1"));
        assert_eq!(p["version"].as_u64(), Some(3));
        assert_eq!(p["cause"].as_str(), Some("connect"));
        assert_eq!(p["groups"].as_array().map(Vec::len), Some(0));
        assert_eq!(p["statusText"].as_str(), Some("on patrol"));
        assert_eq!(p["lastActivity"].as_u64(), Some(1_702_281_234_000));
        assert_eq!(p["timestamp"].as_u64(), Some(9));
    }

    #[test]
    fn snapshot_lists_users() {
        let mut bob = alice();
        bob.user_id = Id::parse("bob").unwrap();
        bob.device_id = None;
        let v = read(&snapshot_frame(&SnapshotContents { users: vec![alice(), bob], ..Default::default() }, 5));
        assert_eq!(v[1].as_u64(), Some(32));
        let users = v[5]["users"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[1]["userId"].as_str(), Some("bob"));
        assert!(users[1]["deviceId"].is_nil());
        assert_eq!(users[1]["statusText"].as_str(), Some("on patrol"));
        assert!(users[1].as_map().unwrap().iter().all(|(k, _)| k.as_str() != Some("lastActivity")), "not in snapshots");
        assert_eq!(v[5]["count"].as_u64(), Some(2));
    }

    #[test]
    fn snapshot_carries_group_counts_and_live_indicators() {
        use crate::protocol::live::{GroupCounts, IndicatorChange};
        let (crew, yard) = (Id::parse("crew").unwrap(), Id::parse("yard").unwrap());
        let talker = Id::parse("t").unwrap();
        let live = IndicatorChange::read(&indicator_frame(&crew, &talker, IndicatorKind::Talking, true)).unwrap();
        assert!(live.active);
        assert!(IndicatorChange::read(&ack_frame(37, None)).is_none(), "only an INDICATOR_UPDATE reads as one");
        let counts = GroupCounts { online: 3, away: 1, dnd: 0 };
        let contents = SnapshotContents {
            users: vec![alice()],
            indicators: vec![live.indicator.clone()],
            group_counts: vec![(crew.clone(), counts), (yard, GroupCounts::default())],
        };
        let v = read(&snapshot_frame(&contents, 5));
        let indicator = &v[5]["indicators"][0];
        assert_eq!((indicator["groupId"].as_str(), indicator["userId"].as_str()), (Some("crew"), Some("t")));
        assert_eq!(indicator["type"].as_str(), Some("talking"));
        assert_eq!(indicator["timestamp"].as_u64(), Some(live.indicator.since));
        let crew = &v[5]["groupCounts"]["crew"];
        assert_eq!((crew["online"].as_u64(), crew["away"].as_u64(), crew["dnd"].as_u64()), (Some(3), Some(1), Some(0)));
        assert_eq!(v[5]["groupCounts"]["yard"]["online"].as_u64(), Some(0));
    }

    #[test]
    fn group_counts_count_each_status_in_each_group_of_the_scope() {
        use crate::{presence::Status, protocol::live::GroupCounts};
        let ids = |names: &[&str]| {
            crate::presence::Groups::from(names.iter().map(|n| Id::parse(n).unwrap()).collect::<Vec<_>>())
        };
        let user = |status, groups: &[&str]| UserPresence { status, groups: ids(groups), ..alice() };
        let users = vec![user(Status::Online, &["a", "b"]), user(Status::Away, &["a"]), user(Status::Dnd, &["b", "c"])];
        let counts = |online, away, dnd| GroupCounts { online, away, dnd };
        let everyone = SnapshotContents::new(users.clone(), Vec::new(), None);
        let names: Vec<&str> = everyone.group_counts.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(everyone.group_counts[0].1, counts(1, 1, 0));
        assert_eq!(everyone.group_counts[1].1, counts(1, 0, 1));
        let scoped = SnapshotContents::new(users, Vec::new(), Some(&ids(&["c", "z"])));
        let got: Vec<(&str, GroupCounts)> = scoped.group_counts.iter().map(|(g, c)| (g.as_str(), *c)).collect();
        assert_eq!(got, [("c", counts(0, 0, 1)), ("z", counts(0, 0, 0))], "only the scope's groups, empty ones too");
    }

    #[test]
    fn the_snapshot_bound_is_a_bound_and_close() {
        use std::sync::Arc;
        let mut contents = SnapshotContents::default();
        assert!(snapshot_len_bound(&contents) >= snapshot_frame(&contents, u64::MAX).len());
        for i in 0..200usize {
            let mut user = alice();
            user.user_id = Id::parse(&"u".repeat(1 + i % 128)).unwrap();
            user.device_id = (i % 3 != 0).then(|| Arc::from("d".repeat(i % 40)));
            user.status_text = (i % 2 == 0).then(|| Arc::from("t".repeat(i * 2)));
            let groups = (0..i % 60).map(|g| Id::parse(&format!("{g:0>width$}", width = 1 + g * 2)).unwrap());
            user.groups = crate::presence::Groups::from(groups.collect::<Vec<_>>());
            user.version = u64::MAX >> (i % 64);
            if i % 4 == 0 {
                contents.indicators.push(LiveIndicator {
                    group: user.groups.first().cloned().unwrap_or_else(|| user.user_id.clone()),
                    user: user.user_id.clone(),
                    kind: IndicatorKind::ALL[i % 3],
                    since: u64::MAX >> (i % 64),
                });
            }
            contents.users.push(user);
            let users = std::mem::take(&mut contents.users);
            let indicators = std::mem::take(&mut contents.indicators);
            contents = SnapshotContents::new(users, indicators, None);
            let (bound, len) = (snapshot_len_bound(&contents), snapshot_frame(&contents, i as u64).len());
            let items = contents.users.len() + contents.indicators.len() + contents.group_counts.len();
            assert!(bound >= len && bound <= len + 16 * items + 64, "{} users: bound {bound}, len {len}", i + 1);
        }
    }

    #[test]
    fn error_echoes_type_and_message_id() {
        let v = read(&error_frame(ErrorCode::SenderMismatch, "nope", Some(30), Some(&Value::from("m1"))));
        assert_eq!(v[1].as_u64(), Some(33));
        assert_eq!(v[4].as_str(), Some("m1"));
        assert_eq!(v[5]["code"].as_str(), Some("sender_mismatch"));
        assert_eq!(v[5]["messageType"].as_u64(), Some(30));
    }

    #[test]
    fn ack_echoes_the_message_id() {
        let v = read(&heartbeat_ack_frame(Some(&Value::from(12)), Duration::from_secs(10)));
        assert_eq!((v[1].as_u64(), v[4].as_u64()), (Some(34), Some(12)));
        assert!(v[5]["timestamp"].as_u64().is_some());
        assert_eq!(v[5]["presenceTtlMs"].as_u64(), Some(10_000), "the TTL a client heartbeats within");
    }

    #[test]
    fn channel_frames_keep_the_layout_they_are_given() {
        let (from, to) = (Id::parse("1").unwrap(), Id::parse("18").unwrap());
        let five = read(&channel_frame(ChannelType::Group, 1, Some(&from), Some(&to), Slot::Absent, &Value::from(7)));
        assert_eq!(five, Value::Array(vec![0.into(), 1.into(), "1".into(), "18".into(), 7.into()]));
        let id = Value::from("m");
        let six = read(&channel_frame(ChannelType::Private, 2, None, Some(&to), Slot::Id(Some(&id)), &Value::Nil));
        assert_eq!(six, Value::Array(vec![1.into(), 2.into(), 0.into(), "18".into(), "m".into(), Value::Nil]));
        let nil = read(&channel_frame(ChannelType::Group, 3, Some(&from), Some(&to), Slot::Id(None), &Value::from(1)));
        assert_eq!(nil[4], Value::Nil);
        let nowhere = read(&channel_frame(ChannelType::Group, 8, Some(&from), None, Slot::Absent, &Value::Nil));
        assert_eq!(nowhere[3], Value::from(0), "no channel: VoicePing's no id");
    }

    #[test]
    fn heartbeat_frame_decodes_as_a_heartbeat() {
        let frame = decode(&heartbeat_frame("42")).unwrap();
        assert_eq!(frame.message_type, HEARTBEAT);
        assert_eq!(frame.from, Some(Id::parse("42").unwrap()));
    }
}
