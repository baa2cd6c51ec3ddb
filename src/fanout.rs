//! This router's fan-out: the [`Hub`] (presence to dashboards) and the [`Relay`] (transient
//! frames to connections). It is what the broker delivers into ([`BrokerEvents`]), so the
//! engine knows nothing of either.

use std::sync::Arc;

use crate::{
    engine::BrokerEvents,
    hub::Hub,
    presence::PresenceUpdate,
    relay::Relay,
    transient::{Control, Delivery},
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
}

impl BrokerEvents for FanOut {
    fn update(&self, update: PresenceUpdate) {
        self.hub.apply(update);
    }

    fn frame(&self, delivery: &Delivery) {
        self.relay.deliver(delivery);
    }

    fn control(&self, control: &Control) {
        self.relay.control(control);
    }

    fn resync_needed(&self) {
        self.hub.request_resync();
    }
}
