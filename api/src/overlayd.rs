//! overlayd's control socket: requests, reply bodies, events and the
//! `status` document.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Longest request line overlayd accepts. Route updates move in chunks of
/// [`ROUTE_CHUNK`] routes, well below it, so no table size meets it.
pub const MAX_LINE: usize = 1 << 20;

/// Routes per `route_update` line routed sends (about 100 bytes each).
pub const ROUTE_CHUNK: usize = 4096;

/// A request, `{"cmd": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Reply: [`Status`].
    Status,
    /// Reply: [`Subscribed`], then one [`Event`] per line.
    Subscribe,
    /// The peers (hosts and gateways) attached now. Reply: [`AttachedPeers`].
    Attached,
    /// Reads the certificates, revocation list and firewall rules again.
    /// Reply: [`Reloaded`].
    Reload,
    /// Installs or replaces one routed entry. Reply: [`crate::Empty`].
    RouteAdd { prefix: IpNet, via: Vec<String> },
    /// Reply: [`Removed`].
    RouteDel { prefix: IpNet },
    /// Replaces every routed entry with this set; with `merge`, installs or
    /// replaces these and keeps the others. Reply: [`Installed`]. For small
    /// tables and scripts; routed uses the increments below.
    RouteSet {
        routes: Vec<Route>,
        #[serde(default)]
        merge: bool,
    },
    /// Increments: withdraws, then adds (an add replaces the entry of the
    /// same prefix). Within a sync (between [`Request::RouteSyncBegin`] and
    /// [`Request::RouteSyncEnd`] on the same connection) the prefixes added
    /// are marked as seen. A route naming a gateway this node does not have
    /// is refused alone (listed in [`Updated::refused`]); the others are
    /// installed. Reply: [`Updated`].
    RouteUpdate {
        #[serde(default)]
        add: Vec<Route>,
        #[serde(default)]
        withdraw: Vec<IpNet>,
        /// More chunks of the same resync follow at once: overlayd may
        /// leave these out of the table its workers use until a request
        /// without it (so a resync in chunks is copied once, not per
        /// chunk). Left out of the JSON when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Starts a full resync on this connection. Reply: [`crate::Empty`].
    RouteSyncBegin,
    /// Ends it: every routed entry not added since the begin is removed.
    /// A connection that closes before the end removes nothing (what a
    /// routed still learning after its start wants). Reply: [`Updated`].
    RouteSyncEnd,
}

/// One routed entry: a prefix and the gateways (by name) it goes to, equal
/// cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: IpNet,
    pub via: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub installed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: bool,
}

/// What a `route_update` or `route_sync_end` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Updated {
    pub added: usize,
    pub withdrawn: usize,
    /// Routed entries in the table afterwards.
    pub routes: usize,
    /// Routes not installed, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub prefix: IpNet,
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.prefix, self.reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub subscribed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedPeers {
    pub peers: Vec<AttachedPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedPeer {
    pub name: String,
    pub role: Role,
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    pub reload: ReloadReport,
    pub firewall_flows_cut: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Peers whose certificate is no longer valid: their sessions were cut.
    pub cut: Vec<CutPeer>,
    /// Files of the certificate directory that were skipped, with why.
    pub skipped_certs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutPeer {
    pub name: String,
    pub reason: String,
}

/// A node's role as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Host,
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Gateway => "gateway",
        }
    }
}

/// One line of the event stream, `{"event": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A peer's certificate was validated: its addresses are forwarded here.
    Attached {
        name: String,
        role: Role,
        site: String,
        addresses: Vec<IpAddr>,
    },
    /// A peer went: its addresses are no longer forwarded here.
    Detached {
        name: String,
        role: Role,
        site: String,
        addresses: Vec<IpAddr>,
        reason: String,
    },
    GatewayUp {
        name: String,
    },
    GatewayDown {
        name: String,
    },
    /// The subscriber fell behind and `missed` events were lost: take the
    /// whole picture again ([`Request::Attached`]).
    Lagged {
        missed: u64,
    },
}

