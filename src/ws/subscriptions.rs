//! A dashboard that chose its groups: SUBSCRIBE (45) and UNSUBSCRIBE (46), and what it is
//! sent from then on (`docs/PROTOCOL.md`, "Choosing groups").
//!
//! Until its first SUBSCRIBE or UNSUBSCRIBE a dashboard is sent everything its token
//! reads, every change at once, as always. From then on it is sent the groups it chose:
//! - **in full**: its members' presence and the group's indicators. Changes are coalesced
//!   per dashboard: within its window (the smallest its full subscriptions asked for) only
//!   the latest PRESENCE_UPDATE of each user is kept, and all of them go out together at
//!   the window's end, in the order they were numbered. A user's final state is thus
//!   always sent, at most one window late, and never followed by an older one;
//! - **by its counts**: GROUP_COUNTS (online, away, dnd, offline), sent when the counts
//!   changed, at most once per the subscription's interval (never below
//!   [`COUNTS_MIN_INTERVAL`](crate::protocol::groups::COUNTS_MIN_INTERVAL)), the last
//!   change always followed by the counts it left.
//!
//! Memory per dashboard is bounded: at most [`MAX_SUBSCRIPTIONS`] groups and
//! [`PENDING_MAX`] coalesced changes (reaching it sends them at once, ahead of the
//! window).
//!
//! A GROUP_SNAPSHOT answering a SUBSCRIBE is exact: the changes numbered up to the
//! sequence number it includes are sent before it (as the old choice shows them), and
//! only the later ones after it.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::broadcast::{self, error::TryRecvError},
    time::Instant,
};

use super::{
    close,
    connection::{Connection, Exit, record_latency},
    socket::Socket,
};
use crate::{
    hub::{Hub, HubEvent, MemberCounts},
    id::Id,
    metrics,
    presence::Groups,
    protocol::{
        self, ErrorCode, Frame,
        groups::{self as wire, MAX_SUBSCRIPTIONS, Watch},
    },
    scope::{Scope, View},
};

/// Most coalesced changes one dashboard holds; reaching it sends them at once.
pub const PENDING_MAX: usize = 1024;

/// The groups a dashboard chose, and what it has yet to be sent of them.
pub(super) struct Subscriptions {
    /// Groups watched in full, and the coalescing window each asked for.
    full: BTreeMap<Id, Duration>,
    counts: BTreeMap<Id, Counter>,
    /// The current members of any full group: how changes are shown.
    scope: Scope,
    /// The latest change of each user not sent yet: its sequence number, frame and when
    /// it was decided (Unix ms).
    pending: HashMap<Id, (u64, Bytes, u64)>,
    /// Indicator starts and ends not sent yet, in order.
    signals: Vec<(u64, Bytes)>,
    /// When the coalesced changes go out.
    flush_at: Option<Instant>,
}

/// One group watched by its counts.
struct Counter {
    interval: Duration,
    sent_at: Option<Instant>,
    sent: Option<MemberCounts>,
    /// The counts may have changed: when to look (and send them if they did).
    due: Option<Instant>,
}

impl Default for Subscriptions {
    /// No group: a dashboard whose first choice is still to come.
    fn default() -> Self {
        Subscriptions {
            full: BTreeMap::new(),
            counts: BTreeMap::new(),
            scope: Scope::members_of_any(Groups::default()),
            pending: HashMap::new(),
            signals: Vec::new(),
            flush_at: None,
        }
    }
}

impl Subscriptions {
    /// What a dashboard sent everything its token reads holds before its first
    /// UNSUBSCRIBE: its token's groups in full, every change at once; `None` for a token
    /// that reads everyone (there is no group to take out).
    fn of_token(scope: &Scope) -> Option<Subscriptions> {
        let groups = scope.allowed()?;
        let mut subscriptions = Subscriptions {
            full: groups.iter().map(|group| (group.clone(), Duration::ZERO)).collect(),
            ..Subscriptions::default()
        };
        subscriptions.rescope();
        Some(subscriptions)
    }

    fn rescope(&mut self) {
        self.scope = Scope::members_of_any(self.full.keys().cloned().collect());
    }

    fn window(&self) -> Duration {
        self.full.values().min().copied().unwrap_or_default()
    }

