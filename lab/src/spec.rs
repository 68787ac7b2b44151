//! The lab's TOML spec: a list of sites; everything else has a default.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(rename = "site")]
    pub sites: Vec<SiteSpec>,
    /// Seconds `up` waits for every node to attach and converge.
    #[serde(default = "default_timeout")]
    pub converge_timeout_s: u64,
    /// Liveness probe interval for gateway tunnels, in ms.
    #[serde(default = "default_probe")]
    pub probe_interval_ms: u64,
    /// TUN offload in every overlayd (`interface.offload`).
    #[serde(default = "yes")]
    pub offload: bool,
    /// Run `routed` on every gateway: BGP between all gateways installs the
    /// routes, instead of static `[[route]]` entries in overlayd's configs.
    #[serde(default)]
    pub routed: bool,
    /// routed's BFD transmit interval, in ms: with site routers, and
    /// between gateways with `gateway_bfd`.
    #[serde(default = "default_bfd_interval")]
    pub bfd_interval_ms: u64,
    /// BFD between the gateways too (`bfd = true` on routed's gateway
    /// neighbours), beside overlayd's probes of the same tunnels, which
    /// routed follows by default.
    #[serde(default)]
    pub gateway_bfd: bool,
    /// Gateways reach each other over IPv6 on the shared underlay
    /// (2001:db8:18::i:j/64 beside 198.18.i.j/16; they listen on both).
    #[serde(default)]
    pub underlay_ipv6: bool,
    /// Every overlayd serves metrics and its status page on
    /// [`OVERLAYD_METRICS`], every routed on [`ROUTED_METRICS`], each in
    /// its node's namespace (`cubenet-lab exec D NODE -- curl ...`).
    #[serde(default)]
    pub metrics: bool,
    /// Route reflectors (nodes rr1, rr2, ...: BIRD 2 route servers on the
    /// underlay, 198.18.0.(200+k)): the gateways peer with them instead of
    /// with each other, and learn every gateway's paths through them with
    /// ADD-PATH. Needs `routed = true`.
    #[serde(default)]
    pub route_reflectors: u8,
}

/// `metrics_listen` of every overlayd of a lab with `metrics = true`.
pub const OVERLAYD_METRICS: &str = "127.0.0.1:9469";
/// `metrics_listen` of every routed of a lab with `metrics = true`.
pub const ROUTED_METRICS: &str = "127.0.0.1:9470";

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    #[serde(default = "one")]
    pub gateways: u8,
    #[serde(default = "one")]
    pub hosts: u8,
    /// Hosts running plain `wireguard-go` + `wg` instead of overlayd; their
    /// certificates sit in the gateways' cert directory.
    #[serde(default)]
    pub wireguard_hosts: u8,
    /// A site router running BIRD on the site LAN (node SITE-bird): it
    /// announces 192.168.i.0/24 to the site's gateways over BGP + BFD and
    /// learns the overlay's host routes. Needs `routed = true`.
    #[serde(default)]
    pub bird: bool,
    /// A GoBGP speaker on the site LAN (node SITE-gobgp, 172.16.i.201):
    /// it announces 192.168.(100+i).0/24 to the site's gateways and learns
    /// the overlay's routes (read them with `gobgp -j global rib`). GoBGP
    /// installs nothing in the kernel and has no BFD. Needs `routed = true`.
    #[serde(default)]
    pub gobgp: bool,
    /// A site router running FRR (zebra, bgpd, bfdd) on the site LAN (node
    /// SITE-frr, 172.16.i.202): it announces 192.168.(50+i).0/24 to the
    /// site's gateways over BGP + BFD with TTL security and installs the
    /// overlay's routes. Needs `routed = true`.
    #[serde(default)]
    pub frr: bool,
    /// The family of the BGP (and BFD) sessions between this site's BIRD
    /// and FRR routers and its gateways: `ipv4` (172.16.i.j) or `ipv6`
    /// (fd16:0:0:i::j). Either carries both families' routes (RFC 4760).
    /// The GoBGP speaker always peers over IPv4.
    #[serde(default)]
    pub router_session: SessionFamily,
    /// MTU of the links between this site's gateways and the shared
    /// underlay (both ends); 1500 when unset. A bridge drops frames too big
    /// for the port they leave by, silently: a path MTU black hole.
    #[serde(default)]
    pub wan_mtu: Option<u16>,
}

/// The address family of a site router's sessions with the gateways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionFamily {
    #[default]
    Ipv4,
    Ipv6,
}

/// Sites that can have an FRR router (it announces 192.168.(50+i).0/24).
pub const FRR_SITES: usize = 49;

