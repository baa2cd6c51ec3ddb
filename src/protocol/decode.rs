//! Decoding of inbound frames. Pure functions: bytes in, a typed frame or a typed error out.
//!
//! Frames come from the internet, so decoding never panics and never allocates more than
//! a small multiple of the input: rmpv does not preallocate from length prefixes, nesting
//! is capped at [`MAX_DEPTH`], and the WebSocket layer caps the frame size.

use rmpv::Value;

use super::{ChannelType, message_type::CONNECTION};
use crate::id::{Id, IdError};

/// Deepest nesting accepted in a frame; PTT and presence payloads are flat maps.
pub const MAX_DEPTH: usize = 16;

/// The ext value old notepack versions emit for `undefined`: fixext1 type 0, data 0.
pub(super) fn is_js_undefined(value: &Value) -> bool {
    matches!(value, Value::Ext(0, data) if data.as_slice() == [0])
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub channel_type: ChannelType,
    pub message_type: u8,
    /// `None` when the client sent nil, undefined, 0 or "" (VoicePing's "no id").
    pub from: Option<Id>,
    pub to: Option<Id>,
    pub message_id: Option<Value>,
    /// Whether the frame had the message-id slot (six elements), even holding nil: what
    /// the router relays and answers for it keeps the sender's layout.
    pub with_message_id: bool,
    /// Nil for a four-element frame, which has none.
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid msgpack: {0}")]
    Malformed(String),
    #[error("frame has {0} trailing bytes after the msgpack value")]
    TrailingBytes(usize),
    #[error("frame must be a msgpack array of 4, 5 or 6 elements (3 for CONNECTION)")]
    Shape,
    #[error("channelType must be 0 (group) or 1 (private)")]
    ChannelType,
    #[error("messageType must be an integer from 0 to 255")]
    MessageType,
    #[error("{field}: {source}")]
    Id { field: &'static str, source: IdError },
}

impl DecodeError {
    /// A low-cardinality label for metrics and error frames.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) | DecodeError::TrailingBytes(_) => "malformed",
            DecodeError::Shape => "shape",
            DecodeError::ChannelType => "channel_type",
            DecodeError::MessageType => "message_type",
            DecodeError::Id { .. } => "id",
        }
    }
}

/// Decodes one binary WebSocket message into a frame.
pub fn decode(mut bytes: &[u8]) -> Result<Frame, DecodeError> {
    let value = rmpv::decode::read_value_with_max_depth(&mut bytes, MAX_DEPTH)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !bytes.is_empty() {
        return Err(DecodeError::TrailingBytes(bytes.len()));
    }
    let Value::Array(items) = value else {
        return Err(DecodeError::Shape);
    };
    let mut items = items.into_iter();
    let (channel, message_type, from, to) = match (items.next(), items.next(), items.next(), items.next()) {
        (Some(c), Some(m), Some(f), Some(t)) => (c, m, f, t),
        // VoicePing's Android SDK announces itself with `[0, 4, uid]` on every connect.
        (Some(c), Some(m), Some(f), None) if small_uint(&m) == Some(CONNECTION) => (c, m, f, Value::Nil),
        _ => return Err(DecodeError::Shape),
    };
    // VoicePing clients leave the payload out of frames that need none (USER_ADD,
    // USER_REMOVE): four elements read as a nil payload.
    let (message_id, payload) = match (items.next(), items.next(), items.next()) {
        (None, _, _) => (None, Value::Nil),
        (Some(payload), None, None) => (None, payload),
        (Some(message_id), Some(payload), None) => (Some(message_id), payload),
        _ => return Err(DecodeError::Shape),
    };
    let with_message_id = message_id.is_some();
    Ok(Frame {
        channel_type: channel_type(&channel)?,
        message_type: small_uint(&message_type).ok_or(DecodeError::MessageType)?,
        from: optional_id(&from).map_err(|source| DecodeError::Id { field: "fromId", source })?,
        to: optional_id(&to).map_err(|source| DecodeError::Id { field: "toId", source })?,
        message_id: message_id.filter(|m| !m.is_nil() && !is_js_undefined(m)),
        with_message_id,
        payload,
    })
}

