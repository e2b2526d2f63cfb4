//! `loxone-exporter healthcheck`: asks the running exporter's `/healthz` and turns the answer
//! into an exit code, so a container `HEALTHCHECK` needs neither curl nor a shell
//! (issue 6 "Container and compose"; original-exporter.md §8: the original's check failed on
//! 503, i.e. when no Miniserver is connected; so does this one).
//!
//! A minimal HTTP/1.1 GET over a Tokio `TcpStream`, or over TLS for `https://` (the check
//! runs next to the exporter, on loopback: the certificate is pinned to the one in
//! `--web.config.file` when given, otherwise any certificate is accepted, the handshake
//! signature still checked). `user:password@` in the URL becomes basic auth. The URL comes
//! from `--url` or from the configuration's `listen_address`/`listen_port` (and
//! `--web.listen-address`), with wildcard addresses mapped to loopback. A listener that
//! requires client certificates (mTLS) is checked with `--client-cert` / `--client-key`.
//! Does not parse config files itself: the caller loads [`Config`] and passes it in.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
pub use crate::loxone::connection::ClientIdentity;

/// Default time budget for the whole check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read; `/healthz` answers are far smaller.
const MAX_RESPONSE: usize = 64 * 1024;

/// Arguments of the `healthcheck` subcommand (`Healthcheck(HealthcheckArgs)` in the
/// subcommand enum). The configuration file comes from the global `-c/--config`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// Full URL to query instead (e.g. http://127.0.0.1:9504/healthz).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Client certificate (PEM, leaf first) to present when the listener requires one
    /// (client_auth_type in --web.config.file).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
}

impl HealthcheckArgs {
    /// Reads `--client-cert` / `--client-key` (`None` when not given). The message names the
    /// file and never quotes its content.
    pub fn client_identity(&self) -> Result<Option<ClientIdentity>, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) else {
            return Ok(None);
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--client-cert {}: {}", cert.display(), pem_problem(&e)))?;
        if chain.is_empty() {
            return Err(format!(
                "--client-cert {}: no PEM certificate in the file",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("--client-key {}: {}", key.display(), pem_problem(&e)))?;
        Ok(Some((chain, key)))
    }
}

/// What is wrong with a PEM file, without its content: rustls' own messages quote the
/// offending line as bytes, and in a key file that may be key material.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        _ => "not a valid PEM file".into(),
    }
}

