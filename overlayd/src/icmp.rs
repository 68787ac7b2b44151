//! What a gateway does as a router, on bytes alone: the IPv4 TTL and IPv6
//! hop limit of a packet it forwards, and the ICMP / ICMPv6 errors it sends
//! back (time exceeded, destination unreachable), with the rules of RFC 1812
//! and RFC 4443 on when not to send one, and a rate limit like Linux's.
//! No clock reads: the limiter takes `now`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// What becomes of a packet at a forwarding hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// TTL / hop limit decremented; send it on.
    Forward,
    /// It arrived with 1 or 0 left: drop it, send time exceeded.
    Expired,
    /// Not an IPv4 or IPv6 header.
    Invalid,
}

/// Decrements the TTL of an IPv4 packet (its header checksum updated
/// incrementally, RFC 1624) or the hop limit of an IPv6 packet. A packet
/// that arrives with 1 or less is left as it is and reported expired.
pub fn decrement_ttl(pkt: &mut [u8]) -> Hop {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ttl = pkt[8];
            if ttl <= 1 {
                return Hop::Expired;
            }
            // The 16-bit word holding TTL and protocol goes down by 0x0100:
            // HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3).
            let old = u16::from_be_bytes([ttl, pkt[9]]);
            let new = old - 0x0100;
            let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
            let sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
            let hc = !fold(sum);
            pkt[8] = ttl - 1;
            pkt[10..12].copy_from_slice(&hc.to_be_bytes());
            Hop::Forward
        }
        Some(6) if pkt.len() >= 40 => {
            if pkt[7] <= 1 {
                return Hop::Expired;
            }
            pkt[7] -= 1;
            Hop::Forward
        }
        _ => Hop::Invalid,
    }
}

/// The ICMP errors a gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// TTL / hop limit exceeded in transit.
    TimeExceeded,
    /// No route to the destination's network.
    NetUnreachable,
    /// The destination is an overlay address nobody serves now.
    HostUnreachable,
    /// A firewall refused it.
    AdminProhibited,
    /// Larger than the next tunnel carries, with the largest it does:
    /// fragmentation needed and DF set (RFC 1191), packet too big (RFC
    /// 8201).
    TooBig { mtu: u16 },
}

impl Error {
    /// (type, code) for ICMP and for ICMPv6.
    fn codes(self, v6: bool) -> (u8, u8) {
        match (self, v6) {
            (Error::TimeExceeded, false) => (11, 0),
            (Error::NetUnreachable, false) => (3, 0),
            (Error::HostUnreachable, false) => (3, 1),
            (Error::AdminProhibited, false) => (3, 13),
            (Error::TooBig { .. }, false) => (3, 4),
            (Error::TimeExceeded, true) => (3, 0),
            (Error::NetUnreachable, true) => (1, 0),
            (Error::HostUnreachable, true) => (1, 3),
            (Error::AdminProhibited, true) => (1, 1),
            (Error::TooBig { .. }, true) => (2, 0),
        }
    }
}

/// The most of an IPv4 error datagram (RFC 1812 4.3.2.3: as much of the
/// original as fits in 576 bytes).
const V4_MAX: usize = 576;
/// The most of an ICMPv6 error packet (RFC 4443 2.4 (c): the minimum MTU).
const V6_MAX: usize = 1280;
/// TTL / hop limit of the errors sent.
const ERROR_TTL: u8 = 64;

/// The ICMP or ICMPv6 `error` about `pkt`, sent from `from` (this node's
/// address of the packet's family) back to the packet's source. `None`
/// where a router must not answer: `pkt` is not a whole IP header, is itself
/// an ICMP error, is a later fragment, comes from an address that is not
/// one host's (unspecified, loopback, multicast, broadcast), or went to a
/// multicast or broadcast address; or `from` is of the other family.
pub fn error(error: Error, from: IpAddr, pkt: &[u8]) -> Option<Vec<u8>> {
    match (pkt.first().map(|b| b >> 4), from) {
        (Some(4), IpAddr::V4(from)) => v4_error(error, from, pkt),
        (Some(6), IpAddr::V6(from)) => v6_error(error, from, pkt),
        _ => None,
    }
}

