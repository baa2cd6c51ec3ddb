//! A router's lease, under which it writes its sessions' lease deadlines ahead of them.
//!
//! Most of a live session's heartbeats would move its lease deadline in `{p}leases` by a
//! few seconds; each such write costs Redis a search of a sorted set of every session. So
//! while a router holds its own lease in `{p}routers` (renewed every [`RENEW_EVERY`] for
//! [`ROUTER_LEASE`]), it writes a session's deadline three TTLs past the real one, and then
//! writes nothing for the heartbeats that deadline covers: one write every few heartbeats.
//! The real deadline stays here, in a [`Cover`] per session, and the router keeps two
//! promises (`lua/prelude.lua`, `{p}routers`), where the grace is a third of the TTL and
//! at least [`ROUTER_LEASE`], and "heard" is when the router last renewed its lease:
//!
//! - every session due within the grace after it was heard from has its real deadline in
//!   Redis and is out of its set `{p}router:R`: each renewal first writes the real deadline
//!   of every cover due within the grace (and [`MARGIN`]) and counts the renewal from no
//!   later than the moment that was computed for, and `extend.lua` writes a deadline that
//!   close as it is; so a client gone silent goes offline on time, and so does one whose
//!   router stops before its lease lapses;
//! - every session whose deadline it wrote ahead is in its set: when the router's lease
//!   lapses (it crashed, hung, or lost Redis), the sweep brings each of those scores back
//!   to the grace after the router was last heard from, or to the score less the ahead
//!   when that is later. Both are at most the real deadline; the first leaves clients
//!   that reconnect to another router meanwhile the grace to do it in.
//!
//! A lapsed lease is not renewed until the sweep has done that; the router then forgets
//! that shard's covers (its deadlines there are no longer ahead) and says so once,
//! through the store's probe, so that the node re-asserts its sessions. When a call to
//! Redis fails, what it wrote is not known: the covers are distrusted, and each
//! session's next heartbeat is written again. A router whose TTL is shorter than
//! [`SHORTEST_TTL`] writes every deadline as it is.

use std::{collections::HashMap, time::Duration};

use redis::Script;

use super::Keyspace;
use crate::{engine::Lifetimes, id::Id, presence::SessionId};

/// How long a router's lease runs from its renewal.
pub const ROUTER_LEASE: Duration = Duration::from_secs(3);
/// How often the router renews its lease, writing the real deadlines of the sessions due
/// within the grace first.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// Real deadlines are written this much earlier than the grace asks: the renewal after
/// them runs up to [`RENEW_EVERY`] later, on a clock that may be off by a round trip.
pub const MARGIN: Duration = Duration::from_millis(500);
/// Below this TTL, deadlines are written as they are: writing ahead would save little (a
/// heartbeat every couple of seconds is due within the grace at once).
const SHORTEST_TTL: Duration = Duration::from_secs(6);

/// A duration in whole ms.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What the router knows of one session whose deadline it wrote ahead.
struct Cover {
    user: Id,
    shard: usize,
    /// The score in `{p}leases` as written (Unix ms on Redis' clock); 0 when not known
    /// (the call that wrote it failed): its next heartbeat is written again.
    stored: u64,
    /// The real deadline: its last heartbeat and the TTL.
    due: u64,
}

/// The router's lease and the deadlines it keeps for Redis.
pub struct Vouching {
    router: String,
    /// Its entry in `{p}routers`: id, lease, ahead and grace in ms (read by `sweep.lua`).
    entry: String,
    ahead_ms: u64,
    grace_ms: u64,
    covers: HashMap<SessionId, Cover>,
    /// Per shard, the score of the lease the router holds there, as last renewed; `None`
    /// when it holds none, or when the last renewal's outcome is not known.
    leases: Vec<Option<u64>>,
    /// Per shard, whether it held a lease there since it last lost one.
    held: Vec<bool>,
    /// Per shard, how many of its calls writing ahead Redis is known to have taken
    /// (`{p}router:R:writes`); `u64::MAX` once a call's count showed Redis went back.
    writes: Vec<u64>,
    /// A lease lapsed since the node was last told.
    lapsed: bool,
    /// `lua/router_lease.lua`.
    pub lease_script: Script,
    /// `lua/extend.lua`.
    pub extend_script: Script,
}

