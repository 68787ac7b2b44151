//! `cubenet-swarm`: many hosts against one real gateway, for measuring how
//! a gateway copes with a whole site of hosts (and with a handshake flood).
//!
//! One process simulates N hosts. Each has its own X25519 key and a
//! CA-signed certificate, and behaves like overlayd in the host role: it
//! handshakes with the gateway over UDP (boringtun, real WireGuard), presents
//! its certificate in-band, counts itself attached at the gateway's
//! acknowledgment, probes the gateway and handshakes again after missed
//! probes. The swarm starts the gateway itself (the command after `--`), so
//! it can time the gateway's start and restart and read its memory and CPU
//! from /proc.
//!
//! ```text
//! cubenet-swarm --ca-dir D --gateway 127.0.0.1:51820 --gateway-cert gw.crt \
//!     --gateway-socket gw.sock --hosts 10000 --restart -- overlayd run --config gw.toml
//! ```
//!
//! Prints one JSON object with the figures on stdout; progress on stderr.
//! `SWARM_DEBUG=1` also prints every host whose probes went unanswered:
//! how long ago its last handshake and its last probe reply were.

use boringtun::noise::{Tunn, TunnResult};
use clap::Parser;
use cubenet_api::overlayd::{Request, Status};
use cubenet_certs::{CaKey, NodeBody, NodeKey, Role};
use ipnet::IpNet;
use overlayd::health::{GatewayHealth, HandshakeRetry, Transition};
use overlayd::inband::{self, Message};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Parser)]
#[command(
    name = "cubenet-swarm",
    about = "many simulated hosts against one real gateway"
)]
struct Cli {
    /// CA directory (ca.key, ca.crt) that signs the hosts' certificates.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The gateway's UDP address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's certificate (for its public key).
    #[arg(long)]
    gateway_cert: PathBuf,
    /// The gateway's control socket.
    #[arg(long)]
    gateway_socket: PathBuf,
    /// Where the gateway's output goes (appended).
    #[arg(long, default_value = "/dev/null")]
    gateway_log: PathBuf,
    /// Number of simulated hosts.
    #[arg(long, default_value_t = 1000)]
    hosts: u32,
    /// First virtual address handed out; hosts get consecutive addresses.
    #[arg(long)]
    first_address: Option<IpAddr>,
    /// Probe interval of every host (overlayd's `probe.interval_ms`).
    #[arg(long, default_value_t = 1000)]
    probe_ms: u64,
    /// Missed probes before a host handshakes again (`probe.misses`).
    #[arg(long, default_value_t = 3)]
    misses: u32,
    /// UDP sockets the hosts are spread over (source ports).
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// Give up when not every host is attached after this long.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// After all attached: SIGKILL the gateway, start it again and time
    /// until every host is attached again.
    #[arg(long)]
    restart: bool,
    /// Handshake initiations per second from unknown keys while the hosts
    /// join (0: none).
    #[arg(long, default_value_t = 0)]
    flood_rate: u64,
    /// Distinct unknown keys the flood cycles through.
    #[arg(long, default_value_t = 4096)]
    flood_keys: u32,
    /// How long the flood runs in all; the hosts join one second into it.
    #[arg(long, default_value_t = 10.0)]
    flood_secs: f64,
    /// Source address of the flood (any address of this namespace).
    #[arg(long, default_value = "127.0.0.2")]
    flood_source: IpAddr,
    /// The gateway's command line.
    #[arg(last = true, required = true)]
    gateway_cmd: Vec<String>,
}

/// How often a host resends its certificate until acknowledged, as
/// overlayd's host does; handshakes back off as overlayd's do
/// ([`HandshakeRetry`]).
const RETRY: Duration = Duration::from_secs(1);
/// How often boringtun's timers run for every host.
const TIMERS: Duration = Duration::from_millis(250);
/// Longest stretch of timer work between two looks at the sockets.
const SLICE: Duration = Duration::from_millis(3);

struct Host {
    tunn: Tunn,
    cert: Vec<u8>,
    fingerprint: [u8; 32],
    socket: usize,
    /// The gateway acknowledged our certificate: it routes to us.
    attached: bool,
    /// Probes, as overlayd's host keeps them for its gateways.
    health: GatewayHealth,
    next_tick: Instant,
    next_timers: Instant,
    retry: HandshakeRetry,
    last_cert: Option<Instant>,
    last_reply: Option<Instant>,
    attached_at: Option<Instant>,
    /// The gateway's index of our session, from our last message.
    remote_idx: u32,
}

