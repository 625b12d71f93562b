//! The data plane's limits on a real loopback socket with plain WebSocket clients: a flooding
//! viewer cannot get the master dropped, a channel's connects are rate limited, and idle and
//! over-age connections are closed.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use kvs_signaling_service::{spawn, ServiceConfig, ServiceHandle};
use tokio_tungstenite::tungstenite::Message;

async fn start(config: ServiceConfig) -> (ServiceHandle, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = spawn(listener, config, None);
    let arn = service.state().create_channel("limits").unwrap().arn;
    (service, arn)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_viewer_does_not_knock_the_master_off() {
    let (service, arn) = start(ServiceConfig::default()).await;
    let addr = service.local_addr().unwrap();
    // The master (a device) is on a slow link and busy: it reads nothing until the good
    // viewer has offered, so whatever is forwarded to it piles up in the service.
    let mut master = ws_connect_small_buffer(&data_plane(addr, &arn, None), addr).await;
    let mut flooder = ws_connect(&data_plane(addr, &arn, Some("flooder")))
        .await
        .unwrap();
    wait_until("master and flooder registered", || {
        service.state().has_master(&arn) && service.state().viewer_count(&arn) == 1
    })
    .await;

    // 500 offers of about 9 KiB in one burst, written without reading anything back.
    let mut written = 0;
    for i in 0..500 {
        let frame = offer(Some(&format!("flood-{i}")), 6500);
        if flooder.feed(Message::Text(frame.into())).await.is_err() {
            break;
        }
        written += 1;
    }
    let _ = flooder.flush().await;

    // A well-behaved second viewer offers after the flood.
    let mut good = ws_connect(&data_plane(addr, &arn, Some("good")))
        .await
        .unwrap();
    send_text(&mut good, offer(Some("good-1"), 3000)).await;

    // The master keeps its connection and gets the good viewer's offer.
    let mut from_flooder = 0;
    loop {
        match next_seen(&mut master, Duration::from_secs(10)).await {
            Seen::Text(f) if f["senderClientId"] == "good" => {
                assert_eq!(f["messageType"], "SDP_OFFER");
                break;
            }
            Seen::Text(f) if f["senderClientId"] == "flooder" => from_flooder += 1,
            other => panic!(
                "master: expected the good viewer's offer, got {other:?} \
                 (after {from_flooder} of the flooder's)"
            ),
        }
    }
    assert!(
        service.state().has_master(&arn),
        "the master is still registered"
    );
    // Only the flooder's allowance went through (burst 10 plus 5 per second).
    assert!(
        from_flooder <= 30,
        "{from_flooder} of {written} flood offers forwarded"
    );

    // The master can still answer the good viewer.
    send_text(&mut master, answer("good")).await;
    match next_seen(&mut good, Duration::from_secs(5)).await {
        Seen::Text(f) => assert_eq!(f["messageType"], "SDP_ANSWER"),
        other => panic!("good viewer: expected the answer, got {other:?}"),
    }

    // The flooder was told no (rate limit) and, flooding on, was closed.
    let mut refusals = 0;
    let closed = loop {
        match next_seen(&mut flooder, Duration::from_secs(5)).await {
            Seen::Text(f) => {
                assert_eq!(f["messageType"], "STATUS_RESPONSE", "{f}");
                let s = &f["statusResponse"];
                assert_eq!(s["errorType"], "ClientLimitExceededException", "{f}");
                assert_eq!(s["success"], false);
                assert!(s["correlationId"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("flood-")));
                refusals += 1;
            }
            Seen::Closed(reason) => break reason,
            Seen::Nothing => panic!("the flooder was not closed ({refusals} refusals)"),
        }
    };
    eprintln!(
        "flood: {written} of 500 offers written before the service closed the flooder; \
         {from_flooder} forwarded to the master, {refusals} STATUS_RESPONSEs, close: {closed}"
    );
    assert!(refusals > 0, "the flooder got STATUS_RESPONSEs");
    assert!(closed.contains("flooding"), "close reason: {closed}");
    service.shutdown().await;
}

#[tokio::test]
async fn connects_to_one_channel_are_rate_limited() {
    let (service, arn) = start(ServiceConfig::default()).await;
    let addr = service.local_addr().unwrap();
    let url = data_plane(addr, &arn, None);
    // A reconnect storm: each new master replaces the previous one.
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..15 {
        match ws_connect(&url).await {
            Ok(ws) => open.push(ws),
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("a storm of 15 connects within a second is refused");
    refused.assert_rest_json_error(429, "ClientLimitExceededException");
    assert!(open.len() >= 3, "at least the KVS rate of 3 went through");
    // The bucket refills: a second later a connect succeeds again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ws_connect(&url).await.expect("a connect after the pause");
    service.shutdown().await;
}

#[tokio::test]
async fn idle_and_over_age_connections_are_closed() {
    let config = ServiceConfig {
        idle_timeout: Duration::from_millis(400),
        max_connection_age: Duration::from_millis(1500),
        ..ServiceConfig::default()
    };
    let (service, arn) = start(config).await;
    let addr = service.local_addr().unwrap();
    let mut idle = ws_connect(&data_plane(addr, &arn, Some("idle")))
        .await
        .unwrap();
    let mut busy = ws_connect(&data_plane(addr, &arn, None)).await.unwrap();
    let started = tokio::time::Instant::now();

    // The idle viewer is closed after the idle timeout...
    let idle_side = async {
        match next_seen(&mut idle, Duration::from_secs(3)).await {
            Seen::Closed(reason) => assert_eq!(reason, "idle timeout"),
            other => panic!("idle viewer: {other:?}"),
        }
        started.elapsed()
    };
    // ...while a connection that keeps talking (pings) is not idle, but ends at the age limit.
    let busy_side = async {
        loop {
            busy.send(Message::Ping(Vec::new().into())).await.unwrap();
            match next_seen(&mut busy, Duration::from_millis(100)).await {
                Seen::Closed(reason) => break reason,
                Seen::Nothing => {}
                Seen::Text(t) => panic!("unexpected {t}"),
            }
            assert!(started.elapsed() < Duration::from_secs(4), "never closed");
        }
    };
    let (idle_after, reason) = tokio::join!(idle_side, busy_side);
    assert!(
        idle_after >= Duration::from_millis(350) && idle_after < Duration::from_millis(1200),
        "closed after {idle_after:?}"
    );
    assert_eq!(reason, "maximum connection duration reached");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_stops_reading_is_dropped_and_senders_are_told_why() {
    // No rate limits here: this is about the queue. The master never reads; the kernel's
    // buffers fill, the service's send times out and the master is dropped — while the
    // sender, whose share of the master's queue is used up, gets refusals, not a close.
    let config = ServiceConfig {
        sdp_rate: None,
        ice_rate: None,
        flood_limit: None,
        connection_queue: 32,
        max_queued_per_sender: 8,
        send_timeout: Duration::from_millis(500),
        ..ServiceConfig::default()
    };
    let (service, arn) = start(config).await;
    let addr = service.local_addr().unwrap();
    let _master = ws_connect(&data_plane(addr, &arn, None)).await.unwrap();
    let mut sender = ws_connect(&data_plane(addr, &arn, Some("sender")))
        .await
        .unwrap();
    wait_until("both registered", || {
        service.state().has_master(&arn) && service.state().viewer_count(&arn) == 1
    })
    .await;
    let mut refusals = 0;
    for i in 0..3000 {
        if !service.state().has_master(&arn) {
            break;
        }
        send_text(&mut sender, offer(Some(&format!("s{i}")), 6000)).await;
        // Read what came back so far (refusals), without waiting.
        while let Seen::Text(f) = next_seen(&mut sender, Duration::from_millis(1)).await {
            assert_eq!(
                f["statusResponse"]["errorType"],
                "ClientLimitExceededException"
            );
            refusals += 1;
        }
    }
    wait_until("the master to be dropped", || {
        !service.state().has_master(&arn)
    })
    .await;
    assert!(refusals > 0, "the sender was told its messages did not fit");
    assert_eq!(
        service.state().viewer_count(&arn),
        1,
        "the sender is still connected"
    );
    service.shutdown().await;
}
