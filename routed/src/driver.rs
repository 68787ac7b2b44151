//! The tokio driver: BGP over TCP, BFD over UDP, overlayd's control socket,
//! kernel routes and the clock, around the sans-IO [`Router`]. The router
//! sits behind a mutex that is never held across an `.await`.

use crate::config::Config;
use crate::overlay::RouteFeed;
use crate::rib::NeighborId;
use crate::router::{Out, Router};
use crate::wire;
use cubenet_api::overlayd as api;
use cubenet_api::{CallError, Client};
use cubenet_daemon::notify::{self, Notice, Supervisor};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};

pub use crate::sockets::{BFD_MULTIHOP_PORT, BFD_PORT};
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The route feed looks at overlayd this often even without changes (an
/// empty update), so a restarted overlayd gets its routes back.
const RESYNC: Duration = Duration::from_secs(5);

pub struct Shared {
    router: Mutex<Router>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    bfd_tx4: UdpSocket,
    /// The IPv6 send socket, or why there is none.
    bfd_tx6: Result<UdpSocket, String>,
    tables: Notify,
    /// Wakes the timer to look at the router's next deadline again.
    wake: Notify,
    /// Connection writers still running, and a wake when the last ends:
    /// at a stop, the Cease goes out before the process does.
    writers: AtomicUsize,
    writers_done: Notify,
    /// The config as started: what a reload may not change (see
    /// [`Router::reconfigure`]) is read from here.
    cfg: Config,
    config_path: PathBuf,
    supervisor: Supervisor,
    /// The BGP listeners: GTSM is set on them (see [`Shared::gtsm_listeners`]).
    listeners: Mutex<Vec<(Arc<TcpListener>, bool)>>,
    /// TCP-MD5 keys by neighbour address, set on every listener and on
    /// each outgoing connection.
    md5: Mutex<std::collections::BTreeMap<IpAddr, Vec<u8>>>,
    /// The addresses BGP (unless `listen` is given) and BFD are bound to.
    served: Mutex<std::collections::BTreeSet<IpAddr>>,
    /// The running health probe of each probed site prefix.
    probes: Mutex<HashMap<ipnet::IpNet, (crate::probe::Probe, tokio::task::AbortHandle)>>,
    /// A graceful restart was asked for; `restart` starts it once the
    /// asking client has its reply.
    restart_asked: std::sync::atomic::AtomicBool,
    restart: Notify,
}

/// Set in the environment of the process a graceful restart starts: when
/// (Unix seconds) the old one ended its sessions.
const RESTARTED_ENV: &str = "CUBENET_ROUTED_RESTARTED";

impl Shared {
    /// A control request to restart gracefully: refused when graceful
    /// restart is off (the neighbours would drop our routes anyway).
    pub fn ask_restart(&self) -> Result<cubenet_api::Empty, String> {
        if !self.router().cfg.graceful_restart.enabled {
            return Err(
                "graceful restart is off ([graceful_restart] enabled = false in \
                        routed.toml): stop and start routed instead"
                    .into(),
            );
        }
        self.restart_asked.store(true, Ordering::SeqCst);
        Ok(cubenet_api::Empty {})
    }

    /// After a control connection ends: starts the restart it asked for.
    pub fn restart_if_asked(&self) {
        if self.restart_asked.load(Ordering::SeqCst) {
            self.restart.notify_one();
        }
    }

    pub fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the router and carries out what it queued.
    fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut Router, Instant) -> T) -> T {
        let t = {
            let mut r = self.router();
            let t = f(&mut r, Instant::now());
            self.dispatch_all(&mut r);
            t
        };
        self.wake.notify_one();
        t
    }

    /// Carries out what the router queued, in its order, before the router
    /// is unlocked: two tasks that each unlocked first could hand their
    /// messages to a connection in the opposite order to the one the router
    /// produced them (an announcement after the withdrawal that replaced
    /// it, leaving the neighbour a route this router no longer has). Every
    /// step only queues: a channel send, a spawn, a non-blocking datagram.
    fn dispatch_all(self: &Arc<Self>, r: &mut Router) {
        loop {
            let outs = r.drain();
            if outs.is_empty() {
                return;
            }
            let mut full = Vec::new();
            for o in outs {
                full.extend(self.dispatch(r, o));
            }
            // A neighbour that does not read what we send: its connection
            // goes, with what the router makes of that.
            for (n, conn) in full {
                let why = format!(
                    "more than {} MiB waiting to be sent: the neighbour does not read",
                    MAX_QUEUED >> 20
                );
                tracing::warn!(neighbor = %r.neighbors[n].cfg.name, "{why}");
                r.on_dropped(n, conn, &why, Instant::now());
            }
        }
    }

    /// Carries out one output; the connection whose send queue is full,
    /// when that is what happened.
    fn dispatch(self: &Arc<Self>, r: &mut Router, o: Out) -> Option<(NeighborId, u64)> {
        match o {
            Out::Connect { n } => {
                let me = self.clone();
                tokio::spawn(async move { me.connect(n).await });
            }
            Out::Send { n, conn, bytes } => {
                let mut conns = self.conns();
                let c = conns.get(&conn)?;
                if c.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len() > MAX_QUEUED {
                    if let Some(c) = conns.remove(&conn) {
                        let _ = c.tx.send(None);
                    }
                    return Some((n, conn));
                }
                let _ = c.tx.send(Some(bytes));
            }
            Out::Close { conn, .. } => {
                if let Some(c) = self.conns().remove(&conn) {
                    let _ = c.tx.send(None);
                }
            }
            Out::Bfd { n, bytes } => {
                let cfg = &r.neighbors[n].cfg;
                let port = if cfg.bfd_multihop {
                    BFD_MULTIHOP_PORT
                } else {
                    BFD_PORT
                };
                let to = SocketAddr::new(cfg.address, port);
                let sock = match (&self.bfd_tx6, to.is_ipv6()) {
                    (_, false) => Ok(&self.bfd_tx4),
                    (Ok(s), true) => Ok(s),
                    (Err(why), true) => Err(why.clone()),
                };
                let sent = sock.and_then(|s| match s.try_send_to(&bytes, to) {
                    // A full send buffer loses one packet; BFD's
                    // multiplier is there for that.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                    r => r.map_err(|e| format!("sending to {to}: {e}")),
                });
                r.on_bfd_sent(n, sent.map(drop));
            }
            Out::TablesChanged => self.tables.notify_one(),
        }
        None
    }

    /// Reads `routed.toml` and the certificates again and applies them
    /// (SIGHUP and the control socket's `reload`), telling systemd around
    /// it. A config that does not load, or that the router refuses, changes
    /// nothing: the error names the file and the key, and is logged.
    pub fn reload(self: &Arc<Self>) -> Result<cubenet_api::routed::Reloaded, String> {
        self.supervisor.tell(Notice::reloading_now());
        let file = self.config_path.display().to_string();
        let r = crate::config::Loaded::load(&self.config_path).and_then(|l| {
            let md5 = l.md5;
            let done = self
                .with(|r, now| r.reconfigure(l.cfg, l.certs, now))
                .map_err(|e| format!("{file}: {e}"))?;
            self.set_md5_keys(md5);
            Ok(done)
        });
        match &r {
            Ok(c) => {
                self.sync_probes();
                if let Err(e) = self.serve() {
                    tracing::warn!("after the reload: {e}");
                }
                self.gtsm_listeners();
                if !c.added.is_empty() {
                    // overlayd tells only changes: take its whole picture
                    // again, for the tunnels to added gateways (one reached
                    // only through the reflectors is used only once its
                    // tunnel is known up).
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = snapshot(&me, &me.cfg.overlayd_socket).await {
                            tracing::warn!("after the reload, overlayd's tunnels: {e}");
                        }
                    });
                }
                let reset: Vec<&str> = c.reset.iter().map(|x| x.name.as_str()).collect();
                tracing::info!(
                    config = %file,
                    added = ?c.added,
                    removed = ?c.removed,
                    reset = ?reset,
                    export_updated = ?c.updated,
                    prefixes_added = ?c.prefixes_added,
                    prefixes_removed = ?c.prefixes_removed,
                    probes_changed = ?c.probes_changed,
                    "reloaded"
                );
            }
            Err(e) => tracing::error!("reload refused, running configuration kept: {e}"),
        }
        self.supervisor.tell(Notice::Ready);
        r
    }

    /// Health probes of site prefixes: one task per prefix, each on its own
    /// interval, so a slow probe delays no other. Started for the prefixes
    /// the router probes now; a task whose prefix went or whose probe
    /// changed is stopped.
    fn sync_probes(self: &Arc<Self>) {
        let want: HashMap<ipnet::IpNet, crate::probe::Probe> =
            self.router().probes().into_iter().collect();
        let mut running = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|prefix, (probe, task)| {
            let keep = want.get(prefix) == Some(probe);
            if !keep {
                task.abort();
            }
            keep
        });
        for (prefix, probe) in want {
            if running.contains_key(&prefix) {
                continue;
            }
            let me = self.clone();
            let p = probe.clone();
            let task = tokio::spawn(async move {
                let mut t = tokio::time::interval(p.interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    t.tick().await;
                    let r = crate::probe::run(&p.check, p.timeout).await;
                    if let Err(e) = &r {
                        tracing::debug!(%prefix, check = %p.check, "probe failed: {e}");
                    }
                    me.with(|router, now| router.probe_result(prefix, r, now));
                }
            });
            running.insert(prefix, (probe, task.abort_handle()));
        }
    }

    /// When every neighbour runs GTSM, the listeners themselves take only
    /// TTL 255, so a connection from farther away is not even accepted;
    /// else each accepted connection of a GTSM neighbour is checked from
    /// its first segment after the handshake on.
    fn gtsm_listeners(&self) {
        let all = self.router().neighbors_all_ttl_security();
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for (l, v6) in listeners.iter() {
            if let Err(e) = crate::sockets::receive_min(&**l, *v6, if all { 255 } else { 0 }) {
                tracing::warn!("BGP listener: GTSM: {e}");
            }
        }
    }

    /// Binds BFD, and BGP unless `listen` names its own addresses, to
    /// every address routed serves and is not bound to yet: its overlay
    /// addresses and its address on the link to each neighbour outside
    /// the overlay — never the underlay (audit L1). Called at start and
    /// after a reload (a new LAN neighbour may need a new address).
    fn serve(self: &Arc<Self>) -> Result<(), String> {
        let (own, lan) = self.router().served();
        let mut want = own;
        for n in lan {
            match crate::sockets::local_on_link_to(n) {
                Ok(Some(a)) => want.push(a),
                Ok(None) => tracing::warn!(
                    neighbor = %n,
                    "no address of ours is on a link to this neighbour: BGP and BFD are not \
                     served to it (add the address and reload)"
                ),
                Err(e) => return Err(format!("the interface addresses: {e}")),
            }
        }
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        for a in want {
            if served.contains(&a) {
                continue;
            }
            if a.is_ipv6() && self.bfd_tx6.is_err() {
                tracing::warn!(address = %a, "not served: no IPv6 here");
                continue;
            }
            let bfd = crate::sockets::bfd_receiver_at(a, BFD_PORT)
                .map_err(|e| format!("BFD listen [{a}]:{BFD_PORT}: {e}"))?;
            // Multihop BFD (neighbours with `bfd_multihop`); without it
            // those neighbours' BFD stays down, the others are unaffected.
            match crate::sockets::bfd_receiver_at(a, BFD_MULTIHOP_PORT) {
                Ok(s) => self.spawn_bfd(s, true),
                Err(e) => tracing::warn!(
                    "multihop BFD is off on {a}: listening on port {BFD_MULTIHOP_PORT}: {e}"
                ),
            }
            if self.cfg.listen.is_none() {
                let l = crate::sockets::bgp_listener_at(a, 179)
                    .map_err(|e| format!("BGP listen [{a}]:179: {e}"))?;
                self.spawn_accept(l, a.is_ipv6());
            }
            self.spawn_bfd(bfd, false);
            tracing::info!(address = %a, "serving BGP and BFD");
            served.insert(a);
        }
        Ok(())
    }

    /// Takes `keys` as the TCP-MD5 keys: set on every listener, the keys
    /// of addresses no longer configured removed.
    fn set_md5_keys(&self, keys: std::collections::BTreeMap<IpAddr, Vec<u8>>) {
        let mut md5 = self.md5.lock().unwrap_or_else(|p| p.into_inner());
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for (l, v6) in listeners.iter() {
            for gone in md5.keys().filter(|a| !keys.contains_key(a)) {
                let _ = crate::sockets::set_md5(&**l, *v6, *gone, &[]);
            }
            for (a, k) in &keys {
                if let Err(e) = Self::md5_on(&**l, *v6, *a, k) {
                    tracing::warn!(neighbor = %a, "TCP-MD5 on a BGP listener: {e}");
                }
            }
        }
        *md5 = keys;
    }

    /// Sets `peer`'s key on a socket of family `v6` where it can apply: an
    /// IPv4-only socket takes no IPv6 peer; an IPv6-only one takes no
    /// IPv4 peer (refused by the kernel, and not an error).
    fn md5_on(
        fd: &impl std::os::fd::AsRawFd,
        v6: bool,
        peer: IpAddr,
        key: &[u8],
    ) -> std::io::Result<()> {
        match (v6, peer.is_ipv6()) {
            (false, true) => Ok(()),
            (true, false) => {
                let _ = crate::sockets::set_md5(fd, true, peer, key);
                Ok(())
            }
            _ => crate::sockets::set_md5(fd, v6, peer, key),
        }
    }

    /// Reads BFD from `sock`, the multihop port's or the single-hop one's:
    /// a neighbour's BFD counts on its own port only.
    fn spawn_bfd(self: &Arc<Self>, sock: UdpSocket, multihop: bool) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            let mut no_interface = cubenet_daemon::LogLimit::per_second();
            // The overlay interface's index, looked up again only when a
            // datagram came by another (overlayd may have made its TUN
            // anew, or a LAN neighbour's came by its LAN).
            let mut overlay = None;
            loop {
                match crate::sockets::recv_with_ttl(&sock, &mut buf).await {
                    Ok(d) => me.with(|r, now| {
                        if r.bfd_multihop(d.from.ip()) == multihop {
                            // A gateway's BFD comes through the overlay
                            // interface.
                            if d.ifindex != overlay {
                                overlay = crate::sockets::ifindex(&r.cfg.interface);
                            }
                            if overlay.is_none() {
                                if let Some(more) = no_interface.note(now) {
                                    tracing::warn!(
                                        "interface {:?} (routed.toml `interface`, overlayd's TUN) \
                                         does not exist: BFD from gateways is discarded{more}",
                                        r.cfg.interface
                                    );
                                }
                            }
                            let via_overlay = d.ifindex.map(|i| Some(i) == overlay);
                            r.on_bfd_datagram(d.from.ip(), d.ttl, via_overlay, &buf[..d.len], now)
                        }
                    }),
                    Err(e) => tracing::debug!("BFD receive: {e}"),
                }
            }
        });
    }

    fn spawn_accept(self: &Arc<Self>, l: TcpListener, v6: bool) {
        for (a, k) in self.md5.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Err(e) = Self::md5_on(&l, v6, *a, k) {
                tracing::warn!(neighbor = %a, "TCP-MD5 on a BGP listener: {e}");
            }
        }
        let l = Arc::new(l);
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((l.clone(), v6));
        let me = self.clone();
        tokio::spawn(async move {
            let mut refused = cubenet_daemon::LogLimit::per_second();
            loop {
                let (stream, from) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        cubenet_daemon::after_accept_error("BGP listener", &e).await;
                        continue;
                    }
                };
                // An IPv4 neighbour on a dual-stack [::] listener arrives
                // as ::ffff:a.b.c.d.
                let peer = from.ip().to_canonical();
                let n = {
                    let r = me.router();
                    r.neighbor_by_addr(peer)
                        .map(|n| (n, r.neighbors[n].cfg.ttl_security))
                };
                match n {
                    Some((n, gtsm)) => {
                        // GTSM: what follows the handshake must come with
                        // TTL 255, or the kernel drops it.
                        if gtsm {
                            if let Err(e) =
                                crate::sockets::receive_only_255(&stream, from.is_ipv6())
                            {
                                tracing::warn!(%from, "BGP connection refused: GTSM: {e}");
                                continue;
                            }
                        }
                        me.run_conn(n, stream, false)
                    }
                    None => {
                        drop(stream);
                        if let Some(more) = refused.note(Instant::now()) {
                            tracing::info!(
                                %from,
                                "BGP connection from an unknown address refused{more}"
                            );
                        }
                    }
                }
            }
        });
    }

    async fn connect(self: Arc<Self>, n: NeighborId) {
        let (addr, name, overlay, gtsm) = {
            let r = self.router();
            let nb = &r.neighbors[n];
            (
                nb.cfg.address,
                nb.cfg.name.clone(),
                nb.overlay,
                nb.cfg.ttl_security,
            )
        };
        let local = IpAddr::V4(self.cfg.router_id);
        let attempt = async {
            let sock = if addr.is_ipv4() {
                let s = TcpSocket::new_v4()?;
                // Speak to gateways from our overlay address: that is who
                // they expect. A LAN router gets the LAN address.
                if overlay {
                    s.bind(SocketAddr::new(local, 0))?;
                }
                s
            } else {
                TcpSocket::new_v6()?
            };
            // Every BGP packet leaves with TTL 255; with GTSM only 255 is
            // taken (RFC 5082), from the SYN-ACK on.
            crate::sockets::send_255(&sock, addr.is_ipv6())?;
            let key = self
                .md5
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&addr)
                .cloned();
            if let Some(k) = key {
                crate::sockets::set_md5(&sock, addr.is_ipv6(), addr, &k)?;
            }
            if gtsm {
                crate::sockets::receive_only_255(&sock, addr.is_ipv6())?;
            }
            sock.connect(SocketAddr::new(addr, 179)).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(stream)) => self.run_conn(n, stream, true),
            Ok(Err(e)) => {
                tracing::debug!(neighbor = %name, "connect: {e}");
                self.with(|r, now| r.on_connect_failed(n, &e.to_string(), now));
            }
            Err(_) => {
                tracing::debug!(neighbor = %name, "connect: timed out");
                self.with(|r, now| r.on_connect_failed(n, "timed out", now));
            }
        }
    }

    fn run_conn(self: &Arc<Self>, n: NeighborId, stream: TcpStream, outbound: bool) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().map(|a| a.ip());
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
        let queued = Arc::new(AtomicUsize::new(0));
        self.conns().insert(
            id,
            Conn {
                tx,
                queued: queued.clone(),
            },
        );
        let (mut rd, mut wr) = stream.into_split();
        self.writers.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(Some(b)) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
                queued.fetch_sub(b.len(), Ordering::Relaxed);
            }
            let _ = wr.shutdown().await;
            if me.writers.fetch_sub(1, Ordering::SeqCst) == 1 {
                me.writers_done.notify_waiters();
            }
        });
        // Our addresses on the link of this connection: a LAN router's
        // next hops of each family (a gateway's are its overlay addresses).
        let link = local.map(|a| {
            crate::sockets::link_addrs(a).unwrap_or_else(|e| {
                tracing::warn!(local = %a, "the addresses of the link: {e}");
                crate::sockets::LinkAddrs::default()
            })
        });
        self.with(|r, now| {
            if let Some(link) = link {
                r.set_link(n, link, now);
            }
            r.on_connected(n, id, outbound, local, now)
        });
        let me = self.clone();
        tokio::spawn(async move {
            let why = me.read_loop(n, id, &mut rd).await;
            if me.conns().remove(&id).is_some() {
                me.with(|r, now| r.on_closed(n, id, &why, now));
            }
        });
    }

    async fn read_loop(
        self: &Arc<Self>,
        n: NeighborId,
        id: u64,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
    ) -> String {
        let mut buf = Vec::with_capacity(wire::MAX_LEN);
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            loop {
                match wire::frame_len(&buf) {
                    Ok(Some(len)) if buf.len() >= len => {
                        let msg: Vec<u8> = buf.drain(..len).collect();
                        self.with(|r, now| {
                            let m = r.decode_from(n, &msg);
                            r.on_message(n, id, m, now)
                        });
                        if !self.conns().contains_key(&id) {
                            return "closed by us".into();
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        self.with(|r, now| r.on_message(n, id, Err(e.clone()), now));
                        return format!("bad header: {e}");
                    }
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) => return "connection closed by the neighbour".into(),
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(e) => return format!("read: {e}"),
            }
        }
    }
}

