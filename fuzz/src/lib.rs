//! What each fuzz target does with its input, in one place: the targets in
//! `fuzz_targets/` call these functions, and `overlayd/tests/fuzz_regressions.rs`
//! includes this file and replays `fuzz/regressions/<target>/*` through the
//! same functions on stable Rust (`cargo test`). Every function must return
//! without panicking whatever the input; a panic is a bug in the decoder.
//!
//! Only the project's crates and what they already depend on are used here,
//! so the file builds both in the fuzz crate and in overlayd's tests.

use boringtun::noise::{Tunn, TunnResult};
use cubenet_certs::{
    armor, decode_object, CaBody, CaCert, CaKey, NodeBody, NodeCert, NodeKey, RevocationList, Role,
    TrustAnchor,
};
use overlayd::node::{Node, Outbox};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The wall clock every target runs at (fixed, so a run is repeatable):
/// inside the validity of [`Pki`]'s certificates.
pub const UNIX_NOW: u64 = 1_800_000_000;

/// A CA, a gateway and a host with fixed keys, certificates valid at
/// [`UNIX_NOW`]; made once per process.
pub struct Pki {
    pub ca_key: CaKey,
    pub ca: CaCert,
    pub gw_key: NodeKey,
    pub gw_cert: NodeCert,
    pub host_key: NodeKey,
    pub host_cert: NodeCert,
}

pub const GW_V4: &str = "10.77.1.1";
pub const GW_V6: &str = "fd77::1:1";
pub const HOST_V4: &str = "10.77.1.11";
pub const HOST_V6: &str = "fd77::1:b";

fn sign(
    ca_key: &CaKey,
    ca: &CaCert,
    name: &str,
    key: [u8; 32],
    role: Role,
    a: &[&str],
) -> NodeCert {
    let prefix = |a: &str| if a.contains(':') { 48 } else { 16 };
    NodeBody {
        name: name.into(),
        public_key: key,
        addresses: a
            .iter()
            .map(|a| format!("{a}/{}", prefix(a)).parse().unwrap())
            .collect(),
        groups: vec!["fuzz".into()],
        site: "fra".into(),
        role,
        subnets: if role == Role::Gateway {
            vec!["192.168.77.0/24".parse().unwrap()]
        } else {
            vec![]
        },
        not_before: UNIX_NOW - 86_400,
        not_after: UNIX_NOW + 86_400 * 365,
        ca_fingerprint: ca.fingerprint(),
    }
    .sign(&ca_key.signing)
    .unwrap()
}

impl Pki {
    fn new() -> Pki {
        let ca_key = CaKey::from_bytes([1; 32]);
        let ca = CaBody {
            name: "fuzz".into(),
            public_key: ca_key.signing.verifying_key().to_bytes(),
            networks: vec![
                "10.77.0.0/16".parse().unwrap(),
                "fd77::/48".parse().unwrap(),
                "192.168.77.0/24".parse().unwrap(),
            ],
            not_before: UNIX_NOW - 86_400,
            not_after: UNIX_NOW + 86_400 * 3650,
        }
        .self_sign(&ca_key.signing)
        .unwrap();
        let gw_key = NodeKey::from_bytes([2; 32]);
        let host_key = NodeKey::from_bytes([3; 32]);
        let gw_cert = sign(
            &ca_key,
            &ca,
            "fra-gw1",
            gw_key.public(),
            Role::Gateway,
            &[GW_V4, GW_V6],
        );
        let host_cert = sign(
            &ca_key,
            &ca,
            "fra-h1",
            host_key.public(),
            Role::Host,
            &[HOST_V4, HOST_V6],
        );
        Pki {
            ca_key,
            ca,
            gw_key,
            gw_cert,
            host_key,
            host_cert,
        }
    }

    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::new)
    }

    pub fn anchor(&self) -> TrustAnchor {
        TrustAnchor::new(self.ca.clone(), UNIX_NOW).unwrap()
    }
}

