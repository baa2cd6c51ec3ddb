//! File descriptors: every WebSocket, every connection still speaking HTTP, every event
//! stream and every Redis connection holds one, and the process may open only
//! `RLIMIT_NOFILE` of them. Past that limit `accept` fails (EMFILE) and new clients,
//! `/healthz` included, wait in the backlog without an answer. So at start the soft limit
//! is raised to the hard one, and the WebSocket cap is lowered to what the limit leaves
//! after a reserve for handshakes, event streams and the rest: at the cap, extra upgrades
//! get 503 `too_many_connections` while operators and the API still get answers.
//!
//! The reserve's defaults (1,024 handshakes, 64 event streams, 128 others) suit a limit in
//! the tens of thousands; under a small limit (a shell's 1,024, a container's 512) they
//! would leave nothing for WebSockets. So a default that was not set explicitly is lowered
//! to a share of the limit ([`HANDSHAKES_SHARE`], [`FD_RESERVE_SHARE`],
//! [`EVENT_STREAMS_SHARE`]), never below a floor, and the router refuses to start only
//! when even that leaves no descriptor for WebSockets. Values set explicitly are kept as
//! given.

use tokio::sync::Semaphore;

use crate::{
    config::{Config, DEFAULT_MAX_CONNECTIONS},
    http::events::DEFAULT_MAX_STREAMS,
};

