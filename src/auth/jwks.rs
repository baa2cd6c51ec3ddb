//! The token issuer's published signing keys (a JWKS, RFC 7517), from a URL or a file.
//!
//! Each token names its key (`kid`). The set is cached and read again when it is older than
//! [`Timing::cache_for`], or when a token names a key the cached set does not hold (a new
//! key after a rotation). Either re-read waits at least [`Timing::min_refetch`] after the
//! one before, successful or not, so tokens with made-up `kid`s cannot make the router
//! hammer the identity provider, and one fetch at a time runs: tokens that arrive during it
//! wait for it (an unknown `kid`) or go on with the cached key (a stale set). A set that
//! cannot be fetched leaves the keys fetched before in use.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use reqwest::Url;
use tokio::time::Instant;

use super::AuthError;
use crate::metrics;

/// Largest key set read: identity providers publish a few kilobytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Longest one fetch of the set may take, connecting included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("building the JWKS HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("reading the JWKS file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("fetching the JWKS from {url}: {reason}")]
    Fetch { url: Url, reason: String },
    #[error("the JWKS at {0} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge(String),
    #[error("the JWKS at {from} is not a JSON key set: {source}")]
    Parse { from: String, source: serde_json::Error },
}

/// Where the key set is read from.
#[derive(Debug, Clone)]
pub enum Source {
    Url(Url),
    File(PathBuf),
}

/// How long a fetched set is used, and how often it may be fetched again.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A set older than this is fetched again before its keys are used.
    pub cache_for: Duration,
    /// Least time between two fetches (or file reads): bounds what unknown `kid`s cost the
    /// identity provider, and how soon a new key can be picked up.
    pub min_refetch: Duration,
}

/// Parses a JWKS URL: `https`, or `http` to a loopback host only (a sidecar on the same
/// machine). Keys fetched over plain HTTP from anywhere else could be swapped on the way,
/// and whoever swaps them can sign any token.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let url = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match trusted(&url) {
        true => Ok(url),
        false => Err("keys must come over https (plain http only from localhost): anyone on the path of \
                      a plain-http fetch could swap in their own key and sign any token"
            .into()),
    }
}

fn trusted(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match url.scheme() {
        "https" => true,
        "http" => host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        _ => false,
    }
}

/// A key from the set, with the algorithms it verifies.
#[derive(Debug)]
pub(super) struct Key {
    pub decoding: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// A [`Source`] ready to read: a URL with its HTTP client.
enum Origin {
    Url { url: Url, client: reqwest::Client },
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Url { url, .. } => write!(f, "{url}"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The keys of one `kid`: usually one, but RFC 7517 §4.5 lets keys of different types
/// share a `kid` (equivalent alternatives), so each token is tried with those that verify
/// its `alg`.
pub(super) type Candidates = Arc<[Arc<Key>]>;

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Candidates>,
    /// When a set last arrived; `None`: never.
    fetched_at: Option<Instant>,
    /// When a fetch last started, whatever came of it.
    attempted_at: Option<Instant>,
}

/// The cached key set; see the module documentation.
pub struct Jwks {
    origin: Origin,
    timing: Timing,
    cache: RwLock<Cache>,
    /// Held while a fetch runs: one at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// Reads the set once. A file that cannot be read or parsed is an error: it is local
    /// configuration, and a router that starts without keys refuses every token. A URL
    /// that cannot be fetched is logged, and fetched again when a token needs a key
    /// (tokens meanwhile get 503 `keys_unavailable`): the identity provider may only be
    /// late, and a router that stays up picks the keys up as soon as it answers.
    pub async fn load(source: Source, timing: Timing) -> Result<Jwks, JwksError> {
        let origin = match source {
            Source::File(path) => Origin::File(path),
            Source::Url(url) => Origin::Url { url, client: client().map_err(JwksError::Client)? },
        };
        let jwks = Jwks { origin, timing, cache: RwLock::default(), fetching: tokio::sync::Mutex::new(()) };
        match jwks.fetch("start").await {
            Ok(()) => {}
            Err(e) if matches!(jwks.origin, Origin::File(_)) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "no token signing keys yet: tokens are refused (503) until they load")
            }
        }
        Ok(jwks)
    }