/// Certificates, their text armour and the key files' armour: decoded,
/// and what decodes is validated against a CA, re-encoded and decoded again.
pub fn cert(data: &[u8]) {
    let pki = Pki::get();
    let anchor = pki.anchor();
    if let Ok(c) = NodeCert::decode(data) {
        let _ = anchor.validate(&c, UNIX_NOW);
        let _ = anchor.check_policy(&c);
        let _ = c.fingerprint();
        for a in &c.body.addresses {
            let _ = c.owns_addr(a.addr());
            let _ = pki.ca.covers_addr(a.addr());
        }
        let again = NodeCert::decode(c.encoded()).expect("a decoded certificate decodes again");
        assert_eq!(again.encoded(), c.encoded());
        let _ = NodeCert::from_armor(&c.to_armor()).expect("its armour decodes");
    }
    if let Ok(ca) = CaCert::decode(data) {
        let _ = TrustAnchor::new(ca.clone(), UNIX_NOW);
        let again = CaCert::decode(ca.encoded()).expect("a decoded CA decodes again");
        assert_eq!(again.encoded(), ca.encoded());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_object(text);
        let _ = armor::decode_any(text);
        let _ = NodeCert::from_armor(text);
        let _ = CaCert::from_armor(text);
        let _ = NodeKey::decode(text);
        let _ = CaKey::decode(text);
        let _ = cubenet_certs::keys::decode_public_key(text.trim());
        let _ = cubenet_certs::Fingerprint::from_hex(text.trim());
        let _ = cubenet_certs::time::parse_time(text.trim());
    }
}

/// Revocation lists, binary and armoured: decoded, checked against the CA
/// and offered to a trust anchor.
pub fn crl(data: &[u8]) {
    let pki = Pki::get();
    let mut lists = Vec::new();
    if let Ok(l) = RevocationList::decode(data) {
        let again = RevocationList::decode(l.encoded()).expect("a decoded list decodes again");
        assert_eq!(again.encoded(), l.encoded());
        lists.push(l);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(l) = RevocationList::from_armor(text) {
            lists.push(l);
        }
    }
    for l in lists {
        let _ = l.verify(&pki.ca);
        let _ = l.is_revoked(&pki.host_cert.fingerprint());
        let mut anchor = pki.anchor();
        if anchor.offer_revocation_list(l).is_ok() {
            let _ = anchor.validate(&pki.host_cert, UNIX_NOW);
        }
    }
}

/// overlayd's and routed's configs (TOML text), and what overlayd derives
/// from its config: the firewall policy.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = overlayd::config::Config::parse(text) {
        if let Ok(p) = cfg.firewall_policy() {
            let _ = overlayd::firewall::Firewall::new(p);
        }
        let _ = cfg.probe.interval();
        let _ = cfg.damping.params();
    }
    let _ = routed::config::Config::parse(text);
}

/// A BGP message: decoded; what decodes is encoded again (split as routed
/// sends it) and decodes again.
fn bgp_message(data: &[u8]) -> Result<routed::wire::Message, routed::wire::DecodeError> {
    use routed::wire::{self, Message};
    let m = wire::decode(data)?;
    let parts = match m.clone() {
        Message::Update(u) => wire::split_update(u)
            .into_iter()
            .map(Message::Update)
            .collect(),
        other => vec![other],
    };
    for p in parts {
        let bytes = wire::encode(&p);
        let _ = wire::decode(&bytes);
    }
    Ok(m)
}

/// A router with one neighbour (AS 65010, no BFD) whose session is up on
/// connection 1 (its OPEN, IPv4 and IPv6, and KEEPALIVE arrived).
fn bgp_router(now: Instant) -> routed::router::Router {
    use routed::rib::NeighborId;
    use routed::wire::{Message, Open};
    static CFG: OnceLock<routed::config::Config> = OnceLock::new();
    let cfg = CFG.get_or_init(|| {
        routed::config::Config::parse(
            "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
             [[neighbor]]\nname = \"site\"\naddress = \"10.77.1.9\"\nasn = 65010\nbfd = false\n\
             import = [\"192.168.0.0/16\", \"fd00::/8\", \"10.0.0.0/8\"]\nexport = \"all\"\n",
        )
        .expect("the fuzz router config")
    });
    let mut r = routed::router::Router::new(
        cfg.clone(),
        vec![
            "10.77.0.0/16".parse().unwrap(),
            "fd77::/48".parse().unwrap(),
        ],
        vec![],
        None,
        vec![vec!["192.168.0.0/16".parse().unwrap()]],
        now,
        1,
    )
    .expect("the fuzz router");
    let n = NeighborId(0);
    r.on_connected(n, 1, false, None, now);
    let open = Open::new(65010, 90, std::net::Ipv4Addr::new(10, 77, 1, 9));
    r.on_message(n, 1, Ok(Message::Open(open)), now);
    r.on_message(n, 1, Ok(Message::Keepalive), now);
    r.drain();
    r
}

