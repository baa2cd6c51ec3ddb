//! The presence data model shared by the store, the broker, the hub and the API.
//!
//! Presence is per *user*; sessions are per *connection*. A user is online while at least
//! one of its sessions holds a live lease, so a second device or a reconnect elsewhere
//! never turns a live user offline. Every change of a user's presence
//! bumps its `version`, and every receiver drops an update whose version it has already
//! passed, so updates that cross routers out of order never undo a newer one.

use std::{
    fmt,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// The status others see. `away` and `dnd` users are connected (they count as online);
/// an invisible user is shown `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Away,
    Dnd,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Dnd => "dnd",
            Status::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "online" => Status::Online,
            "away" => Status::Away,
            "dnd" => Status::Dnd,
            "offline" => Status::Offline,
            _ => return None,
        })
    }

    /// Connected, whatever the user chose to show (invisible users are shown offline).
    pub fn is_online(self) -> bool {
        self != Status::Offline
    }
}

/// The status a user chose. It outlives sessions (a reconnect keeps `dnd`) and is shown
/// only while the user is connected; `Auto` turns to `away` after inactivity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// "online": online while active, away after `AWAY_AFTER_MS` without activity.
    #[default]
    Auto,
    /// Manual away, until the user sets "online" again.
    Away,
    Dnd,
    /// Connected but shown offline to everyone.
    Invisible,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "online",
            Mode::Away => "away",
            Mode::Dnd => "dnd",
            Mode::Invisible => "invisible",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "online" => Mode::Auto,
            "away" => Mode::Away,
            "dnd" => Mode::Dnd,
            "invisible" => Mode::Invisible,
            _ => return None,
        })
    }

    /// What others see of a user in this mode: `connected` (a live session) and `idle`
    /// (no activity within `AWAY_AFTER_MS`).
    pub fn shown(self, connected: bool, idle: bool) -> Status {
        match self {
            _ if !connected => Status::Offline,
            Mode::Invisible => Status::Offline,
            Mode::Dnd => Status::Dnd,
            Mode::Away => Status::Away,
            Mode::Auto if idle => Status::Away,
            Mode::Auto => Status::Online,
        }
    }
}

/// Longest custom status text, in bytes.
pub const MAX_STATUS_TEXT: usize = 128;

/// Longest activity type, in bytes: a short token (`driving`, `on_call`).
pub const MAX_ACTIVITY_TYPE: usize = 32;

/// What a user is doing, shown beside its status while it is shown (like the status
/// text): a `type` token, an optional free-text `name` (the status text's limits), and
/// when it started (Unix ms, set by the store when the type or name changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    pub started_at: u64,
}

impl Activity {
    /// As the Redis engine stores it (hash field, change log): `type\nstartedAt\nname`
    /// (neither type nor name holds a control character).
    pub fn encode(&self) -> String {
        format!("{}\n{}\n{}", self.kind, self.started_at, self.name.as_deref().unwrap_or(""))
    }

    /// Reads [`Activity::encode`]'s form back; `None` for anything else.
    pub fn decode(stored: &str) -> Option<Activity> {
        let mut parts = stored.splitn(3, '\n');
        let (kind, started_at, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Activity {
            kind: Arc::from(kind),
            name: (!name.is_empty()).then(|| Arc::from(name)),
            started_at: started_at.parse().ok()?,
        })
    }

    /// Whether `kind` is an activity type: 1 to [`MAX_ACTIVITY_TYPE`] bytes of lower-case
    /// ASCII letters, digits, `_` and `-`.
    pub fn valid_kind(kind: &str) -> bool {
        (1..=MAX_ACTIVITY_TYPE).contains(&kind.len())
            && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }
}

/// What a status request does to the user's activity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ActivityChange {
    /// Leaves it as it is (a request that does not name one).
    #[default]
    Keep,
    Clear,
    /// Sets it; its start is kept when the type and name are unchanged.
    Set {
        kind: Arc<str>,
        name: Option<Arc<str>>,
    },
}

impl ActivityChange {
    /// As `status.lua` takes it: `=` keeps, empty clears, `type\nname` sets.
    pub fn arg(&self) -> String {
        match self {
            ActivityChange::Keep => "=".into(),
            ActivityChange::Clear => String::new(),
            ActivityChange::Set { kind, name } => format!("{kind}\n{}", name.as_deref().unwrap_or("")),
        }
    }

    /// The activity after this change to `current`, at `now_ms`.
    pub fn apply(&self, current: Option<&Activity>, now_ms: u64) -> Option<Activity> {
        match self {
            ActivityChange::Keep => current.cloned(),
            ActivityChange::Clear => None,
            ActivityChange::Set { kind, name } => match current {
                Some(same) if same.kind == *kind && same.name == *name => Some(same.clone()),
                _ => Some(Activity { kind: kind.clone(), name: name.clone(), started_at: now_ms }),
            },
        }
    }
}

/// Identifies one connection cluster-wide: the router's id and a per-router counter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Arc<str>);

