//! Datagrams from the network: screening and answering handshakes, admitting
//! new keys (gateways), decrypting, and checking what a peer may send.

use super::*;

impl Node {
    /// A datagram from the network.
    pub fn on_datagram(&self, dgram: &[u8], from: SocketAddr, now: Instant, out: &mut Outbox) {
        if is_initiation(dgram) {
            if self.screen_initiation(dgram, from, now, out) {
                self.on_initiation(dgram, from, now, out);
            }
            return;
        }
        if let Some(index) = crate::stale::decode(dgram) {
            self.on_stale_hint(index, from, now, out);
            return;
        }
        let Ok(parsed) = Tunn::parse_incoming_packet(dgram) else {
            bump(&self.drops.invalid);
            return;
        };
        let index = match parsed {
            Packet::HandshakeResponse(ref r) => r.receiver_idx,
            Packet::PacketCookieReply(ref r) => r.receiver_idx,
            Packet::PacketData(ref d) => d.receiver_idx,
            Packet::HandshakeInit(_) => {
                // Not of an initiation's size: is_initiation said no.
                bump(&self.drops.invalid);
                return;
            }
        };
        let Some(peer) = self.peer_by_index(PeerId(index >> 8)) else {
            if matches!(parsed, Packet::PacketData(_)) {
                self.hint_stale(index, from, out);
            } else {
                bump(&self.drops.invalid);
            }
            return;
        };
        let kind = match parsed {
            Packet::PacketData(_) => Kind::Data,
            Packet::HandshakeResponse(_) => Kind::Response,
            _ => Kind::Other,
        };
        self.receive(&peer, dgram, from, kind, now, out);
    }

    /// Data for a session this node does not have: most likely a peer
    /// still on a session of this gateway's previous process. A gateway
    /// tells it (rate limited; see [`crate::stale`]); its hosts initiate.
    fn hint_stale(&self, index: u32, from: SocketAddr, out: &mut Outbox) {
        bump(&self.drops.unknown_session);
        if self.role() == Role::Gateway
            && self.stale_hints.fetch_add(1, Ordering::Relaxed) < crate::stale::PER_SECOND
        {
            out.net.push(from, &crate::stale::encode(index));
        }
    }

