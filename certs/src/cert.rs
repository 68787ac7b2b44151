//! CA and node certificates: their fields, deterministic encoding and
//! signatures. Policy (which CA, validity at `now`, revocation) lives in
//! [`crate::trust`].

use crate::armor;
use crate::error::CertError;
use crate::wire::{Kind, Reader, Writer};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::fmt;

/// Upper bounds that keep a certificate small and a decoder's allocations
/// bounded whatever the input claims.
pub const MAX_NAME_LEN: usize = 63;
pub const MAX_ADDRESSES: usize = 16;
pub const MAX_GROUPS: usize = 64;
pub const MAX_SUBNETS: usize = 256;
pub const MAX_NETWORKS: usize = 64;

/// SHA-256 of an object's full encoding (fields and signature).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(encoded: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(encoded).into())
    }

    /// What a revocation list names to revoke a node's key, every
    /// certificate of it at once: SHA-256 of a label and the key, so it is
    /// never the fingerprint of a certificate.
    pub fn of_key(public_key: &[u8; 32]) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"cubenet revoked key\0");
        h.update(public_key);
        Fingerprint(h.finalize().into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Result<Fingerprint, CertError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| CertError::InvalidField {
            field: "fingerprint",
            problem: format!("{s:?} is not 64 hex digits"),
        })?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Host,
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Gateway => "gateway",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "host" => Ok(Role::Host),
            "gateway" => Ok(Role::Gateway),
            _ => Err(format!("unknown role {s:?}: expected host or gateway")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names, groups and sites: 1–63 characters of `A-Z a-z 0-9 . _ -`, so
/// they are safe in file names, logs and firewall rules.
pub fn check_label(field: &'static str, s: &str) -> Result<(), CertError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidField {
            field,
            problem: format!(
                "{s:?} must be 1-{MAX_NAME_LEN} characters of letters, digits, '.', '_' or '-'"
            ),
        })
    }
}

fn check_count(field: &'static str, n: usize, max: usize) -> Result<(), CertError> {
    if n > max {
        return Err(CertError::InvalidField {
            field,
            problem: format!("{n} entries, at most {max} allowed"),
        });
    }
    Ok(())
}

/// The fields a CA certifies about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBody {
    pub name: String,
    /// Ed25519 public key that signs node certificates and revocation lists.
    pub public_key: [u8; 32],
    /// Overlay networks the CA may hand out addresses and subnets from.
    pub networks: Vec<IpNet>,
    pub not_before: u64,
    pub not_after: u64,
}

/// A self-signed CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    pub body: CaBody,
    signature: [u8; 64],
    encoded: Vec<u8>,
}

impl CaBody {
    fn validate(&self) -> Result<(), CertError> {
        check_label("name", &self.name)?;
        if self.networks.is_empty() {
            return Err(CertError::InvalidField {
                field: "networks",
                problem: "a CA needs at least one overlay network".into(),
            });
        }
        check_count("networks", self.networks.len(), MAX_NETWORKS)?;
        check_window(self.not_before, self.not_after)
    }

    fn encode_tbs(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Ca);
        w.str(&self.name);
        w.bytes(&self.public_key);
        w.count(self.networks.len());
        for n in &self.networks {
            w.net(n);
        }
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.finish()
    }

    /// Self-signs the body. `key` must be the key whose public half is in the body.
    pub fn self_sign(self, key: &SigningKey) -> Result<CaCert, CertError> {
        self.validate()?;
        if key.verifying_key().to_bytes() != self.public_key {
            return Err(CertError::InvalidField {
                field: "public_key",
                problem: "does not belong to the signing key".into(),
            });
        }
        let tbs = self.encode_tbs();
        let signature = key.sign(&tbs).to_bytes();
        let mut encoded = tbs;
        encoded.extend_from_slice(&signature);
        Ok(CaCert {
            body: self,
            signature,
            encoded,
        })
    }
}

fn check_window(not_before: u64, not_after: u64) -> Result<(), CertError> {
    if not_after <= not_before {
        return Err(CertError::InvalidField {
            field: "not_after",
            problem: "must be later than not_before".into(),
        });
    }
    Ok(())
}

