//! Link-flap damping (RFC 2439-style exponentially decaying penalty) and error back-off,
//! sans-IO: every query is a pure function of stored state and the `now` passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Number of events kept by [`Link::history`].
pub const HISTORY_LEN: usize = 16;

/// Damping parameters.
///
/// Defaults: 1000 per flap, suppress above 2000, reuse below 750 (RFC 2439 / common BGP
/// values: two quick flaps are tolerated, the third suppresses). BGP's 15 min half-life is
/// for global route churn; tunnel links flap on the seconds scale of NAT rebinding and path
/// changes, so the half-life is 15 s and suppression is capped at 60 s (ceiling
/// 750 × 2^4 = 12000): a lone flap is forgotten within about a minute, a link flapping every
/// few seconds stays suppressed, and a repaired link returns within 60 s + `stable_up`.
/// `stable_up` of 3 s is about three BFD detection times at the BFD defaults (0.9 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Penalty added per down event.
    pub penalty_per_flap: f64,
    /// Time for the penalty to halve.
    pub half_life: Duration,
    /// Suppress when the penalty exceeds this.
    pub suppress_threshold: f64,
    /// Unsuppress when the penalty decays below this.
    pub reuse_threshold: f64,
    /// Longest a link can stay suppressed after its last flap.
    pub max_suppress: Duration,
    /// How long an up link must stay up before it is usable.
    pub stable_up: Duration,
}

impl Default for Config {
    /// 1000 / 15 s / 2000 / 750 / 60 s / 3 s; see the type's documentation for why.
    fn default() -> Self {
        Config {
            penalty_per_flap: 1000.0,
            half_life: Duration::from_secs(15),
            suppress_threshold: 2000.0,
            reuse_threshold: 750.0,
            max_suppress: Duration::from_secs(60),
            stable_up: Duration::from_secs(3),
        }
    }
}

/// Why damping parameters cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("penalty_per_flap must be finite and > 0")]
    Penalty,
    #[error("thresholds must be finite and reuse_threshold > 0")]
    Thresholds,
    #[error("reuse_threshold must be below suppress_threshold")]
    ReuseAboveSuppress,
    #[error("half_life must be > 0")]
    HalfLife,
    #[error("penalty ceiling {0} (from max_suppress) must be finite and above suppress_threshold")]
    Ceiling(f64),
}

impl Config {
    /// Checks the parameters are consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        if !finite_pos(self.penalty_per_flap) {
            return Err(ConfigError::Penalty);
        }
        if !finite_pos(self.reuse_threshold) || !self.suppress_threshold.is_finite() {
            return Err(ConfigError::Thresholds);
        }
        if self.reuse_threshold >= self.suppress_threshold {
            return Err(ConfigError::ReuseAboveSuppress);
        }
        if self.half_life.is_zero() {
            return Err(ConfigError::HalfLife);
        }
        let ceiling = self.ceiling();
        if !(ceiling.is_finite() && ceiling > self.suppress_threshold) {
            return Err(ConfigError::Ceiling(ceiling));
        }
        Ok(())
    }

    /// Maximum penalty, RFC 2439: `reuse * 2^(max_suppress / half_life)`.
    pub fn ceiling(&self) -> f64 {
        let ratio = self.max_suppress.as_secs_f64() / self.half_life.as_secs_f64();
        self.reuse_threshold * ratio.exp2()
    }

    /// `p` decayed over `dt`.
    fn decay(&self, p: f64, dt: Duration) -> f64 {
        if dt.is_zero() {
            return p;
        }
        p * (-dt.as_secs_f64() / self.half_life.as_secs_f64()).exp2()
    }
}

/// Direction of a recorded link event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The link came up.
    Up,
    /// The link went down (a flap).
    Down,
}

/// One entry of a link's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// When it happened.
    pub at: Instant,
    /// Up or down.
    pub kind: EventKind,
    /// Penalty right after the event.
    pub penalty: f64,
}

/// Flap state of one neighbour/link. A new link is down with no penalty.
#[derive(Debug, Clone)]
pub struct Link {
    cfg: Config,
    up_since: Option<Instant>,
    /// Penalty as of `updated`.
    penalty: f64,
    updated: Instant,
    /// Suppression flag as of `updated` (hysteresis between the two thresholds).
    suppressed: bool,
    flaps: u64,
    history: VecDeque<Event>,
}

