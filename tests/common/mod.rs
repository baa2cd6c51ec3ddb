//! Test harness: real router binaries on free ports, real WebSocket clients, raw HTTP.
//!
//! Every wait here is bounded and waits for an event (a line, a frame, a close), never a
//! fixed sleep.
#![allow(dead_code)]

pub mod cluster;
pub mod openapi;
pub mod prometheus;
pub mod raw;
pub mod sse;
pub mod tcp_proxy;
pub mod tokens;

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use presence_router::auth::{Role, mint_hs256, mint_hs256_in};
use rmpv::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    process::{Child, ChildStderr, Command},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

pub const SECRET: &str = "integration-secret-at-least-32-bytes-long";
/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn token(user: &str, role: Role) -> String {
    mint_hs256(SECRET.as_bytes(), user, role, 3600).unwrap()
}

/// Reads a child's output line by line until `find` recognises one, within [`WAIT`], and
/// keeps draining the rest so the child never blocks on a full pipe.
pub async fn await_line<T>(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    what: &str,
    mut find: impl FnMut(&str) -> Option<T>,
) -> T {
    let mut lines = BufReader::new(output).lines();
    let found = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(found) = find(&line) {
                return found;
            }
        }
        panic!("the process exited before {what}");
    };
    let found = tokio::time::timeout(WAIT, found).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// Which engine a behavioural test runs against; the same suite runs on both.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Memory,
    Redis,
    /// The Redis engine on a Redis Cluster of three masters and three replicas.
    RedisCluster,
}

/// What a test needs to start routers on one engine: nothing, a Redis server, or a Redis
/// Cluster.
pub struct Setup {
    pub redis: Option<RedisServer>,
    pub cluster: Option<cluster::RedisCluster>,
}

impl Setup {
    pub async fn new(engine: Engine) -> Setup {
        match engine {
            Engine::Memory => Setup { redis: None, cluster: None },
            Engine::Redis => Setup { redis: Some(RedisServer::start().await), cluster: None },
            Engine::RedisCluster => Setup { redis: None, cluster: Some(cluster::RedisCluster::start().await) },
        }
    }

    pub fn engine_name(&self) -> &'static str {
        match (&self.redis, &self.cluster) {
            (Some(_), _) => "redis",
            (None, Some(_)) => "redis-cluster",
            (None, None) => "memory",
        }
    }

    /// A router on this setup's engine with `extra` flags.
    pub async fn router(&self, extra: &[&str]) -> Router {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(redis) = &self.redis {
            args.extend(["--redis-host".into(), "127.0.0.1".into(), "--redis-port".into(), redis.port.to_string()]);
        }
        if let Some(cluster) = &self.cluster {
            args.extend(["--redis-cluster-nodes".into(), cluster.seeds()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Router::start(&args).await
    }
}

/// Runs each named `async fn(Engine)` as three tests, `memory::name`, `redis::name` and
/// `redis_cluster::name`.
#[macro_export]
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name($crate::common::Engine::Memory).await })*
        }
        $crate::on_shared_engines!($($name),*);
    };
}

/// Runs each named `async fn(Engine)` as two tests, `memory::name` and `redis::name`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name($crate::common::Engine::Memory).await })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { super::$name($crate::common::Engine::Redis).await })*
        }
    };
}

/// Runs each named `async fn(Engine)` as two tests on the engines several routers share,
/// `redis::name` and `redis_cluster::name`.
#[macro_export]
macro_rules! on_shared_engines {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test] async fn $name() { super::$name($crate::common::Engine::Redis).await })*
        }
        mod redis_cluster {
            $(#[tokio::test] async fn $name() { super::$name($crate::common::Engine::RedisCluster).await })*
        }
    };
}

