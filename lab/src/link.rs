//! `cubenet-lab link`: failures of the underlay path between two nodes.
//!
//! Gateways meet on the shared "internet" segment (`wan0`); a host and any
//! other node of its site meet on the site LAN (`lan0`). `drop` and `loss`
//! are nftables rules in NODE_A's namespace, in tables of the lab's own
//! (`netdev cubenet_lab`: an ingress chain per interface; `inet
//! cubenet_lab`: an output chain), each rule matching the pair's underlay
//! addresses and commented with the peer's name, so that `heal` removes
//! exactly the rules of that pair. This kernel has no netem (DESIGN §6).

use crate::state::{Lab, Node};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// The lab's nftables table, in the `netdev` and `inet` families.
const TABLE: &str = "cubenet_lab";

pub use cubenet_lab::cli::Action;

/// Bad usage (unknown node, no path, bad PCT): exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The underlay path between two nodes, seen from `local`'s end.
struct UnderlayPath<'a> {
    local: &'a Node,
    peer: &'a Node,
    /// `local`'s interface carrying the path.
    ifname: &'static str,
    local_addr: &'a str,
    peer_addr: &'a str,
    /// The pair's IPv6 addresses on the path, when both have one (the
    /// site LANs are dual stack): a drop takes both families.
    v6: Option<(&'a str, &'a str)>,
}

pub fn run(lab: &Lab, node_a: &str, node_b: &str, action: Action, pct: Option<u8>) -> Result<()> {
    let pct = check_pct(action, pct)?;
    let a = find(lab, node_a)?;
    let b = find(lab, node_b)?;
    let path = underlay_path(a, b)?;
    match (action, pct) {
        (Action::Down, _) => set_link(&path, "down"),
        (Action::Up, _) => set_link(&path, "up"),
        (Action::Drop, _) => install(&path, None),
        (Action::Loss, Some(p)) if p > 0 => install(&path, Some(p)),
        (Action::Heal | Action::Loss, _) => heal(&path),
    }
}

fn check_pct(action: Action, pct: Option<u8>) -> Result<Option<u8>, Usage> {
    match (action, pct) {
        (Action::Loss, None) => Err(Usage("loss needs PCT, a loss in percent (0-100)".into())),
        (Action::Loss, Some(p)) if p > 100 => Err(Usage(format!(
            "PCT: {p} is outside 0-100 (a loss in percent)"
        ))),
        (Action::Loss, p) => Ok(p),
        (_, Some(p)) => Err(Usage(format!(
            "PCT ({p}) goes with `loss` only, not `{}`",
            action_name(action)
        ))),
        (_, None) => Ok(None),
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Down => "down",
        Action::Up => "up",
        Action::Drop => "drop",
        Action::Heal => "heal",
        Action::Loss => "loss",
    }
}

fn find<'a>(lab: &'a Lab, name: &str) -> Result<&'a Node, Usage> {
    lab.node(name).map_err(|e| Usage(format!("{e:#}")))
}

/// Gateways reach each other over the internet segment (`wan0`, their
/// second underlay address); the nodes of one site meet on its LAN.
fn underlay_path<'a>(a: &'a Node, b: &'a Node) -> Result<UnderlayPath<'a>, Usage> {
    if a.name == b.name {
        return Err(Usage(format!(
            "{} and {} are the same node: a path needs two",
            a.name, b.name
        )));
    }
    let (ifname, idx) = if a.role == "gateway" && b.role == "gateway" {
        ("wan0", 1)
    } else if a.site == b.site {
        ("lan0", 0)
    } else {
        return Err(Usage(format!(
            "no underlay path between {} (site {}) and {} (site {}): a host reaches only its own site's LAN, and gateways meet on the internet segment",
            a.name, a.site, b.name, b.site
        )));
    };
    let addr = |n: &'a Node| {
        n.underlay
            .get(idx)
            .map(String::as_str)
            .ok_or_else(|| Usage(format!("{}: no underlay address on {ifname}", n.name)))
    };
    let v6 = match (ifname, a.lan6.as_deref(), b.lan6.as_deref()) {
        ("lan0", Some(x), Some(y)) => Some((x, y)),
        _ => None,
    };
    Ok(UnderlayPath {
        local: a,
        peer: b,
        ifname,
        local_addr: addr(a)?,
        peer_addr: addr(b)?,
        v6,
    })
}

