//! Private key files: node X25519 (WireGuard) keys and the CA's Ed25519 key.
//! Written with mode 0600; a key that group or others can read is refused.

use crate::armor;
use crate::error::{CertError, KeyFileError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use x25519_dalek::{PublicKey, StaticSecret};

/// A node's static X25519 key.
#[derive(Clone)]
pub struct NodeKey {
    secret: StaticSecret,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(public {})", self.public_base64())
    }
}

impl NodeKey {
    pub fn generate() -> NodeKey {
        NodeKey {
            secret: StaticSecret::random_from_rng(OsRng),
        }
    }
    pub fn from_bytes(b: [u8; 32]) -> NodeKey {
        NodeKey {
            secret: StaticSecret::from(b),
        }
    }
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }
    /// A secret this node and the node with public key `peer` both
    /// derive, and nobody without one of the two private keys: SHA-256
    /// over `context` and their X25519 shared secret. routed keys TCP-MD5
    /// between two gateways with it.
    pub fn pair_secret(&self, peer: &[u8; 32], context: &str) -> [u8; 32] {
        use sha2::Digest;
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        let mut h = sha2::Sha256::new();
        h.update(context.as_bytes());
        h.update(shared.as_bytes());
        h.finalize().into()
    }
    /// Public key in WireGuard's base64 form, as `wg pubkey` prints it.
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.public())
    }
    /// Armoured text form. A plain WireGuard base64 key (`wg genkey`) is
    /// accepted by [`NodeKey::decode`] too.
    pub fn to_armor(&self) -> String {
        armor::encode(armor::NODE_KEY, &self.secret.to_bytes())
    }
    /// WireGuard's base64 form, for `wg set ... private-key`.
    pub fn to_wireguard_base64(&self) -> String {
        STANDARD.encode(self.secret.to_bytes())
    }
    pub fn decode(text: &str) -> Result<NodeKey, CertError> {
        let bytes = if text.contains("-----BEGIN") {
            armor::decode(text, armor::NODE_KEY)?
        } else {
            STANDARD
                .decode(text.trim())
                .map_err(|e| CertError::Malformed(format!("key is not base64: {e}")))?
        };
        let b: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
            CertError::Malformed(format!("key has {} bytes, expected 32", v.len()))
        })?;
        Ok(NodeKey::from_bytes(b))
    }
    pub fn load(path: &Path) -> Result<NodeKey, KeyFileError> {
        let text = read_private(path)?;
        NodeKey::decode(&text).map_err(|source| KeyFileError::Decode {
            path: path.to_owned(),
            source,
        })
    }
}

/// Decodes a public key in WireGuard's base64 form.
pub fn decode_public_key(b64: &str) -> Result<[u8; 32], CertError> {
    let bytes = STANDARD
        .decode(b64.trim())
        .map_err(|e| CertError::Malformed(format!("public key is not base64: {e}")))?;
    bytes.try_into().map_err(|v: Vec<u8>| {
        CertError::Malformed(format!("public key has {} bytes, expected 32", v.len()))
    })
}

/// The CA's Ed25519 signing key.
pub struct CaKey {
    pub signing: SigningKey,
}

impl CaKey {
    pub fn generate() -> CaKey {
        CaKey {
            signing: SigningKey::generate(&mut OsRng),
        }
    }
    /// The key with this secret (simulations derive keys from a seed).
    pub fn from_bytes(b: [u8; 32]) -> CaKey {
        CaKey {
            signing: SigningKey::from_bytes(&b),
        }
    }
    pub fn to_armor(&self) -> String {
        armor::encode(armor::CA_KEY, &self.signing.to_bytes())
    }
    pub fn decode(text: &str) -> Result<CaKey, CertError> {
        let bytes = armor::decode(text, armor::CA_KEY)?;
        let b: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
            CertError::Malformed(format!("CA key has {} bytes, expected 32", v.len()))
        })?;
        Ok(CaKey {
            signing: SigningKey::from_bytes(&b),
        })
    }
    pub fn load(path: &Path) -> Result<CaKey, KeyFileError> {
        let text = read_private(path)?;
        CaKey::decode(&text).map_err(|source| KeyFileError::Decode {
            path: path.to_owned(),
            source,
        })
    }
}

/// Reads a private key file, refusing it when group or others may read it
/// or when another user owns it. The checks are made on the file opened,
/// not on the path before it is opened (audit L11: stat, then open).
pub fn read_private(path: &Path) -> Result<String, KeyFileError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(KeyFileError::OtherOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

/// Writes `contents` to a new file with mode 0600 (never widened by umask,
/// never replacing an existing file).
pub fn write_private(path: &Path, contents: &str) -> Result<(), KeyFileError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::NodeKey;

    #[test]
    fn a_pair_secret_is_the_same_from_both_ends_and_differs_per_pair_and_context() {
        let (a, b, c) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let ab = a.pair_secret(&b.public(), "x");
        assert_eq!(ab, b.pair_secret(&a.public(), "x"));
        assert_ne!(ab, a.pair_secret(&c.public(), "x"));
        assert_ne!(ab, a.pair_secret(&b.public(), "y"));
    }
}
