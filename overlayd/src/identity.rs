//! This node's identity (key, certificate, CA, revocation list) and the
//! directory of other nodes' certificates, loaded from the config's files
//! and validated at `now`. Reloaded on SIGHUP.

use crate::config::Config;
use cubenet_certs::{
    load_ca_cert, load_node_cert, load_revocation_list, NodeCert, NodeKey, Role, TrustAnchor,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub struct Identity {
    pub key: NodeKey,
    pub cert: Arc<NodeCert>,
    pub trust: TrustAnchor,
    /// Certificates from `identity.cert_dir`, by public key, valid at load.
    pub directory: Directory,
    /// Files in the directory that were skipped, with the reason.
    pub directory_skipped: Vec<String>,
}

impl Identity {
    pub fn load(cfg: &Config, now: u64) -> Result<Identity, String> {
        let id = &cfg.identity;
        let key = NodeKey::load(&id.key).map_err(|e| format!("identity.key: {e}"))?;
        let ca = load_ca_cert(&id.ca).map_err(|e| format!("identity.ca: {e}"))?;
        let mut trust = TrustAnchor::new(ca, now)
            .map_err(|e| format!("identity.ca: {}: {e}", id.ca.display()))?;
        if let Some(crl) = &id.crl {
            // A missing list is fine until the first revocation.
            if crl.exists() {
                let list = load_revocation_list(crl).map_err(|e| format!("identity.crl: {e}"))?;
                trust
                    .offer_revocation_list(list)
                    .map_err(|e| format!("identity.crl: {}: {e}", crl.display()))?;
            }
        }
        let cert = load_node_cert(&id.cert).map_err(|e| format!("identity.cert: {e}"))?;
        trust
            .validate(&cert, now)
            .map_err(|e| format!("identity.cert: {}: {e}", id.cert.display()))?;
        if cert.public_key() != &key.public() {
            return Err(format!(
                "identity.cert: {} certifies another key than identity.key {}",
                id.cert.display(),
                id.key.display()
            ));
        }
        let (directory, directory_skipped) = match &id.cert_dir {
            Some(dir) => load_directory(dir, &trust, now)
                .map_err(|e| format!("identity.cert_dir: {}: {e}", dir.display()))?,
            None => (HashMap::new(), Vec::new()),
        };
        Ok(Identity {
            key,
            cert: Arc::new(cert),
            trust,
            directory,
            directory_skipped,
        })
    }

    pub fn role(&self) -> Role {
        self.cert.role()
    }
}

type Directory = HashMap<[u8; 32], Arc<NodeCert>>;

/// Loads every `*.crt` of `dir` that is valid now. One bad file does not
/// stop the others; it is reported.
fn load_directory(
    dir: &Path,
    trust: &TrustAnchor,
    now: u64,
) -> Result<(Directory, Vec<String>), std::io::Error> {
    let mut certs = HashMap::new();
    let mut skipped = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    entries.sort();
    for path in entries {
        match load_node_cert(&path) {
            Ok(c) => match trust.validate(&c, now) {
                Ok(()) => {
                    certs.insert(*c.public_key(), Arc::new(c));
                }
                Err(e) => skipped.push(format!("{}: {e}", path.display())),
            },
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Ok((certs, skipped))
}
