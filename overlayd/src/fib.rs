//! The forwarding table of a gateway: longest-prefix match from a
//! destination to this node's own TUN or to one or more (equal-cost) peers.
//!
//! Entries come from three origins; for the same prefix the higher one
//! wins: a host attached here (its certificate's addresses), a static route
//! from the config, and routes installed by routed. Sans-IO.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A peer of this node: its WireGuard receiver index (24 bits; the
/// receiver index field of incoming messages is this shifted left 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Installed by routed over the control socket.
    Routed = 0,
    /// From the `[[route]]` list of the config.
    Static = 1,
    /// A node's own certificate addresses (attached host, gateway peer,
    /// this node itself).
    Cert = 2,
}

impl From<Origin> for cubenet_api::overlayd::RouteOrigin {
    fn from(o: Origin) -> Self {
        use cubenet_api::overlayd::RouteOrigin as R;
        match o {
            Origin::Routed => R::Routed,
            Origin::Static => R::Static,
            Origin::Cert => R::Cert,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// Deliver to this node's TUN (own addresses, subnets behind it).
    Local,
    /// Send to one of these peers (equal cost, chosen per flow).
    Peers(Vec<PeerId>),
}

const ORIGINS: usize = 3;
const ALL_ORIGINS: [Origin; ORIGINS] = [Origin::Routed, Origin::Static, Origin::Cert];

/// Host routes (/32, /128) of one origin are spread over this many
/// shards: a change copies one shard, not every host.
const HOST_SHARDS: usize = 256;

/// Exact-match entries of full-length prefixes (attached hosts, hosts of
/// other sites), sharded by address. A copy costs a reference count per
/// shard; a change copies the one shard it touches if a published copy
/// still shares it.
#[derive(Clone)]
struct HostMap {
    shards: Vec<Arc<HashMap<IpAddr, NextHop>>>,
    len: usize,
}

impl Default for HostMap {
    fn default() -> Self {
        HostMap {
            shards: vec![Arc::default(); HOST_SHARDS],
            len: 0,
        }
    }
}

impl HostMap {
    fn shard(a: &IpAddr) -> usize {
        (flow_hash(*a, *a) % HOST_SHARDS as u64) as usize
    }

    fn get(&self, a: &IpAddr) -> Option<&NextHop> {
        self.shards[Self::shard(a)].get(a)
    }

    fn insert(&mut self, a: IpAddr, n: NextHop) -> Option<NextHop> {
        let old = Arc::make_mut(&mut self.shards[Self::shard(&a)]).insert(a, n);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, a: &IpAddr) -> Option<NextHop> {
        let i = Self::shard(a);
        if !self.shards[i].contains_key(a) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[i]).remove(a);
        self.len -= 1;
        old
    }

    fn iter(&self) -> impl Iterator<Item = (&IpAddr, &NextHop)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Keeps the entries `keep` accepts, copying only the shards that lose
    /// one; returns how many went.
    fn retain(&mut self, mut keep: impl FnMut(&IpAddr, &NextHop) -> bool) -> usize {
        let mut gone = 0;
        for s in &mut self.shards {
            if s.iter().all(|(a, n)| keep(a, n)) {
                continue;
            }
            let m = Arc::make_mut(s);
            let before = m.len();
            m.retain(|a, n| keep(a, n));
            gone += before - m.len();
        }
        self.len -= gone;
        gone
    }

    /// Applies `f` to the entries `pick` selects, copying only their shards.
    fn update(&mut self, pick: impl Fn(&NextHop) -> bool, f: impl Fn(&mut NextHop)) {
        for s in &mut self.shards {
            if s.values().any(&pick) {
                for n in Arc::make_mut(s).values_mut() {
                    if pick(n) {
                        f(n);
                    }
                }
            }
        }
    }
}

/// The shorter prefixes of one origin, in tries for longest-prefix match.
#[derive(Clone, Default)]
struct Nets {
    v4: PrefixMap<Ipv4Net, NextHop>,
    v6: PrefixMap<Ipv6Net, NextHop>,
}

impl Nets {
    fn lpm(&self, dst: IpAddr) -> Option<(u8, &NextHop)> {
        match dst {
            IpAddr::V4(a) => self
                .v4
                .get_lpm(&Ipv4Net::from(a))
                .map(|(p, n)| (p.prefix_len(), n)),
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::from(a))
                .map(|(p, n)| (p.prefix_len(), n)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (IpNet, &NextHop)> {
        self.v4
            .iter()
            .map(|(p, n)| (IpNet::V4(p), n))
            .chain(self.v6.iter().map(|(p, n)| (IpNet::V6(p), n)))
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// The entries of one origin: host routes exact-match and sharded, the
/// rest in tries. A copy is a reference count per shard and one for the
/// tries.
#[derive(Clone, Default)]
struct Entries {
    hosts: HostMap,
    nets: Arc<Nets>,
}

/// A full-length prefix (a host route) is kept by its address.
fn host_addr(p: &IpNet) -> Option<IpAddr> {
    (p.prefix_len() == p.max_prefix_len()).then(|| p.addr())
}

impl Entries {
    fn get(&self, p: &IpNet) -> Option<&NextHop> {
        match host_addr(p) {
            Some(a) => self.hosts.get(&a),
            None => match p {
                IpNet::V4(p) => self.nets.v4.get(p),
                IpNet::V6(p) => self.nets.v6.get(p),
            },
        }
    }

    fn insert(&mut self, p: IpNet, n: NextHop) -> Option<NextHop> {
        match host_addr(&p) {
            Some(a) => self.hosts.insert(a, n),
            None => {
                let nets = Arc::make_mut(&mut self.nets);
                match p {
                    IpNet::V4(p) => nets.v4.insert(p, n),
                    IpNet::V6(p) => nets.v6.insert(p, n),
                }
            }
        }
    }

    fn remove(&mut self, p: &IpNet) -> Option<NextHop> {
        self.get(p)?;
        match host_addr(p) {
            Some(a) => self.hosts.remove(&a),
            None => {
                let nets = Arc::make_mut(&mut self.nets);
                match p {
                    IpNet::V4(p) => nets.v4.remove(p),
                    IpNet::V6(p) => nets.v6.remove(p),
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (IpNet, &NextHop)> {
        self.hosts
            .iter()
            .map(|(a, n)| (IpNet::from(*a), n))
            .chain(self.nets.iter())
    }

    fn len(&self) -> usize {
        self.hosts.len + self.nets.len()
    }
}

fn has_peer(n: &NextHop, peer: PeerId) -> bool {
    matches!(n, NextHop::Peers(ps) if ps.contains(&peer))
}

/// A forwarding table, copied whole for every change the workers are to
/// see: copies share every part a change does not touch (per origin, the
/// tries and each shard of host routes), so a host attaching copies one
/// shard of about hosts/256 entries, not the table.
#[derive(Clone, Default)]
pub struct ForwardingTable {
    by_origin: [Entries; ORIGINS],
}

/// One row for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub prefix: IpNet,
    pub origin: Origin,
    pub next: NextHop,
}

impl ForwardingTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, prefix: IpNet, origin: Origin, next: NextHop) {
        self.by_origin[origin as usize].insert(prefix.trunc(), next);
    }

    /// How many entries `origin` has.
    pub fn count(&self, origin: Origin) -> usize {
        self.by_origin[origin as usize].len()
    }

    /// Removes the entry of `origin` for `prefix`; true if there was one.
    pub fn remove(&mut self, prefix: IpNet, origin: Origin) -> bool {
        self.by_origin[origin as usize]
            .remove(&prefix.trunc())
            .is_some()
    }

    /// Removes every entry of `origin` (e.g. all static routes on reload).
    pub fn remove_origin(&mut self, origin: Origin) {
        self.by_origin[origin as usize] = Entries::default();
    }

    /// Removes the entries of `origin` whose prefix `keep` refuses; returns
    /// how many went.
    pub fn retain(&mut self, origin: Origin, keep: impl Fn(IpNet) -> bool) -> usize {
        let e = &mut self.by_origin[origin as usize];
        let mut gone = e.hosts.retain(|a, _| keep(IpNet::from(*a)));
        let nets_gone = e.nets.iter().filter(|(p, _)| !keep(*p)).count();
        if nets_gone > 0 {
            let nets = Arc::make_mut(&mut e.nets);
            nets.v4.retain(|p, _| keep(IpNet::V4(*p)));
            nets.v6.retain(|p, _| keep(IpNet::V6(*p)));
            gone += nets_gone;
        }
        gone
    }

    /// Drops `peer` from every entry; entries left without a next hop go.
    /// Only the parts holding the peer are touched (so copied).
    pub fn remove_peer(&mut self, peer: PeerId) {
        let drop_peer = |n: &mut NextHop| {
            if let NextHop::Peers(ps) = n {
                ps.retain(|p| *p != peer);
            }
        };
        let live = |n: &NextHop| !matches!(n, NextHop::Peers(ps) if ps.is_empty());
        for e in &mut self.by_origin {
            e.hosts.update(|n| has_peer(n, peer), drop_peer);
            e.hosts.retain(|_, n| live(n));
            if e.nets.iter().any(|(_, n)| has_peer(n, peer)) {
                let nets = Arc::make_mut(&mut e.nets);
                for (_, n) in nets.v4.iter_mut() {
                    drop_peer(n);
                }
                for (_, n) in nets.v6.iter_mut() {
                    drop_peer(n);
                }
                nets.v4.retain(|_, n| live(n));
                nets.v6.retain(|_, n| live(n));
            }
        }
    }

    /// Longest-prefix match; for the same prefix the higher origin wins.
    /// A host route (the longest prefix there is) of the highest origin
    /// that has one ends the search at once.
    pub fn lookup(&self, dst: IpAddr) -> Option<&NextHop> {
        for o in ALL_ORIGINS.iter().rev() {
            if let Some(n) = self.by_origin[*o as usize].hosts.get(&dst) {
                return Some(n);
            }
        }
        let mut best: Option<(u8, &NextHop)> = None;
        for o in ALL_ORIGINS.iter().rev() {
            if let Some((len, n)) = self.by_origin[*o as usize].nets.lpm(dst) {
                if best.is_none_or(|(b, _)| len > b) {
                    best = Some((len, n));
                }
            }
        }
        best.map(|(_, n)| n)
    }

    /// Every entry of every origin, sorted by prefix, then origin.
    pub fn rows(&self) -> Vec<Row> {
        let mut out: Vec<Row> = ALL_ORIGINS
            .iter()
            .flat_map(|o| {
                self.by_origin[*o as usize].iter().map(|(prefix, n)| Row {
                    prefix,
                    origin: *o,
                    next: n.clone(),
                })
            })
            .collect();
        out.sort_by_key(|r| (r.prefix, r.origin));
        out
    }
}

/// Picks one of equal-cost peers for a flow, so a flow stays on one path.
pub fn pick_for_flow(peers: &[PeerId], src: IpAddr, dst: IpAddr) -> Option<PeerId> {
    pick_for_flow_among(peers, src, dst, |_| true)
}

/// [`pick_for_flow`] among the peers `keep` accepts, without collecting
/// them (the forwarding path allocates nothing).
pub fn pick_for_flow_among(
    peers: &[PeerId],
    src: IpAddr,
    dst: IpAddr,
    keep: impl Fn(PeerId) -> bool,
) -> Option<PeerId> {
    let n = peers.iter().filter(|p| keep(**p)).count();
    if n == 0 {
        return None;
    }
    let h = flow_hash(src, dst);
    peers
        .iter()
        .copied()
        .filter(|p| keep(*p))
        .nth((h % n as u64) as usize)
}

fn flow_hash(src: IpAddr, dst: IpAddr) -> u64 {
    // FNV-1a over both addresses: stable across runs and cheap.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= *x as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match src {
        IpAddr::V4(a) => eat(&a.octets()),
        IpAddr::V6(a) => eat(&a.octets()),
    }
    match dst {
        IpAddr::V4(a) => eat(&a.octets()),
        IpAddr::V6(a) => eat(&a.octets()),
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ids(n: &[u32]) -> Vec<PeerId> {
        n.iter().copied().map(PeerId).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_and_origin_precedence() {
        let mut t = ForwardingTable::new();
        t.insert(
            net("10.77.0.0/16"),
            Origin::Static,
            NextHop::Peers(ids(&[1])),
        );
        t.insert(
            net("10.77.2.0/24"),
            Origin::Routed,
            NextHop::Peers(ids(&[2, 3])),
        );
        t.insert(net("10.77.2.9/32"), Origin::Cert, NextHop::Peers(ids(&[9])));
        t.insert(net("fd77::/48"), Origin::Cert, NextHop::Local);
        assert_eq!(t.lookup(ip("10.77.5.1")), Some(&NextHop::Peers(ids(&[1]))));
        assert_eq!(
            t.lookup(ip("10.77.2.1")),
            Some(&NextHop::Peers(ids(&[2, 3])))
        );
        assert_eq!(t.lookup(ip("10.77.2.9")), Some(&NextHop::Peers(ids(&[9]))));
        assert_eq!(t.lookup(ip("fd77::5")), Some(&NextHop::Local));
        assert_eq!(t.lookup(ip("10.78.0.1")), None);
        // A routed entry for the same prefix as a cert entry does not win.
        t.insert(
            net("10.77.2.9/32"),
            Origin::Routed,
            NextHop::Peers(ids(&[2])),
        );
        assert_eq!(t.lookup(ip("10.77.2.9")), Some(&NextHop::Peers(ids(&[9]))));
        assert!(t.remove(net("10.77.2.9/32"), Origin::Cert));
        assert_eq!(t.lookup(ip("10.77.2.9")), Some(&NextHop::Peers(ids(&[2]))));
        t.remove_origin(Origin::Routed);
        assert_eq!(t.lookup(ip("10.77.2.9")), Some(&NextHop::Peers(ids(&[1]))));
    }

    #[test]
    fn removing_a_peer_shrinks_equal_cost_sets() {
        let mut t = ForwardingTable::new();
        t.insert(
            net("10.77.2.0/24"),
            Origin::Routed,
            NextHop::Peers(ids(&[2, 3])),
        );
        t.insert(
            net("10.77.3.0/24"),
            Origin::Routed,
            NextHop::Peers(ids(&[3])),
        );
        t.remove_peer(PeerId(3));
        assert_eq!(t.lookup(ip("10.77.2.1")), Some(&NextHop::Peers(ids(&[2]))));
        assert_eq!(t.lookup(ip("10.77.3.1")), None);
        assert_eq!(t.rows().len(), 1);
        assert_eq!(t.count(Origin::Routed), 1);
        // A prefix with entries of two origins keeps the one left.
        t.insert(
            net("10.77.4.0/24"),
            Origin::Routed,
            NextHop::Peers(ids(&[5])),
        );
        t.insert(
            net("10.77.4.0/24"),
            Origin::Static,
            NextHop::Peers(ids(&[6])),
        );
        t.remove_peer(PeerId(6));
        assert_eq!(t.lookup(ip("10.77.4.1")), Some(&NextHop::Peers(ids(&[5]))));
        assert_eq!((t.count(Origin::Routed), t.count(Origin::Static)), (2, 0));
    }

    proptest::proptest! {
        /// Whatever is inserted, removed or loses a peer, the counts per
        /// origin are the rows of that origin, and no empty entry is left.
        #[test]
        fn counts_follow_the_rows(ops in proptest::collection::vec((0u8..4, 0u32..16, 0usize..3, 1u32..5), 0..200)) {
            let mut t = ForwardingTable::new();
            for (op, p, o, peer) in ops {
                let prefix = net(&format!("10.77.{p}.0/24"));
                let origin = ALL_ORIGINS[o];
                match op {
                    0 | 1 => t.insert(prefix, origin, NextHop::Peers(ids(&[peer, peer + 1]))),
                    2 => { t.remove(prefix, origin); }
                    _ => t.remove_peer(PeerId(peer)),
                }
            }
            let rows = t.rows();
            for o in ALL_ORIGINS {
                proptest::prop_assert_eq!(t.count(o), rows.iter().filter(|r| r.origin == o).count());
            }
            proptest::prop_assert!(rows.iter().all(|r| r.next != NextHop::Peers(vec![])));
        }
    }

    proptest::proptest! {
        /// The lookup over the three origins is the longest prefix of any
        /// origin, the higher origin on the same prefix: checked against
        /// a plain scan of the entries.
        #[test]
        fn lookup_is_the_longest_match_of_any_origin(
            entries in proptest::collection::vec((0u8..3, 0u8..4, 0usize..3, 1u32..9), 0..40),
            dsts in proptest::collection::vec(0u8..4, 1..8),
        ) {
            let mut t = ForwardingTable::new();
            let mut model: Vec<(IpNet, Origin, NextHop)> = Vec::new();
            for (third, len, o, peer) in entries {
                // Nested prefixes inside 10.0.0.0/8: /8, /16, /24 or /32.
                let bits = [8u8, 16, 24, 32][len as usize];
                let prefix = IpNet::new(ip(&format!("10.{third}.1.{third}")), bits).unwrap().trunc();
                let next = NextHop::Peers(ids(&[peer]));
                t.insert(prefix, ALL_ORIGINS[o], next.clone());
                model.retain(|(p, og, _)| !(*p == prefix && *og == ALL_ORIGINS[o]));
                model.push((prefix, ALL_ORIGINS[o], next));
            }
            for d in dsts {
                let dst = ip(&format!("10.{d}.1.{d}"));
                let want = model
                    .iter()
                    .filter(|(p, _, _)| p.contains(&dst))
                    .max_by_key(|(p, o, _)| (p.prefix_len(), *o))
                    .map(|(_, _, n)| n);
                proptest::prop_assert_eq!(t.lookup(dst), want);
            }
        }
    }

    #[test]
    fn a_copy_shares_the_entries_a_change_does_not_touch() {
        let mut t = ForwardingTable::new();
        for i in 0..1000u32 {
            let p = IpNet::new(ip(&format!("10.{}.{}.0", i / 256, i % 256)), 24).unwrap();
            t.insert(p, Origin::Routed, NextHop::Peers(ids(&[1])));
        }
        for i in 0..1000u32 {
            let h = IpNet::new(ip(&format!("10.77.{}.{}", i / 256, i % 256)), 32).unwrap();
            t.insert(h, Origin::Cert, NextHop::Peers(ids(&[10 + i])));
        }
        let published = t.clone();
        t.insert(net("10.78.1.5/32"), Origin::Cert, NextHop::Peers(ids(&[7])));
        let (routed, cert) = (Origin::Routed as usize, Origin::Cert as usize);
        let shared = |a: &ForwardingTable, b: &ForwardingTable, o: usize| {
            let nets = Arc::ptr_eq(&a.by_origin[o].nets, &b.by_origin[o].nets);
            let shards = (a.by_origin[o].hosts.shards.iter())
                .zip(&b.by_origin[o].hosts.shards)
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count();
            (nets, shards)
        };
        // A host attaching copied one shard of host routes, nothing else.
        assert_eq!(shared(&t, &published, routed), (true, HOST_SHARDS));
        assert_eq!(shared(&t, &published, cert), (true, HOST_SHARDS - 1));
        assert_eq!(
            published.lookup(ip("10.78.1.5")),
            None,
            "the copy is unchanged"
        );
        assert_eq!(t.lookup(ip("10.78.1.5")), Some(&NextHop::Peers(ids(&[7]))));
        // Losing a peer that only cert entries have leaves routed shared.
        t.remove_peer(PeerId(7));
        assert_eq!(shared(&t, &published, routed), (true, HOST_SHARDS));
        t.remove_peer(PeerId(1));
        assert_eq!(
            (t.count(Origin::Routed), published.count(Origin::Routed)),
            (0, 1000)
        );
        assert_eq!(t.count(Origin::Cert), 1000);
    }

    #[test]
    fn flows_stick_to_one_path() {
        let peers = ids(&[4, 5, 6]);
        let a = pick_for_flow(&peers, ip("10.77.1.1"), ip("10.77.2.1"));
        for _ in 0..10 {
            assert_eq!(pick_for_flow(&peers, ip("10.77.1.1"), ip("10.77.2.1")), a);
        }
        assert_eq!(pick_for_flow(&[], ip("10.77.1.1"), ip("10.77.2.1")), None);
    }
}
