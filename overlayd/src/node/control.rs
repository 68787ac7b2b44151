//! Control requests: reload, status, the attached peers, and the routes
//! routed installs.

use super::*;

impl Node {
    /// Replaces the identity (SIGHUP): peers whose certificate is no longer
    /// valid lose their session at once; the others keep theirs.
    /// A revocation list never goes backwards: if the new identity has none,
    /// or one with a lower serial than the list in force, the list in
    /// force stays (a deleted or older file would otherwise un-revoke).
    pub fn reload_identity(&self, mut identity: Identity) -> api::ReloadReport {
        let now = self.unix();
        if let Some(held) = self.identity().trust.revocation_list() {
            let serial = held.body.serial;
            if let Ok(cubenet_certs::CrlUpdate::Replaced) =
                identity.trust.offer_revocation_list(held.clone())
            {
                tracing::warn!(
                    serial,
                    "the revocation list read at reload is missing or older than the one in \
                     force (serial {serial}): the one in force is kept"
                );
            }
        }
        let identity = Arc::new(identity);
        let mut c = self.ctl();
        self.identity.store(identity.clone());
        let mut cut = Vec::new();
        for peer in c.peer_list() {
            let Some(cert) = peer.cert() else { continue };
            if let Err(e) = identity.trust.validate(&cert, now) {
                cut.push(api::CutPeer {
                    name: peer.name(),
                    reason: e.to_string(),
                });
                self.cut_session(&mut c, &peer, &e.to_string());
            }
        }
        self.rebuild_identities(&mut c);
        // Identities learned from gateways were validated under the old
        // trust (audit L14): asked again when needed.
        c.remote_ids.clear();
        // Own certificate may have changed: re-announce it.
        for peer in self.gateways(&c) {
            peer.our_cert_acked.store(false, Ordering::Relaxed);
        }
        api::ReloadReport {
            cut,
            skipped_certs: identity.directory_skipped.clone(),
        }
    }

