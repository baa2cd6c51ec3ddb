//! A steady fleet: N mobile sessions, each heartbeating once every interval, their phases
//! spread evenly over the interval (session i at i/N of it), over several routers (session
//! i on router i mod R) and several source addresses ([`net::source`]). Once every session
//! is connected and one full interval has passed, it measures a window: heartbeats
//! acknowledged, Redis CPU (`INFO cpu` of the given ports, before and after) and the
//! commands and reads (client requests read off a socket, `INFO stats`) Redis processed,
//! the commands Redis spent most time in (`INFO commandstats`, µs per heartbeat), the
//! routers' CPU (/proc), and each router's RSS per connection (its RSS at the end of the
//! window less its RSS before the first connection).
//!
//! At a realistic rate the heartbeats are a small part of what Redis and the routers do
//! (Redis' own cron, the routers' sweeps every 250 ms), so an idle window with the routers
//! up and no session connected is measured first, and each figure per heartbeat is given
//! twice: all the CPU of the window, and the window's CPU less the idle rate (`_net`).
//!
//! A process may hold only `RLIMIT_NOFILE` sockets, so the sessions are held by worker
//! processes (this binary again, `steady-worker`), each at most `per_process` of them. A
//! worker prints `connected` once all of its sessions are connected and their first
//! heartbeat acknowledged, then answers each `count` line on its stdin with its counters
//! (`acked refused lost`); it exits when its stdin closes.

use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    ops::Range,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail, ensure};
use presence_router::auth::Role;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::{Semaphore, mpsc},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    fleet,
    net::{Credentials, heartbeat_answer},
    stats::{Process, cpu_seconds_sum},
};

/// Handshakes in flight per worker process.
const CONNECTING: usize = 256;

/// How often a session's first heartbeat is tried while its router's store is unavailable,
/// every 500 ms: a router that lost Redis for a moment is back within this.
const FIRST_HEARTBEAT_TRIES: usize = 60;
/// Descriptors a worker keeps beside its sessions' sockets (stdio, the runtime's own).
const WORKER_FD_RESERVE: u64 = 256;

/// What to hold and what to measure.
pub struct Options {
    pub routers: Vec<SocketAddr>,
    /// One per router, in the same order.
    pub router_pids: Vec<u32>,
    /// The redis-server ports whose CPU is summed; none for the memory engine.
    pub redis_ports: Vec<u16>,
    pub sessions: usize,
    pub interval: Duration,
    pub window: Duration,
    /// The idle window before the first connection.
    pub baseline: Duration,
    /// Sessions per worker process; default: what the open-file limit allows.
    pub per_process: Option<usize>,
    /// Most new sessions a second, the whole fleet together; `None`: as fast as the
    /// routers take them (a reconnect storm, not a fleet coming online over time).
    pub connect_rate: Option<u32>,
}

/// One worker's share of the fleet.
pub struct Share {
    pub routers: Vec<SocketAddr>,
    /// The whole fleet's size: phases are spread over all of it.
    pub sessions: usize,
    pub range: Range<usize>,
    pub interval: Duration,
    /// The schedule's origin, on the wall clock (Unix ms): session i heartbeats at
    /// `epoch + (i / sessions + k) × interval`.
    pub epoch_ms: u64,
    /// The time between this worker's new sessions; zero: unpaced.
    pub connect_every: Duration,
}

/// The worker processes' counters summed, and the CPU figures, at one instant.
struct Reading {
    acked: u64,
    refused: u64,
    lost: u64,
    redis: RedisReading,
    router_cpu: f64,
}