fn set_link(path: &UnderlayPath, state: &str) -> Result<()> {
    let ns = &path.local.namespace;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "link", "set", path.ifname, state])
        .output()
        .with_context(|| format!("{}: running ip link set {}", path.local.name, path.ifname))?;
    if !out.status.success() {
        bail!(
            "{}: ip link set {} {state}: {}",
            path.local.name,
            path.ifname,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The comment marking the rules of `local`'s namespace about `peer`.
fn comment(peer: &Node) -> String {
    format!("cubenet-lab link {}", peer.name)
}

/// Replaces the pair's rules in `local`'s namespace with a drop (`pct`
/// None) or a random loss, in one nftables transaction: never a moment
/// without rules, never two sets.
fn install(path: &UnderlayPath, pct: Option<u8>) -> Result<()> {
    let c = comment(path.peer);
    // nft types `numgen random mod 100` as 0-99 and refuses `< 100`.
    let verdict = match pct {
        None | Some(100..) => "drop".to_string(),
        Some(p) => format!("numgen random mod 100 < {p} drop"),
    };
    let (ifname, local, peer) = (path.ifname, path.local_addr, path.peer_addr);
    let mut script = format!(
        "add table netdev {TABLE}\n\
         add chain netdev {TABLE} in_{ifname} {{ type filter hook ingress device \"{ifname}\" priority -500; policy accept; }}\n\
         add table inet {TABLE}\n\
         add chain inet {TABLE} output {{ type filter hook output priority -500; policy accept; }}\n"
    );
    script.push_str(&delete_rules(path.local, &c)?);
    script.push_str(&format!(
        "add rule netdev {TABLE} in_{ifname} ip saddr {peer} ip daddr {local} {verdict} comment \"{c}\"\n\
         add rule inet {TABLE} output ip saddr {local} ip daddr {peer} {verdict} comment \"{c}\"\n"
    ));
    if let Some((local, peer)) = path.v6 {
        script.push_str(&format!(
            "add rule netdev {TABLE} in_{ifname} ip6 saddr {peer} ip6 daddr {local} {verdict} comment \"{c}\"\n\
             add rule inet {TABLE} output ip6 saddr {local} ip6 daddr {peer} {verdict} comment \"{c}\"\n"
        ));
    }
    nft_apply(path.local, &script)
}

/// Removes the pair's rules: NODE_A's about NODE_B and NODE_B's about
/// NODE_A (so `heal` works whichever end the failure was set from).
fn heal(path: &UnderlayPath) -> Result<()> {
    for (local, peer) in [(path.local, path.peer), (path.peer, path.local)] {
        let script = delete_rules(local, &comment(peer))?;
        if !script.is_empty() {
            nft_apply(local, &script)?;
        }
    }
    Ok(())
}

/// `delete rule` lines for the rules of the lab's tables in `n`'s namespace
/// that carry `comment`.
fn delete_rules(n: &Node, comment: &str) -> Result<String> {
    let ruleset = nft_ruleset(n)?;
    Ok(rules_with_comment(&ruleset, comment)
        .into_iter()
        .map(|(family, chain, handle)| {
            format!("delete rule {family} {TABLE} {chain} handle {handle}\n")
        })
        .collect())
}

/// What the lab reads of `nft -j list ruleset` (libnftables' JSON): the
/// rules; tables, chains and the rest are items without a `rule`.
#[derive(serde::Deserialize)]
struct Ruleset {
    #[serde(default)]
    nftables: Vec<NftItem>,
}

#[derive(serde::Deserialize)]
struct NftItem {
    rule: Option<NftRule>,
}

#[derive(serde::Deserialize)]
struct NftRule {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    #[serde(default)]
    comment: Option<String>,
}

/// (family, chain, handle) of the rules of the lab's tables in an
/// `nft -j list ruleset` answer that carry `comment`.
fn rules_with_comment(ruleset: &Ruleset, comment: &str) -> Vec<(String, String, u64)> {
    ruleset
        .nftables
        .iter()
        .filter_map(|item| item.rule.as_ref())
        .filter(|r| r.table == TABLE && r.comment.as_deref() == Some(comment))
        .map(|r| (r.family.clone(), r.chain.clone(), r.handle))
        .collect()
}

fn nft_ruleset(n: &Node) -> Result<Ruleset> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n.namespace,
            "nft",
            "-j",
            "list",
            "ruleset",
        ])
        .output()
        .with_context(|| format!("{}: running nft (install nftables)", n.name))?;
    if !out.status.success() {
        bail!(
            "{}: nft list ruleset: {}",
            n.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: nft -j list ruleset: not JSON", n.name))
}

/// Applies an nftables script in `n`'s namespace as one transaction.
fn nft_apply(n: &Node, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{}: running nft (install nftables)", n.name))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .with_context(|| format!("{}: writing to nft", n.name))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{}: waiting for nft", n.name))?;
    if !out.status.success() {
        bail!(
            "{}: nft: {}\nscript:\n{script}",
            n.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, site: &str, role: &str, underlay: &[&str]) -> Node {
        Node {
            name: name.into(),
            site: site.into(),
            role: role.into(),
            kind: "overlayd".into(),
            namespace: format!("clt-{name}"),
            addresses: Vec::new(),
            underlay: underlay.iter().map(|s| s.to_string()).collect(),
            lan6: None,
            key: "k".into(),
            cert: "c".into(),
            overlayd_config: "o".into(),
            overlayd_socket: "s".into(),
            log: "l".into(),
            routed_config: None,
            routed_socket: None,
        }
    }

    #[test]
    fn gateways_meet_on_wan_and_site_nodes_on_lan() {
        let g1 = node("fra-gw1", "fra", "gateway", &["172.16.1.1", "198.18.1.1"]);
        let g2 = node("ams-gw1", "ams", "gateway", &["172.16.2.1", "198.18.2.1"]);
        let h1 = node("fra-h1", "fra", "host", &["172.16.1.101"]);
        let p = underlay_path(&g1, &g2).expect("path");
        assert_eq!(
            (p.ifname, p.local_addr, p.peer_addr),
            ("wan0", "198.18.1.1", "198.18.2.1")
        );
        let p = underlay_path(&h1, &g1).expect("path");
        assert_eq!(
            (p.ifname, p.local_addr, p.peer_addr),
            ("lan0", "172.16.1.101", "172.16.1.1")
        );
        let e = underlay_path(&h1, &g2).err().expect("no path");
        assert!(e.0.contains("no underlay path between fra-h1"), "{e}");
        assert!(underlay_path(&h1, &h1).is_err());
    }

    #[test]
    fn pct_goes_with_loss_only_and_stays_in_range() {
        assert_eq!(check_pct(Action::Loss, Some(30)).ok(), Some(Some(30)));
        assert!(check_pct(Action::Loss, None).is_err());
        assert!(check_pct(Action::Loss, Some(101)).is_err());
        assert!(check_pct(Action::Drop, Some(5)).is_err());
        assert_eq!(check_pct(Action::Heal, None).ok(), Some(None));
    }

    #[test]
    fn only_the_pairs_rules_are_found() {
        let rule = |family: &str, table: &str, chain: &str, handle: u64, comment: &str| {
            json!({"rule": {"family": family, "table": table, "chain": chain,
                "handle": handle, "comment": comment, "expr": []}})
        };
        let ruleset = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "netdev", "name": TABLE, "handle": 1}},
            rule("netdev", TABLE, "in_wan0", 2, "cubenet-lab link ams-gw1"),
            rule("netdev", TABLE, "in_wan0", 3, "cubenet-lab link ams-gw2"),
            rule("inet", TABLE, "output", 4, "cubenet-lab link ams-gw1"),
            rule("inet", "other", "output", 5, "cubenet-lab link ams-gw1"),
        ]});
        let ruleset: Ruleset = serde_json::from_value(ruleset).unwrap();
        assert_eq!(
            rules_with_comment(&ruleset, "cubenet-lab link ams-gw1"),
            vec![
                ("netdev".to_string(), "in_wan0".to_string(), 2),
                ("inet".to_string(), "output".to_string(), 4)
            ]
        );
    }
}
