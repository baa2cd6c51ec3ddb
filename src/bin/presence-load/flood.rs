//! Hostile clients: flooders send one kind of WebSocket frame as fast as the socket takes
//! it, written by hand (masked, as a client must) so that no library smooths them over.
//! Each times its connection from its first flood byte to the router's Close frame and
//! reads the close code; once closed it reconnects and floods again until the flood window
//! ends, so the abuse is sustained. Meanwhile probe mobiles heartbeat at a steady pace
//! (within the frame budget) and time their round trips, in a baseline window before the
//! flood and during it; the router's RSS (before, peak, after) and CPU are read from /proc.
//! With `--rounds N` the quiet and flood windows alternate N times on the same probes and
//! router, and the round trips are pooled per kind of window: a shared machine's noise
//! then falls on both alike, where one quiet window and one flood window a few seconds
//! apart can differ by more than the flood does.
//!
//! Flooders keep writing after the Close frame, as an abuser would: the router drains at
//! most 1 MiB (or 2 s) of input after its Close, then drops the socket, so a flooder is
//! normally reset after it read the Close frame. That counts as closed; a reset before
//! any Close frame could be read does not.
//!
//! A flooder whose handshake is refused (429 from the per-address budget, 503 at the
//! handshake cap) counts the refusal and tries again at once, ignoring `Retry-After` as an
//! abuser would. With `--flooder-sources same` (the default) every flooder connects from
//! 127.1.0.1, with `distinct` each from an address of its own (127.1.0.1, .2, …); probes
//! connect from 127.0.0.1. The router must run with `--trusted-proxies none` for the
//! per-address budget to see loopback clients at all.
//!
//! With `--rate`, each flooder paces its frames instead, on one connection for the whole
//! window: abuse within the budget, which the router is not meant to close. With a small
//! `--recv-buffer`, a ping flooder that never reads then shows what the router keeps for
//! pongs it cannot write.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::Range,
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use presence_router::{auth::Role, protocol::heartbeat_frame};
use tokio::{
    io::AsyncWriteExt,
    time::{Instant, MissedTickBehavior, timeout, timeout_at},
};

use crate::{
    fleet,
    net::{Credentials, heartbeat},
    raw::{self, Reader},
    stats::{Process, Summary},
};

/// What a flooder sends.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// 125-byte pings, never reading (the pongs pile up on the router's side).
    Ping,
    /// A non-final binary frame, then empty continuation fragments that never end it.
    Fragments,
    /// Small text frames (each admitted one is answered with ERROR `text_not_supported`).
    Text,
    /// Binary heartbeats, 4 MiB of them per write.
    Heartbeats,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Fragments => "fragments",
            Kind::Text => "text",
            Kind::Heartbeats => "heartbeats",
        }
    }

    /// Whether the flooder reads while it writes.
    fn reads(self) -> bool {
        !matches!(self, Kind::Ping)
    }

    /// The bytes written once first, one flood frame, and how many bytes of flood frames
    /// go in one write.
    fn frames(self, user: &str) -> (Vec<u8>, Vec<u8>, usize) {
        let mut one = Vec::new();
        let mut opening = Vec::new();
        let batch = match self {
            Kind::Ping => {
                raw::push_frame(&mut one, true, raw::PING, &[0x70; 125]);
                64 * 1024
            }
            Kind::Fragments => {
                raw::push_frame(&mut opening, false, raw::BINARY, &heartbeat_frame(user));
                raw::push_frame(&mut one, false, raw::CONTINUATION, &[]);
                64 * 1024
            }
            Kind::Text => {
                raw::push_frame(&mut one, true, raw::TEXT, br#"{"type":"heartbeat"}"#);
                64 * 1024
            }
            Kind::Heartbeats => {
                raw::push_frame(&mut one, true, raw::BINARY, &heartbeat_frame(user));
                4 * 1024 * 1024
            }
        };
        (opening, one, batch)
    }
}

/// Where flooders connect from.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Sources {
    /// Every flooder from 127.1.0.1.
    Same,
    /// Each flooder from an address of its own: 127.1.0.1, 127.1.0.2, …
    Distinct,
}

