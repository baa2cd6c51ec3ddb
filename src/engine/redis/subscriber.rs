//! Pub/Sub between routers, the receiving side: transitions from `{prefix}updates`,
//! relayed frames and session messages from `{prefix}relay`, the member frames of the
//! groups this router serves from their own channels (subscribed and unsubscribed as the
//! groups come and go, see [`super::groups`]), and keyspace `expired` events of user keys
//! (an early sweep), each handed to the router's [`BrokerEvents`].
//!
//! Pub/Sub drops whatever is published while a subscriber is away, and a subscription is
//! lost one of two ways:
//! - **dropped**: its connection closes or fails (Redis restarted, `CLIENT KILL`, a
//!   proxy's cut). The subscriber resubscribes at once, to the channels of the groups it
//!   serves too. Which transitions were decided meanwhile is known from the cluster-wide
//!   sequence (`{prefix}seq`): any of them that does not arrive within the gap grace
//!   triggers a resync, and when none was decided dashboards see nothing at all.
//! - **silent**: the connection stays open but nothing arrives, not even the answer to the
//!   PING sent every [`PING_EVERY`] (a NAT or load balancer dropped the flow without
//!   telling either end). Noticed within [`PING_EVERY`] + [`PING_TIMEOUT`].
//!
//! A subscription that went silent, or that cannot be re-established at once, leaves the
//! router deaf to the others: its view goes stale and frames relayed to its users are lost.
//! It reports itself not [`Receiving`], which the node reads as degraded, until it is
//! subscribed again; then the node resyncs (re-asserts its sessions, rebuilds the view from
//! the store, and dashboards get a fresh snapshot on their open connections). A transition
//! lost any other way (a router killed before it published) shows up as a gap in the
//! sequence and triggers the same resync.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::{
    AsyncCommands, Client, Msg, RedisResult,
    aio::{PubSubSink, PubSubStream},
};
use tokio::{sync::oneshot, time::MissedTickBehavior};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Connection,
    gaps::GapDetector,
    groups::{Served, follow},
};
use crate::{engine::BrokerEvents, metrics, presence::PresenceUpdate, transient::Relayed};

/// How often the subscription connection is asked to answer a PING.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a PING may go unanswered before the subscription counts as silent: far above
/// Redis' latency, even under load (it answers a PING between two commands).
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting and subscribing may take.
pub(super) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a missing sequence number may stay missing (overtaken by a later publish from
/// another router) before it counts as lost.
const GAP_GRACE: Duration = Duration::from_secs(1);
/// Longest wait between two failed subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether this router's subscription delivers. Shared by the subscriber, which keeps it
/// current, and the broker, which the node asks.
#[derive(Clone, Default)]
pub(super) struct Receiving(Arc<AtomicBool>);

impl Receiving {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets it; returns what it was.
    fn set(&self, receiving: bool) -> bool {
        self.0.swap(receiving, Ordering::Relaxed)
    }
}

/// Where the subscriber hands what it receives, and tells whether it is receiving.
pub(super) struct Sinks {
    pub events: Arc<dyn BrokerEvents>,
    /// This router's id, to skip its own relayed frames.
    pub origin: String,
    /// The broker's flag (see [`super::RedisBroker`]'s `is_receiving`).
    pub receiving: Receiving,
}

/// How a subscription ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lost {
    /// Its connection closed or failed.
    Dropped,
    /// A PING went unanswered for [`PING_TIMEOUT`].
    Silent,
}

impl Lost {
    fn as_str(self) -> &'static str {
        match self {
            Lost::Dropped => "dropped",
            Lost::Silent => "silent",
        }
    }
}

/// Runs the subscriber until shutdown (see [`super::RedisBroker::subscribe`]). `conn`
/// reads the transition sequence; `served` names the groups whose channels to hold.
pub(super) fn spawn_subscriber(
    client: Client,
    conn: Connection,
    prefix: String,
    served: Arc<Served>,
    sinks: Sinks,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> oneshot::Receiver<()> {
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    // Keyspace events are published per database: the one the router's keys live in.
    let expired = format!("__keyevent@{}__:expired", client.get_connection_info().redis_settings().db());
    let subscriber = Subscriber {
        client,
        conn,
        expired,
        updates: format!("{prefix}updates"),
        relayed: format!("{prefix}relay"),
        user_keys: format!("{prefix}user:"),
        seq: format!("{prefix}seq"),
        prefix,
        served,
        sinks,
        gaps: GapDetector::new(GAP_GRACE),
    };
    tracker.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = subscriber.run(subscribed_tx) => {}
        }
    });
    subscribed_rx
}

struct Subscriber {
    client: Client,
    conn: Connection,
    /// The channel of keyspace events of expired keys, in the router's database.
    expired: String,
    updates: String,
    relayed: String,
    user_keys: String,
    seq: String,
    prefix: String,
    served: Arc<Served>,
    sinks: Sinks,
    gaps: GapDetector,
}