    /// Whom the dashboard is shown: the members of its full groups.
    pub(super) fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Takes a change numbered `seq` (not yet seen): the frame to send now, if the
    /// dashboard is shown it and sends every change at once; otherwise it waits for the
    /// window's end (a later change of the same user replaces it).
    fn take(&mut self, change: HubEvent, seq: u64, now: Instant) -> Option<Bytes> {
        let (user, frame) = match change {
            HubEvent::Update { frame, update, before, position, .. } => {
                for group in update.presence.groups.iter().chain(before.iter()) {
                    if let Some(counter) = self.counts.get_mut(group) {
                        counter.touch(now);
                    }
                }
                let frame = match self.scope.view_of(&update, &before) {
                    View::AsIs => frame,
                    View::Changed(shown) => protocol::update_frame(&shown, seq, position.as_deref()),
                    View::Hidden => return None,
                };
                (Some((update.presence.user_id.clone(), update.timestamp)), frame)
            }
            HubEvent::Indicator { frame, change, .. } => {
                if !self.scope.covers_group(&change.indicator.group) {
                    return None;
                }
                (None, frame)
            }
            HubEvent::Resync | HubEvent::Stale(_) | HubEvent::Fresh(_) => return None,
        };
        let window = self.window();
        if window.is_zero() {
            if let Some((_, decided)) = user {
                record_latency(decided);
            }
            return Some(frame);
        }
        match user {
            Some((user, decided)) => {
                if self.pending.insert(user, (seq, frame, decided)).is_some() {
                    ::metrics::counter!(metrics::UPDATES_COALESCED).increment(1);
                }
            }
            None => self.signals.push((seq, frame)),
        }
        let flush_at = *self.flush_at.get_or_insert(now + window);
        if self.pending.len() + self.signals.len() >= PENDING_MAX {
            self.flush_at = Some(flush_at.min(now));
        }
        None
    }

    /// A STALE or FRESH frame, when the dashboard's view includes `seq`: at once, after
    /// the coalesced changes before it (they go out with it).
    fn urgent(&mut self, frame: Bytes, seq: u64, now: Instant) -> Option<Bytes> {
        if self.pending.is_empty() && self.signals.is_empty() {
            return Some(frame);
        }
        self.signals.push((seq, frame));
        self.flush_at = Some(now);
        None
    }

    /// When something is due: the coalesced changes, or a group's counts.
    pub(super) fn due(&self) -> Option<Instant> {
        self.counts.values().filter_map(|counter| counter.due).chain(self.flush_at).min()
    }

    /// Every coalesced change, in order; nothing is left pending.
    fn drain(&mut self) -> Vec<Bytes> {
        self.flush_at = None;
        let mut changes: Vec<(u64, Bytes)> = self
            .pending
            .drain()
            .map(|(_, (seq, frame, decided))| {
                record_latency(decided);
                (seq, frame)
            })
            .collect();
        changes.append(&mut self.signals);
        // Stable: a STALE or FRESH frame follows the changes of its sequence number.
        changes.sort_by_key(|(seq, _)| *seq);
        changes.into_iter().map(|(_, frame)| frame).collect()
    }

    /// What is due at `now`: the coalesced changes once their window ended (or too many
    /// wait), and the counts of each group due that changed since they were last sent.
    fn take_due(&mut self, hub: &Hub, now: Instant) -> Vec<Bytes> {
        let mut frames = if self.flush_at.is_some_and(|at| at <= now) { self.drain() } else { Vec::new() };
        for (group, counter) in &mut self.counts {
            if counter.due.is_some_and(|at| at <= now) {
                counter.due = None;
                frames.extend(counter.send_if_changed(hub, group, now));
            }
        }
        frames
    }

    /// The view was replaced by a snapshot: nothing pending is news, every group's
    /// counts are looked at again.
    fn resynced(&mut self, now: Instant) {
        self.pending.clear();
        self.signals.clear();
        self.flush_at = None;
        for counter in self.counts.values_mut() {
            counter.due = Some(now);
        }
    }

    /// Keeps only the groups `scope` (a new token's) covers.
    fn retain_within(&mut self, scope: &Scope) {
        self.full.retain(|group, _| scope.covers_group(group));
        self.counts.retain(|group, _| scope.covers_group(group));
        self.rescope();
    }

    fn len(&self) -> usize {
        self.full.len() + self.counts.len()
    }

