//! The tokio driver: owns the TUN and UDP sockets, feeds [`Node`] and sends
//! what it returns. One task reads the TUN, one per UDP socket reads the
//! network, one ticks the timers, one serves the control socket.

use crate::config::Config;
use crate::identity::Identity;
use crate::node::{Node, Outbox};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tun_rs::AsyncDevice;

/// Socket buffers large enough that a burst does not overflow them.
const SOCKET_BUFFER: usize = 8 << 20;

struct Io {
    tun: Arc<AsyncDevice>,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
}

impl Io {
    async fn flush(&self, out: &mut Outbox) {
        for (ep, buf) in out.net.drain(..) {
            let sock = if ep.is_ipv4() { &self.v4 } else { &self.v6 };
            if let Some(s) = sock {
                if let Err(e) = s.send_to(&buf, ep).await {
                    tracing::debug!(%ep, "send: {e}");
                }
            }
        }
        for p in out.tun.drain(..) {
            if let Err(e) = self.tun.send(&p).await {
                tracing::debug!("tun write: {e}");
            }
        }
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
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
    UdpSocket::from_std(s.into())
}

pub async fn run(cfg: Config, config_path: PathBuf, identity: Identity) -> Result<(), String> {
    let ifname = cfg.interface.name.clone();
    let tun = tun_rs::DeviceBuilder::new()
        .name(&ifname)
        .mtu(cfg.interface.mtu)
        .build_async()
        .map_err(|e| format!("creating TUN {ifname}: {e} (overlayd needs CAP_NET_ADMIN)"))?;
    let tun = Arc::new(tun);
    let addresses = identity.cert.body.addresses.clone();
    let networks = identity.trust.ca().body.networks.clone();
    crate::netlink::configure(&ifname, cfg.interface.mtu, &addresses, &networks).await?;

    let mut v4 = None;
    let mut v6 = None;
    for addr in &cfg.listen {
        let s = udp_socket(*addr).map_err(|e| format!("listen {addr}: {e}"))?;
        let s = Some(Arc::new(s));
        if addr.is_ipv4() {
            v4 = s;
        } else {
            v6 = s;
        }
    }
    let io = Arc::new(Io { tun, v4, v6 });
    let socket_path = cfg.control_socket.clone();
    let listener = crate::ctl::bind(&socket_path)
        .map_err(|e| format!("control socket {}: {e}", socket_path.display()))?;
    let node = Node::new(cfg, identity)?;
    let id = node.identity();
    tracing::info!(
        name = id.cert.name(),
        role = %id.role(),
        interface = %ifname,
        "overlayd running"
    );
    for s in &id.directory_skipped {
        tracing::warn!("cert_dir: skipped {s}");
    }

    // Reload: shared by SIGHUP and the control socket.
    let reload = {
        let node = node.clone();
        Arc::new(move || -> Value {
            match Identity::load(&node.cfg, cubenet_certs::time::unix_now()) {
                Ok(id) => {
                    let r = node.reload_identity(id);
                    tracing::info!(config = %config_path.display(), "reloaded: {r}");
                    json!({"ok": true, "reload": r})
                }
                Err(e) => {
                    tracing::error!("reload refused, running identity kept: {e}");
                    json!({"ok": false, "error": e})
                }
            }
        })
    };

    let mut out = Outbox::default();
    node.initiate_all(&mut out);
    io.flush(&mut out).await;

    // TUN → network.
    {
        let (node, io) = (node.clone(), io.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut out = Outbox::default();
            loop {
                match io.tun.recv(&mut buf).await {
                    Ok(n) => {
                        node.on_tun_packet(&buf[..n], &mut out);
                        io.flush(&mut out).await;
                    }
                    Err(e) => tracing::warn!("tun read: {e}"),
                }
            }
        });
    }
    // Network → TUN / other peers.
    for sock in [io.v4.clone(), io.v6.clone()].into_iter().flatten() {
        let (node, io) = (node.clone(), io.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut out = Outbox::default();
            loop {
                match sock.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        node.on_datagram(&buf[..n], from, &mut out);
                        io.flush(&mut out).await;
                    }
                    Err(e) => tracing::debug!("udp recv: {e}"),
                }
            }
        });
    }
    // Timers.
    {
        let (node, io) = (node.clone(), io.clone());
        let interval = node.cfg.probe.interval();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut out = Outbox::default();
            loop {
                tick.tick().await;
                node.on_tick(Instant::now(), &mut out);
                io.flush(&mut out).await;
            }
        });
    }
    tokio::spawn(crate::ctl::serve(listener, node.clone(), reload.clone()));

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hup.recv() => { reload(); }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("overlayd stopping");
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}
