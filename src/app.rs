//! Everything a request handler or connection task needs, built once from the config.

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use jsonwebtoken::Algorithm;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::{Authenticator, Jwks, MIN_SECRET_BYTES, jwks},
    config::Config,
    engine::{
        Engine, MemoryBroker, MemoryPresence,
        outbox::{MemoryOutbox, Outbox},
        redis::{RedisBroker, RedisConfig, RedisPresence},
    },
    fanout::FanOut,
    http::{ApiLimiter, Cors},
    hub::Hub,
    node::{Node, Timing, new_router_id},
    relay::Relay,
    server::{BudgetLimits, TrustedProxies},
    webhooks,
};

/// Per-connection limits, from the config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// How long a connection may take to send request headers, and how long plain HTTP
    /// keep-alive may sit idle.
    pub header_read_timeout: Duration,
    /// Most connections still speaking HTTP (not yet upgraded) at once, per listener.
    pub max_handshakes: usize,
    /// New connections per client address, and the penalty after a 4029.
    pub address_budget: BudgetLimits,
    /// Peers whose forwarding headers name the client the budget keys on.
    pub trusted_proxies: TrustedProxies,
    pub max_frame_bytes: usize,
    pub frame_rate: u32,
    pub frame_burst: u32,
    /// Inbound payload bytes per second per connection.
    pub byte_rate: u32,
    /// How long a begun frame or fragmented message may stay unfinished.
    pub frame_timeout: Duration,
    pub heartbeat_min_interval: Duration,
    /// A session's lease (`--presence-ttl`), told to clients in HEARTBEAT_ACK.
    pub presence_ttl: Duration,
    pub idle_timeout: Duration,
    /// A mobile that does not heartbeat is pinged after this long without a sign of life.
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    pub update_batch: Duration,
    pub away_after: Duration,
    pub typing_ttl: Duration,
    pub recording_ttl: Duration,
    pub max_talk: Duration,
    /// How long a talker may send no AUDIO before another START takes its floor; `None`:
    /// never.
    pub floor_idle: Option<Duration>,
    pub private_needs_shared_group: bool,
    /// USER_ADD may join groups the token does not name (`--user-add-any-group`).
    pub user_add_any_group: bool,
    /// Most groups a session holds after joining groups beyond its token's.
    pub max_session_groups: usize,
}

pub struct App {
    pub node: Arc<Node>,
    pub auth: Authenticator,
    pub limits: Limits,
    pub presence_enabled: bool,
    /// Caps open WebSockets; a permit lives as long as its connection.
    pub connections: Arc<Semaphore>,
    /// Connection and background tasks, awaited on shutdown: hyper's graceful shutdown
    /// does not wait for upgraded connections.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    pub metrics: Option<PrometheusHandle>,
    /// The HTTP API's ids-per-second budget per user (`--api-ids-per-second`).
    pub api_limiter: Arc<ApiLimiter>,
    /// The HTTP API's CORS (`--cors-origins`); `None`: no CORS header is sent.
    pub cors: Option<Arc<Cors>>,
    /// The bounds of `GET /api/presence/events` (`--event-streams`, `--event-stream-queue`).
    pub event_streams: crate::http::EventStreams,
    /// Typing indicators started over `POST /api/presence/typing`, ended when they lapse.
    pub http_typing: crate::http::HttpTyping,
}

