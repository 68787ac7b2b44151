//! Time: ticks drive probes, handshake retries, certificate resends, expiry;
//! gateway tunnels go up and down and a host chooses its gateway; peers are
//! detached and removed.

use super::forward::Back;
use super::*;
use cubenet_daemon::damping;

impl Node {
    /// Starts handshakes with every configured gateway at once rather than
    /// waiting for the first packet.
    pub fn initiate_all(&self, now: Instant, out: &mut Outbox) {
        let mut c = self.ctl();
        for p in self.gateways(&c) {
            let Some(ep) = p.endpoint() else { continue };
            let mut buf = vec![0u8; 256];
            if let Some(x) = c.ctl(&p) {
                x.retry.started(now);
            }
            if let TunnResult::WriteToNetwork(b) =
                p.tunn().format_handshake_initiation(&mut buf, false)
            {
                out.net.push(ep, b);
            }
        }
    }

    pub(super) fn gateway_transition(
        &self,
        c: &mut Control,
        peer: &Arc<Peer>,
        t: Transition,
        now: Instant,
        out: &mut Outbox,
    ) {
        let up = t == Transition::Up;
        if !up {
            // It may come back as a new process: present our cert again,
            // and probe until it says it speaks hellos (it may be an older
            // version now).
            peer.our_cert_acked.store(false, Ordering::Relaxed);
            if let Some(x) = c.ctl(peer) {
                x.hello = false;
            }
        }
        tracing::info!(peer = %peer.name(), "gateway tunnel {}", if up { "up" } else { "down" });
        let name = peer.name();
        let e = if up {
            api::Event::GatewayUp { name }
        } else {
            api::Event::GatewayDown { name }
        };
        self.emit(c, e);
        self.update_active_gateway(c, now, out);
    }

    /// Chooses the gateway a host sends through; packets held while there
    /// was none go out through it.
    pub(super) fn update_active_gateway(&self, c: &mut Control, now: Instant, out: &mut Outbox) {
        if self.role() != Role::Host {
            return;
        }
        let gws = self.gateways(c);
        let Some(refs) = gws
            .iter()
            .map(|p| c.peers.ctl(p.index).map(|x| &x.health))
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let active = self.active_gateway();
        let current = active.and_then(|i| gws.iter().position(|p| p.index == i));
        let chosen = choose_gateway(
            current,
            &refs,
            now,
            Duration::from_millis(self.cfg.probe.failback_stable_ms),
        );
        let new = chosen.map(|c| gws[c].index);
        if new != active {
            let name = chosen.map(|c| gws[c].name());
            tracing::info!(gateway = ?name, "active gateway changed");
            self.active_gateway
                .store(new.map_or(0, |i| i.0), Ordering::Relaxed);
        }
        if let Some(p) = new.and_then(|i| self.peer_by_index(i)) {
            self.send_held(c, &p, now, out);
        }
    }

    /// Holds a host's packet until a gateway is usable.
    pub(super) fn hold(&self, c: &mut Control, pkt: &[u8], now: Instant) {
        self.expire_held(c, now);
        if c.held.len() >= HOLD_PACKETS || c.held_bytes + pkt.len() > HOLD_BYTES {
            bump(&self.drops.no_route);
            return;
        }
        c.held_bytes += pkt.len();
        c.held.push_back((now, pkt.to_vec()));
    }

    fn expire_held(&self, c: &mut Control, now: Instant) {
        while let Some((t, p)) = c.held.front() {
            if now.saturating_duration_since(*t) <= HOLD_FOR {
                break;
            }
            c.held_bytes -= p.len();
            c.held.pop_front();
            bump(&self.drops.no_route);
        }
    }

    fn send_held(&self, c: &mut Control, gw: &Peer, now: Instant, out: &mut Outbox) {
        if c.held.is_empty() {
            return;
        }
        self.expire_held(c, now);
        for (_, p) in std::mem::take(&mut c.held) {
            self.send_data(gw, &p, Back::Tun, now, out);
        }
        c.held_bytes = 0;
    }

