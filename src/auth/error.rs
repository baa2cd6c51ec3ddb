//! Why a token was refused: one variant per reason a client or an operator acts on.

use axum::http::StatusCode;

use super::LEEWAY_SECS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet: its nbf is more than {LEEWAY_SECS} s ahead of this router's clock")]
    NotYetValid,
    #[error(
        "`{claim}` {problem}: a NumericDate is a number of seconds since 1970-01-01 UTC, whole or \
         fractional, up to the year 9999"
    )]
    InvalidDate { claim: &'static str, problem: &'static str },
    #[error("token has no iat, so its lifetime cannot be checked against the {max} s limit")]
    MissingIat { max: u64 },
    #[error("token lifetime (exp - iat) is {lifetime} s, longer than this router accepts ({max} s)")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("{0}")]
    WrongIssuer(&'static str),
    #[error(
        "token names an audience (`aud`) but this router has none configured: set --jwt-audience \
         (JWT_AUDIENCE) to the audience the issuer gives this service; a token issued for another \
         service is not accepted here"
    )]
    AudienceNotConfigured,
    #[error("{0}")]
    WrongAudience(&'static str),
    #[error("{0}")]
    UnknownKey(String),
    #[error(
        "this router could not load its token signing keys (--jwt-jwks-url) yet; retry in \
         {retry_after} s"
    )]
    KeysUnavailable { retry_after: u64 },
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
            AuthError::InvalidDate { .. } => "token_invalid_date",
            AuthError::MissingIat { .. } => "token_missing_iat",
            AuthError::LifetimeTooLong { .. } => "token_lifetime_too_long",
            AuthError::WrongIssuer(_) => "token_wrong_issuer",
            AuthError::AudienceNotConfigured => "token_audience_not_configured",
            AuthError::WrongAudience(_) => "token_wrong_audience",
            AuthError::UnknownKey(_) => "token_unknown_key",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::Invalid(_) => "invalid_token",
        }
    }

    /// 401 for a token that is at fault; 503 when the router cannot judge it yet (its
    /// keys are not loaded), so clients retry rather than discard a good token.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::KeysUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// Seconds after which a retry may succeed, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::KeysUnavailable { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}
