//! Issue 11, black-box, the parts not wired into the node yet: per-address admission,
//! per-connection rate limits and trusted proxies. Run with
//! `cargo test --release --test auth_pending` (kept out of the default run by `test = false`
//! in Cargo.toml until they are wired); `tests/auth.rs` holds the wired parts' tests. The
//! flags, labels and close codes are the ones `SECURITY.md` documents.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use ringpush::ws::OpCode;
use util::auth::{
    header, raw_head, refused, start_listening, start_listening_with_env, upgrade,
    upgrade_eventually,
};
use util::{metric_at_least, Client, Msg, Node};

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
