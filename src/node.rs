//! The node: one router's presence service, composing the engine with the local hub.
//!
//! Store calls decide transitions; the node publishes each one it is handed exactly
//! once, counts it, and runs the sweeper that ends leases nobody renewed.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::MissedTickBehavior;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    engine::{Engine, EngineError},
    hub::Hub,
    id::Id,
    metrics,
    presence::{Cause, PresenceUpdate, Session, SessionId, UserPresence, unix_ms},
};

pub struct Node {
    engine: Engine,
    hub: Arc<Hub>,
    router_id: String,
    next_session: AtomicU64,
    sweep_interval: Duration,
}

impl Node {
    pub fn new(engine: Engine, hub: Arc<Hub>, sweep_interval: Duration) -> Self {
        let router_id = format!("{:012x}", RandomState::new().hash_one((std::process::id(), unix_ms())) >> 16);
        Node { engine, hub, router_id, next_session: AtomicU64::new(1), sweep_interval }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name
    }

    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// A new session id, unique across the cluster (router id + counter).
    pub fn session(&self, user: Id, device_id: Option<Arc<str>>) -> Session {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        Session { id: SessionId::new(&self.router_id, n), user, device_id }
    }

    pub async fn connect(&self, session: &Session) -> Result<(), EngineError> {
        let result = self.engine.store.connect(session).await;
        self.announce("connect", result).await
    }

    pub async fn heartbeat(&self, session: &Session) -> Result<(), EngineError> {
        let result = self.engine.store.heartbeat(session).await;
        self.announce("heartbeat", result).await
    }

    pub async fn disconnect(&self, session: &Session) -> Result<(), EngineError> {
        let result = self.engine.store.disconnect(session).await;
        self.announce("disconnect", result).await
    }

    pub async fn lookup(&self, users: &[Id]) -> Result<Vec<UserPresence>, EngineError> {
        self.engine.store.lookup(users).await.inspect_err(|_| count_error("lookup"))
    }

    /// Ends the leases that ran out and publishes the resulting offlines.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let updates = self.engine.store.expire_due().await.inspect_err(|_| count_error("expire"))?;
        let n = updates.len();
        for update in updates {
            self.publish(update).await;
        }
        Ok(n)
    }

    async fn announce(
        &self,
        op: &'static str,
        result: Result<Option<PresenceUpdate>, EngineError>,
    ) -> Result<(), EngineError> {
        match result {
            Ok(Some(update)) => {
                self.publish(update).await;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                count_error(op);
                Err(e)
            }
        }
    }

    async fn publish(&self, update: PresenceUpdate) {
        ::metrics::counter!(metrics::TRANSITIONS, "cause" => update.cause.as_str()).increment(1);
        if update.cause == Cause::Expired {
            ::metrics::counter!(metrics::TTL_EXPIRATIONS).increment(1);
        }
        tracing::debug!(user = %update.presence.user_id, status = update.presence.status.as_str(),
            version = update.presence.version, cause = update.cause.as_str(), "transition");
        // A lost publish is repaired by the resync that follows the broker's reconnect.
        if let Err(e) = self.engine.broker.publish(&update).await {
            count_error("publish");
            tracing::warn!(error = %e, user = %update.presence.user_id, "publish failed");
        }
    }

    /// Seeds the hub from the store and starts the sweeper.
    pub async fn start(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        self.hub.reset(self.engine.store.online().await?);
        let node = Arc::clone(self);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(node.sweep_interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = node.sweep().await {
                            tracing::warn!(error = %e, "sweep failed");
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

fn count_error(op: &'static str) {
    ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => op).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{MemoryBroker, MemoryPresence},
        hub::HubEvent,
    };

    fn memory_node(ttl: Duration) -> Arc<Node> {
        let hub = Arc::new(Hub::new(64));
        let engine = Engine {
            name: "memory",
            store: Arc::new(MemoryPresence::new(ttl)),
            broker: Arc::new(MemoryBroker::new(hub.clone())),
        };
        Arc::new(Node::new(engine, hub, Duration::from_millis(250)))
    }

    #[tokio::test(start_paused = true)]
    async fn silent_user_goes_offline_once_within_ttl_plus_one_sweep() {
        let ttl = Duration::from_secs(60);
        let node = memory_node(ttl);
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        node.start(shutdown.clone(), &tracker).await.unwrap();
        let mut sub = node.hub().subscribe();
        let session = node.session(Id::parse("u").unwrap(), None);
        node.connect(&session).await.unwrap();
        assert!(matches!(sub.events.recv().await.unwrap(), HubEvent::Update { .. }));
        assert_eq!(node.hub().online_count(), 1);

        tokio::time::sleep(ttl - Duration::from_millis(300)).await;
        assert_eq!(node.hub().online_count(), 1, "not offline before the TTL");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(node.hub().online_count(), 0, "offline within TTL + one sweep interval");
        assert!(matches!(sub.events.try_recv().unwrap(), HubEvent::Update { .. }));
        tokio::time::sleep(ttl).await;
        assert!(sub.events.try_recv().is_err(), "exactly one offline");

        let (online, _) = node.hub().snapshot();
        assert!(online.is_empty());
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
