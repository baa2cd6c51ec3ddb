//! STALE (43) and FRESH (44): a router tells its dashboards that its view of presence
//! stopped being fed, and that it is fed again (see [`crate::hub`]'s staleness).

use bytes::Bytes;
use rmp::encode::{self as enc, ByteBuf};

use super::{
    encode::{header, str_field, uint_field},
    message_type::{FRESH, STALE},
};
use crate::presence::unix_ms;

/// STALE (43): `[0, 43, 0, 0, nil, {since, reason, timestamp}]`; `since` is when the
/// router first knew (Unix ms), `reason` one of `store_unreachable`, `store_data_lost`,
/// `subscription_lost`, `updates_missed`.
pub fn stale_frame(since_ms: u64, reason: &str) -> Bytes {
    spell_frame(STALE, since_ms, reason)
}

/// FRESH (44): `[0, 44, 0, 0, nil, {since, reason, timestamp}]`, the spell that began at
/// `since` for `reason` (the last one STALE named) is over as of `timestamp`.
pub fn fresh_frame(since_ms: u64, reason: &str) -> Bytes {
    spell_frame(FRESH, since_ms, reason)
}

fn spell_frame(message_type: u8, since_ms: u64, reason: &str) -> Bytes {
    let mut buf = ByteBuf::with_capacity(64);
    header(&mut buf, message_type, None);
    let Ok(_) = enc::write_map_len(&mut buf, 3);
    uint_field(&mut buf, "since", since_ms);
    str_field(&mut buf, "reason", reason);
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}
