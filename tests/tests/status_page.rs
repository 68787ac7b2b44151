//! The status page at `/` of `metrics_listen`, in a real browser: Debian's
//! headless Chromium loads routed's and overlayd's pages of a lab gateway
//! from inside its namespace; the rendered DOM lists the gateway's
//! neighbours, its routes and overlayd's peers, and screenshots are written
//! to `<target>/status-page/` for people to look at.

mod common;

use common::{bin_dir, netns_or_skip, Lab};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const GW: &str = "fra-gw1";
/// Where a lab with `metrics = true` serves them, in each node.
const OVERLAYD_PAGE: &str = "http://127.0.0.1:9469/";
const ROUTED_PAGE: &str = "http://127.0.0.1:9470/";

/// Chromium's own bound on a page, and the one the test keeps on the whole
/// process (a hung browser fails the test rather than blocks it).
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// Runs headless Chromium in `node`'s namespace with a fresh profile under
/// `profile`, `args` after the common flags. `timeout` kills the browser
/// and its children after 60 s; the test kills what is left 15 s later.
fn chromium(lab: &Lab, node: &str, profile: &Path, args: &[&str]) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("chromium-")
        .tempdir_in(profile)
        .expect("profile dir");
    let user_data = format!("--user-data-dir={}", dir.path().display());
    let page_timeout = format!("--timeout={}", PAGE_TIMEOUT.as_millis());
    let deadline = BROWSER_DEADLINE.as_secs().to_string();
    // Niced: the lab's daemons keep their BFD timers while it renders.
    let mut cmd = vec![
        "nice",
        "-n",
        "10",
        "timeout",
        "-k",
        "5",
        &deadline,
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        &user_data,
        &page_timeout,
    ];
    cmd.extend_from_slice(args);
    let mut child = lab
        .exec_command(node, &cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium: is Debian's chromium package installed?");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let until = Instant::now() + BROWSER_DEADLINE + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} in {node} did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        out.status.success(),
        "chromium {args:?} in {node} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM Chromium rendered from `url`.
fn dump_dom(lab: &Lab, profile: &Path, url: &str) -> String {
    let out = chromium(lab, GW, profile, &["--dump-dom", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A screenshot of `url` written to `file`, checked to be a PNG.
fn screenshot(lab: &Lab, profile: &Path, url: &str, file: &Path) {
    let _ = std::fs::remove_file(file);
    let arg = format!("--screenshot={}", file.display());
    chromium(
        lab,
        GW,
        profile,
        &[&arg, "--window-size=1280,1600", "--hide-scrollbars", url],
    );
    let png = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG screenshot ({} bytes)",
        file.display(),
        png.len()
    );
    eprintln!("screenshot: {} ({} bytes)", file.display(), png.len());
}

/// Where the screenshots go: `status-page/` in the target directory of
/// this build (beside `release/` or `debug/`).
fn screenshot_dir() -> PathBuf {
    let bins = bin_dir();
    let target = bins.parent().unwrap_or(&bins);
    let dir = target.join("status-page");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn names(v: &serde_json::Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_string())
        .collect()
}

/// The `<svg>` of `name`'s timeline in a rendered routed page.
fn timeline_of<'a>(dom: &'a str, name: &str) -> &'a str {
    let label = format!("aria-label=\"{name} up/down\"");
    let at = dom
        .find(&label)
        .unwrap_or_else(|| panic!("no timeline of {name}:\n{dom}"));
    let rest = &dom[at..];
    &rest[..rest.find("</svg>").unwrap_or(rest.len())]
}

#[test]
fn the_status_pages_list_a_gateways_neighbours_and_peers_in_chromium() {
    if !netns_or_skip("the_status_pages_list_a_gateways_neighbours_and_peers_in_chromium") {
        return;
    }
    let lab = Lab::up(
        "routed = true\nbfd_interval_ms = 300\nmetrics = true\n\
         [[site]]\nname = \"fra\"\ngateways = 2\n\
         [[site]]\nname = \"ams\"\ngateways = 2\n",
    );
    lab.lab_ok(&["wait"]);

    // One flap of fra-gw1's session with ams-gw1, for the timeline.
    let neighbor = |l: &Lab, node: &str, name: &str| {
        l.routed(node, "status")["neighbors"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or(serde_json::Value::Null)
    };
    let flaps = neighbor(&lab, GW, "ams-gw1")["flaps"].as_u64().unwrap_or(0);
    lab.lab_ok(&["link", GW, "ams-gw1", "drop"]);
    lab.wait_for("fra-gw1's session with ams-gw1 to go down", |l| {
        neighbor(l, GW, "ams-gw1")["flaps"].as_u64().unwrap_or(0) > flaps
    });
    lab.lab_ok(&["link", GW, "ams-gw1", "heal"]);
    let status = lab.routed(GW, "status");
    let mut neighbors = names(&status, "neighbors");
    neighbors.sort();
    assert_eq!(neighbors, ["ams-gw1", "ams-gw2", "fra-gw2"]);
    let all_established = |l: &Lab| {
        l.routed(GW, "status")["neighbors"]
            .as_array()
            .is_some_and(|ns| ns.iter().all(|n| n["state"] == "established"))
    };
    lab.wait_for("every neighbour of fra-gw1 established", all_established);
    assert_ne!(neighbor(&lab, "ams-gw1", GW)["suppressed"], true);
    let routes = |l: &Lab| -> Vec<(String, String)> {
        l.routed(GW, "routes")["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().expect(k).to_string();
                (s("prefix"), s("origin"))
            })
            .collect()
    };
    let routes_before = routes(&lab);
    let peers = names(&lab.overlayd(GW), "peers");
    for p in ["ams-gw1", "ams-gw2", "fra-gw2", "fra-h1"] {
        assert!(
            peers.iter().any(|x| x == p),
            "{p} is no peer of fra-gw1: {peers:?}"
        );
    }

    // The page's headers: HTML, never cached, no script allowed.
    let head = lab.exec_ok(
        GW,
        &["curl", "-sf", "-D", "-", "-o", "/dev/null", ROUTED_PAGE],
    );
    for want in [
        "Content-Type: text/html; charset=utf-8",
        "Cache-Control: no-store",
        "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    ] {
        assert!(head.contains(want), "routed's / lacks {want:?}:\n{head}");
    }

    let profile = tempfile::tempdir().expect("tempdir");
    let dom = dump_dom(&lab, profile.path(), ROUTED_PAGE);
    assert!(dom.contains("<title>routed fra-gw1 AS "), "{dom}");
    for n in &neighbors {
        let row = format!("<td class=\"neighbor\"><b>{n}</b></td>");
        assert!(
            dom.contains(&row),
            "routed's page does not list {n}:\n{dom}"
        );
        timeline_of(&dom, n);
    }
    // The flap is drawn: a red span between green ones.
    let t = timeline_of(&dom, "ams-gw1");
    assert!(t.contains("<rect class=\"down\""), "{t}");
    assert!(t.contains("<rect class=\"up\""), "{t}");
    assert!(t.contains("<line class=\"tick\""), "{t}");
    // Every route routed had before and after the page was taken (one
    // learned from the other site at least) is on it.
    let routes_after = routes(&lab);
    let steady: Vec<&(String, String)> = routes_before
        .iter()
        .filter(|r| routes_after.contains(r))
        .collect();
    assert!(
        steady.iter().any(|(_, origin)| origin == "learned"),
        "no learned route stayed: {routes_before:?} then {routes_after:?}"
    );
    for (prefix, origin) in steady {
        let row = format!("<tr><td>{prefix}</td><td><span class=\"");
        assert!(
            dom.contains(&row),
            "routed's page lacks the {origin} route {prefix}:\n{dom}"
        );
    }

    let dom = dump_dom(&lab, profile.path(), OVERLAYD_PAGE);
    assert!(dom.contains("<title>overlayd fra-gw1</title>"), "{dom}");
    for p in &peers {
        let row = format!("<td class=\"peer\"><b>{p}</b></td>");
        assert!(
            dom.contains(&row),
            "overlayd's page does not list {p}:\n{dom}"
        );
    }
    assert!(dom.contains("<h2>Drops by reason</h2>"), "{dom}");
    assert!(dom.contains("<span class=\"ok\">healthy</span>"), "{dom}");

    // The pictures show a settled gateway.
    lab.wait_for("every neighbour of fra-gw1 established", all_established);
    let dir = screenshot_dir();
    screenshot(&lab, profile.path(), ROUTED_PAGE, &dir.join("routed.png"));
    screenshot(
        &lab,
        profile.path(),
        OVERLAYD_PAGE,
        &dir.join("overlayd.png"),
    );
}
