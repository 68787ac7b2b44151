//! The data plane's decisions: what to do with a datagram from the network,
//! a packet from the TUN, a control request and a timer tick. Functions
//! here are synchronous, take the time (`now`, and the wall clock on
//! ticks) and fill an [`Outbox`] with what is to be done: datagrams, TUN
//! writes and events. The node does no I/O and reads no clock and no
//! RNG; the tokio driver owns the sockets, the TUN and the subscribers, and
//! flushes the outbox. Locks are never held across an `.await`.
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
//! Everything else the node locks belongs to the control side: the peer
//! table as handshakes and ticks change it, the forwarding table being
//! edited before it is published, identity questions (WhoIs) and their
//! caches, and per-peer timers (probes, handshake retries, certificate
//! resends).
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

use crate::batch::{NetQueue, TunQueue, TUN_HEADROOM};
use crate::config::Config;
use crate::fib::{pick_for_flow_among, ForwardingTable, NextHop, Origin, PeerId};
use crate::firewall::{self, Direction, Firewall, Verdict};
use crate::health::{choose_gateway, Transition};
use crate::identity::Identity;
use crate::inband::{self, Message};
use crate::packet;
use crate::peer::Peer;
use crate::peers::{PeerSlots, PeerTable};
use arc_swap::ArcSwap;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{errors::WireGuardError, Packet, Tunn, TunnResult};
use cubenet_api::overlayd as api;
use cubenet_certs::{NodeCert, Role};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey, StaticSecret};

/// WireGuard's keepalive for gateway tunnels; probes keep them busier anyway.
const KEEPALIVE_S: u16 = 25;
/// A peer whose session is gone for this long is forgotten.
const DEAD_PEER: Duration = Duration::from_secs(240);
/// Resend our certificate until it is acknowledged, this often.
const CERT_RESEND: Duration = Duration::from_secs(1);

/// What the driver must do after a call into [`Node`]: datagrams grouped
/// for UDP GSO, TUN packets with room for the virtio-net header, and
/// events for the control socket's subscribers.
#[derive(Default)]
pub struct Outbox {
    pub net: NetQueue,
    pub tun: TunQueue,
    /// What subscribers of the control socket are told, in order.
    pub events: Vec<api::Event>,
}

/// Why packets were dropped; shown in status and metrics.
#[derive(Default)]
pub struct Drops {
    /// Source address not owned by the sending peer.
    pub spoofed: AtomicU64,
    /// From a peer whose certificate is not validated.
    pub unauthenticated: AtomicU64,
    /// No forwarding entry for the destination.
    pub no_route: AtomicU64,
    /// A host got a packet for an address that is not its own.
    pub not_for_us: AtomicU64,
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
    /// Certificates presented in-band that failed validation.
    pub bad_cert: AtomicU64,
    /// No endpoint known for the chosen peer yet.
    pub no_endpoint: AtomicU64,
}

impl Drops {
    pub fn snapshot(&self) -> api::Drops {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        api::Drops {
            spoofed: g(&self.spoofed),
            unauthenticated: g(&self.unauthenticated),
            no_route: g(&self.no_route),
            not_for_us: g(&self.not_for_us),
            invalid: g(&self.invalid),
            replayed: g(&self.replayed),
            pending_full: g(&self.pending_full),
            peers_full: g(&self.peers_full),
            pending_evicted: g(&self.pending_evicted),
            cookies_sent: g(&self.cookies_sent),
            handshake_backlog: g(&self.handshake_backlog),
            bad_cert: g(&self.bad_cert),
            no_endpoint: g(&self.no_endpoint),
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
    /// Handshake initiations of all peers count against this limit; above
    /// it they need a cookie (mac2). Checked before any Diffie-Hellman.
    rate_limiter: Arc<RateLimiter>,
    /// What each tunnel checks its handshakes with: mac1 only, because the
    /// shared limit above was already applied and must not count twice.
    mac_only: Arc<RateLimiter>,
    /// The peers as the control side changes them.
    peers: RwLock<PeerTable>,
    /// The peers by receiver index, as every datagram looks them up.
    slots: Arc<PeerSlots>,
    /// The forwarding table the workers read: an immutable copy, replaced
    /// whole after each change (copies share what did not change).
    fib: ArcSwap<ForwardingTable>,
    /// The table the control side changes, then publishes into `fib`.
    fib_master: Mutex<ForwardingTable>,
    /// On a host: the index of the gateway traffic goes through (0: none;
    /// index 0 is never given out).
    active_gateway: AtomicU32,
    /// Held while the active gateway is chosen, so two choices do not race.
    choosing_gateway: Mutex<()>,
    pub drops: Drops,
    started: Instant,
    last_rate_reset: RwLock<Instant>,
    /// What the driver got from the kernel (offloads), for status.
    datapath: RwLock<Option<api::Datapath>>,
    firewall: std::sync::Mutex<Firewall>,
    /// Name, groups and site behind virtual addresses, from certificates
    /// this node has validated.
    identities: RwLock<HashMap<IpAddr, firewall::Identity>>,
    /// Rate limit for drop logs: the second of the last line, and how many
    /// lines were skipped since.
    drop_log: std::sync::Mutex<(u64, u64)>,
    /// Only when the config has a `[firewall]`.
    firewall_on: std::sync::atomic::AtomicBool,
    /// Identities learned by asking gateways (`None`: nobody knew), until
    /// the instant they expire. Bounded.
    remote_ids: std::sync::Mutex<HashMap<IpAddr, (Option<firewall::Identity>, Instant)>>,
    /// Addresses whose identity the firewall wants, and when we last asked.
    wanted: std::sync::Mutex<std::collections::BTreeMap<IpAddr, Option<Instant>>>,
    /// Gateways: questions passed on, by address: who asked, and when.
    whois_relay: std::sync::Mutex<HashMap<IpAddr, (Vec<PeerId>, Instant)>>,
    /// When certificate expiry was last checked (warned 30 days ahead).
    expiry_checked: std::sync::Mutex<Option<Instant>>,
    /// Shutting down: peers were told (`Leaving`), probes go unanswered so
    /// they do not take this node back while it drains.
    leaving: std::sync::atomic::AtomicBool,
    /// The wall clock (Unix seconds) as the driver last passed it in
    /// ([`Node::new`], [`Node::on_tick`]): what certificates are validated
    /// against. The node never reads a clock itself.
    unix: AtomicU64,
}

/// Warn this many days before the node's or the CA's certificate expires.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// How long an identity learned from a gateway is used.
const IDENTITY_TTL: Duration = Duration::from_secs(600);
/// How long "nobody knows" is believed before asking again.
const IDENTITY_NEGATIVE_TTL: Duration = Duration::from_secs(10);
const IDENTITY_CACHE: usize = 4096;
const WHOIS_RETRY: Duration = Duration::from_secs(1);
const WHOIS_PER_TICK: usize = 64;
/// Peers waiting for the answer to one relayed question, at most.
const WHOIS_ASKERS: usize = 64;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
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
        let rate_limiter = Arc::new(RateLimiter::new(&public, cfg.limits.handshake_rate));
        let mac_only = Arc::new(RateLimiter::new(&public, u64::MAX));
        let peers = PeerTable::new(cfg.limits.max_peers, seed);
        let slots = peers.slots();
        let node = Arc::new(Node {
            identity: ArcSwap::from_pointee(identity),
            secret,
            public,
            rate_limiter,
            mac_only,
            peers: RwLock::new(peers),
            slots,
            fib: ArcSwap::from_pointee(ForwardingTable::new()),
            fib_master: Mutex::new(ForwardingTable::new()),
            active_gateway: AtomicU32::new(0),
            choosing_gateway: Mutex::new(()),
            drops: Drops::default(),
            leaving: std::sync::atomic::AtomicBool::new(false),
            started: now,
            last_rate_reset: RwLock::new(now),
            unix: AtomicU64::new(unix),
            datapath: RwLock::new(None),
            firewall: std::sync::Mutex::new(Firewall::new(
                cfg.firewall_policy().map_err(NodeError::Firewall)?,
            )),
            identities: RwLock::new(HashMap::new()),
            drop_log: std::sync::Mutex::new((0, 0)),
            firewall_on: std::sync::atomic::AtomicBool::new(cfg.firewall.is_some()),
            remote_ids: std::sync::Mutex::new(HashMap::new()),
            wanted: std::sync::Mutex::new(Default::default()),
            whois_relay: std::sync::Mutex::new(HashMap::new()),
            expiry_checked: std::sync::Mutex::new(None),
            cfg,
        });
        node.install_own_entries();
        node.rebuild_identities();
        // Nobody is subscribed yet: what attaching the configured gateways
        // says goes nowhere.
        let mut out = Outbox::default();
        for g in node.cfg.gateways.clone() {
            node.add_configured_gateway(&g, now, &mut out)?;
        }
        node.install_static_routes()?;
        Ok(node)
    }

