//! What a router's subscription receives, whatever carries it (one Redis connection, see
//! [`super::subscriber`]; the nodes of a Redis Cluster, see [`super::sharded`]): each
//! message is dispatched by its channel to the router's [`BrokerEvents`], and every
//! transition's number is checked against its shard's sequence ([`GapDetector`]), so a
//! transition that never arrived turns into a resync.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, RedisResult};

use super::{Connection, Keyspace, gaps::GapDetector};
use crate::{
    engine::{BrokerEvents, Missed},
    metrics,
    presence::PresenceUpdate,
    transient::Relayed,
};

/// How long a missing sequence number may stay missing (overtaken by a later publish from
/// another router) before it counts as lost.
pub(super) const GAP_GRACE: Duration = Duration::from_secs(1);

/// Whether this router's subscription delivers. Shared by the subscriber, which keeps it
/// current, and the broker, which the node asks.
#[derive(Clone, Default)]
pub(super) struct Receiving(Arc<AtomicBool>);

impl Receiving {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets it; returns what it was.
    pub(super) fn set(&self, receiving: bool) -> bool {
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

/// How a subscription was lost.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lost {
    /// Its connection closed or failed, or a command on it failed.
    Dropped,
    /// It stopped answering: a PING or a (re)subscription went unanswered.
    Silent,
}

impl Lost {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Lost::Dropped => "dropped",
            Lost::Silent => "silent",
        }
    }
}

/// The last transition number `shard` decided so far; `None` if it cannot be read now.
pub(super) async fn head(conn: &Connection, keys: &Keyspace, shard: usize) -> Option<u64> {
    let head: RedisResult<Option<u64>> = conn.clone().get(keys.seq(shard)).await;
    head.ok().map(Option::unwrap_or_default)
}

/// The receiving end of one router's subscription.
pub(super) struct Inbox {
    pub sinks: Sinks,
    keys: Keyspace,
    /// Reads the shards' sequences.
    pub conn: Connection,
    /// One per shard.
    gaps: Vec<GapDetector>,
}

impl Inbox {
    pub(super) fn new(sinks: Sinks, keys: Keyspace, conn: Connection) -> Inbox {
        let gaps = (0..keys.shards()).map(|_| GapDetector::new(GAP_GRACE)).collect();
        Inbox { sinks, keys, conn, gaps }
    }

    /// The last transition number `shard` decided so far; `None` if it cannot be read now.
    pub(super) async fn head(&self, shard: usize) -> Option<u64> {
        head(&self.conn, &self.keys, shard).await
    }

    /// Takes `head` as `shard`'s baseline: only later numbers are expected
    /// ([`GapDetector::start_at`]); with no head known, the next number received is.
    pub(super) fn start_at(&mut self, shard: usize, head: Option<u64>) {
        match head {
            Some(head) => self.gaps[shard].start_at(head),
            None => self.gaps[shard].reset(),
        }
    }

    /// `shard`'s subscription may have lapsed and stands again: the numbers it decided up
    /// to `head` must arrive within the grace, or the router resyncs
    /// ([`GapDetector::resume`]); it resyncs at once when `head` is unknown or went back.
    pub(super) fn resume(&mut self, shard: usize, head: Option<u64>) {
        match (head, self.gaps[shard].received()) {
            (None, _) | (_, None) => self.resync(Missed::Subscription),
            (Some(head), Some(received)) if head < received => self.resync(Missed::StoreData),
            (Some(head), _) if self.gaps[shard].resume(head) => self.resync(Missed::Transitions),
            _ => {}
        }
    }

    /// The highest transition number of `shard` received so far.
    pub(super) fn received(&self, shard: usize) -> Option<u64> {
        self.gaps[shard].received()
    }

    /// A periodic check of `shard`: `head` was read after `received` (the highest number
    /// received then) had arrived, so a head below it means the sequence went back: Redis
    /// lost its data (`FLUSHALL`, a failover to a replica that had not caught up) while
    /// the subscription stood, and whatever it held is gone: the router resyncs. Otherwise
    /// every number up to the head must arrive ([`GapDetector::expect_through`]). An
    /// unreadable head checks nothing.
    pub(super) fn check_head(&mut self, shard: usize, head: Option<u64>, received: Option<u64>) {
        let Some(head) = head else { return };
        if received.is_some_and(|received| head < received) {
            tracing::warn!(shard, head, received, "the transition sequence went back: Redis lost its data");
            self.resync(Missed::StoreData);
        } else if self.gaps[shard].expect_through(head) {
            self.resync(Missed::Transitions);
        }
    }

    /// Marks the router deaf (the node turns degraded) and wakes the node to notice.
    pub(super) fn deaf(&self) {
        if self.sinks.receiving.set(false) {
            tracing::warn!("not receiving from other routers; degraded until subscribed again");
            self.sinks.events.resync_needed(Missed::Subscription);
        }
    }

    /// Transitions may have been missed: the node rebuilds its view from the store.
    pub(super) fn resync(&mut self, missed: Missed) {
        tracing::warn!("presence updates may have been missed; rebuilding presence from Redis");
        for gaps in &mut self.gaps {
            gaps.reset();
        }
        self.sinks.events.resync_needed(missed);
    }

    /// Resyncs if a transition has stayed missing past the grace.
    pub(super) fn check_gaps(&mut self) {
        if self.gaps.iter().any(GapDetector::overdue) {
            ::metrics::counter!(metrics::BROKER_GAPS).increment(1);
            self.resync(Missed::Transitions);
        }
    }

    /// Dispatches a message by its channel: a shard's transitions, and otherwise relayed
    /// frames (a shard's relay channel or a group's, the only others subscribed; a group
    /// channel just unsubscribed may still deliver a message sent before).
    pub(super) fn handle(&mut self, channel: &str, payload: &[u8]) {
        if let Some(shard) = self.keys.shard_of_key(channel, "updates") {
            self.update(shard, payload);
        } else {
            self.relayed(channel, payload);
        }
    }

    fn update(&mut self, shard: usize, payload: &[u8]) {
        match serde_json::from_slice::<PresenceUpdate>(payload) {
            Ok(mut update) => {
                update.shard = shard;
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "update").increment(1);
                if update.seq.is_some_and(|seq| self.gaps[shard].saw(seq)) {
                    ::metrics::counter!(metrics::BROKER_GAPS).increment(1);
                    self.resync(Missed::Transitions);
                }
                self.sinks.events.update(update);
            }
            Err(e) => {
                ::metrics::counter!(metrics::BROKER_MESSAGES, "kind" => "invalid").increment(1);
                tracing::warn!(error = %e, "ignoring a malformed presence update");
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
