//! overlayd's command line, defined once: the binary parses it, and
//! `cubenet-docs` makes the man page and shell completions from it.

use crate::config;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The version and the commit this was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CUBENET_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "overlayd", version = VERSION, about = "cubenet data plane")]
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
    /// Check a config and the identity it names, then exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the running daemon's state.
    Status {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The firewall, offline.
    Firewall {
        #[command(subcommand)]
        cmd: FirewallCmd,
    },
}

#[derive(Subcommand)]
pub enum FirewallCmd {
    /// What the rules of a config do with a flow, and which rule decides:
    /// a dry run before deploying.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// The address opening the flow.
        #[arg(long)]
        from: std::net::IpAddr,
        /// The remote end's certificate (else the config's cert_dir is
        /// searched); without one only address rules can match.
        #[arg(long)]
        from_cert: Option<PathBuf>,
        #[arg(long)]
        to: std::net::IpAddr,
        /// tcp, udp, icmp or any
        #[arg(long)]
        proto: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        json: bool,
    },
}

/// The whole command line, for generators.
pub fn command() -> clap::Command {
    Cli::command()
}
