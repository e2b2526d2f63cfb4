//! The `loxone-exporter` binary: parse arguments, load configuration, bind, run.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM / SIGINT), 1 for configuration errors
//! (each printed as a `Configuration error:` line), 2 for any other start-up failure,
//! naming the real cause (e.g. `address 0.0.0.0:9504 is already in use`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use loxone_exporter::app::{self, RunOptions};
use loxone_exporter::cli::{Cli, Command};
use loxone_exporter::config::{self, Config};
use loxone_exporter::{build_info, logging};

fn config_error_exit(lines: impl IntoIterator<Item = String>) -> ExitCode {
    for l in lines {
        eprintln!("Configuration error: {l}");
    }
    ExitCode::from(1)
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    let mut config = config::load(cli.config.as_deref(), &env_lookup)
        .map_err(|e| config_error_exit(e.0.into_iter().map(|e| e.to_string())))?;
    cli.apply(&mut config)
        .map_err(|errs| config_error_exit(errs.into_iter().map(|e| e.to_string())))?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        print!("{}", build_info::version_text());
        return ExitCode::SUCCESS;
    }
    match &cli.command {
        Some(Command::Check) => match load_config(&cli) {
            Ok(config) => {
                print!("{}", config::render_effective(&config));
                println!("Configuration OK");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match run_daemon(&cli, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Fatal error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!("address {addr} is already in use"),
        std::io::ErrorKind::AddrNotAvailable => {
            anyhow::anyhow!("address {addr} is not available on this host")
        }
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("permission denied binding {addr} (ports below 1024 need privileges)")
        }
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot configure listener on {addr}"))?;
    Ok(listener)
}

fn run_daemon(cli: &Cli, config: Config) -> anyhow::Result<()> {
    logging::init(config.log_level, config.log_format)?;
    let addr = SocketAddr::new(config.listen_address, config.listen_port);
    let std_listener = bind(addr)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loxone-exporter")
        .build()
        .context("cannot start the async runtime")?;
    let options = RunOptions {
        telemetry_path: cli.telemetry_path.clone(),
        web_config: cli.web_config.clone(),
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .with_context(|| format!("cannot use listener on {addr}"))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        app::run(config, listener, options, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    // background tasks that ignored the grace period must not keep the process alive
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