    /// The keys a token's `kid` names (at least one), from the cache, or after a fetch (see
    /// the module documentation for when one runs).
    pub(super) async fn key(&self, kid: Option<&str>) -> Result<Candidates, AuthError> {
        let Some(kid) = kid else {
            return Err(AuthError::UnknownKey(
                "token has no `kid`: with a JWKS, every token must name the key that signed it".into(),
            ));
        };
        match self.cached(kid) {
            (Some(key), true) => return Ok(key),
            // Stale: one token fetches the set again, others meanwhile use the cached key.
            (Some(key), false) => match self.fetching.try_lock() {
                Ok(_fetching) => self.refetch("expired").await,
                Err(_) => return Ok(key),
            },
            (None, _) => {
                let _fetching = self.fetching.lock().await;
                // The fetch this token waited for may have brought its key.
                if self.cached(kid).0.is_none() {
                    self.refetch("unknown_kid").await;
                }
            }
        }
        let cache = self.read();
        match (cache.keys.get(kid), cache.fetched_at) {
            (Some(key), _) => Ok(key.clone()),
            (None, None) => Err(AuthError::KeysUnavailable { retry_after: self.timing.min_refetch.as_secs().max(1) }),
            (None, Some(_)) => Err(AuthError::UnknownKey(format!(
                "no key `{kid}` in the issuer's key set; a new key is looked for at most every {} s",
                self.timing.min_refetch.as_secs()
            ))),
        }
    }

    /// The cache, read. Nothing panics while holding it, so a poisoned lock still holds a
    /// consistent set.
    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached keys for `kid`, and whether the set is still fresh.
    fn cached(&self, kid: &str) -> (Option<Candidates>, bool) {
        let cache = self.read();
        let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < self.timing.cache_for);
        (cache.keys.get(kid).cloned(), fresh)
    }

    /// Fetches the set unless the last attempt was less than `min_refetch` ago; a failure
    /// is logged and the keys held stay. Called with `fetching` held.
    async fn refetch(&self, trigger: &'static str) {
        let attempted_at = self.read().attempted_at;
        if attempted_at.is_some_and(|at| at.elapsed() < self.timing.min_refetch) {
            return;
        }
        if let Err(e) = self.fetch(trigger).await {
            tracing::warn!(error = %e, "JWKS fetch failed: the keys fetched before stay in use");
        }
    }

    async fn fetch(&self, trigger: &'static str) -> Result<(), JwksError> {
        self.write().attempted_at = Some(Instant::now());
        let fetched = self.read_set().await;
        let result = if fetched.is_ok() { "ok" } else { "error" };
        ::metrics::counter!(metrics::JWKS_FETCHES, "trigger" => trigger, "result" => result).increment(1);
        let keys = fetched?;
        ::metrics::gauge!(metrics::JWKS_KEYS).set(keys.values().map(|keys| keys.len()).sum::<usize>() as f64);
        if keys.is_empty() {
            tracing::warn!(source = %self.origin, "the JWKS holds no key this router can verify tokens with");
        }
        let mut cache = self.write();
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    async fn read_set(&self) -> Result<HashMap<String, Candidates>, JwksError> {
        let body = match &self.origin {
            Origin::File(path) => {
                tokio::fs::read(path).await.map_err(|source| JwksError::Read { path: path.clone(), source })?
            }
            Origin::Url { url, client } => download(client, url).await?,
        };
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|source| JwksError::Parse { from: self.origin.to_string(), source })?;
        let mut keys: HashMap<String, Vec<Arc<Key>>> = HashMap::new();
        for (kid, key) in set.keys.iter().filter_map(usable) {
            keys.entry(kid).or_default().push(key);
        }
        Ok(keys.into_iter().map(|(kid, keys)| (kid, keys.into())).collect())
    }
}

