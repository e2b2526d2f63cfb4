//! `loxone-exporter healthcheck` logic against real sockets: 200 → exit 0, 503 (no
//! Miniserver connected) → 1, nothing listening → 1, a silent peer → 1 after the timeout.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use loxone_exporter::healthcheck;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn exit_code_follows_the_healthz_status() {
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let router = Router::new().route(
        "/healthz",
        get(move || {
            let code = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
            async move { (code, "{\"status\":\"whatever\"}") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(loxone_exporter::web::serve(
        listener,
        router,
        None,
        shutdown.clone(),
    ));
    let url = format!("http://127.0.0.1:{port}/healthz");

    assert_eq!(
        healthcheck::run(url.clone(), Duration::from_secs(5)).await,
        0
    );
    status.store(503, Ordering::SeqCst);
    assert_eq!(
        healthcheck::run(url.clone(), Duration::from_secs(5)).await,
        1
    );
    status.store(200, Ordering::SeqCst);
    assert_eq!(
        healthcheck::run(url.clone(), Duration::from_secs(5)).await,
        0
    );
    // Unknown path → 404 → unhealthy.
    let other = format!("http://127.0.0.1:{port}/nope");
    assert_eq!(healthcheck::run(other, Duration::from_secs(5)).await, 1);

    shutdown.cancel();
    server.await.unwrap().unwrap();
    // Nothing listening any more.
    assert_eq!(healthcheck::run(url, Duration::from_secs(5)).await, 1);
}

#[tokio::test]
async fn silent_peer_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds the connection without answering.
    let holder = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(sock);
    });
    let t = Instant::now();
    let code = healthcheck::run(
        format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(code, 1);
    assert!(t.elapsed() < Duration::from_secs(5));
    holder.abort();
}

#[tokio::test]
async fn ipv6_loopback_url() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("NOTE: no IPv6 loopback here; test body not run");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let router = Router::new().route("/healthz", get(|| async { "{\"status\":\"healthy\"}" }));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(loxone_exporter::web::serve(
        listener,
        router,
        None,
        shutdown.clone(),
    ));
    let code = healthcheck::run(
        format!("http://[::1]:{port}/healthz"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(code, 0);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
