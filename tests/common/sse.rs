//! A raw server-sent events client: one `GET` over a plain TCP socket, the chunked body
//! decoded by hand and split into events, as `EventSource` would.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use super::WAIT;

/// One event: its `id` (if the event had one), `event` name and `data` as JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub name: String,
    pub data: serde_json::Value,
}

/// An open event stream.
pub struct Sse {
    stream: TcpStream,
    /// Raw bytes read and not yet decoded from chunks.
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    /// The body ended (the last chunk, or the connection closed).
    pub ended: bool,
    /// Comment lines received (`: keep-alive`).
    pub comments: usize,
}

/// The answer to opening a stream: open, or refused with a status and JSON body.
pub enum Opened {
    Open(Sse),
    Refused(u16, serde_json::Value),
}

impl Opened {
    pub fn open(self) -> Sse {
        match self {
            Opened::Open(sse) => sse,
            Opened::Refused(status, body) => panic!("stream refused: {status} {body}"),
        }
    }

    pub fn refused(self) -> (u16, serde_json::Value) {
        match self {
            Opened::Open(_) => panic!("stream opened, expected a refusal"),
            Opened::Refused(status, body) => (status, body),
        }
    }
}

impl Sse {
    /// `GET path` with `token` and, when given, `Last-Event-ID`.
    pub async fn open(addr: SocketAddr, path: &str, token: &str, last_event_id: Option<&str>) -> Opened {
        Sse::open_with(TcpStream::connect(addr).await.unwrap(), addr, path, token, last_event_id).await
    }

    /// [`Sse::open`] from a socket with a small receive buffer (`bytes`), which fills fast
    /// when the client stops reading.
    pub async fn open_small(addr: SocketAddr, path: &str, token: &str, bytes: u32) -> Opened {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        Sse::open_with(socket.connect(addr).await.unwrap(), addr, path, token, None).await
    }

    async fn open_with(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Opened {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n"
        );
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = Sse { stream, raw: Vec::new(), body: Vec::new(), ended: false, comments: 0 };
        let head = loop {
            if let Some(end) = sse.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(sse.raw[..end].to_vec()).unwrap();
                sse.raw.drain(..end + 4);
                break head;
            }
            assert!(sse.read().await, "the connection closed before the response head");
        };
        let status: u16 = head[9..12].parse().unwrap();
        if status != 200 {
            let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while sse.raw.len() < length && sse.read().await {}
            return Opened::Refused(status, serde_json::from_slice(&sse.raw).unwrap_or(serde_json::Value::Null));
        }
        assert_eq!(header(&head, "content-type").as_deref(), Some("text/event-stream"), "{head}");
        assert_eq!(header(&head, "transfer-encoding").as_deref(), Some("chunked"), "{head}");
        Opened::Open(sse)
    }

    /// Reads more bytes; false at the end of the connection (or a reset).
    async fn read(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let n =
            tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await.expect("stream bytes in time").unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let size = std::str::from_utf8(&self.raw[..line_end]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next event, or `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            self.dechunk();
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).unwrap();
                self.body.drain(..end + 2);
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
                continue;
            }
            if self.ended || !self.read().await {
                self.ended = true;
                return None;
            }
        }
    }

    /// The next event, asserting the stream goes on.
    pub async fn event(&mut self) -> Event {
        self.next().await.expect("the stream ended")
    }

    /// The next event named `name`, skipping others.
    pub async fn next_named(&mut self, name: &str) -> Event {
        loop {
            let event = self.event().await;
            if event.name == name {
                return event;
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Event> {
        let (mut id, mut name, mut data) = (None, String::from("message"), String::new());
        let mut fields = 0;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            fields += 1;
            match field {
                "id" => id = Some(value.to_string()),
                "event" => name = value.to_string(),
                "data" => data.push_str(value),
                _ => {}
            }
        }
        (fields > 0).then(|| Event { id, name, data: serde_json::from_str(&data).unwrap() })
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}
