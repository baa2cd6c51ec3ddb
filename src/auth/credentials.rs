//! Where a request carries its token and device id, before anything is verified.
//!
//! Mobile apps send the token in a `token` header with `device_id` beside it. Browsers
//! cannot set WebSocket headers, so (as VoicePing clients do) they may send the pair as
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
    /// Reads `token` / `device_id` headers, then `Authorization: Bearer`, then the
    /// `Sec-WebSocket-Protocol` pair.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).map(String::from)
        };
        let bearer = header("authorization").and_then(|v| {
            v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(|t| t.trim().to_string())
        });
        let offered: Vec<String> = header("sec-websocket-protocol")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let protocol = offered.get(1).or(offered.first()).cloned();
        Credentials {
            token: header("token").or(bearer).or_else(|| offered.first().cloned()),
            device_id: header("device_id").or_else(|| offered.get(1).cloned()),
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
}
