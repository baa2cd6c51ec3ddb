//! The Redis engine: presence shared by every router through one Redis, or through a
//! Redis Cluster.
//!
//! All multi-key changes run as Lua scripts (`lua/`), atomic and on Redis' own clock, each
//! within one shard of the keyspace ([`keys`]): one shard on a single Redis, a fixed number
//! of hash-tagged shards on a cluster. A live session's heartbeat is the exception: it
//! only moves its lease deadline, one command ([`renewals`]). Transitions travel on
//! Pub/Sub ([`broker`] publishes; [`subscriber`] on one Redis, [`sharded`] on a cluster,
//! receive and notice a subscription that went quiet), and so do relayed frames, a group's
//! on its own channel that only the routers serving the group subscribe to ([`groups`]).
//! Every call goes over one [`Connection`], which sends a call again when its connection
//! dropped under it. Offline detection does not depend on keyspace events (Redis sends
//! them late, or never to a subscriber that was away): every router sweeps each shard's
//! `leases` index every 250 ms, and the atomic sweep script hands each offline to exactly
//! one of them.

mod broker;
mod connection;
mod errors;
mod floor_leases;
mod gaps;
mod groups;
mod inbox;
mod keys;
mod log;
mod renewals;
mod sharded;
mod signals;
mod subscriber;
mod vouching;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::{
    AsyncCommands, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Script, ScriptInvocation,
    TlsCertificates,
    aio::{AsyncPushSender, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
};
use tokio::time::Instant;

pub use broker::RedisBroker;
pub use connection::Connection;
use errors::classify;
pub use keys::Keyspace;
pub use outbox::{RedisOutbox, WEBHOOK_GROUP};

use super::{Connected, EngineError, Lifetimes, PresenceStore, StatusSet, log::Changes};
use crate::{
    id::Id,
    metrics,
    position::Position,
    presence::{
        Activity, ActivityChange, Cause, Choice, Groups, Mode, PresenceUpdate, Session, SessionId, Snapshot, Status,
        UserPresence,
    },
    scope::Scope,
};

/// Users claimed per sweep script call, so one call never blocks Redis for long.
const SWEEP_BATCH: usize = 1000;
/// How long one Redis call may take before it fails and the router turns degraded: well
/// above Redis' normal latency (sub-millisecond; tens of ms under load), and short enough
/// that a hung Redis is noticed within a second with the probe's interval.
const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// Users read per pipeline when building a snapshot.
const SNAPSHOT_BATCH: usize = 1000;
/// How long heartbeats are gathered into one renewal batch unless configured otherwise
/// (see [`RedisConfig::renewal_window`]).
pub const DEFAULT_RENEWAL_WINDOW: Duration = Duration::from_millis(1000);
/// How often a cluster call is sent again after a MOVED, a refused or a dropped connection
/// (a failover under way): each try is bounded by [`STORE_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 2;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/prelude.lua"), include_str!(concat!("lua/", $file))))
    };
}

// After `script!`, which it uses.
mod outbox;

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Address (plain TCP, or TLS for `rediss://`), ACL user, password and database number.
    /// Its `Debug` hides the password. For a cluster, its first seed node.
    pub server: ConnectionInfo,
    /// A Redis Cluster instead of one server: its seed nodes and how many shards the
    /// keyspace is split into.
    pub cluster: Option<ClusterNodes>,
    /// PEM certificates that a TLS server's certificate must chain to, instead of the
    /// system's roots (a private CA, or a self-signed server certificate).
    pub root_cert: Option<Vec<u8>>,
    /// Prefix of every key and channel (`presence:` by default).
    pub prefix: String,
    /// How long the router gathers heartbeats into one renewal batch at most (see
    /// [`PresenceStore::renewal_window`]; less once 128 are waiting, and never more than
    /// a twentieth of the TTL). A lease runs from its heartbeat's arrival, so this moves
    /// no offline time and no last seen; it delays only the online transition of a
    /// session whose lease had lapsed, and a disconnect never waits for it.
    pub renewal_window: Duration,
}

