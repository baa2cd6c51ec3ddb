//! The handshake pool: the `--max-handshakes` slots of one listener, and which connection
//! gives its slot up when a newcomer arrives at the cap.
//!
//! A connection is *waiting* while no request of its own is being served: from its accept
//! until hyper has read a complete request head, and again between keep-alive requests
//! (from when hyper has taken the last of a response body until the next head is
//! complete). It is *busy* while a request is being served (its body read, its handler
//! run, its response produced) and from a `101 Switching Protocols` until it has handed
//! its socket to the WebSocket task and left the pool.
//!
//! At the cap, the connection that has been waiting longest is evicted: its slot passes to
//! the newcomer at once and its task is told to drop it, which closes the socket. A
//! slowloris socket waits from its accept until its header timeout, so it is always among
//! the oldest waiting; a client whose request is being served is never evicted. Only when
//! every connection is busy is the newcomer refused. So an attacker holding sockets open
//! without finishing a request head can no longer lock everyone else out: each newcomer
//! gets a slot, and keeps it for as long as `--max-handshakes` later arrivals take, which is
//! ample time to send a request head.
//!
//! Admission, eviction and each change between waiting and busy take one short lock:
//! O(log n) in the map of waiting connections ordered by when they began waiting, and
//! amortised O(1) in the map of connections by id.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use ::metrics::Gauge;
use hyper::{
    StatusCode,
    body::{Body, Frame, SizeHint},
};
use tokio::sync::oneshot;

use crate::metrics;

/// The slots of one listener.
pub(super) struct Pool {
    cap: usize,
    state: Mutex<State>,
    /// Connections holding a slot (`presence_http_connections`).
    open: Gauge,
    /// Connections holding a slot and waiting for a request head (`presence_http_waiting`).
    waiting: Gauge,
}

#[derive(Default)]
struct State {
    /// Slots held. An evicted connection's slot is the newcomer's from the eviction on.
    held: usize,
    /// Source of connection ids and waiting tickets; a later ticket began waiting later.
    next: u64,
    /// Connections holding a slot, by id.
    conns: HashMap<u64, Conn>,
    /// Waiting connections: ticket to connection id, oldest first.
    waiting: BTreeMap<u64, u64>,
}

struct Conn {
    /// This connection's ticket in [`State::waiting`] while it waits.
    waiting_since: Option<u64>,
    /// Requests of this connection being served (hyper serves one at a time; a count keeps
    /// the bookkeeping right whatever the order of the guards' drops).
    busy: u32,
    /// Answered 101: it stays busy until its task ends.
    upgrading: bool,
    /// Answered with an event stream: its slot is free again, and it is never evicted.
    left: bool,
    /// Dropped, or sent on, when the connection is evicted.
    evict: oneshot::Sender<()>,
}

/// What [`Pool::admit`] decided for a new connection.
pub(super) enum Admission {
    /// A slot, free or taken from an evicted connection.
    Admitted { slot: Slot, evicted: oneshot::Receiver<()>, evicted_another: bool },
    /// At the cap with every connection busy.
    Full,
}

