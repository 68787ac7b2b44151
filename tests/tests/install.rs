//! What a Debian package installs besides the binaries: man pages and
//! shell completions (made by `cubenet-docs` from the programs' own command
//! lines), the systemd units (checked by `systemd-analyze verify`), and what
//! overlayd tells systemd through them.

mod common;

use common::{bin, netns_or_skip, path_str, Lab};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `systemd-analyze verify` on copies of the units in `dir`, whose
/// `/usr/bin/` programs are this build's (verify checks that every
/// command exists) and whose `man:` documentation is looked up in the
/// pages `cubenet-docs` made under `docs` (verify runs `man` on each).
/// Returns what it said; it warns about unknown or malformed directives on
/// stderr but still exits 0, so the caller looks at the words.
fn verify(dir: &Path, docs: &Path, units: &[(&str, &str)]) -> (bool, String) {
    let mut paths = Vec::new();
    for (name, text) in units {
        let mut text = text.to_string();
        for program in ["overlayd", "routed"] {
            text = text.replace(
                &format!("/usr/bin/{program} "),
                &format!("{} ", bin(program).display()),
            );
        }
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write unit");
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("MANPATH", docs.join("man"))
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e} (install the systemd package)"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_systemd_units_verify() {
    let units_dir = repo().join("examples/systemd");
    let read = |n: &str| std::fs::read_to_string(units_dir.join(n)).expect("unit");
    let overlayd = read("overlayd.service");
    let routed = read("routed.service");
    for (unit, text) in [("overlayd", &overlayd), ("routed", &routed)] {
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=",
            &format!("ExecStart=/usr/bin/{unit} run "),
            &format!("Documentation=man:{unit}(8) man:{unit}.toml(5)"),
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{unit}.service lacks {line:?}"
            );
        }
    }
    assert!(overlayd.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    assert!(routed.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));

    let dir = tempfile::tempdir().expect("tempdir");
    let docs = dir.path().join("docs");
    common::ok(Command::new(bin("cubenet-docs")).arg(&docs));
    let (ok, said) = verify(
        dir.path(),
        &docs,
        &[("overlayd.service", &overlayd), ("routed.service", &routed)],
    );
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    // The same check notices a directive that is wrong.
    let bad = overlayd.replace("Type=notify\n", "Type=notfy\nWatchdogSecs=10s\n");
    let (_, said) = verify(dir.path(), &docs, &[("overlayd.service", &bad)]);
    assert!(
        said.contains("notfy") && said.contains("WatchdogSecs"),
        "a bad unit passed systemd-analyze verify:\n{said}"
    );
    // ... and a man page that is not there.
    let bad = overlayd.replace("man:overlayd(8)", "man:overlayd(1)");
    let (_, said) = verify(dir.path(), &docs, &[("overlayd.service", &bad)]);
    assert!(
        said.contains("overlayd(1)"),
        "a missing man page passed systemd-analyze verify:\n{said}"
    );
}

