//! The per-server firewall on virtual addresses, sans IO: rules by address,
//! name, group and site, first match wins, one list per direction, and
//! connection tracking so replies to an allowed flow pass.
//!
//! A packet is judged from the point of view of this node: inbound packets
//! come from a peer to one of our addresses (the remote end is the source),
//! outbound packets leave our TUN (the remote end is the destination). The
//! identity behind a remote address (its certificate's name, groups and
//! site) comes from the caller; until it is known only address rules can
//! match.

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Connection-tracking timeouts.
const TCP_OPENING: Duration = Duration::from_secs(30);
const TCP_ESTABLISHED: Duration = Duration::from_secs(3600);
const TCP_CLOSING: Duration = Duration::from_secs(30);
const TCP_RESET: Duration = Duration::from_secs(5);
const UDP_NEW: Duration = Duration::from_secs(30);
const UDP_REPLIED: Duration = Duration::from_secs(180);
const ICMP_TIMEOUT: Duration = Duration::from_secs(30);
/// Flows tracked at most; beyond, new flows are dropped (and counted).
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
/// Later fragments of an IPv4 or IPv6 datagram follow the verdict on its first
/// fragment for this long (Linux reassembles for 30 s at most).
const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Oldest flows looked at to make room in a full table, at most.
const EVICTION_LOOKS: usize = 64;
/// Datagrams whose later fragments are let through, at most.
const MAX_FRAGMENTED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "any" => Some(Proto::Any),
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" => Some(Proto::Icmp),
            _ => None,
        }
    }
    fn matches(self, p: u8) -> bool {
        match self {
            Proto::Any => true,
            Proto::Tcp => p == TCP,
            Proto::Udp => p == UDP,
            Proto::Icmp => p == ICMP || p == ICMPV6,
        }
    }
    pub fn number(self, v6: bool) -> u8 {
        match self {
            Proto::Any => 0,
            Proto::Tcp => TCP,
            Proto::Udp => UDP,
            Proto::Icmp if v6 => ICMPV6,
            Proto::Icmp => ICMP,
        }
    }
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Group(String),
    Name(String),
    Site(String),
    Net(IpNet),
}

impl Peer {
    pub fn parse(s: &str) -> Result<Peer, String> {
        let label = |kind: &str, v: &str| {
            if v.is_empty() {
                Err(format!("{s:?}: empty {kind}"))
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(v) = s.strip_prefix("group:") {
            return label("group", v).map(Peer::Group);
        }
        if let Some(v) = s.strip_prefix("name:") {
            return label("name", v).map(Peer::Name);
        }
        if let Some(v) = s.strip_prefix("site:") {
            return label("site", v).map(Peer::Site);
        }
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(Peer::Net(n.trunc()));
        }
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(Peer::Net(IpNet::from(a)));
        }
        Err(format!(
            "{s:?}: expected \"group:G\", \"name:N\", \"site:S\" or an address/CIDR"
        ))
    }

    /// A name, group or site: decided by the certificate behind the
    /// address.
    fn names_identity(&self) -> bool {
        !matches!(self, Peer::Net(_))
    }

    fn matches(&self, addr: IpAddr, id: Option<&Identity>) -> bool {
        match self {
            Peer::Net(n) => n.contains(&addr),
            Peer::Group(g) => id.is_some_and(|i| i.groups.iter().any(|x| x == g)),
            Peer::Name(n) => id.is_some_and(|i| &i.name == n),
            Peer::Site(s) => id.is_some_and(|i| &i.site == s),
        }
    }
}

/// What a node knows of the identity behind a remote address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Known(Identity),
    /// Asked and not answered yet: a rule naming identities cannot be
    /// decided for it. A deny rule that might match denies (fail closed);
    /// an allow rule that might match does not allow.
    Pending,
    /// There is none to be had: not an overlay address, or nobody holds a
    /// certificate for it.
    Nobody,
}

impl Lookup {
    pub fn known(&self) -> Option<&Identity> {
        match self {
            Lookup::Known(i) => Some(i),
            _ => None,
        }
    }
}

impl From<Option<Identity>> for Lookup {
    fn from(i: Option<Identity>) -> Lookup {
        i.map_or(Lookup::Nobody, Lookup::Known)
    }
}

/// The certificate facts behind a remote address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
    pub site: String,
    /// A gateway: a router on the way, whose ICMP errors about a flow
    /// count (it is not the flow's other end).
    pub gateway: bool,
}

impl From<&cubenet_certs::NodeCert> for Identity {
    fn from(c: &cubenet_certs::NodeCert) -> Identity {
        Identity {
            name: c.name().to_string(),
            groups: c.body.groups.clone(),
            site: c.body.site.clone(),
            gateway: c.role() == cubenet_certs::Role::Gateway,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub proto: Proto,
    /// Destination port range of the packet that opens a flow.
    pub ports: Option<(u16, u16)>,
    /// Any of these; empty = anyone.
    pub peers: Vec<Peer>,
    /// The rule as written, for `explain` and logs.
    pub text: String,
}

impl Rule {
    /// Whether the rule matches the flow; `None` when that hangs on an
    /// identity still being asked.
    fn matches(&self, f: &Flow, id: &Lookup) -> Option<bool> {
        if !self.proto.matches(f.proto) {
            return Some(false);
        }
        if let Some((lo, hi)) = self.ports {
            if !(f.proto == TCP || f.proto == UDP) || f.dport < lo || f.dport > hi {
                return Some(false);
            }
        }
        if self.peers.is_empty() || self.peers.iter().any(|p| p.matches(f.remote, id.known())) {
            return Some(true);
        }
        if *id == Lookup::Pending && self.peers.iter().any(Peer::names_identity) {
            return None;
        }
        Some(false)
    }
}

/// `[firewall]` in overlayd's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    pub inbound_default: Option<String>,
    pub outbound_default: Option<String>,
    /// Flows tracked at most.
    pub max_flows: Option<usize>,
    /// Flows of one remote address at most (default an eighth of
    /// `max_flows`): one peer cannot fill the table for the others.
    pub max_flows_per_remote: Option<usize>,
    /// Answer inbound packets a rule or the default denies with ICMP
    /// administratively prohibited (ICMPv6 administratively prohibited),
    /// rate limited, so their senders fail at once instead of timing out.
    #[serde(default)]
    pub reject: bool,
    #[serde(default)]
    pub inbound: Vec<RuleConfig>,
    #[serde(default)]
    pub outbound: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: String,
    pub proto: Option<String>,
    pub port: Option<String>,
    pub from: Option<Vec<String>>,
    pub to: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
    pub inbound_default: Action,
    pub outbound_default: Action,
    pub max_flows: usize,
    pub max_flows_per_remote: usize,
    /// Denied inbound packets get administratively prohibited back.
    pub reject: bool,
}

impl Default for Policy {
    /// No `[firewall]`: everything passes (a node without rules).
    fn default() -> Self {
        Policy {
            inbound: Vec::new(),
            outbound: Vec::new(),
            inbound_default: Action::Allow,
            outbound_default: Action::Allow,
            max_flows: DEFAULT_MAX_FLOWS,
            max_flows_per_remote: DEFAULT_MAX_FLOWS / 8,
            reject: false,
        }
    }
}

fn parse_ports(s: &str) -> Result<Option<(u16, u16)>, String> {
    if s == "any" {
        return Ok(None);
    }
    let num = |x: &str| {
        x.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?}: expected \"N\", \"N-M\" or \"any\" with ports 0-65535"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let p = num(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("{s:?}: the range is backwards"));
    }
    Ok(Some((lo, hi)))
}

fn rule_text(dir: Direction, r: &RuleConfig) -> String {
    let mut t = format!("{} {}", r.action, r.proto.as_deref().unwrap_or("any"));
    if let Some(p) = &r.port {
        t.push_str(&format!(" port {p}"));
    }
    let (word, list) = match dir {
        Direction::Inbound => ("from", &r.from),
        Direction::Outbound => ("to", &r.to),
    };
    if let Some(l) = list {
        t.push_str(&format!(" {word} {}", l.join(",")));
    }
    t
}