    /// The wall clock as last passed in.
    fn unix(&self) -> u64 {
        self.unix.load(Ordering::Relaxed)
    }

    pub fn set_datapath(&self, v: api::Datapath) {
        *write(&self.datapath) = Some(v);
    }

    fn fw(&self) -> std::sync::MutexGuard<'_, Firewall> {
        self.firewall.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn learn_identity(&self, cert: &NodeCert) {
        let id = firewall::Identity {
            name: cert.name().to_string(),
            groups: cert.body.groups.clone(),
            site: cert.body.site.clone(),
        };
        let mut m = write(&self.identities);
        for a in &cert.body.addresses {
            m.insert(a.addr(), id.clone());
        }
    }

    /// Identities from the cert directory and every validated peer.
    fn rebuild_identities(&self) {
        let id = self.identity();
        write(&self.identities).clear();
        for c in id.directory.values() {
            self.learn_identity(c);
        }
        for p in self.peers() {
            if let Some(c) = p.cert() {
                self.learn_identity(&c);
            }
        }
    }

    /// The identity behind a virtual address, if known; an unknown one is
    /// asked of the gateways (answers arrive later).
    pub fn identity_of(&self, a: IpAddr, now: Instant) -> Option<firewall::Identity> {
        if let Some(i) = read(&self.identities).get(&a) {
            return Some(i.clone());
        }
        if let Some((i, until)) = lock(&self.remote_ids).get(&a) {
            if *until > now {
                return i.clone();
            }
        }
        if self.identity().trust.ca().covers_addr(a) {
            lock(&self.wanted).entry(a).or_insert(None);
        }
        None
    }

    /// Asks for the identities the firewall wants: a host asks its active
    /// gateway, a gateway the peer its table points at.
    fn ask_whois(&self, now: Instant, out: &mut Outbox) {
        let due: Vec<IpAddr> = {
            let mut w = lock(&self.wanted);
            let due: Vec<IpAddr> = w
                .iter()
                .filter(|(_, t)| t.is_none_or(|t| now.duration_since(t) >= WHOIS_RETRY))
                .map(|(a, _)| *a)
                .take(WHOIS_PER_TICK)
                .collect();
            for a in &due {
                w.insert(*a, Some(now));
            }
            due
        };
        for a in due {
            let to = if self.role() == Role::Host {
                self.active_gateway().and_then(|i| self.peer_by_index(i))
            } else {
                self.next_peer(a, None)
            };
            if let Some(p) = to {
                self.send_message(&p, &Message::WhoIs(a), out);
            }
        }
    }

    /// The peer the forwarding table sends `a` to (not `except`).
    fn next_peer(&self, a: IpAddr, except: Option<PeerId>) -> Option<Arc<Peer>> {
        let next = self.fib.load().lookup(a).cloned();
        match next {
            Some(NextHop::Peers(ps)) => ps
                .into_iter()
                .filter(|p| Some(*p) != except)
                .find_map(|i| self.peer_by_index(i)),
            _ => None,
        }
    }

    /// A certificate this node holds for `a`: its own, a peer's, or one in
    /// the cert directory.
    fn cert_for(&self, a: IpAddr) -> Option<Arc<NodeCert>> {
        let id = self.identity();
        if id.cert.owns_addr(a) {
            return Some(id.cert.clone());
        }
        if let Some(p) = self.next_peer(a, None) {
            if let Some(c) = p.cert().filter(|c| c.owns_addr(a)) {
                return Some(c);
            }
        }
        id.directory.values().find(|c| c.owns_addr(a)).cloned()
    }

