//! overlayd's parts as a library: the binary in `main.rs` drives them, and
//! the load tools (`cubenet-swarm`) and tests speak the same in-band protocol.

pub mod batch;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod driver;
pub mod fib;
pub mod firewall;
pub mod health;
pub mod icmp;
pub mod identity;
pub mod inband;
pub mod mss;
pub mod netlink;
pub mod node;
pub mod packet;
pub mod page;
pub mod peer;
pub mod peers;
pub mod pmtu;
pub mod prom;
pub mod source_limit;
pub mod stale;
pub mod sys;
pub mod uapi;
pub mod uapi_socket;

/// Standard base64, as keys are written in configs and status.
pub fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
