//! The UAPI socket (`/var/run/wireguard/<ifname>.sock`) that `wg show`
//! reads: a thin server around [`crate::uapi`]. The directory is created
//! 0755 when missing (as wireguard-go does), the socket is 0600 (only root
//! and overlayd's user may read the peers) and a stale one from a killed
//! overlayd is replaced; the driver removes it at exit.
//!
//! Bounded like the metrics server: at most [`MAX_CONNECTIONS`] served at
//! once (more wait in the listen backlog), each request read within
//! [`DEADLINE`] and each answer taken within it, request lines at most
//! [`MAX_LINE`] bytes and the body of a (refused) `set=1` read and dropped
//! up to [`MAX_SET_BODY`] bytes.

use crate::uapi::{self, Device, Operation};
use cubenet_daemon::ctl::{read_request_line, RequestLine};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Where wireguard-tools looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// A request must arrive, and its answer be taken, within this.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// The longest request line (a `set=1` line is at most a few hundred).
pub const MAX_LINE: usize = 4096;
/// The most of a refused `set=1` body read before the refusal.
pub const MAX_SET_BODY: usize = 1 << 20;

/// The socket of interface `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Creates the directory (0755) if missing and binds the socket (0600),
/// replacing a stale one; a socket another daemon answers on is an error.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
    }
    cubenet_daemon::bind_private_socket(path)
}

/// What a `get=1` shows, read when asked (the driver's: the node's
/// [`crate::node::Node::wg_device`] now).
pub type View = Arc<dyn Fn() -> Device + Send + Sync>;

/// Answers `wg` on `listener` until the process ends.
pub async fn serve(listener: UnixListener, view: View) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                cubenet_daemon::after_accept_error("UAPI socket", &e).await;
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, &view).await {
                tracing::debug!("UAPI connection closed: {e}");
            }
        });
    }
}

/// Serves requests until the client closes, breaks the protocol or is
/// too slow.
async fn connection(stream: UnixStream, view: &View) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        let read = tokio::time::timeout(DEADLINE, read_request(&mut r, &mut buf)).await;
        let (reply, close) = match read {
            Err(_) => return Err(std::io::Error::other("no request within the deadline")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Request::Eof)) => return Ok(()),
            Ok(Ok(Request::Get)) => (uapi::render_get(&view()), false),
            Ok(Ok(Request::Set)) => {
                tracing::info!(
                    "UAPI set=1 refused: overlayd is configured by overlayd.toml and certificates"
                );
                (uapi::errno_reply(uapi::ERRNO_SET_REFUSED), false)
            }
            Ok(Ok(Request::Bad(why))) => {
                tracing::debug!("UAPI request refused: {why}");
                (uapi::errno_reply(uapi::ERRNO_INVALID), true)
            }
        };
        tokio::time::timeout(DEADLINE, w.write_all(reply.as_bytes()))
            .await
            .map_err(|_| std::io::Error::other("answer not taken within the deadline"))??;
        if close {
            return Ok(());
        }
    }
}

/// One request as read from the socket.
enum Request {
    Get,
    Set,
    /// Refused with EINVAL, and the connection closes (the rest of the
    /// request cannot be told from the next one).
    Bad(String),
    Eof,
}