/// BGP: the input as one message (decoded, re-encoded, decoded), and as
/// the byte stream of an established session, cut into messages the way
/// routed's reader does and each given to the router, a tenth of a second
/// apart.
pub fn bgp(data: &[u8]) {
    use routed::rib::NeighborId;
    let _ = bgp_message(data);
    let mut now = base_instant();
    let mut r = bgp_router(now);
    let n = NeighborId(0);
    let mut rest = data;
    loop {
        match routed::wire::frame_len(rest) {
            Ok(Some(len)) if rest.len() >= len => {
                let m = bgp_message(&rest[..len]);
                rest = &rest[len..];
                r.on_message(n, 1, m, now);
            }
            Ok(_) => break,
            Err(e) => {
                r.on_message(n, 1, Err(e), now);
                break;
            }
        }
        now += Duration::from_millis(100);
        r.on_tick(now);
        r.drain();
    }
    let _ = cubenet_api::line(&r.status(now));
    let _ = cubenet_api::line(&r.routes(now));
}

/// BFD control packets: decoded, and a session fed each 24-byte piece of
/// the input (valid or not, in order, 100 ms apart).
pub fn bfd(data: &[u8]) {
    use routed::bfd::{Config, ControlPacket, Session, PACKET_LEN};
    let _ = ControlPacket::decode(data);
    let t0 = base_instant();
    let mut s = Session::new(Config::default(), 7, 1, t0);
    let mut now = t0;
    for chunk in data.chunks(PACKET_LEN) {
        now += Duration::from_millis(100);
        if let Ok(p) = ControlPacket::decode(chunk) {
            assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
            let _ = s.on_packet(&p, now);
        }
        let _ = s.poll(now);
        let _ = s.next_deadline();
        let _ = s.detection_time();
    }
}

/// In-band messages (inside the tunnel): decoded; what decodes is encoded
/// and decodes to the same message.
pub fn inband(data: &[u8]) {
    use overlayd::inband::Message;
    if let Ok(m) = Message::decode(data) {
        assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
    }
    let _ = overlayd::stale::decode(data);
    let _ = overlayd::stale::data_receiver(data);
}

/// The control sockets: the bytes a client writes, cut into request lines
/// the way both daemons read them (the first byte picks the line limit), and
/// each line parsed as an overlayd and a routed request; and the UAPI
/// (`wg show`) socket's lines.
pub fn control(data: &[u8]) {
    use cubenet_daemon::ctl::{read_request_line, RequestLine};
    let (max, rest) = match data.split_first() {
        Some((m, rest)) => (usize::from(*m).max(1) * 16, rest),
        None => (16, data),
    };
    let mut r = rest;
    let mut buf = Vec::new();
    let mut first = true;
    // A gateway for the route requests, made at the first.
    let mut gw: Option<Arc<Node>> = None;
    let mut sync: Option<std::collections::HashSet<ipnet::IpNet>> = None;
    loop {
        let line = futures::executor::block_on(read_request_line(&mut r, &mut buf, max))
            .expect("reading from memory");
        match line {
            RequestLine::Line(l) => {
                if let Ok(req) = serde_json::from_str::<cubenet_api::overlayd::Request>(l.trim()) {
                    let again = cubenet_api::line(&req);
                    assert_eq!(
                        serde_json::from_str::<cubenet_api::overlayd::Request>(again.trim()).ok(),
                        Some(req.clone()),
                        "a request does not read back as itself"
                    );
                    route_request(&mut gw, &mut sync, req);
                }
                let _ = routed::ctl::parse_request(&l);
                if first {
                    let _ = overlayd::uapi::parse_operation(&l);
                } else {
                    let _ = overlayd::uapi::check_get_line(&l);
                }
                first = false;
            }
            RequestLine::NotUtf8 => {}
            RequestLine::Eof | RequestLine::TooLong => break,
        }
    }
}

