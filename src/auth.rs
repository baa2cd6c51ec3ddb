//! Who is connecting: JWT verification and the handshake's credentials.
//!
//! Mobile apps send the token in a `token` header with `device_id` beside it. Browsers
//! cannot set WebSocket headers, so (as VoicePing clients do) they may send the pair as
//! `Sec-WebSocket-Protocol: <token>, <deviceId>`; the router then has to echo one of the
//! offered protocols back or the browser drops the connection.

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// Seconds of clock skew forgiven between the token's issuer and this router, on `exp`,
/// `nbf` and a post-dated `iat`.
pub const LEEWAY_SECS: u64 = 5;

/// Shortest HS256 secret accepted without a warning: RFC 7518 §3.2 asks for a key at least
/// as long as the hash output (256 bits). A shorter one can be guessed offline from any
/// single token it signed, and then used to forge tokens.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a connection may do: mobiles have presence, web/dashboard sessions watch it, and
/// services are backends that read presence (over HTTP, or watching it like a dashboard).
/// Which users each may read is [`Scope`](crate::scope::Scope)'s rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mobile,
    Web,
    Dashboard,
    Service,
}

impl Role {
    /// Dashboards and web clients receive the snapshot and the update stream.
    pub fn watches_presence(self) -> bool {
        matches!(self, Role::Web | Role::Dashboard | Role::Service)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mobile => "mobile",
            Role::Web => "web",
            Role::Dashboard => "dashboard",
            Role::Service => "service",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; a string or a number.
    pub sub: Id,
    pub role: Role,
    /// Expiry, Unix seconds; required.
    pub exp: u64,
    /// Issued at, Unix seconds. Read only for the lifetime cap (`--max-token-lifetime`);
    /// anything but whole seconds reads as absent, so without the cap it never refuses a token.
    #[serde(default, deserialize_with = "whole_seconds", skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// A mobile's groups: which dashboards may see its presence. A dashboard's groups:
    /// the only groups whose members it sees; without the claim it sees everyone.
    /// Present means a list: `"groups": null` is refused rather than read as "no claim",
    /// which would let a dashboard token read everyone.
    #[serde(default, deserialize_with = "present_list", skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Id>>,
}

/// A claim that, when present, must be a list (absent is `None` through `default`).
fn present_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<Id>>, D::Error> {
    Vec::<Id>::deserialize(deserializer).map(Some)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet: its nbf is more than {LEEWAY_SECS} s ahead of this router's clock")]
    NotYetValid,
    #[error("token has no iat in whole Unix seconds, so its lifetime cannot be checked against the {max} s limit")]
    MissingIat { max: u64 },
    #[error("token lifetime (exp - iat) is {lifetime} s, longer than this router accepts ({max} s)")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// A low-cardinality label for metrics and the JSON error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::MissingIat { .. } => "token_missing_iat",
            AuthError::LifetimeTooLong { .. } => "token_lifetime_too_long",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// Verifies tokens against one configured key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Longest `exp - iat` accepted, in seconds; `None`: no limit.
    max_lifetime: Option<u64>,
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Authenticator {
            key: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256),
            max_lifetime: None,
        }
    }

    /// An asymmetric algorithm (RS*, PS*, ES*, EdDSA) with the issuer's public key in PEM.
    pub fn public_key(pem: &[u8], algorithm: Algorithm) -> anyhow::Result<Self> {
        let key = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem)?,
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem)?,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                anyhow::bail!("{algorithm:?} takes a secret, not a public key")
            }
            _ => DecodingKey::from_rsa_pem(pem)?,
        };
        Ok(Authenticator { key, validation: validation(algorithm), max_lifetime: None })
    }

    /// Refuses tokens that live longer than `secs` from issue (`iat`) to expiry (`exp`),
    /// and tokens without `iat`; `None` accepts any lifetime. Bounds how long a leaked
    /// token stays useful, whatever expiry its issuer gave it.
    pub fn max_lifetime(mut self, secs: Option<u64>) -> Self {
        self.max_lifetime = secs;
        self
    }

    /// The signature, the algorithm, `exp` and `nbf` (each with [`LEEWAY_SECS`]), the
    /// claims' shape, then the lifetime cap.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        if let Some(max) = self.max_lifetime {
            let iat = claims.iat.ok_or(AuthError::MissingIat { max })?;
            // A post-dated iat counts from now: it must not stretch what the token is good for.
            let issued = iat.min(crate::presence::unix_ms() / 1000 + LEEWAY_SECS);
            let lifetime = claims.exp.saturating_sub(issued);
            if lifetime > max {
                return Err(AuthError::LifetimeTooLong { lifetime, max });
            }
        }
        Ok(claims)
    }
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v
}

