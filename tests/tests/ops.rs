//! Operations: the example configs parse, the metrics endpoints answer,
//! expiring certificates are warned about.

mod common;

use common::{bin, netns_or_skip, ok, path_str, Lab};
use std::path::Path;
use std::process::Command;

fn cert(args: &[&str]) {
    ok(Command::new(bin("overlay-cert")).args(args));
}

/// An identity tree like /etc/cubenet under `root`, for the examples.
fn etc(root: &Path, role: &str) {
    let r = root.to_str().unwrap();
    for d in ["gateways", "hosts"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    cert(&[
        "ca",
        "--name",
        "example",
        "--network",
        "10.77.0.0/16",
        "--network",
        "fd77::/48",
        "--network",
        "192.168.10.0/24",
        "--out-dir",
        &format!("{r}/ca"),
    ]);
    std::fs::copy(root.join("ca/ca.crt"), root.join("ca.crt")).unwrap();
    let sign = |name: &str, ip: &str, role: &str, key: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "sign",
            "--ca-dir",
            &format!("{r}/ca"),
            "--name",
            name,
            "--ip",
            ip,
            "--role",
            role,
            "--site",
            "fra",
            "--key",
            key,
            "--out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| s.to_string()));
        ok(Command::new(bin("overlay-cert")).args(&a));
    };
    cert(&["keygen", "--out", &format!("{r}/node.key")]);
    if role == "host" {
        sign(
            "web1",
            "10.77.1.20/16",
            "host",
            &format!("{r}/node.key"),
            &format!("{r}/node.crt"),
            &[],
        );
    } else {
        sign(
            "fra-gw1",
            "10.77.1.1/16",
            "gateway",
            &format!("{r}/node.key"),
            &format!("{r}/node.crt"),
            &["--subnet", "192.168.10.0/24"],
        );
    }
    for (name, ip) in [
        ("fra-gw2", "10.77.1.2/16"),
        ("ams-gw1", "10.77.2.1/16"),
        ("par-gw1", "10.77.3.1/16"),
    ] {
        let key = format!("{r}/{name}.key");
        cert(&["keygen", "--out", &key]);
        sign(
            name,
            ip,
            "gateway",
            &key,
            &format!("{r}/gateways/{name}.crt"),
            &[],
        );
    }
    if role == "host" {
        // fra-gw1's cert for the host's [[gateway]] entry.
        let key = format!("{r}/fra-gw1.key");
        cert(&["keygen", "--out", &key]);
        sign(
            "fra-gw1",
            "10.77.1.1/16",
            "gateway",
            &key,
            &format!("{r}/gateways/fra-gw1.crt"),
            &[],
        );
    }
}

fn example(name: &str, root: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let text = std::fs::read_to_string(&src)
        .unwrap()
        .replace("/etc/cubenet", root.to_str().unwrap());
    let out = root.join(Path::new(name).file_name().unwrap());
    std::fs::write(&out, text).unwrap();
    out
}

#[test]
fn the_examples_parse() {
    let host = tempfile::tempdir().unwrap();
    etc(host.path(), "host");
    let cfg = example("host/overlayd.toml", host.path());
    ok(Command::new(bin("overlayd")).args(["check", "--config", cfg.to_str().unwrap()]));

    let gw = tempfile::tempdir().unwrap();
    etc(gw.path(), "gateway");
    let cfg = example("gateway/overlayd.toml", gw.path());
    ok(Command::new(bin("overlayd")).args(["check", "--config", cfg.to_str().unwrap()]));
    let cfg = example("gateway/routed.toml", gw.path());
    let out = ok(Command::new(bin("routed")).args(["check", "--config", cfg.to_str().unwrap()]));
    assert!(out.contains("4 neighbour(s), 1 prefix(es)"), "{out}");

    // BIRD's example parses (-p: parse only).
    let bird = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site-router/bird.conf");
    let out = Command::new("bird").args(["-p", "-c"]).arg(&bird).output();
    match out {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("bird: {e} (install bird2)"),
    }
}

fn scrape(lab: &Lab, node: &str, addr: &str) -> String {
    let out = lab.exec(node, &["curl", "-sf", &format!("http://{addr}/metrics")]);
    assert!(out.status.success(), "scraping {addr} in {node}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn metrics_are_scraped_and_expiry_is_warned() {
    if !netns_or_skip("metrics_are_scraped_and_expiry_is_warned") {
        return;
    }
    let lab = Lab::up("routed = true\n[[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n");
    // fra-h1 gets a certificate that expires in 10 days, and metrics.
    let h1 = lab.node("fra-h1");
    lab.resign("fra-h1", &["--days", "10"]);
    let cfg = path_str(&h1.overlayd_config);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("metrics_listen = \"127.0.0.1:9469\"\n{text}")).unwrap();
    let gw = lab.node("fra-gw1");
    let rcfg = path_str(gw.routed_config.as_deref().unwrap());
    let text = std::fs::read_to_string(&rcfg).unwrap();
    std::fs::write(
        &rcfg,
        format!("metrics_listen = \"127.0.0.1:9470\"\n{text}"),
    )
    .unwrap();
    for n in ["fra-h1", "fra-gw1"] {
        lab.lab_ok(&["kill", n]);
        lab.lab_ok(&["start", n]);
    }
    lab.lab_ok(&["wait"]);
    let out = lab.ping("fra-h1", "10.77.2.11", 2);
    assert!(out.status.success());

    let m = scrape(&lab, "fra-h1", "127.0.0.1:9469");
    for want in [
        "# TYPE cubenet_overlayd_peer_rx_bytes_total counter",
        "cubenet_overlayd_peer_healthy{peer=\"fra-gw1\",role=\"gateway\"} 1",
        "cubenet_overlayd_drops_total{reason=\"spoofed\"} 0",
        "cubenet_overlayd_info{name=\"fra-h1\",role=\"host\",site=\"fra\"} 1",
    ] {
        assert!(m.contains(want), "overlayd metrics lack {want:?}:\n{m}");
    }
    let days = m
        .lines()
        .find_map(|l| l.strip_prefix("cubenet_overlayd_cert_days_left "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("cert_days_left");
    assert!(days <= 10.0, "{days}");
    let log = std::fs::read_to_string(&h1.log).unwrap();
    assert!(
        log.contains("certificate expires in"),
        "no expiry warning in the log"
    );

    let m = scrape(&lab, "fra-gw1", "127.0.0.1:9470");
    for want in [
        "cubenet_routed_neighbor_established{neighbor=\"ams-gw1\",state=\"established\"} 1",
        "cubenet_routed_neighbor_bfd_up{neighbor=\"ams-gw1\"} 1",
        "cubenet_routed_routes{origin=\"learned\"}",
        "cubenet_routed_neighbor_penalty{neighbor=\"ams-gw1\"}",
    ] {
        assert!(m.contains(want), "routed metrics lack {want:?}:\n{m}");
    }
}

/// `--version` of every program prints its version and the commit it was
/// built from (the checkout's HEAD here, when git can tell).
#[test]
fn every_program_says_its_version_and_commit() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for program in ["overlayd", "routed", "overlay-cert", "cubenet-lab"] {
        let v = ok(Command::new(bin(program)).arg("--version"));
        let v = v.trim();
        let rest = v
            .strip_prefix(&format!("{program} {} (", env!("CARGO_PKG_VERSION")))
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{program} --version: {v:?}"));
        match &head {
            Some(h) => assert_eq!(rest, h, "{program} built from another commit"),
            None => assert!(!rest.is_empty(), "{program}: {v:?}"),
        }
    }
}
