//! Positions in the cluster's change log, as dashboards hold them.
//!
//! The store numbers every transition within its shard (one shard on one Redis and in the
//! memory engine, `--redis-cluster-shards` on a Redis Cluster) and keeps the latest ones in
//! a bounded change log per shard. A shard's numbers are only comparable within one
//! *history*, named by the shard's epoch: a new epoch is made when Redis lost its data (or
//! the memory engine started), and the numbers start over.
//!
//! A [`Position`] is, per shard, the number up to which every transition is included in a
//! dashboard's view, and a digest of all the shards' epochs. Dashboards receive it as an
//! opaque token (`position` in PRESENCE_SNAPSHOT, PRESENCE_UPDATE and RESUMED) and present
//! it again when they reconnect, to any router of the deployment.

use sha2::{Digest, Sha256};

use crate::{id::Id, scope::Scope};

/// Most shards a token may name: far more than any deployment has (a Redis Cluster has
/// 16384 slots), and a bound on what parsing a token from a client costs.
const MAX_SHARDS: usize = 16384;

/// How far the view a position belongs to has come: every transition of shard `i` numbered
/// up to `seqs[i]` is in it, within the histories whose epochs digest to `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub seqs: Vec<u64>,
}

/// Why a token is not a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a position is `<16 hex digits>:<seq>[.<seq>...]`, one seq per shard")]
pub struct Malformed;

impl Position {
    /// The position at `seqs` in the histories named by `epochs` (one per shard, in shard
    /// order).
    pub fn new<S: AsRef<str>>(epochs: &[S], seqs: Vec<u64>) -> Position {
        Position { epoch: digest(epochs.iter().map(AsRef::as_ref)), seqs }
    }

    /// The token dashboards hold: `<epoch digest, 16 hex digits>:<seq of shard 0>.<seq of
    /// shard 1>...`, e.g. `9f86d081884c7d65:1042`.
    pub fn token(&self) -> String {
        let seqs: Vec<String> = self.seqs.iter().map(u64::to_string).collect();
        format!("{:016x}:{}", self.epoch, seqs.join("."))
    }

    /// Reads a token ([`Position::token`]).
    pub fn parse(token: &str) -> Result<Position, Malformed> {
        let (epoch, seqs) = token.split_once(':').ok_or(Malformed)?;
        if epoch.len() != 16 || seqs.split('.').nth(MAX_SHARDS).is_some() {
            return Err(Malformed);
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| Malformed)?;
        let seqs = seqs.split('.').map(|seq| seq.parse::<u64>().map_err(|_| Malformed)).collect::<Result<_, _>>()?;
        Ok(Position { epoch, seqs })
    }
}

/// What a dashboard is allowed to see, as a short name: equal names, equal scopes. A
/// position is only resumed under the scope it was reached with (a wider one would lack
/// the users it adds that did not change meanwhile). `*` for everyone; else a digest of
/// the sorted groups.
pub fn view_name(groups: Option<&[Id]>) -> String {
    match groups {
        None => "*".into(),
        Some(groups) => {
            let mut sorted: Vec<&str> = groups.iter().map(Id::as_str).collect();
            sorted.sort_unstable();
            sorted.dedup();
            format!("{:016x}", digest(sorted.into_iter()))
        }
    }
}

/// [`view_name`] of a token's scope.
pub fn view_of(scope: &Scope) -> String {
    view_name(scope.allowed())
}

/// The first 8 bytes of SHA-256 over the parts, each followed by a newline (which no
/// epoch or id holds).
fn digest<'a>(parts: impl Iterator<Item = &'a str>) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    let hash = hasher.finalize();
    u64::from_be_bytes(hash[..8].try_into().expect("SHA-256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_its_position() {
        let position = Position::new(&["1764561000123456", "1764561000999999"], vec![1042, 0]);
        assert_eq!(Position::parse(&position.token()), Ok(position));
    }

    #[test]
    fn epochs_name_the_history() {
        assert_ne!(Position::new(&["1"], vec![5]).epoch, Position::new(&["2"], vec![5]).epoch);
        assert_ne!(Position::new(&["1", "2"], vec![5, 5]).epoch, Position::new(&["12"], vec![5, 5]).epoch);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for token in [
            "",
            "abc",
            "00:1",
            "zzzzzzzzzzzzzzzz:1",
            "0000000000000000:",
            "0000000000000000:1.x",
            "0000000000000000:-1",
        ] {
            assert_eq!(Position::parse(token), Err(Malformed), "{token}");
        }
        let many = format!("0000000000000000:{}", vec!["1"; MAX_SHARDS + 1].join("."));
        assert_eq!(Position::parse(&many), Err(Malformed));
    }

    #[test]
    fn a_view_is_named_by_its_groups_in_any_order() {
        let ids = |names: &[&str]| names.iter().map(|n| Id::parse(n).unwrap()).collect::<Vec<_>>();
        assert_eq!(view_name(Some(&ids(&["b", "a"]))), view_name(Some(&ids(&["a", "b", "a"]))));
        assert_ne!(view_name(Some(&ids(&["a"]))), view_name(Some(&ids(&["a", "b"]))));
        assert_eq!(view_name(None), "*");
    }
}
