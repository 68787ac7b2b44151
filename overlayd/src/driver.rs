//! The tokio driver: owns the TUN and UDP sockets, feeds [`Node`] and sends
//! what it returns. One task reads the TUN, one per UDP socket reads the
//! network, one ticks the timers, one serves the control socket and one the
//! UAPI socket `wg show` reads.
//!
//! The fast path: the TUN is opened with offload (IFF_VNET_HDR), so one read
//! brings a whole TCP super-packet that tun-rs splits into segments, and one
//! write carries many segments coalesced (GRO). Datagrams leave through UDP
//! GSO (one sendmsg per run of equal-sized datagrams to one endpoint) and
//! arrive through UDP GRO and recvmmsg (quinn-udp). Where the kernel refuses
//! an offload, the same loops run one packet per call.

use crate::batch::{TUN_FLUSH_AT, TUN_HEADROOM};
use crate::config::Config;
use crate::identity::Identity;
use crate::node::{Node, Outbox};
use cubenet_daemon::notify::{self, Notice, Supervisor};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// A stopping overlayd goes on forwarding after telling its peers it
/// leaves, for what they sent before they heard (a round trip across the
/// internet, more on a loaded peer): until no data came from any peer for
/// `DRAIN_QUIET`, at least `DRAIN_MIN` and at most `DRAIN_MAX`.
const DRAIN_MIN: Duration = Duration::from_millis(250);
const DRAIN_QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(3);
/// Socket buffers large enough that a burst does not overflow them.
const SOCKET_BUFFER: usize = 8 << 20;
/// Datagrams (each possibly a GRO run) per receive call.
const UDP_RECV_BATCH: usize = 8;
/// A GRO run holds at most 64 datagrams of at most 1500 bytes here.
const UDP_RECV_BUF: usize = 128 << 10;
/// Extra non-blocking TUN reads taken before a flush.
const TUN_READ_AHEAD: usize = 16;

const _: () = assert!(TUN_HEADROOM == VIRTIO_NET_HDR_LEN);

struct Udp {
    sock: UdpSocket,
    state: UdpSocketState,
}

impl Udp {
    fn bind(addr: SocketAddr) -> std::io::Result<Udp> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        // Root may exceed the sysctl limits (SO_*BUFFORCE); fall back if not.
        if !crate::sys::force_buffers(std::os::fd::AsRawFd::as_raw_fd(&s), SOCKET_BUFFER) {
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        let sock = UdpSocket::from_std(s.into())?;
        let state = UdpSocketState::new((&sock).into())?;
        Ok(Udp { sock, state })
    }

    async fn send(&self, t: &Transmit<'_>) -> std::io::Result<()> {
        self.sock
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), t)
            })
            .await
    }

    /// What is there already, without waiting (`WouldBlock` if nothing).
    fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> std::io::Result<usize> {
        self.sock.try_io(Interest::READABLE, || {
            self.state.recv((&self.sock).into(), bufs, meta)
        })
    }

    async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> std::io::Result<usize> {
        self.sock
            .async_io(Interest::READABLE, || {
                self.state.recv((&self.sock).into(), bufs, meta)
            })
            .await
    }
}

struct Io {
    /// One per TUN queue; queue 0 also takes the writes of the UDP readers.
    tuns: Vec<AsyncDevice>,
    v4: Option<Udp>,
    v6: Option<Udp>,
    /// The node's events, to the control socket's subscribers.
    events: crate::ctl::Events,
}

/// One task's buffers: what [`Node`] fills, the TUN's GRO table and the
/// TUN queue it writes to.
struct Lane {
    out: Outbox,
    gro: GROTable,
    queue: usize,
}

impl Lane {
    fn new(queue: usize) -> Lane {
        Lane {
            out: Outbox::default(),
            gro: GROTable::default(),
            queue,
        }
    }
}

impl Io {
    /// Hands the node's events to the subscribers at once, in the order
    /// the node made them (it hands them out under its control state, so
    /// two lanes cannot cross an `attached` and a `detached`). Called after
    /// every call into the node that can make one; one atomic load when
    /// there are none.
    fn send_events(&self, node: &Node) {
        // Nobody subscribed is no error.
        node.flush_events(|e| {
            let _ = self.events.send(e);
        });
    }

