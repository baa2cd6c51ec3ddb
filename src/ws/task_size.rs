//! What every idle connection pays for its task, pinned so that it cannot grow unnoticed.
//!
//! A connection's task (its future, in a tokio task cell) and the structs it holds are in
//! every connection, busy or idle, so each byte here is a byte per connection of the
//! router's resident memory (the idle figure in `docs/BENCHMARKS.md`, at most 6.8 KiB per
//! connection). State most connections never use belongs behind an `Option<Box<_>>`, and
//! rare handlers behind `Box::pin`, rather than inline.
//!
//! The future's bound is the debug profile's size (futures are laid out differently with
//! and without optimisations; structs are not). When one of these tests fails, the task grew:
//! box what made it grow, or, if every connection really needs it, raise the bound and
//! re-measure `presence-load idle`. (The bounds took 8 bytes more, and the future 24, for
//! a session's chosen activity, a pointer kept by every mobile session.)

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::super::{connection::Connection, rate_limit::Budget, socket::Socket};
    use crate::presence::Session;

    /// The size of what `f` returns (for an async fn: its future), without calling it.
    fn output_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        size_of::<R>()
    }

    /// The connection's future is spawned as it is: it holds the connection, its socket
    /// and whatever lives across its awaits, once each.
    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "the bound is the debug profile's size")]
    fn a_connections_task_stays_within_its_size() {
        let run = output_size(Connection::run);
        assert!(run <= 2264, "the connection's future is {run} bytes, more than 2264");
    }

    #[test]
    fn what_a_connection_holds_stays_within_its_size() {
        let sizes = [
            ("Connection", size_of::<Connection>(), 304),
            ("Socket", size_of::<Socket>(), 344),
            ("Budget", size_of::<Budget>(), 152),
            ("Session", size_of::<Session>(), 96),
        ];
        for (name, size, bound) in sizes {
            assert!(size <= bound, "{name} is {size} bytes, more than {bound}");
        }
    }
}
