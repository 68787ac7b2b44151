//! routed's control socket: a Unix stream socket (mode 0600) with one JSON
//! request per line (`{"cmd":"status"}`, `{"cmd":"routes"}`) and one JSON
//! reply per line.

use crate::driver::Shared;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const MAX_LINE: u64 = 64 << 10;

/// Binds the control socket, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    cubenet_daemon::bind_private_socket(path)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = connection(stream, shared).await;
        });
    }
}

fn handle(shared: &Shared, line: &str) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let now = Instant::now();
    match req["cmd"].as_str() {
        Some("status") => {
            let mut v = shared.router().status(now);
            v["ok"] = json!(true);
            v
        }
        Some("routes") => {
            let mut v = shared.router().routes(now);
            v["ok"] = json!(true);
            v
        }
        Some(c) => {
            json!({"ok": false, "error": format!("unknown cmd {c:?}: expected status or routes")})
        }
        None => json!({"ok": false, "error": "bad request: no \"cmd\""}),
    }
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE).read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= MAX_LINE {
            w.write_all(b"{\"ok\":false,\"error\":\"request line too long\"}\n")
                .await?;
            return Ok(());
        }
        let mut reply = handle(&shared, line.trim()).to_string();
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
