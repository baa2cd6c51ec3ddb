//! How the router reaches Redis, against the real binary and real redis-servers: a URL with
//! a password, an ACL user, a database number, TLS with a private CA; and the settings it
//! refuses (a URL and a host together, a password given twice) or ignores (variables set
//! to nothing).

mod common;

use std::path::{Path, PathBuf};

use common::{Client, RedisServer, Router, SECRET, eventually, tokens::refused_at_start};

/// A connection to `redis` as `url` names it (`redis://…` with its credentials and db).
async fn redis_as(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A mobile of `user` connected and registered: its session is in the store now.
async fn online(router: &Router, user: &str) -> Client {
    let mut mobile = router.mobile(user, "phone").await;
    mobile.sync(user).await;
    mobile
}

/// The router's keys in the database `conn` selected (SCAN: an ACL user may not run KEYS).
async fn router_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg("presence:*").query_async(conn).await.unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return keys;
        }
    }
}

/// `GET /readyz`'s engine.
async fn engine(router: &Router) -> String {
    let (status, body) = router.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    body["engine"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_url_with_a_password_reaches_a_redis_that_requires_one() {
    let redis = RedisServer::start_with(|_| vec!["--requirepass".into(), "s3cret pass".into()]).await;
    let url = format!("redis://:s3cret%20pass@127.0.0.1:{}/", redis.port);
    let router = Router::start(&["--redis-url", &url]).await;
    assert_eq!(engine(&router).await, "redis");
    let _mobile = online(&router, "alice").await;
    let mut conn = redis_as(&url).await;
    assert!(!router_keys(&mut conn).await.is_empty(), "the session is in Redis");

    // The password from its own variable, beside a URL without one.
    let url_alone = format!("redis://127.0.0.1:{}", redis.port);
    let router =
        Router::start_keyed(&["--jwt-secret", SECRET, "--redis-url", &url_alone], &[("REDIS_PASSWORD", "s3cret pass")])
            .await;
    let _mobile = online(&router, "bob").await;

    // A wrong password stops the start, naming where, never the password.
    let wrong = format!("redis://:nope@127.0.0.1:{}/", redis.port);
    let stderr = refused_at_start(&["--jwt-secret", SECRET, "--redis-url", &wrong], &[]).await;
    assert!(stderr.contains(&format!("connecting to Redis at 127.0.0.1:{}", redis.port)), "{stderr}");
    assert!(!stderr.contains("nope"), "{stderr}");
}

#[tokio::test]
async fn an_acl_user_logs_in_with_the_rights_the_router_needs() {
    let redis = RedisServer::start().await;
    let mut setup = redis.client().get_multiplexed_async_connection().await.unwrap();
    // Only the router's keys and channels, and no administrative commands.
    let channels = ["&presence:*"];
    for user in [
        &[&["router", "on", ">router-pass", "~presence:*"][..], &channels, &["+@all", "-@dangerous"]].concat()[..],
        &["admin", "on", ">admin-pass", "~*", "&*", "+@all"],
        // The default user can no longer do anything: only the ACL user can serve.
        &["default", "off"],
    ] {
        let _: () = redis::cmd("ACL").arg("SETUSER").arg(user).query_async(&mut setup).await.unwrap();
    }
    let mut admin = redis_as(&format!("redis://admin:admin-pass@127.0.0.1:{}/", redis.port)).await;

    let url = format!("redis://router:router-pass@127.0.0.1:{}/", redis.port);
    let router = Router::start(&["--redis-url", &url]).await;
    let _mobile = online(&router, "alice").await;
    let (_dashboard, snapshot) = router.dashboard("watcher").await;
    assert_eq!(snapshot[5]["users"][0]["userId"].as_str(), Some("alice"), "{snapshot}");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut admin).await.unwrap();
    // Commands and Pub/Sub.
    assert!(clients.lines().filter(|c| c.contains("user=router")).count() >= 2, "the router's connections: {clients}");
    assert!(!router_keys(&mut redis_as(&url).await).await.is_empty());

    // The same user through --redis-username and --redis-password beside --redis-host.
    let port = redis.port.to_string();
    let router = Router::start(&[
        "--redis-host",
        "127.0.0.1",
        "--redis-port",
        &port,
        "--redis-username",
        "router",
        "--redis-password",
        "router-pass",
    ])
    .await;
    let _mobile = online(&router, "bob").await;
}

/// On a Redis Cluster, an ACL user with the router's keys and channels and no
/// administrative command, set on every node, serves too (the client reads the topology
/// with `CLUSTER SLOTS`, which `-@dangerous` leaves).
#[tokio::test]
async fn an_acl_user_serves_on_a_redis_cluster() {
    let cluster = common::cluster::RedisCluster::start().await;
    for node in cluster.nodes() {
        let mut conn = redis_as(&format!("redis://{node}/")).await;
        let user = ["router", "on", ">router-pass", "~presence:*", "&presence:*", "+@all", "-@dangerous"];
        let _: () = redis::cmd("ACL").arg("SETUSER").arg(&user).query_async(&mut conn).await.unwrap();
    }
    let router = Router::start(&[
        "--redis-cluster-nodes",
        &cluster.seeds(),
        "--redis-username",
        "router",
        "--redis-password",
        "router-pass",
    ])
    .await;
    let _mobile = online(&router, "alice").await;
    let (_dashboard, snapshot) = router.dashboard("watcher").await;
    assert_eq!(snapshot[5]["users"][0]["userId"].as_str(), Some("alice"), "{snapshot}");
    assert_eq!(engine(&router).await, "redis-cluster");
}

#[tokio::test]
async fn the_database_number_is_where_the_keys_go() {
    let redis = RedisServer::start().await;
    let base = format!("redis://127.0.0.1:{}", redis.port);
    let router = Router::start(&["--redis-url", &format!("{base}/3")]).await;
    let _mobile = online(&router, "alice").await;
    assert!(!router_keys(&mut redis_as(&format!("{base}/3")).await).await.is_empty(), "keys in db 3");
    assert!(router_keys(&mut redis_as(&format!("{base}/0")).await).await.is_empty(), "none in db 0");

    let port = redis.port.to_string();
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port, "--redis-db", "5"]).await;
    let _mobile = online(&router, "bob").await;
    let mut db5 = redis_as(&format!("{base}/5")).await;
    let keys = router_keys(&mut db5).await;
    assert!(keys.iter().any(|k| k.contains("bob")), "{keys:?}");
    assert!(router_keys(&mut redis_as(&format!("{base}/0")).await).await.is_empty(), "still none in db 0");
}

