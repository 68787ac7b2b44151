//! Text armour: `-----BEGIN LABEL-----`, base64 wrapped at 64 columns,
//! `-----END LABEL-----`. Survives copy and paste through mail and chat:
//! surrounding text, CRLF line ends and indentation are ignored.

use crate::error::CertError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

pub const CA_CERT: &str = "CUBENET CA CERTIFICATE";
pub const NODE_CERT: &str = "CUBENET CERTIFICATE";
pub const REVOCATION_LIST: &str = "CUBENET REVOCATION LIST";
pub const NODE_KEY: &str = "CUBENET PRIVATE KEY";
pub const CA_KEY: &str = "CUBENET CA PRIVATE KEY";

pub fn encode(label: &str, data: &[u8]) -> String {
    let b64 = STANDARD.encode(data);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Finds the first armoured block in `text` and returns its label and bytes.
pub fn decode_any(text: &str) -> Result<(String, Vec<u8>), CertError> {
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let Some(line) = lines.next() else {
            return Err(CertError::Armor("no -----BEGIN ...----- line".into()));
        };
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            let Some(label) = rest.strip_suffix("-----") else {
                return Err(CertError::Armor(format!("malformed BEGIN line {line:?}")));
            };
            break label.to_string();
        }
    };
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines {
        if line == end {
            let data = STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| CertError::Armor(format!("bad base64 in {label}: {e}")))?;
            return Ok((label, data));
        }
        if line.starts_with("-----") && end.starts_with(line) {
            break;
        }
        if line.starts_with("-----") {
            return Err(CertError::Armor(format!(
                "expected {end:?}, found {line:?}"
            )));
        }
        b64.push_str(line);
    }
    Err(CertError::Armor(format!(
        "truncated: no {end:?} line (the text was cut off)"
    )))
}

/// Decodes a block that must carry `label`.
pub fn decode(text: &str, label: &'static str) -> Result<Vec<u8>, CertError> {
    let (found, data) = decode_any(text)?;
    if found != label {
        return Err(CertError::Armor(format!(
            "expected a {label} block, found {found}"
        )));
    }
    Ok(data)
}
