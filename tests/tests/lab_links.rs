//! `cubenet-lab link`: failures of the underlay path between two nodes,
//! seen as a cross-site ping between two sites with static forwarding.

mod common;

use common::{netns_or_skip, Lab};
use std::time::{Duration, Instant};

const TWO_SITES: &str = "[[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n";
/// ams-h1, reached from fra-h1 through fra-gw1 and ams-gw1.
const FAR_HOST: &str = "10.77.2.11";

fn ping_fails(lab: &Lab, why: &str) {
    let out = lab.ping("fra-h1", FAR_HOST, 3);
    assert!(
        !out.status.success(),
        "{why}: fra-h1 still reaches {FAR_HOST}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Waits until a ping from fra-h1 to the far host is answered: the tunnels
/// recover on their own once the path is back; the bound only stops a hung
/// test.
fn ping_recovers(lab: &Lab, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.ping("fra-h1", FAR_HOST, 1).status.success() {
        assert!(
            Instant::now() < deadline,
            "{why}: fra-h1 does not reach {FAR_HOST} again within 30 s"
        );
    }
}

/// The lab's nftables rules in a node about one peer.
fn rules_about(lab: &Lab, node: &str, peer: &str) -> usize {
    lab.exec_ok(node, &["nft", "list", "ruleset"])
        .matches(&format!("cubenet-lab link {peer}\""))
        .count()
}

#[test]
fn drop_between_gateways_and_heal() {
    if !netns_or_skip("drop_between_gateways_and_heal") {
        return;
    }
    let lab = Lab::up(TWO_SITES);
    assert!(lab.ping("fra-h1", FAR_HOST, 2).status.success());

    lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "drop"]);
    lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "drop"]);
    // One ingress and one output rule, however often it is set.
    assert_eq!(rules_about(&lab, "fra-gw1", "ams-gw1"), 2);
    ping_fails(&lab, "after drop");

    lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "heal"]);
    assert_eq!(rules_about(&lab, "fra-gw1", "ams-gw1"), 0);
    ping_recovers(&lab, "after heal");

    // A host's path to its gateway is on the site LAN; heal works from
    // either end.
    lab.lab_ok(&["link", "fra-h1", "fra-gw1", "drop"]);
    ping_fails(&lab, "after drop on the LAN");
    lab.lab_ok(&["link", "fra-gw1", "fra-h1", "heal"]);
    assert_eq!(rules_about(&lab, "fra-h1", "fra-gw1"), 0);
    ping_recovers(&lab, "after heal on the LAN");
}

#[test]
fn loss_100_and_loss_0() {
    if !netns_or_skip("loss_100_and_loss_0") {
        return;
    }
    let lab = Lab::up(TWO_SITES);
    assert!(lab.ping("fra-h1", FAR_HOST, 2).status.success());
    lab.lab_ok(&["link", "ams-gw1", "fra-gw1", "loss", "30"]);
    let rules = lab.exec_ok("ams-gw1", &["nft", "list", "ruleset"]);
    assert_eq!(
        rules.matches("numgen random mod 100 < 30 drop").count(),
        2,
        "{rules}"
    );
    // A new loss replaces the pair's rules.
    lab.lab_ok(&["link", "ams-gw1", "fra-gw1", "loss", "100"]);
    assert_eq!(rules_about(&lab, "ams-gw1", "fra-gw1"), 2);
    ping_fails(&lab, "after loss 100");
    lab.lab_ok(&["link", "ams-gw1", "fra-gw1", "loss", "0"]);
    assert_eq!(rules_about(&lab, "ams-gw1", "fra-gw1"), 0);
    ping_recovers(&lab, "after loss 0");
}

#[test]
fn carrier_down_and_up() {
    if !netns_or_skip("carrier_down_and_up") {
        return;
    }
    let lab = Lab::up(TWO_SITES);
    assert!(lab.ping("fra-h1", FAR_HOST, 2).status.success());
    lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "down"]);
    let wan0 = lab.exec_ok("fra-gw1", &["ip", "-br", "link", "show", "wan0"]);
    assert!(wan0.contains("DOWN"), "{wan0}");
    ping_fails(&lab, "after down");
    lab.lab_ok(&["link", "fra-gw1", "ams-gw1", "up"]);
    ping_recovers(&lab, "after up");
}

#[test]
fn bad_link_requests_name_what_is_wrong() {
    if !netns_or_skip("bad_link_requests_name_what_is_wrong") {
        return;
    }
    let lab = Lab::up(TWO_SITES);
    for (args, want) in [
        (&["link", "fra-gw1", "nope", "drop"][..], "nope"),
        (
            &["link", "fra-h1", "ams-gw1", "drop"][..],
            "no underlay path",
        ),
        (&["link", "fra-gw1", "ams-gw1", "loss"][..], "PCT"),
        (&["link", "fra-gw1", "ams-gw1", "loss", "101"][..], "101"),
    ] {
        let out = lab.lab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    // Nothing was changed by them.
    assert_eq!(rules_about(&lab, "fra-gw1", "ams-gw1"), 0);
    assert!(lab.ping("fra-h1", FAR_HOST, 2).status.success());
}
