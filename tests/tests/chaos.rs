//! Chaos on a cubenet lab: 3 sites × 2 gateways × 1 host with routed (BGP +
//! BFD 100 ms × 3, link damping at its defaults), one TCP transfer from
//! fra-h1 to ams-h1 running through all of it, and these faults, each healed
//! before the next:
//!
//! 1. SIGKILL of the gateway fra-h1 sends through, restarted after a while;
//! 2. SIGKILL of routed alone on an ams gateway, restarted after a while;
//! 3. a silent drop of the tunnels from fra-h1's gateway to both ams
//!    gateways;
//! 4. 20 % random loss on its tunnel to the other ams gateway;
//! 5. the tunnel from fra-gw1 (fra-h1's preferred gateway) to the first ams
//!    gateway flapping (dropped until its session is down, healed until it is
//!    up again), which damping must suppress, then flapping every 2 s for the
//!    rest of the flap time;
//! 6. right after, fra-gw1 restarted with a new certificate (same key);
//!
//! and on the host side:
//!
//! 7. ams-h1's tunnel to its active gateway silently dropped: from 1 s after
//!    the drop on, not one ping of the watch may be lost (its other gateway
//!    carries everything, the one that lost it hands what still comes to
//!    the sibling);
//! 8. that tunnel flapping every 2 s: damping holds it down at the gateway
//!    (the host is not attached there again) and at the host (it does not
//!    fail back), and the host's route at fra-gw1 changes at most 5 times;
//! 9. par-h1 SIGKILLed, started again after a while;
//! 10. par-h1 stopped with SIGTERM, started again;
//! 11. par-h1 moved to site fra (a VM re-created there: new LAN address,
//!     fra's gateways, same certificate), then back;
//! 12. par-h1 revoked (every gateway reloads), then back with a new key.
//!
//! Each prints how long until no other gateway sent to the host through the
//! gateway that lost it.
//!
//! After each heal:
//! - within `REACH_BOUND` (5 s) of the heal, every host reaches every other
//!   host over IPv4 and IPv6, and every gateway's route table holds the
//!   same prefixes: exactly the lab's host routes;
//! - from then until the next fault begins (at least `observe` later: 5 s,
//!   10 s in the long variant), not one ping goes unanswered of a watch in
//!   which every host pings every other host's every address each 100 ms,
//!   from before the first fault to the end;
//! - no daemon restarted by itself (the pids are those of the start, but for
//!   the daemons the test restarted), none logged a panic, and the transfer
//!   still runs.
//!
//! At the end both ends of the transfer agree on its length and SHA-256,
//! and once damping releases the links the faults suppressed, every gateway
//! is back on its direct equal-cost paths (the watch still losing nothing).
//!
//! Short by default (one round); `CUBENET_CHAOS_LONG=1` runs three rounds
//! with longer faults, the flap lasting 60 s:
//! `sudo CUBENET_CHAOS_LONG=1 cargo test --release -p cubenet-tests --test chaos -- --nocapture`

mod common;