/// What overlayd's control socket does with a route request, on a gateway
/// (the other requests read state and are left out).
fn route_request(
    gw: &mut Option<Arc<Node>>,
    sync: &mut Option<std::collections::HashSet<ipnet::IpNet>>,
    req: cubenet_api::overlayd::Request,
) {
    use cubenet_api::overlayd::Request;
    let mut gateway = || gw.get_or_insert_with(|| node(true)).clone();
    match req {
        Request::RouteAdd { prefix, via } => {
            let _ = gateway().route_add(prefix, &via);
        }
        Request::RouteDel { prefix } => {
            let _ = gateway().route_del(prefix);
        }
        Request::RouteSet { routes, merge } => {
            let _ = gateway().route_set(&routes, merge);
        }
        Request::RouteUpdate {
            add,
            withdraw,
            more,
        } => {
            let u = gateway().route_update(&add, &withdraw, !more);
            if let Some(seen) = sync.as_mut() {
                seen.extend(add.iter().map(|r| r.prefix.trunc()));
            }
            let _ = cubenet_api::line(&u);
        }
        Request::RouteSyncBegin => *sync = Some(Default::default()),
        Request::RouteSyncEnd => {
            if let Some(seen) = sync.take() {
                let _ = gateway().route_retain(&seen);
            }
        }
        _ => {}
    }
    if let Some(n) = gw {
        n.publish_fib();
        let _ = cubenet_api::line(&n.status(base_instant()));
    }
}

/// A packet as the firewall and the data path read it: addresses,
/// firewall view, TTL, MSS clamping, ICMP errors and fragmentation.
pub fn firewall_packet(data: &[u8]) {
    use overlayd::icmp;
    let _ = overlayd::firewall::parse(data);
    let _ = overlayd::packet::addresses(data);
    let _ = overlayd::inband::is_inband(data);
    let mtu = match data.len() {
        0..=2 => 1280,
        _ => u16::from_be_bytes([data[1], data[2]]).max(68),
    };
    let _ = overlayd::mss::oversized(data, mtu);
    let mut p = data.to_vec();
    let _ = overlayd::mss::clamp(&mut p, mtu);
    let mut p = data.to_vec();
    let _ = icmp::decrement_ttl(&mut p);
    for from in [
        IpAddr::from([10, 77, 1, 1]),
        IpAddr::from([0xfd77, 0, 1, 0, 0, 0, 0, 1]),
    ] {
        for e in [
            icmp::Error::TimeExceeded,
            icmp::Error::NetUnreachable,
            icmp::Error::HostUnreachable,
            icmp::Error::AdminProhibited,
            icmp::Error::TooBig { mtu },
        ] {
            if let Some(reply) = icmp::error(e, from, data) {
                let _ = overlayd::firewall::parse(&reply);
            }
        }
    }
    if let Some(frags) = icmp::fragment_v4(data, mtu) {
        for f in frags {
            assert!(f.len() <= usize::from(mtu), "a fragment over the MTU");
            let _ = overlayd::firewall::parse(&f);
        }
    }
}

