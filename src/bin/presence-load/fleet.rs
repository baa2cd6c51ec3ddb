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

/// The group only user `u{i}` is in, for [`connect_grouped`].
pub fn own_group(user: &str) -> String {
    format!("g-{user}")
}

/// Connects users `range` (ids `u{i}`) with `concurrency` handshakes in flight; each
/// heartbeats once, so the router has registered every session when this returns.
pub async fn connect(
    credentials: &Credentials,
    router: SocketAddr,
    range: Range<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<Mobile>> {
    connect_with(credentials, router, range, concurrency, false).await
}

/// As [`connect`], each token naming one group of the user's own ([`own_group`]).
pub async fn connect_grouped(
    credentials: &Credentials,
    router: SocketAddr,
    range: Range<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<Mobile>> {
    connect_with(credentials, router, range, concurrency, true).await
}

async fn connect_with(
    credentials: &Credentials,
    router: SocketAddr,
    range: Range<usize>,
    concurrency: usize,
    grouped: bool,
) -> anyhow::Result<Vec<Mobile>> {
    stream::iter(range)
        .map(|i| async move {
            let user = user(i);
            let group = own_group(&user);
            let groups: &[&str] = &[&group];
            let groups = grouped.then_some(groups);
            let mut ws = credentials.connect_in(router, i, &user, Role::Mobile, groups).await?;
            heartbeat(&mut ws, &user).await?;
            Ok::<_, anyhow::Error>(Mobile { user, ws, acked: Instant::now() })
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}
