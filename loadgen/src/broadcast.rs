//! The broadcast scenario's publisher: a thread that publishes stamped messages at
//! --msg-rate while the run lasts, either through the node's admin HTTP API
//! (`POST /publish/<channel>`, HTTP/1.1 keep-alive) or through one extra WebSocket
//! connection on `/ws/<channel>` (node `--client-publish`).
//!
//! The subscribers are ordinary worker connections; what they receive is judged in the
//! workers (`payload::SeqTracker`). This file only sends, and counts what the node said.
//!
//! Invariants:
//! - `Shared::published` is the number of sequence numbers used so far; it is final once
//!   the publisher thread has returned, which the main thread waits for before `Close`.
//! - Sequence numbers are consecutive from 0 and every one is sent exactly once.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringpush::http::client::{client_key, parse_response};
use ringpush::http::handshake::accept_key;
use ringpush::ws::mask::MaskGen;
use ringpush::ws::{frame, CloseCode, Decoder, Event, Limits, OpCode, Role};
use serde_json::Value;

use crate::cli::Publisher;
use crate::payload;
use crate::plan::Plan;
use crate::report::PublishReport;
use crate::scenario::BroadcastPlan;
use crate::worker::{Phase, Shared};

/// Longest wait for the admin API or the publishing WebSocket to answer.
// Generous: a publish to a million subscribers is answered after every shard has queued
// it, which takes seconds on a small box.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The pacing loop looks at the phase at least this often.
const PHASE_POLL: Duration = Duration::from_millis(20);
/// Largest admin response head or body accepted.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Starts the publisher thread for `plan` (which must be a broadcast plan).
pub fn spawn(
    plan: Arc<Plan>,
    broadcast: BroadcastPlan,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<PublishReport> {
    std::thread::Builder::new()
        .name("loadgen-publisher".into())
        .spawn(move || {
            let mut report = PublishReport {
                publish_rtt: (broadcast.publisher == Publisher::Admin)
                    .then(ringpush::stats::latency_histogram),
                ..PublishReport::default()
            };
            match broadcast.publisher {
                Publisher::Admin => {
                    let mut sink = AdminSink::new(&broadcast);
                    pace(&broadcast, &shared, &mut report, |body, report| {
                        sink.publish(body, report)
                    });
                }
                // The main thread starts no publisher for a subscribe-only run.
                Publisher::None => {}
                Publisher::Client => match ClientSink::connect(&plan, &broadcast, plan.seed) {
                    Ok(mut sink) => {
                        pace(&broadcast, &shared, &mut report, |body, report| {
                            sink.publish(body, report)
                        });
                        sink.close();
                    }
                    Err(e) => {
                        ringpush::elog!("ringpush-loadgen publisher: {e}");
                        *report.errors.entry("connect").or_default() += 1;
                    }
                },
            }
            report
        })
        .expect("spawning the publisher thread")
}

/// Publishes at the plan's rate while the phase is `Run` (and --count allows), each
/// message stamped at the moment it is handed to `publish`.
fn pace(
    plan: &BroadcastPlan,
    shared: &Shared,
    report: &mut PublishReport,
    mut publish: impl FnMut(&[u8], &mut PublishReport),
) {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / plan.msg_rate);
    let mut body = payload::template(plan.size);
    let mut seq = 0u64;
    while shared.phase() == Phase::Run && plan.count.is_none_or(|count| seq < count) {
        let due = start + interval.mul_f64(seq as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(PHASE_POLL));
            continue;
        }
        payload::write_stamp(&mut body, payload::now_ns(), seq, false);
        seq += 1;
        shared.published.store(seq, Ordering::Release);
        report.published = seq;
        publish(&body, report);
    }
}

/// The admin API over one keep-alive connection, reopened when the node closes it.
struct AdminSink {
    addr: SocketAddr,
    head: Vec<u8>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    opened: u64,
}

