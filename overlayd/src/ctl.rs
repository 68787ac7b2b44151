//! The control socket: a Unix stream socket (mode 0600) carrying
//! newline-delimited JSON. Requests are `{"cmd": ...}`; each gets one reply
//! line `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. `subscribe`
//! turns the connection into a stream of events.

use crate::node::Node;
use cubenet_daemon::ctl::{not_utf8_reply, read_request_line, too_long_reply, RequestLine};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted (a `route_set` of thousands of routes
/// fits); a longer one gets an error naming the limit and the connection
/// is closed.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Subscribe,
    Reload,
    RouteAdd {
        prefix: IpNet,
        via: Vec<String>,
    },
    RouteDel {
        prefix: IpNet,
    },
    /// Replaces every routed entry with this set; with `merge`, installs or
    /// replaces these entries and keeps the others (what routed sends while
    /// it is still learning after a start: a restarted overlayd gets routes
    /// at once, a running one loses none).
    RouteSet {
        routes: Vec<RouteEntry>,
        #[serde(default)]
        merge: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub prefix: IpNet,
    pub via: Vec<String>,
}

/// Binds the control socket, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    cubenet_daemon::bind_private_socket(path)
}

pub async fn serve(
    listener: UnixListener,
    node: Arc<Node>,
    reload: Arc<dyn Fn() -> Value + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, node, reload).await {
                tracing::debug!("control connection closed: {e}");
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    node: Arc<Node>,
    reload: Arc<dyn Fn() -> Value + Send + Sync>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        let line = match read_request_line(&mut r, &mut buf, MAX_LINE).await? {
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
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(Request::Subscribe) => {
                let mut rx = node.events.subscribe();
                w.write_all(b"{\"ok\":true,\"subscribed\":true}\n").await?;
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            let mut s = ev.to_string();
                            s.push('\n');
                            w.write_all(s.as_bytes()).await?;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let s = format!("{{\"event\":\"lagged\",\"missed\":{n}}}\n");
                            w.write_all(s.as_bytes()).await?;
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
            Ok(req) => handle(&node, req, &*reload),
        };
        let mut s = reply.to_string();
        s.push('\n');
        w.write_all(s.as_bytes()).await?;
    }
}

fn handle(node: &Node, req: Request, reload: &(dyn Fn() -> Value + Send + Sync)) -> Value {
    match req {
        Request::Status => {
            let mut s = node.status();
            s["ok"] = json!(true);
            s
        }
        Request::Reload => reload(),
        Request::RouteAdd { prefix, via } => match node.route_add(prefix, &via) {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": format!("{prefix}: {e}")}),
        },
        Request::RouteDel { prefix } => json!({"ok": true, "removed": node.route_del(prefix)}),
        Request::RouteSet { routes, merge } => {
            // Validate everything first: a bad entry refuses the whole set
            // and the installed table stays as it was.
            let mut errors = Vec::new();
            for r in &routes {
                for v in &r.via {
                    if node.peer_by_name(v).is_none_or(|p| !p.is_gateway()) {
                        errors.push(format!("{}: unknown gateway {v:?}", r.prefix));
                    }
                }
            }
            if !errors.is_empty() {
                return json!({"ok": false, "error": errors.join("; ")});
            }
            node.route_set(&routes, merge);
            json!({"ok": true, "installed": routes.len()})
        }
        Request::Subscribe => json!({"ok": false, "error": "unreachable"}),
    }
}

/// Sends one request and returns the reply (client side of the CLI).
pub async fn request(path: &Path, req: &Value) -> Result<Value, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("{}: {e} (is overlayd running?)", path.display()))?;
    let (r, mut w) = stream.into_split();
    let mut s = req.to_string();
    s.push('\n');
    w.write_all(s.as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(r)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&line).map_err(|e| format!("{}: bad reply: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_parse_and_unknown_ones_are_refused() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"route_add","prefix":"10.77.2.0/24","via":["g"]}"#)
                .unwrap();
        assert!(matches!(r, Request::RouteAdd { .. }));
        let r: Request = serde_json::from_str(r#"{"cmd":"route_set","routes":[]}"#).unwrap();
        assert!(matches!(r, Request::RouteSet { merge: false, .. }));
        let r: Request =
            serde_json::from_str(r#"{"cmd":"route_set","routes":[],"merge":true}"#).unwrap();
        assert!(matches!(r, Request::RouteSet { merge: true, .. }));
        for bad in [
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"route_add","prefix":"10.77.2.0/33","via":[]}"#,
            r#"{"cmd":"route_set","routes":[],"merge":"yes"}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// A control-socket line from a broken client never panics the
        /// parser (the connection just gets an error reply).
        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,200}") {
            let _ = serde_json::from_str::<Request>(&line);
        }
    }
}
