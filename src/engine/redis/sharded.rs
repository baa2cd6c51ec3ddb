//! Pub/Sub between routers on a Redis Cluster, the receiving side: sharded Pub/Sub
//! (SSUBSCRIBE), where each channel lives on the master of its slot and a message reaches
//! only that master's subscribers, instead of every node of the cluster.
//!
//! Each shard's channels (see [`Keyspace`]) carry its hash tag, so they share one slot: a
//! shard's `updates`, the member frames of the served groups that belong to the shard
//! ([`Keyspace::group_channel`]), and, in shard 0, the shared `relay` channel. The router
//! subscribes to every shard's `updates` and to the groups it serves only, through one
//! RESP3 cluster connection whose messages arrive as pushes, handed to its [`Inbox`].
//!
//! A master that fails takes its subscribers' subscriptions with it, and the `redis` crate
//! does not reliably bring them back on the promoted replica. So the subscriber renews
//! every shard's subscriptions itself, every [`RENEW_EVERY`] (every [`RETRY_EVERY`] while
//! one fails) and at once when a connection reports its loss: SSUBSCRIBE again (a no-op for a subscription that stands), then read
//! the shard's sequence. A shard that fails to renew leaves the router deaf (degraded)
//! until every shard renews again; then the router resyncs. A renewal that succeeds checks
//! that every transition the shard decided arrives within the gap grace, so one lost while
//! a subscription silently lapsed (or published to a master that then failed) still turns
//! into a resync, even when no later transition of the shard follows.

use std::{collections::HashSet, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::future::join_all;
use redis::{PushInfo, PushKind, Value, cluster_async::ClusterConnection};
use tokio::{
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Connection, Keyspace, RedisConfig,
    groups::Served,
    inbox::{GAP_GRACE, Inbox, Lost, Sinks, head},
    subscriber::{MAX_BACKOFF, SUBSCRIBE_TIMEOUT},
};
use crate::{id::Id, metrics};

/// How often every shard's subscriptions are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How soon a renewal that failed is tried again: a replica promoted after a master failed
/// is found within this of its promotion.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// Pushes waiting for the subscriber. A fuller queue drops messages (counted as
/// `overflow`): a lost transition shows as a gap and the router resyncs; a lost frame is
/// lost, like any late audio.
const PUSH_QUEUE: usize = 16 * 1024;
/// Most channels named in one SSUBSCRIBE or SUNSUBSCRIBE.
const CHANNELS_PER_COMMAND: usize = 1000;

/// Runs the subscriber until shutdown (see [`super::RedisBroker::subscribe`]). `conn`
/// reads the shards' sequences; `served` names the groups whose channels to hold.
pub(super) fn spawn_sharded_subscriber(
    config: RedisConfig,
    conn: Connection,
    keys: Keyspace,
    served: Arc<Served>,
    sinks: Sinks,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> oneshot::Receiver<()> {
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    let subscriber = Sharded {
        inbox: Inbox::new(sinks, keys.clone(), conn),
        config,
        keys,
        served,
        groups: HashSet::new(),
        left: Vec::new(),
        lost: None,
    };
    tracker.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = subscriber.run(subscribed_tx) => {}
        }
    });
    subscribed_rx
}

struct Sharded {
    config: RedisConfig,
    keys: Keyspace,
    served: Arc<Served>,
    inbox: Inbox,
    /// The groups whose channels the renewals hold.
    groups: HashSet<Id>,
    /// Groups no longer served, whose channels the next renewal gives up.
    left: Vec<Id>,
    /// Why the router went deaf, until it hears again.
    lost: Option<Lost>,
}

/// Per shard: its channels to subscribe to, and those to give up.
type Plan = Vec<(Vec<String>, Vec<String>)>;
/// Per shard: its sequence's head once renewed (`None`: unreadable), or why it failed.
type Renewed = Vec<Result<Option<u64>, Lost>>;

