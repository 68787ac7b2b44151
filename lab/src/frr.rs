//! An FRR site router (spec `frr = true`): zebra, bgpd and bfdd in the
//! node's namespace, peering with the site's gateways over the LAN.
//!
//! The config has the shape of `examples/site-router/frr.conf` (a unit
//! test below holds the two together) and is one integrated file that
//! each daemon reads with `-f`, taking its own sections and logging the
//! others' lines as unknown. So a section ends with `!`, never `exit`: a
//! daemon that does not know the section would read that `exit` at the
//! top level, leave config mode and ignore the rest of the file. Everything an
//! instance keeps at run time (vty sockets, zebra's zserv socket, bfdd's
//! control socket, pid files) lives in the node's own directory
//! `run/NODE.frr`, so instances in several namespaces do not meet in
//! FRR's default `/var/run/frr`. The daemons run as FRR's `frr` user.

use crate::build::{lan6, office, spawn_detached, Plan};
use crate::routed;
use crate::spec::{SessionFamily, Spec};
use crate::state::{Lab, Node};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// FRR's daemons in the order they start, each recorded in its own pid
/// file of the lab (`NODE.zebra.pid`, ...).
pub const DAEMONS: [&str; 3] = ["zebra", "bgpd", "bfdd"];

/// Where Debian installs FRR's daemons (not on PATH).
const FRR_LIBEXEC: &str = "/usr/lib/frr";

/// The AS of the FRR site router of site `i`.
pub(crate) fn asn(site_idx: usize) -> u32 {
    routed::asn(site_idx, 97)
}

/// FRR's config on a site router: BGP + BFD (with TTL security) to every
/// gateway of its site over the LAN, over a session of the site's
/// `router_session` family carrying both families; it announces its
/// office LAN (192.168.(50+i).0/24 and its IPv6 twin) and takes only the
/// CA's networks, installed by zebra (ECMP).
pub(crate) fn config_text(plans: &[Plan], p: &Plan, spec: &Spec) -> String {
    let i = p.site_idx;
    let me = format!("172.16.{i}.{}", p.member);
    let v6 = spec.sites[i - 1].router_session == SessionFamily::Ipv6;
    let gateways: Vec<(String, String, u32)> = plans
        .iter()
        .filter(|q| q.node.role == "gateway" && q.site_idx == i)
        .map(|q| {
            let addr = if v6 {
                lan6(i, q.member)
            } else {
                format!("172.16.{i}.{}", q.member)
            };
            (addr, q.node.name.clone(), routed::asn(q.site_idx, q.member))
        })
        .collect();
    let [office4, office6] = office(50 + i);
    let ms = spec.bfd_interval_ms;
    let mut t = format!(
        "! FRR config for {name} (site router of {site}), written by cubenet-lab\n\
         frr defaults traditional\n\
         hostname {name}\n\
         !\n\
         ip prefix-list cubenet-overlay seq 10 permit 10.77.0.0/16 le 32\n\
         ip prefix-list cubenet-overlay seq 20 permit 192.168.0.0/16 le 24\n\
         ipv6 prefix-list cubenet-overlay6 seq 10 permit fd77::/48 le 128\n\
         ipv6 prefix-list cubenet-overlay6 seq 20 permit fd00:192:168::/48 le 64\n\
         ip prefix-list office seq 10 permit {office4}\n\
         ipv6 prefix-list office6 seq 10 permit {office6}\n\
         !\n\
         route-map cubenet-in permit 10\n match ip address prefix-list cubenet-overlay\n!\n\
         route-map cubenet-in6 permit 10\n match ipv6 address prefix-list cubenet-overlay6\n!\n\
         route-map office-out permit 10\n match ip address prefix-list office\n!\n\
         route-map office-out6 permit 10\n match ipv6 address prefix-list office6\n!\n\
         bfd\n profile cubenet\n  transmit-interval {ms}\n  receive-interval {ms}\n  detect-multiplier 3\n!\n\
         !\n\
         router bgp {asn}\n bgp router-id {me}\n bgp bestpath as-path multipath-relax\n no bgp default ipv4-unicast\n",
        name = p.node.name,
        site = p.node.site,
        asn = asn(i),
    );
    for (addr, name, asn) in &gateways {
        t.push_str(&format!(
            " neighbor {addr} remote-as {asn}\n neighbor {addr} description {name}\n \
             neighbor {addr} timers 3 9\n neighbor {addr} timers connect 1\n \
             neighbor {addr} bfd\n neighbor {addr} bfd profile cubenet\n \
             neighbor {addr} bfd check-control-plane-failure\n \
             neighbor {addr} ttl-security hops 1\n"
        ));
    }
    for (family, office, suffix) in [("ipv4", &office4, ""), ("ipv6", &office6, "6")] {
        t.push_str(&format!(
            " address-family {family} unicast\n  network {office}\n  maximum-paths 2\n"
        ));
        for (addr, _, _) in &gateways {
            t.push_str(&format!(
                "  neighbor {addr} activate\n  neighbor {addr} route-map cubenet-in{suffix} in\n  \
                 neighbor {addr} route-map office-out{suffix} out\n"
            ));
        }
        t.push_str(" exit-address-family\n");
    }
    t.push_str("!\n");
    t
}

