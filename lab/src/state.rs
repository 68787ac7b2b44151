//! What `up` built, saved as `DIR/lab.json` so that the other commands (and
//! users' scripts) can find every node's namespace, files and processes.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub site: String,
    pub role: String,
    /// What runs there: "overlayd" or "wireguard-go".
    #[serde(default = "overlayd")]
    pub kind: String,
    pub namespace: String,
    /// Virtual addresses with prefix length.
    pub addresses: Vec<String>,
    /// Underlay addresses (site LAN first, then internet on gateways).
    pub underlay: Vec<String>,
    /// The node's IPv6 address on the site LAN (the LANs are dual stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan6: Option<String>,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub overlayd_config: PathBuf,
    pub overlayd_socket: PathBuf,
    pub log: PathBuf,
    /// Gateways of a lab with `routed = true` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_config: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_socket: Option<PathBuf>,
}

fn overlayd() -> String {
    "overlayd".into()
}

impl Node {
    /// routed's log, beside its config.
    pub fn routed_log(&self) -> Option<PathBuf> {
        self.routed_config
            .as_ref()
            .map(|c| c.with_file_name("routed.log"))
    }

    /// The node's own `/var/run/wireguard` (overlayd nodes). The lab's
    /// namespaces share the machine's filesystem, where every overlayd's
    /// UAPI socket would be `cube0.sock`; so each daemon of the node, and
    /// each command `cubenet-lab exec` runs there, sees this directory
    /// there instead (a bind mount in the mount namespace `ip netns exec`
    /// makes for it), and `wg show cube0` in the node asks its overlayd.
    pub fn wireguard_dir(&self) -> Option<PathBuf> {
        (self.kind == "overlayd").then(|| self.overlayd_config.with_file_name("wireguard"))
    }

    /// The node's IPv4 virtual address, without prefix length.
    pub fn virtual_v4(&self) -> Option<std::net::Ipv4Addr> {
        self.addresses
            .iter()
            .find_map(|a| a.split('/').next()?.parse().ok())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    /// Namespaces that are not nodes (switches).
    pub switches: Vec<String>,
    pub nodes: Vec<Node>,
    pub ca_dir: PathBuf,
    pub crl: PathBuf,
}

impl Lab {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    pub fn load(dir: &Path) -> Result<Lab> {
        let p = Lab::path(dir);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: no lab here (run `cubenet-lab up SPEC --dir {}` first)",
                p.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: corrupt", p.display()))
    }

    pub fn save(&self) -> Result<()> {
        let p = Lab::path(&self.dir);
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            format!(
                "no node {name:?} in this lab (nodes: {})",
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    pub fn pid_file(&self, node: &str, daemon: &str) -> PathBuf {
        self.dir
            .join("nodes")
            .join(node)
            .join(format!("{daemon}.pid"))
    }
}