/// The subcommands `PROGRAM --help` lists.
fn help_commands(program: &str) -> Vec<String> {
    let help = common::ok(Command::new(bin(program)).arg("--help"));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Renders a man page with warnings on; returns what groff complained of.
fn groff_warnings(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .unwrap_or_else(|e| panic!("groff: {e} (install groff-base)"));
    assert!(out.status.success(), "groff {}", page.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn man_pages_and_completions_are_made_from_the_command_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = common::ok(Command::new(bin("cubenet-docs")).arg(dir.path()));
    let mut want = vec![
        "man/man8/overlayd.8".to_string(),
        "man/man8/routed.8".into(),
        "man/man1/overlay-cert.1".into(),
        "man/man1/cubenet-lab.1".into(),
        "man/man5/overlayd.toml.5".into(),
        "man/man5/routed.toml.5".into(),
    ];
    for p in ["overlayd", "routed", "overlay-cert", "cubenet-lab"] {
        want.push(format!("completions/bash/{p}"));
        want.push(format!("completions/zsh/_{p}"));
        want.push(format!("completions/fish/{p}.fish"));
    }
    for f in &want {
        let path = dir.path().join(f);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .len();
        assert!(len > 0, "{f} is empty");
        assert!(listed.contains(&path_str(&path)), "{f} not listed");
    }
    assert_eq!(listed.lines().count(), want.len(), "{listed}");

    for page in want.iter().filter(|f| f.starts_with("man/")) {
        let path = dir.path().join(page);
        let w = groff_warnings(&path);
        assert!(w.trim().is_empty(), "{page}: groff warns:\n{w}");
        // man(1) finds and formats it.
        let out = Command::new("man")
            .args(["--warnings", "-l", "-Tutf8"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("man: {e} (install man-db)"));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every subcommand of --help has its section in the man page, and is
    // offered by the bash completion.
    for (program, section) in [
        ("overlayd", 8),
        ("routed", 8),
        ("overlay-cert", 1),
        ("cubenet-lab", 1),
    ] {
        let page = std::fs::read_to_string(
            dir.path()
                .join(format!("man/man{section}/{program}.{section}")),
        )
        .expect("page");
        let bash = std::fs::read_to_string(dir.path().join(format!("completions/bash/{program}")))
            .expect("bash completion");
        let commands = help_commands(program);
        assert!(!commands.is_empty(), "{program} --help lists no commands");
        for c in commands {
            let head = format!(".SH \"{} {}\"", program, c)
                .to_uppercase()
                .replace('-', "\\-");
            assert!(page.contains(&head), "{program}({section}) lacks {head}");
            assert!(bash.contains(&c), "bash completion of {program} lacks {c}");
        }
        assert!(page.contains("EXIT STATUS"), "{program}: no EXIT STATUS");
        // Each shell parses its completion without running it.
        for (shell, flag, file) in [
            ("bash", "-n", format!("completions/bash/{program}")),
            ("zsh", "-n", format!("completions/zsh/_{program}")),
            (
                "fish",
                "--no-execute",
                format!("completions/fish/{program}.fish"),
            ),
        ] {
            let syntax = Command::new(shell)
                .arg(flag)
                .arg(dir.path().join(&file))
                .output()
                .unwrap_or_else(|e| panic!("{shell}: {e} (install {shell})"));
            assert!(
                syntax.status.success() && syntax.stderr.is_empty(),
                "{file}: {}",
                String::from_utf8_lossy(&syntax.stderr)
            );
        }
    }
}

/// The keys of the config structs in a Rust source file (fields of every
/// `deny_unknown_fields` struct, by their serde name).
fn config_keys(source: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut in_struct = false;
    let mut deny = false;
    let mut rename = None;
    for line in source.lines() {
        if line.starts_with("#[serde(deny_unknown_fields)]") {
            deny = true;
        } else if line.starts_with("pub struct ") && line.ends_with('{') {
            in_struct = deny;
            deny = false;
        } else if line == "}" {
            in_struct = false;
        } else if in_struct {
            let t = line.trim();
            if let Some(r) = t.split("rename = \"").nth(1) {
                rename = r.split('"').next().map(str::to_string);
            } else if let Some(field) = t.strip_prefix("pub ") {
                if let Some((name, _)) = field.split_once(':') {
                    keys.push(rename.take().unwrap_or_else(|| name.to_string()));
                }
            }
        }
    }
    keys
}

/// The section-5 pages document every key of the config structs: a key
/// added to a struct without a line in its page fails here.
#[test]
fn the_config_pages_name_every_key() {
    let src = |p: &str| std::fs::read_to_string(repo().join(p)).expect("source");
    for (page, sources) in [
        (
            "man/overlayd.toml.5",
            vec!["overlayd/src/config.rs", "overlayd/src/firewall.rs"],
        ),
        ("man/routed.toml.5", vec!["routed/src/config.rs"]),
    ] {
        let text = src(page);
        let mut n = 0;
        for s in sources {
            for key in config_keys(&src(s)) {
                n += 1;
                let documented = [
                    format!("\\fB{key}\\fR"),
                    format!("[{key}]"),
                    format!("[[{key}]]"),
                    // a nested table, [[firewall.inbound]]
                    format!(".{key}]]"),
                ]
                .iter()
                .any(|form| text.contains(form.as_str()));
                assert!(documented, "{page} does not document `{key}` ({s})");
            }
        }
        assert!(n > 20, "{page}: only {n} keys found in the sources");
    }
}

/// The next notice on `sock` other than a watchdog ping (those are counted).
fn next_notice(sock: &UnixDatagram, pings: &mut usize) -> String {
    let mut buf = [0u8; 512];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notice within 10 s: {e}"));
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m == "WATCHDOG=1" {
            *pings += 1;
        } else {
            return m;
        }
    }
}

/// A daemon started in a lab node's namespace as systemd starts a
/// `Type=notify` service with a 400 ms watchdog, and the socket its notices
/// arrive on.
struct Notified {
    child: std::process::Child,
    sock: UnixDatagram,
    pings: usize,
    _dir: tempfile::TempDir,
}

impl Notified {
    fn start(lab: &Lab, node: &str, daemon: &str, config: &Path) -> Notified {
        lab.lab_ok(&["kill", node, "--daemon", daemon]);
        let dir = tempfile::tempdir().expect("tempdir");
        let notify = dir.path().join("notify");
        let sock = UnixDatagram::bind(&notify).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let child = lab.spawn(
            node,
            &[
                "env",
                &format!("NOTIFY_SOCKET={}", path_str(&notify)),
                "WATCHDOG_USEC=400000",
                &path_str(&bin(daemon)),
                "run",
                "--config",
                &path_str(config),
            ],
        );
        Notified {
            child,
            sock,
            pings: 0,
            _dir: dir,
        }
    }

    /// `cubenet-lab exec` execs `ip netns exec`, which execs `env`, which
    /// execs the daemon: the child is the daemon.
    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {sig}");
    }

    fn next(&mut self) -> String {
        next_notice(&self.sock, &mut self.pings)
    }

    /// The watchdog wants a ping every 200 ms: waits for two more.
    fn two_pings(&mut self) {
        let seen = self.pings;
        let mut buf = [0u8; 64];
        while self.pings < seen + 2 {
            let n = self
                .sock
                .recv(&mut buf)
                .expect("a watchdog ping within 10 s");
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            self.pings += 1;
        }
    }

    /// SIGTERM: STOPPING=1, then a clean exit.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        assert_eq!(self.next(), "STOPPING=1");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exited {status}");
    }
}

/// overlayd as systemd runs it (`Type=notify`, a watchdog): READY=1 once
/// its control socket answers, watchdog pings, RELOADING=1 and READY=1
/// around a SIGHUP reload, STOPPING=1 at SIGTERM.
#[test]
fn overlayd_tells_systemd_when_it_serves_reloads_and_stops() {
    if !netns_or_skip("overlayd_tells_systemd_when_it_serves_reloads_and_stops") {
        return;
    }
    let lab = Lab::up("[[site]]\nname = \"fra\"\nhosts = 1\n");
    let h1 = lab.node("fra-h1");
    let mut d = Notified::start(&lab, "fra-h1", "overlayd", &h1.overlayd_config);

    assert_eq!(d.next(), "READY=1");
    // Ready means serving: the control socket answers at once.
    let st = common::ok(Command::new(bin("overlayd")).args([
        "status",
        "--json",
        "--socket",
        &path_str(&h1.overlayd_socket),
    ]));
    assert!(st.contains("\"fra-h1\""), "{st}");

    d.signal(libc::SIGHUP);
    let r = d.next();
    let usec = r
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("expected RELOADING=1, got {r:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{r:?}");
    assert_eq!(d.next(), "READY=1");
    d.two_pings();
    d.stop();
}

/// routed likewise: READY=1 once its control socket answers, watchdog
/// pings, RELOADING=1 and READY=1 around a SIGHUP reload, STOPPING=1 at
/// SIGTERM.
#[test]
fn routed_tells_systemd_when_it_serves_reloads_and_stops() {
    if !netns_or_skip("routed_tells_systemd_when_it_serves_reloads_and_stops") {
        return;
    }
    let lab = Lab::up("routed = true\n[[site]]\nname = \"fra\"\n[[site]]\nname = \"ams\"\n");
    let gw = lab.node("fra-gw1");
    let config = gw.routed_config.clone().expect("routed config");
    let socket = gw.routed_socket.clone().expect("routed socket");
    let mut d = Notified::start(&lab, "fra-gw1", "routed", &config);

    assert_eq!(d.next(), "READY=1");
    let out = common::run(Command::new(bin("routed")).args([
        "status",
        "--json",
        "--socket",
        &path_str(&socket),
    ]));
    // Exit 1 while a neighbour is still connecting; the socket answered.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"ams-gw1\""),
        "routed status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.signal(libc::SIGHUP);
    let r = d.next();
    let usec = r
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("expected RELOADING=1, got {r:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{r:?}");
    assert_eq!(d.next(), "READY=1");
    d.two_pings();
    d.stop();
}
