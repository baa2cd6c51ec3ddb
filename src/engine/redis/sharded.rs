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
//! one fails) and at once when a connection reports its loss: SSUBSCRIBE again (a no-op
//! for a subscription that stands), then read the shard's sequence. A renewal that timed
//! out is tried next on a fresh connection, which reads the cluster's topology anew: a
//! master that hangs never answers the MOVED that would tell the old connection of its
//! promoted replica. A shard that fails to renew leaves the router deaf (degraded)
//! until every shard renews again; then the router resyncs. A renewal that succeeds checks
//! that every transition the shard decided arrives within the gap grace, so one lost while
//! a subscription silently lapsed (or published to a master that then failed) still turns
//! into a resync, even when no later transition of the shard follows.

use std::{collections::HashSet, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::future::join_all;
use redis::{PushInfo, PushKind, Value, cluster::ClusterClient, cluster_async::ClusterConnection};
use tokio::{
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Connection, Keyspace, RedisConfig,
    groups::Served,
    inbox::{GAP_GRACE, Inbox, Lost, Sinks, head},
    log::LogReader,
    subscriber::SUBSCRIBE_TIMEOUT,
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
/// reads the shards' sequences, and `log` their change logs; `served` names the groups whose channels to hold.
pub(super) fn spawn_sharded_subscriber(
    config: &RedisConfig,
    conn: Connection,
    log: LogReader,
    served: Arc<Served>,
    sinks: Sinks,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<oneshot::Receiver<()>> {
    let (tx, pushes) = mpsc::channel(PUSH_QUEUE);
    let push = move |info: PushInfo| {
        if tx.try_send(info).is_err() {
            ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "overflow").increment(1);
        }
        Ok::<(), ()>(())
    };
    let client = config.cluster_push_client(push)?.ok_or_else(|| anyhow::anyhow!("not a Redis Cluster"))?;
    let (subscribed_tx, subscribed_rx) = oneshot::channel();
    let subscriber = Sharded {
        keys: log.keys().clone(),
        inbox: Inbox::new(sinks, log, conn),
        client,
        served,
        groups: HashSet::new(),
        left: Vec::new(),
        planned: HashSet::new(),
        lost: None,
        known: Vec::new(),
    };
    tracker.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = subscriber.run(pushes, subscribed_tx) => {}
        }
    });
    Ok(subscribed_rx)
}

struct Sharded {
    /// Opens the subscription's connections, whose messages arrive as pushes.
    client: ClusterClient,
    keys: Keyspace,
    served: Arc<Served>,
    inbox: Inbox,
    /// The groups whose channels the renewals hold.
    groups: HashSet<Id>,
    /// Groups no longer served, whose channels the next renewal gives up.
    left: Vec<Id>,
    /// The groups whose channels the renewal under way subscribes to.
    planned: HashSet<Id>,
    /// Why the router went deaf, until it hears again.
    lost: Option<Lost>,
    /// Per shard, the highest transition number known to have been given when the
    /// renewal under way started ([`Inbox::known`]): the head it reads cannot be lower,
    /// unless Redis lost its data.
    known: Vec<Option<u64>>,
}

/// Per shard: its channels to subscribe to, and those to give up.
type Plan = Vec<(Vec<String>, Vec<String>)>;
/// Why a shard's renewal failed: how, and the error.
type Failure = (Lost, String);
/// Per shard: its sequence's head once renewed (`None`: unreadable), or why it failed.
type Renewed = Vec<Result<Option<u64>, Failure>>;
/// A renewal's outcome, and the connection it opened (none when it used the one it had).
type Outcome = (Option<ClusterConnection>, Renewed);

