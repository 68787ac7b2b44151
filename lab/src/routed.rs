//! routed on the lab's gateways (spec `routed = true`): the config each
//! gateway gets, and what "converged" means for its routes.
//!
//! Every gateway has its own private 4-byte AS (RFC 6996) and peers with
//! every other gateway of every site (a full eBGP mesh) over the overlay,
//! at the neighbour's IPv4 virtual address.

use crate::build::{alive, read_pid};
use crate::spec::{SessionFamily, Spec};
use crate::state::{Lab, Node};
use anyhow::{anyhow, Context, Result};
use cubenet_api::routed as api;
use ipnet::IpNet;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// A gateway as routed configs name it.
pub struct Gateway {
    pub name: String,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub cert: PathBuf,
}

/// The AS of gateway `gateway_idx` of site `site_idx` (as in 10.77.i.j):
/// 4200000000 + 100 i + j. The spec's limits (200 sites, 9 gateways) keep
/// it inside the private range 4200000000-4294967294.
pub fn asn(site_idx: usize, gateway_idx: usize) -> u32 {
    4_200_000_000 + 100 * site_idx as u32 + gateway_idx as u32
}

#[derive(Serialize)]
struct Config<'a> {
    asn: u32,
    router_id: String,
    control_socket: &'a Path,
    overlayd_socket: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<&'static str>,
    ca: PathBuf,
    cert: &'a Path,
    /// The gateway's key: TCP-MD5 with the other gateways.
    key: &'a Path,
    kernel_routes: bool,
    timers: Timers,
    bfd: Bfd,
    damping: Damping,
    neighbor: Vec<Neighbor<'a>>,
}

#[derive(Serialize)]
struct Timers {
    hold_time_s: u16,
    keepalive_s: u16,
    connect_retry_s: u64,
}

#[derive(Serialize)]
struct Bfd {
    interval_ms: u64,
    multiplier: u8,
}

#[derive(Serialize)]
struct Damping {
    enabled: bool,
}

