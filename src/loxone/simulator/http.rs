//! The simulator's HTTP side on the same port as the WebSocket, like a real Miniserver
//! (protocol doc §1.4, §8 "HTTP side"): `jdev/cfg/api(Key)`, `jdev/sys/getPublicKey`,
//! `jdev/sys/getkey`, `data/LoxAPP3.json` and `jdev/sps/LoxAPPversion3` behind Basic auth,
//! 503 while rebooting, the `/ws/rfc6455` upgrade, and the `/sim/...` control API. A command
//! sent as `dev/…` instead of `jdev/…` is answered in the deprecated XML form (doc §5.2).
//!
//! Accept loops and connection plumbing live here too; socket behaviour is in `session.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::LoginError;
use super::control::SimControl;
use super::shared::{Counters, MalformedKind, Shared};
use crate::loxone::envelope::{encode_api_key_value, encode_ll, ApiKeyInfo, CodeStyle};

type Resp = Response<Full<Bytes>>;

/// The single-quoted pseudo-JSON value of `jdev/cfg/api` (no key) / `apiKey` (with key).
pub fn api_key_value(shared: &Shared, key: Option<String>, _peer: Option<SocketAddr>) -> String {
    let s = shared.structure();
    let serial = &s.structure.ms_info.serial_nr;
    // the serial appears as a colon MAC here (doc §1.3)
    let snr = if serial.len() == 12 && serial.chars().all(|c| c.is_ascii_hexdigit()) {
        serial
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect::<Vec<_>>()
            .join(":")
    } else {
        serial.clone()
    };
    let gen2 = s.structure.ms_info.miniserver_type.unwrap_or(2) >= 2;
    encode_api_key_value(&ApiKeyInfo {
        snr,
        version: shared.opts.firmware_version.clone(),
        key,
        https_status: gen2.then_some(if shared.tls_enabled { 1 } else { 0 }),
        local: Some(true),
        has_event_slots: Some(shared.has_free_event_slot()),
    })
}

