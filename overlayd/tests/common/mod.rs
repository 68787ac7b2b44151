//! A gateway or host [`Node`] built from real files (CA, key, certificate,
//! config in a temporary directory), and a WireGuard client that talks to
//! it through `Node::on_datagram` the way the UDP socket would.
#![allow(dead_code)]

use boringtun::noise::{Tunn, TunnResult};
use cubenet_certs::{CaBody, CaCert, CaKey, NodeBody, NodeCert, NodeKey, Role};
use overlayd::config::Config;
use overlayd::identity::Identity;
use overlayd::inband::Message;
use overlayd::node::{Node, Outbox};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use x25519_dalek::PublicKey;

pub const GW_V4: &str = "10.77.1.1";
pub const GW_V6: &str = "fd77::1:1";
pub const HOST_V4: &str = "10.77.1.11";
pub const HOST_V6: &str = "fd77::1:b";

/// A CA with a gateway and a host, on disk; made once per test binary.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_key: CaKey,
    pub ca: CaCert,
    pub gw_key: NodeKey,
    pub gw_cert: NodeCert,
    pub host_key: NodeKey,
    pub host_cert: NodeCert,
    /// A valid certificate of another host (another key).
    pub other_cert: NodeCert,
    pub gw_config: PathBuf,
    pub host_config: PathBuf,
}

fn now() -> u64 {
    cubenet_certs::time::unix_now()
}

pub fn sign(
    pki_ca: (&CaKey, &CaCert),
    name: &str,
    key: [u8; 32],
    role: Role,
    addrs: &[&str],
) -> NodeCert {
    let (ca_key, ca) = pki_ca;
    let prefix = |a: &str| if a.contains(':') { 48 } else { 16 };
    NodeBody {
        name: name.into(),
        public_key: key,
        addresses: addrs
            .iter()
            .map(|a| format!("{a}/{}", prefix(a)).parse().unwrap())
            .collect(),
        groups: vec!["fuzz".into()],
        site: "fra".into(),
        role,
        subnets: vec![],
        not_before: now() - 3600,
        not_after: now() + 86_400 * 365,
        ca_fingerprint: ca.fingerprint(),
    }
    .sign(&ca_key.signing)
    .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("overlayd-fuzz-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let ca_key = CaKey::generate();
        let ca = CaBody {
            name: "fuzz".into(),
            public_key: ca_key.signing.verifying_key().to_bytes(),
            networks: vec![
                "10.77.0.0/16".parse().unwrap(),
                "fd77::/48".parse().unwrap(),
            ],
            not_before: now() - 3600,
            not_after: now() + 86_400 * 3650,
        }
        .self_sign(&ca_key.signing)
        .unwrap();
        let gw_key = NodeKey::generate();
        let host_key = NodeKey::generate();
        let c = (&ca_key, &ca);
        let gw_cert = sign(
            c,
            "fra-gw1",
            gw_key.public(),
            Role::Gateway,
            &[GW_V4, GW_V6],
        );
        let host_cert = sign(
            c,
            "fra-h1",
            host_key.public(),
            Role::Host,
            &[HOST_V4, HOST_V6],
        );
        let other_cert = sign(
            c,
            "fra-h2",
            NodeKey::generate().public(),
            Role::Host,
            &["10.77.1.12"],
        );
        write(d, "ca.crt", &ca.to_armor());
        write(d, "gw.crt", &gw_cert.to_armor());
        write(d, "host.crt", &host_cert.to_armor());
        cubenet_certs::keys::write_private(&d.join("gw.key"), &gw_key.to_armor()).unwrap();
        cubenet_certs::keys::write_private(&d.join("host.key"), &host_key.to_armor()).unwrap();
        let ident = |who: &str| {
            format!(
                "control_socket = \"{d}/{who}.sock\"\n[identity]\nkey = \"{d}/{who}.key\"\n\
                 cert = \"{d}/{who}.crt\"\nca = \"{d}/ca.crt\"\n",
                d = d.display()
            )
        };
        let gw_config = write(d, "gw.toml", &ident("gw"));
        let host_config = write(
            d,
            "host.toml",
            &format!(
                "{}[[gateway]]\nname = \"fra-gw1\"\nendpoint = \"192.0.2.1:51820\"\npublic_key = \"{}\"\n",
                ident("host"),
                gw_key.public_base64()
            ),
        );
        Pki {
            dir,
            ca_key,
            ca,
            gw_key,
            gw_cert,
            host_key,
            host_cert,
            other_cert,
            gw_config,
            host_config,
        }
    }

    /// The shared one (key generation and file writing happen once).
    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::new)
    }

    fn node(config: &Path) -> Arc<Node> {
        let cfg = Config::load(config).unwrap();
        let id = Identity::load(&cfg, now()).unwrap();
        Node::new(cfg, id, std::time::Instant::now(), now(), 1).unwrap()
    }

    /// A fresh gateway node (no peers, counters at zero).
    pub fn gateway(&self) -> Arc<Node> {
        Pki::node(&self.gw_config)
    }

    /// A fresh host node with one configured gateway (fra-gw1).
    pub fn host(&self) -> Arc<Node> {
        Pki::node(&self.host_config)
    }
}

/// The drop counters as numbers, by name.
pub fn drops(node: &Node) -> [u64; 10] {
    let d = &node.drops;
    [
        &d.spoofed,
        &d.unauthenticated,
        &d.no_route,
        &d.not_for_us,
        &d.invalid,
        &d.pending_full,
        &d.cookies_sent,
        &d.bad_cert,
        &d.no_endpoint,
        &d.unknown_session,
    ]
    .map(|a| a.load(Ordering::Relaxed))
}

