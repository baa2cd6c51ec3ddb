//! What a connection may send: token buckets for frames and bytes, on the tokio clock so
//! tests can pause time.

use std::time::Duration;

use tokio::time::Instant;

use crate::server::ClientBudget;

struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, holding at most `burst`; starts full.
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    /// Refills for the time passed, then reports whether `n` tokens are there (without
    /// taking them).
    fn has(&mut self, now: Instant, n: f64) -> bool {
        let elapsed: Duration = now - self.last;
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        self.tokens >= n
    }
}

/// Every frame a client sends (data, continuation, ping, pong) costs one frame token and
/// its payload length in byte tokens. A frame that finds either bucket short is dropped.
/// Drops add up in a leaky bucket that drains at the frame rate: a client whose drops
/// outrun it by more than `frame_burst` is abusing the connection and is closed (4029).
/// Admitted frames do not reset it, so a flood cannot hide behind the odd cheap frame.
/// That close also penalizes the client's address at the edge, so it cannot simply
/// reconnect and flood again.
pub struct Budget {
    frames: TokenBucket,
    bytes: TokenBucket,
    /// Recent drops, draining at the frame rate.
    dropped: TokenBucket,
    /// The client's per-address budget, told of a close; `None` when it has none.
    client: Option<ClientBudget>,
}

/// What the budget says of one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    Drop,
    /// Sustained abuse: close the connection.
    Close,
}

impl Budget {
    /// `frame_rate`/`frame_burst` in frames, `byte_rate`/`byte_burst` in payload bytes
    /// (per second / at most held).
    pub fn new(frame_rate: u32, frame_burst: u32, byte_rate: u32, byte_burst: u32) -> Self {
        Budget {
            frames: TokenBucket::new(frame_rate, frame_burst),
            bytes: TokenBucket::new(byte_rate, byte_burst),
            // Its tokens are the room left for drops: full means none recently.
            dropped: TokenBucket::new(frame_rate.max(1), frame_burst),
            client: None,
        }
    }

    /// Penalizes `client`'s address when this budget closes the connection.
    pub fn penalizing(mut self, client: Option<ClientBudget>) -> Self {
        self.client = client;
        self
    }

    /// Charges one frame of `len` payload bytes.
    pub fn charge(&mut self, len: usize) -> Verdict {
        let now = Instant::now();
        let len = len as f64;
        // Both buckets refill before either is checked, so a short one never stalls the other.
        let frames = self.frames.has(now, 1.0);
        let bytes = self.bytes.has(now, len);
        if frames && bytes {
            self.frames.tokens -= 1.0;
            self.bytes.tokens -= len;
            return Verdict::Admit;
        }
        if self.dropped.has(now, 1.0) {
            self.dropped.tokens -= 1.0;
            return Verdict::Drop;
        }
        if let Some(client) = self.client.take() {
            client.penalize();
        }
        Verdict::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let mut budget = Budget::new(10, 5, u32::MAX, u32::MAX);
        let admitted = |budget: &mut Budget| (0..5).filter(|_| budget.charge(0) == Verdict::Admit).count();
        assert_eq!(admitted(&mut budget), 5);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(admitted(&mut budget), 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&mut budget), 5, "refill is capped at the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_and_bytes_both_count_and_sustained_drops_close() {
        let mut budget = Budget::new(10, 4, 1000, 2000);
        // Byte budget: one 1,500-byte frame fits the burst, the next does not.
        assert_eq!(budget.charge(1500), Verdict::Admit);
        assert_eq!(budget.charge(1500), Verdict::Drop);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Frame budget: empty frames (fragments, pings) still cost a frame each.
        let verdicts: Vec<_> = (0..9).map(|_| budget.charge(0)).collect();
        assert_eq!(&verdicts[..4], [Verdict::Admit, Verdict::Admit, Verdict::Admit, Verdict::Admit]);
        assert_eq!(&verdicts[4..8], [Verdict::Drop, Verdict::Drop, Verdict::Drop, Verdict::Drop]);
        assert_eq!(verdicts[8], Verdict::Close, "a burst's worth of drops closes");
    }

    #[tokio::test(start_paused = true)]
    async fn drops_drain_at_the_frame_rate_and_admitted_frames_do_not_hide_them() {
        let mut budget = Budget::new(10, 4, 1000, 2000);
        // Frames too big for the byte budget, with a cheap admitted frame between them:
        // the drops still add up.
        let mut verdicts = Vec::new();
        for _ in 0..5 {
            verdicts.push(budget.charge(5000));
            verdicts.push(budget.charge(0));
        }
        assert!(verdicts.contains(&Verdict::Close), "{verdicts:?}");
        // A client a little over its rate now and then is never closed: drops drain.
        let mut budget = Budget::new(10, 4, 1000, 2000);
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(95)).await;
            assert_ne!(budget.charge(0), Verdict::Close);
        }
    }
}