use common::{bin, netns_or_skip, ok, path_str, Lab, TcpSender, TcpServer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The bound on reachability and route-table agreement after each heal.
/// Measured here (2 vCPU, 6 short and 1 long runs): every pair answered
/// within 1.1 s of a heal (0.04-0.1 s but after gateway restarts), the
/// tables agreed within 1.8 s (a restarted gateway learning its routes);
/// about three times that.
const REACH_BOUND: Duration = Duration::from_secs(5);

const SPEC: &str = "routed = true\nbfd_interval_ms = 100\n\
    [[site]]\nname = \"fra\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"ams\"\ngateways = 2\nhosts = 1\n\
    [[site]]\nname = \"par\"\ngateways = 2\nhosts = 1\n";

const HOSTS: [&str; 3] = ["fra-h1", "ams-h1", "par-h1"];
const GATEWAYS: [&str; 6] = [
    "fra-gw1", "fra-gw2", "ams-gw1", "ams-gw2", "par-gw1", "par-gw2",
];

/// The transfer's receiver and its pace (bytes per second).
const SINK: &str = "10.77.2.11:5001";
const RATE: u64 = 1 << 20;

/// How long each fault lasts.
struct Variant {
    name: &'static str,
    rounds: usize,
    /// A killed daemon stays down this long.
    down: Duration,
    /// The silent drop.
    drop: Duration,
    /// How long the flap lasts (at least until damping suppresses the link).
    flap: Duration,
    /// The 20 % loss.
    loss: Duration,
    /// How long the healed lab is watched past `REACH_BOUND` before the
    /// next fault.
    observe: Duration,
}

const SHORT: Variant = Variant {
    name: "short",
    rounds: 1,
    down: Duration::from_secs(2),
    drop: Duration::from_secs(3),
    flap: Duration::from_secs(12),
    loss: Duration::from_secs(10),
    observe: Duration::from_secs(5),
};

const LONG: Variant = Variant {
    name: "long (CUBENET_CHAOS_LONG=1)",
    rounds: 3,
    down: Duration::from_secs(10),
    drop: Duration::from_secs(20),
    flap: Duration::from_secs(60),
    loss: Duration::from_secs(60),
    observe: Duration::from_secs(10),
};

/// Which daemons of a node the test restarted on purpose.
enum Restarted {
    Node(String),
    Routed(String),
}

/// The pids of every node's daemons, from `cubenet-lab status`.
fn pids(lab: &Lab) -> BTreeMap<String, Vec<i64>> {
    lab.status()
        .nodes
        .into_iter()
        .map(|n| (n.name, n.pids.into_iter().map(i64::from).collect()))
        .collect()
}

/// Fails when a daemon's pid is not the expected one (it restarted or died
/// by itself) or a daemon log reports a panic.
fn nothing_restarted_or_panicked(lab: &Lab, expected: &BTreeMap<String, Vec<i64>>, phase: &str) {
    assert_eq!(
        &pids(lab),
        expected,
        "{phase}: a daemon restarted or died by itself"
    );
    let panics = lab.panics();
    assert!(panics.is_empty(), "{phase}: panics:\n{}", panics.join("\n"));
}

/// Every host's virtual addresses as host routes (/32, /128).
fn host_prefixes(lab: &Lab) -> BTreeMap<String, Vec<String>> {
    HOSTS
        .iter()
        .map(|h| {
            let prefixes = lab
                .addrs(h)
                .into_iter()
                .map(|a| {
                    let len = if a.contains(':') { 128 } else { 32 };
                    format!("{a}/{len}")
                })
                .collect();
            (h.to_string(), prefixes)
        })
        .collect()
}

/// A gateway's routes: prefix → next hops.
fn table(lab: &Lab, gw: &str) -> BTreeMap<String, Vec<String>> {
    lab.routed(gw, "routes")["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let mut via: Vec<String> = r["via"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            via.sort();
            Some((r["prefix"].as_str()?.to_string(), via))
        })
        .collect()
}

/// What a gateway's table is once every link is up: its own site's hosts
/// local, every other host through both gateways of that host's site.
fn healthy_table(gw: &str, hosts: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let site = |n: &str| n.split('-').next().unwrap_or_default().to_string();
    hosts
        .iter()
        .flat_map(|(h, prefixes)| {
            let via = if site(h) == site(gw) {
                vec!["local".to_string()]
            } else {
                vec![format!("{}-gw1", site(h)), format!("{}-gw2", site(h))]
            };
            prefixes.iter().map(move |p| (p.clone(), via.clone()))
        })
        .collect()
}

