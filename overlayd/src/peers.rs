//! The peers of a node: a table the control side owns (by key, pending set,
//! index allocation, each peer's timers), and beside it the places by
//! receiver index every packet reads without a lock.

use crate::fib::PeerId;
use crate::peer::{Peer, PeerCtl};
use arc_swap::ArcSwapOption;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pending peer that sent no data after its handshake may be evicted for
/// a newer one once this old. (3 s was tried: with 10,000 hosts returning
/// after a gateway restart the set stayed full, new handshakes were
/// refused and all attached 17 s after the restart instead of 10.)
pub const PENDING_GRACE: Duration = Duration::from_secs(1);

/// Peers by receiver index: a fixed array of atomically swapped places
/// (`limits.max_peers` of them, rounded up to a power of two), so the
/// lookup of every datagram is one load. A place holds the peer whose
/// index maps to it; an index that is not the peer's own finds nothing.
pub struct PeerSlots {
    slots: Box<[ArcSwapOption<Peer>]>,
    mask: u32,
}

impl PeerSlots {
    pub fn new(capacity: usize) -> PeerSlots {
        let n = capacity.next_power_of_two().max(16);
        PeerSlots {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            mask: (n - 1) as u32,
        }
    }

    fn place(&self, index: PeerId) -> &ArcSwapOption<Peer> {
        &self.slots[(index.0 & self.mask) as usize]
    }

    pub fn get(&self, index: PeerId) -> Option<Arc<Peer>> {
        self.place(index).load_full().filter(|p| p.index == index)
    }

    fn is_free(&self, index: PeerId) -> bool {
        self.place(index).load().is_none()
    }

    fn set(&self, peer: &Arc<Peer>) {
        self.place(peer.index).store(Some(peer.clone()));
    }

    fn clear(&self, index: PeerId) {
        let place = self.place(index);
        if place.load().as_ref().is_some_and(|p| p.index == index) {
            place.store(None);
        }
    }
}

/// The control side's view of the peers; every change goes to the
/// lock-free places too.
/// Peers are kept and visited in index order (ordered maps): what a node
/// does on a tick does not depend on a hash seed, so a simulation is the
/// same every run.
pub struct PeerTable {
    by_index: BTreeMap<PeerId, Arc<Peer>>,
    /// The control side's timers and liveness of each peer, by index.
    /// Boxed: peers are added in index order, which leaves a B-tree's
    /// nodes half full, and half-empty nodes of values this size cost a
    /// gateway with 10,000 hosts about 6 MiB.
    ctl: BTreeMap<PeerId, Box<PeerCtl>>,
    by_key: HashMap<[u8; 32], PeerId>,
    /// Admitted peers whose certificate is not validated yet (by index).
    /// Entries whose peer got a certificate or went away are pruned when
    /// the set is full.
    pub pending: BTreeSet<PeerId>,
    next_index: u32,
    slots: Arc<PeerSlots>,
    capacity: usize,
}

impl PeerTable {
    /// A table of at most `capacity` peers; `seed` picks the first index.
    pub fn new(capacity: usize, seed: u32) -> PeerTable {
        PeerTable {
            by_index: BTreeMap::new(),
            ctl: BTreeMap::new(),
            by_key: HashMap::new(),
            pending: BTreeSet::new(),
            next_index: seed & 0x00ff_ffff,
            slots: Arc::new(PeerSlots::new(capacity)),
            capacity,
        }
    }

    /// The lock-free places, for the data path.
    pub fn slots(&self) -> Arc<PeerSlots> {
        self.slots.clone()
    }

    pub fn is_full(&self) -> bool {
        self.by_index.len() >= self.capacity
    }

