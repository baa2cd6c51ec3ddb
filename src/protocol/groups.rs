//! Dashboards that choose their groups: SUBSCRIBE (45) and UNSUBSCRIBE (46) from the
//! dashboard, GROUP_SNAPSHOT (48) and GROUP_COUNTS (47) from the router.
//!
//! A group is watched in full (its members' PRESENCE_UPDATEs, coalesced per dashboard:
//! one latest update per user per window) or by its counts only (GROUP_COUNTS at most
//! every `intervalMs`, never below [`COUNTS_MIN_INTERVAL`]). `docs/PROTOCOL.md`,
//! "Choosing groups", is the reference.

use std::time::Duration;

use bytes::Bytes;
use rmp::encode::{self as enc, ByteBuf};
use rmpv::Value;

use super::{
    encode::{header, str_field, uint_field, user_map},
    message_type::{GROUP_COUNTS, GROUP_SNAPSHOT},
    payload::{PayloadError, field, map},
};
use crate::{
    hub::{GroupPart, MemberCounts},
    id::Id,
    presence::unix_ms,
};

/// Most groups one dashboard may subscribe to: what it is sent stays bounded by the
/// groups it names.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// The shortest interval between two GROUP_COUNTS of one group to one dashboard.
pub const COUNTS_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The interval between GROUP_COUNTS when the SUBSCRIBE names none.
pub const COUNTS_DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// A subscribed dashboard's coalescing window when the SUBSCRIBE names none.
pub const FULL_DEFAULT_WINDOW: Duration = Duration::from_millis(100);
/// The longest interval or window a SUBSCRIBE may ask for.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// How a dashboard watches one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Every member's presence, one latest PRESENCE_UPDATE per user per `window`
    /// (zero: every change at once).
    Full { window: Duration },
    /// GROUP_COUNTS of the group, at most every `interval`.
    Counts { interval: Duration },
}

/// Why a SUBSCRIBE payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("counts must be a boolean")]
    Counts,
    #[error("intervalMs must be a whole number of milliseconds up to 60000")]
    Interval,
}

/// SUBSCRIBE's payload: nil, or `{counts?: bool, intervalMs?: uint}`. Counts get
/// [`COUNTS_DEFAULT_INTERVAL`] by default and at least [`COUNTS_MIN_INTERVAL`]; a full
/// subscription's window is [`FULL_DEFAULT_WINDOW`] by default, 0 for none.
pub fn subscribe(payload: &Value) -> Result<Watch, SubscribeError> {
    if payload.is_nil() {
        return Ok(Watch::Full { window: FULL_DEFAULT_WINDOW });
    }
    let map = map(payload)?;
    let counts = match field(map, "counts") {
        None | Some(Value::Nil) => false,
        Some(v) => v.as_bool().ok_or(SubscribeError::Counts)?,
    };
    let interval = match field(map, "intervalMs") {
        None | Some(Value::Nil) => None,
        Some(v) => {
            let ms = v.as_u64().filter(|ms| *ms <= MAX_INTERVAL.as_millis() as u64).ok_or(SubscribeError::Interval)?;
            Some(Duration::from_millis(ms))
        }
    };
    Ok(match counts {
        true => Watch::Counts { interval: interval.unwrap_or(COUNTS_DEFAULT_INTERVAL).max(COUNTS_MIN_INTERVAL) },
        false => Watch::Full { window: interval.unwrap_or(FULL_DEFAULT_WINDOW) },
    })
}

fn counts_map(buf: &mut ByteBuf, counts: &MemberCounts) {
    let Ok(_) = enc::write_map_len(buf, 4);
    uint_field(buf, "online", counts.online.into());
    uint_field(buf, "away", counts.away.into());
    uint_field(buf, "dnd", counts.dnd.into());
    uint_field(buf, "offline", counts.offline.into());
}

