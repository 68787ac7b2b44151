//! The deterministic binary encoding shared by CA certificates, node
//! certificates and revocation lists: big-endian integers, length-prefixed
//! strings, fixed-size keys. A reader never panics: every read is bounds
//! checked and returns [`CertError::Truncated`] or [`CertError::Malformed`].

use crate::error::CertError;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Format version written by this build.
pub const VERSION: u8 = 1;

/// What an encoded object is; the second byte of every encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ca = 1,
    Node = 2,
    RevocationList = 3,
}

impl Kind {
    pub fn from_byte(b: u8) -> Result<Kind, CertError> {
        match b {
            1 => Ok(Kind::Ca),
            2 => Ok(Kind::Node),
            3 => Ok(Kind::RevocationList),
            other => Err(CertError::Malformed(format!("unknown object kind {other}"))),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Ca => "CA certificate",
            Kind::Node => "node certificate",
            Kind::RevocationList => "revocation list",
        }
    }
}

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(kind: Kind) -> Writer {
        Writer {
            buf: vec![VERSION, kind as u8],
        }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Strings are validated before encoding, so they always fit in u16.
    pub fn str(&mut self, s: &str) {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.buf.extend_from_slice(&s.as_bytes()[..len as usize]);
    }
    pub fn net(&mut self, n: &IpNet) {
        match n {
            IpNet::V4(n) => {
                self.u8(4);
                self.bytes(&n.addr().octets());
                self.u8(n.prefix_len());
            }
            IpNet::V6(n) => {
                self.u8(6);
                self.bytes(&n.addr().octets());
                self.u8(n.prefix_len());
            }
        }
    }
    /// Lists are validated to hold at most `u16::MAX` items.
    pub fn count(&mut self, n: usize) {
        self.u16(u16::try_from(n).unwrap_or(u16::MAX));
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading an encoding: checks the version and kind bytes.
    pub fn open(buf: &'a [u8], expected: Kind) -> Result<Reader<'a>, CertError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8("format version")?;
        if version != VERSION {
            return Err(CertError::UnknownVersion {
                found: version,
                supported: VERSION,
            });
        }
        let kind = Kind::from_byte(r.u8("object kind")?)?;
        if kind != expected {
            return Err(CertError::WrongKind {
                expected: expected.describe(),
                found: kind.describe(),
            });
        }
        Ok(r)
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CertError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(CertError::Truncated {
                what,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CertError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CertError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, CertError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, CertError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    pub fn str(&mut self, what: &'static str) -> Result<String, CertError> {
        let len = self.u16(what)? as usize;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| CertError::Malformed(format!("{what} is not UTF-8")))
    }
    pub fn net(&mut self, what: &'static str) -> Result<IpNet, CertError> {
        match self.u8(what)? {
            4 => {
                let a: [u8; 4] = self.array(what)?;
                let p = self.u8(what)?;
                Ipv4Net::new(Ipv4Addr::from(a), p)
                    .map(IpNet::V4)
                    .map_err(|_| CertError::Malformed(format!("{what}: prefix length {p} > 32")))
            }
            6 => {
                let a: [u8; 16] = self.array(what)?;
                let p = self.u8(what)?;
                Ipv6Net::new(Ipv6Addr::from(a), p)
                    .map(IpNet::V6)
                    .map_err(|_| CertError::Malformed(format!("{what}: prefix length {p} > 128")))
            }
            f => Err(CertError::Malformed(format!(
                "{what}: unknown address family {f}"
            ))),
        }
    }
    pub fn count(&mut self, what: &'static str) -> Result<usize, CertError> {
        Ok(self.u16(what)? as usize)
    }
    /// The whole input must be consumed: trailing bytes mean a malformed or
    /// concatenated object.
    pub fn finish(&self) -> Result<(), CertError> {
        if self.pos != self.buf.len() {
            return Err(CertError::Malformed(format!(
                "{} unexpected trailing byte(s)",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}
