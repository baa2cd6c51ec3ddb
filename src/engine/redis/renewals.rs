//! Heartbeats batched into one script call.
//!
//! A heartbeat written to Redis used to be one `EVALSHA` of the lease script per session:
//! Redis spent ~34 µs on each and was the bottleneck (docs/BENCHMARKS.md). Heartbeats now
//! queue here; one task takes whatever is queued (up to [`BATCH`]) and renews it all with
//! one call of `renew.lua`, whose short path for a live session touches only what a
//! heartbeat changes. Nothing waits to fill a batch: under light load a batch is one
//! heartbeat and costs what it did before; under heavy load batches grow while the previous
//! call is in flight. A script runs within one shard ([`Keyspace`]), so a batch is split
//! into one call per shard it holds, sent at once.

use futures_util::future::try_join_all;
use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::{Connection, Keyspace, Row, classify, parse_row, session_args, start_call};
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
    pub keys: Keyspace,
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
    async fn run(self, mut pending: mpsc::Receiver<(Session, Reply)>) {
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

    /// One call per shard in the batch; per session, its transition or none.
    async fn renew(
        &self,
        batch: &[(Session, Reply)],
    ) -> Result<Vec<Result<Option<PresenceUpdate>, EngineError>>, EngineError> {
        let parts = self.keys.partition(batch.iter().map(|(session, _)| session.user.as_str()));
        let answers = try_join_all(parts.iter().map(|(shard, indices)| {
            let mut call = start_call(&self.script, &self.keys, *shard, self.last_seen_ms);
            call.arg(self.ttl_ms);
            for &i in indices {
                session_args(&mut call, &batch[i].0);
            }
            let mut conn = self.conn.clone();
            async move { call.invoke_async::<Vec<(usize, Row)>>(&mut conn).await.map_err(classify) }
        }))
        .await?;
        let mut results: Vec<Result<Option<PresenceUpdate>, EngineError>> = vec![Ok(None); batch.len()];
        for ((_, indices), rows) in parts.iter().zip(answers) {
            for (index, row) in rows {
                // `index` counts the call's sessions from 1.
                if let Some(&i) = index.checked_sub(1).and_then(|i| indices.get(i)) {
                    results[i] = parse_row(row).map(Some);
                }
            }
        }
        Ok(results)
    }
}