    fn contains(&self, group: &Id) -> bool {
        self.full.contains_key(group) || self.counts.contains_key(group)
    }
}

impl Counter {
    /// The counts may have changed: look at once, or once the interval since the last
    /// GROUP_COUNTS has passed.
    fn touch(&mut self, now: Instant) {
        if self.due.is_none() {
            self.due = Some(self.sent_at.map_or(now, |at| (at + self.interval).max(now)));
        }
    }

    /// GROUP_COUNTS of `group` if its counts differ from the last ones sent.
    fn send_if_changed(&mut self, hub: &Hub, group: &Id, now: Instant) -> Option<Bytes> {
        let (counts, seq) = hub.group_counts(group);
        if self.sent == Some(counts) {
            return None;
        }
        self.sent = Some(counts);
        self.sent_at = Some(now);
        ::metrics::counter!(metrics::GROUP_COUNTS_SENT).increment(1);
        Some(wire::counts_frame(group, &counts, seq))
    }
}

impl Connection {
    /// The scope the dashboard's snapshots are taken in: its token's, or, once it chose
    /// its groups, the members of its full groups.
    pub(super) fn watched_scope(&self) -> &Scope {
        self.subscriptions.as_ref().map_or(&self.scope, |subscriptions| subscriptions.scope())
    }

    /// A change numbered `seq` for a dashboard that chose its groups: the frame to send
    /// now, if any (see [`Subscriptions::take`]).
    pub(super) fn take_subscribed(&mut self, change: HubEvent, seq: u64) -> Option<Bytes> {
        self.subscriptions.as_mut()?.take(change, seq, Instant::now())
    }

    /// A STALE or FRESH frame: the frame to send now, unless coalesced changes wait
    /// (then it goes out at once after them).
    pub(super) fn urgent_subscribed(&mut self, frame: Bytes) -> Option<Bytes> {
        let seq = self.seq;
        match self.subscriptions.as_mut() {
            Some(subscriptions) => subscriptions.urgent(frame, seq, Instant::now()),
            None => Some(frame),
        }
    }

    /// When the dashboard's coalesced changes or counts are due.
    pub(super) fn subscriptions_due(&self) -> Option<Instant> {
        self.subscriptions.as_ref().and_then(|subscriptions| subscriptions.due())
    }

    /// The view was replaced by a snapshot (a resync, a new token).
    pub(super) fn subscriptions_resynced(&mut self) {
        if let Some(subscriptions) = self.subscriptions.as_mut() {
            subscriptions.resynced(Instant::now());
        }
    }

    /// A new token: groups outside its scope are no longer watched.
    pub(super) fn subscriptions_within_scope(&mut self) {
        if let Some(subscriptions) = self.subscriptions.as_mut() {
            subscriptions.retain_within(&self.scope);
        }
    }

    /// Feeds what is due now (unflushed: the caller flushes).
    pub(super) async fn feed_due(&mut self, socket: &mut Socket) -> Option<Exit> {
        let subscriptions = self.subscriptions.as_mut()?;
        let frames = subscriptions.take_due(self.app.node.hub(), Instant::now());
        self.feed_all(socket, frames).await
    }

    /// Writes what is due now.
    pub(super) async fn on_subscriptions_due(&mut self, socket: &mut Socket) -> Option<Exit> {
        if let Some(exit) = self.feed_due(socket).await {
            return Some(exit);
        }
        self.timed(socket.flush()).await
    }

    async fn feed_all(&mut self, socket: &mut Socket, frames: Vec<Bytes>) -> Option<Exit> {
        for frame in frames {
            if let Some(exit) = self.timed(socket.feed(frame)).await {
                return Some(exit);
            }
        }
        None
    }

    /// Refuses a SUBSCRIBE or UNSUBSCRIBE, counted by its ERROR code.
    async fn refuse_subscription(
        &mut self,
        socket: &mut Socket,
        frame: &Frame,
        code: ErrorCode,
        message: &str,
    ) -> Result<bool, Exit> {
        ::metrics::counter!(metrics::GROUP_SUBSCRIPTIONS, "result" => code.as_str()).increment(1);
        self.refuse(socket, frame, code, message).await
    }