    async fn flush(&self, node: &Node, lane: &mut Lane) {
        self.send_events(node);
        let out = &mut lane.out;
        for b in out.net.batches() {
            let Some(udp) = (if b.ep.is_ipv4() { &self.v4 } else { &self.v6 }) else {
                continue;
            };
            let gso = b.count > 1 && udp.state.max_gso_segments() > 1;
            let r = if gso || b.count == 1 {
                let t = Transmit {
                    destination: b.ep,
                    ecn: None,
                    contents: b.bytes(),
                    segment_size: gso.then_some(b.segment),
                    src_ip: None,
                };
                udp.send(&t).await
            } else {
                Err(std::io::Error::other("no GSO"))
            };
            if r.is_err() {
                // No GSO (or it just failed and quinn-udp turned it off):
                // one datagram per call.
                for d in b.datagrams() {
                    let t = Transmit {
                        destination: b.ep,
                        ecn: None,
                        contents: d,
                        segment_size: None,
                        src_ip: None,
                    };
                    if let Err(e) = udp.send(&t).await {
                        tracing::debug!(ep = %b.ep, "send: {e}");
                    }
                }
            }
        }
        out.net.clear();
        if !out.tun.is_empty() {
            if let Err(e) = self.tuns[lane.queue]
                .send_multiple(&mut lane.gro, &mut out.tun.bufs, TUN_HEADROOM)
                .await
            {
                tracing::debug!("tun write: {e}");
            }
            out.tun.clear();
        }
    }
}

/// Opens the TUN with `queues` queues, with offload unless it is off or the
/// kernel refuses it.
fn open_tun(
    name: &str,
    mtu: u16,
    offload: bool,
    queues: usize,
) -> Result<(Vec<AsyncDevice>, bool), String> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .multi_queue(queues > 1)
            .build_async()
    };
    let (first, offload) = match build(offload) {
        Ok(d) => (d, offload),
        Err(e) if offload => {
            tracing::warn!("TUN {name}: offload refused ({e}); one packet per read");
            let d = build(false).map_err(|e| format!("creating TUN {name}: {e}"))?;
            (d, false)
        }
        Err(e) => {
            return Err(format!(
                "creating TUN {name}: {e} (overlayd needs CAP_NET_ADMIN)"
            ))
        }
    };
    let mut tuns = Vec::with_capacity(queues);
    for q in 1..queues {
        tuns.push(
            first
                .try_clone()
                .map_err(|e| format!("TUN {name}: queue {q}: {e}"))?,
        );
    }
    tuns.insert(0, first);
    Ok((tuns, offload))
}

