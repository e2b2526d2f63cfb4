//! End-to-end benchmarks of the real release binary against the Miniserver simulator (issue 4
//! "Benchmarks"): event-to-`/metrics` latency at 10k events/s, RSS at 10k and 100k states,
//! CPU at 1k events/s. Not a timed test: `scripts/bench.sh` runs it (`cargo bench --bench
//! e2e`) and collects the table it writes to `$CARGO_TARGET_DIR/bench-e2e.md`.
//!
//! Set-up, and why it measures honestly:
//! - The exporter is the release binary (`CARGO_BIN_EXE_loxone-exporter`, built with the
//!   bench profile = release) in its own process with a default configuration; RSS and CPU are
//!   read from `/proc/<pid>` of that process only.
//! - The simulator runs in THIS process (on its own one-worker Tokio runtime). Its CPU and
//!   memory never count towards the exporter's, and the latency marker is set with
//!   [`SimControl::set_value`] directly: the timestamp is taken just before the simulator
//!   builds and broadcasts the event, with no HTTP control round trip in between that would
//!   have to be subtracted. The simulator's own path (broadcast, session task, WebSocket
//!   write) is therefore INCLUDED in the latency: an upper bound, never flattering.
//! - Latency: one value state (a counter/generic state the generator's walk cannot push back
//!   below the marker) gets a unique marker value; a plain-`TcpStream` HTTP/1.1 keep-alive
//!   client polls `/metrics` back to back until the marker appears. The sample is the time
//!   from the send to the FIRST BYTE of the first response that shows it (upper bound: the
//!   exporter renders the whole body before it sends a byte, so the value was on `/metrics`
//!   by then; the time to the response's end is reported beside it); its
//!   resolution is one poll cycle, reported beside it (the small real structure file keeps
//!   `/metrics` small, so a cycle is a fraction of a millisecond). The generator produces
//!   the 10k events/s background load over all states meanwhile (measured rate reported).
//! - Latency is measured twice: with every process placed by the scheduler, and with the
//!   exporter on CPU 0 and this process (simulator, load generator, poller) on CPU 1
//!   (`taskset`, 2 CPUs or more). On a 2-core machine the back-to-back poller and the 10k
//!   events/s generator otherwise take CPU time from the exporter that a real Miniserver,
//!   being other hardware, never takes; the sample stays the same upper bound.
//! - Beside each latency run a probe thread sleeps 1 ms at a time and records how late it
//!   wakes: the machine's own wake-up delay, which every sample contains several times over.
//!   Each run also reports the host's steal time (`/proc/stat`): time the virtual CPUs were
//!   ready but the hypervisor ran another tenant, which no process here can cause.
//! - The machine is shared: every scenario is repeated (`E2E_REPEAT`, default 3) and each run
//!   is reported with the 1-minute load average at that time.
//!
//! Arguments (after `--`) or `E2E_SCENARIOS`: scenario names `latency`, `rss`, `cpu`
//! (default: all).
//! Environment: `E2E_REPEAT` (3), `E2E_LAT_SAMPLES` (1000), `E2E_LAT_PLACEMENT` (`both`,
//! `shared` or `split`), `E2E_CPU_SECS` (30),
//! `E2E_RSS_STATES` (comma list, `10000,100000`), `E2E_OUT` (markdown output file).

use std::error::Error;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/proc_stat.rs"]
mod proc_stat;

use loxone_exporter::loxone::simulator::generator::{classify, ValueClass};
use loxone_exporter::loxone::simulator::{self, SimControl, Simulator, SimulatorOptions};
use loxone_exporter::loxone::structure::parse_structure;
use loxone_exporter::loxone::synth::{scale_structure, BASE_STRUCTURE};
use loxone_exporter::loxone::uuid::LoxUuid;
use loxone_exporter::loxone::wake_pacer;

type Res<T> = Result<T, Box<dyn Error>>;

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

// ---------------------------------------------------------------------------------------
// small helpers

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // nearest rank
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

/// `/proc/<pid>/status` field in kB.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// minimal HTTP/1.1 keep-alive client (no runtime, no allocation per poll beyond the body)

struct HttpClient {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// When the first byte of the last response arrived.
    first_byte_at: Option<Instant>,
}

impl HttpClient {
    fn new(addr: SocketAddr) -> Self {
        HttpClient {
            addr,
            stream: None,
            buf: Vec::with_capacity(1 << 20),
            first_byte_at: None,
        }
    }

    /// GET `path`; the body (status 200 only) is left in `self.buf[start..]`, returned as a
    /// range.
    fn get(&mut self, path: &str) -> Res<std::ops::Range<usize>> {
        match self.try_get(path) {
            Ok(r) => Ok(r),
            Err(_) => {
                // stale keep-alive connection: one retry on a fresh one
                self.stream = None;
                self.try_get(path)
            }
        }
    }