#[tokio::test]
async fn variables_set_to_nothing_are_unset() {
    // What a compose file's `REDIS_HOST=` or a template with blanks produces: on main, an
    // empty host or password stopped the start.
    let blanks = [
        ("REDIS_HOST", ""),
        ("REDIS_PASSWORD", ""),
        ("REDIS_USERNAME", " "),
        ("REDIS_URL", ""),
        ("REDIS_CA_CERT", ""),
        ("REDIS_PORT", ""),
        ("METRICS_ADDR", ""),
        ("JWT_AUDIENCE", ""),
        ("JWT_ISSUER", ""),
        ("JWT_PUBLIC_KEY", ""),
        ("MAX_TOKEN_LIFETIME", ""),
        ("MAX_HANDSHAKES", ""),
        ("TCP_SEND_BUFFER", ""),
        ("PRESENCE_ENABLED", ""),
    ];
    let router = Router::start_keyed(&["--jwt-secret", SECRET], &blanks).await;
    assert_eq!(engine(&router).await, "memory", "no Redis named: the embedded engine");
    let _mobile = online(&router, "alice").await;
    assert_eq!(router.user("alice").await["status"].as_str(), Some("online"), "presence on by default");

    // Blanks beside a URL do not conflict with it.
    let redis = RedisServer::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let router = Router::start_keyed(&["--jwt-secret", SECRET], &[&blanks[..2], &[("REDIS_URL", &url)]].concat()).await;
    assert_eq!(engine(&router).await, "redis");

    // An empty secret is still refused as such, never taken for "no secret".
    let stderr = refused_at_start(&[], &[("JWT_SECRET", "")]).await;
    assert!(stderr.contains("the JWT secret is empty"), "{stderr}");
}

