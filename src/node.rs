//! The node: one router's presence service, composing the engine with the local hub.
//!
//! Store calls decide transitions; the node publishes each one it is handed exactly
//! once. It also keeps the registry of this router's live sessions, which is what lets it
//! re-assert them when the store comes back after an outage, and runs two
//! background tasks: the sweeper that ends leases nobody renewed, and the maintainer that
//! rebuilds presence after the broker lost messages or the store was unreachable.

pub mod log_reads;

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    engine::{Engine, EngineError, FloorClaim, FloorTake, StatusSet, Talker},
    fanout::FanOut,
    hub::{Hub, StaleReason},
    id::Id,
    metrics,
    presence::{
        ActivityChange, Cause, Choice, Groups, Mode, PresenceUpdate, Session, SessionId, UserPresence, unix_ms,
    },
    protocol::{self, ChannelType, payload::IndicatorKind},
    relay::Relay,
    renewals::PendingRenewals,
    scope::Scope,
    transient::{Audience, Control, Delivery},
};

/// Store calls in flight at once while re-asserting sessions after an outage.
const REASSERT_CONCURRENCY: usize = 64;
/// Renewals of one gathering handed to the store at once: more than a gathering usually
/// holds ([`crate::renewals::GATHER_ENOUGH`]), so it reaches the store as one batch.
const RENEW_CONCURRENCY: usize = 256;
/// Most sessions kept to end on recovery (see [`Node::disconnect`]).
const MAX_UNENDED: usize = 100_000;
/// How long a new session waits for the session of its device it replaced to end (its
/// floor released, its STOP and indicator ends sent) before it is served anyway: that
/// session's router may have died, and then another router ends its floor once its lease
/// lapses ([`crate::engine::FLOOR_LEASE`]).
const REPLACE_WAIT: Duration = Duration::from_secs(1);
/// Store writes a connection hands off without waiting (activity, indicators) queued at
/// most; past that they are dropped and counted: an indicator lapses in the store on its
/// own, and a lost activity only brings auto-away sooner.
const WRITE_BEHIND: usize = 4096;

/// A store write a connection does not wait for; done in order by the node's writer.
pub enum Write {
    Activity(Session),
    Indicator {
        group: Id,
        user: Id,
        kind: IndicatorKind,
        ttl: Option<Duration>,
    },
    /// The holder of a floor sent AUDIO: the store's idle deadline moves on.
    FloorTouch {
        channel: String,
        holder: SessionId,
        idle: Duration,
    },
    /// Answered once every write queued before it is done: reads see this router's own
    /// writes.
    Barrier(oneshot::Sender<()>),
}

/// How the node paces its background work.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often expired leases are swept.
    pub sweep_interval: Duration,
    /// After a resync, how long sweeping waits so every router can re-assert its sessions
    /// before anyone's lapsed lease is announced offline.
    pub recovery_grace: Duration,
    /// How often a degraded node checks whether the store is back.
    pub probe_interval: Duration,
    /// How long offline users stay in the hub's view (their last seen's retention).
    pub last_seen: Duration,
}

/// Calls `method` of the engine's store (`store` or `signals`), timed under its name (see
/// [`timed`]).
macro_rules! store {
    ($node:expr, $method:ident($($arg:expr),*)) => {
        store!($node, store.$method($($arg),*))
    };
    ($node:expr, $part:ident.$method:ident($($arg:expr),*)) => {
        timed(stringify!($method), $node.engine.$part.$method($($arg),*)).await
    };
}

// After `store!`, which it uses.
mod floor_leases;

pub use floor_leases::ROUTER_LOST;

/// Awaits a store or broker call and records how long it took in
/// `presence_store_call_duration_seconds{op}`, failures included (a call that timed out
/// shows as the timeout). Every store call goes through here, whichever the engine.
async fn timed<T>(op: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let output = call.await;
    ::metrics::histogram!(metrics::STORE_CALL_DURATION, "op" => op).record(started.elapsed());
    output
}

/// The operation [`Node::check`] is given when the broker does not deliver: the view is
/// stale for the subscription, not the store.
const DEAF: &str = "subscription";

/// How often the hub's view drops offline users past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often, at most, the store hears that a floor's holder still sends AUDIO (one write
/// per talker per interval, never one per frame). The store's idle deadline is moved on
/// by the idle time plus this, so it never passes while AUDIO keeps coming: on the Redis
/// engine an idle floor is taken over after between the idle time and this much more of
/// silence; on one router, after the idle time exactly.
pub const FLOOR_TOUCH_INTERVAL: Duration = Duration::from_millis(250);

/// The answer to a PTT START.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Floor {
    /// The floor is the claimant's. `local_only`: granted by this router alone, as the
    /// store could not be asked, so a session on another router might talk at the same
    /// time (PTT keeps working through a Redis outage). `taken_from`: the idle talker it
    /// was taken from, and how long that one had held it; its listeners must hear its
    /// STOP, and its session is told ([`Node::floor_taken`]).
    Granted { local_only: bool, taken_from: Option<(Talker, Duration)> },
    /// Another session holds the channel's floor.
    Busy,
}

