//! Connections for the load tool: WebSockets from chosen loopback source addresses (one
//! source has ~28k ephemeral ports), frame helpers, and a keep-alive HTTP/1.1 client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::{heartbeat_frame, message_type},
};
use rmpv::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

use crate::raw;

pub type Ws = WebSocketStream<TcpStream>;

/// Connections per source address before the next one is used.
const PER_SOURCE: usize = 25_000;

/// The source address for the `i`-th connection: 127.0.0.1, then .2, … every 25k.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / PER_SOURCE) as u8))
}

pub struct Credentials {
    pub secret: String,
}

impl Credentials {
    pub async fn connect(&self, router: SocketAddr, i: usize, user: &str, role: Role) -> anyhow::Result<Ws> {
        self.connect_in(router, i, user, role, None).await
    }

    /// A connection whose token names `groups`.
    pub async fn connect_in(
        &self,
        router: SocketAddr,
        i: usize,
        user: &str,
        role: Role,
        groups: Option<&[&str]>,
    ) -> anyhow::Result<Ws> {
        self.connect_to(router, "", i, user, role, groups).await
    }

    /// A connection to the endpoint with `query` (`?…`, or empty) appended to its URL.
    pub async fn connect_to(
        &self,
        router: SocketAddr,
        query: &str,
        i: usize,
        user: &str,
        role: Role,
        groups: Option<&[&str]>,
    ) -> anyhow::Result<Ws> {
        let token = self.token(user, role, groups)?;
        let stream = tcp_connect(router, source(i), None).await?;
        let mut request = format!("ws://{router}/{query}").into_client_request()?;
        request.headers_mut().insert("token", token.parse()?);
        request.headers_mut().insert("device_id", format!("load-{i}").parse()?);
        // Small buffers: the default 128 KiB read buffer per client makes the tool's page
        // faults, not the router, the bottleneck.
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(ws)
    }

    /// A connection whose WebSocket frames are written and read by hand (`raw`), from
    /// `from` (default: the `i`-th client's [`source`]), with `SO_RCVBUF` set to
    /// `recv_buffer` if given; returns the stream and the bytes read past the handshake. A
    /// refused handshake is a [`raw::Refused`] error.
    pub async fn connect_raw(
        &self,
        router: SocketAddr,
        (i, from): (usize, Option<IpAddr>),
        user: &str,
        role: Role,
        recv_buffer: Option<u32>,
    ) -> anyhow::Result<(TcpStream, Vec<u8>)> {
        let token = self.token(user, role, None)?;
        let mut stream = tcp_connect(router, from.unwrap_or_else(|| source(i)), recv_buffer).await?;
        let leftover = raw::handshake(&mut stream, &router.to_string(), &token, &format!("load-{i}")).await?;
        Ok((stream, leftover))
    }

    fn token(&self, user: &str, role: Role, groups: Option<&[&str]>) -> anyhow::Result<String> {
        Ok(mint_hs256_in(self.secret.as_bytes(), user, role, groups, 24 * 3600)?)
    }
}

/// A TCP connection from `from`, without Nagle.
async fn tcp_connect(router: SocketAddr, from: IpAddr, recv_buffer: Option<u32>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(bytes) = recv_buffer {
        // Before connecting: the window scale is agreed in the handshake.
        socket.set_recv_buffer_size(bytes)?;
    }
    if from != source(0) {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(from, 0))?;
    }
    let stream = socket.connect(router).await.with_context(|| format!("connecting from {from}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets `connect` choose the source port: a plain `bind(addr:0)` scans the port space
/// for every socket, which made connecting 10k clients take ~40 s of kernel time.
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The next binary frame, decoded.
pub async fn next_frame(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(rmpv::decode::read_value(&mut &bytes[..])?),
            Some(Ok(Message::Close(frame))) => bail!("closed by the router: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Sends a heartbeat and waits for its ACK.
pub async fn heartbeat(ws: &mut Ws, user: &str) -> anyhow::Result<()> {
    match heartbeat_answer(ws, user).await? {
        None => Ok(()),
        Some(error) => bail!("heartbeat refused: {error}"),
    }
}

/// Sends a heartbeat and waits for the answer: `None` for its ACK, the ERROR payload when
/// it was refused (e.g. `presence_unavailable` while Redis is down).
pub async fn heartbeat_answer(ws: &mut Ws, user: &str) -> anyhow::Result<Option<Value>> {
    ws.send(Message::Binary(heartbeat_frame(user))).await?;
    loop {
        let frame = next_frame(ws).await?;
        match frame[1].as_u64().map(|t| t as u8) {
            Some(message_type::HEARTBEAT_ACK) => return Ok(None),
            Some(message_type::ERROR) => return Ok(Some(frame[5].clone())),
            _ => continue,
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    stream: BufReader<TcpStream>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http { stream: BufReader::new(stream) })
    }

    /// POSTs a JSON body; returns the status and the response body.
    pub async fn post(&mut self, path: &str, bearer: &str, body: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: load\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.exchange(&request).await
    }

    /// GETs `path` without credentials (`/metrics`); returns the status and the body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.exchange(&format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n")).await
    }

    /// Sends `request` and reads the response's status and body (by its Content-Length).
    async fn exchange(&mut self, request: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line.get(9..12).context("status line")?.parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}
