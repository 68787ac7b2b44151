//! routed's status page (`GET /` on `metrics_listen`): the neighbours, each
//! one's up/down history of the last hour drawn as a timeline, and the best
//! routes. Rendered from the same typed `status` and `routes` documents the
//! control socket returns, with the wall clock passed in.

use cubenet_api::routed::{
    BfdState, NeighborStatus, RouteOrigin, Routes, SessionState, Status, UpDown,
};
use cubenet_daemon::html::{self, escape, span, Table};
use std::fmt::Write;

/// The longest span of history a timeline shows, and the shortest: a
/// younger routed shows what it knows, since it started, at a readable
/// scale.
pub const MAX_WINDOW_S: u64 = 3600;
pub const MIN_WINDOW_S: u64 = 60;

/// The stretch of time the timelines show, in Unix seconds: the last hour,
/// or since routed started when that is less (at least a minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub now: u64,
}

impl Window {
    pub fn new(uptime_s: u64, now: u64) -> Window {
        Window {
            start: now.saturating_sub(uptime_s.clamp(MIN_WINDOW_S, MAX_WINDOW_S)),
            now,
        }
    }

    fn len(&self) -> u64 {
        (self.now - self.start).max(1)
    }
}

/// What a stretch of a timeline shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shade {
    /// The session was established.
    Up,
    /// It was not.
    Down,
    /// Before this routed started: nothing is known.
    Unknown,
}

/// A stretch of a neighbour's timeline, in Unix seconds, `from <= to`;
/// only a down that lasted less than the second the history counts in
/// has `from == to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: u64,
    pub to: u64,
    pub shade: Shade,
}

/// A neighbour's timeline over `w`, from its history (the last events,
/// oldest first) and its state now. routed keeps no history from before
/// it started (`started`): that part is [`Shade::Unknown`]. Before the
/// first event kept, the session was in the opposite state of that event;
/// with no event at all, in the state it is in now.
pub fn timeline(n: &NeighborStatus, started: u64, w: Window) -> Vec<Span> {
    let (start, now) = (w.start, w.now);
    let events = events(n);
    let up_now = n.state == SessionState::Established;
    let mut spans: Vec<Span> = Vec::new();
    let mut push = |from: u64, to: u64, shade: Shade| {
        if to < start || from > now {
            return;
        }
        // A down shorter than a second is kept (drawn as a sliver): a
        // flap must show. Other empty stretches are dropped.
        let brief_down = shade == Shade::Down && from == to;
        let (from, to) = (from.max(start), to.min(now));
        if from > to || (from == to && !brief_down) {
            return;
        }
        match spans.last_mut() {
            Some(last) if last.shade == shade && last.to == from => last.to = to,
            _ => spans.push(Span { from, to, shade }),
        }
    };
    if started > start {
        push(start, started, Shade::Unknown);
    }
    let shade = |up: bool| if up { Shade::Up } else { Shade::Down };
    let mut t = started;
    let mut up = events.first().map_or(up_now, |&(_, e)| !e);
    for (i, &(at, e)) in events.iter().enumerate() {
        let at = at.max(t);
        // Not established in the second routed started is no flap.
        if i > 0 || at > t {
            push(t, at, shade(up));
        }
        t = at;
        up = e;
    }
    push(t, now, shade(up));
    spans
}

/// The history as (Unix seconds, up), oldest first; entries whose time does
/// not parse are left out.
fn events(n: &NeighborStatus) -> Vec<(u64, bool)> {
    let mut v: Vec<(u64, bool)> = n
        .history
        .iter()
        .filter_map(|f| {
            let at = cubenet_certs::time::parse_time(&f.at).ok()?;
            Some((at, f.event == UpDown::Up))
        })
        .collect();
    v.sort_by_key(|&(at, _)| at);
    v
}

const BAR_W: f64 = 640.0;

/// `t` as an x position on a bar of the window.
fn x(t: u64, w: Window) -> f64 {
    let t = t.clamp(w.start, w.now);
    ((t - w.start) as f64 / w.len() as f64 * BAR_W * 10.0).round() / 10.0
}

/// `HH:MM:SS` (UTC) of a Unix time.
fn clock(t: u64) -> String {
    let s = cubenet_certs::time::format_rfc3339(t);
    s.get(11..19).unwrap_or(&s).to_string()
}