    fn on_whois(&self, from: &Arc<Peer>, a: IpAddr, now: Instant, out: &mut Outbox) {
        if let Some(c) = self.cert_for(a) {
            let reply = Message::WhoIsReply {
                addr: a,
                cert: c.encoded().to_vec(),
            };
            self.send_message(from, &reply, out);
            return;
        }
        // A gateway asks the gateway that announces the address.
        if self.role() == Role::Gateway {
            if let Some(next) = self
                .next_peer(a, Some(from.index))
                .filter(|p| p.is_gateway())
            {
                let mut relay = lock(&self.whois_relay);
                relay.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(2));
                // Bounded: past the cap a question is answered "unknown"
                // (the asker retries) rather than remembered.
                if relay.len() < IDENTITY_CACHE || relay.contains_key(&a) {
                    let e = relay.entry(a).or_insert_with(|| (Vec::new(), now));
                    if !e.0.contains(&from.index) && e.0.len() < WHOIS_ASKERS {
                        e.0.push(from.index);
                    }
                    drop(relay);
                    self.send_message(&next, &Message::WhoIs(a), out);
                    return;
                }
            }
        }
        self.send_message(
            from,
            &Message::WhoIsReply {
                addr: a,
                cert: Vec::new(),
            },
            out,
        );
    }

    fn on_whois_reply(&self, a: IpAddr, cert: Vec<u8>, now: Instant, out: &mut Outbox) {
        let waiting = lock(&self.whois_relay).remove(&a);
        for i in waiting.map(|w| w.0).unwrap_or_default() {
            if let Some(p) = self.peer_by_index(i) {
                let m = Message::WhoIsReply {
                    addr: a,
                    cert: cert.clone(),
                };
                self.send_message(&p, &m, out);
            }
        }
        if lock(&self.wanted).remove(&a).is_none() {
            return;
        }
        // Trust nobody: the certificate must validate here and own `a`.
        let checked = NodeCert::decode(&cert)
            .ok()
            .filter(|c| c.owns_addr(a) && self.identity().trust.validate(c, self.unix()).is_ok());
        let entry = match checked {
            Some(c) => (
                Some(firewall::Identity {
                    name: c.name().to_string(),
                    groups: c.body.groups.clone(),
                    site: c.body.site.clone(),
                }),
                now + IDENTITY_TTL,
            ),
            None => {
                if !cert.is_empty() {
                    bump(&self.drops.bad_cert);
                }
                (None, now + IDENTITY_NEGATIVE_TTL)
            }
        };
        let mut ids = lock(&self.remote_ids);
        if ids.len() >= IDENTITY_CACHE {
            ids.retain(|_, (_, t)| *t > now);
        }
        if ids.len() >= IDENTITY_CACHE {
            if let Some(k) = ids.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                ids.remove(&k);
            }
        }
        ids.insert(a, entry);
    }

    /// Runs the firewall on a packet this node receives or sends itself.
    fn firewall_passes(&self, dir: Direction, pkt: &[u8], now: Instant) -> bool {
        if !self.firewall_on.load(Ordering::Relaxed) {
            return true;
        }
        let v = {
            let lookup = |a: IpAddr| self.identity_of(a, now);
            self.fw().check(dir, pkt, now, &lookup)
        };
        if v == Verdict::Pass {
            return true;
        }
        self.log_drop(dir, pkt, v, now);
        false
    }

    /// Logs a firewall drop, at most one line a second.
    fn log_drop(&self, dir: Direction, pkt: &[u8], v: Verdict, now: Instant) {
        let sec = now.saturating_duration_since(self.started).as_secs();
        let mut l = self.drop_log.lock().unwrap_or_else(|p| p.into_inner());
        if l.0 == sec && l.1 > 0 {
            l.1 += 1;
            return;
        }
        let skipped = if l.0 == sec { 0 } else { l.1.saturating_sub(1) };
        *l = (sec, 1);
        drop(l);
        let p = firewall::parse(pkt);
        let why = match v {
            Verdict::Deny(Some(i)) => format!("rule {}[{i}]", dir.as_str()),
            Verdict::Deny(None) => format!("{} default", dir.as_str()),
            Verdict::Malformed => "malformed".into(),
            Verdict::TableFull => "flow table full".into(),
            Verdict::OrphanFragment => "fragment without its first".into(),
            Verdict::Pass => "pass".into(),
        };
        tracing::info!(
            direction = dir.as_str(),
            src = ?p.map(|p| p.src),
            dst = ?p.map(|p| p.dst),
            proto = ?p.map(|p| p.proto),
            dport = ?p.map(|p| p.dport),
            skipped_since_last = skipped,
            "firewall drop: {why}"
        );
    }

    /// New firewall rules (SIGHUP): flows they deny are cut at once.
    pub fn reload_firewall(&self, policy: firewall::Policy, on: bool, now: Instant) -> usize {
        self.firewall_on.store(on, Ordering::Relaxed);
        let lookup = |a: IpAddr| self.identity_of(a, now);
        let cut = self.fw().reload(policy, now, &lookup);
        if cut > 0 {
            tracing::info!(flows = cut, "firewall reload cut flows the new rules deny");
        }
        cut
    }

    fn firewall_status(&self) -> api::FirewallStatus {
        if !self.firewall_on.load(Ordering::Relaxed) {
            return api::FirewallStatus {
                enabled: false,
                detail: None,
            };
        }
        let fw = self.fw();
        let rules = |dir: Direction, rs: &[firewall::Rule], hits: &[u64]| -> Vec<api::RuleHits> {
            rs.iter()
                .enumerate()
                .map(|(i, r)| api::RuleHits {
                    index: i,
                    direction: dir.as_str().to_string(),
                    rule: r.text.clone(),
                    hits: hits.get(i).copied().unwrap_or(0),
                })
                .collect()
        };
        let c = &fw.counters;
        api::FirewallStatus {
            enabled: true,
            detail: Some(api::FirewallDetail {
                identities_learned: lock(&self.remote_ids).len(),
                inbound_default: fw.policy.inbound_default.as_str().to_string(),
                outbound_default: fw.policy.outbound_default.as_str().to_string(),
                inbound: rules(Direction::Inbound, &fw.policy.inbound, &c.inbound_hits),
                outbound: rules(Direction::Outbound, &fw.policy.outbound, &c.outbound_hits),
                inbound_default_hits: c.inbound_default,
                outbound_default_hits: c.outbound_default,
                tracked_flows: fw.flows(),
                tracked_pass: c.tracked_pass,
                dropped: c.dropped,
                malformed: c.malformed,
                table_full: c.table_full,
                cut_by_reload: c.cut_by_reload,
                orphan_fragments: c.orphan_fragments,
            }),
        }
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
        g: &crate::config::GatewayPeer,
        now: Instant,
        out: &mut Outbox,
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
        let mut t = write(&self.peers);
        if t.is_full() {
            return Err(NodeError::TooManyPeers(self.cfg.limits.max_peers));
        }
        let index = t.alloc_index();
        let peer = Arc::new(Peer::new(
            index,
            key,
            Some(g.name.clone()),
            self.new_tunn(key, index, Some(KEEPALIVE_S)),
            self.cfg.probe.misses,
            now,
        ));
        peer.set_endpoint(g.endpoint);
        t.insert(peer.clone());
        drop(t);
        if let Some(c) = cert {
            self.accept_cert(&peer, c, out);
        }
        Ok(())
    }

    /// This node's own addresses and (gateways) subnets go to the TUN.
    fn install_own_entries(&self) {
        let id = self.identity();
        self.edit_fib(|fib| {
            for a in &id.cert.body.addresses {
                fib.insert(host_net(a.addr()), Origin::Cert, NextHop::Local);
            }
            for s in &id.cert.body.subnets {
                fib.insert(*s, Origin::Cert, NextHop::Local);
            }
        });
    }

    fn install_static_routes(&self) -> Result<(), NodeError> {
        let mut routes = Vec::new();
        for (n, r) in self.cfg.routes.iter().enumerate() {
            let mut via = Vec::new();
            for name in &r.via {
                let Some(p) = self.peer_by_name(name) else {
                    return Err(NodeError::StaticVia {
                        index: n,
                        name: name.clone(),
                    });
                };
                via.push(p.index);
            }
            routes.push((r.prefix, NextHop::Peers(via)));
        }
        self.edit_fib(|fib| {
            for (prefix, next) in routes {
                fib.insert(prefix, Origin::Static, next);
            }
        });
        Ok(())
    }

    /// Changes the forwarding table and publishes it to the workers.
    fn edit_fib<R>(&self, f: impl FnOnce(&mut ForwardingTable) -> R) -> R {
        self.edit_fib_then(true, f)
    }

    fn edit_fib_then<R>(&self, publish: bool, f: impl FnOnce(&mut ForwardingTable) -> R) -> R {
        let mut master = lock(&self.fib_master);
        let r = f(&mut master);
        if publish {
            // Three reference counts: the origins' entries are shared.
            self.fib.store(Arc::new(master.clone()));
        }
        r
    }

    /// Publishes changes made without publishing (the end of a resync, or
    /// a control connection gone in the middle of one).
    pub fn publish_fib(&self) {
        self.edit_fib(|_| ());
    }

    /// The gateway a host sends through.
    fn active_gateway(&self) -> Option<PeerId> {
        match self.active_gateway.load(Ordering::Relaxed) {
            0 => None,
            i => Some(PeerId(i)),
        }
    }

    pub fn peers(&self) -> Vec<Arc<Peer>> {
        let mut v: Vec<_> = read(&self.peers).values().cloned().collect();
        v.sort_by_key(|p| (p.configured.is_none(), p.name()));
        v
    }

    pub fn peer_by_index(&self, index: PeerId) -> Option<Arc<Peer>> {
        self.slots.get(index)
    }

    fn peer_by_key(&self, key: &[u8; 32]) -> Option<Arc<Peer>> {
        read(&self.peers).by_key(key).cloned()
    }

    pub fn peer_by_name(&self, name: &str) -> Option<Arc<Peer>> {
        read(&self.peers)
            .values()
            .find(|p| {
                p.configured.as_deref() == Some(name) || p.cert().is_some_and(|c| c.name() == name)
            })
            .cloned()
    }

    /// Configured gateways in config order.
    fn gateways(&self) -> Vec<Arc<Peer>> {
        self.cfg
            .gateways
            .iter()
            .filter_map(|g| {
                read(&self.peers)
                    .values()
                    .find(|p| p.configured.as_deref() == Some(g.name.as_str()))
                    .cloned()
            })
            .collect()
    }

    /// Starts handshakes with every configured gateway at once rather than
    /// waiting for the first packet.
    pub fn initiate_all(&self, now: Instant, out: &mut Outbox) {
        for p in self.gateways() {
            let Some(ep) = p.endpoint() else { continue };
            let mut buf = vec![0u8; 256];
            lock(&p.retry).started(now);
            if let TunnResult::WriteToNetwork(b) =
                p.tunn().format_handshake_initiation(&mut buf, false)
            {
                out.net.push(ep, b);
            }
        }
    }

    /// A datagram from the network.
    pub fn on_datagram(&self, dgram: &[u8], from: SocketAddr, now: Instant, out: &mut Outbox) {
        if is_initiation(dgram) {
            if self.screen_initiation(dgram, from, out) {
                self.on_initiation(dgram, from, now, out);
            }
            return;
        }
        let Ok(parsed) = Tunn::parse_incoming_packet(dgram) else {
            bump(&self.drops.invalid);
            return;
        };
        let index = match parsed {
            Packet::HandshakeResponse(ref r) => r.receiver_idx,
            Packet::PacketCookieReply(ref r) => r.receiver_idx,
            Packet::PacketData(ref d) => d.receiver_idx,
            Packet::HandshakeInit(_) => {
                // Not of an initiation's size: is_initiation said no.
                bump(&self.drops.invalid);
                return;
            }
        };
        let Some(peer) = self.peer_by_index(PeerId(index >> 8)) else {
            bump(&self.drops.invalid);
            return;
        };
        let kind = match parsed {
            Packet::PacketData(_) => Kind::Data,
            Packet::HandshakeResponse(_) => Kind::Response,
            _ => Kind::Other,
        };
        self.receive(&peer, dgram, from, kind, now, out);
    }

    /// The cheap checks of a handshake initiation, before any
    /// Diffie-Hellman: mac1, and above the rate limit a cookie (mac2)
    /// proving the source address, else a cookie reply goes out. True when
    /// the initiation may go on to [`Node::on_initiation`]; the driver lets
    /// those wait while other datagrams go first.
    pub fn screen_initiation(&self, dgram: &[u8], from: SocketAddr, out: &mut Outbox) -> bool {
        let mut cookie = [0u8; 64];
        match self
            .rate_limiter
            .verify_packet(Some(from.ip()), dgram, &mut cookie)
        {
            Ok(_) => true,
            Err(TunnResult::WriteToNetwork(c)) => {
                bump(&self.drops.cookies_sent);
                out.net.push(from, c);
                false
            }
            Err(_) => {
                bump(&self.drops.invalid);
                false
            }
        }
    }

    /// A screened handshake initiation: the Diffie-Hellman that reveals the
    /// initiator's key, then the handshake with a known or admitted peer.
    pub fn on_initiation(&self, dgram: &[u8], from: SocketAddr, now: Instant, out: &mut Outbox) {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(dgram) else {
            bump(&self.drops.invalid);
            return;
        };
        let key = match parse_handshake_anon(&self.secret, &self.public, &init) {
            Ok(h) => h.peer_static_public,
            Err(_) => {
                bump(&self.drops.invalid);
                return;
            }
        };
        let peer = match self.peer_by_key(&key) {
            Some(p) => p,
            None => match self.admit(key, now) {
                Some(p) => p,
                None => return,
            },
        };
        self.receive(&peer, dgram, from, Kind::Initiation, now, out);
    }

    /// A datagram for `peer`'s tunnel.
    fn receive(
        &self,
        peer: &Arc<Peer>,
        dgram: &[u8],
        from: SocketAddr,
        kind: Kind,
        now: Instant,
        out: &mut Outbox,
    ) {
        // Decrypt straight into a TUN buffer: a packet for this node goes
        // out without another copy.
        let mut buf = out.tun.take(dgram.len().max(256));
        let mut inner_len = None;
        let mut ok = false;
        {
            let mut tunn = peer.tunn();
            match tunn.decapsulate(Some(from.ip()), dgram, &mut buf[TUN_HEADROOM..]) {
                TunnResult::Done => ok = true,
                TunnResult::Err(WireGuardError::DuplicateCounter) => bump(&self.drops.replayed),
                TunnResult::Err(_) => bump(&self.drops.invalid),
                TunnResult::WriteToNetwork(b) => {
                    ok = true;
                    out.net.push(from, b);
                    // Flush packets queued while the handshake ran.
                    let mut more = vec![0u8; 65_600];
                    while let TunnResult::WriteToNetwork(b) = tunn.decapsulate(None, &[], &mut more)
                    {
                        out.net.push(from, b);
                    }
                }
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    ok = true;
                    inner_len = Some(p.len());
                }
            }
        }
        if ok {
            // Authenticated: the peer is at `from` now (roaming).
            peer.set_endpoint(from);
            if matches!(kind, Kind::Response | Kind::Initiation) {
                *lock(&peer.handshake_at) = Some(now);
            }
            // A load first: the swap would write a shared line per packet.
            if kind == Kind::Data
                && !peer.confirmed.load(Ordering::Relaxed)
                && !peer.confirmed.swap(true, Ordering::Relaxed)
            {
                self.maybe_attach(peer, out);
            }
            if kind == Kind::Response && peer.configured.is_some() {
                self.present_cert(peer, now, out);
            }
        }
        match inner_len {
            Some(n) if ok => {
                buf.truncate(TUN_HEADROOM + n);
                self.on_inner(peer, buf, now, out);
            }
            _ => out.tun.recycle(buf),
        }
    }

    /// A new key completed the first half of a handshake (gateways only).
    fn admit(&self, key: [u8; 32], now: Instant) -> Option<Arc<Peer>> {
        let id = self.identity();
        if id.role() != Role::Gateway {
            // Hosts talk to their configured gateways only.
            bump(&self.drops.invalid);
            return None;
        }
        let mut t = write(&self.peers);
        if let Some(p) = t.by_key(&key) {
            return Some(p.clone());
        }
        if t.is_full() {
            bump(&self.drops.peers_full);
            return None;
        }
        if t.pending.len() >= self.cfg.limits.max_pending
            && !t.make_pending_room(now, &self.drops.pending_evicted)
        {
            bump(&self.drops.pending_full);
            return None;
        }
        let index = t.alloc_index();
        let peer = Arc::new(Peer::new(
            index,
            key,
            None,
            self.new_tunn(key, index, None),
            self.cfg.probe.misses,
            now,
        ));
        t.insert(peer.clone());
        match id.directory.get(&key) {
            Some(c) => peer.set_cert(Some(c.clone())),
            None => {
                t.pending.insert(index);
            }
        }
        drop(t);
        tracing::debug!(peer = %peer.name(), "new peer");
        Some(peer)
    }

    /// A decrypted packet from `peer`, after [`TUN_HEADROOM`] bytes of `buf`.
    fn on_inner(&self, peer: &Arc<Peer>, buf: Vec<u8>, now: Instant, out: &mut Outbox) {
        let pkt = &buf[TUN_HEADROOM..];
        peer.count_rx(pkt.len());
        let deliver = self.check_inner(peer, pkt, now, out);
        match deliver {
            Some(true) => {
                let n = pkt.len();
                out.tun.push_buf(buf, n);
            }
            _ => out.tun.recycle(buf),
        }
    }

    /// Decides what happens to a decrypted packet: `Some(true)` = deliver to
    /// our TUN; otherwise it was consumed (forwarded, answered or dropped).
    fn check_inner(
        &self,
        peer: &Arc<Peer>,
        pkt: &[u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Option<bool> {
        if inband::is_inband(pkt) {
            match Message::decode(pkt) {
                Ok(m) => self.on_message(peer, m, now, out),
                Err(_) => bump(&self.drops.invalid),
            }
            return None;
        }
        let Some(cert) = peer.cert() else {
            bump(&self.drops.unauthenticated);
            return None;
        };
        let Some((src, dst)) = packet::addresses(pkt) else {
            bump(&self.drops.invalid);
            return None;
        };
        let id = self.identity.load();
        let src_ok = match cert.role() {
            Role::Host => cert.owns_addr(src),
            // A gateway carries traffic of other sites: any overlay source,
            // its own cert's subnets, and what our table routes via it.
            // A host takes any source from the gateways it chose: they
            // check sources where traffic enters the overlay.
            Role::Gateway if id.role() == Role::Host && peer.configured.is_some() => true,
            Role::Gateway => {
                id.trust.ca().covers_addr(src)
                    || cert.body.subnets.iter().any(|n| n.contains(&src))
                    || matches!(self.fib.load().lookup(src),
                        Some(NextHop::Peers(ps)) if ps.contains(&peer.index))
            }
        };
        if !src_ok {
            bump(&self.drops.spoofed);
            peer.spoofed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if id.role() == Role::Host {
            if !id.cert.owns_addr(dst) {
                bump(&self.drops.not_for_us);
                return None;
            }
            return self
                .firewall_passes(Direction::Inbound, pkt, now)
                .then_some(true);
        }
        match self.route(pkt, src, dst, Some(peer.index), out) {
            // Addressed to the gateway itself: its own firewall decides.
            Some(true) if id.cert.owns_addr(dst) => self
                .firewall_passes(Direction::Inbound, pkt, now)
                .then_some(true),
            other => other,
        }
    }

    /// Forwards by longest-prefix match (gateways).
    /// Forwards to a peer, or returns `Some(true)` when the packet is for
    /// our own TUN.
    fn route(
        &self,
        pkt: &[u8],
        src: IpAddr,
        dst: IpAddr,
        from: Option<PeerId>,
        out: &mut Outbox,
    ) -> Option<bool> {
        let fib = self.fib.load();
        match fib.lookup(dst) {
            Some(NextHop::Local) => {
                if from.is_some() {
                    return Some(true);
                }
                // From our own TUN back to it: the kernel should not do that.
                bump(&self.drops.no_route);
            }
            Some(NextHop::Peers(ps)) => {
                // Per flow among the healthy next hops, else among all (not
                // back where it came from).
                let usable = |i: PeerId| Some(i) != from;
                let healthy = |i: PeerId| {
                    usable(i)
                        && self
                            .peer_by_index(i)
                            .is_some_and(|p| !p.is_gateway() || p.healthy())
                };
                let chosen = pick_for_flow_among(ps, src, dst, healthy)
                    .or_else(|| pick_for_flow_among(ps, src, dst, usable));
                match chosen.and_then(|i| self.peer_by_index(i)) {
                    Some(p) => self.send_to_peer(&p, pkt, out),
                    None => bump(&self.drops.no_route),
                }
            }
            None => bump(&self.drops.no_route),
        }
        None
    }

    fn send_to_peer(&self, peer: &Peer, pkt: &[u8], out: &mut Outbox) {
        let Some(ep) = peer.endpoint() else {
            bump(&self.drops.no_endpoint);
            return;
        };
        // Encrypt straight into the outgoing batch.
        out.net.push_with(ep, (pkt.len() + 32).max(148), |dst| {
            match peer.tunn().encapsulate(pkt, dst) {
                TunnResult::WriteToNetwork(b) => Some(b.len()),
                _ => None,
            }
        });
        peer.count_tx(pkt.len());
    }

    fn send_message(&self, peer: &Peer, m: &Message, out: &mut Outbox) {
        self.send_to_peer(peer, &m.encode(), out);
    }

    /// A packet from our TUN.
    pub fn on_tun_packet(&self, pkt: &[u8], now: Instant, out: &mut Outbox) {
        let Some((src, dst)) = packet::addresses(pkt) else {
            bump(&self.drops.invalid);
            return;
        };
        if packet::link_scope(dst) {
            // Router solicitations, mDNS and the like stay on this node.
            return;
        }
        if self.identity.load().cert.owns_addr(src)
            && !self.firewall_passes(Direction::Outbound, pkt, now)
        {
            return;
        }
        if self.role() == Role::Host {
            let gw = self.active_gateway();
            match gw.and_then(|i| self.peer_by_index(i)) {
                Some(p) => self.send_to_peer(&p, pkt, out),
                None => bump(&self.drops.no_route),
            }
            return;
        }
        self.route(pkt, src, dst, None, out);
    }

    fn on_message(&self, peer: &Arc<Peer>, m: Message, now: Instant, out: &mut Outbox) {
        match m {
            Message::Probe { seq } => {
                if self.leaving.load(Ordering::Relaxed) {
                    return;
                }
                lock(&peer.probes).heard(now, self.cfg.probe.interval());
                self.send_message(peer, &Message::ProbeReply { seq }, out);
                // Detached for silence and heard again: its routes return.
                if peer.configured.is_none()
                    && !peer.attached.load(Ordering::Relaxed)
                    && peer.confirmed.load(Ordering::Relaxed)
                {
                    self.maybe_attach(peer, out);
                }
            }
            // Authenticated by the tunnel: a gateway going away is down now
            // (traffic moves to the others, a handshake with its successor
            // follows), a host going away is detached (its routes go).
            Message::Leaving if peer.configured.is_some() => {
                tracing::info!(peer = %peer.name(), "gateway is shutting down");
                let t = peer.update_health(|h| h.leaving());
                if let Some(t) = t {
                    self.gateway_transition(peer, t, now, out);
                }
            }
            Message::Leaving => self.remove_peer(peer, "shut down", out),
            Message::ProbeReply { seq } => {
                let t = peer.update_health(|h| h.on_reply(seq, now));
                if let Some(t) = t {
                    self.gateway_transition(peer, t, now, out);
                }
            }
            // Identity questions and answers only from peers whose own
            // certificate is validated: a key that merely completed a
            // handshake makes this gateway do no work for others.
            Message::WhoIs(_) | Message::WhoIsReply { .. } if peer.cert().is_none() => {
                bump(&self.drops.unauthenticated);
            }
            Message::WhoIs(a) => self.on_whois(peer, a, now, out),
            Message::WhoIsReply { addr, cert } => self.on_whois_reply(addr, cert, now, out),
            Message::CertAck(fp) => {
                if fp == self.identity().cert.fingerprint().0 {
                    peer.our_cert_acked.store(true, Ordering::Relaxed);
                }
            }
            Message::Cert(bytes) => {
                let unix = self.unix();
                let checked = NodeCert::decode(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        self.identity()
                            .trust
                            .validate(&c, unix)
                            .map_err(|e| e.to_string())?;
                        if c.public_key() != &peer.public_key {
                            return Err("certificate is for another key than the tunnel's".into());
                        }
                        if let Some(name) = &peer.configured {
                            if c.role() != Role::Gateway || c.name() != name {
                                return Err(format!(
                                    "configured as gateway {name:?} but the certificate is {} {:?}",
                                    c.role(),
                                    c.name()
                                ));
                            }
                        }
                        Ok(c)
                    });
                match checked {
                    Ok(c) => {
                        let fp = c.fingerprint().0;
                        let same = peer.cert().is_some_and(|old| old.fingerprint().0 == fp);
                        if !same {
                            self.accept_cert(peer, Arc::new(c), out);
                        }
                        self.send_message(peer, &Message::CertAck(fp), out);
                    }
                    Err(e) => {
                        bump(&self.drops.bad_cert);
                        tracing::warn!(peer = %peer.name(), "refused in-band certificate: {e}");
                    }
                }
            }
        }
    }

    /// Sends our certificate to a configured gateway as soon as a handshake
    /// we started completes, and until it is acknowledged again: the
    /// gateway may be a new process that does not know us (also when our
    /// probes never noticed it going away), and it knows us one round trip
    /// later, not at the next resend.
    fn present_cert(&self, peer: &Peer, now: Instant, out: &mut Outbox) {
        peer.our_cert_acked.store(false, Ordering::Relaxed);
        *lock(&peer.last_cert_sent) = Some(now);
        let cert = self.identity().cert.encoded().to_vec();
        self.send_message(peer, &Message::Cert(cert), out);
    }

    /// A validated certificate for `peer`: its addresses route to it.
    fn accept_cert(&self, peer: &Arc<Peer>, cert: Arc<NodeCert>, out: &mut Outbox) {
        if let Some(old) = peer.cert() {
            self.remove_cert_entries(peer, &old);
        }
        self.learn_identity(&cert);
        peer.set_cert(Some(cert));
        if peer.confirmed.load(Ordering::Relaxed) || peer.configured.is_some() {
            self.maybe_attach(peer, out);
        }
    }

    fn remove_cert_entries(&self, peer: &Peer, cert: &NodeCert) {
        self.edit_fib(|fib| {
            for a in &cert.body.addresses {
                if fib.lookup(a.addr()) == Some(&NextHop::Peers(vec![peer.index])) {
                    fib.remove(host_net(a.addr()), Origin::Cert);
                }
            }
        });
    }

    /// Installs the peer's addresses and announces it once it both holds a
    /// valid certificate and proved its key.
    fn maybe_attach(&self, peer: &Arc<Peer>, out: &mut Outbox) {
        let Some(cert) = peer.cert() else { return };
        self.edit_fib(|fib| {
            for a in &cert.body.addresses {
                fib.insert(
                    host_net(a.addr()),
                    Origin::Cert,
                    NextHop::Peers(vec![peer.index]),
                );
            }
        });
        if !peer.attached.swap(true, Ordering::Relaxed) {
            let addresses = cert_addrs(&cert);
            tracing::info!(peer = %cert.name(), role = %cert.role(), addresses = ?addresses, "attached");
            out.events.push(api::Event::Attached {
                name: cert.name().to_string(),
                role: api_role(cert.role()),
                site: cert.body.site.clone(),
                addresses,
            });
        }
    }

    fn gateway_transition(&self, peer: &Arc<Peer>, t: Transition, now: Instant, out: &mut Outbox) {
        let up = t == Transition::Up;
        if !up {
            // It may come back as a new process: present our cert again.
            peer.our_cert_acked.store(false, Ordering::Relaxed);
        }
        tracing::info!(peer = %peer.name(), "gateway tunnel {}", if up { "up" } else { "down" });
        let name = peer.name();
        out.events.push(if up {
            api::Event::GatewayUp { name }
        } else {
            api::Event::GatewayDown { name }
        });
        self.update_active_gateway(now);
    }

    fn update_active_gateway(&self, now: Instant) {
        if self.role() != Role::Host {
            return;
        }
        let gws = self.gateways();
        let healths: Vec<_> = gws.iter().map(|p| p.health()).collect();
        let refs: Vec<_> = healths.iter().collect();
        let _choosing = lock(&self.choosing_gateway);
        let active = self.active_gateway();
        let current = active.and_then(|i| gws.iter().position(|p| p.index == i));
        let chosen = choose_gateway(
            current,
            &refs,
            now,
            Duration::from_millis(self.cfg.probe.failback_stable_ms),
        );
        let new = chosen.map(|c| gws[c].index);
        if new != active {
            let name = chosen.map(|c| gws[c].name());
            tracing::info!(gateway = ?name, "active gateway changed");
            self.active_gateway
                .store(new.map_or(0, |i| i.0), Ordering::Relaxed);
        }
    }

    /// Shutting down: tells every peer with a session, and stops answering
    /// probes. The caller keeps forwarding a moment before it exits, for
    /// what was already on its way here.
    pub fn leave(&self, out: &mut Outbox) {
        self.leaving.store(true, Ordering::Relaxed);
        let peers: Vec<Arc<Peer>> = read(&self.peers).values().cloned().collect();
        for peer in peers {
            let session = lock(&peer.handshake_at).is_some();
            if session && (peer.configured.is_some() || peer.cert().is_some()) {
                self.send_message(&peer, &Message::Leaving, out);
            }
        }
    }

    /// Removes a peer: its session ends, its routes go.
    fn remove_peer(&self, peer: &Arc<Peer>, why: &str, out: &mut Outbox) {
        write(&self.peers).remove(peer);
        self.edit_fib(|fib| fib.remove_peer(peer.index));
        if peer.attached.swap(false, Ordering::Relaxed) {
            // Attached implies a validated certificate: it says the role and
            // the addresses routed withdraws.
            if let Some(cert) = peer.cert() {
                self.announce_detached(peer, &cert, why, out);
            }
        }
    }

    /// Logs and sends the `detached` event of a peer that was attached.
    fn announce_detached(&self, peer: &Peer, cert: &NodeCert, why: &str, out: &mut Outbox) {
        tracing::info!(peer = %peer.name(), "detached: {why}");
        out.events.push(api::Event::Detached {
            name: peer.name(),
            role: api_role(cert.role()),
            site: cert.body.site.clone(),
            addresses: cert_addrs(cert),
            reason: why.to_string(),
        });
    }

    /// Ends the session of a peer whose certificate is no longer valid: a
    /// configured gateway keeps its tunnel (a new session needs a valid
    /// certificate again), any other peer goes.
    fn cut_session(&self, peer: &Arc<Peer>, why: &str, out: &mut Outbox) {
        tracing::warn!(peer = %peer.name(), "certificate no longer valid: {why}");
        let why = format!("certificate no longer valid: {why}");
        if peer.configured.is_some() {
            self.detach(peer, &why, out);
            peer.set_cert(None);
            peer.replace_tunn(self.new_tunn(peer.public_key, peer.index, Some(KEEPALIVE_S)));
        } else {
            self.remove_peer(peer, &why, out);
        }
    }

    /// Cuts the peers whose certificate expired (or is not valid yet) at
    /// the wall clock `unix`: a session does not outlive its certificate.
    /// Only the validity window is compared here (cheap, every second); the
    /// signature was checked when the certificate was accepted.
    fn cut_expired(&self, unix: u64, out: &mut Outbox) {
        for peer in self.peers() {
            let Some(cert) = peer.cert() else { continue };
            if let Err(e) = cert.check_validity_window(unix) {
                self.cut_session(&peer, &e.to_string(), out);
            }
        }
    }

    /// Takes a peer's addresses out of the forwarding table and says so;
    /// the peer and its session stay.
    fn detach(&self, peer: &Arc<Peer>, why: &str, out: &mut Outbox) {
        let Some(cert) = peer.cert() else { return };
        self.remove_cert_entries(peer, &cert);
        if peer.attached.swap(false, Ordering::Relaxed) {
            self.announce_detached(peer, &cert, why, out);
        }
    }

    /// How long probes take to declare a tunnel down.
    fn probe_window(&self) -> Duration {
        self.cfg.probe.interval() * (self.cfg.probe.misses + 1)
    }

    /// Called every probe interval, with the monotonic and the wall clock.
    pub fn on_tick(&self, now: Instant, unix: u64, out: &mut Outbox) {
        self.unix.store(unix, Ordering::Relaxed);
        let mut buf = vec![0u8; 2048];
        let pending_timeout = Duration::from_millis(self.cfg.limits.pending_timeout_ms);
        let our_cert = self.identity().cert.encoded().to_vec();
        let peers: Vec<Arc<Peer>> = read(&self.peers).values().cloned().collect();
        for peer in peers {
            let res = peer.tunn().update_timers(&mut buf);
            match res {
                TunnResult::WriteToNetwork(b) => {
                    if let Some(ep) = peer.endpoint() {
                        out.net.push(ep, b);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) if peer.configured.is_none() => {
                    let idle = now.saturating_duration_since(
                        (*lock(&peer.handshake_at)).unwrap_or(peer.created),
                    );
                    if idle > DEAD_PEER {
                        self.remove_peer(&peer, "session expired", out);
                        continue;
                    }
                }
                _ => {}
            }
            if peer.configured.is_none() {
                if peer.cert().is_none() && now.duration_since(peer.created) > pending_timeout {
                    self.remove_peer(&peer, "no valid certificate", out);
                    continue;
                }
                // A peer that probes (an overlayd host) and has missed as
                // many of its probes as a host allows a gateway is not
                // reachable through this node now: detach it, so its routes
                // go at BFD speed instead of when the session expires. Its
                // session stays; its next probe attaches it again.
                let silent = lock(&peer.probes).silent(
                    now,
                    self.cfg.probe.interval(),
                    self.cfg.probe.misses,
                );
                if silent && peer.attached.load(Ordering::Relaxed) {
                    self.detach(&peer, "no probe for the probe window", out);
                }
                continue;
            }
            // Configured gateway: keep a session up (retry handshakes after
            // 1 s, backing off to 8 s, rather than WireGuard's fixed 5 s),
            // probe it, present our cert. An unanswered probe may mean the
            // gateway restarted and lost our session: a fresh handshake
            // fixes that at once.
            // Between two gateways only the one with the lower key starts
            // this handshake: both at once collide and drop a few hundred
            // milliseconds of traffic. (A gateway that restarts initiates
            // to every gateway it knows anyway.)
            let we_initiate =
                self.role() == Role::Host || self.public.as_bytes() < &peer.public_key;
            if !peer.healthy() {
                // A session younger than the probe window first gets the
                // chance to prove itself with probes: initiating again
                // would only cost both ends another handshake.
                let fresh = (*lock(&peer.handshake_at))
                    .is_some_and(|t| now.saturating_duration_since(t) < self.probe_window());
                if we_initiate && !fresh && lock(&peer.retry).due(now) {
                    if let (Some(ep), TunnResult::WriteToNetwork(b)) = (
                        peer.endpoint(),
                        peer.tunn().format_handshake_initiation(&mut buf, true),
                    ) {
                        out.net.push(ep, b);
                    }
                }
            } else {
                lock(&peer.retry).reset();
            }
            let (seq, t) = peer.update_health(|h| h.on_tick(now));
            if let Some(t) = t {
                self.gateway_transition(&peer, t, now, out);
            }
            self.send_message(&peer, &Message::Probe { seq }, out);
            if !peer.our_cert_acked.load(Ordering::Relaxed) {
                let mut last = peer
                    .last_cert_sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| now.duration_since(t) >= CERT_RESEND) {
                    *last = Some(now);
                    drop(last);
                    self.send_message(&peer, &Message::Cert(our_cert.clone()), out);
                }
            }
        }
        self.update_active_gateway(now);
        let mut last = write(&self.last_rate_reset);
        if now.duration_since(*last) >= Duration::from_secs(1) {
            *last = now;
            self.rate_limiter.reset_count();
            self.fw().expire(now);
            self.cut_expired(unix, out);
        }
        drop(last);
        self.ask_whois(now, out);
        self.check_expiry(now);
    }

    /// Logs a warning, hourly, while this node's or the CA's certificate
    /// expires within [`EXPIRY_WARNING_DAYS`].
    fn check_expiry(&self, now: Instant) {
        {
            let mut c = lock(&self.expiry_checked);
            if c.is_some_and(|t| now.duration_since(t) < Duration::from_secs(3600)) {
                return;
            }
            *c = Some(now);
        }
        let id = self.identity();
        let unix = self.unix() as i64;
        for (what, not_after) in [
            ("certificate", id.cert.body.not_after),
            ("CA certificate", id.trust.ca().body.not_after),
        ] {
            let days = (not_after as i64 - unix) / 86_400;
            if days <= EXPIRY_WARNING_DAYS {
                tracing::warn!(
                    days_left = days,
                    not_after = %cubenet_certs::time::format_rfc3339(not_after),
                    "this node's {what} expires in {days} days: sign a new one and reload (SIGHUP)"
                );
            }
        }
    }

    /// Replaces the identity (SIGHUP): peers whose certificate is no longer
    /// valid lose their session at once; the others keep theirs.
    pub fn reload_identity(&self, identity: Identity, out: &mut Outbox) -> api::ReloadReport {
        let now = self.unix();
        let identity = Arc::new(identity);
        self.identity.store(identity.clone());
        let mut cut = Vec::new();
        for peer in self.peers() {
            let Some(cert) = peer.cert() else { continue };
            if let Err(e) = identity.trust.validate(&cert, now) {
                cut.push(api::CutPeer {
                    name: peer.name(),
                    reason: e.to_string(),
                });
                self.cut_session(&peer, &e.to_string(), out);
            }
        }
        self.rebuild_identities();
        // Own certificate may have changed: re-announce it.
        for peer in self.gateways() {
            peer.our_cert_acked.store(false, Ordering::Relaxed);
        }
        api::ReloadReport {
            cut,
            skipped_certs: identity.directory_skipped.clone(),
        }
    }

    pub fn status(&self, now: Instant) -> api::Status {
        let id = self.identity();
        let active = self.active_gateway();
        let peers: Vec<api::PeerStatus> = self
            .peers()
            .iter()
            .map(|p| {
                let hs = (*lock(&p.handshake_at)).map(|t| now.saturating_duration_since(t));
                let cert = p.cert();
                let health = p.health();
                let attached = p.attached.load(Ordering::Relaxed);
                api::PeerStatus {
                    name: p.name(),
                    role: p.role().map(api_role).into(),
                    configured: p.configured.is_some(),
                    public_key: crate::b64(&p.public_key),
                    endpoint: p.endpoint(),
                    addresses: cert.as_ref().map(|c| cert_addrs(c)).unwrap_or_default(),
                    site: cert.as_ref().map(|c| c.body.site.clone()),
                    authenticated: cert.is_some(),
                    attached,
                    last_handshake_s: hs.map(|d| d.as_secs_f64()),
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: p.rx_packets.load(Ordering::Relaxed),
                    tx_packets: p.tx_packets.load(Ordering::Relaxed),
                    healthy: if p.is_gateway() && p.configured.is_some() {
                        health.healthy()
                    } else {
                        attached
                    },
                    rtt_ms: health.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    flaps: health.flaps,
                    active: active == Some(p.index),
                    spoofed: p.spoofed.load(Ordering::Relaxed),
                }
            })
            .collect();
        let routes: Vec<api::RouteRow> = self
            .fib
            .load()
            .rows()
            .into_iter()
            .map(|r| api::RouteRow {
                prefix: r.prefix,
                origin: r.origin.into(),
                via: match &r.next {
                    NextHop::Local => vec!["local".into()],
                    NextHop::Peers(ps) => ps
                        .iter()
                        .map(|i| {
                            self.peer_by_index(*i)
                                .map(|p| p.name())
                                .unwrap_or_else(|| format!("#{i}"))
                        })
                        .collect(),
                },
            })
            .collect();
        let unix = self.unix() as i64;
        api::Status {
            name: id.cert.name().to_string(),
            role: api_role(id.role()),
            site: id.cert.body.site.clone(),
            public_key: crate::b64(&self.public.to_bytes()),
            addresses: id.cert.body.addresses.clone(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            cert_days_left: (id.cert.body.not_after as i64 - unix) / 86_400,
            ca_days_left: (id.trust.ca().body.not_after as i64 - unix) / 86_400,
            crl_serial: id.trust.revocation_list().map(|c| c.body.serial),
            peers,
            drops: self.drops.snapshot(),
            routes,
            datapath: read(&self.datapath).clone(),
            firewall: self.firewall_status(),
        }
    }

    /// The peers attached here now (routed announces the hosts of them).
    pub fn attached(&self) -> api::AttachedPeers {
        let peers = self
            .peers()
            .iter()
            .filter(|p| p.attached.load(Ordering::Relaxed))
            .filter_map(|p| {
                let cert = p.cert()?;
                Some(api::AttachedPeer {
                    name: p.name(),
                    role: api_role(cert.role()),
                    addresses: cert_addrs(&cert),
                })
            })
            .collect();
        api::AttachedPeers { peers }
    }

    /// Gateways by name (configured or certified), for resolving the
    /// `via` of routes: one pass over the peers per request.
    fn gateways_by_name(&self) -> HashMap<String, PeerId> {
        read(&self.peers)
            .values()
            .filter(|p| p.is_gateway())
            .flat_map(|p| {
                let mut names = vec![];
                if let Some(n) = &p.configured {
                    names.push((n.clone(), p.index));
                }
                if let Some(c) = p.cert() {
                    names.push((c.name().to_string(), p.index));
                }
                names
            })
            .collect()
    }

    /// Resolves every route's gateways, or says every route that names one
    /// this node does not have (nothing is installed then).
    fn resolve(&self, routes: &[api::Route]) -> Result<Vec<(IpNet, Vec<PeerId>)>, RouteError> {
        let (good, bad) = self.resolve_each(routes);
        if bad.is_empty() {
            Ok(good)
        } else {
            Err(RouteError::Refused(
                bad.iter().map(|b| b.to_string()).collect(),
            ))
        }
    }

    /// Resolves the routes one by one: the good ones, and a line for each
    /// bad one.
    fn resolve_each(
        &self,
        routes: &[api::Route],
    ) -> (Vec<(IpNet, Vec<PeerId>)>, Vec<api::Refused>) {
        let by_name = self.gateways_by_name();
        let mut bad = Vec::new();
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            let mut refuse = |reason: String| {
                bad.push(api::Refused {
                    prefix: r.prefix,
                    reason,
                })
            };
            if r.via.is_empty() {
                refuse("via: needs at least one gateway".into());
                continue;
            }
            let mut ids = Vec::with_capacity(r.via.len());
            let mut ok = true;
            for v in &r.via {
                match by_name.get(v) {
                    Some(i) => ids.push(*i),
                    None if self.peer_by_name(v).is_some() => {
                        ok = false;
                        refuse(format!("{v:?} is not a gateway"));
                    }
                    None => {
                        ok = false;
                        refuse(format!("unknown gateway {v:?}"));
                    }
                }
            }
            if ok {
                out.push((r.prefix, ids));
            }
        }
        (out, bad)
    }

    /// Installs or replaces a routed entry: `via` names gateways.
    pub fn route_add(&self, prefix: IpNet, via: &[String]) -> Result<(), RouteError> {
        let r = [api::Route {
            prefix,
            via: via.to_vec(),
        }];
        self.route_set(&r, true).map(|_| ())
    }

    /// Replaces all routed entries, or with `merge` installs or replaces
    /// these and keeps the rest. A bad entry refuses the whole set.
    pub fn route_set(&self, routes: &[api::Route], merge: bool) -> Result<usize, RouteError> {
        let resolved = self.resolve(routes)?;
        self.edit_fib(|fib| {
            if !merge {
                fib.remove_origin(Origin::Routed);
            }
            for (prefix, ids) in resolved {
                fib.insert(prefix, Origin::Routed, NextHop::Peers(ids));
            }
        });
        Ok(routes.len())
    }

    /// Increments from routed: withdraws, then adds. A route naming a
    /// gateway this node does not have is refused alone; the rest go in.
    /// With `publish` false (more chunks of a resync follow) the workers go
    /// on with the table they have until the next change that publishes,
    /// or [`Node::publish_fib`]: a resync in chunks does not copy the
    /// table per chunk.
    pub fn route_update(
        &self,
        add: &[api::Route],
        withdraw: &[IpNet],
        publish: bool,
    ) -> api::Updated {
        let (resolved, refused) = self.resolve_each(add);
        if !refused.is_empty() {
            tracing::warn!(refused = refused.len(), first = %refused[0], "routes refused");
        }
        self.edit_fib_then(publish, |fib| {
            let mut withdrawn = 0;
            for p in withdraw {
                withdrawn += usize::from(fib.remove(*p, Origin::Routed));
            }
            let added = resolved.len();
            for (prefix, ids) in resolved {
                fib.insert(prefix, Origin::Routed, NextHop::Peers(ids));
            }
            api::Updated {
                added,
                withdrawn,
                routes: fib.count(Origin::Routed),
                refused,
            }
        })
    }

    /// The end of a full resync: routed entries outside `seen` go.
    pub fn route_retain(&self, seen: &HashSet<IpNet>) -> api::Updated {
        self.edit_fib(|fib| {
            let withdrawn = fib.retain(Origin::Routed, |p| seen.contains(&p));
            api::Updated {
                added: 0,
                withdrawn,
                routes: fib.count(Origin::Routed),
                refused: Vec::new(),
            }
        })
    }

    pub fn route_del(&self, prefix: IpNet) -> bool {
        self.edit_fib(|fib| fib.remove(prefix, Origin::Routed))
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
