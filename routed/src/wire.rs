//! BGP messages as routed sees them, and their wire form.
//!
//! OPEN, UPDATE and ROUTE-REFRESH go through the netgauze codec; KEEPALIVE
//! and NOTIFICATION are a fixed header and two bytes, framed here. UPDATE
//! errors follow RFC 7606: a malformed path attribute, or a missing
//! mandatory one, turns the message into a withdrawal of its prefixes
//! ("treat-as-withdraw") instead of a session reset.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::capabilities::{
    AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
    GracefulRestartAddressFamily, GracefulRestartCapability, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::community::Community;
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As4PathSegment, AsPath, AsPathSegmentType, Communities, LocalPreference, MpReach, MpUnreach,
    MultiExitDiscriminator, NextHop, Origin, PathAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use netgauze_parse_utils::WritablePdu;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 19;
pub const MAX_LEN: usize = 4096;
/// The AS_TRANS placeholder for 4-byte AS numbers in the 2-byte field.
const AS_TRANS: u16 = 23456;

/// What a NOTIFICATION says: its error code and subcode (RFC 4271 §4.5,
/// §6; Cease subcodes RFC 4486). A peer may send codes this speaker has no
/// name for: they are kept as [`Reason::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 1: Message Header Error (§6.1).
    Header(HeaderError),
    /// 2: OPEN Message Error (§6.2).
    Open(OpenError),
    /// 3: UPDATE Message Error (§6.3).
    Update(UpdateError),
    /// 4: Hold Timer Expired (§6.5).
    HoldTimerExpired,
    /// 5: Finite State Machine Error (§6.6).
    Fsm,
    /// 6: Cease (§6.7, RFC 4486).
    Cease(Cease),
    Unknown {
        code: u8,
        subcode: u8,
    },
}

/// Subcodes of a Message Header Error (RFC 4271 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    ConnectionNotSynchronized = 1,
    BadMessageLength = 2,
    BadMessageType = 3,
}

/// Subcodes of an OPEN Message Error used here (RFC 4271 §4.5, RFC 5492).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Subcode 0: unspecific (the codec could not say more).
    Unspecific = 0,
    BadPeerAs = 2,
    BadBgpIdentifier = 3,
    UnacceptableHoldTime = 6,
    UnsupportedCapability = 7,
}

/// Subcodes of an UPDATE Message Error used here (RFC 4271 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    MalformedAttributeList = 1,
}

/// Cease subcodes (RFC 4486 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cease {
    /// Subcode 0: no subcode given.
    Unspecific = 0,
    MaxPrefixes = 1,
    AdministrativeShutdown = 2,
    PeerDeconfigured = 3,
    AdministrativeReset = 4,
    ConnectionRejected = 5,
    OtherConfigurationChange = 6,
    ConnectionCollisionResolution = 7,
    OutOfResources = 8,
}

impl Reason {
    /// The (code, subcode) pair on the wire.
    pub fn codes(self) -> (u8, u8) {
        match self {
            Reason::Header(s) => (1, s as u8),
            Reason::Open(s) => (2, s as u8),
            Reason::Update(s) => (3, s as u8),
            Reason::HoldTimerExpired => (4, 0),
            Reason::Fsm => (5, 0),
            Reason::Cease(s) => (6, s as u8),
            Reason::Unknown { code, subcode } => (code, subcode),
        }
    }

    /// The reason a received (code, subcode) pair names.
    pub fn from_codes(code: u8, subcode: u8) -> Reason {
        use Cease as C;
        let r = match (code, subcode) {
            (1, 1) => Reason::Header(HeaderError::ConnectionNotSynchronized),
            (1, 2) => Reason::Header(HeaderError::BadMessageLength),
            (1, 3) => Reason::Header(HeaderError::BadMessageType),
            (2, 0) => Reason::Open(OpenError::Unspecific),
            (2, 2) => Reason::Open(OpenError::BadPeerAs),
            (2, 3) => Reason::Open(OpenError::BadBgpIdentifier),
            (2, 6) => Reason::Open(OpenError::UnacceptableHoldTime),
            (2, 7) => Reason::Open(OpenError::UnsupportedCapability),
            (3, 1) => Reason::Update(UpdateError::MalformedAttributeList),
            (4, 0) => Reason::HoldTimerExpired,
            (5, 0) => Reason::Fsm,
            (6, 0) => Reason::Cease(C::Unspecific),
            (6, 1) => Reason::Cease(C::MaxPrefixes),
            (6, 2) => Reason::Cease(C::AdministrativeShutdown),
            (6, 3) => Reason::Cease(C::PeerDeconfigured),
            (6, 4) => Reason::Cease(C::AdministrativeReset),
            (6, 5) => Reason::Cease(C::ConnectionRejected),
            (6, 6) => Reason::Cease(C::OtherConfigurationChange),
            (6, 7) => Reason::Cease(C::ConnectionCollisionResolution),
            (6, 8) => Reason::Cease(C::OutOfResources),
            _ => Reason::Unknown { code, subcode },
        };
        debug_assert_eq!(r.codes(), (code, subcode));
        r
    }