fn v4_error(error: Error, from: Ipv4Addr, pkt: &[u8]) -> Option<Vec<u8>> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return None;
    }
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(&pkt[12..16]).ok()?);
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&pkt[16..20]).ok()?);
    let unicast = |a: Ipv4Addr| {
        !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
    };
    if !unicast(src) || dst.is_multicast() || dst.is_broadcast() {
        return None;
    }
    let offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    if offset != 0 {
        return None;
    }
    if pkt[9] == 1 {
        // No error about an error: only echo, timestamp and the like get one.
        let kind = *pkt.get(ihl)?;
        if matches!(kind, 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }
    let quoted = &pkt[..pkt.len().min(V4_MAX - 28)];
    let total = 28 + quoted.len();
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = ERROR_TTL;
    out[9] = 1;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&src.octets());
    let hc = !fold(sum16(&out[..20]));
    out[10..12].copy_from_slice(&hc.to_be_bytes());
    let (t, c) = error.codes(false);
    out[20] = t;
    out[21] = c;
    if let Error::TooBig { mtu } = error {
        // The next-hop MTU, in the low half of the unused word.
        out[26..28].copy_from_slice(&mtu.to_be_bytes());
    }
    out[28..].copy_from_slice(quoted);
    let ic = !fold(sum16(&out[20..]));
    out[22..24].copy_from_slice(&ic.to_be_bytes());
    Some(out)
}

fn v6_error(error: Error, from: Ipv6Addr, pkt: &[u8]) -> Option<Vec<u8>> {
    if pkt.len() < 40 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?);
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() || dst.is_multicast() {
        return None;
    }
    // No error about an ICMPv6 error (types below 128) when it follows the
    // fixed header; a later fragment never carries one (it has no
    // transport header to quote).
    match pkt[6] {
        58 if pkt.get(40).is_some_and(|t| *t < 128) => return None,
        44 => {
            let offset = u16::from_be_bytes([*pkt.get(42)?, *pkt.get(43)?]) >> 3;
            if offset != 0 {
                return None;
            }
        }
        _ => {}
    }
    let quoted = &pkt[..pkt.len().min(V6_MAX - 48)];
    let len = 8 + quoted.len();
    let mut out = vec![0u8; 40 + len];
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    out[6] = 58;
    out[7] = ERROR_TTL;
    out[8..24].copy_from_slice(&from.octets());
    out[24..40].copy_from_slice(&src.octets());
    let (t, c) = error.codes(true);
    out[40] = t;
    out[41] = c;
    if let Error::TooBig { mtu } = error {
        out[44..48].copy_from_slice(&u32::from(mtu).to_be_bytes());
    }
    out[48..].copy_from_slice(quoted);
    // The pseudo-header: both addresses, the length, next header 58.
    let pseudo = sum16(&out[8..40]) + len as u32 + 58;
    let ic = !fold(pseudo + sum16(&out[40..]));
    out[42..44].copy_from_slice(&ic.to_be_bytes());
    Some(out)
}

