//! The HTTP API's budget: user ids per second per token subject.
//!
//! Without a budget one token could have the router look up tens of thousands of ids a
//! second: a dashboard or service token reads everyone's presence, and any token costs the
//! store the same lookups for ids outside its scope (which read as unknown). Every API
//! request spends ids from its subject's bucket: `POST /api/presence/status` as many as it
//! asks for, `GET /api/users/{id}/presence` one, `GET /api/groups/{id}/presence`
//! [`GROUP_COST`] up front and its participants beyond that once they are known. A request the bucket cannot pay for is answered 429
//! `rate_limited` with `Retry-After`, and spends nothing.
//!
//! # Whose bucket
//!
//! Buckets are keyed by the token's subject and role, not by the token itself. Tokens are
//! cheap to come by for whoever holds one (log in again, refresh, use several devices), so
//! a key per token would let a client multiply its budget by the number of tokens it
//! holds; a key per subject gives every user one budget, however many tokens it presents.
//! The role is part of the key because subjects of different roles are different
//! principals: a backend service calling itself `api` with a dashboard token does not
//! share a budget with a mobile user who happens to be called `api`. (One user holding
//! tokens of several roles gets one budget per role.) Refused tokens (401)
//! never reach a bucket; requests without a valid token are bounded per connection by the
//! handshake cap, and per source address by the per-address budget (`server`), not here.
//!
//! # The bucket
//!
//! A token bucket of `burst` ids refilled at `rate` ids per second, kept as GCRA does: one
//! instant per key, the moment the bucket would be full again (`full_at`). A request of
//! `n` ids moves it `n / rate` later, and is allowed when that leaves it at most
//! `burst / rate` ahead of now. A key whose `full_at` has passed holds a full bucket, which
//! is what a key never seen holds: forgetting it changes nothing.
//!
//! # Memory
//!
//! Keys whose bucket is full again are removed: by a sweep every [`SWEEP_INTERVAL`] (on
//! the router's shutdown token) and, so that a burst of new keys cannot outgrow that, by
//! a sweep whenever the map has doubled since the last one. So the map holds at most about
//! twice the number of subjects that spent ids within the last `burst / rate` seconds
//! (5 s by default), each entry a few dozen bytes plus its id (at most 128 bytes); and only
//! validly signed tokens create entries.
//!
//! The clock is tokio's, so tests run it paused. `governor`'s keyed limiter would do the
//! same arithmetic, but brings its own clock (not tokio's), a concurrent map and the same
//! need to call `retain_recent` by hand; one mutex around a map, held for a lookup and an
//! insert, is enough for the API's request rates.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{body::Bytes, extract::rejection::BytesRejection, http::StatusCode};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{ApiError, presence::parse_request};
use crate::{app::App, auth::Claims, gcra::Gcra, id::Id, metrics};

/// What `GET /api/groups/{id}/presence` costs up front, in ids: as much as the largest
/// bulk request, charged before the store is read. A group with more participants costs
/// the rest too ([`Cost::GroupBeyond`]), so reading a large group spends what reading its
/// members one by one would. A client polling small groups gets `rate / 100` group reads
/// a second (10 at the default).
pub const GROUP_COST: u32 = super::MAX_USER_IDS as u32;

/// How often buckets that are full again are forgotten.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The map is swept on insert once it holds at least this many keys and has doubled since
/// the last sweep.
const MIN_SWEEP_LEN: usize = 1024;

/// What a request costs, in ids; each variant is one route.
pub enum Cost<'a> {
    /// `POST /api/presence/status`: the ids it asks for. A body that is not a valid request
    /// costs 1 (it is refused with 400 anyway).
    Status(&'a Result<Bytes, BytesRejection>),
    /// `GET /api/users/{id}/presence`: 1.
    User,
    /// `GET /api/groups/{id}/presence`: [`GROUP_COST`] before the store is read...
    Group,
    /// ...and, for a group with more participants than that, the rest once their number
    /// is known: a large group costs what it reads.
    GroupBeyond(usize),
    /// Any other route (named, for the metric's label): 1.
    One(&'static str),
}

impl Cost<'_> {
    /// The ids charged from a bucket of `burst`. A group read costs at most `burst` in all
    /// ([`GROUP_COST`] up front included), so that, like any request, it fits a full
    /// bucket however many participants the group has.
    fn ids(&self, burst: u32) -> u32 {
        match self {
            Cost::Status(Ok(body)) => parse_request(body).map_or(1, |ids| ids.len() as u32),
            Cost::Status(Err(_)) | Cost::User | Cost::One(_) => 1,
            Cost::Group => GROUP_COST,
            Cost::GroupBeyond(participants) => {
                u32::try_from(*participants).unwrap_or(u32::MAX).min(burst).saturating_sub(GROUP_COST)
            }
        }
    }

    /// The route, as `presence_api_requests_total` labels it.
    fn route(&self) -> &'static str {
        match self {
            Cost::Status(_) => "/api/presence/status",
            Cost::User => "/api/users/{id}/presence",
            Cost::Group | Cost::GroupBeyond(_) => "/api/groups/{id}/presence",
            Cost::One(route) => route,
        }
    }
}