/// `--max-handshakes` when not set, under an open-file limit of at least 4,096.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// `--fd-reserve` when not set, under an open-file limit of at least 1,024.
pub const DEFAULT_FD_RESERVE: usize = 128;
/// A default `--max-handshakes` is at most this fraction (1/n) of the open-file limit.
pub const HANDSHAKES_SHARE: u64 = 4;
/// A default `--fd-reserve` is at most this fraction (1/n) of the open-file limit.
pub const FD_RESERVE_SHARE: u64 = 8;
/// A default `--event-streams` is at most this fraction (1/n) of the open-file limit.
pub const EVENT_STREAMS_SHARE: u64 = 8;
/// A scaled `--event-streams` is never below this many streams.
pub const MIN_EVENT_STREAMS: usize = 4;
/// A scaled `--max-handshakes` is never below this many connections: enough for probes and
/// a few clients handshaking at once.
pub const MIN_MAX_HANDSHAKES: usize = 16;
/// A scaled `--fd-reserve` is never below this many descriptors: stdio, the listeners, the
/// runtime's own (epoll, wakers, signals), a handful of Redis connections, the 16
/// connections of `--metrics-addr` and a socket being answered 503.
pub const MIN_FD_RESERVE: usize = 32;

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` in force: descriptors this process may hold at once.
    pub nofile: u64,
    /// `--max-handshakes` in force: as set, or the default scaled to `nofile`.
    pub max_handshakes: usize,
    /// `--fd-reserve` in force: as set, or the default scaled to `nofile`.
    pub fd_reserve: usize,
    /// `--event-streams` in force: as set, or the default scaled to `nofile`.
    pub event_streams: usize,
    /// Descriptors kept from WebSockets: `max_handshakes`, `fd_reserve` and `event_streams`.
    pub reserve: u64,
    /// Whether a default (`--max-handshakes`, `--fd-reserve` or `--event-streams`) was
    /// lowered to fit `nofile`.
    pub scaled: bool,
    /// `--max-connections` as configured.
    pub configured: usize,
    /// The WebSocket cap in force: the configured one, or less when the limit is lower.
    pub max_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("reading RLIMIT_NOFILE: {0}")]
    Limit(#[source] std::io::Error),
    #[error(
        "the open-file limit ({nofile}) leaves no descriptor for WebSockets after the reserve of {reserve} \
         (--max-handshakes {max_handshakes} + --fd-reserve {fd_reserve} + --event-streams {event_streams}; defaults \
         are lowered to fit, values set explicitly are not): raise `ulimit -n` or lower those flags"
    )]
    NoRoom { nofile: u64, reserve: u64, max_handshakes: usize, fd_reserve: usize, event_streams: usize },
}
/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (an unprivileged process may), so
/// the router is not held to a shell's default of 1024. If raising fails, the soft limit
/// stays and is what the budget uses.
pub fn raise_nofile() -> Result<NoFile, FdError> {
    let (before, hard) = rlimit::Resource::NOFILE.get().map_err(FdError::Limit)?;
    let now = rlimit::increase_nofile_limit(hard).unwrap_or_else(|e| {
        tracing::warn!(error = %e, soft = before, hard, "could not raise the open-file limit; keeping the soft one");
        before
    });
    Ok(NoFile { before, now, hard })
}

/// What the flags ask of the open-file limit: each `None` when not set.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// `--max-connections`.
    pub max_connections: usize,
    pub max_handshakes: Option<usize>,
    pub fd_reserve: Option<usize>,
    pub event_streams: Option<usize>,
}

impl Asked {
    pub fn of(config: &Config) -> Asked {
        Asked {
            max_connections: config.max_connections,
            max_handshakes: config.max_handshakes,
            fd_reserve: config.fd_reserve,
            event_streams: config.event_streams,
        }
    }
}

/// Shares out `nofile`: `max_handshakes`, `fd_reserve` and `event_streams` as set, or
/// their defaults lowered to a share of `nofile`; WebSockets get what is left, never more
/// than `max_connections`. Refused when nothing is left.
pub fn budget(nofile: u64, asked: Asked) -> Result<Budget, FdError> {
    let configured = asked.max_connections;
    let (max_handshakes, handshakes_scaled) =
        fit(asked.max_handshakes, DEFAULT_MAX_HANDSHAKES, nofile / HANDSHAKES_SHARE, MIN_MAX_HANDSHAKES);
    let (fd_reserve, reserve_scaled) =
        fit(asked.fd_reserve, DEFAULT_FD_RESERVE, nofile / FD_RESERVE_SHARE, MIN_FD_RESERVE);
    let (event_streams, streams_scaled) =
        fit(asked.event_streams, DEFAULT_MAX_STREAMS, nofile / EVENT_STREAMS_SHARE, MIN_EVENT_STREAMS);
    let reserve = (max_handshakes as u64).saturating_add(fd_reserve as u64).saturating_add(event_streams as u64);
    let room = nofile.saturating_sub(reserve);
    if room == 0 {
        return Err(FdError::NoRoom { nofile, reserve, max_handshakes, fd_reserve, event_streams });
    }
    let max_connections = usize::try_from(room).unwrap_or(usize::MAX).min(configured).min(Semaphore::MAX_PERMITS);
    Ok(Budget {
        nofile,
        max_handshakes,
        fd_reserve,
        event_streams,
        reserve,
        scaled: handshakes_scaled || reserve_scaled || streams_scaled,
        configured,
        max_connections,
    })
}

/// A value set explicitly as is; otherwise `default`, lowered to `share` but not below
/// `floor`. The flag says whether it was lowered.
fn fit(set: Option<usize>, default: usize, share: u64, floor: usize) -> (usize, bool) {
    match set {
        Some(value) => (value, false),
        None => {
            let fitted = usize::try_from(share).unwrap_or(usize::MAX).max(floor);
            if fitted < default { (fitted, true) } else { (default, false) }
        }
    }
}

/// At start: raises the open-file limit, settles `--max-handshakes`, `--fd-reserve`,
/// `--event-streams` and `--max-connections` in `config` to the budget, and logs it: at
/// WARN when a default was lowered or WebSockets get fewer than `--max-connections`, as
/// either means this router holds less than its flags say.
pub fn apply(config: &mut Config) -> Result<Budget, FdError> {
    let limit = raise_nofile()?;
    let budget = budget(limit.now, Asked::of(config))?;
    macro_rules! log_budget {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                nofile_before = limit.before,
                nofile = limit.now,
                nofile_hard = limit.hard,
                max_handshakes = budget.max_handshakes,
                fd_reserve = budget.fd_reserve,
                event_streams = budget.event_streams,
                reserve = budget.reserve,
                configured_max_connections = budget.configured,
                effective_max_connections = budget.max_connections,
                $message
            )
        };
    }
    if budget.scaled {
        log_budget!(
            warn,
            "open-file limit: the default handshake cap, fd reserve or event-stream cap were lowered to fit it, and \
             WebSockets are capped below --max-connections; raise `ulimit -n` for more"
        );
    } else if budget.max_connections < budget.configured && budget.configured != DEFAULT_MAX_CONNECTIONS {
        log_budget!(warn, "open-file limit: WebSockets are capped below --max-connections; raise `ulimit -n` for more");
    } else if budget.max_connections < budget.configured {
        // The default asks for more than most machines allow: the limit deciding is normal.
        log_budget!(info, "open-file limit: WebSockets capped at what it leaves; raise `ulimit -n` for more");
    } else {
        log_budget!(info, "open-file limit: WebSockets capped at --max-connections");
    }
    config.max_handshakes = Some(budget.max_handshakes);
    config.fd_reserve = Some(budget.fd_reserve);
    config.event_streams = Some(budget.event_streams);
    config.max_connections = budget.max_connections;
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// What a router started with only `max_handshakes` and `fd_reserve` set asks for.
    fn ask(max_connections: usize, max_handshakes: Option<usize>, fd_reserve: Option<usize>) -> Asked {
        Asked { max_connections, max_handshakes, fd_reserve, event_streams: None }
    }

    /// The budget with default flags: (handshakes, fd reserve, event streams, WebSockets, scaled).
    fn defaults(nofile: u64) -> (usize, usize, usize, usize, bool) {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        let b = budget(nofile, Asked::of(&c)).unwrap();
        assert_eq!(b.max_connections as u64 + b.reserve, nofile, "{b:?}");
        (b.max_handshakes, b.fd_reserve, b.event_streams, b.max_connections, b.scaled)
    }

    #[test]
    fn the_defaults_leave_most_of_a_20000_limit_to_websockets() {
        assert_eq!(defaults(20_000), (1024, 128, 64, 18_784, false));
    }

    #[test]
    fn under_a_small_limit_the_defaults_are_scaled_to_a_quarter_and_eighths() {
        assert_eq!(
            defaults(1024),
            (256, 128, 64, 576, true),
            "the reserve's and streams' defaults are already an eighth"
        );
        assert_eq!(defaults(512), (128, 64, 64, 256, true));
        assert_eq!(defaults(256), (64, 32, 32, 128, true));
        assert_eq!(defaults(4096), (1024, 128, 64, 2880, false), "the smallest limit that needs no scaling");
    }

    #[test]
    fn scaled_defaults_keep_their_floors_and_a_limit_within_them_is_refused() {
        assert_eq!(defaults(100), (25, MIN_FD_RESERVE, 12, 31, true));
        assert_eq!(defaults(60), (MIN_MAX_HANDSHAKES, MIN_FD_RESERVE, 7, 5, true));
        assert_eq!(defaults(55), (16, 32, 6, 1, true));
        let refused = budget(54, ask(100_000, None, None));
        assert!(
            matches!(
                refused,
                Err(FdError::NoRoom { nofile: 54, reserve: 54, max_handshakes: 16, fd_reserve: 32, event_streams: 6 })
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn every_event_stream_is_kept_a_descriptor() {
        let b = budget(512, Asked { event_streams: Some(100), ..ask(100_000, Some(64), Some(64)) }).unwrap();
        assert_eq!((b.event_streams, b.reserve, b.max_connections, b.scaled), (100, 228, 284, false));
        let refused = budget(512, Asked { event_streams: Some(400), ..ask(100_000, Some(64), Some(64)) });
        assert!(matches!(refused, Err(FdError::NoRoom { reserve: 528, event_streams: 400, .. })), "{refused:?}");
    }

    #[test]
    fn values_set_explicitly_are_kept_whatever_the_limit() {
        let b = budget(512, ask(100_000, Some(64), Some(64))).unwrap();
        assert_eq!((b.max_handshakes, b.fd_reserve, b.max_connections, b.scaled), (64, 64, 320, false));
        // Only the flag left unset is scaled.
        let b = budget(512, ask(100_000, Some(300), None)).unwrap();
        assert_eq!((b.max_handshakes, b.fd_reserve, b.max_connections, b.scaled), (300, 64, 84, true));
        let b = budget(20_000, ask(100_000, Some(4096), Some(1000))).unwrap();
        assert_eq!((b.max_handshakes, b.fd_reserve, b.max_connections), (4096, 1000, 14_840));
    }

    #[test]
    fn a_lower_configured_cap_is_kept() {
        let b = budget(20_000, ask(500, None, None)).unwrap();
        assert_eq!((b.max_connections, b.configured), (500, 500));
    }

    #[test]
    fn a_limit_within_an_explicit_reserve_is_refused() {
        let refused = budget(1_000, ask(100_000, Some(1024), Some(128)));
        assert!(matches!(refused, Err(FdError::NoRoom { nofile: 1_000, reserve: 1216, .. })), "{refused:?}");
        assert!(matches!(budget(1_216, ask(100_000, Some(1024), Some(128))), Err(FdError::NoRoom { .. })));
        assert_eq!(budget(1_217, ask(100_000, Some(1024), Some(128))).unwrap().max_connections, 1);
    }

    #[test]
    fn an_unlimited_limit_keeps_the_configured_cap_within_the_semaphore() {
        assert_eq!(budget(u64::MAX, ask(100_000, None, None)).unwrap().max_connections, 100_000);
        let b = budget(u64::MAX, ask(usize::MAX, Some(1), Some(1))).unwrap();
        assert_eq!(b.max_connections, Semaphore::MAX_PERMITS);
    }
}