/// Why the gateways' tables do not hold exactly `want`'s prefixes, if so.
fn tables_disagree(lab: &Lab, want: &BTreeSet<String>) -> Option<String> {
    let wrong: Vec<String> = GATEWAYS
        .iter()
        .filter_map(|gw| {
            let have: BTreeSet<String> = table(lab, gw).into_keys().collect();
            let missing: Vec<&String> = want.difference(&have).collect();
            let extra: Vec<&String> = have.difference(want).collect();
            (!missing.is_empty() || !extra.is_empty())
                .then(|| format!("{gw}: missing {missing:?}, extra {extra:?}"))
        })
        .collect();
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

/// Seconds since the epoch: the clock `ping -D` stamps its lines with.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The watch's ping interval, in seconds.
const WATCH_INTERVAL: f64 = 0.1;

/// What one watched ping process said about the echo requests it sent.
#[derive(Default)]
struct Echoes {
    /// Answered: sequence number → when it was sent.
    answered: BTreeMap<u64, f64>,
    /// Unanswered when the next was sent: sequence number → when it was
    /// sent (`ping -O`).
    late: BTreeMap<u64, f64>,
}

impl Echoes {
    /// Parses `[1795604500.712642] 64 bytes from ...: icmp_seq=410 ttl=64
    /// time=1.53 ms` and `[...] no answer yet for icmp_seq=411`.
    fn add(&mut self, line: &str) {
        let Some((stamp, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            return;
        };
        let Ok(at) = stamp.parse::<f64>() else {
            return;
        };
        let Some(seq) = rest
            .split("icmp_seq=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
        else {
            return;
        };
        if rest.starts_with("no answer yet") {
            self.late.insert(seq, at - WATCH_INTERVAL);
        } else {
            let rtt_ms: f64 = rest
                .split("time=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            self.answered.insert(seq, at - rtt_ms / 1000.0);
        }
    }

    /// When the echo requests that never got an answer were sent.
    fn lost(&self) -> Vec<f64> {
        self.late
            .iter()
            .filter(|(seq, _)| !self.answered.contains_key(seq))
            .map(|(_, at)| *at)
            .collect()
    }
}

/// Every host pinging every other host's every address each 100 ms, for
/// the whole test.
struct PingWatch {
    pings: Vec<(String, Child, JoinHandle<Echoes>)>,
}

/// A host and another host's virtual address it must reach.
struct Pair {
    from: &'static str,
    to: &'static str,
    addr: String,
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} ({})", self.from, self.to, self.addr)
    }
}

/// Every host with every other host's every address.
fn pairs(lab: &Lab) -> Vec<Pair> {
    let addrs: BTreeMap<&str, Vec<String>> = HOSTS.iter().map(|h| (*h, lab.addrs(h))).collect();
    let mut pairs = Vec::new();
    for from in HOSTS {
        for to in HOSTS.into_iter().filter(|t| *t != from) {
            for addr in &addrs[to] {
                pairs.push(Pair {
                    from,
                    to,
                    addr: addr.clone(),
                });
            }
        }
    }
    pairs
}

impl PingWatch {
    fn start(lab: &Lab, pairs: &[Pair]) -> PingWatch {
        let interval = WATCH_INTERVAL.to_string();
        let pings = pairs
            .iter()
            .map(|p| {
                let cmd = ["ping", "-D", "-n", "-O", "-i", &interval, &p.addr];
                let mut child = lab.spawn(p.from, &cmd);
                let out = child.stdout.take().expect("ping stdout");
                let reader = std::thread::spawn(move || {
                    let mut echoes = Echoes::default();
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        echoes.add(&line);
                    }
                    echoes
                });
                (p.to_string(), child, reader)
            })
            .collect();
        PingWatch { pings }
    }

    /// Stops the pings (SIGINT, so they flush) and returns what each saw.
    fn stop(mut self) -> Vec<(String, Echoes)> {
        let mut seen = Vec::new();
        for (pair, mut child, reader) in std::mem::take(&mut self.pings) {
            let running = matches!(child.try_wait(), Ok(None));
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
            assert!(running, "the watch's ping {pair} stopped by itself");
            seen.push((pair, reader.join().expect("ping reader")));
        }
        seen
    }
}

impl Drop for PingWatch {
    /// A failed test leaves no ping behind.
    fn drop(&mut self) {
        for (_, child, _) in &mut self.pings {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A stretch of the test in which the watch must lose nothing.
struct Calm {
    what: String,
    /// Unix time it starts.
    from: f64,
    /// Unix time it ends.
    to: f64,
}

/// Checks that no watched ping sent in any calm stretch went unanswered;
/// prints what each stretch saw.
fn nothing_lost_when_calm(seen: &[(String, Echoes)], calm: &[Calm]) {
    let mut failures = Vec::new();
    for c in calm {
        let mut sent = 0;
        for (pair, echoes) in seen {
            sent += echoes
                .answered
                .values()
                .chain(echoes.late.values())
                .filter(|t| (c.from..=c.to).contains(*t))
                .count();
            let lost: Vec<f64> = echoes
                .lost()
                .into_iter()
                .filter(|t| (c.from..=c.to).contains(t))
                .collect();
            if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
                failures.push(format!(
                    "{}: {pair}: {} pings lost, sent {:.1}-{:.1} s into a stretch of {:.1} s",
                    c.what,
                    lost.len(),
                    first - c.from,
                    last - c.from,
                    c.to - c.from
                ));
            }
        }
        eprintln!("watch: {} ({:.1} s): {sent} pings", c.what, c.to - c.from);
    }
    assert!(
        failures.is_empty(),
        "pings lost while nothing was wrong (from {REACH_BOUND:?} after a heal to the next fault):\n{}",
        failures.join("\n")
    );
}

/// Every host pings every other host's every address; returns the longest
/// time from `healed` to a pair's first reply, and that pair. Fails once
/// `REACH_BOUND` has passed since `healed` without a reply for some pair.
fn everyone_reaches_everyone(
    lab: &Lab,
    pairs: &[Pair],
    healed: Instant,
    phase: &str,
) -> (Duration, String) {
    std::thread::scope(|s| {
        let pings: Vec<_> = pairs
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let pair = p.to_string();
                    for attempt in 1.. {
                        let out = lab.exec(p.from, &["ping", "-c", "1", "-W", "0.5", &p.addr]);
                        if out.status.success() {
                            return Ok((healed.elapsed(), format!("{pair}, ping {attempt}")));
                        }
                        if healed.elapsed() > REACH_BOUND {
                            return Err(format!("{pair}, {attempt} pings"));
                        }
                    }
                    unreachable!("1.. does not end")
                })
            })
            .collect();
        let results: Vec<Result<(Duration, String), String>> = pings
            .into_iter()
            .map(|p| p.join().expect("ping thread"))
            .collect();
        let unreached: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            unreached.is_empty(),
            "after {phase}: no reply within {REACH_BOUND:?} of the heal: {unreached:?}"
        );
        results
            .into_iter()
            .filter_map(Result::ok)
            .max()
            .unwrap_or_default()
    })
}

