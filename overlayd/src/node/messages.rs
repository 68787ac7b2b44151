//! The in-band protocol inside tunnels: probes, certificates and their
//! acknowledgement, leaving, identity questions; attaching a peer once it
//! proved its key and its certificate.

use super::*;

impl Node {
    /// An in-band message from `peer`. What needs no control state (a
    /// certificate's signature) is checked before the control state is
    /// taken; a peer removed meanwhile is not served.
    pub(super) fn on_message(&self, peer: &Arc<Peer>, m: Message, now: Instant, out: &mut Outbox) {
        let checked = match &m {
            Message::Cert(bytes) => Some(self.check_peer_cert(peer, bytes)),
            _ => None,
        };
        let mut c = self.ctl();
        if !c.holds(peer) {
            return;
        }
        self.on_message_held(&mut c, peer, m, checked, now, out);
    }

    fn on_message_held(
        &self,
        c: &mut Control,
        peer: &Arc<Peer>,
        m: Message,
        checked: Option<Result<NodeCert, String>>,
        now: Instant,
        out: &mut Outbox,
    ) {
        match m {
            Message::Probe { seq } => {
                if self.leaving.load(Ordering::Relaxed) {
                    return;
                }
                let gateways = peer.configured.is_some() && self.role() == Role::Gateway;
                if let Some(x) = c.ctl(peer) {
                    x.probes.heard(now, self.cfg.probe.interval());
                    if gateways {
                        x.heard = Some((seq & !SPEAKS_HELLO, now));
                        x.hello |= seq & SPEAKS_HELLO != 0;
                    }
                }
                // Detached for silence and heard again: its routes return.
                if peer.configured.is_none()
                    && !peer.attached.load(Ordering::Relaxed)
                    && peer.confirmed.load(Ordering::Relaxed)
                {
                    self.maybe_attach(c, peer, now);
                }
                // A host whose tunnel damping holds down here is not
                // attached, so not announced: unanswered, it does not make
                // this gateway its active one and send where the other
                // gateways' reverse-path check drops its traffic.
                if c.ctl(peer).is_some_and(|x| x.host_damped(now)) {
                    return;
                }
                self.send_message(peer, &Message::ProbeReply { seq }, out);
            }
            // Authenticated by the tunnel: a gateway going away is down now
            // (traffic moves to the others, a handshake with its successor
            // follows), a host going away is detached (its routes go).
            Message::Leaving if peer.configured.is_some() => {
                tracing::info!(peer = %peer.name(), "gateway is shutting down");
                if let Some(t) = c.update_health(peer, |h| h.leaving()).flatten() {
                    self.gateway_transition(c, peer, t, now, out);
                }
            }
            Message::Leaving => self.remove_peer(c, peer, "shut down"),
            Message::ProbeReply { seq } => {
                let seq = seq & !SPEAKS_HELLO;
                if let Some(t) = c.update_health(peer, |h| h.on_reply(seq, now)).flatten() {
                    self.gateway_transition(c, peer, t, now, out);
                }
            }
            // Hellos are between configured gateways only.
            Message::Hello { .. }
                if peer.configured.is_none()
                    || self.role() != Role::Gateway
                    || self.leaving.load(Ordering::Relaxed) => {}
            Message::Hello {
                seq,
                heard,
                held_us,
                interval_ms,
                answer,
            } => {
                if let Some(x) = c.ctl(peer) {
                    x.hello = true;
                    x.heard = Some((seq, now));
                }
                let held = Duration::from_micros(held_us.into());
                if let Some(t) = c
                    .update_health(peer, |h| h.on_hello(heard, held, now))
                    .flatten()
                {
                    self.gateway_transition(c, peer, t, now, out);
                }
                // Acknowledged on our next probe, unless that comes too
                // late for the sender (asked, or it probes faster than we
                // do) or is not a hello (the tunnel is down here).
                let late = self.cfg.probe.interval() > Duration::from_millis(interval_ms.into());
                if answer || late || !peer.healthy() {
                    if let Some(x) = c.ctl(peer) {
                        let m = self.hello(x, x.health.seq(), now);
                        self.send_message(peer, &m, out);
                    }
                }
            }
            // Identity questions and answers only from peers whose own
            // certificate is validated: a key that merely completed a
            // handshake makes this gateway do no work for others.
            Message::WhoIs(_) | Message::WhoIsReply { .. } if peer.cert().is_none() => {
                bump(&self.drops.unauthenticated);
            }
            Message::WhoIs(a) => self.on_whois(c, peer, a, now, out),
            Message::WhoIsReply { addr, cert } => {
                self.on_whois_reply(c, peer, addr, cert, now, out)
            }
            // Any peer with a session may ask: the answer is smaller than
            // the question.
            Message::MtuProbe { seq, size } => {
                self.send_message(peer, &Message::MtuAck { seq, size }, out);
            }
            Message::MtuAck { seq, size } => {
                tracing::debug!(peer = %peer.name(), seq, size, "path MTU probe acknowledged");
                if let Some(x) = c.ctl(peer) {
                    x.pmtu.on_ack(seq, size, now);
                    super::liveness::publish_mtu(peer, x.pmtu.mtu());
                }
            }
            Message::CertAck(fp) => {
                if fp == self.identity().cert.fingerprint().0 {
                    peer.our_cert_acked.store(true, Ordering::Relaxed);
                }
            }
            Message::Cert(_) => match checked {
                Some(Ok(cert)) => {
                    let fp = cert.fingerprint().0;
                    let same = peer.cert().is_some_and(|old| old.fingerprint().0 == fp);
                    if !same {
                        self.accept_cert(c, peer, Arc::new(cert), now);
                    }
                    self.send_message(peer, &Message::CertAck(fp), out);
                }
                Some(Err(e)) => {
                    bump(&self.drops.bad_cert);
                    // One line a second at most: any key that completed a
                    // handshake can send these (audit L4).
                    let sec = now.saturating_duration_since(self.started).as_secs();
                    if self.cert_log_sec.swap(sec, Ordering::Relaxed) != sec {
                        tracing::warn!(peer = %peer.name(), "refused in-band certificate: {e}");
                    }
                }
                None => {}
            },
        }
    }