/// A parsed admin response.
struct Response {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

impl AdminSink {
    fn new(plan: &BroadcastPlan) -> AdminSink {
        let mut head = format!(
            "POST /publish/{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\n",
            plan.channel, plan.admin, plan.size
        );
        if let Some(token) = &plan.admin_token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        AdminSink {
            addr: plan.admin,
            head: head.into_bytes(),
            stream: None,
            buf: Vec::new(),
            opened: 0,
        }
    }

    fn publish(&mut self, body: &[u8], report: &mut PublishReport) {
        let started = Instant::now();
        // A kept-alive connection the node has closed fails on first use: retry once on
        // a fresh one before counting an error.
        let reused = self.stream.is_some();
        let mut result = self.round_trip(body);
        // Only a connection that failed before the node could have acted is retried: after
        // a timeout the publish may well have gone out, and sending it again would deliver
        // it twice.
        let timed_out = matches!(
            &result,
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
        );
        if result.is_err() && reused && !timed_out {
            self.stream = None;
            result = self.round_trip(body);
        }
        match result {
            Ok(response) => {
                if let Some(rtt) = report.publish_rtt.as_mut() {
                    crate::report::record(rtt, started.elapsed().as_micros() as u64);
                }
                if response.close {
                    self.stream = None;
                }
                if response.status != 200 {
                    *report.status.entry(response.status).or_default() += 1;
                    return;
                }
                report.acked += 1;
                let subscribers = serde_json::from_slice::<Value>(&response.body)
                    .ok()
                    .and_then(|v| v.get("subscribers").and_then(Value::as_u64));
                match subscribers {
                    Some(n) => {
                        report.subscribers_reported += n;
                        report.last_subscribers = Some(n);
                    }
                    None => *report.errors.entry("bad_response").or_default() += 1,
                }
            }
            Err(e) => {
                self.stream = None;
                let kind = match e.kind() {
                    io::ErrorKind::ConnectionRefused => "connect_refused",
                    io::ErrorKind::InvalidData => "bad_response",
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed_out",
                    _ => "io",
                };
                if report.errors.values().sum::<u64>() == 0 {
                    ringpush::elog!(
                        "ringpush-loadgen publisher: POST to {} failed: {e}",
                        self.addr
                    );
                }
                *report.errors.entry(kind).or_default() += 1;
            }
        }
        report.reconnects = self.opened.saturating_sub(1);
    }