    fn describe(self) -> &'static str {
        match self {
            Reason::Header(_) => "message header error",
            Reason::Open(OpenError::BadPeerAs) => "OPEN: bad peer AS",
            Reason::Open(OpenError::UnacceptableHoldTime) => "OPEN: unacceptable hold time",
            Reason::Open(OpenError::UnsupportedCapability) => "OPEN: unsupported capability",
            Reason::Open(_) => "OPEN message error",
            Reason::Update(_) => "UPDATE message error",
            Reason::HoldTimerExpired => "hold timer expired",
            Reason::Fsm => "finite state machine error",
            Reason::Cease(Cease::MaxPrefixes) => "cease: maximum number of prefixes reached",
            Reason::Cease(Cease::AdministrativeShutdown) => "cease: administrative shutdown",
            Reason::Cease(Cease::PeerDeconfigured) => "cease: peer de-configured",
            Reason::Cease(Cease::OtherConfigurationChange) => "cease: other configuration change",
            Reason::Cease(Cease::ConnectionCollisionResolution) => {
                "cease: connection collision resolution"
            }
            Reason::Cease(_) => "cease",
            Reason::Unknown { code: 1..=6, .. } => "error with an unknown subcode",
            Reason::Unknown { .. } => "unknown error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// Multiprotocol capabilities: IPv4 and IPv6 unicast.
    pub ipv4: bool,
    pub ipv6: bool,
    /// 4-byte AS capability (RFC 6793).
    pub asn4: bool,
    pub route_refresh: bool,
    /// The graceful restart capability (RFC 4724), if sent.
    pub graceful_restart: Option<GracefulRestart>,
    /// ADD-PATH (RFC 7911) per family (`[IPv4, IPv6]` unicast): whether
    /// the sender can send several paths of one prefix, and receive them.
    pub add_path_send: [bool; 2],
    pub add_path_receive: [bool; 2],
}

impl Open {
    /// The OPEN of a 4-byte-AS speaker of IPv4 and IPv6 unicast with route
    /// refresh, and nothing else (no graceful restart, no ADD-PATH): what
    /// routed sends, before its options.
    pub fn new(asn: u32, hold_time: u16, router_id: Ipv4Addr) -> Open {
        Open {
            asn,
            hold_time,
            router_id,
            ipv4: true,
            ipv6: true,
            asn4: true,
            route_refresh: true,
            graceful_restart: None,
            add_path_send: [false; 2],
            add_path_receive: [false; 2],
        }
    }
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GracefulRestart {
    /// R: the sender has restarted (the receiver does not wait for its
    /// End-of-RIB before sending its own routes).
    pub restarting: bool,
    /// How long the sender expects to take to come back, in seconds (12
    /// bits on the wire).
    pub time_s: u16,
    /// Per family listed: whether the sender kept forwarding (F) across
    /// its restart; `None` when the family is not listed.
    pub ipv4: Option<bool>,
    pub ipv6: Option<bool>,
}

/// Path attributes routed keeps (the rest are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attrs {
    /// 0 IGP, 1 EGP, 2 incomplete.
    pub origin: u8,
    /// AS_SEQUENCE flattened; an AS_SET counts as one hop.
    pub as_path: Vec<u32>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// The link-local IPv6 next hop beside the global one (RFC 2545's
    /// 32-byte form): only between neighbours on one link.
    pub next_hop_v6_local: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<IpNet>,
    pub announced: Vec<IpNet>,
    /// With ADD-PATH (RFC 7911) received: each prefix's path identifier,
    /// in the order of `withdrawn` and `announced`. Empty without.
    pub withdrawn_ids: Vec<u32>,
    pub announced_ids: Vec<u32>,
    pub attrs: Attrs,
    /// RFC 7606: why the announced prefixes are to be treated as withdrawn.
    pub treat_as_withdraw: Option<String>,
    /// It carried an IPv6 MP_UNREACH_NLRI: an empty one is IPv6's
    /// End-of-RIB.
    pub unreach_v6: bool,
}

impl Update {
    /// End-of-RIB marker (RFC 4724): an UPDATE with nothing in it.
    pub fn is_end_of_rib(&self) -> bool {
        self.withdrawn.is_empty() && self.announced.is_empty()
    }

    /// Which family's End-of-RIB this is (`true`: IPv6), if it is one.
    pub fn end_of_rib_v6(&self) -> Option<bool> {
        self.is_end_of_rib().then_some(self.unreach_v6)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub reason: Reason,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(reason: Reason) -> Notification {
        Notification {
            reason,
            data: Vec::new(),
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, subcode) = self.reason.codes();
        write!(f, "{} ({code}/{subcode})", self.reason.describe())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// A request to resend the routes of one family (`true` = IPv6).
    RouteRefresh {
        ipv6: bool,
    },
}

/// A message that could not be decoded: the NOTIFICATION to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub notification: Notification,
    pub reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.notification)
    }
}

fn decode_err(r: Reason, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        notification: Notification::new(r),
        reason: reason.into(),
    }
}

/// The length of the message at the start of `buf`, once its header is
/// there; an error for a header that cannot be valid.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16] != [0xff; 16] {
        return Err(decode_err(
            Reason::Header(HeaderError::ConnectionNotSynchronized),
            "marker is not all ones",
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    if !(HEADER_LEN..=MAX_LEN).contains(&len) {
        return Err(decode_err(
            Reason::Header(HeaderError::BadMessageLength),
            format!("bad length {len}"),
        ));
    }
    Ok(Some(len))
}

fn header(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    v.push(ty);
    v.extend_from_slice(body);
    v
}

/// Decodes one whole message (header included).
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    decode_with(buf, [false; 2])
}

/// [`decode`], for a session where ADD-PATH was negotiated for receiving
/// (`[IPv4, IPv6]`): its UPDATEs carry a path identifier before each prefix.
pub fn decode_with(buf: &[u8], add_path: [bool; 2]) -> Result<Message, DecodeError> {
    let len = frame_len(buf)?.ok_or_else(|| {
        decode_err(
            Reason::Header(HeaderError::BadMessageLength),
            "truncated header",
        )
    })?;
    if len != buf.len() {
        return Err(decode_err(
            Reason::Header(HeaderError::BadMessageLength),
            "length does not match",
        ));
    }
    let body = &buf[HEADER_LEN..];
    match buf[18] {
        3 => {
            if body.len() < 2 {
                return Err(decode_err(
                    Reason::Header(HeaderError::BadMessageLength),
                    "short NOTIFICATION",
                ));
            }
            Ok(Message::Notification(Notification {
                reason: Reason::from_codes(body[0], body[1]),
                data: body[2..].to_vec(),
            }))
        }
        4 => {
            if !body.is_empty() {
                return Err(decode_err(
                    Reason::Header(HeaderError::BadMessageLength),
                    "KEEPALIVE with a body",
                ));
            }
            Ok(Message::Keepalive)
        }
        1 | 2 | 5 => decode_with_netgauze(buf, add_path),
        t => Err(decode_err(
            Reason::Header(HeaderError::BadMessageType),
            format!("unknown message type {t}"),
        )),
    }
}

