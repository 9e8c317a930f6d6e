//! Issue 13, stable interfaces: INTERFACES.md against the real binary. Every flag, metric,
//! admin path and JSON op the node has is listed there, and every name listed there still
//! works, or is a deprecated alias with a CHANGELOG line; the broker's metrics are exported
//! by a node with `--broker` only. (Close codes are checked against the node's End table in
//! `src/conn/end_tests.rs`.)

mod util;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::json;
use util::json_client::JsonClient;
use util::redis_server::RedisServer;
use util::{http_raw, Node};

const INTERFACES: &str = include_str!("../INTERFACES.md");
const CHANGELOG: &str = include_str!("../CHANGELOG.md");

/// The cells of a table's rows under `heading`, split on `|`, trimmed, backticks removed.
fn rows(heading: &str) -> Vec<Vec<String>> {
    let section = INTERFACES
        .split(&format!("## {heading}"))
        .nth(1)
        .unwrap_or_else(|| panic!("INTERFACES.md has no section {heading:?}"));
    section
        .lines()
        .skip_while(|line| !line.starts_with("|---"))
        .skip(1)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

fn first_column(heading: &str) -> BTreeSet<String> {
    rows(heading)
        .into_iter()
        .map(|row| row[0].clone())
        .collect()
}

/// Old names kept as aliases; each must have a CHANGELOG line.
fn deprecated() -> BTreeSet<String> {
    let old = first_column("Deprecated names");
    for name in &old {
        assert!(
            CHANGELOG.contains(name.as_str()),
            "deprecated {name} has no CHANGELOG line"
        );
    }
    old
}

#[test]
fn issue_13_every_flag_is_documented_and_every_documented_flag_still_works() {
    let help = Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: BTreeSet<String> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .map(|rest| format!("--{}", rest.split([' ', ',', '=']).next().unwrap()))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect();
    assert!(flags.contains("--listen"), "{help}");
    let documented = first_column("Command-line flags, config keys and environment variables");
    let undocumented: Vec<_> = flags.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "add to INTERFACES.md: {undocumented:?}"
    );
    let old = deprecated();
    for flag in documented.difference(&flags) {
        assert!(
            old.contains(flag),
            "{flag} is gone without a deprecation (INTERFACES.md, CHANGELOG.md)"
        );
        // An alias still parses.
        let out = Command::new(env!("CARGO_BIN_EXE_ringpush"))
            .args(["--print-config", flag])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("unexpected argument"),
            "deprecated {flag} no longer parses"
        );
    }
    for row in rows("Command-line flags, config keys and environment variables") {
        let key = row[0].trim_start_matches("--").replace('-', "_");
        if row[1] != "(none)" {
            assert_eq!(row[1], key, "config key of {}", row[0]);
            assert_eq!(row[2], format!("RINGPUSH_{}", key.to_uppercase()));
        }
    }
}

#[test]
fn issue_13_every_metric_is_documented_with_its_type_and_none_disappeared() {
    let node = Node::start(&[]);
    let exported = metric_types(&node);
    assert!(exported.len() > 10, "{exported:?}");
    let documented: BTreeSet<(String, String)> = rows("Metrics")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "add to INTERFACES.md: {undocumented:?}"
    );
    let old = deprecated();
    let gone: Vec<_> = documented
        .difference(&exported)
        .filter(|(name, _)| !old.contains(name))
        .collect();
    assert!(
        gone.is_empty(),
        "metrics gone without a deprecation: {gone:?}"
    );
}

/// Every `(metric, type)` a node exports, from its `# TYPE` lines.
fn metric_types(node: &Node) -> BTreeSet<(String, String)> {
    let text = http_raw(
        node.admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| {
            let (name, kind) = line.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

#[test]
fn issue_12_every_broker_metric_is_documented_and_only_a_broker_node_exports_them() {
    let documented: BTreeSet<(String, String)> = rows("Broker metrics")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let redis = RedisServer::start();
    let brokered = Node::start(&["--broker", redis.url().as_str(), "--shards", "2"]);
    let plain = Node::start(&[]);
    let without = metric_types(&plain);
    let added: BTreeSet<_> = metric_types(&brokered)
        .difference(&without)
        .cloned()
        .collect();
    assert_eq!(
        added, documented,
        "the broker's metrics and INTERFACES.md's table"
    );
    assert!(
        without
            .iter()
            .all(|(name, _)| !name.starts_with("ringpush_broker_")),
        "a node without --broker exports no broker metric"
    );
}

#[test]
fn issue_13_every_documented_admin_path_answers_its_method() {
    let node = Node::start(&["--history-size", "4"]);
    for row in rows("Admin paths") {
        let path = row[0]
            .replace("<channel>", "iface")
            .replace("<session>", "iface");
        let method = &row[1];
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        );
        let answer = http_raw(node.admin, request.as_bytes());
        let status = answer.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            status != "404" && status != "405",
            "{method} {path}: {answer}"
        );
    }
}

#[test]
fn issue_13_every_documented_client_op_is_known_to_the_node() {
    let node = Node::start(&[]);
    let mut client = JsonClient::connect(&node, "").expect("a JSON connection");
    let ops: Vec<String> = rows("JSON protocol ops")
        .into_iter()
        .filter(|row| row[1] == "client → node")
        .map(|row| row[0].clone())
        .collect();
    assert!(ops.contains(&"subscribe".to_string()));
    for (id, op) in ops.iter().enumerate() {
        client.send(&json!({"op": op, "id": id}));
    }
    // A sentinel the node cannot know: its answer proves the check can fail.
    client.send(&json!({"op": "no-such-op", "id": 999}));
    loop {
        let answer = client.recv();
        if answer["id"] == 999 {
            assert_eq!(answer["reason"], "unknown op", "{answer}");
            break;
        }
        assert_ne!(answer["reason"], "unknown op", "{answer}");
    }
    for row in rows("JSON protocol ops") {
        let protocol = include_str!("../PROTOCOL.md");
        let (quoted, cell) = (
            format!("\"op\":\"{}\"", row[0]),
            format!("| `{}` |", row[0]),
        );
        assert!(
            protocol.contains(&quoted) || protocol.contains(&cell),
            "PROTOCOL.md does not describe the op {}",
            row[0]
        );
    }
}
