//! Configuration: command-line flags, each also read from an environment variable
//! (`PORT`, `PRESENCE_ENABLED`, `PRESENCE_TTL`, `REDIS_*`, `JWT_*`). A variable set to
//! nothing counts as unset ([`Config::load`]).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context;
use clap::{
    ArgAction, CommandFactory, FromArgMatches, Parser,
    builder::{BoolishValueParser, RangedU64ValueParser},
};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::{
    engine::{
        Lifetimes,
        redis::{ClusterNodes, RedisConfig},
    },
    logging::LogFormat,
};

/// `--max-connections` when not set: more than one process holds open files on most
/// machines, so the open-file limit usually decides (see `fds`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Every flag, under the heading `--help` lists it with (`help_heading`); fields are in
/// that order.
#[derive(Debug, Clone, Parser)]
#[command(name = "presence-router", version, about = "msgpack-over-WebSocket presence router for push-to-talk fleets")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    #[arg(help_heading = "Network")]
    pub host: IpAddr,

    /// Port for WebSocket and HTTP (0 picks a free one; the bound address is printed).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    #[arg(help_heading = "Network")]
    pub port: u16,

    /// Peers whose `X-Forwarded-For` (else `X-Real-IP`) names the client the per-address
    /// budget keys on: comma-separated CIDRs or addresses, or `none`. Any other peer is
    /// keyed on its own address and its forwarding headers are ignored. Default: loopback
    /// and the private ranges, where a proxy in front of the router sits.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = crate::server::DEFAULT_TRUSTED_PROXIES)]
    #[arg(help_heading = "Network")]
    pub trusted_proxies: crate::server::TrustedProxies,

    /// SO_SNDBUF for client sockets in bytes (default: kernel autotuning, up to 4 MiB on
    /// Linux). A smaller value bounds kernel memory per slow client and makes a stalled
    /// reader show up as a stalled write sooner.
    #[arg(long, env = "TCP_SEND_BUFFER")]
    #[arg(help_heading = "Network")]
    pub tcp_send_buffer: Option<u32>,

    /// HS256 secret that signs client tokens. An empty one is refused: anyone could sign
    /// tokens with it. Shorter than 32 bytes starts with a warning: it can be guessed
    /// offline from a single token.
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        required_unless_present_any = ["jwt_public_key", "jwt_jwks_url", "jwt_jwks_file"],
        value_parser = non_empty_secret
    )]
    #[arg(help_heading = "Tokens")]
    pub jwt_secret: Option<String>,

    /// PEM public key of the token issuer, for asymmetric algorithms (instead of a secret).
    #[arg(long, env = "JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    #[arg(help_heading = "Tokens")]
    pub jwt_public_key: Option<PathBuf>,

    /// Algorithm for --jwt-public-key: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "RS256")]
    #[arg(help_heading = "Tokens")]
    pub jwt_algorithm: String,

    /// URL of the token issuer's key set (JWKS), e.g. Keycloak's
    /// `/realms/<realm>/protocol/openid-connect/certs` or Auth0's `/.well-known/jwks.json`:
    /// each token's `kid` picks its key, and the key's type (or `alg`) its algorithm.
    /// https, or plain http to localhost only. Instead of a secret or a public key.
    #[arg(
        long,
        env = "JWT_JWKS_URL",
        conflicts_with_all = ["jwt_secret", "jwt_public_key", "jwt_jwks_file"],
        value_parser = crate::auth::jwks::parse_url
    )]
    #[arg(help_heading = "Tokens")]
    pub jwt_jwks_url: Option<reqwest::Url>,

    /// A key set (JWKS) in a file, read like --jwt-jwks-url (and read again on the same
    /// schedule, so a rotated file is picked up). Must be readable at start.
    #[arg(long, env = "JWT_JWKS_FILE", conflicts_with_all = ["jwt_secret", "jwt_public_key"])]
    #[arg(help_heading = "Tokens")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Seconds a fetched key set is used before it is fetched again (5 minutes).
    #[arg(long, env = "JWT_JWKS_CACHE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    #[arg(help_heading = "Tokens")]
    pub jwt_jwks_cache_secs: u64,

    /// Least seconds between two fetches of the key set, whatever asks for them: a token
    /// naming a key the set lacks (a rotation) fetches it again only this long after the
    /// last fetch, so made-up `kid`s cannot make the router hammer the identity provider.
    #[arg(long, env = "JWT_JWKS_MIN_REFETCH_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    #[arg(help_heading = "Tokens")]
    pub jwt_jwks_min_refetch_secs: u64,

    /// Audiences this router accepts in a token's `aud`, comma-separated: a token must name
    /// one of them. Unset: a token that names any audience is refused
    /// (`token_audience_not_configured`), since it was issued for some service and this
    /// router cannot tell it is that one.
    #[arg(long, env = "JWT_AUDIENCE", value_delimiter = ',', value_parser = non_empty_name)]
    #[arg(help_heading = "Tokens")]
    pub jwt_audience: Vec<String>,

    /// Issuers this router accepts in a token's `iss`, comma-separated: a token must name
    /// one of them exactly. Unset: `iss` is not read.
    #[arg(long, env = "JWT_ISSUER", value_delimiter = ',', value_parser = non_empty_name)]
    #[arg(help_heading = "Tokens")]
    pub jwt_issuer: Vec<String>,

    /// Longest token lifetime accepted, in seconds from issue (`iat`) to expiry (`exp`);
    /// longer tokens, and tokens without `iat`, are refused. Bounds how long a leaked token
    /// stays useful whatever expiry its issuer gave it. Unset: no limit.
    #[arg(long, env = "MAX_TOKEN_LIFETIME", value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Tokens")]
    pub max_token_lifetime: Option<u64>,

    /// Accept tokens without `exp`, as VoicePing issued them. Such a token stays valid until
    /// its connection ends, and one that leaks is good for ever: prefer tokens that expire.
    /// Refused with `--max-token-lifetime`, which such a token could not meet. Logged at
    /// WARN at start when set.
    #[arg(long, env = "ALLOW_TOKENS_WITHOUT_EXP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    #[arg(help_heading = "Tokens")]
    pub allow_tokens_without_exp: bool,

    /// The claim that names the user: a string or a whole number (`7` and `"7"` are one
    /// id). VoicePing tokens name it `uid`. The claims with a registered meaning (`exp`,
    /// `nbf`, `iat`, `aud`, `iss`, `jti`) and `role` cannot be it.
    #[arg(long, env = "JWT_SUBJECT_CLAIM", default_value = "sub", value_parser = claim_name)]
    #[arg(help_heading = "Tokens")]
    pub jwt_subject_claim: String,

    /// The claim that lists the user's groups, ids as strings or whole numbers. VoicePing
    /// tokens name it `channelIds`. Same restrictions as `--jwt-subject-claim`, whose claim
    /// it cannot be.
    #[arg(long, env = "JWT_GROUPS_CLAIM", default_value = "groups", value_parser = claim_name)]
    #[arg(help_heading = "Tokens")]
    pub jwt_groups_claim: String,

    /// The role of a token without `role`: `mobile` (its own presence and talk, in the
    /// groups its token names), `web`, or `none` to refuse such tokens (401). A watcher role
    /// that may read everyone (`dashboard`, `service`) cannot be a default: a token must
    /// say so.
    #[arg(long, env = "JWT_DEFAULT_ROLE", default_value = "mobile", value_parser = default_role)]
    #[arg(help_heading = "Tokens")]
    pub jwt_default_role: DefaultRole,

    /// Most WebSocket connections at once; more are refused with 503. Lowered at start to
    /// what the open-file limit leaves after `--max-handshakes` and `--fd-reserve` (logged:
    /// at WARN when a value you set is lowered, at INFO for the default).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    #[arg(help_heading = "Connection limits")]
    pub max_connections: usize,

    /// Most TCP connections still speaking HTTP at once on the public port: WebSocket
    /// handshakes in progress and keep-alive API connections. At the cap the connection
    /// that has waited longest for a request head (a slow or silent client, an idle
    /// keep-alive one) is closed to make room, so slow clients can neither exhaust memory
    /// or file descriptors nor lock others out; only when every connection has a request
    /// being served is a newcomer answered 503 `too_many_handshakes`. Upgraded WebSockets
    /// do not count (`--max-connections` caps those). Default: 1024, or a quarter of the
    /// open-file limit when that is less (at least 16).
    #[arg(long, env = "MAX_HANDSHAKES", value_parser = RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    #[arg(help_heading = "Connection limits")]
    pub max_handshakes: Option<usize>,

    /// File descriptors kept beside WebSockets and handshakes: Redis connections, the
    /// listeners, stdio, files, the socket that answers a 503. WebSockets may use the
    /// open-file limit less `--max-handshakes` less this, so at the WebSocket cap
    /// `/healthz`, `/metrics` and the API still answer. Default: 128, or an eighth of the
    /// open-file limit when that is less (at least 32).
    #[arg(long, env = "FD_RESERVE")]
    #[arg(help_heading = "Connection limits")]
    pub fd_reserve: Option<usize>,

    /// Milliseconds a client may take to send a request's headers before its connection is
    /// closed. The same clock runs while a keep-alive connection waits for its next
    /// request, so this is also the idle timeout of plain HTTP keep-alive. Bounds how long
    /// a slow or silent client (slowloris) holds a socket before it upgrades.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Connection limits")]
    pub header_read_timeout_ms: u64,

    /// New connections per second per client address (IPv6: per /64), checked right after
    /// the accept, before any HTTP is parsed or token verified; through a trusted proxy,
    /// requests per second per client it names. Over it: 429 `address_rate_limited` with
    /// `Retry-After`. Addresses in `--trusted-proxies` are not budgeted. 0: no limit.
    #[arg(long, env = "ADDRESS_CONNECT_RATE", default_value_t = 50)]
    #[arg(help_heading = "Connection limits")]
    pub address_connect_rate: u32,

    /// Connections a client address may open at once before `--address-connect-rate`
    /// applies: room for a NAT full of phones reconnecting after a restart.
    #[arg(long, env = "ADDRESS_CONNECT_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    #[arg(help_heading = "Connection limits")]
    pub address_connect_burst: u32,

    /// After a WebSocket is closed 4029 (flooding), new connections from its client address
    /// are refused for this long: 429 `address_penalized` with `Retry-After`. Open
    /// connections are not touched. 0: no penalty; at most a day.
    #[arg(long, env = "ABUSE_PENALTY_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    #[arg(help_heading = "Connection limits")]
    pub abuse_penalty_ms: u64,

    /// Largest inbound WebSocket message in bytes; larger ones close the connection (1009).
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    #[arg(help_heading = "WebSocket limits")]
    pub max_frame_bytes: usize,

    /// Inbound frames per second per connection (token bucket rate): room for 20 ms audio
    /// frames (50/s) plus the rest.
    #[arg(long, env = "FRAME_RATE", default_value_t = 100)]
    #[arg(help_heading = "WebSocket limits")]
    pub frame_rate: u32,

    /// Inbound frame burst per connection; a connection that keeps sending past it is closed (4029).
    /// Every WebSocket frame counts: pings, pongs, text and continuation fragments too.
    #[arg(long, env = "FRAME_BURST", default_value_t = 200)]
    #[arg(help_heading = "WebSocket limits")]
    pub frame_burst: u32,

    /// Inbound payload bytes per second per connection (token bucket rate; the burst is
    /// four times `--max-frame-bytes`). A frame past it is dropped, and a connection
    /// whose frames keep being dropped is closed (4029).
    #[arg(long, env = "BYTE_RATE", default_value_t = 256 * 1024)]
    #[arg(help_heading = "WebSocket limits")]
    pub byte_rate: u32,

    /// Milliseconds a client may take to finish a frame (or a fragmented message) once it
    /// has begun it; past that the connection is closed (1008). Bounds how long a client
    /// can park a buffer of up to `--max-frame-bytes` in the router.
    #[arg(long, env = "FRAME_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "WebSocket limits")]
    pub frame_timeout_ms: u64,

    /// Longest a single write to a client may take before it is dropped as a slow consumer.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    #[arg(help_heading = "WebSocket limits")]
    pub write_timeout_ms: u64,

    /// Transitions each shard's change log keeps, at least (a Redis stream per shard, or
    /// the memory engine's ring): a dashboard that reconnects having missed no more
    /// resumes from its position with just those changes, instead of a full snapshot.
    /// About 100 bytes of Redis memory each (more with long group lists).
    #[arg(long, env = "CHANGE_LOG_ENTRIES", default_value_t = crate::engine::log::DEFAULT_LOG_ENTRIES as u64, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    #[arg(help_heading = "WebSocket limits")]
    pub change_log_entries: u64,

    /// Changes a dashboard may fall behind before it is closed as a slow consumer (4008).
    #[arg(long, env = "DASHBOARD_QUEUE", default_value_t = 8192)]
    #[arg(help_heading = "WebSocket limits")]
    pub dashboard_queue: usize,

    /// Most `GET /api/presence/events` streams open at once (and at most 4 per user); more
    /// get 503 `too_many_streams`. An open stream holds a connection and a file descriptor,
    /// not a slot of `--max-handshakes`, so the open-file budget keeps one for each (see
    /// `--fd-reserve`). Default: 64, or an eighth of the open-file limit when that is less
    /// (at least 4).
    #[arg(long, env = "EVENT_STREAMS", value_parser = RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    #[arg(help_heading = "WebSocket limits")]
    pub event_streams: Option<usize>,

    /// Events queued for one event stream; a client that lets it fill is cut as a slow
    /// consumer.
    #[arg(long, env = "EVENT_STREAM_QUEUE", default_value_t = crate::http::events::DEFAULT_QUEUE, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    #[arg(help_heading = "WebSocket limits")]
    pub event_stream_queue: usize,

    /// Dashboards wait this long after a change to send it with everything else that
    /// changed meanwhile, in one write (batched updates). 0: send at once,
    /// batching only what is already queued. The ring must hold a window's worth.
    #[arg(long, env = "UPDATE_BATCH_MS", default_value_t = 0)]
    #[arg(help_heading = "WebSocket limits")]
    pub update_batch_ms: u64,

    /// MiB of snapshot frames held at once: those dashboards have not finished writing and
    /// the per-scope cache, each frame counted once however many dashboards share it. A
    /// dashboard whose snapshot does not fit waits, holding nothing, up to
    /// `--write-timeout-ms`, then is closed 4008. The default holds 25 distinct 10 MB
    /// (100k-user) snapshots at once; a single snapshot larger than the budget is still
    /// sent while nothing else is held.
    #[arg(long, env = "SNAPSHOT_MEMORY_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    #[arg(help_heading = "WebSocket limits")]
    pub snapshot_memory_mb: u64,

    /// HTTP API budget per user (token subject and role), in user ids per second: a bulk
    /// request costs the ids it asks for, a user lookup 1, a group read 100. Over it the API
    /// answers 429 `rate_limited` with `Retry-After`. 0: no limit.
    #[arg(long, env = "API_IDS_PER_SECOND", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    #[arg(help_heading = "HTTP API limits")]
    pub api_ids_per_second: u32,

    /// Ids a user may spend at once before the rate applies. At least 100, so the largest
    /// request fits. Default: five seconds' worth of `--api-ids-per-second`, at least 100.
    #[arg(long, env = "API_IDS_BURST", value_parser = clap::value_parser!(u32).range(100..))]
    #[arg(help_heading = "HTTP API limits")]
    pub api_ids_burst: Option<u32>,

    /// Origins whose browser pages may call the HTTP API (CORS): comma-separated
    /// `scheme://host[:port]`, or `*` for any. Only the API: not the WebSocket endpoint,
    /// `/metrics` or the probes. Unset: no CORS header is sent, and browsers keep pages of
    /// other origins from reading the API.
    #[arg(long, env = "CORS_ORIGINS", value_parser = crate::http::CorsOrigins::parse)]
    #[arg(help_heading = "HTTP API limits")]
    pub cors_origins: Option<crate::http::CorsOrigins>,

    /// Track presence at all; when false, heartbeats are ignored and the presence API answers 503.
    #[arg(long, env = "PRESENCE_ENABLED", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    #[arg(help_heading = "Presence")]
    pub presence_enabled: bool,

    /// Seconds a session stays online without a heartbeat. A mobile that has never sent
    /// HEARTBEAT is kept by any frame, ping or pong instead, and pinged after a third of
    /// this without one.
    #[arg(long, env = "PRESENCE_TTL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    #[arg(help_heading = "Presence")]
    pub presence_ttl: u64,

    /// Heartbeats closer together than this are acknowledged but not written to the
    /// store. Defaults to a sixth of the TTL.
    #[arg(long, env = "HEARTBEAT_MIN_INTERVAL_MS")]
    #[arg(help_heading = "Presence")]
    pub heartbeat_min_interval_ms: Option<u64>,

    /// How often expired leases are swept.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value_t = 250)]
    #[arg(help_heading = "Presence")]
    pub sweep_interval_ms: u64,

    /// Seconds an offline user's last seen is kept (30 days).
    #[arg(long, env = "LAST_SEEN_SECS", default_value_t = 30 * 24 * 3600)]
    #[arg(help_heading = "Presence")]
    pub last_seen_secs: u64,

    /// Inactivity after which an `online` user is shown `away` (5 minutes).
    #[arg(long, env = "AWAY_AFTER_MS", default_value_t = 5 * 60 * 1000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Presence")]
    pub away_after_ms: u64,

    /// Lifetime of a typing indicator without a refresh (5 s).
    #[arg(long, env = "TYPING_TTL_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Presence")]
    pub typing_ttl_ms: u64,

    /// Lifetime of a recording indicator without a refresh (30 s).
    #[arg(long, env = "RECORDING_TTL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Presence")]
    pub recording_ttl_ms: u64,

    /// On shutdown, sessions stay online this long so clients can reconnect to another
    /// router without flashing offline; those that do not come back go offline after it.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 15_000)]
    #[arg(help_heading = "Presence")]
    pub shutdown_grace_ms: u64,

    /// Longest PTT transmission: the floor is taken back after this (and the talking
    /// indicator, which lives as long as the floor, ends with it).
    #[arg(long, env = "MAX_TALK_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    #[arg(help_heading = "Push-to-talk")]
    pub max_talk_ms: u64,

    /// A PTT floor whose talker has sent no AUDIO for this long (since its START or its
    /// last AUDIO) is taken over by the next START on the channel, as VoicePing did: the
    /// old talker gets a STOP with reason `idle`. 0: never. On the Redis engine the idle
    /// time is measured to within 250 ms (later, never sooner).
    #[arg(long, env = "FLOOR_IDLE_MS", default_value_t = 3_000)]
    #[arg(help_heading = "Push-to-talk")]
    pub floor_idle_ms: u64,

    /// Private channels (START, AUDIO, TEXT to one user) only between users who share a
    /// group; otherwise ERROR `not_allowed` and nothing is relayed. Off: any user may call
    /// any other.
    #[arg(long, env = "PRIVATE_NEEDS_SHARED_GROUP", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    #[arg(help_heading = "Push-to-talk")]
    pub private_needs_shared_group: bool,

    /// USER_ADD (15) may join groups the token does not name, which the session then holds
    /// as if the token named them (their members, PTT, TEXT and indicators). Off: a
    /// session joins back only groups its token names (ERROR `not_a_member` otherwise).
    /// On, any client decides its own groups: a WARN at start says so.
    #[arg(long, env = "USER_ADD_ANY_GROUP", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    #[arg(help_heading = "Push-to-talk")]
    pub user_add_any_group: bool,

    /// Most groups a session holds once USER_ADD joins groups its token does not name
    /// (ERROR `too_many_groups` beyond). A token naming more is served; it joins no more.
    #[arg(long, env = "MAX_SESSION_GROUPS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    #[arg(help_heading = "Push-to-talk")]
    pub max_session_groups: u16,

    /// The Redis server as a URL: `redis://[user[:password]@]host[:port][/db]`, or
    /// `rediss://` for TLS (the server's certificate checked against the system's roots, or
    /// `--redis-ca-cert`). Instead of `--redis-host`, `--redis-port` and `--redis-db`;
    /// `--redis-username` and `--redis-password` may add credentials the URL leaves out.
    /// Without it or `--redis-host`, the router runs alone with the embedded engine.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, conflicts_with_all = ["redis_host", "redis_port", "redis_db"])]
    #[arg(help_heading = "Redis")]
    pub redis_url: Option<String>,

    /// A Redis Cluster (7.0 or later) instead of one Redis: comma-separated nodes to start
    /// from, each `host:port` or a `redis://`/`rediss://` URL (any of the cluster's nodes;
    /// the others are discovered). Login from `--redis-username`/`--redis-password` (or the
    /// URLs), TLS from `rediss://` and `--redis-ca-cert`; database 0 only, as Redis
    /// Cluster has no other.
    #[arg(long, env = "REDIS_CLUSTER_NODES", hide_env_values = true, value_delimiter = ',', conflicts_with_all = ["redis_url", "redis_host", "redis_port", "redis_db"])]
    #[arg(help_heading = "Redis")]
    pub redis_cluster_nodes: Vec<String>,

    /// Shards the keyspace is split into on a Redis Cluster (see docs/OPERATIONS.md):
    /// each holds its users' keys, online index and transition sequence in one hash slot.
    /// Every router of a deployment must use the same number; more shards spread over
    /// more masters.
    #[arg(long, env = "REDIS_CLUSTER_SHARDS", default_value_t = crate::engine::redis::DEFAULT_CLUSTER_SHARDS, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1024), usize::from))]
    #[arg(help_heading = "Redis")]
    pub redis_cluster_shards: usize,

    /// Redis host name or address (plain TCP; for TLS use `--redis-url rediss://…`).
    /// Without it or `--redis-url`, the router runs alone with the embedded engine.
    #[arg(long, env = "REDIS_HOST")]
    #[arg(help_heading = "Redis")]
    pub redis_host: Option<String>,

    /// Port of `--redis-host`.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    #[arg(help_heading = "Redis")]
    pub redis_port: u16,

    /// Database number `--redis-host` selects. Keys are kept apart by database, Pub/Sub
    /// channels are not: deployments sharing one Redis need different `--redis-prefix`es.
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    #[arg(help_heading = "Redis")]
    pub redis_db: u32,

    /// ACL user to log in as (Redis 6 and later). Unset: the `default` user.
    #[arg(long, env = "REDIS_USERNAME")]
    #[arg(help_heading = "Redis")]
    pub redis_username: Option<String>,

    /// Password of that user (`requirepass` for the `default` user).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    #[arg(help_heading = "Redis")]
    pub redis_password: Option<String>,

    /// PEM file of the certificate authority (or the self-signed certificate) that a
    /// `rediss://` server's certificate must chain to, instead of the system's roots.
    #[arg(long, env = "REDIS_CA_CERT")]
    #[arg(help_heading = "Redis")]
    pub redis_ca_cert: Option<PathBuf>,

    /// Prefix of every Redis key and Pub/Sub channel.
    #[arg(long, env = "REDIS_PREFIX", default_value = "presence:")]
    #[arg(help_heading = "Redis")]
    pub redis_prefix: String,

    /// Milliseconds the router gathers heartbeats at most before renewing them in Redis
    /// in one round trip (0–10000; less once 128 are waiting, and never more than a
    /// twentieth of the TTL): longer costs Redis less per heartbeat. Leases and last seen
    /// count from each heartbeat's arrival, so this moves no offline time; it delays only
    /// the online transition of a session whose lease had lapsed.
    #[arg(long, env = "REDIS_RENEWAL_WINDOW_MS", default_value_t = crate::engine::redis::DEFAULT_RENEWAL_WINDOW.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    #[arg(help_heading = "Redis")]
    pub redis_renewal_window_ms: u64,

    /// After Redis comes back, sweeping waits this long so every router can re-assert
    /// its sessions before lapsed leases are announced offline.
    #[arg(long, env = "RECOVERY_GRACE_MS", default_value_t = 3_000)]
    #[arg(help_heading = "Redis")]
    pub recovery_grace_ms: u64,

    /// Format of the log on standard error: `text`, or `json` (one object per line, for log
    /// collectors). Levels and modules are chosen with `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    #[arg(help_heading = "Observability")]
    pub log_format: LogFormat,

    /// Serve `/metrics` on this address only (e.g. `127.0.0.1:9100`), and answer 404 for it
    /// on the public port. Unset: `/metrics` is on the public port.
    #[arg(long, env = "METRICS_ADDR")]
    #[arg(help_heading = "Observability")]
    pub metrics_addr: Option<SocketAddr>,

    /// `--webhook-*`: see [`crate::webhooks`].
    #[command(flatten)]
    pub webhook: crate::webhooks::WebhookArgs,
}

