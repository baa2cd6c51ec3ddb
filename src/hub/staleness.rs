//! Whether this router's view of presence is fed, and what its dashboards are told when it
//! is not.
//!
//! The view stops being fed when the store is out of reach (Redis down, hung, refusing),
//! when the subscription to the other routers' transitions lapsed or went silent, and when
//! transitions went missing (a gap in the cluster-wide sequence, or a sequence that went
//! back because Redis lost its data). From the moment the router knows until the view is
//! rebuilt from the store, the view is *stale*: it keeps what it last knew (nobody is
//! shown offline because the router lost Redis), every dashboard gets STALE (43) at once
//! (a dashboard connecting meanwhile right after its snapshot), and FRESH (44) once the
//! rebuilt view has been sent (see [`crate::node`] for when that is). A cause more serious
//! than the one first reported (the store out of reach after the subscription dropped)
//! is announced with another STALE of the same `since`.

use bytes::Bytes;

use super::{Hub, HubEvent};
use crate::{engine::Missed, metrics, presence::unix_ms, protocol};

/// Why the view is stale; the `reason` of STALE and FRESH and of the API's `stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// A store call failed or timed out: Redis down, hung, or refusing writes.
    StoreUnreachable,
    /// Redis lost its data (restarted empty, `FLUSHALL`, a failover to a replica behind).
    StoreDataLost,
    /// The subscription to the other routers' transitions lapsed or went silent.
    SubscriptionLost,
    /// Transitions never arrived: a gap in the cluster-wide sequence.
    UpdatesMissed,
}

impl StaleReason {
    /// Every reason, for metrics shown at 0 before the first.
    pub const ALL: [StaleReason; 4] = [
        StaleReason::StoreUnreachable,
        StaleReason::StoreDataLost,
        StaleReason::SubscriptionLost,
        StaleReason::UpdatesMissed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::StoreUnreachable => "store_unreachable",
            StaleReason::StoreDataLost => "store_data_lost",
            StaleReason::SubscriptionLost => "subscription_lost",
            StaleReason::UpdatesMissed => "updates_missed",
        }
    }

    /// Whether, after a spell for this reason, Redis may lack sessions that live on other
    /// routers until they re-assert them: Redis was out of reach or lost its data, or this
    /// router cannot tell (its subscription lapsed, so it may have missed a restart). Not
    /// after transitions went missing alone: Redis holds everything then.
    pub fn may_lack_sessions(self) -> bool {
        self != StaleReason::UpdatesMissed
    }

    /// How much the reason says about the outage: a stale view reports the highest seen.
    fn rank(self) -> u8 {
        match self {
            StaleReason::StoreUnreachable => 3,
            StaleReason::StoreDataLost => 2,
            StaleReason::SubscriptionLost => 1,
            StaleReason::UpdatesMissed => 0,
        }
    }
}

impl From<Missed> for StaleReason {
    fn from(missed: Missed) -> Self {
        match missed {
            Missed::Transitions => StaleReason::UpdatesMissed,
            Missed::StoreData => StaleReason::StoreDataLost,
            Missed::Subscription => StaleReason::SubscriptionLost,
        }
    }
}

/// A stale spell: since when (Unix ms, when the router first knew) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    pub since_ms: u64,
    pub reason: StaleReason,
}

impl Stale {
    /// The STALE frame that announces it.
    pub fn frame(&self) -> Bytes {
        protocol::stale_frame(self.since_ms, self.reason.as_str())
    }
}

impl Hub {
    /// The view is no longer fed, for `reason`: from now on, unless it is stale already
    /// (then only a more serious reason is announced, with the same `since`). Every
    /// dashboard is sent STALE through the ring.
    pub fn stale(&self, reason: StaleReason) {
        let mut view = self.view();
        let stale = match view.stale {
            None => Stale { since_ms: unix_ms(), reason },
            Some(stale) if reason.rank() > stale.reason.rank() => Stale { reason, ..stale },
            Some(_) => return,
        };
        if view.stale.is_none() {
            tracing::warn!(reason = reason.as_str(), "this router's view of presence is stale");
        }
        view.stale = Some(stale);
        ::metrics::counter!(metrics::VIEW_STALE_REASONS, "reason" => reason.as_str()).increment(1);
        ::metrics::gauge!(metrics::VIEW_STALE).set(1.0);
        let _ = self.events.send(HubEvent::Stale(stale.frame()));
    }

