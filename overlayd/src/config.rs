//! overlayd's TOML configuration. Unknown keys are refused, and every error
//! names the file, the key and what was expected.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 51820;
pub const DEFAULT_MTU: u16 = 1420;
pub const DEFAULT_SOCKET: &str = "/run/cubenet/overlayd.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub identity: Identity,
    #[serde(default)]
    pub interface: Interface,
    /// UDP addresses to listen on; default `0.0.0.0:51820` and `[::]:51820`.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Unix control socket (mode 0600).
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
    /// Prometheus metrics (`GET /metrics`) on this TCP address; off if unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Gateways this node keeps tunnels to: on a host, every gateway of its
    /// site; on a gateway, the other gateways.
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<GatewayPeer>,
    #[serde(default)]
    pub probe: Probe,
    /// Flap damping of tunnels: a host's tunnel at a gateway, a gateway's
    /// at a host.
    #[serde(default)]
    pub damping: Damping,
    /// Static forwarding entries on a gateway (routed installs the rest).
    #[serde(default, rename = "route")]
    pub routes: Vec<StaticRoute>,
    #[serde(default)]
    pub limits: Limits,
    /// This node's own firewall (inbound default deny once present).
    pub firewall: Option<crate::firewall::FirewallConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// X25519 private key (0600).
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    /// Revocation list; optional.
    pub crl: Option<PathBuf>,
    /// Directory of node certificates (`*.crt`), looked up by public key for
    /// peers that do not present their certificate in-band (plain WireGuard).
    pub cert_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    #[serde(default = "default_ifname")]
    pub name: String,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Worker threads; 0 = one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// TUN offload (TSO/GRO through the virtio-net header); overlayd falls
    /// back to one packet per read where the kernel refuses it.
    #[serde(default = "yes")]
    pub offload: bool,
    /// TUN queues, each read by its own task (flows spread by hash).
    #[serde(default = "one")]
    pub queues: usize,
    /// More prefixes routed into the TUN besides the CA's networks: site
    /// subnets behind gateways that hosts should reach.
    #[serde(default)]
    pub routes: Vec<IpNet>,
    /// Lower the MSS of TCP SYNs that enter or cross the overlay here to
    /// what fits `mtu` (a site LAN at 1500 would offer 1460).
    #[serde(default = "yes")]
    pub clamp_mss: bool,
    /// Learn each tunnel's MTU by probing inside it (see the README's MTU
    /// section); off: every tunnel is assumed to carry `mtu`.
    #[serde(default = "yes")]
    pub path_mtu_discovery: bool,
    /// Answer WireGuard's userspace configuration protocol on
    /// `/var/run/wireguard/<name>.sock` (0600), so `wg show <name>` lists
    /// the peers: read-only (`wg set` is refused), the private key never
    /// shown. A socket that cannot be bound (another daemon answers on it,
    /// a read-only /var/run) is logged and overlayd runs without it.
    #[serde(default = "yes")]
    pub uapi: bool,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

