//! routed end to end: real overlayd and routed on every gateway of a lab,
//! BGP + BFD inside the tunnels, faults made with `cubenet-lab link` and
//! SIGKILL.

mod common;

use common::{netns_or_skip, Lab};
use serde_json::Value;
use std::io::Read;
use std::process::Command;

const THREE_BY_TWO: &str = "routed = true\nbfd_interval_ms = 100\n\
    [[site]]\nname = \"fra\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"ams\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"par\"\ngateways = 2\nhosts = 1\n";

const FRA_H1: &str = "10.77.1.11";
const AMS_H1: &str = "10.77.2.11";

fn neighbor(lab: &Lab, node: &str, name: &str) -> Value {
    lab.routed(node, "status")["neighbors"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// The peers overlayd on `node` forwards `prefix` to (its own table, not
/// routed's).
fn overlay_via(lab: &Lab, node: &str, prefix: &str) -> Vec<String> {
    lab.overlayd(node)["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["prefix"] == prefix).cloned())
        .and_then(|r| r["via"].as_array().cloned())
        .map(|v| {
            v.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn via(lab: &Lab, node: &str, prefix: &str) -> Vec<String> {
    lab.routed(node, "routes")["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["prefix"] == prefix).cloned())
        .map(|r| {
            r["via"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a 50 ms ping across sites while `fault` happens once replies flow;
/// returns (sent, received, longest run of lost replies).
fn ping_through(lab: &Lab, from: &str, to: &str, fault: impl FnOnce()) -> (u32, u32, u32) {
    let gw = lab.active_gateway(from);
    let rx = |l: &Lab| l.peer(from, &gw)["rx_packets"].as_u64().unwrap_or(0);
    let before = rx(lab);
    let mut ping = lab.spawn(from, &["ping", "-i", "0.05", "-c", "100", to]);
    lab.wait_for("the ping to flow", |l| rx(l) >= before + 10);
    fault();
    let mut out = String::new();
    ping.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = ping.wait();
    let seqs: Vec<u32> = out
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    let mut gap = 0;
    let mut last = 0;
    for s in &seqs {
        gap = gap.max(s.saturating_sub(last + 1));
        last = *s;
    }
    gap = gap.max(100u32.saturating_sub(last));
    (100, seqs.len() as u32, gap)
}

#[test]
fn three_sites_of_two_gateways_reach_everyone_and_survive_faults() {
    if !netns_or_skip("three_sites_of_two_gateways_reach_everyone_and_survive_faults") {
        return;
    }
    let lab = Lab::up(THREE_BY_TWO);
    // Every host reaches every other host, IPv4 and IPv6.
    let hosts = ["fra-h1", "ams-h1", "par-h1"];
    for from in hosts {
        for to in hosts {
            if from == to {
                continue;
            }
            for dst in lab.addrs(to) {
                let out = lab.ping(from, &dst, 2);
                assert!(out.status.success(), "{from} -> {to} ({dst})");
            }
        }
    }
    // Equal-cost paths across the gateways of a site (once ams-h1 is
    // attached to both of them).
    lab.wait_for("equal-cost paths to ams-h1", |l| {
        via(l, "fra-gw1", &format!("{AMS_H1}/32")) == vec!["ams-gw1", "ams-gw2"]
    });
    let st = lab.routed("fra-gw1", "status");
    for n in st["neighbors"].as_array().unwrap() {
        assert_eq!(n["state"], "established", "{n}");
        // Gateways: overlayd's probes watch the tunnel, not BFD.
        assert_eq!(
            (&n["bfd"], &n["tunnel_up"]),
            (&Value::from("disabled"), &Value::from(true)),
            "{n}"
        );
    }

    // SIGKILL of the gateway fra-h1 sends through: the flow goes on.
    let gw = lab.active_gateway("fra-h1");
    let (sent, got, gap) = ping_through(&lab, "fra-h1", AMS_H1, || {
        lab.lab_ok(&["kill", &gw, "--signal", "KILL"]);
    });
    eprintln!("SIGKILL of {gw}: {got}/{sent} replies, longest gap {gap} x 50 ms");
    assert!(gap <= 20, "the flow stopped for {gap} x 50 ms");
    assert!(got >= sent - 25);
    lab.lab_ok(&["start", &gw]);
    lab.lab_ok(&["wait"]);

    // A silent drop of every tunnel between fra and ams: traffic goes
    // through par.
    let (sent, got, gap) = ping_through(&lab, "fra-h1", AMS_H1, || {
        for a in ["fra-gw1", "fra-gw2"] {
            for b in ["ams-gw1", "ams-gw2"] {
                lab.lab_ok(&["link", a, b, "drop"]);
            }
        }
    });
    eprintln!("silent drop fra<->ams: {got}/{sent} replies, longest gap {gap} x 50 ms");
    assert!(gap <= 20, "the flow stopped for {gap} x 50 ms");
    let v = via(&lab, "fra-gw1", &format!("{AMS_H1}/32"));
    assert!(
        !v.is_empty() && v.iter().all(|g| g.starts_with("par-")),
        "fra-gw1 reaches ams-h1 via {v:?}"
    );
    let n = neighbor(&lab, "fra-gw1", "ams-gw1");
    let last_down = n["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["event"] == "down")
        .cloned();
    assert_eq!(
        last_down.map(|h| h["reason"].clone()),
        Some("overlay tunnel down".into()),
        "{n}"
    );
    // The tables agree again once healed.
    for a in ["fra-gw1", "fra-gw2"] {
        for b in ["ams-gw1", "ams-gw2"] {
            lab.lab_ok(&["link", a, b, "heal"]);
        }
    }
    lab.wait_for("the direct paths to return", |l| {
        via(l, "fra-gw1", &format!("{AMS_H1}/32")) == vec!["ams-gw1", "ams-gw2"]
    });
    let out = lab.ping("ams-h1", FRA_H1, 2);
    assert!(out.status.success());

    // routed alone dies: overlayd keeps its routes and forwards on.
    let routed_entries = |l: &Lab| {
        l.overlayd("fra-gw1")["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["origin"] == "routed")
            .count()
    };
    let before = routed_entries(&lab);
    assert!(before > 0);
    lab.lab_ok(&["kill", "fra-gw1", "--daemon", "routed", "--signal", "KILL"]);
    assert_eq!(routed_entries(&lab), before);
    let (sent, got, gap) = ping_through(&lab, "fra-h1", AMS_H1, || {});
    assert!(got >= sent - 5 && gap <= 5, "{got}/{sent}, gap {gap}");
    // Back: it waits for its neighbours before it rewrites the table.
    lab.lab_ok(&["start", "fra-gw1"]);
    lab.lab_ok(&["wait"]);
    assert_eq!(routed_entries(&lab), before);
    assert_eq!(lab.routed("fra-gw1", "status")["fib_ready"], true);
}

const FOUR_BY_TWO_REFLECTED: &str = "routed = true\nroute_reflectors = 2\n\
    [[site]]\nname = \"fra\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"ams\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"par\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"lon\"\ngateways = 2\nhosts = 1\n";

/// Every gateway of the other sites as `fra-gw1` etc., and each host's
/// /32, for the four-site lab.
fn other_sites_hosts(gw: &str) -> Vec<(String, [String; 2])> {
    let me = gw.split('-').next().unwrap();
    ["fra", "ams", "par", "lon"]
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != me)
        .map(|(i, s)| {
            (
                format!("10.77.{}.11/32", i + 1),
                [format!("{s}-gw1"), format!("{s}-gw2")],
            )
        })
        .collect()
}

/// Route reflection on BIRD: 4 sites x 2 gateways, no BGP session
/// between gateways, two BIRD route servers sending every path (ADD-PATH).
/// Every host reaches every other, every gateway keeps both gateways of
/// every other site as equal-cost paths, a reflector killed loses no
/// ping, and a gateway's liveness is still its tunnel.
#[test]
fn four_sites_through_two_bird_reflectors_keep_ecmp_and_lose_nothing_when_one_dies() {
    if !netns_or_skip(
        "four_sites_through_two_bird_reflectors_keep_ecmp_and_lose_nothing_when_one_dies",
    ) {
        return;
    }
    let lab = Lab::up(FOUR_BY_TWO_REFLECTED);
    let gateways: Vec<String> = ["fra", "ams", "par", "lon"]
        .iter()
        .flat_map(|s| [format!("{s}-gw1"), format!("{s}-gw2")])
        .collect();
    for g in &gateways {
        for n in lab.routed(g, "status")["neighbors"].as_array().unwrap() {
            let want = if n["name"].as_str().unwrap().starts_with("rr") {
                "established"
            } else {
                "reflected"
            };
            assert_eq!(n["state"], want, "{g}: {n}");
        }
    }
    let hosts = ["fra-h1", "ams-h1", "par-h1", "lon-h1"];
    for from in hosts {
        for to in hosts.iter().filter(|t| **t != from) {
            for dst in lab.addrs(to) {
                assert!(
                    lab.ping(from, &dst, 1).status.success(),
                    "{from} -> {to} ({dst})"
                );
            }
        }
    }
    let ecmp_everywhere = |l: &Lab| {
        gateways.iter().all(|g| {
            other_sites_hosts(g)
                .iter()
                .all(|(p, want)| via(l, g, p) == want.to_vec())
        })
    };
    lab.wait_for(
        "both gateways of every other site as paths on every gateway",
        ecmp_everywhere,
    );

    // fra-gw1's routed forgets ams-gw2 and gains it back by SIGHUP, its
    // tunnel up all along: asked of the reflectors again, and overlayd
    // asked about the tunnel, ams-gw2 is a path again.
    let ams_h1 = format!("{AMS_H1}/32");
    let full = std::fs::read_to_string(lab.path().join("nodes/fra-gw1/routed.toml")).unwrap();
    lab.reload("fra-gw1", "routed.toml", "routed", |t| {
        without_neighbor(&t, "ams-gw2")
    });
    lab.wait_for("fra-gw1 without ams-gw2", |l| {
        via(l, "fra-gw1", &ams_h1) == vec!["ams-gw1"]
    });
    lab.reload("fra-gw1", "routed.toml", "routed", |_| full.clone());
    lab.wait_for("ams-gw2 back on fra-gw1", |l| {
        via(l, "fra-gw1", &ams_h1) == vec!["ams-gw1", "ams-gw2"]
    });

    let (sent, got, gap) = ping_through(&lab, "fra-h1", AMS_H1, || {
        lab.lab_ok(&["kill", "rr1", "--signal", "KILL"]);
    });
    eprintln!("SIGKILL of reflector rr1: {got}/{sent} replies, longest gap {gap} x 50 ms");
    assert_eq!(got, sent, "a reflector killed lost pings");
    lab.wait_for("rr1 down on every gateway", |l| {
        gateways
            .iter()
            .all(|g| neighbor(l, g, "rr1")["state"] != "established")
    });
    assert!(ecmp_everywhere(&lab), "rr2 alone keeps every path");

    // A gateway's tunnels are still its liveness: killed, it goes from
    // every other gateway's paths though both reflectors still hold them.
    lab.lab_ok(&["kill", "ams-gw1", "--signal", "KILL"]);
    lab.wait_for("ams-gw1 out of fra-gw1's paths", |l| {
        via(l, "fra-gw1", &format!("{AMS_H1}/32")) == vec!["ams-gw2"]
    });
    lab.wait_for("ams-h1 on ams-gw2", |l| {
        l.active_gateway("ams-h1") == "ams-gw2"
    });
    assert!(lab.ping("fra-h1", AMS_H1, 2).status.success());
}

#[test]
fn a_flapping_tunnel_is_suppressed_and_returns_when_stable() {
    if !netns_or_skip("a_flapping_tunnel_is_suppressed_and_returns_when_stable") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n[[site]]\nname = \"par\"\n",
    );
    // Shorter damping times than the defaults, so the test ends sooner:
    // half-life 4 s, held down at most 15 s.
    for gw in ["fra-gw1", "ams-gw1"] {
        lab.reconfigure(gw, "routed.toml", None, |text| {
            let text = text.replace(
                "[damping]\nenabled = true\n",
                "[damping]\nenabled = true\nhalf_life_s = 8\nmax_suppress_s = 15\nstable_up_s = 2\n",
            );
            assert!(text.contains("half_life_s = 8"), "{text}");
            text
        });
    }
    lab.lab_ok(&["wait"]);
    let prefix = format!("{AMS_H1}/32");
    // The restarts were flaps too: the direct route is back once the link
    // has been stable for stable_up_s.
    lab.wait_for("the direct route to ams-h1", |l| {
        via(l, "fra-gw1", &prefix) == vec!["ams-gw1"]
    });
    // Flap: down until BFD sees it, then up until the session is back,
    // until either end suppresses the link (the end that counted more flaps, a restart
    // included, gets there first; the other then sees no session to flap).
    let suppressing = |l: &Lab| {
        [("fra-gw1", "ams-gw1"), ("ams-gw1", "fra-gw1")]
            .into_iter()
            .find(|(a, b)| neighbor(l, a, b)["suppressed"] == true)
    };
    let mut flaps = 0;
    while suppressing(&lab).is_none() {
        assert!(flaps < 8, "not suppressed after {flaps} flaps");
        let before = neighbor(&lab, "fra-gw1", "ams-gw1")["flaps"]
            .as_u64()
            .unwrap();
        lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "drop"]);
        lab.wait_for("the session to go down", |l| {
            neighbor(l, "fra-gw1", "ams-gw1")["flaps"].as_u64().unwrap() > before
        });
        lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "heal"]);
        flaps += 1;
        // The next flap starts from an established session over a tunnel
        // that is up (or none is needed): a drop while it is still down
        // would count no flap.
        lab.wait_for("the session back or held down", |l| {
            let n = neighbor(l, "fra-gw1", "ams-gw1");
            suppressing(l).is_some() || (n["state"] == "established" && n["tunnel_up"] == true)
        });
    }
    let (at, of) = suppressing(&lab).unwrap();
    lab.wait_for("the suppressed session stopped", |l| {
        neighbor(l, at, of)["state"] == "idle"
    });
    let n = neighbor(&lab, at, of);
    eprintln!("{at} suppressed {of} after {flaps} flaps: {n}");
    assert!(flaps <= 4, "suppressed only after {flaps} flaps");
    // Held down until the penalty decays below the reuse threshold.
    assert!(n["penalty"].as_f64().unwrap() > 750.0, "{n}");
    assert_eq!(n["state"], "idle", "{n}");
    // While suppressed, fra-gw1 reaches ams through par (waited for: the
    // withdrawal of the direct path and a routes query that a loaded
    // machine answers late both read as no route for a moment).
    lab.wait_for("the route through par while suppressed", |l| {
        via(l, "fra-gw1", &prefix) == vec!["par-gw1"]
    });
    assert_eq!(
        neighbor(&lab, at, of)["suppressed"],
        true,
        "the route through par came only after the suppression ended"
    );
    // Every hop of both ways is ready before the ping: routed's choice has
    // reached overlayd at both ends, and ams-gw1 answers through par too.
    let back = format!("{FRA_H1}/32");
    lab.wait_for("fra-gw1's overlayd to forward ams-h1 through par", |l| {
        overlay_via(l, "fra-gw1", &prefix) == vec!["par-gw1"]
    });
    lab.wait_for("ams-gw1's overlayd to forward fra-h1 through par", |l| {
        via(l, "ams-gw1", &back) == vec!["par-gw1"]
            && overlay_via(l, "ams-gw1", &back) == vec!["par-gw1"]
    });
    let out = lab.ping("fra-h1", AMS_H1, 2);
    if !out.status.success() {
        for gw in ["fra-gw1", "par-gw1", "ams-gw1"] {
            eprintln!("{gw}: {}", lab.overlayd(gw));
        }
    }
    assert!(out.status.success(), "no way to ams while suppressed");
    // Stable now: the direct route returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while via(&lab, "fra-gw1", &prefix) != vec!["ams-gw1"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the route did not return"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let n = neighbor(&lab, at, of);
    assert_eq!(n["suppressed"], false);
    assert!(n["history"].as_array().unwrap().len() >= 2 * flaps as usize);
}

#[test]
fn a_site_router_running_bird_exchanges_routes_with_the_gateways() {
    if !netns_or_skip("a_site_router_running_bird_exchanges_routes_with_the_gateways") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 2\nbird = true\ngobgp = true\n\
         [[site]]\nname = \"ams\"\n",
    );
    // The router's subnet reaches ams through either fra gateway, and the
    // gateways next to the router route it there in the kernel.
    lab.wait_for("the router's subnet at ams-gw1", |l| {
        via(l, "ams-gw1", "192.168.1.0/24") == vec!["fra-gw1", "fra-gw2"]
    });
    // Every hop of both ways is ready before the ping: ams-gw1's overlayd
    // forwards the subnet, both fra gateways route it in the kernel (ams-gw1
    // may hash the ping to either) and forward ams-h1 into the overlay.
    lab.wait_for("ams-gw1's overlayd to forward the router's subnet", |l| {
        overlay_via(l, "ams-gw1", "192.168.1.0/24").len() == 2
    });
    for gw in ["fra-gw1", "fra-gw2"] {
        lab.wait_for(&format!("the kernel route on {gw}"), |l| {
            l.exec_ok(gw, &["ip", "route", "show", "proto", "201"])
                .contains("192.168.1.0/24 via 172.16.1.200")
        });
        lab.wait_for(&format!("{gw}'s overlayd to forward ams-h1"), |l| {
            overlay_via(l, gw, &format!("{AMS_H1}/32")) == vec!["ams-gw1"]
        });
    }
    // BIRD learned the overlay's hosts from both gateways (ECMP): the way
    // back for the ping below (waited for first: on a busy machine BIRD
    // may learn it after the gateways are ready).
    lab.wait_for("BIRD's ECMP route to ams-h1", |l| {
        let r = l.exec_ok("fra-bird", &["ip", "route", "show", AMS_H1]);
        r.contains("via 172.16.1.1") && r.contains("via 172.16.1.2")
    });
    let out = lab.ping("ams-h1", "192.168.1.1", 2);
    assert!(out.status.success(), "ams-h1 -> 192.168.1.1");
    // BFD comes up a moment after the session on a busy machine.
    lab.wait_for("fra-gw1's session with BIRD established with BFD up", |l| {
        let n = neighbor(l, "fra-gw1", "fra-bird");
        (n["state"].as_str(), n["bfd"].as_str()) == (Some("established"), Some("up"))
    });
    // The router loses fra-gw1 silently: BFD moves everything to fra-gw2.
    lab.lab_ok(&["link", "fra-gw1", "fra-bird", "drop"]);
    lab.wait_for("ams-gw1 to use fra-gw2 only", |l| {
        via(l, "ams-gw1", "192.168.1.0/24") == vec!["fra-gw2"]
    });
    lab.wait_for("ams-gw1's overlayd to forward to fra-gw2 only", |l| {
        overlay_via(l, "ams-gw1", "192.168.1.0/24") == vec!["fra-gw2"]
    });
    lab.wait_for("BIRD to route ams-h1 through fra-gw2 only", |l| {
        let r = l.exec_ok("fra-bird", &["ip", "route", "show", AMS_H1]);
        r.contains("via 172.16.1.2") && !r.contains("via 172.16.1.1")
    });
    let out = lab.ping("ams-h1", "192.168.1.1", 2);
    assert!(out.status.success(), "ams-h1 -> 192.168.1.1 after the drop");
}

/// `vtysh -c CMD` against the FRR instance of `node` (its own vty socket
/// directory), as JSON.
fn vtysh(lab: &Lab, node: &str, cmd: &str) -> Value {
    let dir = common::path_str(&lab.node(node).overlayd_socket);
    let out = lab.exec_ok(node, &["vtysh", "--vty_socket", &dir, "-c", cmd]);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

/// FRR's BGP state of each gateway address, and its BFD status of it.
fn frr_peers(lab: &Lab, node: &str, gateways: &[&str]) -> Vec<(String, String)> {
    let bgp = vtysh(lab, node, "show bgp summary json");
    let bfd = vtysh(lab, node, "show bfd peers json");
    gateways
        .iter()
        .map(|g| {
            let state = bgp["ipv4Unicast"]["peers"][*g]["state"]
                .as_str()
                .unwrap_or("none");
            let up = bfd
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["peer"] == *g))
                .and_then(|p| p["status"].as_str())
                .unwrap_or("none");
            (state.to_string(), up.to_string())
        })
        .collect()
}

/// An FRR site router (zebra, bgpd, bfdd started by the lab, config of
/// the shape of examples/site-router/frr.conf) peers with both gateways of
/// its site over IPv4 with BFD and TTL security: FRR runs that BFD on the
/// multihop port (GTSM makes bgpd count the session as multihop), which
/// the lab's routed takes with `bfd_multihop`. Its LAN prefix is reached
/// from the other site, it installs the overlay's routes over both
/// gateways, and a silent drop of its link to one gateway is seen by BFD
/// and withdrawn at the far site.
#[test]
fn a_site_router_running_frr_peers_with_bfd_and_ttl_security() {
    if !netns_or_skip("a_site_router_running_frr_peers_with_bfd_and_ttl_security") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 2\nfrr = true\n\
         [[site]]\nname = \"ams\"\ngateways = 2\n",
    );
    const PREFIX: &str = "192.168.51.0/24";
    const GATEWAYS: [&str; 2] = ["172.16.1.1", "172.16.1.2"];
    // The config the lab wrote passes FRR's own check.
    let config = lab.node("fra-frr").overlayd_config;
    let out = common::run(Command::new("vtysh").arg("--dryrun").arg("-f").arg(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for gw in ["fra-gw1", "fra-gw2"] {
        lab.wait_for(&format!("{gw}: fra-frr established, BFD up"), |l| {
            let n = neighbor(l, gw, "fra-frr");
            n["state"] == "established" && n["bfd"] == "up"
        });
    }
    lab.wait_for("FRR: both gateways Established, BFD up", |l| {
        frr_peers(l, "fra-frr", &GATEWAYS)
            .iter()
            .all(|(bgp, bfd)| bgp == "Established" && bfd == "up")
    });
    // FRR learned the other site's host from both gateways and zebra
    // installed it (ECMP) in the kernel.
    lab.wait_for("FRR's ECMP route to ams-h1 in the kernel", |l| {
        let r = l.exec_ok("fra-frr", &["ip", "route", "show", AMS_H1]);
        r.contains("proto bgp") && r.contains("via 172.16.1.1") && r.contains("via 172.16.1.2")
    });
    let rib = vtysh(&lab, "fra-frr", "show ip route json");
    let route = &rib[format!("{AMS_H1}/32")][0];
    assert_eq!(
        (route["protocol"].as_str(), route["installed"].as_bool()),
        (Some("bgp"), Some(true)),
        "{route}"
    );
    assert!(rib.get(format!("{FRA_H1}/32")).is_some(), "{rib}");
    // Its prefix reaches ams through either fra gateway; every hop of the
    // ping is ready first, as for BIRD.
    lab.wait_for("FRR's prefix at ams-gw1 through both fra gateways", |l| {
        via(l, "ams-gw1", PREFIX) == vec!["fra-gw1", "fra-gw2"]
    });
    lab.wait_for("ams-gw1's overlayd to forward FRR's prefix", |l| {
        overlay_via(l, "ams-gw1", PREFIX).len() == 2
    });
    for gw in ["fra-gw1", "fra-gw2"] {
        lab.wait_for(&format!("the kernel route on {gw}"), |l| {
            l.exec_ok(gw, &["ip", "route", "show", "proto", "201"])
                .contains("192.168.51.0/24 via 172.16.1.202")
        });
        lab.wait_for(&format!("{gw}'s overlayd to forward ams-h1"), |l| {
            !overlay_via(l, gw, &format!("{AMS_H1}/32")).is_empty()
        });
    }
    let out = lab.ping("ams-h1", "192.168.51.1", 2);
    assert!(out.status.success(), "ams-h1 -> 192.168.51.1");

    // The LAN between FRR and fra-gw1 fails silently: BFD takes the
    // session down on both ends, and ams-gw1 keeps only fra-gw2's path.
    let t0 = std::time::Instant::now();
    lab.lab_ok(&["link", "fra-gw1", "fra-frr", "drop"]);
    lab.wait_for("ams-gw1 to reach FRR's prefix through fra-gw2 only", |l| {
        via(l, "ams-gw1", PREFIX) == vec!["fra-gw2"]
    });
    println!(
        "FRR's prefix through fra-gw1 withdrawn at ams-gw1 {} ms after the drop",
        t0.elapsed().as_millis()
    );
    // fra-gw1 took the session down because of BFD, not the hold timer.
    let n = neighbor(&lab, "fra-gw1", "fra-frr");
    assert_ne!(n["state"], "established", "{n}");
    let last = n["history"].as_array().and_then(|h| h.last()).cloned();
    let last = last.unwrap_or(Value::Null);
    assert_eq!(last["event"], "down", "{n}");
    assert!(last["reason"].as_str().unwrap_or("").contains("BFD"), "{n}");
    lab.wait_for("FRR: fra-gw1 down by BFD, fra-gw2 up", |l| {
        let p = frr_peers(l, "fra-frr", &GATEWAYS);
        p[0].0 != "Established" && p[0].1 == "down" && p[1] == ("Established".into(), "up".into())
    });
    lab.wait_for("FRR to route ams-h1 through fra-gw2 only", |l| {
        let r = l.exec_ok("fra-frr", &["ip", "route", "show", AMS_H1]);
        r.contains("via 172.16.1.2") && !r.contains("via 172.16.1.1")
    });
    lab.wait_for("ams-gw1's overlayd to forward to fra-gw2 only", |l| {
        overlay_via(l, "ams-gw1", PREFIX) == vec!["fra-gw2"]
    });
    let out = lab.ping("ams-h1", "192.168.51.1", 2);
    assert!(
        out.status.success(),
        "ams-h1 -> 192.168.51.1 after the drop"
    );
}

/// Whether `from` gets an answer to one ping of `to` (from its address
/// `source`, when given).
fn answers(lab: &Lab, from: &str, source: Option<&str>, to: &str) -> bool {
    let mut cmd = vec!["ping", "-c", "1", "-W", "1"];
    if let Some(s) = source {
        cmd.extend(["-I", s]);
    }
    cmd.push(to);
    lab.exec(from, &cmd).status.success()
}

/// Dual-stack site LANs: fra's BIRD peers with its gateways over IPv6,
/// ams's FRR over IPv4, each session carrying both families with a next
/// hop of the right family on the LAN, BFD up on both. The two office
/// LANs reach each other over IPv4 and IPv6, a cubenet host reaches both
/// over both, and a silent drop of one BIRD link (both families) is seen
/// by BFD over IPv6 and withdrawn at the far site.
#[test]
fn dual_stack_site_lans_reach_each_other_over_sessions_of_either_family() {
    if !netns_or_skip("dual_stack_site_lans_reach_each_other_over_sessions_of_either_family") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 2\nbird = true\nrouter_session = \"ipv6\"\n\
         [[site]]\nname = \"ams\"\ngateways = 2\nfrr = true\n",
    );
    const BIRD4: &str = "192.168.1.1";
    const BIRD6: &str = "fd00:192:168:1::1";
    const FRR4: &str = "192.168.52.1";
    const FRR6: &str = "fd00:192:168:34::1";
    for (gw, router, address) in [
        ("fra-gw1", "fra-bird", "fd16:0:0:1::c8"),
        ("fra-gw2", "fra-bird", "fd16:0:0:1::c8"),
        ("ams-gw1", "ams-frr", "172.16.2.202"),
        ("ams-gw2", "ams-frr", "172.16.2.202"),
    ] {
        lab.wait_for(&format!("{gw}: {router} established, BFD up"), |l| {
            let n = neighbor(l, gw, router);
            n["state"] == "established" && n["bfd"] == "up"
        });
        let n = neighbor(&lab, gw, router);
        assert_eq!(n["address"], address, "{n}");
    }
    // Each gateway routes the office LAN behind its router in the kernel,
    // both families, via the router's address of that family on the LAN:
    // over BIRD's IPv6 session the IPv4 route too.
    for (gw, routes) in [
        (
            "fra-gw1",
            [
                "192.168.1.0/24 via 172.16.1.200",
                "fd00:192:168:1::/64 via fd16:0:0:1::c8",
            ],
        ),
        (
            "ams-gw2",
            [
                "192.168.52.0/24 via 172.16.2.202",
                "fd00:192:168:34::/64 via fd16:0:0:2::ca",
            ],
        ),
    ] {
        for route in routes {
            lab.wait_for(&format!("{route} on {gw}"), |l| {
                let v4 = l.exec_ok(gw, &["ip", "route", "show", "proto", "201"]);
                let v6 = l.exec_ok(gw, &["ip", "-6", "route", "show", "proto", "201"]);
                v4.contains(route) || v6.contains(route)
            });
        }
    }
    // The routers install the other site's office LAN over both of their
    // gateways, with next hops of its family: BIRD over its IPv6 session
    // an IPv4 one too, FRR over its IPv4 session an IPv6 one. IPv6 routes
    // carry the gateway's global and link-local addresses (RFC 2545):
    // BIRD routes via the global one, FRR via the link-local one.
    let link_local = |gw: &str| {
        let out = lab.exec_ok(
            gw,
            &[
                "ip", "-6", "-br", "addr", "show", "dev", "lan0", "scope", "link",
            ],
        );
        let a = out.split_whitespace().find(|w| w.starts_with("fe80::"));
        a.and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{gw}: no link-local address: {out}"))
            .to_string()
    };
    let (ams1, ams2) = (link_local("ams-gw1"), link_local("ams-gw2"));
    for (router, prefix, hops) in [
        ("fra-bird", "192.168.52.0/24", ["172.16.1.1", "172.16.1.2"]),
        (
            "fra-bird",
            "fd00:192:168:34::/64",
            ["fd16:0:0:1::1", "fd16:0:0:1::2"],
        ),
        ("ams-frr", "192.168.1.0/24", ["172.16.2.1", "172.16.2.2"]),
        ("ams-frr", "fd00:192:168:1::/64", [&ams1, &ams2]),
    ] {
        lab.wait_for(&format!("{router}'s ECMP route to {prefix}"), |l| {
            let family = if prefix.contains(':') { "-6" } else { "-4" };
            let r = l.exec_ok(router, &["ip", family, "route", "show", prefix]);
            hops.iter().all(|h| r.contains(&format!("via {h} ")))
        });
    }
    let bird = lab.node("fra-bird").overlayd_socket;
    let attrs = lab.exec_ok(
        "fra-bird",
        &[
            "birdc",
            "-s",
            &common::path_str(&bird),
            "show",
            "route",
            "fd00:192:168:34::/64",
            "all",
        ],
    );
    let fra1 = link_local("fra-gw1");
    assert!(
        attrs.contains(&format!("BGP.next_hop: fd16:0:0:1::1 {fra1}")),
        "{attrs}"
    );
    // Office to office, both families, both ways; a cubenet host of each
    // site to both offices over both families.
    for (from, source, to) in [
        ("fra-bird", Some(BIRD4), FRR4),
        ("fra-bird", Some(BIRD6), FRR6),
        ("ams-frr", Some(FRR4), BIRD4),
        ("ams-frr", Some(FRR6), BIRD6),
        ("fra-h1", None, BIRD4),
        ("fra-h1", None, BIRD6),
        ("fra-h1", None, FRR4),
        ("fra-h1", None, FRR6),
        ("ams-h1", None, BIRD4),
        ("ams-h1", None, BIRD6),
        ("ams-h1", None, FRR4),
        ("ams-h1", None, FRR6),
    ] {
        lab.wait_for(&format!("{from} ({source:?}) -> {to}"), |l| {
            answers(l, from, source, to)
        });
    }

    // BIRD loses fra-gw1 silently, both families: BFD over IPv6 takes the
    // session down and ams-gw1 keeps only fra-gw2's paths.
    let t0 = std::time::Instant::now();
    lab.lab_ok(&["link", "fra-gw1", "fra-bird", "drop"]);
    for prefix in ["192.168.1.0/24", "fd00:192:168:1::/64"] {
        lab.wait_for(
            &format!("ams-gw1 to reach {prefix} through fra-gw2 only"),
            |l| via(l, "ams-gw1", prefix) == vec!["fra-gw2"],
        );
    }
    println!(
        "BIRD's prefixes through fra-gw1 withdrawn at ams-gw1 {} ms after the drop (BFD over IPv6)",
        t0.elapsed().as_millis()
    );
    let n = neighbor(&lab, "fra-gw1", "fra-bird");
    let last = n["history"].as_array().and_then(|h| h.last()).cloned();
    let last = last.unwrap_or(Value::Null);
    assert_eq!(last["event"], "down", "{n}");
    assert!(last["reason"].as_str().unwrap_or("").contains("BFD"), "{n}");
    for to in [BIRD4, BIRD6] {
        lab.wait_for(&format!("ams-frr -> {to} after the drop"), |l| {
            answers(
                l,
                "ams-frr",
                Some(if to == BIRD4 { FRR4 } else { FRR6 }),
                to,
            )
        });
    }
}

/// A host that stops (SIGTERM: its gateways are told it is leaving) is
/// withdrawn by every gateway, and announced again when it starts. Before
/// the typed event contract routed skipped overlayd's `detached` events
/// (they had no role), so the host's /32 stayed on every gateway.
#[test]
fn a_stopped_host_is_withdrawn_everywhere_and_returns_when_it_starts() {
    if !netns_or_skip("a_stopped_host_is_withdrawn_everywhere_and_returns_when_it_starts") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 2\nhosts = 1\n\
         [[site]]\nname = \"ams\"\ngateways = 2\nhosts = 1\n",
    );
    let gateways = ["fra-gw1", "fra-gw2", "ams-gw1", "ams-gw2"];
    let host = format!("{FRA_H1}/32");
    let announced = |l: &Lab| gateways.iter().all(|g| !via(l, g, &host).is_empty());
    let withdrawn = |l: &Lab| gateways.iter().all(|g| via(l, g, &host).is_empty());
    assert!(announced(&lab), "fra-h1 not announced at the start");
    // Every routed past its startup (its neighbours back, the table its
    // own): what this test stops is a host of a running overlay.
    lab.wait_for("every routed to own its table", |l| {
        gateways
            .iter()
            .all(|g| l.routed(g, "status")["fib_ready"] == true)
    });

    lab.lab_ok(&["kill", "fra-h1"]);
    lab.wait_for("every gateway to withdraw fra-h1", withdrawn);
    // Its site's gateways no longer hold it in overlayd either.
    for g in ["fra-gw1", "fra-gw2"] {
        let st = lab.overlayd(g);
        let held = st["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["prefix"] == host.as_str());
        assert!(!held, "{g} still forwards to fra-h1: {}", st["routes"]);
    }

    lab.lab_ok(&["start", "fra-h1"]);
    lab.wait_for("every gateway to announce fra-h1 again", announced);
    let out = lab.ping("ams-h1", FRA_H1, 3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// routed reconciles only its own routes: those of its protocol in the
/// main table. A route of the same protocol number in another table (audit
/// M11: the kernel's dump is not filtered, and routed used to delete it
/// wherever it was) survives routed's stop (which removes its routes) and
/// start (which prunes stale ones), while one in the main table goes.
#[test]
fn routed_prunes_its_stale_kernel_routes_and_no_other_tables() {
    if !netns_or_skip("routed_prunes_its_stale_kernel_routes_and_no_other_tables") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 1\nhosts = 1\n\
         [[site]]\nname = \"ams\"\ngateways = 1\nhosts = 1\n",
    );
    lab.wait_for("fra-gw1's routed to own its table", |l| {
        l.routed("fra-gw1", "status")["fib_ready"] == true
    });
    let add = |r: &[&str]| {
        let mut c = vec!["ip", "route", "add"];
        c.extend_from_slice(r);
        lab.exec_ok("fra-gw1", &c);
    };
    add(&["10.99.0.0/24", "dev", "lo", "proto", "201", "table", "100"]);
    add(&["10.97.0.0/24", "dev", "lo", "proto", "201"]);
    add(&["10.98.0.0/24", "dev", "cube0", "proto", "201"]);
    lab.lab_ok(&["kill", "fra-gw1", "--daemon", "routed"]);
    lab.lab_ok(&["start", "fra-gw1"]);
    lab.wait_for("the restarted routed to prune its stale route", |l| {
        l.routed("fra-gw1", "status")["fib_ready"] == true
            && !l
                .exec_ok("fra-gw1", &["ip", "route", "show", "proto", "201"])
                .contains("10.98.0.0/24")
    });
    let other = lab.exec_ok(
        "fra-gw1",
        &["ip", "route", "show", "table", "100", "proto", "201"],
    );
    assert!(
        other.contains("10.99.0.0/24"),
        "the route of table 100 is gone: {other:?}"
    );
    // Its number on another interface, without a gateway: not a route
    // routed makes, so not one it removes.
    let main = lab.exec_ok("fra-gw1", &["ip", "route", "show", "proto", "201"]);
    assert!(
        main.contains("10.97.0.0/24"),
        "the route on lo is gone: {main:?}"
    );
}

/// A local unprivileged user on a gateway forges BFD packets to another
/// site's gateway. They leave from the gateway's own overlay address (the
/// kernel picks it for the overlay), with TTL 255, so only the
/// discriminators tell them from the real session's: a Down with no Your
/// Discriminator (five of them took the session down before), and Downs
/// with the discriminators the neighbour's index and router id used to
/// give. None takes the session down; each is counted as discarded.
#[test]
fn a_local_user_of_a_gateway_can_neither_forge_bfd_nor_open_bgp_as_it() {
    if !netns_or_skip("a_local_user_of_a_gateway_can_neither_forge_bfd_nor_open_bgp_as_it") {
        return;
    }
    // BFD between the gateways asked for (not the default).
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\ngateway_bfd = true\n\
         [[site]]\nname = \"fra\"\ngateways = 1\nhosts = 1\n\
         [[site]]\nname = \"ams\"\ngateways = 1\nhosts = 1\n",
    );
    let neighbor = |l: &Lab| -> Value {
        l.routed("ams-gw1", "status")["neighbors"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == "fra-gw1").cloned())
            .unwrap_or(Value::Null)
    };
    lab.wait_for("the fra-gw1 session with BFD up at ams-gw1", |l| {
        let n = neighbor(l);
        n["state"] == "established" && n["bfd"] == "up"
    });
    let before = neighbor(&lab);
    let flaps = before["flaps"].as_u64().unwrap();
    let discarded = before["bfd_discarded"].as_u64().unwrap_or(0);

    // Version 1, state Down, detect mult 3, 24 bytes, my discriminator 1,
    // then `your`, 1 s intervals.
    let down = |your: u32| -> Vec<u8> {
        let mut p = vec![0x20, 0x40, 3, 24];
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&your.to_be_bytes());
        for _ in 0..3 {
            p.extend_from_slice(&1_000_000u32.to_be_bytes());
        }
        p
    };
    let target: std::net::SocketAddr = "10.77.2.1:3784".parse().unwrap();
    let router_id = u32::from(std::net::Ipv4Addr::new(10, 77, 2, 1));
    let mut forged = vec![down(0); 5];
    forged.extend((0..4u32).map(|i| down((i + 1) | (router_id << 8))));
    for p in &forged {
        lab.send_udp_as_nobody("fra-gw1", target, p);
    }
    let sent = forged.len() as u64;
    lab.wait_for("ams-gw1 to discard the forged packets, or go down", |l| {
        let n = neighbor(l);
        n["bfd_discarded"].as_u64().unwrap_or(0) >= discarded + sent
            || n["flaps"].as_u64() != Some(flaps)
    });
    let after = neighbor(&lab);
    assert_eq!(
        after["flaps"].as_u64(),
        Some(flaps),
        "forged BFD took the session down: {after}"
    );
    assert_eq!(after["bfd"], "up", "{after}");
    assert_eq!(after["state"], "established", "{after}");

    // BGP from the same user: its connection leaves from fra-gw1's overlay
    // address, the one ams-gw1 expects fra-gw1 at, and without TCP-MD5 it
    // was accepted (a second connection from the neighbour, which a
    // collision could resolve against the running session). With the key
    // both gateways derive from their own keys, ams-gw1's kernel drops its
    // unsigned SYN.
    let bgp: std::net::SocketAddr = "10.77.2.1:179".parse().unwrap();
    let r = lab.tcp_connect_as_nobody("fra-gw1", bgp, std::time::Duration::from_secs(3));
    assert!(
        r.is_err(),
        "a local user of fra-gw1 opened BGP to ams-gw1 as fra-gw1"
    );
    let after = neighbor(&lab);
    assert_eq!(after["flaps"].as_u64(), Some(flaps), "{after}");
    assert_eq!(after["state"], "established", "{after}");
}

/// Audit H1 from the site LAN: a machine on fra's LAN writes ams-gw1's
/// overlay address on BFD packets to fra-gw1 with TTL 255 and the session's
/// real discriminators (the worst case: it learned them), saying Down.
/// fra-gw1 takes ams-gw1's BFD only from the overlay interface, so they are
/// counted and change nothing; the same machine's BGP connection to fra-gw1
/// ends no session either.
#[test]
fn a_machine_on_the_site_lan_can_neither_forge_bfd_nor_reset_bgp_of_the_gateways() {
    if !netns_or_skip(
        "a_machine_on_the_site_lan_can_neither_forge_bfd_nor_reset_bgp_of_the_gateways",
    ) {
        return;
    }
    // BFD between the gateways asked for (not the default).
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\ngateway_bfd = true\n\
         [[site]]\nname = \"fra\"\ngateways = 1\nhosts = 1\ngobgp = true\n\
         [[site]]\nname = \"ams\"\ngateways = 1\nhosts = 1\n",
    );
    lab.wait_for("the ams-gw1 session with BFD up at fra-gw1", |l| {
        let n = neighbor(l, "fra-gw1", "ams-gw1");
        n["state"] == "established" && n["bfd"] == "up"
    });
    let before = neighbor(&lab, "fra-gw1", "ams-gw1");
    let flaps = before["flaps"].as_u64().unwrap();
    let discarded = before["bfd_discarded"].as_u64().unwrap();
    let d = &before["bfd_discriminators"];
    let (ours, theirs) = (d[0].as_u64().unwrap() as u32, d[1].as_u64().unwrap() as u32);
    assert_ne!(theirs, 0, "{before}");
    // Version 1, diag 7 (administratively down), state Down, multiplier
    // 3, 24 bytes; ams-gw1's discriminator, then fra-gw1's; 1 s intervals.
    let mut down = vec![0x27, 0x40, 3, 24];
    down.extend_from_slice(&theirs.to_be_bytes());
    down.extend_from_slice(&ours.to_be_bytes());
    for _ in 0..3 {
        down.extend_from_slice(&1_000_000u32.to_be_bytes());
    }
    let lan = "fra-gobgp";
    lab.exec_ok(
        lan,
        &[
            "ip",
            "route",
            "replace",
            "10.77.1.1/32",
            "via",
            "172.16.1.1",
        ],
    );
    let from = "10.77.2.1:3784".parse().unwrap();
    let to = "10.77.1.1:3784".parse().unwrap();
    let sent = 5;
    for _ in 0..sent {
        lab.send_spoofed_udp(lan, from, to, 255, &down);
    }
    lab.wait_for("fra-gw1 to discard the forged packets, or go down", |l| {
        let n = neighbor(l, "fra-gw1", "ams-gw1");
        n["bfd_discarded"].as_u64().unwrap_or(0) >= discarded + sent
            || n["flaps"].as_u64() != Some(flaps)
    });
    let after = neighbor(&lab, "fra-gw1", "ams-gw1");
    assert_eq!(
        after["flaps"].as_u64(),
        Some(flaps),
        "BFD forged from the LAN took the session down: {after}"
    );
    assert_eq!(
        (&after["bfd"], &after["state"]),
        (&"up".into(), &"established".into()),
        "{after}"
    );
    // BGP from the LAN machine to fra-gw1's overlay address, TTL 255: not a
    // neighbour at that address, so whatever the kernel lets through,
    // routed closes it and no session moves.
    let _ = lab.tcp_connect_as_nobody(
        lan,
        "10.77.1.1:179".parse().unwrap(),
        std::time::Duration::from_secs(3),
    );
    let after = neighbor(&lab, "fra-gw1", "ams-gw1");
    assert_eq!(after["flaps"].as_u64(), Some(flaps), "{after}");
    assert_eq!(after["state"], "established", "{after}");
}

/// Turns graceful restart on in the routed of each of `gateways` (which
/// restarts it) and waits until the lab has converged again.
fn enable_graceful_restart(lab: &Lab, gateways: &[&str]) {
    for gw in gateways {
        lab.reconfigure(gw, "routed.toml", Some("routed"), |text| {
            text.replacen(
                "[[neighbor]]",
                "[graceful_restart]\nenabled = true\n\n[[neighbor]]",
                1,
            )
        });
    }
    lab.lab_ok(&["wait"]);
}

/// `routed restart` on `gw` (graceful restart on, not restarted before);
/// returns once the new process has its table whole again.
fn restart_routed_gracefully(lab: &Lab, gw: &str) {
    let log = lab.path().join("nodes").join(gw).join("routed.log");
    let restarted = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("graceful restart: table whole")
    };
    assert!(!restarted());
    let sock = lab.node(gw).routed_socket.unwrap();
    let out = Command::new(common::bin("routed"))
        .args(["restart", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    lab.wait_for(&format!("{gw}'s routed back with its table whole"), |l| {
        restarted() && l.routed(gw, "status")["restarting"] == false
    });
}

/// Graceful restart between gateways: `routed restart` on fra-gw1 (both
/// gateways with `[graceful_restart] enabled = true`). ams-gw1 takes the
/// closed session for a restart (not BFD, not a flap) and keeps fra-gw1's
/// routes until it is back; a ping between the sites runs throughout.
#[test]
fn a_graceful_routed_restart_keeps_a_gateways_routes_at_the_other_gateway() {
    if !netns_or_skip("a_graceful_routed_restart_keeps_a_gateways_routes_at_the_other_gateway") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 1\nhosts = 1\n\
         [[site]]\nname = \"ams\"\ngateways = 1\nhosts = 1\n",
    );
    enable_graceful_restart(&lab, &["fra-gw1", "ams-gw1"]);
    let host = format!("{FRA_H1}/32");
    lab.wait_for("fra-h1 through fra-gw1 at ams-gw1", |l| {
        via(l, "ams-gw1", &host) == vec!["fra-gw1"]
            && neighbor(l, "ams-gw1", "fra-gw1")["tunnel_up"] == true
    });
    let flaps = neighbor(&lab, "ams-gw1", "fra-gw1")["flaps"]
        .as_u64()
        .unwrap();
    let (sent, got, gap) = ping_through(&lab, "ams-h1", FRA_H1, || {
        restart_routed_gracefully(&lab, "fra-gw1")
    });
    eprintln!("ping through the restart: {got} of {sent} answered, longest gap {gap}");
    lab.wait_for("the session back at ams-gw1", |l| {
        neighbor(l, "ams-gw1", "fra-gw1")["state"] == "established"
    });
    let n = neighbor(&lab, "ams-gw1", "fra-gw1");
    assert!(
        n["history"].to_string().contains("(graceful restart)"),
        "ams-gw1 did not take it for a restart: {n}"
    );
    assert_eq!(n["flaps"].as_u64(), Some(flaps), "{n}");
    assert_eq!(via(&lab, "ams-gw1", &host), vec!["fra-gw1"]);
    // The routes stayed (above); what a loaded machine may still lose
    // is a few replies, not the 45 of a withdrawal (seen before BFD
    // started over with the restarted neighbour).
    assert!(got >= sent - 5 && gap <= 5, "{got}/{sent}, gap {gap}");
}

/// The kernel's route changes in a node's namespace, as `ip -o monitor
/// route` prints them, one line each, read on a thread.
struct RouteMonitor {
    lines: std::sync::mpsc::Receiver<String>,
    /// Killed with the lab.
    _child: std::process::Child,
    marks: u32,
}

impl RouteMonitor {
    fn start(lab: &Lab, node: &str) -> RouteMonitor {
        let mut child = lab.spawn(node, &["ip", "-o", "monitor", "route"]);
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = RouteMonitor {
            lines,
            _child: child,
            marks: 0,
        };
        // Listening once a change of our own shows.
        m.until_mark(lab, node);
        m
    }

    /// Makes a route change of its own in `node` and returns every line
    /// the monitor printed before it: a point in the stream the caller
    /// knows is after whatever it did.
    fn until_mark(&mut self, lab: &Lab, node: &str) -> Vec<String> {
        self.marks += 1;
        let mark = format!("203.0.113.{}", self.marks);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // Again until it shows: the first may come before the monitor
            // listens.
            lab.exec_ok(node, &["ip", "route", "replace", "blackhole", &mark]);
            lab.exec_ok(node, &["ip", "route", "del", "blackhole", &mark]);
            while let Ok(l) = self
                .lines
                .recv_timeout(std::time::Duration::from_millis(200))
            {
                if l.contains(&mark) {
                    return seen;
                }
                seen.push(l);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ip monitor in {node} printed nothing of {mark}"
            );
        }
    }
}

/// Graceful restart with FRR as the helper (its default), BFD on (and
/// ams-gw1 a helper too): a `routed restart` of fra-gw1 takes BFD down too, which FRR's
/// `bfd check-control-plane-failure` ignores while routed restarts
/// gracefully (routed's BFD runs in its control plane, C bit clear). FRR
/// keeps the overlay's routes through fra-gw1: its kernel routes do not
/// change across the restart.
#[test]
fn a_graceful_routed_restart_changes_no_route_at_frr() {
    if !netns_or_skip("a_graceful_routed_restart_changes_no_route_at_frr") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 1\nhosts = 1\nfrr = true\n\
         [[site]]\nname = \"ams\"\ngateways = 1\nhosts = 1\n",
    );
    // Both gateways: ams-gw1 helps too, so the restart is no flap there
    // (damping would hold fra-gw1 down and take the routes FRR keeps).
    enable_graceful_restart(&lab, &["fra-gw1", "ams-gw1"]);
    let gw = ["172.16.1.1"];
    lab.wait_for("FRR: fra-gw1 Established, BFD up", |l| {
        frr_peers(l, "fra-frr", &gw) == vec![("Established".to_string(), "up".to_string())]
    });
    lab.wait_for("FRR's route to ams-h1 in the kernel", |l| {
        l.exec_ok("fra-frr", &["ip", "route", "show", AMS_H1])
            .contains("via 172.16.1.1")
    });
    // FRR has taken fra-gw1's capability (forwarding kept, F) and its
    // End-of-RIB for both families: what it goes by when the session
    // closes.
    lab.wait_for("FRR: fra-gw1's F bits and End-of-RIBs", |l| {
        let n = vtysh(l, "fra-frr", "show bgp neighbors 172.16.1.1 json");
        let gr = &n["172.16.1.1"]["gracefulRestartInfo"];
        ["ipv4Unicast", "ipv6Unicast"]
            .iter()
            .all(|f| gr[*f]["fBit"] == true && gr["endOfRibRecv"][*f] == true)
    });
    let mut monitor = RouteMonitor::start(&lab, "fra-frr");
    restart_routed_gracefully(&lab, "fra-gw1");
    lab.wait_for("FRR: fra-gw1 Established again, BFD up", |l| {
        frr_peers(l, "fra-frr", &gw) == vec![("Established".to_string(), "up".to_string())]
            && neighbor(l, "fra-gw1", "fra-frr")["state"] == "established"
    });
    let changes = monitor.until_mark(&lab, "fra-frr");
    let overlay: Vec<&String> = changes.iter().filter(|l| l.contains("10.77.")).collect();
    assert!(
        overlay.is_empty(),
        "FRR's routes changed across the restart: {overlay:?}\nall changes: {changes:#?}\nFRR's log:\n{}",
        std::fs::read_to_string(lab.node("fra-frr").log).unwrap_or_default()
    );
    assert!(lab
        .exec_ok("fra-frr", &["ip", "route", "show", AMS_H1])
        .contains("via 172.16.1.1"));
}