fn parsing_context(add_path: [bool; 2]) -> BgpParsingContext {
    BgpParsingContext::new(
        true,
        HashMap::new(),
        HashMap::from([
            (AddressType::Ipv4Unicast, add_path[0]),
            (AddressType::Ipv6Unicast, add_path[1]),
        ]),
        false,
        false,
        false,
        false,
    )
}

fn decode_with_netgauze(buf: &[u8], add_path: [bool; 2]) -> Result<Message, DecodeError> {
    let mut ctx = parsing_context(add_path);
    let mut cur = SliceReader::new(buf);
    let msg = BgpMessage::parse(&mut cur, &mut ctx).map_err(|e| {
        let r = match buf[18] {
            1 => Reason::Open(OpenError::Unspecific),
            2 => Reason::Update(UpdateError::MalformedAttributeList),
            // A malformed ROUTE-REFRESH (RFC 2918 §4): bad message length.
            _ => Reason::Header(HeaderError::BadMessageLength),
        };
        decode_err(r, format!("{e}"))
    })?;
    let ignored = ctx.reset_parsing_errors();
    match msg {
        BgpMessage::Open(o) => Ok(Message::Open(from_open(&o))),
        BgpMessage::Update(u) => {
            let mut up = from_update(&u);
            let attr_errors = ignored.path_attr_errors();
            if !attr_errors.is_empty() && up.treat_as_withdraw.is_none() {
                up.treat_as_withdraw =
                    Some(format!("malformed path attribute: {:?}", attr_errors[0]));
            }
            Ok(Message::Update(up))
        }
        BgpMessage::RouteRefresh(r) => Ok(Message::RouteRefresh {
            ipv6: r.address_type() == AddressType::Ipv6Unicast,
        }),
        BgpMessage::KeepAlive => Ok(Message::Keepalive),
        BgpMessage::Notification(_) => Err(decode_err(
            Reason::Header(HeaderError::BadMessageType),
            "unexpected NOTIFICATION",
        )),
    }
}

fn from_open(o: &BgpOpenMessage) -> Open {
    let mut open = Open {
        asn: o.my_asn4(),
        hold_time: o.hold_time(),
        router_id: o.bgp_id(),
        ipv4: false,
        ipv6: false,
        asn4: false,
        route_refresh: false,
        graceful_restart: None,
        add_path_send: [false; 2],
        add_path_receive: [false; 2],
    };
    let mut any_mp = false;
    for c in o.capabilities() {
        match c {
            BgpCapability::MultiProtocolExtensions(mp) => {
                any_mp = true;
                match mp.address_type() {
                    AddressType::Ipv4Unicast => open.ipv4 = true,
                    AddressType::Ipv6Unicast => open.ipv6 = true,
                    _ => {}
                }
            }
            BgpCapability::FourOctetAs(_) => open.asn4 = true,
            BgpCapability::GracefulRestartCapability(g) => {
                let mut gr = GracefulRestart {
                    restarting: g.restart(),
                    time_s: g.time() & 0x0fff,
                    ipv4: None,
                    ipv6: None,
                };
                for f in g.address_families() {
                    match f.address_type() {
                        AddressType::Ipv4Unicast => gr.ipv4 = Some(f.forwarding_state()),
                        AddressType::Ipv6Unicast => gr.ipv6 = Some(f.forwarding_state()),
                        _ => {}
                    }
                }
                open.graceful_restart = Some(gr);
            }
            BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                open.route_refresh = true
            }
            BgpCapability::AddPath(a) => {
                for f in a.address_families() {
                    let i = match f.address_type() {
                        AddressType::Ipv4Unicast => 0,
                        AddressType::Ipv6Unicast => 1,
                        _ => continue,
                    };
                    open.add_path_send[i] = f.send();
                    open.add_path_receive[i] = f.receive();
                }
            }
            _ => {}
        }
    }
    // Without multiprotocol capabilities a speaker does IPv4 unicast only.
    if !any_mp {
        open.ipv4 = true;
    }
    open
}

