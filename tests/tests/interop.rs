//! routed against the BGP speakers operators run: BIRD 2 (BGP + BFD) and
//! GoBGP, real daemons in network namespaces, routes both ways, IPv4 and
//! IPv6 over one IPv4 session; BIRD over an IPv6 session with BFD over
//! IPv6; GTSM (TTL security) on both families.

mod common;

use common::{bin, netns_or_skip, ok};
use cubenet_testbed::{Netns, TestBed};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A CA and a gateway certificate for routed, in `dir`.
fn identity(dir: &Path) {
    let cert = bin("overlay-cert");
    let d = dir.to_str().unwrap();
    ok(Command::new(&cert).args([
        "ca",
        "--name",
        "interop",
        "--network",
        "10.77.0.0/16",
        "--network",
        "fd77::/48",
        "--out-dir",
        &format!("{d}/ca"),
    ]));
    ok(Command::new(&cert).args(["keygen", "--out", &format!("{d}/gw.key")]));
    ok(Command::new(&cert).args([
        "sign",
        "--ca-dir",
        &format!("{d}/ca"),
        "--name",
        "fra-gw1",
        "--ip",
        "10.77.1.1/16",
        "--ip",
        "fd77::1:1/48",
        "--role",
        "gateway",
        "--site",
        "fra",
        "--subnet",
        "10.77.1.0/24",
        "--subnet",
        "fd77::1:0/112",
        "--key",
        &format!("{d}/gw.key"),
        "--out",
        &format!("{d}/gw.crt"),
    ]));
}

struct Routed {
    dir: PathBuf,
}

impl Routed {
    /// Starts routed in `ns` with one neighbour (making the identity of
    /// [`identity`] unless `dir` has it).
    fn start(bed: &TestBed, ns: &Netns, dir: &Path, neighbor: &str) -> Routed {
        if !dir.join("gw.crt").exists() {
            identity(dir);
        }
        let d = dir.display();
        let cfg = format!(
            "asn = 4200000101\nrouter_id = \"10.99.0.1\"\ncontrol_socket = \"{d}/routed.sock\"\n\
             overlayd_socket = \"{d}/no-overlayd.sock\"\nca = \"{d}/ca/ca.crt\"\ncert = \"{d}/gw.crt\"\n\
             interface = \"eth0\"\n\
             [timers]\nconnect_retry_s = 1\nstartup_grace_s = 1\n[bfd]\ninterval_ms = 100\nmultiplier = 3\n\
             [[announce]]\nprefix = \"10.77.1.0/24\"\n[[announce]]\nprefix = \"fd77::1:0/112\"\n{neighbor}"
        );
        let path = dir.join("routed.toml");
        std::fs::write(&path, cfg).unwrap();
        ok(Command::new(bin("routed")).args(["check", "--config", path.to_str().unwrap()]));
        bed.spawn(
            ns,
            &[
                "sh",
                "-c",
                &format!(
                    "exec {} run --config {} 2>{d}/routed.log",
                    bin("routed").display(),
                    path.display()
                ),
            ],
        )
        .unwrap();
        Routed {
            dir: dir.to_path_buf(),
        }
    }

    fn query(&self, what: &str) -> Value {
        let out = Command::new(bin("routed"))
            .args([what, "--json", "--socket"])
            .arg(self.dir.join("routed.sock"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn neighbor(&self) -> Value {
        self.query("status")["neighbors"][0].clone()
    }

    fn has_route(&self, prefix: &str, via: &str) -> bool {
        self.query("routes")["routes"].as_array().is_some_and(|rs| {
            rs.iter().any(|r| {
                r["prefix"] == prefix
                    && r["via"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == via))
            })
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("routed.log")).unwrap_or_default()
    }
}

/// BIRD in a namespace, its config and control socket in a directory.
struct Bird<'a> {
    bed: &'a TestBed,
    ns: &'a Netns,
    conf: PathBuf,
    sock: PathBuf,
}

impl<'a> Bird<'a> {
    /// Writes `conf` as `dir/bird.conf`; [`Bird::start`] runs it.
    fn new(bed: &'a TestBed, ns: &'a Netns, dir: &Path, conf: &str) -> Bird<'a> {
        let b = Bird {
            bed,
            ns,
            conf: dir.join("bird.conf"),
            sock: dir.join("bird.ctl"),
        };
        std::fs::write(&b.conf, conf).unwrap();
        b
    }

    /// Runs BIRD in the foreground; `recovery`: after a graceful restart
    /// (`-R`).
    fn start(&self, recovery: bool) {
        let mut argv = vec!["bird", "-f", "-c", self.conf.to_str().unwrap()];
        argv.extend(["-s", self.sock.to_str().unwrap()]);
        if recovery {
            argv.push("-R");
        }
        self.bed.spawn(self.ns, &argv).unwrap();
    }

    /// `birdc ARGS`, or why not (BIRD not up yet).
    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["birdc", "-s", self.sock.to_str().unwrap()];
        a.extend_from_slice(args);
        self.bed.exec_ok(self.ns, &a)
    }
}

