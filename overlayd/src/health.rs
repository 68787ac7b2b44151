//! Liveness of the tunnels to gateways and the choice of the gateway a host
//! sends through. Sans-IO: the driver calls [`GatewayHealth::on_tick`] every
//! probe interval (it says whether to send a probe) and
//! [`GatewayHealth::on_reply`] when a probe reply arrives.

use cubenet_daemon::damping;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// When to start the next handshake with a gateway that does not answer:
/// at once, then 1 s later, doubling to 8 s. Each wait is jittered by up to
/// ±25 % per peer, so hosts that lost their gateway together do not retry
/// in step, and a loaded gateway sees fewer initiations that are already
/// stale (superseded by a newer one) when it gets to them.
#[derive(Debug, Clone)]
pub struct HandshakeRetry {
    next: Option<Instant>,
    attempts: u32,
    seed: u64,
}

impl HandshakeRetry {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(8);

    /// `seed` spreads the jitter: the peer's index does.
    pub fn new(seed: u64) -> Self {
        HandshakeRetry {
            next: None,
            attempts: 0,
            seed,
        }
    }

    /// Whether an initiation is due now; when it is, the next is scheduled.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        self.started(now);
        true
    }

    /// An initiation went out (from here or elsewhere): the next one waits.
    pub fn started(&mut self, now: Instant) {
        self.next = Some(now + self.wait());
        self.attempts = self.attempts.saturating_add(1);
    }

    /// The session answers again: the next loss starts over at once.
    pub fn reset(&mut self) {
        self.next = None;
        self.attempts = 0;
    }

    fn wait(&self) -> Duration {
        let base = Self::FIRST
            .saturating_mul(1 << self.attempts.min(8))
            .min(Self::MAX);
        // splitmix64 of (seed, attempt): cheap, and different per peer.
        let mut z = self
            .seed
            .wrapping_add(u64::from(self.attempts).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let permille = 750 + z % 501;
        base.mul_f64(permille as f64 / 1000.0)
    }
}

#[derive(Debug, Clone)]
pub struct GatewayHealth {
    misses_allowed: u32,
    seq: u64,
    answered: bool,
    misses: u32,
    healthy: bool,
    healthy_since: Option<Instant>,
    pub last_rtt: Option<Duration>,
    sent_at: Option<Instant>,
    /// When the probe before the current one went out: a hello's
    /// acknowledgement often names it (the other side acknowledges on its
    /// own next probe, which may come after our next).
    prev_sent_at: Option<Instant>,
    /// The highest probe a hello acknowledged: a hello naming it again
    /// says the other side still hears nothing newer from us.
    acked: u64,
    pub flaps: u64,
    /// Flap damping (when on): a tunnel that keeps going down is not
    /// failed back to while its penalty is above the threshold.
    damping: Option<damping::Config>,
    /// Boxed: most peers never flap, and a gateway has thousands.
    link: Option<Box<damping::Link>>,
}

impl GatewayHealth {
    pub fn new(misses_allowed: u32) -> Self {
        GatewayHealth {
            misses_allowed,
            seq: 0,
            answered: true,
            misses: 0,
            healthy: false,
            healthy_since: None,
            last_rtt: None,
            sent_at: None,
            prev_sent_at: None,
            acked: 0,
            flaps: 0,
            damping: None,
            link: None,
        }
    }

    /// With flap damping by `cfg` (none: off).
    pub fn with_damping(mut self, cfg: Option<damping::Config>) -> Self {
        self.damping = cfg;
        self
    }

