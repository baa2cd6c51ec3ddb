//! WebSocket by hand over raw TCP, for clients a WebSocket library would not let us write
//! (or would quietly fix): pings never read, endless empty continuation fragments, text
//! frames, one huge write of heartbeats; and dashboards that read a ~10 MB snapshot
//! without keeping it in the tool's memory.

use std::io;

use anyhow::bail;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub use presence_router::ws::frame::opcode::{BINARY, CLOSE, CONTINUATION, PING, TEXT};

/// Appends one masked client frame.
pub fn push_frame(buf: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    buf.extend(presence_router::ws::frame::masked_frame(fin, opcode, payload));
}

/// `frame` written over and over until the buffer holds at least `bytes`.
pub fn repeated(frame: &[u8], bytes: usize) -> Vec<u8> {
    let count = bytes.div_ceil(frame.len()).max(1);
    frame.repeat(count)
}

/// The router answered a handshake with this HTTP status instead of 101.
#[derive(Debug, thiserror::Error)]
#[error("handshake refused: HTTP {status}")]
pub struct Refused {
    pub status: u16,
}

/// The opening handshake with the token in a header, as the mobile apps send it.
/// Returns the bytes read past the 101 response (the first frames, for a dashboard); a
/// refusal is a [`Refused`] error.
pub async fn handshake(stream: &mut TcpStream, host: &str, token: &str, device: &str) -> anyhow::Result<Vec<u8>> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         token: {token}\r\ndevice_id: {device}\r\n\r\n"
    );
    // A router refusing on accept may have answered and closed before the request is
    // written: its answer is still there to read.
    let written = stream.write_all(request.as_bytes()).await;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            if !head.starts_with("HTTP/1.1 101") {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Err(Refused { status }.into());
            }
            written?;
            return Ok(buf.split_off(end + 4));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection ended during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A frame from the router, of which only the start of the payload is kept.
pub struct ServerFrame {
    pub opcode: u8,
    /// Payload length in bytes.
    pub len: u64,
    /// The first bytes of the payload (as many as asked for).
    pub head: Vec<u8>,
}

impl ServerFrame {
    /// A Close frame's status code; 1005 ("no status") for a Close without one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE).then(|| match self.head[..] {
            [a, b, ..] => u16::from_be_bytes([a, b]),
            _ => 1005,
        })
    }
}

/// Reads the router's (unmasked) frames, keeping no more than one read's worth of bytes.
pub struct Reader<R> {
    io: R,
    buf: Vec<u8>,
    /// `buf[at..]` is unread.
    at: usize,
}

const READ_BYTES: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> Reader<R> {
    /// `leftover`: bytes already read past the handshake.
    pub fn new(io: R, leftover: Vec<u8>) -> Self {
        Reader { io, buf: leftover, at: 0 }
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.drain(..self.at);
        self.at = 0;
        self.buf.reserve(READ_BYTES);
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    fn unread(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Reads until `n` bytes are unread; false if the stream ended first.
    async fn need(&mut self, n: usize) -> io::Result<bool> {
        while self.unread() < n {
            if !self.fill().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next frame, keeping at most `keep` bytes of its payload; `None` when the stream
    /// ended between frames.
    pub async fn frame(&mut self, keep: usize) -> io::Result<Option<ServerFrame>> {
        if !self.need(2).await? {
            return if self.unread() == 0 { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        let (b0, b1) = (self.buf[self.at], self.buf[self.at + 1]);
        let extended = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if !self.need(2 + extended).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let len = match extended {
            0 => u64::from(b1 & 0x7F),
            _ => self.buf[self.at + 2..self.at + 2 + extended].iter().fold(0, |n, b| n << 8 | u64::from(*b)),
        };
        self.at += 2 + extended;
        let mut head = Vec::new();
        let mut left = len;
        while left > 0 {
            if self.unread() == 0 && !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let available = (self.unread() as u64).min(left) as usize;
            let kept = available.min(keep.saturating_sub(head.len()));
            head.extend_from_slice(&self.buf[self.at..self.at + kept]);
            self.at += available;
            left -= available as u64;
        }
        Ok(Some(ServerFrame { opcode: b0 & 0x0F, len, head }))
    }
}
