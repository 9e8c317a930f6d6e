//! Helpers for the token and admission tests (`tests/auth.rs`): fixture keys, signed tokens,
//! upgrades that report their refusal status, and a node on a listen address of the test's
//! choice (a dual-stack `[::]` listener gives two loopback client addresses).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::{admin, spawn_node, Client, Node, WAIT};

/// The path of a key fixture (`tests/fixtures/keys/<name>`).
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("key fixture")
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `sub` allowed `channels`, expiring `exp_in_s` seconds from now.
pub fn claims(sub: &str, channels: &[&str], exp_in_s: i64) -> Value {
    json!({
        "sub": sub,
        "channels": channels,
        "iat": now_s(),
        "exp": now_s().saturating_add_signed(exp_in_s),
    })
}

/// Who signs a test token.
pub enum Signer<'a> {
    /// HS256 with the secret of this fixture (trailing newline stripped, as the node reads it).
    Hs(&'a str),
    /// HS256 with these exact bytes as the secret.
    HsBytes(Vec<u8>),
    /// RS256 with `private/rs1.pem`.
    Rs,
    /// ES256 with `private/es1.pem`.
    Es,
}

/// A signed compact JWT.
pub fn sign(signer: &Signer<'_>, kid: Option<&str>, claims: &Value) -> String {
    let (alg, key) = match signer {
        Signer::Hs(name) => {
            let secret = read(name);
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret).to_vec();
            (Algorithm::HS256, EncodingKey::from_secret(&secret))
        }
        Signer::HsBytes(secret) => (Algorithm::HS256, EncodingKey::from_secret(secret)),
        Signer::Rs => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&read("private/rs1.pem")).unwrap(),
        ),
        Signer::Es => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("private/es1.pem")).unwrap(),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

/// An unsigned token (`alg: none`, empty signature).
pub fn none_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(claims)
    )
}

/// `token` with its claims replaced by `claims` and its signature kept: a forgery.
pub fn forge(token: &str, claims: &Value) -> String {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{body}.{}", parts[0], parts[2])
}

/// An upgrade: the client on 101, else the refusal's status and head.
pub fn upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, (u16, String)> {
    Client::connect(addr, path, headers).map_err(|head| {
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
        (status, head)
    })
}

/// The status of a refused upgrade; panics if it was accepted.
pub fn refused(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match upgrade(addr, path, headers) {
        Ok(_) => panic!("{path} was upgraded; expected a refusal"),
        Err(refusal) => refusal,
    }
}

/// Starts a node listening on `listen` (its admin on 127.0.0.1:0) and waits for its
/// listening line; the client address returned is `listen`'s port on 127.0.0.1.
pub fn start_listening(listen: &str, args: &[&str]) -> Node {
    start_listening_with_env(listen, args, &[])
}

/// As [`start_listening`], with environment variables.
pub fn start_listening_with_env(listen: &str, args: &[&str], envs: &[(&str, &str)]) -> Node {
    let child = spawn_node(
        &[&["--listen", listen, "--admin", "127.0.0.1:0"], args].concat(),
        envs,
    );
    Node::adopt(child)
}

/// Waits until an upgrade of `path` succeeds (a slot freed by a close is released when the
/// node has seen the close), or panics after [`WAIT`].
pub fn upgrade_eventually(addr: SocketAddr, path: &str) -> Client {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match upgrade(addr, path, &[]) {
            Ok(client) => return client,
            Err(refusal) => assert!(
                std::time::Instant::now() < deadline,
                "still refused: {refusal:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of header `name` in a response head, if present.
pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Sends raw bytes and returns the response head (up to the blank line), without waiting for
/// the connection to end: a 101 leaves it open.
pub fn raw_head(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A node that requires tokens and holds the HS256, RS256 and ES256 fixture keys.
pub fn required_node(extra: &[&str]) -> Node {
    let (hs1, rs1, es1) = (
        fixture("hs1.secret"),
        fixture("rs1.pem"),
        fixture("es1.pem"),
    );
    let args = [
        &["--auth", "required", "--token-key", &hs1][..],
        &["--token-key", &rs1, "--token-key", &es1],
        extra,
    ]
    .concat();
    Node::start(&args)
}

pub fn news_claims() -> serde_json::Value {
    claims("user-1", &["news", "scores.*"], 600)
}

pub fn publish(node: &Node, channel: &str, text: &str) {
    let path = format!("/publish/{channel}");
    let resp = admin(
        node,
        "POST",
        &path,
        &[("Content-Type", "text/plain")],
        text.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// Expects silence for `quiet` on a raw client.
pub fn expect_silence(client: &mut Client, quiet: Duration) {
    client.stream.set_read_timeout(Some(quiet)).unwrap();
    let got = client.try_recv();
    client.stream.set_read_timeout(Some(WAIT)).unwrap();
    match got {
        Err(error) => assert!(
            error.contains("timed out") || error.contains("temporarily unavailable"),
            "expected silence, got {error}"
        ),
        Ok(other) => panic!("expected silence, got {other:?}"),
    }
}