fn html_error(code: StatusCode) -> Resp {
    let body = format!(
        "<html><head><title>error</title></head><body><errorcode>{}</errorcode> <errordetail>{}</errordetail></body></html>",
        code.as_u16(),
        code.canonical_reason().unwrap_or("Error")
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

fn with_type(body: impl Into<Bytes>, ctype: &'static str) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// An LL answer: JSON for `jdev/…`, the deprecated XML form for `dev/…` (doc §5.2).
fn ll_response(control: &str, value: serde_json::Value, xml: bool) -> Resp {
    if xml {
        with_type(
            super::session::encode_ll_xml(control, 200, &value),
            "text/xml",
        )
    } else {
        with_type(
            encode_ll(control, 200, &value, CodeStyle::UpperString),
            "application/json",
        )
    }
}

/// Outcome of HTTP Basic auth.
enum BasicAuth {
    Ok,
    /// No (usable) `Authorization` header: not a failed login, browsers ask first.
    Missing,
    /// Wrong user or password (counted towards the block).
    Wrong,
    /// Logins are blocked after too many failures.
    Blocked,
}

fn basic_auth(shared: &Shared, req: &Request<Incoming>, now: Instant) -> BasicAuth {
    let credentials = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some(text) = credentials else {
        return BasicAuth::Missing;
    };
    let (u, p) = text.split_once(':').unwrap_or((text.as_str(), ""));
    let result = shared.auth.lock().login_with_password(u, p, now);
    match result {
        Ok(()) => BasicAuth::Ok,
        Err(LoginError::Unauthorized) => {
            shared.counters.record_auth_failure();
            BasicAuth::Wrong
        }
        Err(LoginError::Blocked(_)) => BasicAuth::Blocked,
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    tls: bool,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Result<Resp, Infallible> {
    Counters::inc(&shared.counters.http_requests);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(rest) = path.strip_prefix("/sim/") {
        if shared.opts.no_control_api {
            return Ok(html_error(StatusCode::NOT_FOUND));
        }
        return Ok(control_api(&shared, req.method(), rest, &query));
    }
    if shared.is_unavailable(Instant::now()) {
        return Ok(html_error(StatusCode::SERVICE_UNAVAILABLE));
    }
    let now = Instant::now();
    let p = path.trim_start_matches('/');
    // `dev/…` (not `jdev/…`) asks for the deprecated XML answers
    let xml = p.starts_with("dev/");
    let p = p
        .strip_prefix('j')
        .filter(|r| r.starts_with("dev/"))
        .unwrap_or(p);
    let resp = match p {
        "ws/rfc6455" => return Ok(upgrade(req, shared, tls, tracker, cancel)),
        "" => with_type(
            "<html><body>Loxone Miniserver simulator (loxone-exporter)</body></html>",
            "text/html",
        ),
        "dev/cfg/api" => ll_response(
            "dev/cfg/api",
            json!(api_key_value(&shared, None, None)),
            xml,
        ),
        "dev/cfg/apiKey" => {
            let key = shared.auth.lock().issue_key(now, &mut rand::rngs::OsRng);
            ll_response(
                "dev/cfg/apiKey",
                json!(api_key_value(&shared, Some(key), None)),
                xml,
            )
        }
        "dev/sys/getPublicKey" => {
            ll_response("dev/sys/getPublicKey", json!(shared.public_key_text), xml)
        }
        "dev/sys/getkey" => {
            let key = shared.auth.lock().issue_key(now, &mut rand::rngs::OsRng);
            ll_response("dev/sys/getkey", json!(key), xml)
        }
        "data/LoxAPP3.json" | "dev/sps/LoxAPPversion3" => match basic_auth(&shared, &req, now) {
            BasicAuth::Ok if p == "data/LoxAPP3.json" => {
                with_type(shared.structure().text.to_string(), "application/json")
            }
            BasicAuth::Ok => {
                let lm = shared.structure().last_modified.clone();
                ll_response("dev/sps/LoxAPPversion3", json!(lm), xml)
            }
            BasicAuth::Blocked => html_error(StatusCode::FORBIDDEN),
            BasicAuth::Missing | BasicAuth::Wrong => {
                let mut r = html_error(StatusCode::UNAUTHORIZED);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Loxone Miniserver\""),
                );
                r
            }
        },
        _ => html_error(StatusCode::NOT_FOUND),
    };
    Ok(resp)
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn upgrade(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    tls: bool,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Resp {
    let is_ws = header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket");
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return html_error(StatusCode::BAD_REQUEST);
    };
    if !is_ws || req.method() != Method::GET {
        return html_error(StatusCode::BAD_REQUEST);
    }
    let offered_remotecontrol =
        header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, "remotecontrol");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut cfg = WebSocketConfig::default();
        cfg.max_message_size = Some(16 << 20);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        super::session::run(ws, shared, tls, cancel).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offered_remotecontrol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("remotecontrol"),
        );
    }
    r
}

fn control_api(shared: &Arc<Shared>, method: &Method, rest: &str, query: &str) -> Resp {
    let ctl = SimControl::new(shared.clone());
    let json_ok = |v: serde_json::Value| with_type(v.to_string(), "application/json");
    if rest == "stats" {
        return json_ok(json!(ctl.counters()));
    }
    if method != Method::POST {
        return html_error(StatusCode::METHOD_NOT_ALLOWED);
    }
    let num = |name: &str| query_param(query, name).and_then(|v| v.parse::<f64>().ok());
    let flag = |name: &str| {
        query_param(query, name).map(|v| matches!(v, "1" | "true" | "on" | "yes" | ""))
    };
    match rest {
        "out-of-service" => ctl.out_of_service(),
        "close" => ctl.close_all(num("code").map_or(4007, |c| c as u16)),
        "expire-tokens" => ctl.expire_tokens(),
        "estimated-headers" => ctl.set_estimated_headers(flag("on").unwrap_or(true)),
        "split-frames" => ctl.set_split_frames(num("bytes").map(|b| b as usize).filter(|b| *b > 0)),
        "malformed" => match query_param(query, "kind").and_then(MalformedKind::parse) {
            Some(k) => ctl.inject_malformed(k),
            None => return html_error(StatusCode::BAD_REQUEST),
        },
        "hang" => ctl.hang_mid_message(),
        "deaf" => ctl.deaf_ping_flood(),
        "reboot" => ctl.reboot(Duration::from_secs_f64(
            num("secs").unwrap_or(10.0).clamp(0.0, 3600.0),
        )),
        "change-structure" => {
            let lm = ctl.change_structure();
            return json_ok(json!({"lastModified": lm}));
        }
        "value" => {
            // any well-formed UUID: one the structure does not list is sent all the same
            // (clients must ignore it, doc §3.6); NaN and ±∞ are refused
            let uuid = query_param(query, "uuid")
                .and_then(|u| crate::loxone::uuid::LoxUuid::parse(u).ok());
            match (uuid, num("value").filter(|v| v.is_finite())) {
                (Some(u), Some(v)) if ctl.send_value_event(u, v) => {}
                _ => return html_error(StatusCode::BAD_REQUEST),
            }
        }
        "rate" => match num("events_per_s") {
            Some(r) if r >= 0.0 && r.is_finite() => ctl.set_rate(r),
            _ => return html_error(StatusCode::BAD_REQUEST),
        },
        "reject-logins" => ctl.set_reject_logins(flag("on").unwrap_or(true)),
        _ => return html_error(StatusCode::NOT_FOUND),
    }
    json_ok(json!({"ok": true}))
}

/// Serves one accepted connection (plain or TLS-wrapped).
async fn serve_conn<I>(
    io: I,
    shared: Arc<Shared>,
    tls: bool,
    tracker: TaskTracker,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let tracker = tracker.clone();
        let cancel = cancel.clone();
        hyper::service::service_fn(move |req| {
            handle(req, shared.clone(), tls, tracker.clone(), cancel.clone())
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = cancel.cancelled() => {}
    }
}

/// Accepts connections until cancelled.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        Counters::inc(&shared.counters.tcp_connections);
        if shared.is_down(Instant::now()) {
            // rebooting: the connection is refused (dropped at once)
            Counters::inc(&shared.counters.refused_connections);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (shared, t2, cancel) = (shared.clone(), tracker.clone(), cancel.clone());
        match &tls {
            None => {
                tracker.spawn(serve_conn(stream, shared, false, t2, cancel));
            }
            Some(acc) => {
                let acc = acc.clone();
                tracker.spawn(async move {
                    let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)).await
                    else {
                        return;
                    };
                    serve_conn(s, shared, true, t2, cancel).await;
                });
            }
        }
    }
}
