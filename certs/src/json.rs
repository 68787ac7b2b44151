//! JSON views of certificates for `overlay-cert print --json` and for tools
//! that script against it: one serde type per document. Field names and
//! order are a stable contract.

use crate::cert::{CaCert, NodeCert};
use crate::crl::RevocationList;
use crate::time::format_rfc3339;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

fn days_left(not_after: u64, now: u64) -> i64 {
    (not_after as i64 - now as i64).div_euclid(86_400)
}

fn strings<T: ToString>(v: &[T]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// One printed object: a CA certificate, a node certificate or a
/// revocation list, told apart by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Printed {
    Ca(CaView),
    Node(NodeView),
    RevocationList(CrlView),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaView {
    pub version: u8,
    pub name: String,
    pub public_key: String,
    pub networks: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub fingerprint: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub version: u8,
    pub name: String,
    pub public_key: String,
    pub addresses: Vec<String>,
    pub groups: Vec<String>,
    pub site: String,
    pub role: String,
    pub subnets: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub ca_fingerprint: String,
    pub fingerprint: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrlView {
    pub version: u8,
    pub ca_fingerprint: String,
    pub serial: u64,
    pub issued_at: String,
    pub revoked: Vec<String>,
}

pub fn ca_json(ca: &CaCert, now: u64) -> Printed {
    let b = &ca.body;
    Printed::Ca(CaView {
        version: crate::VERSION,
        name: b.name.clone(),
        public_key: STANDARD.encode(b.public_key),
        networks: strings(&b.networks),
        not_before: format_rfc3339(b.not_before),
        not_after: format_rfc3339(b.not_after),
        days_left: days_left(b.not_after, now),
        fingerprint: ca.fingerprint().to_hex(),
        signature: hex::encode(ca.signature()),
    })
}

pub fn node_json(cert: &NodeCert, now: u64) -> Printed {
    let b = &cert.body;
    Printed::Node(NodeView {
        version: crate::VERSION,
        name: b.name.clone(),
        public_key: STANDARD.encode(b.public_key),
        addresses: strings(&b.addresses),
        groups: b.groups.clone(),
        site: b.site.clone(),
        role: b.role.as_str().to_string(),
        subnets: strings(&b.subnets),
        not_before: format_rfc3339(b.not_before),
        not_after: format_rfc3339(b.not_after),
        days_left: days_left(b.not_after, now),
        ca_fingerprint: b.ca_fingerprint.to_hex(),
        fingerprint: cert.fingerprint().to_hex(),
        signature: hex::encode(cert.signature()),
    })
}

pub fn crl_json(crl: &RevocationList) -> Printed {
    let b = &crl.body;
    Printed::RevocationList(CrlView {
        version: crate::VERSION,
        ca_fingerprint: b.ca_fingerprint.to_hex(),
        serial: b.serial,
        issued_at: format_rfc3339(b.issued_at),
        revoked: b.revoked.iter().map(|f| f.to_hex()).collect(),
    })
}
