//! The web endpoint with a `--web.config.file`: TLS, basic auth on every route, 401 without
//! leaks, mutual TLS, TLS version limits, certificate rotation without restart, broken
//! reloads keeping the last good state, and a real Prometheus scraping over TLS with basic
//! auth (issue 6 acceptance). Test PKI is generated with rcgen; the client is reqwest/rustls
//! trusting only the test CA.

mod common;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use loxone_exporter::tls_provider::reqwest_builder;
use loxone_exporter::web;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

use prometheus::Prometheus;

const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret-Pa55word";

/// The fixed exposition the test server serves as `/metrics`.
const EXPOSITION: &str = "\
# HELP loxone_control_value Current numeric value of a control state
# TYPE loxone_control_value gauge
loxone_control_value{category=\"Climate\",miniserver=\"home\",name=\"Thermostat\",room=\"Living room\",subcontrol=\"tempActual\",type=\"IRoomControllerV2\",uuid=\"1a2b3c4d-0001-0002-ffff0000aaaabbbb\"} 21.5
loxone_control_value{category=\"Energy\",miniserver=\"home\",name=\"Meter\",room=\"Utility\",subcontrol=\"actual\",type=\"Meter\",uuid=\"1a2b3c4d-0001-0003-ffff0000aaaabbbb\"} 1.25
loxone_control_value{category=\"Lights\",miniserver=\"home\",name=\"Ceiling\",room=\"Kitchen\",subcontrol=\"active\",type=\"Switch\",uuid=\"1a2b3c4d-0001-0004-ffff0000aaaabbbb\"} 1
# HELP loxone_exporter_connected WebSocket connection status per miniserver
# TYPE loxone_exporter_connected gauge
loxone_exporter_connected{miniserver=\"home\"} 1
# HELP loxone_exporter_up 1 if exporter process is running
# TYPE loxone_exporter_up gauge
loxone_exporter_up 1
";

// ---------------------------------------------------------------- test PKI

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, certificate DER, key PEM)
    fn leaf(&self, cn: &str, server: bool) -> (String, Vec<u8>, String) {
        let sans = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), cert.der().to_vec(), key.serialize_pem())
    }
}

// ---------------------------------------------------------------- test server

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "landing page" }))
        .route(
            "/metrics",
            get(|| async {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    EXPOSITION,
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    "{\"status\":\"healthy\"}",
                )
            }),
        )
        .route(
            "/seen-authorization",
            get(|headers: HeaderMap| async move {
                if headers.contains_key("authorization") {
                    "present"
                } else {
                    "absent"
                }
            }),
        )
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), web::WebError>>>,
}

impl Server {
    async fn start(web_config: Option<PathBuf>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(web::serve(listener, router(), web_config, shutdown.clone()));
        Server {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops within 5 s after shutdown");
        r.unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Writes the PKI and a web config into `dir`; returns the web config path.
struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    server_der: Vec<u8>,
}

impl Setup {
    fn new(extra_yaml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("loxone-exporter test CA");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        let (cert, der, key) = ca.leaf("server-1", true);
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        let yaml = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra_yaml}\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  {USER}: '{hash}'\n"
        );
        std::fs::write(dir.path().join("web.yml"), yaml).unwrap();
        Setup {
            dir,
            ca,
            server_der: der,
        }
    }

    fn web_yml(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }

    fn client(&self) -> reqwest::Client {
        client_for(&self.ca.pem(), None)
    }
}

/// A reqwest client with no TLS settings of its own.
fn plain_client() -> reqwest::Client {
    reqwest_builder().build().unwrap()
}

