//! Every scenario end to end: the real node (`<repo>/target/release/ringpush`, built here
//! if absent) and the real load generator at small scale, judged by its `--json` summary.
//!
//! Each test runs 2 workers, so connections spread over more than one file table, and
//! the node with 2 shards. The tests run in parallel on two cores, so the deadlines are
//! generous; a run takes a few seconds.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Connections per scenario.
const N: u64 = 5000;
/// How long the node may take to print its listening line.
const START_WAIT: Duration = Duration::from_secs(20);

/// Serialises the build of the node binary when it is missing.
static BUILD: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen/ sits in the repository")
        .to_path_buf()
}

/// The node binary: beside the loadgen binary in the workspace's target directory (so
/// `CARGO_TARGET_DIR` is honoured), built with `cargo build --release` if absent.
fn node_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ringpush-loadgen")).with_file_name("ringpush");
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "ringpush"])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build for the node");
        assert!(status.success(), "building the node failed");
    }
    path
}

/// A running node, killed on drop.
struct Node {
    child: Child,
    addr: String,
    admin: String,
    stdout: mpsc::Receiver<String>,
}

impl Node {
    fn start(extra: &[&str]) -> Node {
        let mut child = Command::new(node_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--no-pin",
                // Small rings: ring memory is locked memory (8 MiB per user without
                // CAP_IPC_LOCK), shared by every node and worker the tests run at once.
                "--sq-entries",
                "256",
                "--cq-entries",
                "2048",
                "--stats-interval",
                "1s",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the node");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(START_WAIT)
            .expect("the node printed no listening line");
        let word_after = |key: &str| {
            line.split_whitespace()
                .skip_while(|w| *w != key)
                .nth(1)
                .map(str::to_string)
        };
        let addr = word_after("on").unwrap_or_else(|| panic!("unexpected first line: {line}"));
        let admin = word_after("admin").unwrap_or_else(|| panic!("no admin address: {line}"));
        Node {
            child,
            addr,
            admin,
            stdout: rx,
        }
    }

    /// Waits for a stats line whose `open=` is 0, printed after this call.
    fn wait_all_closed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with("stats") && line.contains(" open=0 ") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator with `args` (plus `--json --workers 2 --no-pin`) and returns
/// its exit code and JSON summary.
fn loadgen(args: &[&str]) -> (Option<i32>, Value, Output) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringpush-loadgen"))
        .args(args)
        .args([
            "--json",
            "--workers",
            "2",
            "--no-pin",
            "--sq-entries",
            "256",
            "--cq-entries",
            "2048",
            "--connect-timeout",
            "20s",
        ])
        .output()
        .expect("running ringpush-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), summary, output)
}

fn assert_clean(code: Option<i32>, s: &Value, output: &Output) {
    let context = || {
        format!(
            "summary: {s}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    };
    assert_eq!(s["errors"], 0, "{}", context());
    assert_eq!(s["connect_failures_total"], 0, "{}", context());
    assert_eq!(s["protocol_errors"], serde_json::json!({}), "{}", context());
    assert_eq!(s["closed_by_server"], 0, "{}", context());
    assert_eq!(s["dropped"], 0, "{}", context());
    assert_eq!(code, Some(0), "{}", context());
}

/// A port on which nothing listens (bound, read, released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local address").port()
}

#[test]
fn connect_opens_holds_and_closes_every_connection() {
    let node = Node::start(&[]);
    let (code, s, out) = loadgen(&[
        "connect",
        "--addr",
        &node.addr,
        "-n",
        &N.to_string(),
        "--duration",
        "1s",
    ]);
    assert_clean(code, &s, &out);
    assert_eq!(s["scenario"], "connect");
    assert_eq!(s["connected"], N);
    assert_eq!(s["upgrades"], N);
    assert_eq!(s["handshake_status"]["101"], N);
    assert_eq!(s["closed_clean"], N);
    assert_eq!(s["close_codes_received"]["1000"], N);
    assert_eq!(s["latency_us"]["connect"]["count"], N);
    let p50 = s["latency_us"]["connect"]["p50"].as_u64().unwrap_or(0);
    assert!(
        p50 >= 10,
        "connect p50 of {p50} µs is not a measurement: {s}"
    );
    assert!(s["connects_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Percentile TotalCount"),
        "no spectrum: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("summary ")),
        "no summary line"
    );
}

#[test]
fn echo_answers_every_message_in_order() {
    let node = Node::start(&[]);
    let (code, s, out) = loadgen(&[
        "echo",
        "--url",
        &format!("ws://{}/echo", node.addr),
        "-n",
        &N.to_string(),
        "--msg-rate",
        "20000",
        "--size",
        "64",
        "--duration",
        "2s",
    ]);
    assert_clean(code, &s, &out);
    assert_eq!(s["connected"], N);
    let sent = s["messages_sent"].as_u64().unwrap_or(0);
    assert!(sent > 20_000, "too few messages: {s}");
    assert_eq!(s["messages_received"], sent, "{s}");
    assert_eq!(s["unanswered"], 0);
    assert_eq!(s["missing"], 0);
    assert_eq!(s["out_of_order"], 0);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["latency_us"]["rtt"]["count"], sent);
}

#[test]
fn echo_closed_loop_with_text_frames() {
    let node = Node::start(&[]);
    let (code, s, out) = loadgen(&[
        "echo",
        "--addr",
        &node.addr,
        "-n",
        "500",
        "--msg-rate",
        "0",
        "--pipeline",
        "4",
        "--text",
        "--size",
        "40",
        "--duration",
        "1s",
    ]);
    assert_clean(code, &s, &out);
    let sent = s["messages_sent"].as_u64().unwrap_or(0);
    assert!(sent >= 2000, "{s}");
    assert_eq!(s["messages_received"], sent);
    assert_eq!(s["bad_payload"], 0);
}

#[test]
fn churn_opens_and_closes_without_leaks() {
    let node = Node::start(&[]);
    let (code, s, out) = loadgen(&[
        "churn",
        "--addr",
        &node.addr,
        "-n",
        "1000",
        "--rate",
        "2500",
        "--lifetime",
        "200ms",
        "--duration",
        "2s",
    ]);
    assert_clean(code, &s, &out);
    let opened = s["opened"].as_u64().unwrap_or(0);
    assert!(opened > 1000, "too little churn: {s}");
    assert_eq!(s["closed"], opened, "{s}");
    assert_eq!(s["failed"], 0);
    assert!(
        node.wait_all_closed(Duration::from_secs(10)),
        "the node still holds connections after the churn"
    );
    // Abortive churn: resets instead of close handshakes.
    let (code, s, out) = loadgen(&[
        "churn",
        "--addr",
        &node.addr,
        "-n",
        "500",
        "--rate",
        "2000",
        "--lifetime",
        "100ms",
        "--close",
        "abort",
        "--duration",
        "1s",
    ]);
    assert_clean(code, &s, &out);
    assert_eq!(s["closed_abort"], s["opened"]);
    assert!(node.wait_all_closed(Duration::from_secs(10)));
}

#[test]
fn broadcast_through_the_admin_api_delivers_each_message_once_in_order() {
    let node = Node::start(&[]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loadgen-plot");
    std::fs::create_dir_all(&dir).unwrap();
    let run_svg = dir.join("broadcast.svg");
    let (code, s, out) = loadgen(&[
        "broadcast",
        "--addr",
        &node.addr,
        "--admin",
        &node.admin,
        "--channel",
        "loadgen-test",
        "-n",
        &N.to_string(),
        "--msg-rate",
        "20",
        "--size",
        "64",
        "--duration",
        "2s",
        "--node-pid",
        &node.child.id().to_string(),
        "--plot",
        run_svg.to_str().unwrap(),
    ]);
    assert_clean(code, &s, &out);
    // Issue 13's charts: the run's own (spectrum, rate, RSS), and saved runs overlaid.
    let svg = std::fs::read_to_string(&run_svg).expect("--plot wrote the chart");
    for label in [
        "delivery latency by percentile",
        "99.9%",
        "messages received per second",
    ] {
        assert!(svg.contains(label), "{label} missing from the run's chart");
    }
    assert!(svg.contains("node RSS against open connections"));
    let saved = dir.join("broadcast.json");
    std::fs::write(&saved, s.to_string()).unwrap();
    let overlay = dir.join("overlay.svg");
    let plotted = Command::new(env!("CARGO_BIN_EXE_ringpush-loadgen"))
        .args(["plot", "--chart", "rate", "-o", overlay.to_str().unwrap()])
        .arg(format!("first={}", saved.display()))
        .arg(format!("second={}", saved.display()))
        .output()
        .unwrap();
    assert!(plotted.status.success(), "{plotted:?}");
    let svg = std::fs::read_to_string(&overlay).unwrap();
    assert!(
        svg.contains("first") && svg.contains("second"),
        "one line per run"
    );
    assert!(svg.matches("<polyline").count() >= 2, "both runs drawn");
    let published = s["publish"]["published"].as_u64().unwrap_or(0);
    assert!(published >= 10, "{s}");
    assert_eq!(s["publish"]["acked"], published);
    assert_eq!(s["publish"]["last_subscribers"], N);
    assert_eq!(s["messages_received"], published * N, "{s}");
    assert_eq!(s["missing"], 0);
    assert_eq!(s["out_of_order"], 0);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["latency_us"]["delivery"]["count"], published * N);
    // Real latencies, not a clamped placeholder: a delivery over loopback to thousands of
    // subscribers takes tens of microseconds at the very least.
    let p99 = s["latency_us"]["delivery"]["p99"].as_u64().unwrap_or(0);
    assert!(
        p99 >= 20,
        "delivery p99 of {p99} µs is not a measurement: {s}"
    );
}

#[test]
fn broadcast_through_a_client_publisher() {
    let node = Node::start(&["--client-publish"]);
    let (code, s, out) = loadgen(&[
        "broadcast",
        "--addr",
        &node.addr,
        "--publisher",
        "client",
        "--channel",
        "loadgen-client",
        "-n",
        "1000",
        "--count",
        "50",
        "--msg-rate",
        "100",
        "--size",
        "16",
    ]);
    assert_clean(code, &s, &out);
    assert_eq!(s["publish"]["published"], 50);
    assert_eq!(s["messages_received"], 50 * 1000, "{s}");
    assert_eq!(s["missing"], 0);
    assert_eq!(s["out_of_order"], 0);
}

#[test]
fn failures_are_counted_and_fail_the_run() {
    let port = closed_port();
    let (code, s, _) = loadgen(&[
        "connect",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "-n",
        "50",
        "--duration",
        "0s",
    ]);
    assert_eq!(code, Some(1), "{s}");
    assert_eq!(s["connect_failures"]["refused"], 50);
    assert_eq!(s["connected"], 0);
    assert_eq!(s["errors"], 50);
    // Within --max-errors the same run passes.
    let (code, _, _) = loadgen(&[
        "connect",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "-n",
        "50",
        "--duration",
        "0s",
        "--max-errors",
        "50",
    ]);
    assert_eq!(code, Some(0));
    // A path the node does not serve: every handshake is refused with 404.
    let node = Node::start(&[]);
    let (code, s, _) = loadgen(&[
        "connect",
        "--addr",
        &node.addr,
        "--path",
        "/nowhere",
        "-n",
        "100",
        "--duration",
        "0s",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(s["handshake_status"]["404"], 100);
    assert_eq!(s["connect_failures"]["handshake_status"], 100);
}

#[test]
fn json_idle_connections_hold_four_subscriptions_and_answer_pings() {
    // Pings every second of silence and a close after 3 s: only clients that answer the
    // application-level ping with a pong stay open through the 4 s hold.
    let node = Node::start(&["--ping-interval", "1s", "--idle-timeout", "3s"]);
    let (code, s, out) = loadgen(&[
        "connect",
        "--addr",
        &node.addr,
        "--format",
        "json",
        "--channels-per-conn",
        "4",
        "-n",
        &N.to_string(),
        "--hold",
        "4s",
    ]);
    assert_clean(code, &s, &out);
    assert_eq!(s["connected"], N, "{s}");
    assert_eq!(s["closed_clean"], N, "{s}");
    assert_eq!(s["json"]["subscribed"], 4 * N, "{s}");
    assert_eq!(s["json"]["errors"], serde_json::json!({}), "{s}");
    assert_eq!(s["json"]["unreadable"], 0, "{s}");
    let pings = s["json"]["pings"].as_u64().unwrap_or(0);
    assert!(pings >= N, "every connection sees a ping in 4 s: {s}");
}

#[test]
fn json_broadcast_delivers_each_message_once_in_order() {
    let node = Node::start(&[]);
    let (code, s, out) = loadgen(&[
        "broadcast",
        "--addr",
        &node.addr,
        "--admin",
        &node.admin,
        "--format",
        "json",
        "--channels-per-conn",
        "2",
        "--channel",
        "loadgen-json",
        "-n",
        &N.to_string(),
        "--msg-rate",
        "20",
        "--size",
        "64",
        "--duration",
        "2s",
    ]);
    assert_clean(code, &s, &out);
    let published = s["publish"]["published"].as_u64().unwrap_or(0);
    assert!(published >= 10, "{s}");
    assert_eq!(s["publish"]["acked"], published);
    assert_eq!(s["publish"]["last_subscribers"], N, "{s}");
    assert_eq!(s["json"]["subscribed"], 2 * N, "{s}");
    assert_eq!(s["json"]["epoch_mismatches"], 0, "{s}");
    assert_eq!(s["messages_received"], published * N, "{s}");
    assert_eq!(s["missing"], 0);
    assert_eq!(s["out_of_order"], 0);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["bad_payload"], 0);
    assert_eq!(s["latency_us"]["delivery"]["count"], published * N);
}

#[test]
fn resume_replays_every_missed_message_to_every_client() {
    let node = Node::start(&["--history-size", "200"]);
    let pid = node.child.id().to_string();
    let (code, s, out) = loadgen(&[
        "resume",
        "--addr",
        &node.addr,
        "--admin",
        &node.admin,
        "--node-pid",
        &pid,
        "--channel",
        "loadgen-resume",
        "-n",
        "2000",
        "--messages",
        "100",
    ]);
    assert_clean(code, &s, &out);
    let r = &s["resume"];
    assert_eq!(r["clients"], 2000, "{s}");
    assert_eq!(r["recovered"], 2000, "{s}");
    assert_eq!(r["not_recovered"], 0, "{s}");
    assert_eq!(r["caught_up"], 2000, "{s}");
    assert!(r["catch_up_ms"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    assert_eq!(s["publish"]["acked"], 100, "{s}");
    assert_eq!(s["messages_received"], 2000 * 100, "{s}");
    assert_eq!(s["missing"], 0);
    assert_eq!(s["out_of_order"], 0);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["latency_us"]["catch_up"]["count"], 2000);
    // The node's RSS while the clients resumed, and its high-water mark. The kernel's RSS
    // counters are per-CPU approximations and VmHWM is folded in only when RSS shrinks,
    // so a sample of VmRSS may exceed the later VmHWM by a few pages: both are only
    // checked to be real readings.
    let peak = r["node_rss_peak_bytes"].as_u64().unwrap_or(0);
    let high_water = r["node_rss_high_water_bytes"].as_u64().unwrap_or(0);
    assert!(peak > 1 << 20, "{s}");
    assert!(high_water > 1 << 20, "{s}");
    // Without history nothing can be replayed: every resume is refused and the run fails.
    let node = Node::start(&[]);
    let (code, s, _) = loadgen(&[
        "resume",
        "--addr",
        &node.addr,
        "--admin",
        &node.admin,
        "-n",
        "200",
        "--messages",
        "10",
        "--drain-timeout",
        "1s",
    ]);
    assert_eq!(code, Some(1), "{s}");
    assert_eq!(s["resume"]["recovered"], 0, "{s}");
    assert_eq!(s["resume"]["not_recovered"], 200, "{s}");
    assert_eq!(s["resume"]["caught_up"], 0, "{s}");
    assert_eq!(s["missing"], 200 * 10, "{s}");
}

/// Subscribers of `channel` on the node whose admin API is `admin` (`GET /channels/<c>`).
fn channel_subscribers(admin: &str, channel: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(admin) else {
        return 0;
    };
    let request =
        format!("GET /channels/{channel} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut answer).is_err()
    {
        return 0;
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["subscribers"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_subscribe_only_run_judges_messages_another_process_publishes() {
    let node = Node::start(&[]);
    let channel = "loadgen-elsewhere";
    let subscriber = {
        let addr = node.addr.clone();
        std::thread::spawn(move || {
            loadgen(&[
                "broadcast",
                "--addr",
                &addr,
                "--publisher",
                "none",
                "--channel",
                channel,
                "-n",
                "1000",
                "--count",
                "20",
                "--size",
                "64",
                "--drain-timeout",
                "60s",
            ])
        })
    };
    let deadline = Instant::now() + START_WAIT;
    while channel_subscribers(&node.admin, channel) < 1000 {
        assert!(
            Instant::now() < deadline,
            "the subscribe-only run never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, publisher, out) = loadgen(&[
        "broadcast",
        "--addr",
        &node.addr,
        "--admin",
        &node.admin,
        "--channel",
        channel,
        "-n",
        "10",
        "--count",
        "20",
        "--msg-rate",
        "200",
        "--size",
        "64",
    ]);
    assert_clean(code, &publisher, &out);
    assert_eq!(publisher["publish"]["subscribers_reported"], 20 * 1010);
    let (code, s, out) = subscriber.join().expect("the subscriber thread");
    assert_clean(code, &s, &out);
    assert_eq!(s["publish"], Value::Null, "{s}");
    assert_eq!(s["deliveries_expected"], 20 * 1000, "{s}");
    assert_eq!(s["messages_received"], 20 * 1000, "{s}");
    assert_eq!(s["missing"], 0);
    assert_eq!(s["out_of_order"], 0);
    assert_eq!(s["latency_us"]["delivery"]["count"], 20 * 1000, "{s}");
}

#[test]
fn a_subscribe_only_run_that_receives_nothing_fails() {
    let node = Node::start(&[]);
    let (code, s, _) = loadgen(&[
        "broadcast",
        "--addr",
        &node.addr,
        "--publisher",
        "none",
        "--channel",
        "loadgen-nobody",
        "-n",
        "100",
        "--count",
        "3",
        "--drain-timeout",
        "500ms",
    ]);
    assert_eq!(s["messages_received"], 0, "{s}");
    assert_eq!(s["missing"], 3 * 100, "{s}");
    assert_eq!(code, Some(1), "{s}");
}
