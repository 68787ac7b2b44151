//! Shared helpers for the end-to-end tests: run `cubenet-lab` and the other
//! workspace binaries, read JSON status, and clean a lab up on drop.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub use cubenet_testbed::netns_or_skip;

/// Directory of the workspace binaries of this build.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in [
        "cubenet-lab",
        "overlayd",
        "overlay-cert",
        "cubenet-tcpcheck",
    ] {
        assert!(
            dir.join(b).exists(),
            "{} missing: build the workspace binaries first (cargo build --workspace --bins)",
            dir.join(b).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab brought up from an inline spec; torn down on drop (also on panic),
/// printing the daemons' logs if the test failed.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn up(spec: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("cubenet-lab-")
            .tempdir()
            .expect("tempdir");
        let spec_path = dir.path().join("spec.toml");
        std::fs::write(&spec_path, spec).expect("write spec");
        let lab = Lab { dir };
        ok(Command::new(bin("cubenet-lab"))
            .arg("up")
            .arg(&spec_path)
            .arg("--dir")
            .arg(lab.path()));
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn lab(&self, args: &[&str]) -> Output {
        let mut c = Command::new(bin("cubenet-lab"));
        c.arg(args[0]).arg(self.path()).args(&args[1..]);
        run(&mut c)
    }

    pub fn lab_ok(&self, args: &[&str]) -> String {
        let mut c = Command::new(bin("cubenet-lab"));
        c.arg(args[0]).arg(self.path()).args(&args[1..]);
        ok(&mut c)
    }

    /// Runs a command in a node's namespace.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        let mut c = Command::new(bin("cubenet-lab"));
        c.arg("exec").arg(self.path()).arg(node).arg("--").args(cmd);
        run(&mut c)
    }

    pub fn exec_ok(&self, node: &str, cmd: &[&str]) -> String {
        let out = self.exec(node, cmd);
        assert!(
            out.status.success(),
            "{node}: {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Spawns a command in a node's namespace (killed with the Lab).
    pub fn spawn(&self, node: &str, cmd: &[&str]) -> Child {
        Command::new(bin("cubenet-lab"))
            .arg("exec")
            .arg(self.path())
            .arg(node)
            .arg("--")
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    pub fn addrs(&self, node: &str) -> Vec<String> {
        self.lab_ok(&["addr", node])
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.lab_ok(&["status", "--json"])).expect("lab status json")
    }

    pub fn node(&self, name: &str) -> Value {
        self.status()["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `overlayd status --json` of a node.
    pub fn overlayd(&self, node: &str) -> Value {
        let sock = self.node(node)["overlayd_socket"]
            .as_str()
            .expect("socket")
            .to_string();
        let out = ok(Command::new(bin("overlayd")).args(["status", "--json", "--socket", &sock]));
        serde_json::from_str(&out).expect("overlayd status json")
    }

    pub fn peer(&self, node: &str, peer: &str) -> Value {
        self.overlayd(node)["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == peer).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn ping(&self, from: &str, to: &str, count: u32) -> Output {
        let c = count.to_string();
        self.exec(from, &["ping", "-c", &c, "-i", "0.1", "-W", "1", to])
    }

    /// Waits (bounded) until `cond` holds on fresh status; the condition is
    /// the event, the bound only stops a hung test.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Lab) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !cond(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.path().join("nodes")) {
            for e in rd.flatten() {
                for daemon in ["overlayd.log", "routed.log"] {
                    let log = e.path().join(daemon);
                    if let Ok(t) = std::fs::read_to_string(&log) {
                        let tail: Vec<&str> = t.lines().rev().take(30).collect();
                        s.push_str(&format!("--- {}\n", log.display()));
                        for l in tail.into_iter().rev() {
                            s.push_str(l);
                            s.push('\n');
                        }
                    }
                }
            }
        }
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = Command::new(bin("cubenet-lab"))
            .arg("down")
            .arg(self.path())
            .output();
    }
}

/// A `cubenet-tcpcheck serve` running in a node.
pub struct TcpServer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl TcpServer {
    /// Starts the server and returns once it listens.
    pub fn start(lab: &Lab, node: &str, addr: &str) -> TcpServer {
        let mut child = lab.spawn(
            node,
            &[bin("cubenet-tcpcheck").to_str().unwrap(), "serve", addr],
        );
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "listening", "tcpcheck server did not start");
        TcpServer { child, out }
    }

    /// `<bytes> <sha256>` of what it received.
    pub fn result(mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "tcpcheck server failed");
        line.trim().to_string()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `bytes` from `node` to `addr`; returns `<bytes> <sha256>`.
pub fn tcp_send(lab: &Lab, node: &str, addr: &str, bytes: u64) -> String {
    lab.exec_ok(
        node,
        &[
            bin("cubenet-tcpcheck").to_str().unwrap(),
            "send",
            addr,
            &bytes.to_string(),
        ],
    )
    .trim()
    .to_string()
}
