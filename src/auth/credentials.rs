//! Where a request carries its token and device id, before anything is verified.
//!
//! Mobile apps send the token in a `token` header with `device_id` beside it; VoicePing's
//! apps may name them `voicepingtoken` and `deviceid`. Browsers cannot set WebSocket
//! headers, so (as VoicePing clients do) they may send the pair as
//! `Sec-WebSocket-Protocol: <token>, <deviceId>`; the router then has to echo one of the
//! offered protocols back or the browser drops the connection.

use axum::http::HeaderMap;

/// Credentials found on a request, before verification.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    pub device_id: Option<String>,
    /// The subprotocol to echo when the client offered `Sec-WebSocket-Protocol`.
    pub protocol: Option<String>,
}

impl Credentials {
    /// The first of these that a request carries wins, the others are not read (VoicePing's
    /// router read them in the same order):
    /// - the token: the `token` header, `voicepingtoken`, `Authorization: Bearer`, the first
    ///   `Sec-WebSocket-Protocol` entry;
    /// - the device id: the `device_id` header, `deviceid`, the second
    ///   `Sec-WebSocket-Protocol` entry. Unlike VoicePing's router, the token never stands
    ///   in for a missing device id: it would be stored and logged as one.
    ///
    /// Values are read as UTF-8, not only visible ASCII: a device id in Hebrew is a device
    /// id (and one with characters no id may hold is refused as such, not dropped).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            let value = headers.get(name).and_then(|v| std::str::from_utf8(v.as_bytes()).ok())?;
            Some(value.trim()).filter(|v| !v.is_empty()).map(String::from)
        };
        let bearer = header("authorization").and_then(|v| {
            v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(|t| t.trim().to_string())
        });
        let offered: Vec<String> = header("sec-websocket-protocol")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let protocol = offered.get(1).or(offered.first()).cloned();
        Credentials {
            token: header("token").or_else(|| header("voicepingtoken")).or(bearer).or_else(|| offered.first().cloned()),
            device_id: header("device_id").or_else(|| header("deviceid")).or_else(|| offered.get(1).cloned()),
            protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_headers_or_subprotocol() {
        let mut h = HeaderMap::new();
        h.insert("token", "t1".parse().unwrap());
        h.insert("device_id", "d1".parse().unwrap());
        let c = Credentials::from_headers(&h);
        assert_eq!((c.token.as_deref(), c.device_id.as_deref(), c.protocol), (Some("t1"), Some("d1"), None));

        let mut h = HeaderMap::new();
        h.insert("sec-websocket-protocol", "t2, d2".parse().unwrap());
        let c = Credentials::from_headers(&h);
        assert_eq!(
            (c.token.as_deref(), c.device_id.as_deref(), c.protocol.as_deref()),
            (Some("t2"), Some("d2"), Some("d2"))
        );

        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer t3".parse().unwrap());
        assert_eq!(Credentials::from_headers(&h).token.as_deref(), Some("t3"));
        assert_eq!(Credentials::from_headers(&HeaderMap::new()), Credentials::default());
    }

    #[test]
    fn voiceping_header_names_are_read_after_the_usual_ones() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            Credentials::from_headers(&h)
        };
        let c = headers(&[("voicepingtoken", "t1"), ("deviceid", "d1")]);
        assert_eq!((c.token.as_deref(), c.device_id.as_deref()), (Some("t1"), Some("d1")));
        let c = headers(&[("token", "t1"), ("voicepingtoken", "t2"), ("device_id", "d1"), ("deviceid", "d2")]);
        assert_eq!((c.token.as_deref(), c.device_id.as_deref()), (Some("t1"), Some("d1")));
        let c =
            headers(&[("voicepingtoken", "t2"), ("authorization", "Bearer t3"), ("sec-websocket-protocol", "t4, d4")]);
        assert_eq!((c.token.as_deref(), c.device_id.as_deref()), (Some("t2"), Some("d4")));
        let c = headers(&[("deviceid", "d2"), ("sec-websocket-protocol", "t4, d4")]);
        assert_eq!((c.token.as_deref(), c.device_id.as_deref()), (Some("t4"), Some("d2")));
        // A blank header counts as absent; a token never doubles as the device id.
        let c = headers(&[("token", " "), ("voicepingtoken", "t2"), ("deviceid", "")]);
        assert_eq!((c.token.as_deref(), c.device_id.as_deref()), (Some("t2"), None));
    }

    #[test]
    fn header_values_are_read_as_utf8() {
        let mut h = HeaderMap::new();
        h.insert("token", "t1".parse().unwrap());
        h.insert("device_id", axum::http::HeaderValue::from_bytes("טלפון\u{202E}".as_bytes()).unwrap());
        let c = Credentials::from_headers(&h);
        assert_eq!(c.device_id.as_deref(), Some("טלפון\u{202E}"), "read whole, for the id check to refuse");
    }
}