impl Pool {
    pub(super) fn new(cap: usize) -> Arc<Pool> {
        Arc::new(Pool {
            cap,
            state: Mutex::default(),
            open: ::metrics::gauge!(metrics::HTTP_CONNECTIONS),
            waiting: ::metrics::gauge!(metrics::HTTP_WAITING),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives a newly accepted connection a slot: a free one, or the slot of the connection
    /// that has waited longest, which is evicted. The new connection starts out waiting.
    /// `evicted` resolves (with a value or an error) once this connection is evicted.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut state = self.lock();
        let evicted_another = if state.held < self.cap {
            state.held += 1;
            self.open.increment(1.0);
            false
        } else if let Some((_, victim)) = state.waiting.pop_first() {
            self.waiting.decrement(1.0);
            if let Some(victim) = state.conns.remove(&victim) {
                // The receiver may be gone already if its task is ending: nothing to tell.
                let _ = victim.evict.send(());
            }
            true
        } else {
            return Admission::Full;
        };
        let id = state.next;
        state.next += 1;
        let (evict, evicted) = oneshot::channel();
        state.conns.insert(id, Conn { waiting_since: Some(id), busy: 0, upgrading: false, left: false, evict });
        state.waiting.insert(id, id);
        self.waiting.increment(1.0);
        Admission::Admitted { slot: Slot { pool: self.clone(), id }, evicted, evicted_another }
    }

    /// Marks connection `id` busy (no longer a candidate for eviction).
    fn busy(&self, id: u64) {
        let mut state = self.lock();
        let Some(conn) = state.conns.get_mut(&id) else { return };
        conn.busy += 1;
        if let Some(ticket) = conn.waiting_since.take() {
            state.waiting.remove(&ticket);
            self.waiting.decrement(1.0);
        }
    }

    /// Ends one request of connection `id`: with none left, it waits again, from now.
    fn done(&self, id: u64) {
        let mut state = self.lock();
        let ticket = state.next;
        let Some(conn) = state.conns.get_mut(&id) else { return };
        conn.busy = conn.busy.saturating_sub(1);
        if conn.busy > 0 || conn.upgrading || conn.left || conn.waiting_since.is_some() {
            return;
        }
        conn.waiting_since = Some(ticket);
        state.next += 1;
        state.waiting.insert(ticket, id);
        self.waiting.increment(1.0);
    }

    /// Connection `id` answered 101: it stays busy until it leaves the pool.
    fn upgrading(&self, id: u64) {
        if let Some(conn) = self.lock().conns.get_mut(&id) {
            conn.upgrading = true;
        }
    }

    /// Connection `id` answered with an event stream: it gives its slot back now and is
    /// never evicted, though its connection lives on (until it ends, [`Pool::release`]).
    fn leave(&self, id: u64) {
        let mut state = self.lock();
        let Some(conn) = state.conns.get_mut(&id) else { return };
        if conn.left {
            return;
        }
        conn.left = true;
        if let Some(ticket) = conn.waiting_since.take() {
            state.waiting.remove(&ticket);
            self.waiting.decrement(1.0);
        }
        state.held -= 1;
        self.open.decrement(1.0);
    }

    /// Connection `id` has ended: its slot is free unless it was evicted (then the slot
    /// went to the newcomer already) or it left the pool before.
    fn release(&self, id: u64) {
        let mut state = self.lock();
        let Some(conn) = state.conns.remove(&id) else { return };
        if conn.left {
            return;
        }
        if let Some(ticket) = conn.waiting_since {
            state.waiting.remove(&ticket);
            self.waiting.decrement(1.0);
        }
        state.held -= 1;
        self.open.decrement(1.0);
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.held, state.waiting.len())
    }
}

/// A connection's slot, held by its task until the connection ends.
pub(super) struct Slot {
    pool: Arc<Pool>,
    id: u64,
}

impl Slot {
    /// The handle the connection's service uses to report requests.
    pub(super) fn requests(&self) -> Requests {
        Requests { pool: self.pool.clone(), id: self.id }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

/// Reports a connection's requests to its pool.
#[derive(Clone)]
pub(super) struct Requests {
    pool: Arc<Pool>,
    id: u64,
}

impl Requests {
    /// A request head has been read: the connection is busy until the returned guard, or
    /// the response body it is moved into by [`Serving::respond`], is dropped.
    pub(super) fn serving(&self) -> Serving {
        self.pool.busy(self.id);
        Serving { pool: self.pool.clone(), id: self.id }
    }
}

/// One request being served.
pub(super) struct Serving {
    pool: Arc<Pool>,
    id: u64,
}

impl Serving {
    /// Ties the request's end to its response: hyper drops a body once it has taken its
    /// last frame (or given up on it). A 101 keeps the connection busy until it leaves
    /// the pool for its WebSocket. An event stream (`text/event-stream`) leaves the pool at
    /// once: it lasts as long as its client reads, bounded by the streams' own caps, and its
    /// connection closes with it.
    pub(super) fn respond<B>(self, response: hyper::Response<B>) -> hyper::Response<Sending<B>> {
        let event_stream =
            response.headers().get(hyper::header::CONTENT_TYPE).is_some_and(|t| t == "text/event-stream");
        let busy = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.pool.upgrading(self.id);
            None
        } else if event_stream {
            self.pool.leave(self.id);
            None
        } else {
            Some(self)
        };
        response.map(|body| Sending { body, _serving: busy })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.pool.done(self.id);
    }
}

/// A response body that keeps its request counted as being served until hyper drops it.
pub(super) struct Sending<B> {
    body: B,
    _serving: Option<Serving>,
}

impl<B: Body + Unpin> Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(pool: &Arc<Pool>) -> (Slot, oneshot::Receiver<()>, bool) {
        match pool.admit() {
            Admission::Admitted { slot, evicted, evicted_another } => (slot, evicted, evicted_another),
            Admission::Full => panic!("refused"),
        }
    }