impl Sources {
    fn name(self) -> &'static str {
        match self {
            Sources::Same => "same",
            Sources::Distinct => "distinct",
        }
    }

    /// The source address of flooder `k`.
    fn of(self, k: usize) -> IpAddr {
        let k = match self {
            Sources::Same => 0,
            Sources::Distinct => k,
        };
        IpAddr::V4(Ipv4Addr::new(127, 1, (k / 250) as u8, 1 + (k % 250) as u8))
    }
}

/// A flooding connection that is still open this long after its first byte is given up
/// (the target is 2 s).
const GIVE_UP: Duration = Duration::from_secs(5);

/// How the router closes connections: it drains input for up to 2 s after its Close.
const SETTLE: Duration = Duration::from_millis(2500);

pub struct Options {
    pub router: SocketAddr,
    pub pid: u32,
    pub kind: Kind,
    pub flooders: usize,
    pub probes: usize,
    pub probe_interval: Duration,
    pub baseline: Duration,
    pub seconds: Duration,
    /// Quiet window + flood window, this many times (at least 1).
    pub rounds: usize,
    /// Between rounds, after the router's drain: long enough for the flooders' addresses to
    /// serve out their penalty, so that every round starts as the first did.
    pub pause: Duration,
    /// Frames per second per flooder; 0: as fast as the socket takes them.
    pub rate: u32,
    /// The flooders' SO_RCVBUF (default: the kernel's).
    pub recv_buffer: Option<u32>,
    pub sources: Sources,
}

/// What every flooding connection of a run shares.
#[derive(Clone, Copy)]
struct Plan {
    router: SocketAddr,
    kind: Kind,
    rate: u32,
    recv_buffer: Option<u32>,
    flood_end: Instant,
}

/// What one flooder's attempts came to.
#[derive(Default)]
struct Attempts {
    /// Connections that were upgraded and flooded.
    outcomes: Vec<Outcome>,
    /// Handshakes refused, by HTTP status.
    refused: BTreeMap<u16, usize>,
    /// Handshakes that failed otherwise (a reset, the connection ending).
    failed: usize,
}

/// How one flooding connection ended.
struct Outcome {
    /// From the first flood byte to the router's Close frame (for a flooder that does not
    /// read: to the end of the router's stream, which follows its Close frame).
    closed_after: Option<Duration>,
    /// The Close frame's code, if one was read.
    code: Option<u16>,
    /// The TCP connection was reset (seen by the reader or by a failed write).
    reset: bool,
}

