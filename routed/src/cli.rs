//! routed's command line, defined once: the binary parses it, and
//! `cubenet-docs` makes the man page and shell completions from it.

use crate::config;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The version and the commit this was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CUBENET_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "routed",
    version = VERSION,
    about = "cubenet route daemon: BGP + BFD between gateways"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config and the certificates it names, then exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Neighbours: state, BFD, flaps, damping. Exits 1 when a configured
    /// neighbour is not established.
    Status {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make the running routed read its config again (as SIGHUP does) and
    /// print what changed. A refused reload prints why (file and key) and
    /// exits 2; the running config stays.
    Reload {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Restart the running routed gracefully (RFC 4724): it ends its
    /// sessions without a NOTIFICATION and starts again in place (a new
    /// program file is picked up), keeping the kernel's and overlayd's
    /// routes; neighbours with graceful restart keep its routes meanwhile.
    /// Needs `[graceful_restart] enabled = true`.
    Restart {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The best routes: prefix, via, equal-cost paths, origin, age.
    Routes {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// The whole command line, for generators.
pub fn command() -> clap::Command {
    Cli::command()
}