#[derive(Serialize)]
struct Neighbor<'a> {
    name: &'a str,
    address: String,
    asn: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<&'a Path>,
    import: Import,
    export: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bfd: Option<bool>,
    /// FRR runs BFD for a neighbour with `ttl-security` on the multihop
    /// port.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    bfd_multihop: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reflector: bool,
    /// Serialised only when off: a gateway learned through the reflectors.
    #[serde(skip_serializing_if = "is_true")]
    session: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'static str>,
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Serialize)]
#[serde(untagged)]
enum Import {
    Named(&'static str),
    List(Vec<String>),
}

/// The `routed.toml` of gateway `n`: its identity, and every other gateway
/// in `gateways` as a neighbour; with `metrics`, metrics and the status
/// page on [`crate::spec::ROUTED_METRICS`].
pub fn config_text(lab: &Lab, n: &Node, gateways: &[Gateway], spec: &Spec) -> Result<String> {
    let (bfd_interval_ms, metrics) = (spec.bfd_interval_ms, spec.metrics);
    let me = gateways
        .iter()
        .find(|g| g.name == n.name)
        .with_context(|| format!("{}: not a gateway of this lab", n.name))?;
    let control_socket = n
        .routed_socket
        .as_deref()
        .with_context(|| format!("{}: routed is off for this node", n.name))?;
    // With reflectors, no session with another gateway: its paths come
    // through the reflectors.
    let reflected = spec.route_reflectors > 0;
    let neighbor = gateways
        .iter()
        .filter(|g| g.name != me.name)
        .map(|g| Neighbor {
            name: &g.name,
            address: g.router_id.to_string(),
            asn: g.asn,
            cert: Some(&g.cert),
            import: Import::Named("overlay"),
            export: if reflected { "none" } else { "all" },
            bfd: (spec.gateway_bfd && !reflected).then_some(true),
            bfd_multihop: false,
            reflector: false,
            session: !reflected,
            password: None,
        })
        .chain(reflectors(lab))
        .chain(site_routers(lab, n, spec))
        .collect();
    let config = Config {
        asn: me.asn,
        router_id: me.router_id.to_string(),
        control_socket,
        overlayd_socket: &n.overlayd_socket,
        metrics_listen: metrics.then_some(crate::spec::ROUTED_METRICS),
        ca: lab.ca_dir.join("ca.crt"),
        cert: &n.cert,
        key: &n.key,
        kernel_routes: true,
        timers: Timers {
            hold_time_s: 9,
            keepalive_s: 3,
            connect_retry_s: 1,
        },
        bfd: Bfd {
            interval_ms: bfd_interval_ms,
            multiplier: 3,
        },
        damping: Damping { enabled: true },
        neighbor,
    };
    let body =
        toml::to_string(&config).with_context(|| format!("{}: rendering routed config", n.name))?;
    Ok(format!(
        "# routed config for {} (gateway, site {}), written by cubenet-lab\n{body}",
        n.name, n.site
    ))
}

/// The routers on `n`'s site LAN: a BIRD site router offering its office
/// LAN 192.168.i.0/24 and fd00:192:168:i::/64 and an FRR one offering
/// 192.168.(50+i).0/24 and its IPv6 twin (both with BFD, over a session of
/// the site's `router_session` family), and a GoBGP speaker offering
/// 192.168.(100+i).0/24 over IPv4 (GoBGP has no BFD).
fn site_routers<'a>(lab: &'a Lab, n: &Node, spec: &Spec) -> Vec<Neighbor<'a>> {
    let v6 = spec
        .sites
        .iter()
        .find(|s| s.name == n.site)
        .is_some_and(|s| s.router_session == SessionFamily::Ipv6);
    lab.nodes
        .iter()
        .filter(|b| b.role == "router" && b.site == n.site)
        .filter_map(|b| {
            let v4 = b.underlay.first()?.clone();
            let i: usize = v4.split('.').nth(2)?.parse().ok()?;
            let address = match (&b.lan6, v6 && b.kind != "gobgp") {
                (Some(a6), true) => a6.clone(),
                _ => v4,
            };
            let prefixes = b
                .addresses
                .iter()
                .filter_map(|a| Some(a.parse::<IpNet>().ok()?.trunc().to_string()))
                .collect();
            let asn = match b.kind.as_str() {
                "bird" => crate::bird::asn(i),
                "frr" => crate::frr::asn(i),
                _ => crate::build::gobgp_asn(i),
            };
            Some(Neighbor {
                name: &b.name,
                address,
                asn,
                cert: None,
                import: Import::List(prefixes),
                export: "all",
                bfd: (b.kind == "gobgp").then_some(false),
                bfd_multihop: b.kind == "frr",
                reflector: false,
                session: true,
                password: None,
            })
        })
        .collect()
}

/// The lab's route reflectors, as every gateway's neighbours: on the
/// underlay, one hop away (GTSM), TCP-MD5 with the lab's password.
fn reflectors(lab: &Lab) -> Vec<Neighbor<'_>> {
    lab.nodes
        .iter()
        .filter(|r| r.role == "reflector")
        .filter_map(|r| {
            let k: usize = r.name.strip_prefix("rr")?.parse().ok()?;
            Some(Neighbor {
                name: &r.name,
                address: crate::bird::reflector_address(k).to_string(),
                asn: crate::bird::reflector_asn(k),
                cert: None,
                import: Import::Named("overlay"),
                export: "all",
                bfd: None,
                bfd_multihop: false,
                reflector: true,
                session: true,
                password: Some(crate::bird::REFLECTOR_PASSWORD),
            })
        })
        .collect()
}