/// Refuses an empty or all-whitespace JWT secret, from the flag or the environment.
fn non_empty_secret(secret: &str) -> Result<String, String> {
    if secret.trim().is_empty() {
        return Err("the JWT secret is empty: anyone could sign tokens this router accepts; \
                    set JWT_SECRET to at least 32 random bytes"
            .into());
    }
    Ok(secret.to_string())
}

/// The role given to tokens without `role` (`--jwt-default-role`); `None`: such tokens are
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRole(pub Option<crate::auth::Role>);

/// `mobile`, `web` or `none`: only roles that read no more than their own groups.
fn default_role(name: &str) -> Result<DefaultRole, String> {
    use crate::auth::Role;
    match name.trim().to_ascii_lowercase().as_str() {
        "mobile" => Ok(DefaultRole(Some(Role::Mobile))),
        "web" => Ok(DefaultRole(Some(Role::Web))),
        "none" => Ok(DefaultRole(None)),
        "dashboard" | "service" => Err(format!(
            "{name} cannot be a default role: without `groups` it reads everyone's presence, which a token \
             must claim itself; use mobile, web or none"
        )),
        _ => Err("expected mobile, web or none".into()),
    }
}

/// A claim name for the user or its groups: not empty, and not a claim whose meaning is
/// fixed (a date, the audience, the issuer, the token id, the role).
fn claim_name(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("empty: name the claim exactly as tokens carry it".into());
    }
    if crate::auth::RESERVED_CLAIMS.contains(&name) {
        return Err(format!("`{name}` has its own meaning in a token and cannot name the user or its groups"));
    }
    Ok(name.to_string())
}