fn one() -> u8 {
    1
}
fn default_timeout() -> u64 {
    60
}
fn default_probe() -> u64 {
    100
}
fn default_bfd_interval() -> u64 {
    100
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Spec::parse(&text).with_context(|| path.display().to_string())
    }

    /// A spec from its TOML text, checked.
    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = toml::from_str(text).map_err(|e| {
            // The line it is about, so that a bad value names its key.
            let at = e.span().map(|r| {
                let line = text[..r.start.min(text.len())].matches('\n').count();
                let shown = text.lines().nth(line).unwrap_or_default().trim();
                format!("line {} ({shown}): ", line + 1)
            });
            anyhow::anyhow!("{}{}", at.unwrap_or_default(), e.message())
        })?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        if self.sites.is_empty() {
            bail!("site: at least one [[site]] is needed");
        }
        if self.sites.len() > 200 {
            bail!("site: at most 200 sites");
        }
        if self.bfd_interval_ms < 10 {
            bail!(
                "bfd_interval_ms: {} is below routed's minimum of 10",
                self.bfd_interval_ms
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sites.iter().enumerate() {
            cubenet_certs::cert::check_label("name", &s.name)
                .with_context(|| format!("site[{i}].name"))?;
            if s.name.len() > 8 {
                bail!("site[{i}].name: {:?} is longer than 8 characters", s.name);
            }
            if !seen.insert(&s.name) {
                bail!("site[{i}].name: {:?} appears twice", s.name);
            }
            if s.gateways == 0 || s.gateways > 9 {
                bail!("site[{i}].gateways: {} is outside 1-9", s.gateways);
            }
            if s.wireguard_hosts > 9 {
                bail!(
                    "site[{i}].wireguard_hosts: {} is more than 9",
                    s.wireguard_hosts
                );
            }
            if s.hosts > 80 {
                bail!("site[{i}].hosts: {} is more than 80", s.hosts);
            }
            if s.bird && !self.routed {
                bail!("site[{i}].bird: a BIRD site router needs `routed = true`");
            }
            if let Some(m) = s.wan_mtu {
                if !(1280..=9000).contains(&m) {
                    bail!("site[{i}].wan_mtu: {m} is outside 1280-9000");
                }
            }
            if s.gobgp && !self.routed {
                bail!("site[{i}].gobgp: a GoBGP speaker needs `routed = true`");
            }
            if s.frr && !self.routed {
                bail!("site[{i}].frr: an FRR site router needs `routed = true`");
            }
            if s.frr && i >= FRR_SITES {
                // Its 192.168.(50+i).0/24 would be BIRD's at site 50+i.
                bail!("site[{i}].frr: only the first {FRR_SITES} sites can have an FRR router");
            }
        }
        if self.route_reflectors > 0 && !self.routed {
            bail!("route_reflectors: reflectors need `routed = true`");
        }
        if self.route_reflectors > 4 {
            bail!("route_reflectors: {} is more than 4", self.route_reflectors);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPEC: &str = "routed = true\nbfd_interval_ms = 100\n[[site]]\nname = \"fra\"\ngateways = 2\nhosts = 2\nbird = true\n[[site]]\nname = \"ams\"\n";

    #[test]
    fn the_smallest_spec_and_errors_that_name_the_key() {
        let s = Spec::parse(SPEC).unwrap();
        assert_eq!(s.sites.len(), 2);
        let e = Spec::parse("[[site]]\nname = \"fra\"\ngateways = 0\n").unwrap_err();
        assert!(format!("{e:#}").contains("site[0].gateways"), "{e:#}");
        let e = Spec::parse("[[site]]\nname = \"fra\"\nwan_mtu = 576\n").unwrap_err();
        assert!(format!("{e:#}").contains("site[0].wan_mtu"), "{e:#}");
        let e = Spec::parse("[[site]]\nname = \"fra\"\nbird = true\n").unwrap_err();
        assert!(format!("{e:#}").contains("site[0].bird"), "{e:#}");
        let e = Spec::parse("[[site]]\nname = \"fra\"\nfrr = true\n").unwrap_err();
        assert!(format!("{e:#}").contains("site[0].frr"), "{e:#}");
        let e = Spec::parse("[[site]]\nname = \"fra\"\nrouter_session = \"ipx\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("router_session"), "{e:#}");
        let s = Spec::parse("[[site]]\nname = \"fra\"\nrouter_session = \"ipv6\"\n").unwrap();
        assert_eq!(s.sites[0].router_session, SessionFamily::Ipv6);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = Spec::parse(&text);
        }

        #[test]
        fn mangled_specs_never_panic(at in 0..SPEC.len(), cut in 0..40usize, junk in "[ -~\n]{0,12}") {
            let mut t = SPEC.to_string();
            let end = (at + cut).min(t.len());
            t.replace_range(at..end, &junk);
            let _ = Spec::parse(&t);
        }
    }
}
