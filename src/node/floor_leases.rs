//! The leases of this router's floors, and the end of other routers' orphaned ones (see
//! [`crate::engine::FLOOR_LEASE`]): while a session of this router holds a floor, the
//! router renews its lease every [`FLOOR_LEASE_RENEW`]; every sweep claims the floors
//! whose lease lapsed (their router died), or whose talker it showed offline, and
//! announces each talk's end as the talker's
//! router would have: a STOP in the talker's name (reason [`ROUTER_LOST`]) to its
//! listeners, and on a group the end of `talking` to its members and dashboards.

use std::sync::Arc;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Node, timed};
use crate::{
    engine::{EngineError, FLOOR_LEASE, FLOOR_LEASE_RENEW, FloorListeners, OrphanedFloor},
    id::Id,
    metrics,
    presence::{PresenceUpdate, Status},
    protocol::{
        self, ChannelType,
        message_type::{STOP, label},
        payload::IndicatorKind,
        voiceping,
    },
    transient::{Audience, Delivery},
};

/// The reason of the STOP a talk's listeners get when its router died mid-talk.
pub const ROUTER_LOST: &str = "router_lost";

impl Node {
    /// Renews the leases of the floors this router's sessions hold, every
    /// [`FLOOR_LEASE_RENEW`], all in one call. Skipped while degraded (the store is not
    /// asked); the first renewal after the resync comes within the interval, before the
    /// other routers sweep again ([`super::Timing::recovery_grace`]).
    pub(super) async fn floor_leaser(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLOOR_LEASE_RENEW);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let held: Vec<_> = self
                .floors()
                .iter()
                .filter(|(_, floor)| floor.until > now)
                .map(|(channel, floor)| (channel.clone(), floor.talker.session.clone()))
                .collect();
            if held.is_empty() || self.is_degraded() {
                continue;
            }
            let result = store!(self, signals.renew_floors(&held, FLOOR_LEASE));
            let _ = self.check("floor", result);
        }
    }

    /// Claims the floors whose router died, and those of the users this sweep just showed
    /// offline, and announces the end of each talk.
    pub(super) async fn end_orphaned_floors(&self, updates: &[PresenceUpdate]) -> Result<(), EngineError> {
        let gone: Vec<Id> = updates
            .iter()
            .filter(|update| update.presence.status == Status::Offline)
            .map(|update| update.presence.user_id.clone())
            .collect();
        let result = store!(self, signals.claim_orphaned_floors(&gone));
        for orphan in self.check("floor", result)? {
            ::metrics::counter!(metrics::FLOORS_ORPHANED).increment(1);
            tracing::info!(talker = %orphan.talker.user, session = %orphan.talker.session,
                held_ms = orphan.held.as_millis() as u64, "ended the talk of a router that is gone");
            self.announce_orphan(&orphan);
        }
        Ok(())
    }

    /// The STOP its listeners would have had from the talker's router, then the end of its
    /// `talking` (when the store had it live: never for an invisible talker).
    fn announce_orphan(&self, orphan: &OrphanedFloor) {
        let talker = &orphan.talker;
        let (kind, to, audience, except) = match &orphan.listeners {
            FloorListeners::Group(group) => {
                let audience = Audience::Group { group: group.clone(), dashboards: false };
                (ChannelType::Group, group, audience, Some(talker.user.clone()))
            }
            FloorListeners::User { user, groups } => {
                let audience = match groups {
                    Some(groups) => Audience::UserIn { user: user.clone(), groups: groups.clone() },
                    None => Audience::User(user.clone()),
                };
                // The private channel to oneself reaches the talker's own sessions too.
                let except = (*user != talker.user).then(|| talker.user.clone());
                (ChannelType::Private, user, audience, except)
            }
        };
        let (id, layout) = (&talker.talk, talker.with_message_id);
        let frame = voiceping::talk_stop(kind, &talker.user, to, id, layout, orphan.held, ROUTER_LOST);
        ::metrics::counter!(metrics::RELAYED, "type" => label(STOP)).increment(1);
        self.send(Delivery { audience, except, frame });
        if let (FloorListeners::Group(group), true) = (&orphan.listeners, orphan.talking_ended) {
            let talking = IndicatorKind::Talking;
            ::metrics::counter!(metrics::INDICATORS, "type" => talking.as_str(), "active" => "false").increment(1);
            let frame = protocol::indicator_frame(group, &talker.user, talking, false);
            let audience = Audience::Group { group: group.clone(), dashboards: true };
            self.send(Delivery { audience, except: Some(talker.user.clone()), frame });
        }
    }
}
