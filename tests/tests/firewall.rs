//! The per-server firewall end to end: real overlayd nodes in namespaces,
//! rules by name and group resolved through the gateway, TCP services,
//! replies, a reload that cuts a flow, and `explain` agreeing with what the
//! packets did.

mod common;

use common::{bin, netns_or_skip, ok, path_str, tcp_send, Lab, TcpServer};
use serde_json::Value;
use std::process::Command;

const H1: &str = "10.77.1.11";
const H2: &str = "10.77.1.12";
const H3: &str = "10.77.1.13";

const RULES: &str = r#"
[firewall]
inbound_default = "deny"
[[firewall.inbound]]
action = "deny"
proto = "tcp"
port = "7100"
from = ["name:fw-h2"]
[[firewall.inbound]]
action = "allow"
proto = "tcp"
port = "7000-7100"
from = ["group:db-clients"]
[[firewall.inbound]]
action = "allow"
proto = "icmp"
[[firewall.outbound]]
action = "deny"
proto = "tcp"
port = "7200"
"#;

fn firewall(lab: &Lab, node: &str) -> Value {
    lab.overlayd(node)["firewall"].clone()
}

fn hits(lab: &Lab, node: &str, dir: &str, i: usize) -> u64 {
    firewall(lab, node)[dir][i]["hits"].as_u64().unwrap_or(0)
}

/// A TCP transfer that gives up after 3 s (a firewall drop is silent).
fn try_send(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(
        from,
        &[
            "timeout",
            "3",
            bin("cubenet-tcpcheck").to_str().unwrap(),
            "send",
            to,
            "100000",
        ],
    )
    .status
    .success()
}

fn explain(cfg: &str, args: &[&str]) -> Value {
    let mut a = vec!["firewall", "explain", "--json", "--config", cfg];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(Command::new(bin("overlayd")).args(&a))).unwrap()
}

