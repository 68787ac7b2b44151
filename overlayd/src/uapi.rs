//! WireGuard's cross-platform userspace configuration protocol (UAPI,
//! <https://www.wireguard.com/xplatform/>), read-only: what `wg show`
//! asks a userspace implementation over `/var/run/wireguard/<ifname>.sock`.
//! This module is the protocol without the socket: parsing a request's
//! operation line and rendering the answer to `get=1` from a [`Device`]
//! the node fills in ([`crate::node::Node::wg_device`]). The socket server
//! is [`crate::uapi_socket`].
//!
//! What is left out, and why:
//! - `private_key`: never handed out. wireguard-tools derives the
//!   interface's public key from it (`ipc-uapi.h`: a `public_key` before
//!   any peer starts a peer, there is no key for the device's own public
//!   key), so `wg show` prints no public key for the interface and
//!   `wg show cube0 dump` prints `(none)` in both key columns; the node's
//!   public key is in `overlayd status`.
//! - `preshared_key`: overlayd uses none (wg shows none for a missing one).
//! - `fwmark`: overlayd sets none.
//!
//! `set=1` is refused with `errno=-1` (-EPERM): the configuration comes from
//! `overlayd.toml` and the certificates, not from UAPI.

use ipnet::IpNet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// The errno of a refused `set=1`: -EPERM (negative, as wireguard-go
/// writes errors and wireguard-tools reads a `set` answer), so `wg set`
/// prints "Operation not permitted".
pub const ERRNO_SET_REFUSED: i32 = -libc::EPERM;
/// The errno of a request overlayd does not understand: -EINVAL.
pub const ERRNO_INVALID: i32 = -libc::EINVAL;

/// A request's operation: its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `get=1`: the interface and its peers.
    Get,
    /// `set=1`: refused (its body is read and dropped).
    Set,
}

/// A request overlayd cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the first line is not key=value: \"{0}\"")]
    NotKeyValue(String),
    #[error("unknown operation \"{0}\" (only get=1 and set=1 exist)")]
    UnknownOperation(String),
    #[error("get=1 takes no keys, got \"{0}\"")]
    UnexpectedKey(String),
}

impl RequestError {
    pub fn errno(&self) -> i32 {
        ERRNO_INVALID
    }
}

/// Parses a request's first line (without its newline).
pub fn parse_operation(line: &str) -> Result<Operation, RequestError> {
    let Some((key, value)) = line.split_once('=') else {
        return Err(RequestError::NotKeyValue(clip(line)));
    };
    match (key, value) {
        ("get", "1") => Ok(Operation::Get),
        ("set", "1") => Ok(Operation::Set),
        _ => Err(RequestError::UnknownOperation(clip(line))),
    }
}

/// A line that follows `get=1` before the blank line that ends the
/// request: there must be none.
pub fn check_get_line(line: &str) -> Result<(), RequestError> {
    if line.is_empty() {
        Ok(())
    } else {
        Err(RequestError::UnexpectedKey(clip(line)))
    }
}

/// Untrusted input in an error message: escaped, at most 100 characters.
fn clip(s: &str) -> String {
    s.escape_debug().take(100).collect()
}

/// The answer a request ends with: `errno=N` and the blank line.
pub fn errno_reply(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

/// What `get=1` shows of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The UDP port overlayd listens on (the first `listen` address's).
    pub listen_port: u16,
    pub peers: Vec<DevicePeer>,
}

/// One peer, as `get=1` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePeer {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    /// When the current session's handshake completed, as time since the
    /// Unix epoch; `None` when there is no session.
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds; `None` is off.
    pub persistent_keepalive: Option<u16>,
    /// The sources accepted from the peer (see [`crate::node::Node::wg_device`]).
    pub allowed_ips: Vec<IpNet>,
}

/// The answer to `get=1`, ending with `errno=0` and the blank line, keys in
/// the order wireguard-go writes them.
pub fn render_get(d: &Device) -> String {
    let mut s = String::with_capacity(64 + d.peers.len() * 320);
    let _ = writeln!(s, "listen_port={}", d.listen_port);
    for p in &d.peers {
        let _ = writeln!(s, "public_key={}", hex(&p.public_key));
        let _ = writeln!(s, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            // IPv6 in brackets: SocketAddr's Display.
            let _ = writeln!(s, "endpoint={ep}");
        }
        let hs = p.last_handshake.unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", hs.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", hs.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive.unwrap_or(0)
        );
        for ip in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={ip}");
        }
    }
    s.push_str(&errno_reply(0));
    s
}

