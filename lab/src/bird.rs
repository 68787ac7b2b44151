//! A BIRD site router (spec `bird = true`): BIRD 2 in the node's
//! namespace, peering with the site's gateways over the LAN.
//!
//! The config has the shape of `examples/site-router/bird.conf` (a unit
//! test below holds the two together): the office LAN announced from its
//! interface, BGP + BFD + GTSM to every gateway of the site over a session
//! of the site's `router_session` family carrying both families, and the
//! overlay's routes installed in the kernel over all gateways.

use crate::build::{lan6, office, spawn_detached, Plan};
use crate::routed;
use crate::spec::{SessionFamily, Spec};
use crate::state::{Lab, Node};
use anyhow::Result;

/// The AS of the BIRD site router of site `i`.
pub(crate) fn asn(site_idx: usize) -> u32 {
    routed::asn(site_idx, 99)
}

/// BIRD's config on site router `p`: BGP + BFD to every gateway of its
/// site over the LAN; it announces its office LAN (192.168.i.0/24 and
/// fd00:192:168:i::/64) and installs what it learns.
pub(crate) fn config_text(plans: &[Plan], p: &Plan, spec: &Spec) -> String {
    let i = p.site_idx;
    let me4 = format!("172.16.{i}.{}", p.member);
    let me6 = lan6(i, p.member);
    let v6 = spec.sites[i - 1].router_session == SessionFamily::Ipv6;
    let [office4, office6] = office(i);
    // The next hop of the family the session is not of: our address of
    // that family on the LAN.
    let (nh4, nh6) = if v6 {
        (format!("    next hop address {me4};\n"), String::new())
    } else {
        (String::new(), format!("    next hop address {me6};\n"))
    };
    let mut t = format!(
        "# BIRD config for {name} (site router of {site}), written by cubenet-lab\n\
         router id {me4};\n\
         protocol device {{}}\n\
         protocol direct {{ ipv4; ipv6; interface \"office0\"; }}\n\
         protocol bfd {{\n  interface \"lan0\" {{ interval {ms} ms; multiplier 3; }};\n}}\n\
         protocol kernel {{\n  ipv4 {{ import none; export where source = RTS_BGP; }};\n  merge paths on;\n}}\n\
         protocol kernel {{\n  ipv6 {{ import none; export where source = RTS_BGP; }};\n  merge paths on;\n}}\n\
         template bgp cubenet {{\n  local {local} as {asn};\n  hold time 9;\n  connect retry time 1;\n  \
         error wait time 1, 10;\n  bfd on;\n  ttl security on;\n  \
         ipv4 {{\n    import where net ~ [ 10.77.0.0/16+, 192.168.0.0/16+ ];\n    export where net = {office4};\n{nh4}  }};\n  \
         ipv6 {{\n    import where net ~ [ fd77::/48+, fd00:192:168::/48{{48,64}} ];\n    export where net = {office6};\n{nh6}  }};\n}}\n",
        name = p.node.name,
        site = p.node.site,
        ms = spec.bfd_interval_ms,
        local = if v6 { &me6 } else { &me4 },
        asn = asn(i),
    );
    for g in plans
        .iter()
        .filter(|q| q.node.role == "gateway" && q.site_idx == i)
    {
        let neighbor = if v6 {
            lan6(i, g.member)
        } else {
            format!("172.16.{i}.{}", g.member)
        };
        t.push_str(&format!(
            "protocol bgp {} from cubenet {{ neighbor {neighbor} as {}; }}\n",
            g.node.name.replace('-', "_"),
            routed::asn(g.site_idx, g.member)
        ));
    }
    t
}

/// The underlay address of route reflector `k` (1, 2, ...).
pub(crate) fn reflector_address(k: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 18, 0, 200 + k as u8)
}

/// The AS of route reflector `k`: private, above every gateway's.
pub(crate) fn reflector_asn(k: usize) -> u32 {
    4_290_000_000 + k as u32
}

/// The TCP-MD5 password of the sessions with the lab's reflectors.
pub(crate) const REFLECTOR_PASSWORD: &str = "cubenet-lab-reflector";

/// BIRD's config on route reflector `p`: a route server (`rs client`: it
/// passes paths on unchanged, next hops and AS paths included) for any
/// gateway on the underlay, which must open the session (`neighbor
/// range`, passive), sending every path of a prefix (`add paths tx`)
/// and installing nothing (it forwards no traffic). The shape of
/// `examples/route-reflector/bird.conf`.
pub(crate) fn reflector_config_text(p: &Plan) -> String {
    let k = p.member - 200;
    format!(
        "# BIRD config for {name} (route reflector), written by cubenet-lab
         router id {me};
         protocol device {{}}
         template bgp gateways {{
  local {me} as {asn};
  neighbor range 198.18.0.0/16 external;
           dynamic name \"gw\";
  passive on;
  rs client;
  ttl security on;
  password \"{password}\";
           hold time 9;
  keepalive time 3;
  error wait time 1, 5;
           ipv4 {{ import all; export all; add paths tx; next hop keep; gateway recursive; }};
           ipv6 {{ import all; export all; add paths tx; next hop keep; gateway recursive; }};
}}
         protocol bgp overlay from gateways {{}}
",
        name = p.node.name,
        me = reflector_address(k),
        asn = reflector_asn(k),
        password = REFLECTOR_PASSWORD,
    )
}

