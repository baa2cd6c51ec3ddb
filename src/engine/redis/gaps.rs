//! Detects transitions a router never received.
//!
//! Every transition the Redis scripts decide takes the next number of one cluster-wide
//! sequence (`{prefix}seq`). Pub/Sub is at-most-once: a message is lost when a subscriber
//! reconnects, and a router killed between deciding a transition and publishing it never
//! publishes it. Either way the sequence shows a gap. Publishes from different routers may
//! overtake each other, so a gap only counts once it has stayed open for the grace
//! period; then the router reads the missing numbers from the change log, or resyncs
//! from the store (see [`super::inbox`]).

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
        match self.next {
            Some(next) if seq < next => {
                self.open.remove(&seq);
                false
            }
            Some(next) => self.missing(next, seq, seq + 1),
            None => {
                self.next = Some(seq + 1);
                false
            }
        }
    }

    /// Marks `from..to` missing since now and expects `next` next. True when that is more
    /// than can be tracked: the router must resync now.
    fn missing(&mut self, from: u64, to: u64, next: u64) -> bool {
        if to - from > MAX_OPEN as u64 {
            return true;
        }
        let now = Instant::now();
        for missing in from..to {
            self.open.insert(missing, now);
        }
        self.next = Some(next);
        self.open.len() > MAX_OPEN
    }

    /// Takes `head`, the last number decided so far (`GET {prefix}seq` once subscribed), as
    /// the baseline: only later numbers are expected.
    pub fn start_at(&mut self, head: u64) {
        self.reset();
        self.next = Some(head + 1);
    }

    /// After a resubscription that followed a lapse: `head` is the last number decided so
    /// far. Every number up to it not received yet goes missing from now; one still in
    /// flight (decided before, published after the resubscription) arrives within the
    /// grace and closes its gap, one published during the lapse never does. Returns true
    /// when the router must resync now instead: without a baseline nobody knows what was
    /// missed, and a sequence that went back means Redis lost its data.
    pub fn resume(&mut self, head: u64) -> bool {
        let Some(next) = self.next else { return true };
        if head + 1 < next {
            return true;
        }
        self.missing(next, head + 1, head + 1)
    }

    /// A periodic check: `head`, the last number decided so far, read just now, must
    /// arrive within the grace, with every number before it. This notices a transition
    /// lost when no later one follows to show the gap. A head behind what has been
    /// received (read before those arrived) tells nothing; without a baseline (after a
    /// reset) it becomes the baseline. True when more is missing than can be tracked: the
    /// router must resync now.
    pub fn expect_through(&mut self, head: u64) -> bool {
        match self.next {
            None => {
                self.next = Some(head + 1);
                false
            }
            Some(next) if head < next => false,
            Some(next) => self.missing(next, head + 1, head + 1),
        }
    }

    /// The highest number received (or taken as the baseline) so far.
    pub fn received(&self) -> Option<u64> {
        self.next.map(|next| next - 1)
    }

    /// The lowest and the highest number missing now, if any.
    pub fn missing_span(&self) -> Option<(u64, u64)> {
        Some((*self.open.first_key_value()?.0, *self.open.last_key_value()?.0))
    }

    /// Whether `seq` is missing now.
    pub fn is_missing(&self, seq: u64) -> bool {
        self.open.contains_key(&seq)
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
    async fn a_resumption_expects_what_was_decided_during_the_lapse() {
        let mut gaps = GapDetector::new(GRACE);
        gaps.start_at(10);
        assert!(!gaps.saw(11));
        // Numbers 12 to 14 were decided while the subscription was lapsing.
        assert!(!gaps.resume(14));
        assert!(!gaps.saw(12), "one still in flight arrives");
        assert!(!gaps.saw(15), "the next number after the head is no gap");
        tokio::time::advance(GRACE).await;
        assert!(gaps.overdue(), "13 and 14 never came");

        let mut quiet = GapDetector::new(GRACE);
        quiet.start_at(10);
        quiet.saw(11);
        assert!(!quiet.resume(11), "nothing decided during the lapse");
        tokio::time::advance(GRACE).await;
        assert!(!quiet.overdue());
        assert!(!quiet.saw(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumption_without_a_baseline_or_behind_it_asks_for_a_resync() {
        let mut unknown = GapDetector::new(GRACE);
        assert!(unknown.resume(5), "nothing known of what came before");
        let mut restarted = GapDetector::new(GRACE);
        restarted.start_at(100);
        assert!(restarted.resume(0), "the sequence went back: Redis lost its data");
    }

    #[tokio::test(start_paused = true)]
    async fn a_periodic_head_expects_what_was_decided_and_tells_nothing_when_stale() {
        let mut gaps = GapDetector::new(GRACE);
        assert!(!gaps.expect_through(10), "no baseline yet: the head becomes one");
        assert!(!gaps.saw(11));
        assert!(!gaps.saw(12));
        assert!(!gaps.expect_through(11), "read before 12 arrived: stale, no gap");
        assert!(!gaps.expect_through(12));
        tokio::time::advance(GRACE * 2).await;
        assert!(!gaps.overdue(), "everything up to the head arrived");

        assert!(!gaps.expect_through(14), "13 and 14 were decided");
        assert!(!gaps.saw(13));
        tokio::time::advance(GRACE).await;
        assert!(gaps.overdue(), "14 never came, and nothing after it showed the gap");

        gaps.reset();
        assert!(!gaps.expect_through(20), "after a reset, the head is the baseline again");
        tokio::time::advance(GRACE * 2).await;
        assert!(!gaps.overdue());
    }

    #[tokio::test(start_paused = true)]
    async fn the_missing_span_is_what_a_read_of_the_log_must_cover() {
        let mut gaps = GapDetector::new(GRACE);
        assert_eq!(gaps.missing_span(), None);
        gaps.saw(1);
        gaps.saw(3);
        gaps.saw(6);
        assert_eq!(gaps.missing_span(), Some((2, 5)));
        assert!(gaps.is_missing(4) && !gaps.is_missing(3) && !gaps.is_missing(7));
        for filled in [2, 4, 5] {
            gaps.saw(filled);
        }
        tokio::time::advance(GRACE).await;
        assert_eq!(gaps.missing_span(), None);
        assert!(!gaps.overdue(), "read from the log: nothing missing any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_jump_asks_for_a_resync_at_once() {
        let mut gaps = GapDetector::new(GRACE);
        gaps.saw(1);
        assert!(gaps.saw(2 + MAX_OPEN as u64 + 1));
    }
}
