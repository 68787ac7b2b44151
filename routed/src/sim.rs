//! A simulated network of routers in memory, on a virtual clock: every
//! router is the real [`Router`], every message goes through the real
//! encoder and decoder, and links between gateways can fail, flap and heal.

use crate::config::Config;
use crate::rib::NeighborId;
use crate::router::{Certified, Out, ReloadError, Router};
use crate::session::ConnId;
use crate::wire;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

pub struct Sim {
    pub now: Instant,
    pub routers: Vec<Router>,
    pub names: Vec<String>,
    /// conn id -> (router, neighbour index there) for both ends.
    conns: HashMap<ConnId, [(usize, NeighborId); 2]>,
    next_conn: ConnId,
    /// Links that carry nothing (silent drop), as ordered pairs.
    down: BTreeSet<(usize, usize)>,
    /// How many times each router's best set for a prefix changed.
    pub changes: Vec<BTreeMap<IpNet, u64>>,
    last_fib: Vec<BTreeMap<IpNet, Vec<String>>>,
    /// Every router's (site, gateway), the BFD interval and whether
    /// damping is on: what its config is written from.
    all: Vec<(u8, u8)>,
    bfd_ms: u64,
    damping: bool,
    /// What overlayd would tell each router of its gateway tunnels, and
    /// when: (at, router, gateway's name, up). Its probes (every `bfd_ms`)
    /// find a tunnel down after three misses and up again at the next
    /// reply; a change that does not last until then goes unseen.
    tunnel_events: Vec<(Instant, usize, String, bool)>,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn name(s: u8, g: u8) -> String {
    format!("s{s}-gw{g}")
}

fn asn(s: u8, g: u8) -> u32 {
    4_200_000_000 + u32::from(s) * 100 + u32::from(g)
}

impl Sim {
    /// `sites` × `gateways` routers in a full mesh; gateway g of site s has
    /// router id 10.77.s.g and AS 4200000000 + s*100 + g, and one attached
    /// host 10.77.s.(10+g).
    pub fn new(sites: u8, gateways: u8, bfd_ms: u64) -> Sim {
        Sim::with_damping(sites, gateways, bfd_ms, true)
    }

    pub fn with_damping(sites: u8, gateways: u8, bfd_ms: u64, damping: bool) -> Sim {
        Sim::build(sites, gateways, bfd_ms, damping, &[])
    }

    /// A full mesh but for the sessions between the `unlinked` pairs of
    /// names (neither end configures the other).
    pub fn without(sites: u8, gateways: u8, bfd_ms: u64, unlinked: &[(&str, &str)]) -> Sim {
        Sim::build(sites, gateways, bfd_ms, true, unlinked)
    }