    /// The tunnel's path MTU search: probes due now go out, and the data
    /// path gets what is known. Only over a working tunnel: a probe lost
    /// to a tunnel that is down says nothing about its MTU.
    fn step_pmtu(&self, c: &mut Control, peer: &Arc<Peer>, now: Instant, out: &mut Outbox) {
        if !self.cfg.interface.path_mtu_discovery {
            return;
        }
        let usable = if peer.configured.is_some() {
            peer.healthy()
        } else {
            peer.attached.load(Ordering::Relaxed)
        };
        let Some(x) = c.ctl(peer) else {
            return;
        };
        if peer.take_moved() {
            x.pmtu.restart(now);
        }
        if peer.take_big_sent() {
            x.pmtu.used(now);
        }
        if !usable || x.handshake_at.is_none() {
            return;
        }
        let send = x.pmtu.poll(now);
        let mtu = x.pmtu.mtu();
        publish_mtu(peer, mtu);
        if let Some(s) = send {
            tracing::debug!(peer = %peer.name(), seq = s.seq, sizes = ?s.sizes, mtu, "path MTU probes");
            for size in s.sizes {
                let m = Message::MtuProbe { seq: s.seq, size };
                self.send_to_peer(peer, &m.encode(), out);
            }
        }
    }

    /// A probe to a gateway at once (a session just came up): the tunnel
    /// is usable one round trip later rather than at the next tick.
    pub(super) fn probe_now(&self, c: &mut Control, peer: &Peer, now: Instant, out: &mut Outbox) {
        if peer.healthy() {
            return;
        }
        if let Some((seq, _)) = c.update_health(peer, |h| h.on_tick(now)) {
            self.send_probe(c, peer, seq, now, out);
        }
    }

    /// Our probe `seq` to a configured gateway. To a gateway that speaks
    /// hellos, while the tunnel is up, a hello: it acknowledges the other
    /// side's last probe too, so neither answers the other's. Otherwise a
    /// probe, which every version answers at once; a gateway's is marked
    /// [`SPEAKS_HELLO`], so another gateway knows it may use hellos.
    fn send_probe(&self, c: &mut Control, peer: &Peer, seq: u64, now: Instant, out: &mut Outbox) {
        let gateway = self.speaks_hellos();
        let m = match c.ctl(peer) {
            Some(x) if self.hellos_with(x, peer) => self.hello(x, seq, now),
            _ if gateway => Message::Probe {
                seq: seq | SPEAKS_HELLO,
            },
            _ => Message::Probe { seq },
        };
        self.send_message(peer, &m, out);
    }

    /// Whether this node speaks hellos: a gateway with them on.
    fn speaks_hellos(&self) -> bool {
        self.role() == Role::Gateway && self.cfg.probe.hellos
    }

    /// Whether the tunnel to `peer` is kept by hellos now: both speak
    /// them and it is up.
    pub(super) fn hellos_with(&self, x: &PeerCtl, peer: &Peer) -> bool {
        self.speaks_hellos() && x.hello && peer.healthy()
    }

    /// A hello carrying our probe `seq` and acknowledging the peer's last.
    pub(super) fn hello(&self, x: &PeerCtl, seq: u64, now: Instant) -> Message {
        let (heard, held) = x.heard.map_or((0, Duration::ZERO), |(s, at)| {
            (s, now.saturating_duration_since(at))
        });
        Message::Hello {
            seq,
            heard,
            held_us: u32::try_from(held.as_micros()).unwrap_or(u32::MAX),
            interval_ms: u32::try_from(self.cfg.probe.interval_ms).unwrap_or(u32::MAX),
            // An acknowledgement on the other side's next probe comes up
            // to one interval late: with fewer than two misses allowed,
            // that would be a miss.
            answer: self.cfg.probe.misses < 2,
        }
    }

    /// Shutting down: tells every peer with a session, and stops answering
    /// probes. The caller keeps forwarding a moment before it exits, for
    /// what was already on its way here.
    pub fn leave(&self, out: &mut Outbox) {
        self.leaving.store(true, Ordering::Relaxed);
        let c = self.ctl();
        for peer in c.peers.values() {
            let session = c
                .peers
                .ctl(peer.index)
                .is_some_and(|x| x.handshake_at.is_some());
            if session && (peer.configured.is_some() || peer.cert().is_some()) {
                self.send_message(peer, &Message::Leaving, out);
            }
        }
    }