impl Subscriber {
    async fn run(mut self, first: oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(50);
        let mut lost: Option<Lost> = None;
        loop {
            let (sink, messages) = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.subscribe()).await {
                Ok(Ok(subscription)) => subscription,
                Ok(Err(_)) | Err(_) => {
                    // The router waits for the first subscription before it serves.
                    if first.is_none() {
                        self.deaf();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            tracing::info!("subscribed to {}", self.updates);
            if let Some(reason) = lost.take() {
                ::metrics::counter!(metrics::BROKER_RESUBSCRIPTIONS, "reason" => reason.as_str()).increment(1);
            }
            self.subscribed(first.take()).await;
            let reason = self.listen(sink, messages).await;
            // The connection's group subscriptions went with it.
            ::metrics::gauge!(metrics::BROKER_GROUP_SUBSCRIPTIONS).set(0.0);
            tracing::warn!(reason = reason.as_str(), "lost the subscription to {}; resubscribing", self.updates);
            if let Lost::Silent = reason {
                self.deaf();
            }
            lost = Some(reason);
        }
    }

    async fn subscribe(&self) -> RedisResult<(PubSubSink, PubSubStream)> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&[self.updates.as_str(), self.relayed.as_str(), self.expired.as_str()]).await?;
        Ok(pubsub.split())
    }

    /// The last transition number decided so far; `None` if it cannot be read now.
    async fn head(&mut self) -> Option<u64> {
        let head: RedisResult<Option<u64>> = self.conn.get(&self.seq).await;
        head.ok().map(Option::unwrap_or_default)
    }

    /// Marks the router deaf (the node turns degraded) and wakes the node to notice.
    fn deaf(&self) {
        if self.sinks.receiving.set(false) {
            tracing::warn!("not receiving from other routers; degraded until subscribed again");
            self.sinks.events.resync_needed();
        }
    }

    /// A subscription stands. The first one, or one after the router was deaf, starts the
    /// sequence afresh (and the latter asks for a resync); one after a drop that was
    /// re-established at once only expects what was decided meanwhile.
    async fn subscribed(&mut self, first: Option<oneshot::Sender<()>>) {
        let head = self.head().await;
        let was_receiving = self.sinks.receiving.set(true);
        if first.is_none() && was_receiving {
            if head.is_none_or(|head| self.gaps.resume(head)) {
                self.resync();
            }
            return;
        }
        match head {
            Some(head) => self.gaps.start_at(head),
            None => self.gaps.reset(),
        }
        match first {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => self.sinks.events.resync_needed(),
        }
    }

    fn resync(&mut self) {
        tracing::warn!("presence updates may have been missed; rebuilding presence from Redis");
        self.gaps.reset();
        self.sinks.events.resync_needed();
    }

    /// A transition never arrived.
    fn gap(&mut self) {
        ::metrics::counter!(metrics::BROKER_GAPS).increment(1);
        self.resync();
    }

    /// Handles messages until the subscription is lost; PINGs it meanwhile, and keeps its
    /// group channels those of the groups served.
    async fn listen(&mut self, mut sink: PubSubSink, mut messages: PubSubStream) -> Lost {
        let (served, prefix) = (self.served.clone(), self.prefix.clone());
        let groups = follow(&served, &prefix, sink.clone());
        tokio::pin!(groups);
        let watchdog = async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Lost::Dropped,
                    Err(_) => return Lost::Silent,
                }
            }
        };
        tokio::pin!(watchdog);
        let mut gap_check = tokio::time::interval(GAP_GRACE / 2);
        loop {
            tokio::select! {
                lost = &mut watchdog => return lost,
                lost = &mut groups => return lost,
                message = messages.next() => match message {
                    Some(message) => self.handle(&message),
                    None => return Lost::Dropped,
                },
                _ = gap_check.tick() => {
                    if self.gaps.overdue() {
                        self.gap();
                    }
                }
            }
        }
    }

    /// Dispatches by channel: anything not `updates` or `expired` is the relay channel or
    /// a group's, the only others subscribed (and a group channel just unsubscribed may
    /// still deliver a message sent before).
    fn handle(&mut self, message: &Msg) {
        let payload: &[u8] = message.get_payload_bytes();
        let channel = message.get_channel_name();
        if channel == self.updates {
            self.update(payload);
        } else if channel == self.expired {
            if payload.starts_with(self.user_keys.as_bytes()) {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "expired").increment(1);
                self.sinks.events.sweep_soon();
            }
        } else {
            self.relayed(channel, payload);
        }
    }

    fn update(&mut self, payload: &[u8]) {
        match serde_json::from_slice::<PresenceUpdate>(payload) {
            Ok(update) => {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "update").increment(1);
                if update.seq.is_some_and(|seq| self.gaps.saw(seq)) {
                    self.gap();
                }
                self.sinks.events.update(update);
            }
            Err(e) => {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "invalid").increment(1);
                tracing::warn!(error = %e, "ignoring a malformed message on {}", self.updates);
            }
        }
    }

    /// A relayed frame or session message; this router's own are skipped.
    fn relayed(&self, channel: &str, payload: &[u8]) {
        match Relayed::decode(payload) {
            Some((from, relayed)) => {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "relay").increment(1);
                match relayed {
                    _ if from == self.sinks.origin => {}
                    Relayed::Frame(delivery) => self.sinks.events.frame(&delivery),
                    Relayed::Control(control) => self.sinks.events.control(&control),
                }
            }
            None => {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "invalid").increment(1);
                tracing::warn!("ignoring a malformed message on {channel}");
            }
        }
    }
}