/// What one routed gateway still lacks (None: nothing, or not a routed
/// gateway).
pub fn gateway_pending(lab: &Lab, n: &Node) -> Option<String> {
    let sock = n.routed_socket.as_deref()?;
    let answers = ask::<api::Status>(sock, &api::Request::Status)
        .and_then(|s| Ok((s, ask::<api::Routes>(sock, &api::Request::Routes)?)));
    let (status, routes) = match answers {
        Ok(a) => a,
        Err(e) => return Some(format!("{}: {}", n.name, not_answering(lab, n, e))),
    };
    // A gateway reached through the reflectors is ready when its paths
    // are in use (its tunnel up).
    let states: Vec<(&str, api::SessionState)> = status
        .neighbors
        .iter()
        .map(|x| match x.state {
            api::SessionState::Reflected if x.usable => {
                (x.name.as_str(), api::SessionState::Established)
            }
            s => (x.name.as_str(), s),
        })
        .collect();
    let mut missing = neighbors_not_established(lab, n, &states);
    let have: Vec<IpNet> = routes.routes.iter().map(|r| r.prefix).collect();
    let lacking = missing_routes(lab, &have);
    if !lacking.is_empty() {
        missing.push(format!("no route to {}", lacking.join(", ")));
    }
    (!missing.is_empty()).then(|| format!("{}: routed: {}", n.name, missing.join(", ")))
}

/// Why routed did not answer: it is gone (see its log), or what it said.
fn not_answering(lab: &Lab, n: &Node, e: anyhow::Error) -> String {
    let running = read_pid(&lab.pid_file(&n.name, "routed")).is_some_and(alive);
    let log = n.routed_log().unwrap_or_default();
    if running {
        format!("{e:#}")
    } else {
        format!("routed is not running (log {})", log.display())
    }
}

/// One request on routed's control socket: no process per question (a
/// lab of 50 gateways is asked a hundred questions per round).
fn ask<T: serde::de::DeserializeOwned>(sock: &Path, req: &api::Request) -> Result<T> {
    cubenet_api::client::call_blocking_within(sock, req, Some(std::time::Duration::from_secs(2)))
        .map_err(|e| anyhow!("routed not answering on {}: {e}", sock.display()))
}

/// The other gateways that are not established neighbours of `n`, with
/// the state they are in.
fn neighbors_not_established(
    lab: &Lab,
    n: &Node,
    neighbors: &[(&str, api::SessionState)],
) -> Vec<String> {
    lab.nodes
        .iter()
        .filter(|g| {
            (g.role == "gateway" && g.name != n.name)
                || (g.role == "router" && g.site == n.site)
                || g.role == "reflector"
        })
        .filter_map(|g| {
            let state = neighbors
                .iter()
                .find(|x| x.0 == g.name.as_str())
                .map(|x| x.1);
            match state {
                Some(api::SessionState::Established) => None,
                Some(s) => Some(format!("neighbour {} {}", g.name, s.as_str())),
                None => Some(format!("neighbour {} not configured", g.name)),
            }
        })
        .collect()
}

/// The host routes (/32 of every overlayd and wireguard host of every
/// site) missing from `routes[].prefix`.
fn missing_routes(lab: &Lab, have: &[IpNet]) -> Vec<String> {
    let have: Vec<String> = have.iter().map(|p| p.to_string()).collect();
    host_prefixes(lab)
        .into_iter()
        .filter(|p| !have.contains(p))
        .collect()
}