fn base_instant() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// The config of the gateway fra-gw1 and of the host fra-h1 (whose gateway
/// is fra-gw1), both with a firewall and small limits; the key and certificate paths are
/// never read (the identity is built in memory).
fn node_config(gateway: bool) -> overlayd::config::Config {
    let mut text = String::from(
        "control_socket = \"/nonexistent/ctl.sock\"\n\
         [identity]\nkey = \"/nonexistent/key\"\ncert = \"/nonexistent/crt\"\nca = \"/nonexistent/ca\"\n",
    );
    if !gateway {
        text.push_str(&format!(
            "[[gateway]]\nname = \"fra-gw1\"\nendpoint = \"192.0.2.1:51820\"\npublic_key = \"{}\"\n",
            Pki::get().gw_key.public_base64()
        ));
    }
    // Small tables: a fresh node per input stays cheap (65,536 peer slots
    // by default), and the limits are within reach of a few datagrams.
    text.push_str("[limits]\nmax_peers = 16\nmax_pending = 4\n");
    text.push_str(
        "[firewall]\ninbound_default = \"deny\"\noutbound_default = \"allow\"\nmax_flows = 64\nreject = true\n\
         [[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nport = \"22\"\nfrom = [\"group:fuzz\", \"site:fra\"]\n\
         [[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n\
         [[firewall.inbound]]\naction = \"allow\"\nproto = \"udp\"\nport = \"5000-6000\"\nfrom = [\"10.77.0.0/16\"]\n",
    );
    overlayd::config::Config::parse(&text).expect("the fuzz node config")
}

/// A fresh gateway (or host) node: no peers, nothing learned.
pub fn node(gateway: bool) -> Arc<Node> {
    static CFG: OnceLock<[overlayd::config::Config; 2]> = OnceLock::new();
    let cfgs = CFG.get_or_init(|| [node_config(true), node_config(false)]);
    let pki = Pki::get();
    let (key, cert) = if gateway {
        (&pki.gw_key, &pki.gw_cert)
    } else {
        (&pki.host_key, &pki.host_cert)
    };
    let id = overlayd::identity::Identity {
        key: key.clone(),
        cert: Arc::new(cert.clone()),
        trust: pki.anchor(),
        directory: Default::default(),
        directory_skipped: Vec::new(),
    };
    let cfg = cfgs[usize::from(!gateway)].clone();
    Node::new(cfg, id, base_instant(), UNIX_NOW, 1).expect("the fuzz node")
}