/// A floor held by a session of this router.
#[derive(Debug, Clone)]
struct LocalFloor {
    talker: Talker,
    taken_at: Instant,
    /// The maximum talk time runs out.
    until: Instant,
    /// Another START may take it over after this long without AUDIO; `None`: never.
    idle: Option<Duration>,
    /// The last AUDIO (or the take).
    audio_at: Instant,
    /// When the store last heard of its AUDIO (or the take).
    touched_at: Instant,
}

/// A new router id: random enough that routers of one cluster never share one.
pub fn new_router_id() -> String {
    format!("{:012x}", RandomState::new().hash_one((std::process::id(), unix_ms())) >> 16)
}

pub struct Node {
    engine: Engine,
    /// This router's hub and relay; what the broker delivers lands there too.
    fanout: Arc<FanOut>,
    timing: Timing,
    router_id: String,
    /// PTT floors held by this router's sessions, by channel.
    floors: Mutex<HashMap<String, LocalFloor>>,
    next_session: AtomicU64,
    /// Numbers the message ids this router makes.
    next_message: AtomicU64,
    /// This router's live sessions.
    local: Mutex<HashMap<SessionId, Session>>,
    /// Sessions that closed while the store could not record it: ended on recovery.
    unended: Mutex<HashMap<SessionId, Session>>,
    /// Live sessions whose connect the store never took (it failed, or was skipped while
    /// degraded): connected on recovery rather than renewed, so that each still replaces
    /// its device's session (a renewal never replaces: it is refused while another live
    /// session holds the device).
    unregistered: Mutex<HashSet<SessionId>>,
    /// Heartbeats waiting for the renewer.
    renewals: PendingRenewals,
    /// Writes waiting for the writer, and its end of the queue until it starts.
    writes: mpsc::Sender<Write>,
    pending_writes: Mutex<Option<mpsc::Receiver<Write>>>,
    /// Set when a store call fails; cleared by a successful resync.
    degraded: AtomicBool,
    /// No sweeping before this (see [`Timing::recovery_grace`]).
    sweep_paused_until: Mutex<Option<Instant>>,
    /// Reads of the change log for resuming dashboards.
    log_reads: log_reads::LogReads,
}

