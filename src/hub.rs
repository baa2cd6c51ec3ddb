//! The router's local view of cluster presence, and the fan-out to its dashboards.
//!
//! The broker delivers every transition here. The hub keeps the newest version it has
//! seen per user and drops anything older (trap 4), numbers each accepted change with a
//! sequence number, encodes its frame once, and puts it on a bounded broadcast ring that
//! every dashboard reads. The ring's size bounds memory however slow a dashboard is: a
//! dashboard that falls a full ring behind is closed as a slow consumer (trap 6).
//!
//! Snapshots are read from this view, not from the store: a dashboard subscribes and
//! takes its snapshot under one lock, so no change falls between the two, and a 100k-user
//! snapshot costs no store round trip. The encoded snapshot frame (~10 MB for 100k users)
//! is cached until the next change, so a storm of reconnecting dashboards encodes it once;
//! encoding itself happens outside the lock.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use tokio::sync::{Notify, broadcast};

use crate::{
    id::Id,
    metrics,
    presence::{Groups, PresenceUpdate, Snapshot, Status, UserPresence},
    protocol,
    scope::Scope,
};

/// What dashboards receive from the hub.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// One accepted change, already encoded as a PRESENCE_UPDATE frame (as a dashboard
    /// that sees everyone is shown it), with the change itself and the groups the user
    /// was in before it: a scoped dashboard is shown the change if the user is within its
    /// scope after it, and the user leaving if it was only before (see [`Scope::view_of`]).
    Update { seq: u64, frame: Bytes, update: Arc<PresenceUpdate>, before: Groups },
    /// The view was rebuilt from the store; every dashboard needs a fresh snapshot.
    Resync,
}

pub struct Hub {
    view: Mutex<View>,
    events: broadcast::Sender<HubEvent>,
    resync: Notify,
}

#[derive(Default)]
struct View {
    /// Every user seen, offline ones included so a late stale "online" is recognised.
    users: HashMap<Id, UserPresence>,
    online: usize,
    seq: u64,
    /// The last encoded snapshot frame and the sequence number it holds.
    encoded: Option<(u64, Bytes)>,
}

impl View {
    /// Everyone online within `scope`, as the scope may read them.
    fn online_users(&self, scope: &Scope) -> Vec<UserPresence> {
        self.users
            .values()
            .filter(|p| p.status != Status::Offline && scope.sees(&p.user_id, &p.groups))
            .map(|p| scope.redact(p.clone()))
            .collect()
    }

    /// The cached frame serves only unrestricted dashboards; a restricted one gets its
    /// own selection.
    fn snapshot_source(&self, scope: &Scope) -> SnapshotSource {
        match &self.encoded {
            Some((seq, frame)) if *seq == self.seq && scope.allowed().is_none() => {
                SnapshotSource::Encoded(frame.clone())
            }
            _ => SnapshotSource::Users(self.online_users(scope)),
        }
    }
}

/// What a snapshot frame is made from.
pub enum SnapshotSource {
    /// Nothing changed since this frame was encoded.
    Encoded(Bytes),
    /// Everyone online, to be encoded.
    Users(Vec<UserPresence>),
}

/// A dashboard's start: the snapshot, its sequence number, and the stream after it.
pub struct Subscription {
    pub snapshot: SnapshotSource,
    pub seq: u64,
    pub events: broadcast::Receiver<HubEvent>,
}

impl Hub {
    /// `capacity` is how many changes a dashboard may fall behind before it is dropped.
    pub fn new(capacity: usize) -> Self {
        Hub { view: Mutex::new(View::default()), events: broadcast::channel(capacity.max(1)).0, resync: Notify::new() }
    }

    /// No code under the lock can panic; recover the guard rather than propagate one.
    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one transition; returns false (and changes nothing) when it is stale.
    pub fn apply(&self, update: PresenceUpdate) -> bool {
        let mut view = self.view();
        let new = &update.presence;
        let (was_online, before) = match view.users.get(&new.user_id) {
            Some(known) if known.version >= new.version => {
                ::metrics::counter!(metrics::STALE_UPDATES).increment(1);
                return false;
            }
            Some(known) => (known.status != Status::Offline, known.groups.clone()),
            None => (false, Groups::default()),
        };
        let is_online = new.status != Status::Offline;
        view.online = view.online + usize::from(is_online) - usize::from(was_online);
        view.seq += 1;
        let seq = view.seq;
        let frame = protocol::update_frame(&update, seq);
        view.users.insert(new.user_id.clone(), update.presence.clone());
        ::metrics::gauge!(metrics::ONLINE_USERS).set(view.online as f64);
        // No receiver is fine: nobody is watching.
        let _ = self.events.send(HubEvent::Update { seq, frame, update: Arc::new(update), before });
        true
    }

