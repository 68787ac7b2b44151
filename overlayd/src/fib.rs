//! The forwarding table of a gateway: longest-prefix match from a
//! destination to this node's own TUN or to one or more (equal-cost) peers.
//!
//! Entries come from three origins; for the same prefix the higher one
//! wins: a host attached here (its certificate's addresses), a static route
//! from the config, and routes installed by routed. Sans-IO.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use std::net::IpAddr;

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

/// The entries of one prefix, one place per origin (a fixed array, not a
/// map: a million routed prefixes cost their next hops and the trie, no
/// more).
#[derive(Debug, Clone, Default)]
struct Slot {
    by_origin: [Option<NextHop>; ORIGINS],
}

const ORIGINS: usize = 3;
const ALL_ORIGINS: [Origin; ORIGINS] = [Origin::Routed, Origin::Static, Origin::Cert];

impl Slot {
    fn best(&self) -> Option<&NextHop> {
        self.by_origin.iter().rev().find_map(|n| n.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.by_origin.iter().all(|n| n.is_none())
    }

    fn entries(&self) -> impl Iterator<Item = (Origin, &NextHop)> {
        ALL_ORIGINS
            .iter()
            .zip(&self.by_origin)
            .filter_map(|(o, n)| Some((*o, n.as_ref()?)))
    }
}

#[derive(Default)]
pub struct ForwardingTable {
    v4: PrefixMap<Ipv4Net, Slot>,
    v6: PrefixMap<Ipv6Net, Slot>,
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

    fn slot_mut(&mut self, prefix: IpNet) -> &mut Slot {
        match prefix.trunc() {
            IpNet::V4(p) => {
                if self.v4.get(&p).is_none() {
                    self.v4.insert(p, Slot::default());
                }
                self.v4.get_mut(&p).expect("just inserted")
            }
            IpNet::V6(p) => {
                if self.v6.get(&p).is_none() {
                    self.v6.insert(p, Slot::default());
                }
                self.v6.get_mut(&p).expect("just inserted")
            }
        }
    }

    pub fn insert(&mut self, prefix: IpNet, origin: Origin, next: NextHop) {
        let old = self.slot_mut(prefix).by_origin[origin as usize].replace(next);
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
        let removed;
        let empty;
        match prefix.trunc() {
            IpNet::V4(p) => {
                let Some(s) = self.v4.get_mut(&p) else {
                    return false;
                };
                removed = s.by_origin[origin as usize].take().is_some();
                empty = s.is_empty();
                if empty {
                    self.v4.remove(&p);
                }
            }
            IpNet::V6(p) => {
                let Some(s) = self.v6.get_mut(&p) else {
                    return false;
                };
                removed = s.by_origin[origin as usize].take().is_some();
                empty = s.is_empty();
                if empty {
                    self.v6.remove(&p);
                }
            }
        }
        if removed {
            self.counts[origin as usize] -= 1;
        }
        removed
    }

    /// Removes every entry of `origin` (e.g. all static routes on reload).
    pub fn remove_origin(&mut self, origin: Origin) {
        self.retain(origin, |_| false);
    }

    /// Removes the entries of `origin` whose prefix `keep` refuses; returns
    /// how many went.
    pub fn retain(&mut self, origin: Origin, keep: impl Fn(IpNet) -> bool) -> usize {
        let gone: Vec<IpNet> = self
            .v4
            .iter()
            .filter(|(_, s)| s.by_origin[origin as usize].is_some())
            .map(|(p, _)| IpNet::V4(p))
            .chain(
                self.v6
                    .iter()
                    .filter(|(_, s)| s.by_origin[origin as usize].is_some())
                    .map(|(p, _)| IpNet::V6(p)),
            )
            .filter(|p| !keep(*p))
            .collect();
        for p in &gone {
            self.remove(*p, origin);
        }
        gone.len()
    }

    /// Drops `peer` from every entry; entries left without a next hop go.
    /// One pass over the table in place (no copy of its rows: a gateway
    /// with a million routed entries does this whenever a peer goes).
    pub fn remove_peer(&mut self, peer: PeerId) {
        let mut gone = [0usize; ORIGINS];
        let mut drop_peer = |slot: &mut Slot| {
            for (o, entry) in slot.by_origin.iter_mut().enumerate() {
                if let Some(NextHop::Peers(ps)) = entry {
                    if ps.contains(&peer) {
                        ps.retain(|p| *p != peer);
                        if ps.is_empty() {
                            *entry = None;
                            gone[o] += 1;
                        }
                    }
                }
            }
        };
        for (_, slot) in self.v4.iter_mut() {
            drop_peer(slot);
        }
        for (_, slot) in self.v6.iter_mut() {
            drop_peer(slot);
        }
        self.v4.retain(|_, s| !s.is_empty());
        self.v6.retain(|_, s| !s.is_empty());
        for (c, g) in self.counts.iter_mut().zip(gone) {
            *c -= g;
        }
    }

    /// Longest-prefix match.
    pub fn lookup(&self, dst: IpAddr) -> Option<&NextHop> {
        match dst {
            IpAddr::V4(a) => self
                .v4
                .get_lpm(&Ipv4Net::from(a))
                .and_then(|(_, s)| s.best()),
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::from(a))
                .and_then(|(_, s)| s.best()),
        }
    }

    /// Every entry of every origin, sorted by prefix.
    pub fn rows(&self) -> Vec<Row> {
        let mut out = Vec::new();
        for (p, s) in self.v4.iter() {
            for (o, n) in s.entries() {
                out.push(Row {
                    prefix: IpNet::V4(p),
                    origin: o,
                    next: n.clone(),
                });
            }
        }
        for (p, s) in self.v6.iter() {
            for (o, n) in s.entries() {
                out.push(Row {
                    prefix: IpNet::V6(p),
                    origin: o,
                    next: n.clone(),
                });
            }
        }
        out
    }
}

/// Picks one of equal-cost peers for a flow, so a flow stays on one path.
pub fn pick_for_flow(peers: &[PeerId], src: IpAddr, dst: IpAddr) -> Option<PeerId> {
    if peers.is_empty() {
        return None;
    }
    let h = flow_hash(src, dst);
    Some(peers[(h % peers.len() as u64) as usize])
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
