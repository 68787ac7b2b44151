//! One WireGuard peer of this node: its tunnel state (boringtun `Tunn`), its
//! current UDP endpoint, the certificate once validated, counters and, for
//! gateway tunnels, liveness.

use crate::fib::PeerId;
use crate::health::{GatewayHealth, HandshakeRetry};
use crate::pmtu::{PathMtu, Timing, BASE};
use arc_swap::ArcSwapOption;
use boringtun::noise::Tunn;
use cubenet_certs::{NodeCert, Role};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Peer {
    /// Our WireGuard receiver index for this peer (24 bits).
    pub index: PeerId,
    pub public_key: [u8; 32],
    /// The name in our config, for gateways we keep a tunnel to.
    pub configured: Option<String>,
    /// The only lock a packet takes: the session's keys and counters.
    tunn: Mutex<Tunn>,
    /// Read on every packet sent, written when the peer roams: no lock.
    endpoint: ArcSwapOption<SocketAddr>,
    /// Set once the certificate is validated; nothing is forwarded before.
    /// Read on every packet without a lock.
    cert: ArcSwapOption<NodeCert>,
    /// The peer sent authenticated data (not just a handshake), so it holds
    /// the key: a replayed handshake never gets this far.
    pub confirmed: AtomicBool,
    /// Our certificate was acknowledged by the peer.
    pub our_cert_acked: AtomicBool,
    pub attached: AtomicBool,
    pub created: Instant,
    /// Whether the gateway tunnel answers its probes, for the forwarding
    /// path; the control side sets it from the peer's [`PeerCtl`].
    healthy: AtomicBool,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub spoofed: AtomicU64,
    /// The largest inner packet the tunnel carries now, from the control
    /// side's [`PathMtu`]; read on every packet sent.
    mtu: AtomicU16,
    /// A packet larger than [`BASE`] went in since the control side last
    /// looked: the tunnel's MTU matters, keep it probed.
    big_sent: AtomicBool,
    /// The endpoint changed since the control side last looked.
    moved: AtomicBool,
    /// The receiver index our last in-band message to the peer carried
    /// (0: none, or already used by a stale-session hint).
    pub remote_index: AtomicU32,
}

/// What the control side keeps of one peer: its timers and the gateway
/// tunnel's liveness. It lives in the node's control state beside the
/// peer, changed only there; the data path never reads it.
#[derive(Debug, Clone)]
pub struct PeerCtl {
    pub last_cert_sent: Option<Instant>,
    /// When the last handshake completed, on the clock the node is given
    /// (boringtun keeps its own on the real clock; the node's decisions use
    /// this one, so they run on a virtual clock too).
    pub handshake_at: Option<Instant>,
    /// When the peer's probes arrive (overlayd hosts probe their gateways;
    /// a plain WireGuard client never does).
    pub probes: ProbeClock,
    /// When we start the next handshake ourselves (configured gateways).
    pub retry: HandshakeRetry,
    pub health: GatewayHealth,
    /// What the tunnel carries: see [`crate::pmtu`].
    pub pmtu: PathMtu,
    /// A host's tunnel here (gateways): its flap state, from the first
    /// time it went silent; see [`crate::config::Damping`].
    /// Boxed: most never flap, and a gateway has thousands.
    pub host_link: Option<Box<cubenet_daemon::damping::Link>>,
    /// A configured gateway that speaks [`crate::inband::Message::Hello`]:
    /// while the tunnel is up, our probes to it are hellos. Forgotten when
    /// the tunnel goes down (it may come back as an older version).
    pub hello: bool,
    /// The last probe number heard from the peer and when, acknowledged
    /// in our next hello.
    pub heard: Option<(u64, Instant)>,
}

impl PeerCtl {
    /// The state of a new peer; `misses` probes lost take a gateway tunnel
    /// down.
    pub fn new(index: PeerId, misses: u32) -> PeerCtl {
        PeerCtl {
            last_cert_sent: None,
            handshake_at: None,
            probes: ProbeClock::default(),
            retry: HandshakeRetry::new(u64::from(index.0)),
            health: GatewayHealth::new(misses),
            pmtu: PathMtu::new(u16::MAX, Timing::default(), false),
            host_link: None,
            hello: false,
            heard: None,
        }
    }

    /// Whether a host's tunnel here is held down by damping at `now`.
    pub fn host_damped(&self, now: Instant) -> bool {
        self.host_link.as_ref().is_some_and(|l| l.suppressed(now))
    }

    /// With the tunnel's MTU at most `max` (the interface's), probed
    /// from the start when `always` (a tunnel to a gateway), else once
    /// large packets go into it.
    pub fn with_mtu(mut self, max: u16, timing: Timing, always: bool) -> PeerCtl {
        self.pmtu = PathMtu::new(max, timing, always);
        self
    }
}