    fn try_get(&mut self, path: &str) -> Res<std::ops::Range<usize>> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().ok_or("no stream")?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: e2e-bench\r\n\r\n");
        stream.write_all(req.as_bytes())?;
        self.buf.clear();
        self.first_byte_at = None;
        let mut chunk = [0u8; 64 * 1024];
        let header_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.first_byte_at.get_or_insert_with(Instant::now);
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..header_end])?.to_ascii_lowercase();
        let status_ok = head.starts_with("http/1.1 200");
        let content_length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        let range = if let Some(len) = content_length {
            while self.buf.len() < header_end + len {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err("connection closed in body".into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            header_end..header_end + len
        } else if chunked {
            // de-chunk in place into a fresh body after the header
            let mut body = Vec::new();
            let mut pos = header_end;
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                        break pos + p;
                    }
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err("connection closed in chunk".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                };
                let size_txt = std::str::from_utf8(&self.buf[pos..line_end])?;
                let size =
                    usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)?;
                let data = line_end + 2;
                while self.buf.len() < data + size + 2 {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err("connection closed in chunk".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                body.extend_from_slice(&self.buf[data..data + size]);
                pos = data + size + 2;
                if size == 0 {
                    break;
                }
            }
            self.buf.truncate(header_end);
            self.buf.extend_from_slice(&body);
            header_end..self.buf.len()
        } else {
            return Err("response without length".into());
        };
        if head.contains("connection: close") {
            self.stream = None;
        }
        if !status_ok {
            return Err(format!("HTTP status {}", head.lines().next().unwrap_or("")).into());
        }
        Ok(range)
    }

    fn body(&self, r: &std::ops::Range<usize>) -> &[u8] {
        &self.buf[r.clone()]
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Finds the numeric value of the `loxone_control_value` line carrying both label pairs.
fn find_series_value(body: &[u8], uuid_label: &[u8], state_label: &[u8]) -> Option<f64> {
    let mut from = 0;
    while let Some(p) = memfind(&body[from..], uuid_label) {
        let at = from + p;
        let line_start = body[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line_end = body[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| at + i);
        let line = &body[line_start..line_end];
        if line.starts_with(b"loxone_control_value{") && memfind(line, state_label).is_some() {
            let close = line.iter().rposition(|&b| b == b'}')?;
            let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
            return rest.split_whitespace().next()?.parse().ok();
        }
        from = line_end;
    }
    None
}

/// Substring search; `str::find` uses a fast two-way/SIMD search, so go through it when the
/// body is UTF-8 (it always is for the text format).
fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    match (std::str::from_utf8(hay), std::str::from_utf8(needle)) {
        (Ok(h), Ok(n)) => h.find(n),
        _ => find(hay, needle),
    }
}

fn count_lines_with_prefix(body: &[u8], prefix: &str) -> usize {
    std::str::from_utf8(body)
        .map(|s| s.lines().filter(|l| l.starts_with(prefix)).count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// processes

/// The exporter binary: `E2E_EXPORTER_BIN` (scripts/bench.sh passes a copy of the binary
/// `cargo build --release` made, exactly what ships), else the one cargo built for this bench
/// (release profile, but with dev-dependency features such as tokio's `test-util` unified in).
fn exporter_bin() -> PathBuf {
    std::env::var_os("E2E_EXPORTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_loxone-exporter")))
}

/// The exporter process; killed on drop.
struct Exporter {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Exporter {
    fn spawn(sim: SocketAddr) -> Res<Exporter> {
        Exporter::spawn_on(sim, None)
    }

    /// Like [`Exporter::spawn`]; with `cpus`, the exporter and every thread it starts are
    /// confined to that CPU list (`taskset -c`, which execs the exporter: same pid).
    fn spawn_on(sim: SocketAddr, cpus: Option<&str>) -> Res<Exporter> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = format!(
            "miniservers:\n  - name: bench\n    host: \"{}\"\n    port: {}\n    username: \"{USER}\"\n    password: \"{PASSWORD}\"\nlisten_address: \"127.0.0.1\"\nlisten_port: {port}\n",
            sim.ip(),
            sim.port()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config)?;
        let mut cmd = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(exporter_bin());
                c
            }
            None => Command::new(exporter_bin()),
        };
        let child = cmd
            .arg("-c")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Exporter {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/metrics` shows the Miniserver connected and its value series stable
    /// (the initial tables arrived). Returns the number of `loxone_control_value` series.
    fn wait_ready(&mut self, http: &mut HttpClient, timeout: Duration) -> Res<usize> {
        let deadline = Instant::now() + timeout;
        let mut last = 0usize;
        let mut stable = 0;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("exporter exited: {status}").into());
            }
            if Instant::now() > deadline {
                return Err(format!("exporter not ready in {timeout:?} (series {last})").into());
            }
            if let Ok(r) = http.get("/metrics") {
                let body = http.body(&r);
                let connected = memfind(
                    body,
                    "loxone_exporter_connected{miniserver=\"bench\"} 1".as_bytes(),
                )
                .is_some();
                let n = count_lines_with_prefix(body, "loxone_control_value{");
                if connected && n > 0 && n == last {
                    stable += 1;
                    if stable >= 2 {
                        return Ok(n);
                    }
                } else {
                    stable = 0;
                }
                last = n;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Sim {
    sim: Option<Simulator>,
    rt: tokio::runtime::Runtime,
}

impl Sim {
    fn start(structure: Option<&Path>, rate: f64, tick: Duration) -> Res<Sim> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let opts = SimulatorOptions {
            structure: structure.map(Path::to_path_buf),
            user: USER.into(),
            password: PASSWORD.into(),
            rate,
            tick,
            // a 28 MB structure takes longer than the default to download on a loaded box
            idle_timeout: Duration::from_secs(3600),
            ..SimulatorOptions::default()
        };
        let sim = rt.block_on(simulator::start(opts))?;
        Ok(Sim { sim: Some(sim), rt })
    }

    fn addr(&self) -> SocketAddr {
        self.sim
            .as_ref()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |s| s.http_addr())
    }

    fn control(&self) -> Res<SimControl> {
        Ok(self.sim.as_ref().ok_or("simulator stopped")?.control())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            self.rt.block_on(sim.shutdown());
        }
    }
}

// ---------------------------------------------------------------------------------------
// structures

/// A structure file with at least `states` state references, scaled from the bundled real
/// file; returns its path and the state-reference count.
fn structure_with_states(dir: &Path, states: usize) -> Res<(PathBuf, usize)> {
    let base = parse_structure(BASE_STRUCTURE)?;
    let (base_controls, base_states) = (base.controls.len(), base.state_ref_count());
    let mut controls = (states * base_controls).div_ceil(base_states.max(1));
    loop {
        let bytes = scale_structure(BASE_STRUCTURE, controls, 7);
        let n = parse_structure(&bytes)?.state_ref_count();
        if n >= states {
            let path = dir.join(format!("structure-{states}.json"));
            std::fs::write(&path, &bytes)?;
            return Ok((path, n));
        }
        controls += (states - n)
            .div_ceil(base_states / base_controls.max(1))
            .max(1);
    }
}

/// A value state whose series can carry the latency marker: a top-level control's state
/// with one UUID owned by that state alone, served by the simulator as a value state, of a
/// class whose generator walk stays near the marker (counter: up by ≤ 0.011 a step;
/// generic: within ±50 of the last set value).
struct Marker {
    uuid: LoxUuid,
    uuid_label: Vec<u8>,
    state_label: Vec<u8>,
}

fn pick_marker(structure: &[u8], ctl: &SimControl) -> Res<Marker> {
    let s = parse_structure(structure)?;
    let owners = s.state_owners();
    let values: std::collections::HashSet<LoxUuid> = ctl.value_state_uuids().into_iter().collect();
    for c in &s.controls {
        for st in &c.states {
            let [uuid] = st.uuids.as_slice() else {
                continue;
            };
            let single = owners.get(uuid).is_some_and(|o| o.len() == 1);
            let class = classify(&c.control_type, &st.name);
            if single
                && values.contains(uuid)
                && matches!(class, ValueClass::Counter | ValueClass::Generic)
                && !c.uuid_action.contains('"')
                && !st.name.contains('"')
            {
                return Ok(Marker {
                    uuid: *uuid,
                    uuid_label: format!("uuid=\"{}\"", c.uuid_action).into_bytes(),
                    state_label: format!("subcontrol=\"{}\"", st.name).into_bytes(),
                });
            }
        }
    }
    Err("no value state usable as a latency marker".into())
}

// ---------------------------------------------------------------------------------------
// scenarios

#[derive(Default)]
struct Report {
    /// (scenario, run lines)
    rows: Vec<Row>,
    notes: Vec<String>,
}

struct Row {
    what: String,
    target: String,
    runs: Vec<f64>,
    unit: &'static str,
    detail: String,
}

impl Row {
    fn summary(&self) -> String {
        let med = median(&self.runs);
        let (lo, hi) = self
            .runs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let prec = if self.unit == "ms" { 3 } else { 2 };
        format!(
            "{med:.prec$} {u} (runs: {runs}; range {lo:.prec$}–{hi:.prec$})",
            u = self.unit,
            runs = self
                .runs
                .iter()
                .map(|x| format!("{x:.prec$}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

struct LatencyRun {
    p50: f64,
    p99: f64,
    max: f64,
    /// p99 up to the end of the response instead of its first byte.
    end_p99: f64,
    n: usize,
    timeouts: usize,
    lower_p50: f64,
    lower_p99: f64,
    cycle_p50_ms: f64,
    cycle_p99_ms: f64,
    /// The machine's own wake-up delay meanwhile (see [`WakeJitterProbe`]).
    jitter_p99_ms: f64,
    jitter_max_ms: f64,
    /// p99 of the samples during which the probe was never held up by [`STALL_MS`] or
    /// more, and how many samples had such a stall.
    calm_p99: f64,
    stalled: usize,
    rate: f64,
    load: String,
    /// Steal time over the run, % of all CPUs' time (NaN where `/proc/stat` lacks it).
    steal_pct: f64,
    series: usize,
}

impl LatencyRun {
    /// Everything but p50 and p99, for the log line and the report's details.
    fn fields(&self) -> String {
        format!(
            "n={} timeouts={} max={:.2} ms, p99 to the response's end {:.3} ms, lower bound p50/p99 {:.3}/{:.3} ms, poll cycle p50/p99 {:.3}/{:.3} ms, wake-up lateness p99/max {:.3}/{:.2} ms, p99 without the {} samples that overlap a stall of {STALL_MS} ms or more {:.3} ms, bg {:.0} ev/s, {} series, load {}, steal {:.1} %",
            self.n,
            self.timeouts,
            self.max,
            self.end_p99,
            self.lower_p50,
            self.lower_p99,
            self.cycle_p50_ms,
            self.cycle_p99_ms,
            self.jitter_p99_ms,
            self.jitter_max_ms,
            self.stalled,
            self.calm_p99,
            self.rate,
            self.series,
            self.load,
            self.steal_pct
        )
    }
}

/// Measures how late a sleeping thread wakes on this machine while the latency run goes
/// on: a thread asks for 1 ms sleeps and records how much longer each took. Every sample
/// of the latency run contains such wake-ups (the exporter's reader, its HTTP worker, the
/// poller), so a tail here is the machine's (a busy CPU, a descheduled virtual CPU), not
/// the exporter's. 1000 wake-ups a second cost the probe well under 1 % of a core.
struct WakeJitterProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When each sleep started, and how late it ended (ms).
    thread: std::thread::JoinHandle<Vec<(Instant, f64)>>,
}

/// A probe wake-up this late (ms) marks a stall: longer than any one piece of work of the
/// exporter, poller or simulator in these runs (a 1105-series `/metrics` takes about 1 ms),
/// so the thread waited for the machine (a descheduled virtual CPU) rather than behind one
/// of them.
const STALL_MS: f64 = 5.0;

/// What the probe saw: every lateness, sorted (ms), and the spans in which it was held up
/// by [`STALL_MS`] or more.
struct ProbeResult {
    late_ms: Vec<f64>,
    stalls: Vec<(Instant, Instant)>,
}

impl ProbeResult {
    /// Whether a stall overlaps the span from `from` to `to`.
    fn stalled_between(&self, from: Instant, to: Instant) -> bool {
        self.stalls.iter().any(|&(s, e)| s < to && e > from)
    }
}

impl WakeJitterProbe {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late_ms = Vec::with_capacity(60_000);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                late_ms.push((t, (t.elapsed().as_secs_f64() - 1e-3) * 1e3));
            }
            late_ms
        });
        WakeJitterProbe { stop, thread }
    }

    fn finish(self) -> ProbeResult {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sleeps = self.thread.join().unwrap_or_default();
        let stalls = sleeps
            .iter()
            .filter(|(_, late)| *late >= STALL_MS)
            .map(|&(t, late)| (t, t + Duration::from_secs_f64((1.0 + late) / 1e3)))
            .collect();
        let mut late_ms: Vec<f64> = sleeps.into_iter().map(|(_, late)| late).collect();
        late_ms.sort_by(f64::total_cmp);
        ProbeResult { late_ms, stalls }
    }
}

/// Where the latency run's processes run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// All of them anywhere on the machine (the scheduler decides).
    Shared,
    /// The exporter on CPU 0, this process (simulator, load generator, poller) on CPU 1.
    Split,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::Shared => "",
            Placement::Split => ", exporter on its own CPU",
        }
    }
}

/// CPUs the calling thread may run on (`Cpus_allowed_list` of /proc/thread-self).
fn allowed_cpus() -> Option<String> {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// Confines the calling thread (and the threads it starts later) to `cpus`.
fn pin_this_thread(cpus: &str) -> Res<()> {
    // the main thread's id is the process id; other threads are not touched
    let tid = std::fs::read_link("/proc/thread-self")?
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no thread id")?
        .to_string();
    let ok = Command::new("taskset")
        .args(["-p", "-c", cpus, &tid])
        .stdout(Stdio::null())
        .status()?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("taskset -p -c {cpus} {tid} failed").into())
    }
}

/// True when the split placement can be used: two CPUs or more and `taskset` present.
fn split_placement_possible() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn latency_run(samples: usize, tick: Duration, placement: Placement) -> Res<LatencyRun> {
    let restore = match placement {
        Placement::Shared => None,
        Placement::Split => {
            let before = allowed_cpus().ok_or("cannot read the CPU affinity")?;
            // before the simulator's runtime starts: its threads inherit the affinity
            pin_this_thread("1")?;
            Some(before)
        }
    };
    let run = latency_run_placed(samples, tick, placement);
    if let Some(before) = restore {
        pin_this_thread(&before)?;
    }
    run
}

fn latency_run_placed(samples: usize, tick: Duration, placement: Placement) -> Res<LatencyRun> {
    let sim = Sim::start(None, 10_000.0, tick)?;
    let ctl = sim.control()?;
    let marker = pick_marker(BASE_STRUCTURE, &ctl)?;
    let cpus = (placement == Placement::Split).then_some("0");
    let mut exporter = Exporter::spawn_on(sim.addr(), cpus)?;
    let mut http = HttpClient::new(exporter.addr);
    let series = exporter.wait_ready(&mut http, Duration::from_secs(60))?;
    // warm-up: connection pools, allocator, page cache
    std::thread::sleep(Duration::from_secs(1));
    let ev0 = ctl.counters().value_events_sent;
    let t_start = Instant::now();
    let steal = proc_stat::StealMeter::start();
    let probe = WakeJitterProbe::start();

    // each sample's span (marker set → first byte, or → giving up) and latency (ms)
    let mut spans: Vec<(Instant, Instant, f64)> = Vec::with_capacity(samples);
    let mut lat_end = Vec::with_capacity(samples);
    let mut lower = Vec::with_capacity(samples);
    let mut cycles = Vec::with_capacity(samples * 4);
    let mut timeouts = 0;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..samples {
        // 2–8 ms apart, jittered so samples do not lock to the generator's tick
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(2000 + rng % 6000));
        let mark = 1.0e6 * (i as f64 + 1.0);
        let t0 = Instant::now();
        if !ctl.set_value(marker.uuid, mark) {
            return Err("marker state rejected by the simulator".into());
        }
        let deadline = t0 + Duration::from_secs(1);
        let mut prev_start: Option<Instant> = None;
        loop {
            let c0 = Instant::now();
            let r = http.get("/metrics")?;
            let t1 = Instant::now();
            cycles.push((t1 - c0).as_secs_f64() * 1e3);
            let v = find_series_value(http.body(&r), &marker.uuid_label, &marker.state_label);
            // the generator may have stepped the marker since (never below mark − 50)
            if v.is_some_and(|v| v >= mark - 100.0) {
                // the exporter renders the whole body before it sends a byte: the value
                // was on /metrics when the first byte left
                let first_byte = http.first_byte_at.unwrap_or(t1);
                spans.push((t0, first_byte, (first_byte - t0).as_secs_f64() * 1e3));
                lat_end.push((t1 - t0).as_secs_f64() * 1e3);
                // the previous poll, started then, did not see it yet
                lower.push(prev_start.map_or(0.0, |p| (p - t0).as_secs_f64() * 1e3));
                break;
            }
            prev_start = Some(c0);
            if t1 > deadline {
                // a sample that never showed counts as the worst one, not as a missing one
                timeouts += 1;
                spans.push((t0, t1, f64::INFINITY));
                lat_end.push(f64::INFINITY);
                lower.push((c0 - t0).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    let secs = t_start.elapsed().as_secs_f64();
    let steal_pct = steal.percent().unwrap_or(f64::NAN);
    let probe = probe.finish();
    let mut lat: Vec<f64> = spans.iter().map(|&(_, _, ms)| ms).collect();
    let mut calm: Vec<f64> = spans
        .iter()
        .filter(|&&(from, to, _)| !probe.stalled_between(from, to))
        .map(|&(_, _, ms)| ms)
        .collect();
    calm.sort_by(f64::total_cmp);
    let jitter = probe.late_ms;
    let rate = (ctl.counters().value_events_sent - ev0) as f64 / secs;
    let load = load_avg();
    drop(exporter);
    drop(sim);
    lat.sort_by(f64::total_cmp);
    lat_end.sort_by(f64::total_cmp);
    lower.sort_by(f64::total_cmp);
    cycles.sort_by(f64::total_cmp);
    Ok(LatencyRun {
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        max: lat.last().copied().unwrap_or(f64::NAN),
        end_p99: percentile(&lat_end, 99.0),
        n: lat.len(),
        timeouts,
        lower_p50: percentile(&lower, 50.0),
        lower_p99: percentile(&lower, 99.0),
        cycle_p50_ms: percentile(&cycles, 50.0),
        cycle_p99_ms: percentile(&cycles, 99.0),
        jitter_p99_ms: percentile(&jitter, 99.0),
        jitter_max_ms: jitter.last().copied().unwrap_or(f64::NAN),
        calm_p99: percentile(&calm, 99.0),
        stalled: spans.len() - calm.len(),
        rate,
        load,
        steal_pct,
        series,
    })
}

fn latency(report: &mut Report, repeat: usize) -> Res<()> {
    let samples = env_num("E2E_LAT_SAMPLES", 1000.0) as usize;
    let which = std::env::var("E2E_LAT_PLACEMENT").unwrap_or_else(|_| "both".into());
    let mut placements = Vec::new();
    if which != "split" {
        placements.push(Placement::Shared);
    }
    if which == "shared" {
        // only the shared placement asked for
    } else if split_placement_possible() {
        placements.push(Placement::Split);
    } else {
        report.notes.push(
            "latency with the exporter on its own CPU: skipped (needs 2 CPUs and taskset)".into(),
        );
    }
    // tick 1 ms: 1000 ten-event tables a second, a flood the client paces (one wake-up per
    // `wake_pacer::WINDOW`): shows what pacing costs in latency
    for (placement, tick_ms) in placements
        .iter()
        .flat_map(|&p| [(p, 100u64), (p, 10), (p, 1)])
    {
        let place = placement.label();
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut calm_p99s = Vec::new();
        let mut steals = Vec::new();
        let mut detail = String::new();
        for run in 0..repeat {
            let r = latency_run(samples, Duration::from_millis(tick_ms), placement)?;
            let fields = r.fields();
            eprintln!(
                "latency tick={tick_ms}ms{place} run {run}: p50 {:.3} ms, p99 {:.3} ms, {fields}",
                r.p50, r.p99
            );
            let sep = if run > 0 { "; " } else { "" };
            let _ = write!(detail, "{sep}run {run}: {fields}");
            p50s.push(r.p50);
            p99s.push(r.p99);
            calm_p99s.push(r.calm_p99);
            steals.push(r.steal_pct);
            if run == 0 && placement == Placement::Split {
                report.notes.push(format!(
                    "latency (tick {tick_ms} ms{place}): as below, but the exporter (taskset -c 0) and this process — simulator, load generator and poller — (CPU 1) do not compete for a CPU, as when the Miniserver is other hardware; the sample is still marker sent → first byte of the first response showing it"
                ));
            } else if run == 0 && tick_ms == 1 {
                let window = wake_pacer::WINDOW.as_millis();
                report.notes.push(format!(
                    "latency (tick 1 ms): the same 10k events/s as 1000 tables a second, which the exporter treats as a flood and paces to one wake-up per {window} ms to save CPU: up to {window} ms of extra latency by design. The p50 is more than half a window because the samples keep step with the wake-ups: the next marker is set 2–8 ms after the last one showed, just after a wake-up, and waits for the rest of that window"
                ));
            } else if run == 0 {
                report.notes.push(format!(
                    "latency (tick {tick_ms} ms): bundled structure gen2-home-cz, {} value series on /metrics; each sample is an upper bound (marker set in the simulator → first byte of the first /metrics response showing it; the exporter renders the whole body before sending), resolution one poll cycle",
                    r.series
                ));
            }
        }
        report.rows.push(Row {
            what: format!("event→/metrics latency p50, 10k ev/s, tick {tick_ms} ms{place}"),
            target: "–".into(),
            runs: p50s,
            unit: "ms",
            detail: detail.clone(),
        });
        report.rows.push(Row {
            what: format!("event→/metrics latency p99, 10k ev/s, tick {tick_ms} ms{place}"),
            // the flood is paced on purpose (up to one pacing window of extra latency)
            target: if tick_ms == 1 {
                "– (a paced flood)".into()
            } else {
                "≤ 5 ms".into()
            },
            runs: p99s,
            unit: "ms",
            detail: detail.clone(),
        });
        report.rows.push(Row {
            what: format!(
                "same p99 without the samples that overlap a machine stall, tick {tick_ms} ms{place}"
            ),
            target: "–".into(),
            runs: calm_p99s,
            unit: "ms",
            detail,
        });
        report.rows.push(Row {
            what: format!("host steal time during these runs, tick {tick_ms} ms{place}"),
            target: "–".into(),
            runs: steals,
            unit: "%",
            detail: "of all CPUs' time: ready to run, but the hypervisor ran another tenant (/proc/stat)".into(),
        });
    }
    report.notes.push(format!(
        "latency without machine stalls: the p99 of the samples during which a thread of this process, sleeping 1 ms at a time, never woke {STALL_MS} ms or more late (longer than any single piece of work of the exporter, poller or simulator here); for reading the tail, not a substitute for the target row"
    ));
    Ok(())
}

fn rss(report: &mut Report, repeat: usize, dir: &Path) -> Res<()> {
    let sizes: Vec<usize> = std::env::var("E2E_RSS_STATES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for states in sizes {
        let (path, refs) = structure_with_states(dir, states)?;
        let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
        let mut rss = Vec::new();
        let mut anon = Vec::new();
        let mut detail = String::new();
        for run in 0..repeat {
            let sim = Sim::start(Some(&path), 100.0, Duration::from_millis(100))?;
            let started = Instant::now();
            let mut exporter = Exporter::spawn(sim.addr())?;
            let mut http = HttpClient::new(exporter.addr);
            let series = exporter.wait_ready(&mut http, Duration::from_secs(300))?;
            // process start → every series on /metrics: log-in, structure download and
            // parse, initial tables (upper bound: readiness is polled every 200 ms)
            let ready_s = started.elapsed().as_secs_f64();
            for _ in 0..3 {
                http.get("/metrics")?;
                std::thread::sleep(Duration::from_millis(300));
            }
            let pid = exporter.pid();
            let kb = proc_status_kb(pid, "VmRSS").ok_or("no VmRSS")?;
            let anon_kb = proc_status_kb(pid, "RssAnon").unwrap_or(0);
            let hwm = proc_status_kb(pid, "VmHWM").unwrap_or(0);
            let load = load_avg();
            eprintln!(
                "rss {states} states run {run}: VmRSS {:.1} MB (anon {:.1} MB, peak VmHWM {:.1} MB), {series} series, structure {file_mb:.1} MB, ready after {ready_s:.2} s, load {load}",
                kb as f64 / 1024.0,
                anon_kb as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
            let _ = write!(
                detail,
                "{}run {run}: anon {:.1} MB, VmHWM {:.1} MB, {series} series, ready after {ready_s:.1} s, load {load}",
                if run > 0 { "; " } else { "" },
                anon_kb as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
            rss.push(kb as f64 / 1024.0);
            anon.push(anon_kb as f64 / 1024.0);
        }
        report.notes.push(format!(
            "rss {states}: structure with {refs} state refs ({file_mb:.1} MB JSON), simulator at 100 ev/s, read after the initial tables and 3 scrapes"
        ));
        report.rows.push(Row {
            what: format!("exporter VmRSS, {states} states"),
            target: if states == 10_000 {
                "≤ 15 MB".into()
            } else {
                "–".into()
            },
            runs: rss,
            unit: "MB",
            detail,
        });
    }
    Ok(())
}

fn cpu(report: &mut Report, repeat: usize, dir: &Path) -> Res<()> {
    let secs = env_num("E2E_CPU_SECS", 30.0).max(20.0);
    let hz = proc_stat::ticks_per_s();
    let (path, _) = structure_with_states(dir, 10_000)?;
    for (label, rate, tick_ms) in [
        ("1k ev/s, tick 100 ms", 1000.0, 100u64),
        ("1k ev/s, tick 10 ms", 1000.0, 10),
        ("1k ev/s, tick 1 ms (1 event per message)", 1000.0, 1),
        ("idle (0 ev/s)", 0.0, 100),
    ] {
        let mut pct = Vec::new();
        let mut detail = String::new();
        for run in 0..repeat {
            let sim = Sim::start(Some(&path), rate, Duration::from_millis(tick_ms))?;
            let ctl = sim.control()?;
            let mut exporter = Exporter::spawn(sim.addr())?;
            let mut http = HttpClient::new(exporter.addr);
            exporter.wait_ready(&mut http, Duration::from_secs(120))?;
            http.get("/metrics")?;
            std::thread::sleep(Duration::from_secs(2));
            let pid = exporter.pid();
            let ev0 = ctl.counters().value_events_sent;
            let c0 = proc_stat::cpu_ticks(pid).ok_or("no /proc stat")?;
            let steal = proc_stat::StealMeter::start();
            let t0 = Instant::now();
            // a Prometheus scrape every 15 s, as deployed
            let mut next_scrape = t0;
            while t0.elapsed().as_secs_f64() < secs {
                if Instant::now() >= next_scrape {
                    http.get("/metrics")?;
                    next_scrape += Duration::from_secs(15);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let c1 = proc_stat::cpu_ticks(pid).ok_or("no /proc stat")?;
            let wall = t0.elapsed().as_secs_f64();
            let ev = (ctl.counters().value_events_sent - ev0) as f64 / wall;
            let p = (c1 - c0) as f64 / hz / wall * 100.0;
            let load = load_avg();
            // a sender held up by the host sends unevenly, which costs the client wake-ups
            let steal = steal.percent().unwrap_or(f64::NAN);
            eprintln!(
                "cpu {label} run {run}: {p:.3} % of a core over {wall:.1} s ({} ticks), measured {ev:.0} ev/s, load {load}, steal {steal:.1} %",
                c1 - c0
            );
            let _ = write!(
                detail,
                "{}run {run}: {} ticks/{wall:.0} s, {ev:.0} ev/s, load {load}, steal {steal:.1} %",
                if run > 0 { "; " } else { "" },
                c1 - c0
            );
            pct.push(p);
        }
        report.rows.push(Row {
            what: format!("exporter CPU, 10k states, {label}"),
            target: if rate == 1000.0 {
                "≤ 1 %".into()
            } else {
                "–".into()
            },
            runs: pct,
            unit: "%",
            detail,
        });
    }
    report.notes.push(format!(
        "cpu: utime+stime of the exporter from /proc/PID/stat ({hz} ticks/s) over {secs} s, one /metrics scrape every 15 s"
    ));
    Ok(())
}

/// `cargo test --all-targets` runs bench targets without `--bench`: then only the pure
/// helpers are checked (no processes, nothing timed).
fn self_check() -> Res<()> {
    let body = b"# TYPE loxone_control_value gauge\nloxone_control_value{name=\"a\",subcontrol=\"total\",uuid=\"u-1\"} 1.5\nloxone_control_value{name=\"b\",subcontrol=\"value\",uuid=\"u-1\"} 2e6\nloxone_exporter_up 1\n";
    let v = find_series_value(body, b"uuid=\"u-1\"", b"subcontrol=\"value\"");
    if v != Some(2e6) {
        return Err(format!("find_series_value: {v:?}").into());
    }
    if find_series_value(body, b"uuid=\"u-2\"", b"subcontrol=\"value\"").is_some() {
        return Err("find_series_value found a missing series".into());
    }
    let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
    if percentile(&sorted, 50.0) != 50.0 || percentile(&sorted, 99.0) != 99.0 {
        return Err("percentile".into());
    }
    if count_lines_with_prefix(body, "loxone_control_value{") != 2 {
        return Err("count_lines_with_prefix".into());
    }
    eprintln!(
        "e2e: helpers ok; run the benchmarks with `cargo bench --bench e2e` (scripts/bench.sh)"
    );
    Ok(())
}

fn main() -> Res<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return self_check();
    }
    // scenarios as arguments (`cargo bench --bench e2e -- rss`) or in E2E_SCENARIOS
    // (scripts/bench.sh runs every bench in one cargo invocation)
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Ok(list) = std::env::var("E2E_SCENARIOS") {
        args.extend(list.split_whitespace().map(str::to_string));
    }
    let all = args.is_empty();
    let want = |name: &str| all || args.iter().any(|a| a == name);
    let repeat = env_num("E2E_REPEAT", 3.0).max(1.0) as usize;
    if args.first().map(String::as_str) == Some("structure") {
        // `e2e structure N FILE`: write the structure used for N states (for profiling)
        let n: usize = args.get(1).ok_or("structure N FILE")?.parse()?;
        let file = PathBuf::from(args.get(2).ok_or("structure N FILE")?);
        let dir = tempfile::tempdir()?;
        let (path, refs) = structure_with_states(dir.path(), n)?;
        std::fs::copy(path, &file)?;
        eprintln!("{}: {refs} state refs", file.display());
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut report = Report::default();
    let load_start = load_avg();
    eprintln!("e2e: exporter binary {}", exporter_bin().display());
    if want("latency") {
        latency(&mut report, repeat)?;
    }
    if want("rss") {
        rss(&mut report, repeat, dir.path())?;
    }
    if want("cpu") {
        cpu(&mut report, repeat, dir.path())?;
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "| end-to-end benchmark | median (runs; range) | target | details |\n|---|---|---|---|"
    );
    for r in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.what,
            r.summary(),
            r.target,
            r.detail
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- machine: {} cores, load average (1 min) at start {load_start}, at end {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg()
    );
    let _ = writeln!(md, "- exporter binary: {}", exporter_bin().display());
    for n in &report.notes {
        let _ = writeln!(md, "- {n}");
    }
    println!("\n{md}");
    let out = std::env::var("E2E_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("bench-e2e.md")
        });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, md)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