/// Lowercase hex, as UAPI writes keys.
fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[0] = b;
        k[31] = 0xff - b;
        k
    }

    #[test]
    fn get_renders_the_interface_and_every_peer() {
        let d = Device {
            listen_port: 51820,
            peers: vec![
                DevicePeer {
                    public_key: key(1),
                    endpoint: Some("198.51.100.7:51820".parse().unwrap()),
                    last_handshake: Some(Duration::new(1_796_601_600, 250_000_000)),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
                    persistent_keepalive: Some(25),
                    allowed_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                },
                DevicePeer {
                    public_key: key(2),
                    endpoint: Some("[2001:db8::2]:51821".parse().unwrap()),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: None,
                    allowed_ips: vec![],
                },
                DevicePeer {
                    public_key: key(3),
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: None,
                    allowed_ips: vec![
                        "10.77.1.10/32".parse().unwrap(),
                        "fd77:1::10/128".parse().unwrap(),
                    ],
                },
            ],
        };
        let k1 = "01000000000000000000000000000000000000000000000000000000000000fe";
        let k2 = "02000000000000000000000000000000000000000000000000000000000000fd";
        let k3 = "03000000000000000000000000000000000000000000000000000000000000fc";
        let want = format!(
            "listen_port=51820\n\
             public_key={k1}\n\
             protocol_version=1\n\
             endpoint=198.51.100.7:51820\n\
             last_handshake_time_sec=1796601600\n\
             last_handshake_time_nsec=250000000\n\
             tx_bytes=5678\n\
             rx_bytes=1234\n\
             persistent_keepalive_interval=25\n\
             allowed_ip=0.0.0.0/0\n\
             allowed_ip=::/0\n\
             public_key={k2}\n\
             protocol_version=1\n\
             endpoint=[2001:db8::2]:51821\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=0\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             public_key={k3}\n\
             protocol_version=1\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=0\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=10.77.1.10/32\n\
             allowed_ip=fd77:1::10/128\n\
             errno=0\n\
             \n"
        );
        assert_eq!(render_get(&d), want);
    }

    #[test]
    fn no_peers_is_the_interface_alone_and_never_a_private_key() {
        let d = Device {
            listen_port: 4500,
            peers: vec![],
        };
        let r = render_get(&d);
        assert_eq!(r, "listen_port=4500\nerrno=0\n\n");
        assert!(!r.contains("private_key"));
    }

    #[test]
    fn operations_parse_and_bad_ones_say_why() {
        assert_eq!(parse_operation("get=1"), Ok(Operation::Get));
        assert_eq!(parse_operation("set=1"), Ok(Operation::Set));
        assert_eq!(
            parse_operation("get=2"),
            Err(RequestError::UnknownOperation("get=2".into()))
        );
        assert_eq!(
            parse_operation("show"),
            Err(RequestError::NotKeyValue("show".into()))
        );
        assert_eq!(
            parse_operation(""),
            Err(RequestError::NotKeyValue(String::new()))
        );
        let e = parse_operation(&"x".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
        assert_eq!(e.errno(), ERRNO_INVALID);
        assert_eq!(check_get_line(""), Ok(()));
        assert_eq!(
            check_get_line("private_key=00"),
            Err(RequestError::UnexpectedKey("private_key=00".into()))
        );
        assert_eq!(errno_reply(ERRNO_SET_REFUSED), "errno=-1\n\n");
        assert_eq!(errno_reply(ERRNO_INVALID), "errno=-22\n\n");
    }

    proptest::proptest! {
        /// Any line is an operation or an error, never a panic.
        #[test]
        fn any_first_line_parses_or_errs(line in ".{0,200}") {
            match parse_operation(&line) {
                Ok(Operation::Get) => proptest::prop_assert_eq!(line.as_str(), "get=1"),
                Ok(Operation::Set) => proptest::prop_assert_eq!(line.as_str(), "set=1"),
                Err(e) => proptest::prop_assert!(e.to_string().chars().count() < 200),
            }
        }
    }
}
