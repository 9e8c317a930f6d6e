//! Issue 11, black-box: per-address admission (`--max-conns-per-ip`,
//! `--connect-rate-per-ip`), trusted proxies (PROXY v1/v2, `X-Forwarded-For`) and the
//! per-connection rate limits (`--max-control-rate`, `--max-message-rate`); `tests/auth.rs`
//! holds the connection tokens. The flags, labels and close codes are the ones
//! `SECURITY.md` documents.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use ringpush::ws::OpCode;
use util::auth::{
    header, raw_head, refused, start_listening, start_listening_with_env, upgrade,
    upgrade_eventually,
};
use util::{http_raw, metric_at_least, Client, Msg, Node};

#[test]
fn issue_11_per_ip_cap_from_one_address_while_another_connects() {
    // A dual-stack listener: 127.0.0.1 and ::1 are two loopback client addresses.
    let node = start_listening("[::]:0", &["--max-conns-per-ip", "3"]);
    let v4 = SocketAddr::from(([127, 0, 0, 1], node.addr.port()));
    let v6: SocketAddr = format!("[::1]:{}", node.addr.port()).parse().unwrap();
    let mut held: Vec<Client> = (0..3).map(|_| upgrade(v4, "/echo", &[]).unwrap()).collect();
    let (status, head) = refused(v4, "/echo", &[]);
    assert_eq!(status, 429, "{head}");
    assert!(header(&head, "Retry-After").is_some(), "{head}");
    let mut other = upgrade(v6, "/echo", &[]).expect("another address is not limited");
    other.send(OpCode::Text, b"served");
    assert_eq!(other.recv(), Msg::Text("served".into()));
    // A closed connection frees its slot.
    let mut gone = held.pop().unwrap();
    gone.close(1000, "");
    let _ = gone.try_recv();
    held.push(upgrade_eventually(v4, "/echo"));
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"too_many_per_ip\"}",
        1,
    );
}

#[test]
fn issue_11_per_ip_connect_rate_from_one_address_while_another_connects() {
    let node = start_listening(
        "[::]:0",
        &["--connect-rate-per-ip", "2", "--connect-burst-per-ip", "2"],
    );
    let v4 = SocketAddr::from(([127, 0, 0, 1], node.addr.port()));
    let v6: SocketAddr = format!("[::1]:{}", node.addr.port()).parse().unwrap();
    let _first: Vec<Client> = (0..2).map(|_| upgrade(v4, "/echo", &[]).unwrap()).collect();
    let (status, head) = refused(v4, "/echo", &[]);
    assert_eq!(status, 429, "{head}");
    assert_eq!(header(&head, "Retry-After"), Some("1"), "{head}");
    upgrade(v6, "/echo", &[]).expect("another address is not limited");
    std::thread::sleep(Duration::from_millis(1100));
    upgrade(v4, "/echo", &[]).expect("the bucket refilled");
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"connect_rate_per_ip\"}",
        1,
    );
}

#[test]
fn issue_11_a_trusted_proxy_names_the_client_and_an_untrusted_one_does_not() {
    let node = start_listening_with_env(
        "127.0.0.1:0",
        &["--max-conns-per-ip", "1", "--trusted-proxy", "127.0.0.1/32"],
        &[],
    );
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let _a = upgrade(node.addr, "/echo", &xff("6.6.6.6, 198.51.100.1")).unwrap();
    let (status, head) = refused(node.addr, "/echo", &xff("198.51.100.1"));
    assert_eq!(status, 429, "the same client behind the proxy: {head}");
    let _b = upgrade(node.addr, "/echo", &xff("198.51.100.2")).unwrap();
    // A PROXY v1 header from the trusted peer names a third client.
    let mut request = b"PROXY TCP4 198.51.100.3 127.0.0.1 40000 443\r\n".to_vec();
    request.extend_from_slice(&util::upgrade_request("/echo", ""));
    let answer = raw_head(node.addr, &request);
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");

    // Without --trusted-proxy the header is ignored: both count as 127.0.0.1.
    let plain = Node::start(&["--max-conns-per-ip", "1"]);
    let _c = upgrade(plain.addr, "/echo", &xff("198.51.100.1")).unwrap();
    let (status, head) = refused(plain.addr, "/echo", &xff("198.51.100.2"));
    assert_eq!(status, 429, "{head}");
}

