//! The router's local view of cluster presence, and the fan-out to its dashboards.
//!
//! Every transition the broker delivers comes here (through [`crate::fanout`]). The hub keeps the newest version it has
//! seen per user and drops anything older (updates cross routers out of order), numbers each accepted change with a
//! sequence number, encodes its frame once, and puts it on a bounded broadcast ring that
//! every dashboard reads. The ring's size bounds memory however slow a dashboard is: a
//! dashboard that falls a full ring behind is closed as a slow consumer.
//!
//! Snapshots are read from this view, not from the store: a dashboard subscribes and
//! takes its snapshot under one lock, so no change falls between the two, and a 100k-user
//! snapshot costs no store round trip. Encoded snapshot frames (~10 MB for 100k users) are
//! the router's largest allocations, so they are shared and budgeted:
//! - **one encoding per scope**: frames are cached per scope (the sorted groups a token
//!   reads, or everyone), for up to [`CACHED_SCOPES`] scopes, least recently used out. A
//!   cache entry is made under the view lock, before encoding (which happens outside it),
//!   so dashboards arriving meanwhile wait for that one encoding instead of each making
//!   their own;
//! - **recent is good enough**: under churn a cached frame (of [`STALE_MIN_BYTES`] or
//!   more) up to [`STALE_FOR`] and [`BACKLOG`] changes old is served with the changes
//!   since, which the view keeps, so a storm of dashboards shares a few frames instead of
//!   one per sequence number. Nothing is lost: the changes are taken under the same lock
//!   as the subscription;
//! - **a budget** (`--snapshot-memory-mb`): every snapshot frame in memory is charged
//!   once however many dashboards share it, from its encoding until its last reference
//!   (the cache, a dashboard writing it, a socket's queue) is dropped. Encoding one needs
//!   room for its size's bound first; a dashboard without room waits, holding nothing of
//!   its snapshot (not even the users to encode), until room is made (idle cached frames
//!   are evicted first) or a frame of its scope exists to share; at its deadline it gives
//!   up and is closed as a slow consumer. A single frame larger than the whole budget is
//!   encoded when no other is in memory.
//!
//! The view holds the live indicators (typing, recording, talking) beside the users, kept
//! from the INDICATOR_UPDATEs this router delivers: each start and end that changes them
//! is a numbered change on the same ring, so a snapshot lists the indicators as of its
//! sequence number and every later start or end follows it, whether the frame is fresh or
//! a cached one served with its backlog.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{Notify, OnceCell, broadcast},
    time::Instant,
};

use crate::{
    id::Id,
    metrics,
    presence::{Groups, PresenceUpdate, Snapshot, Status, UserPresence, unix_ms, visible},
    protocol::{
        self,
        live::{IndicatorChange, SnapshotContents},
        payload::IndicatorKind,
    },
    scope::Scope,
};

mod group_counts;
mod indicators;
mod position;
mod resume;
mod staleness;

use group_counts::Tally;
pub use group_counts::{GroupPart, MemberCounts};
use indicators::Indicators;
use position::ViewPosition;
pub use resume::Resumption;
pub use staleness::{Stale, StaleReason};

/// Most scopes whose snapshot frame is kept; the least recently used goes first.
pub const CACHED_SCOPES: usize = 32;
/// Changes the view keeps so that a cached snapshot up to this many changes old can be
/// served with them instead of encoding a new one.
pub const BACKLOG: usize = 512;
/// How old a cached snapshot of an earlier sequence number may be and still be served.
pub const STALE_FOR: Duration = Duration::from_secs(1);
/// Smaller snapshots are always encoded anew rather than served with a backlog: that costs
/// less than a millisecond, and the snapshot alone shows the view as it is.
pub const STALE_MIN_BYTES: usize = 64 << 10;
/// Default snapshot memory budget (`--snapshot-memory-mb`): 25 distinct 10 MB snapshots.
pub const DEFAULT_SNAPSHOT_MEMORY: usize = 256 << 20;

/// What dashboards receive from the hub.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// One accepted change, already encoded as a PRESENCE_UPDATE frame (as a dashboard
    /// that sees everyone is shown it), with the change itself and the groups the user
    /// was in before it: a scoped dashboard is shown the change if the user is within its
    /// scope after it, and the user leaving if it was only before (see [`Scope::view_of`]);
    /// and the view's position once it includes the change (the frame holds it too).
    Update { seq: u64, frame: Bytes, update: Arc<PresenceUpdate>, before: Groups, position: Option<Arc<str>> },
    /// An indicator started or ended: the INDICATOR_UPDATE frame as delivered, for the
    /// dashboards whose scope covers its group; `local` when this router's own connection
    /// (or sweep) announced it.
    Indicator { seq: u64, frame: Bytes, change: Arc<IndicatorChange>, local: bool },
    /// The view was rebuilt from the store; every dashboard needs a fresh snapshot.
    Resync,
    /// The view stopped being fed: the STALE frame, for every dashboard.
    Stale(Bytes),
    /// The view is fed again and dashboards were sent it: the FRESH frame, for every
    /// dashboard.
    Fresh(Bytes),
}

pub struct Hub {
    view: Mutex<View>,
    events: broadcast::Sender<HubEvent>,
    resync: Notify,
    snapshots: Arc<Snapshots>,
}

#[derive(Default)]
struct View {
    /// Every user seen, offline ones included so a late stale "online" is recognised.
    users: HashMap<Id, UserPresence>,
    online: usize,
    /// The live indicators.
    indicators: Indicators,
    /// Each group's members by status.
    tally: Tally,
    seq: u64,
    /// The last [`BACKLOG`] changes (sequence number, event) since the last reset: what
    /// brings a cached snapshot up to date.
    history: VecDeque<(u64, HubEvent)>,
    /// Where the view stands in the store's change log.
    position: ViewPosition,
    /// The stale spell under way ([`staleness`]).
    stale: Option<Stale>,
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

    /// What a snapshot of `scope` (whose key is `key`) holds now.
    fn contents(&self, scope: &Scope, key: &ScopeKey) -> SnapshotContents {
        SnapshotContents::new(self.online_users(scope), self.indicators.in_scope(scope), key.groups())
    }

    /// Numbers `event` (made with the next sequence number), keeps it in the history and
    /// puts it on the ring.
    fn record(&mut self, events: &broadcast::Sender<HubEvent>, event: impl FnOnce(u64) -> HubEvent) {
        self.seq += 1;
        let event = event(self.seq);
        if self.history.len() == BACKLOG {
            self.history.pop_front();
        }
        self.history.push_back((self.seq, event.clone()));
        // No receiver is fine: nobody is watching.
        let _ = events.send(event);
    }

    /// The oldest sequence number a snapshot may have and still be brought up to date:
    /// every change after it is in the history.
    fn covered_from(&self) -> u64 {
        self.history.front().map_or(self.seq, |(seq, _)| seq - 1)
    }

