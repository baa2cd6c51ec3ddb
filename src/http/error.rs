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
