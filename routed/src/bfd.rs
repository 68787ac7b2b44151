//! BFD asynchronous mode (RFC 5880) for single-hop sessions (RFC 5881), sans-IO.
//!
//! The caller decodes received datagrams with [`ControlPacket::decode`], feeds them to
//! [`Session::on_packet`], calls [`Session::poll`] at [`Session::next_deadline`] and sends
//! whatever `poll` returns. Echo, demand mode and authentication are not implemented.
//! The driver handles RFC 5881 transport: UDP port 3784, TTL 255 sent, and received
//! packets checked for TTL (hop limit) 255 from the ancillary data the kernel gives
//! with each (`IP_RECVTTL`, `IPV6_RECVHOPLIMIT`): [`Session::discard`] counts the others.
//!
//! Without authentication a packet is told from a forgery by its discriminators: the
//! caller picks the local one at random, and once a session is Up only packets
//! addressed to it count — a Down with a zero Your Discriminator (RFC 5880 §6.8.6 allows
//! it for session selection) would let anyone who can send from the neighbour's address
//! take the session down blind. A neighbour that restarted is noticed by the detection
//! time instead. Packets that fail a check are counted ([`Session::discarded`]).

use std::fmt;
use std::time::{Duration, Instant};

/// Length of a control packet without authentication section.
pub const PACKET_LEN: usize = 24;

/// Largest interval the wire format can carry (`u32::MAX` microseconds).
const MAX_WIRE: Duration = Duration::from_micros(u32::MAX as u64);

/// Session state as carried on the wire (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Administratively down (0).
    AdminDown = 0,
    /// Down (1).
    Down = 1,
    /// Init (2).
    Init = 2,
    /// Up (3).
    Up = 3,
}

impl From<State> for cubenet_api::routed::BfdState {
    fn from(s: State) -> Self {
        use cubenet_api::routed::BfdState as B;
        match s {
            State::AdminDown => B::AdminDown,
            State::Down => B::Down,
            State::Init => B::Init,
            State::Up => B::Up,
        }
    }
}

impl State {
    fn from_bits(b: u8) -> State {
        [State::AdminDown, State::Down, State::Init, State::Up][usize::from(b & 3)]
    }
}

/// Diagnostic code (RFC 5880 §4.1); reserved codes are preserved in `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diag {
    /// 0: no diagnostic.
    None,
    /// 1: control detection time expired.
    ControlDetectionTimeExpired,
    /// 2: echo function failed.
    EchoFunctionFailed,
    /// 3: neighbor signaled session down.
    NeighborSignaledSessionDown,
    /// 4: forwarding plane reset.
    ForwardingPlaneReset,
    /// 5: path down.
    PathDown,
    /// 6: concatenated path down.
    ConcatenatedPathDown,
    /// 7: administratively down.
    AdministrativelyDown,
    /// 8: reverse concatenated path down.
    ReverseConcatenatedPathDown,
    /// A reserved code (9..=31) as received.
    Unknown(u8),
}

/// Diagnostics with defined codes, indexed by code.
const KNOWN_DIAGS: [Diag; 9] = [
    Diag::None,
    Diag::ControlDetectionTimeExpired,
    Diag::EchoFunctionFailed,
    Diag::NeighborSignaledSessionDown,
    Diag::ForwardingPlaneReset,
    Diag::PathDown,
    Diag::ConcatenatedPathDown,
    Diag::AdministrativelyDown,
    Diag::ReverseConcatenatedPathDown,
];

impl Diag {
    /// Maps the low 5 bits of `code` to a diagnostic.
    pub fn from_code(code: u8) -> Diag {
        let c = code & 0x1f;
        KNOWN_DIAGS
            .get(usize::from(c))
            .copied()
            .unwrap_or(Diag::Unknown(c))
    }

    /// The 5-bit wire code.
    pub fn code(self) -> u8 {
        match self {
            Diag::Unknown(c) => c & 0x1f,
            d => KNOWN_DIAGS.iter().position(|&k| k == d).unwrap_or(0) as u8,
        }
    }
}

/// Why a datagram was rejected by [`ControlPacket::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BfdError {
    /// Datagram shorter than 24 bytes.
    TooShort(usize),
    /// Version field is not 1.
    BadVersion(u8),
    /// Authentication present (not supported).
    AuthenticationUnsupported,
    /// Length field below 24.
    LengthTooSmall(u8),
    /// Length field larger than the datagram.
    LengthExceedsDatagram {
        /// Length field value.
        length: u8,
        /// Datagram length.
        datagram: usize,
    },
    /// Detect Mult is zero.
    ZeroDetectMult,
    /// Multipoint bit set.
    Multipoint,
    /// My Discriminator is zero.
    ZeroMyDiscriminator,
    /// Your Discriminator is zero although the state is neither Down nor AdminDown.
    ZeroYourDiscriminator(State),
}

