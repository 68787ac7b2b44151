//! overlayd's UDP receive path as a whole (`Node::on_datagram`), fed what
//! anyone on the internet can send: arbitrary datagrams, WireGuard messages
//! of the right type and length with random content, valid messages with a
//! byte changed, and, inside a real session, arbitrary inner packets,
//! malformed in-band messages and broken certificates. Nothing panics,
//! every refused datagram is counted, nobody attaches without a valid
//! certificate, and a session survives the garbage sent on it.
//!
//! Longer runs: `PROPTEST_CASES=100000 cargo test --release -p overlayd --test receive_fuzz`.

mod common;

use common::*;
use cubenet_certs::NodeKey;
use overlayd::inband::{Message, NEXT_HEADER};
use overlayd::node::Outbox;
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const INVALID: usize = 4;
const COOKIES: usize = 6;
const UNKNOWN_SESSION: usize = 9;
const SPOOFED: usize = 0;
const NOT_FOR_US: usize = 3;
const UNAUTHENTICATED: usize = 1;
const BAD_CERT: usize = 7;

/// WireGuard message types and their lengths (data: header + tag + body).
const KINDS: [(u8, usize); 4] = [(1, 148), (2, 92), (3, 64), (4, 32)];

/// A WireGuard message of the right type and length, random content; its
/// receiver index may aim at a real peer (`aim`).
fn shaped(kind: usize, body: &[u8], extra: usize, aim: Option<u32>) -> Vec<u8> {
    let (ty, len) = KINDS[kind];
    let len = if ty == 4 { len + extra } else { len };
    let mut d: Vec<u8> = body.iter().copied().cycle().take(len).collect();
    d.resize(len, 0);
    d[..4].copy_from_slice(&u32::from(ty).to_le_bytes());
    if let Some(index) = aim {
        let at = if ty == 2 { 8 } else { 4 };
        let low = u32::from(d[at]);
        d[at..at + 4].copy_from_slice(&((index << 8) | low).to_le_bytes());
    }
    d
}

fn from_addr(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], port))
    } else {
        SocketAddr::from(([198, 51, 100, 7], port))
    }
}

#[derive(Debug, Clone)]
enum Datagram {
    Raw(Vec<u8>),
    Shaped {
        kind: usize,
        body: Vec<u8>,
        extra: usize,
        aim: bool,
    },
}

fn datagram() -> impl Strategy<Value = Datagram> {
    prop_oneof![
        vec(any::<u8>(), 0..200).prop_map(Datagram::Raw),
        (
            0usize..4,
            vec(any::<u8>(), 1..64),
            0usize..200,
            any::<bool>()
        )
            .prop_map(|(kind, body, extra, aim)| Datagram::Shaped {
                kind,
                body,
                extra,
                aim
            }),
    ]
}

/// Sends datagrams to `node` from strangers and checks each is counted
/// once and changes no peer.
fn strangers(
    node: &overlayd::node::Node,
    ds: &[(Datagram, bool, u16)],
) -> Result<(), TestCaseError> {
    let peers = node.peers().len();
    let aim = node.peers().first().map(|p| p.index.0);
    let mut out = Outbox::default();
    for (d, v6, port) in ds {
        let bytes = match d {
            Datagram::Raw(b) => b.clone(),
            Datagram::Shaped {
                kind,
                body,
                extra,
                aim: a,
            } => shaped(*kind, body, *extra, aim.filter(|_| *a)),
        };
        let before = drops(node);
        node.on_datagram(&bytes, from_addr(*v6, *port), Instant::now(), &mut out);
        let after = drops(node);
        let counted = [INVALID, COOKIES, UNKNOWN_SESSION]
            .iter()
            .map(|&i| after[i] - before[i])
            .sum::<u64>();
        prop_assert_eq!(counted, 1, "{:?} was not counted once: {:?}", d, after);
        prop_assert_eq!(node.peers().len(), peers);
        prop_assert_eq!(attached(node), 0);
        // Nothing goes out but a cookie reply, or (a gateway, for data of
        // a session it does not have) a stale-session hint naming the
        // index of that datagram, smaller than it.
        for (_, reply) in take_datagrams(&mut out) {
            let hint = overlayd::stale::decode(&reply);
            prop_assert!(
                reply.len() == 64
                    || (hint.is_some() && hint == overlayd::stale::data_receiver(&bytes)),
                "unexpected reply to {:?}",
                d
            );
        }
    }
    Ok(())
}

