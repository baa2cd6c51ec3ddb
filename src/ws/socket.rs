//! A server-side WebSocket over an upgraded HTTP connection, written for many mostly idle
//! connections facing untrusted clients.
//!
//! Why not a general-purpose WebSocket crate: the router's first costs are memory per idle
//! connection and what one hostile client can make it do. Here
//! - an idle connection holds no buffer at all: reads go through one scratch buffer per
//!   worker thread, and only the unparsed tail of a frame is kept, in a buffer freed as
//!   soon as it is consumed, so one large frame leaves nothing behind;
//! - frames are written straight from their shared, pre-encoded bytes (a 10 MB snapshot
//!   is not copied once per dashboard);
//! - every frame the client sends, control frames and empty continuation fragments
//!   included, is charged to the connection's [`Budget`], and a ping is answered by at
//!   most two pongs (one being written, one waiting), so floods cannot grow memory or burn CPU unnoticed;
//! - the close handshake is completed properly: our Close frame is flushed, then the
//!   write half is shut and unread input drained for a bounded time, so the client reads
//!   the close code instead of a TCP reset.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::poll_fn,
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::Sleep,
};

use super::{
    frame::{self, Header, Opcode, OutHeader, Violation},
    rate_limit::{Budget, Verdict},
};
use crate::metrics;

/// Bytes read from a socket per read call, into the worker thread's scratch buffer.
const SCRATCH_BYTES: usize = 16 * 1024;

/// Frames fed without a flush collect up to this many bytes before they are written, so
/// a dashboard catching up pays one write per batch. Frames are queued by reference, so
/// this bounds syscalls, not copies.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// After our Close frame, how long unread input is drained before the socket is dropped.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// ... and how many bytes at most: a flooder keeps writing, and reading its flood costs
/// CPU the other clients need. A client that reads sees our Close long before this.
const DRAIN_BYTES: usize = 256 * 1024;

/// Most frames in one vectored write.
const MAX_IOSLICES: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// What [`Socket::recv`] hands the connection.
#[derive(Debug)]
pub enum Incoming {
    /// A complete binary message.
    Binary(Bytes),
    /// A complete text message (valid UTF-8; the protocol has no use for it).
    Text,
    /// A ping (answered here) or a pong: nothing to handle, but the client is there.
    Control,
    /// The client sent a Close frame with this code (`None`: no code). Answer with
    /// [`Socket::close`] echoing it.
    Closed(Option<u16>),
    /// The client broke the protocol; close with the violation's code.
    Violation(Violation),
    /// The client kept sending past its budget; close with 4029.
    RateLimited,
    /// The connection ended (end of stream or an I/O error) without a close handshake.
    Gone,
}

/// One queued outbound frame.
struct Out {
    header: OutHeader,
    payload: Bytes,
    /// Bytes of header + payload already written.
    written: usize,
}

impl Out {
    fn len(&self) -> usize {
        self.header.as_slice().len() + self.payload.len()
    }

    fn is_pong(&self) -> bool {
        self.header.opcode() == Opcode::Pong
    }

    /// The unwritten parts, as at most two slices.
    fn slices(&self) -> [&[u8]; 2] {
        let header = self.header.as_slice();
        if self.written < header.len() {
            [&header[self.written..], &self.payload]
        } else {
            [&[], &self.payload[self.written - header.len()..]]
        }
    }
}

/// A message being reassembled from fragments.
struct Fragments {
    opcode: Opcode,
    data: Vec<u8>,
    /// A fragment was dropped by the budget: the message is discarded when it ends.
    poisoned: bool,
}

