//! Hostile WebSocket clients, on raw sockets: floods of any frame kind (control frames and
//! fragments included) are charged to the connection's budget and closed with 4029; the
//! close handshake completes (the client reads the Close frame, then end of stream, never
//! a reset); framing violations get their RFC 6455 close codes; and large frames leave no
//! buffer behind.

mod common;

use common::{
    Client, Router, SECRET,
    prometheus::metric,
    raw::{End, RawWs, close_payload, frame},
    token,
};
use presence_router::{
    auth::{Role, mint_hs256_in},
    ws::frame::opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT},
};
use tokio::io::AsyncWriteExt;

async fn mobile(router: &Router, user: &str) -> RawWs {
    RawWs::connect(router.addr, &token(user, Role::Mobile), Some("device")).await
}

/// `[0, 30, user, 0, {}]`: a heartbeat, as bytes.
fn heartbeat(user: &str) -> Vec<u8> {
    frame(true, BINARY, &presence_router::protocol::heartbeat_frame(user))
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_is_closed_and_memory_stays_flat() {
    let router = Router::start(&[]).await;
    let before = router.memory_kib("VmRSS");
    let mut flooder = RawWs::connect(router.addr, &token("flooder", Role::Dashboard), None).await;
    let pings: Vec<u8> = (0..100).flat_map(|_| frame(true, PING, &[0x55; 125])).collect();
    // Never reads: every pong the router owes it stays unread.
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        while flooder.stream.write_all(&pings).await.is_ok() {
            sent += 100;
        }
        sent
    });
    // Meanwhile another client's round trips go on.
    let mut other = router.mobile("other", "d").await;
    for _ in 0..5 {
        other.sync("other").await;
    }
    let sent = tokio::time::timeout(common::WAIT, flood).await.expect("the flooder is cut off in time").unwrap();
    assert!(sent >= 200, "the router closed the connection only after the burst ({sent} pings)");
    let grown = router.memory_kib("VmRSS").saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB during the flood");
    let text = router.metrics().await;
    assert!(text.contains("presence_disconnects_total{reason=\"rate limit exceeded\"} 1"), "{text}");
    other.sync("other").await;
}

