//! Test harness: runs the real `ringpush` binary on an ephemeral port and talks to it over
//! real sockets with the crate's own client-side codec.

#![allow(dead_code)]

pub mod auth;
pub mod json_client;
pub mod redis_cluster;
pub mod redis_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringpush::http::handshake;
use ringpush::ws::{frame, mask::MaskGen, CloseCode, Decoder, Event, Limits, OpCode, Role};

/// How long any single expectation waits before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running node.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn pump(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Spawns the binary as every test runs it (no pinning, no stats lines, small rings) with
/// `args` and `envs`, both output streams piped. `Node::start` adds ephemeral loopback ports
/// and waits for the listening line; tests that expect a refusal or an exit call this.
pub fn spawn_node(args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .args(["--no-pin", "--stats-interval", "0"])
        // Small rings: ring memory is locked memory, and without CAP_IPC_LOCK a user has
        // 8 MiB of it for every node the tests run at once.
        .args(["--sq-entries", "256", "--cq-entries", "2048"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringpush")
}

impl Node {
    /// Starts the node with `args` on 127.0.0.1:0 and waits for its "listening" line.
    pub fn start(args: &[&str]) -> Node {
        Node::start_with_env(args, &[])
    }

    /// As [`Node::start`], with extra environment variables (test hooks).
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Node {
        let mut child = spawn_node(
            &[&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], args].concat(),
            envs,
        );
        let stdout = pump(child.stdout.take().unwrap());
        let stderr = pump(child.stderr.take().unwrap());
        let line = stdout
            .recv_timeout(WAIT)
            .expect("ringpush printed no listening line");
        let addr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        let admin = line
            .split_whitespace()
            .skip_while(|w| *w != "admin")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in: {line}"));
        Node {
            child,
            addr,
            admin,
            stdout,
            stderr,
        }
    }

    /// Takes over a node spawned with [`spawn_node`] (with its own `--listen` and `--admin`)
    /// and waits for its listening line, as [`Node::start`] does.
    pub fn adopt(mut child: Child) -> Node {
        let stdout = pump(child.stdout.take().unwrap());
        let stderr = pump(child.stderr.take().unwrap());
        let line = stdout
            .recv_timeout(WAIT)
            .expect("ringpush printed no listening line");
        let word_after = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .skip_while(|w| *w != key)
                .nth(1)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address after {key:?} in: {line}"))
        };
        let (addr, admin) = (word_after("on"), word_after("admin"));
        Node {
            child,
            addr,
            admin,
            stdout,
            stderr,
        }
    }

    /// Sends a signal to the node.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe_free_kill(self.child.id(), sig);
        assert!(rc, "kill failed");
    }

    /// Waits for the node to exit and returns its status code and the rest of stdout.
    pub fn wait_exit(&mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(200)) {
                    out.push_str(&line);
                    out.push('\n');
                }
                return (status.code().unwrap_or(-1), out);
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stderr has a line containing `needle`.
    pub fn expect_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("no log line containing {needle:?}");
    }

    /// Opens a WebSocket on `path` and completes the upgrade.
    pub fn ws(&self, path: &str) -> Client {
        Client::connect(self.addr, path, &[]).expect("upgrade")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_free_kill(pid: u32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A frame as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// A WebSocket client over a blocking socket.
pub struct Client {
    pub stream: TcpStream,
    decoder: Decoder,
    inbox: std::collections::VecDeque<Msg>,
    masks: MaskGen,
    pub head: String,
}

impl Client {
    /// Connects and upgrades with extra request headers; Err carries the HTTP status line.
    pub fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, String> {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let key = handshake::client_key(rand16());
        let mut req = Vec::new();
        handshake::write_client_request(&mut req, "localhost", path, &key, &[]);
        // Insert extra headers before the final CRLF.
        req.truncate(req.len() - 2);
        for (name, value) in headers {
            req.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        stream.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let accept = handshake::accept_key(key.as_bytes());
        loop {
            let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("eof after {:?}", String::from_utf8_lossy(&buf)));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
                if !head.starts_with("HTTP/1.1 101") {
                    return Err(head);
                }
                handshake::parse_response(&buf, &accept).map_err(|e| format!("{e:?}"))?;
                let mut client = Client {
                    stream,
                    decoder: Decoder::default(),
                    inbox: Default::default(),
                    masks: MaskGen::new(0x1234_5678),
                    head,
                };
                let mut rest = buf[end + 4..].to_vec();
                client.feed(&mut rest);
                return Ok(client);
            }
        }
    }

    fn feed(&mut self, data: &mut [u8]) {
        let limits = Limits {
            role: Role::Client,
            message_bytes_max: 64 << 20,
        };
        let inbox = &mut self.inbox;
        self.decoder
            .feed(data, &limits, |ev| {
                inbox.push_back(match ev {
                    Event::Text(p) => Msg::Text(String::from_utf8(p.to_vec()).unwrap()),
                    Event::Binary(p) => Msg::Binary(p.to_vec()),
                    Event::Ping(p) => Msg::Ping(p.to_vec()),
                    Event::Pong(p) => Msg::Pong(p.to_vec()),
                    Event::Close(code, reason) => Msg::Close(code.map(|c| c.0), reason.to_string()),
                });
                std::ops::ControlFlow::Continue(())
            })
            .expect("server sent a valid frame");
    }

    /// Sends one masked frame.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let f = frame::encode_masked(opcode, payload, self.masks.next_key());
        self.stream.write_all(&f).unwrap();
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a close frame.
    pub fn close(&mut self, code: u16, reason: &str) {
        let f = frame::encode_close_masked(CloseCode(code), reason, self.masks.next_key());
        self.stream.write_all(&f).unwrap();
    }

    /// Receives the next message; panics on timeout or EOF.
    pub fn recv(&mut self) -> Msg {
        self.try_recv().unwrap_or_else(|e| panic!("recv: {e}"))
    }

    /// Receives the next message, or the reason there is none.
    pub fn try_recv(&mut self) -> Result<Msg, String> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("eof".into()),
                Ok(n) => self.feed(&mut chunk[..n]),
                Err(e) => return Err(format!("{e}")),
            }
        }
    }

    /// Expects a close frame with `code`, then EOF from the server.
    pub fn expect_close(&mut self, code: u16) {
        loop {
            match self.recv() {
                Msg::Close(got, _) => {
                    assert_eq!(got, Some(code), "close code");
                    break;
                }
                Msg::Ping(_) => continue,
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
        self.expect_eof();
    }

    /// Expects the server to end the TCP stream (EOF or reset) without more frames.
    pub fn expect_eof(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected EOF, got {e}"),
            }
        }
    }
}

