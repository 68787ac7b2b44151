//! Man pages and shell completions of every cubenet program, made from the
//! same clap definitions as their `--help` (each program's `cli` module),
//! so they cannot drift apart. The section-5 pages of the config files are
//! written by hand (`man/` at the top of the workspace) and copied along.
//!
//! Layout under the output directory, as a Debian package installs it:
//! `man/manSECTION/NAME.SECTION` (`/usr/share/man/`),
//! `completions/bash/NAME` (`/usr/share/bash-completion/completions/`),
//! `completions/zsh/_NAME` (`/usr/share/zsh/vendor-completions/`),
//! `completions/fish/NAME.fish` (`/usr/share/fish/vendor_completions.d/`).

use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// A program documented here: its command line and man section.
pub struct Program {
    pub command: clap::Command,
    /// 8 for daemons (system administration), 1 for user commands.
    pub section: &'static str,
    /// What its page adds after the generated sections (roff).
    pub extra: &'static str,
}

const EXIT_CODES: &str =
    ".SH \"EXIT STATUS\"\n0 ok; 1 runtime failure; 2 bad usage or configuration.\n";

/// Every cubenet program with a man page.
pub fn programs() -> Vec<Program> {
    vec![
        Program {
            command: overlayd::cli::command(),
            section: "8",
            extra: concat!(
                ".SH SIGNALS\n",
                ".TP\n.B SIGHUP\nRead the certificates, the revocation list and the firewall rules again.\n",
                ".TP\n.B SIGTERM\nTell the peers, drain, stop.\n",
                ".SH ENVIRONMENT\n",
                ".TP\n.B OVERLAYD_LOG\nThe log filter, e.g. debug (default info).\n",
                ".TP\n.B NOTIFY_SOCKET\n.TQ\n.B WATCHDOG_USEC\nSet by systemd for a Type=notify service: overlayd reports READY=1, RELOADING=1, STOPPING=1 and feeds the watchdog.\n",
                ".SH FILES\n.I /etc/cubenet/overlayd.toml\n",
                ".SH \"SEE ALSO\"\n.BR overlayd.toml (5),\n.BR routed (8),\n.BR overlay\\-cert (1)\n",
            ),
        },
        Program {
            command: routed::cli::command(),
            section: "8",
            extra: concat!(
                ".SH SIGNALS\n",
                ".TP\n.B SIGTERM\nSend every neighbour a Cease, remove the kernel routes, stop.\n",
                ".TP\n.B SIGHUP\nRead routed.toml and the certificates again and apply the difference (see routed.toml(5)); a refused reload keeps the running configuration and logs why.\n",
                ".SH ENVIRONMENT\n",
                ".TP\n.B ROUTED_LOG\nThe log filter, e.g. debug (default info).\n",
                ".TP\n.B NOTIFY_SOCKET\n.TQ\n.B WATCHDOG_USEC\nSet by systemd for a Type=notify service: routed reports READY=1, RELOADING=1, STOPPING=1 and feeds the watchdog.\n",
                ".SH FILES\n.I /etc/cubenet/routed.toml\n",
                ".SH \"SEE ALSO\"\n.BR routed.toml (5),\n.BR overlayd (8)\n",
            ),
        },
        Program {
            command: cubenet_certs::cli::command(),
            section: "1",
            extra: ".SH \"SEE ALSO\"\n.BR overlayd (8),\n.BR overlayd.toml (5)\n",
        },
        Program {
            command: crate::cli::command(),
            section: "1",
            extra: ".SH \"SEE ALSO\"\n.BR overlayd (8),\n.BR routed (8),\n.BR overlay\\-cert (1)\n",
        },
    ]
}

/// The hand-written pages of the config files: (file name, roff).
pub const CONFIG_PAGES: [(&str, &str); 2] = [
    ("overlayd.toml.5", include_str!("../../man/overlayd.toml.5")),
    ("routed.toml.5", include_str!("../../man/routed.toml.5")),
];

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct DocsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<PathBuf, DocsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DocsError {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(&path, bytes).map_err(|source| DocsError {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A program's man page: the generated NAME, SYNOPSIS, DESCRIPTION,
/// OPTIONS and COMMANDS sections, then every subcommand's usage and
/// options, then `extra`.
pub fn man_page(p: &Program) -> Vec<u8> {
    let mut cmd = p.command.clone();
    cmd.build();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(p.section)
        .manual("cubenet")
        .source(format!(
            "cubenet {}",
            cmd.get_version().unwrap_or(env!("CARGO_PKG_VERSION"))
        ));
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        let _ = man.render_options_section(&mut out);
    }
    subcommand_sections(&cmd, cmd.get_name(), &mut out);
    out.extend_from_slice(EXIT_CODES.as_bytes());
    out.extend_from_slice(p.extra.as_bytes());
    let _ = man.render_version_section(&mut out);
    out
}

/// One section per subcommand (nested ones named by their path): what it
/// does, its usage, and its arguments and options.
fn subcommand_sections(cmd: &clap::Command, path: &str, out: &mut Vec<u8>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let name = format!("{path} {}", sub.get_name());
        out.extend_from_slice(
            format!(".SH \"{}\"\n", roff_escape(&name.to_uppercase())).as_bytes(),
        );
        let mut sub = sub.clone().bin_name(&name);
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage:").trim();
        out.extend_from_slice(format!(".B {}\n.br\n", roff_escape(usage)).as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            for para in about.to_string().split("\n\n") {
                out.extend_from_slice(format!(".PP\n{}\n", roff_text(para)).as_bytes());
            }
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg.get_id() == "help" || arg.get_id() == "version" || arg.is_global_set() {
                continue;
            }
            let mut head = match (arg.get_long(), arg.get_short()) {
                (Some(l), _) => format!("\\fB\\-\\-{}\\fR", roff_escape(l)),
                (None, Some(s)) => format!("\\fB\\-{s}\\fR"),
                (None, None) => String::new(),
            };
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            if takes_value {
                let v = arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
                if !head.is_empty() {
                    head.push(' ');
                }
                head.push_str(&format!("\\fI{}\\fR", roff_escape(&v)));
            }
            let mut text = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| roff_text(&h.to_string()))
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && takes_value {
                text.push_str(&format!(
                    " [default: {}]",
                    roff_escape(&defaults.join(", "))
                ));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() && takes_value {
                text.push_str(&format!(
                    " [possible values: {}]",
                    roff_escape(&values.join(", "))
                ));
            }
            out.extend_from_slice(format!(".TP\n{head}\n{}\n", text.trim()).as_bytes());
        }
        subcommand_sections(&sub, &name, out);
    }
}

/// Text for roff: dashes and backslashes escaped, and no line starting
/// with a control character.
fn roff_text(s: &str) -> String {
    s.lines()
        .map(|l| {
            let l = roff_escape(l.trim());
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// Writes every man page and every completion under `out`; returns the
/// files written.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut written = Vec::new();
    for p in programs() {
        let name = p.command.get_name().to_string();
        written.push(write(
            out.join(format!("man/man{}/{name}.{}", p.section, p.section)),
            &man_page(&p),
        )?);
        for (shell, file) in [
            (Shell::Bash, format!("bash/{name}")),
            (Shell::Zsh, format!("zsh/_{name}")),
            (Shell::Fish, format!("fish/{name}.fish")),
        ] {
            let mut cmd = p.command.clone();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut buf);
            written.push(write(out.join("completions").join(file), &buf)?);
        }
    }
    for (file, text) in CONFIG_PAGES {
        written.push(write(out.join("man/man5").join(file), text.as_bytes())?);
    }
    Ok(written)
}
