//! Spawns the real binary: endpoints answer, SIGTERM exits 0 within 2 s, a busy port exits 2
//! naming the address, a bad configuration exits 1, `check` and `--version` work.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        format!(
            "miniservers:\n  - name: house\n    host: 127.0.0.1\n    port: {}\n    username: admin\n    password: s3cret-pass\nlisten_address: 127.0.0.1\nlisten_port: {port}\nlog_level: info\nlog_format: json\n",
            common::free_port()
        ),
    )
    .unwrap();
    path
}

fn start(config: &Path, port: u16) -> Daemon {
    let child = Command::new(common::exporter_bin())
        .arg("-c")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exporter");
    let d = Daemon { child };
    wait_listening("127.0.0.1", port);
    d
}

/// Waits up to 10 s until `host:port` accepts connections.
fn wait_listening(host: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((host, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "not listening on {host} port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the exporter with `--web.listen-address listen` and waits until `host:port`
/// accepts connections.
fn start_listening(config: &Path, listen: &str, host: &str, port: u16) -> Daemon {
    let child = Command::new(common::exporter_bin())
        .arg("-c")
        .arg(config)
        .args(["--web.listen-address", listen])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn exporter");
    let d = Daemon { child };
    wait_listening(host, port);
    d
}

/// The binary with `--demo` on 127.0.0.1:`port`, output discarded; callers add flags or
/// variables and spawn it.
fn demo_command(port: u16) -> Command {
    let mut cmd = Command::new(common::exporter_bin());
    cmd.args([
        "--demo",
        "--web.listen-address",
        &format!("127.0.0.1:{port}"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// Minimal HTTP/1.1 request; returns (status, headers, body).
fn request(port: u16, method: &str, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
    out
}

/// Sends `SIG<name>` (`TERM` or `INT`) to `child`; returns the moment it was sent.
fn signal(child: &Child, name: &str) -> Instant {
    let pid = child.id();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let sig = match name {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            _ => panic!("signal {name}"),
        };
        let pid = libc::pid_t::try_from(pid).expect("pid");
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child's pid with a valid signal number
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        sent
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        // kill(1) sends the signal after its start-up, so the clock starts when it returns
        // (its start-up is not charged to the exporter)
        assert!(Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap()
            .success());
        Instant::now()
    }
}

/// Sends `SIG<name>` and waits for the exit, which must come within 2 s of the signal (a
/// promise of the daemon). The clock starts when the signal is sent and stops when the
/// exit is seen (polled every 10 ms); 30 s without an exit fail the test anyway.
fn signal_and_expect_exit_within_2_s(child: &mut Child, name: &str) -> std::process::ExitStatus {
    let signalled = signal(child, name);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let took = signalled.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "did not exit within 2 s of SIG{name}: {took:?}"
            );
            return s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "did not exit within 30 s of SIG{name}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn endpoints_answer_and_sigterm_exits_zero_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = write_config(dir.path(), port);
    let mut d = start(&cfg, port);

    let (st, head, body) = request(port, "GET", "/metrics", "");
    assert_eq!(st, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let text = String::from_utf8(body).unwrap();
    for want in [
        "loxone_exporter_up 1",
        "loxone_exporter_connected{miniserver=\"house\"} 0",
        "loxone_exporter_build_info{version=",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    assert!(!text.contains("s3cret-pass"));

    let (st, head, body) = request(port, "GET", "/metrics", "Accept-Encoding: gzip\r\n");
    assert_eq!(st, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert!(unzipped.contains("loxone_exporter_up 1"));

    let (st, head, body) = request(port, "HEAD", "/metrics", "");
    assert_eq!(st, 200);
    assert!(body.is_empty());
    // the Content-Length a GET would have (the self-metrics move a little between scrapes)
    let len = common::content_length(&head)
        .unwrap_or_else(|| panic!("no Content-Length on HEAD: {head}"));
    let get_len = text.len();
    assert!(
        len.abs_diff(get_len) < get_len / 10,
        "HEAD {len} vs GET {get_len}"
    );

    let (st, head, body) = request(port, "GET", "/healthz", "");
    assert_eq!(st, 503, "no Miniserver connected → unhealthy");
    assert!(head.contains("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["miniservers"][0]["name"], "house");
    assert_eq!(json["miniservers"][0]["connected"], false);
    assert!(!String::from_utf8_lossy(&body).contains("s3cret-pass"));

    let (st, head, body) = request(port, "GET", "/", "");
    assert_eq!(st, 200);
    assert!(head.contains("text/html"));
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains("href=\"/metrics\"")
            && html.contains("href=\"/healthz\"")
            && html.contains("house")
    );

    assert_eq!(request(port, "GET", "/nope", "").0, 404);
    assert_eq!(
        request(port, "POST", "/metrics", "Content-Length: 0\r\n").0,
        405
    );

    let status = signal_and_expect_exit_within_2_s(&mut d.child, "TERM");
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    d.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("s3cret-pass"), "password leaked into logs");
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(
            v["level"].is_string() && v["target"].is_string() && v["message"].is_string(),
            "{line}"
        );
    }
}

/// The port opens when it is bound, and whoever sees it open may signal at once: the
/// signal handlers must already be there (else the default action kills the process).
#[test]
fn a_signal_as_soon_as_the_port_opens_is_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    for (round, name) in ["TERM", "INT", "TERM", "INT", "TERM"]
        .into_iter()
        .enumerate()
    {
        let port = common::free_port();
        let cfg = write_config(dir.path(), port);
        let mut d = start(&cfg, port);
        let status = signal_and_expect_exit_within_2_s(&mut d.child, name);
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}, SIG{name}: {status:?}"
        );
    }
}

#[test]
fn sigint_also_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = write_config(dir.path(), port);
    let mut d = start(&cfg, port);
    // the port accepts connections as soon as it is bound, before the signal handlers are
    // installed; once a request is answered they are
    assert_eq!(request(port, "GET", "/healthz", "").0, 503);
    let status = signal_and_expect_exit_within_2_s(&mut d.child, "INT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn busy_port_exits_2_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let cfg = write_config(dir.path(), port);
    let out = Command::new(common::exporter_bin())
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("address 127.0.0.1:{port} is already in use")),
        "{err}"
    );
}

#[test]
fn bad_config_exits_1_with_configuration_error_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yml");
    std::fs::write(&path, "listen_port: 70000\nlog_level: loud\nminiservers:\n  - host: 10.0.0.1\n    username: u\n    password: p\n").unwrap();
    let out = Command::new(common::exporter_bin())
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("Configuration error:"))
        .collect();
    assert!(lines.len() >= 2, "every error reported at once: {err}");
    assert!(err.contains("70000") && err.contains("loud"), "{err}");
}

