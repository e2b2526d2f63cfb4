//! Wake-up pacing for the Miniserver client thread: under a flood of small event tables the
//! thread wakes once per window and handles everything that arrived meanwhile, instead of
//! waking once per table.
//!
//! Why: most of the CPU a small table costs is the wake-up itself (kernel `epoll_wait`
//! return, context switch, runtime bookkeeping: 35–90 µs on a small VM), not parsing or
//! storing its values. A Miniserver sending 1000 one-event tables a second kept the exporter
//! at about 3 % of a core unpaced, 1.35–2.1 % with a 5 ms window, 1.0–1.35 % with 10 ms and
//! 0.47–0.98 % with the 20 ms window now used. 20 ms of delay during a flood is far below any
//! scrape or export interval; the CPU saved matters on the small boxes the exporter runs on.
//!
//! How: the sessions count every WebSocket message they receive ([`count_message`]); the
//! client thread's runtime calls [`WakePacer::before_park`] with that count just before it
//! blocks for new events, and [`WakePacer::unparked`] when it resumes. The pacer measures the
//! message rate. A flood starts when a span of [`RATE_SPAN`] has at least [`FLOOD_MESSAGES`]
//! (1400 messages a second: 700 tables, each a header and a payload) and lasts until a span
//! of [`RELEASE_SPAN`] has fewer than [`FLOOD_ENDS_BELOW`] (half that rate). During a flood
//! the thread sleeps until one [`WINDOW`] after its last wake-up before blocking again. While
//! it sleeps the kernel buffers the sockets, and the next poll returns all of them at once.
//!
//! The end is measured over a longer span and at half the rate because senders stall: a
//! Miniserver or a VM busy for 10–30 ms. With the start's span and rate for the end too,
//! each such stall ended the flood, and the tables of the next 14 ms each woke the thread on
//! its own: at 1000 one-event tables a second, from 50 up to 250 wake-ups a second, and up
//! to twice the CPU, in the seconds with stalls.
//!
//! The test is the rate of messages, not how soon the thread wakes again: after a pause the
//! next wake-up always comes at once (whatever arrived meanwhile is waiting), so a test on
//! wake-up gaps would keep itself engaged by any traffic faster than one message per window,
//! such as tables 10 ms apart. Sparse traffic, however bursty, is never delayed; a flood is
//! recognised within [`FLOOD_MESSAGES`] messages and released at most one [`RELEASE_SPAN`]
//! after it ends.
//! The cost is latency during a flood only, bounded by [`WINDOW`] (plus the work of one
//! wake-up).
//!
//! The thread is dedicated to the Miniserver sessions, so sleeping it delays nothing else:
//! `/metrics`, OTLP and the rest run on the main runtime.

use std::cell::Cell;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// During a flood, the thread wakes at most once per window.
pub const WINDOW: Duration = Duration::from_millis(20);
/// The span over which the message rate is measured while the traffic is not a flood.
pub const RATE_SPAN: Duration = Duration::from_millis(20);
/// Messages per [`RATE_SPAN`] that start a flood (1400 a second).
pub const FLOOD_MESSAGES: u32 = 28;
/// The span over which the message rate is measured during a flood: long enough that a
/// sender stalling for tens of milliseconds does not end it.
pub const RELEASE_SPAN: Duration = Duration::from_millis(100);
/// Messages per [`RELEASE_SPAN`] below which a flood ends (700 a second, half the rate that
/// starts one).
pub const FLOOD_ENDS_BELOW: u32 = 70;

thread_local! {
    /// Messages received on this thread since its last park.
    static RECEIVED: Cell<u32> = const { Cell::new(0) };
}

/// Counts one received WebSocket message towards the flood test of the thread it runs on.
pub fn count_message() {
    RECEIVED.with(|c| c.set(c.get().saturating_add(1)));
}

/// The messages counted on this thread since the last call.
fn take_count() -> u32 {
    RECEIVED.with(|c| c.replace(0))
}

/// Decides, park by park, whether the client thread pauses before blocking. Shared by the
/// runtime's park and unpark hooks (one thread calls both, so the lock is never contended).
#[derive(Debug, Default)]
pub struct WakePacer {
    state: Mutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    /// When the thread last resumed.
    unparked_at: Option<Instant>,
    /// Start of the current rate span.
    span_start: Option<Instant>,
    /// Messages counted in the current span.
    span_messages: u32,
    /// The last complete span (or a span that reached the threshold early) was a flood.
    flooding: bool,
}

impl WakePacer {
    /// A pacer in the sparse state.
    pub fn new() -> Self {
        WakePacer::default()
    }

