//! Pub/Sub between routers, the publishing side. Channel names are those of the
//! [`Keyspace`]: `{p}name` on one Redis, and on a Redis Cluster one of each per shard, with
//! the shard's hash tag, published with SPUBLISH (sharded Pub/Sub: only the master of the
//! channel's slot delivers it, instead of every node).
//!
//! - Every transition is published as JSON on its user's shard's `updates` (and, for
//!   subscribers that want only one kind, `online` or `offline`); each router's subscriber
//!   ([`super::subscriber`] on one Redis, [`super::sharded`] on a cluster, started by
//!   [`RedisBroker::subscribe`]) hands them to its [`BrokerEvents`].
//! - Relayed frames are msgpack (see [`Delivery::encode`]) and transient: a lost one is
//!   simply lost, like a UDP packet of audio. A group's member frames (PTT and TEXT: an
//!   [`Audience::Group`] without dashboards), the bulk of the traffic, go on the group's
//!   own channel ([`Keyspace::group_channel`]), which only the routers serving the group
//!   subscribe to (see [`super::groups`]). Every other frame goes on the `relay` channel of
//!   its group's or user's shard, which every router subscribes to: a group's indicators
//!   (dashboards on any router may watch them), private frames, visibility news.
//! - Messages about one session ([`Control::encode`]: replaced, ended) go on shard 0's
//!   `relay`.
//!
//! Order: a group's frames all go to its shard, so they arrive in the order they were
//! relayed (a STOP before the end of `talking`): one task publishes them in order, a
//! shard's channels live on one node, which delivers one client's messages in order, and
//! each router reads a node's channels from one connection. A session message is published
//! only once everything relayed before it has been (each node acknowledged it): a replaced
//! talker's STOP reaches every node before the news that it ended goes out, so the new
//! session's START, sent after that news, follows the STOP on the group's node.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Connection, Keyspace, RedisConfig, RedisPresence, classify,
    groups::Served,
    inbox::{Receiving, Sinks},
    log::LogReader,
    sharded::spawn_sharded_subscriber,
    subscriber::{SUBSCRIBE_TIMEOUT, spawn_subscriber},
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
    keys: Keyspace,
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
    /// Reads transitions the subscription missed from the store's change log.
    log: LogReader,
    /// The groups whose channels this router's subscriber holds.
    served: Arc<Served>,
}

/// A relayed message on its way to Redis.
struct Outgoing {
    /// The shard of its channel.
    shard: usize,
    channel: String,
    message: Vec<u8>,
    /// Sent only once every message queued before it is published: a session message
    /// (see the module's doc).
    after_the_rest: bool,
}

impl RedisBroker {
    /// The broker of `store`'s Redis, on its connection and keyspace. Also starts the task
    /// that publishes relayed frames, until [`Broker::flush`].
    pub fn new(store: &RedisPresence, origin: String) -> Self {
        let (conn, keys, log) = (store.connection(), store.keyspace().clone(), store.log_reader());
        let (relay, queue) = mpsc::channel(RELAY_QUEUE);
        let closing = CancellationToken::new();
        let publisher = tokio::spawn(publish_relayed(conn.clone(), keys.clone(), queue, closing.clone()));
        let publisher = Mutex::new(Some(publisher));
        let (receiving, served) = (Receiving::default(), Arc::default());
        RedisBroker { conn, keys, origin, relay, closing, publisher, receiving, served, log }
    }

