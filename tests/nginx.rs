//! The shipped nginx config in front of two routers and one redis-server: mobiles connect
//! through nginx (ip_hash, WebSocket upgrade, the `device_id` header), and a dashboard on
//! the other router sees them come online, go silent, and go offline once. And `/metrics`
//! is refused at nginx, however it is spelled, while the API answers through it.

mod common;

use std::{path::PathBuf, process::Stdio};

use common::{Client, Engine, Setup, WAIT, assert_update, eventually, free_port, http, raw::try_handshake, token};
use presence_router::auth::Role;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

/// A real nginx running `nginx/presence-router.conf` with its upstream pointed at `routers`.
struct Nginx {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

impl Nginx {
    async fn start(routers: &[std::net::SocketAddr]) -> Nginx {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("presence-router-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx/presence-router.conf")).unwrap();
        let upstreams: String = routers.iter().map(|r| format!("    server {r};\n")).collect();
        let mut lines: Vec<String> = Vec::new();
        for line in shipped.lines() {
            if line.trim_start().starts_with("server 127.0.0.1:") {
                continue;
            }
            lines.push(line.replace("listen 80;", &format!("listen 127.0.0.1:{port};")));
            if line.trim() == "ip_hash;" {
                lines.push(upstreams.trim_end().to_string());
            }
        }
        std::fs::write(dir.join("presence-router.conf"), lines.join("\n")).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             include {d}/presence-router.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &dir.display().to_string(), "-c", &dir.join("nginx.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx is installed (make deps)");
        eventually(
            "nginx to listen",
            || async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() },
        )
        .await;
        Nginx { port, dir, _child: child }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn through_nginx_a_silent_mobile_goes_offline_once_on_the_other_router() {
    let setup = Setup::new(Engine::Redis).await;
    let routers = [setup.router(&["--presence-ttl", "1"]).await, setup.router(&["--presence-ttl", "1"]).await];
    let nginx = Nginx::start(&[routers[0].addr, routers[1].addr]).await;

    // ip_hash sends every loopback client to the same router; find out which.
    let (status, via_nginx) = http(nginx.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    let mut other = None;
    for router in &routers {
        let (_, health) = http(router.addr, "GET", "/healthz", &[], "").await;
        if health["router"] != via_nginx["router"] {
            other = Some(router);
        }
    }
    let other = other.expect("nginx picked one of the two routers");
    let (mut dashboard, _) = other.dashboard("dispatcher").await;

    let mut first = Client::connect(nginx.addr(), &token("crew-1", Role::Mobile), Some("radio-1")).await;
    let online = dashboard.next_update().await;
    assert_update(&online, "crew-1", "online");
    assert_eq!(online["deviceId"].as_str(), Some("radio-1"), "nginx passed the device_id header");
    first.sync("crew-1").await; // the upgraded connection carries frames both ways

    // crew-1 goes silent behind nginx: offline once, on the other router's dashboard.
    let offline = dashboard.next_update().await;
    assert_update(&offline, "crew-1", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"));
    let _marker = Client::connect(nginx.addr(), &token("marker", Role::Mobile), Some("m")).await;
    assert_update(&dashboard.next_update().await, "marker", "online");
    assert_eq!(first.close_code().await, Some(4000), "the router's close code crosses nginx");
}

/// `GET path` sent as is (no normalisation on the way), returning the status and body text.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.expect("response in time").unwrap();
    let status = response[9..12].parse().expect("status code");
    (status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

#[tokio::test]
async fn through_nginx_metrics_are_refused_however_spelled_and_the_api_answers() {
    let setup = Setup::new(Engine::Memory).await;
    let router = setup.router(&[]).await;
    let nginx = Nginx::start(&[router.addr]).await;

    // The router itself serves them (no --metrics-addr): the refusal is nginx's.
    let (status, direct) = raw_get(router.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(direct.contains("# TYPE presence_"), "{direct}");

    for path in ["/metrics", "/metrics?format=text", "//metrics", "/%6Detrics", "/api/../metrics", "/./metrics"] {
        let (status, body) = raw_get(nginx.addr(), path).await;
        assert_eq!(status, 403, "{path} through nginx: {body}");
        assert!(!body.contains("presence_"), "{path} through nginx: {body}");
    }
    // Near misses reach the router, which has no such route.
    for path in ["/metrics/", "/Metrics", "/metrics%2F", "/metrics;x"] {
        let (status, body) = raw_get(nginx.addr(), path).await;
        assert_eq!(status, 404, "{path} through nginx: {body}");
    }

    // The API still works through nginx.
    let auth = format!("Bearer {}", token("api", Role::Mobile));
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, body) =
        http(nginx.addr(), "POST", "/api/presence/status", &headers, r#"{"userIds": ["a", "b"]}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"].as_array().map(Vec::len), Some(2));
    let (status, _) = http(nginx.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
}

/// Behind the shipped config every client reaches the router from nginx's address; the
/// per-address budget must key on the client nginx names in `X-Forwarded-For`. Clients
/// connect to nginx from 127.0.0.2 and 127.0.0.3; nginx reaches the router from 127.0.0.1,
/// the one trusted proxy here.
#[tokio::test]
async fn through_nginx_the_connection_budget_is_each_clients_own() {
    let setup = Setup::new(Engine::Memory).await;
    let budget = ["--trusted-proxies", "127.0.0.1", "--address-connect-rate", "1", "--address-connect-burst", "3"];
    let router = setup.router(&budget).await;
    let nginx = Nginx::start(&[router.addr]).await;

    let looper = token("looper", Role::Mobile);
    let mut refusal = None;
    for _ in 0..200 {
        let answer = try_handshake([127, 0, 0, 2].into(), nginx.addr(), &looper, "").await;
        if answer.status != 101 {
            refusal = Some(answer);
            break;
        }
    }
    let refusal = refusal.expect("a client reconnecting in a loop through nginx is refused");
    assert_eq!((refusal.status, refusal.code().as_str()), (429, "address_rate_limited"), "{refusal:?}");
    assert!(refusal.header("retry-after").is_some(), "nginx passes Retry-After on: {refusal:?}");

    // Another client behind the same nginx connects and round-trips.
    let mut other = Client::connect_from([127, 0, 0, 3].into(), nginx.addr(), &token("other", Role::Mobile), "d").await;
    other.sync("other").await;
}