/// Writes `conf` as `dir/gobgpd.toml` and runs gobgpd with it in `ns`
/// (its API on 127.0.0.1:50051, where `gobgp` looks; log in `dir`).
fn start_gobgpd(bed: &TestBed, ns: &Netns, dir: &Path, conf: &str) {
    let path = dir.join("gobgpd.toml");
    std::fs::write(&path, conf).unwrap();
    bed.spawn(
        ns,
        &[
            "sh",
            "-c",
            &format!(
                "exec gobgpd -f {} -t toml --api-hosts 127.0.0.1:50051 >{}/gobgpd.log 2>&1",
                path.display(),
                dir.display()
            ),
        ],
    )
    .unwrap();
}

/// Two namespaces on a veth: routed at .1, the other speaker at .2.
fn pair(bed: &TestBed) -> (Netns, Netns) {
    let r = bed.namespace("routed").unwrap();
    let p = bed.namespace("peer").unwrap();
    bed.veth(&r, "eth0", &p, "eth0").unwrap();
    bed.addr(&r, "eth0", "10.99.0.1/24").unwrap();
    bed.addr(&p, "eth0", "10.99.0.2/24").unwrap();
    // IPv6 on the link too (not the overlay's addresses: routed's is
    // fd77::1:1, on its TUN in a real gateway), so routes of either family
    // over a session of either family have a next hop on the link.
    bed.addr(&r, "eth0", "fd99::1/64").unwrap();
    bed.addr(&p, "eth0", "fd99::2/64").unwrap();
    // An address routed serves nothing on (as a gateway's underlay).
    bed.addr(&r, "eth0", "10.98.0.1/24").unwrap();
    bed.addr(&p, "eth0", "10.98.0.2/24").unwrap();
    (r, p)
}

