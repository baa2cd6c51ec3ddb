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
//! Bounds: at most `--event-streams` streams at once (then 503 `too_many_streams`), each
//! with a queue of `--event-stream-queue` events; a client that lets its queue fill (or
//! falls a whole `--dashboard-queue` ring behind) is cut as a slow consumer. A comment line
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
/// HTTP connection, and with it a slot of `--max-handshakes`, for as long as it lasts.
pub const DEFAULT_MAX_STREAMS: usize = 64;

/// Events queued per stream unless configured otherwise (`--event-stream-queue`).
pub const DEFAULT_QUEUE: usize = 1024;

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The streams' shared bounds.
pub struct EventStreams {
    permits: Arc<Semaphore>,
    queue: usize,
}

impl EventStreams {
    /// At most `max` streams at once, each queueing at most `queue` events (the flags take at
    /// least 1 of each).
    pub fn new(max: usize, queue: usize) -> Self {
        EventStreams { permits: Arc::new(Semaphore::new(max.max(1))), queue: queue.max(1) }
    }
}

/// One open stream's place: its permit, and the gauge of open streams.
struct Open {
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        ::metrics::gauge!(metrics::EVENT_STREAMS).increment(1.0);
        Open { _permit: permit }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::EVENT_STREAMS).decrement(1.0);
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
    let permit = app.event_streams.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_streams", "too many event streams are open")
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
    let mut stream = Stream { scope: Scope::of(&claims), cursor: now.clone(), floor: now };
    let mut first = Vec::new();
    let resumed = stream.catch_up(node, &from, &mut first).await.map_err(Gone::into_error)?;
    first.push(stream.ready(resumed));
    if let Some(stale) = node.hub().staleness() {
        first.push(stale_event(&stale));
    }

    let (tx, rx) = mpsc::channel(app.event_streams.queue.max(first.len()));
    for bytes in first {
        let _ = tx.try_send(bytes);
    }
    let cut = CancellationToken::new();
    tokio::spawn(forward(stream, app.clone(), resumption.events, tx, cut.clone(), Open::new(permit)));
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
    /// Queues in `out` the transitions after `from` that the scope shows, read from the
    /// change log; the stream then stands at the log's head. Returns how many were queued.
    async fn catch_up(&mut self, node: &Node, from: &Position, out: &mut Vec<Bytes>) -> Result<usize, Gone> {
        if from.epoch != self.cursor.epoch || from.seqs.len() != self.cursor.seqs.len() {
            return Err(Gone::Unserved(Unserved::Epoch));
        }
        let read = node.changes_since(from).await;
        let (changes, head) = match read.as_ref() {
            Ok(Ok((changes, head))) => (changes.iter().filter(|c| log_reads::is_after(&c.update, from)), head),
            Ok(Err(unserved)) => return Err(Gone::Unserved(*unserved)),
            Err(_) => return Err(Gone::Unavailable),
        };
        let mut at = from.clone();
        let before = out.len();
        for change in changes {
            if let (Some(seq), Some(slot)) = (change.update.seq, at.seqs.get_mut(change.update.shard)) {
                *slot = seq;
            }
            if let Some(shown) = self.shown(&change.update, &change.before) {
                out.push(encode(Some(&at), "presence", &Transition::of(&shown)));
            }
        }
        self.floor = head.clone();
        raise(&mut self.cursor, head);
        Ok(out.len() - before)
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

    /// What to send for a live hub event: events, or the `reset` event that ends the stream.
    async fn on_event(&mut self, node: &Node, event: HubEvent) -> Result<Vec<Bytes>, Bytes> {
        match event {
            HubEvent::Update { update, before, position, .. } => {
                let seen = |seq: u64| self.floor.seqs.get(update.shard).is_some_and(|&floor| seq <= floor);
                if update.seq.is_some_and(seen) {
                    return Ok(vec![]);
                }
                if let Some(view) = position.as_deref().and_then(|token| Position::parse(token).ok())
                    && view.epoch == self.cursor.epoch
                {
                    raise(&mut self.cursor, &view);
                }
                Ok(self.shown(&update, &before).map(|shown| self.presence(&shown)).into_iter().collect())
            }
            // The view was rebuilt from the store: what this router missed meanwhile is in
            // the log, after the stream's position.
            HubEvent::Resync => {
                let mut out = Vec::new();
                let from = self.cursor.clone();
                match self.catch_up(node, &from, &mut out).await {
                    Ok(_) => Ok(out),
                    Err(gone) => Err(encode(None, "reset", &ResetData { code: gone.code(), message: gone.message() })),
                }
            }
            HubEvent::Stale(_) => Ok(node.hub().staleness().map(|stale| stale_event(&stale)).into_iter().collect()),
            HubEvent::Fresh(_) => Ok(vec![encode(None, "fresh", &serde_json::json!({}))]),
            HubEvent::Indicator { .. } => Ok(vec![]),
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

/// Follows the hub for one stream until the client goes, the router shuts down, the
/// stream is reset, or the client is too slow (then `cut` drops its connection).
async fn forward(
    mut stream: Stream,
    app: Arc<App>,
    mut events: broadcast::Receiver<HubEvent>,
    tx: mpsc::Sender<Bytes>,
    cut: CancellationToken,
    _open: Open,
) {
    let slow = || {
        ::metrics::counter!(metrics::EVENT_STREAM_ENDS, "reason" => "slow_consumer").increment(1);
        tracing::debug!("event stream cut: slow consumer");
        cut.cancel();
    };
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        let out = tokio::select! {
            () = app.shutdown.cancelled() => return,
            () = tx.closed() => return,
            _ = beat.tick() => Ok(vec![Bytes::from_static(KEEP_ALIVE)]),
            event = events.recv() => match event {
                Ok(event) => stream.on_event(&app.node, event).await,
                Err(broadcast::error::RecvError::Lagged(_)) => return slow(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let (out, last) = match out {
            Ok(out) => (out, false),
            Err(reset) => {
                ::metrics::counter!(metrics::EVENT_STREAM_ENDS, "reason" => "reset").increment(1);
                (vec![reset], true)
            }
        };
        for bytes in out {
            if tx.try_send(bytes).is_err() {
                return slow();
            }
        }
        if last {
            return;
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