/// Starts BIRD in the foreground of its own process group.
pub(crate) fn start(lab: &Lab, n: &Node) -> Result<()> {
    crate::build::ensure_stopped(lab, n, "bird")?;
    let argv = [
        "bird".as_ref(),
        "-f".as_ref(),
        "-c".as_ref(),
        n.overlayd_config.as_os_str(),
        "-s".as_ref(),
        n.overlayd_socket.as_os_str(),
    ];
    spawn_detached(lab, n, "bird", &argv, &n.log, " (is bird2 installed?)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::router_config_tests;
    use std::collections::BTreeSet;

    const EXAMPLE: &str = include_str!("../../examples/site-router/bird.conf");
    const REFLECTOR: &str = include_str!("../../examples/route-reflector/bird.conf");

    /// A BIRD config's statements with comments dropped and every address,
    /// number, quoted name and protocol name masked: what the config looks
    /// like, not what it says.
    fn shape(text: &str) -> BTreeSet<String> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        let tail: String = w
                            .chars()
                            .rev()
                            .take_while(|c| [';', ','].contains(c))
                            .collect();
                        let core = w.trim_end_matches([';', ',']);
                        let value = core.split(['+', '{']).next().unwrap_or_default();
                        let masked = value.parse::<ipnet::IpNet>().is_ok()
                            || value.parse::<std::net::IpAddr>().is_ok()
                            || value.parse::<u64>().is_ok()
                            || core.starts_with('"')
                            || (k > 0
                                && words[k - 1] == "bgp"
                                && words.get(k + 1) == Some(&"from"));
                        if masked {
                            format!("_{tail}")
                        } else {
                            w.to_string()
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

    fn spec(session: &str) -> String {
        format!(
            "routed = true\nbfd_interval_ms = 300\n\
             [[site]]\nname = \"fra\"\ngateways = 2\nbird = true\nrouter_session = \"{session}\"\n\
             [[site]]\nname = \"ams\"\n"
        )
    }

    #[test]
    fn the_lab_configs_have_the_shape_of_the_example() {
        let example = shape(EXAMPLE);
        for session in ["ipv4", "ipv6"] {
            let lab = shape(&lab_config(&spec(session), "fra-bird"));
            let (extra, missing) = router_config_tests::shape_difference(&lab, &example);
            assert!(extra.is_empty(), "{session}: {extra:?}");
            assert!(missing.is_empty(), "{session}: {missing:?}");
        }
    }

    /// The lab's reflectors run the example's config, and the addresses
    /// and AS numbers routed's side of the lab uses.
    #[test]
    fn the_lab_reflectors_have_the_shape_of_the_example() {
        let spec = "routed = true\nroute_reflectors = 2\n[[site]]\nname = \"fra\"\n";
        let rr2 = router_config_tests::lab_config(spec, "rr2", |_, p, _| reflector_config_text(p));
        let (extra, missing) =
            router_config_tests::shape_difference(&shape(&rr2), &shape(REFLECTOR));
        assert!(extra.is_empty(), "{extra:?}");
        assert!(missing.is_empty(), "{missing:?}");
        assert!(
            rr2.contains("  local 198.18.0.202 as 4290000002;\n"),
            "{rr2}"
        );
    }

    #[test]
    fn the_session_family_picks_the_addresses_and_the_other_familys_next_hop() {
        let v4 = lab_config(&spec("ipv4"), "fra-bird");
        for line in [
            "  local 172.16.1.200 as 4200000199;\n",
            "protocol bgp fra_gw1 from cubenet { neighbor 172.16.1.1 as 4200000101; }\n",
            "protocol bgp fra_gw2 from cubenet { neighbor 172.16.1.2 as 4200000102; }\n",
            "    export where net = fd00:192:168:1::/64;\n    next hop address fd16:0:0:1::c8;\n",
            "interval 300 ms",
        ] {
            assert!(v4.contains(line), "{line:?} in\n{v4}");
        }
        let v6 = lab_config(&spec("ipv6"), "fra-bird");
        for line in [
            "  local fd16:0:0:1::c8 as 4200000199;\n",
            "protocol bgp fra_gw2 from cubenet { neighbor fd16:0:0:1::2 as 4200000102; }\n",
            "    export where net = 192.168.1.0/24;\n    next hop address 172.16.1.200;\n",
        ] {
            assert!(v6.contains(line), "{line:?} in\n{v6}");
        }
        assert!(!v6.contains("next hop address fd16"), "{v6}");
    }
}