/// Pings within the budget from a client that does not read: the router holds at most
/// two pongs for it (one being written, one waiting), not one per ping.
#[tokio::test]
async fn pings_a_client_does_not_read_leave_at_most_two_pongs_queued() {
    const PINGS: usize = 1000;
    let router = Router::start(&["--frame-rate", "5000", "--frame-burst", "5000", "--tcp-send-buffer", "4096"]).await;
    let mut client = RawWs::connect_small(router.addr, &token("u", Role::Mobile), Some("d")).await;
    let ping = frame(true, PING, &[0x55; 125]);
    for _ in 0..PINGS {
        // One ping per write, paced, so the router wakes for each.
        client.send(&ping).await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // The heartbeat's ACK queues behind whatever pongs the router still holds.
    client.send(&heartbeat("u")).await;
    let mut pongs = 0;
    loop {
        let (_, opcode, payload) = client.read_frame().await.expect("the ACK");
        if opcode == PONG {
            pongs += 1;
        } else {
            assert_eq!(rmpv::decode::read_value(&mut &payload[..]).unwrap()[1].as_u64(), Some(34));
            break;
        }
    }
    // The socket buffers on both sides hold a few dozen 127-byte pongs; the rest of the
    // thousand pings were answered by the pong already waiting.
    assert!(pongs < PINGS / 2, "{pongs} pongs for {PINGS} pings: the router queued one per ping");
}

#[tokio::test]
async fn floods_of_any_frame_kind_are_closed_with_4029() {
    let router = Router::start(&[]).await;
    let floods: [(&str, Vec<u8>); 5] = [
        ("pings", (0..2000).flat_map(|_| frame(true, PING, b"p")).collect()),
        ("pongs", (0..2000).flat_map(|_| frame(true, PONG, b"p")).collect()),
        ("text frames", (0..2000).flat_map(|_| frame(true, TEXT, b"t")).collect()),
        ("heartbeats", (0..2000).flat_map(|_| heartbeat("u")).collect()),
        (
            "empty continuation fragments",
            frame(false, BINARY, b"")
                .into_iter()
                .chain((0..2000).flat_map(|_| frame(false, CONTINUATION, b"")))
                .collect(),
        ),
    ];
    for (what, flood) in floods {
        let mut client = mobile(&router, "u").await;
        client.send(&flood).await;
        assert_eq!(client.end().await, End::Closed(Some(4029)), "{what}");
    }
    // Bytes count as well as frames: a few maximal frames a second are fine, a stream of
    // them is not.
    let mut client = mobile(&router, "u").await;
    let big = frame(true, BINARY, &vec![0xC0; 60 * 1024]);
    let end = client.flood(&big, 2000).await;
    // The router closes while the client is still writing: the Close frame arrives, and
    // the end of the stream may be a reset once the drain gives up on the flood.
    assert!(matches!(end, End::Closed(Some(4029)) | End::ClosedThenReset(Some(4029))), "{end:?}");

    // Nor can a flood of big frames hide behind a cheap frame the budget admits now and then.
    let mut client = mobile(&router, "u").await;
    let mut chunk: Vec<u8> = (0..50).flat_map(|_| frame(true, BINARY, &vec![0xC0; 60 * 1024])).collect();
    chunk.extend(frame(true, PING, b""));
    let end = client.flood(&chunk, 200).await;
    assert!(matches!(end, End::Closed(Some(4029)) | End::ClosedThenReset(Some(4029))), "{end:?}");
}

#[tokio::test]
async fn a_client_close_is_echoed_then_the_stream_ends() {
    let router = Router::start(&[]).await;
    for (sent, echoed) in [(Some(1000), 1000), (Some(4321), 4321), (Some(1001), 1001), (Some(1012), 1012), (None, 1000)]
    {
        for _ in 0..10 {
            let mut client = mobile(&router, "u").await;
            let payload = sent.map(|code| close_payload(code, b"bye")).unwrap_or_default();
            client.send(&frame(true, CLOSE, &payload)).await;
            assert_eq!(client.end().await, End::Closed(Some(echoed)), "close {sent:?}");
        }
    }
    // A dashboard that logs out sees the same.
    let mut dashboard = RawWs::connect(router.addr, &token("d", Role::Dashboard), None).await;
    dashboard.send(&frame(true, CLOSE, &close_payload(1000, b""))).await;
    assert_eq!(dashboard.end().await, End::Closed(Some(1000)));
}

#[tokio::test]
async fn the_routers_own_close_arrives_not_a_reset() {
    let router = Router::start(&[]).await;
    let burst: Vec<u8> = (0..1000).flat_map(|_| heartbeat("u")).collect();
    for attempt in 0..20 {
        let mut client = mobile(&router, "u").await;
        // 1,000 heartbeats in one write: the router closes with 4029 while input is
        // still unread; the client must read the Close frame, not a reset.
        client.send(&burst).await;
        assert_eq!(client.end().await, End::Closed(Some(4029)), "attempt {attempt}");
    }
}

#[tokio::test]
async fn framing_violations_close_with_their_codes() {
    let router = Router::start(&["--max-frame-bytes", "4096"]).await;
    let unmasked = vec![0x82, 0x01, 0xC0];
    let mut huge_header = vec![0x82, 0x80 | 127];
    huge_header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge_header.extend_from_slice(&[1, 2, 3, 4]);
    // RFC 6455 section 5.2: the most significant bit of a 64-bit length must be 0.
    let mut top_bit_length = vec![0x82, 0x80 | 127];
    top_bit_length.extend_from_slice(&(1u64 << 63 | 1).to_be_bytes());
    top_bit_length.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked frame", unmasked, 1002),
        ("RSV1 without an extension", with_first_byte_bits(frame(true, BINARY, b"x"), 0x40), 1002),
        ("RSV2 without an extension", with_first_byte_bits(frame(true, BINARY, b"x"), 0x20), 1002),
        ("RSV3 without an extension", with_first_byte_bits(frame(true, BINARY, b"x"), 0x10), 1002),
        ("a reserved opcode", frame(true, 0x3, b"x"), 1002),
        ("a continuation with nothing to continue", frame(true, CONTINUATION, b"x"), 1002),
        ("a ping of 126 bytes", frame(true, PING, &[0; 126]), 1002),
        ("a fragmented ping", frame(false, PING, b"p"), 1002),
        (
            "a new message inside a fragmented one",
            [frame(false, BINARY, b"a"), frame(true, BINARY, b"b")].concat(),
            1002,
        ),
        ("a one-byte close payload", frame(true, CLOSE, &[3]), 1002),
        ("a close frame of 126 bytes", frame(true, CLOSE, &close_payload(1000, &[b'x'; 124])), 1002),
        ("a reserved close code", frame(true, CLOSE, &close_payload(1005, b"")), 1002),
        ("a close code only a router may report", frame(true, CLOSE, &close_payload(1006, b"")), 1002),
        ("a close code outside every range", frame(true, CLOSE, &close_payload(5000, b"")), 1002),
        ("a 64-bit length with its top bit set", top_bit_length, 1002),
        ("a text frame that is not UTF-8", frame(true, TEXT, &[0xC3, 0x28]), 1007),
        (
            "fragmented text that is not UTF-8",
            [frame(false, TEXT, &[0xE2, 0x82]), frame(true, CONTINUATION, &[0x28])].concat(),
            1007,
        ),
        ("a close reason that is not UTF-8", frame(true, CLOSE, &close_payload(1000, &[0xFF])), 1007),
        (
            "a close reason ending inside a character",
            frame(true, CLOSE, &close_payload(4000, &[b'a', 0xE2, 0x82])),
            1007,
        ),
        ("a text frame of a UTF-16 surrogate", frame(true, TEXT, &[0xED, 0xA0, 0x80]), 1007),
        ("a frame over the cap", frame(true, BINARY, &[0; 5000]), 1009),
        ("a text frame over the cap", frame(true, TEXT, &[b'a'; 5000]), 1009),
        ("a length of 2^40, before its payload", huge_header, 1009),
        (
            "fragments adding up past the cap",
            [frame(false, BINARY, &[0; 3000]), frame(true, CONTINUATION, &[0; 3000])].concat(),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut client = mobile(&router, "u").await;
        client.send(&bytes).await;
        let (close, end) = client.end_with_close().await;
        assert_eq!(end, End::Closed(Some(code)), "{what}");
        // The Close frame itself, byte by byte: final, unmasked, no reserved bit (checked
        // as it is parsed), a whole control frame, the code first and a UTF-8 reason.
        let (fin, _, payload) = close.expect("a Close frame");
        assert!(fin, "{what}: a control frame is never fragmented");
        assert!((2..=125).contains(&payload.len()), "{what}: {payload:?}");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{what}");
        assert!(std::str::from_utf8(&payload[2..]).is_ok(), "{what}: the reason is UTF-8: {payload:?}");
    }
    let text = router.metrics().await;
    for reason in ["protocol", "invalid_utf8", "too_big"] {
        let counted = metric(&text, &format!("presence_frame_errors_total{{reason=\"{reason}\"}}"));
        assert!(counted.is_some_and(|n| n > 0), "{reason}: {text}");
    }
    // Valid UTF-8 text is answered with an ERROR frame, as before; the connection stays.
    let mut client = Client::connect(router.addr, &token("t", Role::Mobile), Some("d")).await;
    client.send_text("hello").await;
    assert_eq!(client.next_error().await["code"].as_str(), Some("text_not_supported"));
    client.sync("t").await;
    // UTF-8 is checked on the whole message: a character split across fragments is valid.
    let mut client = mobile(&router, "u").await;
    let euro = "€".as_bytes();
    client.send(&[frame(false, TEXT, &euro[..1]), frame(true, CONTINUATION, &euro[1..])].concat()).await;
    let (_, opcode, payload) = client.read_frame().await.expect("an answer, not a close");
    assert_eq!(opcode, BINARY);
    let error = rmpv::decode::read_value(&mut &payload[..]).unwrap();
    assert_eq!(error[5]["code"].as_str(), Some("text_not_supported"), "{error}");
}

/// `frame` with `bits` (reserved bits) set in its first byte.
fn with_first_byte_bits(mut frame: Vec<u8>, bits: u8) -> Vec<u8> {
    frame[0] |= bits;
    frame
}

/// A frame (or fragmented message) begun and never finished would park a buffer of up to
/// `--max-frame-bytes` in the router; past `--frame-timeout-ms` it is closed with 1008.
#[tokio::test]
async fn a_message_left_unfinished_is_closed_with_1008() {
    let router = Router::start(&["--frame-timeout-ms", "500"]).await;
    let partial_frame = frame(true, BINARY, &[0xC0; 60_000])[..30_000].to_vec();
    let open_fragments = frame(false, BINARY, b"a");
    for (what, bytes) in [("half a frame", partial_frame), ("a fragmented message", open_fragments)] {
        let mut dashboard = RawWs::connect(router.addr, &token("d", Role::Dashboard), None).await;
        dashboard.send(&bytes).await;
        assert_eq!(dashboard.end().await, End::Closed(Some(1008)), "{what}");
    }
    assert!(router.metrics().await.contains("presence_frame_errors_total{reason=\"unfinished\"} 2"));
}

#[tokio::test]
async fn fragmented_messages_and_pings_between_them_are_served() {
    let router = Router::start(&[]).await;
    let mut client = mobile(&router, "u").await;
    let bytes = presence_router::protocol::heartbeat_frame("u");
    let (a, rest) = bytes.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let message = [
        frame(false, BINARY, a),
        frame(true, PING, b"are you there"),
        frame(false, CONTINUATION, b),
        frame(true, CONTINUATION, c),
    ]
    .concat();
    client.send(&message).await;
    let (fin, opcode, payload) = client.read_frame().await.expect("the pong");
    assert_eq!((fin, opcode, payload.as_slice()), (true, PONG, &b"are you there"[..]));
    let (_, opcode, payload) = client.read_frame().await.expect("the heartbeat's ACK");
    assert_eq!(opcode, BINARY);
    let ack = rmpv::decode::read_value(&mut &payload[..]).unwrap();
    assert_eq!(ack[1].as_u64(), Some(34), "HEARTBEAT_ACK for the reassembled heartbeat: {ack}");
}

/// Frames are read into a shared scratch buffer and only an unfinished frame is kept, so
/// after one 60 KiB frame each, idle connections hold what they held before it.
#[tokio::test]
async fn large_frames_leave_no_buffer_behind() {
    const CONNECTIONS: usize = 300;
    let router = Router::start(&[]).await;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let user = format!("big{i}");
        let token = mint_hs256_in(SECRET.as_bytes(), &user, Role::Mobile, Some(&[user.as_str()]), 3600).unwrap();
        let mut client = Client::connect(router.addr, &token, Some("d")).await;
        client.sync(&user).await;
        clients.push((user, client));
    }
    let before = router.memory_kib("VmRSS");
    let payload = rmpv::Value::Binary(vec![0x42; 60 * 1024]);
    for (user, client) in &mut clients {
        // TEXT to the client's own, otherwise empty group: read whole, then acknowledged.
        client.send_frame(0, 17, user, user, payload.clone()).await;
        client.expect(22).await;
    }
    let grown = router.memory_kib("VmRSS").saturating_sub(before);
    assert!(
        grown < (CONNECTIONS as u64) * 16,
        "{grown} KiB kept after one 60 KiB frame on each of {CONNECTIONS} connections"
    );
}