impl Default for Interface {
    fn default() -> Self {
        Interface {
            name: default_ifname(),
            mtu: DEFAULT_MTU,
            workers: 0,
            offload: true,
            queues: 1,
            routes: Vec::new(),
            clamp_mss: true,
            path_mtu_discovery: true,
            uapi: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayPeer {
    pub name: String,
    /// `host:port` or `[v6]:port`.
    pub endpoint: SocketAddr,
    /// The gateway's public key (base64). Optional when `cert` is given.
    pub public_key: Option<String>,
    /// The gateway's certificate file.
    pub cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Liveness probe interval per gateway tunnel.
    #[serde(default = "default_probe_ms")]
    pub interval_ms: u64,
    /// Probes missed in a row before a gateway is unhealthy.
    #[serde(default = "default_misses")]
    pub misses: u32,
    /// A gateway must stay healthy this long before traffic moves back to it.
    #[serde(default = "default_failback_ms")]
    pub failback_stable_ms: u64,
    /// Between gateways that both speak them, hellos in place of probes
    /// and replies: half the datagrams on an idle tunnel. Off: probes and
    /// replies only, as every version speaks (an older gateway gets those
    /// anyway: it never says it speaks hellos).
    #[serde(default = "yes")]
    pub hellos: bool,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            interval_ms: default_probe_ms(),
            misses: default_misses(),
            failback_stable_ms: default_failback_ms(),
            hellos: true,
        }
    }
}

impl Probe {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// Flap damping of tunnels (RFC 2439 penalty, the defaults of routed's
/// link damping). A gateway does not attach a host again whose tunnel
/// here went silent so often that the penalty passed `suppress`, until it
/// decayed below `reuse`: the host's routes stay with its other gateways
/// meanwhile. A host does not fail back to a gateway so damped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Damping {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Added each time the tunnel goes down.
    #[serde(default = "default_damping_penalty")]
    pub penalty: f64,
    #[serde(default = "default_damping_half_life")]
    pub half_life_s: f64,
    /// Held down above this penalty...
    #[serde(default = "default_damping_suppress")]
    pub suppress: f64,
    /// ... until it decays below this one.
    #[serde(default = "default_damping_reuse")]
    pub reuse: f64,
    /// Held down at most this long after the last flap.
    #[serde(default = "default_damping_max_suppress")]
    pub max_suppress_s: f64,
}

impl Default for Damping {
    fn default() -> Self {
        Damping {
            enabled: true,
            penalty: default_damping_penalty(),
            half_life_s: default_damping_half_life(),
            suppress: default_damping_suppress(),
            reuse: default_damping_reuse(),
            max_suppress_s: default_damping_max_suppress(),
        }
    }
}

impl Damping {
    /// The parameters, or why they cannot work; `None` when off.
    pub fn params(&self) -> Result<Option<cubenet_daemon::damping::Config>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let secs = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!(
                    "damping.{key}: {v} must be more than 0 and at most 86400 s"
                ))
            }
        };
        let c = cubenet_daemon::damping::Config {
            penalty_per_flap: self.penalty,
            half_life: secs("half_life_s", self.half_life_s)?,
            suppress_threshold: self.suppress,
            reuse_threshold: self.reuse,
            max_suppress: secs("max_suppress_s", self.max_suppress_s)?,
            // A host that comes back is announced at once (unless damped).
            stable_up: Duration::ZERO,
        };
        use cubenet_daemon::damping::ConfigError as E;
        c.validate().map_err(|e| match e {
            E::Penalty => format!("damping.penalty: {} must be a number more than 0", self.penalty),
            E::Thresholds => format!(
                "damping.reuse, damping.suppress: {} and {} must be numbers, reuse more than 0",
                self.reuse, self.suppress
            ),
            E::ReuseAboveSuppress => "damping.reuse: must be below damping.suppress".into(),
            E::HalfLife => "damping.half_life_s: must be more than 0".into(),
            E::Ceiling(c) => format!(
                "damping.max_suppress_s: too short for damping.suppress (the penalty could reach only {c:.0})"
            ),
        })?;
        Ok(Some(c))
    }
}

