//! The accept loop: one hyper HTTP/1.1 connection per accepted socket, with the limits
//! that protect the router before a WebSocket upgrade.
//!
//! - **Header read timeout** (`--header-read-timeout-ms`): hyper closes a connection that
//!   has not sent a request's complete headers within it. hyper starts that clock whenever
//!   it begins reading a request head, which a keep-alive connection does as soon as its
//!   previous response is written (`proto/h1/conn.rs`: `State::idle` sets `notify_read`
//!   "so we can close the connection if another header isn't received in a timely
//!   manner", and `poll_read_head` arms the timer). So the same timeout is the idle
//!   timeout of plain HTTP keep-alive.
//! - **Header size** ([`MAX_HEADER_BYTES`], [`MAX_HEADERS`]): hyper's read buffer is capped
//!   there; a request head that does not fit, or has more header lines, gets hyper's
//!   automatic 431 and the connection is closed, so a client sending endless headers holds
//!   at most that much memory.
//! - **Handshake cap** (`--max-handshakes`): accepted connections still speaking HTTP each
//!   hold a slot, freed when the connection upgrades to a WebSocket or closes. At the cap
//!   the connection that has waited longest for a request head is closed to make room
//!   ([`handshakes`] has the rules); only when every connection has a request being served
//!   is the newcomer answered 503 `too_many_handshakes` and closed at once, without waiting
//!   on the client. Each listener has its own pool: `--metrics-addr` does not share the
//!   public port's.
//! - **Per-address budget** (`--address-connect-rate`, `--address-connect-burst`,
//!   `--abuse-penalty-ms`, `--trusted-proxies`): checked right after the accept, before
//!   anything is read, so a client over its budget costs an accept, a lookup and a 429,
//!   never an HTTP parse or a token check. That 429 comes after a hold of its
//!   `Retry-After` (at most [`MAX_HOLD`]) in a waiting slot of the handshake pool, so a
//!   client that reconnects the moment it is refused costs one refusal per hold
//!   ([`hold_then_refuse`]). A trusted proxy's requests are checked against the client
//!   they name once their head is parsed, and refused at once ([`edge`] and its
//!   submodules have the rules).
//! - **Accept errors** (EMFILE and the like) are counted, logged at most once per
//!   [`ACCEPT_LOG_INTERVAL`] with the number suppressed, and followed by a short pause so
//!   a process out of descriptors does not spin on `accept`.
//!
//! Upgraded connections leave this loop: their tasks are tracked by `App::tracker`.

mod budget;
mod edge;
mod forwarded;
mod handshakes;