impl HealthcheckArgs {
    /// The URL to query: `--url`, else derived from `config`, else the default address;
    /// `https` when the listener has TLS.
    pub fn resolve_url(&self, config: Option<&Config>, tls: bool) -> String {
        let url = match (&self.url, config) {
            (Some(u), _) => return u.clone(),
            (None, Some(c)) => healthz_url(c),
            (None, None) => format!(
                "http://127.0.0.1:{}/healthz",
                crate::config::DEFAULT_LISTEN_PORT
            ),
        };
        match url.strip_prefix("http://") {
            Some(rest) if tls => format!("https://{rest}"),
            _ => url,
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err("timeout must be between 0 and 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `/healthz` URL of the exporter described by `config`: `0.0.0.0` becomes `127.0.0.1`,
/// `::` becomes `[::1]` (or `127.0.0.1` on a host without IPv6, where the daemon falls back
/// to listening on IPv4 only), IPv6 literals are bracketed.
pub fn healthz_url(config: &Config) -> String {
    healthz_url_on(config, ipv6_loopback_usable())
}

/// Whether this host can use `::1`: without IPv6 (disabled, or a container without it) the
/// bind fails, as the daemon's bind of `::` did before it fell back to IPv4.
fn ipv6_loopback_usable() -> bool {
    std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok()
}

fn healthz_url_on(config: &Config, ipv6: bool) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let host = match config.listen_address {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() && ipv6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        a => a,
    };
    match host {
        IpAddr::V4(a) => format!("http://{a}:{}/healthz", config.listen_port),
        IpAddr::V6(a) => format!("http://[{a}]:{}/healthz", config.listen_port),
    }
}

/// Parsed `http[s]://[user:password@]host[:port]/path`.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `https://`.
    tls: bool,
    /// `Basic` credentials (base64 of `user:password`) from the URL.
    basic_auth: Option<String>,
    /// Host for connecting (no brackets).
    host: String,
    /// Host header value (with brackets and port).
    authority: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    use base64::Engine as _;
    // messages show the URL without its password
    let shown = crate::secret::redact_url(url);
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(format!(
                "only http:// and https:// URLs are supported: {shown}"
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    let (basic_auth, authority) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let decoded = percent_encoding::percent_decode_str(userinfo).decode_utf8_lossy();
            (
                Some(base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes())),
                host,
            )
        }
        None => (None, authority),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {shown}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {shown}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("bad authority in {shown}")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("bad port in {shown}"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {shown}"));
    }
    Ok(Target {
        tls,
        basic_auth,
        host,
        authority: authority.to_string(),
        port,
        path: path.to_string(),
    })
}

/// Queries `url` and returns the process exit code: 0 for HTTP 200, 1 otherwise. Prints one
/// line saying why (stdout when healthy, stderr otherwise).
pub async fn run(url: String, timeout: Duration) -> i32 {
    run_pinned(url, timeout, None, None).await
}

/// [`run`], accepting over `https://` only the certificate with SHA-256 `pin` (any when
/// `None`) and presenting `identity` when the listener asks for a client certificate.
pub async fn run_pinned(
    url: String,
    timeout: Duration,
    pin: Option<[u8; 32]>,
    identity: Option<ClientIdentity>,
) -> i32 {
    match tokio::time::timeout(timeout, check(&url, pin, identity)).await {
        Ok(Ok(line)) => {
            println!("healthy: {line}");
            0
        }
        Ok(Err(reason)) => {
            eprintln!("unhealthy: {reason}");
            1
        }
        Err(_) => {
            let shown = crate::secret::redact_url(&url);
            eprintln!("unhealthy: no answer from {shown} within {timeout:?}");
            1
        }
    }
}

async fn check(
    url: &str,
    pin: Option<[u8; 32]>,
    identity: Option<ClientIdentity>,
) -> Result<String, String> {
    let target = parse_url(url)?;
    // the URL as shown: never with its password
    let shown = crate::secret::redact_url(url);
    let url = shown.as_str();
    if !target.tls && identity.is_some() {
        // a certificate the check cannot present: say so rather than pass without it
        return Err(format!(
            "--client-cert and --client-key need an https:// listener; {url} is plain http"
        ));
    }
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    if !target.tls {
        return exchange(stream, &target, url).await;
    }
    let with_identity = identity.is_some();
    // TLS 1.2 refuses a missing client certificate in the handshake, TLS 1.3 on the first
    // read: either way, say which flags are missing
    let hint = |e: String| match with_identity {
        false if e.contains("CertificateRequired") || e.contains("HandshakeFailure") => format!(
            "{e}: the listener requires a client certificate; pass --client-cert and --client-key"
        ),
        _ => e,
    };
    let config = crate::loxone::connection::pinned_client_config_with_identity(pin, identity)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|_| format!("bad host in {url}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, stream)
        .await
        .map_err(|e| hint(format!("TLS handshake with {url}: {e}")))?;
    exchange(tls, &target, url).await.map_err(hint)
}

/// Sends the GET on `stream` and judges the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    url: &str,
) -> Result<String, String> {
    let auth = target
        .basic_auth
        .as_ref()
        .map(|b| format!("Authorization: Basic {b}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loxone-exporter-healthcheck\r\n\
         Accept: application/json\r\n{auth}Connection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending to {url}: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // a TLS peer that closes without close_notify: what arrived counts
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(format!("reading from {url}: {e}")),
        };
        if n == 0 {
            break;
        }
        let take = n.min(MAX_RESPONSE.saturating_sub(buf.len()));
        buf.extend_from_slice(chunk.get(..take).unwrap_or_default());
        if buf.len() >= MAX_RESPONSE {
            break;
        }
    }
    interpret(&buf, url)
}

/// Turns a raw HTTP response into the verdict line.
fn interpret(response: &[u8], url: &str) -> Result<String, String> {
    let text = String::from_utf8_lossy(response);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("no HTTP response from {url}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("no HTTP response from {url}"));
    }
    let code: u16 = code
        .parse()
        .map_err(|_| format!("malformed status line from {url}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let status = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_string));
    let detail = match status {
        Some(s) => format!("HTTP {code}, status {s}"),
        None => format!("HTTP {code}"),
    };
    if code == 200 {
        Ok(format!("{detail} from {url}"))
    } else if code == 401 {
        Err(format!(
            "{detail} from {url}: basic auth is on (--web.config.file); pass --url http(s)://user:password@host:port/healthz"
        ))
    } else {
        Err(format!("{detail} from {url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MiniserverConfig;

    #[test]
    fn url_from_config() {
        let mut c = Config::with_miniserver(MiniserverConfig::new("a", "h", "u", "p"));
        assert_eq!(healthz_url_on(&c, true), "http://127.0.0.1:9504/healthz");
        c.listen_address = "::".parse().unwrap();
        c.listen_port = 9100;
        assert_eq!(healthz_url_on(&c, true), "http://[::1]:9100/healthz");
        // no IPv6 on the host: the daemon listens on IPv4 only
        assert_eq!(healthz_url_on(&c, false), "http://127.0.0.1:9100/healthz");
        c.listen_address = "192.168.1.5".parse().unwrap();
        assert_eq!(healthz_url_on(&c, false), "http://192.168.1.5:9100/healthz");
        c.listen_address = "fe80::1".parse().unwrap();
        assert_eq!(healthz_url_on(&c, true), "http://[fe80::1]:9100/healthz");
    }

    #[test]
    fn parse_urls() {
        let t = parse_url("http://[::1]:9100/healthz").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 9100, "/healthz")
        );
        assert_eq!(t.authority, "[::1]:9100");
        let t = parse_url("http://localhost").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 80, "/healthz")
        );
        let t = parse_url("https://u%40x:p%3Aw@127.0.0.1/healthz").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 443));
        assert_eq!(t.authority, "127.0.0.1");
        // "u@x:p:w"
        assert_eq!(t.basic_auth.as_deref(), Some("dUB4OnA6dw=="));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:x/").is_err());
        assert!(parse_url("http://[::1/").is_err());
    }

    #[test]
    fn interpret_responses() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"degraded\"}";
        assert_eq!(
            interpret(ok, "u").unwrap(),
            "HTTP 200, status degraded from u"
        );
        let bad = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"unhealthy\"}";
        assert_eq!(
            interpret(bad, "u").unwrap_err(),
            "HTTP 503, status unhealthy from u"
        );
        assert!(interpret(b"", "u").is_err());
        assert!(interpret(b"SSH-2.0-OpenSSH\r\n", "u").is_err());
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[arg(short = 'c', long = "config", global = true)]
        config: Option<String>,
        #[command(subcommand)]
        command: TestCommand,
    }
    #[derive(clap::Subcommand)]
    enum TestCommand {
        Healthcheck(HealthcheckArgs),
    }

