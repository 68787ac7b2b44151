//! Messages between two overlayd nodes inside their encrypted tunnel.
//!
//! The WireGuard transport only carries IP packets (boringtun checks the IP
//! header of every decrypted packet), so these ride in an IPv6 packet with
//! unspecified source and destination (`::`), hop limit 0 and next header
//! 253 (RFC 3692, reserved for experimentation). Such a packet can never be
//! a real datagram: the kernel drops an unspecified source, and overlayd
//! consumes them before routing. The tunnel authenticates the sender.
//!
//! Payload: magic `CN`, version 1, message type, body.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const NEXT_HEADER: u8 = 253;
const MAGIC: &[u8; 2] = b"CN";
const VERSION: u8 = 1;
const HEADER: usize = 40;
/// Largest message body: a certificate is well under 2 KiB.
pub const MAX_BODY: usize = 4096;
/// A [`Message::Hello`] body after its type.
const HELLO_LEN: usize = 25;
/// Set in the number of a [`Message::Probe`] by a gateway that speaks
/// [`Message::Hello`]: a gateway that also does answers with hellos from
/// then on, an older one echoes the number in its reply as it always did.
/// Probe numbers count from 1 and never reach it.
pub const SPEAKS_HELLO: u64 = 1 << 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The sender's certificate, in its binary encoding.
    Cert(Vec<u8>),
    /// The receiver accepted the sender's certificate with this fingerprint.
    CertAck([u8; 32]),
    /// Liveness probe; the receiver echoes `seq` in a `ProbeReply`.
    Probe {
        seq: u64,
    },
    ProbeReply {
        seq: u64,
    },
    /// Between two gateways that both speak it: a probe that also
    /// acknowledges the other side's, so each tunnel carries one datagram
    /// per interval each way instead of a probe and a reply each way.
    /// `heard` is the last probe number heard from the receiver (0: none),
    /// `held_us` how long ago it arrived (the receiver takes it off the
    /// round trip), `interval_ms` the sender's probe interval (a receiver
    /// that probes more slowly answers at once rather than on its next
    /// probe), `answer` asks for an answer at once.
    Hello {
        seq: u64,
        heard: u64,
        held_us: u32,
        interval_ms: u32,
        answer: bool,
    },
    /// Which certificate owns this virtual address? (for firewall rules by
    /// name, group and site). Gateways answer or ask on.
    WhoIs(IpAddr),
    /// The certificate that owns `addr`, empty when unknown. The asking
    /// node validates it itself: no gateway is trusted with identity.
    WhoIsReply {
        addr: IpAddr,
        cert: Vec<u8>,
    },
    /// The sender is shutting down: take traffic elsewhere now rather than
    /// after missed probes, and handshake anew with whatever answers later.
    Leaving,
    /// A path MTU probe, padded so the whole inner packet is `size` bytes;
    /// the receiver answers with an `MtuAck` of the same `seq` and `size`.
    MtuProbe {
        seq: u64,
        size: u16,
    },
    MtuAck {
        seq: u64,
        size: u16,
    },
}

fn put_addr(body: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            body.push(4);
            body.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            body.push(6);
            body.extend_from_slice(&v6.octets());
        }
    }
}

