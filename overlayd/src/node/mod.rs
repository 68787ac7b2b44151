//! The data plane's decisions: what to do with a datagram from the network,
//! a packet from the TUN, a control request and a timer tick. Functions
//! here are synchronous, take the time (`now`, and the wall clock on
//! ticks) and fill an [`Outbox`] with what is to be done: datagrams, TUN
//! writes and events. The node does no I/O and reads no clock and no
//! RNG; the tokio driver owns the sockets, the TUN and the subscribers, and
//! flushes the outbox. Locks are never held across an `.await`.
//!
//! The node's parts, one file each: `receive` (datagrams, handshakes,
//! admission), `forward` (where a packet goes), `messages` (the in-band
//! protocol, attaching), `liveness` (ticks, gateway choice, detaching),
//! `whois` (identities for the firewall), `policy` (the firewall on this
//! node's own traffic) and `control` (reload, status, routes); this file
//! holds the state they share and how it is built.
//!
//! # Locks on the forwarding path
//!
//! What every packet reads is published, not locked: the peers by receiver
//! index ([`PeerSlots`]: one atomic load), the forwarding table (an
//! immutable copy swapped whole after each change, read through
//! `arc_swap`), this node's identity, and each peer's endpoint,
//! certificate and gateway liveness. A packet a gateway forwards from one
//! peer to another therefore takes **2 lock acquisitions**: the receiving
//! peer's tunnel to decrypt and the sending peer's tunnel to encrypt
//! (boringtun's `Tunn` needs `&mut`). Inside the first, boringtun takes its
//! own replay-window mutex of the session; it is never contended, as it is
//! only taken under the tunnel lock. A host sending or receiving takes its
//! one tunnel lock, and the firewall's flow table when `[firewall]` is on
//! (it keeps connection state; forwarded packets do not pass it).
//!
//! # The control state: one owner
//!
//! Everything the node decides with beyond those published tables is plain
//! data in one [`Control`]: the peer table with each peer's timers and
//! gateway liveness, the forwarding table as it is edited, identities and
//! WhoIs questions, and the events not yet handed out. The functions that
//! decide take it as `&mut Control`; it has no lock inside and reads no
//! clock. The node keeps it behind a single mutex, as quinn keeps
//! quinn-proto's connection state: whoever holds it is its one owner
//! for that call. A worker takes it only for what changes it — a
//! handshake, the first data of a session, an in-band message (probes,
//! certificates, WhoIs) — never for a data packet of a known session. So
//! peers, routes and attachment change together (a peer the timer removed
//! cannot be attached again by a packet of it still in flight), and
//! events leave in the order they happened, whichever worker made them
//! ([`Node::flush_events`]).
//!
//! The node holds three locks in all: this one, each peer's tunnel, and
//! the firewall's flow table (connection state every packet of a host with
//! `[firewall]` updates, as a tunnel's counters are). When more than one
//! is held they are taken in this order: flow table, control state,
//! tunnel. A fourth, the ICMP errors' rate limit, is a leaf taken only
//! where a packet is dropped with an error (TTL expired, no route). A
//! fifth, the per-source handshake limit ([`crate::source_limit`]), is a
//! leaf taken once per handshake initiation screened under load, never
//! for data.
//!
//! # Time
//!
//! boringtun 0.7.1 keeps its own timers on the real clock (rekey after
//! 120 s, session expiry after 180 s, keepalives); a wrapper cannot change
//! what `Tunn` reads inside. Its `mock-instant` feature is not used: it
//! swaps the clock of the whole process (one global mock clock for every
//! tunnel), and cargo's feature unification would build the daemons the
//! end-to-end tests run with it under `cargo test`. The node's own
//! decisions (liveness, failover and failback, detaching silent
//! hosts, handshake retry with back-off, expiry, pending timeouts) use only
//! the time passed in and are tested on a virtual clock; what boringtun
//! times itself stays on the real one, and simulations stay well within
//! those periods.

