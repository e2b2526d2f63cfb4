//! The simulator's value generator keeps its configured rate as one raw WebSocket client
//! sees it: one table per tick of about rate × tick events, never more than two ticks'
//! worth, and over the whole run no more than the rate allows. This checks the pacing, not
//! speed: how much a loaded machine gets through is a benchmark's business (benches/,
//! scripts/bench.sh).

#[path = "support/sim/client.rs"]
mod client;
mod common;

use std::time::Instant;

use client::{start, RawClient, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_keeps_its_configured_rate() {
    const RATE: f64 = 20_000.0;
    const TICK: std::time::Duration = std::time::Duration::from_millis(10);
    // a count, not a time window: a stalled machine makes the run longer, not shorter
    const TABLES: u64 = 100;
    let per_tick = RATE * TICK.as_secs_f64();
    let cap = 2.0 * per_tick;
    let sim = start(|o| {
        o.rate = RATE;
        o.tick = TICK;
    })
    .await;
    let mut c = RawClient::connect(&sim, true).await.unwrap();
    assert_eq!(c.login(USER, PASSWORD).await.code, 200);
    // nothing is generated for this socket before the simulator reads this command
    let subscribed = Instant::now();
    c.send("jdev/sps/enablebinstatusupdate").await;
    c.answer().await;
    for _ in 0..4 {
        c.recv().await; // initial tables
    }
    let uuids: std::collections::HashSet<_> =
        sim.control().value_state_uuids().into_iter().collect();
    let mut entries = 0u64;
    let mut largest = 0u64;
    for _ in 0..TABLES {
        // each message has `client::WAIT` to come: a generator that stopped fails here
        let table = c.value_table().await;
        for e in &table {
            assert!(uuids.contains(&e.uuid), "{e:?} is not a value state");
        }
        let n = table.len() as u64;
        assert!(n > 0, "no empty tables");
        entries += n;
        largest = largest.max(n);
    }
    let secs = subscribed.elapsed().as_secs_f64();
    let mean = entries as f64 / TABLES as f64;
    println!(
        "{entries} events in {TABLES} tables in {secs:.2} s, {mean:.1} a table \
         (rate {RATE}/s, {per_tick} a tick)"
    );
    assert!(
        largest as f64 <= cap,
        "a table holds at most two ticks' worth: {largest}"
    );
    // Pacing, not throughput: each tick adds rate × the time since the last one, and ticks
    // come at most once a tick on average (a late tick delays the next), so a table holds at
    // least about one tick's worth on any machine. A stall makes tables bigger (up to the
    // cap; beyond it events are dropped, not queued); it makes fewer tables a second, which
    // is not checked. (The floor this replaces, half the rate over a 2 s window, failed
    // whenever CPU steal held the generator back.) 0.9 leaves room for rounding each table
    // down and for the tick before the first table being read a few ms late.
    assert!(
        mean >= 0.9 * per_tick,
        "a table holds about one tick's worth, not less: {mean:.1} < 0.9 × {per_tick}"
    );
    // At most the rate over the whole run, counted from before subscribing: the first two
    // tables for this socket hold at most `cap` each and leave at most `cap` over; every later
    // tick read its clock after this socket subscribed and adds rate × its time since the
    // previous one. A slow machine only makes `secs` longer.
    assert!(
        entries as f64 <= RATE * secs + 3.0 * cap,
        "{entries} events in {secs:.2} s exceed {RATE}/s"
    );
    sim.shutdown().await;
}
