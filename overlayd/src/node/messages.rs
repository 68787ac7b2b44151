//! The in-band protocol inside tunnels: probes, certificates and their
//! acknowledgement, leaving, identity questions; attaching a peer once it
//! proved its key and its certificate.

use super::*;

impl Node {
    pub(super) fn on_message(&self, peer: &Arc<Peer>, m: Message, now: Instant, out: &mut Outbox) {
        match m {
            Message::Probe { seq } => {
                if self.leaving.load(Ordering::Relaxed) {
                    return;
                }
                lock(&peer.probes).heard(now, self.cfg.probe.interval());
                self.send_message(peer, &Message::ProbeReply { seq }, out);
                // Detached for silence and heard again: its routes return.
                if peer.configured.is_none()
                    && !peer.attached.load(Ordering::Relaxed)
                    && peer.confirmed.load(Ordering::Relaxed)
                {
                    self.maybe_attach(peer, out);
                }
            }
            // Authenticated by the tunnel: a gateway going away is down now
            // (traffic moves to the others, a handshake with its successor
            // follows), a host going away is detached (its routes go).
            Message::Leaving if peer.configured.is_some() => {
                tracing::info!(peer = %peer.name(), "gateway is shutting down");
                let t = peer.update_health(|h| h.leaving());
                if let Some(t) = t {
                    self.gateway_transition(peer, t, now, out);
                }
            }
            Message::Leaving => self.remove_peer(peer, "shut down", out),
            Message::ProbeReply { seq } => {
                let t = peer.update_health(|h| h.on_reply(seq, now));
                if let Some(t) = t {
                    self.gateway_transition(peer, t, now, out);
                }
            }
            // Identity questions and answers only from peers whose own
            // certificate is validated: a key that merely completed a
            // handshake makes this gateway do no work for others.
            Message::WhoIs(_) | Message::WhoIsReply { .. } if peer.cert().is_none() => {
                bump(&self.drops.unauthenticated);
            }
            Message::WhoIs(a) => self.on_whois(peer, a, now, out),
            Message::WhoIsReply { addr, cert } => self.on_whois_reply(peer, addr, cert, now, out),
            Message::CertAck(fp) => {
                if fp == self.identity().cert.fingerprint().0 {
                    peer.our_cert_acked.store(true, Ordering::Relaxed);
                }
            }
            Message::Cert(bytes) => {
                let unix = self.unix();
                let checked = NodeCert::decode(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
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
                    });
                match checked {
                    Ok(c) => {
                        let fp = c.fingerprint().0;
                        let same = peer.cert().is_some_and(|old| old.fingerprint().0 == fp);
                        if !same {
                            self.accept_cert(peer, Arc::new(c), out);
                        }
                        self.send_message(peer, &Message::CertAck(fp), out);
                    }
                    Err(e) => {
                        bump(&self.drops.bad_cert);
                        tracing::warn!(peer = %peer.name(), "refused in-band certificate: {e}");
                    }
                }
            }
        }
    }

    /// Sends our certificate to a configured gateway as soon as a handshake
    /// we started completes, and until it is acknowledged again: the
    /// gateway may be a new process that does not know us (also when our
    /// probes never noticed it going away), and it knows us one round trip
    /// later, not at the next resend.
    pub(super) fn present_cert(&self, peer: &Peer, now: Instant, out: &mut Outbox) {
        peer.our_cert_acked.store(false, Ordering::Relaxed);
        *lock(&peer.last_cert_sent) = Some(now);
        let cert = self.identity().cert.encoded().to_vec();
        self.send_message(peer, &Message::Cert(cert), out);
    }

    /// A validated certificate for `peer`: its addresses route to it.
    pub(super) fn accept_cert(&self, peer: &Arc<Peer>, cert: Arc<NodeCert>, out: &mut Outbox) {
        if let Some(old) = peer.cert() {
            self.remove_cert_entries(peer, &old);
        }
        self.learn_identity(&cert);
        peer.set_cert(Some(cert));
        if peer.confirmed.load(Ordering::Relaxed) || peer.configured.is_some() {
            self.maybe_attach(peer, out);
        }
    }

    pub(super) fn remove_cert_entries(&self, peer: &Peer, cert: &NodeCert) {
        self.edit_fib(|fib| {
            for a in &cert.body.addresses {
                if fib.lookup(a.addr()) == Some(&NextHop::Peers(vec![peer.index])) {
                    fib.remove(host_net(a.addr()), Origin::Cert);
                }
            }
        });
    }

    /// Installs the peer's addresses and announces it once it both holds a
    /// valid certificate and proved its key.
    pub(super) fn maybe_attach(&self, peer: &Arc<Peer>, out: &mut Outbox) {
        let Some(cert) = peer.cert() else { return };
        self.edit_fib(|fib| {
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
            out.events.push(api::Event::Attached {
                name: cert.name().to_string(),
                role: api_role(cert.role()),
                site: cert.body.site.clone(),
                addresses,
            });
        }
    }
}
