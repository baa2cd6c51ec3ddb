//! `GET /dashboard`: the live presence page (`static/dashboard.html`), served with the
//! headers that keep it to itself.
//!
//! The page holds a token in its address, so:
//! - `Content-Security-Policy`: nothing loads or runs but its own inline script and style
//!   (named by their SHA-256, so an injected `<script>` would not run), it connects only
//!   to its own origin (the WebSocket and the API; CSP's `'self'` covers `ws:`/`wss:` of
//!   the same host), and no other site may frame it (`frame-ancestors 'none'`, with
//!   `X-Frame-Options: DENY` for older browsers): a framing page could not trick a
//!   dispatcher into acting on it;
//! - `Cache-Control: no-cache`: a browser revalidates, so a new router's page replaces an
//!   old one at once;
//! - `Referrer-Policy: no-referrer` and `X-Content-Type-Options: nosniff`.

use std::sync::LazyLock;

use axum::{
    http::{HeaderName, HeaderValue, header},
    response::{Html, IntoResponse},
};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The page, as built into the binary.
pub const PAGE: &str = include_str!("../../static/dashboard.html");

/// The page's Content-Security-Policy, with the hashes of its inline `<script>` and
/// `<style>` (computed once, from the page itself, so they never go stale).
pub static POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(PAGE, "script"),
        hashes(PAGE, "style"),
    )
});

/// `'sha256-…'` for each inline `<tag>` element of `page`, space-separated.
fn hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        found.push(format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
        rest = &body[end..];
    }
    assert!(!found.is_empty(), "static/dashboard.html has an inline <{tag}>");
    found.join(" ")
}

/// Serves the page with its headers.
pub async fn serve() -> impl IntoResponse {
    let policy = HeaderValue::from_str(&POLICY).expect("the policy is ASCII");
    (
        [
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")),
        ],
        Html(PAGE),
    )
}
