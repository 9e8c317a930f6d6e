//! The push node end to end: channels, sessions, the admin API, fan-out across shards,
//! slow consumers and metrics, with the real binary over real sockets.

mod util;

use std::time::{Duration, Instant};

use ringpush::ws::OpCode;
use util::{admin, metric, metric_at_least, rss_kib, wait_metric, Client, Msg, Node};

/// A channel publish's answer without the `epoch` and `offset` that issue 10 added to it
/// (channels_json.rs checks their values); panics when they are missing.
fn counted(body: &str) -> String {
    let at = body
        .find(",\"epoch\":\"")
        .unwrap_or_else(|| panic!("no epoch in {body}"));
    let rest = &body[at..];
    assert!(
        rest.contains("\",\"offset\":") && rest.ends_with('}'),
        "{body}"
    );
    format!("{}}}", &body[..at])
}

fn publish(node: &Node, channel: &str, content_type: &str, body: &[u8]) -> util::Response {
    admin(
        node,
        "POST",
        &format!("/publish/{channel}"),
        &[("Content-Type", content_type)],
        body,
    )
}

/// Opens subscribers on `channel` until both of the node's two shards hold at least one.
fn subscribers_on_both_shards(node: &Node, channel: &str) -> Vec<Client> {
    let mut subs = Vec::new();
    for _ in 0..64 {
        subs.push(node.ws(&format!("/ws/{channel}")));
        if subs.len() >= 4 {
            let n = subs.len() as u64;
            let deadline = Instant::now() + util::WAIT;
            while metric(node, "ringpush_subscriptions{shard=\"0\"}")
                + metric(node, "ringpush_subscriptions{shard=\"1\"}")
                < n
            {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(20));
            }
            if metric(node, "ringpush_subscriptions{shard=\"0\"}") > 0
                && metric(node, "ringpush_subscriptions{shard=\"1\"}") > 0
            {
                return subs;
            }
        }
    }
    panic!("SO_REUSEPORT never spread 64 connections over two shards");
}

