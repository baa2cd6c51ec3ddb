//! Prometheus metrics: names, help texts, and the recorder.
//!
//! Labels are low-cardinality by construction (roles, results, reasons, routes, status
//! classes); never a user id. `/metrics` renders the recorder installed by [`install`].

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const ONLINE_USERS: &str = "presence_online_users";
pub const CONNECTIONS: &str = "presence_connections";
pub const HEARTBEATS: &str = "presence_heartbeats_total";
pub const TRANSITIONS: &str = "presence_transitions_total";
pub const TTL_EXPIRATIONS: &str = "presence_ttl_expirations_total";
pub const STALE_UPDATES: &str = "presence_stale_updates_total";
pub const UPDATE_LATENCY: &str = "presence_update_latency_seconds";
pub const API_REQUESTS: &str = "presence_api_requests_total";
pub const API_RATE_LIMITED: &str = "presence_api_rate_limited_total";
pub const API_RATE_LIMIT_KEYS: &str = "presence_api_rate_limit_keys";
pub const FRAMES_RECEIVED: &str = "presence_frames_received_total";
pub const FRAME_ERRORS: &str = "presence_frame_errors_total";
pub const HANDSHAKE_REJECTIONS: &str = "presence_handshake_rejections_total";
pub const REFRESHES: &str = "presence_token_refreshes_total";
pub const STORE_WRITES_DROPPED: &str = "presence_store_writes_dropped_total";
pub const DISCONNECTS: &str = "presence_disconnects_total";
pub const ENGINE_ERRORS: &str = "presence_engine_errors_total";
pub const ENGINE_UP: &str = "presence_engine_up";
pub const BROKER_MESSAGES: &str = "presence_broker_messages_total";
pub const BROKER_GAPS: &str = "presence_broker_gaps_total";
pub const RELAYED: &str = "presence_relayed_frames_total";
pub const RELAY_OVERFLOWS: &str = "presence_relay_overflows_total";
pub const RELAY_DROPPED: &str = "presence_relay_dropped_total";
pub const FLOOR_REQUESTS: &str = "presence_floor_requests_total";
pub const INDICATORS: &str = "presence_indicator_events_total";
pub const HTTP_CONNECTIONS: &str = "presence_http_connections";
pub const HTTP_WAITING: &str = "presence_http_waiting";
pub const HTTP_REFUSED: &str = "presence_http_refused_total";
pub const HTTP_EVICTIONS: &str = "presence_http_evictions_total";
pub const EDGE_ADDRESSES: &str = "presence_edge_addresses";
pub const EDGE_PENALTIES: &str = "presence_edge_penalties_total";
pub const HTTP_CONNECTION_ERRORS: &str = "presence_http_connection_errors_total";
pub const ACCEPT_ERRORS: &str = "presence_accept_errors_total";
pub const SNAPSHOTS: &str = "presence_snapshots_total";
pub const SNAPSHOT_ENCODES: &str = "presence_snapshot_encodes_total";
pub const SNAPSHOT_MEMORY: &str = "presence_snapshot_memory_bytes";
pub const SNAPSHOT_WAITS: &str = "presence_snapshot_waits_total";

