//! Issue 8, the protocol items: memory a client pins through replies (8) and through
//! reassembly (9), forged pong round trips and a stalled log (14), with the real binary.

mod util;
use util::*;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringpush::ws::{frame, OpCode};

/// The resident set of process `pid`, in bytes (VmRSS from /proc).
fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// Reads one metric sample (exact name and label set) from /metrics.
fn metric(admin_addr: SocketAddr, series: &str) -> u64 {
    let raw = http_raw_bytes(
        admin_addr,
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

/// Waits until a metric is at least `min` (shards publish their counters every tick).
fn metric_at_least(admin_addr: SocketAddr, series: &str, min: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = metric(admin_addr, series);
        if got >= min {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {got}, want at least {min}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads frames until a close arrives (skipping data, pings and pongs) and returns its code.
fn close_code_after_backlog(client: &mut Client) -> Option<u16> {
    for _ in 0..10_000_000 {
        match client.try_recv() {
            Ok(Msg::Close(code, _)) => return code,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
    panic!("no close frame in the backlog");
}

/// Bytes in the send queue of the TCP socket with local port `local` and remote port
/// `remote`, and in its receive queue, from /proc/net/tcp.
fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| {
        addr.split(':')
            .nth(1)
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || port(cols[1]) != Some(local) || port(cols[2]) != Some(remote) {
            continue;
        }
        let (tx, rx) = cols[4].split_once(':')?;
        return Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ));
    }
    None
}

#[test]
fn issue_8_item_8_pongs_to_a_non_reader_do_not_pin_shared_reply_buffers() {
    let max_pending = 128 * 1024;
    let node = Node::start(&["--shards", "1", "--max-pending", "128KiB"]);
    let pid = node.child.id();
    let series = "ringpush_slow_consumer_closes_total{shard=\"0\"}";

    // The echo client keeps the shard's reply buffer busy with large replies.
    let mut echo = node.ws("/echo");
    let big = vec![0x5a; 60 * 1024];
    for _ in 0..200 {
        echo.send(OpCode::Binary, &big);
        assert!(matches!(echo.recv(), Msg::Binary(b) if b.len() == big.len()));
    }

    // The non-reader first fills its socket with echoes of its own, one at a time, until
    // the kernel takes no more: then one reply of at most 32 KiB waits in the node.
    let mut pinger = node.ws("/echo");
    let (here, there) = (pinger.stream.local_addr().unwrap().port(), node.addr.port());
    let fill = vec![0x33; 32 * 1024];
    let reply_bytes = fill.len() as u64 + 4;
    let mut expected = 0;
    let mut full = false;
    for _ in 0..4096 {
        pinger.send(OpCode::Binary, &fill);
        expected += reply_bytes;
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            let (server_tx, _) = tcp_queues(there, here).expect("the node's socket");
            let (_, client_rx) = tcp_queues(here, there).expect("the client's socket");
            if server_tx + client_rx >= expected {
                break;
            }
            if Instant::now() > deadline {
                full = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if full {
            break;
        }
    }
    assert!(full, "the non-reader's socket never filled");
    let baseline = rss_bytes(pid);

    // Then it pings once per echo, so each of its pongs is encoded between two large
    // replies; its pongs queue, and it must be closed at --max-pending.
    let ping = frame::encode_masked(OpCode::Ping, &[0x70; 125], [9, 8, 7, 6]);
    let mut peak = baseline;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    for i in 0..100_000u32 {
        if pinger.stream.write_all(&ping).is_err() {
            break;
        }
        echo.send(OpCode::Binary, &big);
        assert!(matches!(echo.recv(), Msg::Binary(b) if b.len() == big.len()));
        if i % 16 == 0 {
            peak = peak.max(rss_bytes(pid));
        }
        if i % 128 == 127 && metric(node.admin, series) >= 1 {
            closed = true;
            break;
        }
        assert!(Instant::now() < deadline, "the non-reader was never closed");
    }
    peak = peak.max(rss_bytes(pid));
    assert!(closed || metric_at_least(node.admin, series, 1) >= 1);
    let growth = peak.saturating_sub(baseline);
    eprintln!("baseline rss {baseline} B, peak {peak} B, growth {growth} B");
    // --max-pending plus slack for allocator noise and the echo client's buffers.
    let bound = max_pending + 8 * 1024 * 1024;
    assert!(
        growth <= bound,
        "RSS grew by {growth} B while the non-reader held at most 128 KiB of replies"
    );
    // Reading its backlog, the non-reader finds close 1008.
    assert_eq!(close_code_after_backlog(&mut pinger), Some(1008));
    // Everyone else is served.
    echo.send(OpCode::Text, b"still here");
    assert_eq!(echo.recv(), Msg::Text("still here".into()));
}
