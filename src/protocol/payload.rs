//! Typed readings of the payloads of the client frames that carry one: STATUS (35),
//! INDICATOR (37) and REFRESH (40). Pure functions; a bad payload is a [`PayloadError`] the connection
//! answers with ERROR `invalid_payload`.

use rmpv::Value;

use std::sync::Arc;

use crate::presence::{Activity, ActivityChange, MAX_ACTIVITY_TYPE, MAX_STATUS_TEXT, Mode};

/// The activity indicators a client may announce in a group. `Talking` is set
/// by the router itself while a user holds a group's PTT floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndicatorKind {
    Typing,
    Recording,
    Talking,
}

impl IndicatorKind {
    pub const ALL: [IndicatorKind; 3] = [IndicatorKind::Typing, IndicatorKind::Recording, IndicatorKind::Talking];

    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorKind::Typing => "typing",
            IndicatorKind::Recording => "recording",
            IndicatorKind::Talking => "talking",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload must be a map")]
    NotMap,
    #[error("status must be one of online, away, dnd, invisible")]
    Status,
    #[error("text must be a string of at most {MAX_STATUS_TEXT} bytes without control characters, or nil")]
    Text,
    #[error(
        "activity must be nil or {{type, name}}: type 1 to {MAX_ACTIVITY_TYPE} bytes of a-z, 0-9, _ and -; name at most \
         {MAX_STATUS_TEXT} bytes without control characters"
    )]
    Activity,
    #[error("type must be typing or recording")]
    Kind,
    #[error("isActive must be a boolean")]
    IsActive,
    #[error("token must be a string")]
    Token,
}

/// The value of `key` in a msgpack map, if the map has it.
pub(super) fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

pub(super) fn map(payload: &Value) -> Result<&[(Value, Value)], PayloadError> {
    match payload {
        Value::Map(map) => Ok(map),
        _ => Err(PayloadError::NotMap),
    }
}

/// REFRESH: `{token: str}`.
pub fn refresh_token(payload: &Value) -> Result<&str, PayloadError> {
    field(map(payload)?, "token").and_then(Value::as_str).ok_or(PayloadError::Token)
}

/// STATUS: `{status: "online"|"away"|"dnd"|"invisible", text?: str|nil, activity?:
/// {type, name?}|nil}`. An empty or missing text clears it; a missing activity leaves it
/// as it is (clients that predate it), nil clears it.
pub fn status(payload: &Value) -> Result<(Mode, Option<String>, ActivityChange), PayloadError> {
    let map = map(payload)?;
    let mode = field(map, "status").and_then(Value::as_str).and_then(Mode::parse).ok_or(PayloadError::Status)?;
    let text = match field(map, "text") {
        None | Some(Value::Nil) => None,
        Some(Value::String(s)) => status_text(s.as_str().ok_or(PayloadError::Text)?)?,
        Some(_) => return Err(PayloadError::Text),
    };
    let activity = match field(map, "activity") {
        None => ActivityChange::Keep,
        Some(Value::Nil) => ActivityChange::Clear,
        Some(Value::Map(activity)) => {
            let kind = field(activity, "type").and_then(Value::as_str).ok_or(PayloadError::Activity)?;
            let name = match field(activity, "name") {
                None | Some(Value::Nil) => None,
                Some(name) => name.as_str().ok_or(PayloadError::Activity)?.into(),
            };
            activity_change(kind, name)?
        }
        Some(_) => return Err(PayloadError::Activity),
    };
    Ok((mode, text, activity))
}

/// An activity to set: its type a short token ([`Activity::valid_kind`]), its name the
/// status text's limits (empty: none). The WebSocket STATUS frame and the HTTP API read it
/// alike.
pub fn activity_change(kind: &str, name: Option<&str>) -> Result<ActivityChange, PayloadError> {
    if !Activity::valid_kind(kind) {
        return Err(PayloadError::Activity);
    }
    let name = status_text(name.unwrap_or("")).map_err(|_| PayloadError::Activity)?;
    Ok(ActivityChange::Set { kind: Arc::from(kind), name: name.map(Arc::from) })
}

/// A status text as stored: at most [`MAX_STATUS_TEXT`] bytes without control characters;
/// an empty one is none. The WebSocket STATUS frame and the HTTP API read it alike.
pub fn status_text(text: &str) -> Result<Option<String>, PayloadError> {
    if text.len() > MAX_STATUS_TEXT || text.chars().any(char::is_control) {
        return Err(PayloadError::Text);
    }
    Ok(Some(text.to_owned()).filter(|t| !t.is_empty()))
}

