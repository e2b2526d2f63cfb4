//! The Miniserver simulator driven over real sockets by a small raw client
//! (tests/support/sim/client.rs): HTTP endpoints, headers before payloads, key exchange and
//! token auth, event tables, keepalive, faults, timeouts and TLS.

#[path = "support/sim/client.rs"]
mod client;
mod common;

use std::time::Duration;

use client::{http_get, http_post, start, RawClient, Received, PASSWORD, USER};
use loxone_exporter::loxone::envelope::{parse_api_key_value, parse_ll};
use loxone_exporter::loxone::events::{
    parse_daytimer_events, parse_text_events, parse_weather_events, value_events,
};
use loxone_exporter::loxone::header::MessageKind;
use loxone_exporter::loxone::simulator::{MalformedKind, DEFAULT_STRUCTURE};
use loxone_exporter::loxone::structure::parse_structure;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn http_endpoints_basic_auth_and_public_key() {
    let sim = start(|_| {}).await;
    let base = format!("http://{}", sim.http_addr());

    let (s, body) = http_get(&format!("{base}/jdev/cfg/apiKey"), None).await;
    assert_eq!(s, 200);
    let ll = parse_ll(&body).unwrap();
    assert_eq!(ll.control, "dev/cfg/apiKey");
    let raw = ll.value.as_str().unwrap();
    assert!(raw.contains('\''), "single-quoted pseudo-JSON: {raw}");
    let info = parse_api_key_value(raw).unwrap();
    assert_eq!(info.snr, "50:4F:94:A0:EF:1E");
    assert_eq!(info.key.as_ref().map(|k| k.len()), Some(80));
    assert_eq!(info.https_status, Some(0));

    let (s, body) = http_get(&format!("{base}/jdev/sys/getPublicKey"), None).await;
    assert_eq!(s, 200);
    let pk = parse_ll(&body).unwrap().value.as_str().unwrap().to_string();
    assert!(pk.starts_with("-----BEGIN CERTIFICATE-----MIGf"), "{pk}");
    assert!(!pk.contains('\n'));
    loxone_exporter::loxone::crypto::parse_public_key(&pk).unwrap();

    let (s, body) = http_get(&format!("{base}/data/LoxAPP3.json"), None).await;
    assert_eq!(s, 401);
    assert!(body.contains("<errorcode>401</errorcode>"), "{body}");
    let (s, _) = http_get(&format!("{base}/data/LoxAPP3.json"), Some((USER, "wrong"))).await;
    assert_eq!(s, 401);
    let (s, body) = http_get(&format!("{base}/data/LoxAPP3.json"), Some((USER, PASSWORD))).await;
    assert_eq!(s, 200);
    assert_eq!(body.as_bytes(), DEFAULT_STRUCTURE);
    let (s, body) = http_get(
        &format!("{base}/jdev/sps/LoxAPPversion3"),
        Some((USER, PASSWORD)),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(parse_ll(&body).unwrap().value, "2026-01-10 13:24:37");
    sim.shutdown().await;
}

#[tokio::test]
async fn login_structure_download_and_header_before_every_payload() {
    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.protocol_echoed.as_deref(), Some("remotecontrol"));
    let r = c.login(USER, PASSWORD).await;
    assert_eq!(r.code, 200, "{r:?}");
    assert!(r.value["token"].is_string());

    let r = c.command("jdev/sps/LoxAPPversion3").await;
    assert_eq!(r.value, "2026-01-10 13:24:37");
    c.send("data/LoxAPP3.json").await;
    let (text, _) = c.answer().await;
    assert_eq!(text.as_bytes(), DEFAULT_STRUCTURE);
    let s = parse_structure(text.as_bytes()).unwrap();
    assert_eq!(s.control_count(), sim.control().control_count());

    // the socket without the subprotocol offer is accepted too, and nothing is echoed
    let c2 = RawClient::connect(&sim, false).await.unwrap();
    assert_eq!(c2.protocol_echoed, None);
    assert!(sim.counters().encrypted_commands >= 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_password_401_and_blocking_with_4003() {
    let sim = start(|o| o.max_failed_logins = 2).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    let r = c.login(USER, "wrong").await;
    assert_eq!(r.code, 401);
    assert!(r.value["lastEdit"].is_string() && r.value["unix"].is_number());
    let r = c.login(USER, "still wrong").await;
    assert_eq!(r.code, 401);
    assert_eq!(sim.counters().auth_failures, 2);
    // blocked now: new sockets are closed with 4003 right after opening
    let mut c2 = RawClient::connect(&sim, true).await.unwrap();
    match c2.recv().await {
        Received::Closed(code, reason) => {
            assert_eq!(code, Some(4003));
            assert!(reason.ends_with(')'), "remaining seconds in (…): {reason}");
        }
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn plain_getjwt_is_refused_and_pre_auth_commands_get_400() {
    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    let r = c.command("jdev/sps/enablebinstatusupdate").await;
    assert_eq!(r.code, 400);
    let r = c.command("jdev/sys/getjwt/abc/tester/4/x/y").await;
    assert_eq!(r.code, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn initial_tables_of_all_kinds_then_deltas_and_keepalive() {
    let sim = start(|o| {
        o.rate = 2000.0;
        o.tick = Duration::from_millis(20);
    })
    .await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("jdev/sps/enablebinstatusupdate").await;
    let (answer, early) = c.answer().await;
    assert_eq!(parse_ll(&answer).unwrap().code, 200);
    assert!(early.is_empty(), "answer first by default");
    let mut kinds = Vec::new();
    let mut value_tables = 0;
    let uuids = sim.control().value_state_uuids();
    while value_tables < 5 {
        match c.recv().await {
            Received::Msg {
                header,
                payload: Some(p),
                ..
            } => {
                let data = p.into_data();
                match header.kind {
                    MessageKind::ValueStates => {
                        let evs: Vec<_> = value_events(&data).unwrap().collect();
                        if value_tables == 0 {
                            assert_eq!(evs.len(), uuids.len(), "full initial table");
                        } else {
                            assert!(!evs.is_empty());
                        }
                        assert!(evs.iter().all(|e| uuids.contains(&e.uuid)));
                        value_tables += 1;
                    }
                    MessageKind::TextStates => {
                        assert!(!parse_text_events(&data).unwrap().is_empty())
                    }
                    MessageKind::DaytimerStates => {
                        assert!(!parse_daytimer_events(&data).unwrap().is_empty())
                    }
                    MessageKind::WeatherStates => {
                        assert_eq!(parse_weather_events(&data).unwrap().len(), 2)
                    }
                    k => panic!("unexpected {k:?}"),
                }
                if !kinds.contains(&header.kind) {
                    kinds.push(header.kind);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        &kinds[..4],
        &[
            MessageKind::ValueStates,
            MessageKind::TextStates,
            MessageKind::DaytimerStates,
            MessageKind::WeatherStates
        ]
    );
    // keepalive: a bare type-6 header, no payload
    c.send("keepalive").await;
    loop {
        match c.recv().await {
            Received::Msg {
                header, payload, ..
            } if header.kind == MessageKind::Keepalive => {
                assert_eq!(header.payload_len, 0);
                assert!(payload.is_none());
                break;
            }
            Received::Msg { header, .. } => assert_eq!(header.kind, MessageKind::ValueStates),
            other => panic!("{other:?}"),
        }
    }
    assert!(sim.counters().value_events_sent > uuids.len() as u64);
    sim.shutdown().await;
}

#[tokio::test]
async fn set_value_reaches_subscribed_clients() {
    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("jdev/sps/enablebinstatusupdate").await;
    c.answer().await;
    for _ in 0..4 {
        c.recv().await; // the four initial tables
    }
    let uuid = sim.control().value_state_uuids()[3];
    assert!(sim.control().set_value(uuid, 1234.5));
    let evs = c.value_table().await;
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].uuid, evs[0].value), (uuid, 1234.5));
    sim.shutdown().await;
}

#[tokio::test]
async fn close_codes_and_out_of_service() {
    let sim = start(|_| {}).await;
    for code in [4004u16, 4005, 4006, 4007, 4008] {
        let mut c = RawClient::connect(&sim, true).await.unwrap();
        assert_eq!(c.login(USER, PASSWORD).await.code, 200);
        sim.control().close_all(code);
        assert_eq!(c.closed().await, Some(code));
    }
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    // over the HTTP control API this time
    let (s, _) = http_post(&format!("http://{}/sim/out-of-service", sim.http_addr())).await;
    assert_eq!(s, 200);
    match c.recv().await {
        Received::Msg {
            header, payload, ..
        } => {
            assert_eq!(header.kind, MessageKind::OutOfService);
            assert!(payload.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.recv().await, Received::Closed(..)));
    sim.shutdown().await;
}

#[tokio::test]
async fn reboot_refuses_then_503_then_recovers() {
    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    // down for 10 s: refused for the first half, 503 for the second. Each phase is found by
    // polling, but each check must land in its phase: 5 s each is room for a loaded machine
    // (a slower one moves the phases, not the outcome, as long as no single step takes 5 s)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    sim.control().reboot(Duration::from_secs(10));
    assert!(
        matches!(c.recv().await, Received::Msg { header, .. } if header.kind == MessageKind::OutOfService)
    );
    assert!(
        RawClient::connect(&sim, true).await.is_err(),
        "refused while down"
    );
    assert!(sim.counters().refused_connections >= 1);
    let url = format!("http://{}/jdev/cfg/apiKey", sim.http_addr());
    let client = loxone_exporter::tls_provider::reqwest_builder()
        .build()
        .expect("http client");
    let status = loop {
        match client.get(&url).send().await {
            Ok(r) => break r.status().as_u16(),
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "still refusing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(status, 503, "the first answer after the refusals");
    assert!(
        RawClient::connect(&sim, true).await.is_err(),
        "503 refuses the upgrade"
    );
    let mut c = loop {
        match RawClient::connect(&sim, true).await {
            Ok(c) => break c,
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn estimated_headers_precede_exact_ones() {
    for (flag, bit) in [("0x80", 0x80u8), ("0x01", 0x01)] {
        let sim = start(|o| {
            o.estimated_flag =
                loxone_exporter::loxone::simulator::parse_estimated_flag(flag).unwrap()
        })
        .await;
        let mut c = RawClient::connect(&sim, true).await.unwrap();
        c.send("jdev/sys/getkey").await;
        // raw frames: estimated header, exact header, text
        let est = c.next_raw().await.unwrap().unwrap().into_data();
        assert_eq!(est.len(), 8);
        assert_eq!(est[2] & 0x81, bit, "info byte {:#x}", est[2]);
        let exact = c.next_raw().await.unwrap().unwrap().into_data();
        assert_eq!(exact[2] & 0x81, 0);
        let text = c.next_raw().await.unwrap().unwrap();
        assert!(matches!(text, Message::Text(_)));
        assert_eq!(
            u32::from_le_bytes([exact[4], exact[5], exact[6], exact[7]]) as usize,
            text.len()
        );
        assert!(u32::from_le_bytes([est[4], est[5], est[6], est[7]]) as usize >= text.len());
        sim.shutdown().await;
    }
    // switched on at run time
    let sim = start(|_| {}).await;
    sim.control().set_estimated_headers(true);
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    c.send("jdev/sys/getkey").await;
    match c.recv().await {
        Received::Msg {
            estimated_before, ..
        } => assert!(estimated_before.is_some()),
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn split_frames_are_reassembled_into_one_message() {
    let sim = start(|_| {}).await;
    // a client that refuses frames above 4 KiB cannot take the 283 KB structure in one frame
    let mut c = RawClient::connect_with(&sim, true, Some(4096))
        .await
        .unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("data/LoxAPP3.json").await;
    assert!(c.next_raw().await.unwrap().is_ok(), "header");
    assert!(
        c.next_raw().await.unwrap().is_err(),
        "unsplit frame exceeds the client limit"
    );

    sim.control().set_split_frames(Some(1000));
    let mut c = RawClient::connect_with(&sim, true, Some(4096))
        .await
        .unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("data/LoxAPP3.json").await;
    let (text, _) = c.answer().await;
    assert_eq!(text.as_bytes(), DEFAULT_STRUCTURE);
    sim.shutdown().await;
}

/// Only lower bounds on time: each timeout runs from a moment after `started`, so the close
/// comes at least that long after it; a slow machine only adds to it. The windows a login
/// must fit in (`auth_timeout`, and `idle_timeout` between two of its commands) are seconds
/// wide, as a debug build's key exchange on a loaded machine needs.
#[tokio::test]
async fn auth_timeout_420_and_idle_timeout() {
    const AUTH: Duration = Duration::from_millis(300);
    let sim = start(|o| o.auth_timeout = AUTH).await;
    let started = tokio::time::Instant::now();
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    let (t, _) = c.answer().await;
    let ll = parse_ll(&t).unwrap();
    assert_eq!((ll.control.as_str(), ll.code), ("Auth", 420));
    let waited = started.elapsed();
    assert!(waited >= AUTH, "420 after {waited:?}");
    assert!(c.closed().await.is_some());
    sim.shutdown().await;

    const IDLE: Duration = Duration::from_secs(3);
    let sim = start(|o| {
        o.auth_timeout = Duration::from_secs(5);
        o.idle_timeout = IDLE;
    })
    .await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    // the idle time runs from the last command the simulator read, getjwt, sent after this
    let started = tokio::time::Instant::now();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    assert_eq!(c.closed().await, Some(1000));
    let waited = started.elapsed();
    assert!(waited >= IDLE, "closed as idle after {waited:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn token_expiry_closes_with_1000() {
    let sim = start(|o| o.token_lifetime_app = Duration::from_millis(500)).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    assert_eq!(c.closed().await, Some(1000));

    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    sim.control().expire_tokens();
    assert_eq!(c.closed().await, Some(1000));
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_payloads_are_injected() {
    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    sim.control()
        .inject_malformed(MalformedKind::TruncatedValueTable);
    let h = c.next_raw().await.unwrap().unwrap().into_data();
    assert_eq!(h[1], 2);
    let p = c.next_raw().await.unwrap().unwrap().into_data();
    assert!(value_events(&p).is_err(), "30 bytes is not a value table");
    sim.control().inject_malformed(MalformedKind::GarbageHeader);
    let h = c.next_raw().await.unwrap().unwrap().into_data();
    assert_ne!(h[0], 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn structure_change_gives_new_last_modified() {
    let sim = start(|_| {}).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    let before = c.command("jdev/sps/LoxAPPversion3").await.value;
    let (s, body) = http_post(&format!("http://{}/sim/change-structure", sim.http_addr())).await;
    assert_eq!(s, 200);
    let after = c.command("jdev/sps/LoxAPPversion3").await.value;
    assert_ne!(before, after);
    assert!(body.contains(after.as_str().unwrap()));
    c.send("data/LoxAPP3.json").await;
    let (text, _) = c.answer().await;
    assert_eq!(
        parse_structure(text.as_bytes()).unwrap().last_modified,
        after
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_listener_serves_the_same_protocol() {
    let sim = start(|o| o.tls_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut c = RawClient::connect_tls(&sim).await.unwrap();
    // on TLS a plain getjwt is fine (Gen2 ≥ 11.2.10.22), but we still go through the flow
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    let r = c.command("jdev/sps/LoxAPPversion3").await;
    assert_eq!(r.code, 200);
    let (_, body) = http_get(&format!("http://{}/jdev/cfg/apiKey", sim.http_addr()), None).await;
    let info = parse_api_key_value(parse_ll(&body).unwrap().value.as_str().unwrap()).unwrap();
    assert_eq!(info.https_status, Some(1));
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_stats_and_bad_requests() {
    let sim = start(|_| {}).await;
    let base = format!("http://{}", sim.http_addr());
    let (s, body) = http_get(&format!("{base}/sim/stats"), None).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["http_requests"].as_u64().unwrap() >= 1);
    assert_eq!(
        http_post(&format!("{base}/sim/malformed?kind=nope"))
            .await
            .0,
        400
    );
    assert_eq!(
        http_post(&format!("{base}/sim/value?uuid=zz&value=1"))
            .await
            .0,
        400
    );
    assert_eq!(
        http_post(&format!("{base}/sim/rate?events_per_s=100"))
            .await
            .0,
        200
    );
    assert_eq!(http_get(&format!("{base}/sim/close"), None).await.0, 405);
    sim.shutdown().await;
}

/// The login must be done before the fault fires: 3 s is room for a debug build's key
/// exchange on a loaded machine. The fault's time is checked as a lower bound only.
#[tokio::test]
async fn scheduled_fault_flags_close_sockets() {
    const AFTER: Duration = Duration::from_secs(3);
    let started = tokio::time::Instant::now(); // the simulator's schedule starts after this
    let sim = start(|o| {
        o.fault_close_after = Some(AFTER);
        o.fault_close_code = 4006;
    })
    .await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    assert_eq!(c.closed().await, Some(4006));
    assert!(started.elapsed() >= AFTER, "{:?}", started.elapsed());
    sim.shutdown().await;

    let started = tokio::time::Instant::now();
    let sim = start(|o| {
        o.fault_out_of_service_after = Some(AFTER);
        o.fault_reboot_for = Duration::from_secs(30);
    })
    .await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    match c.recv().await {
        Received::Msg { header, .. } => assert_eq!(header.kind, MessageKind::OutOfService),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= AFTER, "{:?}", started.elapsed());
    assert!(
        RawClient::connect(&sim, true).await.is_err(),
        "down after the reboot fault"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn set_text_sends_a_text_table() {
    let sim = start(|_| {}).await;
    let mut c = subscribed(&sim).await;
    let uuid = sim.control().text_state_uuids()[0];
    assert!(sim.control().set_text(uuid, "Příliš žluťoučký kůň"));
    assert!(!sim
        .control()
        .set_text(sim.control().value_state_uuids()[0], "x"));
    let data = c.table(MessageKind::TextStates).await;
    let evs = parse_text_events(&data).unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].uuid, uuid);
    assert_eq!(evs[0].text, "Příliš žluťoučký kůň");
    sim.shutdown().await;
}

/// A value state of the served structure, as the `/sim/value` UUID parameter.
fn some_value_state(sim: &loxone_exporter::loxone::simulator::Simulator) -> String {
    sim.control().value_state_uuids()[0].to_string()
}

#[tokio::test]
async fn control_api_refuses_non_finite_values() {
    let sim = start(|o| o.rate = 1000.0).await;
    let base = format!("http://{}", sim.http_addr());
    let uuid = some_value_state(&sim);
    for bad in ["NaN", "nan", "inf", "-inf", "Infinity", "1e999"] {
        let (s, _) = http_post(&format!("{base}/sim/value?uuid={uuid}&value={bad}")).await;
        assert_eq!(s, 400, "value={bad}");
    }
    let (s, _) = http_post(&format!("{base}/sim/value?uuid={uuid}&value=21.5")).await;
    assert_eq!(s, 200);
    // the generator is alive: a subscribed client keeps getting deltas
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("jdev/sps/enablebinstatusupdate").await;
    c.answer().await;
    for _ in 0..6 {
        match c.recv().await {
            Received::Msg {
                payload: Some(_), ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn dev_commands_are_answered_in_xml_over_http_and_websocket() {
    let sim = start(|_| {}).await;
    let base = format!("http://{}", sim.http_addr());
    let (s, body) = http_get(&format!("{base}/dev/cfg/api"), None).await;
    assert_eq!(s, 200);
    assert!(
        body.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<LL control=\"dev/cfg/api\" value=\"{'snr': '50:4F:94:A0:EF:1E'"),
        "{body}"
    );
    assert!(body.ends_with("\" Code=\"200\"/>"), "{body}");
    assert!(parse_ll(&body).is_err());
    let (s, body) = http_get(
        &format!("{base}/dev/sps/LoxAPPversion3"),
        Some((USER, PASSWORD)),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        body.ends_with(
            "<LL control=\"dev/sps/LoxAPPversion3\" value=\"2026-01-10 13:24:37\" Code=\"200\"/>"
        ),
        "{body}"
    );
    // jdev/ stays JSON
    let (_, body) = http_get(&format!("{base}/jdev/cfg/api"), None).await;
    assert_eq!(parse_ll(&body).unwrap().control, "dev/cfg/api");

    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("dev/sps/LoxAPPversion3").await;
    let (t, _) = c.answer().await;
    assert!(t.starts_with("<?xml"), "{t}");
    sim.shutdown().await;
}

/// `hasEventSlots` of `jdev/cfg/api`.
async fn has_event_slots(sim: &loxone_exporter::loxone::simulator::Simulator) -> bool {
    let (_, body) = http_get(&format!("http://{}/jdev/cfg/api", sim.http_addr()), None).await;
    let raw = parse_ll(&body).unwrap().value.as_str().unwrap().to_string();
    assert!(raw.contains("'hasEventSlots':"), "{raw}");
    raw.contains("'hasEventSlots':true")
}

/// Logs in and enables status updates; returns the client after the initial tables.
async fn subscribed(sim: &loxone_exporter::loxone::simulator::Simulator) -> RawClient {
    let mut c = RawClient::connect(sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("jdev/sps/enablebinstatusupdate").await;
    let (t, _) = c.answer().await;
    assert_eq!(parse_ll(&t).unwrap().code, 200);
    for _ in 0..4 {
        c.recv().await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_slots_are_limited_to_31_and_freed_on_close() {
    // default options: 31 slots, as doc §1.4 says
    let sim = start(|_| {}).await;
    assert!(has_event_slots(&sim).await);
    let mut clients = Vec::new();
    for _ in 0..31 {
        clients.push(subscribed(&sim).await);
    }
    assert!(!has_event_slots(&sim).await, "all 31 slots taken");
    // the 32nd may log in, but asking for status updates closes it with 4008
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    let r = c.command("jdev/sps/LoxAPPversion3").await;
    assert_eq!(r.code, 200, "other commands still work");
    c.send("jdev/sps/enablebinstatusupdate").await;
    match c.recv().await {
        Received::Closed(code, _) => assert_eq!(code, Some(4008)),
        other => panic!("expected close 4008, got {other:?}"),
    }
    // the 31 keep their updates
    let uuid = sim.control().value_state_uuids()[2];
    assert!(sim.control().set_value(uuid, 31.5));
    for c in clients.iter_mut().take(3) {
        assert!(
            matches!(c.recv().await, Received::Msg { header, .. } if header.kind == MessageKind::ValueStates)
        );
    }
    // one closes: its slot is free again
    let mut gone = clients.pop().unwrap();
    gone.ws.close(None).await.unwrap();
    let _ = gone.closed().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !has_event_slots(&sim).await {
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = subscribed(&sim).await;
    assert!(!has_event_slots(&sim).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_authwithtoken_and_basic_auth_count_towards_4003() {
    let sim = start(|o| o.max_failed_logins = 2).await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.keyexchange().await.code, 200);
    for _ in 0..2 {
        let r = c
            .enc_command(&format!("authwithtoken/{}/{USER}", "ab".repeat(32)))
            .await;
        assert_eq!(r.code, 401);
    }
    assert_eq!(sim.counters().auth_failures, 2);
    let mut blocked = RawClient::connect(&sim, true).await.unwrap();
    assert!(matches!(
        blocked.recv().await,
        Received::Closed(Some(4003), _)
    ));
    sim.shutdown().await;

    let sim = start(|o| o.max_failed_logins = 2).await;
    let url = format!("http://{}/data/LoxAPP3.json", sim.http_addr());
    assert_eq!(http_get(&url, Some((USER, "wrong"))).await.0, 401);
    // no credentials at all is no failed login (browsers ask first)
    assert_eq!(http_get(&url, None).await.0, 401);
    assert_eq!(http_get(&url, Some((USER, "wrong again"))).await.0, 401);
    let mut blocked = RawClient::connect(&sim, true).await.unwrap();
    assert!(matches!(
        blocked.recv().await,
        Received::Closed(Some(4003), _)
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_sends_events_for_unknown_uuids() {
    let sim = start(|_| {}).await;
    let mut c = subscribed(&sim).await;
    let unknown = "0badc0de-0000-1111-2222333344445555";
    let parsed = loxone_exporter::loxone::uuid::LoxUuid::parse(unknown).unwrap();
    assert!(!sim.control().value_state_uuids().contains(&parsed));
    let (s, _) = http_post(&format!(
        "http://{}/sim/value?uuid={unknown}&value=12.25",
        sim.http_addr()
    ))
    .await;
    assert_eq!(s, 200);
    let evs = c.value_table().await;
    assert_eq!((evs[0].uuid, evs[0].value), (parsed, 12.25));
    // not stored as a state of the structure
    assert!(!sim.control().value_state_uuids().contains(&parsed));
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_certificate_names_hosts_never_ips() {
    use std::sync::Arc;
    let sim = start(|o| o.tls_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = sim.tls_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            sim.tls_certificate_der().unwrap().to_vec(),
        ))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let handshake = |name: &'static str| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            connector.connect(name, tcp).await.map(|_| ())
        }
    };
    assert!(handshake("localhost").await.is_ok());
    assert!(handshake("127-0-0-1.504F94A0EF1E.dyndns.loxonecloud.com")
        .await
        .is_ok());
    // like a CloudDNS certificate, none for an address (doc §1.2, ioBroker #663)
    for ip in ["127.0.0.1", "::1"] {
        let e = handshake(ip).await.expect_err(ip);
        assert!(e.to_string().contains("not valid for name"), "{ip}: {e}");
    }
    sim.shutdown().await;
}
