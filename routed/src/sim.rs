//! A simulated network of routers in memory, on a virtual clock: every
//! router is the real [`Router`], every message goes through the real
//! encoder and decoder, and links between gateways can fail, flap and heal.

use crate::config::Config;
use crate::rib::NeighborId;
use crate::router::{Out, Router};
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
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// `sites` × `gateways` routers in a full mesh; gateway g of site s has
    /// router id 10.77.s.g and AS 4200000000 + s*100 + g, and one attached
    /// host 10.77.s.(10+g).
    pub fn new(sites: u8, gateways: u8, bfd_ms: u64) -> Sim {
        Sim::with_damping(sites, gateways, bfd_ms, true)
    }

    pub fn with_damping(sites: u8, gateways: u8, bfd_ms: u64, damping: bool) -> Sim {
        let now = Instant::now();
        let mut all = Vec::new();
        for s in 1..=sites {
            for g in 1..=gateways {
                all.push((s, g));
            }
        }
        let name = |s: u8, g: u8| format!("s{s}-gw{g}");
        let asn = |s: u8, g: u8| 4_200_000_000 + u32::from(s) * 100 + u32::from(g);
        let mut routers = Vec::new();
        let mut names = Vec::new();
        for &(s, g) in &all {
            let mut text = format!(
                "asn = {}\nrouter_id = \"10.77.{s}.{g}\"\nca = \"-\"\ncert = \"-\"\n\
                 [timers]\nhold_time_s = 9\nkeepalive_s = 3\nconnect_retry_s = 1\nstartup_grace_s = 5\n\
                 [bfd]\ninterval_ms = {bfd_ms}\nmultiplier = 3\n[damping]\nenabled = {damping}\n",
                asn(s, g)
            );
            for &(s2, g2) in &all {
                if (s2, g2) != (s, g) {
                    text.push_str(&format!(
                        "[[neighbor]]\nname = \"{}\"\naddress = \"10.77.{s2}.{g2}\"\nasn = {}\nimport = \"overlay\"\nexport = \"all\"\n",
                        name(s2, g2),
                        asn(s2, g2)
                    ));
                }
            }
            let cfg = Config::parse(&text).expect("sim config");
            let mut r = Router::new(
                cfg,
                vec![
                    "10.77.0.0/16".parse().unwrap(),
                    "fd77::/48".parse().unwrap(),
                ],
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
            routers.push(r);
            names.push(name(s, g));
        }
        let n = routers.len();
        Sim {
            now,
            routers,
            names,
            conns: HashMap::new(),
            next_conn: 1,
            down: BTreeSet::new(),
            changes: vec![BTreeMap::new(); n],
            last_fib: vec![BTreeMap::new(); n],
        }
    }

    fn peer_of(&self, r: usize, n: NeighborId) -> usize {
        let addr = self.routers[r].neighbors[n].cfg.address;
        self.routers
            .iter()
            .position(|x| IpAddr::V4(x.cfg.router_id) == addr)
            .expect("neighbour router")
    }

    fn index_at(&self, r: usize, peer: usize) -> NeighborId {
        let addr = IpAddr::V4(self.routers[peer].cfg.router_id);
        self.routers[r].neighbor_by_addr(addr).expect("configured")
    }

    pub fn link_down(&mut self, a: usize, b: usize) {
        self.down.insert(key(a, b));
    }

    pub fn link_up(&mut self, a: usize, b: usize) {
        self.down.remove(&key(a, b));
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
                let id = self.next_conn;
                self.next_conn += 1;
                let pn = self.index_at(p, r);
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
        sim.routers[a].shutdown(now);
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

    #[test]
    fn a_failed_direct_link_routes_through_a_third_site() {
        let mut sim = Sim::new(3, 1, 100);
        sim.run_for(Duration::from_secs(10));
        let (a, b) = (sim.index("s1-gw1"), sim.index("s2-gw1"));
        assert_eq!(sim.via(a, "10.77.2.11/32"), vec!["s2-gw1"]);
        let before = sim.now;
        sim.link_down(a, b);
        // BFD 100 ms x 3: the direct path is gone in well under a second.
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
        assert_eq!(nb.last_error.as_deref(), Some("BFD down"));
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
