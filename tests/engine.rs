//! The engine end to end: the real binary, real sockets, the crate's client codec.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringpush::ws::OpCode;
use util::{http_raw, upgrade_request, Client, Msg, Node};

#[test]
fn echo_text_binary_fragmented_and_large() {
    let node = Node::start(&["--shards", "2"]);
    let mut c = node.ws("/echo");
    c.send(OpCode::Text, "héllo".as_bytes());
    assert_eq!(c.recv(), Msg::Text("héllo".into()));
    c.send(OpCode::Binary, &[0, 1, 2, 255]);
    assert_eq!(c.recv(), Msg::Binary(vec![0, 1, 2, 255]));
    // A message in three fragments with a ping between them.
    let mut frames = Vec::new();
    let mut hdr = [0u8; 14];
    for (fin, op, part) in [
        (false, OpCode::Text, &b"frag"[..]),
        (false, OpCode::Continuation, b"men"),
    ] {
        let n = ringpush::ws::frame::encode_header(&mut hdr, fin, op, part.len(), Some([0; 4]));
        frames.extend_from_slice(&hdr[..n]);
        frames.extend_from_slice(part);
    }
    c.send_raw(&frames);
    c.send(OpCode::Ping, b"mid");
    let n =
        ringpush::ws::frame::encode_header(&mut hdr, true, OpCode::Continuation, 3, Some([0; 4]));
    c.send_raw(&hdr[..n]);
    c.send_raw(b"ted");
    assert_eq!(c.recv(), Msg::Pong(b"mid".to_vec()));
    assert_eq!(c.recv(), Msg::Text("fragmented".into()));
    // 200 KiB spans many receive buffers and many sends.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    c.send(OpCode::Binary, &big);
    assert_eq!(c.recv(), Msg::Binary(big));
}

#[test]
fn many_frames_in_one_write_are_all_answered_in_order() {
    let node = Node::start(&["--shards", "1"]);
    let mut c = node.ws("/echo");
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend_from_slice(&ringpush::ws::frame::encode_masked(
            OpCode::Text,
            format!("m{i}").as_bytes(),
            [9, 8, 7, 6],
        ));
    }
    c.send_raw(&batch);
    for i in 0..500 {
        assert_eq!(c.recv(), Msg::Text(format!("m{i}")));
    }
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    let node = Node::start(&[]);
    let mut c = node.ws("/echo");
    c.send(OpCode::Ping, b"are you there");
    assert_eq!(c.recv(), Msg::Pong(b"are you there".to_vec()));
    c.send(OpCode::Ping, b"");
    assert_eq!(c.recv(), Msg::Pong(vec![]));
}

#[test]
fn close_handshake_echoes_the_code_then_the_server_closes_tcp() {
    let node = Node::start(&[]);
    let mut c = node.ws("/echo");
    c.close(1000, "bye");
    c.expect_close(1000);
    let mut c = node.ws("/echo");
    c.close(4321, "");
    c.expect_close(4321);
}

#[test]
fn oversized_message_gets_1009_from_the_header_alone() {
    let node = Node::start(&["--max-message", "1KiB"]);
    let mut c = node.ws("/echo");
    c.send(OpCode::Binary, &[7u8; 1024]);
    assert_eq!(c.recv(), Msg::Binary(vec![7u8; 1024]));
    // Only the header of a 1 GiB frame: the node refuses before reading the payload.
    let mut hdr = [0u8; 14];
    let n = ringpush::ws::frame::encode_header(
        &mut hdr,
        true,
        OpCode::Binary,
        1 << 30,
        Some([1, 2, 3, 4]),
    );
    c.send_raw(&hdr[..n]);
    c.expect_close(1009);
    // Fragments that add up past the cap are refused too.
    let mut c = node.ws("/echo");
    c.send_raw(&frame_parts(false, OpCode::Binary, &[0; 600]));
    c.send_raw(&frame_parts(true, OpCode::Continuation, &[0; 600]));
    c.expect_close(1009);
}

