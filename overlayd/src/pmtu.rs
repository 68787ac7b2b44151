//! The path MTU of one tunnel: the largest inner packet it carries, learned
//! by probing inside the tunnel (packetization-layer PMTUD, RFC 8899 in
//! spirit), not configured. Sans-IO: the control side calls
//! [`PathMtu::poll`] every tick (it says which probe sizes to send) and
//! [`PathMtu::on_ack`] when the peer acknowledges one.
//!
//! Outer datagrams leave with DF set and the kernel's ICMP path-MTU
//! messages are not used (the UDP socket probes: `IP_PMTUDISC_PROBE`), so a
//! datagram too big for a link on the path simply vanishes. A probe is an
//! in-band message padded to an exact inner size; the peer acknowledges
//! each one it receives. A *round* sends several sizes at once, the lowest
//! a control that the tunnel answers at all:
//!
//! - **Search**: the control and up to seven sizes spread over the range
//!   still unknown. The largest acknowledged becomes the tunnel's MTU at
//!   once; the next round splits the gap to the smallest that was lost, so
//!   three rounds find the MTU between 1280 and 1420 to the byte. A size
//!   counts as lost after [`TRIES`] sends [`Timing::timeout`] apart.
//! - **Confirm** (every [`Timing::confirm`], every
//!   [`Timing::confirm_busy`] while large packets go in): the control and
//!   the MTU itself. The MTU lost while the control arrives: the path shrank, and
//!   a search below it starts at once.
//! - **Raise** (every [`Timing::raise`] while below the interface MTU): a
//!   search over the sizes above the MTU, the MTU as control, so a path that
//!   grew is noticed.
//!
//! A round in which not even the control arrives says nothing (a tunnel
//! down, or a peer that does not answer probes, such as a plain WireGuard
//! client): the MTU stays and the round is tried again later, less often
//! each time.
//!
//! Until the first round ends the tunnel is assumed to carry the interface
//! MTU. A tunnel to a gateway is probed from its first handshake on; one to
//! a host only once a packet larger than [`BASE`] goes into it, and only
//! while such packets do (a gateway with ten thousand hosts probes the few
//! that move bulk data).

use std::time::{Duration, Instant};

/// The smallest MTU assumed of any tunnel: IPv6's minimum link MTU. The
/// control size of a first search.
pub const BASE: u16 = 1280;
/// Sends of a probe size before it counts as lost.
pub const TRIES: u32 = 3;
/// Sizes in one round, the control included.
const PER_ROUND: u16 = 8;
/// The search stops when the largest size that arrived and the smallest
/// that was lost are this close: it finds the MTU to the byte.
const PRECISION: u16 = 1;
/// Rounds in a row with no answer at all before the wait is longest.
const MAX_BACKOFF_SHIFT: u32 = 5;

/// How often a tunnel's MTU is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between sends of a probe size not acknowledged yet.
    pub timeout: Duration,
    /// Between confirmations of a known MTU.
    pub confirm: Duration,
    /// Between confirmations while packets larger than [`BASE`] go into
    /// the tunnel: where a black hole would lose traffic.
    pub confirm_busy: Duration,
    /// Between tries of the sizes above a MTU below the interface's.
    pub raise: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            timeout: Duration::from_millis(200),
            confirm: Duration::from_secs(10),
            confirm_busy: Duration::from_secs(2),
            raise: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundKind {
    Search,
    Confirm,
}

#[derive(Debug, Clone)]
struct Probe {
    size: u16,
    acked: bool,
}

#[derive(Debug, Clone)]
struct Round {
    kind: RoundKind,
    seq: u64,
    /// Ascending; the first is the control.
    probes: Vec<Probe>,
    sent: Instant,
    tries: u32,
}

impl Round {
    /// The largest size acknowledged so far.
    fn best(&self) -> Option<u16> {
        self.probes.iter().rev().find(|p| p.acked).map(|p| p.size)
    }
}

/// Probes to send now: one in-band probe of each size, all with `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub seq: u64,
    pub sizes: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct PathMtu {
    max: u16,
    mtu: u16,
    /// The MTU came from a round, not from the assumption.
    learned: bool,
    timing: Timing,
    /// Probed whether used or not (a tunnel to a gateway).
    always: bool,
    seq: u64,
    round: Option<Round>,
    /// When the next round starts; `None`: dormant until used.
    next: Option<Instant>,
    last_used: Option<Instant>,
    last_raise: Option<Instant>,
    /// The range the next search round covers, when narrowing.
    pending: Option<(u16, u16)>,
    unanswered: u32,
    /// Rounds that lowered the MTU, and that raised it: for status.
    pub lowered: u64,
    pub raised: u64,
}

