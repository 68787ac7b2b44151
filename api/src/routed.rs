//! routed's control socket: requests and the `status` and `routes`
//! documents.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Longest request line routed accepts.
pub const MAX_LINE: usize = 64 << 10;

/// A request, `{"cmd": "status"}`, `{"cmd": "routes"}` or
/// `{"cmd": "reload"}`. Other keys are ignored, so a newer client's
/// options do not break an older routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Reply: [`Status`].
    Status,
    /// Reply: [`Routes`].
    Routes,
    /// Reads `routed.toml` and the certificates again and applies them, as
    /// SIGHUP does. Reply: [`Reloaded`], or the error (file, key and what is
    /// wrong) when the reload is refused and the running config kept.
    Reload,
    /// Restarts routed gracefully (RFC 4724): it ends its sessions without
    /// a NOTIFICATION and starts again in place, keeping the kernel's and
    /// overlayd's routes, so neighbours that help keep its routes. Reply:
    /// [`cubenet_api::Empty`], or why not (graceful restart off).
    Restart,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Neighbours added: their sessions start.
    pub added: Vec<String>,
    /// Neighbours removed: each heard a Cease (peer de-configured) and
    /// its routes are withdrawn.
    pub removed: Vec<String>,
    /// Neighbours whose session was reset (a Cease, other configuration
    /// change) because a setting it was built with changed.
    pub reset: Vec<ResetNeighbor>,
    /// Neighbours whose export policy changed, applied on the running
    /// session.
    pub updated: Vec<String>,
    /// `[[announce]]` prefixes added (announced, a probed one once its
    /// probe passes), removed (withdrawn), and those whose probe changed.
    pub prefixes_added: Vec<IpNet>,
    pub prefixes_removed: Vec<IpNet>,
    pub probes_changed: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetNeighbor {
    pub name: String,
    /// The keys that changed (`address`, `import`, `timers`, ...).
    pub changed: Vec<String>,
}

/// The `status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub asn: u32,
    pub router_id: std::net::Ipv4Addr,
    pub uptime_s: u64,
    /// routed owns overlayd's table (its neighbours are back, or the
    /// startup grace is over); before, it only adds.
    pub fib_ready: bool,
    /// This process began with a graceful restart and still defers its
    /// End-of-RIB (until `fib_ready`).
    #[serde(default)]
    pub restarting: bool,
    pub own_subnets: Vec<IpNet>,
    pub neighbors: Vec<NeighborStatus>,
}

/// BGP session state (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
    /// A gateway without a session of its own: its paths come through
    /// the route reflectors, and its tunnel is its liveness.
    Reflected,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Idle => "idle",
            SessionState::Connect => "connect",
            SessionState::Active => "active",
            SessionState::OpenSent => "opensent",
            SessionState::OpenConfirm => "openconfirm",
            SessionState::Established => "established",
            SessionState::Reflected => "reflected",
        }
    }
}

/// BFD state (RFC 5880 §4.1), or `disabled` when BFD is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BfdState {
    Disabled,
    AdminDown,
    Down,
    Init,
    Up,
}

impl BfdState {
    pub fn as_str(self) -> &'static str {
        match self {
            BfdState::Disabled => "disabled",
            BfdState::AdminDown => "admindown",
            BfdState::Down => "down",
            BfdState::Init => "init",
            BfdState::Up => "up",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborStatus {
    pub name: String,
    pub address: IpAddr,
    /// A gateway reached through the overlay (not a LAN router).
    pub overlay: bool,
    pub asn: u32,
    pub state: SessionState,
    pub uptime_s: Option<u64>,
    pub bfd: BfdState,
    pub bfd_remote: Option<BfdState>,
    /// The local diagnostic code (RFC 5880 §4.1), by name.
    pub bfd_diag: Option<String>,
    /// BFD packets from the neighbour's address that passed the checks.
    #[serde(default)]
    pub bfd_received: u64,
    /// BFD packets from the neighbour's address that failed them (not
    /// addressed to this session's discriminator, bad fields): forgeries,
    /// or a neighbour that restarted while the session was Up.
    #[serde(default)]
    pub bfd_discarded: u64,
    /// The BFD session's discriminators, ours and the neighbour's (0 until
    /// heard), as FRR's `show bfd peers` gives them.
    #[serde(default)]
    pub bfd_discriminators: Option<(u32, u32)>,
    /// For a gateway without BFD: the tunnel to it as overlayd last
    /// reported it (its probes), `None` before it said anything.
    #[serde(default)]
    pub tunnel_up: Option<bool>,
    pub reconnect_s: u64,
    pub flaps: u64,
    pub penalty: f64,
    pub suppressed: bool,
    pub suppressed_for_s: Option<f64>,
    /// Its routes are in the RIB (not held down by damping).
    pub usable: bool,
    pub last_error: Option<String>,
    pub routes_in: usize,
    pub routes_out: usize,
    pub rejected: u64,
    pub treat_as_withdraw: u64,
    /// Paths kept while the neighbour restarts (graceful restart helper,
    /// RFC 4724), until it sends them again or its time is up.
    #[serde(default)]
    pub stale_routes: usize,
    /// Best routes not sent to this neighbour, by reason: for a router on
    /// a LAN, a family without an address of ours on the link to it (no
    /// next hop it could use).
    #[serde(default)]
    pub not_sent: std::collections::BTreeMap<String, u64>,
    pub damped_prefixes: Vec<IpNet>,
    pub history: Vec<FlapEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlapEvent {
    /// RFC 3339.
    pub at: String,
    pub event: UpDown,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpDown {
    Up,
    Down,
}

/// The `routes` document: the best routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    pub routes: Vec<RouteStatus>,
}

/// Where a best route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteOrigin {
    /// From a neighbour.
    Learned,
    /// A host attached to this gateway.
    Host,
    /// A site prefix this gateway's certificate allows.
    Site,
}

impl RouteOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteOrigin::Learned => "learned",
            RouteOrigin::Host => "host",
            RouteOrigin::Site => "site",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub prefix: IpNet,
    pub best: Option<String>,
    /// Neighbour names of the equal-cost paths, or `local`.
    pub via: Vec<String>,
    pub ecmp: usize,
    pub origin: RouteOrigin,
    pub as_path: Vec<u32>,
    pub candidates: usize,
    pub age_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_extra_keys_are_ignored_and_unknown_ones_named() {
        let r: Request = serde_json::from_str(r#" {"cmd": "routes", "x": 1} "#).unwrap();
        assert_eq!(r, Request::Routes);
        let e = serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).unwrap_err();
        assert!(e.to_string().contains("reboot"), "{e}");
        let e = serde_json::from_str::<Request>("{}").unwrap_err();
        assert!(e.to_string().contains("cmd"), "{e}");
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
    }

    #[test]
    fn state_names_are_the_serialised_names() {
        use SessionState as S;
        for s in [
            S::Idle,
            S::Connect,
            S::Active,
            S::OpenSent,
            S::OpenConfirm,
            S::Established,
            S::Reflected,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        use BfdState as B;
        for b in [B::Disabled, B::AdminDown, B::Down, B::Init, B::Up] {
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                format!("\"{}\"", b.as_str())
            );
        }
    }

    #[test]
    fn states_are_written_as_the_readme_shows() {
        assert_eq!(
            serde_json::to_string(&SessionState::OpenConfirm).unwrap(),
            r#""openconfirm""#
        );
        assert_eq!(
            serde_json::to_string(&BfdState::AdminDown).unwrap(),
            r#""admindown""#
        );
    }
}
