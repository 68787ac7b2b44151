//! `overlayd`: cubenet's data plane on every host and gateway.
//!
//! Exit codes: 0 ok; 1 runtime failure; 2 bad usage or configuration.

use overlayd::{config, driver, firewall, identity};

use clap::Parser;
use config::Config;
use cubenet_api::overlayd as api;
use overlayd::cli::{Cli, Cmd, FirewallCmd, LogFormat};
use std::path::Path;
use std::process::ExitCode;

fn init_logs(format: LogFormat) {
    cubenet_daemon::init_logs(matches!(format, LogFormat::Json), "OVERLAYD_LOG");
}

fn load(path: &Path) -> Result<(Config, identity::Identity), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let id = identity::Identity::load(&cfg, cubenet_certs::time::unix_now())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((cfg, id))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        cubenet_daemon::default_sigpipe();
    }
    match cli.cmd {
        Cmd::Check { config } => match load(&config) {
            Ok((cfg, id)) => {
                println!(
                    "{}: ok: {} ({}) {} gateway(s), {} cert(s) in cert_dir",
                    config.display(),
                    id.cert.name(),
                    id.role(),
                    cfg.gateways.len(),
                    id.directory.len()
                );
                for s in &id.directory_skipped {
                    println!("warning: cert_dir: skipped {s}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("overlayd: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => {
            init_logs(cli.log_format);
            let (cfg, id) = match load(&config) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("overlayd: {e}");
                    return ExitCode::from(2);
                }
            };
            let workers = match cfg.interface.workers {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("overlayd: tokio runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(driver::run(cfg, config, id)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("overlayd: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Firewall {
            cmd:
                FirewallCmd::Explain {
                    config,
                    from,
                    from_cert,
                    to,
                    proto,
                    port,
                    json,
                },
        } => match explain(&config, from, from_cert.as_deref(), to, &proto, port) {
            Ok(v) => {
                if json {
                    println!("{}", cubenet_api::pretty(&v));
                } else {
                    println!("{}", v.summary);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("overlayd: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Status { socket, json } => {
            match cubenet_api::client::call_blocking::<_, api::Status>(
                &socket,
                &api::Request::Status,
            ) {
                Ok(st) => {
                    if json {
                        println!("{}", cubenet_api::pretty(&cubenet_api::Reply::Ok(st)));
                    } else {
                        print_status(&st);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("overlayd: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn print_status(st: &api::Status) {
    let addrs: Vec<String> = st.addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "{} ({}, site {}) {}  up {}s  cert expires in {} days",
        st.name,
        st.role.as_str(),
        if st.site.is_empty() { "-" } else { &st.site },
        addrs.join(" "),
        st.uptime_s,
        st.cert_days_left
    );
    println!(
        "{:<2}{:<16} {:<8} {:<24} {:<8} {:>10} {:>6} {:>5} {:>11} {:>12} {:>12}",
        "",
        "PEER",
        "ROLE",
        "ENDPOINT",
        "HEALTHY",
        "HANDSHAKE",
        "MTU",
        "FLAPS",
        "DAMPING",
        "RX",
        "TX"
    );
    for p in &st.peers {
        let hs = p
            .last_handshake_s
            .map(|x| format!("{x:.0}s ago"))
            .unwrap_or_else(|| "never".into());
        // An MTU still assumed (not probed yet) is marked with `?`.
        let mtu = format!("{}{}", p.mtu, if p.mtu_learned { "" } else { "?" });
        // The penalty, and whether damping holds the tunnel down.
        let damping = match (p.suppressed, p.penalty >= 1.0) {
            (true, _) => format!("held {:.0}", p.penalty),
            (false, true) => format!("{:.0}", p.penalty),
            (false, false) => "-".into(),
        };
        println!(
            "{:<2}{:<16} {:<8} {:<24} {:<8} {:>10} {:>6} {:>5} {:>11} {:>12} {:>12}",
            if p.active { "*" } else { "" },
            p.name,
            p.role.as_str(),
            cubenet_api::or_dash(&p.endpoint),
            if p.healthy { "yes" } else { "no" },
            hs,
            mtu,
            p.flaps,
            damping,
            p.rx_bytes,
            p.tx_bytes
        );
    }
    let drops: Vec<String> = st
        .drops
        .iter()
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "drops: {}",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    );
}

/// `overlayd firewall explain`: the decision for one flow under a config.
fn explain(
    config: &Path,
    from: std::net::IpAddr,
    from_cert: Option<&Path>,
    to: std::net::IpAddr,
    proto: &str,
    port: Option<u16>,
) -> Result<api::Explanation, String> {
    use firewall::{Direction, Firewall, Proto};
    let (cfg, id) = load(config)?;
    let proto_v = Proto::parse(proto)
        .ok_or_else(|| format!("--proto: {proto:?}: expected tcp, udp, icmp or any"))?;
    if port.is_some() && !matches!(proto_v, Proto::Tcp | Proto::Udp) {
        return Err("--port: ports need --proto tcp or udp".into());
    }
    let (dir, remote) = if id.cert.owns_addr(to) {
        (Direction::Inbound, from)
    } else if id.cert.owns_addr(from) {
        (Direction::Outbound, to)
    } else {
        return Err(format!(
            "neither --from {from} nor --to {to} is an address of {} ({})",
            id.cert.name(),
            id.cert
                .body
                .addresses
                .iter()
                .map(|a| a.addr().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let cert = match from_cert {
        Some(p) => {
            let c = cubenet_certs::load_node_cert(p)
                .map_err(|e| format!("--from-cert: {}: {e}", p.display()))?;
            id.trust
                .validate(&c, cubenet_certs::time::unix_now())
                .map_err(|e| format!("--from-cert: {}: {e}", p.display()))?;
            if !c.owns_addr(remote) {
                return Err(format!(
                    "--from-cert: {} is {:?}'s certificate, which does not own {remote}",
                    p.display(),
                    c.name()
                ));
            }
            Some(std::sync::Arc::new(c))
        }
        None => id.directory.values().find(|c| c.owns_addr(remote)).cloned(),
    };
    let ident = cert.as_deref().map(firewall::Identity::from);
    let fw = Firewall::new(cfg.firewall_policy()?);
    let (action, rule) = fw.explain(dir, remote, ident.as_ref(), proto_v, port);
    let port_s = port.map(|p| format!(" port {p}")).unwrap_or_default();
    let who = match &ident {
        Some(i) => format!(
            "{} (groups {}, site {})",
            i.name,
            if i.groups.is_empty() {
                "-".into()
            } else {
                i.groups.join(",")
            },
            if i.site.is_empty() { "-" } else { &i.site }
        ),
        None => "identity unknown: only address rules can match".into(),
    };
    let by = match &rule {
        Some((i, text)) => format!("{}[{i}]: {text}", dir.as_str()),
        None => format!("the {} default", dir.as_str()),
    };
    Ok(api::Explanation {
        direction: dir.as_str().to_string(),
        from,
        to,
        proto: proto.to_string(),
        port,
        remote,
        remote_identity: ident.as_ref().map(|i| api::RemoteIdentity {
            name: i.name.clone(),
            groups: i.groups.clone(),
            site: i.site.clone(),
        }),
        decision: action.as_str().to_string(),
        rule_index: rule.as_ref().map(|r| r.0),
        rule: rule.as_ref().map(|r| r.1.clone()),
        summary: format!(
            "{} {proto} {from} -> {to}{port_s}: {} by {by}\n  remote {remote}: {who}",
            dir.as_str(),
            action.as_str()
        ),
    })
}
