//! Reading control-socket requests: one line per request, at most `max`
//! bytes, so a client that never sends a newline cannot grow a daemon's
//! memory, and a line that is not UTF-8 gets an error reply instead of
//! ending the connection. What a broken client does stays on its own
//! connection.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// What came from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestLine {
    /// One request, without its line end.
    Line(String),
    /// The client closed the connection (a last line without a newline is
    /// still returned as a [`RequestLine::Line`] first).
    Eof,
    /// `max` bytes came without a newline: reply [`too_long_reply`] and
    /// close the connection (the rest of the line cannot be told from the
    /// next request).
    TooLong,
    /// The line is not UTF-8: reply [`not_utf8_reply`] and go on.
    NotUtf8,
}

/// Reads the next request line into `buf` (reused between calls), never
/// holding more than `max` bytes of it.
pub async fn read_request_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<RequestLine> {
    buf.clear();
    let n = (&mut *r).take(max as u64).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(RequestLine::Eof);
    }
    if buf.last() != Some(&b'\n') && n >= max {
        return Ok(RequestLine::TooLong);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(match std::str::from_utf8(buf) {
        Ok(s) => RequestLine::Line(s.to_string()),
        Err(_) => RequestLine::NotUtf8,
    })
}

/// The reply line to a request longer than `max` bytes.
pub fn too_long_reply(max: usize) -> String {
    format!(
        "{{\"ok\":false,\"error\":\"request line longer than {max} bytes (the limit); closing the connection\"}}\n"
    )
}

/// The reply line to a request that is not UTF-8.
pub fn not_utf8_reply() -> &'static str {
    "{\"ok\":false,\"error\":\"bad request: not UTF-8\"}\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, BufReader};

    async fn lines(input: &[u8], max: usize) -> Vec<RequestLine> {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // The reader may stop early (too long): a closed pipe is fine.
            let _ = b.write_all(&input).await;
        });
        let mut r = BufReader::new(a);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let l = read_request_line(&mut r, &mut buf, max).await.unwrap();
            assert!(buf.len() <= max);
            let stop = matches!(l, RequestLine::Eof | RequestLine::TooLong);
            out.push(l);
            if stop {
                break;
            }
        }
        drop(r);
        writer.await.unwrap();
        out
    }

    fn line(s: &str) -> RequestLine {
        RequestLine::Line(s.to_string())
    }

    #[tokio::test]
    async fn lines_end_at_newlines_and_the_last_may_lack_one() {
        assert_eq!(
            lines(b"{\"cmd\":\"status\"}\r\n\nlast", 64).await,
            vec![
                line("{\"cmd\":\"status\"}"),
                line(""),
                line("last"),
                RequestLine::Eof
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_stops_at_the_limit() {
        let mut input = vec![b'x'; 1 << 20];
        input.push(b'\n');
        assert_eq!(lines(&input, 1000).await, vec![RequestLine::TooLong]);
        // Exactly at the limit with its newline is still a line.
        let mut input = vec![b'y'; 9];
        input.push(b'\n');
        assert_eq!(
            lines(&input, 10).await,
            vec![line("yyyyyyyyy"), RequestLine::Eof]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_is_one_bad_line_and_reading_goes_on() {
        assert_eq!(
            lines(b"\xff\xfe{\n{\"cmd\":\"status\"}\n", 64).await,
            vec![
                RequestLine::NotUtf8,
                line("{\"cmd\":\"status\"}"),
                RequestLine::Eof
            ]
        );
    }

    #[test]
    fn replies_are_one_json_line() {
        let r = too_long_reply(1 << 20);
        assert!(r.ends_with("}\n") && r.contains("1048576"), "{r}");
        assert_eq!(r.matches('\n').count(), 1);
        assert!(not_utf8_reply().ends_with("}\n"));
    }
}
