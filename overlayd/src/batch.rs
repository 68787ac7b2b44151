//! Buffers between [`crate::node::Node`] and the driver, shaped for the
//! fast path: datagrams to one endpoint are packed back to back so the
//! driver can hand a whole run to the kernel as one UDP GSO send, and
//! packets for the TUN keep headroom for the virtio-net header so the driver
//! can coalesce them (GRO) into one TUN write. Buffers are reused, so the
//! steady state allocates nothing.

use std::net::SocketAddr;

/// Headroom in front of every TUN packet (tun-rs' `VIRTIO_NET_HDR_LEN`).
pub const TUN_HEADROOM: usize = 10;
/// Room of every TUN buffer: the first packet of a run grows into a whole
/// coalesced 64 KiB packet (tun-rs needs twice the headroom on top).
const TUN_CAPACITY: usize = 65_536 + 2 * TUN_HEADROOM;
/// Packets to queue for the TUN before the driver should write them.
pub const TUN_FLUSH_AT: usize = 64;

/// A UDP GSO send carries at most this many payload bytes.
const MAX_BATCH_BYTES: usize = 65_000;
/// Storage per batch: the most bytes plus one more datagram.
const BATCH_CAPACITY: usize = 65_536 + 2_048;
/// The kernel's UDP_MAX_SEGMENTS.
const MAX_SEGMENTS: usize = 64;

/// Datagrams of equal size to one endpoint, back to back; the last one may
/// be shorter.
pub struct Batch {
    pub ep: SocketAddr,
    data: Vec<u8>,
    len: usize,
    /// Size of every datagram but the last.
    pub segment: usize,
    pub count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

impl Batch {
    fn new(ep: SocketAddr) -> Batch {
        Batch {
            ep,
            data: vec![0u8; BATCH_CAPACITY],
            len: 0,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    fn reset(&mut self, ep: SocketAddr) {
        self.ep = ep;
        self.len = 0;
        self.segment = 0;
        self.count = 0;
        self.closed = false;
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// The datagrams one by one (for a send without GSO).
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes().chunks(self.segment.max(1))
    }
}

/// Outgoing datagrams, grouped for UDP GSO.
#[derive(Default)]
pub struct NetQueue {
    batches: Vec<Batch>,
    used: usize,
}

impl NetQueue {
    fn open(&mut self, ep: SocketAddr) -> &mut Batch {
        if self.used == self.batches.len() {
            self.batches.push(Batch::new(ep));
        } else {
            self.batches[self.used].reset(ep);
        }
        self.used += 1;
        &mut self.batches[self.used - 1]
    }

    /// Writes one datagram of at most `room` bytes to `ep`: `fill` gets the
    /// space and returns the length it used, or `None` to write nothing.
    pub fn push_with(
        &mut self,
        ep: SocketAddr,
        room: usize,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        assert!(room <= BATCH_CAPACITY, "datagram larger than a batch");
        let fits = self.used > 0 && {
            let b = &self.batches[self.used - 1];
            b.ep == ep
                && !b.closed
                && b.count < MAX_SEGMENTS
                && b.len + room <= MAX_BATCH_BYTES.max(room)
                && b.len + room <= BATCH_CAPACITY
        };
        if !fits {
            self.open(ep);
        }
        let b = &mut self.batches[self.used - 1];
        let start = b.len;
        let Some(n) = fill(&mut b.data[start..start + room]) else {
            if b.count == 0 {
                self.used -= 1;
            }
            return;
        };
        let n = n.min(room);
        if b.count == 0 || n == b.segment {
            b.segment = n;
            b.count += 1;
            b.len += n;
        } else if n < b.segment {
            b.count += 1;
            b.len += n;
            b.closed = true;
        } else {
            // Longer than the run: it starts a batch of its own.
            let bytes = b.data[start..start + n].to_vec();
            self.open(ep).data[..n].copy_from_slice(&bytes);
            let nb = &mut self.batches[self.used - 1];
            nb.segment = n;
            nb.count = 1;
            nb.len = n;
        }
    }

    /// Queues a copy of `bytes` to `ep`.
    pub fn push(&mut self, ep: SocketAddr, bytes: &[u8]) {
        self.push_with(ep, bytes.len(), |dst| {
            dst.copy_from_slice(bytes);
            Some(bytes.len())
        });
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.used == 0
    }

    pub fn batches(&self) -> &[Batch] {
        &self.batches[..self.used]
    }

    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// Every datagram with its endpoint.
    #[cfg(test)]
    fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.batches()
            .iter()
            .flat_map(|b| b.datagrams().map(move |d| (b.ep, d)))
    }
}

/// Packets for the TUN, each after [`TUN_HEADROOM`] bytes.
#[derive(Default)]
pub struct TunQueue {
    pub bufs: Vec<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

impl TunQueue {
    /// A buffer with `room` bytes after the headroom; give it back with
    /// [`TunQueue::push_buf`] or [`TunQueue::recycle`].
    pub fn take(&mut self, room: usize) -> Vec<u8> {
        let mut b = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(TUN_CAPACITY));
        b.resize(TUN_HEADROOM + room, 0);
        b
    }