impl App {
    /// Builds the engine the config names, starts the node, and returns the shared state.
    pub async fn start(config: &Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Arc<App>> {
        // First: a key that cannot load is a configuration error, reported before anything starts.
        let auth = authenticator(config).await?;
        let hub = Arc::new(Hub::with_snapshot_memory(config.dashboard_queue, config.snapshot_memory()));
        let fanout = Arc::new(FanOut::new(hub, Arc::new(Relay::for_max_frame_bytes(config.max_frame_bytes))));
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        let router_id = new_router_id();
        let redis = config.redis()?;
        let redis_at = redis.as_ref().map(RedisConfig::address);
        let webhook = config.webhook.config()?;
        // The change log read as the webhook outbox, when webhooks are on.
        let mut outbox: Option<Arc<dyn Outbox>> = None;
        let engine = match redis {
            None => {
                let store = Arc::new(MemoryPresence::new(config.lifetimes()));
                if webhook.is_some() {
                    outbox = Some(Arc::new(MemoryOutbox::new(store.clone())));
                }
                Engine::new("memory", store, Arc::new(MemoryBroker::new(fanout.clone())))
            }
            Some(redis) => {
                let at = redis.address();
                let store = RedisPresence::connect(&redis, config.lifetimes(), Some(&router_id))
                    .await
                    .with_context(|| format!("connecting to Redis at {at}"))?;
                if webhook.is_some() {
                    let made = store.outbox().await.with_context(|| format!("making the webhook outbox at {at}"))?;
                    outbox = Some(Arc::new(made));
                }
                let broker = RedisBroker::new(&store, router_id.clone());
                let subscribed = broker.subscribe(&redis, fanout.clone(), shutdown.clone(), &tracker)?;
                // The first snapshot is read after the subscription stands: no update falls
                // between the two.
                tokio::time::timeout(Duration::from_secs(5), subscribed)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .with_context(|| format!("subscribing to Redis at {at}"))?;
                let name = if redis.cluster.is_some() { "redis-cluster" } else { "redis" };
                Engine::new(name, Arc::new(store), Arc::new(broker))
            }
        };
        let timing = Timing {
            sweep_interval: Duration::from_millis(config.sweep_interval_ms),
            recovery_grace: Duration::from_millis(config.recovery_grace_ms),
            probe_interval: Duration::from_millis(500),
            last_seen: config.last_seen(),
        };
        let node = Arc::new(Node::new(engine, fanout, timing, router_id.clone()));
        node.start(shutdown.clone(), &tracker).await.context("starting the presence engine")?;
        if let (Some(webhook), Some(outbox)) = (webhook, outbox) {
            tracing::info!(host = webhook.url.host_str(), signed = webhook.secret.is_some(), "webhooks on");
            if webhook.secret.is_none() {
                tracing::warn!(
                    "webhooks are not signed (no --webhook-secret): a receiver cannot tell the router's requests \
                     from forged ones"
                );
            }
            webhooks::start(outbox, webhook, router_id, shutdown.clone(), &tracker)?;
        }
        tracing::info!(
            engine = node.engine_name(),
            redis = redis_at,
            router = node.router_id(),
            ttl = config.presence_ttl,
            "presence engine started"
        );

        let api_limiter = Arc::new(ApiLimiter::new(config.api_ids_per_second, config.api_ids_burst()));
        api_limiter.spawn_sweeper(shutdown.clone(), &tracker);
        match api_limiter.rate() {
            Some(rate) => tracing::info!(rate, burst = config.api_ids_burst(), "HTTP API budget per user, in ids"),
            None => {
                tracing::warn!("HTTP API budget off (--api-ids-per-second 0): any token may look up ids without limit")
            }
        }

        match (config.address_connect_rate, config.abuse_penalty_ms) {
            (0, 0) => tracing::warn!(
                "per-address connection budget off (--address-connect-rate 0, --abuse-penalty-ms 0): a client \
                 closed 4029 may reconnect and flood again at once"
            ),
            (rate, penalty_ms) => tracing::info!(
                rate,
                burst = config.address_connect_burst,
                penalty_ms,
                trusted_proxies = %config.trusted_proxies,
                "per-address connection budget"
            ),
        }

        if let Some(origins) = &config.cors_origins {
            tracing::info!(%origins, "CORS for the HTTP API");
        }

        if config.user_add_any_group {
            tracing::warn!(
                max_session_groups = config.max_session_groups,
                "USER_ADD may join any group (--user-add-any-group): a mobile session reads, talks and types in \
                 groups its token does not name"
            );
        }

        Ok(Arc::new(App {
            node,
            auth,
            limits: Limits {
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout(),
                // Settled by `fds::apply` at start; the default otherwise.
                max_handshakes: config.max_handshakes.unwrap_or(crate::fds::DEFAULT_MAX_HANDSHAKES),
                address_budget: BudgetLimits {
                    rate: config.address_connect_rate,
                    burst: config.address_connect_burst,
                    penalty: Duration::from_millis(config.abuse_penalty_ms),
                },
                trusted_proxies: config.trusted_proxies.clone(),
                max_frame_bytes: config.max_frame_bytes,
                frame_rate: config.frame_rate,
                frame_burst: config.frame_burst,
                byte_rate: config.byte_rate,
                frame_timeout: Duration::from_millis(config.frame_timeout_ms),
                heartbeat_min_interval: config.heartbeat_min_interval(),
                presence_ttl: config.ttl(),
                idle_timeout: config.idle_timeout(),
                ping_interval: config.ping_interval(),
                write_timeout: Duration::from_millis(config.write_timeout_ms),
                shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
                update_batch: Duration::from_millis(config.update_batch_ms),
                away_after: Duration::from_millis(config.away_after_ms),
                typing_ttl: Duration::from_millis(config.typing_ttl_ms),
                recording_ttl: Duration::from_millis(config.recording_ttl_ms),
                max_talk: Duration::from_millis(config.max_talk_ms),
                floor_idle: (config.floor_idle_ms > 0).then(|| Duration::from_millis(config.floor_idle_ms)),
                private_needs_shared_group: config.private_needs_shared_group,
                user_add_any_group: config.user_add_any_group,
                max_session_groups: config.max_session_groups.into(),
            },
            presence_enabled: config.presence_enabled,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            tracker,
            shutdown,
            metrics,
            api_limiter,
            cors: config.cors_origins.clone().map(Cors::new),
            event_streams: crate::http::EventStreams::new(
                // Settled by `fds::apply` at start; the default otherwise.
                config.event_streams.unwrap_or(crate::http::events::DEFAULT_MAX_STREAMS),
                config.event_stream_queue,
            ),
            http_typing: crate::http::HttpTyping::default(),
        }))
    }
}

impl Limits {
    /// Payload bytes a connection may send in one burst: room for a few maximal frames.
    pub fn byte_burst(&self) -> u32 {
        u32::try_from(self.max_frame_bytes.saturating_mul(4)).unwrap_or(u32::MAX).max(self.byte_rate)
    }
}

impl App {
    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.connections.available_permits()
    }
}

