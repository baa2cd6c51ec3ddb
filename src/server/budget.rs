//! The per-address connection budget: how many new connections (through a trusted proxy,
//! requests) each client address may open, checked before any HTTP is parsed or any token
//! verified, and the penalty on an address after one of its WebSockets was closed for
//! flooding (4029).
//!
//! Why: every connection costs the router an accept, an HTTP parse, a JWT verification, a
//! WebSocket handshake and a session (0.4–1.1 ms of CPU). A client closed 4029 that
//! reconnects at once, in a loop, spends the other clients' CPU on that; refused here, a
//! reconnect costs an accept, a lookup and a 429 written without waiting on the client.
//!
//! # The bucket
//!
//! A token bucket of `burst` connections refilled at `rate` a second, kept as GCRA does:
//! one instant per address, when its bucket would be full again. A refused connection
//! spends nothing, so a client that waits `Retry-After` gets in.
//!
//! # The penalty
//!
//! When a WebSocket from an address is closed 4029, that address's new connections are
//! refused for `penalty` (`Retry-After`: what is left of it), whatever its bucket holds.
//! So a flooder gets one flooding connection per penalty instead of one per few
//! milliseconds. Connections already open from the address are not touched.
//!
//! # Memory
//!
//! At most [`TRACKED_ADDRESSES`] addresses are remembered, least recently seen forgotten
//! first (forgetting one gives it a full bucket and lifts its penalty). An address that keeps
//! reconnecting is seen on every attempt, so pushing it out takes that many new addresses
//! between two of its attempts. IPv6 clients count per /64 (see `forwarded`).
//!
//! The clock is tokio's, so tests run it paused.

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use ::metrics::Gauge;
use axum::http::StatusCode;
use lru::LruCache;
use tokio::time::Instant;

use crate::{
    gcra::Gcra,
    http::{ApiError, retry_after_secs},
    metrics,
};

/// Addresses remembered at most: about 100 bytes each, so a few MiB.
pub const TRACKED_ADDRESSES: usize = 65_536;

/// The budget's settings (`--address-connect-rate`, `--address-connect-burst`,
/// `--abuse-penalty-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// New connections per second per address; 0: no rate limit.
    pub rate: u32,
    /// Connections an address may open at once before the rate applies.
    pub burst: u32,
    /// How long an address is refused after one of its WebSockets was closed 4029; zero:
    /// no penalty.
    pub penalty: Duration,
}

impl BudgetLimits {
    /// No rate limit and no penalty.
    pub const OFF: BudgetLimits = BudgetLimits { rate: 0, burst: 0, penalty: Duration::ZERO };
}

/// Why a connection was refused, and how long until the same one would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address's bucket is empty.
    Rate(Duration),
    /// A WebSocket from the address was closed 4029 within the penalty.
    Penalty(Duration),
}

impl Refusal {
    /// The HTTP status of every refusal.
    pub const STATUS: StatusCode = StatusCode::TOO_MANY_REQUESTS;

    /// How long until the same connection would be admitted.
    pub fn wait(self) -> Duration {
        match self {
            Refusal::Rate(wait) | Refusal::Penalty(wait) => wait,
        }
    }

    /// The same refusal `elapsed` later.
    pub fn after(self, elapsed: Duration) -> Refusal {
        match self {
            Refusal::Rate(wait) => Refusal::Rate(wait.saturating_sub(elapsed)),
            Refusal::Penalty(wait) => Refusal::Penalty(wait.saturating_sub(elapsed)),
        }
    }

    /// The `presence_http_refused_total` label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Rate(_) => "address_rate",
            Refusal::Penalty(_) => "address_penalty",
        }
    }

    /// The client's answer: 429 with `Retry-After` in whole seconds.
    pub fn error(self) -> ApiError {
        let (code, wait, why) = match self {
            Refusal::Rate(wait) => ("address_rate_limited", wait, "too many new connections from this address"),
            Refusal::Penalty(wait) => {
                ("address_penalized", wait, "a connection from this address was just closed for flooding (4029)")
            }
        };
        let secs = retry_after_secs(wait);
        ApiError::new(Refusal::STATUS, code, format!("{why}; retry in {secs} s")).retry_after(secs)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the bucket is full again (now or earlier: full).
    full_at: Instant,
    /// Refused until then, after a 4029.
    penalized_until: Option<Instant>,
}

/// The buckets and penalties of the addresses seen lately.
#[derive(Debug)]
pub struct AddressBudget {
    /// Connections per second and at once; `None`: no rate limit.
    rate: Option<Gcra>,
    penalty: Duration,
    addresses: Mutex<LruCache<IpAddr, Entry>>,
    /// `presence_edge_addresses`.
    tracked: Gauge,
}

