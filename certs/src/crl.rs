//! The revocation list: CA-signed fingerprints of revoked certificates with a
//! serial. Of two valid lists the higher serial wins.

use crate::armor;
use crate::cert::{CaCert, Fingerprint};
use crate::error::CertError;
use crate::wire::{Kind, Reader, Writer};
use ed25519_dalek::{Signer, SigningKey};
use std::collections::BTreeSet;

/// At most this many entries are decoded; a CA that needs more should rotate.
pub const MAX_REVOKED: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationBody {
    pub ca_fingerprint: Fingerprint,
    pub serial: u64,
    pub issued_at: u64,
    /// Sorted, without duplicates (that keeps the encoding canonical).
    pub revoked: BTreeSet<Fingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    pub body: RevocationBody,
    encoded: Vec<u8>,
}

impl RevocationBody {
    fn encode_tbs(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::RevocationList);
        w.bytes(&self.ca_fingerprint.0);
        w.u64(self.serial);
        w.u64(self.issued_at);
        w.count(self.revoked.len());
        for f in &self.revoked {
            w.bytes(&f.0);
        }
        w.finish()
    }

    pub fn sign(self, ca_key: &SigningKey) -> Result<RevocationList, CertError> {
        if self.revoked.len() > MAX_REVOKED {
            return Err(CertError::InvalidField {
                field: "revoked",
                problem: format!("more than {MAX_REVOKED} entries"),
            });
        }
        let mut encoded = self.encode_tbs();
        let sig = ca_key.sign(&encoded).to_bytes();
        encoded.extend_from_slice(&sig);
        Ok(RevocationList {
            body: self,
            encoded,
        })
    }
}

impl RevocationList {
    /// Decodes the structure only; [`RevocationList::verify`] checks it
    /// belongs to a CA.
    pub fn decode(bytes: &[u8]) -> Result<RevocationList, CertError> {
        let mut r = Reader::open(bytes, Kind::RevocationList)?;
        let ca_fingerprint = Fingerprint(r.array("CA fingerprint")?);
        let serial = r.u64("serial")?;
        let issued_at = r.u64("issued_at")?;
        let n = r.count("revoked count")?;
        let mut revoked = BTreeSet::new();
        let mut prev: Option<Fingerprint> = None;
        for _ in 0..n {
            let f = Fingerprint(r.array("revoked fingerprint")?);
            if prev.is_some_and(|p| p >= f) {
                return Err(CertError::Malformed(
                    "revoked fingerprints are not sorted and unique".into(),
                ));
            }
            prev = Some(f);
            revoked.insert(f);
        }
        let _sig: [u8; 64] = r.array("signature")?;
        r.finish()?;
        Ok(RevocationList {
            body: RevocationBody {
                ca_fingerprint,
                serial,
                issued_at,
                revoked,
            },
            encoded: bytes.to_vec(),
        })
    }

    /// Checks that `ca` issued and signed this list.
    pub fn verify(&self, ca: &CaCert) -> Result<(), CertError> {
        let ca_fp = ca.fingerprint();
        if self.body.ca_fingerprint != ca_fp {
            return Err(CertError::OtherCa {
                expected: ca_fp.to_hex(),
                found: self.body.ca_fingerprint.to_hex(),
            });
        }
        let split = self.encoded.len() - 64;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&self.encoded[split..]);
        ca.verify(&self.encoded[..split], &sig, "revocation list")
    }

    pub fn from_armor(text: &str) -> Result<RevocationList, CertError> {
        RevocationList::decode(&armor::decode(text, armor::REVOCATION_LIST)?)
    }
    pub fn to_armor(&self) -> String {
        armor::encode(armor::REVOCATION_LIST, &self.encoded)
    }
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
    pub fn is_revoked(&self, fp: &Fingerprint) -> bool {
        self.body.revoked.contains(fp)
    }

    /// Of two lists (both already verified against the same CA), the one with
    /// the higher serial.
    pub fn newer<'a>(a: &'a RevocationList, b: &'a RevocationList) -> &'a RevocationList {
        if b.body.serial > a.body.serial {
            b
        } else {
            a
        }
    }
}