pub async fn run(secret: &str, options: Options) -> anyhow::Result<()> {
    let Options { routers, router_pids, redis_ports, sessions, interval, window, baseline, per_process, connect_rate } =
        options;
    ensure!(!routers.is_empty() && routers.len() == router_pids.len(), "give one --router-pids entry per router");
    ensure!(sessions > 0, "--sessions must be above 0");
    let per_process = match per_process {
        Some(n) => n.max(1),
        None => sessions_per_process()?,
    };
    let processes: Vec<Process> = router_pids.iter().map(|&pid| Process { pid }).collect();
    let redis = Redis::connect(&redis_ports).await?;
    let rss_before = processes.iter().map(Process::rss_kib).collect::<anyhow::Result<Vec<_>>>()?;
    let (idle_redis, idle_routers) = (redis.read().await?.cpu, cpu_seconds_sum(&processes)?);
    tokio::time::sleep(baseline).await;
    // CPU seconds per second with no session connected.
    let idle_redis = (redis.read().await?.cpu - idle_redis) / baseline.as_secs_f64();
    let idle_routers = (cpu_seconds_sum(&processes)? - idle_routers) / baseline.as_secs_f64();
    let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let started = Instant::now();
    let mut workers = Vec::new();
    for from in (0..sessions).step_by(per_process) {
        let range = from..(from + per_process).min(sessions);
        // Each worker its part of the rate, in proportion to its share of the fleet.
        let connect_every = connect_rate.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(sessions as f64 / (rate.max(1) as f64 * range.len() as f64))
        });
        let share = Share { routers: routers.clone(), sessions, range, interval, epoch_ms, connect_every };
        workers.push(Worker::spawn(secret, &share)?);
    }
    for worker in &mut workers {
        let line = worker.lines.next_line().await?.context("a worker ended before its sessions connected")?;
        ensure!(line == "connected", "a worker said {line:?}");
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Every session has had its first scheduled heartbeat, and the routers' renewals run
    // at their steady pace.
    tokio::time::sleep(interval).await;
    let before = read(&mut workers, &redis, &processes).await?;
    tokio::time::sleep(window).await;
    let after = read(&mut workers, &redis, &processes).await?;
    let rss_after = processes.iter().map(Process::rss_kib).collect::<anyhow::Result<Vec<_>>>()?;

    let heartbeats = (after.acked - before.acked) as f64;
    let per_connection: Vec<String> = (0..routers.len())
        .map(|r| {
            let held = (r..sessions).step_by(routers.len()).count().max(1);
            format!("{:.2}", rss_after[r].saturating_sub(rss_before[r]) as f64 / held as f64)
        })
        .collect();
    let seconds = window.as_secs_f64();
    // µs per heartbeat: all of the window's CPU, and less the idle rate.
    let per_heartbeat = |cpu: f64, idle: f64| (cpu * 1e6 / heartbeats, (cpu - idle * seconds) * 1e6 / heartbeats);
    let router_cpu = after.router_cpu - before.router_cpu;
    let (router_us, router_us_net) = per_heartbeat(router_cpu, idle_routers);
    print!(
        "steady sessions={sessions} interval={}s window={seconds}s routers={} processes={} connect_time={connect_secs:.1}s \
         heartbeats={heartbeats:.0} per_second={:.0} refused={} lost={} router_cpu={router_cpu:.2}s \
         router_idle={:.1}ms/s router_us_per_heartbeat={router_us:.2} router_us_per_heartbeat_net={router_us_net:.2} \
         kib_per_connection={}",
        interval.as_secs_f64(),
        routers.len(),
        workers.len(),
        heartbeats / seconds,
        after.refused - before.refused,
        after.lost - before.lost,
        idle_routers * 1e3,
        per_connection.join(","),
    );
    if redis_ports.is_empty() {
        println!(" redis_cpu=n/a redis_us_per_heartbeat=n/a");
    } else {
        let redis_cpu = after.redis.cpu - before.redis.cpu;
        let (redis_us, redis_us_net) = per_heartbeat(redis_cpu, idle_redis);
        println!(
            " redis_cpu={redis_cpu:.3}s redis_idle={:.2}ms/s redis_us_per_heartbeat={redis_us:.2} \
             redis_us_per_heartbeat_net={redis_us_net:.2} redis_commands_per_heartbeat={:.2} \
             redis_reads_per_heartbeat={:.2}",
            idle_redis * 1e3,
            (after.redis.commands - before.redis.commands) as f64 / heartbeats,
            (after.redis.reads - before.redis.reads) as f64 / heartbeats,
        );
        // Where Redis' time went in the window: the costliest commands, µs per heartbeat.
        let mut spent: Vec<(&String, u64)> = after
            .redis
            .usec
            .iter()
            .map(|(name, &usec)| (name, usec.saturating_sub(before.redis.usec.get(name).copied().unwrap_or(0))))
            .collect();
        spent.sort_by_key(|&(_, usec)| std::cmp::Reverse(usec));
        let top: Vec<String> =
            spent.iter().take(6).map(|(name, usec)| format!("{name}:{:.2}", *usec as f64 / heartbeats)).collect();
        println!(" redis_us_per_heartbeat_by_command={}", top.join(","));
    }
    Ok(())
}

