//! routed's TOML configuration. Unknown keys are refused, and every error
//! names the file, the key and what was expected.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/run/cubenet/routed.sock";
pub const DEFAULT_OVERLAYD_SOCKET: &str = "/run/cubenet/overlayd.sock";
/// The kernel route protocol number routed's routes carry (rtnetlink).
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 201;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's AS: a private 4-byte AS (RFC 6996) per gateway.
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// BGP listen addresses. Default: the addresses routed serves, port
    /// 179 — its overlay addresses (`router_id`, the certificate's IPv6
    /// address) and its address on the link of each neighbour outside the
    /// overlay — never the underlay.
    #[serde(default)]
    pub listen: Option<Vec<std::net::SocketAddr>>,
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
    #[serde(default = "default_overlayd_socket")]
    pub overlayd_socket: PathBuf,
    /// Prometheus metrics (`GET /metrics`) on this TCP address; off if unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The CA certificate: its networks are what "overlay" imports accept.
    pub ca: PathBuf,
    /// This gateway's certificate: the site prefixes it may announce.
    pub cert: PathBuf,
    /// This gateway's private key (overlayd's `node.key`). With it, BGP
    /// with every overlay neighbour that has a `cert` is signed with
    /// TCP-MD5 (RFC 2385) under a key both derive from their X25519 keys,
    /// so nobody without one of the two private keys (a local user of a
    /// gateway) can open or reset a session.
    pub key: Option<PathBuf>,
    /// Install learned site prefixes into the kernel.
    #[serde(default = "yes")]
    pub kernel_routes: bool,
    #[serde(default = "default_protocol")]
    pub route_protocol: u8,
    /// The overlay interface learned site prefixes are routed into.
    #[serde(default = "default_interface")]
    pub interface: String,
    #[serde(default)]
    pub timers: Timers,
    #[serde(default)]
    pub bfd: Bfd,
    #[serde(default)]
    pub damping: Damping,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub graceful_restart: GracefulRestart,
    #[serde(default, rename = "neighbor")]
    pub neighbors: Vec<Neighbor>,
    #[serde(default, rename = "announce")]
    pub announce: Vec<Announce>,
}

/// Graceful restart (RFC 4724), as the helper of a neighbour that
/// restarts: its routes are kept, marked stale, while it comes back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GracefulRestart {
    /// Send the capability and keep a restarting neighbour's routes.
    #[serde(default)]
    pub enabled: bool,
    /// The restart time we announce (seconds, at most 4095).
    #[serde(default = "default_restart_time")]
    pub restart_time_s: u16,
    /// How long a restarted neighbour's stale routes wait for its
    /// End-of-RIB before they go.
    #[serde(default = "default_stale_time")]
    pub stale_time_s: u16,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        GracefulRestart {
            enabled: false,
            restart_time_s: default_restart_time(),
            stale_time_s: default_stale_time(),
        }
    }
}