/// An IPv4 packet without DF cut into fragments of at most `mtu` bytes
/// (RFC 791): each with the header, the offset and more-fragments flag
/// set, the checksum anew. `None` when it has DF set, is not a whole
/// header, or carries options (rare; a router may drop those).
pub fn fragment_v4(pkt: &[u8], mtu: u16) -> Option<Vec<Vec<u8>>> {
    if pkt.len() < 20 || pkt[0] != 0x45 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if total != pkt.len() {
        return None;
    }
    let flags_offset = u16::from_be_bytes([pkt[6], pkt[7]]);
    if flags_offset & 0x4000 != 0 {
        return None;
    }
    let more = flags_offset & 0x2000 != 0;
    let base = flags_offset & 0x1fff;
    // Data per fragment: a multiple of 8 bytes.
    let per = (usize::from(mtu).checked_sub(20)? / 8) * 8;
    if per == 0 {
        return None;
    }
    let data = &pkt[20..];
    let mut out = Vec::with_capacity(data.len().div_ceil(per));
    for (i, chunk) in data.chunks(per).enumerate() {
        let last = (i + 1) * per >= data.len();
        let mut f = Vec::with_capacity(20 + chunk.len());
        f.extend_from_slice(&pkt[..20]);
        f.extend_from_slice(chunk);
        f[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
        let off = base + (i * per / 8) as u16;
        let mf = if last && !more { 0 } else { 0x2000 };
        f[6..8].copy_from_slice(&(off | mf).to_be_bytes());
        f[10..12].copy_from_slice(&[0, 0]);
        let hc = !fold(sum16(&f[..20]));
        f[10..12].copy_from_slice(&hc.to_be_bytes());
        out.push(f);
    }
    Some(out)
}

/// Sum of big-endian 16-bit words (an odd last byte padded with zero).
fn sum16(b: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut it = b.chunks_exact(2);
    for w in &mut it {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = it.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

/// One's-complement fold of a 32-bit sum to 16 bits.
fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// How many errors a node sends: a token bucket shared by all of them, as
/// Linux's `icmp_msgs_per_sec` (1000) and `icmp_msgs_burst` (50).
#[derive(Debug)]
pub struct RateLimit {
    per_sec: u32,
    burst: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(1000, 50)
    }
}

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: per_sec.max(1),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// True when one more error may go out at `now` (and takes its token).
    pub fn allow(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let step = Duration::from_secs(1) / self.per_sec;
        let earned = now.saturating_duration_since(last).as_nanos() / step.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            // Below the burst the part of a token already earned is kept
            // (and `earned` is below the burst, so the product is small).
            self.last = Some(if self.tokens == self.burst {
                now
            } else {
                last + step * earned
            });
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Errors to one destination, as Linux's `icmp_ratelimit` (one a second,
/// bursts of 6) per address, in a fixed table: addresses that share a slot
/// share its bucket, so it is bounded and never laxer than per address.
pub struct DestLimit {
    slots: Vec<RateLimit>,
}

const DEST_SLOTS: usize = 256;

impl Default for DestLimit {
    fn default() -> Self {
        DestLimit {
            slots: (0..DEST_SLOTS).map(|_| RateLimit::new(1, 6)).collect(),
        }
    }
}

impl DestLimit {
    pub fn allow(&mut self, dst: IpAddr, now: Instant) -> bool {
        // FNV-1a.
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            })
        };
        let h = match dst {
            IpAddr::V4(a) => fnv(&a.octets()),
            IpAddr::V6(a) => fnv(&a.octets()),
        };
        self.slots[(h % DEST_SLOTS as u64) as usize].allow(now)
    }
}

/// Both limits a router applies: errors in all (`icmp_msgs_per_sec`) and
/// per destination (`icmp_ratelimit`); fragmentation needed and packet
/// too big are held back by the first only, as in Linux (path MTU
/// discovery depends on them).
#[derive(Default)]
pub struct Limiter {
    pub all: RateLimit,
    pub per_dest: DestLimit,
}

