//! The floor commands end to end at small scale: `floor-server` in both send modes
//! measured by the ordinary `broadcast` scenario (every message delivered once, to every
//! subscriber), and `floor-connect` against `floor-server --handshake none` (every
//! connection accepted, kernel memory reported). Two holder threads each, so clients spread
//! over more than one file table and listener.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_ringpush-loadgen");

/// Two free loopback ports (the listener and the admin API).
fn ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    );
    drop((a, b));
    ports
}

/// A floor server, stopped on drop; started once it printed its start line.
struct Floor(Child);

impl Floor {
    fn start(port: u16, admin: u16, extra: &[&str]) -> Floor {
        let mut child = Command::new(LOADGEN)
            .args(["floor-server", "--threads", "2"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting floor-server");
        let mut line = String::new();
        let stderr = child.stderr.take().expect("stderr");
        BufReader::new(stderr)
            .read_line(&mut line)
            .expect("reading its start line");
        assert!(
            line.starts_with("floor-server listen="),
            "floor-server said {line:?}"
        );
        Floor(child)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last stdout line of a loadgen run, as JSON, with its exit status asserted.
fn run_json(args: &[String]) -> Value {
    let output = Command::new(LOADGEN)
        .args(args)
        .output()
        .expect("running loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(last).expect("JSON summary")
}

#[test]
fn broadcast_through_the_floor_server_delivers_every_message_in_both_send_modes() {
    for mode in ["plain", "uring"] {
        let (port, admin) = ports();
        let _floor = Floor::start(port, admin, &["--send", mode]);
        let args: Vec<String> = [
            "broadcast",
            "--workers",
            "2",
            "--no-pin",
            "-n",
            "600",
            "--channel",
            "fan",
            "--size",
            "64",
            "--count",
            "5",
            "--msg-rate",
            "50",
            "--settle",
            "0.2s",
            "--close",
            "abort",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--addr=127.0.0.1:{port}"),
            format!("--admin=127.0.0.1:{admin}"),
        ])
        .collect();
        let json = run_json(&args);
        assert_eq!(json["missing"], 0, "{mode}: {json}");
        assert_eq!(json["errors"], 0, "{mode}: {json}");
        assert_eq!(json["deliveries_expected"], 3000, "{mode}: {json}");
        assert_eq!(json["messages_received"], 3000, "{mode}: {json}");
    }
}

#[test]
fn floor_connect_counts_every_accepted_connection_and_the_kernel_memory() {
    let (port, admin) = ports();
    let _floor = Floor::start(port, admin, &["--handshake", "none"]);
    let json = run_json(&[
        "floor-connect".into(),
        "-n".into(),
        "1500".into(),
        "--workers".into(),
        "2".into(),
        "--hold".into(),
        "100ms".into(),
        format!("--addr=127.0.0.1:{port}"),
        format!("--stats=127.0.0.1:{admin}"),
    ]);
    assert_eq!(json["connections"], 1500, "{json}");
    assert_eq!(json["accepted"], 1500, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert!(
        json["connects_per_s"].as_f64().is_some_and(|r| r > 0.0),
        "{json}"
    );
    assert!(
        json["kernel_per_pair"]["slab_bytes_per_connection"].is_number(),
        "{json}"
    );
}

#[test]
fn pipelined_publisher_gets_every_answer_and_every_message_delivered() {
    let (port, admin) = ports();
    let _floor = Floor::start(port, admin, &[]);
    let args: Vec<String> = [
        "broadcast",
        "--workers",
        "2",
        "--no-pin",
        "-n",
        "200",
        "--channel",
        "fan",
        "--size",
        "64",
        "--count",
        "300",
        "--msg-rate",
        "100000",
        "--in-flight",
        "8",
        "--settle",
        "0.2s",
        "--close",
        "abort",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--addr=127.0.0.1:{port}"),
        format!("--admin=127.0.0.1:{admin}"),
    ])
    .collect();
    let json = run_json(&args);
    assert_eq!(json["publish"]["published"], 300, "{json}");
    assert_eq!(json["publish"]["acked"], 300, "{json}");
    assert_eq!(json["publish"]["subscribers_reported"], 300 * 200, "{json}");
    assert_eq!(json["missing"], 0, "{json}");
    assert_eq!(json["messages_received"], 300 * 200, "{json}");
    assert!(
        json["publish"]["acked_per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{json}"
    );
}