impl Link {
    /// Creates a down link without penalty. `cfg` should pass [`Config::validate`]; an
    /// invalid one gives meaningless but non-panicking results.
    pub fn new(cfg: Config, now: Instant) -> Link {
        Link {
            cfg,
            up_since: None,
            penalty: 0.0,
            updated: now,
            suppressed: false,
            flaps: 0,
            history: VecDeque::with_capacity(HISTORY_LEN),
        }
    }

    /// Records the link going down: adds a penalty and counts a flap (ignored if already down).
    pub fn on_down(&mut self, now: Instant) {
        if self.up_since.take().is_none() {
            return;
        }
        self.update(now);
        self.flaps += 1;
        let p = (self.penalty + self.cfg.penalty_per_flap).max(0.0);
        self.penalty = p.min(self.cfg.ceiling());
        if self.penalty > self.cfg.suppress_threshold {
            self.suppressed = true;
        }
        self.record(now, EventKind::Down);
    }

    /// Records the link coming up (ignored if already up).
    pub fn on_up(&mut self, now: Instant) {
        if self.up_since.is_some() {
            return;
        }
        self.update(now);
        self.up_since = Some(now);
        self.record(now, EventKind::Up);
    }

    /// Current penalty: the stored one decayed to `now`, capped at the ceiling.
    pub fn penalty(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.updated);
        let p = self.cfg.decay(self.penalty, dt).min(self.cfg.ceiling());
        p.max(0.0)
    }

    /// When suppression ends (penalty decays to the reuse threshold), if suppressed at `now`.
    pub fn suppressed_until(&self, now: Instant) -> Option<Instant> {
        self.release_at().filter(|&t| now < t)
    }

    /// Whether routes over the link are suppressed at `now`.
    pub fn suppressed(&self, now: Instant) -> bool {
        self.suppressed_until(now).is_some()
    }

    /// Up, not suppressed, and up for at least `stable_up`.
    pub fn usable(&self, now: Instant) -> bool {
        self.stable_at().is_some_and(|t| now >= t) && !self.suppressed(now)
    }

    /// Next instant after `now` at which `usable` or `suppressed` may change, if any.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let stable = self.stable_at().filter(|&t| t > now);
        [self.suppressed_until(now), stable]
            .into_iter()
            .flatten()
            .min()
    }

    /// Number of down events so far.
    pub fn flaps(&self) -> u64 {
        self.flaps
    }

    #[cfg(test)]
    /// The last [`HISTORY_LEN`] events, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Event> + '_ {
        self.history.iter()
    }

    fn stable_at(&self) -> Option<Instant> {
        let up = self.up_since?;
        Some(up.checked_add(self.cfg.stable_up).unwrap_or(up))
    }

    /// End of the current suppression, from stored state: the penalty reaches `reuse`
    /// after `half_life * log2(penalty / reuse)`, never more than `max_suppress`.
    fn release_at(&self) -> Option<Instant> {
        if !self.suppressed {
            return None;
        }
        let ratio = self.penalty / self.cfg.reuse_threshold;
        let secs = self.cfg.half_life.as_secs_f64() * ratio.log2().max(0.0);
        let dt = Duration::try_from_secs_f64(secs).unwrap_or(self.cfg.max_suppress);
        let dt = dt.min(self.cfg.max_suppress);
        Some(self.updated.checked_add(dt).unwrap_or(self.updated))
    }

    /// Folds decay and expired suppression into the stored state.
    fn update(&mut self, now: Instant) {
        if now <= self.updated {
            return;
        }
        self.suppressed = self.suppressed(now);
        self.penalty = self.penalty(now);
        self.updated = now;
    }

    fn record(&mut self, at: Instant, kind: EventKind) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        let penalty = self.penalty;
        self.history.push_back(Event { at, kind, penalty });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn defaults_validate_and_bad_configs_fail() {
        let d = Config::default();
        assert_eq!(d.validate(), Ok(()));
        assert!((d.ceiling() - 12000.0).abs() < 1e-6);
        let bad = [
            Config {
                reuse_threshold: 2000.0,
                ..d
            },
            Config {
                half_life: Duration::ZERO,
                ..d
            },
            Config {
                max_suppress: S,
                ..d
            }, // ceiling 750 * 2^(1/15) < 2000
            Config {
                penalty_per_flap: f64::NAN,
                ..d
            },
            Config {
                reuse_threshold: 0.0,
                ..d
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn flapping_link_suppressed_then_recovers() {
        let cfg = Config::default();
        let t0 = Instant::now();
        let mut l = Link::new(cfg, t0);
        l.on_up(t0);
        assert!(!l.usable(t0) && l.usable(t0 + 3 * S));
        // Down 1 s, up 1 s, for 60 s: 30 flaps starting at t0 + 10 s.
        let start = t0 + 10 * S;
        for i in 0..30u32 {
            let down = start + 2 * i * S;
            l.on_down(down);
            assert_eq!(l.suppressed(down), i >= 2, "flap {}", i + 1);
            let mut t = down;
            while t < down + 2 * S && i >= 2 {
                assert!(l.suppressed(t) && !l.usable(t));
                t += 100 * MS;
            }
            l.on_up(down + S);
        }
        assert_eq!(l.flaps(), 30);
        let last_down = start + 58 * S;
        let last_up = last_down + S;
        let mut t = last_up;
        while !l.usable(t) {
            t += 10 * MS;
        }
        assert!(l.penalty(t) < cfg.reuse_threshold);
        assert!(t >= last_up + cfg.stable_up);
        assert!(t <= last_down + cfg.max_suppress + cfg.stable_up);
        // Driving by next_change reaches the same instant within the 10 ms step.
        let mut u = last_up;
        while let Some(n) = l.next_change(u) {
            assert!(n > u);
            u = n;
        }
        assert!(l.usable(u) && t - u < 10 * MS, "{:?}", t - u);
    }

    #[test]
    fn single_flap_never_suppresses() {
        let t0 = Instant::now();
        let mut l = Link::new(Config::default(), t0);
        l.on_up(t0);
        l.on_down(t0 + S);
        assert!(!l.suppressed(t0 + S) && l.suppressed_until(t0 + S).is_none());
        l.on_up(t0 + 2 * S);
        assert!(!l.usable(t0 + 4 * S) && l.usable(t0 + 5 * S));
        assert_eq!(l.next_change(t0 + 2 * S), Some(t0 + 5 * S));
        assert_eq!(l.next_change(t0 + 5 * S), None);
        assert!((l.penalty(t0 + 16 * S) - 500.0).abs() < 1e-6);
    }

    #[test]
    fn suppressed_until_matches_stepping() {
        let cfg = Config {
            half_life: 7 * S,
            ..Config::default()
        };
        let t0 = Instant::now();
        let mut l = Link::new(cfg, t0);
        for i in 0..5u32 {
            l.on_up(t0 + i * 300 * MS);
            l.on_down(t0 + i * 300 * MS + 100 * MS);
        }
        let now = t0 + 2 * S;
        let until = l.suppressed_until(now).unwrap();
        let mut t = now;
        while l.penalty(t) >= cfg.reuse_threshold {
            assert!(l.suppressed(t));
            t += 10 * MS;
        }
        let diff = if t > until { t - until } else { until - t };
        assert!(diff <= 20 * MS, "{diff:?}");
        assert!(!l.suppressed(until) && l.suppressed(until - MS));
    }

    #[test]
    fn penalty_capped_and_suppression_bounded() {
        let cfg = Config::default();
        let t0 = Instant::now();
        let mut l = Link::new(cfg, t0);
        let mut t = t0;
        for _ in 0..1000 {
            l.on_up(t);
            t += MS;
            l.on_down(t);
            assert!(l.penalty(t) <= cfg.ceiling());
        }
        assert_eq!(l.penalty(t), cfg.ceiling());
        assert!(l.suppressed_until(t).unwrap() - t <= cfg.max_suppress);
        assert_eq!(l.history().count(), HISTORY_LEN);
        let last = l.history().last().unwrap();
        assert_eq!(
            (last.at, last.kind, last.penalty),
            (t, EventKind::Down, cfg.ceiling())
        );
    }

    proptest! {
        #[test]
        fn invariants_hold(events in proptest::collection::vec((any::<bool>(), 0u64..20_000), 0..80)) {
            let cfg = Config::default();
            let t0 = Instant::now();
            let mut l = Link::new(cfg, t0);
            let mut t = t0;
            for (up, dt) in events {
                let mid = t + Duration::from_millis(dt / 2);
                t += Duration::from_millis(dt);
                for now in [mid, t] {
                    let p = l.penalty(now);
                    prop_assert!((0.0..=cfg.ceiling()).contains(&p));
                    prop_assert!(!(l.usable(now) && l.suppressed(now)));
                    if let Some(u) = l.suppressed_until(now) {
                        prop_assert!(u > now && u - now <= cfg.max_suppress);
                    }
                    prop_assert!(l.next_change(now).is_none_or(|n| n > now));
                }
                if up { l.on_up(t) } else { l.on_down(t) }
                prop_assert!(l.history().count() <= HISTORY_LEN);
            }
        }
    }
}
