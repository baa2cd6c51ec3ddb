//! Who is connecting: JWT verification.
//!
//! A token is checked in two steps: its signature, by `jsonwebtoken` with the key the
//! configuration names (a shared secret, the issuer's public key, or the issuer's published
//! key set chosen by the token's `kid`), then its claims, by [`claims::Rules`]. Where a
//! request carries the token is [`Credentials`]' business.

mod claims;
mod credentials;
mod error;
pub mod jwks;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use self::claims::Signed;
pub use self::{
    claims::{Claims, MAX_NUMERIC_DATE, RESERVED_CLAIMS, Role, Rules},
    credentials::Credentials,
    error::AuthError,
    jwks::Jwks,
};
use crate::metrics;

/// Seconds of clock skew forgiven between the token's issuer and this router, on `exp`,
/// `nbf` and a post-dated `iat`.
pub const LEEWAY_SECS: u64 = 5;

/// Shortest HS256 secret accepted without a warning: RFC 7518 §3.2 asks for a key at least
/// as long as the hash output (256 bits). A shorter one can be guessed offline from any
/// single token it signed, and then used to forge tokens.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the keys that verify signatures come from, and the algorithms each verifies.
enum Keys {
    /// One key for every token: a shared secret or the issuer's public key.
    Fixed { key: DecodingKey, algorithm: Algorithm },
    /// The issuer's key set: each token names its key (`kid`).
    Set(Box<Jwks>),
}

/// Verifies tokens: their signature against the configured keys, then their claims.
pub struct Authenticator {
    keys: Keys,
    rules: Rules,
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        let keys = Keys::Fixed { key: DecodingKey::from_secret(secret), algorithm: Algorithm::HS256 };
        Authenticator { keys, rules: Rules::default() }
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
        let keys = Keys::Fixed { key, algorithm };
        Ok(Authenticator { keys, rules: Rules::default() })
    }

    /// The issuer's published key set (JWKS); each key verifies the algorithms of its type.
    pub fn key_set(jwks: Jwks) -> Self {
        Authenticator { keys: Keys::Set(Box::new(jwks)), rules: Rules::default() }
    }

    /// What every token's claims must meet beyond its signature (the audience, the issuer,
    /// the lifetime cap), and which claims name the user and its groups.
    pub fn rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// The signature with its algorithm, then [`Rules::check`]'s rules (the claims' shapes
    /// first). A refusal is counted by its code.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let verified = self.check(token).await;
        if let Err(e) = &verified {
            ::metrics::counter!(metrics::TOKEN_REFUSALS, "reason" => e.code()).increment(1);
        }
        verified
    }

    async fn check(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let signed = match &self.keys {
            Keys::Fixed { key, algorithm } => verified_claims(token, header.alg, key, &[*algorithm])?,
            Keys::Set(jwks) => {
                let keys = jwks.key(header.kid.as_deref()).await?;
                // The kid's key for the token's algorithm (there may be one per key type).
                let key = keys.iter().find(|key| key.algorithms.contains(&header.alg)).unwrap_or(&keys[0]);
                verified_claims(token, header.alg, &key.decoding, &key.algorithms)?
            }
        };
        self.rules.check(signed, crate::presence::unix_ms() / 1000)
    }
}

fn invalid(e: jsonwebtoken::errors::Error) -> AuthError {
    AuthError::Invalid(e.to_string())
}