impl fmt::Display for BfdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BfdError::TooShort(n) => write!(f, "datagram too short: {n} bytes, need 24"),
            BfdError::BadVersion(v) => write!(f, "unsupported BFD version {v}"),
            BfdError::AuthenticationUnsupported => write!(f, "authentication is not supported"),
            BfdError::LengthTooSmall(l) => write!(f, "length field {l} below 24"),
            BfdError::LengthExceedsDatagram { length, datagram } => {
                write!(f, "length field {length} > datagram size {datagram}")
            }
            BfdError::ZeroDetectMult => write!(f, "detect multiplier is zero"),
            BfdError::Multipoint => write!(f, "multipoint bit set"),
            BfdError::ZeroMyDiscriminator => write!(f, "my discriminator is zero"),
            BfdError::ZeroYourDiscriminator(s) => {
                write!(f, "your discriminator is zero in state {s:?}")
            }
        }
    }
}

impl std::error::Error for BfdError {}

/// A BFD control packet without authentication section. Intervals are in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket {
    /// Protocol version (always 1).
    pub version: u8,
    /// Diagnostic code.
    pub diag: Diag,
    /// Sender's session state.
    pub state: State,
    /// Poll bit.
    pub poll: bool,
    /// Final bit.
    pub final_: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// Sender's discriminator.
    pub my_discr: u32,
    /// Receiver's discriminator as known to the sender (0 if unknown).
    pub your_discr: u32,
    /// Desired minimum transmit interval.
    pub desired_min_tx_us: u32,
    /// Required minimum receive interval.
    pub required_min_rx_us: u32,
    /// Required minimum echo receive interval (0: no echo).
    pub required_min_echo_rx_us: u32,
}

impl ControlPacket {
    /// Serializes to the 24-byte wire form (C, A, D and M bits clear).
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0] = (self.version & 7) << 5 | self.diag.code();
        b[1] = (self.state as u8) << 6 | u8::from(self.poll) << 5 | u8::from(self.final_) << 4;
        b[2] = self.detect_mult;
        b[3] = PACKET_LEN as u8;
        b[4..8].copy_from_slice(&self.my_discr.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discr.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx_us.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx_us.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx_us.to_be_bytes());
        b
    }

    /// Parses a datagram, applying the stateless checks of RFC 5880 §6.8.6.
    /// Bytes past the length field are ignored; the C and D bits are ignored.
    pub fn decode(buf: &[u8]) -> Result<ControlPacket, BfdError> {
        if buf.len() < PACKET_LEN {
            return Err(BfdError::TooShort(buf.len()));
        }
        let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let version = buf[0] >> 5;
        if version != 1 {
            return Err(BfdError::BadVersion(version));
        }
        if buf[1] & 0x04 != 0 {
            return Err(BfdError::AuthenticationUnsupported);
        }
        let length = buf[3];
        if usize::from(length) < PACKET_LEN {
            return Err(BfdError::LengthTooSmall(length));
        }
        if usize::from(length) > buf.len() {
            return Err(BfdError::LengthExceedsDatagram {
                length,
                datagram: buf.len(),
            });
        }
        if buf[2] == 0 {
            return Err(BfdError::ZeroDetectMult);
        }
        if buf[1] & 0x01 != 0 {
            return Err(BfdError::Multipoint);
        }
        let pkt = ControlPacket {
            version,
            diag: Diag::from_code(buf[0]),
            state: State::from_bits(buf[1] >> 6),
            poll: buf[1] & 0x20 != 0,
            final_: buf[1] & 0x10 != 0,
            detect_mult: buf[2],
            my_discr: word(4),
            your_discr: word(8),
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
        };
        if pkt.my_discr == 0 {
            return Err(BfdError::ZeroMyDiscriminator);
        }
        if pkt.your_discr == 0 && matches!(pkt.state, State::Init | State::Up) {
            return Err(BfdError::ZeroYourDiscriminator(pkt.state));
        }
        Ok(pkt)
    }
}

/// Session timer configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Desired minimum transmit interval while Up.
    pub desired_min_tx: Duration,
    /// Required minimum receive interval (0: the peer must not send periodic packets).
    pub required_min_rx: Duration,
    /// Detection multiplier.
    pub detect_mult: u8,
    /// Transmit interval while not Up (RFC 5880 §6.8.3: at least 1 s).
    pub idle_tx: Duration,
}