/// An address and what follows it.
fn get_addr(b: &[u8]) -> Result<(IpAddr, &[u8]), InbandError> {
    match b.first() {
        Some(4) if b.len() >= 5 => {
            let o: [u8; 4] = b[1..5].try_into().map_err(|_| InbandError::Short)?;
            Ok((Ipv4Addr::from(o).into(), &b[5..]))
        }
        Some(6) if b.len() >= 17 => {
            let o: [u8; 16] = b[1..17].try_into().map_err(|_| InbandError::Short)?;
            Ok((Ipv6Addr::from(o).into(), &b[17..]))
        }
        _ => Err(InbandError::Short),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InbandError {
    #[error("in-band message too short")]
    Short,
    #[error("not an in-band message")]
    NotInband,
    #[error("in-band message: bad magic or version")]
    BadMagic,
    #[error("in-band message: unknown type {0}")]
    UnknownType(u8),
    #[error("in-band message: body of {0} bytes is too large")]
    TooLarge(usize),
}

/// Whether a decrypted packet is one of ours (and not a datagram to route).
pub fn is_inband(packet: &[u8]) -> bool {
    packet.len() >= HEADER
        && packet[0] >> 4 == 6
        && packet[6] == NEXT_HEADER
        && packet[7] == 0
        && packet[8..40].iter().all(|&b| b == 0)
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(MAGIC);
        body.push(VERSION);
        match self {
            Message::Cert(c) => {
                body.push(1);
                body.extend_from_slice(c);
            }
            Message::CertAck(fp) => {
                body.push(2);
                body.extend_from_slice(fp);
            }
            Message::Probe { seq } => {
                body.push(3);
                body.extend_from_slice(&seq.to_be_bytes());
            }
            Message::ProbeReply { seq } => {
                body.push(4);
                body.extend_from_slice(&seq.to_be_bytes());
            }
            Message::WhoIs(a) => {
                body.push(5);
                put_addr(&mut body, a);
            }
            Message::WhoIsReply { addr, cert } => {
                body.push(6);
                put_addr(&mut body, addr);
                body.extend_from_slice(cert);
            }
            Message::Leaving => body.push(7),
            Message::MtuProbe { seq, size } => {
                body.push(8);
                body.extend_from_slice(&seq.to_be_bytes());
                // Padding up to the size; never below the message itself.
                body.resize(usize::from(*size).saturating_sub(HEADER).max(body.len()), 0);
            }
            Message::MtuAck { seq, size } => {
                body.push(9);
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(&size.to_be_bytes());
            }
            Message::Hello {
                seq,
                heard,
                held_us,
                interval_ms,
                answer,
            } => {
                body.push(10);
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(&heard.to_be_bytes());
                body.extend_from_slice(&held_us.to_be_bytes());
                body.extend_from_slice(&interval_ms.to_be_bytes());
                body.push(u8::from(*answer));
            }
        }
        let mut p = vec![0u8; HEADER];
        p[0] = 0x60;
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p[6] = NEXT_HEADER;
        p[7] = 0;
        p[8..24].copy_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        p[24..40].copy_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        p.extend_from_slice(&body);
        p
    }

    pub fn decode(packet: &[u8]) -> Result<Message, InbandError> {
        if !is_inband(packet) {
            return Err(InbandError::NotInband);
        }
        let len = u16::from_be_bytes([packet[4], packet[5]]) as usize;
        let body = packet.get(HEADER..HEADER + len).ok_or(InbandError::Short)?;
        if body.len() > MAX_BODY {
            return Err(InbandError::TooLarge(body.len()));
        }
        if body.len() < 4 {
            return Err(InbandError::Short);
        }
        if &body[..2] != MAGIC || body[2] != VERSION {
            return Err(InbandError::BadMagic);
        }
        let rest = &body[4..];
        let seq = || -> Result<u64, InbandError> {
            Ok(u64::from_be_bytes(
                rest.try_into().map_err(|_| InbandError::Short)?,
            ))
        };
        match body[3] {
            1 => Ok(Message::Cert(rest.to_vec())),
            2 => Ok(Message::CertAck(
                rest.try_into().map_err(|_| InbandError::Short)?,
            )),
            3 => Ok(Message::Probe { seq: seq()? }),
            4 => Ok(Message::ProbeReply { seq: seq()? }),
            5 => match get_addr(rest)? {
                (a, []) => Ok(Message::WhoIs(a)),
                _ => Err(InbandError::Short),
            },
            6 => {
                let (addr, cert) = get_addr(rest)?;
                Ok(Message::WhoIsReply {
                    addr,
                    cert: cert.to_vec(),
                })
            }
            7 if rest.is_empty() => Ok(Message::Leaving),
            7 => Err(InbandError::TooLarge(rest.len())),
            // The size is what arrived: the padding tells it.
            8 => Ok(Message::MtuProbe {
                seq: u64::from_be_bytes(
                    rest.get(..8)
                        .ok_or(InbandError::Short)?
                        .try_into()
                        .map_err(|_| InbandError::Short)?,
                ),
                size: u16::try_from(HEADER + len).map_err(|_| InbandError::TooLarge(len))?,
            }),
            9 if rest.len() == 10 => Ok(Message::MtuAck {
                seq: u64::from_be_bytes(rest[..8].try_into().map_err(|_| InbandError::Short)?),
                size: u16::from_be_bytes([rest[8], rest[9]]),
            }),
            9 => Err(InbandError::Short),
            // Longer is fine: a later version may add fields.
            10 if rest.len() >= HELLO_LEN => Ok(Message::Hello {
                seq: u64::from_be_bytes(rest[..8].try_into().map_err(|_| InbandError::Short)?),
                heard: u64::from_be_bytes(rest[8..16].try_into().map_err(|_| InbandError::Short)?),
                held_us: u32::from_be_bytes(
                    rest[16..20].try_into().map_err(|_| InbandError::Short)?,
                ),
                interval_ms: u32::from_be_bytes(
                    rest[20..24].try_into().map_err(|_| InbandError::Short)?,
                ),
                answer: rest[24] & 1 == 1,
            }),
            10 => Err(InbandError::Short),
            t => Err(InbandError::UnknownType(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for m in [
            Message::Cert(vec![1, 2, 3]),
            Message::CertAck([7; 32]),
            Message::Probe { seq: 42 },
            Message::ProbeReply { seq: u64::MAX },
            Message::WhoIs("10.77.1.11".parse().unwrap()),
            Message::WhoIs("fd77::1:b".parse().unwrap()),
            Message::WhoIsReply {
                addr: "fd77::1:b".parse().unwrap(),
                cert: vec![9; 300],
            },
            Message::WhoIsReply {
                addr: "10.77.1.11".parse().unwrap(),
                cert: vec![],
            },
            Message::Leaving,
            Message::MtuProbe { seq: 3, size: 1420 },
            Message::MtuProbe { seq: 4, size: 52 },
            Message::MtuAck { seq: 5, size: 1340 },
            Message::Hello {
                seq: 7,
                heard: u64::MAX,
                held_us: 12_345,
                interval_ms: 100,
                answer: true,
            },
            Message::Hello {
                seq: 1,
                heard: 0,
                held_us: 0,
                interval_ms: 1000,
                answer: false,
            },
        ] {
            let p = m.encode();
            if let Message::MtuProbe { size, .. } = m {
                assert_eq!(p.len(), usize::from(size), "padded to the probed size");
            }
            assert!(is_inband(&p));
            assert!(crate::packet::addresses(&p).is_some());
            assert_eq!(Message::decode(&p).unwrap(), m);
        }
    }

    #[test]
    fn a_hello_with_more_fields_than_known_is_read_and_a_short_one_refused() {
        let m = Message::Hello {
            seq: 3,
            heard: 2,
            held_us: 40,
            interval_ms: 100,
            answer: false,
        };
        let mut p = m.encode();
        p.extend_from_slice(&[0xff; 6]);
        let len = u16::from_be_bytes([p[4], p[5]]) + 6;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Message::decode(&p), Ok(m.clone()));
        let mut q = m.encode();
        q.pop();
        let len = u16::from_be_bytes([q[4], q[5]]) - 1;
        q[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Message::decode(&q), Err(InbandError::Short));
    }

    #[test]
    fn real_packets_are_not_inband() {
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[7] = 64;
        v6[23] = 1;
        assert!(!is_inband(&v6));
        assert_eq!(Message::decode(&v6), Err(InbandError::NotInband));
    }

    fn message() -> impl Strategy<Value = Message> {
        let addr = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ];
        let bytes = proptest::collection::vec(any::<u8>(), 0..MAX_BODY - 40);
        prop_oneof![
            bytes.clone().prop_map(Message::Cert),
            any::<[u8; 32]>().prop_map(Message::CertAck),
            any::<u64>().prop_map(|seq| Message::Probe { seq }),
            any::<u64>().prop_map(|seq| Message::ProbeReply { seq }),
            addr.clone().prop_map(Message::WhoIs),
            (addr, bytes).prop_map(|(addr, cert)| Message::WhoIsReply { addr, cert }),
            Just(Message::Leaving),
            (any::<u64>(), 52..=(MAX_BODY + HEADER) as u16)
                .prop_map(|(seq, size)| Message::MtuProbe { seq, size }),
            (any::<u64>(), any::<u16>()).prop_map(|(seq, size)| Message::MtuAck { seq, size }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(seq, heard, held_us, interval_ms, answer)| {
                    Message::Hello {
                        seq,
                        heard,
                        held_us,
                        interval_ms,
                        answer,
                    }
                }),
        ]
    }

    proptest! {
        /// Every message comes back as sent; with a byte changed or cut it
        /// decodes to an error or some message, never a panic.
        #[test]
        fn round_trips_and_survives_changes(m in message(), pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
            let p = m.encode();
            prop_assert!(is_inband(&p));
            prop_assert_eq!(Message::decode(&p), Ok(m));
            let mut q = p.clone();
            let at = pos % q.len();
            q[at] = val;
            let _ = Message::decode(&q);
            let _ = Message::decode(&p[..cut % (p.len() + 1)]);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Message::decode(&bytes);
            let mut p = Message::Probe { seq: 1 }.encode();
            p.truncate(40);
            p.extend_from_slice(&tail);
            let _ = Message::decode(&p);
        }
    }
}