pub async fn run(credentials: Arc<Credentials>, options: Options) -> anyhow::Result<()> {
    let Options {
        router,
        pid,
        kind,
        flooders,
        probes,
        probe_interval,
        baseline,
        seconds,
        rounds,
        pause,
        rate,
        recv_buffer,
        sources,
    } = options;
    let process = Process { pid };

    // Probes: mobiles heartbeating every `probe_interval` (send, wait for the ACK, wait
    // for the next tick), within the default budget of 100 frames/s.
    let mobiles = fleet::connect(&credentials, router, 0..probes, 64).await?;
    let rtts: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    let probe_errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let probing: Vec<_> = mobiles
        .into_iter()
        .enumerate()
        .map(|(i, mut mobile)| {
            let (rtts, errors, stop) = (rtts.clone(), probe_errors.clone(), stop.clone());
            let phase = probe_interval.mul_f64(i as f64 / probes as f64);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(start + phase, probe_interval);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let sent = Instant::now();
                    match timeout(Duration::from_secs(5), heartbeat(&mut mobile.ws, &mobile.user)).await {
                        Ok(Ok(())) => rtts.lock().unwrap().push((sent, sent.elapsed().as_secs_f64() * 1000.0)),
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    // Flooders get a runtime (and thread) of their own: sharing the probes' worker
    // threads, a flooder writing 64 KiB batches would delay the probes inside the tool.
    // Niced, so that on a machine this small the flooders take the CPU the router and the
    // probes leave, as flooders on other machines would.
    let flooding = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| {
            // SAFETY: plain syscalls; a thread id for PRIO_PROCESS renices that thread alone.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
        })
        .enable_all()
        .build()?;
    let rss_before = process.rss_kib()?;
    let peak = process.watch_peak();
    let (mut outcomes, mut refused, mut failed) = (Vec::new(), BTreeMap::new(), 0);
    let (mut cpu, mut flooded) = (0.0, Duration::ZERO);
    // Each round: a quiet window of `baseline`, then the flood window; the router's drain
    // and `pause` (the flooders' addresses serving out their penalty) separate rounds.
    let mut windows = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(pause).await;
        }
        let quiet_start = if round == 0 { start } else { Instant::now() };
        tokio::time::sleep(baseline).await;
        let cpu_before = process.cpu_seconds()?;
        let flood_start = Instant::now();
        let flood_end = flood_start + seconds;
        let plan = Plan { router, kind, rate, recv_buffer, flood_end };
        let tasks: Vec<_> = (0..flooders)
            .map(|k| {
                let credentials = credentials.clone();
                flooding.spawn(async move {
                    let user = format!("flood{k}");
                    let mut attempts = Attempts::default();
                    while Instant::now() < flood_end {
                        match flood_once(&credentials, plan, (probes + k, sources.of(k)), &user).await {
                            Ok(outcome) => attempts.outcomes.push(outcome),
                            Err(e) => match e.downcast_ref::<raw::Refused>() {
                                Some(refused) => *attempts.refused.entry(refused.status).or_default() += 1,
                                None => attempts.failed += 1,
                            },
                        }
                    }
                    attempts
                })
            })
            .collect();
        for task in tasks {
            let attempts = task.await?;
            outcomes.extend(attempts.outcomes);
            for (status, n) in attempts.refused {
                *refused.entry(status).or_insert(0usize) += n;
            }
            failed += attempts.failed;
        }
        // With `--flooders 0` the window still lasts: an A/A run, the noise of the measure.
        tokio::time::sleep_until(flood_end).await;
        let elapsed = flood_start.elapsed();
        cpu += process.cpu_seconds()? - cpu_before;
        flooded += elapsed;
        windows.push((quiet_start..flood_start, flood_start..flood_start + elapsed));
        tokio::time::sleep(SETTLE).await;
    }
    flooding.shutdown_background();
    let rss_after = process.rss_kib()?;
    let rss_peak = peak.peak().max(rss_after);
    stop.store(true, Ordering::Relaxed);
    for probe in probing {
        probe.abort();
    }

    let rtts = std::mem::take(&mut *rtts.lock().unwrap());
    // The round trips sent within any of `ranges`.
    let pooled = |ranges: &[&Range<Instant>]| {
        Summary::of(
            rtts.iter().filter(|(sent, _)| ranges.iter().any(|r| r.contains(sent))).map(|(_, rtt)| *rtt).collect(),
        )
    };
    let quiet: Vec<_> = windows.iter().map(|(quiet, _)| quiet).collect();
    let during: Vec<_> = windows.iter().map(|(_, during)| during).collect();
    let (rtt_before, rtt_during) = (pooled(&quiet), pooled(&during));
    // Rounds' own p99s, quiet / flooded, so that a pooled figure can be read against the
    // spread of the quiet windows.
    let by_round = match rounds {
        1 => String::new(),
        _ => {
            let p99s: Vec<String> = windows
                .iter()
                .map(|(quiet, during)| format!("{:.3}/{:.3}", pooled(&[quiet]).p99, pooled(&[during]).p99))
                .collect();
            format!(" rounds={rounds} p99_by_round_ms={}", p99s.join(","))
        }
    };
    let mut codes = BTreeMap::new();
    for outcome in &outcomes {
        *codes.entry(outcome.code).or_insert(0usize) += 1;
    }
    let codes: Vec<String> = codes
        .iter()
        .map(|(code, n)| format!("{}:{n}", code.map_or_else(|| "none".to_string(), |c| c.to_string())))
        .collect();
    let closed = outcomes.iter().filter(|o| o.code.is_some()).count();
    let reset_after_close = outcomes.iter().filter(|o| o.code.is_some() && o.reset).count();
    let reset_without_close = outcomes.iter().filter(|o| o.code.is_none() && o.reset).count();
    let unclosed = outcomes.iter().filter(|o| o.closed_after.is_none()).count();
    let times = outcomes.iter().filter_map(|o| o.closed_after).map(|t| t.as_secs_f64() * 1000.0).collect();
    let refused_total: usize = refused.values().sum();
    let refused: Vec<String> = refused.iter().map(|(status, n)| format!("{status}:{n}")).collect();
    println!(
        "flood kind={} rate={} recv_buffer={} flooders={flooders} sources={} seconds={:.1} connections={} \
         closed={closed} codes={} reset_after_close={reset_after_close} reset_without_close={reset_without_close} \
         unclosed={unclosed} refused={refused_total} ({}) handshake_failed={failed} time_to_close {} | \
         probes={probes} every={}ms errors={} rtt_before {} rtt_during {}{by_round} | \
         rss_before={rss_before}KiB rss_peak={rss_peak}KiB rss_after={rss_after}KiB router_cpu={cpu:.2}s ({:.0}% of a core)",
        kind.name(),
        if rate == 0 { "max".to_string() } else { format!("{rate}/s") },
        recv_buffer.map_or_else(|| "default".to_string(), |b| b.to_string()),
        sources.name(),
        flooded.as_secs_f64() / rounds as f64,
        outcomes.len(),
        codes.join(","),
        if refused.is_empty() { "none".to_string() } else { refused.join(",") },
        Summary::of(times),
        probe_interval.as_millis(),
        probe_errors.load(Ordering::Relaxed),
        rtt_before,
        rtt_during,
        cpu / flooded.as_secs_f64() * 100.0,
    );
    Ok(())
}