#[test]
fn file_flag_and_web_config_errors_are_reported_together_and_check_sees_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yml");
    std::fs::write(
        &path,
        "listen_port: 70000\nminiservers:\n  - host: 10.0.0.1\n    username: u\n    password: p\n",
    )
    .unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
    )
    .unwrap();
    // the daemon and `check` (flags before or after the subcommand) report the same
    for args in [
        vec!["--web.telemetry-path", "/", "--web.config.file"],
        vec!["check", "--web.telemetry-path", "/", "--web.config.file"],
    ] {
        let out = Command::new(common::exporter_bin())
            .arg("-c")
            .arg(&path)
            .args(&args)
            .arg(&web)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        for expected in [
            "Configuration error: listen_port: 70000",
            "Configuration error: --web.telemetry-path: '/' is already the landing page",
            "tls_server_config.cert_file: '",
            "nope.crt' cannot be read",
        ] {
            assert!(
                err.contains(expected),
                "{args:?}: missing {expected:?} in {err}"
            );
        }
    }
    // a valid file: flags after `check` are applied and shown
    let cfg = write_config(dir.path(), common::free_port());
    let out = Command::new(common::exporter_bin())
        .args(["check", "--log.level", "debug", "-c"])
        .arg(&cfg)
        .args(["--web.listen-address", "127.0.0.1:9700"])
        // the flag wins over the variable, and `check` says so
        .env("LOXONE_LISTEN_PORT", "9600")
        .env("LOXONE_LOG_LEVEL", "error")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("log_level: debug  # from --log.level\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listen_port: 9700  # from --web.listen-address\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("LOXONE_LISTEN_PORT"), "{stdout}");
}

