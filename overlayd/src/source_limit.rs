//! Handshake initiations per source address (audit M12).
//!
//! Above `limits.handshake_rate` an initiation needs a cookie (mac2), which
//! proves only that its sender receives at its source address. A sender
//! that echoes its cookie would otherwise get every initiation through to
//! the Diffie-Hellman (about 0.3 ms each) and push real hosts' initiations
//! off the newest-first backlog. So each proven source address gets a
//! token bucket, as in the kernel's WireGuard (`ratelimiter.c`: 20 a
//! second, a burst of 5, IPv6 by /64): an initiation beyond it is dropped
//! before any Diffie-Hellman.
//!
//! The caller applies it only to addresses a cookie proved: applied to
//! unproven ones, a forged source address would spend a real host's
//! bucket.
//!
//! Memory is bounded: at most `capacity` buckets, allocated at start. A
//! bucket idle long enough to be full again is the same as no bucket, so it
//! is forgotten; every call looks at two buckets from the front of the
//! insertion order (forgetting a full one, moving a busy one to the back),
//! so stale buckets go without a scan of the table. When the table is full
//! of busy buckets one near the front is forgotten for the newcomer,
//! preferring one that is not holding its source back: a sender with more
//! proven addresses than `capacity` is not limited per address, but each
//! of its addresses needs a cookie round trip.
//!
//! Pure: time is passed in. No locks here; the node holds it under one
//! leaf mutex, taken once per initiation screened under load.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

/// Buckets at most (kernel WireGuard: 8192 on a machine with enough
/// memory); about 60 bytes each.
pub const CAPACITY: usize = 8192;

/// Buckets looked at for expiry per call.
const EXPIRE_STEPS: usize = 2;

/// Buckets looked at to make room in a full table.
const EVICT_TRIES: usize = 4;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What a bucket is kept for: an IPv4 address, or an IPv6 /64 (one
/// subscriber usually has a whole /64, so its addresses are one source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Net(u64),
}

impl Source {
    /// An IPv4-mapped IPv6 address (a dual-stack socket) is its IPv4
    /// address.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => Source::V6Net((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Credit in nanoseconds; an initiation costs `cost`.
    tokens: u64,
    last: Instant,
}

/// Token buckets for initiations, one per [`Source`].
#[derive(Debug)]
pub struct SourceLimiter {
    /// Nanoseconds of credit one initiation costs (a second / rate); 0: off.
    cost: u64,
    /// A full bucket: `burst` initiations.
    full: u64,
    capacity: usize,
    buckets: HashMap<Source, Bucket>,
    /// Every key of `buckets` once, oldest (or longest not looked at) first.
    order: VecDeque<Source>,
}

impl SourceLimiter {
    /// `rate` initiations a second per source after a burst of `burst` (at
    /// least 1); a `rate` of 0 turns the limit off. `capacity` buckets at
    /// most (at least 1).
    pub fn new(rate: u64, burst: u64, capacity: usize) -> SourceLimiter {
        let cost = NANOS_PER_SEC.checked_div(rate).map_or(0, |c| c.max(1));
        let capacity = capacity.max(1);
        SourceLimiter {
            cost,
            full: cost.saturating_mul(burst.max(1)),
            capacity,
            buckets: HashMap::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
        }
    }

    /// Whether an initiation from `ip` at `now` may go on (and it is
    /// counted against its source).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.cost == 0 {
            return true;
        }
        self.expire(now);
        let key = Source::of(ip);
        if let Some(b) = self.buckets.get_mut(&key) {
            let earned = nanos(now.saturating_duration_since(b.last));
            b.tokens = b.tokens.saturating_add(earned).min(self.full);
            b.last = now;
            if b.tokens >= self.cost {
                b.tokens -= self.cost;
                return true;
            }
            return false;
        }
        if self.buckets.len() >= self.capacity {
            self.make_room(now);
        }
        self.buckets.insert(
            key,
            Bucket {
                tokens: self.full - self.cost,
                last: now,
            },
        );
        self.order.push_back(key);
        true
    }

    /// Buckets kept now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets the front bucket when it has refilled (it is the same as
    /// none), else moves it to the back; a few each call.
    fn expire(&mut self, now: Instant) {
        for _ in 0..EXPIRE_STEPS.min(self.order.len()) {
            let Some(key) = self.order.pop_front() else {
                return;
            };
            let refilled = self.buckets.get(&key).is_none_or(|b| {
                let earned = nanos(now.saturating_duration_since(b.last));
                b.tokens.saturating_add(earned) >= self.full
            });
            if refilled {
                self.buckets.remove(&key);
            } else {
                self.order.push_back(key);
            }
        }
    }
}

