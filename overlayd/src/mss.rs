//! TCP MSS clamping (as tinc's ClampMSS and OpenVPN's mssfix): a SYN that
//! enters or crosses the overlay offers at most the segment size that fits
//! a tunnel's inner MTU, so TCP between machines with a bigger MTU (a site
//! LAN at 1500) never sends segments the tunnel would have to drop. The
//! MSS option is rewritten in place with the TCP checksum updated
//! incrementally (RFC 1624); nothing else changes.

/// IPv4 and TCP headers without options.
const V4_OVERHEAD: u16 = 40;
/// IPv6 and TCP headers without options.
const V6_OVERHEAD: u16 = 60;

/// The largest MSS a SYN may offer through a tunnel of inner MTU `mtu`.
pub fn max_mss(mtu: u16, v6: bool) -> u16 {
    mtu.saturating_sub(if v6 { V6_OVERHEAD } else { V4_OVERHEAD })
}

/// Where the MSS option of a TCP SYN (or SYN-ACK) in `pkt` is, when its
/// value is above what fits `mtu`: (offset of the value, offset of the TCP
/// checksum, the value). `None` for anything else: not TCP, not a SYN, a
/// later fragment, no MSS option, or already small enough. IPv6 only when
/// TCP follows the fixed header (extension headers on a SYN are rare and
/// left alone).
pub fn oversized(pkt: &[u8], mtu: u16) -> Option<(usize, usize, u16)> {
    let (tcp, v6) = match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let offset = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff;
            if ihl < 20 || *pkt.get(9)? != 6 || offset != 0 {
                return None;
            }
            (ihl, false)
        }
        6 if *pkt.get(6)? == 6 => (40, true),
        _ => return None,
    };
    let flags = *pkt.get(tcp + 13)?;
    if flags & 0x02 == 0 {
        return None;
    }
    let doff = usize::from(*pkt.get(tcp + 12)? >> 4) * 4;
    let opts = pkt.get(tcp + 20..tcp + doff)?;
    let limit = max_mss(mtu, v6);
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*opts.get(i + 1)?);
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let mss = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                    return (mss > limit).then_some((tcp + 20 + i + 2, tcp + 16, mss));
                }
                i += len;
            }
        }
    }
    None
}

/// Lowers the MSS of a SYN in `pkt` to what fits `mtu`; true when it did.
pub fn clamp(pkt: &mut [u8], mtu: u16) -> bool {
    let Some((at, ck, old)) = oversized(pkt, mtu) else {
        return false;
    };
    let v6 = pkt[0] >> 4 == 6;
    let new = max_mss(mtu, v6);
    let hc = u16::from_be_bytes([pkt[ck], pkt[ck + 1]]);
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    pkt[at..at + 2].copy_from_slice(&new.to_be_bytes());
    pkt[ck..ck + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum16(b: &[u8]) -> u32 {
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }

    fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The TCP checksum over the pseudo-header, as a receiver checks it.
    fn tcp_valid(pkt: &[u8]) -> bool {
        let (tcp, pseudo) = if pkt[0] >> 4 == 4 {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let len = (pkt.len() - ihl) as u32;
            (ihl, sum16(&pkt[12..20]) + 6 + len)
        } else {
            let len = (pkt.len() - 40) as u32;
            (40, sum16(&pkt[8..40]) + 6 + len)
        };
        fold(pseudo + sum16(&pkt[tcp..])) == 0xffff
    }

    /// A SYN with the given options, its checksum valid.
    fn syn(v6: bool, flags: u8, opts: &[u8]) -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
        tcp[12] = (((20 + opts.len()) / 4) as u8) << 4;
        tcp[13] = flags;
        tcp.extend_from_slice(opts);
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8] = 0xfd;
            h[23] = 1;
            h[24] = 0xfd;
            h[39] = 2;
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&[192, 168, 1, 10]);
            h[16..20].copy_from_slice(&[10, 77, 2, 11]);
            h
        };
        let at = p.len() + 16;
        p.extend_from_slice(&tcp);
        let ck = !fold(if v6 {
            sum16(&p[8..40]) + 6 + tcp.len() as u32 + sum16(&tcp)
        } else {
            sum16(&p[12..20]) + 6 + tcp.len() as u32 + sum16(&tcp)
        });
        p[at..at + 2].copy_from_slice(&ck.to_be_bytes());
        p
    }

    /// MSS 1460, SACK permitted, timestamps, NOP, window scale: Linux's SYN.
    const LINUX: [u8; 20] = [
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];

    #[test]
    fn a_lan_syn_is_clamped_to_the_tunnel() {
        for v6 in [false, true] {
            let mut p = syn(v6, 0x02, &LINUX);
            assert!(tcp_valid(&p));
            assert!(clamp(&mut p, 1420));
            let tcp = if v6 { 40 } else { 20 };
            let mss = u16::from_be_bytes([p[tcp + 22], p[tcp + 23]]);
            assert_eq!(mss, if v6 { 1360 } else { 1380 });
            assert!(tcp_valid(&p), "checksum after clamping");
            // Once is enough: a second gateway leaves it.
            assert!(!clamp(&mut p, 1420));
        }
        // A SYN-ACK too.
        let mut p = syn(false, 0x12, &LINUX);
        assert!(clamp(&mut p, 1420));
        assert!(tcp_valid(&p));
    }

    #[test]
    fn everything_else_is_left_alone() {
        // Not a SYN.
        let mut p = syn(false, 0x10, &LINUX);
        assert!(!clamp(&mut p, 1420));
        // Small enough already.
        let mut p = syn(false, 0x02, &[2, 4, 0x05, 0x00]);
        assert!(!clamp(&mut p, 1420));
        // No MSS option; an end-of-options before it; a broken length.
        for opts in [[1, 1, 1, 0], [0, 2, 4, 5], [3, 9, 2, 4]] {
            let mut p = syn(false, 0x02, &opts);
            assert!(!clamp(&mut p, 1420), "{opts:?}");
        }
        // UDP.
        let mut p = syn(false, 0x02, &LINUX);
        p[9] = 17;
        assert!(!clamp(&mut p, 1420));
        // A later fragment.
        let mut p = syn(false, 0x02, &LINUX);
        p[7] = 1;
        assert!(!clamp(&mut p, 1420));
        // Cut short.
        let p = syn(false, 0x02, &LINUX);
        for n in 0..p.len() {
            assert!(oversized(&p[..n], 1420).is_none_or(|(at, _, _)| at + 2 <= n));
        }
    }

    proptest! {
        #[test]
        fn clamping_keeps_the_checksum_valid(mss in 1400u16.., v6 in any::<bool>(), mtu in 1280u16..1500) {
            let mut opts = LINUX;
            opts[2..4].copy_from_slice(&mss.to_be_bytes());
            let mut p = syn(v6, 0x02, &opts);
            let limit = max_mss(mtu, v6);
            prop_assert_eq!(clamp(&mut p, mtu), mss > limit);
            prop_assert!(tcp_valid(&p));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut b = bytes;
            let _ = clamp(&mut b, 1420);
        }
    }
}