/// Snapshots are written from the shared encoded frame: a dashboard keeps no copy.
#[tokio::test]
async fn dashboards_keep_no_snapshot_buffer() {
    const USERS: usize = 1000;
    const DASHBOARDS: usize = 100;
    let router = Router::start(&[]).await;
    let mut mobiles = Vec::new();
    let text = "x".repeat(120);
    for i in 0..USERS {
        let user = format!("m{i}");
        let mut client = router.mobile(&user, "d").await;
        client.set_status(&user, "dnd", Some(&text)).await;
        mobiles.push(client);
    }
    // The snapshot is over 120 KB; warm its cache with a first dashboard.
    let (_first, snapshot) = router.dashboard("first").await;
    assert_eq!(snapshot[5]["users"].as_array().map(Vec::len), Some(USERS));
    let before = router.memory_kib("VmRSS");
    let mut dashboards = Vec::new();
    for i in 0..DASHBOARDS {
        dashboards.push(router.dashboard(&format!("d{i}")).await.0);
    }
    let grown = router.memory_kib("VmRSS").saturating_sub(before);
    assert!(grown < (DASHBOARDS as u64) * 48, "{grown} KiB kept by {DASHBOARDS} dashboards after a snapshot");
}

/// A mobile that stops reading while its group is sent large frames holds at most its
/// mailbox's bytes (sixteen of the largest frames), not its 512 frames' worth: it is closed
/// as a slow consumer (4008) once they are queued, long before its write times out.
#[tokio::test]
async fn a_reader_that_never_reads_holds_at_most_its_mailbox_bytes() {
    // Room to send fast (the byte and frame budgets), a write timeout beyond the test, and
    // small socket buffers so that the router's queue, not the kernel's, takes the frames.
    let router = Router::start(&[
        "--tcp-send-buffer",
        "8192",
        "--write-timeout-ms",
        "600000",
        "--byte-rate",
        "100000000",
        "--frame-rate",
        "100000",
    ])
    .await;
    let listener_token = mint_hs256_in(SECRET.as_bytes(), "listener", Role::Mobile, Some(&["crew"]), 3600).unwrap();
    let mut listener = RawWs::connect_small(router.addr, &listener_token, Some("device")).await;
    listener.send(&heartbeat("listener")).await;
    let (_, opcode, _) = listener.read_frame().await.expect("the heartbeat's ACK");
    assert_eq!(opcode, BINARY);
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let before = router.memory_kib("VmRSS");

    // 300 texts of 60,000 bytes (18 MB), fewer frames than the mailbox's 512.
    let text = "x".repeat(60_000);
    let overflowed = |metrics: &str| metric(metrics, "presence_relay_overflows_total").unwrap_or(0) > 0;
    for _ in 0..300 {
        talker.send_frame(0, 17, "talker", "crew", common::map(&[("text", text.as_str().into())])).await;
        if overflowed(&router.metrics().await) {
            break;
        }
    }
    assert!(overflowed(&router.metrics().await), "the listener's mailbox never overflowed");
    let grown = router.memory_kib("VmRSS").saturating_sub(before);
    assert!(grown < 8 * 1024, "the router grew by {grown} KiB for one reader that does not read");
    let (close, _) = listener.end_with_close().await;
    let code = close.map(|(_, _, payload)| u16::from_be_bytes([payload[0], payload[1]]));
    assert_eq!(code, Some(4008), "closed as a slow consumer");
}

