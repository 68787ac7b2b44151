//! Every decoder of outside bytes returns an error, never panics, whatever
//! the input: arbitrary bytes, and valid encodings with bytes flipped or cut.

use cubenet_certs::armor;
use cubenet_certs::{
    decode_object, CaBody, CaCert, CaKey, Fingerprint, NodeBody, NodeCert, NodeKey, RevocationBody,
    RevocationList, Role,
};
use proptest::prelude::*;

fn sample() -> (CaCert, NodeCert, RevocationList) {
    let key = CaKey::generate();
    let ca = CaBody {
        name: "acme".into(),
        public_key: key.signing.verifying_key().to_bytes(),
        networks: vec![
            "10.77.0.0/16".parse().unwrap(),
            "fd77::/48".parse().unwrap(),
        ],
        not_before: 1_000,
        not_after: 2_000_000_000,
    }
    .self_sign(&key.signing)
    .unwrap();
    let node = NodeBody {
        name: "gw1".into(),
        public_key: NodeKey::generate().public(),
        addresses: vec![
            "10.77.0.1/16".parse().unwrap(),
            "fd77::1/48".parse().unwrap(),
        ],
        groups: vec!["gateways".into()],
        site: "fra".into(),
        role: Role::Gateway,
        subnets: vec!["10.77.8.0/24".parse().unwrap()],
        not_before: 1_000,
        not_after: 2_000_000_000,
        ca_fingerprint: ca.fingerprint(),
    }
    .sign(&key.signing)
    .unwrap();
    let crl = RevocationBody {
        ca_fingerprint: ca.fingerprint(),
        serial: 3,
        issued_at: 5_000,
        revoked: [Fingerprint([1; 32]), Fingerprint([2; 32])].into(),
    }
    .sign(&key.signing)
    .unwrap();
    (ca, node, crl)
}

fn decode_all(bytes: &[u8]) {
    let _ = CaCert::decode(bytes);
    let _ = NodeCert::decode(bytes);
    let _ = RevocationList::decode(bytes);
    let text = String::from_utf8_lossy(bytes);
    let _ = decode_object(&text);
    let _ = NodeKey::decode(&text);
    let _ = CaKey::decode(&text);
    let _ = armor::decode_any(&text);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_valid_header(kind in 1u8..=3, rest in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![cubenet_certs::VERSION, kind];
        bytes.extend(rest);
        decode_all(&bytes);
    }

    #[test]
    fn mutated_encodings_are_refused_or_equal(pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
        let (ca, node, crl) = sample();
        for enc in [ca.encoded(), node.encoded(), crl.encoded()] {
            let mut m = enc.to_vec();
            let i = pos % m.len();
            m[i] = val;
            decode_all(&m);
            // A node cert with any changed byte either fails to decode or
            // fails validation against its CA.
            if m != enc {
                if let Ok(n) = NodeCert::decode(&m) {
                    let anchor = cubenet_certs::TrustAnchor::new(ca.clone(), 10_000).unwrap();
                    prop_assert!(anchor.validate(&n, 10_000).is_err());
                }
                if let Ok(c) = CaCert::decode(&m) {
                    prop_assert_ne!(c.fingerprint(), ca.fingerprint());
                }
            }
            let cut = cut % enc.len();
            decode_all(&enc[..cut]);
            prop_assert!(NodeCert::decode(&enc[..cut]).is_err());
        }
    }

    #[test]
    fn armour_survives_whitespace_and_surrounding_text(prefix in "[a-z \n]{0,40}", indent in "[ \t]{0,4}") {
        let (_, node, _) = sample();
        let text: String = node.to_armor().lines().map(|l| format!("{indent}{l}\r\n")).collect();
        let pasted = format!("{prefix}\n{text}thanks!\n");
        prop_assert_eq!(NodeCert::from_armor(&pasted).unwrap(), node);
    }
}

#[test]
fn round_trips() {
    let (ca, node, crl) = sample();
    assert_eq!(CaCert::from_armor(&ca.to_armor()).unwrap(), ca);
    assert_eq!(NodeCert::from_armor(&node.to_armor()).unwrap(), node);
    assert_eq!(RevocationList::from_armor(&crl.to_armor()).unwrap(), crl);
    crl.verify(&ca).unwrap();
}

#[test]
fn truncated_armour_is_named() {
    let (_, node, _) = sample();
    let text = node.to_armor();
    let cut = &text[..text.len() - 10];
    let err = NodeCert::from_armor(cut).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let lines: Vec<&str> = text.lines().collect();
    let short = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[lines.len() - 1]);
    let err = NodeCert::from_armor(&short).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn unknown_version_is_named() {
    let (_, node, _) = sample();
    let mut m = node.encoded().to_vec();
    m[0] = 9;
    let err = NodeCert::decode(&m).unwrap_err().to_string();
    assert!(err.contains("unknown format version 9"), "{err}");
}