    /// The damping penalty at `now` and whether it holds the tunnel down
    /// (never failed back to).
    pub fn damped(&self, now: Instant) -> (f64, bool) {
        self.link
            .as_ref()
            .map_or((0.0, false), |l| (l.penalty(now), l.suppressed(now)))
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// The number of the last probe sent (0: none yet).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Healthy for at least `period` at `now`, and not held down by damping.
    pub fn stable(&self, now: Instant, period: Duration) -> bool {
        self.healthy
            && self
                .healthy_since
                .is_some_and(|t| now.saturating_duration_since(t) >= period)
            && !self.damped(now).1
    }

    /// A probe interval passed: counts a miss if the last probe is still
    /// unanswered, and returns the sequence number of the next probe to send
    /// plus a transition if health changed.
    pub fn on_tick(&mut self, now: Instant) -> (u64, Option<Transition>) {
        let mut t = None;
        if self.sent_at.is_some() && !self.answered {
            self.misses += 1;
            if self.healthy && self.misses >= self.misses_allowed {
                self.healthy = false;
                self.healthy_since = None;
                self.flaps += 1;
                if let Some(l) = &mut self.link {
                    l.on_down(now);
                }
                t = Some(Transition::Down);
            }
        }
        self.seq += 1;
        self.answered = false;
        self.prev_sent_at = self.sent_at;
        self.sent_at = Some(now);
        (self.seq, t)
    }

    /// The gateway said it is shutting down: down at once, not after
    /// missed probes.
    pub fn leaving(&mut self) -> Option<Transition> {
        if !self.healthy {
            return None;
        }
        self.healthy = false;
        self.healthy_since = None;
        self.flaps += 1;
        Some(Transition::Down)
    }

    /// The gateway no longer has our session (it restarted and said so,
    /// see [`crate::stale`]): down at once, and a flap for damping, as
    /// missed probes would have found a little later.
    pub fn session_lost(&mut self, now: Instant) -> Option<Transition> {
        let t = self.leaving();
        if t.is_some() {
            if let Some(l) = &mut self.link {
                l.on_down(now);
            }
        }
        t
    }

    /// A probe reply arrived.
    pub fn on_reply(&mut self, seq: u64, now: Instant) -> Option<Transition> {
        // Replies to older probes still prove the path works, but only the
        // current one clears the outstanding probe.
        if seq == self.seq {
            self.answered = true;
            self.last_rtt = self.sent_at.map(|s| now.saturating_duration_since(s));
        } else if seq > self.seq {
            return None;
        }
        self.heard_back(now)
    }

    /// A hello arrived that acknowledges our probe `heard`, which the
    /// other side heard `held` before it sent the hello. Only a newer
    /// probe than the last acknowledged counts: a hello naming the same
    /// one again means ours no longer arrive (a path that fails one way).
    pub fn on_hello(&mut self, heard: u64, held: Duration, now: Instant) -> Option<Transition> {
        if heard <= self.acked || heard > self.seq {
            return None;
        }
        self.acked = heard;
        let sent = if heard == self.seq {
            self.answered = true;
            self.sent_at
        } else if heard + 1 == self.seq {
            self.prev_sent_at
        } else {
            None
        };
        if let Some(s) = sent {
            self.last_rtt = Some(now.saturating_duration_since(s).saturating_sub(held));
        }
        self.heard_back(now)
    }

    /// The other side answered a probe not answered before: the tunnel
    /// works both ways.
    fn heard_back(&mut self, now: Instant) -> Option<Transition> {
        self.misses = 0;
        if !self.healthy {
            self.healthy = true;
            self.healthy_since = Some(now);
            if let Some(cfg) = self.damping {
                self.link
                    .get_or_insert_with(|| Box::new(damping::Link::new(cfg, now)))
                    .on_up(now);
            }
            return Some(Transition::Up);
        }
        None
    }
}

/// Chooses the gateway a host sends through: keep the current one while it
/// is healthy; when it fails take the first healthy one in configured order,
/// preferring one that has been stable; move back to a more preferred one
/// only after it has been stable for `failback`.
pub fn choose_gateway(
    current: Option<usize>,
    gateways: &[&GatewayHealth],
    now: Instant,
    failback: Duration,
) -> Option<usize> {
    let stable = |i: usize| gateways[i].stable(now, failback);
    if let Some(c) = current {
        if c < gateways.len() && gateways[c].healthy() {
            // Fail back to a preferred gateway once it is stable.
            return (0..c).find(|&i| stable(i)).or(Some(c));
        }
    }
    (0..gateways.len())
        .find(|&i| stable(i))
        .or_else(|| (0..gateways.len()).find(|&i| gateways[i].healthy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn leaving_is_down_at_once_and_a_reply_brings_it_back() {
        let t0 = Instant::now();
        let mut h = GatewayHealth::new(3);
        let (s, _) = h.on_tick(t0);
        assert_eq!(h.on_reply(s, t0 + MS), Some(Transition::Up));
        assert_eq!(h.leaving(), Some(Transition::Down));
        assert!(!h.healthy());
        assert_eq!(h.flaps, 1);
        // Said twice, or while down: nothing more.
        assert_eq!(h.leaving(), None);
        assert_eq!(h.flaps, 1);
        // Its successor answers a probe: up again.
        let (s, _) = h.on_tick(t0 + 100 * MS);
        assert_eq!(h.on_reply(s, t0 + 101 * MS), Some(Transition::Up));
    }

    #[test]
    fn down_after_misses_up_on_reply() {
        let t0 = Instant::now();
        let mut h = GatewayHealth::new(3);
        let (s, t) = h.on_tick(t0);
        assert_eq!(t, None);
        assert_eq!(h.on_reply(s, t0 + MS), Some(Transition::Up));
        assert!(h.healthy());
        let mut now = t0;
        let mut down_at = None;
        for i in 1..=4 {
            now = t0 + 100 * MS * i;
            if let (_, Some(Transition::Down)) = h.on_tick(now) {
                down_at = Some(i);
            }
        }
        // Probe 2, 3, 4 unanswered (ticks 2, 3, 4 count the misses).
        assert_eq!(down_at, Some(4));
        assert!(!h.healthy());
        let (s, _) = h.on_tick(now + 100 * MS);
        assert_eq!(h.on_reply(s, now + 101 * MS), Some(Transition::Up));
        assert_eq!(h.flaps, 1);
    }

    #[test]
    fn failover_and_stable_failback() {
        let t0 = Instant::now();
        let stable = Duration::from_secs(2);
        let mut a = GatewayHealth::new(3);
        let mut b = GatewayHealth::new(3);
        for h in [&mut a, &mut b] {
            let (s, _) = h.on_tick(t0);
            h.on_reply(s, t0);
        }
        let now = t0 + 3 * stable;
        assert_eq!(choose_gateway(None, &[&a, &b], now, stable), Some(0));
        // a fails: move to b.
        a = GatewayHealth::new(3);
        assert_eq!(choose_gateway(Some(0), &[&a, &b], now, stable), Some(1));
        // a is back but not stable yet: stay on b.
        let (s, _) = a.on_tick(now);
        a.on_reply(s, now);
        assert_eq!(
            choose_gateway(Some(1), &[&a, &b], now + Duration::from_millis(500), stable),
            Some(1)
        );
        // Stable: fail back.
        assert_eq!(
            choose_gateway(Some(1), &[&a, &b], now + stable, stable),
            Some(0)
        );
        // Nothing healthy.
        a = GatewayHealth::new(3);
        b = GatewayHealth::new(3);
        assert_eq!(choose_gateway(Some(0), &[&a, &b], now, stable), None);
    }

    #[test]
    fn a_gateway_that_keeps_flapping_is_not_failed_back_to_until_damping_lets_go() {
        let t0 = Instant::now();
        let stable = Duration::from_secs(2);
        let cfg = damping::Config {
            stable_up: Duration::ZERO,
            ..damping::Config::default()
        };
        let mut a = GatewayHealth::new(3).with_damping(Some(cfg));
        let mut now = t0;
        // Up 2.5 s, down (three missed probes), three times.
        for _ in 0..3 {
            let (s, _) = a.on_tick(now);
            a.on_reply(s, now);
            now += stable + Duration::from_millis(500);
            for _ in 0..4 {
                a.on_tick(now);
                now += Duration::from_millis(100);
            }
            assert!(!a.healthy());
        }
        assert_eq!(a.flaps, 3);
        let (s, _) = a.on_tick(now);
        a.on_reply(s, now);
        let later = now + 2 * stable;
        assert!(a.healthy() && a.damped(later).1, "{:?}", a.damped(later));
        assert!(!a.stable(later, stable));
        // Penalty about 2500: below 750 after about 26 s.
        assert!(a.stable(now + Duration::from_secs(40), stable));
    }

    #[test]
    fn handshake_retries_back_off_with_jitter_and_start_over() {
        let t0 = Instant::now();
        let mut r = HandshakeRetry::new(7);
        assert!(r.due(t0), "the first initiation goes at once");
        assert!(!r.due(t0 + Duration::from_millis(700)));
        // Waits double from 1 s to 8 s, each within ±25 %.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let mut t = now + Duration::from_millis(1);
            while !r.due(t) {
                t += Duration::from_millis(10);
            }
            waits.push((t - now).as_millis() as u64);
            now = t;
        }
        for (w, base) in waits.iter().zip([1000u64, 2000, 4000, 8000, 8000, 8000]) {
            assert!(
                (base * 3 / 4..=base * 5 / 4 + 10).contains(w),
                "waits {waits:?}"
            );
        }
        r.reset();
        assert!(
            r.due(now + Duration::from_millis(1)),
            "after a reset: at once"
        );
        // Other peers wait other times.
        let waits: std::collections::HashSet<_> = (0..20u64)
            .map(|seed| {
                let mut r = HandshakeRetry::new(seed);
                r.started(t0);
                r.next.map(|n| n - t0)
            })
            .collect();
        assert!(waits.len() > 10, "jitter spreads peers: {waits:?}");
    }

    #[test]
    fn hellos_that_acknowledge_a_probe_late_keep_the_tunnel_up() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        let mut h = GatewayHealth::new(3);
        let (seq, _) = h.on_tick(t0);
        assert_eq!(
            h.on_hello(seq, Duration::ZERO, t0 + tick / 4),
            Some(Transition::Up)
        );
        // The other side acknowledges each probe on its own next probe,
        // after ours: never the current one, always the one before.
        for i in 1..50u32 {
            let now = t0 + tick * i;
            let (seq, t) = h.on_tick(now);
            assert_eq!(t, None, "tick {i}");
            assert_eq!(h.on_hello(seq - 1, tick / 2, now + tick / 2), None);
        }
        assert!(h.healthy());
        // 100 ms out, 50 ms held there, 50 ms back: 0.15 s after it went.
        assert_eq!(h.last_rtt, Some(tick + tick / 2 - tick / 2));
    }

    #[test]
    fn hellos_naming_the_same_probe_again_take_the_tunnel_down() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        let mut h = GatewayHealth::new(3);
        let (seq, _) = h.on_tick(t0);
        h.on_hello(seq, Duration::ZERO, t0);
        assert!(h.healthy());
        // Ours stop arriving: the other side keeps naming the last it
        // heard, which proves nothing new.
        let mut down = None;
        for i in 1..10u32 {
            let now = t0 + tick * i;
            if h.on_tick(now).1 == Some(Transition::Down) {
                down = Some(i);
                break;
            }
            assert_eq!(h.on_hello(seq, Duration::ZERO, now), None);
        }
        assert_eq!(down, Some(4), "down at the third probe unanswered");
        // Probes not yet sent are not acknowledged.
        assert_eq!(h.on_hello(h.seq + 1, Duration::ZERO, t0 + tick * 5), None);
        assert!(!h.healthy());
    }
}
