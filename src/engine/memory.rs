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

use super::{Broker, EngineError, PresenceStore};
use crate::{
    hub::Hub,
    id::Id,
    presence::{
        Cause, Groups, PresenceUpdate, Session, SessionId, Snapshot, Status, UserPresence, next_version, unix_ms,
    },
};

pub struct MemoryPresence {
    ttl: Duration,
    /// How long an offline user's record (its last seen) is kept.
    last_seen: Duration,
    state: Mutex<State>,
}

/// How often offline records past their retention are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    users: HashMap<Id, UserRecord>,
    /// Live sessions and their lease deadlines.
    leases: HashMap<SessionId, (Id, Instant)>,
    /// The same leases ordered by deadline, so expiry touches only what is due.
    deadlines: BTreeSet<(Instant, SessionId)>,
    /// Group → member → when a session of the member last named the group.
    groups: HashMap<Id, HashMap<Id, Instant>>,
    last_prune: Option<Instant>,
}

/// Kept after the user goes offline, for `lastSeen` and the version counter.
struct UserRecord {
    live: Vec<SessionId>,
    /// When the last session ended; the record is dropped a retention later.
    offline_since: Option<Instant>,
    version: u64,
    last_seen: u64,
    device_id: Option<Arc<str>>,
    groups: Groups,
}

impl UserRecord {
    fn presence(&self, user: &Id) -> UserPresence {
        UserPresence {
            user_id: user.clone(),
            status: if self.live.is_empty() { Status::Offline } else { Status::Online },
            last_seen: Some(self.last_seen),
            device_id: self.device_id.clone(),
            version: self.version,
            groups: self.groups.clone(),
        }
    }

    /// Bumps the version and describes the transition to the record's current status.
    fn transition(&mut self, user: &Id, cause: Cause) -> PresenceUpdate {
        let now = unix_ms();
        self.version = next_version(self.version, now);
        PresenceUpdate { presence: self.presence(user), cause, timestamp: now, seq: None }
    }
}

impl MemoryPresence {
    pub fn new(ttl: Duration, last_seen: Duration) -> Self {
        MemoryPresence { ttl, last_seen, state: Mutex::new(State::default()) }
    }

    /// The lock is never held across an await, and no code under it can panic, so a
    /// poisoned lock cannot happen; recover the guard rather than propagate a panic.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn lease(&mut self, session: &Session, deadline: Instant) -> Option<PresenceUpdate> {
        let now_ms = unix_ms();
        if let Some((_, old)) = self.leases.insert(session.id.clone(), (session.user.clone(), deadline)) {
            self.deadlines.remove(&(old, session.id.clone()));
        }
        self.deadlines.insert((deadline, session.id.clone()));
        let record = self.users.entry(session.user.clone()).or_insert_with(|| UserRecord {
            live: Vec::new(),
            offline_since: None,
            version: 0,
            last_seen: now_ms,
            device_id: None,
            groups: Groups::default(),
        });
        record.last_seen = now_ms;
        record.device_id = session.device_id.clone().or(record.device_id.take());
        record.groups = session.groups.clone();
        let now = Instant::now();
        for group in session.groups.iter() {
            self.groups.entry(group.clone()).or_default().insert(session.user.clone(), now);
        }
        if record.live.contains(&session.id) {
            return None;
        }
        record.live.push(session.id.clone());
        record.offline_since = None;
        (record.live.len() == 1).then(|| record.transition(&session.user, Cause::Connect))
    }

    fn end(&mut self, id: &SessionId, cause: Cause) -> Option<PresenceUpdate> {
        let (user, deadline) = self.leases.remove(id)?;
        self.deadlines.remove(&(deadline, id.clone()));
        let record = self.users.get_mut(&user)?;
        record.live.retain(|s| s != id);
        if !record.live.is_empty() {
            return None;
        }
        // An expired user was last seen at its last heartbeat, which `last_seen` holds.
        if cause == Cause::Disconnect {
            record.last_seen = unix_ms();
        }
        record.offline_since = Some(Instant::now());
        Some(record.transition(&user, cause))
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn connect(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        Ok(self.state().lease(session, Instant::now() + self.ttl))
    }

    async fn heartbeat(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        Ok(self.state().lease(session, Instant::now() + self.ttl))
    }

    async fn disconnect(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        Ok(self.state().end(&session.id, Cause::Disconnect))
    }

    async fn expire_due(&self) -> Result<Vec<PresenceUpdate>, EngineError> {
        let now = Instant::now();
        let mut state = self.state();
        let mut updates = Vec::new();
        while let Some((deadline, id)) = state.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            updates.extend(state.end(&id, Cause::Expired));
        }
        if state.last_prune.is_none_or(|at| now - at >= PRUNE_EVERY.min(self.last_seen)) {
            state.last_prune = Some(now);
            let retention = self.last_seen;
            state.users.retain(|_, r| r.offline_since.is_none_or(|since| now - since < retention));
            for members in state.groups.values_mut() {
                members.retain(|_, seen| now - *seen < retention + self.ttl);
            }
            state.groups.retain(|_, members| !members.is_empty());
        }
        Ok(updates)
    }

    async fn linger(&self, session: &Session, grace: Duration) -> Result<(), EngineError> {
        let mut state = self.state();
        if let Some(&(_, deadline)) = state.leases.get(&session.id) {
            state.lease(session, deadline.min(Instant::now() + grace));
        }
        Ok(())
    }

    async fn online(&self) -> Result<Snapshot, EngineError> {
        let state = self.state();
        let watermark = unix_ms();
        let users = state.users.iter().filter(|(_, r)| !r.live.is_empty()).map(|(id, r)| r.presence(id)).collect();
        Ok(Snapshot { users, watermark })
    }

    async fn group_members(&self, group: &Id) -> Result<Vec<Id>, EngineError> {
        let state = self.state();
        let since = Instant::now().checked_sub(self.last_seen + self.ttl);
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

    async fn lookup(&self, users: &[Id]) -> Result<Vec<UserPresence>, EngineError> {
        let state = self.state();
        Ok(users
            .iter()
            .map(|id| state.users.get(id).map_or_else(|| UserPresence::unknown(id.clone()), |r| r.presence(id)))
            .collect())
    }
}