    /// Removes a peer: its session ends, its routes go.
    pub(super) fn remove_peer(&self, c: &mut Control, peer: &Arc<Peer>, why: &str) {
        c.peers.remove(peer);
        self.edit_fib(c, |fib| fib.remove_peer(peer.index));
        if peer.attached.swap(false, Ordering::Relaxed) {
            // Attached implies a validated certificate: it says the role and
            // the addresses routed withdraws.
            if let Some(cert) = peer.cert() {
                self.announce_detached(c, peer, &cert, why);
            }
        }
    }

    /// Logs and sends the `detached` event of a peer that was attached.
    pub(super) fn announce_detached(
        &self,
        c: &mut Control,
        peer: &Peer,
        cert: &NodeCert,
        why: &str,
    ) {
        tracing::info!(peer = %peer.name(), "detached: {why}");
        let e = api::Event::Detached {
            name: peer.name(),
            role: api_role(cert.role()),
            site: cert.body.site.clone(),
            addresses: cert_addrs(cert),
            reason: why.to_string(),
        };
        self.emit(c, e);
    }

    /// Ends the session of a peer whose certificate is no longer valid: a
    /// configured gateway keeps its tunnel (a new session needs a valid
    /// certificate again), any other peer goes.
    pub(super) fn cut_session(&self, c: &mut Control, peer: &Arc<Peer>, why: &str) {
        tracing::warn!(peer = %peer.name(), "certificate no longer valid: {why}");
        let why = format!("certificate no longer valid: {why}");
        if peer.configured.is_some() {
            self.detach(c, peer, &why);
            peer.set_cert(None);
            peer.replace_tunn(self.new_tunn(peer.public_key, peer.index, Some(KEEPALIVE_S)));
        } else {
            self.remove_peer(c, peer, &why);
        }
    }

