//! Prints a development token (HS256) for the router `make run` starts:
//!
//!     cargo run -q --example mint_token -- driver-1 --groups crew,north
//!     cargo run -q --example mint_token -- api --role service --ttl 600
//!     cargo run -q --example mint_token -- --help
//!
//! The secret is `JWT_SECRET`, or `make run`'s default. Only the token goes to standard
//! output, so `$(…)` takes it whole.

use clap::Parser;
use presence_router::{
    auth::{Role, mint_hs256_in},
    id::Id,
};

/// Prints a signed JWT the router accepts (claims sub, role, iat, exp and groups).
#[derive(Parser)]
#[command(name = "mint_token")]
struct Args {
    /// The user id (`sub`).
    #[arg(default_value = "driver-1", value_parser = user_id)]
    user: String,
    /// What the token may do: a mobile heartbeats, talks and types in its groups; web and
    /// dashboard watch presence; service reads the HTTP API.
    #[arg(long, default_value = "mobile", value_parser = ["mobile", "web", "dashboard", "service"])]
    role: String,
    /// Groups, comma-separated: a mobile's memberships, or the only groups a watcher sees
    /// (without it a dashboard or service token sees everyone).
    #[arg(long, value_delimiter = ',', value_parser = group_id)]
    groups: Option<Vec<String>>,
    /// Seconds until the token expires (`exp` - `iat`), at most 100 years.
    #[arg(long, default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
    ttl: u64,
    /// The HS256 secret the router verifies with.
    #[arg(long, env = "JWT_SECRET", default_value = "dev-secret-change-me", hide_env_values = true)]
    secret: String,
}

/// Longest `--ttl`: 100 years. `iat + ttl` stays far inside what every JWT library reads
/// as a date, where a larger one would wrap or overflow into an `exp` before `iat`.
const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let role: Role = serde_json::from_value(serde_json::Value::String(args.role))?;
    let groups: Option<Vec<&str>> = args.groups.as_ref().map(|groups| groups.iter().map(String::as_str).collect());
    println!("{}", mint_hs256_in(args.secret.as_bytes(), &args.user, role, groups.as_deref(), args.ttl)?);
    Ok(())
}

/// A user id the router accepts: never `0`, which frames read as "no id".
fn user_id(id: &str) -> Result<String, String> {
    let id = Id::parse(id).map_err(|e| format!("not a user id: {e}"))?;
    if id.as_str() == "0" {
        return Err("not a user id: 0 means \"no id\" in frames, and the router refuses it".into());
    }
    Ok(id.as_str().to_string())
}

/// A group id the router accepts.
fn group_id(id: &str) -> Result<String, String> {
    Id::parse(id).map(|id| id.as_str().to_string()).map_err(|e| format!("not a group id: {e}"))
}