#[test]
fn check_subcommand_validates_and_masks_secrets() {
    let example = common::repo_root().join("config.example.yml");
    let out = Command::new(common::exporter_bin())
        .arg("check")
        .arg("-c")
        .arg(&example)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("****"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), common::free_port());
    let out = Command::new(common::exporter_bin())
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-pass"));
}

#[test]
fn version_prints_build_metadata() {
    let out = Command::new(common::exporter_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(env!("CARGO_PKG_VERSION")) && s.contains("commit") && s.contains("rustc"),
        "{s}"
    );
}

#[test]
fn listen_address_flag_overrides_the_file_and_ipv6_works() {
    let dir = tempfile::tempdir().unwrap();
    let file_port = common::free_port();
    let cfg = write_config(dir.path(), file_port);
    let port = common::free_port();
    let mut d = start_listening(&cfg, &format!("127.0.0.1:{port}"), "127.0.0.1", port);
    assert!(
        TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "file port must not be used"
    );
    let _ = d.child.kill();
    // an IPv6 address, where the host has an IPv6 loopback (a property of the host, not
    // a component the test script could install)
    let Ok(probe) = TcpListener::bind(("::1", 0)) else {
        eprintln!("NOTE: no IPv6 loopback on this host; IPv6 part not run");
        return;
    };
    drop(probe);
    let port6 = common::free_port();
    let mut d = start_listening(&cfg, &format!("[::1]:{port6}"), "::1", port6);
    assert!(
        TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "file port must not be used"
    );
    let _ = d.child.kill();
}

/// `:PORT` is every interface: IPv4 and, where the host has it, IPv6 (as node_exporter).
#[test]
fn listen_address_port_only_serves_ipv4_and_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), common::free_port());
    let port = common::free_port();
    let mut d = start_listening(&cfg, &format!(":{port}"), "127.0.0.1", port);
    if TcpListener::bind(("::1", 0)).is_ok() {
        assert!(
            TcpStream::connect(("::1", port)).is_ok(),
            ":{port} must also listen on IPv6"
        );
    }
    let _ = d.child.kill();
}

/// `--demo`: the in-process simulator feeds the exporter; live values change (the demo
/// sends 200 events a second, so some change within a second; the test allows 5 s for a
/// loaded machine). Series are matched by name and labels: a series appearing or
/// vanishing between the scrapes is no change of value.
#[test]
fn demo_shows_changing_values() {
    let port = common::free_port();
    let _d = Daemon {
        child: demo_command(port).spawn().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape_values = || -> Option<BTreeMap<String, String>> {
        TcpStream::connect(("127.0.0.1", port)).ok()?;
        let (st, _, body) = request(port, "GET", "/metrics", "");
        (st == 200).then(|| control_values(&String::from_utf8_lossy(&body)))
    };
    let first = loop {
        if let Some(v) = scrape_values().filter(|v| v.len() > 500) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "demo never served control values"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let second = scrape_values().expect("second scrape");
        let common: Vec<_> = first
            .iter()
            .filter_map(|(k, a)| second.get(k).map(|b| (a, b)))
            .collect();
        if common.iter().any(|(a, b)| a != b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no value of the {} series in both scrapes ({} and {} series) changed within 5 s",
            common.len(),
            first.len(),
            second.len()
        );
    }
    let (st, _, body) = request(port, "GET", "/healthz", "");
    assert_eq!(st, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], "healthy");
}

/// The `loxone_control_value` samples of an exposition: series (name and label set, as
/// written) → value.
fn control_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("loxone_control_value{"))
        .map(|l| {
            let end = label_set_end(l).unwrap_or_else(|| panic!("unterminated labels: {l}"));
            let value = l[end..].split_whitespace().next().unwrap_or_default();
            (l[..end].to_string(), value.to_string())
        })
        .collect()
}

/// Byte index just past the `}` closing the label set of a sample line (label values may
/// hold spaces, `}` and escaped quotes).
fn label_set_end(line: &str) -> Option<usize> {
    let mut in_value = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_value => escaped = true,
            '"' => in_value = !in_value,
            '}' if !in_value => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// systemd `Type=notify`: READY=1 arrives only once the HTTP listener accepts connections.
#[test]
fn notify_socket_gets_ready_after_the_listener_is_bound() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let port = common::free_port();
    let cfg = write_config(dir.path(), port);
    let child = Command::new(common::exporter_bin())
        .arg("-c")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon { child };
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // the listener must already accept connections when READY=1 arrives
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 before the listener was bound"
    );
    Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let _ = d.child.wait();
}

