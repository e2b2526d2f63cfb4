//! Test support for the OTLP integration tests: a registry filled by the test, rotel as a
//! receiver (killed on drop) with a parser for its `--debug-log-verbosity detailed` dump,
//! nginx in front of rotel (TLS, mTLS, bearer auth, fault toggles) with a per-test PKI, and
//! the Python capture sink and decoder from `docs/test-components.md` §7.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loxone_exporter::config::{OtlpCompression, OtlpConfig, OtlpProtocol};
use loxone_exporter::metrics::model::{
    Family, HistogramValue, LabelSet, MetricKind, Sample, Value,
};
use loxone_exporter::metrics::Collector;

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` (async-friendly: sleeps with tokio) until it returns `Some`, or panics with
/// `what` after `timeout`.
pub async fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Registry content

/// The test's registry content: a gauge with two rooms (one removable), a counter, a
/// histogram (cumulative model buckets) and an info family.
pub struct TestCollector {
    /// When false, the `bedroom` gauge series disappears.
    pub with_bedroom: AtomicBool,
}

impl TestCollector {
    /// All series present.
    pub fn new() -> Arc<Self> {
        Arc::new(TestCollector {
            with_bedroom: AtomicBool::new(true),
        })
    }
}

/// Expected cumulative histogram buckets of `test_duration_seconds{op="read"}`.
pub const HIST_BUCKETS: [(f64, u64); 3] = [(0.1, 2), (1.0, 5), (10.0, 7)];
/// Its count (2 observations above 10).
pub const HIST_COUNT: u64 = 9;
/// Its sum.
pub const HIST_SUM: f64 = 55.25;

impl Collector for TestCollector {
    fn collect(&self, out: &mut Vec<Family>) {
        let mut g = Family::new(
            "test_temperature_celsius",
            "Room temperature",
            MetricKind::Gauge,
        );
        g.samples.push(Sample::number(
            LabelSet::new([("room", "kitchen"), ("miniserver", "ms1")]),
            21.5,
        ));
        if self.with_bedroom.load(Ordering::SeqCst) {
            g.samples.push(Sample::number(
                LabelSet::new([("room", "bedroom"), ("miniserver", "ms1")]),
                18.0,
            ));
        }
        g.samples.push(Sample::number(
            LabelSet::new([("room", "cellar"), ("miniserver", "ms1")]),
            f64::NAN,
        ));
        out.push(g);
        let mut c = Family::new("test_events_total", "Events seen", MetricKind::Counter);
        c.samples
            .push(Sample::number(LabelSet::new([("kind", "door")]), 42.0));
        out.push(c);
        let mut h = Family::new(
            "test_duration_seconds",
            "Operation duration",
            MetricKind::Histogram,
        );
        h.samples.push(Sample {
            labels: LabelSet::new([("op", "read")]),
            value: Value::Histogram(Box::new(HistogramValue {
                buckets: HIST_BUCKETS.to_vec(),
                count: HIST_COUNT,
                sum: HIST_SUM,
            })),
        });
        out.push(h);
        let mut i = Family::new("test_build_info", "Build information", MetricKind::Info);
        i.samples.push(Sample::number(
            LabelSet::new([("version", "1.2.3"), ("revision", "abc")]),
            1.0,
        ));
        out.push(i);
    }
}

/// `n` gauge series in one family (for the splitting test).
pub struct BigCollector(pub usize);

impl Collector for BigCollector {
    fn collect(&self, out: &mut Vec<Family>) {
        let mut f = Family::new("test_big_value", "Many series", MetricKind::Gauge);
        f.samples.reserve(self.0);
        for i in 0..self.0 {
            f.samples.push(Sample::number(
                LabelSet::new([
                    ("miniserver", "ms1".to_string()),
                    ("room", format!("Room number {}", i % 100)),
                    ("control", format!("0f1e2d3c-0000-1111-{i:016x}")),
                    ("name", format!("Some control name {i}")),
                ]),
                i as f64,
            ));
        }
        out.push(f);
    }
}

/// A config for `endpoint`, enabled, with test-friendly timing.
pub fn otlp_config(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
    OtlpConfig {
        enabled: true,
        endpoint: endpoint.to_string(),
        protocol,
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
        compression: OtlpCompression::Gzip,
        service_name: "loxone-test".into(),
        resource_attributes: vec![("deployment.environment".into(), "itest".into())],
        ..OtlpConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// rotel

/// rotel as an OTLP receiver printing what arrives (metrics, or traces with
/// [`Rotel::start_dumping`]).
pub struct Rotel {
    /// OTLP/gRPC port.
    pub grpc_port: u16,
    /// OTLP/HTTP port.
    pub http_port: u16,
    log: PathBuf,
    _proc: Proc,
}

impl Rotel {
    /// Starts rotel on free ports, logging into `dir`, with the detailed dump.
    pub fn start(rotel: &Path, dir: &Path, free_port: impl Fn() -> u16) -> Rotel {
        Rotel::start_with(rotel, dir, free_port, "detailed")
    }

    /// Starts rotel with the given `--debug-log-verbosity` (`basic` logs one line per batch).
    pub fn start_with(
        rotel: &Path,
        dir: &Path,
        free_port: impl Fn() -> u16,
        verbosity: &str,
    ) -> Rotel {
        Rotel::start_dumping(rotel, dir, free_port, "metrics", verbosity)
    }

    /// Starts rotel printing what arrives of one signal (`--debug-log metrics|traces`) at
    /// the given verbosity.
    pub fn start_dumping(
        rotel: &Path,
        dir: &Path,
        free_port: impl Fn() -> u16,
        signal: &str,
        verbosity: &str,
    ) -> Rotel {
        let grpc_port = free_port();
        let http_port = free_port();
        let log = dir.join(format!("rotel-{grpc_port}.log"));
        let out = std::fs::File::create(&log).expect("rotel log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(rotel)
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc_port}"),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{http_port}"),
                "--debug-log",
                signal,
                "--debug-log-verbosity",
                verbosity,
                "--exporter",
                "blackhole",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn rotel");
        let proc = Proc(child);
        wait_port(grpc_port, "rotel gRPC");
        wait_port(http_port, "rotel HTTP");
        Rotel {
            grpc_port,
            http_port,
            log,
            _proc: proc,
        }
    }

    /// Everything rotel printed so far, without terminal colour codes.
    pub fn text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Sum of `metrics=N` (data points) over rotel's `basic` log lines.
    pub fn received_points(&self) -> u64 {
        self.text()
            .lines()
            .filter(|l| l.contains("Received metrics"))
            .filter_map(|l| {
                let i = l.find(" metrics=")?;
                let rest = &l[i + " metrics=".len()..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse::<u64>().ok()
            })
            .sum()
    }

    /// Everything rotel printed so far, parsed.
    pub fn dump(&self) -> Dump {
        parse_dump(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// rotel's printed dump.
#[derive(Debug, Default, Clone)]
pub struct Dump {
    /// One entry per received ResourceMetrics.
    pub resources: Vec<DumpResource>,
}

/// One ResourceMetrics.
#[derive(Debug, Default, Clone)]
pub struct DumpResource {
    /// Resource attributes (string values).
    pub attributes: BTreeMap<String, String>,
    /// `name version` of the instrumentation scope.
    pub scope: String,
    /// Metrics.
    pub metrics: Vec<DumpMetric>,
}

/// One metric.
#[derive(Debug, Default, Clone)]
pub struct DumpMetric {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Unit.
    pub unit: String,
    /// `Gauge`, `Sum`, `Histogram`.
    pub data_type: String,
    /// Sum monotonicity.
    pub monotonic: Option<bool>,
    /// Temporality text.
    pub temporality: Option<String>,
    /// Points.
    pub points: Vec<DumpPoint>,
}

/// One data point.
#[derive(Debug, Default, Clone)]
pub struct DumpPoint {
    /// Attributes (string values).
    pub attributes: BTreeMap<String, String>,
    /// Start time, ns.
    pub start: u64,
    /// Time, ns.
    pub time: u64,
    /// Number value as printed (`None` when the point had no value).
    pub value: Option<String>,
    /// Histogram count.
    pub count: Option<u64>,
    /// Histogram sum.
    pub sum: Option<f64>,
    /// Histogram bounds.
    pub bounds: Vec<f64>,
    /// Histogram per-bucket counts.
    pub buckets: Vec<u64>,
}

impl Dump {
    /// Every point of metric `name`, with the metric, in arrival order.
    pub fn points(&self, name: &str) -> Vec<(&DumpMetric, &DumpPoint)> {
        self.metrics(name)
            .into_iter()
            .flat_map(|m| m.points.iter().map(move |p| (m, p)))
            .collect()
    }

    /// Every metric block named `name`.
    pub fn metrics(&self, name: &str) -> Vec<&DumpMetric> {
        self.resources
            .iter()
            .flat_map(|r| &r.metrics)
            .filter(|m| m.name == name)
            .collect()
    }
}

#[derive(PartialEq)]
enum Mode {
    None,
    ResourceAttrs,
    Descriptor,
    PointAttrs,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn attr(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("-> ")?;
    let (k, v) = rest.split_once(": ")?;
    let v = v
        .strip_prefix("Str(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(v);
    Some((k.to_string(), v.to_string()))
}

/// Parses rotel's detailed metrics dump.
pub fn parse_dump(text: &str) -> Dump {
    let text = strip_ansi(text);
    let mut dump = Dump::default();
    let mut mode = Mode::None;
    for line in text.lines() {
        let t = line.trim_end();
        if t.starts_with("ResourceMetrics #") {
            dump.resources.push(DumpResource::default());
            mode = Mode::None;
            continue;
        }
        let Some(res) = dump.resources.last_mut() else {
            continue;
        };
        if t == "Resource attributes:" {
            mode = Mode::ResourceAttrs;
        } else if let Some(s) = t.strip_prefix("InstrumentationScope ") {
            res.scope = s.to_string();
            mode = Mode::None;
        } else if t.starts_with("Metric #") {
            res.metrics.push(DumpMetric::default());
            mode = Mode::None;
        } else if t == "Descriptor:" {
            mode = Mode::Descriptor;
        } else if t.starts_with("NumberDataPoints #") || t.starts_with("HistogramDataPoints #") {
            if let Some(m) = res.metrics.last_mut() {
                m.points.push(DumpPoint::default());
            }
            mode = Mode::None;
        } else if t == "Data point attributes:" {
            mode = Mode::PointAttrs;
        } else if t.trim_start().starts_with("-> ") {
            let Some((k, v)) = attr(t) else { continue };
            match mode {
                Mode::ResourceAttrs => {
                    res.attributes.insert(k, v);
                }
                Mode::Descriptor => {
                    if let Some(m) = res.metrics.last_mut() {
                        match k.as_str() {
                            "Name" => m.name = v,
                            "Description" => m.description = v,
                            "Unit" => m.unit = v,
                            "DataType" => m.data_type = v,
                            "IsMonotonic" => m.monotonic = Some(v == "true"),
                            "AggregationTemporality" => m.temporality = Some(v),
                            _ => {}
                        }
                    }
                }
                Mode::PointAttrs => {
                    if let Some(p) = res.metrics.last_mut().and_then(|m| m.points.last_mut()) {
                        p.attributes.insert(k, v);
                    }
                }
                Mode::None => {}
            }
        } else if let Some(p) = res.metrics.last_mut().and_then(|m| m.points.last_mut()) {
            // Descriptor lines like "-> Unit: " (empty value) end in ": " and were
            // handled above; the rest are point fields.
            if let Some(v) = t.strip_prefix("StartTimestamp: ") {
                p.start = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = t.strip_prefix("Timestamp: ") {
                p.time = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = t.strip_prefix("Value: ") {
                p.value = Some(v.trim().to_string());
            } else if let Some(v) = t.strip_prefix("Count: ") {
                p.count = v.trim().parse().ok();
            } else if let Some(v) = t.strip_prefix("Sum: ") {
                p.sum = v.trim().parse().ok();
            } else if t.starts_with("ExplicitBounds #") {
                if let Some((_, v)) = t.split_once(": ") {
                    p.bounds.push(v.trim().parse().unwrap_or(f64::NAN));
                }
            } else if t.starts_with("Buckets #") {
                if let Some((_, v)) = t.split_once("Count: ") {
                    p.buckets.push(v.trim().parse().unwrap_or(u64::MAX));
                }
            }
        }
    }
    dump
}

// ---------------------------------------------------------------------------------------
// PKI and nginx

/// Test PKI: CA, server cert for localhost/127.0.0.1, client cert for mTLS.
pub struct Pki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate.
    pub server_crt: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_crt: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generates the test PKI with openssl into `dir` (docs/test-components.md §4).
pub fn make_pki(openssl: &Path, dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).expect("pki dir");
    let o = |args: &[&str]| {
        run(Command::new(openssl).current_dir(dir).args(args));
    };
    o(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/CN=otlp-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("client.ext");
    for (name, cn) in [("server", "/CN=localhost"), ("client", "/CN=otlp-client")] {
        o(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            cn,
        ]);
        o(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    Pki {
        ca: dir.join("ca.crt"),
        server_crt: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_crt: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// Ports nginx listens on.
pub struct NginxPorts {
    /// TLS + bearer auth → rotel OTLP/HTTP.
    pub https_auth: u16,
    /// TLS + bearer auth → rotel OTLP/gRPC.
    pub grpcs_auth: u16,
    /// mTLS → rotel OTLP/HTTP.
    pub https_mtls: u16,
    /// mTLS → rotel OTLP/gRPC.
    pub grpcs_mtls: u16,
    /// Plaintext OTLP/HTTP fault injector.
    pub http_faults: u16,
    /// Plaintext (h2c) OTLP/gRPC fault injector.
    pub grpc_faults: u16,
}

/// nginx in front of rotel, with its own prefix dir and faults dir.
pub struct Nginx {
    /// Listening ports.
    pub ports: NginxPorts,
    /// Toggle files go here (`http503`, `http429`, `http500`, `delay`, `close`, `grpc14`, `grpc8`).
    pub faults: PathBuf,
    /// Access log.
    pub access_log: PathBuf,
    _proc: Proc,
}

/// The bearer token nginx expects.
pub const TOKEN: &str = "s3cret-t0ken-value";

impl Nginx {
    /// Writes the config (docs/test-components.md §4 with free ports and per-test dirs)
    /// and starts nginx in the foreground.
    pub fn start(
        nginx: &Path,
        echo_module: &Path,
        dir: &Path,
        pki: &Pki,
        rotel: &Rotel,
        free_port: impl Fn() -> u16,
    ) -> Nginx {
        let ports = NginxPorts {
            https_auth: free_port(),
            grpcs_auth: free_port(),
            https_mtls: free_port(),
            grpcs_mtls: free_port(),
            http_faults: free_port(),
            grpc_faults: free_port(),
        };
        let faults = dir.join("faults");
        for d in ["logs", "tmp", "faults"] {
            std::fs::create_dir_all(dir.join(d)).expect("nginx dirs");
        }
        // Should nginx ever run a worker as nobody, it must see the toggle files and write
        // temp bodies.
        chmod(dir, 0o755);
        chmod(&dir.join("faults"), 0o755);
        chmod(&dir.join("tmp"), 0o777);
        let (h, g) = (rotel.http_port, rotel.grpc_port);
        let f = faults.display();
        let conf = format!(
            r#"load_module {echo};
# one process: a master killed by the test's Drop would leave its worker running (ppid 1)
master_process off;
pid logs/nginx.pid;
error_log logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log logs/access.log;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fcgi;
    uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;
    ssl_certificate     {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;

    server {{
        listen 127.0.0.1:{https_auth} ssl http2;
        location / {{
            if ($http_authorization != "Bearer {TOKEN}") {{ return 401; }}
            proxy_pass http://127.0.0.1:{h};
            proxy_http_version 1.1;
        }}
    }}
    server {{
        listen 127.0.0.1:{grpcs_auth} ssl http2;
        location / {{
            if ($http_authorization != "Bearer {TOKEN}") {{ return 401; }}
            grpc_pass grpc://127.0.0.1:{g};
        }}
        error_page 401 = @grpc_unauthenticated;
        location @grpc_unauthenticated {{
            default_type application/grpc;
            add_header grpc-status 16 always;
            add_header grpc-message "missing or bad bearer token" always;
            add_header content-length 0 always;
            return 204;
        }}
    }}
    server {{
        listen 127.0.0.1:{https_mtls} ssl http2;
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{ proxy_pass http://127.0.0.1:{h}; }}
    }}
    server {{
        listen 127.0.0.1:{grpcs_mtls} ssl http2;
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{ grpc_pass grpc://127.0.0.1:{g}; }}
    }}
    server {{
        listen 127.0.0.1:{http_faults};
        location / {{
            if (-f {f}/http503) {{ return 503; }}
            if (-f {f}/http429) {{ return 429; }}
            if (-f {f}/http500) {{ return 500; }}
            if (-f {f}/close)   {{ return 444; }}
            if (-f {f}/delay)   {{ rewrite ^ /__delay last; }}
            proxy_pass http://127.0.0.1:{h};
        }}
        location = /__delay {{ internal; echo_sleep 3; echo_exec @upstream; }}
        location @upstream {{ proxy_pass http://127.0.0.1:{h}$request_uri; }}
        error_page 503 @e503;
        error_page 429 @e429;
        location @e503 {{ add_header Retry-After 2 always; return 503 "injected 503\n"; }}
        location @e429 {{ add_header Retry-After 1 always; return 429 "injected 429\n"; }}
    }}
    server {{
        listen 127.0.0.1:{grpc_faults} http2;
        location / {{
            if (-f {f}/close)   {{ return 444; }}
            if (-f {f}/grpc14)  {{ return 418; }}
            if (-f {f}/grpc8)   {{ return 420; }}
            grpc_pass grpc://127.0.0.1:{g};
        }}
        error_page 418 = @grpc14;
        error_page 420 = @grpc8;
        location @grpc14 {{ default_type application/grpc; add_header grpc-status 14 always; add_header grpc-message "injected unavailable" always; add_header content-length 0 always; return 204; }}
        location @grpc8  {{ default_type application/grpc; add_header grpc-status 8 always; add_header grpc-message "injected resource exhausted" always; add_header content-length 0 always; return 204; }}
    }}
}}
"#,
            echo = echo_module.display(),
            crt = pki.server_crt.display(),
            key = pki.server_key.display(),
            ca = pki.ca.display(),
            https_auth = ports.https_auth,
            grpcs_auth = ports.grpcs_auth,
            https_mtls = ports.https_mtls,
            grpcs_mtls = ports.grpcs_mtls,
            http_faults = ports.http_faults,
            grpc_faults = ports.grpc_faults,
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        run(Command::new(nginx)
            .args(["-t", "-p"])
            .arg(dir)
            .args(["-c", "nginx.conf"]));
        let log = std::fs::File::create(dir.join("logs/stdout.log")).expect("nginx stdout");
        let err = log.try_clone().expect("clone");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .args(["-c", "nginx.conf", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn nginx");
        let proc = Proc(child);
        for p in [
            ports.https_auth,
            ports.grpcs_auth,
            ports.https_mtls,
            ports.grpcs_mtls,
            ports.http_faults,
            ports.grpc_faults,
        ] {
            wait_port(p, "nginx");
        }
        Nginx {
            ports,
            faults,
            access_log: dir.join("logs/access.log"),
            _proc: proc,
        }
    }

    /// Turns exactly one fault on (or none with `None`).
    pub fn set_fault(&self, fault: Option<&str>) {
        for f in [
            "http503", "http429", "http500", "delay", "close", "grpc14", "grpc8",
        ] {
            let _ = std::fs::remove_file(self.faults.join(f));
        }
        if let Some(f) = fault {
            std::fs::write(self.faults.join(f), b"").expect("fault file");
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

// ---------------------------------------------------------------------------------------
// Python capture sink and decoder

/// Path of a support script.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/otlp")
        .join(name)
}

/// The capture sink: writes every request body and its headers into `out`.
pub struct CaptureSink {
    /// Port it listens on.
    pub port: u16,
    /// Directory with `NNNN.bin` / `NNNN.json`.
    pub out: PathBuf,
    _proc: Proc,
}

impl CaptureSink {
    /// Starts `capture_sink.py` with the venv Python.
    pub fn start(python: &Path, out: &Path, port: u16) -> CaptureSink {
        let child = Command::new(python)
            .arg(script("capture_sink.py"))
            .arg(port.to_string())
            .arg(out)
            .env_remove("FAIL_STATUS")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn capture sink");
        let proc = Proc(child);
        wait_port(port, "capture sink");
        CaptureSink {
            port,
            out: out.to_path_buf(),
            _proc: proc,
        }
    }

    /// Captured request numbers so far.
    pub fn captured(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "bin"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Decodes a captured body with the independent Python decoder; returns its JSON.
pub fn decode(python: &Path, body: &Path) -> serde_json::Value {
    let out = Command::new(python)
        .arg(script("decode_otlp.py"))
        .arg(body)
        .output()
        .expect("run decoder");
    assert!(
        out.status.success(),
        "decoder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("decoder JSON")
}
