//! Pub/Sub between routers, the publishing side: every transition is published as JSON on
//! `{prefix}updates` (and, for subscribers that want only one kind, on `{prefix}online` or
//! `{prefix}offline`); each router's subscriber ([`super::subscriber`], started by
//! [`RedisBroker::subscribe`]) hands them to its [`BrokerEvents`].
//! Relayed frames are msgpack (see [`Delivery::encode`]) and transient: a lost one is
//! simply lost, like a UDP packet of audio. A group's member frames (PTT and TEXT: an
//! [`Audience::Group`] without dashboards), the bulk of the traffic, go on the group's own
//! channel ([`group_channel`]), which only the routers serving the group subscribe to (see
//! [`super::groups`]); every other frame (indicators, which dashboards of any router may
//! watch; private channels; visibility news) goes on `{prefix}relay`, which every router
//! subscribes to. So do the messages about one session ([`Control::encode`]: replaced,
//! ended).
//!
//! A session message travels in order after the frames its router relayed before it (a
//! replaced talker's STOP before the news that it ended), although they go on different
//! channels: one task publishes them all, in order, over one connection, Redis runs one
//! client's commands in order and appends each message to a subscriber's output as it
//! runs the PUBLISH, and each router reads every channel it subscribes to from one
//! connection. This holds on one Redis (or a primary with its replicas); on a Redis
//! Cluster, channels of different shards would be published and read over different
//! connections.

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
    groups::{Served, group_channel},
    subscriber::{Receiving, Sinks, spawn_subscriber},
};
use crate::{
    engine::{Broker, BrokerEvents, EngineError},
    id::Id,
    metrics,
    presence::PresenceUpdate,
    transient::{Audience, Control, Delivery},
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
    /// To the relay publisher task: a message and its group (`None`: the shared relay
    /// channel).
    relay: mpsc::Sender<Outgoing>,
    /// Tells the publisher to send what is queued and stop.
    closing: CancellationToken,
    publisher: Mutex<Option<JoinHandle<()>>>,
    /// Whether this router's subscription delivers (set by its subscriber).
    receiving: Receiving,
    /// The groups whose channels this router's subscriber holds.
    served: Arc<Served>,
}

/// A relayed message on its way to Redis, with the group whose channel it goes on (`None`:
/// `{prefix}relay`).
type Outgoing = (Option<Id>, Vec<u8>);

impl RedisBroker {
    /// Also starts the task that publishes relayed frames, until [`Broker::flush`].
    pub fn new(conn: Connection, prefix: String, origin: String) -> Self {
        let (relay, queue) = mpsc::channel(RELAY_QUEUE);
        let closing = CancellationToken::new();
        let publisher = tokio::spawn(publish_relayed(conn.clone(), prefix.clone(), queue, closing.clone()));
        let publisher = Mutex::new(Some(publisher));
        let (receiving, served) = (Receiving::default(), Arc::default());
        RedisBroker { conn, prefix, origin, relay, closing, publisher, receiving, served }
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
        let (conn, prefix, served) = (self.conn.clone(), self.prefix.clone(), self.served.clone());
        spawn_subscriber(client, conn, prefix, served, sinks, shutdown, tracker)
    }
}

/// Publishes relayed frames in order, a pipeline per batch. Connection tasks only queue
/// them, so a slow or unreachable Redis never stalls a talker or the users on its router.
/// Once `closing`, it publishes what is still queued (a stopping router's last STOPs and
/// indicator ends) and returns.
async fn publish_relayed(
    mut conn: Connection,
    prefix: String,
    mut queue: mpsc::Receiver<Outgoing>,
    closing: CancellationToken,
) {
    let shared = format!("{prefix}relay");
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
        for (group, message) in batch.drain(..) {
            match group {
                Some(group) => pipe.publish(group_channel(&prefix, &group), message),
                None => pipe.publish(&shared, message),
            };
            pipe.ignore();
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
    fn queue(&self, message: Outgoing) {
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

    /// Queues the frame for the publisher: a group's member frame for its group's channel,
    /// any other for the shared one. A full queue (Redis slow or down) drops the frame,
    /// counted in `presence_relay_dropped_total`.
    fn relay(&self, delivery: &Delivery) {
        let group = match &delivery.audience {
            Audience::Group { group, dashboards: false } => Some(group.clone()),
            _ => None,
        };
        self.queue((group, delivery.encode(&self.origin)));
    }

    /// Queued behind the relayed frames, so it arrives after them (see the module's doc).
    fn control(&self, control: &Control) {
        self.queue((None, control.encode(&self.origin)));
    }

    /// Records the change and wakes the subscriber, which follows it.
    fn serve_group(&self, group: &Id, serving: bool) {
        self.served.set(group, serving);
    }
}
