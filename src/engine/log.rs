//! What the stores' change logs answer: the transitions a dashboard missed since its
//! position, or why they cannot be told.
//!
//! Each store keeps the latest transitions of each shard, in order, one entry per
//! transition, appended atomically with deciding it (Redis: a capped stream per shard,
//! `{prefix}log`, see `lua/prelude.lua`; memory: a ring). The cap is
//! `--change-log-entries` per shard. Nothing is published that is not in it, which makes
//! it the outbox webhooks are delivered from too ([`super::outbox`]).

use crate::{
    position::Position,
    presence::{Groups, PresenceUpdate},
};

/// Entries each shard's change log keeps unless configured otherwise.
pub const DEFAULT_LOG_ENTRIES: usize = 10_000;

/// One logged transition, and the groups its user was in before it (a dashboard whose
/// scope it leaves is shown the user leaving).
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub update: PresenceUpdate,
    pub before: Groups,
}

/// Why a position cannot be resumed from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// It belongs to another history: Redis lost its data, or the memory engine restarted,
    /// since (or the deployment's number of shards differs).
    Epoch,
    /// Transitions after it are no longer in the log (trimmed to its cap).
    TooOld,
    /// It names transitions the log never had: not a position of this history.
    Ahead,
}

impl Unserved {
    /// As the `result` label of `presence_dashboard_resumes_total` has it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unserved::Epoch => "epoch",
            Unserved::TooOld => "too_old",
            Unserved::Ahead => "ahead",
        }
    }
}

/// The transitions after a position, up to the log's head when read (`head`), every
/// shard's in order; or why not.
pub type Changes = Result<(Vec<LoggedChange>, Position), Unserved>;

/// The memory engine's change log: one shard, a bounded ring, and an epoch made when the
/// engine starts (its state starts empty then).
pub(crate) struct Ring {
    epoch: String,
    cap: usize,
    /// The last transition's number.
    head: u64,
    entries: std::collections::VecDeque<LoggedChange>,
}

impl Ring {
    /// An empty log keeping the last `cap` transitions (at least one), in a new epoch:
    /// the clock in nanoseconds and a count of the logs made by this process, unique to
    /// this start.
    pub(crate) fn new(cap: usize) -> Ring {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let epoch = format!("{nanos}-{}", MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        Ring { epoch, cap: cap.max(1), head: 0, entries: std::collections::VecDeque::new() }
    }

    /// Numbers `update` with the next sequence number and logs it; `before` is the groups
    /// of its user's previous transition.
    pub(crate) fn append(&mut self, update: &mut PresenceUpdate, before: Groups) {
        self.head += 1;
        update.seq = Some(self.head);
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(LoggedChange { update: update.clone(), before });
    }

    /// The position of everything logged so far.
    pub(crate) fn head(&self) -> Position {
        Position::new(&[&self.epoch], vec![self.head])
    }

    /// Up to `max` transitions after the one numbered `after`, in order, and how many
    /// after it were trimmed already (a reader that fell more than the cap behind).
    pub(crate) fn after(&self, after: u64, max: usize) -> (Vec<LoggedChange>, u64) {
        let kept = self.kept();
        let skip = after.saturating_sub(kept).min(self.entries.len() as u64) as usize;
        (self.entries.range(skip..).take(max).cloned().collect(), kept.saturating_sub(after))
    }

    /// The number after which the ring still holds every transition.
    pub(crate) fn kept(&self) -> u64 {
        self.head - self.entries.len() as u64
    }

    /// The transitions after `from`, up to the head.
    pub(crate) fn since(&self, from: &Position) -> Changes {
        let head = self.head();
        if from.epoch != head.epoch || from.seqs.len() != 1 {
            return Err(Unserved::Epoch);
        }
        let after = from.seqs[0];
        if after > self.head {
            return Err(Unserved::Ahead);
        }
        let missed = (self.head - after) as usize;
        if missed > self.entries.len() {
            return Err(Unserved::TooOld);
        }
        Ok((self.entries.range(self.entries.len() - missed..).cloned().collect(), head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{Cause, Status, UserPresence};

    fn update(user: &str) -> PresenceUpdate {
        let mut presence = UserPresence::unknown(crate::id::Id::parse(user).unwrap());
        presence.status = Status::Online;
        PresenceUpdate { presence, cause: Cause::Connect, timestamp: 0, seq: None, shard: 0 }
    }

    #[test]
    fn a_ring_serves_what_it_still_holds() {
        let mut ring = Ring::new(2);
        let start = ring.head();
        for user in ["a", "b", "c"] {
            ring.append(&mut update(user), Groups::default());
        }
        assert_eq!(ring.since(&start).err(), Some(Unserved::TooOld), "the first was trimmed");
        let after_a = Position { seqs: vec![1], ..start.clone() };
        let (changes, head) = ring.since(&after_a).unwrap();
        let users: Vec<&str> = changes.iter().map(|c| c.update.presence.user_id.as_str()).collect();
        assert_eq!(users, ["b", "c"]);
        assert_eq!(head.seqs, [3]);
        assert!(ring.since(&head).unwrap().0.is_empty());
        assert_eq!(ring.kept(), 1, "a position at 1 or later is served");
        assert_eq!(ring.since(&Position { seqs: vec![4], ..start.clone() }).err(), Some(Unserved::Ahead));
        assert_eq!(Ring::new(2).since(&head).err(), Some(Unserved::Epoch), "another start");
    }

    #[test]
    fn a_ring_hands_out_what_follows_a_number_and_counts_what_was_trimmed() {
        let mut ring = Ring::new(2);
        assert!(ring.after(0, 10).0.is_empty());
        for user in ["a", "b", "c"] {
            ring.append(&mut update(user), Groups::default());
        }
        let users = |(changes, lost): (Vec<LoggedChange>, u64)| {
            (changes.iter().map(|c| c.update.presence.user_id.to_string()).collect::<Vec<_>>(), lost)
        };
        assert_eq!(users(ring.after(0, 10)), (vec!["b".into(), "c".into()], 1), "a was trimmed");
        assert_eq!(users(ring.after(1, 1)), (vec!["b".into()], 0));
        assert_eq!(users(ring.after(3, 10)), (vec![], 0));
    }
}