/// The `status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub role: Role,
    pub site: String,
    pub public_key: String,
    /// This node's virtual addresses with their prefix length.
    pub addresses: Vec<IpNet>,
    pub uptime_s: u64,
    pub cert_days_left: i64,
    pub ca_days_left: i64,
    pub crl_serial: Option<u64>,
    pub peers: Vec<PeerStatus>,
    pub drops: Drops,
    pub routes: Vec<RouteRow>,
    pub datapath: Option<Datapath>,
    pub firewall: FirewallStatus,
    /// ICMP / ICMPv6 errors this node sent as a router.
    #[serde(default)]
    pub icmp: IcmpSent,
    /// TCP SYNs whose MSS this node lowered to fit the tunnel MTU.
    #[serde(default)]
    pub mss_clamped: u64,
    /// IPv4 packets without DF cut into fragments to fit a tunnel.
    #[serde(default)]
    pub fragmented: u64,
}

/// ICMP and ICMPv6 errors a gateway sent, by kind, and those its rate limit
/// (1000 a second, bursts of 50) held back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpSent {
    pub time_exceeded: u64,
    pub unreachable: u64,
    /// Fragmentation needed (ICMP) and packet too big (ICMPv6): a packet
    /// larger than the tunnel it was to go into carries.
    #[serde(default)]
    pub too_big: u64,
    pub rate_limited: u64,
}

impl IcmpSent {
    /// Every counter with its name, in document order.
    pub fn iter(&self) -> [(&'static str, u64); 4] {
        [
            ("time_exceeded", self.time_exceeded),
            ("unreachable", self.unreachable),
            ("too_big", self.too_big),
            ("rate_limited", self.rate_limited),
        ]
    }
}

/// What a peer's role is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    Host,
    Gateway,
    /// No validated certificate yet.
    Unknown,
}

impl From<Option<Role>> for PeerRole {
    fn from(r: Option<Role>) -> Self {
        match r {
            Some(Role::Host) => PeerRole::Host,
            Some(Role::Gateway) => PeerRole::Gateway,
            None => PeerRole::Unknown,
        }
    }
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Host => "host",
            PeerRole::Gateway => "gateway",
            PeerRole::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub role: PeerRole,
    /// Listed in this node's config (a gateway tunnel kept up).
    pub configured: bool,
    pub public_key: String,
    pub endpoint: Option<std::net::SocketAddr>,
    pub addresses: Vec<IpAddr>,
    pub site: Option<String>,
    pub authenticated: bool,
    pub attached: bool,
    pub last_handshake_s: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub healthy: bool,
    pub rtt_ms: Option<f64>,
    pub flaps: u64,
    /// The gateway a host sends through now.
    pub active: bool,
    pub spoofed: u64,
    /// The largest inner packet the tunnel carries: the interface MTU until
    /// probing inside the tunnel finds less (see `mtu_learned`).
    #[serde(default)]
    pub mtu: u16,
    /// Whether `mtu` was measured by probing, not assumed.
    #[serde(default)]
    pub mtu_learned: bool,
    /// The tunnel's flap-damping penalty now (a host's tunnel at a
    /// gateway, a gateway's at a host; 0 before its first flap).
    #[serde(default)]
    pub penalty: f64,
    /// Damping holds the tunnel down: a gateway does not attach the host
    /// (its routes stay with its other gateways), a host does not fail
    /// back to the gateway.
    #[serde(default)]
    pub suppressed: bool,
    /// A tunnel between gateways kept by hellos (both ends speak them:
    /// one datagram per probe interval each way) rather than by probes
    /// and replies.
    #[serde(default)]
    pub hellos: bool,
}

