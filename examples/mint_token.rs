//! Prints a development token: `cargo run -q --example mint_token -- <user> <role>`.
//! Role is mobile, web, dashboard or service; the secret is `JWT_SECRET` or the `make run`
//! default.

use presence_router::auth::{Role, mint_hs256};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let user = args.next().unwrap_or_else(|| "driver-1".into());
    let role: Role = serde_json::from_value(serde_json::Value::String(args.next().unwrap_or_else(|| "mobile".into())))?;
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| "dev-secret-change-me".into());
    println!("{}", mint_hs256(secret.as_bytes(), &user, role, 24 * 3600)?);
    Ok(())
}
