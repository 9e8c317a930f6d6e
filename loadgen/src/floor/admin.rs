//! The floor server's admin API: `POST /publish/<channel>` sends the body as one binary
//! frame to every client of every holder and answers `{"subscribers":N}`; `GET /stats`
//! answers `{"connections":N}`. HTTP/1.1 keep-alive, one thread per admin connection.
//!
//! Invariants:
//! - A publish is answered after every holder has reported its sends, so the answer's
//!   count is the clients the frame was handed to the kernel for.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use ringpush::ws::{frame, OpCode};

use super::Publish;

/// Largest request head or body accepted.
const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// Accepts admin connections for ever.
pub fn serve(listener: TcpListener, holders: Vec<mpsc::Sender<Publish>>, count: Arc<AtomicU64>) {
    let holders = Arc::new(holders);
    for stream in listener.incoming().flatten() {
        let holders = Arc::clone(&holders);
        let count = Arc::clone(&count);
        let _ = std::thread::Builder::new()
            .name("floor-admin-conn".into())
            .spawn(move || connection(stream, &holders, &count));
    }
}

/// A parsed request: the method and target, the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub body: Vec<u8>,
}

/// Parses one request from the start of `buf`: `Ok(None)` while incomplete, else the
/// request and the bytes it used. Only `Content-Length` bodies are read.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > REQUEST_BYTES_MAX {
            Err("request head too large".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = match (first.next(), first.next()) {
        (Some(m), Some(t)) if !m.is_empty() && t.starts_with('/') => (m, t),
        _ => return Err("bad request line".into()),
    };
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad Content-Length")?;
            }
        }
    }
    if length > REQUEST_BYTES_MAX {
        return Err("body too large".into());
    }
    let start = end + 4;
    if buf.len() < start + length {
        return Ok(None);
    }
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        body: buf[start..start + length].to_vec(),
    };
    Ok(Some((request, start + length)))
}

fn connection(mut stream: TcpStream, holders: &[mpsc::Sender<Publish>], count: &AtomicU64) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let (request, used) = match parse(&buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(_) => {
                let _ = stream.write_all(&answer(400, "{}"));
                return;
            }
        };
        buf.drain(..used);
        let response = if request.method == "POST" && request.target.starts_with("/publish/") {
            let subscribers = publish(holders, &request.body);
            answer(200, &format!("{{\"subscribers\":{subscribers}}}"))
        } else if request.method == "GET" && request.target == "/stats" {
            let n = count.load(Ordering::Relaxed);
            answer(200, &format!("{{\"connections\":{n}}}"))
        } else {
            answer(404, "{}")
        };
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

/// Hands the frame to every holder and waits for all; returns the clients sent to.
fn publish(holders: &[mpsc::Sender<Publish>], body: &[u8]) -> u64 {
    let frame = frame::encode(OpCode::Binary, body);
    let (done, reports) = mpsc::channel();
    let mut asked = 0;
    for holder in holders {
        let publish = Publish {
            frame: frame.clone(),
            done: done.clone(),
        };
        if holder.send(publish).is_ok() {
            asked += 1;
        }
    }
    drop(done);
    let mut sent = 0;
    for (clients, failed) in reports.iter().take(asked) {
        sent += clients - failed;
    }
    sent
}

fn answer(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         \r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_requests_and_waits_for_whole_bodies() {
        let two: &[u8] = b"POST /publish/fan HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                            GET /stats HTTP/1.1\r\n\r\n";
        let (first, used) = parse(two).unwrap().unwrap();
        assert_eq!(first.method, "POST");
        assert_eq!(first.target, "/publish/fan");
        assert_eq!(first.body, b"abc");
        let (second, rest) = parse(&two[used..]).unwrap().unwrap();
        assert_eq!(
            (second.method.as_str(), second.target.as_str()),
            ("GET", "/stats")
        );
        assert_eq!(used + rest, two.len());
        assert_eq!(
            parse(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Ok(None)
        );
        assert_eq!(parse(b"POST /p HTTP/1.1\r\nContent-Le"), Ok(None));
        assert!(parse(b"POST /p HTTP/1.1\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }
}
