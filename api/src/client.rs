//! The client side of both control sockets: one request, one typed reply.
//! A [`Client`] keeps its connection, so routed can stream route updates
//! over one; [`call`] and [`call_blocking`] are one-shot for CLIs.

use crate::Reply;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Why a request got no typed answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{path}: {source} (is the daemon running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the daemon closed the connection")]
    Closed { path: PathBuf },
    #[error("{path}: reply not understood: {msg}")]
    BadReply { path: PathBuf, msg: String },
    /// The daemon answered `{"ok": false, "error": ...}`.
    #[error("{0}")]
    Refused(String),
    /// No answer within the caller's deadline (a stuck daemon).
    #[error("{path}: no answer within {after:?}")]
    TimedOut {
        path: PathBuf,
        after: std::time::Duration,
    },
}

/// A connection to a daemon's control socket.
pub struct Client {
    path: PathBuf,
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    line: String,
    /// How long [`Client::call`] waits for the daemon to take a request
    /// and answer it; `None`: as long as it takes.
    deadline: Option<std::time::Duration>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, CallError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| CallError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = s.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            r: BufReader::new(r),
            w,
            line: String::new(),
            deadline: None,
        })
    }

    /// Every [`Client::call`] on this connection gives up after `d` (a
    /// daemon that stopped reading must not hold its caller forever).
    /// Events read with [`Client::next`] wait as long as it takes.
    pub fn with_deadline(mut self, d: std::time::Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sends one request and reads its reply.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        req: &Q,
    ) -> Result<R, CallError> {
        let Some(after) = self.deadline else {
            return self.call_now(req).await;
        };
        match tokio::time::timeout(after, self.call_now(req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::TimedOut {
                path: self.path.clone(),
                after,
            }),
        }
    }

    async fn call_now<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        req: &Q,
    ) -> Result<R, CallError> {
        self.send(req).await?;
        self.next::<Reply<R>>()
            .await?
            .into_result()
            .map_err(CallError::Refused)
    }

    /// Sends one request without reading a reply.
    pub async fn send<Q: Serialize>(&mut self, req: &Q) -> Result<(), CallError> {
        self.w
            .write_all(crate::line(req).as_bytes())
            .await
            .map_err(|source| CallError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads the next line as `T` (a reply, or an event after `subscribe`).
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<T, CallError> {
        self.line.clear();
        let n = self
            .r
            .read_line(&mut self.line)
            .await
            .map_err(|source| CallError::Io {
                path: self.path.clone(),
                source,
            })?;
        decode_line(&self.path, &self.line, n)
    }
}

/// One request on a new connection.
pub async fn call<Q: Serialize, R: DeserializeOwned>(path: &Path, req: &Q) -> Result<R, CallError> {
    Client::connect(path).await?.call(req).await
}

/// [`call`] that gives up when the daemon does not answer within `after`.
pub async fn call_within<Q: Serialize, R: DeserializeOwned>(
    path: &Path,
    req: &Q,
    after: std::time::Duration,
) -> Result<R, CallError> {
    let connect = Client::connect(path);
    let c = match tokio::time::timeout(after, connect).await {
        Ok(c) => c?,
        Err(_) => {
            return Err(CallError::TimedOut {
                path: path.to_path_buf(),
                after,
            })
        }
    };
    c.with_deadline(after).call(req).await
}

/// One request on a new connection, for callers with no runtime (CLIs,
/// tests, the lab).
pub fn call_blocking<Q: Serialize, R: DeserializeOwned>(
    path: &Path,
    req: &Q,
) -> Result<R, CallError> {
    call_blocking_within(path, req, None)
}

/// [`call_blocking`] that gives up when the daemon does not answer within
/// `timeout` (a poller must not hang on a stuck daemon).
pub fn call_blocking_within<Q: Serialize, R: DeserializeOwned>(
    path: &Path,
    req: &Q,
    timeout: Option<std::time::Duration>,
) -> Result<R, CallError> {
    use std::io::{BufRead, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| CallError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let io = |source| CallError::Io {
        path: path.to_path_buf(),
        source,
    };
    s.set_read_timeout(timeout).map_err(io)?;
    s.set_write_timeout(timeout).map_err(io)?;
    s.write_all(crate::line(req).as_bytes()).map_err(io)?;
    let mut line = String::new();
    let n = std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(io)?;
    decode_line::<Reply<R>>(path, &line, n)?
        .into_result()
        .map_err(CallError::Refused)
}

/// One line read (`n` bytes; none means the daemon closed) as `T`.
fn decode_line<T: DeserializeOwned>(path: &Path, line: &str, n: usize) -> Result<T, CallError> {
    if n == 0 {
        return Err(CallError::Closed {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_str(line).map_err(|e| CallError::BadReply {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlayd::{Installed, Request, Route};
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn a_client_sends_typed_requests_and_reads_typed_replies_and_refusals() {
        let dir = std::env::temp_dir().join(format!("cubenet-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Some(l) = lines.next_line().await.unwrap() {
                let reply = match serde_json::from_str::<Request>(&l).unwrap() {
                    Request::RouteSet { routes, .. } => Reply::Ok(Installed {
                        installed: routes.len(),
                    }),
                    _ => Reply::Err("no".into()),
                };
                w.write_all(crate::line(&reply).as_bytes()).await.unwrap();
            }
        });
        let mut c = Client::connect(&path).await.unwrap();
        let req = Request::RouteSet {
            routes: vec![Route {
                prefix: "10.0.0.0/8".parse().unwrap(),
                via: vec!["g".into()],
            }],
            merge: false,
        };
        let r: Installed = c.call(&req).await.unwrap();
        assert_eq!(r.installed, 1);
        let e = c.call::<_, Installed>(&Request::Status).await.unwrap_err();
        assert!(matches!(e, CallError::Refused(ref m) if m == "no"), "{e}");
        drop(c);
        server.await.unwrap();
        let e = call_blocking::<_, Installed>(&path, &Request::Status).unwrap_err();
        assert!(matches!(e, CallError::Connect { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