impl Policy {
    /// Builds the policy; errors name `firewall.<dir>[i].<key>`.
    pub fn from_config(c: &FirewallConfig) -> Result<Policy, String> {
        let default = |key: &str, v: &Option<String>, d: Action| match v.as_deref() {
            None => Ok(d),
            Some(s) => Action::parse(s)
                .ok_or_else(|| format!("firewall.{key}: {s:?}: expected \"allow\" or \"deny\"")),
        };
        let rules = |dir: Direction, list: &[RuleConfig]| -> Result<Vec<Rule>, String> {
            let mut out = Vec::new();
            for (i, r) in list.iter().enumerate() {
                let at = format!("firewall.{}[{i}]", dir.as_str());
                let action = Action::parse(&r.action).ok_or_else(|| {
                    format!(
                        "{at}.action: {:?}: expected \"allow\" or \"deny\"",
                        r.action
                    )
                })?;
                let proto = match r.proto.as_deref() {
                    None => Proto::Any,
                    Some(p) => Proto::parse(p).ok_or_else(|| {
                        format!("{at}.proto: {p:?}: expected tcp, udp, icmp or any")
                    })?,
                };
                let ports = match &r.port {
                    None => None,
                    Some(p) => parse_ports(p).map_err(|e| format!("{at}.port: {e}"))?,
                };
                if ports.is_some() && !matches!(proto, Proto::Tcp | Proto::Udp) {
                    return Err(format!("{at}.port: ports need proto tcp or udp"));
                }
                let (key, list, wrong) = match dir {
                    Direction::Inbound => ("from", &r.from, r.to.is_some().then_some("to")),
                    Direction::Outbound => ("to", &r.to, r.from.is_some().then_some("from")),
                };
                if let Some(w) = wrong {
                    return Err(format!(
                        "{at}.{w}: {} rules name peers with \"{key}\"",
                        dir.as_str()
                    ));
                }
                let mut peers = Vec::new();
                for (j, s) in list.iter().flatten().enumerate() {
                    peers.push(Peer::parse(s).map_err(|e| format!("{at}.{key}[{j}]: {e}"))?);
                }
                if list.as_ref().is_some_and(|l| l.is_empty()) {
                    return Err(format!(
                        "{at}.{key}: an empty list matches nobody; omit it to match anyone"
                    ));
                }
                out.push(Rule {
                    action,
                    proto,
                    ports,
                    peers,
                    text: rule_text(dir, r),
                });
            }
            Ok(out)
        };
        Ok(Policy {
            inbound: rules(Direction::Inbound, &c.inbound)?,
            outbound: rules(Direction::Outbound, &c.outbound)?,
            inbound_default: default("inbound_default", &c.inbound_default, Action::Deny)?,
            outbound_default: default("outbound_default", &c.outbound_default, Action::Allow)?,
            max_flows: c.max_flows.unwrap_or(DEFAULT_MAX_FLOWS).max(1),
            max_flows_per_remote: c
                .max_flows_per_remote
                .unwrap_or(c.max_flows.unwrap_or(DEFAULT_MAX_FLOWS) / 8)
                .max(1),
            reject: c.reject,
        })
    }

    fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    fn default_for(&self, dir: Direction) -> Action {
        match dir {
            Direction::Inbound => self.inbound_default,
            Direction::Outbound => self.outbound_default,
        }
    }

    /// The first matching rule (index) and the action. A deny rule that
    /// may match once the identity is known denies now (fail closed): a
    /// later, broader rule never lets through what it would deny.
    fn decide(&self, dir: Direction, f: &Flow, id: &Lookup) -> Decision {
        for (i, r) in self.rules(dir).iter().enumerate() {
            match r.matches(f, id) {
                Some(true) => return Decision::rule(r.action, i, false),
                None if r.action == Action::Deny => return Decision::rule(Action::Deny, i, true),
                _ => {}
            }
        }
        Decision {
            action: self.default_for(dir),
            rule: None,
            pending: false,
        }
    }
}

/// A policy's decision on a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    action: Action,
    rule: Option<usize>,
    /// Denied by a rule that names an identity not known yet.
    pending: bool,
}

impl Decision {
    fn rule(action: Action, i: usize, pending: bool) -> Decision {
        Decision {
            action,
            rule: Some(i),
            pending,
        }
    }
}

/// What the firewall looks at in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP type, for ICMP and ICMPv6.
    pub icmp_type: Option<u8>,
    /// For ICMP errors: the packet they quote (its addresses and ports).
    pub quoted: Option<(IpAddr, IpAddr, u8, u16, u16)>,
}

const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// What the IP header (and IPv6's extension headers) of a packet say.
struct Header {
    src: IpAddr,
    dst: IpAddr,
    /// The transport protocol (for IPv6 the header after the extension
    /// headers).
    proto: u8,
    /// Where the transport header starts; the packet's end for a later
    /// fragment (it carries none).
    l4: usize,
    v6: bool,
    /// For a fragment: what ties its datagram's fragments together, and
    /// whether it is the first (the one with the transport header).
    fragment: Option<(FragmentKey, bool)>,
}

/// IPv6 extension headers walked before the transport, at most.
const MAX_EXTENSION_HEADERS: usize = 8;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;

