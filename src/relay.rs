//! Delivery of transient frames (PTT, TEXT, activity indicators) to this router's own
//! connections, and of one kind of news for connections themselves: that their user chose
//! to be invisible, or to be seen again (each session then hides or shows its own signals).
//!
//! The frames ([`Delivery`], in [`crate::transient`]) have no version and no snapshot:
//! they go to whoever is connected now, or nowhere. Each connection registers a
//! [`Mailbox`], a queue its task drains, bounded in frames and in bytes (a reader that never
//! reads holds at most the byte bound, whatever the frames' size). A connection whose
//! queue is full has fallen behind a live audio stream:
//! its mailbox reports the overflow and it is closed as a slow consumer (4008), so one stalled
//! reader never grows the router's memory or slows the others. Frames for other
//! routers travel through the [`Broker`](crate::engine::Broker); the node delivers here
//! first, so PTT between users on one router does not depend on Redis.
//!
//! The same mailboxes carry the [`Control`]s about one session: a session replaced by a
//! newer session of its device is told to end, and whoever replaced it waits here
//! (bounded) to hear that it has; a session whose idle floor another took is told its
//! talk is over.
//!
//! The registry knows which groups have a mobile member here, and tells a hook
//! ([`Relay::on_serving`]) as each gains its first and loses its last: the broker listens
//! to a group's frames only meanwhile.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use crate::{
    id::Id,
    metrics,
    presence::{Groups, SessionId},
    transient::{Audience, Control, Delivery},
};

/// Frames a mobile connection may have queued before it counts as a slow consumer: a few
/// seconds of audio from every group it is in.
pub const MAILBOX_FRAMES: usize = 512;

/// How many of the largest frames a client may send fit in a mailbox's bytes: room for the
/// bursts several senders' budgets allow to reach a reader between two of its turns.
pub const MAILBOX_LARGEST_FRAMES: usize = 16;

/// Bytes a connection may have queued before it counts as a slow consumer, for the
/// default `--max-frame-bytes` (64 KiB): 1 MiB. A frame is always admitted into an empty
/// queue, so one frame larger than the bound still goes through.
pub const MAILBOX_BYTES: usize = MAILBOX_LARGEST_FRAMES * 64 * 1024;

/// What a connection registers as.
pub enum Member {
    /// A mobile session: reached through its user and its token's groups, and through its
    /// session id (to be replaced by a newer session of its device, or told its floor
    /// was taken).
    Session { user: Id, groups: Groups, session: SessionId },
    /// A dashboard: nothing is relayed to it here. The indicators it is shown come from
    /// the hub, numbered with the presence changes its snapshot is taken at (see
    /// [`crate::hub`]).
    Watcher,
}

impl Member {
    /// The groups it is a member of: a dashboard is a member of none.
    fn groups(&self) -> &[Id] {
        match self {
            Member::Session { groups, .. } => groups,
            Member::Watcher => &[],
        }
    }
}

/// One connection's queue. Hand-rolled rather than a tokio channel: an idle connection's
/// empty `VecDeque` allocates nothing, where a channel allocates its first block of slots
/// up front (about 1 KiB per connection, measured in idle RSS).
struct Queue {
    frames: Mutex<Frames>,
    /// Bytes the frames may add up to.
    capacity: usize,
    ready: Notify,
    overflowed: AtomicBool,
    /// The latest [`Audience::Visibility`] news not yet taken: [`NO_NEWS`], [`SHOWN`] or
    /// [`HIDDEN`]. Only the latest counts, so it takes no room in the queue.
    visibility: AtomicU8,
    /// A newer session of the connection's device replaced it.
    replaced: AtomicBool,
    /// The message id of the connection's talk whose floor another session took over, not
    /// yet taken.
    lost_talk: Mutex<Option<Arc<str>>>,
}

