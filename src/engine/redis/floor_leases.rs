//! The leases of PTT floors in Redis (see [`crate::engine::FLOOR_LEASE`]): each shard keeps
//! `{p}floor_lapses` (member `CHANNEL\nHOLDER`, score = when the lease lapses plus the
//! grace, Redis' clock) and `{p}floor_talks` (the same members' talks: when they began,
//! the talker, who hears them), beside its channels' floors. `lua/floor_take.lua` adds a
//! talk, `lua/floor_release.lua` and a takeover remove it, `lua/floor_lease.lua` renews
//! it and `lua/floor_orphans.lua` claims it once lapsed.

use std::time::Duration;

use futures_util::future::try_join_all;

use super::{
    RedisPresence, classify,
    signals::{LAPSE_BATCH, parse_talker},
};
use crate::{
    engine::{EngineError, FLOOR_LEASE, FLOOR_LEASE_QUIET, FLOOR_ORPHAN_GRACE, FloorListeners, OrphanedFloor},
    id::Id,
    presence::SessionId,
    protocol::payload::IndicatorKind,
};

impl RedisPresence {
    /// One script call per floor, all sent at once: the connection pipelines them, so
    /// renewing every floor a router holds costs one round trip per shard.
    pub(super) async fn renew_floor_leases(
        &self,
        floors: &[(String, SessionId)],
        lease: Duration,
    ) -> Result<(), EngineError> {
        let (lease, grace) = (lease.as_millis().max(1) as u64, FLOOR_ORPHAN_GRACE.as_millis() as u64);
        try_join_all(floors.iter().map(|(channel, holder)| {
            let (mut conn, script) = (self.conn.clone(), &self.signals.floor_lease);
            let lapses = self.floor_lease_keys(self.keys.shard_of(channel)).0;
            async move {
                let mut invocation = script.key(lapses);
                invocation.arg(holder.as_str()).arg(channel).arg(lease).arg(grace);
                invocation.invoke_async::<i64>(&mut conn).await
            }
        }))
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Claims the orphaned floors of one shard (those of `gone` in the first batch), a
    /// batch at a time, and clears the `talking` indicator of each group talk's talker.
    pub(super) async fn claim_orphaned_floors_in(
        &self,
        shard: usize,
        mut gone: &[Id],
    ) -> Result<Vec<OrphanedFloor>, EngineError> {
        let (lapses, talks) = self.floor_lease_keys(shard);
        let horizon = (FLOOR_LEASE + FLOOR_ORPHAN_GRACE).saturating_sub(FLOOR_LEASE_QUIET).as_millis() as u64;
        let mut claimed = Vec::new();
        loop {
            let due: Vec<String> = self
                .signals
                .floor_orphans
                .key(&lapses)
                .key(&talks)
                .arg(LAPSE_BATCH)
                .arg(horizon)
                .arg(gone.iter().map(Id::as_str).collect::<Vec<_>>())
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(classify)?;
            gone = &[];
            for fields in due.chunks_exact(4) {
                let Some(mut orphan) = parse_orphan(&fields[1], &fields[2], &fields[3]) else {
                    tracing::warn!(channel = %fields[0], "an orphaned floor's talk is unreadable; its end is not announced");
                    continue;
                };
                if let FloorListeners::Group(group) = &orphan.listeners {
                    let user = &orphan.talker.user;
                    orphan.talking_ended = self.write_indicator(group, user, IndicatorKind::Talking, None).await?;
                }
                claimed.push(orphan);
            }
            if due.len() < 4 * LAPSE_BATCH {
                return Ok(claimed);
            }
        }
    }
}

/// A talk as `lua/floor_take.lua` keeps it, `s\nuser\ntalk\nlayout\nLISTENERS`, claimed
/// `held_ms` after it began.
fn parse_orphan(holder: &str, talk: &str, held_ms: &str) -> Option<OrphanedFloor> {
    let (_, talk) = talk.split_once('\n')?;
    let mut fields = talk.splitn(4, '\n');
    let (user, id, layout, listeners) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    Some(OrphanedFloor {
        talker: parse_talker(holder.to_owned(), &format!("{user}\n{id}\n{layout}"))?,
        listeners: FloorListeners::decode(listeners)?,
        held: Duration::from_millis(held_ms.parse().ok()?),
        talking_ended: false,
    })
}