fn frame_parts(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut hdr = [0u8; 14];
    let n = ringpush::ws::frame::encode_header(&mut hdr, fin, op, payload.len(), Some([0; 4]));
    let mut v = hdr[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn protocol_errors_get_their_close_codes_and_the_node_keeps_serving() {
    let node = Node::start(&["--shards", "2"]);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Unmasked client frame.
        (vec![0x81, 0x02, b'h', b'i'], 1002),
        // RSV1 set without an extension.
        (vec![0xC1, 0x80, 0, 0, 0, 0], 1002),
        // Unknown opcode 3.
        (vec![0x83, 0x80, 0, 0, 0, 0], 1002),
        // Fragmented ping.
        (vec![0x09, 0x80, 0, 0, 0, 0], 1002),
        // Continuation with nothing to continue.
        (vec![0x80, 0x80, 0, 0, 0, 0], 1002),
        // Invalid UTF-8 in a text frame.
        (frame_parts(true, OpCode::Text, &[0xce, 0xba, 0xff]), 1007),
        // Close frame with a 1-byte payload.
        (frame_parts(true, OpCode::Close, &[3]), 1002),
        // Close code 1005 on the wire.
        (frame_parts(true, OpCode::Close, &[0x03, 0xed]), 1002),
        // Close reason that is not UTF-8.
        (frame_parts(true, OpCode::Close, &[0x03, 0xe8, 0xff]), 1007),
    ];
    for (bytes, code) in cases {
        let mut c = node.ws("/echo");
        c.send_raw(&bytes);
        c.expect_close(code);
    }
    let mut c = node.ws("/echo");
    c.send(OpCode::Text, b"still here");
    assert_eq!(c.recv(), Msg::Text("still here".into()));
    node.expect_log("event=protocol_error");
}

#[test]
fn handshake_refusals_have_status_headers_and_close() {
    let node = Node::start(&[
        "--allow-origin",
        "https://good.example",
        "--max-header-bytes",
        "2KiB",
    ]);
    let ok_origin = "Origin: https://good.example\r\n";
    let check = |req: Vec<u8>, status: &str| {
        let resp = http_raw(node.addr, &req);
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "want {status}, got {resp:?}"
        );
        assert!(resp.contains("Content-Length: "), "{resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{resp}"
        );
        resp
    };
    check(upgrade_request("/nope", ok_origin), "404");
    let post = String::from_utf8(upgrade_request("/echo", ok_origin))
        .unwrap()
        .replacen("GET", "POST", 1);
    check(post.into_bytes(), "405");
    let v8 = String::from_utf8(upgrade_request("/echo", ok_origin))
        .unwrap()
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let resp = check(v8.into_bytes(), "426");
    assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");
    let badkey = String::from_utf8(upgrade_request("/echo", ok_origin))
        .unwrap()
        .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    check(badkey.into_bytes(), "400");
    let noupgrade = String::from_utf8(upgrade_request("/echo", ok_origin))
        .unwrap()
        .replace("Upgrade: websocket\r\n", "");
    check(noupgrade.into_bytes(), "400");
    let nohost = String::from_utf8(upgrade_request("/echo", ok_origin))
        .unwrap()
        .replace("Host: localhost\r\n", "");
    check(nohost.into_bytes(), "400");
    check(
        upgrade_request("/echo", "Origin: https://evil.example\r\n"),
        "403",
    );
    let huge = format!("{ok_origin}X-Filler: {}\r\n", "a".repeat(4096));
    check(upgrade_request("/echo", &huge), "431");
    // And the node still upgrades a good request.
    let resp = {
        let mut s = TcpStream::connect(node.addr).unwrap();
        s.set_read_timeout(Some(util::WAIT)).unwrap();
        s.write_all(&upgrade_request("/echo", ok_origin)).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{resp}"
    );
    node.expect_log("event=handshake_refused");
}

#[test]
fn subprotocol_and_extensions_are_negotiated_strictly() {
    let node = Node::start(&["--subprotocol", "chat.v2", "--subprotocol", "chat.v1"]);
    let c = Client::connect(
        node.addr,
        "/echo",
        &[
            ("Sec-WebSocket-Protocol", "mqtt, chat.v1, chat.v2"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ],
    )
    .unwrap();
    assert!(
        c.head.contains("Sec-WebSocket-Protocol: chat.v1\r\n"),
        "{}",
        c.head
    );
    assert!(
        !c.head.to_ascii_lowercase().contains("extensions"),
        "{}",
        c.head
    );
    let c = Client::connect(node.addr, "/echo", &[("Sec-WebSocket-Protocol", "mqtt")]).unwrap();
    assert!(!c.head.contains("Sec-WebSocket-Protocol"), "{}", c.head);
}

#[test]
fn pipelined_frames_after_the_request_are_not_lost() {
    let node = Node::start(&[]);
    let mut req = upgrade_request("/echo", "");
    req.extend_from_slice(&ringpush::ws::frame::encode_masked(
        OpCode::Text,
        b"early",
        [5, 6, 7, 8],
    ));
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(util::WAIT)).unwrap();
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"early") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "eof before the echo: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
}

#[test]
fn slowloris_is_dropped_at_the_handshake_deadline() {
    let node = Node::start(&["--handshake-timeout", "500ms"]);
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(util::WAIT)).unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the node to drop us");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Others are served meanwhile.
    let mut c = node.ws("/echo");
    c.send(OpCode::Text, b"ok");
    assert_eq!(c.recv(), Msg::Text("ok".into()));
    node.expect_log("event=handshake_timeout");
}