/// Runs `healthcheck` until it succeeds (the demo's Miniserver connected), for at most 20 s.
fn wait_healthy(healthcheck: impl Fn() -> std::process::Output) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = healthcheck();
        if out.status.success() {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `healthcheck` next to a daemon with TLS and basic auth (`--web.config.file`): it pins the
/// certificate from the same file, speaks https, and needs the credentials in `--url`.
#[test]
fn healthcheck_follows_the_listen_flag_and_the_web_config() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("server.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let hash = bcrypt::hash("hc-pass", 4).unwrap();
    let tls_only = dir.path().join("tls.yml");
    std::fs::write(
        &tls_only,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    .unwrap();
    let with_auth = dir.path().join("auth.yml");
    std::fs::write(
        &with_auth,
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  hc: '{hash}'\n"),
    )
    .unwrap();
    let healthcheck = |web: &Path, port: u16, url: Option<String>| {
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(common::exporter_bin());
        cmd.args(["--web.listen-address", &listen, "--web.config.file"])
            .arg(web)
            .args(["healthcheck", "--timeout", "5"]);
        if let Some(url) = url {
            cmd.args(["--url", &url]);
        }
        cmd.output().unwrap()
    };
    for (web, needs_auth) in [(&tls_only, false), (&with_auth, true)] {
        let port = common::free_port();
        let _d = Daemon {
            child: demo_command(port)
                .arg("--web.config.file")
                .arg(web)
                .spawn()
                .unwrap(),
        };
        // healthy once the demo's Miniserver is connected
        let url = needs_auth.then(|| format!("https://hc:hc-pass@127.0.0.1:{port}/healthz"));
        let out = wait_healthy(|| healthcheck(web, port, url.clone()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("https://"), "{stdout}");
        assert!(!stdout.contains("hc-pass"), "password shown: {stdout}");
        if needs_auth {
            let out = healthcheck(web, port, None);
            assert_eq!(out.status.code(), Some(1));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("HTTP 401") && err.contains("--url"), "{err}");
        }
    }
}

/// `healthcheck` against a listener that requires client certificates (mTLS): without
/// `--client-cert` it fails and says which flags to pass; with a certificate from the
/// listener's client CA it is healthy; with one from another CA it fails.
#[test]
fn healthcheck_presents_a_client_certificate_to_a_listener_with_mtls() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let leaf = |issuer: &CertifiedIssuer<'static, KeyPair>, server: bool| {
        let sans = if server {
            vec!["localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let client_ca = ca("scrapers");
    let (server_cert, server_key) = leaf(&ca("server CA"), true);
    write("server.crt", &server_cert);
    write("server.key", &server_key);
    write("clients.crt", &client_ca.pem());
    let web = write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_ca_file: clients.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
    );
    let (cert, key) = leaf(&client_ca, false);
    let (good_cert, good_key) = (write("hc.crt", &cert), write("hc.key", &key));
    let (cert, key) = leaf(&ca("someone else"), false);
    let (bad_cert, bad_key) = (write("other.crt", &cert), write("other.key", &key));

    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _d = Daemon {
        child: demo_command(port)
            .arg("--web.config.file")
            .arg(&web)
            .spawn()
            .unwrap(),
    };
    let healthcheck = |identity: Option<(&Path, &Path)>| {
        let mut cmd = Command::new(common::exporter_bin());
        cmd.args(["--web.listen-address", &listen, "--web.config.file"])
            .arg(&web)
            .args(["healthcheck", "--timeout", "5"]);
        if let Some((cert, key)) = identity {
            cmd.arg("--client-cert")
                .arg(cert)
                .arg("--client-key")
                .arg(key);
        }
        cmd.output().unwrap()
    };
    let out = wait_healthy(|| healthcheck(Some((&good_cert, &good_key))));
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP 200"));
    let out = healthcheck(None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--client-cert"), "{err}");
    let out = healthcheck(Some((&bad_cert, &bad_key)));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a foreign client certificate passed"
    );
    // a key file that holds no key: a clear error naming the flag, no panic
    let out = healthcheck(Some((&good_cert, &good_cert)));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--client-key"), "{err}");
    // a key file whose PEM is broken: the message never quotes the file's content
    let broken = write(
        "broken.key",
        "-----BEGIN SECRETKEYMATERIAL\nMIIEvQ\n-----END PRIVATE KEY-----\n",
    );
    let out = healthcheck(Some((&good_cert, &broken)));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--client-key") && !err.contains("SECRET") && !err.contains("83,69"),
        "{err}"
    );
    // a client certificate for a plain-http listener: refused, not silently unused
    let out = Command::new(common::exporter_bin())
        .args([
            "healthcheck",
            "--url",
            "http://127.0.0.1:9/healthz",
            "--client-cert",
        ])
        .arg(&good_cert)
        .arg("--client-key")
        .arg(&good_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need an https:// listener"), "{err}");
    // one flag alone is a usage error
    let out = Command::new(common::exporter_bin())
        .args(["healthcheck", "--client-cert"])
        .arg(&good_cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `healthcheck` never prints the password of `--url`, whatever goes wrong: a listener that
/// accepts and never answers (the container case: a hung exporter), a bad port, a wrong
/// scheme, a refused connection.
#[test]
fn healthcheck_failures_never_print_the_url_password() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let closed_port = common::free_port();
    for url in [
        format!("http://hc:S3CRETPW@127.0.0.1:{silent_port}/healthz"),
        "http://hc:S3CRETPW@127.0.0.1:99999/healthz".to_string(),
        "ftp://hc:S3CRETPW@127.0.0.1/".to_string(),
        "http://hc:S3CRETPW@[::1/healthz".to_string(),
        format!("http://hc:S3CRETPW@127.0.0.1:{closed_port}/healthz"),
    ] {
        let out = Command::new(common::exporter_bin())
            .args(["healthcheck", "--timeout", "1", "--url", &url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("unhealthy"), "{url}: {said}");
        assert!(!said.contains("S3CRETPW"), "{url}: {said}");
    }
    drop(silent);
}

/// All a piped standard error says until the process closes it.
fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut err).unwrap();
    }
    err
}

/// Self-telemetry variables that cannot work (a header typed with ':' for '=', an endpoint
/// without a scheme) are warnings in `check` and in the daemon's log, as the OpenTelemetry
/// specification asks of bad variables: the daemon starts without them instead of exiting,
/// and no message shows the header's value or the endpoint's key.
#[test]
fn bad_trace_variables_are_warnings_without_secrets_and_the_daemon_starts() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = write_config(dir.path(), port);
    let bad = [
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "collector:4318/v1/traces?api-key=SECRETKEY",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "Authorization:Basic dXNlcjpTRUNSRVQ=",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
    ];
    let out = Command::new(common::exporter_bin())
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .envs(bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Warning: OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            && stdout.contains("Warning: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("SECRETKEY") && !stdout.contains("dXNl"),
        "{stdout}"
    );

    let mut child = Command::new(common::exporter_bin())
        .arg("-c")
        .arg(&cfg)
        .envs(bad)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited ({status}): {}", stderr_of(&mut child));
        }
        assert!(Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let err = stderr_of(&mut child);
    let _ = child.wait();
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            && err.contains("spans are not exported"),
        "{err}"
    );
    assert!(!err.contains("SECRETKEY") && !err.contains("dXNl"), "{err}");
}