fn host_prefixes(lab: &Lab) -> Vec<String> {
    lab.nodes
        .iter()
        .filter(|n| n.role == "host")
        .filter_map(Node::virtual_v4)
        .map(|a| format!("{a}/32"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{overlayd_config_text, plan_nodes, routed_gateways, Plan};
    use crate::spec::Spec;

    const TWO_BY_TWO: &str = "[[site]]\nname = \"fra\"\ngateways = 2\nhosts = 1\n\
        [[site]]\nname = \"ams\"\ngateways = 2\nhosts = 1\nwireguard_hosts = 1\n";

    fn lab_of(spec_text: &str) -> (Spec, Vec<Plan>, Lab) {
        let spec: Spec = toml::from_str(spec_text).expect("spec");
        let dir = Path::new("/lab");
        let plans = plan_nodes(&spec, dir, "clt");
        let lab = Lab {
            prefix: "clt".into(),
            dir: dir.into(),
            switches: Vec::new(),
            nodes: plans.iter().map(|p| p.node.clone()).collect(),
            ca_dir: dir.join("ca"),
            crl: dir.join("crl"),
        };
        (spec, plans, lab)
    }

    /// The gateway's routed.toml, read as routed reads it.
    fn routed_config(spec: &Spec, lab: &Lab, plans: &[Plan], name: &str) -> routed::config::Config {
        let gateways = routed_gateways(plans).expect("gateways");
        let n = lab.node(name).expect("node");
        let text = config_text(lab, n, &gateways, spec).expect("config");
        routed::config::Config::parse(&text).expect("routed takes the config")
    }

    /// 40 gateways need more neighbour entries than the kernel's default
    /// `gc_thresh3` (1024) holds: `up` raises it (at 40 tunnels between
    /// gateways of later sites never came up).
    #[test]
    fn forty_gateways_need_more_neighbour_entries_than_the_default() {
        let sites: String = (1..=20)
            .map(|s| format!("[[site]]\nname = \"s{s}\"\ngateways = 2\nhosts = 1\n"))
            .collect();
        let (_, plans, _) = lab_of(&format!("routed = true\n{sites}"));
        let need = crate::build::neighbour_entries(&plans);
        // 40 x 39 on the shared segment, 3 x 2 on each of 20 LANs.
        assert_eq!(need, 40 * 39 + 20 * 6);
        assert!(need > 1024);
        let (_, plans, _) = lab_of(&format!("routed = true\n{TWO_BY_TWO}"));
        assert_eq!(
            crate::build::neighbour_entries(&plans),
            4 * 3 + 3 * 2 + 4 * 3
        );
    }

    #[test]
    fn asns_are_private_and_per_gateway() {
        assert_eq!(asn(1, 1), 4_200_000_101);
        assert_eq!(asn(2, 2), 4_200_000_202);
        assert_eq!(asn(200, 9), 4_200_020_009);
    }

    #[test]
    fn routed_config_of_a_2x2_lab_has_a_full_mesh() {
        let (spec, plans, lab) = lab_of(&format!("routed = true\n{TWO_BY_TWO}"));
        let t = routed_config(&spec, &lab, &plans, "ams-gw2");
        assert_eq!(t.asn, 4_200_000_202);
        assert_eq!(t.router_id.to_string(), "10.77.2.2");
        assert_eq!(t.control_socket, Path::new("/lab/run/ams-gw2.routed.sock"));
        assert_eq!(
            t.overlayd_socket,
            Path::new("/lab/run/ams-gw2.overlayd.sock")
        );
        assert_eq!(t.ca, Path::new("/lab/ca/ca.crt"));
        assert_eq!(t.cert, Path::new("/lab/nodes/ams-gw2/node.crt"));
        assert!(t.kernel_routes);
        assert_eq!(t.timers.hold_time_s, 9);
        assert_eq!(t.timers.keepalive_s, 3);
        assert_eq!(t.timers.connect_retry_s, 1);
        assert_eq!(t.bfd.interval_ms, 100);
        assert_eq!(t.bfd.multiplier, 3);
        assert!(t.damping.enabled);
        let neighbors: Vec<(String, String, u32, Option<PathBuf>)> = t
            .neighbors
            .iter()
            .map(|x| {
                assert_eq!(
                    x.import,
                    Some(routed::config::Import::Named("overlay".into()))
                );
                assert_eq!(x.export.as_deref(), Some("all"));
                (x.name.clone(), x.address.to_string(), x.asn, x.cert.clone())
            })
            .collect();
        let want = |name: &str, address: &str, asn: u32| {
            let cert = PathBuf::from(format!("/lab/nodes/{name}/node.crt"));
            (name.to_string(), address.to_string(), asn, Some(cert))
        };
        assert_eq!(
            neighbors,
            vec![
                want("fra-gw1", "10.77.1.1", 4_200_000_101),
                want("fra-gw2", "10.77.1.2", 4_200_000_102),
                want("ams-gw1", "10.77.2.1", 4_200_000_201),
            ]
        );
    }

    /// An FRR site router is a neighbour of its site's gateways only,
    /// offering its LAN prefix, with BFD on the multihop port (FRR's BFD
    /// beside `ttl-security`); the gateways among themselves stay on 3784.
    #[test]
    fn an_frr_router_is_a_multihop_bfd_neighbour_of_its_sites_gateways() {
        let (spec, plans, lab) = lab_of(&format!(
            "routed = true\n{}",
            TWO_BY_TWO.replacen("hosts = 1\n", "hosts = 1\nfrr = true\n", 1)
        ));
        let t = routed_config(&spec, &lab, &plans, "fra-gw2");
        let frr = t.neighbors.iter().find(|x| x.name == "fra-frr");
        let frr = frr.expect("fra-frr is a neighbour");
        assert_eq!(frr.address.to_string(), "172.16.1.202");
        assert_eq!(frr.asn, 4_200_000_197);
        assert_eq!(
            frr.import,
            Some(routed::config::Import::List(vec![
                "192.168.51.0/24".parse().unwrap(),
                "fd00:192:168:33::/64".parse().unwrap()
            ]))
        );
        assert!(frr.bfd_multihop);
        assert_eq!(frr.bfd, None, "BFD on by default for a router");
        assert!(t
            .neighbors
            .iter()
            .filter(|x| x.name != "fra-frr")
            .all(|x| !x.bfd_multihop));
        let t = routed_config(&spec, &lab, &plans, "ams-gw1");
        assert!(t.neighbors.iter().all(|x| x.name != "fra-frr"));
    }

    /// `router_session = "ipv6"`: the site's BIRD and FRR are neighbours at
    /// their IPv6 LAN addresses, the GoBGP speaker stays on IPv4.
    #[test]
    fn the_router_session_family_picks_the_neighbour_address() {
        let (spec, plans, lab) = lab_of(&format!(
            "routed = true\n{}",
            TWO_BY_TWO.replacen(
                "hosts = 1\n",
                "hosts = 1\nbird = true\nfrr = true\ngobgp = true\nrouter_session = \"ipv6\"\n",
                1
            )
        ));
        let t = routed_config(&spec, &lab, &plans, "fra-gw1");
        let address = |name: &str| {
            let n = t.neighbors.iter().find(|x| x.name == name);
            n.expect("a neighbour").address.to_string()
        };
        assert_eq!(address("fra-bird"), "fd16:0:0:1::c8");
        assert_eq!(address("fra-frr"), "fd16:0:0:1::ca");
        assert_eq!(address("fra-gobgp"), "172.16.1.201");
        let (spec, plans, lab) = lab_of(&format!(
            "routed = true\n{}",
            TWO_BY_TWO.replacen("hosts = 1\n", "hosts = 1\nbird = true\n", 1)
        ));
        let t = routed_config(&spec, &lab, &plans, "fra-gw1");
        let bird = t.neighbors.iter().find(|x| x.name == "fra-bird");
        assert_eq!(bird.expect("bird").address.to_string(), "172.16.1.200");
    }

    #[test]
    fn bfd_interval_comes_from_the_spec() {
        let (spec, plans, lab) = lab_of(&format!(
            "routed = true\nbfd_interval_ms = 250\n{TWO_BY_TWO}"
        ));
        let gateways = routed_gateways(&plans).expect("gateways");
        let n = lab.node("fra-gw1").expect("node");
        let text = config_text(&lab, n, &gateways, &spec).expect("config");
        let t = routed::config::Config::parse(&text).expect("routed takes the config");
        assert_eq!(t.bfd.interval_ms, 250);
        assert_eq!(t.asn, 4_200_000_101);
        assert_eq!(t.neighbors.len(), 3);
    }

    /// `metrics = true`: every overlayd and routed serves metrics and the
    /// status page in its namespace; off by default.
    #[test]
    fn metrics_listen_comes_from_the_spec() {
        for metrics in [false, true] {
            let (spec, plans, lab) =
                lab_of(&format!("routed = true\nmetrics = {metrics}\n{TWO_BY_TWO}"));
            let gateways = routed_gateways(&plans).expect("gateways");
            let n = lab.node("fra-gw1").expect("node");
            let text = config_text(&lab, n, &gateways, &spec).expect("config");
            let t = routed::config::Config::parse(&text).expect("routed takes the config");
            let want = metrics.then(|| crate::spec::ROUTED_METRICS.parse().unwrap());
            assert_eq!(t.metrics_listen, want);
            for node in ["fra-gw1", "fra-h1"] {
                let p = plans.iter().find(|p| p.node.name == node).expect("node");
                let t =
                    overlayd::config::Config::parse(&overlayd_config_text(&lab, &plans, p, &spec))
                        .expect("overlayd takes the config");
                let want = metrics.then(|| crate::spec::OVERLAYD_METRICS.parse().unwrap());
                assert_eq!(t.metrics_listen, want, "{node}");
            }
        }
    }

    #[test]
    fn routed_lab_has_no_static_routes_and_files_on_gateways_only() {
        let (spec, plans, lab) = lab_of(&format!("routed = true\n{TWO_BY_TWO}"));
        for p in &plans {
            let gw = p.node.role == "gateway";
            assert_eq!(p.node.routed_config.is_some(), gw, "{}", p.node.name);
            assert_eq!(p.node.routed_socket.is_some(), gw, "{}", p.node.name);
        }
        let gw = plans.iter().find(|p| p.node.name == "fra-gw1").expect("gw");
        let text = overlayd_config_text(&lab, &plans, gw, &spec);
        assert!(!text.contains("[[route]]"), "{text}");
        // Still every other gateway as a peer.
        assert_eq!(text.matches("[[gateway]]").count(), 3, "{text}");
    }

    #[test]
    fn default_lab_is_unchanged() {
        let (spec, plans, lab) = lab_of(TWO_BY_TWO);
        assert!(!spec.routed);
        assert_eq!(spec.bfd_interval_ms, 100);
        let gw = plans.iter().find(|p| p.node.name == "fra-gw1").expect("gw");
        let text = overlayd_config_text(&lab, &plans, gw, &spec);
        assert_eq!(text.matches("[[route]]").count(), 2, "{text}");
        assert!(text.contains("via = [\"ams-gw1\", \"ams-gw2\"]"), "{text}");
        // lab.json and status carry no routed keys.
        let node = serde_json::to_value(&gw.node).expect("json");
        assert_eq!(node.get("routed_config"), None);
        assert_eq!(node.get("routed_socket"), None);
        assert!(lab.nodes.iter().all(|n| gateway_pending(&lab, n).is_none()));
    }

    #[test]
    fn pending_names_neighbours_and_routes() {
        let (_, _, lab) = lab_of(&format!("routed = true\n{TWO_BY_TWO}"));
        let n = lab.node("fra-gw1").expect("node");
        let status = [
            ("fra-gw2", api::SessionState::Established),
            ("ams-gw1", api::SessionState::Connect),
        ];
        assert_eq!(
            neighbors_not_established(&lab, n, &status),
            vec![
                "neighbour ams-gw1 connect".to_string(),
                "neighbour ams-gw2 not configured".to_string()
            ]
        );
        let routes: Vec<IpNet> = ["10.77.1.11/32", "10.77.2.0/24", "10.77.2.11/32"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(missing_routes(&lab, &routes), vec!["10.77.2.51/32"]);
    }
}