#[test]
fn bird_exchanges_ipv4_and_ipv6_routes_with_bfd() {
    if !netns_or_skip("bird_exchanges_ipv4_and_ipv6_routes_with_bfd") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let (r, b) = pair(&bed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bird = Bird::new(
        &bed,
        &b,
        d,
        "router id 10.99.0.2;\n\
         protocol device {}\n\
         protocol bfd { interface \"*\" { interval 100 ms; multiplier 3; }; }\n\
         protocol static s4 { ipv4; route 192.168.50.0/24 blackhole; }\n\
         protocol static s6 { ipv6; route fd50::/64 blackhole; }\n\
         protocol bgp cube {\n  local 10.99.0.2 as 65010;\n  neighbor 10.99.0.1 as 4200000101;\n\
           hold time 9; connect retry time 1; error wait time 1, 10; bfd on; ttl security on;\n\
           password \"interop-md5\";\n\
           ipv4 { import all; export where proto = \"s4\"; };\n\
           ipv6 { import all; export where proto = \"s6\"; next hop address fd99::2; };\n}\n",
    );
    bird.start(false);
    let routed = Routed::start(
        &bed,
        &r,
        d,
        "[[neighbor]]\nname = \"bird\"\naddress = \"10.99.0.2\"\nasn = 65010\n\
         import = [\"192.168.0.0/16\", \"fd50::/16\"]\nexport = \"all\"\npassword = \"interop-md5\"\n",
    );
    wait_until(
        "the BIRD session with BFD up",
        Duration::from_secs(30),
        || {
            let n = routed.neighbor();
            n["state"] == "established" && n["bfd"] == "up"
        },
    );
    // BIRD -> routed, both families, and into the kernel under proto 201.
    wait_until("routes from BIRD", Duration::from_secs(10), || {
        routed.has_route("192.168.50.0/24", "bird") && routed.has_route("fd50::/64", "bird")
    });
    wait_until("kernel routes", Duration::from_secs(10), || {
        let v4 = bed
            .exec_ok(&r, &["ip", "route", "show", "proto", "201"])
            .unwrap();
        let v6 = bed
            .exec_ok(&r, &["ip", "-6", "route", "show", "proto", "201"])
            .unwrap();
        v4.contains("192.168.50.0/24") && v6.contains("fd50::/64")
    });
    // routed -> BIRD, both families.
    let birdc = |args: &[&str]| bird.ctl(args).unwrap();
    wait_until(
        "BIRD to learn the site prefixes",
        Duration::from_secs(10),
        || {
            let t = birdc(&["show", "route", "protocol", "cube"]);
            t.contains("10.77.1.0/24") && t.contains("fd77::1:0/112")
        },
    );
    assert!(birdc(&["show", "bfd", "sessions"]).contains("Up"));
    // BGP and BFD are bound to what routed serves: its address on the link
    // to BIRD and its overlay addresses, never a wildcard (audit L1); a
    // connection to its other address is refused by the kernel.
    for (proto, port) in [("-tln", ":179"), ("-uln", ":3784")] {
        let ss = bed.exec_ok(&r, &["ss", "-H", proto]).unwrap();
        let bound: Vec<&str> = ss
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|a| a.ends_with(port))
            .collect();
        assert!(bound.contains(&format!("10.99.0.1{port}").as_str()), "{ss}");
        assert!(
            bound.iter().all(|a| !a.starts_with("0.0.0.0")
                && !a.starts_with("*")
                && !a.starts_with("[::]")),
            "a wildcard listener: {bound:?}"
        );
        assert!(
            !bound.iter().any(|a| a.starts_with("10.98.0.1")),
            "{bound:?}"
        );
    }
    let other = bed
        .exec(&b, &["bash", "-c", "exec 3<>/dev/tcp/10.98.0.1/179"])
        .unwrap();
    assert!(
        !other.status.success() && String::from_utf8_lossy(&other.stderr).contains("refused"),
        "{other:?}"
    );
    // The IPv6 route over the IPv4 session has routed's IPv6 address on
    // the link as next hop (RFC 2545), not its overlay address fd77::1:1,
    // which a router on the LAN cannot reach.
    let v6 = birdc(&["show", "route", "fd77::1:0/112", "all"]);
    assert!(v6.contains("BGP.next_hop: fd99::1"), "{v6}");
    // A silent failure of the link: BFD takes the session down, not the
    // 9 s hold timer.
    bed.drop_ingress(&r, "eth0", true).unwrap();
    let took = wait_until(
        "BFD to take the session down",
        Duration::from_secs(5),
        || routed.neighbor()["state"] != "established",
    );
    eprintln!("BFD took the BIRD session down {took:?} after the silent drop");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        routed.neighbor()["last_error"],
        "BFD down",
        "{}",
        routed.log()
    );
    assert!(!routed.has_route("192.168.50.0/24", "bird"));
    bed.drop_ingress(&r, "eth0", false).unwrap();
    wait_until("the session to come back", Duration::from_secs(30), || {
        routed.neighbor()["state"] == "established"
    });
}