use std::{
    io::{Read, Write},
    pin::pin,
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, response::IntoResponse};
use futures_util::future::Either;
use hyper::{
    server::conn::http1,
    service::{Service as _, service_fn},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{
    budget::Refusal,
    edge::Edge,
    handshakes::{Admission, Pool, Slot},
};
pub use self::{
    budget::{BudgetLimits, TRACKED_ADDRESSES},
    edge::{ClientAddr, ClientBudget},
    forwarded::{DEFAULT_TRUSTED_PROXIES, TrustedProxies},
};
use crate::{
    app::Limits,
    http::ApiError,
    logging::{self, Throttle},
    metrics,
};

/// Largest request head (request line and headers) in bytes. A WebSocket handshake with a
/// JWT is well under 2 KiB; browsers send a few KiB of cookies at most.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header lines in a request head. Browsers send about 20 and a WebSocket handshake
/// about 10; this is hyper's default too, for which its parser keeps the header index on
/// the stack. Set here so the limit is ours and documented (docs/SECURITY.md).
pub const MAX_HEADERS: usize = 100;

/// Accept errors are logged at most this often; the rest are counted into the next line.
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a connection refused by the per-address budget is held before its 429: what
/// one client that reconnects at once costs is one refusal per hold.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// Pause after a failed accept. EMFILE leaves the connection in the backlog, so accepting
/// again at once would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting,
/// asks every HTTP connection to finish its request and close, and waits for them.
pub async fn serve(listener: TcpListener, router: Router, limits: &Limits, shutdown: CancellationToken) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let pool = Pool::new(limits.max_handshakes);
    let edge = Edge::new(limits.trusted_proxies.clone(), limits.address_budget);
    let refused = ::metrics::counter!(metrics::HTTP_REFUSED, "reason" => "too_many_handshakes");
    let evictions = ::metrics::counter!(metrics::HTTP_EVICTIONS);
    let refusal = raw_response(&too_many_handshakes());
    // Shown at 0 from the start, so an alert on it has a series to watch.
    let fd_limit_errors = ::metrics::counter!(metrics::ACCEPT_ERRORS, "kind" => "fd_limit");
    let connections = TaskTracker::new();
    let accept_log = Throttle::new(1, ACCEPT_LOG_INTERVAL);

    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok((tcp, peer)) => (tcp, peer.ip().to_canonical()),
            Err(e) => {
                let kind = accept_error_kind(&e);
                match kind {
                    "fd_limit" => fd_limit_errors.increment(1),
                    _ => ::metrics::counter!(metrics::ACCEPT_ERRORS, "kind" => kind).increment(1),
                }
                if kind == "aborted" {
                    // The client gave up before the accept: nothing is wrong here.
                    tracing::debug!(error = %e, "accept: connection aborted");
                    continue;
                }
                if let Some(suppressed) = accept_log.ready(Instant::now()) {
                    tracing::warn!(error = %e, kind, suppressed, "accept failed; pausing before the next accept");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let source = match edge.on_accept(peer) {
            Ok(source) => source,
            Err(refused) => {
                ::metrics::counter!(metrics::HTTP_REFUSED, "reason" => refused.reason()).increment(1);
                logging::rejected(Refusal::STATUS.as_u16(), refused.reason(), Some(peer));
                match pool.admit() {
                    Admission::Admitted { slot, evicted, evicted_another } => {
                        if evicted_another {
                            evictions.increment(1);
                        }
                        connections.spawn(hold_then_refuse(tcp, refused, slot, evicted, shutdown.clone()));
                    }
                    Admission::Full => refuse(tcp, &raw_response(&refused.error())),
                }
                continue;
            }
        };
        let (slot, mut evicted, evicted_another) = match pool.admit() {
            Admission::Admitted { slot, evicted, evicted_another } => (slot, evicted, evicted_another),
            Admission::Full => {
                refused.increment(1);
                logging::rejected(StatusCode::SERVICE_UNAVAILABLE.as_u16(), "too_many_handshakes", Some(peer));
                refuse(tcp, &refusal);
                continue;
            }
        };
        // Presence frames are small and latency matters: no Nagle delay on any client socket.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let requests = slot.requests();
        let app = TowerToHyperService::new(router.clone());
        let edge = edge.clone();
        let service = service_fn(move |mut request: hyper::Request<_>| {
            // hyper calls the service once a request head is complete: from here until the
            // response body is dropped, this connection is not evicted.
            let serving = requests.serving();
            let (client, admitted) = edge.on_request(source, peer, request.headers());
            let response = match admitted {
                Ok(budget) => {
                    request.extensions_mut().insert(client);
                    if let Some(budget) = budget {
                        request.extensions_mut().insert(budget);
                    }
                    Either::Left(app.call(request))
                }
                Err(refused) => {
                    ::metrics::counter!(metrics::HTTP_REFUSED, "reason" => refused.reason()).increment(1);
                    logging::rejected(Refusal::STATUS.as_u16(), refused.reason(), Some(client.0));
                    Either::Right(std::future::ready(Ok(refused.error().into_response())))
                }
            };
            async move { response.await.map(|response| serving.respond(response)) }
        });
        let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // Held until the connection closes or hands its socket to a WebSocket (the
            // future resolves once the upgrade is fulfilled).
            let _slot = slot;
            let mut conn = pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                // Evicted for a newcomer: dropping the connection closes its socket.
                _ = &mut evicted => return,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                let reason = connection_error_reason(&e);
                ::metrics::counter!(metrics::HTTP_CONNECTION_ERRORS, "reason" => reason).increment(1);
                tracing::debug!(error = %e, reason, "HTTP connection ended");
            }
        });
        if evicted_another {
            evictions.increment(1);
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection refused by the per-address budget once it has been held for its
/// wait (at most [`MAX_HOLD`]), holding a waiting slot of the handshake pool meanwhile.
///
/// Why hold it: a client that reconnects the moment it is refused would otherwise make the
/// router accept and refuse thousands of connections a second (10–14k a second from ten
/// such clients on loopback, a third of a core). Held, each such client costs one refusal
/// per [`MAX_HOLD`]. The held sockets are bounded by the pool: at its cap they are the
/// connections that have waited longest, so newcomers evict them (closed without an
/// answer) before any client with a request being served, and a full pool of busy
/// connections gets the refusal at once.
async fn hold_then_refuse(
    tcp: TcpStream,
    refused: Refusal,
    _slot: Slot,
    evicted: oneshot::Receiver<()>,
    shutdown: CancellationToken,
) {
    let hold = refused.wait().min(MAX_HOLD);
    tokio::select! {
        () = tokio::time::sleep(hold) => refuse(tcp, &raw_response(&refused.after(hold).error())),
        // Evicted for a newcomer, or shutting down: dropping the socket closes it.
        _ = evicted => {}
        () = shutdown.cancelled() => {}
    }
}

/// What a connection over the handshake cap is told when no slot can be freed.
fn too_many_handshakes() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_handshakes",
        "too many connections are in their HTTP handshake; retry shortly",
    )
    .retry_after(1)
}

