//! The Redis engine's change log: a capped stream per shard, `{prefix}log`, which every
//! script that decides a transition appends it to in the same call (`lua/prelude.lua`),
//! under its sequence number. Nothing is published that is not in it. Read here to resume
//! a dashboard from its position, and by a router's subscription to recover transitions
//! it never received (see [`super::inbox`]).

use futures_util::future::try_join_all;
use redis::Script;

use super::{Connection, Keyspace, RedisPresence, Row, classify, parse_row, split_groups, start_call};
use crate::{
    engine::{
        EngineError, Lifetimes,
        log::{Changes, LoggedChange, Unserved},
    },
    position::Position,
};

/// One shard's answer to `log.lua`: its epoch, its head, the verdict and the rows.
type ShardLog = (String, u64, String, Vec<Row>);

/// Reads the shards' change logs (`log.lua`): shared by the store and the subscriber.
#[derive(Clone)]
pub(super) struct LogReader {
    script: Script,
    keys: Keyspace,
    lifetimes: Lifetimes,
}

impl LogReader {
    /// `script` is `log.lua`.
    pub(super) fn new(script: Script, keys: Keyspace, lifetimes: Lifetimes) -> LogReader {
        LogReader { script, keys, lifetimes }
    }

    pub(super) fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// `shard`'s transitions after number `after`, through `through` (its head when
    /// `None`), with its epoch and head, read atomically.
    async fn read(
        &self,
        conn: &Connection,
        shard: usize,
        after: u64,
        through: Option<u64>,
    ) -> Result<ShardLog, EngineError> {
        let mut call = start_call(&self.script, &self.keys, shard, &self.lifetimes);
        call.arg(after).arg(self.lifetimes.log_entries);
        if let Some(through) = through {
            call.arg(through);
        }
        call.invoke_async(&mut conn.clone()).await.map_err(classify)
    }

    /// The transitions of `shard` numbered `after + 1` through `through`, in order; `None`
    /// when the log no longer holds (or never held) every one of them.
    pub(super) async fn between(
        &self,
        conn: &Connection,
        shard: usize,
        after: u64,
        through: u64,
    ) -> Result<Option<Vec<LoggedChange>>, EngineError> {
        let (_, _, verdict, rows) = self.read(conn, shard, after, Some(through)).await?;
        match verdict.as_str() {
            "ok" => Ok(Some(changes(shard, rows)?)),
            "ahead" | "too_old" => Ok(None),
            other => Err(EngineError::Protocol(format!("the log script answered {other:?}"))),
        }
    }
}

/// `shard`'s rows as `log.lua` answers them.
fn changes(shard: usize, rows: Vec<Row>) -> Result<Vec<LoggedChange>, EngineError> {
    rows.into_iter()
        .map(|mut row| {
            let before = row.pop().flatten();
            let mut update = parse_row(row)?;
            update.shard = shard;
            Ok(LoggedChange { update, before: split_groups(before.as_deref()) })
        })
        .collect()
}

impl RedisPresence {
    /// Where every shard's log stands now: its epoch and last transition number.
    pub(super) async fn log_head(&self) -> Result<Position, EngineError> {
        let heads = try_join_all((0..self.keys.shards()).map(|shard| {
            let call = self.call(&self.head, shard);
            async move {
                let (epoch, head): (String, u64) = call.invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
                Ok::<_, EngineError>((epoch, head))
            }
        }))
        .await?;
        let (epochs, seqs): (Vec<String>, Vec<u64>) = heads.into_iter().unzip();
        Ok(Position::new(&epochs, seqs))
    }

    /// The transitions of every shard after `from`, each shard's read atomically with its
    /// head; the shards' epochs must digest to `from`'s.
    pub(super) async fn changes_after(&self, from: &Position) -> Result<Changes, EngineError> {
        if from.seqs.len() != self.keys.shards() {
            return Ok(Err(Unserved::Epoch));
        }
        let shards: Vec<ShardLog> =
            try_join_all(from.seqs.iter().enumerate().map(|(shard, &seq)| self.log.read(&self.conn, shard, seq, None)))
                .await?;
        let epochs: Vec<&str> = shards.iter().map(|(epoch, ..)| epoch.as_str()).collect();
        let head = Position::new(&epochs, shards.iter().map(|(_, head, ..)| *head).collect());
        if head.epoch != from.epoch {
            return Ok(Err(Unserved::Epoch));
        }
        let mut all = Vec::new();
        for (shard, (_, _, verdict, rows)) in shards.into_iter().enumerate() {
            match verdict.as_str() {
                "ok" => all.extend(changes(shard, rows)?),
                "ahead" => return Ok(Err(Unserved::Ahead)),
                "too_old" => return Ok(Err(Unserved::TooOld)),
                other => return Err(EngineError::Protocol(format!("the log script answered {other:?}"))),
            }
        }
        Ok(Ok((all, head)))
    }

    /// The reader of this store's change logs, for the subscriber.
    pub(super) fn log_reader(&self) -> LogReader {
        self.log.clone()
    }
}