/// A host whose tunnel to one of its two gateways drops silently: that
/// gateway stops hearing its probes and detaches it, routed withdraws it,
/// and the other site's gateways send to the host's other gateway only, so
/// pings from the other site get through again. Prints how long after the
/// fault the path was gone at the far gateways.
#[test]
fn a_hosts_tunnel_to_one_gateway_dropped_silently_is_withdrawn_and_the_host_stays_reachable() {
    if !netns_or_skip(
        "a_hosts_tunnel_to_one_gateway_dropped_silently_is_withdrawn_and_the_host_stays_reachable",
    ) {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n\
         [[site]]\nname = \"fra\"\ngateways = 2\nhosts = 1\n\
         [[site]]\nname = \"ams\"\ngateways = 2\nhosts = 1\n",
    );
    let host = format!("{FRA_H1}/32");
    let far = ["ams-gw1", "ams-gw2", "fra-gw2"];
    let through_gw1 = |l: &Lab| {
        far.iter()
            .any(|g| via(l, g, &host).contains(&"fra-gw1".into()))
    };
    lab.wait_for("fra-h1 announced through fra-gw1", through_gw1);
    let t0 = std::time::Instant::now();
    lab.lab_ok(&["link", "fra-h1", "fra-gw1", "drop"]);
    lab.wait_for("fra-gw1's path to fra-h1 withdrawn", |l| !through_gw1(l));
    eprintln!(
        "path through fra-gw1 gone at {far:?} {:.2} s after the drop",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(via(&lab, "fra-gw2", &host), ["local"]);
    for g in ["ams-gw1", "ams-gw2"] {
        assert_eq!(via(&lab, g, &host), ["fra-gw2"], "{g}");
    }
    let out = lab.ping("ams-h1", FRA_H1, 20);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");
    // Healed: both gateways announce it again.
    lab.lab_ok(&["link", "fra-h1", "fra-gw1", "heal"]);
    lab.wait_for("fra-h1 announced through fra-gw1 again", through_gw1);
}

/// Site fra's two gateways announce 10.77.1.0/24, each while its probe of
/// a machine on the site LAN (fra-h1's LAN address, ICMP every 500 ms,
/// fall 2) passes. fra-gw1 loses the LAN: the other site's gateways
/// forward the prefix to fra-gw2 alone (the time it took is printed), and
/// to both again once the LAN is back. With a TCP probe to a port nobody
/// listens on, fra-gw2 withdraws it.
#[test]
fn a_site_prefix_is_withdrawn_by_the_gateway_whose_lan_probe_fails() {
    if !netns_or_skip("a_site_prefix_is_withdrawn_by_the_gateway_whose_lan_probe_fails") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 100\n[[site]]\nname = \"fra\"\ngateways = 2\n[[site]]\nname = \"ams\"\n",
    );
    const SITE: &str = "10.77.1.0/24";
    for (gw, probe) in [
        ("fra-gw1", "172.16.1.101"),
        ("fra-gw2", "icmp://172.16.1.101"),
    ] {
        lab.reconfigure(gw, "routed.toml", Some("routed"), |text| {
            text + &format!(
                "\n[[announce]]\nprefix = \"{SITE}\"\nprobe = \"{probe}\"\nprobe_interval_ms = 500\nprobe_timeout_ms = 400\nfall = 2\nrise = 2\n"
            )
        });
    }
    lab.lab_ok(&["wait"]);
    let both = vec!["fra-gw1".to_string(), "fra-gw2".to_string()];
    lab.wait_for("both fra gateways announcing the site prefix", |l| {
        overlay_via(l, "ams-gw1", SITE) == both
    });
    let t0 = std::time::Instant::now();
    lab.lab_ok(&["link", "fra-gw1", "fra-h1", "drop"]);
    lab.wait_for("the site prefix via fra-gw2 alone", |l| {
        overlay_via(l, "ams-gw1", SITE) == ["fra-gw2"]
    });
    eprintln!(
        "fra-gw1 lost its LAN: withdrawn at ams-gw1 {:?} after (probe every 500 ms, fall 2)",
        t0.elapsed()
    );
    lab.lab_ok(&["link", "fra-gw1", "fra-h1", "heal"]);
    lab.wait_for("both fra gateways again", |l| {
        overlay_via(l, "ams-gw1", SITE) == both
    });

    // A probe that never passes: fra-gw2 withdraws the prefix.
    lab.reconfigure("fra-gw2", "routed.toml", Some("routed"), |text| {
        let text = text.replace("icmp://172.16.1.101", "tcp://172.16.1.101:9");
        assert!(text.contains("tcp://172.16.1.101:9"), "{text}");
        text
    });
    lab.wait_for("the site prefix via fra-gw1 alone", |l| {
        overlay_via(l, "ams-gw1", SITE) == ["fra-gw1"]
    });
}