#[test]
fn issue_11_a_control_frame_flood_is_closed_1008_while_others_are_served() {
    let node = Node::start(&["--max-control-rate", "20"]);
    let mut flooder = node.ws("/echo");
    let mut other = node.ws("/echo");
    for _ in 0..200 {
        flooder.send(OpCode::Ping, b"x");
    }
    loop {
        match flooder.recv() {
            Msg::Pong(_) => continue,
            Msg::Close(code, _) => {
                assert_eq!(code, Some(1008));
                break;
            }
            other => panic!("expected pongs then close 1008, got {other:?}"),
        }
    }
    flooder.expect_eof();
    other.send(OpCode::Text, b"still served");
    assert_eq!(other.recv(), Msg::Text("still served".into()));
    metric_at_least(
        &node,
        "ringpush_connections_closed_total{reason=\"control_rate\"}",
        1,
    );
}

/// Whether a new connection from 127.0.0.1 is refused 429 now: the address's one slot is
/// held by `holder`.
fn slot_held(addr: SocketAddr, holder: &str) {
    let (status, head) = refused(addr, "/echo", &[]);
    assert_eq!(
        status, 429,
        "{holder} should hold the address's slot: {head}"
    );
}

/// Ends `client` with a reset: closing a socket whose received bytes were never read
/// makes the kernel send RST instead of FIN, so the node sees ECONNRESET.
fn reset(mut client: Client) {
    client.send(OpCode::Text, b"an echo nobody reads");
    std::thread::sleep(Duration::from_millis(100));
    drop(client);
}

#[test]
fn issue_11_the_address_slot_is_released_however_the_connection_ends() {
    // One shard, so connections are accepted in the order they connect.
    let node = Node::start(&[
        "--shards",
        "1",
        "--max-conns-per-ip",
        "1",
        "--handshake-timeout",
        "300ms",
    ]);
    let addr = node.addr;

    // A close handshake.
    let mut client = upgrade(addr, "/echo", &[]).unwrap();
    slot_held(addr, "an open connection");
    client.close(1000, "");
    assert!(matches!(client.recv(), Msg::Close(Some(1000), _)));

    // A reset.
    let client = upgrade_eventually(addr, "/echo");
    slot_held(addr, "the connection after a close");
    reset(client);

    // The peer vanishing without a close frame (FIN).
    let client = upgrade_eventually(addr, "/echo");
    slot_held(addr, "the connection after a reset");
    drop(client);

    // A handshake that never comes: dropped at --handshake-timeout.
    let silent = loop {
        let silent = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Until the dropped connection's slot is back, this one is refused at once.
        let mut probe = [0u8; 1];
        silent.set_nonblocking(true).unwrap();
        match std::io::Read::read(&mut &silent, &mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break silent,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    slot_held(addr, "a connection still in its handshake");
    let mut client = upgrade_eventually(addr, "/echo");
    drop(silent);

    // A protocol error (an unmasked frame): close 1002.
    client.send_raw(&[0x81, 0x01, b'x']);
    assert!(matches!(client.recv(), Msg::Close(Some(1002), _)));
    client.expect_eof();

    // A refused handshake (404) holds the slot only until its answer.
    let mut stray = upgrade_eventually(addr, "/echo");
    stray.close(1000, "");
    let _ = stray.try_recv();
    let (status, _) = loop {
        match upgrade(addr, "/nowhere", &[]) {
            Err((429, _)) => std::thread::sleep(Duration::from_millis(50)),
            Err(refusal) => break refusal,
            Ok(_) => panic!("/nowhere was upgraded"),
        }
    };
    assert_eq!(status, 404);

    // After every way of ending, exactly one connection fits again, and only one.
    let mut last = upgrade_eventually(addr, "/echo");
    slot_held(addr, "the last connection");
    last.send(OpCode::Text, b"served");
    assert_eq!(last.recv(), Msg::Text("served".into()));
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"too_many_per_ip\"}",
        5,
    );
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) naming `source` as the client.
fn proxy_v2(source: [u8; 4], version_command: u8) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[version_command, 0x11, 0, 12]);
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    header
}

