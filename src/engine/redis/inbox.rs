//! What a router's subscription receives, whatever carries it (one Redis connection, see
//! [`super::subscriber`]; the nodes of a Redis Cluster, see [`super::sharded`]): each
//! message is dispatched by its channel to the router's [`BrokerEvents`], and every
//! transition's number is checked against its shard's sequence ([`GapDetector`]). A
//! transition that never arrived is read from its shard's change log, where the script
//! that decided it put it, and handed on as if received; only when the log no longer holds
//! it (trimmed, or Redis lost its data) does the router rebuild its view (a resync), which
//! costs every router a read of everyone online and its dashboards a STALE spell.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, RedisResult};

use super::{Connection, Keyspace, gaps::GapDetector, log::LogReader};
use crate::{
    engine::{BrokerEvents, Missed},
    metrics,
    presence::PresenceUpdate,
    transient::Relayed,
};

/// How long a missing sequence number may stay missing (overtaken by a later publish from
/// another router) before it counts as lost.
pub(super) const GAP_GRACE: Duration = Duration::from_secs(1);

/// How long the subscriber's calls on the change log (reading missing transitions,
/// starting a new history) may take before the router gives up on them and resyncs; the
/// subscription's messages wait meanwhile.
const LOG_CALL_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Reads what the subscription missed; its keyspace names the channels.
    log: LogReader,
    /// Reads the shards' sequences and logs.
    pub conn: Connection,
    /// One per shard.
    gaps: Vec<GapDetector>,
    /// Per shard, the highest transition number known to have been given in this history
    /// (received, or read as the head), kept across resyncs and lapses: a head read below
    /// it means the sequence went back.
    highest: Vec<u64>,
}

impl Inbox {
    pub(super) fn new(sinks: Sinks, log: LogReader, conn: Connection) -> Inbox {
        let shards = log.keys().shards();
        let gaps = (0..shards).map(|_| GapDetector::new(GAP_GRACE)).collect();
        Inbox { sinks, log, conn, gaps, highest: vec![0; shards] }
    }

    /// The last transition number `shard` decided so far; `None` if it cannot be read now.
    pub(super) async fn head(&self, shard: usize) -> Option<u64> {
        head(&self.conn, self.log.keys(), shard).await
    }

    /// Takes `head` as `shard`'s baseline: only later numbers are expected
    /// ([`GapDetector::start_at`]); with no head known, the next number received is. A
    /// head behind `known` (what [`Inbox::known`] said before the head was read) means the
    /// sequence went back.
    pub(super) async fn start_at(&mut self, shard: usize, head: Option<u64>, known: Option<u64>) {
        match head {
            Some(head) if known.is_some_and(|known| head < known) => self.went_back(shard, head).await,
            Some(head) => {
                self.highest[shard] = self.highest[shard].max(head);
                self.gaps[shard].start_at(head)
            }
            None => self.gaps[shard].reset(),
        }
    }

    /// `shard`'s subscription may have lapsed and stands again: the numbers it decided up
    /// to `head` must arrive within the grace, or the router resyncs
    /// ([`GapDetector::resume`]); it resyncs at once when `head` is unknown or went back
    /// (behind `known`, as for [`Inbox::start_at`]).
    pub(super) async fn resume(&mut self, shard: usize, head: Option<u64>, known: Option<u64>) {
        match (head, self.gaps[shard].received()) {
            (Some(head), _) if known.is_some_and(|known| head < known) => self.went_back(shard, head).await,
            (None, _) | (_, None) => self.resync(Missed::Subscription),
            (Some(head), _) if self.gaps[shard].resume(head) => self.resync(Missed::Transitions),
            (Some(head), _) => self.highest[shard] = self.highest[shard].max(head),
        }
    }

    /// The highest transition number of `shard` known to have been given in this history
    /// (received, or read as its head), kept across resyncs and lapses. Taken before a head
    /// is read, it tells whether that head went back: messages handled while the read is
    /// under way may raise it past a head read just before them.
    pub(super) fn known(&self, shard: usize) -> Option<u64> {
        let known = self.highest[shard].max(self.gaps[shard].received().unwrap_or(0));
        (known > 0).then_some(known)
    }