/// `text` (a routed.toml) without the `[[neighbor]]` named `name`.
fn without_neighbor(text: &str, name: &str) -> String {
    let mut parts = text.split("[[neighbor]]");
    let mut out = parts.next().unwrap_or_default().to_string();
    let mut found = false;
    for block in parts {
        if block.contains(&format!("name = \"{name}\"")) {
            found = true;
        } else {
            out.push_str("[[neighbor]]");
            out.push_str(block);
        }
    }
    assert!(found, "no neighbour {name} in\n{text}");
    out
}

/// Every established session of the gateways: (gateway, neighbour) →
/// (flaps, uptime in seconds).
fn sessions(
    lab: &Lab,
    gateways: &[&str],
) -> std::collections::BTreeMap<(String, String), (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for gw in gateways {
        for n in lab.routed(gw, "status")["neighbors"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            assert_eq!(n["state"], "established", "{gw}: {n}");
            m.insert(
                (gw.to_string(), n["name"].as_str().unwrap().to_string()),
                (
                    n["flaps"].as_u64().unwrap(),
                    n["uptime_s"].as_u64().unwrap(),
                ),
            );
        }
    }
    m
}

fn routed_request(lab: &Lab, node: &str, req: &str) -> Value {
    let sock = lab.node(node).routed_socket.expect("routed socket");
    common::control_request(&sock, req)
}