impl Sharded {
    async fn run(mut self, mut pushes: mpsc::Receiver<PushInfo>, first: oneshot::Sender<()>) {
        // No connection until the first renewal opens one; a renewal that timed out is
        // followed by one on a fresh connection.
        let mut conn: Option<ClusterConnection> = None;
        let mut first = Some(first);
        let mut renewal: Option<Pin<Box<dyn Future<Output = Outcome> + Send>>> = None;
        let mut again = false;
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut gap_check = tokio::time::interval(GAP_GRACE / 2);
        loop {
            tokio::select! {
                (fresh, renewed) = async { renewal.as_mut().expect("only polled while in flight").await }, if renewal.is_some() => {
                    renewal = None;
                    if fresh.is_some() {
                        // The old connection, and its subscriptions, end here.
                        conn = fresh;
                    }
                    if renewed.iter().any(|shard| matches!(shard, Err((Lost::Silent, _)))) {
                        conn = None;
                    }
                    let all = self.renewed(renewed, &mut first).await;
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
                        let using = conn.clone().ok_or_else(|| self.client.clone());
                        self.known = (0..self.keys.shards()).map(|shard| self.inbox.known(shard)).collect();
                        self.planned.clone_from(&self.groups);
                        renewal = Some(Box::pin(renew(using, seq, keys, self.plan())));
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
                _ = gap_check.tick() => self.inbox.check_gaps().await,
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
        // A group left and served again before the renewal keeps its channel.
        self.left.retain(|group| !joined.contains(group));
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
    async fn renewed(&mut self, renewed: Renewed, first: &mut Option<oneshot::Sender<()>>) -> bool {
        let failed = renewed.iter().find_map(|shard| shard.as_ref().err());
        if let Some((reason, error)) = failed {
            if self.lost.is_none() {
                tracing::warn!(reason = reason.as_str(), %error, "cannot subscribe to every shard of the Redis Cluster");
            }
            self.lost.get_or_insert(*reason);
            if first.is_none() {
                self.inbox.deaf();
            }
            self.served.confirm(&HashSet::new());
            return false;
        }
        ::metrics::gauge!(metrics::BROKER_GROUP_SUBSCRIPTIONS).set(self.groups.len() as f64);
        self.served.confirm(&self.planned);
        let heads = renewed.into_iter().map(|shard| shard.ok().flatten());
        let was_receiving = self.inbox.sinks.receiving.set(true);
        if first.is_none() && was_receiving {
            for (shard, head) in heads.enumerate() {
                let known = self.known.get(shard).copied().flatten();
                self.inbox.check_head(shard, head, known).await;
            }
            return true;
        }
        for (shard, head) in heads.enumerate() {
            let known = self.known.get(shard).copied().flatten();
            self.inbox.start_at(shard, head, known).await;
        }
        match first.take() {
            Some(tx) => {
                tracing::info!(shards = self.keys.shards(), "subscribed to every shard of the Redis Cluster");
                self.lost = None;
                let _ = tx.send(());
            }
            None => {
                let reason = self.lost.take().unwrap_or(Lost::Dropped);
                ::metrics::counter!(metrics::BROKER_RESUBSCRIPTIONS, "reason" => reason.as_str()).increment(1);
                tracing::info!("every shard's subscription stands again; rebuilding presence");
                self.inbox.sinks.events.resync_needed(crate::engine::Missed::Subscription);
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
/// [`SUBSCRIBE_TIMEOUT`]. On `using`'s connection, or on a fresh one from its client
/// (returned with the outcome when it was opened).
async fn renew(
    using: Result<ClusterConnection, ClusterClient>,
    seq: Connection,
    keys: Keyspace,
    plan: Plan,
) -> Outcome {
    let (conn, fresh) = match using {
        Ok(conn) => (conn, false),
        Err(client) => match tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.get_async_connection()).await {
            Ok(Ok(conn)) => (conn, true),
            Ok(Err(error)) => return (None, vec![Err(failure(&error)); plan.len()]),
            Err(_) => return (None, vec![Err((Lost::Silent, "connecting timed out".into())); plan.len()]),
        },
    };
    let (seq, keys, conn_ref) = (&seq, &keys, &conn);
    let renewed = join_all(plan.into_iter().enumerate().map(|(shard, (subscribe, unsubscribe))| {
        let mut conn = conn_ref.clone();
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
    .await;
    (fresh.then_some(conn), renewed)
}

/// A (un)subscription that must answer within [`SUBSCRIBE_TIMEOUT`].
async fn bounded(command: impl Future<Output = redis::RedisResult<()>>) -> Result<(), Failure> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, command).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(failure(&error)),
        Err(_) => Err((Lost::Silent, "no answer in time".into())),
    }
}

/// A failed command: silent when it timed out (a node that does not answer), dropped
/// otherwise.
fn failure(error: &redis::RedisError) -> Failure {
    (if error.is_timeout() { Lost::Silent } else { Lost::Dropped }, error.to_string())
}