    /// The groups `user` was in at its last change this router heard of; `None` for a
    /// user never seen.
    pub fn groups_of(&self, user: &Id) -> Option<Groups> {
        self.view().users.get(user).map(|p| p.groups.clone())
    }

    /// Everyone online now and the sequence number the snapshot includes.
    #[cfg(test)]
    pub fn snapshot(&self) -> (Vec<UserPresence>, u64) {
        let view = self.view();
        (view.online_users(&Scope::everyone()), view.seq)
    }

    /// What a fresh snapshot for a dashboard with `scope` is made from, and the sequence
    /// number it includes.
    pub fn snapshot_source(&self, scope: &Scope) -> (SnapshotSource, u64) {
        let view = self.view();
        (view.snapshot_source(scope), view.seq)
    }

    /// A snapshot and the stream of every change after it, with nothing lost between.
    pub fn subscribe(&self, scope: &Scope) -> Subscription {
        let view = self.view();
        let events = self.events.subscribe();
        Subscription { snapshot: view.snapshot_source(scope), seq: view.seq, events }
    }

    /// The PRESENCE_SNAPSHOT frame for `source` taken at `seq`: encoded here, outside the
    /// lock. An unrestricted one (`allowed` is `None`) is kept for the next dashboard if
    /// nothing changed meanwhile.
    pub fn snapshot_frame(&self, source: SnapshotSource, seq: u64, scope: &Scope) -> Bytes {
        match source {
            SnapshotSource::Encoded(frame) => frame,
            SnapshotSource::Users(users) => {
                let frame = protocol::snapshot_frame(&users, seq);
                let mut view = self.view();
                if view.seq == seq && scope.allowed().is_none() {
                    view.encoded = Some((seq, frame.clone()));
                }
                frame
            }
        }
    }

    /// Rebuilds the view from the store's snapshot (start-up, and after the broker may have
    /// lost messages) and tells every dashboard to take a fresh snapshot.
    ///
    /// Updates keep arriving while the snapshot is read, so nothing newer than it is
    /// undone: a user in the snapshot takes the higher version of the two; a user missing
    /// from it is offline unless the view holds a change decided at or after the
    /// snapshot's watermark.
    pub fn reset(&self, snapshot: Snapshot) {
        let mut view = self.view();
        let listed: HashSet<Id> = snapshot.users.iter().map(|u| u.user_id.clone()).collect();
        for user in view.users.values_mut() {
            if !listed.contains(&user.user_id) && user.version < snapshot.watermark {
                user.status = Status::Offline;
            }
        }
        for user in snapshot.users {
            match view.users.get(&user.user_id) {
                Some(known) if known.version > user.version => {}
                _ => {
                    view.users.insert(user.user_id.clone(), user);
                }
            }
        }
        view.online = view.users.values().filter(|p| p.status != Status::Offline).count();
        view.seq += 1;
        ::metrics::gauge!(metrics::ONLINE_USERS).set(view.online as f64);
        let _ = self.events.send(HubEvent::Resync);
    }

    /// Asks the node to rebuild the view from the store: a broker calls this once its
    /// subscription is (re)established, since messages sent meanwhile are lost.
    pub fn request_resync(&self) {
        self.resync.notify_one();
    }

    /// Resolves when a resync was requested.
    pub async fn resync_requested(&self) {
        self.resync.notified().await;
    }

    /// Forgets offline users last seen before `cutoff_ms`, so the view holds the users of
    /// the retention window, not everyone ever seen.
    pub fn prune(&self, cutoff_ms: u64) {
        self.view().users.retain(|_, p| p.status != Status::Offline || p.last_seen.is_some_and(|at| at >= cutoff_ms));
    }