/// Sessions one worker may hold: its hard open-file limit (which it raises its soft limit
/// to) less a reserve.
fn sessions_per_process() -> anyhow::Result<usize> {
    let (_, hard) = rlimit::Resource::NOFILE.get().context("reading RLIMIT_NOFILE")?;
    ensure!(hard > WORKER_FD_RESERVE, "an open-file limit of {hard} leaves no room for sessions");
    Ok((hard - WORKER_FD_RESERVE).min(usize::MAX as u64) as usize)
}

async fn read(workers: &mut [Worker], redis: &Redis, routers: &[Process]) -> anyhow::Result<Reading> {
    let mut reading = Reading { acked: 0, refused: 0, lost: 0, redis: redis.read().await?, router_cpu: 0.0 };
    for worker in workers.iter_mut() {
        let [acked, refused, lost] = worker.count().await?;
        reading.acked += acked;
        reading.refused += refused;
        reading.lost += lost;
    }
    reading.router_cpu = cpu_seconds_sum(routers)?;
    Ok(reading)
}

/// A worker process and its control pipes.
struct Worker {
    // Killed when dropped: `kill_on_drop`.
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(secret: &str, share: &Share) -> anyhow::Result<Worker> {
        let routers: Vec<String> = share.routers.iter().map(SocketAddr::to_string).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .env("JWT_SECRET", secret)
            .arg("steady-worker")
            .args(["--routers", &routers.join(",")])
            .args(["--sessions", &share.sessions.to_string()])
            .args(["--from", &share.range.start.to_string(), "--to", &share.range.end.to_string()])
            .args(["--interval-ms", &share.interval.as_millis().to_string()])
            .args(["--epoch-ms", &share.epoch_ms.to_string()])
            .args(["--connect-every-us", &share.connect_every.as_micros().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a steady-worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        Ok(Worker { _child: child, stdin, lines })
    }

    /// Its counters: acknowledged heartbeats, refused ones, sessions lost.
    async fn count(&mut self) -> anyhow::Result<[u64; 3]> {
        self.stdin.write_all(b"count\n").await?;
        let line = self.lines.next_line().await?.context("a worker ended")?;
        let numbers: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        numbers.try_into().map_err(|numbers| anyhow::anyhow!("a worker counted {numbers:?}"))
    }
}

/// The Redis servers measured, each through one connection.
struct Redis {
    connections: Vec<redis::aio::MultiplexedConnection>,
}

/// Totals over the Redis servers since they started.
struct RedisReading {
    /// `used_cpu_sys + used_cpu_user`, seconds.
    cpu: f64,
    /// `total_commands_processed`.
    commands: u64,
    /// `total_reads_processed`: reads of client sockets that got data, so round trips
    /// (a pipeline read whole counts once).
    reads: u64,
    /// `INFO commandstats`: microseconds spent in each command (a script's own commands
    /// counted in its `evalsha` too).
    usec: std::collections::BTreeMap<String, u64>,
}

impl Redis {
    async fn connect(ports: &[u16]) -> anyhow::Result<Redis> {
        let mut connections = Vec::new();
        for port in ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
            connections.push(client.get_multiplexed_async_connection().await?);
        }
        Ok(Redis { connections })
    }

    async fn read(&self) -> anyhow::Result<RedisReading> {
        let mut total = RedisReading { cpu: 0.0, commands: 0, reads: 0, usec: Default::default() };
        for conn in &self.connections {
            let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn.clone()).await?;
            let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut conn.clone()).await?;
            total.cpu += info_field::<f64>(&cpu, "used_cpu_sys")? + info_field::<f64>(&cpu, "used_cpu_user")?;
            total.commands += info_field::<u64>(&stats, "total_commands_processed")?;
            total.reads += info_field::<u64>(&stats, "total_reads_processed")?;
            let commands: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn.clone()).await?;
            for line in commands.lines() {
                // cmdstat_zadd:calls=…,usec=…,usec_per_call=…
                let Some((name, fields)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                    continue;
                };
                let usec = fields.split(',').find_map(|f| f.strip_prefix("usec=")?.parse::<u64>().ok());
                *total.usec.entry(name.to_string()).or_default() += usec.unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// The value of `name:value` in an `INFO` reply.
fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let value = info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':'));
    Ok(value.with_context(|| format!("{name} in INFO"))?.trim().parse()?)
}