#[derive(Default)]
struct Counters {
    sent: u64,
    send_errors: u64,
    received: u64,
    handshakes: u64,
    cookies: u64,
    errors: u64,
    detached: u64,
    stale_hints: u64,
}

struct Swarm {
    hosts: Vec<Host>,
    sockets: Vec<UdpSocket>,
    gateway: SocketAddr,
    probe: Duration,
    /// Probe interval times (misses + 1), as overlayd's `probe_window`.
    probe_window: Duration,
    attached: u32,
    /// Where the next timer slice starts.
    cursor: usize,
    /// The socket the next datagram slice starts with.
    next_socket: usize,
    /// Hosts by the gateway's index of their session.
    by_remote: HashMap<u32, usize>,
    c: Counters,
    buf: Vec<u8>,
    buf2: Vec<u8>,
}

fn main() -> ExitCode {
    cubenet_daemon::default_sigpipe();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cubenet-swarm: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<Value, String> {
    if cli.hosts == 0 || cli.hosts >= 1 << 23 {
        return Err(format!("--hosts {}: must be 1..8388607", cli.hosts));
    }
    let gw_cert = cubenet_certs::load_node_cert(&cli.gateway_cert)
        .map_err(|e| format!("{}: {e}", cli.gateway_cert.display()))?;
    let gw_public = PublicKey::from(*gw_cert.public_key());
    let rss_before = rss_kib(std::process::id()).unwrap_or(0);
    let t = Instant::now();
    let mut swarm = Swarm::new(cli, gw_public)?;
    let rss_hosts = rss_kib(std::process::id()).unwrap_or(0);
    eprintln!(
        "{} hosts with keys and certificates in {:.1} s",
        cli.hosts,
        t.elapsed().as_secs_f64()
    );
    let mut result = json!({
        "hosts": cli.hosts,
        "probe_ms": cli.probe_ms,
        "swarm_kib_per_host": (rss_hosts.saturating_sub(rss_before)) as f64 / cli.hosts as f64,
    });

    if cli.flood_rate > 0 {
        result["flood"] = flood_run(cli, &mut swarm, gw_public)?;
        return Ok(result);
    }

    // The hosts are retrying once a second, at random phases, when the
    // gateway starts: time from its start until every host is attached.
    let mut gw = Gateway::spawn(cli)?;
    swarm.spread_start(Instant::now());
    let me = std::process::id();
    let cpu0 = cpu_s(me);
    let start = swarm.run_until_attached(gw.started, cli.timeout_s, &mut gw)?;
    let swarm_cpu = cpu_s(me) - cpu0;
    let rss_all = rss_kib(gw.pid()).unwrap_or(0);
    let confirmed = gw.attached_count()?;
    if confirmed != cli.hosts as usize {
        return Err(format!(
            "the gateway lists {confirmed} attached peers, the swarm {} hosts",
            cli.hosts
        ));
    }
    result["start"] = json!({
        "all_attached_s": start,
        "gateway_rss_mib": rss_all as f64 / 1024.0,
        "gateway_cpu_s": gw.cpu_s(),
        "gateway_drops": gw.status()?.drops,
        "swarm_cpu_s": swarm_cpu,
        "swarm": swarm.counters(),
    });
    eprintln!(
        "all {} attached {start:.2} s after the gateway started; gateway RSS {:.1} MiB",
        cli.hosts,
        rss_all as f64 / 1024.0
    );

    if cli.restart {
        swarm.c = Counters::default();
        swarm.forget_attach_times();
        gw.kill();
        let mut gw2 = Gateway::spawn(cli)?;
        gw2.wait_ready()?;
        let rss_idle = rss_kib(gw2.pid()).unwrap_or(0);
        let cpu0 = cpu_s(me);
        let again = swarm.run_until_attached(gw2.started, cli.timeout_s, &mut gw2)?;
        let rss_again = rss_kib(gw2.pid()).unwrap_or(0);
        let hwm = hwm_kib(gw2.pid()).unwrap_or(0);
        let confirmed = gw2.attached_count()?;
        if confirmed != cli.hosts as usize {
            return Err(format!(
                "after the restart the gateway lists {confirmed} attached peers, the swarm {}",
                cli.hosts
            ));
        }
        result["restart"] = json!({
            "all_attached_s": again,
            "gateway_idle_rss_mib": rss_idle as f64 / 1024.0,
            "gateway_rss_mib": rss_again as f64 / 1024.0,
            "gateway_peak_rss_mib": hwm as f64 / 1024.0,
            "gateway_kib_per_host": (rss_again.saturating_sub(rss_idle)) as f64 / cli.hosts as f64,
            "gateway_cpu_s": gw2.cpu_s(),
            "gateway_drops": gw2.status()?.drops,
            "swarm_cpu_s": cpu_s(me) - cpu0,
            "swarm": swarm.counters(),
        });
        eprintln!("after a restart all attached {again:.2} s after the gateway started");
        gw2.check_log(cli)?;
        gw2.kill();
    } else {
        gw.check_log(cli)?;
        gw.kill();
    }
    Ok(result)
}

/// The flood: unknown keys at `flood_rate` from the start, the hosts join
/// one second into it.
fn flood_run(cli: &Cli, swarm: &mut Swarm, gw_public: PublicKey) -> Result<Value, String> {
    let inits = flood_inits(gw_public, cli.flood_keys);
    let mut gw = Gateway::spawn(cli)?;
    gw.wait_ready()?;
    let cpu0 = gw.cpu_s();
    let rss0 = rss_kib(gw.pid()).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (target, rate, secs, src, stop) = (
            cli.gateway,
            cli.flood_rate,
            cli.flood_secs,
            cli.flood_source,
            stop.clone(),
        );
        std::thread::spawn(move || flood(target, src, rate, secs, &inits, &stop))
    };
    let flood_start = Instant::now();
    let join_at = flood_start + Duration::from_secs(1);
    std::thread::sleep(join_at.saturating_duration_since(Instant::now()));
    swarm.start_all(Instant::now());
    let joined = swarm.run_until_attached(Instant::now(), cli.timeout_s, &mut gw);
    // Keep the hosts answering while the flood goes on.
    let end = flood_start + Duration::from_secs_f64(cli.flood_secs);
    if joined.is_ok() {
        swarm.run_for(end.saturating_duration_since(Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    let stats = flood.join().map_err(|_| "the flood thread panicked")?;
    let wall = flood_start.elapsed().as_secs_f64();
    let cpu = gw.cpu_s() - cpu0;
    let hwm = hwm_kib(gw.pid()).unwrap_or(0);
    let status = gw.status()?;
    let joined = joined?;
    gw.check_log(cli)?;
    gw.kill();
    eprintln!(
        "flood of {} initiations/s: {} hosts attached {joined:.2} s after joining; gateway used {:.2} cores",
        cli.flood_rate,
        cli.hosts,
        cpu / wall
    );
    Ok(json!({
        "rate": cli.flood_rate,
        "seconds": wall,
        "hosts_attached_s": joined,
        "gateway_cores": cpu / wall,
        "gateway_idle_rss_mib": rss0 as f64 / 1024.0,
        "gateway_peak_rss_mib": hwm as f64 / 1024.0,
        "gateway_drops": status.drops,
        "flood": stats,
        "swarm": swarm.counters(),
    }))
}

/// Valid handshake initiations (mac1 and all) from fresh keys.
fn flood_inits(gw_public: PublicKey, keys: u32) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    (0..keys)
        .filter_map(|i| {
            let secret = StaticSecret::random_from_rng(rand_core::OsRng);
            let mut t = Tunn::new(secret, gw_public, None, None, i + 1, None);
            match t.format_handshake_initiation(&mut buf, false) {
                TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                _ => None,
            }
        })
        .collect()
}

fn flood(
    target: SocketAddr,
    src: IpAddr,
    rate: u64,
    secs: f64,
    inits: &[Vec<u8>],
    stop: &AtomicBool,
) -> Value {
    let Ok(sock) = UdpSocket::bind(SocketAddr::new(src, 0)) else {
        return json!({"error": format!("cannot bind {src}")});
    };
    let _ = sock.set_nonblocking(true);
    let start = Instant::now();
    let (mut sent, mut cookies, mut responses, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < secs {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let p = &inits[(sent % inits.len() as u64) as usize];
            let _ = sock.send_to(p, target);
            sent += 1;
        }
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            match buf.first() {
                Some(2) if n == 92 => responses += 1,
                Some(3) if n == 64 => cookies += 1,
                _ => other += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    json!({
        "sent": sent,
        "keys": inits.len(),
        "cookie_replies": cookies,
        "handshake_responses": responses,
        "other_replies": other,
    })
}

impl Swarm {
    fn new(cli: &Cli, gw_public: PublicKey) -> Result<Swarm, String> {
        let ca_key = CaKey::load(&cli.ca_dir.join("ca.key")).map_err(|e| e.to_string())?;
        let ca_path = cli.ca_dir.join("ca.crt");
        let ca = cubenet_certs::load_ca_cert(&ca_path)
            .map_err(|e| format!("{}: {e}", ca_path.display()))?;
        let net = *ca
            .body
            .networks
            .iter()
            .find(|n| matches!(n, IpNet::V4(_)))
            .ok_or("the CA has no IPv4 network for the hosts")?;
        let first = match cli.first_address {
            Some(a) => a,
            None => offset(net.network(), 1024).ok_or("the CA's network is too small")?,
        };
        let now = cubenet_certs::time::unix_now();
        let mut sockets = Vec::new();
        for _ in 0..cli.sockets.max(1) {
            let bind = SocketAddr::new(
                match cli.gateway {
                    SocketAddr::V4(_) => "0.0.0.0".parse().unwrap_or(IpAddr::from([0u8; 4])),
                    SocketAddr::V6(_) => "::".parse().unwrap_or(IpAddr::from([0u16; 8])),
                },
                0,
            );
            let s = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            overlayd::sys::force_buffers(s.as_raw_fd(), 8 << 20);
            sockets.push(s);
        }
        let mut hosts = Vec::with_capacity(cli.hosts as usize);
        let far = Instant::now() + Duration::from_secs(365 * 86400);
        for i in 0..cli.hosts {
            let addr = offset(first, i as u64)
                .filter(|a| net.contains(a))
                .ok_or_else(|| {
                    format!("host {i}: runs out of the CA's network {net} (from {first})")
                })?;
            let key = NodeKey::generate();
            let cert = NodeBody {
                name: format!("swarm-{i}"),
                public_key: key.public(),
                addresses: vec![IpNet::new(addr, net.prefix_len()).map_err(|e| e.to_string())?],
                groups: vec![],
                site: "swarm".into(),
                role: Role::Host,
                subnets: vec![],
                not_before: now.saturating_sub(60),
                not_after: now + 86_400,
                ca_fingerprint: ca.fingerprint(),
            }
            .sign(&ca_key.signing)
            .map_err(|e| format!("host {i}: {e}"))?;
            hosts.push(Host {
                tunn: Tunn::new(key.secret().clone(), gw_public, None, None, i + 1, None),
                cert: cert.encoded().to_vec(),
                fingerprint: cert.fingerprint().0,
                socket: i as usize % sockets.len(),
                attached: false,
                health: GatewayHealth::new(cli.misses.max(1)),
                next_tick: far,
                next_timers: far,
                retry: HandshakeRetry::new(u64::from(i + 1)),
                last_cert: None,
                last_reply: None,
                attached_at: None,
                remote_idx: 0,
            });
        }
        Ok(Swarm {
            hosts,
            sockets,
            gateway: cli.gateway,
            probe: Duration::from_millis(cli.probe_ms.max(1)),
            probe_window: Duration::from_millis(cli.probe_ms.max(1)) * (cli.misses.max(1) + 1),
            attached: 0,
            cursor: 0,
            next_socket: 0,
            by_remote: HashMap::new(),
            c: Counters::default(),
            buf: vec![0u8; 4096],
            buf2: vec![0u8; 4096],
        })
    }

    /// Every host starts within the next retry interval, spread evenly.
    fn spread_start(&mut self, now: Instant) {
        let n = self.hosts.len() as u64;
        for (i, h) in self.hosts.iter_mut().enumerate() {
            let phase = RETRY.as_nanos() as u64 * i as u64 / n;
            h.next_tick = now + Duration::from_nanos(phase);
            h.next_timers = h.next_tick;
        }
    }

    /// Before a restart: every host has to attach anew to count.
    fn forget_attach_times(&mut self) {
        for h in &mut self.hosts {
            h.attached_at = None;
        }
    }

    fn start_all(&mut self, now: Instant) {
        for h in &mut self.hosts {
            h.next_tick = now;
            h.next_timers = now;
        }
    }

    fn counters(&self) -> Value {
        json!({
            "datagrams_sent": self.c.sent,
            "send_errors": self.c.send_errors,
            "datagrams_received": self.c.received,
            "handshakes_completed": self.c.handshakes,
            "cookie_replies": self.c.cookies,
            "errors": self.c.errors,
            "detached": self.c.detached,
            "stale_hints": self.c.stale_hints,
        })
    }

    /// Runs until every host is attached (again); seconds since `since`.
    fn run_until_attached(
        &mut self,
        since: Instant,
        timeout_s: u64,
        gw: &mut Gateway,
    ) -> Result<f64, String> {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        let mut last_report = Instant::now();
        loop {
            self.step(Instant::now());
            // After a restart the hosts still count themselves attached
            // until their probes go unanswered; `attached_at` was cleared.
            if self.attached as usize == self.hosts.len()
                && self.hosts.iter().all(|h| h.attached_at.is_some())
            {
                let last = self
                    .hosts
                    .iter()
                    .filter_map(|h| h.attached_at)
                    .max()
                    .unwrap_or(since);
                return Ok(last.saturating_duration_since(since).as_secs_f64());
            }
            if let Some(status) = gw.exited() {
                return Err(format!("the gateway exited ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {} hosts attached after {timeout_s} s; swarm counters {}",
                    self.attached,
                    self.hosts.len(),
                    self.counters()
                ));
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                eprintln!(
                    "  {:.1} s: {} attached",
                    since.elapsed().as_secs_f64(),
                    self.attached
                );
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step(Instant::now());
        }
    }

    /// Waits a little for datagrams, handles them, then the due timers.
    fn step(&mut self, now: Instant) {
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 2) };
        let mut dgram = [0u8; 2048];
        // Datagrams in a slice of a few milliseconds too: a burst of
        // handshake responses (each costs Diffie-Hellman) must not hold up
        // the probes of every other host, which real hosts, each on its own
        // machine, would send on time (the gateway detaches a host whose
        // probes stop). The rest waits in the socket buffers.
        let read_end = Instant::now() + SLICE;
        // Starting where the last slice stopped, so no socket waits behind
        // the others.
        let ns = fds.len();
        'sockets: for k in 0..ns {
            let si = (self.next_socket + k) % ns;
            if fds[si].revents & libc::POLLIN == 0 {
                continue;
            }
            for _ in 0..256 {
                if Instant::now() >= read_end {
                    self.next_socket = si;
                    break 'sockets;
                }
                let Ok((n, from)) = self.sockets[si].recv_from(&mut dgram) else {
                    break;
                };
                if from == self.gateway {
                    self.on_datagram(&dgram[..n], now);
                }
            }
        }
        // Timers in slices of at most a few milliseconds, continuing where
        // the last slice stopped: a burst of due handshakes (each costs
        // Diffie-Hellman) must not keep the replies waiting.
        let slice_end = Instant::now() + SLICE;
        let n = self.hosts.len();
        for _ in 0..n {
            if Instant::now() >= slice_end {
                break;
            }
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            if self.hosts[i].next_timers <= now {
                self.hosts[i].next_timers = now + TIMERS;
                let r = {
                    let h = &mut self.hosts[i];
                    match h.tunn.update_timers(&mut self.buf) {
                        TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                        _ => None,
                    }
                };
                if let Some(b) = r {
                    self.send(i, &b);
                }
            }
            if self.hosts[i].next_tick <= now {
                self.hosts[i].next_tick = now + self.probe;
                self.tick(i, now);
            }
        }
    }

    fn send(&mut self, i: usize, b: &[u8]) {
        match self.sockets[self.hosts[i].socket].send_to(b, self.gateway) {
            Ok(_) => self.c.sent += 1,
            Err(_) => self.c.send_errors += 1,
        }
    }

    fn send_message(&mut self, i: usize, m: &Message) {
        let p = m.encode();
        let r = match self.hosts[i].tunn.encapsulate(&p, &mut self.buf) {
            TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
            _ => None,
        };
        if let Some(b) = r {
            // The index the gateway knows this session by, as overlayd's
            // host keeps it for a stale-session hint.
            if let Some(idx) = overlayd::stale::data_receiver(&b) {
                let h = &mut self.hosts[i];
                if h.remote_idx != idx {
                    self.by_remote.remove(&h.remote_idx);
                    h.remote_idx = idx;
                    self.by_remote.insert(idx, i);
                }
            }
            self.send(i, &b);
        }
    }

    /// The gateway says a session is gone (it restarted): that host
    /// handshakes at once, as overlayd's host does.
    fn on_stale_hint(&mut self, idx: u32, now: Instant) {
        let Some(i) = self.by_remote.remove(&idx) else {
            return;
        };
        self.c.stale_hints += 1;
        let h = &mut self.hosts[i];
        h.remote_idx = 0;
        if h.health.session_lost(now) == Some(Transition::Down) {
            self.c.detached += 1;
            if h.attached {
                h.attached = false;
                self.attached -= 1;
            }
        }
        let r = match h.tunn.format_handshake_initiation(&mut self.buf, false) {
            TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
            _ => None,
        };
        if let Some(b) = r {
            self.hosts[i].retry.started(now);
            self.send(i, &b);
        }
    }

    fn send_cert(&mut self, i: usize, now: Instant) {
        self.hosts[i].last_cert = Some(now);
        let cert = self.hosts[i].cert.clone();
        self.send_message(i, &Message::Cert(cert));
    }

    /// What overlayd's host does every probe interval (`Node::on_tick`).
    fn tick(&mut self, i: usize, now: Instant) {
        let h = &mut self.hosts[i];
        let (seq, t) = h.health.on_tick(now);
        if t == Some(Transition::Down) {
            // The gateway went quiet: it may be a new process that has to
            // see our certificate again.
            self.c.detached += 1;
            if std::env::var_os("SWARM_DEBUG").is_some() {
                eprintln!(
                    "host {i} down: handshake {:?} ago, attached {}, last reply {:?} ago",
                    h.tunn.time_since_last_handshake(),
                    h.attached,
                    h.last_reply.map(|t| now - t)
                );
            }
            if h.attached {
                h.attached = false;
                self.attached -= 1;
            }
        }
        if !h.health.healthy() {
            // As overlayd: a fresh session first gets its probe window.
            let fresh = h
                .tunn
                .time_since_last_handshake()
                .is_some_and(|d| d < self.probe_window);
            if !fresh && h.retry.due(now) {
                let r = match h.tunn.format_handshake_initiation(&mut self.buf, true) {
                    TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                    _ => None,
                };
                if let Some(b) = r {
                    self.send(i, &b);
                }
            }
        } else {
            h.retry.reset();
        }
        self.send_message(i, &Message::Probe { seq });
        if !self.hosts[i].attached
            && self.hosts[i]
                .last_cert
                .is_none_or(|t| now.duration_since(t) >= RETRY)
        {
            self.send_cert(i, now);
        }
    }

    fn on_datagram(&mut self, d: &[u8], now: Instant) {
        self.c.received += 1;
        if let Some(idx) = overlayd::stale::decode(d) {
            self.on_stale_hint(idx, now);
            return;
        }
        // Our index: after the sender's in a handshake response, first in
        // cookie replies and data.
        let at = if d.first() == Some(&2) { 8 } else { 4 };
        let (Some(&kind), Some(idx)) = (d.first(), d.get(at..at + 4)) else {
            self.c.errors += 1;
            return;
        };
        let idx = u32::from_le_bytes([idx[0], idx[1], idx[2], idx[3]]) >> 8;
        let Some(i) = (idx as usize)
            .checked_sub(1)
            .filter(|i| *i < self.hosts.len())
        else {
            self.c.errors += 1;
            return;
        };
        let gw_ip = self.gateway.ip();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut inner: Option<Vec<u8>> = None;
        {
            let h = &mut self.hosts[i];
            match h.tunn.decapsulate(Some(gw_ip), d, &mut self.buf) {
                TunnResult::WriteToNetwork(b) => {
                    out.push(b.to_vec());
                    while let TunnResult::WriteToNetwork(b) =
                        h.tunn.decapsulate(None, &[], &mut self.buf2)
                    {
                        out.push(b.to_vec());
                    }
                }
                TunnResult::WriteToTunnelV6(p, _) => inner = Some(p.to_vec()),
                TunnResult::WriteToTunnelV4(..) => {}
                TunnResult::Done if kind == 3 => self.c.cookies += 1,
                TunnResult::Done => {}
                TunnResult::Err(e) => {
                    if self.c.errors == 0 {
                        eprintln!("first error: {e:?} on a datagram of type {kind}");
                    }
                    self.c.errors += 1;
                }
            }
        }
        for b in out {
            self.send(i, &b);
        }
        if kind == 2 {
            // A new session, maybe with a new gateway process: present the
            // certificate at once, and count on it only once acknowledged.
            self.c.handshakes += 1;
            // A hint about the session before must not end this one.
            let old = std::mem::take(&mut self.hosts[i].remote_idx);
            if self.by_remote.get(&old) == Some(&i) {
                self.by_remote.remove(&old);
            }
            if self.hosts[i].attached {
                self.hosts[i].attached = false;
                self.attached -= 1;
            }
            self.send_cert(i, now);
        }
        let Some(p) = inner.filter(|p| inband::is_inband(p)) else {
            return;
        };
        match Message::decode(&p) {
            Ok(Message::CertAck(fp)) => {
                let h = &mut self.hosts[i];
                if fp == h.fingerprint && !h.attached {
                    h.attached = true;
                    h.attached_at = Some(now);
                    self.attached += 1;
                }
            }
            Ok(Message::ProbeReply { seq }) => {
                self.hosts[i].last_reply = Some(now);
                self.hosts[i].health.on_reply(seq, now);
            }
            Ok(Message::Probe { seq }) => self.send_message(i, &Message::ProbeReply { seq }),
            _ => {}
        }
    }
}

fn offset(a: IpAddr, by: u64) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => u32::try_from(u32::from(v) as u64 + by)
            .ok()
            .map(|x| IpAddr::V4(x.into())),
        IpAddr::V6(v) => Some(IpAddr::V6((u128::from(v) + by as u128).into())),
    }
}