/// routed reloads routed.toml on SIGHUP without a restart: two gateways
/// that forget each other (a Cease, the route moves through the third
/// site) and then gain each other back bring that session up while every
/// other session stays established with its flap count and uptime. A
/// config with a mistake is refused whole, through the control socket
/// with the file and key, and by SIGHUP with the same in the log.
#[test]
fn a_gateway_gains_a_neighbour_by_sighup_and_no_other_session_moves() {
    if !netns_or_skip("a_gateway_gains_a_neighbour_by_sighup_and_no_other_session_moves") {
        return;
    }
    // BFD at 300 ms x 3: a loaded test machine that stalls the daemons
    // for a few hundred ms must not look like a session that moved.
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 300\n\
         [[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n[[site]]\nname = \"par\"\n",
    );
    lab.lab_ok(&["wait"]);
    let gws = ["fra-gw1", "ams-gw1", "par-gw1"];
    let par_h1 = "10.77.3.11/32";
    let config = |gw: &str| {
        std::fs::read_to_string(lab.path().join("nodes").join(gw).join("routed.toml")).unwrap()
    };
    let full = [config("fra-gw1"), config("par-gw1")];
    // fra-gw1 and par-gw1 forget each other.
    lab.reload("fra-gw1", "routed.toml", "routed", |t| {
        without_neighbor(&t, "par-gw1")
    });
    lab.reload("par-gw1", "routed.toml", "routed", |t| {
        without_neighbor(&t, "fra-gw1")
    });
    lab.wait_for("fra-gw1 and par-gw1 without each other, through ams", |l| {
        neighbor(l, "fra-gw1", "par-gw1").is_null()
            && neighbor(l, "par-gw1", "fra-gw1").is_null()
            && via(l, "fra-gw1", par_h1) == vec!["ams-gw1"]
    });
    assert!(lab.ping("fra-h1", "10.77.3.11", 2).status.success());
    let before = sessions(&lab, &gws);
    assert_eq!(before.len(), 4, "{before:?}");
    // They gain each other back: SIGHUP, no restart.
    lab.reload("fra-gw1", "routed.toml", "routed", |_| full[0].clone());
    lab.reload("par-gw1", "routed.toml", "routed", |_| full[1].clone());
    lab.wait_for(
        "the new session established on both ends, the route direct",
        |l| {
            neighbor(l, "fra-gw1", "par-gw1")["state"] == "established"
                && neighbor(l, "par-gw1", "fra-gw1")["state"] == "established"
                && via(l, "fra-gw1", par_h1) == vec!["par-gw1"]
        },
    );
    let after = sessions(&lab, &gws);
    for (k, (flaps, up)) in &before {
        let (f, u) = after[k];
        assert_eq!(f, *flaps, "{k:?} flapped");
        assert!(u >= *up, "{k:?} was reset: up {u} s, {up} s before");
    }
    let log = std::fs::read_to_string(lab.path().join("nodes/fra-gw1/routed.log")).unwrap();
    assert!(log.contains("reload: neighbour added"), "{log}");
    assert!(log.contains("reload: neighbour removed"), "{log}");
    // A mistake: refused whole, with the file and the key, and nothing moves.
    let file = lab.path().join("nodes/fra-gw1/routed.toml");
    let bad = without_neighbor(&full[0], "ams-gw1")
        .replace("[timers]\n", "[timers]\nhold_time_s_typo = 3\n");
    assert!(bad.contains("hold_time_s_typo"), "{bad}");
    std::fs::write(&file, &bad).unwrap();
    let reply = routed_request(&lab, "fra-gw1", r#"{"cmd":"reload"}"#);
    let e = reply["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        e.contains(&file.display().to_string()) && e.contains("hold_time_s_typo"),
        "{e}"
    );
    let refused = |l: &Lab| {
        std::fs::read_to_string(l.path().join("nodes/fra-gw1/routed.log"))
            .unwrap()
            .matches("reload refused")
            .count()
    };
    let n = refused(&lab);
    lab.reload("fra-gw1", "routed.toml", "routed", |t| t);
    lab.wait_for("the SIGHUP reload refused in the log", |l| refused(l) > n);
    let log = std::fs::read_to_string(lab.path().join("nodes/fra-gw1/routed.log")).unwrap();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("reload refused"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&file.display().to_string()) && line.contains("hold_time_s_typo"),
        "{line}"
    );
    // Fixed settings are refused by key.
    let moved = full[0].replace("router_id = \"10.77.1.1\"", "router_id = \"10.77.1.99\"");
    assert_ne!(moved, full[0]);
    std::fs::write(&file, moved).unwrap();
    let reply = routed_request(&lab, "fra-gw1", r#"{"cmd":"reload"}"#);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("router_id: cannot change"),
        "{reply}"
    );
    assert!(!neighbor(&lab, "fra-gw1", "ams-gw1").is_null());
    let still = sessions(&lab, &gws);
    for (k, (flaps, up)) in &after {
        let (f, u) = still[k];
        assert_eq!(f, *flaps, "{k:?} flapped");
        assert!(u >= *up, "{k:?} was reset");
    }
    // The good config again: a reload that changes nothing.
    std::fs::write(&file, &full[0]).unwrap();
    let reply = routed_request(&lab, "fra-gw1", r#"{"cmd":"reload"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["added"], serde_json::json!([]), "{reply}");
    assert_eq!(reply["reset"], serde_json::json!([]), "{reply}");
}