async fn tun_reader(node: Arc<Node>, io: Arc<Io>, queue: usize, mtu: usize) {
    let tun = &io.tuns[queue];
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs = vec![vec![0u8; mtu.max(1500) + 64]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut lane = Lane::new(queue);
    loop {
        match tun
            .recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
            .await
        {
            Ok(n) => {
                // One clock read per batch, passed to every packet of it.
                let now = Instant::now();
                for i in 0..n {
                    node.on_tun_packet(&bufs[i][..sizes[i]], now, &mut lane.out);
                }
            }
            Err(e) => {
                tracing::warn!("tun read: {e}");
                continue;
            }
        }
        // Take what else is already waiting, so it leaves in one batch.
        for _ in 0..TUN_READ_AHEAD {
            match tun.try_recv_multiple(&mut original, &mut bufs, &mut sizes, 0) {
                Ok(n) => {
                    let now = Instant::now();
                    for i in 0..n {
                        node.on_tun_packet(&bufs[i][..sizes[i]], now, &mut lane.out);
                    }
                }
                Err(_) => break,
            }
        }
        io.flush(&node, &mut lane).await;
    }
}

async fn udp_reader(node: Arc<Node>, io: Arc<Io>, v6: bool) {
    let udp = if v6 { &io.v6 } else { &io.v4 };
    let Some(udp) = udp else { return };
    let mut storage = vec![vec![0u8; UDP_RECV_BUF]; UDP_RECV_BATCH];
    let mut meta = [RecvMeta::default(); UDP_RECV_BATCH];
    let mut lane = Lane::new(0);
    // Handshake initiations wait here while other datagrams go first.
    let mut inits = Initiations::default();
    loop {
        let got = {
            let mut slices: Vec<IoSliceMut> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            if inits.is_empty() {
                udp.recv(&mut slices, &mut meta).await
            } else {
                udp.try_recv(&mut slices, &mut meta)
            }
        };
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!("udp recv: {e}");
                }
                0
            }
        };
        let now = Instant::now();
        for (m, buf) in meta.iter().zip(&storage).take(n) {
            let stride = m.stride.max(1);
            for d in buf[..m.len].chunks(stride) {
                if !crate::node::is_initiation(d) {
                    node.on_datagram(d, m.addr, now, &mut lane.out);
                    io.send_events(&node);
                } else if node.screen_initiation(d, m.addr, now, &mut lane.out)
                    && !inits.defer(d, m.addr)
                {
                    node.drops
                        .handshake_backlog
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if lane.out.tun.len() >= TUN_FLUSH_AT {
                io.flush(&node, &mut lane).await;
            }
        }
        // A few initiations per batch, more once the socket is drained.
        let budget = if n == 0 {
            INITS_WHEN_IDLE
        } else {
            INITS_PER_BATCH
        };
        for _ in 0..budget {
            let Some((d, from)) = inits.newest() else {
                break;
            };
            node.on_initiation(&d, from, Instant::now(), &mut lane.out);
            io.send_events(&node);
        }
        io.flush(&node, &mut lane).await;
        if n == 0 && !inits.is_empty() {
            // Let the other tasks run between rounds of handshakes.
            tokio::task::yield_now().await;
        }
    }
}

/// Handshake initiations wait at most this many; the oldest go first.
const INIT_BACKLOG: usize = 1024;
const INITS_PER_BATCH: usize = 2;
const INITS_WHEN_IDLE: usize = 16;

/// Handshake initiations are what costs a gateway (Diffie-Hellman, about
/// 0.3 ms each), and a host retries one that went unanswered. Once screened
/// (mac1, cookie under load: cheap) they wait here under a burst, so data, certificates and probes go first, and the
/// newest are answered first: an old initiation has most likely been
/// superseded by its host's retry, and answering it is wasted work. The
/// backlog is bounded; what falls off the old end is retried by its host.
#[derive(Default)]
struct Initiations {
    queue: std::collections::VecDeque<(Vec<u8>, SocketAddr)>,
}

impl Initiations {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Keeps a screened initiation for later; false when the oldest had
    /// to make room.
    fn defer(&mut self, d: &[u8], from: SocketAddr) -> bool {
        let full = self.queue.len() >= INIT_BACKLOG;
        if full {
            self.queue.pop_front();
        }
        self.queue.push_back((d.to_vec(), from));
        !full
    }

    fn newest(&mut self) -> Option<(Vec<u8>, SocketAddr)> {
        self.queue.pop_back()
    }
}

