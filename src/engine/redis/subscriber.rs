//! Pub/Sub between routers on one Redis, the receiving side: transitions from `{prefix}updates`,
//! relayed frames and session messages from `{prefix}relay`, the member frames of the
//! groups this router serves from their own channels (subscribed and unsubscribed as the
//! groups come and go, see [`super::groups`]), each handed to the router's
//! [`BrokerEvents`](crate::engine::BrokerEvents) through its [`Inbox`].
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

use std::time::Duration;

use futures_util::StreamExt;
use redis::{
    Client, RedisResult,
    aio::{PubSubSink, PubSubStream},
};
use tokio::{sync::oneshot, time::MissedTickBehavior};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Connection, Keyspace,
    groups::{Served, follow},
    inbox::{GAP_GRACE, Inbox, Lost, Sinks},
    log::LogReader,
};
use crate::metrics;

/// How often the subscription connection is asked to answer a PING.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a PING may go unanswered before the subscription counts as silent: far above
/// Redis' latency, even under load (it answers a PING between two commands).
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting and subscribing may take.
pub(super) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sequence's head is read while subscribed: a transition lost with none
/// after it, or a sequence that went back (Redis lost its data while the subscription
/// stood), is noticed within this and the gap grace.
const HEAD_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between two failed subscription attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Runs the subscriber until shutdown (see [`super::RedisBroker::subscribe`]). `conn`
/// reads the transition sequence, and `log` the change log; `served` names the groups whose channels to hold.
pub(super) fn spawn_subscriber(
    client: Client,
    conn: Connection,
    log: LogReader,
    served: std::sync::Arc<Served>,
    sinks: Sinks,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> oneshot::Receiver<()> {
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    let keys = log.keys();
    let subscriber = Subscriber {
        client,
        updates: keys.key(0, "updates"),
        relayed: keys.key(0, "relay"),
        served,
        keys: keys.clone(),
        inbox: Inbox::new(sinks, log.clone(), conn),
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
    updates: String,
    relayed: String,
    keys: Keyspace,
    served: std::sync::Arc<Served>,
    inbox: Inbox,
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
                        self.inbox.deaf();
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
            self.served.confirm(&Default::default());
            tracing::warn!(reason = reason.as_str(), "lost the subscription to {}; resubscribing", self.updates);
            if let Lost::Silent = reason {
                self.inbox.deaf();
            }
            lost = Some(reason);
        }
    }

    async fn subscribe(&self) -> RedisResult<(PubSubSink, PubSubStream)> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&[self.updates.as_str(), self.relayed.as_str()]).await?;
        Ok(pubsub.split())
    }

    /// A subscription stands. The first one, or one after the router was deaf, starts the
    /// sequence afresh (and the latter asks for a resync); one after a drop that was
    /// re-established at once only expects what was decided meanwhile.
    async fn subscribed(&mut self, first: Option<oneshot::Sender<()>>) {
        let known = self.inbox.known(0);
        let head = self.inbox.head(0).await;
        let was_receiving = self.inbox.sinks.receiving.set(true);
        if first.is_none() && was_receiving {
            self.inbox.resume(0, head, known).await;
            return;
        }
        self.inbox.start_at(0, head, known).await;
        match first {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => self.inbox.sinks.events.resync_needed(crate::engine::Missed::Subscription),
        }
    }

    /// Handles messages until the subscription is lost; PINGs it meanwhile, and keeps its
    /// group channels those of the groups served.
    async fn listen(&mut self, mut sink: PubSubSink, mut messages: PubSubStream) -> Lost {
        let (served, keys) = (self.served.clone(), self.keys.clone());
        let groups = follow(&served, &keys, sink.clone());
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
        let mut head_check = tokio::time::interval(HEAD_EVERY);
        head_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                lost = &mut watchdog => return lost,
                lost = &mut groups => return lost,
                message = messages.next() => match message {
                    Some(message) => self.inbox.handle(message.get_channel_name(), message.get_payload_bytes()),
                    None => return Lost::Dropped,
                },
                _ = gap_check.tick() => self.inbox.check_gaps().await,
                _ = head_check.tick() => {
                    let known = self.inbox.known(0);
                    let head = self.inbox.head(0).await;
                    self.inbox.check_head(0, head, known).await;
                }
            }
        }
    }
}
