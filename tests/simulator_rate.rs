//! Event throughput of the simulator's value generator as one raw WebSocket client sees it.
//! In a debug build it only checks that batching delivers well above the configured rate's
//! order of magnitude; run it with `--release -- --nocapture` for the benchmark number
//! (SIM_RATE_TARGET overrides the configured rate, default 2,000,000 events/s).

#[path = "support/sim/client.rs"]
mod client;
mod common;

use std::time::{Duration, Instant};

use client::{start, RawClient, Received, PASSWORD, USER};
use loxone_exporter::loxone::events::value_events;
use loxone_exporter::loxone::header::MessageKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_reaches_high_event_rates() {
    let target: f64 = std::env::var("SIM_RATE_TARGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000.0);
    let sim = start(|o| {
        o.rate = target;
        o.tick = Duration::from_millis(10);
    })
    .await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    c.send("jdev/sps/enablebinstatusupdate").await;
    c.answer().await;
    for _ in 0..4 {
        c.recv().await; // initial tables
    }
    let uuids: std::collections::HashSet<_> =
        sim.control().value_state_uuids().into_iter().collect();
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut entries = 0u64;
    let mut tables = 0u64;
    while started.elapsed() < window {
        match c.recv().await {
            Received::Msg {
                header,
                payload: Some(p),
                ..
            } => {
                assert_eq!(header.kind, MessageKind::ValueStates);
                let data = p.into_data();
                let mut n = 0u64;
                for e in value_events(&data).unwrap() {
                    // spot-check instead of hashing every entry
                    if n == 0 {
                        assert!(uuids.contains(&e.uuid));
                    }
                    n += 1;
                }
                entries += n;
                tables += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = entries as f64 / secs;
    println!(
        "simulator value events: {rate:.0}/s received by one client ({entries} in {secs:.2}s, {tables} tables, target {target:.0}/s, {} build)",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    assert!(tables > 10, "batches per tick expected");
    // debug builds are ~20x slower; the release run is the benchmark
    let floor: f64 = if cfg!(debug_assertions) {
        50_000.0
    } else {
        1_000_000.0
    };
    assert!(rate >= floor.min(target * 0.5), "only {rate:.0} events/s");
    sim.shutdown().await;
}
