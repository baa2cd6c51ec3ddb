//! What a token claims, and the rules its claims must meet once its signature holds.
//!
//! The claims are read here rather than by `jsonwebtoken`'s validation, which only checks
//! the signature: its reading of dates rounds fractions and passes over a malformed `aud`
//! or `iss` when none is required, and its errors cannot say which claim failed or why.
//! One reader means the date that passed the check is the date the socket expires on.
//!
//! Which claims name the user and its groups is configuration (`--jwt-subject-claim`,
//! `--jwt-groups-claim`), so that tokens of issuers with other names (VoicePing's `uid`
//! and `channelIds`) are read without a translating proxy.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AuthError, LEEWAY_SECS};
use crate::id::Id;

/// Latest NumericDate accepted, in Unix seconds: 9999-12-31T23:59:59Z. No issuer means a
/// later one, and the bound keeps every date arithmetic far from overflow.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Claims that keep their registered meaning whatever the configuration: neither the user
/// nor the groups may be read from one of them.
pub const RESERVED_CLAIMS: [&str; 7] = ["exp", "nbf", "iat", "aud", "iss", "jti", "role"];

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

/// A verified token's claims.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// The user id, from the subject claim (`sub` unless `--jwt-subject-claim` names
    /// another); a string or a number, `7` and `"7"` being the same id.
    pub sub: Id,
    /// From `role`, or [`Rules::default_role`] for a token without one.
    pub role: Role,
    /// Expiry, Unix seconds (a fractional `exp` is cut to the second before). `None` only
    /// for a token without `exp` that `--allow-tokens-without-exp` let in: it stays valid
    /// on its connection until the connection ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at, Unix seconds (fraction cut), when the token says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// A mobile's groups: which dashboards may see its presence. A dashboard's groups:
    /// the only groups whose members it sees; without the claim it sees everyone.
    /// Present means a list: `"groups": null` is refused rather than read as "no claim",
    /// which would let a dashboard token read everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Id>>,
}

/// The claims as signed, every one kept raw for [`Rules::check`] to read by the names the
/// configuration gives.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(super) struct Signed(Map<String, Value>);

impl Signed {
    /// The claim `name`; `null` reads as absent.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }
}

/// What the configuration asks of every token's claims, beyond its signature.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Audiences accepted (`--jwt-audience`); empty: a token naming any audience is refused.
    pub audiences: Vec<String>,
    /// Issuers accepted (`--jwt-issuer`); empty: `iss` is not read.
    pub issuers: Vec<String>,
    /// Longest `exp - iat` accepted, in seconds (`--max-token-lifetime`); `None`: no limit.
    pub max_lifetime: Option<u64>,
    /// The claim holding the user id (`--jwt-subject-claim`).
    pub subject_claim: String,
    /// The claim holding the groups (`--jwt-groups-claim`).
    pub groups_claim: String,
    /// The role of a token without `role` (`--jwt-default-role`); `None`: `role` is required.
    pub default_role: Option<Role>,
    /// Whether a token without `exp` is accepted (`--allow-tokens-without-exp`); never
    /// together with `max_lifetime`, which such a token could not meet.
    pub allow_without_exp: bool,
}

impl Default for Rules {
    /// The registered names (`sub`, `groups`), `role` and `exp` required, nothing else asked.
    fn default() -> Self {
        Rules {
            audiences: Vec::new(),
            issuers: Vec::new(),
            max_lifetime: None,
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            default_role: None,
            allow_without_exp: false,
        }
    }
}