    /// The group a SUBSCRIBE or UNSUBSCRIBE names, from a connection that watches
    /// presence; `Err` once it was refused.
    async fn subscription_group(&mut self, socket: &mut Socket, frame: &Frame) -> Result<Id, Result<bool, Exit>> {
        if !self.role.watches_presence() {
            let message = "only dashboards choose the groups they are shown";
            return Err(self.refuse_subscription(socket, frame, ErrorCode::NotAllowed, message).await);
        }
        match &frame.to {
            Some(group) => Ok(group.clone()),
            None => {
                let message = "toId must name a group";
                Err(self.refuse_subscription(socket, frame, ErrorCode::InvalidPayload, message).await)
            }
        }
    }

    /// SUBSCRIBE (45): watch the group in `toId` in full (answered with ACK and its
    /// GROUP_SNAPSHOT) or by its counts (ACK and GROUP_COUNTS). `events` is the
    /// dashboard's stream: the changes up to the snapshot are sent before it.
    pub(super) async fn on_subscribe(
        &mut self,
        socket: &mut Socket,
        frame: &Frame,
        events: Option<&mut broadcast::Receiver<HubEvent>>,
    ) -> Result<bool, Exit> {
        let group = match self.subscription_group(socket, frame).await {
            Ok(group) => group,
            Err(refused) => return refused,
        };
        let watch = match wire::subscribe(&frame.payload) {
            Ok(watch) => watch,
            Err(e) => {
                return self.refuse_subscription(socket, frame, ErrorCode::InvalidPayload, &e.to_string()).await;
            }
        };
        if !self.scope.covers_group(&group) {
            let message = "the group is outside the token's groups";
            return self.refuse_subscription(socket, frame, ErrorCode::NotInScope, message).await;
        }
        let known = self.subscriptions.as_ref().is_some_and(|s| s.contains(&group));
        if !known && self.subscriptions.as_ref().is_some_and(|s| s.len() >= MAX_SUBSCRIPTIONS) {
            let message = "a dashboard subscribes to at most 256 groups";
            return self.refuse_subscription(socket, frame, ErrorCode::TooManySubscriptions, message).await;
        }
        let Some(events) = events else {
            return self.refuse_subscription(socket, frame, ErrorCode::NotAllowed, "not a dashboard").await;
        };
        let now = Instant::now();
        match watch {
            Watch::Counts { interval } => {
                ::metrics::counter!(metrics::GROUP_SUBSCRIPTIONS, "result" => "counts").increment(1);
                let subscriptions = self.subscriptions.get_or_insert_default();
                // Changes still due under the choice so far go before the ACK.
                let pending = subscriptions.drain();
                if subscriptions.full.remove(&group).is_some() {
                    subscriptions.rescope();
                }
                let mut counter = Counter { interval, sent_at: None, sent: None, due: None };
                let counts = counter.send_if_changed(self.app.node.hub(), &group, now);
                subscriptions.counts.insert(group, counter);
                if let Some(exit) = self.feed_all(socket, pending).await {
                    return Err(exit);
                }
                self.ack(socket, frame).await?;
                match counts {
                    Some(counts) => self.write(socket, counts).await.map_or(Ok(false), Err),
                    None => Ok(false),
                }
            }
            Watch::Full { window } => {
                ::metrics::counter!(metrics::GROUP_SUBSCRIPTIONS, "result" => "full").increment(1);
                let mut chosen: Vec<Id> =
                    self.subscriptions.as_ref().map(|s| s.full.keys().cloned().collect()).unwrap_or_default();
                chosen.push(group.clone());
                let reader = Scope::members_of_any(chosen.into());
                let hub = self.app.node.hub().clone();
                let part = hub.group_part(&group, &reader);
                // The changes up to the part, as the choice so far shows them, go first.
                let resynced = self.send_up_to(socket, events, part.seq).await?;
                let subscriptions = self.subscriptions.get_or_insert_default();
                let pending = subscriptions.drain();
                subscriptions.counts.remove(&group);
                subscriptions.full.insert(group.clone(), window);
                subscriptions.rescope();
                if let Some(exit) = self.feed_all(socket, pending).await {
                    return Err(exit);
                }
                self.ack(socket, frame).await?;
                if resynced {
                    // The view was rebuilt meanwhile: a whole snapshot of the new choice.
                    self.subscriptions_resynced();
                    let source = hub.snapshot_source(self.watched_scope());
                    return Box::pin(self.write_snapshot(socket, source)).await.map_or(Ok(false), Err);
                }
                self.seq = self.seq.max(part.seq);
                let snapshot = wire::group_snapshot_frame(&group, &part);
                drop(part);
                self.write(socket, snapshot).await.map_or(Ok(false), Err)
            }
        }
    }

