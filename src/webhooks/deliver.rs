//! The delivery loop of one shard: take a batch from the outbox, POST it until it is
//! accepted or the retry horizon passes, settle it, take the next.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{MAX_BACKOFF, WebhookConfig, event, signature};
use crate::{
    engine::{
        log::LoggedChange,
        outbox::{DeadLetters, Outbox},
    },
    metrics,
    presence::unix_ms,
};

/// How long a router holds a shard's delivery lease without renewing it: after a router
/// dies, another takes its shards over (and sends its unsettled batch again) this long
/// after its last renewal at most.
pub const LEASE: Duration = Duration::from_secs(3);
/// How often the lease is renewed while a batch is in flight, and how often a router
/// that does not hold a shard's lease asks for it.
const LEASE_RENEW: Duration = Duration::from_secs(1);

/// How a batch ended.
enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Still failing at the retry horizon: the last failure.
    Dead(String),
    /// Left unsettled: the lease was lost (another router sends it again), or the router
    /// is stopping.
    Abandoned,
}

pub(super) struct Deliverer {
    outbox: Arc<dyn Outbox>,
    client: reqwest::Client,
    config: WebhookConfig,
    consumer: String,
    shutdown: CancellationToken,
}

impl Deliverer {
    pub(super) fn new(
        outbox: Arc<dyn Outbox>,
        config: WebhookConfig,
        consumer: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Deliverer> {
        // No redirects: the URL is the operator's, and a receiver must not steer the
        // router's requests elsewhere.
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("presence-router/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer { outbox, client, config, consumer, shutdown })
    }

    /// Delivers `shard` until shutdown, whenever this router holds its lease.
    pub(super) async fn run(self: Arc<Self>, shard: usize) {
        // Whether the last take waited a batch window already: what is there now goes.
        let mut waited = false;
        let mut failing = false;
        let shards = ::metrics::gauge!(metrics::WEBHOOK_SHARDS);
        let mut held = false;
        while !self.shutdown.is_cancelled() {
            let taken = self.outbox.take(shard, &self.consumer, self.config.batch_size, LEASE).await;
            if held != matches!(taken, Ok(Some(_))) {
                held = !held;
                shards.increment(if held { 1.0 } else { -1.0 });
            }
            if failing != taken.is_err() {
                failing = taken.is_err();
                match &taken {
                    Err(e) => tracing::warn!(shard, error = %e, "webhook delivery paused: the outbox cannot be read"),
                    Ok(_) => tracing::info!(shard, "webhook delivery resumed"),
                }
            }
            let pause = match taken {
                Err(_) => LEASE_RENEW,
                Ok(None) => {
                    waited = false;
                    LEASE_RENEW
                }
                Ok(Some(taken)) => {
                    if taken.lost > 0 {
                        ::metrics::counter!(metrics::WEBHOOK_EVENTS, "result" => "trimmed").increment(taken.lost);
                        tracing::error!(
                            shard,
                            lost = taken.lost,
                            "webhook events trimmed from the change log before they were delivered: raise \
                             --change-log-entries, or bring the receiver back sooner"
                        );
                    }
                    let full = taken.entries.len() >= self.config.batch_size;
                    if !taken.entries.is_empty() && (full || waited) {
                        self.deliver(shard, taken.entries).await;
                        waited = false;
                        continue;
                    }
                    waited = true;
                    self.config.batch_wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        if held {
            shards.decrement(1.0);
            // Given up at once, so another router takes the shard over now rather than when
            // the lease lapses (a rolling restart).
            if let Err(e) = self.outbox.settle(shard, &self.consumer, &[], None, Duration::ZERO).await {
                tracing::warn!(shard, error = %e, "webhook delivery lease not given up: it lapses on its own");
            }
        }
    }

    /// Sends one batch until it is settled or abandoned, keeping the lease meanwhile.
    async fn deliver(&self, shard: usize, entries: Vec<LoggedChange>) {
        let seqs: Vec<u64> = entries.iter().filter_map(|e| e.update.seq).collect();
        let events = event::events(&entries);
        let body = event::body(&events);
        let pending = ::metrics::gauge!(metrics::WEBHOOK_PENDING);
        pending.increment(entries.len() as f64);
        let outcome = tokio::select! {
            outcome = self.attempts(&body) => outcome,
            () = self.keep_lease(shard) => Outcome::Abandoned,
            () = self.shutdown.cancelled() => Outcome::Abandoned,
        };
        pending.decrement(entries.len() as f64);
        let count = entries.len() as u64;
        let dead = match &outcome {
            Outcome::Abandoned => return,
            Outcome::Delivered => {
                let now = unix_ms();
                let lag = ::metrics::histogram!(metrics::WEBHOOK_LAG);
                for entry in &entries {
                    lag.record(now.saturating_sub(entry.update.timestamp) as f64 / 1000.0);
                }
                ::metrics::counter!(metrics::WEBHOOK_EVENTS, "result" => "delivered").increment(count);
                None
            }
            Outcome::Dead(reason) => {
                ::metrics::counter!(metrics::WEBHOOK_EVENTS, "result" => "dead_letter").increment(count);
                let (first, last) = (entries.first(), entries.last());
                tracing::error!(
                    shard,
                    events = count,
                    first = first.map(|e| event::id(&e.update)),
                    last = last.map(|e| event::id(&e.update)),
                    reason,
                    horizon_ms = self.config.retry_horizon.as_millis() as u64,
                    "webhook batch given up after the retry horizon: its events are dead letters"
                );
                Some(DeadLetters { reason, events: &events })
            }
        };
        if let Err(e) = self.outbox.settle(shard, &self.consumer, &seqs, dead, LEASE).await {
            // Unsettled, the batch is handed out again: sent twice, never lost.
            tracing::warn!(shard, error = %e, "a webhook batch could not be settled: it will be sent again");
        }
    }

    /// POSTs `body` until the receiver accepts it, or the next try would start past the
    /// retry horizon: exponential backoff from `--webhook-backoff-ms`, with full jitter (a
    /// pause drawn from [backoff/2, backoff]) so receivers recovering from an outage are
    /// not hit by every router in step.
    async fn attempts(&self, body: &[u8]) -> Outcome {
        let started = Instant::now();
        let mut backoff = self.config.backoff;
        loop {
            let failure = match self.post(body).await {
                Ok(()) => return Outcome::Delivered,
                Err(failure) => failure,
            };
            let half = backoff / 2;
            let pause = half + half.mul_f64(fastrand::f64());
            if started.elapsed() + pause > self.config.retry_horizon {
                return Outcome::Dead(failure);
            }
            ::metrics::counter!(metrics::WEBHOOK_RETRIES).increment(1);
            tracing::debug!(failure, pause_ms = pause.as_millis() as u64, "webhook POST failed; retrying");
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One POST; `Err` says why it failed (a status, a timeout, no connection).
    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let mut request = self
            .client
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(secret) = &self.config.secret {
            request = request.header(signature::HEADER, signature::sign(secret, unix_ms() / 1000, body));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            Err(e) if e.is_timeout() => Err("timeout".into()),
            Err(e) if e.is_connect() => Err("connection refused or unreachable".into()),
            // Without the URL: it may carry a credential, and this reason is logged and kept.
            Err(e) => Err(format!("request failed: {}", e.without_url())),
        }
    }

    /// Renews the shard's lease every [`LEASE_RENEW`]; returns once it is lost (another
    /// router took it, or the store cannot be reached to renew it).
    async fn keep_lease(&self, shard: usize) {
        loop {
            tokio::time::sleep(LEASE_RENEW).await;
            match self.outbox.settle(shard, &self.consumer, &[], None, LEASE).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(shard, "webhook delivery lease lost: another router delivers this shard");
                    return;
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "webhook delivery lease could not be renewed");
                    return;
                }
            }
        }
    }
}