impl Limiter {
    pub fn allow(&mut self, e: Error, dst: IpAddr, now: Instant) -> bool {
        if !matches!(e, Error::TooBig { .. }) && !self.per_dest.allow(dst, now) {
            return false;
        }
        self.all.allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors_to_one_destination_are_limited_but_not_to_others_nor_too_big() {
        let now = Instant::now();
        let mut l = Limiter::default();
        let a: IpAddr = "10.77.1.11".parse().unwrap();
        let sent = (0..20)
            .filter(|_| l.allow(Error::TimeExceeded, a, now))
            .count();
        assert_eq!(sent, 6, "a burst of 6 to one address");
        assert!(l.allow(Error::TooBig { mtu: 1340 }, a, now));
        let others = (1..=40u8)
            .filter(|i| l.allow(Error::HostUnreachable, IpAddr::from([10, 77, 3, *i]), now))
            .count();
        assert!(others >= 30, "{others} of 40 others");
        assert!(l.allow(Error::TimeExceeded, a, now + Duration::from_secs(1)));
    }

    fn v4(ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let total = (20 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[8] = ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 77, 1, 11]);
        p[16..20].copy_from_slice(&[10, 77, 2, 11]);
        let hc = !fold(sum16(&p));
        p[10..12].copy_from_slice(&hc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn v6(hops: u8, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next;
        p[7] = hops;
        p[8..24].copy_from_slice(&"fd77::1:b".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd77::2:b".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(payload);
        p
    }

    fn checks(b: &[u8]) -> bool {
        fold(sum16(b)) == 0xffff
    }

    #[test]
    fn ttl_goes_down_by_one_with_a_valid_checksum() {
        let mut p = v4(64, 17, &[0; 8]);
        assert_eq!(decrement_ttl(&mut p), Hop::Forward);
        assert_eq!(p[8], 63);
        assert!(checks(&p[..20]));
        let mut p = v4(2, 6, &[]);
        assert_eq!(decrement_ttl(&mut p), Hop::Forward);
        assert_eq!(p[8], 1);
        assert!(checks(&p[..20]));
        for ttl in [0, 1] {
            let mut p = v4(ttl, 1, &[8, 0, 0, 0]);
            let before = p.clone();
            assert_eq!(decrement_ttl(&mut p), Hop::Expired);
            assert_eq!(p, before, "an expired packet is left as it was");
        }
        let mut p = v6(64, 17, &[0; 8]);
        assert_eq!(decrement_ttl(&mut p), Hop::Forward);
        assert_eq!(p[7], 63);
        assert_eq!(decrement_ttl(&mut v6(1, 17, &[])), Hop::Expired);
        assert_eq!(decrement_ttl(&mut [0x45; 19]), Hop::Invalid);
        assert_eq!(decrement_ttl(&mut []), Hop::Invalid);
    }

    #[test]
    fn time_exceeded_quotes_the_packet_back_to_its_source() {
        let from: IpAddr = "10.77.1.1".parse().unwrap();
        let p = v4(1, 17, &[0x82, 0x9a, 0x82, 0x9b, 0, 8, 0, 0]);
        let e = error(Error::TimeExceeded, from, &p).unwrap();
        assert_eq!(e.len(), 28 + p.len());
        assert!(checks(&e[..20]), "IP header checksum");
        assert!(checks(&e[20..]), "ICMP checksum");
        assert_eq!(&e[12..16], &[10, 77, 1, 1]);
        assert_eq!(&e[16..20], &[10, 77, 1, 11]);
        assert_eq!((e[9], e[20], e[21]), (1, 11, 0));
        assert_eq!(&e[28..], &p[..]);
        // Long packets are cut so the error fits in 576 bytes.
        let big = v4(1, 17, &[7; 1400]);
        let e = error(Error::HostUnreachable, from, &big).unwrap();
        assert_eq!(e.len(), 576);
        assert_eq!((e[20], e[21]), (3, 1));
        assert!(checks(&e[20..]));
    }

    #[test]
    fn too_big_carries_the_mtu_the_next_tunnel_takes() {
        let mut p = v4(64, 6, &[0; 1380]);
        p[6] = 0x40; // DF
        let hc = {
            p[10..12].copy_from_slice(&[0, 0]);
            !fold(sum16(&p[..20]))
        };
        p[10..12].copy_from_slice(&hc.to_be_bytes());
        let e = error(
            Error::TooBig { mtu: 1340 },
            "10.77.1.1".parse().unwrap(),
            &p,
        )
        .unwrap();
        assert_eq!((e[20], e[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1340);
        assert!(checks(&e[20..]));
        let p = v6(64, 17, &[0; 1380]);
        let e = error(
            Error::TooBig { mtu: 1320 },
            "fd77::1:1".parse().unwrap(),
            &p,
        )
        .unwrap();
        assert_eq!((e[40], e[41]), (2, 0));
        assert_eq!(u32::from_be_bytes([e[44], e[45], e[46], e[47]]), 1320);
        assert_eq!(
            e.len(),
            1280,
            "as much of the packet as fits the minimum MTU"
        );
    }

    #[test]
    fn a_packet_without_df_is_cut_into_fragments_that_fit() {
        let payload: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
        let p = v4(64, 17, &payload);
        let frags = fragment_v4(&p, 1340).unwrap();
        assert_eq!(frags.len(), 2);
        let mut joined = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            assert!(f.len() <= 1340);
            assert!(checks(&f[..20]));
            assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len());
            let fo = u16::from_be_bytes([f[6], f[7]]);
            assert_eq!(usize::from(fo & 0x1fff) * 8, joined.len());
            assert_eq!(
                fo & 0x2000 != 0,
                i == 0,
                "more fragments on all but the last"
            );
            joined.extend_from_slice(&f[20..]);
        }
        assert_eq!(joined, payload);
        let mut df = p.clone();
        df[6] |= 0x40;
        assert!(fragment_v4(&df, 1340).is_none(), "DF: no fragments");
        assert!(fragment_v4(&v6(64, 17, &payload), 1340).is_none());
    }

    #[test]
    fn icmpv6_errors_carry_the_pseudo_header_checksum() {
        let from: IpAddr = "fd77::1:1".parse().unwrap();
        let p = v6(1, 17, &[0; 16]);
        let e = error(Error::TimeExceeded, from, &p).unwrap();
        assert_eq!((e[6], e[40], e[41]), (58, 3, 0));
        assert_eq!(&e[24..40], &p[8..24], "back to the source");
        let len = (e.len() - 40) as u32;
        let sum = sum16(&e[8..40]) + len + 58 + sum16(&e[40..]);
        assert_eq!(fold(sum), 0xffff);
        assert_eq!(&e[48..], &p[..]);
        let big = v6(1, 17, &[7; 1400]);
        let e = error(Error::NetUnreachable, from, &big).unwrap();
        assert_eq!(e.len(), 1280);
        assert_eq!((e[40], e[41]), (1, 0));
    }

    #[test]
    fn no_error_about_an_error_a_later_fragment_or_a_group() {
        let f4: IpAddr = "10.77.1.1".parse().unwrap();
        let f6: IpAddr = "fd77::1:1".parse().unwrap();
        // Errors about errors: none. About an echo request: one.
        assert!(error(Error::TimeExceeded, f4, &v4(1, 1, &[11, 0, 0, 0])).is_none());
        assert!(error(Error::TimeExceeded, f4, &v4(1, 1, &[3, 3, 0, 0])).is_none());
        assert!(error(Error::TimeExceeded, f4, &v4(1, 1, &[8, 0, 0, 0])).is_some());
        assert!(error(Error::TimeExceeded, f6, &v6(1, 58, &[1, 4, 0, 0])).is_none());
        assert!(error(Error::TimeExceeded, f6, &v6(1, 58, &[128, 0, 0, 0])).is_some());
        // A later IPv4 fragment.
        let mut p = v4(1, 17, &[0; 8]);
        p[7] = 10;
        assert!(error(Error::TimeExceeded, f4, &p).is_none());
        // A later IPv6 fragment.
        let mut frag = vec![17, 0, 0, 0, 0, 0, 0, 1];
        frag[3] = 8 << 3;
        assert!(error(Error::TimeExceeded, f6, &v6(1, 44, &frag)).is_none());
        frag[3] = 0;
        assert!(error(Error::TimeExceeded, f6, &v6(1, 44, &frag)).is_some());
        // To a group, or from nowhere.
        let mut p = v4(1, 17, &[0; 8]);
        p[16..20].copy_from_slice(&[224, 0, 0, 1]);
        assert!(error(Error::NetUnreachable, f4, &p).is_none());
        let mut p = v4(1, 17, &[0; 8]);
        p[12..16].copy_from_slice(&[0, 0, 0, 0]);
        assert!(error(Error::NetUnreachable, f4, &p).is_none());
        // The other family's address: nothing to send from.
        assert!(error(Error::TimeExceeded, f6, &v4(1, 17, &[0; 8])).is_none());
        assert!(error(Error::TimeExceeded, f4, &v6(1, 17, &[0; 8])).is_none());
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1000, 50);
        let burst = (0..100).filter(|_| r.allow(t0)).count();
        assert_eq!(burst, 50);
        // One per millisecond after that.
        assert!(!r.allow(t0 + Duration::from_micros(500)));
        assert!(r.allow(t0 + Duration::from_millis(1)));
        assert!(!r.allow(t0 + Duration::from_millis(1)));
        let later = t0 + Duration::from_millis(11);
        assert_eq!((0..100).filter(|_| r.allow(later)).count(), 10);
        // Idle for a long time: a full burst again, never more.
        let idle = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| r.allow(idle)).count(), 50);
    }

    proptest! {
        #[test]
        fn decrement_keeps_any_valid_header_valid(
            hdr in proptest::collection::vec(any::<u8>(), 20),
            ttl in 2u8..,
        ) {
            let mut p = hdr;
            p[0] = 0x45;
            p[8] = ttl;
            p[10] = 0;
            p[11] = 0;
            let hc = !fold(sum16(&p));
            p[10..12].copy_from_slice(&hc.to_be_bytes());
            prop_assert_eq!(decrement_ttl(&mut p), Hop::Forward);
            prop_assert_eq!(p[8], ttl - 1);
            prop_assert!(checks(&p));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut b = bytes.clone();
            let _ = decrement_ttl(&mut b);
            for e in [Error::TimeExceeded, Error::NetUnreachable] {
                let _ = error(e, "10.77.1.1".parse().unwrap(), &bytes);
                let _ = error(e, "fd77::1".parse().unwrap(), &bytes);
            }
        }
    }
}
