//! A rate with a burst, kept as one instant per key: the generic cell rate algorithm
//! (GCRA). A key's bucket is the instant it would be full again, so it needs no timer
//! and no refill: spending `n` moves that instant `n` periods later, and is allowed while
//! it stays within the burst's tolerance of now. The HTTP API's ids-per-second budget
//! and the edge's per-address connection budget both keep their buckets this way.

use std::time::Duration;

use tokio::time::Instant;

/// `rate` units per second with room for `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// How long one unit takes to come back: 1 / rate.
    period: Duration,
    /// How far ahead of now a bucket's full-again instant may be: burst / rate.
    tolerance: Duration,
}

impl Gcra {
    /// `None` for a rate of 0 (no limit). A burst of 0 counts as 1.
    pub fn new(rate: u32, burst: u32) -> Option<Gcra> {
        let period = Duration::from_secs(1).checked_div(rate)?;
        Some(Gcra { period, tolerance: period * burst.max(1) })
    }

    /// Spends `units` from a bucket full again at `full_at` (`now` or earlier: full):
    /// its new full-again instant, or how long until `units` fit. A refusal spends nothing.
    pub fn spend(&self, full_at: Instant, units: u32, now: Instant) -> Result<Instant, Duration> {
        let after = full_at.max(now) + self.period * units;
        let wait = (after - now).saturating_sub(self.tolerance);
        if wait.is_zero() { Ok(after) } else { Err(wait) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let gcra = Gcra::new(10, 3).unwrap();
        let now = Instant::now();
        let mut full_at = now;
        for _ in 0..3 {
            full_at = gcra.spend(full_at, 1, now).unwrap();
        }
        assert_eq!(gcra.spend(full_at, 1, now), Err(Duration::from_millis(100)));
        assert_eq!(gcra.spend(full_at, 2, now), Err(Duration::from_millis(200)));
        let later = now + Duration::from_millis(100);
        assert!(gcra.spend(full_at, 1, later).is_ok());
        assert!(Gcra::new(0, 10).is_none());
    }
}
