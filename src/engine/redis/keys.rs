//! Where each key and channel lives.
//!
//! On one Redis every key is `{prefix}name` (`presence:meta:alice`). On Redis Cluster a Lua
//! script may only touch keys of one hash slot, and a transition changes a user's keys, the
//! index of users online, the auto-away queue and the transition sequence at once. So the
//! keyspace is split into a fixed number of *shards*: each user (and each group's
//! indicators, each PTT channel's floor) belongs to one shard, picked from its id, and every
//! key of a shard carries the shard's hash tag (`presence:{12}meta:alice`,
//! `presence:{12}deadlines`, `presence:{12}seq`). Each script call then runs within one
//! slot, atomic as on one Redis; the online index, the away queue and the sequence are one
//! per shard, and the sweep claims from each.
//!
//! The tags are chosen so that the shards' slots spread evenly over the 16384 slots: a
//! cluster whose masters hold equal slot ranges (what `redis-cli --cluster create` does)
//! holds equal numbers of shards. The mapping depends only on the number of shards, so
//! every router with the same `--redis-cluster-shards` finds the same keys.

/// Hash slots in Redis Cluster.
const SLOTS: usize = 16384;

/// The keys and channels of one deployment.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
    /// Per shard, what follows the prefix: its hash tag, or nothing on one Redis.
    tags: Vec<String>,
}

impl Keyspace {
    /// One Redis: one shard, no hash tag, so keys are `{prefix}name`.
    pub fn single(prefix: &str) -> Keyspace {
        Keyspace { prefix: prefix.to_owned(), tags: vec![String::new()] }
    }

    /// Redis Cluster: `shards` shards (at least 1), each with its own hash tag.
    pub fn sharded(prefix: &str, shards: usize) -> Keyspace {
        let shards = shards.max(1);
        let tags = (0..shards).map(|shard| format!("{{{}}}", tag_in(shard, shards))).collect();
        Keyspace { prefix: prefix.to_owned(), tags }
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.tags.len()
    }

    /// Whether keys carry hash tags (Redis Cluster).
    pub fn is_sharded(&self) -> bool {
        !self.tags[0].is_empty()
    }

    /// The shard that `id` (a user, a group or a PTT channel) belongs to: the one whose
    /// range of slots holds the id's own slot.
    pub fn shard_of(&self, id: &str) -> usize {
        if self.shards() == 1 {
            return 0;
        }
        slot(id.as_bytes()) * self.shards() / SLOTS
    }

    /// What every key and channel of `shard` starts with: the prefix and the shard's tag.
    pub fn base(&self, shard: usize) -> String {
        format!("{}{}", self.prefix, self.tags[shard])
    }

    /// The key or channel `name` of `shard`.
    pub fn key(&self, shard: usize, name: &str) -> String {
        format!("{}{}{name}", self.prefix, self.tags[shard])
    }

    /// The Pub/Sub channel of `group`'s member frames: `{prefix}relay:{group}` in the
    /// group's shard. Every publish and subscription names it through here.
    pub fn group_channel(&self, group: &str) -> String {
        self.key(self.shard_of(group), &format!("relay:{group}"))
    }

    /// The shard's transition sequence: the key every script call names first, so that
    /// Redis Cluster routes the call to the shard's slot (see `lua/prelude.lua`).
    pub fn seq(&self, shard: usize) -> String {
        self.key(shard, "seq")
    }

    /// The positions of `ids` grouped by shard, for the shards that hold any: a call per
    /// shard (a script or a pipeline may not span slots on Redis Cluster).
    pub fn partition<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<(usize, Vec<usize>)> {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); self.shards()];
        for (i, id) in ids.enumerate() {
            parts[self.shard_of(id)].push(i);
        }
        parts.into_iter().enumerate().filter(|(_, indices)| !indices.is_empty()).collect()
    }

    /// The shard whose [`Keyspace::key`] `name` is `channel`, if any.
    pub fn shard_of_key(&self, channel: &str, name: &str) -> Option<usize> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_suffix(name)?;
        self.tags.iter().position(|tag| tag == rest)
    }
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of the key, or of
/// its hash tag (the non-empty text between the first `{` and the next `}`).
fn slot(key: &[u8]) -> usize {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            Some(&key[open + 1..open + 1 + close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    usize::from(crc16::State::<crc16::XMODEM>::calculate(hashed)) % SLOTS
}

/// The smallest number whose slot falls in `shard`'s share of the slots: the shard's tag.
fn tag_in(shard: usize, shards: usize) -> u64 {
    (0u64..)
        .find(|n| slot(n.to_string().as_bytes()) * shards / SLOTS == shard)
        .expect("every share of the slots holds the slot of some number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"), "an empty tag hashes the whole key");
    }

    #[test]
    fn one_redis_has_one_untagged_shard() {
        let keys = Keyspace::single("presence:");
        assert_eq!(keys.shard_of("alice"), 0);
        assert_eq!(keys.key(0, "meta:alice"), "presence:meta:alice");
        assert_eq!(keys.shard_of_key("presence:updates", "updates"), Some(0));
        assert_eq!(keys.group_channel("crew"), "presence:relay:crew");
        assert!(!keys.is_sharded());
    }

    #[test]
    fn shards_spread_over_the_slots_and_own_their_keys() {
        let keys = Keyspace::sharded("presence:", 16);
        assert!(keys.is_sharded());
        for shard in 0..16 {
            let seq = keys.seq(shard);
            assert_eq!(slot(seq.as_bytes()) * 16 / SLOTS, shard, "{seq} lies in its shard's slots");
            assert_eq!(slot(keys.key(shard, "meta:alice").as_bytes()), slot(seq.as_bytes()));
            assert_eq!(keys.shard_of_key(&keys.key(shard, "updates"), "updates"), Some(shard));
        }
        let mut used = [0usize; 16];
        for n in 0..16_000 {
            used[keys.shard_of(&format!("user-{n}"))] += 1;
        }
        assert!(used.iter().all(|&n| n > 700), "users spread over every shard: {used:?}");
    }
}
