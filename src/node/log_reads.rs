//! Reads of the change log for resuming dashboards, batched: when a router restarts, all of
//! its dashboards come back to the others at once, each asking for what it missed since
//! nearly the same position. Asked one by one, each read would cost Redis a scan of the
//! same entries (hundreds of dashboards times the gap) and make them queue past the store
//! timeout. Instead, one read is in flight at a time; the requests that arrive meanwhile
//! join the next one, which reads from the oldest of their positions, and each takes its
//! own part of it ([`after`]). When that oldest one is too old for the log, the log's
//! bounds are read and the requests it still serves share one more read: positions too
//! old for the log, mixed into a storm of resumes, cost one cheap read each batch, never
//! a read of the log per request.
//!
//! A read of the log that fails or times out makes its dashboards start from a snapshot; it
//! says nothing of the store's health that heartbeats and sweeps would not tell, so it never
//! degrades the router.

use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, oneshot};

use super::Node;
use crate::{
    engine::{
        EngineError,
        log::{Changes, LoggedChange, Unserved},
    },
    metrics,
    position::Position,
};

/// What one read of the log answered, shared by the requests it served.
pub type Read = Arc<Result<Changes, EngineError>>;

/// Requests waiting for the next read, and the one read in flight.
#[derive(Default)]
pub(super) struct LogReads {
    next: Mutex<Option<Batch>>,
    reading: AsyncMutex<()>,
}

/// The requests of the next read: it starts at the oldest of their positions.
struct Batch {
    from: Position,
    waiters: Vec<(Position, oneshot::Sender<Read>)>,
}

impl Batch {
    /// Whether `from` can share this batch's read: the same history and shards.
    fn joins(&mut self, from: &Position) -> bool {
        if self.from.epoch != from.epoch || self.from.seqs.len() != from.seqs.len() {
            return false;
        }
        for (oldest, &seq) in self.from.seqs.iter_mut().zip(&from.seqs) {
            *oldest = (*oldest).min(seq);
        }
        true
    }

    /// Splits off the requests whose positions the log no longer serves: those before
    /// `kept` (per shard, the number after which it holds every transition) in any shard.
    /// The batch keeps the others and starts at the oldest of them; `None` when none is left.
    fn without_too_old(self, kept: &[u64]) -> (Option<Batch>, Vec<oneshot::Sender<Read>>) {
        let servable = |from: &Position| from.seqs.iter().zip(kept).all(|(&seq, &kept)| seq >= kept);
        let (kept_waiters, too_old): (Vec<_>, Vec<_>) = self.waiters.into_iter().partition(|(from, _)| servable(from));
        let too_old = too_old.into_iter().map(|(_, tx)| tx).collect();
        let mut waiters = kept_waiters.into_iter();
        let Some((from, tx)) = waiters.next() else { return (None, too_old) };
        let mut batch = Batch { from: from.clone(), waiters: vec![(from, tx)] };
        for (from, tx) in waiters {
            batch.joins(&from);
            batch.waiters.push((from, tx));
        }
        (Some(batch), too_old)
    }
}

/// The changes of a read after `from` (every change is numbered, with its shard).
pub fn after(changes: &[LoggedChange], from: &Position) -> Vec<LoggedChange> {
    let newer = |change: &&LoggedChange| {
        let update = &change.update;
        update.seq.is_some_and(|seq| from.seqs.get(update.shard).is_some_and(|&seen| seq > seen))
    };
    changes.iter().filter(newer).cloned().collect()
}

impl Node {
    /// The transitions after `from` in the store's change log, or why they cannot be told
    /// (see [`crate::engine::PresenceStore::changes_since`]), read together with those of
    /// the other requests that arrive meanwhile: take the changes after `from` with
    /// [`after`].
    pub async fn changes_since(&self, from: &Position) -> Read {
        let (tx, rx) = oneshot::channel();
        // Joined the next read (`Some(false)`), leads it (`Some(true)`), or, of another
        // history than its requests, reads on its own (`None`).
        let role = {
            let mut next = self.log_reads.next.lock().unwrap_or_else(|e| e.into_inner());
            match next.as_mut() {
                Some(batch) => batch.joins(from).then(|| {
                    batch.waiters.push((from.clone(), tx));
                    false
                }),
                None => {
                    *next = Some(Batch { from: from.clone(), waiters: vec![(from.clone(), tx)] });
                    Some(true)
                }
            }
        };
        let Some(leads) = role else { return Arc::new(self.read_log(from).await) };
        if leads {
            let reading = self.log_reads.reading.lock().await;
            let batch = self.log_reads.next.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(batch) = batch {
                self.serve(batch).await;
            }
            drop(reading);
        }
        rx.await.unwrap_or_else(|_| Arc::new(Err(EngineError::Internal("a log read was dropped".into()))))
    }

