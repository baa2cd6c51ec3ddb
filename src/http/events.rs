//! `GET /api/presence/events`: presence transitions as server-sent events, for backends
//! that pull rather than hold a WebSocket.
//!
//! A stream starts where its client left off: at the position given as `since` (the query)
//! or `Last-Event-ID` (the header an SSE client sends when it reconnects, which wins), it
//! is first sent every transition after that position still in the store's change log
//! (read once for the deployment's streams and dashboards, [`crate::node::log_reads`]),
//! then a `ready` event, then each transition as this router's hub hears it: the live tail
//! costs no store call per client. Without a position it starts at the router's view now
//! (with what the log holds past it).
//! Every `presence` event's `id` is a position that includes it, so a client that
//! reconnects with it misses nothing; transitions may come twice across a reconnect or a
//! rebuild of the view (never out of order for one user: compare `version`).
//!
//! What is sent is scoped by the token exactly as every other read ([`Scope::view_of`]): a
//! user outside the scope is never sent, and one leaving it is sent going `offline` there.
//!
//! Bounds: at most `--event-streams` streams at once, and [`PER_USER`] per user (then 503
//! `too_many_streams`), each with a queue of `--event-stream-queue` events; the catch-up
//! from the log is encoded as the queue takes it, from the read shared with the other
//! resumes, so a stream that never reads holds no copy of the gap; a client that lets its
//! queue fill for [`SEND_WAIT`] (or falls a whole `--dashboard-queue` ring behind) is cut
//! as a slow consumer. A stream ends when its token expires (`event: expired`): reconnect
//! with a fresh token and `Last-Event-ID`. A stream leaves the handshake pool
//! (`--max-handshakes`) once answered, as an upgraded WebSocket does. A comment line
//! (`: keep-alive`) every [`HEARTBEAT`] keeps proxies from closing an idle stream.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    ApiError,
    rate_limit::{self, Cost},
};
use crate::{
    app::App,
    engine::log::Unserved,
    hub::{HubEvent, Stale},
    id::Id,
    metrics,
    node::{Node, log_reads},
    position::Position,
    presence::{Activity, Cause, Groups, PresenceUpdate, Status},
    scope::{Scope, View},
};

/// The route.
pub const ROUTE: &str = "/api/presence/events";

/// How often an idle stream is sent a comment line, so that proxies (which cut idle
/// connections after 30 to 60 s by default) keep it open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Streams open at once unless configured otherwise (`--event-streams`). Each holds an
/// HTTP connection for as long as it lasts.
pub const DEFAULT_MAX_STREAMS: usize = 64;

/// Streams one user (a token's `sub` and role) may hold open at once: a backend needs one
/// or two; one token must not take every stream.
pub const PER_USER: usize = 4;

/// How long a stream's queue may stay full before its client is cut as too slow.
pub const SEND_WAIT: Duration = Duration::from_secs(10);

/// Events queued per stream unless configured otherwise (`--event-stream-queue`).
pub const DEFAULT_QUEUE: usize = 1024;

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The streams' shared bounds.
pub struct EventStreams {
    permits: Arc<Semaphore>,
    queue: usize,
    /// Streams open per user.
    users: Arc<std::sync::Mutex<std::collections::HashMap<(Id, &'static str), usize>>>,
}

impl EventStreams {
    /// At most `max` streams at once, each queueing at most `queue` events (the flags take at
    /// least 1 of each).
    pub fn new(max: usize, queue: usize) -> Self {
        EventStreams { permits: Arc::new(Semaphore::new(max.max(1))), queue: queue.max(1), users: Arc::default() }
    }

