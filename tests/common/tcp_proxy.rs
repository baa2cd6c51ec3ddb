//! A TCP proxy that can black-hole flows, as a NAT or load balancer that drops a flow's
//! state does: bytes stop moving in both directions, yet neither end is told (no FIN, no
//! RST), so each side's socket stays open and silent.
//!
//! Put it between a router and Redis (`--redis-port proxy.port`). A flow is black-holed
//! for good; a connection opened later goes through unless
//! [`TcpProxy::black_hole_new_subscriptions`] is on. Which flows: those that carried a
//! `SUBSCRIBE` or `PSUBSCRIBE` (a router's Pub/Sub connection), so the command connection
//! keeps working while the subscription goes quiet; or the others
//! ([`TcpProxy::black_hole_commands`]), so the subscription keeps working while commands
//! go unanswered. [`TcpProxy::refuse_new`] keeps new connections out altogether, as a
//! server that is not back yet.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinSet,
};

/// One proxied connection, as the switches see it.
#[derive(Default)]
struct Flow {
    /// The client sent SUBSCRIBE or PSUBSCRIBE on it.
    subscribed: AtomicBool,
    /// Nothing is forwarded any more, either way.
    dead: AtomicBool,
}

#[derive(Default)]
struct Switches {
    flows: Mutex<Vec<Arc<Flow>>>,
    /// Black-hole a flow as soon as it subscribes.
    cut_new_subscriptions: AtomicBool,
    /// Close new connections at once, as a server that is not back yet does.
    refuse_new: AtomicBool,
}

/// Listens on a free loopback port and forwards each connection to `127.0.0.1:upstream`.
/// Dropping it ends every flow.
pub struct TcpProxy {
    pub port: u16,
    switches: Arc<Switches>,
    _tasks: JoinSet<()>,
}

impl TcpProxy {
    /// A router whose Redis is reached through this proxy.
    pub async fn router(&self) -> super::Router {
        super::Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &self.port.to_string()]).await
    }

    pub async fn start(upstream: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let switches = Arc::new(Switches::default());
        let mut tasks = JoinSet::new();
        let accepting = switches.clone();
        tasks.spawn(async move {
            // Each flow's copiers end with the proxy: they live in this task's set.
            let mut flows = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if accepting.refuse_new.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let flow = Arc::new(Flow::default());
                accepting.flows.lock().unwrap().push(flow.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                flows.spawn(copy(client_read, server_write, flow.clone(), Some(accepting.clone())));
                flows.spawn(copy(server_read, client_write, flow, None));
            }
        });
        TcpProxy { port, switches, _tasks: tasks }
    }

    /// Black-holes every subscription flow open now; returns how many.
    pub fn black_hole_subscriptions(&self) -> usize {
        let flows = self.switches.flows.lock().unwrap();
        let mut cut = 0;
        for flow in flows.iter().filter(|f| f.subscribed.load(Ordering::SeqCst)) {
            cut += usize::from(!flow.dead.swap(true, Ordering::SeqCst));
        }
        cut
    }

    /// Black-holes every flow open now that is not a subscription (a router's command
    /// connection); returns how many. Connections opened later go through.
    pub fn black_hole_commands(&self) -> usize {
        let flows = self.switches.flows.lock().unwrap();
        let mut cut = 0;
        for flow in flows.iter().filter(|f| !f.subscribed.load(Ordering::SeqCst)) {
            cut += usize::from(!flow.dead.swap(true, Ordering::SeqCst));
        }
        cut
    }

    /// While on, a flow is black-holed the moment it subscribes (its SUBSCRIBE never
    /// reaches the server): resubscribing cannot get through until this is turned off.
    pub fn black_hole_new_subscriptions(&self, on: bool) {
        self.switches.cut_new_subscriptions.store(on, Ordering::SeqCst);
    }

    /// While on, new connections are closed as soon as they are accepted (flows open
    /// already are left alone): the client cannot reach the server until this is off.
    pub fn refuse_new(&self, on: bool) {
        self.switches.refuse_new.store(on, Ordering::SeqCst);
    }
}

/// Copies one direction of a flow until EOF, or forever once the flow is dead (reading and
/// dropping, never closing the other side). `watch` is set on the client-to-server
/// direction, which looks for subscriptions.
async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, flow: Arc<Flow>, watch: Option<Arc<Switches>>) {
    let mut buf = vec![0u8; 16 * 1024];
    // The end of the previous read, so a command split across reads is still recognised.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(switches) = &watch {
            tail.extend_from_slice(&buf[..n]);
            if contains_subscribe(&tail) {
                flow.subscribed.store(true, Ordering::SeqCst);
                if switches.cut_new_subscriptions.load(Ordering::SeqCst) {
                    flow.dead.store(true, Ordering::SeqCst);
                }
            }
            tail.drain(..tail.len().saturating_sub(32));
        }
        if flow.dead.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if flow.dead.load(Ordering::SeqCst) {
        // A black hole forwards no FIN either: keep the other side open and silent.
        std::future::pending::<()>().await;
    }
    let _ = to.shutdown().await;
}

/// True when the bytes hold a SUBSCRIBE or PSUBSCRIBE command name (in any case) as a RESP
/// bulk string: the word alone, not inside an argument such as a script's text.
fn contains_subscribe(bytes: &[u8]) -> bool {
    [&b"$9\r\nSUBSCRIBE\r\n"[..], b"$10\r\nPSUBSCRIBE\r\n"]
        .iter()
        .any(|name| bytes.windows(name.len()).any(|w| w.eq_ignore_ascii_case(name)))
}