/// The gateway process the swarm started.
struct Gateway {
    child: Child,
    started: Instant,
    socket: PathBuf,
    log: PathBuf,
    log_start: u64,
}

impl Gateway {
    fn spawn(cli: &Cli) -> Result<Gateway, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cli.gateway_log)
            .map_err(|e| format!("{}: {e}", cli.gateway_log.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = Command::new(&cli.gateway_cmd[0])
            .args(&cli.gateway_cmd[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", cli.gateway_cmd))?;
        Ok(Gateway {
            child,
            started,
            socket: cli.gateway_socket.clone(),
            log: cli.gateway_log.clone(),
            log_start,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn status(&self) -> Result<Status, String> {
        cubenet_api::client::call_blocking(&self.socket, &Request::Status)
            .map_err(|e| e.to_string())
    }

    /// Waits until the control socket answers.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.status().is_ok() {
                return Ok(());
            }
            if let Some(s) = self.exited() {
                return Err(format!("the gateway exited ({s})"));
            }
            if Instant::now() > deadline {
                return Err("the gateway's control socket did not answer in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn attached_count(&self) -> Result<usize, String> {
        let s = self.status()?;
        Ok(s.peers.iter().filter(|p| p.attached).count())
    }

    fn cpu_s(&self) -> f64 {
        cpu_s(self.pid())
    }

    /// Fails when the gateway logged a panic since it started.
    fn check_log(&self, cli: &Cli) -> Result<(), String> {
        if cli.gateway_log == Path::new("/dev/null") {
            return Ok(());
        }
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[(self.log_start as usize).min(text.len())..]);
        match text.lines().find(|l| l.contains("panicked")) {
            Some(l) => Err(format!("the gateway panicked: {l}")),
            None => Ok(()),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

fn hwm_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// User plus system CPU seconds a process used so far.
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}