/// GROUP_COUNTS (47): `[0, 47, 0, 0, seq, {groupId, counts: {online, away, dnd, offline},
/// timestamp}]`, the counts as of the sequence number `seq`.
pub fn counts_frame(group: &Id, counts: &MemberCounts, seq: u64) -> Bytes {
    let mut buf = ByteBuf::with_capacity(96 + group.as_str().len());
    header(&mut buf, GROUP_COUNTS, Some(&Value::from(seq)));
    let Ok(_) = enc::write_map_len(&mut buf, 3);
    str_field(&mut buf, "groupId", group.as_str());
    let Ok(_) = enc::write_str(&mut buf, "counts");
    counts_map(&mut buf, counts);
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}

/// GROUP_SNAPSHOT (48): `[0, 48, 0, 0, seq, {groupId, users: [...], count, counts,
/// indicators: [...], timestamp}]`: the group's members shown online, away or dnd (as in
/// PRESENCE_SNAPSHOT), its counts and its live indicators, as of the sequence number `seq`.
pub fn group_snapshot_frame(group: &Id, part: &GroupPart) -> Bytes {
    let contents = &part.contents;
    let mut buf = ByteBuf::with_capacity(super::snapshot_len_bound(contents) + 64);
    header(&mut buf, GROUP_SNAPSHOT, Some(&Value::from(part.seq)));
    let Ok(_) = enc::write_map_len(&mut buf, 6);
    str_field(&mut buf, "groupId", group.as_str());
    let Ok(_) = enc::write_str(&mut buf, "users");
    let Ok(_) = enc::write_array_len(&mut buf, contents.users.len() as u32);
    for user in &contents.users {
        user_map(&mut buf, user, false, 0);
    }
    uint_field(&mut buf, "count", contents.users.len() as u64);
    let Ok(_) = enc::write_str(&mut buf, "counts");
    counts_map(&mut buf, &part.counts);
    let Ok(_) = enc::write_str(&mut buf, "indicators");
    let Ok(_) = enc::write_array_len(&mut buf, contents.indicators.len() as u32);
    for indicator in &contents.indicators {
        let Ok(_) = enc::write_map_len(&mut buf, 4);
        str_field(&mut buf, "groupId", indicator.group.as_str());
        str_field(&mut buf, "userId", indicator.user.as_str());
        str_field(&mut buf, "type", indicator.kind.as_str());
        uint_field(&mut buf, "timestamp", indicator.since);
    }
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect())
    }

    #[test]
    fn subscribe_payloads() {
        assert_eq!(subscribe(&Value::Nil), Ok(Watch::Full { window: FULL_DEFAULT_WINDOW }));
        assert_eq!(
            subscribe(&payload(&[("counts", true.into())])),
            Ok(Watch::Counts { interval: COUNTS_DEFAULT_INTERVAL })
        );
        assert_eq!(
            subscribe(&payload(&[("counts", true.into()), ("intervalMs", 5.into())])),
            Ok(Watch::Counts { interval: COUNTS_MIN_INTERVAL }),
            "never below the floor"
        );
        assert_eq!(
            subscribe(&payload(&[("intervalMs", 0.into())])),
            Ok(Watch::Full { window: Duration::ZERO }),
            "a full subscription may ask for every change at once"
        );
        assert_eq!(subscribe(&payload(&[("counts", "yes".into())])), Err(SubscribeError::Counts));
        assert_eq!(subscribe(&payload(&[("intervalMs", 60_001.into())])), Err(SubscribeError::Interval));
        assert_eq!(subscribe(&payload(&[("intervalMs", (-1).into())])), Err(SubscribeError::Interval));
        assert!(subscribe(&Value::from("counts")).is_err());
    }

    #[test]
    fn counts_frames_read_back() {
        let group = Id::parse("g1").unwrap();
        let counts = MemberCounts { online: 3, away: 2, dnd: 1, offline: 9 };
        let frame = counts_frame(&group, &counts, 42);
        let value = rmpv::decode::read_value(&mut &frame[..]).unwrap();
        assert_eq!((value[1].as_u64(), value[4].as_u64()), (Some(47), Some(42)));
        let read = &value[5];
        assert_eq!(read["groupId"].as_str(), Some("g1"));
        let c = &read["counts"];
        assert_eq!(
            [&c["online"], &c["away"], &c["dnd"], &c["offline"]].map(|v| v.as_u64()),
            [Some(3), Some(2), Some(1), Some(9)]
        );
    }
}
