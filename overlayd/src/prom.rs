//! overlayd's Prometheus metrics, rendered from its status.

use cubenet_daemon::metrics::Exposition;
use serde_json::Value;

fn num(v: &Value) -> f64 {
    match v {
        Value::Bool(b) => f64::from(u8::from(*b)),
        v => v.as_f64().unwrap_or(0.0),
    }
}

pub fn render(st: &Value) -> String {
    let mut e = Exposition::default();
    let name = st["name"].as_str().unwrap_or_default();
    e.family(
        "cubenet_overlayd_info",
        "gauge",
        "This node: name, role and site.",
    );
    e.sample(
        "cubenet_overlayd_info",
        &[
            ("name", name),
            ("role", st["role"].as_str().unwrap_or_default()),
            ("site", st["site"].as_str().unwrap_or_default()),
        ],
        1.0,
    );
    e.family(
        "cubenet_overlayd_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    e.sample("cubenet_overlayd_uptime_seconds", &[], num(&st["uptime_s"]));
    e.family(
        "cubenet_overlayd_cert_days_left",
        "gauge",
        "Days until this node's certificate expires.",
    );
    e.sample(
        "cubenet_overlayd_cert_days_left",
        &[],
        num(&st["cert_days_left"]),
    );
    e.family(
        "cubenet_overlayd_ca_days_left",
        "gauge",
        "Days until the CA certificate expires.",
    );
    e.sample(
        "cubenet_overlayd_ca_days_left",
        &[],
        num(&st["ca_days_left"]),
    );
    let peers = st["peers"].as_array().cloned().unwrap_or_default();
    for (metric, field, kind, help) in [
        (
            "cubenet_overlayd_peer_rx_bytes_total",
            "rx_bytes",
            "counter",
            "Bytes received from the peer (inner packets).",
        ),
        (
            "cubenet_overlayd_peer_tx_bytes_total",
            "tx_bytes",
            "counter",
            "Bytes sent to the peer (inner packets).",
        ),
        (
            "cubenet_overlayd_peer_rx_packets_total",
            "rx_packets",
            "counter",
            "Packets received from the peer.",
        ),
        (
            "cubenet_overlayd_peer_tx_packets_total",
            "tx_packets",
            "counter",
            "Packets sent to the peer.",
        ),
        (
            "cubenet_overlayd_peer_healthy",
            "healthy",
            "gauge",
            "1 when the peer's tunnel is healthy.",
        ),
        (
            "cubenet_overlayd_peer_handshake_age_seconds",
            "last_handshake_s",
            "gauge",
            "Seconds since the last handshake.",
        ),
        (
            "cubenet_overlayd_peer_spoofed_total",
            "spoofed",
            "counter",
            "Packets from the peer with a source it does not own.",
        ),
        (
            "cubenet_overlayd_peer_flaps_total",
            "flaps",
            "counter",
            "Times a gateway tunnel went down.",
        ),
    ] {
        e.family(metric, kind, help);
        for p in &peers {
            if p[field].is_null() {
                continue;
            }
            e.sample(
                metric,
                &[
                    ("peer", p["name"].as_str().unwrap_or_default()),
                    ("role", p["role"].as_str().unwrap_or_default()),
                ],
                num(&p[field]),
            );
        }
    }
    e.family(
        "cubenet_overlayd_peer_rtt_seconds",
        "gauge",
        "Probe round-trip time to a gateway.",
    );
    for p in &peers {
        if let Some(ms) = p["rtt_ms"].as_f64() {
            e.sample(
                "cubenet_overlayd_peer_rtt_seconds",
                &[("peer", p["name"].as_str().unwrap_or_default())],
                ms / 1000.0,
            );
        }
    }
    e.family(
        "cubenet_overlayd_drops_total",
        "counter",
        "Dropped packets by reason.",
    );
    if let Some(d) = st["drops"].as_object() {
        for (reason, v) in d {
            e.sample(
                "cubenet_overlayd_drops_total",
                &[("reason", reason)],
                num(v),
            );
        }
    }
    e.family(
        "cubenet_overlayd_routes",
        "gauge",
        "Forwarding entries by origin.",
    );
    let mut by_origin = std::collections::BTreeMap::<String, f64>::new();
    for r in st["routes"].as_array().into_iter().flatten() {
        *by_origin
            .entry(r["origin"].as_str().unwrap_or("?").to_string())
            .or_default() += 1.0;
    }
    for (o, n) in by_origin {
        e.sample("cubenet_overlayd_routes", &[("origin", &o)], n);
    }
    let fw = &st["firewall"];
    if fw["enabled"] == true {
        e.family(
            "cubenet_overlayd_firewall_rule_hits_total",
            "counter",
            "Flows each firewall rule decided.",
        );
        for dir in ["inbound", "outbound"] {
            for r in fw[dir].as_array().into_iter().flatten() {
                let idx = r["index"].to_string();
                e.sample(
                    "cubenet_overlayd_firewall_rule_hits_total",
                    &[
                        ("direction", dir),
                        ("index", &idx),
                        ("rule", r["rule"].as_str().unwrap_or_default()),
                    ],
                    num(&r["hits"]),
                );
            }
        }
        e.family(
            "cubenet_overlayd_firewall_default_hits_total",
            "counter",
            "Flows the default of a direction decided.",
        );
        for dir in ["inbound", "outbound"] {
            e.sample(
                "cubenet_overlayd_firewall_default_hits_total",
                &[("direction", dir)],
                num(&fw[format!("{dir}_default_hits")]),
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
            num(&fw["dropped"]),
        );
        e.family(
            "cubenet_overlayd_firewall_tracked_flows",
            "gauge",
            "Flows in the connection table.",
        );
        e.sample(
            "cubenet_overlayd_firewall_tracked_flows",
            &[],
            num(&fw["tracked_flows"]),
        );
    }
    e.finish()
}