    /// Sends (or, coalesced, holds) the changes numbered up to `seq` from `events`, as
    /// the dashboard's choice so far shows them; `Ok(true)` when the view was rebuilt
    /// meanwhile (the dashboard needs a whole snapshot). Every change up to `seq` is on
    /// the ring already: the hub numbers and sends them under the lock `seq` was read
    /// under.
    async fn send_up_to(
        &mut self,
        socket: &mut Socket,
        events: &mut broadcast::Receiver<HubEvent>,
        seq: u64,
    ) -> Result<bool, Exit> {
        while self.seq < seq {
            let change = match events.try_recv() {
                Ok(HubEvent::Resync) => return Ok(true),
                Ok(change) => change,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::info!(missed, "dashboard fell behind the update ring");
                    return Err(Exit::Close(close::SLOW_CONSUMER, "slow consumer"));
                }
                Err(TryRecvError::Closed) => return Err(Exit::Close(close::SERVICE_RESTART, "router restarting")),
            };
            if let Some(frame) = self.shown(change)
                && let Some(exit) = self.timed(socket.feed(frame)).await
            {
                return Err(exit);
            }
        }
        Ok(false)
    }

    /// UNSUBSCRIBE (46): stop watching the group in `toId` (answered with ACK, after the
    /// coalesced changes so far). A dashboard still sent everything its token reads is
    /// subscribed to each of its token's groups.
    pub(super) async fn on_unsubscribe(&mut self, socket: &mut Socket, frame: &Frame) -> Result<bool, Exit> {
        let group = match self.subscription_group(socket, frame).await {
            Ok(group) => group,
            Err(refused) => return refused,
        };
        let chosen = self.subscriptions.is_some();
        let mut subscriptions = match self.subscriptions.take() {
            Some(subscriptions) => subscriptions,
            None => Box::new(Subscriptions::of_token(&self.scope).unwrap_or_default()),
        };
        let full = subscriptions.full.remove(&group).is_some();
        let counts = subscriptions.counts.remove(&group).is_some();
        if !full && !counts {
            if chosen {
                self.subscriptions = Some(subscriptions);
            }
            return self
                .refuse_subscription(socket, frame, ErrorCode::NotSubscribed, "not subscribed to the group")
                .await;
        }
        ::metrics::counter!(metrics::GROUP_SUBSCRIPTIONS, "result" => "unsubscribed").increment(1);
        let pending = subscriptions.drain();
        subscriptions.rescope();
        self.subscriptions = Some(subscriptions);
        if let Some(exit) = self.feed_all(socket, pending).await {
            return Err(exit);
        }
        self.ack(socket, frame).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::presence::{Cause, PresenceUpdate, Status, UserPresence};

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    /// `user`, in `groups`, changes to `status` at `version`: the hub's event numbered `seq`.
    fn change(seq: u64, user: &str, groups: &[&str], status: Status, version: u64) -> HubEvent {
        let mut presence = UserPresence::unknown(id(user));
        presence.status = status;
        presence.version = version;
        presence.groups = groups.iter().map(|g| id(g)).collect();
        let update = PresenceUpdate { presence, cause: Cause::Status, timestamp: 1, seq: None, shard: 0 };
        HubEvent::Update {
            seq,
            frame: protocol::update_frame(&update, seq, None),
            update: Arc::new(update),
            before: Groups::default(),
            position: None,
        }
    }

    fn watching(full: &[(&str, u64)]) -> Subscriptions {
        let mut subscriptions = Subscriptions::default();
        for (group, window_ms) in full {
            subscriptions.full.insert(id(group), Duration::from_millis(*window_ms));
        }
        subscriptions.rescope();
        subscriptions
    }

    /// The (user, version) of each PRESENCE_UPDATE frame.
    fn read(frames: &[Bytes]) -> Vec<(String, u64)> {
        frames
            .iter()
            .map(|frame| {
                let value = rmpv::decode::read_value(&mut &frame[..]).unwrap();
                (value[5]["userId"].as_str().unwrap().to_owned(), value[5]["version"].as_u64().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_window_keeps_each_users_latest_change_and_sends_them_in_order() {
        let hub = Hub::new(16);
        let now = Instant::now();
        let mut subscriptions = watching(&[("g1", 100)]);
        let changes = [
            change(1, "a", &["g1"], Status::Online, 1),
            change(2, "b", &["g1"], Status::Online, 1),
            change(3, "x", &["g2"], Status::Online, 1),
            change(4, "a", &["g1"], Status::Away, 2),
            change(5, "a", &["g1"], Status::Dnd, 3),
        ];
        for (seq, event) in (1..).zip(changes) {
            assert!(subscriptions.take(event, seq, now).is_none(), "held for the window");
        }
        assert_eq!(subscriptions.due(), Some(now + Duration::from_millis(100)));
        assert!(subscriptions.take_due(&hub, now).is_empty(), "not before the window ends");
        let sent = subscriptions.take_due(&hub, now + Duration::from_millis(100));
        assert_eq!(read(&sent), [("b".into(), 1), ("a".into(), 3)], "a's latest only, x outside the groups");
        assert_eq!(subscriptions.due(), None, "nothing left");
    }

    #[test]
    fn a_zero_window_sends_at_once_and_too_many_pending_go_out_early() {
        let now = Instant::now();
        let mut at_once = watching(&[("g1", 0)]);
        assert!(at_once.take(change(1, "a", &["g1"], Status::Online, 1), 1, now).is_some());
        let hub = Hub::new(16);
        let mut subscriptions = watching(&[("g1", 60_000)]);
        for n in 0..PENDING_MAX as u64 {
            subscriptions.take(change(n + 1, &format!("u{n}"), &["g1"], Status::Online, 1), n + 1, now);
        }
        assert_eq!(subscriptions.due(), Some(now), "full: due at once");
        assert_eq!(subscriptions.take_due(&hub, now).len(), PENDING_MAX);
    }

    #[test]
    fn a_stale_frame_goes_out_at_once_after_the_changes_before_it() {
        let hub = Hub::new(16);
        let now = Instant::now();
        let mut subscriptions = watching(&[("g1", 1000)]);
        let stale = Bytes::from_static(b"stale");
        assert_eq!(subscriptions.urgent(stale.clone(), 0, now), Some(stale.clone()), "nothing waits: at once");
        subscriptions.take(change(1, "a", &["g1"], Status::Online, 1), 1, now);
        assert!(subscriptions.urgent(stale.clone(), 1, now).is_none());
        assert_eq!(subscriptions.due(), Some(now));
        let sent = subscriptions.take_due(&hub, now);
        assert_eq!(sent.len(), 2);
        assert_eq!(read(&sent[..1]), [("a".into(), 1)]);
        assert_eq!(sent[1], stale, "after the change it follows");
    }

    #[test]
    fn counts_go_out_at_most_once_per_interval_and_the_last_change_is_always_sent() {
        let hub = Hub::new(16);
        let group = id("g1");
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut subscriptions = Subscriptions::default();
        let mut counter = Counter { interval, sent_at: None, sent: None, due: None };
        assert!(counter.send_if_changed(&hub, &group, start).is_some(), "the first counts at once");
        subscriptions.counts.insert(group.clone(), counter);
        // The hub applies a change, and the dashboard takes it.
        let apply = |n: u64| {
            let event = change(n, "a", &["g1"], Status::Online, n);
            let HubEvent::Update { update, .. } = &event else { unreachable!() };
            hub.apply((**update).clone());
            event
        };
        subscriptions.take(apply(1), 1, start + Duration::from_millis(10));
        assert_eq!(subscriptions.due(), Some(start + interval), "not before the interval since the last");
        subscriptions.take(apply(2), 2, start + Duration::from_millis(50));
        assert_eq!(subscriptions.due(), Some(start + interval), "one look for both");
        assert_eq!(subscriptions.take_due(&hub, start + interval).len(), 1);
        assert!(subscriptions.take_due(&hub, start + interval * 2).is_empty(), "no change: nothing");
        // Counts that went back to what was last sent are not sent again.
        subscriptions.take(change(3, "b", &["g1"], Status::Online, 1), 3, start + interval * 3);
        assert!(subscriptions.take_due(&hub, start + interval * 3).is_empty());
    }
}