/// Every datagram the node queued, with its destination; the outbox is
/// emptied.
fn take_datagrams(out: &mut Outbox) -> Vec<(SocketAddr, Vec<u8>)> {
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

/// The other end of a WireGuard session with a node, speaking through
/// `on_datagram` from `addr`.
struct Client {
    tunn: Tunn,
    addr: SocketAddr,
    node: Arc<Node>,
    out: Outbox,
    now: Instant,
}

impl Client {
    fn new(node: Arc<Node>, key: &NodeKey, peer: [u8; 32], addr: SocketAddr) -> Client {
        Client {
            tunn: Tunn::new(
                key.secret().clone(),
                x25519_dalek::PublicKey::from(peer),
                None,
                None,
                7,
                None,
            ),
            addr,
            node,
            out: Outbox::default(),
            now: base_instant(),
        }
    }

    /// Feeds one datagram to the node and carries the exchange through
    /// (a bounded number of rounds): what the node sends back to us is
    /// decrypted and what that makes us send goes to the node again.
    /// Returns the inner packets we received.
    fn deliver(&mut self, dgram: &[u8]) -> Vec<Vec<u8>> {
        let mut inner = Vec::new();
        let mut pending = vec![dgram.to_vec()];
        let mut rounds = 0;
        while let Some(d) = pending.pop() {
            rounds += 1;
            if rounds > 64 {
                break;
            }
            self.node
                .on_datagram(&d, self.addr, self.now, &mut self.out);
            for (to, reply) in take_datagrams(&mut self.out) {
                if to != self.addr {
                    continue;
                }
                let mut buf = vec![0u8; 65_600];
                match self.tunn.decapsulate(Some(to.ip()), &reply, &mut buf) {
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

    /// Encrypts an inner packet and delivers it; false when there is no
    /// session to send on (the node ended it).
    fn send(&mut self, pkt: &[u8]) -> bool {
        let mut buf = vec![0u8; pkt.len() + 148];
        match self.tunn.encapsulate(pkt, &mut buf) {
            TunnResult::WriteToNetwork(b) => {
                let b = b.to_vec();
                self.deliver(&b);
                true
            }
            _ => false,
        }
    }

    fn handshake(&mut self) {
        let mut buf = vec![0u8; 256];
        let init = match self.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        self.deliver(&init);
        assert!(
            self.tunn.stats().0.is_some(),
            "no session after the handshake"
        );
    }
}

/// Splits the rest of a receive input into the datagrams or packets it
/// carries: pieces between separators. An empty piece is a timer tick.
pub const SEPARATOR: &[u8] = b"\xc0\xff\xee";

fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        v.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    v.push(rest);
    v
}

/// The senders a stranger's datagram comes from (the first byte of a
/// piece picks one).
fn stranger(b: u8) -> SocketAddr {
    match b % 4 {
        0 => SocketAddr::from(([198, 51, 100, 7], 40_000)),
        1 => SocketAddr::from(([198, 51, 100, 8], 51_820)),
        2 => SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 40_000)),
        _ => SocketAddr::from(([192, 0, 2, 1], 51_820)),
    }
}

/// overlayd's whole receive path. The first byte picks the mode, the rest
/// is cut into pieces at [`SEPARATOR`] (an empty piece is a one-second
/// timer tick):
/// - 0: a fresh gateway gets each piece as a UDP datagram from strangers
///   (handshakes, cookies, data of unknown sessions, garbage);
/// - 1: a fresh gateway and a fresh host get each piece from their TUN
///   (what a local program sends into the overlay);
/// - 2: the host fra-h1 has a session with a fresh gateway and its
///   certificate accepted; each piece is sealed in that session (inner
///   packets: IP to forward or filter, in-band messages, anything);
/// - 3: the same before the certificate (the peer is not authenticated);
/// - 4: the gateway fra-gw1 has a session with a fresh host (which started
///   it) and its certificate accepted; each piece is sealed in it.
pub fn receive(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pki = Pki::get();
    let mut out = Outbox::default();
    let mut now = base_instant();
    match mode % 5 {
        0 | 1 => {
            let tun = mode % 5 == 1;
            let nodes = if tun {
                vec![node(true), node(false)]
            } else {
                vec![node(true)]
            };
            for n in &nodes {
                for p in pieces(rest) {
                    if p.is_empty() {
                        now += Duration::from_secs(1);
                        n.on_tick(now, UNIX_NOW, &mut out);
                    } else if tun {
                        n.on_tun_packet(p, now, &mut out);
                    } else {
                        n.on_datagram(&p[1..], stranger(p[0]), now, &mut out);
                    }
                    take_datagrams(&mut out);
                }
            }
        }
        2 | 3 => {
            let gw = node(true);
            let mut c = Client::new(
                gw,
                &pki.host_key,
                pki.gw_key.public(),
                SocketAddr::from(([192, 0, 2, 11], 40_000)),
            );
            c.handshake();
            if mode % 5 == 2 {
                let cert = overlayd::inband::Message::Cert(pki.host_cert.encoded().to_vec());
                c.send(&cert.encode());
                assert_eq!(attached(&c.node), 1, "the host did not attach");
            }
            in_session(&mut c, rest);
        }
        _ => {
            let host = node(false);
            host.initiate_all(now, &mut out);
            let Some((to, init)) = take_datagrams(&mut out).pop() else {
                panic!("the host sent no initiation");
            };
            let mut c = Client::new(host, &pki.gw_key, pki.host_key.public(), to);
            let mut buf = vec![0u8; 256];
            let resp = match c.tunn.decapsulate(None, &init, &mut buf) {
                TunnResult::WriteToNetwork(b) => b.to_vec(),
                other => panic!("no response: {other:?}"),
            };
            c.deliver(&resp);
            let cert = overlayd::inband::Message::Cert(pki.gw_cert.encoded().to_vec());
            c.send(&cert.encode());
            assert_eq!(attached(&c.node), 1, "the gateway did not attach");
            in_session(&mut c, rest);
        }
    }
}

fn attached(node: &Node) -> usize {
    use std::sync::atomic::Ordering;
    node.peers()
        .iter()
        .filter(|p| p.attached.load(Ordering::Relaxed))
        .count()
}

fn in_session(c: &mut Client, rest: &[u8]) {
    for p in pieces(rest) {
        if p.is_empty() {
            c.now += Duration::from_secs(1);
            c.node.on_tick(c.now, UNIX_NOW, &mut c.out);
            take_datagrams(&mut c.out);
        } else if !c.send(p) {
            return;
        }
    }
}
