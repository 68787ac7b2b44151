//! JSON views of certificates for `overlay-cert print --json` and for tools
//! that script against it. Field names are a stable contract.

use crate::cert::{CaCert, NodeCert};
use crate::crl::RevocationList;
use crate::time::format_rfc3339;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

fn days_left(not_after: u64, now: u64) -> i64 {
    (not_after as i64 - now as i64).div_euclid(86_400)
}

pub fn ca_json(ca: &CaCert, now: u64) -> Value {
    let b = &ca.body;
    json!({
        "type": "ca",
        "version": crate::VERSION,
        "name": b.name,
        "public_key": STANDARD.encode(b.public_key),
        "networks": b.networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "not_before": format_rfc3339(b.not_before),
        "not_after": format_rfc3339(b.not_after),
        "days_left": days_left(b.not_after, now),
        "fingerprint": ca.fingerprint().to_hex(),
        "signature": hex::encode(ca.signature()),
    })
}

pub fn node_json(cert: &NodeCert, now: u64) -> Value {
    let b = &cert.body;
    json!({
        "type": "node",
        "version": crate::VERSION,
        "name": b.name,
        "public_key": STANDARD.encode(b.public_key),
        "addresses": b.addresses.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "groups": b.groups,
        "site": b.site,
        "role": b.role.as_str(),
        "subnets": b.subnets.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "not_before": format_rfc3339(b.not_before),
        "not_after": format_rfc3339(b.not_after),
        "days_left": days_left(b.not_after, now),
        "ca_fingerprint": b.ca_fingerprint.to_hex(),
        "fingerprint": cert.fingerprint().to_hex(),
        "signature": hex::encode(cert.signature()),
    })
}

pub fn crl_json(crl: &RevocationList) -> Value {
    let b = &crl.body;
    json!({
        "type": "revocation_list",
        "version": crate::VERSION,
        "ca_fingerprint": b.ca_fingerprint.to_hex(),
        "serial": b.serial,
        "issued_at": format_rfc3339(b.issued_at),
        "revoked": b.revoked.iter().map(|f| f.to_hex()).collect::<Vec<_>>(),
    })
}