    /// The view was rebuilt and dashboards were sent it: every dashboard is sent FRESH
    /// (after the snapshot already on the ring). Nothing when the view was not stale.
    pub fn fresh(&self) {
        let mut view = self.view();
        let Some(stale) = view.stale.take() else { return };
        let lasted_ms = unix_ms().saturating_sub(stale.since_ms);
        tracing::info!(reason = stale.reason.as_str(), lasted_ms, "this router's view of presence is fresh again");
        ::metrics::gauge!(metrics::VIEW_STALE).set(0.0);
        let frame = protocol::fresh_frame(stale.since_ms, stale.reason.as_str());
        let _ = self.events.send(HubEvent::Fresh(frame));
    }

    /// The stale spell under way; `None` while the view is fed.
    pub fn staleness(&self) -> Option<Stale> {
        self.view().stale
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::update, *};
    use crate::scope::Scope;

    fn payload(event: &HubEvent) -> (u64, rmpv::Value) {
        let frame = match event {
            HubEvent::Stale(frame) | HubEvent::Fresh(frame) => frame,
            other => panic!("expected STALE or FRESH, got {other:?}"),
        };
        let value = rmpv::decode::read_value(&mut &frame[..]).unwrap();
        (value[1].as_u64().unwrap(), value[5].clone())
    }

    #[test]
    fn a_spell_is_announced_once_escalated_once_and_ended_once() {
        let hub = Hub::new(16);
        let mut sub = hub.subscribe(&Scope::everyone());
        assert!(sub.stale.is_none());
        hub.stale(StaleReason::SubscriptionLost);
        let (kind, first) = payload(&sub.events.try_recv().unwrap());
        assert_eq!((kind, first["reason"].as_str()), (43, Some("subscription_lost")));
        hub.stale(StaleReason::UpdatesMissed);
        assert!(sub.events.try_recv().is_err(), "a lesser reason changes nothing");
        hub.stale(StaleReason::StoreUnreachable);
        let (_, escalated) = payload(&sub.events.try_recv().unwrap());
        assert_eq!(escalated["reason"].as_str(), Some("store_unreachable"));
        assert_eq!(escalated["since"], first["since"], "the same spell");

        let late = hub.subscribe(&Scope::everyone());
        assert!(late.stale.is_some(), "a dashboard subscribing now is told after its snapshot");

        hub.fresh();
        let (kind, fresh) = payload(&sub.events.try_recv().unwrap());
        assert_eq!((kind, fresh["since"].clone()), (44, first["since"].clone()));
        assert_eq!(fresh["reason"].as_str(), Some("store_unreachable"));
        hub.fresh();
        assert!(sub.events.try_recv().is_err(), "fresh once");
        assert!(hub.staleness().is_none());
    }

    #[test]
    fn a_stale_rebuild_keeps_unlisted_users_until_a_confirming_one() {
        use crate::presence::{Snapshot, Status};
        let hub = Hub::new(16);
        let (here, elsewhere) = (update("here", Status::Online, 1), update("elsewhere", Status::Online, 1));
        hub.apply(here.clone());
        hub.apply(elsewhere);
        let listed = || Snapshot { users: vec![here.presence.clone()], watermark: 100, position: None };
        assert_eq!(hub.reset(listed(), Vec::new(), 0, true), 1, "not listed (yet): kept");
        assert_eq!(hub.online_count(), 2);
        assert_eq!(hub.reset(listed(), Vec::new(), 0, false), 0, "still not listed: offline");
        assert_eq!(hub.online_count(), 1);
    }
}