/// The queued frames and their total length in bytes.
#[derive(Default)]
struct Frames {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

impl Frames {
    fn pop_front(&mut self) -> Option<Bytes> {
        let frame = self.queue.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }
}

const NO_NEWS: u8 = 0;
const SHOWN: u8 = 1;
const HIDDEN: u8 = 2;

type Outbox = Arc<Queue>;

impl Queue {
    fn frames(&self) -> MutexGuard<'_, Frames> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, frame: &Bytes) {
        if self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let mut frames = self.frames();
        let full = frames.queue.len() >= MAILBOX_FRAMES
            || (!frames.queue.is_empty() && frames.bytes + frame.len() > self.capacity);
        if full {
            drop(frames);
            ::metrics::counter!(metrics::RELAY_OVERFLOWS).increment(1);
            self.overflowed.store(true, Ordering::Relaxed);
        } else {
            frames.bytes += frame.len();
            frames.queue.push_back(frame.clone());
        }
        // A permit is stored when nobody waits, so no wake-up is lost.
        self.ready.notify_one();
    }

    fn tell(&self, invisible: bool) {
        self.visibility.store(if invisible { HIDDEN } else { SHOWN }, Ordering::Relaxed);
        self.ready.notify_one();
    }
}

/// Told, under the registry's lock and so in order, when this router gains its first
/// (`true`) or loses its last (`false`) mobile member of a group. It must return at once.
pub type ServingHook = Box<dyn Fn(&Id, bool) + Send + Sync>;

#[derive(Default)]
struct Registry {
    next: u64,
    /// The groups with a mobile member here, and their members: the groups this router
    /// serves.
    groups: HashMap<Id, HashMap<u64, (Id, Outbox)>>,
    /// A user has few sessions: a Vec costs less per idle connection than a map.
    users: HashMap<Id, Vec<(u64, Outbox)>>,
    /// Mobile sessions, by session id.
    sessions: HashMap<SessionId, Outbox>,
    /// Replaced sessions a connection here waits to see end.
    ends: HashMap<SessionId, oneshot::Sender<()>>,
    /// Told of each change to the keys of `groups`.
    serving: Option<ServingHook>,
}

pub struct Relay {
    registry: Mutex<Registry>,
    /// Each mailbox's bound in bytes.
    mailbox_bytes: usize,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::for_max_frame_bytes(MAILBOX_BYTES / MAILBOX_LARGEST_FRAMES)
    }
}

/// A connection's queue of relayed frames; unregisters on drop.
pub struct Mailbox {
    registration: Arc<Registration>,
}

/// What a connection is reachable as, until its [`Mailbox`] is dropped. The connection
/// holds it weakly, to change its groups at the moment they change (before the change is
/// acknowledged, so that frames sent in answer reach it).
pub struct Registration {
    relay: Arc<Relay>,
    id: u64,
    queue: Outbox,
    member: Mutex<Member>,
}

impl Registration {
    /// Registers the connection anew as `member` (its groups changed), keeping its queue:
    /// frames already queued are still delivered.
    pub fn rescope(&self, member: Member) {
        let mut current = self.member.lock().unwrap_or_else(|e| e.into_inner());
        self.relay.registry().update(self.id, Some(&current), Some((&member, self.queue.clone())));
        *current = member;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let member = self.member.get_mut().unwrap_or_else(|e| e.into_inner());
        self.relay.registry().update(self.id, Some(member), None);
    }
}

impl Relay {
    /// A relay whose mailboxes each hold at most `bytes` of frames (and [`MAILBOX_FRAMES`]).
    pub fn with_mailbox_bytes(bytes: usize) -> Self {
        Relay { registry: Mutex::default(), mailbox_bytes: bytes }
    }

    /// A relay for clients that send frames of at most `max_frame_bytes`: each mailbox
    /// holds [`MAILBOX_LARGEST_FRAMES`] of them.
    pub fn for_max_frame_bytes(max_frame_bytes: usize) -> Self {
        Relay::with_mailbox_bytes(max_frame_bytes.saturating_mul(MAILBOX_LARGEST_FRAMES))
    }

