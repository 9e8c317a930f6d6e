//! Issue 12, drain without a reconnect storm: with `--drain-spread` a node closes its
//! connections 4002 "reconnect elsewhere" in an even trickle over the window, shows the
//! close rate in its metrics and stats lines, and exits within the spread plus
//! `--drain-timeout`. Each test runs the real binary.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// Connections the spread test holds.
const CONNECTIONS: usize = 200;

/// Starts a node that prints a stats line every second (the harness turns them off).
fn start_with_stats(args: &[&str]) -> Node {
    let child = Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .args(["--no-pin", "--stats-interval", "1s"])
        .args(["--sq-entries", "256", "--cq-entries", "2048"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringpush");
    Node::adopt(child)
}

/// Waits for the client's close frame, answers it as a browser would, and returns when
/// it came and its code and reason.
fn await_close(mut client: Client) -> (Instant, Option<u16>, String) {
    loop {
        match client.recv() {
            Msg::Close(code, reason) => {
                let at = Instant::now();
                client.close(code.unwrap_or(1000), "");
                client.expect_eof();
                return (at, code, reason);
            }
            Msg::Ping(_) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

#[test]
fn issue_12_drain_spread_closes_every_connection_4002_evenly_over_the_window() {
    let mut node = start_with_stats(&[
        "--shards",
        "2",
        "--drain-spread",
        "2s",
        "--drain-timeout",
        "2s",
    ]);
    let clients: Vec<Client> = (0..CONNECTIONS).map(|_| node.ws("/ws/drain")).collect();
    let waiters: Vec<_> = clients
        .into_iter()
        .map(|c| std::thread::spawn(move || await_close(c)))
        .collect();
    let signalled = Instant::now();
    node.signal(15);
    node.expect_log("event=drain_spread_start connections=");

    // Halfway through, the metrics show closes done and connections left.
    std::thread::sleep(Duration::from_millis(1000));
    let closed = metric(&node, "ringpush_drain_closes_total");
    let left = metric(&node, "ringpush_drain_left_connections");
    assert!(
        closed > 0 && closed < CONNECTIONS as u64,
        "closed {closed} at 1 s"
    );
    assert!(left > 0 && left < CONNECTIONS as u64, "left {left} at 1 s");

    let closes: Vec<(Instant, Option<u16>, String)> =
        waiters.into_iter().map(|w| w.join().unwrap()).collect();
    for (_, code, reason) in &closes {
        assert_eq!(*code, Some(4002), "{reason}");
        assert_eq!(reason, "reconnect elsewhere");
    }
    let mut offsets: Vec<Duration> = closes.iter().map(|(at, ..)| *at - signalled).collect();
    offsets.sort();
    let (first, last) = (offsets[0], offsets[CONNECTIONS - 1]);
    assert!(
        first < Duration::from_millis(500),
        "first close at {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1500),
        "closes from {first:?} to {last:?}: not spread over 2 s"
    );
    assert!(last < Duration::from_millis(2600), "last close at {last:?}");
    // No quarter of the window carries much more than its quarter of the closes.
    let quarter = Duration::from_millis(500);
    for q in 0..4u32 {
        let (from, to) = (quarter * q, quarter * (q + 1));
        let n = offsets.iter().filter(|o| **o >= from && **o < to).count();
        assert!(
            n <= CONNECTIONS * 3 / 10,
            "{n} of {CONNECTIONS} closes in {from:?}..{to:?}: {offsets:?}"
        );
    }
    node.expect_log("event=drain_spread_end connections=");

    let (code, out) = node.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(code, 0, "{out}");
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?} with a 2 s spread and a 2 s drain timeout"
    );
    // A stats line during the drain shows the close rate.
    let rates: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split("drain_closes_per_s=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(rates.iter().any(|r| *r > 0), "no drain close rate in {out}");
}

#[test]
fn issue_12_drain_timeout_counts_from_the_end_of_the_spread() {
    // A client that never answers the close keeps its shard waiting for --drain-timeout
    // after the spread, not from the signal.
    let mut node = Node::start(&[
        "--shards",
        "1",
        "--drain-spread",
        "1s",
        "--drain-timeout",
        "1500ms",
        "--close-timeout",
        "30s",
    ]);
    let mut stubborn = node.ws("/ws/drain");
    let signalled = Instant::now();
    node.signal(15);
    match stubborn.recv() {
        Msg::Close(code, _) => assert_eq!(code, Some(4002)),
        other => panic!("expected close 4002, got {other:?}"),
    }
    // Not answered: the node aborts it at the drain deadline and exits.
    stubborn.expect_eof();
    let aborted = signalled.elapsed();
    let (code, out) = node.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{out}");
    assert!(
        aborted >= Duration::from_millis(2000),
        "aborted after {aborted:?}: the drain timeout counted from the signal"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(4500),
        "exit took {:?} with a 1 s spread and a 1.5 s drain timeout",
        signalled.elapsed()
    );
}
