//! The hub view's position in the store's change log: per shard, the number up to which
//! every transition has been applied to the view (transitions from different routers may
//! arrive out of order, so this is the end of the unbroken run received, not the highest
//! number seen).
//!
//! A rebuild of the view sets it to the log's head read before the store's users: those
//! transitions are all in what was read. It is unknown (no frame carries one, and nobody
//! resumes from it) until the first rebuild.

use std::{collections::BTreeSet, sync::Arc};

use crate::position::Position;

/// Numbers seen past a missing one that are tracked at most per shard; past this the
/// position stops moving until the next rebuild (the router resyncs on such a gap anyway).
const MAX_AHEAD: usize = 4096;

#[derive(Default)]
pub(super) struct ViewPosition {
    /// `None` until the first rebuild.
    known: Option<Known>,
}

struct Known {
    epoch: u64,
    shards: Vec<Shard>,
    /// The token of the position, made when it moves.
    token: Arc<str>,
}

#[derive(Default)]
struct Shard {
    through: u64,
    /// Numbers received beyond `through + 1`.
    ahead: BTreeSet<u64>,
}

impl Known {
    fn position(&self) -> Position {
        Position { epoch: self.epoch, seqs: self.shards.iter().map(|shard| shard.through).collect() }
    }

    fn retoken(&mut self) {
        self.token = self.position().token().into();
    }
}

impl Shard {
    /// Takes the numbers ahead that now follow on.
    fn advance(&mut self) {
        while self.ahead.first() == Some(&(self.through + 1)) {
            self.through += 1;
            self.ahead.pop_first();
        }
        let through = self.through;
        self.ahead.retain(|&seq| seq > through);
    }
}

impl ViewPosition {
    /// The view applied (or, holding something newer, passed over) transition `seq` of
    /// `shard`.
    pub(super) fn saw(&mut self, shard: usize, seq: u64) {
        let Some(known) = self.known.as_mut() else { return };
        let Some(mark) = known.shards.get_mut(shard) else { return };
        if seq <= mark.through {
            return;
        }
        if mark.ahead.len() >= MAX_AHEAD && seq != mark.through + 1 {
            return;
        }
        mark.ahead.insert(seq);
        let before = mark.through;
        mark.advance();
        if mark.through != before {
            known.retoken();
        }
    }

    /// The view was rebuilt from a read of the store that holds every transition up to
    /// `head`. Numbers already received past it still count when the history is the same;
    /// with another history (Redis lost its data), only what follows `head` from now on.
    pub(super) fn rebuilt(&mut self, head: Option<&Position>) {
        let Some(head) = head else {
            self.known = None;
            return;
        };
        let mut shards: Vec<Shard> = match self.known.take() {
            Some(known) if known.epoch == head.epoch && known.shards.len() == head.seqs.len() => known.shards,
            _ => head.seqs.iter().map(|_| Shard::default()).collect(),
        };
        for (shard, &seq) in shards.iter_mut().zip(&head.seqs) {
            shard.through = shard.through.max(seq);
            shard.advance();
        }
        let mut known = Known { epoch: head.epoch, shards, token: Arc::from("") };
        known.retoken();
        self.known = Some(known);
    }

    /// The position, if known.
    pub(super) fn get(&self) -> Option<Position> {
        self.known.as_ref().map(Known::position)
    }

    /// The position's token, if known.
    pub(super) fn token(&self) -> Option<Arc<str>> {
        self.known.as_ref().map(|known| known.token.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seqs: &[u64]) -> Position {
        Position::new(&["e"; 2][..seqs.len()], seqs.to_vec())
    }

    #[test]
    fn unknown_until_rebuilt() {
        let mut position = ViewPosition::default();
        position.saw(0, 1);
        assert_eq!(position.get(), None);
        position.rebuilt(Some(&head(&[5])));
        assert_eq!(position.get().unwrap().seqs, [5]);
    }

    #[test]
    fn moves_over_an_unbroken_run_only() {
        let mut position = ViewPosition::default();
        position.rebuilt(Some(&head(&[5, 0])));
        position.saw(0, 7);
        assert_eq!(position.get().unwrap().seqs, [5, 0], "6 is missing");
        position.saw(0, 6);
        assert_eq!(position.get().unwrap().seqs, [7, 0]);
        position.saw(1, 1);
        position.saw(0, 3);
        assert_eq!(position.get().unwrap().seqs, [7, 1]);
        assert_eq!(position.token().as_deref(), Some(position.get().unwrap().token().as_str()));
    }

    #[test]
    fn a_rebuild_keeps_what_arrived_past_its_head_in_the_same_history() {
        let mut position = ViewPosition::default();
        position.rebuilt(Some(&head(&[5])));
        position.saw(0, 9);
        position.rebuilt(Some(&head(&[8])));
        assert_eq!(position.get().unwrap().seqs, [9]);
        let other = Position::new(&["f"], vec![2]);
        position.saw(0, 11);
        position.rebuilt(Some(&other));
        assert_eq!(position.get(), Some(other), "numbers of another history do not count");
    }
}
