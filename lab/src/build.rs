//! Building, running and tearing down a lab.
//!
//! Address plan (site i = 1, 2, ... in spec order):
//! - virtual: gateway j = 10.77.i.j, fd77::i:j; host k = 10.77.i.(10+k),
//!   fd77::i:(10+k) (hex); site prefixes 10.77.i.0/24 and fd77::i:0/112.
//! - underlay: site LAN 172.16.i.0/24 and fd16:0:0:i::/64 (gateway j .j and
//!   ::j, host k .(100+k) and ::(100+k), site routers .200-.202), on a
//!   bridge in the site's switch namespace; gateways also on the shared
//!   "internet" 198.18.0.0/16 (gateway j of site i = 198.18.i.j).
//! - behind site router n (BIRD i, FRR 50+i, GoBGP 100+i): its office LAN
//!   192.168.n.0/24 and fd00:192:168:n::/64 (hex), answering at .1 and ::1.

use crate::routed;
use crate::spec::Spec;
use crate::state::{Lab, Node};
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes a node may run, by pid file name.
const DAEMONS: [&str; 8] = [
    "overlayd",
    "routed",
    "wireguard-go",
    "bird",
    "gobgpd",
    crate::frr::DAEMONS[0],
    crate::frr::DAEMONS[1],
    crate::frr::DAEMONS[2],
];

const NETWORK4: &str = "10.77.0.0/16";
const NETWORK6: &str = "fd77::/48";
/// The office LANs behind the lab's site routers, in the CA when a site
/// has one.
const OFFICES4: &str = "192.168.0.0/16";
const OFFICES6: &str = "fd00:192:168::/48";

/// The IPv6 address of member `last` of site `i`'s LAN (as 172.16.i.last).
pub(crate) fn lan6(i: usize, last: usize) -> String {
    format!("fd16:0:0:{i:x}::{last:x}")
}