mod control;
mod forward;
mod liveness;
mod messages;
mod policy;
mod receive;
mod whois;

use crate::batch::{NetQueue, TunQueue, TUN_HEADROOM};
use crate::config::Config;
use crate::fib::{pick_for_flow_among, ForwardingTable, NextHop, Origin, PeerId};
use crate::firewall::{self, Direction, Firewall, Verdict};
use crate::health::{choose_gateway, Transition};
use crate::icmp;
use crate::identity::Identity;
use crate::inband::{self, Message, SPEAKS_HELLO};
use crate::mss;
use crate::packet;
use crate::peer::{Peer, PeerCtl};
use crate::peers::{PeerSlots, PeerTable};
use crate::source_limit::SourceLimiter;
use arc_swap::ArcSwap;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{errors::WireGuardError, Packet, Tunn, TunnResult};
use cubenet_api::overlayd as api;
use cubenet_certs::{NodeCert, Role};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey, StaticSecret};

/// WireGuard's keepalive for gateway tunnels; probes keep them busier anyway.
const KEEPALIVE_S: u16 = 25;
/// A peer whose session is gone for this long is forgotten.
const DEAD_PEER: Duration = Duration::from_secs(240);
/// Resend our certificate until it is acknowledged, this often.
const CERT_RESEND: Duration = Duration::from_secs(1);

/// What the driver must do after a call into [`Node`]: datagrams grouped
/// for UDP GSO and TUN packets with room for the virtio-net header. Events
/// wait in the control state ([`Node::flush_events`]): they leave in the
/// order they happened, whichever worker made them.
#[derive(Default)]
pub struct Outbox {
    pub net: NetQueue,
    pub tun: TunQueue,
}

/// Why packets were dropped; shown in status and metrics.
#[derive(Default)]
pub struct Drops {
    /// Source address not owned by the sending peer.
    pub spoofed: AtomicU64,
    /// From our TUN with a source this node does not own.
    pub spoofed_local: AtomicU64,
    /// From a peer whose certificate is not validated.
    pub unauthenticated: AtomicU64,
    /// No forwarding entry for the destination.
    pub no_route: AtomicU64,
    /// A host got a packet for an address that is not its own.
    pub not_for_us: AtomicU64,
    /// From another gateway with a source we have no path for through it
    /// (or its site): uRPF between gateways.
    pub no_reverse_path: AtomicU64,
    /// An identity answer (WhoIsReply) nobody here asked that peer for.
    pub unsolicited: AtomicU64,
    /// Undecodable or unauthenticated datagrams.
    pub invalid: AtomicU64,
    /// Data with a counter already seen (a duplicate, or a replay).
    pub replayed: AtomicU64,
    /// A new unknown key while the pending table was full.
    pub pending_full: AtomicU64,
    /// A new key while the peer table (`limits.max_peers`) was full.
    pub peers_full: AtomicU64,
    /// Pending peers that sent nothing after their handshake, evicted for
    /// a newer one.
    pub pending_evicted: AtomicU64,
    /// Handshakes answered with a cookie (under load).
    pub cookies_sent: AtomicU64,
    /// Screened handshake initiations that fell off the end of a full
    /// backlog before the gateway got to them (their hosts retry).
    pub handshake_backlog: AtomicU64,
    /// Handshake initiations with a valid cookie, under load, beyond
    /// their source address's rate (`limits.handshake_source_rate`),
    /// dropped before any Diffie-Hellman ([`crate::source_limit`]).
    pub handshake_source_limit: AtomicU64,
    /// Certificates presented in-band that failed validation.
    pub bad_cert: AtomicU64,
    /// No endpoint known for the chosen peer yet.
    pub no_endpoint: AtomicU64,
    /// Arrived with a TTL / hop limit of 1 or 0 at a forwarding gateway.
    pub ttl_expired: AtomicU64,
    /// Too large for the tunnel they were to go into (too big sent back).
    pub too_big: AtomicU64,
    /// Data for a session this node does not have ([`crate::stale`]).
    pub unknown_session: AtomicU64,
}

