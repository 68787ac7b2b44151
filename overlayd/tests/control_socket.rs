//! overlayd's control socket with broken clients: a line far over the
//! limit, bytes that are not UTF-8 or not JSON, a subscriber that never
//! reads while events pour out, a client gone in the middle of a line.
//! Each only affects its own connection: another client's `status` keeps
//! working and the server keeps accepting.

mod common;

use common::Pki;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn reply(s: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// `status` on a connection, answered (a connection that hangs fails on
/// its read timeout).
fn status(c: &mut BufReader<UnixStream>) {
    c.get_mut().write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let v = reply(c);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["name"], "fra-gw1");
}

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    _node: Arc<overlayd::node::Node>,
    /// Where the driver would put the node's events.
    events: overlayd::ctl::Events,
    _rt: tokio::runtime::Runtime,
}

fn server() -> Server {
    server_of(Pki::get().gateway())
}

fn server_of(node: Arc<overlayd::node::Node>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlayd.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async { overlayd::ctl::bind(&path) }).unwrap();
    let reload: overlayd::ctl::Reload = Arc::new(|| {
        Ok(cubenet_api::overlayd::Reloaded {
            reload: Default::default(),
            firewall_flows_cut: 0,
        })
    });
    let events = overlayd::ctl::events();
    rt.spawn(overlayd::ctl::serve(
        listener,
        node.clone(),
        reload,
        events.clone(),
    ));
    Server {
        _dir: dir,
        path,
        _node: node,
        events,
        _rt: rt,
    }
}

#[test]
fn a_line_over_the_limit_is_refused_and_closes_only_that_connection() {
    let s = server();
    let mut good = BufReader::new(connect(&s.path));
    status(&mut good);
    // 16 MiB without a newline.
    let long = connect(&s.path);
    let writer = {
        let mut w = long.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'{'; 1 << 20];
            for _ in 0..16 {
                if w.write_all(&chunk).is_err() {
                    return false;
                }
            }
            true
        })
    };
    // The reply line, then the end of the connection: EOF, or a reset
    // since the server closed with the rest of the line unread.
    let mut long = std::io::BufReader::new(long);
    let mut text = String::new();
    long.read_line(&mut text).unwrap();
    let mut rest = String::new();
    assert!(
        matches!(long.read_line(&mut rest), Ok(0) | Err(_)),
        "{rest:?}"
    );
    // The server stopped reading at the limit and closed: the writer
    // could not send everything.
    assert!(!writer.join().unwrap(), "the server read all 16 MiB");
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["ok"], false);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains(&overlayd::ctl::MAX_LINE.to_string()), "{e}");
    status(&mut good);
}

#[test]
fn bad_lines_get_errors_and_the_connection_goes_on() {
    let s = server();
    let mut good = BufReader::new(connect(&s.path));
    let mut bad = BufReader::new(connect(&s.path));
    for line in [
        &b"\xff\xfe{\"cmd\":\"status\"}\n"[..],
        b"{\"cmd\":\n",
        b"{\"cmd\":\"reboot\"}\n",
        b"{\"cmd\":\"route_add\",\"prefix\":\"10.0.0.0/33\",\"via\":[]}\n",
        b"\0\0\0\n",
        b"\n",
    ] {
        bad.get_mut().write_all(line).unwrap();
        let v = reply(&mut bad);
        assert_eq!(v["ok"], false, "{v}");
        assert!(v["error"].is_string(), "{v}");
        status(&mut good);
    }
    status(&mut bad);
    // A route set naming an unknown gateway is refused as a whole.
    bad.get_mut()
        .write_all(b"{\"cmd\":\"route_set\",\"routes\":[{\"prefix\":\"10.9.0.0/16\",\"via\":[\"nobody\"]}]}\n")
        .unwrap();
    let v = reply(&mut bad);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nobody"), "{v}");
}