/// A dashboard is pinged while silent and, answering nothing, closed 4000 once silent for
/// the idle timeout (TTL + 2 s), where it used to be held until a write failed; one that
/// answers the pings, connected at the same time, is still served when the silent one is
/// cut.
#[tokio::test]
async fn a_silent_dashboard_is_pinged_then_closed_while_one_that_answers_stays() {
    let router = Router::start(&["--presence-ttl", "1"]).await;
    let mut silent = RawWs::connect(router.addr, &token("silent", Role::Dashboard), None).await;
    let mut answering = RawWs::connect(router.addr, &token("answering", Role::Dashboard), None).await;
    // The answering dashboard reads its frames and pongs every ping, until the silent one
    // has been read to its end.
    let (done, mut stop) = tokio::sync::oneshot::channel::<()>();
    let answerer = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            tokio::select! {
                _ = &mut stop => return (answering, pings),
                read = answering.read_frame() => {
                    let (_, opcode, payload) = read.expect("the answering dashboard is never closed");
                    if opcode == PING {
                        pings += 1;
                        answering.send(&frame(true, PONG, &payload)).await;
                    }
                }
            }
        }
    });
    let mut pinged = 0;
    let end = loop {
        match silent.read_frame().await {
            Some((_, PING, _)) => pinged += 1,
            Some((_, CLOSE, payload)) => break u16::from_be_bytes([payload[0], payload[1]]),
            Some(_) => {}
            None => panic!("the silent dashboard's connection ended without a Close"),
        }
    };
    assert_eq!(end, 4000, "closed for silence");
    assert!(pinged >= 1, "pinged before it was closed");
    done.send(()).unwrap();
    let (mut answering, pings) = answerer.await.unwrap();
    assert!(pings >= 1, "the answering dashboard was pinged too");
    answering.send(&frame(true, PING, b"still there?")).await;
    loop {
        let (_, opcode, payload) = answering.read_frame().await.expect("still served");
        if opcode == PONG {
            assert_eq!(payload, b"still there?");
            break;
        }
    }
    let text = router.metrics().await;
    assert_eq!(metric(&text, "presence_disconnects_total{reason=\"heartbeat timeout\"}"), Some(1), "{text}");
}