    /// No code under the lock can panic; recover the guard rather than propagate one.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `hook` for every group this router serves now, then at each change: the
    /// broker subscribes to the groups' frames through it (see
    /// [`Broker::serve_group`](crate::engine::Broker::serve_group)), without this module
    /// depending on the engine. Set once, when the node is built; a second call replaces it.
    pub fn on_serving(&self, hook: ServingHook) {
        let mut registry = self.registry();
        for group in registry.groups.keys() {
            hook(group, true);
        }
        registry.serving = Some(hook);
    }

    pub fn register(self: &Arc<Self>, member: Member) -> Mailbox {
        let outbox = Arc::new(Queue {
            frames: Mutex::default(),
            capacity: self.mailbox_bytes,
            ready: Notify::new(),
            overflowed: AtomicBool::new(false),
            visibility: AtomicU8::new(NO_NEWS),
            replaced: AtomicBool::new(false),
            lost_talk: Mutex::default(),
        });
        let queue = outbox.clone();
        let mut registry = self.registry();
        registry.next += 1;
        let id = registry.next;
        registry.update(id, None, Some((&member, outbox)));
        let registration = Arc::new(Registration { relay: Arc::clone(self), id, queue, member: Mutex::new(member) });
        Mailbox { registration }
    }

    /// Tells the connection of `session`, if it is on this router, that it was replaced;
    /// false when it is not (here).
    pub fn replace(&self, session: &SessionId) -> bool {
        let registry = self.registry();
        let Some(outbox) = registry.sessions.get(session) else { return false };
        outbox.replaced.store(true, Ordering::Relaxed);
        outbox.ready.notify_one();
        true
    }

    /// Resolves once [`Relay::ended`] is called for `session` (by its connection here, or
    /// by the broker for one on another router).
    pub fn await_end(&self, session: &SessionId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.registry().ends.insert(session.clone(), tx);
        rx
    }

    /// `session`, a replaced session, has ended (or is no longer waited for).
    pub fn ended(&self, session: &SessionId) {
        if let Some(waiter) = self.registry().ends.remove(session) {
            let _ = waiter.send(());
        }
    }

    /// Applies a [`Control`] from another router.
    pub fn control(&self, control: &Control) {
        match control {
            Control::Replace(session) => {
                self.replace(session);
            }
            Control::Ended(session) => self.ended(session),
            Control::FloorTaken { session, talk } => self.floor_taken(session, talk),
        }
    }

    /// Tells the connection of `session`, if it is on this router, that the floor of its
    /// talk `talk` was taken over.
    fn floor_taken(&self, session: &SessionId, talk: &Arc<str>) {
        let registry = self.registry();
        if let Some(outbox) = registry.sessions.get(session) {
            *outbox.lost_talk.lock().unwrap_or_else(|e| e.into_inner()) = Some(talk.clone());
            outbox.ready.notify_one();
        }
    }

    /// Whether a session of `user` on this router is a member of one of `groups`.
    pub fn local_member_of_any(&self, user: &Id, groups: &[Id]) -> bool {
        let registry = self.registry();
        groups
            .iter()
            .filter_map(|group| registry.groups.get(group))
            .any(|members| members.values().any(|(u, _)| u == user))
    }

    /// Queues the frame for every local connection in its audience (or, for
    /// [`Audience::Visibility`], tells them); returns how many.
    pub fn deliver(&self, delivery: &Delivery) -> usize {
        let registry = self.registry();
        let except = delivery.except.as_ref();
        let mut delivered = 0;
        let mut push = |outbox: &Outbox| {
            outbox.push(&delivery.frame);
            delivered += 1;
        };
        match &delivery.audience {
            // Dashboards get a group's frames for them (indicators) from the hub.
            Audience::Group { group, .. } => {
                for (user, outbox) in registry.groups.get(group).into_iter().flat_map(HashMap::values) {
                    if Some(user) != except {
                        push(outbox);
                    }
                }
            }
            Audience::User(user) if Some(user) != except => {
                registry.users.get(user).into_iter().flatten().for_each(|(_, outbox)| push(outbox));
            }
            Audience::User(_) => {}
            Audience::UserIn { user, groups } if Some(user) != except => {
                let mut reached = Vec::new();
                for members in groups.iter().filter_map(|group| registry.groups.get(group)) {
                    for (id, (member, outbox)) in members {
                        if member == user && !reached.contains(id) {
                            reached.push(*id);
                            push(outbox);
                        }
                    }
                }
            }
            Audience::UserIn { .. } => {}
            Audience::Visibility { user, invisible } => {
                for (_, outbox) in registry.users.get(user).into_iter().flatten() {
                    outbox.tell(*invisible);
                    delivered += 1;
                }
            }
        }
        delivered
    }
}

