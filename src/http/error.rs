//! JSON errors for every HTTP failure: `{"success": false, "error": {"code", "message"}}`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable; clients branch on this.
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After`, in whole seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// Adds `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// A refused token: its status (401, or 503 while the keys are not loaded), its code, its
/// reason, and `Retry-After` when waiting helps.
impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        let error = ApiError::new(e.status(), e.code(), e.to_string());
        match e.retry_after() {
            Some(secs) => error.retry_after(secs),
            None => error,
        }
    }
}

impl ApiError {
    /// The JSON body: `{"success": false, "error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "success": false,
            "error": { "code": self.code, "message": self.message },
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;

    #[test]
    fn a_refused_token_is_401_and_missing_keys_503_with_retry_after() {
        let refused = ApiError::from(AuthError::Expired).into_response();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().get(RETRY_AFTER).is_none());
        let waiting = ApiError::from(AuthError::KeysUnavailable { retry_after: 10 }).into_response();
        assert_eq!(waiting.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(waiting.headers().get(RETRY_AFTER).unwrap(), "10");
    }
}
