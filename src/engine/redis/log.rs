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

/// One call's answer from `log.lua`: the shard's epoch, its head, the verdict and the rows.
type Page = (String, u64, String, Vec<Row>);

/// A shard's log read after a number: its epoch and head (as of the first page), the
/// verdict, and the changes.
type ShardLog = (String, u64, String, Vec<LoggedChange>);

/// Rows per call of `log.lua`: a long gap is read page by page, so that no call keeps
/// Redis (single-threaded) busy for long, nor runs into the store's call timeout.
const PAGE: u64 = 1000;

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
    /// `None`), page by page, with its epoch and head as of the first page. A verdict other
    /// than `ok` comes with no changes; an epoch that changed between pages (Redis lost its
    /// data meanwhile) reads as `too_old`.
    async fn read(
        &self,
        conn: &Connection,
        shard: usize,
        after: u64,
        through: Option<u64>,
    ) -> Result<ShardLog, EngineError> {
        let (mut from, mut target, mut first) = (after, through, None::<(String, u64)>);
        let mut changes = Vec::new();
        loop {
            let mut call = start_call(&self.script, &self.keys, shard, &self.lifetimes);
            call.arg(from)
                .arg(self.lifetimes.log_entries)
                .arg(target.map_or(String::new(), |t| t.to_string()))
                .arg(PAGE);
            let (epoch, head, verdict, rows): Page = call.invoke_async(&mut conn.clone()).await.map_err(classify)?;
            let (first_epoch, first_head) = first.get_or_insert_with(|| (epoch.clone(), head)).clone();
            let verdict = if epoch == first_epoch { verdict } else { "too_old".into() };
            if verdict != "ok" {
                return Ok((first_epoch, first_head, verdict, Vec::new()));
            }
            let read = rows.len() as u64;
            changes.extend(changes_of(shard, rows)?);
            from += read;
            if read == 0 || from >= *target.get_or_insert(first_head) {
                return Ok((first_epoch, first_head, verdict, changes));
            }
        }
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
        let (_, _, verdict, changes) = self.read(conn, shard, after, Some(through)).await?;
        match verdict.as_str() {
            "ok" => Ok(Some(changes)),
            "ahead" | "too_old" => Ok(None),
            other => Err(EngineError::Protocol(format!("the log script answered {other:?}"))),
        }
    }
}

/// `shard`'s rows as `log.lua` answers them.
fn changes_of(shard: usize, rows: Vec<Row>) -> Result<Vec<LoggedChange>, EngineError> {
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
    /// Where every shard's log stands now: its epoch, its last transition number, and the
    /// number after which it still holds every transition.
    async fn log_ends(&self) -> Result<Vec<(String, u64, u64)>, EngineError> {
        try_join_all((0..self.keys.shards()).map(|shard| {
            let call = self.call(&self.head, shard);
            async move { call.invoke_async(&mut self.conn.clone()).await.map_err(classify) }
        }))
        .await
    }

    /// Where every shard's log stands now: its epoch and last transition number.
    pub(super) async fn log_head(&self) -> Result<Position, EngineError> {
        let (epochs, seqs): (Vec<String>, Vec<u64>) =
            self.log_ends().await?.into_iter().map(|(e, h, _)| (e, h)).unzip();
        Ok(Position::new(&epochs, seqs))
    }

    /// Per shard, the number after which its change log still holds every transition.
    pub(super) async fn kept_in_log(&self) -> Result<Vec<u64>, EngineError> {
        Ok(self.log_ends().await?.into_iter().map(|(_, _, kept)| kept).collect())
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
        for (_, _, verdict, changes) in shards {
            match verdict.as_str() {
                "ok" => all.extend(changes),
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