impl Mailbox {
    /// Resolves when frames may be waiting (or the queue overflowed): then drain it with
    /// [`try_recv`](Self::try_recv). A frame pushed at any time after the previous wake-up
    /// wakes this, so none is left behind.
    pub async fn ready(&self) {
        self.registration.queue.ready.notified().await;
    }

    /// The registration, for its connection to change (see [`Registration::rescope`]).
    pub fn registration(&self) -> Weak<Registration> {
        Arc::downgrade(&self.registration)
    }

    /// Wakes the next [`ready`](Self::ready) at once: frames were left in the queue.
    pub fn wake(&self) {
        self.registration.queue.ready.notify_one();
    }

    /// The queue overflowed: the connection fell behind and must close as a slow consumer.
    pub fn overflowed(&self) -> bool {
        self.registration.queue.overflowed.load(Ordering::Relaxed)
    }

    /// A newer session of the connection's device replaced it: it must end.
    pub fn replaced(&self) -> bool {
        self.registration.queue.replaced.load(Ordering::Relaxed)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&self) -> Option<Bytes> {
        self.registration.queue.frames().pop_front()
    }

    /// The message id of this connection's talk whose floor another session took over,
    /// once: `None` when there is no such news since the last call.
    pub fn take_lost_talk(&self) -> Option<Arc<str>> {
        self.registration.queue.lost_talk.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The latest news that the user chose `invisible` (`true`) or to be seen (`false`),
    /// once: `None` when there is none since the last call.
    pub fn take_visibility(&self) -> Option<bool> {
        match self.registration.queue.visibility.swap(NO_NEWS, Ordering::Relaxed) {
            NO_NEWS => None,
            news => Some(news == HIDDEN),
        }
    }
}

impl Registry {
    /// Takes connection `id` out as `old` and puts it in as `new` (either may be `None`),
    /// then tells the hook of each group that gained its first member or lost its last:
    /// a group that both name stays served without a word (a refreshed token keeping it).
    fn update(&mut self, id: u64, old: Option<&Member>, new: Option<(&Member, Outbox)>) {
        let mut affected: Vec<(Id, bool)> = Vec::new();
        if self.serving.is_some() {
            let named = old.into_iter().chain(new.as_ref().map(|(member, _)| *member)).flat_map(Member::groups);
            affected = named.map(|group| (group.clone(), self.groups.contains_key(group))).collect();
        }
        if let Some(old) = old {
            self.remove(id, old);
        }
        if let Some((new, outbox)) = new {
            self.insert(id, new, outbox);
        }
        if let Some(hook) = &self.serving {
            for (group, was) in affected {
                let now = self.groups.contains_key(&group);
                if now != was {
                    hook(&group, now);
                }
            }
        }
    }

    fn insert(&mut self, id: u64, member: &Member, outbox: Outbox) {
        match member {
            Member::Session { user, groups, session } => {
                for group in groups.iter() {
                    self.groups.entry(group.clone()).or_default().insert(id, (user.clone(), outbox.clone()));
                }
                self.sessions.insert(session.clone(), outbox.clone());
                self.users.entry(user.clone()).or_default().push((id, outbox));
            }
            Member::Watcher => {}
        }
    }

