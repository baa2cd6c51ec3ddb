//! presence-router: a msgpack-over-WebSocket presence router for push-to-talk fleets.
//!
//! Mobile PTT apps hold a WebSocket and heartbeat; dashboards get a snapshot of who is
//! online and then every change; an HTTP API answers bulk lookups. One router runs alone
//! with the embedded engine, or several share presence through Redis.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables.
//! - [`protocol`]: the VoicePing-compatible msgpack frame codec (pure functions), what a
//!   snapshot holds besides its users ([`protocol::live`]: indicators, group counts), the
//!   frames of dashboards that choose their groups ([`protocol::groups`]), and
//!   VoicePing's payload conventions for push-to-talk ([`protocol::voiceping`]).
//! - [`id`], [`presence`]: the data model; ids normalised at the edge, versioned presence.
//! - [`auth`]: JWT verification (signature, then the claims' rules: dates, audience,
//!   issuer, lifetime), the issuer's key set ([`auth::jwks`]: fetched, cached, re-fetched
//!   on rotation within a bound) and where a handshake carries its credentials.
//! - [`scope`]: which users a token may read, the same rule on every path.
//! - [`engine`]: the seam to where presence lives: the stores of state with a lifetime,
//!   [`PresenceStore`](engine::PresenceStore) (leases, transitions) and
//!   [`SignalStore`](engine::SignalStore) (indicators, floors), and the
//!   [`Broker`](engine::Broker) (transient events between routers), which delivers into a
//!   [`BrokerEvents`](engine::BrokerEvents) handler; memory and Redis implementations of
//!   each. The Redis engine runs on one Redis or on a Redis Cluster: its keyspace is split
//!   into hash-tagged shards ([`engine::redis::Keyspace`]), each script runs within one,
//!   and its subscriber is a plain one on one Redis, a sharded one (SSUBSCRIBE, renewed
//!   every second) on a cluster, both handing what they receive to one inbox. Every
//!   transition is appended, as it is decided, to its shard's bounded change log
//!   ([`engine::log`]: a capped stream per shard; the memory engine's ring), from which
//!   dashboards resume. The engine knows nothing of the hub or the relay.
//! - [`transient`]: the messages the broker carries besides transitions (relayed frames
//!   and their audiences, session control) and their wire encoding.
//! - [`fanout`]: this router's side of the seam: the [`BrokerEvents`](engine::BrokerEvents)
//!   handler that hands what the broker delivers to the hub, the relay and the sweeper;
//!   the node delivers its own frames through it too, so indicators reach the hub
//!   whichever router announced them.
//! - [`hub`]: this router's versioned view of presence and of the live indicators, each
//!   group's counts, and the fan-out to dashboards (snapshots, then every change), with the
//!   view's [`position`] in the store's change log, from which a reconnecting dashboard
//!   resumes; and whether that view is fed: STALE while it is not (Redis out of reach, the
//!   subscription lost, transitions missed), FRESH once it is rebuilt ([`hub::Stale`]).
//! - [`relay`]: delivery of transient frames (PTT, TEXT, indicators) to local connections,
//!   and of the news about one session: replaced by a reconnect of its device, or its
//!   idle floor taken over.
//! - [`position`]: a position in the change log as dashboards hold it (an opaque token),
//!   and the name of a scope.
//! - [`node`]: composes engine and fan-out; publishes transitions; sweeps expired leases;
//!   batches the change-log reads of resuming dashboards ([`node::log_reads`]);
//!   arbitrates PTT floors (its own sessions', then the store's); degrades while the store
//!   is out of reach (and only then).
//! - [`renewals`]: heartbeats handed off by connections, renewed in the background.
//! - [`ws`]: the WebSocket handshake, the RFC 6455 framing and socket (budgets, close
//!   handshake, no buffer held while idle) and the per-connection task (its size pinned
//!   in `ws/task_size.rs`; a dashboard's start: a snapshot, or a resume from its
//!   position; its chosen groups and their coalescing: `ws/subscriptions.rs`).
//! - [`http`]: the axum routers, built from a table of routes that `docs/openapi.yaml`
//!   describes: WebSocket endpoint, presence API (its ids-per-second budget per user, and
//!   CORS with `--cors-origins`), the event stream of transitions (`http/events.rs`:
//!   server-sent events resumed from a position, then the hub's fan-out), presence set over
//!   HTTP (`http/set_presence.rs`: status, activity, typing), the probes `/livez`, `/readyz`, `/healthz` (on the public
//!   port, and on `--metrics-addr`), metrics (on the public port or `--metrics-addr`).
//! - [`server`]: the accept loop serving that router, with the limits that apply before a
//!   WebSocket upgrade (the per-address connection budget and its penalty after a 4029,
//!   trusted proxies' forwarded addresses, header timeout and size, handshake cap and its
//!   evictions, accept errors).
//! - [`fds`]: the open-file limit, raised at start and shared out among WebSockets,
//!   handshakes and the rest (defaults scaled down under a small limit).
//! - [`logging`]: the log's format (`--log-format` text or JSON) and filter (`RUST_LOG`),
//!   refused handshakes logged at a capped rate, the line a failed start writes.
//! - [`gcra`]: a rate with a burst kept as one instant per key, for the API and edge
//!   budgets.
//! - [`webhooks`]: every transition POSTed to `--webhook-url` from the change log read as
//!   an outbox ([`engine::outbox`]): batched, signed, retried with backoff, then dead
//!   letters; one router per shard delivers at a time (a lease), in log order.
//! - [`app`]: shared state built from the config; [`metrics`]: metric names.
//!
//! Beside the library: `src/main.rs` (the router binary), `src/bin/presence-load/` (the
//! load tool behind `docs/BENCHMARKS.md`), `src/engine/redis/lua/` (the Redis scripts) and
//! `static/dashboard.html` (the page served at `/dashboard`).
//!
//! [`run`] takes a bound listener, so tests bind `127.0.0.1:0`.

pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod fds;
pub mod gcra;
pub mod http;
pub mod hub;
pub mod id;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod position;
pub mod presence;
pub mod protocol;
pub mod relay;
pub mod renewals;
pub mod scope;
pub mod server;
pub mod transient;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use crate::app::App;

/// Binds the listening socket. Accepted sockets inherit its buffer sizes, which is how
/// `--tcp-send-buffer` reaches every client socket.
pub fn bind(config: &config::Config) -> std::io::Result<TcpListener> {
    let addr = std::net::SocketAddr::new(config.host, config.port);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if let Some(bytes) = config.tcp_send_buffer {
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(addr)?;
    // A deep backlog absorbs reconnect storms after a router restart.
    socket.listen(4096)
}

/// Most connections at once on the `--metrics-addr` listener: a scraper or two and the
/// health probes.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// Serves until `app.shutdown` is cancelled, then closes every WebSocket with 1012, waits
/// for the connection and background tasks to finish, and flushes relayed frames. The
/// listeners close as soon as `app.shutdown` is cancelled: there is no drain window in
/// which new connections are still accepted (docs/OPERATIONS.md, "Probes").
pub async fn run(listener: TcpListener, app: Arc<App>) -> anyhow::Result<()> {
    run_with_metrics(listener, None, app).await
}

/// [`run`], with `/metrics` served on `metrics` (the `--metrics-addr` listener) instead of
/// the public port when it is given, and the probes there as well as on the public port.
/// That listener has the public port's header timeout, a handshake pool of its own of
/// [`METRICS_MAX_CONNECTIONS`] (so probes are not crowded out by public clients), and stops
/// with it.
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    app: Arc<App>,
) -> anyhow::Result<()> {
    let router = http::router(app.clone(), metrics.is_none());
    let public = server::serve(listener, router, &app.limits, app.shutdown.clone());
    match metrics {
        None => public.await,
        Some(metrics) => {
            let limits = app::Limits { max_handshakes: METRICS_MAX_CONNECTIONS, ..app.limits.clone() };
            let scrapes = server::serve(metrics, http::metrics_router(app.clone()), &limits, app.shutdown.clone());
            tokio::join!(public, scrapes);
        }
    }
    app.tracker.close();
    app.tracker.wait().await;
    // The connections' last relayed frames (a talker's STOP) go out before the exit.
    app.node.flush().await;
    Ok(())
}
