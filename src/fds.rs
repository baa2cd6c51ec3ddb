//! File descriptors: every WebSocket, every connection still speaking HTTP and every Redis
//! connection holds one, and the process may open only `RLIMIT_NOFILE` of them. Past that
//! limit `accept` fails (EMFILE) and new clients, `/healthz` included, wait in the backlog
//! without an answer. So at start the soft limit is raised to the hard one, and the
//! WebSocket cap is lowered to what the limit leaves after a reserve for handshakes and
//! the rest: at the cap, extra upgrades get 503 `too_many_connections` while operators and
//! the API still get answers.

use tokio::sync::Semaphore;

use crate::config::Config;

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` in force: descriptors this process may hold at once.
    pub nofile: u64,
    /// Descriptors kept from WebSockets: `--max-handshakes` plus `--fd-reserve`.
    pub reserve: u64,
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
         (--max-handshakes + --fd-reserve): raise `ulimit -n` or lower those flags"
    )]
    NoRoom { nofile: u64, reserve: u64 },
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

/// WebSockets may use what `nofile` leaves after `max_handshakes` and `fd_reserve`, and
/// never more than `configured`.
pub fn budget(nofile: u64, configured: usize, max_handshakes: usize, fd_reserve: usize) -> Result<Budget, FdError> {
    let reserve = (max_handshakes as u64).saturating_add(fd_reserve as u64);
    let room = nofile.saturating_sub(reserve);
    if room == 0 {
        return Err(FdError::NoRoom { nofile, reserve });
    }
    let max_connections = usize::try_from(room).unwrap_or(usize::MAX).min(configured).min(Semaphore::MAX_PERMITS);
    Ok(Budget { nofile, reserve, configured, max_connections })
}

/// At start: raises the open-file limit, lowers `config.max_connections` to the budget
/// and logs both the configured and the effective values.
pub fn apply(config: &mut Config) -> Result<Budget, FdError> {
    let limit = raise_nofile()?;
    let budget = budget(limit.now, config.max_connections, config.max_handshakes, config.fd_reserve)?;
    tracing::info!(
        nofile_before = limit.before,
        nofile = limit.now,
        nofile_hard = limit.hard,
        reserve = budget.reserve,
        max_handshakes = config.max_handshakes,
        fd_reserve = config.fd_reserve,
        configured_max_connections = budget.configured,
        effective_max_connections = budget.max_connections,
        "open-file limit: WebSockets capped at the effective max_connections"
    );
    config.max_connections = budget.max_connections;
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_defaults_leave_most_of_a_20000_limit_to_websockets() {
        let c = Config::try_parse_from(["presence-router", "--jwt-secret", "s"]).unwrap();
        let b = budget(20_000, c.max_connections, c.max_handshakes, c.fd_reserve).unwrap();
        assert!(b.max_connections >= 18_000, "{b:?}");
        assert_eq!(b.max_connections as u64 + b.reserve, 20_000);
    }

    #[test]
    fn a_lower_configured_cap_is_kept() {
        let b = budget(20_000, 500, 1024, 128).unwrap();
        assert_eq!((b.max_connections, b.configured), (500, 500));
    }

    #[test]
    fn a_limit_within_the_reserve_is_refused() {
        assert!(matches!(budget(1_000, 100_000, 1024, 128), Err(FdError::NoRoom { nofile: 1_000, reserve: 1152 })));
        assert!(matches!(budget(1_152, 100_000, 1024, 128), Err(FdError::NoRoom { .. })));
        assert_eq!(budget(1_153, 100_000, 1024, 128).unwrap().max_connections, 1);
    }

    #[test]
    fn an_unlimited_limit_keeps_the_configured_cap_within_the_semaphore() {
        assert_eq!(budget(u64::MAX, 100_000, 1024, 128).unwrap().max_connections, 100_000);
        assert_eq!(budget(u64::MAX, usize::MAX, 1, 1).unwrap().max_connections, Semaphore::MAX_PERMITS);
    }
}
