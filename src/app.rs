//! Wiring: builds the registry and state store from the configuration, starts one task per
//! Miniserver, the OTLP export loop and the HTTP server, and shuts them all down in order
//! when the shutdown token is cancelled.
//!
//! One [`CancellationToken`] goes down to every task; a [`TaskTracker`] comes back up. On
//! shutdown Miniserver sessions close (and kill their tokens), the OTLP loop runs its final
//! export, the HTTP server stops accepting; everything is given [`SHUTDOWN_GRACE`] in total.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, OtlpProtocol};
use crate::http::{self, HttpState};
use crate::loxone::wake_pacer::WakePacer;
use crate::metrics::filter::FilterError;
use crate::metrics::health::{ExportState, OtlpHealth};
use crate::metrics::self_health::{ProcessMetrics, SelfHealth};
use crate::metrics::{Registry, StateStore};
use crate::{loxone, otlp, systemd, telemetry, web};

/// Time all tasks get to finish after the shutdown signal (the process must be gone
/// within 2 s of SIGTERM).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Options that come from the command line rather than the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--web.telemetry-path`.
    pub telemetry_path: String,
    /// `--web.config.file` (TLS and basic auth).
    pub web_config: Option<PathBuf>,
    /// `--web.max-requests` (0: no limit).
    pub max_requests: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            telemetry_path: http::DEFAULT_TELEMETRY_PATH.to_string(),
            web_config: None,
            max_requests: http::DEFAULT_MAX_REQUESTS,
        }
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A filter pattern did not compile (normally caught by config validation).
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(String),
}

/// The running daemon's shared parts, for tests that want to look inside.
pub struct App {
    /// The registry behind `/metrics` and OTLP.
    pub registry: Arc<Registry>,
    /// Control values and Miniserver health.
    pub store: Arc<StateStore>,
    /// Scrape duration and errors.
    pub self_health: Arc<SelfHealth>,
    /// OTLP status, when export is enabled.
    pub otlp_health: Option<OtlpHealth>,
}

impl App {
    /// Builds the registry with every collector the daemon serves (state store,
    /// self-health, process, self-telemetry, OTLP health when enabled); no tasks started.
    pub fn new(config: &Config) -> Result<Self, AppError> {
        let registry = Arc::new(Registry::new());
        let store = StateStore::new(&config.filters, config.include_text_values)?;
        registry.register(store.clone());
        let self_health = Arc::new(SelfHealth::new());
        registry.register(self_health.clone());
        registry.register(Arc::new(ProcessMetrics::new()));
        registry.register(telemetry::collector());
        let otlp_health = config.opentelemetry.enabled.then(|| {
            let health = OtlpHealth::new(ExportState::Idle);
            registry.register(otlp::health_collector(health.clone()));
            health
        });
        Ok(App {
            registry,
            store,
            self_health,
            otlp_health,
        })
    }
}