    /// Reads the log once for `batch` and answers its requests; when its oldest position
    /// is too old, answers the requests the log no longer serves so and reads once more
    /// for the rest.
    async fn serve(&self, batch: Batch) {
        let read: Read = Arc::new(self.read_log(&batch.from).await);
        let batch = match (read.as_ref(), batch.waiters.len()) {
            (Ok(Err(Unserved::TooOld)), 2..) => match super::timed("log_kept", self.engine.store.log_kept()).await {
                Ok(kept) => {
                    let (rest, too_old) = batch.without_too_old(&kept);
                    for waiter in too_old {
                        let _ = waiter.send(read.clone());
                    }
                    match rest {
                        Some(rest) => {
                            let read: Read = Arc::new(self.read_log(&rest.from).await);
                            return answer(rest, &read);
                        }
                        None => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the change log's bounds failed; its resumes get snapshots");
                    batch
                }
            },
            _ => batch,
        };
        answer(batch, &read);
    }

    async fn read_log(&self, from: &Position) -> Result<Changes, EngineError> {
        let result = super::timed("changes_since", self.engine.store.changes_since(from)).await;
        if let Err(e) = &result {
            ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => "changes_since", "kind" => e.kind()).increment(1);
            tracing::warn!(error = %e, "reading the change log failed; its resumes get snapshots");
        }
        result
    }
}

/// Sends `read` to every request of `batch`.
fn answer(batch: Batch, read: &Read) {
    for (_, waiter) in batch.waiters {
        let _ = waiter.send(read.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        id::Id,
        presence::{Cause, Groups, PresenceUpdate, UserPresence},
    };

    fn change(shard: usize, seq: u64) -> LoggedChange {
        let presence = UserPresence::unknown(Id::parse(&format!("u{shard}-{seq}")).unwrap());
        let update = PresenceUpdate { presence, cause: Cause::Connect, timestamp: 0, seq: Some(seq), shard };
        LoggedChange { update, before: Groups::default() }
    }

    #[test]
    fn each_request_takes_the_changes_after_its_own_position() {
        let read = [change(0, 4), change(1, 7), change(0, 5), change(1, 8)];
        let from = Position { epoch: 1, seqs: vec![4, 7] };
        let taken: Vec<(usize, Option<u64>)> =
            after(&read, &from).iter().map(|c| (c.update.shard, c.update.seq)).collect();
        assert_eq!(taken, [(0, Some(5)), (1, Some(8))]);
    }

    #[test]
    fn a_batch_reads_from_the_oldest_position_of_one_history() {
        let mut batch = Batch { from: Position { epoch: 1, seqs: vec![5, 9] }, waiters: Vec::new() };
        assert!(batch.joins(&Position { epoch: 1, seqs: vec![7, 2] }));
        assert_eq!(batch.from.seqs, [5, 2]);
        assert!(!batch.joins(&Position { epoch: 2, seqs: vec![1, 1] }));
        assert!(!batch.joins(&Position { epoch: 1, seqs: vec![1] }));
    }

    #[test]
    fn positions_the_log_no_longer_serves_are_split_off_and_the_rest_read_from_their_oldest() {
        let mut batch = Batch { from: Position { epoch: 1, seqs: vec![9, 9] }, waiters: Vec::new() };
        let mut receivers = Vec::new();
        for seqs in [vec![9, 9], vec![2, 9], vec![7, 8], vec![9, 3]] {
            let (tx, rx) = oneshot::channel();
            let from = Position { epoch: 1, seqs };
            batch.joins(&from);
            batch.waiters.push((from, tx));
            receivers.push(rx);
        }
        let (rest, too_old) = batch.without_too_old(&[5, 4]);
        let rest = rest.expect("two are still served");
        assert_eq!(rest.from.seqs, [7, 8], "the oldest of those left");
        let left: Vec<Vec<u64>> = rest.waiters.iter().map(|(from, _)| from.seqs.clone()).collect();
        assert_eq!(left, [vec![9, 9], vec![7, 8]]);
        assert_eq!(too_old.len(), 2);
    }
}
