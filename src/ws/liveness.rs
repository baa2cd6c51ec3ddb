//! Whether a client is still there, and what keeps a mobile's presence.
//!
//! A mobile that has sent HEARTBEAT lives by its heartbeats: each renews its lease (at most
//! one store write per `--heartbeat-min-interval-ms`), and its socket is closed (4000) once
//! none came for the idle timeout (the TTL plus a margin). Nothing else it sends counts.
//!
//! A mobile that has not sent one (VoicePing's apps answer WebSocket pings instead) lives by
//! anything it sends: a frame of any kind, a ping or a pong. Once it has been silent for the
//! ping interval (a third of the TTL) the router pings it, again every interval while it
//! stays silent, so a client that answers is heard from at least once per interval. Each
//! sign of life renews the lease through the same path as a heartbeat, at most once per
//! ping interval (never more often than heartbeats are written), so a talker sending 50
//! AUDIO frames a second costs the store no more than a quiet client. Its socket is closed
//! like a heartbeating one's, the idle timeout after the last sign of life. Its first
//! HEARTBEAT makes it a heartbeating mobile for the rest of the connection.
//!
//! Either way the lease was last renewed at or before the last sign of life that counts, so
//! a mobile that goes silent is offline within the TTL of it (plus the sweep interval).
//!
//! A connection without presence (a dashboard, a web or service session, a mobile while
//! presence is off) has no lease, but the same clock: pinged while silent, closed (4000)
//! the idle timeout after its last sign of life, so a half-open socket (a client gone
//! without a FIN) gives back its slot and file descriptor instead of holding them until a
//! write fails, which for a quiet dashboard may be never.

use std::time::Duration;

use tokio::time::Instant;

use super::connection::Connection;
use crate::metrics;

/// What became of a lease renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Renewal {
    /// No presence is kept for this connection (not a mobile, or presence is off).
    Untracked,
    /// The store is unreachable; the session is re-asserted when it returns.
    Degraded,
    /// Renewed less than the interval ago: nothing to write.
    Coalesced,
    /// Handed to the node's renewer.
    Renewed,
}

impl Connection {
    /// Hands the lease's renewal to the node, unless it was handed over less than `every`
    /// before `now` or the store is unreachable. Never waits on the store.
    pub(super) fn renew(&mut self, now: Instant, every: Duration) -> Renewal {
        let Some(session) = self.tracked() else { return Renewal::Untracked };
        if self.app.node.is_degraded() {
            return Renewal::Degraded;
        }
        if now - self.stored_at < every {
            return Renewal::Coalesced;
        }
        self.app.node.heartbeat_soon(session);
        self.stored_at = now;
        Renewal::Renewed
    }

    /// A sign of life at `now` from a mobile that does not heartbeat: renews its lease at
    /// most once per ping interval.
    pub(super) fn heard(&mut self, now: Instant) {
        let limits = &self.app.limits;
        if self.renew(now, limits.ping_interval.max(limits.heartbeat_min_interval)) == Renewal::Renewed {
            ::metrics::counter!(metrics::LIVENESS_RENEWALS).increment(1);
        }
    }
}

/// When a connection last heard from at `heard_at` is next acted on, seen at `now`: closed at
/// `heard_at + idle_timeout`; before that, when it is pinged (`ping_every`), at the first
/// whole number of intervals after `heard_at` that is past `now`.
pub(super) fn wake_at(
    heard_at: Instant,
    now: Instant,
    idle_timeout: Duration,
    ping_every: Option<Duration>,
) -> Instant {
    let cut = heard_at + idle_timeout;
    let Some(every) = ping_every.filter(|every| !every.is_zero()) else { return cut };
    let intervals = now.saturating_duration_since(heard_at).as_nanos() / every.as_nanos() + 1;
    u32::try_from(intervals)
        .ok()
        .and_then(|n| every.checked_mul(n))
        .and_then(|after| heard_at.checked_add(after))
        .map_or(cut, |ping| ping.min(cut))
}

/// Whether a mobile last heard from at `heard_at` has been silent past the idle timeout.
pub(super) fn is_cut(heard_at: Instant, now: Instant, idle_timeout: Duration) -> bool {
    now >= heard_at + idle_timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(62);
    const EVERY: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn a_silent_mobile_is_pinged_every_interval_then_cut() {
        let heard = Instant::now();
        let at = |secs: f64| heard + Duration::from_secs_f64(secs);
        // Heartbeating: only the cut.
        assert_eq!(wake_at(heard, heard, IDLE, None), at(62.0));
        // Pinged: every 20 s after it was last heard from, the cut last.
        for (now, next) in [(0.0, 20.0), (19.9, 20.0), (20.0, 40.0), (20.5, 40.0), (41.0, 60.0), (60.0, 62.0)] {
            assert_eq!(wake_at(heard, at(now), IDLE, Some(EVERY)), at(next), "seen at {now} s");
        }
        assert!(!is_cut(heard, at(61.9), IDLE) && is_cut(heard, at(62.0), IDLE));
        // A clock behind `heard_at`, or an interval of nothing, never loops or panics.
        assert_eq!(wake_at(at(5.0), heard, IDLE, Some(EVERY)), at(25.0));
        assert_eq!(wake_at(heard, heard, IDLE, Some(Duration::ZERO)), at(62.0));
        assert_eq!(wake_at(heard, at(1e6), IDLE, Some(Duration::from_nanos(1))), at(62.0));
    }
}
