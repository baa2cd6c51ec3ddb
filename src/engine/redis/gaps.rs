//! Detects transitions a router never received.
//!
//! Every transition the Redis scripts decide takes the next number of one cluster-wide
//! sequence (`{prefix}seq`). Pub/Sub is at-most-once: a message is lost when a subscriber
//! reconnects, and a router killed between deciding a transition and publishing it never
//! publishes it. Either way the sequence shows a gap. Publishes from different routers may
//! overtake each other, so a gap only counts once it has stayed open for the grace
//! period; then the router resyncs from the store.

use std::{collections::BTreeMap, time::Duration};

use tokio::time::Instant;

/// Open gaps tracked at most; past this the router resyncs at once instead of growing.
const MAX_OPEN: usize = 4096;

pub struct GapDetector {
    grace: Duration,
    /// The number expected next; `None` until the first message after (re)subscribing.
    next: Option<u64>,
    /// Missing numbers and when they went missing.
    open: BTreeMap<u64, Instant>,
}

impl GapDetector {
    pub fn new(grace: Duration) -> Self {
        GapDetector { grace, next: None, open: BTreeMap::new() }
    }

    /// Starts over: after a (re)subscription or a resync nothing before counts.
    pub fn reset(&mut self) {
        self.next = None;
        self.open.clear();
    }

    /// Records one received number. Returns true when the router must resync now.
    pub fn saw(&mut self, seq: u64) -> bool {
        let now = Instant::now();
        match self.next {
            Some(next) if seq < next => {
                self.open.remove(&seq);
            }
            Some(next) => {
                if seq - next > MAX_OPEN as u64 {
                    return true;
                }
                for missing in next..seq {
                    self.open.insert(missing, now);
                }
                self.next = Some(seq + 1);
            }
            None => self.next = Some(seq + 1),
        }
        self.open.len() > MAX_OPEN
    }

    /// True when some gap has stayed open longer than the grace period.
    pub fn overdue(&self) -> bool {
        self.open.values().next().is_some_and(|since| since.elapsed() >= self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn reordering_within_the_grace_is_no_gap() {
        let mut gaps = GapDetector::new(GRACE);
        for seq in [10, 12, 11, 13] {
            assert!(!gaps.saw(seq));
        }
        tokio::time::advance(GRACE * 2).await;
        assert!(!gaps.overdue());
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_number_is_overdue_after_the_grace() {
        let mut gaps = GapDetector::new(GRACE);
        gaps.saw(1);
        gaps.saw(3);
        tokio::time::advance(GRACE / 2).await;
        assert!(!gaps.overdue());
        tokio::time::advance(GRACE / 2).await;
        assert!(gaps.overdue());
        gaps.reset();
        assert!(!gaps.overdue());
        gaps.saw(7);
        assert!(!gaps.overdue(), "after a reset the next number is the new baseline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_jump_asks_for_a_resync_at_once() {
        let mut gaps = GapDetector::new(GRACE);
        gaps.saw(1);
        assert!(gaps.saw(2 + MAX_OPEN as u64 + 1));
    }
}
