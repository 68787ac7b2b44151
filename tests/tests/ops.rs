//! Operations: the example configs parse, the metrics endpoints answer,
//! expiring certificates are warned about, and the example dashboard and
//! alert rules are valid and ask only for metrics the daemons export.

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

    // FRR's example passes vtysh's check (--dryrun: no daemon needed).
    let frr = examples_dir().join("site-router/frr.conf");
    let out = Command::new("vtysh")
        .arg("--dryrun")
        .arg("-f")
        .arg(&frr)
        .output();
    match out {
        Ok(o) => assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("vtysh: {e} (install frr)"),
    }
}

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every `cubenet_...` metric name in a text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cubenet_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Part of a longer identifier (e.g. a rule name) is not a metric.
        let glued = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !glued {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names the example dashboard and alert rules use.
fn metrics_used_by_examples() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for f in ["grafana/cubenet.json", "prometheus/cubenet-rules.yml"] {
        let text = std::fs::read_to_string(examples_dir().join(f)).unwrap();
        names.extend(metric_names(&text));
    }
    names
}

/// Every PromQL query of a Grafana dashboard (panels and variables).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e} (install prometheus)"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

/// The alert rules pass `promtool check rules` and their unit tests (each
/// alert fires on its series, not before its `for`), the example scrape
/// config checks, and every query of the dashboard is valid PromQL.
#[test]
fn the_alert_rules_and_the_dashboard_check() {
    let dir = examples_dir().join("prometheus");
    promtool(&["check", "rules", "cubenet-rules.yml"], &dir);
    promtool(&["test", "rules", "cubenet-rules.test.yml"], &dir);
    promtool(&["check", "config", "prometheus.yml"], &dir);

    let text = std::fs::read_to_string(examples_dir().join("grafana/cubenet.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut ids = std::collections::BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {id} has no gridPos"
        );
    }
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    assert!(queries.len() > 20, "{} queries", queries.len());
    // Each query becomes a recording rule, with Grafana's variables filled
    // in, so promtool parses it.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$job", ".*");
        let q = serde_json::to_string(&q).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {q}\n"
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], tmp.path());

    // Sections of the dashboard and groups of alerts the operators need.
    let used = metrics_used_by_examples();
    for m in [
        "cubenet_routed_neighbor_established",
        "cubenet_routed_neighbor_bfd_up",
        "cubenet_routed_neighbor_flaps_total",
        "cubenet_routed_neighbor_suppressed",
        "cubenet_routed_routes",
        "cubenet_overlayd_peer_healthy",
        "cubenet_overlayd_peer_rx_bytes_total",
        "cubenet_overlayd_drops_total",
        "cubenet_overlayd_cert_days_left",
    ] {
        assert!(used.contains(m), "the examples do not use {m}");
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
    // A BIRD router at fra: BFD with it (the gateways watch each other
    // through overlayd instead).
    let lab =
        Lab::up("routed = true\n[[site]]\nname = \"fra\"\nbird = true\n[[site]]\nname = \"ams\"\n");
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
        // A gateway: overlayd's probes watch the tunnel, not BFD.
        "cubenet_routed_neighbor_tunnel_up{neighbor=\"ams-gw1\"} 1",
        "cubenet_routed_neighbor_bfd_up{neighbor=\"fra-bird\"}",
        "cubenet_routed_routes{origin=\"learned\"}",
        "cubenet_routed_neighbor_penalty{neighbor=\"ams-gw1\"}",
    ] {
        assert!(m.contains(want), "routed metrics lack {want:?}:\n{m}");
    }

    // Every metric the example dashboard and alert rules use has a sample
    // in these scrapes (a host's overlayd, a gateway's routed).
    let scraped = format!("{}{m}", scrape(&lab, "fra-h1", "127.0.0.1:9469"));
    let exported: std::collections::BTreeSet<&str> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in metrics_used_by_examples() {
        assert!(
            exported.contains(name.as_str()),
            "the examples use {name}, which no daemon exported:\n{scraped}"
        );
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
