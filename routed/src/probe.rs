//! Health checks of site prefixes (`[[announce]] probe`): what is checked
//! (ICMP echo, a TCP connect, an HTTP GET), run in-process and
//! concurrently, one task per prefix; and when a prefix counts as healthy
//! (`rise` passes in a row to come up, `fall` failures in a row to go
//! down), decided without I/O so the router stays on its clock.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// ICMP / ICMPv6 echo: an address, or `icmp://ADDR`.
    Icmp(IpAddr),
    /// A TCP connection accepted: `tcp://ADDR:PORT`.
    Tcp(SocketAddr),
    /// `http://ADDR[:PORT]/PATH`: a GET answered with `expect` (any 2xx
    /// when unset).
    Http {
        addr: SocketAddr,
        path: String,
        expect: Option<u16>,
    },
}

impl FromStr for Check {
    type Err = String;

    fn from_str(s: &str) -> Result<Check, String> {
        let host_port =
            |rest: &str, default: Option<u16>| -> Result<SocketAddr, String> {
                if let Ok(a) = rest.parse::<SocketAddr>() {
                    return Ok(a);
                }
                let ip = rest.trim_start_matches('[').trim_end_matches(']');
                match (ip.parse::<IpAddr>(), default) {
                    (Ok(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
                    _ => Err(format!(
                    "{rest:?}: expected an IP address{} (no names: a probe must not depend on DNS)",
                    if default.is_some() { " with an optional :port" } else { " and :port" }
                )),
                }
            };
        if let Some(rest) = s.strip_prefix("icmp://") {
            return rest
                .parse()
                .map(Check::Icmp)
                .map_err(|_| format!("{rest:?}: expected an IP address"));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            return host_port(rest, None).map(Check::Tcp);
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let (hp, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("{path:?}: a path without spaces"));
            }
            return Ok(Check::Http {
                addr: host_port(hp, Some(80))?,
                path: path.to_string(),
                expect: None,
            });
        }
        let kinds = || {
            format!(
                "{s:?}: expected an address, icmp://ADDR, tcp://ADDR:PORT or http://ADDR[:PORT]/PATH"
            )
        };
        if s.contains("://") {
            return Err(kinds());
        }
        s.parse().map(Check::Icmp).map_err(|_| kinds())
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Icmp(a) => write!(f, "icmp://{a}"),
            Check::Tcp(a) => write!(f, "tcp://{a}"),
            Check::Http { addr, path, .. } => write!(f, "http://{addr}{path}"),
        }
    }
}

/// A prefix's probe and its rhythm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Whether a probed prefix is healthy: down until `rise` passes in a row,
/// then up until `fall` failures in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    rise: u32,
    fall: u32,
    up: bool,
    run: u32,
    pub passes: u64,
    pub failures: u64,
}

impl Health {
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            rise: rise.max(1),
            fall: fall.max(1),
            up: false,
            run: 0,
            passes: 0,
            failures: 0,
        }
    }

    pub fn up(&self) -> bool {
        self.up
    }

    /// Starts up (a reloaded probe that takes over an announced prefix):
    /// `fall` failures in a row withdraw it.
    pub fn set_up(&mut self) {
        self.up = true;
        self.run = 0;
    }

    /// One result; the new state when it changed.
    pub fn result(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.passes += 1;
        } else {
            self.failures += 1;
        }
        if ok == self.up {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let need = if self.up { self.fall } else { self.rise };
        if self.run < need {
            return None;
        }
        self.up = ok;
        self.run = 0;
        Some(ok)
    }
}