proptest! {
    /// Arbitrary datagrams and random WireGuard-shaped ones to a gateway
    /// and to a host: each is counted as invalid (or answered with a
    /// cookie under load), no peer appears, nobody attaches.
    #[test]
    fn arbitrary_datagrams_are_counted_and_attach_nobody(
        ds in vec((datagram(), any::<bool>(), any::<u16>()), 1..16),
        host in any::<bool>(),
    ) {
        let pki = Pki::get();
        let node = if host { pki.host() } else { pki.gateway() };
        strangers(&node, &ds)?;
        // And a tick in between changes nothing about that.
        let mut out = Outbox::default();
        node.on_tick(Instant::now(), cubenet_certs::time::unix_now(), &mut out);
        strangers(&node, &ds)?;
    }

    /// A valid handshake initiation with one byte changed: refused and
    /// counted, unless the byte is in mac2 (only checked under load), and
    /// even then nobody attaches before data and a certificate.
    #[test]
    fn mutated_initiations_are_refused(pos in 0usize..148, xor in 1u8..) {
        let pki = Pki::get();
        let node = pki.gateway();
        let mut c = Client::new(node.clone(), &pki.host_key, pki.gw_key.public(), from_addr(false, 1));
        let mut init = c.initiation();
        init[pos] ^= xor;
        let before = drops(&node)[INVALID];
        c.deliver(&init);
        let refused = drops(&node)[INVALID] - before;
        prop_assert_eq!(refused, u64::from(pos < 132), "byte {}", pos);
        prop_assert_eq!(attached(&node), 0);
    }

    /// A valid handshake response (to the host's own initiation) with one
    /// byte changed: refused and counted unless the byte is in mac2; no
    /// attach either way.
    #[test]
    fn mutated_responses_are_refused(pos in 0usize..92, xor in 1u8..) {
        let pki = Pki::get();
        let host = pki.host();
        let mut out = Outbox::default();
        host.initiate_all(Instant::now(), &mut out);
        let init = take_datagrams(&mut out).pop().expect("an initiation").1;
        // The gateway's side, by hand.
        let mut gw = boringtun::noise::Tunn::new(
            pki.gw_key.secret().clone(),
            x25519_dalek::PublicKey::from(pki.host_key.public()),
            None, None, 9, None,
        );
        let mut buf = vec![0u8; 256];
        let mut resp = match gw.decapsulate(None, &init, &mut buf) {
            boringtun::noise::TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("no response: {other:?}"),
        };
        resp[pos] ^= xor;
        let before = drops(&host)[INVALID];
        host.on_datagram(
            &resp,
            "192.0.2.1:51820".parse().unwrap(),
            Instant::now(),
            &mut out,
        );
        prop_assert_eq!(drops(&host)[INVALID] - before, u64::from(pos < 76), "byte {}", pos);
        prop_assert_eq!(attached(&host), 0);
    }

    /// A data message of a live session with one byte changed: refused
    /// (counted, or a stale counter dropped as a replay) and the session
    /// keeps working.
    #[test]
    fn mutated_data_is_refused_and_the_session_survives(pos in 0usize..80, xor in 1u8..) {
        let mut c = attached_host();
        let mut d = c.seal(&Message::Probe { seq: 5 }.encode());
        let pos = pos % d.len();
        d[pos] ^= xor;
        let before = drops(&c.node);
        let got = c.deliver(&d);
        prop_assert!(got.is_empty(), "a changed datagram was answered");
        let after = drops(&c.node);
        // A changed receiver index (bytes 4..8) names a session the
        // gateway does not have.
        let counted = after[INVALID] - before[INVALID] + after[UNKNOWN_SESSION] - before[UNKNOWN_SESSION];
        // The counter field (8..16) may turn into a stale counter, which
        // boringtun drops before decryption like any replay.
        prop_assert!(counted == 1 || (8..16).contains(&pos), "byte {}", pos);
        prop_assert!(c.probe(6));
        prop_assert_eq!(attached(&c.node), 1);
    }
}

/// What a peer holding a session can put inside it.
#[derive(Debug, Clone)]
enum Inner {
    /// Random bytes (mostly not IP: boringtun refuses them).
    Raw(Vec<u8>),
    /// An IPv4 packet from one of a few sources to one of a few
    /// destinations, random protocol and payload.
    V4 {
        src: usize,
        dst: usize,
        proto: u8,
        payload: Vec<u8>,
    },
    V6 {
        src: usize,
        dst: usize,
        next: u8,
        payload: Vec<u8>,
    },
    /// An in-band packet (IPv6, next header 253, `::` to `::`): right or
    /// wrong magic and version, any type, a body, a length field that may
    /// lie.
    Inband {
        magic: bool,
        ty: u8,
        body: Vec<u8>,
        len: Option<u16>,
    },
    /// Our certificate cut short.
    CertCut(usize),
    /// Our certificate with one byte changed.
    CertFlip(usize, u8),
    /// A valid certificate of another key.
    ForeignCert,
    /// WhoIs / WhoIsReply with arbitrary contents.
    WhoIs(bool, [u8; 16]),
    WhoIsReply(bool, [u8; 16], Vec<u8>),
    /// A timer tick.
    Tick,
}