#[test]
fn silent_client_is_pinged_then_closed_and_a_live_one_is_kept() {
    let node = Node::start(&["--ping-interval", "300ms", "--idle-timeout", "900ms"]);
    let mut silent = node.ws("/echo");
    let mut live = node.ws("/echo");
    let started = Instant::now();
    match silent.recv() {
        Msg::Ping(p) => assert_eq!(p.len(), 8),
        other => panic!("expected a ping, got {other:?}"),
    }
    // The live client answers every ping; it must survive well past the idle timeout.
    let keep = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(2000);
        let mut pings = 0;
        while Instant::now() < until {
            match live.recv() {
                Msg::Ping(p) => {
                    live.send(OpCode::Pong, &p);
                    pings += 1;
                }
                other => panic!("live client got {other:?}"),
            }
        }
        live.send(OpCode::Text, b"alive");
        loop {
            match live.recv() {
                Msg::Ping(p) => live.send(OpCode::Pong, &p),
                m => {
                    assert_eq!(m, Msg::Text("alive".into()));
                    break;
                }
            }
        }
        pings
    });
    silent.expect_close(1001);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    assert!(keep.join().unwrap() >= 2);
}

#[test]
fn shutdown_sends_1001_to_every_client_and_exits_0() {
    let mut node = Node::start(&["--shards", "2", "--drain-timeout", "5s"]);
    let mut clients: Vec<Client> = (0..8).map(|_| node.ws("/echo")).collect();
    for c in &mut clients {
        c.send(OpCode::Text, b"x");
        assert_eq!(c.recv(), Msg::Text("x".into()));
    }
    node.signal(15);
    for c in &mut clients {
        match c.recv() {
            Msg::Close(code, _) => assert_eq!(code, Some(1001)),
            other => panic!("expected close 1001, got {other:?}"),
        }
        c.close(1001, "");
        c.expect_eof();
    }
    let (code, out) = node.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("final "), "{out}");
    assert!(out.contains("closes_sent=1001:8"), "{out}");
    assert!(out.contains("# handshake time (ms), 8 samples"), "{out}");
}

#[test]
fn connections_past_max_conns_are_refused_fast() {
    let node = Node::start(&["--shards", "1", "--max-conns", "2"]);
    let _a = node.ws("/echo");
    let _b = node.ws("/echo");
    let started = Instant::now();
    let resp = http_raw(node.addr, &upgrade_request("/echo", ""));
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 503"),
        "{resp}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    node.expect_log("reason=at_capacity");
}

#[test]
fn a_client_that_never_reads_is_closed_with_1008_past_max_pending() {
    let node = Node::start(&["--max-pending", "256KiB"]);
    let mut c = node.ws("/echo");
    c.stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Send 32 MiB of echo requests without reading: the replies pile up in the node.
    let payload = vec![b'a'; 64 * 1024];
    let frame = ringpush::ws::frame::encode_masked(OpCode::Binary, &payload, [1, 1, 1, 1]);
    for _ in 0..512 {
        if c.stream.write_all(&frame).is_err() {
            break;
        }
    }
    let mut echoes = 0;
    loop {
        match c.recv() {
            Msg::Binary(p) => {
                assert_eq!(p.len(), payload.len());
                echoes += 1;
            }
            Msg::Close(code, reason) => {
                assert_eq!(code, Some(1008));
                assert_eq!(reason, "slow consumer");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(echoes < 512, "the node queued everything: {echoes}");
    node.expect_log("event=slow_consumer");
}

#[test]
fn a_starved_buffer_ring_loses_no_data() {
    // Two 4 KiB receive buffers for 40 clients sending 64 KiB each at once: receives end
    // with ENOBUFS and are re-armed a few at a time; every byte must still arrive in order.
    let mut node = Node::start(&[
        "--shards",
        "1",
        "--recv-buffers",
        "2",
        "--recv-buffer-bytes",
        "4KiB",
    ]);
    let mut clients: Vec<Client> = (0..40).map(|_| node.ws("/echo")).collect();
    let payloads: Vec<Vec<u8>> = (0..40u32)
        .map(|i| (0..64 * 1024u32).map(|j| (i * 7 + j) as u8).collect())
        .collect();
    for (c, p) in clients.iter_mut().zip(&payloads) {
        c.send(OpCode::Binary, p);
    }
    for (c, p) in clients.iter_mut().zip(&payloads) {
        assert_eq!(c.recv(), Msg::Binary(p.clone()));
    }
    // The starvation really happened (else this test would prove nothing).
    drop(clients);
    node.signal(2);
    let (code, out) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 0);
    let enobufs: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("enobufs="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no enobufs figure in {out}"));
    assert!(enobufs > 0, "the buffer ring never ran dry: {out}");
}

#[test]
fn a_refused_ring_setup_is_a_clear_error_not_a_panic() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--sq-entries",
            "100000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("io_uring setup") && err.contains("--sq-entries"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