/// What a gateway counts as a router: ICMP errors sent (with the rate
/// limit they share) and SYNs clamped.
#[derive(Default)]
pub struct RouterState {
    /// A leaf lock, taken only on the error paths.
    limit: Mutex<icmp::Limiter>,
    time_exceeded: AtomicU64,
    unreachable: AtomicU64,
    rate_limited: AtomicU64,
    too_big: AtomicU64,
    /// SYNs whose MSS was lowered.
    mss_clamped: AtomicU64,
    /// IPv4 packets without DF sent in fragments.
    fragmented: AtomicU64,
}

impl RouterState {
    fn snapshot(&self) -> api::IcmpSent {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        api::IcmpSent {
            time_exceeded: g(&self.time_exceeded),
            unreachable: g(&self.unreachable),
            too_big: g(&self.too_big),
            rate_limited: g(&self.rate_limited),
        }
    }
}

impl Drops {
    pub fn snapshot(&self) -> api::Drops {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        api::Drops {
            spoofed: g(&self.spoofed),
            spoofed_local: g(&self.spoofed_local),
            unauthenticated: g(&self.unauthenticated),
            no_route: g(&self.no_route),
            not_for_us: g(&self.not_for_us),
            no_reverse_path: g(&self.no_reverse_path),
            unsolicited: g(&self.unsolicited),
            invalid: g(&self.invalid),
            replayed: g(&self.replayed),
            pending_full: g(&self.pending_full),
            peers_full: g(&self.peers_full),
            pending_evicted: g(&self.pending_evicted),
            cookies_sent: g(&self.cookies_sent),
            handshake_backlog: g(&self.handshake_backlog),
            handshake_source_limit: g(&self.handshake_source_limit),
            bad_cert: g(&self.bad_cert),
            no_endpoint: g(&self.no_endpoint),
            ttl_expired: g(&self.ttl_expired),
            too_big: g(&self.too_big),
            unknown_session: g(&self.unknown_session),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub struct Node {
    pub cfg: Config,
    /// Read by every packet, replaced on reload: no lock.
    identity: ArcSwap<Identity>,
    secret: StaticSecret,
    public: PublicKey,
    /// Handshake initiations with a valid mac1 this second, of all
    /// sources: above `limits.handshake_rate` they need a cookie (mac2).
    /// Reset by the tick.
    initiations: AtomicU64,
    /// Checks mac1 and always mac2, answering a cookie reply without it:
    /// used under load only (its own count is never below its limit of 0).
    cookies: RateLimiter,
    /// Under load, initiations per source address that a cookie proved
    /// (audit M12); a leaf lock, taken once per such initiation.
    sources: Mutex<SourceLimiter>,
    /// What each tunnel checks its handshakes with: mac1 only, because the
    /// shared limit above was already applied and must not count twice.
    mac_only: Arc<RateLimiter>,
    /// The peers by receiver index, as every datagram looks them up.
    slots: Arc<PeerSlots>,
    /// The forwarding table the workers read: an immutable copy, replaced
    /// whole after each change (copies share what did not change).
    fib: ArcSwap<ForwardingTable>,
    /// On a host: the index of the gateway traffic goes through (0: none;
    /// index 0 is never given out).
    active_gateway: AtomicU32,
    pub drops: Drops,
    router: RouterState,
    started: Instant,
    /// The flows of this node's own traffic (`[firewall]`): connection
    /// state every packet of a host updates, like a tunnel's counters.
    firewall: Mutex<Firewall>,
    /// Rate limit for drop logs: the second of the last line, and how many
    /// were not logged since.
    drop_log_sec: AtomicU64,
    drop_log_skipped: AtomicU64,
    /// The second of the last refused-certificate log line.
    cert_log_sec: AtomicU64,
    /// Only when the config has a `[firewall]`.
    firewall_on: AtomicBool,
    /// Shutting down: peers were told (`Leaving`), probes go unanswered so
    /// they do not take this node back while it drains.
    leaving: AtomicBool,
    /// In-band messages received (probes and the like): the packets from
    /// peers less these are data, which a stopping node drains.
    inband_rx: AtomicU64,
    /// Stale-session hints sent this second ([`crate::stale::PER_SECOND`]).
    stale_hints: AtomicU64,
    /// The wall clock (Unix seconds) as the driver last passed it in
    /// ([`Node::new`], [`Node::on_tick`]): what certificates are validated
    /// against. The node never reads a clock itself.
    unix: AtomicU64,
    /// Events are waiting in the control state (checked without its lock
    /// after every call).
    events_waiting: AtomicBool,
    /// Everything the control side decides with, in one place.
    control: Mutex<Control>,
}

/// The control side's state, with one owner: the peer table with each
/// peer's timers and liveness, the forwarding table as it is edited,
/// identities and WhoIs questions, and the events not yet handed out.
/// Peers, their routes, their attachment and the events that tell of them
/// change together while it is held, so a peer the timer removed cannot
/// be attached again by a packet in flight, and events leave in the order
/// they happened. It is plain data: the node's functions take it as
/// `&mut Control`. Lock order: the firewall's flows, then this, then a
/// tunnel.
pub(super) struct Control {
    peers: PeerTable,
    fib: FibMaster,
    /// Name, groups and site behind virtual addresses, from certificates
    /// this node has validated.
    identities: HashMap<IpAddr, firewall::Identity>,
    /// Identities learned by asking gateways (`None`: nobody knew), until
    /// the instant they expire. Bounded.
    remote_ids: HashMap<IpAddr, (Option<firewall::Identity>, Instant)>,
    /// Addresses whose identity the firewall wants (at most
    /// [`IDENTITY_CACHE`], each for at most [`WHOIS_GIVE_UP`]).
    wanted: BTreeMap<IpAddr, Want>,
    /// Gateways: questions passed on, by address.
    whois_relay: HashMap<IpAddr, Relayed>,
    /// When certificate expiry was last checked (warned 30 days ahead).
    expiry_checked: Option<Instant>,
    last_rate_reset: Instant,
    /// The soonest a peer's certificate expires (unix seconds), from the
    /// last scan: the tick looks again at once when it has passed.
    next_expiry: Option<u64>,
    /// When the node wants its next tick ([`Node::next_deadline`]).
    next_tick: Instant,
    /// What the driver got from the kernel (offloads), for status.
    datapath: Option<api::Datapath>,
    /// What subscribers of the control socket are told, in order.
    events: Vec<api::Event>,
    /// A host's packets from its TUN while no gateway is usable yet (just
    /// started, or every tunnel down): sent through the first gateway that
    /// is, as WireGuard queues packets during a handshake. Bounded by
    /// [`HOLD_PACKETS`] and [`HOLD_BYTES`], each packet kept at most
    /// [`HOLD_FOR`].
    held: std::collections::VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
}

/// A host holds at most this many packets while it has no gateway.
const HOLD_PACKETS: usize = 256;
const HOLD_BYTES: usize = 1 << 20;
/// A held packet older than this is dropped (counted as `no_route`): what
/// waited longer is stale for its sender anyway.
const HOLD_FOR: Duration = Duration::from_secs(2);

impl Control {
    /// The peers, in index order.
    fn peer_list(&self) -> Vec<Arc<Peer>> {
        self.peers.values().cloned().collect()
    }

    fn peer_by_name(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers
            .values()
            .find(|p| {
                p.configured.as_deref() == Some(name) || p.cert().is_some_and(|c| c.name() == name)
            })
            .cloned()
    }

    /// Whether `peer` is still the table's peer of its index (it may have
    /// been removed while a packet of it was on its way).
    fn holds(&self, peer: &Arc<Peer>) -> bool {
        self.peers
            .get(peer.index)
            .is_some_and(|p| Arc::ptr_eq(p, peer))
    }

    fn ctl(&mut self, peer: &Peer) -> Option<&mut PeerCtl> {
        self.peers.ctl_mut(peer.index)
    }

    /// Changes a gateway tunnel's liveness (probe sent, reply, leaving) and
    /// publishes whether it is healthy for the forwarding path.
    fn update_health<R>(
        &mut self,
        peer: &Peer,
        f: impl FnOnce(&mut crate::health::GatewayHealth) -> R,
    ) -> Option<R> {
        let h = &mut self.ctl(peer)?.health;
        let r = f(h);
        peer.set_healthy(h.healthy());
        Some(r)
    }
}

/// The forwarding table as the control side edits it.
#[derive(Default)]
struct FibMaster {
    table: ForwardingTable,
    /// Changed since the workers' copy was published.
    unpublished: bool,
}

/// Warn this many days before the node's or the CA's certificate expires.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// How long an identity learned from a gateway is used.
const IDENTITY_TTL: Duration = Duration::from_secs(600);
/// How long "nobody knows" is believed before asking again.
const IDENTITY_NEGATIVE_TTL: Duration = Duration::from_secs(10);
const IDENTITY_CACHE: usize = 4096;
const WHOIS_RETRY: Duration = Duration::from_secs(1);
/// A wanted identity nobody answered for this long is given up (the
/// firewall wants it again with the next packet).
const WHOIS_GIVE_UP: Duration = Duration::from_secs(10);

/// An identity the firewall wants: since when, and the question out.
#[derive(Debug, Clone, Copy)]
struct Want {
    since: Instant,
    /// When we asked last, and whom: only that peer's answer counts.
    asked: Option<(Instant, PeerId)>,
}

/// A question a gateway passed on: who asked, when, and whom it asked.
#[derive(Debug, Clone)]
struct Relayed {
    askers: Vec<PeerId>,
    at: Instant,
    to: PeerId,
}
const WHOIS_PER_TICK: usize = 64;
/// Peers waiting for the answer to one relayed question, at most.
const WHOIS_ASKERS: usize = 64;

/// Peers as status shows them: configured gateways first, then by name.
/// Sorted after the control state is let go (names are built here).
fn sorted(mut v: Vec<Arc<Peer>>) -> Vec<Arc<Peer>> {
    v.sort_by_cached_key(|p| (p.configured.is_none(), p.name()));
    v
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a datagram for a known tunnel is, as far as the receive path cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Transport data: proves the peer holds its key.
    Data,
    /// A response to our handshake: a new session.
    Response,
    /// An initiation we answered: a new session.
    Initiation,
    Other,
}

/// Whether a datagram is a WireGuard handshake initiation (type 1, fixed
/// size), the message that costs a responder Diffie-Hellman work.
pub fn is_initiation(d: &[u8]) -> bool {
    d.len() == 148 && d[..4] == [1, 0, 0, 0]
}

/// The host route (/32 or /128) of an address.
fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

impl Node {
    /// A node at monotonic `now` and wall clock `unix`; `seed` picks the
    /// first receiver index (random in the daemon, fixed in simulations).
    pub fn new(
        cfg: Config,
        identity: Identity,
        now: Instant,
        unix: u64,
        seed: u32,
    ) -> Result<Arc<Node>, NodeError> {
        let secret = identity.key.secret().clone();
        let public = PublicKey::from(&secret);
        let cookies = RateLimiter::new(&public, 0);
        let sources = Mutex::new(SourceLimiter::new(
            cfg.limits.handshake_source_rate,
            cfg.limits.handshake_source_burst,
            crate::source_limit::CAPACITY,
        ));
        let mac_only = Arc::new(RateLimiter::new(&public, u64::MAX));
        let peers = PeerTable::new(cfg.limits.max_peers, seed);
        let slots = peers.slots();
        let firewall = Firewall::new(cfg.firewall_policy().map_err(NodeError::Firewall)?);
        let node = Arc::new(Node {
            identity: ArcSwap::from_pointee(identity),
            secret,
            public,
            initiations: AtomicU64::new(0),
            cookies,
            sources,
            mac_only,
            slots,
            fib: ArcSwap::from_pointee(ForwardingTable::new()),
            active_gateway: AtomicU32::new(0),
            drops: Drops::default(),
            router: RouterState::default(),
            leaving: AtomicBool::new(false),
            started: now,
            unix: AtomicU64::new(unix),
            firewall: Mutex::new(firewall),
            drop_log_sec: AtomicU64::new(u64::MAX),
            drop_log_skipped: AtomicU64::new(0),
            cert_log_sec: AtomicU64::new(u64::MAX),
            firewall_on: AtomicBool::new(cfg.firewall.is_some()),
            events_waiting: AtomicBool::new(false),
            inband_rx: AtomicU64::new(0),
            stale_hints: AtomicU64::new(0),
            control: Mutex::new(Control {
                peers,
                fib: FibMaster::default(),
                identities: HashMap::new(),
                remote_ids: HashMap::new(),
                wanted: BTreeMap::new(),
                whois_relay: HashMap::new(),
                expiry_checked: None,
                last_rate_reset: now,
                next_expiry: None,
                next_tick: now,
                datapath: None,
                events: Vec::new(),
                held: Default::default(),
                held_bytes: 0,
            }),
            cfg,
        });
        {
            let mut c = node.ctl();
            node.install_own_entries(&mut c);
            node.rebuild_identities(&mut c);
            for g in node.cfg.gateways.clone() {
                node.add_configured_gateway(&mut c, &g, now)?;
            }
            node.install_static_routes(&mut c)?;
            // Nobody is subscribed yet: what attaching the configured
            // gateways says goes nowhere.
            c.events.clear();
        }
        Ok(node)
    }

    /// The control state of a new peer; its tunnel assumed to carry the
    /// interface MTU until probed (from the start for a gateway we keep a
    /// tunnel to, else once large packets go in).
    fn new_ctl(&self, peer: &Peer) -> PeerCtl {
        let mtu = self.cfg.interface.mtu;
        peer.set_mtu(mtu);
        let mut x = PeerCtl::new(peer.index, self.cfg.probe.misses).with_mtu(
            mtu,
            crate::pmtu::Timing::default(),
            peer.configured.is_some(),
        );
        x.health = x.health.with_damping(self.damping());
        x
    }

    /// Flap damping's parameters (checked when the config was loaded).
    pub(super) fn damping(&self) -> Option<cubenet_daemon::damping::Config> {
        self.cfg.damping.params().ok().flatten()
    }

    /// Data packets (not in-band messages) received from peers so far: a
    /// stopping node goes on forwarding while this still moves.
    pub fn data_received(&self) -> u64 {
        let all: u64 = self
            .ctl()
            .peers
            .values()
            .map(|p| p.rx_packets.load(Ordering::Relaxed))
            .sum();
        all.saturating_sub(self.inband_rx.load(Ordering::Relaxed))
    }

    /// The control state; see [`Control`] for the lock order.
    fn ctl(&self) -> MutexGuard<'_, Control> {
        lock(&self.control)
    }

    /// An event, queued in the order of the control state.
    fn emit(&self, c: &mut Control, e: api::Event) {
        c.events.push(e);
        self.events_waiting.store(true, Ordering::Release);
    }

    /// Hands the waiting events to `send`, in the order they happened,
    /// while no other event can be made: two workers never hand theirs out
    /// crossed. Costs one atomic load when there are none.
    pub fn flush_events(&self, mut send: impl FnMut(api::Event)) {
        // A load first: a swap writes the shared line on every call.
        if !self.events_waiting.load(Ordering::Relaxed)
            || !self.events_waiting.swap(false, Ordering::Acquire)
        {
            return;
        }
        let mut c = self.ctl();
        for e in c.events.drain(..) {
            send(e);
        }
    }

    /// When the node wants [`Node::on_tick`] called next: every timer it
    /// keeps (probes, handshake retries, certificate resends, silence,
    /// expiry) is looked at on ticks one probe interval apart.
    pub fn next_deadline(&self) -> Instant {
        self.ctl().next_tick
    }

    /// The waiting events (simulations and tests).
    pub fn take_events(&self) -> Vec<api::Event> {
        let mut v = Vec::new();
        self.flush_events(|e| v.push(e));
        v
    }

    /// The wall clock as last passed in.
    fn unix(&self) -> u64 {
        self.unix.load(Ordering::Relaxed)
    }

    pub fn set_datapath(&self, v: api::Datapath) {
        self.ctl().datapath = Some(v);
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.identity.load_full()
    }

    pub fn role(&self) -> Role {
        self.identity.load().role()
    }

    fn new_tunn(&self, peer_key: [u8; 32], index: PeerId, keepalive: Option<u16>) -> Tunn {
        Tunn::new(
            self.secret.clone(),
            PublicKey::from(peer_key),
            None,
            keepalive,
            index.0,
            Some(self.mac_only.clone()),
        )
    }

    fn add_configured_gateway(
        &self,
        c: &mut Control,
        g: &crate::config::GatewayPeer,
        now: Instant,
    ) -> Result<(), NodeError> {
        let name = || g.name.clone();
        let (key, cert) = match (&g.public_key, &g.cert) {
            (_, Some(path)) => {
                let c = cubenet_certs::load_node_cert(path).map_err(|source| {
                    NodeError::GatewayCertFile {
                        name: name(),
                        source,
                    }
                })?;
                let id = self.identity();
                id.trust
                    .validate(&c, self.unix())
                    .map_err(|source| NodeError::GatewayCert {
                        name: name(),
                        path: path.clone(),
                        source,
                    })?;
                (*c.public_key(), Some(Arc::new(c)))
            }
            (Some(k), None) => (
                cubenet_certs::keys::decode_public_key(k).map_err(|source| {
                    NodeError::GatewayKey {
                        name: name(),
                        source,
                    }
                })?,
                None,
            ),
            (None, None) => return Err(NodeError::NoGatewayKey(name())),
        };
        if key == self.public.to_bytes() {
            return Err(NodeError::OwnKey(name()));
        }
        if c.peers.is_full() {
            return Err(NodeError::TooManyPeers(self.cfg.limits.max_peers));
        }
        let index = c.peers.alloc_index();
        let peer = Arc::new(Peer::new(
            index,
            key,
            Some(g.name.clone()),
            self.new_tunn(key, index, Some(KEEPALIVE_S)),
            now,
        ));
        peer.set_endpoint(g.endpoint);
        let ctl = self.new_ctl(&peer);
        c.peers.insert(peer.clone(), ctl);
        if let Some(cert) = cert {
            self.accept_cert(c, &peer, cert, now);
        }
        Ok(())
    }

    /// This node's own addresses and (gateways) subnets go to the TUN.
    fn install_own_entries(&self, c: &mut Control) {
        let id = self.identity();
        self.edit_fib(c, |fib| {
            for a in &id.cert.body.addresses {
                fib.insert(host_net(a.addr()), Origin::Cert, NextHop::Local);
            }
            for s in &id.cert.body.subnets {
                fib.insert(*s, Origin::Cert, NextHop::Local);
            }
        });
    }

    fn install_static_routes(&self, c: &mut Control) -> Result<(), NodeError> {
        let mut routes = Vec::new();
        for (n, r) in self.cfg.routes.iter().enumerate() {
            let mut via = Vec::new();
            for name in &r.via {
                let Some(p) = c.peer_by_name(name) else {
                    return Err(NodeError::StaticVia {
                        index: n,
                        name: name.clone(),
                    });
                };
                via.push(p.index);
            }
            routes.push((r.prefix, NextHop::Peers(via)));
        }
        self.edit_fib(c, |fib| {
            for (prefix, next) in routes {
                fib.insert(prefix, Origin::Static, next);
            }
        });
        Ok(())
    }

    /// Changes the forwarding table and publishes it to the workers.
    fn edit_fib<R>(&self, c: &mut Control, f: impl FnOnce(&mut ForwardingTable) -> R) -> R {
        self.edit_fib_then(c, true, f)
    }

    fn edit_fib_then<R>(
        &self,
        c: &mut Control,
        publish: bool,
        f: impl FnOnce(&mut ForwardingTable) -> R,
    ) -> R {
        let master = &mut c.fib;
        let r = f(&mut master.table);
        if publish {
            // A reference count per shared part: nothing is copied here.
            self.fib.store(Arc::new(master.table.clone()));
        }
        master.unpublished = !publish;
        r
    }

    /// Publishes changes made without publishing (a control connection
    /// gone in the middle of a resync); nothing to do when there are none.
    pub fn publish_fib(&self) {
        let mut c = self.ctl();
        let master = &mut c.fib;
        if master.unpublished {
            self.fib.store(Arc::new(master.table.clone()));
            master.unpublished = false;
        }
    }

    /// The gateway a host sends through.
    fn active_gateway(&self) -> Option<PeerId> {
        match self.active_gateway.load(Ordering::Relaxed) {
            0 => None,
            i => Some(PeerId(i)),
        }
    }

    /// The peers, configured gateways first, then by name.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        sorted(self.ctl().peer_list())
    }

    pub fn peer_by_index(&self, index: PeerId) -> Option<Arc<Peer>> {
        self.slots.get(index)
    }

    pub fn peer_by_name(&self, name: &str) -> Option<Arc<Peer>> {
        self.ctl().peer_by_name(name)
    }

    /// Configured gateways in config order.
    fn gateways(&self, c: &Control) -> Vec<Arc<Peer>> {
        self.cfg
            .gateways
            .iter()
            .filter_map(|g| {
                c.peers
                    .values()
                    .find(|p| p.configured.as_deref() == Some(g.name.as_str()))
                    .cloned()
            })
            .collect()
    }
}

/// Why a node cannot be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The `[firewall]` section (the message names the rule).
    #[error("{0}")]
    Firewall(String),
    #[error("gateway {name}: cert: {source}")]
    GatewayCertFile {
        name: String,
        source: cubenet_certs::LoadError,
    },
    #[error("gateway {name}: cert {}: {source}", path.display())]
    GatewayCert {
        name: String,
        path: std::path::PathBuf,
        source: cubenet_certs::error::CertError,
    },
    #[error("gateway {name}: public_key: {source}")]
    GatewayKey {
        name: String,
        source: cubenet_certs::error::CertError,
    },
    #[error("gateway {0}: needs public_key or cert")]
    NoGatewayKey(String),
    #[error("gateway {0}: that is this node's own key")]
    OwnKey(String),
    #[error("route[{index}].via: no gateway named {name:?}")]
    StaticVia { index: usize, name: String },
    #[error("gateways: more than limits.max_peers ({0})")]
    TooManyPeers(usize),
}

/// Why routes were refused.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// One line per bad route: its prefix and what is wrong.
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
}

/// A certificate's virtual addresses, without prefix lengths.
fn cert_addrs(cert: &NodeCert) -> Vec<IpAddr> {
    cert.body.addresses.iter().map(|a| a.addr()).collect()
}

fn api_role(r: Role) -> api::Role {
    match r {
        Role::Host => api::Role::Host,
        Role::Gateway => api::Role::Gateway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiations_are_recognised_by_type_and_size() {
        let mut d = vec![0u8; 148];
        d[0] = 1;
        assert!(is_initiation(&d));
        d[1] = 1;
        assert!(!is_initiation(&d), "reserved bytes must be zero");
        d[1] = 0;
        assert!(!is_initiation(&d[..147]));
        d[0] = 4;
        assert!(!is_initiation(&d));
    }
}