async fn authenticator(config: &Config) -> anyhow::Result<Authenticator> {
    let rules = config.token_rules()?;
    if rules.allow_without_exp {
        tracing::warn!(
            "tokens without exp are accepted (--allow-tokens-without-exp): such a token stays valid until its \
             connection ends, and one that leaks can be used for ever; issue tokens that expire"
        );
    }
    let auth = match (&config.jwt_secret, &config.jwt_public_key, key_set_source(config)) {
        (Some(secret), _, _) => {
            // The config refuses an empty secret; this guards a Config built some other way.
            anyhow::ensure!(!secret.trim().is_empty(), "the JWT secret is empty: anyone could sign tokens");
            if secret.len() < MIN_SECRET_BYTES {
                tracing::warn!(
                    bytes = secret.len(),
                    "JWT secret is shorter than {MIN_SECRET_BYTES} bytes: it can be guessed offline from any \
                     token it signed, and then tokens forged; use at least {MIN_SECRET_BYTES} random bytes"
                );
            }
            Authenticator::hs256(secret.as_bytes())
        }
        (None, Some(path), _) => {
            let pem = std::fs::read(path).with_context(|| format!("reading JWT public key {}", path.display()))?;
            let algorithm = Algorithm::from_str(&config.jwt_algorithm)
                .with_context(|| format!("JWT algorithm {}", config.jwt_algorithm))?;
            Authenticator::public_key(&pem, algorithm)
                .with_context(|| format!("JWT public key {} ({algorithm:?})", path.display()))?
        }
        (None, None, Some(source)) => Authenticator::key_set(Jwks::load(source, config.jwks_timing()).await?),
        (None, None, None) => anyhow::bail!("set JWT_SECRET, JWT_PUBLIC_KEY, JWT_JWKS_URL or JWT_JWKS_FILE"),
    };
    Ok(auth.rules(rules))
}

/// Where the key set comes from, when the config names one.
fn key_set_source(config: &Config) -> Option<jwks::Source> {
    let url = config.jwt_jwks_url.clone().map(jwks::Source::Url);
    url.or_else(|| config.jwt_jwks_file.clone().map(jwks::Source::File))
}
