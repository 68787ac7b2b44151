//! routed's control socket: a Unix stream socket (mode 0600) with one JSON
//! request per line and one JSON reply per line, typed in
//! [`cubenet_api::routed`].

use crate::driver::Shared;
use cubenet_api::routed::Request;
use cubenet_api::{line, Empty, Reply};
use cubenet_daemon::ctl::{not_utf8_reply, read_request_line, too_long_reply, RequestLine};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub use cubenet_api::routed::MAX_LINE;

/// Binds the control socket, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    cubenet_daemon::bind_private_socket(path)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let after = shared.clone();
    serve_with(
        listener,
        move |line| handle(&shared, line),
        // A restart asked for starts once its reply is out and the client
        // has gone.
        move || after.restart_if_asked(),
    )
    .await
}

/// The accept loop around any request handler (a request line in, a reply
/// line out); each connection is a task of its own, so a broken client
/// only ends its own connection.
async fn serve_with(
    listener: UnixListener,
    handler: impl Fn(&str) -> String + Send + Sync + 'static,
    after: impl Fn() + Send + Sync + 'static,
) {
    let handler = Arc::new(handler);
    let after = Arc::new(after);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                cubenet_daemon::after_accept_error("control socket", &e).await;
                continue;
            }
        };
        let (handler, after) = (handler.clone(), after.clone());
        tokio::spawn(async move {
            let _ = connection(stream, &*handler).await;
            after();
        });
    }
}

/// Parses one request line; the error is the reply's message.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

fn handle(shared: &Arc<Shared>, text: &str) -> String {
    let now = Instant::now();
    match parse_request(text) {
        Ok(Request::Status) => line(&Reply::Ok(shared.router().status(now))),
        Ok(Request::Routes) => line(&Reply::Ok(shared.router().routes(now))),
        Ok(Request::Reload) => line(&Reply::from(shared.reload())),
        Ok(Request::Restart) => line(&Reply::from(shared.ask_restart())),
        Err(e) => line(&Reply::<Empty>::Err(e)),
    }
}

async fn connection(
    stream: UnixStream,
    handler: &(dyn Fn(&str) -> String + Send + Sync),
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
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
        w.write_all(handler(text.trim()).as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixStream as StdStream;
    use std::time::Duration;

    #[test]
    fn requests_parse_and_others_are_named() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(parse_request(r#"{"cmd":"reload"}"#), Ok(Request::Reload));
        assert_eq!(
            parse_request(r#" {"cmd": "routes", "x": 1} "#),
            Ok(Request::Routes)
        );
        for (bad, want) in [
            (r#"{"cmd":"reboot"}"#, "unknown variant `reboot`"),
            (r#"{"cmd":5}"#, "bad request"),
            (r#"{}"#, "missing field `cmd`"),
            (r#"[1,2]"#, "bad request"),
            ("not json", "bad request"),
            ("", "bad request"),
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    proptest! {
        /// A control-socket line from a broken client never panics the
        /// parser; only the four commands are accepted.
        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,200}") {
            if let Ok(r) = parse_request(&line) {
                let v: Value = serde_json::from_str(&line).unwrap();
                let want = match r {
                    Request::Status => "status",
                    Request::Routes => "routes",
                    Request::Reload => "reload",
                    Request::Restart => "restart",
                };
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
        rt.spawn(serve_with(
            listener,
            |text| match parse_request(text) {
                Ok(_) => line(&Reply::Ok(cubenet_api::routed::Routes { routes: vec![] })),
                Err(e) => line(&Reply::<Empty>::Err(e)),
            },
            || {},
        ));
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
