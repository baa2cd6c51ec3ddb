//! Group activity in Redis: indicators (`{p}indicators:G`, read by the group endpoint) and
//! PTT floors (`{p}floor:CHANNEL`, see `lua/floor_take.lua`), which keep two routers from
//! granting one channel's floor twice and let any router take an idle one over; their
//! talks' leases, which let any router end the talk of one that died, are in
//! `floor_leases.rs`. The
//! scripts take their keys in KEYS and use Redis' clock. A group's
//! indicators and the index of their lapses live in the group's shard, a floor in its
//! channel's (see [`super::Keyspace`]).

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::{AsyncCommands, Script};

use super::{RedisPresence, classify, now_ms};
use crate::{
    engine::{EngineError, FLOOR_LEASE, FLOOR_ORPHAN_GRACE, FloorClaim, FloorTake, OrphanedFloor, SignalStore, Talker},
    id::Id,
    presence::SessionId,
    protocol::payload::IndicatorKind,
};

/// How long after its lapse an indicator whose router did not clear it is taken for
/// orphaned (its router died) and its end announced by whichever router claims it. The
/// router that set it clears it at the lapse on its own clock; this covers the clocks'
/// difference and the call's round trip, so the two never both announce it.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Most orphaned indicators claimed by one call.
pub(super) const LAPSE_BATCH: usize = 256;

/// The scripts of this module.
pub struct SignalScripts {
    indicator: Script,
    indicator_lapses: Script,
    floor_take: Script,
    floor_touch: Script,
    floor_release: Script,
    pub(super) floor_lease: Script,
    pub(super) floor_orphans: Script,
}

impl Default for SignalScripts {
    fn default() -> Self {
        SignalScripts {
            indicator: Script::new(include_str!("lua/indicator.lua")),
            indicator_lapses: Script::new(include_str!("lua/indicator_lapses.lua")),
            floor_take: Script::new(include_str!("lua/floor_take.lua")),
            floor_touch: Script::new(include_str!("lua/floor_touch.lua")),
            floor_release: Script::new(include_str!("lua/floor_release.lua")),
            floor_lease: Script::new(include_str!("lua/floor_lease.lua")),
            floor_orphans: Script::new(include_str!("lua/floor_orphans.lua")),
        }
    }
}

impl RedisPresence {
    fn indicators_key(&self, group: &Id) -> String {
        self.keys.key(self.keys.shard_of(group.as_str()), &format!("indicators:{group}"))
    }

    /// The index of lapses of the indicators of `shard`'s groups.
    fn lapses_key(&self, shard: usize) -> String {
        self.keys.key(shard, "indicator_lapses")
    }

    fn floor_key(&self, channel: &str) -> String {
        self.keys.key(self.keys.shard_of(channel), &format!("floor:{channel}"))
    }

    /// The leases of `shard`'s floors and their talks (see `lua/floor_take.lua`).
    pub(super) fn floor_lease_keys(&self, shard: usize) -> (String, String) {
        (self.keys.key(shard, "floor_lapses"), self.keys.key(shard, "floor_talks"))
    }

    /// Sets (`Some(ttl)`) or clears an indicator; a clear answers whether it was live (or
    /// lapsed but not yet claimed as an orphan).
    pub(super) async fn write_indicator(
        &self,
        group: &Id,
        user: &Id,
        kind: IndicatorKind,
        ttl: Option<Duration>,
    ) -> Result<bool, EngineError> {
        let indexed: i64 = self
            .signals
            .indicator
            .key(self.indicators_key(group))
            .key(self.lapses_key(self.keys.shard_of(group.as_str())))
            .arg(format!("{}:{}", kind.as_str(), user))
            .arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64))
            .arg(group.as_str())
            .arg(ORPHAN_GRACE.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        Ok(indexed == 1)
    }

    /// Claims the orphaned indicators of one shard, a batch at a time.
    async fn claim_orphans_in(&self, shard: usize) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError> {
        let mut claimed = Vec::new();
        loop {
            let due: Vec<String> = self
                .signals
                .indicator_lapses
                .key(self.lapses_key(shard))
                .arg(LAPSE_BATCH)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(classify)?;
            let full = due.len() == LAPSE_BATCH;
            claimed.extend(due.iter().filter_map(|indexed| parse_indexed(indexed)));
            if !full {
                return Ok(claimed);
            }
        }
    }
}

#[async_trait]
impl SignalStore for RedisPresence {
    async fn set_indicator(
        &self,
        group: &Id,
        user: &Id,
        kind: IndicatorKind,
        ttl: Option<Duration>,
    ) -> Result<(), EngineError> {
        self.write_indicator(group, user, kind, ttl).await.map(drop)
    }

    /// Claims the indicators whose router never cleared them, past their lapse and
    /// `ORPHAN_GRACE`, in every shard; the script removes each one it returns, so exactly
    /// one caller gets it.
    async fn claim_orphaned_indicators(&self) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError> {
        let shards = try_join_all((0..self.keys.shards()).map(|shard| self.claim_orphans_in(shard))).await?;
        Ok(shards.into_iter().flatten().collect())
    }

    async fn indicators(&self, group: &Id) -> Result<Vec<(IndicatorKind, Id)>, EngineError> {
        let mut conn = self.conn.clone();
        let now = now_ms(&mut conn).await?;
        let members: Vec<String> =
            conn.zrangebyscore(self.indicators_key(group), format!("({now}"), "+inf").await.map_err(classify)?;
        let mut live: Vec<(IndicatorKind, Id)> = members.iter().filter_map(|m| parse_member(m)).collect();
        live.sort();
        Ok(live)
    }