    /// Validates a certificate `peer` presented in-band: signed by our CA,
    /// not revoked, for the tunnel's key, and for a configured gateway the
    /// gateway of that name.
    fn check_peer_cert(&self, peer: &Peer, bytes: &[u8]) -> Result<NodeCert, String> {
        let unix = self.unix();
        let c = NodeCert::decode(bytes).map_err(|e| e.to_string())?;
        self.identity()
            .trust
            .validate(&c, unix)
            .map_err(|e| e.to_string())?;
        if c.public_key() != &peer.public_key {
            return Err("certificate is for another key than the tunnel's".into());
        }
        if let Some(name) = &peer.configured {
            if c.role() != Role::Gateway || c.name() != name {
                return Err(format!(
                    "configured as gateway {name:?} but the certificate is {} {:?}",
                    c.role(),
                    c.name()
                ));
            }
        }
        Ok(c)
    }

    /// Sends our certificate to a configured gateway as soon as a handshake
    /// we started completes, and until it is acknowledged again: the
    /// gateway may be a new process that does not know us (also when our
    /// probes never noticed it going away), and it knows us one round trip
    /// later, not at the next resend.
    pub(super) fn present_cert(
        &self,
        c: &mut Control,
        peer: &Peer,
        now: Instant,
        out: &mut Outbox,
    ) {
        peer.our_cert_acked.store(false, Ordering::Relaxed);
        if let Some(x) = c.ctl(peer) {
            x.last_cert_sent = Some(now);
        }
        let cert = self.identity().cert.encoded().to_vec();
        self.send_message(peer, &Message::Cert(cert), out);
    }

    /// A validated certificate for `peer`: its addresses route to it.
    pub(super) fn accept_cert(
        &self,
        c: &mut Control,
        peer: &Arc<Peer>,
        cert: Arc<NodeCert>,
        now: Instant,
    ) {
        if let Some(old) = peer.cert() {
            self.remove_cert_entries(c, peer, &old);
        }
        self.learn_identity(c, &cert);
        peer.set_cert(Some(cert));
        if peer.confirmed.load(Ordering::Relaxed) || peer.configured.is_some() {
            self.maybe_attach(c, peer, now);
        }
    }

    pub(super) fn remove_cert_entries(&self, c: &mut Control, peer: &Peer, cert: &NodeCert) {
        self.edit_fib(c, |fib| {
            for a in &cert.body.addresses {
                if fib.lookup(a.addr()) == Some(&NextHop::Peers(vec![peer.index])) {
                    fib.remove(host_net(a.addr()), Origin::Cert);
                }
            }
        });
    }

    /// Installs the peer's addresses and announces it once it both holds a
    /// valid certificate and proved its key, unless its tunnel here is
    /// held down by flap damping at `now` (the tick attaches it when that
    /// ends).
    pub(super) fn maybe_attach(&self, c: &mut Control, peer: &Arc<Peer>, now: Instant) {
        let Some(cert) = peer.cert() else { return };
        if !c.holds(peer) {
            // Removed while a packet of it was on its way.
            return;
        }
        if c.ctl(peer).is_some_and(|x| x.host_damped(now)) {
            return;
        }
        self.edit_fib(c, |fib| {
            for a in &cert.body.addresses {
                fib.insert(
                    host_net(a.addr()),
                    Origin::Cert,
                    NextHop::Peers(vec![peer.index]),
                );
            }
        });
        if !peer.attached.swap(true, Ordering::Relaxed) {
            let addresses = cert_addrs(&cert);
            tracing::info!(peer = %cert.name(), role = %cert.role(), addresses = ?addresses, "attached");
            let e = api::Event::Attached {
                name: cert.name().to_string(),
                role: api_role(cert.role()),
                site: cert.body.site.clone(),
                addresses,
            };
            self.emit(c, e);
        }
    }
}
