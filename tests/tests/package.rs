//! The Debian package: `packaging/build-deb.sh` makes it from this build,
//! lintian finds no error in it, and it installs into a fresh Debian root
//! made by debootstrap, with the files, owners and modes the README's
//! "Set-up by package" section lists, a `cubenet` system user, its units
//! enabled and the programs running there; a purge takes it all away.
//!
//! Needs root (debootstrap, chroot) and the Debian mirror; the base root is
//! kept under the target directory (`package-test/`) for the next run.

mod common;

use common::{bin, bin_dir, netns_or_skip, ok};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the package installs: path, owner:group, mode (octal), as the
/// README documents it.
const FILES: &[(&str, &str, &str)] = &[
    ("/usr/bin/overlayd", "root:root", "755"),
    ("/usr/bin/routed", "root:root", "755"),
    ("/usr/bin/overlay-cert", "root:root", "755"),
    ("/usr/bin/cubenet-lab", "root:root", "755"),
    (
        "/usr/lib/systemd/system/overlayd.service",
        "root:root",
        "644",
    ),
    ("/usr/lib/systemd/system/routed.service", "root:root", "644"),
    ("/usr/share/man/man8/overlayd.8.gz", "root:root", "644"),
    ("/usr/share/man/man8/routed.8.gz", "root:root", "644"),
    ("/usr/share/man/man1/overlay-cert.1.gz", "root:root", "644"),
    ("/usr/share/man/man1/cubenet-lab.1.gz", "root:root", "644"),
    ("/usr/share/man/man5/overlayd.toml.5.gz", "root:root", "644"),
    ("/usr/share/man/man5/routed.toml.5.gz", "root:root", "644"),
    (
        "/usr/share/bash-completion/completions/overlayd",
        "root:root",
        "644",
    ),
    (
        "/usr/share/zsh/vendor-completions/_routed",
        "root:root",
        "644",
    ),
    (
        "/usr/share/fish/vendor_completions.d/overlay-cert.fish",
        "root:root",
        "644",
    ),
    ("/etc/cubenet", "root:cubenet", "750"),
    (
        "/etc/cubenet/examples/host/overlayd.toml",
        "root:root",
        "644",
    ),
    (
        "/etc/cubenet/examples/gateway/overlayd.toml",
        "root:root",
        "644",
    ),
    (
        "/etc/cubenet/examples/gateway/routed.toml",
        "root:root",
        "644",
    ),
    ("/usr/share/doc/cubenet/copyright", "root:root", "644"),
    (
        "/usr/share/doc/cubenet/changelog.Debian.gz",
        "root:root",
        "644",
    ),
    ("/usr/share/doc/cubenet/DEPLOY.md", "root:root", "644"),
    (
        "/usr/share/doc/cubenet/examples/site-router/bird.conf",
        "root:root",
        "644",
    ),
    (
        "/usr/share/doc/cubenet/examples/site-router/frr.conf",
        "root:root",
        "644",
    ),
    (
        "/usr/share/doc/cubenet/examples/grafana/cubenet.json",
        "root:root",
        "644",
    ),
];

const CONFFILES: &[&str] = &[
    "/etc/cubenet/examples/host/overlayd.toml",
    "/etc/cubenet/examples/gateway/overlayd.toml",
    "/etc/cubenet/examples/gateway/routed.toml",
];

fn chroot(root: &Path, args: &[&str]) -> String {
    ok(Command::new("chroot")
        .arg(root)
        .args(args)
        .env("LC_ALL", "C"))
}

/// The Debian release this machine runs (the root is made of the same).
fn codename() -> String {
    let os = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .expect("VERSION_CODENAME in /etc/os-release")
}

/// A minimal Debian root made by debootstrap once and kept (marked
/// complete only when debootstrap succeeded).
fn base_root(dir: &Path) -> PathBuf {
    let suite = codename();
    let base = dir.join(format!("base-{suite}"));
    let done = base.join(".cubenet-complete");
    if done.exists() {
        return base;
    }
    let _ = std::fs::remove_dir_all(&base);
    let mirror = std::env::var("CUBENET_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=adduser", &suite])
        .arg(&base)
        .arg(&mirror)
        .output()
        .unwrap_or_else(|e| panic!("debootstrap: {e} (install the debootstrap package)"));
    assert!(
        out.status.success(),
        "debootstrap {suite} {mirror} failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::write(&done, "").unwrap();
    base
}