    /// A place for one more stream of `user`, if both the router's and the user's bounds
    /// allow it.
    fn open(&self, user: (Id, &'static str)) -> Option<Open> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let count = users.entry(user.clone()).or_default();
        if *count >= PER_USER {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        *count += 1;
        ::metrics::gauge!(metrics::EVENT_STREAMS).increment(1.0);
        Some(Open { _permit: permit, users: self.users.clone(), user })
    }
}

/// One open stream's place: its permit, its count for its user, and the gauge of open
/// streams.
struct Open {
    _permit: OwnedSemaphorePermit,
    users: Arc<std::sync::Mutex<std::collections::HashMap<(Id, &'static str), usize>>>,
    user: (Id, &'static str),
}

impl Drop for Open {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::EVENT_STREAMS).decrement(1.0);
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = users.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// `GET /api/presence/events`: see the module's documentation. Refused before streaming:
/// 400 `invalid_position` (not a position token), 410 `position_expired` (older than the
/// change log keeps) or `position_unknown` (of another history: Redis lost its data, the
/// memory engine restarted), 503 `too_many_streams` or `presence_unavailable`; then the
/// client re-reads presence from the API and streams without a position.
pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let claims = super::presence::authorize(&app, &headers).await?;
    rate_limit::charge(&app, &claims, Cost::One(ROUTE))?;
    let since = since(&headers, query.as_deref())?;
    let node = super::presence::presence(&app)?;
    let open = app.event_streams.open((claims.sub.clone(), claims.role.as_str())).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open, on this router or for this user",
        )
        .retry_after(1)
    })?;
    let resumption = node.hub().resumption(&Scope::of(&claims));
    let Some(now) = resumption.position else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "presence_unavailable",
            "this router's view of presence is still being built",
        )
        .retry_after(1));
    };
    // Without a position, from the view's: what the log holds past it (decided before the
    // subscription but not yet applied to the view) is sent too.
    let from = since.unwrap_or_else(|| now.clone());
    let stream = Stream { scope: Scope::of(&claims), cursor: now.clone(), floor: now };
    let read = stream.read(node, &from).await.map_err(Gone::into_error)?;
    let expires = claims.exp.map(|exp| {
        let left = exp.saturating_sub(crate::presence::unix_ms() / 1000);
        tokio::time::Instant::now() + Duration::from_secs(left)
    });

    let (tx, rx) = mpsc::channel(app.event_streams.queue);
    let cut = CancellationToken::new();
    let start = Start { read, from, expires };
    tokio::spawn(forward(stream, app.clone(), resumption.events, tx, cut.clone(), open, start));
    let body = futures_util::stream::unfold((rx, cut), |(mut rx, cut)| async move {
        tokio::select! {
            biased;
            () = cut.cancelled() => Some((Err(std::io::Error::other("slow consumer")), (rx, cut))),
            bytes = rx.recv() => bytes.map(|bytes| (Ok(bytes), (rx, cut))),
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers responses unless told not to: events would arrive in lumps.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The connection ends with the stream: it left the handshake pool when answered.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

/// The position to start from: `Last-Event-ID` (what a reconnecting client last received)
/// before the `since` query parameter; none when neither is given or both are empty.
fn since(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Position>, ApiError> {
    let header = headers.get("last-event-id").map(|v| v.to_str().unwrap_or("!").to_owned());
    let query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(key, _)| key == "since").map(|(_, value)| value.into_owned())
    });
    let Some(token) = header.filter(|t| !t.is_empty()).or(query.filter(|t| !t.is_empty())) else {
        return Ok(None);
    };
    Position::parse(&token)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_position", e.to_string()))
}

/// Why a stream cannot go on from a position.
enum Gone {
    Unserved(Unserved),
    /// The store did not answer.
    Unavailable,
}

impl Gone {
    fn code(&self) -> &'static str {
        match self {
            Gone::Unserved(Unserved::TooOld) => "position_expired",
            Gone::Unserved(Unserved::Epoch | Unserved::Ahead) => "position_unknown",
            Gone::Unavailable => "presence_unavailable",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Gone::Unserved(Unserved::TooOld) => {
                "transitions after this position are no longer kept; read presence from the API and stream without one"
            }
            Gone::Unserved(_) => {
                "this position belongs to another history of the store; read presence from the API and stream without \
                 one"
            }
            Gone::Unavailable => "the presence store did not answer",
        }
    }

    fn into_error(self) -> ApiError {
        let status = match self {
            Gone::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Gone::Unserved(_) => StatusCode::GONE,
        };
        ApiError::new(status, self.code(), self.message())
    }
}

/// Where one stream stands.
struct Stream {
    scope: Scope,
    /// The position of everything sent (or hidden from this scope) so far: each event's id.
    cursor: Position,
    /// The log's head at the last catch-up: live transitions up to it were sent from the
    /// log already.
    floor: Position,
}

impl Stream {
    /// Reads the change log after `from` (a read shared with the other resumes of the
    /// moment), or why the stream cannot go on from there.
    async fn read(&self, node: &Node, from: &Position) -> Result<log_reads::Read, Gone> {
        if from.epoch != self.cursor.epoch || from.seqs.len() != self.cursor.seqs.len() {
            return Err(Gone::Unserved(Unserved::Epoch));
        }
        let read = node.changes_since(from).await;
        match read.as_ref() {
            Ok(Ok(_)) => Ok(read),
            Ok(Err(unserved)) => Err(Gone::Unserved(*unserved)),
            Err(_) => Err(Gone::Unavailable),
        }
    }