#[test]
fn a_subscriber_that_never_reads_blocks_nobody() {
    let s = server();
    let mut good = BufReader::new(connect(&s.path));
    // Subscribes, then never reads again.
    let mut stuck = BufReader::new(connect(&s.path));
    stuck
        .get_mut()
        .write_all(b"{\"cmd\":\"subscribe\"}\n")
        .unwrap();
    assert_eq!(reply(&mut stuck)["subscribed"], true);
    // A subscriber that reads, but only after the flood.
    let mut late = BufReader::new(connect(&s.path));
    late.get_mut()
        .write_all(b"{\"cmd\":\"subscribe\"}\n")
        .unwrap();
    assert_eq!(reply(&mut late)["subscribed"], true);

    // Far more events than the socket buffers and the event queue hold.
    let pad = "x".repeat(1000);
    // Sending never waits for a subscriber (it would hang here).
    for i in 0..20_000 {
        let _ = s.events.send(cubenet_api::overlayd::Event::GatewayUp {
            name: format!("{i}{pad}"),
        });
    }
    status(&mut good);

    // The late reader is told what it missed instead of the server
    // holding every event for it.
    let mut lagged = false;
    for _ in 0..5_000 {
        let v = reply(&mut late);
        if v["event"] == "lagged" {
            assert!(v["missed"].as_u64().unwrap() > 0, "{v}");
            lagged = true;
            break;
        }
    }
    assert!(lagged, "no lagged event");
    status(&mut good);
    // New connections are still accepted and served.
    status(&mut BufReader::new(connect(&s.path)));
    drop(stuck);
}

#[test]
fn a_client_gone_mid_line_is_forgotten() {
    let s = server();
    let mut good = BufReader::new(connect(&s.path));
    for _ in 0..50 {
        let mut half = connect(&s.path);
        half.write_all(b"{\"cmd\":\"sta").unwrap();
        drop(half);
        // And one gone before reading its reply.
        let mut rude = connect(&s.path);
        rude.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        drop(rude);
    }
    status(&mut good);
    status(&mut BufReader::new(connect(&s.path)));
}

/// The prefixes of the routed entries of `status`, sorted.
fn routed_prefixes(c: &mut BufReader<UnixStream>) -> Vec<String> {
    c.get_mut().write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let v = reply(c);
    let mut p: Vec<String> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["origin"] == "routed")
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect();
    p.sort();
    p
}

