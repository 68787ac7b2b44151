//! A reload with bad input is refused as a whole and what runs stays: a
//! bad firewall rule next to a good one, a broken or foreign certificate,
//! a malformed revocation list. Asked through the control socket (which
//! replies with the reason) and by SIGHUP.

mod common;

use common::{netns_or_skip, path_str, Lab};
use serde_json::{json, Value};
use std::path::Path;

const H1: &str = "10.77.1.11";

const RULES: &str = r#"
[firewall]
inbound_default = "deny"
[[firewall.inbound]]
action = "allow"
proto = "icmp"
[[firewall.inbound]]
action = "allow"
proto = "tcp"
port = "7000"
"#;

/// A new good rule and a bad one in the same reload.
const MORE_RULES: &str = r#"
[[firewall.inbound]]
action = "allow"
proto = "tcp"
port = "7500"
[[firewall.inbound]]
action = "allow"
proto = "tcp"
port = "99999"
"#;

fn request(socket: &str, req: &Value) -> Value {
    common::control_request(Path::new(socket), &req.to_string())
}

fn rules(lab: &Lab, node: &str) -> Vec<String> {
    lab.overlayd(node)["firewall"]["inbound"]
        .as_array()
        .map(|a| a.iter().map(|r| r["rule"].to_string()).collect())
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_bad_reload_is_refused_and_the_running_config_stays() {
    if !netns_or_skip("a_bad_reload_is_refused_and_the_running_config_stays") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\nhosts = 2\n");
    let h1 = lab.node("fra-h1");
    let socket = path_str(&h1.overlayd_socket);
    let config = h1.overlayd_config.clone();
    let cert = h1.cert.clone();
    let crl = lab.status().crl;
    let reload = || request(&socket, &json!({"cmd": "reload"}));
    let base = std::fs::read_to_string(&config).unwrap();

    // Good rules go in.
    write(&config, &format!("{base}{RULES}"));
    let r = reload();
    assert_eq!(r["ok"], true, "{r}");
    let running = rules(&lab, "fra-h1");
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(lab.ping("fra-h2", H1, 2).status.success());

    // A good and a bad rule: neither is taken, the error names the rule.
    write(&config, &format!("{base}{RULES}{MORE_RULES}"));
    let r = reload();
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("firewall.inbound[3].port") && e.contains(config.to_str().unwrap()),
        "{e}"
    );
    assert_eq!(rules(&lab, "fra-h1"), running);
    // The same by SIGHUP: refused, the daemon keeps running as it was.
    lab.lab_ok(&["kill", "fra-h1", "--signal", "HUP"]);
    lab.wait_for("the refusal in the log", |l| {
        std::fs::read_to_string(l.path().join("nodes/fra-h1/overlayd.log"))
            .is_ok_and(|t| t.contains("reload refused"))
    });
    assert_eq!(rules(&lab, "fra-h1"), running);
    assert!(lab.ping("fra-h2", H1, 2).status.success());
    write(&config, &format!("{base}{RULES}"));

    // A certificate file that is not one, then a valid certificate of
    // another key: refused, the identity and the sessions stay.
    let good_cert = std::fs::read_to_string(&cert).unwrap();
    let other = path_str(&lab.node("fra-h2").cert);
    for (bad, want) in [
        (
            "-----BEGIN CUBENET CERTIFICATE-----\nAAAA\n-----END CUBENET CERTIFICATE-----\n"
                .to_string(),
            "identity.cert",
        ),
        (std::fs::read_to_string(&other).unwrap(), "another key"),
    ] {
        write(&cert, &bad);
        let r = reload();
        assert_eq!(r["ok"], false, "{r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(want), "{e}");
        let st = lab.overlayd("fra-h1");
        assert_eq!(st["name"], "fra-h1");
        assert!(
            st["addresses"][0]
                .as_str()
                .is_some_and(|a| a.starts_with(H1)),
            "{st}"
        );
        assert!(lab.ping("fra-h2", H1, 2).status.success());
        assert!(lab.ping("fra-h1", "10.77.1.12", 2).status.success());
    }
    write(&cert, &good_cert);

    // A revocation list that does not decode: refused.
    let crl_before = std::fs::read(&crl).ok();
    write(&crl, "not a revocation list\n");
    let r = reload();
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("identity.crl"), "{r}");
    assert!(lab.ping("fra-h1", "10.77.1.12", 2).status.success());
    match crl_before {
        Some(b) => std::fs::write(&crl, b).unwrap(),
        None => std::fs::remove_file(&crl).unwrap(),
    }

    // Everything back: the reload goes through.
    let r = reload();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(rules(&lab, "fra-h1"), running);
    assert_eq!(lab.peer("fra-gw1", "fra-h1")["attached"], true);
}
