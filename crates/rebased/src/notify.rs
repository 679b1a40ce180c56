//! sd_notify: telling systemd when the daemon is ready, what it is doing,
//! that it is alive, and when it reloads or stops. Nothing is sent when
//! `NOTIFY_SOCKET` is absent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

/// A connection to systemd's notification socket, if there is one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Self {
        let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
            return Self { target: None };
        };
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        } else {
            SocketAddr::from_pathname(&path)
        };
        match (UnixDatagram::unbound(), addr) {
            (Ok(sock), Ok(addr)) => Self {
                target: Some((sock, addr)),
            },
            (Err(e), _) | (_, Err(e)) => {
                warn!(socket = %path, "cannot use NOTIFY_SOCKET: {e}");
                Self { target: None }
            }
        }
    }

    /// Sends `state` (e.g. `READY=1`, `STATUS=...`).
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                warn!("sd_notify {state:?} failed: {e}");
            } else {
                debug!("sd_notify {state:?}");
            }
        }
    }

    /// A one-line `STATUS=`.
    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", line.replace('\n', " ")));
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the
/// watchdog is on and meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