/// The nodes a Redis Cluster engine starts from, and its sharding.
#[derive(Debug, Clone)]
pub struct ClusterNodes {
    /// Nodes to learn the cluster's topology from (any of its nodes; the rest are found).
    /// Each carries the same login and TLS settings.
    pub seeds: Vec<ConnectionInfo>,
    /// How many shards the keyspace is split into: every router of a deployment must use
    /// the same number (see [`Keyspace`]).
    pub shards: usize,
}

/// Shards of a Redis Cluster keyspace unless configured otherwise: enough to spread over
/// up to 16 masters.
pub const DEFAULT_CLUSTER_SHARDS: usize = 16;

impl RedisConfig {
    /// Plain TCP to `host:port`, no login, database 0, the default prefix.
    pub fn tcp(host: &str, port: u16) -> RedisConfig {
        let server = ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .expect("a TCP address is always a valid connection");
        RedisConfig {
            server,
            cluster: None,
            root_cert: None,
            prefix: "presence:".into(),
            renewal_window: DEFAULT_RENEWAL_WINDOW,
        }
    }

    /// A Redis Cluster reached through plain TCP at `seeds` (`(host, port)` each), no login,
    /// [`DEFAULT_CLUSTER_SHARDS`] shards, the default prefix.
    pub fn cluster(seeds: &[(&str, u16)]) -> RedisConfig {
        let seeds: Vec<ConnectionInfo> = seeds
            .iter()
            .map(|(host, port)| {
                ConnectionAddr::Tcp(host.to_string(), *port)
                    .into_connection_info()
                    .expect("a TCP address is always a valid connection")
            })
            .collect();
        RedisConfig {
            server: seeds[0].clone(),
            cluster: Some(ClusterNodes { seeds, shards: DEFAULT_CLUSTER_SHARDS }),
            root_cert: None,
            prefix: "presence:".into(),
            renewal_window: DEFAULT_RENEWAL_WINDOW,
        }
    }

    /// Where the keys and channels are: one shard on one Redis, hash-tagged shards on a
    /// cluster.
    pub fn keyspace(&self) -> Keyspace {
        match &self.cluster {
            None => Keyspace::single(&self.prefix),
            Some(cluster) => Keyspace::sharded(&self.prefix, cluster.shards),
        }
    }

    /// A client of the cluster, if this is one.
    pub fn cluster_client(&self) -> redis::RedisResult<Option<ClusterClient>> {
        self.cluster_builder().map(ClusterClientBuilder::build).transpose()
    }

    /// A client of the cluster, if this is one, whose connections hand what they are sent
    /// unasked (Pub/Sub messages) to `push`; it speaks RESP3, which that needs.
    fn cluster_push_client(&self, push: impl AsyncPushSender) -> redis::RedisResult<Option<ClusterClient>> {
        self.cluster_builder()
            .map(|builder| builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push).build())
            .transpose()
    }

    /// Every cluster connection logs in, speaks TLS and times out the same way.
    fn cluster_builder(&self) -> Option<ClusterClientBuilder> {
        let cluster = self.cluster.as_ref()?;
        let mut builder = ClusterClientBuilder::new(cluster.seeds.clone())
            .connection_timeout(STORE_TIMEOUT)
            .response_timeout(STORE_TIMEOUT)
            .retries(CLUSTER_RETRIES);
        if let Some(root) = &self.root_cert {
            builder = builder.certs(TlsCertificates { client_tls: None, root_cert: Some(root.clone()) });
        }
        Some(builder)
    }

    /// `host:port` (a cluster's nodes, comma-separated), for messages: never the
    /// credentials.
    pub fn address(&self) -> String {
        match &self.cluster {
            None => self.server.addr().to_string(),
            Some(cluster) => cluster.seeds.iter().map(|seed| seed.addr().to_string()).collect::<Vec<_>>().join(","),
        }
    }

    /// A client for every connection the engine opens (commands and Pub/Sub alike), so each
    /// logs in, selects the database and speaks TLS the same way; reconnects too.
    pub fn client(&self) -> redis::RedisResult<Client> {
        match &self.root_cert {
            None => Client::open(self.server.clone()),
            Some(root) => Client::build_with_tls(
                self.server.clone(),
                TlsCertificates { client_tls: None, root_cert: Some(root.clone()) },
            ),
        }
    }
}

