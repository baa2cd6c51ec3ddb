//! A real Redis Cluster: three masters and three replicas, each a [`RedisServer`] with the
//! project's `redis.conf` in cluster mode, joined by `redis-cli --cluster create`.
//!
//! Each node's cluster bus gets its own port from [`free_port`] (`--cluster-port`) rather
//! than the default port + 10000, which nothing reserves. A node's `nodes.conf` lives in
//! its own temp dir, so dropping the cluster (every [`RedisServer`]) kills every process
//! and removes every file.

use super::{RedisServer, WAIT, eventually, free_port};

/// Masters, each with one replica.
const MASTERS: usize = 3;
const SLOTS: u16 = 16384;

pub struct RedisCluster {
    /// Every node started, killed ones included (their `child` is gone).
    servers: Vec<RedisServer>,
    /// Nodes stopped with SIGSTOP: they answer nothing, so they count as gone.
    hung: Vec<u16>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster, and returns once every node reports
    /// `cluster_state:ok` with all 16384 slots assigned and all six nodes known, and every
    /// replica's link to its master is up; panics after [`WAIT`].
    pub async fn start() -> RedisCluster {
        let servers =
            futures_util::future::join_all((0..2 * MASTERS).map(|_| RedisServer::start_with(|_| node_args()))).await;
        let cluster = RedisCluster { servers, hung: Vec::new() };
        let create = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.nodes())
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output();
        let create = tokio::time::timeout(WAIT, create).await.expect("cluster created in time").unwrap();
        assert!(create.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&create.stdout));
        eventually("every cluster node ok, every replica linked", || cluster.settled()).await;
        cluster
    }

    /// `127.0.0.1:port` of every node started, killed ones included: a client's seed list
    /// outlives the nodes it names.
    pub fn nodes(&self) -> Vec<String> {
        self.servers.iter().map(|server| format!("127.0.0.1:{}", server.port)).collect()
    }

    /// [`RedisCluster::nodes`] comma-separated, as an operator passes seeds.
    pub fn seeds(&self) -> String {
        self.nodes().join(",")
    }

    /// The port of the master serving `key`'s slot, as the first live node sees it.
    pub async fn master_for_key(&self, key: &str) -> u16 {
        let slot = self.slot(key).await;
        master_of(self.any_live(), slot).await.unwrap_or_else(|| panic!("no master for {key}"))
    }

    /// SIGKILL of the node on `port` (a master, for a failover to follow).
    pub async fn kill_master(&mut self, port: u16) {
        let server = self.servers.iter_mut().find(|server| server.port == port).expect("a node of this cluster");
        server.kill().await;
    }

    /// Waits until every live node serves `key`'s slot from the same live master and says
    /// `cluster_state:ok`; returns that master's port. Panics after [`WAIT`].
    pub async fn wait_failover(&self, key: &str) -> u16 {
        let slot = self.slot(key).await;
        let served = || async move {
            let mut masters = Vec::new();
            for port in self.live() {
                let ok = query::<String>(port, redis::cmd("CLUSTER").arg("INFO"))
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"));
                masters
                    .push(master_of(port, slot).await.filter(|master| ok && self.live().any(|live| live == *master)));
            }
            masters.dedup();
            matches!(masters[..], [Some(_)])
        };
        eventually(&format!("a live master for slot {slot} on every live node"), served).await;
        master_of(self.any_live(), slot).await.expect("a master, as just seen")
    }

    /// `redis-cli -c <args>` against a live node (following MOVED); its stdout, trimmed.
    /// Replies are raw (`OK`, a value, an empty line for nil, `ERR …` for an error). Panics
    /// if redis-cli cannot connect, as when MOVED names a killed master not yet replaced.
    pub async fn cli(&self, args: &[&str]) -> String {
        let port = self.any_live().to_string();
        let run = tokio::process::Command::new("redis-cli").args(["-c", "-p", &port]).args(args).output();
        let output = tokio::time::timeout(WAIT, run).await.expect("redis-cli in time").unwrap();
        assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// SIGSTOP of the node on `port`: it hangs, answering nothing (connections stay open),
    /// until [`RedisCluster::resume`].
    pub async fn hang(&mut self, port: u16) {
        self.servers.iter().find(|server| server.port == port).expect("a node of this cluster").signal("STOP").await;
        self.hung.push(port);
    }

    /// SIGCONT of a node [`RedisCluster::hang`] stopped.
    pub async fn resume(&mut self, port: u16) {
        self.servers.iter().find(|server| server.port == port).expect("a node of this cluster").signal("CONT").await;
        self.hung.retain(|hung| *hung != port);
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.servers
            .iter()
            .filter(|server| server.child.is_some() && !self.hung.contains(&server.port))
            .map(|server| server.port)
    }

    /// A node still running, to ask about the cluster.
    fn any_live(&self) -> u16 {
        self.live().next().expect("a live node")
    }

    async fn slot(&self, key: &str) -> u16 {
        let port = self.any_live();
        query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await.expect("CLUSTER KEYSLOT")
    }

    async fn settled(&self) -> bool {
        for port in self.live() {
            let Some(info) = query::<String>(port, redis::cmd("CLUSTER").arg("INFO")).await else { return false };
            let known = format!("cluster_known_nodes:{}", self.servers.len());
            let assigned = format!("cluster_slots_assigned:{SLOTS}");
            if ![&*known, &*assigned, "cluster_state:ok"].iter().all(|line| info.contains(line)) {
                return false;
            }
            let Some(replication) = query::<String>(port, redis::cmd("INFO").arg("replication")).await else {
                return false;
            };
            if replication.contains("role:slave") && !replication.contains("master_link_status:up") {
                return false;
            }
        }
        true
    }
}