fn read_nets(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Vec<IpNet>, CertError> {
    let n = r.count(what)?;
    check_count(what, n, max)?;
    (0..n).map(|_| r.net(what)).collect()
}

fn verify_sig(
    key: &[u8; 32],
    tbs: &[u8],
    sig: &[u8; 64],
    what: &'static str,
) -> Result<(), CertError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| CertError::BadSignature { what })?;
    key.verify_strict(tbs, &Signature::from_bytes(sig))
        .map_err(|_| CertError::BadSignature { what })
}

impl CaCert {
    /// Decodes and checks the self-signature; validity in time is checked by
    /// [`crate::trust::TrustAnchor`].
    pub fn decode(bytes: &[u8]) -> Result<CaCert, CertError> {
        let mut r = Reader::open(bytes, Kind::Ca)?;
        let name = r.str("CA name")?;
        let public_key = r.array("CA public key")?;
        let networks = read_nets(&mut r, "CA networks", MAX_NETWORKS)?;
        let not_before = r.u64("not_before")?;
        let not_after = r.u64("not_after")?;
        let tbs_len = r.position();
        let signature = r.array("signature")?;
        r.finish()?;
        let body = CaBody {
            name,
            public_key,
            networks,
            not_before,
            not_after,
        };
        body.validate()
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        verify_sig(&public_key, &bytes[..tbs_len], &signature, "CA certificate")?;
        Ok(CaCert {
            body,
            signature,
            encoded: bytes.to_vec(),
        })
    }

    pub fn from_armor(text: &str) -> Result<CaCert, CertError> {
        CaCert::decode(&armor::decode(text, armor::CA_CERT)?)
    }
    pub fn to_armor(&self) -> String {
        armor::encode(armor::CA_CERT, &self.encoded)
    }
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.encoded)
    }
    /// Whether `addr` lies inside one of the CA's networks.
    pub fn covers_addr(&self, addr: std::net::IpAddr) -> bool {
        self.body.networks.iter().any(|n| n.contains(&addr))
    }
    /// Whether `net` lies entirely inside one of the CA's networks.
    pub fn covers_net(&self, net: &IpNet) -> bool {
        self.body.networks.iter().any(|n| n.contains(net))
    }
    pub(crate) fn verify(
        &self,
        tbs: &[u8],
        sig: &[u8; 64],
        what: &'static str,
    ) -> Result<(), CertError> {
        verify_sig(&self.body.public_key, tbs, sig, what)
    }
}

/// The fields a CA certifies about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBody {
    pub name: String,
    /// X25519 (WireGuard) static public key.
    pub public_key: [u8; 32],
    /// Virtual addresses with the overlay prefix length, e.g. `10.77.1.5/16`.
    pub addresses: Vec<IpNet>,
    pub groups: Vec<String>,
    /// Site name; empty when the node belongs to no site.
    pub site: String,
    pub role: Role,
    /// Prefixes a gateway may announce for its site.
    pub subnets: Vec<IpNet>,
    pub not_before: u64,
    pub not_after: u64,
    pub ca_fingerprint: Fingerprint,
}

/// A CA-signed node (host or gateway) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub body: NodeBody,
    signature: [u8; 64],
    encoded: Vec<u8>,
}

impl NodeBody {
    /// Checks the fields' own shape (not policy against a CA).
    pub fn validate(&self) -> Result<(), CertError> {
        check_label("name", &self.name)?;
        if self.addresses.is_empty() {
            return Err(CertError::InvalidField {
                field: "addresses",
                problem: "a node needs at least one virtual IP".into(),
            });
        }
        check_count("addresses", self.addresses.len(), MAX_ADDRESSES)?;
        check_count("groups", self.groups.len(), MAX_GROUPS)?;
        for g in &self.groups {
            check_label("group", g)?;
        }
        if !self.site.is_empty() {
            check_label("site", &self.site)?;
        }
        check_count("subnets", self.subnets.len(), MAX_SUBNETS)?;
        if self.role == Role::Host {
            if let Some(s) = self.subnets.first() {
                return Err(CertError::SubnetOnHost(s.to_string()));
            }
        }
        for s in &self.subnets {
            if s.trunc() != *s {
                return Err(CertError::InvalidField {
                    field: "subnet",
                    problem: format!("{s} has host bits set (did you mean {}?)", s.trunc()),
                });
            }
        }
        check_window(self.not_before, self.not_after)
    }