pub struct RedisPresence {
    conn: Connection,
    keys: Keyspace,
    lifetimes: Lifetimes,
    lease: Script,
    disconnect: Script,
    linger: Script,
    sweep: Script,
    status: Script,
    activity: Script,
    lookup: Script,
    log: log::LogReader,
    head: Script,
    signals: signals::SignalScripts,
    renewals: renewals::Renewals,
    /// Set once the real deadlines were written at shutdown (see `linger`).
    released: tokio::sync::OnceCell<()>,
    renewal_window: Duration,
}

/// Refuses a node of a Redis Cluster given as one Redis: it would answer MOVED to every
/// call for a key of another node's slots, and the router would stay degraded. (A Redis
/// that forbids `INFO` is taken for what it was given as.)
async fn refuse_a_cluster_node(conn: &mut Connection) -> anyhow::Result<()> {
    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("cluster").query_async(conn).await;
    anyhow::ensure!(
        !info.is_ok_and(|info| info.contains("cluster_enabled:1")),
        "this Redis is a node of a Redis Cluster: name the cluster's nodes with --redis-cluster-nodes instead"
    );
    Ok(())
}

/// Makes sure every router of the deployment splits the cluster's keyspace alike: the
/// first to start records its number of shards in `{prefix}shards`, and a router started
/// with another number is refused, naming it. Routers that disagreed would each find a
/// user's keys in a different shard: two records of one user, each with half its
/// sessions.
async fn agree_on_shards(conn: &mut Connection, config: &RedisConfig) -> anyhow::Result<()> {
    let Some(cluster) = &config.cluster else { return Ok(()) };
    let key = format!("{}shards", config.prefix);
    let (recorded,): (usize,) =
        redis::pipe().cmd("SET").arg(&key).arg(cluster.shards).arg("NX").ignore().get(&key).query_async(conn).await?;
    anyhow::ensure!(
        recorded == cluster.shards,
        "this deployment's keyspace on the Redis Cluster has {recorded} shards (`{key}`, set by the first router \
         started): start every router with --redis-cluster-shards {recorded}; to change the number, stop every \
         router and delete the keys under --redis-prefix first"
    );
    Ok(())
}

/// Redis' clock in Unix ms: the one clock the scripts use.
async fn now_ms(conn: &mut Connection) -> Result<u64, EngineError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.map_err(classify)?;
    Ok(secs * 1000 + micros / 1000)
}