/// Spends `cost` from the bucket of the token's subject and role, or refuses with 429
/// `rate_limited` and `Retry-After`. The one call each API handler makes after `authorize`.
pub fn charge(app: &App, claims: &Claims, cost: Cost<'_>) -> Result<(), ApiError> {
    let key = (claims.role.as_str(), claims.sub.clone());
    let Err(wait) = app.api_limiter.spend(key, &cost, Instant::now()) else {
        return Ok(());
    };
    ::metrics::counter!(metrics::API_RATE_LIMITED, "route" => cost.route()).increment(1);
    let secs = retry_after_secs(wait);
    tracing::debug!(user = %claims.sub, role = claims.role.as_str(), retry_after = secs, "API budget spent");
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this user's budget of {} ids per second is spent; retry in {secs} s",
            app.api_limiter.rate().unwrap_or_default()
        ),
    )
    .retry_after(secs))
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1).try_into().unwrap_or(u64::MAX)
}

/// A bucket's key: the token's role and subject.
type Key = (&'static str, Id);

/// The buckets of every subject that spent ids lately.
#[derive(Debug)]
pub struct ApiLimiter {
    /// `None`: no limit (`--api-ids-per-second 0`).
    budget: Option<Budget>,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    rate: u32,
    burst: u32,
    gcra: Gcra,
}

#[derive(Debug, Default)]
struct Buckets {
    full_at: HashMap<Key, Instant>,
    /// Sweep on insert once the map holds this many keys.
    sweep_at: usize,
}

impl ApiLimiter {
    /// `rate` ids per second (0: unlimited) with room for `burst` at once. A request costing
    /// more than `burst` is charged `burst`, so it passes from a full bucket.
    pub fn new(rate: u32, burst: u32) -> ApiLimiter {
        let budget = Gcra::new(rate, burst).map(|gcra| Budget { rate, burst: burst.max(1), gcra });
        ApiLimiter { budget, buckets: Mutex::new(Buckets { full_at: HashMap::new(), sweep_at: MIN_SWEEP_LEN }) }
    }

    /// Ids per second; `None` when unlimited.
    pub fn rate(&self) -> Option<u32> {
        self.budget.map(|b| b.rate)
    }

    /// Ids a full bucket holds; `u32::MAX` when unlimited.
    pub fn burst(&self) -> u32 {
        self.budget.map_or(u32::MAX, |b| b.burst)
    }

    /// Spends what `cost` costs from `key`'s bucket at `now`; `Err(wait)` until the request
    /// would fit. A group read refused for its participants beyond the first
    /// [`GROUP_COST`] has spent those already, and its retry spends them again: its wait
    /// is for both, so that the retry fits.
    fn spend(&self, key: Key, cost: &Cost<'_>, now: Instant) -> Result<(), Duration> {
        let ids = cost.ids(self.burst());
        let Err(wait) = self.charge(key.clone(), ids, now) else { return Ok(()) };
        match cost {
            // A refused charge spends nothing: this only reads the longer wait.
            Cost::GroupBeyond(_) => Err(self.charge(key, ids.saturating_add(GROUP_COST), now).err().unwrap_or(wait)),
            _ => Err(wait),
        }
    }

    /// Spends `ids` from `key`'s bucket at `now`; `Err(wait)` when it holds too few, `wait`
    /// being how long until it holds enough. A refused request spends nothing.
    pub fn charge(&self, key: Key, ids: u32, now: Instant) -> Result<(), Duration> {
        let Some(budget) = self.budget else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let full_at = buckets.full_at.get(&key).copied().unwrap_or(now);
        let after = budget.gcra.spend(full_at, ids.min(budget.burst), now)?;
        if buckets.full_at.insert(key, after).is_none() && buckets.full_at.len() >= buckets.sweep_at {
            buckets.sweep(now);
        }
        Ok(())
    }

    /// Forgets every bucket that is full again at `now`.
    pub fn sweep(&self, now: Instant) {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).sweep(now);
    }

    /// Subjects whose bucket is remembered.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).full_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sweeps every [`SWEEP_INTERVAL`] until `shutdown`.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: CancellationToken, tracker: &TaskTracker) {
        if self.budget.is_none() {
            return;
        }
        let limiter = self.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => limiter.sweep(Instant::now()),
                }
            }
        });
    }
}

