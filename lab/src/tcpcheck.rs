//! `cubenet-tcpcheck`: a TCP transfer whose both ends print the SHA-256 of
//! the bytes, so a test can prove that data crossed the overlay intact.
//!
//!   cubenet-tcpcheck serve ADDR:PORT          # accepts one connection
//!   cubenet-tcpcheck send ADDR:PORT BYTES     # sends BYTES pseudo-random bytes
//!
//! Both print `<bytes> <sha256>` on success.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 3 => serve(&args[2]),
        Some("send") if args.len() == 4 => send(&args[2], &args[3]),
        _ => Err("usage: cubenet-tcpcheck serve ADDR:PORT | send ADDR:PORT BYTES".to_string()),
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

fn send(a: &str, bytes: &str) -> Result<String, String> {
    let want: u64 = bytes
        .parse()
        .map_err(|_| format!("{bytes:?} is not a byte count"))?;
    let mut s = TcpStream::connect_timeout(&addr(a)?, Duration::from_secs(10))
        .map_err(|e| format!("connect {a}: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    // xorshift: deterministic, not compressible, cheap.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sent = 0u64;
    while sent < want {
        let n = ((want - sent) as usize).min(buf.len());
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
