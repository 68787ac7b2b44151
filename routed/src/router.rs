//! The route daemon's brain, sans IO: every neighbour's BGP session, BFD
//! session and damping state, the Adj-RIBs and the Loc-RIB. The tokio driver
//! feeds it connection events, messages, BFD packets, overlayd events and
//! the clock, and carries out the [`Out`]s it queues.
//!
//! A neighbour's [`NeighborId`] is its place in `neighbors` and never
//! changes: a reload appends the neighbours it adds (and a new entry for
//! each one it resets), and a removed neighbour's entry stays behind,
//! stopped and out of `order`, so a connection or a timer of the driver
//! still naming it reaches a stopped session and nobody else. Each such
//! entry is a few hundred bytes, once per neighbour removed or reset.

use crate::bfd;
use crate::config::{Config, Import};
use crate::damping;
use crate::rib::{NeighborId, Path, Rib, Source, LOCAL};
use crate::session::{Action, ConnId, Session, SessionConfig};
use crate::wire::{self, Attrs, DecodeError, Message, Notification, Update};
use cubenet_api::routed as api;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A site prefix this gateway announces, and its probe.
#[derive(Debug, Clone)]
struct Site {
    probe: Option<crate::probe::Probe>,
    health: crate::probe::Health,
    /// Why the last probe failed.
    last_error: Option<String>,
}

impl Site {
    /// The site prefix of `announce[index]`. An entry whose probe settings
    /// did not change keeps its state; one whose probe changed keeps its
    /// verdict (announced or not) until the new probe's `rise` passes or
    /// `fall` failures say otherwise.
    fn new(
        index: usize,
        a: &crate::config::Announce,
        old: Option<&Site>,
    ) -> Result<Site, RouterError> {
        let probe = a
            .probe()
            .map_err(|error| RouterError::Probe { index, error })?;
        if let Some(old) = old.filter(|o| o.probe == probe) {
            return Ok(old.clone());
        }
        let mut health = crate::probe::Health::new(
            probe.as_ref().map_or(1, |p| p.rise),
            probe.as_ref().map_or(1, |p| p.fall),
        );
        if old.is_some_and(Site::announced) {
            health.set_up();
        }
        Ok(Site {
            probe,
            health,
            last_error: None,
        })
    }

    fn announced(&self) -> bool {
        self.probe.is_none() || self.health.up()
    }
}
/// Once every neighbour is up this long, routed owns overlayd's table even
/// without End-of-RIB markers.
const SETTLE: Duration = Duration::from_secs(2);
const HISTORY: usize = 16;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Connect {
        n: NeighborId,
    },
    Send {
        n: NeighborId,
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Close {
        n: NeighborId,
        conn: ConnId,
    },
    Bfd {
        n: NeighborId,
        bytes: [u8; 24],
    },
    /// The best routes changed: reprogram overlayd and the kernel.
    TablesChanged,
}

impl std::ops::Index<NeighborId> for Vec<Neighbor> {
    type Output = Neighbor;
    fn index(&self, n: NeighborId) -> &Neighbor {
        &self[n.0]
    }
}

impl std::ops::IndexMut<NeighborId> for Vec<Neighbor> {
    fn index_mut(&mut self, n: NeighborId) -> &mut Neighbor {
        &mut self[n.0]
    }
}

/// Why a router cannot be built from a config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouterError {
    #[error("announce[{index}].prefix: {prefix} is not among the subnets this gateway's cert allows ({allowed})")]
    AnnounceNotAllowed {
        index: usize,
        prefix: IpNet,
        allowed: String,
    },
    #[error("damping: {0}")]
    Damping(damping::ConfigError),
    #[error("damping (per prefix): {0}")]
    PrefixDamping(damping::ConfigError),
    #[error("announce[{index}].{error}")]
    Probe { index: usize, error: String },
}

/// What the certificates tell a router beside its config: the CA's
/// networks, our own certificate's subnets and IPv6 address, and the
/// subnets of each configured neighbour's certificate with its own
/// addresses as host prefixes (in config order; none for a neighbour
/// without one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Certified {
    pub networks: Vec<IpNet>,
    pub own_subnets: Vec<IpNet>,
    pub own_v6: Option<Ipv6Addr>,
    pub neighbor_subnets: Vec<Vec<IpNet>>,
}

/// Why a reload is refused; the running configuration stays as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReloadError {
    /// A setting that only a restart applies (sockets bound at start, the
    /// identity the neighbours know us by, damping state kept per link).
    #[error(
        "{key}: cannot change while routed runs (was {was}, now {now}); restart routed to apply it"
    )]
    Fixed {
        key: &'static str,
        was: String,
        now: String,
    },
    #[error(transparent)]
    Invalid(#[from] RouterError),
    #[error("routed is stopping")]
    Stopping,
}

/// How a configured neighbour differs from the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NeighborChange {
    /// Only its export policy: applied on the running session.
    Export,
    /// Something the session was built with: these keys.
    Reset(Vec<&'static str>),
}

/// Why an announced prefix is not imported (counted, logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("our AS is in the path (loop)")]
    Loop,
    #[error("AS_PATH does not start with the neighbour's AS {0}")]
    FirstAs(u32),
    #[error("no import policy (RFC 8212)")]
    NoImportPolicy,
    #[error("import policy none")]
    ImportNone,
    #[error("not a host route of the overlay, nor a subnet {0}'s cert allows")]
    NotAllowedFor(String),
    #[error("not a host route of the overlay, and no gateway with a known cert announced it")]
    NoKnownAnnouncer,
    #[error("a host route of the overlay that no gateway with a known cert brought into it")]
    HostWithoutGateway,
    #[error("the address of {0}, originated by another AS")]
    NotTheOwner(String),
    #[error("one of our own addresses")]
    OwnAddress,
    #[error("outside the neighbour's import list")]
    OutsideImportList,
    /// RFC 7606.
    #[error("{0}")]
    TreatAsWithdraw(String),
}

#[derive(Debug, Clone)]
pub struct Flap {
    pub at_unix: u64,
    pub up: bool,
    pub reason: String,
}

pub struct Neighbor {
    pub cfg: crate::config::Neighbor,
    pub session: Session,
    pub bfd: Option<bfd::Session>,
    bfd_up: bool,
    /// Why BFD packets to it cannot be sent (no socket of its family, no
    /// route), until one is sent again.
    bfd_error: Option<String>,
    pub link: Option<damping::Link>,
    pub adj_in: BTreeMap<IpNet, Arc<Attrs>>,
    pub adj_out: BTreeMap<IpNet, Attrs>,
    /// Its paths are in the Loc-RIB (established, not damped).
    in_rib: bool,
    eor: bool,
    /// What its certificate allows it to originate: its subnets, and its
    /// own addresses as host prefixes.
    cert_subnets: Vec<IpNet>,
    /// Per-prefix damping state (when on), and the prefixes it holds out.
    prefix_links: BTreeMap<IpNet, damping::Link>,
    held: BTreeSet<IpNet>,
    /// Our address on the established session: the next hop we announce
    /// to a neighbour outside the overlay.
    local_addr: Option<IpAddr>,
    /// Our addresses on the link to it (a neighbour outside the overlay):
    /// the next hops of each family it can use.
    link_addrs: crate::sockets::LinkAddrs,
    /// The neighbour speaks over the overlay (a gateway), not a LAN.
    pub overlay: bool,
    /// What overlayd last said of the tunnel to this gateway (its probes),
    /// when it said anything: routed's liveness check of a gateway
    /// neighbour without BFD.
    tunnel_up: Option<bool>,
    pub flaps: u64,
    pub history: VecDeque<Flap>,
    pub rejected: u64,
    pub treat_as_withdraw: u64,
    /// When a ROUTE-REFRESH was last served, per family (IPv4, IPv6), and
    /// whether one waits for [`REFRESH_EVERY`] to pass.
    refreshed_at: [Option<Instant>; 2],
    refresh_due: [bool; 2],
    /// Graceful restart helper (RFC 4724 §4.2): the paths it had when its
    /// session ended the way a restart does, kept until it sends them
    /// again and its End-of-RIB of their family, or until `stale_until`.
    stale: BTreeSet<IpNet>,
    stale_until: Option<Instant>,
    /// A reflector's paths, by path identifier and prefix: the gateway
    /// (its next hop) each was taken as coming from.
    reflected: HashMap<(u32, IpNet), NeighborId>,
    /// A gateway without a session: the reflectors that hold each of its
    /// paths, with the identifier each gave it. A path goes when the last
    /// of them withdraws it.
    held_by: BTreeMap<IpNet, Vec<(NeighborId, u32)>>,
}

/// A neighbour's ROUTE-REFRESH is served at most this often per family: a
/// 23-byte message costs a whole table's export, so one sent in a loop is
/// served once per interval (the last of a burst when the interval is
/// over), not once per message.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

pub struct Router {
    pub cfg: Config,
    /// Live neighbours in config order (removed and replaced ones are
    /// not in it).
    order: Vec<NeighborId>,
    seed: u64,
    link_damping: damping::Config,
    prefix_damping: Option<damping::Config>,
    networks: Vec<IpNet>,
    own_subnets: Vec<IpNet>,
    next_hop_v6: Option<Ipv6Addr>,
    pub neighbors: Vec<Neighbor>,
    rib: Rib,
    /// Host routes of nodes attached to our overlayd.
    attached: BTreeSet<IpNet>,
    /// Site prefixes and their probes.
    site: BTreeMap<IpNet, Site>,
    /// Shut down: sessions stay down.
    stopping: bool,
    /// About to stop: what we announce carries GRACEFUL_SHUTDOWN.
    draining: bool,
    dirty: BTreeSet<IpNet>,
    out: Vec<Out>,
    started: Instant,
    fib_ready: bool,
    /// This process began with a graceful restart: until `fib_ready` its
    /// OPENs say so (R, F) and its End-of-RIBs wait (RFC 4724 §4.1), owed
    /// to these neighbours.
    restarting: bool,
    eor_owed: BTreeSet<NeighborId>,
}

/// The graceful restart capability we send (RFC 4724 §3), if it is on:
/// both families with forwarding kept (F) in every OPEN — routed's
/// forwarding state lives in overlayd and the kernel, which keep it while
/// routed restarts, so the gateway forwards throughout; restarting (R)
/// when this process began with a graceful restart. A helper may go by
/// the F bits of the OPEN before the restart: FRR keeps a neighbour's
/// routes across its restart only for the families that OPEN marked.
fn graceful_restart_cap(cfg: &Config, restarted: bool) -> Option<wire::GracefulRestart> {
    cfg.graceful_restart
        .enabled
        .then_some(wire::GracefulRestart {
            restarting: restarted,
            time_s: cfg.graceful_restart.restart_time_s,
            ipv4: Some(true),
            ipv6: Some(true),
        })
}

