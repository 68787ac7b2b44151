//! Prometheus metrics: the text exposition format
//! (0.0.4) and a minimal HTTP/1.1 responder for `GET /metrics`.

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves `GET /metrics` (Prometheus text format 0.0.4) on `addr`; any
/// other path gets 404. One short response per connection, at most
/// [`MAX_CONNECTIONS`] at once, each bounded in time (5 s to send the
/// request, 5 s to take the answer).
pub async fn serve_metrics<F>(listener: tokio::net::TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let render = std::sync::Arc::new(render);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::after_accept_error("metrics", &e).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded, with a deadline).
            let head = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if head.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body, ctype) = if line.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                (
                    "200 OK",
                    render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                (
                    "404 Not Found",
                    "not found: try /metrics\n".to_string(),
                    "text/plain",
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            })
            .await;
        });
    }
}

/// A Prometheus label value, escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Text exposition, a family at a time.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.out
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            self.out.push_str(&format!("{{{}}}", l.join(",")));
        }
        self.out.push_str(&format!(" {value}\n"));
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_escapes_labels() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Things.");
        e.sample("x_total", &[("peer", "a\"b\\c")], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{peer=\"a\\\"b\\\\c\"} 3\n"
        );
    }

    /// Clients that connect and never ask hold a place for 5 s at most:
    /// with every place taken, the next client is answered once they
    /// time out (on tokio's paused clock), and they are closed.
    #[tokio::test(start_paused = true)]
    async fn idle_clients_hold_their_place_only_until_their_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_metrics(l, || "up 1\n".to_string()));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let t0 = tokio::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        assert!(r.contains("200 OK") && r.ends_with("up 1\n"), "{r}");
        // Not before a place was free (the paused clock moved 5 s).
        assert!(t0.elapsed() >= std::time::Duration::from_secs(5));
        for mut c in idle {
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).await.unwrap(), 0, "an idle client stayed");
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_404() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_metrics(l, || "up 1\n".to_string()));
        for (path, want) in [("/metrics", "200 OK"), ("/", "404")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).await.unwrap();
            assert!(r.contains(want), "{r}");
            if want == "200 OK" {
                assert!(r.ends_with("up 1\n"));
            }
        }
    }
}
