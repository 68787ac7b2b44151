//! Where a packet goes: longest-prefix match over the published table, per-
//! flow choice among healthy next hops, encryption to the peer.

use super::*;

impl Node {
    /// Forwards by longest-prefix match (gateways).
    /// Forwards to a peer, or returns `Some(true)` when the packet is for
    /// our own TUN.
    pub(super) fn route(
        &self,
        pkt: &[u8],
        src: IpAddr,
        dst: IpAddr,
        from: Option<PeerId>,
        out: &mut Outbox,
    ) -> Option<bool> {
        let fib = self.fib.load();
        match fib.lookup(dst) {
            Some(NextHop::Local) => {
                if from.is_some() {
                    return Some(true);
                }
                // From our own TUN back to it: the kernel should not do that.
                bump(&self.drops.no_route);
            }
            Some(NextHop::Peers(ps)) => {
                // Per flow among the healthy next hops, else among all (not
                // back where it came from).
                let usable = |i: PeerId| Some(i) != from;
                let healthy = |i: PeerId| {
                    usable(i)
                        && self
                            .peer_by_index(i)
                            .is_some_and(|p| !p.is_gateway() || p.healthy())
                };
                let chosen = pick_for_flow_among(ps, src, dst, healthy)
                    .or_else(|| pick_for_flow_among(ps, src, dst, usable));
                match chosen.and_then(|i| self.peer_by_index(i)) {
                    Some(p) => self.send_to_peer(&p, pkt, out),
                    None => bump(&self.drops.no_route),
                }
            }
            None => bump(&self.drops.no_route),
        }
        None
    }

    pub(super) fn send_to_peer(&self, peer: &Peer, pkt: &[u8], out: &mut Outbox) {
        let Some(ep) = peer.endpoint() else {
            bump(&self.drops.no_endpoint);
            return;
        };
        // Encrypt straight into the outgoing batch.
        out.net.push_with(ep, (pkt.len() + 32).max(148), |dst| {
            match peer.tunn().encapsulate(pkt, dst) {
                TunnResult::WriteToNetwork(b) => Some(b.len()),
                _ => None,
            }
        });
        peer.count_tx(pkt.len());
    }

    pub(super) fn send_message(&self, peer: &Peer, m: &Message, out: &mut Outbox) {
        self.send_to_peer(peer, &m.encode(), out);
    }

    /// A packet from our TUN.
    pub fn on_tun_packet(&self, pkt: &[u8], now: Instant, out: &mut Outbox) {
        let Some((src, dst)) = packet::addresses(pkt) else {
            bump(&self.drops.invalid);
            return;
        };
        if packet::link_scope(dst) {
            // Router solicitations, mDNS and the like stay on this node.
            return;
        }
        // What enters the overlay here comes from this node: its own
        // addresses or (gateways) the subnets its certificate carries. The
        // kernel forwards whatever the site LAN or local containers send
        // into the TUN, spoofed sources too (IPv6 has no rp_filter).
        let id = self.identity.load();
        let own = id.cert.owns_addr(src);
        if !own && !id.cert.body.subnets.iter().any(|n| n.contains(&src)) {
            bump(&self.drops.spoofed_local);
            return;
        }
        if own && !self.firewall_passes(Direction::Outbound, pkt, now) {
            return;
        }
        if self.role() == Role::Host {
            let gw = self.active_gateway();
            match gw.and_then(|i| self.peer_by_index(i)) {
                Some(p) => self.send_to_peer(&p, pkt, out),
                None => {
                    // No gateway yet: held until one is usable. Looked at
                    // again under the control state, which chooses it.
                    let mut c = self.ctl();
                    match self.active_gateway().and_then(|i| self.peer_by_index(i)) {
                        Some(p) => self.send_to_peer(&p, pkt, out),
                        None => self.hold(&mut c, pkt, now),
                    }
                }
            }
            return;
        }
        self.route(pkt, src, dst, None, out);
    }
}