impl Vouching {
    /// For `router`, unless the TTL is too short to vouch; ahead three TTLs, grace a third
    /// of the TTL and at least the router's lease.
    pub fn new(router: &str, lifetimes: &Lifetimes, shards: usize) -> Option<Vouching> {
        if lifetimes.ttl < SHORTEST_TTL {
            return None;
        }
        let (ahead_ms, grace_ms) = (ms(lifetimes.ttl * 3), ms((lifetimes.ttl / 3).max(ROUTER_LEASE)));
        Some(Vouching {
            router: router.to_owned(),
            entry: format!("{router}\n{}\n{ahead_ms}\n{grace_ms}", ms(ROUTER_LEASE)),
            ahead_ms,
            grace_ms,
            covers: HashMap::new(),
            leases: vec![None; shards],
            held: vec![false; shards],
            writes: vec![0; shards],
            lapsed: false,
            lease_script: Script::new(include_str!("lua/router_lease.lua")),
            extend_script: Script::new(include_str!("lua/extend.lua")),
        })
    }

    pub fn entry(&self) -> &str {
        &self.entry
    }

    pub fn ahead_ms(&self) -> u64 {
        self.ahead_ms
    }

    /// For `extend.lua`: a deadline within this of the lease's score (ms) is written as it
    /// is, unlisted: it is due within the grace after the router was last heard from.
    pub fn exact_within_ms(&self) -> u64 {
        self.grace_ms + ms(MARGIN) - ms(ROUTER_LEASE)
    }

    /// For `router_lease.lua` on `shard`: the lease's score as this router last renewed it
    /// (0: none known).
    pub fn lease_of(&self, shard: usize) -> u64 {
        self.leases[shard].unwrap_or(0)
    }

    /// This router's set `{p}router:R` on `shard`.
    pub fn set_key(&self, keys: &Keyspace, shard: usize) -> String {
        keys.key(shard, &format!("router:{}", self.router))
    }

    /// This router's count of calls writing ahead, `{p}router:R:writes`, on `shard`.
    pub fn writes_key(&self, keys: &Keyspace, shard: usize) -> String {
        keys.key(shard, &format!("router:{}:writes", self.router))
    }

    /// For `router_lease.lua` on `shard`: how many of the router's calls writing ahead
    /// Redis took, as far as it knows.
    pub fn writes_of(&self, shard: usize) -> u64 {
        self.writes[shard]
    }

    /// Redis counted `count` calls writing ahead on `shard` (0: none in that call). A
    /// count not above the last known means Redis lost calls it had taken (a failover to
    /// a replica behind): the next renewal then finds the lease not held.
    pub fn counted(&mut self, shard: usize, count: u64) {
        if count == 0 {
            return;
        }
        self.writes[shard] = if count <= self.writes[shard] { u64::MAX } else { count };
    }

    /// Whether a heartbeat giving `session` the deadline `due` needs no write: the score in
    /// Redis covers it. Then the real deadline moves here.
    pub fn covers(&mut self, session: &SessionId, due: u64) -> bool {
        match self.covers.get_mut(session) {
            Some(cover) if cover.stored >= due => {
                cover.due = cover.due.max(due);
                true
            }
            _ => false,
        }
    }

    /// Whether `session` is not yet in this router's set.
    pub fn is_new(&self, session: &SessionId) -> bool {
        !self.covers.contains_key(session)
    }

