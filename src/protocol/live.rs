//! What a PRESENCE_SNAPSHOT carries besides its users: the live indicators (typing,
//! recording, talking) and each group's counts, so that a dashboard opened mid-transmission
//! shows who talks at once instead of at the next change.

use std::collections::BTreeMap;

use super::{message_type::INDICATOR_UPDATE, payload::IndicatorKind};
use crate::{
    id::Id,
    presence::{Status, UserPresence},
};

/// What one PRESENCE_SNAPSHOT holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotContents {
    /// Everyone shown online, away or dnd within the scope, as the scope reads them.
    pub users: Vec<UserPresence>,
    /// The live indicators of the scope's groups, sorted by group, user and type.
    pub indicators: Vec<LiveIndicator>,
    /// Each group's counts, by group id.
    pub group_counts: Vec<(Id, GroupCounts)>,
}

impl SnapshotContents {
    /// `users` and `indicators` with the counts of `groups` (every group the users are in,
    /// for `None`): a group named but empty counts zeros, so a dashboard can list it.
    pub fn new(users: Vec<UserPresence>, indicators: Vec<LiveIndicator>, groups: Option<&[Id]>) -> Self {
        let mut counts: BTreeMap<Id, GroupCounts> =
            groups.into_iter().flatten().map(|group| (group.clone(), GroupCounts::default())).collect();
        for user in &users {
            for group in user.groups.iter() {
                let counts = match counts.get_mut(group) {
                    Some(counts) => counts,
                    None if groups.is_none() => counts.entry(group.clone()).or_default(),
                    None => continue,
                };
                match user.status {
                    Status::Online => counts.online += 1,
                    Status::Away => counts.away += 1,
                    Status::Dnd => counts.dnd += 1,
                    Status::Offline => {}
                }
            }
        }
        SnapshotContents { users, indicators, group_counts: counts.into_iter().collect() }
    }
}

/// One live indicator, as a snapshot lists it: `{groupId, userId, type, timestamp}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIndicator {
    pub group: Id,
    pub user: Id,
    pub kind: IndicatorKind,
    /// Unix ms of the INDICATOR_UPDATE that started it (for one read from the store after
    /// a rebuild of the view, of the moment it was read).
    pub since: u64,
}

/// An INDICATOR_UPDATE, read back: the indicator and whether it started (`true`) or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndicatorChange {
    pub indicator: LiveIndicator,
    pub active: bool,
}

impl IndicatorChange {
    /// Reads an INDICATOR_UPDATE frame as [`super::indicator_frame`] writes it (a router's
    /// own, this one's or another's); `None` for any other frame.
    pub fn read(mut frame: &[u8]) -> Option<IndicatorChange> {
        let value = rmpv::decode::read_value_with_max_depth(&mut frame, super::MAX_DEPTH).ok()?;
        if value[1].as_u64() != Some(INDICATOR_UPDATE.into()) {
            return None;
        }
        let payload = &value[5];
        let id = |key: &str| payload[key].as_str().and_then(|s| Id::parse(s).ok());
        let kind = IndicatorKind::ALL.into_iter().find(|k| Some(k.as_str()) == payload["type"].as_str())?;
        Some(IndicatorChange {
            indicator: LiveIndicator {
                group: id("groupId")?,
                user: id("userId")?,
                kind,
                since: payload["timestamp"].as_u64()?,
            },
            active: payload["isActive"].as_bool()?,
        })
    }
}

/// How many of a group's members are shown online, away and dnd (offline and invisible
/// members are in none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    pub online: u32,
    pub away: u32,
    pub dnd: u32,
}