#[test]
fn route_set_replaces_the_table_and_merge_keeps_the_rest() {
    // A host node: its one gateway, fra-gw1, is a valid next hop.
    let s = server_of(Pki::get().host());
    let mut c = BufReader::new(connect(&s.path));
    let send = |c: &mut BufReader<UnixStream>, line: &str| {
        c.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let v = reply(c);
        assert_eq!(v["ok"], true, "{line}: {v}");
    };
    let entry = |p: &str| format!(r#"{{"prefix":"{p}","via":["fra-gw1"]}}"#);
    send(
        &mut c,
        &format!(
            r#"{{"cmd":"route_set","routes":[{},{}]}}"#,
            entry("10.9.1.0/24"),
            entry("10.9.2.0/24")
        ),
    );
    assert_eq!(routed_prefixes(&mut c), ["10.9.1.0/24", "10.9.2.0/24"]);
    // Merge: one added, the others kept.
    send(
        &mut c,
        &format!(
            r#"{{"cmd":"route_set","routes":[{}],"merge":true}}"#,
            entry("10.9.3.0/24")
        ),
    );
    assert_eq!(
        routed_prefixes(&mut c),
        ["10.9.1.0/24", "10.9.2.0/24", "10.9.3.0/24"]
    );
    // A merge naming an unknown gateway changes nothing.
    c.get_mut()
        .write_all(b"{\"cmd\":\"route_set\",\"merge\":true,\"routes\":[{\"prefix\":\"10.9.4.0/24\",\"via\":[\"nobody\"]}]}\n")
        .unwrap();
    assert_eq!(reply(&mut c)["ok"], false);
    assert_eq!(routed_prefixes(&mut c).len(), 3);
    // Without merge the set is the whole table.
    send(
        &mut c,
        &format!(
            r#"{{"cmd":"route_set","routes":[{}]}}"#,
            entry("10.9.3.0/24")
        ),
    );
    assert_eq!(routed_prefixes(&mut c), ["10.9.3.0/24"]);
}

/// `n` distinct /32 routes (from 11.0.0.0 up), all via fra-gw1.
fn table(n: u32, base: u32) -> Vec<(ipnet::IpNet, Vec<String>)> {
    (0..n)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x0b00_0000 + base + i);
            (
                ipnet::IpNet::from(std::net::IpAddr::V4(a)),
                vec!["fra-gw1".to_string()],
            )
        })
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// routed's route feed moves a table of a million routes into overlayd
/// (far past what one request line could carry), then only what changed;
/// a feed that is still learning adds and removes nothing, and its first
/// ready push removes what no longer is. Prints time and memory per route
/// (`bench/routes.sh` reads them).
#[test]
fn a_million_routes_move_from_routed_to_overlayd_and_then_only_changes() {
    use routed::overlay::RouteFeed;
    const N: u32 = 1_000_000;
    let s = server_of(Pki::get().host());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut t = table(N, 0);
    let rss0 = rss_kib();
    let start = Instant::now();
    let mut feed = RouteFeed::new(&s.path);
    let p = rt.block_on(feed.push(&t, true)).unwrap();
    let took = start.elapsed();
    let rss1 = rss_kib();
    assert!(p.resynced, "{p:?}");
    assert_eq!(p.routes, N as usize, "{p:?}");
    // The figures (server and feed share this process).
    eprintln!(
        "route feed: {N} routes in {:.2} s, {:.2} us and {:.0} bytes per route (both ends)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / f64::from(N),
        (rss1.saturating_sub(rss0) * 1024) as f64 / f64::from(N)
    );

    // Increments: 1000 withdrawn, 10 added; then one moved to a next hop
    // that does not exist: refused alone, the rest stays.
    t.drain(..1000);
    t.extend(table(10, N));
    let p = rt.block_on(feed.push(&t, true)).unwrap();
    assert!(!p.resynced, "{p:?}");
    assert_eq!((p.added, p.withdrawn), (10, 1000), "{p:?}");
    assert_eq!(p.routes, N as usize - 1000 + 10);
    let mut bad = t.clone();
    bad[0].1 = vec!["nobody".into()];
    bad[1].1 = vec!["fra-gw1".into(), "nobody".into()];
    let p = rt.block_on(feed.push(&bad, true)).unwrap();
    assert_eq!(p.added, 0, "{p:?}");
    assert_eq!(p.refused.len(), 2, "{p:?}");
    assert_eq!(p.refused[0].prefix, bad[0].0);
    assert!(p.refused[0].reason.contains("nobody"), "{p:?}");
    assert_eq!(p.routes, N as usize - 1000 + 10, "the old entries stay");
    // Refused routes are offered again with the next push.
    let p = rt.block_on(feed.push(&bad, true)).unwrap();
    assert_eq!(p.refused.len(), 2, "{p:?}");
    let p = rt.block_on(feed.push(&t, true)).unwrap();
    assert!(!p.resynced && p.refused.is_empty(), "{p:?}");
    assert_eq!(p.added, 2, "{p:?}");

    // A restarted routed, still learning: merges a small table in.
    let small = table(5, 2 * N);
    let mut feed = RouteFeed::new(&s.path);
    let p = rt.block_on(feed.push(&small, false)).unwrap();
    assert_eq!(p.routes, N as usize - 1000 + 10 + 5, "{p:?}");
    // Withdrawing while learning removes nothing.
    let p = rt.block_on(feed.push(&small[..2], false)).unwrap();
    assert_eq!(
        (p.withdrawn, p.routes),
        (0, N as usize - 1000 + 15),
        "{p:?}"
    );
    // Ready: the table is exactly what routed has now.
    let p = rt.block_on(feed.push(&small[..2], true)).unwrap();
    assert!(p.resynced, "{p:?}");
    assert_eq!(p.routes, 2, "{p:?}");
    let mut c = BufReader::new(connect(&s.path));
    assert_eq!(
        routed_prefixes(&mut c),
        ["11.30.132.128/32", "11.30.132.129/32"]
    );
}

/// What a routed still learning after its start installs (its sync stays
/// open) is forwarded at once, chunks and increments alike: the table the
/// workers use is not held back until a sync end that may come seconds
/// later.
#[test]
fn routes_of_a_feed_still_learning_are_forwarded_at_once() {
    use routed::overlay::RouteFeed;
    let s = server_of(Pki::get().host());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut feed = RouteFeed::new(&s.path);
    // More than one chunk, so the resync says "more" in between.
    let n = cubenet_api::overlayd::ROUTE_CHUNK as u32 + 3;
    let mut t = table(n, 0);
    let p = rt.block_on(feed.push(&t, false)).unwrap();
    assert!(p.resynced, "{p:?}");
    let mut c = BufReader::new(connect(&s.path));
    assert_eq!(routed_prefixes(&mut c).len(), n as usize);
    // An increment inside the open sync.
    t.extend(table(1, n));
    let p = rt.block_on(feed.push(&t, false)).unwrap();
    assert!(!p.resynced && p.added == 1, "{p:?}");
    assert!(routed_prefixes(&mut c).contains(&t[n as usize].0.to_string()));
}

#[test]
fn a_sync_end_without_a_begin_is_refused() {
    let s = server_of(Pki::get().host());
    let mut c = BufReader::new(connect(&s.path));
    c.get_mut()
        .write_all(b"{\"cmd\":\"route_sync_end\"}\n")
        .unwrap();
    let v = reply(&mut c);
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("route_sync_begin"),
        "{v}"
    );
}
