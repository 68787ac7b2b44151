//! overlay-cert's command line, defined once: the binary parses it, and
//! `cubenet-docs` makes the man page and shell completions from it.

use crate::time::parse_time;
use crate::Role;
use clap::{CommandFactory, Parser, Subcommand};
use ipnet::IpNet;
use std::path::PathBuf;

/// The version and the commit this was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CUBENET_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "overlay-cert",
    version = VERSION,
    about = "cubenet certificate authority"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a CA: DIR/ca.key (0600) and DIR/ca.crt.
    Ca {
        #[arg(long)]
        name: String,
        /// Overlay networks the CA hands out addresses from (repeatable).
        #[arg(long = "network", required = true, num_args = 1..)]
        networks: Vec<IpNet>,
        #[arg(long)]
        out_dir: PathBuf,
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Generate a node's X25519 (WireGuard) private key; print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a host or gateway certificate.
    Sign {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Virtual IP with the overlay prefix length, e.g. 10.77.1.5/16 (repeatable).
        #[arg(long = "ip", required = true, num_args = 1..)]
        ips: Vec<IpNet>,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long, default_value = "host")]
        role: Role,
        /// Prefixes a gateway may announce (repeatable).
        #[arg(long = "subnet", num_args = 1..)]
        subnets: Vec<IpNet>,
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// The node's public key, base64 (as `overlay-cert keygen` or `wg pubkey` print it).
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        pubkey: Option<String>,
        /// The node's private key file (only its public half is used).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a certificate, CA certificate or revocation list.
    Print {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a node certificate against a CA (and revocation list).
    Verify {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        crl: Option<PathBuf>,
        /// Check as of this time instead of now (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or @UNIX).
        #[arg(long, value_parser = parse_time)]
        at: Option<u64>,
        file: PathBuf,
    },
    /// Add a certificate (file, or its hex fingerprint) to the revocation list,
    /// creating the list or bumping its serial. Given the file, its key is
    /// revoked too: no certificate of that key is valid any more.
    Revoke {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        crl: PathBuf,
        cert: String,
    },
}

/// The whole command line, for generators.
pub fn command() -> clap::Command {
    Cli::command()
}
