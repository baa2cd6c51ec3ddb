//! Prometheus metrics: names, help texts, and the recorder.
//!
//! Labels are low-cardinality by construction (roles, results, reasons, routes, status
//! classes); never a user id. `/metrics` renders the recorder installed by [`install`]
//! through [`render`], which adds the process's own figures (CPU, memory, open files).

use std::sync::{LazyLock, OnceLock};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_process::Collector;

use crate::{
    auth::Role,
    engine::EngineError,
    presence::Cause,
    protocol::{message_type, payload::IndicatorKind},
};

pub const ONLINE_USERS: &str = "presence_online_users";
pub const CONNECTIONS: &str = "presence_connections";
pub const HEARTBEATS: &str = "presence_heartbeats_total";
pub const PINGS: &str = "presence_pings_total";
pub const LIVENESS_RENEWALS: &str = "presence_liveness_renewals_total";
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
pub const TOKEN_REFUSALS: &str = "presence_token_refusals_total";
pub const JWKS_FETCHES: &str = "presence_jwks_fetches_total";
pub const JWKS_KEYS: &str = "presence_jwks_keys";
pub const STORE_WRITES_DROPPED: &str = "presence_store_writes_dropped_total";
pub const DISCONNECTS: &str = "presence_disconnects_total";
pub const SESSIONS_REPLACED: &str = "presence_sessions_replaced_total";
pub const ENGINE_ERRORS: &str = "presence_engine_errors_total";
pub const ENGINE_UP: &str = "presence_engine_up";
pub const VIEW_STALE: &str = "presence_view_stale";
pub const VIEW_STALE_REASONS: &str = "presence_view_stale_total";
pub const BROKER_MESSAGES: &str = "presence_broker_messages_total";
pub const BROKER_GAPS: &str = "presence_broker_gaps_total";
pub const BROKER_GAPS_FILLED: &str = "presence_broker_gaps_filled_total";
pub const RESYNCS: &str = "presence_resyncs_total";
pub const BROKER_RESUBSCRIPTIONS: &str = "presence_broker_resubscriptions_total";
pub const BROKER_GROUP_SUBSCRIPTIONS: &str = "presence_broker_group_subscriptions";
pub const REDIS_RETRIES: &str = "presence_redis_retries_total";
pub const REDIS_RECONNECTS: &str = "presence_redis_reconnects_total";
pub const RELAYED: &str = "presence_relayed_frames_total";
pub const RELAY_OVERFLOWS: &str = "presence_relay_overflows_total";
pub const RELAY_DROPPED: &str = "presence_relay_dropped_total";
pub const FLOOR_REQUESTS: &str = "presence_floor_requests_total";
pub const FLOORS_ORPHANED: &str = "presence_floors_orphaned_total";
pub const AUDIO_DROPPED: &str = "presence_audio_dropped_total";
pub const INDICATORS: &str = "presence_indicator_events_total";
pub const MEMBERSHIP_CHANGES: &str = "presence_membership_changes_total";
pub const GROUP_SUBSCRIPTIONS: &str = "presence_group_subscriptions_total";
pub const GROUP_COUNTS_SENT: &str = "presence_group_counts_sent_total";
pub const UPDATES_COALESCED: &str = "presence_updates_coalesced_total";
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
pub const DASHBOARD_RESUMES: &str = "presence_dashboard_resumes_total";
pub const WEBHOOK_EVENTS: &str = "presence_webhook_events_total";
pub const WEBHOOK_RETRIES: &str = "presence_webhook_retries_total";
pub const WEBHOOK_PENDING: &str = "presence_webhook_pending";
pub const WEBHOOK_SHARDS: &str = "presence_webhook_shards";
pub const WEBHOOK_LAG: &str = "presence_webhook_lag_seconds";
pub const EVENT_STREAMS: &str = "presence_event_streams";
pub const EVENT_STREAM_ENDS: &str = "presence_event_stream_ends_total";

// Operations: what the build is, and how long requests and store calls take.
pub const BUILD_INFO: &str = "presence_build_info";
pub const API_REQUEST_DURATION: &str = "presence_api_request_duration_seconds";
pub const STORE_CALL_DURATION: &str = "presence_store_call_duration_seconds";

