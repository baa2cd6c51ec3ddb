//! The embedded engine: one router, state in process memory.
//!
//! Lease deadlines use `tokio::time::Instant`, so tests drive expiry with
//! `tokio::time::pause()` and `advance()` instead of sleeping.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Broker, BrokerEvents, Connected, EngineError, FloorClaim, FloorTake, Lifetimes, OrphanedFloor, PresenceStore,
    SignalStore, StatusSet,
    log::{Changes, Ring},
};
use crate::{
    id::Id,
    position::Position,
    presence::{
        Activity, ActivityChange, Cause, Choice, Groups, Mode, PresenceUpdate, Session, SessionId, Snapshot, Status,
        UserPresence, next_version, same_groups, unix_ms,
    },
    protocol::payload::IndicatorKind,
    scope::Scope,
    transient::{Control, Delivery},
};

pub struct MemoryPresence {
    lifetimes: Lifetimes,
    state: Mutex<State>,
}

/// How often offline records past their retention are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct State {
    /// Inactivity after which an `online` user turns away: arms the timers in `away_at`.
    away_after: Duration,
    users: HashMap<Id, UserRecord>,
    /// Live sessions.
    leases: HashMap<SessionId, Lease>,
    /// The same leases ordered by deadline, so expiry touches only what is due.
    deadlines: BTreeSet<(Instant, SessionId)>,
    /// Users shown online in `Mode::Auto`, ordered by when they turn away.
    away_at: BTreeSet<(Instant, Id)>,
    /// Group → member → when a session of the member last named the group.
    groups: HashMap<Id, HashMap<Id, Instant>>,
    /// Group → live indicators and when each lapses.
    indicators: HashMap<Id, HashMap<(IndicatorKind, Id), Instant>>,
    last_prune: Option<Instant>,
    /// Every transition, numbered, the latest kept.
    log: Ring,
}

/// One live session's claim.
struct Lease {
    user: Id,
    deadline: Instant,
    /// The groups of the session's token: the user's are the union over its live sessions.
    groups: Groups,
    /// The device the session holds: a new session of the user on it replaces this one.
    /// `None` without a device id, and once the session lingers (its connection is gone).
    device: Option<Arc<str>>,
}

/// Kept after the user goes offline, for `lastSeen`, the chosen status and the version.
struct UserRecord {
    /// Live sessions, oldest first.
    live: Vec<SessionId>,
    /// When the last session ended; the record is dropped a retention later.
    offline_since: Option<Instant>,
    version: u64,
    last_seen: u64,
    device_id: Option<Arc<str>>,
    /// The union of the live sessions' groups; kept as it was when the last one ended.
    groups: Groups,
    mode: Mode,
    text: Option<Arc<str>>,
    activity: Option<Activity>,
    /// No activity within `away_after`.
    idle: bool,
    /// Unix ms and tokio instant of the last activity.
    last_activity: u64,
    active_at: Instant,
    /// The user's entry in `State::away_at`, if any.
    away_deadline: Option<Instant>,
    /// What others see; only a transition changes it.
    shown: Status,
    /// The groups at its last transition, logged as the next one's groups before.
    logged_groups: Groups,
}

impl UserRecord {
    fn new(now_ms: u64) -> Self {
        UserRecord {
            live: Vec::new(),
            // Offline until a session is added, so a record that never gets one is pruned.
            offline_since: Some(Instant::now()),
            version: 0,
            last_seen: now_ms,
            device_id: None,
            groups: Groups::default(),
            mode: Mode::Auto,
            text: None,
            activity: None,
            idle: false,
            last_activity: now_ms,
            active_at: Instant::now(),
            away_deadline: None,
            shown: Status::Offline,
            logged_groups: Groups::default(),
        }
    }

    fn presence(&self, user: &Id) -> UserPresence {
        let shown = self.shown.is_online();
        UserPresence {
            user_id: user.clone(),
            status: self.shown,
            last_seen: Some(self.last_seen),
            device_id: self.device_id.clone(),
            version: self.version,
            groups: self.groups.clone(),
            status_text: self.text.clone().filter(|_| shown),
            activity: self.activity.clone().filter(|_| shown),
            last_activity: shown.then_some(self.last_activity),
        }
    }

    /// The user is seen now, on `session`'s device (or the one it had, if it names none).
    fn seen_on(&mut self, session: &Session, now_ms: u64) {
        self.last_seen = now_ms;
        self.device_id = session.device_id.clone().or(self.device_id.take());
    }