impl Default for Config {
    /// 300 ms × 3 (0.9 s detection) while Up, 1 s otherwise: tolerant of internet jitter
    /// and cheap with many peers.
    fn default() -> Self {
        Config {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
            idle_tx: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// Clamps to what the wire can carry: transmit intervals in [1 ms, 2^32 µs], mult >= 1.
    fn sanitized(mut self) -> Config {
        let one_ms = Duration::from_millis(1);
        self.desired_min_tx = self.desired_min_tx.clamp(one_ms, MAX_WIRE);
        self.idle_tx = self.idle_tx.clamp(one_ms, MAX_WIRE);
        self.required_min_rx = self.required_min_rx.min(MAX_WIRE);
        self.detect_mult = self.detect_mult.max(1);
        self
    }
}

/// A change of the session that matters to the user of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The session came Up.
    Up,
    /// The session left Up, with the local diagnostic.
    Down(Diag),
}

/// What [`Session::poll`] wants done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Output {
    /// A packet to send to the peer now.
    pub transmit: Option<[u8; PACKET_LEN]>,
    /// A state transition that happened during this poll.
    pub transition: Option<Transition>,
}

/// One BFD session in asynchronous mode (active role).
#[derive(Debug, Clone)]
pub struct Session {
    cfg: Config,
    local_discr: u32,
    rng: u64,
    state: State,
    local_diag: Diag,
    remote_state: State,
    remote_discr: u32,
    remote_min_rx: Duration,
    remote_min_tx: Duration,
    remote_mult: u8,
    /// Desired tx interval in force (lags the advertised one during a poll sequence).
    applied_tx: Duration,
    /// Required rx interval in force for the detection time.
    applied_rx: Duration,
    polling: bool,
    final_owed: bool,
    next_tx: Instant,
    last_rx: Option<Instant>,
    now: Instant,
    received: u64,
    discarded: u64,
}

fn micros(us: u32) -> Duration {
    Duration::from_micros(u64::from(us))
}

