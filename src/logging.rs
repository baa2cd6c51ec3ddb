//! The log: its format (`--log-format`), its filter (`RUST_LOG`), the line a refused
//! handshake writes (at most [`REJECTIONS_PER_SECOND`] a second) and the one a failed start
//! writes. docs/OPERATIONS.md ("Logs") lists the lines and their fields.

mod throttle;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing_subscriber::EnvFilter;

pub use throttle::Throttle;

/// What `RUST_LOG` is when unset, blank or invalid.
pub const DEFAULT_FILTER: &str = "info";

/// Refused handshakes logged per second at most, over all clients: a flood of refusals
/// is counted into the next line's `suppressed` instead of written out
/// (`presence_handshake_rejections_total` and `presence_http_refused_total` count all).
pub const REJECTIONS_PER_SECOND: u32 = 10;

/// The target of refused-handshake lines, so `RUST_LOG` can quiet them on their own
/// (`RUST_LOG=info,presence_router::handshake=warn`).
pub const HANDSHAKE_TARGET: &str = "presence_router::handshake";

static REJECTIONS: Throttle = Throttle::new(REJECTIONS_PER_SECOND, Duration::from_secs(1));

/// How log lines are written to standard error (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, the connection's span fields, target, message and
    /// fields as `key=value`.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's
    /// fields, and the connection's fields under `span`.
    Json,
}

/// Installs the global subscriber: `format` on standard error, filtered by `RUST_LOG`
/// ([`DEFAULT_FILTER`] when it is unset or blank; an invalid one is reported, once, at WARN).
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").ok().filter(|d| !d.trim().is_empty());
    let (filter, invalid) = match directives.as_deref().map(EnvFilter::try_new) {
        None => (EnvFilter::new(DEFAULT_FILTER), None),
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (EnvFilter::new(DEFAULT_FILTER), Some(e)),
    };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LogWriter);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
    if let Some(error) = invalid {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at {DEFAULT_FILTER}");
    }
}

/// Logs a refused connection or WebSocket handshake at INFO (target [`HANDSHAKE_TARGET`]):
/// the HTTP `status`, the `reason` (the label of the counter it was counted under) and the
/// client's address when known. At most [`REJECTIONS_PER_SECOND`] lines a second; each
/// says in `suppressed` how many were not written since the one before.
pub fn rejected(status: u16, reason: &str, remote: Option<IpAddr>) {
    if !tracing::enabled!(target: HANDSHAKE_TARGET, tracing::Level::INFO) {
        return;
    }
    if let Some(suppressed) = REJECTIONS.ready(Instant::now()) {
        let remote = remote.map(tracing::field::display);
        tracing::info!(target: HANDSHAKE_TARGET, status, reason, remote, suppressed, "handshake rejected");
    }
}

/// Reports why the router stopped (or could not start) as one line naming what failed and
/// every cause (`cannot listen on 0.0.0.0:3000: Address already in use (os error 98)`):
/// at ERROR in the log's format, or on standard error when `RUST_LOG` silences errors.
pub fn fatal(error: &anyhow::Error) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{error:#}");
    } else {
        eprintln!("error: {error:#}");
    }
}

/// Standard error for the log, ignoring write errors: when whoever reads it goes away
/// (`router 2>&1 | head`), the subscriber would report the failed write with `eprintln!`,
/// which panics on a closed stderr and takes down the task that logged (the signal task
/// among them, so SIGTERM was ignored). Logs are lost then; the router keeps working.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