/// In one process the broker is a direct call into the hub.
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, update: &PresenceUpdate) -> Result<(), EngineError> {
        self.hub.apply(update.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const LAST_SEEN: Duration = Duration::from_secs(30 * 24 * 3600);

    fn session(user: &str, n: u64) -> Session {
        Session {
            id: SessionId::new("r", n),
            user: Id::parse(user).unwrap(),
            device_id: Some(format!("d{n}").into()),
            groups: Groups::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expires_after_ttl_not_before() {
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        let s = session("u", 1);
        let online = store.connect(&s).await.unwrap().expect("first session is a transition");
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
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(30)).await;
            assert_eq!(store.heartbeat(&s).await.unwrap(), None);
            assert!(store.expire_due().await.unwrap().is_empty());
        }
        assert_eq!(store.online().await.unwrap().users.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_after_expiry_comes_back_online() {
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        tokio::time::advance(TTL).await;
        let offline = store.expire_due().await.unwrap().remove(0);
        let back = store.heartbeat(&s).await.unwrap().expect("re-registered");
        assert_eq!(back.presence.status, Status::Online);
        assert!(back.presence.version > offline.presence.version);
    }

    #[tokio::test(start_paused = true)]
    async fn user_stays_online_while_any_session_lives() {
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        let (phone, tablet) = (session("u", 1), session("u", 2));
        assert!(store.connect(&phone).await.unwrap().is_some());
        assert_eq!(store.connect(&tablet).await.unwrap(), None, "second device is no transition");
        assert_eq!(store.disconnect(&phone).await.unwrap(), None, "old socket's close keeps the user online");
        let only = store.lookup(std::slice::from_ref(&phone.user)).await.unwrap();
        assert_eq!((only[0].status, only[0].device_id.as_deref()), (Status::Online, Some("d2")));
        let off = store.disconnect(&tablet).await.unwrap().expect("last session");
        assert_eq!((off.presence.status, off.cause), (Status::Offline, Cause::Disconnect));
    }

    #[tokio::test(start_paused = true)]
    async fn one_expired_session_does_not_offline_a_live_user() {
        let store = MemoryPresence::new(TTL, LAST_SEEN);
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
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        store.disconnect(&s).await.unwrap();
        tokio::time::advance(LAST_SEEN - Duration::from_secs(61)).await;
        store.expire_due().await.unwrap();
        assert!(store.lookup(std::slice::from_ref(&s.user)).await.unwrap()[0].last_seen.is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        store.expire_due().await.unwrap();
        assert_eq!(
            store.lookup(std::slice::from_ref(&s.user)).await.unwrap()[0],
            UserPresence::unknown(s.user.clone())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn linger_shortens_the_lease_without_ending_it() {
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        let s = session("u", 1);
        store.connect(&s).await.unwrap();
        store.linger(&s, Duration::from_secs(5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(store.expire_due().await.unwrap().is_empty(), "still online inside the grace");
        let replacement = session("u", 2);
        assert_eq!(store.connect(&replacement).await.unwrap(), None, "reconnect elsewhere is no transition");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.expire_due().await.unwrap().is_empty(), "the lingering session lapses silently");
        assert_eq!(store.online().await.unwrap().users.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lookup_keeps_order_and_reports_unknowns() {
        let store = MemoryPresence::new(TTL, LAST_SEEN);
        store.connect(&session("a", 1)).await.unwrap();
        let b = session("b", 2);
        store.connect(&b).await.unwrap();
        store.disconnect(&b).await.unwrap();
        let ids: Vec<Id> = ["nobody", "b", "a"].iter().map(|s| Id::parse(s).unwrap()).collect();
        let got = store.lookup(&ids).await.unwrap();
        assert_eq!(got[0], UserPresence::unknown(ids[0].clone()));
        assert_eq!((got[1].status, got[1].last_seen.is_some()), (Status::Offline, true));
        assert_eq!((got[2].status, got[2].device_id.as_deref()), (Status::Online, Some("d1")));
    }
}
