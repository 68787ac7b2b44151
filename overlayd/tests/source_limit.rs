//! A handshake flood from one source address that honours cookies (audit
//! M12): a gateway under load answers its initiations only at the
//! per-source rate, while a host from another address attaches.
//!
//! Everything runs through `Node::on_datagram` on a virtual clock; the
//! flood clients are boringtun initiators, which answer a cookie reply by
//! putting the cookie (mac2) on their next initiation.

mod common;

use boringtun::noise::{Tunn, TunnResult};
use common::*;
use cubenet_certs::NodeKey;
use overlayd::config::Config;
use overlayd::identity::Identity;
use overlayd::inband::Message;
use overlayd::node::{Node, Outbox};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use x25519_dalek::PublicKey;

/// WireGuard message types (the first byte).
const COOKIE_REPLY: u8 = 3;
const RESPONSE: u8 = 2;

/// The test gateway with `limits` appended to its configuration.
fn gateway_with(limits: &str) -> Arc<Node> {
    let pki = Pki::get();
    let text = std::fs::read_to_string(&pki.gw_config).unwrap();
    // One file per call: the tests run in parallel, and two whose limits
    // had the same length wrote the same file while the other read it.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = pki.dir.path().join(format!(
        "gw-limits-{}-{}.toml",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, format!("{text}[limits]\n{limits}\n")).unwrap();
    let cfg = Config::load(&path).unwrap();
    let unix = cubenet_certs::time::unix_now();
    let id = Identity::load(&cfg, unix).unwrap();
    Node::new(cfg, id, Instant::now(), unix, 1).unwrap()
}

fn initiator(key: &NodeKey, index: u32) -> Tunn {
    let gw = PublicKey::from(Pki::get().gw_key.public());
    Tunn::new(key.secret().clone(), gw, None, None, index, None)
}

fn initiation(t: &mut Tunn) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

/// Feeds `dgram` from `from` at `now`, and what the gateway answers to
/// `from` back into `t`, until nothing more goes either way. Returns the
/// gateway's datagrams to `from` and the inner packets `t` decrypted.
fn exchange(
    node: &Node,
    t: &mut Tunn,
    from: SocketAddr,
    dgram: &[u8],
    now: Instant,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut replies = Vec::new();
    let mut inner = Vec::new();
    let mut pending = vec![dgram.to_vec()];
    let mut out = Outbox::default();
    while let Some(d) = pending.pop() {
        assert!(replies.len() < 64, "the exchange does not settle");
        node.on_datagram(&d, from, now, &mut out);
        for (to, reply) in take_datagrams(&mut out) {
            if to != from {
                continue;
            }
            let mut buf = vec![0u8; 65_600];
            match t.decapsulate(Some(IpAddr::from([192, 0, 2, 1])), &reply, &mut buf) {
                TunnResult::WriteToNetwork(b) => {
                    pending.push(b.to_vec());
                    let mut more = vec![0u8; 65_600];
                    while let TunnResult::WriteToNetwork(b) = t.decapsulate(None, &[], &mut more) {
                        pending.push(b.to_vec());
                    }
                }
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    inner.push(p.to_vec())
                }
                TunnResult::Done | TunnResult::Err(_) => {}
            }
            replies.push(reply);
        }
    }
    (replies, inner)
}

/// Sends an initiation; when the gateway asks for a cookie, sends another
/// carrying it (what a WireGuard client does). The gateway's replies.
fn handshake_with_cookie(node: &Node, t: &mut Tunn, from: SocketAddr, now: Instant) -> Vec<u8> {
    let init = initiation(t);
    let (replies, _) = exchange(node, t, from, &init, now);
    if replies.iter().any(|r| r[0] == COOKIE_REPLY) {
        let init = initiation(t);
        let (replies, _) = exchange(node, t, from, &init, now);
        return replies.iter().map(|r| r[0]).collect();
    }
    replies.iter().map(|r| r[0]).collect()
}