/// A real `redis-server` with the project's `redis.conf`, on a free port; killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// Appended to the command line; later settings win over `redis.conf` and `--port`.
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(|_| Vec::new()).await
    }

    /// [`RedisServer::start`] with `extra(port)` appended to redis-server's command line
    /// (`--requirepass`, or TLS on the port: `--port 0 --tls-port <port> …`).
    pub async fn start_with(extra: impl FnOnce(u16) -> Vec<String>) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("presence-router-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, dir, extra: extra(port), child: None };
        server.spawn().await;
        server
    }

    /// Starts (again) on the same port, empty: the router must rebuild presence.
    pub async fn spawn(&mut self) {
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/redis.conf");
        let mut child = Command::new("redis-server")
            .arg(conf)
            .args(["--port", &self.port.to_string(), "--dir", self.dir.to_str().unwrap(), "--logfile", ""])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (make deps)");
        await_line(child.stdout.take().unwrap(), "redis-server to be ready", |line| {
            line.contains("Ready to accept connections").then_some(())
        })
        .await;
        self.child = Some(child);
    }

    /// SIGKILL: Redis is gone, with everything it held.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Sends a signal (`STOP`: Redis hangs, holding every connection; `CONT`: it resumes).
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running").to_string();
        let status = Command::new("kill").args(["-s", signal, &pid]).status().await.unwrap();
        assert!(status.success());
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap()
    }

    /// Drops every subscriber connection (`CLIENT KILL TYPE pubsub`): the routers' broker
    /// subscriptions. Returns how many were dropped.
    pub async fn kill_subscriptions(&self) -> u64 {
        let mut conn = self.client().get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port for a server the test starts itself (redis-server, nginx).
///
/// Taken below the kernel's ephemeral range (32768 up), from a per-process sequence: the
/// kernel never hands it to a `--port 0` router or an outgoing connection, and no other
/// test in this process takes it, so a test that kills Redis and starts it again on the
/// same port cannot meet a stranger there.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 1000) as u16 * 20;
    loop {
        let port = 10_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 20_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A router process; killed when dropped.
pub struct Router {
    pub addr: SocketAddr,
    child: Child,
}

impl Router {
    /// Starts the binary on 127.0.0.1:0 with `extra` flags and waits for its listen line.
    pub async fn start(extra: &[&str]) -> Router {
        let command = Command::new(env!("CARGO_BIN_EXE_presence-router"));
        Router::launch(command, extra, false, true).await.0
    }

    /// Like [`Router::start`] without the suite's `--jwt-secret`: `extra` and `env` name the
    /// keys (a public key, a JWKS) and any other setting.
    pub async fn start_keyed(extra: &[&str], env: &[(&str, &str)]) -> Router {
        let mut command = Command::new(env!("CARGO_BIN_EXE_presence-router"));
        command.env_remove("JWT_SECRET").envs(env.iter().copied());
        Router::launch(command, extra, false, false).await.0
    }

    /// Like [`Router::start`], logging at info to the returned stderr, and with the
    /// open-file limit (soft and hard) set to `nofile` when given, as `ulimit -n` does.
    pub async fn start_logged(nofile: Option<u64>, extra: &[&str]) -> (Router, ChildStderr) {
        let binary = env!("CARGO_BIN_EXE_presence-router");
        let command = match nofile {
            None => Command::new(binary),
            Some(nofile) => {
                let mut shell = Command::new("sh");
                // `exec` keeps the pid, so signals and /proc reach the router itself.
                shell.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""), binary]);
                shell
            }
        };
        let (router, stderr) = Router::launch(command, extra, true, true).await;
        (router, stderr.expect("stderr is piped"))
    }

    async fn launch(mut command: Command, extra: &[&str], logged: bool, secret: bool) -> (Router, Option<ChildStderr>) {
        command.args(["--host", "127.0.0.1", "--port", "0"]);
        if secret {
            command.args(["--jwt-secret", SECRET]);
        }
        let mut child = command
            .args(extra)
            .env("RUST_LOG", if logged { "info" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(if logged { Stdio::piped() } else { Stdio::inherit() })
            .kill_on_drop(true)
            .spawn()
            .expect("router binary starts");
        let addr = await_line(child.stdout.take().unwrap(), "the router's listen line", |line| {
            line.strip_prefix("listening on ").map(|addr| addr.parse().unwrap())
        })
        .await;
        let stderr = child.stderr.take();
        (Router { addr, child }, stderr)
    }

    /// The router's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// A memory figure of the router process in KiB from `/proc/<pid>/status`: `VmRSS`
    /// (resident now) or `VmHWM` (the most it has been resident).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    /// Sends a signal (`KILL`, `TERM`) to the router process.
    pub async fn signal(&mut self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill").args(["-s", signal, &pid]).status().await.unwrap();
        assert!(status.success());
        if signal == "KILL" {
            self.child.wait().await.unwrap();
        }
    }

    /// Waits for the process to exit (after TERM).
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("router exits in time").unwrap()
    }

    pub async fn mobile(&self, user: &str, device: &str) -> Client {
        Client::connect(self.addr, &token(user, Role::Mobile), Some(device)).await
    }

    /// A mobile whose token puts it in `groups`, synced: the router has registered it, so
    /// it receives whatever its groups are sent from now on.
    pub async fn mobile_in(&self, user: &str, groups: &[&str]) -> Client {
        self.mobile_on(user, "device", groups).await
    }

    /// [`Router::mobile_in`] on a named device (a user's phone and tablet are two).
    pub async fn mobile_on(&self, user: &str, device: &str, groups: &[&str]) -> Client {
        let token = mint_hs256_in(SECRET.as_bytes(), user, Role::Mobile, Some(groups), 3600).unwrap();
        let mut client = Client::connect(self.addr, &token, Some(device)).await;
        client.sync(user).await;
        client
    }

    /// A dashboard allowed only `groups`, with its snapshot already read.
    pub async fn dashboard_of(&self, user: &str, groups: &[&str]) -> (Client, Value) {
        let token = mint_hs256_in(SECRET.as_bytes(), user, Role::Dashboard, Some(groups), 3600).unwrap();
        let mut client = Client::connect(self.addr, &token, None).await;
        let snapshot = client.next_frame().await;
        assert_eq!(snapshot[1].as_u64(), Some(32), "dashboards get PRESENCE_SNAPSHOT first");
        (client, snapshot)
    }

    /// A dashboard, with its first frame (the snapshot) already read.
    pub async fn dashboard(&self, user: &str) -> (Client, Value) {
        let mut client = Client::connect(self.addr, &token(user, Role::Dashboard), None).await;
        let snapshot = client.next_frame().await;
        assert_eq!(snapshot[1].as_u64(), Some(32), "dashboards get PRESENCE_SNAPSHOT first");
        (client, snapshot)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut out)).await.expect("metrics in time").unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// `GET path` with an unrestricted API token.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", token("api", Role::Dashboard));
        http(self.addr, "GET", path, &[("Authorization", &auth)], "").await
    }

    /// `GET /api/groups/{group}/presence`, asserting 200.
    pub async fn group(&self, group: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("/api/groups/{group}/presence")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /api/users/{user}/presence`'s user, asserting 200.
    pub async fn user(&self, user: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("/api/users/{user}/presence")).await;
        assert_eq!(status, 200, "{body}");
        body["user"].clone()
    }

    pub async fn post_status(&self, body: &str) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", token("api", Role::Service));
        http(
            self.addr,
            "POST",
            "/api/presence/status",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body,
        )
        .await
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The handshake's query resuming a dashboard from `position` with `view`.
pub fn resume_query(position: &str, view: &str) -> String {
    form_urlencoded::Serializer::new(String::new()).append_pair("position", position).append_pair("view", view).finish()
}

pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(addr: SocketAddr, token: &str, device: Option<&str>) -> Client {
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request.headers_mut().insert("token", token.parse().unwrap());
        if let Some(device) = device {
            request.headers_mut().insert("device_id", device.parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake in time")
            .expect("handshake accepted");
        Client { ws }
    }

    /// Connects with `query` (without its `?`) after the endpoint's path, e.g. a dashboard's
    /// position to resume from ([`resume_query`]).
    pub async fn connect_with_query(addr: SocketAddr, token: &str, query: &str) -> Client {
        let mut request = format!("ws://{addr}/?{query}").into_client_request().unwrap();
        request.headers_mut().insert("token", token.parse().unwrap());
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake in time")
            .expect("handshake accepted");
        Client { ws }
    }

    /// Connects from `source` (any 127.0.0.0/8 address works on Linux), for tests where the
    /// router tells clients apart by address.
    pub async fn connect_from(source: std::net::IpAddr, addr: SocketAddr, token: &str, device: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request.headers_mut().insert("token", token.parse().unwrap());
        request.headers_mut().insert("device_id", device.parse().unwrap());
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)))
                .await
                .expect("handshake in time")
                .expect("handshake accepted");
        Client { ws }
    }

    /// Connects over a TCP socket with a tiny receive buffer, for slow-reader tests.
    pub async fn connect_small_buffer(addr: SocketAddr, token: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request.headers_mut().insert("token", token.parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
        Client { ws }
    }

    pub async fn send(&mut self, bytes: impl Into<bytes::Bytes>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send");
    }

    /// Sends; false once the router has closed the connection.
    pub async fn try_send(&mut self, bytes: impl Into<bytes::Bytes>) -> bool {
        self.ws.send(Message::Binary(bytes.into())).await.is_ok()
    }

    /// A WebSocket ping: a sign of life for a client that is not reading now (the router
    /// closes a connection silent for its idle timeout, TTL + 2 s); the pong is skipped by
    /// the readers below.
    pub async fn keep_alive(&mut self) {
        self.ws.send(Message::Ping(bytes::Bytes::new())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_value(&mut self, value: Value) {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        self.send(bytes).await;
    }

    pub async fn heartbeat(&mut self, user: &str) {
        self.send(presence_router::protocol::heartbeat_frame(user)).await;
    }

    /// Heartbeats and waits for the ACK: the router has processed everything this client
    /// sent before, its session registration included.
    pub async fn sync(&mut self, user: &str) {
        self.heartbeat(user).await;
        let ack = self.next_frame().await;
        assert_eq!(ack[1].as_u64(), Some(34), "expected HEARTBEAT_ACK, got {ack}");
    }

    /// Heartbeats until one is acknowledged, after an outage: while the router is degraded
    /// (or a Redis connection is being re-established) a heartbeat gets an ERROR instead.
    /// Panics if none is acknowledged within [`WAIT`].
    pub async fn sync_after_outage(&mut self, user: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.heartbeat(user).await;
            if self.next_frame().await[1].as_u64() == Some(34) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{user}'s heartbeats are never acknowledged again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next binary frame, decoded; fails on close or timeout.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame in time");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    return rmpv::decode::read_value(&mut &b[..]).expect("router frames are msgpack");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Sends `[channelType, type, from, to, payload]`.
    pub async fn send_frame(&mut self, channel: u8, message_type: u8, from: &str, to: &str, payload: Value) {
        self.send_value(Value::Array(vec![channel.into(), message_type.into(), from.into(), to.into(), payload])).await;
    }

    /// STATUS (35) and its ACK.
    pub async fn set_status(&mut self, user: &str, status: &str, text: Option<&str>) {
        let text = text.map_or(Value::Nil, Value::from);
        self.send_frame(0, 35, user, "", map(&[("status", status.into()), ("text", text)])).await;
        self.expect(39).await;
    }

    /// INDICATOR (37) in `group` and its ACK.
    pub async fn indicator(&mut self, user: &str, group: &str, kind: &str, active: bool) {
        self.send_frame(0, 37, user, group, map(&[("type", kind.into()), ("isActive", active.into())])).await;
        self.expect(39).await;
    }

    /// The next frame, asserting its message type.
    pub async fn expect(&mut self, message_type: u8) -> Value {
        let frame = self.next_frame().await;
        assert_eq!(frame[1].as_u64(), Some(message_type.into()), "expected type {message_type}, got {frame}");
        frame
    }

    /// The next frame, asserting a relayed `[channelType, type, from, to, payload]` (or, from
    /// a sender that used the message-id slot, `[channelType, type, from, to, messageId,
    /// payload]`).
    pub async fn expect_relayed(&mut self, message_type: u8, from: &str, to: &str) -> Value {
        let frame = self.expect(message_type).await;
        assert_eq!((frame[2].as_str(), frame[3].as_str()), (Some(from), Some(to)), "{frame}");
        frame
    }

    /// `user` takes `group`'s PTT floor; `listener` hears the START and the talking indicator.
    pub async fn take_floor(&mut self, user: &str, group: &str, listener: &mut Client) {
        use presence_router::protocol::message_type::{START, START_ACK};
        self.send_frame(0, START, user, group, map(&[])).await;
        self.expect(START_ACK).await;
        listener.expect_relayed(START, user, group).await;
        listener.expect_indicator(user, "talking", true).await;
    }

    /// The next INDICATOR_UPDATE's payload, asserting who, what and whether.
    pub async fn expect_indicator(&mut self, user: &str, kind: &str, active: bool) -> Value {
        let payload = self.expect(38).await[5].clone();
        assert_eq!(payload["userId"].as_str(), Some(user), "{payload}");
        assert_eq!(payload["type"].as_str(), Some(kind), "{payload}");
        assert_eq!(payload["isActive"].as_bool(), Some(active), "{payload}");
        payload
    }

    /// The next PRESENCE_UPDATE's payload.
    pub async fn next_update(&mut self) -> Value {
        let frame = self.next_frame().await;
        assert_eq!(frame[1].as_u64(), Some(31), "expected PRESENCE_UPDATE, got {frame}");
        frame[5].clone()
    }

    /// The next ERROR frame's payload.
    pub async fn next_error(&mut self) -> Value {
        let frame = self.next_frame().await;
        assert_eq!(frame[1].as_u64(), Some(33), "expected ERROR, got {frame}");
        frame[5].clone()
    }

    /// Reads until the router closes; returns the close code (None: closed without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        self.ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await
            .ok();
        // Wait for the router's echo so the close is processed before the test goes on.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// The `reason` of a STOP the router relayed in a talker's name (the router ended the
/// talk): its payload, the last element, is VoicePing's JSON string.
pub fn stop_reason(stop: &Value) -> Option<String> {
    let payload = stop.as_array()?.last()?.as_str()?;
    let json: serde_json::Value = serde_json::from_str(payload).ok()?;
    Some(json["reason"].as_str()?.to_owned())
}

/// A dashboard's view: who is online, from snapshots and updates as a real dashboard
/// applies them (a new snapshot replaces everything; older versions are ignored).
#[derive(Default, Debug)]
pub struct View {
    pub online: std::collections::BTreeMap<String, u64>,
    pub versions: std::collections::HashMap<String, u64>,
    pub snapshots: usize,
}

impl View {
    pub fn apply(&mut self, frame: &Value) {
        match frame[1].as_u64() {
            Some(32) => {
                self.snapshots += 1;
                self.online.clear();
                for user in frame[5]["users"].as_array().unwrap() {
                    let (id, version) =
                        (user["userId"].as_str().unwrap().to_string(), user["version"].as_u64().unwrap());
                    self.versions.insert(id.clone(), version);
                    self.online.insert(id, version);
                }
            }
            Some(31) => {
                let update = &frame[5];
                let (id, version) =
                    (update["userId"].as_str().unwrap().to_string(), update["version"].as_u64().unwrap());
                if self.versions.get(&id).is_some_and(|known| *known >= version) {
                    return;
                }
                self.versions.insert(id.clone(), version);
                if update["status"].as_str() == Some("offline") {
                    self.online.remove(&id);
                } else {
                    self.online.insert(id, version);
                }
            }
            _ => {}
        }
    }

    pub fn online_ids(&self) -> Vec<&str> {
        self.online.keys().map(String::as_str).collect()
    }
}

/// A msgpack map with string keys.
pub fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect())
}

