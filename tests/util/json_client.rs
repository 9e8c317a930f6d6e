//! A JSON-mode WebSocket client for the black-box tests (PROTOCOL.md): text frames of one
//! JSON object each, over the harness's blocking `Client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Client, Msg, Node, WAIT};
use ringpush::ws::OpCode;

/// A message as the JSON mode delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub channel: String,
    pub offset: u64,
    /// The payload: `data` as bytes, or `data_b64` decoded.
    pub data: Vec<u8>,
}

/// One channel's position as a `subscribed` answer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribed {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    pub recovered: bool,
}

/// A JSON-mode connection.
pub struct JsonClient {
    pub ws: Client,
    /// Whether `recv` answers `{"op":"ping"}` with `{"op":"pong"}` (and skips it).
    pub answer_pings: bool,
}

impl JsonClient {
    /// Upgrades on `/ws?format=json` plus `query` (e.g. `"&channel=a"`).
    pub fn connect(node: &Node, query: &str) -> Result<JsonClient, String> {
        JsonClient::connect_to(node.addr, query)
    }

    /// As `connect`, to a client address.
    pub fn connect_to(addr: SocketAddr, query: &str) -> Result<JsonClient, String> {
        let ws = Client::connect(addr, &format!("/ws?format=json{query}"), &[])?;
        Ok(JsonClient {
            ws,
            answer_pings: true,
        })
    }

    /// Sends one command as a text frame.
    pub fn send(&mut self, command: &Value) {
        self.ws.send(OpCode::Text, command.to_string().as_bytes());
    }

    /// Sends arbitrary text as one text frame (malformed commands).
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(OpCode::Text, text.as_bytes());
    }

    /// The next JSON object from the node; answers and skips JSON pings when
    /// `answer_pings`. Panics on anything that is not a text frame with a JSON object.
    pub fn recv(&mut self) -> Value {
        loop {
            let value = match self.ws.recv() {
                Msg::Text(text) => serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
                other => panic!("expected a JSON text frame, got {other:?}"),
            };
            assert!(value.is_object(), "not an object: {value}");
            if self.answer_pings && value["op"] == "ping" {
                self.send(&json!({"op":"pong"}));
                continue;
            }
            return value;
        }
    }

    /// The next object, which must have `op`.
    pub fn recv_op(&mut self, op: &str) -> Value {
        let value = self.recv();
        assert_eq!(value["op"], op, "expected op {op}, got {value}");
        value
    }

    /// The next object, which must be an error with `code` (and `id` when given).
    pub fn expect_error(&mut self, id: Option<u64>, code: u64) -> Value {
        let value = self.recv_op("error");
        assert_eq!(value["code"], code, "{value}");
        match id {
            Some(id) => assert_eq!(value["id"], id, "{value}"),
            None => assert!(value.get("id").is_none(), "{value}"),
        }
        assert!(value["reason"].is_string(), "{value}");
        value
    }

    /// Subscribes (with `since` = (epoch, offset) when given) and returns the answer.
    pub fn subscribe(&mut self, id: u64, channel: &str, since: Option<(&str, u64)>) -> Subscribed {
        let mut command = json!({"op":"subscribe","id":id,"channel":channel});
        if let Some((epoch, offset)) = since {
            command["since"] = json!({"epoch":epoch,"offset":offset});
        }
        self.send(&command);
        let answer = self.recv_op("subscribed");
        assert_eq!(answer["id"], id, "{answer}");
        subscribed(&answer)
    }

    /// The next object, which must be a message.
    pub fn expect_message(&mut self) -> Delivery {
        let value = self.recv();
        delivery(&value).unwrap_or_else(|| panic!("expected a message, got {value}"))
    }

    /// Expects a close frame with `code` (skipping pings of either kind), then EOF.
    pub fn expect_close(&mut self, code: u16) {
        loop {
            match self.ws.recv() {
                Msg::Close(got, _) => {
                    assert_eq!(got, Some(code), "close code");
                    break;
                }
                Msg::Ping(_) => continue,
                Msg::Text(text) if text == r#"{"op":"ping"}"# => continue,
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
        self.ws.expect_eof();
    }

    /// Asserts that nothing arrives within `quiet` (pings answered and skipped).
    pub fn expect_silence(&mut self, quiet: Duration) {
        self.ws.stream.set_read_timeout(Some(quiet)).unwrap();
        let got = self.ws.try_recv();
        self.ws.stream.set_read_timeout(Some(WAIT)).unwrap();
        match got {
            Err(error) => assert!(
                error.contains("timed out") || error.contains("temporarily unavailable"),
                "expected silence, got {error}"
            ),
            Ok(Msg::Text(text)) if text == r#"{"op":"ping"}"# && self.answer_pings => {
                self.send(&json!({"op":"pong"}));
            }
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Reads a `subscribed` answer.
pub fn subscribed(answer: &Value) -> Subscribed {
    Subscribed {
        channel: answer["channel"].as_str().expect("channel").to_string(),
        epoch: answer["epoch"].as_str().expect("epoch").to_string(),
        offset: answer["offset"].as_u64().expect("offset"),
        recovered: answer["recovered"].as_bool().expect("recovered"),
    }
}

/// Reads a message object; `None` for anything else.
pub fn delivery(value: &Value) -> Option<Delivery> {
    use base64::Engine as _;
    if value.get("op").is_some() {
        return None;
    }
    let data = match (value.get("data"), value.get("data_b64")) {
        (Some(Value::String(text)), None) => text.as_bytes().to_vec(),
        (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("data_b64 is base64"),
        _ => return None,
    };
    Some(Delivery {
        channel: value["channel"].as_str()?.to_string(),
        offset: value["offset"].as_u64()?,
        data,
    })
}

/// What an admin publish answered: `(subscribers, epoch, offset)`.
pub fn published(body: &str) -> (u64, String, u64) {
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("publish answer ({e}): {body}"));
    (
        value["subscribers"].as_u64().expect("subscribers"),
        value["epoch"].as_str().expect("epoch").to_string(),
        value["offset"].as_u64().expect("offset"),
    )
}

/// A keep-alive admin connection that publishes one request at a time.
pub struct Publisher {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Publisher {
    pub fn connect(node: &Node) -> Publisher {
        Publisher::connect_to(node.admin)
    }

    /// As `connect`, to an admin address.
    pub fn connect_to(admin: SocketAddr) -> Publisher {
        let stream = TcpStream::connect(admin).expect("connect admin");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Publisher {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Publishes `text` on `channel` and returns (status, body).
    pub fn publish(&mut self, channel: &str, text: &str) -> (u16, String) {
        let request = format!(
            "POST /publish/{channel} HTTP/1.1\r\nHost: admin\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{text}",
            text.len()
        );
        self.stream.write_all(request.as_bytes()).unwrap();
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.buffer.len() >= end + 4 + length {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("status");
                    let body = String::from_utf8_lossy(&self.buffer[end + 4..end + 4 + length])
                        .to_string();
                    self.buffer.drain(..end + 4 + length);
                    return (status, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("admin answer");
            assert!(n > 0, "admin closed the keep-alive connection");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
