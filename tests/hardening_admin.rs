//! Issue 8, the admin listener: publishers must always get through. Each test is named after
//! its item and runs the real binary over real sockets.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

/// Reads one response (head plus `Content-Length` body) from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read a response head");
        assert_eq!(n, 1, "EOF inside a response head: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read a response body");
    raw.extend_from_slice(&body);
    parse_response(&raw)
}

/// A writer that pipelines `GET /metrics` and never reads must not make the node queue an
/// answer for every request: its answers pause at `--max-pending`, its buffer is bounded, and
/// past that it is closed (counted) while another admin client is still answered.
///
/// The bound: one connection may hold `--max-pending` (1 MiB) of answers plus one answer,
/// and a request buffer of at most 2 × (8 KiB head + 1 MiB body); 64 MiB leaves room for the
/// allocator and the rendered pages, and is far below what the unbounded queue reached
/// (about 0.5 GB a second).
#[test]
fn issue_8_item_6_pipelined_gets_do_not_grow_memory() {
    const GROWTH_KIB_MAX: u64 = 64 * 1024;
    let node = Node::start(&["--shards", "1"]);
    let pid = node.child.id();
    // One page rendered and one answered connection before the baseline.
    metric(&node, "ringpush_admin_requests_total");
    let before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = node.admin;
    // Pipelines for 3 s without reading; when the node closes it, it connects again and
    // goes on. Returns how many of its connections the node closed.
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let batch = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".repeat(256);
            let started = Instant::now();
            let mut closes = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(3) {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(3) {
                    match s.write(&batch) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => {
                            closes += 1;
                            break;
                        }
                    }
                }
            }
            closes
        })
    };
    let started = Instant::now();
    let mut peak = before;
    let mut other_answered = None;
    while !writer.is_finished() && started.elapsed() < Duration::from_secs(6) {
        peak = peak.max(rss_kib(pid));
        if peak - before > GROWTH_KIB_MAX {
            break;
        }
        if other_answered.is_none() && started.elapsed() > Duration::from_secs(1) {
            let t = Instant::now();
            let resp = admin(&node, "GET", "/healthz", &[], b"");
            other_answered = Some((resp.status, t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let closes = writer.join().unwrap();
    peak = peak.max(rss_kib(pid));
    assert!(
        peak - before <= GROWTH_KIB_MAX,
        "RSS grew by {} KiB (from {before} KiB), bound {GROWTH_KIB_MAX} KiB",
        peak - before
    );
    let t = Instant::now();
    let resp = admin(&node, "GET", "/healthz", &[], b"");
    assert_eq!(resp.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "healthz took {:?}",
        t.elapsed()
    );
    if let Some((status, took)) = other_answered {
        assert_eq!(status, 200, "another admin client during the flood");
        assert!(took < Duration::from_secs(5), "healthz took {took:?}");
    }
    let paused = metric_at_least(&node, "ringpush_admin_paused_total", 1);
    let slow = metric_at_least(&node, "ringpush_admin_slow_reader_closes_total", closes);
    println!(
        "RSS growth {} KiB, closes seen {closes}, paused {paused}, slow reader closes {slow}",
        peak - before
    );
}

/// Opens `n` admin connections that each send one byte of a never-ending request head every
/// 500 ms until `stop` is set.
fn tricklers(node: &Node, n: usize, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(node.admin).expect("connect a trickler");
        s.set_nonblocking(true).unwrap();
        socks.push(Some(s));
    }
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
        let mut at = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let byte = [*head.get(at).unwrap_or(&b'a')];
            at += 1;
            for slot in socks.iter_mut() {
                if let Some(s) = slot {
                    if s.write(&byte).is_err() {
                        *slot = None;
                    }
                }
            }
            for _ in 0..10 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

/// 1100 sockets trickling a request head (more than the admin shard's 1024 slots) must not
/// lock publishers out: a fresh connection evicts the oldest connection that has not completed
/// a request, and a connection that has completed one is never evicted.
#[test]
fn issue_8_item_7_trickling_sockets_do_not_lock_out_publishers() {
    let node = Node::start(&["--shards", "2"]);
    let mut sub = node.ws("/ws/alerts");
    // A publisher that completed a request before the flood.
    let mut keeper = TcpStream::connect(node.admin).unwrap();
    keeper.set_read_timeout(Some(WAIT)).unwrap();
    keeper
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut keeper).status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let trickle = tricklers(&node, 1100, &stop);
    std::thread::sleep(Duration::from_millis(1200));

    let t = Instant::now();
    let resp = admin(
        &node,
        "POST",
        "/publish/alerts",
        &[("Content-Type", "text/plain")],
        b"fresh",
    );
    let took = t.elapsed();
    assert_eq!(
        resp.status, 200,
        "a fresh publisher during the flood: {resp:?}"
    );
    assert!(took < Duration::from_secs(3), "the publish took {took:?}");
    assert_eq!(sub.recv(), Msg::Text("fresh".into()));

    let body = b"kept";
    keeper
        .write_all(
            format!(
                "POST /publish/alerts HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    keeper.write_all(body).unwrap();
    let resp = read_response(&mut keeper);
    assert_eq!(resp.status, 200, "the proven connection survives: {resp:?}");
    assert_eq!(sub.recv(), Msg::Text("kept".into()));

    // 1100 tricklers + the keeper + the fresh publisher > 1024: at least 78 were evicted.
    metric_at_least(&node, "ringpush_admin_evicted_total", 78);
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
}

/// A request head (or body) that does not complete within `--admin-request-timeout` is
/// answered 408 with `Connection: close`, counted by reason, however often bytes arrive.
#[test]
fn issue_8_item_7_admin_request_deadline_answers_408() {
    let node = Node::start(&["--shards", "1", "--admin-request-timeout", "1s"]);
    let cases: [&[u8]; 2] = [
        // A head that never ends.
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        // A complete head whose body never arrives in full.
        b"POST /publish/c HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\naaaaaaaaaaaaaaaaaaaaaa",
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(node.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let head_end = case.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            s.write_all(&case[..end + 4]).unwrap();
        }
        let mut at = head_end.map_or(0, |end| end + 4);
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(6),
                "case {i}: no answer within 6 s, got {:?}",
                String::from_utf8_lossy(&got)
            );
            if at < case.len() {
                let _ = s.write(&case[at..at + 1]);
                at += 1;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("case {i}: {e}"),
            }
        }
        let resp = parse_response(&got);
        assert_eq!(resp.status, 408, "case {i}: {resp:?}");
        assert!(
            resp.head.contains("Connection: close"),
            "case {i}: {resp:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "case {i}: answered too early, {took:?}"
        );
    }
    metric_at_least(
        &node,
        "ringpush_admin_refused_total{reason=\"request_timeout\"}",
        2,
    );
}

/// `100 Continue` for a pipelined request must not overtake the answer to an earlier publish
/// that is still waiting for the client shards' counts.
#[test]
fn issue_8_item_12_continue_does_not_overtake_earlier_answers() {
    let node = Node::start(&["--shards", "2"]);
    let mut subs: Vec<Client> = (0..8).map(|_| node.ws("/ws/order")).collect();
    let mut s = TcpStream::connect(node.admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut batch =
        b"POST /publish/order HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfirst".to_vec();
    batch.extend_from_slice(
        b"POST /publish/order HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    s.write_all(&batch).unwrap();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !got.windows(interim.len()).any(|w| w == interim) {
        assert!(Instant::now() < deadline, "no 100 Continue: {got:?}");
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "EOF: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let ok = text.find("HTTP/1.1 200");
    let cont = text.find("HTTP/1.1 100").unwrap();
    assert!(
        ok.is_some_and(|ok| ok < cont),
        "the 100 Continue overtook the first publish's 200: {text:?}"
    );
    s.write_all(b"second").unwrap();
    let resp = read_response(&mut s);
    assert_eq!(resp.status, 200);
    for sub in &mut subs {
        assert_eq!(sub.recv(), Msg::Binary(b"first".to_vec()));
        assert_eq!(sub.recv(), Msg::Binary(b"second".to_vec()));
    }
}

/// A connection that pipelines fewer requests than fill its buffer, and never reads, is
/// paused at `--max-pending` and closed once it has not drained within
/// `--admin-request-timeout`.
#[test]
fn issue_8_item_6_a_paused_reader_that_does_not_drain_is_closed() {
    let node = Node::start(&[
        "--shards",
        "1",
        "--max-pending",
        "64KiB",
        "--admin-request-timeout",
        "1s",
    ]);
    let mut s = TcpStream::connect(node.admin).unwrap();
    // Far more answers than loopback's socket buffers hold, in far fewer request bytes than
    // the request buffer's bound.
    let batch = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3000);
    s.write_all(&batch).unwrap();
    metric_at_least(&node, "ringpush_admin_paused_total", 1);
    let started = Instant::now();
    metric_at_least(&node, "ringpush_admin_slow_reader_closes_total", 1);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    node.expect_log("event=admin_slow_reader why=drain_timeout");
    // The connection is gone: reading yields what was sent before, then EOF or a reset.
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected the node to close the connection: {e}"),
        }
    }
}