/// The office LAN behind site router `n` (BIRD i, FRR 50+i, GoBGP 100+i):
/// its IPv4 and IPv6 prefixes.
pub(crate) fn office(n: usize) -> [String; 2] {
    [
        format!("192.168.{n}.0/24"),
        format!("fd00:192:168:{n:x}::/64"),
    ]
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns_sh(ns: &str, args: &[&str]) -> Result<()> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn oc(args: &[&str]) -> Result<String> {
    let bin = sibling("overlay-cert")?;
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "overlay-cert {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A cubenet binary: next to this one (same build), else on PATH.
pub fn sibling(name: &str) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("CUBENET_BIN_DIR") {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("cannot find the `{name}` binary next to cubenet-lab or on PATH (build the workspace first)")
}

pub(crate) struct Plan {
    pub(crate) node: Node,
    /// Site index i (1, 2, ... in spec order), as in 10.77.i.0/24.
    pub(crate) site_idx: usize,
    /// The node's number in its site: gateway j, host 10+k, wireguard 50+k.
    pub(crate) member: usize,
    lan_ip: String,
    wan_ip: Option<String>,
    /// The gateway's IPv6 underlay address (`underlay_ipv6`).
    wan_ip6: Option<String>,
    wan_mtu: Option<u16>,
}

/// Every node of `spec`: names, addresses and file paths, without side
/// effects.
pub(crate) fn plan_nodes(spec: &Spec, dir: &Path, prefix: &str) -> Vec<Plan> {
    let mut plans = Vec::new();
    for (si, site) in spec.sites.iter().enumerate() {
        let i = si + 1;
        let members: Vec<(String, &str, usize, &str)> = (1..=site.gateways as usize)
            .map(|j| (format!("{}-gw{j}", site.name), "gateway", j, "overlayd"))
            .chain(
                (1..=site.hosts as usize)
                    .map(|k| (format!("{}-h{k}", site.name), "host", 10 + k, "overlayd")),
            )
            .chain((1..=site.wireguard_hosts as usize).map(|k| {
                (
                    format!("{}-wg{k}", site.name),
                    "host",
                    50 + k,
                    "wireguard-go",
                )
            }))
            .chain(
                site.bird
                    .then(|| (format!("{}-bird", site.name), "router", 200, "bird")),
            )
            .chain(
                site.gobgp
                    .then(|| (format!("{}-gobgp", site.name), "router", 201, "gobgp")),
            )
            .chain(
                site.frr
                    .then(|| (format!("{}-frr", site.name), "router", 202, "frr")),
            )
            .collect();
        for (name, role, n, kind) in members {
            let node_dir = dir.join("nodes").join(&name);
            let lan_last = match role {
                "gateway" | "router" => n,
                _ => 90 + n,
            };
            let bird = kind == "bird";
            let gobgp = kind == "gobgp";
            let frr = kind == "frr";
            let routed = spec.routed && role == "gateway";
            plans.push(Plan {
                node: Node {
                    kind: kind.to_string(),
                    namespace: format!("{prefix}-{name}"),
                    // A site router's addresses are the ones behind it
                    // (GoBGP's IPv4 only).
                    addresses: if bird {
                        vec![
                            format!("192.168.{i}.1/24"),
                            format!("fd00:192:168:{i:x}::1/64"),
                        ]
                    } else if gobgp {
                        vec![format!("192.168.{}.1/24", 100 + i)]
                    } else if frr {
                        let o = 50 + i;
                        vec![
                            format!("192.168.{o}.1/24"),
                            format!("fd00:192:168:{o:x}::1/64"),
                        ]
                    } else {
                        vec![format!("10.77.{i}.{n}/16"), format!("fd77::{i:x}:{n:x}/48")]
                    },
                    underlay: std::iter::once(format!("172.16.{i}.{lan_last}"))
                        .chain((role == "gateway").then(|| format!("198.18.{i}.{n}")))
                        .collect(),
                    lan6: Some(lan6(i, lan_last)),
                    key: node_dir.join("node.key"),
                    cert: node_dir.join("node.crt"),
                    // On a BIRD, GoBGP or FRR node these are its config,
                    // control socket (FRR: the directory of its vty and
                    // zserv sockets and pid files) and log.
                    overlayd_config: node_dir.join(match kind {
                        "bird" => "bird.conf",
                        "gobgp" => "gobgpd.toml",
                        "frr" => "frr.conf",
                        _ => "overlayd.toml",
                    }),
                    overlayd_socket: dir.join("run").join(match kind {
                        "bird" => format!("{name}.bird.ctl"),
                        "gobgp" => format!("{name}.gobgp"),
                        "frr" => format!("{name}.frr"),
                        _ => format!("{name}.overlayd.sock"),
                    }),
                    log: node_dir.join(match kind {
                        "bird" => "bird.log",
                        "gobgp" => "gobgpd.log",
                        "frr" => "frr.log",
                        _ => "overlayd.log",
                    }),
                    routed_config: routed.then(|| node_dir.join("routed.toml")),
                    routed_socket: routed
                        .then(|| dir.join("run").join(format!("{name}.routed.sock"))),
                    name,
                    site: site.name.clone(),
                    role: role.to_string(),
                },
                site_idx: i,
                member: n,
                lan_ip: format!("172.16.{i}.{lan_last}/24"),
                wan_ip: (role == "gateway").then(|| format!("198.18.{i}.{n}/16")),
                wan_ip6: (role == "gateway" && spec.underlay_ipv6)
                    .then(|| format!("2001:db8:18::{i:x}:{n:x}/64")),
                wan_mtu: site.wan_mtu,
            });
        }
    }
    // Route reflectors: on the underlay only, beside the gateways.
    for k in 1..=spec.route_reflectors as usize {
        let name = format!("rr{k}");
        let node_dir = dir.join("nodes").join(&name);
        let wan = crate::bird::reflector_address(k);
        plans.push(Plan {
            node: Node {
                kind: "bird".into(),
                namespace: format!("{prefix}-{name}"),
                addresses: vec![],
                underlay: vec![wan.to_string()],
                lan6: None,
                key: node_dir.join("node.key"),
                cert: node_dir.join("node.crt"),
                overlayd_config: node_dir.join("bird.conf"),
                overlayd_socket: dir.join("run").join(format!("{name}.bird.ctl")),
                log: node_dir.join("bird.log"),
                routed_config: None,
                routed_socket: None,
                name,
                site: String::new(),
                role: "reflector".into(),
            },
            site_idx: 0,
            member: 200 + k,
            lan_ip: String::new(),
            wan_ip: Some(format!("{wan}/16")),
            wan_ip6: None,
            wan_mtu: None,
        });
    }
    plans
}

fn unique_prefix() -> String {
    // Short, unique per run, and recognisable as ours: "cl" + pid + time.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("cl{:x}{:x}", std::process::id() & 0xffff, t & 0xfff)
}

/// How long the phases of [`up`] took.
#[derive(Debug, Clone, Copy)]
pub struct UpTimes {
    /// Keys, certificates, configs, namespaces and links.
    pub build: Duration,
    /// Starting every daemon: every overlayd (and router), then every routed.
    pub start: Duration,
    /// From the last daemon started to converged.
    pub converge: Duration,
}

pub fn up(spec: &Spec, dir: &Path) -> Result<(Lab, UpTimes)> {
    let t0 = Instant::now();
    if Lab::path(dir).exists() {
        if let Ok(old) = Lab::load(dir) {
            if old.nodes.iter().any(|n| namespace_exists(&n.namespace)) {
                bail!(
                    "{}: a lab is already up here (run `cubenet-lab down {}` first)",
                    dir.display(),
                    dir.display()
                );
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let prefix = unique_prefix();
    let ca_dir = dir.join("ca");
    let _ = std::fs::remove_dir_all(&ca_dir);
    let _ = std::fs::remove_dir_all(dir.join("nodes"));
    let _ = std::fs::remove_dir_all(dir.join("certs"));
    let _ = std::fs::remove_file(dir.join("crl"));
    std::fs::create_dir_all(dir.join("certs"))?;
    std::fs::create_dir_all(dir.join("run"))?;
    let mut ca_args = vec![
        "ca",
        "--name",
        "lab",
        "--network",
        NETWORK4,
        "--network",
        NETWORK6,
        "--out-dir",
        ca_dir.to_str().unwrap_or_default(),
    ];
    if spec.sites.iter().any(|s| s.bird || s.gobgp || s.frr) {
        // The subnets behind site routers, which gateways' certs may carry.
        ca_args.extend(["--network", OFFICES4, "--network", OFFICES6]);
    }
    oc(&ca_args)?;

    let plans = plan_nodes(spec, &dir, &prefix);

    // Identities.
    for p in &plans {
        let n = &p.node;
        std::fs::create_dir_all(n.key.parent().unwrap_or(&dir))?;
        if n.role == "router" || n.role == "reflector" {
            continue;
        }
        oc(&["keygen", "--out", n.key.to_str().unwrap_or_default()])?;
        let mut args = vec![
            "sign".to_string(),
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--name".into(),
            n.name.clone(),
            "--role".into(),
            n.role.clone(),
            "--site".into(),
            n.site.clone(),
            "--groups".into(),
            format!("{},site-{}", n.role, n.site),
            "--key".into(),
            n.key.display().to_string(),
            "--out".into(),
            n.cert.display().to_string(),
        ];
        for a in &n.addresses {
            args.push("--ip".into());
            args.push(a.clone());
        }
        if n.role == "gateway" {
            let i = p.site_idx;
            args.extend([
                "--subnet".into(),
                format!("10.77.{i}.0/24"),
                "--subnet".into(),
                format!("fd77::{i:x}:0/112"),
            ]);
            // What the site routers announce, brought into the overlay.
            let site = &spec.sites[i - 1];
            let mut offices: Vec<String> = Vec::new();
            if site.bird {
                offices.extend(office(i));
            }
            if site.gobgp {
                offices.push(office(100 + i)[0].clone());
            }
            if site.frr {
                offices.extend(office(50 + i));
            }
            for o in offices {
                args.extend(["--subnet".into(), o]);
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        oc(&refs)?;
        if n.role == "host" {
            std::fs::copy(&n.cert, dir.join("certs").join(format!("{}.crt", n.name)))?;
        }
    }

    let lab = Lab {
        prefix: prefix.clone(),
        dir: dir.clone(),
        switches: spec
            .sites
            .iter()
            .map(|s| format!("{prefix}-sw-{}", s.name))
            .chain(std::iter::once(format!("{prefix}-inet")))
            .collect(),
        nodes: plans.iter().map(|p| p.node.clone()).collect(),
        ca_dir: ca_dir.clone(),
        crl: dir.join("crl"),
    };
    lab.save()?;

    // Configs.
    for p in plans.iter().filter(|p| p.node.kind == "overlayd") {
        write_overlayd_config(&lab, &plans, p, spec)?;
    }
    write_routed_configs(&lab, &plans, spec)?;
    for p in plans
        .iter()
        .filter(|p| p.node.role == "router" || p.node.role == "reflector")
    {
        let text = match p.node.kind.as_str() {
            _ if p.node.role == "reflector" => crate::bird::reflector_config_text(p),
            "bird" => crate::bird::config_text(&plans, p, spec),
            "frr" => crate::frr::config_text(&plans, p, spec),
            _ => gobgp_config_text(&plans, p),
        };
        std::fs::write(&p.node.overlayd_config, text).with_context(|| {
            format!(
                "{}: writing {}",
                p.node.name,
                p.node.overlayd_config.display()
            )
        })?;
    }

    make_room_for_neighbours(&plans)?;
    // Namespaces and links; on any failure remove what was made.
    if let Err(e) = build_network(&lab, &plans) {
        let _ = down(&lab);
        return Err(e);
    }
    let t1 = Instant::now();
    if let Err(e) = start_nodes(&lab) {
        let _ = down(&lab);
        return Err(e);
    }
    let t2 = Instant::now();
    let timeout = Duration::from_secs(spec.converge_timeout_s);
    if let Err(e) = wait_converged(&lab, timeout) {
        bail!("{e:#}\n(the lab is left up for inspection: logs in {}/nodes/*/; remove it with `cubenet-lab down {}`)", dir.display(), dir.display());
    }
    let times = UpTimes {
        build: t1 - t0,
        start: t2 - t1,
        converge: t2.elapsed(),
    };
    Ok((lab, times))
}

fn write_overlayd_config(lab: &Lab, plans: &[Plan], p: &Plan, spec: &Spec) -> Result<()> {
    let n = &p.node;
    let text = overlayd_config_text(lab, plans, p, spec);
    std::fs::write(&n.overlayd_config, text)
        .with_context(|| format!("{}: writing {}", n.name, n.overlayd_config.display()))
}

/// The overlayd config of node `p`: its identity, the gateways it talks to
/// and, on gateways of a lab without routed, static routes to other sites.
pub(crate) fn overlayd_config_text(lab: &Lab, plans: &[Plan], p: &Plan, spec: &Spec) -> String {
    let n = &p.node;
    let mut t = String::new();
    t.push_str(&format!(
        "# overlayd config for {} ({}, site {}), written by cubenet-lab\ncontrol_socket = {:?}\nlisten = [{}]\n{}\n[identity]\nkey = {:?}\ncert = {:?}\nca = {:?}\ncrl = {:?}\n",
        n.name, n.role, n.site,
        n.overlayd_socket.display().to_string(),
        if p.wan_ip6.is_some() { "\"0.0.0.0:51820\", \"[::]:51820\"" } else { "\"0.0.0.0:51820\"" },
        if spec.metrics { format!("metrics_listen = {:?}\n", crate::spec::OVERLAYD_METRICS) } else { String::new() },
        n.key.display().to_string(),
        n.cert.display().to_string(),
        lab.ca_dir.join("ca.crt").display().to_string(),
        lab.crl.display().to_string(),
    ));
    if n.role == "gateway" {
        t.push_str(&format!(
            "cert_dir = {:?}\n",
            lab.dir.join("certs").display().to_string()
        ));
    }
    t.push_str(&format!(
        "\n[interface]\nname = \"cube0\"\nmtu = 1420\noffload = {}\n",
        spec.offload
    ));
    t.push_str(&format!(
        "\n[probe]\ninterval_ms = {}\nmisses = 3\nfailback_stable_ms = 2000\n",
        spec.probe_interval_ms
    ));
    let _ = &p.site_idx;
    let peers: Vec<&Plan> = if n.role == "gateway" {
        plans
            .iter()
            .filter(|q| q.node.role == "gateway" && q.node.name != n.name)
            .collect()
    } else {
        plans
            .iter()
            .filter(|q| q.node.role == "gateway" && q.node.site == n.site)
            .collect()
    };
    for q in &peers {
        let ep = if n.role == "gateway" {
            q.wan_ip6.clone().or(q.wan_ip.clone()).unwrap_or_default()
        } else {
            q.lan_ip.clone()
        };
        let ep = ep.split('/').next().unwrap_or_default().to_string();
        let ep = if ep.contains(':') {
            format!("[{ep}]")
        } else {
            ep
        };
        t.push_str(&format!(
            "\n[[gateway]]\nname = {:?}\nendpoint = \"{ep}:51820\"\ncert = {:?}\n",
            q.node.name,
            q.node.cert.display().to_string()
        ));
    }
    if n.role == "gateway" && !spec.routed {
        // Static routes to the other sites; with routed, it installs them.
        for (si, site) in spec.sites.iter().enumerate() {
            if site.name == n.site {
                continue;
            }
            let i = si + 1;
            let via: Vec<String> = peers
                .iter()
                .filter(|q| q.node.site == site.name)
                .map(|q| format!("{:?}", q.node.name))
                .collect();
            for prefix in [format!("10.77.{i}.0/24"), format!("fd77::{i:x}:0/112")] {
                t.push_str(&format!(
                    "\n[[route]]\nprefix = \"{prefix}\"\nvia = [{}]\n",
                    via.join(", ")
                ));
            }
        }
    }
    t
}

/// The AS of the GoBGP speaker of site `i`.
pub(crate) fn gobgp_asn(site_idx: usize) -> u32 {
    routed::asn(site_idx, 98)
}

/// gobgpd's config on a site's GoBGP speaker: a neighbour per gateway of
/// its site, IPv4 unicast.
pub(crate) fn gobgp_config_text(plans: &[Plan], p: &Plan) -> String {
    let i = p.site_idx;
    let mut t = format!(
        "# gobgpd config for {} (site {}), written by cubenet-lab\n\
         [global.config]\n  as = {}\n  router-id = \"172.16.{i}.{}\"\n",
        p.node.name,
        p.node.site,
        gobgp_asn(i),
        p.member
    );
    for g in plans
        .iter()
        .filter(|q| q.node.role == "gateway" && q.site_idx == i)
    {
        t.push_str(&format!(
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"172.16.{i}.{}\"\n    peer-as = {}\n\
               [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 9\n    keepalive-interval = 3\n\
               [neighbors.ttl-security.config]\n    enabled = true\n    ttl-min = 255\n\
               [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
            g.member,
            routed::asn(g.site_idx, g.member)
        ));
    }
    t
}

/// Every gateway of the lab as routed sees it: name, AS, router id, cert.
pub(crate) fn routed_gateways(plans: &[Plan]) -> Result<Vec<routed::Gateway>> {
    plans
        .iter()
        .filter(|p| p.node.role == "gateway")
        .map(|p| {
            Ok(routed::Gateway {
                name: p.node.name.clone(),
                asn: routed::asn(p.site_idx, p.member),
                router_id: p
                    .node
                    .virtual_v4()
                    .with_context(|| format!("{}: no IPv4 virtual address", p.node.name))?,
                cert: p.node.cert.clone(),
            })
        })
        .collect()
}

/// `routed.toml` of every gateway of a lab with `routed = true`.
fn write_routed_configs(lab: &Lab, plans: &[Plan], spec: &Spec) -> Result<()> {
    let gateways = routed_gateways(plans)?;
    for n in lab.nodes.iter().filter(|n| n.role == "gateway") {
        let Some(path) = &n.routed_config else {
            continue;
        };
        let text = routed::config_text(lab, n, &gateways, spec)?;
        std::fs::write(path, text)
            .with_context(|| format!("{}: writing {}", n.name, path.display()))?;
    }
    Ok(())
}

/// Neighbour (ARP and NDP) entries the lab may need at once: every gateway
/// resolves every other on the shared segment, and every node its site's
/// gateways and routers on the LAN, each in both families.
pub(crate) fn neighbour_entries(plans: &[Plan]) -> u64 {
    let gateways = plans.iter().filter(|p| p.node.role == "gateway").count() as u64;
    let lan = plans
        .iter()
        .map(|p| {
            plans
                .iter()
                .filter(|q| q.site_idx == p.site_idx && q.node.name != p.node.name)
                .count() as u64
        })
        .sum::<u64>();
    gateways * gateways.saturating_sub(1) + lan
}

/// The kernel's neighbour tables are shared by every namespace: past
/// `gc_thresh3` entries in all of them together, resolving a new neighbour
/// fails ("neighbor table overflow", sendmsg: ENOBUFS), and at 40 gateways
/// tunnels between some of them never came up. Raises the limits (never
/// lowers them) to what the lab needs, and says so.
fn make_room_for_neighbours(plans: &[Plan]) -> Result<()> {
    let need = neighbour_entries(plans);
    for family in ["ipv4", "ipv6"] {
        for (key, want) in [("gc_thresh2", need), ("gc_thresh3", 2 * need)] {
            let path = format!("/proc/sys/net/{family}/neigh/default/{key}");
            let Some(have) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            else {
                continue;
            };
            if have < want {
                std::fs::write(&path, want.to_string())
                    .with_context(|| format!("raising {path} to {want}"))?;
                eprintln!(
                    "cubenet-lab: raised net.{family}.neigh.default.{key} from {have} to {want} (the lab's namespaces share the kernel's neighbour table)"
                );
            }
        }
    }
    Ok(())
}

fn namespace_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn build_network(lab: &Lab, plans: &[Plan]) -> Result<()> {
    for ns in lab
        .switches
        .iter()
        .chain(lab.nodes.iter().map(|n| &n.namespace))
    {
        sh(&["ip", "netns", "add", ns])?;
        ns_sh(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    for sw in &lab.switches {
        ns_sh(sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        ns_sh(sw, &["ip", "link", "set", "br0", "up"])?;
    }
    let inet = lab.switches.last().cloned().unwrap_or_default();
    for (idx, p) in plans.iter().enumerate() {
        let n = &p.node;
        let sw = format!("{}-sw-{}", lab.prefix, n.site);
        let port = format!("p{idx}");
        if n.role != "reflector" {
            lan_port(&sw, idx, &n.namespace, &p.lan_ip, n.lan6.as_deref())?;
        }
        if n.role == "router" {
            // The office LAN behind the site router, on an interface of its
            // own: its addresses answer pings from the overlay and from the
            // other sites' offices, and its connected routes are what BIRD
            // (`protocol direct`) and FRR (`network`) announce. A veth
            // pair with nothing beyond (this kernel has no dummy links).
            ns_sh(
                &n.namespace,
                &[
                    "ip", "link", "add", "office0", "type", "veth", "peer", "name", "office1",
                ],
            )?;
            ns_sh(&n.namespace, &["ip", "link", "set", "office1", "up"])?;
            for a in &n.addresses {
                let mut cmd = vec!["ip", "addr", "add", a, "dev", "office0"];
                if a.contains(':') {
                    cmd.push("nodad");
                }
                ns_sh(&n.namespace, &cmd)?;
            }
            ns_sh(&n.namespace, &["ip", "link", "set", "office0", "up"])?;
        }
        if n.role == "gateway" {
            // Gateways route between the overlay and the site LAN (site
            // routers' subnets).
            ns_sh(&n.namespace, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            ns_sh(
                &n.namespace,
                &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            )?;
        }
        if let Some(wan) = &p.wan_ip {
            sh(&[
                "ip",
                "link",
                "add",
                &port,
                "netns",
                &inet,
                "type",
                "veth",
                "peer",
                "name",
                "wan0",
                "netns",
                &n.namespace,
            ])?;
            ns_sh(&inet, &["ip", "link", "set", &port, "master", "br0", "up"])?;
            ns_sh(&n.namespace, &["ip", "addr", "add", wan, "dev", "wan0"])?;
            if let Some(v6) = &p.wan_ip6 {
                ns_sh(
                    &n.namespace,
                    &["ip", "-6", "addr", "add", v6, "dev", "wan0", "nodad"],
                )?;
            }
            if let Some(mtu) = p.wan_mtu {
                let mtu = mtu.to_string();
                ns_sh(&n.namespace, &["ip", "link", "set", "wan0", "mtu", &mtu])?;
                // A bridge passes GSO batches whatever their segments' size
                // and veth delivers them whole: segmented on this port, each
                // datagram meets the MTU as on a real link.
                ns_sh(
                    &inet,
                    &["ip", "link", "set", &port, "mtu", &mtu, "gso_max_segs", "1"],
                )?;
            }
            ns_sh(&n.namespace, &["ip", "link", "set", "wan0", "up"])?;
        }
    }
    Ok(())
}

/// Node `idx`'s site LAN link: lan0 in its namespace `ns` with `ip`
/// (address/length) and `ip6` (an address of the LAN's /64), its peer
/// `p{idx}` a port of the bridge in switch namespace `sw`.
fn lan_port(sw: &str, idx: usize, ns: &str, ip: &str, ip6: Option<&str>) -> Result<()> {
    let port = format!("p{idx}");
    sh(&[
        "ip", "link", "add", &port, "netns", sw, "type", "veth", "peer", "name", "lan0", "netns",
        ns,
    ])?;
    ns_sh(sw, &["ip", "link", "set", &port, "master", "br0", "up"])?;
    ns_sh(ns, &["ip", "addr", "add", ip, "dev", "lan0"])?;
    if let Some(ip6) = ip6 {
        // nodad: usable at once; the lab's plan keeps addresses unique.
        let a = format!("{ip6}/64");
        ns_sh(ns, &["ip", "-6", "addr", "add", &a, "dev", "lan0", "nodad"])?;
    }
    ns_sh(ns, &["ip", "link", "set", "lan0", "up"])
}

/// Starts a node's daemons in its namespace, detached, logging to its dir:
/// overlayd, then (gateways of a routed lab) routed once overlayd answers.
/// Starts every node: each node's first daemon, then routed on the
/// gateways once their overlayd answers, so no node waits for another's.
fn start_nodes(lab: &Lab) -> Result<()> {
    let later = |n: &Node| n.kind == "overlayd" && n.routed_config.is_some();
    for n in &lab.nodes {
        if later(n) {
            spawn_daemon(lab, n, "overlayd", &n.overlayd_config, &n.log)?;
        } else {
            start_node(lab, n)?;
        }
    }
    for n in lab.nodes.iter().filter(|n| later(n)) {
        if let (Some(config), Some(log)) = (&n.routed_config, n.routed_log()) {
            wait_overlayd_socket(lab, n)?;
            spawn_daemon(lab, n, "routed", config, &log)?;
        }
    }
    Ok(())
}

pub fn start_node(lab: &Lab, n: &Node) -> Result<()> {
    if n.kind == "wireguard-go" {
        return start_wireguard_go(lab, n);
    }
    if n.kind == "bird" {
        return crate::bird::start(lab, n);
    }
    if n.kind == "gobgp" {
        return start_gobgp(lab, n);
    }
    if n.kind == "frr" {
        return crate::frr::start(lab, n);
    }
    let running = |daemon: &str| read_pid(&lab.pid_file(&n.name, daemon)).filter(|p| alive(*p));
    let overlayd_up = running("overlayd").is_some();
    let routed_up = running("routed").is_some();
    if overlayd_up && (routed_up || n.routed_config.is_none()) {
        bail!("{}: its daemons are already running", n.name);
    }
    if !overlayd_up {
        spawn_daemon(lab, n, "overlayd", &n.overlayd_config, &n.log)?;
    }
    if let (Some(config), Some(log), false) = (&n.routed_config, n.routed_log(), routed_up) {
        wait_overlayd_socket(lab, n)?;
        spawn_daemon(lab, n, "routed", config, &log)?;
    }
    Ok(())
}

/// Starts gobgpd and announces the site's prefix through its API.
fn start_gobgp(lab: &Lab, n: &Node) -> Result<()> {
    ensure_stopped(lab, n, "gobgpd")?;
    let argv = [
        "gobgpd".as_ref(),
        "-t".as_ref(),
        "toml".as_ref(),
        "-f".as_ref(),
        n.overlayd_config.as_os_str(),
        "--api-hosts".as_ref(),
        "127.0.0.1:50051".as_ref(),
    ];
    spawn_detached(lab, n, "gobgpd", &argv, &n.log, " (is gobgpd installed?)")?;
    let prefix = n.addresses[0].replace(".1/24", ".0/24");
    let nh = n.underlay.first().cloned().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &n.namespace,
                "gobgp",
                "global",
                "rib",
                "-a",
                "ipv4",
            ])
            .args(["add", &prefix, "nexthop", &nh])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: gobgpd did not take the route {prefix} within 10 s (log {})",
                n.name,
                n.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `DAEMON run --config CONFIG` in the node's namespace and records
/// its pid in the node's `DAEMON.pid`.
fn spawn_daemon(lab: &Lab, n: &Node, daemon: &str, config: &Path, log: &Path) -> Result<()> {
    let bin = sibling(daemon)?;
    let argv = [
        bin.as_os_str(),
        "run".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    spawn_detached(lab, n, daemon, &argv, log, "")
}

/// Fails when the node's `pid_name` process is already running.
pub(crate) fn ensure_stopped(lab: &Lab, n: &Node, pid_name: &str) -> Result<()> {
    if let Some(pid) = read_pid(&lab.pid_file(&n.name, pid_name)) {
        if alive(pid) {
            bail!("{}: {pid_name} is already running (pid {pid})", n.name);
        }
    }
    Ok(())
}

/// `ip netns exec` into the node's namespace, with (overlayd nodes) its own
/// `/var/run/wireguard` ([`Node::wireguard_dir`]); the command to run
/// follows. It is exec'd in the end, so it keeps the pid of this command.
pub fn in_namespace(n: &Node) -> Result<Command> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &n.namespace]);
    if let Some(dir) = n.wireguard_dir() {
        // The mount point on the machine, as wireguard-go makes it.
        for d in [Path::new(WIREGUARD_DIR), &dir] {
            if !d.exists() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(d)
                    .with_context(|| format!("{}: creating {}", n.name, d.display()))?;
            }
        }
        c.args([
            "sh",
            "-c",
            "mount --bind \"$1\" \"$2\" || echo \"cubenet-lab: $2 is the machine's here\" >&2; shift 2; exec \"$@\"",
            "sh",
        ])
        .arg(dir)
        .arg(WIREGUARD_DIR);
    }
    Ok(c)
}

/// Where wireguard-tools looks for userspace interfaces.
const WIREGUARD_DIR: &str = "/var/run/wireguard";

/// Starts `argv` in the node's namespace, in its own process group, logging
/// to `log`, and records its pid as `pid_name`. `hint` follows a start
/// error (e.g. which package provides the program).
pub(crate) fn spawn_detached(
    lab: &Lab,
    n: &Node,
    pid_name: &str,
    argv: &[&std::ffi::OsStr],
    log: &Path,
    hint: &str,
) -> Result<()> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}: opening {}", n.name, log.display()))?;
    let child = in_namespace(n)?
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {pid_name} for {}{hint}", n.name))?;
    let pid_file = lab.pid_file(&n.name, pid_name);
    std::fs::write(&pid_file, child.id().to_string())
        .with_context(|| format!("{}: writing {}", n.name, pid_file.display()))?;
    // Not waited for: the daemon outlives this command. Reap it if we are
    // still around when it exits (e.g. a bad config).
    std::mem::forget(child);
    Ok(())
}

/// Returns once the node's overlayd accepts connections on its control
/// socket (a file left by a killed overlayd refuses them).
fn wait_overlayd_socket(lab: &Lab, n: &Node) -> Result<()> {
    let sock = &n.overlayd_socket;
    let pid = read_pid(&lab.pid_file(&n.name, "overlayd"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        if !pid.is_some_and(alive) {
            bail!(
                "{}: overlayd exited before opening {} (log {})",
                n.name,
                sock.display(),
                n.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{}: overlayd did not open {} within 10 s (log {})",
                n.name,
                sock.display(),
                n.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The WireGuard interface name of a wireguard-go node: unique per lab,
/// because wireguard-go's control socket lives in the shared /var/run.
fn wg_ifname(lab: &Lab, n: &Node) -> String {
    let tail: String = n
        .name
        .rsplit('-')
        .next()
        .unwrap_or("wg")
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let site = lab.nodes.iter().position(|m| m.site == n.site).unwrap_or(0);
    let mut name = format!("{}{site}w{tail}", lab.prefix);
    name.truncate(15);
    name
}

/// A plain WireGuard host: wireguard-go, configured with `wg` and `ip` as
/// an operator would, towards the first gateway of its site.
fn start_wireguard_go(lab: &Lab, n: &Node) -> Result<()> {
    let ifname = wg_ifname(lab, n);
    let pid_file = lab.pid_file(&n.name, "wireguard-go");
    if read_pid(&pid_file).is_some_and(alive) {
        bail!("{}: wireguard-go is already running", n.name);
    }
    let gw = lab
        .nodes
        .iter()
        .find(|m| m.role == "gateway" && m.site == n.site)
        .with_context(|| format!("{}: no gateway at site {}", n.name, n.site))?;
    let gw_key = cubenet_certs::load_node_cert(&gw.cert).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gw_pub = b64(gw_key.public_key());
    let key = cubenet_certs::NodeKey::load(&n.key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wg_key_file = n.key.with_file_name("wg.key");
    if !wg_key_file.exists() {
        cubenet_certs::keys::write_private(&wg_key_file, &key.to_wireguard_base64())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &n.namespace, "wireguard-go", "-f", &ifname])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "{}: starting wireguard-go (install Debian's wireguard-go)",
                n.name
            )
        })?;
    std::fs::write(&pid_file, child.id().to_string())?;
    std::mem::forget(child);
    // Its control socket appears once the device exists.
    let sock = Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("{}: wireguard-go did not create {}", n.name, sock.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ep = format!("{}:51820", gw.underlay[0]);
    ns_sh(
        &n.namespace,
        &[
            "wg",
            "set",
            &ifname,
            "private-key",
            wg_key_file.to_str().unwrap_or_default(),
            "peer",
            &gw_pub,
            "endpoint",
            &ep,
            "allowed-ips",
            &format!("{NETWORK4},{NETWORK6}"),
            "persistent-keepalive",
            "25",
        ],
    )?;
    for a in &n.addresses {
        ns_sh(&n.namespace, &["ip", "addr", "add", a, "dev", &ifname])?;
    }
    ns_sh(
        &n.namespace,
        &["ip", "link", "set", &ifname, "mtu", "1420", "up"],
    )?;
    Ok(())
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub(crate) fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` runs (a zombie whose parent has not reaped it does not).
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

pub fn parse_signal(s: &str) -> Result<i32> {
    let s = s.trim_start_matches("SIG");
    Ok(match s {
        "TERM" | "15" => libc::SIGTERM,
        "KILL" | "9" => libc::SIGKILL,
        "HUP" | "1" => libc::SIGHUP,
        "INT" | "2" => libc::SIGINT,
        "STOP" | "19" => libc::SIGSTOP,
        "CONT" | "18" => libc::SIGCONT,
        _ => bail!("unknown signal {s:?}: use TERM, KILL, HUP, INT, STOP or CONT"),
    })
}

/// Signals every daemon of `node`; returns how many were signalled. For
/// signals that end a process it returns once they are gone.
pub fn signal_node(lab: &Lab, node: &str, sig: i32, only: Option<&str>) -> Result<usize> {
    lab.node(node)?;
    if let Some(d) = only {
        if !DAEMONS.contains(&d) {
            bail!("--daemon {d:?}: expected one of {}", DAEMONS.join(", "));
        }
    }
    let mut signalled = Vec::new();
    for daemon in DAEMONS.into_iter().filter(|d| only.is_none_or(|o| o == *d)) {
        if let Some(pid) = read_pid(&lab.pid_file(node, daemon)) {
            // SAFETY: kill(2) on a pid we started; a stale pid fails ESRCH.
            if alive(pid) && unsafe { libc::kill(pid, sig) } == 0 {
                signalled.push(pid);
            }
        }
    }
    if [libc::SIGKILL, libc::SIGTERM, libc::SIGINT].contains(&sig) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while signalled.iter().any(|p| alive(*p)) {
            if Instant::now() > deadline {
                bail!("{node}: daemons still running 10 s after the signal");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(signalled.len())
}

/// What `watch` waits for in a gateway's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    Gone,
    Present,
    /// Present and not via this gateway.
    Without(String),
    /// Present and via this gateway.
    Via(String),
}

impl Until {
    pub fn parse(s: &str) -> Result<Until> {
        Ok(match s {
            "gone" => Until::Gone,
            "present" => Until::Present,
            _ => match s.split_once(':') {
                Some(("without", g)) if !g.is_empty() => Until::Without(g.to_string()),
                Some(("via", g)) if !g.is_empty() => Until::Via(g.to_string()),
                _ => bail!("--until {s:?}: expected gone, present, via:GATEWAY or without:GATEWAY"),
            },
        })
    }

    fn holds(&self, via: Option<&[String]>) -> bool {
        match (self, via) {
            (Until::Gone, v) => v.is_none(),
            (Until::Present, v) => v.is_some(),
            (Until::Without(g), Some(v)) => !v.contains(g),
            (Until::Via(g), Some(v)) => v.contains(g),
            (Until::Without(_) | Until::Via(_), None) => false,
        }
    }
}

/// `cubenet-lab watch`: polls every gateway's overlayd (but the one
/// `without:` names) until its route to `prefix` is as `until` says,
/// printing each gateway's time as it gets there.
pub fn watch_route(
    lab: &Lab,
    prefix: ipnet::IpNet,
    until: &Until,
    timeout: Duration,
    wait_only_for_change: bool,
) -> Result<()> {
    use std::io::Write;
    // A `via`/`without` gateway's own site reaches its hosts directly.
    let site_of = |g: &str| {
        lab.nodes
            .iter()
            .find(|n| n.name == g)
            .map(|n| n.site.clone())
    };
    let skip = match until {
        Until::Without(g) | Until::Via(g) => site_of(g),
        _ => None,
    };
    let gateways: Vec<&Node> = lab
        .nodes
        .iter()
        .filter(|n| n.role == "gateway" && skip.as_ref() != Some(&n.site))
        .collect();
    let mut done = vec![false; gateways.len()];
    let deadline = Instant::now() + timeout;
    let mut longest = Duration::ZERO;
    let mut out = std::io::stdout().lock();
    for round in 0.. {
        let t = Instant::now();
        for (i, g) in gateways.iter().enumerate() {
            if done[i] {
                continue;
            }
            let Some(st) = status_of(&g.overlayd_socket) else {
                continue;
            };
            let via = st
                .routes
                .iter()
                .find(|r| r.prefix == prefix)
                .map(|r| r.via.as_slice());
            if until.holds(via) {
                if round == 0 && wait_only_for_change {
                    bail!("{}: {prefix} already {until:?} before the event", g.name);
                }
                done[i] = true;
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                writeln!(out, "{} {:.3}", g.name, at.as_secs_f64())?;
            }
        }
        if round == 0 {
            writeln!(out, "ready")?;
        } else {
            longest = longest.max(t.elapsed());
        }
        out.flush()?;
        if done.iter().all(|d| *d) {
            writeln!(out, "longest_round_ms {}", longest.as_millis())?;
            return Ok(());
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = gateways
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(g, _)| g.name.as_str())
                .collect();
            bail!(
                "{prefix} not {until:?} after {timeout:?} on {}",
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn status_of(socket: &Path) -> Option<cubenet_api::overlayd::Status> {
    cubenet_api::client::call_blocking_within(
        socket,
        &cubenet_api::overlayd::Request::Status,
        Some(Duration::from_secs(2)),
    )
    .ok()
}

/// What a node still waits for, or None when it has converged.
fn pending(lab: &Lab, n: &Node) -> Option<String> {
    if n.kind == "wireguard-go" || n.role == "router" || n.role == "reflector" {
        return None;
    }
    let first_gateway = lab
        .nodes
        .iter()
        .find(|m| m.role == "gateway" && m.site == n.site)
        .map(|m| m.name.as_str());
    let Some(st) = status_of(&n.overlayd_socket) else {
        return Some(format!(
            "{}: overlayd not answering on {}",
            n.name,
            n.overlayd_socket.display()
        ));
    };
    let peers = st.peers;
    let healthy = |name: &str| peers.iter().any(|p| p.name == name && p.healthy);
    let mut missing = Vec::new();
    let want_gateways = lab.nodes.iter().filter(|m| {
        m.role == "gateway" && m.name != n.name && (n.role == "gateway" || m.site == n.site)
    });
    for g in want_gateways {
        if !healthy(&g.name) {
            missing.push(format!("gateway {} not healthy", g.name));
        }
    }
    if n.role == "gateway" {
        let ours = |m: &&Node| m.kind == "overlayd" || first_gateway == Some(n.name.as_str());
        for h in lab
            .nodes
            .iter()
            .filter(|m| m.role == "host" && m.site == n.site)
            .filter(ours)
        {
            if !peers.iter().any(|p| p.name == h.name && p.attached) {
                missing.push(format!("host {} not attached", h.name));
            }
        }
    }
    (!missing.is_empty()).then(|| format!("{}: {}", n.name, missing.join(", ")))
}

/// Waits until every node is attached and, in a routed lab, every
/// gateway's routes have converged; fails naming what still lacks.
pub fn wait_converged(lab: &Lab, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let every = Duration::from_millis(50);
    wait_each(lab, deadline, timeout, every, |n| pending(lab, n))?;
    wait_each(lab, deadline, timeout, every, |n| {
        routed::gateway_pending(lab, n)
    })
}

/// [`wait_until`] every node has nothing `pending`. Each round asks only
/// the nodes still pending (asking every node every round loads the
/// machine of a big lab more than its daemons do), then all of them once
/// more to be sure.
fn wait_each(
    lab: &Lab,
    deadline: Instant,
    timeout: Duration,
    every: Duration,
    pending: impl Fn(&Node) -> Option<String>,
) -> Result<()> {
    let left = std::cell::RefCell::new(lab.nodes.iter().collect::<Vec<_>>());
    wait_until(deadline, timeout, every, || {
        let mut left = left.borrow_mut();
        let mut waiting = Vec::new();
        for pass in 0..2 {
            left.retain(|n| match pending(n) {
                Some(w) => {
                    waiting.push(w);
                    true
                }
                None => false,
            });
            if !left.is_empty() || pass == 1 {
                break;
            }
            *left = lab.nodes.iter().collect();
        }
        waiting
    })
}

/// Polls `waiting` (what is not there yet, one line each) every `every`
/// until it is empty or `deadline` passes. Polling the daemons' status is
/// the event we wait for.
fn wait_until(
    deadline: Instant,
    timeout: Duration,
    every: Duration,
    waiting: impl Fn() -> Vec<String>,
) -> Result<()> {
    loop {
        let waiting = waiting();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not converged after {}s:\n  {}",
                timeout.as_secs(),
                waiting.join("\n  ")
            );
        }
        std::thread::sleep(every);
    }
}

pub fn status(lab: &Lab) -> cubenet_api::lab::LabStatus {
    let nodes = lab
        .nodes
        .iter()
        .map(|n| {
            let pids: Vec<i32> = DAEMONS
                .iter()
                .filter_map(|d| read_pid(&lab.pid_file(&n.name, d)))
                .filter(|p| alive(*p))
                .collect();
            let routed = n.routed_config.is_some() && n.routed_socket.is_some();
            cubenet_api::lab::NodeStatus {
                name: n.name.clone(),
                site: n.site.clone(),
                role: n.role.clone(),
                kind: n.kind.clone(),
                namespace: n.namespace.clone(),
                addresses: n.addresses.clone(),
                underlay: n.underlay.clone(),
                pids,
                key: n.key.clone(),
                cert: n.cert.clone(),
                overlayd_config: n.overlayd_config.clone(),
                overlayd_socket: n.overlayd_socket.clone(),
                log: n.log.clone(),
                routed_config: n.routed_config.clone().filter(|_| routed),
                routed_socket: n.routed_socket.clone().filter(|_| routed),
                routed_log: n.routed_log().filter(|_| routed),
            }
        })
        .collect();
    cubenet_api::lab::LabStatus {
        dir: lab.dir.clone(),
        prefix: lab.prefix.clone(),
        ca_dir: lab.ca_dir.clone(),
        crl: lab.crl.clone(),
        nodes,
    }
}

pub fn down(lab: &Lab) -> Result<()> {
    let mut pids = Vec::new();
    for n in &lab.nodes {
        for d in DAEMONS {
            if let Some(p) = read_pid(&lab.pid_file(&n.name, d)) {
                if alive(p) {
                    // SAFETY: kill(2) on a pid this lab started.
                    unsafe { libc::kill(p, libc::SIGTERM) };
                    pids.push(p);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids {
        if alive(p) {
            // SAFETY: as above; it did not stop on TERM.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let mut errors = Vec::new();
    for ns in lab
        .nodes
        .iter()
        .map(|n| &n.namespace)
        .chain(lab.switches.iter())
    {
        if namespace_exists(ns) {
            if let Err(e) = sh(&["ip", "netns", "del", ns]) {
                errors.push(e.to_string());
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// Moves a host to another site, as a VM re-created there: its overlayd is
/// killed, its LAN port moves to the new site's switch with a new address
/// there (172.16.i.(200 + its index)), its config lists that site's
/// gateways instead, and it starts again with the same key and certificate.
pub fn move_host(lab: &mut Lab, host: &str, site: &str) -> Result<()> {
    let idx = lab
        .nodes
        .iter()
        .position(|n| n.name == host)
        .ok_or_else(|| anyhow!("no node {host:?} in the lab"))?;
    let n = lab.nodes[idx].clone();
    if n.role != "host" || n.kind != "overlayd" {
        bail!(
            "{host}: only an overlayd host can move (it is a {} {})",
            n.kind,
            n.role
        );
    }
    let gateways: Vec<Node> = lab
        .nodes
        .iter()
        .filter(|g| g.role == "gateway" && g.site == site)
        .cloned()
        .collect();
    // The site's LAN number, from its gateways' LAN address 172.16.i.j.
    let lan = |g: &Node| {
        g.underlay
            .iter()
            .find(|a| a.starts_with("172.16."))
            .cloned()
    };
    let Some(i) = gateways
        .first()
        .and_then(lan)
        .and_then(|a| a.split('.').nth(2).map(str::to_string))
    else {
        bail!("site {site:?}: no gateways in the lab");
    };
    if idx > 54 {
        bail!("{host}: node index {idx} leaves no address to move it to");
    }
    let addr = format!("172.16.{i}.{}", 200 + idx);
    let addr6 = i.parse::<usize>().ok().map(|i| lan6(i, 200 + idx));
    signal_node(lab, host, libc::SIGKILL, None)?;
    // Deleting lan0 deletes its peer, the port on the old switch.
    ns_sh(&n.namespace, &["ip", "link", "del", "lan0"])?;
    let sw = format!("{}-sw-{site}", lab.prefix);
    lan_port(
        &sw,
        idx,
        &n.namespace,
        &format!("{addr}/24"),
        addr6.as_deref(),
    )?;
    // The config without its [[gateway]] blocks, then the new site's.
    let text = std::fs::read_to_string(&n.overlayd_config)
        .with_context(|| format!("reading {}", n.overlayd_config.display()))?;
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            skipping = t.starts_with("[[gateway]]");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    for g in &gateways {
        let ep = lan(g).unwrap_or_default();
        out.push_str(&format!(
            "\n[[gateway]]\nname = {:?}\nendpoint = \"{ep}:51820\"\ncert = {:?}\n",
            g.name,
            g.cert.display().to_string()
        ));
    }
    std::fs::write(&n.overlayd_config, out)
        .with_context(|| format!("writing {}", n.overlayd_config.display()))?;
    let node = &mut lab.nodes[idx];
    node.site = site.to_string();
    node.underlay = vec![addr];
    node.lan6 = addr6;
    lab.save()?;
    let n = lab.nodes[idx].clone();
    start_node(lab, &n)
}

/// What the site routers' config tests share.
#[cfg(test)]
pub(crate) mod router_config_tests {
    use super::{plan_nodes, Plan};
    use crate::spec::Spec;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The config `config_text` writes for router `node` of the lab of
    /// `spec_text`.
    pub fn lab_config(
        spec_text: &str,
        node: &str,
        config_text: fn(&[Plan], &Plan, &Spec) -> String,
    ) -> String {
        let spec = Spec::parse(spec_text).expect("spec");
        let plans = plan_nodes(&spec, Path::new("/lab"), "clt");
        let p = plans.iter().find(|p| p.node.name == node).expect("node");
        config_text(&plans, p, &spec)
    }

    /// The lines of `lab` the example lacks, and the example's lines `lab`
    /// lacks (as their shapes: both empty when the two match).
    pub fn shape_difference(
        lab: &BTreeSet<String>,
        example: &BTreeSet<String>,
    ) -> (Vec<String>, Vec<String>) {
        (
            lab.difference(example).cloned().collect(),
            example.difference(lab).cloned().collect(),
        )
    }
}

#[cfg(test)]
mod watch_tests {
    use super::Until;

    #[test]
    fn until_reads_its_forms_and_says_what_a_route_shows() {
        let via = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let both = via(&["ams-gw1", "ams-gw2"]);
        let one = via(&["ams-gw2"]);
        let cases = [
            ("gone", None, true),
            ("gone", Some(&both), false),
            ("present", Some(&one), true),
            ("present", None, false),
            ("via:ams-gw1", Some(&both), true),
            ("via:ams-gw1", Some(&one), false),
            ("via:ams-gw1", None, false),
            ("without:ams-gw1", Some(&one), true),
            ("without:ams-gw1", Some(&both), false),
            ("without:ams-gw1", None, false),
        ];
        for (text, route, want) in cases {
            let u = Until::parse(text).unwrap();
            assert_eq!(
                u.holds(route.map(|v| v.as_slice())),
                want,
                "{text} {route:?}"
            );
        }
        for bad in ["", "via:", "without", "gone:x", "up"] {
            let e = Until::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--until"), "{bad}: {e}");
        }
    }
}
