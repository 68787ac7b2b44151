//! Notices reach the socket in `$NOTIFY_SOCKET` as systemd reads them, and
//! the watchdog interval comes from `$WATCHDOG_USEC` / `$WATCHDOG_PID`.
//! One test per process touches the environment, so it is the only test
//! in this file.

use cubenet_daemon::notify::{Notice, Supervisor};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notice within 5 s");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
}

#[test]
fn notices_arrive_at_notify_socket_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");

    // Edition 2021: set_var is safe; no other thread of this test binary
    // reads the environment.
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "4000000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    let s = Supervisor::from_env().expect("supervisor");
    assert!(s.is_listening());
    assert_eq!(s.watchdog_interval(), Some(Duration::from_secs(2)));

    s.notify(Notice::Ready).expect("send");
    assert_eq!(recv(&sock), "READY=1");
    s.notify(Notice::reloading_now()).expect("send");
    let r = recv(&sock);
    let usec = r
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("unexpected {r:?}"));
    assert!(usec.parse::<u64>().expect("a number") > 0);
    s.notify(Notice::Watchdog).expect("send");
    assert_eq!(recv(&sock), "WATCHDOG=1");
    s.notify(Notice::Stopping).expect("send");
    assert_eq!(recv(&sock), "STOPPING=1");

    // Another process's watchdog is not ours to feed.
    std::env::set_var("WATCHDOG_PID", "1");
    let s = Supervisor::from_env().expect("supervisor");
    assert_eq!(s.watchdog_interval(), None);

    // An abstract socket (`@name`), as some service managers hand out.
    let name = format!("cubenet-notify-test-{}", std::process::id());
    let abs = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        UnixDatagram::bind_addr(&addr).expect("bind abstract")
    };
    abs.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
    std::env::remove_var("WATCHDOG_USEC");
    let s = Supervisor::from_env().expect("supervisor");
    assert_eq!(s.watchdog_interval(), None);
    s.notify(Notice::Ready).expect("send");
    assert_eq!(recv(&abs), "READY=1");

    // Outside systemd: nothing to send to, nothing fails.
    std::env::remove_var("NOTIFY_SOCKET");
    let s = Supervisor::from_env().expect("supervisor");
    assert!(!s.is_listening());
    s.notify(Notice::Ready).expect("no-op");
}
