//! Identifiers of users and groups.
//!
//! JavaScript clients send the same id as `123` or `"123"`, and notepack turns large
//! numbers into uint64 or float64. Every id is normalised to its canonical text once, at
//! the edge (frame decoder, JWT, HTTP body), so the rest of the router compares strings.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, de};

/// Longest id accepted, in bytes: ids become Redis key parts and metric-free log fields.
pub const MAX_ID_LEN: usize = 128;

/// Largest integer a JavaScript number holds exactly (2^53).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A user or group id in canonical text form. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Id(Arc<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("id contains a control character")]
    Control,
    #[error("id contains a bidirectional formatting character")]
    Bidi,
    #[error("id must be a string or an integer")]
    WrongType,
    #[error("numeric id must be a whole number within ±2^53")]
    NotInteger,
}

/// The bidirectional marks, embeddings, overrides and isolates of Unicode (UAX #9): text
/// after them is displayed in another order than it is stored.
fn is_bidi_formatting(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl Id {
    /// Accepts a non-empty string of at most [`MAX_ID_LEN`] bytes without control
    /// characters or bidirectional formatting characters (which would make an id read
    /// differently from what it is, in logs and on dashboards).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(IdError::Control);
        }
        if text.chars().any(is_bidi_formatting) {
            return Err(IdError::Bidi);
        }
        Ok(Id(Arc::from(text)))
    }

    pub fn from_int(value: i128) -> Self {
        Id(Arc::from(value.to_string()))
    }

    /// A float is an id only when it is a whole number a JavaScript client could have meant.
    pub fn from_f64(value: f64) -> Result<Self, IdError> {
        if value.fract() != 0.0 || !value.is_finite() || value.abs() > MAX_SAFE_INTEGER {
            return Err(IdError::NotInteger);
        }
        Ok(Self::from_int(value as i128))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// JSON and JWT ids: a string or a number, as JavaScript produces either.
impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl de::Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a user id (string or integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Id::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id::from_int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id::from_int(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                Id::from_f64(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_and_string_forms_are_one_id() {
        assert_eq!(Id::from_int(123), Id::parse("123").unwrap());
        assert_eq!(Id::from_f64(123.0).unwrap(), Id::parse("123").unwrap());
        let json: Vec<Id> = serde_json::from_str(r#"[123, "123", 123.0]"#).unwrap();
        assert!(json.iter().all(|id| id.as_str() == "123"));
    }

    #[test]
    fn rejects_what_cannot_be_an_id() {
        assert_eq!(Id::parse(""), Err(IdError::Empty));
        assert_eq!(Id::parse(&"x".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong));
        assert_eq!(Id::parse("a\nb"), Err(IdError::Control));
        assert_eq!(Id::parse("admin\u{202E}nimda"), Err(IdError::Bidi));
        assert_eq!(Id::parse("a\u{2067}b"), Err(IdError::Bidi));
        assert!(Id::parse("שלום").is_ok(), "right-to-left letters are ids");
        assert_eq!(Id::from_f64(1.5), Err(IdError::NotInteger));
        assert_eq!(Id::from_f64(f64::NAN), Err(IdError::NotInteger));
        assert_eq!(Id::from_f64(1e300), Err(IdError::NotInteger));
        assert!(serde_json::from_str::<Id>("true").is_err());
        assert!(serde_json::from_str::<Id>("null").is_err());
    }
}
