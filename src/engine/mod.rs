//! The engine: where presence lives and how changes travel between routers.
//!
//! Presence, state with a lifetime, is kept apart from the broker, which carries transient
//! events; each is a trait with an in-memory implementation (one router, `make run`) and a
//! Redis one (a cluster of routers), as in centrifuge:
//! - [`PresenceStore`]: session leases, per-user versions, last seen, chosen statuses. It
//!   decides *transitions*.
//! - [`SignalStore`]: group activity that lives seconds: indicators and PTT floors.
//! - [`Broker`]: transitions, relayed frames and session messages between routers,
//!   fire-and-forget. It delivers what it receives into the [`BrokerEvents`] handler the
//!   router implements ([`crate::fanout`]), so no engine depends on the router's fan-out.
//!
//! A transition is returned by exactly one store call: the one that flipped the user. Only
//! that caller publishes it, which is what makes "exactly one offline per transition"
//! hold however many routers sweep for expired leases. `tests/store_contract.rs` runs the
//! same cases against every store.
//!
//! A failed call says why ([`EngineError`]): the store out of reach, which the router
//! waits out degraded, or a bug (an unexpected reply), which fails the call alone.

mod floors;
pub mod log;
mod memory;
pub mod outbox;
pub mod redis;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::time::Instant;

pub use floors::{
    FLOOR_LEASE, FLOOR_LEASE_QUIET, FLOOR_LEASE_RENEW, FLOOR_ORPHAN_GRACE, FloorListeners, OrphanedFloor,
};
pub use memory::{MemoryBroker, MemoryPresence};

use crate::{
    id::Id,
    position::Position,
    presence::{ActivityChange, Choice, Mode, PresenceUpdate, Session, SessionId, Snapshot, UserPresence},
    protocol::payload::IndicatorKind,
    scope::Scope,
    transient::{Control, Delivery},
};

/// How long each kind of presence state lives.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A session's lease: renewed by heartbeats.
    pub ttl: Duration,
    /// How long an offline user's last seen is kept.
    pub last_seen: Duration,
    /// Inactivity after which an `online` user is shown `away`.
    pub away_after: Duration,
    /// How many of the latest transitions each shard's change log keeps, at least
    /// (`--change-log-entries`): a dashboard that missed no more resumes from its position.
    pub log_entries: usize,
}

/// Why an engine call failed. Only [`EngineError::Unavailable`] is an outage, which the
/// router waits out degraded (see [`crate::node::Node`]); the other kinds are bugs that
/// waiting would not cure: they fail the call and are logged and counted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The store cannot be reached, or refuses to serve now (down, hung, out of memory, a
    /// read-only replica): presence calls fail, connections stay up.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something the engine does not expect (a reply of another shape,
    /// a script that failed): the engine and its store disagree.
    #[error("unexpected reply from the presence store: {0}")]
    Protocol(String),
    /// The engine failed on its own (a value it could not encode, a task of its own gone).
    #[error("presence engine failure: {0}")]
    Internal(String),
}

impl EngineError {
    /// Every [`EngineError::kind`], for the metric's label values.
    pub const KINDS: [&'static str; 3] = ["unavailable", "protocol", "internal"];

    /// The kind, as the `kind` label of `presence_engine_errors_total` has it.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Unavailable(_) => "unavailable",
            EngineError::Protocol(_) => "protocol",
            EngineError::Internal(_) => "internal",
        }
    }

    /// Whether the store is out of reach (rather than the engine at fault).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Unavailable(_))
    }
}

/// What registering a new session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connected {
    /// The user's transition, if any.
    pub update: Option<PresenceUpdate>,
    /// The live session of the same user and device id that the new one replaced: ended
    /// in the same step, after the new one was registered, so the replacement is no
    /// transition of its own. Its connection is still open and must be closed.
    pub replaced: Option<SessionId>,
}

/// What [`PresenceStore::set_user_status`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusSet {
    /// The user has no live session: nothing was written.
    NotOnline,
    /// Set; the transition when what others see changed.
    Set(Option<PresenceUpdate>),
}