/// Waits until every gateway holds exactly the host routes; returns the
/// time since `healed` and what differed first, if anything did. Fails once
/// `REACH_BOUND` has passed since `healed`.
fn tables_agree(
    lab: &Lab,
    healed: Instant,
    want: &BTreeSet<String>,
    phase: &str,
) -> (Duration, Option<String>) {
    let mut first = None;
    loop {
        let Some(why) = tables_disagree(lab, want) else {
            return (healed.elapsed(), first);
        };
        assert!(
            healed.elapsed() <= REACH_BOUND,
            "after {phase}: route tables still differ {REACH_BOUND:?} after the heal: {why}"
        );
        first.get_or_insert(why);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The neighbours each gateway holds suppressed, for the log.
fn suppressed(lab: &Lab) -> Vec<String> {
    GATEWAYS
        .iter()
        .flat_map(|gw| {
            lab.routed(gw, "status")["neighbors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n["suppressed"] == true)
                .map(move |n| format!("{gw}->{}", n["name"].as_str().unwrap_or("?")))
        })
        .collect()
}

fn link(lab: &Lab, a: &str, b: &str, action: &[&str]) {
    let mut args = vec!["link", a, b];
    args.extend_from_slice(action);
    lab.lab_ok(&args);
}

/// Kills one node's daemons (or routed alone) with SIGKILL, keeps them down
/// for `down`, and starts them again.
fn kill_and_start(lab: &Lab, node: &str, routed_only: bool, down: Duration) {
    let mut args = vec!["kill", node, "--signal", "KILL"];
    if routed_only {
        args.extend(["--daemon", "routed"]);
    }
    lab.lab_ok(&args);
    std::thread::sleep(down);
    lab.lab_ok(&["start", node]);
}

/// fra-h1's preferred gateway (first in its config): it fails back there.
const FRA_PREFERRED: &str = "fra-gw1";

/// Runs fault `step` of round `round`; returns what it is, for the log, and
/// which daemons it restarted on purpose.
/// How long after `t0` no gateway but `gw` routes `host`'s prefixes
/// through `gw` (polled; `REACH_BOUND` at most).
fn withdrawn_through(lab: &Lab, host: &str, gw: &str, t0: Instant) -> Duration {
    let prefixes = host_prefixes(lab).remove(host).unwrap_or_default();
    let through = || {
        GATEWAYS.iter().filter(|g| **g != gw).any(|g| {
            let t = table(lab, g);
            prefixes
                .iter()
                .any(|p| t.get(p).is_some_and(|v| v.iter().any(|x| x == gw)))
        })
    };
    lab.wait_for(&format!("{host} withdrawn through {gw}"), |_| !through());
    t0.elapsed()
}

/// The host's next hops at `gw`'s routed.
fn via_at(lab: &Lab, gw: &str, prefix: &str) -> Vec<String> {
    table(lab, gw).remove(prefix).unwrap_or_default()
}

fn fault(
    lab: &Lab,
    v: &Variant,
    round: usize,
    step: usize,
    calm: &mut Vec<Calm>,
) -> (String, Option<Restarted>) {
    // Rounds alternate between the two gateways of ams.
    let (ams_a, ams_b) = if round.is_multiple_of(2) {
        ("ams-gw1", "ams-gw2")
    } else {
        ("ams-gw2", "ams-gw1")
    };
    let fra = lab.active_gateway("fra-h1");
    match step {
        0 => {
            kill_and_start(lab, &fra, false, v.down);
            (
                format!("SIGKILL of {fra} (fra-h1's gateway), down {:?}", v.down),
                Some(Restarted::Node(fra)),
            )
        }
        1 => {
            kill_and_start(lab, ams_a, true, v.down);
            (
                format!("SIGKILL of routed on {ams_a}, down {:?}", v.down),
                Some(Restarted::Routed(ams_a.to_string())),
            )
        }
        2 => {
            for b in [ams_a, ams_b] {
                link(lab, &fra, b, &["drop"]);
            }
            std::thread::sleep(v.drop);
            for b in [ams_a, ams_b] {
                link(lab, &fra, b, &["heal"]);
            }
            (
                format!("silent drop {fra} <-> {ams_a}, {ams_b} for {:?}", v.drop),
                None,
            )
        }
        3 => {
            link(lab, &fra, ams_b, &["loss", "20"]);
            std::thread::sleep(v.loss);
            link(lab, &fra, ams_b, &["loss", "0"]);
            (
                format!("20 % loss {fra} <-> {ams_b} for {:?}", v.loss),
                None,
            )
        }
        4 => {
            // Each flap is paced by the session, not by the clock: the link
            // is dropped until the session is seen down, healed until it is
            // seen up again. Damping must hold the link down within
            // MAX_FLAPS (the third flap with the defaults, a few more if the
            // machine is so slow that the penalty decays between flaps);
            // afterwards the link keeps flapping every 2 s for the rest of
            // the variant's flap time.
            const MAX_FLAPS: u64 = 6;
            let gw = FRA_PREFERRED;
            let neighbor = || {
                lab.routed(gw, "status")["neighbors"]
                    .as_array()
                    .and_then(|ns| ns.iter().find(|n| n["name"] == ams_a).cloned())
                    .unwrap_or(Value::Null)
            };
            // Up: the session established and its tunnel up (a session
            // outlives a tunnel down for a few seconds).
            let up_or_held = |n: &Value| {
                (n["state"] == "established" && n["tunnel_up"] == true) || n["suppressed"] == true
            };
            let started = Instant::now();
            let mut flaps = 0;
            loop {
                lab.wait_for(&format!("{gw} -> {ams_a} up or suppressed"), |_| {
                    up_or_held(&neighbor())
                });
                let n = neighbor();
                if n["suppressed"] == true {
                    break;
                }
                assert!(
                    flaps < MAX_FLAPS,
                    "{gw} -> {ams_a} not suppressed after {flaps} flaps: {n}"
                );
                let before = n["flaps"].as_u64().unwrap_or(0);
                link(lab, gw, ams_a, &["drop"]);
                lab.wait_for(&format!("{gw} -> {ams_a} down"), |_| {
                    neighbor()["flaps"].as_u64().unwrap_or(0) > before
                });
                flaps += 1;
                link(lab, gw, ams_a, &["heal"]);
            }
            while started.elapsed() < v.flap {
                link(lab, gw, ams_a, &["drop"]);
                std::thread::sleep(Duration::from_secs(2));
                link(lab, gw, ams_a, &["heal"]);
                std::thread::sleep(Duration::from_secs(2));
            }
            let n = neighbor();
            (
                format!(
                    "{gw} <-> {ams_a} flapping for {:?} (suppressed at flap {flaps}, now penalty {:.0}, suppressed {})",
                    started.elapsed(),
                    n["penalty"].as_f64().unwrap_or(0.0),
                    n["suppressed"]
                ),
                None,
            )
        }
        6 => {
            let host = "ams-h1";
            let gw = lab.active_gateway(host);
            let t0 = Instant::now();
            let from = unix_now();
            link(lab, host, &gw, &["drop"]);
            let gone = withdrawn_through(lab, host, &gw, t0);
            std::thread::sleep(v.drop.saturating_sub(t0.elapsed()));
            // From 1 s after the drop to the heal nothing may be lost.
            calm.push(Calm {
                what: format!("round {} fault 7, from 1 s after the drop", round + 1),
                from: from + 1.0,
                to: unix_now(),
            });
            link(lab, host, &gw, &["heal"]);
            (
                format!(
                    "silent drop {host} <-> {gw} for {:?}, withdrawn through {gw} after {gone:.2?}",
                    v.drop
                ),
                None,
            )
        }
        7 => {
            // Changes of the host's route at a gateway of another site,
            // sampled every 50 ms while the link flaps.
            let host = "ams-h1";
            let gw = lab.active_gateway(host);
            let prefix = host_prefixes(lab)[host][0].clone();
            let mut seen = via_at(lab, "fra-gw1", &prefix);
            let mut changes = 0;
            let mut sample_for = |d: Duration| {
                let end = Instant::now() + d;
                while Instant::now() < end {
                    let now = via_at(lab, "fra-gw1", &prefix);
                    if now != seen {
                        changes += 1;
                        seen = now;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            let started = Instant::now();
            while started.elapsed() < v.flap {
                link(lab, host, &gw, &["drop"]);
                sample_for(Duration::from_secs(2));
                link(lab, host, &gw, &["heal"]);
                sample_for(Duration::from_secs(2));
            }
            let at_gw = lab.peer(&gw, host);
            let at_host = lab.peer(host, &gw);
            assert!(
                at_gw["suppressed"] == true && at_gw["attached"] == false,
                "{host}'s flapping tunnel not damped at {gw}: {at_gw}"
            );
            // Held down at the host too: by its own damping, or because
            // the gateway leaves the probes of a host it holds down
            // unanswered.
            assert!(
                at_host["suppressed"] == true || at_host["healthy"] == false,
                "{gw}'s flapping tunnel not held down at {host}: {at_host}"
            );
            assert_ne!(lab.active_gateway(host), gw, "{host} failed back to {gw}");
            assert!(
                changes <= 5,
                "{host}'s route at fra-gw1 changed {changes} times while its link flapped"
            );
            (
                format!(
                    "{host} <-> {gw} flapping every 2 s for {:?}: {changes} changes at fra-gw1, penalty {:.0} at {gw}",
                    started.elapsed(),
                    at_gw["penalty"].as_f64().unwrap_or(0.0)
                ),
                None,
            )
        }
        8 | 9 => {
            let host = "par-h1";
            let gw = lab.active_gateway(host);
            let t0 = Instant::now();
            let signal = if step == 8 { "KILL" } else { "TERM" };
            lab.lab_ok(&["kill", host, "--signal", signal]);
            let gone = withdrawn_through(lab, host, &gw, t0);
            std::thread::sleep(v.down.saturating_sub(t0.elapsed()));
            lab.lab_ok(&["start", host]);
            (
                format!(
                    "SIG{signal} of {host}, down {:?}, withdrawn through {gw} after {gone:.2?}",
                    v.down
                ),
                Some(Restarted::Node(host.to_string())),
            )
        }
        5 => {
            // Right after the flap: its far end still holds this gateway
            // suppressed when it comes back.
            let gw = FRA_PREFERRED;
            lab.lab_ok(&["kill", gw]);
            lab.resign(gw, &["--days", "200"]);
            lab.lab_ok(&["start", gw]);
            // Started on the new certificate, not the old one (365 days).
            let days = lab.overlayd(gw)["cert_days_left"].as_f64();
            assert!(
                days.is_some_and(|d| d <= 200.0),
                "{gw} runs on its old certificate ({days:?} days left)"
            );
            (
                format!("{gw} (fra-h1's preferred gateway) restarted with a new certificate"),
                Some(Restarted::Node(gw.to_string())),
            )
        }
        10 => {
            // Re-created at another site, then back (the heal).
            let host = "par-h1";
            let old = lab.active_gateway(host);
            let prefixes = host_prefixes(lab).remove(host).unwrap_or_default();
            let through_fra = |l: &Lab| {
                GATEWAYS.iter().all(|g| {
                    let t = table(l, g);
                    prefixes.iter().all(|p| {
                        t.get(p).is_some_and(|v| {
                            if g.starts_with("fra") {
                                v == &["local"]
                            } else {
                                v == &["fra-gw1", "fra-gw2"]
                            }
                        })
                    })
                })
            };
            lab.lab_ok(&["move", host, "fra"]);
            let t0 = Instant::now();
            lab.wait_for(&format!("{host} attached at fra"), |l| {
                ["fra-gw1", "fra-gw2"]
                    .iter()
                    .all(|g| l.peer(g, host)["attached"] == true)
            });
            let attached = t0.elapsed();
            lab.wait_for(
                &format!("{host} routed through fra everywhere"),
                through_fra,
            );
            let moved = t0.elapsed();
            assert!(
                lab.peer(&old, host)["attached"] != true,
                "{old} still has {host} attached"
            );
            std::thread::sleep(v.down);
            lab.lab_ok(&["move", host, "par"]);
            (
                format!(
                    "{host} moved to fra: attached there {attached:.2?} after its start, routed through fra everywhere after {moved:.2?}; moved back"
                ),
                Some(Restarted::Node(host.to_string())),
            )
        }
        11 => {
            // Revoked at every gateway; healed with a new certificate.
            let host = "par-h1";
            lab.revoke(host);
            let n = lab.node(host);
            let t0 = Instant::now();
            for g in GATEWAYS {
                lab.lab_ok(&["kill", g, "--signal", "HUP"]);
            }
            let prefixes = host_prefixes(lab).remove(host).unwrap_or_default();
            lab.wait_for(&format!("{host} withdrawn everywhere"), |l| {
                GATEWAYS.iter().all(|g| {
                    let t = table(l, g);
                    prefixes.iter().all(|p| !t.contains_key(p))
                })
            });
            let gone = t0.elapsed();
            // Revoking the certificate revoked its key too: back with a new
            // key and a certificate of it.
            lab.lab_ok(&["kill", host]);
            let _ = std::fs::remove_file(&n.key);
            ok(Command::new(bin("overlay-cert")).args(["keygen", "--out", &path_str(&n.key)]));
            lab.resign(host, &[]);
            lab.lab_ok(&["start", host]);
            (
                format!("{host} revoked: withdrawn everywhere {gone:.2?} after the first reload; back with a new key"),
                Some(Restarted::Node(host.to_string())),
            )
        }
        _ => unreachable!("fault {step}"),
    }
}

const STEPS: usize = 12;

#[test]
fn every_fault_heals_with_everyone_reachable_and_the_transfer_intact() {
    if !netns_or_skip("every_fault_heals_with_everyone_reachable_and_the_transfer_intact") {
        return;
    }
    let v = if std::env::var("CUBENET_CHAOS_LONG").as_deref() == Ok("1") {
        LONG
    } else {
        SHORT
    };
    let start = Instant::now();
    let lab = Lab::up(SPEC);
    eprintln!("chaos {}: lab up in {:.1?}", v.name, start.elapsed());
    let hosts = host_prefixes(&lab);
    let want: BTreeSet<String> = hosts.values().flatten().cloned().collect();
    let mut expected_pids = pids(&lab);

    let server = TcpServer::start(&lab, "ams-h1", SINK);
    let mut sender = TcpSender::start(&lab, "fra-h1", SINK, RATE);
    let mut server = Some(server);
    let pairs = pairs(&lab);
    let watch = PingWatch::start(&lab, &pairs);
    let mut calm = vec![Calm {
        what: "before the faults".into(),
        from: unix_now(),
        to: 0.0,
    }];
    // The healed lab is watched this long before the next fault.
    std::thread::sleep(REACH_BOUND);

    for round in 0..v.rounds {
        for step in 0..STEPS {
            let t = Instant::now();
            if let Some(c) = calm.last_mut() {
                c.to = unix_now();
            }
            let before = pids(&lab);
            let (what, restarted) = fault(&lab, &v, round, step, &mut calm);
            let healed = Instant::now();
            calm.push(Calm {
                what: format!("after round {} fault {}", round + 1, step + 1),
                from: unix_now() + REACH_BOUND.as_secs_f64(),
                to: 0.0,
            });
            let phase = format!("round {} fault {}: {what}", round + 1, step + 1);
            // Pids of the daemons restarted on purpose.
            let now = pids(&lab);
            match &restarted {
                Some(Restarted::Node(n)) => {
                    assert!(
                        !now[n].is_empty()
                            && now[n].len() == before[n].len()
                            && now[n].iter().all(|p| !before[n].contains(p)),
                        "{phase}: {n} did not restart ({:?} -> {:?})",
                        before[n],
                        now[n]
                    );
                    expected_pids.insert(n.clone(), now[n].clone());
                }
                Some(Restarted::Routed(n)) => {
                    assert_eq!(
                        now[n].first(),
                        before[n].first(),
                        "{phase}: overlayd of {n} did not keep running"
                    );
                    assert_ne!(now[n], before[n], "{phase}: routed of {n} did not restart");
                    expected_pids.insert(n.clone(), now[n].clone());
                }
                None => {}
            }

            let (reach, slowest) = everyone_reaches_everyone(&lab, &pairs, healed, &phase);
            let (agree, differed) = tables_agree(&lab, healed, &want, &phase);
            nothing_restarted_or_panicked(&lab, &expected_pids, &phase);
            if let Some(e) = sender.exited() {
                panic!("{phase}: the transfer's sender stopped: {e}");
            }
            if let Some(e) = server.as_mut().and_then(TcpServer::exited) {
                panic!("{phase}: the transfer's receiver stopped: {e}");
            }
            eprintln!(
                "{phase}: fault {:.1?}; all hosts reached after {:.2?} (last {slowest}), tables agree after {:.2?}{}; suppressed {:?}",
                healed - t,
                reach,
                agree,
                differed.map(|d| format!(" (first {d})")).unwrap_or_default(),
                suppressed(&lab)
            );
            // Watched, healed, before the next fault.
            std::thread::sleep(
                (healed + REACH_BOUND + v.observe).saturating_duration_since(Instant::now()),
            );
        }
    }

    // The transfer ran through every fault, intact.
    let sent = sender.finish();
    let received = server.take().expect("server").result();
    eprintln!("transfer: sent {sent}, received {received}");
    assert_eq!(sent, received, "the transfer arrived changed");

    // Once damping lets the suppressed links back, every gateway is on its
    // direct paths again (damping holds a link at most 60 s after its last
    // flap, then it must stay up 3 s).
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let off: Vec<&str> = loop {
        let off: Vec<&str> = GATEWAYS
            .iter()
            .copied()
            .filter(|gw| table(&lab, gw) != healthy_table(gw, &hosts))
            .collect();
        if off.is_empty() || Instant::now() > deadline {
            break off;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        off.is_empty(),
        "not back on the direct paths 120 s after the last fault: {}",
        off.iter()
            .map(|gw| format!("{gw}: {:?}", table(&lab, gw)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    lab.lab_ok(&["wait"]);
    nothing_restarted_or_panicked(&lab, &expected_pids, "at the end");
    if let Some(c) = calm.last_mut() {
        c.to = unix_now();
    }
    let seen = watch.stop();
    nothing_lost_when_calm(&seen, &calm);
    eprintln!(
        "chaos {}: direct paths back {:.1?} after the last fault; {:.1?} in all",
        v.name,
        t.elapsed(),
        start.elapsed()
    );
}

/// A gateway that comes back while one of its neighbours is unreachable
/// forwards for its hosts as soon as they fail back to it.
///
/// Found while measuring the chaos suite: routed on the restarted gateway
/// used to hold overlayd's (empty) forwarding table until every neighbour
/// was back or `startup_grace_s` (10 s) had passed, while its hosts failed
/// back to it once its tunnel was stable (~4 s): everything the host sent
/// was dropped for ~6 s, though routed had learned every route from its
/// other neighbours. Now routed merges what it learns during the grace.
#[test]
fn a_gateway_restarted_while_a_neighbor_is_unreachable_forwards_when_hosts_fail_back() {
    if !netns_or_skip("a_gateway_restarted_while_a_neighbor_is_unreachable") {
        return;
    }
    let lab = Lab::up(SPEC);
    let watch = PingWatch::start(&lab, &pairs(&lab));
    let gw = FRA_PREFERRED;
    // par-gw2 unreachable from fra-gw1 (par-gw1 and every other path fine).
    link(&lab, gw, "par-gw2", &["drop"]);
    lab.lab_ok(&["kill", gw, "--signal", "KILL"]);
    lab.wait_for("fra-h1 to move to fra-gw2", |l| {
        l.active_gateway("fra-h1") == "fra-gw2"
    });
    lab.lab_ok(&["start", gw]);
    let started = unix_now();
    let t = Instant::now();
    lab.wait_for("fra-h1 to fail back to fra-gw1", |l| {
        l.active_gateway("fra-h1") == gw
    });
    eprintln!(
        "fra-h1 failed back to {gw} {:.1?} after its start",
        t.elapsed()
    );
    // Past routed's startup grace (10 s).
    std::thread::sleep(Duration::from_secs(12).saturating_sub(t.elapsed()));
    let calm = Calm {
        what: format!("{gw} restarted while its tunnel to par-gw2 drops"),
        from: started + REACH_BOUND.as_secs_f64(),
        to: unix_now(),
    };
    let seen = watch.stop();
    nothing_lost_when_calm(&seen, &[calm]);
}

/// A gateway stopped the polite way (SIGTERM) and started again: it tells
/// its peers before it goes (in-band `Leaving`), so its hosts and the other
/// gateways move their traffic at once instead of after missed probes and
/// BFD, and not one ping of the watch is lost through the stop, the restart
/// and the hosts' failback to it.
#[test]
fn a_gateway_stopped_with_sigterm_and_started_again_loses_no_ping() {
    if !netns_or_skip("a_gateway_stopped_with_sigterm_and_started_again_loses_no_ping") {
        return;
    }
    let lab = Lab::up(SPEC);
    // fra-h1 on its preferred gateway, so it fails back there after.
    let gw = FRA_PREFERRED.to_string();
    lab.wait_for("fra-h1 on its preferred gateway", |l| {
        l.active_gateway("fra-h1") == gw
    });
    let watch = PingWatch::start(&lab, &pairs(&lab));
    let from = unix_now();
    let old_flaps = lab.peer("fra-h1", &gw)["flaps"].as_u64().unwrap_or(0);
    // `kill` returns once the daemons are gone.
    lab.lab_ok(&["kill", &gw]);
    assert_ne!(
        lab.active_gateway("fra-h1"),
        gw,
        "fra-h1 still sends to {gw}"
    );
    assert!(
        lab.peer("fra-h1", &gw)["flaps"].as_u64().unwrap_or(0) > old_flaps,
        "fra-h1 did not take {gw} down"
    );
    let log = std::fs::read_to_string(lab.path().join("nodes").join(&gw).join("overlayd.log"))
        .unwrap_or_default();
    assert!(
        log.contains("telling peers"),
        "{gw} did not tell its peers:\n{log}"
    );
    lab.lab_ok(&["start", &gw]);
    lab.wait_for("fra-h1 to fail back", |l| l.active_gateway("fra-h1") == gw);
    lab.lab_ok(&["wait"]);
    let calm = Calm {
        what: format!("{gw} stopped with SIGTERM, started, failed back to"),
        from,
        to: unix_now(),
    };
    nothing_lost_when_calm(&watch.stop(), &[calm]);
}
