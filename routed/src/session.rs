//! The BGP finite state machine of one neighbour (RFC 4271 §8), sans IO.
//!
//! A neighbour may have two TCP connections at once (ours and theirs); each
//! runs OpenSent → OpenConfirm → Established on its own, and a collision is
//! resolved by BGP identifier (§6.8): the connection opened by the speaker
//! with the higher identifier stays. The driver owns the sockets and feeds
//! connection events, decoded messages and the clock; the session answers
//! with [`Action`]s.

use crate::wire::{
    Cease, DecodeError, GracefulRestart, Message, Notification, Open, OpenError, Reason, Update,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub type ConnId = u64;

/// The hold time to use before the OPENs are exchanged (RFC 4271 §8: large).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// Error back-off: the connect-retry delay doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A session up this long resets the error back-off.
const STABLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub peer_asn: u32,
    pub hold_time: u16,
    pub keepalive: u16,
    pub connect_retry: Duration,
    /// Only accept connections, never open one.
    pub passive: bool,
    /// The graceful restart capability we send (RFC 4724), if any.
    pub graceful_restart: Option<GracefulRestart>,
    /// Ask for several paths per prefix (ADD-PATH receive, RFC 7911).
    pub add_path_receive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl From<State> for cubenet_api::routed::SessionState {
    fn from(s: State) -> Self {
        use cubenet_api::routed::SessionState as S;
        match s {
            State::Idle => S::Idle,
            State::Connect => S::Connect,
            State::Active => S::Active,
            State::OpenSent => S::OpenSent,
            State::OpenConfirm => S::OpenConfirm,
            State::Established => S::Established,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the neighbour; answer with `on_connected`
    /// or `on_connect_failed`.
    Connect,
    Send(ConnId, Message),
    Close(ConnId),
    /// The session is established with this OPEN from the neighbour.
    Up(Open),
    /// The established session ended.
    Down(String),
    Update(Update),
    RouteRefresh {
        ipv6: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    outbound: bool,
    state: ConnState,
    peer: Option<Open>,
    hold: Duration,
    hold_deadline: Option<Instant>,
    keepalive_every: Duration,
    keepalive_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Session {
    pub cfg: SessionConfig,
    conns: Vec<Conn>,
    enabled: bool,
    connecting: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    pub established_at: Option<Instant>,
    pub last_error: Option<String>,
    pub peer_open: Option<Open>,
    /// The neighbour's graceful restart capability when its session last
    /// ended the way a restart does (see `went_down`), if both sides
    /// sent one: what a helper keeps its routes for.
    pub restarting_peer: Option<GracefulRestart>,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        let backoff = cfg.connect_retry;
        Session {
            cfg,
            conns: Vec::new(),
            enabled: false,
            connecting: false,
            retry_at: None,
            backoff,
            established_at: None,
            last_error: None,
            peer_open: None,
            restarting_peer: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> State {
        let best = self.conns.iter().map(|c| c.state).max_by_key(|s| match s {
            ConnState::OpenSent => 0,
            ConnState::OpenConfirm => 1,
            ConnState::Established => 2,
        });
        match best {
            Some(ConnState::Established) => State::Established,
            Some(ConnState::OpenConfirm) => State::OpenConfirm,
            Some(ConnState::OpenSent) => State::OpenSent,
            None if !self.enabled => State::Idle,
            None if self.connecting => State::Connect,
            None => State::Active,
        }
    }

    pub fn is_established(&self) -> bool {
        self.state() == State::Established
    }

    /// The connection carrying the established session.
    pub fn established_conn(&self) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|c| c.state == ConnState::Established)
            .map(|c| c.id)
    }

    fn our_open(&self) -> Open {
        Open {
            graceful_restart: self.cfg.graceful_restart,
            add_path_receive: [self.cfg.add_path_receive; 2],
            ..Open::new(self.cfg.local_asn, self.cfg.hold_time, self.cfg.router_id)
        }
    }

    /// Per family (`[IPv4, IPv6]`), whether the established session's
    /// UPDATEs carry path identifiers: we asked to receive several paths
    /// and the neighbour said it sends them (RFC 7911 §4).
    pub fn add_path_rx(&self) -> [bool; 2] {
        let peer = self.peer_open.as_ref();
        [0, 1].map(|i| self.cfg.add_path_receive && peer.is_some_and(|o| o.add_path_send[i]))
    }

    /// Allows the session to run (ManualStart).
    pub fn start(&mut self, now: Instant) {
        if !self.enabled {
            self.enabled = true;
            self.retry_at = Some(now);
        }
    }

    /// Takes the session down. With a notification it is sent first; without
    /// (BFD down, RFC 5882) the connections just close.
    pub fn stop(&mut self, why: &str, notify: Option<Notification>, now: Instant) -> Vec<Action> {
        self.enabled = false;
        self.connecting = false;
        let mut out = Vec::new();
        self.drop_all(why, notify, now, &mut out);
        out
    }

    /// Drops every connection but keeps the session enabled (it reconnects
    /// after the back-off).
    pub fn reset(&mut self, why: &str, notify: Option<Notification>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.drop_all(why, notify, now, &mut out);
        out
    }

    fn drop_all(
        &mut self,
        why: &str,
        notify: Option<Notification>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let was_up = self.is_established();
        for c in std::mem::take(&mut self.conns) {
            if let Some(n) = &notify {
                out.push(Action::Send(c.id, Message::Notification(n.clone())));
            }
            out.push(Action::Close(c.id));
        }
        if was_up {
            self.went_down(why, false, now, out);
        }
        self.retry_at = Some(now + self.backoff);
    }

    /// The session ended; `clean`: its connection closed or failed under
    /// it, with no NOTIFICATION either way and not by our decision — what
    /// a neighbour's restart looks like (RFC 4724 §4.2).
    fn went_down(&mut self, why: &str, clean: bool, now: Instant, out: &mut Vec<Action>) {
        if let Some(t) = self.established_at.take() {
            if now.duration_since(t) >= STABLE {
                self.backoff = self.cfg.connect_retry;
            }
        }
        self.last_error = Some(why.to_string());
        self.restarting_peer = if clean && self.cfg.graceful_restart.is_some() {
            self.peer_open.as_ref().and_then(|o| o.graceful_restart)
        } else {
            None
        };
        self.peer_open = None;
        out.push(Action::Down(why.to_string()));
    }

    /// An error ends this attempt: back off twice as long next time.
    fn error(&mut self, why: String) {
        self.last_error = Some(why);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The path to the neighbour works again (BFD came up): try at once
    /// rather than after a connection attempt that may hang on the dead
    /// path. A late answer to that attempt is resolved like a collision.
    pub fn kick(&mut self, now: Instant) {
        if self.enabled && !self.is_established() && self.conns.is_empty() {
            self.connecting = false;
            self.retry_at = Some(now);
        }
    }

    pub fn on_connect_failed(&mut self, why: &str, now: Instant) {
        self.connecting = false;
        self.last_error = Some(format!("connect: {why}"));
        self.retry_at = Some(now + self.backoff);
    }

    /// A TCP connection to the neighbour is up (`outbound`: we opened it).
    pub fn on_connected(&mut self, id: ConnId, outbound: bool, now: Instant) -> Vec<Action> {
        if outbound {
            self.connecting = false;
        }
        if !self.enabled {
            return vec![Action::Close(id)];
        }
        if self.is_established() {
            return vec![
                Action::Send(
                    id,
                    Message::Notification(Notification::new(Reason::Cease(
                        Cease::ConnectionCollisionResolution,
                    ))),
                ),
                Action::Close(id),
            ];
        }
        self.conns.push(Conn {
            id,
            outbound,
            state: ConnState::OpenSent,
            peer: None,
            hold: OPEN_HOLD,
            hold_deadline: Some(now + OPEN_HOLD),
            keepalive_every: Duration::ZERO,
            keepalive_at: None,
        });
        vec![Action::Send(id, Message::Open(self.our_open()))]
    }

    /// The connection closed under us.
    /// Connection `id` closed or failed under us (the driver saw it end).
    pub fn on_closed(&mut self, id: ConnId, why: &str, now: Instant) -> Vec<Action> {
        self.closed(id, why, true, now)
    }

    /// Connection `id` was dropped by us (it stopped reading): no restart
    /// of the neighbour's.
    pub fn on_dropped(&mut self, id: ConnId, why: &str, now: Instant) -> Vec<Action> {
        self.closed(id, why, false, now)
    }

    fn closed(&mut self, id: ConnId, why: &str, clean: bool, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(pos) = self.conns.iter().position(|c| c.id == id) else {
            return out;
        };
        let c = self.conns.remove(pos);
        if c.state == ConnState::Established {
            self.went_down(why, clean, now, &mut out);
        } else {
            self.last_error = Some(why.to_string());
        }
        if self.conns.is_empty() {
            self.retry_at = Some(now + self.backoff);
        }
        out
    }

    /// A message on connection `id` that could not be decoded.
    pub fn on_decode_error(&mut self, id: ConnId, e: &DecodeError, now: Instant) -> Vec<Action> {
        self.close_with(id, e.notification.clone(), &format!("sent: {e}"), now)
    }

    fn close_with(&mut self, id: ConnId, n: Notification, why: &str, now: Instant) -> Vec<Action> {
        let mut out = vec![
            Action::Send(id, Message::Notification(n)),
            Action::Close(id),
        ];
        self.error(why.to_string());
        out.extend(self.closed(id, why, false, now));
        out
    }

    fn check_open(&self, o: &Open) -> Result<Duration, (Notification, String)> {
        if o.asn != self.cfg.peer_asn {
            return Err((
                Notification::new(Reason::Open(OpenError::BadPeerAs)),
                format!(
                    "neighbour says AS {}, configured {}",
                    o.asn, self.cfg.peer_asn
                ),
            ));
        }
        if o.hold_time == 1 || o.hold_time == 2 {
            return Err((
                Notification::new(Reason::Open(OpenError::UnacceptableHoldTime)),
                format!("hold time {} s", o.hold_time),
            ));
        }
        if !o.asn4 {
            return Err((
                Notification::new(Reason::Open(OpenError::UnsupportedCapability)),
                "neighbour lacks the 4-byte AS capability".into(),
            ));
        }
        if o.router_id == self.cfg.router_id {
            return Err((
                Notification::new(Reason::Open(OpenError::BadBgpIdentifier)),
                format!("neighbour uses our router id {}", o.router_id),
            ));
        }
        Ok(Duration::from_secs(u64::from(
            o.hold_time.min(self.cfg.hold_time),
        )))
    }

    pub fn on_message(&mut self, id: ConnId, m: Message, now: Instant) -> Vec<Action> {
        let Some(pos) = self.conns.iter().position(|c| c.id == id) else {
            return vec![Action::Close(id)];
        };
        let state = self.conns[pos].state;
        // Every message counts as a sign of life once OPENs are exchanged.
        {
            let c = &mut self.conns[pos];
            if c.state != ConnState::OpenSent && !c.hold.is_zero() {
                c.hold_deadline = Some(now + c.hold);
            }
        }
        match (state, m) {
            (_, Message::Notification(n)) => {
                let why = format!("received: {n}");
                let mut out = vec![Action::Close(id)];
                // Losing a collision is no error: the other connection
                // goes on, and a later attempt should not wait longer.
                let collision = n.reason == Reason::Cease(Cease::ConnectionCollisionResolution);
                if !collision {
                    self.error(why.clone());
                }
                out.extend(self.closed(id, &why, false, now));
                out
            }
            (ConnState::OpenSent, Message::Open(o)) => match self.check_open(&o) {
                Err((n, why)) => self.close_with(id, n, &why, now),
                Ok(hold) => {
                    let keepalive = if hold.is_zero() {
                        Duration::ZERO
                    } else {
                        (hold / 3).min(Duration::from_secs(u64::from(self.cfg.keepalive.max(1))))
                    };
                    let c = &mut self.conns[pos];
                    c.state = ConnState::OpenConfirm;
                    c.peer = Some(o.clone());
                    c.hold = hold;
                    c.hold_deadline = (!hold.is_zero()).then(|| now + hold);
                    c.keepalive_every = keepalive;
                    c.keepalive_at = (!keepalive.is_zero()).then(|| now + keepalive);
                    // The KEEPALIVE only on a connection that stays: one
                    // on the loser would establish the session at the
                    // other end just before the Cease takes it down again.
                    let resolved = self.resolve_collision(id, &o, now);
                    if resolved.contains(&Action::Close(id)) {
                        return resolved;
                    }
                    let mut out = vec![Action::Send(id, Message::Keepalive)];
                    out.extend(resolved);
                    out
                }
            },
            (ConnState::OpenConfirm, Message::Keepalive) => {
                self.conns[pos].state = ConnState::Established;
                let open = self.conns[pos]
                    .peer
                    .clone()
                    .expect("OPEN seen in OpenConfirm");
                let mut out = Vec::new();
                // Any other connection of this neighbour loses.
                let others: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|c| c.id != id)
                    .map(|c| c.id)
                    .collect();
                for o in others {
                    out.push(Action::Send(
                        o,
                        Message::Notification(Notification::new(Reason::Cease(
                            Cease::ConnectionCollisionResolution,
                        ))),
                    ));
                    out.push(Action::Close(o));
                    self.conns.retain(|c| c.id != o);
                }
                self.established_at = Some(now);
                self.last_error = None;
                self.peer_open = Some(open.clone());
                out.push(Action::Up(open));
                out
            }
            (ConnState::Established, Message::Keepalive) => vec![],
            (ConnState::Established, Message::Update(u)) => vec![Action::Update(u)],
            (ConnState::Established, Message::RouteRefresh { ipv6 }) => {
                vec![Action::RouteRefresh { ipv6 }]
            }
            (s, m) => {
                let why = format!("unexpected {} in {s:?}", kind(&m));
                self.close_with(id, Notification::new(Reason::Fsm), &why, now)
            }
        }
    }

    /// RFC 4271 §6.8: two connections to the same peer.
    fn resolve_collision(&mut self, id: ConnId, o: &Open, now: Instant) -> Vec<Action> {
        // This OPEN tells the peer's identifier, so a second connection
        // still in OpenSent is resolved now too: both ends keep the same
        // connection and neither establishes on the one that loses.
        let Some(other) = self
            .conns
            .iter()
            .find(|c| c.id != id && c.state != ConnState::Established)
        else {
            return vec![];
        };
        let other_id = other.id;
        let this_outbound = self.conns.iter().find(|c| c.id == id).map(|c| c.outbound);
        // Keep the connection initiated by the higher identifier.
        let we_are_higher = u32::from(self.cfg.router_id) > u32::from(o.router_id);
        let loser = if this_outbound == Some(we_are_higher) {
            other_id
        } else {
            id
        };
        let mut out = vec![
            Action::Send(
                loser,
                Message::Notification(Notification::new(Reason::Cease(
                    Cease::ConnectionCollisionResolution,
                ))),
            ),
            Action::Close(loser),
        ];
        self.conns.retain(|c| c.id != loser);
        let _ = now;
        out.shrink_to_fit();
        out
    }

    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| c.hold_deadline.is_some_and(|d| now >= d))
            .map(|c| c.id)
            .collect();
        for id in expired {
            out.extend(self.close_with(
                id,
                Notification::new(Reason::HoldTimerExpired),
                "hold timer expired",
                now,
            ));
        }
        for c in &mut self.conns {
            if let Some(at) = c.keepalive_at {
                if now >= at {
                    out.push(Action::Send(c.id, Message::Keepalive));
                    c.keepalive_at = Some(now + c.keepalive_every);
                }
            }
        }
        if self.enabled
            && !self.cfg.passive
            && self.conns.is_empty()
            && !self.connecting
            && self.retry_at.is_some_and(|t| now >= t)
        {
            self.connecting = true;
            self.retry_at = None;
            out.push(Action::Connect);
        }
        out
    }

    /// When `on_tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for c in &self.conns {
            min(c.hold_deadline);
            min(c.keepalive_at);
        }
        if self.enabled && !self.cfg.passive && self.conns.is_empty() && !self.connecting {
            min(self.retry_at);
        }
        t
    }

    /// The current connect-retry delay (doubles on errors).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh { .. } => "ROUTE-REFRESH",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(asn: u32, peer: u32, id: [u8; 4]) -> SessionConfig {
        SessionConfig {
            local_asn: asn,
            router_id: Ipv4Addr::from(id),
            peer_asn: peer,
            hold_time: 9,
            keepalive: 3,
            connect_retry: Duration::from_secs(1),
            passive: false,
            graceful_restart: None,
            add_path_receive: false,
        }
    }

    /// Two sessions and a perfect wire between them: connection ids are
    /// shared, `a_out` says which side opened each.
    struct Pair {
        a: Session,
        b: Session,
        now: Instant,
        next_id: ConnId,
        /// conn id -> opened by a
        conns: Vec<(ConnId, bool)>,
        a_events: Vec<Action>,
        b_events: Vec<Action>,
    }

    impl Pair {
        fn new() -> Pair {
            let now = Instant::now();
            let mut a = Session::new(cfg(65001, 65002, [10, 0, 0, 1]));
            let mut b = Session::new(cfg(65002, 65001, [10, 0, 0, 2]));
            a.start(now);
            b.start(now);
            Pair {
                a,
                b,
                now,
                next_id: 1,
                conns: vec![],
                a_events: vec![],
                b_events: vec![],
            }
        }

        /// Delivers actions until quiet.
        fn run(&mut self, mut from_a: Vec<Action>, mut from_b: Vec<Action>) {
            for _ in 0..100 {
                if from_a.is_empty() && from_b.is_empty() {
                    return;
                }
                let (mut na, mut nb) = (vec![], vec![]);
                for act in from_a.drain(..) {
                    match act {
                        Action::Connect => {
                            let id = self.next_id;
                            self.next_id += 1;
                            self.conns.push((id, true));
                            na.extend(self.a.on_connected(id, true, self.now));
                            nb.extend(self.b.on_connected(id, false, self.now));
                        }
                        Action::Send(id, m) => nb.extend(self.b.on_message(id, m, self.now)),
                        Action::Close(id) => nb.extend(self.b.on_closed(id, "closed", self.now)),
                        other => self.a_events.push(other),
                    }
                }
                for act in from_b.drain(..) {
                    match act {
                        Action::Connect => {
                            let id = self.next_id;
                            self.next_id += 1;
                            self.conns.push((id, false));
                            nb.extend(self.b.on_connected(id, true, self.now));
                            na.extend(self.a.on_connected(id, false, self.now));
                        }
                        Action::Send(id, m) => na.extend(self.a.on_message(id, m, self.now)),
                        Action::Close(id) => na.extend(self.a.on_closed(id, "closed", self.now)),
                        other => self.b_events.push(other),
                    }
                }
                from_a = na;
                from_b = nb;
            }
            panic!("no quiescence");
        }

        fn tick(&mut self, d: Duration) {
            self.now += d;
            let a = self.a.on_tick(self.now);
            let b = self.b.on_tick(self.now);
            self.run(a, b);
        }
    }

    #[test]
    fn both_sides_connect_at_once_and_one_connection_survives() {
        let mut p = Pair::new();
        p.tick(Duration::ZERO);
        assert!(p.a.is_established(), "{:?}", p.a.state());
        assert!(p.b.is_established());
        assert_eq!(p.a.conns.len(), 1);
        assert_eq!(p.a.established_conn(), p.b.established_conn());
        // b has the higher id, so the connection b opened stays.
        let id = p.a.established_conn().unwrap();
        assert!(p.conns.contains(&(id, false)), "{:?}", p.conns);
        assert!(matches!(p.a_events[..], [Action::Up(_)]));
    }

    #[test]
    fn a_collision_seen_by_one_end_first_never_establishes_the_losing_connection() {
        // a (the lower identifier) opens X; b opens Y, and b has both
        // before a has accepted Y: b resolves the collision at a's OPEN on
        // X, which loses (b initiated Y and has the higher identifier).
        let mut p = Pair::new();
        let now = p.now;
        let (x, y) = (1, 2);
        let open_a = p.a.on_connected(x, true, now);
        let open_b_x = p.b.on_connected(x, false, now);
        let open_b_y = p.b.on_connected(y, true, now);
        let mut to_a = Vec::new();
        for act in open_a {
            if let Action::Send(id, m) = act {
                to_a.extend(p.b.on_message(id, m, now));
            }
        }
        assert!(
            !to_a.contains(&Action::Send(x, Message::Keepalive)),
            "b confirmed the connection it closes: {to_a:?}"
        );
        // a gets b's OPEN on X, then what b did on X.
        let mut a_did = Vec::new();
        for act in open_b_x.into_iter().chain(to_a) {
            match act {
                Action::Send(id, m) => a_did.extend(p.a.on_message(id, m, now)),
                Action::Close(id) => a_did.extend(p.a.on_closed(id, "closed", now)),
                _ => {}
            }
        }
        assert!(!p.a.is_established());
        assert!(
            !a_did
                .iter()
                .any(|a| matches!(a, Action::Up(_) | Action::Down(_))),
            "{a_did:?}"
        );
        // Losing a collision is no error: no longer back-off.
        assert_eq!(p.a.backoff(), Duration::from_secs(1));
        // Then Y, which both keep.
        let open_a_y = p.a.on_connected(y, false, now);
        p.run(open_a_y, open_b_y);
        assert!(p.a.is_established() && p.b.is_established());
        assert_eq!(p.a.established_conn(), Some(y));
        assert_eq!(p.b.established_conn(), Some(y));
        assert!(
            !p.a_events.iter().any(|a| matches!(a, Action::Down(_))),
            "{:?}",
            p.a_events
        );
    }

    #[test]
    fn keepalives_hold_the_session_and_silence_ends_it() {
        let mut p = Pair::new();
        p.tick(Duration::ZERO);
        for _ in 0..30 {
            p.tick(Duration::from_secs(1));
        }
        assert!(p.a.is_established());
        // b goes silent: a's hold timer (9 s) fires.
        let a_conn = p.a.established_conn().unwrap();
        let mut down_at = None;
        for s in 1..=12 {
            p.now += Duration::from_secs(1);
            let acts = p.a.on_tick(p.now);
            if acts.iter().any(|a| matches!(a, Action::Down(_))) {
                down_at = Some(s);
                assert!(acts.contains(&Action::Send(
                    a_conn,
                    Message::Notification(Notification::new(Reason::HoldTimerExpired))
                )));
                break;
            }
        }
        assert_eq!(down_at, Some(9));
        assert_eq!(p.a.last_error.as_deref(), Some("hold timer expired"));
    }

    #[test]
    fn wrong_peer_as_is_refused_and_backs_off() {
        let now = Instant::now();
        let mut a = Session::new(cfg(65001, 65009, [10, 0, 0, 1]));
        a.start(now);
        assert_eq!(a.on_tick(now), vec![Action::Connect]);
        a.on_connected(1, true, now);
        let open = Open::new(65002, 9, Ipv4Addr::new(10, 0, 0, 2));
        let acts = a.on_message(1, Message::Open(open), now);
        assert_eq!(
            acts[0],
            Action::Send(
                1,
                Message::Notification(Notification::new(Reason::Open(OpenError::BadPeerAs)))
            )
        );
        assert!(a.last_error.as_ref().unwrap().contains("65002"));
        assert_eq!(a.backoff(), Duration::from_secs(2));
        // No reconnect before the back-off.
        assert!(a.on_tick(now + Duration::from_millis(1500)).is_empty());
        assert_eq!(
            a.on_tick(now + Duration::from_secs(2)),
            vec![Action::Connect]
        );
    }

    #[test]
    fn stop_without_notification_for_bfd_down() {
        let mut p = Pair::new();
        p.tick(Duration::ZERO);
        let id = p.a.established_conn().unwrap();
        let acts = p.a.stop("BFD down", None, p.now);
        assert_eq!(
            acts,
            vec![Action::Close(id), Action::Down("BFD down".into())]
        );
        assert_eq!(p.a.state(), State::Idle);
    }

    #[test]
    fn an_update_before_established_is_an_fsm_error() {
        let now = Instant::now();
        let mut a = Session::new(cfg(65001, 65002, [10, 0, 0, 1]));
        a.start(now);
        a.on_connected(1, false, now);
        let acts = a.on_message(1, Message::Update(Update::default()), now);
        assert!(matches!(
            &acts[0],
            Action::Send(1, Message::Notification(n)) if n.reason == Reason::Fsm
        ));
    }

    #[test]
    fn a_connection_while_established_is_refused() {
        let mut p = Pair::new();
        p.tick(Duration::ZERO);
        let acts = p.a.on_connected(99, false, p.now);
        assert_eq!(acts.last(), Some(&Action::Close(99)));
        assert!(p.a.is_established());
    }
}