    /// `extend.lua` wrote `due` of `session` ahead (or as it is, when `vouched` is false).
    pub fn extended(&mut self, session: &SessionId, user: &Id, shard: usize, due: u64, vouched: bool) {
        if !vouched {
            self.covers.remove(session);
            return;
        }
        let cover =
            self.covers.entry(session.clone()).or_insert(Cover { user: user.clone(), shard, stored: 0, due: 0 });
        cover.stored = cover.stored.max(due + self.ahead_ms);
        cover.due = cover.due.max(due);
    }

    /// The real deadlines to write on `shard` now (`now` on its clock, Unix ms), as
    /// `(deadline, member of {p}leases, session)`: every session due within the grace and
    /// [`MARGIN`] (all of them when `now` is `None`: the router is shutting down).
    pub fn due_soon(&self, shard: usize, now: Option<u64>) -> Vec<(u64, String, SessionId)> {
        let before = now.map_or(u64::MAX, |now| now + self.grace_ms + ms(MARGIN));
        self.covers
            .iter()
            .filter(|(_, cover)| cover.shard == shard && cover.due <= before)
            .map(|(session, cover)| (cover.due, super::lease_member(&cover.user, session), session.clone()))
            .collect()
    }

    /// The real deadlines of `written` are in Redis now, and those sessions out of the
    /// router's set: not vouched for until a heartbeat writes them ahead again (or never,
    /// for a session gone silent or ended).
    pub fn lowered(&mut self, written: &[(u64, String, SessionId)]) {
        for (_, _, session) in written {
            self.covers.remove(session);
        }
    }

    /// A call writing `shard`'s deadlines failed: what it wrote is not known, so every
    /// cover there is written again at its session's next heartbeat (and lowered again
    /// when due), and the next renewal takes whatever lease Redis holds.
    pub fn distrust(&mut self, shard: usize) {
        for cover in self.covers.values_mut().filter(|cover| cover.shard == shard) {
            cover.stored = 0;
        }
        // Its count stays a bound: whatever the call did, Redis took the ones before.
        self.leases[shard] = None;
    }

    /// The outcome of `router_lease.lua` on `shard`: 1 held and renewed, 0 a new lease (it
    /// held none, or not the one it renewed last, or Redis lost some of its writes), -1
    /// lapsed and not renewed; the lease's score; Redis' count of its calls writing
    /// ahead. Unless it was held, the scores written ahead there are the sweep's to bring
    /// back (or lost), and their covers are forgotten.
    pub fn renewed(&mut self, shard: usize, state: i64, score: u64, count: u64) {
        if state != 1 {
            self.lost(shard);
        }
        self.leases[shard] = (state >= 0).then_some(score);
        self.held[shard] = state >= 0;
        self.writes[shard] = count;
    }

    /// The lease on `shard` is not held (a renewal found it lapsed, or `extend.lua` did):
    /// nothing there is written ahead by this router any more.
    pub fn lost(&mut self, shard: usize) {
        let before = self.covers.len();
        self.covers.retain(|_, cover| cover.shard != shard);
        if self.held[shard] || self.covers.len() < before {
            self.lapsed = true;
        }
        self.held[shard] = false;
        self.leases[shard] = None;
    }