/// Runs the daemon until `shutdown` is cancelled, serving HTTP on `listener`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let app = App::new(&config)?;
    let tracker = TaskTracker::new();

    let clients: Vec<_> = config
        .miniservers
        .iter()
        .map(|ms| {
            let state = app.store.add_miniserver(&ms.name);
            loxone::client::run_miniserver(ms.clone(), state, shutdown.clone())
        })
        .collect();
    if !clients.is_empty() {
        tracker.spawn(run_clients(clients));
    }

    let local: Option<SocketAddr> = listener.local_addr().ok();
    let listen_port = local.map_or(config.listen_port, |a| a.port());

    let otlp_cfg = config.opentelemetry.clone();
    let otlp_target = if let Some(health) = &app.otlp_health {
        let proto = match otlp_cfg.protocol {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        };
        let target = (
            proto.to_string(),
            crate::secret::redact_url(&otlp_cfg.endpoint),
        );
        // what a Prometheus scrape of this host would call the instance
        let instance_id = format!("{}:{listen_port}", otlp::export::local_host_name());
        tracker.spawn(otlp::run_export_loop(
            otlp_cfg,
            app.registry.clone(),
            health.clone(),
            instance_id,
            shutdown.clone(),
        ));
        Some(target)
    } else {
        None
    };

    tracing::info!(
        miniservers = config.miniservers.len(),
        listen = %local.map(|a| a.to_string()).unwrap_or_default(),
        otlp = config.opentelemetry.enabled,
        "loxone-exporter started"
    );

    let state = Arc::new(HttpState {
        registry: app.registry.clone(),
        store: app.store.clone(),
        self_health: app.self_health.clone(),
        otlp: app.otlp_health.clone(),
        otlp_target,
        telemetry_path: options.telemetry_path.clone(),
        render: Default::default(),
        scrape_limit: http::ScrapeLimit::new(options.max_requests),
    });
    let router = http::router(state);
    let mut server = tracker.spawn(web::serve(
        listener,
        router,
        options.web_config.clone(),
        shutdown.clone(),
    ));
    // the listener was bound before we got here: tell systemd we are ready
    systemd::notify_ready();
    let _watchdog = systemd::spawn_watchdog(shutdown.clone());
    tracker.close();

    // The server ends on its own only when it cannot serve (its web config file, checked
    // at start, became unreadable before it was read again): a daemon bound to the port
    // that never answers must not keep running.
    let mut ended_early = None;
    tokio::select! {
        // a shutdown ends the server too: that end is no failure
        biased;
        _ = shutdown.cancelled() => {}
        ended = &mut server => ended_early = Some(ended),
    }
    if let (Some(ended), false) = (&ended_early, shutdown.is_cancelled()) {
        let error = match ended {
            Ok(Ok(())) => "the HTTP server stopped".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(%error, "the HTTP server cannot serve; stopping");
        shutdown.cancel();
        systemd::notify_stopping();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
        return Err(AppError::Http(error));
    }
    systemd::notify_stopping();
    tracing::info!("shutdown signal received, stopping");
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within the grace period; exiting anyway");
        return Ok(());
    }
    let ended = match ended_early {
        Some(ended) => ended,
        None => server.await,
    };
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AppError::Http(e.to_string())),
        Err(e) => Err(AppError::Http(e.to_string())),
    }
}

/// Runs the Miniserver clients on their own thread with a single-threaded runtime, each
/// client a task of its own, and completes when all of them have stopped.
///
/// Why not the main multi-threaded runtime: every event table that arrives wakes the task
/// that reads the socket, and on the shared runtime that wake-up goes through the work-
/// stealing scheduler (run-queue bookkeeping, worker state transitions, poll-time
/// statistics) — at 1000 small tables per second that overhead was a large part of the
/// exporter's CPU. On its own thread the socket's readiness and the session run in one
/// place, and a busy `/metrics` or OTLP export never delays a session (nor the reverse).
/// Heavy one-off work (structure parsing) still goes to a blocking pool. When the thread
/// cannot be started, the clients run on the current runtime instead.
async fn run_clients<F>(clients: Vec<F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    // shared so that the clients can still run here when the thread cannot be started
    let handed_over = Arc::new(parking_lot::Mutex::new(Some(clients)));
    let pacer = Arc::new(WakePacer::new());
    let (on_park, on_unpark) = (pacer.clone(), pacer);
    // I/O and timers only: the signal/process driver would add work to every park
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // under a flood of small tables, one wake-up per `wake_pacer::WINDOW`
        .on_thread_park(move || on_park.park_hook())
        .on_thread_unpark(move || on_unpark.unpark_hook())
        .build();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = match runtime {
        Ok(runtime) => {
            let clients = handed_over.clone();
            std::thread::Builder::new()
                .name("loxone-clients".into())
                .spawn(move || {
                    let clients = clients.lock().take().unwrap_or_default();
                    runtime.block_on(async move {
                        let tasks: Vec<_> = clients.into_iter().map(tokio::spawn).collect();
                        for task in tasks {
                            let _ = task.await;
                        }
                    });
                    // stragglers (a structure parser on the blocking pool) are not waited
                    // for: the clients have stopped
                    runtime.shutdown_background();
                    let _ = done_tx.send(());
                })
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match spawned {
        Ok(_) => {
            let _ = done_rx.await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the Miniserver client thread; the clients run on the main runtime");
            let clients = handed_over.lock().take().unwrap_or_default();
            futures_util::future::join_all(clients).await;
        }
    }
}