fn default_restart_time() -> u16 {
    120
}
fn default_stale_time() -> u16 {
    360
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timers {
    #[serde(default = "default_hold")]
    pub hold_time_s: u16,
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u16,
    #[serde(default = "default_retry")]
    pub connect_retry_s: u64,
    /// Seconds after start before routed replaces overlayd's table even if
    /// not every neighbour has sent its routes (End-of-RIB) yet.
    #[serde(default = "default_grace")]
    pub startup_grace_s: u64,
    /// At a stop, how long routes carry GRACEFUL_SHUTDOWN (RFC 8326)
    /// before the sessions end with a Cease; 0 skips it.
    #[serde(default = "default_drain")]
    pub shutdown_drain_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            hold_time_s: default_hold(),
            keepalive_s: default_keepalive(),
            connect_retry_s: default_retry(),
            startup_grace_s: default_grace(),
            shutdown_drain_ms: default_drain(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bfd {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Desired transmit and required receive interval. The default suits
    /// public internet links; 100 ms × 3 detects a failure in 0.3 s.
    #[serde(default = "default_bfd_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_bfd_mult")]
    pub multiplier: u8,
}

impl Default for Bfd {
    fn default() -> Self {
        Bfd {
            enabled: true,
            interval_ms: default_bfd_interval(),
            multiplier: default_bfd_mult(),
        }
    }
}

/// The longest duration a config may give in seconds (a day).
const MAX_SECONDS: f64 = 86_400.0;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Damping {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_penalty")]
    pub penalty: f64,
    #[serde(default = "default_half_life")]
    pub half_life_s: f64,
    #[serde(default = "default_suppress")]
    pub suppress: f64,
    #[serde(default = "default_reuse")]
    pub reuse: f64,
    #[serde(default = "default_max_suppress")]
    pub max_suppress_s: f64,
    /// A link that went down must stay up this long before its routes
    /// are used again.
    #[serde(default = "default_stable_up")]
    pub stable_up_s: f64,
    /// Per-prefix damping (RFC 2439 with the RFC 7196 parameters below):
    /// a prefix a neighbour keeps withdrawing and announcing again is held
    /// out of the table. Off by default.
    #[serde(default)]
    pub per_prefix: bool,
    #[serde(default = "default_prefix_half_life")]
    pub prefix_half_life_s: f64,
    #[serde(default = "default_prefix_suppress")]
    pub prefix_suppress: f64,
    #[serde(default = "default_reuse")]
    pub prefix_reuse: f64,
    #[serde(default = "default_prefix_max_suppress")]
    pub prefix_max_suppress_s: f64,
}

impl Default for Damping {
    fn default() -> Self {
        Damping {
            enabled: true,
            penalty: default_penalty(),
            half_life_s: default_half_life(),
            suppress: default_suppress(),
            reuse: default_reuse(),
            max_suppress_s: default_max_suppress(),
            stable_up_s: default_stable_up(),
            per_prefix: false,
            prefix_half_life_s: default_prefix_half_life(),
            prefix_suppress: default_prefix_suppress(),
            prefix_reuse: default_reuse(),
            prefix_max_suppress_s: default_prefix_max_suppress(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Prefixes accepted from one neighbour before the session is closed.
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prefixes: default_max_prefixes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Import {
    /// "none" (the RFC 8212 default: nothing) or "overlay" (the CA's
    /// networks, and the subnets the originating gateway's cert allows).
    Named(String),
    /// Prefixes (and anything more specific) to accept.
    List(Vec<IpNet>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    /// The neighbour's name: for gateways, its certificate name, which is
    /// also its name in overlayd.
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    /// The neighbour's gateway certificate: the subnets it may originate.
    pub cert: Option<PathBuf>,
    /// Import policy; without one nothing is accepted (RFC 8212).
    pub import: Option<Import>,
    /// "all" announces our best routes; without it nothing (RFC 8212).
    pub export: Option<String>,
    /// BFD (RFC 5880) with this neighbour. Default on for a neighbour
    /// outside the overlay (a router on the site LAN); off for a gateway
    /// reached through the overlay, whose tunnel overlayd already watches
    /// with its probes: routed takes the session down when overlayd says
    /// the tunnel is down (one liveness check per tunnel, not two).
    pub bfd: Option<bool>,
    /// This neighbour's BFD interval, if not `[bfd]`'s.
    pub bfd_interval_ms: Option<u64>,
    /// This neighbour's BFD detection multiplier, if not `[bfd]`'s.
    pub bfd_multiplier: Option<u8>,
    /// BFD to this neighbour on the multihop port 4784 (RFC 5883) instead
    /// of 3784: FRR runs BFD that way for a neighbour with `ttl-security`
    /// (GTSM makes it count the session as eBGP multihop). The neighbour
    /// is still one hop away, so TTL (hop limit) 255 is still required.
    #[serde(default)]
    pub bfd_multihop: bool,
    /// GTSM (RFC 5082): BGP to this neighbour is sent with TTL (hop limit)
    /// 255 and accepted only with 255, so only a directly connected
    /// neighbour can reach the session. Off only for a neighbour more than
    /// one hop away.
    #[serde(default = "yes")]
    pub ttl_security: bool,
    /// The next hop given to a neighbour outside the overlay for IPv4
    /// routes; default our IPv4 address on the link to it.
    pub next_hop_v4: Option<std::net::Ipv4Addr>,
    /// The same for IPv6 routes; default our global IPv6 address on the
    /// link to it.
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    pub passive: bool,
    /// TCP-MD5 (RFC 2385) password for this neighbour (a site router:
    /// BIRD `password`, FRR `neighbor X password`); instead of the key
    /// derived for a gateway.
    pub password: Option<String>,
    /// A route reflector (a route server, RFC 7947: BIRD `rs client`, FRR
    /// `route-server-client`) that passes every gateway's paths on
    /// unchanged, all of them (ADD-PATH, RFC 7911, which routed asks it
    /// for). Each path is taken as its next hop's gateway's own: that
    /// gateway must be a neighbour here (usually with `session = false`),
    /// its certificate decides what it may announce and its tunnel whether
    /// its paths are used. Only what this gateway originates or learns
    /// outside the overlay is announced to a reflector.
    #[serde(default)]
    pub reflector: bool,
    /// `false`: no BGP session with this gateway; its paths come through
    /// the reflectors, and its tunnel (overlayd's probes) is its liveness.
    #[serde(default = "yes")]
    pub session: bool,
}

impl Neighbor {
    /// BFD's interval and multiplier for this neighbour under `bfd`.
    pub fn bfd_timing(&self, bfd: &Bfd) -> (Duration, u8) {
        (
            Duration::from_millis(self.bfd_interval_ms.unwrap_or(bfd.interval_ms)),
            self.bfd_multiplier.unwrap_or(bfd.multiplier),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    pub prefix: IpNet,
    /// What must answer for the prefix to be announced: an address (ICMP
    /// echo), `icmp://ADDR`, `tcp://ADDR:PORT` (a connection accepted) or
    /// `http://ADDR[:PORT]/PATH` (a GET answered 2xx, or `expect_status`).
    pub probe: Option<String>,
    /// Between probes (default 1000 ms).
    pub probe_interval_ms: Option<u64>,
    /// A probe not answered within this fails (default the interval, at
    /// most 1000 ms).
    pub probe_timeout_ms: Option<u64>,
    /// Passes in a row before the prefix is announced (default 2).
    pub rise: Option<u32>,
    /// Failures in a row before it is withdrawn (default 2).
    pub fall: Option<u32>,
    /// The HTTP status an `http://` probe expects (default any 2xx).
    pub expect_status: Option<u16>,
}

impl Announce {
    /// The probe, checked; `None` when the prefix is announced unprobed.
    pub fn probe(&self) -> Result<Option<crate::probe::Probe>, String> {
        let Some(text) = &self.probe else {
            return Ok(None);
        };
        let mut check: crate::probe::Check = text.parse().map_err(|e| format!("probe: {e}"))?;
        match (&mut check, self.expect_status) {
            (crate::probe::Check::Http { expect, .. }, Some(s)) => {
                if !(100..=599).contains(&s) {
                    return Err(format!("expect_status: {s} is not an HTTP status"));
                }
                *expect = Some(s);
            }
            (_, Some(_)) => return Err("expect_status: only for an http:// probe".into()),
            _ => {}
        }
        let interval = self.probe_interval_ms.unwrap_or(1000);
        if !(50..=3_600_000).contains(&interval) {
            return Err(format!(
                "probe_interval_ms: {interval} is outside 50-3600000"
            ));
        }
        let timeout = self.probe_timeout_ms.unwrap_or(interval.min(1000));
        if timeout == 0 || timeout > interval {
            return Err(format!(
                "probe_timeout_ms: {timeout} must be more than 0 and at most probe_interval_ms ({interval})"
            ));
        }
        let count = |key: &str, v: Option<u32>| -> Result<u32, String> {
            match v.unwrap_or(2) {
                n @ 1..=100 => Ok(n),
                n => Err(format!("{key}: {n} is outside 1-100")),
            }
        };
        Ok(Some(crate::probe::Probe {
            check,
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            rise: count("rise", self.rise)?,
            fall: count("fall", self.fall)?,
        }))
    }
}

fn yes() -> bool {
    true
}
fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_overlayd_socket() -> PathBuf {
    DEFAULT_OVERLAYD_SOCKET.into()
}
fn default_protocol() -> u8 {
    DEFAULT_ROUTE_PROTOCOL
}
fn default_interface() -> String {
    "cube0".into()
}
fn default_hold() -> u16 {
    9
}
fn default_keepalive() -> u16 {
    3
}
fn default_retry() -> u64 {
    5
}
fn default_drain() -> u64 {
    500
}
fn default_grace() -> u64 {
    10
}
fn default_bfd_interval() -> u64 {
    300
}
fn default_bfd_mult() -> u8 {
    3
}
fn default_penalty() -> f64 {
    1000.0
}
fn default_half_life() -> f64 {
    15.0
}
fn default_suppress() -> f64 {
    2000.0
}
fn default_reuse() -> f64 {
    750.0
}
fn default_max_suppress() -> f64 {
    60.0
}
fn default_stable_up() -> f64 {
    3.0
}
fn default_prefix_half_life() -> f64 {
    900.0
}
fn default_prefix_suppress() -> f64 {
    6000.0
}
fn default_prefix_max_suppress() -> f64 {
    3600.0
}
fn default_max_prefixes() -> usize {
    100_000
}

/// A config and what its certificates say, loaded and checked as
/// `routed check` and a start or reload do: the CA and our certificate are
/// valid now, ours is a gateway's, and each neighbour's names it. Errors
/// name the file and the key.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cfg: Config,
    pub certs: crate::router::Certified,
    /// The TCP-MD5 key of each neighbour address that has one.
    pub md5: std::collections::BTreeMap<IpAddr, Vec<u8>>,
}

impl Loaded {
    pub fn load(path: &Path) -> Result<Loaded, String> {
        let cfg = Config::load(path).map_err(|e| e.to_string())?;
        let file = path.display();
        let now = cubenet_certs::time::unix_now();
        let ca = cubenet_certs::load_ca_cert(&cfg.ca)
            .map_err(|e| format!("{file}: ca: {}: {e}", cfg.ca.display()))?;
        let trust = cubenet_certs::trust::TrustAnchor::new(ca, now)
            .map_err(|e| format!("{file}: ca: {}: {e}", cfg.ca.display()))?;
        let own = cubenet_certs::load_node_cert(&cfg.cert)
            .map_err(|e| format!("{file}: cert: {}: {e}", cfg.cert.display()))?;
        trust
            .validate(&own, now)
            .map_err(|e| format!("{file}: cert: {}: {e}", cfg.cert.display()))?;
        if own.role() != cubenet_certs::Role::Gateway {
            return Err(format!(
                "{file}: cert: {} is a {} certificate; routed runs on gateways",
                cfg.cert.display(),
                own.role()
            ));
        }
        let own_v6 = own.body.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        });
        let key = match &cfg.key {
            None => None,
            Some(k) => Some(
                cubenet_certs::NodeKey::load(k)
                    .map_err(|e| format!("{file}: key: {}: {e}", k.display()))?,
            ),
        };
        if let Some(k) = &key {
            if k.public() != *own.public_key() {
                return Err(format!(
                    "{file}: key: {} is not the key of cert {}",
                    cfg.key
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    cfg.cert.display()
                ));
            }
        }
        let mut md5 = std::collections::BTreeMap::new();
        let mut neighbor_subnets = Vec::new();
        for (i, n) in cfg.neighbors.iter().enumerate() {
            if let Some(pw) = &n.password {
                md5.insert(n.address, pw.as_bytes().to_vec());
            }
            let Some(p) = &n.cert else {
                neighbor_subnets.push(Vec::new());
                continue;
            };
            let c = cubenet_certs::load_node_cert(p)
                .map_err(|e| format!("{file}: neighbor[{i}].cert: {}: {e}", p.display()))?;
            trust
                .validate(&c, now)
                .map_err(|e| format!("{file}: neighbor[{i}].cert: {}: {e}", p.display()))?;
            if c.name() != n.name {
                return Err(format!(
                    "{file}: neighbor[{i}].cert: {} is the certificate of {:?}, not {:?}",
                    p.display(),
                    c.name(),
                    n.name
                ));
            }
            // What it may originate: its site's subnets, and its own
            // overlay addresses as host routes (nobody else may).
            let mut scope = c.body.subnets.clone();
            scope.extend(c.body.addresses.iter().map(|a| IpNet::from(a.addr())));
            neighbor_subnets.push(scope);
            if let (Some(k), None) = (&key, &n.password) {
                let secret = k.pair_secret(c.public_key(), "cubenet routed tcp-md5 v1");
                md5.insert(n.address, hex::encode(secret).into_bytes());
            }
        }
        Ok(Loaded {
            certs: crate::router::Certified {
                networks: trust.ca().body.networks.clone(),
                own_subnets: own.body.subnets.clone(),
                own_v6,
                neighbor_subnets,
            },
            cfg,
            md5,
        })
    }
}

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub msg: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.msg)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let e = |msg: String| ConfigError {
            file: file.clone(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|x| e(format!("reading: {x}")))?;
        Config::parse(&text).map_err(e)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config =
            toml::from_str(text).map_err(|x| cubenet_daemon::config::toml_error(text, &x))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(owner) = route_protocol_owner(self.route_protocol) {
            return Err(format!(
                "route_protocol: {} is the kernel's number for {owner}; routed removes every \
                 route of its protocol that it did not install, so take one nobody uses (201)",
                self.route_protocol
            ));
        }
        if self.asn == 0 || self.asn == 23456 {
            return Err(format!("asn: {} is reserved", self.asn));
        }
        if !(1..=4095).contains(&self.graceful_restart.restart_time_s) {
            return Err(format!(
                "graceful_restart.restart_time_s: {} is outside 1..=4095 (12 bits on the wire)",
                self.graceful_restart.restart_time_s
            ));
        }
        if self.graceful_restart.stale_time_s == 0 {
            return Err("graceful_restart.stale_time_s: must be at least 1".into());
        }
        if self.timers.hold_time_s != 0 && self.timers.hold_time_s < 3 {
            return Err("timers.hold_time_s: must be 0 or at least 3".into());
        }
        if self.timers.keepalive_s == 0 {
            return Err("timers.keepalive_s: must be at least 1".into());
        }
        if !(10..=60_000).contains(&self.bfd.interval_ms) {
            return Err(format!(
                "bfd.interval_ms: {} is outside 10-60000",
                self.bfd.interval_ms
            ));
        }
        if self.bfd.multiplier == 0 {
            return Err("bfd.multiplier: must be at least 1".into());
        }
        if self.timers.shutdown_drain_ms > 60_000 {
            return Err(format!(
                "timers.shutdown_drain_ms: {} is more than 60000",
                self.timers.shutdown_drain_ms
            ));
        }
        if self.timers.connect_retry_s > MAX_SECONDS as u64 {
            return Err(format!(
                "timers.connect_retry_s: {} is more than {MAX_SECONDS} s",
                self.timers.connect_retry_s
            ));
        }
        let d = &self.damping;
        // Durations in seconds: finite, and at most a day (a longer one is
        // a typo, and `inf` or 1e300 cannot be a duration at all).
        let secs = |key: &str, v: f64, zero_ok: bool| -> Result<(), String> {
            let low_ok = v > 0.0 || (zero_ok && v == 0.0);
            if v.is_finite() && low_ok && v <= MAX_SECONDS {
                return Ok(());
            }
            let low = if zero_ok { "0 or more" } else { "more than 0" };
            Err(format!(
                "damping.{key}: {v} must be {low} and at most {MAX_SECONDS} s"
            ))
        };
        secs("half_life_s", d.half_life_s, false)?;
        secs("max_suppress_s", d.max_suppress_s, false)?;
        secs("stable_up_s", d.stable_up_s, true)?;
        secs("prefix_half_life_s", d.prefix_half_life_s, false)?;
        secs("prefix_max_suppress_s", d.prefix_max_suppress_s, false)?;
        let positive = |key: &str, v: f64| -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("damping.{key}: {v} must be a number more than 0"))
            }
        };
        positive("penalty", d.penalty)?;
        positive("suppress", d.suppress)?;
        positive("prefix_suppress", d.prefix_suppress)?;
        positive("reuse", d.reuse)?;
        positive("prefix_reuse", d.prefix_reuse)?;
        if d.reuse >= d.suppress {
            return Err("damping.reuse: must be below damping.suppress".into());
        }
        if d.prefix_reuse >= d.prefix_suppress {
            return Err("damping.prefix_reuse: must be below damping.prefix_suppress".into());
        }
        for (i, a) in self.announce.iter().enumerate() {
            a.probe().map_err(|e| format!("announce[{i}].{e}"))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.neighbors.iter().enumerate() {
            if n.name.is_empty() {
                return Err(format!("neighbor[{i}].name: empty"));
            }
            if !names.insert(&n.name) {
                return Err(format!("neighbor[{i}].name: {:?} appears twice", n.name));
            }
            if n.bfd_interval_ms
                .is_some_and(|v| !(10..=60_000).contains(&v))
            {
                return Err(format!(
                    "neighbor[{i}].bfd_interval_ms: {} is outside 10-60000",
                    n.bfd_interval_ms.unwrap_or_default()
                ));
            }
            if n.bfd_multiplier == Some(0) {
                return Err(format!("neighbor[{i}].bfd_multiplier: must be at least 1"));
            }
            if n.password
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.len() > 80)
            {
                return Err(format!("neighbor[{i}].password: 1 to 80 bytes (TCP-MD5)"));
            }
            if n.asn == self.asn {
                return Err(format!(
                    "neighbor[{i}].asn: {} is our own AS; routed speaks eBGP only",
                    n.asn
                ));
            }
            match &n.import {
                None | Some(Import::List(_)) => {}
                Some(Import::Named(s)) if s == "none" || s == "overlay" => {}
                Some(Import::Named(s)) => {
                    return Err(format!(
                        "neighbor[{i}].import: {s:?}: expected \"none\", \"overlay\" or a list of prefixes"
                    ))
                }
            }
            match n.export.as_deref() {
                None | Some("none") | Some("all") => {}
                Some(s) => {
                    return Err(format!(
                        "neighbor[{i}].export: {s:?}: expected \"all\" or \"none\""
                    ))
                }
            }
            let overlay_import = matches!(&n.import, Some(Import::Named(s)) if s == "overlay");
            if n.reflector && (!overlay_import || n.cert.is_some() || !n.session) {
                return Err(format!(
                    "neighbor[{i}].reflector: a reflector needs import = \"overlay\", no cert and a session"
                ));
            }
            if !n.session && (n.cert.is_none() || !overlay_import) {
                return Err(format!(
                    "neighbor[{i}].session: only a gateway (a cert and import = \"overlay\") can do without a session: its paths come through the reflectors"
                ));
            }
        }
        if self.neighbors.iter().any(|n| !n.session) && !self.neighbors.iter().any(|n| n.reflector)
        {
            return Err(
                "neighbor: gateways with session = false but no reflector to learn their paths from"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn hold_time(&self) -> u16 {
        self.timers.hold_time_s
    }

    pub fn connect_retry(&self) -> Duration {
        Duration::from_secs(self.timers.connect_retry_s.max(1))
    }
}

/// Who owns a route protocol number in Linux (`/etc/iproute2/rt_protos`),
/// if anybody: routed must not take one of those.
pub fn route_protocol_owner(p: u8) -> Option<&'static str> {
    Some(match p {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel (connected routes)",
        3 => "boot (routes added at boot, the default route)",
        4 => "static (routes added by the administrator)",
        8 => "gated",
        9 => "ra (router advertisements)",
        10 => "mrt",
        11 => "zebra (FRR)",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        17 => "mrouted",
        18 => "keepalived",
        42 => "babel",
        99 => "openr",
        186 => "bgp (FRR)",
        187 => "isis (FRR)",
        188 => "ospf (FRR)",
        189 => "rip (FRR)",
        192 => "eigrp (FRR)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prop_assert;

    proptest::proptest! {
        /// Any text gives a config or an error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(t in "\\PC{0,300}") {
            let _ = Config::parse(&t);
        }

        /// A valid config with TOML-ish junk put anywhere: a config or an
        /// error, never a panic.
        #[test]
        fn mangled_configs_never_panic(cut in 0usize..600, junk in "[\\[\\]=\"a-z0-9._: \n-]{0,40}") {
            let base = "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"ca.crt\"\ncert = \"n.crt\"\n\
                [timers]\nhold_time_s = 9\n[bfd]\ninterval_ms = 300\n[damping]\nhalf_life_s = 15\n\
                [[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.50\"\n\
                [[neighbor]]\nname = \"bird\"\naddress = \"10.77.1.9\"\nasn = 65010\n\
                import = [\"192.168.0.0/16\"]\nexport = \"all\"\n";
            prop_assert!(Config::parse(base).is_ok(), "{:?}", Config::parse(base).err());
            let cut = cut.min(base.len());
            let t = format!("{}{}{}", &base[..cut], junk, &base[cut..]);
            let _ = Config::parse(&t);
        }
    }

    const MIN: &str =
        "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"ca.crt\"\ncert = \"n.crt\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.timers.hold_time_s, 9);
        assert!(c.bfd.enabled && c.damping.enabled);
        assert_eq!(c.bfd.interval_ms, 300);
    }

    /// Durations that cannot be durations (infinite, huge, negative) are
    /// refused by name instead of panicking where they are used.
    #[test]
    fn impossible_durations_are_refused_by_name() {
        for (extra, key) in [
            ("[damping]\nhalf_life_s = inf\n", "damping.half_life_s"),
            ("[damping]\nhalf_life_s = nan\n", "damping.half_life_s"),
            ("[damping]\nstable_up_s = 1e300\n", "damping.stable_up_s"),
            ("[damping]\nstable_up_s = -1.0\n", "damping.stable_up_s"),
            (
                "[damping]\nmax_suppress_s = 1e20\n",
                "damping.max_suppress_s",
            ),
            (
                "[damping]\nprefix_half_life_s = -5.0\n",
                "damping.prefix_half_life_s",
            ),
            (
                "[damping]\nprefix_max_suppress_s = inf\n",
                "damping.prefix_max_suppress_s",
            ),
            ("[damping]\nprefix_reuse = 1e9\n", "damping.prefix_reuse"),
            ("[damping]\npenalty = inf\n", "damping.penalty"),
            (
                "[timers]\nconnect_retry_s = 18446744073709551615\n",
                "timers.connect_retry_s",
            ),
        ] {
            let e = Config::parse(&format!("{MIN}{extra}")).unwrap_err();
            assert!(e.starts_with(key), "{extra:?}: {e}");
        }
        let c = Config::parse(&format!("{MIN}[damping]\nstable_up_s = 0.0\n")).unwrap();
        assert_eq!(c.damping.stable_up_s, 0.0);
    }

    /// Audit M11: a route protocol of the kernel or another daemon would
    /// make routed remove connected, boot, static or another daemon's
    /// routes as stale.
    #[test]
    fn route_protocols_of_others_are_refused() {
        for p in [0u8, 2, 3, 4, 12, 186] {
            let e = Config::parse(&format!("{MIN}route_protocol = {p}\n")).unwrap_err();
            assert!(e.starts_with("route_protocol:"), "{p}: {e}");
        }
        let c = Config::parse(&format!("{MIN}route_protocol = 77\n")).unwrap();
        assert_eq!(c.route_protocol, 77);
        assert_eq!(Config::parse(MIN).unwrap().route_protocol, 201);
    }

    #[test]
    fn errors_name_the_key() {
        for (extra, want) in [
            ("bogus = 1\n", "bogus"),
            ("[timers]\nhold_time_s = 2\n", "timers.hold_time_s"),
            ("[damping]\nreuse = 5000\n", "damping.reuse"),
            (
                "[[neighbor]]\nname = \"a\"\naddress = \"10.0.0.1\"\nasn = 4200000101\n",
                "neighbor[0].asn",
            ),
            (
                "[[neighbor]]\nname = \"a\"\naddress = \"10.0.0.1\"\nasn = 5\nimport = \"some\"\n",
                "neighbor[0].import",
            ),
            (
                "[[neighbor]]\nname = \"a\"\naddress = \"not an ip\"\nasn = 5\n",
                "line",
            ),
            (
                "[[neighbor]]\nname = \"rr\"\naddress = \"10.0.0.1\"\nasn = 5\nreflector = true\nimport = \"all\"\n",
                "neighbor[0].import",
            ),
            (
                "[[neighbor]]\nname = \"rr\"\naddress = \"10.0.0.1\"\nasn = 5\nreflector = true\nimport = [\"10.0.0.0/8\"]\n",
                "neighbor[0].reflector",
            ),
            (
                "[[neighbor]]\nname = \"gw\"\naddress = \"10.0.0.1\"\nasn = 5\nsession = false\nimport = \"overlay\"\n",
                "neighbor[0].session",
            ),
            (
                "[[neighbor]]\nname = \"gw\"\naddress = \"10.0.0.1\"\nasn = 5\ncert = \"g.crt\"\nsession = false\nimport = \"overlay\"\n",
                "no reflector",
            ),
            (
                "[[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"tcp://10.77.1.5\"\n",
                "announce[0].probe: \"10.77.1.5\": expected an IP address and :port",
            ),
            (
                "[[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.5\"\nprobe_interval_ms = 500\nprobe_timeout_ms = 600\n",
                "announce[0].probe_timeout_ms",
            ),
            (
                "[[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.5\"\nexpect_status = 200\n",
                "announce[0].expect_status: only for an http:// probe",
            ),
            (
                "[[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.5\"\nfall = 0\n",
                "announce[0].fall",
            ),
        ] {
            let e = Config::parse(&format!("{MIN}{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn import_lists_parse() {
        let c = Config::parse(&format!(
            "{MIN}[[neighbor]]\nname = \"bird\"\naddress = \"10.77.1.9\"\nasn = 65010\nimport = [\"192.168.0.0/16\"]\nexport = \"all\"\n"
        ))
        .unwrap();
        assert!(matches!(c.neighbors[0].import, Some(Import::List(ref l)) if l.len() == 1));
    }
}