const V4S: [&str; 4] = [HOST_V4, "10.77.1.99", GW_V4, "192.168.1.1"];
const V6S: [&str; 4] = [HOST_V6, "fd77::1:99", GW_V6, "2001:db8::1"];

fn inner() -> impl Strategy<Value = Inner> {
    prop_oneof![
        vec(any::<u8>(), 0..120).prop_map(Inner::Raw),
        (0usize..4, 0usize..4, any::<u8>(), vec(any::<u8>(), 0..64)).prop_map(
            |(src, dst, proto, payload)| Inner::V4 {
                src,
                dst,
                proto,
                payload
            }
        ),
        (0usize..4, 0usize..4, any::<u8>(), vec(any::<u8>(), 0..64)).prop_map(
            |(src, dst, next, payload)| Inner::V6 {
                src,
                dst,
                next,
                payload
            }
        ),
        (
            any::<bool>(),
            0u8..9,
            vec(any::<u8>(), 0..80),
            proptest::option::of(any::<u16>())
        )
            .prop_map(|(magic, ty, mut body, len)| {
                // A well-formed `Leaving` is no garbage: it ends the
                // session by design (tested on its own), so it gets a
                // byte too many here.
                if magic && ty == 7 && body.is_empty() {
                    body.push(0);
                }
                Inner::Inband {
                    magic,
                    ty,
                    body,
                    len,
                }
            }),
        any::<usize>().prop_map(Inner::CertCut),
        (any::<usize>(), 1u8..).prop_map(|(p, x)| Inner::CertFlip(p, x)),
        Just(Inner::ForeignCert),
        (any::<bool>(), any::<[u8; 16]>()).prop_map(|(v6, a)| Inner::WhoIs(v6, a)),
        (any::<bool>(), any::<[u8; 16]>(), vec(any::<u8>(), 0..64))
            .prop_map(|(v6, a, c)| Inner::WhoIsReply(v6, a, c)),
        Just(Inner::Tick),
    ]
}

fn addr(v6: bool, a: [u8; 16]) -> std::net::IpAddr {
    if v6 {
        std::net::Ipv6Addr::from(a).into()
    } else {
        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
    }
}

/// The bytes to send, and the counter that must go up by one (if any).
/// `to_host`: the node is the host and the sender its gateway (any source
/// is fine, the destination must be the host's); otherwise the node is the
/// gateway and the sender a host (the source must be the host's).
fn build(i: &Inner, to_host: bool) -> (Vec<u8>, Option<usize>) {
    let pki = Pki::get();
    let cert = if to_host {
        pki.gw_cert.encoded()
    } else {
        pki.host_cert.encoded()
    };
    let ip_check = |src: usize, dst: usize| match to_host {
        false => (src != 0).then_some(SPOOFED),
        true => (dst != 0).then_some(NOT_FOR_US),
    };
    match i {
        Inner::Raw(b) => {
            let not_ip = b.first().is_some_and(|v| !matches!(v >> 4, 4 | 6));
            (b.clone(), not_ip.then_some(INVALID))
        }
        Inner::V4 {
            src,
            dst,
            proto,
            payload,
        } => {
            let p = ipv4(V4S[*src], V4S[*dst], *proto, payload);
            (p, ip_check(*src, *dst))
        }
        Inner::V6 {
            src,
            dst,
            next,
            payload,
        } => {
            let p = ipv6(V6S[*src], V6S[*dst], *next, payload);
            (p, ip_check(*src, *dst))
        }
        Inner::Inband {
            magic,
            ty,
            body,
            len,
        } => {
            let mut b = if *magic {
                vec![b'C', b'N', 1, *ty]
            } else {
                vec![b'X', b'N', 1, *ty]
            };
            b.extend_from_slice(body);
            let mut p = ipv6("::", "::", NEXT_HEADER, &b);
            p[7] = 0;
            if let Some(l) = len {
                p[4..6].copy_from_slice(&l.to_be_bytes());
            }
            // boringtun delivers what the length field covers, or refuses
            // a packet shorter than it claims; a wrong magic is invalid.
            (p, (!*magic && len.is_none()).then_some(INVALID))
        }
        Inner::CertCut(n) => {
            let cut = n % cert.len();
            (Message::Cert(cert[..cut].to_vec()).encode(), Some(BAD_CERT))
        }
        Inner::CertFlip(p, x) => {
            let mut c = cert.to_vec();
            let at = p % c.len();
            c[at] ^= x;
            (Message::Cert(c).encode(), Some(BAD_CERT))
        }
        Inner::ForeignCert => (
            Message::Cert(pki.other_cert.encoded().to_vec()).encode(),
            Some(BAD_CERT),
        ),
        Inner::WhoIs(v6, a) => (Message::WhoIs(addr(*v6, *a)).encode(), None),
        Inner::WhoIsReply(v6, a, c) => (
            Message::WhoIsReply {
                addr: addr(*v6, *a),
                cert: c.clone(),
            }
            .encode(),
            None,
        ),
        Inner::Tick => (Vec::new(), None),
    }
}