    fn encode_tbs(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Node);
        w.str(&self.name);
        w.bytes(&self.public_key);
        w.count(self.addresses.len());
        for a in &self.addresses {
            w.net(a);
        }
        w.count(self.groups.len());
        for g in &self.groups {
            w.str(g);
        }
        w.str(&self.site);
        w.u8(match self.role {
            Role::Host => 1,
            Role::Gateway => 2,
        });
        w.count(self.subnets.len());
        for s in &self.subnets {
            w.net(s);
        }
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.bytes(&self.ca_fingerprint.0);
        w.finish()
    }

    /// Signs the body with the CA key. This checks the fields' shape only;
    /// `overlay-cert sign` also checks policy against the CA certificate.
    pub fn sign(self, ca_key: &SigningKey) -> Result<NodeCert, CertError> {
        self.validate()?;
        let tbs = self.encode_tbs();
        let signature = ca_key.sign(&tbs).to_bytes();
        let mut encoded = tbs;
        encoded.extend_from_slice(&signature);
        Ok(NodeCert {
            body: self,
            signature,
            encoded,
        })
    }
}

impl NodeCert {
    /// Decodes the structure; the signature is checked against a CA by
    /// [`crate::trust::TrustAnchor::validate`].
    pub fn decode(bytes: &[u8]) -> Result<NodeCert, CertError> {
        let mut r = Reader::open(bytes, Kind::Node)?;
        let name = r.str("name")?;
        let public_key = r.array("public key")?;
        let addresses = read_nets(&mut r, "virtual IPs", MAX_ADDRESSES)?;
        let ngroups = r.count("groups")?;
        check_count("groups", ngroups, MAX_GROUPS)?;
        let groups = (0..ngroups)
            .map(|_| r.str("group"))
            .collect::<Result<Vec<_>, _>>()?;
        let site = r.str("site")?;
        let role = match r.u8("role")? {
            1 => Role::Host,
            2 => Role::Gateway,
            other => return Err(CertError::Malformed(format!("unknown role {other}"))),
        };
        let subnets = read_nets(&mut r, "subnets", MAX_SUBNETS)?;
        let not_before = r.u64("not_before")?;
        let not_after = r.u64("not_after")?;
        let ca_fingerprint = Fingerprint(r.array("CA fingerprint")?);
        let tbs_len = r.position();
        let signature = r.array("signature")?;
        r.finish()?;
        let body = NodeBody {
            name,
            public_key,
            addresses,
            groups,
            site,
            role,
            subnets,
            not_before,
            not_after,
            ca_fingerprint,
        };
        body.validate()
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        // One encoding per certificate: a decoder that accepted variants
        // would let two fingerprints name the same certificate.
        if body.encode_tbs() != bytes[..tbs_len] {
            return Err(CertError::Malformed("non-canonical encoding".into()));
        }
        Ok(NodeCert {
            body,
            signature,
            encoded: bytes.to_vec(),
        })
    }

    pub fn from_armor(text: &str) -> Result<NodeCert, CertError> {
        NodeCert::decode(&armor::decode(text, armor::NODE_CERT)?)
    }
    pub fn to_armor(&self) -> String {
        armor::encode(armor::NODE_CERT, &self.encoded)
    }
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
    /// The signed part of the encoding.
    pub fn tbs(&self) -> &[u8] {
        &self.encoded[..self.encoded.len() - 64]
    }
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.encoded)
    }
    pub fn name(&self) -> &str {
        &self.body.name
    }
    pub fn role(&self) -> Role {
        self.body.role
    }
    pub fn public_key(&self) -> &[u8; 32] {
        &self.body.public_key
    }
    /// Whether `addr` is one of the node's own virtual IPs.
    pub fn owns_addr(&self, addr: std::net::IpAddr) -> bool {
        self.body.addresses.iter().any(|a| a.addr() == addr)
    }
}