/// Stored presence: session leases that expire unless heartbeats renew them.
///
/// A session with a device id holds its user's device: a new session of the same user and
/// device replaces it ([`PresenceStore::connect`]), and no other call brings a replaced
/// session back (its re-leases are refused while the device's current session lives).
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Registers a new session with a fresh lease, replacing the live session of the same
    /// user and device id if there is one. The transition is the online one when the user
    /// had no live session, or a `groups` one when the union of its groups changed.
    async fn connect(&self, session: &Session) -> Result<Connected, EngineError>;

    /// Re-registers a live session whose groups changed (a token refresh) with a fresh
    /// lease. Returns the transition when the union of the user's groups changed.
    async fn regroup(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError>;

    /// Renews a session's lease. A session whose lease already ran out is registered
    /// again (the phone was silent, not gone), which may return an online transition,
    /// unless another live session holds its device now (it was replaced).
    /// When the store has lost the user's chosen status (an empty Redis after a restart),
    /// the session's [`choice`](Session::choice) is restored. The lease runs the TTL from
    /// `at`, when the heartbeat arrived (it may have waited for a batch).
    async fn heartbeat(&self, session: &Session, at: Instant) -> Result<Option<PresenceUpdate>, EngineError>;

    /// How long the router gathers heartbeats before renewing them (see
    /// [`crate::renewals`]): zero for a store in this process; a store across the network
    /// renews a batch per round trip, and each round trip costs it far more than the
    /// renewals it carries.
    fn renewal_window(&self) -> Duration {
        Duration::ZERO
    }

    /// Ends a session. Returns the offline transition when it was the user's last.
    async fn disconnect(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError>;

    /// Sets the status the user chose and its custom text (`None` clears it), leaving its
    /// activity as it is. Returns the transition when what others see changed.
    async fn set_status(
        &self,
        session: &Session,
        mode: Mode,
        text: Option<&str>,
    ) -> Result<Option<PresenceUpdate>, EngineError> {
        self.set_choice(session, mode, text, &ActivityChange::Keep).await
    }

    /// [`PresenceStore::set_status`], and changes the user's activity (its start is the
    /// store's clock when the type or name changes, kept otherwise).
    async fn set_choice(
        &self,
        session: &Session,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<Option<PresenceUpdate>, EngineError>;

    /// Sets the status and text `user` chose, as [`PresenceStore::set_status`] does from
    /// one of its sessions, but only while it has a live session: a status belongs to a
    /// present user, and nothing is written for one without ([`StatusSet::NotOnline`]).
    /// For requests that come from no session of the user (the HTTP API).
    async fn set_user_status(
        &self,
        user: &Id,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<StatusSet, EngineError>;

    /// Records activity of the session's user (resets the away timer). Returns the
    /// transition when the user was idle (away) and is online again.
    async fn activity(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError>;

    /// Ends every session whose lease ran out and returns the offline transitions of the
    /// users left with none, then the away transitions of users idle past
    /// [`Lifetimes::away_after`]. This is the backstop that does not depend on Redis
    /// keyspace events, which arrive late or not at all; it is safe to call from several routers at once.
    async fn expire_due(&self) -> Result<Vec<PresenceUpdate>, EngineError>;

    /// Shortens a session's lease to at most `grace` from now, without ending it: a router
    /// shutting down leaves its sessions to reconnect elsewhere before they lapse, so a
    /// rolling restart shows no offline. The session gives up its device: a reconnect of
    /// the device does not replace it (its connection is gone already).
    async fn linger(&self, session: &Session, grace: Duration) -> Result<(), EngineError>;

    /// Every user with a live session, from an index (never a keyspace scan, which costs O(all keys)),
    /// and the change log's head read before them.
    async fn online(&self) -> Result<Snapshot, EngineError>;

    /// The transitions after `from` in the change log ([`log`]), up to its head now, or
    /// why they cannot be told: a dashboard that left at `from` resumes with them.
    async fn changes_since(&self, from: &Position) -> Result<log::Changes, EngineError>;

    /// Per shard, the number after which the change log still holds every transition: a
    /// position at or past it in every shard of the log's epoch can be resumed, unless the
    /// log is trimmed further before it is read.
    async fn log_kept(&self) -> Result<Vec<u64>, EngineError>;

    /// Whether the store answers and accepts writes: a store that still answers reads
    /// but refuses writes (out of memory, a read-only replica) must read as down.
    async fn ping(&self) -> Result<(), EngineError>;

    /// The presence of each requested user as `scope` reads it ([`Scope::read`]), in
    /// request order: unknown and out-of-scope users alike read as
    /// [`UserPresence::unknown`].
    async fn lookup(&self, users: &[Id], scope: &Scope) -> Result<Vec<UserPresence>, EngineError>;

    /// The status and text `user` chose (what a new session carries, so that a re-assert
    /// after the store lost its data brings them back); `None` for a user never seen.
    async fn choice(&self, user: &Id) -> Result<Option<Choice>, EngineError>;

    /// The users whose sessions named `group` within the last-seen retention.
    async fn group_members(&self, group: &Id) -> Result<Vec<Id>, EngineError>;
}

/// Group activity that lives a few seconds: indicators (typing, recording) and PTT floors.
/// Kept apart from presence: no transitions, no versions, and an engine states for each
/// method what it does (there are no defaults to inherit by forgetting one).
#[async_trait]
pub trait SignalStore: Send + Sync + 'static {
    /// Sets (`Some(ttl)`: live for `ttl`) or clears (`None`) a user's indicator in a group.
    /// Only the group endpoint reads these; the frames that announce them are relayed.
    async fn set_indicator(
        &self,
        group: &Id,
        user: &Id,
        kind: IndicatorKind,
        ttl: Option<Duration>,
    ) -> Result<(), EngineError>;

    /// The live indicators in a group, sorted.
    async fn indicators(&self, group: &Id) -> Result<Vec<(IndicatorKind, Id)>, EngineError>;

    /// Every live indicator in every group, as (group, kind, user), sorted: what a router
    /// rebuilding its view (at start, after an outage) shows its dashboards. Read from an
    /// index of the live ones, never a scan of the keyspace.
    async fn live_indicators(&self) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError>;

    /// Claims the indicators that lapsed without being cleared by the router that set them
    /// (it died): (group, kind, user) each, whose end the caller announces. Each is
    /// claimed by exactly one router, and never one its router cleared.
    async fn claim_orphaned_indicators(&self) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError>;

    /// Claims a PTT channel's floor for `claim`'s talker for at most its `hold`, unless
    /// another session holds it and is not idle: [`FloorTake::Granted`] also to the
    /// session that holds it already (and a replayed call gets its first answer again).
    /// Routers check their own sessions first; the store arbitrates between routers.
    async fn take_floor(&self, channel: &str, claim: &FloorClaim) -> Result<FloorTake, EngineError>;

    /// The floor's holder sent AUDIO: the floor goes idle `idle` from now. Nothing when
    /// `holder` does not hold it.
    async fn touch_floor(&self, channel: &str, holder: &SessionId, idle: Duration) -> Result<(), EngineError>;

    /// Gives the floor back if `holder` still has it; nothing otherwise.
    async fn release_floor(&self, channel: &str, holder: &SessionId) -> Result<(), EngineError>;

    /// Renews for `lease` the leases of the floors this router's sessions hold, each
    /// `(channel, holder)`, in one round trip where the transport allows; nothing for a
    /// floor `holder` does not hold ([`FLOOR_LEASE`], [`FLOOR_LEASE_RENEW`]).
    async fn renew_floors(&self, floors: &[(String, SessionId)], lease: Duration) -> Result<(), EngineError>;

    /// Claims the floors whose lease lapsed [`FLOOR_ORPHAN_GRACE`] ago (their router died),
    /// and those of the users in `gone` (they just went offline: their sessions lapsed)
    /// whose lease was not renewed for [`FLOOR_LEASE_QUIET`]: each is released, its
    /// talker's `talking` indicator cleared, and returned to exactly one caller, which
    /// announces the talk's end. Never a floor given back or taken over, nor one a live
    /// router renews.
    async fn claim_orphaned_floors(&self, gone: &[Id]) -> Result<Vec<OrphanedFloor>, EngineError>;
}

/// Who talks on a PTT floor: what a session that takes the floor over needs to end that
/// talk for its listeners, and to tell its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Talker {
    pub session: SessionId,
    pub user: Id,
    /// The talk's message id.
    pub talk: Arc<str>,
    /// Its START had the message-id slot: the STOP its listeners get has it too.
    pub with_message_id: bool,
}

/// A session's claim on a PTT channel's floor.
#[derive(Debug, Clone)]
pub struct FloorClaim {
    pub talker: Talker,
    /// Held at most this long (the maximum talk time), unless given back sooner.
    pub hold: Duration,
    /// Taken over by another session's claim once the talker has sent no AUDIO (see
    /// [`SignalStore::touch_floor`]) for this long since the claim or the last touch;
    /// `None`: never. A claim with `None` takes no idle floor over either.
    pub idle: Option<Duration>,
    /// Who hears the talk: told of its end by another router if this one dies.
    pub listeners: FloorListeners,
}

/// The answer to [`SignalStore::take_floor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorTake {
    Granted,
    /// Another session holds the floor.
    Busy,
    /// Granted: the floor was `from`'s, idle, and held for `held`.
    TakenOver {
        from: Talker,
        held: Duration,
    },
}

/// Transient transport between routers: transitions, relayed frames and session messages,
/// fire-and-forget. What other routers publish reaches this one's [`BrokerEvents`].
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes transitions, in order, to every router (this one included). A batch goes
    /// out in one round trip where the transport allows, which is what keeps a sweep that
    /// ends thousands of leases at once from trickling them out.
    async fn publish(&self, updates: &[PresenceUpdate]) -> Result<(), EngineError>;

    /// Carries a relayed frame to the other routers, each of which delivers it to its own
    /// connections. Fire-and-forget and never waits: transient frames are worth nothing
    /// late. The sending router delivers to its own connections itself.
    fn relay(&self, delivery: &Delivery);

    /// Carries a message about one session to the other routers, in order with the
    /// relayed frames (a replaced talker's STOP goes out before the news that it ended).
    /// Fire-and-forget like [`Broker::relay`].
    fn control(&self, control: &Control);

    /// Sends whatever relayed frames are still queued, then stops relaying: the router is
    /// exiting, and its connections' last frames (a talker's STOP) must still go out.
    async fn flush(&self);

    /// This router gained its first (`serving`) or lost its last (not `serving`) local
    /// mobile member of `group`: from now on, the group's member frames
    /// ([`Audience::Group`](crate::transient::Audience::Group) without dashboards: PTT and
    /// TEXT) must (or need no longer) reach it. As in centrifuge, a broker whose transport
    /// has channels subscribes to the group's channel from the first member to the last, so
    /// a router hears only the groups it serves. Called under the relay's lock, in the order
    /// the changes happen: it never blocks (no I/O, no waiting).
    fn serve_group(&self, group: &Id, serving: bool);

    /// Resolves once the member frames of `groups` that other routers publish from now on
    /// reach this router: after [`Broker::serve_group`] named a group, subscribing to its
    /// channel takes a round trip. Bounded: while the transport is out of reach it
    /// resolves anyway (the node is degraded then). The node waits for it before the store
    /// shows a new session, so whoever answers that session's arrival reaches it.
    async fn until_serving(&self, _groups: &[Id]) {}

    /// Whether this router hears what the others publish. While it does not, its view of
    /// presence is going stale and frames relayed to its users are lost: the node reports
    /// itself degraded until the broker hears again, then rebuilds the view.
    fn is_receiving(&self) -> bool;
}