#[tokio::test]
async fn a_url_with_a_host_or_a_second_password_is_refused_at_start() {
    let url = "redis://127.0.0.1:6379";
    let conflicts = [
        (vec!["--redis-url", url, "--redis-host", "127.0.0.1"], vec![]),
        (vec![], vec![("REDIS_URL", url), ("REDIS_HOST", "127.0.0.1")]),
        (vec!["--redis-url", url], vec![("REDIS_PORT", "6380")]),
        (vec!["--redis-url", url, "--redis-db", "3"], vec![]),
    ];
    for (args, env) in conflicts {
        let stderr = refused_at_start(&[&["--jwt-secret", SECRET][..], &args].concat(), &env).await;
        assert!(stderr.contains("'--redis-url <REDIS_URL>' cannot be used with"), "{args:?} {env:?}: {stderr}");
    }
    let twice = ["--jwt-secret", SECRET, "--redis-url", "redis://:a@127.0.0.1:6379", "--redis-password", "b"];
    let stderr = refused_at_start(&twice, &[]).await;
    assert!(stderr.contains("the Redis password is given twice"), "{stderr}");
    assert!(!stderr.contains(":a@"), "the URL is not echoed: {stderr}");

    let stderr = refused_at_start(&["--jwt-secret", SECRET, "--redis-url", "http://:pw@127.0.0.1"], &[]).await;
    assert!(stderr.contains("--redis-url (REDIS_URL) is not a Redis URL"), "{stderr}");
    assert!(!stderr.contains(":pw@"), "{stderr}");

    let ca = ["--jwt-secret", SECRET, "--redis-url", "redis://127.0.0.1:6379", "--redis-ca-cert", "/etc/hosts"];
    let stderr = refused_at_start(&ca, &[]).await;
    assert!(stderr.contains("--redis-ca-cert is for a TLS connection"), "{stderr}");
}

/// A private CA and a server certificate it signed for `localhost` and 127.0.0.1, made by
/// openssl in `dir`: (CA certificate, server certificate, server key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA"]]
            .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[tokio::test]
async fn rediss_with_a_private_ca_is_verified_and_serves() {
    let dir = std::env::temp_dir().join(format!("opsconfig-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let (cert, key) = (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned());
    // TLS only: the plain port is off.
    let redis = RedisServer::start_with(|port| {
        ["--port", "0", "--tls-port", &port.to_string(), "--tls-cert-file", &cert, "--tls-key-file", &key]
            .into_iter()
            .chain(["--tls-auth-clients", "no"])
            .map(String::from)
            .collect()
    })
    .await;
    let url = format!("rediss://localhost:{}/", redis.port);
    let ca = ca.to_str().unwrap();
    let router = Router::start(&["--redis-url", &url, "--redis-ca-cert", ca]).await;
    assert_eq!(engine(&router).await, "redis");
    let _mobile = online(&router, "alice").await;
    let (_dashboard, snapshot) = router.dashboard("watcher").await;
    assert_eq!(snapshot[5]["users"][0]["userId"].as_str(), Some("alice"), "through TLS: {snapshot}");
    let router2 = Router::start(&["--redis-url", &url, "--redis-ca-cert", ca]).await;
    eventually("the other router sees alice", || async { router2.user("alice").await["status"] == "online" }).await;

    // Without the CA the server's certificate is not trusted: the start fails, naming where.
    let stderr = refused_at_start(&["--jwt-secret", SECRET, "--redis-url", &url], &[]).await;
    assert!(stderr.contains(&format!("connecting to Redis at localhost:{}", redis.port)), "{stderr}");
    // A CA file that is not there is named.
    let stderr =
        refused_at_start(&["--jwt-secret", SECRET, "--redis-url", &url, "--redis-ca-cert", "/nonexistent/ca.pem"], &[])
            .await;
    assert!(stderr.contains("reading --redis-ca-cert /nonexistent/ca.pem"), "{stderr}");
    // So is one that holds no certificate (here, the server's key).
    let stderr = refused_at_start(&["--jwt-secret", SECRET, "--redis-url", &url, "--redis-ca-cert", &key], &[]).await;
    assert!(stderr.contains(&format!("--redis-ca-cert {key}: no PEM certificate")), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