    /// Queues a buffer whose packet is `len` bytes after the headroom.
    pub fn push_buf(&mut self, mut b: Vec<u8>, len: usize) {
        b.truncate(TUN_HEADROOM + len);
        self.bufs.push(b);
    }

    pub fn recycle(&mut self, b: Vec<u8>) {
        self.free.push(b);
    }

    /// Queues a copy of `pkt`.
    #[cfg(test)]
    fn push(&mut self, pkt: &[u8]) {
        let mut b = self.take(pkt.len());
        b[TUN_HEADROOM..].copy_from_slice(pkt);
        self.bufs.push(b);
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// The queued packets without headroom.
    #[cfg(test)]
    fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs.iter().map(|b| &b[TUN_HEADROOM..])
    }

    /// Returns every queued buffer to the pool.
    pub fn clear(&mut self) {
        self.free.append(&mut self.bufs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn equal_sizes_to_one_endpoint_share_a_batch() {
        let mut q = NetQueue::default();
        for _ in 0..3 {
            q.push(ep(1), &[7u8; 100]);
        }
        q.push(ep(1), &[8u8; 40]); // shorter: ends the run
        q.push(ep(1), &[9u8; 40]);
        q.push(ep(2), &[1u8; 40]);
        let b = q.batches();
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].count, b[0].segment, b[0].bytes().len()),
            (4, 100, 340)
        );
        assert_eq!((b[1].count, b[2].ep), (1, ep(2)));
        let d: Vec<_> = q.datagrams().map(|(_, d)| d.len()).collect();
        assert_eq!(d, vec![100, 100, 100, 40, 40, 40]);
    }

    #[test]
    fn a_longer_datagram_moves_to_its_own_batch() {
        let mut q = NetQueue::default();
        q.push(ep(1), &[1u8; 100]);
        q.push(ep(1), &[2u8; 200]);
        let b = q.batches();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].bytes(), &[1u8; 100][..]);
        assert_eq!(b[1].bytes(), &[2u8; 200][..]);
    }

    #[test]
    fn batches_respect_segment_and_byte_limits() {
        let mut q = NetQueue::default();
        for _ in 0..200 {
            q.push(ep(1), &[0u8; 1452]);
        }
        for b in q.batches() {
            assert!(b.count <= MAX_SEGMENTS);
            assert!(b.bytes().len() <= MAX_BATCH_BYTES);
        }
        assert_eq!(q.datagrams().count(), 200);
        q.clear();
        assert!(q.is_empty());
    }

    #[test]
    fn a_fill_that_writes_nothing_leaves_no_batch() {
        let mut q = NetQueue::default();
        q.push_with(ep(1), 64, |_| None);
        assert!(q.is_empty());
    }

    #[test]
    fn tun_buffers_are_reused() {
        let mut t = TunQueue::default();
        t.push(&[1, 2, 3]);
        assert_eq!(t.packets().next(), Some(&[1u8, 2, 3][..]));
        t.clear();
        assert!(t.is_empty());
        let b = t.take(5);
        assert_eq!(b.len(), TUN_HEADROOM + 5);
    }
}