    fn build(
        sites: u8,
        gateways: u8,
        bfd_ms: u64,
        damping: bool,
        unlinked: &[(&str, &str)],
    ) -> Sim {
        let now = Instant::now();
        let mut all = Vec::new();
        for s in 1..=sites {
            for g in 1..=gateways {
                all.push((s, g));
            }
        }
        let mut sim = Sim {
            now,
            routers: Vec::new(),
            names: Vec::new(),
            conns: HashMap::new(),
            next_conn: 1,
            down: BTreeSet::new(),
            changes: vec![BTreeMap::new(); all.len()],
            last_fib: vec![BTreeMap::new(); all.len()],
            all: all.clone(),
            bfd_ms,
            damping,
            tunnel_events: Vec::new(),
        };
        for (i, &(s, g)) in all.iter().enumerate() {
            let me = name(s, g);
            let skip: Vec<&str> = unlinked
                .iter()
                .filter_map(|&(a, b)| {
                    if a == me {
                        Some(b)
                    } else if b == me {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            let cfg = Config::parse(&sim.config_text(i, &skip)).expect("sim config");
            let mut r = Router::new(
                cfg,
                sim.certified(i).networks,
                vec![],
                Some(format!("fd77::{s}:{g}").parse().unwrap()),
                vec![],
                now,
                u64::from(s) << 8 | u64::from(g),
            )
            .expect("router");
            r.attach(
                &[
                    IpAddr::V4(Ipv4Addr::new(10, 77, s, 10 + g)),
                    format!("fd77::{s}:{:x}", 10 + g).parse().unwrap(),
                ],
                now,
            );
            sim.routers.push(r);
            sim.names.push(me);
        }
        sim
    }

    /// Router `r`'s config: every other router a neighbour but those
    /// named in `skip`.
    pub fn config_text(&self, r: usize, skip: &[&str]) -> String {
        let (s, g) = self.all[r];
        let (bfd_ms, damping) = (self.bfd_ms, self.damping);
        let mut text = format!(
            "asn = {}\nrouter_id = \"10.77.{s}.{g}\"\nca = \"-\"\ncert = \"-\"\n\
             [timers]\nhold_time_s = 9\nkeepalive_s = 3\nconnect_retry_s = 1\nstartup_grace_s = 5\n\
             [bfd]\ninterval_ms = {bfd_ms}\nmultiplier = 3\n[damping]\nenabled = {damping}\n",
            asn(s, g)
        );
        for &(s2, g2) in &self.all {
            if (s2, g2) != (s, g) && !skip.contains(&name(s2, g2).as_str()) {
                text.push_str(&format!(
                    "[[neighbor]]\nname = \"{}\"\naddress = \"10.77.{s2}.{g2}\"\nasn = {}\nimport = \"overlay\"\nexport = \"all\"\n",
                    name(s2, g2),
                    asn(s2, g2)
                ));
            }
        }
        text
    }

    fn certified(&self, r: usize) -> Certified {
        let (s, g) = self.all[r];
        Certified {
            networks: vec![
                "10.77.0.0/16".parse().unwrap(),
                "fd77::/48".parse().unwrap(),
            ],
            own_subnets: vec![],
            own_v6: Some(format!("fd77::{s}:{g}").parse().unwrap()),
            neighbor_subnets: vec![],
        }
    }

    /// Reloads router `r` with the config `text` (which must parse), now,
    /// and delivers what that sends.
    pub fn reconfigure(
        &mut self,
        r: usize,
        text: &str,
    ) -> Result<cubenet_api::routed::Reloaded, ReloadError> {
        let cfg = Config::parse(text).expect("sim config");
        let certs = self.certified(r);
        let now = self.now;
        let res = self.routers[r].reconfigure(cfg, certs, now);
        self.deliver();
        res
    }

    fn peer_of(&self, r: usize, n: NeighborId) -> usize {
        let addr = self.routers[r].neighbors[n].cfg.address;
        self.routers
            .iter()
            .position(|x| IpAddr::V4(x.cfg.router_id) == addr)
            .expect("neighbour router")
    }

    /// The neighbour `peer` is at router `r`, if `r` has it configured.
    fn index_at(&self, r: usize, peer: usize) -> Option<NeighborId> {
        let addr = IpAddr::V4(self.routers[peer].cfg.router_id);
        self.routers[r].neighbor_by_addr(addr)
    }

    pub fn link_down(&mut self, a: usize, b: usize) {
        self.down.insert(key(a, b));
        self.tell_tunnel(a, b, false, 3 * self.bfd_ms);
    }

    pub fn link_up(&mut self, a: usize, b: usize) {
        self.down.remove(&key(a, b));
        self.tell_tunnel(a, b, true, self.bfd_ms);
    }

    /// overlayd at both ends of a-b will say the tunnel is `up` in `ms`.
    fn tell_tunnel(&mut self, a: usize, b: usize, up: bool, ms: u64) {
        let at = self.now + Duration::from_millis(ms);
        self.tunnel_events.push((at, a, self.names[b].clone(), up));
        self.tunnel_events.push((at, b, self.names[a].clone(), up));
    }

    /// Tells the routers what overlayd has seen of their tunnels by now:
    /// each change that still holds (a link down and up again within the
    /// probes' window was not seen).
    fn tunnels_due(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tunnel_events)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        self.tunnel_events = later;
        for (_, r, gw, up) in due {
            let Some(p) = self.names.iter().position(|n| *n == gw) else {
                continue;
            };
            if self.down.contains(&key(r, p)) != up {
                self.routers[r].tunnel(&gw, up, now);
            }
        }
    }

    /// Delivers everything queued until the network is quiet.
    fn deliver(&mut self) {
        for _ in 0..1000 {
            let mut any = false;
            for r in 0..self.routers.len() {
                let outs = self.routers[r].drain();
                any |= !outs.is_empty();
                for o in outs {
                    self.carry(r, o);
                }
            }
            if !any {
                self.observe();
                return;
            }
        }
        panic!("the simulated network did not go quiet");
    }

    fn carry(&mut self, r: usize, o: Out) {
        let now = self.now;
        match o {
            Out::Connect { n } => {
                let p = self.peer_of(r, n);
                if self.down.contains(&key(r, p)) {
                    self.routers[r].on_connect_failed(n, "timed out", now);
                    return;
                }
                // A router that does not know us refuses the connection.
                let Some(pn) = self.index_at(p, r) else {
                    self.routers[r].on_connect_failed(n, "connection refused", now);
                    return;
                };
                let id = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(id, [(r, n), (p, pn)]);
                self.routers[r].on_connected(n, id, true, None, now);
                self.routers[p].on_connected(pn, id, false, None, now);
            }
            Out::Send { conn, bytes, .. } => {
                let Some(ends) = self.conns.get(&conn).copied() else {
                    return;
                };
                let (to, tn) = if ends[0].0 == r { ends[1] } else { ends[0] };
                if self.down.contains(&key(r, to)) {
                    return; // silently lost; TCP would stall
                }
                let m = wire::decode(&bytes);
                self.routers[to].on_message(tn, conn, m, now);
            }
            Out::Close { conn, .. } => {
                if let Some(ends) = self.conns.remove(&conn) {
                    let (to, tn) = if ends[0].0 == r { ends[1] } else { ends[0] };
                    if !self.down.contains(&key(r, to)) {
                        self.routers[to].on_closed(tn, conn, "closed by peer", now);
                    }
                }
            }
            Out::Bfd { n, bytes } => {
                let p = self.peer_of(r, n);
                if !self.down.contains(&key(r, p)) {
                    let from = IpAddr::V4(self.routers[r].cfg.router_id);
                    self.routers[p].on_bfd_packet(from, &bytes, now);
                }
            }
            Out::TablesChanged => {}
        }
    }

    fn observe(&mut self) {
        for r in 0..self.routers.len() {
            let fib: BTreeMap<IpNet, Vec<String>> = self.routers[r].fib().into_iter().collect();
            for (p, via) in &fib {
                if self.last_fib[r].get(p) != Some(via) {
                    *self.changes[r].entry(*p).or_default() += 1;
                }
            }
            for p in self.last_fib[r].keys() {
                if !fib.contains_key(p) {
                    *self.changes[r].entry(*p).or_default() += 1;
                }
            }
            self.last_fib[r] = fib;
        }
    }

    /// Advances the clock in 10 ms steps.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.deliver();
        while self.now < end {
            self.now += Duration::from_millis(10);
            let now = self.now;
            self.tunnels_due();
            for r in &mut self.routers {
                r.on_tick(now);
            }
            self.deliver();
        }
    }

    /// Every router's prefixes (own hosts count as present).
    pub fn tables(&self) -> Vec<BTreeSet<IpNet>> {
        self.routers
            .iter()
            .map(|r| r.routes(self.now).routes.iter().map(|x| x.prefix).collect())
            .collect()
    }

    pub fn via(&self, r: usize, prefix: &str) -> Vec<String> {
        let p: IpNet = prefix.parse().unwrap();
        self.routers[r]
            .fib()
            .into_iter()
            .find(|(q, _)| *q == p)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    pub fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_hosts(sites: u8, gws: u8) -> BTreeSet<IpNet> {
        let mut s = BTreeSet::new();
        for site in 1..=sites {
            for g in 1..=gws {
                s.insert(format!("10.77.{site}.{}/32", 10 + g).parse().unwrap());
                s.insert(format!("fd77::{site}:{:x}/128", 10 + g).parse().unwrap());
            }
        }
        s
    }

    #[test]
    fn three_sites_of_two_gateways_converge_with_ecmp() {
        let mut sim = Sim::new(3, 2, 100);
        sim.run_for(Duration::from_secs(10));
        let want = all_hosts(3, 2);
        for (i, t) in sim.tables().iter().enumerate() {
            assert_eq!(t, &want, "{}", sim.names[i]);
            assert!(sim.routers[i].fib_ready());
        }
        // A host of site 2 is reached from site 1 directly via its gateway.
        let a = sim.index("s1-gw1");
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
        assert_eq!(sim.via(a, "fd77::2:b/128"), vec!["s2-gw1"]);
    }

    /// A host attached to both gateways of its site and gone a moment
    /// later (for any moment up to a second) is withdrawn everywhere: no
    /// path learned while the announcements and withdrawals cross stays
    /// behind.
    #[test]
    fn a_host_gone_soon_after_it_came_leaves_no_route_behind() {
        let x: IpNet = "10.77.1.50/32".parse().unwrap();
        let a: IpAddr = "10.77.1.50".parse().unwrap();
        for (wait_ms, apart_ms) in (0..600)
            .step_by(20)
            .flat_map(|w| [0, 10, 30, 60].map(|d| (w, d)))
        {
            let mut sim = Sim::new(2, 2, 100);
            sim.run_for(Duration::from_secs(10));
            let (g1, g2) = (sim.index("s1-gw1"), sim.index("s1-gw2"));
            let now = sim.now;
            sim.routers[g1].attach(&[a], now);
            sim.routers[g2].attach(&[a], now + Duration::from_millis(1));
            sim.run_for(Duration::from_millis(wait_ms));
            let now = sim.now;
            sim.routers[g1].detach(&[a], now);
            sim.run_for(Duration::from_millis(apart_ms));
            let now = sim.now;
            sim.routers[g2].detach(&[a], now);
            sim.run_for(Duration::from_secs(10));
            for (i, t) in sim.tables().iter().enumerate() {
                assert!(
                    !t.contains(&x),
                    "{} still has {x} ({wait_ms} ms, {apart_ms} ms apart): {:?}",
                    sim.names[i],
                    sim.routers[i]
                        .routes(sim.now)
                        .routes
                        .iter()
                        .find(|r| r.prefix == x)
                );
            }
        }
    }

    /// A routed that stops tells its neighbours with a Cease
    /// (administrative shutdown): their routes through it go at once, not
    /// after BFD or the hold timer.
    #[test]
    fn a_stopping_router_sends_cease_and_its_routes_go_at_once() {
        let mut sim = Sim::new(2, 1, 100);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        assert_eq!(sim.via(b, "10.77.1.11/32"), vec!["s1-gw1"]);
        let now = sim.now;
        assert!(sim.routers[a].feed_table().is_some());
        sim.routers[a].shutdown(now);
        // Its own overlayd keeps its table while it drains: the stopping
        // router hands it nothing more (before, the sessions it ended
        // withdrew every route from it, and a host's reply that reached
        // the draining gateway found no route).
        assert!(sim.routers[a].feed_table().is_none());
        // Delivered within a step; BFD and the hold timer would take 300 ms
        // and more.
        sim.run_for(Duration::from_millis(20));
        assert!(
            sim.via(b, "10.77.1.11/32").is_empty(),
            "{:?}",
            sim.via(b, "10.77.1.11/32")
        );
        let st = sim.routers[b].status(sim.now);
        let n = st.neighbors.iter().find(|n| n.name == "s1-gw1").unwrap();
        let e = n.last_error.clone().unwrap_or_default();
        assert!(
            e.to_lowercase().contains("shutdown"),
            "last error: {e}; {n:?}"
        );
        // It stays down while the process finishes (ticks go on), and its
        // timer has nothing to do at once (it spun: the stop hung).
        sim.run_for(Duration::from_secs(5));
        assert!(sim.via(b, "10.77.1.11/32").is_empty());
        let now = sim.now;
        assert!(sim.routers[a].next_deadline(now) > now);
    }

    /// A router about to stop announces its routes again with
    /// GRACEFUL_SHUTDOWN (RFC 8326): where another gateway offers the same
    /// prefix, the others move to it while the session is still up; a
    /// prefix only it offers keeps its path. Then the Cease.
    #[test]
    fn a_draining_router_moves_traffic_to_its_sibling_before_its_sessions_end() {
        let mut sim = Sim::new(2, 2, 100);
        let (a1, a2, b) = (
            sim.index("s1-gw1"),
            sim.index("s1-gw2"),
            sim.index("s2-gw1"),
        );
        // A host both gateways of site 1 serve.
        let shared: IpAddr = "10.77.1.99".parse().unwrap();
        let now = sim.now;
        sim.routers[a1].attach(&[shared], now);
        sim.routers[a2].attach(&[shared], now);
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.via(b, "10.77.1.99/32"), vec!["s1-gw1", "s1-gw2"]);
        let before = sessions(&sim);
        let now = sim.now;
        assert!(sim.routers[a1].graceful_shutdown(now));
        sim.run_for(Duration::from_millis(20));
        assert_eq!(sim.via(b, "10.77.1.99/32"), vec!["s1-gw2"]);
        // Its own host has no other path: still through it.
        assert_eq!(sim.via(b, "10.77.1.11/32"), vec!["s1-gw1"]);
        assert_eq!(sessions(&sim), before, "no session moved while draining");
        let now = sim.now;
        sim.routers[a1].shutdown(now);
        sim.run_for(Duration::from_millis(20));
        assert!(sim.via(b, "10.77.1.11/32").is_empty());
        assert_eq!(sim.via(b, "10.77.1.99/32"), vec!["s1-gw2"]);
    }

    /// Every session of every router by (router, neighbour): its flap
    /// count, when it was established and its BFD state. Equal before and
    /// after means the session was not touched.
    type Sessions = BTreeMap<(String, String), (u64, Option<Instant>, String)>;

    fn sessions(sim: &Sim) -> Sessions {
        let mut m = BTreeMap::new();
        for (i, r) in sim.routers.iter().enumerate() {
            for n in r.neighbor_ids() {
                let nb = &r.neighbors[n];
                let bfd = nb.bfd.as_ref().map(|b| format!("{:?}", b.state()));
                m.insert(
                    (sim.names[i].clone(), nb.cfg.name.clone()),
                    (nb.flaps, nb.session.established_at, bfd.unwrap_or_default()),
                );
            }
        }
        m
    }

    fn neighbor_status(
        sim: &Sim,
        r: usize,
        name: &str,
    ) -> Option<cubenet_api::routed::NeighborStatus> {
        sim.routers[r]
            .status(sim.now)
            .neighbors
            .into_iter()
            .find(|n| n.name == name)
    }

    fn established(sim: &Sim, r: usize, name: &str) -> bool {
        neighbor_status(sim, r, name)
            .is_some_and(|n| n.state == cubenet_api::routed::SessionState::Established)
    }

    /// The sessions of `before` that do not involve the pair `a`-`b` are
    /// the same sessions now.
    fn others_untouched(sim: &Sim, before: &Sessions, a: &str, b: &str) {
        let now = sessions(sim);
        for (k, v) in before {
            let involved = (k.0 == a && k.1 == b) || (k.0 == b && k.1 == a);
            if !involved {
                assert_eq!(now.get(k), Some(v), "{k:?} was touched");
                assert!(v.1.is_some(), "{k:?} was not up to begin with");
            }
        }
    }

    /// A reload that adds a neighbour on both ends brings the session up;
    /// no other session of any router moves (flaps, establishment, BFD),
    /// the gateway off the new link sees no route change, and the ends
    /// change only the routes the new link shortens.
    #[test]
    fn a_reload_adding_a_neighbour_brings_it_up_and_no_other_session_moves() {
        let mut sim = Sim::without(3, 1, 100, &[("s1-gw1", "s3-gw1")]);
        sim.run_for(Duration::from_secs(10));
        let (a, b, c) = (
            sim.index("s1-gw1"),
            sim.index("s2-gw1"),
            sim.index("s3-gw1"),
        );
        assert_eq!(sim.via(a, "10.77.3.11/32"), vec!["s2-gw1"]);
        assert!(neighbor_status(&sim, a, "s3-gw1").is_none());
        let before = sessions(&sim);
        let changes = sim.changes.clone();
        let report = sim.reconfigure(a, &sim.config_text(a, &[])).unwrap();
        assert_eq!(report.added, vec!["s3-gw1"]);
        assert!(report.removed.is_empty() && report.reset.is_empty() && report.updated.is_empty());
        let report = sim.reconfigure(c, &sim.config_text(c, &[])).unwrap();
        assert_eq!(report.added, vec!["s1-gw1"]);
        let start = sim.now;
        while !(established(&sim, a, "s3-gw1") && established(&sim, c, "s1-gw1")) {
            assert!(
                sim.now - start < Duration::from_secs(5),
                "the new session never came up"
            );
            sim.run_for(Duration::from_millis(10));
        }
        sim.run_for(Duration::from_secs(5));
        assert_eq!(sim.via(a, "10.77.3.11/32"), vec!["s3-gw1"]);
        assert_eq!(sim.via(c, "10.77.1.11/32"), vec!["s1-gw1"]);
        let n = neighbor_status(&sim, a, "s3-gw1").unwrap();
        assert_eq!(
            (n.flaps, n.state),
            (0, cubenet_api::routed::SessionState::Established),
            "{n:?}"
        );
        others_untouched(&sim, &before, "s1-gw1", "s3-gw1");
        assert_eq!(sim.changes[b], changes[b], "s2-gw1's routes moved");
        // At the ends only the far end's hosts moved (to the direct link).
        for (r, far) in [(a, "10.77.3."), (c, "10.77.1.")] {
            for (p, count) in &sim.changes[r] {
                if !p.to_string().starts_with(far) && !p.to_string().starts_with("fd77::") {
                    assert_eq!(
                        changes[r].get(p),
                        Some(count),
                        "{}: {p} moved",
                        sim.names[r]
                    );
                }
            }
        }
        assert_eq!(sim.tables()[a], all_hosts(3, 1));
    }

    /// A neighbour removed by a reload hears a Cease "peer de-configured":
    /// its session ends at once, the routes through it go on both ends
    /// (the third gateway carries them), it stays down, and no other
    /// session moves.
    #[test]
    fn a_reload_removing_a_neighbour_sends_cease_and_its_routes_go_at_once() {
        let mut sim = Sim::new(3, 1, 100);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        assert_eq!(sim.via(b, "10.77.1.11/32"), vec!["s1-gw1"]);
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
        let before = sessions(&sim);
        let report = sim
            .reconfigure(a, &sim.config_text(a, &["s2-gw1"]))
            .unwrap();
        assert_eq!(report.removed, vec!["s2-gw1"]);
        assert!(report.added.is_empty() && report.reset.is_empty());
        // Within one step: no waiting for BFD or the hold timer.
        sim.run_for(Duration::from_millis(10));
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s3-gw1"]);
        assert_eq!(sim.via(b, "10.77.1.11/32"), vec!["s3-gw1"]);
        let n = neighbor_status(&sim, b, "s1-gw1").unwrap();
        assert_ne!(n.state, cubenet_api::routed::SessionState::Established);
        let e = n
            .history
            .last()
            .map(|h| h.reason.clone())
            .unwrap_or_default();
        assert!(e.contains("peer de-configured (6/3)"), "{e}; {n:?}");
        assert!(neighbor_status(&sim, a, "s2-gw1").is_none());
        // s2-gw1 keeps trying and is refused; nothing else moves.
        sim.run_for(Duration::from_secs(20));
        assert!(!established(&sim, b, "s1-gw1"));
        assert_eq!(sim.via(b, "10.77.1.11/32"), vec!["s3-gw1"]);
        others_untouched(&sim, &before, "s1-gw1", "s2-gw1");
        for t in sim.tables() {
            assert_eq!(t, all_hosts(3, 1));
        }
    }

    /// A neighbour whose settings change (here its import policy) is
    /// reset alone: a Cease "other configuration change", one flap on
    /// each end, back up at once; its BFD session, which nothing changed,
    /// stays up; no other session moves.
    #[test]
    fn a_reload_changing_a_neighbour_resets_only_it() {
        let mut sim = Sim::new(3, 1, 100);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        let before = sessions(&sim);
        let old = sim.config_text(a, &[]);
        let block =
            "name = \"s2-gw1\"\naddress = \"10.77.2.1\"\nasn = 4200000201\nimport = \"overlay\"";
        assert!(old.contains(block), "{old}");
        let text = old.replace(
            block,
            "name = \"s2-gw1\"\naddress = \"10.77.2.1\"\nasn = 4200000201\nimport = [\"10.77.0.0/16\", \"fd77::/48\"]",
        );
        let report = sim.reconfigure(a, &text).unwrap();
        assert_eq!(
            report.reset,
            vec![cubenet_api::routed::ResetNeighbor {
                name: "s2-gw1".into(),
                changed: vec!["import".into()]
            }]
        );
        assert!(report.added.is_empty() && report.removed.is_empty());
        sim.run_for(Duration::from_millis(10));
        let n = neighbor_status(&sim, b, "s1-gw1").unwrap();
        let e = n
            .history
            .last()
            .map(|h| h.reason.clone())
            .unwrap_or_default();
        assert!(
            n.history
                .iter()
                .any(|h| h.reason.contains("other configuration change (6/6)")),
            "{e}; {n:?}"
        );
        let start = sim.now;
        while !(established(&sim, a, "s2-gw1") && established(&sim, b, "s1-gw1")) {
            assert!(
                sim.now - start < Duration::from_secs(5),
                "the session did not come back"
            );
            sim.run_for(Duration::from_millis(10));
        }
        sim.run_for(Duration::from_secs(10));
        let key = |x: &str, y: &str| (x.to_string(), y.to_string());
        let now = sessions(&sim);
        for (r, nb) in [("s1-gw1", "s2-gw1"), ("s2-gw1", "s1-gw1")] {
            let (f0, _, _) = &before[&key(r, nb)];
            let (f1, up, bfd) = &now[&key(r, nb)];
            assert_eq!(*f1, f0 + 1, "{r}: {nb} flapped more than once");
            assert!(up.is_some());
            // Gateways watch each other through overlayd, not BFD.
            assert_eq!(bfd, "");
        }
        assert!(established(&sim, a, "s2-gw1"));
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
        assert_eq!(sim.via(b, "10.77.1.11/32"), vec!["s1-gw1"]);
        others_untouched(&sim, &before, "s1-gw1", "s2-gw1");
        // The same config again changes nothing.
        let report = sim.reconfigure(a, &text).unwrap();
        assert_eq!(report, cubenet_api::routed::Reloaded::default());
    }

    /// A reload the router refuses (a setting only a restart changes, a
    /// prefix our certificate does not allow) changes nothing, not even
    /// the parts of it that were fine (a neighbour removed beside it).
    #[test]
    fn a_refused_reload_leaves_everything_as_it_was() {
        let mut sim = Sim::new(3, 1, 100);
        sim.run_for(Duration::from_secs(10));
        let a = sim.index("s1-gw1");
        let before = sessions(&sim);
        let tables = sim.tables();
        let changes = sim.changes.clone();
        let ok = sim.config_text(a, &["s2-gw1"]);
        for (text, key) in [
            (
                ok.replace("router_id = \"10.77.1.1\"", "router_id = \"10.77.1.99\""),
                "router_id",
            ),
            (
                ok.replace("asn = 4200000101\n", "asn = 4200000199\n"),
                "asn",
            ),
            (format!("listen = [\"0.0.0.0:1179\"]\n{ok}"), "listen"),
            (
                ok.replace("enabled = true", "enabled = true\nhalf_life_s = 30"),
                "damping.half_life_s",
            ),
            (
                format!("{ok}[[announce]]\nprefix = \"192.168.9.0/24\"\n"),
                "announce[0].prefix",
            ),
        ] {
            let e = sim.reconfigure(a, &text).unwrap_err();
            assert!(e.to_string().starts_with(key), "{key}: {e}");
            sim.run_for(Duration::from_secs(1));
        }
        assert!(matches!(
            sim.reconfigure(
                a,
                &ok.replace("router_id = \"10.77.1.1\"", "router_id = \"10.77.1.99\"")
            ),
            Err(ReloadError::Fixed {
                key: "router_id",
                ..
            })
        ));
        assert_eq!(sessions(&sim), before);
        assert_eq!(sim.tables(), tables);
        assert_eq!(sim.changes, changes);
        assert!(neighbor_status(&sim, a, "s2-gw1").is_some());
    }

    #[test]
    fn a_failed_direct_link_routes_through_a_third_site() {
        let mut sim = Sim::new(3, 1, 100);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
        let before = sim.now;
        sim.link_down(a, b);
        // overlayd's probes (100 ms, 3 missed) say the tunnel is down: the
        // direct path is gone in well under a second.
        let mut moved = None;
        for _ in 0..100 {
            sim.run_for(Duration::from_millis(10));
            if sim.via(a, "10.77.2.11/32") == vec!["s3-gw1"] {
                moved = Some(sim.now - before);
                break;
            }
        }
        let moved = moved.expect("route moved to the third site");
        assert!(moved <= Duration::from_millis(500), "{moved:?}");
        let st = sim.routers[a].status(sim.now);
        let nb = st.neighbors.iter().find(|n| n.name == "s2-gw1").unwrap();
        assert_eq!(nb.last_error.as_deref(), Some("overlay tunnel down"));
        // Heal: the direct path returns after the stable-up period.
        sim.link_up(a, b);
        sim.run_for(Duration::from_secs(15));
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
    }

    /// Flaps the s1-gw1 <-> s2-gw1 link every 2 s for 60 s; returns the
    /// sim, after how many flaps it was suppressed, the route changes of
    /// the far host's prefix seen at s1-gw1, and the most any gateway off
    /// the link saw.
    fn flap_for_a_minute(damping: bool) -> (Sim, Option<u32>, u64, u64) {
        let mut sim = Sim::with_damping(3, 2, 100, damping);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        let far: IpNet = "10.77.2.11/32".parse().unwrap();
        let base: Vec<u64> = (0..6).map(|r| sim.changes[r].values().sum()).collect();
        let base_far = sim.changes[a].get(&far).copied().unwrap_or(0);
        let mut suppressed_at = None;
        let start = sim.now;
        for cycle in 0..15 {
            sim.link_down(a, b);
            sim.run_for(Duration::from_secs(2));
            sim.link_up(a, b);
            sim.run_for(Duration::from_secs(2));
            let st = sim.routers[a].status(sim.now);
            let nb = st.neighbors.iter().find(|n| n.name == "s2-gw1").unwrap();
            if nb.suppressed && suppressed_at.is_none() {
                suppressed_at = Some(cycle + 1);
            }
        }
        assert_eq!(sim.now - start, Duration::from_secs(60));
        let far_changes = sim.changes[a].get(&far).copied().unwrap_or(0) - base_far;
        let others = (0..6)
            .filter(|r| *r != a && *r != b)
            .map(|r| sim.changes[r].values().sum::<u64>() - base[r])
            .max()
            .unwrap_or(0);
        (sim, suppressed_at, far_changes, others)
    }

    #[test]
    fn a_link_flapping_every_two_seconds_is_suppressed_and_returns_when_stable() {
        let (mut sim, at, far, others) = flap_for_a_minute(true);
        let (_, _, far_undamped, _) = flap_for_a_minute(false);
        eprintln!(
            "suppressed after {at:?} flaps; s1-gw1 changed its route to the far host {far} times \
             (without damping {far_undamped}); gateways off the link saw at most {others} changes"
        );
        let at = at.expect("suppressed while flapping");
        assert!(at <= 3, "suppressed only after {at} flaps");
        // The bound: at most 2 changes per flap before suppression (away and
        // back), and none while suppressed; gateways off the link see none.
        assert!(far <= 2 * u64::from(at), "{far} changes at s1-gw1");
        assert!(far_undamped > far, "damping made no difference");
        assert_eq!(others, 0);
        // Stable again: back within max_suppress + stable_up.
        let a = sim.index("s1-gw1");
        sim.run_for(Duration::from_secs(70));
        let st = sim.routers[a].status(sim.now);
        let nb = st.neighbors.iter().find(|n| n.name == "s2-gw1").unwrap();
        assert_eq!(
            nb.state,
            cubenet_api::routed::SessionState::Established,
            "{nb:?}"
        );
        assert!(!nb.suppressed);
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
        let want = all_hosts(3, 2);
        for t in sim.tables() {
            assert_eq!(t, want);
        }
    }

    #[test]
    fn a_link_suppressed_by_its_last_flap_is_stopped_at_the_next_tick() {
        use cubenet_api::routed::SessionState;
        let mut sim = Sim::with_damping(3, 2, 100, true);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        for _ in 0..15 {
            sim.link_down(a, b);
            for _ in 0..200 {
                sim.run_for(Duration::from_millis(10));
                let r = &sim.routers[a];
                let st = r.status(sim.now);
                let nb = st.neighbors.iter().find(|n| n.name == "s2-gw1").unwrap();
                if nb.suppressed {
                    // Either stopped already or stopped by a tick due now:
                    // the driver must not sleep while the session may
                    // reconnect on a link it has to keep down.
                    assert!(
                        nb.state == SessionState::Idle || r.next_deadline(sim.now) == sim.now,
                        "{nb:?}"
                    );
                    sim.run_for(Duration::from_millis(10));
                    let st = sim.routers[a].status(sim.now);
                    let nb = st.neighbors.iter().find(|n| n.name == "s2-gw1").unwrap();
                    assert_eq!(nb.state, SessionState::Idle, "{nb:?}");
                    return;
                }
            }
            sim.link_up(a, b);
            sim.run_for(Duration::from_secs(2));
        }
        panic!("never suppressed");
    }

    #[test]
    fn a_partition_and_heal_ends_with_equal_tables() {
        let mut sim = Sim::new(3, 2, 100);
        sim.run_for(Duration::from_secs(10));
        // Site 3 is cut off from sites 1 and 2.
        let s3: Vec<usize> = (0..6).filter(|r| sim.names[*r].starts_with("s3")).collect();
        let rest: Vec<usize> = (0..6).filter(|r| !s3.contains(r)).collect();
        for &a in &s3 {
            for &b in &rest {
                sim.link_down(a, b);
            }
        }
        sim.run_for(Duration::from_secs(5));
        let t = sim.tables();
        assert!(!t[rest[0]].contains(&"10.77.3.11/32".parse().unwrap()));
        assert!(!t[s3[0]].contains(&"10.77.1.11/32".parse().unwrap()));
        for &a in &s3 {
            for &b in &rest {
                sim.link_up(a, b);
            }
        }
        sim.run_for(Duration::from_secs(20));
        let want = all_hosts(3, 2);
        for (i, t) in sim.tables().iter().enumerate() {
            assert_eq!(t, &want, "{}", sim.names[i]);
        }
    }
}
