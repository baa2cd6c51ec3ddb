//! The command connection: the `redis` crate's [`ConnectionManager`], plus one replay of a
//! call whose connection dropped.
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

use redis::{
    Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};

use crate::metrics;

/// A cheap handle; clones share one multiplexed connection.
#[derive(Clone)]
pub struct Connection(ConnectionManager);

impl Connection {
    /// Connects now: fails if Redis cannot be reached.
    pub async fn open(client: Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        Ok(Connection(client.get_connection_manager_with_config(config).await?))
    }
}

/// True, and counted, when `error` says the call's connection dropped under it: the
/// manager is reconnecting, and the call is worth sending once more.
fn replay(error: &RedisError) -> bool {
    let dropped = error.is_connection_dropped() && !error.is_connection_refusal();
    if dropped {
        ::metrics::counter!(metrics::REDIS_RETRIES).increment(1);
        tracing::debug!(%error, "a Redis connection dropped under a call; sending it again");
    }
    dropped
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.0.send_packed_command(cmd).await {
                Err(e) if replay(&e) => self.0.send_packed_command(cmd).await,
                done => done,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.0.send_packed_commands(pipeline, offset, count).await {
                Err(e) if replay(&e) => self.0.send_packed_commands(pipeline, offset, count).await,
                done => done,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}