fn contains(nets: &[IpNet], p: &IpNet) -> bool {
    nets.iter().any(|n| n.contains(p))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A well-mixed 64-bit value of `seed` and `n` (splitmix64's finaliser).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Every announced prefix must be one our certificate allows.
fn check_announce(cfg: &Config, own_subnets: &[IpNet]) -> Result<(), RouterError> {
    for (i, a) in cfg.announce.iter().enumerate() {
        if !contains(own_subnets, &a.prefix) {
            return Err(RouterError::AnnounceNotAllowed {
                index: i,
                prefix: a.prefix,
                allowed: own_subnets
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// Link damping, and per-prefix damping when it is on, checked.
fn damping_of(
    d: &crate::config::Damping,
) -> Result<(damping::Config, Option<damping::Config>), RouterError> {
    let link = damping::Config {
        penalty_per_flap: d.penalty,
        half_life: Duration::from_secs_f64(d.half_life_s),
        suppress_threshold: d.suppress,
        reuse_threshold: d.reuse,
        max_suppress: Duration::from_secs_f64(d.max_suppress_s),
        stable_up: Duration::from_secs_f64(d.stable_up_s),
    };
    link.validate().map_err(RouterError::Damping)?;
    let prefix = if d.per_prefix {
        let c = damping::Config {
            penalty_per_flap: d.penalty,
            half_life: Duration::from_secs_f64(d.prefix_half_life_s),
            suppress_threshold: d.prefix_suppress,
            reuse_threshold: d.prefix_reuse,
            max_suppress: Duration::from_secs_f64(d.prefix_max_suppress_s),
            stable_up: Duration::ZERO,
        };
        c.validate().map_err(RouterError::PrefixDamping)?;
        Some(c)
    } else {
        None
    };
    Ok((link, prefix))
}

impl Neighbor {
    /// A neighbour whose session starts now. Its BFD discriminator and
    /// jitter come from `seed` and its id, so no two entries share one.
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &Config,
        link_damping: damping::Config,
        networks: &[IpNet],
        seed: u64,
        id: NeighborId,
        n: &crate::config::Neighbor,
        cert_subnets: Vec<IpNet>,
        now: Instant,
    ) -> Neighbor {
        let i = id.0 as u64;
        let mut session = Session::new(SessionConfig {
            local_asn: cfg.asn,
            router_id: cfg.router_id,
            peer_asn: n.asn,
            hold_time: cfg.hold_time(),
            keepalive: cfg.timers.keepalive_s,
            connect_retry: cfg.connect_retry(),
            passive: n.passive,
            graceful_restart: graceful_restart_cap(cfg, false),
            add_path_receive: n.reflector,
        });
        if n.session {
            session.start(now);
        }
        let overlay = contains(networks, &IpNet::from(n.address));
        let bfd = Neighbor::bfd_on(n, cfg, overlay).then(|| {
            let (interval, detect_mult) = n.bfd_timing(&cfg.bfd);
            bfd::Session::new(
                bfd::Config {
                    desired_min_tx: interval,
                    required_min_rx: interval,
                    detect_mult,
                    ..bfd::Config::default()
                },
                mix(seed, 2 * i) as u32,
                mix(seed, 2 * i + 1),
                now,
            )
        });
        let link = cfg
            .damping
            .enabled
            .then(|| damping::Link::new(link_damping, now));
        Neighbor {
            cfg: n.clone(),
            session,
            bfd,
            bfd_up: false,
            bfd_error: None,
            link,
            adj_in: BTreeMap::new(),
            adj_out: BTreeMap::new(),
            in_rib: false,
            eor: false,
            cert_subnets,
            prefix_links: BTreeMap::new(),
            held: BTreeSet::new(),
            local_addr: None,
            link_addrs: Default::default(),
            overlay,
            tunnel_up: None,
            flaps: 0,
            history: VecDeque::new(),
            rejected: 0,
            treat_as_withdraw: 0,
            refreshed_at: [None; 2],
            refresh_due: [false; 2],
            stale: BTreeSet::new(),
            stale_until: None,
            reflected: HashMap::new(),
            held_by: BTreeMap::new(),
        }
    }

    /// Whether BFD runs with this neighbour under `cfg`: by default with
    /// one outside the overlay only (a gateway's tunnel is overlayd's to
    /// watch).
    fn bfd_on(n: &crate::config::Neighbor, cfg: &Config, overlay: bool) -> bool {
        cfg.bfd.enabled && n.bfd.unwrap_or(!overlay && !n.reflector)
    }
}

impl Router {
    /// `networks`: the CA's; `own_subnets` and `own_v6` from our cert;
    /// `cert_subnets[i]`: what neighbour i's cert allows. `seed` picks the
    /// BFD discriminators and jitter: random in the daemon (a forger must
    /// not guess them), fixed in simulations.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        networks: Vec<IpNet>,
        own_subnets: Vec<IpNet>,
        own_v6: Option<Ipv6Addr>,
        cert_subnets: Vec<Vec<IpNet>>,
        now: Instant,
        seed: u64,
    ) -> Result<Router, RouterError> {
        check_announce(&cfg, &own_subnets)?;
        let (link_damping, prefix_damping) = damping_of(&cfg.damping)?;
        let mut neighbors = Vec::new();
        for (i, n) in cfg.neighbors.iter().enumerate() {
            let subnets = cert_subnets.get(i).cloned().unwrap_or_default();
            neighbors.push(Neighbor::new(
                &cfg,
                link_damping,
                &networks,
                seed,
                NeighborId(i),
                n,
                subnets,
                now,
            ));
        }
        let mut site = BTreeMap::new();
        for (index, a) in cfg.announce.iter().enumerate() {
            site.insert(a.prefix, Site::new(index, a, None)?);
        }
        let mut r = Router {
            cfg,
            order: (0..neighbors.len()).map(NeighborId).collect(),
            seed,
            link_damping,
            prefix_damping,
            networks,
            own_subnets,
            next_hop_v6: own_v6,
            neighbors,
            rib: Rib::default(),
            attached: BTreeSet::new(),
            site,
            stopping: false,
            draining: false,
            dirty: BTreeSet::new(),
            out: Vec::new(),
            started: now,
            fib_ready: false,
            restarting: false,
            eor_owed: BTreeSet::new(),
        };
        r.refresh_site(now);
        Ok(r)
    }

    /// Takes the queued outputs.
    pub fn drain(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// The configured neighbour at this address.
    pub fn neighbor_by_addr(&self, a: IpAddr) -> Option<NeighborId> {
        self.neighbor_ids()
            .find(|n| self.neighbors[*n].cfg.address == a)
    }

    /// The addresses routed serves BGP and BFD on, as far as the router
    /// knows them: its overlay addresses, and the address of every
    /// neighbour outside the overlay (the driver finds its own address on
    /// the link to each).
    pub fn served(&self) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let mut own = vec![IpAddr::V4(self.cfg.router_id)];
        own.extend(self.next_hop_v6.map(IpAddr::V6));
        // Not a reflector's: routed connects to it, and never listens on
        // the underlay.
        let lan = self
            .live()
            .filter(|n| !n.overlay && !n.cfg.reflector)
            .map(|n| n.cfg.address)
            .collect();
        (own, lan)
    }

    /// Whether BFD with the neighbour at `a` runs on the multihop port
    /// (`bfd_multihop`); false for an unknown address.
    pub fn bfd_multihop(&self, a: IpAddr) -> bool {
        self.neighbor_by_addr(a)
            .is_some_and(|n| self.neighbors[n].cfg.bfd_multihop)
    }

    /// Whether every configured neighbour runs GTSM (`ttl_security`).
    pub fn neighbors_all_ttl_security(&self) -> bool {
        self.live().all(|n| n.cfg.ttl_security)
    }

    /// Every configured neighbour, in config order.
    pub fn neighbor_ids(&self) -> std::vec::IntoIter<NeighborId> {
        self.order.clone().into_iter()
    }

    fn live(&self) -> impl Iterator<Item = &Neighbor> + '_ {
        self.order.iter().map(|n| &self.neighbors[*n])
    }

    /// The neighbour a path came from (none for a local path).
    fn neighbor_of(&self, s: Source) -> Option<&Neighbor> {
        match s {
            Source::Neighbor(n) => Some(&self.neighbors[n]),
            Source::Local => None,
        }
    }

    // ---- BGP transport events ----

    /// A TCP connection to neighbour `n` is up; `local` is our address on it.
    /// Our addresses on the link a connection to `n` runs over (the
    /// driver reads them from the interface of the connection's own
    /// address); routes are exported again with the next hops they give.
    pub fn set_link(&mut self, n: NeighborId, link: crate::sockets::LinkAddrs, now: Instant) {
        if self.neighbors[n].link_addrs == link {
            return;
        }
        self.neighbors[n].link_addrs = link;
        let all: Vec<IpNet> = self.rib.iter_best().map(|(p, _)| *p).collect();
        self.export_prefixes(n, &all);
        self.finish(now);
    }

    pub fn on_connected(
        &mut self,
        n: NeighborId,
        conn: ConnId,
        outbound: bool,
        local: Option<IpAddr>,
        now: Instant,
    ) {
        if local.is_some() {
            self.neighbors[n].local_addr = local;
        }
        let acts = self.neighbors[n].session.on_connected(conn, outbound, now);
        self.apply(n, acts, now);
        self.finish(now);
    }

    pub fn on_connect_failed(&mut self, n: NeighborId, why: &str, now: Instant) {
        self.neighbors[n].session.on_connect_failed(why, now);
    }

    /// The driver dropped a connection that stopped reading what it was
    /// sent: the session ends, and is no graceful restart.
    pub fn on_dropped(&mut self, n: NeighborId, conn: ConnId, why: &str, now: Instant) {
        let acts = self.neighbors[n].session.on_dropped(conn, why, now);
        self.apply(n, acts, now);
        self.finish(now);
    }

    pub fn on_closed(&mut self, n: NeighborId, conn: ConnId, why: &str, now: Instant) {
        let acts = self.neighbors[n].session.on_closed(conn, why, now);
        self.apply(n, acts, now);
        self.finish(now);
    }

    /// Decodes a message from neighbour `n`'s connection: with path
    /// identifiers where its session negotiated ADD-PATH.
    pub fn decode_from(&self, n: NeighborId, msg: &[u8]) -> Result<Message, DecodeError> {
        wire::decode_with(msg, self.neighbors[n].session.add_path_rx())
    }

    pub fn on_message(
        &mut self,
        n: NeighborId,
        conn: ConnId,
        m: Result<Message, DecodeError>,
        now: Instant,
    ) {
        let acts = match m {
            Ok(m) => self.neighbors[n].session.on_message(conn, m, now),
            Err(e) => self.neighbors[n].session.on_decode_error(conn, &e, now),
        };
        self.apply(n, acts, now);
        self.finish(now);
    }

    // ---- BFD ----

    /// A BFD packet from `from` that arrived with TTL (hop limit) `ttl`,
    /// through the overlay interface or not (`None`: unknown). Anything but
    /// 255 was sent from farther than the link (RFC 5881 §5); a gateway's
    /// packet that did not come through the overlay was forged (a machine
    /// on the site LAN writing a gateway's overlay address). Those are only
    /// counted. (A LAN neighbour's may come on any interface: a test bed
    /// may route the overlay onto its LAN.)
    pub fn on_bfd_datagram(
        &mut self,
        from: IpAddr,
        ttl: Option<u8>,
        via_overlay: Option<bool>,
        bytes: &[u8],
        now: Instant,
    ) {
        let right_way = self
            .neighbor_by_addr(from)
            .is_some_and(|n| !self.neighbors[n].overlay || via_overlay == Some(true));
        if ttl == Some(255) && right_way {
            return self.on_bfd_packet(from, bytes, now);
        }
        if let Some(b) = self
            .neighbor_by_addr(from)
            .and_then(|n| self.neighbors[n].bfd.as_mut())
        {
            b.discard();
        }
    }

    pub fn on_bfd_packet(&mut self, from: IpAddr, bytes: &[u8], now: Instant) {
        let Ok(pkt) = bfd::ControlPacket::decode(bytes) else {
            return;
        };
        let Some(n) = self.neighbor_by_addr(from) else {
            return;
        };
        let Some(b) = self.neighbors[n].bfd.as_mut() else {
            return;
        };
        let t = b.on_packet(&pkt, now);
        self.bfd_transition(n, t, now);
        self.poll_bfd(n, now);
        self.finish(now);
    }

    /// What became of a BFD packet the driver sent to `n`: an error is
    /// logged at warn once (until it changes or a send succeeds) and shown
    /// as the neighbour's `last_error`; a BFD session that cannot send
    /// never comes up, and otherwise only debug logs would say why.
    pub fn on_bfd_sent(&mut self, n: NeighborId, result: Result<(), String>) {
        let Some(nb) = self.neighbors.get_mut(n.0) else {
            return;
        };
        match result {
            Ok(()) => {
                if nb.bfd_error.take().is_some() {
                    tracing::info!(neighbor = %nb.cfg.name, "BFD packets are sent again");
                }
            }
            Err(e) => {
                if nb.bfd_error.as_ref() != Some(&e) {
                    tracing::warn!(neighbor = %nb.cfg.name, address = %nb.cfg.address, "BFD cannot run: {e}");
                    nb.bfd_error = Some(e);
                }
            }
        }
    }

    fn poll_bfd(&mut self, n: NeighborId, now: Instant) {
        loop {
            let Some(b) = self.neighbors[n].bfd.as_mut() else {
                return;
            };
            let o = b.poll(now);
            if let Some(bytes) = o.transmit {
                self.out.push(Out::Bfd { n, bytes });
            }
            if o.transition.is_none() {
                return;
            }
            self.bfd_transition(n, o.transition, now);
        }
    }

    fn bfd_transition(&mut self, n: NeighborId, t: Option<bfd::Transition>, now: Instant) {
        match t {
            Some(bfd::Transition::Up) => {
                self.neighbors[n].bfd_up = true;
                self.neighbors[n].session.kick(now);
                tracing::info!(neighbor = %self.neighbors[n].cfg.name, "BFD up");
            }
            Some(bfd::Transition::Down(diag)) => {
                self.neighbors[n].bfd_up = false;
                tracing::warn!(neighbor = %self.neighbors[n].cfg.name, "BFD down: {diag:?}");
                // RFC 5882: the session goes down at once, no NOTIFICATION.
                if self.neighbors[n].session.is_established() {
                    let acts = self.neighbors[n].session.reset("BFD down", None, now);
                    self.apply(n, acts, now);
                }
            }
            None => {}
        }
    }

    // ---- overlayd events ----

    /// overlayd says the tunnel to gateway `name` is up or down (its
    /// probes). For an overlay neighbour of that name without BFD of its
    /// own this is its liveness check: down takes an established session
    /// down at once, as BFD down would (RFC 5882: no NOTIFICATION, the
    /// tunnel would not carry it); up lets the session connect at once.
    pub fn tunnel(&mut self, name: &str, up: bool, now: Instant) {
        self.tunnel_state(name, up, now);
        self.finish(now);
    }

    /// overlayd's gateway tunnels as a whole (when routed subscribes, and
    /// after events were lost): each as [`Router::tunnel`].
    pub fn set_tunnels(&mut self, tunnels: &[(String, bool)], now: Instant) {
        for (name, up) in tunnels {
            self.tunnel_state(name, *up, now);
        }
        self.finish(now);
    }

    fn tunnel_state(&mut self, name: &str, up: bool, now: Instant) {
        let Some(n) = self
            .order
            .iter()
            .copied()
            .find(|&n| self.neighbors[n].overlay && self.neighbors[n].cfg.name == name)
        else {
            return;
        };
        let nb = &mut self.neighbors[n];
        let was = nb.tunnel_up.replace(up);
        if nb.bfd.is_some() || was == Some(up) {
            return;
        }
        if !nb.cfg.session {
            // Its tunnel is all there is of it: its paths (through the
            // reflectors) are used while the tunnel is up, and each down
            // is a flap for damping.
            if up {
                if let Some(l) = nb.link.as_mut() {
                    l.on_up(now);
                }
                self.record(n, true, "overlay tunnel up");
            } else if was == Some(true) {
                tracing::warn!(neighbor = %nb.cfg.name, "overlay tunnel down");
                nb.flaps += 1;
                if let Some(l) = nb.link.as_mut() {
                    l.on_down(now);
                }
                self.record(n, false, "overlay tunnel down");
            }
            self.update_rib_membership(n, now);
            return;
        }
        if up {
            // Back after a down: connect now. The first word (when routed
            // subscribes) changes nothing: the session is already starting,
            // and a second attempt beside it would collide with it.
            if was == Some(false) {
                tracing::info!(neighbor = %nb.cfg.name, "overlay tunnel up");
                nb.session.kick(now);
            }
        } else {
            tracing::warn!(neighbor = %nb.cfg.name, "overlay tunnel down");
            if nb.session.is_established() {
                let acts = nb.session.reset("overlay tunnel down", None, now);
                self.apply(n, acts, now);
            }
        }
    }

    /// A node attached to our overlayd: its host routes are ours to announce.
    pub fn attach(&mut self, addrs: &[IpAddr], now: Instant) {
        for a in addrs {
            let p = IpNet::from(*a);
            if !contains(&self.networks, &p) {
                continue;
            }
            if self.attached.insert(p) {
                self.originate(p, now);
            }
        }
        self.finish(now);
    }

    pub fn detach(&mut self, addrs: &[IpAddr], now: Instant) {
        for a in addrs {
            let p = IpNet::from(*a);
            if self.attached.remove(&p)
                && !self.site_announced(&p)
                && self.rib.remove(p, LOCAL, now)
            {
                self.dirty.insert(p);
            }
        }
        self.finish(now);
    }

    /// Replaces the attached set (after reconnecting to overlayd).
    pub fn set_attached(&mut self, addrs: &[IpAddr], now: Instant) {
        let want: BTreeSet<IpNet> = addrs
            .iter()
            .map(|a| IpNet::from(*a))
            .filter(|p| contains(&self.networks, p))
            .collect();
        let gone: Vec<IpNet> = self.attached.difference(&want).copied().collect();
        let gone_addrs: Vec<IpAddr> = gone.iter().map(|p| p.addr()).collect();
        self.detach(&gone_addrs, now);
        let new: Vec<IpAddr> = want.difference(&self.attached).map(|p| p.addr()).collect();
        self.attach(&new, now);
    }

    fn originate(&mut self, p: IpNet, now: Instant) {
        let attrs = Attrs {
            origin: 0,
            ..Attrs::default()
        };
        if self.rib.upsert(
            p,
            Path {
                source: LOCAL,
                attrs: Arc::new(attrs),
            },
            now,
        ) {
            self.dirty.insert(p);
        }
    }

    fn site_announced(&self, p: &IpNet) -> bool {
        self.site.get(p).is_some_and(Site::announced)
    }

    /// The result of one health probe of a site prefix: announced after
    /// `rise` passes in a row, withdrawn after `fall` failures in a row.
    pub fn probe_result(&mut self, prefix: IpNet, result: Result<(), String>, now: Instant) {
        if let Some(site) = self.site.get_mut(&prefix) {
            let ok = result.is_ok();
            if let Err(e) = result {
                site.last_error = Some(e);
            }
            match site.health.result(ok) {
                Some(false) => tracing::warn!(
                    %prefix,
                    error = site.last_error.as_deref().unwrap_or(""),
                    "site prefix probe failing: withdrawing"
                ),
                Some(true) => tracing::info!(%prefix, "site prefix probe passes: announcing"),
                None => {}
            }
        }
        self.refresh_site(now);
        self.finish(now);
    }

    fn refresh_site(&mut self, now: Instant) {
        let entries: Vec<(IpNet, bool)> =
            self.site.iter().map(|(p, s)| (*p, s.announced())).collect();
        for (p, ok) in entries {
            let have = self.rib.candidates(&p).iter().any(|c| c.source == LOCAL);
            if ok && !have {
                self.originate(p, now);
            } else if !ok && have && !self.attached.contains(&p) && self.rib.remove(p, LOCAL, now) {
                self.dirty.insert(p);
            }
        }
    }

    /// The probed site prefixes and their probes.
    pub fn probes(&self) -> Vec<(IpNet, crate::probe::Probe)> {
        self.site
            .iter()
            .filter_map(|(p, s)| s.probe.clone().map(|pr| (*p, pr)))
            .collect()
    }

    // ---- reload ----

    /// Applies a reloaded config, or refuses it whole and changes nothing.
    ///
    /// Neighbours are matched by name. An added one starts; a removed one
    /// hears a Cease "peer de-configured" (RFC 4486 subcode 3) and its
    /// routes go. One whose session was built with something that changed
    /// (address, AS, passive, import policy, cert or the subnets its cert
    /// allows, its BFD flag, the global `[timers]`, or the global `[bfd]`
    /// when BFD runs with it) is reset: a Cease "other configuration
    /// change" (subcode 6) and a new session. An export policy change is
    /// applied on the running session (what it now allows is announced,
    /// the rest withdrawn). Every other neighbour, its BGP and BFD
    /// sessions and its routes, is untouched. `[[announce]]` entries
    /// follow: new prefixes are announced (a probed one once its probe
    /// passes), removed ones withdrawn. `limits` and
    /// `timers.startup_grace_s` apply at once. What only a restart can
    /// change is refused by key: see [`Router::check_fixed`].
    pub fn reconfigure(
        &mut self,
        cfg: Config,
        certs: Certified,
        now: Instant,
    ) -> Result<api::Reloaded, ReloadError> {
        if self.stopping {
            return Err(ReloadError::Stopping);
        }
        self.check_fixed(&cfg, &certs)?;
        check_announce(&cfg, &certs.own_subnets)?;
        let mut site = BTreeMap::new();
        for (index, a) in cfg.announce.iter().enumerate() {
            site.insert(a.prefix, Site::new(index, a, self.site.get(&a.prefix))?);
        }
        // Checked: from here on nothing fails.
        let mut report = api::Reloaded::default();
        let old = std::mem::replace(&mut self.cfg, cfg);
        let mut order = Vec::new();
        let mut kept = BTreeSet::new();
        let wanted = self.cfg.neighbors.clone();
        for (i, want) in wanted.iter().enumerate() {
            let subnets = certs.neighbor_subnets.get(i).cloned().unwrap_or_default();
            let running = self
                .order
                .iter()
                .copied()
                .find(|n| self.neighbors[*n].cfg.name == want.name);
            let Some(n) = running else {
                tracing::info!(neighbor = %want.name, address = %want.address, "reload: neighbour added");
                order.push(self.add_neighbor(want, subnets, now));
                report.added.push(want.name.clone());
                continue;
            };
            kept.insert(n);
            match self.change_of(n, want, &subnets, &old) {
                None => order.push(n),
                Some(NeighborChange::Export) => {
                    tracing::info!(neighbor = %want.name, export = ?want.export, "reload: export policy applied");
                    self.neighbors[n].cfg = want.clone();
                    self.reexport(n);
                    report.updated.push(want.name.clone());
                    order.push(n);
                }
                Some(NeighborChange::Reset(keys)) => {
                    let why = format!("configuration changed: {}", keys.join(", "));
                    tracing::warn!(neighbor = %want.name, "reload: session reset, {why}");
                    // The BFD session stays when nothing it runs with
                    // changed: the peer's BFD never sees a failure, and the
                    // new BGP session is not taken down by it.
                    let keep_bfd = !keys.iter().any(|k| ["address", "bfd", "[bfd]"].contains(k));
                    let bfd = if keep_bfd {
                        let nb = &mut self.neighbors[n];
                        Some((nb.bfd.take(), std::mem::take(&mut nb.bfd_up)))
                    } else {
                        None
                    };
                    // Damping goes on with the link as it was: a reset by
                    // reload adds no penalty, and a suppressed link stays
                    // suppressed.
                    let link = self.neighbors[n].link.take();
                    self.retire(n, wire::Cease::OtherConfigurationChange, &why, now);
                    let m = self.add_neighbor(want, subnets, now);
                    if let Some((b, up)) = bfd {
                        self.neighbors[m].bfd = b;
                        self.neighbors[m].bfd_up = up;
                    }
                    self.neighbors[m].link = link;
                    // overlayd's word on its tunnel still holds.
                    self.neighbors[m].tunnel_up = self.neighbors[n].tunnel_up;
                    // The same neighbour to whoever reads the status: its
                    // counters and history go on.
                    let (flaps, history) = {
                        let nb = &mut self.neighbors[n];
                        (nb.flaps, std::mem::take(&mut nb.history))
                    };
                    self.neighbors[m].flaps = flaps;
                    self.neighbors[m].history = history;
                    order.push(m);
                    report.reset.push(api::ResetNeighbor {
                        name: want.name.clone(),
                        changed: keys.iter().map(|k| k.to_string()).collect(),
                    });
                }
            }
        }
        for n in self.order.clone() {
            if !kept.contains(&n) {
                let name = self.neighbors[n].cfg.name.clone();
                tracing::warn!(neighbor = %name, "reload: neighbour removed");
                self.retire(
                    n,
                    wire::Cease::PeerDeconfigured,
                    "removed from the configuration",
                    now,
                );
                report.removed.push(name);
            }
        }
        self.order = order;
        // A gateway reached through the reflectors that is new (or new
        // again): its paths are in the reflectors' tables, not here. Ask
        // them for their tables again (RFC 2918).
        let renamed: BTreeSet<&String> = report
            .added
            .iter()
            .chain(report.reset.iter().map(|r| &r.name))
            .collect();
        if self
            .live()
            .any(|nb| !nb.cfg.session && renamed.contains(&nb.cfg.name))
        {
            for r in self.neighbor_ids() {
                self.ask_refresh(r);
            }
        }
        // Site prefixes.
        for (p, s) in &site {
            match self.site.get(p) {
                None => report.prefixes_added.push(*p),
                Some(o) if o.probe != s.probe => report.probes_changed.push(*p),
                Some(_) => {}
            }
        }
        for p in self.site.keys() {
            if !site.contains_key(p) {
                report.prefixes_removed.push(*p);
            }
        }
        for p in &report.prefixes_removed {
            if !self.attached.contains(p) && self.rib.remove(*p, LOCAL, now) {
                self.dirty.insert(*p);
            }
        }
        self.site = site;
        self.own_subnets = certs.own_subnets;
        self.refresh_site(now);
        self.finish(now);
        Ok(report)
    }

    /// What only a restart can change: the AS and router id (the identity
    /// the neighbours know us by), the sockets bound at start (`listen`,
    /// `control_socket`, `overlayd_socket`, `metrics_listen`), the kernel
    /// side (`kernel_routes`, `route_protocol`, `interface`), the CA and our
    /// certificate (their paths, the CA's networks and our IPv6 address),
    /// and `[damping]` (each link's penalty is kept under the settings it
    /// was earned with).
    fn check_fixed(&self, cfg: &Config, certs: &Certified) -> Result<(), ReloadError> {
        let (a, b) = (&self.cfg, cfg);
        let d = |x: &dyn std::fmt::Debug| format!("{x:?}");
        let (da, db) = (&a.damping, &b.damping);
        let keys = [
            ("asn", d(&a.asn), d(&b.asn)),
            ("router_id", d(&a.router_id), d(&b.router_id)),
            ("listen", d(&a.listen), d(&b.listen)),
            ("control_socket", d(&a.control_socket), d(&b.control_socket)),
            (
                "overlayd_socket",
                d(&a.overlayd_socket),
                d(&b.overlayd_socket),
            ),
            ("metrics_listen", d(&a.metrics_listen), d(&b.metrics_listen)),
            ("kernel_routes", d(&a.kernel_routes), d(&b.kernel_routes)),
            ("route_protocol", d(&a.route_protocol), d(&b.route_protocol)),
            ("interface", d(&a.interface), d(&b.interface)),
            ("ca", d(&a.ca), d(&b.ca)),
            ("ca (its networks)", d(&self.networks), d(&certs.networks)),
            ("cert", d(&a.cert), d(&b.cert)),
            (
                "cert (our IPv6 address)",
                d(&self.next_hop_v6),
                d(&certs.own_v6),
            ),
            ("damping.enabled", d(&da.enabled), d(&db.enabled)),
            ("damping.penalty", d(&da.penalty), d(&db.penalty)),
            (
                "damping.half_life_s",
                d(&da.half_life_s),
                d(&db.half_life_s),
            ),
            ("damping.suppress", d(&da.suppress), d(&db.suppress)),
            ("damping.reuse", d(&da.reuse), d(&db.reuse)),
            (
                "damping.max_suppress_s",
                d(&da.max_suppress_s),
                d(&db.max_suppress_s),
            ),
            (
                "damping.stable_up_s",
                d(&da.stable_up_s),
                d(&db.stable_up_s),
            ),
            ("damping.per_prefix", d(&da.per_prefix), d(&db.per_prefix)),
            (
                "damping.prefix_half_life_s",
                d(&da.prefix_half_life_s),
                d(&db.prefix_half_life_s),
            ),
            (
                "damping.prefix_suppress",
                d(&da.prefix_suppress),
                d(&db.prefix_suppress),
            ),
            (
                "damping.prefix_reuse",
                d(&da.prefix_reuse),
                d(&db.prefix_reuse),
            ),
            (
                "damping.prefix_max_suppress_s",
                d(&da.prefix_max_suppress_s),
                d(&db.prefix_max_suppress_s),
            ),
        ];
        match keys.into_iter().find(|(_, was, now)| was != now) {
            None => Ok(()),
            Some((key, was, now)) => Err(ReloadError::Fixed { key, was, now }),
        }
    }

    /// What changed for running neighbour `n` if `want` is its new config.
    fn change_of(
        &self,
        n: NeighborId,
        want: &crate::config::Neighbor,
        subnets: &[IpNet],
        old: &Config,
    ) -> Option<NeighborChange> {
        let nb = &self.neighbors[n];
        let (a, new) = (&nb.cfg, &self.cfg);
        let overlay_was = nb.overlay;
        let overlay = contains(&self.networks, &IpNet::from(want.address));
        let mut keys = Vec::new();
        let mut changed = |key, differs: bool| {
            if differs {
                keys.push(key);
            }
        };
        changed("address", a.address != want.address);
        changed("asn", a.asn != want.asn);
        changed("passive", a.passive != want.passive);
        changed("reflector", a.reflector != want.reflector);
        changed("session", a.session != want.session);
        changed("import", a.import != want.import);
        changed("cert", a.cert != want.cert || nb.cert_subnets != subnets);
        let own_timing =
            |n: &crate::config::Neighbor| (n.bfd_interval_ms, n.bfd_multiplier, n.bfd_multihop);
        changed(
            "bfd",
            Neighbor::bfd_on(a, old, overlay_was) != Neighbor::bfd_on(want, new, overlay)
                || (Neighbor::bfd_on(want, new, overlay) && own_timing(a) != own_timing(want)),
        );
        changed("ttl_security", a.ttl_security != want.ttl_security);
        changed(
            "timers",
            old.timers.hold_time_s != new.timers.hold_time_s
                || old.timers.keepalive_s != new.timers.keepalive_s
                || old.timers.connect_retry_s != new.timers.connect_retry_s,
        );
        let bfd_runs =
            Neighbor::bfd_on(a, old, overlay_was) || Neighbor::bfd_on(want, new, overlay);
        changed(
            "[bfd]",
            bfd_runs
                && (old.bfd.enabled != new.bfd.enabled
                    || a.bfd_timing(&old.bfd) != a.bfd_timing(&new.bfd)),
        );
        if !keys.is_empty() {
            return Some(NeighborChange::Reset(keys));
        }
        (a.export != want.export).then_some(NeighborChange::Export)
    }

    /// A new entry for `want`, its session starting now.
    fn add_neighbor(
        &mut self,
        want: &crate::config::Neighbor,
        subnets: Vec<IpNet>,
        now: Instant,
    ) -> NeighborId {
        let id = NeighborId(self.neighbors.len());
        let nb = Neighbor::new(
            &self.cfg,
            self.link_damping,
            &self.networks,
            self.seed,
            id,
            want,
            subnets,
            now,
        );
        self.neighbors.push(nb);
        id
    }

    /// Ends neighbour `n` for good: a Cease with `cease` on each of its
    /// connections, its routes withdrawn, its BFD session gone.
    fn retire(&mut self, n: NeighborId, cease: wire::Cease, why: &str, now: Instant) {
        let acts = self.neighbors[n].session.stop(
            why,
            Some(Notification::new(wire::Reason::Cease(cease))),
            now,
        );
        self.apply(n, acts, now);
        self.update_rib_membership(n, now);
        if let Some(mut b) = self.neighbors[n].bfd.take() {
            let _ = b.set_admin_down(now);
            if let Some(bytes) = b.poll(now).transmit {
                self.out.push(Out::Bfd { n, bytes });
            }
        }
        self.drop_reflected(n, now);
        let nb = &mut self.neighbors[n];
        nb.bfd_up = false;
        nb.adj_in.clear();
        nb.adj_out.clear();
        nb.held.clear();
        nb.prefix_links.clear();
        // One without a session has no session end to take its paths out.
        if nb.in_rib {
            nb.in_rib = false;
            let changed = self.rib.remove_source(Source::Neighbor(n), now);
            self.dirty.extend(changed);
        }
    }

    /// Exports the whole table to `n` again under its (new) policy: only
    /// the differences are sent.
    fn reexport(&mut self, n: NeighborId) {
        let mut prefixes: BTreeSet<IpNet> = self.rib.iter_best().map(|(p, _)| *p).collect();
        prefixes.extend(self.neighbors[n].adj_out.keys().copied());
        let prefixes: Vec<IpNet> = prefixes.into_iter().collect();
        self.export_prefixes(n, &prefixes);
    }

    /// routed is about to stop (RFC 8326): everything it announces goes
    /// out again with the GRACEFUL_SHUTDOWN community, so its neighbours
    /// move their traffic to other paths while this gateway still
    /// forwards. True when a neighbour was told; the caller then waits the
    /// drain before [`Router::shutdown`].
    pub fn graceful_shutdown(&mut self, now: Instant) -> bool {
        self.draining = true;
        let mut told = false;
        for n in self.neighbor_ids().collect::<Vec<_>>() {
            if self.neighbors[n].session.is_established() && !self.neighbors[n].adj_out.is_empty() {
                self.reexport(n);
                told = true;
            }
        }
        self.finish(now);
        told
    }

    /// routed stops: every session ends with a Cease (administrative
    /// shutdown) and its connections close.
    pub fn shutdown(&mut self, now: Instant) {
        self.stopping = true;
        for n in self.neighbor_ids().collect::<Vec<_>>() {
            let acts = self.neighbors[n].session.stop(
                "routed stopping",
                Some(Notification::new(wire::Reason::Cease(
                    wire::Cease::AdministrativeShutdown,
                ))),
                now,
            );
            self.apply(n, acts, now);
        }
        self.finish(now);
    }

    // ---- the clock ----

    pub fn on_tick(&mut self, now: Instant) {
        for n in self.neighbor_ids() {
            // Damping: a suppressed link keeps its session down.
            let suppressed = self.neighbors[n]
                .link
                .as_ref()
                .is_some_and(|l| l.suppressed(now));
            let nb = &mut self.neighbors[n];
            if suppressed && nb.session.enabled() {
                tracing::warn!(neighbor = %nb.cfg.name, "link suppressed by damping");
                let acts = nb.session.stop(
                    "suppressed (damping)",
                    Some(Notification::new(wire::Reason::Cease(
                        wire::Cease::AdministrativeShutdown,
                    ))),
                    now,
                );
                self.apply(n, acts, now);
            } else if !suppressed && !nb.session.enabled() && !self.stopping && nb.cfg.session {
                tracing::info!(neighbor = %nb.cfg.name, "link reusable");
                nb.session.start(now);
            }
            let acts = self.neighbors[n].session.on_tick(now);
            self.apply(n, acts, now);
            if self.neighbors[n].stale_until.is_some_and(|t| now >= t) {
                tracing::warn!(
                    neighbor = %self.neighbors[n].cfg.name,
                    "graceful restart: not back (or no End-of-RIB) in time"
                );
                self.flush_stale(n, None, now);
            }
            self.poll_bfd(n, now);
            for ipv6 in [false, true] {
                let nb = &self.neighbors[n];
                if nb.refresh_due[usize::from(ipv6)] && nb.session.is_established() {
                    self.route_refresh(n, ipv6, now);
                }
            }
        }
        self.refresh_site(now);
        self.release_held(now);
        self.finish(now);
    }

    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut t = now + Duration::from_millis(500);
        for nb in self.live() {
            if let Some(d) = nb.session.next_deadline() {
                t = t.min(d);
            }
            if let Some(b) = &nb.bfd {
                t = t.min(b.next_deadline());
            }
            if let Some(d) = nb.link.as_ref().and_then(|l| l.next_change(now)) {
                t = t.min(d);
            }
            // A link suppressed by its last flap has its session stopped by
            // the next tick; that tick is now, before the session can
            // reconnect on a link it must keep down. One reusable again is
            // started by it (not once routed is stopping: then sessions
            // stay down, and a tick now would be a busy loop).
            let suppressed = nb.link.as_ref().is_some_and(|l| l.suppressed(now));
            let enabled = nb.session.enabled();
            if (suppressed && enabled)
                || (!suppressed && !enabled && !self.stopping && nb.cfg.session)
            {
                t = now;
            }
        }
        t.max(now)
    }

    // ---- session actions ----

    fn apply(&mut self, n: NeighborId, acts: Vec<Action>, now: Instant) {
        for a in acts {
            match a {
                Action::Connect => self.out.push(Out::Connect { n }),
                Action::Send(conn, m) => self.out.push(Out::Send {
                    n,
                    conn,
                    bytes: wire::encode(&m),
                }),
                Action::Close(conn) => self.out.push(Out::Close { n, conn }),
                Action::Up(open) => self.session_up(n, open, now),
                Action::Down(why) => self.session_down(n, &why, now),
                Action::Update(u) => self.import(n, u, now),
                Action::RouteRefresh { ipv6 } => self.route_refresh(n, ipv6, now),
            }
        }
    }

    /// Sends the neighbour our routes of one family again (RFC 2918), at
    /// most every [`REFRESH_EVERY`]; one asked sooner waits for it.
    fn route_refresh(&mut self, n: NeighborId, ipv6: bool, now: Instant) {
        let nb = &mut self.neighbors[n];
        let f = usize::from(ipv6);
        if nb.refreshed_at[f].is_some_and(|t| now.saturating_duration_since(t) < REFRESH_EVERY) {
            nb.refresh_due[f] = true;
            return;
        }
        nb.refreshed_at[f] = Some(now);
        nb.refresh_due[f] = false;
        nb.adj_out.retain(|p, _| matches!(p, IpNet::V6(_)) != ipv6);
        self.export_all(n);
    }

    fn record(&mut self, n: NeighborId, up: bool, reason: &str) {
        let nb = &mut self.neighbors[n];
        nb.history.push_back(Flap {
            at_unix: unix_now(),
            up,
            reason: reason.to_string(),
        });
        while nb.history.len() > HISTORY {
            nb.history.pop_front();
        }
    }

    fn session_up(&mut self, n: NeighborId, open: wire::Open, now: Instant) {
        tracing::info!(neighbor = %self.neighbors[n].cfg.name, router_id = %open.router_id, "session established");
        if let Some(l) = self.neighbors[n].link.as_mut() {
            l.on_up(now);
        }
        self.neighbors[n].eor = false;
        self.neighbors[n].adj_out.clear();
        if self.neighbors[n].stale_until.is_some() {
            // Back from a restart: what it did not keep forwarding goes
            // now, the rest waits for its End-of-RIB (RFC 4724 §4.2).
            let gr = open.graceful_restart;
            for v6 in [false, true] {
                let kept = gr.and_then(|g| if v6 { g.ipv6 } else { g.ipv4 });
                if kept != Some(true) {
                    self.flush_stale(n, Some(v6), now);
                }
            }
            let stale_for = Duration::from_secs(u64::from(self.cfg.graceful_restart.stale_time_s));
            if self.neighbors[n].stale_until.is_some() {
                self.neighbors[n].stale_until = Some(now + stale_for);
            }
        }
        self.record(n, true, "established");
        self.export_all(n);
        self.update_rib_membership(n, now);
    }

    fn session_down(&mut self, n: NeighborId, why: &str, now: Instant) {
        if let Some(g) = self.neighbors[n].session.restarting_peer.take() {
            if g.time_s > 0 && self.neighbors[n].in_rib && !self.neighbors[n].cfg.reflector {
                return self.helper_keeps(n, why, g.time_s, now);
            }
        }
        tracing::warn!(neighbor = %self.neighbors[n].cfg.name, "session down: {why}");
        self.drop_reflected(n, now);
        self.flush_stale(n, None, now);
        let nb = &mut self.neighbors[n];
        nb.flaps += 1;
        if let Some(l) = nb.link.as_mut() {
            l.on_down(now);
        }
        nb.adj_in.clear();
        nb.adj_out.clear();
        nb.held.clear();
        nb.refresh_due = [false; 2];
        self.record(n, false, why);
        self.update_rib_membership(n, now);
    }

    /// Graceful restart helper: a neighbour that sent the capability lost
    /// its session without a NOTIFICATION (its process ended or restarted;
    /// its host is alive, its kernel closed the connection). Its paths stay
    /// in the Loc-RIB, marked stale, for its restart time; no flap is
    /// counted. A BFD failure or a NOTIFICATION never gets here.
    fn helper_keeps(&mut self, n: NeighborId, why: &str, time_s: u16, now: Instant) {
        let nb = &mut self.neighbors[n];
        tracing::warn!(
            neighbor = %nb.cfg.name,
            "session down: {why}; graceful restart: its {} routes are kept for {time_s} s",
            nb.adj_in.len()
        );
        nb.stale = nb.adj_in.keys().copied().collect();
        nb.stale_until = Some(now + Duration::from_secs(u64::from(time_s)));
        // Its BFD restarted with it: ours starts over, quietly.
        if let Some(b) = nb.bfd.as_mut() {
            b.peer_restarted(now);
        }
        nb.bfd_up = false;
        nb.adj_out.clear();
        nb.refresh_due = [false; 2];
        self.record(n, false, &format!("{why} (graceful restart)"));
    }

    /// Drops a neighbour's stale paths (of one family, or all), as a
    /// withdrawal of each; the helper state ends when none are left.
    fn flush_stale(&mut self, n: NeighborId, v6: Option<bool>, now: Instant) {
        let nb = &mut self.neighbors[n];
        if nb.stale_until.is_none() {
            return;
        }
        let gone: Vec<IpNet> = nb
            .stale
            .iter()
            .filter(|p| v6.is_none_or(|v6| matches!(p, IpNet::V6(_)) == v6))
            .copied()
            .collect();
        for p in &gone {
            nb.stale.remove(p);
            nb.adj_in.remove(p);
            nb.held.remove(p);
        }
        if nb.stale.is_empty() || v6.is_none() {
            nb.stale.clear();
            nb.stale_until = None;
        }
        let in_rib = nb.in_rib;
        if !gone.is_empty() {
            tracing::info!(neighbor = %nb.cfg.name, "graceful restart: {} stale routes removed", gone.len());
        }
        for p in gone {
            if in_rib && self.rib.remove(p, Source::Neighbor(n), now) {
                self.dirty.insert(p);
            }
        }
    }

    /// Puts a neighbour's paths into the Loc-RIB or takes them out, as its
    /// session and damping state say.
    fn update_rib_membership(&mut self, n: NeighborId, now: Instant) {
        let nb = &self.neighbors[n];
        let alive = if nb.cfg.session {
            nb.session.is_established() || nb.stale_until.is_some()
        } else {
            nb.tunnel_up == Some(true)
        };
        let want = alive
            && nb
                .link
                .as_ref()
                .is_none_or(|l| l.flaps() == 0 || l.usable(now));
        // Out and staying out: nothing of it is in the RIB (every path of
        // a neighbour goes in only while it is in), so nothing to look
        // for. (Searching the RIB here for each neighbour not yet up, at
        // every event, was most of routed's work while a mesh converged.)
        if want == nb.in_rib {
            return;
        }
        if !want {
            let changed = self.rib.remove_source(Source::Neighbor(n), now);
            self.dirty.extend(changed);
            self.neighbors[n].in_rib = false;
            return;
        }
        self.neighbors[n].in_rib = true;
        let paths: Vec<(IpNet, Arc<Attrs>)> = self.neighbors[n]
            .adj_in
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (p, attrs) in paths {
            if self.prefix_suppressed(n, &p, now) {
                self.neighbors[n].held.insert(p);
                continue;
            }
            if self.rib.upsert(
                p,
                Path {
                    source: Source::Neighbor(n),
                    attrs,
                },
                now,
            ) {
                self.dirty.insert(p);
            }
        }
    }

    fn prefix_suppressed(&self, n: NeighborId, p: &IpNet, now: Instant) -> bool {
        self.neighbors[n]
            .prefix_links
            .get(p)
            .is_some_and(|l| l.suppressed(now))
    }

    /// Per-prefix damping: a withdrawal (`up` false) or announcement.
    fn prefix_event(&mut self, n: NeighborId, p: IpNet, up: bool, now: Instant) {
        let Some(cfg) = self.prefix_damping else {
            return;
        };
        let l = self.neighbors[n]
            .prefix_links
            .entry(p)
            .or_insert_with(|| damping::Link::new(cfg, now));
        if up {
            l.on_up(now);
        } else {
            l.on_down(now);
        }
    }

    /// Returns held prefixes whose suppression ended to the table, and
    /// forgets damping state that decayed away.
    fn release_held(&mut self, now: Instant) {
        if self.prefix_damping.is_none() {
            return;
        }
        for n in self.neighbor_ids() {
            let released: Vec<IpNet> = self.neighbors[n]
                .held
                .iter()
                .filter(|p| !self.prefix_suppressed(n, p, now))
                .copied()
                .collect();
            for p in released {
                self.neighbors[n].held.remove(&p);
                let attrs = self.neighbors[n].adj_in.get(&p).cloned();
                if let (Some(attrs), true) = (attrs, self.neighbors[n].in_rib) {
                    tracing::info!(neighbor = %self.neighbors[n].cfg.name, prefix = %p, "prefix reusable");
                    if self.rib.upsert(
                        p,
                        Path {
                            source: Source::Neighbor(n),
                            attrs,
                        },
                        now,
                    ) {
                        self.dirty.insert(p);
                    }
                }
            }
            self.neighbors[n]
                .prefix_links
                .retain(|_, l| l.penalty(now) >= 1.0 || l.suppressed(now));
        }
    }

    // ---- import ----

    fn accepts(&self, n: NeighborId, p: &IpNet, attrs: &Attrs) -> Result<(), Refusal> {
        let nb = &self.neighbors[n];
        if attrs.as_path.contains(&self.cfg.asn) {
            return Err(Refusal::Loop);
        }
        if attrs.as_path.first() != Some(&nb.cfg.asn) {
            return Err(Refusal::FirstAs(nb.cfg.asn));
        }
        match &nb.cfg.import {
            None => Err(Refusal::NoImportPolicy),
            Some(Import::Named(s)) if s == "none" => Err(Refusal::ImportNone),
            Some(Import::Named(_)) => {
                // The gateway that brought the prefix into the overlay: the
                // one nearest the origin in the path.
                let announcer = attrs.as_path.iter().rev().find_map(|asn| {
                    self.live()
                        .find(|o| o.cfg.asn == *asn && o.cfg.cert.is_some())
                });
                if contains(&self.networks, p) && (p.prefix_len() == p.max_prefix_len()) {
                    // A gateway: a neighbour with a gateway certificate, or
                    // one reached through the overlay (overlayd checked its
                    // key and source).
                    let by_gateway = attrs.as_path.iter().rev().any(|asn| {
                        self.live()
                            .any(|o| o.cfg.asn == *asn && (o.cfg.cert.is_some() || o.overlay))
                    });
                    return self.accepts_host(p, attrs, by_gateway);
                }
                // A site prefix: that gateway's cert must list it — that
                // prefix, not a more-specific of it, which would win every
                // longest-prefix match against the real one (audit H2).
                match announcer {
                    Some(o) if o.cert_subnets.iter().any(|s| s.trunc() == p.trunc()) => Ok(()),
                    Some(o) => Err(Refusal::NotAllowedFor(o.cfg.name.clone())),
                    None => Err(Refusal::NoKnownAnnouncer),
                }
            }
            Some(Import::List(l)) => {
                if contains(l, p) {
                    Ok(())
                } else {
                    Err(Refusal::OutsideImportList)
                }
            }
        }
    }

    /// A host route of the overlay (audit H2). A gateway's own address
    /// (and ours) only from its owner, as the origin of the path; any
    /// other host only when a gateway brought it into the overlay: the CA
    /// decides who is in the overlay, not where, so any gateway may serve
    /// any host (hosts move between sites), but a site router or a
    /// neighbour without a certificate cannot originate one.
    fn accepts_host(&self, p: &IpNet, attrs: &Attrs, by_gateway: bool) -> Result<(), Refusal> {
        if self.served().0.contains(&p.addr()) {
            return Err(Refusal::OwnAddress);
        }
        let owner = self
            .neighbors
            .iter()
            .find(|o| o.cfg.cert.is_some() && o.cert_subnets.contains(p));
        match owner {
            Some(o) if attrs.as_path.last() == Some(&o.cfg.asn) => Ok(()),
            Some(o) => Err(Refusal::NotTheOwner(o.cfg.name.clone())),
            None if by_gateway => Ok(()),
            None => Err(Refusal::HostWithoutGateway),
        }
    }

    fn import(&mut self, n: NeighborId, u: Update, now: Instant) {
        if let Some(v6) = u.end_of_rib_v6() {
            self.neighbors[n].eor = true;
            self.flush_stale(n, Some(v6), now);
            return;
        }
        if self.neighbors[n].cfg.reflector {
            return self.import_reflected(n, u, now);
        }
        let in_rib = self.neighbors[n].in_rib;
        for p in &u.withdrawn {
            self.neighbors[n].stale.remove(p);
            if self.neighbors[n].adj_in.remove(p).is_some() {
                self.prefix_event(n, *p, false, now);
                if in_rib && self.rib.remove(*p, Source::Neighbor(n), now) {
                    self.dirty.insert(*p);
                }
            }
        }
        if let Some(why) = &u.treat_as_withdraw {
            self.neighbors[n].treat_as_withdraw += 1;
            tracing::warn!(neighbor = %self.neighbors[n].cfg.name, "UPDATE treated as withdraw: {why}");
        }
        // One copy of the attributes for every prefix of the UPDATE; LOCAL_PREF
        // is not carried between ASes.
        let shared = Arc::new(Attrs {
            local_pref: None,
            ..u.attrs.clone()
        });
        for p in &u.announced {
            let verdict = match &u.treat_as_withdraw {
                Some(why) => Err(Refusal::TreatAsWithdraw(why.clone())),
                None => self.accepts(n, p, &u.attrs),
            };
            match verdict {
                Ok(()) => {
                    self.neighbors[n].stale.remove(p);
                    let attrs = shared.clone();
                    self.neighbors[n].adj_in.insert(*p, attrs.clone());
                    self.prefix_event(n, *p, true, now);
                    if self.prefix_suppressed(n, p, now) {
                        self.neighbors[n].held.insert(*p);
                        if self.rib.remove(*p, Source::Neighbor(n), now) {
                            self.dirty.insert(*p);
                        }
                    } else if in_rib
                        && self.rib.upsert(
                            *p,
                            Path {
                                source: Source::Neighbor(n),
                                attrs,
                            },
                            now,
                        )
                    {
                        self.dirty.insert(*p);
                    }
                }
                Err(why) => {
                    if u.treat_as_withdraw.is_none() {
                        self.neighbors[n].rejected += 1;
                        tracing::debug!(neighbor = %self.neighbors[n].cfg.name, prefix = %p, "rejected: {why}");
                    }
                    if self.neighbors[n].adj_in.remove(p).is_some()
                        && in_rib
                        && self.rib.remove(*p, Source::Neighbor(n), now)
                    {
                        self.dirty.insert(*p);
                    }
                }
            }
        }
        if self.neighbors[n].adj_in.len() > self.cfg.limits.max_prefixes {
            let why = format!(
                "more than {} prefixes (limits.max_prefixes)",
                self.cfg.limits.max_prefixes
            );
            let acts = self.neighbors[n].session.reset(
                &why,
                Some(Notification::new(wire::Reason::Cease(
                    wire::Cease::MaxPrefixes,
                ))),
                now,
            );
            self.apply(n, acts, now);
        }
    }

    /// The gateway without a session of its own at next hop `a`: its
    /// overlay address, or its IPv6 overlay address from its certificate.
    fn gateway_at(&self, a: IpAddr) -> Option<NeighborId> {
        self.order.iter().copied().find(|&g| {
            let nb = &self.neighbors[g];
            !nb.cfg.session
                && (nb.cfg.address == a
                    || nb
                        .cert_subnets
                        .iter()
                        .any(|s| s.prefix_len() == s.max_prefix_len() && s.addr() == a))
        })
    }

    /// An UPDATE from reflector `r`: each path is taken as its next hop's
    /// gateway's own, as if that gateway had sent it (its certificate and
    /// import policy decide), and stays while any reflector holds it.
    /// Without ADD-PATH every path has identifier 0.
    fn import_reflected(&mut self, r: NeighborId, u: Update, now: Instant) {
        let id_of = |ids: &[u32], i: usize| ids.get(i).copied().unwrap_or(0);
        for (i, p) in u.withdrawn.iter().enumerate() {
            let key = (id_of(&u.withdrawn_ids, i), *p);
            if let Some(g) = self.neighbors[r].reflected.remove(&key) {
                self.unreflect(g, r, key.0, *p, now);
            }
        }
        if let Some(why) = &u.treat_as_withdraw {
            self.neighbors[r].treat_as_withdraw += 1;
            tracing::warn!(neighbor = %self.neighbors[r].cfg.name, "UPDATE treated as withdraw: {why}");
        }
        // One next hop per family per UPDATE: its gateway, looked up once.
        let gateway_of = |a: Option<IpAddr>| match (&u.treat_as_withdraw, a) {
            (None, Some(a)) => self.gateway_at(a),
            _ => None,
        };
        let gateways = [
            gateway_of(u.attrs.next_hop_v4.map(IpAddr::V4)),
            gateway_of(u.attrs.next_hop_v6.map(IpAddr::V6)),
        ];
        let mut to: BTreeMap<NeighborId, Vec<(u32, IpNet)>> = BTreeMap::new();
        for (i, p) in u.announced.iter().enumerate() {
            let key = (id_of(&u.announced_ids, i), *p);
            let gateway = gateways[usize::from(matches!(p, IpNet::V6(_)))];
            if let Some(old) = self.neighbors[r].reflected.remove(&key) {
                if Some(old) != gateway {
                    self.unreflect(old, r, key.0, *p, now);
                }
            }
            match gateway {
                Some(g) => to.entry(g).or_default().push(key),
                None if u.treat_as_withdraw.is_none() => {
                    self.neighbors[r].rejected += 1;
                    tracing::debug!(neighbor = %self.neighbors[r].cfg.name, prefix = %p, "rejected: the next hop is no gateway without a session of its own");
                }
                None => {}
            }
        }
        // Each gateway's share as one UPDATE of its own: one copy of the
        // attributes for all of it.
        for (g, paths) in to {
            self.import(
                g,
                Update {
                    announced: paths.iter().map(|(_, p)| *p).collect(),
                    attrs: u.attrs.clone(),
                    ..Update::default()
                },
                now,
            );
            for key in paths {
                let p = key.1;
                if self.neighbors[g].adj_in.contains_key(&p) {
                    self.neighbors[r].reflected.insert(key, g);
                    let holders = self.neighbors[g].held_by.entry(p).or_default();
                    if !holders.contains(&(r, key.0)) {
                        holders.push((r, key.0));
                    }
                } else {
                    // Refused as the gateway's own (its rejected count has it).
                    self.unreflect(g, r, key.0, p, now);
                }
            }
        }
        let gateways = self.live().filter(|nb| !nb.cfg.session).count().max(1);
        let limit = self.cfg.limits.max_prefixes.saturating_mul(gateways);
        if self.neighbors[r].reflected.len() > limit {
            let why = format!("more than {limit} paths (limits.max_prefixes per gateway)");
            let acts = self.neighbors[r].session.reset(
                &why,
                Some(Notification::new(wire::Reason::Cease(
                    wire::Cease::MaxPrefixes,
                ))),
                now,
            );
            self.apply(r, acts, now);
        }
    }

    /// Reflector `r` no longer holds gateway `g`'s path to `p` under
    /// identifier `id`: it goes unless a reflector still holds it (another,
    /// or this one under another identifier).
    fn unreflect(&mut self, g: NeighborId, r: NeighborId, id: u32, p: IpNet, now: Instant) {
        let holders = self.neighbors[g].held_by.entry(p).or_default();
        holders.retain(|&x| x != (r, id));
        if !holders.is_empty() {
            return;
        }
        self.neighbors[g].held_by.remove(&p);
        self.import(
            g,
            Update {
                withdrawn: vec![p],
                ..Update::default()
            },
            now,
        );
    }

    /// Asks reflector `r` for its whole table again, per family it sends
    /// (when it does route refresh).
    fn ask_refresh(&mut self, r: NeighborId) {
        let nb = &self.neighbors[r];
        let (Some(conn), Some(open)) = (nb.session.established_conn(), &nb.session.peer_open)
        else {
            return;
        };
        if !nb.cfg.reflector || !open.route_refresh {
            return;
        }
        for ipv6 in [false, true] {
            if self.negotiated(r, ipv6) {
                self.out.push(Out::Send {
                    n: r,
                    conn,
                    bytes: wire::encode(&Message::RouteRefresh { ipv6 }),
                });
            }
        }
    }

    /// Everything reflector `r` held goes (its session ended).
    fn drop_reflected(&mut self, r: NeighborId, now: Instant) {
        let paths = std::mem::take(&mut self.neighbors[r].reflected);
        for ((id, p), g) in paths {
            self.unreflect(g, r, id, p, now);
        }
    }

    // ---- export ----

    /// Whether the session with neighbour `n` carries this family (both
    /// OPENs advertised it).
    fn negotiated(&self, n: NeighborId, ipv6: bool) -> bool {
        self.neighbors[n]
            .session
            .peer_open
            .as_ref()
            .is_some_and(|o| if ipv6 { o.ipv6 } else { o.ipv4 })
    }

    /// The IPv4 next hop `nb` gets: gateways reach us at our overlay
    /// address; a router on a LAN at the configured one, else our IPv4
    /// address on the link to it (RFC 4760: whatever the session's family).
    fn next_hop_v4_for(&self, nb: &Neighbor) -> Option<std::net::Ipv4Addr> {
        if nb.overlay || nb.cfg.reflector {
            return Some(self.cfg.router_id);
        }
        nb.cfg
            .next_hop_v4
            .or(nb.link_addrs.v4)
            .or(match nb.local_addr {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            })
    }

    /// The IPv6 next hop `nb` gets: our overlay IPv6 address for a
    /// gateway; for a LAN router the configured one, else our global IPv6
    /// address on the link to it (RFC 2545). Never our overlay address for
    /// a LAN router: it exists only on our TUN, and the router could not
    /// resolve it.
    fn next_hop_v6_for(&self, nb: &Neighbor) -> Option<std::net::Ipv6Addr> {
        if nb.overlay || nb.cfg.reflector {
            return self.next_hop_v6;
        }
        nb.cfg
            .next_hop_v6
            .or(nb.link_addrs.v6)
            .or(match nb.local_addr {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            })
    }

    /// The link-local IPv6 next hop `nb` gets beside the global one
    /// (RFC 2545): ours on the link to a LAN router, unless its next hop is
    /// configured (then it may not be us).
    fn next_hop_v6_local_for(&self, nb: &Neighbor) -> Option<std::net::Ipv6Addr> {
        if nb.overlay || nb.cfg.reflector || nb.cfg.next_hop_v6.is_some() {
            return None;
        }
        nb.link_addrs.v6_local
    }

    /// Best routes that `nb` would get but for a next hop, by reason.
    fn not_sent(&self, n: NeighborId) -> BTreeMap<String, u64> {
        let nb = &self.neighbors[n];
        let mut out = BTreeMap::new();
        if nb.cfg.export.as_deref() != Some("all") || !nb.session.is_established() {
            return out;
        }
        for (v6, missing) in [
            (false, self.next_hop_v4_for(nb).is_none()),
            (true, self.next_hop_v6_for(nb).is_none()),
        ] {
            if !missing || !self.negotiated(n, v6) {
                continue;
            }
            let count = self
                .rib
                .iter_best()
                .filter(|(p, _)| matches!(p, IpNet::V6(_)) == v6)
                .count() as u64;
            if count > 0 {
                let why = if v6 {
                    "no IPv6 address of ours on the link to it (next_hop_v6)"
                } else {
                    "no IPv4 address of ours on the link to it (next_hop_v4)"
                };
                out.insert(why.to_string(), count);
            }
        }
        out
    }

    fn exported(&self, n: NeighborId, p: &IpNet) -> Option<Attrs> {
        let nb = &self.neighbors[n];
        if nb.cfg.export.as_deref() != Some("all") {
            return None;
        }
        if !self.negotiated(n, matches!(p, IpNet::V6(_))) {
            return None;
        }
        let best = self.rib.best(p)?;
        // To a reflector our own paths only (originated here or learned
        // outside the overlay): every gateway has the others' from it, with
        // their own next hops.
        let ours = |x: &Path| match x.source {
            Source::Neighbor(from) => {
                let from = &self.neighbors[from];
                !(from.overlay || !from.cfg.session || from.cfg.reflector)
            }
            _ => true,
        };
        // To a gateway, what came from another gateway only as that
        // gateway's own (its origin, one hop): a site whose tunnel to it is
        // down is reached through one third site, and a withdrawal is over
        // in one round. Passing on longer paths made every gateway of a
        // mesh try each of them in turn first (BGP path hunting: a host
        // stop not seen on 49 of 50 gateways after 60 s).
        let transit = |x: &Path| match x.source {
            Source::Neighbor(from) => self.neighbors[from].overlay && x.attrs.as_path.len() > 1,
            _ => false,
        };
        let path = best.paths.iter().find(|x| {
            x.source != Source::Neighbor(n)
                && (!nb.cfg.reflector || ours(x))
                && !(nb.overlay && transit(x))
        })?;
        if path.attrs.as_path.contains(&nb.cfg.asn) {
            return None;
        }
        let mut as_path = vec![self.cfg.asn];
        as_path.extend_from_slice(&path.attrs.as_path);
        let (nh4, nh6) = match p {
            IpNet::V4(_) => (Some(self.next_hop_v4_for(nb)?), None),
            IpNet::V6(_) => (None, Some(self.next_hop_v6_for(nb)?)),
        };
        let mut communities = path.attrs.communities.clone();
        if self.draining && !communities.contains(&crate::rib::GRACEFUL_SHUTDOWN) {
            communities.push(crate::rib::GRACEFUL_SHUTDOWN);
        }
        Some(Attrs {
            origin: path.attrs.origin,
            as_path,
            med: None,
            local_pref: None,
            communities,
            next_hop_v4: nh4,
            next_hop_v6: nh6,
            next_hop_v6_local: nh6.and_then(|_| self.next_hop_v6_local_for(nb)),
        })
    }

    fn export_prefixes(&mut self, n: NeighborId, prefixes: &[IpNet]) {
        let Some(conn) = self.neighbors[n].session.established_conn() else {
            return;
        };
        let mut withdrawn = Vec::new();
        let mut groups: BTreeMap<Vec<u8>, (Attrs, Vec<IpNet>)> = BTreeMap::new();
        for p in prefixes {
            let want = self.exported(n, p);
            let have = self.neighbors[n].adj_out.get(p);
            if want.as_ref() == have {
                continue;
            }
            match want {
                None => {
                    self.neighbors[n].adj_out.remove(p);
                    withdrawn.push(*p);
                }
                Some(a) => {
                    self.neighbors[n].adj_out.insert(*p, a.clone());
                    let key = format!("{a:?}").into_bytes();
                    groups
                        .entry(key)
                        .or_insert_with(|| (a, Vec::new()))
                        .1
                        .push(*p);
                }
            }
        }
        let mut updates = Vec::new();
        if !withdrawn.is_empty() {
            updates.extend(wire::split_update(Update {
                withdrawn,
                ..Update::default()
            }));
        }
        for (_, (attrs, announced)) in groups {
            updates.extend(wire::split_update(Update {
                announced,
                attrs,
                ..Update::default()
            }));
        }
        for u in updates {
            self.out.push(Out::Send {
                n,
                conn,
                bytes: wire::encode(&Message::Update(u)),
            });
        }
    }

    /// This process began with a graceful restart (and graceful restart is
    /// on): OPENs say so until the table is whole again, and End-of-RIBs
    /// wait for it.
    pub fn set_restarted(&mut self) {
        if !self.cfg.graceful_restart.enabled {
            return;
        }
        tracing::info!("graceful restart: End-of-RIB waits until the neighbours' routes are back");
        self.restarting = true;
        let cap = graceful_restart_cap(&self.cfg, true);
        for nb in &mut self.neighbors {
            nb.session.cfg.graceful_restart = cap;
        }
    }

    /// The table is whole again after a graceful restart: the deferred
    /// End-of-RIBs go (the routes that made it whole went first), and
    /// later OPENs no longer say we restarted.
    fn restart_done(&mut self) {
        if !std::mem::take(&mut self.restarting) {
            return;
        }
        let cap = graceful_restart_cap(&self.cfg, false);
        for nb in &mut self.neighbors {
            nb.session.cfg.graceful_restart = cap;
        }
        for n in std::mem::take(&mut self.eor_owed) {
            self.send_eor(n);
        }
        tracing::info!("graceful restart: table whole, End-of-RIB sent");
    }

    fn export_all(&mut self, n: NeighborId) {
        self.reexport(n);
        if self.restarting {
            self.eor_owed.insert(n);
            return;
        }
        self.send_eor(n);
    }

    /// End-of-RIB of each negotiated family to `n`.
    fn send_eor(&mut self, n: NeighborId) {
        if let Some(conn) = self.neighbors[n].session.established_conn() {
            for v6 in [false, true] {
                if !self.negotiated(n, v6) {
                    continue;
                }
                self.out.push(Out::Send {
                    n,
                    conn,
                    bytes: wire::end_of_rib(v6),
                });
            }
        }
    }

    /// Ends every entry point: exports what changed, and tells the driver
    /// to reprogram the tables.
    fn finish(&mut self, now: Instant) {
        for n in self.neighbor_ids() {
            self.update_rib_membership(n, now);
        }
        if !self.fib_ready {
            // A gateway without a session is known once the reflectors are.
            let all_up = self.live().filter(|nb| nb.cfg.session).all(|nb| {
                nb.session.is_established()
                    && (nb.eor
                        || nb
                            .session
                            .established_at
                            .is_some_and(|t| now.duration_since(t) >= SETTLE))
            });
            let grace = Duration::from_secs(self.cfg.timers.startup_grace_s);
            if all_up || now.duration_since(self.started) >= grace {
                self.fib_ready = true;
                self.out.push(Out::TablesChanged);
            }
        }
        if !self.dirty.is_empty() {
            let dirty: Vec<IpNet> = std::mem::take(&mut self.dirty).into_iter().collect();
            for n in self.neighbor_ids() {
                self.export_prefixes(n, &dirty);
            }
            // Also during the startup grace: what is learned then is merged
            // into overlayd at once (a restarted gateway whose hosts fail back
            // to it forwards for them), not at the next periodic look.
            self.out.push(Out::TablesChanged);
        }
        if self.fib_ready {
            self.restart_done();
        }
    }

    /// Whether routed owns overlayd's table yet (after start it waits for
    /// its neighbours so a restart does not wipe working routes).
    pub fn fib_ready(&self) -> bool {
        self.fib_ready
    }

    /// The table for overlayd now, or `None` once routed is stopping:
    /// overlayd keeps what it has (a gateway stopping with SIGTERM still
    /// forwards while it drains, and its hosts' replies that reach it
    /// before they moved need the routes to the other sites; the sessions
    /// routed just ended would otherwise withdraw them all from it).
    pub fn feed_table(&self) -> Option<Vec<(IpNet, Vec<String>)>> {
        (!self.stopping).then(|| self.fib())
    }

    /// Learned best routes for overlayd: prefix → the gateways (overlay
    /// neighbours) of the best set. Routes only a LAN router offers are for
    /// the kernel: overlayd hands them to its TUN by the cert's subnets.
    pub fn fib(&self) -> Vec<(IpNet, Vec<String>)> {
        self.rib
            .iter_best()
            .filter(|(_, b)| b.paths.iter().all(|p| p.source != LOCAL))
            .filter_map(|(p, b)| {
                let via: Vec<String> = b
                    .paths
                    .iter()
                    .filter_map(|x| self.neighbor_of(x.source))
                    .filter(|nb| nb.overlay)
                    .map(|nb| nb.cfg.name.clone())
                    .collect();
                (!via.is_empty()).then_some((*p, via))
            })
            .collect()
    }

    /// Kernel routes: learned site prefixes into the overlay interface,
    /// and what LAN routers offer via their address: the global IPv6 next
    /// hop when there is one, else the link-local one on the router's link
    /// (a router may give only that, RFC 2545).
    pub fn kernel_routes(&self) -> Vec<crate::kernel::Want> {
        use crate::kernel::Want;
        self.rib
            .iter_best()
            .filter(|(_, b)| b.paths.iter().all(|p| p.source != LOCAL))
            .filter_map(|(p, b)| {
                let best = &b.paths[0];
                let nb = self.neighbor_of(best.source)?;
                if nb.overlay {
                    return (p.prefix_len() < p.max_prefix_len()).then_some(Want::overlay(*p));
                }
                // Via the next hop the router gave, of the prefix's family.
                let (via, dev) = match p {
                    IpNet::V4(_) => (best.attrs.next_hop_v4.map(IpAddr::V4), None),
                    IpNet::V6(_) => {
                        let global = best
                            .attrs
                            .next_hop_v6
                            .filter(|a| !a.is_unicast_link_local() && !a.is_unspecified());
                        let local = best
                            .attrs
                            .next_hop_v6_local
                            .or(best.attrs.next_hop_v6)
                            .filter(|a| a.is_unicast_link_local());
                        match (global, local) {
                            (Some(g), _) => (Some(IpAddr::V6(g)), None),
                            // Not installable without the router's link.
                            (None, Some(l)) => (Some(IpAddr::V6(l)), Some(nb.link_addrs.ifindex?)),
                            (None, None) => (None, None),
                        }
                    }
                };
                Some(Want {
                    prefix: *p,
                    via,
                    dev,
                })
            })
            .collect()
    }

    // ---- status ----

    pub fn status(&self, now: Instant) -> api::Status {
        let neighbors = self
            .order
            .iter()
            .map(|&id| {
                let nb = &self.neighbors[id];
                let s = &nb.session;
                let (bfd, bfd_remote, bfd_diag) = match &nb.bfd {
                    None => (api::BfdState::Disabled, None, None),
                    Some(b) => (
                        b.state().into(),
                        Some(b.remote_state().into()),
                        Some(format!("{:?}", b.local_diag())),
                    ),
                };
                let (bfd_received, bfd_discarded) = nb
                    .bfd
                    .as_ref()
                    .map_or((0, 0), |b| (b.received(), b.discarded()));
                let (penalty, suppressed, until) = match &nb.link {
                    None => (0.0, false, None),
                    Some(l) => (
                        l.penalty(now),
                        l.suppressed(now),
                        l.suppressed_until(now)
                            .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                    ),
                };
                api::NeighborStatus {
                    name: nb.cfg.name.clone(),
                    address: nb.cfg.address,
                    overlay: nb.overlay,
                    asn: nb.cfg.asn,
                    state: if nb.cfg.session {
                        s.state().into()
                    } else {
                        api::SessionState::Reflected
                    },
                    uptime_s: s.established_at.map(|t| now.duration_since(t).as_secs()),
                    bfd,
                    bfd_remote,
                    bfd_diag,
                    bfd_received,
                    bfd_discarded,
                    bfd_discriminators: nb.bfd.as_ref().map(|b| b.discriminators()),
                    tunnel_up: nb.tunnel_up.filter(|_| nb.bfd.is_none()),
                    reconnect_s: s.backoff().as_secs(),
                    flaps: nb.flaps,
                    penalty: (penalty * 10.0).round() / 10.0,
                    suppressed,
                    suppressed_for_s: until,
                    usable: nb.in_rib,
                    last_error: nb
                        .bfd_error
                        .as_ref()
                        .map(|e| format!("BFD cannot run: {e}"))
                        .or_else(|| s.last_error.clone()),
                    routes_in: nb.adj_in.len(),
                    routes_out: nb.adj_out.len(),
                    rejected: nb.rejected,
                    treat_as_withdraw: nb.treat_as_withdraw,
                    stale_routes: nb.stale.len(),
                    not_sent: self.not_sent(id),
                    damped_prefixes: nb.held.iter().copied().collect(),
                    history: nb
                        .history
                        .iter()
                        .map(|f| api::FlapEvent {
                            at: cubenet_certs::time::format_rfc3339(f.at_unix),
                            event: if f.up {
                                api::UpDown::Up
                            } else {
                                api::UpDown::Down
                            },
                            reason: f.reason.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        api::Status {
            asn: self.cfg.asn,
            router_id: self.cfg.router_id,
            uptime_s: now.duration_since(self.started).as_secs(),
            fib_ready: self.fib_ready,
            restarting: self.restarting,
            own_subnets: self.own_subnets.clone(),
            neighbors,
        }
    }

    pub fn routes(&self, now: Instant) -> api::Routes {
        let routes = self
            .rib
            .iter_best()
            .map(|(p, b)| {
                let local = b.paths.iter().any(|x| x.source == LOCAL);
                let origin = if !local {
                    api::RouteOrigin::Learned
                } else if self.attached.contains(p) {
                    api::RouteOrigin::Host
                } else {
                    api::RouteOrigin::Site
                };
                let via: Vec<String> = b
                    .paths
                    .iter()
                    .map(|x| match self.neighbor_of(x.source) {
                        None => "local".to_string(),
                        Some(nb) => nb.cfg.name.clone(),
                    })
                    .collect();
                api::RouteStatus {
                    prefix: *p,
                    best: via.first().cloned(),
                    ecmp: b.paths.len(),
                    via,
                    origin,
                    as_path: b.paths[0].attrs.as_path.clone(),
                    candidates: self.rib.candidates(p).len(),
                    age_s: now.duration_since(b.since).as_secs(),
                }
            })
            .collect();
        api::Routes { routes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N0: NeighborId = NeighborId(0);
    use crate::wire::Open;
    use std::net::Ipv4Addr;

    /// A router with one neighbour (AS 65010) whose session is driven by
    /// hand, message by message.
    #[test]
    fn routes_learned_during_the_startup_grace_tell_the_driver_at_once() {
        let (mut r, now) = router("");
        // One neighbour, up for less than SETTLE, no End-of-RIB: still in
        // the grace, so routed only merges into overlayd; but it does so
        // as soon as something is learned.
        assert!(!r.fib_ready());
        r.on_message(N0, 1, Ok(announce("192.168.5.0/24")), now);
        assert!(!r.fib_ready());
        assert!(r.drain().contains(&Out::TablesChanged));
        assert_eq!(r.kernel_routes().len(), 1);
    }

    /// A BFD session that cannot send says why in the neighbour's
    /// `last_error` until a packet goes out again; packets with a TTL
    /// other than 255, or a gateway's that did not come through the
    /// overlay, are counted as discarded and change nothing.
    #[test]
    fn bfd_that_cannot_send_says_why_and_far_packets_are_only_counted() {
        let now = Instant::now();
        let cfg = Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [bfd]\ninterval_ms = 300\n\
             [[neighbor]]\nname = \"v6\"\naddress = \"fd00::9\"\nasn = 65010\n\
             bfd_interval_ms = 100\nbfd_multiplier = 5\n",
        )
        .unwrap();
        let mut r = Router::new(
            cfg,
            vec!["10.77.0.0/16".parse().unwrap()],
            vec![],
            None,
            vec![vec![]],
            now,
            1,
        )
        .unwrap();
        let b = r.neighbors[N0].bfd.as_ref().expect("BFD runs");
        assert_eq!(b.config().detect_mult, 5, "the neighbour's own multiplier");
        assert_eq!(b.config().desired_min_tx, Duration::from_millis(100));
        r.on_bfd_sent(
            N0,
            Err("no IPv6 BFD send socket: Address family not supported".into()),
        );
        let st = r.status(now);
        assert_eq!(
            st.neighbors[0].last_error.as_deref(),
            Some("BFD cannot run: no IPv6 BFD send socket: Address family not supported")
        );
        r.on_bfd_sent(N0, Ok(()));
        assert_eq!(r.status(now).neighbors[0].last_error, None);

        let pkt = r.neighbors[N0]
            .bfd
            .as_mut()
            .unwrap()
            .poll(now)
            .transmit
            .expect("a packet");
        let from: IpAddr = "fd00::9".parse().unwrap();
        r.on_bfd_datagram(from, Some(254), Some(false), &pkt, now);
        r.on_bfd_datagram(from, None, Some(false), &pkt, now);
        let st = r.status(now);
        assert_eq!(
            (st.neighbors[0].bfd_received, st.neighbors[0].bfd_discarded),
            (0, 2)
        );
        r.on_bfd_datagram(from, Some(255), Some(false), &pkt, now);
        assert_eq!(r.status(now).neighbors[0].bfd_received, 1);
        // A gateway's (a neighbour in the overlay) counts only through the
        // overlay interface.
        let (mut r, now) = router("[bfd]\nenabled = true\n");
        r.neighbors[N0].bfd = r.neighbors[N0]
            .bfd
            .take()
            .or_else(|| Some(bfd::Session::new(bfd::Config::default(), 7, 7, now)));
        let pkt = r.neighbors[N0]
            .bfd
            .as_mut()
            .unwrap()
            .poll(now)
            .transmit
            .expect("a packet");
        let gw: IpAddr = "10.77.1.9".parse().unwrap();
        assert!(r.neighbors[N0].overlay);
        for via in [Some(false), None] {
            r.on_bfd_datagram(gw, Some(255), via, &pkt, now);
        }
        let st = r.status(now);
        assert_eq!(
            (st.neighbors[0].bfd_received, st.neighbors[0].bfd_discarded),
            (0, 2)
        );
        r.on_bfd_datagram(gw, Some(255), Some(true), &pkt, now);
        assert_eq!(r.status(now).neighbors[0].bfd_received, 1);
    }

    /// A gateway neighbour runs no BFD of its own by default: overlayd's
    /// word on the tunnel (its probes) is its liveness check. Down ends an
    /// established session at once, without a NOTIFICATION; up lets it
    /// connect again at once. A router on the LAN runs BFD by default, and
    /// a gateway with `bfd = true` goes by BFD, not by overlayd.
    #[test]
    fn a_gateways_session_follows_overlayds_word_on_its_tunnel() {
        let now = Instant::now();
        let text = |gw_bfd: &str| {
            format!(
                "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
                 [[neighbor]]\nname = \"gw\"\naddress = \"10.77.2.1\"\nasn = 4200000201\n{gw_bfd}\
                 import = \"overlay\"\nexport = \"all\"\n\
                 [[neighbor]]\nname = \"lan\"\naddress = \"172.16.1.200\"\nasn = 65010\nimport = \"none\"\n"
            )
        };
        let router = |text: &str| {
            Router::new(
                Config::parse(text).unwrap(),
                vec!["10.77.0.0/16".parse().unwrap()],
                vec![],
                None,
                vec![vec![], vec![]],
                now,
                1,
            )
            .unwrap()
        };
        let mut r = router(&text(""));
        assert!(r.neighbors[N0].bfd.is_none(), "a gateway: no BFD");
        assert!(
            r.neighbors[NeighborId(1)].bfd.is_some(),
            "a LAN router: BFD"
        );
        establish(&mut r, N0, 4_200_000_201, Ipv4Addr::new(10, 77, 2, 1), now);
        r.set_tunnels(&[("gw".into(), true), ("unknown".into(), false)], now);
        assert!(r.neighbors[N0].session.is_established());
        r.drain();
        r.tunnel("gw", false, now);
        assert!(!r.neighbors[N0].session.is_established());
        let out = r.drain();
        assert!(
            !out.iter().any(|o| matches!(o, Out::Send { .. })),
            "no NOTIFICATION into a dead tunnel: {out:?}"
        );
        let st = r.status(now);
        assert_eq!(
            st.neighbors[0].last_error.as_deref(),
            Some("overlay tunnel down")
        );
        assert_eq!(st.neighbors[0].tunnel_up, Some(false));
        r.tunnel("gw", true, now);
        r.on_tick(now);
        assert!(
            r.drain()
                .iter()
                .any(|o| matches!(o, Out::Connect { n } if *n == N0)),
            "up again: connect at once"
        );
        // With BFD asked for, overlayd's word changes nothing.
        let mut r = router(&text("bfd = true\n"));
        assert!(r.neighbors[N0].bfd.is_some());
        establish(&mut r, N0, 4_200_000_201, Ipv4Addr::new(10, 77, 2, 1), now);
        r.tunnel("gw", false, now);
        assert!(r.neighbors[N0].session.is_established());
        assert_eq!(r.status(now).neighbors[0].tunnel_up, None);
    }

    /// A router with our `networks` (and overlay IPv6 address `own_v6`)
    /// whose one neighbour, "lan" (AS 65010, import `import`, export all),
    /// is up over an IPv6 session on a link where we are fd99::1 and
    /// fe80::1 (interface 7); its OPEN offers IPv6, and IPv4 when `ipv4`.
    fn lan_router_over_ipv6(
        import: &str,
        networks: &[&str],
        own_v6: Option<&str>,
        ipv4: bool,
        now: Instant,
    ) -> Router {
        let cfg = Config::parse(&format!(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[neighbor]]\nname = \"lan\"\naddress = \"fd99::9\"\nasn = 65010\nbfd = false\n\
             import = {import}\nexport = \"all\"\n"
        ))
        .unwrap();
        let mut r = Router::new(
            cfg,
            networks.iter().map(|n| n.parse().unwrap()).collect(),
            vec![],
            own_v6.map(|a| a.parse().unwrap()),
            vec![vec![]],
            now,
            1,
        )
        .unwrap();
        let local: IpAddr = "fd99::1".parse().unwrap();
        r.set_link(
            N0,
            crate::sockets::LinkAddrs {
                v4: None,
                v6: Some("fd99::1".parse().unwrap()),
                v6_local: Some("fe80::1".parse().unwrap()),
                ifindex: Some(7),
            },
            now,
        );
        r.on_connected(N0, 1, false, Some(local), now);
        let open = Open {
            ipv4,
            route_refresh: false,
            ..Open::new(65010, 90, Ipv4Addr::new(172, 16, 1, 9))
        };
        r.on_message(N0, 1, Ok(Message::Open(open)), now);
        r.on_message(N0, 1, Ok(Message::Keepalive), now);
        r
    }

    /// A router that gives only a link-local IPv6 next hop (in the global
    /// field, or beside an unspecified one) is routed to on its link: the
    /// kernel route names the interface the session is on. A global next
    /// hop, when given, is used as before.
    #[test]
    fn a_link_local_next_hop_is_installed_on_the_routers_link() {
        let now = Instant::now();
        let mut r = lan_router_over_ipv6("[\"fd50::/48\"]", &["fd77::/48"], None, false, now);
        let up = |p: &str, global: &str, local: Option<&str>| {
            Message::Update(Update {
                announced: vec![p.parse().unwrap()],
                attrs: Attrs {
                    as_path: vec![65010],
                    next_hop_v6: Some(global.parse().unwrap()),
                    next_hop_v6_local: local.map(|l| l.parse().unwrap()),
                    ..Attrs::default()
                },
                ..Update::default()
            })
        };
        r.on_message(N0, 1, Ok(up("fd50:0:0:1::/64", "fe80::9", None)), now);
        r.on_message(N0, 1, Ok(up("fd50:0:0:2::/64", "::", Some("fe80::9"))), now);
        r.on_message(
            N0,
            1,
            Ok(up("fd50:0:0:3::/64", "fd99::9", Some("fe80::9"))),
            now,
        );
        let want = |p: &str, via: &str, dev| crate::kernel::Want {
            prefix: p.parse().unwrap(),
            via: Some(via.parse().unwrap()),
            dev,
        };
        let mut k = r.kernel_routes();
        k.sort();
        assert_eq!(
            k,
            vec![
                want("fd50:0:0:1::/64", "fe80::9", Some(7)),
                want("fd50:0:0:2::/64", "fe80::9", Some(7)),
                want("fd50:0:0:3::/64", "fd99::9", None),
            ]
        );
    }

    /// A LAN router gets next hops of each family from our addresses on
    /// the link to it, whatever the session's family (RFC 4760, RFC 2545),
    /// never our overlay address; a family with no address of ours on that
    /// link is not sent, and counted with its reason.
    #[test]
    fn a_lan_router_gets_next_hops_of_both_families_from_the_link() {
        let now = Instant::now();
        // An IPv6 session; the link has no IPv4 address of ours yet.
        let mut r = lan_router_over_ipv6(
            "\"none\"",
            &["10.77.0.0/16", "fd77::/48"],
            Some("fd77::1:1"),
            true,
            now,
        );
        r.attach(
            &["10.77.1.11".parse().unwrap(), "fd77::1:11".parse().unwrap()],
            now,
        );
        let updates = |r: &mut Router| -> Vec<Update> {
            r.drain()
                .into_iter()
                .filter_map(|o| match o {
                    Out::Send { bytes, .. } => match wire::decode(&bytes) {
                        Ok(Message::Update(u)) if !u.announced.is_empty() => Some(u),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        };
        let u = updates(&mut r);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            u[0].announced,
            vec!["fd77::1:11/128".parse::<IpNet>().unwrap()]
        );
        assert_eq!(u[0].attrs.next_hop_v6, Some("fd99::1".parse().unwrap()));
        // With our link-local address beside it (RFC 2545).
        assert_eq!(
            u[0].attrs.next_hop_v6_local,
            Some("fe80::1".parse().unwrap())
        );
        let st = r.status(now);
        assert_eq!(
            st.neighbors[0]
                .not_sent
                .get("no IPv4 address of ours on the link to it (next_hop_v4)"),
            Some(&1),
            "{:?}",
            st.neighbors[0].not_sent
        );
        // An IPv4 address appears on the link: the IPv4 route follows,
        // with it as next hop.
        r.set_link(
            N0,
            crate::sockets::LinkAddrs {
                v4: Some(Ipv4Addr::new(172, 16, 1, 1)),
                v6: Some("fd99::1".parse().unwrap()),
                v6_local: Some("fe80::1".parse().unwrap()),
                ifindex: Some(7),
            },
            now,
        );
        let u = updates(&mut r);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            u[0].announced,
            vec!["10.77.1.11/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(u[0].attrs.next_hop_v4, Some(Ipv4Addr::new(172, 16, 1, 1)));
        assert!(r.status(now).neighbors[0].not_sent.is_empty());
    }

    fn router(extra: &str) -> (Router, Instant) {
        let now = Instant::now();
        let cfg = Config::parse(&format!(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n{extra}\n\
             [[neighbor]]\nname = \"site\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
             import = [\"192.168.0.0/16\"]\nexport = \"all\"\n"
        ))
        .unwrap();
        let mut r = Router::new(
            cfg,
            vec!["10.77.0.0/16".parse().unwrap()],
            vec![],
            None,
            vec![vec![]],
            now,
            1,
        )
        .unwrap();
        establish(&mut r, N0, 65010, Ipv4Addr::new(10, 77, 1, 9), now);
        r.drain();
        (r, now)
    }

    /// Brings neighbour `n` up on connection 1: its OPEN (IPv4 only), then
    /// its KEEPALIVE.
    fn establish(r: &mut Router, n: NeighborId, asn: u32, router_id: Ipv4Addr, now: Instant) {
        establish_gr(r, n, 1, asn, router_id, None, now);
    }

    /// [`establish`] on connection `conn`, the OPEN carrying `gr`.
    fn establish_gr(
        r: &mut Router,
        n: NeighborId,
        conn: ConnId,
        asn: u32,
        router_id: Ipv4Addr,
        gr: Option<wire::GracefulRestart>,
        now: Instant,
    ) {
        r.on_connected(n, conn, false, None, now);
        let open = Open {
            ipv6: false,
            route_refresh: false,
            graceful_restart: gr,
            ..Open::new(asn, 90, router_id)
        };
        r.on_message(n, conn, Ok(Message::Open(open)), now);
        r.on_message(n, conn, Ok(Message::Keepalive), now);
        assert!(r.neighbors[n].session.is_established());
    }

    /// What the certificate of a gateway of site 2 allows: the site's
    /// prefixes, its own addresses `me` and `me6`, and `more`.
    fn site2(me: &str, me6: &str, more: &[&str]) -> Vec<IpNet> {
        ["10.77.2.0/24", "fd77:2::/48", me, me6]
            .iter()
            .chain(more)
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// What the router sent since the last drain, decoded, per neighbour.
    fn sent(r: &mut Router) -> Vec<(NeighborId, Message)> {
        r.drain()
            .into_iter()
            .filter_map(|o| match o {
                Out::Send { n, bytes, .. } => Some((n, wire::decode(&bytes).ok()?)),
                _ => None,
            })
            .collect()
    }

    /// A route server's withdrawal of path `id` of `p`.
    fn unreflected(id: u32, p: &str) -> Message {
        Message::Update(Update {
            withdrawn: vec![p.parse().unwrap()],
            withdrawn_ids: vec![id],
            ..Update::default()
        })
    }

    /// Two reflectors (rr1, rr2) and two gateways of one site reached
    /// only through them (gw21 10.77.2.1, gw22 10.77.2.2, both allowed
    /// 10.77.2.0/24 and fd77:2::/48); the reflectors up with ADD-PATH.
    fn reflected_router(now: Instant) -> Router {
        let text = "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[neighbor]]\nname = \"rr1\"\naddress = \"198.18.0.201\"\nasn = 4200009001\nreflector = true\nimport = \"overlay\"\nexport = \"all\"\n\
             [[neighbor]]\nname = \"rr2\"\naddress = \"198.18.0.202\"\nasn = 4200009002\nreflector = true\nimport = \"overlay\"\nexport = \"all\"\n\
             [[neighbor]]\nname = \"gw21\"\naddress = \"10.77.2.1\"\nasn = 4200000201\ncert = \"-\"\nsession = false\nimport = \"overlay\"\n\
             [[neighbor]]\nname = \"gw22\"\naddress = \"10.77.2.2\"\nasn = 4200000202\ncert = \"-\"\nsession = false\nimport = \"overlay\"\n";
        let mut r = Router::new(
            Config::parse(text).unwrap(),
            vec![
                "10.77.0.0/16".parse().unwrap(),
                "fd77::/16".parse().unwrap(),
            ],
            vec!["10.77.1.0/24".parse().unwrap()],
            Some("fd77:1::1".parse().unwrap()),
            vec![
                vec![],
                vec![],
                site2("10.77.2.1/32", "fd77:2::1/128", &[]),
                site2("10.77.2.2/32", "fd77:2::2/128", &[]),
            ],
            now,
            1,
        )
        .unwrap();
        for (n, asn, id) in [
            (N0, 4_200_009_001, 201),
            (NeighborId(1), 4_200_009_002, 202),
        ] {
            let conn = n.0 as ConnId + 1;
            r.on_connected(n, conn, false, None, now);
            let open = Open {
                add_path_send: [true; 2],
                ..Open::new(asn, 90, Ipv4Addr::new(198, 18, 0, id))
            };
            r.on_message(n, conn, Ok(Message::Open(open)), now);
            r.on_message(n, conn, Ok(Message::Keepalive), now);
            assert!(r.neighbors[n].session.is_established());
            assert_eq!(r.neighbors[n].session.add_path_rx(), [true, true]);
        }
        r
    }

    /// Between gateways a path goes one transit hop at most: what a
    /// gateway originated is passed on, what it passed on is not.
    #[test]
    fn a_gateway_passes_on_another_gateways_own_paths_and_no_longer_ones() {
        let now = Instant::now();
        let gw = |name: &str, i: u8| {
            format!(
                "[[neighbor]]\nname = \"{name}\"\naddress = \"10.77.{i}.1\"\nasn = 4200000{i}01\n\
                 cert = \"-\"\nimport = \"overlay\"\nexport = \"all\"\n"
            )
        };
        let text = format!(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n{}{}{}",
            gw("gw2", 2),
            gw("gw3", 3),
            gw("gw4", 4)
        );
        let mut r = Router::new(
            Config::parse(&text).unwrap(),
            vec!["10.77.0.0/16".parse().unwrap()],
            vec![],
            None,
            vec![vec![], vec![], vec![]],
            now,
            1,
        )
        .unwrap();
        let (gw2, gw3, gw4) = (N0, NeighborId(1), NeighborId(2));
        for (n, i) in [(gw2, 2u8), (gw3, 3), (gw4, 4)] {
            let asn = 4_200_000_001 + 100 * u32::from(i);
            establish(&mut r, n, asn, Ipv4Addr::new(10, 77, i, 1), now);
        }
        r.drain();
        let from = |path: Vec<u32>, p: &str| {
            Message::Update(Update {
                announced: vec![p.parse().unwrap()],
                attrs: Attrs {
                    next_hop_v4: Some(Ipv4Addr::new(10, 77, 2, 1)),
                    as_path: path,
                    ..Attrs::default()
                },
                ..Update::default()
            })
        };
        // gw2's own host, and a host of gw3's that gw2 passes on.
        r.on_message(gw2, 1, Ok(from(vec![4_200_000_201], "10.77.2.11/32")), now);
        r.on_message(
            gw2,
            1,
            Ok(from(vec![4_200_000_201, 4_200_000_301], "10.77.3.11/32")),
            now,
        );
        assert!(
            has(&r, "10.77.2.11/32") && has(&r, "10.77.3.11/32"),
            "both used here"
        );
        let sent: Vec<IpNet> = sent(&mut r)
            .into_iter()
            .filter_map(|(n, m)| match m {
                Message::Update(u) if n == gw4 => Some(u.announced),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sent, ["10.77.2.11/32".parse::<IpNet>().unwrap()]);
    }

    /// A gateway reached through the reflectors and changed by a reload
    /// starts over: the reflectors are asked for their tables again, and
    /// its paths are back as soon as they send them, its tunnel still up.
    #[test]
    fn a_reflected_gateway_changed_by_reload_is_asked_of_the_reflectors_again() {
        let now = Instant::now();
        let mut r = reflected_router(now);
        let (rr1, rr2) = (N0, NeighborId(1));
        r.set_tunnels(&[("gw21".into(), true), ("gw22".into(), true)], now);
        r.on_message(
            rr1,
            1,
            Ok(reflected(2, "10.77.2.0/24", 4_200_000_202, "10.77.2.2")),
            now,
        );
        assert_eq!(via(&r, "10.77.2.0/24"), ["gw22"]);
        r.drain();
        let certs = Certified {
            networks: vec![
                "10.77.0.0/16".parse().unwrap(),
                "fd77::/16".parse().unwrap(),
            ],
            own_subnets: vec!["10.77.1.0/24".parse().unwrap()],
            own_v6: Some("fd77:1::1".parse().unwrap()),
            neighbor_subnets: vec![
                vec![],
                vec![],
                site2("10.77.2.1/32", "fd77:2::1/128", &[]),
                site2("10.77.2.2/32", "fd77:2::2/128", &["10.77.12.0/24"]),
            ],
        };
        let rep = r.reconfigure(r.cfg.clone(), certs, now).unwrap();
        assert_eq!(rep.reset.len(), 1, "{rep:?}");
        assert_eq!(rep.reset[0].name, "gw22");
        assert_eq!(via(&r, "10.77.2.0/24"), Vec::<String>::new());
        let asked: Vec<(NeighborId, bool)> = sent(&mut r)
            .into_iter()
            .filter_map(|(n, m)| match m {
                Message::RouteRefresh { ipv6 } => Some((n, ipv6)),
                _ => None,
            })
            .collect();
        assert_eq!(
            asked,
            [(rr1, false), (rr1, true), (rr2, false), (rr2, true)]
        );
        r.on_message(
            rr1,
            1,
            Ok(reflected(2, "10.77.2.0/24", 4_200_000_202, "10.77.2.2")),
            now,
        );
        assert_eq!(
            via(&r, "10.77.2.0/24"),
            ["gw22"],
            "back without a tunnel event"
        );
    }

    /// What a route server passes on: the gateway's own path, its next
    /// hop, with path identifier `id`.
    fn reflected(id: u32, p: &str, asn: u32, nh: &str) -> Message {
        let p: IpNet = p.parse().unwrap();
        let mut attrs = Attrs {
            as_path: vec![asn],
            ..Attrs::default()
        };
        match nh.parse().unwrap() {
            IpAddr::V4(a) => attrs.next_hop_v4 = Some(a),
            IpAddr::V6(a) => attrs.next_hop_v6 = Some(a),
        }
        Message::Update(Update {
            announced: vec![p],
            announced_ids: vec![id],
            attrs,
            ..Update::default()
        })
    }

    fn via(r: &Router, p: &str) -> Vec<String> {
        let p: IpNet = p.parse().unwrap();
        let mut v = r
            .fib()
            .into_iter()
            .find(|(q, _)| *q == p)
            .map(|(_, v)| v)
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Through route reflectors: both gateways' paths of a site prefix
    /// (two paths of one prefix, told apart by ADD-PATH) make one ECMP
    /// route over both gateways' tunnels; a path is used only while its
    /// gateway's tunnel is up, stays while either reflector holds it, and
    /// is checked against its gateway's certificate like a path from the
    /// gateway itself. The reflectors get our own paths only.
    #[test]
    fn paths_through_reflectors_are_their_gateways_own() {
        let now = Instant::now();
        let mut r = reflected_router(now);
        let (rr1, rr2, gw21, gw22) = (N0, NeighborId(1), NeighborId(2), NeighborId(3));
        assert!(
            r.next_deadline(now) > now,
            "nothing to do now: no busy loop"
        );
        for (n, conn) in [(rr1, 1), (rr2, 2)] {
            r.on_message(n, conn, Ok(Message::Update(Update::default())), now);
        }
        assert!(
            r.fib_ready(),
            "the reflectors' End-of-RIB is all there is to wait for"
        );
        r.set_tunnels(&[("gw21".into(), true), ("gw22".into(), true)], now);
        for (n, conn) in [(rr1, 1), (rr2, 2)] {
            r.on_message(
                n,
                conn,
                Ok(reflected(1, "10.77.2.0/24", 4_200_000_201, "10.77.2.1")),
                now,
            );
            r.on_message(
                n,
                conn,
                Ok(reflected(2, "10.77.2.0/24", 4_200_000_202, "10.77.2.2")),
                now,
            );
            r.on_message(
                n,
                conn,
                Ok(reflected(1, "fd77:2::/48", 4_200_000_201, "fd77:2::1")),
                now,
            );
        }
        assert_eq!(via(&r, "10.77.2.0/24"), ["gw21", "gw22"], "ECMP over both");
        assert_eq!(via(&r, "fd77:2::/48"), ["gw21"]);
        let st = r.status(now);
        assert_eq!(st.neighbors[gw21.0].state, api::SessionState::Reflected);
        assert!(st.neighbors[gw21.0].usable);
        // A gateway's tunnel down: its paths out, kept for when it is back.
        r.tunnel("gw22", false, now);
        assert_eq!(via(&r, "10.77.2.0/24"), ["gw21"]);
        assert_eq!(r.status(now).neighbors[gw22.0].flaps, 1);
        r.tunnel("gw22", true, now);
        assert_eq!(
            via(&r, "10.77.2.0/24"),
            ["gw21"],
            "damping: up, not yet stable"
        );
        let now = now + Duration::from_secs(4);
        r.on_message(rr1, 1, Ok(Message::Keepalive), now);
        r.on_message(rr2, 2, Ok(Message::Keepalive), now);
        r.on_tick(now);
        assert_eq!(via(&r, "10.77.2.0/24"), ["gw21", "gw22"]);
        // One reflector withdraws (or goes): the other still holds both.
        r.on_message(rr1, 1, Ok(unreflected(2, "10.77.2.0/24")), now);
        assert_eq!(via(&r, "10.77.2.0/24"), ["gw21", "gw22"]);
        r.on_closed(rr2, 2, "reflector killed", now);
        assert_eq!(
            via(&r, "10.77.2.0/24"),
            ["gw21"],
            "rr1 had withdrawn gw22's path"
        );
        // rr1 alone holds gw21's path: under a new identifier as well, then
        // the old one withdrawn, it stays.
        r.on_message(
            rr1,
            1,
            Ok(reflected(5, "10.77.2.0/24", 4_200_000_201, "10.77.2.1")),
            now,
        );
        r.on_message(rr1, 1, Ok(unreflected(1, "10.77.2.0/24")), now);
        assert_eq!(
            via(&r, "10.77.2.0/24"),
            ["gw21"],
            "still held under identifier 5"
        );
        // A more-specific the gateway's cert does not list, and a path
        // whose next hop is no gateway of ours: refused.
        r.on_message(
            rr1,
            1,
            Ok(reflected(3, "10.77.2.128/25", 4_200_000_201, "10.77.2.1")),
            now,
        );
        r.on_message(
            rr1,
            1,
            Ok(reflected(4, "10.77.9.0/24", 4_200_000_201, "10.77.9.1")),
            now,
        );
        assert!(!has(&r, "10.77.2.128/25"));
        assert!(!has(&r, "10.77.9.0/24"));
        assert_eq!(r.status(now).neighbors[0].rejected, 1);
        assert_eq!(r.status(now).neighbors[2].rejected, 1);
        // What rr1 is sent: our host, with our overlay address as the next
        // hop, and none of the paths it reflected to us.
        r.attach(&["10.77.1.11".parse().unwrap()], now);
        r.drain();
        r.on_message(rr1, 1, Ok(Message::RouteRefresh { ipv6: false }), now);
        let sent: Vec<Update> = sent(&mut r)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Update(u) if !u.announced.is_empty() => Some(u),
                _ => None,
            })
            .collect();
        let announced: Vec<IpNet> = sent.iter().flat_map(|u| u.announced.clone()).collect();
        assert!(
            !announced.contains(&"10.77.2.0/24".parse().unwrap()),
            "{announced:?}"
        );
        assert!(
            announced.contains(&"10.77.1.11/32".parse().unwrap()),
            "{announced:?}"
        );
        assert!(sent
            .iter()
            .all(|u| u.attrs.next_hop_v4 == Some(Ipv4Addr::new(10, 77, 1, 1))));
        // The last reflector gone: every reflected path goes.
        r.on_closed(rr1, 1, "reflector killed", now);
        assert!(!has(&r, "10.77.2.0/24"));
        assert!(!has(&r, "fd77:2::/48"));
    }

    /// [`router`]'s neighbour up (again) on connection `conn`, its OPEN
    /// carrying `gr`.
    fn site_up(r: &mut Router, conn: ConnId, gr: Option<wire::GracefulRestart>, now: Instant) {
        establish_gr(r, N0, conn, 65010, Ipv4Addr::new(10, 77, 1, 9), gr, now);
    }

    /// RFC 4724 helper: a neighbour that sent the capability and whose
    /// connection closed under it (a restart) keeps its routes, stale, until
    /// it is back and has sent its End-of-RIB; what it did not send again
    /// goes then. Counted as no flap.
    #[test]
    fn a_restarting_neighbours_routes_stay_until_its_end_of_rib() {
        let gr = |restarting| wire::GracefulRestart {
            restarting,
            time_s: 120,
            ipv4: Some(true),
            ipv6: None,
        };
        // Damping off: the test's own first reconnect would hold it.
        let (mut r, mut now) =
            router("[graceful_restart]\nenabled = true\n[damping]\nenabled = false\n");
        // Established by router() without the capability: again with it.
        r.on_closed(N0, 1, "test", now);
        assert!(!r.neighbors[N0].session.is_established());
        site_up(&mut r, 2, Some(gr(false)), now);
        r.on_message(N0, 2, Ok(announce("192.168.5.0/24")), now);
        r.on_message(N0, 2, Ok(announce("192.168.6.0/24")), now);
        let flaps = r.neighbors[N0].flaps;
        // Its process restarts: the connection closes, no NOTIFICATION.
        now += Duration::from_secs(1);
        r.on_closed(N0, 2, "closed by the neighbour", now);
        assert!(has(&r, "192.168.5.0/24") && has(&r, "192.168.6.0/24"));
        assert_eq!(r.status(now).neighbors[0].stale_routes, 2);
        assert_eq!(r.neighbors[N0].flaps, flaps, "a restart is no flap");
        now += Duration::from_secs(5);
        r.on_tick(now);
        assert!(has(&r, "192.168.5.0/24"));
        // Back, forwarding kept: one prefix again, then its End-of-RIB.
        site_up(&mut r, 3, Some(gr(true)), now);
        r.on_message(N0, 3, Ok(announce("192.168.5.0/24")), now);
        assert!(has(&r, "192.168.6.0/24"), "stale until the End-of-RIB");
        r.on_message(N0, 3, Ok(Message::Update(Update::default())), now);
        assert!(has(&r, "192.168.5.0/24"));
        assert!(
            !has(&r, "192.168.6.0/24"),
            "not sent again: gone at End-of-RIB"
        );
    }

    /// RFC 4724 speaker: a process begun by a graceful restart says so in
    /// its OPEN (R, F for both families) and sends its End-of-RIB only once
    /// its table is whole (here: the neighbour's End-of-RIB), after the
    /// routes; a later OPEN no longer says it restarted.
    #[test]
    fn a_restarted_router_says_so_and_defers_its_end_of_rib() {
        let now = Instant::now();
        let cfg = Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [graceful_restart]\nenabled = true\n\
             [[announce]]\nprefix = \"10.77.1.0/24\"\n\
             [[neighbor]]\nname = \"site\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
             import = [\"192.168.0.0/16\"]\nexport = \"all\"\n",
        )
        .unwrap();
        let mut r = Router::new(
            cfg,
            vec!["10.77.0.0/16".parse().unwrap()],
            vec!["10.77.1.0/24".parse().unwrap()],
            None,
            vec![vec![]],
            now,
            1,
        )
        .unwrap();
        r.set_restarted();
        let sent = |r: &mut Router| -> Vec<Message> {
            r.drain()
                .into_iter()
                .filter_map(|o| match o {
                    Out::Send { bytes, .. } => wire::decode(&bytes).ok(),
                    _ => None,
                })
                .collect()
        };
        let gr = wire::GracefulRestart {
            restarting: false,
            time_s: 120,
            ipv4: Some(true),
            ipv6: Some(true),
        };
        site_up(&mut r, 1, Some(gr), now);
        let out = sent(&mut r);
        let ours = out.iter().find_map(|m| match m {
            Message::Open(o) => o.graceful_restart,
            _ => None,
        });
        assert_eq!(
            ours,
            Some(wire::GracefulRestart {
                restarting: true,
                time_s: 120,
                ipv4: Some(true),
                ipv6: Some(true),
            })
        );
        let is_eor = |m: &Message| matches!(m, Message::Update(u) if u.is_end_of_rib());
        assert!(out
            .iter()
            .any(|m| matches!(m, Message::Update(u) if !u.announced.is_empty())));
        assert!(
            !out.iter().any(is_eor),
            "End-of-RIB before the table is whole"
        );
        assert!(r.status(now).restarting);
        // The neighbour's End-of-RIB makes the table whole: ours goes.
        r.on_message(N0, 1, Ok(Message::Update(Update::default())), now);
        assert!(r.fib_ready());
        assert!(sent(&mut r).iter().any(is_eor));
        assert!(!r.status(now).restarting);
        // Later OPENs: not restarting, forwarding still kept (F), as in the
        // OPENs before a restart, whose F bits FRR goes by.
        assert_eq!(
            r.neighbors[N0].session.cfg.graceful_restart,
            Some(wire::GracefulRestart {
                restarting: false,
                time_s: 120,
                ipv4: Some(true),
                ipv6: Some(true),
            })
        );
    }

    /// What is no restart ends the routes at once: a NOTIFICATION, BFD, or
    /// a neighbour without the capability; and a restart that does not come
    /// back within the restart time ends them then.
    #[test]
    fn stale_routes_go_at_once_without_a_restart_and_after_the_restart_time() {
        let gr = Some(wire::GracefulRestart {
            restarting: false,
            time_s: 30,
            ipv4: Some(true),
            ipv6: None,
        });
        let (mut r, mut now) =
            router("[graceful_restart]\nenabled = true\n[damping]\nenabled = false\n");
        r.on_closed(N0, 1, "test", now);
        // Without the capability from the neighbour: gone when it closes.
        site_up(&mut r, 2, None, now);
        r.on_message(N0, 2, Ok(announce("192.168.5.0/24")), now);
        r.on_closed(N0, 2, "closed", now);
        assert!(!has(&r, "192.168.5.0/24"), "no capability, no helper");
        // A NOTIFICATION: gone.
        site_up(&mut r, 3, gr, now);
        r.on_message(N0, 3, Ok(announce("192.168.5.0/24")), now);
        let cease = Notification::new(wire::Reason::Cease(wire::Cease::AdministrativeShutdown));
        r.on_message(N0, 3, Ok(Message::Notification(cease)), now);
        assert!(!has(&r, "192.168.5.0/24"), "a NOTIFICATION is no restart");
        // Dropped by us (it stopped reading what we sent): gone.
        site_up(&mut r, 7, gr, now);
        r.on_message(N0, 7, Ok(announce("192.168.5.0/24")), now);
        r.on_dropped(N0, 7, "does not read", now);
        assert!(
            !has(&r, "192.168.5.0/24"),
            "a connection we dropped is no restart"
        );
        // Closed, then not back within 30 s: gone then.
        site_up(&mut r, 4, gr, now);
        r.on_message(N0, 4, Ok(announce("192.168.5.0/24")), now);
        r.on_closed(N0, 4, "closed", now);
        now += Duration::from_secs(29);
        r.on_tick(now);
        assert!(has(&r, "192.168.5.0/24"));
        now += Duration::from_secs(2);
        r.on_tick(now);
        assert!(!has(&r, "192.168.5.0/24"), "the restart time is over");
        // Back without forwarding kept (no F): gone at its OPEN.
        site_up(&mut r, 5, gr, now);
        r.on_message(N0, 5, Ok(announce("192.168.5.0/24")), now);
        r.on_closed(N0, 5, "closed", now);
        let no_f = Some(wire::GracefulRestart {
            restarting: true,
            time_s: 30,
            ipv4: Some(false),
            ipv6: None,
        });
        site_up(&mut r, 6, no_f, now);
        assert!(!has(&r, "192.168.5.0/24"), "forwarding not kept");
    }

    fn announce(p: &str) -> Message {
        Message::Update(Update {
            announced: vec![p.parse().unwrap()],
            attrs: Attrs {
                as_path: vec![65010],
                next_hop_v4: Some(Ipv4Addr::new(10, 77, 1, 9)),
                ..Attrs::default()
            },
            ..Update::default()
        })
    }

    fn withdraw(p: &str) -> Message {
        Message::Update(Update {
            withdrawn: vec![p.parse().unwrap()],
            ..Update::default()
        })
    }

    fn has(r: &Router, p: &str) -> bool {
        let p: IpNet = p.parse().unwrap();
        r.fib().iter().any(|(q, _)| *q == p)
    }

    #[test]
    fn import_list_and_loops_are_enforced() {
        let (mut r, now) = router("");
        r.on_message(N0, 1, Ok(announce("192.168.5.0/24")), now);
        r.on_message(N0, 1, Ok(announce("10.99.0.0/16")), now);
        assert!(has(&r, "192.168.5.0/24"));
        assert!(!has(&r, "10.99.0.0/16"));
        assert_eq!(r.neighbors[0].rejected, 1);
        // Our own AS in the path: a loop.
        let mut m = announce("192.168.6.0/24");
        if let Message::Update(u) = &mut m {
            u.attrs.as_path = vec![65010, 4_200_000_101];
        }
        r.on_message(N0, 1, Ok(m), now);
        assert!(!has(&r, "192.168.6.0/24"));
        // Treat-as-withdraw removes what was there.
        let mut m = announce("192.168.5.0/24");
        if let Message::Update(u) = &mut m {
            u.treat_as_withdraw = Some("test".into());
        }
        r.on_message(N0, 1, Ok(m), now);
        assert!(!has(&r, "192.168.5.0/24"));
        assert!(r.neighbors[0].session.is_established());
    }

    /// Audit M10: a neighbour sending ROUTE-REFRESH in a loop gets our
    /// table once per [`REFRESH_EVERY`], not once per 23-byte message.
    #[test]
    fn a_route_refresh_flood_is_served_once_per_interval() {
        let (mut r, now) = router("");
        r.attach(&["10.77.1.11".parse().unwrap()], now);
        r.drain();
        let updates = |r: &mut Router| {
            r.drain()
                .iter()
                .filter(|o| matches!(o, Out::Send { bytes, .. } if matches!(wire::decode(bytes), Ok(Message::Update(u)) if !u.announced.is_empty())))
                .count()
        };
        let refresh = Message::RouteRefresh { ipv6: false };
        r.on_message(N0, 1, Ok(refresh.clone()), now);
        assert_eq!(updates(&mut r), 1, "the first is served");
        for i in 0..1000 {
            r.on_message(N0, 1, Ok(refresh.clone()), now + Duration::from_millis(i));
        }
        assert_eq!(updates(&mut r), 0, "the burst waits");
        // The neighbour keeps the session up (hold time 9 s).
        let tick = |r: &mut Router, at: Instant| {
            r.on_message(N0, 1, Ok(Message::Keepalive), at);
            r.on_tick(at);
        };
        tick(&mut r, now + REFRESH_EVERY / 2);
        assert_eq!(updates(&mut r), 0);
        tick(&mut r, now + REFRESH_EVERY);
        assert_eq!(updates(&mut r), 1, "served once when the interval is over");
        tick(&mut r, now + REFRESH_EVERY * 3 / 2);
        tick(&mut r, now + REFRESH_EVERY * 3);
        assert_eq!(updates(&mut r), 0, "and only once");
        assert!(r.neighbors[0].session.is_established());
    }

    /// Audit H2: a gateway cannot attract another site's traffic with a
    /// more-specific of that site's prefix, whatever origin it writes in
    /// the path. The prefix itself, relayed with the true origin, is
    /// transit and stays accepted.
    #[test]
    fn a_more_specific_of_another_gateways_site_prefix_is_refused() {
        let now = Instant::now();
        let cfg = Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[neighbor]]\nname = \"ams-gw1\"\naddress = \"10.77.2.1\"\nasn = 4200000201\n\
             bfd = false\nimport = \"overlay\"\nexport = \"all\"\ncert = \"ams.crt\"\n\
             [[neighbor]]\nname = \"evil-gw\"\naddress = \"10.77.3.1\"\nasn = 4200000301\n\
             bfd = false\nimport = \"overlay\"\nexport = \"all\"\ncert = \"evil.crt\"\n",
        )
        .unwrap();
        let site: IpNet = "192.168.2.0/24".parse().unwrap();
        let mut r = Router::new(
            cfg,
            vec!["10.77.0.0/16".parse().unwrap()],
            vec![],
            None,
            vec![vec![site], vec![]],
            now,
            1,
        )
        .unwrap();
        let evil = NeighborId(1);
        establish(&mut r, evil, 4200000301, Ipv4Addr::new(10, 77, 3, 1), now);
        let forged = |p: &str| {
            Message::Update(Update {
                announced: vec![p.parse().unwrap()],
                attrs: Attrs {
                    as_path: vec![4200000301, 4200000201],
                    next_hop_v4: Some(Ipv4Addr::new(10, 77, 3, 1)),
                    ..Attrs::default()
                },
                ..Update::default()
            })
        };
        r.on_message(evil, 1, Ok(forged("192.168.2.0/25")), now);
        assert!(!has(&r, "192.168.2.0/25"), "a more-specific was accepted");
        assert_eq!(r.neighbors[evil].rejected, 1);
        r.on_message(evil, 1, Ok(forged("192.168.2.0/24")), now);
        assert!(has(&r, "192.168.2.0/24"), "transit of the prefix itself");
    }

    /// Audit H2 for host routes: a gateway's address only from the
    /// gateway itself as the origin (ours from nobody); any other host of
    /// the overlay from any gateway (hosts move between sites), but not
    /// from a neighbour that is not a gateway.
    #[test]
    fn host_routes_come_from_gateways_and_a_gateways_address_from_it_alone() {
        let now = Instant::now();
        let cfg = Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[neighbor]]\nname = \"ams-gw1\"\naddress = \"10.77.2.1\"\nasn = 4200000201\n\
             bfd = false\nimport = \"overlay\"\nexport = \"all\"\ncert = \"ams.crt\"\n\
             [[neighbor]]\nname = \"evil-gw\"\naddress = \"10.77.3.1\"\nasn = 4200000301\n\
             bfd = false\nimport = \"overlay\"\nexport = \"all\"\ncert = \"evil.crt\"\n\
             [[neighbor]]\nname = \"lan\"\naddress = \"192.168.1.9\"\nasn = 65009\n\
             bfd = false\nimport = \"overlay\"\nexport = \"all\"\n",
        )
        .unwrap();
        let ams_gw1: IpNet = "10.77.2.1/32".parse().unwrap();
        let mut r = Router::new(
            cfg,
            vec!["10.77.0.0/16".parse().unwrap()],
            vec![],
            None,
            vec![vec![ams_gw1], vec!["10.77.3.1/32".parse().unwrap()], vec![]],
            now,
            1,
        )
        .unwrap();
        let (evil, lan) = (NeighborId(1), NeighborId(2));
        establish(&mut r, evil, 4200000301, Ipv4Addr::new(10, 77, 3, 1), now);
        establish(&mut r, lan, 65009, Ipv4Addr::new(192, 168, 1, 9), now);
        let from = |path: Vec<u32>, p: &str| {
            Message::Update(Update {
                announced: vec![p.parse().unwrap()],
                attrs: Attrs {
                    next_hop_v4: Some(Ipv4Addr::new(10, 77, 3, 1)),
                    as_path: path,
                    ..Attrs::default()
                },
                ..Update::default()
            })
        };
        let refusals = |r: &Router, n: NeighborId| r.neighbors[n].rejected;
        // ams-gw1's address, originated by evil-gw: refused.
        r.on_message(evil, 1, Ok(from(vec![4200000301], "10.77.2.1/32")), now);
        assert!(!has(&r, "10.77.2.1/32"), "another gateway's address");
        assert_eq!(refusals(&r, evil), 1);
        // Ours: refused whoever writes what.
        r.on_message(
            evil,
            1,
            Ok(from(vec![4200000301, 4200000102], "10.77.1.1/32")),
            now,
        );
        assert!(!has(&r, "10.77.1.1/32"), "our own address");
        assert_eq!(refusals(&r, evil), 2);
        // A host: any gateway may serve it.
        r.on_message(evil, 1, Ok(from(vec![4200000301], "10.77.2.11/32")), now);
        assert!(has(&r, "10.77.2.11/32"));
        // Relayed with ams-gw1 as its origin, ams-gw1's address is transit.
        r.on_message(
            evil,
            1,
            Ok(from(vec![4200000301, 4200000201], "10.77.2.1/32")),
            now,
        );
        assert!(has(&r, "10.77.2.1/32"));
        // A neighbour that is not a gateway originates no host route.
        r.on_message(lan, 1, Ok(from(vec![65009], "10.77.2.12/32")), now);
        assert!(!has(&r, "10.77.2.12/32"));
        assert_eq!(refusals(&r, lan), 1);
    }

    fn is_notification(o: &Out) -> bool {
        matches!(o, Out::Send { bytes, .. } if matches!(wire::decode(bytes), Ok(Message::Notification(_))))
    }

    /// RFC 7606 end to end: a malformed attribute on the wire withdraws the
    /// prefixes of that UPDATE only; the session and the neighbour's other
    /// routes stay.
    #[test]
    fn a_malformed_update_withdraws_only_its_own_routes() {
        let (mut r, now) = router("");
        r.on_message(N0, 1, Ok(announce("192.168.5.0/24")), now);
        r.on_message(N0, 1, Ok(announce("192.168.6.0/24")), now);
        assert!(has(&r, "192.168.6.0/24"));
        r.drain();
        // 192.168.6.0/24 again, its ORIGIN changed to 7 (there is none).
        let mut b = wire::encode(&announce("192.168.6.0/24"));
        let pos = b
            .windows(3)
            .position(|w| w == [0x40, 1, 1])
            .expect("origin attribute");
        b[pos + 3] = 7;
        r.on_message(N0, 1, wire::decode(&b), now);
        assert!(has(&r, "192.168.5.0/24"));
        assert!(!has(&r, "192.168.6.0/24"));
        assert!(r.neighbors[0].session.is_established());
        assert_eq!(r.neighbors[0].treat_as_withdraw, 1);
        assert!(!r.drain().iter().any(is_notification));
        // The same prefix announced properly comes back.
        r.on_message(N0, 1, Ok(announce("192.168.6.0/24")), now);
        assert!(has(&r, "192.168.6.0/24"));
    }

    /// What a neighbour (or its TCP connection) can do to the router.
    #[derive(Debug, Clone)]
    #[allow(clippy::large_enum_variant)]
    enum Event {
        Message(ConnId, Message),
        DecodeError(ConnId),
        Connected(ConnId, bool),
        Closed(ConnId),
        Wait(u64),
    }

    fn any_event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        let conn = prop_oneof![3 => Just(1u64), 1 => Just(2u64)];
        let prefix = prop_oneof![
            Just("192.168.5.0/24"),
            Just("192.168.6.0/24"),
            Just("192.168.0.0/16"),
            Just("10.99.0.0/16"),
            Just("0.0.0.0/0"),
            Just("fd77::/64"),
        ]
        .prop_map(|p| p.parse::<IpNet>().unwrap());
        let prefixes = proptest::collection::vec(prefix, 0..4);
        let asn = prop_oneof![Just(65010u32), Just(4_200_000_101), any::<u32>()];
        let open = (
            asn.clone(),
            prop_oneof![Just(0u16), Just(3), Just(90), any::<u16>()],
            any::<u32>(),
            any::<[bool; 4]>(),
        )
            .prop_map(|(asn, hold_time, id, f)| {
                Message::Open(Open {
                    asn,
                    hold_time,
                    router_id: std::net::Ipv4Addr::from(id),
                    ipv4: f[0],
                    ipv6: f[1],
                    asn4: f[2],
                    route_refresh: f[3],
                    graceful_restart: None,
                    add_path_send: [false; 2],
                    add_path_receive: [false; 2],
                })
            });
        let update = (
            prefixes.clone(),
            prefixes,
            prop_oneof![Just(vec![65010]), proptest::collection::vec(asn, 0..3)],
            proptest::option::of(prop_oneof![Just(0x0a4d_0109u32), any::<u32>()]),
            proptest::option::weighted(0.2, Just("malformed".to_string())),
        )
            .prop_map(|(withdrawn, announced, as_path, nh, taw)| {
                Message::Update(Update {
                    withdrawn,
                    announced,
                    attrs: Attrs {
                        as_path,
                        next_hop_v4: nh.map(std::net::Ipv4Addr::from),
                        next_hop_v6: Some("fd77::1:9".parse().unwrap()),
                        ..Attrs::default()
                    },
                    treat_as_withdraw: taw,
                    unreach_v6: false,
                    withdrawn_ids: vec![],
                    announced_ids: vec![],
                })
            });
        let message = prop_oneof![
            1 => open,
            2 => Just(Message::Keepalive),
            1 => (1u8..7, any::<u8>()).prop_map(|(c, s)| Message::Notification(Notification::new(wire::Reason::from_codes(c, s)))),
            1 => any::<bool>().prop_map(|ipv6| Message::RouteRefresh { ipv6 }),
            6 => update,
        ];
        prop_oneof![
            12 => (conn.clone(), message).prop_map(|(c, m)| Event::Message(c, m)),
            1 => conn.clone().prop_map(Event::DecodeError),
            1 => (conn.clone(), any::<bool>()).prop_map(|(c, o)| Event::Connected(c, o)),
            1 => conn.prop_map(Event::Closed),
            1 => (0u64..20_000).prop_map(Event::Wait),
        ]
    }

    proptest::proptest! {
        /// Whatever a neighbour sends, in whatever order and state: no
        /// panic, and only what its import list allows ever reaches the
        /// forwarding table.
        #[test]
        fn arbitrary_neighbour_behaviour_keeps_the_import_policy(events in proptest::collection::vec(any_event(), 1..30)) {
            let (mut r, mut now) = router("");
            let allowed: IpNet = "192.168.0.0/16".parse().unwrap();
            for e in events {
                match e {
                    Event::Message(c, m) => r.on_message(N0, c, Ok(m), now),
                    Event::DecodeError(c) => {
                        let e = DecodeError { notification: Notification::new(wire::Reason::Update(wire::UpdateError::MalformedAttributeList)), reason: "test".into() };
                        r.on_message(N0, c, Err(e), now)
                    }
                    Event::Connected(c, o) => r.on_connected(N0, c, o, None, now),
                    Event::Closed(c) => r.on_closed(N0, c, "test", now),
                    Event::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        r.on_tick(now);
                    }
                }
                r.drain();
                for (p, _) in r.fib() {
                    proptest::prop_assert!(allowed.contains(&p), "{} in the table", p);
                }
                let _ = r.status(now);
                let _ = r.next_deadline(now);
            }
        }

        /// Any change to the bytes of an UPDATE: either the message cannot
        /// be parsed (NOTIFICATION, the session resets: RFC 7606 leaves no
        /// other choice), or the session stays and the neighbour's other
        /// routes stay unless the UPDATE itself names them.
        #[test]
        fn a_mutated_update_affects_only_what_it_names(pos in proptest::prelude::any::<usize>(), val in proptest::prelude::any::<u8>()) {
            let (mut r, now) = router("");
            r.on_message(N0, 1, Ok(announce("192.168.5.0/24")), now);
            r.drain();
            let mut b = wire::encode(&announce("192.168.6.0/24"));
            let at = wire::HEADER_LEN + pos % (b.len() - wire::HEADER_LEN);
            b[at] = val;
            let m = wire::decode(&b);
            let kept: IpNet = "192.168.5.0/24".parse().unwrap();
            let names_it = match &m {
                Ok(Message::Update(u)) => u.withdrawn.contains(&kept) || u.announced.contains(&kept),
                _ => false,
            };
            let parsed = matches!(m, Ok(Message::Update(_)));
            r.on_message(N0, 1, m, now);
            if parsed {
                proptest::prop_assert!(r.neighbors[0].session.is_established());
                proptest::prop_assert!(!r.drain().iter().any(is_notification));
                if !names_it {
                    proptest::prop_assert!(has(&r, "192.168.5.0/24"));
                }
            }
        }
    }

    #[test]
    fn max_prefixes_closes_the_session() {
        let (mut r, now) = router("[limits]\nmax_prefixes = 2");
        for p in ["192.168.1.0/24", "192.168.2.0/24", "192.168.3.0/24"] {
            r.on_message(N0, 1, Ok(announce(p)), now);
        }
        assert!(!r.neighbors[0].session.is_established());
        assert!(r.fib().is_empty());
        let sent = r.drain();
        assert!(sent.iter().any(|o| matches!(o, Out::Send { bytes, .. }
            if wire::decode(bytes) == Ok(Message::Notification(Notification::new(wire::Reason::Cease(wire::Cease::MaxPrefixes)))))));
    }

    #[test]
    fn per_prefix_damping_holds_a_flapping_prefix_only() {
        let (mut r, mut now) = router("[timers]\nhold_time_s = 0\n[damping]\nper_prefix = true");
        r.on_message(N0, 1, Ok(announce("192.168.7.0/24")), now);
        r.on_message(N0, 1, Ok(announce("192.168.8.0/24")), now);
        for _ in 0..8 {
            now += Duration::from_secs(10);
            r.on_message(N0, 1, Ok(withdraw("192.168.7.0/24")), now);
            now += Duration::from_secs(10);
            r.on_message(N0, 1, Ok(announce("192.168.7.0/24")), now);
        }
        assert!(!has(&r, "192.168.7.0/24"), "flapping prefix still used");
        assert!(has(&r, "192.168.8.0/24"));
        let st = r.status(now);
        assert_eq!(
            st.neighbors[0].damped_prefixes,
            vec!["192.168.7.0/24".parse::<IpNet>().unwrap()]
        );
        // Quiet for the maximum suppression time: it is used again.
        now += Duration::from_secs(3601);
        r.on_tick(now);
        assert!(has(&r, "192.168.7.0/24"));
    }

    #[test]
    fn a_site_prefix_follows_its_probe() {
        let now = Instant::now();
        let cfg = Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.50\"\n",
        )
        .unwrap();
        let site: IpNet = "10.77.1.0/24".parse().unwrap();
        let mut r = Router::new(
            cfg,
            vec!["10.77.0.0/16".parse().unwrap()],
            vec![site],
            None,
            vec![],
            now,
            1,
        )
        .unwrap();
        let announced = |r: &Router| r.rib.best(&site).is_some();
        let probes = r.probes();
        assert_eq!(probes.len(), 1);
        assert_eq!(probes[0].1.check.to_string(), "icmp://10.77.1.50");
        assert_eq!((probes[0].1.rise, probes[0].1.fall), (2, 2));
        // Not before the probe passed twice in a row.
        assert!(!announced(&r));
        r.probe_result(site, Ok(()), now);
        assert!(!announced(&r));
        r.probe_result(site, Ok(()), now + Duration::from_secs(1));
        assert!(announced(&r));
        // One failure is not enough; two in a row withdraw it.
        let t = now + Duration::from_secs(10);
        r.probe_result(site, Err("no echo reply".into()), t);
        assert!(announced(&r));
        r.probe_result(
            site,
            Err("no echo reply".into()),
            t + Duration::from_secs(1),
        );
        assert!(!announced(&r));
        r.probe_result(site, Ok(()), t + Duration::from_secs(2));
        assert!(!announced(&r));
        r.probe_result(site, Ok(()), t + Duration::from_secs(3));
        assert!(announced(&r));
    }

    /// `[[announce]]` on reload: a new prefix is announced to the
    /// neighbour, a removed one withdrawn, one whose probe changed keeps
    /// its verdict until the new probe says otherwise; the session stays.
    #[test]
    fn a_reload_announces_and_withdraws_site_prefixes() {
        let base = "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[neighbor]]\nname = \"site\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
             import = [\"192.168.0.0/16\"]\nexport = \"all\"\n";
        let cfg = |extra: &str| Config::parse(&format!("{base}{extra}")).unwrap();
        let own: Vec<IpNet> = vec![
            "10.77.1.0/24".parse().unwrap(),
            "10.77.8.0/24".parse().unwrap(),
        ];
        let certs = Certified {
            networks: vec!["10.77.0.0/16".parse().unwrap()],
            own_subnets: own.clone(),
            own_v6: None,
            neighbor_subnets: vec![vec![]],
        };
        let now = Instant::now();
        let probed = "[[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.50\"\n";
        let mut r = Router::new(
            cfg(probed),
            certs.networks.clone(),
            own,
            None,
            vec![vec![]],
            now,
            1,
        )
        .unwrap();
        establish(&mut r, N0, 65010, Ipv4Addr::new(10, 77, 1, 9), now);
        let site: IpNet = "10.77.1.0/24".parse().unwrap();
        r.probe_result(site, Ok(()), now);
        r.probe_result(site, Ok(()), now);
        assert!(r.rib.best(&site).is_some());
        r.drain();
        let sent = |r: &mut Router| -> (Vec<IpNet>, Vec<IpNet>) {
            let mut a = Vec::new();
            let mut w = Vec::new();
            for o in r.drain() {
                if let Out::Send { bytes, .. } = o {
                    if let Ok(Message::Update(u)) = wire::decode(&bytes) {
                        a.extend(u.announced);
                        w.extend(u.withdrawn);
                    }
                }
            }
            (a, w)
        };
        // A second prefix, unprobed: announced at once. The probe of the
        // first changed (its interval): still announced.
        let more = "[[announce]]\nprefix = \"10.77.1.0/24\"\nprobe = \"10.77.1.50\"\nprobe_interval_ms = 500\n\
                    [[announce]]\nprefix = \"10.77.8.0/24\"\n";
        let rep = r.reconfigure(cfg(more), certs.clone(), now).unwrap();
        assert_eq!(
            rep.prefixes_added,
            vec!["10.77.8.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(rep.probes_changed, vec![site]);
        assert_eq!(
            sent(&mut r),
            (vec!["10.77.8.0/24".parse().unwrap()], vec![])
        );
        assert!(r.rib.best(&site).is_some());
        assert_eq!(r.probes()[0].1.interval, Duration::from_millis(500));
        // Both gone: both withdrawn; the session stays.
        let rep = r.reconfigure(cfg(""), certs.clone(), now).unwrap();
        assert_eq!(rep.prefixes_removed.len(), 2);
        let (a, mut w) = sent(&mut r);
        w.sort();
        assert!(a.is_empty());
        assert_eq!(w, vec![site, "10.77.8.0/24".parse().unwrap()]);
        assert!(r.probes().is_empty());
        assert!(r.neighbors[0].session.is_established());
        assert_eq!(r.neighbors[0].flaps, 0);
        // A prefix the certificate does not allow: refused, nothing changes.
        let e = r
            .reconfigure(cfg("[[announce]]\nprefix = \"10.77.9.0/24\"\n"), certs, now)
            .unwrap_err();
        assert!(e.to_string().starts_with("announce[0].prefix"), "{e}");
        assert!(sent(&mut r).0.is_empty());
    }

    /// What a reload counts as a change: an export policy alone is
    /// applied on the running session; `[bfd]` resets the neighbours that
    /// run BFD and no other; `[timers]` resets every one; the order of the
    /// list is no change. Each reset is a Cease "other configuration
    /// change" on its connection.
    #[test]
    fn what_a_reload_resets() {
        let text = |global: &str, export_a: &str, swap: bool| {
            let a = format!(
                "[[neighbor]]\nname = \"a\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
                 import = [\"192.168.0.0/16\"]\nexport = \"{export_a}\"\n"
            );
            // A gateway with BFD asked for (a gateway's default is none).
            let b = "[[neighbor]]\nname = \"b\"\naddress = \"10.77.2.1\"\nasn = 4200000201\n\
                     bfd = true\nimport = \"overlay\"\nexport = \"all\"\n";
            let (x, y) = if swap {
                (b.to_string(), a)
            } else {
                (a, b.to_string())
            };
            Config::parse(&format!(
                "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n{global}\n{x}{y}"
            ))
            .unwrap()
        };
        let certs = Certified {
            networks: vec!["10.77.0.0/16".parse().unwrap()],
            neighbor_subnets: vec![vec![], vec![]],
            ..Certified::default()
        };
        let now = Instant::now();
        let mut r = Router::new(
            text("", "all", false),
            certs.networks.clone(),
            vec![],
            None,
            vec![vec![], vec![]],
            now,
            1,
        )
        .unwrap();
        establish(
            &mut r,
            NeighborId(0),
            65010,
            Ipv4Addr::new(10, 77, 1, 9),
            now,
        );
        establish(
            &mut r,
            NeighborId(1),
            4200000201,
            Ipv4Addr::new(10, 77, 2, 1),
            now,
        );
        r.attach(&["10.77.1.11".parse().unwrap()], now);
        r.drain();
        let ceases = |r: &mut Router| -> Vec<String> {
            r.drain()
                .iter()
                .filter_map(|o| match o {
                    Out::Send { n, bytes, .. } => match wire::decode(bytes) {
                        Ok(Message::Notification(x))
                            if x.reason
                                == wire::Reason::Cease(wire::Cease::OtherConfigurationChange) =>
                        {
                            Some(r.neighbors[*n].cfg.name.clone())
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        };
        let up = |r: &Router, name: &str| {
            r.status(now)
                .neighbors
                .iter()
                .any(|n| n.name == name && n.state == api::SessionState::Established)
        };
        // The same config in another order: nothing.
        let rep = r
            .reconfigure(text("", "all", true), certs.clone(), now)
            .unwrap();
        assert_eq!(rep, api::Reloaded::default());
        assert_eq!(r.status(now).neighbors[0].name, "b");
        // Export "none" for a: our host route is withdrawn from it, no reset.
        let rep = r
            .reconfigure(text("", "none", true), certs.clone(), now)
            .unwrap();
        assert_eq!(rep.updated, vec!["a"]);
        assert!(rep.reset.is_empty());
        let withdrawn = r.drain().iter().any(|o| matches!(o, Out::Send { n: NeighborId(0), bytes, .. }
            if matches!(wire::decode(bytes), Ok(Message::Update(u)) if u.withdrawn == vec!["10.77.1.11/32".parse::<IpNet>().unwrap()])));
        assert!(withdrawn);
        assert!(up(&r, "a") && up(&r, "b"));
        // [bfd]: b runs BFD, a does not.
        let rep = r
            .reconfigure(
                text("[bfd]\ninterval_ms = 100\n", "none", true),
                certs.clone(),
                now,
            )
            .unwrap();
        assert_eq!(
            rep.reset,
            vec![api::ResetNeighbor {
                name: "b".into(),
                changed: vec!["[bfd]".into()]
            }]
        );
        assert_eq!(ceases(&mut r), vec!["b"]);
        assert!(up(&r, "a") && !up(&r, "b"));
        // [timers]: both.
        let rep = r
            .reconfigure(
                text(
                    "[timers]\nhold_time_s = 30\n[bfd]\ninterval_ms = 100\n",
                    "none",
                    true,
                ),
                certs,
                now,
            )
            .unwrap();
        let mut reset: Vec<String> = rep.reset.iter().map(|x| x.name.clone()).collect();
        reset.sort();
        assert_eq!(reset, vec!["a", "b"]);
        assert!(rep.reset.iter().all(|x| x.changed == vec!["timers"]));
        assert_eq!(ceases(&mut r), vec!["a"], "b had no connection left");
        assert_eq!(r.status(now).neighbors.len(), 2);
        let a = r.neighbor_by_addr("10.77.1.9".parse().unwrap()).unwrap();
        assert_eq!(r.neighbors[a].session.cfg.hold_time, 30);
        assert_eq!(r.neighbors[a].flaps, 1);
    }

    /// `bfd_multihop` (FRR's BFD beside `ttl-security`) is per neighbour:
    /// the driver takes a neighbour's BFD only on its own port, and a
    /// reload that changes it resets that neighbour alone, as a BFD
    /// setting.
    #[test]
    fn bfd_multihop_is_per_neighbour_and_a_bfd_change() {
        let text = |multihop: bool| {
            Config::parse(&format!(
                "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
                 [[neighbor]]\nname = \"frr\"\naddress = \"172.16.1.202\"\nasn = 65010\n\
                 bfd_multihop = {multihop}\n\
                 [[neighbor]]\nname = \"b\"\naddress = \"10.77.2.1\"\nasn = 4200000201\n"
            ))
            .unwrap()
        };
        let certs = Certified {
            networks: vec!["10.77.0.0/16".parse().unwrap()],
            neighbor_subnets: vec![vec![], vec![]],
            ..Certified::default()
        };
        let now = Instant::now();
        let mut r = Router::new(
            text(true),
            certs.networks.clone(),
            vec![],
            None,
            vec![vec![], vec![]],
            now,
            1,
        )
        .unwrap();
        assert!(r.bfd_multihop("172.16.1.202".parse().unwrap()));
        assert!(!r.bfd_multihop("10.77.2.1".parse().unwrap()));
        assert!(!r.bfd_multihop("10.99.0.1".parse().unwrap()), "unknown");
        let rep = r.reconfigure(text(false), certs, now).unwrap();
        assert_eq!(
            rep.reset,
            vec![api::ResetNeighbor {
                name: "frr".into(),
                changed: vec!["bfd".into()]
            }]
        );
        assert!(!r.bfd_multihop("172.16.1.202".parse().unwrap()));
    }

    /// Damping goes on across a reset by reload: a link it holds down
    /// stays held down, and the reset itself adds no penalty.
    #[test]
    fn a_suppressed_neighbour_reset_by_reload_stays_suppressed() {
        let text = |import: &str| {
            Config::parse(&format!(
                "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
                 [damping]\nsuppress = 1500\n\
                 [[neighbor]]\nname = \"site\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
                 import = [\"{import}\"]\nexport = \"all\"\n"
            ))
            .unwrap()
        };
        let mut now = Instant::now();
        let certs = Certified {
            networks: vec!["10.77.0.0/16".parse().unwrap()],
            neighbor_subnets: vec![vec![]],
            ..Certified::default()
        };
        let mut r = Router::new(
            text("192.168.0.0/16"),
            certs.networks.clone(),
            vec![],
            None,
            vec![vec![]],
            now,
            1,
        )
        .unwrap();
        let suppressed = |r: &Router, now| r.status(now).neighbors[0].suppressed;
        for _ in 0..2 {
            establish(&mut r, N0, 65010, Ipv4Addr::new(10, 77, 1, 9), now);
            now += Duration::from_secs(1);
            r.on_closed(N0, 1, "test", now);
        }
        r.on_tick(now);
        assert!(suppressed(&r, now));
        let penalty = r.status(now).neighbors[0].penalty;
        let rep = r
            .reconfigure(text("192.168.0.0/17"), certs.clone(), now)
            .unwrap();
        assert_eq!(rep.reset.len(), 1);
        r.on_tick(now);
        let st = r.status(now);
        assert!(st.neighbors[0].suppressed, "{:?}", st.neighbors[0]);
        assert_eq!(st.neighbors[0].state, api::SessionState::Idle);
        assert_eq!(st.neighbors[0].penalty, penalty);
        // And an established neighbour reset by reload earns no penalty.
        let (mut r, now) = router("");
        let rep = r
            .reconfigure(
                Config::parse(
                    "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
                     [[neighbor]]\nname = \"site\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
                     import = [\"192.168.0.0/17\"]\nexport = \"all\"\n",
                )
                .unwrap(),
                Certified {
                    networks: vec!["10.77.0.0/16".parse().unwrap()],
                    neighbor_subnets: vec![vec![]],
                    ..Certified::default()
                },
                now,
            )
            .unwrap();
        assert_eq!(rep.reset.len(), 1);
        let st = r.status(now);
        assert_eq!(st.neighbors[0].penalty, 0.0);
        assert_eq!(st.neighbors[0].flaps, 1);
    }

    #[test]
    fn an_announcement_the_cert_does_not_allow_is_refused() {
        let cfg = Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[announce]]\nprefix = \"10.77.9.0/24\"\n",
        )
        .unwrap();
        let e = Router::new(
            cfg,
            vec![],
            vec!["10.77.1.0/24".parse().unwrap()],
            None,
            vec![],
            Instant::now(),
            1,
        )
        .err()
        .unwrap();
        assert!(
            matches!(e, RouterError::AnnounceNotAllowed { index: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("announce[0].prefix"), "{e}");
    }

    #[test]
    fn per_prefix_damping_is_off_by_default() {
        let (mut r, mut now) = router("");
        for _ in 0..8 {
            now += Duration::from_secs(10);
            r.on_message(N0, 1, Ok(withdraw("192.168.7.0/24")), now);
            r.on_message(N0, 1, Ok(announce("192.168.7.0/24")), now);
        }
        assert!(has(&r, "192.168.7.0/24"));
    }
}
