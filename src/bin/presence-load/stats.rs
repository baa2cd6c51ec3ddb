//! Summaries of samples, and the router's memory and CPU and the kernel's TCP memory from
//! /proc.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;

/// Median, 99th percentile and maximum of a set of samples (milliseconds).
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(mut samples: Vec<f64>) -> Summary {
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples.get(((samples.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
        Summary { n: samples.len(), p50: at(0.5), p99: at(0.99), max: samples.last().copied().unwrap_or(f64::NAN) }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n={} p50={:.3}ms p99={:.3}ms max={:.3}ms", self.n, self.p50, self.p99, self.max)
    }
}

/// A process observed through /proc.
pub struct Process {
    pub pid: u32,
}

impl Process {
    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// User + system CPU time consumed so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are fields 14, 15.
        let rest = &stat[stat.rfind(')').context("stat")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / clock_ticks_per_second())
    }
}

/// CPU seconds consumed so far by all of `processes` together.
pub fn cpu_seconds_sum(processes: &[Process]) -> anyhow::Result<f64> {
    processes.iter().map(Process::cpu_seconds).sum()
}

/// The highest RSS of a process seen since [`Process::watch_peak`], polled every 10 ms.
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Process {
    /// Starts polling the RSS for its peak.
    pub fn watch_peak(&self) -> PeakRss {
        let process = Process { pid: self.pid };
        let peak = Arc::new(AtomicU64::new(process.rss_kib().unwrap_or(0)));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            while let Ok(rss) = process.rss_kib() {
                seen.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        PeakRss { peak, task }
    }
}

impl PeakRss {
    /// KiB.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Kernel memory held by all TCP sockets of this network namespace (both ends of every
/// loopback connection, the tool's included), in KiB: `/proc/net/sockstat`'s `TCP: … mem`,
/// which counts pages.
pub fn tcp_mem_kib() -> anyhow::Result<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = sockstat.lines().find(|l| l.starts_with("TCP:")).context("TCP line in sockstat")?;
    let mut fields = line.split_whitespace();
    fields.find(|f| *f == "mem").context("TCP mem in sockstat")?;
    let pages: u64 = fields.next().context("TCP mem value")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page.max(1) as u64 / 1024)
}

/// `getconf CLK_TCK`; 100 on Linux unless configured otherwise.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