    pub fn get(&self, index: PeerId) -> Option<&Arc<Peer>> {
        self.by_index.get(&index)
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key).and_then(|i| self.by_index.get(i))
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_index.values()
    }

    /// The timers and liveness of a peer in the table.
    pub fn ctl(&self, index: PeerId) -> Option<&PeerCtl> {
        self.ctl.get(&index).map(|c| &**c)
    }

    pub fn ctl_mut(&mut self, index: PeerId) -> Option<&mut PeerCtl> {
        self.ctl.get_mut(&index).map(|c| &mut **c)
    }

    pub fn insert(&mut self, peer: Arc<Peer>, ctl: PeerCtl) {
        self.slots.set(&peer);
        self.ctl.insert(peer.index, Box::new(ctl));
        self.by_key.insert(peer.public_key, peer.index);
        self.by_index.insert(peer.index, peer);
    }

    pub fn remove(&mut self, peer: &Peer) {
        if self.by_index.remove(&peer.index).is_some() {
            self.slots.clear(peer.index);
            self.ctl.remove(&peer.index);
        }
        if self.by_key.get(&peer.public_key) == Some(&peer.index) {
            self.by_key.remove(&peer.public_key);
        }
        self.pending.remove(&peer.index);
    }

    /// Frees a place in a full pending set: first entries that are no
    /// longer pending, else the oldest peer that has not followed its
    /// handshake with data for [`PENDING_GRACE`] (it never proved its key:
    /// a flood of initiations). Peers that proved their key keep their
    /// place until the pending timeout, and a young handshake gets its
    /// round trip. False when nothing could go.
    pub fn make_pending_room(&mut self, now: Instant, evicted: &AtomicU64) -> bool {
        let before = self.pending.len();
        let by_index = &self.by_index;
        self.pending
            .retain(|i| by_index.get(i).is_some_and(|p| !p.has_cert()));
        if self.pending.len() < before {
            return true;
        }
        let oldest = self
            .pending
            .iter()
            .filter_map(|i| self.by_index.get(i))
            .filter(|p| !p.confirmed.load(Ordering::Relaxed))
            .min_by_key(|p| p.created)
            .filter(|p| now.saturating_duration_since(p.created) >= PENDING_GRACE)
            .cloned();
        let Some(p) = oldest else { return false };
        evicted.fetch_add(1, Ordering::Relaxed);
        self.remove(&p);
        tracing::debug!(peer = %p.name(), "pending peer evicted for a newer handshake");
        true
    }

    /// A free receiver index whose place is free too (the caller checked
    /// [`PeerTable::is_full`]).
    pub fn alloc_index(&mut self) -> PeerId {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            let id = PeerId(self.next_index);
            if self.next_index != 0 && !self.by_index.contains_key(&id) && self.slots.is_free(id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::Tunn;
    use std::collections::HashSet;
    use x25519_dalek::{PublicKey, StaticSecret};

    fn pending_peer(index: u32, created: Instant) -> Arc<Peer> {
        let index = PeerId(index);
        let ours = StaticSecret::random_from_rng(rand_core::OsRng);
        let theirs = StaticSecret::random_from_rng(rand_core::OsRng);
        let key = PublicKey::from(&theirs).to_bytes();
        let tunn = Tunn::new(ours, PublicKey::from(key), None, None, index.0, None);
        Arc::new(Peer::new(index, key, None, tunn, created))
    }

    fn table(peers: &[Arc<Peer>]) -> PeerTable {
        let mut t = PeerTable::new(64, 0);
        for p in peers {
            t.insert(p.clone(), PeerCtl::new(p.index, 3));
            t.pending.insert(p.index);
        }
        t
    }

    #[test]
    fn a_full_pending_set_evicts_the_oldest_silent_peer_after_its_grace() {
        let t0 = Instant::now();
        let old = pending_peer(1, t0);
        let proven = pending_peer(2, t0);
        proven.confirmed.store(true, Ordering::Relaxed);
        let young = pending_peer(3, t0 + PENDING_GRACE * 9 / 10);
        let mut t = table(&[old.clone(), proven.clone(), young.clone()]);
        let evicted = AtomicU64::new(0);

        // Within the grace nobody goes: the newcomer is refused.
        assert!(!t.make_pending_room(t0 + PENDING_GRACE / 2, &evicted));
        assert_eq!(t.pending.len(), 3);

        // After it, the oldest peer that sent no data goes; the one that
        // proved its key stays.
        assert!(t.make_pending_room(t0 + PENDING_GRACE, &evicted));
        assert!(t.get(PeerId(1)).is_none() && t.by_key(&old.public_key).is_none());
        assert!(t.slots.get(PeerId(1)).is_none(), "its place is free");
        assert!(t.get(PeerId(2)).is_some() && t.get(PeerId(3)).is_some());
        assert_eq!(evicted.load(Ordering::Relaxed), 1);

        // The young one is next once its own grace is over; the proven one
        // never is.
        assert!(!t.make_pending_room(t0 + PENDING_GRACE, &evicted));
        assert!(t.make_pending_room(t0 + PENDING_GRACE * 19 / 10, &evicted));
        assert!(!t.make_pending_room(t0 + Duration::from_secs(60), &evicted));
        assert_eq!(
            t.pending.iter().copied().collect::<Vec<_>>(),
            vec![PeerId(2)]
        );
    }

    #[test]
    fn entries_no_longer_pending_make_room_first() {
        let t0 = Instant::now();
        let gone = pending_peer(1, t0);
        let silent = pending_peer(2, t0);
        let mut t = table(&[gone.clone(), silent]);
        t.by_index.remove(&PeerId(1));
        let evicted = AtomicU64::new(0);
        assert!(t.make_pending_room(t0 + Duration::from_secs(10), &evicted));
        assert_eq!(evicted.load(Ordering::Relaxed), 0, "nobody was evicted");
        assert!(t.get(PeerId(2)).is_some());
        assert_eq!(t.pending.len(), 1);
    }

    #[test]
    fn indices_map_to_free_places_and_a_stale_index_finds_nothing() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(16, 0);
        let mut seen = HashSet::new();
        for _ in 0..16 {
            let i = t.alloc_index();
            assert!(seen.insert(i.0 & 15), "two peers in one place: {i}");
            t.insert(pending_peer(i.0, t0), PeerCtl::new(i, 3));
        }
        assert!(t.is_full());
        // A peer goes; its index and the next one that maps to its place
        // are told apart.
        let first = *seen.iter().next().unwrap();
        let p = t
            .values()
            .find(|p| p.index.0 & 15 == first)
            .unwrap()
            .clone();
        t.remove(&p);
        let i = t.alloc_index();
        assert_eq!(i.0 & 15, p.index.0 & 15);
        assert_ne!(i, p.index);
        t.insert(pending_peer(i.0, t0), PeerCtl::new(i, 3));
        assert!(t.slots.get(p.index).is_none(), "the old index is gone");
        assert_eq!(t.slots.get(i).map(|q| q.index), Some(i));
    }
}