    fn remove(&mut self, id: u64, member: &Member) {
        match member {
            Member::Session { user, groups, session } => {
                self.sessions.remove(session);
                for group in groups.iter() {
                    if let Some(members) = self.groups.get_mut(group) {
                        members.remove(&id);
                        if members.is_empty() {
                            self.groups.remove(group);
                        }
                    }
                }
                if let Some(sessions) = self.users.get_mut(user) {
                    sessions.retain(|(session, _)| *session != id);
                    if sessions.is_empty() {
                        self.users.remove(user);
                    }
                }
            }
            Member::Watcher => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    fn session(relay: &Arc<Relay>, user: &str, groups: &[&str]) -> Mailbox {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let groups = groups.iter().map(|g| id(g)).collect();
        let session = SessionId::new("test", NEXT.fetch_add(1, Ordering::Relaxed));
        relay.register(Member::Session { user: id(user), groups, session })
    }

    fn to_group(group: &str, dashboards: bool, except: &str) -> Delivery {
        Delivery {
            audience: Audience::Group { group: id(group), dashboards },
            except: Some(id(except)),
            frame: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn group_frames_reach_members_but_not_the_sender_nor_dashboards() {
        let relay = Arc::new(Relay::default());
        let sender = session(&relay, "a", &["g"]);
        let sender_tablet = session(&relay, "a", &["g"]);
        let member = session(&relay, "b", &["g", "h"]);
        let outsider = session(&relay, "c", &["h"]);
        let dashboard = relay.register(Member::Watcher);

        assert_eq!(relay.deliver(&to_group("g", true, "a")), 1, "dashboards are shown indicators by the hub");
        assert!(member.try_recv().is_some());
        for mailbox in [&sender, &sender_tablet, &outsider, &dashboard] {
            assert!(mailbox.try_recv().is_none());
        }
        assert_eq!(relay.deliver(&to_group("g", false, "a")), 1);
    }

    #[test]
    fn a_full_mailbox_fires_overflow_instead_of_growing() {
        let relay = Arc::new(Relay::default());
        let slow = session(&relay, "b", &["g"]);
        for _ in 0..MAILBOX_FRAMES {
            relay.deliver(&to_group("g", false, "a"));
        }
        assert!(!slow.registration.queue.overflowed.load(Ordering::Relaxed));
        relay.deliver(&to_group("g", false, "a"));
        assert_eq!(slow.registration.queue.frames().queue.len(), MAILBOX_FRAMES, "the queue stops growing");
        assert!(slow.overflowed(), "the reader learns it fell behind");
        assert_eq!(futures_util::FutureExt::now_or_never(slow.ready()), Some(()), "and is woken to find out");
    }

    #[test]
    fn a_mailbox_is_bounded_in_bytes_too() {
        let relay = Arc::new(Relay::with_mailbox_bytes(100 * 1024));
        let slow = session(&relay, "b", &["g"]);
        let large = |len: usize| Delivery {
            audience: Audience::Group { group: id("g"), dashboards: false },
            except: Some(id("a")),
            frame: Bytes::from(vec![0u8; len]),
        };
        relay.deliver(&large(200 * 1024));
        assert!(!slow.overflowed(), "one frame larger than the bound still goes into an empty queue");
        assert_eq!(slow.try_recv().map(|frame| frame.len()), Some(200 * 1024));
        for _ in 0..2 {
            relay.deliver(&large(40 * 1024));
        }
        assert!(!slow.overflowed(), "80 KiB of 100");
        assert_eq!(slow.try_recv().map(|frame| frame.len()), Some(40 * 1024), "taking a frame frees its bytes");
        relay.deliver(&large(40 * 1024));
        assert!(!slow.overflowed(), "80 KiB again");
        relay.deliver(&large(40 * 1024));
        assert!(slow.overflowed(), "a frame past the bytes overflows, with far fewer frames than the frame bound");
        assert_eq!(slow.registration.queue.frames().bytes, 80 * 1024, "and is not queued");
    }

    #[test]
    fn visibility_news_reaches_every_session_of_the_user_and_no_client() {
        let relay = Arc::new(Relay::default());
        let (phone, tablet, other) =
            (session(&relay, "a", &["g"]), session(&relay, "a", &[]), session(&relay, "b", &["g"]));
        let news = |invisible| Delivery {
            audience: Audience::Visibility { user: id("a"), invisible },
            except: None,
            frame: Bytes::new(),
        };
        assert_eq!(relay.deliver(&news(true)), 2);
        relay.deliver(&news(false));
        for mailbox in [&phone, &tablet] {
            assert_eq!(futures_util::FutureExt::now_or_never(mailbox.ready()), Some(()), "the connection is woken");
            assert_eq!(mailbox.take_visibility(), Some(false), "the latest news counts");
            assert_eq!(mailbox.take_visibility(), None, "once");
            assert!(mailbox.try_recv().is_none(), "nothing is written to the client");
        }
        assert_eq!(other.take_visibility(), None);
    }

    #[test]
    fn a_replaced_session_is_told_and_its_replacer_hears_it_end() {
        let relay = Arc::new(Relay::default());
        let old = SessionId::new("r", 1);
        let mailbox =
            relay.register(Member::Session { user: id("t"), groups: Groups::default(), session: old.clone() });
        let mut ended = relay.await_end(&old);
        assert!(!relay.replace(&SessionId::new("r", 2)), "another session is not here");
        relay.control(&Control::Replace(old.clone()));
        assert!(mailbox.replaced());
        assert_eq!(futures_util::FutureExt::now_or_never(mailbox.ready()), Some(()), "and is woken to find out");
        assert!(ended.try_recv().is_err());
        relay.control(&Control::Ended(old.clone()));
        assert_eq!(ended.try_recv(), Ok(()));
        drop(mailbox);
        assert!(!relay.replace(&old), "an ended session is not here any more");
    }

    #[test]
    fn a_session_whose_floor_was_taken_hears_which_talk_once() {
        let relay = Arc::new(Relay::default());
        let talker = SessionId::new("r", 1);
        let mailbox =
            relay.register(Member::Session { user: id("t"), groups: Groups::default(), session: talker.clone() });
        let bystander = session(&relay, "t", &[]);
        relay.control(&Control::FloorTaken { session: talker, talk: "0_3_g_t_1".into() });
        assert_eq!(futures_util::FutureExt::now_or_never(mailbox.ready()), Some(()), "it is woken");
        assert_eq!(mailbox.take_lost_talk().as_deref(), Some("0_3_g_t_1"));
        assert_eq!(mailbox.take_lost_talk(), None, "once");
        assert_eq!(bystander.take_lost_talk(), None, "another session of the user keeps its talk");
        assert!(mailbox.try_recv().is_none(), "nothing is written to the client");
    }

    #[test]
    fn the_hook_hears_of_each_groups_first_and_last_member() {
        let relay = Arc::new(Relay::default());
        let early = session(&relay, "a", &["g"]);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        relay.on_serving(Box::new(move |group, serving| log.lock().unwrap().push((group.to_string(), serving))));
        let take = || std::mem::take(&mut *heard.lock().unwrap());
        assert_eq!(take(), [("g".into(), true)], "groups served before the hook was set");

        let second = session(&relay, "b", &["g", "h"]);
        assert_eq!(take(), [("h".into(), true)], "only a group's first member counts");
        relay.register(Member::Watcher);
        assert_eq!(take(), [], "a dashboard is no member");
        drop(early);
        assert_eq!(take(), [], "b is still in g");
        let session = SessionId::new("test", 0);
        let registration = second.registration().upgrade().unwrap();
        registration.rescope(Member::Session { user: id("b"), groups: vec![id("g")].into(), session });
        drop(registration);
        assert_eq!(take(), [("h".into(), false)], "a refreshed token keeping g keeps it served without a word");
        drop(second);
        assert_eq!(take(), [("g".into(), false)]);
    }

    #[test]
    fn dropping_a_mailbox_unregisters_it() {
        let relay = Arc::new(Relay::default());
        let gone = session(&relay, "b", &["g"]);
        drop(gone);
        assert_eq!(relay.deliver(&to_group("g", true, "a")), 0);
        let private = Delivery { audience: Audience::User(id("b")), except: None, frame: Bytes::new() };
        assert_eq!(relay.deliver(&private), 0);
        assert!(relay.registry().groups.is_empty() && relay.registry().users.is_empty());
    }
}