proptest! {
    /// Inside an established session, a host sending to its gateway or a
    /// gateway to its host: arbitrary inner packets, spoofed sources,
    /// malformed in-band messages and broken certificates never panic, are
    /// counted where they are refused, and leave the session attached and
    /// answering probes.
    #[test]
    fn garbage_inside_a_session_leaves_it_working(items in vec(inner(), 1..12), to_host in any::<bool>()) {
        let mut c = if to_host { gateway_of_host() } else { attached_host() };
        let mut now = Instant::now();
        for i in &items {
            if matches!(i, Inner::Tick) {
                now += Duration::from_millis(100);
                let mut out = Outbox::default();
                c.node.on_tick(now, cubenet_certs::time::unix_now(), &mut out);
                continue;
            }
            let (bytes, counter) = build(i, to_host);
            let before = drops(&c.node);
            c.send(&bytes);
            let after = drops(&c.node);
            if let Some(k) = counter {
                prop_assert_eq!(after[k] - before[k], 1, "{:?}: {:?}", i, after);
            }
        }
        prop_assert!(c.probe(77), "the session stopped answering");
        prop_assert_eq!(attached(&c.node), 1);
        let st = c.node.status(Instant::now());
        let peer = &st.peers[0];
        let (name, addr) = if to_host { ("fra-gw1", GW_V4) } else { ("fra-h1", HOST_V4) };
        prop_assert_eq!(&peer.name, name);
        prop_assert_eq!(peer.addresses[0].to_string(), addr);
    }
}

#[test]
fn a_session_attaches_and_answers_probes() {
    let mut c = attached_host();
    assert!(c.probe(1));
    assert!(c.probe(2));
    let st = c.node.status(Instant::now());
    assert!(st.peers[0].attached, "{st:?}");
    assert_eq!(st.drops.invalid, 0, "{st:?}");
}

#[test]
fn a_spoofed_source_is_counted_and_the_session_survives() {
    let mut c = attached_host();
    for (src, dst) in [("10.77.1.99", GW_V4), ("10.77.1.12", HOST_V4)] {
        let before = drops(&c.node)[SPOOFED];
        assert!(c.send(&ipv4(src, dst, 17, &[0; 8])).is_empty());
        assert_eq!(drops(&c.node)[SPOOFED], before + 1, "{src}");
    }
    let before = drops(&c.node)[SPOOFED];
    c.send(&ipv6("fd77::1:99", GW_V6, 17, &[0; 8]));
    assert_eq!(drops(&c.node)[SPOOFED], before + 1);
    assert_eq!(c.node.status(Instant::now()).drops.spoofed, before + 1);
    assert_eq!(c.node.status(Instant::now()).peers[0].spoofed, before + 1);
    assert!(c.probe(3));
}

#[test]
fn data_before_a_certificate_is_unauthenticated_and_nobody_attaches() {
    let pki = Pki::get();
    let node = pki.gateway();
    let mut c = Client::new(
        node.clone(),
        &pki.host_key,
        pki.gw_key.public(),
        "192.0.2.11:40000".parse().unwrap(),
    );
    c.handshake();
    c.send(&ipv4(HOST_V4, GW_V4, 17, &[0; 8]));
    assert_eq!(drops(&node)[UNAUTHENTICATED], 1);
    // Someone else's valid certificate does not make it attach.
    assert!(!c.present(&pki.other_cert));
    assert_eq!(drops(&node)[BAD_CERT], 1);
    assert_eq!(attached(&node), 0);
    // Probes are answered even before (the tunnel authenticates the key).
    assert!(c.probe(9));
}

