//! This node's identity (key, certificate, CA, revocation list) and the
//! directory of other nodes' certificates, loaded from the config's files
//! and validated at `now`. Reloaded on SIGHUP.

use crate::config::Config;
use cubenet_certs::error::CertError;
use cubenet_certs::{
    load_ca_cert, load_node_cert, load_revocation_list, NodeCert, NodeKey, Role, TrustAnchor,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

/// Why a node's identity cannot be loaded; each names the config key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity.key: {0}")]
    Key(cubenet_certs::error::KeyFileError),
    #[error("identity.ca: {0}")]
    CaFile(cubenet_certs::LoadError),
    #[error("identity.ca: {}: {source}", path.display())]
    Ca { path: PathBuf, source: CertError },
    #[error("identity.crl: {0}")]
    CrlFile(cubenet_certs::LoadError),
    #[error("identity.crl: {}: {source}", path.display())]
    Crl { path: PathBuf, source: CertError },
    #[error("identity.cert: {0}")]
    CertFile(cubenet_certs::LoadError),
    #[error("identity.cert: {}: {source}", path.display())]
    Cert { path: PathBuf, source: CertError },
    #[error("identity.cert: {} certifies another key than identity.key {}", cert.display(), key.display())]
    OtherKey { cert: PathBuf, key: PathBuf },
    #[error("identity.cert_dir: {}: {source}", path.display())]
    CertDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Identity {
    pub fn load(cfg: &Config, now: u64) -> Result<Identity, IdentityError> {
        use IdentityError as E;
        let id = &cfg.identity;
        let key = NodeKey::load(&id.key).map_err(E::Key)?;
        let ca = load_ca_cert(&id.ca).map_err(E::CaFile)?;
        let mut trust = TrustAnchor::new(ca, now).map_err(|source| E::Ca {
            path: id.ca.clone(),
            source,
        })?;
        if let Some(crl) = &id.crl {
            // A missing list is fine until the first revocation.
            if crl.exists() {
                let list = load_revocation_list(crl).map_err(E::CrlFile)?;
                trust.offer_revocation_list(list).map_err(|source| E::Crl {
                    path: crl.clone(),
                    source,
                })?;
            }
        }
        let cert = load_node_cert(&id.cert).map_err(E::CertFile)?;
        trust.validate(&cert, now).map_err(|source| E::Cert {
            path: id.cert.clone(),
            source,
        })?;
        if cert.public_key() != &key.public() {
            return Err(E::OtherKey {
                cert: id.cert.clone(),
                key: id.key.clone(),
            });
        }
        let (directory, directory_skipped) = match &id.cert_dir {
            Some(dir) => load_directory(dir, &trust, now).map_err(|source| E::CertDir {
                path: dir.clone(),
                source,
            })?,
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
