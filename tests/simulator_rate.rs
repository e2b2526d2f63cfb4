//! The simulator's value generator keeps its configured rate as one raw WebSocket client
//! sees it: one table per tick of about rate × tick events, never more than two ticks'
//! worth, and over a window neither more than the rate allows nor far less. The rate here
//! is a hundredth of what the generator can do, so this checks the pacing, not speed
//! (throughput is a benchmark's business).

#[path = "support/sim/client.rs"]
mod client;
mod common;

use std::time::{Duration, Instant};

use client::{start, RawClient, Received, PASSWORD, USER};
use loxone_exporter::loxone::events::value_events;
use loxone_exporter::loxone::header::MessageKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_keeps_its_configured_rate() {
    const RATE: f64 = 20_000.0;
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = RATE * TICK.as_secs_f64();
    let sim = start(|o| {
        o.rate = RATE;
        o.tick = TICK;
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
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut entries = 0u64;
    let mut tables = 0u64;
    let mut largest = 0u64;
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
                    assert!(uuids.contains(&e.uuid), "{e:?} is not a value state");
                    n += 1;
                }
                entries += n;
                tables += 1;
                largest = largest.max(n);
            }
            other => panic!("{other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{entries} events in {tables} tables in {secs:.2} s (rate {RATE}/s, {per_tick} a tick)"
    );
    assert!(tables >= 20, "one table per tick: {tables} in {secs:.2} s");
    assert!(
        largest as f64 <= 2.0 * per_tick,
        "a table holds at most two ticks' worth: {largest}"
    );
    // at most the rate plus one carried-over table; at least half of it (the generator
    // drops, rather than queues, what a stalled machine kept it from sending)
    assert!(
        entries as f64 <= RATE * secs + 2.0 * per_tick,
        "{entries} events in {secs:.2} s exceed {RATE}/s"
    );
    assert!(
        entries as f64 >= 0.5 * RATE * secs,
        "{entries} events in {secs:.2} s: far below {RATE}/s"
    );
    sim.shutdown().await;
}