/// A BGP connection's send queue (its writer task drains it) and the bytes
/// waiting in it.
struct Conn {
    tx: mpsc::UnboundedSender<Option<Vec<u8>>>,
    queued: Arc<AtomicUsize>,
}

/// Bytes that may wait for one neighbour at most: a full table of a million
/// routes is about 30 MiB of UPDATEs; past this the neighbour is not
/// reading and its connection is closed (audit M10: the queue had no bound).
const MAX_QUEUED: usize = 64 << 20;

pub async fn run(
    cfg: Config,
    router: Router,
    md5: std::collections::BTreeMap<IpAddr, Vec<u8>>,
    config_path: PathBuf,
) -> Result<(), String> {
    let (bfd_tx4, bfd_tx6) =
        crate::sockets::bfd_senders().map_err(|e| format!("BFD send socket: {e}"))?;
    if let Err(e) = &bfd_tx6 {
        tracing::warn!("BFD over IPv6 is off: {e}");
    }
    // `listen` given: BGP listens there (wildcards included), as told.
    let mut listeners = Vec::new();
    for a in cfg.listen.iter().flatten() {
        let l = bgp_listener(*a, cfg.listen.as_deref().unwrap_or_default())
            .map_err(|e| format!("listen {a}: {e}"))?;
        listeners.push(l);
    }
    let ctl = crate::ctl::bind(&cfg.control_socket)
        .map_err(|e| format!("control socket {}: {e}", cfg.control_socket.display()))?;
    // systemd (Type=notify) hears when this serves, reloads and stops.
    let supervisor = Supervisor::from_env().map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
    let shared = Arc::new(Shared {
        router: Mutex::new(router),
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        bfd_tx4,
        bfd_tx6,
        tables: Notify::new(),
        wake: Notify::new(),
        writers: AtomicUsize::new(0),
        writers_done: Notify::new(),
        cfg: cfg.clone(),
        config_path,
        supervisor,
        listeners: Mutex::new(Vec::new()),
        served: Mutex::new(Default::default()),
        md5: Mutex::new(md5),
        probes: Mutex::new(HashMap::new()),
        restart_asked: Default::default(),
        restart: Notify::new(),
    });
    for l in listeners {
        let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
        shared.spawn_accept(l, v6);
    }
    shared.serve()?;
    shared.gtsm_listeners();
    tracing::info!(asn = cfg.asn, router_id = %cfg.router_id, neighbors = cfg.neighbors.len(), "routed running");

    {
        let me = shared.clone();
        tokio::spawn(async move {
            // Sleep until the router's next deadline; any event may bring
            // it closer, so events wake this loop to look again.
            loop {
                let now = Instant::now();
                let due = me.router().next_deadline(now);
                if due > now {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = me.wake.notified() => continue,
                    }
                }
                let mut r = me.router();
                r.on_tick(Instant::now());
                me.dispatch_all(&mut r);
                drop(r);
            }
        });
    }
    tokio::spawn(overlay_events(shared.clone()));
    tokio::spawn(sync_tables(shared.clone()));
    shared.sync_probes();
    tokio::spawn(crate::ctl::serve(ctl, shared.clone()));
    if let Some(addr) = cfg.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics_listen {addr}: {e}"))?;
        // The page's title names this gateway as its certificate does (the
        // identity is not reloaded: a new one takes a restart).
        let name = cubenet_certs::load_node_cert(&cfg.cert)
            .map(|c| c.name().to_string())
            .unwrap_or_default();
        let (me, page) = (shared.clone(), shared.clone());
        tokio::spawn(cubenet_daemon::metrics::serve_metrics(
            l,
            cubenet_daemon::metrics::Pages {
                metrics: move || {
                    let r = me.router();
                    let now = Instant::now();
                    crate::prom::render(&r.status(now), &r.routes(now))
                },
                status_html: move || {
                    let (status, routes) = {
                        let r = page.router();
                        let now = Instant::now();
                        (r.status(now), r.routes(now))
                    };
                    crate::page::render(&name, &status, &routes, cubenet_certs::time::unix_now())
                },
            },
        ));
    }

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    // systemd (Type=notify): serving once the BGP, BFD, control and
    // metrics sockets are bound and the signals are handled.
    let supervisor = &shared.supervisor;
    supervisor.tell(Notice::Ready);
    let mut watchdog = notify::watchdog_timer(supervisor);
    let mut restart = false;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = shared.restart.notified() => { restart = true; break; }
            // The outcome is logged by the reload itself. It reads files
            // and takes the router lock briefly: no await in between.
            _ = hup.recv() => { let _ = shared.reload(); }
            _ = notify::next_watchdog_tick(&mut watchdog) => {
                // Alive means the router answers: a router lock that is
                // never released starves the watchdog, and systemd
                // restarts the daemon.
                drop(shared.router());
                supervisor.tell(Notice::Watchdog);
            }
        }
    }
    if restart {
        // RFC 4724: no NOTIFICATION, and the kernel's and overlayd's routes
        // stay; the sockets close with the exec, and the neighbours that
        // help keep our routes until the new process has sent them again.
        let e = restart_in_place(&cfg);
        tracing::error!("graceful restart failed, stopping instead: {e}");
    }
    supervisor.tell(Notice::Stopping);
    tracing::info!("routed stopping; overlayd keeps its routes");
    // RFC 8326: first the routes go out again as GRACEFUL_SHUTDOWN, so
    // the neighbours move their traffic while this gateway still forwards.
    let drain = Duration::from_millis(cfg.timers.shutdown_drain_ms);
    if !drain.is_zero() && shared.with(|r, now| r.graceful_shutdown(now)) {
        tracing::info!(
            drain_ms = cfg.timers.shutdown_drain_ms,
            "routes announced as GRACEFUL_SHUTDOWN"
        );
        tokio::time::sleep(drain).await;
    }
    // Every neighbour hears a Cease (administrative shutdown, RFC 4486)
    // now rather than noticing by BFD or the hold timer; the writers get
    // a moment to put it on the wire.
    shared.with(|r, now| r.shutdown(now));
    let flushed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let done = shared.writers_done.notified();
            if shared.writers.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    })
    .await;
    if flushed.is_err() {
        tracing::warn!("not every neighbour's connection closed within 2 s");
    }
    if cfg.kernel_routes {
        if let Err(e) =
            crate::kernel::reconcile(&cfg.interface, cfg.route_protocol, &[], true).await
        {
            tracing::warn!("removing kernel routes: {e}");
        }
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(())
}

