//! A deliberately small raw Loxone WebSocket client for the simulator tests: it speaks the
//! protocol with tokio-tungstenite and the sans-I/O protocol modules only (not the exporter's
//! client), and exposes every message so tests can assert on headers and frames.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use loxone_exporter::loxone::crypto::{self, HashAlg, SaltPrefix, SessionKey};
use loxone_exporter::loxone::envelope::{parse_ll, LlResponse};
use loxone_exporter::loxone::events::{value_events, ValueEvent};
use loxone_exporter::loxone::header::{parse_header, Header, MessageKind, DEFAULT_MAX_PAYLOAD};
use loxone_exporter::loxone::simulator::{self, Simulator, SimulatorOptions};
use loxone_exporter::tls_provider::reqwest_builder;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret pw";

/// Options for a test simulator: fixed test RSA key (no slow key generation), test user.
pub fn test_options() -> SimulatorOptions {
    SimulatorOptions {
        rsa_key: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/sim/test_rsa_1024.pem"),
        ),
        user: USER.into(),
        password: PASSWORD.into(),
        rate: 0.0,
        ..SimulatorOptions::default()
    }
}

pub async fn start(f: impl FnOnce(&mut SimulatorOptions)) -> Simulator {
    let mut o = test_options();
    f(&mut o);
    simulator::start(o).await.expect("simulator starts")
}

pub const WAIT: Duration = Duration::from_secs(10);

/// One received protocol unit.
#[derive(Debug)]
pub enum Received {
    /// A header and its payload (None for kinds without payload).
    Msg {
        header: Header,
        estimated_before: Option<Header>,
        payload: Option<Message>,
    },
    /// The socket was closed with this code (None: without a close frame).
    Closed(Option<u16>, String),
}

pub struct RawClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub sk: Option<SessionKey>,
    pub salt: String,
    pub protocol_echoed: Option<String>,
    pub http: String,
}