fn from_update(u: &BgpUpdateMessage) -> Update {
    let mut up = Update::default();
    for w in u.withdraw_routes() {
        up.withdrawn.push(IpNet::V4(w.network().address()));
        up.withdrawn_ids.extend(w.path_id());
    }
    for n in u.nlri() {
        up.announced.push(IpNet::V4(n.network().address()));
        up.announced_ids.extend(n.path_id());
    }
    let mut seen_origin = false;
    let mut seen_path = false;
    for a in u.path_attributes() {
        match a.value() {
            PathAttributeValue::Origin(o) => {
                seen_origin = true;
                up.attrs.origin = *o as u8;
            }
            PathAttributeValue::AsPath(p) => {
                seen_path = true;
                up.attrs.as_path = flatten_path(p);
            }
            PathAttributeValue::NextHop(n) => up.attrs.next_hop_v4 = Some(n.next_hop()),
            PathAttributeValue::MultiExitDiscriminator(m) => up.attrs.med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => up.attrs.local_pref = Some(l.metric()),
            PathAttributeValue::Communities(c) => {
                up.attrs.communities = c.communities().iter().map(|c| c.value()).collect()
            }
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                next_hop_local,
                nlri,
            }) => {
                up.attrs.next_hop_v6 = Some(*next_hop_global);
                up.attrs.next_hop_v6_local = *next_hop_local;
                for n in nlri.iter() {
                    up.announced.push(IpNet::V6(n.network().address()));
                    up.announced_ids.extend(n.path_id());
                }
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast { next_hop, nlri, .. }) => {
                if let IpAddr::V4(nh) = next_hop {
                    up.attrs.next_hop_v4 = Some(*nh);
                }
                for n in nlri.iter() {
                    up.announced.push(IpNet::V4(n.network().address()));
                    up.announced_ids.extend(n.path_id());
                }
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => {
                up.unreach_v6 = true;
                for n in nlri.iter() {
                    up.withdrawn.push(IpNet::V6(n.network().address()));
                    up.withdrawn_ids.extend(n.path_id());
                }
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) => {
                for n in nlri.iter() {
                    up.withdrawn.push(IpNet::V4(n.network().address()));
                    up.withdrawn_ids.extend(n.path_id());
                }
            }
            _ => {}
        }
    }
    if !up.announced.is_empty() {
        let has_v4 = up.announced.iter().any(|p| matches!(p, IpNet::V4(_)));
        let has_v6 = up.announced.iter().any(|p| matches!(p, IpNet::V6(_)));
        let missing = if !seen_origin {
            Some("ORIGIN")
        } else if !seen_path {
            Some("AS_PATH")
        } else if has_v4 && up.attrs.next_hop_v4.is_none() {
            Some("NEXT_HOP")
        } else if has_v6 && up.attrs.next_hop_v6.is_none() {
            Some("MP_REACH next hop")
        } else {
            None
        };
        if let Some(m) = missing {
            up.treat_as_withdraw = Some(format!("missing mandatory attribute {m}"));
        }
    }
    up
}

fn flatten_path(p: &AsPath) -> Vec<u32> {
    let mut out = Vec::new();
    match p {
        AsPath::As4PathSegments(segs) => {
            for s in segs.iter() {
                match s.segment_type() {
                    AsPathSegmentType::AsSequence => out.extend_from_slice(s.as_numbers()),
                    AsPathSegmentType::AsSet => {
                        out.extend(s.as_numbers().iter().min().copied());
                    }
                }
            }
        }
        AsPath::As2PathSegments(segs) => {
            for s in segs.iter() {
                let nums = s.as_numbers().iter().map(|n| u32::from(*n));
                match s.segment_type() {
                    AsPathSegmentType::AsSequence => out.extend(nums),
                    AsPathSegmentType::AsSet => out.extend(nums.min()),
                }
            }
        }
    }
    out
}

fn write_pdu(m: &BgpMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    // Writing into a Vec only fails for a message over the size limit,
    // which encode() never builds (updates are split by the caller).
    if let Err(e) = m.write(&mut out) {
        tracing::error!("encoding a BGP message failed: {e:?}");
    }
    out
}

fn attr(optional: bool, transitive: bool, v: PathAttributeValue) -> Option<PathAttribute> {
    PathAttribute::from(optional, transitive, false, false, v).ok()
}

fn attr_ext(optional: bool, transitive: bool, v: PathAttributeValue) -> Option<PathAttribute> {
    PathAttribute::from(optional, transitive, false, true, v).ok()
}

/// Encodes a message.
pub fn encode(m: &Message) -> Vec<u8> {
    match m {
        Message::Keepalive => header(4, &[]),
        Message::Notification(n) => {
            let (code, subcode) = n.reason.codes();
            let mut body = vec![code, subcode];
            body.extend_from_slice(&n.data);
            header(3, &body)
        }
        Message::Open(o) => {
            let mut caps = Vec::new();
            if o.ipv4 {
                caps.push(BgpCapability::MultiProtocolExtensions(
                    MultiProtocolExtensionsCapability::new(AddressType::Ipv4Unicast),
                ));
            }
            if o.ipv6 {
                caps.push(BgpCapability::MultiProtocolExtensions(
                    MultiProtocolExtensionsCapability::new(AddressType::Ipv6Unicast),
                ));
            }
            if o.route_refresh {
                caps.push(BgpCapability::RouteRefresh);
            }
            let add_path: Vec<_> = [AddressType::Ipv4Unicast, AddressType::Ipv6Unicast]
                .into_iter()
                .enumerate()
                .filter(|(i, _)| o.add_path_send[*i] || o.add_path_receive[*i])
                .map(|(i, t)| {
                    AddPathAddressFamily::new(t, o.add_path_send[i], o.add_path_receive[i])
                })
                .collect();
            if !add_path.is_empty() {
                caps.push(BgpCapability::AddPath(AddPathCapability::new(add_path)));
            }
            if let Some(g) = &o.graceful_restart {
                let families: Vec<_> = [
                    (g.ipv4, AddressType::Ipv4Unicast),
                    (g.ipv6, AddressType::Ipv6Unicast),
                ]
                .into_iter()
                .filter_map(|(f, t)| f.map(|f| GracefulRestartAddressFamily::new(f, t)))
                .collect();
                caps.push(BgpCapability::GracefulRestartCapability(
                    GracefulRestartCapability::new(
                        g.restarting,
                        false,
                        g.time_s.min(0x0fff),
                        families,
                    ),
                ));
            }
            caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
                o.asn,
            )));
            let my_as = u16::try_from(o.asn).unwrap_or(AS_TRANS);
            write_pdu(&BgpMessage::Open(BgpOpenMessage::new(
                my_as,
                o.hold_time,
                o.router_id,
                vec![BgpOpenMessageParameter::new_capabilities(caps)],
            )))
        }
        Message::RouteRefresh { ipv6 } => {
            write_pdu(&BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
                if *ipv6 {
                    AddressType::Ipv6Unicast
                } else {
                    AddressType::Ipv4Unicast
                },
                RouteRefreshSubcode::NormalRequest,
            )))
        }
        Message::Update(u) => write_pdu(&BgpMessage::Update(to_update(u))),
    }
}

