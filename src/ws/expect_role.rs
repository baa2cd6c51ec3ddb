//! `expect_role`: a handshake may name the roles it is for, and the router refuses any
//! other token before the connection exists.
//!
//! A page that watches presence (`/dashboard`) must never open a phone's presence session:
//! a `mobile` token pasted into it would mark its user online. The page cannot tell a
//! token's role itself (the role claim may be absent and defaulted, the subject claim
//! renamed, the signature unchecked), so it asks the router, which knows:
//! `GET /ws?expect_role=dashboard,web,service` with a mobile token is refused 403
//! `unexpected_role`, before any presence is written.

use axum::http::{StatusCode, Uri};

use crate::{auth::Role, http::ApiError};

/// The query parameter naming the roles a handshake accepts (comma-separated, or repeated).
pub const PARAM: &str = "expect_role";

/// Ok when the query names no roles or names `role`; otherwise 403 `unexpected_role`
/// (the token's role is not among them) or 400 `invalid_expect_role` (a name that is not a
/// role: a typo must not silently admit every role).
pub fn check(uri: &Uri, role: Role) -> Result<(), ApiError> {
    let mut expected = Vec::new();
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if name != PARAM {
            continue;
        }
        for entry in value.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let named = serde_json::from_value::<Role>(serde_json::Value::String(entry.to_owned())).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_expect_role",
                    format!("{PARAM}: {entry:?} is not one of mobile, web, dashboard or service"),
                )
            })?;
            expected.push(named);
        }
    }
    if expected.is_empty() || expected.contains(&role) {
        return Ok(());
    }
    let names: Vec<&str> = expected.iter().map(|role| role.as_str()).collect();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "unexpected_role",
        format!("the token's role is {}, and this connection asked for {}", role.as_str(), names.join(" or ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(query: &str, role: Role) -> Result<(), &'static str> {
        check(&format!("/ws{query}").parse().unwrap(), role).map_err(|e| e.code)
    }

    #[test]
    fn only_the_named_roles_pass_and_no_name_passes_every_role() {
        assert_eq!(checked("", Role::Mobile), Ok(()));
        assert_eq!(checked("?device_id=x", Role::Mobile), Ok(()));
        assert_eq!(checked("?expect_role=dashboard,web,service", Role::Web), Ok(()));
        assert_eq!(checked("?expect_role=dashboard&expect_role=service", Role::Service), Ok(()));
        assert_eq!(checked("?expect_role=dashboard%2Cweb", Role::Web), Ok(()));
        assert_eq!(checked("?expect_role=dashboard,web,service", Role::Mobile), Err("unexpected_role"));
        assert_eq!(checked("?expect_role=admin", Role::Dashboard), Err("invalid_expect_role"));
    }
}