/// What a broker hands its router: the transitions every router publishes, the frames and
/// session messages other routers relay, and the broker's own hints. The router's fan-out
/// implements it ([`crate::fanout::FanOut`]); a broker delivers only into it, so no engine
/// depends on how the router fans out.
///
/// A broker calls these from its receiving task, one at a time and in arrival order: each
/// returns at once (no I/O, no waiting).
pub trait BrokerEvents: Send + Sync + 'static {
    /// A transition, published by any router, this one included. Stale ones (a version
    /// the router has already passed) are the handler's to drop.
    fn update(&self, update: PresenceUpdate);

    /// A frame another router relayed, for this router's connections in its audience.
    fn frame(&self, delivery: &Delivery);

    /// A message about one session from another router (replaced; ended), in order after
    /// the frames that router relayed before it.
    fn control(&self, control: &Control);

    /// Transitions may have been missed, or this router stopped hearing the others: its
    /// view of presence must be rebuilt from the store. `missed` says what was lost; the
    /// view counts as stale from this call until it is rebuilt.
    fn resync_needed(&self, missed: Missed);
}

/// What a broker lost, when it asks for a resync ([`BrokerEvents::resync_needed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Transitions that never arrived: a gap in the sequence stayed open past its grace.
    Transitions,
    /// The sequence went back: the store lost its data (a restart without persistence,
    /// `FLUSHALL`, a failover to a replica that had not caught up).
    StoreData,
    /// The subscription lapsed or stopped delivering: anything published meanwhile.
    Subscription,
}

/// What a router runs with: its presence, its signals and its broker.
#[derive(Clone)]
pub struct Engine {
    pub name: &'static str,
    pub store: Arc<dyn PresenceStore>,
    pub signals: Arc<dyn SignalStore>,
    pub broker: Arc<dyn Broker>,
}

impl Engine {
    /// An engine whose one store holds both presence and signals, as both of ours do.
    pub fn new<S: PresenceStore + SignalStore>(name: &'static str, store: Arc<S>, broker: Arc<dyn Broker>) -> Self {
        Engine { name, store: store.clone(), signals: store, broker }
    }
}
