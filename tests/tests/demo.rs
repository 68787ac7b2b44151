//! The README's demo command runs green: every step of `examples/demo.sh`
//! checks its own result (reachability, failover gap, suppression, firewall,
//! revocation) and the script fails if one does not hold.

mod common;

use common::{bin_dir, netns_or_skip};
use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_runs_green() {
    if !netns_or_skip("the_demo_runs_green") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("cubenet-demo-")
        .tempdir()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("NO_BUILD", "1")
        .env("CUBENET_DEMO_DIR", dir.path().join("lab"))
        .env("CUBENET_BIN_DIR", bin_dir())
        .output()
        .expect("running examples/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for want in [
        "longest gap:",
        "suppressed",
        "par-h1 -> ams-h2: denied",
        "deny by the inbound default",
        "no answer (revoked)",
        "demo finished in",
    ] {
        assert!(
            stdout.contains(want),
            "demo output lacks {want:?}:\n{stdout}"
        );
    }
}