impl PathMtu {
    /// A tunnel whose inner packets are at most `max` (the interface MTU).
    /// `always`: probed from now on, used or not; else from the first
    /// [`PathMtu::used`].
    pub fn new(max: u16, timing: Timing, always: bool) -> PathMtu {
        let max = max.max(BASE);
        PathMtu {
            max,
            mtu: max,
            learned: false,
            timing,
            always,
            seq: 0,
            round: None,
            next: None,
            last_used: None,
            last_raise: None,
            pending: None,
            unanswered: 0,
            lowered: 0,
            raised: 0,
        }
    }

    /// The largest inner packet the tunnel carries, as far as known.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Whether [`PathMtu::mtu`] was measured rather than assumed.
    pub fn learned(&self) -> bool {
        self.learned
    }

    pub fn searching(&self) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.kind == RoundKind::Search)
    }

    /// A packet larger than [`BASE`] went into the tunnel lately.
    pub fn used(&mut self, now: Instant) {
        self.last_used = Some(now);
        match self.next {
            None if self.round.is_none() => self.next = Some(now),
            // Busy now: confirm sooner than an idle tunnel would.
            Some(t) if self.learned && t > now + self.timing.confirm_busy => {
                self.next = Some(now + self.timing.confirm_busy)
            }
            _ => {}
        }
    }

    /// The peer moved or the session is new: what was learned may not hold
    /// on the new path. The MTU stays until a search says otherwise.
    pub fn restart(&mut self, now: Instant) {
        self.round = None;
        self.pending = None;
        self.learned = false;
        self.unanswered = 0;
        if self.always || self.last_used.is_some() {
            self.next = Some(now);
        }
    }

    /// A new session: a tunnel that did not answer may now; the back-off
    /// starts over.
    pub fn wake(&mut self, now: Instant) {
        if self.unanswered > 0 && self.round.is_none() {
            self.unanswered = 0;
            if self.next.is_some() {
                self.next = Some(now);
            }
        }
    }

    /// An acknowledgement from the peer for probe `seq` of `size`.
    pub fn on_ack(&mut self, seq: u64, size: u16, now: Instant) {
        let Some(r) = self.round.as_mut() else {
            return;
        };
        if r.seq != seq {
            return;
        }
        let Some(p) = r.probes.iter_mut().find(|p| p.size == size) else {
            return;
        };
        p.acked = true;
        // The largest arrived: nothing in this round can say more.
        if r.probes.last().is_some_and(|p| p.acked) {
            self.finish(now);
        }
    }

    /// What to send now, if anything.
    pub fn poll(&mut self, now: Instant) -> Option<Send> {
        if let Some(r) = self.round.as_mut() {
            if now.saturating_duration_since(r.sent) < self.timing.timeout {
                return None;
            }
            if r.tries < TRIES {
                let best = r.best();
                let sizes: Vec<u16> = r
                    .probes
                    .iter()
                    .filter(|p| !p.acked && best.is_none_or(|b| p.size > b))
                    .map(|p| p.size)
                    .collect();
                r.tries += 1;
                r.sent = now;
                return Some(Send { seq: r.seq, sizes });
            }
            self.finish(now);
            // A search goes on at once with a narrower range.
            return self.start_due(now);
        }
        self.start_due(now)
    }

    fn start_due(&mut self, now: Instant) -> Option<Send> {
        if self.round.is_some() {
            return None;
        }
        // A tunnel probed always is never dormant: no next round yet means
        // it has not started.
        if self.always && self.next.is_none() {
            self.next = Some(now);
        }
        let due = self.next?;
        if now < due {
            return None;
        }
        let in_use = self.always
            || self
                .last_used
                .is_some_and(|t| now.saturating_duration_since(t) < self.timing.confirm);
        if !in_use {
            // Idle: dormant until a large packet goes in again.
            self.next = None;
            return None;
        }
        if let Some((lo, hi)) = self.pending.take() {
            self.search(lo, hi, now)
        } else if !self.learned {
            self.search(BASE, self.max, now)
        } else if self.mtu < self.max && self.raise_due(now) {
            self.last_raise = Some(now);
            self.search(self.mtu, self.max, now)
        } else {
            self.begin(RoundKind::Confirm, vec![BASE, self.mtu], now)
        }
    }

    fn raise_due(&self, now: Instant) -> bool {
        self.last_raise
            .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.raise)
    }

    /// A search round over (`lo`, `hi`], `lo` the control.
    fn search(&mut self, lo: u16, hi: u16, now: Instant) -> Option<Send> {
        let mut sizes = vec![lo];
        let span = u32::from(hi.saturating_sub(lo));
        for k in 1..PER_ROUND {
            let s = lo + (span * u32::from(k) / u32::from(PER_ROUND - 1)) as u16;
            if s > *sizes.last().unwrap_or(&lo) {
                sizes.push(s);
            }
        }
        self.begin(RoundKind::Search, sizes, now)
    }

    fn begin(&mut self, kind: RoundKind, mut sizes: Vec<u16>, now: Instant) -> Option<Send> {
        sizes.sort_unstable();
        sizes.dedup();
        self.seq += 1;
        self.round = Some(Round {
            kind,
            seq: self.seq,
            probes: sizes
                .iter()
                .map(|&size| Probe { size, acked: false })
                .collect(),
            sent: now,
            tries: 1,
        });
        Some(Send {
            seq: self.seq,
            sizes,
        })
    }

    /// The round's verdict.
    fn finish(&mut self, now: Instant) {
        let Some(r) = self.round.take() else {
            return;
        };
        let Some(best) = r.best() else {
            // Not even the control: this says nothing about the MTU.
            self.unanswered = self.unanswered.saturating_add(1);
            let wait = self
                .timing
                .confirm
                .saturating_mul(1 << self.unanswered.min(MAX_BACKOFF_SHIFT));
            self.next = Some(now + wait);
            return;
        };
        self.unanswered = 0;
        let lost = r
            .probes
            .iter()
            .find(|p| !p.acked && p.size > best)
            .map(|p| p.size);
        match r.kind {
            RoundKind::Confirm => {
                if lost.is_some() {
                    // The MTU is lost while the control arrives: the path
                    // shrank. Search below it now.
                    let was = self.mtu;
                    self.set(best);
                    if best < was {
                        self.lowered += 1;
                    }
                    self.pending = Some((best, was - 1));
                    self.next = Some(now);
                    return;
                }
                self.next = Some(now + self.interval(now));
            }
            RoundKind::Search => {
                let was = self.mtu;
                let first = !self.learned;
                // The largest that arrived is safe now; in a raise, the
                // control (the old MTU) arriving is no news.
                if best != was || first {
                    self.set(best);
                    if best < was {
                        self.lowered += 1;
                    } else if best > was {
                        self.raised += 1;
                    }
                }
                self.learned = true;
                match lost {
                    Some(l) if l - best > PRECISION => {
                        // Narrow at once.
                        self.pending = Some((best, l - 1));
                        self.next = Some(now);
                    }
                    _ => self.next = Some(now + self.interval(now)),
                }
            }
        }
    }

    /// Until the next confirmation.
    fn interval(&self, now: Instant) -> Duration {
        let busy = self
            .last_used
            .is_some_and(|t| now.saturating_duration_since(t) < self.timing.confirm_busy);
        if busy {
            self.timing.confirm_busy
        } else {
            self.timing.confirm
        }
    }

    fn set(&mut self, mtu: u16) {
        self.mtu = mtu.clamp(BASE, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A tunnel over a path that carries inner packets up to `path`, driven
    /// on a virtual clock ticking every `tick`, the acks arriving within
    /// the tick. Runs for `secs` and returns the times the MTU changed.
    struct Path {
        pm: PathMtu,
        now: Instant,
        path: u16,
        answers: bool,
        sent: usize,
    }

    const TICK: Duration = Duration::from_millis(100);

    impl Path {
        fn new(path: u16, always: bool) -> Path {
            let now = Instant::now();
            Path {
                pm: PathMtu::new(1420, Timing::default(), always),
                now,
                path,
                answers: true,
                sent: 0,
            }
        }

        fn step(&mut self) {
            self.now += TICK;
            if let Some(s) = self.pm.poll(self.now) {
                self.sent += s.sizes.len();
                for size in s.sizes {
                    if self.answers && size <= self.path {
                        self.pm.on_ack(s.seq, size, self.now);
                    }
                }
            }
        }

        /// Steps until `f` holds; the virtual time it took.
        fn until(&mut self, limit: Duration, f: impl Fn(&PathMtu) -> bool) -> Option<Duration> {
            let start = self.now;
            while self.now.duration_since(start) < limit {
                self.step();
                if f(&self.pm) {
                    return Some(self.now.duration_since(start));
                }
            }
            None
        }
    }

    #[test]
    fn a_path_at_full_size_is_confirmed_in_one_round_trip() {
        let mut p = Path::new(1500, true);
        let t = p.until(Duration::from_secs(5), |m| m.learned()).unwrap();
        assert_eq!(p.pm.mtu(), 1420);
        assert!(t <= TICK, "{t:?}");
        assert_eq!(p.pm.lowered, 0);
    }

    #[test]
    fn a_smaller_path_is_found_within_a_few_rounds() {
        // An IPv4 underlay link at 1400: 1400 - 20 - 8 - 32.
        let mut p = Path::new(1340, true);
        p.until(Duration::from_secs(5), |m| m.learned()).unwrap();
        assert_eq!(
            p.pm.mtu(),
            1340,
            "the first round's answer is already exact"
        );
        let t = p.until(Duration::from_secs(5), |m| !m.searching()).unwrap();
        assert!(t < Duration::from_secs(2), "{t:?}");
        assert_eq!(p.pm.mtu(), 1340);
        // One that falls between the first round's sizes: to the byte.
        let mut p = Path::new(1333, true);
        let t = p
            .until(Duration::from_secs(5), |m| m.learned() && !m.searching())
            .unwrap();
        assert_eq!(p.pm.mtu(), 1333);
        assert!(t < Duration::from_secs(3), "{t:?}");
    }

    #[test]
    fn a_path_that_shrinks_is_noticed_by_the_next_confirmation() {
        let mut p = Path::new(1500, true);
        p.until(Duration::from_secs(5), |m| m.learned()).unwrap();
        p.path = 1320;
        let t = p
            .until(Duration::from_secs(30), |m| m.mtu() <= 1320)
            .unwrap();
        assert!(
            t <= Timing::default().confirm + Duration::from_secs(1),
            "{t:?}"
        );
        p.until(Duration::from_secs(5), |m| !m.searching()).unwrap();
        assert_eq!(p.pm.mtu(), 1320);
    }

    #[test]
    fn a_path_that_shrinks_under_traffic_is_noticed_within_a_few_seconds() {
        let mut p = Path::new(1500, true);
        p.until(Duration::from_secs(5), |m| m.learned()).unwrap();
        p.path = 1340;
        let t = p.until(Duration::from_secs(30), |m| {
            // Large packets keep going in.
            m.mtu() <= 1340
        });
        // Without traffic: the idle confirmation interval.
        assert!(t.unwrap() > Timing::default().confirm_busy, "{t:?}");
        let mut p = Path::new(1500, true);
        p.until(Duration::from_secs(5), |m| m.learned()).unwrap();
        p.path = 1340;
        let start = p.now;
        while p.pm.mtu() > 1340 {
            p.pm.used(p.now);
            p.step();
            assert!(p.now - start < Duration::from_secs(30));
        }
        let t = p.now - start;
        assert!(
            t <= Timing::default().confirm_busy + Duration::from_secs(1),
            "{t:?}"
        );
    }

    #[test]
    fn a_path_that_grows_again_is_noticed_by_a_raise_round() {
        let mut p = Path::new(1340, true);
        p.until(Duration::from_secs(5), |m| m.learned() && !m.searching())
            .unwrap();
        p.path = 1500;
        let t = p
            .until(Duration::from_secs(120), |m| m.mtu() == 1420)
            .unwrap();
        assert!(
            t <= Timing::default().raise + Duration::from_secs(1),
            "{t:?}"
        );
        assert_eq!(p.pm.raised, 1);
    }

    #[test]
    fn a_peer_that_never_answers_keeps_the_mtu_and_is_probed_ever_less_often() {
        let mut p = Path::new(1500, true);
        p.answers = false;
        assert!(p.until(Duration::from_secs(600), |m| m.learned()).is_none());
        assert_eq!(p.pm.mtu(), 1420);
        // 8 sizes sent 3 times, then rounds 20 s, 40 s ... 320 s apart.
        assert!(p.sent <= 6 * 8 * 3, "{} probes", p.sent);
    }

    #[test]
    fn a_host_tunnel_is_probed_only_while_large_packets_go_into_it() {
        let mut p = Path::new(1340, false);
        p.until(Duration::from_secs(30), |_| false);
        assert_eq!(p.sent, 0);
        p.pm.used(p.now);
        p.until(Duration::from_secs(5), |m| m.learned() && !m.searching())
            .unwrap();
        assert_eq!(p.pm.mtu(), 1340);
        // Not used any more: a confirmation or two, then silence.
        p.until(Duration::from_secs(30), |_| false);
        let sent = p.sent;
        p.until(Duration::from_secs(120), |_| false);
        assert_eq!(p.sent, sent);
    }

    #[test]
    fn an_ack_for_another_round_or_size_changes_nothing() {
        let now = Instant::now();
        let mut m = PathMtu::new(1420, Timing::default(), true);
        let s = m.poll(now).unwrap();
        m.on_ack(s.seq + 1, 1420, now);
        m.on_ack(s.seq, 1419, now);
        assert!(!m.learned());
        m.on_ack(s.seq, 1420, now);
        assert!(m.learned());
        assert_eq!(m.mtu(), 1420);
    }

    proptest! {
        #[test]
        fn the_mtu_found_is_never_above_the_path_and_close_below_it(path in BASE..=1420u16) {
            let mut p = Path::new(path, true);
            p.until(Duration::from_secs(5), |m| m.learned() && !m.searching()).unwrap();
            prop_assert!(p.pm.mtu() <= path);
            prop_assert_eq!(p.pm.mtu(), path);
        }
    }
}