#[test]
fn one_source_honouring_cookies_gets_only_its_rate_while_a_host_attaches() {
    // Under load from the first initiation: every one needs a cookie.
    let node = gateway_with("handshake_rate = 0");
    let pki = Pki::get();
    let t0 = Instant::now();
    let flood_ip: IpAddr = "198.51.100.7".parse().unwrap();
    let mut flood: Vec<(Tunn, SocketAddr)> = (0..10u16)
        .map(|i| {
            (
                initiator(&NodeKey::generate(), 100 + u32::from(i)),
                SocketAddr::new(flood_ip, 40_000 + i),
            )
        })
        .collect();
    let host_addr: SocketAddr = "192.0.2.11:40000".parse().unwrap();
    let mut host = initiator(&pki.host_key, 7);

    // 1000 initiations a second for a second, each with a valid cookie,
    // from ten keys at one address; the host joins half-way.
    let mut answered = 0u64;
    let mut sent = 0u64;
    for ms in 0..1000u64 {
        let now = t0 + Duration::from_millis(ms);
        let (t, from) = &mut flood[(ms % 10) as usize];
        let got = handshake_with_cookie(&node, t, *from, now);
        sent += 1;
        answered += got.iter().filter(|&&k| k == RESPONSE).count() as u64;
        if ms == 500 {
            let got = handshake_with_cookie(&node, &mut host, host_addr, now);
            assert!(
                got.contains(&RESPONSE),
                "the host was not answered: {got:?}"
            );
            let cert = Message::Cert(pki.host_cert.encoded().to_vec()).encode();
            let mut buf = vec![0u8; 4096];
            let sealed = match host.encapsulate(&cert, &mut buf) {
                TunnResult::WriteToNetwork(b) => b.to_vec(),
                other => panic!("no session: {other:?}"),
            };
            let (_, inner) = exchange(&node, &mut host, host_addr, &sealed, now);
            let ack = Message::CertAck(pki.host_cert.fingerprint().0);
            assert!(
                inner.iter().any(|p| Message::decode(p) == Ok(ack.clone())),
                "the host's certificate was not acknowledged"
            );
        }
    }
    assert_eq!(attached(&node), 1, "the host is not attached");
    // The flood source got its burst and its rate for one second; the
    // rest were dropped before any Diffie-Hellman, and counted.
    let limits = &node.cfg.limits;
    let allowed = limits.handshake_source_burst + limits.handshake_source_rate;
    assert!(answered >= limits.handshake_source_burst, "{answered}");
    assert!(
        answered <= allowed,
        "{answered} of {sent} flood initiations answered, more than {allowed}"
    );
    assert_eq!(
        node.drops.handshake_source_limit.load(Ordering::Relaxed),
        sent - answered
    );
    let status = node.status(t0 + Duration::from_secs(1));
    assert_eq!(status.drops.handshake_source_limit, sent - answered);
}

#[test]
fn initiations_without_a_cookie_do_not_spend_an_address_allowance() {
    // Someone forging a host's source address cannot answer cookie
    // replies: its initiations must not count against the host.
    let node = gateway_with("handshake_rate = 0");
    let pki = Pki::get();
    let now = Instant::now();
    let host_addr: SocketAddr = "192.0.2.11:40000".parse().unwrap();
    let mut forger = initiator(&NodeKey::generate(), 9);
    for _ in 0..100 {
        let init = initiation(&mut forger);
        let mut out = Outbox::default();
        node.on_datagram(&init, host_addr, now, &mut out);
        let replies = take_datagrams(&mut out);
        assert!(replies.iter().all(|(_, d)| d[0] == COOKIE_REPLY));
    }
    assert_eq!(node.drops.handshake_source_limit.load(Ordering::Relaxed), 0);
    let mut host = initiator(&pki.host_key, 7);
    let got = handshake_with_cookie(&node, &mut host, host_addr, now);
    assert!(
        got.contains(&RESPONSE),
        "the host was not answered: {got:?}"
    );
}
