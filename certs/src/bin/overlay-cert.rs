//! `overlay-cert`: the cubenet certificate authority on the command line.
//!
//! Exit codes: 0 ok; 1 the operation failed (e.g. a certificate is invalid);
//! 2 bad usage or input.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use cubenet_certs::cli::{Cli, Cmd};
use cubenet_certs::keys::{decode_public_key, write_private};
use cubenet_certs::time::{format_rfc3339, unix_now};
use cubenet_certs::trust::check_policy;
use cubenet_certs::{
    decode_object, json, load_ca_cert, load_node_cert, load_revocation_list, CaBody, CaKey,
    Fingerprint, NodeBody, NodeKey, Object, RevocationBody, TrustAnchor,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

/// An error that is the user's input, not a failed operation: exit 2.
#[derive(Debug)]
struct Usage(String);
impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(msg.into()))
}

/// A closed pipe (`| head`) ends this command quietly, as for any Unix tool,
/// instead of a panic in `println!`.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any
    // thread exists; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay-cert: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn run(cli: Cli) -> Result<()> {
    let now = unix_now();
    match cli.cmd {
        Cmd::Ca {
            name,
            networks,
            out_dir,
            days,
        } => {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let key = CaKey::generate();
            let cert = CaBody {
                name,
                public_key: key.signing.verifying_key().to_bytes(),
                networks,
                not_before: now.saturating_sub(60),
                not_after: now + days * 86_400,
            }
            .self_sign(&key.signing)
            .map_err(|e| usage(e.to_string()))?;
            let key_path = out_dir.join("ca.key");
            write_private(&key_path, &key.to_armor()).map_err(|e| usage(e.to_string()))?;
            write_public(&out_dir.join("ca.crt"), &cert.to_armor())?;
            println!(
                "CA {} fingerprint {}\nkey  {}\ncert {}",
                cert.body.name,
                cert.fingerprint(),
                key_path.display(),
                out_dir.join("ca.crt").display()
            );
        }
        Cmd::Keygen { out } => {
            let key = NodeKey::generate();
            write_private(&out, &key.to_armor()).map_err(|e| usage(e.to_string()))?;
            println!("{}", key.public_base64());
        }
        Cmd::Sign {
            ca_dir,
            name,
            ips,
            groups,
            site,
            role,
            subnets,
            days,
            pubkey,
            key,
            out,
        } => {
            let ca = load_ca_cert(&ca_dir.join("ca.crt")).map_err(|e| usage(e.to_string()))?;
            let ca_key = CaKey::load(&ca_dir.join("ca.key")).map_err(|e| usage(e.to_string()))?;
            if ca_key.signing.verifying_key().to_bytes() != ca.body.public_key {
                bail!(usage(format!(
                    "{}: ca.key does not belong to ca.crt",
                    ca_dir.display()
                )));
            }
            let public_key = match (pubkey, key) {
                (Some(b64), _) => {
                    decode_public_key(&b64).map_err(|e| usage(format!("--pubkey: {e}")))?
                }
                (None, Some(path)) => NodeKey::load(&path)
                    .map_err(|e| usage(e.to_string()))?
                    .public(),
                (None, None) => bail!(usage("one of --pubkey or --key is required")),
            };
            check_policy(&ca, &ips, &subnets).map_err(|e| usage(e.to_string()))?;
            let not_after = (now + days * 86_400).min(ca.body.not_after);
            let cert = NodeBody {
                name,
                public_key,
                addresses: ips,
                groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
                site,
                role,
                subnets,
                not_before: now.saturating_sub(60),
                not_after,
                ca_fingerprint: ca.fingerprint(),
            }
            .sign(&ca_key.signing)
            .map_err(|e| usage(e.to_string()))?;
            write_public(&out, &cert.to_armor())?;
            println!(
                "signed {} ({}) fingerprint {} valid until {}",
                cert.body.name,
                cert.body.role,
                cert.fingerprint(),
                format_rfc3339(cert.body.not_after)
            );
        }
        Cmd::Print {
            file,
            json: as_json,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))
                .map_err(|e| usage(format!("{e:#}")))?;
            let obj =
                decode_object(&text).map_err(|e| usage(format!("{}: {e}", file.display())))?;
            let v = match &obj {
                Object::Ca(c) => json::ca_json(c, now),
                Object::Node(c) => json::node_json(c, now),
                Object::RevocationList(c) => json::crl_json(c),
            };
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                // Every field as a line, in the document's order.
                print_text(&serde_json::to_value(&v)?);
            }
        }
        Cmd::Verify { ca, crl, at, file } => {
            let now = at.unwrap_or(now);
            let ca = load_ca_cert(&ca).map_err(|e| usage(e.to_string()))?;
            let mut anchor = TrustAnchor::new(ca, now).map_err(|e| anyhow!("{e}"))?;
            if let Some(path) = crl {
                let list = load_revocation_list(&path).map_err(|e| usage(e.to_string()))?;
                anchor
                    .offer_revocation_list(list)
                    .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            }
            let cert = load_node_cert(&file).map_err(|e| anyhow!("{e}"))?;
            anchor
                .validate(&cert, now)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            println!(
                "{}: valid: {} ({}) {} until {}",
                file.display(),
                cert.body.name,
                cert.body.role,
                cert.body
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                format_rfc3339(cert.body.not_after)
            );
        }
        Cmd::Revoke { ca_dir, crl, cert } => {
            let ca = load_ca_cert(&ca_dir.join("ca.crt")).map_err(|e| usage(e.to_string()))?;
            let ca_key = CaKey::load(&ca_dir.join("ca.key")).map_err(|e| usage(e.to_string()))?;
            let (fp, key) = if Path::new(&cert).exists() {
                let c = load_node_cert(Path::new(&cert)).map_err(|e| usage(e.to_string()))?;
                (c.fingerprint(), Some(Fingerprint::of_key(c.public_key())))
            } else {
                let fp = Fingerprint::from_hex(&cert).map_err(|_| {
                    usage(format!(
                        "{cert:?} is neither a certificate file nor a 64-digit hex fingerprint"
                    ))
                })?;
                (fp, None)
            };
            let (serial, mut revoked) = if crl.exists() {
                let list = load_revocation_list(&crl).map_err(|e| usage(e.to_string()))?;
                list.verify(&ca)
                    .map_err(|e| usage(format!("{}: {e}", crl.display())))?;
                (list.body.serial, list.body.revoked)
            } else {
                (0, BTreeSet::new())
            };
            let added = revoked.insert(fp) | key.is_some_and(|k| revoked.insert(k));
            let list = RevocationBody {
                ca_fingerprint: ca.fingerprint(),
                serial: serial + 1,
                issued_at: now,
                revoked,
            }
            .sign(&ca_key.signing)
            .map_err(|e| usage(e.to_string()))?;
            // Write then rename, so a reader never sees half a list.
            let tmp = crl.with_extension("tmp");
            write_public(&tmp, &list.to_armor())?;
            std::fs::rename(&tmp, &crl)
                .with_context(|| format!("renaming {} to {}", tmp.display(), crl.display()))?;
            println!(
                "{} {fp}{}; {} serial {} lists {} certificate(s) and key(s)",
                if added { "revoked" } else { "already revoked" },
                if key.is_some() { " and its key" } else { "" },
                crl.display(),
                list.body.serial,
                list.body.revoked.len()
            );
        }
    }
    Ok(())
}

fn print_text(v: &serde_json::Value) {
    let Some(map) = v.as_object() else { return };
    for (k, val) in map {
        let shown = match val {
            serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::Value::String(s) if s.is_empty() => "-".to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{k:<15} {shown}");
    }
}
