//! Heartbeats batched, and a live session's lease extended with one command.
//!
//! Heartbeats queue here; one task takes whatever is queued (up to [`BATCH`]) and renews
//! it. Nothing waits here to fill a batch: the router gathers heartbeats before it hands
//! them over (see `renewal_window`), and under heavy load batches grow while the previous
//! one is in flight.
//!
//! A heartbeat of a live session changes one thing in Redis: its lease deadline. So a batch
//! is one `ZADD {p}leases XX GT CH` per shard, carrying every session of the batch on that
//! shard (Redis' cost per command, not per member, dominates at this size), and no script: every
//! value that used to be written per heartbeat (the user's last seen, its groups'
//! participation) is derived from the lease when it is read or when the lease lapses (see
//! `lua/prelude.lua`). `XX` writes only a lease that exists, so a session whose lease was
//! ended (swept, replaced, or lost with Redis' data) is not brought back silently. When the
//! command changed fewer leases than it carried, one `ZMSCORE` tells which are gone (a
//! lease that stays, not moved back by `GT`, is kept as it is); those take the whole lease
//! (`renew.lua`), which may be an online transition or a refusal (another session holds
//! the device now). While this router holds its own lease, that command is `extend.lua`
//! instead, which writes the deadline ahead of the heartbeat, and the heartbeats it covers
//! write nothing ([`super::vouching`]).
//!
//! Deadlines are on Redis' clock, as every script's: the router reads the clock of each
//! shard's master (`lua/clock.lua`, which runs where the shard's scripts run) every
//! [`CLOCK_EVERY`] and counts from there on its own monotonic clock, which stays within
//! half a round trip of Redis' (and follows a step of Redis' clock within
//! [`CLOCK_EVERY`]). A lease runs the TTL from its heartbeat's arrival, read on that
//! clock, however long the heartbeat waited for its batch.

use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use redis::Script;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    Connection, Keyspace, Row, classify, lease_member, parse_row, session_args, start_call,
    vouching::{MARGIN, RENEW_EVERY, ROUTER_LEASE, Vouching, ms},
};
use crate::{
    engine::{EngineError, Lifetimes},
    presence::{PresenceUpdate, Session},
};

/// How often Redis' clock is read again.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// Most sessions renewed by one command or script call: bounds how long one call blocks Redis.
const BATCH: usize = 256;
/// Heartbeats waiting for a batch; senders wait for room rather than fail.
const QUEUE: usize = 8 * BATCH;

type Reply = oneshot::Sender<Result<Option<PresenceUpdate>, EngineError>>;

/// A queued heartbeat: the session, when its heartbeat arrived, and who waits for it.
type Queued = (Session, Instant, Reply);

/// What the node asks of the batching task besides heartbeats, answered when done.
enum Ask {
    /// Renew the router's lease now; fails once after a lease lapsed.
    Check(oneshot::Sender<Result<(), EngineError>>),
    /// Write every real deadline (the router is shutting down).
    Release(oneshot::Sender<Result<(), EngineError>>),
}

/// The handle heartbeats queue on.
pub struct Renewals {
    queue: mpsc::Sender<Queued>,
    /// Present when the router vouches for its sessions' deadlines.
    asks: Option<mpsc::Sender<Ask>>,
}

/// Renews batches of sessions.
pub struct Batcher {
    conn: Connection,
    /// `renew.lua`, for the sessions a plain extension does not renew.
    script: Script,
    keys: Keyspace,
    lifetimes: Lifetimes,
    /// `lua/clock.lua`.
    clock_script: Script,
    /// Per shard, its master's clock (Unix ms) as last read, and when on this router's
    /// clock.
    clocks: Vec<Option<(Instant, u64)>>,
    /// The router's lease and the real deadlines of what it wrote ahead; `None` when it
    /// writes every deadline as it is.
    vouching: Option<Vouching>,
}

type Results = Vec<Result<Option<PresenceUpdate>, EngineError>>;

/// How a batch's live sessions are extended on one shard.
enum Extension<'a> {
    /// `extend.lua`: ahead of the deadlines while this router holds its lease.
    Ahead(redis::ScriptInvocation<'a>),
    /// `ZADD XX GT CH` of the deadlines as they are.
    Exact(redis::Cmd),
}

/// What a batch writes on one shard: the shard; per session, its index in the batch and
/// its deadline, new ones to the router's set first; how many are new.
type ShardWrites = (usize, Vec<(usize, u64)>, usize);