/// An HTTP response as a test sees it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Sends one admin request (`Connection: close`) and parses the response.
pub fn admin(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let raw = http_raw_bytes(node.admin, &bytes);
    parse_response(&raw)
}

/// Parses one complete HTTP response.
pub fn parse_response(raw: &[u8]) -> Response {
    let end = find(raw, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Response {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends raw bytes and reads the whole answer until EOF.
pub fn http_raw_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Sends a raw HTTP request and returns the whole response (read until EOF).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// A valid upgrade request head for `path` with `extra` header lines (each ending CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rand16() -> [u8; 16] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut g = MaskGen::new(t as u64 ^ std::process::id() as u64);
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(4) {
        chunk.copy_from_slice(&g.next_key());
    }
    out
}

/// Reads one metric sample (exact name and label set) from the admin listener at `addr`.
pub fn metric_at(addr: SocketAddr, series: &str) -> u64 {
    let raw = http_raw_bytes(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    let resp = parse_response(&raw);
    assert_eq!(resp.status, 200);
    let text = resp.text();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix(series).and_then(|r| r.strip_prefix(' ')) {
            return value.trim().parse().unwrap_or_else(|_| panic!("{line}"));
        }
    }
    panic!("no series {series} in\n{text}");
}

/// Reads one metric sample (exact name and label set) from the node's /metrics.
pub fn metric(node: &Node, series: &str) -> u64 {
    metric_at(node.admin, series)
}

/// Sums a per-shard counter over every shard label.
pub fn metric_sum(node: &Node, name: &str) -> u64 {
    let text = admin(node, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until a metric is at least `min` and returns it (shards publish their counters
/// every 50 ms tick, so /metrics may lag by one tick).
pub fn metric_at_least(node: &Node, series: &str, min: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = metric(node, series);
        if got >= min {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {got}, want at least {min}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Waits until a metric reaches `want` (shards publish their counters every tick).
pub fn wait_metric(node: &Node, series: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = metric(node, series);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} = {got}, want {want}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// The resident set of process `pid` in KiB (VmRSS from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value")
}

/// The resident set of process `pid` in bytes.
pub fn rss_bytes(pid: u32) -> usize {
    rss_kib(pid) as usize * 1024
}

/// The next data message a client gets as text (pings skipped); panics on anything else.
pub fn next_text(client: &mut Client) -> String {
    loop {
        match client.recv() {
            Msg::Text(text) => return text,
            Msg::Ping(_) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Fails if a data message (or a close) arrives within `quiet`; pings are skipped.
pub fn expect_no_more(client: &mut Client, quiet: Duration) {
    client.stream.set_read_timeout(Some(quiet)).unwrap();
    loop {
        match client.try_recv() {
            Ok(Msg::Ping(_)) => continue,
            Ok(other) => panic!("nothing more expected, got {other:?}"),
            Err(_) => break,
        }
    }
    client.stream.set_read_timeout(Some(WAIT)).unwrap();
}