impl Rules {
    /// Checks, in order: the shapes of the user id, the role and the groups; the dates'
    /// shape (`exp` required unless `allow_without_exp`; `nbf`, `iat` when present), `exp`
    /// and `nbf` against `now` (Unix seconds) with [`LEEWAY_SECS`], the issuer, the
    /// audience, then the lifetime cap.
    pub(super) fn check(&self, signed: Signed, now: u64) -> Result<Claims, AuthError> {
        let sub = self.subject(&signed)?;
        let role = self.role(&signed)?;
        let groups = self.groups(&signed)?;
        let exp = match signed.get("exp") {
            Some(exp) => Some(numeric_date("exp", exp)?),
            // A lifetime cap needs an end to measure: it wins over the allowance (the
            // configuration refuses the pair at start).
            None if self.allow_without_exp && self.max_lifetime.is_none() => None,
            None => {
                return Err(AuthError::InvalidDate { claim: "exp", problem: "is missing: every token must expire" });
            }
        };
        let nbf = signed.get("nbf").map(|nbf| numeric_date("nbf", nbf)).transpose()?;
        let iat = signed.get("iat").map(|iat| numeric_date("iat", iat)).transpose()?;
        if exp.is_some_and(|exp| exp.saturating_add(LEEWAY_SECS) < now) {
            return Err(AuthError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
            return Err(AuthError::NotYetValid);
        }
        self.check_issuer(signed.get("iss"))?;
        self.check_audience(signed.get("aud"))?;
        if let (Some(max), Some(exp)) = (self.max_lifetime, exp) {
            let iat = iat.ok_or(AuthError::MissingIat { max })?;
            // A post-dated iat counts from now: it must not stretch what the token is good for.
            let lifetime = exp.saturating_sub(iat.min(now + LEEWAY_SECS));
            if lifetime > max {
                return Err(AuthError::LifetimeTooLong { lifetime, max });
            }
        }
        Ok(Claims { sub, role, exp, iat, groups })
    }

    /// The user id: a string or a whole number, in the subject claim; never 0, which
    /// frames read as "no id" (and the router writes as its own fromId), so a user 0
    /// could neither be told apart from the router nor name itself in a frame.
    fn subject(&self, signed: &Signed) -> Result<Id, AuthError> {
        let name = &self.subject_claim;
        let value = signed.get(name).ok_or_else(|| {
            AuthError::Invalid(format!("the token has no `{name}` claim, which names the user (--jwt-subject-claim)"))
        })?;
        let id = Id::deserialize(value).map_err(|e| AuthError::Invalid(format!("`{name}` (the user id): {e}")))?;
        if id.as_str() == "0" {
            return Err(AuthError::Invalid(format!(
                "`{name}` (the user id) is 0: in frames 0 means no id (it is the router's own fromId)"
            )));
        }
        Ok(id)
    }

    /// `role`, or the default role when the token has none.
    fn role(&self, signed: &Signed) -> Result<Role, AuthError> {
        match (signed.get("role"), self.default_role) {
            (Some(role), _) => Role::deserialize(role).map_err(|_| {
                AuthError::Invalid(format!("`role` is {role}, not one of mobile, web, dashboard or service"))
            }),
            (None, Some(role)) => Ok(role),
            (None, None) => Err(AuthError::Invalid(
                "the token has no `role`, and this router has no default role (--jwt-default-role)".into(),
            )),
        }
    }

    /// The groups claim: absent, or a list of ids. `null` is refused (see
    /// [`Claims::groups`]). A group named twice counts once: the scope, its snapshot cache
    /// and the per-scope limits see each group once, in the order first named.
    fn groups(&self, signed: &Signed) -> Result<Option<Vec<Id>>, AuthError> {
        let name = &self.groups_claim;
        let Some(value) = signed.0.get(name) else { return Ok(None) };
        let mut groups = Vec::<Id>::deserialize(value)
            .map_err(|e| AuthError::Invalid(format!("`{name}` must be a list of group ids: {e}")))?;
        let mut seen = std::collections::HashSet::with_capacity(groups.len());
        groups.retain(|group| seen.insert(group.clone()));
        Ok(Some(groups))
    }

    /// `iss` (a single string, RFC 7519 §4.1.1) must be one of the configured issuers.
    fn check_issuer(&self, iss: Option<&Value>) -> Result<(), AuthError> {
        if self.issuers.is_empty() {
            return Ok(());
        }
        match iss {
            None => Err(AuthError::WrongIssuer("token has no `iss`, and this router accepts only --jwt-issuer's")),
            Some(Value::String(iss)) if self.issuers.contains(iss) => Ok(()),
            Some(Value::String(_)) => {
                Err(AuthError::WrongIssuer("`iss` is not an issuer this router accepts (--jwt-issuer)"))
            }
            Some(_) => Err(AuthError::WrongIssuer("`iss` must be a single string")),
        }
    }

    /// `aud` (a string or a list of strings, RFC 7519 §4.1.3) must name one configured
    /// audience. With none configured, a token that names any audience is refused: it was
    /// issued for some service, and this router cannot tell that it is that service.
    fn check_audience(&self, aud: Option<&Value>) -> Result<(), AuthError> {
        let named: Vec<&Value> = match aud {
            None => Vec::new(),
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one) => vec![one],
        };
        if self.audiences.is_empty() {
            return match named.is_empty() {
                true => Ok(()),
                false => Err(AuthError::AudienceNotConfigured),
            };
        }
        if named.is_empty() {
            return Err(AuthError::WrongAudience("token has no `aud`, and this router requires one of --jwt-audience"));
        }
        let mut audiences = Vec::with_capacity(named.len());
        for aud in named {
            let Value::String(aud) = aud else {
                return Err(AuthError::WrongAudience("`aud` must be a string or a list of strings"));
            };
            audiences.push(aud);
        }
        match audiences.iter().any(|aud| self.audiences.contains(aud)) {
            true => Ok(()),
            false => Err(AuthError::WrongAudience(
                "none of the token's audiences (`aud`) is one this router accepts (--jwt-audience)",
            )),
        }
    }
}

