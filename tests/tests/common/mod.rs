//! Shared helpers for the end-to-end tests: run `cubenet-lab` and the other
//! workspace binaries, read JSON status, and clean a lab up on drop.
#![allow(dead_code)]

pub use cubenet_api::lab::{LabStatus, NodeStatus};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};

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

    /// Rewrites `file` in `node`'s directory with `edit` and restarts the
    /// node's `daemon` (every daemon of it when `None`) to apply it.
    pub fn reconfigure(
        &self,
        node: &str,
        file: &str,
        daemon: Option<&str>,
        edit: impl FnOnce(String) -> String,
    ) {
        let path = self.path().join("nodes").join(node).join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(&path, edit(text)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match daemon {
            Some(d) => self.lab_ok(&["kill", node, "--daemon", d]),
            None => self.lab_ok(&["kill", node]),
        };
        self.lab_ok(&["start", node]);
    }

    /// Rewrites `file` in `node`'s directory with `edit` and sends the
    /// node's `daemon` SIGHUP to reload it in place (no restart). Returns
    /// once the signal is sent: wait for what the reload does.
    pub fn reload(
        &self,
        node: &str,
        file: &str,
        daemon: &str,
        edit: impl FnOnce(String) -> String,
    ) {
        let path = self.path().join("nodes").join(node).join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(&path, edit(text)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.lab_ok(&["kill", node, "--daemon", daemon, "--signal", "HUP"]);
    }

    /// Runs a command in a node's namespace.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        run(&mut self.exec_command(node, cmd))
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

    /// A command that runs `cmd` in a node's namespace.
    pub fn exec_command(&self, node: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new(bin("cubenet-lab"));
        c.arg("exec").arg(self.path()).arg(node).arg("--").args(cmd);
        c
    }

    /// Spawns a command in a node's namespace (killed with the Lab).
    pub fn spawn(&self, node: &str, cmd: &[&str]) -> Child {
        self.exec_command(node, cmd)
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

    pub fn status(&self) -> LabStatus {
        serde_json::from_str(&self.lab_ok(&["status", "--json"])).expect("lab status json")
    }

    pub fn node(&self, name: &str) -> NodeStatus {
        self.status()
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `overlayd status --json` of a node, as JSON (the tests check its
    /// documented shape).
    pub fn overlayd(&self, node: &str) -> Value {
        let sock = path_str(&self.node(node).overlayd_socket);
        let out = ok(Command::new(bin("overlayd")).args(["status", "--json", "--socket", &sock]));
        serde_json::from_str(&out).expect("overlayd status json")
    }

    /// Runs `f` on a thread that entered `node`'s namespace (Linux keeps
    /// the namespace per thread), as root.
    fn in_namespace<T: Send + 'static>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        use std::os::fd::AsRawFd;
        let ns = format!("/run/netns/{}", self.node(node).namespace);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("namespace");
            // SAFETY: a plain syscall on this thread only.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// Runs `f` on a thread that entered `node`'s namespace and dropped
    /// its credentials to the unprivileged user `nobody` (Linux keeps both
    /// per thread): what any local user of that node can do.
    fn as_nobody<T: Send + 'static>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        self.in_namespace(node, move || {
            // SAFETY: plain syscalls on this thread only.
            unsafe {
                let nobody: libc::c_long = 65534;
                assert_eq!(
                    libc::syscall(libc::SYS_setresgid, nobody, nobody, nobody),
                    0
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresuid, nobody, nobody, nobody),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_geteuid), nobody, "not nobody");
            }
            f()
        })
    }

    /// Sends one IPv4 UDP datagram from `node`'s namespace as root through
    /// a raw socket, with any source address and TTL: what a machine on a
    /// LAN can put on the wire.
    #[allow(dead_code)]
    pub fn send_spoofed_udp(
        &self,
        node: &str,
        from: std::net::SocketAddrV4,
        to: std::net::SocketAddrV4,
        ttl: u8,
        payload: &[u8],
    ) {
        let len = 28 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
            0x40,
            0,
            ttl,
            17,
            0,
            0,
        ];
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4 allows it)
        p.extend_from_slice(payload);
        self.in_namespace(node, move || {
            // IPPROTO_RAW: the header is ours (IP_HDRINCL).
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
            )
            .expect("raw socket");
            let sent = s
                .send_to(&p, &std::net::SocketAddr::V4(to).into())
                .expect("raw send");
            assert_eq!(sent, p.len());
        })
    }

    /// Sends one UDP datagram from a node's namespace as `nobody`, with
    /// TTL 255 (what any local user may set).
    pub fn send_udp_as_nobody(&self, node: &str, to: std::net::SocketAddr, payload: &[u8]) {
        let payload = payload.to_vec();
        self.as_nobody(node, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_ttl(255).expect("ttl");
            s.send_to(&payload, to).expect("send");
        })
    }

    /// A TCP connection to `to` (IPv4) from `node` as `nobody`, sent with
    /// TTL 255, given `wait` to complete: what a local user of that node
    /// can reach.
    #[allow(dead_code)]
    pub fn tcp_connect_as_nobody(
        &self,
        node: &str,
        to: std::net::SocketAddr,
        wait: std::time::Duration,
    ) -> std::io::Result<()> {
        self.as_nobody(node, move || {
            // As an attacker would: TTL 255, which any user may set, so
            // GTSM alone does not keep it out.
            let s = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_ttl_v4(255)?;
            s.connect_timeout(&to.into(), wait)
        })
    }

    /// `routed WHAT --json` of a gateway (`status`, `routes`); Null when
    /// routed does not answer.
    pub fn routed(&self, node: &str, what: &str) -> Value {
        let sock = self
            .node(node)
            .routed_socket
            .map(|p| path_str(&p))
            .unwrap_or_else(|| panic!("{node}: no routed socket"));
        let out = run(Command::new(bin("routed")).args([what, "--json", "--socket", &sock]));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Signs a new certificate for a node's key into its cert path, with
    /// the name, role, site, groups, addresses and subnets of its current
    /// one; `extra` adds `overlay-cert sign` options (`--days 10`) or
    /// replaces the groups (`--groups a,b`). Restart the node to use it.
    /// Adds a node's certificate (and so its key) to the lab's revocation
    /// list; the nodes see it when they reload.
    pub fn revoke(&self, node: &str) {
        let st = self.status();
        let n = self.node(node);
        ok(Command::new(bin("overlay-cert")).args([
            "revoke",
            "--ca-dir",
            &path_str(&st.ca_dir),
            "--crl",
            &path_str(&st.crl),
            &path_str(&n.cert),
        ]));
    }

    pub fn resign(&self, node: &str, extra: &[&str]) {
        let n = self.node(node);
        let cert = path_str(&n.cert);
        let printed: Value = serde_json::from_str(&ok(
            Command::new(bin("overlay-cert")).args(["print", "--json", &cert])
        ))
        .expect("overlay-cert print json");
        let field = |k: &str| printed[k].as_str().unwrap_or_default().to_string();
        let list = |k: &str| -> Vec<String> {
            printed[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        let ca_dir = self.path().join("ca");
        let mut args: Vec<String> = vec![
            "sign".into(),
            "--ca-dir".into(),
            ca_dir.to_str().expect("utf-8 path").into(),
            "--name".into(),
            field("name"),
            "--role".into(),
            field("role"),
            "--site".into(),
            field("site"),
            "--key".into(),
            path_str(&n.key),
            "--out".into(),
            cert,
        ];
        if !extra.contains(&"--groups") && !list("groups").is_empty() {
            args.extend(["--groups".into(), list("groups").join(",")]);
        }
        for a in list("addresses") {
            args.extend(["--ip".into(), a]);
        }
        for s in list("subnets") {
            args.extend(["--subnet".into(), s]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        ok(Command::new(bin("overlay-cert")).args(&args));
    }

    /// Lines of any daemon log (overlayd, routed) of any node that report
    /// a panic, each prefixed with the log's path.
    pub fn panics(&self) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(self.path().join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for daemon in ["overlayd.log", "routed.log"] {
                let log = e.path().join(daemon);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                found.extend(
                    text.lines()
                        .filter(|l| l.contains("panicked"))
                        .map(|l| format!("{}: {l}", log.display())),
                );
            }
        }
        found
    }

    pub fn peer(&self, node: &str, peer: &str) -> Value {
        self.overlayd(node)["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == peer).cloned())
            .unwrap_or(Value::Null)
    }

    /// The gateway a host sends through now.
    pub fn active_gateway(&self, host: &str) -> String {
        self.overlayd(host)["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["active"] == true))
            .and_then(|p| p["name"].as_str())
            .unwrap_or_else(|| panic!("{host}: no active gateway"))
            .to_string()
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
                for daemon in ["overlayd.log", "routed.log", "frr.log"] {
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

    /// Its exit status once it has stopped (None while it waits or reads).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
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

/// A paced `cubenet-tcpcheck send --rate R --until-eof` running in a node:
/// it sends until `finish` closes its stdin, so a transfer can run through
/// a series of faults however long they take.
pub struct TcpSender {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl TcpSender {
    /// Starts sending to `addr` at `rate` bytes per second at most.
    pub fn start(lab: &Lab, node: &str, addr: &str, rate: u64) -> TcpSender {
        let tcpcheck = bin("cubenet-tcpcheck");
        let rate = rate.to_string();
        // More than will ever be sent: the transfer ends at `finish`.
        let cmd = [
            tcpcheck.to_str().expect("utf-8 path"),
            "send",
            addr,
            "1000000000000",
            "--rate",
            &rate,
            "--until-eof",
        ];
        let mut child = lab
            .exec_command(node, &cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpcheck send");
        let stdin = child.stdin.take();
        TcpSender { child, stdin }
    }

    /// Its exit status and stderr once it has stopped (None while it sends).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().expect("try_wait")?;
        let err = read_all(self.child.stderr.take());
        Some(format!("{status}: {}", err.trim()))
    }

    /// Ends the transfer and returns `<bytes> <sha256>` of what was sent.
    pub fn finish(mut self) -> String {
        drop(self.stdin.take());
        let out = read_all(self.child.stdout.take());
        let status = self.child.wait().expect("wait");
        let err = read_all(self.child.stderr.take());
        assert!(status.success(), "tcpcheck send failed ({status}): {err}");
        out.trim().to_string()
    }
}

/// All a child's pipe still gives (empty when it is gone or unreadable).
fn read_all(pipe: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut s);
    }
    s
}

impl Drop for TcpSender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path of the lab as the string commands take.
pub fn path_str(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// One raw request line to a daemon's control socket and its reply as
/// JSON, for the tests of the JSON shape itself (10 s to answer).
#[allow(dead_code)]
pub fn control_request(socket: &Path, req: &str) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}