/// Adds search (x) for others to `dir`: the frr user must reach its
/// config and run directory inside the lab's (often 0700) directory.
/// Listing stays private, and key files are 0600 anyway.
fn let_frr_through(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut perm = meta.permissions();
    if perm.mode() & 0o001 == 0 {
        perm.set_mode(perm.mode() | 0o001);
        std::fs::set_permissions(dir, perm)
            .with_context(|| format!("letting the frr user through {}", dir.display()))?;
    }
    Ok(())
}

/// Starts zebra, then bgpd and bfdd once zebra's socket is there, each in
/// the foreground of its own process group, as the `frr` user.
pub(crate) fn start(lab: &Lab, n: &Node) -> Result<()> {
    for d in DAEMONS {
        crate::build::ensure_stopped(lab, n, d)?;
    }
    let run = &n.overlayd_socket;
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let chown = std::process::Command::new("chown")
        .arg("frr:frr")
        .arg(run)
        .output()
        .with_context(|| format!("{}: running chown", n.name))?;
    if !chown.status.success() {
        bail!(
            "{}: chown frr:frr {}: {} (is frr installed?)",
            n.name,
            run.display(),
            String::from_utf8_lossy(&chown.stderr).trim()
        );
    }
    // Above the lab's directory nothing is ours to change.
    if let Some(closed) = lab
        .dir
        .ancestors()
        .skip(1)
        .find(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
    {
        bail!(
            "{}: FRR runs as the frr user, which cannot enter {} (chmod o+x it, or put the lab elsewhere)",
            n.name,
            closed.display()
        );
    }
    let node_dir = n.overlayd_config.parent().unwrap_or(&lab.dir);
    for d in [lab.dir.as_path(), &lab.dir.join("run"), node_dir]
        .into_iter()
        .chain(node_dir.parent())
    {
        let_frr_through(d)?;
    }
    let zserv = run.join("zserv.api");
    // A socket left by a killed zebra would let bgpd connect to nothing.
    let _ = std::fs::remove_file(&zserv);
    for d in DAEMONS {
        let bin = Path::new(FRR_LIBEXEC).join(d);
        let pid = run.join(format!("{d}.pid"));
        let bfdctl = run.join("bfdd.sock");
        let mut argv: Vec<&OsStr> = vec![
            bin.as_os_str(),
            "-f".as_ref(),
            n.overlayd_config.as_os_str(),
            "-i".as_ref(),
            pid.as_os_str(),
            "-z".as_ref(),
            zserv.as_os_str(),
            "--vty_socket".as_ref(),
            run.as_os_str(),
            // No vty on TCP: vtysh reaches the daemons by the socket dir.
            "-P".as_ref(),
            "0".as_ref(),
            "-u".as_ref(),
            "frr".as_ref(),
            "-g".as_ref(),
            "frr".as_ref(),
            "--log".as_ref(),
            "stdout".as_ref(),
        ];
        if d == "bfdd" {
            argv.extend(["--bfdctl".as_ref(), bfdctl.as_os_str()]);
        }
        spawn_detached(lab, n, d, &argv, &n.log, " (is frr installed?)")?;
        if d == "zebra" {
            wait_zserv(lab, n, &zserv)?;
        }
    }
    Ok(())
}

/// Returns once zebra listens on its zserv socket.
fn wait_zserv(lab: &Lab, n: &Node, zserv: &Path) -> Result<()> {
    let pid = crate::build::read_pid(&lab.pid_file(&n.name, "zebra"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(zserv).is_err() {
        if !pid.is_some_and(crate::build::alive) {
            bail!("{}: zebra exited (log {})", n.name, n.log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: zebra did not open {} within 10 s (log {})",
                n.name,
                zserv.display(),
                n.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::router_config_tests;
    use std::collections::BTreeSet;

    const EXAMPLE: &str = include_str!("../../examples/site-router/frr.conf");

    /// The config's commands with every address, number and name masked:
    /// what the config looks like, not what it says.
    fn shape(text: &str) -> BTreeSet<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('!'))
            .filter(|l| !l.starts_with("log "))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        let named = k > 0 && ["hostname", "description"].contains(&words[k - 1]);
                        let value = w.parse::<ipnet::IpNet>().is_ok()
                            || w.parse::<std::net::IpAddr>().is_ok()
                            || w.parse::<u64>().is_ok();
                        if named || value {
                            "_"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn lab_config(spec_text: &str, node: &str) -> String {
        router_config_tests::lab_config(spec_text, node, config_text)
    }

    const SPEC: &str = "routed = true\nbfd_interval_ms = 300\n\
        [[site]]\nname = \"fra\"\ngateways = 2\nfrr = true\n[[site]]\nname = \"ams\"\n";

    #[test]
    fn the_lab_config_has_the_shape_of_the_example() {
        let lab = lab_config(SPEC, "fra-frr");
        let example = shape(EXAMPLE);
        let lab = shape(&lab);
        let (extra, missing) = router_config_tests::shape_difference(&lab, &example);
        assert!(extra.is_empty(), "{extra:?}");
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn the_lab_config_names_the_sites_gateways_and_prefix() {
        let text = lab_config(SPEC, "fra-frr");
        assert!(
            text.contains("router bgp 4200000197\n bgp router-id 172.16.1.202\n"),
            "{text}"
        );
        for (addr, asn) in [
            ("172.16.1.1", 4_200_000_101u32),
            ("172.16.1.2", 4_200_000_102),
        ] {
            for line in [
                format!(" neighbor {addr} remote-as {asn}\n"),
                format!(" neighbor {addr} bfd profile cubenet\n"),
                format!(" neighbor {addr} ttl-security hops 1\n"),
                format!("  neighbor {addr} route-map office-out out\n"),
            ] {
                assert!(text.contains(&line), "{line:?} in\n{text}");
            }
        }
        assert!(!text.contains("172.16.2."), "{text}");
        assert!(text.contains("  network 192.168.51.0/24\n"), "{text}");
        assert!(text.contains("  network fd00:192:168:33::/64\n"), "{text}");
        assert!(
            text.contains("  neighbor 172.16.1.2 route-map office-out6 out\n"),
            "{text}"
        );
        // Over an IPv6 session the gateways are named by their IPv6 LAN
        // addresses.
        let v6 = lab_config(
            &SPEC.replace("frr = true", "frr = true\nrouter_session = \"ipv6\""),
            "fra-frr",
        );
        assert!(
            v6.contains(" neighbor fd16:0:0:1::2 remote-as 4200000102\n"),
            "{v6}"
        );
        assert!(!v6.contains("neighbor 172.16."), "{v6}");
        assert!(text.contains("  transmit-interval 300\n"), "{text}");
    }
}
