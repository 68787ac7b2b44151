//! `cubenet-tcpcheck`: a TCP transfer whose both ends print the SHA-256 of
//! the bytes, so a test can prove that data crossed the overlay intact.
//!
//!   cubenet-tcpcheck serve ADDR:PORT          # accepts one connection
//!   cubenet-tcpcheck send ADDR:PORT BYTES [--rate BYTES_PER_S] [--until-eof]
//!
//! `send` sends BYTES pseudo-random bytes; `--rate` paces them (so a
//! transfer can outlast a series of faults), `--until-eof` also ends it, at
//! a chunk boundary, once its stdin reaches end of file (so the caller
//! decides how long it runs). Both ends print `<bytes> <sha256>` on success.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: cubenet-tcpcheck serve ADDR:PORT | send ADDR:PORT BYTES [--rate BYTES_PER_S] [--until-eof]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 3 => serve(&args[2]),
        Some("send") if args.len() >= 4 => {
            send_options(&args[4..]).and_then(|o| send(&args[2], &args[3], o))
        }
        _ => Err(USAGE.to_string()),
    };
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cubenet-tcpcheck: {e}");
            ExitCode::from(1)
        }
    }
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

fn serve(a: &str) -> Result<String, String> {
    let l = TcpListener::bind(addr(a)?).map_err(|e| format!("bind {a}: {e}"))?;
    // Tell the caller we listen (it waits for this line, not for time).
    println!("listening");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read after {total} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok(format!("{total} {}", hex(&h.finalize())))
}

/// What `send` takes after ADDR:PORT BYTES.
#[derive(Debug, Default, PartialEq)]
struct SendOptions {
    /// Bytes per second at most.
    rate: Option<u64>,
    /// End at stdin's end of file.
    until_eof: bool,
}

fn send_options(args: &[String]) -> Result<SendOptions, String> {
    let mut o = SendOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rate" => {
                let v = it.next().ok_or("--rate needs BYTES_PER_S")?;
                let r: u64 =
                    v.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
                        format!("--rate {v:?}: expected bytes per second above 0")
                    })?;
                o.rate = Some(r);
            }
            "--until-eof" => o.until_eof = true,
            _ => return Err(format!("{a:?}: unknown option\n{USAGE}")),
        }
    }
    Ok(o)
}

/// A flag raised once stdin reaches end of file (or fails).
fn stdin_closed() -> Arc<AtomicBool> {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        flag.store(true, Ordering::SeqCst);
    });
    closed
}

fn send(a: &str, bytes: &str, o: SendOptions) -> Result<String, String> {
    let want: u64 = bytes
        .parse()
        .map_err(|_| format!("{bytes:?} is not a byte count"))?;
    let closed = o.until_eof.then(stdin_closed);
    let mut s = TcpStream::connect_timeout(&addr(a)?, Duration::from_secs(10))
        .map_err(|e| format!("connect {a}: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    // xorshift: deterministic, not compressible, cheap.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sent = 0u64;
    // Smaller chunks when paced, so the pace is smooth.
    let chunk = if o.rate.is_some() { 1 << 14 } else { buf.len() };
    let start = Instant::now();
    while sent < want {
        if closed.as_ref().is_some_and(|c| c.load(Ordering::SeqCst)) {
            break;
        }
        if let Some(rate) = o.rate {
            // Not ahead of `rate`: wait until the bytes sent so far are due.
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let n = ((want - sent) as usize).min(chunk);
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        s.write_all(&buf[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        h.update(&buf[..n]);
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    // Wait for the receiver to close, so it has everything.
    let _ = s.read(&mut buf);
    Ok(format!("{sent} {}", hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Result<SendOptions, String> {
        send_options(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn send_options_parse_and_name_what_is_wrong() {
        assert_eq!(opts(&[]), Ok(SendOptions::default()));
        assert_eq!(
            opts(&["--rate", "1000", "--until-eof"]),
            Ok(SendOptions {
                rate: Some(1000),
                until_eof: true
            })
        );
        assert!(opts(&["--rate"]).unwrap_err().contains("--rate needs"));
        assert!(opts(&["--rate", "0"]).unwrap_err().contains("above 0"));
        assert!(opts(&["--rate", "fast"]).unwrap_err().contains("\"fast\""));
        assert!(opts(&["--speed"]).unwrap_err().contains("unknown option"));
    }
}