    /// Sends the transitions of `read` after `from` that the scope shows, each encoded as
    /// the queue takes it; the stream then stands at the read's head. Returns how many were
    /// sent, or `None` when the client stopped taking them.
    async fn replay(&mut self, read: &log_reads::Read, from: &Position, tx: &mpsc::Sender<Bytes>) -> Option<usize> {
        let Ok(Ok((changes, head))) = read.as_ref() else { return Some(0) };
        let mut at = from.clone();
        let mut sent = 0;
        for change in changes.iter().filter(|c| log_reads::is_after(&c.update, from)) {
            if let (Some(seq), Some(slot)) = (change.update.seq, at.seqs.get_mut(change.update.shard)) {
                *slot = seq;
            }
            if let Some(shown) = self.shown(&change.update, &change.before) {
                send(tx, encode(Some(&at), "presence", &Transition::of(&shown))).await?;
                sent += 1;
            }
        }
        self.floor = head.clone();
        raise(&mut self.cursor, head);
        Some(sent)
    }

    /// The `ready` event: the stream has caught up and follows the live transitions.
    fn ready(&self, resumed: usize) -> Bytes {
        encode(Some(&self.cursor), "ready", &ReadyData { position: self.cursor.token(), resumed })
    }

    /// `update` as this stream's scope shows it, if at all.
    fn shown(&self, update: &PresenceUpdate, before: &Groups) -> Option<PresenceUpdate> {
        match self.scope.view_of(update, before) {
            View::AsIs => Some(update.clone()),
            View::Changed(shown) => Some(shown),
            View::Hidden => None,
        }
    }

    /// What to send for a live hub event (a rebuild of the view is the caller's:
    /// [`Stream::read`] and [`Stream::replay`]).
    fn on_event(&mut self, node: &Node, event: HubEvent) -> Vec<Bytes> {
        match event {
            HubEvent::Update { update, before, position, .. } => {
                let seen = |seq: u64| self.floor.seqs.get(update.shard).is_some_and(|&floor| seq <= floor);
                if update.seq.is_some_and(seen) {
                    return vec![];
                }
                if let Some(view) = position.as_deref().and_then(|token| Position::parse(token).ok())
                    && view.epoch == self.cursor.epoch
                {
                    raise(&mut self.cursor, &view);
                }
                self.shown(&update, &before).map(|shown| self.presence(&shown)).into_iter().collect()
            }
            HubEvent::Stale(_) => node.hub().staleness().map(|stale| stale_event(&stale)).into_iter().collect(),
            HubEvent::Fresh(_) => vec![encode(None, "fresh", &serde_json::json!({}))],
            HubEvent::Resync | HubEvent::Indicator { .. } => vec![],
        }
    }

    fn presence(&self, update: &PresenceUpdate) -> Bytes {
        encode(Some(&self.cursor), "presence", &Transition::of(update))
    }
}

/// Raises each shard of `cursor` to `to`'s (same history and shards).
fn raise(cursor: &mut Position, to: &Position) {
    if cursor.epoch == to.epoch && cursor.seqs.len() == to.seqs.len() {
        for (mine, &theirs) in cursor.seqs.iter_mut().zip(&to.seqs) {
            *mine = (*mine).max(theirs);
        }
    }
}

/// Where a stream starts: the log read after `from`, and when its token expires.
struct Start {
    read: log_reads::Read,
    from: Position,
    expires: Option<tokio::time::Instant>,
}

/// Queues `bytes`, waiting at most [`SEND_WAIT`] for room; `None` when the client is gone
/// or too slow.
async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Option<()> {
    tokio::time::timeout(SEND_WAIT, tx.send(bytes)).await.ok()?.ok()
}

