//! overlayd end to end: real daemons in network namespaces, built by
//! `cubenet-lab`; traffic with ping and checksummed TCP transfers.

mod common;

use common::{bin, netns_or_skip, ok, path_str, tcp_send, Lab, TcpServer};
use std::process::Command;

fn drops(lab: &Lab, node: &str, reason: &str) -> u64 {
    lab.overlayd(node)["drops"][reason]
        .as_u64()
        .expect("drop counter")
}

/// Three pings from `node` with source `src` (an address its certificate
/// does not hold) to `dst`: none is answered.
fn spoofed_ping(lab: &Lab, node: &str, src: &str, dst: &str) {
    let out = lab.exec(
        node,
        &["ping", "-c", "3", "-i", "0.1", "-W", "1", "-I", src, dst],
    );
    assert!(!out.status.success(), "a spoofed ping got an answer");
}

/// The same traffic with TUN offload turned off: the plain path (one packet
/// per TUN read and write) that runs where the kernel refuses offload.
#[test]
fn plain_tun_io_without_offload() {
    if !netns_or_skip("plain_tun_io_without_offload") {
        return;
    }
    let lab = Lab::up("offload = false\n[[site]]\nname = \"pln\"\ngateways = 1\nhosts = 2\n");
    for node in ["pln-h1", "pln-gw1"] {
        let st = lab.overlayd(node);
        assert_eq!(
            st["datapath"]["tun_offload"], false,
            "{node}: {}",
            st["datapath"]
        );
    }
    for (listen, dst) in [
        ("0.0.0.0:7003", "10.77.1.12:7003"),
        ("[::]:7004", "[fd77::1:c]:7004"),
    ] {
        let server = TcpServer::start(&lab, "pln-h2", listen);
        let sent = tcp_send(&lab, "pln-h1", dst, 5_000_000);
        assert_eq!(server.result(), sent, "transfer to {dst} differs");
    }
}

