//! The Redis engine's change log as the webhook outbox: see `lua/webhook_take.lua` and
//! `lua/webhook_settle.lua`.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{Connection, Keyspace, Row, classify, parse_row, split_groups, start_call};
use crate::engine::{
    EngineError, Lifetimes,
    log::LoggedChange,
    outbox::{DeadLetters, MAX_TAKE, Outbox, Taken},
};

/// The consumer group the routers deliver webhooks through, on every shard's log.
pub const WEBHOOK_GROUP: &str = "webhooks";

/// Reads and settles the change log of every shard for webhook delivery.
pub struct RedisOutbox {
    conn: Connection,
    keys: Keyspace,
    lifetimes: Lifetimes,
    take: Script,
    settle: Script,
}

impl super::RedisPresence {
    /// The outbox over this engine's change logs. Makes each shard's consumer group at the
    /// log's end if it is missing: a deployment that turns webhooks on is not sent the
    /// transitions it logged before (at most `--change-log-entries` per shard), only those
    /// from now on.
    pub async fn outbox(&self) -> Result<RedisOutbox, EngineError> {
        for shard in 0..self.keys.shards() {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.keys.key(shard, "log"))
                .arg(WEBHOOK_GROUP)
                .arg("$")
                .arg("MKSTREAM")
                .query_async(&mut self.conn.clone())
                .await;
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => return Err(classify(e)),
                _ => {}
            }
        }
        Ok(RedisOutbox {
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            lifetimes: self.lifetimes,
            take: script!("webhook_take.lua"),
            settle: script!("webhook_settle.lua"),
        })
    }
}

#[async_trait]
impl Outbox for RedisOutbox {
    fn shards(&self) -> usize {
        self.keys.shards()
    }

    async fn take(
        &self,
        shard: usize,
        consumer: &str,
        count: usize,
        lease: Duration,
    ) -> Result<Option<Taken>, EngineError> {
        let mut call = start_call(&self.take, &self.keys, shard, &self.lifetimes);
        call.arg(consumer).arg(count.clamp(1, MAX_TAKE)).arg(lease.as_millis() as u64);
        let (verdict, lost, rows): (String, u64, Vec<Row>) =
            call.invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        match verdict.as_str() {
            "busy" => return Ok(None),
            "ok" => {}
            other => return Err(EngineError::Protocol(format!("the webhook take script answered {other:?}"))),
        }
        let mut entries = Vec::with_capacity(rows.len());
        for mut row in rows {
            let before = row.pop().flatten();
            let mut update = parse_row(row)?;
            update.shard = shard;
            entries.push(LoggedChange { update, before: split_groups(before.as_deref()) });
        }
        Ok(Some(Taken { entries, lost }))
    }

    async fn settle(
        &self,
        shard: usize,
        consumer: &str,
        seqs: &[u64],
        dead: Option<DeadLetters<'_>>,
        lease: Duration,
    ) -> Result<bool, EngineError> {
        let mut call = start_call(&self.settle, &self.keys, shard, &self.lifetimes);
        call.arg(consumer).arg(lease.as_millis() as u64).arg(seqs.len()).arg(seqs);
        if let Some(dead) = dead {
            call.arg(dead.reason).arg(dead.events);
        }
        let held: u8 = call.invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        Ok(held == 1)
    }
}
