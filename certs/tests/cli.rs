//! `overlay-cert` from a shell's point of view: the CA workflow and each
//! reason `verify` refuses a certificate, with exit codes and messages.

use base64::Engine;
use cubenet_certs::{armor, CaKey, NodeBody, NodeCert, Role};
use std::path::Path;
use std::process::{Command, Output};

fn oc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_overlay-cert"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run overlay-cert")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = oc(dir, args);
    assert!(
        out.status.success(),
        "overlay-cert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its exit code and stderr.
fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = oc(dir, args);
    assert!(!out.status.success(), "overlay-cert {args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ca_keygen_sign_print_verify_and_each_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(
        d,
        &[
            "ca",
            "--name",
            "acme",
            "--network",
            "10.77.0.0/16",
            "--network",
            "fd77::/48",
            "--out-dir",
            "ca",
        ],
    );
    ok(
        d,
        &[
            "ca",
            "--name",
            "evil",
            "--network",
            "10.77.0.0/16",
            "--out-dir",
            "evil",
        ],
    );
    let pubkey = ok(d, &["keygen", "--out", "h1.key"]);
    assert_eq!(
        pubkey.trim().len(),
        44,
        "WireGuard base64 public key: {pubkey}"
    );
    ok(
        d,
        &[
            "sign",
            "--ca-dir",
            "ca",
            "--name",
            "h1",
            "--ip",
            "10.77.1.5/16",
            "--ip",
            "fd77::1:5/48",
            "--groups",
            "web,db",
            "--site",
            "fra",
            "--role",
            "host",
            "--key",
            "h1.key",
            "--out",
            "h1.crt",
        ],
    );
    ok(
        d,
        &[
            "sign",
            "--ca-dir",
            "ca",
            "--name",
            "gw1",
            "--ip",
            "10.77.0.1/16",
            "--role",
            "gateway",
            "--site",
            "fra",
            "--subnet",
            "10.77.8.0/24",
            "--pubkey",
            pubkey.trim(),
            "--out",
            "gw1.crt",
        ],
    );

    // print --json shows every field.
    let v: serde_json::Value =
        serde_json::from_str(&ok(d, &["print", "--json", "h1.crt"])).unwrap();
    assert_eq!(v["name"], "h1");
    assert_eq!(v["public_key"], pubkey.trim());
    assert_eq!(
        v["addresses"],
        serde_json::json!(["10.77.1.5/16", "fd77::1:5/48"])
    );
    assert_eq!(v["groups"], serde_json::json!(["web", "db"]));
    assert_eq!(v["site"], "fra");
    assert_eq!(v["role"], "host");
    assert_eq!(v["subnets"], serde_json::json!([]));
    assert_eq!(v["version"], 1);
    for field in [
        "not_before",
        "not_after",
        "ca_fingerprint",
        "fingerprint",
        "signature",
        "days_left",
    ] {
        assert!(!v[field].is_null(), "print --json lacks {field}: {v}");
    }
    let ca_json: serde_json::Value =
        serde_json::from_str(&ok(d, &["print", "--json", "ca/ca.crt"])).unwrap();
    assert_eq!(v["ca_fingerprint"], ca_json["fingerprint"]);
    assert_eq!(
        ca_json["networks"],
        serde_json::json!(["10.77.0.0/16", "fd77::/48"])
    );
    let gw: serde_json::Value =
        serde_json::from_str(&ok(d, &["print", "--json", "gw1.crt"])).unwrap();
    assert_eq!(gw["subnets"], serde_json::json!(["10.77.8.0/24"]));
    assert_eq!(gw["role"], "gateway");

    ok(d, &["verify", "--ca", "ca/ca.crt", "h1.crt"]);
    ok(d, &["verify", "--ca", "ca/ca.crt", "gw1.crt"]);

    let mut reasons = Vec::new();

    // A one-byte change to the certificate.
    let text = std::fs::read_to_string(d.join("h1.crt")).unwrap();
    let mut bytes = armor::decode(&text, armor::NODE_CERT).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(
        d.join("tampered.crt"),
        armor::encode(armor::NODE_CERT, &bytes),
    )
    .unwrap();
    let (code, msg) = fails(d, &["verify", "--ca", "ca/ca.crt", "tampered.crt"]);
    assert_eq!(code, 1);
    assert!(msg.contains("bad signature"), "{msg}");
    reasons.push(msg);

    // A one-character change to the armoured text itself.
    let b64_line = text.lines().nth(2).unwrap();
    let flipped: String = b64_line
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 5 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    std::fs::write(
        d.join("tampered2.crt"),
        text.replacen(b64_line, &flipped, 1),
    )
    .unwrap();
    fails(d, &["verify", "--ca", "ca/ca.crt", "tampered2.crt"]);

    // A certificate of another CA.
    ok(
        d,
        &[
            "sign",
            "--ca-dir",
            "evil",
            "--name",
            "h1",
            "--ip",
            "10.77.1.5/16",
            "--key",
            "h1.key",
            "--out",
            "evil.crt",
        ],
    );
    let (_, msg) = fails(d, &["verify", "--ca", "ca/ca.crt", "evil.crt"]);
    assert!(msg.contains("another CA"), "{msg}");
    reasons.push(msg);

    // Used after its not-after (valid one day; checked three days on).
    ok(
        d,
        &[
            "sign",
            "--ca-dir",
            "ca",
            "--name",
            "short",
            "--ip",
            "10.77.1.9/16",
            "--days",
            "1",
            "--key",
            "h1.key",
            "--out",
            "short.crt",
        ],
    );
    let later = format!("@{}", cubenet_certs::time::unix_now() + 3 * 86_400);
    ok(d, &["verify", "--ca", "ca/ca.crt", "short.crt"]);
    let (_, msg) = fails(
        d,
        &["verify", "--ca", "ca/ca.crt", "--at", &later, "short.crt"],
    );
    assert!(msg.contains("expired"), "{msg}");
    reasons.push(msg);

    // Not yet valid.
    let earlier = format!("@{}", cubenet_certs::time::unix_now() - 3600);
    let (_, msg) = fails(
        d,
        &["verify", "--ca", "ca/ca.crt", "--at", &earlier, "h1.crt"],
    );
    assert!(msg.contains("not yet valid"), "{msg}");
    reasons.push(msg);

    // A virtual IP outside the CA's networks: `sign` refuses it...
    let (code, msg) = fails(
        d,
        &[
            "sign",
            "--ca-dir",
            "ca",
            "--name",
            "x",
            "--ip",
            "10.99.0.1/16",
            "--key",
            "h1.key",
            "--out",
            "x.crt",
        ],
    );
    assert_eq!(code, 2);
    assert!(msg.contains("outside the CA's networks"), "{msg}");
    // ...and `verify` refuses one signed with the CA key by other means.
    let ca_key = CaKey::decode(&std::fs::read_to_string(d.join("ca/ca.key")).unwrap()).unwrap();
    let h1 = NodeCert::from_armor(&text).unwrap();
    let outside = NodeBody {
        addresses: vec!["10.99.0.1/16".parse().unwrap()],
        ..h1.body.clone()
    }
    .sign(&ca_key.signing)
    .unwrap();
    std::fs::write(d.join("outside.crt"), outside.to_armor()).unwrap();
    let (_, msg) = fails(d, &["verify", "--ca", "ca/ca.crt", "outside.crt"]);
    assert!(msg.contains("outside the CA's networks"), "{msg}");
    reasons.push(msg);

    // Revoked: the list is created, then bumped.
    let out = ok(d, &["revoke", "--ca-dir", "ca", "--crl", "crl", "h1.crt"]);
    assert!(out.contains("serial 1"), "{out}");
    let (_, msg) = fails(
        d,
        &["verify", "--ca", "ca/ca.crt", "--crl", "crl", "h1.crt"],
    );
    assert!(msg.contains("revoked"), "{msg}");
    reasons.push(msg);
    // gw1's certificate is of the same key: revoking h1's file revoked
    // the key, and with it every certificate of it.
    assert!(out.contains("and its key"), "{out}");
    let (_, msg) = fails(
        d,
        &["verify", "--ca", "ca/ca.crt", "--crl", "crl", "gw1.crt"],
    );
    assert!(msg.contains("revoked"), "{msg}");
    let out = ok(d, &["revoke", "--ca-dir", "ca", "--crl", "crl", "gw1.crt"]);
    assert!(
        out.contains("serial 2") && out.contains("3 certificate"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(d, &["print", "--json", "crl"])).unwrap();
    assert_eq!(v["serial"], 2);

    // Truncated input.
    std::fs::write(d.join("cut.crt"), &text[..text.len() / 2]).unwrap();
    let (_, msg) = fails(d, &["verify", "--ca", "ca/ca.crt", "cut.crt"]);
    assert!(msg.contains("truncated"), "{msg}");
    reasons.push(msg);

    // Unknown format version.
    let mut v9 = armor::decode(&text, armor::NODE_CERT).unwrap();
    v9[0] = 9;
    std::fs::write(d.join("v9.crt"), armor::encode(armor::NODE_CERT, &v9)).unwrap();
    let (_, msg) = fails(d, &["verify", "--ca", "ca/ca.crt", "v9.crt"]);
    assert!(msg.contains("unknown format version"), "{msg}");
    reasons.push(msg);

    // Every cause has its own message.
    for (i, a) in reasons.iter().enumerate() {
        for b in &reasons[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn group_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(
        d,
        &[
            "ca",
            "--name",
            "acme",
            "--network",
            "10.77.0.0/16",
            "--out-dir",
            "ca",
        ],
    );
    ok(d, &["keygen", "--out", "k"]);
    let mode = std::fs::metadata(d.join("k")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::metadata(d.join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    std::fs::set_permissions(d.join("k"), std::fs::Permissions::from_mode(0o640)).unwrap();
    // Signs a host certificate for the key `k`.
    let sign_with_k = [
        "sign",
        "--ca-dir",
        "ca",
        "--name",
        "h",
        "--ip",
        "10.77.0.9/16",
        "--key",
        "k",
        "--out",
        "h.crt",
    ];
    let (code, msg) = fails(d, &sign_with_k);
    assert_eq!(code, 2);
    assert!(
        msg.contains("readable by group or others") && msg.contains("chmod 600"),
        "{msg}"
    );
    // Also the CA key.
    std::fs::set_permissions(d.join("ca/ca.key"), std::fs::Permissions::from_mode(0o604)).unwrap();
    let (_, msg) = fails(
        d,
        &[
            "sign",
            "--ca-dir",
            "ca",
            "--name",
            "h",
            "--ip",
            "10.77.0.9/16",
            "--pubkey",
            &base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
            "--out",
            "h.crt",
        ],
    );
    assert!(msg.contains("ca.key") && msg.contains("chmod 600"), "{msg}");
    // keygen never overwrites a key.
    let (_, msg) = fails(d, &["keygen", "--out", "k"]);
    assert!(msg.contains("already exists"), "{msg}");
    // A key of another user, mode 0600 (audit L11): refused. Only root can
    // give a file away, so only then is this tried.
    std::fs::set_permissions(d.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(d.join("ca/ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if std::os::unix::fs::chown(d.join("k"), Some(65534), None).is_ok() {
        let (code, msg) = fails(d, &sign_with_k);
        assert_eq!(code, 2);
        assert!(msg.contains("owned by uid 65534"), "{msg}");
    }
    let _ = Role::Host;
}

#[test]
fn bad_usage_exits_2_with_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (code, msg) = fails(
        d,
        &[
            "ca",
            "--name",
            "bad name!",
            "--network",
            "10.77.0.0/16",
            "--out-dir",
            "ca",
        ],
    );
    assert_eq!(code, 2);
    assert!(msg.contains("name"), "{msg}");
    let (code, _) = fails(
        d,
        &[
            "ca",
            "--name",
            "x",
            "--network",
            "not-a-cidr",
            "--out-dir",
            "ca",
        ],
    );
    assert_eq!(code, 2);
    let (code, msg) = fails(d, &["print", "missing.crt"]);
    assert_eq!(code, 2);
    assert!(msg.contains("missing.crt"), "{msg}");
}
