//! presence-load: the load tool behind `docs/BENCHMARKS.md`.
//!
//! Each subcommand drives a running router (or two) over loopback and prints one line of
//! figures. Past ~25k connections it spreads them over 127.0.0.2, .3, …; raise the file
//! limit first (`ulimit -n 250000`) for the router and the tool alike.

mod bulk;
mod churn;
mod fanin;
mod fleet;
mod flood;
mod groups;
mod heartbeats;
mod idle;
mod latency;
mod net;
mod ptt;
mod raw;
mod resume;
mod seed;
mod silent;
mod snapshot;
mod stats;
mod steady;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};

use net::Credentials;

#[derive(Parser)]
#[command(about = "Load tool for presence-router")]
struct Args {
    /// The routers' JWT secret.
    #[arg(long, env = "JWT_SECRET", default_value = "dev-secret-change-me", global = true)]
    secret: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// RSS per idle mobile connection (and, with --frame-bytes, after each sent one frame
    /// that large); kernel TCP memory beside it.
    Idle {
        #[arg(long)]
        router: SocketAddr,
        #[arg(long)]
        router_pid: u32,
        #[arg(long, default_value_t = 50_000)]
        connections: usize,
        /// Then each connection sends one TEXT frame of this many bytes (at most the
        /// router's --max-frame-bytes) to a group of its own, waits for the ACK, and the
        /// RSS is read again.
        #[arg(long)]
        frame_bytes: Option<usize>,
        /// Connections sending their large frame at once.
        #[arg(long, default_value_t = 256)]
        frames_in_flight: usize,
    },
    /// Hostile clients flooding one kind of frame (reconnecting when closed) while probe
    /// mobiles time their heartbeats; the router must run with its default frame budget.
    Flood {
        #[arg(long)]
        router: SocketAddr,
        #[arg(long)]
        router_pid: u32,
        #[arg(long, value_enum)]
        kind: flood::Kind,
        /// 0: the windows alternate without flooders (with --rounds, the measure's own noise).
        #[arg(long, default_value_t = 10)]
        flooders: usize,
        #[arg(long, default_value_t = 100)]
        probes: usize,
        /// Each probe's heartbeat period; keep above 10 ms (the budget is 100 frames/s).
        #[arg(long, default_value_t = 20)]
        probe_interval_ms: u64,
        /// Probing before the flood, for the baseline round trips.
        #[arg(long, default_value_t = 2.0)]
        baseline_seconds: f64,
        /// How long flooders keep reconnecting and flooding.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Quiet window (--baseline-seconds) then flood window (--seconds), this many times
        /// on the same probes: the probes' round trips are pooled over the quiet windows
        /// and over the flood windows, so that noise from the machine falls on both alike.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
        /// Between rounds, after the router's drain (the per-address penalty is 10 s).
        #[arg(long, default_value_t = 10.0)]
        pause_seconds: f64,
        /// Frames per second per flooder, for abuse within the budget (one connection each,
        /// for the whole window); 0: as fast as the socket takes them.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// The flooders' SO_RCVBUF in bytes: small, a ping flooder that never reads fills
        /// its window with pongs sooner.
        #[arg(long)]
        recv_buffer: Option<u32>,
        /// Flooders connect from one address (127.1.0.1) or each from its own; probes
        /// from 127.0.0.1. Refused handshakes are retried at once.
        #[arg(long, value_enum, default_value = "same")]
        flooder_sources: flood::Sources,
    },
    /// Heartbeats per second and per router CPU-second (router: --heartbeat-min-interval-ms 0
    /// and a --frame-rate high enough not to throttle); with --redis-pids, Redis CPU per
    /// heartbeat too.
    Heartbeats {
        #[arg(long)]
        router: SocketAddr,
        #[arg(long)]
        router_pid: u32,
        #[arg(long, default_value_t = 500)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Total heartbeats per second across all connections; 0 = as fast as ACKs return.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Run `redis-benchmark -t set -P 16` against this port first, for the ratio.
        #[arg(long)]
        redis_port: Option<u16>,
        /// The redis-server processes behind the router (every node of a cluster),
        /// comma-separated: their CPU over the same window, summed, per heartbeat.
        #[arg(long, value_delimiter = ',')]
        redis_pids: Vec<u32>,
    },
    /// Connect/disconnect on one router → PRESENCE_UPDATE on a dashboard of another.
    Latency {
        #[arg(long)]
        mobiles: SocketAddr,
        #[arg(long)]
        dashboard: SocketAddr,
        #[arg(long, default_value_t = 200)]
        users: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Silent users → offline on a dashboard, late by how much after the lease deadline.
    Silent {
        /// Real mobile sockets on this router…
        #[arg(long, required_unless_present = "redis_port")]
        router: Option<SocketAddr>,
        /// …or users leased straight into this Redis.
        #[arg(long, conflicts_with = "router")]
        redis_port: Option<u16>,
        /// With --redis-port: unrelated TTL keys to write first.
        #[arg(long, default_value_t = 0)]
        other_keys: usize,
        #[arg(long)]
        dashboard: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// The router's --presence-ttl.
        #[arg(long)]
        ttl: u64,
    },
    /// Lease users u0..uN straight into Redis (then start a router: it loads them).
    Seed {
        #[arg(long)]
        redis_port: u16,
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// User uI is in group g(I mod this); 0: in none.
        #[arg(long, default_value_t = 0)]
        groups: usize,
    },
    /// A control room's traffic for the routers on this Redis: changes to users seeded with
    /// `seed` (same --users and --groups), --rate a second for --seconds: statuses,
    /// disconnects and reconnects, typing, talking (each ending a moment later).
    Churn {
        #[arg(long)]
        redis_port: u16,
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        #[arg(long, default_value_t = 500)]
        groups: usize,
        /// Changes per second: transitions and indicator starts and ends together.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
    /// One group of --users seeded members churning at --rate a second, as four
    /// dashboards see it: by its counts, in full coalesced, in full every change, and
    /// without SUBSCRIBE; frames and bytes a second each.
    Groups {
        #[arg(long)]
        router: SocketAddr,
        #[arg(long)]
        redis_port: u16,
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// The churn changes the first this many members only (default: all of them).
        #[arg(long)]
        churn_users: Option<usize>,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The counts' interval and the coalesced dashboard's window, in ms.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Time to a new dashboard's PRESENCE_SNAPSHOT with N users online.
    Snapshot {
        #[arg(long)]
        router: SocketAddr,
        /// Mobiles to connect first; 0 when the users were seeded.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Users the snapshot must hold at least (default: --users).
        #[arg(long)]
        expect: Option<usize>,
        #[arg(long, default_value_t = 10)]
        repeat: usize,
        /// Then this many more dashboards read the snapshot and stay connected; reports
        /// the router's RSS per dashboard (needs --router-pid).
        #[arg(long, default_value_t = 0, requires = "router_pid")]
        retain_dashboards: usize,
        #[arg(long)]
        router_pid: Option<u32>,
    },
    /// Dashboards reconnecting after their router stopped, with their positions (only
    /// the changes missed) and then without (a full snapshot each), in one run; the users
    /// were seeded (`seed`) into the Redis behind both routers.
    Resume {
        /// Where the dashboards start.
        #[arg(long)]
        first: SocketAddr,
        /// Stop the first router (SIGTERM) once the dashboards have their positions;
        /// without it, the tool cuts them off itself.
        #[arg(long)]
        first_pid: Option<u32>,
        /// Where they reconnect.
        #[arg(long)]
        second: SocketAddr,
        #[arg(long)]
        second_pid: u32,
        #[arg(long)]
        redis_port: u16,
        #[arg(long, default_value_t = 20_000)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        dashboards: usize,
        /// Users that go offline while the dashboards are away.
        #[arg(long, default_value_t = 1000)]
        changes: usize,
    },
    /// PTT audio from a talker on one router to listeners on another (or the same).
    Ptt {
        #[arg(long)]
        talker: SocketAddr,
        #[arg(long)]
        listeners_router: SocketAddr,
        #[arg(long, default_value_t = 100)]
        listeners: usize,
        /// AUDIO frames per second (50 = 20 ms frames).
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Keep below the router's --max-talk-ms.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Listeners also heartbeat this often while they listen (router: a low
        /// --heartbeat-min-interval-ms so each one reaches the store).
        #[arg(long)]
        heartbeat_every_ms: Option<u64>,
    },
    /// Redis → router relay messages per AUDIO frame: a talker and a listener per group,
    /// group i on router i mod N, every talker sending AUDIO at once.
    RelayFanin {
        /// The routers, comma-separated (all on one Redis).
        #[arg(long, value_delimiter = ',', required = true)]
        routers: Vec<SocketAddr>,
        #[arg(long, default_value_t = 100)]
        groups: usize,
        /// AUDIO frames per second per talker (50 = 20 ms frames).
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Keep below the routers' --max-talk-ms.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// N mobiles heartbeating every --interval-secs, phases spread evenly, over several
    /// routers and source addresses; after one full interval, a window of --window-secs:
    /// Redis µs per heartbeat (`INFO cpu`), router µs per heartbeat (both also less an idle
    /// window's rate), router KiB per connection. Sessions are held by worker processes within the open-file limit.
    Steady {
        /// The routers, comma-separated: session i on router i mod N.
        #[arg(long, value_delimiter = ',', required = true)]
        routers: Vec<SocketAddr>,
        /// The routers' pids, comma-separated, in the same order.
        #[arg(long, value_delimiter = ',', required = true)]
        router_pids: Vec<u32>,
        /// The redis-server ports behind the routers, comma-separated; none for the
        /// memory engine.
        #[arg(long, value_delimiter = ',')]
        redis_ports: Vec<u16>,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 30)]
        interval_secs: u64,
        #[arg(long, default_value_t = 60)]
        window_secs: u64,
        /// An idle window first, routers up and no session connected: the CPU rate that
        /// the `_net` figures subtract.
        #[arg(long, default_value_t = 10)]
        baseline_secs: u64,
        /// Sessions per worker process (default: its open-file limit less 256).
        #[arg(long)]
        per_process: Option<usize>,
        /// Most new sessions a second, all workers together (default: as fast as the
        /// routers take them).
        #[arg(long)]
        connect_rate: Option<u32>,
    },
    /// One worker process of `steady` (started by it).
    #[command(hide = true)]
    SteadyWorker {
        #[arg(long, value_delimiter = ',', required = true)]
        routers: Vec<SocketAddr>,
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long)]
        epoch_ms: u64,
        #[arg(long, default_value_t = 0)]
        connect_every_us: u64,
    },
    /// `POST /api/presence/status` with 100 ids.
    Bulk {
        #[arg(long)]
        router: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        online: usize,
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Alternate out-of-scope existing users and never-seen ids, read by a scoped
        /// dashboard, and compare their latencies.
        #[arg(long)]
        scope_oracle: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let credentials = Arc::new(Credentials { secret: args.secret.clone() });
    match args.scenario {
        Scenario::Idle { router, router_pid, connections, frame_bytes, frames_in_flight } => {
            idle::run(&credentials, router, router_pid, connections, frame_bytes, frames_in_flight.max(1)).await
        }
        Scenario::Flood {
            router,
            router_pid,
            kind,
            flooders,
            probes,
            probe_interval_ms,
            baseline_seconds,
            seconds,
            rounds,
            pause_seconds,
            rate,
            recv_buffer,
            flooder_sources,
        } => {
            let options = flood::Options {
                router,
                pid: router_pid,
                kind,
                flooders,
                probes,
                probe_interval: Duration::from_millis(probe_interval_ms),
                baseline: Duration::from_secs_f64(baseline_seconds),
                seconds: Duration::from_secs_f64(seconds),
                rounds: rounds as usize,
                pause: Duration::from_secs_f64(pause_seconds),
                rate,
                recv_buffer,
                sources: flooder_sources,
            };
            flood::run(credentials, options).await
        }
        Scenario::Heartbeats { router, router_pid, connections, seconds, rate, redis_port, redis_pids } => {
            let load = heartbeats::Load { connections, seconds, rate };
            heartbeats::run(&credentials, router, router_pid, load, redis_port, &redis_pids).await
        }
        Scenario::Latency { mobiles, dashboard, users, rate, seconds } => {
            latency::run(credentials, mobiles, dashboard, users, rate, seconds).await
        }
        Scenario::Silent { router, redis_port, other_keys, dashboard, users, ttl } => {
            let from = match (router, redis_port) {
                (Some(router), _) => silent::Users::Sockets(router),
                (None, Some(redis_port)) => silent::Users::Seeded { redis_port, other_keys },
                (None, None) => anyhow::bail!("give --router or --redis-port"),
            };
            silent::run(&credentials, from, dashboard, users, Duration::from_secs(ttl)).await
        }
        Scenario::Seed { redis_port, users, ttl, groups } => {
            let deadlines = seed::users(redis_port, users, Duration::from_secs(ttl), groups).await?;
            println!("seeded {} users online for {ttl}s in {groups} groups", deadlines.len());
            Ok(())
        }
        Scenario::Churn { redis_port, users, groups, rate, seconds } => {
            churn::run(churn::Options { redis_port, users, groups, rate, seconds }).await
        }
        Scenario::Groups { router, redis_port, users, churn_users, rate, seconds, interval_ms } => {
            let churn_users = churn_users.unwrap_or(users);
            let options = groups::Options { router, redis_port, users, churn_users, rate, seconds, interval_ms };
            groups::run(&credentials, options).await
        }
        Scenario::Snapshot { router, users, expect, repeat, retain_dashboards, router_pid } => {
            let retain = router_pid.filter(|_| retain_dashboards > 0).map(|pid| (pid, retain_dashboards));
            snapshot::run(&credentials, router, users, expect.unwrap_or(users), repeat, retain).await
        }
        Scenario::Resume { first, first_pid, second, second_pid, redis_port, users, dashboards, changes } => {
            let options =
                resume::Options { first, first_pid, second, second_pid, redis_port, users, dashboards, changes };
            resume::run(&credentials, options).await
        }
        Scenario::Steady {
            routers,
            router_pids,
            redis_ports,
            sessions,
            interval_secs,
            window_secs,
            baseline_secs,
            per_process,
            connect_rate,
        } => {
            let options = steady::Options {
                routers,
                router_pids,
                redis_ports,
                sessions,
                interval: Duration::from_secs(interval_secs),
                window: Duration::from_secs(window_secs),
                baseline: Duration::from_secs(baseline_secs),
                per_process,
                connect_rate,
            };
            steady::run(&args.secret, options).await
        }
        Scenario::SteadyWorker { routers, sessions, from, to, interval_ms, epoch_ms, connect_every_us } => {
            let interval = Duration::from_millis(interval_ms);
            let connect_every = Duration::from_micros(connect_every_us);
            let share = steady::Share { routers, sessions, range: from..to, interval, epoch_ms, connect_every };
            steady::worker(credentials, share).await
        }
        Scenario::Bulk { router, online, requests, scope_oracle } => {
            bulk::run(&credentials, router, online, requests, scope_oracle).await
        }
        Scenario::RelayFanin { routers, groups, rate, seconds } => {
            fanin::run(credentials, routers, groups, rate, seconds).await
        }
        Scenario::Ptt { talker, listeners_router, listeners, rate, seconds, heartbeat_every_ms } => {
            let heartbeat_every = heartbeat_every_ms.map(Duration::from_millis);
            ptt::run(credentials, talker, listeners_router, listeners, rate, seconds, heartbeat_every).await
        }
    }
}