/// GET `url` with a client of its own: a shared client's pooled connections belong to the
/// runtime that opened them, and every `#[tokio::test]` has its own runtime (a connection
/// from a finished test's runtime fails the next request with "dispatch task is gone").
pub async fn http_get(url: &str, basic: Option<(&str, &str)>) -> (u16, String) {
    let client = reqwest_builder().build().expect("http client");
    let mut req = client.get(url);
    if let Some((u, p)) = basic {
        req = req.basic_auth(u, Some(p));
    }
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("http timeout")
        .expect("http request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// POST to `url`, with a client of its own for the same reason as [`http_get`].
pub async fn http_post(url: &str) -> (u16, String) {
    let r = reqwest_builder()
        .build()
        .expect("http client")
        .post(url)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

impl RawClient {
    pub async fn connect(sim: &Simulator, offer_protocol: bool) -> Result<Self, String> {
        Self::connect_with(sim, offer_protocol, None).await
    }

    pub async fn connect_with(
        sim: &Simulator,
        offer_protocol: bool,
        max_frame: Option<usize>,
    ) -> Result<Self, String> {
        let addr = sim.http_addr();
        let url = format!("ws://{addr}/ws/rfc6455?_=1234");
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        if offer_protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", "remotecontrol".parse().unwrap());
        }
        let mut cfg = WebSocketConfig::default();
        if let Some(m) = max_frame {
            cfg.max_frame_size = Some(m);
        }
        let (ws, resp) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(req, Some(cfg), false),
        )
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
        let protocol_echoed = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(RawClient {
            ws,
            sk: None,
            salt: "00ff".into(),
            protocol_echoed,
            http: format!("http://{addr}"),
        })
    }

    pub async fn connect_tls(sim: &Simulator) -> Result<Self, String> {
        let addr = sim.tls_addr().expect("tls listener");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                sim.tls_certificate_der().unwrap().to_vec(),
            ))
            .map_err(|e| e.to_string())?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let url = format!("wss://localhost:{}/ws/rfc6455", addr.port());
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(cfg))),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(RawClient {
            ws,
            sk: None,
            salt: "00ff".into(),
            protocol_echoed: None,
            http: format!("http://{}", sim.http_addr()),
        })
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn next_raw(&mut self) -> Option<Result<Message, String>> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Err(_) => panic!("no message within {WAIT:?}"),
            Ok(None) => None,
            Ok(Some(r)) => Some(r.map_err(|e| e.to_string())),
        }
    }

    /// Reads one protocol unit: (estimated header,) header, payload.
    pub async fn recv(&mut self) -> Received {
        let mut estimated_before = None;
        loop {
            let m = match self.next_raw().await {
                None => return Received::Closed(None, String::new()),
                Some(Err(e)) => return Received::Closed(None, e),
                Some(Ok(m)) => m,
            };
            let bytes = match m {
                Message::Binary(b) => b,
                Message::Close(f) => {
                    return Received::Closed(
                        f.as_ref().map(|f| u16::from(f.code)),
                        f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    )
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a header, got {other:?}"),
            };
            let header = parse_header(&bytes, DEFAULT_MAX_PAYLOAD).expect("8-byte header");
            if header.estimated {
                assert!(estimated_before.is_none(), "two estimated headers in a row");
                estimated_before = Some(header);
                continue;
            }
            let payload = if header.kind.has_no_payload() {
                None
            } else {
                match self.next_raw().await {
                    Some(Ok(p)) => {
                        assert_eq!(p.len(), header.payload_len as usize, "exact length");
                        Some(p)
                    }
                    other => panic!("payload missing after {header:?}: {other:?}"),
                }
            };
            return Received::Msg {
                header,
                estimated_before,
                payload,
            };
        }
    }

    /// The next message, which must be a table of `kind`; its payload.
    pub async fn table(&mut self, kind: MessageKind) -> Vec<u8> {
        match self.recv().await {
            Received::Msg {
                header,
                payload: Some(p),
                ..
            } => {
                assert_eq!(header.kind, kind);
                p.into_data().to_vec()
            }
            other => panic!("expected a {kind:?} table, got {other:?}"),
        }
    }

    /// The next message, which must be a value-event table; its events.
    pub async fn value_table(&mut self) -> Vec<ValueEvent> {
        let data = self.table(MessageKind::ValueStates).await;
        value_events(&data).unwrap().collect()
    }

    /// Reads until a type-0 text answer; event tables in between are collected.
    pub async fn answer(&mut self) -> (String, Vec<(MessageKind, Vec<u8>)>) {
        let mut tables = Vec::new();
        loop {
            match self.recv().await {
                Received::Msg {
                    header,
                    payload: Some(p),
                    ..
                } if header.kind == MessageKind::Text => match p {
                    Message::Text(t) => return (t.to_string(), tables),
                    other => panic!("type-0 payload must be a TEXT frame, got {other:?}"),
                },
                Received::Msg {
                    header,
                    payload: Some(p),
                    ..
                } => tables.push((header.kind, p.into_data().to_vec())),
                Received::Msg { header, .. } => panic!("unexpected {header:?}"),
                Received::Closed(code, reason) => {
                    panic!("closed ({code:?} {reason}) while waiting for an answer")
                }
            }
        }
    }

    pub async fn command(&mut self, cmd: &str) -> LlResponse {
        self.send(cmd).await;
        let (t, _) = self.answer().await;
        parse_ll(&t).unwrap_or_else(|e| panic!("LL expected for {cmd}: {e}: {t}"))
    }

    pub fn enc(&self, cmd: &str) -> String {
        crypto::encrypt_command(
            self.sk.as_ref().expect("keyexchange first"),
            &SaltPrefix::Salt(self.salt.clone()),
            cmd,
            false,
        )
    }

    pub async fn enc_command(&mut self, cmd: &str) -> LlResponse {
        let wire = self.enc(cmd);
        self.command(&wire).await
    }

    pub async fn keyexchange(&mut self) -> LlResponse {
        let (status, body) = http_get(&format!("{}/jdev/sys/getPublicKey", self.http), None).await;
        assert_eq!(status, 200);
        let ll = parse_ll(&body).expect("LL");
        let pk = crypto::parse_public_key(ll.value.as_str().expect("string")).expect("public key");
        let sk = SessionKey::generate(&mut rand::rngs::OsRng);
        let b64 = crypto::encrypt_session_key(&pk, &sk, &mut rand::rngs::OsRng).unwrap();
        self.sk = Some(sk);
        self.command(&format!("jdev/sys/keyexchange/{b64}")).await
    }

    /// getkey2 + encrypted getjwt (permission 4). Returns the getjwt answer.
    pub async fn login(&mut self, user: &str, password: &str) -> LlResponse {
        if self.sk.is_none() {
            let r = self.keyexchange().await;
            assert_eq!(r.code, 200, "keyexchange: {r:?}");
        }
        let r = self.enc_command(&format!("jdev/sys/getkey2/{user}")).await;
        assert_eq!(r.code, 200);
        let alg = HashAlg::from_loxone(r.value["hashAlg"].as_str());
        let pw = crypto::password_hash(alg, password, r.value["salt"].as_str().unwrap());
        let hash =
            crypto::credential_hash(alg, r.value["key"].as_str().unwrap(), user, &pw).unwrap();
        self.enc_command(&format!(
            "jdev/sys/getjwt/{hash}/{user}/4/098802e1-02b4-603c-ffffeee000d80cfd/raw%20test"
        ))
        .await
    }

    /// Waits for the socket to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Received::Closed(code, _) => return code,
                Received::Msg { .. } => continue,
            }
        }
    }
}
