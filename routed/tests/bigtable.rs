//! routed holding a big table: 1,000,000 host routes (500,000 dual-stack
//! hosts) from one gateway, decoded from the BGP UPDATEs as they would come
//! off the wire, held in the Adj-RIB-In and the RIB, and turned into the
//! table routed hands overlayd. `bench/routes.sh` prints the figure line
//! (the other half, overlayd taking that table over its control socket, is
//! `a_million_routes_move_from_routed_to_overlayd...` in overlayd's tests).

use ipnet::IpNet;
use routed::config::Config;
use routed::rib::NeighborId;
use routed::router::Router;
use routed::wire::{self, Attrs, Message, Open, Update};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_million_routes_from_one_gateway_are_held_and_handed_to_overlayd() {
    const HOSTS: u32 = 500_000;
    let now = Instant::now();
    let cfg = Config::parse(
        "asn = 4200000101\nrouter_id = \"10.77.1.1\"\nca = \"-\"\ncert = \"-\"\n\
         [limits]\nmax_prefixes = 2000000\n\
         [[neighbor]]\nname = \"gw\"\naddress = \"10.77.2.1\"\nasn = 4200000201\ncert = \"-\"\n\
         import = \"overlay\"\nexport = \"all\"\n",
    )
    .unwrap();
    let mut r = Router::new(
        cfg,
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        vec![],
        Some("fd77:1::1".parse().unwrap()),
        vec![vec![]],
        now,
        1,
    )
    .unwrap();
    let n = NeighborId(0);
    r.on_connected(n, 1, false, None, now);
    let open = Open::new(4_200_000_201, 90, Ipv4Addr::new(10, 77, 2, 1));
    r.on_message(n, 1, Ok(Message::Open(open)), now);
    r.on_message(n, 1, Ok(Message::Keepalive), now);
    assert!(r.neighbors[n.0].session.is_established());

    // 10.1.0.0 onwards and fd00:1::/64 onwards: one /32 and one /128 per host.
    let hosts = (0..HOSTS).flat_map(|i| {
        [
            IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i))),
            IpNet::from(IpAddr::V6(Ipv6Addr::from(
                0xfd00_0001_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            ))),
        ]
    });
    let update = Update {
        announced: hosts.collect(),
        attrs: Attrs {
            as_path: vec![4_200_000_201],
            next_hop_v4: Some(Ipv4Addr::new(10, 77, 2, 1)),
            next_hop_v6: Some("fd77:2::1".parse().unwrap()),
            ..Attrs::default()
        },
        ..Update::default()
    };
    let messages: Vec<Vec<u8>> = wire::split_update(update)
        .into_iter()
        .map(|u| wire::encode(&Message::Update(u)))
        .collect();

    let rss0 = rss_kib();
    let start = Instant::now();
    for m in &messages {
        let decoded = r.decode_from(n, m);
        r.on_message(n, 1, decoded, now);
        r.drain();
    }
    let learned = start.elapsed();
    let rss_held = rss_kib();
    let start = Instant::now();
    let table = r.feed_table().expect("not stopping");
    let built = start.elapsed();
    let rss1 = rss_kib();

    assert_eq!(table.len(), 2 * HOSTS as usize);
    assert!(table.iter().all(|(_, via)| via == &["gw".to_string()]));
    let st = r.status(now);
    assert_eq!(st.neighbors[0].routes_in, 2 * HOSTS as usize);
    assert_eq!(st.neighbors[0].rejected, 0);
    let routes = f64::from(2 * HOSTS);
    eprintln!(
        "routed table: {} routes from {} UPDATEs in {:.2} s ({:.2} us per route), \
         overlayd's table built in {:.2} s; {:.0} bytes per route held (Adj-RIB-In and RIB), \
         {:.0} with that table",
        2 * HOSTS,
        messages.len(),
        learned.as_secs_f64(),
        learned.as_secs_f64() * 1e6 / routes,
        built.as_secs_f64(),
        (rss_held.saturating_sub(rss0) * 1024) as f64 / routes,
        (rss1.saturating_sub(rss0) * 1024) as f64 / routes
    );
}