    /// Whether a snapshot taken in `cell` may be served now, with the changes since (only
    /// a large one: `stale_min` bytes or more).
    fn serves(&self, cell: &Cell, now: Instant, stale_min: usize) -> bool {
        cell.seq == self.seq
            || (cell.seq >= self.covered_from()
                && cell.len_bound >= stale_min
                && !matches!(cell.key, ScopeKey::GroupsAndSelf(..))
                && now.saturating_duration_since(cell.taken_at) <= STALE_FOR)
    }

    /// The changes after `seq`.
    fn backlog(&self, seq: u64) -> Vec<HubEvent> {
        let from = self.history.partition_point(|(s, _)| *s <= seq);
        self.history.range(from..).map(|(_, event)| event.clone()).collect()
    }
}

/// Which snapshot a scope reads: equal keys, equal snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ScopeKey {
    Everyone,
    /// The groups read, sorted and without duplicates.
    Groups(Box<[Id]>),
    /// The groups, and the token's own user, online outside them (a token always reads
    /// itself). Only served at the sequence number it was taken at: changes of the user
    /// outside the groups are not in what the dashboard is sent afterwards.
    GroupsAndSelf(Box<[Id]>, Id),
}

impl ScopeKey {
    /// The groups the scope reads; `None`: everyone's.
    fn groups(&self) -> Option<&[Id]> {
        match self {
            ScopeKey::Everyone => None,
            ScopeKey::Groups(groups) | ScopeKey::GroupsAndSelf(groups, _) => Some(groups),
        }
    }

    fn of(scope: &Scope, view: &View) -> ScopeKey {
        let Some(allowed) = scope.allowed() else { return ScopeKey::Everyone };
        let mut groups = allowed.to_vec();
        groups.sort();
        groups.dedup();
        let groups = groups.into_boxed_slice();
        match scope.user().and_then(|user| view.users.get(user)) {
            Some(me) if me.status != Status::Offline && !visible(&me.groups, Some(allowed)) => {
                ScopeKey::GroupsAndSelf(groups, me.user_id.clone())
            }
            _ => ScopeKey::Groups(groups),
        }
    }
}

/// One snapshot of one scope: its contents as they were at `seq`, until encoded once.
struct Cell {
    key: ScopeKey,
    seq: u64,
    /// The view's position at `seq` and the scope's name, when the position is known.
    mark: Option<protocol::ViewMark>,
    taken_at: Instant,
    /// At least the frame's length ([`protocol::snapshot_len_bound`]).
    len_bound: usize,
    /// A dashboard reserved room for the frame and encodes it (the encoding runs without
    /// yielding, so it cannot be abandoned half way).
    reserved: AtomicBool,
    contents: Mutex<Option<SnapshotContents>>,
    frame: OnceCell<Bytes>,
}

/// A dashboard's snapshot to be: the (possibly shared, possibly not yet encoded) frame,
/// the changes after it, and the sequence number they bring the dashboard to.
pub struct SnapshotSource {
    cell: Arc<Cell>,
    backlog: Vec<HubEvent>,
    seq: u64,
}

impl SnapshotSource {
    /// The sequence number the snapshot and its backlog bring a dashboard to.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A dashboard's start: its snapshot, and the stream of the changes after it.
pub struct Subscription {
    pub snapshot: SnapshotSource,
    pub events: broadcast::Receiver<HubEvent>,
    /// The STALE frame to send right after the snapshot when the view is stale (later
    /// STALE and FRESH frames come on `events`).
    pub stale: Option<Bytes>,
}

/// A dashboard's snapshot frame, with the changes after it. While this is held the frame
/// is in use: the cache may not drop it to make room (its bytes count against the budget
/// for as long as anything references them). Release it once the frame is written.
pub struct HeldSnapshot {
    permit: Permit,
    /// The sequence number the frame holds.
    pub frame_seq: u64,
    /// The changes after the frame, to be sent right after it (already encoded, as the
    /// ring holds them).
    pub backlog: Vec<HubEvent>,
    /// The sequence number the frame and the backlog bring the dashboard to.
    pub seq: u64,
}

impl HeldSnapshot {
    pub fn frame(&self) -> Bytes {
        self.permit.frame.clone()
    }

    /// Lets go of the frame (written, or given up on); returns the backlog and the
    /// sequence number it brings the dashboard to.
    pub fn release(self) -> (Vec<HubEvent>, u64) {
        (self.backlog, self.seq)
    }
}

impl Hub {
    /// `capacity` is how many changes a dashboard may fall behind before it is dropped.
    pub fn new(capacity: usize) -> Self {
        Hub::with_snapshot_memory(capacity, DEFAULT_SNAPSHOT_MEMORY)
    }

    /// [`Hub::new`], with at most `snapshot_memory` bytes of snapshot frames held at once
    /// (a single frame larger than that is still sent when nothing else is held).
    pub fn with_snapshot_memory(capacity: usize, snapshot_memory: usize) -> Self {
        Hub {
            view: Mutex::new(View::default()),
            events: broadcast::channel(capacity.max(1)).0,
            resync: Notify::new(),
            snapshots: Arc::new(Snapshots::new(snapshot_memory)),
        }
    }

    /// A hub that serves cached snapshots of any size with a backlog (tests use small
    /// views).
    #[cfg(test)]
    fn with_stale_min(capacity: usize, snapshot_memory: usize, stale_min: usize) -> Self {
        let hub = Hub::with_snapshot_memory(capacity, snapshot_memory);
        Hub { snapshots: Arc::new(Snapshots { stale_min, ..Snapshots::new(snapshot_memory) }), ..hub }
    }

    /// No code under the lock can panic; recover the guard rather than propagate one.
    fn view(&self) -> MutexGuard<'_, View> {
        lock(&self.view)
    }

    /// Applies one transition; returns false (and changes nothing) when it is stale.
    pub fn apply(&self, update: PresenceUpdate) -> bool {
        let mut view = self.view();
        if let Some(seq) = update.seq {
            view.position.saw(update.shard, seq);
        }
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
        let replaced = view.users.insert(new.user_id.clone(), update.presence.clone());
        view.tally.replace(replaced.as_ref(), &update.presence);
        ::metrics::gauge!(metrics::ONLINE_USERS).set(view.online as f64);
        let position = view.position.token();
        view.record(&self.events, |seq| {
            let frame = protocol::update_frame(&update, seq, position.as_deref());
            HubEvent::Update { seq, frame, update: Arc::new(update), before, position }
        });
        true
    }

    /// Applies an indicator's start or end, `frame` being the INDICATOR_UPDATE that
    /// announced it (`local`: from this router's own connections or sweep); returns false
    /// (and changes nothing) when it changes nothing: the start of a live one, the end of
    /// one not live.
    pub fn indicator(&self, change: IndicatorChange, frame: Bytes, local: bool) -> bool {
        let mut view = self.view();
        if !view.indicators.apply(&change, local) {
            return false;
        }
        view.record(&self.events, |seq| HubEvent::Indicator { seq, frame, change: Arc::new(change), local });
        true
    }

