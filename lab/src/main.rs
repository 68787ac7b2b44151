//! `cubenet-lab`: cubenet on one machine. Builds sites, gateways and hosts
//! in network namespaces from a TOML spec, makes the CA, keys, certificates
//! and configs, starts the real daemons and waits until everything is
//! attached. Shared by the demo, the end-to-end tests and users.
//!
//! Exit codes: 0 ok; 1 failure; 2 bad usage or spec.

mod build;
mod link;
mod routed;
mod spec;
mod state;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use state::Lab;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The version and the commit this was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CUBENET_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "cubenet-lab",
    version = VERSION,
    about = "cubenet in network namespaces on one machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topology of SPEC, start the daemons, wait until converged.
    Up {
        spec: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run a command in a node's namespace.
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
        /// Only this daemon (overlayd, routed, wireguard-go, bird, gobgpd).
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
        action: link::Action,
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
}

/// A closed pipe (`| head`) ends this command quietly, as for any Unix tool,
/// instead of a panic in `println!`.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any
    // thread exists; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cubenet-lab: {e:#}");
            let usage = e.downcast_ref::<link::Usage>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up { spec, dir } => {
            let spec = match spec::Spec::load(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cubenet-lab: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let lab = build::up(&spec, &dir)?;
            println!(
                "lab up in {}: {} nodes, namespaces {}-*",
                dir.display(),
                lab.nodes.len(),
                lab.prefix
            );
        }
        Cmd::Exec { dir, node, cmd } => {
            let lab = Lab::load(&dir)?;
            let n = lab.node(&node)?;
            // Replace this process (`ip netns exec` execs in turn), so the
            // command gets signals sent to us and nothing outlives a kill.
            use std::os::unix::process::CommandExt;
            let e = Command::new("ip")
                .args(["netns", "exec", &n.namespace])
                .args(&cmd)
                .exec();
            bail!("running {cmd:?} in {}: {e}", n.namespace);
        }
        Cmd::Addr { dir, node } => {
            let lab = Lab::load(&dir)?;
            for a in &lab.node(&node)?.addresses {
                println!("{}", a.split('/').next().unwrap_or(a));
            }
        }
        Cmd::Kill {
            dir,
            node,
            signal,
            daemon,
        } => {
            let lab = Lab::load(&dir)?;
            let sig = build::parse_signal(&signal)?;
            let n = build::signal_node(&lab, &node, sig, daemon.as_deref())?;
            if n == 0 {
                bail!("{node}: no daemon running");
            }
        }
        Cmd::Start { dir, node } => {
            let lab = Lab::load(&dir)?;
            let n = lab.node(&node)?.clone();
            build::start_node(&lab, &n)?;
        }
        Cmd::Wait { dir, timeout_s } => {
            let lab = Lab::load(&dir)?;
            build::wait_converged(&lab, std::time::Duration::from_secs(timeout_s))?;
        }
        Cmd::Status { dir, json } => {
            let lab = Lab::load(&dir)?;
            let st = build::status(&lab);
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                for n in &st.nodes {
                    println!(
                        "{:<12} {:<8} {:<6} {:<28} pids {:?}",
                        n.name,
                        n.role,
                        n.site,
                        n.addresses.join(" "),
                        n.pids
                    );
                }
            }
        }
        Cmd::Link {
            dir,
            node_a,
            node_b,
            action,
            pct,
        } => {
            let lab = Lab::load(&dir)?;
            link::run(&lab, &node_a, &node_b, action, pct)?;
        }
        Cmd::Move { dir, host, site } => {
            let mut lab = Lab::load(&dir)?;
            build::move_host(&mut lab, &host, &site)?;
        }
        Cmd::Down { dir } => {
            let lab = Lab::load(&dir)?;
            build::down(&lab)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