/// Refuses an empty audience or issuer: no token names one, so it would only look set.
fn non_empty_name(name: &str) -> Result<String, String> {
    match name.trim().is_empty() {
        true => Err("empty: name the audience or issuer exactly as tokens carry it".into()),
        false => Ok(name.to_string()),
    }
}

/// One `--redis-cluster-nodes` entry, the `n`th (from 1): `host:port` (`[v6]:port` for an
/// IPv6 address), or a `redis://`/`rediss://` URL of database 0. Errors name the entry's
/// position, never its text (a URL may hold a password).
fn cluster_node(n: usize, node: &str) -> anyhow::Result<ConnectionInfo> {
    let node = node.trim();
    let info = if node.contains("://") {
        node.into_connection_info()
            .map_err(|e| anyhow::anyhow!("--redis-cluster-nodes entry {n} is not a Redis URL: {e}"))?
    } else {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .map(|(host, port)| (host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host), port))
            .filter(|(host, port)| !host.is_empty() && *port != 0)
            .ok_or_else(|| anyhow::anyhow!("--redis-cluster-nodes entry {n} is not host:port (nor a redis:// URL)"))?;
        ConnectionAddr::Tcp(host.to_string(), port).into_connection_info()?
    };
    anyhow::ensure!(
        info.redis_settings().db() == 0,
        "--redis-cluster-nodes entry {n} names a database: a Redis Cluster has only database 0"
    );
    Ok(info)
}

