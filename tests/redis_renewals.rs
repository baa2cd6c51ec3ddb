//! The Redis store's batched heartbeats against a real redis-server: a batch that mixes
//! live sessions (the short path) with lapsed ones (the whole lease) answers each
//! heartbeat with its own result.

mod common;

use std::time::Duration;

use common::{redis_store as store, session};
use futures_util::future::join_all;
use presence_router::{
    engine::PresenceStore,
    id::Id,
    presence::{Cause, Groups, Session, Status},
};

#[tokio::test]
async fn one_batch_of_live_and_lapsed_sessions_answers_each_heartbeat() {
    let redis = common::RedisServer::start().await;
    let long = store(redis.port, Duration::from_secs(60)).await;
    let short = store(redis.port, Duration::from_millis(200)).await;
    let live: Vec<Session> = (0..100).map(|i| session(&format!("live-{i}"), i)).collect();
    let lapsed: Vec<Session> = (0..100).map(|i| session(&format!("lapsed-{i}"), 1000 + i)).collect();
    for s in &live {
        assert!(long.connect(s).await.unwrap().update.is_some());
    }
    for s in &lapsed {
        assert!(short.connect(s).await.unwrap().update.is_some());
    }
    // Wait for the short leases to be swept: each lapsed user offline exactly once.
    let mut expired = 0;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while expired < lapsed.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {expired} short leases lapsed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        expired += short.expire_due().await.unwrap().len();
    }
    assert_eq!(expired, lapsed.len(), "each lapsed user offline once");

    // Everyone heartbeats at once, interleaved, through the long-TTL store.
    let all: Vec<&Session> = live.iter().zip(&lapsed).flat_map(|(a, b)| [a, b]).collect();
    let results = join_all(all.iter().map(|s| long.heartbeat(s, tokio::time::Instant::now()))).await;
    for (s, result) in all.iter().zip(results) {
        let result = result.unwrap();
        if s.user.as_str().starts_with("live") {
            assert_eq!(result, None, "{}: a live session's heartbeat is no transition", s.user);
        } else {
            let back = result.unwrap_or_else(|| panic!("{}: a lapsed session comes back", s.user));
            assert_eq!((back.presence.user_id.as_str(), back.presence.status), (s.user.as_str(), Status::Online));
            assert_eq!(back.cause, Cause::Connect);
            assert_eq!(back.presence.groups, Groups::from(vec![Id::parse("crew").unwrap()]));
        }
    }
    let online = long.online().await.unwrap();
    assert_eq!(online.users.len(), 200);
}