    pub fn status(&self, now: Instant) -> api::Status {
        // First: it takes the flow table, which comes before the control
        // state.
        let firewall = self.firewall_status();
        // A copy of what status shows, taken quickly: the rest is built
        // with the control state let go (the workers need it).
        let (list, snapshot, datapath) = {
            let c = self.ctl();
            let s: HashMap<PeerId, PeerCtl> = c
                .peers
                .values()
                .filter_map(|p| Some((p.index, c.peers.ctl(p.index)?.clone())))
                .collect();
            (c.peer_list(), s, c.datapath.clone())
        };
        let list = sorted(list);
        let id = self.identity();
        let active = self.active_gateway();
        let peers: Vec<api::PeerStatus> = list
            .iter()
            .filter_map(|p| {
                let x = snapshot.get(&p.index)?;
                let hs = x.handshake_at.map(|t| now.saturating_duration_since(t));
                let cert = p.cert();
                let health = &x.health;
                let attached = p.attached.load(Ordering::Relaxed);
                // A host's tunnel here, or (a host) the tunnel to a gateway.
                let (flaps, penalty, suppressed) = match &x.host_link {
                    Some(l) => (l.flaps(), l.penalty(now), l.suppressed(now)),
                    None => {
                        let (penalty, suppressed) = health.damped(now);
                        (health.flaps, penalty, suppressed)
                    }
                };
                Some(api::PeerStatus {
                    name: p.name(),
                    role: p.role().map(api_role).into(),
                    configured: p.configured.is_some(),
                    public_key: crate::b64(&p.public_key),
                    endpoint: p.endpoint(),
                    addresses: cert.as_ref().map(|c| cert_addrs(c)).unwrap_or_default(),
                    site: cert.as_ref().map(|c| c.body.site.clone()),
                    authenticated: cert.is_some(),
                    attached,
                    last_handshake_s: hs.map(|d| d.as_secs_f64()),
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: p.rx_packets.load(Ordering::Relaxed),
                    tx_packets: p.tx_packets.load(Ordering::Relaxed),
                    healthy: if p.is_gateway() && p.configured.is_some() {
                        health.healthy()
                    } else {
                        attached
                    },
                    rtt_ms: health.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    flaps,
                    penalty,
                    suppressed,
                    active: active == Some(p.index),
                    spoofed: p.spoofed.load(Ordering::Relaxed),
                    mtu: x.pmtu.mtu(),
                    mtu_learned: x.pmtu.learned(),
                    hellos: self.hellos_with(x, p),
                })
            })
            .collect();
        let routes: Vec<api::RouteRow> = self
            .fib
            .load()
            .rows()
            .into_iter()
            .map(|r| api::RouteRow {
                prefix: r.prefix,
                origin: r.origin.into(),
                via: match &r.next {
                    NextHop::Local => vec!["local".into()],
                    NextHop::Peers(ps) => ps
                        .iter()
                        .map(|i| {
                            self.peer_by_index(*i)
                                .map(|p| p.name())
                                .unwrap_or_else(|| format!("#{i}"))
                        })
                        .collect(),
                },
            })
            .collect();
        let unix = self.unix() as i64;
        api::Status {
            name: id.cert.name().to_string(),
            role: api_role(id.role()),
            site: id.cert.body.site.clone(),
            public_key: crate::b64(&self.public.to_bytes()),
            addresses: id.cert.body.addresses.clone(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            cert_days_left: (id.cert.body.not_after as i64 - unix) / 86_400,
            ca_days_left: (id.trust.ca().body.not_after as i64 - unix) / 86_400,
            crl_serial: id.trust.revocation_list().map(|c| c.body.serial),
            peers,
            drops: self.drops.snapshot(),
            icmp: self.router.snapshot(),
            mss_clamped: self.router.mss_clamped.load(Ordering::Relaxed),
            fragmented: self.router.fragmented.load(Ordering::Relaxed),
            routes,
            datapath,
            firewall,
        }
    }

    /// What `wg show` shows (UAPI `get=1`, [`crate::uapi`]): every peer
    /// with its key, endpoint, counters, keepalive and, as allowed IPs, the
    /// sources this node accepts from it (WireGuard's allowed IPs filter
    /// what comes in as well as choose where packets go; here forwarding
    /// is by the table `overlayd status` shows, so what they show is the
    /// incoming side, as `check_inner` decides): a host's certificate
    /// addresses; any source from a gateway a host chose; from another
    /// gateway the CA's networks, its certificate's subnets and the
    /// prefixes outside those that the table routes via it; nothing from a
    /// peer whose certificate is not validated yet. `unix_now` (the wall
    /// clock) dates the handshakes, which the node keeps on `now`'s clock.
    pub fn wg_device(&self, now: Instant, unix_now: Duration) -> crate::uapi::Device {
        let (list, handshakes) = {
            let c = self.ctl();
            let hs: HashMap<PeerId, Option<Instant>> = c
                .peers
                .values()
                .filter_map(|p| Some((p.index, c.peers.ctl(p.index)?.handshake_at)))
                .collect();
            (sorted(c.peer_list()), hs)
        };
        let id = self.identity();
        let ca = id.trust.ca();
        // Routes via other gateways beyond what they are accepted for
        // anyway: one pass over the table for all peers.
        let mut routed: HashMap<PeerId, Vec<IpNet>> = HashMap::new();
        if id.role() == Role::Gateway {
            for r in self.fib.load().rows() {
                let NextHop::Peers(ps) = &r.next else {
                    continue;
                };
                if ca.covers_net(&r.prefix) {
                    continue;
                }
                for p in ps {
                    routed.entry(*p).or_default().push(r.prefix);
                }
            }
        }
        let peers = list
            .iter()
            .map(|p| {
                let allowed_ips = match p.cert() {
                    None => Vec::new(),
                    Some(cert) => match cert.role() {
                        Role::Host => cert
                            .body
                            .addresses
                            .iter()
                            .map(|a| IpNet::from(a.addr()))
                            .collect(),
                        Role::Gateway if id.role() == Role::Host && p.configured.is_some() => {
                            // Any source, as `check_inner` takes it.
                            vec![
                                IpNet::V4(ipnet::Ipv4Net::default()),
                                IpNet::V6(ipnet::Ipv6Net::default()),
                            ]
                        }
                        Role::Gateway => {
                            let mut v = ca.body.networks.clone();
                            let beyond = cert.body.subnets.iter().filter(|n| !ca.covers_net(n));
                            for n in beyond.chain(routed.get(&p.index).into_iter().flatten()) {
                                if !v.contains(n) {
                                    v.push(*n);
                                }
                            }
                            v
                        }
                    },
                };
                let since = handshakes
                    .get(&p.index)
                    .copied()
                    .flatten()
                    .map(|t| now.saturating_duration_since(t));
                crate::uapi::DevicePeer {
                    public_key: p.public_key,
                    endpoint: p.endpoint(),
                    last_handshake: since.and_then(|d| unix_now.checked_sub(d)),
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    persistent_keepalive: p.tunn().persistent_keepalive(),
                    allowed_ips,
                }
            })
            .collect();
        crate::uapi::Device {
            listen_port: self.cfg.listen.first().map_or(0, |a| a.port()),
            peers,
        }
    }

    /// The peers attached here now (routed announces the hosts of them).
    pub fn attached(&self) -> api::AttachedPeers {
        let peers = sorted(self.ctl().peer_list())
            .iter()
            .filter(|p| p.attached.load(Ordering::Relaxed))
            .filter_map(|p| {
                let cert = p.cert()?;
                Some(api::AttachedPeer {
                    name: p.name(),
                    role: api_role(cert.role()),
                    addresses: cert_addrs(&cert),
                })
            })
            .collect();
        api::AttachedPeers { peers }
    }

    /// Gateways by name (configured or certified), for resolving the
    /// `via` of routes: one pass over the peers per request.
    pub(super) fn gateways_by_name(&self, c: &Control) -> HashMap<String, PeerId> {
        c.peers
            .values()
            .filter(|p| p.is_gateway())
            .flat_map(|p| {
                let mut names = vec![];
                if let Some(n) = &p.configured {
                    names.push((n.clone(), p.index));
                }
                if let Some(c) = p.cert() {
                    names.push((c.name().to_string(), p.index));
                }
                names
            })
            .collect()
    }

    /// Resolves every route's gateways, or says every route that names one
    /// this node does not have (nothing is installed then).
    pub(super) fn resolve(
        &self,
        c: &Control,
        routes: &[api::Route],
    ) -> Result<Vec<(IpNet, Vec<PeerId>)>, RouteError> {
        let (good, bad) = self.resolve_each(c, routes);
        if bad.is_empty() {
            Ok(good)
        } else {
            Err(RouteError::Refused(
                bad.iter().map(|b| b.to_string()).collect(),
            ))
        }
    }

    /// Resolves the routes one by one: the good ones, and a line for each
    /// bad one.
    pub(super) fn resolve_each(
        &self,
        c: &Control,
        routes: &[api::Route],
    ) -> (Vec<(IpNet, Vec<PeerId>)>, Vec<api::Refused>) {
        let by_name = self.gateways_by_name(c);
        let mut bad = Vec::new();
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            let mut refuse = |reason: String| {
                bad.push(api::Refused {
                    prefix: r.prefix,
                    reason,
                })
            };
            if r.via.is_empty() {
                refuse("via: needs at least one gateway".into());
                continue;
            }
            let mut ids = Vec::with_capacity(r.via.len());
            let mut ok = true;
            for v in &r.via {
                match by_name.get(v) {
                    Some(i) => ids.push(*i),
                    None if c.peer_by_name(v).is_some() => {
                        ok = false;
                        refuse(format!("{v:?} is not a gateway"));
                    }
                    None => {
                        ok = false;
                        refuse(format!("unknown gateway {v:?}"));
                    }
                }
            }
            if ok {
                out.push((r.prefix, ids));
            }
        }
        (out, bad)
    }