/// The cluster's nodes, each logging in as the ones whose URL names a login: every node
/// of a cluster takes the same one, and naming it in one URL is enough.
fn login_everywhere(nodes: Vec<ConnectionInfo>) -> anyhow::Result<Vec<ConnectionInfo>> {
    let login = |node: &ConnectionInfo| {
        let settings = node.redis_settings();
        (settings.username().map(str::to_owned), settings.password().map(str::to_owned))
    };
    let mut named = nodes.iter().map(login).filter(|login| *login != (None, None));
    let Some(first) = named.next() else { return Ok(nodes) };
    anyhow::ensure!(
        named.all(|other| other == first),
        "--redis-cluster-nodes URLs name different logins: every node of a cluster takes the same one"
    );
    Ok(nodes
        .into_iter()
        .map(|node| {
            let mut settings = node.redis_settings().clone();
            if let Some(username) = &first.0 {
                settings = settings.set_username(username);
            }
            if let Some(password) = &first.1 {
                settings = settings.set_password(password);
            }
            node.set_redis_settings(settings)
        })
        .collect())
}

impl Config {
    /// Parses the command line and the environment; on an error, prints clap's message and
    /// exits. A variable set to nothing (or only spaces), as `VAR=` in a compose file or a
    /// template left blank, counts as unset: the flag's default applies. Except
    /// `JWT_SECRET`: an empty secret is refused with its own message, never read as unset.
    pub fn load() -> Config {
        let blank = |arg: &clap::Arg| {
            let value = arg.get_env().and_then(std::env::var_os);
            arg.get_id() != "jwt_secret" && value.is_some_and(|v| v.to_str().is_some_and(|v| v.trim().is_empty()))
        };
        let mut command =
            Config::command().mut_args(|arg| if blank(&arg) { arg.env(None::<&'static str>) } else { arg });
        let mut matches = command.try_get_matches_from_mut(std::env::args_os()).unwrap_or_else(|e| e.exit());
        Config::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut command).exit())
    }

    /// Where the Redis engine connects, from `--redis-url` or `--redis-host` and the
    /// credential flags; `None` for the embedded engine. Errors name the flag at fault and
    /// never echo the URL, which may hold a password.
    pub fn redis(&self) -> anyhow::Result<Option<RedisConfig>> {
        let servers = match (&self.redis_url, &self.redis_host, self.redis_cluster_nodes.as_slice()) {
            (None, None, []) => return Ok(None),
            (Some(url), _, _) => vec![url.as_str().into_connection_info().map_err(|e| {
                anyhow::anyhow!(
                    "--redis-url (REDIS_URL) is not a Redis URL: {e}; expected \
                     redis://[user[:password]@]host[:port][/db] or rediss://…"
                )
            })?],
            (None, Some(host), _) => {
                let server = ConnectionAddr::Tcp(host.clone(), self.redis_port).into_connection_info()?;
                let settings = server.redis_settings().clone().set_db(self.redis_db.into());
                vec![server.set_redis_settings(settings)]
            }
            (None, None, nodes) => login_everywhere(
                nodes.iter().enumerate().map(|(i, node)| cluster_node(i + 1, node)).collect::<anyhow::Result<_>>()?,
            )?,
        };
        let servers = servers.into_iter().map(|server| self.with_login(server)).collect::<anyhow::Result<Vec<_>>>()?;
        let server = servers[0].clone();
        let root_cert = match &self.redis_ca_cert {
            None => None,
            Some(path) => {
                anyhow::ensure!(
                    matches!(server.addr(), ConnectionAddr::TcpTls { .. }),
                    "--redis-ca-cert is for a TLS connection: give a rediss:// --redis-url"
                );
                let pem = std::fs::read(path).with_context(|| format!("reading --redis-ca-cert {}", path.display()))?;
                anyhow::ensure!(
                    String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----"),
                    "--redis-ca-cert {}: no PEM certificate in it",
                    path.display()
                );
                Some(pem)
            }
        };
        let cluster = (!self.redis_cluster_nodes.is_empty())
            .then(|| ClusterNodes { seeds: servers, shards: self.redis_cluster_shards });
        if cluster.is_some() {
            anyhow::ensure!(
                !self.redis_prefix.contains(['{', '}']),
                "--redis-prefix must not hold '{{' or '}}' on a Redis Cluster: the keys' hash tags follow it"
            );
        }
        let redis = RedisConfig {
            server,
            cluster,
            root_cert,
            prefix: self.redis_prefix.clone(),
            renewal_window: Duration::from_millis(self.redis_renewal_window_ms),
        };
        if let Some(path) = &self.redis_ca_cert {
            // Parsed now: a broken file is named, not reported as a failed connection.
            redis.client().with_context(|| format!("--redis-ca-cert {}", path.display()))?;
        }
        Ok(Some(redis))
    }

    /// `server` with the login of `--redis-username` and `--redis-password`, which must not
    /// name what its URL names already.
    fn with_login(&self, server: ConnectionInfo) -> anyhow::Result<ConnectionInfo> {
        let mut settings = server.redis_settings().clone();
        if let Some(username) = &self.redis_username {
            anyhow::ensure!(
                settings.username().is_none(),
                "the Redis user is named twice: in the Redis URL and --redis-username"
            );
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.redis_password {
            anyhow::ensure!(
                settings.password().is_none(),
                "the Redis password is given twice: in the Redis URL and --redis-password"
            );
            settings = settings.set_password(password);
        }
        Ok(server.set_redis_settings(settings))
    }

    /// What every token's claims must meet (`--jwt-audience`, `--jwt-issuer`,
    /// `--max-token-lifetime`, `--allow-tokens-without-exp`) and how they are read
    /// (`--jwt-subject-claim`, `--jwt-groups-claim`, `--jwt-default-role`). Errors on flags
    /// that contradict each other.
    pub fn token_rules(&self) -> anyhow::Result<crate::auth::Rules> {
        anyhow::ensure!(
            self.jwt_subject_claim != self.jwt_groups_claim,
            "--jwt-subject-claim and --jwt-groups-claim both name `{}`: one claim cannot hold the user and its groups",
            self.jwt_subject_claim
        );
        anyhow::ensure!(
            !(self.allow_tokens_without_exp && self.max_token_lifetime.is_some()),
            "--allow-tokens-without-exp cannot be used with --max-token-lifetime: a token without `exp` has no \
             lifetime to cap"
        );
        Ok(crate::auth::Rules {
            audiences: self.jwt_audience.clone(),
            issuers: self.jwt_issuer.clone(),
            max_lifetime: self.max_token_lifetime,
            subject_claim: self.jwt_subject_claim.clone(),
            groups_claim: self.jwt_groups_claim.clone(),
            default_role: self.jwt_default_role.0,
            allow_without_exp: self.allow_tokens_without_exp,
        })
    }

    /// `--jwt-jwks-cache-secs` and `--jwt-jwks-min-refetch-secs`.
    pub fn jwks_timing(&self) -> crate::auth::jwks::Timing {
        crate::auth::jwks::Timing {
            cache_for: Duration::from_secs(self.jwt_jwks_cache_secs),
            min_refetch: Duration::from_secs(self.jwt_jwks_min_refetch_secs),
        }
    }

    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            ttl: self.ttl(),
            last_seen: self.last_seen(),
            away_after: Duration::from_millis(self.away_after_ms),
            log_entries: usize::try_from(self.change_log_entries).unwrap_or(usize::MAX),
        }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl)
    }

    pub fn last_seen(&self) -> Duration {
        Duration::from_secs(self.last_seen_secs)
    }

    pub fn heartbeat_min_interval(&self) -> Duration {
        self.heartbeat_min_interval_ms.map_or(self.ttl() / 6, Duration::from_millis)
    }

    /// `--api-ids-burst`, or five seconds of `--api-ids-per-second`; never below the largest
    /// request (100 ids).
    pub fn api_ids_burst(&self) -> u32 {
        let largest = crate::http::MAX_USER_IDS as u32;
        self.api_ids_burst.unwrap_or(self.api_ids_per_second.saturating_mul(5)).max(largest)
    }

    /// `--snapshot-memory-mb` in bytes.
    pub fn snapshot_memory(&self) -> usize {
        usize::try_from(self.snapshot_memory_mb << 20).unwrap_or(usize::MAX)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// A mobile that does not heartbeat is pinged after a third of the TTL without a sign
    /// of life: answering, it is heard from twice more before its lease could lapse.
    pub fn ping_interval(&self) -> Duration {
        self.ttl() / 3
    }

    /// A mobile socket silent this long is closed; a little past the TTL so the store's
    /// sweep, not the socket, is what announces the offline.
    pub fn idle_timeout(&self) -> Duration {
        self.ttl() + Duration::from_millis(self.sweep_interval_ms * 4).max(Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::redis::DEFAULT_CLUSTER_SHARDS;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        assert_eq!((c.port, c.presence_ttl, c.presence_enabled, c.redis_port), (3000, 60, true, 6379));
        assert_eq!(c.heartbeat_min_interval(), Duration::from_secs(10));
        assert!(c.redis_host.is_none());
    }

    #[test]
    fn redis_is_named_by_a_url_or_by_its_parts_never_both() {
        let redis = |extra: &[&str]| {
            let config = Config::try_parse_from([&["presence-router", "--jwt-secret", "s"], extra].concat())?;
            Ok::<_, anyhow::Error>(config.redis()?.map(|r| {
                let settings = r.server.redis_settings();
                let tls = matches!(r.server.addr(), ConnectionAddr::TcpTls { .. });
                (r.address(), tls, settings.db(), settings.username().map(str::to_owned), settings.password().is_some())
            }))
        };
        assert_eq!(redis(&[]).unwrap(), None, "the embedded engine");
        assert_eq!(
            redis(&["--redis-url", "rediss://router:p%40ss@redis.internal:6380/2"]).unwrap(),
            Some(("redis.internal:6380".into(), true, 2, Some("router".into()), true))
        );
        assert_eq!(
            redis(&["--redis-host", "10.0.0.5", "--redis-db", "3", "--redis-username", "u", "--redis-password", "p"])
                .unwrap(),
            Some(("10.0.0.5:6379".into(), false, 3, Some("u".into()), true))
        );
        let credentials_beside = redis(&["--redis-url", "redis://h", "--redis-password", "p"]).unwrap();
        assert_eq!(credentials_beside, Some(("h:6379".into(), false, 0, None, true)));

        for both in [&["--redis-host", "h"][..], &["--redis-port", "1"], &["--redis-db", "1"]] {
            let e = redis(&[&["--redis-url", "redis://h"][..], both].concat()).unwrap_err();
            let e = e.downcast::<clap::Error>().unwrap();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{both:?}");
        }
        let e = redis(&["--redis-url", "redis://a:b@h", "--redis-username", "c"]).unwrap_err();
        assert!(e.to_string().contains("named twice"), "{e}");
        let e = redis(&["--redis-url", "redis://h", "--redis-ca-cert", "ca.pem"]).unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        let e = redis(&["--redis-url", "mysql://root:hunter2@h"]).unwrap_err();
        assert!(e.to_string().contains("not a Redis URL") && !e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seed_nodes() {
        let cluster = |extra: &[&str]| {
            let config = Config::try_parse_from([&["presence-router", "--jwt-secret", "s"], extra].concat())?;
            Ok::<_, anyhow::Error>(config.redis()?.and_then(|r| r.cluster).map(|c| {
                let seeds = c.seeds.iter().map(|s| (s.addr().to_string(), s.redis_settings().password().is_some()));
                (seeds.collect::<Vec<_>>(), c.shards)
            }))
        };
        assert_eq!(
            cluster(&[
                "--redis-cluster-nodes",
                "10.0.0.1:7000, redis://u:p@10.0.0.2:7001",
                "--redis-cluster-shards",
                "64"
            ])
            .unwrap(),
            Some((vec![("10.0.0.1:7000".into(), true), ("10.0.0.2:7001".into(), true)], 64)),
            "a login named in one URL is every node's"
        );
        assert_eq!(
            cluster(&["--redis-cluster-nodes", "[::1]:7000,::1:7001"]).unwrap(),
            Some((vec![("::1:7000".into(), false), ("::1:7001".into(), false)], DEFAULT_CLUSTER_SHARDS))
        );
        let e = cluster(&["--redis-cluster-nodes", "redis://a:b@h:1,redis://a:c@h:2"]).unwrap_err();
        assert!(e.to_string().contains("different logins") && !e.to_string().contains("c@"), "{e}");
        let e = cluster(&["--redis-cluster-nodes", "h:1,h:99999"]).unwrap_err();
        assert!(e.to_string().contains("entry 2"), "{e}");
        let with_password = cluster(&["--redis-cluster-nodes", "a:1,b:2", "--redis-password", "p"]).unwrap();
        assert_eq!(with_password, Some((vec![("a:1".into(), true), ("b:2".into(), true)], DEFAULT_CLUSTER_SHARDS)));
        assert_eq!(cluster(&["--redis-host", "h"]).unwrap(), None, "one Redis is no cluster");

        for bad in ["h", "h:port", ":7000", "redis://h:7000/2", "mysql://root:hunter2@h"] {
            let e = cluster(&["--redis-cluster-nodes", bad]).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = cluster(&["--redis-cluster-nodes", "h:1", "--redis-url", "redis://h"]).unwrap_err();
        assert_eq!(e.downcast::<clap::Error>().unwrap().kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = cluster(&["--redis-cluster-nodes", "h:1", "--redis-prefix", "p{x}:"]).unwrap_err();
        assert!(e.to_string().contains("hash tags"), "{e}");
        for shards in ["0", "1025"] {
            assert!(cluster(&["--redis-cluster-nodes", "h:1", "--redis-cluster-shards", shards]).is_err());
        }
    }

    #[test]
    fn every_flag_has_a_help_text_a_variable_and_a_heading() {
        let command = Config::command();
        for arg in command.get_arguments() {
            let id = arg.get_id();
            assert!(arg.get_help().is_some_and(|h| !h.to_string().is_empty()), "{id} has no help text");
            assert!(arg.get_env().is_some(), "{id} has no environment variable");
            assert!(arg.get_help_heading().is_some(), "{id} is listed under no heading");
        }
    }

    #[test]
    fn a_key_is_required_and_ttl_is_bounded() {
        assert!(Config::try_parse_from(["presence-router"]).is_err());
        assert!(Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--presence-ttl", "0"]).is_err());
        let c =
            Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--presence-enabled", "false"]).unwrap();
        assert!(!c.presence_enabled);
    }

    #[test]
    fn an_empty_secret_is_refused_with_a_message_that_says_so() {
        for empty in ["", "   ", "\t"] {
            let e = Config::try_parse_from(["presence-router", "--jwt-secret", empty]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{empty:?}");
            assert!(e.to_string().contains("the JWT secret is empty"), "{e}");
        }
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", " short but set "]).unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some(" short but set "), "used as given, not trimmed");
    }

    #[test]
    fn the_api_budget_defaults_to_1000_ids_a_second_with_five_seconds_of_burst() {
        let parse = |extra: &[&str]| {
            Config::try_parse_from([&["presence-router", "--jwt-secret", "s"], extra].concat()).map(|c| {
                let burst = c.api_ids_burst();
                (c.api_ids_per_second, burst)
            })
        };
        assert_eq!(parse(&[]).unwrap(), (1000, 5000));
        assert_eq!(parse(&["--api-ids-per-second", "10"]).unwrap(), (10, 100), "room for the largest request");
        assert_eq!(parse(&["--api-ids-per-second", "0"]).unwrap(), (0, 100));
        assert_eq!(parse(&["--api-ids-per-second", "50", "--api-ids-burst", "120"]).unwrap(), (50, 120));
        assert!(parse(&["--api-ids-burst", "99"]).is_err(), "a full request could never pass");
        assert!(parse(&["--api-ids-per-second", "-1"]).is_err());
    }

    #[test]
    fn cors_is_off_unless_origins_are_named() {
        let parse = |extra: &[&str]| {
            Config::try_parse_from([&["presence-router", "--jwt-secret", "s"], extra].concat()).map(|c| c.cors_origins)
        };
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&["--cors-origins", "*"]).unwrap(), Some(crate::http::CorsOrigins::Any));
        let named = parse(&["--cors-origins", "https://a.test,https://b.test"]).unwrap().unwrap();
        assert_eq!(named.to_string(), "https://a.test,https://b.test");
        let e = parse(&["--cors-origins", "https://a.test/app"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
    }

    #[test]
    fn metrics_stay_on_the_public_port_unless_an_address_is_given() {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        assert_eq!(c.metrics_addr, None);
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--metrics-addr", "127.0.0.1:9100"])
            .unwrap();
        assert_eq!(c.metrics_addr, Some(([127, 0, 0, 1], 9100).into()));
        assert!(Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--metrics-addr", "9100"]).is_err());
    }

    #[test]
    fn snapshot_memory_defaults_to_256_mib() {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        assert_eq!(c.snapshot_memory(), crate::hub::DEFAULT_SNAPSHOT_MEMORY);
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--snapshot-memory-mb", "32"]).unwrap();
        assert_eq!(c.snapshot_memory(), 32 << 20);
        for bad in ["0", "-1", "1G"] {
            assert!(
                Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--snapshot-memory-mb", bad]).is_err()
            );
        }
    }

    #[test]
    fn token_lifetime_is_unlimited_unless_set() {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        assert_eq!(c.max_token_lifetime, None);
        let c =
            Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--max-token-lifetime", "3600"]).unwrap();
        assert_eq!(c.max_token_lifetime, Some(3600));
        for bad in ["0", "-1", "1h"] {
            assert!(
                Config::try_parse_from(["presence-router", "--jwt-secret", "s", "--max-token-lifetime", bad]).is_err()
            );
        }
    }

    #[test]
    fn a_key_set_replaces_the_secret_and_is_the_only_source_of_keys() {
        let url = ["presence-router", "--jwt-jwks-url", "https://idp.example/realms/ptt/protocol/openid-connect/certs"];
        let c = Config::try_parse_from(url).unwrap();
        assert_eq!(c.jwt_jwks_url.as_ref().map(|u| u.host_str()), Some(Some("idp.example")));
        assert_eq!((c.jwt_jwks_cache_secs, c.jwt_jwks_min_refetch_secs), (300, 10));
        assert!(Config::try_parse_from(["presence-router", "--jwt-jwks-file", "/etc/jwks.json"]).is_ok());
        for other in [&["--jwt-secret", "s"][..], &["--jwt-public-key", "k.pem"], &["--jwt-jwks-file", "j.json"]] {
            let e = Config::try_parse_from([&url[..], other].concat()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{other:?}");
        }
        let e = Config::try_parse_from(["presence-router", "--jwt-jwks-url", "http://idp.example/certs"]).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        for bad in ["0", "86401", "-1"] {
            assert!(Config::try_parse_from([&url[..], &["--jwt-jwks-min-refetch-secs", bad]].concat()).is_err());
            assert!(Config::try_parse_from([&url[..], &["--jwt-jwks-cache-secs", bad]].concat()).is_err());
        }
    }

    #[test]
    fn audiences_and_issuers_are_comma_separated_and_never_empty() {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        let rules = c.token_rules().unwrap();
        assert!(rules.audiences.is_empty() && rules.issuers.is_empty());
        let c = Config::try_parse_from([
            "presence-router",
            "--jwt-secret",
            "s",
            "--jwt-audience",
            "presence,account",
            "--jwt-issuer",
            "https://idp.example/realms/ptt",
            "--max-token-lifetime",
            "600",
        ])
        .unwrap();
        let rules = c.token_rules().unwrap();
        assert_eq!(rules.audiences, ["presence", "account"]);
        assert_eq!(rules.issuers, ["https://idp.example/realms/ptt"]);
        assert_eq!(rules.max_lifetime, Some(600));
        for flag in ["--jwt-audience", "--jwt-issuer"] {
            for empty in ["", " ", "presence,"] {
                let e = Config::try_parse_from(["presence-router", "--jwt-secret", "s", flag, empty]).unwrap_err();
                assert!(e.to_string().contains("empty"), "{flag} {empty:?}: {e}");
            }
        }
    }

    #[test]
    fn claim_names_default_role_and_tokens_without_exp() {
        let parse =
            |extra: &[&str]| Config::try_parse_from([&["presence-router", "--jwt-secret", "s"], extra].concat());
        let rules = parse(&[]).unwrap().token_rules().unwrap();
        assert_eq!((rules.subject_claim.as_str(), rules.groups_claim.as_str()), ("sub", "groups"));
        assert_eq!((rules.default_role, rules.allow_without_exp), (Some(crate::auth::Role::Mobile), false));
        let voiceping =
            ["--jwt-subject-claim", "uid", "--jwt-groups-claim", "channelIds", "--allow-tokens-without-exp"];
        let rules = parse(&voiceping).unwrap().token_rules().unwrap();
        assert_eq!((rules.subject_claim.as_str(), rules.groups_claim.as_str()), ("uid", "channelIds"));
        assert!(rules.allow_without_exp);
        assert_eq!(parse(&["--jwt-default-role", "none"]).unwrap().token_rules().unwrap().default_role, None);
        assert_eq!(parse(&["--jwt-default-role", "web"]).unwrap().jwt_default_role.0, Some(crate::auth::Role::Web));

        for (flags, says) in [
            (&["--jwt-default-role", "dashboard"][..], "reads everyone"),
            (&["--jwt-default-role", "service"], "reads everyone"),
            (&["--jwt-default-role", "admin"], "mobile, web or none"),
            (&["--jwt-subject-claim", ""], "empty"),
            (&["--jwt-subject-claim", "exp"], "its own meaning"),
            (&["--jwt-groups-claim", "role"], "its own meaning"),
            (&["--allow-tokens-without-exp", "maybe"], "unexpected argument"),
        ] {
            let e = parse(flags).unwrap_err().to_string();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
        let same = parse(&["--jwt-subject-claim", "uid", "--jwt-groups-claim", "uid"]).unwrap();
        assert!(same.token_rules().unwrap_err().to_string().contains("both name `uid`"));
        let capped = parse(&["--allow-tokens-without-exp", "--max-token-lifetime", "600"]).unwrap();
        assert!(capped.token_rules().unwrap_err().to_string().contains("--max-token-lifetime"));
    }
}
