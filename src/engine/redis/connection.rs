//! The command connection: to one Redis, the `redis` crate's [`ConnectionManager`]; to a
//! Redis Cluster, its [`ClusterConnection`], which routes each call to its slot's master,
//! follows MOVED replies and reconnects on its own. Either way, plus one replay of a call
//! whose connection dropped, and a replacement of a connection that went silent (see
//! [`Shared::replace_if_silent`]).
//!
//! Connections get cut while Redis itself is fine: a proxy's idle timeout, `CLIENT KILL`,
//! a failover. The manager learns of it only from the next call, which fails with the
//! dropped connection while the manager reconnects in the background; without a replay,
//! that call's caller would take a healthy Redis for an outage (an ERROR to a client, a
//! degraded router, a resync for every dashboard). So a call that fails because its
//! connection dropped ([`RedisError::is_connection_dropped`]) is sent once more, on the new
//! connection. Nothing else is replayed: a timeout means Redis is slow or hung, and a
//! refused connection means it is down; replaying would only double the wait.
//!
//! A replayed call may have run already, its reply lost with the connection (only a call
//! cut between Redis running it and its reply going out). That is safe for every call the
//! engine makes: each script, run twice with the same arguments, finds the state the first
//! run left and decides no second transition (a renewed lease stays renewed, an ended
//! session stays ended, a held floor is granted to its holder again;
//! `tests/redis_connections.rs` replays each). A transition the lost reply carried is
//! never published: routers notice the gap in the sequence and resync. A presence update
//! published twice is dropped by receivers as not newer than the one they applied; a
//! relayed frame published twice arrives twice, where without the replay every first frame
//! after an idle cut would be lost.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use redis::{
    Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::time::Instant;

use crate::metrics;

/// Least time between two attempts to replace a connection whose calls time out.
const REPLACE_EVERY: Duration = Duration::from_secs(1);
/// How long a replacement may take to connect and answer its PING.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(2);

/// A cheap handle; clones share one multiplexed connection (one per node of a cluster).
#[derive(Clone)]
pub struct Connection(Arc<Shared>);

/// The connection in use, of either kind.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How to open another connection like the one in use.
enum Opener {
    Single(Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
}

struct Shared {
    current: RwLock<Link>,
    opener: Opener,
    /// When a replacement was last tried; `None` before the first.
    last_replacement: Mutex<Option<Instant>>,
}

impl Opener {
    async fn open(&self) -> RedisResult<Link> {
        Ok(match self {
            Opener::Single(client, config) => {
                Link::Single(client.get_connection_manager_with_config(config.clone()).await?)
            }
            Opener::Cluster(client) => Link::Cluster(client.get_async_connection().await?),
        })
    }
}

impl Connection {
    /// Connects to one Redis now: fails if it cannot be reached.
    pub async fn open(client: Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        Connection::start(Opener::Single(client, config)).await
    }

    /// Connects to a Redis Cluster now: fails if none of its nodes can be reached.
    pub async fn cluster(client: ClusterClient) -> RedisResult<Self> {
        Connection::start(Opener::Cluster(client)).await
    }

    async fn start(opener: Opener) -> RedisResult<Self> {
        let current = RwLock::new(opener.open().await?);
        Ok(Connection(Arc::new(Shared { current, opener, last_replacement: Mutex::new(None) })))
    }
}

impl Shared {
    fn link(&self) -> Link {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A call timed out. The connection in use reconnects only when it reports an error,
    /// and a black-holed one (a NAT or proxy dropped the flow: no FIN, no RST) reports
    /// none until the kernel gives up on it, many minutes later; nor does a cluster
    /// connection learn of a failover from a master that hangs (it answers nothing, not
    /// even the MOVED that would send the call to its promoted replica). Every call
    /// meanwhile times out although Redis answers new connections. So a timeout triggers a
    /// replacement in the background, at most one per [`REPLACE_EVERY`]: a fresh
    /// connection (on a cluster, with the topology read anew) that answers a PING (on a
    /// cluster, every master's) within the timeout takes the old one's place. A hung
    /// Redis, or a hung master not yet replaced, answers no PING, and the old connection
    /// stays.
    fn replace_if_silent(self: &Arc<Self>, error: &RedisError) {
        if !error.is_timeout() {
            return;
        }
        {
            let mut last = self.last_replacement.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < REPLACE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let fresh = async {
                let mut fresh = shared.opener.open().await?;
                redis::cmd("PING").query_async::<()>(&mut fresh).await?;
                Ok::<_, RedisError>(fresh)
            };
            let Ok(Ok(fresh)) = tokio::time::timeout(REPLACE_TIMEOUT, fresh).await else { return };
            *shared.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            ::metrics::counter!(metrics::REDIS_RECONNECTS).increment(1);
            tracing::warn!("a Redis connection stopped answering while Redis answers a new one; replaced it");
        });
    }
}

/// True, and counted, when `error` says the call's connection dropped under it: the
/// connection is reconnecting, and the call is worth sending once more.
fn replay(error: &RedisError) -> bool {
    let dropped = error.is_connection_dropped() && !error.is_connection_refusal();
    if dropped {
        ::metrics::counter!(metrics::REDIS_RETRIES).increment(1);
        tracing::debug!(%error, "a Redis connection dropped under a call; sending it again");
    }
    dropped
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut link = self.0.link();
            let result = match link.req_packed_command(cmd).await {
                Err(e) if replay(&e) => link.req_packed_command(cmd).await,
                done => done,
            };
            if let Err(e) = &result {
                self.0.replace_if_silent(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut link = self.0.link();
            let result = match link.req_packed_commands(pipeline, offset, count).await {
                Err(e) if replay(&e) => link.req_packed_commands(pipeline, offset, count).await,
                done => done,
            };
            if let Err(e) = &result {
                self.0.replace_if_silent(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.link().get_db()
    }
}