/// Readers that keep up are never closed for a burst their senders' budgets allow: two
/// members each send four 60 KB TEXTs back to back to a group of twenty readers.
#[tokio::test]
async fn readers_that_keep_up_are_not_closed_by_bursts_of_large_texts() {
    let router = Router::start(&[]).await;
    let mut readers = Vec::new();
    for i in 0..20 {
        readers.push(router.mobile_in(&format!("reader{i}"), &["crew"]).await);
    }
    // Both senders joined before either sends: a member joining later would be sent the
    // texts too, ahead of its own heartbeat's ACK.
    let mut talkers = [router.mobile_in("a", &["crew"]).await, router.mobile_in("b", &["crew"]).await];
    let text = "x".repeat(60_000);
    for (talker, sender) in talkers.iter_mut().zip(["a", "b"]) {
        for _ in 0..4 {
            talker.send_frame(0, 17, sender, "crew", common::map(&[("text", text.as_str().into())])).await;
        }
    }
    for reader in &mut readers {
        let mut texts = 0;
        while texts < 8 {
            // A close (4008) fails here: next_frame expects binary frames.
            if reader.next_frame().await[1].as_u64() == Some(17) {
                texts += 1;
            }
        }
    }
    let text = router.metrics().await;
    assert_eq!(metric(&text, "presence_relay_overflows_total"), Some(0), "{text}");
}

/// A TEXT that JSON escaping would make larger than a client may send is refused to its
/// sender and reaches no one: control characters take six bytes each once escaped.
#[tokio::test]
async fn a_text_that_escaping_would_enlarge_past_the_frame_limit_is_refused() {
    let router = Router::start(&[]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    // 20,000 bytes in, 120,000 out as JSON: past the 64 KiB limit.
    let control = "\u{1}".repeat(20_000);
    talker.send_frame(0, 17, "talker", "crew", rmpv::Value::from(control.as_str())).await;
    let error = talker.next_error().await;
    assert_eq!(error["code"].as_str(), Some("invalid_payload"), "{error}");
    // The next, ordinary, text is the first the listener gets.
    talker.send_frame(0, 17, "talker", "crew", rmpv::Value::from("hello")).await;
    let frame = listener.next_frame().await;
    assert_eq!(frame[1].as_u64(), Some(17), "{frame}");
    assert!(frame[4].as_str().is_some_and(|json| json.contains("hello")), "{frame}");
}