/// Sends the catch-up from the log, `ready`, then follows the hub for one stream until the
/// client goes, the router shuts down, the token expires, the stream is reset, or the
/// client is too slow (then `cut` drops its connection).
async fn forward(
    mut stream: Stream,
    app: Arc<App>,
    mut events: broadcast::Receiver<HubEvent>,
    tx: mpsc::Sender<Bytes>,
    cut: CancellationToken,
    _open: Open,
    start: Start,
) {
    let stop = |reason: &'static str| {
        if !tx.is_closed() {
            ::metrics::counter!(metrics::EVENT_STREAM_ENDS, "reason" => reason).increment(1);
            tracing::debug!(reason, "event stream cut");
            cut.cancel();
        }
    };
    let Start { read, from, expires } = start;
    let Some(resumed) = stream.replay(&read, &from, &tx).await else { return stop("slow_consumer") };
    drop(read);
    let mut first = vec![stream.ready(resumed)];
    first.extend(app.node.hub().staleness().map(|stale| stale_event(&stale)));
    for bytes in first {
        if send(&tx, bytes).await.is_none() {
            return stop("slow_consumer");
        }
    }
    let expiry = async move {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        let out = tokio::select! {
            () = app.shutdown.cancelled() => return,
            () = tx.closed() => return,
            () = &mut expiry => {
                ::metrics::counter!(metrics::EVENT_STREAM_ENDS, "reason" => "expired").increment(1);
                let _ = tx.try_send(encode(None, "expired", &serde_json::json!({})));
                return;
            }
            _ = beat.tick() => vec![Bytes::from_static(KEEP_ALIVE)],
            event = events.recv() => match event {
                // The view was rebuilt from the store: what this router missed meanwhile is
                // in the log, after the stream's position.
                Ok(HubEvent::Resync) => {
                    let from = stream.cursor.clone();
                    match stream.read(&app.node, &from).await {
                        Ok(read) => {
                            if stream.replay(&read, &from, &tx).await.is_none() {
                                return stop("slow_consumer");
                            }
                            continue;
                        }
                        Err(gone) => {
                            ::metrics::counter!(metrics::EVENT_STREAM_ENDS, "reason" => "reset").increment(1);
                            let reset = encode(None, "reset", &ResetData { code: gone.code(), message: gone.message() });
                            let _ = tx.try_send(reset);
                            return;
                        }
                    }
                }
                Ok(event) => stream.on_event(&app.node, event),
                Err(broadcast::error::RecvError::Lagged(_)) => return stop("slow_consumer"),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        for bytes in out {
            if tx.try_send(bytes).is_err() {
                return stop("slow_consumer");
            }
        }
    }
}

/// One event: `id` (when given), `event` and one `data` line of JSON.
fn encode(id: Option<&Position>, name: &str, data: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    let id = id.map(|p| format!("id: {}\n", p.token())).unwrap_or_default();
    Bytes::from(format!("{id}event: {name}\ndata: {data}\n\n"))
}

/// The data of a `presence` event: one transition, in the API's names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Transition<'a> {
    user_id: &'a Id,
    status: Status,
    last_seen: Option<u64>,
    device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_activity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activity: Option<&'a Activity>,
    #[serde(skip_serializing_if = "<[Id]>::is_empty")]
    groups: &'a [Id],
    version: u64,
    cause: Cause,
    /// Unix ms at which the transition was decided.
    timestamp: u64,
}

impl<'a> Transition<'a> {
    fn of(update: &'a PresenceUpdate) -> Self {
        let p = &update.presence;
        Transition {
            user_id: &p.user_id,
            status: p.status,
            last_seen: p.last_seen,
            device_id: p.device_id.as_deref(),
            status_text: p.status_text.as_deref(),
            last_activity: p.last_activity,
            activity: p.activity.as_ref(),
            groups: &p.groups,
            version: p.version,
            cause: update.cause,
            timestamp: update.timestamp,
        }
    }
}

#[derive(Serialize)]
struct ReadyData {
    position: String,
    resumed: usize,
}

/// The `stale` event: this router's view is not fed (since when, Unix ms, and why); the
/// transitions that follow may be late until `fresh`.
fn stale_event(stale: &Stale) -> Bytes {
    encode(None, "stale", &StaleData { since: stale.since_ms, reason: stale.reason.as_str() })
}

#[derive(Serialize)]
struct StaleData {
    since: u64,
    reason: &'static str,
}

#[derive(Serialize)]
struct ResetData {
    code: &'static str,
    message: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_wins_over_since_and_empty_means_none() {
        let mut headers = HeaderMap::new();
        let a = Position { epoch: 1, seqs: vec![5] };
        let b = Position { epoch: 1, seqs: vec![9] };
        let query = format!("since={}", a.token().replace(':', "%3A"));
        assert_eq!(since(&headers, Some(&query)).unwrap(), Some(a.clone()));
        headers.insert("last-event-id", HeaderValue::from_str(&b.token()).unwrap());
        assert_eq!(since(&headers, Some(&query)).unwrap(), Some(b));
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(since(&headers, Some(&query)).unwrap(), Some(a));
        assert_eq!(since(&headers, Some("since=")).unwrap(), None);
        assert_eq!(since(&headers, Some("since=bad")).unwrap_err().code, "invalid_position");
    }

    #[test]
    fn an_event_is_lines_of_id_event_and_data() {
        let at = Position { epoch: 255, seqs: vec![3] };
        let bytes = encode(Some(&at), "ready", &ReadyData { position: at.token(), resumed: 2 });
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "id: 00000000000000ff:3\nevent: ready\ndata: {\"position\":\"00000000000000ff:3\",\"resumed\":2}\n\n"
        );
    }
}