/// The soft limit of open files is raised to the hard one at start (a soft 1024 is used up
/// by about a thousand idle connections from anyone who can reach the port).
#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
    // (soft, hard) of a /proc/PID/limits text; "unlimited" stays a word
    let open_files = |limits: &str| -> (String, String) {
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line");
        let mut values = line.split_whitespace().skip(3);
        (
            values.next().unwrap().to_string(),
            values.next().unwrap().to_string(),
        )
    };
    let (_, hard) = open_files(&std::fs::read_to_string("/proc/self/limits").unwrap());
    assert!(
        hard == "unlimited" || hard.parse::<u64>().unwrap() > 256,
        "this test needs a hard limit above 256, not {hard}"
    );
    let port = common::free_port();
    let script =
        format!("ulimit -S -n 256 && exec \"$0\" --demo --web.listen-address 127.0.0.1:{port}");
    let child = Command::new("sh")
        .args(["-c", &script])
        .arg(common::exporter_bin())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon { child };
    wait_listening("127.0.0.1", port);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    assert_eq!(open_files(&limits), (hard.clone(), hard));
}

/// The demo takes its OTLP settings from the environment (so it can feed a collector), and
/// nothing else: a real Miniserver's `LOXONE_HOST` there does not replace the simulator.
#[test]
fn demo_reads_the_otlp_variables_and_no_others() {
    let port = common::free_port();
    let collector = common::free_port();
    let _d = Daemon {
        child: demo_command(port)
            .env("LOXONE_OTLP_ENABLED", "true")
            .env(
                "LOXONE_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{collector}"),
            )
            .env("LOXONE_HOST", "192.0.2.1")
            .spawn()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (_, _, body) = request(port, "GET", "/healthz", "");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if json["miniservers"][0]["connected"] == true {
                // the OTLP export is on (its health metrics exist only then)
                let (_, _, metrics) = request(port, "GET", "/metrics", "");
                let text = String::from_utf8_lossy(&metrics);
                assert!(text.contains("loxone_otlp_export_status"), "OTLP is off");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the demo never connected to its simulator"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that pipelines `/metrics` requests and never reads keeps its
/// `--web.max-requests` slot once the kernel's socket buffer is full (the body then waits
/// in the handler, not in hyper's queue); when it leaves, the slot is free.
#[test]
fn a_client_that_never_reads_keeps_its_metrics_slot() {
    let port = common::free_port();
    let _d = Daemon {
        child: demo_command(port)
            .args(["--web.max-requests", "2"])
            .spawn()
            .unwrap(),
    };
    let status = || request(port, "GET", "/metrics", "").0;
    // the demo's page (about 200 KB) once its Miniserver is there
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(TcpStream::connect(("127.0.0.1", port)).is_ok() && {
        let (_, _, body) = request(port, "GET", "/metrics", "");
        body.len() > 150_000
    }) {
        assert!(Instant::now() < deadline, "the demo never served its page");
        std::thread::sleep(Duration::from_millis(50));
    }
    // two clients with a tiny receive buffer ask, again and again, and never read: the
    // kernel takes a few MB of answers (tcp_wmem), then the rest waits in the exporter
    let stalled: Vec<socket2::Socket> = (0..2)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            s.connect(&addr.into()).unwrap();
            let mut w: &socket2::Socket = &s;
            w.write_all(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(60))
                .unwrap();
            s
        })
        .collect();
    // both hold a slot: the next scrape is turned away (before: 200, the bodies sat in
    // hyper's queue with their slots given back)
    let deadline = Instant::now() + Duration::from_secs(20);
    while status() != 503 {
        assert!(
            Instant::now() < deadline,
            "stalled clients do not hold their slots"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status() != 200 {
        assert!(Instant::now() < deadline, "slots not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `simulate` refuses the daemon's flags instead of ignoring them (they are global for
/// `check` and `healthcheck`): a user who gave `--web.listen-address` expected that port.
#[test]
fn simulate_refuses_the_daemons_flags() {
    let out = Command::new(common::exporter_bin())
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--web.listen-address",
            "127.0.0.1:1",
            "-c",
            "/nonexistent.yml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--web.listen-address")
            && err.contains("-c/--config")
            && err.contains("--listen"),
        "{err}"
    );
    // and its help says so, under the heading of the daemon's flags
    let out = Command::new(common::exporter_bin())
        .args(["simulate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let heading = help
        .find("Exporter options (not for `simulate`)")
        .unwrap_or_else(|| panic!("{help}"));
    let flag = help.find("--web.listen-address").unwrap();
    assert!(flag > heading, "{help}");
}

#[test]
fn healthcheck_with_a_bad_flag_is_unhealthy_not_a_probe_of_the_default_port() {
    let out = Command::new(common::exporter_bin())
        .args([
            "healthcheck",
            "--timeout",
            "1",
            "--web.listen-address",
            "127.0.0.1:99999",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unhealthy: --web.listen-address") && err.contains("99999"),
        "{err}"
    );
}