impl AddressBudget {
    /// `None` when `limits` turn both the rate and the penalty off: nothing to track.
    pub fn new(limits: BudgetLimits) -> Option<AddressBudget> {
        if limits.rate == 0 && limits.penalty.is_zero() {
            return None;
        }
        let capacity = NonZeroUsize::new(TRACKED_ADDRESSES).expect("a positive constant");
        Some(AddressBudget {
            rate: Gcra::new(limits.rate, limits.burst),
            penalty: limits.penalty,
            addresses: Mutex::new(LruCache::new(capacity)),
            tracked: ::metrics::gauge!(metrics::EDGE_ADDRESSES),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<IpAddr, Entry>> {
        // Nothing panics while holding the lock; a poisoned table is still consistent.
        self.addresses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spends one connection of `key`'s budget at `now`, or says why not.
    pub fn admit(&self, key: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut addresses = self.lock();
        let entry = addresses.get_or_insert_mut(key, || Entry { full_at: now, penalized_until: None });
        if let Some(until) = entry.penalized_until {
            if until > now {
                return Err(Refusal::Penalty(until - now));
            }
            entry.penalized_until = None;
        }
        if let Some(rate) = self.rate {
            entry.full_at = rate.spend(entry.full_at, 1, now).map_err(Refusal::Rate)?;
        }
        let len = addresses.len();
        drop(addresses);
        self.tracked.set(len as f64);
        Ok(())
    }

    /// A WebSocket from `key` was closed 4029 at `now`: refuse the address for the penalty.
    pub fn penalize(&self, key: IpAddr, now: Instant) {
        if self.penalty.is_zero() {
            return;
        }
        let Some(until) = now.checked_add(self.penalty) else { return };
        let mut addresses = self.lock();
        let entry = addresses.get_or_insert_mut(key, || Entry { full_at: now, penalized_until: None });
        entry.penalized_until = Some(entry.penalized_until.map_or(until, |at| at.max(until)));
    }

    /// Addresses remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(i.into())
    }

    fn limited(rate: u32, burst: u32, penalty_ms: u64) -> AddressBudget {
        AddressBudget::new(BudgetLimits { rate, burst, penalty: Duration::from_millis(penalty_ms) }).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_and_refusals_spend_nothing() {
        let budget = limited(10, 3, 0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.admit(ip(1), t0), Ok(()));
        }
        assert_eq!(budget.admit(ip(1), t0), Err(Refusal::Rate(Duration::from_millis(100))));
        assert_eq!(budget.admit(ip(1), t0), Err(Refusal::Rate(Duration::from_millis(100))), "no deeper hole");
        assert_eq!(budget.admit(ip(2), t0), Ok(()), "another address has its own bucket");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget.admit(ip(1), Instant::now()), Ok(()));
        assert!(budget.admit(ip(1), Instant::now()).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!((0..5).filter(|_| budget.admit(ip(1), now).is_ok()).count(), 3, "refill stops at the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_4029_refuses_the_address_for_the_penalty_then_its_bucket_applies() {
        let budget = limited(10, 3, 5000);
        let t0 = Instant::now();
        assert_eq!(budget.admit(ip(1), t0), Ok(()));
        budget.penalize(ip(1), t0);
        assert_eq!(budget.admit(ip(1), t0), Err(Refusal::Penalty(Duration::from_secs(5))));
        assert_eq!(budget.admit(ip(2), t0), Ok(()), "only that address");
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(budget.admit(ip(1), Instant::now()), Err(Refusal::Penalty(Duration::from_millis(1))));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(budget.admit(ip(1), Instant::now()), Ok(()));
        // A penalty with the rate off.
        let budget = limited(0, 0, 1000);
        budget.penalize(ip(1), Instant::now());
        assert_eq!(budget.admit(ip(1), Instant::now()), Err(Refusal::Penalty(Duration::from_secs(1))));
        for _ in 0..10_000 {
            assert_eq!(budget.admit(ip(2), Instant::now()), Ok(()), "no rate limit");
        }
    }

    #[test]
    fn both_off_tracks_nothing() {
        assert!(AddressBudget::new(BudgetLimits::OFF).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_forgets_the_least_recently_seen() {
        let budget = limited(1, 1, 60_000);
        let now = Instant::now();
        budget.penalize(ip(0), now);
        assert!(budget.admit(ip(0), now).is_err());
        for i in 1..TRACKED_ADDRESSES as u32 {
            assert_eq!(budget.admit(ip(i), now), Ok(()));
            if i % 1000 == 0 {
                // The flooder keeps trying, so it stays among the recently seen.
                assert!(budget.admit(ip(0), now).is_err());
            }
        }
        assert_eq!(budget.len(), TRACKED_ADDRESSES);
        assert_eq!(budget.admit(ip(u32::MAX), now), Ok(()));
        assert_eq!(budget.len(), TRACKED_ADDRESSES, "one forgotten for it");
        assert!(budget.admit(ip(0), now).is_err(), "the penalized, recently seen address is still refused");
        assert_eq!(budget.admit(ip(1), now), Ok(()), "the least recently seen was forgotten: a full bucket");
    }

    #[test]
    fn refusals_answer_429_with_retry_after_in_whole_seconds() {
        let later = Refusal::Penalty(Duration::from_secs(10)).after(Duration::from_secs(1));
        assert_eq!((later, later.wait()), (Refusal::Penalty(Duration::from_secs(9)), Duration::from_secs(9)));
        assert_eq!(Refusal::Rate(Duration::from_millis(20)).after(Duration::from_secs(1)).wait(), Duration::ZERO);
        let error = Refusal::Rate(Duration::from_millis(1500)).error();
        assert_eq!((error.status.as_u16(), error.code, error.retry_after), (429, "address_rate_limited", Some(2)));
        let error = Refusal::Penalty(Duration::from_millis(10)).error();
        assert_eq!((error.code, error.retry_after), ("address_penalized", Some(1)));
        assert!(error.message.contains("4029"), "{}", error.message);
    }
}