/// The HTTP client for key sets: bounded in time, following redirects only to URLs
/// [`parse_url`] accepts.
fn client() -> reqwest::Result<reqwest::Client> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if trusted(attempt.url()) {
            attempt.follow()
        } else {
            attempt.error("redirected to a URL keys may not come from (https, or http to localhost)")
        }
    });
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(redirects)
        .user_agent(concat!("presence-router/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The body of a successful GET, at most [`MAX_JWKS_BYTES`].
async fn download(client: &reqwest::Client, url: &Url) -> Result<Vec<u8>, JwksError> {
    let failed = |e: reqwest::Error| JwksError::Fetch { url: url.clone(), reason: causes(&e) };
    let mut response = client.get(url.clone()).send().await.and_then(|r| r.error_for_status()).map_err(failed)?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(url.to_string()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes, `outer: inner: ...`: reqwest's own message ("error sending
/// request") leaves out why (connection refused, a certificate, a timeout).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}

/// A key tokens can be verified with, by its `kid`; others are skipped (and logged).
fn usable(jwk: &Jwk) -> Option<(String, Arc<Key>)> {
    let kid = jwk.common.key_id.as_deref().unwrap_or_default();
    if jwk.common.public_key_use.as_ref().is_some_and(|used| *used != PublicKeyUse::Signature) {
        tracing::debug!(kid, "JWKS key skipped: not a signing key");
        return None;
    }
    let key = match (kid, algorithms(jwk)) {
        ("", _) => Err("it has no kid, so no token can name it"),
        (_, Err(why)) => Err(why),
        (_, Ok(algorithms)) => DecodingKey::from_jwk(jwk)
            .map(|decoding| Key { decoding, algorithms })
            .map_err(|_| "its parameters are not a valid key"),
    };
    match key {
        Ok(key) => Some((kid.to_string(), Arc::new(key))),
        Err(why) => {
            tracing::warn!(kid, why, "JWKS key skipped");
            None
        }
    }
}

/// The algorithms a key verifies: its `alg` when it names one, else every signature
/// algorithm of its type. Never an HMAC one: a published set holds public keys, and a
/// symmetric key in it would let anyone who reads the set sign tokens.
fn algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, &'static str> {
    use Algorithm::*;
    let of_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            _ => return Err("its curve is not one tokens are verified with (P-256, P-384)"),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[EdDSA],
        AlgorithmParameters::OctetKey(_) => return Err("it is a symmetric key, which a public key set must not hold"),
        _ => return Err("its key type is not one tokens are verified with (RSA, EC, Ed25519)"),
    };
    match jwk.common.key_algorithm {
        None => Ok(of_type.to_vec()),
        Some(named) => match Algorithm::try_from(named) {
            Ok(algorithm) if of_type.contains(&algorithm) => Ok(vec![algorithm]),
            _ => Err("its alg is not a signature algorithm of its key type"),
        },
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::EncodingKey;
    use serde_json::{Value, json};

    use super::*;

    const TIMING: Timing = Timing { cache_for: Duration::from_secs(300), min_refetch: Duration::from_secs(10) };

    fn jwk(kid: &str, private: &EncodingKey, algorithm: Algorithm) -> Value {
        let mut jwk = Jwk::from_encoding_key(private, algorithm).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn rsa(kid: &str) -> Value {
        let private = EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/rs256-private.pem")).unwrap();
        jwk(kid, &private, Algorithm::RS256)
    }

    fn ec(kid: &str) -> Value {
        let private = EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/es256-private.pem")).unwrap();
        jwk(kid, &private, Algorithm::ES256)
    }

    /// A JWKS file holding `keys`, rewritten by [`SetFile::write`]; removed on drop.
    struct SetFile(PathBuf);

    impl SetFile {
        fn new(name: &str, keys: &[Value]) -> SetFile {
            let file = SetFile(std::env::temp_dir().join(format!("jwt-jwks-{name}-{}.json", std::process::id())));
            file.write(keys);
            file
        }

        fn write(&self, keys: &[Value]) {
            std::fs::write(&self.0, json!({"keys": keys}).to_string()).unwrap();
        }

        async fn load(&self) -> Jwks {
            Jwks::load(Source::File(self.0.clone()), TIMING).await.unwrap()
        }
    }

    impl Drop for SetFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    async fn verifies(jwks: &Jwks, kid: &str) -> bool {
        jwks.key(Some(kid)).await.is_ok()
    }

    #[tokio::test]
    async fn keys_are_chosen_by_kid_and_only_signing_keys_are_kept() {
        let mut encryption = rsa("enc");
        encryption["use"] = "enc".into();
        encryption["alg"] = "RSA-OAEP".into();
        let mut mislabelled = ec("mislabelled");
        mislabelled["alg"] = "RS256".into();
        let mut no_kid = rsa("");
        no_kid.as_object_mut().unwrap().remove("kid");
        let modulus = rsa("")["n"].clone();
        let mut any_rsa = rsa("any-rsa");
        any_rsa.as_object_mut().unwrap().remove("alg");
        let keys = [
            rsa("rsa"),
            any_rsa,
            ec("ec"),
            encryption,
            mislabelled,
            no_kid,
            json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
            // As Keycloak publishes them, certificate chain and thumbprints included.
            json!({"kid": "kc", "kty": "RSA", "alg": "RS256", "use": "sig", "n": modulus, "e": "AQAB",
                   "x5c": ["MIIC"], "x5t": "abc", "x5t#S256": "def"}),
        ];
        let file = SetFile::new("kinds", &keys);
        let jwks = file.load().await;
        let jwks = &jwks;
        let algorithms = |kid| async move { jwks.key(Some(kid)).await.unwrap()[0].algorithms.clone() };
        assert_eq!(algorithms("rsa").await, [Algorithm::RS256]);
        assert_eq!(algorithms("kc").await, [Algorithm::RS256]);
        assert_eq!(algorithms("ec").await, [Algorithm::ES256]);
        let any = algorithms("any-rsa").await;
        assert!(any.contains(&Algorithm::RS512) && any.contains(&Algorithm::PS256), "RSA without alg: RS* and PS*");
        for skipped in ["enc", "mislabelled", "hmac", "p521"] {
            assert!(!verifies(jwks, skipped).await, "{skipped}");
        }
        let no_kid = jwks.key(None).await.unwrap_err();
        assert!(no_kid.to_string().contains("no `kid`"), "{no_kid}");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_read_the_set_again_at_most_once_per_interval() {
        let file = SetFile::new("refetch", &[rsa("old")]);
        let jwks = file.load().await;
        file.write(&[rsa("old"), ec("new")]);
        // Read at start just now: however many tokens name the new key, it is not looked for yet.
        for _ in 0..100 {
            assert!(!verifies(&jwks, "new").await);
        }
        tokio::time::advance(TIMING.min_refetch).await;
        assert!(verifies(&jwks, "new").await, "looked for once the interval passed");
        file.write(&[rsa("old"), ec("new"), ec("newer")]);
        assert!(!verifies(&jwks, "newer").await, "the set was just read: the next read waits");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_set_is_read_again_and_a_failed_read_keeps_the_keys() {
        let file = SetFile::new("stale", &[rsa("old"), ec("kept")]);
        let jwks = file.load().await;
        std::fs::write(&file.0, "not json").unwrap();
        tokio::time::advance(TIMING.cache_for).await;
        assert!(verifies(&jwks, "old").await, "an unreadable set leaves the keys held");

        file.write(&[ec("kept")]);
        assert!(verifies(&jwks, "old").await, "the failed read was just now: the next waits");
        tokio::time::advance(TIMING.min_refetch).await;
        let dropped = jwks.key(Some("old")).await.unwrap_err();
        assert_eq!(dropped.code(), "token_unknown_key");
        assert!(dropped.to_string().contains("`old`"), "{dropped}");
        assert!(verifies(&jwks, "kept").await);
    }

    /// RFC 7517 §4.5 lets keys of different types share a `kid` (equivalent alternatives):
    /// a token is verified by the one of its `kid` that verifies its `alg`.
    #[tokio::test]
    async fn keys_of_different_types_may_share_a_kid() {
        let claims = json!({"sub": "u", "role": "mobile", "exp": u32::MAX});
        let sign = |algorithm, private: &[u8]| {
            let key = match algorithm {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(private).unwrap(),
                _ => EncodingKey::from_ec_pem(private).unwrap(),
            };
            let header = jsonwebtoken::Header { kid: Some("shared".into()), ..jsonwebtoken::Header::new(algorithm) };
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };
        let rs256 = sign(Algorithm::RS256, include_bytes!("../../tests/fixtures/rs256-private.pem"));
        let es256 = sign(Algorithm::ES256, include_bytes!("../../tests/fixtures/es256-private.pem"));
        for (name, keys) in [("rsa-first", [rsa("shared"), ec("shared")]), ("ec-first", [ec("shared"), rsa("shared")])]
        {
            let file = SetFile::new(name, &keys);
            let auth = crate::auth::Authenticator::key_set(file.load().await);
            for token in [&rs256, &es256] {
                assert!(auth.verify(token).await.is_ok(), "{name}: {:?}", auth.verify(token).await);
            }
        }
    }

    #[tokio::test]
    async fn a_set_that_cannot_load_at_start_is_an_error_for_a_file() {
        let file = SetFile::new("broken", &[]);
        std::fs::write(&file.0, "{\"keys\": ").unwrap();
        let error = Jwks::load(Source::File(file.0.clone()), TIMING).await.err().unwrap();
        assert!(matches!(error, JwksError::Parse { .. }), "{error}");
        let missing = Source::File(file.0.with_extension("missing"));
        assert!(matches!(Jwks::load(missing, TIMING).await, Err(JwksError::Read { .. })));
    }

    #[test]
    fn key_sets_come_over_https_or_from_localhost() {
        for url in ["https://idp.example/jwks", "http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]/"]
        {
            assert!(parse_url(url).is_ok(), "{url}");
        }
        for url in ["http://idp.example/jwks", "http://10.0.0.1/jwks", "ftp://idp.example/", "file:///etc/jwks", "jwks"]
        {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }
}
