//! What overlayd and routed share as daemons: Prometheus metrics and the
//! status page's HTML pieces, link-flap damping, the private control
//! socket, logging and CLI plumbing, and notices to systemd.

pub mod config;
pub mod ctl;
pub mod damping;
pub mod html;
pub mod metrics;
pub mod netlink;
pub mod notify;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::net::UnixListener;

/// What an accept loop does after `accept` failed: a process out of file
/// descriptors or memory waits a moment before it tries again instead of
/// spinning on the error (the connections it serves free them); anything
/// else (a connection gone before it was taken) goes on at once.
pub async fn after_accept_error(what: &str, e: &std::io::Error) {
    let exhausted = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if exhausted {
        tracing::warn!("{what}: accept: {e}; trying again in 100 ms");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    } else {
        tracing::debug!("{what}: accept: {e}");
    }
}

/// Binds a control socket with mode 0600 (no window where it is wider: the
/// umask is tightened around bind). A socket file nobody answers on is
/// left from a previous run and replaced.
pub fn bind_private_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask(2) cannot fail and only changes this process's file
    // creation mask; it is restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Logs to stderr through `tracing`, one line per event (JSON lines with
/// `json`); the filter comes from the environment variable `env`, default
/// `info`.
pub fn init_logs(json: bool, env: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init()
    } else {
        b.init()
    }
}

/// A closed pipe (`| head`) ends a CLI command quietly instead of a panic
/// in `println!`. Not for a daemon: it must survive a vanished client.
pub fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any
    // thread exists; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A log line about something a stranger can cause (a refused connection,
/// a bad packet) at most once per period, so it cannot flood the log; the
/// lines held back are counted and said with the next one.
pub struct LogLimit {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
    held: u64,
}

impl LogLimit {
    pub fn per_second() -> Self {
        LogLimit {
            period: std::time::Duration::from_secs(1),
            last: None,
            held: 0,
        }
    }

    /// `Some(suffix)` when a line may be written now: empty, or
    /// ` (N more since the last line)`; `None` when it is held back.
    pub fn note(&mut self, now: std::time::Instant) -> Option<String> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.period)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        let more = std::mem::take(&mut self.held);
        Some(if more == 0 {
            String::new()
        } else {
            format!(" ({more} more since the last line)")
        })
    }
}

#[cfg(test)]
mod log_limit_tests {
    use super::LogLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn one_line_a_second_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut l = LogLimit::per_second();
        assert_eq!(l.note(t0).as_deref(), Some(""));
        for i in 1..=1000 {
            assert_eq!(l.note(t0 + Duration::from_micros(i * 900)), None);
        }
        assert_eq!(
            l.note(t0 + Duration::from_secs(1)).as_deref(),
            Some(" (1000 more since the last line)")
        );
        assert_eq!(l.note(t0 + Duration::from_secs(3)).as_deref(), Some(""));
    }
}