/// Checks the signature of `token` (whose header names `algorithm`) with `key`, by one of
/// `algorithms` only (never the one a forger would pick, say HS256 with a public key as
/// the secret), then reads its claims.
///
/// Not `jsonwebtoken::decode`: after the signature, it reads the registered claims once
/// more for its own validation, and one of an unexpected JSON type there (an `exp` that is
/// a list) fails the token with a bare JSON error instead of the reason [`Rules::check`]
/// gives.
fn verified_claims(
    token: &str,
    algorithm: Algorithm,
    key: &DecodingKey,
    algorithms: &[Algorithm],
) -> Result<Signed, AuthError> {
    if !algorithms.contains(&algorithm) {
        return Err(AuthError::Invalid(format!("tokens signed with {algorithm:?} are not accepted")));
    }
    // The header was read, so the token has its three parts.
    let (message, signature) = token.rsplit_once('.').unwrap_or_default();
    if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, algorithm).map_err(invalid)? {
        return Err(AuthError::Invalid("the signature does not match".into()));
    }
    // The signature holds: the claims are the issuer's, and may be read.
    jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(invalid)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    const SECRET: &[u8] = b"test-secret";

    #[tokio::test]
    async fn minted_tokens_verify_with_their_role() {
        let auth = Authenticator::hs256(SECRET);
        let claims = auth.verify(&mint_hs256(SECRET, "u1", Role::Mobile, 60).unwrap()).await.unwrap();
        assert_eq!(claims.sub.as_str(), "u1");
        assert_eq!(claims.role, Role::Mobile);
    }

    #[tokio::test]
    async fn wrong_key_expired_and_garbage_are_refused() {
        let auth = Authenticator::hs256(SECRET);
        let other = mint_hs256(b"other", "u1", Role::Mobile, 60).unwrap();
        assert!(matches!(auth.verify(&other).await, Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("not.a.jwt").await, Err(AuthError::Invalid(_))));
        let expired =
            Claims { sub: Id::parse("u1").unwrap(), role: Role::Web, exp: Some(1_000), iat: None, groups: None };
        let token = jsonwebtoken::encode(&Header::default(), &expired, &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(auth.verify(&token).await.unwrap_err(), AuthError::Expired);
    }

    fn now() -> u64 {
        crate::presence::unix_ms() / 1000
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[tokio::test]
    async fn minted_tokens_are_issued_now() {
        let before = now();
        let claims =
            Authenticator::hs256(SECRET).verify(&mint_hs256(SECRET, "u1", Role::Mobile, 60).unwrap()).await.unwrap();
        let iat = claims.iat.expect("mint sets iat");
        assert!((before..=now()).contains(&iat), "iat {iat}");
        assert_eq!(claims.exp, Some(iat + 60));
    }

    #[tokio::test]
    async fn not_before_is_checked_with_leeway() {
        let auth = Authenticator::hs256(SECRET);
        let token = |nbf: u64| sign(serde_json::json!({"sub": "u", "role": "mobile", "exp": now() + 600, "nbf": nbf}));
        let refused = auth.verify(&token(now() + 60)).await.unwrap_err();
        assert_eq!((refused.code(), &refused), ("token_not_yet_valid", &AuthError::NotYetValid));
        assert!(refused.to_string().contains("nbf"), "{refused}");
        assert!(auth.verify(&token(now() + LEEWAY_SECS - 2)).await.is_ok(), "within the leeway");
        assert!(auth.verify(&token(now() - 10)).await.is_ok());
        let unreadable = sign(serde_json::json!({"sub": "u", "role": "mobile", "exp": now() + 600, "nbf": "soon"}));
        assert_eq!(auth.verify(&unreadable).await.unwrap_err().code(), "token_invalid_date");
    }

    #[tokio::test]
    async fn lifetime_cap_measures_exp_minus_iat() {
        let auth = Authenticator::hs256(SECRET).rules(Rules { max_lifetime: Some(600), ..Rules::default() });
        assert!(auth.verify(&mint_hs256(SECRET, "u", Role::Mobile, 600).unwrap()).await.is_ok(), "exactly the cap");
        let refused = auth.verify(&mint_hs256(SECRET, "u", Role::Mobile, 601).unwrap()).await.unwrap_err();
        assert_eq!(refused, AuthError::LifetimeTooLong { lifetime: 601, max: 600 });
        assert_eq!(refused.code(), "token_lifetime_too_long");
        assert!(refused.to_string().contains("601 s") && refused.to_string().contains("600 s"), "{refused}");

        // An iat long ago with an exp still ahead: the token was issued for too long.
        let old = sign(serde_json::json!({"sub": "u", "role": "mobile", "iat": now() - 3600, "exp": now() + 60}));
        assert_eq!(auth.verify(&old).await.unwrap_err().code(), "token_lifetime_too_long");
        // A post-dated iat counts from now, so it cannot stretch a token past the cap...
        let later = now() + 10 * 365 * 86_400;
        let post_dated = sign(serde_json::json!({"sub": "u", "role": "mobile", "iat": later, "exp": later + 60}));
        assert_eq!(auth.verify(&post_dated).await.unwrap_err().code(), "token_lifetime_too_long");
        // ...while an issuer clock a little ahead is forgiven like exp and nbf are.
        let skewed = sign(serde_json::json!({"sub": "u", "role": "mobile", "iat": now() + 3, "exp": now() + 603}));
        assert!(auth.verify(&skewed).await.is_ok());
    }

    #[tokio::test]
    async fn public_key_tokens_verify_and_other_algorithms_do_not() {
        // A throwaway P-256 key pair, generated for these tests only.
        let private = EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/es256-private.pem")).unwrap();
        let auth = Authenticator::public_key(include_bytes!("../../tests/fixtures/es256-public.pem"), Algorithm::ES256)
            .unwrap();
        let claims = serde_json::json!({"sub": "u1", "role": "mobile", "exp": u32::MAX});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &private).unwrap();
        assert_eq!(auth.verify(&token).await.unwrap().sub.as_str(), "u1");
        // An HS256 token (say, signed with the public key as a secret) must not pass.
        let forged = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(include_bytes!("../../tests/fixtures/es256-public.pem")),
        )
        .unwrap();
        assert!(matches!(auth.verify(&forged).await, Err(AuthError::Invalid(_))));
        assert!(Authenticator::public_key(b"not a pem", Algorithm::ES256).is_err());
        assert!(
            Authenticator::public_key(include_bytes!("../../tests/fixtures/es256-public.pem"), Algorithm::HS256)
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_null_groups_claim_is_refused_not_read_as_absent() {
        let auth = Authenticator::hs256(SECRET);
        let key = EncodingKey::from_secret(SECRET);
        let claims = serde_json::json!({"sub": "d", "role": "dashboard", "exp": u32::MAX, "groups": null});
        let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        assert!(matches!(auth.verify(&token).await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn groups_claim_is_optional() {
        let auth = Authenticator::hs256(SECRET);
        let scoped = mint_hs256_in(SECRET, "d", Role::Dashboard, Some(&["g1", "g2"]), 60).unwrap();
        let groups = auth.verify(&scoped).await.unwrap().groups.unwrap();
        assert_eq!(groups.iter().map(Id::as_str).collect::<Vec<_>>(), ["g1", "g2"]);
        assert_eq!(auth.verify(&mint_hs256(SECRET, "d", Role::Dashboard, 60).unwrap()).await.unwrap().groups, None);
        // A group named twice counts once, in the order first named.
        let repeated = mint_hs256_in(SECRET, "d", Role::Dashboard, Some(&["g2", "g1", "g2", "g1"]), 60).unwrap();
        let groups = auth.verify(&repeated).await.unwrap().groups.unwrap();
        assert_eq!(groups.iter().map(Id::as_str).collect::<Vec<_>>(), ["g2", "g1"]);
    }

    #[tokio::test]
    async fn numeric_subject_and_unknown_role() {
        let auth = Authenticator::hs256(SECRET);
        let key = EncodingKey::from_secret(SECRET);
        let numeric = serde_json::json!({"sub": 123, "role": "dashboard", "exp": u32::MAX});
        let claims = auth.verify(&jsonwebtoken::encode(&Header::default(), &numeric, &key).unwrap()).await.unwrap();
        assert_eq!(claims.sub.as_str(), "123");
        let admin = serde_json::json!({"sub": "u", "role": "admin", "exp": u32::MAX});
        assert!(auth.verify(&jsonwebtoken::encode(&Header::default(), &admin, &key).unwrap()).await.is_err());
    }
}