/// Seconds; update latency on loopback is sub-millisecond, across sites tens of ms. The
/// same buckets serve API requests and store calls (Redis answers in well under a
/// millisecond on loopback; its command timeout is 500 ms).
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Seconds from a transition to its webhook's acceptance: a batch window (100 ms) and a
/// POST when all is well; retries' backoff and a takeover (seconds) otherwise.
const WEBHOOK_LAG_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// `process_*` figures (CPU seconds, resident memory, open and maximum file descriptors,
/// threads, start time), read from `/proc` at each scrape.
static PROCESS: LazyLock<Collector> = LazyLock::new(Collector::default);

/// Installs the process-wide recorder once and returns its handle. Every counter is shown
/// at 0 from then on ([`zero_series`]), and `presence_build_info` at 1.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for histogram in [UPDATE_LATENCY, API_REQUEST_DURATION, STORE_CALL_DURATION] {
        builder = builder.set_buckets_for_metric(Matcher::Full(histogram.into()), LATENCY_BUCKETS)?;
    }
    builder = builder.set_buckets_for_metric(Matcher::Full(WEBHOOK_LAG.into()), WEBHOOK_LAG_BUCKETS)?;
    let handle = builder.install_recorder()?;
    describe();
    PROCESS.describe();
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for (name, labels) in zero_series() {
        ::metrics::counter!(name, &labels).increment(0);
    }
    // Gauges a dashboard plots from the start: 0 until their first change.
    for role in [Role::Mobile, Role::Web, Role::Dashboard, Role::Service] {
        ::metrics::gauge!(CONNECTIONS, "role" => role.as_str()).increment(0.0);
    }
    ::metrics::gauge!(SNAPSHOT_MEMORY).increment(0.0);
    ::metrics::gauge!(EVENT_STREAMS).increment(0.0);
    ::metrics::gauge!(BROKER_GROUP_SUBSCRIPTIONS).increment(0.0);
    ::metrics::gauge!(VIEW_STALE).increment(0.0);
    ::metrics::gauge!(WEBHOOK_PENDING).increment(0.0);
    ::metrics::gauge!(WEBHOOK_SHARDS).increment(0.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The Prometheus text of `handle`, with the process figures read just now.
pub fn render(handle: &PrometheusHandle) -> String {
    PROCESS.collect();
    handle.render()
}

fn describe() {
    describe_gauge!(ONLINE_USERS, "Users online in the cluster, as this router's view has them.");
    describe_gauge!(CONNECTIONS, "Open WebSocket connections on this router, by role.");
    describe_counter!(HEARTBEATS, "Heartbeats received, by result (accepted, coalesced, rejected, failed).");
    describe_counter!(
        PINGS,
        "WebSocket pings sent to mobiles that do not heartbeat, after a ping interval of silence."
    );
    describe_counter!(
        LIVENESS_RENEWALS,
        "Leases renewed for mobiles that do not heartbeat, by the frames and pongs they send (one per ping interval at most)."
    );
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
    describe_counter!(
        TOKEN_REFUSALS,
        "Tokens refused wherever presented (WebSocket handshake, HTTP API, REFRESH), by reason: the error code \
         (token_expired, token_wrong_audience, token_unknown_key, keys_unavailable, ...)."
    );
    describe_counter!(
        JWKS_FETCHES,
        "Fetches of the token issuer's key set (--jwt-jwks-url or --jwt-jwks-file), by trigger (start, expired: \
         the cached set was older than --jwt-jwks-cache-secs, unknown_kid: a token named a key the set lacked) and \
         result (ok, error)."
    );
    describe_gauge!(JWKS_KEYS, "Keys in the last key set fetched that tokens can be verified with.");
    describe_counter!(DISCONNECTS, "WebSocket connections ended, by reason.");
    describe_counter!(
        SESSIONS_REPLACED,
        "Sessions replaced by a new session of the same user and device, by result: ended (it ended within 1 s), \
         gone (its connection had ended already) or timed_out (no word from its router within 1 s)."
    );
    describe_counter!(
        ENGINE_ERRORS,
        "Presence store or broker calls that failed, by operation and kind (unavailable: an outage; protocol, internal: a bug)."
    );
    describe_gauge!(
        ENGINE_UP,
        "1 while the presence store answers, this router receives the broker's messages, and presence is rebuilt; 0 \
         while degraded."
    );
    describe_gauge!(
        VIEW_STALE,
        "1 while this router's view of presence is stale (not fed: Redis out of reach, the subscription lost, \
         transitions missed) and its dashboards were sent STALE; 0 once they were sent FRESH."
    );
    describe_counter!(
        VIEW_STALE_REASONS,
        "Stale spells by reason (store_unreachable, store_data_lost, subscription_lost, updates_missed), and the \
         more serious reasons a spell turned to."
    );
    describe_counter!(
        BROKER_GAPS,
        "Times transitions stayed missing from the broker past the grace: each answered by reading them from the \
         change log, or by a resync when the log no longer holds them."
    );
    describe_counter!(BROKER_GAPS_FILLED, "Missing transitions read from the change log instead of a resync.");
    describe_counter!(
        RESYNCS,
        "Times this router rebuilt its view of presence from the store after start: a transition missed, a subscription lapsed, an outage ended."
    );
    describe_counter!(
        BROKER_RESUBSCRIPTIONS,
        "Broker subscriptions re-established, by what ended the last one: dropped (its connection closed or failed), \
         silent (a PING went unanswered for 1 s: the flow was black-holed)."
    );
    describe_counter!(
        REDIS_RETRIES,
        "Redis calls sent a second time because their connection dropped under them (the client reconnected)."
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Redis command connections replaced because calls on them timed out while a new connection answered (a \
         black-holed flow)."
    );
    describe_gauge!(
        BROKER_GROUP_SUBSCRIPTIONS,
        "Group relay channels this router subscribes to: the groups with a mobile member on it (Redis engine; 0 on \
         the memory engine)."
    );
    describe_counter!(
        BROKER_MESSAGES,
        "Messages received from the broker, by kind (update, relay, invalid; overflow: dropped, the subscriber falling behind)."
    );
    describe_counter!(RELAYED, "PTT, TEXT and indicator frames this router sent towards receivers, by type.");
    describe_counter!(RELAY_OVERFLOWS, "Connections closed because their queue of relayed frames was full.");
    describe_counter!(RELAY_DROPPED, "Relayed frames not sent to other routers: the publish queue was full.");
    describe_counter!(FLOOR_REQUESTS, "PTT START requests, by result (granted, busy, local_only, idle_takeover).");
    describe_counter!(
        FLOORS_ORPHANED,
        "PTT floors of another router that lapsed (it died mid-talk) and whose talk this router ended."
    );
    describe_counter!(
        AUDIO_DROPPED,
        "AUDIO dropped without an answer, by reason: its talk had been ended by the router (max_talk_time, idle, \
         not_a_member, switched), or it followed a refused START (start_refused)."
    );
    describe_counter!(INDICATORS, "Indicator starts and ends broadcast, by type and isActive.");
    describe_counter!(
        MEMBERSHIP_CHANGES,
        "USER_ADD and USER_REMOVE frames, by type (user_add, user_remove) and result: applied, unchanged (already \
         in or out), or the ERROR code answered (not_a_member, too_many_groups, not_allowed, invalid_frame)."
    );
    describe_counter!(
        GROUP_SUBSCRIPTIONS,
        "Dashboards' SUBSCRIBE and UNSUBSCRIBE frames, by result: full, counts, unsubscribed, or the ERROR code \
         answered (not_in_scope, not_subscribed, too_many_subscriptions, not_allowed, invalid_payload)."
    );
    describe_counter!(GROUP_COUNTS_SENT, "GROUP_COUNTS frames sent to dashboards watching a group by its counts.");
    describe_counter!(
        UPDATES_COALESCED,
        "PRESENCE_UPDATEs not sent to a subscribed dashboard because a later change of the same user replaced them \
         within its coalescing window."
    );
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
    describe_gauge!(EVENT_STREAMS, "Open server-sent event streams (GET /api/presence/events).");
    describe_counter!(
        EVENT_STREAM_ENDS,
        "Event streams ended by the router, by reason: slow_consumer (its queue filled; connection dropped), reset \
         (its position can no longer be served after a rebuild of the view)."
    );
    describe_counter!(
        DASHBOARD_RESUMES,
        "Dashboards that presented a position on connect, by result: resumed (sent only the changes they \
         missed), or why they got a full snapshot instead (too_old, epoch, ahead, scope, malformed, unavailable)."
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Webhook events settled by this router, by result: delivered (the receiver answered 2xx), dead_letter (still \
         failing at the retry horizon; kept in the dead-letter stream), trimmed (dropped from the change log by its \
         cap before delivery: lost)."
    );
    describe_counter!(WEBHOOK_RETRIES, "Webhook POSTs that failed and were sent again after a backoff.");
    describe_gauge!(
        WEBHOOK_SHARDS,
        "Shards of the change log whose webhooks this router delivers now (it holds their lease); summed over the \
         routers: every shard once."
    );
    describe_gauge!(WEBHOOK_PENDING, "Webhook events this router has in flight: taken, not yet accepted or given up.");
    describe_histogram!(
        WEBHOOK_LAG,
        Unit::Seconds,
        "From a transition's decision to its webhook's acceptance by the receiver, per event (retries included)."
    );
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
    describe_gauge!(BUILD_INFO, "Always 1; its labels say which build this router runs (version).");
    describe_histogram!(
        API_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP API requests from routing to the response head, by route (the status is in \
         presence_api_requests_total)."
    );
    describe_histogram!(
        STORE_CALL_DURATION,
        Unit::Seconds,
        "Presence store and broker calls, by operation (the store's method, or publish), failed ones included."
    );
    describe_counter!(
        SNAPSHOT_WAITS,
        "Dashboards whose snapshot did not fit SNAPSHOT_MEMORY_MB at once, by result: admitted, or timed_out \
         (closed 4008)."
    );
}

/// Label values of `presence_api_requests_total{status}` shown at 0 on each API route:
/// the statuses the API answers (docs/PROTOCOL.md).
const API_STATUSES: &[&str] = &["200", "400", "401", "403", "405", "408", "413", "415", "429", "503"];

/// The codes an [`AuthError`](crate::auth::AuthError) reports: token refusal reasons,
/// handshake rejection reasons and refresh results.
const TOKEN_CODES: &[&str] = &[
    "missing_token",
    "invalid_token",
    "token_expired",
    "token_not_yet_valid",
    "token_invalid_date",
    "token_missing_iat",
    "token_lifetime_too_long",
    "token_wrong_issuer",
    "token_audience_not_configured",
    "token_wrong_audience",
    "token_unknown_key",
    "keys_unavailable",
];

/// Every counter with each label set it is known to take, registered at 0 by [`install`].
/// A series that does not exist yet reads as no data to `rate()` and `increase()`, so an
/// alert on it would stay silent for a different reason than "none happened"; at 0 from
/// the start, it reads as 0. The label values are those set at the increment sites (a
/// unit test checks every literal one there is listed here).
pub fn zero_series() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let mut series: Vec<(&'static str, Vec<(&'static str, &'static str)>)> = [
        TTL_EXPIRATIONS,
        STALE_UPDATES,
        STORE_WRITES_DROPPED,
        BROKER_GAPS,
        BROKER_GAPS_FILLED,
        RESYNCS,
        RELAY_OVERFLOWS,
        RELAY_DROPPED,
        HTTP_EVICTIONS,
        SNAPSHOT_ENCODES,
        REDIS_RETRIES,
        REDIS_RECONNECTS,
        EDGE_PENALTIES,
        PINGS,
        LIVENESS_RENEWALS,
        FLOORS_ORPHANED,
        GROUP_COUNTS_SENT,
        UPDATES_COALESCED,
        WEBHOOK_RETRIES,
    ]
    .into_iter()
    .map(|name| (name, Vec::new()))
    .collect();
    let mut each = |name: &'static str, label: &'static str, values: &[&'static str]| {
        series.extend(values.iter().map(|value| (name, vec![(label, *value)])));
    };
    each(HEARTBEATS, "result", &["accepted", "coalesced", "ignored", "rejected", "failed"]);
    each(TRANSITIONS, "cause", &Cause::ALL.map(Cause::as_str));
    each(API_RATE_LIMITED, "route", &crate::http::API_ROUTES);
    let types = |range: std::ops::RangeInclusive<u8>| {
        let mut labels: Vec<&'static str> = range.map(message_type::label).collect();
        labels.sort_unstable();
        labels.dedup();
        labels
    };
    each(FRAMES_RECEIVED, "type", &types(0..=u8::MAX));
    each(RELAYED, "type", &types(0..=message_type::VOICEPING_LAST));
    let decode = ["malformed", "shape", "channel_type", "message_type", "id"];
    let framing = ["protocol", "invalid_utf8", "too_big", "unfinished", "rate_limited", "text"];
    let refused = [
        "invalid_frame",
        "sender_mismatch",
        "heartbeat_not_allowed",
        "unsupported_type",
        "invalid_payload",
        "not_a_member",
        "floor_not_held",
        "not_allowed",
        "too_many_groups",
        "not_in_scope",
        "not_subscribed",
        "too_many_subscriptions",
        "token_mismatch",
    ];
    each(FRAME_ERRORS, "reason", &[&decode[..], &framing, &refused, TOKEN_CODES].concat());
    let handshakes = ["not_websocket", "invalid_device_id", "shutting_down", "too_many_connections"];
    each(HANDSHAKE_REJECTIONS, "reason", &[&handshakes[..], TOKEN_CODES].concat());
    each(REFRESHES, "result", &[&["accepted", "token_mismatch"][..], TOKEN_CODES].concat());
    each(TOKEN_REFUSALS, "reason", TOKEN_CODES);
    each(
        DISCONNECTS,
        "reason",
        &[
            "closed",
            "read_failed",
            "write_failed",
            "router restarting",
            "heartbeat timeout",
            "token expired",
            "rate limit exceeded",
            "slow consumer",
            "write timeout",
            "snapshot memory full",
            "protocol",
            "invalid_utf8",
            "too_big",
            "unfinished",
            "replaced",
        ],
    );
    each(BROKER_MESSAGES, "kind", &["update", "relay", "invalid", "overflow"]);
    each(BROKER_RESUBSCRIPTIONS, "reason", &["dropped", "silent"]);
    each(VIEW_STALE_REASONS, "reason", &crate::hub::StaleReason::ALL.map(crate::hub::StaleReason::as_str));
    each(FLOOR_REQUESTS, "result", &["granted", "busy", "local_only", "idle_takeover"]);
    each(AUDIO_DROPPED, "reason", &["max_talk_time", "idle", "not_a_member", "switched", "start_refused"]);
    each(SESSIONS_REPLACED, "result", &["ended", "gone", "timed_out"]);
    each(HTTP_REFUSED, "reason", &["too_many_handshakes", "address_rate", "address_penalty"]);
    each(HTTP_CONNECTION_ERRORS, "reason", &["header_timeout", "header_too_large", "bad_request", "incomplete", "io"]);
    each(ACCEPT_ERRORS, "kind", &["fd_limit", "memory", "aborted", "other"]);
    each(SNAPSHOTS, "source", &["new", "shared", "recent"]);
    each(
        GROUP_SUBSCRIPTIONS,
        "result",
        &[
            "full",
            "counts",
            "unsubscribed",
            "not_in_scope",
            "not_subscribed",
            "too_many_subscriptions",
            "not_allowed",
            "invalid_payload",
        ],
    );
    each(SNAPSHOT_WAITS, "result", &["admitted", "timed_out"]);
    each(WEBHOOK_EVENTS, "result", &["delivered", "dead_letter", "trimmed"]);
    each(EVENT_STREAM_ENDS, "reason", &["slow_consumer", "reset", "expired"]);
    each(DASHBOARD_RESUMES, "result", &["resumed", "too_old", "epoch", "ahead", "scope", "malformed", "unavailable"]);
    let engine_ops = [
        "activity",
        "changes_since",
        "choice",
        "connect",
        "disconnect",
        "expire",
        "floor",
        "group_members",
        "heartbeat",
        "indicator",
        "indicators",
        "linger",
        "lookup",
        "ping",
        "probe",
        "publish",
        "regroup",
        "relay",
        "snapshot",
        "status",
        "subscription",
    ];
    for op in engine_ops {
        for kind in EngineError::KINDS {
            series.push((ENGINE_ERRORS, vec![("op", op), ("kind", kind)]));
        }
    }
    for route in crate::http::API_ROUTES {
        series.extend(API_STATUSES.iter().map(|status| (API_REQUESTS, vec![("route", route), ("status", *status)])));
    }
    for trigger in ["start", "expired", "unknown_kid"] {
        for result in ["ok", "error"] {
            series.push((JWKS_FETCHES, vec![("trigger", trigger), ("result", result)]));
        }
    }
    for kind in IndicatorKind::ALL {
        for active in ["true", "false"] {
            series.push((INDICATORS, vec![("type", kind.as_str()), ("active", active)]));
        }
    }
    let refusals = ["not_allowed", "invalid_frame"];
    for (kind, results) in [
        ("user_add", &["applied", "unchanged", "not_a_member", "too_many_groups"][..]),
        ("user_remove", &["applied", "unchanged"][..]),
    ] {
        for result in results.iter().chain(&refusals) {
            series.push((MEMBERSHIP_CHANGES, vec![("type", kind), ("result", *result)]));
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::zero_series;

    /// The `counter!(...)` calls in `source`: each one's arguments, split at top-level commas.
    fn counter_calls(source: &str) -> Vec<Vec<String>> {
        let mut calls = Vec::new();
        for (start, _) in source.match_indices("counter!(") {
            let (mut depth, mut quoted, mut args, mut arg) = (1, false, Vec::new(), String::new());
            for c in source[start + "counter!(".len()..].chars() {
                match c {
                    '"' => quoted = !quoted,
                    '(' if !quoted => depth += 1,
                    ')' if !quoted => depth -= 1,
                    ',' if !quoted && depth == 1 => {
                        args.push(std::mem::take(&mut arg).trim().to_owned());
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                arg.push(c);
            }
            args.push(arg.trim().to_owned());
            args.retain(|a| !a.is_empty());
            calls.push(args);
        }
        calls
    }

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }

    /// Every counter incremented anywhere in `src/` is registered at 0, with every literal
    /// label value it is given at the increment site; one labelled with a computed value
    /// has at least its label registered. Catches a counter or a label value added
    /// without its zero.
    #[test]
    fn every_counter_and_literal_label_value_is_registered_at_zero() {
        let names: HashMap<&str, &str> = include_str!("metrics.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub const ")?.split_once(": &str = \""))
            .map(|(ident, rest)| (ident, rest.trim_end_matches("\";")))
            .collect();
        let zeroes = zero_series();
        let mut files = Vec::new();
        sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut checked = 0;
        for (path, source) in files.iter().filter(|(path, _)| !path.ends_with("src/metrics.rs")) {
            for args in counter_calls(source) {
                let ident = args[0].trim_start_matches("metrics::");
                let name =
                    names.get(ident).unwrap_or_else(|| panic!("{path}: counter {ident} is not a metrics.rs name"));
                let registered: Vec<_> = zeroes.iter().filter(|(n, _)| n == name).map(|(_, l)| l).collect();
                assert!(!registered.is_empty(), "{path}: {name} is not registered at 0");
                let labels: Vec<(&str, &str)> = args[1..]
                    .iter()
                    .map(|arg| arg.split_once("=>").expect("label => value"))
                    .map(|(k, v)| (k.trim().trim_matches('"'), v.trim()))
                    .collect();
                if labels.is_empty() {
                    assert!(registered.iter().any(|l| l.is_empty()), "{path}: {name} without labels is not registered");
                }
                for (key, value) in labels {
                    let listed = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                        Some(literal) => registered.iter().any(|l| l.contains(&(key, literal))),
                        None => registered.iter().any(|l| l.iter().any(|(k, _)| *k == key)),
                    };
                    assert!(listed, "{path}: {name}{{{key}={value}}} is not registered at 0 (metrics::zero_series)");
                }
                checked += 1;
            }
        }
        assert!(checked > 20, "found only {checked} counter increments: the scan is broken");
    }
}