impl Renewals {
    /// Starts the batching task; it ends when the handle is dropped.
    pub fn start(batcher: Batcher) -> Renewals {
        let (queue, pending) = mpsc::channel(QUEUE);
        let (asks, asked) = mpsc::channel(1);
        let asks = batcher.vouching.is_some().then_some(asks);
        tokio::spawn(batcher.run(pending, asked));
        Renewals { queue, asks }
    }

    /// Renews the router's lease now (when it has one). Fails with
    /// [`EngineError::Unavailable`] once after a lease lapsed, so that the node re-asserts
    /// its sessions: some may have been swept meanwhile.
    pub async fn check(&self) -> Result<(), EngineError> {
        self.ask(Ask::Check).await
    }

    /// Writes the real deadline of every session whose deadline this router wrote ahead,
    /// and takes them out of its set: before its sessions linger at shutdown, so that a
    /// lingering session ends no later than its own deadline.
    pub async fn release(&self) -> Result<(), EngineError> {
        self.ask(Ask::Release).await
    }

    async fn ask(&self, ask: fn(oneshot::Sender<Result<(), EngineError>>) -> Ask) -> Result<(), EngineError> {
        let Some(asks) = &self.asks else { return Ok(()) };
        let (reply, answer) = oneshot::channel();
        let gone = || EngineError::Internal("the renewal task stopped".into());
        asks.send(ask(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Renews one session's lease to the TTL from `at`; the transition, if the session
    /// had lapsed.
    pub async fn renew(&self, session: &Session, at: Instant) -> Result<Option<PresenceUpdate>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let gone = || EngineError::Internal("the renewal task stopped".into());
        self.queue.send((session.clone(), at, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Batcher {
    /// `router`: this router's id, under which it holds its lease; `None` writes every
    /// deadline as it is.
    pub fn new(
        conn: Connection,
        script: Script,
        keys: Keyspace,
        lifetimes: Lifetimes,
        router: Option<&str>,
    ) -> Batcher {
        let clocks = vec![None; keys.shards()];
        let clock_script = Script::new(include_str!("lua/clock.lua"));
        let vouching = router.and_then(|router| Vouching::new(router, &lifetimes, keys.shards()));
        Batcher { conn, script, keys, lifetimes, clock_script, clocks, vouching }
    }

    /// Where `shard`'s master's clock was read last (Unix ms) and when on this router's
    /// clock, read again when that is [`CLOCK_EVERY`] old: the reading is taken to be at
    /// the midpoint of its round trip.
    async fn redis_clock(&mut self, shard: usize) -> Result<(Instant, u64), EngineError> {
        if let Some((at, redis_ms)) = self.clocks[shard]
            && at.elapsed() < CLOCK_EVERY
        {
            return Ok((at, redis_ms));
        }
        let sent = Instant::now();
        let redis_ms: u64 =
            self.clock_script.key(self.keys.seq(shard)).invoke_async(&mut self.conn).await.map_err(classify)?;
        let reading = (sent + sent.elapsed() / 2, redis_ms);
        self.clocks[shard] = Some(reading);
        Ok(reading)
    }

    async fn run(mut self, mut pending: mpsc::Receiver<Queued>, mut asks: mpsc::Receiver<Ask>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut renew_lease = tokio::time::interval(RENEW_EVERY);
        renew_lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let vouching = self.vouching.is_some();
        loop {
            tokio::select! {
                taken = pending.recv_many(&mut batch, BATCH) => {
                    if taken == 0 {
                        break;
                    }
                    let results = self.renew(&batch).await;
                    for (i, (_, _, reply)) in batch.drain(..).enumerate() {
                        let result = match &results {
                            Ok(rows) => rows[i].clone(),
                            Err(e) => Err(e.clone()),
                        };
                        // The heartbeat's connection may be gone; nobody to tell.
                        let _ = reply.send(result);
                    }
                }
                Some(ask) = asks.recv() => match ask {
                    Ask::Check(reply) => {
                        let result = self.vouch(false).await;
                        // Taken here only, and only when told: a lapse the 1 s renewal found
                        // is told at the next check that reaches Redis.
                        let lapsed = result.is_ok() && self.vouching.as_mut().is_some_and(Vouching::take_lapsed);
                        let result = result.and_then(|()| match lapsed {
                            false => Ok(()),
                            true => Err(EngineError::Unavailable(
                                "this router's lease in Redis lapsed (it was stalled or cut off): its sessions are re-asserted"
                                    .into(),
                            )),
                        });
                        let _ = reply.send(result);
                        // The lease was just renewed: the task's own renewal waits its full
                        // interval from here, so the probe's checks are not doubled.
                        renew_lease.reset();
                    }
                    Ask::Release(reply) => {
                        let _ = reply.send(self.vouch(true).await);
                    }
                },
                _ = renew_lease.tick(), if vouching => {
                    if let Err(e) = self.vouch(false).await {
                        tracing::debug!(error = %e, "renewing the router's lease failed");
                    }
                }
            }
        }
    }

    /// Writes the real deadlines due within the grace (all of them when `releasing`),
    /// then renews the router's lease (not when `releasing`), on every shard. Fails when a
    /// shard could not be reached; a lapse is recorded for [`Ask::Check`] to report.
    async fn vouch(&mut self, releasing: bool) -> Result<(), EngineError> {
        if self.vouching.is_none() {
            return Ok(());
        }
        let shards = self.keys.shards();
        let mut failed = None;
        // Per shard that could be read: the deadlines to write, and the moment they were
        // computed for on its clock.
        let mut plans = Vec::with_capacity(shards);
        for shard in 0..shards {
            match self.redis_clock(shard).await {
                Ok((read_at, redis_ms)) => {
                    let now = on_clock(Instant::now(), read_at, redis_ms);
                    let due = self.vouching.as_ref().map(|v| v.due_soon(shard, (!releasing).then_some(now)));
                    plans.push((shard, now, due.unwrap_or_default()));
                }
                Err(e) => failed = Some(e),
            }
        }
        let Some(vouching) = &self.vouching else { return Ok(()) };
        let outcomes = join_all(plans.iter().map(|(shard, now, due)| {
            let mut conn = self.conn.clone();
            // The real deadlines, and those sessions out of the router's set (the sweep must
            // not bring an exact deadline back), a bounded number a command.
            let lowerings: Vec<redis::Pipeline> = due
                .chunks(BATCH)
                .map(|chunk| {
                    let mut lower = redis::pipe();
                    lower.atomic();
                    let zadd = lower.cmd("ZADD").arg(self.keys.key(*shard, "leases")).arg("XX").arg("LT").arg("CH");
                    for (deadline, member, _) in chunk {
                        zadd.arg(*deadline).arg(member);
                    }
                    let srem = lower.cmd("SREM").arg(vouching.set_key(&self.keys, *shard));
                    for (_, member, _) in chunk {
                        srem.arg(member);
                    }
                    // Counted, as every call writing ahead (see `lua/extend.lua`).
                    lower.cmd("INCR").arg(vouching.writes_key(&self.keys, *shard));
                    lower
                })
                .collect();
            // The renewal counts from no later than the moment the deadlines were chosen for.
            let renew = (!releasing).then(|| {
                let mut renew = vouching.lease_script.key(self.keys.key(*shard, "routers"));
                renew.key(vouching.writes_key(&self.keys, *shard));
                renew.arg(vouching.entry()).arg(ms(ROUTER_LEASE)).arg(now + ms(MARGIN));
                renew.arg(vouching.lease_of(*shard)).arg(vouching.writes_of(*shard));
                renew
            });
            async move {
                let mut count = 0;
                for lower in lowerings {
                    let (_, _, counted): (u64, u64, u64) = lower.query_async(&mut conn).await.map_err(classify)?;
                    count = counted;
                }
                match renew {
                    Some(renew) => renew.invoke_async::<(i64, u64, u64)>(&mut conn).await.map(Some).map_err(classify),
                    None => Ok(None),
                }
                .map(|renewed| (count, renewed))
            }
        }))
        .await;
        let vouching = self.vouching.as_mut().expect("checked above");
        for ((shard, _, due), outcome) in plans.iter().zip(outcomes) {
            match outcome {
                Ok((count, renewed)) => {
                    vouching.lowered(due);
                    vouching.counted(*shard, count);
                    if let Some((state, score, count)) = renewed {
                        vouching.renewed(*shard, state, score, count);
                    }
                }
                // Whether the deadlines and the renewal were written is not known.
                Err(e) => {
                    vouching.distrust(*shard);
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Per session of the batch, its transition or none: the live sessions' leases extended
    /// with one command per shard (nothing for those whose written deadline covers the
    /// heartbeat), the others through `renew.lua` (a call per shard).
    async fn renew(&mut self, batch: &[Queued]) -> Result<Results, EngineError> {
        let parts = self.keys.partition(batch.iter().map(|(session, _, _)| session.user.as_str()));
        let ttl_ms = self.lifetimes.ttl.as_millis() as u64;
        let mut writes: Vec<ShardWrites> = Vec::with_capacity(parts.len());
        for (shard, indices) in &parts {
            let (read_at, redis_ms) = self.redis_clock(*shard).await?;
            let mut new = Vec::new();
            let mut known = Vec::new();
            for &i in indices {
                let (session, at, _) = &batch[i];
                let due = on_clock(*at, read_at, redis_ms) + ttl_ms;
                let Some(v) = self.vouching.as_mut() else {
                    new.push((i, due));
                    continue;
                };
                if v.covers(&session.id, due) {
                    continue;
                }
                if v.is_new(&session.id) { new.push((i, due)) } else { known.push((i, due)) }
            }
            let fresh = new.len();
            new.extend(known);
            if !new.is_empty() {
                writes.push((*shard, new, fresh));
            }
        }
        let vouching = self.vouching.as_ref();
        let written = try_join_all(writes.iter().map(|(shard, sessions, fresh)| {
            let leases = self.keys.key(*shard, "leases");
            let members: Vec<String> =
                sessions.iter().map(|&(i, _)| lease_member(&batch[i].0.user, &batch[i].0.id)).collect();
            let mut conn = self.conn.clone();
            let extension = match vouching {
                Some(v) => {
                    let mut call = v.extend_script.key(self.keys.key(*shard, "routers"));
                    call.key(&leases).key(v.set_key(&self.keys, *shard)).key(v.writes_key(&self.keys, *shard));
                    call.arg(v.entry()).arg(v.ahead_ms()).arg(v.exact_within_ms()).arg(*fresh);
                    for (&(_, due), member) in sessions.iter().zip(&members) {
                        call.arg(due).arg(member);
                    }
                    Extension::Ahead(call)
                }
                None => {
                    let mut plain = redis::cmd("ZADD");
                    plain.arg(&leases).arg("XX").arg("GT").arg("CH");
                    for (&(_, due), member) in sessions.iter().zip(&members) {
                        plain.arg(due).arg(member);
                    }
                    Extension::Exact(plain)
                }
            };
            async move {
                let (moved, held, unlisted, count): (usize, bool, Vec<String>, u64) = match extension {
                    Extension::Ahead(call) => call.invoke_async(&mut conn).await.map_err(classify)?,
                    Extension::Exact(plain) => {
                        (plain.query_async(&mut conn).await.map_err(classify)?, false, Vec::new(), 0)
                    }
                };
                let kept = if moved == members.len() {
                    vec![true; members.len()]
                } else {
                    let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
                        .arg(&leases)
                        .arg(&members)
                        .query_async(&mut conn)
                        .await
                        .map_err(classify)?;
                    scores.into_iter().map(|score| score.is_some()).collect()
                };
                let vouched: Vec<bool> = members.iter().map(|m| held && !unlisted.contains(m)).collect();
                Ok::<_, EngineError>((held, kept, vouched, count))
            }
        }))
        .await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // What was written is not known: those shards' covers are written again.
                if let Some(v) = self.vouching.as_mut() {
                    writes.iter().for_each(|(shard, _, _)| v.distrust(*shard));
                }
                return Err(e);
            }
        };
        let mut rest = Vec::new();
        for ((shard, sessions, _), (held, kept, vouched, count)) in writes.iter().zip(written) {
            if let Some(v) = self.vouching.as_mut() {
                if !held {
                    v.lost(*shard);
                }
                v.counted(*shard, count);
                for ((&(i, due), kept), vouched) in sessions.iter().zip(&kept).zip(vouched) {
                    let session = &batch[i].0;
                    v.extended(&session.id, &session.user, *shard, due, held && vouched && *kept);
                }
            }
            rest.extend(sessions.iter().zip(kept).filter(|&(_, kept)| !kept).map(|(&(i, _), _)| i));
        }
        let mut results: Results = vec![Ok(None); batch.len()];
        if !rest.is_empty() {
            self.lease(batch, &rest, &mut results).await?;
        }
        Ok(results)
    }

    /// `renew.lua` for the sessions at `indices` of the batch: one call per shard.
    async fn lease(&self, batch: &[Queued], indices: &[usize], results: &mut Results) -> Result<(), EngineError> {
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

/// `at` on a clock that read `redis_ms` at `read_at` (Unix ms).
fn on_clock(at: Instant, read_at: Instant, redis_ms: u64) -> u64 {
    match at.checked_duration_since(read_at) {
        Some(after) => redis_ms + after.as_millis() as u64,
        None => redis_ms.saturating_sub(read_at.duration_since(at).as_millis() as u64),
    }
}