#[test]
fn rules_by_name_and_group_replies_reload_and_explain() {
    if !netns_or_skip("rules_by_name_and_group_replies_reload_and_explain") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fw\"\ngateways = 1\nhosts = 3\n");
    // fw-h2 joins the group db-clients: a new certificate, same key.
    let h2_cert = path_str(&lab.node("fw-h2").cert);
    lab.resign("fw-h2", &["--groups", "host,db-clients"]);
    lab.lab_ok(&["kill", "fw-h2"]);
    lab.lab_ok(&["start", "fw-h2"]);
    lab.lab_ok(&["wait"]);

    // fw-h1 gets its rules and reloads them.
    let cfg = path_str(&lab.node("fw-h1").overlayd_config);
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{base}{RULES}")).unwrap();
    lab.lab_ok(&["kill", "fw-h1", "--signal", "HUP"]);
    lab.wait_for("the firewall to be on", |l| {
        firewall(l, "fw-h1")["enabled"] == true
    });

    // The group may reach the service; the identity of fw-h2 is learned
    // from the gateway (the first SYN may go before it is known).
    let server = TcpServer::start(&lab, "fw-h1", "0.0.0.0:7000");
    let sent = tcp_send(&lab, "fw-h2", &format!("{H1}:7000"), 2_000_000);
    assert_eq!(server.result(), sent);
    assert!(hits(&lab, "fw-h1", "inbound", 1) >= 1);
    // Another host may not (its identity is known by now, and it is not in
    // the group).
    let _server = TcpServer::start(&lab, "fw-h1", "0.0.0.0:7001");
    let default_before = firewall(&lab, "fw-h1")["inbound_default_hits"]
        .as_u64()
        .unwrap();
    assert!(!try_send(&lab, "fw-h3", &format!("{H1}:7001")));
    let fw = firewall(&lab, "fw-h1");
    assert!(
        fw["inbound_default_hits"].as_u64().unwrap() > default_before,
        "{fw}"
    );
    drop(_server);
    // A deny before a broader allow wins: fw-h2 is in the group, but 7100
    // is denied to it by name first.
    let _server = TcpServer::start(&lab, "fw-h1", "0.0.0.0:7100");
    assert!(!try_send(&lab, "fw-h2", &format!("{H1}:7100")));
    assert!(hits(&lab, "fw-h1", "inbound", 0) >= 1);
    drop(_server);

    // Replies to fw-h1's own flows pass although inbound is default deny.
    let server = TcpServer::start(&lab, "fw-h2", "0.0.0.0:7300");
    let sent = tcp_send(&lab, "fw-h1", &format!("{H2}:7300"), 2_000_000);
    assert_eq!(server.result(), sent);
    // An outbound deny blocks.
    let _server = TcpServer::start(&lab, "fw-h2", "0.0.0.0:7200");
    assert!(!try_send(&lab, "fw-h1", &format!("{H2}:7200")));
    assert!(hits(&lab, "fw-h1", "outbound", 0) >= 1);
    drop(_server);

    // explain agrees with what the packets did.
    let e = explain(
        &cfg,
        &[
            "--from",
            H2,
            "--from-cert",
            &h2_cert,
            "--to",
            H1,
            "--proto",
            "tcp",
            "--port",
            "7100",
        ],
    );
    assert_eq!(
        (e["decision"].as_str(), e["rule_index"].as_u64()),
        (Some("deny"), Some(0)),
        "{e}"
    );
    let e = explain(
        &cfg,
        &[
            "--from",
            H2,
            "--from-cert",
            &h2_cert,
            "--to",
            H1,
            "--proto",
            "tcp",
            "--port",
            "7000",
        ],
    );
    assert_eq!(
        (e["decision"].as_str(), e["rule_index"].as_u64()),
        (Some("allow"), Some(1)),
        "{e}"
    );
    let e = explain(
        &cfg,
        &["--from", H3, "--to", H1, "--proto", "tcp", "--port", "7001"],
    );
    assert_eq!(
        (e["decision"].as_str(), e["rule_index"].as_u64()),
        (Some("deny"), None),
        "{e}"
    );
    let e = explain(
        &cfg,
        &["--from", H1, "--to", H2, "--proto", "tcp", "--port", "7200"],
    );
    assert_eq!(
        (e["direction"].as_str(), e["decision"].as_str()),
        (Some("outbound"), Some("deny"))
    );
    // Without its certificate fw-h2 is just an address: the default.
    let e = explain(
        &cfg,
        &["--from", H2, "--to", H1, "--proto", "tcp", "--port", "7000"],
    );
    assert_eq!(e["decision"], "deny", "{e}");

    // A reload that removes the ICMP allow cuts a running ping.
    let tracked = firewall(&lab, "fw-h1")["tracked_pass"]
        .as_u64()
        .unwrap_or(0);
    let mut ping = lab.spawn("fw-h2", &["ping", "-i", "0.1", "-c", "60", H1]);
    lab.wait_for("the ping flow to be tracked", |l| {
        firewall(l, "fw-h1")["tracked_pass"].as_u64().unwrap_or(0) >= tracked + 5
    });
    let without_icmp = RULES.replace(
        "[[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n",
        "",
    );
    std::fs::write(&cfg, format!("{base}{without_icmp}")).unwrap();
    lab.lab_ok(&["kill", "fw-h1", "--signal", "HUP"]);
    lab.wait_for("the reload to cut the flow", |l| {
        firewall(l, "fw-h1")["cut_by_reload"].as_u64().unwrap_or(0) >= 1
    });
    let out = ping.wait_with_output_lossy();
    let replies = out.lines().filter(|l| l.contains("bytes from")).count();
    assert!(replies < 55, "the ping kept getting replies: {replies}");
    let after: u64 = out
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(after < 59, "replies went on to the end (last seq {after})");
}

trait WaitLossy {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl WaitLossy for std::process::Child {
    fn wait_with_output_lossy(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(o) = self.stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        let _ = self.wait();
        s
    }
}