impl RedisPresence {
    /// Connects, failing fast if Redis cannot be reached now. `router`: the id of the
    /// router this store serves, under which it holds a lease of its own and so writes its
    /// sessions' deadlines only every few heartbeats (see `vouching.rs`); `None` for a
    /// store that serves no sessions of its own, or for writing every deadline as it is.
    pub async fn connect(config: &RedisConfig, lifetimes: Lifetimes, router: Option<&str>) -> anyhow::Result<Self> {
        let conn = match config.cluster_client()? {
            // The cluster connection reconnects, follows MOVED and failovers itself.
            Some(cluster) => {
                let mut conn = Connection::cluster(cluster).await?;
                agree_on_shards(&mut conn, config).await?;
                conn
            }
            None => {
                // Calls fail within STORE_TIMEOUT while Redis is down or hung, instead of
                // hanging API requests and renewals; the manager reconnects in the
                // background, and a call whose connection dropped is sent again on the new
                // one (see [`Connection`]).
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(STORE_TIMEOUT))
                    .set_response_timeout(Some(STORE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let mut conn = Connection::open(config.client()?, manager_config).await?;
                refuse_a_cluster_node(&mut conn).await?;
                conn
            }
        };
        let keys = config.keyspace();
        let renewals = renewals::Renewals::start(renewals::Batcher::new(
            conn.clone(),
            script!("renew.lua"),
            keys.clone(),
            lifetimes,
            router,
        ));
        let log = log::LogReader::new(script!("log.lua"), script!("went_back.lua"), keys.clone(), lifetimes);
        Ok(RedisPresence {
            conn,
            keys,
            lifetimes,
            lease: script!("lease.lua"),
            disconnect: script!("disconnect.lua"),
            linger: script!("linger.lua"),
            sweep: script!("sweep.lua"),
            status: script!("status.lua"),
            activity: script!("activity.lua"),
            lookup: script!("lookup.lua"),
            log,
            head: script!("head.lua"),
            signals: signals::SignalScripts::default(),
            renewals,
            released: tokio::sync::OnceCell::new(),
            renewal_window: config.renewal_window,
        })
    }

    /// The command connection, shared with the broker's publishes and the subscriber's
    /// reads of the transition sequence.
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    /// The keys and channels this engine uses.
    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    /// A call of a script on `shard` with what every script starts with: the shard's
    /// sequence key, and the last-seen retention in ms.
    fn call<'a>(&'a self, script: &'a Script, shard: usize) -> ScriptInvocation<'a> {
        start_call(script, &self.keys, shard, &self.lifetimes)
    }

    /// A call of one of the session scripts: the common arguments, then user and session.
    fn on_session<'a>(&'a self, script: &'a Script, session: &Session) -> ScriptInvocation<'a> {
        let mut call = self.call(script, self.keys.shard_of(session.user.as_str()));
        call.arg(session.user.as_str()).arg(session.id.as_str());
        call
    }

    /// `lease.lua`: registers `session` anew, replacing the live session of its device
    /// when `replace` (see [`PresenceStore::connect`]).
    async fn lease(&self, session: &Session, replace: bool) -> Result<Connected, EngineError> {
        let mut call = self.call(&self.lease, self.keys.shard_of(session.user.as_str()));
        call.arg(if replace { "1" } else { "0" });
        session_args(&mut call, session);
        let (row, replaced): (Option<Row>, Option<String>) =
            call.invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        Ok(Connected { update: row.map(parse_row).transpose()?, replaced: replaced.map(SessionId::from) })
    }

    fn meta_key(&self, user: &Id) -> String {
        self.keys.key(self.keys.shard_of(user.as_str()), &format!("meta:{user}"))
    }

    /// `sweep.lua` on one shard, a batch at a time until it finds no more due.
    async fn sweep_shard(&self, shard: usize) -> Result<Vec<PresenceUpdate>, EngineError> {
        let mut updates = Vec::new();
        loop {
            let (due, rows, failures): (usize, Vec<Row>, Vec<String>) = self
                .call(&self.sweep, shard)
                .arg(SWEEP_BATCH)
                .arg(self.lifetimes.away_after.as_millis() as u64)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(classify)?;
            for row in rows {
                updates.push(parse_row(row)?);
            }
            // Users whose keys the scripts cannot read: each fails alone, once (its lapsed
            // leases left the queue), and the sweep goes on for the others.
            for failure in failures {
                ::metrics::counter!(metrics::ENGINE_ERRORS, "op" => "expire", "kind" => "protocol").increment(1);
                tracing::error!(
                    failure,
                    "a user's keys in Redis are not as the scripts keep them; its lease was ended"
                );
            }
            if due < SWEEP_BATCH {
                return Ok(updates);
            }
        }
    }

    /// The users shown online in one shard: those with a lease, read a batch at a time.
    async fn online_in(&self, shard: usize) -> Result<Vec<UserPresence>, EngineError> {
        let leases: Vec<String> =
            self.conn.clone().zrange(self.keys.key(shard, "leases"), 0, -1).await.map_err(classify)?;
        let mut ids: Vec<Id> = leases.iter().filter_map(|lease| Id::parse(lease.split_once('\n')?.0).ok()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut users = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SNAPSHOT_BATCH) {
            let chunk: Vec<&Id> = chunk.iter().collect();
            let read = self.lookup_in(shard, &chunk, &Scope::everyone()).await?;
            users.extend(read.into_iter().filter(|u| u.status.is_online()));
        }
        Ok(users)
    }

    /// `lookup.lua` for users of one shard.
    async fn lookup_in(&self, shard: usize, users: &[&Id], scope: &Scope) -> Result<Vec<UserPresence>, EngineError> {
        let mut call = self.call(&self.lookup, shard);
        call.arg(scope.user().map_or("", Id::as_str));
        match scope.allowed() {
            None => call.arg(-1),
            Some(groups) => call.arg(groups.len()).arg(groups.iter().map(Id::as_str).collect::<Vec<_>>()),
        };
        call.arg(users.iter().map(|user| user.as_str()).collect::<Vec<_>>());
        let rows: Vec<Option<MetaRow>> = call.invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        if rows.len() != users.len() {
            return Err(EngineError::Protocol(format!(
                "the lookup script answered {} rows for {} users",
                rows.len(),
                users.len()
            )));
        }
        Ok(users
            .iter()
            .zip(rows)
            .map(|(&user, row)| {
                row.map_or_else(|| UserPresence::unknown(user.clone()), |row| scope.redact(presence_of(user, row)))
            })
            .collect())
    }
}

/// A user's presence from its meta fields ([`MetaRow`]).
fn presence_of(
    user: &Id,
    (status, last_seen, device_id, version, groups, text, last_activity, activity): MetaRow,
) -> UserPresence {
    shown(UserPresence {
        user_id: user.clone(),
        status: status.as_deref().and_then(Status::parse).unwrap_or(Status::Offline),
        last_seen,
        device_id: device_id.map(Arc::from),
        version: version.unwrap_or(0),
        groups: split_groups(groups.as_deref()),
        status_text: text.map(Arc::from),
        last_activity,
        activity: activity.as_deref().and_then(Activity::decode),
    })
}

/// `HMGET presence:meta:{id} status lastSeen deviceId version groups text lastActivity
/// activity`.
type MetaRow = (
    Option<String>,
    Option<u64>,
    Option<String>,
    Option<u64>,
    Option<String>,
    Option<String>,
    Option<u64>,
    Option<String>,
);

/// Hides what only a shown user reveals: its status text and last activity.
fn shown(mut presence: UserPresence) -> UserPresence {
    if !presence.status.is_online() {
        presence.status_text = None;
        presence.last_activity = None;
        presence.activity = None;
    }
    presence
}

/// A call of `script` on `shard`: KEYS[1] is the shard's sequence key, which routes the
/// call to the shard's slot on Redis Cluster and tells the script every other key (see
/// `lua/prelude.lua`); ARGV[1] is the last-seen retention and ARGV[2] the lease, in ms;
/// ARGV[3] the change log's cap, which the prelude takes out of ARGV.
fn start_call<'a>(script: &'a Script, keys: &Keyspace, shard: usize, lifetimes: &Lifetimes) -> ScriptInvocation<'a> {
    let mut call = script.key(keys.seq(shard));
    call.arg(lifetimes.last_seen.as_millis() as u64).arg(lifetimes.ttl.as_millis() as u64).arg(lifetimes.log_entries);
    call
}

