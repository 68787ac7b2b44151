//! The test bed: network namespaces with a unique per-run prefix, veth links,
//! bridged segments, commands run inside, and removal of everything on drop
//! (also when a test panics).
//!
//! ```no_run
//! let bed = cubenet_testbed::TestBed::new().unwrap();
//! let a = bed.namespace("a").unwrap();
//! let b = bed.namespace("b").unwrap();
//! bed.veth(&a, "eth0", &b, "eth0").unwrap();
//! bed.addr(&a, "eth0", "192.0.2.1/24").unwrap();
//! ```

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Whether namespace tests can run here. Without root they are skipped,
/// unless `CUBENET_REQUIRE_NETNS` is set (CI sets it), where that is a
/// failure rather than a silent skip.
pub fn netns_or_skip(test: &str) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var_os("CUBENET_REQUIRE_NETNS").is_some() {
        panic!("{test}: needs root for network namespaces, and CUBENET_REQUIRE_NETNS is set");
    }
    eprintln!("{test}: skipped (needs root for network namespaces)");
    false
}

/// Runs a command; an error names the command, its status and stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

const MARK: &str = "cnt";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces that lives as long as the value.
pub struct TestBed {
    prefix: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
}

/// A namespace of a [`TestBed`].
#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
}

impl TestBed {
    /// A test bed whose namespaces are named `cnt<pid>x<n>-<name>`; stale
    /// ones of dead test processes are removed first.
    pub fn new() -> Result<TestBed> {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(TestBed {
            prefix: format!("{MARK}{}x{n}", std::process::id()),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates a namespace with `lo` up.
    pub fn namespace(&self, name: &str) -> Result<Netns> {
        let full = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &full])?;
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(full.clone());
        let ns = Netns { name: full };
        self.exec_ok(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair from `a`/`a_if` to `b`/`b_if`, both up.
    pub fn veth(&self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
        ip(&[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ])?;
        self.exec_ok(a, &["ip", "link", "set", a_if, "up"])?;
        self.exec_ok(b, &["ip", "link", "set", b_if, "up"])?;
        Ok(())
    }

    /// A bridged segment (a LAN): a namespace holding bridge `br0`, with a
    /// veth from each member (named `ifname` inside the member).
    pub fn segment(&self, name: &str, members: &[&Netns], ifname: &str) -> Result<Netns> {
        let sw = self.namespace(name)?;
        self.exec_ok(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        self.exec_ok(&sw, &["ip", "link", "set", "br0", "up"])?;
        for (i, m) in members.iter().enumerate() {
            let port = format!("p{i}");
            self.veth(&sw, &port, m, ifname)?;
            self.exec_ok(&sw, &["ip", "link", "set", &port, "master", "br0"])?;
        }
        Ok(sw)
    }

    /// Adds an address (`nodad` for IPv6, so it is usable at once).
    pub fn addr(&self, ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.exec_ok(ns, &["ip", "addr", "add", cidr, "dev", ifname, "nodad"])
        } else {
            self.exec_ok(ns, &["ip", "addr", "add", cidr, "dev", ifname])
        }
        .map(|_| ())
    }

    pub fn route(&self, ns: &Netns, prefix: &str, via: &str) -> Result<()> {
        self.exec_ok(ns, &["ip", "route", "add", prefix, "via", via])
            .map(|_| ())
    }

    /// Runs a command inside `ns` and returns its output whatever its status.
    pub fn exec(&self, ns: &Netns, cmd: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(cmd)
            .output()
            .with_context(|| format!("running {cmd:?} in {}", ns.name))
    }

    /// Runs a command inside `ns`; fails unless it succeeds.
    pub fn exec_ok(&self, ns: &Netns, cmd: &[&str]) -> Result<String> {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(cmd))
        .with_context(|| format!("in namespace {}", ns.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running command inside `ns`; killed when the bed drops.
    pub fn spawn(&self, ns: &Netns, cmd: &[&str]) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(cmd)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?} in {}", ns.name))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Silently drops everything arriving on `ifname` in `ns` (nftables
    /// netdev ingress), the way a broken path behaves: no carrier change,
    /// no error, nothing.
    pub fn drop_ingress(&self, ns: &Netns, ifname: &str, on: bool) -> Result<()> {
        let table = format!("cubenet_drop_{ifname}");
        if on {
            let rules = format!(
                "table netdev {table} {{\n chain ingress {{\n  type filter hook ingress device \"{ifname}\" priority 0; policy drop;\n }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("{}-{table}.nft", self.prefix));
            std::fs::write(&path, rules)?;
            let r = self.exec_ok(ns, &["nft", "-f", path.to_str().unwrap_or_default()]);
            let _ = std::fs::remove_file(&path);
            r.map(|_| ())
        } else {
            self.exec_ok(ns, &["nft", "delete", "table", "netdev", &table])
                .map(|_| ())
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for c in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace removes its veths (and their peers).
        for ns in self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .rev()
        {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Removes namespaces of this test bed whose creating process is gone.
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(MARK) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}
