//! Wake-up pacing for the Miniserver client thread: under a flood of small event tables the
//! thread wakes once every few milliseconds and handles everything that arrived meanwhile,
//! instead of waking once per table.
//!
//! Why: most of the CPU a small table costs is the wake-up itself (kernel `epoll_wait`
//! return, context switch, runtime bookkeeping: about 35 µs on a small VM), not parsing or
//! storing its values. A Miniserver sending 1000 one-event tables a second kept the exporter
//! at about 3 % of a core; paced, the same flood costs 1.7–2.1 %.
//!
//! How: the client thread's runtime calls [`WakePacer::before_park`] just before it blocks
//! for new events and [`WakePacer::unparked`] when it resumes. When the last
//! [`DENSE_AFTER`] parks each ended within [`SHORT_PARK`] (traffic that arrives steadily
//! faster than ~700 wake-ups a second), the thread sleeps until one [`WINDOW`] after its
//! last wake-up before blocking again. While it sleeps the kernel buffers the sockets, and the
//! next poll returns all of them at once. Sparse traffic, however bursty, is never delayed:
//! tables 10 ms apart, a header and its payload arriving in two reads, or a few hundred
//! tables a second at random times do not count as a flood. (With a looser test, half a
//! window and 3 parks, such traffic kept engaging the pacer and some events waited two
//! windows.) The cost is latency during a flood only, bounded by [`WINDOW`].
//!
//! The thread is dedicated to the Miniserver sessions, so sleeping it delays nothing else:
//! `/metrics`, OTLP and the rest run on the main runtime.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// During a flood, the thread wakes at most once per window.
pub const WINDOW: Duration = Duration::from_millis(5);
/// A park this short counts towards a flood.
pub const SHORT_PARK: Duration = Duration::from_micros(1500);
/// Consecutive short parks that make a flood.
pub const DENSE_AFTER: u32 = 8;

/// Decides, park by park, whether the client thread pauses before blocking. Shared by the
/// runtime's park and unpark hooks (one thread calls both, so the lock is never contended).
#[derive(Debug, Default)]
pub struct WakePacer {
    state: Mutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    /// When the thread last blocked (after any pause).
    parked_at: Option<Instant>,
    /// When it last resumed.
    unparked_at: Option<Instant>,
    /// Parks in a row shorter than [`SHORT_PARK`].
    short_parks: u32,
}

impl WakePacer {
    /// A pacer in the sparse state.
    pub fn new() -> Self {
        WakePacer::default()
    }

    /// Called just before the thread blocks, at `now`: how long to sleep first (`None`
    /// unless the traffic is a flood). Remembers when the thread will block.
    pub fn before_park(&self, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock();
        let pause = if s.short_parks >= DENSE_AFTER {
            s.unparked_at
                .map(|woke| (woke + WINDOW).saturating_duration_since(now))
                .filter(|d| !d.is_zero())
        } else {
            None
        };
        s.parked_at = Some(now + pause.unwrap_or_default());
        pause
    }

    /// Called when the thread resumes, at `now`.
    pub fn unparked(&self, now: Instant) {
        let mut s = self.state.lock();
        if let Some(parked) = s.parked_at.take() {
            if now.saturating_duration_since(parked) < SHORT_PARK {
                s.short_parks = s.short_parks.saturating_add(1);
            } else {
                s.short_parks = 0;
            }
        }
        s.unparked_at = Some(now);
    }

    /// The hook for the runtime's `on_thread_park`: sleeps when [`Self::before_park`] says so.
    pub fn park_hook(&self) {
        if let Some(pause) = self.before_park(Instant::now()) {
            std::thread::sleep(pause);
        }
    }

    /// The hook for the runtime's `on_thread_unpark`.
    pub fn unpark_hook(&self) {
        self.unparked(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives the pacer through parks that each last `idle` and wake-ups that each do
    /// `busy` of work, returning the pause asked for at every park.
    fn drive(
        p: &WakePacer,
        t: &mut Instant,
        rounds: usize,
        busy: Duration,
        idle: Duration,
    ) -> Vec<Option<Duration>> {
        (0..rounds)
            .map(|_| {
                *t += busy;
                let pause = p.before_park(*t);
                *t += pause.unwrap_or_default() + idle;
                p.unparked(*t);
                pause
            })
            .collect()
    }

    #[test]
    fn sparse_traffic_is_never_paused() {
        let p = WakePacer::new();
        let mut t = Instant::now();
        // tables 10 ms apart
        assert!(drive(&p, &mut t, 50, MS / 10, 10 * MS)
            .iter()
            .all(Option::is_none));
        // 300 tables a second: 3.3 ms apart
        assert!(drive(&p, &mut t, 50, MS / 10, 3300 * MS / 1000)
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn a_few_hundred_tables_a_second_at_random_times_are_not_a_flood() {
        let p = WakePacer::new();
        let mut t = Instant::now();
        // about 300 wake-ups a second, exponential gaps (mean 3.3 ms) from a fixed LCG
        let mut x = 12345u64;
        let mut paused = 0;
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((x >> 11) as f64 / (1u64 << 53) as f64).max(1e-9);
            let gap = Duration::from_secs_f64(-u.ln() * 0.0033);
            paused += drive(&p, &mut t, 1, MS / 20, gap).iter().flatten().count();
        }
        // P(8 gaps in a row under 1.5 ms) = (1 - e^(-1.5/3.3))^8 ≈ 0.0003 per park
        assert!(paused <= 10, "paused {paused} of 3000 parks");
    }

    #[test]
    fn a_header_and_payload_in_two_reads_are_not_a_flood() {
        let p = WakePacer::new();
        let mut t = Instant::now();
        for _ in 0..50 {
            // header, payload 50 µs later, then 10 ms of quiet
            assert_eq!(drive(&p, &mut t, 1, MS / 20, MS / 20), vec![None]);
            assert_eq!(drive(&p, &mut t, 1, MS / 20, 10 * MS), vec![None]);
        }
    }

    #[test]
    fn a_flood_is_paced_to_one_wake_up_per_window_and_released_when_it_ends() {
        let p = WakePacer::new();
        let mut t = Instant::now();
        // one table a millisecond: the first DENSE_AFTER parks are not paused
        let pauses = drive(&p, &mut t, DENSE_AFTER as usize, MS / 20, MS);
        assert!(pauses.iter().all(Option::is_none));
        // then every park waits until a window after the last wake-up; with the
        // backlog waiting, the park itself ends at once
        let start = t;
        let pauses = drive(&p, &mut t, 100, MS / 20, Duration::ZERO);
        for pause in &pauses {
            assert_eq!(*pause, Some(WINDOW - MS / 20));
        }
        let per_wake = (t - start) / 100;
        assert_eq!(per_wake, WINDOW, "one wake-up per window");
        // the flood ends: this pause finds nothing, the park lasts long, pacing stops
        let pauses = drive(&p, &mut t, 1, MS / 20, 100 * MS);
        assert!(pauses[0].is_some());
        assert!(drive(&p, &mut t, 10, MS / 20, MS * 3)
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn work_longer_than_a_window_is_not_paused() {
        let p = WakePacer::new();
        let mut t = Instant::now();
        drive(&p, &mut t, DENSE_AFTER as usize, MS / 20, MS / 20);
        // each wake-up now takes longer than the window itself: nothing to wait for
        assert!(drive(&p, &mut t, 10, 2 * WINDOW, Duration::ZERO)
            .iter()
            .all(Option::is_none));
    }
}