#[test]
fn gobgp_exchanges_routes_read_back_as_json() {
    if !netns_or_skip("gobgp_exchanges_routes_read_back_as_json") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let (r, g) = pair(&bed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    start_gobgpd(
        &bed,
        &g,
        d,
        "[global.config]\n  as = 65020\n  router-id = \"10.99.0.2\"\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.99.0.1\"\n    peer-as = 4200000101\n\
           [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 9\n    keepalive-interval = 3\n\
           [neighbors.ttl-security.config]\n    enabled = true\n    ttl-min = 255\n\
           [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n\
           [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n",
    );
    let routed = Routed::start(
        &bed,
        &r,
        d,
        "[[neighbor]]\nname = \"gobgp\"\naddress = \"10.99.0.2\"\nasn = 65020\nbfd = false\n\
         import = [\"192.168.0.0/16\", \"fd60::/16\"]\nexport = \"all\"\n",
    );
    wait_until("the GoBGP session", Duration::from_secs(30), || {
        routed.neighbor()["state"] == "established"
    });
    let gobgp = |args: &[&str]| {
        bed.exec_ok(&g, &[&["gobgp"], args].concat())
            .unwrap_or_default()
    };
    gobgp(&[
        "global",
        "rib",
        "-a",
        "ipv4",
        "add",
        "192.168.60.0/24",
        "nexthop",
        "10.99.0.2",
    ]);
    gobgp(&[
        "global",
        "rib",
        "-a",
        "ipv6",
        "add",
        "fd60::/64",
        "nexthop",
        "fd99::2",
    ]);
    wait_until("routes from GoBGP", Duration::from_secs(10), || {
        routed.has_route("192.168.60.0/24", "gobgp") && routed.has_route("fd60::/64", "gobgp")
    });
    // A route whose only next hop is link-local (in the global field, as
    // some speakers send it): installed via that address on the link the
    // session runs on, the global one as before.
    let peer_ll = bed
        .exec_ok(
            &g,
            &[
                "ip", "-6", "-br", "addr", "show", "dev", "eth0", "scope", "link",
            ],
        )
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("fe80::")
                .map(|_| w.split('/').next().unwrap_or(w).to_string())
        })
        .expect("the peer's link-local address");
    gobgp(&[
        "global",
        "rib",
        "-a",
        "ipv6",
        "add",
        "fd60:0:0:1::/64",
        "nexthop",
        &peer_ll,
    ]);
    wait_until(
        "both IPv6 routes in the kernel",
        Duration::from_secs(10),
        || {
            let k = bed
                .exec_ok(&r, &["ip", "-6", "route", "show", "proto", "201"])
                .unwrap_or_default();
            k.contains("fd60::/64 via fd99::2 dev eth0")
                && k.contains(&format!("fd60:0:0:1::/64 via {peer_ll} dev eth0"))
        },
    );
    // routed's routes, read back from GoBGP as JSON.
    wait_until(
        "GoBGP to learn the site prefixes",
        Duration::from_secs(10),
        || {
            let v4: Value = serde_json::from_str(&gobgp(&["-j", "global", "rib", "-a", "ipv4"]))
                .unwrap_or(Value::Null);
            let v6: Value = serde_json::from_str(&gobgp(&["-j", "global", "rib", "-a", "ipv6"]))
                .unwrap_or(Value::Null);
            v4.get("10.77.1.0/24").is_some() && v6.get("fd77::1:0/112").is_some()
        },
    );
    let v4: Value = serde_json::from_str(&gobgp(&["-j", "global", "rib", "-a", "ipv4"])).unwrap();
    let path = &v4["10.77.1.0/24"][0];
    let attrs = path["attrs"].to_string();
    assert!(
        attrs.contains("4200000101"),
        "AS path lacks routed's AS: {attrs}"
    );
    // A withdrawal travels too.
    gobgp(&["global", "rib", "-a", "ipv4", "del", "192.168.60.0/24"]);
    wait_until("the withdrawal", Duration::from_secs(10), || {
        !routed.has_route("192.168.60.0/24", "gobgp")
    });
}

