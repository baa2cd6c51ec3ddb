//! The Redis engine's change log: a capped stream per shard, `{prefix}log`, which every
//! script that decides a transition appends it to in the same call (`lua/prelude.lua`),
//! under its sequence number. Nothing is published that is not in it. Read here to resume
//! a dashboard from its position.

use futures_util::future::try_join_all;

use super::{RedisPresence, Row, classify, parse_row, split_groups};
use crate::{
    engine::{
        EngineError,
        log::{Changes, LoggedChange, Unserved},
    },
    position::Position,
};

/// One shard's answer to `log.lua`: its epoch, its head, the verdict and the rows.
type ShardLog = (String, u64, String, Vec<Row>);

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
        let shards: Vec<ShardLog> = try_join_all(from.seqs.iter().enumerate().map(|(shard, &seq)| {
            let mut call = self.call(&self.log, shard);
            call.arg(seq).arg(self.lifetimes.log_entries);
            async move { call.invoke_async::<ShardLog>(&mut self.conn.clone()).await.map_err(classify) }
        }))
        .await?;
        let epochs: Vec<&str> = shards.iter().map(|(epoch, ..)| epoch.as_str()).collect();
        let head = Position::new(&epochs, shards.iter().map(|(_, head, ..)| *head).collect());
        if head.epoch != from.epoch {
            return Ok(Err(Unserved::Epoch));
        }
        let mut changes = Vec::new();
        for (shard, (_, _, verdict, rows)) in shards.into_iter().enumerate() {
            match verdict.as_str() {
                "ok" => {}
                "ahead" => return Ok(Err(Unserved::Ahead)),
                "too_old" => return Ok(Err(Unserved::TooOld)),
                other => return Err(EngineError::Protocol(format!("the log script answered {other:?}"))),
            }
            for mut row in rows {
                let before = row.pop().flatten();
                let mut update = parse_row(row)?;
                update.shard = shard;
                changes.push(LoggedChange { update, before: split_groups(before.as_deref()) });
            }
        }
        Ok(Ok((changes, head)))
    }
}
