//! Webhooks: every presence transition POSTed to `--webhook-url`, at least once, from the
//! store's change log (the outbox, [`crate::engine::outbox`]), in batches, signed with
//! `--webhook-secret`.
//!
//! Delivery runs in tasks of its own ([`deliver`]), one per shard of the log, and never
//! blocks presence: a slow or dead receiver holds up only further webhooks (bounded by the
//! batch in flight, [`WebhookConfig::batch_size`] events), never a connection, the API or
//! `/readyz`. Each shard is delivered by one router at a time, batch after batch in log
//! order, so each user's events arrive in version order (after a receiver drops the ids it
//! has already processed: a batch is sent again after a failure or a takeover).

mod deliver;
pub mod event;
pub mod signature;

use std::{sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{auth::MIN_SECRET_BYTES, engine::outbox::Outbox};

/// The `--webhook-*` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Where every presence transition is POSTed as JSON, in batches (docs/PROTOCOL.md,
    /// "Webhooks"); none: no webhooks. http or https; redirects are not followed.
    #[arg(long, env = "WEBHOOK_URL")]
    #[arg(help_heading = "Webhooks")]
    pub webhook_url: Option<reqwest::Url>,

    /// Signs each POST: `X-Presence-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "t.body">`.
    /// At least 32 bytes.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    #[arg(help_heading = "Webhooks")]
    pub webhook_secret: Option<String>,

    /// Most events in one POST.
    #[arg(long, env = "WEBHOOK_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    #[arg(help_heading = "Webhooks")]
    pub webhook_batch_size: u64,

    /// Longest an event waits for others to share its POST (ms), when fewer than a batch
    /// are waiting.
    #[arg(long, env = "WEBHOOK_BATCH_WAIT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    #[arg(help_heading = "Webhooks")]
    pub webhook_batch_wait_ms: u64,

    /// Longest one POST may take (ms) before it counts as failed.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    #[arg(help_heading = "Webhooks")]
    pub webhook_timeout_ms: u64,

    /// First pause before a failed POST is sent again (ms); doubled each time (with
    /// jitter), at most 30 s.
    #[arg(long, env = "WEBHOOK_BACKOFF_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    #[arg(help_heading = "Webhooks")]
    pub webhook_backoff_ms: u64,

    /// How long a batch is retried (ms) before its events go to the dead letters.
    #[arg(long, env = "WEBHOOK_RETRY_HORIZON_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Webhooks")]
    pub webhook_retry_horizon_ms: u64,
}

/// Longest pause between retries of a batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Webhook delivery as configured.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    pub secret: Option<Arc<[u8]>>,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub timeout: Duration,
    pub backoff: Duration,
    pub retry_horizon: Duration,
}

impl WebhookArgs {
    /// The webhook configuration, `None` without `--webhook-url`; an error for a URL that
    /// is not http(s), or a secret that is too short to resist guessing.
    pub fn config(&self) -> anyhow::Result<Option<WebhookConfig>> {
        let Some(url) = &self.webhook_url else {
            anyhow::ensure!(self.webhook_secret.is_none(), "--webhook-secret is set without --webhook-url");
            return Ok(None);
        };
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "--webhook-url must be http:// or https://, not {}:",
            url.scheme()
        );
        if let Some(secret) = &self.webhook_secret {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "--webhook-secret is {} bytes: use at least {MIN_SECRET_BYTES} random bytes, or a receiver's \
                 signature check can be beaten by guessing it",
                secret.len()
            );
        }
        Ok(Some(WebhookConfig {
            url: url.clone(),
            secret: self.webhook_secret.as_ref().map(|s| Arc::from(s.as_bytes())),
            batch_size: self.webhook_batch_size as usize,
            batch_wait: Duration::from_millis(self.webhook_batch_wait_ms),
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            backoff: Duration::from_millis(self.webhook_backoff_ms),
            retry_horizon: Duration::from_millis(self.webhook_retry_horizon_ms),
        }))
    }
}

/// Starts delivering `outbox` to the configured URL as `consumer` (this router's id): one
/// task per shard, stopped by `shutdown` (a batch in flight is then left to the next
/// holder of its shard, or this router's successor, which sends it again).
pub fn start(
    outbox: Arc<dyn Outbox>,
    config: WebhookConfig,
    consumer: String,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let shards = outbox.shards();
    let deliverer = Arc::new(deliver::Deliverer::new(outbox, config, consumer, shutdown)?);
    for shard in 0..shards {
        tracker.spawn(deliverer.clone().run(shard));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Option<WebhookConfig>> {
        Flags::try_parse_from([&["test"], args].concat())?.webhook.config()
    }

    #[test]
    fn a_short_secret_a_stray_secret_and_another_scheme_are_refused() {
        assert!(config(&[]).unwrap().is_none());
        let url = ["--webhook-url", "https://hooks.example/presence"];
        assert!(config(&url).unwrap().unwrap().secret.is_none());
        let short = config(&[&url[..], &["--webhook-secret", "too-short"]].concat()).unwrap_err();
        assert!(short.to_string().contains("at least 32"), "{short}");
        let long = "k".repeat(32);
        assert!(config(&[&url[..], &["--webhook-secret", &long]].concat()).unwrap().unwrap().secret.is_some());
        assert!(config(&["--webhook-secret", &long]).is_err(), "a secret without a URL");
        assert!(config(&["--webhook-url", "ftp://hooks.example/"]).is_err());
        assert!(config(&[&url[..], &["--webhook-batch-size", "0"]].concat()).is_err());
    }
}
