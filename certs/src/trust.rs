//! Validation of node certificates against a trusted CA and its revocation
//! list at a given `now`. This is the API overlayd uses for every peer.

use crate::cert::{CaCert, Fingerprint, NodeCert};
use crate::crl::RevocationList;
use crate::error::CertError;
use crate::time::format_rfc3339;

impl NodeCert {
    /// Whether `now` is inside the certificate's validity window, by the
    /// same rule as [`TrustAnchor::validate`], without the signature and
    /// revocation checks (for re-checking accepted certificates cheaply).
    pub fn check_validity_window(&self, now: u64) -> Result<(), CertError> {
        check_time(self.body.not_before, self.body.not_after, now)
    }
}

/// A trusted CA plus the newest revocation list seen for it.
#[derive(Debug, Clone)]
pub struct TrustAnchor {
    ca: CaCert,
    crl: Option<RevocationList>,
}

fn check_time(not_before: u64, not_after: u64, now: u64) -> Result<(), CertError> {
    if now < not_before {
        return Err(CertError::NotYetValid {
            not_before: format_rfc3339(not_before),
            now: format_rfc3339(now),
        });
    }
    if now > not_after {
        return Err(CertError::Expired {
            not_after: format_rfc3339(not_after),
            now: format_rfc3339(now),
        });
    }
    Ok(())
}

/// Outcome of offering a revocation list to a [`TrustAnchor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlUpdate {
    /// The list was newer and replaced the one held.
    Replaced,
    /// The list was not newer than the one held; nothing changed.
    NotNewer,
}

impl TrustAnchor {
    /// Trusts `ca` if its self-signature holds (checked on decode) and it is
    /// valid at `now`.
    pub fn new(ca: CaCert, now: u64) -> Result<TrustAnchor, CertError> {
        check_time(ca.body.not_before, ca.body.not_after, now)
            .map_err(|e| CertError::CaInvalid(Box::new(e)))?;
        Ok(TrustAnchor { ca, crl: None })
    }

    pub fn ca(&self) -> &CaCert {
        &self.ca
    }

    pub fn revocation_list(&self) -> Option<&RevocationList> {
        self.crl.as_ref()
    }

    /// Offers a revocation list: it must be signed by this CA; it replaces
    /// the held one only if its serial is higher.
    pub fn offer_revocation_list(&mut self, crl: RevocationList) -> Result<CrlUpdate, CertError> {
        crl.verify(&self.ca)?;
        match &self.crl {
            Some(held) if held.body.serial >= crl.body.serial => Ok(CrlUpdate::NotNewer),
            _ => {
                self.crl = Some(crl);
                Ok(CrlUpdate::Replaced)
            }
        }
    }

    pub fn is_revoked(&self, fp: &Fingerprint) -> bool {
        self.crl.as_ref().is_some_and(|c| c.is_revoked(fp))
    }

    /// Validates a node certificate at `now`: issued by this CA, signature,
    /// validity window of the cert and the CA, addresses and subnets inside
    /// the CA's networks, not revoked.
    pub fn validate(&self, cert: &NodeCert, now: u64) -> Result<(), CertError> {
        let ca_fp = self.ca.fingerprint();
        if cert.body.ca_fingerprint != ca_fp {
            return Err(CertError::OtherCa {
                expected: ca_fp.to_hex(),
                found: cert.body.ca_fingerprint.to_hex(),
            });
        }
        self.ca
            .verify(cert.tbs(), cert.signature(), "certificate")?;
        check_time(self.ca.body.not_before, self.ca.body.not_after, now)
            .map_err(|e| CertError::CaInvalid(Box::new(e)))?;
        check_time(cert.body.not_before, cert.body.not_after, now)?;
        self.check_policy(cert)?;
        if let Some(crl) = &self.crl {
            // The certificate, or its key: a node whose key is revoked
            // cannot come back with an older (or newer) certificate of it.
            let fp = cert.fingerprint();
            if crl.is_revoked(&fp) || crl.is_revoked(&Fingerprint::of_key(cert.public_key())) {
                return Err(CertError::Revoked {
                    fingerprint: fp.to_hex(),
                    serial: crl.body.serial,
                });
            }
        }
        Ok(())
    }

    /// The CA's address policy alone: virtual IPs and subnets inside its
    /// networks. `overlay-cert sign` applies it before signing.
    pub fn check_policy(&self, cert: &NodeCert) -> Result<(), CertError> {
        check_policy(&self.ca, &cert.body.addresses, &cert.body.subnets)
    }
}

/// Checks that `addresses` and `subnets` lie inside the CA's networks.
pub fn check_policy(
    ca: &CaCert,
    addresses: &[ipnet::IpNet],
    subnets: &[ipnet::IpNet],
) -> Result<(), CertError> {
    let networks = || {
        ca.body
            .networks
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for a in addresses {
        if !ca.covers_addr(a.addr()) {
            return Err(CertError::AddressOutsideNetworks {
                addr: a.to_string(),
                networks: networks(),
            });
        }
    }
    for s in subnets {
        if !ca.covers_net(s) {
            return Err(CertError::SubnetOutsideNetworks {
                subnet: s.to_string(),
                networks: networks(),
            });
        }
    }
    Ok(())
}