fn channel_type(value: &Value) -> Result<ChannelType, DecodeError> {
    match small_uint(value) {
        Some(0) => Ok(ChannelType::Group),
        Some(1) => Ok(ChannelType::Private),
        _ => Err(DecodeError::ChannelType),
    }
}

/// An integer 0–255, also when a JavaScript encoder wrote it as a float.
fn small_uint(value: &Value) -> Option<u8> {
    match value {
        Value::Integer(i) => i.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::F64(f) if f.fract() == 0.0 && (0.0..=255.0).contains(f) => Some(*f as u8),
        Value::F32(f) if f.fract() == 0.0 && (0.0..=255.0).contains(f) => Some(*f as u8),
        _ => None,
    }
}

/// An id, or `None` for VoicePing's "no id" spellings: nil, undefined, 0 and "".
fn optional_id(value: &Value) -> Result<Option<Id>, IdError> {
    let id = match value {
        Value::Nil => return Ok(None),
        v if is_js_undefined(v) => return Ok(None),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(0), _) => return Ok(None),
            (Some(n), _) => Id::from_int(n.into()),
            (None, Some(n)) => Id::from_int(n.into()),
            (None, None) => return Err(IdError::WrongType),
        },
        Value::F64(f) if *f == 0.0 => return Ok(None),
        Value::F64(f) => Id::from_f64(*f)?,
        Value::F32(f) => Id::from_f64(f64::from(*f))?,
        Value::String(s) => match s.as_str() {
            Some("") => return Ok(None),
            Some(text) => Id::parse(text)?,
            None => return Err(IdError::WrongType),
        },
        _ => return Err(IdError::WrongType),
    };
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message_type::HEARTBEAT;

    /// Bytes as notepack writes a mobile app's heartbeat: `[0, 30, "u1", 0, {type, timestamp}]`
    /// with `Date.now()` as uint64 (`cf`).
    fn notepack_heartbeat() -> Vec<u8> {
        let mut b = vec![0x95, 0x00, 0x1e, 0xa2, b'u', b'1', 0x00, 0x82];
        b.extend_from_slice(&[0xa4, b't', b'y', b'p', b'e', 0xa9]);
        b.extend_from_slice(b"heartbeat");
        b.extend_from_slice(&[0xa9]);
        b.extend_from_slice(b"timestamp");
        b.push(0xcf);
        b.extend_from_slice(&1_702_281_234_567u64.to_be_bytes());
        b
    }

    #[test]
    fn decodes_a_mobile_heartbeat_as_notepack_sends_it() {
        let frame = decode(&notepack_heartbeat()).unwrap();
        assert_eq!(frame.channel_type, ChannelType::Group);
        assert_eq!(frame.message_type, HEARTBEAT);
        assert_eq!(frame.from, Some(Id::parse("u1").unwrap()));
        assert_eq!(frame.to, None);
        assert_eq!(frame.message_id, None);
        assert_eq!(frame.payload["timestamp"].as_u64(), Some(1_702_281_234_567));
    }

    #[test]
    fn six_elements_carry_a_message_id() {
        let v = Value::Array(vec![1.into(), 17.into(), 42.into(), "7".into(), "m-1".into(), Value::Binary(vec![1, 2])]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).unwrap();
        let frame = decode(&bytes).unwrap();
        assert_eq!(frame.channel_type, ChannelType::Private);
        assert_eq!(frame.from, Some(Id::parse("42").unwrap()));
        assert_eq!(frame.to, Some(Id::parse("7").unwrap()));
        assert_eq!(frame.message_id, Some(Value::from("m-1")));
        assert_eq!(frame.payload, Value::Binary(vec![1, 2]));
    }

    #[test]
    fn four_elements_carry_no_payload_and_five_no_message_id_slot() {
        let frame = decode(&[0x94, 0x01, 0x02, 0xa1, b'1', 0xa2, b'1', b'8']).unwrap();
        assert_eq!((frame.payload, frame.message_id, frame.with_message_id), (Value::Nil, None, false));
        assert!(!decode(&notepack_heartbeat()).unwrap().with_message_id);
        let six = decode(&[0x96, 0x00, 0x02, 0xa1, b'1', 0xa2, b'1', b'8', 0xc0, 0xc0]).unwrap();
        assert_eq!((six.message_id, six.with_message_id), (None, true), "a nil message id still takes the slot");
    }

    #[test]
    fn only_connection_comes_in_three_elements() {
        let frame = decode(&[0x93, 0x00, 0x04, 0xa1, b'7']).unwrap();
        assert_eq!((frame.message_type, frame.to, frame.payload), (CONNECTION, None, Value::Nil));
        assert_eq!(frame.from, Some(Id::parse("7").unwrap()));
        assert_eq!(decode(&[0x93, 0x00, 0x01, 0xa1, b'7']).unwrap_err().reason(), "shape");
    }

    #[test]
    fn notepack_quirks_are_accepted() {
        // fromId as float64 (a JS number past 2^32), toId as notepack's `undefined`,
        // messageId undefined, messageType as float64.
        let mut b = vec![0x96, 0x00, 0xcb];
        b.extend_from_slice(&30.0f64.to_be_bytes());
        b.push(0xcb);
        b.extend_from_slice(&5_000_000_000.0f64.to_be_bytes());
        b.extend_from_slice(&[0xd4, 0x00, 0x00, 0xd4, 0x00, 0x00, 0xc0]);
        let frame = decode(&b).unwrap();
        assert_eq!(frame.message_type, HEARTBEAT);
        assert_eq!(frame.from, Some(Id::parse("5000000000").unwrap()));
        assert_eq!(frame.to, None);
        assert_eq!(frame.message_id, None);
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "malformed"),
            (&[0x95, 0, 30], "malformed"), // truncated
            (&[0x93, 0, 30, 1], "shape"),
            (&[0x90], "shape"),
            (&[0x95, 0, 30, 1, 0, 0xc0, 0xc0], "malformed"), // trailing bytes
            (&[0x97, 0, 30, 1, 0, 0, 0, 0], "shape"),
            (&[0x81, 0, 0], "shape"),
            (&[0x95, 2, 30, 1, 0, 0xc0], "channel_type"),
            (&[0x95, 0, 0xcd, 0x01, 0x00, 1, 0, 0xc0], "message_type"),
            (&[0x95, 0, 0xa1, b'x', 1, 0, 0xc0], "message_type"),
            (&[0x95, 0, 30, 0xc3, 0, 0xc0], "id"),
            (&[0x95, 0, 30, 0x91, 1, 0, 0xc0], "id"),
        ];
        for (bytes, reason) in cases {
            let err = decode(bytes).expect_err(&format!("{bytes:02x?} must be refused"));
            assert_eq!(err.reason(), *reason, "{bytes:02x?}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let mut b = vec![0x95, 0, 30, 1, 0];
        b.extend(std::iter::repeat_n(0x91, 10_000));
        b.push(0xc0);
        assert_eq!(decode(&b).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate() {
        // array32 / str32 / bin32 claiming 4 GiB in a 10-byte frame.
        for prefix in [0xddu8, 0xdb, 0xc6] {
            let b = [0x95, 0, 30, 1, 0, prefix, 0xff, 0xff, 0xff, 0xff];
            assert_eq!(decode(&b).unwrap_err().reason(), "malformed");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn integer_and_string_ids_decode_alike(id in 1i64..i64::MAX, as_string in any::<bool>()) {
                let from = if as_string { Value::from(id.to_string()) } else { Value::from(id) };
                let v = Value::Array(vec![0.into(), 30.into(), from, 0.into(), Value::Map(vec![])]);
                let mut bytes = Vec::new();
                rmpv::encode::write_value(&mut bytes, &v).unwrap();
                prop_assert_eq!(decode(&bytes).unwrap().from, Some(Id::from_int(id.into())));
            }

            #[test]
            fn valid_frames_survive_mutation(flip in 0usize..64, bit in 0u8..8) {
                let mut bytes = notepack_heartbeat();
                let i = flip % bytes.len();
                bytes[i] ^= 1 << bit;
                let _ = decode(&bytes);
            }
        }
    }
}