fn default_damping_penalty() -> f64 {
    1000.0
}
fn default_damping_half_life() -> f64 {
    15.0
}
fn default_damping_suppress() -> f64 {
    2000.0
}
fn default_damping_reuse() -> f64 {
    750.0
}
fn default_damping_max_suppress() -> f64 {
    60.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub prefix: IpNet,
    /// Gateway names (equal cost).
    pub via: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Peers whose certificate is not validated yet, at most.
    #[serde(default = "default_pending")]
    pub max_pending: usize,
    /// Peers (tunnels) of this node at most, pending ones included: the
    /// table every packet looks its peer up in is this big (8 bytes a
    /// place), allocated at start.
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// A pending peer is dropped after this long without a valid certificate.
    #[serde(default = "default_pending_timeout")]
    pub pending_timeout_ms: u64,
    /// Handshakes per second before cookies are required (WireGuard's rate limit).
    #[serde(default = "default_handshake_rate")]
    pub handshake_rate: u64,
    /// Above `handshake_rate`, handshake initiations per second from one
    /// source address (an IPv6 /64) whose cookie proved it; 0: no limit
    /// (see [`crate::source_limit`]).
    #[serde(default = "default_handshake_source_rate")]
    pub handshake_source_rate: u64,
    /// The burst one source may send above its rate.
    #[serde(default = "default_handshake_source_burst")]
    pub handshake_source_burst: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: default_pending(),
            max_peers: default_max_peers(),
            pending_timeout_ms: default_pending_timeout(),
            handshake_rate: default_handshake_rate(),
            handshake_source_rate: default_handshake_source_rate(),
            handshake_source_burst: default_handshake_source_burst(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_ifname() -> String {
    "cube0".into()
}
fn default_mtu() -> u16 {
    DEFAULT_MTU
}
fn default_probe_ms() -> u64 {
    100
}
fn default_misses() -> u32 {
    3
}
fn default_failback_ms() -> u64 {
    2000
}
fn default_pending() -> usize {
    4096
}
fn default_max_peers() -> usize {
    65_536
}
/// The receiver index has 24 bits.
pub const MAX_PEERS_LIMIT: usize = 1 << 23;
fn default_pending_timeout() -> u64 {
    5000
}
fn default_handshake_rate() -> u64 {
    1000
}
/// The kernel WireGuard's numbers: a host initiates once per 5 s at most
/// (rekey timeout), so 20 a second leaves room for many hosts behind one
/// NAT, and 5 for a few starting at once.
fn default_handshake_source_rate() -> u64 {
    20
}
fn default_handshake_source_burst() -> u64 {
    5
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct ConfigError {
    pub file: String,
    pub msg: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |msg: String| ConfigError {
            file: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut cfg = Config::parse(&text).map_err(err)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and checks; the message names the key and the problem.
    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| cubenet_daemon::config::toml_error(text, &e))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let i = &self.interface;
        if i.name.is_empty() || i.name.len() > 15 {
            return Err(format!(
                "interface.name: {:?} must be 1-15 characters",
                i.name
            ));
        }
        if !(1280..=9000).contains(&i.mtu) {
            return Err(format!("interface.mtu: {} is outside 1280-9000", i.mtu));
        }
        if !(1..=64).contains(&i.queues) {
            return Err(format!("interface.queues: {} is outside 1-64", i.queues));
        }
        // Bounded above too: the probe window (interval x (misses + 1)) and
        // the other periods are durations the node adds to instants.
        let p = &self.probe;
        if !(10..=60_000).contains(&p.interval_ms) {
            return Err(format!(
                "probe.interval_ms: {} is outside 10-60000",
                p.interval_ms
            ));
        }
        if !(1..=100).contains(&p.misses) {
            return Err(format!("probe.misses: {} is outside 1-100", p.misses));
        }
        if p.failback_stable_ms > 3_600_000 {
            return Err(format!(
                "probe.failback_stable_ms: {} is more than an hour",
                p.failback_stable_ms
            ));
        }
        self.damping.params()?;
        if self.limits.pending_timeout_ms > 3_600_000 {
            return Err(format!(
                "limits.pending_timeout_ms: {} is more than an hour",
                self.limits.pending_timeout_ms
            ));
        }
        let l = &self.limits;
        if !(16..=MAX_PEERS_LIMIT).contains(&l.max_peers) {
            return Err(format!(
                "limits.max_peers: {} is outside 16-{MAX_PEERS_LIMIT}",
                l.max_peers
            ));
        }
        if l.handshake_source_rate > 0 && !(1..=1000).contains(&l.handshake_source_burst) {
            return Err(format!(
                "limits.handshake_source_burst: {} is outside 1-1000",
                l.handshake_source_burst
            ));
        }
        if l.max_pending > l.max_peers {
            return Err(format!(
                "limits.max_pending: {} is more than limits.max_peers ({})",
                l.max_pending, l.max_peers
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (n, g) in self.gateways.iter().enumerate() {
            cubenet_certs::cert::check_label("name", &g.name)
                .map_err(|e| format!("gateway[{n}].name: {e}"))?;
            if !names.insert(&g.name) {
                return Err(format!("gateway[{n}].name: {:?} appears twice", g.name));
            }
            if g.public_key.is_none() && g.cert.is_none() {
                return Err(format!(
                    "gateway[{n}] ({}): needs public_key or cert",
                    g.name
                ));
            }
            if let Some(k) = &g.public_key {
                cubenet_certs::keys::decode_public_key(k)
                    .map_err(|e| format!("gateway[{n}].public_key: {e}"))?;
            }
        }
        self.firewall_policy()?;
        for (n, r) in self.routes.iter().enumerate() {
            if r.via.is_empty() {
                return Err(format!("route[{n}].via: needs at least one gateway"));
            }
            for v in &r.via {
                if !names.contains(v) {
                    return Err(format!("route[{n}].via: {v:?} is not a configured gateway"));
                }
            }
        }
        Ok(())
    }

    /// The firewall policy; no `[firewall]` lets everything through.
    pub fn firewall_policy(&self) -> Result<crate::firewall::Policy, String> {
        match &self.firewall {
            None => Ok(crate::firewall::Policy::default()),
            Some(f) => crate::firewall::Policy::from_config(f),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.identity.key);
        fix(&mut self.identity.cert);
        fix(&mut self.identity.ca);
        if let Some(p) = &mut self.identity.crl {
            fix(p);
        }
        if let Some(p) = &mut self.identity.cert_dir {
            fix(p);
        }
        for g in &mut self.gateways {
            if let Some(p) = &mut g.cert {
                fix(p);
            }
        }
        if self.listen.is_empty() {
            self.listen = vec![
                SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
                SocketAddr::from(([0u16; 8], DEFAULT_PORT)),
            ];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text gives a config or an error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(t in "\\PC{0,300}") {
            let _ = Config::parse(&t);
        }

        #[test]
        fn mangled_configs_never_panic(cut in 0usize..400, junk in "[\\[\\]=\"a-z0-9._ \n]{0,40}") {
            let base = "[identity]\nkey = \"k\"\ncert = \"c\"\nca = \"a\"\n[[gateway]]\nname = \"g\"\n\
                endpoint = \"1.2.3.4:51820\"\ncert = \"g.crt\"\n[firewall]\n[[firewall.inbound]]\naction = \"allow\"\n";
            let cut = cut.min(base.len());
            let t = format!("{}{}{}", &base[..cut], junk, &base[cut..]);
            let _ = Config::parse(&t);
        }
    }

    #[test]
    fn the_example_configs_parse() {
        for (name, text) in [
            (
                "gateway",
                include_str!("../../examples/gateway/overlayd.toml"),
            ),
            ("host", include_str!("../../examples/host/overlayd.toml")),
        ] {
            if let Err(e) = Config::parse(text) {
                panic!("examples/{name}/overlayd.toml: {e}");
            }
        }
    }

    #[test]
    fn periods_that_would_overflow_are_refused_by_name() {
        let base = "[identity]\nkey = \"k\"\ncert = \"c\"\nca = \"a\"\n";
        for (extra, key) in [
            (
                "[probe]\ninterval_ms = 18446744073709551\n",
                "probe.interval_ms",
            ),
            ("[probe]\nmisses = 4294967295\n", "probe.misses"),
            (
                "[probe]\nfailback_stable_ms = 9000000000000\n",
                "probe.failback_stable_ms",
            ),
            ("[damping]\nhalf_life_s = inf\n", "damping.half_life_s"),
            (
                "[damping]\nmax_suppress_s = -1.0\n",
                "damping.max_suppress_s",
            ),
            ("[damping]\nreuse = 5000.0\n", "damping.reuse"),
            ("[damping]\npenalty = nan\n", "damping.penalty"),
            (
                "[damping]\nmax_suppress_s = 1.0\n",
                "damping.max_suppress_s",
            ),
            (
                "[limits]\npending_timeout_ms = 9000000000000\n",
                "limits.pending_timeout_ms",
            ),
            (
                "[limits]\nhandshake_source_burst = 0\n",
                "limits.handshake_source_burst",
            ),
        ] {
            let e = Config::parse(&format!("{base}{extra}")).unwrap_err();
            assert!(e.starts_with(key), "{extra:?}: {e}");
        }
    }

    #[test]
    fn the_peer_limit_is_bounded_and_holds_the_pending_ones() {
        let base = "[identity]\nkey = \"k\"\ncert = \"c\"\nca = \"a\"\n[limits]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.limits.max_peers, 65_536);
        let e = Config::parse(&format!("{base}max_peers = 4\n")).unwrap_err();
        assert!(e.starts_with("limits.max_peers: 4 is outside 16-"), "{e}");
        let e = Config::parse(&format!("{base}max_peers = 100\nmax_pending = 200\n")).unwrap_err();
        assert!(
            e.contains("limits.max_pending: 200 is more than limits.max_peers (100)"),
            "{e}"
        );
    }

    #[test]
    fn errors_in_array_tables_name_the_entry() {
        let t = "[identity]\nkey = \"k\"\ncert = \"c\"\nca = \"a\"\n\
                 [[firewall.inbound]]\naction = \"allow\"\n[[firewall.inbound]]\nports = \"1\"\n";
        let e = Config::parse(t).unwrap_err();
        assert!(
            e.starts_with("firewall.inbound[1]: unknown field `ports`"),
            "{e}"
        );
    }

    const MIN: &str = r#"
[identity]
key = "n.key"
cert = "n.crt"
ca = "ca.crt"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.interface.mtu, 1420);
        assert_eq!(c.probe.interval_ms, 100);
        assert_eq!(c.probe.misses, 3);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse(&format!("{MIN}\n[interface]\nmtu = 100\n")).unwrap_err();
        assert!(e.contains("interface.mtu"), "{e}");
        let e = Config::parse(&format!("{MIN}\nbogus = 1\n")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse(&format!(
            "{MIN}\n[[gateway]]\nname = \"g\"\nendpoint = \"nope\"\npublic_key = \"x\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("endpoint") || e.contains("socket"), "{e}");
        let e = Config::parse(&format!(
            "{MIN}\n[[route]]\nprefix = \"10.0.0.0/8\"\nvia = [\"ghost\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("route[0].via") && e.contains("ghost"), "{e}");
    }
}