/// A session as `lease.lua` and `renew.lua` take it: user, session, deviceId ('' keeps
/// the stored one), groups, and the chosen mode, text and activity ('' for none) to
/// restore.
fn session_args(call: &mut ScriptInvocation<'_>, session: &Session) {
    let choice = session.choice.as_ref();
    call.arg(session.user.as_str())
        .arg(session.id.as_str())
        .arg(session.device_id.as_deref().unwrap_or(""))
        .arg(join_groups(&session.groups))
        .arg(choice.map_or("", |c| c.mode.as_str()))
        .arg(choice.and_then(|c| c.text.as_deref()).unwrap_or(""))
        .arg(choice.and_then(|c| c.activity.as_deref()).map(Activity::encode).unwrap_or_default());
}

/// A session's member of `{p}leases`: `user\nsession` (`lease_of` in `lua/prelude.lua`).
fn lease_member(user: &Id, session: &SessionId) -> String {
    format!("{user}\n{session}")
}

/// Groups as the meta hash holds them: newline-separated (ids have no control characters).
fn join_groups(groups: &[Id]) -> String {
    groups.iter().map(Id::as_str).collect::<Vec<_>>().join("\n")
}

fn split_groups(joined: Option<&str>) -> Groups {
    joined.unwrap_or_default().split('\n').filter_map(|g| Id::parse(g).ok()).collect()
}

/// A transition as the scripts return it: user, status, version, lastSeen, deviceId,
/// cause, now, seq, groups, text, lastActivity.
type Row = Vec<Option<String>>;

