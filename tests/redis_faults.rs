//! Redis faults that are not clean outages. A hung Redis (SIGSTOP: connections stay open,
//! nothing answers) must not stall PTT on a router: no connection task waits on the store.

mod common;

use std::time::Duration;

use common::{Engine, Setup, map};
use presence_router::protocol::message_type::{ACK, AUDIO, START, START_ACK, TEXT};
use rmpv::Value;
use tokio::time::Instant;

#[tokio::test]
async fn ptt_on_one_router_never_waits_for_a_hung_redis() {
    const HEARTBEATERS: usize = 600;
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--heartbeat-min-interval-ms", "0"]).await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    talker.send_frame(0, START, "talker", "crew", map(&[])).await;
    talker.expect(START_ACK).await;
    listener.expect_relayed(START, "talker", "crew").await;

    // 600 users heartbeating twice a second (1,200 heartbeats/s), each reading its answers.
    let mut heartbeaters = Vec::new();
    for i in 0..HEARTBEATERS {
        heartbeaters.push(router.mobile_in(&format!("h{i}"), &["fleet"]).await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = heartbeaters
        .into_iter()
        .enumerate()
        .map(|(i, mut mobile)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let user = format!("h{i}");
                while !stop.is_cancelled() {
                    mobile.heartbeat(&user).await;
                    mobile.next_frame().await; // ACK, or ERROR presence_unavailable
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                mobile
            })
        })
        .collect();

    setup.redis.as_ref().unwrap().signal("STOP").await;
    // The listener heartbeats too, while audio flows: neither may wait on Redis.
    let audio = Value::Binary(vec![1; 160]);
    let mut worst_gap = Duration::ZERO;
    let mut last = Instant::now();
    for n in 0..50 {
        talker.send_frame(0, AUDIO, "talker", "crew", audio.clone()).await;
        if n % 10 == 0 {
            listener.heartbeat("listener").await;
        }
        loop {
            let frame = listener.next_frame().await;
            if frame[1].as_u64() == Some(AUDIO.into()) {
                break;
            }
        }
        worst_gap = worst_gap.max(last.elapsed());
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    talker.send_frame(0, TEXT, "talker", "crew", map(&[("text", "still here".into())])).await;
    loop {
        let frame = listener.next_frame().await;
        if frame[1].as_u64() == Some(TEXT.into()) {
            break;
        }
    }
    talker.expect(ACK).await;
    setup.redis.as_ref().unwrap().signal("CONT").await;
    // A heartbeat blocked on a hung Redis used to hold its connection for a second or more
    // at a time; 500 ms is far above a 20 ms frame interval and far below that.
    assert!(worst_gap < Duration::from_millis(500), "audio stalled {worst_gap:?} while Redis hung");

    // Once Redis answers, presence is whole again: everyone online, nobody lost.
    stop.cancel();
    let mut mobiles = Vec::new();
    for task in tasks {
        mobiles.push(task.await.unwrap());
    }
    let ids: Vec<String> =
        (0..HEARTBEATERS).map(|i| format!("h{i}")).chain(["talker".into(), "listener".into()]).collect();
    common::eventually("everyone online after Redis resumes", || async {
        let (status, body) = router.post_status(&serde_json::json!({ "userIds": ids[..100] }).to_string()).await;
        status == 200 && body["users"].as_array().unwrap().iter().all(|u| u["status"].as_str() == Some("online"))
    })
    .await;
    for chunk in ids.chunks(100) {
        let (status, body) = router.post_status(&serde_json::json!({ "userIds": chunk }).to_string()).await;
        assert_eq!(status, 200, "{body}");
        let offline: Vec<_> =
            body["users"].as_array().unwrap().iter().filter(|u| u["status"].as_str() != Some("online")).collect();
        assert!(offline.is_empty(), "false offline after the hang: {offline:?}");
    }
    drop(mobiles);
}
