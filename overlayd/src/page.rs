//! overlayd's status page (`GET /` on `metrics_listen`): this node, its
//! peers with their health and traffic, the drops by reason and the
//! forwarding table. Rendered from the same typed `status` document the
//! control socket returns, with the wall clock passed in.

use cubenet_api::overlayd::{PeerRole, PeerStatus, Status};
use cubenet_daemon::html::{self, escape, span, Table};
use std::fmt::Write;

fn state_cell(p: &PeerStatus) -> String {
    let mut s = if p.suppressed {
        span("warn", "suppressed")
    } else if !p.authenticated {
        span("muted", "unauthenticated")
    } else if p.healthy {
        span("ok", "healthy")
    } else {
        span("bad", "down")
    };
    if p.active {
        s.push_str(" <span class=\"muted\">(active)</span>");
    }
    s
}

/// `3 of 4 healthy`-style counts of the peers worth watching: the
/// gateways, and the hosts attached.
fn healthy_cards(st: &Status) -> String {
    let mut s = String::new();
    let gateways: Vec<&PeerStatus> = st
        .peers
        .iter()
        .filter(|p| p.role == PeerRole::Gateway)
        .collect();
    let healthy = gateways.iter().filter(|p| p.healthy).count();
    s.push_str(&html::card(
        &format!("{healthy} / {}", gateways.len()),
        "gateways healthy",
    ));
    let hosts = st.peers.iter().filter(|p| p.role == PeerRole::Host);
    s.push_str(&html::card(
        &hosts.filter(|p| p.attached).count().to_string(),
        "hosts attached",
    ));
    s
}

