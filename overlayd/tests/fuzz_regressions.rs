//! The fuzz targets' inputs replayed on stable Rust, without libFuzzer:
//! every file in `fuzz/regressions/<target>/` (inputs that found bugs) and
//! the seeds in `fuzz/corpus/<target>/seed-*` go through the same function
//! the target calls (`fuzz/src/lib.rs`, included here), which must not
//! panic. See the README's "Fuzzing" section for running the fuzzers themselves.
//!
//! The seeds are written by `cargo test -p overlayd --test fuzz_regressions
//! -- --ignored write_seeds` (from the encoders, so they stay valid).

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use cubenet_certs::{Fingerprint, RevocationBody};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("cert", harness::cert),
    ("crl", harness::crl),
    ("config", harness::config),
    ("bgp", harness::bgp),
    ("bfd", harness::bfd),
    ("inband", harness::inband),
    ("control", harness::control),
    ("firewall_packet", harness::firewall_packet),
    ("receive", harness::receive),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir` whose name passes `keep`, sorted (none if the
/// directory does not exist).
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    v.sort();
    v
}

/// Runs each file through its target; the failures name the file.
fn replay(sub: &str, keep: impl Fn(&str) -> bool + Copy) -> usize {
    let mut n = 0;
    let mut failed = Vec::new();
    for (name, f) in TARGETS {
        for file in files(&fuzz_dir().join(sub).join(name), keep) {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| f(&data)).is_err() {
                failed.push(file.display().to_string());
            }
            n += 1;
        }
    }
    assert!(failed.is_empty(), "panicked on: {failed:#?}");
    n
}

#[test]
fn fuzz_regressions_replay_without_a_panic() {
    // Every directory there names a target (a misspelt one would be skipped).
    for e in std::fs::read_dir(fuzz_dir().join("regressions")).unwrap() {
        let e = e.unwrap();
        if !e.path().is_dir() {
            continue;
        }
        let name = e.file_name().into_string().unwrap();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/regressions/{name} is no fuzz target"
        );
    }
    let n = replay("regressions", |_| true);
    assert!(n > 0, "no regression inputs found");
}

#[test]
fn fuzz_seeds_replay_without_a_panic() {
    let n = replay("corpus", |f| f.starts_with("seed-"));
    assert!(n >= TARGETS.len(), "only {n} seeds found");
}

// The seeds: a few valid inputs per target, from the project's encoders.

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum = 0u32;
    for w in p.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: &str, dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
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

/// A TCP SYN header from `sport` to `dport` with an MSS option.
fn tcp_syn(sport: u16, dport: u16, mss: u16) -> Vec<u8> {
    let mut t = vec![0u8; 24];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 6 << 4;
    t[13] = 0x02;
    t[20] = 2;
    t[21] = 4;
    t[22..24].copy_from_slice(&mss.to_be_bytes());
    t
}

fn udp(sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    u.extend_from_slice(body);
    u
}

fn echo(v6: bool) -> Vec<u8> {
    let mut e = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
    e.extend_from_slice(b"ping");
    e
}

/// Pieces of a `receive` input, joined by its separator.
fn joined(mode: u8, pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![mode];
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            v.extend_from_slice(harness::SEPARATOR);
        }
        v.extend_from_slice(p);
    }
    v
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use overlayd::inband::Message as Inband;
    use routed::wire::{self, Attrs, Message, Notification, Open, Reason, Update};
    let pki = harness::Pki::get();
    let gw4 = [10, 77, 1, 1];
    let host4 = [10, 77, 1, 11];
    let lan4 = [192, 168, 77, 5];
    // Certificates and their armour.
    let node_key = cubenet_certs::NodeKey::from_bytes([9; 32]);
    let mut s: Vec<(&str, &str, Vec<u8>)> = vec![
        ("cert", "node", pki.gw_cert.encoded().to_vec()),
        ("cert", "ca", pki.ca.encoded().to_vec()),
        ("cert", "node.crt", pki.host_cert.to_armor().into_bytes()),
        ("cert", "ca.crt", pki.ca.to_armor().into_bytes()),
        ("cert", "node.key", node_key.to_armor().into_bytes()),
    ];

    // Revocation lists.
    let crl = RevocationBody {
        ca_fingerprint: pki.ca.fingerprint(),
        serial: 3,
        issued_at: harness::UNIX_NOW - 60,
        revoked: [pki.host_cert.fingerprint(), Fingerprint([7; 32])].into(),
    }
    .sign(&pki.ca_key.signing)
    .unwrap();
    s.push(("crl", "list", crl.encoded().to_vec()));
    s.push(("crl", "list.crl", crl.to_armor().into_bytes()));

    // Configs: the examples, and a firewall.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, path) in [
        ("gateway-overlayd.toml", "examples/gateway/overlayd.toml"),
        ("host-overlayd.toml", "examples/host/overlayd.toml"),
        ("gateway-routed.toml", "examples/gateway/routed.toml"),
    ] {
        s.push(("config", name, std::fs::read(root.join(path)).unwrap()));
    }
    s.push((
        "config",
        "firewall.toml",
        b"[identity]\nkey = \"k\"\ncert = \"c\"\nca = \"a\"\n\
          [firewall]\ninbound_default = \"deny\"\noutbound_default = \"allow\"\nmax_flows = 100\n\
          max_flows_per_remote = 10\nreject = true\n\
          [[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nport = \"5432\"\n\
          from = [\"group:db\", \"name:web1\", \"site:fra\", \"10.77.0.0/24\"]\n\
          [[firewall.outbound]]\naction = \"deny\"\nproto = \"udp\"\nport = \"1-1024\"\nto = [\"site:ams\"]\n"
            .to_vec(),
    ));

    // BGP messages, from routed's encoder.
    let open = Open::new(4_200_000_101, 9, std::net::Ipv4Addr::new(10, 77, 1, 1));
    s.push(("bgp", "open", wire::encode(&Message::Open(open))));
    s.push(("bgp", "keepalive", wire::encode(&Message::Keepalive)));
    s.push((
        "bgp",
        "notification",
        wire::encode(&Message::Notification(Notification::new(Reason::Cease(
            wire::Cease::AdministrativeShutdown,
        )))),
    ));
    s.push((
        "bgp",
        "refresh",
        wire::encode(&Message::RouteRefresh { ipv6: true }),
    ));
    s.push(("bgp", "end-of-rib-v6", wire::end_of_rib(true)));
    let attrs = Attrs {
        origin: 0,
        as_path: vec![4_200_000_101, 65_001],
        med: Some(10),
        local_pref: Some(100),
        communities: vec![0xfde8_0001],
        next_hop_v4: Some(std::net::Ipv4Addr::new(10, 77, 1, 1)),
        next_hop_v6: Some("fd77::1:1".parse().unwrap()),
        next_hop_v6_local: Some("fe80::1".parse().unwrap()),
    };
    s.push((
        "bgp",
        "update-v4",
        wire::encode(&Message::Update(Update {
            withdrawn: vec!["10.78.0.0/16".parse().unwrap()],
            announced: vec![
                "10.77.8.0/24".parse().unwrap(),
                "10.77.9.0/24".parse().unwrap(),
            ],
            attrs: attrs.clone(),
            treat_as_withdraw: None,
            unreach_v6: false,
            ..Update::default()
        })),
    ));
    s.push((
        "bgp",
        "update-v6",
        wire::encode(&Message::Update(Update {
            withdrawn: vec!["fd78::/48".parse().unwrap()],
            announced: vec!["fd77:8::/64".parse().unwrap()],
            attrs,
            treat_as_withdraw: None,
            unreach_v6: false,
            ..Update::default()
        })),
    ));

    // A session's stream: updates, a refresh request, a keepalive.
    let stream: Vec<u8> = s
        .iter()
        .filter(|(t, n, _)| *t == "bgp" && (n.starts_with("update") || *n == "refresh"))
        .flat_map(|(_, _, b)| b.clone())
        .chain(wire::encode(&Message::Keepalive))
        .collect();
    s.push(("bgp", "stream", stream));

    // BFD: a session coming up (Down, Init, Up), 24 bytes each.
    {
        use routed::bfd::{ControlPacket, Diag, State};
        let pkt = |state, your| ControlPacket {
            version: 1,
            diag: Diag::None,
            state,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_discr: 42,
            your_discr: your,
            desired_min_tx_us: 300_000,
            required_min_rx_us: 300_000,
            required_min_echo_rx_us: 0,
        };
        let mut up = Vec::new();
        for p in [pkt(State::Down, 0), pkt(State::Up, 7), pkt(State::Up, 7)] {
            up.extend_from_slice(&p.encode());
        }
        s.push(("bfd", "down", pkt(State::Down, 0).encode().to_vec()));
        s.push(("bfd", "up", up));
    }

    // In-band messages.
    let whois_reply = Inband::WhoIsReply {
        addr: "10.77.1.11".parse().unwrap(),
        cert: pki.host_cert.encoded().to_vec(),
    };
    let inband = [
        ("cert", Inband::Cert(pki.host_cert.encoded().to_vec())),
        ("cert-ack", Inband::CertAck([5; 32])),
        ("probe", Inband::Probe { seq: 9 }),
        ("whois-v6", Inband::WhoIs("fd77::1:b".parse().unwrap())),
        ("whois-reply", whois_reply.clone()),
        ("leaving", Inband::Leaving),
        ("mtu-probe", Inband::MtuProbe { seq: 1, size: 1280 }),
    ];
    for (name, m) in &inband {
        s.push(("inband", name, m.encode()));
    }

    // Control-socket lines (the first byte: the line limit in 16 bytes).
    s.push((
        "control",
        "overlayd",
        b"\xff{\"cmd\":\"status\"}\n{\"cmd\":\"route_add\",\"prefix\":\"10.88.0.0/16\",\"via\":[\"fra-gw1\"]}\n\
          {\"cmd\":\"route_sync_begin\"}\n{\"cmd\":\"route_update\",\"add\":[{\"prefix\":\"fd88::/48\",\"via\":[\"fra-gw1\"]}],\
          \"withdraw\":[\"10.88.0.0/16\"],\"more\":false}\n{\"cmd\":\"route_sync_end\"}\n\
          {\"cmd\":\"route_set\",\"routes\":[],\"merge\":true}\n{\"cmd\":\"route_del\",\"prefix\":\"10.88.0.0/16\"}\n"
            .to_vec(),
    ));
    s.push((
        "control",
        "routed",
        b"\x20{\"cmd\":\"routes\"}\r\n{\"cmd\":\"reload\"}\n\xff\xfe\n{\"cmd\":\"status\"}"
            .to_vec(),
    ));
    s.push(("control", "uapi", b"\x04get=1\n\n".to_vec()));

    // Packets as the firewall and the data path read them.
    let syn = tcp_syn(40_000, 22, 1460);
    s.push(("firewall_packet", "tcp-syn-v4", ipv4(host4, gw4, 6, &syn)));
    s.push((
        "firewall_packet",
        "tcp-syn-v6",
        ipv6("fd77::1:b", "fd77::1:1", 6, &syn),
    ));
    s.push((
        "firewall_packet",
        "udp-v6",
        ipv6("fd77::1:b", "fd77::1:1", 17, &udp(5353, 5353, b"hello")),
    ));
    let echo4 = ipv4(host4, lan4, 1, &echo(false));
    s.push(("firewall_packet", "echo-v4", echo4.clone()));
    let mut unreach = vec![3, 1, 0, 0, 0, 0, 0, 0];
    unreach.extend_from_slice(&echo4[..28]);
    s.push((
        "firewall_packet",
        "icmp-error-v4",
        ipv4(lan4, host4, 1, &unreach),
    ));
    let mut big = ipv4(host4, lan4, 17, &udp(1, 2, &[0x55; 1400]));
    big[6] = 0; // no DF: may be fragmented
    s.push(("firewall_packet", "udp-big-v4", big));

    // The receive path.
    {
        let mut t = boringtun::noise::Tunn::new(
            pki.host_key.secret().clone(),
            x25519_dalek::PublicKey::from(pki.gw_key.public()),
            None,
            None,
            7,
            None,
        );
        let mut buf = vec![0u8; 256];
        let init = match t.format_handshake_initiation(&mut buf, false) {
            boringtun::noise::TunnResult::WriteToNetwork(b) => b.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        let mut from_host = vec![0u8];
        from_host.extend_from_slice(&init);
        let mut data = vec![3u8, 4, 0, 0, 0];
        data.extend_from_slice(&[0; 12]);
        data.extend_from_slice(&[0x5a; 32]);
        s.push((
            "receive",
            "stranger-initiation",
            joined(0, &[from_host, vec![], data]),
        ));
        s.push((
            "receive",
            "tun",
            joined(
                1,
                &[
                    ipv4(gw4, host4, 1, &echo(false)),
                    ipv6("fd77::1:1", "fd77::1:b", 58, &echo(true)),
                    vec![],
                    ipv4(host4, gw4, 6, &syn),
                ],
            ),
        ));
        let session = [
            ipv4(host4, gw4, 1, &echo(false)),
            ipv4(host4, gw4, 6, &syn),
            ipv6("fd77::1:b", "fd77::1:1", 17, &udp(5000, 5353, b"x")),
            ipv4(host4, lan4, 17, &udp(5000, 53, b"query")),
            ipv4(host4, [10, 77, 2, 2], 1, &echo(false)),
            Inband::Probe { seq: 3 }.encode(),
            Inband::WhoIs("10.77.1.1".parse().unwrap()).encode(),
            Inband::MtuProbe { seq: 2, size: 1200 }.encode(),
            vec![],
            whois_reply.encode(),
        ];
        s.push(("receive", "host-session", joined(2, &session)));
        s.push((
            "receive",
            "unauthenticated-session",
            joined(3, &session[..3]),
        ));
        s.push((
            "receive",
            "gateway-session",
            joined(
                4,
                &[
                    ipv4(lan4, host4, 1, &echo(false)),
                    ipv4([10, 77, 2, 2], host4, 6, &tcp_syn(1, 22, 1460)),
                    Inband::WhoIs("10.77.1.11".parse().unwrap()).encode(),
                    Inband::Leaving.encode(),
                ],
            ),
        ));
    }
    s
}

/// Writes the seeds to `fuzz/corpus/<target>/seed-<name>` (run by hand
/// after a change of an encoder).
#[test]
#[ignore]
fn write_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