/// The timeline as inline SVG: green while up, red while down (a brief
/// down at least 4 px wide), grey before routed started, a tick at each
/// event, the time before now underneath.
pub fn timeline_svg(n: &NeighborStatus, started: u64, w: Window) -> String {
    let mut s = format!(
        "<svg class=\"timeline\" width=\"{sw}\" height=\"36\" viewBox=\"-4 0 {sw} 36\" \
         role=\"img\" aria-label=\"{} up/down\">",
        escape(&n.name),
        sw = BAR_W + 28.0,
    );
    // Downs last, so the sliver of a brief one is not painted over by the
    // up that follows it.
    let mut spans = timeline(n, started, w);
    spans.sort_by_key(|sp| sp.shade == Shade::Down);
    for sp in spans {
        let (fill, class, what, min) = match sp.shade {
            Shade::Up => ("#2e9e4f", "up", "up", 1.0),
            Shade::Down => ("#d64541", "down", "down", 4.0),
            Shade::Unknown => ("#d5d9de", "unknown", "before routed started", 1.0),
        };
        let (x0, x1) = (x(sp.from, w), x(sp.to, w));
        let _ = write!(
            s,
            "<rect class=\"{class}\" x=\"{x0}\" y=\"4\" width=\"{}\" height=\"14\" fill=\"{fill}\">\
             <title>{what} {} – {} UTC</title></rect>",
            (x1 - x0).max(min),
            clock(sp.from),
            clock(sp.to),
        );
    }
    for f in &n.history {
        let Ok(at) = cubenet_certs::time::parse_time(&f.at) else {
            continue;
        };
        if at < w.start || at > w.now {
            continue;
        }
        let xt = x(at, w);
        let ev = match f.event {
            UpDown::Up => "up",
            UpDown::Down => "down",
        };
        let _ = write!(
            s,
            "<line class=\"tick\" x1=\"{xt}\" x2=\"{xt}\" y1=\"1\" y2=\"21\" stroke=\"#1d232a\" \
             stroke-width=\"1\"><title>{ev} at {} UTC: {}</title></line>",
            clock(at),
            escape(&f.reason),
        );
    }
    for q in 0..=4u64 {
        let ago = w.len() * (4 - q) / 4;
        let xm = x(w.now - ago, w);
        let (label, anchor) = match q {
            0 => (format!("−{}", html::duration(ago)), "start"),
            4 => ("now".to_string(), "end"),
            _ => (format!("−{}", html::duration(ago)), "middle"),
        };
        let _ = write!(
            s,
            "<line x1=\"{xm}\" x2=\"{xm}\" y1=\"18\" y2=\"22\" stroke=\"#8a939c\"/>\
             <text x=\"{xm}\" y=\"33\" text-anchor=\"{anchor}\">{label}</text>"
        );
    }
    s.push_str("</svg>");
    s
}

fn state_cell(n: &NeighborStatus) -> String {
    let class = match n.state {
        SessionState::Established => "ok",
        SessionState::Reflected if n.usable => "ok",
        SessionState::OpenSent | SessionState::OpenConfirm => "warn",
        _ => "bad",
    };
    span(class, n.state.as_str())
}

fn bfd_cell(n: &NeighborStatus) -> String {
    let class = match n.bfd {
        BfdState::Up => "ok",
        BfdState::Disabled | BfdState::AdminDown => "muted",
        _ => "bad",
    };
    let mut s = span(class, n.bfd.as_str());
    if let Some(r) = n.bfd_remote.filter(|&r| r != n.bfd) {
        let _ = write!(s, " <span class=\"muted\">(remote {})</span>", r.as_str());
    }
    s
}

fn damping_cell(n: &NeighborStatus) -> String {
    if n.suppressed {
        let left = n.suppressed_for_s.unwrap_or(0.0).max(0.0) as u64;
        span("warn", &format!("suppressed {}", html::duration(left)))
    } else if !n.usable && n.state == SessionState::Established {
        span("warn", "held")
    } else {
        span("muted", "no")
    }
}