/// `error` as a complete HTTP/1.1 response that closes the connection, for [`refuse`].
fn raw_response(error: &ApiError) -> Vec<u8> {
    let body = error.body().to_string();
    let retry_after = error.retry_after.map(|secs| format!("retry-after: {secs}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry_after}\
         connection: close\r\n\r\n{body}",
        error.status.as_u16(),
        error.status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

/// Answers a connection refused on accept (over its address's budget, or over the
/// handshake cap with every slot busy) without waiting on it. Whatever request already
/// arrived is read first, so the close is a FIN rather than a reset that could discard the
/// answer on its way; the answer fits an empty socket buffer; then the socket is closed.
/// Every call is non-blocking, so the accept loop is never held up.
fn refuse(tcp: TcpStream, response: &[u8]) {
    // tokio's try_read/try_write skip the syscall until the reactor has seen the socket
    // ready, which a socket accepted a moment ago has not: use it as a plain
    // non-blocking socket instead.
    let Ok(mut tcp) = tcp.into_std() else { return };
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match tcp.read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    if let Err(e) = tcp.write(response) {
        tracing::debug!(error = %e, "writing a refusal on accept");
    }
}

/// A low-cardinality label for a failed accept.
fn accept_error_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => "fd_limit",
        Some(libc::ENOBUFS | libc::ENOMEM) => "memory",
        _ if matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused) => "aborted",
        _ => "other",
    }
}

/// A low-cardinality label for an HTTP connection that ended with an error.
fn connection_error_reason(e: &hyper::Error) -> &'static str {
    if e.is_timeout() {
        "header_timeout"
    } else if e.is_parse_too_large() {
        "header_too_large"
    } else if e.is_parse() {
        "bad_request"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else {
        "io"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_get_low_cardinality_kinds() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(accept_error_kind(&os(libc::EMFILE)), "fd_limit");
        assert_eq!(accept_error_kind(&os(libc::ENFILE)), "fd_limit");
        assert_eq!(accept_error_kind(&os(libc::ENOBUFS)), "memory");
        assert_eq!(accept_error_kind(&os(libc::ECONNABORTED)), "aborted");
        assert_eq!(accept_error_kind(&os(libc::EINVAL)), "other");
    }

    #[test]
    fn refusals_on_accept_are_complete_json_responses_that_close() {
        let address = budget::Refusal::Rate(Duration::from_millis(2500)).error();
        for (error, status, code, retry_after) in [
            (too_many_handshakes(), "503 Service Unavailable", "too_many_handshakes", "retry-after: 1\r\n"),
            (address, "429 Too Many Requests", "address_rate_limited", "retry-after: 3\r\n"),
        ] {
            let response = String::from_utf8(raw_response(&error)).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            assert!(head.contains(retry_after) && head.contains("connection: close"), "{head}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!((body["success"].as_bool(), body["error"]["code"].as_str()), (Some(false), Some(code)));
        }
    }
}