/// A NumericDate in whole seconds, as `exp` is read; anything else (a float, a string,
/// null, a negative number) reads as absent.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Whole(u64),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Seconds::deserialize(deserializer)? {
        Seconds::Whole(secs) => Some(secs),
        Seconds::Other(_) => None,
    })
}

/// Mints an HS256 token; for development (`make run`), the examples, tests and load tool.
/// It is issued now (`iat`) and expires `ttl_secs` later (`exp`), so its lifetime, as
/// `--max-token-lifetime` measures it, is `ttl_secs`.
pub fn mint_hs256(secret: &[u8], sub: &str, role: Role, ttl_secs: u64) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_in(secret, sub, role, None, ttl_secs)
}

/// [`mint_hs256`] with a `groups` claim.
pub fn mint_hs256_in(
    secret: &[u8],
    sub: &str,
    role: Role,
    groups: Option<&[&str]>,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = crate::presence::unix_ms() / 1000;
    let mut claims = serde_json::json!({
        "sub": sub,
        "role": role,
        "iat": now,
        "exp": now + ttl_secs,
    });
    if let Some(groups) = groups {
        claims["groups"] = serde_json::json!(groups);
    }
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret))
}

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

    const SECRET: &[u8] = b"test-secret";

    #[test]
    fn minted_tokens_verify_with_their_role() {
        let auth = Authenticator::hs256(SECRET);
        let claims = auth.verify(&mint_hs256(SECRET, "u1", Role::Mobile, 60).unwrap()).unwrap();
        assert_eq!(claims.sub.as_str(), "u1");
        assert_eq!(claims.role, Role::Mobile);
    }

    #[test]
    fn wrong_key_expired_and_garbage_are_refused() {
        let auth = Authenticator::hs256(SECRET);
        let other = mint_hs256(b"other", "u1", Role::Mobile, 60).unwrap();
        assert!(matches!(auth.verify(&other), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        let expired = Claims { sub: Id::parse("u1").unwrap(), role: Role::Web, exp: 1_000, iat: None, groups: None };
        let token = jsonwebtoken::encode(&Header::default(), &expired, &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::Expired);
    }

    fn now() -> u64 {
        crate::presence::unix_ms() / 1000
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn minted_tokens_are_issued_now() {
        let before = now();
        let claims = Authenticator::hs256(SECRET).verify(&mint_hs256(SECRET, "u1", Role::Mobile, 60).unwrap()).unwrap();
        let iat = claims.iat.expect("mint sets iat");
        assert!((before..=now()).contains(&iat), "iat {iat}");
        assert_eq!(claims.exp - iat, 60);
    }

    #[test]
    fn not_before_is_checked_with_leeway() {
        let auth = Authenticator::hs256(SECRET);
        let token = |nbf: u64| sign(serde_json::json!({"sub": "u", "role": "mobile", "exp": now() + 600, "nbf": nbf}));
        let refused = auth.verify(&token(now() + 60)).unwrap_err();
        assert_eq!((refused.code(), &refused), ("token_not_yet_valid", &AuthError::NotYetValid));
        assert!(refused.to_string().contains("nbf"), "{refused}");
        assert!(auth.verify(&token(now() + LEEWAY_SECS - 2)).is_ok(), "within the leeway");
        assert!(auth.verify(&token(now() - 10)).is_ok());
        let unreadable = sign(serde_json::json!({"sub": "u", "role": "mobile", "exp": now() + 600, "nbf": "soon"}));
        assert_eq!(auth.verify(&unreadable).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn an_audience_is_refused_and_an_issuer_ignored() {
        let auth = Authenticator::hs256(SECRET);
        let with = |claim: &str| sign(serde_json::json!({"sub": "u", "role": "web", "exp": now() + 60, claim: "x"}));
        assert_eq!(auth.verify(&with("aud")).unwrap_err().code(), "invalid_token", "no audience to match");
        assert!(auth.verify(&with("iss")).is_ok());
    }

    #[test]
    fn lifetime_cap_measures_exp_minus_iat() {
        let auth = Authenticator::hs256(SECRET).max_lifetime(Some(600));
        assert!(auth.verify(&mint_hs256(SECRET, "u", Role::Mobile, 600).unwrap()).is_ok(), "exactly the cap");
        let refused = auth.verify(&mint_hs256(SECRET, "u", Role::Mobile, 601).unwrap()).unwrap_err();
        assert_eq!(refused, AuthError::LifetimeTooLong { lifetime: 601, max: 600 });
        assert_eq!(refused.code(), "token_lifetime_too_long");
        assert!(refused.to_string().contains("601 s") && refused.to_string().contains("600 s"), "{refused}");

        // An iat long ago with an exp still ahead: the token was issued for too long.
        let old = sign(serde_json::json!({"sub": "u", "role": "mobile", "iat": now() - 3600, "exp": now() + 60}));
        assert_eq!(auth.verify(&old).unwrap_err().code(), "token_lifetime_too_long");
        // A post-dated iat counts from now, so it cannot stretch a token past the cap...
        let later = now() + 10 * 365 * 86_400;
        let post_dated = sign(serde_json::json!({"sub": "u", "role": "mobile", "iat": later, "exp": later + 60}));
        assert_eq!(auth.verify(&post_dated).unwrap_err().code(), "token_lifetime_too_long");
        // ...while an issuer clock a little ahead is forgiven like exp and nbf are.
        let skewed = sign(serde_json::json!({"sub": "u", "role": "mobile", "iat": now() + 3, "exp": now() + 603}));
        assert!(auth.verify(&skewed).is_ok());
    }

    #[test]
    fn lifetime_cap_needs_a_whole_seconds_iat() {
        let capped = Authenticator::hs256(SECRET).max_lifetime(Some(600));
        let uncapped = Authenticator::hs256(SECRET);
        let exp = now() + 60;
        for iat in [serde_json::Value::Null, (now() as f64 + 0.5).into(), "yesterday".into(), (-5).into()] {
            let mut claims = serde_json::json!({"sub": "u", "role": "mobile", "exp": exp});
            if !iat.is_null() {
                claims["iat"] = iat.clone();
            }
            let token = sign(claims);
            let refused = capped.verify(&token).unwrap_err();
            assert_eq!((refused.code(), &refused), ("token_missing_iat", &AuthError::MissingIat { max: 600 }), "{iat}");
            assert!(refused.to_string().contains("iat"), "{refused}");
            assert!(uncapped.verify(&token).is_ok(), "without the cap iat is not read: {iat}");
        }
    }

    #[test]
    fn public_key_tokens_verify_and_other_algorithms_do_not() {
        // A throwaway P-256 key pair, generated for these tests only.
        let private = EncodingKey::from_ec_pem(include_bytes!("../tests/fixtures/es256-private.pem")).unwrap();
        let auth =
            Authenticator::public_key(include_bytes!("../tests/fixtures/es256-public.pem"), Algorithm::ES256).unwrap();
        let claims = serde_json::json!({"sub": "u1", "role": "mobile", "exp": u32::MAX});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &private).unwrap();
        assert_eq!(auth.verify(&token).unwrap().sub.as_str(), "u1");
        // An HS256 token (say, signed with the public key as a secret) must not pass.
        let forged = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(include_bytes!("../tests/fixtures/es256-public.pem")),
        )
        .unwrap();
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
        assert!(Authenticator::public_key(b"not a pem", Algorithm::ES256).is_err());
        assert!(
            Authenticator::public_key(include_bytes!("../tests/fixtures/es256-public.pem"), Algorithm::HS256).is_err()
        );
    }

    #[test]
    fn a_null_groups_claim_is_refused_not_read_as_absent() {
        let auth = Authenticator::hs256(SECRET);
        let key = EncodingKey::from_secret(SECRET);
        let claims = serde_json::json!({"sub": "d", "role": "dashboard", "exp": u32::MAX, "groups": null});
        let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn groups_claim_is_optional() {
        let auth = Authenticator::hs256(SECRET);
        let scoped = mint_hs256_in(SECRET, "d", Role::Dashboard, Some(&["g1", "g2"]), 60).unwrap();
        let groups = auth.verify(&scoped).unwrap().groups.unwrap();
        assert_eq!(groups.iter().map(Id::as_str).collect::<Vec<_>>(), ["g1", "g2"]);
        assert_eq!(auth.verify(&mint_hs256(SECRET, "d", Role::Dashboard, 60).unwrap()).unwrap().groups, None);
    }

    #[test]
    fn numeric_subject_and_unknown_role() {
        let auth = Authenticator::hs256(SECRET);
        let key = EncodingKey::from_secret(SECRET);
        let numeric = serde_json::json!({"sub": 123, "role": "dashboard", "exp": u32::MAX});
        let claims = auth.verify(&jsonwebtoken::encode(&Header::default(), &numeric, &key).unwrap()).unwrap();
        assert_eq!(claims.sub.as_str(), "123");
        let admin = serde_json::json!({"sub": "u", "role": "admin", "exp": u32::MAX});
        assert!(auth.verify(&jsonwebtoken::encode(&Header::default(), &admin, &key).unwrap()).is_err());
    }

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