/// Why packets were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Source address not owned by the sending peer.
    pub spoofed: u64,
    /// From this node's TUN (the site LAN, local processes) with a source
    /// that is neither this node's address nor in its certificate's
    /// subnets.
    #[serde(default)]
    pub spoofed_local: u64,
    /// From a peer whose certificate is not validated.
    pub unauthenticated: u64,
    /// No forwarding entry for the destination.
    pub no_route: u64,
    /// A host got a packet for an address that is not its own.
    pub not_for_us: u64,
    /// From another gateway with a source this gateway has no path for
    /// through that gateway or its site (feasible-path uRPF, RFC 3704).
    #[serde(default)]
    pub no_reverse_path: u64,
    /// An identity answer (WhoIsReply) nobody asked that peer for.
    #[serde(default)]
    pub unsolicited: u64,
    /// Undecodable or unauthenticated datagrams.
    pub invalid: u64,
    /// Data with a counter already seen (a duplicate, or a replay).
    pub replayed: u64,
    /// A new unknown key while the pending table was full.
    pub pending_full: u64,
    /// A new key while the peer table (`limits.max_peers`) was full.
    #[serde(default)]
    pub peers_full: u64,
    /// Pending peers that sent nothing after their handshake, evicted.
    pub pending_evicted: u64,
    /// Handshakes answered with a cookie (under load).
    pub cookies_sent: u64,
    /// Screened initiations that fell off a full backlog.
    pub handshake_backlog: u64,
    /// Initiations with a valid cookie, under load, beyond their source
    /// address's rate (`limits.handshake_source_rate`).
    #[serde(default)]
    pub handshake_source_limit: u64,
    /// Certificates presented in-band that failed validation.
    pub bad_cert: u64,
    /// No endpoint known for the chosen peer yet.
    pub no_endpoint: u64,
    /// Arrived at a gateway with a TTL / hop limit of 1 or 0 (time
    /// exceeded is sent back, rate limited).
    #[serde(default)]
    pub ttl_expired: u64,
    /// Larger than the tunnel they were to go into carries, with DF set
    /// (or IPv6): fragmentation needed / packet too big went back.
    #[serde(default)]
    pub too_big: u64,
    /// Data for a session this node does not have (a peer still on the
    /// session of a process before a restart); a gateway tells the sender
    /// so it handshakes at once.
    #[serde(default)]
    pub unknown_session: u64,
}

impl Drops {
    /// Every counter with its name, in document order.
    pub fn iter(&self) -> [(&'static str, u64); 20] {
        [
            ("spoofed", self.spoofed),
            ("spoofed_local", self.spoofed_local),
            ("unauthenticated", self.unauthenticated),
            ("no_route", self.no_route),
            ("not_for_us", self.not_for_us),
            ("no_reverse_path", self.no_reverse_path),
            ("unsolicited", self.unsolicited),
            ("invalid", self.invalid),
            ("replayed", self.replayed),
            ("pending_full", self.pending_full),
            ("peers_full", self.peers_full),
            ("pending_evicted", self.pending_evicted),
            ("cookies_sent", self.cookies_sent),
            ("handshake_backlog", self.handshake_backlog),
            ("handshake_source_limit", self.handshake_source_limit),
            ("bad_cert", self.bad_cert),
            ("no_endpoint", self.no_endpoint),
            ("ttl_expired", self.ttl_expired),
            ("too_big", self.too_big),
            ("unknown_session", self.unknown_session),
        ]
    }
}

/// Where a forwarding entry came from; for one prefix the later wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteOrigin {
    Routed,
    Static,
    Cert,
}

impl RouteOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteOrigin::Routed => "routed",
            RouteOrigin::Static => "static",
            RouteOrigin::Cert => "cert",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub prefix: IpNet,
    pub origin: RouteOrigin,
    /// Peer names, or `local` for this node's TUN.
    pub via: Vec<String>,
}