    /// Called just before the thread blocks, at `now`, with the messages received since the
    /// last park: how long to sleep first (`None` unless the traffic is a flood).
    pub fn before_park(&self, now: Instant, messages: u32) -> Option<Duration> {
        let mut s = self.state.lock();
        s.span_messages = s.span_messages.saturating_add(messages);
        let start = *s.span_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        // hysteresis: a flood lasts until the rate over a longer span falls below half the
        // rate that starts one, so that a sender stalling for a few milliseconds does not
        // end it (every table of the next span would then wake the thread on its own)
        let (span, threshold) = if s.flooding {
            (RELEASE_SPAN, FLOOD_ENDS_BELOW)
        } else {
            (RATE_SPAN, FLOOD_MESSAGES)
        };
        // rate over the span so far, never over less than a whole span: messages / span
        // >= threshold / span, in integers
        let rate_reached = u128::from(s.span_messages) * span.as_nanos()
            >= u128::from(threshold) * elapsed.max(span).as_nanos();
        if rate_reached || elapsed >= span {
            s.flooding = rate_reached;
            s.span_start = Some(now);
            s.span_messages = 0;
        }
        if !s.flooding {
            return None;
        }
        s.unparked_at
            .map(|woke| (woke + WINDOW).saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Called when the thread resumes, at `now`.
    pub fn unparked(&self, now: Instant) {
        self.state.lock().unparked_at = Some(now);
    }

    /// The hook for the runtime's `on_thread_park`: sleeps when [`Self::before_park`] says so.
    pub fn park_hook(&self) {
        if let Some(pause) = self.before_park(Instant::now(), take_count()) {
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

    /// What the client thread did with a sequence of message arrivals.
    struct Outcome {
        /// Wake-ups (each handles every message that arrived before it).
        wake_ups: usize,
        /// Pauses the pacer asked for.
        pauses: usize,
        /// Longest time from a message's arrival to the end of the wake-up that handled it.
        max_delay: Duration,
    }

    /// Plays the client thread against messages arriving at `arrivals` (offsets from the
    /// start, ascending): it blocks until a message is there, spends `busy` handling
    /// everything that has arrived, then asks the pacer before blocking again.
    fn play(p: &WakePacer, arrivals: &[Duration], busy: Duration) -> Outcome {
        let t0 = Instant::now();
        let mut now = t0;
        let mut next = 0;
        let mut out = Outcome {
            wake_ups: 0,
            pauses: 0,
            max_delay: Duration::ZERO,
        };
        while next < arrivals.len() {
            // block until the next message (at once if it is already there)
            now = now.max(t0 + arrivals[next]);
            p.unparked(now);
            out.wake_ups += 1;
            now += busy;
            let first = next;
            while next < arrivals.len() && t0 + arrivals[next] <= now {
                next += 1;
            }
            out.max_delay = out.max_delay.max(now - (t0 + arrivals[first]));
            if let Some(pause) = p.before_park(now, (next - first) as u32) {
                out.pauses += 1;
                now += pause;
            }
        }
        out
    }

    /// `count` messages, `gap` apart, starting at `from`.
    fn steady(from: Duration, gap: Duration, count: usize) -> Vec<Duration> {
        (0..count).map(|i| from + gap * i as u32).collect()
    }

    #[test]
    fn sparse_traffic_is_never_paused() {
        let p = WakePacer::new();
        // tables 10 ms apart, each a header and a payload 50 µs later
        let mut arrivals = Vec::new();
        for i in 0..200u32 {
            arrivals.push(MS * 10 * i);
            arrivals.push(MS * 10 * i + MS / 20);
        }
        let out = play(&p, &arrivals, MS / 20);
        assert_eq!(out.pauses, 0);
        // 600 messages a second, evenly spread (300 tables)
        let out = play(
            &p,
            &steady(3 * Duration::from_secs(1), MS * 5 / 3, 600),
            MS / 20,
        );
        assert_eq!(out.pauses, 0);
    }

    #[test]
    fn a_few_hundred_tables_a_second_at_random_times_are_not_a_flood() {
        let p = WakePacer::new();
        // about 300 tables a second (600 messages), exponential gaps from a fixed LCG
        let mut x = 12345u64;
        let mut t = Duration::ZERO;
        let mut arrivals = Vec::new();
        for _ in 0..6000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((x >> 11) as f64 / (1u64 << 53) as f64).max(1e-9);
            t += Duration::from_secs_f64(-u.ln() / 600.0);
            arrivals.push(t);
        }
        let out = play(&p, &arrivals, MS / 20);
        // 28 or more in a 20 ms span where 12 are expected: practically never
        assert_eq!(out.pauses, 0, "paused {} times", out.pauses);
        assert!(out.max_delay <= MS, "max delay {:?}", out.max_delay);
    }

    #[test]
    fn a_flood_is_paced_to_one_wake_up_per_window_and_released_when_it_ends() {
        let p = WakePacer::new();
        // one table (two messages) a millisecond for a second
        let flood: Vec<Duration> = (0..2000u32)
            .map(|i| MS * (i / 2) + MS / 20 * (i % 2))
            .collect();
        let out = play(&p, &flood, MS / 20);
        // unpaced until FLOOD_MESSAGES have arrived (14 ms), then one wake-up per window
        assert!(out.pauses > 0);
        assert!(
            out.wake_ups <= 14 * 2 + 1000 / WINDOW.as_millis() as usize,
            "{} wake-ups",
            out.wake_ups
        );
        assert!(out.wake_ups >= 1000 / WINDOW.as_millis() as usize - 2);
        // no message waits longer than a window plus one wake-up's work
        assert!(out.max_delay <= WINDOW + MS / 20, "{:?}", out.max_delay);

        // after the flood, sparse traffic is released within a release span
        let after = steady(Duration::from_secs(1) + RELEASE_SPAN + WINDOW, MS * 10, 50);
        let p2 = WakePacer::new();
        let mut all = flood.clone();
        all.extend(after.iter().copied());
        let out = play(&p2, &all, MS / 20);
        let flood_only = play(&WakePacer::new(), &flood, MS / 20);
        assert_eq!(
            out.wake_ups,
            flood_only.wake_ups + after.len(),
            "every table after the flood gets its own wake-up"
        );
        assert!(out.pauses <= flood_only.pauses + 2);
    }

    #[test]
    fn a_flood_whose_sender_stalls_now_and_then_stays_paced() {
        let p = WakePacer::new();
        // one table (two messages) a millisecond for two seconds, except that the sender
        // stalls for 25 ms every 100 ms (its tables of those 25 ms never come), as the
        // simulator did on a busy VM: a 20 ms span in a stall has no messages at all, but a
        // 100 ms span always has 150, more than the 70 that keep a flood going
        let arrivals: Vec<Duration> = (0..4000u32)
            .filter(|i| !(50..75).contains(&(i / 2 % 100)))
            .map(|i| MS * (i / 2) + MS / 20 * (i % 2))
            .collect();
        let out = play(&p, &arrivals, MS / 20);
        // unpaced until the flood is recognised (at most 14 ms of tables), then one wake-up
        // per window (ended at each stall, as it was before the release span, it took 374)
        let paced = 2000 / WINDOW.as_millis() as usize;
        assert!(
            out.wake_ups <= 14 * 2 + paced + 5,
            "{} wake-ups",
            out.wake_ups
        );
        assert!(out.max_delay <= WINDOW + MS / 20, "{:?}", out.max_delay);
    }

    #[test]
    fn traffic_falling_below_half_the_flood_rate_is_released() {
        let p = WakePacer::new();
        // a flood, then 300 tables a second (600 messages, 60 per release span: below the 70
        // that keep a flood going): released within one or two release spans of the change
        let mut arrivals = steady(Duration::ZERO, MS / 2, 1000);
        let after = steady(Duration::from_millis(500), MS * 5 / 3, 600);
        arrivals.extend(after.iter().copied());
        let out = play(&p, &arrivals, MS / 20);
        let flood_only = play(&WakePacer::new(), &arrivals[..1000], MS / 20);
        assert!(
            out.wake_ups >= flood_only.wake_ups + after.len() - 2 * 60,
            "{} wake-ups, {} for the flood alone",
            out.wake_ups,
            flood_only.wake_ups
        );
    }

    #[test]
    fn one_message_after_a_long_quiet_spell_is_not_paused() {
        let p = WakePacer::new();
        let flood = steady(Duration::ZERO, MS / 2, 200);
        assert!(play(&p, &flood, MS / 20).pauses > 0);
        let t = Instant::now();
        p.unparked(t + Duration::from_secs(5));
        assert_eq!(p.before_park(t + Duration::from_secs(5) + MS / 20, 1), None);
    }

    #[test]
    fn work_longer_than_a_window_is_not_paused() {
        let p = WakePacer::new();
        // a flood whose every wake-up takes longer than the window: nothing to wait for
        let out = play(&p, &steady(Duration::ZERO, MS / 10, 2000), 2 * WINDOW);
        assert_eq!(out.pauses, 0);
    }

    #[test]
    fn messages_are_counted_per_thread() {
        take_count();
        count_message();
        count_message();
        let other = std::thread::spawn(|| {
            count_message();
            take_count()
        });
        assert_eq!(other.join().ok(), Some(1));
        assert_eq!(take_count(), 2);
        assert_eq!(take_count(), 0);
    }
}