/// Graceful restart, routed as the helper (RFC 4724): BIRD restarts with
/// `birdc graceful restart` and `bird -R`. While it is away routed keeps
/// its route, marked stale, in its table and in the kernel; once BIRD is
/// back and has sent its End-of-RIB nothing is stale and the route is
/// still there. (Without `[graceful_restart]` the route goes when BIRD
/// does.)
#[test]
fn routed_keeps_a_gracefully_restarting_birds_routes() {
    if !netns_or_skip("routed_keeps_a_gracefully_restarting_birds_routes") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let (r, b) = pair(&bed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bird = Bird::new(
        &bed,
        &b,
        d,
        "router id 10.99.0.2;\n\
         protocol device {}\n\
         protocol static s4 { ipv4; route 192.168.70.0/24 blackhole; }\n\
         protocol bgp cube {\n  local 10.99.0.2 as 65010;\n  neighbor 10.99.0.1 as 4200000101;\n\
           hold time 9; connect retry time 1; error wait time 1, 10; ttl security on;\n\
           graceful restart on; graceful restart time 120;\n\
           ipv4 { import all; export where proto = \"s4\"; };\n}\n",
    );
    bird.start(false);
    let routed = Routed::start(
        &bed,
        &r,
        d,
        "[graceful_restart]\nenabled = true\n\
         [[neighbor]]\nname = \"bird\"\naddress = \"10.99.0.2\"\nasn = 65010\nbfd = false\n\
         import = [\"192.168.0.0/16\"]\nexport = \"all\"\n",
    );
    let kernel_has = || {
        bed.exec_ok(&r, &["ip", "route", "show", "proto", "201"])
            .unwrap()
            .contains("192.168.70.0/24")
    };
    wait_until(
        "BIRD's route, in the kernel too",
        Duration::from_secs(30),
        || routed.has_route("192.168.70.0/24", "bird") && kernel_has(),
    );
    bird.ctl(&["graceful", "restart"]).unwrap();
    wait_until(
        "the session down with the route stale",
        Duration::from_secs(30),
        || {
            let n = routed.neighbor();
            n["state"] != "established" && n["stale_routes"] == 1
        },
    );
    assert!(
        routed.has_route("192.168.70.0/24", "bird"),
        "the route went with BIRD"
    );
    assert!(kernel_has(), "the kernel route went with BIRD");
    let n = routed.neighbor();
    assert!(n["history"].to_string().contains("graceful restart"), "{n}");
    bird.start(true);
    wait_until(
        "BIRD back and nothing stale",
        Duration::from_secs(30),
        || {
            let n = routed.neighbor();
            n["state"] == "established" && n["stale_routes"] == 0
        },
    );
    assert!(routed.has_route("192.168.70.0/24", "bird"));
    assert!(kernel_has());
}

/// Graceful restart, routed as the restarting speaker (RFC 4724): `routed
/// restart` ends its session with BIRD without a NOTIFICATION and starts
/// routed again in place; BIRD (a helper, `graceful restart on`) keeps
/// routed's site prefix meanwhile and takes it again unchanged: its route
/// (and the time it last changed) is the same before and after, and it
/// stayed in BIRD's kernel table. routed's own kernel route stays too.
#[test]
fn a_graceful_routed_restart_changes_no_route_at_bird() {
    if !netns_or_skip("a_graceful_routed_restart_changes_no_route_at_bird") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let (r, b) = pair(&bed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bird = Bird::new(
        &bed,
        &b,
        d,
        "router id 10.99.0.2;\n\
         protocol device {}\n\
         protocol kernel { ipv4 { import none; export all; }; }\n\
         protocol static s4 { ipv4; route 192.168.71.0/24 blackhole; }\n\
         protocol bgp cube {\n  local 10.99.0.2 as 65010;\n  neighbor 10.99.0.1 as 4200000101;\n\
           hold time 9; connect retry time 1; error wait time 1, 10; ttl security on;\n\
           graceful restart on;\n\
           ipv4 { import all; export where proto = \"s4\"; };\n}\n",
    );
    bird.start(false);
    let routed = Routed::start(
        &bed,
        &r,
        d,
        "[graceful_restart]\nenabled = true\n\
         [[neighbor]]\nname = \"bird\"\naddress = \"10.99.0.2\"\nasn = 65010\nbfd = false\n\
         import = [\"192.168.0.0/16\"]\nexport = \"all\"\n",
    );
    // Empty until BIRD's control socket is there.
    let birdc = |args: &[&str]| bird.ctl(args).unwrap_or_default();
    let bird_route = || birdc(&["show", "route", "10.77.1.0/24"]);
    wait_until(
        "the site prefix at BIRD and in its kernel",
        Duration::from_secs(30),
        || {
            bird_route().contains("10.77.1.0/24")
                && bed
                    .exec_ok(&b, &["ip", "route", "show", "10.77.1.0/24"])
                    .unwrap()
                    .contains("via 10.99.0.1")
        },
    );
    wait_until(
        "BIRD's prefix in routed's kernel table",
        Duration::from_secs(30),
        || {
            bed.exec_ok(&r, &["ip", "route", "show", "proto", "201"])
                .unwrap()
                .contains("192.168.71.0/24")
        },
    );
    let before = bird_route();
    let restart = Command::new(bin("routed"))
        .args(["restart", "--socket"])
        .arg(d.join("routed.sock"))
        .output()
        .unwrap();
    assert!(restart.status.success(), "{restart:?}");
    wait_until(
        "routed back with its table whole",
        Duration::from_secs(30),
        || {
            routed.log().contains("graceful restart: table whole")
                && routed.neighbor()["state"] == "established"
                && routed.query("status")["restarting"] == false
        },
    );
    wait_until("BIRD's session back", Duration::from_secs(30), || {
        birdc(&["show", "protocols", "cube"]).contains("Established")
    });
    assert_eq!(
        bird_route(),
        before,
        "BIRD's route changed across the restart"
    );
    assert!(bed
        .exec_ok(&b, &["ip", "route", "show", "10.77.1.0/24"])
        .unwrap()
        .contains("via 10.99.0.1"));
    assert!(bed
        .exec_ok(&r, &["ip", "route", "show", "proto", "201"])
        .unwrap()
        .contains("192.168.71.0/24"));
    let log = routed.log();
    assert_eq!(log.matches("routed running").count(), 2, "{log}");
}

/// Signs a gateway certificate `name.crt` (key `name.key`) with the CA of
/// [`identity`].
fn gateway_cert(dir: &Path, name: &str, site: &str, ip: &str, subnet: &str) -> PathBuf {
    let cert = bin("overlay-cert");
    let key = dir.join(format!("{name}.key"));
    let crt = dir.join(format!("{name}.crt"));
    ok(Command::new(&cert).args(["keygen", "--out", key.to_str().unwrap()]));
    ok(Command::new(&cert).args([
        "sign",
        "--ca-dir",
        dir.join("ca").to_str().unwrap(),
        "--name",
        name,
        "--ip",
        ip,
        "--role",
        "gateway",
        "--site",
        site,
        "--subnet",
        subnet,
        "--key",
        key.to_str().unwrap(),
        "--out",
        crt.to_str().unwrap(),
    ]));
    crt
}

/// Audit H2 with a real speaker: GoBGP posing as gateway evil-gw (its
/// certificate valid, for site par and subnet 10.77.3.0/24) announces
/// ams-gw1's overlay address, a more-specific of ams's site prefix written
/// as ams's, its own subnet and a host of ams. routed takes the
/// last two only: a host may attach at any gateway (hosts move between
/// sites), an address of a gateway only from that gateway.
#[test]
fn a_gobgp_speaker_posing_as_a_gateway_attracts_only_what_its_certificate_allows() {
    if !netns_or_skip(
        "a_gobgp_speaker_posing_as_a_gateway_attracts_only_what_its_certificate_allows",
    ) {
        return;
    }
    let bed = TestBed::new().unwrap();
    let (r, g) = pair(&bed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    identity(d);
    let evil = gateway_cert(d, "evil-gw", "par", "10.77.3.1/16", "10.77.3.0/24");
    let ams = gateway_cert(d, "ams-gw1", "ams", "10.77.2.1/16", "10.77.2.0/24");
    start_gobgpd(
        &bed,
        &g,
        d,
        "[global.config]\n  as = 65020\n  router-id = \"10.99.0.2\"\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.99.0.1\"\n    peer-as = 4200000101\n\
           [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 9\n    keepalive-interval = 3\n\
           [neighbors.ttl-security.config]\n    enabled = true\n    ttl-min = 255\n\
           [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
    );
    // evil-gw is reached over the LAN here (so routed sees a certificate,
    // not the overlay, vouch for it); ams-gw1 is configured but not up.
    let routed = Routed::start(
        &bed,
        &r,
        d,
        &format!(
            "[[neighbor]]\nname = \"evil-gw\"\naddress = \"10.99.0.2\"\nasn = 65020\nbfd = false\n\
             cert = \"{}\"\nimport = \"overlay\"\nexport = \"all\"\n\
             [[neighbor]]\nname = \"ams-gw1\"\naddress = \"10.77.2.1\"\nasn = 4200000201\nbfd = false\n\
             cert = \"{}\"\nimport = \"overlay\"\nexport = \"all\"\n",
            evil.display(),
            ams.display()
        ),
    );
    wait_until("the GoBGP session", Duration::from_secs(30), || {
        routed.neighbor()["state"] == "established"
    });
    let gobgp = |args: &[&str]| {
        bed.exec_ok(
            &g,
            &[&["gobgp", "global", "rib", "-a", "ipv4", "add"], args].concat(),
        )
        .unwrap();
    };
    // Refused: another gateway's address, a more-specific of ams's site
    // prefix with ams written as its origin (routed's own address is
    // refused too: `host_routes_come_from_gateways_and_a_gateways_address_from_it_alone`).
    gobgp(&["10.77.2.1/32", "nexthop", "10.99.0.2"]);
    gobgp(&[
        "10.77.2.0/25",
        "nexthop",
        "10.99.0.2",
        "aspath",
        "4200000201",
    ]);
    // Taken: its own subnet, and a host.
    gobgp(&["10.77.3.0/24", "nexthop", "10.99.0.2"]);
    gobgp(&["10.77.2.11/32", "nexthop", "10.99.0.2"]);
    wait_until(
        "evil-gw's own subnet and host",
        Duration::from_secs(10),
        || {
            routed.has_route("10.77.3.0/24", "evil-gw")
                && routed.has_route("10.77.2.11/32", "evil-gw")
        },
    );
    wait_until("two refusals", Duration::from_secs(10), || {
        routed.neighbor()["rejected"].as_u64() >= Some(2)
    });
    for p in ["10.77.2.1/32", "10.77.2.0/25"] {
        assert!(!routed.has_route(p, "evil-gw"), "{p} taken from evil-gw");
    }
    let n = routed.neighbor();
    assert_eq!(n["rejected"].as_u64(), Some(2), "{n}");
    assert_eq!(
        n["state"], "established",
        "refusals do not end the session: {n}"
    );
}

/// Rewrites the TTL (IPv4) or hop limit (IPv6) of what `ns` sends to or
/// from `proto` port `port` to 254, as if it came from one hop farther away,
/// counting the packets; `None` removes it.
fn one_hop_farther(bed: &TestBed, ns: &Netns, proto: &str, port: u16, v6: bool, on: bool) {
    let (family, field) = if v6 {
        ("ip6", "ip6 hoplimit")
    } else {
        ("ip", "ip ttl")
    };
    let table = format!("farther_{proto}_{port}_{family}");
    if on {
        let rules = format!(
            "table {family} {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
             {proto} dport {port} counter {field} set 254\n  {proto} sport {port} counter {field} set 254\n }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}-{table}.nft", bed.prefix()));
        std::fs::write(&path, rules).unwrap();
        bed.exec_ok(ns, &["nft", "-f", path.to_str().unwrap()])
            .unwrap();
        let _ = std::fs::remove_file(&path);
    } else {
        bed.exec_ok(ns, &["nft", "delete", "table", family, &table])
            .unwrap();
    }
}

/// Packets the rule of [`one_hop_farther`] has rewritten.
fn rewritten(bed: &TestBed, ns: &Netns, proto: &str, port: u16, v6: bool) -> u64 {
    let family = if v6 { "ip6" } else { "ip" };
    let table = format!("farther_{proto}_{port}_{family}");
    let t = bed
        .exec_ok(ns, &["nft", "list", "table", family, &table])
        .unwrap_or_default();
    let words: Vec<&str> = t.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse::<u64>().ok())
        .sum()
}

/// BIRD over an IPv6 session (its addresses and next hops IPv6): BGP up
/// with BFD over IPv6 (the BFD sockets were IPv4-only, and the session
/// stood established with BFD down and no error), routes both ways; BFD
/// packets one hop farther away (hop limit 254) are not heard, so BFD
/// goes down with them; BGP from one hop farther never gets a session
/// (GTSM, RFC 5082), and does once the packets come from the link again.
#[test]
fn bird_over_an_ipv6_session_runs_bfd_over_ipv6_and_gtsm_keeps_farther_speakers_out() {
    if !netns_or_skip("bird_over_an_ipv6_session_runs_bfd_over_ipv6") {
        return;
    }
    let bed = TestBed::new().unwrap();
    let (r, b) = pair(&bed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bird = Bird::new(
        &bed,
        &b,
        d,
        "router id 10.99.0.2;\n\
         protocol device {}\n\
         protocol bfd { interface \"*\" { interval 100 ms; multiplier 3; }; }\n\
         protocol static s6 { ipv6; route fd50::/64 blackhole; }\n\
         protocol bgp cube {\n  local fd99::2 as 65010;\n  neighbor fd99::1 as 4200000101;\n\
           hold time 9; connect retry time 1; error wait time 1, 10; bfd on; ttl security on;\n\
           ipv4 { import all; export none; };\n\
           ipv6 { import all; export where proto = \"s6\"; };\n}\n",
    );
    // BGP from BIRD arrives one hop farther before BIRD even starts.
    one_hop_farther(&bed, &b, "tcp", 179, true, true);
    bird.start(false);
    let routed = Routed::start(
        &bed,
        &r,
        d,
        "[[neighbor]]\nname = \"bird\"\naddress = \"fd99::2\"\nasn = 65010\n\
         import = [\"fd50::/16\"]\nexport = \"all\"\n",
    );
    // BIRD keeps trying (its SYNs, and SYN-ACKs to routed's own
    // attempts, rewritten) and never gets a session.
    let t0 = Instant::now();
    while rewritten(&bed, &b, "tcp", 179, true) < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "BIRD's BGP packets were not seen:\n{}\n{}",
            bird.ctl(&["show", "protocols", "all", "cube"])
                .unwrap_or_default(),
            bed.exec_ok(&b, &["nft", "list", "ruleset"])
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = routed.neighbor();
    assert_ne!(
        n["state"],
        "established",
        "a session from one hop farther: {n}\n{}",
        routed.log()
    );
    one_hop_farther(&bed, &b, "tcp", 179, true, false);
    wait_until(
        "the BIRD session over IPv6 with BFD up",
        Duration::from_secs(30),
        || {
            let n = routed.neighbor();
            n["state"] == "established" && n["bfd"] == "up"
        },
    );
    let n = routed.neighbor();
    assert_eq!(n["last_error"], Value::Null, "{n}");
    wait_until("routes from BIRD", Duration::from_secs(10), || {
        routed.has_route("fd50::/64", "bird")
    });
    let birdc = |args: &[&str]| bird.ctl(args).unwrap();
    // Both families over the IPv6 session, each with routed's address of
    // that family on the link as next hop (RFC 4760): the IPv4 prefix was
    // dropped on export before.
    wait_until(
        "BIRD to learn both site prefixes",
        Duration::from_secs(10),
        || {
            let t = birdc(&["show", "route", "protocol", "cube"]);
            t.contains("10.77.1.0/24") && t.contains("fd77::1:0/112")
        },
    );
    let v4 = birdc(&["show", "route", "10.77.1.0/24", "all"]);
    assert!(v4.contains("BGP.next_hop: 10.99.0.1"), "{v4}");
    let v6 = birdc(&["show", "route", "fd77::1:0/112", "all"]);
    assert!(v6.contains("BGP.next_hop: fd99::1"), "{v6}");
    let sessions = birdc(&["show", "bfd", "sessions"]);
    assert!(
        sessions.contains("fd99::1") && sessions.contains("Up"),
        "{sessions}"
    );
    // BIRD's BFD packets now arrive with hop limit 254: routed does not
    // hear them, and BFD takes the session down.
    let bfd_downs = || {
        routed.neighbor()["history"].as_array().map_or(0, |h| {
            h.iter()
                .filter(|e| e["event"] == "down" && e["reason"] == "BFD down")
                .count()
        })
    };
    let before = bfd_downs();
    one_hop_farther(&bed, &b, "udp", 3784, true, true);
    // The event, from the session's history: BIRD connects again at once,
    // so the moment the session is down can be shorter than a look at it.
    wait_until(
        "BFD to take the session down",
        Duration::from_secs(10),
        || bfd_downs() > before,
    );
    assert!(rewritten(&bed, &b, "udp", 3784, true) > 0);
    one_hop_farther(&bed, &b, "udp", 3784, true, false);
    wait_until("the session to come back", Duration::from_secs(30), || {
        let n = routed.neighbor();
        n["state"] == "established" && n["bfd"] == "up"
    });
}