    fn touch(&mut self) {
        self.last_activity = unix_ms();
        self.active_at = Instant::now();
        self.idle = false;
    }
}

impl MemoryPresence {
    pub fn new(lifetimes: Lifetimes) -> Self {
        let state = State {
            away_after: lifetimes.away_after,
            users: HashMap::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            away_at: BTreeSet::new(),
            groups: HashMap::new(),
            indicators: HashMap::new(),
            last_prune: None,
            log: Ring::new(lifetimes.log_entries),
        };
        MemoryPresence { lifetimes, state: Mutex::new(state) }
    }

    /// Up to `max` logged transitions after the one numbered `after`, and how many after
    /// it the ring no longer holds (see [`super::outbox`]).
    pub(crate) fn log_after(&self, after: u64, max: usize) -> (Vec<super::log::LoggedChange>, u64) {
        self.state().log.after(after, max)
    }

    /// The lock is never held across an await, and no code under it can panic, so a
    /// poisoned lock cannot happen; recover the guard rather than propagate a panic.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Brings what others see of `user` in line with its record: re-arms the away timer
    /// and returns the transition when the shown status changed, or, with `force`, when
    /// the user is shown at all (new groups or a new status text are news only then; the
    /// transition's cause is then `force`'s unless the status changed too).
    fn settle(&mut self, user: &Id, cause: Cause, force: Option<Cause>) -> Option<PresenceUpdate> {
        let record = self.users.get_mut(user)?;
        let shown = record.mode.shown(!record.live.is_empty(), record.idle);
        if let Some(at) = record.away_deadline.take() {
            self.away_at.remove(&(at, user.clone()));
        }
        if shown == Status::Online && record.mode == Mode::Auto {
            let at = record.active_at + self.away_after;
            record.away_deadline = Some(at);
            self.away_at.insert((at, user.clone()));
        }
        let mut cause = cause;
        if shown == record.shown {
            match force {
                Some(forced) if shown.is_online() => cause = forced,
                _ => return None,
            }
        }
        let now = unix_ms();
        // Going offline by choice (disconnect, invisible) is seen now; an expired user
        // was last seen at its last heartbeat, which `last_seen` holds.
        if shown == Status::Offline && cause != Cause::Expired {
            record.last_seen = now;
        }
        record.shown = shown;
        record.version = next_version(record.version, now);
        let before = std::mem::replace(&mut record.logged_groups, record.groups.clone());
        let mut update = PresenceUpdate { presence: record.presence(user), cause, timestamp: now, seq: None, shard: 0 };
        self.log.append(&mut update, before);
        Some(update)
    }

    /// The live session, other than `session`, that holds its user's device.
    fn device_holder(&self, session: &Session) -> Option<SessionId> {
        let device = session.device_id.as_ref()?;
        let now = Instant::now();
        let held = |id: &&SessionId| {
            **id != session.id
                && self.leases.get(*id).is_some_and(|l| l.deadline > now && l.device.as_ref() == Some(device))
        };
        self.users.get(&session.user)?.live.iter().find(held).cloned()
    }

    /// Registers or renews `session`'s lease until `deadline`, the session last heard at
    /// `heard`. A live session of the same user and device is replaced when `replace` (a
    /// new session); otherwise (a renewal of a session that was replaced) the lease is
    /// refused: `None`.
    fn lease(
        &mut self,
        session: &Session,
        deadline: Instant,
        heard: Instant,
        activity: bool,
        replace: bool,
    ) -> Option<Connected> {
        let holder = self.device_holder(session);
        if holder.is_some() && !replace {
            return None;
        }
        let now_ms = unix_ms();
        let heard_ms = now_ms.saturating_sub(heard.elapsed().as_millis() as u64);
        let lease = Lease {
            user: session.user.clone(),
            deadline,
            groups: session.groups.clone(),
            device: session.device_id.clone(),
        };
        if let Some(old) = self.leases.insert(session.id.clone(), lease) {
            self.deadlines.remove(&(old.deadline, session.id.clone()));
        }
        self.deadlines.insert((deadline, session.id.clone()));
        let record = self.users.entry(session.user.clone()).or_insert_with(|| UserRecord::new(now_ms));
        // An invisible user's sessions must not reveal it through `lastSeen` or `deviceId`:
        // it reads as it did when it went invisible.
        if record.mode != Mode::Invisible {
            record.seen_on(session, heard_ms);
        }
        if !record.live.contains(&session.id) {
            record.live.push(session.id.clone());
            record.offline_since = None;
        }
        if activity {
            record.touch();
        }
        let now = Instant::now();
        for group in session.groups.iter() {
            self.groups.entry(group.clone()).or_default().insert(session.user.clone(), now);
        }
        // Registered first, so the user is never without a session in between.
        if let Some(replaced) = &holder {
            self.drop_lease(replaced);
        }
        Some(Connected { update: self.settle_sessions(&session.user, Cause::Connect), replaced: holder })
    }