impl SessionId {
    pub fn new(router: &str, n: u64) -> Self {
        SessionId(Arc::from(format!("{router}:{n}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the router that holds the session.
    pub fn router(&self) -> &str {
        self.0.rsplit_once(':').map_or("", |(router, _)| router)
    }
}

/// A session id as [`SessionId::new`] wrote it, read back (from the store, the broker).
impl From<String> for SessionId {
    fn from(id: String) -> Self {
        SessionId(Arc::from(id))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection's claim on its user's presence.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub user: Id,
    /// The device the session was opened from; a new session of the same user and device
    /// replaces this one (sessions without a device id are never replaced).
    pub device_id: Option<Arc<str>>,
    /// The groups in the session's token; the user's presence carries the union of its
    /// live sessions' groups.
    pub groups: Groups,
    /// The status this session last chose, kept in the router's registry of its sessions:
    /// re-asserting the session after Redis lost its data (a restart without persistence)
    /// restores it, so a `dnd` user does not come back `online`.
    pub choice: Option<Choice>,
}

/// A chosen status, text and activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    pub text: Option<Arc<str>>,
    /// Behind a pointer: every mobile connection holds its session's choice, few an
    /// activity.
    pub activity: Option<Arc<Activity>>,
}

/// A user's groups, which decide which dashboards may see its presence. Cheap to clone.
pub type Groups = Arc<[Id]>;

/// A user's presence as the bulk API, snapshots and updates report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    pub user_id: Id,
    pub status: Status,
    /// Unix milliseconds of the last connect or heartbeat (while online), or of going
    /// offline. `None` for a user never seen.
    pub last_seen: Option<u64>,
    pub device_id: Option<Arc<str>>,
    /// Grows on every change of this user's presence, cluster-wide; see [`next_version`].
    pub version: u64,
    /// The union of the user's live sessions' groups; once none is left, the last union.
    #[serde(default, skip_serializing_if = "<[Id]>::is_empty")]
    pub groups: Groups,
    /// The custom status text, shown only while the user is shown online/away/dnd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<Arc<str>>,
    /// Unix ms of the last activity (connect, PTT, text, indicator, activity ping; not a
    /// heartbeat, which phones send on their own), while shown online/away/dnd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<u64>,
    /// What the user is doing, shown only while shown online/away/dnd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

/// Whether a dashboard allowed `allowed` groups (`None`: all) may see a user in `groups`:
/// only when they share one (selective broadcasting).
pub fn visible(groups: &[Id], allowed: Option<&[Id]>) -> bool {
    allowed.is_none_or(|allowed| groups.iter().any(|g| allowed.contains(g)))
}

/// Whether two lists name the same groups, in any order and each any number of times:
/// groups are a set, so lengths prove nothing (`[a, a]` is not `[a, b]`).
pub fn same_groups(a: &[Id], b: &[Id]) -> bool {
    a.iter().all(|g| b.contains(g)) && b.iter().all(|g| a.contains(g))
}

impl UserPresence {
    /// What is reported for a user the store has never seen.
    pub fn unknown(user_id: Id) -> Self {
        UserPresence {
            user_id,
            status: Status::Offline,
            last_seen: None,
            device_id: None,
            version: 0,
            groups: Groups::default(),
            status_text: None,
            last_activity: None,
            activity: None,
        }
    }
}

/// Why a user's presence changed; drives metrics and the `cause` field of updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// A session opened (or a heartbeat re-opened a lapsed one).
    Connect,
    /// The last session closed.
    Disconnect,
    /// The last session's lease ran out: no heartbeat within the TTL.
    Expired,
    /// The user set its status, status text or activity.
    Status,
    /// No activity within `AWAY_AFTER_MS`: online turned away.
    Idle,
    /// Activity after being idle: away turned online.
    Active,
    /// The union of the user's live sessions' groups changed (a session in other groups
    /// opened, closed, lapsed or refreshed its token) while its shown status did not.
    Groups,
}

impl Cause {
    /// Every cause, for metrics shown at 0 before the first transition of each.
    pub const ALL: [Cause; 7] =
        [Cause::Connect, Cause::Disconnect, Cause::Expired, Cause::Status, Cause::Idle, Cause::Active, Cause::Groups];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::Disconnect => "disconnect",
            Cause::Expired => "expired",
            Cause::Status => "status",
            Cause::Idle => "idle",
            Cause::Active => "active",
            Cause::Groups => "groups",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Cause::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A transition of one user's presence, as published between routers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceUpdate {
    #[serde(flatten)]
    pub presence: UserPresence,
    pub cause: Cause,
    /// Unix milliseconds at which the transition was decided; update latency is
    /// measured from here.
    pub timestamp: u64,
    /// The transition's number in the cluster-wide sequence (Redis engine), by which
    /// routers notice updates they never received. `None` in the embedded engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The shard whose sequence `seq` belongs to (0 on one Redis and in the memory
    /// engine): not sent between routers, each knows it from the channel it arrived on.
    #[serde(skip)]
    pub shard: usize,
}

/// Everyone online, and the store's clock when the read began: any transition decided
/// after that has a version at or above `watermark` (see [`next_version`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub users: Vec<UserPresence>,
    pub watermark: u64,
    /// The change log's head, read before the users: every transition up to it is in
    /// `users` (`None` when the store keeps no log).
    pub position: Option<crate::position::Position>,
}

/// A user's next version: above the last one and at least the store's current Unix ms.
/// Tying versions to the clock keeps them growing even when the store loses its data
/// (a Redis restart without persistence), so routers never mistake new updates for stale.
pub fn next_version(previous: u64, now_ms: u64) -> u64 {
    (previous + 1).max(now_ms)
}

/// Wall-clock Unix milliseconds, for `lastSeen` and timestamps shown to people.
/// Lease deadlines use the monotonic tokio clock instead.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
