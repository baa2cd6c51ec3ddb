//! Pub/Sub between routers: every transition is published as JSON on
//! `{prefix}updates` (and, for subscribers that want only one kind, on `{prefix}online` or
//! `{prefix}offline`); each router's subscriber feeds its hub. PTT, TEXT and indicator
//! frames go on `{prefix}relay` (msgpack, see [`Delivery::encode`]) into each router's
//! [`Relay`]; they are transient, so a lost one is simply lost, like a UDP packet of audio.
//! The replacement of a session by a newer one of its device travels there too
//! ([`Control::encode`]), in order with the frames.
//!
//! Pub/Sub drops whatever is sent while a subscriber is disconnected, so every
//! (re)subscription asks the node for a resync: it re-asserts its sessions and rebuilds
//! the hub from the store, and dashboards get a fresh snapshot without reconnecting. A
//! transition lost any other way (a router killed before it published) shows up as a gap
//! in the cluster-wide sequence and triggers the same resync.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{Client, aio::ConnectionManager};
use tokio::{
    sync::{
        Notify,
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{gaps::GapDetector, unavailable};
use crate::{
    engine::{Broker, EngineError},
    hub::Hub,
    metrics,
    presence::PresenceUpdate,
    relay::{Control, Delivery, Relay, Relayed},
};

/// Relayed frames waiting for the publisher; a fuller queue drops frames (audio is worth
/// nothing late) rather than holding up the talker.
const RELAY_QUEUE: usize = 4096;
/// Most relayed frames published in one pipeline.
const RELAY_BATCH: usize = 256;

pub struct RedisBroker {
    conn: ConnectionManager,
    prefix: String,
    /// This router's id: receivers skip relayed frames they sent themselves.
    origin: String,
    /// To the relay publisher task.
    relay: mpsc::Sender<Vec<u8>>,
    /// Tells the publisher to send what is queued and stop.
    closing: CancellationToken,
    publisher: Mutex<Option<JoinHandle<()>>>,
}

impl RedisBroker {
    /// Also starts the task that publishes relayed frames, until [`Broker::flush`].
    pub fn new(conn: ConnectionManager, prefix: String, origin: String) -> Self {
        let (relay, queue) = mpsc::channel(RELAY_QUEUE);
        let closing = CancellationToken::new();
        let channel = format!("{prefix}relay");
        let publisher = tokio::spawn(publish_relayed(conn.clone(), channel, queue, closing.clone()));
        RedisBroker { conn, prefix, origin, relay, closing, publisher: Mutex::new(Some(publisher)) }
    }
}

/// Publishes relayed frames in order, a pipeline per batch. Connection tasks only queue
/// them, so a slow or unreachable Redis never stalls a talker or the users on its router.
/// Once `closing`, it publishes what is still queued (a stopping router's last STOPs and
/// indicator ends) and returns.
async fn publish_relayed(
    mut conn: ConnectionManager,
    channel: String,
    mut queue: mpsc::Receiver<Vec<u8>>,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(RELAY_BATCH);
    loop {
        let received = tokio::select! {
            biased;
            n = queue.recv_many(&mut batch, RELAY_BATCH) => n,
            () = closing.cancelled() => {
                while let Ok(message) = queue.try_recv() {
                    batch.push(message);
                }
                batch.len()
            }
        };
        if received == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for message in batch.drain(..) {
            pipe.publish(&channel, message).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => "relay").increment(1);
            tracing::debug!(error = %e, "relayed frames lost: Redis unreachable");
        }
        if closing.is_cancelled() && queue.is_empty() {
            return;
        }
    }
}

impl RedisBroker {
    /// Queues a message for the relay publisher, or drops and counts it when the queue is
    /// full.
    fn queue(&self, message: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Closed(_)) = self.relay.try_send(message) {
            ::metrics::counter!(metrics::RELAY_DROPPED).increment(1);
        }
    }

    /// Adds one update's two PUBLISHes (`updates` and `online`/`offline`) to `pipe`.
    fn add(&self, pipe: &mut redis::Pipeline, update: &PresenceUpdate) -> Result<(), EngineError> {
        let json = serde_json::to_string(update).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let status_channel = if update.presence.status.is_online() { "online" } else { "offline" };
        pipe.publish(format!("{}updates", self.prefix), &json).ignore();
        pipe.publish(format!("{}{status_channel}", self.prefix), &json).ignore();
        Ok(())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, update: &PresenceUpdate) -> Result<(), EngineError> {
        self.publish_many(std::slice::from_ref(update)).await
    }

    async fn publish_many(&self, updates: &[PresenceUpdate]) -> Result<(), EngineError> {
        let mut pipe = redis::pipe();
        for update in updates {
            self.add(&mut pipe, update)?;
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(unavailable)
    }

    async fn flush(&self) {
        self.closing.cancel();
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(publisher) = publisher {
            // Bounded like every Redis call: an unreachable Redis loses the frames anyway.
            let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
        }
    }

    /// Queues the frame for the publisher. A full queue (Redis slow or down) drops the
    /// frame, counted in `presence_relay_dropped_total`.
    fn relay(&self, delivery: &Delivery) {
        self.queue(delivery.encode(&self.origin));
    }

    /// Queued behind the relayed frames, on the same channel, so it arrives after them.
    fn control(&self, control: &Control) {
        self.queue(control.encode(&self.origin));
    }
}

/// Where the subscriber hands what it receives.
pub struct Sinks {
    pub hub: Arc<Hub>,
    pub relay: Arc<Relay>,
    /// This router's id, to skip its own relayed frames.
    pub origin: String,
    /// Woken by keyspace `expired` events of user keys: an early sweep.
    pub sweep_now: Arc<Notify>,
}

/// How long a missing sequence number may stay missing (overtaken by a later publish from
/// another router) before it counts as lost.
const GAP_GRACE: Duration = Duration::from_secs(1);

fn resync_for_gap(hub: &Hub, gaps: &mut GapDetector) {
    ::metrics::counter!(metrics::BROKER_GAPS).increment(1);
    tracing::warn!("a presence update never arrived; rebuilding presence from Redis");
    gaps.reset();
    hub.request_resync();
}

/// Runs the subscriber until shutdown: `{prefix}updates` into the hub, keyspace
/// `expired` events of `{prefix}user:*` keys into an early sweep. The returned receiver
/// resolves once the first subscription stands: the router reads its first snapshot only
/// after that, so no update falls between the two. Every later subscription asks for a
/// resync.
pub fn spawn_subscriber(
    client: Client,
    prefix: String,
    sinks: Sinks,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> oneshot::Receiver<()> {
    let Sinks { hub, relay, origin, sweep_now } = sinks;
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    let mut first = Some(subscribed_tx);
    tracker.spawn(async move {
        let updates = format!("{prefix}updates");
        let relayed = format!("{prefix}relay");
        let expired = "__keyevent@0__:expired";
        let user_keys = format!("{prefix}user:");
        let mut backoff = Duration::from_millis(50);
        let mut gaps = GapDetector::new(GAP_GRACE);
        loop {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&[updates.as_str(), relayed.as_str(), expired]).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = tokio::time::timeout(Duration::from_secs(2), subscribed) => result,
            };
            let pubsub = match pubsub {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(_)) | Err(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            gaps.reset();
            tracing::info!("subscribed to {updates}");
            match first.take() {
                Some(tx) => {
                    let _ = tx.send(());
                }
                None => hub.request_resync(),
            }
            let mut messages = pubsub.into_on_message();
            let mut gap_check = tokio::time::interval(GAP_GRACE / 2);
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    message = messages.next() => message,
                    _ = gap_check.tick() => {
                        if gaps.overdue() {
                            resync_for_gap(&hub, &mut gaps);
                        }
                        continue;
                    }
                };
                let Some(message) = message else { break };
                let payload: &[u8] = message.get_payload_bytes();
                if message.get_channel_name() == relayed {
                    match Relayed::decode(payload) {
                        Some((from, relayed)) => {
                            ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "relay").increment(1);
                            match relayed {
                                _ if from == origin => {}
                                Relayed::Frame(delivery) => {
                                    relay.deliver(&delivery);
                                }
                                Relayed::Control(control) => relay.control(&control),
                            }
                        }
                        None => {
                            ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "invalid").increment(1);
                            tracing::warn!("ignoring a malformed message on {relayed}");
                        }
                    }
                    continue;
                }
                if message.get_channel_name() == expired {
                    if payload.starts_with(user_keys.as_bytes()) {
                        ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "expired").increment(1);
                        sweep_now.notify_one();
                    }
                    continue;
                }
                match serde_json::from_slice::<PresenceUpdate>(payload) {
                    Ok(update) => {
                        ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "update").increment(1);
                        if update.seq.is_some_and(|seq| gaps.saw(seq)) {
                            resync_for_gap(&hub, &mut gaps);
                        }
                        hub.apply(update);
                    }
                    Err(e) => {
                        ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "invalid").increment(1);
                        tracing::warn!(error = %e, "ignoring a malformed message on {updates}");
                    }
                }
            }
            tracing::warn!("lost the subscription to {updates}; resubscribing");
        }
    });
    subscribed_rx
}
