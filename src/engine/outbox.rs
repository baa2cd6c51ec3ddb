//! The change log read as an outbox: every transition, appended in the step that decides
//! it (see [`super::log`]), handed to one deliverer at a time per shard, and settled
//! (delivered, or given up on) by it.
//!
//! The Redis engine hands entries out through the log stream's consumer group `webhooks`
//! and a delivery lease per shard (`lua/webhook_take.lua`, `lua/webhook_settle.lua`): one
//! router at a time delivers a shard, in log order; a router that takes the lease over
//! claims what its holder was handed and did not settle, and hands that out first. The
//! memory engine (one router) reads its ring after the last entry settled.

use std::time::Duration;

use async_trait::async_trait;

use super::{EngineError, log::LoggedChange};

/// Most entries handed out at once: a batch is settled in one script call.
pub const MAX_TAKE: usize = 1000;

/// What [`Outbox::take`] handed out.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    /// Entries to deliver, in log order (each update's `seq` and `shard` set): those handed
    /// out before and not settled first, then new ones.
    pub entries: Vec<LoggedChange>,
    /// Entries trimmed from the log (its cap) before they were delivered, noticed now:
    /// gone for good, and settled.
    pub lost: u64,
}

/// Entries given up on, for the dead letters: why, and each entry as its webhook event's
/// JSON (one per settled entry, in the same order), so they read as the receiver would
/// have received them even once the log has trimmed the entries.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetters<'a> {
    pub reason: &'a str,
    pub events: &'a [String],
}

/// A store's change log as the webhook deliverer reads it.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// How many shards the log has; each is taken and settled on its own.
    fn shards(&self) -> usize;

    /// Up to `count` (at most [`MAX_TAKE`]) entries of `shard` for `consumer` to deliver,
    /// holding the shard's delivery lease for `lease` (taken, or renewed). `None` when
    /// another consumer holds it: that one delivers the shard.
    async fn take(
        &self,
        shard: usize,
        consumer: &str,
        count: usize,
        lease: Duration,
    ) -> Result<Option<Taken>, EngineError>;

    /// Settles the entries numbered `seqs` of `shard`, handed to `consumer`: delivered
    /// (`dead` None), or given up on and kept as dead letters (Redis: a capped stream per
    /// shard; the memory engine keeps none, its deliverer logs them). Renews the lease
    /// for `lease` (`seqs` may be empty for that alone; a zero `lease` gives it up);
    /// `false` when `consumer` no longer holds it.
    async fn settle(
        &self,
        shard: usize,
        consumer: &str,
        seqs: &[u64],
        dead: Option<DeadLetters<'_>>,
        lease: Duration,
    ) -> Result<bool, EngineError>;
}

/// The memory engine's ring as the outbox: one shard, one router, so no lease; what is
/// handed out and not settled is what follows the last entry settled.
pub struct MemoryOutbox {
    store: std::sync::Arc<super::MemoryPresence>,
    /// The number of the last entry settled.
    settled: std::sync::Mutex<u64>,
}

impl MemoryOutbox {
    /// The outbox of `store`'s ring, from its first entry.
    pub fn new(store: std::sync::Arc<super::MemoryPresence>) -> MemoryOutbox {
        MemoryOutbox { store, settled: std::sync::Mutex::new(0) }
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, u64> {
        self.settled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    fn shards(&self) -> usize {
        1
    }

    async fn take(&self, _: usize, _: &str, count: usize, _: Duration) -> Result<Option<Taken>, EngineError> {
        let mut settled = self.settled();
        let (entries, lost) = self.store.log_after(*settled, count.clamp(1, MAX_TAKE));
        // Trimmed entries are settled: counted lost once.
        *settled += lost;
        Ok(Some(Taken { entries, lost }))
    }

    async fn settle(
        &self,
        _: usize,
        _: &str,
        seqs: &[u64],
        _: Option<DeadLetters<'_>>,
        _: Duration,
    ) -> Result<bool, EngineError> {
        let mut settled = self.settled();
        *settled = seqs.iter().copied().fold(*settled, u64::max);
        Ok(true)
    }
}
