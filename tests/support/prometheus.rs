//! A real Prometheus server for integration tests: started on a free loopback port with its
//! own temporary TSDB, log captured to a file, killed on drop. Used where a test must prove
//! that Prometheus itself accepts what we ship (scrapes over TLS, dashboard queries).
// Each test file uses the parts it needs.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Prometheus server (killed when dropped).
pub struct Prometheus {
    child: Child,
    /// Port of its web API on 127.0.0.1.
    pub port: u16,
    data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `bin` with `config` (a prometheus.yml).
    pub fn start(bin: &Path, config: &Path) -> Prometheus {
        let data = tempfile::tempdir().expect("temp dir");
        let port = crate::common::free_port();
        let log = std::fs::File::create(data.path().join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, data }
    }

    /// Base URL of its web API.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until `/-/ready` answers 200; panics with its log after `timeout`.
    pub async fn wait_ready(&self, client: &reqwest::Client, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = client
                .get(format!("{}/-/ready", self.base_url()))
                .send()
                .await;
            if ready.map(|r| r.status().is_success()).unwrap_or(false) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>` (`targets`, `rules`, `alerts`, ...): the parsed JSON answer, or
    /// `Null` when it cannot be had.
    pub async fn api(&self, client: &reqwest::Client, path: &str) -> serde_json::Value {
        let url = format!("{}/api/v1/{path}", self.base_url());
        match client.get(url).send().await {
            Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default())
                .unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Runs an instant query; the parsed JSON answer, or `Null` when it cannot be had.
    pub async fn query(&self, client: &reqwest::Client, q: &str) -> serde_json::Value {
        let q = percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC);
        self.api(client, &format!("query?query={q}")).await
    }
}