    /// Removes a session's lease; returns its user.
    fn drop_lease(&mut self, id: &SessionId) -> Option<Id> {
        let lease = self.leases.remove(id)?;
        self.deadlines.remove(&(lease.deadline, id.clone()));
        let record = self.users.get_mut(&lease.user)?;
        record.live.retain(|s| s != id);
        if record.live.is_empty() {
            record.offline_since = Some(Instant::now());
        }
        Some(lease.user)
    }

    fn end(&mut self, id: &SessionId, cause: Cause) -> Option<PresenceUpdate> {
        let user = self.drop_lease(id)?;
        self.settle_sessions(&user, cause)
    }

    /// [`State::settle`] after the user's sessions changed: its groups become the union of
    /// its live sessions' groups (kept as they were once none is left, for reads of its
    /// last seen), and new groups are news to the dashboards of the old and the new
    /// groups alike, a transition with cause `groups` when the status did not change.
    fn settle_sessions(&mut self, user: &Id, cause: Cause) -> Option<PresenceUpdate> {
        let record = self.users.get(user)?;
        let mut union: Vec<Id> = Vec::new();
        for group in record.live.iter().filter_map(|id| self.leases.get(id)).flat_map(|lease| lease.groups.iter()) {
            if !union.contains(group) {
                union.push(group.clone());
            }
        }
        let regrouped = !record.live.is_empty() && !same_groups(&union, &record.groups);
        if regrouped && let Some(record) = self.users.get_mut(user) {
            record.groups = union.into();
        }
        self.settle(user, cause, regrouped.then_some(Cause::Groups))
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn connect(&self, session: &Session) -> Result<Connected, EngineError> {
        let now = Instant::now();
        Ok(self.state().lease(session, now + self.lifetimes.ttl, now, true, true).unwrap_or_default())
    }

    async fn regroup(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        let now = Instant::now();
        Ok(self.state().lease(session, now + self.lifetimes.ttl, now, true, false).and_then(|c| c.update))
    }

    async fn heartbeat(&self, session: &Session, at: Instant) -> Result<Option<PresenceUpdate>, EngineError> {
        Ok(self.state().lease(session, at + self.lifetimes.ttl, at, false, false).and_then(|c| c.update))
    }

    async fn disconnect(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        Ok(self.state().end(&session.id, Cause::Disconnect))
    }

    async fn set_choice(
        &self,
        session: &Session,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<Option<PresenceUpdate>, EngineError> {
        let mut state = self.state();
        let record = state.users.entry(session.user.clone()).or_insert_with(|| UserRecord::new(unix_ms()));
        let activity = activity.apply(record.activity.as_ref(), unix_ms());
        let changed_text = record.text.as_deref() != text || record.activity != activity;
        record.activity = activity;
        let was_invisible = record.mode == Mode::Invisible;
        record.mode = mode;
        record.text = text.map(Arc::from);
        record.touch();
        // Seen again after being invisible: from now and on this device, not as it was
        // when it went invisible.
        if was_invisible && mode != Mode::Invisible && !record.live.is_empty() {
            record.seen_on(session, unix_ms());
        }
        Ok(state.settle(&session.user, Cause::Status, changed_text.then_some(Cause::Status)))
    }

    async fn set_user_status(
        &self,
        user: &Id,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<StatusSet, EngineError> {
        let live = {
            let state = self.state();
            let now = Instant::now();
            state.users.get(user).is_some_and(|record| {
                record.live.iter().any(|s| state.leases.get(s).is_some_and(|lease| lease.deadline > now))
            })
        };
        if !live {
            return Ok(StatusSet::NotOnline);
        }
        // Seen again after being invisible: on the device it was last seen on.
        let session = Session {
            id: SessionId::from(String::new()),
            user: user.clone(),
            device_id: None,
            groups: Groups::default(),
            choice: None,
        };
        self.set_choice(&session, mode, text, activity).await.map(StatusSet::Set)
    }

    async fn activity(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        let mut state = self.state();
        let Some(record) = state.users.get_mut(&session.user) else { return Ok(None) };
        record.touch();
        Ok(state.settle(&session.user, Cause::Active, None))
    }

    async fn expire_due(&self) -> Result<Vec<PresenceUpdate>, EngineError> {
        let now = Instant::now();
        let Lifetimes { ttl, last_seen, .. } = self.lifetimes;
        let mut state = self.state();
        let mut updates = Vec::new();
        while let Some((deadline, id)) = state.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            updates.extend(state.end(&id, Cause::Expired));
        }
        while let Some((at, user)) = state.away_at.first().cloned() {
            if at > now {
                break;
            }
            state.away_at.remove(&(at, user.clone()));
            if let Some(record) = state.users.get_mut(&user) {
                record.away_deadline = None;
                record.idle = true;
            }
            updates.extend(state.settle(&user, Cause::Idle, None));
        }
        if state.last_prune.is_none_or(|at| now - at >= PRUNE_EVERY.min(last_seen)) {
            state.last_prune = Some(now);
            state.users.retain(|_, r| r.offline_since.is_none_or(|since| now - since < last_seen));
            for members in state.groups.values_mut() {
                members.retain(|_, seen| now - *seen < last_seen + ttl);
            }
            state.groups.retain(|_, members| !members.is_empty());
            for live in state.indicators.values_mut() {
                live.retain(|_, until| *until > now);
            }
            state.indicators.retain(|_, live| !live.is_empty());
        }
        Ok(updates)
    }

    async fn linger(&self, session: &Session, grace: Duration) -> Result<(), EngineError> {
        let mut state = self.state();
        if let Some(deadline) = state.leases.get(&session.id).map(|lease| lease.deadline) {
            let now = Instant::now();
            state.lease(session, deadline.min(now + grace), now, false, false);
        }
        if let Some(lease) = state.leases.get_mut(&session.id) {
            lease.device = None;
        }
        Ok(())
    }

    async fn online(&self) -> Result<Snapshot, EngineError> {
        let state = self.state();
        let watermark = unix_ms();
        let users = state.users.iter().filter(|(_, r)| r.shown.is_online()).map(|(id, r)| r.presence(id)).collect();
        Ok(Snapshot { users, watermark, position: Some(state.log.head()) })
    }

    async fn changes_since(&self, from: &Position) -> Result<Changes, EngineError> {
        Ok(self.state().log.since(from))
    }

    async fn log_kept(&self) -> Result<Vec<u64>, EngineError> {
        Ok(vec![self.state().log.kept()])
    }

    async fn group_members(&self, group: &Id) -> Result<Vec<Id>, EngineError> {
        let state = self.state();
        let Lifetimes { ttl, last_seen, .. } = self.lifetimes;
        let since = Instant::now().checked_sub(last_seen + ttl);
        Ok(state
            .groups
            .get(group)
            .map(|members| {
                members.iter().filter(|(_, seen)| since.is_none_or(|s| **seen >= s)).map(|(u, _)| u.clone()).collect()
            })
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn choice(&self, user: &Id) -> Result<Option<Choice>, EngineError> {
        Ok(self.state().users.get(user).map(|r| Choice {
            mode: r.mode,
            text: r.text.clone(),
            activity: r.activity.clone().map(Arc::new),
        }))
    }

    async fn lookup(&self, users: &[Id], scope: &Scope) -> Result<Vec<UserPresence>, EngineError> {
        let state = self.state();
        Ok(users
            .iter()
            .map(|id| {
                state.users.get(id).map_or_else(|| UserPresence::unknown(id.clone()), |r| scope.read(r.presence(id)))
            })
            .collect())
    }
}

#[async_trait]
impl SignalStore for MemoryPresence {
    async fn set_indicator(
        &self,
        group: &Id,
        user: &Id,
        kind: IndicatorKind,
        ttl: Option<Duration>,
    ) -> Result<(), EngineError> {
        let mut state = self.state();
        let key = (kind, user.clone());
        match ttl {
            Some(ttl) => {
                state.indicators.entry(group.clone()).or_default().insert(key, Instant::now() + ttl);
            }
            None => {
                if let Some(live) = state.indicators.get_mut(group) {
                    live.remove(&key);
                }
            }
        }
        Ok(())
    }

    async fn indicators(&self, group: &Id) -> Result<Vec<(IndicatorKind, Id)>, EngineError> {
        let state = self.state();
        let now = Instant::now();
        let mut live: Vec<(IndicatorKind, Id)> = state
            .indicators
            .get(group)
            .into_iter()
            .flatten()
            .filter(|(_, until)| **until > now)
            .map(|(key, _)| key.clone())
            .collect();
        live.sort();
        Ok(live)
    }

    async fn live_indicators(&self) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError> {
        let state = self.state();
        let now = Instant::now();
        let mut live: Vec<(Id, IndicatorKind, Id)> = state
            .indicators
            .iter()
            .flat_map(|(group, live)| {
                live.iter()
                    .filter(|(_, until)| **until > now)
                    .map(|((kind, user), _)| (group.clone(), *kind, user.clone()))
            })
            .collect();
        live.sort();
        Ok(live)
    }

    /// One router holds every connection: an indicator's connection always ends it, so
    /// none is ever orphaned.
    async fn claim_orphaned_indicators(&self) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError> {
        Ok(Vec::new())
    }

    /// One router holds every session, and it checked its own before asking
    /// ([`crate::node::Node::take_floor`], which also takes an idle floor over): there is
    /// no other router to arbitrate with, so the floor is granted.
    async fn take_floor(&self, _channel: &str, _claim: &FloorClaim) -> Result<FloorTake, EngineError> {
        Ok(FloorTake::Granted)
    }

    /// Nothing was stored by [`SignalStore::take_floor`]: the router keeps the idle
    /// deadline of its own floors.
    async fn touch_floor(&self, _channel: &str, _holder: &SessionId, _idle: Duration) -> Result<(), EngineError> {
        Ok(())
    }

    /// Nothing was stored by [`SignalStore::take_floor`]: nothing to give back.
    async fn release_floor(&self, _channel: &str, _holder: &SessionId) -> Result<(), EngineError> {
        Ok(())
    }

    /// Nothing was stored by [`SignalStore::take_floor`]: no lease to renew.
    async fn renew_floors(&self, _floors: &[(String, SessionId)], _lease: Duration) -> Result<(), EngineError> {
        Ok(())
    }

    /// One router holds every session: a floor's connection always gives it back when it
    /// ends (its STOP and the end of `talking` go out then), so none is ever orphaned.
    async fn claim_orphaned_floors(&self, _gone: &[Id]) -> Result<Vec<OrphanedFloor>, EngineError> {
        Ok(Vec::new())
    }
}

/// In one process the broker is a direct call into the router's [`BrokerEvents`].
pub struct MemoryBroker {
    events: Arc<dyn BrokerEvents>,
}

impl MemoryBroker {
    pub fn new(events: Arc<dyn BrokerEvents>) -> Self {
        MemoryBroker { events }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, updates: &[PresenceUpdate]) -> Result<(), EngineError> {
        for update in updates {
            self.events.update(update.clone());
        }
        Ok(())
    }

    /// The node delivered the frame to its connections before handing it here, and one
    /// router holds them all: there is nobody else to tell.
    fn relay(&self, _delivery: &Delivery) {}

    /// Every session is on this router, which tells it directly: nobody else to tell.
    fn control(&self, _control: &Control) {}

    /// Nothing travels between routers, so there is no channel to subscribe to.
    fn serve_group(&self, _group: &Id, _serving: bool) {}

    /// Nothing is ever queued.
    async fn flush(&self) {}

    /// Publishing is a direct call into the router: nothing can be missed.
    fn is_receiving(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::log::DEFAULT_LOG_ENTRIES;

    const TTL: Duration = Duration::from_secs(60);
    const LAST_SEEN: Duration = Duration::from_secs(30 * 24 * 3600);
    const AWAY_AFTER: Duration = Duration::from_secs(300);
    const LIFETIMES: Lifetimes =
        Lifetimes { ttl: TTL, last_seen: LAST_SEEN, away_after: AWAY_AFTER, log_entries: DEFAULT_LOG_ENTRIES };

    fn session(user: &str, n: u64) -> Session {
        Session {
            id: SessionId::new("r", n),
            user: Id::parse(user).unwrap(),
            device_id: Some(format!("d{n}").into()),
            groups: Groups::default(),
            choice: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expires_after_ttl_not_before() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        let online = store.connect(&s).await.unwrap().update.expect("first session is a transition");
        assert_eq!(online.presence.status, Status::Online);
        assert!(online.presence.version >= online.timestamp, "versions start at the clock");

        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert!(store.expire_due().await.unwrap().is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        let expired = store.expire_due().await.unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].presence.status, expired[0].cause), (Status::Offline, Cause::Expired));
        assert!(expired[0].presence.version > online.presence.version);
        assert!(store.expire_due().await.unwrap().is_empty(), "one offline per transition");
        assert_eq!(store.disconnect(&s).await.unwrap(), None, "closing an expired session changes nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_renew_the_lease() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(30)).await;
            assert_eq!(store.heartbeat(&s, Instant::now()).await.unwrap(), None);
            assert!(store.expire_due().await.unwrap().is_empty());
        }
        assert_eq!(store.online().await.unwrap().users.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_after_expiry_comes_back_online() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        tokio::time::advance(TTL).await;
        let offline = store.expire_due().await.unwrap().remove(0);
        let back = store.heartbeat(&s, Instant::now()).await.unwrap().expect("re-registered");
        assert_eq!(back.presence.status, Status::Online);
        assert!(back.presence.version > offline.presence.version);
    }

    #[tokio::test(start_paused = true)]
    async fn user_stays_online_while_any_session_lives() {
        let store = MemoryPresence::new(LIFETIMES);
        let (phone, tablet) = (session("u", 1), session("u", 2));
        assert!(store.connect(&phone).await.unwrap().update.is_some());
        assert_eq!(store.connect(&tablet).await.unwrap().update, None, "second device is no transition");
        assert_eq!(store.disconnect(&phone).await.unwrap(), None, "old socket's close keeps the user online");
        let only = store.lookup(std::slice::from_ref(&phone.user), &Scope::everyone()).await.unwrap();
        assert_eq!((only[0].status, only[0].device_id.as_deref()), (Status::Online, Some("d2")));
        let off = store.disconnect(&tablet).await.unwrap().expect("last session");
        assert_eq!((off.presence.status, off.cause), (Status::Offline, Cause::Disconnect));
    }

    #[tokio::test(start_paused = true)]
    async fn groups_are_the_union_of_the_live_sessions_groups() {
        let in_groups = |n, groups: &[&str]| Session {
            groups: groups.iter().map(|g| Id::parse(g).unwrap()).collect(),
            ..session("u", n)
        };
        let names = |update: &PresenceUpdate| update.presence.groups.iter().map(|g| g.to_string()).collect::<Vec<_>>();
        let store = MemoryPresence::new(LIFETIMES);
        let (phone, tablet) = (in_groups(1, &["g1", "g2"]), in_groups(2, &["g2", "g3"]));
        assert_eq!(names(&store.connect(&phone).await.unwrap().update.unwrap()), ["g1", "g2"]);
        let joined = store.connect(&tablet).await.unwrap().update.expect("new groups are news");
        assert_eq!((joined.cause, names(&joined)), (Cause::Groups, vec!["g1".into(), "g2".into(), "g3".into()]));
        assert_eq!(store.heartbeat(&tablet, Instant::now()).await.unwrap(), None, "the same groups again are no news");

        // The phone falls silent: its lapse takes away only the group no other session names.
        tokio::time::advance(TTL / 2).await;
        store.heartbeat(&tablet, Instant::now()).await.unwrap();
        tokio::time::advance(TTL / 2).await;
        let lapsed = store.expire_due().await.unwrap();
        assert_eq!(lapsed.len(), 1);
        assert_eq!((lapsed[0].presence.status, lapsed[0].cause), (Status::Online, Cause::Groups));
        assert_eq!(names(&lapsed[0]), ["g2", "g3"]);

        let offline = store.disconnect(&tablet).await.unwrap().expect("the last session");
        assert_eq!((offline.presence.status, names(&offline)), (Status::Offline, vec!["g2".into(), "g3".into()]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_session_on_a_device_replaces_the_old_one() {
        let store = MemoryPresence::new(LIFETIMES);
        let on = |n, device: Option<&str>| Session { device_id: device.map(Arc::from), ..session("u", n) };
        let (old, unnamed, tablet) = (on(1, Some("radio")), on(2, None), on(3, Some("tablet")));
        for s in [&old, &unnamed, &tablet] {
            assert_eq!(store.connect(s).await.unwrap().replaced, None);
        }
        assert_eq!(store.connect(&on(4, None)).await.unwrap().replaced, None, "no device, nothing replaced");
        let new = on(5, Some("radio"));
        let replaced = store.connect(&new).await.unwrap();
        assert_eq!(replaced, Connected { update: None, replaced: Some(old.id.clone()) }, "no transition either");
        assert_eq!(
            store.heartbeat(&old, Instant::now()).await.unwrap(),
            None,
            "the replaced session is not brought back"
        );
        assert_eq!(store.regroup(&old).await.unwrap(), None);
        for s in [&new, &unnamed, &tablet] {
            store.disconnect(s).await.unwrap();
        }
        let last = store.disconnect(&on(4, None)).await.unwrap().expect("the last session ends the user");
        assert_eq!(last.presence.status, Status::Offline);
        assert_eq!(store.disconnect(&old).await.unwrap(), None, "the replaced session's end changes nothing");

        // A session lingering after its router's shutdown holds no device: a reconnect of
        // it replaces nothing, and the lingering session lapses.
        let lingering = on(6, Some("radio"));
        store.connect(&lingering).await.unwrap();
        store.linger(&lingering, Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.connect(&on(7, Some("radio"))).await.unwrap().replaced, None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_expired_session_does_not_offline_a_live_user() {
        let store = MemoryPresence::new(LIFETIMES);
        let (silent, live) = (session("u", 1), session("u", 2));
        store.connect(&silent).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        store.connect(&live).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(store.expire_due().await.unwrap().is_empty());
        assert_eq!(store.online().await.unwrap().users.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn last_seen_is_kept_for_the_retention_then_dropped() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        store.disconnect(&s).await.unwrap();
        tokio::time::advance(LAST_SEEN - Duration::from_secs(61)).await;
        store.expire_due().await.unwrap();
        assert!(store.lookup(std::slice::from_ref(&s.user), &Scope::everyone()).await.unwrap()[0].last_seen.is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        store.expire_due().await.unwrap();
        assert_eq!(
            store.lookup(std::slice::from_ref(&s.user), &Scope::everyone()).await.unwrap()[0],
            UserPresence::unknown(s.user.clone())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn linger_shortens_the_lease_without_ending_it() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        store.linger(&s, Duration::from_secs(5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(store.expire_due().await.unwrap().is_empty(), "still online inside the grace");
        let replacement = session("u", 2);
        assert_eq!(store.connect(&replacement).await.unwrap().update, None, "reconnect elsewhere is no transition");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.expire_due().await.unwrap().is_empty(), "the lingering session lapses silently");
        assert_eq!(store.online().await.unwrap().users.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lookup_keeps_order_and_reports_unknowns() {
        let store = MemoryPresence::new(LIFETIMES);
        store.connect(&session("a", 1)).await.unwrap();
        let b = session("b", 2);
        store.connect(&b).await.unwrap();
        store.disconnect(&b).await.unwrap();
        let ids: Vec<Id> = ["nobody", "b", "a"].iter().map(|s| Id::parse(s).unwrap()).collect();
        let got = store.lookup(&ids, &Scope::everyone()).await.unwrap();
        assert_eq!(got[0], UserPresence::unknown(ids[0].clone()));
        assert_eq!((got[1].status, got[1].last_seen.is_some()), (Status::Offline, true));
        assert_eq!((got[2].status, got[2].device_id.as_deref()), (Status::Online, Some("d1")));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_users_turn_away_once_and_come_back_with_activity() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        tokio::time::advance(AWAY_AFTER - Duration::from_secs(30)).await;
        store.heartbeat(&s, Instant::now()).await.unwrap();
        assert!(store.expire_due().await.unwrap().is_empty(), "heartbeats are not activity, but not idle yet");
        tokio::time::advance(Duration::from_secs(30)).await;
        store.heartbeat(&s, Instant::now()).await.unwrap();
        let away = store.expire_due().await.unwrap();
        assert_eq!(away.len(), 1, "heartbeats alone do not keep a user online");
        assert_eq!((away[0].presence.status, away[0].cause), (Status::Away, Cause::Idle));
        assert!(store.expire_due().await.unwrap().is_empty(), "one away per transition");
        assert_eq!(store.online().await.unwrap().users.len(), 1, "away users are connected");

        let back = store.activity(&s).await.unwrap().expect("activity brings the user back");
        assert_eq!((back.presence.status, back.cause), (Status::Online, Cause::Active));
        assert!(back.presence.version > away[0].presence.version);
        assert_eq!(store.activity(&s).await.unwrap(), None, "activity of an online user is no transition");
    }

    /// A client that pings every 2 minutes stays online indefinitely
    /// (here: an hour, with heartbeats every 30 s).
    #[tokio::test(start_paused = true)]
    async fn activity_pings_keep_a_user_online() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        for step in 1..=120 {
            tokio::time::advance(Duration::from_secs(30)).await;
            store.heartbeat(&s, Instant::now()).await.unwrap();
            if step % 4 == 0 {
                assert_eq!(store.activity(&s).await.unwrap(), None, "an online user pinging stays online");
            }
            assert!(store.expire_due().await.unwrap().is_empty(), "never away, never offline");
        }
        let seen = store.lookup(std::slice::from_ref(&s.user), &Scope::everyone()).await.unwrap().remove(0);
        assert_eq!(seen.status, Status::Online);
    }

    #[tokio::test(start_paused = true)]
    async fn chosen_statuses_are_shown_and_invisible_reads_as_offline() {
        let store = MemoryPresence::new(LIFETIMES);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        let dnd = store.set_status(&s, Mode::Dnd, Some("driving")).await.unwrap().unwrap();
        assert_eq!((dnd.presence.status, dnd.presence.status_text.as_deref()), (Status::Dnd, Some("driving")));
        let text = store.set_status(&s, Mode::Dnd, Some("parked")).await.unwrap().expect("a new text is news");
        assert_eq!(text.presence.status_text.as_deref(), Some("parked"));
        assert_eq!(store.set_status(&s, Mode::Dnd, Some("parked")).await.unwrap(), None, "nothing changed");
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(30)).await;
            store.heartbeat(&s, Instant::now()).await.unwrap();
            assert!(store.expire_due().await.unwrap().is_empty(), "dnd is not turned away by inactivity");
        }

        let hidden = store.set_status(&s, Mode::Invisible, None).await.unwrap().unwrap();
        assert_eq!(hidden.presence.status, Status::Offline);
        assert_eq!(hidden.presence.last_activity, None);
        assert!(store.online().await.unwrap().users.is_empty(), "invisible users are not in snapshots");
        tokio::time::advance(Duration::from_secs(30)).await;
        store.heartbeat(&s, Instant::now()).await.unwrap();
        let seen = store.lookup(std::slice::from_ref(&s.user), &Scope::everyone()).await.unwrap().remove(0);
        assert_eq!(seen.last_seen, hidden.presence.last_seen, "heartbeats do not reveal an invisible user");
        assert_eq!(store.disconnect(&s).await.unwrap(), None, "already shown offline");

        let again = session("u", 2);
        assert_eq!(store.connect(&again).await.unwrap().update, None, "the chosen status outlives the session");
        let manual = store.set_status(&again, Mode::Away, None).await.unwrap().unwrap();
        assert_eq!(manual.presence.status, Status::Away);
        assert_eq!(store.activity(&again).await.unwrap(), None, "manual away stays until set back");
        let online = store.set_status(&again, Mode::Auto, None).await.unwrap().unwrap();
        assert_eq!((online.presence.status, online.cause), (Status::Online, Cause::Status));
    }

    #[tokio::test(start_paused = true)]
    async fn indicators_lapse_after_their_ttl() {
        let store = MemoryPresence::new(LIFETIMES);
        let (g, u) = (Id::parse("g").unwrap(), Id::parse("u").unwrap());
        store.set_indicator(&g, &u, IndicatorKind::Typing, Some(Duration::from_secs(5))).await.unwrap();
        store.set_indicator(&g, &u, IndicatorKind::Recording, Some(Duration::from_secs(30))).await.unwrap();
        let both = store.indicators(&g).await.unwrap();
        assert_eq!(both, [(IndicatorKind::Typing, u.clone()), (IndicatorKind::Recording, u.clone())]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(store.indicators(&g).await.unwrap(), [(IndicatorKind::Recording, u.clone())]);
        store.set_indicator(&g, &u, IndicatorKind::Recording, None).await.unwrap();
        assert!(store.indicators(&g).await.unwrap().is_empty());
    }
}
