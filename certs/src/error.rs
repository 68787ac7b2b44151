//! Typed errors of the certificate library. Every variant names its cause so
//! that `overlay-cert verify` and overlayd can tell an operator what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertError {
    #[error("truncated input: {what} needs {needed} more byte(s)")]
    Truncated { what: &'static str, needed: usize },
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("unknown format version {found} (this build understands version {supported})")]
    UnknownVersion { found: u8, supported: u8 },
    #[error("not armoured text: {0}")]
    Armor(String),
    #[error("expected a {expected}, found a {found}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "bad signature: the {what} was not signed by this CA's key or was altered after signing"
    )]
    BadSignature { what: &'static str },
    #[error("issued by another CA (certificate names CA {found}, trusted CA is {expected})")]
    OtherCa { expected: String, found: String },
    #[error("expired: not valid after {not_after} (checked at {now})")]
    Expired { not_after: String, now: String },
    #[error("not yet valid: not valid before {not_before} (checked at {now})")]
    NotYetValid { not_before: String, now: String },
    #[error("virtual IP {addr} is outside the CA's networks ({networks})")]
    AddressOutsideNetworks { addr: String, networks: String },
    #[error("subnet {subnet} is outside the CA's networks ({networks})")]
    SubnetOutsideNetworks { subnet: String, networks: String },
    #[error("a host certificate may not carry subnets (found {0}); use --role gateway")]
    SubnetOnHost(String),
    #[error("revoked: certificate {fingerprint} is on revocation list serial {serial}")]
    Revoked { fingerprint: String, serial: u64 },
    #[error("CA certificate is not valid: {0}")]
    CaInvalid(Box<CertError>),
    #[error("invalid field {field}: {problem}")]
    InvalidField {
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: private key is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` and check who could have read it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{path}: private key is owned by uid {owner}, not by this user (uid {me}) or root; \
         `chown` it to the user the daemon runs as"
    )]
    OtherOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("{path} already exists; refusing to overwrite a key or certificate")]
    Exists { path: PathBuf },
}
