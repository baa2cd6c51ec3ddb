-- The shard's epoch and last transition number: where its change log stands now.
-- ARGV: last_seen_ms, ttl_ms.
return {history(), redis.call('GET', KEYS[1]) or '0'}
