//! The test bed itself works: namespaces, veths, a bridged segment, silent
//! drops, and nothing left behind.

use cubenet_testbed::{netns_or_skip, TestBed};

fn pings(bed: &TestBed, ns: &cubenet_testbed::Netns, dst: &str) -> bool {
    bed.exec(ns, &["ping", "-c", "1", "-W", "2", dst])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn two_namespaces_ping_over_a_veth_v4_and_v6() {
    if !netns_or_skip("two_namespaces_ping_over_a_veth_v4_and_v6") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let a = bed.namespace("a").unwrap();
    let b = bed.namespace("b").unwrap();
    bed.veth(&a, "eth0", &b, "eth0").unwrap();
    bed.addr(&a, "eth0", "192.0.2.1/24").unwrap();
    bed.addr(&b, "eth0", "192.0.2.2/24").unwrap();
    bed.addr(&a, "eth0", "2001:db8::1/64").unwrap();
    bed.addr(&b, "eth0", "2001:db8::2/64").unwrap();
    assert!(pings(&bed, &a, "192.0.2.2"));
    assert!(pings(&bed, &b, "2001:db8::1"));
    // An address nobody has does not answer: the check can fail.
    assert!(!pings(&bed, &a, "192.0.2.3"));
}

#[test]
fn a_bridged_segment_connects_everyone_and_drops_are_silent() {
    if !netns_or_skip("a_bridged_segment_connects_everyone_and_drops_are_silent") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let nodes: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|n| bed.namespace(n).unwrap())
        .collect();
    let refs: Vec<_> = nodes.iter().collect();
    bed.segment("lan", &refs, "lan0").unwrap();
    for (i, n) in nodes.iter().enumerate() {
        bed.addr(n, "lan0", &format!("198.51.100.{}/24", i + 1))
            .unwrap();
    }
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..nodes.len() {
            if i != j {
                assert!(
                    pings(&bed, n, &format!("198.51.100.{}", j + 1)),
                    "{i} -> {j}"
                );
            }
        }
    }
    bed.drop_ingress(&nodes[1], "lan0", true).unwrap();
    assert!(!pings(&bed, &nodes[0], "198.51.100.2"), "drop did not drop");
    // Carrier stays up: the failure is silent.
    let link = bed
        .exec_ok(&nodes[1], &["ip", "link", "show", "lan0"])
        .unwrap();
    assert!(link.contains("LOWER_UP"), "{link}");
    bed.drop_ingress(&nodes[1], "lan0", false).unwrap();
    assert!(pings(&bed, &nodes[0], "198.51.100.2"));
}

#[test]
fn nothing_is_left_behind() {
    if !netns_or_skip("nothing_is_left_behind") {
        return;
    }
    let prefix;
    {
        let bed = TestBed::new().unwrap();
        prefix = bed.prefix().to_string();
        let a = bed.namespace("gone").unwrap();
        bed.spawn(&a, &["sleep", "600"]).unwrap();
        assert!(std::path::Path::new(&format!("/run/netns/{prefix}-gone")).exists());
    }
    assert!(!std::path::Path::new(&format!("/run/netns/{prefix}-gone")).exists());
    // Also after a panic.
    let r = std::panic::catch_unwind(|| {
        let bed = TestBed::new().unwrap();
        let _ = bed.namespace("panics").unwrap();
        let p = bed.prefix().to_string();
        std::fs::write(std::env::temp_dir().join("cubenet-panic-prefix"), &p).unwrap();
        panic!("on purpose");
    });
    assert!(r.is_err());
    let p = std::fs::read_to_string(std::env::temp_dir().join("cubenet-panic-prefix")).unwrap();
    assert!(!std::path::Path::new(&format!("/run/netns/{p}-panics")).exists());
}
