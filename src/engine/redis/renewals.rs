//! Heartbeats batched, and a live session's lease extended with one command.
//!
//! Heartbeats queue here; one task takes whatever is queued (up to [`BATCH`]) and renews
//! it. Nothing waits to fill a batch: under light load a batch is one heartbeat; under
//! heavy load batches grow while the previous one is in flight.
//!
//! A heartbeat of a live session changes one thing in Redis: its lease deadline. So it is
//! one `ZADD {p}leases XX GT` per session, pipelined per shard, and no script: every
//! value that used to be written per heartbeat (the user's last seen, its groups'
//! participation) is derived from the lease when it is read or when the lease lapses (see
//! `lua/prelude.lua`). `XX` writes only a lease that exists, so a session whose lease was
//! ended (swept, replaced, or lost with Redis' data) is not brought back silently: those,
//! and any the command did not extend, take the whole lease (`renew.lua`), which may be an
//! online transition or a refusal (another session holds the device now).
//!
//! Deadlines are on Redis' clock, as every script's: the router reads Redis' `TIME` every
//! [`CLOCK_EVERY`] and counts from there on its own monotonic clock, which stays within
//! half a round trip of Redis' (and follows a step of Redis' clock within
//! [`CLOCK_EVERY`]).

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Script;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{Connection, Keyspace, Row, classify, lease_member, now_ms, parse_row, session_args, start_call};
use crate::{
    engine::{EngineError, Lifetimes},
    presence::{PresenceUpdate, Session},
};

/// How often Redis' clock is read again.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// Most sessions renewed by one script call: bounds how long one call blocks Redis.
const BATCH: usize = 256;
/// Heartbeats waiting for a batch; senders wait for room rather than fail.
const QUEUE: usize = 8 * BATCH;

type Reply = oneshot::Sender<Result<Option<PresenceUpdate>, EngineError>>;

/// The handle heartbeats queue on.
pub struct Renewals {
    queue: mpsc::Sender<(Session, Reply)>,
}

/// Renews batches of sessions.
pub struct Batcher {
    conn: Connection,
    /// `renew.lua`, for the sessions a plain extension does not renew.
    script: Script,
    keys: Keyspace,
    lifetimes: Lifetimes,
    /// Redis' clock (Unix ms) as last read, and when on this router's clock.
    clock: Option<(Instant, u64)>,
}

type Results = Vec<Result<Option<PresenceUpdate>, EngineError>>;

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
    pub fn new(conn: Connection, script: Script, keys: Keyspace, lifetimes: Lifetimes) -> Batcher {
        Batcher { conn, script, keys, lifetimes, clock: None }
    }

    /// Redis' clock now, in Unix ms, read again when the last reading is [`CLOCK_EVERY`]
    /// old: the reading is taken to be at the midpoint of its round trip.
    async fn redis_now(&mut self) -> Result<u64, EngineError> {
        if let Some((at, redis_ms)) = self.clock
            && at.elapsed() < CLOCK_EVERY
        {
            return Ok(redis_ms + at.elapsed().as_millis() as u64);
        }
        let sent = Instant::now();
        let redis_ms = now_ms(&mut self.conn).await?;
        let at = sent + sent.elapsed() / 2;
        self.clock = Some((at, redis_ms));
        Ok(redis_ms + at.elapsed().as_millis() as u64)
    }

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

    /// Per session of the batch, its transition or none: a live session's lease extended
    /// with a `ZADD XX GT` per session (a pipeline per shard), the others through
    /// `renew.lua` (a call per shard).
    async fn renew(&mut self, batch: &[(Session, Reply)]) -> Result<Results, EngineError> {
        let deadline = self.redis_now().await? + self.lifetimes.ttl.as_millis() as u64;
        let parts = self.keys.partition(batch.iter().map(|(session, _)| session.user.as_str()));
        let extended = try_join_all(parts.iter().map(|(shard, indices)| {
            let mut pipe = redis::pipe();
            let leases = self.keys.key(*shard, "leases");
            for &i in indices {
                let session = &batch[i].0;
                pipe.cmd("ZADD").arg(&leases).arg("XX").arg("GT").arg("CH").arg(deadline).arg(lease_member(session));
            }
            let mut conn = self.conn.clone();
            async move { pipe.query_async::<Vec<i64>>(&mut conn).await.map_err(classify) }
        }))
        .await?;
        let mut rest = Vec::new();
        for ((_, indices), extended) in parts.iter().zip(extended) {
            rest.extend(indices.iter().zip(extended).filter(|&(_, extended)| extended == 0).map(|(&i, _)| i));
        }
        let mut results: Results = vec![Ok(None); batch.len()];
        if !rest.is_empty() {
            self.lease(batch, &rest, &mut results).await?;
        }
        Ok(results)
    }

    /// `renew.lua` for the sessions at `indices` of the batch: one call per shard.
    async fn lease(
        &self,
        batch: &[(Session, Reply)],
        indices: &[usize],
        results: &mut Results,
    ) -> Result<(), EngineError> {
        let parts = self.keys.partition(indices.iter().map(|&i| batch[i].0.user.as_str()));
        let answers = try_join_all(parts.iter().map(|(shard, positions)| {
            let mut call = start_call(&self.script, &self.keys, *shard, &self.lifetimes);
            for &p in positions {
                session_args(&mut call, &batch[indices[p]].0);
            }
            let mut conn = self.conn.clone();
            async move { call.invoke_async::<Vec<(usize, Row)>>(&mut conn).await.map_err(classify) }
        }))
        .await?;
        for ((_, positions), rows) in parts.iter().zip(answers) {
            for (index, row) in rows {
                // `index` counts the call's sessions from 1.
                if let Some(&p) = index.checked_sub(1).and_then(|i| positions.get(i)) {
                    results[indices[p]] = parse_row(row).map(Some);
                }
            }
        }
        Ok(())
    }
}