/// redis-server's command-line settings for a cluster node, appended after `redis.conf`. Fast failure detection (1 s node timeout), a replica that fails over
/// however stale it is, replicas synced at once (no diskless-sync delay), no persistence.
fn node_args() -> Vec<String> {
    let bus = free_port();
    let settings = [
        ("cluster-enabled", "yes".to_string()),
        // Relative to `--dir`, the node's own temp dir.
        ("cluster-config-file", "nodes.conf".to_string()),
        ("cluster-port", bus.to_string()),
        ("cluster-node-timeout", "1000".to_string()),
        ("cluster-require-full-coverage", "no".to_string()),
        ("cluster-replica-validity-factor", "0".to_string()),
        ("repl-diskless-sync-delay", "0".to_string()),
        ("appendonly", "no".to_string()),
    ];
    settings.into_iter().flat_map(|(name, value)| [format!("--{name}"), value]).collect()
}

/// One command to the node on `port`; None if it cannot be reached or refuses.
async fn query<T: redis::FromRedisValue>(port: u16, command: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    command.query_async(&mut connection).await.ok()
}

/// The port of the master that the node on `port` says serves `slot`, if it knows a
/// master for it that it does not suspect (`fail?`) or consider failed.
async fn master_of(port: u16, slot: u16) -> Option<u16> {
    let nodes: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await?;
    // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>…`
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let flags = fields.get(2)?;
        let healthy_master = flags.split(',').any(|flag| flag == "master") && !flags.contains("fail");
        let serves = fields.get(8..)?.iter().any(|range| covers(range, slot));
        let address = fields[1].split('@').next()?;
        (healthy_master && serves).then(|| address.rsplit(':').next()?.parse().ok())?
    })
}

/// Whether a CLUSTER NODES slot entry (`5`, `0-5460`; `[…]` migration entries never)
/// includes `slot`.
fn covers(range: &str, slot: u16) -> bool {
    let (low, high) = range.split_once('-').unwrap_or((range, range));
    matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(low), Ok(high)) if (low..=high).contains(&slot))
}
