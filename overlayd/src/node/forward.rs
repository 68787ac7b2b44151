//! Where a packet goes: longest-prefix match over the published table, per-
//! flow choice among healthy next hops, encryption to the peer.

use super::*;

/// Where the forwarding table sends a packet.
pub(super) enum Via {
    /// This node's TUN: its own address, or the site LAN behind a gateway.
    Tun,
    Peer(Arc<Peer>),
    /// No entry, or no usable next hop.
    Nowhere,
}

/// Where a packet came from, so an error about it can go back.
#[derive(Clone, Copy)]
pub(super) enum Back<'a> {
    Tun,
    Peer(&'a Arc<Peer>),
}

impl Node {
    /// The next hop for `dst` by longest-prefix match (gateways): per flow
    /// among the healthy next hops, else among all, never back to `from`.
    pub(super) fn next_hop(&self, src: IpAddr, dst: IpAddr, from: Option<PeerId>) -> Via {
        let fib = self.fib.load();
        match fib.lookup(dst) {
            Some(NextHop::Local) => Via::Tun,
            Some(NextHop::Peers(ps)) => {
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
                    Some(p) => Via::Peer(p),
                    None => Via::Nowhere,
                }
            }
            None => Via::Nowhere,
        }
    }

    /// Drops a packet there is no route for, with a destination
    /// unreachable back to where it came from: host unreachable for an
    /// overlay address nobody serves now, net unreachable otherwise.
    pub(super) fn unreachable(
        &self,
        pkt: &[u8],
        dst: IpAddr,
        back: Back,
        now: Instant,
        out: &mut Outbox,
    ) {
        bump(&self.drops.no_route);
        let e = if self.identity.load().trust.ca().covers_addr(dst) {
            icmp::Error::HostUnreachable
        } else {
            icmp::Error::NetUnreachable
        };
        self.send_error(e, pkt, back, now, out);
    }

    /// Sends the ICMP error `e` about `pkt` from this node's overlay address
    /// of its family back where `pkt` came from (the previous hop routes it
    /// on to the source), within the shared rate limit.
    pub(super) fn send_error(
        &self,
        e: icmp::Error,
        pkt: &[u8],
        back: Back,
        now: Instant,
        out: &mut Outbox,
    ) {
        self.send_error_via(e, pkt, back, None, now, out)
    }

    /// [`Node::send_error`] about a packet that was to go into `via`'s
    /// tunnel. Into this node's own TUN it comes from `via`'s overlay
    /// address: the kernel drops a packet arriving with one of its own
    /// addresses as source (a martian), and the tunnel is the link that
    /// is too small.
    pub(super) fn send_error_via(
        &self,
        e: icmp::Error,
        pkt: &[u8],
        back: Back,
        via: Option<&Peer>,
        now: Instant,
        out: &mut Outbox,
    ) {
        let v4 = pkt.first().is_some_and(|b| b >> 4 == 4);
        let of_family = |c: &NodeCert| {
            c.body
                .addresses
                .iter()
                .map(|a| a.addr())
                .find(|a| a.is_ipv4() == v4)
        };
        let theirs = match (back, via.and_then(|p| p.cert())) {
            (Back::Tun, Some(c)) => of_family(&c),
            _ => None,
        };
        let Some(me) = theirs.or_else(|| of_family(&self.identity.load().cert)) else {
            return;
        };
        let Some(reply) = icmp::error(e, me, pkt) else {
            return;
        };
        // The error goes to the packet's source.
        let to = packet::addresses(pkt).map(|(src, _)| src).unwrap_or(me);
        let allowed = self
            .router
            .limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(e, to, now);
        if !allowed {
            bump(&self.router.rate_limited);
            return;
        }
        bump(match e {
            icmp::Error::TimeExceeded => &self.router.time_exceeded,
            icmp::Error::TooBig { .. } => &self.router.too_big,
            _ => &self.router.unreachable,
        });
        match back {
            Back::Peer(p) => self.send_to_peer(p, &reply, out),
            Back::Tun => {
                let mut b = out.tun.take(reply.len());
                b[TUN_HEADROOM..].copy_from_slice(&reply);
                out.tun.push_buf(b, reply.len());
            }
        }
    }

    /// A packet from a peer that is not for this gateway: sent on with its
    /// TTL / hop limit one lower, or dropped with time exceeded at the end
    /// of it, or with destination unreachable when there is no next hop.
    /// `Some(true)` when it goes to this node's TUN (the site LAN: the
    /// kernel is the next hop and decrements it there).
    pub(super) fn forward(
        &self,
        peer: &Arc<Peer>,
        pkt: &mut [u8],
        src: IpAddr,
        dst: IpAddr,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<bool> {
        match self.next_hop(src, dst, Some(peer.index)) {
            Via::Tun => {
                self.clamp_mss(pkt, peer.mtu());
                Some(true)
            }
            Via::Peer(next) => {
                match icmp::decrement_ttl(pkt) {
                    icmp::Hop::Forward => {
                        // Both tunnels: the answers to this SYN come back
                        // through the one it arrived by.
                        self.clamp_mss(pkt, next.mtu().min(peer.mtu()));
                        self.send_data(&next, pkt, Back::Peer(peer), now, out)
                    }
                    icmp::Hop::Expired => {
                        bump(&self.drops.ttl_expired);
                        self.send_error(icmp::Error::TimeExceeded, pkt, Back::Peer(peer), now, out);
                    }
                    icmp::Hop::Invalid => bump(&self.drops.invalid),
                }
                None
            }
            Via::Nowhere => {
                self.unreachable(pkt, dst, Back::Peer(peer), now, out);
                None
            }
        }
    }

    /// Lowers the MSS of a TCP SYN to what fits `mtu` (when on): the
    /// interface's, or the tunnel's when it carries less.
    fn clamp_mss(&self, pkt: &mut [u8], mtu: usize) {
        let i = &self.cfg.interface;
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX).min(i.mtu);
        if i.clamp_mss && mss::clamp(pkt, mtu) {
            bump(&self.router.mss_clamped);
        }
    }

    /// [`Node::clamp_mss`] on a packet that cannot be changed in place: a
    /// copy when it needs clamping (only SYNs do), else none.
    fn clamped_copy(&self, pkt: &[u8], mtu: usize) -> Option<Vec<u8>> {
        let i = &self.cfg.interface;
        if !i.clamp_mss {
            return None;
        }
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX).min(i.mtu);
        mss::oversized(pkt, mtu)?;
        let mut copy = pkt.to_vec();
        self.clamp_mss(&mut copy, usize::from(mtu));
        Some(copy)
    }

    /// A packet into `peer`'s tunnel, if it fits: one larger than the
    /// tunnel carries now gets fragmentation needed / packet too big back
    /// where it came from, or (IPv4 without DF) goes in fragments.
    pub(super) fn send_data(
        &self,
        peer: &Peer,
        pkt: &[u8],
        back: Back,
        now: Instant,
        out: &mut Outbox,
    ) {
        let mtu = peer.mtu();
        peer.note_size(pkt.len());
        if pkt.len() <= mtu {
            self.send_to_peer(peer, pkt, out);
            return;
        }
        let mtu16 = u16::try_from(mtu).unwrap_or(u16::MAX);
        if let Some(frags) = icmp::fragment_v4(pkt, mtu16) {
            bump(&self.router.fragmented);
            for f in frags {
                self.send_to_peer(peer, &f, out);
            }
            return;
        }
        bump(&self.drops.too_big);
        self.send_error_via(
            icmp::Error::TooBig { mtu: mtu16 },
            pkt,
            back,
            Some(peer),
            now,
            out,
        );
    }

    pub(super) fn send_to_peer(&self, peer: &Peer, pkt: &[u8], out: &mut Outbox) {
        self.seal_to_peer(peer, pkt, false, out);
    }

    /// [`Node::send_to_peer`]; with `note`, remembers the receiver index
    /// the datagram carries, the index the peer knows this session by, for
    /// a stale-session hint ([`crate::stale`]). In-band messages (probes
    /// every interval) keep it current; the data path does not pay for it.
    fn seal_to_peer(&self, peer: &Peer, pkt: &[u8], note: bool, out: &mut Outbox) {
        let Some(ep) = peer.endpoint() else {
            bump(&self.drops.no_endpoint);
            return;
        };
        // Encrypt straight into the outgoing batch.
        out.net.push_with(ep, (pkt.len() + 32).max(148), |dst| {
            match peer.tunn().encapsulate(pkt, dst) {
                TunnResult::WriteToNetwork(b) => {
                    if note {
                        if let Some(i) = crate::stale::data_receiver(b) {
                            peer.remote_index.store(i, Ordering::Relaxed);
                        }
                    }
                    Some(b.len())
                }
                _ => None,
            }
        });
        peer.count_tx(pkt.len());
    }

    pub(super) fn send_message(&self, peer: &Peer, m: &Message, out: &mut Outbox) {
        self.seal_to_peer(peer, &m.encode(), true, out);
    }

    /// A packet from our TUN into `peer`'s tunnel, its MSS clamped to what
    /// the tunnel carries.
    fn send_from_tun(&self, peer: &Peer, pkt: &[u8], now: Instant, out: &mut Outbox) {
        let clamped = self.clamped_copy(pkt, peer.mtu());
        let pkt = clamped.as_deref().unwrap_or(pkt);
        self.send_data(peer, pkt, Back::Tun, now, out);
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
                Some(p) => self.send_from_tun(&p, pkt, now, out),
                None => {
                    // No gateway yet: held until one is usable. Looked at
                    // again under the control state, which chooses it.
                    let mut c = self.ctl();
                    match self.active_gateway().and_then(|i| self.peer_by_index(i)) {
                        Some(p) => self.send_from_tun(&p, pkt, now, out),
                        None => {
                            let clamped = self.clamped_copy(pkt, usize::MAX);
                            self.hold(&mut c, clamped.as_deref().unwrap_or(pkt), now)
                        }
                    }
                }
            }
            return;
        }
        match self.next_hop(src, dst, None) {
            Via::Peer(p) => self.send_from_tun(&p, pkt, now, out),
            // From our own TUN back to it: the kernel should not do that.
            Via::Tun => bump(&self.drops.no_route),
            Via::Nowhere => self.unreachable(pkt, dst, Back::Tun, now, out),
        }
    }
}