/// Sends `request` and reads the answer's head, keeping the connection open (a 101 holds
/// its address's slot for as long as the stream lives).
fn held_upgrade(addr: SocketAddr, request: &[u8]) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn issue_11_a_proxy_v2_header_from_an_untrusted_peer_is_refused_400() {
    // 127.0.0.1 is not inside the trusted range here: its PROXY header is not believed.
    let node = Node::start(&["--trusted-proxy", "10.0.0.0/8", "--max-conns-per-ip", "4"]);
    let mut request = proxy_v2([198, 51, 100, 7], 0x21);
    request.extend_from_slice(&util::upgrade_request("/echo", ""));
    let answer = http_raw(node.addr, &request);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("PROXY protocol header from an untrusted peer"),
        "{answer}"
    );
    node.expect_log("reason=proxy_header_untrusted");
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"proxy_header_untrusted\"}",
        1,
    );
    // The same peer without a header is served.
    upgrade(node.addr, "/echo", &[]).expect("a plain upgrade from the same peer");

    // From a trusted peer the header names the client, which the per-address cap counts.
    let trusting = Node::start(&["--trusted-proxy", "127.0.0.1", "--max-conns-per-ip", "1"]);
    let mut request = proxy_v2([198, 51, 100, 8], 0x21);
    request.extend_from_slice(&util::upgrade_request("/echo", ""));
    let (_first, head) = held_upgrade(trusting.addr, &request);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let second = http_raw(trusting.addr, &request);
    assert!(
        second.starts_with("HTTP/1.1 429"),
        "the same proxied client: {second}"
    );
    let mut other = proxy_v2([198, 51, 100, 9], 0x21);
    other.extend_from_slice(&util::upgrade_request("/echo", ""));
    let (_other, head) = held_upgrade(trusting.addr, &other);
    assert!(head.starts_with("HTTP/1.1 101"), "another client: {head}");
    // A trusted peer's broken header (version 3) is refused, naming the rule.
    let mut broken = proxy_v2([198, 51, 100, 10], 0x31);
    broken.extend_from_slice(&util::upgrade_request("/echo", ""));
    let answer = http_raw(trusting.addr, &broken);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("v2 version"), "{answer}");
    trusting.expect_log("proxy_error=v2_version");
}

#[test]
fn issue_11_a_message_flood_is_closed_1008_while_others_are_served() {
    let node = Node::start(&["--max-message-rate", "10"]);
    let mut flooder = node.ws("/echo");
    let mut other = node.ws("/echo");
    for _ in 0..100 {
        flooder.send(OpCode::Text, b"x");
    }
    let mut echoes = 0;
    loop {
        match flooder.recv() {
            Msg::Text(_) => echoes += 1,
            Msg::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (Some(1008), "message rate"));
                break;
            }
            other => panic!("expected echoes then close 1008, got {other:?}"),
        }
    }
    // A second boundary may fall inside the burst: at most two windows' worth got through.
    assert!(
        (10..=20).contains(&echoes),
        "{echoes} echoes before the close"
    );
    flooder.expect_eof();
    other.send(OpCode::Text, b"still served");
    assert_eq!(other.recv(), Msg::Text("still served".into()));
    metric_at_least(
        &node,
        "ringpush_connections_closed_total{reason=\"message_rate\"}",
        1,
    );
}