    fn round_trip(&mut self, body: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            self.stream = Some(stream);
            self.buf.clear();
            self.opened += 1;
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut request = Vec::with_capacity(self.head.len() + body.len());
        request.extend_from_slice(&self.head);
        request.extend_from_slice(body);
        stream.write_all(&request)?;
        read_response(stream, &mut self.buf)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads more bytes into `buf`; EOF is an error (the response is incomplete).
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.len() > RESPONSE_BYTES_MAX {
        return Err(bad("admin response too large"));
    }
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "admin API closed the connection",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body) from `stream`, leaving any
/// bytes past it in `buf`.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Response> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| bad("bad Content-Length"))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                close = v.contains("close") || (close && !v.contains("keep-alive"));
            }
            _ => {}
        }
    }
    buf.drain(..head_end);
    let body = if chunked {
        read_chunked(stream, buf)?
    } else if let Some(length) = length {
        if length > RESPONSE_BYTES_MAX {
            return Err(bad("admin response too large"));
        }
        while buf.len() < length {
            fill(stream, buf)?;
        }
        buf.drain(..length).collect()
    } else {
        // No length: the body runs to the end of the connection.
        close = true;
        loop {
            match fill(stream, buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        std::mem::take(buf)
    };
    Ok(Response {
        status,
        body,
        close,
    })
}

fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            fill(stream, buf)?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                    continue;
                }
                fill(stream, buf)?;
            }
        }
        if body.len() + size > RESPONSE_BYTES_MAX {
            return Err(bad("admin response too large"));
        }
        while buf.len() < size + 2 {
            fill(stream, buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// One WebSocket connection that publishes by sending data messages; a reader thread
/// answers pings and discards what the channel sends back.
struct ClientSink {
    writer: Arc<Mutex<TcpStream>>,
    masks: Arc<Mutex<MaskGen>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ClientSink {
    fn connect(plan: &Plan, broadcast: &BroadcastPlan, seed: u64) -> io::Result<ClientSink> {
        let mut stream = TcpStream::connect_timeout(&plan.dest, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut masks = MaskGen::new(seed ^ 0x5bd1_e995);
        let mut nonce = [0u8; 16];
        for chunk in nonce.chunks_exact_mut(4) {
            chunk.copy_from_slice(&masks.next_key());
        }
        let key = client_key(nonce);
        let mut request = Vec::new();
        let path = format!("/ws/{}", broadcast.channel);
        ringpush::http::client::write_client_request_with(
            &mut request,
            &plan.host,
            &path,
            &key,
            &[],
            &plan.upgrade_headers(),
        );
        stream.write_all(&request)?;
        let expected = accept_key(key.as_bytes());
        let mut buf = Vec::new();
        let rest = loop {
            fill(&mut stream, &mut buf)?;
            match parse_response(&buf, &expected) {
                Ok(None) => continue,
                Ok(Some(handshake)) => break buf.split_off(handshake.header_bytes),
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "publishing WebSocket on {path}: {e}"
                    )))
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let masks = Arc::new(Mutex::new(masks));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (writer, masks, stop) = (writer.clone(), masks.clone(), stop.clone());
            std::thread::Builder::new()
                .name("loadgen-publisher-reader".into())
                .spawn(move || read_loop(stream, rest, &writer, &masks, &stop))
                .map_err(io::Error::other)?
        };
        Ok(ClientSink {
            writer,
            masks,
            stop,
            reader: Some(reader),
        })
    }

    fn publish(&mut self, body: &[u8], report: &mut PublishReport) {
        let key = self
            .masks
            .lock()
            .map(|mut m| m.next_key())
            .unwrap_or([0; 4]);
        let message = frame::encode_masked(OpCode::Binary, body, key);
        let result = match self.writer.lock() {
            Ok(mut w) => w.write_all(&message),
            Err(_) => Err(io::Error::other("writer poisoned")),
        };
        match result {
            Ok(()) => report.acked += 1,
            Err(e) => {
                if report.errors.values().sum::<u64>() == 0 {
                    ringpush::elog!("ringpush-loadgen publisher: send failed: {e}");
                }
                *report.errors.entry("io").or_default() += 1;
            }
        }
    }

    fn close(&mut self) {
        let key = self
            .masks
            .lock()
            .map(|mut m| m.next_key())
            .unwrap_or([0; 4]);
        if let Ok(mut w) = self.writer.lock() {
            let _ = w.write_all(&frame::encode_close_masked(CloseCode::NORMAL, "", key));
        }
        // Give the node a moment to answer the close, then leave.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.reader.as_ref().is_none_or(|r| r.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Release);
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Reads the publishing connection until it closes: answers pings, drops data messages.
fn read_loop(
    mut stream: TcpStream,
    mut pending: Vec<u8>,
    writer: &Mutex<TcpStream>,
    masks: &Mutex<MaskGen>,
    stop: &AtomicBool,
) {
    let limits = Limits {
        role: Role::Client,
        message_bytes_max: 64 << 20,
    };
    let mut decoder = Decoder::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if !pending.is_empty() {
            let mut replies = Vec::new();
            let mut closed = false;
            let result = decoder.feed(&mut pending, &limits, |event| {
                match event {
                    Event::Ping(body) => replies.push(body.to_vec()),
                    Event::Close(..) => {
                        closed = true;
                        return ControlFlow::Break(());
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            });
            pending.clear();
            for body in replies {
                let key = masks.lock().map(|mut m| m.next_key()).unwrap_or([0; 4]);
                if let Ok(mut w) = writer.lock() {
                    let _ = w.write_all(&frame::encode_masked(OpCode::Pong, &body, key));
                }
            }
            if closed || result.is_err() {
                return;
            }
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