    /// A gateway says the session we send on is gone: when it is one of
    /// ours (its endpoint, and the index our last in-band message carried),
    /// handshake now instead of after `probe.misses` lost probes. Only hosts
    /// act on it: a gateway that restarts initiates to its gateways itself,
    /// and a host has only its few configured gateways to look through.
    fn on_stale_hint(&self, index: u32, from: SocketAddr, now: Instant, out: &mut Outbox) {
        if self.role() != Role::Host || index == 0 || self.leaving.load(Ordering::Relaxed) {
            bump(&self.drops.invalid);
            return;
        }
        let mut c = self.ctl();
        let peer = c
            .peers
            .values()
            .find(|p| {
                p.configured.is_some()
                    && p.endpoint() == Some(from)
                    && p.remote_index.load(Ordering::Relaxed) == index
            })
            .cloned();
        let Some(peer) = peer else {
            bump(&self.drops.invalid);
            return;
        };
        // One handshake per session, whatever else arrives naming it.
        peer.remote_index.store(0, Ordering::Relaxed);
        tracing::info!(peer = %peer.name(), "gateway lost our session (restarted): handshaking");
        // Down now: what goes into that session is lost, so traffic moves
        // to another gateway until this one answers probes again, and the
        // tick retries the handshake with back-off if this one is lost.
        if let Some(t) = c.update_health(&peer, |h| h.session_lost(now)).flatten() {
            self.gateway_transition(&mut c, &peer, t, now, out);
        }
        let mut buf = [0u8; 148];
        let sent = match peer.tunn().format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(b) => {
                out.net.push(from, b);
                true
            }
            _ => false,
        };
        if sent {
            if let Some(x) = c.ctl(&peer) {
                x.retry.started(now);
            }
        }
    }

    /// The cheap checks of a handshake initiation, before any
    /// Diffie-Hellman: mac1; above `limits.handshake_rate` initiations a
    /// second a cookie (mac2) proving the source address, else a cookie
    /// reply goes out; and then the proven address's own rate
    /// ([`crate::source_limit`], audit M12). True when the initiation may
    /// go on to [`Node::on_initiation`]; the driver lets those wait while
    /// other datagrams go first.
    pub fn screen_initiation(
        &self,
        dgram: &[u8],
        from: SocketAddr,
        now: Instant,
        out: &mut Outbox,
    ) -> bool {
        let mut cookie = [0u8; 64];
        if self
            .mac_only
            .verify_packet(Some(from.ip()), dgram, &mut cookie)
            .is_err()
        {
            bump(&self.drops.invalid);
            return false;
        }
        let under_load =
            self.initiations.fetch_add(1, Ordering::Relaxed) >= self.cfg.limits.handshake_rate;
        if !under_load {
            return true;
        }
        match self
            .cookies
            .verify_packet(Some(from.ip()), dgram, &mut cookie)
        {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(c)) => {
                bump(&self.drops.cookies_sent);
                out.net.push(from, c);
                return false;
            }
            Err(_) => {
                bump(&self.drops.invalid);
                return false;
            }
        }
        // Only now is the source address known to be the sender's: a
        // forged one must not spend a real host's allowance.
        if !lock(&self.sources).allow(from.ip(), now) {
            bump(&self.drops.handshake_source_limit);
            return false;
        }
        true
    }

    /// A screened handshake initiation: the Diffie-Hellman that reveals the
    /// initiator's key, then the handshake with a known or admitted peer.
    pub fn on_initiation(&self, dgram: &[u8], from: SocketAddr, now: Instant, out: &mut Outbox) {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(dgram) else {
            bump(&self.drops.invalid);
            return;
        };
        let key = match parse_handshake_anon(&self.secret, &self.public, &init) {
            Ok(h) => h.peer_static_public,
            Err(_) => {
                bump(&self.drops.invalid);
                return;
            }
        };
        let known = self.ctl().peers.by_key(&key).cloned();
        let peer = match known {
            Some(p) => p,
            None => match self.admit(key, now) {
                Some(p) => p,
                None => return,
            },
        };
        self.receive(&peer, dgram, from, Kind::Initiation, now, out);
    }

    /// A datagram for `peer`'s tunnel.
    pub(super) fn receive(
        &self,
        peer: &Arc<Peer>,
        dgram: &[u8],
        from: SocketAddr,
        kind: Kind,
        now: Instant,
        out: &mut Outbox,
    ) {
        // Decrypt straight into a TUN buffer: a packet for this node goes
        // out without another copy.
        let mut buf = out.tun.take(dgram.len().max(256));
        let mut inner_len = None;
        let mut ok = false;
        {
            let mut tunn = peer.tunn();
            match tunn.decapsulate(Some(from.ip()), dgram, &mut buf[TUN_HEADROOM..]) {
                TunnResult::Done => ok = true,
                TunnResult::Err(WireGuardError::DuplicateCounter) => bump(&self.drops.replayed),
                TunnResult::Err(_) => bump(&self.drops.invalid),
                TunnResult::WriteToNetwork(b) => {
                    ok = true;
                    out.net.push(from, b);
                    // Flush packets queued while the handshake ran.
                    let mut more = vec![0u8; 65_600];
                    while let TunnResult::WriteToNetwork(b) = tunn.decapsulate(None, &[], &mut more)
                    {
                        out.net.push(from, b);
                    }
                }
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    ok = true;
                    inner_len = Some(p.len());
                }
            }
        }
        if ok {
            // Authenticated: the peer is at `from` now (roaming). Not on a
            // cookie reply: anyone who saw our initiation can forge one
            // (audit L6).
            if kind != Kind::Other {
                peer.set_endpoint(from);
            }
            let handshake = matches!(kind, Kind::Response | Kind::Initiation);
            if handshake {
                // A new session: a stale-session hint naming the index of
                // the one before (already on its way) must not take this
                // one down. The next in-band message notes the new index.
                peer.remote_index.store(0, Ordering::Relaxed);
            }
            // A load first: the swap would write a shared line per packet.
            let first_data = kind == Kind::Data
                && !peer.confirmed.load(Ordering::Relaxed)
                && !peer.confirmed.swap(true, Ordering::Relaxed);
            // Data of a known session needs no control state.
            if handshake || first_data {
                let mut c = self.ctl();
                if handshake {
                    if let Some(x) = c.ctl(peer) {
                        x.handshake_at = Some(now);
                        x.pmtu.wake(now);
                    }
                }
                if first_data {
                    self.maybe_attach(&mut c, peer, now);
                }
                if kind == Kind::Response && peer.configured.is_some() {
                    self.present_cert(&mut c, peer, now, out);
                    self.probe_now(&mut c, peer, now, out);
                }
            }
        }
        match inner_len {
            Some(n) if ok => {
                buf.truncate(TUN_HEADROOM + n);
                self.on_inner(peer, buf, now, out);
            }
            _ => out.tun.recycle(buf),
        }
    }

    /// A new key completed the first half of a handshake (gateways only).
    pub(super) fn admit(&self, key: [u8; 32], now: Instant) -> Option<Arc<Peer>> {
        let id = self.identity();
        if id.role() != Role::Gateway {
            // Hosts talk to their configured gateways only.
            bump(&self.drops.invalid);
            return None;
        }
        // A certificate from the cert directory was valid when it was
        // loaded; it must still be now (expiry, a newer revocation list).
        // Checked before the control state is taken: a signature costs.
        let cert = id
            .directory
            .get(&key)
            .filter(|c| id.trust.validate(c, self.unix()).is_ok())
            .cloned();
        let mut c = self.ctl();
        let t = &mut c.peers;
        if let Some(p) = t.by_key(&key) {
            return Some(p.clone());
        }
        if t.is_full() {
            bump(&self.drops.peers_full);
            return None;
        }
        if t.pending.len() >= self.cfg.limits.max_pending
            && !t.make_pending_room(now, &self.drops.pending_evicted)
        {
            bump(&self.drops.pending_full);
            return None;
        }
        let index = t.alloc_index();
        let peer = Arc::new(Peer::new(
            index,
            key,
            None,
            self.new_tunn(key, index, None),
            now,
        ));
        t.insert(peer.clone(), self.new_ctl(&peer));
        match cert {
            Some(cert) => peer.set_cert(Some(cert)),
            None => {
                t.pending.insert(index);
            }
        }
        drop(c);
        tracing::debug!(peer = %peer.name(), "new peer");
        Some(peer)
    }

    /// A decrypted packet from `peer`, after [`TUN_HEADROOM`] bytes of `buf`.
    pub(super) fn on_inner(&self, peer: &Arc<Peer>, buf: Vec<u8>, now: Instant, out: &mut Outbox) {
        let mut buf = buf;
        let n = buf.len() - TUN_HEADROOM;
        peer.count_rx(n);
        let deliver = self.check_inner(peer, &mut buf[TUN_HEADROOM..], now, out);
        match deliver {
            Some(true) => out.tun.push_buf(buf, n),
            _ => out.tun.recycle(buf),
        }
    }

    /// Decides what happens to a decrypted packet: `Some(true)` = deliver to
    /// our TUN; otherwise it was consumed (forwarded, answered or dropped).
    pub(super) fn check_inner(
        &self,
        peer: &Arc<Peer>,
        pkt: &mut [u8],
        now: Instant,
        out: &mut Outbox,
    ) -> Option<bool> {
        if inband::is_inband(pkt) {
            self.inband_rx.fetch_add(1, Ordering::Relaxed);
            match Message::decode(pkt) {
                Ok(m) => self.on_message(peer, m, now, out),
                Err(_) => bump(&self.drops.invalid),
            }
            return None;
        }
        let Some(cert) = peer.cert() else {
            bump(&self.drops.unauthenticated);
            return None;
        };
        let Some((src, dst)) = packet::addresses(pkt) else {
            bump(&self.drops.invalid);
            return None;
        };
        let id = self.identity.load();
        let refused = match cert.role() {
            Role::Host => (!cert.owns_addr(src)).then_some(&self.drops.spoofed),
            // A host takes any source from the gateways it chose: they
            // check sources where traffic enters the overlay.
            Role::Gateway if id.role() == Role::Host && peer.configured.is_some() => None,
            // A gateway: its own addresses and subnets, and what our table
            // has a path for through it (audit H5).
            Role::Gateway => (!cert.owns_addr(src)
                && !cert.body.subnets.iter().any(|n| n.contains(&src))
                && !self.reverse_path(peer, &cert, &id, src))
            .then_some(&self.drops.no_reverse_path),
        };
        if let Some(counter) = refused {
            bump(counter);
            peer.spoofed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if id.role() == Role::Host {
            if !id.cert.owns_addr(dst) {
                bump(&self.drops.not_for_us);
                return None;
            }
            return self.firewall_admits(peer, pkt, now, out).then_some(true);
        }
        // Addressed to the gateway itself: its own firewall decides.
        if id.cert.owns_addr(dst) {
            return self.firewall_admits(peer, pkt, now, out).then_some(true);
        }
        self.forward(peer, pkt, src, dst, now, out)
    }

    /// Whether a packet from gateway `peer` may carry source `src`: our
    /// table routes `src` through that gateway or another gateway of its
    /// site (a site's gateways are interchangeable: which one a packet
    /// leaves by is the site's choice), or `src` is a host attached here
    /// and `peer` is a gateway of our own site (a host handed over to a
    /// sibling, before we detach it). Strict uRPF over the paths in use;
    /// see the README's security section for what it leaves out.
    fn reverse_path(&self, peer: &Peer, cert: &NodeCert, id: &Identity, src: IpAddr) -> bool {
        let fib = self.fib.load();
        let Some(NextHop::Peers(ps)) = fib.lookup(src) else {
            return false;
        };
        let site = &cert.body.site;
        ps.iter().any(|q| {
            if *q == peer.index {
                return true;
            }
            let Some(c) = self.peer_by_index(*q).and_then(|p| p.cert()) else {
                return false;
            };
            match c.role() {
                Role::Gateway => c.body.site == *site,
                Role::Host => id.cert.body.site == *site,
            }
        })
    }
}