#[test]
fn the_debian_package_passes_lintian_and_installs_into_a_fresh_debian_root() {
    if !netns_or_skip("the_debian_package_installs") {
        return;
    }
    let release = bin_dir();
    let target = release.parent().expect("target dir").to_path_buf();

    // Built from this build's programs.
    let built = ok(Command::new(repo().join("packaging/build-deb.sh"))
        .env("NO_BUILD", "1")
        .env("CARGO_TARGET_DIR", &target));
    let deb = PathBuf::from(built.lines().last().expect("the package's path").trim());
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(
        name,
        format!("cubenet_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")),
        "{built}"
    );

    // lintian: no error (warnings are printed for people to read).
    let out = Command::new("lintian")
        .arg(&deb)
        .output()
        .unwrap_or_else(|e| panic!("lintian: {e} (install the lintian package)"));
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "lintian found errors:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A fresh root: a copy of the debootstrapped base.
    let dir = target.join("package-test");
    std::fs::create_dir_all(&dir).unwrap();
    let base = base_root(&dir);
    let work = tempfile::tempdir_in(&dir).unwrap();
    let root = work.path().join("root");
    ok(Command::new("cp").arg("-a").arg(&base).arg(&root));
    assert!(
        !root.join("usr/bin/overlayd").exists() && !root.join("etc/cubenet").exists(),
        "the base root is not clean"
    );
    std::fs::copy(&deb, root.join("tmp").join(&name)).unwrap();
    chroot(&root, &["dpkg", "-i", &format!("/tmp/{name}")]);
    let status = chroot(&root, &["dpkg-query", "-W", "-f=${Status}", "cubenet"]);
    assert_eq!(status, "install ok installed");

    for (path, owner, mode) in FILES {
        let got = chroot(&root, &["stat", "-c", "%U:%G %a %F", path]);
        let want_kind = if path.ends_with("/cubenet") {
            "directory"
        } else {
            "regular file"
        };
        assert_eq!(
            got.trim(),
            format!("{owner} {mode} {want_kind}"),
            "{path} in the installed root"
        );
    }
    let conffiles = chroot(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "cubenet"]);
    for c in CONFFILES {
        assert!(
            conffiles
                .lines()
                .any(|l| l.split_whitespace().next() == Some(c)),
            "{c} is not a conffile:\n{conffiles}"
        );
    }

    // The system user the units name, with no login and no home.
    let user = chroot(&root, &["getent", "passwd", "cubenet"]);
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "cubenet is not a system user: {user}");
    assert_eq!(fields[5], "/nonexistent", "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let groups = chroot(&root, &["id", "-gn", "cubenet"]);
    assert_eq!(groups.trim(), "cubenet");
    for unit in ["overlayd.service", "routed.service"] {
        let link = root
            .join("etc/systemd/system/multi-user.target.wants")
            .join(unit);
        assert!(
            link.symlink_metadata().is_ok(),
            "{unit} is not enabled in the installed root"
        );
        let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).unwrap();
        let config = unit.replace(".service", ".toml");
        assert!(
            text.contains(&format!("\nConditionPathExists=/etc/cubenet/{config}\n")),
            "{unit} would run before its configuration exists"
        );
    }

    // The programs run there and are this build.
    for program in ["overlayd", "routed", "overlay-cert", "cubenet-lab"] {
        let there = chroot(&root, &[program, "--version"]);
        let here = ok(Command::new(bin(program)).arg("--version"));
        assert_eq!(there, here, "{program} --version in the installed root");
        assert!(there.contains(env!("CARGO_PKG_VERSION")), "{there}");
    }
    // ... and work: a CA and a host certificate made by the installed tool.
    chroot(
        &root,
        &[
            "overlay-cert",
            "ca",
            "--name",
            "pkg",
            "--network",
            "10.77.0.0/16",
            "--out-dir",
            "/root/ca",
        ],
    );
    let print = chroot(&root, &["overlay-cert", "print", "/root/ca/ca.crt"]);
    assert!(print.contains("pkg"), "{print}");

    // Purge takes the package, its conffiles and the statoverride away.
    chroot(&root, &["dpkg", "--purge", "cubenet"]);
    for gone in [
        "usr/bin/overlayd",
        "usr/lib/systemd/system/overlayd.service",
        "etc/cubenet/examples/host/overlayd.toml",
        "etc/systemd/system/multi-user.target.wants/overlayd.service",
    ] {
        assert!(
            root.join(gone).symlink_metadata().is_err(),
            "/{gone} is left after dpkg --purge"
        );
    }
    // `--list PATH` exits 1 when PATH has no statoverride.
    let listed = common::run(Command::new("chroot").arg(&root).args([
        "dpkg-statoverride",
        "--list",
        "/etc/cubenet",
    ]));
    assert!(
        !listed.status.success(),
        "the statoverride is left after dpkg --purge: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
}
