//! Heartbeats batched into one script call.
//!
//! A heartbeat written to Redis used to be one `EVALSHA` of the lease script per session:
//! Redis spent ~34 µs on each and was the bottleneck (docs/BENCHMARKS.md). Heartbeats now
//! queue here; one task takes whatever is queued (up to [`BATCH`]) and renews it all with
//! one call of `renew.lua`, whose short path for a live session touches only what a
//! heartbeat changes. Nothing waits to fill a batch: under light load a batch is one
//! heartbeat and costs what it did before; under heavy load batches grow while the previous
//! call is in flight.

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::{Connection, Row, classify, parse_row, session_args};
use crate::{
    engine::EngineError,
    presence::{PresenceUpdate, Session},
};

/// Most sessions renewed by one script call: bounds how long one call blocks Redis.
const BATCH: usize = 256;
/// Heartbeats waiting for a batch; senders wait for room rather than fail.
const QUEUE: usize = 8 * BATCH;

type Reply = oneshot::Sender<Result<Option<PresenceUpdate>, EngineError>>;

/// The handle heartbeats queue on.
pub struct Renewals {
    queue: mpsc::Sender<(Session, Reply)>,
}

/// What every call of `renew.lua` starts with.
pub struct Batcher {
    pub conn: Connection,
    pub script: Script,
    pub prefix: String,
    pub last_seen_ms: u64,
    pub ttl_ms: u64,
}

impl Renewals {
    /// Starts the batching task; it ends when the handle is dropped.
    pub fn start(batcher: Batcher) -> Renewals {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(batcher.run(pending));
        Renewals { queue }
    }

    /// Renews one session's lease; the transition, if the session had lapsed.
    pub async fn renew(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let gone = || EngineError::Internal("the renewal task stopped".into());
        self.queue.send((session.clone(), reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Batcher {
    async fn run(mut self, mut pending: mpsc::Receiver<(Session, Reply)>) {
        let mut batch = Vec::with_capacity(BATCH);
        while pending.recv_many(&mut batch, BATCH).await > 0 {
            let results = self.renew(&batch).await;
            for (i, (_, reply)) in batch.drain(..).enumerate() {
                let result = match &results {
                    Ok(rows) => rows[i].clone(),
                    Err(e) => Err(e.clone()),
                };
                // The heartbeat's connection may be gone; nobody to tell.
                let _ = reply.send(result);
            }
        }
    }

    /// One call for the whole batch; per session, its transition or none.
    async fn renew(
        &mut self,
        batch: &[(Session, Reply)],
    ) -> Result<Vec<Result<Option<PresenceUpdate>, EngineError>>, EngineError> {
        let mut call = self.script.prepare_invoke();
        call.arg(&self.prefix).arg(self.last_seen_ms).arg(self.ttl_ms);
        for (session, _) in batch {
            session_args(&mut call, session);
        }
        let rows: Vec<(usize, Row)> = call.invoke_async(&mut self.conn).await.map_err(classify)?;
        let mut results: Vec<Result<Option<PresenceUpdate>, EngineError>> = vec![Ok(None); batch.len()];
        for (index, row) in rows {
            if let Some(slot) = index.checked_sub(1).and_then(|i| results.get_mut(i)) {
                *slot = parse_row(row).map(Some);
            }
        }
        Ok(results)
    }
}