/// One flooding connection of client `i` from `from`, from the handshake until the router
/// ended it, or [`GIVE_UP`] (paced: the end of the flood window, if later). A refused
/// handshake is a [`raw::Refused`] error.
async fn flood_once(
    credentials: &Credentials,
    plan: Plan,
    (i, from): (usize, IpAddr),
    user: &str,
) -> anyhow::Result<Outcome> {
    let Plan { router, kind, rate, recv_buffer, flood_end } = plan;
    let (stream, leftover) = credentials.connect_raw(router, (i, Some(from)), user, Role::Mobile, recv_buffer).await?;
    let fd = stream.as_raw_fd();
    let (read_half, mut write_half) = stream.into_split();
    let (opening, one, batch_bytes) = kind.frames(user);
    let first_byte = Instant::now();
    let give_up = if rate > 0 { flood_end.max(first_byte + GIVE_UP) } else { first_byte + GIVE_UP };
    let mut writer = tokio::spawn(async move {
        let mut result = write_half.write_all(&opening).await;
        if rate == 0 {
            let batch = raw::repeated(&one, batch_bytes);
            while result.is_ok() {
                result = write_half.write_all(&batch).await;
            }
        } else {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
            while result.is_ok() {
                ticks.tick().await;
                result = write_half.write_all(&one).await;
            }
        }
        result
    });

    let mut reader = Reader::new(read_half, leftover);
    let mut closed_at = None;
    let mut code = None;
    let mut reset = false;
    let _ = timeout_at(give_up, async {
        if !kind.reads() {
            // Read nothing until the router ends its stream; then look for its Close
            // frame behind the pongs.
            hung_up(fd).await;
            closed_at = Some(Instant::now());
        }
        loop {
            match reader.frame(2).await {
                Ok(Some(frame)) => {
                    if let Some(c) = frame.close_code() {
                        code.get_or_insert(c);
                        closed_at.get_or_insert_with(Instant::now);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    reset = e.kind() == io::ErrorKind::ConnectionReset;
                    break;
                }
            }
        }
    })
    .await;
    // A flooder writes until the router drops it: a failed write means a reset.
    match timeout_at(give_up, &mut writer).await {
        Ok(Ok(Err(_))) => reset = true,
        Ok(_) => {}
        Err(_) => writer.abort(),
    }
    Ok(Outcome { closed_after: closed_at.map(|at: Instant| at - first_byte), code, reset })
}

/// Waits until the peer has ended its side of the stream (FIN) or reset it, without
/// reading anything.
async fn hung_up(fd: RawFd) {
    loop {
        let mut poll = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd; the stream (and so the fd) outlives this call.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
