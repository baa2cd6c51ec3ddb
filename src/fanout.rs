//! This router's fan-out: the [`Hub`] (presence and indicators to dashboards) and the
//! [`Relay`] (transient frames to connections). It is what the broker delivers into
//! ([`BrokerEvents`]), so the engine knows nothing of either.

use std::sync::Arc;

use crate::{
    engine::{BrokerEvents, Missed},
    hub::Hub,
    presence::PresenceUpdate,
    protocol::live::IndicatorChange,
    relay::Relay,
    transient::{Audience, Control, Delivery},
};

pub struct FanOut {
    hub: Arc<Hub>,
    relay: Arc<Relay>,
}

impl FanOut {
    pub fn new(hub: Arc<Hub>, relay: Arc<Relay>) -> Self {
        FanOut { hub, relay }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Delivers a frame to this router's connections: the relay's for members, the hub's
    /// for dashboards (a frame for a group's dashboards is an INDICATOR_UPDATE, which the
    /// hub keeps in its view and numbers with its other changes). `local`: sent by this
    /// router rather than relayed from another.
    pub fn deliver(&self, delivery: &Delivery, local: bool) {
        self.relay.deliver(delivery);
        if let Audience::Group { dashboards: true, .. } = delivery.audience {
            match IndicatorChange::read(&delivery.frame) {
                Some(change) => {
                    self.hub.indicator(change, delivery.frame.clone(), local);
                }
                None => tracing::warn!("a frame for dashboards that is no INDICATOR_UPDATE; not shown to them"),
            }
        }
    }
}

impl BrokerEvents for FanOut {
    fn update(&self, update: PresenceUpdate) {
        self.hub.apply(update);
    }

    fn frame(&self, delivery: &Delivery) {
        self.deliver(delivery, false);
    }

    fn control(&self, control: &Control) {
        self.relay.control(control);
    }

    fn resync_needed(&self, missed: Missed) {
        self.hub.stale(missed.into());
        self.hub.request_resync();
    }
}