/// Polls `check` every 50 ms until it holds, failing after [`WAIT`]. Only for state that
/// no event announces (a health flag, a key in Redis).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts an update's user and status; returns the payload.
pub fn assert_update(update: &Value, user: &str, status: &str) {
    assert_eq!(update["userId"].as_str(), Some(user), "update {update}");
    assert_eq!(update["status"].as_str(), Some(status), "update {update}");
}

/// A minimal HTTP/1.1 client: one request per connection, JSON body back.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("response in time").unwrap();
    let text = String::from_utf8(response).expect("utf-8 response");
    let status = text[9..12].parse().expect("status code");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// A session of `user` in group `crew`, numbered `n` among the test's sessions.
pub fn session(user: &str, n: u64) -> presence_router::presence::Session {
    use presence_router::{id::Id, presence::SessionId};
    presence_router::presence::Session {
        id: SessionId::new("test", n),
        user: Id::parse(user).unwrap(),
        device_id: Some("d".into()),
        groups: vec![Id::parse("crew").unwrap()].into(),
        choice: None,
    }
}

/// The Redis store itself (no router) on the Redis at `port`, with leases of `ttl`.
pub async fn redis_store(port: u16, ttl: Duration) -> presence_router::engine::redis::RedisPresence {
    let away_after = Duration::from_secs(3600);
    let log_entries = presence_router::engine::log::DEFAULT_LOG_ENTRIES;
    redis_store_with(
        port,
        presence_router::engine::Lifetimes { ttl, last_seen: Duration::from_secs(3600), away_after, log_entries },
    )
    .await
}

/// [`redis_store`] with every lifetime given.
pub async fn redis_store_with(
    port: u16,
    lifetimes: presence_router::engine::Lifetimes,
) -> presence_router::engine::redis::RedisPresence {
    use presence_router::engine::redis::{RedisConfig, RedisPresence};
    let config = RedisConfig::tcp("127.0.0.1", port);
    RedisPresence::connect(&config, lifetimes, None).await.unwrap()
}

/// A floor claim of `session` (of user `u`, talk `t`, five-element layout, in group `g`)
/// held at most `hold`, taken over once idle for `idle`.
pub fn floor_claim(
    session: &presence_router::presence::SessionId,
    hold: Duration,
    idle: Option<Duration>,
) -> presence_router::engine::FloorClaim {
    use presence_router::{
        engine::{FloorClaim, FloorListeners, Talker},
        id::Id,
    };
    let talker =
        Talker { session: session.clone(), user: Id::parse("u").unwrap(), talk: "t".into(), with_message_id: false };
    FloorClaim { talker, hold, idle, listeners: FloorListeners::Group(Id::parse("g").unwrap()) }
}