impl SourceLimiter {
    /// Forgets one bucket of a full table: the front one, unless it is
    /// holding its source back now (forgetting it would hand a flooding
    /// source a new burst), then it goes to the back and the next is
    /// looked at; a few at most.
    fn make_room(&mut self, now: Instant) {
        for attempt in 1..=EVICT_TRIES {
            let Some(key) = self.order.pop_front() else {
                return;
            };
            let limited = self.buckets.get(&key).is_some_and(|b| {
                let earned = nanos(now.saturating_duration_since(b.last));
                b.tokens.saturating_add(earned) < self.cost
            });
            if limited && attempt < EVICT_TRIES {
                self.order.push_back(key);
            } else {
                self.buckets.remove(&key);
                return;
            }
        }
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The kernel's numbers, which are overlayd's defaults.
    fn limiter() -> SourceLimiter {
        SourceLimiter::new(20, 5, CAPACITY)
    }

    #[test]
    fn one_source_at_a_thousand_a_second_gets_its_burst_then_its_rate() {
        let mut l = limiter();
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        let mut allowed = 0;
        for ms in 0..10_000u64 {
            if l.allow(a, t0 + Duration::from_millis(ms)) {
                allowed += 1;
            }
        }
        // 5 at once, then one every 50 ms for 10 s (the last credit is
        // earned at 10.0 s, just after the flood).
        assert_eq!(allowed, 5 + 199);
        // A second of quiet refills the burst, no more.
        let later = t0 + Duration::from_secs(12);
        let burst = (0..100).filter(|_| l.allow(a, later)).count();
        assert_eq!(burst, 5);
    }

    #[test]
    fn other_sources_are_not_affected_by_a_flooding_one() {
        let mut l = limiter();
        let t0 = Instant::now();
        let flood = ip("198.51.100.7");
        let host = ip("192.0.2.11");
        let host6 = ip("2001:db8:1:2::b");
        for ms in 0..=5_000u64 {
            let now = t0 + Duration::from_millis(ms);
            l.allow(flood, now);
            // A host retries once a second; each gets through.
            if ms % 1000 == 500 {
                assert!(l.allow(host, now), "host refused at {ms} ms");
                assert!(l.allow(host6, now), "IPv6 host refused at {ms} ms");
            }
        }
        // A newcomer gets its whole burst in the middle of the flood.
        let now = t0 + Duration::from_millis(5_000);
        assert!(!l.allow(flood, now));
        let newcomer = ip("203.0.113.9");
        assert_eq!((0..10).filter(|_| l.allow(newcomer, now)).count(), 5);
    }

    #[test]
    fn the_table_stays_within_its_capacity_under_a_hundred_thousand_sources() {
        let mut l = SourceLimiter::new(20, 5, 1024);
        let t0 = Instant::now();
        let flood = ip("198.51.100.7");
        let mut flood_allowed = 0;
        for i in 0..100_000u32 {
            // All within one millisecond: none is stale.
            let now = t0 + Duration::from_nanos(u64::from(i));
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.allow(src, now), "a new source gets its first one");
            assert!(l.len() <= 1024, "{} buckets", l.len());
            if i % 100 == 0 && l.allow(flood, now) {
                flood_allowed += 1;
            }
        }
        assert_eq!(l.buckets.len(), l.order.len());
        // The flooding source stays limited while it keeps coming back
        // (every 100 newcomers, well within the 1024 kept).
        assert!(flood_allowed <= 5, "{flood_allowed}");
        // IPv6 sources in distinct /64s as well.
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_millis(1);
            let a = std::net::Ipv6Addr::from((u128::from(0x2001_0db8_0000_0000u64 + i)) << 64);
            l.allow(IpAddr::V6(a), now);
            assert!(l.len() <= 1024);
        }
    }

    #[test]
    fn stale_buckets_are_forgotten_as_traffic_goes_on() {
        let mut l = limiter();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(l.len(), 1000);
        // A quarter of a second later the buckets (one spent, 50 ms to earn
        // back) are full again: one busy source's calls sweep them out.
        let later = t0 + Duration::from_millis(250);
        let host = ip("192.0.2.11");
        for s in 0..600u64 {
            l.allow(host, later + Duration::from_secs(s));
        }
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn ipv6_sources_in_one_slash_64_share_a_bucket() {
        let mut l = limiter();
        let now = Instant::now();
        let same: Vec<IpAddr> = (0..10)
            .map(|i| ip(&format!("2001:db8:1:2:{i:x}::{i:x}")))
            .collect();
        let allowed = same.iter().filter(|a| l.allow(**a, now)).count();
        assert_eq!(allowed, 5);
        // The next /64 is another subscriber.
        assert!(l.allow(ip("2001:db8:1:3::1"), now));
        // An IPv4-mapped address is its IPv4 address.
        for _ in 0..5 {
            assert!(l.allow(ip("192.0.2.11"), now));
        }
        assert!(!l.allow(ip("::ffff:192.0.2.11"), now));
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.11")),
            Source::of(ip("192.0.2.11"))
        );
    }

    #[test]
    fn a_rate_of_zero_turns_it_off() {
        let mut l = SourceLimiter::new(0, 5, 16);
        let now = Instant::now();
        assert!((0..1000).all(|_| l.allow(ip("198.51.100.7"), now)));
        assert!(l.is_empty());
    }
}