impl Buckets {
    fn sweep(&mut self, now: Instant) {
        self.full_at.retain(|_, full_at| *full_at > now);
        let len = self.full_at.len();
        if self.full_at.capacity() > 4 * len.max(MIN_SWEEP_LEN) {
            self.full_at.shrink_to(2 * len);
        }
        self.sweep_at = (2 * len).max(MIN_SWEEP_LEN);
        ::metrics::gauge!(metrics::API_RATE_LIMIT_KEYS).set(len as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> Key {
        ("mobile", Id::parse(user).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_refills_it_and_refusals_cost_nothing() {
        let limiter = ApiLimiter::new(100, 300);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.charge(key("a"), 100, t0), Ok(()));
        }
        // Empty: 100 more ids take a second to come back.
        assert_eq!(limiter.charge(key("a"), 100, t0), Err(Duration::from_secs(1)));
        assert_eq!(limiter.charge(key("a"), 1, t0), Err(Duration::from_millis(10)));
        // Refused requests did not dig the hole deeper.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.charge(key("a"), 100, Instant::now()), Err(Duration::from_millis(500)));
        assert_eq!(limiter.charge(key("a"), 50, Instant::now()), Ok(()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limiter.charge(key("a"), 100, Instant::now()), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn subjects_and_roles_have_their_own_buckets() {
        let limiter = ApiLimiter::new(10, 100);
        let now = Instant::now();
        assert_eq!(limiter.charge(key("a"), 100, now), Ok(()));
        assert!(limiter.charge(key("a"), 1, now).is_err());
        assert_eq!(limiter.charge(key("b"), 100, now), Ok(()));
        assert_eq!(limiter.charge(("dashboard", Id::parse("a").unwrap()), 100, now), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_burst_costs_the_burst() {
        let limiter = ApiLimiter::new(10, 50);
        assert_eq!(limiter.charge(key("a"), 100, Instant::now()), Ok(()));
        assert_eq!(limiter.charge(key("a"), 1, Instant::now()), Err(Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_group_read_refused_beyond_its_first_ids_waits_for_its_whole_retry() {
        let limiter = ApiLimiter::new(100, 200);
        let (group, beyond) = (Cost::Group, Cost::GroupBeyond(150));
        assert_eq!(limiter.spend(key("a"), &group, Instant::now()), Ok(()));
        assert_eq!(limiter.spend(key("a"), &beyond, Instant::now()), Ok(()));
        // 50 ids left; 60 more come back: the up-front 100 passes, the other 50 do not.
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(limiter.spend(key("a"), &group, Instant::now()), Ok(()));
        let wait = limiter.spend(key("a"), &beyond, Instant::now()).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1400), "150 ids from the 10 left, not 50");
        tokio::time::advance(wait).await;
        assert_eq!(limiter.spend(key("a"), &group, Instant::now()), Ok(()));
        assert_eq!(limiter.spend(key("a"), &beyond, Instant::now()), Ok(()), "the retry fits");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited_and_remembers_nothing() {
        let limiter = ApiLimiter::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(limiter.charge(key("a"), 100, Instant::now()), Ok(()));
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(999)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_that_refilled_are_forgotten_so_memory_follows_recent_subjects() {
        // 1000 ids/s with a burst of 5000: a bucket emptied at once is full again 5 s later.
        let limiter = ApiLimiter::new(1000, 5000);
        // A new subject emptying its bucket every 10 ms for 60 s: about 500 are within the
        // 5 s window at any time, 6000 in all.
        for i in 0..6000 {
            limiter.charge(key(&format!("u{i}")), 5000, Instant::now()).unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
            assert!(limiter.len() <= 2 * MIN_SWEEP_LEN, "{} keys after {i}", limiter.len());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        limiter.sweep(Instant::now());
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_subjects_is_swept_on_insert_when_the_map_doubles() {
        let limiter = ApiLimiter::new(1000, 1000);
        // 100k subjects spending their whole burst at once, 1 ms apart: each bucket is full
        // again 1 s later, so about 1000 are live at any moment.
        for i in 0..100_000 {
            limiter.charge(key(&format!("u{i}")), 1000, Instant::now()).unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(limiter.len() <= 4 * MIN_SWEEP_LEN, "{} keys", limiter.len());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_runs_until_shutdown() {
        let limiter = Arc::new(ApiLimiter::new(10, 100));
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        limiter.spawn_sweeper(shutdown.clone(), &tracker);
        limiter.charge(key("a"), 100, Instant::now()).unwrap();
        tokio::time::sleep(SWEEP_INTERVAL + Duration::from_secs(1)).await;
        assert!(limiter.is_empty(), "swept once its bucket refilled (10 s)");
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
