//! cubenet-lab's command line, defined once: the binary parses it, and
//! `cubenet-docs` makes the man page and shell completions from it.

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// The version and the commit this was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CUBENET_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "cubenet-lab",
    version = VERSION,
    about = "cubenet in network namespaces on one machine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Build the topology of SPEC, start the daemons, wait until converged.
    Up {
        spec: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run a command in a node's namespace (on an overlayd node with the
    /// node's own /var/run/wireguard, so `wg show cube0` asks its overlayd).
    Exec {
        dir: PathBuf,
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print a node's virtual IPs, one per line.
    Addr { dir: PathBuf, node: String },
    /// Signal a node's daemons (default TERM; HUP reloads).
    Kill {
        dir: PathBuf,
        node: String,
        #[arg(long, default_value = "TERM")]
        signal: String,
        /// Only this daemon (overlayd, routed, wireguard-go, bird, gobgpd, zebra, bgpd, bfdd).
        #[arg(long)]
        daemon: Option<String>,
    },
    /// (Re)start a node's daemons that are not running, with the same
    /// identity.
    Start { dir: PathBuf, node: String },
    /// Wait until every node is attached and converged (with routed: every
    /// gateway's sessions established and host routes learned).
    Wait {
        dir: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Show the lab.
    Status {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Act on the underlay path between two nodes: down|up|drop|heal|loss PCT.
    ///
    /// Gateways reach each other over the shared "internet" segment (their
    /// wan0); a host reaches the other nodes of its site over the site LAN
    /// (lan0); a host and a node of another site have no underlay path.
    ///
    /// drop: silently drop the traffic between the two nodes' underlay
    /// addresses, both directions, with nftables rules in NODE_A's namespace
    /// (tables `netdev cubenet_lab` and `inet cubenet_lab`). loss PCT: drop
    /// PCT % of it each way (random); `loss 0` heals. heal: remove the pair's
    /// drop/loss rules, whichever of the two nodes they were set in. Setting
    /// drop or loss again replaces the pair's rules (no duplicates).
    ///
    /// down/up: set NODE_A's interface on the path down (no carrier) or up.
    /// That interface is shared by several paths: a gateway's wan0 carries its
    /// paths to every other gateway, and lan0 its paths to every node of its
    /// site; so `down` cuts them all.
    Link {
        /// The lab's directory (`up --dir`).
        dir: PathBuf,
        /// The node whose namespace gets the rules, or whose interface goes
        /// down/up.
        node_a: String,
        /// The node at the other end of the path.
        node_b: String,
        #[arg(value_enum)]
        action: Action,
        /// Loss in percent, 0-100 (with `loss` only).
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        pct: Option<u8>,
    },
    /// Move a host to another site, as a VM re-created there: its overlayd
    /// is killed, its LAN port moves to that site's switch with a new
    /// address, its config lists that site's gateways, and it starts again
    /// with the same key and certificate.
    Move {
        dir: PathBuf,
        host: String,
        site: String,
    },
    /// Stop every daemon and remove every namespace of the lab.
    Down { dir: PathBuf },
    /// Time an event across the lab: watch the route to PREFIX in every
    /// gateway's overlayd (the table it forwards by) and print `ready` once
    /// every gateway has been looked at, then `NAME UNIX_SECONDS` as each
    /// gateway's route gets to UNTIL, and last `longest_round_ms N` (how
    /// stale a time can be). Fails naming the gateways not there in time
    /// (or, with --changed, any already there at the first look).
    Watch {
        dir: PathBuf,
        prefix: ipnet::IpNet,
        /// `gone`, `present`, `via:GATEWAY` or `without:GATEWAY` (present
        /// and via GATEWAY, or not; the gateways of GATEWAY's site, which
        /// reach their hosts directly, are not watched).
        #[arg(long)]
        until: String,
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        /// The event has not happened yet: fail if a gateway is already
        /// there at the first look.
        #[arg(long)]
        changed: bool,
    },
}

/// What `link` does to the underlay path between two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Set NODE_A's interface on the path down (no carrier).
    Down,
    /// Set it up again.
    Up,
    /// Drop the pair's traffic silently, both directions, in NODE_A.
    Drop,
    /// Remove the pair's drop/loss rules (in both nodes).
    Heal,
    /// Drop PCT % of the pair's packets each way, in NODE_A (0 heals).
    Loss,
}

/// The whole command line, for generators.
pub fn command() -> clap::Command {
    Cli::command()
}
