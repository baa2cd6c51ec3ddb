//! Each group's members by status, kept with every change the view accepts, so that a
//! dashboard watching a 10k-member group by its counts reads four numbers instead of
//! scanning the view, and a dashboard subscribing to one group gets that group's part of
//! the view.
//!
//! A member is a user the view holds whose groups (the union of its live sessions'
//! groups, kept as they were once the last one ended) include the group; offline members
//! count until the view forgets them (`Hub::prune`: offline longer than the retention
//! window). Invisible users are shown offline, so they count as offline.

use std::collections::HashMap;

use super::{Hub, View};
use crate::{
    id::Id,
    presence::{Status, UserPresence},
    protocol::live::SnapshotContents,
    scope::Scope,
};

/// How many of a group's members are shown online, away, dnd and offline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub online: u32,
    pub away: u32,
    pub dnd: u32,
    pub offline: u32,
}

impl MemberCounts {
    fn slot(&mut self, status: Status) -> &mut u32 {
        match status {
            Status::Online => &mut self.online,
            Status::Away => &mut self.away,
            Status::Dnd => &mut self.dnd,
            Status::Offline => &mut self.offline,
        }
    }
}

/// The counts of every group some user in the view is in.
#[derive(Debug, Default)]
pub(super) struct Tally {
    groups: HashMap<Id, MemberCounts>,
}

impl Tally {
    /// The counts of the users in `users`.
    pub(super) fn of<'a>(users: impl IntoIterator<Item = &'a UserPresence>) -> Tally {
        let mut tally = Tally::default();
        for user in users {
            tally.add(user);
        }
        tally
    }

    /// `after` replaced `before` (`None`: a user new to the view).
    pub(super) fn replace(&mut self, before: Option<&UserPresence>, after: &UserPresence) {
        if let Some(before) = before {
            self.remove(before);
        }
        self.add(after);
    }

    pub(super) fn add(&mut self, user: &UserPresence) {
        for group in user.groups.iter() {
            *self.groups.entry(group.clone()).or_default().slot(user.status) += 1;
        }
    }

    /// `user` left the view (or is about to be replaced): a group left without members
    /// is forgotten, so the tally holds only groups someone in the view is in.
    pub(super) fn remove(&mut self, user: &UserPresence) {
        for group in user.groups.iter() {
            if let Some(counts) = self.groups.get_mut(group) {
                let slot = counts.slot(user.status);
                *slot = slot.saturating_sub(1);
                if *counts == MemberCounts::default() {
                    self.groups.remove(group);
                }
            }
        }
    }

    fn get(&self, group: &Id) -> MemberCounts {
        self.groups.get(group).copied().unwrap_or_default()
    }
}

/// One group's part of the view, for a dashboard subscribing to it.
#[derive(Debug)]
pub struct GroupPart {
    /// The group's members shown online, away or dnd, as `reader` reads them, and the
    /// live indicators of the group.
    pub contents: SnapshotContents,
    pub counts: MemberCounts,
    /// The sequence number the part includes.
    pub seq: u64,
}

impl View {
    fn group_counts(&self, group: &Id) -> (MemberCounts, u64) {
        (self.tally.get(group), self.seq)
    }
}

impl Hub {
    /// `group`'s counts now and the sequence number they include.
    pub fn group_counts(&self, group: &Id) -> (MemberCounts, u64) {
        self.view().group_counts(group)
    }

    /// `group`'s part of the view now: its members shown online, away or dnd (their other
    /// groups as `reader` may read them), its live indicators and its counts.
    pub fn group_part(&self, group: &Id, reader: &Scope) -> GroupPart {
        let members = Scope::members_of(group);
        let view = self.view();
        let users = view
            .users
            .values()
            .filter(|p| p.status != Status::Offline && members.sees(&p.user_id, &p.groups))
            .map(|p| reader.redact(p.clone()))
            .collect();
        let indicators = view.indicators.in_scope(&members);
        let (counts, seq) = view.group_counts(group);
        drop(view);
        GroupPart { contents: SnapshotContents::new(users, indicators, Some(std::slice::from_ref(group))), counts, seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Groups;

    fn user(name: &str, status: Status, groups: &[&str]) -> UserPresence {
        let mut p = UserPresence::unknown(Id::parse(name).unwrap());
        p.status = status;
        p.groups = Groups::from(groups.iter().map(|g| Id::parse(g).unwrap()).collect::<Vec<_>>());
        p
    }

    fn counts(tally: &Tally, group: &str) -> [u32; 4] {
        let c = tally.get(&Id::parse(group).unwrap());
        [c.online, c.away, c.dnd, c.offline]
    }

    #[test]
    fn counts_follow_status_and_group_changes() {
        let a = user("a", Status::Online, &["g1", "g2"]);
        let b = user("b", Status::Dnd, &["g1"]);
        let mut tally = Tally::of([&a, &b]);
        assert_eq!(counts(&tally, "g1"), [1, 0, 1, 0]);
        assert_eq!(counts(&tally, "g2"), [1, 0, 0, 0]);
        let a_away = user("a", Status::Away, &["g2"]);
        tally.replace(Some(&a), &a_away);
        assert_eq!(counts(&tally, "g1"), [0, 0, 1, 0], "a left g1");
        assert_eq!(counts(&tally, "g2"), [0, 1, 0, 0]);
        let b_gone = user("b", Status::Offline, &["g1"]);
        tally.replace(Some(&b), &b_gone);
        assert_eq!(counts(&tally, "g1"), [0, 0, 0, 1], "offline members keep their groups");
        tally.remove(&b_gone);
        assert_eq!(counts(&tally, "g1"), [0, 0, 0, 0]);
        assert!(!tally.groups.contains_key(&Id::parse("g1").unwrap()), "an empty group is forgotten");
    }
}
