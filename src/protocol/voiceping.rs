//! VoicePing's payload conventions for push-to-talk, which its apps parse: the texts of its
//! acks and of LOGIN_DUPLICATED, what START_ACK echoes, and the JSON strings receivers get for a STOP and a TEXT
//! (`{"duration", "message_id"}`, `{"message_id", "text"}`, keys in that order).

use std::time::Duration;

use bytes::Bytes;
use rmpv::Value;
use serde::Serialize;

use super::{ChannelType, Slot, message_type::STOP};
use crate::id::Id;

/// The payload of START_ACK for a START without one, of STOP_ACK and of TEXT_ACK.
pub const ACKNOWLEDGED: &str = "Acknowledged";
/// START_FAILED's payload: another session holds the channel's floor.
pub const BUSY: &str = "Busy";

/// START_FAILED's payload after UNAUTHORIZED_GROUP: the START named a group outside the
/// session's groups.
pub const ACK_FAILED: &str = "Ack Failed";
/// UNAUTHORIZED_GROUP's payload.
pub const UNAUTHORIZED: &str = "Unauthorized Group";

/// START_ACK's payload: the START's own, as VoicePing echoed it. A payload JavaScript
/// reads as false (nil, false, 0, "") is "Acknowledged"; on a group channel a number is
/// echoed as its decimal text (VoicePing's `toString()`); anything else as sent.
pub fn start_ack(channel: ChannelType, payload: &Value) -> Value {
    let falsy = match payload {
        Value::Nil | Value::Boolean(false) => true,
        Value::Integer(n) => n.as_i64() == Some(0),
        Value::F64(f) => *f == 0.0 || f.is_nan(),
        Value::F32(f) => *f == 0.0 || f.is_nan(),
        Value::String(s) => s.as_bytes().is_empty(),
        v => super::decode::is_js_undefined(v),
    };
    match payload {
        _ if falsy => Value::from(ACKNOWLEDGED),
        Value::Integer(n) if channel == ChannelType::Group => Value::from(n.to_string()),
        Value::F64(f) if channel == ChannelType::Group => Value::from(f.to_string()),
        Value::F32(f) if channel == ChannelType::Group => Value::from(f.to_string()),
        other => other.clone(),
    }
}

/// LOGIN_DUPLICATED's payload, VoicePing's text: `user` logged in again from `device`.
pub fn login_duplicated(user: &Id, device: &str) -> Value {
    Value::from(format!("userId {user} has logged in from another deviceId {device}"))
}

#[derive(Serialize)]
struct Stop<'a> {
    duration: u64,
    message_id: &'a str,
    /// Set when the router ended the talk on the talker's behalf.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// What a STOP's receivers get: VoicePing's JSON string `{"duration": ms, "message_id"}`,
/// with `"reason"` when the router ended the talk (maximum talk time, idle, disconnect).
pub fn stop(duration: Duration, message_id: &str, reason: Option<&str>) -> Value {
    let duration = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    json(&Stop { duration, message_id, reason })
}

/// A STOP in `from`'s name for the listeners of its talk `id`, which the router ended
/// (`reason`): VoicePing's `{duration, message_id}` with the reason, in the layout of the
/// talk's START (the talk's message id in the slot, when it had one).
pub fn talk_stop(
    channel: ChannelType,
    from: &Id,
    to: &Id,
    id: &str,
    with_message_id: bool,
    held: Duration,
    reason: &str,
) -> Bytes {
    let slot_id = Value::from(id);
    let slot = if with_message_id { Slot::Id(Some(&slot_id)) } else { Slot::Absent };
    super::channel_frame(channel, STOP, Some(from), Some(to), slot, &stop(held, id, Some(reason)))
}

#[derive(Serialize)]
struct Text<'a> {
    message_id: &'a str,
    text: &'a str,
}

/// What a TEXT's receivers get, carrying the text's message id. A string payload (what
/// VoicePing apps send: plain text, or JSON with a `text` field) becomes VoicePing's JSON
/// string `{"message_id", "text"}`; a map keeps its fields, `message_id` set; any other
/// payload is relayed as sent.
pub fn text(payload: &Value, message_id: &str) -> Value {
    match payload {
        Value::String(s) => match s.as_str() {
            Some(raw) => {
                let parsed: Option<serde_json::Value> = serde_json::from_str(raw).ok();
                let text = parsed.as_ref().and_then(|json| json.get("text")?.as_str()).unwrap_or(raw);
                json(&Text { message_id, text })
            }
            None => payload.clone(),
        },
        Value::Map(fields) => {
            let mut fields: Vec<(Value, Value)> =
                fields.iter().filter(|(key, _)| key.as_str() != Some("message_id")).cloned().collect();
            fields.push((Value::from("message_id"), Value::from(message_id)));
            Value::Map(fields)
        }
        other => other.clone(),
    }
}

fn json(value: &impl Serialize) -> Value {
    // Serialising these plain structs cannot fail.
    Value::from(serde_json::to_string(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ack_echoes_as_voiceping_did() {
        let stamp = Value::from(1_702_281_234_567u64);
        assert_eq!(start_ack(ChannelType::Group, &stamp), Value::from("1702281234567"));
        assert_eq!(start_ack(ChannelType::Private, &stamp), stamp);
        assert_eq!(start_ack(ChannelType::Group, &Value::F64(1_702_281_234_567.0)), Value::from("1702281234567"));
        for none in [Value::Nil, Value::from(0), Value::from(""), Value::from(false), Value::Ext(0, vec![0])] {
            assert_eq!(start_ack(ChannelType::Group, &none), Value::from(ACKNOWLEDGED), "{none}");
        }
        let map = Value::Map(vec![("codec".into(), "opus".into())]);
        assert_eq!(start_ack(ChannelType::Group, &map), map);
    }

    #[test]
    fn stop_and_text_are_voicepings_json_strings() {
        let stop = stop(Duration::from_millis(1500), "0_3_18_1_x", None);
        assert_eq!(stop.as_str(), Some(r#"{"duration":1500,"message_id":"0_3_18_1_x"}"#));
        let cut = super::stop(Duration::ZERO, "m", Some("idle"));
        assert_eq!(cut.as_str(), Some(r#"{"duration":0,"message_id":"m","reason":"idle"}"#));

        let sent = r#"{"message_id":"client","text":"Hello \"VoicePing\""}"#;
        let relayed = text(&Value::from(sent), "m1");
        assert_eq!(relayed.as_str(), Some(r#"{"message_id":"m1","text":"Hello \"VoicePing\""}"#));
        for plain in ["over", "42", r#"{"no":"text"}"#] {
            let relayed: serde_json::Value = serde_json::from_str(text(&plain.into(), "m").as_str().unwrap()).unwrap();
            assert_eq!(relayed, serde_json::json!({"message_id": "m", "text": plain}));
        }
        let map = Value::Map(vec![("text".into(), "copy".into()), ("message_id".into(), "theirs".into())]);
        let relayed = text(&map, "m2");
        assert_eq!((relayed["text"].as_str(), relayed["message_id"].as_str()), (Some("copy"), Some("m2")));
        assert_eq!(relayed.as_map().map(Vec::len), Some(2));
        assert_eq!(text(&Value::Binary(vec![1]), "m"), Value::Binary(vec![1]));
    }
}