/// The whole page; `now` is the wall clock in Unix seconds.
pub fn render(st: &Status, now: u64) -> String {
    let mut b = String::new();
    let addrs: Vec<String> = st.addresses.iter().map(|a| a.to_string()).collect();
    let _ = write!(
        b,
        "<h1>overlayd {}</h1>\n<p class=\"sub\">{} · site {} · {} · up {} · certificate {} \
         days left, CA {} · as of {}</p>\n",
        escape(&st.name),
        st.role.as_str(),
        escape(if st.site.is_empty() { "–" } else { &st.site }),
        escape(&addrs.join(", ")),
        html::duration(st.uptime_s),
        if st.cert_days_left < 30 {
            span("warn", &st.cert_days_left.to_string())
        } else {
            st.cert_days_left.to_string()
        },
        st.ca_days_left,
        escape(&cubenet_certs::time::format_rfc3339(now)),
    );

    let rx: u64 = st.peers.iter().map(|p| p.rx_bytes).sum();
    let tx: u64 = st.peers.iter().map(|p| p.tx_bytes).sum();
    let dropped: u64 = st.drops.iter().iter().map(|(_, n)| n).sum();
    b.push_str("<div class=\"cards\">");
    b.push_str(&html::card(&st.peers.len().to_string(), "peers"));
    b.push_str(&healthy_cards(st));
    b.push_str(&html::card(&html::bytes(rx), "received"));
    b.push_str(&html::card(&html::bytes(tx), "sent"));
    b.push_str(&html::card(&dropped.to_string(), "packets dropped"));
    b.push_str(&html::card(&st.routes.len().to_string(), "routes"));
    b.push_str("</div>\n");

    let _ = writeln!(b, "<h2>Peers ({})</h2>", st.peers.len());
    let mut t = Table::new(
        &[
            "peer",
            "role",
            "site",
            "virtual IP",
            "endpoint",
            "state",
            "latest handshake",
            "RTT",
            "received",
            "sent",
            "MTU",
            "flaps",
        ],
        &[6, 7, 8, 9, 10, 11],
    );
    for p in &st.peers {
        let ips: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
        let mtu = if p.mtu_learned {
            p.mtu.to_string()
        } else {
            format!("{} <span class=\"muted\">assumed</span>", p.mtu)
        };
        let flaps = if p.penalty >= 1.0 {
            format!(
                "{} <span class=\"muted\">penalty {:.0}</span>",
                p.flaps, p.penalty
            )
        } else {
            p.flaps.to_string()
        };
        t.raw_row(&format!(
            "<td class=\"peer\"><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{mtu}</td>\
             <td class=\"num\">{flaps}</td>",
            escape(&p.name),
            p.role.as_str(),
            escape(p.site.as_deref().unwrap_or("–")),
            ips.iter()
                .map(|a| escape(a))
                .collect::<Vec<_>>()
                .join("<br>"),
            p.endpoint.map_or(span("muted", "–"), |e| e.to_string()),
            state_cell(p),
            p.last_handshake_s
                .map_or(span("muted", "never"), |s| format!(
                    "{} ago",
                    html::duration(s as u64)
                )),
            p.rtt_ms
                .map_or(span("muted", "–"), |ms| format!("{ms:.1} ms")),
            html::bytes(p.rx_bytes),
            html::bytes(p.tx_bytes),
        ));
    }
    b.push_str(&t.finish());

    b.push_str("<h2>Drops by reason</h2>\n<div class=\"cards\">");
    for (reason, n) in st.drops.iter() {
        if n == 0 {
            let _ = write!(
                b,
                "<div class=\"card\"><b class=\"muted\">0</b><span>{reason}</span></div>"
            );
        } else {
            let _ = write!(
                b,
                "<div class=\"card\"><b class=\"warn\">{n}</b><span>{reason}</span></div>"
            );
        }
    }
    b.push_str("</div>\n");

    let icmp: Vec<String> = st
        .icmp
        .iter()
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let firewall = match &st.firewall.detail {
        Some(f) if st.firewall.enabled => format!(
            "on: {} flows tracked, {} dropped",
            f.tracked_flows, f.dropped
        ),
        _ => "off".to_string(),
    };
    let _ = writeln!(
        b,
        "<p class=\"sub\">ICMP errors sent: {} · MSS clamped {} · fragmented {} · firewall {}</p>",
        icmp.join(", "),
        st.mss_clamped,
        st.fragmented,
        escape(&firewall),
    );

    let _ = writeln!(b, "<h2>Forwarding table ({})</h2>", st.routes.len());
    let mut t = Table::new(&["prefix", "origin", "via"], &[]);
    for r in &st.routes {
        t.row(&[
            r.prefix.to_string(),
            span("muted", r.origin.as_str()),
            escape(&r.via.join(", ")),
        ]);
    }
    b.push_str(&t.finish());
    html::page(&format!("overlayd {}", st.name), &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubenet_api::overlayd::{Drops, FirewallStatus, IcmpSent, Role, RouteOrigin, RouteRow};

    fn peer(name: &str, role: PeerRole, healthy: bool) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            role,
            configured: role == PeerRole::Gateway,
            public_key: "k".into(),
            endpoint: Some("172.16.0.2:51820".parse().unwrap()),
            addresses: vec!["10.77.2.1".parse().unwrap()],
            site: Some("ams".into()),
            authenticated: true,
            attached: healthy,
            last_handshake_s: Some(12.4),
            rx_bytes: 1536,
            tx_bytes: 5 << 20,
            rx_packets: 3,
            tx_packets: 4,
            healthy,
            rtt_ms: Some(0.42),
            flaps: 2,
            active: false,
            spoofed: 0,
            mtu: 1420,
            mtu_learned: true,
            penalty: 0.0,
            suppressed: false,
            hellos: true,
        }
    }

    fn status(peers: Vec<PeerStatus>) -> Status {
        Status {
            name: "fra-gw1".into(),
            role: Role::Gateway,
            site: "fra".into(),
            public_key: "k".into(),
            addresses: vec!["10.77.1.1/16".parse().unwrap()],
            uptime_s: 125,
            cert_days_left: 300,
            ca_days_left: 3000,
            crl_serial: None,
            peers,
            drops: Drops {
                no_route: 7,
                ..Drops::default()
            },
            routes: vec![RouteRow {
                prefix: "10.77.2.0/24".parse().unwrap(),
                origin: RouteOrigin::Routed,
                via: vec!["ams-gw1".into()],
            }],
            datapath: None,
            firewall: FirewallStatus {
                enabled: false,
                detail: None,
            },
            icmp: IcmpSent::default(),
            mss_clamped: 0,
            fragmented: 0,
        }
    }

    #[test]
    fn the_page_lists_every_peer_with_health_traffic_and_drops() {
        let st = status(vec![
            peer("ams-gw1", PeerRole::Gateway, true),
            peer("ams-gw2", PeerRole::Gateway, false),
            peer("fra-h1", PeerRole::Host, true),
        ]);
        let p = render(&st, 1_800_000_000);
        assert!(p.contains("<title>overlayd fra-gw1</title>"), "{p}");
        for want in [
            "<b>ams-gw1</b>",
            "<b>ams-gw2</b>",
            "<b>fra-h1</b>",
            "172.16.0.2:51820",
            "10.77.2.1",
            "<span class=\"ok\">healthy</span>",
            "<span class=\"bad\">down</span>",
            "1.5 KiB",
            "5.0 MiB",
            "12s ago",
            "1 / 2",
            "<b class=\"warn\">7</b><span>no_route</span>",
            "<span>too_big</span>",
            "10.77.2.0/24",
        ] {
            assert!(p.contains(want), "the page lacks {want:?}:\n{p}");
        }
        assert!(!p.contains("<script"), "{p}");
    }

    #[test]
    fn hostile_names_are_escaped() {
        let mut p = peer("<script>alert(1)</script>", PeerRole::Host, true);
        p.site = Some("\"><img src=x>".into());
        let mut st = status(vec![p]);
        st.name = "</title><script>".into();
        st.routes[0].via = vec!["<svg onload=alert(1)>".into()];
        let page = render(&st, 1_800_000_000);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<svg onload"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
    }
}
