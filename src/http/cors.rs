//! CORS for the presence API (`--cors-origins`): a browser app served from another origin
//! may call `/api/...` with its token in `Authorization` (or `token`).
//!
//! Off by default: with no origins named, no response carries a CORS header and a preflight
//! (`OPTIONS`) is answered 405 like any other method, so browsers keep every other origin's
//! pages from reading the API with a token they hold. Named origins (or `*`) get:
//!
//! - a preflight answered 200 with `Access-Control-Allow-Origin`, `-Allow-Methods` (GET,
//!   POST), `-Allow-Headers` (`authorization`, `content-type`, `token`) and `-Max-Age`
//!   ([`MAX_AGE`]);
//! - every API response (errors included) with `Access-Control-Allow-Origin` and
//!   `Access-Control-Expose-Headers: retry-after`, so a page can read how long a 429 or 503
//!   asks it to wait.
//!
//! A request from any other origin, or without `Origin`, is answered as if CORS were off,
//! with no CORS header at all. Every API response then carries `Vary: Origin`, since what
//! it holds depends on the origin asking. No credentials (cookies) are allowed: tokens
//! travel in headers, never in cookies.
//!
//! Only the API: browsers do not apply CORS to WebSockets (any page may open one; its token
//! admits it), `/metrics` and the probes are for operators' tools rather than pages, and
//! `/dashboard` is a page of the router's own origin.
//!
//! The headers themselves are tower-http's [`CorsLayer`]; [`gate`] only decides which
//! requests it sees, because the layer answers every `OPTIONS` as a preflight and sends
//! its allowed methods and headers to any origin. A preflight it answers reads nothing and
//! is not counted in `presence_api_requests_total`; one from another origin is, as a 405.

use std::{convert::Infallible, fmt, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{
        HeaderName, HeaderValue, Method,
        header::{AUTHORIZATION, CONTENT_TYPE, ORIGIN, RETRY_AFTER, VARY},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer: an origin removed from the list is
/// refused by browsers within this long.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// The origins `--cors-origins` names: `*` (any), or a list, each `scheme://host[:port]`
/// as browsers send it in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    /// Reads `*` or comma-separated origins. Each is normalised as browsers write
    /// `Origin` (lower-case scheme and host, no default port, no trailing `/`); one with a
    /// path, query, credentials, or without a host is refused with the reason, as is `*`
    /// among others.
    pub fn parse(value: &str) -> Result<CorsOrigins, String> {
        let entries: Vec<&str> = value.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        match entries.as_slice() {
            [] => Err("no origin: give `*` or origins such as https://app.example.com".into()),
            ["*"] => Ok(CorsOrigins::Any),
            entries if entries.contains(&"*") => Err("`*` allows every origin: give it alone, not in a list".into()),
            entries => entries.iter().map(|entry| origin(entry)).collect::<Result<_, _>>().map(CorsOrigins::List),
        }
    }

    /// Whether a request from `origin` gets CORS headers.
    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            CorsOrigins::Any => true,
            CorsOrigins::List(origins) => origins.contains(origin),
        }
    }
}

impl fmt::Display for CorsOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorsOrigins::Any => f.write_str("*"),
            CorsOrigins::List(origins) => {
                let origins: Vec<&str> = origins.iter().filter_map(|o| o.to_str().ok()).collect();
                f.write_str(&origins.join(","))
            }
        }
    }
}

/// One origin, as a browser would send it in `Origin`.
fn origin(entry: &str) -> Result<HeaderValue, String> {
    let url = reqwest::Url::parse(entry).map_err(|e| format!("{entry:?} is not an origin: {e}"))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !bare || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{entry:?} is not an origin: give scheme://host[:port] only, without a path"));
    }
    let origin = url.origin();
    if !origin.is_tuple() {
        return Err(format!("{entry:?} is not an origin: it needs a scheme and a host (http or https)"));
    }
    HeaderValue::from_str(&origin.ascii_serialization()).map_err(|e| format!("{entry:?}: {e}"))
}

/// The API's CORS: which origins, and tower-http's layer that writes the headers.
#[derive(Clone)]
pub struct Cors {
    origins: CorsOrigins,
    layer: CorsLayer,
}

impl Cors {
    pub fn new(origins: CorsOrigins) -> Arc<Cors> {
        let allow_origin = match &origins {
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
        };
        let layer = CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE, HeaderName::from_static("token")])
            .expose_headers([RETRY_AFTER])
            .max_age(MAX_AGE);
        Arc::new(Cors { origins, layer })
    }
}

/// Hands a request from an allowed origin to the CORS layer (which answers a preflight
/// itself); any other goes on as if CORS were off, its response marked `Vary: Origin`.
pub async fn gate(State(cors): State<Arc<Cors>>, request: Request, next: Next) -> Response {
    cors.serve(request, next).await
}

impl Cors {
    /// `request` answered by `service`, through the CORS layer when it comes from an
    /// allowed origin, else marked `Vary: Origin`: every answer under `/api`, a route's
    /// or not (404 `not_found` included), carries the same CORS headers.
    pub async fn serve<S>(&self, request: Request, service: S) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        if request.headers().get(ORIGIN).is_some_and(|origin| self.origins.allows(origin)) {
            return match self.layer.layer(service).oneshot(request).await {
                Ok(response) => response.into_response(),
                Err(never) => match never {},
            };
        }
        let Ok(mut response) = service.oneshot(request).await;
        response.headers_mut().append(VARY, HeaderValue::from_static("origin"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(origins: &[&'static str]) -> CorsOrigins {
        CorsOrigins::List(origins.iter().map(|o| HeaderValue::from_static(o)).collect())
    }

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        assert_eq!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any));
        assert_eq!(
            CorsOrigins::parse("https://App.Example.com/, http://localhost:5173,https://x.test:443"),
            Ok(list(&["https://app.example.com", "http://localhost:5173", "https://x.test"]))
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused_with_the_reason() {
        for (bad, says) in [
            ("", "no origin"),
            (" , ", "no origin"),
            ("*,https://a.test", "alone"),
            ("app.example.com", "not an origin"),
            ("https://a.test/app", "without a path"),
            ("https://a.test/?x=1", "without a path"),
            ("https://user@a.test", "without a path"),
            ("file:///", "scheme and a host"),
        ] {
            let e = CorsOrigins::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_named_origins_are_allowed() {
        let origins = list(&["https://a.test"]);
        assert!(origins.allows(&HeaderValue::from_static("https://a.test")));
        assert!(!origins.allows(&HeaderValue::from_static("https://b.test")));
        assert!(!origins.allows(&HeaderValue::from_static("https://a.test:8443")));
        assert!(CorsOrigins::Any.allows(&HeaderValue::from_static("null")));
    }
}