#[test]
fn one_site_host_gateway_host_v4_and_v6() {
    if !netns_or_skip("one_site_host_gateway_host_v4_and_v6") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\ngateways = 1\nhosts = 2\n");
    let h2 = lab.addrs("fra-h2");
    assert_eq!(h2, vec!["10.77.1.12", "fd77::1:c"]);
    for dst in &h2 {
        let out = lab.ping("fra-h1", dst, 3);
        assert!(
            out.status.success(),
            "ping {dst}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The gateway knows both hosts, with the addresses of their certs.
    let gw = lab.overlayd("fra-gw1");
    let h1 = gw["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fra-h1")
        .unwrap()
        .clone();
    assert_eq!(h1["attached"], true);
    assert_eq!(
        h1["addresses"],
        serde_json::json!(["10.77.1.11", "fd77::1:b"])
    );
    // TCP transfers, v4 and v6, arrive intact.
    for (listen, dst) in [
        ("0.0.0.0:7001", "10.77.1.12:7001"),
        ("[::]:7002", "[fd77::1:c]:7002"),
    ] {
        let server = TcpServer::start(&lab, "fra-h2", listen);
        let sent = tcp_send(&lab, "fra-h1", dst, 20_000_000);
        assert_eq!(server.result(), sent, "transfer to {dst} differs");
    }
    // overlayd status --json has the contract's fields.
    let st = lab.overlayd("fra-h1");
    assert_eq!(st["datapath"]["tun_offload"], true, "{}", st["datapath"]);
    for f in ["name", "role", "addresses", "peers", "drops"] {
        assert!(!st[f].is_null(), "status lacks {f}");
    }
    let p = &st["peers"][0];
    for f in [
        "name",
        "role",
        "endpoint",
        "addresses",
        "last_handshake_s",
        "rx_bytes",
        "tx_bytes",
        "healthy",
    ] {
        assert!(!p[f].is_null(), "peer status lacks {f}: {p}");
    }
    assert!(p["tx_bytes"].as_u64().unwrap() > 20_000_000);
}

#[test]
fn two_sites_static_forwarding() {
    if !netns_or_skip("two_sites_static_forwarding") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n");
    for dst in lab.addrs("ams-h1") {
        let out = lab.ping("fra-h1", &dst, 3);
        assert!(
            out.status.success(),
            "ping {dst}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = lab.ping("ams-h1", "10.77.1.11", 2);
    assert!(out.status.success());
}

#[test]
fn spoofed_source_is_dropped_and_counted() {
    if !netns_or_skip("spoofed_source_is_dropped_and_counted") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\nhosts = 2\n");
    let before = drops(&lab, "fra-h1", "spoofed_local");
    // fra-h1's kernel claims an address its certificate does not hold:
    // overlayd on fra-h1 does not let it into the overlay. (A peer that
    // sends such a source anyway, like a plain WireGuard client, is
    // dropped by its gateway: `overlayd/tests/receive_fuzz.rs`.)
    lab.exec_ok(
        "fra-h1",
        &["ip", "addr", "add", "10.77.1.99/32", "dev", "cube0"],
    );
    spoofed_ping(&lab, "fra-h1", "10.77.1.99", "10.77.1.12");
    let after = drops(&lab, "fra-h1", "spoofed_local");
    assert!(after >= before + 3, "spoofed drops {before} -> {after}");
    // Its own address still works.
    assert!(lab.ping("fra-h1", "10.77.1.12", 2).status.success());
}

#[test]
fn revoked_host_is_cut_off_after_reload() {
    if !netns_or_skip("revoked_host_is_cut_off_after_reload") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\nhosts = 3\n");
    assert!(lab.ping("fra-h1", "10.77.1.12", 2).status.success());
    lab.revoke("fra-h2");
    lab.lab_ok(&["kill", "fra-gw1", "--signal", "HUP"]);
    lab.wait_for("fra-h2 detached at the gateway", |l| {
        l.overlayd("fra-gw1")["crl_serial"] == 1 && l.peer("fra-gw1", "fra-h2")["attached"] != true
    });
    assert!(
        !lab.ping("fra-h1", "10.77.1.12", 3).status.success(),
        "revoked host still reachable"
    );
    assert!(
        !lab.ping("fra-h2", "10.77.1.11", 3).status.success(),
        "revoked host still sends"
    );
    // Valid tunnels survived the reload.
    assert!(lab.ping("fra-h1", "10.77.1.13", 2).status.success());
    assert_eq!(lab.peer("fra-gw1", "fra-h3")["attached"], true);
}

#[test]
fn cert_of_another_ca_never_gets_a_packet_through() {
    if !netns_or_skip("cert_of_another_ca_never_gets_a_packet_through") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\nhosts = 2\n");
    let d = lab.path().join("rogue");
    std::fs::create_dir_all(&d).unwrap();
    let oc = |args: &[&str]| ok(Command::new(bin("overlay-cert")).current_dir(&d).args(args));
    oc(&[
        "ca",
        "--name",
        "rogue",
        "--network",
        "10.77.0.0/16",
        "--out-dir",
        "ca",
    ]);
    oc(&["keygen", "--out", "r.key"]);
    oc(&[
        "sign",
        "--ca-dir",
        "ca",
        "--name",
        "fra-h2",
        "--ip",
        "10.77.1.66/16",
        "--site",
        "fra",
        "--key",
        "r.key",
        "--out",
        "r.crt",
    ]);
    let gw = lab.node("fra-gw1");
    let gw_cert = &path_str(&gw.cert);
    // The rogue node trusts the real gateway (its cert is public) but holds
    // a cert of its own CA: the gateway must refuse it.
    std::fs::copy(lab.path().join("ca/ca.crt"), d.join("real-ca.crt")).unwrap();
    let cfg = format!(
        "control_socket = \"{}/r.sock\"\nlisten = [\"0.0.0.0:51899\"]\n[identity]\nkey = \"r.key\"\ncert = \"r.crt\"\nca = \"ca/ca.crt\"\n[interface]\nname = \"rogue0\"\n[[gateway]]\nname = \"fra-gw1\"\nendpoint = \"172.16.1.1:51820\"\npublic_key = \"{}\"\n",
        d.display(),
        serde_json::from_str::<serde_json::Value>(&ok(Command::new(bin("overlay-cert")).args(["print", "--json", gw_cert])))
            .unwrap()["public_key"]
            .as_str()
            .unwrap()
    );
    std::fs::write(d.join("r.toml"), cfg).unwrap();
    let cfg_path = d.join("r.toml");
    let mut rogue = lab.spawn(
        "fra-h2",
        &[
            bin("overlayd").to_str().unwrap(),
            "run",
            "--config",
            cfg_path.to_str().unwrap(),
        ],
    );
    lab.wait_for("the gateway to refuse the rogue cert", |l| {
        l.overlayd("fra-gw1")["drops"]["bad_cert"].as_u64() > Some(0)
    });
    let rx_before = lab.peer("fra-h1", "fra-gw1")["rx_packets"]
        .as_u64()
        .unwrap();
    let out = lab.exec(
        "fra-h2",
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.1",
            "-W",
            "1",
            "-I",
            "rogue0",
            "10.77.1.11",
        ],
    );
    assert!(!out.status.success(), "rogue ping answered");
    assert!(
        lab.overlayd("fra-gw1")["drops"]["unauthenticated"]
            .as_u64()
            .unwrap()
            >= 3
    );
    // Nothing reached fra-h1 but probe replies from its gateway.
    let h1 = lab.overlayd("fra-h1");
    let _ = rx_before;
    assert_eq!(h1["drops"]["spoofed"], 0);
    let _ = rogue.kill();
    let _ = rogue.wait();
}

#[test]
fn wireguard_go_host_joins_through_cert_directory() {
    if !netns_or_skip("wireguard_go_host_joins_through_cert_directory") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\ngateways = 1\nhosts = 1\nwireguard_hosts = 1\n");
    assert_eq!(lab.peer("fra-gw1", "fra-wg1")["attached"], true);
    assert!(lab.ping("fra-wg1", "10.77.1.11", 3).status.success());
    assert!(lab.ping("fra-h1", "10.77.1.51", 3).status.success());
    let server = TcpServer::start(&lab, "fra-h1", "0.0.0.0:7003");
    let sent = tcp_send(&lab, "fra-wg1", "10.77.1.11:7003", 5_000_000);
    assert_eq!(server.result(), sent);
    // A plain WireGuard client sends whatever source it likes: its gateway
    // drops what its certificate does not hold, and counts it.
    let addrs = lab.exec_ok("fra-wg1", &["ip", "-o", "-4", "addr", "show"]);
    let ifname = addrs
        .lines()
        .find(|l| l.contains("10.77.1.51/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the WireGuard interface")
        .to_string();
    lab.exec_ok(
        "fra-wg1",
        &["ip", "addr", "add", "10.77.1.98/32", "dev", &ifname],
    );
    let before = drops(&lab, "fra-gw1", "spoofed");
    spoofed_ping(&lab, "fra-wg1", "10.77.1.98", "10.77.1.11");
    let after = drops(&lab, "fra-gw1", "spoofed");
    assert!(after >= before + 3, "spoofed drops {before} -> {after}");
    let peer = lab.peer("fra-gw1", "fra-wg1");
    assert!(peer["spoofed"].as_u64().unwrap() >= 3, "{peer}");
}

#[test]
fn host_keeps_pinging_when_its_gateway_is_killed() {
    if !netns_or_skip("host_keeps_pinging_when_its_gateway_is_killed") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\ngateways = 2\nhosts = 2\n");
    let active = lab.overlayd("fra-h1")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["active"] == true)
        .map(|p| p["name"].as_str().unwrap().to_string())
        .expect("an active gateway");
    let mut ping = lab.spawn(
        "fra-h1",
        &["ping", "-c", "100", "-i", "0.05", "-W", "1", "10.77.1.12"],
    );
    // Kill the gateway in use once the ping is flowing.
    let mut out = std::io::BufReader::new(ping.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    while !line.contains("bytes from") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "ping ended before the first reply"
        );
    }
    lab.lab_ok(&["kill", &active, "--signal", "KILL"]);
    let mut seqs = Vec::new();
    for l in out.lines() {
        let l = l.unwrap();
        if let Some(s) = l.split("icmp_seq=").nth(1) {
            seqs.push(s.split_whitespace().next().unwrap().parse::<u32>().unwrap());
        }
    }
    let _ = ping.wait();
    // The flow continues on the other gateway: the last probes all came back.
    for s in 91..=100 {
        assert!(
            seqs.contains(&s),
            "icmp_seq {s} lost after failover (got {seqs:?})"
        );
    }
    let now_active = lab.overlayd("fra-h1")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["active"] == true)
        .map(|p| p["name"].as_str().unwrap().to_string());
    assert!(now_active.is_some() && now_active.as_deref() != Some(active.as_str()));
}

/// A static route cycle through three sites' gateways (fra -> ams -> par ->
/// fra for 10.77.9.0/24): a ping into it ends at par-gw1, which reaches
/// fra-h1 through fra-gw1, not through ams-gw1 it came from (uRPF between
/// gateways), counted there once; it neither circulates (before TTLs were
/// decremented it went round for ever, re-encrypted at every hop) nor
/// reaches anyone. Loops that pass the check end with the TTL
/// (`a_routing_loop_between_siblings_ends_with_time_exceeded`, sim).
#[test]
fn a_static_route_cycle_through_three_gateways_ends_at_the_reverse_path_check() {
    if !netns_or_skip("a_static_route_cycle_through_three_gateways_ends_at_the_reverse_path_check")
    {
        return;
    }
    let lab =
        Lab::up("[[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n[[site]]\nname = \"par\"\n");
    for (gw, via) in [
        ("fra-gw1", "ams-gw1"),
        ("ams-gw1", "par-gw1"),
        ("par-gw1", "fra-gw1"),
    ] {
        lab.reconfigure(gw, "overlayd.toml", None, |text| {
            text + &format!("\n[[route]]\nprefix = \"10.77.9.0/24\"\nvia = [\"{via}\"]\n")
        });
    }
    lab.lab_ok(&["wait"]);
    let sum = |lab: &Lab, what: &str| -> u64 {
        ["fra-gw1", "ams-gw1", "par-gw1"]
            .iter()
            .map(|g| lab.overlayd(g)["drops"][what].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(sum(&lab, "no_reverse_path"), 0);
    let out = lab.exec(
        "fra-h1",
        &["ping", "-c", "1", "-t", "30", "-W", "2", "10.77.9.1"],
    );
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{t}");
    lab.wait_for("par-gw1 to drop the looping packet", |l| {
        sum(l, "no_reverse_path") > 0
    });
    assert_eq!(
        lab.overlayd("par-gw1")["drops"]["no_reverse_path"].as_u64(),
        Some(1),
        "dropped once, at par-gw1"
    );
    assert_eq!(sum(&lab, "no_reverse_path"), 1);
    assert_eq!(sum(&lab, "ttl_expired"), 0);
}

/// The links between site fra's gateway and the underlay carry 1400 bytes
/// (a bridge drops larger frames silently: the classic black hole). Every
/// tunnel across them learns its MTU by probing — 1340 over an IPv4
/// underlay, 1320 over IPv6 — a 1420-byte ping with DF gets fragmentation
/// needed / packet too big with that MTU from the first gateway, tracepath
/// finds it, and a 20 MB TCP transfer between the sites arrives intact
/// both ways (on the old build it stalled after the handshake).
#[test]
fn a_smaller_underlay_mtu_between_gateways_is_learned_and_told_to_senders() {
    if !netns_or_skip("a_smaller_underlay_mtu_between_gateways_is_learned_and_told_to_senders") {
        return;
    }
    for (ipv6, mtu) in [(false, 1340u64), (true, 1320)] {
        let lab = Lab::up(&format!(
            "underlay_ipv6 = {ipv6}\n[[site]]\nname = \"fra\"\nwan_mtu = 1400\n[[site]]\nname = \"ams\"\n"
        ));
        let ep = lab.peer("fra-gw1", "ams-gw1")["endpoint"].to_string();
        assert_eq!(ep.contains('['), ipv6, "gateway endpoint {ep}");
        // A bridge lets frames 4 bytes over its ports' MTU through (room
        // for a VLAN tag): what the tunnel into fra carries is a few bytes
        // more than what its own 1400-byte link lets out. The MTU a sender
        // is told is what its first gateway learned.
        let learned = |lab: &Lab, g: &str, p: &str| -> Option<u64> {
            let peer = lab.peer(g, p);
            let m = peer["mtu"].as_u64()?;
            (peer["mtu_learned"] == true && (mtu..=mtu + 4).contains(&m)).then_some(m)
        };
        lab.wait_for("the gateway tunnels to learn their MTU", |lab| {
            learned(lab, "fra-gw1", "ams-gw1").is_some()
                && learned(lab, "ams-gw1", "fra-gw1").is_some()
        });
        // Within a site the tunnels carry the interface MTU.
        assert_eq!(lab.peer("fra-h1", "fra-gw1")["mtu"], 1420);
        let text = |node: &str, args: &[&str]| {
            let out = lab.exec(node, args);
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        for (from, gw, other, v4, v6) in [
            ("fra-h1", "fra-gw1", "ams-gw1", "10.77.2.11", "fd77::2:b"),
            ("ams-h1", "ams-gw1", "fra-gw1", "10.77.1.11", "fd77::1:b"),
        ] {
            let mtu = learned(&lab, gw, other).unwrap();
            let t = text(
                from,
                &[
                    "ping", "-M", "do", "-s", "1392", "-c", "2", "-i", "0.3", "-W", "2", v4,
                ],
            );
            assert!(
                t.contains(&format!("Frag needed and DF set (mtu = {mtu})")),
                "{from} ping {v4}: {t}"
            );
            let t = text(
                from,
                &[
                    "ping", "-6", "-M", "do", "-s", "1372", "-c", "2", "-i", "0.3", "-W", "2", v6,
                ],
            );
            assert!(
                t.contains(&format!("Packet too big: mtu={mtu}")),
                "{from} ping {v6}: {t}"
            );
            for dst in [v4, v6] {
                let t = text(from, &["tracepath", "-n", "-m", "5", dst]);
                assert!(
                    t.contains(&format!("pmtu {mtu}")),
                    "{from} tracepath {dst}: {t}"
                );
            }
        }
        for (from, to, addr) in [
            ("fra-h1", "ams-h1", "10.77.2.11:5201"),
            ("ams-h1", "fra-h1", "10.77.1.11:5201"),
            ("ams-h1", "fra-h1", "[fd77::1:b]:5202"),
        ] {
            let server = TcpServer::start(&lab, to, addr);
            let sent = tcp_send(&lab, from, addr, 20_000_000);
            assert_eq!(server.result(), sent, "{from} -> {addr}");
        }
        let too_big: u64 = ["fra-gw1", "ams-gw1"]
            .iter()
            .map(|g| lab.overlayd(g)["icmp"]["too_big"].as_u64().unwrap_or(0))
            .sum();
        assert!(too_big >= 4, "too big sent: {too_big}");
    }
}

/// Gateways are hops: `ping -t 1` gets time exceeded from the first
/// gateway, `traceroute` and `tracepath` list both gateways on the way to
/// a host of the other site (IPv4 and IPv6), and an overlay address nobody
/// serves gets destination unreachable at once instead of a timeout.
#[test]
fn gateways_are_hops_that_traceroute_lists_and_that_answer_with_icmp_errors() {
    if !netns_or_skip("gateways_are_hops_that_traceroute_lists_and_that_answer_with_icmp_errors") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n");
    let text = |args: &[&str]| {
        let out = lab.exec("fra-h1", args);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let fra_gw = ["10.77.1.1", "10.77.1.2", "fd77::1:1", "fd77::1:2"];
    let ams_gw = ["10.77.2.1", "10.77.2.2", "fd77::2:1", "fd77::2:2"];
    for (dst, exceeded) in [
        ("10.77.2.11", "Time to live exceeded"),
        ("fd77::2:b", "Time exceeded: Hop limit"),
    ] {
        let t = text(&["ping", "-c", "1", "-t", "1", "-W", "2", dst]);
        assert!(t.contains(exceeded), "ping -t 1 {dst}: {t}");
        assert!(
            fra_gw.iter().any(|g| t.contains(&format!("From {g} "))),
            "not from a fra gateway: {t}"
        );
    }
    // Hop by hop: a fra gateway, an ams gateway, the host.
    let hops = |t: &str, tracepath: bool| -> Vec<String> {
        t.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let n = w.next()?;
                let n = if tracepath { n.strip_suffix(':')? } else { n };
                n.parse::<u32>().ok()?;
                w.next().map(str::to_string)
            })
            .fold(Vec::new(), |mut v, a| {
                if v.last() != Some(&a) {
                    v.push(a);
                }
                v
            })
    };
    for (dst, family) in [("10.77.2.11", "-4"), ("fd77::2:b", "-6")] {
        for tracepath in [false, true] {
            let t = if tracepath {
                text(&["tracepath", "-n", "-m", "5", dst])
            } else {
                text(&[
                    "traceroute",
                    family,
                    "-n",
                    "-q",
                    "1",
                    "-w",
                    "2",
                    "-m",
                    "5",
                    dst,
                ])
            };
            let h = hops(&t, tracepath);
            assert!(
                h.len() == 3
                    && fra_gw.contains(&h[0].as_str())
                    && ams_gw.contains(&h[1].as_str())
                    && h[2] == dst,
                "{} to {dst}: hops {h:?}\n{t}",
                if tracepath { "tracepath" } else { "traceroute" }
            );
        }
    }
    for (dst, unreachable) in [
        ("10.77.9.11", "Destination Host Unreachable"),
        ("fd77::9:b", "Destination unreachable: Address unreachable"),
    ] {
        let t = text(&["ping", "-c", "1", "-W", "2", dst]);
        assert!(t.contains(unreachable), "ping {dst}: {t}");
    }
    // Counted where they were sent.
    let sum = |what: &str, key: &str| -> u64 {
        ["fra-gw1", "ams-gw1"]
            .iter()
            .map(|g| lab.overlayd(g)[what][key].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(sum("drops", "ttl_expired") >= 10, "ttl_expired");
    assert!(sum("icmp", "time_exceeded") >= 10, "time_exceeded");
    assert_eq!(sum("icmp", "unreachable"), 2);
}