/// Reads a NumericDate (RFC 7519 §2): seconds since 1970-01-01 UTC as a JSON number, whole
/// or fractional, from 0 to [`MAX_NUMERIC_DATE`]. The fraction is cut: `X.5` reads as `X`
/// (the 5 s leeway dwarfs it).
fn numeric_date(claim: &'static str, value: &Value) -> Result<u64, AuthError> {
    let invalid = |problem| AuthError::InvalidDate { claim, problem };
    let Value::Number(number) = value else {
        return Err(invalid(match value {
            Value::String(_) => "is a string, not a number",
            Value::Bool(_) => "is a boolean, not a number",
            Value::Array(_) => "is a list, not a number",
            _ => "is an object, not a number",
        }));
    };
    let seconds = match (number.as_u64(), number.as_f64()) {
        (Some(whole), _) => Some(whole),
        // In range first, so the cast neither saturates nor wraps.
        (None, Some(secs)) if (0.0..(MAX_NUMERIC_DATE + 1) as f64).contains(&secs) => Some(secs as u64),
        _ => None,
    };
    match seconds {
        Some(seconds) if seconds <= MAX_NUMERIC_DATE => Ok(seconds),
        _ if number.as_f64().is_some_and(|secs| secs < 0.0) => Err(invalid("is negative")),
        _ => Err(invalid("is past the year 9999")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn signed(claims: Value) -> Signed {
        let mut base = json!({"sub": "u", "role": "mobile"});
        base.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn check(rules: &Rules, claims: Value) -> Result<Claims, AuthError> {
        rules.check(signed(claims), NOW)
    }

    #[test]
    fn numeric_dates_are_whole_or_fractional_seconds() {
        for (date, seconds) in [
            (json!(1_796_049_993), 1_796_049_993),
            (json!(1_796_049_993.0), 1_796_049_993),
            (json!(1_796_049_993.5), 1_796_049_993),
            (json!(1_796_049_993.999), 1_796_049_993),
            (json!(0), 0),
            (json!(0.25), 0),
            (json!(MAX_NUMERIC_DATE), MAX_NUMERIC_DATE),
            (json!(MAX_NUMERIC_DATE as f64 + 0.5), MAX_NUMERIC_DATE),
        ] {
            assert_eq!(numeric_date("exp", &date), Ok(seconds), "{date}");
        }
    }

    #[test]
    fn anything_else_is_refused_naming_the_claim_and_the_problem() {
        for (date, problem) in [
            (json!("1796049993"), "is a string, not a number"),
            (json!(true), "is a boolean, not a number"),
            (json!([1]), "is a list, not a number"),
            (json!({"t": 1}), "is an object, not a number"),
            (json!(-1), "is negative"),
            (json!(-0.5), "is negative"),
            (json!(i64::MIN), "is negative"),
            (json!(MAX_NUMERIC_DATE + 1), "is past the year 9999"),
            (json!(u64::MAX), "is past the year 9999"),
            (json!(1e300), "is past the year 9999"),
            (json!(f64::MAX), "is past the year 9999"),
        ] {
            let refused = numeric_date("nbf", &date).unwrap_err();
            assert_eq!(refused, AuthError::InvalidDate { claim: "nbf", problem }, "{date}");
            assert_eq!(refused.code(), "token_invalid_date");
            assert!(refused.to_string().starts_with("`nbf` "), "{refused}");
        }
    }

    #[test]
    fn exp_is_required_and_checked_with_the_leeway() {
        let rules = Rules::default();
        assert_eq!(check(&rules, json!({"exp": NOW - LEEWAY_SECS})).unwrap().exp, Some(NOW - LEEWAY_SECS));
        assert_eq!(
            check(&rules, json!({"exp": (NOW - LEEWAY_SECS - 1) as f64 + 0.9})).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(check(&rules, json!({"exp": null})).unwrap_err().code(), "token_invalid_date");
        let missing = check(&rules, json!({})).unwrap_err();
        assert!(missing.to_string().contains("`exp` is missing"), "{missing}");
    }

    #[test]
    fn fractional_nbf_and_iat_are_read_like_exp() {
        let capped = Rules { max_lifetime: Some(600), ..Rules::default() };
        let exp = NOW + 600;
        let claims = check(&capped, json!({"exp": exp as f64 + 0.5, "iat": NOW as f64 + 0.5, "nbf": NOW as f64 + 5.9}));
        assert_eq!(claims.map(|c| (c.exp, c.iat)), Ok((Some(exp), Some(NOW))));
        let early = check(&capped, json!({"exp": exp, "iat": NOW, "nbf": (NOW + LEEWAY_SECS) as f64 + 1.5}));
        assert_eq!(early.unwrap_err(), AuthError::NotYetValid);
        let long = check(&capped, json!({"exp": exp as f64 + 1.5, "iat": NOW as f64 + 0.5}));
        assert_eq!(long.unwrap_err(), AuthError::LifetimeTooLong { lifetime: 601, max: 600 });
        let bad = check(&Rules::default(), json!({"exp": exp, "iat": "yesterday"})).unwrap_err();
        assert_eq!(bad, AuthError::InvalidDate { claim: "iat", problem: "is a string, not a number" });
    }

    #[test]
    fn an_audience_is_refused_unless_one_is_configured() {
        let open = Rules::default();
        for aud in [json!("presence"), json!(["presence"]), json!(42), json!("")] {
            assert_eq!(check(&open, json!({"exp": NOW, "aud": aud})).unwrap_err(), AuthError::AudienceNotConfigured);
        }
        // No audience named: nothing to refuse.
        for aud in [json!(null), json!([])] {
            assert!(check(&open, json!({"exp": NOW, "aud": aud})).is_ok());
        }
        assert!(AuthError::AudienceNotConfigured.to_string().contains("--jwt-audience"));
    }

    #[test]
    fn a_configured_audience_must_be_named() {
        let rules = Rules { audiences: vec!["presence".into(), "api".into()], ..Rules::default() };
        for aud in [json!("presence"), json!(["account", "api"])] {
            assert!(check(&rules, json!({"exp": NOW, "aud": aud})).is_ok(), "{aud}");
        }
        for aud in [json!("account"), json!(["account"]), json!([]), json!(null), json!(42), json!(["api", 7])] {
            let refused = check(&rules, json!({"exp": NOW, "aud": aud})).unwrap_err();
            assert_eq!(refused.code(), "token_wrong_audience", "{aud}");
        }
    }

    #[test]
    fn a_configured_issuer_must_match() {
        let rules = Rules { issuers: vec!["https://idp.test/".into()], ..Rules::default() };
        assert!(check(&rules, json!({"exp": NOW, "iss": "https://idp.test/"})).is_ok());
        for iss in [json!("https://idp.test"), json!(["https://idp.test/"]), json!(null)] {
            let refused = check(&rules, json!({"exp": NOW, "iss": iss})).unwrap_err();
            assert_eq!(refused.code(), "token_wrong_issuer", "{iss}");
        }
        assert!(check(&Rules::default(), json!({"exp": NOW, "iss": 5})).is_ok(), "not read unless configured");
    }

    /// VoicePing's claims: the user in `uid`, its groups in `channelIds`, ids as numbers.
    fn voiceping() -> Rules {
        Rules { subject_claim: "uid".into(), groups_claim: "channelIds".into(), ..Rules::default() }
    }

    fn ids(ids: &[Id]) -> Vec<&str> {
        ids.iter().map(Id::as_str).collect()
    }

    #[test]
    fn the_user_and_groups_are_read_from_the_configured_claims() {
        let raw = |claims: Value| serde_json::from_value::<Signed>(claims).unwrap();
        let claims = voiceping()
            .check(raw(json!({"uid": 7, "channelIds": [18, "18", 19], "role": "mobile", "exp": NOW})), NOW)
            .unwrap();
        assert_eq!((claims.sub.as_str(), ids(claims.groups.as_deref().unwrap())), ("7", vec!["18", "19"]));
        // The registered names mean nothing once others are configured.
        let ignored = voiceping().check(raw(json!({"sub": "u", "role": "mobile", "exp": NOW, "groups": ["g"]})), NOW);
        let refused = ignored.unwrap_err();
        assert_eq!(refused.code(), "invalid_token");
        assert!(refused.to_string().contains("no `uid` claim") && refused.to_string().contains("--jwt-subject-claim"));
        let claims = voiceping().check(raw(json!({"uid": "u", "role": "mobile", "exp": NOW, "groups": ["g"]})), NOW);
        assert_eq!(claims.unwrap().groups, None);
        for (claims, says) in [
            (json!({"uid": 1.5, "role": "mobile", "exp": NOW}), "`uid` (the user id)"),
            (json!({"uid": 7, "role": "mobile", "exp": NOW, "channelIds": null}), "`channelIds` must be a list"),
            (json!({"uid": 7, "role": "mobile", "exp": NOW, "channelIds": 18}), "`channelIds` must be a list"),
        ] {
            let refused = voiceping().check(raw(claims), NOW).unwrap_err();
            assert_eq!(refused.code(), "invalid_token");
            assert!(refused.to_string().contains(says), "{refused}");
        }
    }

    #[test]
    fn a_token_without_role_takes_the_default_role_if_there_is_one() {
        let raw = |claims: Value| serde_json::from_value::<Signed>(claims).unwrap();
        let required = Rules::default().check(raw(json!({"sub": "u", "exp": NOW})), NOW).unwrap_err();
        assert!(required.to_string().contains("--jwt-default-role"), "{required}");
        let defaulted = Rules { default_role: Some(Role::Mobile), ..Rules::default() };
        for role in [json!({}), json!({"role": null})] {
            let mut claims = json!({"sub": "u", "exp": NOW});
            claims.as_object_mut().unwrap().extend(role.as_object().unwrap().clone());
            assert_eq!(defaulted.check(raw(claims), NOW).unwrap().role, Role::Mobile);
        }
        let dashboard = defaulted.check(raw(json!({"sub": "u", "exp": NOW, "role": "dashboard"})), NOW);
        assert_eq!(dashboard.unwrap().role, Role::Dashboard, "a role the token names wins");
        let admin = defaulted.check(raw(json!({"sub": "u", "exp": NOW, "role": "admin"})), NOW).unwrap_err();
        assert!(admin.to_string().contains("\"admin\", not one of"), "{admin}");
    }

    #[test]
    fn a_token_without_exp_passes_only_when_allowed_and_no_lifetime_cap_is_set() {
        let allowed = Rules { allow_without_exp: true, ..Rules::default() };
        assert_eq!(check(&allowed, json!({})).unwrap().exp, None);
        assert_eq!(check(&allowed, json!({"exp": null})).unwrap().exp, None);
        // With exp, every rule applies as before.
        assert_eq!(check(&allowed, json!({"exp": NOW - 60})).unwrap_err(), AuthError::Expired);
        assert_eq!(check(&allowed, json!({"nbf": NOW + 60})).unwrap_err(), AuthError::NotYetValid);
        let capped = Rules { max_lifetime: Some(600), ..allowed };
        let refused = check(&capped, json!({"iat": NOW})).unwrap_err();
        assert!(refused.to_string().contains("`exp` is missing"), "{refused}");
        assert!(check(&Rules::default(), json!({})).is_err());
    }
}
