//! What a Debian package installs besides the binaries: the systemd units
//! (checked by `systemd-analyze verify`), and what overlayd tells systemd
//! through them.

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
/// command exists). Returns what it said; it warns about unknown or
/// malformed directives on stderr but still exits 0, so the caller looks
/// at the words.
fn verify(dir: &Path, units: &[(&str, &str)]) -> (bool, String) {
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
        .arg("--man=no")
        .args(&paths)
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
    assert!(!routed.contains("\nExecReload="), "routed does not reload");

    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, said) = verify(
        dir.path(),
        &[("overlayd.service", &overlayd), ("routed.service", &routed)],
    );
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    // The same check notices a directive that is wrong.
    let bad = overlayd.replace("Type=notify\n", "Type=notfy\nWatchdogSecs=10s\n");
    let (_, said) = verify(dir.path(), &[("overlayd.service", &bad)]);
    assert!(
        said.contains("notfy") && said.contains("WatchdogSecs"),
        "a bad unit passed systemd-analyze verify:\n{said}"
    );
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
    lab.lab_ok(&["kill", "fra-h1", "--daemon", "overlayd"]);

    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let overlayd = bin("overlayd");
    let mut child = lab.spawn(
        "fra-h1",
        &[
            "env",
            &format!("NOTIFY_SOCKET={}", path_str(&notify)),
            "WATCHDOG_USEC=400000",
            &path_str(&overlayd),
            "run",
            "--config",
            &path_str(&h1.overlayd_config),
        ],
    );
    // `cubenet-lab exec` execs `ip netns exec`, which execs `env`, which
    // execs overlayd: the child is overlayd.
    let pid = i32::try_from(child.id()).expect("pid");
    let signal = |sig| {
        // SAFETY: kill(2) on the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {sig}");
    };

    let mut pings = 0;
    assert_eq!(next_notice(&sock, &mut pings), "READY=1");
    // Ready means serving: the control socket answers at once.
    let st = common::ok(Command::new(&overlayd).args([
        "status",
        "--json",
        "--socket",
        &path_str(&h1.overlayd_socket),
    ]));
    assert!(st.contains("\"fra-h1\""), "{st}");

    signal(libc::SIGHUP);
    let r = next_notice(&sock, &mut pings);
    let usec = r
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("expected RELOADING=1, got {r:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{r:?}");
    assert_eq!(next_notice(&sock, &mut pings), "READY=1");

    // The watchdog wants a ping every 200 ms: wait for two more.
    let seen = pings;
    let mut buf = [0u8; 64];
    while pings < seen + 2 {
        let n = sock.recv(&mut buf).expect("a watchdog ping within 10 s");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        pings += 1;
    }

    signal(libc::SIGTERM);
    assert_eq!(next_notice(&sock, &mut pings), "STOPPING=1");
    let status = child.wait().expect("wait");
    assert!(status.success(), "overlayd exited {status}");
}