impl Node {
    /// `fanout` is the one the engine's broker delivers into. The broker hears from the
    /// relay which groups this router serves ([`Broker::serve_group`]).
    ///
    /// [`Broker::serve_group`]: crate::engine::Broker::serve_group
    pub fn new(engine: Engine, fanout: Arc<FanOut>, timing: Timing, router_id: String) -> Self {
        // Weak: a memory broker holds the fan-out, which holds the relay and so this hook.
        let broker = Arc::downgrade(&engine.broker);
        fanout.relay().on_serving(Box::new(move |group, serving| {
            if let Some(broker) = broker.upgrade() {
                broker.serve_group(group, serving);
            }
        }));
        let (writes, pending_writes) = mpsc::channel(WRITE_BEHIND);
        Node {
            engine,
            fanout,
            timing,
            router_id,
            floors: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
            local: Mutex::new(HashMap::new()),
            unended: Mutex::new(HashMap::new()),
            unregistered: Mutex::new(HashSet::new()),
            renewals: PendingRenewals::default(),
            writes,
            pending_writes: Mutex::new(Some(pending_writes)),
            degraded: AtomicBool::new(false),
            sweep_paused_until: Mutex::new(None),
            log_reads: log_reads::LogReads::default(),
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        self.fanout.hub()
    }

    pub fn relay(&self) -> &Arc<Relay> {
        self.fanout.relay()
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name
    }

    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// True while the store is unreachable or presence has not been rebuilt since.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// A new session with an id unique across the cluster (router id + counter).
    pub fn session(&self, user: Id, device_id: Option<Arc<str>>, groups: Groups) -> Session {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        Session { id: SessionId::new(&self.router_id, n), user, device_id, groups, choice: None }
    }

    /// A new message id for a talk or a text, VoicePing's `{channelType}_{type}_{toId}_{fromId}_{ms}`
    /// (its apps and tests read the prefix) with this router's id and a counter after it:
    /// unique across the cluster.
    pub fn message_id(&self, channel: ChannelType, message_type: u8, to: &Id, from: &Id) -> Arc<str> {
        let n = self.next_message.fetch_add(1, Ordering::Relaxed);
        let (channel, router) = (channel as u8, &self.router_id);
        Arc::from(format!("{channel}_{message_type}_{to}_{from}_{}_{router}-{n}", unix_ms()))
    }

    /// No code under these locks can panic; recover the guard rather than propagate one.
    fn local(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session locally first: if the store is down it is re-asserted later.
    /// While degraded the store is not asked (a hung one would hold the connection for its
    /// whole timeout): the session is re-asserted when the store answers again.
    ///
    /// A live session of the same user and device is replaced: the store ends it in the
    /// same step, and this returns once its connection, here or on another router, has
    /// ended it (STOP to its listeners, its indicators ended, its floor released), or
    /// after [`REPLACE_WAIT`]: whatever the new session does next comes after that.
    ///
    /// Returns the status and text the user chose, for the session to carry (a re-assert
    /// after the store lost its data brings them back, also for a user who reconnected
    /// since choosing them).
    pub async fn connect(&self, session: &Session) -> Result<Option<Choice>, EngineError> {
        self.local().insert(session.id.clone(), session.clone());
        let registered = match self.skip_while_degraded() {
            Ok(()) => {
                // The relay registered the session, so its groups are served: their frames
                // must reach it before anyone sees it there.
                self.engine.broker.until_serving(&session.groups).await;
                self.register(session).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = registered {
            self.unregistered().insert(session.id.clone());
            return Err(e);
        }
        let result = store!(self, choice(&session.user));
        let choice = self.check("choice", result)?;
        if let Some(registered) = self.local().get_mut(&session.id) {
            registered.choice.clone_from(&choice);
        }
        Ok(choice)
    }

    /// The store's half of [`Node::connect`]: the session is registered, its transition
    /// published, and the session of its device it replaced ended.
    async fn register(&self, session: &Session) -> Result<(), EngineError> {
        let result = store!(self, connect(session));
        let connected = self.check("connect", result)?;
        self.unregistered().remove(&session.id);
        if let Some(update) = connected.update {
            self.publish(std::slice::from_ref(&update)).await;
        }
        if let Some(replaced) = connected.replaced {
            self.replace(&replaced).await;
        }
        Ok(())
    }

    fn unregistered(&self) -> MutexGuard<'_, HashSet<SessionId>> {
        self.unregistered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-asserts a live session on recovery: a renewal, or for a session whose connect the
    /// store never took, that connect.
    async fn reassert(&self, session: &Session) -> Result<(), EngineError> {
        let unregistered = self.unregistered().contains(&session.id);
        if unregistered { self.register(session).await } else { self.heartbeat(session, Instant::now()).await }
    }

    /// The status and text `user` chose, from the store; `None` for a user that never
    /// chose one.
    pub async fn choice(&self, user: &Id) -> Result<Option<Choice>, EngineError> {
        let result = store!(self, choice(user));
        self.check("choice", result)
    }

    /// Tells the connection of `replaced` (here, or through the broker on another router)
    /// to end, and waits for it to, at most [`REPLACE_WAIT`].
    async fn replace(&self, replaced: &SessionId) {
        let ended = self.relay().await_end(replaced);
        let here = replaced.router() == self.router_id;
        let result = if here && !self.relay().replace(replaced) {
            // Its connection has ended already.
            "gone"
        } else {
            if !here {
                self.engine.broker.control(&Control::Replace(replaced.clone()));
            }
            match tokio::time::timeout(REPLACE_WAIT, ended).await {
                Ok(_) => "ended",
                Err(_) => "timed_out",
            }
        };
        self.relay().ended(replaced);
        ::metrics::counter!(metrics::SESSIONS_REPLACED, "result" => result).increment(1);
        tracing::debug!(session = %replaced, result, "replaced a session of the same device");
    }

    /// A session that was replaced has ended: its floor, indicators and presence are
    /// released, its last frames sent. Tells the session that replaced it, here or (in
    /// order after those frames) on another router.
    pub async fn replaced_session_ended(&self, session: &SessionId) {
        // Its store writes (the indicators' ends) land before the new session's.
        self.written().await;
        self.relay().ended(session);
        self.engine.broker.control(&Control::Ended(session.clone()));
    }

    /// Re-registers a live session whose groups changed (a token refresh, USER_ADD or
    /// USER_REMOVE), and keeps them for a re-assert. A heartbeat of the session recorded
    /// before is dropped (and one in flight waited for): carrying the old groups, it would
    /// undo the change when it landed after it; the regroup renews the lease anyway.
    pub async fn regroup(&self, session: &Session) -> Result<(), EngineError> {
        if let Some(registered) = self.local().get_mut(&session.id) {
            registered.groups = session.groups.clone();
        }
        self.renewals.settle(&session.id).await;
        self.skip_while_degraded()?;
        // The relay has the session in its new groups: their frames must reach it before
        // anyone sees it there.
        self.engine.broker.until_serving(&session.groups).await;
        let result = store!(self, regroup(session));
        self.announce("regroup", result).await
    }

    pub async fn heartbeat(&self, session: &Session, at: Instant) -> Result<(), EngineError> {
        let result = store!(self, heartbeat(session, at));
        self.announce("heartbeat", result).await
    }

    /// Records a heartbeat for the renewer and returns at once: a connection never waits on
    /// the store (see [`crate::renewals`]). While degraded nothing is renewed; recovery
    /// re-asserts every local session anyway.
    pub fn heartbeat_soon(&self, session: &Session) {
        self.renewals.push(session);
    }

    /// Ends a session. One the store could not end (or was not asked to, while degraded)
    /// is ended again on recovery, so its user is never left online.
    pub async fn disconnect(&self, session: &Session) -> Result<(), EngineError> {
        self.renewals.settle(&session.id).await;
        self.local().remove(&session.id);
        self.unregistered().remove(&session.id);
        let result = match self.skip_while_degraded() {
            Ok(()) => store!(self, disconnect(session)),
            Err(e) => Err(e),
        };
        let result = self.announce("disconnect", result).await;
        if result.is_err() {
            self.remember_unended(session);
        }
        result
    }

    fn unended(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        self.unended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a session to end on recovery, up to [`MAX_UNENDED`]: past that, its lease
    /// lapses after the TTL instead.
    fn remember_unended(&self, session: &Session) {
        let mut unended = self.unended();
        if unended.len() < MAX_UNENDED {
            unended.insert(session.id.clone(), session.clone());
        }
    }

    /// Leaves a session to lapse after `grace` instead of ending it (router shutdown).
    pub async fn linger(&self, session: &Session, grace: Duration) -> Result<(), EngineError> {
        self.renewals.settle(&session.id).await;
        self.local().remove(&session.id);
        self.unregistered().remove(&session.id);
        let result = store!(self, linger(session, grace));
        self.announce("linger", result.map(|()| None)).await
    }

    /// Sets the user's chosen status, text and activity, and remembers them with the
    /// session for a re-assert; returns what it remembered (the activity's start as this
    /// router's clock has it, close to the store's).
    pub async fn set_status(
        &self,
        session: &Session,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<Choice, EngineError> {
        self.skip_while_degraded()?;
        let result = store!(self, set_choice(session, mode, text, activity));
        self.announce("status", result).await?;
        let kept = session.choice.as_ref().and_then(|c| c.activity.as_deref());
        let choice =
            Choice { mode, text: text.map(Arc::from), activity: activity.apply(kept, unix_ms()).map(Arc::new) };
        if let Some(registered) = self.local().get_mut(&session.id) {
            registered.choice = Some(choice.clone());
        }
        Ok(choice)
    }

    /// Sets the status `user` chose from no session of its own (the HTTP API); false when
    /// the user has no live session (nothing is set).
    pub async fn set_user_status(
        &self,
        user: &Id,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<bool, EngineError> {
        self.skip_while_degraded()?;
        match self.check("status", store!(self, set_user_status(user, mode, text, activity)))? {
            StatusSet::NotOnline => Ok(false),
            StatusSet::Set(update) => self.announce("status", Ok(update)).await.map(|()| true),
        }
    }

    /// Sends the relayed frames still queued for other routers (the router is exiting).
    pub async fn flush(&self) {
        self.engine.broker.flush().await;
    }

    /// Delivers a frame to this router's connections in its audience, then hands it to
    /// the broker for the other routers. Local delivery comes first and never waits on
    /// the store, so PTT on one router survives a Redis outage.
    pub fn send(&self, delivery: Delivery) {
        self.fanout.deliver(&delivery, true);
        self.engine.broker.relay(&delivery);
    }

    /// The group's live indicators, including every one this router accepted before the
    /// call (its writes are behind; this waits for them, up to the store's timeout).
    pub async fn indicators(&self, group: &Id) -> Result<Vec<(IndicatorKind, Id)>, EngineError> {
        self.written().await;
        let result = store!(self, signals.indicators(group));
        self.check("indicators", result)
    }

    /// Waits until every write handed off before the call is done, up to the store's
    /// timeout.
    async fn written(&self) {
        let (done, written) = oneshot::channel();
        let barrier = async {
            if self.writes.send(Write::Barrier(done)).await.is_ok() {
                let _ = written.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), barrier).await;
    }

    fn floors(&self) -> MutexGuard<'_, HashMap<String, LocalFloor>> {
        self.floors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims a PTT channel's floor for `claim`'s talker. This router's own sessions are
    /// checked (and the floor reserved) here first, so two local STARTs never both win,
    /// with or without the store; then the store arbitrates between routers. While
    /// degraded the store is not asked: a START must not wait out its timeout.
    ///
    /// A floor whose talker has sent no AUDIO for the claim's idle time (and whose own
    /// claim had one) is taken over; on the Redis engine the store's deadline decides,
    /// up to [`FLOOR_TOUCH_INTERVAL`] later.
    pub async fn take_floor(&self, channel: &str, claim: &FloorClaim) -> Floor {
        let now = Instant::now();
        let previous = {
            let mut floors = self.floors();
            let previous = match floors.get(channel) {
                Some(held) if held.talker.session != claim.talker.session && held.until > now => {
                    let idle = |idle: Duration| held.audio_at + idle <= now;
                    if claim.idle.is_none() || !held.idle.is_some_and(idle) {
                        return Floor::Busy;
                    }
                    Some(held.clone())
                }
                _ => None,
            };
            let floor = LocalFloor {
                talker: claim.talker.clone(),
                taken_at: now,
                until: now + claim.hold,
                idle: claim.idle,
                audio_at: now,
                touched_at: now,
            };
            floors.insert(channel.to_owned(), floor);
            previous
        };
        let taken_locally = || previous.clone().map(|held| (held.talker, now - held.taken_at));
        if self.is_degraded() {
            return Floor::Granted { local_only: true, taken_from: taken_locally() };
        }
        let stored = FloorClaim { idle: claim.idle.map(|idle| idle + FLOOR_TOUCH_INTERVAL), ..claim.clone() };
        let result = store!(self, signals.take_floor(channel, &stored));
        match self.check("floor", result) {
            Ok(FloorTake::Granted) => Floor::Granted { local_only: false, taken_from: taken_locally() },
            Ok(FloorTake::TakenOver { from, held }) => {
                Floor::Granted { local_only: false, taken_from: Some((from, held)) }
            }
            Ok(FloorTake::Busy) => {
                // The store's holder is another router's, or this router's idle one is not
                // idle yet by the store's (coarser) deadline: it keeps the floor.
                let mut floors = self.floors();
                if floors.get(channel).is_some_and(|held| held.talker.session == claim.talker.session) {
                    match previous {
                        Some(held) => floors.insert(channel.to_owned(), held),
                        None => floors.remove(channel),
                    };
                }
                Floor::Busy
            }
            Err(_) => Floor::Granted { local_only: true, taken_from: taken_locally() },
        }
    }

    /// `holder` sent AUDIO on `channel`: its floor is not idle. The store hears of it at
    /// most every [`FLOOR_TOUCH_INTERVAL`], written behind. False when `holder` does not
    /// hold the floor any more on this router (another session took it over).
    pub fn floor_audio(&self, channel: &str, holder: &SessionId) -> bool {
        let now = Instant::now();
        let touch = {
            let mut floors = self.floors();
            let Some(held) = floors.get_mut(channel).filter(|held| held.talker.session == *holder) else {
                return false;
            };
            held.audio_at = now;
            let due = now - held.touched_at >= FLOOR_TOUCH_INTERVAL;
            let touch = held.idle.filter(|_| due);
            if touch.is_some() {
                held.touched_at = now;
            }
            touch
        };
        if let Some(idle) = touch {
            let idle = idle + FLOOR_TOUCH_INTERVAL;
            self.write_soon(Write::FloorTouch { channel: channel.to_owned(), holder: holder.clone(), idle });
        }
        true
    }

    /// Tells the session of `talker`, here or (through the broker) on another router, that
    /// the floor of its talk was taken over.
    pub fn floor_taken(&self, talker: &Talker) {
        let control = Control::FloorTaken { session: talker.session.clone(), talk: talker.talk.clone() };
        if talker.session.router() == self.router_id {
            self.relay().control(&control);
        } else {
            self.engine.broker.control(&control);
        }
    }

    /// Gives the floor back (STOP, maximum talk time, disconnect).
    /// Awaited, not written behind: the next START, on any router, must find the floor
    /// free. While degraded the store is not asked; its key lapses after the maximum talk
    /// time.
    pub async fn release_floor(&self, channel: &str, holder: &SessionId) {
        self.forget_floor(channel, holder);
        if self.is_degraded() {
            return;
        }
        let result = store!(self, signals.release_floor(channel, holder));
        let _ = self.check("floor", result);
    }

    /// Drops this router's record of `holder`'s floor, leaving the store's alone: the
    /// floor is another session's now.
    pub fn forget_floor(&self, channel: &str, holder: &SessionId) {
        let mut floors = self.floors();
        if floors.get(channel).is_some_and(|held| held.talker.session == *holder) {
            floors.remove(channel);
        }
    }

    /// Users' presence as `scope` reads it; see [`PresenceStore::lookup`](crate::engine::PresenceStore::lookup).
    pub async fn lookup(&self, users: &[Id], scope: &Scope) -> Result<Vec<UserPresence>, EngineError> {
        let result = store!(self, lookup(users, scope));
        self.check("lookup", result)
    }

    pub async fn group_members(&self, group: &Id) -> Result<Vec<Id>, EngineError> {
        let result = store!(self, group_members(group));
        self.check("group_members", result)
    }

    /// Ends the leases that ran out and publishes the resulting offlines together, after
    /// ending the talks of those users and of routers that died; then announces the end
    /// of the indicators whose router died before it could.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let result = store!(self, expire_due());
        let updates = self.check("expire", result)?;
        // A lapsed talker's talk ends before it shows offline; and talks before indicators:
        // a claimed talk clears its `talking`, which then never ends twice.
        let floors = self.end_orphaned_floors(&updates).await;
        self.publish(&updates).await;
        floors?;
        let result = store!(self, signals.claim_orphaned_indicators());
        for (group, kind, user) in self.check("indicators", result)? {
            ::metrics::counter!(metrics::INDICATORS, "type" => kind.as_str(), "active" => "false").increment(1);
            let frame = protocol::indicator_frame(&group, &user, kind, false);
            let audience = Audience::Group { group, dashboards: true };
            self.send(Delivery { audience, except: Some(user), frame });
        }
        Ok(updates.len())
    }

    /// Ends the sessions that closed meanwhile and re-asserts every local one, then rebuilds
    /// the hub from the store; dashboards get a fresh snapshot. Clears the degraded state
    /// when it all succeeded (a store that answers PING but refuses writes stays degraded,
    /// and so does a router that does not hear the broker: a view rebuilt now could not be
    /// kept current).
    ///
    /// A stale view's rebuild keeps online the users the store does not list (yet), unless
    /// only transitions went missing ([`StaleReason::may_lack_sessions`]): the other
    /// routers may still be re-asserting their sessions after the same outage, and nobody
    /// is to be shown offline because Redis was lost. Then this returns false and
    /// the view stays stale; the maintainer rebuilds it again, `confirming`, once
    /// [`Timing::recovery_grace`] has passed, and users still unlisted then are offline.
    /// Returns true when the view is fresh (dashboards were sent FRESH if it was stale).
    pub async fn resync(&self, confirming: bool) -> Result<bool, EngineError> {
        if !self.engine.broker.is_receiving() {
            let deaf = Err(EngineError::Unavailable("not receiving the broker's messages".into()));
            return self.check(DEAF, deaf);
        }
        let result = store!(self, ping());
        self.check("ping", result)?;
        let unended: Vec<Session> = self.unended().values().cloned().collect();
        for session in unended {
            let result = store!(self, disconnect(&session));
            match self.announce("disconnect", result).await {
                Err(e) if e.is_unavailable() => return Err(e),
                // Ended; or a bug that would fail every retry alike: its lease lapses.
                _ => self.unended().remove(&session.id),
            };
        }
        let sessions: Vec<Session> = self.local().values().cloned().collect();
        let reasserted = sessions.len();
        // Only an outage fails the resync: a session that meets a bug is left to it (its
        // user is shown as the store has it) rather than keep the router degraded.
        let failures = stream::iter(sessions)
            .map(|session| async move { self.reassert(&session).await })
            .buffer_unordered(REASSERT_CONCURRENCY)
            .filter(|r| std::future::ready(r.as_ref().is_err_and(EngineError::is_unavailable)))
            .count()
            .await;
        if failures > 0 {
            return Err(EngineError::Unavailable(format!("{failures} sessions could not be re-asserted")));
        }
        // Indicator changes delivered from here on are applied again over what the store
        // lists; this router's own writes handed off before are in the store first.
        let mark = self.hub().mark();
        self.written().await;
        let result = store!(self, online());
        let snapshot = self.check("snapshot", result)?;
        let result = store!(self, signals.live_indicators());
        let indicators = self.check("indicators", result)?;
        let online = snapshot.users.len();
        let keep_unlisted = !confirming && self.hub().staleness().is_some_and(|stale| stale.reason.may_lack_sessions());
        let kept = self.hub().reset(snapshot, indicators, mark, keep_unlisted);
        let recovered = self.degraded.swap(false, Ordering::Relaxed);
        ::metrics::gauge!(metrics::ENGINE_UP).set(1.0);
        // At start there is nothing to rebuild: said at INFO only after an outage or when
        // sessions were re-asserted.
        if recovered || reasserted > 0 {
            tracing::info!(reasserted, online, "presence rebuilt from the store");
        } else {
            tracing::debug!(reasserted, online, "presence read from the store");
        }
        if kept == 0 {
            self.hub().fresh();
        } else {
            tracing::info!(kept, "users the store does not list yet stay as they were until confirmed");
        }
        Ok(kept == 0)
    }

    async fn announce(
        &self,
        op: &'static str,
        result: Result<Option<PresenceUpdate>, EngineError>,
    ) -> Result<(), EngineError> {
        if let Some(update) = self.check(op, result)? {
            self.publish(std::slice::from_ref(&update)).await;
        }
        Ok(())
    }

    /// Calls from connections fail at once while degraded instead of waiting on the store.
    fn skip_while_degraded(&self) -> Result<(), EngineError> {
        if self.is_degraded() { Err(EngineError::Unavailable("degraded".into())) } else { Ok(()) }
    }

    /// Counts a failed store call, by operation and [kind](EngineError::kind). A store out
    /// of reach marks the node degraded. Any other failure is a bug, logged at error, that
    /// fails only this call: waiting degraded would not cure it, and the resync that ends
    /// a degraded spell could meet it again and never finish.
    fn check<T>(&self, op: &'static str, result: Result<T, EngineError>) -> Result<T, EngineError> {
        if let Err(e) = &result {
            ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => op, "kind" => e.kind()).increment(1);
            if !e.is_unavailable() {
                tracing::error!(error = %e, op, kind = e.kind(), "presence engine call failed on a bug; not degrading");
            } else {
                // The view is stale from now: its dashboards are told at once.
                let reason = if op == DEAF { StaleReason::SubscriptionLost } else { StaleReason::StoreUnreachable };
                self.hub().stale(reason);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    ::metrics::gauge!(metrics::ENGINE_UP).set(0.0);
                    tracing::warn!(error = %e, op, "presence store unreachable; degraded until it answers");
                }
            }
        }
        result
    }

    async fn publish(&self, updates: &[PresenceUpdate]) {
        if updates.is_empty() {
            return;
        }
        for update in updates {
            ::metrics::counter!(metrics::TRANSITIONS, "cause" => update.cause.as_str()).increment(1);
            if update.cause == Cause::Expired {
                ::metrics::counter!(metrics::TTL_EXPIRATIONS).increment(1);
            }
            tracing::debug!(user = %update.presence.user_id, status = update.presence.status.as_str(),
                version = update.presence.version, cause = update.cause.as_str(), "transition");
        }
        // A lost publish shows as a gap in the transition sequence and is repaired by a
        // resync on every router.
        let result = timed("publish", self.engine.broker.publish(updates)).await;
        let _ = self.check("publish", result);
    }

    /// Builds the hub from the store and starts the sweeper and the maintainer.
    pub async fn start(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        // The writer first: a resync waits for the writes handed off before it.
        if let Some(pending) = self.pending_writes.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tracker.spawn(Arc::clone(self).writer(pending, shutdown.clone()));
        }
        self.resync(true).await?;
        tracker.spawn(Arc::clone(self).sweeper(shutdown.clone()));
        tracker.spawn(Arc::clone(self).renewer(shutdown.clone()));
        tracker.spawn(Arc::clone(self).floor_leaser(shutdown.clone()));
        tracker.spawn(Arc::clone(self).maintainer(shutdown));
        Ok(())
    }

    /// Does the writes connections handed off, in order. While degraded they are skipped:
    /// activity and indicators only feed auto-away and the group endpoint.
    async fn writer(self: Arc<Self>, mut pending: mpsc::Receiver<Write>, shutdown: CancellationToken) {
        loop {
            let write = tokio::select! {
                _ = shutdown.cancelled() => break,
                write = pending.recv() => match write {
                    Some(write) => write,
                    None => break,
                },
            };
            if self.is_degraded() && !matches!(write, Write::Barrier(_)) {
                continue;
            }
            match write {
                Write::Barrier(done) => {
                    let _ = done.send(());
                }
                Write::Activity(session) => {
                    let result = store!(self, activity(&session));
                    let _ = self.announce("activity", result).await;
                }
                Write::Indicator { group, user, kind, ttl } => {
                    let result = store!(self, signals.set_indicator(&group, &user, kind, ttl));
                    let _ = self.check("indicator", result);
                }
                Write::FloorTouch { channel, holder, idle } => {
                    let result = store!(self, signals.touch_floor(&channel, &holder, idle));
                    let _ = self.check("floor", result);
                }
            }
        }
    }

    /// Queues a store write; false (and counted) when the node is degraded or the queue is
    /// full.
    pub fn write_soon(&self, write: Write) -> bool {
        if self.is_degraded() {
            return false;
        }
        let queued = self.writes.try_send(write).is_ok();
        if !queued {
            ::metrics::counter!(metrics::STORE_WRITES_DROPPED).increment(1);
        }
        queued
    }

    /// Renews the heartbeats connections handed off, all that are waiting at a time,
    /// gathered for the store's renewal window.
    async fn renewer(self: Arc<Self>, shutdown: CancellationToken) {
        let node = &*self;
        let window = self.engine.store.renewal_window();
        loop {
            let heartbeats = tokio::select! {
                _ = shutdown.cancelled() => break,
                heartbeats = self.renewals.take(window) => heartbeats,
            };
            stream::iter(heartbeats)
                .for_each_concurrent(RENEW_CONCURRENCY, |(session, at)| async move {
                    if !node.is_degraded() {
                        let _ = node.heartbeat(&session, at).await;
                    }
                    node.renewals.done(&session.id);
                })
                .await;
        }
    }

    async fn sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.timing.sweep_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = prune.tick() => {
                    self.hub().prune(unix_ms().saturating_sub(self.timing.last_seen.as_millis() as u64));
                    continue;
                }
            }
            // Cached snapshots too old to serve are not kept while nobody connects.
            self.hub().expire_snapshots();
            let paused = *self.sweep_paused_until.lock().unwrap_or_else(|e| e.into_inner());
            if paused.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            if let Err(e) = self.sweep().await {
                tracing::debug!(error = %e, "sweep failed");
            }
        }
    }