    /// The sequence number of the latest change: a rebuild ([`Hub::reset`]) re-applies
    /// the indicator changes after the mark taken before the store was read.
    pub fn mark(&self) -> u64 {
        self.view().seq
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

    /// A fresh snapshot for a dashboard with `scope` (after a resync, or a new scope): a
    /// frame of this scope taken now or, cached, a moment ago, with the changes since.
    pub fn snapshot_source(&self, scope: &Scope) -> SnapshotSource {
        let view = self.view();
        let (source, evicted) = self.snapshots.source(&view, scope);
        drop(view);
        drop(evicted);
        source
    }

    /// A snapshot and the stream of every change after it, with nothing lost between.
    pub fn subscribe(&self, scope: &Scope) -> Subscription {
        let view = self.view();
        let events = self.events.subscribe();
        let (snapshot, evicted) = self.snapshots.source(&view, scope);
        let stale = view.stale.as_ref().map(Stale::frame);
        drop(view);
        drop(evicted);
        Subscription { snapshot, events, stale }
    }

    /// The snapshot frame of `source`, charged to the snapshot budget. A frame that exists
    /// already is shared at no cost. One still to be encoded (here, outside the view lock,
    /// unless another dashboard is at it) needs room for its size's bound first; when there
    /// is none, this waits, holding nothing of it, until a frame of its scope exists or
    /// room is made, and then takes a fresh source for `scope`; `None` when neither
    /// happens by `deadline`.
    pub async fn snapshot_frame(
        &self,
        source: SnapshotSource,
        scope: &Scope,
        deadline: Instant,
    ) -> Option<HeldSnapshot> {
        let mut source = source;
        let mut waited = false;
        loop {
            let reservation = match source.cell.frame.get() {
                Some(frame) => {
                    let permit = self.snapshots.hold(&source.cell, frame, None);
                    return Some(self.admitted(permit, source, waited));
                }
                // Another dashboard has room for it and is encoding it: share that.
                None if source.cell.reserved.load(Ordering::Acquire) => {
                    let frame = self.frame(&source.cell).await;
                    let permit = self.snapshots.hold(&source.cell, &frame, None);
                    return Some(self.admitted(permit, source, waited));
                }
                None => self.snapshots.try_reserve(source.cell.len_bound),
            };
            if let Some(reservation) = reservation {
                return Some(self.encode_held(reservation, source, waited).await);
            }
            let (key, need) = (source.cell.key.clone(), source.cell.len_bound);
            // Nobody has room to encode it: the users it holds are not kept meanwhile.
            let forgotten = self.snapshots.forget(&source.cell);
            drop(source);
            drop(forgotten);
            waited = true;
            match self.snapshots.wait(&key, need, deadline).await {
                None => {
                    ::metrics::counter!(metrics::SNAPSHOT_WAITS, "result" => "timed_out").increment(1);
                    return None;
                }
                Some(Room::Shared) => source = self.snapshot_source(scope),
                Some(Room::Reserved(reservation)) => {
                    return Some(self.encode_held(reservation, self.snapshot_source(scope), waited).await);
                }
            }
        }
    }

    /// `source`'s frame (encoded unless it exists), held in place of `reservation`.
    async fn encode_held(&self, reservation: Reservation, source: SnapshotSource, waited: bool) -> HeldSnapshot {
        source.cell.reserved.store(true, Ordering::Release);
        let frame = self.frame(&source.cell).await;
        let permit = self.snapshots.hold(&source.cell, &frame, Some(reservation));
        self.admitted(permit, source, waited)
    }

    fn admitted(&self, permit: Permit, source: SnapshotSource, waited: bool) -> HeldSnapshot {
        if waited {
            ::metrics::counter!(metrics::SNAPSHOT_WAITS, "result" => "admitted").increment(1);
        }
        HeldSnapshot { permit, frame_seq: source.cell.seq, backlog: source.backlog, seq: source.seq }
    }

    /// The cell's frame: encoded by the first caller, awaited by the others. Its bytes
    /// are charged to the budget until the last reference to them is dropped.
    async fn frame(&self, cell: &Arc<Cell>) -> Bytes {
        let frame = cell.frame.get_or_init(|| async {
            // Taken out: the cell keeps no contents once its frame exists.
            let contents = lock(&cell.contents).take().unwrap_or_default();
            let bytes = protocol::encode_snapshot(&contents, cell.seq, cell.mark.as_ref());
            ::metrics::counter!(metrics::SNAPSHOT_ENCODES).increment(1);
            self.snapshots.encoded(cell, bytes)
        });
        frame.await.clone()
    }

    /// Drops cached snapshots that can no longer be served (too old, or of an earlier
    /// sequence number the history no longer covers); the node calls this periodically so
    /// that an idle router does not keep them.
    pub fn expire_snapshots(&self) {
        let view = self.view();
        let evicted = self.snapshots.expire(&view, Instant::now());
        drop(view);
        drop(evicted);
    }

    /// Bytes of snapshot frames charged to the budget now.
    #[cfg(test)]
    pub fn snapshot_memory(&self) -> usize {
        self.snapshots.lock().used
    }

    /// Rebuilds the view from the store's snapshot and its live indicators (start-up, and
    /// after the broker may have lost messages) and tells every dashboard to take a fresh
    /// snapshot. Returns how many users were kept online though the snapshot lacks them.
    ///
    /// Updates keep arriving while the snapshot is read, so nothing newer than it is
    /// undone: a user in the snapshot takes the higher version of the two; a user missing
    /// from it is offline unless the view holds a change decided at or after the
    /// snapshot's watermark, or `keep_unlisted` is set: then it keeps its state (after an
    /// outage the other routers may not have re-asserted their sessions yet; a later
    /// rebuild without it settles those users). Indicators have no versions: the store's are taken (this
    /// router's own kept, see [`Indicators::rebuild`]), then the starts and ends applied
    /// after `mark` ([`Hub::mark`], taken before the store was read) are applied again.
    pub fn reset(
        &self,
        snapshot: Snapshot,
        indicators: Vec<(Id, IndicatorKind, Id)>,
        mark: u64,
        keep_unlisted: bool,
    ) -> usize {
        let mut view = self.view();
        view.indicators.rebuild(indicators, unix_ms());
        let since_mark: Vec<(Arc<IndicatorChange>, bool)> = view
            .history
            .iter()
            .filter(|(seq, _)| *seq > mark)
            .filter_map(|(_, event)| match event {
                HubEvent::Indicator { change, local, .. } => Some((change.clone(), *local)),
                _ => None,
            })
            .collect();
        for (change, local) in since_mark {
            view.indicators.apply(&change, local);
        }
        let listed: HashSet<Id> = snapshot.users.iter().map(|u| u.user_id.clone()).collect();
        let mut kept = 0;
        for user in view.users.values_mut() {
            if user.status != Status::Offline && !listed.contains(&user.user_id) && user.version < snapshot.watermark {
                if keep_unlisted {
                    kept += 1;
                } else {
                    user.status = Status::Offline;
                }
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
        // A view that keeps users the store does not list is no point of the change log:
        // the rebuild that settles them writes nothing there. Until then its frames carry
        // no position, so nobody resumes from it.
        view.position.rebuilt(snapshot.position.as_ref().filter(|_| kept == 0));
        view.online = view.users.values().filter(|p| p.status != Status::Offline).count();
        view.tally = Tally::of(view.users.values());
        view.seq += 1;
        // No cached snapshot from before can be brought up to date: the rebuild is no
        // change on the ring.
        view.history.clear();
        ::metrics::gauge!(metrics::ONLINE_USERS).set(view.online as f64);
        let _ = self.events.send(HubEvent::Resync);
        kept
    }

    /// Asks the node to rebuild the view from the store: the broker asks for it (through
    /// [`crate::fanout`]) once its subscription is (re)established, since messages sent
    /// meanwhile are lost.
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
        let mut view = self.view();
        let View { users, tally, .. } = &mut *view;
        users.retain(|_, p| {
            let keep = p.status != Status::Offline || p.last_seen.is_some_and(|at| at >= cutoff_ms);
            if !keep {
                tally.remove(p);
            }
            keep
        });
    }

    pub fn online_count(&self) -> usize {
        self.view().online
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The snapshot cache and the budget of snapshot bytes.
struct Snapshots {
    /// The budget in bytes.
    limit: usize,
    /// [`STALE_MIN_BYTES`], but for tests.
    stale_min: usize,
    state: Mutex<Ledger>,
    /// Bytes were freed, a frame became evictable or shareable: waiting dashboards look
    /// again.
    released: Notify,
}

#[derive(Default)]
struct Ledger {
    cache: HashMap<ScopeKey, Cached>,
    /// Counts lookups, for least-recently-used eviction.
    tick: u64,
    /// Bytes charged: every snapshot frame in memory (from its encoding until its last
    /// reference, in the cache, a dashboard or a socket's queue, is dropped), plus room
    /// reserved by dashboards about to encode one.
    used: usize,
    /// The frames in memory, by the address of their bytes.
    frames: HashMap<usize, Charge>,
}

struct Cached {
    cell: Arc<Cell>,
    used_at: u64,
}

struct Charge {
    len: usize,
    /// Dashboards holding the frame to write it.
    holders: usize,
    /// The cache holds it too.
    cached: bool,
}

/// A snapshot frame's bytes, whose charge is released when they are freed.
struct Charged {
    bytes: Vec<u8>,
    /// Weak: cached frames would otherwise keep their hub alive.
    snapshots: std::sync::Weak<Snapshots>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        if let Some(snapshots) = self.snapshots.upgrade() {
            let mut ledger = snapshots.lock();
            if let Some(charge) = ledger.frames.remove(&(self.bytes.as_ptr() as usize)) {
                ledger.used -= charge.len;
                ledger.gauge();
            }
            drop(ledger);
            snapshots.released.notify_waiters();
        }
    }
}

/// A dashboard holding a snapshot frame until it is written; dropping it makes the frame
/// evictable from the cache (its bytes stay charged while anything references them).
struct Permit {
    snapshots: Arc<Snapshots>,
    frame: Bytes,
}

/// Room reserved for a frame about to be encoded.
struct Reservation {
    snapshots: Arc<Snapshots>,
    len: usize,
}

/// What a waiting dashboard found.
enum Room {
    /// A frame of its scope exists: sharing it costs nothing.
    Shared,
    /// Room for its frame.
    Reserved(Reservation),
}

/// What one look at the budget found.
enum Attempt {
    Shared,
    Reserved(Reservation),
    /// Idle cached frames were evicted: drop them (outside the lock) and look again.
    Evicted(Vec<Arc<Cell>>),
    Full,
}

fn address(frame: &Bytes) -> usize {
    frame.as_ptr() as usize
}

impl Snapshots {
    fn new(limit: usize) -> Self {
        Snapshots { limit, stale_min: STALE_MIN_BYTES, state: Mutex::new(Ledger::default()), released: Notify::new() }
    }

    /// The ledger. Nothing may drop a snapshot frame while holding it: the frame's
    /// [`Charged`] takes it to release its charge.
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.state)
    }

    /// The snapshot a dashboard with `scope` starts from, taken under the view lock; and
    /// cells evicted meanwhile, to be dropped after the lock is released.
    fn source(&self, view: &View, scope: &Scope) -> (SnapshotSource, Vec<Arc<Cell>>) {
        let now = Instant::now();
        let key = ScopeKey::of(scope, view);
        let mut ledger = self.lock();
        let mut evicted = ledger.expire(view, now, self.stale_min);
        ledger.tick += 1;
        let tick = ledger.tick;
        if let Some(cached) = ledger.cache.get_mut(&key) {
            cached.used_at = tick;
            let cell = cached.cell.clone();
            drop(ledger);
            let source = if cell.seq == view.seq { "shared" } else { "recent" };
            ::metrics::counter!(metrics::SNAPSHOTS, "source" => source).increment(1);
            let backlog = view.backlog(cell.seq);
            return (SnapshotSource { cell, backlog, seq: view.seq }, evicted);
        }
        drop(ledger);
        // Collected without the ledger's lock: dashboards finishing their writes need it.
        let contents = view.contents(scope, &key);
        let mark = view.position.token().map(|position| protocol::ViewMark {
            position: position.to_string(),
            view: crate::position::view_name(key.groups()),
        });
        let len_bound =
            protocol::snapshot_len_bound(&contents) + mark.as_ref().map_or(0, protocol::ViewMark::len_bound);
        let cell = Arc::new(Cell {
            key,
            seq: view.seq,
            mark,
            taken_at: now,
            len_bound,
            reserved: AtomicBool::new(false),
            contents: Mutex::new(Some(contents)),
            frame: OnceCell::new(),
        });
        self.lock().insert(cell.clone(), &mut evicted);
        ::metrics::counter!(metrics::SNAPSHOTS, "source" => "new").increment(1);
        (SnapshotSource { cell, backlog: Vec::new(), seq: view.seq }, evicted)
    }

    /// Charges a cell's freshly encoded `bytes` (the encoding dashboard reserved room for
    /// them) and returns them as the frame; the cache keeps it while the cell is cached.
    fn encoded(self: &Arc<Self>, cell: &Arc<Cell>, bytes: Vec<u8>) -> Bytes {
        let (id, len) = (bytes.as_ptr() as usize, bytes.len());
        let frame = Bytes::from_owner(Charged { bytes, snapshots: Arc::downgrade(self) });
        let mut ledger = self.lock();
        let cached = ledger.cache.get(&cell.key).is_some_and(|cached| Arc::ptr_eq(&cached.cell, cell));
        ledger.frames.insert(id, Charge { len, holders: 0, cached });
        ledger.used += len;
        ledger.gauge();
        frame
    }

    /// Holds a cell's `frame` (which exists, so is charged already) for a dashboard, in
    /// place of the room `reservation` kept for it; the cache takes the frame back if it
    /// has none as new of its scope, so that others may share it.
    fn hold(self: &Arc<Self>, cell: &Arc<Cell>, frame: &Bytes, reservation: Option<Reservation>) -> Permit {
        let mut evicted = Vec::new();
        let mut ledger = self.lock();
        if let Some(mut reservation) = reservation {
            ledger.used -= std::mem::take(&mut reservation.len);
        }
        if let Some(charge) = ledger.frames.get_mut(&address(frame)) {
            charge.holders += 1;
        }
        ledger.adopt(cell, frame, &mut evicted);
        ledger.gauge();
        drop(ledger);
        self.released.notify_waiters();
        drop(evicted);
        Permit { snapshots: self.clone(), frame: frame.clone() }
    }

    /// One look at the budget for `len` bytes (or a frame of `key`, which costs nothing).
    fn attempt(self: &Arc<Self>, key: Option<&ScopeKey>, len: usize) -> Attempt {
        let mut ledger = self.lock();
        if key.is_some_and(|key| ledger.cache.get(key).is_some_and(|cached| cached.cell.frame.get().is_some())) {
            return Attempt::Shared;
        }
        if ledger.used + len <= self.limit || ledger.used == 0 {
            ledger.used += len;
            ledger.gauge();
            return Attempt::Reserved(Reservation { snapshots: self.clone(), len });
        }
        let needed = ledger.used + len - self.limit;
        let evicted = ledger.evict_idle(needed);
        if evicted.is_empty() { Attempt::Full } else { Attempt::Evicted(evicted) }
    }

    /// Reserves `len` bytes if they fit now (once idle cached frames are evicted).
    fn try_reserve(self: &Arc<Self>, len: usize) -> Option<Reservation> {
        loop {
            match self.attempt(None, len) {
                Attempt::Reserved(reservation) => return Some(reservation),
                Attempt::Evicted(cells) => drop(cells),
                Attempt::Shared | Attempt::Full => return None,
            }
        }
    }

    /// Waits until a frame of `key` exists (sharing it costs nothing) or `len` bytes fit,
    /// and then reserves them; `None` if neither happens by `deadline`.
    async fn wait(self: &Arc<Self>, key: &ScopeKey, len: usize, deadline: Instant) -> Option<Room> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.attempt(Some(key), len) {
                Attempt::Shared => return Some(Room::Shared),
                Attempt::Reserved(reservation) => return Some(Room::Reserved(reservation)),
                Attempt::Evicted(cells) => drop(cells),
                Attempt::Full => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Takes `cell` out of the cache if it is there still to be encoded, with nobody at it.
    fn forget(&self, cell: &Arc<Cell>) -> Option<Arc<Cell>> {
        let mut ledger = self.lock();
        let cached = ledger.cache.get(&cell.key).is_some_and(|cached| Arc::ptr_eq(&cached.cell, cell));
        if !cached || cell.frame.get().is_some() || cell.reserved.load(Ordering::Acquire) {
            return None;
        }
        ledger.uncache(&cell.key)
    }

    /// Drops the cached cells that can no longer be served.
    fn expire(&self, view: &View, now: Instant) -> Vec<Arc<Cell>> {
        self.lock().expire(view, now, self.stale_min)
    }
}

impl Ledger {
    fn gauge(&self) {
        ::metrics::gauge!(metrics::SNAPSHOT_MEMORY).set(self.used as f64);
    }

    /// Removes `key` from the cache; returns the cell, to be dropped outside the lock
    /// (which frees its frame, unless a dashboard or a socket still references it).
    fn uncache(&mut self, key: &ScopeKey) -> Option<Arc<Cell>> {
        let cached = self.cache.remove(key)?;
        if let Some(charge) = cached.cell.frame.get().and_then(|frame| self.frames.get_mut(&address(frame))) {
            charge.cached = false;
        }
        Some(cached.cell)
    }

    /// Caches `cell`, evicting the least recently used scope when the cache is full.
    fn insert(&mut self, cell: Arc<Cell>, evicted: &mut Vec<Arc<Cell>>) {
        if !self.cache.contains_key(&cell.key)
            && self.cache.len() >= CACHED_SCOPES
            && let Some(oldest) = self.cache.iter().min_by_key(|(_, c)| c.used_at).map(|(k, _)| k.clone())
        {
            evicted.extend(self.uncache(&oldest));
        }
        evicted.extend(self.uncache(&cell.key));
        if let Some(charge) = cell.frame.get().and_then(|frame| self.frames.get_mut(&address(frame))) {
            charge.cached = true;
        }
        self.tick += 1;
        let used_at = self.tick;
        self.cache.insert(cell.key.clone(), Cached { cell, used_at });
    }

    /// Puts a frame a dashboard holds back in the cache, unless the cache has it or a
    /// newer one of its scope: it costs nothing more there, and others may share it.
    fn adopt(&mut self, cell: &Arc<Cell>, frame: &Bytes, evicted: &mut Vec<Arc<Cell>>) {
        if self.cache.get(&cell.key).is_none_or(|cached| cached.cell.seq < cell.seq)
            && self.frames.contains_key(&address(frame))
        {
            self.insert(cell.clone(), evicted);
        }
    }

    fn expire(&mut self, view: &View, now: Instant, stale_min: usize) -> Vec<Arc<Cell>> {
        let stale: Vec<ScopeKey> = self
            .cache
            .iter()
            .filter(|(_, cached)| !view.serves(&cached.cell, now, stale_min))
            .map(|(k, _)| k.clone())
            .collect();
        stale.iter().filter_map(|key| self.uncache(key)).collect()
    }

    /// Evicts cached frames no dashboard holds, least recently used first, until they add
    /// up to `needed` bytes (or there are no more).
    fn evict_idle(&mut self, needed: usize) -> Vec<Arc<Cell>> {
        let mut idle: Vec<(u64, ScopeKey, usize)> = self
            .cache
            .iter()
            .filter_map(|(key, cached)| {
                let charge = self.frames.get(&address(cached.cell.frame.get()?))?;
                (charge.holders == 0).then(|| (cached.used_at, key.clone(), charge.len))
            })
            .collect();
        idle.sort_unstable_by_key(|(used_at, ..)| *used_at);
        let mut freed = 0;
        let mut evicted = Vec::new();
        for (_, key, len) in idle {
            if freed >= needed {
                break;
            }
            evicted.extend(self.uncache(&key));
            freed += len;
        }
        evicted
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut ledger = self.snapshots.lock();
        let Some(charge) = ledger.frames.get_mut(&address(&self.frame)) else { return };
        charge.holders -= 1;
        let idle = charge.holders == 0;
        drop(ledger);
        if idle {
            // Evictable now.
            self.snapshots.released.notify_waiters();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.len > 0 {
            let mut ledger = self.snapshots.lock();
            ledger.used -= self.len;
            ledger.gauge();
            drop(ledger);
            self.snapshots.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Cause;

    pub(super) fn update(user: &str, status: Status, version: u64) -> PresenceUpdate {
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
                activity: None,
            },
            cause: Cause::Connect,
            timestamp: 1,
            seq: None,
            shard: 0,
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
        assert!(sub.snapshot.backlog.is_empty());
        assert_eq!(sub.snapshot.cell.seq, sub.snapshot.seq());
        hub.apply(update("b", Status::Online, 1));
        match sub.events.try_recv().unwrap() {
            HubEvent::Update { seq, .. } => assert_eq!(seq, sub.snapshot.seq() + 1),
            other => panic!("expected an update, got {other:?}"),
        }
        assert!(sub.events.try_recv().is_err());
    }

    #[test]
    fn reset_replaces_the_view_and_asks_for_resync() {
        let hub = Hub::new(16);
        hub.apply(update("gone", Status::Online, 1));
        let mut sub = hub.subscribe(&Scope::everyone());
        hub.reset(
            Snapshot { users: vec![update("new", Status::Online, 5).presence], watermark: 10, position: None },
            Vec::new(),
            0,
            false,
        );
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
        hub.reset(Snapshot { users: stale, watermark: 100, position: None }, Vec::new(), 0, false);
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

    fn member(user: &str, groups: &[&str], version: u64) -> PresenceUpdate {
        let mut update = update(user, Status::Online, version);
        update.presence.groups = Groups::from(groups.iter().map(|g| Id::parse(g).unwrap()).collect::<Vec<_>>());
        update
    }

    fn scope(user: &str, groups: Option<&[&str]>) -> Scope {
        Scope::of(&crate::auth::Claims {
            sub: Id::parse(user).unwrap(),
            role: crate::auth::Role::Dashboard,
            exp: Some(u64::MAX),
            iat: None,
            groups: groups.map(|g| g.iter().map(|s| Id::parse(s).unwrap()).collect()),
        })
    }

    /// Far enough never to be reached by a test that does not mean to.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    async fn held(hub: &Hub, scope: &Scope) -> HeldSnapshot {
        let source = hub.subscribe(scope).snapshot;
        hub.snapshot_frame(source, scope, later()).await.expect("room for the snapshot")
    }

    /// The users of a snapshot frame, and its sequence number.
    fn users_in(frame: &Bytes) -> (Vec<String>, u64) {
        let value = rmpv::decode::read_value(&mut &frame[..]).unwrap();
        let users = value[5]["users"].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap().to_string());
        let mut users: Vec<String> = users.collect();
        users.sort();
        (users, value[4].as_u64().unwrap())
    }

    /// Who is online after `snapshot` and its backlog, as a dashboard of `scope` shows it.
    fn view_after(snapshot: &HeldSnapshot, scope: &Scope) -> Vec<String> {
        let (users, _) = users_in(&snapshot.frame());
        let mut online: std::collections::BTreeSet<String> = users.into_iter().collect();
        for event in &snapshot.backlog {
            let HubEvent::Update { update, before, .. } = event else { panic!("only updates in a backlog") };
            let shown = match scope.view_of(update, before) {
                crate::scope::View::AsIs => update.presence.clone(),
                crate::scope::View::Changed(shown) => shown.presence,
                crate::scope::View::Hidden => continue,
            };
            if shown.status == Status::Offline {
                online.remove(shown.user_id.as_str());
            } else {
                online.insert(shown.user_id.as_str().to_string());
            }
        }
        online.into_iter().collect()
    }

    fn same(a: &Bytes, b: &Bytes) -> bool {
        a.as_ptr() == b.as_ptr()
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_snapshot_is_encoded_once() {
        let hub = Hub::new(16);
        hub.apply(update("a", Status::Online, 1));
        let first = held(&hub, &Scope::everyone()).await.frame();
        let second = held(&hub, &scope("d", None)).await.frame();
        assert!(same(&first, &second), "nothing changed: the frame is reused");
        tokio::time::advance(STALE_FOR * 10).await;
        assert!(same(&first, &held(&hub, &Scope::everyone()).await.frame()), "however long nothing changes");
        hub.apply(update("b", Status::Online, 1));
        let third = held(&hub, &Scope::everyone()).await;
        assert!(!same(&first, &third.frame()), "a change makes a new one: the old one is too old to serve");
        assert_eq!(users_in(&third.frame()).0, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dashboards_of_one_scope_share_a_frame_and_other_scopes_get_their_own() {
        let hub = Hub::new(16);
        hub.apply(member("in1", &["g1"], 1));
        hub.apply(member("in2", &["g2"], 1));
        hub.apply(member("out", &["g9"], 1));
        let a = held(&hub, &scope("a", Some(&["g1", "g2"]))).await;
        let b = held(&hub, &scope("b", Some(&["g2", "g1", "g1"]))).await;
        assert!(same(&a.frame(), &b.frame()), "the same groups in another order, another user: one frame");
        assert_eq!(users_in(&a.frame()).0, ["in1", "in2"]);
        let c = held(&hub, &scope("c", Some(&["g1"]))).await;
        assert!(!same(&a.frame(), &c.frame()));
        assert_eq!(users_in(&c.frame()).0, ["in1"]);
        let everyone = held(&hub, &scope("e", None)).await;
        assert_eq!(users_in(&everyone.frame()).0, ["in1", "in2", "out"]);
        let frames = [a.frame().len(), c.frame().len(), everyone.frame().len()];
        assert_eq!(hub.snapshot_memory(), frames.iter().sum::<usize>(), "each distinct frame counted once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_reads_itself_outside_its_groups_and_only_it_does() {
        let hub = Hub::with_stale_min(16, DEFAULT_SNAPSHOT_MEMORY, 0);
        hub.apply(member("in", &["g1"], 1));
        hub.apply(member("me", &["g9"], 1));
        let mine = held(&hub, &scope("me", Some(&["g1"]))).await;
        assert_eq!(users_in(&mine.frame()).0, ["in", "me"]);
        let other = held(&hub, &scope("other", Some(&["g1"]))).await;
        assert_eq!(users_in(&other.frame()).0, ["in"], "not shared with the token that reads itself");
        // Once "me" is in the scope's groups, or offline, its snapshot is the scope's.
        hub.apply(member("me", &["g1"], 2));
        let me = scope("me", Some(&["g1"]));
        let mine = held(&hub, &me).await;
        let other = held(&hub, &scope("other", Some(&["g1"]))).await;
        assert!(same(&mine.frame(), &other.frame()));
        assert_eq!(users_in(&mine.frame()).0, ["in"], "the scope's frame of a moment ago ...");
        assert_eq!(view_after(&mine, &me), ["in", "me"], "... and the change since");
    }

    #[tokio::test(start_paused = true)]
    async fn dashboards_arriving_before_the_encoding_wait_for_it() {
        let hub = Hub::new(16);
        hub.apply(update("a", Status::Online, 1));
        // Both subscribe before either encodes: the second finds the first's cell.
        let first = hub.subscribe(&Scope::everyone()).snapshot;
        let second = hub.subscribe(&Scope::everyone()).snapshot;
        assert!(Arc::ptr_eq(&first.cell, &second.cell));
        assert!(first.cell.frame.get().is_none(), "nothing encoded yet");
        let everyone = Scope::everyone();
        let (a, b) =
            tokio::join!(hub.snapshot_frame(first, &everyone, later()), hub.snapshot_frame(second, &everyone, later()));
        assert!(same(&a.unwrap().frame(), &b.unwrap().frame()), "one encoding");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_snapshot_is_served_with_the_changes_since() {
        let hub = Hub::with_stale_min(16, DEFAULT_SNAPSHOT_MEMORY, 0);
        let scoped = scope("d", Some(&["g1"]));
        hub.apply(member("a", &["g1"], 1));
        hub.apply(member("b", &["g1"], 1));
        let first = held(&hub, &scoped).await;
        let frame_seq = first.frame_seq;
        drop(first);
        tokio::time::advance(STALE_FOR / 2).await;
        hub.apply(update("a", Status::Offline, 2)); // leaves
        hub.apply(member("c", &["g1"], 1)); // arrives
        hub.apply(member("b", &["g2"], 2)); // leaves the scope: shown offline
        hub.apply(member("x", &["g2"], 1)); // out of scope throughout
        let mut sub = hub.subscribe(&scoped);
        let seq = sub.snapshot.seq();
        let later_ = hub.snapshot_frame(sub.snapshot, &scoped, later()).await.unwrap();
        assert_eq!(later_.frame_seq, frame_seq, "the cached frame");
        assert_eq!(later_.seq, seq);
        let backlog: Vec<u64> =
            later_.backlog.iter().map(|e| if let HubEvent::Update { seq, .. } = e { *seq } else { 0 }).collect();
        assert_eq!(backlog, ((frame_seq + 1)..=seq).collect::<Vec<_>>(), "every change since, in order");
        assert_eq!(view_after(&later_, &scoped), ["c"], "the same view as a fresh snapshot");
        let (fresh, _) = hub.snapshot();
        let fresh: Vec<&str> =
            fresh.iter().filter(|p| scoped.sees(&p.user_id, &p.groups)).map(|p| p.user_id.as_str()).collect();
        assert_eq!(fresh, ["c"]);
        assert!(sub.events.try_recv().is_err(), "the ring holds nothing from before the snapshot's sequence number");
        hub.apply(member("d", &["g1"], 1));
        assert!(matches!(sub.events.try_recv(), Ok(HubEvent::Update { seq: next, .. }) if next == seq + 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_snapshot_of_an_older_view_is_served_only_for_a_while() {
        let hub = Hub::with_stale_min(16, DEFAULT_SNAPSHOT_MEMORY, 0);
        let everyone = Scope::everyone();
        hub.apply(update("a", Status::Online, 1));
        let first = held(&hub, &everyone).await.frame();
        hub.apply(update("b", Status::Online, 1));
        assert!(same(&first, &held(&hub, &everyone).await.frame()), "a moment old: served");
        tokio::time::advance(STALE_FOR + Duration::from_millis(1)).await;
        let second = held(&hub, &everyone).await.frame();
        assert!(!same(&first, &second), "too old: encoded anew");
        // More changes than the history keeps.
        for v in 1..=BACKLOG as u64 + 1 {
            hub.apply(update("c", if v % 2 == 1 { Status::Online } else { Status::Offline }, v));
        }
        assert!(!same(&second, &held(&hub, &everyone).await.frame()), "too many changes behind");
        // A resync: the rebuilt view is no change on the ring, so nothing before it serves.
        let third = held(&hub, &everyone).await.frame();
        hub.reset(
            Snapshot { users: vec![update("z", Status::Online, 1).presence], watermark: 0, position: None },
            Vec::new(),
            0,
            false,
        );
        let rebuilt = held(&hub, &everyone).await;
        assert!(!same(&third, &rebuilt.frame()));
        assert!(rebuilt.backlog.is_empty());
        assert!(users_in(&rebuilt.frame()).0.contains(&"z".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_keeps_a_bounded_number_of_scopes() {
        let hub = Hub::new(16);
        hub.apply(member("a", &["g0"], 1));
        let scopes: Vec<Scope> = (0..=CACHED_SCOPES).map(|i| scope("d", Some(&[&format!("g{i}")]))).collect();
        let first = held(&hub, &scopes[0]).await.frame();
        for scope in &scopes[1..] {
            drop(held(&hub, scope).await);
        }
        assert_eq!(hub.snapshots.lock().cache.len(), CACHED_SCOPES);
        assert!(!same(&first, &held(&hub, &scopes[0]).await.frame()), "the least recently used went first");
    }

    #[tokio::test(start_paused = true)]
    async fn small_snapshots_are_always_encoded_anew() {
        let hub = Hub::new(16);
        hub.apply(update("a", Status::Online, 1));
        let first = held(&hub, &Scope::everyone()).await.frame();
        hub.apply(update("b", Status::Online, 1));
        let second = held(&hub, &Scope::everyone()).await;
        assert!(!same(&first, &second.frame()) && second.backlog.is_empty());
        assert_eq!(users_in(&second.frame()).0, ["a", "b"], "the frame alone is the view");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_snapshots_release_their_memory() {
        let hub = Hub::with_stale_min(16, DEFAULT_SNAPSHOT_MEMORY, 0);
        hub.apply(update("a", Status::Online, 1));
        drop(held(&hub, &Scope::everyone()).await);
        assert!(hub.snapshot_memory() > 0, "cached while it may be served");
        hub.expire_snapshots();
        assert!(hub.snapshot_memory() > 0, "nothing changed: still served");
        hub.apply(update("b", Status::Online, 1));
        tokio::time::advance(STALE_FOR * 2).await;
        hub.expire_snapshots();
        assert_eq!(hub.snapshot_memory(), 0);
    }

    /// A hub whose snapshot budget is one byte: one frame at a time, however large.
    fn tight_hub() -> Hub {
        let hub = Hub::with_snapshot_memory(16, 1);
        hub.apply(member("a", &["g1"], 1));
        hub.apply(member("b", &["g2"], 1));
        hub
    }

    #[tokio::test(start_paused = true)]
    async fn shared_frames_count_once_and_others_wait_for_room() {
        let hub = Arc::new(tight_hub());
        let (g1, g2) = (scope("d", Some(&["g1"])), scope("d", Some(&["g2"])));
        let first = held(&hub, &g1).await;
        let second = held(&hub, &g1).await;
        assert!(same(&first.frame(), &second.frame()), "shared, so it fits though the budget is full");
        assert_eq!(hub.snapshot_memory(), first.frame().len());
        let waiting = tokio::spawn({
            let hub = hub.clone();
            async move {
                let g2 = scope("d", Some(&["g2"]));
                let source = hub.subscribe(&g2).snapshot;
                hub.snapshot_frame(source, &g2, later())
                    .await
                    .map(|held| (users_in(&held.frame()).0, held.frame().len()))
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "another scope's frame does not fit while the first is held");
        assert_eq!(hub.snapshot_memory(), first.frame().len(), "the waiting dashboard holds nothing");
        drop(first);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "one holder is enough to keep it");
        drop(second);
        let (users, len) = waiting.await.unwrap().expect("admitted once the first was written");
        assert_eq!(users, ["b"]);
        // The idle cached g1 frame was evicted to make room; the g2 frame is cached now.
        assert_eq!(hub.snapshot_memory(), len);
        let next = held(&hub, &g2).await;
        assert_eq!((users_in(&next.frame()).0, next.frame().len()), (vec!["b".to_string()], len));
        assert_eq!(hub.snapshot_memory(), len, "shared from the cache");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_that_never_fits_gives_up_at_the_deadline() {
        let hub = tight_hub();
        let (g1, g2) = (scope("d", Some(&["g1"])), scope("d", Some(&["g2"])));
        let first = held(&hub, &g1).await;
        let source = hub.subscribe(&g2).snapshot;
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(hub.snapshot_frame(source, &g2, deadline).await.is_none());
        assert_eq!(Instant::now(), deadline, "waited until the deadline");
        assert_eq!(hub.snapshot_memory(), first.frame().len(), "nothing left reserved");
        // Another dashboard of the held scope still shares it.
        assert!(same(&first.frame(), &held(&hub, &g1).await.frame()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dashboard_waiting_for_room_leaves_no_users_behind() {
        let hub = tight_hub();
        let first = held(&hub, &scope("d", Some(&["g1"]))).await;
        let g2 = scope("d", Some(&["g2"]));
        let source = hub.subscribe(&g2).snapshot;
        let cell = Arc::downgrade(&source.cell);
        let waiting = hub.snapshot_frame(source, &g2, Instant::now() + Duration::from_secs(1));
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(500), waiting.as_mut()).await.is_err(), "waiting");
        assert!(cell.upgrade().is_none(), "its cell, and the users in it, were dropped while it waits");
        assert!(waiting.await.is_none());
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_dashboards_of_one_scope_share_the_frame_they_waited_for() {
        let hub = Arc::new(tight_hub());
        let first = held(&hub, &scope("d", Some(&["g1"]))).await;
        let waiting: Vec<_> = (0..5)
            .map(|i| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let g2 = scope(&format!("w{i}"), Some(&["g2"]));
                    let source = hub.subscribe(&g2).snapshot;
                    hub.snapshot_frame(source, &g2, later()).await.expect("admitted")
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        let mut frames = Vec::new();
        for task in waiting {
            frames.push(task.await.unwrap());
        }
        assert!(frames.iter().all(|f| same(&f.frame(), &frames[0].frame())), "one frame for the five");
        assert_eq!(hub.snapshot_memory(), frames[0].frame().len());
    }

    /// `user`'s `kind` in `group` starts (or ends), as announced: the change and its frame.
    fn signal(hub: &Hub, group: &str, user: &str, kind: IndicatorKind, active: bool, local: bool) -> bool {
        let (group, user) = (Id::parse(group).unwrap(), Id::parse(user).unwrap());
        let frame = protocol::indicator_frame(&group, &user, kind, active);
        hub.indicator(IndicatorChange::read(&frame).unwrap(), frame, local)
    }

    /// The indicators a snapshot frame lists, as `group/user/type`.
    fn indicators_in(frame: &Bytes) -> Vec<String> {
        let value = rmpv::decode::read_value(&mut &frame[..]).unwrap();
        let listed = value[5]["indicators"].as_array().unwrap().iter();
        listed
            .map(|i| {
                format!(
                    "{}/{}/{}",
                    i["groupId"].as_str().unwrap(),
                    i["userId"].as_str().unwrap(),
                    i["type"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_lists_the_live_indicators_of_its_scope_and_later_changes_follow() {
        let hub = Hub::new(16);
        hub.apply(member("t", &["g1"], 1));
        assert!(signal(&hub, "g1", "t", IndicatorKind::Talking, true, true));
        assert!(!signal(&hub, "g1", "t", IndicatorKind::Talking, true, true), "live already: no change");
        assert!(signal(&hub, "g2", "u", IndicatorKind::Typing, true, false));
        let g1 = scope("d", Some(&["g1"]));
        let mut sub = hub.subscribe(&g1);
        let seq = sub.snapshot.seq();
        let snapshot = hub.snapshot_frame(sub.snapshot, &g1, later()).await.unwrap();
        assert_eq!(indicators_in(&snapshot.frame()), ["g1/t/talking"], "only its groups'");
        assert_eq!(indicators_in(&held(&hub, &Scope::everyone()).await.frame()), ["g1/t/talking", "g2/u/typing"]);
        assert!(signal(&hub, "g1", "t", IndicatorKind::Talking, false, true));
        match sub.events.try_recv().unwrap() {
            HubEvent::Indicator { seq: next, change, .. } => {
                assert_eq!(next, seq + 1, "numbered with the presence changes");
                assert!(!change.active);
            }
            other => panic!("expected the end of talking, got {other:?}"),
        }
        assert!(!signal(&hub, "g1", "t", IndicatorKind::Talking, false, true), "ended already: no change");
        assert!(sub.events.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_snapshot_is_served_with_the_indicator_changes_since() {
        let hub = Hub::with_stale_min(16, DEFAULT_SNAPSHOT_MEMORY, 0);
        hub.apply(member("t", &["g1"], 1));
        signal(&hub, "g1", "t", IndicatorKind::Talking, true, false);
        let first = held(&hub, &Scope::everyone()).await;
        let first_frame = first.frame();
        drop(first);
        signal(&hub, "g1", "t", IndicatorKind::Talking, false, false);
        signal(&hub, "g1", "u", IndicatorKind::Typing, true, false);
        let later_ = held(&hub, &Scope::everyone()).await;
        assert!(same(&first_frame, &later_.frame()), "the cached frame ...");
        assert_eq!(indicators_in(&later_.frame()), ["g1/t/talking"]);
        let backlog: Vec<(bool, String)> = later_
            .backlog
            .iter()
            .map(|event| match event {
                HubEvent::Indicator { change, .. } => (change.active, change.indicator.user.to_string()),
                other => panic!("expected indicator changes, got {other:?}"),
            })
            .collect();
        assert_eq!(backlog, [(false, "t".into()), (true, "u".into())], "... and the ends and starts since");
    }

    #[test]
    fn a_reset_takes_the_stores_indicators_and_then_what_came_meanwhile() {
        let hub = Hub::new(16);
        let id = |s: &str| Id::parse(s).unwrap();
        signal(&hub, "g", "ended", IndicatorKind::Typing, true, false);
        signal(&hub, "g", "lost", IndicatorKind::Typing, true, false);
        let mark = hub.mark();
        // While the store was read: one ended, one started; the store had neither change.
        signal(&hub, "g", "ended", IndicatorKind::Typing, false, false);
        signal(&hub, "g", "new", IndicatorKind::Recording, true, false);
        let stored =
            vec![(id("g"), IndicatorKind::Typing, id("ended")), (id("g"), IndicatorKind::Talking, id("other"))];
        hub.reset(Snapshot::default(), stored, mark, false);
        let view = hub.view();
        let listed: Vec<String> = view
            .indicators
            .in_scope(&Scope::everyone())
            .iter()
            .map(|i| format!("{}/{}", i.user, i.kind.as_str()))
            .collect();
        assert_eq!(listed, ["new/recording", "other/talking"], "\"lost\" is not in the store: its end was lost");
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
