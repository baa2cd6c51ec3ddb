//! The wire protocol: VoicePing-compatible msgpack frames.
//!
//! A frame is a msgpack array `[channelType, messageType, fromId, toId, payload]` or, with
//! a message id, `[channelType, messageType, fromId, toId, messageId, payload]` (or, with
//! neither, `[channelType, messageType, fromId, toId]`; VoicePing's CONNECTION alone comes
//! as `[channelType, messageType, fromId]`). What is relayed on a channel, and
//! VoicePing's START_ACK / START_FAILED, keep the sender's layout; every other frame the
//! router sends carries the message id, so its payload sits at index 5.
//! `docs/PROTOCOL.md` is the reference for clients.

mod decode;
mod encode;
pub mod groups;
pub mod live;
pub mod payload;
mod resume;
mod staleness;
pub mod voiceping;

pub use decode::{DecodeError, Frame, MAX_DEPTH, decode};
pub use encode::{
    ErrorCode, Slot, ack_frame, channel_frame, client_frame, encode_snapshot, error_frame, heartbeat_ack_frame,
    heartbeat_frame, indicator_frame, snapshot_frame, snapshot_len_bound, update_frame,
};
pub use resume::{ViewMark, resumed_frame};
pub use staleness::{fresh_frame, stale_frame};

/// How `toId` is read: a group or one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelType {
    Group = 0,
    Private = 1,
}

/// Message types. 0–27 are VoicePing's PTT types and keep their numbers; 30–32 are the
/// presence types (heartbeat, update, snapshot); 33 up are this router's own.
pub mod message_type {
    pub const UNKNOWN: u8 = 0;
    pub const START: u8 = 1;
    pub const STOP: u8 = 2;
    pub const AUDIO: u8 = 3;
    /// Mobile → router: VoicePing's SDK announces itself, `[0, 4, uid]` (three elements);
    /// taken without an answer.
    pub const CONNECTION: u8 = 4;
    pub const START_ACK: u8 = 6;
    pub const STOP_ACK: u8 = 7;
    pub const START_FAILED: u8 = 8;
    /// Router → mobile: `[1, 9, 0, userId, text]`, another session of the user's device
    /// replaced this one (close 4009 follows); VoicePing's apps stop reconnecting on it.
    pub const LOGIN_DUPLICATED: u8 = 9;
    /// Mobile → router: join the group in `toId` for the rest of the session.
    pub const USER_ADD: u8 = 15;
    /// Mobile → router: leave the group in `toId` for the rest of the session.
    pub const USER_REMOVE: u8 = 16;
    pub const TEXT: u8 = 17;
    /// Receiver → router → sender: `[1, 20, receiver, sender, messageId]`, the message
    /// with that id reached the receiver (a group's are ignored, as VoicePing did).
    pub const DELIVERED: u8 = 20;
    /// Receiver → router → sender: the message with that id was read.
    pub const READ: u8 = 21;
    /// Router → sender: the TEXT was relayed; VoicePing's ack, on the text's channel.
    pub const TEXT_ACK: u8 = 22;
    /// Router → talker: `[0, 27, fromId, groupId, "Unauthorized Group"]`, the START named a
    /// group outside the session's groups (START_FAILED "Ack Failed" follows).
    pub const UNAUTHORIZED_GROUP: u8 = 27;
    /// Last of VoicePing's numbers.
    pub const VOICEPING_LAST: u8 = UNAUTHORIZED_GROUP;
    /// Mobile → router: keep my presence alive.
    pub const HEARTBEAT: u8 = 30;
    /// Router → clients: one user's presence changed.
    pub const PRESENCE_UPDATE: u8 = 31;
    /// Router → dashboards: everyone online, sent on connect and after a resync.
    pub const PRESENCE_SNAPSHOT: u8 = 32;
    /// Router → client: the frame named in the payload was refused.
    pub const ERROR: u8 = 33;
    /// Router → mobile: the heartbeat was received; a client that stops getting these
    /// holds a zombie connection and should reconnect.
    pub const HEARTBEAT_ACK: u8 = 34;
    /// Mobile → router: set my status (online/away/dnd/invisible) and status text.
    pub const STATUS: u8 = 35;
    /// Mobile → router: the user is active (resets the away timer).
    pub const ACTIVITY: u8 = 36;
    /// Mobile → router: I started/stopped typing or recording in group `toId`.
    pub const INDICATOR: u8 = 37;
    /// Router → group members and dashboards: someone's indicator started or ended.
    pub const INDICATOR_UPDATE: u8 = 38;
    /// Router → client: the STATUS, ACTIVITY, INDICATOR, REFRESH, USER_ADD or USER_REMOVE
    /// frame was applied.
    pub const ACK: u8 = 39;
    /// Client → router: `{token}`, a new token for the same user and role, to be used
    /// from now on (its expiry, and its groups).
    pub const REFRESH: u8 = 40;
    /// Router → dashboard: `{position, view, changes, indicators, timestamp}`, after the
    /// PRESENCE_UPDATEs that brought a resuming dashboard's view from its position up to
    /// date, in place of a PRESENCE_SNAPSHOT.
    pub const RESUMED: u8 = 41;
    /// Router → dashboards: `{since, reason, timestamp}`, this router's view stopped being
    /// fed (Redis out of reach, the subscription lost, transitions missed): what is shown
    /// is kept, but may be out of date.
    pub const STALE: u8 = 43;
    /// Router → dashboards: `{since, reason, timestamp}`, the view is fed again; the
    /// frames since STALE (a PRESENCE_SNAPSHOT of the rebuilt view, updates) made the
    /// corrections.
    pub const FRESH: u8 = 44;
    /// Dashboard → router: show me the group in `toId`, in full or by its counts
    /// (`protocol::groups`).
    pub const SUBSCRIBE: u8 = 45;
    /// Dashboard → router: stop showing me the group in `toId`.
    pub const UNSUBSCRIBE: u8 = 46;
    /// Router → dashboard: one group's counts of members online, away, dnd and offline.
    pub const GROUP_COUNTS: u8 = 47;
    /// Router → dashboard: one group's part of the view, the answer to a SUBSCRIBE.
    pub const GROUP_SNAPSHOT: u8 = 48;

    /// A low-cardinality label for metrics.
    pub fn label(message_type: u8) -> &'static str {
        match message_type {
            HEARTBEAT => "heartbeat",
            PRESENCE_UPDATE => "presence_update",
            PRESENCE_SNAPSHOT => "presence_snapshot",
            ERROR => "error",
            HEARTBEAT_ACK => "heartbeat_ack",
            STATUS => "status",
            ACTIVITY => "activity",
            INDICATOR => "indicator",
            INDICATOR_UPDATE => "indicator_update",
            ACK => "ack",
            REFRESH => "refresh",
            RESUMED => "resumed",
            STALE => "stale",
            FRESH => "fresh",
            SUBSCRIBE => "subscribe",
            UNSUBSCRIBE => "unsubscribe",
            START => "start",
            STOP => "stop",
            AUDIO => "audio",
            TEXT => "text",
            USER_ADD => "user_add",
            USER_REMOVE => "user_remove",
            DELIVERED => "delivered",
            READ => "read",
            0..=VOICEPING_LAST => "ptt_other",
            _ => "unknown",
        }
    }
}