/// The rhythm of a peer's probes, learned from their arrivals: a gateway
/// judges a host's silence by the host's own probe interval, whatever the
/// two configs say.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeClock {
    pub last: Option<Instant>,
    /// Smoothed gap between probes: half weight per sample, each sample
    /// within half and 4× the estimate, so a host whose interval grows is
    /// followed within three probes, one that shrinks within a few more,
    /// an outage moves it little and a bunch of early probes cannot make a
    /// slow host look silent.
    pub gap: Option<Duration>,
}

impl ProbeClock {
    /// A probe arrived. Gaps shorter than half of `floor` (the gateway's
    /// own interval) are bursts, not the rhythm (probes queued during a
    /// handshake arrive together) and are not counted.
    pub fn heard(&mut self, now: Instant, floor: Duration) {
        if let Some(last) = self.last {
            let g = now.saturating_duration_since(last);
            if g < floor / 2 {
                return;
            }
            // From the assumed interval, not from the first sample: a
            // host's first probes can arrive bunched (queued behind a busy
            // link or a handshake), and a rhythm learned from them would
            // call a slower host silent between two of its probes — a
            // false detach, and a flap that damping counts.
            let old = self.gap.unwrap_or(Self::UNKNOWN);
            self.gap = Some((old + g.clamp(old / 2, old * 4)) / 2);
        }
        self.last = Some(now);
    }

    /// Silent for `misses + 1` of its probe intervals (at least `floor`
    /// each). Until two probes showed the interval it is taken to be
    /// [`ProbeClock::UNKNOWN`]; a peer that never probed is never silent.
    pub fn silent(&self, now: Instant, floor: Duration, misses: u32) -> bool {
        let Some(last) = self.last else { return false };
        let gap = self.gap.unwrap_or(Self::UNKNOWN);
        now.saturating_duration_since(last) > gap.max(floor) * (misses + 1)
    }

    /// The probe interval assumed before it is known: slower than any
    /// host's default, so a host that probes slowly is not detached
    /// between its first two probes.
    pub const UNKNOWN: Duration = Duration::from_secs(1);
}

impl Peer {
    pub fn new(
        index: PeerId,
        public_key: [u8; 32],
        configured: Option<String>,
        tunn: Tunn,
        now: Instant,
    ) -> Peer {
        Peer {
            index,
            public_key,
            configured,
            tunn: Mutex::new(tunn),
            endpoint: ArcSwapOption::empty(),
            cert: ArcSwapOption::empty(),
            confirmed: AtomicBool::new(false),
            our_cert_acked: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            created: now,
            healthy: AtomicBool::new(false),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            spoofed: AtomicU64::new(0),
            mtu: AtomicU16::new(u16::MAX),
            big_sent: AtomicBool::new(false),
            moved: AtomicBool::new(false),
            remote_index: AtomicU32::new(0),
        }
    }

    /// The largest inner packet the tunnel carries, as far as known.
    pub fn mtu(&self) -> usize {
        usize::from(self.mtu.load(Ordering::Relaxed))
    }

    pub fn set_mtu(&self, mtu: u16) {
        self.mtu.store(mtu, Ordering::Relaxed);
    }

    /// The data path sent a packet of `len` bytes into the tunnel.
    pub fn note_size(&self, len: usize) {
        // A load first: a store per packet would write a shared line.
        if len > usize::from(BASE) && !self.big_sent.load(Ordering::Relaxed) {
            self.big_sent.store(true, Ordering::Relaxed);
        }
    }

    /// Whether large packets went in since the last call.
    pub fn take_big_sent(&self) -> bool {
        self.big_sent.load(Ordering::Relaxed) && self.big_sent.swap(false, Ordering::Relaxed)
    }

    /// Whether the endpoint changed since the last call.
    pub fn take_moved(&self) -> bool {
        self.moved.load(Ordering::Relaxed) && self.moved.swap(false, Ordering::Relaxed)
    }

    /// The tunnel; never hold the guard across an `.await`.
    pub fn tunn(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn replace_tunn(&self, tunn: Tunn) {
        *self.tunn() = tunn;
    }

    /// Whether the gateway tunnel answers its probes (lock-free).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Publishes the tunnel's liveness for the forwarding path.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn cert(&self) -> Option<Arc<NodeCert>> {
        self.cert.load_full()
    }

    /// Whether the certificate is validated, without taking a reference.
    pub fn has_cert(&self) -> bool {
        self.cert.load().is_some()
    }

    pub fn set_cert(&self, cert: Option<Arc<NodeCert>>) {
        self.cert.store(cert);
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load().as_deref().copied()
    }

    /// Where the peer was last authenticated from; stored only when it
    /// moved (the common case is one lock-free load).
    pub fn set_endpoint(&self, ep: SocketAddr) {
        let old = self.endpoint.load();
        if old.as_deref() != Some(&ep) {
            if old.is_some() {
                self.moved.store(true, Ordering::Relaxed);
            }
            self.endpoint.store(Some(Arc::new(ep)));
        }
    }