    pub fn online_count(&self) -> usize {
        self.view().online
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Cause;

    fn update(user: &str, status: Status, version: u64) -> PresenceUpdate {
        PresenceUpdate {
            presence: UserPresence {
                user_id: Id::parse(user).unwrap(),
                status,
                last_seen: Some(1),
                device_id: None,
                version,
                groups: Groups::default(),
                status_text: None,
                last_activity: None,
            },
            cause: Cause::Connect,
            timestamp: 1,
            seq: None,
        }
    }

    #[test]
    fn stale_versions_are_dropped() {
        let hub = Hub::new(16);
        assert!(hub.apply(update("u", Status::Online, 3)));
        assert!(!hub.apply(update("u", Status::Offline, 2)), "older offline must not win");
        assert!(!hub.apply(update("u", Status::Online, 3)), "duplicate is dropped");
        assert_eq!(hub.online_count(), 1);
        assert!(hub.apply(update("u", Status::Offline, 4)));
        assert_eq!(hub.online_count(), 0);
    }

    #[test]
    fn subscription_sees_every_change_after_its_snapshot() {
        let hub = Hub::new(16);
        hub.apply(update("a", Status::Online, 1));
        let mut sub = hub.subscribe(&Scope::everyone());
        assert!(matches!(&sub.snapshot, SnapshotSource::Users(users) if users.len() == 1));
        hub.apply(update("b", Status::Online, 1));
        match sub.events.try_recv().unwrap() {
            HubEvent::Update { seq, .. } => assert_eq!(seq, sub.seq + 1),
            other => panic!("expected an update, got {other:?}"),
        }
        assert!(sub.events.try_recv().is_err());
    }

    #[test]
    fn reset_replaces_the_view_and_asks_for_resync() {
        let hub = Hub::new(16);
        hub.apply(update("gone", Status::Online, 1));
        let mut sub = hub.subscribe(&Scope::everyone());
        hub.reset(Snapshot { users: vec![update("new", Status::Online, 5).presence], watermark: 10 });
        assert!(matches!(sub.events.try_recv().unwrap(), HubEvent::Resync));
        let (users, _) = hub.snapshot();
        assert_eq!(users.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>(), ["new"]);
        assert!(!hub.apply(update("new", Status::Offline, 4)), "reset keeps versions");
    }

    #[test]
    fn reset_never_undoes_a_newer_update() {
        let hub = Hub::new(16);
        // Applied while the snapshot (read at watermark 100) was on its way.
        hub.apply(update("came", Status::Online, 105));
        hub.apply(update("left", Status::Offline, 106));
        hub.apply(update("old", Status::Online, 50));
        let stale = vec![update("left", Status::Online, 90).presence];
        hub.reset(Snapshot { users: stale, watermark: 100 });
        let (users, _) = hub.snapshot();
        let mut online: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
        online.sort();
        assert_eq!(online, ["came"], "newer online kept, newer offline kept, unlisted old user offline");
        assert_eq!(hub.online_count(), 1);
    }

    #[test]
    fn prune_forgets_only_old_offline_users() {
        let hub = Hub::new(16);
        hub.apply(update("online", Status::Online, 1)); // last seen 1, but online
        hub.apply(update("old", Status::Offline, 1));
        let mut recent = update("recent", Status::Offline, 1);
        recent.presence.last_seen = Some(500);
        hub.apply(recent);
        hub.prune(100);
        assert!(hub.apply(update("old", Status::Online, 1)), "forgotten: any version is new again");
        assert!(!hub.apply(update("recent", Status::Online, 1)), "kept: its version still counts");
        assert_eq!(hub.online_count(), 2);
    }

    #[test]
    fn an_unchanged_snapshot_is_encoded_once() {
        let hub = Hub::new(16);
        hub.apply(update("a", Status::Online, 1));
        let first = hub.subscribe(&Scope::everyone());
        let frame = hub.snapshot_frame(first.snapshot, first.seq, &Scope::everyone());
        let second = hub.subscribe(&Scope::everyone());
        match second.snapshot {
            SnapshotSource::Encoded(cached) => assert_eq!(cached, frame),
            SnapshotSource::Users(_) => panic!("nothing changed: the frame should be reused"),
        }
        hub.apply(update("b", Status::Online, 1));
        assert!(matches!(hub.subscribe(&Scope::everyone()).snapshot, SnapshotSource::Users(users) if users.len() == 2));
    }

    #[test]
    fn a_full_ring_reports_lag_instead_of_growing() {
        let hub = Hub::new(4);
        let mut sub = hub.subscribe(&Scope::everyone());
        for v in 1..=10 {
            hub.apply(update("u", if v % 2 == 1 { Status::Online } else { Status::Offline }, v));
        }
        assert!(matches!(sub.events.try_recv(), Err(broadcast::error::TryRecvError::Lagged(6))));
    }
}