/// INDICATOR: `{type: "typing"|"recording", isActive: bool}`; `isActive` defaults to true.
pub fn indicator(payload: &Value) -> Result<(IndicatorKind, bool), PayloadError> {
    let map = map(payload)?;
    let kind = match field(map, "type").and_then(Value::as_str) {
        Some("typing") => IndicatorKind::Typing,
        Some("recording") => IndicatorKind::Recording,
        _ => return Err(PayloadError::Kind),
    };
    let active = match field(map, "isActive") {
        None => true,
        Some(v) => v.as_bool().ok_or(PayloadError::IsActive)?,
    };
    Ok((kind, active))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect())
    }

    #[test]
    fn status_reads_mode_and_text() {
        let got = status(&map_of(&[("status", "dnd".into()), ("text", "driving".into())])).unwrap();
        assert_eq!(got, (Mode::Dnd, Some("driving".into()), ActivityChange::Keep));
        let cleared = status(&map_of(&[("status", "online".into()), ("text", "".into())])).unwrap();
        assert_eq!(cleared, (Mode::Auto, None, ActivityChange::Keep));
        assert_eq!(status(&map_of(&[("status", "busy".into())])), Err(PayloadError::Status));
        assert_eq!(status(&map_of(&[("status", "away".into()), ("text", 5.into())])), Err(PayloadError::Text));
        let long = "x".repeat(MAX_STATUS_TEXT + 1);
        assert_eq!(status(&map_of(&[("status", "away".into()), ("text", long.into())])), Err(PayloadError::Text));
        assert_eq!(status(&Value::from(1)), Err(PayloadError::NotMap));
    }

    #[test]
    fn status_reads_an_activity_to_set_clear_or_keep() {
        let activity = |v: Value| status(&map_of(&[("status", "dnd".into()), ("activity", v)])).map(|(_, _, a)| a);
        let set = activity(map_of(&[("type", "driving".into()), ("name", "Route 9".into())])).unwrap();
        assert_eq!(set, ActivityChange::Set { kind: "driving".into(), name: Some("Route 9".into()) });
        assert_eq!(activity(map_of(&[("type", "on_call".into())])).unwrap().arg(), "on_call\n");
        assert_eq!(activity(Value::Nil).unwrap(), ActivityChange::Clear);
        for bad in [
            map_of(&[("type", "Driving".into())]),
            map_of(&[("type", "".into())]),
            map_of(&[("type", "x".repeat(MAX_ACTIVITY_TYPE + 1).into())]),
            map_of(&[("type", "driving".into()), ("name", "a\nb".into())]),
            map_of(&[("type", "driving".into()), ("name", 5.into())]),
            map_of(&[("name", "no type".into())]),
            Value::from("driving"),
        ] {
            assert_eq!(activity(bad.clone()), Err(PayloadError::Activity), "{bad}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Any msgpack value a few levels deep, with the keys these payloads use likely.
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Nil),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                prop_oneof![
                    Just("online".to_owned()),
                    Just("typing".to_owned()),
                    Just("invisible".to_owned()),
                    ".{0,140}"
                ]
                .prop_map(Value::from),
                proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Binary),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                let key = prop_oneof![Just("status"), Just("text"), Just("type"), Just("isActive"), Just("x")];
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::vec((key.prop_map(Value::from), inner), 0..4).prop_map(Value::Map),
                ]
            })
        }

        proptest! {
            #[test]
            fn payload_readers_never_panic_and_accept_only_what_they_document(payload in value()) {
                if let Ok((_, Some(text), _)) = status(&payload) {
                    prop_assert!(!text.is_empty() && text.len() <= MAX_STATUS_TEXT);
                    prop_assert!(!text.chars().any(char::is_control));
                }
                if let Ok((kind, _)) = indicator(&payload) {
                    prop_assert_ne!(kind, IndicatorKind::Talking);
                }
            }
        }
    }

    #[test]
    fn indicator_reads_kind_and_activity() {
        assert_eq!(indicator(&map_of(&[("type", "typing".into())])).unwrap(), (IndicatorKind::Typing, true));
        let stop = map_of(&[("type", "recording".into()), ("isActive", false.into())]);
        assert_eq!(indicator(&stop).unwrap(), (IndicatorKind::Recording, false));
        assert_eq!(indicator(&map_of(&[("type", "talking".into())])), Err(PayloadError::Kind), "the router's own");
        let bad = map_of(&[("type", "typing".into()), ("isActive", "yes".into())]);
        assert_eq!(indicator(&bad), Err(PayloadError::IsActive));
    }
}
