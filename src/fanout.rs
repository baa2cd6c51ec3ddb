//! This router's fan-out: the [`Hub`] (presence to dashboards), the [`Relay`] (transient
//! frames to connections) and the sweeper's wake-up. It is what the broker delivers into
//! ([`BrokerEvents`]), so the engine knows nothing of either.

use std::sync::Arc;

use tokio::sync::Notify;

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
    /// Wakes the sweeper early (a Redis `expired` event).
    sweep_now: Notify,
}

impl FanOut {
    pub fn new(hub: Arc<Hub>, relay: Arc<Relay>) -> Self {
        FanOut { hub, relay, sweep_now: Notify::new() }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Resolves once the broker hinted that a lease lapsed ([`BrokerEvents::sweep_soon`]);
    /// a hint given while nobody waits is kept for the next call.
    pub async fn sweep_requested(&self) {
        self.sweep_now.notified().await;
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

    fn sweep_soon(&self) {
        self.sweep_now.notify_one();
    }
}