/// The whole page: `name` is this gateway's (its certificate's), `now`
/// the wall clock in Unix seconds.
pub fn render(name: &str, status: &Status, routes: &Routes, now: u64) -> String {
    let mut b = String::new();
    let established = status
        .neighbors
        .iter()
        .filter(|n| n.state == SessionState::Established)
        .count();
    let title = if name.is_empty() {
        format!("routed AS {}", status.asn)
    } else {
        format!("routed {name} AS {}", status.asn)
    };
    let _ = write!(
        b,
        "<h1>routed {}</h1>\n<p class=\"sub\">AS {} · router id {} · up {} · table {} · \
         own subnets {} · as of {}</p>\n",
        escape(name),
        status.asn,
        status.router_id,
        html::duration(status.uptime_s),
        if status.fib_ready {
            span("ok", "owned")
        } else {
            span("warn", "startup (adding only)")
        },
        escape(
            &status
                .own_subnets
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        escape(&cubenet_certs::time::format_rfc3339(now)),
    );
    b.push_str("<div class=\"cards\">");
    b.push_str(&html::card(
        &format!("{established} / {}", status.neighbors.len()),
        "neighbours established",
    ));
    b.push_str(&html::card(&routes.routes.len().to_string(), "best routes"));
    b.push_str(&html::card(
        &status
            .neighbors
            .iter()
            .map(|n| n.flaps)
            .sum::<u64>()
            .to_string(),
        "flaps",
    ));
    b.push_str(&html::card(
        &status
            .neighbors
            .iter()
            .filter(|n| n.suppressed)
            .count()
            .to_string(),
        "suppressed",
    ));
    b.push_str("</div>\n");

    b.push_str("<h2>Neighbours</h2>\n");
    let mut t = Table::new(
        &[
            "neighbour",
            "address",
            "AS",
            "state",
            "uptime",
            "BFD",
            "flaps",
            "penalty",
            "damping",
            "routes in",
            "routes out",
            "last error",
        ],
        &[2, 4, 6, 7, 9, 10],
    );
    for n in &status.neighbors {
        let kind = if n.overlay { "overlay" } else { "LAN" };
        t.raw_row(&format!(
            "<td class=\"neighbor\"><b>{}</b></td><td>{} <span class=\"muted\">{kind}</span></td>\
             <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"err\">{}</td>",
            escape(&n.name),
            n.address,
            n.asn,
            state_cell(n),
            n.uptime_s.map_or("–".to_string(), html::duration),
            bfd_cell(n),
            n.flaps,
            n.penalty,
            damping_cell(n),
            n.routes_in,
            n.routes_out,
            n.last_error.as_deref().map_or(span("muted", "–"), escape),
        ));
    }
    b.push_str(&t.finish());

    b.push_str(
        "<h2>Up/down over the last hour</h2>\n<p class=\"sub\">\
         <span class=\"sw up\"></span> established · <span class=\"sw down\"></span> not \
         established · <span class=\"sw unknown\"></span> before routed started (the \
         timeline starts with it when that is less than an hour ago) · a tick at each change \
         (hover for the time and reason)</p>\n",
    );
    let started = now.saturating_sub(status.uptime_s);
    let window = Window::new(status.uptime_s, now);
    let mut t = Table::new(&["neighbour", "timeline", "last change"], &[]);
    for n in &status.neighbors {
        let last = n.history.last().map_or(span("muted", "none"), |f| {
            let ev = match f.event {
                UpDown::Up => span("ok", "up"),
                UpDown::Down => span("bad", "down"),
            };
            let at = cubenet_certs::time::parse_time(&f.at)
                .map(|t| format!("{} ago", html::duration(now.saturating_sub(t))))
                .unwrap_or_else(|_| f.at.clone());
            format!(
                "{ev} {} <span class=\"muted\">{}</span>",
                escape(&at),
                escape(&f.reason)
            )
        });
        t.raw_row(&format!(
            "<td><b>{}</b></td><td>{}</td><td class=\"wrap\">{last}</td>",
            escape(&n.name),
            timeline_svg(n, started, window),
        ));
    }
    b.push_str(&t.finish());

    let _ = writeln!(b, "<h2>Routes ({})</h2>", routes.routes.len());
    let mut t = Table::new(
        &[
            "prefix",
            "origin",
            "via",
            "ECMP",
            "AS path",
            "candidates",
            "age",
        ],
        &[3, 5, 6],
    );
    for r in &routes.routes {
        let origin = match r.origin {
            RouteOrigin::Learned => span("ok", r.origin.as_str()),
            RouteOrigin::Host | RouteOrigin::Site => span("muted", r.origin.as_str()),
        };
        let path = if r.as_path.is_empty() {
            span("muted", "–")
        } else {
            r.as_path
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        t.row(&[
            r.prefix.to_string(),
            origin,
            escape(&r.via.join(", ")),
            r.ecmp.to_string(),
            path,
            r.candidates.to_string(),
            html::duration(r.age_s),
        ]);
    }
    b.push_str(&t.finish());
    html::page(&title, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubenet_api::routed::{FlapEvent, RouteStatus};

    const NOW: u64 = 1_800_000_000;

    fn at(t: u64) -> String {
        cubenet_certs::time::format_rfc3339(t)
    }

    fn neighbor(name: &str, state: SessionState, history: &[(u64, UpDown)]) -> NeighborStatus {
        NeighborStatus {
            name: name.into(),
            address: "10.77.0.2".parse().unwrap(),
            overlay: true,
            asn: 4_200_000_002,
            state,
            uptime_s: (state == SessionState::Established).then_some(300),
            bfd: BfdState::Up,
            bfd_remote: Some(BfdState::Up),
            bfd_diag: None,
            bfd_received: 0,
            bfd_discarded: 0,
            bfd_discriminators: Some((1, 2)),
            tunnel_up: None,
            reconnect_s: 1,
            flaps: 1,
            penalty: 512.3,
            suppressed: false,
            suppressed_for_s: None,
            usable: true,
            last_error: Some("hold timer expired".into()),
            routes_in: 3,
            routes_out: 4,
            rejected: 0,
            treat_as_withdraw: 0,
            stale_routes: 0,
            not_sent: Default::default(),
            damped_prefixes: vec![],
            history: history
                .iter()
                .map(|&(t, event)| FlapEvent {
                    at: at(t),
                    event,
                    reason: "because".into(),
                })
                .collect(),
        }
    }

    fn status(neighbors: Vec<NeighborStatus>) -> Status {
        Status {
            asn: 4_200_000_001,
            router_id: "10.77.1.1".parse().unwrap(),
            uptime_s: 7200,
            fib_ready: true,
            restarting: false,
            own_subnets: vec!["10.77.1.0/24".parse().unwrap()],
            neighbors,
        }
    }

    fn routes() -> Routes {
        Routes {
            routes: vec![RouteStatus {
                prefix: "10.77.2.0/24".parse().unwrap(),
                best: Some("ams-gw1".into()),
                via: vec!["ams-gw1".into(), "ams-gw2".into()],
                ecmp: 2,
                origin: RouteOrigin::Learned,
                as_path: vec![4_200_000_002],
                candidates: 2,
                age_s: 65,
            }],
        }
    }

    fn shades(spans: &[Span]) -> Vec<Shade> {
        spans.iter().map(|s| s.shade).collect()
    }

    const HOUR: Window = Window {
        start: NOW - 3600,
        now: NOW,
    };

    #[test]
    fn the_window_is_the_last_hour_or_since_routed_started() {
        assert_eq!(Window::new(7200, NOW), HOUR);
        assert_eq!(Window::new(600, NOW).start, NOW - 600);
        assert_eq!(Window::new(5, NOW).start, NOW - 60);
    }

    /// Up since before the window, down 20 minutes ago, up again 10
    /// minutes ago: green, one red span, green, covering the whole hour.
    #[test]
    fn a_neighbour_that_went_down_and_up_has_one_red_span_between_green() {
        let n = neighbor(
            "ams-gw1",
            SessionState::Established,
            &[
                (NOW - 7000, UpDown::Up),
                (NOW - 1200, UpDown::Down),
                (NOW - 600, UpDown::Up),
            ],
        );
        let spans = timeline(&n, NOW - 8000, HOUR);
        assert_eq!(shades(&spans), [Shade::Up, Shade::Down, Shade::Up]);
        assert_eq!(spans[0].from, NOW - 3600);
        assert_eq!((spans[1].from, spans[1].to), (NOW - 1200, NOW - 600));
        assert_eq!(spans[2].to, NOW);
        let svg = timeline_svg(&n, NOW - 8000, HOUR);
        assert_eq!(svg.matches("<rect class=\"down\"").count(), 1, "{svg}");
        assert_eq!(svg.matches("<rect class=\"up\"").count(), 2, "{svg}");
        // Ticks for the two events inside the hour, not the one before.
        assert_eq!(svg.matches("<line class=\"tick\"").count(), 2, "{svg}");
        assert!(
            svg.contains(">−1h</text>") && svg.contains(">−15m</text>"),
            "{svg}"
        );
        assert!(svg.contains(">now</text>"), "{svg}");
    }

    /// routed started 30 s ago and its session came up 10 s later: the
    /// timeline is a minute; grey, then red until the session came up,
    /// then green.
    #[test]
    fn before_routed_started_nothing_is_known() {
        let n = neighbor(
            "ams-gw1",
            SessionState::Established,
            &[(NOW - 20, UpDown::Up)],
        );
        let spans = timeline(&n, NOW - 30, Window::new(30, NOW));
        let span = |from, to, shade| Span { from, to, shade };
        assert_eq!(
            spans,
            [
                span(NOW - 60, NOW - 30, Shade::Unknown),
                span(NOW - 30, NOW - 20, Shade::Down),
                span(NOW - 20, NOW, Shade::Up),
            ]
        );
    }

    /// A session up in the second routed started shows no red; a down
    /// and up again within one second does, as a sliver.
    #[test]
    fn a_flap_shorter_than_a_second_shows_and_a_quick_start_does_not() {
        let n = neighbor(
            "ams-gw1",
            SessionState::Established,
            &[
                (NOW - 100, UpDown::Up),
                (NOW - 10, UpDown::Down),
                (NOW - 10, UpDown::Up),
            ],
        );
        let w = Window::new(100, NOW);
        let spans = timeline(&n, NOW - 100, w);
        let span = |from, to, shade| Span { from, to, shade };
        assert_eq!(
            spans,
            [
                span(NOW - 100, NOW - 10, Shade::Up),
                span(NOW - 10, NOW - 10, Shade::Down),
                span(NOW - 10, NOW, Shade::Up),
            ]
        );
        let svg = timeline_svg(&n, NOW - 100, w);
        let sliver = "<rect class=\"down\" x=\"576\" y=\"4\" width=\"4\"";
        assert!(svg.contains(sliver), "{svg}");
        // Drawn over the up that follows it.
        let after = "<rect class=\"up\" x=\"576\"";
        assert!(
            svg.find(after).unwrap() < svg.find(sliver).unwrap(),
            "{svg}"
        );
    }

    /// Without any event the whole known time is the state now.
    #[test]
    fn a_neighbour_without_history_is_its_state_now() {
        let n = neighbor("lan", SessionState::Active, &[]);
        assert_eq!(shades(&timeline(&n, NOW - 9999, HOUR)), [Shade::Down]);
        let n = neighbor("lan", SessionState::Established, &[]);
        assert_eq!(shades(&timeline(&n, NOW - 9999, HOUR)), [Shade::Up]);
    }

    /// Events older than the window or from a clock that stepped back
    /// never draw outside it or backwards.
    #[test]
    fn spans_stay_inside_the_window_and_in_order() {
        let n = neighbor(
            "x",
            SessionState::Idle,
            &[
                (NOW + 50, UpDown::Down),
                (NOW - 99_999, UpDown::Up),
                (NOW - 10, UpDown::Down),
            ],
        );
        let spans = timeline(&n, NOW - 5000, HOUR);
        assert!(!spans.is_empty());
        for s in &spans {
            assert!(
                s.from <= s.to && s.from >= NOW - 3600 && s.to <= NOW,
                "{spans:?}"
            );
        }
        for w in spans.windows(2) {
            assert_eq!(w[0].to, w[1].from, "{spans:?}");
        }
    }

    #[test]
    fn the_page_lists_every_neighbour_and_route() {
        let st = status(vec![
            neighbor(
                "ams-gw1",
                SessionState::Established,
                &[(NOW - 60, UpDown::Up)],
            ),
            neighbor("par-gw2", SessionState::Active, &[(NOW - 60, UpDown::Down)]),
        ]);
        let p = render("fra-gw1", &st, &routes(), NOW);
        assert!(
            p.contains("<title>routed fra-gw1 AS 4200000001</title>"),
            "{p}"
        );
        for want in [
            "<b>ams-gw1</b>",
            "<b>par-gw2</b>",
            "10.77.2.0/24",
            "ams-gw1, ams-gw2",
            "hold timer expired",
            "<span class=\"ok\">established</span>",
            "<span class=\"bad\">active</span>",
            "512.3",
            "router id 10.77.1.1",
        ] {
            assert!(p.contains(want), "the page lacks {want:?}:\n{p}");
        }
        assert_eq!(p.matches("<svg class=\"timeline\"").count(), 2);
        assert!(!p.contains("<script"), "{p}");
    }

    #[test]
    fn hostile_names_and_errors_are_escaped() {
        let mut n = neighbor(
            "<script>alert(1)</script>",
            SessionState::Idle,
            &[(NOW - 5, UpDown::Down)],
        );
        n.last_error = Some("<img src=x onerror=alert(1)>".into());
        n.history[0].reason = "\"><script>".into();
        let mut r = routes();
        r.routes[0].via = vec!["<b>evil</b>".into()];
        let p = render("<i>gw</i>", &status(vec![n]), &r, NOW);
        assert!(!p.contains("<script"), "{p}");
        assert!(!p.contains("<img"), "{p}");
        assert!(!p.contains("<b>evil"), "{p}");
        assert!(!p.contains("<i>gw"), "{p}");
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{p}");
        assert!(p.contains("&lt;b&gt;evil&lt;/b&gt;"), "{p}");
    }
}