fn v4(n: &IpNet) -> Option<Ipv4Net> {
    match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

fn v6(n: &IpNet) -> Option<Ipv6Net> {
    match n {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    }
}

/// Each prefix with its path identifier, when `ids` has one per prefix.
fn with_ids<'a>(
    prefixes: &'a [IpNet],
    ids: &'a [u32],
) -> impl Iterator<Item = (Option<u32>, &'a IpNet)> + 'a {
    let ids = (ids.len() == prefixes.len()).then_some(ids);
    prefixes
        .iter()
        .enumerate()
        .map(move |(i, p)| (ids.map(|ids| ids[i]), p))
}

fn to_update(u: &Update) -> BgpUpdateMessage {
    let v4_addr = |(id, n): (Option<u32>, &IpNet)| {
        Ipv4Unicast::from_net(v4(n)?)
            .ok()
            .map(|n| Ipv4UnicastAddress::new(id, n))
    };
    let v6_addr = |(id, n): (Option<u32>, &IpNet)| {
        Ipv6Unicast::from_net(v6(n)?)
            .ok()
            .map(|n| Ipv6UnicastAddress::new(id, n))
    };
    let withdrawn4: Vec<_> = with_ids(&u.withdrawn, &u.withdrawn_ids)
        .filter_map(v4_addr)
        .collect();
    let withdrawn6: Vec<_> = with_ids(&u.withdrawn, &u.withdrawn_ids)
        .filter_map(v6_addr)
        .collect();
    let nlri4: Vec<_> = with_ids(&u.announced, &u.announced_ids)
        .filter_map(v4_addr)
        .collect();
    let nlri6: Vec<_> = with_ids(&u.announced, &u.announced_ids)
        .filter_map(v6_addr)
        .collect();
    let mut attrs = Vec::new();
    if !nlri4.is_empty() || !nlri6.is_empty() {
        let a = &u.attrs;
        let origin = match a.origin {
            0 => Origin::IGP,
            1 => Origin::EGP,
            _ => Origin::Incomplete,
        };
        attrs.extend(attr(false, true, PathAttributeValue::Origin(origin)));
        let segs = if a.as_path.is_empty() {
            vec![]
        } else {
            vec![As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                a.as_path.clone(),
            )]
        };
        attrs.extend(attr(
            false,
            true,
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs.into())),
        ));
        if let (false, Some(nh)) = (nlri4.is_empty(), a.next_hop_v4) {
            attrs.extend(attr(
                false,
                true,
                PathAttributeValue::NextHop(NextHop::new(nh)),
            ));
        }
        if let Some(m) = a.med {
            attrs.extend(attr(
                true,
                false,
                PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(m)),
            ));
        }
        if let Some(l) = a.local_pref {
            attrs.extend(attr(
                false,
                true,
                PathAttributeValue::LocalPreference(LocalPreference::new(l)),
            ));
        }
        if !a.communities.is_empty() {
            let cs: Vec<Community> = a.communities.iter().map(|c| Community::new(*c)).collect();
            attrs.extend(attr(
                true,
                true,
                PathAttributeValue::Communities(Communities::new(cs)),
            ));
        }
        if !nlri6.is_empty() {
            attrs.extend(attr_ext(
                true,
                false,
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                    next_hop_global: a.next_hop_v6.unwrap_or(Ipv6Addr::UNSPECIFIED),
                    next_hop_local: a.next_hop_v6_local,
                    nlri: nlri6.into(),
                }),
            ));
        }
    }
    if !withdrawn6.is_empty() {
        attrs.extend(attr_ext(
            true,
            false,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                nlri: withdrawn6.into(),
            }),
        ));
    }
    BgpUpdateMessage::new(withdrawn4, attrs, nlri4)
}

/// An End-of-RIB marker for one family (RFC 4724 §2).
pub fn end_of_rib(ipv6: bool) -> Vec<u8> {
    if !ipv6 {
        return encode(&Message::Update(Update::default()));
    }
    let attrs: Vec<PathAttribute> = attr(
        true,
        false,
        PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
            nlri: vec![].into(),
        }),
    )
    .into_iter()
    .collect();
    write_pdu(&BgpMessage::Update(BgpUpdateMessage::new(
        vec![],
        attrs,
        vec![],
    )))
}

