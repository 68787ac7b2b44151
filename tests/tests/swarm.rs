//! The load tool against a real gateway, small enough for CI: a swarm of
//! simulated hosts (real WireGuard handshakes and certificates over UDP)
//! attaches, re-attaches after a SIGKILL and restart of the gateway, and a
//! handshake flood from unknown keys at ten times the rate limit is answered
//! with cookies while real hosts join. `bench/swarm.sh` is the measurement;
//! this runs the same script and checks what must hold at any size.

mod common;

use common::{bin_dir, netns_or_skip};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const HOSTS: u64 = 300;
const FLOOD_HOSTS: u64 = 20;
/// The gateway's handshake rate limit; the flood sends ten times this.
const RATE: u64 = 100;
const FLOOD_SECS: u64 = 5;

#[test]
fn a_swarm_attaches_survives_a_restart_and_a_flood_gets_cookies() {
    if !netns_or_skip("a_swarm_attaches_survives_a_restart_and_a_flood_gets_cookies") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cubenet-swarm-")
        .tempdir()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/swarm.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("NO_BUILD", "1")
        .env("CUBENET_BIN_DIR", bin_dir())
        .env("HOSTS", HOSTS.to_string())
        .env("FLOOD_HOSTS", FLOOD_HOSTS.to_string())
        .env("RATE", RATE.to_string())
        .env("FLOOD_SECS", FLOOD_SECS.to_string())
        .env("RESULTS", dir.path())
        .output()
        .expect("running bench/swarm.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The swarm itself fails when not every host attached, when the
    // gateway's own count of attached peers differs, or when it panicked.
    assert!(
        out.status.success(),
        "bench/swarm.sh failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    let read = |f: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.path().join(f)).unwrap()).unwrap()
    };

    let swarm = read("swarm.json");
    assert_eq!(swarm["hosts"], HOSTS);
    // Every host noticed the restart by its probes and attached anew.
    assert_eq!(swarm["restart"]["swarm"]["detached"], HOSTS, "{swarm}");
    for phase in ["start", "restart"] {
        let drops = &swarm[phase]["gateway_drops"];
        assert_eq!(drops["spoofed"], 0, "{phase}: {drops}");
        assert_eq!(drops["bad_cert"], 0, "{phase}: {drops}");
    }

    let flood = read("flood.json");
    let f = &flood["flood"];
    // The cookie mechanism engaged: the gateway answered initiations above
    // the limit with cookies, and the flooder received them.
    assert!(
        f["gateway_drops"]["cookies_sent"].as_u64().unwrap() > 0,
        "{f}"
    );
    assert!(f["flood"]["cookie_replies"].as_u64().unwrap() > 0, "{f}");
    // Full handshakes with the unknown keys stayed within the rate limit:
    // at most RATE per second of the flood (plus the second it started).
    let responses = f["flood"]["handshake_responses"].as_u64().unwrap();
    let seconds = f["seconds"].as_f64().unwrap().ceil() as u64;
    assert!(
        responses <= RATE * (seconds + 1),
        "{responses} handshakes answered for the flood in {seconds} s: {f}"
    );
    assert_eq!(flood["hosts"], FLOOD_HOSTS);
}
