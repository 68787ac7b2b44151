//! The forwarding table of a gateway: longest-prefix match from a
//! destination to this node's own TUN or to one or more (equal-cost) peers.
//!
//! Entries come from three origins; for the same prefix the higher one
//! wins: a host attached here (its certificate's addresses), a static route
//! from the config, and routes installed by routed. Sans-IO.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
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

/// The entries of one origin.
#[derive(Clone, Default)]
struct Entries {
    v4: PrefixMap<Ipv4Net, NextHop>,
    v6: PrefixMap<Ipv6Net, NextHop>,
}

impl Entries {
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

    fn has_peer(&self, peer: PeerId) -> bool {
        self.iter()
            .any(|(_, n)| matches!(n, NextHop::Peers(ps) if ps.contains(&peer)))
    }
}

/// A forwarding table. Each origin's entries sit behind their own `Arc`,
/// so a copy of the table (what the node publishes to its workers after a
/// change) costs three reference counts, and a change copies the entries
/// of its own origin only when a published copy still shares them: a host
/// attaching does not copy a million routed prefixes.
#[derive(Clone, Default)]
pub struct ForwardingTable {
    by_origin: [Arc<Entries>; ORIGINS],
    /// Entries per origin.
    counts: [usize; ORIGINS],
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

    /// The entries of `origin`, to change (copied first if shared).
    fn entries_mut(&mut self, origin: Origin) -> &mut Entries {
        Arc::make_mut(&mut self.by_origin[origin as usize])
    }

    pub fn insert(&mut self, prefix: IpNet, origin: Origin, next: NextHop) {
        let e = self.entries_mut(origin);
        let old = match prefix.trunc() {
            IpNet::V4(p) => e.v4.insert(p, next),
            IpNet::V6(p) => e.v6.insert(p, next),
        };
        if old.is_none() {
            self.counts[origin as usize] += 1;
        }
    }

    /// How many entries `origin` has.
    pub fn count(&self, origin: Origin) -> usize {
        self.counts[origin as usize]
    }

    /// Removes the entry of `origin` for `prefix`; true if there was one.
    pub fn remove(&mut self, prefix: IpNet, origin: Origin) -> bool {
        let prefix = prefix.trunc();
        let e = &self.by_origin[origin as usize];
        let present = match prefix {
            IpNet::V4(p) => e.v4.get(&p).is_some(),
            IpNet::V6(p) => e.v6.get(&p).is_some(),
        };
        if !present {
            return false;
        }
        let e = self.entries_mut(origin);
        match prefix {
            IpNet::V4(p) => e.v4.remove(&p),
            IpNet::V6(p) => e.v6.remove(&p),
        };
        self.counts[origin as usize] -= 1;
        true
    }

    /// Removes every entry of `origin` (e.g. all static routes on reload).
    pub fn remove_origin(&mut self, origin: Origin) {
        self.by_origin[origin as usize] = Arc::default();
        self.counts[origin as usize] = 0;
    }

    /// Removes the entries of `origin` whose prefix `keep` refuses; returns
    /// how many went.
    pub fn retain(&mut self, origin: Origin, keep: impl Fn(IpNet) -> bool) -> usize {
        let gone = self.by_origin[origin as usize]
            .iter()
            .filter(|(p, _)| !keep(*p))
            .count();
        if gone > 0 {
            let e = self.entries_mut(origin);
            e.v4.retain(|p, _| keep(IpNet::V4(*p)));
            e.v6.retain(|p, _| keep(IpNet::V6(*p)));
            self.counts[origin as usize] -= gone;
        }
        gone
    }

    /// Drops `peer` from every entry; entries left without a next hop go.
    /// One pass over each origin in place (no copy of its rows); an origin
    /// without the peer is not touched, so not copied.
    pub fn remove_peer(&mut self, peer: PeerId) {
        for o in ALL_ORIGINS {
            if !self.by_origin[o as usize].has_peer(peer) {
                continue;
            }
            let e = self.entries_mut(o);
            let drop_peer = |n: &mut NextHop| {
                if let NextHop::Peers(ps) = n {
                    ps.retain(|p| *p != peer);
                }
            };
            for (_, n) in e.v4.iter_mut() {
                drop_peer(n);
            }
            for (_, n) in e.v6.iter_mut() {
                drop_peer(n);
            }
            let live = |n: &NextHop| !matches!(n, NextHop::Peers(ps) if ps.is_empty());
            e.v4.retain(|_, n| live(n));
            e.v6.retain(|_, n| live(n));
            self.counts[o as usize] = e.v4.len() + e.v6.len();
        }
    }

    /// Longest-prefix match; for the same prefix the higher origin wins.
    /// A host entry of a certificate (the longest prefix there is) ends
    /// the search at once.
    pub fn lookup(&self, dst: IpAddr) -> Option<&NextHop> {
        let full = if dst.is_ipv4() { 32 } else { 128 };
        let mut best: Option<(u8, &NextHop)> = None;
        for o in ALL_ORIGINS.iter().rev() {
            if let Some((len, n)) = self.by_origin[*o as usize].lpm(dst) {
                if len == full {
                    return Some(n);
                }
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
        let published = t.clone();
        t.insert(net("10.77.1.5/32"), Origin::Cert, NextHop::Peers(ids(&[7])));
        let routed = Origin::Routed as usize;
        assert!(Arc::ptr_eq(
            &t.by_origin[routed],
            &published.by_origin[routed]
        ));
        assert_eq!(
            published.lookup(ip("10.77.1.5")),
            None,
            "the copy is unchanged"
        );
        assert_eq!(t.lookup(ip("10.77.1.5")), Some(&NextHop::Peers(ids(&[7]))));
        // Losing a peer that only cert entries have leaves routed shared.
        t.remove_peer(PeerId(7));
        assert!(Arc::ptr_eq(
            &t.by_origin[routed],
            &published.by_origin[routed]
        ));
        t.remove_peer(PeerId(1));
        assert_eq!(
            (t.count(Origin::Routed), published.count(Origin::Routed)),
            (0, 1000)
        );
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
