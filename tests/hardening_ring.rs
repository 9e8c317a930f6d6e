//! Issue 8, the ring boundary and the reactor loop: the tick on kernels without multishot
//! timeouts (item 1), named failure paths of the ring (item 5), and a shutdown that waits
//! for the kernel to give back every operation before memory is freed (item 15).

mod util;
use util::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringpush::ws::OpCode;

/// Serialises the spawns that set `RINGPUSH_TICK`: the variable is process-wide, and a node
/// started meanwhile by another test of this file would inherit it.
static ENV: Mutex<()> = Mutex::new(());

/// Starts a node with the tick forced to `mode` (`None`: the kernel is probed).
fn start_with_tick(mode: Option<&str>, args: &[&str]) -> Node {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    match mode {
        Some(mode) => std::env::set_var("RINGPUSH_TICK", mode),
        None => std::env::remove_var("RINGPUSH_TICK"),
    }
    let node = Node::start(args);
    std::env::remove_var("RINGPUSH_TICK");
    node
}

/// Seconds from connecting a TCP client that sends nothing until the node drops it.
fn silent_client_dropped_after(addr: std::net::SocketAddr) -> f64 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the silent client was not dropped: {e}"),
        }
    }
    start.elapsed().as_secs_f64()
}

#[test]
fn issue_8_item_1_handshake_deadline_keeps_wall_clock_time_in_both_tick_modes() {
    let args = ["--shards", "1", "--handshake-timeout", "2s"];
    let oneshot = start_with_tick(Some("oneshot"), &args);
    oneshot.expect_log("tick=oneshot");
    let probed = start_with_tick(None, &args);
    let (a, b) = (oneshot.addr, probed.addr);
    let a = std::thread::spawn(move || silent_client_dropped_after(a));
    let b = std::thread::spawn(move || silent_client_dropped_after(b));
    let waits = [a.join().unwrap(), b.join().unwrap()];
    for (mode, waited) in ["oneshot", "probed"].iter().zip(&waits) {
        assert!(
            (1.8..=4.0).contains(waited),
            "tick {mode}: a 2 s handshake deadline fired after {waited:.2} s"
        );
    }
    for node in [&oneshot, &probed] {
        // A shard publishes its counters at the end of each 50 ms tick, so the count may
        // trail the dropped connection by a tick (more on a loaded machine): wait for it.
        wait_metric(
            node,
            "ringpush_handshake_failures_total{reason=\"timeout\"}",
            1,
        );
        assert_eq!(metric(node, "ringpush_tick_errors_total{shard=\"0\"}"), 0);
    }
}

#[test]
fn issue_8_item_1_idle_ping_keeps_time_with_a_oneshot_tick() {
    let node = start_with_tick(
        Some("oneshot"),
        &[
            "--shards",
            "1",
            "--ping-interval",
            "1s",
            "--idle-timeout",
            "3s",
        ],
    );
    node.expect_log("tick=oneshot");
    let mut client = node.ws("/ws/feed");
    let start = Instant::now();
    match client.recv() {
        Msg::Ping(payload) => client.send(OpCode::Pong, &payload),
        other => panic!("expected a ping, got {other:?}"),
    }
    let pinged = start.elapsed().as_secs_f64();
    assert!(
        (0.8..=3.0).contains(&pinged),
        "a 1 s ping interval pinged after {pinged:.2} s"
    );
    // Answered pings keep it open; a silent client is closed once the idle limit passes.
    let start = Instant::now();
    loop {
        match client.recv() {
            Msg::Ping(_) => continue,
            Msg::Close(code, _) => {
                assert_eq!(code, Some(1001));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let closed = start.elapsed().as_secs_f64();
    assert!(
        (1.5..=5.0).contains(&closed),
        "the idle close came {closed:.2} s after the last pong"
    );
    assert!(metric(&node, "ringpush_pongs_received_total{shard=\"0\"}") >= 1);
}

#[test]
fn issue_8_item_5_ring_failure_paths_are_counted_in_metrics() {
    let node = start_with_tick(None, &["--shards", "2"]);
    // A publish rings a doorbell to every shard; none fails on a healthy node.
    let resp = admin(&node, "POST", "/publish/news", &[], b"hello");
    assert_eq!(resp.status, 200);
    for shard in ["0", "1", "admin"] {
        for family in [
            "doorbell_failures_total",
            "ring_submit_errors_total",
            "ring_unknown_completions_total",
            "tick_errors_total",
            "ring_quiesce_timeouts_total",
        ] {
            let series = format!("ringpush_{family}{{shard=\"{shard}\"}}");
            assert_eq!(metric(&node, &series), 0, "{series}");
        }
    }
}

#[test]
fn issue_8_item_15_sigterm_with_sends_in_flight_exits_cleanly_within_the_drain_bound() {
    let mut node = start_with_tick(
        None,
        &[
            "--shards",
            "2",
            "--drain-timeout",
            "2s",
            "--close-timeout",
            "1s",
            "--max-pending",
            "64MiB",
            "--max-message",
            "4MiB",
        ],
    );
    // Subscribers that never read: the node's sends to them block in the kernel.
    let sleepers: Vec<Client> = (0..8).map(|_| node.ws("/ws/big")).collect();
    let body = vec![b'x'; 2 * 1024 * 1024];
    for _ in 0..6 {
        let resp = admin(&node, "POST", "/publish/big", &[], &body);
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    // Plus a connection mid-request, whose recv is armed.
    let mut half = TcpStream::connect(node.addr).expect("connect");
    half.write_all(b"GET /ws/big HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    node.signal(libc::SIGTERM);
    let (code, _) = node.wait_exit(Duration::from_secs(6));
    let took = start.elapsed();
    assert_eq!(code, 0, "exit status after SIGTERM");
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    drop(sleepers);
}
