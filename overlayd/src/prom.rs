//! overlayd's Prometheus metrics, rendered from its typed status.

use cubenet_api::overlayd::{PeerStatus, Status};
use cubenet_daemon::metrics::Exposition;

pub fn render(st: &Status) -> String {
    let mut e = Exposition::default();
    e.family(
        "cubenet_overlayd_info",
        "gauge",
        "This node: name, role and site.",
    );
    e.sample(
        "cubenet_overlayd_info",
        &[
            ("name", &st.name),
            ("role", st.role.as_str()),
            ("site", &st.site),
        ],
        1.0,
    );
    for (metric, help, v) in [
        (
            "cubenet_overlayd_uptime_seconds",
            "Seconds since start.",
            st.uptime_s as f64,
        ),
        (
            "cubenet_overlayd_cert_days_left",
            "Days until this node's certificate expires.",
            st.cert_days_left as f64,
        ),
        (
            "cubenet_overlayd_ca_days_left",
            "Days until the CA certificate expires.",
            st.ca_days_left as f64,
        ),
    ] {
        e.family(metric, "gauge", help);
        e.sample(metric, &[], v);
    }
    type Field = fn(&PeerStatus) -> Option<f64>;
    let per_peer: [(&str, &str, &str, Field); 10] = [
        (
            "cubenet_overlayd_peer_rx_bytes_total",
            "counter",
            "Bytes received from the peer (inner packets).",
            |p| Some(p.rx_bytes as f64),
        ),
        (
            "cubenet_overlayd_peer_tx_bytes_total",
            "counter",
            "Bytes sent to the peer (inner packets).",
            |p| Some(p.tx_bytes as f64),
        ),
        (
            "cubenet_overlayd_peer_rx_packets_total",
            "counter",
            "Packets received from the peer.",
            |p| Some(p.rx_packets as f64),
        ),
        (
            "cubenet_overlayd_peer_tx_packets_total",
            "counter",
            "Packets sent to the peer.",
            |p| Some(p.tx_packets as f64),
        ),
        (
            "cubenet_overlayd_peer_healthy",
            "gauge",
            "1 when the peer's tunnel is healthy.",
            |p| Some(f64::from(u8::from(p.healthy))),
        ),
        (
            "cubenet_overlayd_peer_handshake_age_seconds",
            "gauge",
            "Seconds since the last handshake.",
            |p| p.last_handshake_s,
        ),
        (
            "cubenet_overlayd_peer_spoofed_total",
            "counter",
            "Packets from the peer with a source it does not own.",
            |p| Some(p.spoofed as f64),
        ),
        (
            "cubenet_overlayd_peer_flaps_total",
            "counter",
            "Times the tunnel went down (a gateway's at a host, a host's at a gateway).",
            |p| Some(p.flaps as f64),
        ),
        (
            "cubenet_overlayd_peer_damping_penalty",
            "gauge",
            "The tunnel's flap-damping penalty.",
            |p| Some(p.penalty),
        ),
        (
            "cubenet_overlayd_peer_suppressed",
            "gauge",
            "1 while damping holds the tunnel down.",
            |p| Some(f64::from(u8::from(p.suppressed))),
        ),
    ];
    for (metric, kind, help, field) in per_peer {
        e.family(metric, kind, help);
        for p in &st.peers {
            if let Some(v) = field(p) {
                e.sample(metric, &[("peer", &p.name), ("role", p.role.as_str())], v);
            }
        }
    }
    e.family(
        "cubenet_overlayd_peer_rtt_seconds",
        "gauge",
        "Probe round-trip time to a gateway.",
    );
    for p in &st.peers {
        if let Some(ms) = p.rtt_ms {
            e.sample(
                "cubenet_overlayd_peer_rtt_seconds",
                &[("peer", &p.name)],
                ms / 1000.0,
            );
        }
    }
    e.family(
        "cubenet_overlayd_peer_mtu_bytes",
        "gauge",
        "Largest inner packet a tunnel carries (learned by probing inside it).",
    );
    for p in &st.peers {
        e.sample(
            "cubenet_overlayd_peer_mtu_bytes",
            &[("peer", &p.name)],
            f64::from(p.mtu),
        );
    }
    e.family(
        "cubenet_overlayd_drops_total",
        "counter",
        "Dropped packets by reason.",
    );
    for (reason, v) in st.drops.iter() {
        e.sample(
            "cubenet_overlayd_drops_total",
            &[("reason", reason)],
            v as f64,
        );
    }
    e.family(
        "cubenet_overlayd_icmp_errors_total",
        "counter",
        "ICMP and ICMPv6 errors sent as a router, by kind (rate_limited: held back).",
    );
    for (kind, v) in st.icmp.iter() {
        e.sample(
            "cubenet_overlayd_icmp_errors_total",
            &[("kind", kind)],
            v as f64,
        );
    }
    e.family(
        "cubenet_overlayd_mss_clamped_total",
        "counter",
        "TCP SYNs whose MSS was lowered to fit the tunnel MTU.",
    );
    e.sample(
        "cubenet_overlayd_mss_clamped_total",
        &[],
        st.mss_clamped as f64,
    );
    e.family(
        "cubenet_overlayd_fragmented_total",
        "counter",
        "IPv4 packets without DF sent in fragments to fit a tunnel.",
    );
    e.sample(
        "cubenet_overlayd_fragmented_total",
        &[],
        st.fragmented as f64,
    );
    e.family(
        "cubenet_overlayd_routes",
        "gauge",
        "Forwarding entries by origin.",
    );
    let mut by_origin = std::collections::BTreeMap::<&str, f64>::new();
    for r in &st.routes {
        *by_origin.entry(r.origin.as_str()).or_default() += 1.0;
    }
    for (o, n) in by_origin {
        e.sample("cubenet_overlayd_routes", &[("origin", o)], n);
    }
    if let Some(fw) = &st.firewall.detail {
        e.family(
            "cubenet_overlayd_firewall_rule_hits_total",
            "counter",
            "Flows each firewall rule decided.",
        );
        for (dir, rules) in [("inbound", &fw.inbound), ("outbound", &fw.outbound)] {
            for r in rules {
                e.sample(
                    "cubenet_overlayd_firewall_rule_hits_total",
                    &[
                        ("direction", dir),
                        ("index", &r.index.to_string()),
                        ("rule", &r.rule),
                    ],
                    r.hits as f64,
                );
            }
        }
        e.family(
            "cubenet_overlayd_firewall_default_hits_total",
            "counter",
            "Flows the default of a direction decided.",
        );
        for (dir, hits) in [
            ("inbound", fw.inbound_default_hits),
            ("outbound", fw.outbound_default_hits),
        ] {
            e.sample(
                "cubenet_overlayd_firewall_default_hits_total",
                &[("direction", dir)],
                hits as f64,
            );
        }
        e.family(
            "cubenet_overlayd_firewall_dropped_total",
            "counter",
            "Packets the firewall dropped.",
        );
        e.sample(
            "cubenet_overlayd_firewall_dropped_total",
            &[],
            fw.dropped as f64,
        );
        e.family(
            "cubenet_overlayd_firewall_tracked_flows",
            "gauge",
            "Flows in the connection table.",
        );
        e.sample(
            "cubenet_overlayd_firewall_tracked_flows",
            &[],
            fw.tracked_flows as f64,
        );
    }
    e.finish()
}