/// Parses an IP header; never panics. IPv6 extension headers are walked to
/// the transport header: a packet whose chain is longer than
/// [`MAX_EXTENSION_HEADERS`] or cut short is not parsed (and is dropped as
/// malformed), so nothing hides a port behind them.
fn ip_header(b: &[u8]) -> Option<Header> {
    match b.first()? >> 4 {
        4 => {
            let ihl = usize::from(b[0] & 0x0f) * 4;
            if ihl < 20 || b.len() < ihl {
                return None;
            }
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
            let flags = be16(b, 6)?;
            let offset = flags & 0x1fff;
            let more = flags & 0x2000 != 0;
            let fragment = (offset != 0 || more).then(|| {
                let key = FragmentKey {
                    src: src.into(),
                    dst: dst.into(),
                    proto: b[9],
                    id: u32::from(be16(b, 4).unwrap_or(0)),
                };
                (key, offset == 0)
            });
            // A later fragment carries no L4 header.
            let l4 = if offset != 0 { b.len() } else { ihl };
            Some(Header {
                src: src.into(),
                dst: dst.into(),
                proto: b[9],
                l4,
                v6: false,
                fragment,
            })
        }
        6 => {
            if b.len() < 40 {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            let src = IpAddr::V6(Ipv6Addr::from(a));
            a.copy_from_slice(&b[24..40]);
            let dst = IpAddr::V6(Ipv6Addr::from(a));
            let mut next = b[6];
            let mut at = 40;
            let mut fragment = None;
            for _ in 0..=MAX_EXTENSION_HEADERS {
                let len = match next {
                    HOP_BY_HOP | ROUTING | DEST_OPTS => (usize::from(*b.get(at + 1)?) + 1) * 8,
                    AUTH => (usize::from(*b.get(at + 1)?) + 2) * 4,
                    FRAGMENT => 8,
                    _ => {
                        return Some(Header {
                            src,
                            dst,
                            proto: next,
                            l4: at,
                            v6: true,
                            fragment,
                        })
                    }
                };
                if b.len() < at + len.max(2) {
                    return None;
                }
                let header_next = b[at];
                if next == FRAGMENT {
                    let f = be16(b, at + 2)?;
                    let offset = f >> 3;
                    let more = f & 1 != 0;
                    if offset != 0 || more {
                        let key = FragmentKey {
                            src,
                            dst,
                            // The same in every fragment of the datagram.
                            proto: header_next,
                            id: u32::from_be_bytes(b[at + 4..at + 8].try_into().ok()?),
                        };
                        fragment = Some((key, offset == 0));
                    }
                    if offset != 0 {
                        // A later fragment: what follows is payload.
                        return Some(Header {
                            src,
                            dst,
                            proto: header_next,
                            l4: b.len(),
                            v6: true,
                            fragment,
                        });
                    }
                }
                next = header_next;
                at += len;
            }
            None
        }
        _ => None,
    }
}

fn ports(b: &[u8], l4: usize) -> (u16, u16) {
    (be16(b, l4).unwrap_or(0), be16(b, l4 + 2).unwrap_or(0))
}

/// Parses what the firewall needs; `None` for what is not IP.
pub fn parse(b: &[u8]) -> Option<Packet> {
    let Header {
        src,
        dst,
        proto,
        l4,
        v6,
        ..
    } = ip_header(b)?;
    let mut p = Packet {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: None,
        quoted: None,
    };
    match proto {
        TCP | UDP => {
            let (s, d) = ports(b, l4);
            p.sport = s;
            p.dport = d;
            if proto == TCP {
                p.tcp_flags = b.get(l4 + 13).copied().unwrap_or(0);
            }
        }
        ICMP | ICMPV6 => {
            let t = b.get(l4).copied()?;
            p.icmp_type = Some(t);
            let is_error = if v6 {
                t < 128
            } else {
                matches!(t, 3 | 4 | 5 | 11 | 12)
            };
            if is_error {
                if let Some(Header {
                    src: qs,
                    dst: qd,
                    proto: qp,
                    l4: ql4,
                    ..
                }) = b.get(l4 + 8..).and_then(ip_header)
                {
                    let inner = &b[l4 + 8..];
                    let (s, d) = match qp {
                        TCP | UDP => ports(inner, ql4),
                        _ => (echo_id(inner, ql4), 0),
                    };
                    p.quoted = Some((qs, qd, qp, s, d));
                }
            } else {
                // Echo: the identifier plays the port.
                p.sport = echo_id(b, l4);
            }
        }
        _ => {}
    }
    Some(p)
}

fn echo_id(b: &[u8], l4: usize) -> u16 {
    be16(b, l4 + 4).unwrap_or(0)
}

/// A flow as judged: its protocol, the remote end, the destination port of
/// the opening packet.
#[derive(Debug, Clone, Copy)]
struct Flow {
    proto: u8,
    remote: IpAddr,
    dport: u16,
}

/// Connection-tracking key: the opening packet's source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

#[derive(Debug, Clone)]
struct Entry {
    dir: Direction,
    /// When the flow was opened: tells this entry from a later one of the
    /// same key in the eviction queue.
    opened: Instant,
    expires: Instant,
    replied: bool,
    fin_from_orig: bool,
    fin_from_reply: bool,
    rule: Option<usize>,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Denied by rule `Some(i)` of its direction, or by the default.
    Deny(Option<usize>),
    Malformed,
    TableFull,
    /// The remote already has `max_flows_per_remote` flows.
    RemoteFull,
    /// A later IPv4 fragment whose first fragment did not pass.
    OrphanFragment,
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub inbound_hits: Vec<u64>,
    pub outbound_hits: Vec<u64>,
    pub inbound_default: u64,
    pub outbound_default: u64,
    pub tracked_pass: u64,
    pub dropped: u64,
    pub malformed: u64,
    pub table_full: u64,
    pub cut_by_reload: u64,
    /// Later IPv4 fragments whose first fragment was not let through (or
    /// came after them).
    pub orphan_fragments: u64,
    /// Denied by a rule naming an identity that was still being asked.
    pub identity_pending: u64,
    /// New flows refused: their remote had `max_flows_per_remote`.
    pub remote_full: u64,
    /// Flows never answered, evicted for a new one in a full table.
    pub evicted: u64,
}

pub struct Firewall {
    pub policy: Policy,
    flows: HashMap<Key, Entry>,
    /// Tracked flows per remote address.
    per_remote: HashMap<IpAddr, usize>,
    /// Flows in the order they opened, for eviction (entries of flows gone
    /// since are skipped when reached, and pruned with the expiry).
    order: std::collections::VecDeque<(Key, Instant)>,
    /// Datagrams whose first fragment passed, until when their later
    /// fragments (no ports in them) pass too.
    fragmented: HashMap<FragmentKey, Instant>,
    pub counters: Counters,
}

/// What ties the fragments of one datagram together (RFC 791, RFC 8200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragmentKey {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

/// For a fragment of a datagram: its key, and whether it is the first.
/// `None` for a whole datagram (or an IPv6 atomic fragment).
fn fragment_of(b: &[u8]) -> Option<(FragmentKey, bool)> {
    ip_header(b)?.fragment
}

/// The flow of a packet. An ICMP echo's identifier stands for both ports,
/// so a reply (addresses swapped, same identifier) is the reverse of its
/// request.
fn key_of(p: &Packet) -> Key {
    let icmp = matches!(p.proto, ICMP | ICMPV6);
    Key {
        proto: p.proto,
        src: p.src,
        sport: p.sport,
        dst: p.dst,
        dport: if icmp { p.sport } else { p.dport },
    }
}

fn reverse(k: &Key) -> Key {
    Key {
        proto: k.proto,
        src: k.dst,
        sport: k.dport,
        dst: k.src,
        dport: k.sport,
    }
}

/// ICMP types that open a flow (echo request) vs answer one.
fn icmp_opens(proto: u8, t: u8) -> bool {
    (proto == ICMP && t == 8) || (proto == ICMPV6 && t == 128)
}

impl Firewall {
    pub fn new(policy: Policy) -> Firewall {
        let counters = Counters {
            inbound_hits: vec![0; policy.inbound.len()],
            outbound_hits: vec![0; policy.outbound.len()],
            ..Counters::default()
        };
        Firewall {
            policy,
            flows: HashMap::new(),
            per_remote: HashMap::new(),
            order: Default::default(),
            fragmented: HashMap::new(),
            counters,
        }
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Judges one packet. `identity` looks up the certificate behind an
    /// address, if known. The later fragments of a datagram carry no
    /// ports: they pass when its first fragment passed, else they drop.
    pub fn check(
        &mut self,
        dir: Direction,
        pkt: &[u8],
        now: Instant,
        identity: &dyn Fn(IpAddr) -> Lookup,
    ) -> Verdict {
        let fragment = fragment_of(pkt);
        if let Some((k, false)) = fragment {
            if self.fragmented.get(&k).is_some_and(|t| *t > now) {
                self.counters.tracked_pass += 1;
                return Verdict::Pass;
            }
            self.counters.orphan_fragments += 1;
            self.counters.dropped += 1;
            return Verdict::OrphanFragment;
        }
        let v = self.judge(dir, pkt, now, identity);
        if let (Some((k, true)), Verdict::Pass) = (fragment, v) {
            if self.fragmented.len() >= MAX_FRAGMENTED {
                self.fragmented.retain(|_, t| *t > now);
            }
            if self.fragmented.len() < MAX_FRAGMENTED {
                self.fragmented.insert(k, now + FRAGMENT_TIMEOUT);
            }
        }
        v
    }

    fn judge(
        &mut self,
        dir: Direction,
        pkt: &[u8],
        now: Instant,
        identity: &dyn Fn(IpAddr) -> Lookup,
    ) -> Verdict {
        let Some(p) = parse(pkt) else {
            self.counters.malformed += 1;
            self.counters.dropped += 1;
            return Verdict::Malformed;
        };
        let k = key_of(&p);
        // A packet of a tracked flow, either way.
        if let Some(e) = self.flows.get_mut(&k) {
            if e.expires > now {
                track(e, &p, true, now);
                self.counters.tracked_pass += 1;
                return Verdict::Pass;
            }
        }
        let rk = reverse(&k);
        if let Some(e) = self.flows.get_mut(&rk) {
            if e.expires > now {
                track(e, &p, false, now);
                self.counters.tracked_pass += 1;
                return Verdict::Pass;
            }
        }
        // An ICMP error about a tracked flow.
        if let Some((qs, qd, qp, qsp, qdp)) = p.quoted {
            let qk = Key {
                proto: qp,
                src: qs,
                sport: qsp,
                dst: qd,
                dport: if matches!(qp, ICMP | ICMPV6) {
                    qsp
                } else {
                    qdp
                },
            };
            let live = |k: &Key| self.flows.get(k).is_some_and(|e| e.expires > now);
            // Only from where such an error can come (audit L9): the
            // flow's other end, or a gateway on the way; not from any
            // node that learned the flow's ports (a forged packet too big
            // or unreachable).
            let from_path = || p.src == qd || identity(p.src).known().is_some_and(|i| i.gateway);
            if (live(&qk) || live(&reverse(&qk))) && from_path() {
                self.counters.tracked_pass += 1;
                return Verdict::Pass;
            }
        }
        let remote = match dir {
            Direction::Inbound => p.src,
            Direction::Outbound => p.dst,
        };
        let f = Flow {
            proto: p.proto,
            remote,
            dport: p.dport,
        };
        let id = identity(remote);
        let Decision {
            action,
            rule,
            pending,
        } = self.policy.decide(dir, &f, &id);
        if pending {
            // Not tracked: the next packet is judged again, with the
            // identity once the answer is in.
            self.counters.identity_pending += 1;
        }
        match (dir, rule) {
            (Direction::Inbound, Some(i)) => self.counters.inbound_hits[i] += 1,
            (Direction::Outbound, Some(i)) => self.counters.outbound_hits[i] += 1,
            (Direction::Inbound, None) => self.counters.inbound_default += 1,
            (Direction::Outbound, None) => self.counters.outbound_default += 1,
        }
        if action == Action::Deny {
            self.counters.dropped += 1;
            return Verdict::Deny(rule);
        }
        // Allowed: track what opens a flow (TCP SYN, UDP, ICMP echo), and
        // pick up a TCP flow already running (after a reload or restart).
        let opens = match p.proto {
            TCP => p.tcp_flags & RST == 0,
            UDP => true,
            ICMP | ICMPV6 => p.icmp_type.is_some_and(|t| icmp_opens(p.proto, t)),
            _ => true,
        };
        if opens {
            if self.per_remote.get(&remote).copied().unwrap_or(0)
                >= self.policy.max_flows_per_remote
            {
                self.counters.remote_full += 1;
                self.counters.dropped += 1;
                return Verdict::RemoteFull;
            }
            if self.flows.len() >= self.policy.max_flows && !self.evict_one(now) {
                self.counters.table_full += 1;
                self.counters.dropped += 1;
                return Verdict::TableFull;
            }
            let mut e = Entry {
                dir,
                opened: now,
                expires: now,
                replied: false,
                fin_from_orig: false,
                fin_from_reply: false,
                rule,
            };
            track(&mut e, &p, true, now);
            // A TCP flow picked up mid-way (after a reload or restart) is
            // opening until the other side answers: a stream of bare ACKs
            // holds a place for 30 s, not an hour.
            *self.per_remote.entry(remote).or_insert(0) += 1;
            self.order.push_back((k, now));
            if let Some(old) = self.flows.insert(k, e) {
                // An expired entry of the same key, replaced.
                self.forget_remote(&k, &old);
            }
        }
        Verdict::Pass
    }

    /// Installs new rules: tracked flows the new rules deny are cut, the
    /// rest go on. Returns how many were cut.
    pub fn reload(
        &mut self,
        policy: Policy,
        now: Instant,
        identity: &dyn Fn(IpAddr) -> Lookup,
    ) -> usize {
        // Datagrams in pieces are judged anew by their next first fragment.
        self.fragmented.clear();
        let cut = self.retain_flows(|k, e| Self::keeps_after_reload(&policy, k, e, now, identity));
        self.counters.cut_by_reload += cut as u64;
        self.counters.inbound_hits = vec![0; policy.inbound.len()];
        self.counters.outbound_hits = vec![0; policy.outbound.len()];
        self.policy = policy;
        cut
    }

    /// Whether a tracked flow lives on under `policy` (it is re-judged;
    /// its rule index follows).
    fn keeps_after_reload(
        policy: &Policy,
        k: &Key,
        e: &mut Entry,
        now: Instant,
        identity: &dyn Fn(IpAddr) -> Lookup,
    ) -> bool {
        {
            if e.expires <= now {
                return false;
            }
            let remote = match e.dir {
                Direction::Inbound => k.src,
                Direction::Outbound => k.dst,
            };
            let f = Flow {
                proto: k.proto,
                remote,
                dport: k.dport,
            };
            let d = policy.decide(e.dir, &f, &identity(remote));
            e.rule = d.rule;
            d.action == Action::Allow
        }
    }

    fn remote_of(k: &Key, e: &Entry) -> IpAddr {
        match e.dir {
            Direction::Inbound => k.src,
            Direction::Outbound => k.dst,
        }
    }

    /// A flow left the table: its remote has one fewer.
    fn count_gone(per_remote: &mut HashMap<IpAddr, usize>, k: &Key, e: &Entry) {
        let r = Self::remote_of(k, e);
        if let Some(n) = per_remote.get_mut(&r) {
            *n -= 1;
            if *n == 0 {
                per_remote.remove(&r);
            }
        }
    }

    /// Keeps the flows `keep` accepts; the rest leave the per-remote counts
    /// and the eviction queue too. Returns how many went.
    fn retain_flows(&mut self, mut keep: impl FnMut(&Key, &mut Entry) -> bool) -> usize {
        let before = self.flows.len();
        let per_remote = &mut self.per_remote;
        self.flows.retain(|k, e| {
            let kept = keep(k, e);
            if !kept {
                Self::count_gone(per_remote, k, e);
            }
            kept
        });
        self.prune_order();
        before - self.flows.len()
    }

    fn forget_remote(&mut self, k: &Key, e: &Entry) {
        Self::count_gone(&mut self.per_remote, k, e);
    }

    /// Makes room in a full table: the oldest flow that has expired or was
    /// never answered goes (a flood of unanswered opens cannot keep out
    /// the flows that work). Looks at a bounded number of the oldest; false
    /// when none of them could go.
    fn evict_one(&mut self, now: Instant) -> bool {
        for _ in 0..EVICTION_LOOKS {
            let Some((k, opened)) = self.order.pop_front() else {
                return false;
            };
            let Some(e) = self.flows.get(&k) else {
                continue;
            };
            if e.opened != opened {
                continue;
            }
            if e.expires <= now || !e.replied {
                let e = self.flows.remove(&k).expect("looked at just now");
                self.forget_remote(&k, &e);
                if e.expires > now {
                    self.counters.evicted += 1;
                }
                return true;
            }
            // Answered and live: it keeps its place, at the back.
            self.order.push_back((k, opened));
        }
        false
    }

    /// Drops queue entries of flows that are gone.
    fn prune_order(&mut self) {
        let flows = &self.flows;
        self.order
            .retain(|(k, opened)| flows.get(k).is_some_and(|e| e.opened == *opened));
    }

    /// Drops expired flows (call now and then, about once a second).
    pub fn expire(&mut self, now: Instant) {
        self.retain_flows(|_, e| e.expires > now);
        self.fragmented.retain(|_, t| *t > now);
    }

    /// A dry run: what happens to a flow opened by `remote` (inbound) or to
    /// `remote` (outbound).
    pub fn explain(
        &self,
        dir: Direction,
        remote: IpAddr,
        identity: Option<&Identity>,
        proto: Proto,
        port: Option<u16>,
    ) -> (Action, Option<(usize, String)>) {
        let f = Flow {
            proto: proto.number(remote.is_ipv6()),
            remote,
            dport: port.unwrap_or(0),
        };
        let d = self.policy.decide(dir, &f, &identity.cloned().into());
        (
            d.action,
            d.rule.map(|i| (i, self.policy.rules(dir)[i].text.clone())),
        )
    }
}

/// Updates a flow's state with a packet (`orig`: from the side that opened it).
fn track(e: &mut Entry, p: &Packet, orig: bool, now: Instant) {
    if !orig {
        e.replied = true;
    }
    e.expires = now
        + match p.proto {
            TCP => {
                if p.tcp_flags & RST != 0 {
                    TCP_RESET
                } else {
                    if p.tcp_flags & FIN != 0 {
                        if orig {
                            e.fin_from_orig = true;
                        } else {
                            e.fin_from_reply = true;
                        }
                    }
                    if e.fin_from_orig && e.fin_from_reply {
                        TCP_CLOSING
                    } else if e.replied && p.tcp_flags & ACK != 0 {
                        TCP_ESTABLISHED
                    } else {
                        TCP_OPENING
                    }
                }
            }
            UDP if e.replied => UDP_REPLIED,
            UDP => UDP_NEW,
            _ => ICMP_TIMEOUT,
        };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SYN: u8 = 0x02;

    fn policy(toml_text: &str) -> Result<Policy, String> {
        #[derive(Deserialize)]
        struct W {
            firewall: FirewallConfig,
        }
        let w: W = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Policy::from_config(&w.firewall)
    }

    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(l4);
        let len = b.len() as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[12] = 0x50;
        l4[13] = flags;
        v4(src, dst, TCP, &l4)
    }

    const ME: [u8; 4] = [10, 77, 1, 11];
    const WEB: [u8; 4] = [10, 77, 1, 12];
    const OTHER: [u8; 4] = [10, 77, 2, 11];

    fn ids(a: IpAddr) -> Lookup {
        match a.to_string().as_str() {
            "10.77.1.12" => Lookup::Known(Identity {
                name: "web1".into(),
                groups: vec!["db-clients".into()],
                site: "fra".into(),
                gateway: false,
            }),
            "10.77.2.11" => Lookup::Known(Identity {
                name: "ams-h1".into(),
                groups: vec![],
                site: "ams".into(),
                gateway: false,
            }),
            "10.77.0.1" => Lookup::Known(Identity {
                name: "fra-gw1".into(),
                groups: vec![],
                site: "fra".into(),
                gateway: true,
            }),
            _ => Lookup::Nobody,
        }
    }

    const DB: &str = "[firewall]\ninbound_default = \"deny\"\n\
        [[firewall.inbound]]\naction = \"deny\"\nproto = \"tcp\"\nport = \"5432\"\nfrom = [\"name:web9\"]\n\
        [[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nport = \"5432\"\nfrom = [\"group:db-clients\"]\n\
        [[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n";

    #[test]
    fn group_rule_allows_one_peer_and_default_denies_another() {
        let mut fw = Firewall::new(policy(DB).unwrap());
        let now = Instant::now();
        let syn = tcp(WEB, ME, 40000, 5432, SYN);
        assert_eq!(fw.check(Direction::Inbound, &syn, now, &ids), Verdict::Pass);
        let syn = tcp(OTHER, ME, 40000, 5432, SYN);
        assert_eq!(
            fw.check(Direction::Inbound, &syn, now, &ids),
            Verdict::Deny(None)
        );
        assert_eq!(fw.counters.inbound_hits, vec![0, 1, 0]);
        // Unknown identity: only address rules can match.
        let syn = tcp([10, 77, 3, 3], ME, 1, 5432, SYN);
        assert_eq!(
            fw.check(Direction::Inbound, &syn, now, &ids),
            Verdict::Deny(None)
        );
    }

    const ME6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x0b];
    const OTHER6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x0b];

    /// An IPv6 packet whose first next header is `next`, then `rest`
    /// (extension headers and the transport).
    fn v6(src: [u8; 16], dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0];
        b.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        b.extend_from_slice(&[next, 64]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(rest);
        b
    }

    fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[12] = 0x50;
        l4[13] = flags;
        l4
    }

    /// An 8-byte IPv6 extension header (hop-by-hop, routing, destination
    /// options) followed by `next`.
    fn ext8(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }

    /// An IPv6 fragment header (`next`, byte `offset`, more to come, `id`)
    /// and the fragment's `payload`.
    fn frag6(next: u8, offset: u16, more: bool, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend_from_slice(&((offset / 8) << 3 | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// Audit H4 (1): a port rule cannot be passed by putting an extension
    /// header in front of TCP. Before, the packet was taken as protocol 60
    /// with port 0 and fell through to the allow.
    #[test]
    fn a_port_rule_holds_behind_ipv6_extension_headers() {
        let mut fw = Firewall::new(
            policy("[firewall]\ninbound_default = \"deny\"\n[[firewall.inbound]]\naction = \"deny\"\nproto = \"tcp\"\nport = \"8080\"\n[[firewall.inbound]]\naction = \"allow\"\n").unwrap(),
        );
        let now = Instant::now();
        let syn = tcp_header(40000, 8080, SYN);
        for chain in [
            vec![DEST_OPTS],
            vec![HOP_BY_HOP, DEST_OPTS],
            vec![HOP_BY_HOP, ROUTING, DEST_OPTS],
        ] {
            let mut rest = Vec::new();
            for (i, _) in chain.iter().enumerate() {
                rest.extend(ext8(*chain.get(i + 1).unwrap_or(&TCP)));
            }
            rest.extend(&syn);
            let pkt = v6(OTHER6, ME6, chain[0], &rest);
            assert_eq!(parse(&pkt).map(|p| (p.proto, p.dport)), Some((TCP, 8080)));
            assert_eq!(
                fw.check(Direction::Inbound, &pkt, now, &ids),
                Verdict::Deny(Some(0)),
                "behind {chain:?}"
            );
        }
        // A chain longer than the walk allows is malformed, not passed.
        let mut rest = Vec::new();
        for _ in 0..=MAX_EXTENSION_HEADERS {
            rest.extend(ext8(DEST_OPTS));
        }
        rest.extend(&syn);
        let pkt = v6(OTHER6, ME6, DEST_OPTS, &rest);
        assert_eq!(
            fw.check(Direction::Inbound, &pkt, now, &ids),
            Verdict::Malformed
        );
        // Cut short inside a header: malformed too.
        let pkt = v6(OTHER6, ME6, DEST_OPTS, &[TCP, 3, 0, 0]);
        assert_eq!(
            fw.check(Direction::Inbound, &pkt, now, &ids),
            Verdict::Malformed
        );
    }

    /// Audit H4 (2): a host sends a fragmented IPv6 packet (a large ping
    /// reply); before, that opened the portless flow `{44, me, 0, R, 0}`
    /// and every fragmented packet from R then passed as tracked, a SYN to
    /// a denied port included. Now fragments are keyed by their datagram
    /// and judged by the transport header of the first.
    #[test]
    fn ipv6_fragments_open_nothing_and_follow_their_first() {
        let mut fw = Firewall::new(
            policy("[firewall]\ninbound_default = \"deny\"\n[[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n").unwrap(),
        );
        let now = Instant::now();
        // Our echo reply to R, in two fragments, goes out.
        let mut reply = vec![129u8, 0, 0, 0, 0, 7, 0, 1];
        reply.extend([0u8; 64]);
        let first = frag6(ICMPV6, 0, true, 1, &reply);
        let later = frag6(ICMPV6, 1232, false, 1, &[0; 64]);
        for p in [&first, &later] {
            assert_eq!(
                fw.check(
                    Direction::Outbound,
                    &v6(ME6, OTHER6, FRAGMENT, p),
                    now,
                    &ids
                ),
                Verdict::Pass
            );
        }
        // R's SYN to a port nothing allows, fragmented: its first fragment
        // is judged as TCP to 8080 and denied, and its later one with it.
        let syn_first = frag6(TCP, 0, true, 9, &tcp_header(40000, 8080, SYN));
        let pkt = v6(OTHER6, ME6, FRAGMENT, &syn_first);
        assert_eq!(parse(&pkt).map(|p| (p.proto, p.dport)), Some((TCP, 8080)));
        assert_eq!(
            fw.check(Direction::Inbound, &pkt, now, &ids),
            Verdict::Deny(None)
        );
        let syn_later = frag6(TCP, 24, false, 9, &[0; 16]);
        assert_eq!(
            fw.check(
                Direction::Inbound,
                &v6(OTHER6, ME6, FRAGMENT, &syn_later),
                now,
                &ids
            ),
            Verdict::OrphanFragment
        );
        // A fragmented ping from R is allowed by the icmp rule, all of it.
        let mut echo = vec![128u8, 0, 0, 0, 0, 8, 0, 1];
        echo.extend([0u8; 64]);
        let p1 = frag6(ICMPV6, 0, true, 11, &echo);
        let p2 = frag6(ICMPV6, 1232, false, 11, &[0; 64]);
        for p in [&p1, &p2] {
            assert_eq!(
                fw.check(Direction::Inbound, &v6(OTHER6, ME6, FRAGMENT, p), now, &ids),
                Verdict::Pass
            );
        }
    }

    /// One fragment of an IPv4 datagram: `id`, byte `offset`, more to come.
    fn fragment(src: [u8; 4], proto: u8, id: u16, offset: u16, more: bool, l4: &[u8]) -> Vec<u8> {
        let mut b = v4(src, ME, proto, l4);
        b[4..6].copy_from_slice(&id.to_be_bytes());
        let flags = (offset / 8) | if more { 0x2000 } else { 0 };
        b[6..8].copy_from_slice(&flags.to_be_bytes());
        b
    }

    #[test]
    fn later_fragments_follow_their_first() {
        let mut fw = Firewall::new(
            policy("[firewall]\ninbound_default = \"deny\"\n[[firewall.inbound]]\naction = \"allow\"\nproto = \"udp\"\nport = \"5000\"\n[[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n").unwrap(),
        );
        let now = Instant::now();
        let check = |fw: &mut Firewall, p: &[u8]| fw.check(Direction::Inbound, p, now, &ids);
        // A UDP datagram to the allowed port in three pieces: all pass.
        let mut udp = vec![0u8; 16];
        udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(
            check(&mut fw, &fragment(OTHER, UDP, 7, 0, true, &udp)),
            Verdict::Pass
        );
        assert_eq!(
            check(&mut fw, &fragment(OTHER, UDP, 7, 1480, true, &[9; 16])),
            Verdict::Pass
        );
        assert_eq!(
            check(&mut fw, &fragment(OTHER, UDP, 7, 2960, false, &[9; 16])),
            Verdict::Pass
        );
        // A large ping, the same.
        let echo = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(
            check(&mut fw, &fragment(OTHER, ICMP, 8, 0, true, &echo)),
            Verdict::Pass
        );
        assert_eq!(
            check(&mut fw, &fragment(OTHER, ICMP, 8, 1480, false, &[0; 8])),
            Verdict::Pass
        );
        // To a denied port: the first fragment is denied and the rest go
        // with it; pieces of another datagram (id, source) do not ride along.
        udp[2..4].copy_from_slice(&6000u16.to_be_bytes());
        assert_eq!(
            check(&mut fw, &fragment(OTHER, UDP, 9, 0, true, &udp)),
            Verdict::Deny(None)
        );
        assert_eq!(
            check(&mut fw, &fragment(OTHER, UDP, 9, 1480, false, &[9; 16])),
            Verdict::OrphanFragment
        );
        assert_eq!(
            check(&mut fw, &fragment(WEB, UDP, 7, 1480, false, &[9; 16])),
            Verdict::OrphanFragment
        );
        assert_eq!(fw.counters.orphan_fragments, 2);
        // They expire, and a reload forgets them.
        let later = now + FRAGMENT_TIMEOUT;
        assert_eq!(
            fw.check(
                Direction::Inbound,
                &fragment(OTHER, UDP, 7, 2960, false, &[9; 16]),
                later,
                &ids
            ),
            Verdict::OrphanFragment
        );
        assert_eq!(
            check(&mut fw, &fragment(OTHER, ICMP, 10, 0, true, &echo)),
            Verdict::Pass
        );
        let same = fw.policy.clone();
        fw.reload(same, now, &ids);
        assert_eq!(
            check(&mut fw, &fragment(OTHER, ICMP, 10, 1480, false, &[0; 8])),
            Verdict::OrphanFragment
        );
    }

    #[test]
    fn replies_pass_with_inbound_default_deny() {
        let mut fw = Firewall::new(policy("[firewall]\ninbound_default = \"deny\"\n").unwrap());
        let now = Instant::now();
        let out = tcp(ME, OTHER, 50000, 443, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &out, now, &ids),
            Verdict::Pass
        );
        let reply = tcp(OTHER, ME, 443, 50000, SYN | ACK);
        assert_eq!(
            fw.check(Direction::Inbound, &reply, now, &ids),
            Verdict::Pass
        );
        // Not a reply: another port.
        let stray = tcp(OTHER, ME, 443, 50001, ACK);
        assert_eq!(
            fw.check(Direction::Inbound, &stray, now, &ids),
            Verdict::Deny(None)
        );
        // The flow expires when idle.
        let later = now + TCP_OPENING + TCP_ESTABLISHED;
        assert_eq!(
            fw.check(Direction::Inbound, &reply, later, &ids),
            Verdict::Deny(None)
        );
    }

    /// The replies to our pings are the pings' flow (inbound default deny,
    /// no ICMP rule), and so are our replies to pings the rules let in;
    /// a reply with another identifier is not.
    #[test]
    fn echo_replies_belong_to_their_request() {
        let mut fw = Firewall::new(
            policy("[firewall]\ninbound_default = \"deny\"\noutbound_default = \"allow\"\n")
                .unwrap(),
        );
        let now = Instant::now();
        let ping = v4(ME, OTHER, ICMP, &[8, 0, 0, 0, 0, 7, 0, 1]);
        assert_eq!(
            fw.check(Direction::Outbound, &ping, now, &ids),
            Verdict::Pass
        );
        let reply = v4(OTHER, ME, ICMP, &[0, 0, 0, 0, 0, 7, 0, 1]);
        assert_eq!(
            fw.check(Direction::Inbound, &reply, now, &ids),
            Verdict::Pass
        );
        let stray = v4(OTHER, ME, ICMP, &[0, 0, 0, 0, 0, 8, 0, 1]);
        assert_eq!(
            fw.check(Direction::Inbound, &stray, now, &ids),
            Verdict::Deny(None)
        );
        // Pings let in by a rule are answered though outbound denies.
        let mut fw = Firewall::new(
            policy(
                "[firewall]\noutbound_default = \"deny\"\n\
                 [[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n",
            )
            .unwrap(),
        );
        let ping = v4(OTHER, ME, ICMP, &[8, 0, 0, 0, 0, 9, 0, 1]);
        assert_eq!(
            fw.check(Direction::Inbound, &ping, now, &ids),
            Verdict::Pass
        );
        let reply = v4(ME, OTHER, ICMP, &[0, 0, 0, 0, 0, 9, 0, 1]);
        assert_eq!(
            fw.check(Direction::Outbound, &reply, now, &ids),
            Verdict::Pass
        );
    }

    #[test]
    fn icmp_errors_of_a_tracked_flow_pass() {
        let mut fw = Firewall::new(policy("[firewall]\n").unwrap());
        let now = Instant::now();
        let out = v4(ME, OTHER, UDP, &[0xc3, 0x50, 0, 53, 0, 8, 0, 0]);
        assert_eq!(
            fw.check(Direction::Outbound, &out, now, &ids),
            Verdict::Pass
        );
        // Port unreachable quoting our datagram, from a router on the way.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&out);
        let err = v4([10, 77, 0, 1], ME, ICMP, &icmp);
        assert_eq!(fw.check(Direction::Inbound, &err, now, &ids), Verdict::Pass);
        // From the flow's other end too (port unreachable from OTHER).
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&out);
        let err = v4(OTHER, ME, ICMP, &icmp);
        assert_eq!(fw.check(Direction::Inbound, &err, now, &ids), Verdict::Pass);
        // Not from a third node that learned the flow (audit L9): a forged
        // fragmentation needed from web1 is judged by the rules.
        let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(&out);
        let forged = v4(WEB, ME, ICMP, &icmp);
        assert_eq!(
            fw.check(Direction::Inbound, &forged, now, &ids),
            Verdict::Deny(None)
        );
        // The same error about a flow we never had is judged by the rules.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&v4(ME, OTHER, UDP, &[0, 1, 0, 2, 0, 8, 0, 0]));
        let err = v4([10, 77, 0, 1], ME, ICMP, &icmp);
        assert_eq!(
            fw.check(Direction::Inbound, &err, now, &ids),
            Verdict::Deny(None)
        );
    }

    /// The README's own example, `deny tcp 25 to site:ams` with outbound
    /// default allow: while the identity behind the address is still being
    /// asked, a SYN to port 25 is denied (not let through by the default)
    /// and not tracked; once known, the rule decides. Allow rules by
    /// identity never allow an identity not known.
    #[test]
    fn identity_rules_fail_closed_while_the_identity_is_asked() {
        let p = policy(
            "[firewall]\n[[firewall.outbound]]\naction = \"deny\"\nproto = \"tcp\"\nport = \"25\"\nto = [\"site:ams\"]\n",
        )
        .unwrap();
        let mut fw = Firewall::new(p);
        let now = Instant::now();
        let asking = |_: IpAddr| Lookup::Pending;
        let smtp = tcp(ME, OTHER, 50000, 25, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &smtp, now, &asking),
            Verdict::Deny(Some(0))
        );
        assert_eq!(fw.counters.identity_pending, 1);
        assert_eq!(fw.flows(), 0, "a flow was tracked");
        // Ports the rule does not name are not held back.
        let web = tcp(ME, OTHER, 50000, 80, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &web, now, &asking),
            Verdict::Pass
        );
        // Known: an ams host is denied, a host of another site is not.
        let smtp = tcp(ME, OTHER, 50001, 25, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &smtp, now, &ids),
            Verdict::Deny(Some(0))
        );
        let fra = tcp(ME, [10, 77, 1, 12], 50002, 25, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &fra, now, &ids),
            Verdict::Pass
        );
        // Inbound: an allow by group waits for the identity too.
        let p = policy(
            "[firewall]\n[[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nfrom = [\"group:db-clients\"]\n\
             [[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nfrom = [\"10.77.0.0/16\"]\n",
        )
        .unwrap();
        let mut fw = Firewall::new(p);
        let syn = tcp([10, 77, 1, 12], ME, 40000, 5432, SYN);
        assert_eq!(
            fw.check(Direction::Inbound, &syn, now, &asking),
            Verdict::Pass,
            "the address rule after it decides"
        );
    }

    #[test]
    fn outbound_deny_blocks_and_explain_agrees() {
        let p = policy(
            "[firewall]\n[[firewall.outbound]]\naction = \"deny\"\nproto = \"tcp\"\nport = \"25\"\nto = [\"site:ams\"]\n",
        )
        .unwrap();
        let mut fw = Firewall::new(p);
        let now = Instant::now();
        let smtp = tcp(ME, OTHER, 50000, 25, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &smtp, now, &ids),
            Verdict::Deny(Some(0))
        );
        let web = tcp(ME, OTHER, 50000, 80, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &web, now, &ids),
            Verdict::Pass
        );
        let other: IpAddr = "10.77.2.11".parse().unwrap();
        let (a, r) = fw.explain(
            Direction::Outbound,
            other,
            ids(other).known(),
            Proto::Tcp,
            Some(25),
        );
        assert_eq!(a, Action::Deny);
        assert_eq!(r, Some((0, "deny tcp port 25 to site:ams".into())));
        let (a, r) = fw.explain(Direction::Outbound, other, None, Proto::Tcp, Some(25));
        assert_eq!((a, r), (Action::Allow, None));
    }

    #[test]
    fn reload_cuts_flows_the_new_rules_deny() {
        let mut fw = Firewall::new(policy(DB).unwrap());
        let now = Instant::now();
        let syn = tcp(WEB, ME, 40000, 5432, SYN);
        fw.check(Direction::Inbound, &syn, now, &ids);
        let ping = v4(WEB, ME, ICMP, &[8, 0, 0, 0, 0, 7, 0, 1]);
        assert_eq!(
            fw.check(Direction::Inbound, &ping, now, &ids),
            Verdict::Pass
        );
        assert_eq!(fw.flows(), 2);
        let without_db = "[firewall]\ninbound_default = \"deny\"\n\
            [[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\n";
        let cut = fw.reload(policy(without_db).unwrap(), now, &ids);
        assert_eq!(cut, 1);
        let data = tcp(WEB, ME, 40000, 5432, ACK);
        assert_eq!(
            fw.check(Direction::Inbound, &data, now, &ids),
            Verdict::Deny(None)
        );
        let pong = v4(ME, WEB, ICMP, &[0, 0, 0, 0, 0, 7, 0, 1]);
        assert_eq!(
            fw.check(Direction::Outbound, &pong, now, &ids),
            Verdict::Pass
        );
    }

    /// A full table makes room by evicting the oldest flow nobody
    /// answered (a flood of opens cannot keep working flows out); when
    /// every flow is answered, new ones are refused until some expire.
    #[test]
    fn a_full_table_evicts_unanswered_flows_and_keeps_answered_ones() {
        let mut fw =
            Firewall::new(policy("[firewall]\nmax_flows = 2\nmax_flows_per_remote = 2\n").unwrap());
        let now = Instant::now();
        let peers = [OTHER, [10, 77, 1, 12]];
        for (port, peer) in [1u16, 2].into_iter().zip(peers) {
            let p = tcp(ME, peer, port, 80, SYN);
            assert_eq!(fw.check(Direction::Outbound, &p, now, &ids), Verdict::Pass);
        }
        // Unanswered: the oldest goes for the newcomer.
        let p = tcp(ME, OTHER, 3, 80, SYN);
        assert_eq!(fw.check(Direction::Outbound, &p, now, &ids), Verdict::Pass);
        assert_eq!((fw.flows(), fw.counters.evicted), (2, 1));
        // Both answered now: a third is refused.
        for (port, peer) in [(3u16, OTHER), (2, [10, 77, 1, 12])] {
            let synack = tcp(peer, ME, 80, port, SYN | ACK);
            assert_eq!(
                fw.check(Direction::Inbound, &synack, now, &ids),
                Verdict::Pass
            );
        }
        let p = tcp(ME, OTHER, 4, 80, SYN);
        assert_eq!(
            fw.check(Direction::Outbound, &p, now, &ids),
            Verdict::TableFull
        );
        // Once they expire there is room again.
        let later = now + TCP_ESTABLISHED + Duration::from_secs(1);
        fw.expire(later);
        assert_eq!(fw.flows(), 0);
        assert_eq!(
            fw.check(Direction::Outbound, &p, later, &ids),
            Verdict::Pass
        );
    }

    proptest! {
        /// Whatever opens, answers, expires, evicts and reloads, the count
        /// of flows per remote is the table's, and the table stays within
        /// its bound.
        #[test]
        fn per_remote_counts_follow_the_table(
            ops in proptest::collection::vec((0u8..4, 0u8..4, 0u16..6, 0u64..40), 1..120)
        ) {
            let text = "[firewall]\nmax_flows = 6\nmax_flows_per_remote = 3\ninbound_default = \"allow\"\n";
            let mut fw = Firewall::new(policy(text).unwrap());
            let t0 = Instant::now();
            for (op, peer, port, secs) in ops {
                let now = t0 + Duration::from_secs(secs);
                let r = [10, 77, 3, 1 + peer];
                match op {
                    0 => { fw.check(Direction::Outbound, &tcp(ME, r, 1000 + port, 80, SYN), now, &ids); }
                    1 => { fw.check(Direction::Inbound, &tcp(r, ME, 80, 1000 + port, SYN | ACK), now, &ids); }
                    2 => fw.expire(now + Duration::from_secs(secs * 60)),
                    _ => { fw.reload(policy(text).unwrap(), now, &ids); }
                }
                let mut want: HashMap<IpAddr, usize> = HashMap::new();
                for (k, e) in &fw.flows {
                    *want.entry(Firewall::remote_of(k, e)).or_insert(0) += 1;
                }
                prop_assert_eq!(&fw.per_remote, &want);
                prop_assert!(fw.flows.len() <= 6);
                prop_assert!(want.values().all(|n| *n <= 3));
            }
        }
    }

    /// One remote gets its share of the table and no more: the others
    /// still open flows.
    #[test]
    fn one_remote_cannot_take_the_whole_table() {
        let mut fw = Firewall::new(
            policy(
                "[firewall]\nmax_flows = 100\nmax_flows_per_remote = 3\n\
                 [[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nport = \"22\"\n",
            )
            .unwrap(),
        );
        let now = Instant::now();
        for sport in 1..=3u16 {
            let syn = tcp(OTHER, ME, sport, 22, SYN);
            assert_eq!(fw.check(Direction::Inbound, &syn, now, &ids), Verdict::Pass);
        }
        let syn = tcp(OTHER, ME, 4, 22, SYN);
        assert_eq!(
            fw.check(Direction::Inbound, &syn, now, &ids),
            Verdict::RemoteFull
        );
        assert_eq!(fw.counters.remote_full, 1);
        let other = tcp([10, 77, 1, 12], ME, 4, 22, SYN);
        assert_eq!(
            fw.check(Direction::Inbound, &other, now, &ids),
            Verdict::Pass
        );
        // The share comes back as its flows go.
        let later = now + TCP_OPENING + Duration::from_secs(1);
        fw.expire(later);
        assert_eq!(
            fw.check(Direction::Inbound, &syn, later, &ids),
            Verdict::Pass
        );
    }

    /// A TCP flow picked up mid-way (no SYN) is tracked as opening until
    /// the other side answers: bare ACKs hold a place for 30 s, not an hour.
    #[test]
    fn a_flow_picked_up_mid_way_waits_for_an_answer() {
        let mut fw = Firewall::new(policy("[firewall]\n").unwrap());
        let now = Instant::now();
        let ack = tcp(ME, OTHER, 5000, 80, ACK);
        assert_eq!(
            fw.check(Direction::Outbound, &ack, now, &ids),
            Verdict::Pass
        );
        fw.expire(now + TCP_OPENING + Duration::from_secs(1));
        assert_eq!(fw.flows(), 0, "an unanswered pickup stayed");
        // Answered, it is established.
        assert_eq!(
            fw.check(Direction::Outbound, &ack, now, &ids),
            Verdict::Pass
        );
        let back = tcp(OTHER, ME, 80, 5000, ACK);
        assert_eq!(
            fw.check(Direction::Inbound, &back, now, &ids),
            Verdict::Pass
        );
        fw.expire(now + TCP_OPENING + Duration::from_secs(1));
        assert_eq!(fw.flows(), 1);
    }

    #[test]
    fn config_errors_name_the_rule_and_key() {
        for (t, want) in [
            (
                "[[firewall.inbound]]\naction = \"maybe\"\n",
                "firewall.inbound[0].action",
            ),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nport = \"70000\"\n",
                "firewall.inbound[0].port",
            ),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\nport = \"9-3\"\n",
                "backwards",
            ),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nproto = \"icmp\"\nport = \"1\"\n",
                "need proto tcp or udp",
            ),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nfrom = [\"10.0.0.0/33\"]\n",
                "firewall.inbound[0].from[0]",
            ),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nfrom = [\"role:x\"]\n",
                "firewall.inbound[0].from[0]",
            ),
            (
                "[[firewall.outbound]]\naction = \"allow\"\nfrom = [\"name:a\"]\n",
                "firewall.outbound[0].from",
            ),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nproto = \"sctp\"\n",
                "firewall.inbound[0].proto",
            ),
            ("inbound_default = \"open\"\n", "firewall.inbound_default"),
            (
                "[[firewall.inbound]]\naction = \"allow\"\nports = \"1\"\n",
                "ports",
            ),
        ] {
            let t = format!("[firewall]\n{t}");
            let e = policy(&t).unwrap_err();
            assert!(e.contains(want), "{t:?}: {e}");
        }
    }

    #[test]
    fn icmp_without_its_type_is_malformed() {
        // From `structured_packets_parse_as_written`: an ICMP header cut
        // before its type byte (or a later fragment) has nothing to judge.
        let mut fw = Firewall::new(policy(DB).unwrap());
        let pkt = v4([0; 4], [0; 4], ICMP, &[]);
        assert_eq!(parse(&pkt), None);
        let v = fw.check(Direction::Inbound, &pkt, Instant::now(), &ids);
        assert_eq!(v, Verdict::Malformed);
        assert_eq!(fw.counters.malformed, 1);
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(b in proptest::collection::vec(any::<u8>(), 0..120), v6 in any::<bool>()) {
            let mut b = b;
            if let Some(x) = b.first_mut() {
                *x = if v6 { 0x60 | (*x & 0x0f) } else { 0x40 | (*x & 0x0f) };
            }
            let _ = parse(&b);
            let mut fw = Firewall::new(policy(DB).unwrap());
            let now = Instant::now();
            let _ = fw.check(Direction::Inbound, &b, now, &ids);
            let _ = fw.check(Direction::Outbound, &b, now, &ids);
        }

        /// Well-formed IPv4/IPv6 headers (options, fragments) with TCP, UDP,
        /// ICMP or anything after them, ICMP errors quoting a packet, all
        /// cut anywhere: parsing never panics, reads the addresses and
        /// ports that were written, and the firewall judges a stream of
        /// them in both directions.
        #[test]
        fn structured_packets_parse_as_written(
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            proto in prop_oneof![Just(TCP), Just(UDP), Just(ICMP), Just(ICMPV6), any::<u8>()],
            options in 0usize..11,
            frag in prop_oneof![Just(0u16), any::<u16>()],
            l4 in proptest::collection::vec(any::<u8>(), 0..48),
            quote in proptest::option::of((any::<bool>(), any::<u8>(), 0usize..48)),
            cut in any::<usize>(),
        ) {
            let header = |v6: bool, proto: u8, options: usize, frag: u16, body: &[u8]| -> Vec<u8> {
                let mut b = if v6 {
                    let mut b = vec![0u8; 40];
                    b[0] = 0x60;
                    b[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
                    b[6] = proto;
                    b[8..24].copy_from_slice(&src);
                    b[24..40].copy_from_slice(&dst);
                    b
                } else {
                    let mut b = vec![0u8; 20 + 4 * options];
                    b[0] = 0x40 | (5 + options as u8);
                    let total = (b.len() + body.len()) as u16;
                    b[2..4].copy_from_slice(&total.to_be_bytes());
                    b[6..8].copy_from_slice(&frag.to_be_bytes());
                    b[9] = proto;
                    b[12..16].copy_from_slice(&src[..4]);
                    b[16..20].copy_from_slice(&dst[..4]);
                    b
                };
                b.extend_from_slice(body);
                b
            };
            let mut body = l4.clone();
            let icmp = (proto == ICMP && !v6) || (proto == ICMPV6 && v6);
            if let (true, Some((inner_v6, inner_proto, inner_cut))) = (icmp, quote) {
                // An ICMP error (v4 type 3, v6 type 1) quoting a packet.
                body = vec![if v6 { 1 } else { 3 }, 0, 0, 0, 0, 0, 0, 0];
                let inner = header(inner_v6, inner_proto, 0, 0, &l4);
                body.extend_from_slice(&inner[..inner_cut.min(inner.len())]);
            }
            let pkt = header(v6, proto, options, frag, &body);
            let parsed = parse(&pkt);
            let first_fragment = v6 || frag & 0x1fff == 0;
            if matches!(proto, ICMP | ICMPV6) && (body.is_empty() || !first_fragment) {
                // ICMP without its type (or a later fragment of one) is
                // malformed: dropped.
                prop_assert!(parsed.is_none());
                return Ok(());
            }
            if v6 && matches!(proto, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTS) {
                // Random bytes as extension headers: walked, parsed or
                // refused, never a panic.
                let mut fw = Firewall::new(policy(DB).unwrap());
                let _ = fw.check(Direction::Inbound, &pkt, Instant::now(), &ids);
                return Ok(());
            }
            let p = parsed.expect("a whole header parses");
            let (s, d): (IpAddr, IpAddr) = if v6 {
                (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into())
            } else {
                (
                    Ipv4Addr::new(src[0], src[1], src[2], src[3]).into(),
                    Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]).into(),
                )
            };
            prop_assert_eq!((p.src, p.dst, p.proto), (s, d, proto));
            if first_fragment && (proto == TCP || proto == UDP) && body.len() >= 4 {
                prop_assert_eq!(p.sport, u16::from_be_bytes([body[0], body[1]]));
                prop_assert_eq!(p.dport, u16::from_be_bytes([body[2], body[3]]));
            }
            let cut = cut % (pkt.len() + 1);
            let _ = parse(&pkt[..cut]);
            let mut fw = Firewall::new(policy(DB).unwrap());
            let now = Instant::now();
            for b in [&pkt[..], &pkt[..cut]] {
                let _ = fw.check(Direction::Inbound, b, now, &ids);
                let _ = fw.check(Direction::Outbound, b, now, &ids);
            }
        }

        #[test]
        fn first_match_wins(port in 1u16..65535) {
            // deny 1000-2000 then allow all tcp: exactly the range is denied.
            let p = policy("[firewall]\n[[firewall.inbound]]\naction = \"deny\"\nproto = \"tcp\"\nport = \"1000-2000\"\n\
                [[firewall.inbound]]\naction = \"allow\"\nproto = \"tcp\"\n").unwrap();
            let mut fw = Firewall::new(p);
            let v = fw.check(Direction::Inbound, &tcp(OTHER, ME, 1, port, SYN), Instant::now(), &ids);
            let denied = (1000..=2000).contains(&port);
            prop_assert_eq!(v == Verdict::Deny(Some(0)), denied);
            prop_assert_eq!(v == Verdict::Pass, !denied);
        }
    }
}
