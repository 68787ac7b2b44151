//! Prometheus metrics: the text exposition format
//! (0.0.4) and a minimal HTTP/1.1 responder for `GET /metrics` and the
//! status page at `GET /`.

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// What the metrics address serves: the Prometheus text and the status
/// page (HTML), each rendered afresh per request.
pub struct Pages<M, S> {
    /// `GET /metrics`.
    pub metrics: M,
    /// `GET /`.
    pub status_html: S,
}

/// What a request line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Metrics,
    Status,
    NotFound,
}

/// The page a request head (at least its first line) asks for; anything
/// but `GET` of a known path is [`Page::NotFound`].
fn page_of(head: &str) -> Page {
    let mut words = head.split_whitespace();
    if words.next() != Some("GET") {
        return Page::NotFound;
    }
    let target = words.next().unwrap_or("");
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match path {
        "/metrics" => Page::Metrics,
        "/" => Page::Status,
        _ => Page::NotFound,
    }
}

/// The status page is server-rendered with inline CSS and inline SVG and
/// runs no script: the policy allows exactly that, and nothing is cached
/// (the page refreshes itself).
const STATUS_HEADERS: &str = "Cache-Control: no-store\r\n\
Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n\
X-Content-Type-Options: nosniff\r\n";

/// Serves `GET /metrics` (Prometheus text format 0.0.4) and the status
/// page at `GET /` (HTML) on `listener`; any other path gets 404. One
/// short response per connection, at most [`MAX_CONNECTIONS`] at once,
/// each bounded in time (5 s to send the request, 5 s to take the answer).
pub async fn serve_metrics<M, S>(listener: tokio::net::TcpListener, pages: Pages<M, S>)
where
    M: Fn() -> String + Send + Sync + 'static,
    S: Fn() -> String + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pages = std::sync::Arc::new(pages);
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
        let pages = pages.clone();
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
            let (status, body, ctype, extra) = match page_of(&line) {
                Page::Metrics => (
                    "200 OK",
                    (pages.metrics)(),
                    "text/plain; version=0.0.4; charset=utf-8",
                    "",
                ),
                Page::Status => (
                    "200 OK",
                    (pages.status_html)(),
                    "text/html; charset=utf-8",
                    STATUS_HEADERS,
                ),
                Page::NotFound => (
                    "404 Not Found",
                    "not found: try / or /metrics\n".to_string(),
                    "text/plain",
                    "",
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
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
        tokio::spawn(serve_metrics(l, test_pages()));
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

    fn test_pages() -> Pages<impl Fn() -> String, impl Fn() -> String> {
        Pages {
            metrics: || "up 1\n".to_string(),
            status_html: || "<!DOCTYPE html><title>s</title>".to_string(),
        }
    }

    #[test]
    fn request_lines_name_their_page() {
        for (head, want) in [
            ("GET /metrics HTTP/1.1\r\n", Page::Metrics),
            ("GET /metrics?x=1 HTTP/1.1\r\n", Page::Metrics),
            ("GET / HTTP/1.1\r\nHost: x\r\n", Page::Status),
            ("GET /?refresh HTTP/1.0\r\n", Page::Status),
            ("GET /metricsx HTTP/1.1\r\n", Page::NotFound),
            ("GET /index.html HTTP/1.1\r\n", Page::NotFound),
            ("POST / HTTP/1.1\r\n", Page::NotFound),
            ("GET", Page::NotFound),
            ("", Page::NotFound),
        ] {
            assert_eq!(page_of(head), want, "{head:?}");
        }
    }

    #[tokio::test]
    async fn serves_metrics_the_status_page_and_404() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_metrics(l, test_pages()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).await.unwrap();
            r
        };
        let r = get("/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.ends_with("\r\n\r\nup 1\n"), "{r}");
        let r = get("/").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{r}"
        );
        assert!(r.contains("Cache-Control: no-store\r\n"), "{r}");
        assert!(
            r.contains("Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:;"),
            "{r}"
        );
        assert!(
            r.ends_with("\r\n\r\n<!DOCTYPE html><title>s</title>"),
            "{r}"
        );
        let r = get("/favicon.ico").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(!r.contains("Content-Security-Policy"), "{r}");
    }
}
