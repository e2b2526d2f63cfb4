//! systemd service integration without libsystemd: `sd_notify` datagrams (`READY=1`,
//! `STOPPING=1`, `STATUS=…`, `WATCHDOG=1`) to `$NOTIFY_SOCKET`, and the watchdog ping task
//! driven by `$WATCHDOG_USEC` / `$WATCHDOG_PID` (sd_notify(3), sd_watchdog_enabled(3);
//! issue 6 "systemd").
//!
//! Everything is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd with
//! `Type=notify`), so callers never need to check. Socket names starting with `@` are Linux
//! abstract sockets. Environment is read only by the `*_from_env` helpers and the
//! convenience functions; the types take values so tests never touch the process
//! environment. Does not decide *when* the service is ready: the caller sends `READY=1`
//! after binding the HTTP listener.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where notifications go: the value of `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// A notifier for this socket name (`/path` or `@abstract`). `None` for an empty name.
    pub fn new(socket: impl Into<String>) -> Option<Self> {
        let socket = socket.into();
        (!socket.is_empty()).then_some(Notifier { socket })
    }

    /// From `$NOTIFY_SOCKET`; `None` when not running under systemd notify.
    pub fn from_env() -> Option<Self> {
        std::env::var("NOTIFY_SOCKET").ok().and_then(Notifier::new)
    }

    /// Sends one datagram with newline-separated `KEY=value` assignments.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = self.socket.strip_prefix('@') {
            send_abstract(&sock, name, state.as_bytes())
        } else {
            sock.send_to(state.as_bytes(), &self.socket).map(|_| ())
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &str, buf: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(buf, &addr).map(|_| ())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_sock: &UnixDatagram, _name: &str, _buf: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets need Linux",
    ))
}

fn notify_env(state: &str) {
    if let Some(n) = Notifier::from_env() {
        if let Err(e) = n.notify(state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// Tells systemd the service is up (`READY=1`). Call after the HTTP listener is bound.
pub fn notify_ready() {
    notify_env("READY=1");
}

/// Tells systemd the service is shutting down (`STOPPING=1`).
pub fn notify_stopping() {
    notify_env("STOPPING=1");
}

/// Sets the one-line status `systemctl status` shows (`STATUS=…`; newlines are replaced).
pub fn notify_status(status: &str) {
    notify_env(&format!("STATUS={}", status.replace('\n', " ")));
}

/// The ping interval systemd asks for: half of `WATCHDOG_USEC`, or `None` when the
/// watchdog is off or meant for another process (`WATCHDOG_PID` ≠ `pid`).
pub fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Starts the watchdog ping task when `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` ask for one;
/// it pings `WATCHDOG=1` at half the timeout until `shutdown` is cancelled. `None` when no
/// watchdog is configured. Must be called inside a Tokio runtime.
pub fn spawn_watchdog(shutdown: CancellationToken) -> Option<JoinHandle<()>> {
    let notifier = Notifier::from_env()?;
    let interval = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )?;
    tracing::debug!(?interval, "systemd watchdog enabled");
    Some(spawn_watchdog_with(notifier, interval, shutdown))
}

/// The watchdog task with explicit inputs (for tests): pings immediately, then every
/// `interval`, until `shutdown` is cancelled.
pub fn spawn_watchdog_with(
    notifier: Notifier,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    match notifier.notify("WATCHDOG=1") {
                        Ok(()) => failing = false,
                        // Log once per failure streak, not on every tick.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "systemd watchdog ping failed");
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_rules() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("abc"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn empty_socket_name_is_no_notifier() {
        assert!(Notifier::new("").is_none());
    }
}