#[test]
fn admin_publish_reaches_subscribers_on_every_shard() {
    let node = Node::start(&["--shards", "2"]);
    let mut subs = subscribers_on_both_shards(&node, "news");
    let _other = node.ws("/ws/sports");
    let resp = publish(
        &node,
        "news",
        "text/plain; charset=utf-8",
        "héllo all".as_bytes(),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        counted(&resp.text()),
        format!("{{\"channel\":\"news\",\"subscribers\":{}}}", subs.len())
    );
    for s in &mut subs {
        assert_eq!(s.recv(), Msg::Text("héllo all".into()));
    }
    // Binary unless the content type is text/* or application/json.
    let resp = publish(
        &node,
        "news",
        "application/octet-stream",
        &[0, 159, 146, 150],
    );
    assert_eq!(resp.status, 200);
    for s in &mut subs {
        assert_eq!(s.recv(), Msg::Binary(vec![0, 159, 146, 150]));
    }
    let resp = publish(&node, "news", "application/json", b"{\"a\":1}");
    assert_eq!(resp.status, 200);
    for s in &mut subs {
        assert_eq!(s.recv(), Msg::Text("{\"a\":1}".into()));
    }
    // A channel nobody listens to.
    let resp = publish(&node, "empty", "text/plain", b"x");
    assert_eq!(
        counted(&resp.text()),
        "{\"channel\":\"empty\",\"subscribers\":0}"
    );
    let want = 3 * subs.len() as u64;
    let deadline = Instant::now() + util::WAIT;
    loop {
        let delivered = metric(&node, "ringpush_deliveries_total{shard=\"0\"}")
            + metric(&node, "ringpush_deliveries_total{shard=\"1\"}");
        if delivered == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries {delivered}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn admin_refuses_bad_requests_precisely() {
    let node = Node::start(&["--shards", "1", "--max-message", "1KiB"]);
    let resp = publish(&node, "c", "text/plain", &[0xff, 0xfe]);
    assert_eq!(resp.status, 400, "invalid UTF-8 in a text publish");
    let resp = publish(&node, "c", "application/octet-stream", &[0u8; 2048]);
    assert_eq!(resp.status, 413);
    assert_eq!(publish(&node, "bad/name", "text/plain", b"x").status, 400);
    assert_eq!(publish(&node, "bad%20name", "text/plain", b"x").status, 400);
    assert_eq!(admin(&node, "GET", "/publish/c", &[], b"").status, 405);
    assert_eq!(admin(&node, "GET", "/nothing", &[], b"").status, 404);
    assert_eq!(admin(&node, "GET", "/healthz", &[], b"").status, 200);
    let raw = util::http_raw_bytes(node.admin, b"BLAH\r\n\r\n");
    assert_eq!(util::parse_response(&raw).status, 400);
    // The WebSocket side refuses bad channel names before the upgrade.
    let resp = util::http_raw(node.addr, &util::upgrade_request("/ws/bad%20name", ""));
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[test]
fn admin_token_is_required_when_set() {
    let node = Node::start(&["--admin-token", "s3cret"]);
    let resp = admin(&node, "POST", "/publish/c", &[], b"x");
    assert_eq!(resp.status, 401);
    let resp = admin(
        &node,
        "POST",
        "/publish/c",
        &[("Authorization", "Bearer wrong")],
        b"x",
    );
    assert_eq!(resp.status, 401);
    let resp = admin(
        &node,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(resp.status, 200);
    let resp = admin(
        &node,
        "POST",
        "/publish/c",
        &[("Authorization", "Bearer s3cret")],
        b"x",
    );
    assert_eq!(resp.status, 200);
}

#[test]
fn a_newer_session_tab_replaces_the_older_on_any_shard() {
    let node = Node::start(&["--shards", "2"]);
    let mut old = node.ws("/ws/c?session=u1&tab=t1");
    let mut other_tab = node.ws("/ws/c?session=u1&tab=t2");
    // Each new connection replaces the previous one wherever SO_REUSEPORT placed either.
    for _ in 0..6 {
        let new = node.ws("/ws/c?session=u1&tab=t1");
        match old.recv() {
            Msg::Close(code, reason) => {
                assert_eq!(code, Some(4001));
                assert_eq!(reason, "replaced");
            }
            other => panic!("expected 4001, got {other:?}"),
        }
        old.close(4001, "");
        old.expect_eof();
        old = new;
    }
    // The other tab was never touched and /send reaches both tabs.
    let resp = admin(
        &node,
        "POST",
        "/send/u1",
        &[("Content-Type", "text/plain")],
        b"to you",
    );
    assert_eq!(resp.text(), "{\"session\":\"u1\",\"connections\":2}");
    assert_eq!(old.recv(), Msg::Text("to you".into()));
    assert_eq!(other_tab.recv(), Msg::Text("to you".into()));
    metric_at_least(
        &node,
        "ringpush_connections_closed_total{reason=\"replaced\"}",
        6,
    );
}

#[test]
fn send_reaches_every_tab_of_a_session() {
    let node = Node::start(&["--shards", "2"]);
    let mut tabs: Vec<Client> = (0..5)
        .map(|i| node.ws(&format!("/ws/c{i}?session=s9&tab=t{i}")))
        .collect();
    let _stranger = node.ws("/ws/c0?session=s8&tab=t0");
    let resp = admin(&node, "POST", "/send/s9", &[], &[1, 2, 3]);
    assert_eq!(resp.text(), "{\"session\":\"s9\",\"connections\":5}");
    for t in &mut tabs {
        assert_eq!(t.recv(), Msg::Binary(vec![1, 2, 3]));
    }
}

#[test]
fn client_publish_when_enabled_and_ignored_otherwise() {
    let node = Node::start(&["--shards", "2", "--client-publish"]);
    let mut subs = subscribers_on_both_shards(&node, "room");
    subs[0].send(OpCode::Text, b"from a client");
    for s in &mut subs {
        assert_eq!(s.recv(), Msg::Text("from a client".into()));
    }
    drop(node);

    let node = Node::start(&["--shards", "1"]);
    let mut a = node.ws("/ws/room");
    let mut b = node.ws("/ws/room");
    a.send(OpCode::Text, b"ignored");
    wait_metric(
        &node,
        "ringpush_client_messages_ignored_total{shard=\"0\"}",
        1,
    );
    assert_eq!(publish(&node, "room", "text/plain", b"admin").status, 200);
    assert_eq!(a.recv(), Msg::Text("admin".into()));
    assert_eq!(b.recv(), Msg::Text("admin".into()));
}

#[test]
fn a_closed_subscriber_is_unsubscribed() {
    let node = Node::start(&["--shards", "2"]);
    let mut subs: Vec<Client> = (0..3).map(|_| node.ws("/ws/u")).collect();
    assert_eq!(
        counted(&publish(&node, "u", "text/plain", b"1").text()),
        "{\"channel\":\"u\",\"subscribers\":3}"
    );
    let mut gone = subs.pop().unwrap();
    assert_eq!(gone.recv(), Msg::Text("1".into()));
    gone.close(1000, "");
    gone.expect_close(1000);
    assert_eq!(
        counted(&publish(&node, "u", "text/plain", b"2").text()),
        "{\"channel\":\"u\",\"subscribers\":2}"
    );
    // A subscriber that vanishes without a close frame is unsubscribed too.
    drop(subs.pop());
    let deadline = Instant::now() + util::WAIT;
    while counted(&publish(&node, "u", "text/plain", b"3").text())
        != "{\"channel\":\"u\",\"subscribers\":1}"
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn slow_consumer_run(policy: &str) -> (Node, Client, Client) {
    let node = Node::start(&[
        "--shards",
        "1",
        "--max-pending",
        "256KiB",
        "--slow-consumer",
        policy,
    ]);
    let mut reader = node.ws("/ws/feed");
    let sleeper = node.ws("/ws/feed");
    let rss_before = rss_kib(node.child.id());
    let payload = vec![b'z'; 32 * 1024];
    // 24 MiB in all: far more than the kernel's socket buffers absorb for the sleeper. The
    // publisher stays at most 4 messages ahead of the reader, so the reader is never slow.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = std::sync::Arc::clone(&progress);
    let reader_thread = std::thread::spawn(move || {
        for i in 0..768u32 {
            match reader.recv() {
                Msg::Binary(p) => {
                    assert_eq!(p.len(), 32 * 1024);
                    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), i, "order");
                }
                other => panic!("{other:?}"),
            }
            seen.store(i + 1, std::sync::atomic::Ordering::Release);
        }
        reader
    });
    for i in 0..768u32 {
        while i > progress.load(std::sync::atomic::Ordering::Acquire) + 4 {
            assert!(!reader_thread.is_finished(), "reader stopped early");
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut body = payload.clone();
        body[..4].copy_from_slice(&i.to_be_bytes());
        assert_eq!(
            publish(&node, "feed", "application/octet-stream", &body).status,
            200
        );
    }
    let reader = reader_thread.join().unwrap();
    let grown = rss_kib(node.child.id()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "node RSS grew by {grown} KiB");
    (node, reader, sleeper)
}

#[test]
fn a_subscriber_that_never_reads_is_closed_and_others_get_everything() {
    let (node, _reader, mut sleeper) = slow_consumer_run("close");
    metric_at_least(&node, "ringpush_slow_consumer_closes_total{shard=\"0\"}", 1);
    // The sleeper wakes up: it finds what the kernel buffered, then close 1008.
    loop {
        match sleeper.recv() {
            Msg::Binary(_) => continue,
            Msg::Close(code, reason) => {
                assert_eq!(code, Some(1008));
                assert_eq!(reason, "slow consumer");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn drop_policy_keeps_the_slow_subscriber_and_counts_drops() {
    let (node, _reader, mut sleeper) = slow_consumer_run("drop");
    metric_at_least(&node, "ringpush_drops_total{shard=\"0\"}", 1);
    // Every publish was answered, so the count is final once a tick has published it.
    std::thread::sleep(Duration::from_millis(200));
    let drops = metric(&node, "ringpush_drops_total{shard=\"0\"}");
    assert_eq!(
        metric(&node, "ringpush_slow_consumer_closes_total{shard=\"0\"}"),
        0
    );
    // Still subscribed: after draining what it missed it receives new messages in order.
    let mut last = None;
    let mut received = 0u64;
    while received + drops < 768 {
        match sleeper.recv() {
            Msg::Binary(p) => {
                let seq = u32::from_be_bytes(p[..4].try_into().unwrap());
                assert!(last.is_none_or(|l| seq > l), "out of order");
                last = Some(seq);
                received += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received + drops, 768);
}

#[test]
fn metrics_are_valid_prometheus_text_and_move() {
    let node = Node::start(&["--shards", "2"]);
    let resp = admin(&node, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    assert!(
        resp.head.contains("text/plain; version=0.0.4"),
        "{}",
        resp.head
    );
    let text = resp.text();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("ringpush_"), "{line}");
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(family),
            "sample before its TYPE: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
    }
    let before = metric(&node, "ringpush_publishes_total{shard=\"admin\"}");
    let mut s = node.ws("/ws/m");
    publish(&node, "m", "text/plain", b"x");
    assert_eq!(s.recv(), Msg::Text("x".into()));
    wait_metric(
        &node,
        "ringpush_publishes_total{shard=\"admin\"}",
        before + 1,
    );
    std::thread::sleep(Duration::from_millis(200));
    let upgraded = metric(&node, "ringpush_connections_upgraded_total{shard=\"0\"}")
        + metric(&node, "ringpush_connections_upgraded_total{shard=\"1\"}");
    assert_eq!(upgraded, 1);
    // Fan-out latency is recorded when the last local send completes.
    let deadline = Instant::now() + util::WAIT;
    while metric(&node, "ringpush_fanout_latency_seconds_count") == 0 {
        assert!(Instant::now() < deadline, "fan-out latency never recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_way_of_leaving_frees_the_connection() {
    let node = Node::start(&["--shards", "2", "--handshake-timeout", "300ms"]);
    let open = |node: &Node| {
        metric(node, "ringpush_connections_open{shard=\"0\"}")
            + metric(node, "ringpush_connections_open{shard=\"1\"}")
    };
    let mut clean: Vec<Client> = (0..10)
        .map(|i| node.ws(&format!("/ws/l{}", i % 3)))
        .collect();
    let abrupt: Vec<Client> = (0..10).map(|_| node.ws("/ws/l0?session=x&tab=y")).collect();
    let mut broken: Vec<Client> = (0..10).map(|_| node.ws("/echo")).collect();
    let stalled: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(node.addr).unwrap();
            std::io::Write::write_all(&mut s, b"GET /echo HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    for _ in 0..10 {
        let _ = util::http_raw(node.addr, &util::upgrade_request("/nowhere", ""));
    }
    // All 40 are held (the 10 refused ones are gone) before anyone leaves.
    let deadline = Instant::now() + util::WAIT;
    while open(&node) != 40 {
        assert!(Instant::now() < deadline, "open = {}, want 40", open(&node));
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &mut clean {
        c.close(1000, "");
    }
    for c in &mut clean {
        c.expect_close(1000);
    }
    drop(abrupt);
    for c in &mut broken {
        c.send_raw(&[0x81, 0x01, b'x']);
        c.expect_close(1002);
    }
    drop(stalled);
    // Clients that saw the server's FIN close their side, as browsers do.
    drop(clean);
    drop(broken);
    let deadline = Instant::now() + util::WAIT;
    while open(&node) != 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections never freed",
            open(&node)
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(metric(&node, "ringpush_subscriptions{shard=\"0\"}"), 0);
    assert_eq!(metric(&node, "ringpush_subscriptions{shard=\"1\"}"), 0);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    use std::io::{Read, Write};
    let node = Node::start(&["--shards", "1"]);
    let mut sub = node.ws("/ws/big");
    let body = vec![b'b'; 5000];
    let mut s = std::net::TcpStream::connect(node.admin).unwrap();
    s.set_read_timeout(Some(util::WAIT)).unwrap();
    let head = format!(
        "POST /publish/big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(&body).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let resp = util::parse_response(&rest);
    assert_eq!(resp.status, 200);
    assert_eq!(sub.recv(), Msg::Binary(body));
}

/// Splits a stream of HTTP/1.1 responses (each with Content-Length) into (status, body).
fn responses(mut raw: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).to_string();
        out.push((status, body));
        raw = &raw[end + 4 + len..];
    }
    out
}

#[test]
fn pipelined_admin_requests_are_answered_in_order() {
    let node = Node::start(&["--shards", "2"]);
    let mut subs: Vec<Client> = (0..4).map(|_| node.ws("/ws/p")).collect();
    let mut batch = Vec::new();
    for i in 0..20 {
        let body = format!("m{i}");
        batch.extend_from_slice(
            format!(
                "POST /publish/p HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i == 10 {
            batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        }
    }
    batch.extend_from_slice(b"POST /publish/nobody HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n");
    batch.extend_from_slice(b"Connection: close\r\n\r\nx");
    let raw = util::http_raw_bytes(node.admin, &batch);
    let got = responses(&raw);
    assert_eq!(got.len(), 22, "{got:?}");
    for (i, (status, body)) in got.iter().enumerate() {
        assert_eq!(*status, 200, "response {i}: {body}");
        let want = match i {
            11 => "ok\n",
            21 => "{\"channel\":\"nobody\",\"subscribers\":0}",
            _ => "{\"channel\":\"p\",\"subscribers\":4}",
        };
        let body = if i == 11 { body.clone() } else { counted(body) };
        assert_eq!(body, want, "response {i}");
    }
    for s in &mut subs {
        for i in 0..20 {
            assert_eq!(s.recv(), Msg::Text(format!("m{i}")));
        }
    }
    // A refusal in the middle comes after the answers before it, then the connection ends.
    let mut batch = b"POST /publish/p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx".to_vec();
    batch.extend_from_slice(b"BREW /pot HTTP/1.1\r\n\r\n");
    batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    let got = responses(&util::http_raw_bytes(node.admin, &batch));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0, counted(&got[0].1)),
        (200, "{\"channel\":\"p\",\"subscribers\":4}".to_string())
    );
    assert_eq!(got[1].0, 400);
}