impl Sharded {
    async fn run(mut self, first: oneshot::Sender<()>) {
        let (tx, mut pushes) = mpsc::channel(PUSH_QUEUE);
        let push = move |info: PushInfo| {
            if tx.try_send(info).is_err() {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "overflow").increment(1);
            }
            Ok::<(), ()>(())
        };
        let conn = self.connect(push).await;
        let mut first = Some(first);
        let mut renewal: Option<Pin<Box<dyn Future<Output = Renewed> + Send>>> = None;
        let mut again = false;
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut gap_check = tokio::time::interval(GAP_GRACE / 2);
        loop {
            tokio::select! {
                renewed = async { renewal.as_mut().expect("only polled while in flight").await }, if renewal.is_some() => {
                    renewal = None;
                    let all = self.renewed(renewed, &mut first);
                    if std::mem::take(&mut again) {
                        tick.reset_immediately();
                    } else if !all {
                        tick.reset_after(RETRY_EVERY);
                    }
                }
                _ = tick.tick() => {
                    if renewal.is_some() {
                        again = true;
                    } else {
                        let (seq, keys) = (self.inbox.conn.clone(), self.keys.clone());
                        renewal = Some(Box::pin(renew(conn.clone(), seq, keys, self.plan())));
                    }
                }
                () = self.served.changed() => {
                    self.follow_served();
                    tick.reset_immediately();
                }
                Some(push) = pushes.recv() => match push.kind {
                    PushKind::SMessage | PushKind::Message => self.message(&push.data),
                    // A node's connection closed: its subscriptions may be gone.
                    PushKind::Disconnection => tick.reset_immediately(),
                    _ => {}
                },
                _ = gap_check.tick() => self.inbox.check_gaps(),
            }
        }
    }

    /// The cluster connection that delivers pushes to `push`, retried until it stands.
    async fn connect(&self, push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static) -> ClusterConnection {
        let client = match self.config.cluster_push_client(push) {
            Ok(Some(client)) => client,
            // Checked when the configuration was read: a cluster, with a valid client.
            Ok(None) | Err(_) => unreachable!("a sharded subscriber needs a valid cluster configuration"),
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match client.get_async_connection().await {
                Ok(conn) => return conn,
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the Redis Cluster to subscribe; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Takes the served groups as they are now: the next renewal subscribes to the new
    /// ones and gives up the ones left.
    fn follow_served(&mut self) {
        let (joined, left) = self.served.diff(&self.groups);
        for group in &left {
            self.groups.remove(group);
        }
        self.groups.extend(joined);
        self.left.extend(left);
    }

    /// Every shard's channels: its `updates` and `relay`, and the served groups'.
    fn plan(&mut self) -> Plan {
        let mut plan: Plan = (0..self.keys.shards())
            .map(|shard| (vec![self.keys.key(shard, "updates"), self.keys.key(shard, "relay")], Vec::new()))
            .collect();
        for group in &self.groups {
            plan[self.keys.shard_of(group.as_str())].0.push(self.keys.group_channel(group.as_str()));
        }
        for group in self.left.drain(..) {
            plan[self.keys.shard_of(group.as_str())].1.push(self.keys.group_channel(group.as_str()));
        }
        plan
    }

    /// What a renewal found: the router hears again (or for the first time) once every
    /// shard renewed, and stays deaf while one fails. True when every shard renewed.
    fn renewed(&mut self, renewed: Renewed, first: &mut Option<oneshot::Sender<()>>) -> bool {
        let failed = renewed.iter().find_map(|shard| shard.as_ref().err().copied());
        if let Some(reason) = failed {
            if first.is_none() {
                if self.lost.is_none() {
                    tracing::warn!(reason = reason.as_str(), "a shard's subscription could not be renewed");
                }
                self.lost.get_or_insert(reason);
                self.inbox.deaf();
            }
            return false;
        }
        ::metrics::gauge!(metrics::BROKER_GROUP_SUBSCRIPTIONS).set(self.groups.len() as f64);
        let heads = renewed.into_iter().map(|shard| shard.ok().flatten());
        let was_receiving = self.inbox.sinks.receiving.set(true);
        if first.is_none() && was_receiving {
            for (shard, head) in heads.enumerate() {
                self.inbox.expect_through(shard, head);
            }
            return true;
        }
        for (shard, head) in heads.enumerate() {
            self.inbox.start_at(shard, head);
        }
        match first.take() {
            Some(tx) => {
                tracing::info!(shards = self.keys.shards(), "subscribed to every shard of the Redis Cluster");
                let _ = tx.send(());
            }
            None => {
                let reason = self.lost.take().unwrap_or(Lost::Dropped);
                ::metrics::counter!(metrics::BROKER_RESUBSCRIPTIONS, "reason" => reason.as_str()).increment(1);
                tracing::info!("every shard's subscription stands again; rebuilding presence");
                self.inbox.sinks.events.resync_needed();
            }
        }
        true
    }

    /// A message push: `[channel, payload]`.
    fn message(&mut self, data: &[Value]) {
        if let [Value::BulkString(channel), Value::BulkString(payload)] = data {
            self.inbox.handle(&String::from_utf8_lossy(channel), payload);
        }
    }
}

/// Renews every shard at once: gives up the channels of groups left, subscribes to the
/// shard's channels again, and reads its sequence (over `seq`), each command bounded by
/// [`SUBSCRIBE_TIMEOUT`].
async fn renew(conn: ClusterConnection, seq: Connection, keys: Keyspace, plan: Plan) -> Renewed {
    let (seq, keys) = (&seq, &keys);
    join_all(plan.into_iter().enumerate().map(|(shard, (subscribe, unsubscribe))| {
        let mut conn = conn.clone();
        async move {
            for chunk in unsubscribe.chunks(CHANNELS_PER_COMMAND) {
                bounded(conn.sunsubscribe(chunk)).await?;
            }
            for chunk in subscribe.chunks(CHANNELS_PER_COMMAND) {
                bounded(conn.ssubscribe(chunk)).await?;
            }
            Ok(head(seq, keys, shard).await)
        }
    }))
    .await
}

/// A (un)subscription that must answer within [`SUBSCRIBE_TIMEOUT`].
async fn bounded(command: impl Future<Output = redis::RedisResult<()>>) -> Result<(), Lost> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, command).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Lost::Dropped),
        Err(_) => Err(Lost::Silent),
    }
}