fn client_for(ca_pem: &str, identity_pem: Option<&str>) -> reqwest::Client {
    let mut b = reqwest_builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity_pem {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with peer certificate")
        .to_vec()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_guard_every_route() {
    let setup = Setup::new("");
    let server = Server::start(Some(setup.web_yml())).await;
    let client = setup.client();

    for path in ["/", "/metrics", "/healthz"] {
        let r = client
            .get(server.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(peer_cert(&r), setup.server_der);
        assert_eq!(r.headers()["x-frame-options"], "deny");

        let r = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without credentials"
        );
        assert_eq!(
            r.headers()["www-authenticate"],
            "Basic realm=\"loxone-exporter\""
        );
    }
    let body = client
        .get(server.url("/metrics"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, EXPOSITION);

    // Handlers never see the credentials.
    let seen = client
        .get(server.url("/seen-authorization"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(seen, "absent");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = plain_client()
        .get(format!("http://127.0.0.1:{}/metrics", server.addr.port()))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != StatusCode::OK);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_get_401_and_nothing_leaks() {
    let setup = Setup::new("");
    let server = Server::start(Some(setup.web_yml())).await;
    let client = setup.client();
    let wrong_password = "WrongGuess-913";
    let unknown_user = "mallory-unknown";
    let b64 = base64::engine::general_purpose::STANDARD;
    let cases: Vec<(String, String)> = vec![
        (
            "wrong password".into(),
            format!("Basic {}", b64.encode(format!("{USER}:{wrong_password}"))),
        ),
        (
            "unknown user".into(),
            format!("Basic {}", b64.encode(format!("{unknown_user}:{PASSWORD}"))),
        ),
        ("bearer".into(), format!("Bearer {wrong_password}")),
        ("garbage".into(), "Basic %%%".into()),
    ];
    for (what, auth) in cases {
        let r = client
            .get(server.url("/metrics"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let headers = format!("{:?}", r.headers());
        let body = r.text().await.unwrap();
        for secret in [wrong_password, unknown_user, PASSWORD, USER, auth.as_str()] {
            assert!(
                !body.contains(secret),
                "{what}: body leaks {secret:?}: {body}"
            );
            assert!(!headers.contains(secret), "{what}: headers leak {secret:?}");
        }
        assert!(!body.contains("loxone_"), "{what}: body leaks metrics");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_cost_10_is_paid_once_per_credential() {
    let setup = Setup::new("");
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    let yaml = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
         basic_auth_users:\n  {USER}: '{hash}'\n"
    );
    std::fs::write(setup.web_yml(), yaml).unwrap();
    let server = Server::start(Some(setup.web_yml())).await;
    let client = reqwest_builder()
        .tls_certs_only([reqwest::Certificate::from_pem(setup.ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let get = |pw: &'static str| {
        client
            .get(server.url("/healthz"))
            .basic_auth(USER, Some(pw))
            .send()
    };
    let t = Instant::now();
    assert_eq!(get(PASSWORD).await.unwrap().status(), StatusCode::OK);
    let first = t.elapsed();
    let mut cached = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(get(PASSWORD).await.unwrap().status(), StatusCode::OK);
        cached.push(t.elapsed());
    }
    // the median: a stall of the machine during a few requests does not move it
    cached.sort();
    let cached_median = cached[cached.len() / 2];
    let t = Instant::now();
    assert_eq!(
        get("nope").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let wrong = t.elapsed();
    eprintln!("bcrypt cost 10: first {first:?}, cached {cached:?}, wrong {wrong:?}");
    // A failed check is never cached: it costs a full bcrypt run, the cached ones do not
    // (a cache lost between requests would make every one of them as slow as `wrong`).
    assert!(
        cached_median * 2 < wrong,
        "cached {cached:?} should be far below an uncached check {wrong:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let setup =
        Setup::new("  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n");
    let server = Server::start(Some(setup.web_yml())).await;

    let no_cert = setup
        .client()
        .get(server.url("/metrics"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await;
    assert!(
        no_cert.is_err(),
        "request without client certificate must fail"
    );

    let (cert, _, key) = setup.ca.leaf("scraper", false);
    let with_cert = client_for(&setup.ca.pem(), Some(&format!("{cert}{key}")))
        .get(server.url("/metrics"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(with_cert.status(), StatusCode::OK);

    let other_ca = Ca::new("someone else");
    let (cert, _, key) = other_ca.leaf("intruder", false);
    let foreign = client_for(&setup.ca.pem(), Some(&format!("{cert}{key}")))
        .get(server.url("/metrics"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await;
    assert!(
        foreign.is_err(),
        "certificate from another CA must be refused"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_tls13_refuses_tls12_clients() {
    let setup = Setup::new("  min_version: TLS13\n");
    let server = Server::start(Some(setup.web_yml())).await;
    let ca = reqwest::Certificate::from_pem(setup.ca.pem().as_bytes()).unwrap();
    let tls12 = reqwest_builder()
        .tls_certs_only([ca.clone()])
        .tls_version_max(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(tls12
        .get(server.url("/metrics"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .is_err());
    let r = setup
        .client()
        .get(server.url("/metrics"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_restart_and_broken_files_keep_the_last_good_state() {
    let setup = Setup::new("");
    let server = Server::start(Some(setup.web_yml())).await;
    let client = setup.client();
    let fetch = || async {
        client
            .get(server.url("/metrics"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap()
    };
    let r = fetch().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_cert(&r), setup.server_der);

    // Rotate: new key and certificate in place (same file names, same config file).
    let (cert2, der2, key2) = setup.ca.leaf("server-2", true);
    assert_ne!(der2, setup.server_der);
    std::fs::write(setup.dir.path().join("server.key"), &key2).unwrap();
    std::fs::write(setup.dir.path().join("server.crt"), &cert2).unwrap();
    let r = fetch().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        peer_cert(&r),
        der2,
        "new connections see the new certificate"
    );

    // A broken certificate file: keep serving with the last good state.
    std::fs::write(setup.dir.path().join("server.crt"), "not a certificate").unwrap();
    let r = fetch().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_cert(&r), der2);

    // A broken config file: same.
    std::fs::write(setup.web_yml(), "tls_server_config: [unclosed").unwrap();
    let r = fetch().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_cert(&r), der2);

    // Fixed again, with a new password: the reload takes effect.
    std::fs::write(setup.dir.path().join("server.crt"), &cert2).unwrap();
    let hash = bcrypt::hash("rotated-password", 4).unwrap();
    std::fs::write(
        setup.web_yml(),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  {USER}: '{hash}'\n"
        ),
    )
    .unwrap();
    assert_eq!(fetch().await.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(server.url("/metrics"))
        .basic_auth(USER, Some("rotated-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        !r.headers().contains_key("x-frame-options"),
        "headers reloaded too"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_without_tls_and_plain_mode() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let path = dir.path().join("web.yml");
    std::fs::write(&path, format!("basic_auth_users:\n  {USER}: '{hash}'\n")).unwrap();
    let server = Server::start(Some(path)).await;
    let url = format!("http://127.0.0.1:{}/healthz", server.addr.port());
    let c = plain_client();
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let r = c
        .get(&url)
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.stop().await;

    // Without a web config: plain HTTP, no auth, graceful shutdown.
    let server = Server::start(None).await;
    let url = format!("http://127.0.0.1:{}/metrics", server.addr.port());
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), EXPOSITION);
    server.stop().await;
}

/// One request on an open connection; returns the status code.
async fn status_on(conn: &mut tokio::net::TcpStream, auth: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // headers and the short body arrive together; read until the blank line and body
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    let len = common::content_length(&head).unwrap_or(0);
    let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut have = got.len() - body_start;
    while have < len {
        have += conn.read(&mut buf).await.unwrap();
    }
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_is_locked_out_of_open_keep_alive_connections_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&path, format!("basic_auth_users:\n  {USER}: '{hash}'\n")).unwrap();
    let server = Server::start(Some(path.clone())).await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(status_on(&mut conn, &auth).await, 200);
    // the user is replaced by another one; the same connection asks again
    let other = bcrypt::hash("other-password", 4).unwrap();
    std::fs::write(
        &path,
        format!("basic_auth_users:\n  someone-else: '{other}'\n"),
    )
    .unwrap();
    assert_eq!(status_on(&mut conn, &auth).await, 401);
    server.stop().await;
}

/// `cp`, `>` and editors truncate the file before writing it; an empty file is a valid web
/// config (plain HTTP, nobody asked for a password). A reload must not turn a protection
/// off: neither basic auth on an open connection, nor TLS for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_weaker_web_config_never_turns_protection_off() {
    // basic auth: an empty file, then a file with no users, keep the users
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&path, format!("basic_auth_users:\n  {USER}: '{hash}'\n")).unwrap();
    let server = Server::start(Some(path.clone())).await;
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(status_on(&mut conn, "").await, 401);
    for weaker in ["", "basic_auth_users: {}\n"] {
        std::fs::write(&path, weaker).unwrap();
        assert_eq!(status_on(&mut conn, "").await, 401, "{weaker:?}");
        let mut fresh = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(status_on(&mut fresh, "").await, 401, "{weaker:?}");
    }
    server.stop().await;

    // TLS: an emptied file leaves new connections on TLS, plain HTTP gets nothing
    let setup = Setup::new("");
    let server = Server::start(Some(setup.web_yml())).await;
    let fetch = || async {
        setup
            .client()
            .get(server.url("/metrics"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap()
    };
    // loaded (the server reads the file in its task) before it is emptied
    assert_eq!(fetch().await.status(), StatusCode::OK);
    std::fs::write(setup.web_yml(), "").unwrap();
    let r = fetch().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_cert(&r), setup.server_der);
    let plain = format!("http://127.0.0.1:{}/metrics", server.addr.port());
    let answer = plain_client().get(&plain).send().await;
    assert!(
        answer
            .as_ref()
            .map_or(true, |r| r.status() != StatusCode::OK),
        "plain HTTP served: {answer:?}"
    );
    server.stop().await;
}

/// A client that connects and never starts its TLS handshake (10 s allowed) does not hold
/// up a shutdown: `stop` allows 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_does_not_delay_shutdown() {
    let setup = Setup::new("");
    let server = Server::start(Some(setup.web_yml())).await;
    let fetch = setup
        .client()
        .get(server.url("/healthz"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), StatusCode::OK);
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // accepted before the shutdown: the one accept loop takes connections in the order
    // they came, so once a later connection is served, the silent ones are the server's
    let after = setup
        .client()
        .get(server.url("/healthz"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    server.stop().await;
    drop(silent);
}

#[tokio::test(start_paused = true)]
async fn plain_http_cuts_off_a_client_that_never_finishes_its_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(None).await;
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 512];
    // the server answers (408 or nothing) and closes; paused time jumps to its timeout
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after 120 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_its_answers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(None).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let conn = socket.connect(server.addr).await.unwrap();
    let (mut rx, mut tx) = conn.into_split();
    // pipelined requests whose answers (about 4 MB) fill both sockets' buffers
    const REQUESTS: usize = 4000;
    let writer = tokio::spawn(async move {
        let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS);
        let _ = tx.write_all(&requests).await;
        tx
    });
    // nobody reads for a while: paused time jumps to the server's limit
    tokio::time::sleep(Duration::from_secs(40)).await;
    let mut answers = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answers.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answered = answers
        .windows(15)
        .filter(|w| w == b"HTTP/1.1 200 OK")
        .count();
    // without the limit all answers come once the client reads, then the connection stays
    assert!(
        read.is_ok(),
        "connection still open ({answered} answers read)"
    );
    assert!(
        answered < REQUESTS,
        "all {answered} answers came: never cut off"
    );
    drop(writer);
    server.stop().await;
}

#[tokio::test]
async fn serve_fails_early_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    std::fs::write(
        &path,
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: k\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = web::serve(listener, router(), Some(path), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.crt"), "{err}");
}

#[tokio::test]
async fn the_daemon_stops_when_its_server_cannot_serve() {
    // checked at start, then gone before the server read it again: the daemon must not
    // stay bound to its port without answering
    let dir = tempfile::tempdir().unwrap();
    let config = loxone_exporter::config::load_str(
        "miniservers:\n  - name: home\n    host: 127.0.0.1\n    port: 1\n    username: u\n    password: p\n",
        None,
        &|_: &str| None,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = loxone_exporter::app::RunOptions {
        web_config: Some(dir.path().join("web.yml")),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let ended = tokio::time::timeout(
        Duration::from_secs(5),
        loxone_exporter::app::run(config, listener, options, shutdown.clone()),
    )
    .await
    .expect("the daemon kept running without a server");
    let err = ended.unwrap_err();
    assert!(err.to_string().contains("web.yml"), "{err}");
    assert!(
        shutdown.is_cancelled(),
        "the Miniserver clients were not told to stop"
    );
}

// ---------------------------------------------------------------- real Prometheus

/// Start of a prometheus.yml that scrapes every second; scrape jobs follow.
const PROMETHEUS_GLOBAL: &str =
    "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n";

/// One prometheus.yml scrape job: HTTPS against `target`, trusting the test CA in
/// `ca_file`, basic auth as [`USER`] with `password`.
fn tls_scrape_job(name: &str, ca_file: &Path, password: &str, target: &str) -> String {
    format!(
        "- job_name: {name}\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  scheme: https\n  \
           tls_config: {{ca_file: '{ca}', server_name: localhost}}\n  \
           basic_auth: {{username: {USER}, password: '{password}'}}\n  \
           static_configs: [{{targets: ['{target}']}}]\n",
        ca = ca_file.display()
    )
}

/// (sorted labels without job/instance, value) for each sample line of an exposition.
fn exposition_series(text: &str) -> BTreeSet<(Vec<(String, String)>, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut out = vec![("__name__".to_string(), name.to_string())];
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap();
                out.push((k.to_string(), v.trim_end_matches('"').to_string()));
            }
            out.sort();
            (out, value.parse::<f64>().unwrap().to_string())
        })
        .collect()
}

fn stored_series(result: &serde_json::Value) -> BTreeSet<(Vec<(String, String)>, String)> {
    result["data"]["result"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "job" && *k != "instance")
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            labels.sort();
            let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            (labels, v.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_over_tls_with_basic_auth() {
    let Some(prom_bin) = common::component(common::PROMETHEUS) else {
        return;
    };
    let setup = Setup::new("");
    let server = Server::start(Some(setup.web_yml())).await;
    let target = format!("127.0.0.1:{}", server.addr.port());
    let ca_file = setup.dir.path().join("ca.crt");
    let prom_yml = setup.dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_yml,
        format!(
            "{PROMETHEUS_GLOBAL}{}{}",
            tls_scrape_job("lx", &ca_file, PASSWORD, &target),
            tls_scrape_job("lx_wrong_password", &ca_file, "not-the-password", &target)
        ),
    )
    .unwrap();
    if let Some(promtool) = common::component(common::PROMTOOL) {
        let out = Command::new(promtool)
            .arg("check")
            .arg("config")
            .arg(&prom_yml)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let prom = Prometheus::start(&prom_bin, &prom_yml);
    let http = plain_client();
    let expected = exposition_series(EXPOSITION);

    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let last = prom
            .query(&http, r#"{job="lx",__name__=~"loxone_.*"}"#)
            .await;
        let wrong_up = prom.query(&http, r#"up{job="lx_wrong_password"}"#).await;
        let wrong_down = wrong_up["data"]["result"][0]["value"][1] == "0";
        if stored_series(&last) == expected && wrong_down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not store the expected series in time.\nlast: {last}\nlog:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = prom.query(&http, r#"up{job="lx"}"#).await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // The wrong-password target is down with a 401, and nothing else is stored for it.
    let targets = prom.api(&http, "targets").await;
    let wrong = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["job"] == "lx_wrong_password")
        .expect("wrong-password target listed");
    assert_eq!(wrong["health"], "down");
    assert!(
        wrong["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("401"),
        "{wrong}"
    );
    let leaked = prom
        .query(&http, r#"{job="lx_wrong_password",__name__=~"loxone_.*"}"#)
        .await;
    assert!(stored_series(&leaked).is_empty(), "{leaked}");
    drop(prom);
    server.stop().await;
}

/// The real exporter binary (`--demo`, so real control series) behind `--web.config.file`:
/// a real Prometheus scrapes it over TLS with basic auth and stores exactly the control
/// series `/metrics` serves (label sets compared; values move with the simulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_exporter_binary_over_tls_with_basic_auth() {
    let Some(prom_bin) = common::component(common::PROMETHEUS) else {
        return;
    };
    let setup = Setup::new("");
    let port = common::free_port();
    let mut exporter = Command::new(common::exporter_bin())
        .args([
            "--demo",
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--web.config.file")
        .arg(setup.web_yml())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start exporter");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut exporter);
    let client = setup.client();
    let url = format!("https://localhost:{port}/metrics");
    let labels_only = |text: &str| -> BTreeSet<Vec<(String, String)>> {
        exposition_series(text)
            .into_iter()
            .map(|(l, _)| l)
            .filter(|l| {
                l.iter()
                    .any(|(k, v)| k == "__name__" && v == "loxone_control_value")
            })
            .map(|l| {
                // Prometheus stores label values unescaped and drops empty labels
                let mut l: Vec<(String, String)> = l
                    .into_iter()
                    .filter(|(k, v)| k != "__name__" && !v.is_empty())
                    .map(|(k, v)| (k, unescape_label(&v)))
                    .collect();
                l.push(("__name__".into(), "loxone_control_value".into()));
                l.sort();
                l
            })
            .collect()
    };
    // wait until the exporter serves its control values
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        if let Ok(r) = client
            .get(&url)
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
        {
            if r.status() == 200 {
                let set = labels_only(&r.text().await.unwrap_or_default());
                if set.len() > 500 {
                    break set;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "exporter never served control values"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unauth = client.get(&url).send().await.expect("request");
    assert_eq!(unauth.status(), 401);

    let ca_file = setup.dir.path().join("ca.crt");
    let prom_yml = setup.dir.path().join("prometheus-exporter.yml");
    std::fs::write(
        &prom_yml,
        format!(
            "{PROMETHEUS_GLOBAL}{}",
            tls_scrape_job("lx", &ca_file, PASSWORD, &format!("127.0.0.1:{port}"))
        ),
    )
    .unwrap();
    let prom = Prometheus::start(&prom_bin, &prom_yml);
    let http = plain_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = prom
            .query(&http, r#"{job="lx",__name__="loxone_control_value"}"#)
            .await;
        let stored: BTreeSet<Vec<(String, String)>> =
            stored_series(&stored).into_iter().map(|(l, _)| l).collect();
        if stored == served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus stored {} control series, /metrics serves {}; only stored: {:?}; only served: {:?}",
            stored.len(),
            served.len(),
            stored.difference(&served).next(),
            served.difference(&stored).next()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Undoes text-format label escaping (`\\`, `\"`, `\n`).
fn unescape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
