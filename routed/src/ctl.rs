//! routed's control socket: a Unix stream socket (mode 0600) with one JSON
//! request per line (`{"cmd":"status"}`, `{"cmd":"routes"}`) and one JSON
//! reply per line.

use crate::driver::Shared;
use cubenet_daemon::ctl::{not_utf8_reply, read_request_line, too_long_reply, RequestLine};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted; a longer one gets an error naming the
/// limit and the connection is closed.
pub const MAX_LINE: usize = 64 << 10;

/// Binds the control socket, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    cubenet_daemon::bind_private_socket(path)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    serve_with(listener, move |line| handle(&shared, line)).await
}

/// The accept loop around any request handler; each connection is a task
/// of its own, so a broken client only ends its own connection.
async fn serve_with(
    listener: UnixListener,
    handler: impl Fn(&str) -> Value + Send + Sync + 'static,
) {
    let handler = Arc::new(handler);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = connection(stream, &*handler).await;
        });
    }
}

/// A request routed answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    Routes,
}

/// Parses one request line; the error is the reply's message.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let req: Value = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    match req.get("cmd").map(|c| c.as_str()) {
        Some(Some("status")) => Ok(Request::Status),
        Some(Some("routes")) => Ok(Request::Routes),
        Some(Some(c)) => Err(format!("unknown cmd {c:?}: expected status or routes")),
        Some(None) => Err("bad request: \"cmd\" is not a string".into()),
        None => Err("bad request: no \"cmd\"".into()),
    }
}

fn handle(shared: &Shared, line: &str) -> Value {
    let now = Instant::now();
    let mut v = match parse_request(line) {
        Ok(Request::Status) => shared.router().status(now),
        Ok(Request::Routes) => shared.router().routes(now),
        Err(e) => return json!({"ok": false, "error": e}),
    };
    v["ok"] = json!(true);
    v
}

async fn connection(
    stream: UnixStream,
    handler: &(dyn Fn(&str) -> Value + Send + Sync),
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
        let mut reply = handler(line.trim()).to_string();
        reply.push('\n');
        w.write_all(reply.as_bytes()).await?;
    }
}

/// One request to a running routed (the CLI side).
pub fn request(path: &Path, cmd: &str) -> Result<Value, String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("{}: {e} (is routed running?)", path.display()))?;
    writeln!(s, "{}", json!({"cmd": cmd})).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut reply)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&reply).map_err(|e| format!("reply: {e}"))?;
    if v["ok"] != true {
        return Err(v["error"].as_str().unwrap_or("request failed").to_string());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixStream as StdStream;
    use std::time::Duration;

    #[test]
    fn requests_parse_and_others_are_named() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(r#" {"cmd": "routes", "x": 1} "#),
            Ok(Request::Routes)
        );
        for (bad, want) in [
            (r#"{"cmd":"reboot"}"#, "unknown cmd \"reboot\""),
            (r#"{"cmd":5}"#, "not a string"),
            (r#"{}"#, "no \"cmd\""),
            (r#"[1,2]"#, "no \"cmd\""),
            ("not json", "bad request"),
            ("", "bad request"),
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    proptest! {
        /// A control-socket line from a broken client never panics the
        /// parser; only the two commands are accepted.
        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,200}") {
            if let Ok(r) = parse_request(&line) {
                let v: Value = serde_json::from_str(&line).unwrap();
                let want = match r { Request::Status => "status", Request::Routes => "routes" };
                prop_assert_eq!(v["cmd"].as_str(), Some(want));
            }
        }

        #[test]
        fn json_shaped_lines_never_panic(cmd in "[a-z\"{}:, ]{0,12}", extra in "[a-z0-9\"{}\\[\\]:, ]{0,40}") {
            let _ = parse_request(&format!("{{\"cmd\":{cmd}{extra}}}"));
            let _ = parse_request(&format!("{{\"cmd\":\"{cmd}\",{extra}}}"));
        }
    }

    /// The server loop on a real socket with a handler that answers
    /// status the way routed does (without a router).
    fn server() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::runtime::Runtime,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routed.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(async { bind(&path) }).unwrap();
        rt.spawn(serve_with(listener, |line| match parse_request(line) {
            Ok(_) => json!({"ok": true, "neighbors": []}),
            Err(e) => json!({"ok": false, "error": e}),
        }));
        (dir, path, rt)
    }

    fn connect(path: &Path) -> StdStream {
        let s = StdStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn reply(s: &mut std::io::BufReader<StdStream>) -> Value {
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn broken_clients_only_end_their_own_connection() {
        let (_dir, path, _rt) = server();
        let mut good = std::io::BufReader::new(connect(&path));
        let status = |good: &mut std::io::BufReader<StdStream>| {
            good.get_mut().write_all(b"{\"cmd\":\"status\"}\n").unwrap();
            assert_eq!(reply(good)["ok"], true);
        };
        status(&mut good);

        // A line far over the limit: an error naming the limit, then the
        // connection closes; the server read at most the limit.
        let long = connect(&path);
        let writer = {
            let mut w = long.try_clone().unwrap();
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..16 {
                    if w.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })
        };
        // The reply line, then the end of the connection: EOF, or a reset
        // since the server closed with the rest of the line unread.
        let mut long = std::io::BufReader::new(long);
        let mut text = String::new();
        long.read_line(&mut text).unwrap();
        let mut rest = String::new();
        assert!(
            matches!(long.read_line(&mut rest), Ok(0) | Err(_)),
            "{rest:?}"
        );
        writer.join().unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["ok"], false);
        assert!(
            v["error"].as_str().unwrap().contains(&MAX_LINE.to_string()),
            "{v}"
        );
        status(&mut good);

        // Not UTF-8, not JSON, not a command: an error each, the
        // connection stays usable.
        let mut bad = std::io::BufReader::new(connect(&path));
        for line in [
            &b"\xff\xfe\xfd\n"[..],
            b"{\"cmd\":\n",
            b"{\"cmd\":\"reboot\"}\n",
            b"\n",
        ] {
            bad.get_mut().write_all(line).unwrap();
            let v = reply(&mut bad);
            assert_eq!(v["ok"], false, "{v}");
            assert!(v["error"].is_string(), "{v}");
        }
        status(&mut bad);

        // Closes in the middle of a line.
        let mut half = connect(&path);
        half.write_all(b"{\"cmd\":\"sta").unwrap();
        drop(half);
        status(&mut good);
    }
}
