//! Telling a peer that the session it sends on is gone.
//!
//! A gateway that restarts loses every session; its hosts keep sending on
//! theirs and would notice only when `probe.misses` probes went unanswered
//! (3 s at a 1 s probe interval, in which the host's traffic is lost). So a
//! gateway answers a data datagram for a receiver index it does not have
//! with this small datagram, echoing the index; a host whose current
//! session with that gateway uses that index handshakes at once.
//!
//! Unauthenticated, like a WireGuard cookie reply, so it can only start
//! what the host would do anyway, and only once per session:
//! - it must come from the gateway's endpoint and echo the 32-bit index of
//!   the host's current session, which only an observer of the host's
//!   traffic knows;
//! - its only effect is a handshake initiation (the session in use stays
//!   until a new one is confirmed), and the index is forgotten after one;
//! - it is smaller than the datagram that caused it (8 bytes for at least
//!   32), and a gateway sends at most [`PER_SECOND`] a second.
//!
//! Layout: type `0xce` (not one of WireGuard's 1–4), `"cn"`, version 1,
//! then the receiver index, little-endian as in WireGuard's header.

/// The first byte.
pub const TYPE: u8 = 0xce;
/// The whole datagram's length.
pub const LEN: usize = 8;
/// Hints a gateway sends at most each second: after a restart with 10,000
/// hosts probing every 100 ms, each hears one within a second.
pub const PER_SECOND: u64 = 20_000;

/// The datagram telling the sender that `index` is not a session here.
pub fn encode(index: u32) -> [u8; LEN] {
    let i = index.to_le_bytes();
    [TYPE, b'c', b'n', 1, i[0], i[1], i[2], i[3]]
}

/// The index a hint names, or `None` when `d` is not one.
pub fn decode(d: &[u8]) -> Option<u32> {
    match d {
        [TYPE, b'c', b'n', 1, a, b, c, e] => Some(u32::from_le_bytes([*a, *b, *c, *e])),
        _ => None,
    }
}

/// The receiver index of a WireGuard data datagram (type 4), the index
/// the far end knows this session by.
pub fn data_receiver(d: &[u8]) -> Option<u32> {
    match d {
        [4, 0, 0, 0, a, b, c, e, ..] if d.len() >= 32 => Some(u32::from_le_bytes([*a, *b, *c, *e])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_hint_round_trips_and_nothing_else_is_one() {
        assert_eq!(decode(&encode(0x1234_5678)), Some(0x1234_5678));
        assert_eq!(decode(&[]), None);
        let mut long = encode(7).to_vec();
        long.push(0);
        assert_eq!(decode(&long), None);
        let mut v2 = encode(7);
        v2[3] = 2;
        assert_eq!(decode(&v2), None);
    }

    #[test]
    fn a_data_datagram_names_its_receiver() {
        let mut d = vec![4, 0, 0, 0, 0x78, 0x56, 0x34, 0x12];
        d.resize(32, 0);
        assert_eq!(data_receiver(&d), Some(0x1234_5678));
        // Too short to be data (header, counter and tag), or another type.
        assert_eq!(data_receiver(&d[..31]), None);
        d[0] = 2;
        assert_eq!(data_receiver(&d), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_mistakes_wireguard_for_a_hint(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = data_receiver(&d);
            if decode(&d).is_some() {
                prop_assert_eq!(d.len(), LEN);
                prop_assert_eq!(d[0], TYPE);
            }
        }
    }
}