/// Splits announcements and withdrawals so every message stays under the
/// 4096-byte limit (prefixes are at most 17 bytes each on the wire, 21
/// with a path identifier).
pub fn split_update(u: Update) -> Vec<Update> {
    const PER_MESSAGE: usize = 150;
    let mut out = Vec::new();
    let ids = |ids: &[u32], at: usize, len: usize| ids.get(at..at + len).unwrap_or(&[]).to_vec();
    for (k, chunk) in u.withdrawn.chunks(PER_MESSAGE).enumerate() {
        out.push(Update {
            withdrawn: chunk.to_vec(),
            withdrawn_ids: ids(&u.withdrawn_ids, k * PER_MESSAGE, chunk.len()),
            ..Update::default()
        });
    }
    for (k, chunk) in u.announced.chunks(PER_MESSAGE).enumerate() {
        out.push(Update {
            announced: chunk.to_vec(),
            announced_ids: ids(&u.announced_ids, k * PER_MESSAGE, chunk.len()),
            attrs: u.attrs.clone(),
            ..Update::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ADD-PATH (RFC 7911): the capability round-trips per family, and an
    /// UPDATE's path identifiers come back with their prefixes when the
    /// session negotiated them, of both families, announced and withdrawn.
    #[test]
    fn add_path_capability_and_path_identifiers_round_trip() {
        let mut o = open();
        o.add_path_send = [true, false];
        o.add_path_receive = [true, true];
        assert_eq!(
            decode(&encode(&Message::Open(o.clone()))),
            Ok(Message::Open(o))
        );
        let u = Update {
            withdrawn: vec![
                "10.77.2.0/24".parse().unwrap(),
                "fd77:2::/48".parse().unwrap(),
            ],
            withdrawn_ids: vec![7, 8],
            announced: vec![
                "10.77.3.0/24".parse().unwrap(),
                "fd77:3::/48".parse().unwrap(),
            ],
            announced_ids: vec![1, 2],
            attrs: Attrs {
                as_path: vec![4_200_000_301],
                next_hop_v4: Some(Ipv4Addr::new(10, 77, 3, 1)),
                next_hop_v6: Some("fd77:3::1".parse().unwrap()),
                ..Attrs::default()
            },
            unreach_v6: true,
            ..Update::default()
        };
        let b = encode(&Message::Update(u.clone()));
        let Ok(Message::Update(d)) = decode_with(&b, [true, true]) else {
            panic!("not an update")
        };
        let pairs = |p: &[IpNet], i: &[u32]| {
            let mut v: Vec<(IpNet, u32)> = p.iter().copied().zip(i.iter().copied()).collect();
            v.sort();
            v
        };
        assert_eq!(d.announced_ids.len(), 2);
        assert_eq!(d.withdrawn_ids.len(), 2);
        assert_eq!(
            pairs(&d.announced, &d.announced_ids),
            pairs(&u.announced, &u.announced_ids)
        );
        assert_eq!(
            pairs(&d.withdrawn, &d.withdrawn_ids),
            pairs(&u.withdrawn, &u.withdrawn_ids)
        );
        assert_eq!(d.attrs, u.attrs);
        // Read without ADD-PATH the identifiers are taken for prefixes:
        // garbage, never what was meant (which is why it is negotiated).
        let plain = decode(&b);
        assert!(!matches!(plain, Ok(Message::Update(ref p)) if p.announced == d.announced));
        // Split, every prefix keeps its own identifier.
        let many = Update {
            announced: (0..400u32)
                .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a4d_0000 + i))))
                .collect(),
            announced_ids: (0..400).collect(),
            attrs: u.attrs.clone(),
            ..Update::default()
        };
        let mut back = Vec::new();
        for part in split_update(many.clone()) {
            let b = encode(&Message::Update(part));
            assert!(b.len() <= MAX_LEN);
            let Ok(Message::Update(d)) = decode_with(&b, [true, false]) else {
                panic!("not an update")
            };
            back.extend(d.announced.into_iter().zip(d.announced_ids));
        }
        back.sort();
        assert_eq!(back, pairs(&many.announced, &many.announced_ids));
    }

    fn open() -> Open {
        Open::new(4_200_000_101, 9, Ipv4Addr::new(10, 77, 1, 1))
    }

    #[test]
    fn open_round_trips_with_4_byte_as() {
        let m = Message::Open(open());
        let b = encode(&m);
        assert_eq!(decode(&b).unwrap(), m);
        // The 2-byte field carries AS_TRANS.
        assert_eq!(u16::from_be_bytes([b[20], b[21]]), AS_TRANS);
    }

    /// RFC 4724 §3: R, the restart time and F per family survive the wire.
    #[test]
    fn open_round_trips_graceful_restart() {
        for gr in [
            GracefulRestart {
                restarting: false,
                time_s: 120,
                ipv4: None,
                ipv6: None,
            },
            GracefulRestart {
                restarting: true,
                time_s: 4095,
                ipv4: Some(true),
                ipv6: Some(false),
            },
        ] {
            let m = Message::Open(Open {
                graceful_restart: Some(gr),
                ..open()
            });
            assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn update_round_trips_v4_and_v6() {
        let u = Update {
            withdrawn: vec![
                "10.77.2.11/32".parse().unwrap(),
                "fd77::2:b/128".parse().unwrap(),
            ],
            announced: vec![
                "10.77.1.11/32".parse().unwrap(),
                "fd77::1:b/128".parse().unwrap(),
            ],
            attrs: Attrs {
                origin: 0,
                as_path: vec![4_200_000_101, 4_200_000_201],
                med: Some(5),
                local_pref: None,
                communities: vec![0xfde8_0001],
                next_hop_v4: Some(Ipv4Addr::new(10, 77, 1, 1)),
                next_hop_v6: Some("fd77::1:1".parse().unwrap()),
                // RFC 2545's 32-byte form.
                next_hop_v6_local: Some("fe80::1".parse().unwrap()),
            },
            treat_as_withdraw: None,
            unreach_v6: true,
            withdrawn_ids: vec![],
            announced_ids: vec![],
        };
        let b = encode(&Message::Update(u.clone()));
        let Message::Update(d) = decode(&b).unwrap() else {
            panic!("not an update")
        };
        let mut w = d.withdrawn.clone();
        w.sort();
        let mut uw = u.withdrawn.clone();
        uw.sort();
        assert_eq!(w, uw);
        let mut a = d.announced.clone();
        a.sort();
        let mut ua = u.announced.clone();
        ua.sort();
        assert_eq!(a, ua);
        assert_eq!(d.attrs, u.attrs);
        assert!(d.treat_as_withdraw.is_none());
    }

    #[test]
    fn every_code_pair_names_one_reason_and_back() {
        for code in 0..=255u8 {
            for subcode in 0..=255u8 {
                assert_eq!(Reason::from_codes(code, subcode).codes(), (code, subcode));
            }
        }
        assert_eq!(
            Reason::from_codes(6, 7),
            Reason::Cease(Cease::ConnectionCollisionResolution)
        );
        assert_eq!(
            Notification::new(Reason::from_codes(2, 6)).to_string(),
            "OPEN: unacceptable hold time (2/6)"
        );
    }

    #[test]
    fn keepalive_notification_and_refresh_round_trip() {
        for m in [
            Message::Keepalive,
            Message::Notification(Notification {
                reason: Reason::Cease(Cease::AdministrativeShutdown),
                data: vec![1, 2],
            }),
            Message::Notification(Notification {
                reason: Reason::Unknown {
                    code: 9,
                    subcode: 4,
                },
                data: vec![],
            }),
            Message::RouteRefresh { ipv6: true },
            Message::RouteRefresh { ipv6: false },
        ] {
            assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn end_of_rib_markers_decode_as_empty_updates() {
        for v6 in [false, true] {
            let Message::Update(u) = decode(&end_of_rib(v6)).unwrap() else {
                panic!("not an update")
            };
            assert_eq!(u.end_of_rib_v6(), Some(v6));
        }
    }

    #[test]
    fn missing_next_hop_is_treat_as_withdraw() {
        let u = Update {
            announced: vec!["10.77.1.11/32".parse().unwrap()],
            attrs: Attrs {
                as_path: vec![65001],
                ..Attrs::default()
            },
            ..Update::default()
        };
        let Message::Update(d) = decode(&encode(&Message::Update(u))).unwrap() else {
            panic!()
        };
        assert!(d.treat_as_withdraw.unwrap().contains("NEXT_HOP"));
    }

    #[test]
    fn malformed_origin_is_treat_as_withdraw_not_a_reset() {
        let u = Update {
            announced: vec!["10.77.1.11/32".parse().unwrap()],
            attrs: Attrs {
                as_path: vec![65001],
                next_hop_v4: Some(Ipv4Addr::new(10, 77, 1, 1)),
                ..Attrs::default()
            },
            ..Update::default()
        };
        let mut b = encode(&Message::Update(u));
        // ORIGIN is the first attribute: flags, type 1, len 1, value.
        let pos = b
            .windows(3)
            .position(|w| w == [0x40, 1, 1])
            .expect("origin attribute");
        b[pos + 3] = 7; // no such origin
        match decode(&b) {
            Ok(Message::Update(d)) => assert!(d.treat_as_withdraw.is_some(), "{d:?}"),
            other => panic!("expected treat-as-withdraw, got {other:?}"),
        }
    }

    #[test]
    fn bad_header_is_an_error() {
        let mut b = encode(&Message::Keepalive);
        b[0] = 0;
        assert_eq!(
            decode(&b).unwrap_err().notification.reason,
            Reason::Header(HeaderError::ConnectionNotSynchronized)
        );
        let b = header(9, &[]);
        assert_eq!(
            decode(&b).unwrap_err().notification.reason,
            Reason::Header(HeaderError::BadMessageType)
        );
    }

    #[test]
    fn split_keeps_messages_under_the_limit() {
        let announced: Vec<IpNet> = (0..1000u32)
            .map(|i| {
                IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(i as u128 | (0xfd77u128 << 112)), 128).unwrap(),
                )
            })
            .collect();
        let u = Update {
            announced,
            attrs: Attrs {
                as_path: vec![1, 2, 3],
                next_hop_v6: Some("fd77::1".parse().unwrap()),
                ..Attrs::default()
            },
            ..Update::default()
        };
        for part in split_update(u) {
            let b = encode(&Message::Update(part));
            assert!(b.len() <= MAX_LEN, "{}", b.len());
            decode(&b).unwrap();
        }
    }

    fn v4_prefix() -> impl Strategy<Value = IpNet> {
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()))
    }

    fn v6_prefix() -> impl Strategy<Value = IpNet> {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc()))
    }

    /// A prefix a unicast route can have (not multicast or broadcast:
    /// those are never sent, see below).
    fn unicast(p: &IpNet) -> bool {
        match p {
            IpNet::V4(n) => Ipv4Unicast::from_net(*n).is_ok(),
            IpNet::V6(n) => Ipv6Unicast::from_net(*n).is_ok(),
        }
    }

    #[test]
    fn multicast_prefixes_are_never_sent_and_ignored_when_received() {
        // Found by `updates_round_trip`: a withdrawal of ff00::/8 came back
        // empty. Unicast routes cannot have such prefixes; the encoder
        // leaves them out, and one received is ignored (RFC 4271 §6.3: a
        // semantically incorrect prefix is ignored, the session stays).
        let u = Update {
            withdrawn: vec!["ff00::/8".parse().unwrap()],
            ..Update::default()
        };
        let Ok(Message::Update(d)) = decode(&encode(&Message::Update(u))) else {
            panic!("did not decode")
        };
        assert!(d.withdrawn.is_empty());
        let ok = Update {
            announced: vec!["10.0.0.0/8".parse().unwrap()],
            attrs: Attrs {
                as_path: vec![65001],
                next_hop_v4: Some(Ipv4Addr::new(10, 77, 1, 1)),
                ..Attrs::default()
            },
            ..Update::default()
        };
        let b = encode(&Message::Update(ok));
        // The NLRI 10/8 (two bytes at the end) becomes 224.1/16.
        let mut body = b[HEADER_LEN..b.len() - 2].to_vec();
        body.extend_from_slice(&[16, 224, 1]);
        match decode(&header(2, &body)) {
            Ok(Message::Update(d)) => assert!(d.announced.is_empty(), "{d:?}"),
            other => panic!("expected an update, got {other:?}"),
        }
    }

    /// UPDATEs as routed builds them: v4 and v6 prefixes, a path, the
    /// optional attributes.
    fn update() -> impl Strategy<Value = Update> {
        use proptest::collection::vec;
        (
            vec(prop_oneof![v4_prefix(), v6_prefix()], 0..6),
            vec(prop_oneof![v4_prefix(), v6_prefix()], 0..6),
            0u8..3,
            vec(any::<u32>(), 1..5),
            proptest::option::of(any::<u32>()),
            vec(any::<u32>(), 0..3),
            any::<u32>(),
            any::<u128>(),
        )
            .prop_map(
                |(withdrawn, announced, origin, as_path, med, communities, nh4, nh6)| {
                    let withdrawn: Vec<IpNet> = withdrawn.into_iter().filter(unicast).collect();
                    let announced: Vec<IpNet> = announced.into_iter().filter(unicast).collect();
                    let v4 = announced.iter().any(|p| matches!(p, IpNet::V4(_)));
                    let v6 = announced.iter().any(|p| matches!(p, IpNet::V6(_)));
                    let unreach_v6 = withdrawn.iter().any(|p| matches!(p, IpNet::V6(_)));
                    Update {
                        withdrawn,
                        announced,
                        attrs: Attrs {
                            origin,
                            as_path,
                            med,
                            local_pref: None,
                            communities,
                            next_hop_v4: v4.then(|| Ipv4Addr::from(nh4)),
                            next_hop_v6: v6.then(|| Ipv6Addr::from(nh6)),
                            next_hop_v6_local: None,
                        },
                        treat_as_withdraw: None,
                        unreach_v6,
                        withdrawn_ids: vec![],
                        announced_ids: vec![],
                    }
                },
            )
    }

    fn sorted(mut v: Vec<IpNet>) -> Vec<IpNet> {
        v.sort();
        v.dedup();
        v
    }

    /// One path attribute: flags, type, length (one or two bytes), value.
    fn raw_attr() -> impl Strategy<Value = Vec<u8>> {
        let any_attr = (
            any::<u8>(),
            prop_oneof![1u8..=16, any::<u8>()],
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<bool>(),
        )
            .prop_map(|(flags, ty, value, lie)| {
                let extended = flags & 0x10 != 0;
                let len = if lie { value.len() + 3 } else { value.len() };
                let mut a = vec![flags, ty];
                if extended {
                    a.extend_from_slice(&(len as u16).to_be_bytes());
                } else {
                    a.push(len as u8);
                }
                a.extend_from_slice(&value);
                a
            });
        // Well-formed mandatory attributes often, so that updates decode
        // and the treat-as-withdraw decisions are reached.
        prop_oneof![
            any_attr,
            (0u8..4).prop_map(|o| vec![0x40, 1, 1, o]),
            proptest::collection::vec(any::<u32>(), 0..4).prop_map(|asns| {
                let mut a = vec![0x40, 2, (2 + 4 * asns.len()) as u8, 2, asns.len() as u8];
                for n in asns {
                    a.extend_from_slice(&n.to_be_bytes());
                }
                a
            }),
            any::<[u8; 4]>().prop_map(|ip| vec![0x40, 3, 4, ip[0], ip[1], ip[2], ip[3]]),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), ty in 0u8..7) {
            let b = header(ty, &body);
            let _ = decode(&b);
            let _ = decode(&body);
            let _ = frame_len(&body);
        }

        /// What routed sends, it reads back: same prefixes, same
        /// attributes, no treat-as-withdraw.
        #[test]
        fn updates_round_trip(u in update()) {
            for part in split_update(u.clone()) {
                let b = encode(&Message::Update(part.clone()));
                let Ok(Message::Update(d)) = decode(&b) else {
                    return Err(TestCaseError::fail(format!("{part:?} did not decode")));
                };
                prop_assert_eq!(sorted(d.withdrawn), sorted(part.withdrawn));
                prop_assert_eq!(sorted(d.announced.clone()), sorted(part.announced.clone()));
                if !part.announced.is_empty() {
                    prop_assert_eq!(&d.attrs, &part.attrs);
                }
                prop_assert!(d.treat_as_withdraw.is_none(), "{:?}", d.treat_as_withdraw);
            }
        }

        /// A valid UPDATE with a byte changed or cut short (the header's
        /// length kept right) decodes to an error or an update; never a
        /// panic.
        #[test]
        fn mutated_updates_never_panic(u in update(), pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
            let b = encode(&Message::Update(u));
            let body = &b[HEADER_LEN..];
            let mut m = body.to_vec();
            if !m.is_empty() {
                let at = pos % m.len();
                m[at] = val;
            }
            let _ = decode(&header(2, &m));
            let cut = cut % (body.len() + 1);
            let _ = decode(&header(2, &body[..cut]));
        }

        /// UPDATEs with arbitrary path attributes (known and unknown types,
        /// any flags, lying lengths): an error (the session resets), or an
        /// update that is either treat-as-withdraw or carries every
        /// mandatory attribute for what it announces.
        #[test]
        fn arbitrary_path_attributes(
            withdrawn in proptest::collection::vec(v4_prefix(), 0..3),
            attrs in proptest::collection::vec(raw_attr(), 0..6),
            nlri in proptest::collection::vec(v4_prefix(), 0..3),
        ) {
            let prefixes = |ps: &[IpNet]| -> Vec<u8> {
                let mut v = Vec::new();
                for p in ps {
                    let IpNet::V4(n) = p else { continue };
                    v.push(n.prefix_len());
                    let o = n.addr().octets();
                    v.extend_from_slice(&o[..usize::from(n.prefix_len()).div_ceil(8)]);
                }
                v
            };
            let w = prefixes(&withdrawn);
            let a: Vec<u8> = attrs.concat();
            let mut body = Vec::new();
            body.extend_from_slice(&(w.len() as u16).to_be_bytes());
            body.extend_from_slice(&w);
            body.extend_from_slice(&(a.len() as u16).to_be_bytes());
            body.extend_from_slice(&a);
            body.extend_from_slice(&prefixes(&nlri));
            if HEADER_LEN + body.len() > MAX_LEN {
                return Ok(());
            }
            if let Ok(Message::Update(u)) = decode(&header(2, &body)) {
                if u.treat_as_withdraw.is_none() && !u.announced.is_empty() {
                    // ORIGIN and AS_PATH were there.
                    prop_assert!(attrs.iter().any(|a| a[1] == 1), "{:?}", u);
                    prop_assert!(attrs.iter().any(|a| a[1] == 2), "{:?}", u);
                    if u.announced.iter().any(|p| matches!(p, IpNet::V4(_))) {
                        prop_assert!(u.attrs.next_hop_v4.is_some(), "{:?}", u);
                    }
                    if u.announced.iter().any(|p| matches!(p, IpNet::V6(_))) {
                        prop_assert!(u.attrs.next_hop_v6.is_some(), "{:?}", u);
                    }
                }
            }
        }
    }
}