/// Runs one check, within `timeout`.
pub async fn run(check: &Check, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_inner(check, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn run_inner(check: &Check, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    match check {
        Check::Icmp(a) => {
            let a = *a;
            tokio::task::spawn_blocking(move || echo(a, timeout))
                .await
                .map_err(|e| format!("echo task: {e}"))?
        }
        Check::Tcp(a) => tokio::net::TcpStream::connect(a)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        Check::Http { addr, path, expect } => {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let host = match addr.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: routed\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            // The status line is all we need; read at most 1 KiB.
            let mut buf = Vec::with_capacity(128);
            let mut chunk = [0u8; 256];
            while !buf.contains(&b'\n') && buf.len() < 1024 {
                let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let line = String::from_utf8_lossy(&buf);
            let status = http_status(&line).ok_or_else(|| {
                format!(
                    "not an HTTP answer: {:?}",
                    line.lines().next().unwrap_or("")
                )
            })?;
            let ok = match expect {
                Some(e) => status == *e,
                None => (200..300).contains(&status),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("HTTP status {status}"))
            }
        }
    }
}

/// The status code of an HTTP/1.x status line.
fn http_status(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    let mut w = line.split_whitespace();
    if !w.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = w.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// One ICMP echo to `to`: over a datagram ICMP socket where the group may
/// use one (`net.ipv4.ping_group_range`), else over a raw socket
/// (`CAP_NET_RAW`). Blocking, with the socket's own timeout.
fn echo(to: IpAddr, timeout: Duration) -> Result<(), String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let (domain, proto) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (sock, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => (s, false),
        Err(_) => (
            Socket::new(domain, Type::RAW, Some(proto))
                .map_err(|e| format!("ICMP socket (needs ping_group_range or CAP_NET_RAW): {e}"))?,
            true,
        ),
    };
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(|e| format!("socket: {e}"))?;
    let target = SockAddr::from(SocketAddr::new(to, 0));
    sock.connect(&target).map_err(|e| format!("connect: {e}"))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let seq = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0)
        & 0xffff) as u16;
    let (request, reply) = if to.is_ipv4() { (8u8, 0u8) } else { (128, 129) };
    let mut msg = vec![request, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(b"cubenet routed probe");
    if to.is_ipv4() {
        // ICMPv6's checksum the kernel fills in; ICMP's not on raw sockets.
        let ck = !ones_sum(&msg);
        msg[2..4].copy_from_slice(&ck.to_be_bytes());
    }
    sock.send(&msg).map_err(|e| format!("send: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("no echo reply".into())
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        // SAFETY: recv initialised the first n bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // A raw IPv4 socket hands over the IP header too.
        let icmp = if raw && to.is_ipv4() {
            let ihl = usize::from(got.first().map_or(0, |b| b & 0x0f)) * 4;
            got.get(ihl..).unwrap_or(&[])
        } else {
            &got[..]
        };
        // A datagram socket's kernel chose the id itself.
        let id_ok = !raw || icmp.get(4..6) == Some(&id.to_be_bytes()[..]);
        if icmp.first() == Some(&reply) && id_ok && icmp.get(6..8) == Some(&seq.to_be_bytes()[..]) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err("no echo reply".into());
        }
    }
}

fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_and_errors_say_what_was_expected() {
        assert_eq!(
            "192.168.1.50".parse::<Check>(),
            Ok(Check::Icmp("192.168.1.50".parse().unwrap()))
        );
        assert_eq!(
            "icmp://fd00::5".parse::<Check>(),
            Ok(Check::Icmp("fd00::5".parse().unwrap()))
        );
        assert_eq!(
            "tcp://192.168.1.50:5432".parse::<Check>(),
            Ok(Check::Tcp("192.168.1.50:5432".parse().unwrap()))
        );
        assert_eq!(
            "http://192.168.1.50/healthz".parse::<Check>(),
            Ok(Check::Http {
                addr: "192.168.1.50:80".parse().unwrap(),
                path: "/healthz".into(),
                expect: None
            })
        );
        assert_eq!(
            "http://[fd00::5]:8080".parse::<Check>(),
            Ok(Check::Http {
                addr: "[fd00::5]:8080".parse().unwrap(),
                path: "/".into(),
                expect: None
            })
        );
        for (bad, says) in [
            ("tcp://192.168.1.50", "and :port"),
            ("http://db.example/", "no names"),
            ("udp://1.2.3.4:5", "expected an address, icmp://"),
            ("db.example", "expected an address"),
        ] {
            let e = bad.parse::<Check>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let c: Check = "tcp://[fd00::5]:443".parse().unwrap();
        assert_eq!(c.to_string(), "tcp://[fd00::5]:443");
    }

    #[test]
    fn health_rises_and_falls_only_on_runs() {
        let mut h = Health::new(2, 3);
        assert!(!h.up());
        assert_eq!(h.result(true), None);
        assert_eq!(h.result(false), None, "a failure breaks the run");
        assert_eq!(h.result(true), None);
        assert_eq!(h.result(true), Some(true));
        assert_eq!(h.result(false), None);
        assert_eq!(h.result(false), None);
        assert_eq!(h.result(true), None, "a pass breaks the run");
        assert_eq!(h.result(false), None);
        assert_eq!(h.result(false), None);
        assert_eq!(h.result(false), Some(false));
        assert_eq!((h.passes, h.failures), (4, 6));
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(http_status("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            http_status("HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(http_status("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(http_status("HTTP/1.1 20"), None);
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_real_sockets() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await.unwrap();
                let _ = s
                    .write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes())
                    .await;
            }
            l
        });
        let t = Duration::from_secs(5);
        let http = Check::Http {
            addr,
            path: "/healthz".into(),
            expect: None,
        };
        assert_eq!(run(&http, t).await, Ok(()));
        assert_eq!(run(&http, t).await, Err("HTTP status 503".into()));
        let l = server.await.unwrap();
        assert_eq!(run(&Check::Tcp(addr), t).await, Ok(()));
        drop(l);
        assert!(run(&Check::Tcp(addr), t).await.is_err(), "nothing listens");
    }
}