pub struct Socket {
    io: TokioIo<Upgraded>,
    /// Bytes read but not yet parsed (an incomplete frame). Empty and unallocated
    /// between frames.
    pending: Vec<u8>,
    /// Boxed: most connections never send a fragmented message.
    fragments: Option<Box<Fragments>>,
    /// Armed while a frame or a fragmented message is begun and not finished: a client
    /// must not park a buffer of up to `--max-frame-bytes` here forever. Boxed, and only
    /// while armed: every idle connection would pay for an inline timer.
    unfinished: Option<Pin<Box<Sleep>>>,
    /// How long a begun frame or fragmented message may stay unfinished.
    frame_timeout: Duration,
    out: VecDeque<Out>,
    queued: usize,
    /// The answer to the latest ping, not yet queued (replaced by later pings).
    pong: Option<Bytes>,
    /// A pong is in `out`, not yet fully written: the next one waits in `pong` (replaced
    /// by later pings) until it is. So a client that pings and never reads holds at most
    /// two pongs, however long it goes on.
    pong_queued: bool,
    budget: Budget,
    /// Largest message (all fragments together) in bytes.
    max_message: usize,
    close_sent: bool,
}

impl Socket {
    /// `max_message`: the largest message in bytes (all fragments together);
    /// `frame_timeout`: how long a begun frame or fragmented message may stay unfinished.
    pub fn new(io: TokioIo<Upgraded>, budget: Budget, max_message: usize, frame_timeout: Duration) -> Self {
        Socket {
            io,
            pending: Vec::new(),
            fragments: None,
            unfinished: None,
            frame_timeout,
            out: VecDeque::new(),
            queued: 0,
            pong: None,
            pong_queued: false,
            budget,
            max_message,
            close_sent: false,
        }
    }