#[test]
fn a_stranger_key_gets_a_session_but_never_attaches() {
    // A key no CA signed completes a handshake (WireGuard cannot tell
    // before), sends data and garbage certificates: it stays pending.
    let pki = Pki::get();
    let node = pki.gateway();
    let stranger = NodeKey::generate();
    let mut c = Client::new(
        node.clone(),
        &stranger,
        pki.gw_key.public(),
        "192.0.2.99:1".parse().unwrap(),
    );
    c.handshake();
    assert!(!c.present(&pki.host_cert));
    c.send(&ipv4(HOST_V4, GW_V4, 17, &[0; 8]));
    assert_eq!(attached(&node), 0);
    assert_eq!(node.peers().len(), 1);
    assert!(!node.status(Instant::now()).peers[0].authenticated);
}

#[test]
fn identity_questions_only_from_peers_with_a_validated_cert() {
    // A key that merely completed a handshake gets no answer and makes the
    // gateway ask nobody; a host with its cert gets one.
    let pki = Pki::get();
    let node = pki.gateway();
    let stranger = NodeKey::generate();
    let mut c = Client::new(
        node.clone(),
        &stranger,
        pki.gw_key.public(),
        "192.0.2.98:1".parse().unwrap(),
    );
    c.handshake();
    let before = drops(&node)[UNAUTHENTICATED];
    let ask = Message::WhoIs(GW_V4.parse().unwrap()).encode();
    assert!(c.send(&ask).is_empty(), "a stranger's WhoIs was answered");
    assert_eq!(drops(&node)[UNAUTHENTICATED], before + 1);

    let mut host = attached_host();
    let replies = host.send(&ask);
    assert!(
        replies
            .iter()
            .any(|p| matches!(Message::decode(p), Ok(Message::WhoIsReply { .. }))),
        "an attached host's WhoIs got no reply: {replies:?}"
    );
}

/// An identity answer counts only for a question out to the peer that
/// answers: an attached host cannot plant an identity (or "unknown") in
/// its gateway's cache by answering what nobody asked it.
#[test]
fn an_unasked_identity_answer_is_dropped_and_counted() {
    let pki = Pki::get();
    let mut host = attached_host();
    let gw = host.node.clone();
    let a = pki.other_cert.body.addresses[0].addr();
    let now = Instant::now();
    // The gateway's firewall wants to know who is behind `a`.
    assert!(gw.identity_of(a, now).is_none());
    let planted = Message::WhoIsReply {
        addr: a,
        cert: pki.other_cert.encoded().to_vec(),
    };
    let before = gw.status(now).drops.unsolicited;
    assert!(host.send(&planted.encode()).is_empty());
    assert_eq!(gw.status(now).drops.unsolicited, before + 1);
    assert!(
        gw.identity_of(a, now).is_none(),
        "an unasked answer was believed"
    );
}

/// A certificate in the gateway's cert directory (how plain WireGuard
/// clients are admitted) counts only while it is valid: one that expired
/// after the directory was loaded attaches nobody.
#[test]
fn a_cert_directory_certificate_that_expired_since_load_attaches_nobody() {
    let pki = Pki::get();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("h.crt"), pki.host_cert.to_armor()).unwrap();
    let text = std::fs::read_to_string(&pki.gw_config).unwrap();
    let cfg_path = dir.path().join("gw.toml");
    let text = text.replacen(
        "[identity]\n",
        &format!("[identity]\ncert_dir = \"{}\"\n", dir.path().display()),
        1,
    );
    std::fs::write(&cfg_path, text).unwrap();
    let cfg = overlayd::config::Config::load(&cfg_path).unwrap();
    let unix = cubenet_certs::time::unix_now();
    let id = overlayd::identity::Identity::load(&cfg, unix).unwrap();
    assert_eq!(id.directory.len(), 1, "{:?}", id.directory_skipped);
    let start = Instant::now();
    let node = overlayd::node::Node::new(cfg, id, start, unix, 7).unwrap();
    // The wall clock moves past the host certificate's end.
    let later = pki.host_cert.body.not_after + 60;
    node.on_tick(start, later, &mut Outbox::default());
    let mut c = Client::new(
        node.clone(),
        &pki.host_key,
        pki.gw_key.public(),
        "192.0.2.77:4000".parse().unwrap(),
    );
    c.handshake();
    assert_eq!(
        attached(&node),
        0,
        "an expired directory certificate attached"
    );
}
