//! What lets a dashboard resume: the marks a snapshot carries (its view's position in the
//! change log, and the name of the scope it was taken for), and the RESUMED frame that
//! ends a resume.

use bytes::Bytes;
use rmp::encode::{self as enc, ByteBuf};
use rmpv::Value;

use super::{
    encode::{header, indicators_field, str_field, uint_field},
    live::LiveIndicator,
    message_type::RESUMED,
};
use crate::presence::unix_ms;

/// Where a dashboard's view stands: `position`, the token of its position in the change
/// log ([`crate::position::Position::token`]), and `view`, the name of the scope it is
/// seen with ([`crate::position::view_name`]). A dashboard presents both to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMark {
    pub position: String,
    pub view: String,
}

impl ViewMark {
    /// At least what the frame's `position` and `view` fields take, in bytes.
    pub fn len_bound(&self) -> usize {
        32 + self.position.len() + self.view.len()
    }

    /// The `position` and `view` fields of a payload map.
    pub(super) fn write(&self, buf: &mut ByteBuf) {
        str_field(buf, "position", &self.position);
        str_field(buf, "view", &self.view);
    }
}

/// RESUMED (41): `[0, 41, 0, 0, seq, {position, view, changes, indicators: [{groupId,
/// userId, type, timestamp}], timestamp}]`, sent after the `changes` PRESENCE_UPDATEs that
/// brought a resuming dashboard from its position to `position`; `indicators` are the
/// live ones of its scope now (they replace what it showed). `seq` is the router's event
/// sequence number, as in a snapshot.
pub fn resumed_frame(seq: u64, mark: &ViewMark, changes: usize, indicators: &[LiveIndicator]) -> Bytes {
    let mut buf = ByteBuf::with_capacity(128 + mark.len_bound() + 96 * indicators.len());
    header(&mut buf, RESUMED, Some(&Value::from(seq)));
    let Ok(_) = enc::write_map_len(&mut buf, 5);
    mark.write(&mut buf);
    uint_field(&mut buf, "changes", changes as u64);
    indicators_field(&mut buf, indicators);
    uint_field(&mut buf, "timestamp", unix_ms());
    Bytes::from(buf.into_vec())
}