    /// Subscribes this router to what the others publish, handing it to `events` until
    /// `shutdown`; the subscription opens its own connections, as `config` says. The
    /// returned receiver resolves once the first subscription stands: the router reads its
    /// first snapshot only after that, so no update falls between the two.
    pub fn subscribe(
        &self,
        config: &RedisConfig,
        events: Arc<dyn BrokerEvents>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<oneshot::Receiver<()>> {
        let sinks = Sinks { events, origin: self.origin.clone(), receiving: self.receiving.clone() };
        let (conn, log, served) = (self.conn.clone(), self.log.clone(), self.served.clone());
        Ok(match config.cluster {
            Some(_) => spawn_sharded_subscriber(config, conn, log, served, sinks, shutdown, tracker)?,
            None => spawn_subscriber(config.client()?, conn, log, served, sinks, shutdown, tracker),
        })
    }
}

/// A PUBLISH of `message` on `channel`: SPUBLISH (sharded Pub/Sub, delivered by the
/// channel's shard alone) on Redis Cluster, where a plain PUBLISH would go to every node.
fn publish_cmd(keys: &Keyspace, channel: &str, message: &[u8]) -> redis::Cmd {
    let mut cmd = redis::cmd(if keys.is_sharded() { "SPUBLISH" } else { "PUBLISH" });
    cmd.arg(channel).arg(message);
    cmd
}

/// Runs one pipeline per shard that `messages` (shard, channel, message) go to, at once: a
/// pipeline may not span slots on Redis Cluster. Order is kept within each shard, so
/// within each channel.
async fn publish_all(
    conn: &Connection,
    keys: &Keyspace,
    messages: impl IntoIterator<Item = (usize, String, Vec<u8>)>,
) -> Result<(), EngineError> {
    let mut pipes: Vec<Option<redis::Pipeline>> = vec![None; keys.shards()];
    for (shard, channel, message) in messages {
        pipes[shard].get_or_insert_with(redis::pipe).add_command(publish_cmd(keys, &channel, &message)).ignore();
    }
    try_join_all(pipes.into_iter().flatten().map(|pipe| {
        let mut conn = conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await.map_err(classify) }
    }))
    .await?;
    Ok(())
}

/// Publishes relayed frames in order, a pipeline per batch. Connection tasks only queue
/// them, so a slow or unreachable Redis never stalls a talker or the users on its router.
/// Once `closing`, it publishes what is still queued (a stopping router's last STOPs and
/// indicator ends) and returns.
async fn publish_relayed(
    conn: Connection,
    keys: Keyspace,
    mut queue: mpsc::Receiver<Outgoing>,
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
        // A session message starts a new round, sent once the one before is published.
        while !batch.is_empty() {
            let end = batch.iter().skip(1).position(|out| out.after_the_rest).map_or(batch.len(), |i| i + 1);
            let round = batch.drain(..end).map(|out| (out.shard, out.channel, out.message));
            if let Err(error) = publish_all(&conn, &keys, round).await {
                ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => "relay", "kind" => error.kind()).increment(1);
                tracing::debug!(%error, "relayed frames lost");
            }
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

    /// One update's two messages, on its user's shard's `updates` and `online` or
    /// `offline` channels.
    fn messages(&self, update: &PresenceUpdate) -> Result<[(usize, String, Vec<u8>); 2], EngineError> {
        let json = serde_json::to_vec(update).map_err(|e| EngineError::Internal(e.to_string()))?;
        let shard = self.keys.shard_of(update.presence.user_id.as_str());
        let status_channel = if update.presence.status.is_online() { "online" } else { "offline" };
        Ok([
            (shard, self.keys.key(shard, "updates"), json.clone()),
            (shard, self.keys.key(shard, status_channel), json),
        ])
    }
}

#[async_trait]
impl Broker for RedisBroker {
    /// One pipeline for the whole batch (one per shard on Redis Cluster).
    async fn publish(&self, updates: &[PresenceUpdate]) -> Result<(), EngineError> {
        let mut messages = Vec::with_capacity(2 * updates.len());
        for update in updates {
            messages.extend(self.messages(update)?);
        }
        publish_all(&self.conn, &self.keys, messages).await
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
        let message = delivery.encode(&self.origin);
        let (shard, channel) = match &delivery.audience {
            Audience::Group { group, dashboards: false } => {
                (self.keys.shard_of(group.as_str()), self.keys.group_channel(group.as_str()))
            }
            Audience::Group { group: target, dashboards: true }
            | Audience::User(target)
            | Audience::UserIn { user: target, .. }
            | Audience::Visibility { user: target, .. } => {
                let shard = self.keys.shard_of(target.as_str());
                (shard, self.keys.key(shard, "relay"))
            }
        };
        self.queue(Outgoing { shard, channel, message, after_the_rest: false });
    }

    /// Queued behind the relayed frames, and published once they are (see the module's
    /// doc).
    fn control(&self, control: &Control) {
        let message = control.encode(&self.origin);
        self.queue(Outgoing { shard: 0, channel: self.keys.key(0, "relay"), message, after_the_rest: true });
    }

    /// Records the change and wakes the subscriber, which follows it.
    fn serve_group(&self, group: &Id, serving: bool) {
        self.served.set(group, serving);
    }

    /// Until the subscription confirms the groups' channels, within a subscribe command's
    /// own bound.
    async fn until_serving(&self, groups: &[Id]) {
        self.served.until_subscribed(groups, SUBSCRIBE_TIMEOUT).await;
    }
}
