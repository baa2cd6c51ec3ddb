//! A WebSocket client on a raw TCP socket, for tests where a library would hide the bug:
//! control-frame floods, fragments, close handshakes read byte by byte, bad framing.

use std::net::{IpAddr, SocketAddr};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::WAIT;

use presence_router::ws::frame::opcode::CLOSE;

/// A masked client frame: `fin`, raw `opcode` bits, `payload`.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    presence_router::ws::frame::masked_frame(fin, opcode, payload)
}

/// A close frame's payload: code then reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A server frame: (fin, opcode, payload).
pub type ServerFrame = (bool, u8, Vec<u8>);

/// How reading the router's side ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A Close frame with this code (`None`: empty payload), then end of stream.
    Closed(Option<u16>),
    /// A Close frame, then a reset instead of end of stream.
    ClosedThenReset(Option<u16>),
    /// No Close frame: end of stream or a reset.
    Dropped,
}

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens a WebSocket with `token` (and `device_id`, when given) and checks the 101.
    pub async fn connect(addr: SocketAddr, token: &str, device: Option<&str>) -> RawWs {
        Self::handshake(TcpStream::connect(addr).await.unwrap(), addr, token, &device_line(device)).await
    }

    /// [`RawWs::connect`] from `source` (any 127.0.0.0/8 address works on Linux), with
    /// `extra` header lines (each ending in `\r\n`), such as a proxy's `X-Forwarded-For`.
    pub async fn connect_from(source: IpAddr, addr: SocketAddr, token: &str, extra: &str) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Self::handshake(socket.connect(addr).await.unwrap(), addr, token, extra).await
    }

    /// [`RawWs::connect`] over a socket with a 4 KiB receive buffer: a client that does not
    /// read fills it soon.
    pub async fn connect_small(addr: SocketAddr, token: &str, device: Option<&str>) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Self::handshake(socket.connect(addr).await.unwrap(), addr, token, &device_line(device)).await
    }

    /// The opening handshake with `extra` header lines; checks the 101.
    async fn handshake(mut stream: TcpStream, addr: SocketAddr, token: &str, extra: &str) -> RawWs {
        stream.set_nodelay(true).unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             token: {token}\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("handshake in time").unwrap();
            assert!(n > 0, "the router closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "the RFC 6455 example key's answer: {head}");
        buf.drain(..head_end);
        RawWs { stream, buf }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Exactly `n` bytes of what the router sent (what the handshake read past its
    /// response first); for tests that read part of a frame and leave the rest unread.
    pub async fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let buffered = n.min(self.buf.len());
        let mut out: Vec<u8> = self.buf.drain(..buffered).collect();
        out.resize(n, 0);
        self.stream.read_exact(&mut out[buffered..]).await?;
        Ok(out)
    }

    /// The next server frame as (fin, opcode, payload); `None` at end of stream or reset.
    pub async fn read_frame(&mut self) -> Option<ServerFrame> {
        read_frame(&mut self.buf, &mut self.stream).await
    }

    /// Reads frames until the router's Close, then checks how the TCP stream ends.
    pub async fn end(&mut self) -> End {
        end(&mut self.buf, &mut self.stream).await.1
    }

    /// [`RawWs::end`], with the Close frame as read (`None` if there was none).
    pub async fn end_with_close(&mut self) -> (Option<ServerFrame>, End) {
        end(&mut self.buf, &mut self.stream).await
    }

    /// Writes `chunk` up to `times` times while reading, until the router ends the
    /// connection; returns how it ended.
    pub async fn flood(&mut self, chunk: &[u8], times: usize) -> End {
        let (mut reader, mut writer) = self.stream.split();
        let write = async {
            for _ in 0..times {
                if writer.write_all(chunk).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            (_, ended) = end(&mut self.buf, &mut reader) => ended,
            () = write => unreachable!(),
        }
    }
}

/// How the router answered one handshake ([`try_handshake`]).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Lowercased head.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// A header's value (`name` lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    }

    /// The JSON body's `error.code`; empty when there is none.
    pub fn code(&self) -> String {
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        body["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One WebSocket handshake from `source` with `extra` header lines (each ending in
/// `\r\n`), whatever the answer: the connection is dropped once the answer's head and
/// `content-length` body are read. A router refusing on accept may close the socket before
/// the request is written: its answer is still there to read.
pub async fn try_handshake(source: IpAddr, addr: SocketAddr, token: &str, extra: &str) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         token: {token}\r\ndevice_id: d\r\n{extra}\r\n"
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = tokio::time::timeout(WAIT, read_answer(&mut stream)).await.expect("an answer in time");
    let Ok(Some(answer)) = answer else { panic!("no complete answer: {answer:?}") };
    answer
}

/// Reads one HTTP response: its head and `content-length` body. `Ok(None)` when the
/// stream ends first, `Err` (saying what was read) on a read error; the read is not
/// bounded in time.
pub async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Result<Option<Answer>, String> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if data.len() >= end + 4 + length {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status: {head}"));
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Ok(Some(Answer { status, head, body }));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Ok(None),
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&data))),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The `device_id` header line, when there is a device.
fn device_line(device: Option<&str>) -> String {
    device.map(|d| format!("device_id: {d}\r\n")).unwrap_or_default()
}

async fn read_frame(buf: &mut Vec<u8>, stream: &mut (impl AsyncRead + Unpin)) -> Option<ServerFrame> {
    loop {
        if let Some((frame, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            return Some(frame);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("a frame in time") {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn end(buf: &mut Vec<u8>, stream: &mut (impl AsyncRead + Unpin)) -> (Option<ServerFrame>, End) {
    loop {
        match read_frame(buf, stream).await {
            None => return (None, End::Dropped),
            Some(close @ (_, CLOSE, _)) => {
                let payload = &close.2;
                let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let mut rest = [0u8; 1024];
                let end = loop {
                    match tokio::time::timeout(WAIT, stream.read(&mut rest)).await.expect("end in time") {
                        Ok(0) => break End::Closed(code),
                        Ok(_) => continue,
                        Err(_) => break End::ClosedThenReset(code),
                    }
                };
                return (Some(close), end);
            }
            Some(_) => continue,
        }
    }
}

/// A server frame (unmasked) at the start of `buf`, and the bytes it takes.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b1 & 0x80, 0, "server frames are never masked");
    assert_eq!(b0 & 0x70, 0, "server frames set no reserved bit (no extension is negotiated)");
    let (len, at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some(((b0 & 0x80 != 0, b0 & 0x0F, payload), at + len))
}