    /// From each shard's index of lapses: an indicator is live while its lapse (its score
    /// there, less [`ORPHAN_GRACE`]) is ahead of Redis' clock.
    async fn live_indicators(&self) -> Result<Vec<(Id, IndicatorKind, Id)>, EngineError> {
        let mut conn = self.conn.clone();
        let live_after = now_ms(&mut conn).await? + ORPHAN_GRACE.as_millis() as u64;
        let shards = try_join_all((0..self.keys.shards()).map(|shard| {
            let mut conn = conn.clone();
            let key = self.lapses_key(shard);
            async move { conn.zrangebyscore::<_, _, _, Vec<String>>(key, format!("({live_after}"), "+inf").await }
        }))
        .await
        .map_err(classify)?;
        let mut live: Vec<(Id, IndicatorKind, Id)> =
            shards.iter().flatten().filter_map(|indexed| parse_indexed(indexed)).collect();
        live.sort();
        Ok(live)
    }

    async fn take_floor(&self, channel: &str, claim: &FloorClaim) -> Result<FloorTake, EngineError> {
        let talker = &claim.talker;
        let (lapses, talks) = self.floor_lease_keys(self.keys.shard_of(channel));
        let reply: Vec<redis::Value> = self
            .signals
            .floor_take
            .key(self.floor_key(channel))
            .key(lapses)
            .key(talks)
            .arg(talker.session.as_str())
            .arg(format!("{}\n{}\n{}", talker.user, talker.talk, u8::from(talker.with_message_id)))
            .arg(claim.hold.as_millis().max(1) as u64)
            .arg(claim.idle.map_or(0, |idle| idle.as_millis().max(1) as u64))
            .arg(channel)
            .arg(claim.listeners.encode())
            .arg(FLOOR_LEASE.as_millis() as u64)
            .arg(FLOOR_ORPHAN_GRACE.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        let int = |value: &redis::Value| redis::from_redis_value_ref::<i64>(value).ok();
        let text = |value: &redis::Value| redis::from_redis_value_ref::<String>(value).ok();
        match reply.as_slice() {
            [answer] if int(answer) == Some(1) => Ok(FloorTake::Granted),
            [answer] if int(answer) == Some(0) => Ok(FloorTake::Busy),
            [_, session, talker, held] => {
                let (session, talker, held) = (text(session), text(talker), text(held));
                let from = session.zip(talker).and_then(|(session, talker)| parse_talker(session, &talker));
                let held = held.and_then(|held| held.parse().ok()).map(Duration::from_millis);
                match from.zip(held) {
                    Some((from, held)) => Ok(FloorTake::TakenOver { from, held }),
                    None => Err(EngineError::Protocol(format!("a floor taken from {reply:?}"))),
                }
            }
            _ => Err(EngineError::Protocol(format!("floor_take answered {reply:?}"))),
        }
    }

    async fn touch_floor(&self, channel: &str, holder: &SessionId, idle: Duration) -> Result<(), EngineError> {
        let _: i64 = self
            .signals
            .floor_touch
            .key(self.floor_key(channel))
            .arg(holder.as_str())
            .arg(idle.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn release_floor(&self, channel: &str, holder: &SessionId) -> Result<(), EngineError> {
        let (lapses, talks) = self.floor_lease_keys(self.keys.shard_of(channel));
        let _: i64 = self
            .signals
            .floor_release
            .key(self.floor_key(channel))
            .key(lapses)
            .key(talks)
            .arg(holder.as_str())
            .arg(channel)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn renew_floors(&self, floors: &[(String, SessionId)], lease: Duration) -> Result<(), EngineError> {
        self.renew_floor_leases(floors, lease).await
    }

    async fn claim_orphaned_floors(&self, gone: &[Id]) -> Result<Vec<OrphanedFloor>, EngineError> {
        let shards =
            try_join_all((0..self.keys.shards()).map(|shard| self.claim_orphaned_floors_in(shard, gone))).await?;
        Ok(shards.into_iter().flatten().collect())
    }
}

/// The talker a floor was taken from: its session, and `user\ntalk\nlayout` as
/// [`SignalStore::take_floor`] wrote it (ids hold no control characters).
pub(super) fn parse_talker(session: String, talker: &str) -> Option<Talker> {
    let mut fields = talker.splitn(3, '\n');
    let (user, talk, layout) = (fields.next()?, fields.next()?, fields.next()?);
    Some(Talker {
        session: SessionId::from(session),
        user: Id::parse(user).ok()?,
        talk: talk.into(),
        with_message_id: layout == "1",
    })
}

/// A member of the index of lapses, `G\ntype:user`.
fn parse_indexed(indexed: &str) -> Option<(Id, IndicatorKind, Id)> {
    let (group, member) = indexed.split_once('\n')?;
    let (kind, user) = parse_member(member)?;
    Some((Id::parse(group).ok()?, kind, user))
}

/// A group zset member, `type:user`.
fn parse_member(member: &str) -> Option<(IndicatorKind, Id)> {
    let (kind, user) = member.split_once(':')?;
    let kind = IndicatorKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some((kind, Id::parse(user).ok()?))
}
