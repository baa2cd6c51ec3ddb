//! Pub/Sub between routers, the publishing side: every transition is published as JSON on
//! `{prefix}updates` (and, for subscribers that want only one kind, on `{prefix}online` or
//! `{prefix}offline`); each router's subscriber ([`super::subscriber`], started by
//! [`RedisBroker::subscribe`]) hands them to its [`BrokerEvents`].
//! PTT, TEXT and indicator frames go on `{prefix}relay` (msgpack, see
//! [`Delivery::encode`]) to every other router; they are transient, so a lost one is
//! simply lost, like a UDP packet of audio.
//! The replacement of a session by a newer one of its device travels there too
//! ([`Control::encode`]), in order with the frames.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Connection, classify,
    subscriber::{Receiving, Sinks, spawn_subscriber},
};
use crate::{
    engine::{Broker, BrokerEvents, EngineError},
    metrics,
    presence::PresenceUpdate,
    transient::{Control, Delivery},
};

/// Relayed frames waiting for the publisher; a fuller queue drops frames (audio is worth
/// nothing late) rather than holding up the talker.
const RELAY_QUEUE: usize = 4096;
/// Most relayed frames published in one pipeline.
const RELAY_BATCH: usize = 256;

pub struct RedisBroker {
    conn: Connection,
    prefix: String,
    /// This router's id: receivers skip relayed frames they sent themselves.
    origin: String,
    /// To the relay publisher task.
    relay: mpsc::Sender<Vec<u8>>,
    /// Tells the publisher to send what is queued and stop.
    closing: CancellationToken,
    publisher: Mutex<Option<JoinHandle<()>>>,
    /// Whether this router's subscription delivers (set by its subscriber).
    receiving: Receiving,
}

impl RedisBroker {
    /// Also starts the task that publishes relayed frames, until [`Broker::flush`].
    pub fn new(conn: Connection, prefix: String, origin: String) -> Self {
        let (relay, queue) = mpsc::channel(RELAY_QUEUE);
        let closing = CancellationToken::new();
        let channel = format!("{prefix}relay");
        let publisher = tokio::spawn(publish_relayed(conn.clone(), channel, queue, closing.clone()));
        let publisher = Mutex::new(Some(publisher));
        RedisBroker { conn, prefix, origin, relay, closing, publisher, receiving: Receiving::default() }
    }

    /// Subscribes this router to what the others publish, handing it to `events` until
    /// `shutdown`; `client` opens the subscription's own connections. The returned
    /// receiver resolves once the first subscription stands: the router reads its first
    /// snapshot only after that, so no update falls between the two.
    pub fn subscribe(
        &self,
        client: redis::Client,
        events: Arc<dyn BrokerEvents>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> oneshot::Receiver<()> {
        let sinks = Sinks { events, origin: self.origin.clone(), receiving: self.receiving.clone() };
        spawn_subscriber(client, self.conn.clone(), self.prefix.clone(), sinks, shutdown, tracker)
    }
}

/// Publishes relayed frames in order, a pipeline per batch. Connection tasks only queue
/// them, so a slow or unreachable Redis never stalls a talker or the users on its router.
/// Once `closing`, it publishes what is still queued (a stopping router's last STOPs and
/// indicator ends) and returns.
async fn publish_relayed(
    mut conn: Connection,
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
            let error = classify(e);
            ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => "relay", "kind" => error.kind()).increment(1);
            tracing::debug!(%error, "relayed frames lost");
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
        let json = serde_json::to_string(update).map_err(|e| EngineError::Internal(e.to_string()))?;
        let status_channel = if update.presence.status.is_online() { "online" } else { "offline" };
        pipe.publish(format!("{}updates", self.prefix), &json).ignore();
        pipe.publish(format!("{}{status_channel}", self.prefix), &json).ignore();
        Ok(())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    /// One pipeline for the whole batch.
    async fn publish(&self, updates: &[PresenceUpdate]) -> Result<(), EngineError> {
        let mut pipe = redis::pipe();
        for update in updates {
            self.add(&mut pipe, update)?;
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(classify)
    }

    async fn flush(&self) {
        self.closing.cancel();
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(publisher) = publisher {
            // Bounded like every Redis call: an unreachable Redis loses the frames anyway.
            let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
        }
    }

    /// False from when this router's subscription went quiet, or could not be re-established
    /// at once, until it is subscribed again.
    fn is_receiving(&self) -> bool {
        self.receiving.get()
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
