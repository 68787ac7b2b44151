//! routed's Prometheus metrics, rendered from its typed status and routes.

use cubenet_api::routed::{BfdState, NeighborStatus, Routes, SessionState, Status};
use cubenet_daemon::metrics::Exposition;

pub fn render(status: &Status, routes: &Routes) -> String {
    let mut e = Exposition::default();
    e.family(
        "cubenet_routed_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    e.sample("cubenet_routed_uptime_seconds", &[], status.uptime_s as f64);
    let ns = &status.neighbors;
    e.family(
        "cubenet_routed_neighbor_established",
        "gauge",
        "1 when the BGP session is established.",
    );
    for n in ns {
        e.sample(
            "cubenet_routed_neighbor_established",
            &[("neighbor", &n.name), ("state", n.state.as_str())],
            f64::from(u8::from(n.state == SessionState::Established)),
        );
    }
    e.family(
        "cubenet_routed_neighbor_bfd_up",
        "gauge",
        "1 when BFD is up (absent when BFD is off).",
    );
    for n in ns {
        if n.bfd != BfdState::Disabled {
            e.sample(
                "cubenet_routed_neighbor_bfd_up",
                &[("neighbor", &n.name)],
                f64::from(u8::from(n.bfd == BfdState::Up)),
            );
        }
    }
    e.family(
        "cubenet_routed_neighbor_tunnel_up",
        "gauge",
        "1 when overlayd finds the tunnel to this gateway up (a gateway without BFD; absent otherwise).",
    );
    for n in ns {
        if let Some(up) = n.tunnel_up {
            e.sample(
                "cubenet_routed_neighbor_tunnel_up",
                &[("neighbor", &n.name)],
                f64::from(u8::from(up)),
            );
        }
    }
    type Field = fn(&NeighborStatus) -> f64;
    let per_neighbor: [(&str, &str, &str, Field); 6] = [
        (
            "cubenet_routed_neighbor_flaps_total",
            "counter",
            "Times the session went down.",
            |n| n.flaps as f64,
        ),
        (
            "cubenet_routed_neighbor_penalty",
            "gauge",
            "Link damping penalty.",
            |n| n.penalty,
        ),
        (
            "cubenet_routed_neighbor_suppressed",
            "gauge",
            "1 while damping holds the link down.",
            |n| f64::from(u8::from(n.suppressed)),
        ),
        (
            "cubenet_routed_neighbor_routes_in",
            "gauge",
            "Prefixes accepted from the neighbour.",
            |n| n.routes_in as f64,
        ),
        (
            "cubenet_routed_neighbor_routes_out",
            "gauge",
            "Prefixes announced to the neighbour.",
            |n| n.routes_out as f64,
        ),
        (
            "cubenet_routed_neighbor_rejected_total",
            "counter",
            "Prefixes refused by the import policy.",
            |n| n.rejected as f64,
        ),
    ];
    for (metric, kind, help, field) in per_neighbor {
        e.family(metric, kind, help);
        for n in ns {
            e.sample(metric, &[("neighbor", &n.name)], field(n));
        }
    }
    e.family("cubenet_routed_routes", "gauge", "Best routes by origin.");
    let mut by = std::collections::BTreeMap::<&str, f64>::new();
    for r in &routes.routes {
        *by.entry(r.origin.as_str()).or_default() += 1.0;
    }
    for (o, n) in by {
        e.sample("cubenet_routed_routes", &[("origin", o)], n);
    }
    e.finish()
}