/// Reads one request: its operation line, then up to the blank line that
/// ends it.
async fn read_request<R>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Request>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let op = match read_request_line(r, buf, MAX_LINE).await? {
        RequestLine::Eof => return Ok(Request::Eof),
        RequestLine::Line(l) => uapi::parse_operation(&l),
        RequestLine::TooLong => {
            return Ok(Request::Bad(format!("a line longer than {MAX_LINE} bytes")))
        }
        RequestLine::NotUtf8 => return Ok(Request::Bad("not UTF-8".into())),
    };
    match op {
        Err(e) => Ok(Request::Bad(e.to_string())),
        Ok(Operation::Get) => match read_request_line(r, buf, MAX_LINE).await? {
            RequestLine::Line(l) => match uapi::check_get_line(&l) {
                Ok(()) => Ok(Request::Get),
                Err(e) => Ok(Request::Bad(e.to_string())),
            },
            // `get=1` and the end of the stream: answered all the same.
            RequestLine::Eof => Ok(Request::Get),
            _ => Ok(Request::Bad("get=1 takes no keys".into())),
        },
        Ok(Operation::Set) => {
            // Read to the blank line, so the client (which writes the
            // whole request before it reads) hears the refusal.
            let mut seen = 0usize;
            loop {
                match read_request_line(r, buf, MAX_LINE).await? {
                    RequestLine::Line(l) if l.is_empty() => return Ok(Request::Set),
                    RequestLine::Eof => return Ok(Request::Set),
                    RequestLine::TooLong => {
                        return Ok(Request::Bad(format!(
                            "set=1: a line longer than {MAX_LINE} bytes"
                        )))
                    }
                    _ => {}
                }
                seen += buf.len() + 1;
                if seen > MAX_SET_BODY {
                    return Ok(Request::Bad(format!(
                        "set=1: a body longer than {MAX_SET_BODY} bytes"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(input: &[u8]) -> Vec<&'static str> {
        let mut r = BufReader::new(input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let req = read_request(&mut r, &mut buf).await.unwrap();
            out.push(match req {
                Request::Get => "get",
                Request::Set => "set",
                Request::Bad(_) => "bad, closing",
                Request::Eof => "eof",
            });
            if matches!(out.last(), Some(&"eof" | &"bad, closing")) {
                return out;
            }
        }
    }

    fn served(dir: &Path) -> PathBuf {
        let path = dir.join("wireguard").join("cube0.sock");
        let l = bind(&path).unwrap();
        let view: View = Arc::new(|| Device {
            listen_port: 51820,
            peers: vec![],
        });
        tokio::spawn(serve(l, view));
        path
    }

    async fn ask(path: &Path, req: &[u8]) -> String {
        use tokio::io::AsyncReadExt;
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        r
    }

    #[tokio::test]
    async fn the_socket_answers_get_refuses_set_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = served(dir.path());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        assert_eq!(
            ask(&path, b"get=1\n\n").await,
            "listen_port=51820\nerrno=0\n\n"
        );
        assert_eq!(
            ask(&path, b"set=1\nlisten_port=1\n\nget=1\n\n").await,
            "errno=-1\n\nlisten_port=51820\nerrno=0\n\n"
        );
        assert_eq!(ask(&path, b"hello\n\nget=1\n\n").await, "errno=-22\n\n");
        // A second daemon finds it in use; a stale one is replaced.
        assert_eq!(
            bind(&path).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        let stale = dir.path().join("wireguard").join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        assert!(bind(&stale).is_ok());
    }

    /// Clients that connect and never ask hold a place for [`DEADLINE`]
    /// at most (tokio's paused clock moves it).
    #[tokio::test(start_paused = true)]
    async fn idle_clients_hold_their_place_only_until_their_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = served(dir.path());
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            ask(&path, b"get=1\n\n").await,
            "listen_port=51820\nerrno=0\n\n"
        );
        assert!(t0.elapsed() >= DEADLINE);
        for mut c in idle {
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).await.unwrap(), 0, "an idle client stayed");
        }
    }

    proptest::proptest! {
        /// Any bytes are requests, refusals or the end, never a panic, and
        /// reading ends.
        #[test]
        fn any_bytes_are_read_without_a_panic(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b'='),
                    proptest::num::u8::ANY,
                ],
                0..2000,
            ),
            prefix in proptest::sample::select(vec![&b""[..], b"get=1\n", b"set=1\n"]),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&input);
            let out = rt.block_on(request(&bytes));
            proptest::prop_assert!(out.len() <= bytes.len() + 1);
        }
    }

    #[tokio::test]
    async fn requests_are_read_to_their_blank_line() {
        assert_eq!(request(b"get=1\n\n").await, ["get", "eof"]);
        assert_eq!(request(b"get=1\n\nget=1\n\n").await, ["get", "get", "eof"]);
        let set = b"set=1\nprivate_key=00\npublic_key=01\nallowed_ip=10.0.0.0/8\n\nget=1\n\n";
        assert_eq!(request(set).await, ["set", "get", "eof"]);
    }

    #[tokio::test]
    async fn bad_requests_are_refused_and_close() {
        assert_eq!(request(b"show\n\n").await, ["bad, closing"]);
        assert_eq!(request(b"get=1\nlisten_port=1\n\n").await, ["bad, closing"]);
        assert_eq!(request(b"\xff\xfe\n\n").await, ["bad, closing"]);
        let mut long = vec![b'x'; MAX_LINE * 4];
        long.push(b'\n');
        assert_eq!(request(&long).await, ["bad, closing"]);
        let mut body = b"set=1\n".to_vec();
        while body.len() <= MAX_SET_BODY + 100 {
            body.extend_from_slice(b"allowed_ip=10.0.0.0/8\n");
        }
        assert_eq!(request(&body).await, ["bad, closing"]);
    }
}
