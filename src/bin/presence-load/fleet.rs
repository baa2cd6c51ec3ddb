//! Many mobile connections at once.

use std::{net::SocketAddr, ops::Range};

use futures_util::{StreamExt, TryStreamExt, stream};
use presence_router::auth::Role;
use tokio::time::Instant;

use crate::net::{Credentials, Ws, heartbeat};

/// A connected mobile whose first heartbeat was acknowledged at `acked`.
pub struct Mobile {
    pub user: String,
    pub ws: Ws,
    pub acked: Instant,
}

pub fn user(i: usize) -> String {
    format!("u{i}")
}

/// Connects users `range` (ids `u{i}`) with `concurrency` handshakes in flight; each
/// heartbeats once, so the router has registered every session when this returns.
pub async fn connect(
    credentials: &Credentials,
    router: SocketAddr,
    range: Range<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<Mobile>> {
    stream::iter(range)
        .map(|i| async move {
            let user = user(i);
            let mut ws = credentials.connect(router, i, &user, Role::Mobile).await?;
            heartbeat(&mut ws, &user).await?;
            Ok::<_, anyhow::Error>(Mobile { user, ws, acked: Instant::now() })
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}