    /// A periodic check of `shard`: `head` was read after `known` ([`Inbox::known`]) was
    /// taken, so a head below it means the sequence went back: Redis lost its data
    /// (`FLUSHALL`, a failover to a replica that had not caught up, a restart from an older
    /// copy) while the subscription stood, and whatever it held is gone: the router
    /// resyncs. Otherwise every number up to the head must arrive
    /// ([`GapDetector::expect_through`]). An unreadable head checks nothing.
    pub(super) async fn check_head(&mut self, shard: usize, head: Option<u64>, known: Option<u64>) {
        let Some(head) = head else { return };
        if known.is_some_and(|known| head < known) {
            self.went_back(shard, head).await;
        } else {
            self.highest[shard] = self.highest[shard].max(head);
            if self.gaps[shard].expect_through(head) {
                self.resync(Missed::Transitions);
            }
        }
    }

    /// `shard`'s sequence is at `head`, behind numbers this router knew were given: Redis
    /// lost its data, or came back with an older copy of it. The shard starts a new
    /// history past every number given before (unless another router did first), so that
    /// dashboards' positions of the old one get snapshots rather than resumes against
    /// numbers given twice; the router resyncs.
    async fn went_back(&mut self, shard: usize, head: u64) {
        let seen = self.highest[shard].max(self.gaps[shard].received().unwrap_or(0));
        tracing::warn!(shard, head, seen, "the transition sequence went back: Redis lost its data");
        match tokio::time::timeout(LOG_CALL_TIMEOUT, self.log.went_back(&self.conn, shard, seen)).await {
            Ok(Ok(started)) => tracing::info!(shard, started, "the shard's history starts anew"),
            Ok(Err(e)) => tracing::warn!(shard, error = %e, "starting the shard's history anew failed"),
            Err(_) => tracing::warn!(shard, "starting the shard's history anew timed out"),
        }
        self.resync(Missed::StoreData);
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

    /// For each shard where a transition has stayed missing past the grace, reads the
    /// missing ones from its change log and hands them on; resyncs when that fails.
    pub(super) async fn check_gaps(&mut self) {
        for shard in 0..self.gaps.len() {
            if !self.gaps[shard].overdue() {
                continue;
            }
            ::metrics::counter!(metrics::BROKER_GAPS).increment(1);
            if !self.fill(shard).await {
                self.resync(Missed::Transitions);
                return;
            }
        }
    }

    /// Reads every number `shard` is missing from its change log and hands each on as if
    /// received (a copy still in flight is a duplicate the view ignores by its version).
    /// False when the log cannot tell them all: trimmed past them, Redis lost its data,
    /// or it did not answer within [`LOG_CALL_TIMEOUT`].
    async fn fill(&mut self, shard: usize) -> bool {
        let Some((first, last)) = self.gaps[shard].missing_span() else { return true };
        let read = tokio::time::timeout(LOG_CALL_TIMEOUT, self.log.between(&self.conn, shard, first - 1, last)).await;
        let changes = match read {
            Ok(Ok(Some(changes))) => changes,
            Ok(Ok(None)) => {
                tracing::warn!(shard, first, last, "missing transitions are no longer in the change log");
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(shard, error = %e, "reading missing transitions from the change log failed");
                return false;
            }
            Err(_) => {
                tracing::warn!(shard, "reading missing transitions from the change log timed out");
                return false;
            }
        };
        let mut filled = 0;
        for change in changes {
            let Some(seq) = change.update.seq else { continue };
            if self.gaps[shard].is_missing(seq) {
                self.gaps[shard].saw(seq);
                self.sinks.events.update(change.update);
                filled += 1;
            }
        }
        ::metrics::counter!(metrics::BROKER_GAPS_FILLED).increment(filled);
        tracing::info!(shard, filled, "read missed transitions from the change log");
        !self.gaps[shard].overdue()
    }

    /// Dispatches a message by its channel: a shard's transitions, and otherwise relayed
    /// frames (a shard's relay channel or a group's, the only others subscribed; a group
    /// channel just unsubscribed may still deliver a message sent before).
    pub(super) fn handle(&mut self, channel: &str, payload: &[u8]) {
        if let Some(shard) = self.log.keys().shard_of_key(channel, "updates") {
            self.update(shard, payload);
        } else {
            self.relayed(channel, payload);
        }
    }

    fn update(&mut self, shard: usize, payload: &[u8]) {
        match serde_json::from_slice::<PresenceUpdate>(payload) {
            Ok(mut update) => {
                update.shard = shard;
                if let Some(seq) = update.seq {
                    self.highest[shard] = self.highest[shard].max(seq);
                }
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
