//! The live indicators (typing, recording, talking) the hub shows dashboards: what a
//! snapshot lists, kept from the INDICATOR_UPDATEs this router delivers (its own
//! connections' and, through the broker, every other router's) and rebuilt from the
//! store with the rest of the view.
//!
//! No invisible user's indicator is ever here: those are never announced. Each router
//! announces exactly one end per start while it lives (and a router that dies has its
//! indicators' ends announced by whichever router claims them from the store), so the
//! view needs no lifetimes of its own; refreshes of a live indicator are silent, so it
//! could not keep them anyway.

use std::collections::HashMap;

use crate::{
    id::Id,
    protocol::{
        live::{IndicatorChange, LiveIndicator},
        payload::IndicatorKind,
    },
    scope::Scope,
};

/// Group, kind, user.
type Key = (Id, IndicatorKind, Id);

#[derive(Clone, Copy)]
struct Entry {
    /// Unix ms it started (see [`LiveIndicator::since`]).
    since: u64,
    /// Announced by this router's own connections: this router's word on it is exact (its
    /// deliveries to itself are never lost), so a rebuild keeps it.
    local: bool,
}

#[derive(Default)]
pub(super) struct Indicators {
    live: HashMap<Key, Entry>,
}

impl Indicators {
    /// Applies a start or an end; false when it changes nothing (the start of a live one,
    /// the end of one not live), which dashboards need not be told.
    pub(super) fn apply(&mut self, change: &IndicatorChange, local: bool) -> bool {
        let LiveIndicator { group, user, kind, since } = &change.indicator;
        let key = (group.clone(), *kind, user.clone());
        if change.active {
            if self.live.contains_key(&key) {
                return false;
            }
            self.live.insert(key, Entry { since: *since, local });
            true
        } else {
            self.live.remove(&key).is_some()
        }
    }

    /// The live indicators of the groups `scope` covers, sorted by group, user and kind.
    pub(super) fn in_scope(&self, scope: &Scope) -> Vec<LiveIndicator> {
        let mut shown: Vec<LiveIndicator> = self
            .live
            .iter()
            .filter(|((group, _, _), _)| scope.covers_group(group))
            .map(|((group, kind, user), entry)| LiveIndicator {
                group: group.clone(),
                user: user.clone(),
                kind: *kind,
                since: entry.since,
            })
            .collect();
        shown.sort_by(|a, b| (&a.group, &a.user, a.kind).cmp(&(&b.group, &b.user, b.kind)));
        shown
    }

    /// Rebuilds the view from the store's live indicators (read at `now_ms`): other
    /// routers' ends may have been lost while the broker was out of reach, so theirs are
    /// taken from the store; this router's own are kept as they are (the store's copy of
    /// them may lag, or be gone with a Redis restarted empty). An indicator known before
    /// keeps its start time. The caller then re-applies what was delivered while the
    /// store was read.
    pub(super) fn rebuild(&mut self, stored: Vec<(Id, IndicatorKind, Id)>, now_ms: u64) {
        let mut before = std::mem::take(&mut self.live);
        for key in stored {
            let entry = before.get(&key).map_or(Entry { since: now_ms, local: false }, |entry| *entry);
            self.live.insert(key, entry);
        }
        before.retain(|_, entry| entry.local);
        self.live.extend(before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    fn change(group: &str, user: &str, kind: IndicatorKind, active: bool, since: u64) -> IndicatorChange {
        IndicatorChange { indicator: LiveIndicator { group: id(group), user: id(user), kind, since }, active }
    }

    fn shown(indicators: &Indicators, scope: &Scope) -> Vec<(String, String, &'static str, u64)> {
        let listed = indicators.in_scope(scope).into_iter();
        listed.map(|i| (i.group.to_string(), i.user.to_string(), i.kind.as_str(), i.since)).collect()
    }

    #[test]
    fn starts_and_ends_change_the_view_once() {
        let mut indicators = Indicators::default();
        assert!(indicators.apply(&change("g", "u", IndicatorKind::Talking, true, 5), true));
        assert!(!indicators.apply(&change("g", "u", IndicatorKind::Talking, true, 9), true), "already live");
        assert!(indicators.apply(&change("g", "u", IndicatorKind::Typing, true, 6), false));
        assert!(indicators.apply(&change("h", "v", IndicatorKind::Typing, true, 7), false));
        let everyone = Scope::everyone();
        assert_eq!(
            shown(&indicators, &everyone),
            [
                ("g".into(), "u".into(), "typing", 6),
                ("g".into(), "u".into(), "talking", 5),
                ("h".into(), "v".into(), "typing", 7)
            ]
        );
        assert_eq!(shown(&indicators, &Scope::members_of(&id("h"))), [("h".into(), "v".into(), "typing", 7)]);
        assert!(indicators.apply(&change("g", "u", IndicatorKind::Talking, false, 8), true));
        assert!(!indicators.apply(&change("g", "u", IndicatorKind::Talking, false, 8), true), "ended already");
        assert_eq!(shown(&indicators, &everyone).len(), 2);
    }

    #[test]
    fn a_rebuild_takes_the_stores_word_on_other_routers_and_keeps_its_own() {
        let mut indicators = Indicators::default();
        indicators.apply(&change("g", "mine", IndicatorKind::Talking, true, 1), true);
        indicators.apply(&change("g", "ended", IndicatorKind::Typing, true, 2), false);
        indicators.apply(&change("g", "kept", IndicatorKind::Typing, true, 3), false);
        // The store no longer has "ended" (its end was lost), nor this router's talk (a
        // Redis restarted empty), and has one this router never heard of.
        let stored = vec![(id("g"), IndicatorKind::Typing, id("kept")), (id("g"), IndicatorKind::Recording, id("new"))];
        indicators.rebuild(stored, 100);
        assert_eq!(
            shown(&indicators, &Scope::everyone()),
            [
                ("g".into(), "kept".into(), "typing", 3),
                ("g".into(), "mine".into(), "talking", 1),
                ("g".into(), "new".into(), "recording", 100),
            ]
        );
        // This router's own stays its own though the store listed it too.
        indicators.rebuild(vec![(id("g"), IndicatorKind::Talking, id("mine"))], 200);
        indicators.rebuild(Vec::new(), 300);
        assert_eq!(shown(&indicators, &Scope::everyone()), [("g".into(), "mine".into(), "talking", 1)]);
    }
}