fn parse_row(row: Row) -> Result<PresenceUpdate, EngineError> {
    let bad = || EngineError::Protocol("a presence script's transition is not the row it should be".into());
    let [user, status, version, last_seen, device_id, cause, now, seq, groups, text, last_activity, activity]: [Option<
        String,
    >;
        12] = row.try_into().map_err(|_| bad())?;
    let number = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
    Ok(PresenceUpdate {
        presence: shown(UserPresence {
            user_id: Id::parse(user.as_deref().ok_or_else(bad)?).map_err(|_| bad())?,
            status: status.as_deref().and_then(Status::parse).ok_or_else(bad)?,
            last_seen: number(last_seen),
            device_id: device_id.map(Arc::from),
            version: number(version).ok_or_else(bad)?,
            groups: split_groups(groups.as_deref()),
            status_text: text.map(Arc::from),
            last_activity: number(last_activity),
            activity: activity.as_deref().and_then(Activity::decode),
        }),
        cause: cause.as_deref().and_then(Cause::parse).ok_or_else(bad)?,
        timestamp: number(now).ok_or_else(bad)?,
        seq: Some(number(seq).ok_or_else(bad)?),
        shard: 0,
    })
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn connect(&self, session: &Session) -> Result<Connected, EngineError> {
        self.lease(session, true).await
    }

    async fn regroup(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        Ok(self.lease(session, false).await?.update)
    }

    async fn heartbeat(&self, session: &Session, at: Instant) -> Result<Option<PresenceUpdate>, EngineError> {
        self.renewals.renew(session, at).await
    }

    /// A heartbeat alone in its round trip costs Redis many times the command it carries
    /// (waking, reading and answering a socket, its caches gone cold); see
    /// docs/BENCHMARKS.md, "Redis work per heartbeat". The configured window, and at most
    /// a twentieth of the TTL: a lease must still be renewed well before it could lapse
    /// for a client heartbeating at any sensible interval.
    fn renewal_window(&self) -> Duration {
        self.renewal_window.min(self.lifetimes.ttl / 20)
    }

    async fn set_choice(
        &self,
        session: &Session,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<Option<PresenceUpdate>, EngineError> {
        let row: Option<Row> = self
            .on_session(&self.status, session)
            .arg(mode.as_str())
            .arg(text.unwrap_or(""))
            .arg(session.device_id.as_deref().unwrap_or(""))
            .arg("0")
            .arg(activity.arg())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        row.map(parse_row).transpose()
    }

    async fn set_user_status(
        &self,
        user: &Id,
        mode: Mode,
        text: Option<&str>,
        activity: &ActivityChange,
    ) -> Result<StatusSet, EngineError> {
        let mut call = self.call(&self.status, self.keys.shard_of(user.as_str()));
        // No session of its own: no session id, and the device the user was last seen on.
        call.arg(user.as_str()).arg("").arg(mode.as_str()).arg(text.unwrap_or("")).arg("").arg("1").arg(activity.arg());
        let row: Option<Row> = call.invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        match row {
            Some(row) if row.len() == 1 && row[0].as_deref() == Some("not_online") => Ok(StatusSet::NotOnline),
            row => row.map(parse_row).transpose().map(StatusSet::Set),
        }
    }

    async fn activity(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        let row: Option<Row> =
            self.on_session(&self.activity, session).invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        row.map(parse_row).transpose()
    }

    async fn disconnect(&self, session: &Session) -> Result<Option<PresenceUpdate>, EngineError> {
        let row: Option<Row> =
            self.on_session(&self.disconnect, session).invoke_async(&mut self.conn.clone()).await.map_err(classify)?;
        row.map(parse_row).transpose()
    }

    /// The router's deadlines written ahead are written as they are first (once, for every
    /// session: the router is shutting down), so that the grace never outlasts a session's
    /// own deadline.
    async fn linger(&self, session: &Session, grace: Duration) -> Result<(), EngineError> {
        self.released
            .get_or_init(|| async {
                if let Err(e) = self.renewals.release().await {
                    tracing::warn!(error = %e, "writing the real deadlines before lingering failed");
                }
            })
            .await;
        let _: Option<Row> = self
            .on_session(&self.linger, session)
            .arg(grace.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Sweeps every shard at once; each shard's script claims its transitions atomically.
    async fn expire_due(&self) -> Result<Vec<PresenceUpdate>, EngineError> {
        let swept = try_join_all((0..self.keys.shards()).map(|shard| self.sweep_shard(shard))).await?;
        Ok(swept.into_iter().flatten().collect())
    }

    async fn online(&self) -> Result<Snapshot, EngineError> {
        let position = self.log_head().await?;
        let watermark = now_ms(&mut self.conn.clone()).await?;
        let shards = try_join_all((0..self.keys.shards()).map(|shard| self.online_in(shard))).await?;
        Ok(Snapshot { users: shards.into_iter().flatten().collect(), watermark, position: Some(position) })
    }

    async fn changes_since(&self, from: &Position) -> Result<Changes, EngineError> {
        self.changes_after(from).await
    }

    async fn log_kept(&self) -> Result<Vec<u64>, EngineError> {
        self.kept_in_log().await
    }

    async fn choice(&self, user: &Id) -> Result<Option<Choice>, EngineError> {
        let (mode, text, activity): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.meta_key(user))
            .arg("mode")
            .arg("text")
            .arg("activity")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(classify)?;
        let activity = activity.as_deref().and_then(Activity::decode);
        Ok(mode.as_deref().and_then(Mode::parse).map(|mode| Choice {
            mode,
            text: text.map(Arc::from),
            activity: activity.map(Arc::new),
        }))
    }

    /// The scope is applied inside Redis (`lookup.lua`): an out-of-scope user's reply is
    /// the unknown user's, byte for byte, so timing the answer tells nothing more than
    /// reading it does.
    async fn lookup(&self, users: &[Id], scope: &Scope) -> Result<Vec<UserPresence>, EngineError> {
        let parts = self.keys.partition(users.iter().map(Id::as_str));
        let answers = try_join_all(parts.iter().map(|(shard, indices)| {
            let shard_users: Vec<&Id> = indices.iter().map(|&i| &users[i]).collect();
            async move { self.lookup_in(*shard, &shard_users, scope).await }
        }))
        .await?;
        let mut presences: Vec<Option<UserPresence>> = vec![None; users.len()];
        for ((_, indices), answer) in parts.iter().zip(answers) {
            for (&i, presence) in indices.iter().zip(answer) {
                presences[i] = Some(presence);
            }
        }
        Ok(presences.into_iter().flatten().collect())
    }

    /// Each shard indexes its own users' groups: the members are the union of every
    /// shard's index of the group.
    async fn group_members(&self, group: &Id) -> Result<Vec<Id>, EngineError> {
        // A member's score is its last lease, which lapses a TTL later: the retention runs
        // from there, as in the lease script's trim and the memory engine.
        let Lifetimes { ttl, last_seen, .. } = self.lifetimes;
        let since = now_ms(&mut self.conn.clone()).await?.saturating_sub((last_seen + ttl).as_millis() as u64);
        let key = format!("group:{group}");
        let shards = try_join_all((0..self.keys.shards()).map(|shard| {
            let mut conn = self.conn.clone();
            let key = self.keys.key(shard, &key);
            async move { conn.zrangebyscore::<_, _, _, Vec<String>>(key, since, "+inf").await.map_err(classify) }
        }))
        .await?;
        Ok(shards.iter().flatten().filter_map(|m| Id::parse(m).ok()).collect())
    }

    /// A small write to every shard, so that refused writes (OOM under `noeviction`,
    /// READONLY after a failover, a cluster master down) show here and not only at the next
    /// heartbeat's renewal; and the router's lease renewed, failing once after it lapsed
    /// (see `vouching.rs`).
    async fn ping(&self) -> Result<(), EngineError> {
        self.renewals.check().await?;
        try_join_all((0..self.keys.shards()).map(|shard| {
            let mut conn = self.conn.clone();
            let probe = redis::cmd("SET").arg(self.keys.key(shard, "probe")).arg(1).arg("PX").arg(10_000).clone();
            async move { probe.query_async::<()>(&mut conn).await.map_err(classify) }
        }))
        .await?;
        Ok(())
    }
}
