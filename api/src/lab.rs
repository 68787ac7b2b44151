//! `cubenet-lab status --json`: what a lab is made of, for users and tests
//! that edit a node's config and reload it.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub dir: PathBuf,
    /// The prefix of every namespace of this lab.
    pub prefix: String,
    pub ca_dir: PathBuf,
    pub crl: PathBuf,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub site: String,
    /// `host`, `gateway` or `router`.
    pub role: String,
    /// What runs there: `overlayd`, `wireguard-go`, `bird`, `gobgp` or `frr`.
    pub kind: String,
    pub namespace: String,
    /// Virtual addresses with their prefix length.
    pub addresses: Vec<String>,
    /// Underlay addresses (site LAN first, then internet on gateways).
    pub underlay: Vec<String>,
    /// The node's daemons that are running.
    pub pids: Vec<i32>,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub overlayd_config: PathBuf,
    pub overlayd_socket: PathBuf,
    pub log: PathBuf,
    /// On gateways of a lab with routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_config: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_log: Option<PathBuf>,
}