/// How the data path runs (what the kernel allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datapath {
    pub tun_offload: bool,
    pub tun_queues: usize,
    pub udp_gso_segments_v4: Option<usize>,
    pub udp_gso_segments_v6: Option<usize>,
    pub udp_gro_segments_v4: Option<usize>,
    pub udp_gro_segments_v6: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirewallStatus {
    pub enabled: bool,
    /// Present when enabled.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<FirewallDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallDetail {
    pub identities_learned: usize,
    /// Identities wanted and not answered yet (bounded, given up after
    /// 10 s).
    #[serde(default)]
    pub identities_wanted: usize,
    pub inbound_default: String,
    pub outbound_default: String,
    pub inbound: Vec<RuleHits>,
    pub outbound: Vec<RuleHits>,
    pub inbound_default_hits: u64,
    pub outbound_default_hits: u64,
    pub tracked_flows: usize,
    pub tracked_pass: u64,
    pub dropped: u64,
    pub malformed: u64,
    pub table_full: u64,
    pub cut_by_reload: u64,
    pub orphan_fragments: u64,
    /// Denied by a rule naming an identity that was still being asked
    /// (identity rules fail closed).
    #[serde(default)]
    pub identity_pending: u64,
    /// New flows refused: their remote had its share of the table.
    #[serde(default)]
    pub remote_full: u64,
    /// Flows never answered, evicted for a new one in a full table.
    #[serde(default)]
    pub evicted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHits {
    pub index: usize,
    pub direction: String,
    pub rule: String,
    pub hits: u64,
}

/// `overlayd firewall explain --json`: the decision for one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub direction: String,
    pub from: IpAddr,
    pub to: IpAddr,
    pub proto: String,
    pub port: Option<u16>,
    pub remote: IpAddr,
    pub remote_identity: Option<RemoteIdentity>,
    /// `accept` or `drop`.
    pub decision: String,
    pub rule_index: Option<usize>,
    pub rule: Option<String>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteIdentity {
    pub name: String,
    pub groups: Vec<String>,
    pub site: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_parse_and_unknown_ones_are_refused() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"route_add","prefix":"10.77.2.0/24","via":["g"]}"#)
                .unwrap();
        assert!(matches!(r, Request::RouteAdd { .. }));
        let r: Request = serde_json::from_str(r#"{"cmd":"route_set","routes":[]}"#).unwrap();
        assert!(matches!(r, Request::RouteSet { merge: false, .. }));
        let r: Request =
            serde_json::from_str(r#"{"cmd":"route_update","withdraw":["10.1.0.0/16"]}"#).unwrap();
        assert_eq!(
            r,
            Request::RouteUpdate {
                add: vec![],
                withdraw: vec!["10.1.0.0/16".parse().unwrap()],
                more: false,
            }
        );
        for bad in [
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"route_add","prefix":"10.77.2.0/33","via":[]}"#,
            r#"{"cmd":"route_set","routes":[],"merge":"yes"}"#,
            r#"{"cmd":"route_update","add":[{"prefix":"10.0.0.0/8"}]}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn events_keep_the_documented_shape() {
        let ev = Event::Detached {
            name: "h1".into(),
            role: Role::Host,
            site: "a".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            reason: "silent".into(),
        };
        let s = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            s,
            r#"{"event":"detached","name":"h1","role":"host","site":"a","addresses":["10.0.0.1"],"reason":"silent"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), ev);
        let lag: Event = serde_json::from_str(r#"{"event":"lagged","missed":7}"#).unwrap();
        assert_eq!(lag, Event::Lagged { missed: 7 });
    }

    #[test]
    fn a_disabled_firewall_is_one_field() {
        let f = FirewallStatus {
            enabled: false,
            detail: None,
        };
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(s, r#"{"enabled":false}"#);
        assert_eq!(serde_json::from_str::<FirewallStatus>(&s).unwrap(), f);
    }

    proptest! {
        /// A control-socket line from a broken client never panics the
        /// parser (the connection just gets an error reply).
        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,200}") {
            let _ = serde_json::from_str::<Request>(&line);
            let _ = serde_json::from_str::<Event>(&line);
        }

        /// Every route update survives the wire.
        #[test]
        fn route_updates_round_trip(
            adds in proptest::collection::vec((any::<u32>(), 0u8..=32, proptest::collection::vec("[a-z0-9-]{1,12}", 1..4)), 0..20),
            withdraws in proptest::collection::vec((any::<u128>(), 0u8..=128), 0..20),
        ) {
            let add = adds.into_iter().map(|(a, l, via)| Route {
                prefix: IpNet::new(IpAddr::V4(a.into()), l).unwrap().trunc(),
                via,
            }).collect();
            let withdraw = withdraws.into_iter().map(|(a, l)| IpNet::new(IpAddr::V6(a.into()), l).unwrap().trunc()).collect();
            let r = Request::RouteUpdate { add, withdraw, more: false };
            let back: Request = serde_json::from_str(crate::line(&r).trim_end()).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}
