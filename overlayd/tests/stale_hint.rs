//! A host and the stale-session hint of a restarted gateway
//! (`overlayd::stale`): acted on for the session in use, once; ignored for
//! a session the host has already replaced.

mod common;

use common::*;
use overlayd::node::Outbox;
use overlayd::stale;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The host's in-band messages to its gateway (a tick's probe) and the
/// receiver index they carry: the gateway's index of the session.
fn index_in_use(c: &mut Client) -> u32 {
    let mut out = Outbox::default();
    c.node
        .on_tick(Instant::now(), cubenet_certs::time::unix_now(), &mut out);
    take_datagrams(&mut out)
        .iter()
        .filter(|(to, _)| *to == c.addr)
        .find_map(|(_, d)| stale::data_receiver(d))
        .expect("a probe on the session")
}

/// What the host sends to the gateway after it got `hint`.
fn after_hint(c: &mut Client, hint: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Outbox::default();
    c.node.on_datagram(hint, c.addr, Instant::now(), &mut out);
    take_datagrams(&mut out)
        .into_iter()
        .filter(|(to, _)| *to == c.addr)
        .map(|(_, d)| d)
        .collect()
}

fn is_initiation(d: &[u8]) -> bool {
    overlayd::node::is_initiation(d)
}

#[test]
fn a_hint_naming_the_session_in_use_starts_one_handshake() {
    let mut c = gateway_of_host();
    let idx = index_in_use(&mut c);
    let sent = after_hint(&mut c, &stale::encode(idx));
    assert!(sent.iter().any(|d| is_initiation(d)), "no handshake");
    // The same hint again (every probe of the old session draws one):
    // nothing more, it was acted on.
    let invalid = c.node.drops.invalid.load(Ordering::Relaxed);
    let sent = after_hint(&mut c, &stale::encode(idx));
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(c.node.drops.invalid.load(Ordering::Relaxed), invalid + 1);
}

#[test]
fn a_hint_naming_another_index_or_from_elsewhere_is_ignored() {
    let mut c = gateway_of_host();
    let idx = index_in_use(&mut c);
    let sent = after_hint(&mut c, &stale::encode(idx ^ 1));
    assert!(sent.is_empty(), "{sent:?}");
    let mut out = Outbox::default();
    let elsewhere = "192.0.2.99:51820".parse().unwrap();
    c.node
        .on_datagram(&stale::encode(idx), elsewhere, Instant::now(), &mut out);
    assert!(take_datagrams(&mut out).is_empty());
    assert_eq!(c.node.drops.invalid.load(Ordering::Relaxed), 2);
}

#[test]
fn a_hint_about_the_session_before_a_new_handshake_does_not_end_the_new_one() {
    let mut c = gateway_of_host();
    let old = index_in_use(&mut c);
    // A new session (the gateway rekeys), then the hint that was on its way
    // about the old one arrives before the host sent anything on the new.
    c.handshake();
    let sent = after_hint(&mut c, &stale::encode(old));
    assert!(!sent.iter().any(|d| is_initiation(d)), "handshake again");
    assert!(c.probe(9), "the new session carries probes");
    // On the new session a hint about it is acted on again.
    let new = index_in_use(&mut c);
    assert_ne!(new, old);
    let sent = after_hint(&mut c, &stale::encode(new));
    assert!(sent.iter().any(|d| is_initiation(d)), "no handshake");
}
