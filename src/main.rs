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
use loxone_exporter::loxone::simulator;
use loxone_exporter::{build_info, healthcheck, logging, otlp, telemetry, web};

fn config_error_exit(lines: impl IntoIterator<Item = String>) -> ExitCode {
    for l in lines {
        eprintln!("Configuration error: {l}");
    }
    ExitCode::from(1)
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The configuration file (or environment) with the flags applied; every error at once:
/// the file's, the flags' and the web configuration file's.
fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    let loaded = config::load(cli.config.as_deref(), &env_lookup)
        .map_err(|e| e.0.into_iter().map(|e| e.to_string()).collect());
    finish_config(cli, loaded)
}

/// Applies the flags to `config` and checks `--web.config.file`; exits with every error
/// at once (the flags are checked even when the file failed).
fn finish_config(cli: &Cli, config: Result<Config, Vec<String>>) -> Result<Config, ExitCode> {
    let (mut config, mut errors) = match config {
        Ok(config) => (Some(config), Vec::new()),
        Err(errors) => (None, errors),
    };
    let flag_errors = match config.as_mut() {
        Some(config) => cli.apply(config).err().unwrap_or_default(),
        None => cli.flag_errors(),
    };
    errors.extend(flag_errors.into_iter().map(|e| e.to_string()));
    errors.extend(web_config_errors(cli));
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(config_error_exit(errors)),
    }
}

fn web_config_errors(cli: &Cli) -> Option<String> {
    let path = cli.web_config.as_ref()?;
    web::validate_web_config(path).err().map(|e| e.to_string())
}

/// Raises the soft limit of open files to the hard one, as Go programs such as
/// node_exporter do at start: the soft limit is often 1024 (systemd's default), which about
/// a thousand idle connections from anyone who can reach the port use up, and then the
/// Miniserver sockets cannot reconnect either. Failure changes nothing.
fn raise_open_files_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed in
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