    /// Display name: the certificate's, else the configured one, else the key.
    pub fn name(&self) -> String {
        if let Some(c) = self.cert() {
            return c.name().to_string();
        }
        if let Some(n) = &self.configured {
            return n.clone();
        }
        format!("key:{}", &crate::b64(&self.public_key)[..8])
    }

    pub fn role(&self) -> Option<Role> {
        self.cert
            .load()
            .as_ref()
            .map(|c| c.role())
            .or(self.configured.as_ref().map(|_| Role::Gateway))
    }

    pub fn is_gateway(&self) -> bool {
        self.configured.is_some() || self.role() == Some(Role::Gateway)
    }

    pub fn count_rx(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_tx(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn silence_is_judged_by_the_peers_own_probe_interval() {
        let t0 = Instant::now();
        let mut c = ProbeClock::default();
        assert!(!c.silent(t0 + 60_000 * MS, 100 * MS, 3), "never probed");
        c.heard(t0, 100 * MS);
        // One probe: the interval is taken to be a second.
        assert!(!c.silent(t0 + 3900 * MS, 100 * MS, 3));
        assert!(c.silent(t0 + 4100 * MS, 100 * MS, 3));
        // Probes every second: silent after four of them are missing.
        for i in 1..=5 {
            c.heard(t0 + i * 1000 * MS, 100 * MS);
        }
        let last = t0 + 5000 * MS;
        assert!(!c.silent(last + 3900 * MS, 100 * MS, 3));
        assert!(c.silent(last + 4100 * MS, 100 * MS, 3));
        // Never faster than the floor.
        assert!(!c.silent(last + 4100 * MS, 2000 * MS, 3));
    }

    #[test]
    fn an_outage_barely_moves_the_learned_interval() {
        let t0 = Instant::now();
        let mut c = ProbeClock::default();
        for i in 0..20 {
            c.heard(t0 + i * 100 * MS, 100 * MS);
        }
        // A minute of silence, then probes again.
        c.heard(t0 + 61_900 * MS, 100 * MS);
        let gap = c.gap.unwrap();
        assert!(gap <= 260 * MS, "{gap:?}");
        for i in 1..=4 {
            c.heard(t0 + 61_900 * MS + i * 100 * MS, 100 * MS);
        }
        assert!(c.gap.unwrap() < 130 * MS, "{:?}", c.gap);
    }

    #[test]
    fn probes_arriving_together_are_not_the_rhythm() {
        let t0 = Instant::now();
        let mut c = ProbeClock::default();
        // Queued during a handshake: three at once, then every second.
        for _ in 0..3 {
            c.heard(t0, 100 * MS);
        }
        for i in 1..=3 {
            c.heard(t0 + i * 1000 * MS, 100 * MS);
        }
        assert_eq!(c.gap, Some(1000 * MS));
        assert!(!c.silent(t0 + 3000 * MS + 3900 * MS, 100 * MS, 3));
    }

    #[test]
    fn a_slow_host_whose_first_probes_came_bunched_is_never_silent_between_probes() {
        let t0 = Instant::now();
        let mut c = ProbeClock::default();
        // A host probing every second whose first probes arrived 60 ms
        // apart (above the burst filter): before, the rhythm was learned
        // as 60 ms and the host was silent 400 ms after each probe.
        c.heard(t0, 100 * MS);
        c.heard(t0 + 60 * MS, 100 * MS);
        c.heard(t0 + 120 * MS, 100 * MS);
        let mut last = t0 + 120 * MS;
        for _ in 0..10 {
            let next = last + 1000 * MS;
            assert!(!c.silent(next - MS, 100 * MS, 3), "gap {:?}", c.gap);
            c.heard(next, 100 * MS);
            last = next;
        }
    }

    #[test]
    fn a_faster_host_is_learned_within_a_second() {
        let t0 = Instant::now();
        let mut c = ProbeClock::default();
        for i in 0..=10 {
            c.heard(t0 + i * 100 * MS, 100 * MS);
        }
        // Silent within its own probe window (4 × about 100 ms), well
        // before the assumed second's 4 s.
        assert!(c.gap.unwrap() < 150 * MS, "{:?}", c.gap);
        assert!(c.silent(t0 + 1000 * MS + 700 * MS, 100 * MS, 3));
    }

    #[test]
    fn a_slower_interval_is_followed_within_three_probes() {
        let t0 = Instant::now();
        let mut c = ProbeClock::default();
        for i in 0..10 {
            c.heard(t0 + i * 100 * MS, 100 * MS);
        }
        let mut t = t0 + 900 * MS;
        for _ in 0..3 {
            t += 1000 * MS;
            c.heard(t, 100 * MS);
        }
        assert!(c.gap.unwrap() >= 800 * MS, "{:?}", c.gap);
    }
}