    #[test]
    fn args_embed_next_to_a_global_config_flag() {
        use clap::{CommandFactory, Parser};
        TestCli::command().debug_assert();
        let cli = TestCli::try_parse_from([
            "x",
            "healthcheck",
            "-c",
            "c.yml",
            "--url",
            "http://h:1/healthz",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some("c.yml"));
        let TestCommand::Healthcheck(args) = cli.command;
        assert_eq!(args.url.as_deref(), Some("http://h:1/healthz"));
        assert_eq!(args.timeout, Duration::from_millis(2500));
        assert!(TestCli::try_parse_from(["x", "healthcheck", "--timeout", "0"]).is_err());
        let cli = TestCli::try_parse_from(["x", "healthcheck"]).unwrap();
        let TestCommand::Healthcheck(args) = cli.command;
        assert_eq!(args.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn resolve_prefers_url() {
        let args = HealthcheckArgs {
            url: Some("http://x:1/healthz".into()),
            timeout: DEFAULT_TIMEOUT,
            client_cert: None,
            client_key: None,
        };
        assert_eq!(args.resolve_url(None, true), "http://x:1/healthz");
        let args = HealthcheckArgs { url: None, ..args };
        assert_eq!(
            args.resolve_url(None, false),
            "http://127.0.0.1:9504/healthz"
        );
        // TLS on the listener (from --web.config.file)
        assert_eq!(
            args.resolve_url(None, true),
            "https://127.0.0.1:9504/healthz"
        );
    }
}
