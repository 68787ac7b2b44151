//! cubenet's certificate authority: an Ed25519 CA binds each node's X25519
//! (WireGuard) key to its name, static virtual IPs, groups, site and role.
//!
//! - [`cert`]: CA and node certificates, their deterministic encoding.
//! - [`crl`]: the CA-signed revocation list.
//! - [`trust`]: validating a node certificate at a given `now`.
//! - [`keys`]: private key files (0600, refused when others can read them).
//!
//! Every decoder takes untrusted bytes and returns an error, never panics.

pub mod armor;
pub mod cert;
pub mod cli;
pub mod crl;
pub mod error;
pub mod json;
pub mod keys;
pub mod time;
pub mod trust;
mod wire;

pub use cert::{CaBody, CaCert, Fingerprint, NodeBody, NodeCert, Role};
pub use crl::{RevocationBody, RevocationList};
pub use error::{CertError, KeyFileError};
pub use keys::{CaKey, NodeKey};
pub use trust::{CrlUpdate, TrustAnchor};
pub use wire::VERSION;

use std::path::Path;

/// Reads a file into a string, naming the file in the error.
fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })
}

/// An error loading one of the identity files, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: std::path::PathBuf,
        #[source]
        source: CertError,
    },
}

fn at(path: &Path) -> impl FnOnce(CertError) -> LoadError + '_ {
    move |source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    }
}

pub fn load_ca_cert(path: &Path) -> Result<CaCert, LoadError> {
    CaCert::from_armor(&read_text(path)?).map_err(at(path))
}

pub fn load_node_cert(path: &Path) -> Result<NodeCert, LoadError> {
    NodeCert::from_armor(&read_text(path)?).map_err(at(path))
}

pub fn load_revocation_list(path: &Path) -> Result<RevocationList, LoadError> {
    RevocationList::from_armor(&read_text(path)?).map_err(at(path))
}

/// Any armoured object, for `overlay-cert print`.
#[derive(Debug, Clone)]
pub enum Object {
    Ca(CaCert),
    Node(NodeCert),
    RevocationList(RevocationList),
}

pub fn decode_object(text: &str) -> Result<Object, CertError> {
    let (label, bytes) = armor::decode_any(text)?;
    match label.as_str() {
        armor::CA_CERT => CaCert::decode(&bytes).map(Object::Ca),
        armor::NODE_CERT => NodeCert::decode(&bytes).map(Object::Node),
        armor::REVOCATION_LIST => RevocationList::decode(&bytes).map(Object::RevocationList),
        armor::NODE_KEY | armor::CA_KEY => Err(CertError::Armor(format!(
            "{label} is a private key; refusing to print it"
        ))),
        other => Err(CertError::Armor(format!("unknown block {other}"))),
    }
}
