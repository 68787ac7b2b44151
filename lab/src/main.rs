//! `cubenet-lab`: cubenet on one machine. Builds sites, gateways and hosts
//! in network namespaces from a TOML spec, makes the CA, keys, certificates
//! and configs, starts the real daemons and waits until everything is
//! attached. Shared by the demo, the end-to-end tests and users.
//!
//! Exit codes: 0 ok; 1 failure; 2 bad usage or spec.

mod bird;
mod build;
mod frr;
mod link;
mod routed;
mod spec;
mod state;

use anyhow::{bail, Result};
use clap::Parser;
use cubenet_lab::cli::{Cli, Cmd};
use state::Lab;
use std::process::ExitCode;

/// A closed pipe (`| head`) ends this command quietly, as for any Unix tool,
/// instead of a panic in `println!`.
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any
    // thread exists; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cubenet-lab: {e:#}");
            let usage = e.downcast_ref::<link::Usage>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up { spec, dir } => {
            let spec = match spec::Spec::load(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cubenet-lab: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let (lab, t) = build::up(&spec, &dir)?;
            println!(
                "lab up in {}: {} nodes, namespaces {}-*; built in {:.1} s, daemons started in {:.1} s, converged {:.1} s later",
                dir.display(),
                lab.nodes.len(),
                lab.prefix,
                t.build.as_secs_f64(),
                t.start.as_secs_f64(),
                t.converge.as_secs_f64(),
            );
        }
        Cmd::Exec { dir, node, cmd } => {
            let lab = Lab::load(&dir)?;
            let n = lab.node(&node)?;
            // Replace this process (`ip netns exec` execs in turn), so the
            // command gets signals sent to us and nothing outlives a kill.
            use std::os::unix::process::CommandExt;
            let e = build::in_namespace(n)?.args(&cmd).exec();
            bail!("running {cmd:?} in {}: {e}", n.namespace);
        }
        Cmd::Addr { dir, node } => {
            let lab = Lab::load(&dir)?;
            for a in &lab.node(&node)?.addresses {
                println!("{}", a.split('/').next().unwrap_or(a));
            }
        }
        Cmd::Kill {
            dir,
            node,
            signal,
            daemon,
        } => {
            let lab = Lab::load(&dir)?;
            let sig = build::parse_signal(&signal)?;
            let n = build::signal_node(&lab, &node, sig, daemon.as_deref())?;
            if n == 0 {
                bail!("{node}: no daemon running");
            }
        }
        Cmd::Start { dir, node } => {
            let lab = Lab::load(&dir)?;
            let n = lab.node(&node)?.clone();
            build::start_node(&lab, &n)?;
        }
        Cmd::Watch {
            dir,
            prefix,
            until,
            timeout_s,
            changed,
        } => {
            let lab = Lab::load(&dir)?;
            let until = build::Until::parse(&until)?;
            build::watch_route(
                &lab,
                prefix,
                &until,
                std::time::Duration::from_secs(timeout_s),
                changed,
            )?;
        }
        Cmd::Wait { dir, timeout_s } => {
            let lab = Lab::load(&dir)?;
            build::wait_converged(&lab, std::time::Duration::from_secs(timeout_s))?;
        }
        Cmd::Status { dir, json } => {
            let lab = Lab::load(&dir)?;
            let st = build::status(&lab);
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                for n in &st.nodes {
                    println!(
                        "{:<12} {:<8} {:<6} {:<28} pids {:?}",
                        n.name,
                        n.role,
                        n.site,
                        n.addresses.join(" "),
                        n.pids
                    );
                }
            }
        }
        Cmd::Link {
            dir,
            node_a,
            node_b,
            action,
            pct,
        } => {
            let lab = Lab::load(&dir)?;
            link::run(&lab, &node_a, &node_b, action, pct)?;
        }
        Cmd::Move { dir, host, site } => {
            let mut lab = Lab::load(&dir)?;
            build::move_host(&mut lab, &host, &site)?;
        }
        Cmd::Down { dir } => {
            let lab = Lab::load(&dir)?;
            build::down(&lab)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
