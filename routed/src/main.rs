//! `routed`: cubenet's control plane on gateways — BGP-4 and BFD inside the
//! encrypted tunnels, link damping, and the route-status CLI.
//!
//! Exit codes: 0 ok; 1 runtime failure (and `status` when a configured
//! neighbour is not established); 2 bad usage or configuration.

use routed::{config, driver, router};

use clap::Parser;
use config::Loaded;
use cubenet_api::client::call_blocking;
use cubenet_api::routed as api;
use routed::cli::{Cli, Cmd, LogFormat};
use std::process::ExitCode;
use std::time::Instant;

fn build_router(l: &Loaded) -> Result<router::Router, router::RouterError> {
    router::Router::new(
        l.cfg.clone(),
        l.certs.networks.clone(),
        l.certs.own_subnets.clone(),
        l.certs.own_v6,
        l.certs.neighbor_subnets.clone(),
        Instant::now(),
        rand_core::RngCore::next_u64(&mut rand_core::OsRng),
    )
}

fn init_logs(format: LogFormat) {
    cubenet_daemon::init_logs(matches!(format, LogFormat::Json), "ROUTED_LOG");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        cubenet_daemon::default_sigpipe();
    }
    match cli.cmd {
        Cmd::Check { config } => match Loaded::load(&config).and_then(|l| {
            build_router(&l)
                .map(|_| l)
                .map_err(|e| format!("{}: {e}", config.display()))
        }) {
            Ok(l) => {
                println!(
                    "{}: ok: AS {} router id {}, {} neighbour(s), {} prefix(es) to announce",
                    config.display(),
                    l.cfg.asn,
                    l.cfg.router_id,
                    l.cfg.neighbors.len(),
                    l.cfg.announce.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("routed: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => {
            init_logs(cli.log_format);
            let l = match Loaded::load(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("routed: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut router = match build_router(&l) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("routed: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            // Before any thread: the variable is removed from the
            // environment.
            if driver::restarted_gracefully(&l.cfg) {
                router.set_restarted();
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("routed: tokio runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(driver::run(l.cfg, router, l.md5, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("routed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Restart { socket } => {
            match call_blocking::<_, cubenet_api::Empty>(&socket, &api::Request::Restart) {
                Ok(_) => {
                    println!("routed restarts gracefully");
                    ExitCode::SUCCESS
                }
                Err(e @ cubenet_api::CallError::Refused(_)) => {
                    eprintln!("routed: restart refused: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("routed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Status { socket, json } => {
            match call_blocking::<_, api::Status>(&socket, &api::Request::Status) {
                Ok(st) => {
                    if json {
                        println!("{}", cubenet_api::pretty(&cubenet_api::Reply::Ok(&st)));
                    } else {
                        print_status(&st);
                    }
                    let all_up = st.neighbors.iter().all(|n| match n.state {
                        api::SessionState::Established => true,
                        api::SessionState::Reflected => n.usable,
                        _ => false,
                    });
                    if all_up {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("routed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Reload { socket, json } => {
            match call_blocking::<_, api::Reloaded>(&socket, &api::Request::Reload) {
                Ok(r) => {
                    if json {
                        println!("{}", cubenet_api::pretty(&cubenet_api::Reply::Ok(&r)));
                    } else {
                        print_reloaded(&r);
                    }
                    ExitCode::SUCCESS
                }
                Err(e @ cubenet_api::CallError::Refused(_)) => {
                    eprintln!("routed: reload refused: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("routed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Routes { socket, json } => {
            match call_blocking::<_, api::Routes>(&socket, &api::Request::Routes) {
                Ok(rs) => {
                    if json {
                        println!("{}", cubenet_api::pretty(&cubenet_api::Reply::Ok(&rs)));
                    } else {
                        print_routes(&rs);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("routed: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn print_status(st: &api::Status) {
    println!(
        "AS {}  router id {}  up {} s",
        st.asn, st.router_id, st.uptime_s
    );
    println!(
        "{:<12} {:<16} {:<11} {:<12} {:<10} {:>5} {:>8} {:<14} {:>6} {:>6}  last error",
        "neighbor", "address", "asn", "state", "bfd", "flaps", "penalty", "damping", "in", "out"
    );
    for n in &st.neighbors {
        let damping = if n.suppressed {
            format!("suppressed {:.0}s", n.suppressed_for_s.unwrap_or(0.0))
        } else if n.usable {
            "-".into()
        } else {
            "held".into()
        };
        println!(
            "{:<12} {:<16} {:<11} {:<12} {:<10} {:>5} {:>8} {:<14} {:>6} {:>6}  {}",
            n.name,
            n.address.to_string(),
            n.asn,
            n.state.as_str(),
            n.bfd.as_str(),
            n.flaps,
            n.penalty,
            damping,
            n.routes_in,
            n.routes_out,
            cubenet_api::or_dash(&n.last_error),
        );
        let hist: Vec<String> = n
            .history
            .iter()
            .rev()
            .take(4)
            .map(|h| {
                let ev = match h.event {
                    api::UpDown::Up => "up",
                    api::UpDown::Down => "down",
                };
                format!("{ev} {}", h.at)
            })
            .collect();
        if !hist.is_empty() {
            println!("{:<12} history: {}", "", hist.join(", "));
        }
        for (why, count) in &n.not_sent {
            println!("{:<12} not sent: {count} routes: {why}", "");
        }
    }
}

fn print_reloaded(r: &api::Reloaded) {
    let names = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let nets = |v: &[ipnet::IpNet]| names(&v.iter().map(|p| p.to_string()).collect::<Vec<_>>());
    let reset: Vec<String> = r
        .reset
        .iter()
        .map(|x| format!("{} ({})", x.name, x.changed.join(", ")))
        .collect();
    println!("reloaded");
    println!("neighbours added:    {}", names(&r.added));
    println!("neighbours removed:  {}", names(&r.removed));
    println!("neighbours reset:    {}", names(&reset));
    println!("export updated:      {}", names(&r.updated));
    println!("prefixes added:      {}", nets(&r.prefixes_added));
    println!("prefixes removed:    {}", nets(&r.prefixes_removed));
    println!("probes changed:      {}", nets(&r.probes_changed));
}

fn print_routes(rs: &api::Routes) {
    println!(
        "{:<22} {:<8} {:<6} {:>6}  via",
        "prefix", "origin", "paths", "age_s"
    );
    for r in &rs.routes {
        println!(
            "{:<22} {:<8} {:<6} {:>6}  {}",
            r.prefix.to_string(),
            r.origin.as_str(),
            r.ecmp,
            r.age_s,
            r.via.join(", ")
        );
    }
}