    /// Whether a lease lapsed since this was last asked.
    pub fn take_lapsed(&mut self) -> bool {
        std::mem::take(&mut self.lapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL_MS: u64 = 60_000;

    fn vouching() -> Vouching {
        let lifetimes = Lifetimes {
            ttl: Duration::from_millis(TTL_MS),
            last_seen: Duration::from_secs(3600),
            away_after: Duration::from_secs(600),
            log_entries: 100,
        };
        Vouching::new("r1", &lifetimes, 2).expect("a 60 s TTL is vouched for")
    }

    fn session(n: u64) -> SessionId {
        SessionId::new("r1", n)
    }

    #[test]
    fn short_ttls_write_every_deadline() {
        let lifetimes = Lifetimes {
            ttl: SHORTEST_TTL - Duration::from_millis(1),
            last_seen: Duration::from_secs(60),
            away_after: Duration::from_secs(60),
            log_entries: 100,
        };
        assert!(Vouching::new("r1", &lifetimes, 1).is_none());
    }

    #[test]
    fn a_deadline_written_ahead_covers_the_heartbeats_within_it() {
        let mut v = vouching();
        let (s, user) = (session(1), Id::parse("u").unwrap());
        assert!(v.is_new(&s) && !v.covers(&s, TTL_MS));
        v.extended(&s, &user, 0, TTL_MS, true);
        assert!(!v.is_new(&s));
        // Heartbeats up to three TTLs later write nothing; the one after does.
        assert!(v.covers(&s, TTL_MS + 3 * TTL_MS));
        assert!(!v.covers(&s, TTL_MS + 3 * TTL_MS + 1));
        assert_eq!(v.entry(), "r1\n3000\n180000\n20000");
        assert_eq!(v.exact_within_ms(), 20_000 + 500 - 3000);
    }

    #[test]
    fn real_deadlines_are_written_before_the_lease_could_lapse() {
        let mut v = vouching();
        let user = Id::parse("u").unwrap();
        // Heard 10 s ago (due in 50 s), and 45 s ago (due in 15 s): the grace is 20 s.
        let now = 1_000_000;
        v.extended(&session(1), &user, 0, now + 50_000, true);
        v.extended(&session(2), &user, 0, now + 15_000, true);
        v.extended(&session(3), &user, 1, now + 15_000, true);
        let due = v.due_soon(0, Some(now));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!((due[0].0, due[0].1.as_str(), &due[0].2), (now + 15_000, "u\nr1:2", &session(2)));
        v.lowered(&due);
        // Out of the set: its next heartbeat writes it ahead again.
        assert!(v.is_new(&session(2)) && !v.is_new(&session(1)));
        assert!(v.due_soon(0, Some(now)).is_empty());
        // At shutdown, every cover is written as it is.
        assert_eq!(v.due_soon(0, None).len(), 1);
    }

    #[test]
    fn a_lost_lease_forgets_that_shards_covers_and_says_so_once() {
        let mut v = vouching();
        let user = Id::parse("u").unwrap();
        v.renewed(0, 0, 3000, 0);
        v.renewed(1, 0, 3000, 0);
        assert!(!v.take_lapsed(), "a first lease lost nothing");
        v.extended(&session(1), &user, 0, TTL_MS, true);
        v.extended(&session(2), &user, 1, TTL_MS, true);
        v.renewed(0, 1, 4000, 0);
        assert_eq!(v.lease_of(0), 4000);
        assert!(!v.take_lapsed());
        v.renewed(0, -1, 4000, 0);
        assert_eq!(v.lease_of(0), 0);
        assert!(v.is_new(&session(1)) && !v.is_new(&session(2)));
        assert!(v.take_lapsed());
        assert!(!v.take_lapsed(), "said once");
    }

    #[test]
    fn a_failed_write_has_its_covers_written_again() {
        let mut v = vouching();
        let user = Id::parse("u").unwrap();
        v.renewed(0, 0, 3000, 0);
        v.counted(0, 5);
        assert_eq!(v.writes_of(0), 5);
        v.extended(&session(1), &user, 0, TTL_MS, true);
        assert!(v.covers(&session(1), TTL_MS + 1000));
        v.distrust(0);
        assert!(!v.covers(&session(1), TTL_MS + 1000), "written again");
        assert!(!v.is_new(&session(1)), "still lowered when due");
        assert_eq!(v.due_soon(0, Some(TTL_MS)).len(), 1);
        assert_eq!(
            (v.lease_of(0), v.writes_of(0)),
            (0, 5),
            "whatever lease Redis holds is taken, if it counts the writes"
        );
        v.counted(0, 5);
        assert_eq!(v.writes_of(0), u64::MAX, "a count that went back is never matched");
    }
}
