//! CPU time of a process from `/proc/<pid>/stat`, for the benchmarks that measure what a
//! process (the exporter, the collector) spends while they drive it.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// utime + stime of all threads of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the `(comm)`, which may contain spaces
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, asked once; 100 when that cannot be asked).
pub fn ticks_per_s() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Steal time of the whole machine, in clock ticks (`/proc/stat`): how long its virtual
/// CPUs were ready to run while the hypervisor ran something else. It tells a slow run
/// caused by other tenants of the host from one caused by the processes measured.
fn steal_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    // "cpu  user nice system idle iowait irq softirq steal ...": the first line sums all CPUs
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    line.split_whitespace().nth(7)?.parse().ok()
}

/// The host's steal time over a span that starts when the meter does.
pub struct StealMeter {
    ticks: Option<u64>,
    since: Instant,
}

impl StealMeter {
    pub fn start() -> Self {
        StealMeter {
            ticks: steal_ticks(),
            since: Instant::now(),
        }
    }

    /// Steal since the start, as a percentage of all CPUs' time over the span (None where
    /// `/proc/stat` does not tell).
    pub fn percent(&self) -> Option<f64> {
        let stolen = steal_ticks()?.saturating_sub(self.ticks?);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall_s = self.since.elapsed().as_secs_f64();
        Some(stolen as f64 / ticks_per_s() / (wall_s * cpus) * 100.0)
    }
}
