//! routed's core as a library: the sans-IO BGP-4 router (sessions, BFD,
//! damping, RIB, codec) and the tokio driver the `routed` binary runs, so
//! the lab, the tests and other tools can use them.

pub mod bfd;
pub mod cli;
pub mod config;
pub mod ctl;
pub use cubenet_daemon::damping;
pub mod driver;
pub mod kernel;
pub mod overlay;
pub mod page;
pub mod probe;
pub mod prom;
pub mod rib;
pub mod router;
pub mod session;
/// Routers wired in memory on a virtual clock (tests of this crate and,
/// with the `sim` feature, of others).
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod sockets;
pub mod wire;