pub fn attached(node: &Node) -> usize {
    node.peers()
        .iter()
        .filter(|p| p.attached.load(Ordering::Relaxed))
        .count()
}

/// Every datagram the node queued, with its destination; the outbox is
/// emptied.
pub fn take_datagrams(out: &mut Outbox) -> Vec<(SocketAddr, Vec<u8>)> {
    let v = out
        .net
        .batches()
        .iter()
        .flat_map(|b| b.datagrams().map(move |d| (b.ep, d.to_vec())))
        .collect();
    out.net.clear();
    out.tun.clear();
    v
}

/// A WireGuard peer of a node (the host fra-h1 unless told otherwise),
/// speaking through `on_datagram` from `addr`.
pub struct Client {
    pub tunn: Tunn,
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub out: Outbox,
}

impl Client {
    pub fn new(node: Arc<Node>, key: &NodeKey, peer: [u8; 32], addr: SocketAddr) -> Client {
        Client {
            tunn: Tunn::new(
                key.secret().clone(),
                PublicKey::from(peer),
                None,
                None,
                7,
                None,
            ),
            addr,
            node,
            out: Outbox::default(),
        }
    }

    /// Feeds one datagram to the node and carries the exchange through:
    /// what the node sends back to us is decrypted, what that makes us send
    /// goes to the node again. Returns the packets we decrypted.
    pub fn deliver(&mut self, dgram: &[u8]) -> Vec<Vec<u8>> {
        let mut inner = Vec::new();
        let mut pending = vec![dgram.to_vec()];
        let mut rounds = 0;
        while let Some(d) = pending.pop() {
            rounds += 1;
            assert!(rounds < 64, "the exchange does not settle");
            self.node
                .on_datagram(&d, self.addr, std::time::Instant::now(), &mut self.out);
            for (to, reply) in take_datagrams(&mut self.out) {
                if to != self.addr {
                    continue;
                }
                let mut buf = vec![0u8; 65_600];
                let from = Some(IpAddr::from([192, 0, 2, 1]));
                match self.tunn.decapsulate(from, &reply, &mut buf) {
                    TunnResult::WriteToNetwork(b) => {
                        pending.push(b.to_vec());
                        let mut more = vec![0u8; 65_600];
                        while let TunnResult::WriteToNetwork(b) =
                            self.tunn.decapsulate(None, &[], &mut more)
                        {
                            pending.push(b.to_vec());
                        }
                    }
                    TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                        inner.push(p.to_vec())
                    }
                    TunnResult::Done | TunnResult::Err(_) => {}
                }
            }
        }
        inner
    }

    /// Encrypts an inner packet and delivers it.
    pub fn send(&mut self, pkt: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; pkt.len() + 148];
        match self.tunn.encapsulate(pkt, &mut buf) {
            TunnResult::WriteToNetwork(b) => {
                let b = b.to_vec();
                self.deliver(&b)
            }
            other => panic!("no session to send on: {other:?}"),
        }
    }

    /// Encrypts an inner packet without delivering it.
    pub fn seal(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; pkt.len() + 148];
        match self.tunn.encapsulate(pkt, &mut buf) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("no session to send on: {other:?}"),
        }
    }

    /// A handshake initiation (not delivered).
    pub fn initiation(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        match self.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("no initiation: {other:?}"),
        }
    }

    /// Runs the handshake; the session is confirmed by our keepalive.
    pub fn handshake(&mut self) {
        let init = self.initiation();
        self.deliver(&init);
        assert!(
            self.tunn.stats().0.is_some(),
            "no session after the handshake"
        );
    }

    /// Presents a certificate in-band; true when it was acknowledged.
    pub fn present(&mut self, cert: &NodeCert) -> bool {
        let got = self.send(&Message::Cert(cert.encoded().to_vec()).encode());
        got.iter()
            .any(|p| Message::decode(p) == Ok(Message::CertAck(cert.fingerprint().0)))
    }

    /// Whether the node answers a probe on this session.
    pub fn probe(&mut self, seq: u64) -> bool {
        let got = self.send(&Message::Probe { seq }.encode());
        got.iter()
            .any(|p| Message::decode(p) == Ok(Message::ProbeReply { seq }))
    }
}

/// The host fra-h1 with a session to a fresh gateway, its certificate
/// accepted (attached).
pub fn attached_host() -> Client {
    let pki = Pki::get();
    let node = pki.gateway();
    let mut c = Client::new(
        node,
        &pki.host_key,
        pki.gw_key.public(),
        "192.0.2.11:40000".parse().unwrap(),
    );
    c.handshake();
    assert!(c.present(&pki.host_cert), "certificate not acknowledged");
    assert_eq!(attached(&c.node), 1);
    c
}

/// An IPv4 packet (header only checked for what overlayd and boringtun
/// read: version, total length, addresses, protocol).
pub fn ipv4(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

pub fn ipv6(src: &str, dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// The gateway fra-gw1 with a session to a fresh host that started the
/// handshake itself (as it does at start), the gateway's certificate
/// accepted in-band.
pub fn gateway_of_host() -> Client {
    let pki = Pki::get();
    let node = pki.host();
    let mut out = Outbox::default();
    node.initiate_all(std::time::Instant::now(), &mut out);
    let (to, init) = take_datagrams(&mut out).pop().expect("an initiation");
    let mut c = Client::new(node, &pki.gw_key, pki.host_key.public(), to);
    let mut buf = vec![0u8; 256];
    let resp = match c.tunn.decapsulate(None, &init, &mut buf) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("no response: {other:?}"),
    };
    c.deliver(&resp);
    assert!(c.tunn.stats().0.is_some(), "no session after the handshake");
    assert!(c.present(&pki.gw_cert), "certificate not acknowledged");
    assert_eq!(attached(&c.node), 1);
    c
}