    /// Installs or replaces a routed entry: `via` names gateways.
    pub fn route_add(&self, prefix: IpNet, via: &[String]) -> Result<(), RouteError> {
        let r = [api::Route {
            prefix,
            via: via.to_vec(),
        }];
        self.route_set(&r, true).map(|_| ())
    }

    /// Replaces all routed entries, or with `merge` installs or replaces
    /// these and keeps the rest. A bad entry refuses the whole set.
    pub fn route_set(&self, routes: &[api::Route], merge: bool) -> Result<usize, RouteError> {
        let mut c = self.ctl();
        let resolved = self.resolve(&c, routes)?;
        self.edit_fib(&mut c, |fib| {
            if !merge {
                fib.remove_origin(Origin::Routed);
            }
            for (prefix, ids) in resolved {
                fib.insert(prefix, Origin::Routed, NextHop::Peers(ids));
            }
        });
        Ok(routes.len())
    }

    /// Increments from routed: withdraws, then adds. A route naming a
    /// gateway this node does not have is refused alone; the rest go in.
    /// With `publish` false (more chunks of a resync follow) the workers go
    /// on with the table they have until the next change that publishes,
    /// or [`Node::publish_fib`]: a resync in chunks does not copy the
    /// table per chunk.
    pub fn route_update(
        &self,
        add: &[api::Route],
        withdraw: &[IpNet],
        publish: bool,
    ) -> api::Updated {
        let mut c = self.ctl();
        let (resolved, refused) = self.resolve_each(&c, add);
        if !refused.is_empty() {
            tracing::warn!(refused = refused.len(), first = %refused[0], "routes refused");
        }
        self.edit_fib_then(&mut c, publish, |fib| {
            let mut withdrawn = 0;
            for p in withdraw {
                withdrawn += usize::from(fib.remove(*p, Origin::Routed));
            }
            let added = resolved.len();
            for (prefix, ids) in resolved {
                fib.insert(prefix, Origin::Routed, NextHop::Peers(ids));
            }
            api::Updated {
                added,
                withdrawn,
                routes: fib.count(Origin::Routed),
                refused,
            }
        })
    }

    /// The end of a full resync: routed entries outside `seen` go.
    pub fn route_retain(&self, seen: &HashSet<IpNet>) -> api::Updated {
        let mut c = self.ctl();
        self.edit_fib(&mut c, |fib| {
            let withdrawn = fib.retain(Origin::Routed, |p| seen.contains(&p));
            api::Updated {
                added: 0,
                withdrawn,
                routes: fib.count(Origin::Routed),
                refused: Vec::new(),
            }
        })
    }

    pub fn route_del(&self, prefix: IpNet) -> bool {
        let mut c = self.ctl();
        self.edit_fib(&mut c, |fib| fib.remove(prefix, Origin::Routed))
    }
}
