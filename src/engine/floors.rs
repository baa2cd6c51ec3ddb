//! Floors whose router died: the lease a holding router keeps renewing on its floors'
//! store copies, and what a surviving router needs to end such a floor for its listeners.
//!
//! A floor's store copy lasts the maximum talk time, which keeps two routers from granting
//! one channel twice. On its own it says nothing about whether the talker's router is
//! still there, so besides it the store keeps a lease per floor: the holding router renews
//! it every [`FLOOR_LEASE_RENEW`] for [`FLOOR_LEASE`] ([`SignalStore::renew_floors`]). A
//! floor whose lease lapsed [`FLOOR_ORPHAN_GRACE`] ago is orphaned: its router died (or
//! lost the store that long). Whichever router sweeps first claims it
//! ([`SignalStore::claim_orphaned_floors`]): the floor is released, its `talking` indicator
//! cleared, and that router announces the talk's end (a STOP to its listeners, the end of
//! `talking` to the group's members and dashboards). So a dead router's talker is shown
//! talking for at most `FLOOR_LEASE + FLOOR_ORPHAN_GRACE` plus a sweep interval, not the
//! maximum talk time; and when its session lapses sooner (a short presence TTL), the sweep
//! that shows it offline ends its talk too (see [`FLOOR_LEASE_QUIET`]).
//!
//! [`SignalStore::renew_floors`]: super::SignalStore::renew_floors
//! [`SignalStore::claim_orphaned_floors`]: super::SignalStore::claim_orphaned_floors

use std::time::Duration;

use super::Talker;
use crate::{id::Id, presence::Groups};

/// How long a floor's lease lasts from its take or its last renewal.
pub const FLOOR_LEASE: Duration = Duration::from_secs(3);

/// How often a router renews the leases of the floors its sessions hold: a third of
/// [`FLOOR_LEASE`], so two renewals may be lost (or late) before a live floor lapses.
pub const FLOOR_LEASE_RENEW: Duration = Duration::from_secs(1);

/// How long a lease goes unrenewed before a floor of a user that went offline is taken
/// for orphaned at once: one and a half renewal intervals, so the floor of a user who
/// just reconnected elsewhere and talks again (a fresh lease) is never taken.
pub const FLOOR_LEASE_QUIET: Duration = Duration::from_millis(1500);

/// How long after its lease lapsed a floor is taken for orphaned: covers a renewal under
/// way (its round trip, a router busy for a moment), so a live router's floor is never
/// claimed.
pub const FLOOR_ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Who hears a talk: what a router that did not carry it needs to send its STOP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorListeners {
    /// A group's mobile members (not the talker's user); the talker shows `talking` in it.
    Group(Id),
    /// One user's sessions on a private channel (the talker's own, on its channel to
    /// itself); with `groups`, only those in one of them (a private channel that needs a
    /// shared group: the talker's groups).
    User { user: Id, groups: Option<Groups> },
}

/// A floor whose router died, claimed by exactly one router, which announces its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedFloor {
    pub talker: Talker,
    pub listeners: FloorListeners,
    /// How long the talk had lasted when it was claimed.
    pub held: Duration,
    /// The talker's `talking` indicator in the group was live in the store and is cleared
    /// now: its end is to be announced (it is not, for a talker nobody saw talking, being
    /// invisible, or one whose indicator an earlier claim already ended).
    pub talking_ended: bool,
}

impl FloorListeners {
    /// As a store keeps it: `g\nGROUP`, `u\nUSER`, or `u\nUSER\nG1\nG2…` (ids hold no
    /// control characters).
    pub fn encode(&self) -> String {
        match self {
            FloorListeners::Group(group) => format!("g\n{group}"),
            FloorListeners::User { user, groups: None } => format!("u\n{user}"),
            FloorListeners::User { user, groups: Some(groups) } => {
                groups.iter().fold(format!("u\n{user}\n"), |mut out, group| {
                    out.push('\n');
                    out.push_str(group.as_str());
                    out
                })
            }
        }
    }

    /// The inverse of [`FloorListeners::encode`]; `None` for anything else.
    pub fn decode(text: &str) -> Option<FloorListeners> {
        let mut fields = text.split('\n');
        let (kind, to) = (fields.next()?, Id::parse(fields.next()?).ok()?);
        match (kind, fields.next()) {
            ("g", None) => Some(FloorListeners::Group(to)),
            ("u", None) => Some(FloorListeners::User { user: to, groups: None }),
            ("u", Some("")) => {
                let groups: Option<Vec<Id>> = fields.map(|group| Id::parse(group).ok()).collect();
                Some(FloorListeners::User { user: to, groups: Some(groups?.into()) })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_read_back_as_written() {
        let id = |s: &str| Id::parse(s).unwrap();
        for listeners in [
            FloorListeners::Group(id("crew")),
            FloorListeners::User { user: id("bob"), groups: None },
            FloorListeners::User { user: id("bob"), groups: Some(vec![].into()) },
            FloorListeners::User { user: id("bob"), groups: Some(vec![id("a"), id("b c")].into()) },
        ] {
            assert_eq!(FloorListeners::decode(&listeners.encode()), Some(listeners));
        }
        assert_eq!(FloorListeners::decode("x\nbob"), None);
        assert_eq!(FloorListeners::decode("g\ncrew\nextra"), None);
    }
}