fn to_micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Session {
    /// Creates a Down session that transmits at once. `local_discr` 0 is replaced by 1;
    /// `seed` drives the jitter PRNG (0 acts as 1); config values are clamped to what the wire carries.
    pub fn new(cfg: Config, local_discr: u32, seed: u64, now: Instant) -> Session {
        let cfg = cfg.sanitized();
        let mut s = Session {
            cfg,
            local_discr: local_discr.max(1),
            rng: seed.max(1),
            state: State::Down,
            local_diag: Diag::None,
            remote_state: State::Down,
            remote_discr: 0,
            remote_min_rx: Duration::from_micros(1),
            remote_min_tx: Duration::ZERO,
            remote_mult: 0,
            applied_tx: cfg.desired_min_tx,
            applied_rx: cfg.required_min_rx,
            polling: false,
            final_owed: false,
            next_tx: now,
            last_rx: None,
            now,
            received: 0,
            discarded: 0,
        };
        s.applied_tx = s.advertised_tx();
        s
    }

    /// Packets that passed the checks.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets from the neighbour's address that failed them (another
    /// discriminator, none while Up, bad fields).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Our discriminator and the neighbour's (0 until it is heard).
    pub fn discriminators(&self) -> (u32, u32) {
        (self.local_discr, self.remote_discr)
    }

    /// What this session runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counts a packet from the neighbour's address that the transport
    /// refused (a TTL or hop limit below 255: sent from farther away).
    pub fn discard(&mut self) {
        self.discarded += 1;
    }

    /// Local session state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Last state reported by the peer (Down until heard from, and after a timeout).
    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    /// Local diagnostic: reason for the last change out of Up (None once Up again).
    pub fn local_diag(&self) -> Diag {
        self.local_diag
    }

    /// Detection time, once the peer's parameters are known.
    pub fn detection_time(&self) -> Option<Duration> {
        if self.remote_mult == 0 {
            return None;
        }
        let base = self.applied_rx.max(self.remote_min_tx);
        Some(base.saturating_mul(u32::from(self.remote_mult)))
    }

    /// Negotiated periodic transmit interval before jitter.
    pub fn tx_interval(&self) -> Duration {
        self.applied_tx.max(self.remote_min_rx)
    }

    #[cfg(test)]
    /// Replaces the configuration. While Up this starts a poll sequence; a slower transmit
    /// rate or a shorter detection time only takes effect once the peer sends Final.
    pub fn set_config(&mut self, cfg: Config, now: Instant) {
        self.now = now;
        let old_iv = self.tx_interval();
        self.cfg = cfg.sanitized();
        let (tx, rx) = (self.advertised_tx(), self.cfg.required_min_rx);
        if self.state == State::Up {
            if tx != self.applied_tx || rx != self.applied_rx {
                self.polling = true;
                self.next_tx = now;
            }
            self.applied_tx = self.applied_tx.min(tx);
            self.applied_rx = self.applied_rx.max(rx);
        } else {
            self.applied_tx = tx;
            self.applied_rx = rx;
        }
        self.reschedule_if_faster(old_iv, now);
    }

    /// The neighbour restarted (its BGP said so: graceful restart), so its
    /// end of this session is gone: back to Down without a transition to
    /// report, ready for the new process's discriminator. Left Up, the
    /// session would discard the new process's packets (they do not know
    /// our discriminator), time out, and take the re-established BGP
    /// session down with it.
    pub fn peer_restarted(&mut self, now: Instant) {
        self.now = now;
        // The transition is the caller's to ignore: BGP already knows.
        let _ = self.set_state(State::Down, Some(Diag::NeighborSignaledSessionDown), now);
        self.remote_state = State::Down;
        self.remote_discr = 0;
        self.last_rx = None;
    }

    /// Enters AdminDown (diag AdministrativelyDown); reports leaving Up.
    /// The next poll sends the peer the news (RFC 5880 §6.8.16: a session
    /// taken down on purpose says so, so the peer does not count a failure).
    pub fn set_admin_down(&mut self, now: Instant) -> Option<Transition> {
        self.now = now;
        self.set_state(State::AdminDown, Some(Diag::AdministrativelyDown), now)
    }

    #[cfg(test)]
    /// Leaves AdminDown for Down, so the session can come up again.
    pub fn enable(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::AdminDown {
            self.set_state(State::Down, None, now);
        }
    }

    /// Processes a received packet (RFC 5880 §6.8.6). Packets for another discriminator
    /// or failing the stateless checks are dropped.
    pub fn on_packet(&mut self, pkt: &ControlPacket, now: Instant) -> Option<Transition> {
        self.now = now;
        if pkt.your_discr != 0 && pkt.your_discr != self.local_discr {
            self.discarded += 1;
            return None;
        }
        // Once Up, the neighbour knows our discriminator: a packet without it is not
        // from the session (see the module doc).
        let zero_your = pkt.your_discr == 0
            && (matches!(pkt.state, State::Init | State::Up) || self.state == State::Up);
        if pkt.version != 1 || pkt.detect_mult == 0 || pkt.my_discr == 0 || zero_your {
            self.discarded += 1;
            return None;
        }
        self.received += 1;
        let old_iv = self.tx_interval();
        self.remote_discr = pkt.my_discr;
        self.remote_state = pkt.state;
        self.remote_min_rx = micros(pkt.required_min_rx_us);
        self.remote_min_tx = micros(pkt.desired_min_tx_us);
        self.remote_mult = pkt.detect_mult;
        self.last_rx = Some(now);
        if pkt.final_ && self.polling {
            self.polling = false;
            self.applied_tx = self.advertised_tx();
            self.applied_rx = self.cfg.required_min_rx;
        }
        self.reschedule_if_faster(old_iv, now);
        if self.state == State::AdminDown {
            return None;
        }
        if pkt.poll {
            self.final_owed = true;
            self.next_tx = self.next_tx.min(now);
        }
        use State::*;
        let (next, diag) = match (self.state, pkt.state) {
            (Down, AdminDown) => return None,
            (_, AdminDown) | (Up, Down) => (Down, Some(Diag::NeighborSignaledSessionDown)),
            (Down, Down) => (Init, None),
            (Down, Init) | (Init, Init) | (Init, Up) => (Up, None),
            _ => return None,
        };
        self.set_state(next, diag, now)
    }

    /// Runs timers: detection timeout (Init/Up → Down) and transmission, periodic with
    /// jitter or immediate after a state change or when a Final is owed.
    pub fn poll(&mut self, now: Instant) -> Output {
        self.now = now;
        let mut out = Output::default();
        if self.detect_deadline().is_some_and(|t| now >= t) {
            self.remote_discr = 0;
            self.remote_state = State::Down;
            self.last_rx = None;
            out.transition =
                self.set_state(State::Down, Some(Diag::ControlDetectionTimeExpired), now);
        }
        if self.tx_deadline().is_some_and(|t| now >= t) {
            let final_ = self.final_owed;
            self.final_owed = false;
            out.transmit = Some(self.packet(self.polling && !final_, final_).encode());
            let iv = self.tx_interval();
            self.next_tx = now + self.jittered(iv);
        }
        out
    }

    /// Earliest time at which [`Session::poll`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        [self.tx_deadline(), self.detect_deadline()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now + self.cfg.idle_tx)
    }

    fn advertised_tx(&self) -> Duration {
        if self.state == State::Up {
            self.cfg.desired_min_tx
        } else {
            self.cfg.desired_min_tx.max(self.cfg.idle_tx)
        }
    }

    fn tx_deadline(&self) -> Option<Instant> {
        (!self.remote_min_rx.is_zero() || self.final_owed).then_some(self.next_tx)
    }

    fn detect_deadline(&self) -> Option<Instant> {
        if !matches!(self.state, State::Init | State::Up) {
            return None;
        }
        Some(self.last_rx? + self.detection_time()?)
    }

    fn reschedule_if_faster(&mut self, old_iv: Duration, now: Instant) {
        let iv = self.tx_interval();
        if iv < old_iv {
            let t = now + self.jittered(iv);
            self.next_tx = self.next_tx.min(t);
        }
    }

    fn set_state(&mut self, new: State, diag: Option<Diag>, now: Instant) -> Option<Transition> {
        let old = self.state;
        if old == new {
            return None;
        }
        self.state = new;
        if let Some(d) = diag {
            self.local_diag = d;
        }
        self.next_tx = now;
        if new == State::Up {
            self.local_diag = Diag::None;
            let tx = self.advertised_tx();
            self.polling = tx != self.applied_tx;
            self.applied_tx = self.applied_tx.min(tx);
        } else {
            self.polling = false;
            self.applied_tx = self.advertised_tx();
            self.applied_rx = self.cfg.required_min_rx;
        }
        match (old, new) {
            (_, State::Up) => Some(Transition::Up),
            (State::Up, _) => Some(Transition::Down(self.local_diag)),
            _ => None,
        }
    }

    fn packet(&self, poll: bool, final_: bool) -> ControlPacket {
        ControlPacket {
            version: 1,
            diag: self.local_diag,
            state: self.state,
            poll,
            final_,
            detect_mult: self.cfg.detect_mult,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx_us: to_micros(self.advertised_tx()),
            required_min_rx_us: to_micros(self.cfg.required_min_rx),
            required_min_echo_rx_us: 0,
        }
    }

    /// `d` scaled by a random 75–100 % (75–90 % when detect_mult is 1), RFC 5880 §6.8.7.
    fn jittered(&mut self, d: Duration) -> Duration {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let hi = if self.cfg.detect_mult == 1 { 900 } else { 1000 };
        let permille = 750 + u128::from(r % (hi - 750 + 1));
        let ns = d.as_nanos() * permille / 1000;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn fast() -> Config {
        Config {
            desired_min_tx: 100 * MS,
            required_min_rx: 100 * MS,
            detect_mult: 3,
            idle_tx: 1000 * MS,
        }
    }

    /// Two sessions joined by a lossy wire with fixed latency, on a virtual clock.
    struct Wire {
        t: Instant,
        s: [Session; 2],
        delay: Duration,
        drop_to: [bool; 2],
        inflight: Vec<(Instant, usize, [u8; PACKET_LEN])>,
        last_delivered: [Option<Instant>; 2],
        log: Vec<(Instant, usize, Transition)>,
    }

    impl Wire {
        fn new(cfg: Config) -> Wire {
            let t = Instant::now();
            Wire {
                t,
                s: [Session::new(cfg, 0xa, 1, t), Session::new(cfg, 0xb, 2, t)],
                delay: 5 * MS,
                drop_to: [false; 2],
                inflight: Vec::new(),
                last_delivered: [None; 2],
                log: Vec::new(),
            }
        }

        fn run_for(&mut self, d: Duration) {
            let until = self.t + d;
            for _ in 0..1_000_000 {
                let next = self.inflight.iter().map(|p| p.0);
                let next = next
                    .chain(self.s.iter().map(Session::next_deadline))
                    .min()
                    .unwrap();
                if next > until {
                    self.t = until;
                    return;
                }
                self.t = self.t.max(next);
                let t = self.t;
                let (due, rest) = self.inflight.drain(..).partition(|p| p.0 <= t);
                self.inflight = rest;
                for (_, to, bytes) in due {
                    self.last_delivered[to] = Some(t);
                    let pkt = ControlPacket::decode(&bytes).unwrap();
                    if let Some(tr) = self.s[to].on_packet(&pkt, t) {
                        self.log.push((t, to, tr));
                    }
                }
                for i in 0..2 {
                    let out = self.s[i].poll(t);
                    if let Some(tr) = out.transition {
                        self.log.push((t, i, tr));
                    }
                    if let (Some(b), false) = (out.transmit, self.drop_to[1 - i]) {
                        self.inflight.push((t + self.delay, 1 - i, b));
                    }
                }
            }
            panic!("simulation did not converge");
        }

        fn both(&self, st: State) -> bool {
            self.s.iter().all(|s| s.state() == st)
        }
    }

    #[test]
    fn back_to_back_comes_up() {
        let mut w = Wire::new(Config::default());
        w.run_for(3 * w.s[0].cfg.idle_tx);
        assert!(w.both(State::Up));
        let ups: Vec<_> = w.log.iter().filter(|e| e.2 == Transition::Up).collect();
        assert_eq!(ups.len(), 2, "{:?}", w.log);
        // After the poll sequence both run at the configured 300 ms.
        assert!(w
            .s
            .iter()
            .all(|s| !s.polling && s.tx_interval() == 300 * MS));
        assert_eq!(w.s[0].detection_time(), Some(900 * MS));
    }

    #[test]
    fn one_way_loss_detected_after_detection_time() {
        let mut w = Wire::new(fast());
        w.run_for(2000 * MS);
        assert!(w.both(State::Up));
        w.drop_to[1] = true; // a -> b lost
        let t_drop = w.t;
        w.run_for(1000 * MS);
        let (t_down, _, tr) = *w.log.iter().find(|e| e.0 > t_drop && e.1 == 1).unwrap();
        assert_eq!(tr, Transition::Down(Diag::ControlDetectionTimeExpired));
        let gap = t_down - w.last_delivered[1].unwrap();
        assert!(gap >= 300 * MS && gap <= 400 * MS, "{gap:?}");
        // b's Downs no longer carry a's discriminator (b forgot it on the
        // timeout, RFC 5880 §6.8.1), so a, Up, discards them as it would a
        // forgery and goes down on its own detection time.
        let a_down = w.log.iter().find(|e| e.0 > t_drop && e.1 == 0).unwrap();
        assert_eq!(
            a_down.2,
            Transition::Down(Diag::ControlDetectionTimeExpired)
        );
        assert!(a_down.0 > t_down && a_down.0 - t_down <= 400 * MS);
        assert!(w.s[0].discarded() > 0);
    }

    #[test]
    fn a_healed_path_comes_up_once_and_stays_up() {
        let mut w = Wire::new(fast());
        w.run_for(2000 * MS);
        assert!(w.both(State::Up));
        let t_drop = w.t;
        w.drop_to = [true, true];
        w.run_for(600 * MS);
        assert!(w.both(State::Down));
        w.drop_to = [false, false];
        w.run_for(5000 * MS);
        assert!(w.both(State::Up));
        // One Down and one Up per side: no relapse after coming back.
        for side in 0..2 {
            let events: Vec<_> = w
                .log
                .iter()
                .filter(|e| e.0 > t_drop && e.1 == side)
                .map(|e| e.2)
                .collect();
            assert_eq!(events.len(), 2, "side {side}: {:?}", w.log);
        }
    }

    #[test]
    fn remote_admin_down_and_enable() {
        let mut w = Wire::new(fast());
        w.run_for(2000 * MS);
        let t = w.t;
        let tr = w.s[0].set_admin_down(t);
        assert_eq!(tr, Some(Transition::Down(Diag::AdministrativelyDown)));
        w.run_for(50 * MS);
        assert_eq!(w.s[1].state(), State::Down);
        assert_eq!(w.s[1].remote_state(), State::AdminDown);
        assert_eq!(w.s[1].local_diag(), Diag::NeighborSignaledSessionDown);
        let b_down = w.log.iter().find(|e| e.0 > t && e.1 == 1).unwrap();
        assert_eq!(b_down.0 - t, w.delay); // no detection timeout involved
        w.run_for(3000 * MS);
        assert_eq!(w.s[1].state(), State::Down); // stays Down while peer is AdminDown
        w.s[0].enable(w.t);
        w.run_for(3000 * MS);
        assert!(w.both(State::Up));
        assert_eq!(w.s[1].local_diag(), Diag::None);
    }

    #[test]
    fn peer_restart_recovers() {
        let mut w = Wire::new(fast());
        w.run_for(2000 * MS);
        let t = w.t;
        w.s[1] = Session::new(fast(), 0xbb, 7, t);
        w.run_for(3000 * MS);
        assert!(w.both(State::Up));
        let a: Vec<_> = w
            .log
            .iter()
            .filter(|e| e.0 >= t && e.1 == 0)
            .map(|e| e.2)
            .collect();
        // The new process's Downs do not know a's discriminator: a goes
        // down on its detection time, then comes up with the new one.
        let want = [
            Transition::Down(Diag::ControlDetectionTimeExpired),
            Transition::Up,
        ];
        assert_eq!(a, want);
        assert_eq!(w.s[0].remote_discr, 0xbb);
    }

    fn jitter_range(mult: u8) -> (Duration, Duration) {
        let cfg = Config {
            detect_mult: mult,
            ..Config::default()
        };
        let t0 = Instant::now();
        let mut s = Session::new(cfg, 1, 42, t0);
        let mut times = Vec::new();
        while times.len() < 500 {
            let t = s.next_deadline();
            if s.poll(t).transmit.is_some() {
                times.push(t);
            }
        }
        let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
        (*gaps.iter().min().unwrap(), *gaps.iter().max().unwrap())
    }

    #[test]
    fn jitter_within_bounds() {
        let (lo, hi) = jitter_range(3);
        assert!(lo >= 750 * MS && lo < 760 * MS && hi <= 1000 * MS && hi > 990 * MS);
        let (lo, hi) = jitter_range(1);
        assert!(
            lo >= 750 * MS && hi <= 900 * MS && hi > 890 * MS,
            "{lo:?} {hi:?}"
        );
    }

    fn remote(state: State, your: u32) -> ControlPacket {
        ControlPacket {
            version: 1,
            diag: Diag::None,
            state,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_discr: 99,
            your_discr: your,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            required_min_echo_rx_us: 0,
        }
    }

    fn sent(s: &mut Session, t: Instant) -> Option<ControlPacket> {
        s.poll(t)
            .transmit
            .map(|b| ControlPacket::decode(&b).unwrap())
    }

    /// A session brought Up by hand with its own poll sequence finished.
    fn up_session(t: Instant) -> Session {
        let mut s = Session::new(fast(), 5, 3, t);
        assert_eq!(sent(&mut s, t).unwrap().state, State::Down);
        assert_eq!(
            s.on_packet(&remote(State::Init, 5), t),
            Some(Transition::Up)
        );
        let p = sent(&mut s, t).unwrap();
        assert!(p.poll && p.state == State::Up && p.your_discr == 99);
        s.on_packet(
            &ControlPacket {
                final_: true,
                ..remote(State::Up, 5)
            },
            t,
        );
        assert!(!s.polling);
        s
    }

    #[test]
    fn poll_answered_with_final() {
        let t = Instant::now();
        let mut s = up_session(t);
        assert!(sent(&mut s, t).is_none());
        let t1 = t + 10 * MS;
        s.on_packet(
            &ControlPacket {
                poll: true,
                ..remote(State::Up, 5)
            },
            t1,
        );
        assert_eq!(s.next_deadline(), t1);
        let p = sent(&mut s, t1).unwrap();
        assert!(p.final_ && !p.poll);
        // Packets for another discriminator are ignored.
        assert_eq!(s.on_packet(&remote(State::Down, 6), t1), None);
        assert_eq!(s.state(), State::Up);
    }

    #[test]
    fn parameter_change_waits_for_final() {
        let t = Instant::now();
        let mut s = up_session(t);
        let fast_peer = ControlPacket {
            desired_min_tx_us: 10_000,
            ..remote(State::Up, 5)
        };
        s.on_packet(&fast_peer, t);
        assert_eq!(s.detection_time(), Some(300 * MS));
        // Slower tx and faster rx: both must wait for the Final.
        let cfg = Config {
            desired_min_tx: 500 * MS,
            required_min_rx: 50 * MS,
            ..fast()
        };
        s.set_config(cfg, t);
        let p = sent(&mut s, t).unwrap();
        assert!(p.poll && p.desired_min_tx_us == 500_000 && p.required_min_rx_us == 50_000);
        assert_eq!(s.detection_time(), Some(300 * MS));
        assert_eq!(s.tx_interval(), 100 * MS);
        let t1 = s.next_deadline();
        assert!(t1 - t <= 100 * MS);
        assert!(sent(&mut s, t1).unwrap().poll);
        s.on_packet(
            &ControlPacket {
                final_: true,
                ..fast_peer
            },
            t1,
        );
        assert_eq!(s.detection_time(), Some(150 * MS));
        assert_eq!(s.tx_interval(), 500 * MS);
        let t2 = s.next_deadline();
        assert!(sent(&mut s, t2).is_some_and(|p| !p.poll));
        // Faster tx applies at once (still with a poll sequence).
        s.set_config(fast(), t1);
        assert_eq!(s.tx_interval(), 100 * MS);
        assert!(s.polling);
    }

    #[test]
    fn remote_down_and_timeout_from_init() {
        let t = Instant::now();
        let mut s = up_session(t);
        // Once Up, a Down counts only when it names our discriminator.
        assert_eq!(s.on_packet(&remote(State::Down, 0), t), None);
        assert_eq!(s.state(), State::Up);
        assert_eq!((s.received(), s.discarded()), (2, 1));
        let tr = s.on_packet(&remote(State::Down, 5), t);
        assert_eq!(
            tr,
            Some(Transition::Down(Diag::NeighborSignaledSessionDown))
        );
        // Down + remote Down -> Init on the next packet, then a timeout in Init is silent.
        assert_eq!(s.on_packet(&remote(State::Down, 0), t), None);
        assert_eq!(s.state(), State::Init);
        assert_eq!(s.poll(t + 299 * MS).transition, None);
        assert_eq!(s.state(), State::Init);
        assert_eq!(s.poll(t + 300 * MS).transition, None);
        assert_eq!(s.state(), State::Down);
        assert_eq!(s.local_diag(), Diag::ControlDetectionTimeExpired);
        let t2 = s.next_deadline();
        assert_eq!(sent(&mut s, t2).unwrap().your_discr, 0);
    }

    #[test]
    fn decode_rejects_each_malformed_case() {
        let good = remote(State::Up, 5).encode();
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.to_vec();
            f(&mut b);
            ControlPacket::decode(&b).unwrap_err()
        };
        assert_eq!(bad(&|b| b.truncate(23)), BfdError::TooShort(23));
        assert_eq!(bad(&|b| b[0] = 2 << 5), BfdError::BadVersion(2));
        assert_eq!(bad(&|b| b[1] |= 0x04), BfdError::AuthenticationUnsupported);
        assert_eq!(bad(&|b| b[3] = 23), BfdError::LengthTooSmall(23));
        let e = BfdError::LengthExceedsDatagram {
            length: 30,
            datagram: 24,
        };
        assert_eq!(bad(&|b| b[3] = 30), e);
        assert_eq!(bad(&|b| b[2] = 0), BfdError::ZeroDetectMult);
        assert_eq!(bad(&|b| b[1] |= 0x01), BfdError::Multipoint);
        assert_eq!(bad(&|b| b[4..8].fill(0)), BfdError::ZeroMyDiscriminator);
        let e = BfdError::ZeroYourDiscriminator(State::Up);
        assert_eq!(bad(&|b| b[8..12].fill(0)), e);
        assert!(e.to_string().contains("your discriminator"));
        // Accepted: zero Your Discriminator when Down, trailing bytes, reserved diag codes.
        assert!(ControlPacket::decode(&remote(State::Down, 0).encode()).is_ok());
        let mut b = good.to_vec();
        b.extend_from_slice(&[0xff; 6]);
        assert_eq!(ControlPacket::decode(&b), Ok(remote(State::Up, 5)));
        b[0] = 1 << 5 | 20;
        assert_eq!(ControlPacket::decode(&b).unwrap().diag, Diag::Unknown(20));
    }

    fn state_strategy() -> impl Strategy<Value = State> {
        (0u8..4).prop_map(State::from_bits)
    }

    /// Any packet a peer (or anyone who can reach the port) can send:
    /// every field arbitrary, the discriminators often the real ones.
    fn any_packet() -> impl Strategy<Value = ControlPacket> {
        let discr = prop_oneof![Just(0u32), Just(0xa), Just(0xb), any::<u32>()];
        let us = prop_oneof![Just(0u32), Just(1), 1u32..2_000_000, any::<u32>()];
        (
            (
                0u8..8,
                0u8..32,
                state_strategy(),
                any::<bool>(),
                any::<bool>(),
            ),
            any::<u8>(),
            discr.clone(),
            discr,
            (us.clone(), us.clone(), us),
        )
            .prop_map(
                |((version, diag, state, poll, final_), mult, my, your, (tx, rx, echo))| {
                    ControlPacket {
                        version,
                        diag: Diag::from_code(diag),
                        state,
                        poll,
                        final_,
                        detect_mult: mult,
                        my_discr: my,
                        your_discr: your,
                        desired_min_tx_us: tx,
                        required_min_rx_us: rx,
                        required_min_echo_rx_us: echo,
                    }
                },
            )
    }

    proptest! {
        /// A session fed arbitrary packets at arbitrary times: never a
        /// panic or a time overflow, what it sends decodes, its timers stay
        /// ahead of the clock, and a packet for another discriminator
        /// changes nothing (RFC 5880 §6.8.6).
        #[test]
        fn arbitrary_packets_at_arbitrary_times(steps in proptest::collection::vec((any_packet(), 0u64..5_000_000), 1..40)) {
            let t0 = Instant::now();
            let mut s = Session::new(fast(), 0xa, 7, t0);
            let mut t = t0;
            for (p, dt_us) in steps {
                t += Duration::from_micros(dt_us);
                let before = (s.state(), s.remote_state());
                let tr = s.on_packet(&p, t);
                if p.your_discr != 0 && p.your_discr != 0xa {
                    prop_assert_eq!((s.state(), s.remote_state()), before);
                    prop_assert!(tr.is_none());
                }
                let out = s.poll(t);
                if let Some(b) = out.transmit {
                    prop_assert!(ControlPacket::decode(&b).is_ok());
                }
                prop_assert!(s.next_deadline() >= t);
                let _ = s.detection_time();
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = ControlPacket::decode(&bytes) {
                prop_assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
            }
        }

        #[test]
        fn roundtrip(diag in 0u8..32, state in state_strategy(), poll: bool, final_: bool,
                     mult in 1u8.., my in 1u32.., your: u32, tx: u32, rx: u32, echo: u32) {
            let your = if your == 0 && matches!(state, State::Init | State::Up) { 1 } else { your };
            let p = ControlPacket {
                version: 1, diag: Diag::from_code(diag), state, poll, final_, detect_mult: mult,
                my_discr: my, your_discr: your, desired_min_tx_us: tx, required_min_rx_us: rx,
                required_min_echo_rx_us: echo,
            };
            prop_assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
        }
    }
}
