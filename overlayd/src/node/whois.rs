//! Identities behind virtual addresses: learned from validated certificates,
//! asked of gateways (WhoIs) for the firewall, relayed across gateways.

use super::*;

impl Node {
    pub(super) fn learn_identity(&self, c: &mut Control, cert: &NodeCert) {
        let id = firewall::Identity::from(cert);
        for a in &cert.body.addresses {
            c.identities.insert(a.addr(), id.clone());
        }
    }

    /// Identities from the cert directory and every validated peer.
    pub(super) fn rebuild_identities(&self, c: &mut Control) {
        let id = self.identity();
        c.identities.clear();
        for cert in id.directory.values() {
            self.learn_identity(c, cert);
        }
        for p in c.peer_list() {
            if let Some(cert) = p.cert() {
                self.learn_identity(c, &cert);
            }
        }
    }

    /// The identity behind a virtual address, if known; an unknown one is
    /// asked of the gateways (answers arrive later).
    pub fn identity_of(&self, a: IpAddr, now: Instant) -> Option<firewall::Identity> {
        self.identity_lookup(a, now).known().cloned()
    }

    /// What is known of the identity behind `a`: known, being asked (an
    /// overlay address not answered yet; asking starts here), or none.
    /// Takes the control state: the firewall calls it for new flows only,
    /// with its flow table held (the lock order allows that).
    pub fn identity_lookup(&self, a: IpAddr, now: Instant) -> firewall::Lookup {
        use firewall::Lookup;
        let mut c = self.ctl();
        if let Some(i) = c.identities.get(&a) {
            return Lookup::Known(i.clone());
        }
        if let Some((i, until)) = c.remote_ids.get(&a) {
            if *until > now {
                return i.clone().into();
            }
        }
        if self.identity.load().trust.ca().covers_addr(a) {
            let w = &mut c.wanted;
            if w.len() >= IDENTITY_CACHE && !w.contains_key(&a) {
                // Bounded: the question out longest goes first.
                let oldest = w.iter().min_by_key(|(_, x)| x.since).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    w.remove(&k);
                }
            }
            w.entry(a).or_insert(Want {
                since: now,
                asked: None,
            });
            return Lookup::Pending;
        }
        Lookup::Nobody
    }

    /// Asks for the identities the firewall wants: a host asks its active
    /// gateway, a gateway the peer its table points at.
    pub(super) fn ask_whois(&self, c: &mut Control, now: Instant, out: &mut Outbox) {
        let due: Vec<IpAddr> = {
            let w = &mut c.wanted;
            w.retain(|_, x| now.saturating_duration_since(x.since) < WHOIS_GIVE_UP);
            w.iter()
                .filter(|(_, x)| {
                    x.asked
                        .is_none_or(|(t, _)| now.saturating_duration_since(t) >= WHOIS_RETRY)
                })
                .map(|(a, _)| *a)
                .take(WHOIS_PER_TICK)
                .collect()
        };
        for a in due {
            let to = if self.role() == Role::Host {
                self.active_gateway().and_then(|i| self.peer_by_index(i))
            } else {
                self.next_peer(a, None)
            };
            if let Some(p) = to {
                if let Some(x) = c.wanted.get_mut(&a) {
                    x.asked = Some((now, p.index));
                }
                self.send_message(&p, &Message::WhoIs(a), out);
            }
        }
    }

    /// The peer the forwarding table sends `a` to (not `except`).
    pub(super) fn next_peer(&self, a: IpAddr, except: Option<PeerId>) -> Option<Arc<Peer>> {
        let next = self.fib.load().lookup(a).cloned();
        match next {
            Some(NextHop::Peers(ps)) => ps
                .into_iter()
                .filter(|p| Some(*p) != except)
                .find_map(|i| self.peer_by_index(i)),
            _ => None,
        }
    }

    /// A certificate this node holds for `a`: its own, a peer's, or one in
    /// the cert directory.
    pub(super) fn cert_for(&self, a: IpAddr) -> Option<Arc<NodeCert>> {
        let id = self.identity();
        if id.cert.owns_addr(a) {
            return Some(id.cert.clone());
        }
        if let Some(p) = self.next_peer(a, None) {
            if let Some(c) = p.cert().filter(|c| c.owns_addr(a)) {
                return Some(c);
            }
        }
        id.directory.values().find(|c| c.owns_addr(a)).cloned()
    }

    pub(super) fn on_whois(
        &self,
        c: &mut Control,
        from: &Arc<Peer>,
        a: IpAddr,
        now: Instant,
        out: &mut Outbox,
    ) {
        if let Some(c) = self.cert_for(a) {
            let reply = Message::WhoIsReply {
                addr: a,
                cert: c.encoded().to_vec(),
            };
            self.send_message(from, &reply, out);
            return;
        }
        // A gateway asks the gateway that announces the address.
        if self.role() == Role::Gateway {
            if let Some(next) = self
                .next_peer(a, Some(from.index))
                .filter(|p| p.is_gateway())
            {
                let relay = &mut c.whois_relay;
                relay.retain(|_, r| now.duration_since(r.at) < Duration::from_secs(2));
                // Bounded: past the cap a question is answered "unknown"
                // (the asker retries) rather than remembered.
                let out_already = relay.contains_key(&a);
                if relay.len() < IDENTITY_CACHE || out_already {
                    let e = relay.entry(a).or_insert_with(|| Relayed {
                        askers: Vec::new(),
                        at: now,
                        to: next.index,
                    });
                    if !e.askers.contains(&from.index) && e.askers.len() < WHOIS_ASKERS {
                        e.askers.push(from.index);
                    }
                    // One question per address is out at a time: the answer
                    // goes to every asker. So a question that comes round
                    // again (a routing loop between gateways) ends here.
                    if !out_already {
                        self.send_message(&next, &Message::WhoIs(a), out);
                    }
                    return;
                }
            }
        }
        self.send_message(
            from,
            &Message::WhoIsReply {
                addr: a,
                cert: Vec::new(),
            },
            out,
        );
    }

    /// An answer from `from`: it counts only for a question out to that
    /// peer (relayed or our own); anything else is counted and dropped, so
    /// a peer cannot plant identities or "unknown" for others.
    pub(super) fn on_whois_reply(
        &self,
        c: &mut Control,
        from: &Peer,
        a: IpAddr,
        cert: Vec<u8>,
        now: Instant,
        out: &mut Outbox,
    ) {
        let relayed = {
            let r = &mut c.whois_relay;
            match r.get(&a) {
                Some(x) if x.to == from.index => r.remove(&a),
                _ => None,
            }
        };
        let wanted = {
            let w = &mut c.wanted;
            match w.get(&a) {
                Some(x) if x.asked.is_some_and(|(_, p)| p == from.index) => w.remove(&a),
                _ => None,
            }
        };
        if relayed.is_none() && wanted.is_none() {
            bump(&self.drops.unsolicited);
            return;
        }
        for i in relayed.map(|r| r.askers).unwrap_or_default() {
            if let Some(p) = self.peer_by_index(i) {
                let m = Message::WhoIsReply {
                    addr: a,
                    cert: cert.clone(),
                };
                self.send_message(&p, &m, out);
            }
        }
        if wanted.is_none() {
            return;
        }
        // Trust nobody: the certificate must validate here and own `a`.
        let checked = NodeCert::decode(&cert)
            .ok()
            .filter(|c| c.owns_addr(a) && self.identity().trust.validate(c, self.unix()).is_ok());
        let entry = match checked {
            Some(c) => (Some(firewall::Identity::from(&c)), now + IDENTITY_TTL),
            None => {
                if !cert.is_empty() {
                    bump(&self.drops.bad_cert);
                }
                (None, now + IDENTITY_NEGATIVE_TTL)
            }
        };
        let ids = &mut c.remote_ids;
        if ids.len() >= IDENTITY_CACHE {
            ids.retain(|_, (_, t)| *t > now);
        }
        if ids.len() >= IDENTITY_CACHE {
            if let Some(k) = ids.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                ids.remove(&k);
            }
        }
        ids.insert(a, entry);
    }
}