fn main() -> ExitCode {
    loxone_exporter::alloc::configure();
    raise_open_files_limit();
    let cli = Cli::parse();
    if cli.version {
        print!("{}", build_info::version_text());
        return ExitCode::SUCCESS;
    }
    match &cli.command {
        Some(Command::Check) => match load_config(&cli) {
            Ok(config) => {
                let mut report = config::render_effective(&config);
                for w in &config.warnings {
                    report.push_str(&format!("Warning: {w}\n"));
                }
                // the self-telemetry variables the daemon would ignore, with its words
                let traces = telemetry::settings::resolve(&config.opentelemetry, &env_lookup);
                for w in &traces.warnings {
                    report.push_str(&format!("Warning: {w}\n"));
                }
                report.push_str("Configuration OK\n");
                // a reader that stops early (`check | head`) is not an error worth a panic
                let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), report.as_bytes());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Healthcheck(args)) => {
            // the listener as the daemon would open it: file (or environment), flags, web
            // config; a file that does not load still leaves the flags and defaults
            let mut config =
                config::load(cli.config.as_deref(), &env_lookup).unwrap_or_else(|_| {
                    Config::with_miniserver(config::MiniserverConfig::new("-", "-", "-", "-"))
                });
            if let Err(errors) = cli.apply(&mut config) {
                for e in errors {
                    eprintln!("unhealthy: {e}");
                }
                return ExitCode::from(1);
            }
            let pin = match cli.web_config.as_deref().map(web::healthcheck_pin) {
                Some(Ok(pin)) => pin,
                Some(Err(e)) => {
                    eprintln!("unhealthy: {e}");
                    return ExitCode::from(1);
                }
                None => None,
            };
            let identity = match args.client_identity() {
                Ok(identity) => identity,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    return ExitCode::from(1);
                }
            };
            let url = args.resolve_url(Some(&config), pin.is_some());
            let code = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(healthcheck::run_pinned(url, args.timeout, pin, identity)),
                Err(e) => {
                    eprintln!("healthcheck: cannot start runtime: {e}");
                    1
                }
            };
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Some(Command::Simulate(opts)) => match run_simulator(&cli, (**opts).clone()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Fatal error: {e:#}");
                ExitCode::from(2)
            }
        },
        None => {
            let config = if cli.demo {
                match demo_config(&cli) {
                    Ok(c) => c,
                    Err(code) => return code,
                }
            } else {
                match load_config(&cli) {
                    Ok(c) => c,
                    Err(code) => return code,
                }
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
    let bound = std::net::TcpListener::bind(addr).or_else(|e| {
        // `[::]` (every interface, from `:PORT`) on a host without IPv6 (address family
        // not supported, address not available): IPv4 only. A busy port or a missing
        // privilege stays an error.
        let ipv6_missing = !matches!(
            e.kind(),
            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
        );
        if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) && ipv6_missing {
            std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, addr.port()))
                .map_err(|_| e)
        } else {
            Err(e)
        }
    });
    let listener = bound.map_err(|e| match e.kind() {
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
    let addr = SocketAddr::new(config.listen_address, config.listen_port);
    let telemetry = telemetry::init(telemetry::TelemetryOptions {
        log_level: config.log_level,
        log_format: config.log_format,
        otlp: &config.opentelemetry,
        instance_id: format!("{}:{}", otlp::export::local_host_name(), addr.port()),
        env: &env_lookup,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loxone-exporter")
        .build()
        .context("cannot start the async runtime")?;
    // The handlers go in before the port is bound: whoever sees the port open (a test, a
    // supervisor) may signal at once, and the default action would kill the process.
    let shutdown = CancellationToken::new();
    let signals = {
        let _in_runtime = runtime.enter();
        signal_handler(shutdown.clone())
    };
    let std_listener = bind(addr)?;
    let options = RunOptions {
        telemetry_path: cli.telemetry_path.clone(),
        web_config: cli.web_config.clone(),
        max_requests: cli.max_requests,
    };
    let demo = cli.demo;
    // for the demo's "open …" line: https when the web config turns TLS on
    let scheme = match cli.web_config.as_deref().map(web::healthcheck_pin) {
        Some(Ok(Some(_))) => "https",
        _ => "http",
    };
    runtime.block_on(async move {
        let mut config = config;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .with_context(|| format!("cannot use listener on {addr}"))?;
        tokio::spawn(signals);
        // the demo's simulated Miniserver lives as long as the daemon
        let _simulator = if demo {
            let sim = simulator::start(demo_simulator_options())
                .await
                .context("cannot start the demo's simulated Miniserver")?;
            for ms in &mut config.miniservers {
                ms.port = sim.http_addr().port();
            }
            let shown = if addr.ip().is_unspecified() {
                format!("127.0.0.1:{}", addr.port())
            } else {
                addr.to_string()
            };
            tracing::info!(
                simulator = %sim.http_addr(),
                "demo: simulated Miniserver with a real structure file; open {scheme}://{shown}/ or {scheme}://{shown}/metrics"
            );
            Some(sim)
        } else {
            None
        };
        app::run(config, listener, options, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    // background tasks that ignored the grace period must not keep the process alive
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    telemetry.shutdown(TELEMETRY_FLUSH_BUDGET);
    Ok(())
}

/// Time the span pipeline gets to flush at exit (inside the 2 s shutdown budget).
const TELEMETRY_FLUSH_BUDGET: std::time::Duration = std::time::Duration::from_millis(150);

/// Demo: one Miniserver named `demo` on a simulator started in-process (its port is filled
/// in once the simulator is bound); listen settings and log flags from the command line,
/// and the OTLP settings of the environment (`LOXONE_OTLP_*`, `OTEL_*`), so the demo can
/// feed a collector too. No other variable is read: a real Miniserver's `LOXONE_HOST` in
/// the environment must not replace the simulator.
fn demo_config(cli: &Cli) -> Result<Config, ExitCode> {
    let yaml = format!(
        "miniservers:\n  - name: demo\n    host: 127.0.0.1\n    username: {DEMO_USER}\n    password: {DEMO_PASSWORD}\nlog_format: text\n"
    );
    let otlp_only = |name: &str| {
        (name.starts_with("LOXONE_OTLP_") || name.starts_with("OTEL_"))
            .then(|| env_lookup(name))
            .flatten()
    };
    let loaded =
        config::load_str_with_env_names(&yaml, None, &otlp_only, &config::otlp_header_env_names())
            .map_err(|e| e.0.into_iter().map(|e| e.to_string()).collect());
    finish_config(cli, loaded)
}

const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo-password";

fn demo_simulator_options() -> simulator::SimulatorOptions {
    simulator::SimulatorOptions {
        user: DEMO_USER.into(),
        password: DEMO_PASSWORD.into(),
        rate: 200.0,
        ..simulator::SimulatorOptions::default()
    }
}

fn run_simulator(cli: &Cli, opts: simulator::SimulatorOptions) -> anyhow::Result<()> {
    // the daemon's flags are global for `check` and `healthcheck`; the simulator has no
    // configuration file and listens on --listen, so they would be silently ignored
    let ignored = [
        ("-c/--config", cli.config.is_some()),
        ("--web.listen-address", cli.listen_address.is_some()),
        ("--web.config.file", cli.web_config.is_some()),
        (
            "--web.telemetry-path",
            cli.telemetry_path != loxone_exporter::http::DEFAULT_TELEMETRY_PATH,
        ),
        (
            "--web.max-requests",
            cli.max_requests != loxone_exporter::http::DEFAULT_MAX_REQUESTS,
        ),
    ];
    let given: Vec<&str> = ignored
        .iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| *f)
        .collect();
    if !given.is_empty() {
        anyhow::bail!(
            "simulate does not use {}: it has no configuration file and listens on --listen (see simulate --help)",
            given.join(", ")
        );
    }
    let level = match &cli.log_level {
        Some(l) => loxone_exporter::cli::parse_log_level(l)?,
        None => config::LogLevel::Info,
    };
    let format = match &cli.log_format {
        Some(f) => loxone_exporter::cli::parse_log_format(f)?,
        None => config::LogFormat::Text,
    };
    logging::init(level, format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_handler(shutdown.clone()));
        simulator::run(opts, shutdown).await
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal arriving right after start-up,
/// e.g. just after systemd's READY=1, is never lost to the default action) and returns the
/// future that cancels `shutdown` when one arrives.
fn signal_handler(shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            shutdown.cancel();
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    }
}
