//! The Redis Cluster harness itself: six nodes serve keys in every slot through
//! `redis-cli -c`, and a killed master's slots are served again once a replica takes over.

mod common;

use common::cluster::RedisCluster;

#[tokio::test]
async fn a_cluster_serves_keys_on_every_master_and_fails_over_a_killed_one() {
    let mut cluster = RedisCluster::start().await;
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.seeds().split(',').count(), 6);

    // One key per master: the harness routes to all three.
    let mut keys: Vec<(String, u16)> = Vec::new();
    for n in 0.. {
        let key = format!("key-{n}");
        let master = cluster.master_for_key(&key).await;
        if keys.iter().all(|(_, known)| *known != master) {
            keys.push((key, master));
        }
        if keys.len() == 3 {
            break;
        }
    }
    for (key, _) in &keys {
        assert_eq!(cluster.cli(&["SET", key, "before"]).await, "OK");
        assert_eq!(cluster.cli(&["GET", key]).await, "before");
    }

    let (key, master) = keys[0].clone();
    cluster.kill_master(master).await;
    let promoted = cluster.wait_failover(&key).await;
    assert_ne!(promoted, master);
    assert_eq!(cluster.master_for_key(&key).await, promoted);
    assert_eq!(cluster.cli(&["SET", &key, "after"]).await, "OK");
    assert_eq!(cluster.cli(&["GET", &key]).await, "after");
    for (key, _) in &keys[1..] {
        assert_eq!(cluster.cli(&["GET", key]).await, "before", "the other masters' keys are untouched");
    }
}