pub async fn run(cfg: Config, config_path: PathBuf, identity: Identity) -> Result<(), String> {
    let ifname = cfg.interface.name.clone();
    let queues = cfg.interface.queues.max(1);
    let (tuns, offload) = open_tun(&ifname, cfg.interface.mtu, cfg.interface.offload, queues)?;
    let addresses = identity.cert.body.addresses.clone();
    let mut networks = identity.trust.ca().body.networks.clone();
    networks.extend(cfg.interface.routes.iter().copied());
    crate::netlink::configure(&ifname, cfg.interface.mtu, &addresses, &networks).await?;

    let mut v4 = None;
    let mut v6 = None;
    for addr in &cfg.listen {
        let s = Udp::bind(*addr).map_err(|e| format!("listen {addr}: {e}"))?;
        tracing::debug!(%addr, gso_segments = s.state.max_gso_segments(), gro_segments = s.state.gro_segments(), "udp socket");
        if addr.is_ipv4() {
            v4 = Some(s);
        } else {
            v6 = Some(s);
        }
    }
    let events = crate::ctl::events();
    let io = Arc::new(Io {
        tuns,
        v4,
        v6,
        events: events.clone(),
    });
    let socket_path = cfg.control_socket.clone();
    let listener = crate::ctl::bind(&socket_path)
        .map_err(|e| format!("control socket {}: {e}", socket_path.display()))?;
    let node = Node::new(
        cfg,
        identity,
        Instant::now(),
        cubenet_certs::time::unix_now(),
        random_seed(),
    )
    .map_err(|e| e.to_string())?;
    let gso = |u: &Option<Udp>| u.as_ref().map(|u| u.state.max_gso_segments());
    let gro = |u: &Option<Udp>| u.as_ref().map(|u| u.state.gro_segments());
    node.set_datapath(cubenet_api::overlayd::Datapath {
        tun_offload: offload,
        tun_queues: queues,
        udp_gso_segments_v4: gso(&io.v4),
        udp_gso_segments_v6: gso(&io.v6),
        udp_gro_segments_v4: gro(&io.v4),
        udp_gro_segments_v6: gro(&io.v6),
    });
    let id = node.identity();
    tracing::info!(
        name = id.cert.name(),
        role = %id.role(),
        interface = %ifname,
        offload,
        "overlayd running"
    );
    for s in &id.directory_skipped {
        tracing::warn!("cert_dir: skipped {s}");
    }

    // systemd (Type=notify) hears when this serves, reloads and stops.
    let supervisor = Arc::new(Supervisor::from_env().map_err(|e| format!("NOTIFY_SOCKET: {e}"))?);

    // Reload: shared by SIGHUP and the control socket.
    let reload = {
        let node = node.clone();
        let events = events.clone();
        let supervisor = supervisor.clone();
        let reload: crate::ctl::Reload = Arc::new(move || {
            supervisor.tell(Notice::reloading_now());
            let r = reload_config(&node, &events, &config_path);
            supervisor.tell(Notice::Ready);
            r
        });
        reload
    };

    let mut lane = Lane::new(0);
    node.initiate_all(Instant::now(), &mut lane.out);
    io.flush(&node, &mut lane).await;

    let mtu = usize::from(node.cfg.interface.mtu);
    for q in 0..queues {
        tokio::spawn(tun_reader(node.clone(), io.clone(), q, mtu));
    }
    tokio::spawn(udp_reader(node.clone(), io.clone(), false));
    tokio::spawn(udp_reader(node.clone(), io.clone(), true));
    // Timers.
    {
        let (node, io) = (node.clone(), io.clone());
        tokio::spawn(async move {
            let mut lane = Lane::new(0);
            loop {
                // The node says when it wants its next tick.
                tokio::time::sleep_until(node.next_deadline().into()).await;
                node.on_tick(
                    Instant::now(),
                    cubenet_certs::time::unix_now(),
                    &mut lane.out,
                );
                io.flush(&node, &mut lane).await;
            }
        });
    }
    tokio::spawn(crate::ctl::serve(
        listener,
        node.clone(),
        reload.clone(),
        events.clone(),
    ));
    // `wg show`: a view of the peers, so a socket that cannot be bound
    // (another daemon answers on it, /var/run read-only) is logged and
    // overlayd runs without it.
    let uapi_path = node
        .cfg
        .interface
        .uapi
        .then(|| crate::uapi_socket::socket_path(&ifname));
    let uapi_path = match uapi_path.map(|p| (crate::uapi_socket::bind(&p), p)) {
        Some((Ok(l), p)) => {
            tracing::debug!(socket = %p.display(), "UAPI socket for wg show");
            let n = node.clone();
            tokio::spawn(crate::uapi_socket::serve(
                l,
                Arc::new(move || {
                    let unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    n.wg_device(Instant::now(), unix)
                }),
            ));
            Some(p)
        }
        Some((Err(e), p)) => {
            tracing::warn!(
                "UAPI socket {}: {e}; `wg show {ifname}` will not list this node's peers \
                 (interface.uapi = false turns it off)",
                p.display()
            );
            None
        }
        None => None,
    };
    if let Some(addr) = node.cfg.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics_listen {addr}: {e}"))?;
        let (n, page) = (node.clone(), node.clone());
        tokio::spawn(cubenet_daemon::metrics::serve_metrics(
            l,
            cubenet_daemon::metrics::Pages {
                metrics: move || crate::prom::render(&n.status(Instant::now())),
                status_html: move || {
                    crate::page::render(
                        &page.status(Instant::now()),
                        cubenet_certs::time::unix_now(),
                    )
                },
            },
        ));
    }

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    // Serving: the interface is up, the sockets are bound and the signals
    // that reload and stop are handled.
    supervisor.tell(Notice::Ready);
    let mut watchdog = notify::watchdog_timer(&supervisor);
    let watchdog_every = supervisor.watchdog_interval().unwrap_or_default();
    loop {
        tokio::select! {
            // The outcome is logged by the reload itself.
            _ = hup.recv() => { let _ = reload(); }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = notify::next_watchdog_tick(&mut watchdog) => {
                // Alive means the node's timers run: a tick overdue by a
                // whole watchdog interval (a stuck timer task or lock)
                // starves the watchdog, and systemd restarts the daemon.
                let overdue = Instant::now().saturating_duration_since(node.next_deadline());
                if overdue < watchdog_every {
                    supervisor.tell(Notice::Watchdog);
                } else {
                    tracing::warn!(overdue_ms = overdue.as_millis() as u64, "timers overdue: watchdog not fed");
                }
            }
        }
    }
    supervisor.tell(Notice::Stopping);
    // Tell the peers, then go on forwarding what is already on its way
    // here while they move their traffic elsewhere.
    tracing::info!("overlayd stopping: telling peers, draining until no data arrives");
    let mut lane = Lane::new(0);
    node.leave(&mut lane.out);
    io.flush(&node, &mut lane).await;
    let started = tokio::time::Instant::now();
    let (mut seen, mut moved_at) = (node.data_received(), started);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = tokio::time::Instant::now();
        let d = node.data_received();
        if d != seen {
            (seen, moved_at) = (d, now);
        }
        let quiet = now - moved_at >= DRAIN_QUIET && now - started >= DRAIN_MIN;
        if quiet || now - started >= DRAIN_MAX {
            break;
        }
    }
    tracing::info!(
        drained_ms = started.elapsed().as_millis() as u64,
        "overlayd stopped"
    );
    let _ = std::fs::remove_file(&socket_path);
    if let Some(p) = uapi_path {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Reads the config's firewall rules and the certificates and revocation
/// list again; either failing refuses the whole reload and keeps what runs.
fn reload_config(
    node: &Node,
    events: &crate::ctl::Events,
    config_path: &Path,
) -> Result<cubenet_api::overlayd::Reloaded, String> {
    let policy = Config::load(config_path)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            c.firewall_policy()
                .map(|p| (p, c.firewall.is_some()))
                .map_err(|e| format!("{}: {e}", config_path.display()))
        });
    let id = Identity::load(&node.cfg, cubenet_certs::time::unix_now()).map_err(|e| e.to_string());
    match (policy, id) {
        (Ok((policy, on)), Ok(id)) => {
            // A reload cuts sessions (events) and sends nothing.
            let r = node.reload_identity(id);
            node.flush_events(|e| {
                let _ = events.send(e);
            });
            let cut = node.reload_firewall(policy, on, Instant::now());
            tracing::info!(config = %config_path.display(), cut = r.cut.len(), skipped_certs = r.skipped_certs.len(), firewall_flows_cut = cut, "reloaded");
            Ok(cubenet_api::overlayd::Reloaded {
                reload: r,
                firewall_flows_cut: cut,
            })
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("reload refused, running configuration kept: {e}");
            Err(e)
        }
    }
}

/// Where the receiver indices start: random, so a restarted node's new
/// sessions do not collide with indices its peers still hold from before.
fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    u32::from_le_bytes(b)
}
