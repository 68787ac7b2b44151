//! systemd's service notification protocol (sd_notify(3)): a daemon started
//! as `Type=notify` tells its service manager when it serves, reloads and
//! stops, and keeps its watchdog fed, with `KEY=VALUE` lines in one datagram
//! to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! written `@name`). Outside systemd the variable is unset and nothing is
//! sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// What a daemon reports to its service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Serving: startup is complete, or a reload finished (`READY=1`).
    Ready,
    /// A reload began (`RELOADING=1`). `monotonic_usec` is CLOCK_MONOTONIC
    /// at its start, which systemd 253 and later require to tell this reload
    /// from an earlier one.
    Reloading { monotonic_usec: u64 },
    /// Shutting down (`STOPPING=1`).
    Stopping,
    /// Alive: the watchdog is fed (`WATCHDOG=1`).
    Watchdog,
}

impl Notice {
    /// A reload that begins now.
    pub fn reloading_now() -> Notice {
        Notice::Reloading {
            monotonic_usec: monotonic_usec(),
        }
    }

    /// The datagram: newline-separated assignments.
    pub fn message(&self) -> String {
        match self {
            Notice::Ready => "READY=1".into(),
            Notice::Reloading { monotonic_usec } => {
                format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
            }
            Notice::Stopping => "STOPPING=1".into(),
            Notice::Watchdog => "WATCHDOG=1".into(),
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares
/// `MONOTONIC_USEC` with (`Instant` does not expose its value).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec into memory we own;
    // CLOCK_MONOTONIC always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// The service manager a daemon reports to: the notification socket, and
/// how often the watchdog wants to hear from it.
#[derive(Debug)]
pub struct Supervisor {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Supervisor {
    /// From the environment systemd sets: `$NOTIFY_SOCKET`, and
    /// `$WATCHDOG_USEC` / `$WATCHDOG_PID`. Without `$NOTIFY_SOCKET` every
    /// notice is dropped (not started by systemd, or not `Type=notify`).
    pub fn from_env() -> io::Result<Supervisor> {
        let watchdog = watchdog_interval(
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(s) if !s.is_empty() => Supervisor::new(&s, watchdog),
            _ => Ok(Supervisor::none()),
        }
    }

    /// Notices go to `socket` (a path, or `@name` for an abstract socket);
    /// the watchdog wants one every `watchdog`.
    pub fn new(socket: &OsStr, watchdog: Option<Duration>) -> io::Result<Supervisor> {
        Ok(Supervisor {
            socket: Some(connect(socket)?),
            watchdog,
        })
    }

    /// One that sends nothing.
    pub fn none() -> Supervisor {
        Supervisor {
            socket: None,
            watchdog: None,
        }
    }

    /// Whether notices go anywhere.
    pub fn is_listening(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send [`Notice::Watchdog`]: half the watchdog timeout,
    /// as sd_watchdog_enabled(3) advises; `None` when no watchdog watches
    /// this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.socket.is_some())
    }

    /// Sends one notice; `Ok` also when there is nowhere to send it.
    pub fn notify(&self, n: Notice) -> io::Result<()> {
        if let Some((sock, addr)) = &self.socket {
            sock.send_to_addr(n.message().as_bytes(), addr)?;
        }
        Ok(())
    }

    /// Sends one notice; a failure is logged, never fatal (the service
    /// manager, not the daemon, decides what a missed notice means).
    pub fn tell(&self, n: Notice) {
        if let Err(e) = self.notify(n) {
            tracing::warn!("NOTIFY_SOCKET: sending {:?}: {e}", n.message());
        }
    }
}

/// The ticker a daemon's main loop feeds the watchdog from: one tick per
/// [`Supervisor::watchdog_interval`], `None` without a watchdog.
pub fn watchdog_timer(s: &Supervisor) -> Option<tokio::time::Interval> {
    s.watchdog_interval().map(|d| {
        let mut t = tokio::time::interval(d.max(Duration::from_millis(10)));
        // A late tick is sent late, not made up for in a burst.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// The next tick of a [`watchdog_timer`]; never, without one.
pub async fn next_watchdog_tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// An unbound datagram socket and the address of `$NOTIFY_SOCKET`.
fn connect(target: &OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(target)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={}: neither an absolute path nor @abstract",
                    target.to_string_lossy()
                ),
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// Half of `$WATCHDOG_USEC`, if it is a positive number and `$WATCHDOG_PID`
/// is unset or names `own_pid` (a child that inherited the variables is not
/// the watched process).
pub fn watchdog_interval(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        assert_eq!(
            watchdog_interval(os("10000000"), None, 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval(os("10000000"), os("7"), 7),
            Some(Duration::from_secs(5))
        );
        // Another process's watchdog, none, or garbage.
        assert_eq!(watchdog_interval(os("10000000"), os("8"), 7), None);
        assert_eq!(watchdog_interval(None, os("7"), 7), None);
        assert_eq!(watchdog_interval(os("0"), None, 7), None);
        assert_eq!(watchdog_interval(os("-5"), None, 7), None);
        assert_eq!(watchdog_interval(os("ten"), None, 7), None);
        assert_eq!(watchdog_interval(os("10000000"), os("x"), 7), None);
    }

    #[test]
    fn messages_are_the_protocols_assignments() {
        assert_eq!(Notice::Ready.message(), "READY=1");
        assert_eq!(Notice::Stopping.message(), "STOPPING=1");
        assert_eq!(Notice::Watchdog.message(), "WATCHDOG=1");
        assert_eq!(
            Notice::Reloading { monotonic_usec: 42 }.message(),
            "RELOADING=1\nMONOTONIC_USEC=42"
        );
        let Notice::Reloading { monotonic_usec } = Notice::reloading_now() else {
            unreachable!()
        };
        assert!(monotonic_usec > 0);
    }

    #[test]
    fn a_relative_socket_path_is_refused() {
        assert!(connect(OsStr::new("run/notify")).is_err());
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let s = Supervisor::none();
        assert!(!s.is_listening());
        assert_eq!(s.watchdog_interval(), None);
        assert!(s.notify(Notice::Ready).is_ok());
    }
}
