//! `wg show` against a real overlayd: Debian's wireguard-tools asks the
//! node's UAPI socket (`/var/run/wireguard/cube0.sock`, the node's own in
//! the lab) and lists the same peers, endpoints and counters as
//! `overlayd status`; `wg set` is refused.

mod common;

use common::{netns_or_skip, Lab};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

/// One peer line of `wg show <if> dump`.
#[derive(Debug)]
struct DumpPeer {
    endpoint: String,
    allowed_ips: String,
    latest_handshake: u64,
    rx: u64,
    tx: u64,
    keepalive: String,
}

/// The interface line's fields and the peers by public key.
fn dump(lab: &Lab, node: &str) -> (Vec<String>, BTreeMap<String, DumpPeer>) {
    let out = lab.exec_ok(node, &["wg", "show", "cube0", "dump"]);
    let mut lines = out.lines();
    let iface: Vec<String> = lines
        .next()
        .expect("interface line")
        .split('\t')
        .map(str::to_string)
        .collect();
    let peers = lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 8, "peer line: {l:?}");
            let n = |s: &str| s.parse::<u64>().unwrap_or_else(|e| panic!("{s:?}: {e}"));
            (
                f[0].to_string(),
                DumpPeer {
                    endpoint: f[2].to_string(),
                    allowed_ips: f[3].to_string(),
                    latest_handshake: n(f[4]),
                    rx: n(f[5]),
                    tx: n(f[6]),
                    keepalive: f[7].to_string(),
                },
            )
        })
        .collect();
    (iface, peers)
}

#[test]
fn wg_show_lists_a_gateways_peers_and_wg_set_is_refused() {
    if !netns_or_skip("wg_show_lists_a_gateways_peers_and_wg_set_is_refused") {
        return;
    }
    let lab = Lab::up(
        "[[site]]\nname = \"wsa\"\ngateways = 1\nhosts = 2\n\
         [[site]]\nname = \"wsb\"\ngateways = 1\nhosts = 1\n",
    );
    // Traffic through the gateway, within the site and across.
    for dst in ["wsa-h2", "wsb-h1"] {
        let addr = lab.addrs(dst)[0].clone();
        let out = lab.ping("wsa-h1", &addr, 2);
        assert!(out.status.success(), "ping {dst}");
    }
    let gw = "wsa-gw1";
    // Every peer has a session (the lab converged: attached).
    lab.wait_for("every peer of the gateway to handshake", |l| {
        let st = l.overlayd(gw);
        let peers = st["peers"].as_array().unwrap();
        peers.len() == 3 && peers.iter().all(|p| p["last_handshake_s"].is_number())
    });
    let st = lab.overlayd(gw);
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let (iface, peers) = dump(&lab, gw);
    // No private key is handed out, and wg derives the interface's public
    // key from it: both columns are "(none)"; the port is overlayd's.
    assert_eq!(iface, ["(none)", "(none)", "51820", "off"], "{iface:?}");
    let want: Vec<&str> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["public_key"].as_str().unwrap())
        .collect();
    let got: Vec<&str> = peers.keys().map(String::as_str).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "the peers' keys");
    for p in st["peers"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let d = &peers[p["public_key"].as_str().unwrap()];
        assert_eq!(
            d.endpoint,
            p["endpoint"].as_str().unwrap(),
            "{name}: endpoint"
        );
        // A handshake within the last minutes, as a Unix time.
        assert!(
            d.latest_handshake > unix_now - 300 && d.latest_handshake <= unix_now + 1,
            "{name}: latest handshake {} (now {unix_now})",
            d.latest_handshake
        );
        assert!(d.rx > 0 && d.tx > 0, "{name}: {d:?}");
        if p["role"] == "host" {
            let addrs: Vec<String> = p["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let a = a.as_str().unwrap();
                    format!("{a}/{}", if a.contains(':') { 128 } else { 32 })
                })
                .collect();
            assert_eq!(d.allowed_ips, addrs.join(","), "{name}: allowed ips");
            assert_eq!(d.keepalive, "off", "{name}");
        } else {
            // Another gateway: any overlay source (the CA's networks).
            assert!(
                d.allowed_ips.contains("10.77.0.0/16"),
                "{name}: {}",
                d.allowed_ips
            );
            assert_eq!(d.keepalive, "25", "{name}");
        }
    }

    // The human form runs too.
    let show = lab.exec_ok(gw, &["wg", "show", "cube0"]);
    assert!(show.contains("listening port: 51820"), "{show}");
    for k in &want {
        assert!(show.contains(&format!("peer: {k}")), "{show}");
    }
    assert!(!show.contains("private key"), "{show}");

    // Configuration does not come through UAPI.
    let set = lab.exec(gw, &["wg", "set", "cube0", "listen-port", "1234"]);
    assert!(!set.status.success(), "wg set succeeded");
    let err = String::from_utf8_lossy(&set.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");

    // The socket is the node's own, 0600, and goes with overlayd.
    let sock = lab
        .path()
        .join("nodes")
        .join(gw)
        .join("wireguard/cube0.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    lab.lab_ok(&["kill", gw, "--daemon", "overlayd"]);
    lab.wait_for("the UAPI socket to go", |_| !sock.exists());
}