/// Heartbeats since start, refusals (an ERROR instead of the ACK), sessions whose
/// connection ended.
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    refused: AtomicU64,
    lost: AtomicU64,
}

/// The `steady-worker` process: holds `share`'s sessions, heartbeating on schedule, until
/// its stdin closes.
pub async fn worker(credentials: Arc<Credentials>, share: Share) -> anyhow::Result<()> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::increase_nofile_limit(hard)?;
    let Share { routers, sessions, range, interval, epoch_ms, connect_every } = share;
    // The wall-clock epoch on this process' monotonic clock.
    let since_epoch = Duration::from_millis(
        (SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64).saturating_sub(epoch_ms),
    );
    let epoch = Instant::now().checked_sub(since_epoch).unwrap_or_else(Instant::now);
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (connected, mut connections) = mpsc::channel(CONNECTING);
    let held = range.len();
    let mut pace = (!connect_every.is_zero()).then(|| tokio::time::interval(connect_every));
    for i in range {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let (credentials, counters, gate, connected) =
            (credentials.clone(), counters.clone(), gate.clone(), connected.clone());
        let router = routers[i % routers.len()];
        let phase = interval.mul_f64(i as f64 / sessions as f64);
        tokio::spawn(async move {
            let user = fleet::user(i);
            let permit = gate.acquire().await;
            let ws = async {
                let mut ws = credentials.connect(router, i, &user, Role::Mobile).await?;
                // A router that lost its store for a moment (a stall of this shared machine)
                // refuses heartbeats until it answers again; the window is measured later.
                for _ in 0..FIRST_HEARTBEAT_TRIES {
                    match heartbeat_answer(&mut ws, &user).await? {
                        None => return Ok(ws),
                        Some(error) if error["code"].as_str() == Some("presence_unavailable") => {
                            tokio::time::sleep(Duration::from_millis(500)).await
                        }
                        Some(error) => bail!("{user}'s first heartbeat refused: {error}"),
                    }
                }
                bail!("{user}'s first heartbeat refused {FIRST_HEARTBEAT_TRIES} times: presence_unavailable")
            }
            .await
            .with_context(|| format!("{user} on {router}"));
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = connected.send(Err(e)).await;
                    return;
                }
            };
            let _ = connected.send(Ok(())).await;
            let mut ticks = tokio::time::interval_at(next_tick(epoch + phase, interval), interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                match heartbeat_answer(&mut ws, &user).await {
                    Ok(None) => counters.acked.fetch_add(1, Ordering::Relaxed),
                    Ok(Some(_)) => counters.refused.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
            }
        });
    }
    drop(connected);
    for _ in 0..held {
        connections.recv().await.context("a session task ended")??;
    }
    println!("connected");
    // Control on a thread of its own: plain blocking reads of stdin.
    tokio::task::spawn_blocking(move || answer_counts(&counters)).await?
}

/// Answers every line on stdin with the counters; returns when stdin closes.
fn answer_counts(counters: &Counters) -> anyhow::Result<()> {
    for line in std::io::stdin().lock().lines() {
        line?;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{} {} {}", load(&counters.acked), load(&counters.refused), load(&counters.lost))?;
        out.flush()?;
    }
    Ok(())
}

/// The first instant of the grid `first + k × interval` (k ≥ 0) that is not in the past.
fn next_tick(first: Instant, interval: Duration) -> Instant {
    let now = Instant::now();
    if first >= now {
        return first;
    }
    let behind = (now - first).as_secs_f64() / interval.as_secs_f64();
    first + interval.mul_f64(behind.ceil())
}
