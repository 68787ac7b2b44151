//! routed's Prometheus metrics, rendered from its status and routes.

use cubenet_daemon::metrics::Exposition;
use serde_json::Value;

fn num(v: &Value) -> f64 {
    match v {
        Value::Bool(b) => f64::from(u8::from(*b)),
        v => v.as_f64().unwrap_or(0.0),
    }
}

pub fn render(status: &Value, routes: &Value) -> String {
    let mut e = Exposition::default();
    e.family(
        "cubenet_routed_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    e.sample(
        "cubenet_routed_uptime_seconds",
        &[],
        num(&status["uptime_s"]),
    );
    let ns = status["neighbors"].as_array().cloned().unwrap_or_default();
    let name = |n: &Value| n["name"].as_str().unwrap_or_default().to_string();
    e.family(
        "cubenet_routed_neighbor_established",
        "gauge",
        "1 when the BGP session is established.",
    );
    for n in &ns {
        e.sample(
            "cubenet_routed_neighbor_established",
            &[
                ("neighbor", &name(n)),
                ("state", n["state"].as_str().unwrap_or_default()),
            ],
            f64::from(u8::from(n["state"] == "established")),
        );
    }
    e.family(
        "cubenet_routed_neighbor_bfd_up",
        "gauge",
        "1 when BFD is up (absent when BFD is off).",
    );
    for n in &ns {
        if n["bfd"] != "disabled" {
            e.sample(
                "cubenet_routed_neighbor_bfd_up",
                &[("neighbor", &name(n))],
                f64::from(u8::from(n["bfd"] == "up")),
            );
        }
    }
    for (metric, field, kind, help) in [
        (
            "cubenet_routed_neighbor_flaps_total",
            "flaps",
            "counter",
            "Times the session went down.",
        ),
        (
            "cubenet_routed_neighbor_penalty",
            "penalty",
            "gauge",
            "Link damping penalty.",
        ),
        (
            "cubenet_routed_neighbor_suppressed",
            "suppressed",
            "gauge",
            "1 while damping holds the link down.",
        ),
        (
            "cubenet_routed_neighbor_routes_in",
            "routes_in",
            "gauge",
            "Prefixes accepted from the neighbour.",
        ),
        (
            "cubenet_routed_neighbor_routes_out",
            "routes_out",
            "gauge",
            "Prefixes announced to the neighbour.",
        ),
        (
            "cubenet_routed_neighbor_rejected_total",
            "rejected",
            "counter",
            "Prefixes refused by the import policy.",
        ),
    ] {
        e.family(metric, kind, help);
        for n in &ns {
            e.sample(metric, &[("neighbor", &name(n))], num(&n[field]));
        }
    }
    e.family("cubenet_routed_routes", "gauge", "Best routes by origin.");
    let mut by = std::collections::BTreeMap::<String, f64>::new();
    for r in routes["routes"].as_array().into_iter().flatten() {
        *by.entry(r["origin"].as_str().unwrap_or("?").to_string())
            .or_default() += 1.0;
    }
    for (o, n) in by {
        e.sample("cubenet_routed_routes", &[("origin", &o)], n);
    }
    e.finish()
}