/// Seconds; update latency on loopback is sub-millisecond, across sites tens of ms.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(UPDATE_LATENCY.into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_gauge!(ONLINE_USERS, "Users online in the cluster, as this router's view has them.");
    describe_gauge!(CONNECTIONS, "Open WebSocket connections on this router, by role.");
    describe_counter!(HEARTBEATS, "Heartbeats received, by result (accepted, coalesced, rejected, failed).");
    describe_counter!(TRANSITIONS, "Presence transitions this router decided and published, by cause.");
    describe_counter!(TTL_EXPIRATIONS, "Users marked offline because no heartbeat renewed their lease in time.");
    describe_counter!(STALE_UPDATES, "Presence updates dropped because a newer version was already applied.");
    describe_histogram!(
        UPDATE_LATENCY,
        Unit::Seconds,
        "From a transition being decided to its frame being written to a dashboard."
    );
    describe_counter!(API_REQUESTS, "HTTP API requests, by route and status code.");
    describe_counter!(
        API_RATE_LIMITED,
        "HTTP API requests answered 429 rate_limited: their user's ids-per-second budget was spent, by route."
    );
    describe_gauge!(
        API_RATE_LIMIT_KEYS,
        "Users (subject and role) whose API budget is not full, as of the last sweep of the rate limiter."
    );
    describe_counter!(FRAMES_RECEIVED, "WebSocket frames received, by message type family.");
    describe_counter!(FRAME_ERRORS, "Inbound frames refused, by reason.");
    describe_counter!(HANDSHAKE_REJECTIONS, "WebSocket handshakes refused, by reason.");
    describe_counter!(
        STORE_WRITES_DROPPED,
        "Store writes handed off by connections (activity, indicators) dropped: queue full."
    );
    describe_counter!(REFRESHES, "REFRESH frames (token refreshes on open connections), by result.");
    describe_counter!(DISCONNECTS, "WebSocket connections ended, by reason.");
    describe_counter!(ENGINE_ERRORS, "Presence store or broker calls that failed, by operation.");
    describe_gauge!(ENGINE_UP, "1 while the presence store answers and presence is rebuilt, 0 while degraded.");
    describe_counter!(BROKER_GAPS, "Transitions that never arrived from the broker, each answered by a resync.");
    describe_counter!(BROKER_MESSAGES, "Messages received from the broker, by kind (update, relay, expired, invalid).");
    describe_counter!(RELAYED, "PTT, TEXT and indicator frames this router sent towards receivers, by type.");
    describe_counter!(RELAY_OVERFLOWS, "Connections closed because their queue of relayed frames was full.");
    describe_counter!(RELAY_DROPPED, "Relayed frames not sent to other routers: the publish queue was full.");
    describe_counter!(FLOOR_REQUESTS, "PTT START requests, by result (granted, busy, local_only).");
    describe_counter!(INDICATORS, "Indicator starts and ends broadcast, by type and isActive.");
    describe_gauge!(
        HTTP_CONNECTIONS,
        "TCP connections still speaking HTTP (handshakes in progress, keep-alive API clients), capped by MAX_HANDSHAKES \
         (the public port and --metrics-addr together)."
    );
    describe_gauge!(
        HTTP_WAITING,
        "Of presence_http_connections, those waiting for a request head (new, or keep-alive between requests): the \
         ones closed first to make room at MAX_HANDSHAKES."
    );
    describe_counter!(
        HTTP_REFUSED,
        "Connections and requests refused before any handler ran, by reason: too_many_handshakes (503 at \
         MAX_HANDSHAKES with every connection being served), address_rate (429: the client address spent its \
         ADDRESS_CONNECT_RATE budget), address_penalty (429: a WebSocket from the address was closed 4029 within \
         ABUSE_PENALTY_MS)."
    );
    describe_gauge!(
        EDGE_ADDRESSES,
        "Client addresses the per-address connection budget remembers (IPv6 per /64), at most 65536, least recently \
         seen forgotten first."
    );
    describe_counter!(
        EDGE_PENALTIES,
        "WebSockets closed 4029 whose client address was then refused for ABUSE_PENALTY_MS."
    );
    describe_counter!(
        HTTP_EVICTIONS,
        "Connections closed at MAX_HANDSHAKES to make room for a newcomer: each had waited longest for a request head \
         (slowloris sockets, idle keep-alive). A steady rate means the cap is too low or someone holds sockets open."
    );
    describe_counter!(
        HTTP_CONNECTION_ERRORS,
        "HTTP connections ended by an error, by reason: header_timeout (headers too slow, or keep-alive idle past the \
         timeout), header_too_large, bad_request, incomplete, io."
    );
    describe_counter!(ACCEPT_ERRORS, "Failed accepts, by kind (fd_limit, memory, aborted, other).");
    describe_counter!(
        SNAPSHOTS,
        "Snapshots taken for dashboards, by source: new (to be encoded), shared (a cached frame of the current \
         view), recent (a cached frame a moment old, sent with the changes since)."
    );
    describe_counter!(SNAPSHOT_ENCODES, "Snapshot frames encoded.");
    describe_gauge!(
        SNAPSHOT_MEMORY,
        "Bytes of snapshot frames held by the cache or by dashboards still writing them (each frame once), plus \
         room reserved by waiting dashboards; bounded by SNAPSHOT_MEMORY_MB."
    );
    describe_counter!(
        SNAPSHOT_WAITS,
        "Dashboards whose snapshot did not fit SNAPSHOT_MEMORY_MB at once, by result: admitted, or timed_out \
         (closed 4008)."
    );
}