    /// Probes the store every `probe_interval`: while healthy, a write that fails marks
    /// the router degraded even when nothing else writes (a store refusing writes is
    /// noticed within the interval, not at the next heartbeat's renewal); while degraded,
    /// resyncs as soon as it answers. Resyncs too when the broker asks: it resubscribed
    /// after missing messages, or stopped receiving (then the resync fails, and marks the
    /// router degraded at once).
    ///
    /// A rebuild that kept unlisted users online ([`Node::resync`]) is followed by a
    /// confirming one [`Timing::recovery_grace`] later.
    async fn maintainer(self: Arc<Self>, shutdown: CancellationToken) {
        let mut probe = tokio::time::interval(self.timing.probe_interval);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut confirm_at: Option<Instant> = None;
        loop {
            let confirming = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.hub().resync_requested() => false,
                _ = tokio::time::sleep_until(confirm_at.unwrap_or_else(Instant::now)), if confirm_at.is_some() => true,
                _ = probe.tick() => {
                    if !self.is_degraded() {
                        // A call whose connection dropped was already sent again by the
                        // engine: a failure here is the store's.
                        let result = store!(self, ping());
                        let _ = self.check("probe", result);
                        continue;
                    }
                    false
                }
            };
            if !confirming {
                *self.sweep_paused_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + self.timing.recovery_grace);
            }
            confirm_at = None;
            match self.resync(confirming).await {
                Ok(fresh) => {
                    ::metrics::counter!(metrics::RESYNCS).increment(1);
                    if !fresh {
                        confirm_at = Some(Instant::now() + self.timing.recovery_grace);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "resync failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{Lifetimes, MemoryBroker, MemoryPresence},
        hub::HubEvent,
    };

    fn memory_node(ttl: Duration) -> Arc<Node> {
        let fanout = Arc::new(FanOut::new(Arc::new(Hub::new(64)), Arc::new(Relay::default())));
        let store = MemoryPresence::new(Lifetimes {
            ttl,
            last_seen: Duration::from_secs(30 * 24 * 3600),
            away_after: Duration::from_secs(300),
            log_entries: crate::engine::log::DEFAULT_LOG_ENTRIES,
        });
        let engine = Engine::new("memory", Arc::new(store), Arc::new(MemoryBroker::new(fanout.clone())));
        let timing = Timing {
            sweep_interval: Duration::from_millis(250),
            recovery_grace: Duration::from_secs(2),
            probe_interval: Duration::from_secs(1),
            last_seen: Duration::from_secs(30 * 24 * 3600),
        };
        Arc::new(Node::new(engine, fanout, timing, new_router_id()))
    }

    #[tokio::test(start_paused = true)]
    async fn silent_user_goes_offline_once_within_ttl_plus_one_sweep() {
        let ttl = Duration::from_secs(60);
        let node = memory_node(ttl);
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        node.start(shutdown.clone(), &tracker).await.unwrap();
        let mut sub = node.hub().subscribe(&crate::scope::Scope::everyone());
        let session = node.session(Id::parse("u").unwrap(), None, Groups::default());
        node.connect(&session).await.unwrap();
        assert!(matches!(sub.events.recv().await.unwrap(), HubEvent::Update { .. }));
        assert_eq!(node.hub().online_count(), 1);

        tokio::time::sleep(ttl - Duration::from_millis(300)).await;
        assert_eq!(node.hub().online_count(), 1, "not offline before the TTL");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(node.hub().online_count(), 0, "offline within TTL + one sweep interval");
        assert!(matches!(sub.events.try_recv().unwrap(), HubEvent::Update { .. }));
        tokio::time::sleep(ttl).await;
        assert!(sub.events.try_recv().is_err(), "exactly one offline");

        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_floor_goes_to_the_next_claim_only_when_both_allow_it() {
        let node = memory_node(Duration::from_secs(60));
        let hold = Duration::from_secs(30);
        let idle = Some(Duration::from_secs(3));
        let talker = |n: u64| Talker {
            session: SessionId::new("r", n),
            user: Id::parse(&format!("u{n}")).unwrap(),
            talk: format!("t{n}").into(),
            with_message_id: n.is_multiple_of(2),
        };
        let listeners = crate::engine::FloorListeners::Group(Id::parse("crew").unwrap());
        let claim =
            |n: u64, idle: Option<Duration>| FloorClaim { talker: talker(n), hold, idle, listeners: listeners.clone() };
        let granted = Floor::Granted { local_only: false, taken_from: None };
        let second = Duration::from_secs(1);

        assert_eq!(node.take_floor("g:crew", &claim(1, idle)).await, granted);
        tokio::time::sleep(2 * second).await;
        assert!(node.floor_audio("g:crew", &talker(1).session), "AUDIO of the holder");
        tokio::time::sleep(2 * second).await;
        assert_eq!(node.take_floor("g:crew", &claim(2, idle)).await, Floor::Busy, "2 s since its AUDIO");
        tokio::time::sleep(2 * second).await;
        assert_eq!(node.take_floor("g:crew", &claim(2, None)).await, Floor::Busy, "a claim without idle waits");
        let taken = Floor::Granted { local_only: false, taken_from: Some((talker(1), 6 * second)) };
        assert_eq!(node.take_floor("g:crew", &claim(2, idle)).await, taken, "4 s since its AUDIO");
        assert!(!node.floor_audio("g:crew", &talker(1).session), "the old talker's AUDIO finds the floor gone");
        assert!(node.floor_audio("g:crew", &talker(2).session));

        // A floor claimed with the takeover off (`--floor-idle-ms 0`) is never idle.
        assert_eq!(node.take_floor("g:quiet", &claim(3, None)).await, granted);
        tokio::time::sleep(20 * second).await;
        assert_eq!(node.take_floor("g:quiet", &claim(4, idle)).await, Floor::Busy);
    }

    #[tokio::test(start_paused = true)]
    async fn only_an_unreachable_store_degrades_the_node() {
        let node = memory_node(Duration::from_secs(60));
        for bug in [EngineError::Protocol("a row of 3 fields".into()), EngineError::Internal("task gone".into())] {
            assert!(node.check("lookup", Err::<(), _>(bug)).is_err(), "the call still fails");
            assert!(!node.is_degraded(), "a bug is no outage: the router keeps serving");
        }
        let _ = node.check("lookup", Err::<(), _>(EngineError::Unavailable("connection refused".into())));
        assert!(node.is_degraded());
    }

    #[tokio::test(start_paused = true)]
    async fn a_requested_resync_pushes_a_fresh_snapshot() {
        let node = memory_node(Duration::from_secs(60));
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        node.start(shutdown.clone(), &tracker).await.unwrap();
        let session = node.session(Id::parse("u").unwrap(), None, Groups::default());
        node.connect(&session).await.unwrap();
        let mut sub = node.hub().subscribe(&crate::scope::Scope::everyone());
        node.hub().request_resync();
        assert!(matches!(sub.events.recv().await.unwrap(), HubEvent::Resync));
        assert_eq!(node.hub().online_count(), 1, "the re-asserted session is in the rebuilt view");
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
