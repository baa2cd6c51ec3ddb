//! Group activity in Redis: indicators (`{p}indicators:G`, read by the group endpoint) and
//! PTT floors (`{p}floor:CHANNEL`), which keep two routers from granting one group's
//! floor twice. Both scripts take their keys in KEYS and use Redis' clock.

use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::{RedisPresence, now_ms, unavailable};
use crate::{engine::EngineError, id::Id, presence::SessionId, protocol::payload::IndicatorKind};

/// The scripts of this module.
pub struct SignalScripts {
    indicator: Script,
    floor_take: Script,
    floor_release: Script,
}

impl Default for SignalScripts {
    fn default() -> Self {
        SignalScripts {
            indicator: Script::new(include_str!("lua/indicator.lua")),
            floor_take: Script::new(include_str!("lua/floor_take.lua")),
            floor_release: Script::new(include_str!("lua/floor_release.lua")),
        }
    }
}

impl RedisPresence {
    fn indicators_key(&self, group: &Id) -> String {
        format!("{}indicators:{}", self.prefix, group)
    }

    fn floor_key(&self, channel: &str) -> String {
        format!("{}floor:{}", self.prefix, channel)
    }

    pub(super) async fn write_indicator(
        &self,
        group: &Id,
        user: &Id,
        kind: IndicatorKind,
        ttl: Option<Duration>,
    ) -> Result<(), EngineError> {
        let _: i64 = self
            .signals
            .indicator
            .key(self.indicators_key(group))
            .arg(format!("{}:{}", kind.as_str(), user))
            .arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn read_indicators(&self, group: &Id) -> Result<Vec<(IndicatorKind, Id)>, EngineError> {
        let mut conn = self.conn.clone();
        let now = now_ms(&mut conn).await?;
        let members: Vec<String> =
            conn.zrangebyscore(self.indicators_key(group), format!("({now}"), "+inf").await.map_err(unavailable)?;
        let mut live: Vec<(IndicatorKind, Id)> = members
            .iter()
            .filter_map(|m| {
                let (kind, user) = m.split_once(':')?;
                let kind = IndicatorKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
                Some((kind, Id::parse(user).ok()?))
            })
            .collect();
        live.sort();
        Ok(live)
    }

    pub(super) async fn claim_floor(
        &self,
        channel: &str,
        holder: &SessionId,
        hold: Duration,
    ) -> Result<bool, EngineError> {
        let granted: i64 = self
            .signals
            .floor_take
            .key(self.floor_key(channel))
            .arg(holder.as_str())
            .arg(hold.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(granted == 1)
    }

    pub(super) async fn drop_floor(&self, channel: &str, holder: &SessionId) -> Result<(), EngineError> {
        let _: i64 = self
            .signals
            .floor_release
            .key(self.floor_key(channel))
            .arg(holder.as_str())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