    fn is_evicted(rx: &mut oneshot::Receiver<()>) -> bool {
        !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    #[test]
    fn an_event_stream_gives_its_slot_back_and_is_never_evicted() {
        let pool = Pool::new(1);
        let (stream, mut stream_evicted, _) = admit(&pool);
        let serving = stream.requests().serving();
        pool.leave(serving.id);
        drop(serving);
        assert_eq!(pool.counts(), (0, 0), "its slot is free again");
        let (newcomer, _, evicted_another) = admit(&pool);
        assert!(!evicted_another && !is_evicted(&mut stream_evicted), "the stream goes on");
        drop(stream);
        assert_eq!(pool.counts(), (1, 1), "its end frees nothing it no longer held");
        drop(newcomer);
        assert_eq!(pool.counts(), (0, 0));
    }

    #[test]
    fn under_the_cap_every_connection_gets_a_free_slot_and_gives_it_back() {
        let pool = Pool::new(2);
        let (a, _ea, evicted_a) = admit(&pool);
        let (b, _eb, evicted_b) = admit(&pool);
        assert!(!evicted_a && !evicted_b);
        assert_eq!(pool.counts(), (2, 2));
        drop(a);
        assert_eq!(pool.counts(), (1, 1));
        drop(b);
        assert_eq!(pool.counts(), (0, 0));
    }

    #[test]
    fn at_the_cap_the_connection_waiting_longest_is_evicted() {
        let pool = Pool::new(3);
        let (a, mut ea, _) = admit(&pool);
        let (b, mut eb, _) = admit(&pool);
        let (c, mut ec, _) = admit(&pool);
        // `a` finished a request and waits again: it now began waiting after `b` and `c`.
        drop(a.requests().serving());
        let (d, mut ed, evicted_another) = admit(&pool);
        assert!(evicted_another);
        assert!(is_evicted(&mut eb) && !is_evicted(&mut ea) && !is_evicted(&mut ec));
        assert_eq!(pool.counts(), (3, 3), "the evicted slot is the newcomer's");
        let (_e, _, _) = admit(&pool);
        assert!(is_evicted(&mut ec) && !is_evicted(&mut ea));
        let (_f, _, _) = admit(&pool);
        assert!(is_evicted(&mut ea) && !is_evicted(&mut ed));
        // An evicted connection's task ending frees nothing: its slot has moved on.
        drop((a, b, c));
        assert_eq!(pool.counts(), (3, 3));
        drop(d);
        assert_eq!(pool.counts(), (2, 2));
    }

    #[test]
    fn connections_being_served_or_upgrading_are_never_evicted() {
        let pool = Pool::new(2);
        let (a, mut ea, _) = admit(&pool);
        let (b, mut eb, _) = admit(&pool);
        let serving = a.requests().serving();
        let upgrade = b.requests().serving().respond(hyper::Response::builder().status(101).body(()).unwrap());
        drop(upgrade);
        assert_eq!(pool.counts(), (2, 0));
        assert!(matches!(pool.admit(), Admission::Full));
        assert!(!is_evicted(&mut ea) && !is_evicted(&mut eb));

        // Once its response body is dropped, the served one waits again and may be evicted.
        let response = serving.respond(hyper::Response::new(()));
        assert!(matches!(pool.admit(), Admission::Full), "busy until the body is dropped");
        drop(response);
        let (_c, _, evicted_another) = admit(&pool);
        assert!(evicted_another && is_evicted(&mut ea));
        // The upgrading one leaves when its task ends.
        drop(b);
        assert_eq!(pool.counts(), (1, 1));
    }

    #[test]
    fn a_request_guard_outliving_its_connection_is_harmless() {
        let pool = Pool::new(1);
        let (a, _ea, _) = admit(&pool);
        let serving = a.requests().serving();
        drop(a);
        drop(serving);
        assert_eq!(pool.counts(), (0, 0));
        let (_b, _, evicted_another) = admit(&pool);
        assert!(!evicted_another);
    }
}