/// A BGP listener on `addr`. An IPv6 one is IPv6-only when `all` also
/// lists an IPv4 address on its port (both can be bound then), else
/// dual-stack, so `[::]:179` alone takes IPv4 neighbours too.
pub fn bgp_listener(addr: SocketAddr, all: &[SocketAddr]) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let v4_beside = all.iter().any(|a| a.is_ipv4() && a.port() == addr.port());
        s.set_only_v6(v4_beside)?;
    }
    // Every BGP packet leaves with TTL 255, the SYN-ACK included (GTSM:
    // a neighbour that checks for 255 would drop anything less).
    crate::sockets::send_255(&s, addr.is_ipv6())?;
    if addr.is_ipv6() {
        let _ = crate::sockets::send_255(&s, false);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    TcpListener::from_std(s.into())
}

/// Follows overlayd's attach/detach events; reconnects when it restarts.
async fn overlay_events(me: Arc<Shared>) {
    let path = me.cfg.overlayd_socket.clone();
    loop {
        if let Err(e) = follow(&me, &path).await {
            tracing::debug!("overlayd events: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(me: &Arc<Shared>, path: &std::path::Path) -> Result<(), CallError> {
    let mut c = tokio::time::timeout(crate::overlay::OVERLAYD_CALL, Client::connect(path))
        .await
        .map_err(|_| CallError::TimedOut {
            path: path.to_path_buf(),
            after: crate::overlay::OVERLAYD_CALL,
        })??
        .with_deadline(crate::overlay::OVERLAYD_CALL);
    // Subscribed (acknowledged) first, then the snapshot: nothing falls in
    // between.
    let _: api::Subscribed = c.call(&api::Request::Subscribe).await?;
    snapshot(me, path).await?;
    loop {
        match c.next::<api::Event>().await? {
            // Events were lost: take the whole picture again.
            api::Event::Lagged { .. } => snapshot(me, path).await?,
            api::Event::Attached {
                role: api::Role::Host,
                addresses,
                ..
            } => me.with(|r, now| r.attach(&addresses, now)),
            api::Event::Detached {
                role: api::Role::Host,
                addresses,
                ..
            } => me.with(|r, now| r.detach(&addresses, now)),
            api::Event::GatewayUp { name } => me.with(|r, now| r.tunnel(&name, true, now)),
            api::Event::GatewayDown { name } => me.with(|r, now| r.tunnel(&name, false, now)),
            _ => {}
        }
    }
}

/// The hosts attached to overlayd now, as the full set, and its gateway
/// tunnels' state.
async fn snapshot(me: &Arc<Shared>, path: &std::path::Path) -> Result<(), CallError> {
    let hosts = crate::overlay::attached_hosts(path).await?;
    let tunnels = crate::overlay::gateway_tunnels(path).await?;
    tracing::info!(
        hosts = hosts.len(),
        gateways = tunnels.len(),
        "following overlayd"
    );
    me.with(|r, now| {
        r.set_attached(&hosts, now);
        r.set_tunnels(&tunnels, now);
    });
    me.tables.notify_one();
    Ok(())
}

/// Replaces this process with routed again, same arguments, telling it
/// that it restarted gracefully; returns only if that failed.
fn restart_in_place(cfg: &Config) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    tracing::info!(
        restart_time_s = cfg.graceful_restart.restart_time_s,
        "graceful restart: routed starts again in place"
    );
    // The program as started (an upgrade replaces the file: the new one
    // runs), else this process's own.
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::current_exe().ok());
    let Some(exe) = exe else {
        return std::io::Error::other("cannot tell which program this is");
    };
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(RESTARTED_ENV, cubenet_certs::time::unix_now().to_string())
        .exec()
}

/// Whether this process was started by a graceful restart less than the
/// restart time ago (the variable is removed either way).
pub fn restarted_gracefully(cfg: &Config) -> bool {
    let Some(v) = std::env::var_os(RESTARTED_ENV) else {
        return false;
    };
    std::env::remove_var(RESTARTED_ENV);
    let at: Option<u64> = v.to_str().and_then(|s| s.parse().ok());
    at.is_some_and(|t| {
        cubenet_certs::time::unix_now().saturating_sub(t)
            <= u64::from(cfg.graceful_restart.restart_time_s)
    })
}

/// Writes the best routes into overlayd and the kernel when they change.
async fn sync_tables(me: Arc<Shared>) {
    let mut feed = RouteFeed::new(&me.cfg.overlayd_socket);
    // What the kernel was last given, and whether stale routes were pruned.
    type KernelRoutes = (bool, Vec<crate::kernel::Want>);
    let mut last_kernel: Option<KernelRoutes> = None;
    loop {
        let _ = tokio::time::timeout(RESYNC, me.tables.notified()).await;
        let (ready, fib, kernel) = {
            let r = me.router();
            (r.fib_ready(), r.feed_table(), r.kernel_routes())
        };
        // Stopping: overlayd keeps its table, and the kernel's routes go
        // once, at exit.
        let Some(fib) = fib else {
            continue;
        };
        // Until routed owns the table (its neighbours back, or the startup
        // grace over) what it has learned is merged in and nothing is
        // removed: a running overlayd keeps forwarding on the routes of
        // before the restart, and one that restarted with routed (an empty
        // table) forwards on the first routes learned instead of waiting.
        if ready || !fib.is_empty() {
            match feed.push(&fib, ready).await {
                Ok(p) if p.resynced => {
                    tracing::info!(routes = p.routes, merge = !ready, "overlayd table resynced")
                }
                Ok(_) => {}
                Err(CallError::Refused(e)) => tracing::warn!("overlayd refused routes: {e}"),
                Err(e) => tracing::debug!("overlayd: {e}"),
            }
        }
        if me.cfg.kernel_routes && last_kernel.as_ref() != Some(&(ready, kernel.clone())) {
            // Stale routes go only once routed owns the table.
            match crate::kernel::reconcile(&me.cfg.interface, me.cfg.route_protocol, &kernel, ready)
                .await
            {
                Ok(()) => last_kernel = Some((ready, kernel)),
                Err(e) => tracing::warn!("kernel routes: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `listen = ["0.0.0.0:P", "[::]:P"]` binds both (it failed with
    /// "address in use"); `["[::]:P"]` alone takes IPv4 too, and an IPv4
    /// neighbour's address comes out as IPv4, not `::ffff:`.
    #[tokio::test]
    async fn listeners_of_both_families_on_one_port_and_dual_stack_alone() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let v4: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        let v6: SocketAddr = format!("[::]:{port}").parse().unwrap();
        let both = [v4, v6];
        let a = bgp_listener(v4, &both).unwrap();
        let b = bgp_listener(v6, &both).expect("IPv6 beside IPv4 on one port");
        drop((a, b));
        let alone = bgp_listener(v6, &[v6]).unwrap();
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, _c) = tokio::join!(alone.accept(), connect);
        let (_, from) = accepted.unwrap();
        assert!(
            from.ip().is_ipv6(),
            "{from}: dual-stack gives a mapped address"
        );
        assert_eq!(
            from.ip().to_canonical(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
