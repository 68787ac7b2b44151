//! The control socket: a Unix stream socket (mode 0600) carrying
//! newline-delimited JSON, typed in [`cubenet_api::overlayd`]. Each request
//! gets one reply line (`{"ok": true, ...}` or `{"ok": false, "error":
//! "..."}`); `subscribe` turns the connection into a stream of events. A
//! connection keeps one piece of state: the prefixes of a route resync in
//! progress.

use crate::node::Node;
use cubenet_api::overlayd::{self as api, Request};
use cubenet_api::{line, Empty, Reply};
use cubenet_daemon::ctl::{not_utf8_reply, read_request_line, too_long_reply, RequestLine};
use ipnet::IpNet;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub use api::MAX_LINE;

/// Where the driver puts the node's events and subscribers read them (a
/// subscriber too slow for [`EVENT_QUEUE`] of them is told `lagged`).
pub type Events = tokio::sync::broadcast::Sender<api::Event>;

/// Events a subscriber may be behind before it is told it lagged.
pub const EVENT_QUEUE: usize = 1024;

pub fn events() -> Events {
    tokio::sync::broadcast::channel(EVENT_QUEUE).0
}

/// Reloads the node's certificates and rules (shared with SIGHUP).
pub type Reload = Arc<dyn Fn() -> Result<api::Reloaded, String> + Send + Sync>;

/// Binds the control socket, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    cubenet_daemon::bind_private_socket(path)
}

pub async fn serve(listener: UnixListener, node: Arc<Node>, reload: Reload, events: Events) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                cubenet_daemon::after_accept_error("control socket", &e).await;
                continue;
            }
        };
        let node = node.clone();
        let reload = reload.clone();
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, node.clone(), reload, events).await {
                tracing::debug!("control connection closed: {e}");
            }
            // A resync cut short: what it installed so far is published.
            node.publish_fib();
        });
    }
}

async fn connection(
    stream: UnixStream,
    node: Arc<Node>,
    reload: Reload,
    events: Events,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    // The prefixes added since `route_sync_begin`, while a sync runs.
    let mut sync: Option<HashSet<IpNet>> = None;
    loop {
        let text = match read_request_line(&mut r, &mut buf, MAX_LINE).await? {
            RequestLine::Line(l) => l,
            RequestLine::Eof => return Ok(()),
            RequestLine::TooLong => {
                w.write_all(too_long_reply(MAX_LINE).as_bytes()).await?;
                return Ok(());
            }
            RequestLine::NotUtf8 => {
                w.write_all(not_utf8_reply().as_bytes()).await?;
                continue;
            }
        };
        let reply = match serde_json::from_str::<Request>(text.trim()) {
            Err(e) => line(&Reply::<Empty>::Err(format!("bad request: {e}"))),
            Ok(Request::Subscribe) => {
                let mut rx = events.subscribe();
                w.write_all(line(&Reply::Ok(api::Subscribed { subscribed: true })).as_bytes())
                    .await?;
                loop {
                    let ev = match rx.recv().await {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            api::Event::Lagged { missed }
                        }
                        Err(_) => return Ok(()),
                    };
                    w.write_all(line(&ev).as_bytes()).await?;
                }
            }
            Ok(req) => handle(&node, req, &reload, &mut sync),
        };
        w.write_all(reply.as_bytes()).await?;
    }
}

/// Answers one request with its reply line.
fn handle(node: &Node, req: Request, reload: &Reload, sync: &mut Option<HashSet<IpNet>>) -> String {
    match req {
        Request::Status => line(&Reply::Ok(node.status(std::time::Instant::now()))),
        Request::Attached => line(&Reply::Ok(node.attached())),
        Request::Reload => line(&Reply::from(reload())),
        Request::RouteAdd { prefix, via } => line(&Reply::from(
            node.route_add(prefix, &via).map(|()| Empty {}),
        )),
        Request::RouteDel { prefix } => line(&Reply::Ok(api::Removed {
            removed: node.route_del(prefix),
        })),
        Request::RouteSet { routes, merge } => line(&Reply::from(
            node.route_set(&routes, merge)
                .map(|installed| api::Installed { installed }),
        )),
        Request::RouteUpdate {
            add,
            withdraw,
            more,
        } => {
            // Chunks of a resync with more to follow are published with the
            // last: one copy of the table, not one per chunk.
            let u = node.route_update(&add, &withdraw, !more);
            if let Some(seen) = sync.as_mut() {
                // Not the refused ones: an older entry of theirs is not
                // what routed has, and goes at the end.
                let refused: HashSet<IpNet> = u.refused.iter().map(|r| r.prefix).collect();
                seen.extend(
                    add.iter()
                        .map(|r| r.prefix.trunc())
                        .filter(|p| !refused.contains(p)),
                );
            }
            line(&Reply::Ok(u))
        }
        Request::RouteSyncBegin => {
            *sync = Some(HashSet::new());
            line(&Reply::Ok(Empty {}))
        }
        Request::RouteSyncEnd => match sync.take() {
            Some(seen) => line(&Reply::Ok(node.route_retain(&seen))),
            None => line(&Reply::<Empty>::Err(
                "route_sync_end without route_sync_begin on this connection".into(),
            )),
        },
        Request::Subscribe => line(&Reply::<Empty>::Err("unreachable".into())),
    }
}