    /// Cuts the peers whose certificate expired (or is not valid yet) at
    /// the wall clock `unix`: a session does not outlive its certificate.
    /// Only the validity window is compared here (cheap, every second); the
    /// signature was checked when the certificate was accepted.
    pub(super) fn cut_expired(&self, c: &mut Control, unix: u64) {
        let peers: Vec<Arc<Peer>> = c.peers.values().cloned().collect();
        let mut next: Option<u64> = None;
        for peer in peers {
            let Some(cert) = peer.cert() else { continue };
            if let Err(e) = cert.check_validity_window(unix) {
                self.cut_session(c, &peer, &e.to_string());
            } else {
                let t = cert.body.not_after;
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        c.next_expiry = next;
    }

    /// Takes a peer's addresses out of the forwarding table and says so;
    /// the peer and its session stay.
    pub(super) fn detach(&self, c: &mut Control, peer: &Arc<Peer>, why: &str) {
        let Some(cert) = peer.cert() else { return };
        self.remove_cert_entries(c, peer, &cert);
        if peer.attached.swap(false, Ordering::Relaxed) {
            self.announce_detached(c, peer, &cert, why);
        }
    }

    /// How long probes take to declare a tunnel down.
    pub(super) fn probe_window(&self) -> Duration {
        self.cfg.probe.interval() * (self.cfg.probe.misses + 1)
    }

    /// Called every probe interval, with the monotonic and the wall clock.
    pub fn on_tick(&self, now: Instant, unix: u64, out: &mut Outbox) {
        self.unix.store(unix, Ordering::Relaxed);
        // boringtun's timers first, outside the control state: with many
        // peers they are most of a tick, and the workers need the control
        // state for handshakes and probes meanwhile.
        let peers: Vec<Arc<Peer>> = self.ctl().peers.values().cloned().collect();
        let mut buf = vec![0u8; 2048];
        let expired: Vec<bool> = peers
            .iter()
            .map(|peer| match peer.tunn().update_timers(&mut buf) {
                TunnResult::WriteToNetwork(b) => {
                    if let Some(ep) = peer.endpoint() {
                        out.net.push(ep, b);
                    }
                    false
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => true,
                _ => false,
            })
            .collect();
        let second = {
            let mut c = self.ctl();
            self.tick(&mut c, &peers, &expired, now, unix, out)
        };
        // The flows expire outside the control state (lock order).
        if second {
            self.fw().expire(now);
        }
    }

    /// The tick's work on the control state; true when a second has passed
    /// since the last once-a-second work. `expired[i]`: `peers[i]`'s session expired (boringtun says so).
    fn tick(
        &self,
        c: &mut Control,
        peers: &[Arc<Peer>],
        expired: &[bool],
        now: Instant,
        unix: u64,
        out: &mut Outbox,
    ) -> bool {
        c.next_tick = now + self.cfg.probe.interval();
        let mut buf = vec![0u8; 2048];
        let pending_timeout = Duration::from_millis(self.cfg.limits.pending_timeout_ms);
        let our_cert = self.identity().cert.encoded().to_vec();
        for (peer, &expired) in peers.iter().zip(expired) {
            // Removed since the list was taken.
            if !c.holds(peer) {
                continue;
            }
            let peer = peer.clone();
            self.step_pmtu(c, &peer, now, out);
            let Some(x) = c.peers.ctl(peer.index) else {
                continue;
            };
            let handshake_at = x.handshake_at;
            if expired && peer.configured.is_none() {
                let idle = now.saturating_duration_since(handshake_at.unwrap_or(peer.created));
                if idle > DEAD_PEER {
                    self.remove_peer(c, &peer, "session expired");
                    continue;
                }
            }
            if peer.configured.is_none() {
                if peer.cert().is_none() && now.duration_since(peer.created) > pending_timeout {
                    self.remove_peer(c, &peer, "no valid certificate");
                    continue;
                }
                // A peer that probes (an overlayd host) and has missed as
                // many of its probes as a host allows a gateway is not
                // reachable through this node now: detach it, so its routes
                // go at BFD speed instead of when the session expires. Its
                // session stays; its next probe attaches it again.
                let silent = c.peers.ctl(peer.index).is_some_and(|x| {
                    x.probes
                        .silent(now, self.cfg.probe.interval(), self.cfg.probe.misses)
                });
                let attached = peer.attached.load(Ordering::Relaxed);
                let cfg = self.damping();
                let Some(x) = c.ctl(&peer) else { continue };
                // The tunnel's flap state follows whether the host's probes
                // arrive, attached or not: a link that keeps flapping while
                // damping holds it down keeps its penalty up.
                let heard = x.probes.last.is_some() && !silent;
                let tracked = x.host_link.is_some();
                match (&mut x.host_link, cfg) {
                    (Some(l), _) if silent => {
                        let was = l.suppressed(now);
                        l.on_down(now);
                        if !was && l.suppressed(now) {
                            tracing::warn!(
                                peer = %peer.name(),
                                flaps = l.flaps(),
                                "host tunnel flapping: not attached again until its penalty decays"
                            );
                        }
                    }
                    (Some(l), _) if heard => l.on_up(now),
                    (None, Some(cfg)) if silent && attached => {
                        let mut l = damping::Link::new(cfg, now);
                        l.on_up(now);
                        l.on_down(now);
                        x.host_link = Some(Box::new(l));
                    }
                    _ => {}
                }
                if silent && attached {
                    self.detach(c, &peer, "no probe for the probe window");
                } else if heard && tracked && !attached && peer.confirmed.load(Ordering::Relaxed) {
                    // Heard again while damping held it down, and damping
                    // may let it go now.
                    self.maybe_attach(c, &peer, now);
                }
                continue;
            }
            // Configured gateway: keep a session up (retry handshakes after
            // 1 s, backing off to 8 s, rather than WireGuard's fixed 5 s),
            // probe it, present our cert. An unanswered probe may mean the
            // gateway restarted and lost our session: a fresh handshake
            // fixes that at once.
            // Between two gateways only the one with the lower key starts
            // this handshake: both at once collide and drop a few hundred
            // milliseconds of traffic. (A gateway that restarts initiates
            // to every gateway it knows anyway.)
            // Leaving: the peers were told and dropped our sessions. A
            // handshake now would bring this node back for the rest of
            // the drain (a host re-attached until it exits), and probes
            // would only draw stale-session hints.
            if self.leaving.load(Ordering::Relaxed) {
                continue;
            }
            let we_initiate =
                self.role() == Role::Host || self.public.as_bytes() < &peer.public_key;
            if !peer.healthy() {
                // A session younger than the probe window first gets the
                // chance to prove itself with probes: initiating again
                // would only cost both ends another handshake.
                let fresh = handshake_at
                    .is_some_and(|t| now.saturating_duration_since(t) < self.probe_window());
                // Its probes or hellos still arrive: it holds the session
                // (it encrypted them with it), only our probes go
                // unanswered (a path lost one way, a peer too busy to
                // answer in time). A handshake would not help, and on a
                // host short of CPU, handshakes for every tunnel that
                // misses probes are what keeps it short.
                let heard = c
                    .ctl(&peer)
                    .and_then(|x| x.heard)
                    .is_some_and(|(_, at)| now.saturating_duration_since(at) < self.probe_window());
                let due = c.ctl(&peer).is_some_and(|x| !heard && x.retry.due(now));
                if we_initiate && !fresh && due {
                    if let (Some(ep), TunnResult::WriteToNetwork(b)) = (
                        peer.endpoint(),
                        peer.tunn().format_handshake_initiation(&mut buf, true),
                    ) {
                        out.net.push(ep, b);
                    }
                }
            } else if let Some(x) = c.ctl(&peer) {
                x.retry.reset();
            }
            let Some((seq, t)) = c.update_health(&peer, |h| h.on_tick(now)) else {
                continue;
            };
            if let Some(t) = t {
                self.gateway_transition(c, &peer, t, now, out);
            }
            self.send_probe(c, &peer, seq, now, out);
            if !peer.our_cert_acked.load(Ordering::Relaxed) {
                if let Some(x) = c.ctl(&peer) {
                    if x.last_cert_sent
                        .is_none_or(|t| now.duration_since(t) >= CERT_RESEND)
                    {
                        x.last_cert_sent = Some(now);
                        self.send_message(&peer, &Message::Cert(our_cert.clone()), out);
                    }
                }
            }
        }
        self.update_active_gateway(c, now, out);
        self.expire_held(c, now);
        let second = now.duration_since(c.last_rate_reset) >= Duration::from_secs(1);
        if second {
            c.last_rate_reset = now;
            self.initiations.store(0, Ordering::Relaxed);
            self.stale_hints.store(0, Ordering::Relaxed);
        }
        // Every second (a peer attached since is looked at), and at the
        // first tick after the soonest expiry: a session ends within a
        // tick of its certificate's end, not up to a second later.
        if second || c.next_expiry.is_some_and(|t| unix > t) {
            self.cut_expired(c, unix);
        }
        self.ask_whois(c, now, out);
        self.check_expiry(c, now);
        second
    }

    /// Logs a warning, hourly, while this node's or the CA's certificate
    /// expires within [`EXPIRY_WARNING_DAYS`].
    pub(super) fn check_expiry(&self, c: &mut Control, now: Instant) {
        if c.expiry_checked
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(3600))
        {
            return;
        }
        c.expiry_checked = Some(now);
        let id = self.identity();
        let unix = self.unix() as i64;
        for (what, not_after) in [
            ("certificate", id.cert.body.not_after),
            ("CA certificate", id.trust.ca().body.not_after),
        ] {
            let days = (not_after as i64 - unix) / 86_400;
            if days <= EXPIRY_WARNING_DAYS {
                tracing::warn!(
                    days_left = days,
                    not_after = %cubenet_certs::time::format_rfc3339(not_after),
                    "this node's {what} expires in {days} days: sign a new one and reload (SIGHUP)"
                );
            }
        }
    }
}

/// Hands a tunnel's MTU to the data path, logging when it changed (by a
/// probe's acknowledgement or a round that timed out alike).
pub(super) fn publish_mtu(peer: &Peer, mtu: u16) {
    let was = peer.mtu();
    if usize::from(mtu) != was {
        peer.set_mtu(mtu);
        tracing::info!(peer = %peer.name(), mtu, was, "tunnel MTU");
    }
}
