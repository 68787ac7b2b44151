//! Validation policy: each reason for refusing a certificate has its own error.

use cubenet_certs::{
    CaBody, CaCert, CaKey, CertError, CrlUpdate, NodeBody, NodeCert, NodeKey, RevocationBody, Role,
    TrustAnchor,
};

const NOW: u64 = 1_800_000_000;

fn ca(name: &str) -> (CaKey, CaCert) {
    let key = CaKey::generate();
    let cert = CaBody {
        name: name.into(),
        public_key: key.signing.verifying_key().to_bytes(),
        networks: vec!["10.77.0.0/16".parse().unwrap()],
        not_before: NOW - 1000,
        not_after: NOW + 100_000,
    }
    .self_sign(&key.signing)
    .unwrap();
    (key, cert)
}

fn node(key: &CaKey, ca: &CaCert, addr: &str, role: Role, subnets: &[&str]) -> NodeCert {
    NodeBody {
        name: "n1".into(),
        public_key: NodeKey::generate().public(),
        addresses: vec![addr.parse().unwrap()],
        groups: vec![],
        site: "fra".into(),
        role,
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        not_before: NOW - 10,
        not_after: NOW + 10,
        ca_fingerprint: ca.fingerprint(),
    }
    .sign(&key.signing)
    .unwrap()
}

#[test]
fn accepts_valid_and_refuses_each_cause() {
    let (key, ca_cert) = ca("acme");
    let anchor = TrustAnchor::new(ca_cert.clone(), NOW).unwrap();
    let good = node(&key, &ca_cert, "10.77.1.1/16", Role::Host, &[]);
    anchor.validate(&good, NOW).unwrap();

    assert!(matches!(
        anchor.validate(&good, NOW + 11),
        Err(CertError::Expired { .. })
    ));
    assert!(matches!(
        anchor.validate(&good, NOW - 11),
        Err(CertError::NotYetValid { .. })
    ));

    let outside = node(&key, &ca_cert, "10.78.1.1/16", Role::Host, &[]);
    assert!(matches!(
        anchor.validate(&outside, NOW),
        Err(CertError::AddressOutsideNetworks { .. })
    ));
    let bad_subnet = node(
        &key,
        &ca_cert,
        "10.77.0.1/16",
        Role::Gateway,
        &["10.0.0.0/8"],
    );
    assert!(matches!(
        anchor.validate(&bad_subnet, NOW),
        Err(CertError::SubnetOutsideNetworks { .. })
    ));

    let (other_key, other_ca) = ca("evil");
    let foreign = node(&other_key, &other_ca, "10.77.1.1/16", Role::Host, &[]);
    assert!(matches!(
        anchor.validate(&foreign, NOW),
        Err(CertError::OtherCa { .. })
    ));

    // Signed by another key while naming our CA: a forged certificate.
    let mut body = good.body.clone();
    body.name = "forged".into();
    let forged = body.sign(&other_key.signing).unwrap();
    assert!(matches!(
        anchor.validate(&forged, NOW),
        Err(CertError::BadSignature { .. })
    ));
}

#[test]
fn host_cert_cannot_carry_subnets() {
    let (key, ca_cert) = ca("acme");
    let body = NodeBody {
        name: "h".into(),
        public_key: [7; 32],
        addresses: vec!["10.77.1.1/16".parse().unwrap()],
        groups: vec![],
        site: String::new(),
        role: Role::Host,
        subnets: vec!["10.77.8.0/24".parse().unwrap()],
        not_before: 0,
        not_after: 1,
        ca_fingerprint: ca_cert.fingerprint(),
    };
    assert!(matches!(
        body.sign(&key.signing),
        Err(CertError::SubnetOnHost(_))
    ));
}

#[test]
fn revocation_and_higher_serial_wins() {
    let (key, ca_cert) = ca("acme");
    let mut anchor = TrustAnchor::new(ca_cert.clone(), NOW).unwrap();
    let victim = node(&key, &ca_cert, "10.77.1.1/16", Role::Host, &[]);
    let list = |serial, revoked: Vec<_>| {
        RevocationBody {
            ca_fingerprint: ca_cert.fingerprint(),
            serial,
            issued_at: NOW,
            revoked: revoked.into_iter().collect(),
        }
        .sign(&key.signing)
        .unwrap()
    };
    assert_eq!(
        anchor
            .offer_revocation_list(list(2, vec![victim.fingerprint()]))
            .unwrap(),
        CrlUpdate::Replaced
    );
    assert!(matches!(
        anchor.validate(&victim, NOW),
        Err(CertError::Revoked { serial: 2, .. })
    ));
    // An older list (serial 1, empty) does not un-revoke.
    assert_eq!(
        anchor.offer_revocation_list(list(1, vec![])).unwrap(),
        CrlUpdate::NotNewer
    );
    assert!(anchor.validate(&victim, NOW).is_err());
    // A newer list that drops the entry does.
    anchor.offer_revocation_list(list(3, vec![])).unwrap();
    anchor.validate(&victim, NOW).unwrap();

    // A list signed by another CA is refused.
    let (other_key, _) = ca("evil");
    let forged = RevocationBody {
        ca_fingerprint: ca_cert.fingerprint(),
        serial: 99,
        issued_at: NOW,
        revoked: [victim.fingerprint()].into(),
    }
    .sign(&other_key.signing)
    .unwrap();
    assert!(matches!(
        anchor.offer_revocation_list(forged),
        Err(CertError::BadSignature { .. })
    ));
    anchor.validate(&victim, NOW).unwrap();
}

#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let key = NodeKey::generate();
    cubenet_certs::keys::write_private(&path, &key.to_armor()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(NodeKey::load(&path).unwrap().public(), key.public());
    // Refuses to overwrite.
    assert!(cubenet_certs::keys::write_private(&path, "x").is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = NodeKey::load(&path).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    // WireGuard's base64 form is accepted too.
    let wg = dir.path().join("wg");
    cubenet_certs::keys::write_private(&wg, &key.to_wireguard_base64()).unwrap();
    assert_eq!(NodeKey::load(&wg).unwrap().public(), key.public());
}

/// Audit M5: revoking a node's key revokes every certificate of it, so a
/// node cannot come back with the older certificate it kept (a renewal
/// signs the same key again).
#[test]
fn a_revoked_key_revokes_every_certificate_of_it() {
    let (key, ca_cert) = ca("acme");
    let mut anchor = TrustAnchor::new(ca_cert.clone(), NOW).unwrap();
    let old = node(&key, &ca_cert, "10.77.1.1/16", Role::Host, &[]);
    let renewed = NodeBody {
        not_before: NOW - 5,
        ..old.body.clone()
    }
    .sign(&key.signing)
    .unwrap();
    let other = node(&key, &ca_cert, "10.77.1.2/16", Role::Host, &[]);
    assert_ne!(old.fingerprint(), renewed.fingerprint());
    let list = RevocationBody {
        ca_fingerprint: ca_cert.fingerprint(),
        serial: 1,
        issued_at: NOW,
        revoked: [
            renewed.fingerprint(),
            cubenet_certs::Fingerprint::of_key(renewed.public_key()),
        ]
        .into_iter()
        .collect(),
    }
    .sign(&key.signing)
    .unwrap();
    anchor.offer_revocation_list(list).unwrap();
    for c in [&renewed, &old] {
        assert!(
            matches!(anchor.validate(c, NOW), Err(CertError::Revoked { .. })),
            "{:?}",
            anchor.validate(c, NOW)
        );
    }
    assert!(
        anchor.validate(&other, NOW).is_ok(),
        "another key stays valid"
    );
}