    /// The next message, or how the connection ended. Pings are answered here; pings and
    /// pongs are reported as [`Incoming::Control`]. Cancel-safe: all progress lives in
    /// `self`.
    pub async fn recv(&mut self) -> Incoming {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        if self.pong.is_some() || !self.out.is_empty() {
            // Answer pings while the client's reads allow; a client that never reads
            // holds at most two pongs.
            if let Poll::Ready(Err(_)) = self.poll_write_out(cx) {
                return Poll::Ready(Incoming::Gone);
            }
        }
        loop {
            if !self.pending.is_empty() {
                let mut pending = std::mem::take(&mut self.pending);
                let (consumed, incoming, needed) = self.advance(&pending);
                pending.drain(..consumed);
                self.pending = pending;
                self.after_parse(consumed, needed);
                if let Some(incoming) = incoming {
                    return Poll::Ready(incoming);
                }
            }
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(scratch);
                match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(Some(Incoming::Gone)),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Some(Incoming::Gone)),
                    Poll::Ready(Ok(())) => {
                        let data = buf.filled();
                        if self.pending.is_empty() {
                            // The common case, a whole small frame: parsed in place.
                            let (consumed, incoming, needed) = self.advance(data);
                            self.pending.extend_from_slice(&data[consumed..]);
                            self.after_parse(consumed, needed);
                            Poll::Ready(incoming)
                        } else {
                            self.pending.extend_from_slice(data);
                            Poll::Ready(None)
                        }
                    }
                }
            });
            match read {
                Poll::Ready(Some(incoming)) => return Poll::Ready(incoming),
                Poll::Ready(None) => continue,
                Poll::Pending => {
                    if let Some(timer) = self.unfinished.as_mut()
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Incoming::Violation(Violation::Unfinished));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Sizes the buffer of unparsed bytes: room for the whole frame that has begun
    /// (`needed` bytes, bounded by the message cap), and once frames were consumed, no
    /// more than what is left, so one large frame leaves nothing behind.
    fn after_parse(&mut self, consumed: usize, needed: usize) {
        let unfinished = !self.pending.is_empty() || self.fragments.is_some();
        match (unfinished, self.unfinished.is_some()) {
            (true, false) => self.unfinished = Some(Box::pin(tokio::time::sleep(self.frame_timeout))),
            (false, true) => self.unfinished = None,
            _ => {}
        }
        if needed > self.pending.len() {
            self.pending.reserve_exact(needed - self.pending.len());
        } else if consumed > 0 {
            if self.pending.is_empty() {
                self.pending = Vec::new();
            } else if self.pending.capacity() > SCRATCH_BYTES {
                self.pending.shrink_to_fit();
            }
        }
    }

    /// Handles the whole frames at the start of `buf` until one completes a message or
    /// ends the connection. Returns the bytes consumed, that outcome (`None`: more bytes
    /// are needed) and, when a frame has begun, its whole size in bytes.
    /// Control frames read on the way count as one [`Incoming::Control`], reported when
    /// nothing else is: a burst of pings wakes the connection once.
    fn advance(&mut self, buf: &[u8]) -> (usize, Option<Incoming>, usize) {
        let mut at = 0;
        let mut control = None;
        loop {
            let assembled = self.fragments.as_ref().map_or(0, |f| f.data.len());
            let header = match frame::parse_header(&buf[at..], self.max_message - assembled) {
                Ok(Some(header)) => header,
                Ok(None) => return (at, control, 0),
                Err(violation) => return (at, Some(Incoming::Violation(violation)), 0),
            };
            let end = at + header.header_len + header.len;
            if buf.len() < end {
                return (at, control, end - at);
            }
            let payload = &buf[at + header.header_len..end];
            at = end;
            match self.on_frame(header, payload) {
                Some(Incoming::Control) => control = Some(Incoming::Control),
                Some(incoming) => return (at, Some(incoming), 0),
                None => {}
            }
        }
    }

    /// One complete frame; `Some` when it completes a message or ends the connection.
    fn on_frame(&mut self, header: Header, masked: &[u8]) -> Option<Incoming> {
        if header.opcode != Opcode::Close {
            match self.budget.charge(header.len) {
                Verdict::Admit => {}
                Verdict::Drop => {
                    ::metrics::counter!(metrics::FRAME_ERRORS, "reason" => "rate_limited").increment(1);
                    return match (header.opcode, self.fragments.as_mut()) {
                        (Opcode::Continuation, None) | (Opcode::Text | Opcode::Binary, Some(_)) => {
                            Some(Incoming::Violation(Violation::Protocol("unexpected continuation or data frame")))
                        }
                        (Opcode::Continuation, Some(fragments)) => {
                            fragments.poisoned = true;
                            self.end_message(header.fin)
                        }
                        (Opcode::Text | Opcode::Binary, None) if !header.fin => {
                            let fragments = Fragments { opcode: header.opcode, data: Vec::new(), poisoned: true };
                            self.fragments = Some(Box::new(fragments));
                            None
                        }
                        _ => None,
                    };
                }
                Verdict::Close => return Some(Incoming::RateLimited),
            }
        }
        let mut payload = masked.to_vec();
        frame::unmask(&mut payload, header.mask);
        match header.opcode {
            Opcode::Ping => {
                self.pong = Some(payload.into());
                Some(Incoming::Control)
            }
            Opcode::Pong => Some(Incoming::Control),
            Opcode::Close => Some(match frame::close_code(&payload) {
                Ok(code) => Incoming::Closed(code),
                Err(violation) => Incoming::Violation(violation),
            }),
            Opcode::Text | Opcode::Binary if self.fragments.is_some() => {
                Some(Incoming::Violation(Violation::Protocol("a new message inside a fragmented one")))
            }
            Opcode::Text | Opcode::Binary if header.fin => Some(message(header.opcode, payload)),
            Opcode::Text | Opcode::Binary => {
                self.fragments = Some(Box::new(Fragments { opcode: header.opcode, data: payload, poisoned: false }));
                None
            }
            Opcode::Continuation => match self.fragments.as_mut() {
                None => Some(Incoming::Violation(Violation::Protocol("a continuation with nothing to continue"))),
                Some(fragments) => {
                    if !fragments.poisoned {
                        fragments.data.extend_from_slice(&payload);
                    }
                    self.end_message(header.fin)
                }
            },
        }
    }

    /// After a continuation frame: the reassembled message if it was the last one.
    fn end_message(&mut self, fin: bool) -> Option<Incoming> {
        if !fin {
            return None;
        }
        let fragments = self.fragments.take().expect("a message is being reassembled");
        (!fragments.poisoned).then(|| message(fragments.opcode, fragments.data))
    }

    /// Queues a binary frame without writing it unless a batch's worth is queued.
    pub async fn feed(&mut self, payload: Bytes) -> std::io::Result<()> {
        self.queue(Opcode::Binary, payload);
        if self.queued >= WRITE_BATCH_BYTES { self.flush().await } else { Ok(()) }
    }

    /// Writes a binary frame and everything queued before it.
    pub async fn send(&mut self, payload: Bytes) -> std::io::Result<()> {
        self.queue(Opcode::Binary, payload);
        self.flush().await
    }

    /// Writes a ping (empty) and everything queued before it. A client that answers it is
    /// heard from ([`Incoming::Control`]).
    pub async fn ping(&mut self) -> std::io::Result<()> {
        self.queue(Opcode::Ping, Bytes::new());
        self.flush().await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Sends a Close frame with `code` (once) and writes it out.
    pub async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        if !self.close_sent {
            self.close_sent = true;
            self.pong = None;
            self.push(Opcode::Close, frame::close_payload(code, reason).into());
        }
        self.flush().await
    }

    /// Ends the TCP connection after a close handshake: shuts the write half (the client
    /// sees our Close frame, then end of stream) and reads whatever the client still
    /// sends, up to [`DRAIN_TIME`] / [`DRAIN_BYTES`], so that closing the socket does
    /// not turn into a reset that discards our Close frame.
    pub async fn finish(mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut drained = 0;
            // On the heap and only while draining: the task's size is paid by every idle
            // connection.
            let mut chunk = vec![0u8; SCRATCH_BYTES];
            while drained < DRAIN_BYTES {
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }

    /// Queues a frame, after the pong owed for a ping received before it.
    fn queue(&mut self, opcode: Opcode, payload: Bytes) {
        self.queue_pong();
        self.push(opcode, payload);
    }

    fn queue_pong(&mut self) {
        if !self.pong_queued
            && let Some(pong) = self.pong.take()
        {
            self.push(Opcode::Pong, pong);
            self.pong_queued = true;
        }
    }

    fn push(&mut self, opcode: Opcode, payload: Bytes) {
        let out = Out { header: OutHeader::new(opcode, payload.len()), payload, written: 0 };
        self.queued += out.len();
        self.out.push_back(out);
    }

    /// Writes queued frames (a pending pong first) with vectored writes until none is
    /// left, then releases the queue's storage.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.queue_pong();
        while !self.out.is_empty() {
            // A pong written out makes room for the one waiting.
            if !self.pong_queued && self.pong.is_some() {
                self.queue_pong();
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_IOSLICES];
                let mut n = 0;
                for part in self.out.iter().take(MAX_IOSLICES / 2).flat_map(Out::slices) {
                    if !part.is_empty() {
                        slices[n] = IoSlice::new(part);
                        n += 1;
                    }
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.queued -= written;
            let mut left = written;
            while left > 0 {
                let front = self.out.front_mut().expect("written bytes belong to queued frames");
                let take = left.min(front.len() - front.written);
                front.written += take;
                left -= take;
                if front.written == front.len() {
                    if front.is_pong() {
                        self.pong_queued = false;
                    }
                    self.out.pop_front();
                }
            }
        }
        // Released whatever its size: a mobile writes a frame or two per heartbeat, and
        // the few slots those leave behind would stay allocated in every idle connection.
        self.out = VecDeque::new();
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// A complete data message; text must be UTF-8.
fn message(opcode: Opcode, payload: Vec<u8>) -> Incoming {
    match opcode {
        Opcode::Text if std::str::from_utf8(&payload).is_err() => Incoming::Violation(Violation::InvalidUtf8),
        Opcode::Text => Incoming::Text,
        _ => Incoming::Binary(payload.into()),
    }
}
