//! Issue 13, operations: the files in `contrib/` stay true to the node. The Grafana
//! dashboard only names metrics the node really exports, and the systemd unit passes
//! `systemd-analyze verify` with the real binary and stops within the node's drain.

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use util::redis_server::RedisServer;
use util::{http_raw, Node};

const DASHBOARD: &str = include_str!("../contrib/grafana/ringpush.json");
const UNIT: &str = include_str!("../contrib/systemd/ringpush.service");

/// Every `ringpush_*` name in a PromQL expression, with a histogram's series suffix removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ringpush_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn issue_13_the_dashboard_names_only_metrics_the_node_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "a query without a ringpush metric: {expr}"
            );
            used.extend(names);
        }
    }
    // A node with --broker exports every metric, the broker's included.
    let redis = RedisServer::start();
    let node = Node::start(&["--broker", redis.url().as_str()]);
    let metrics = http_raw(
        node.admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect();
    assert!(exported.contains("ringpush_connections_open"), "{metrics}");
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the node lacks: {missing:?}"
    );
    for wanted in [
        "ringpush_connections_open",
        "ringpush_connections_refused_total",
        "ringpush_deliveries_total",
        "ringpush_fanout_latency_seconds",
        "ringpush_slow_consumer_closes_total",
        "ringpush_pings_lost_total",
        "ringpush_broker_up",
    ] {
        assert!(used.contains(wanted), "the dashboard lacks {wanted}");
    }
}

/// The value of `key=` in the unit's text.
fn unit_value(key: &str) -> &'static str {
    UNIT.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn issue_13_the_systemd_unit_verifies_and_outlasts_the_drain() {
    let exec = unit_value("ExecStart");
    let (binary, args) = exec.split_once(' ').expect("ExecStart has arguments");
    assert_eq!(binary, "/usr/local/bin/ringpush");
    assert!(args.contains("--config "), "{exec}");
    assert_eq!(
        unit_value("KillSignal"),
        "SIGTERM",
        "SIGTERM starts the drain"
    );
    let stop_s: u64 = unit_value("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        stop_s > 10,
        "TimeoutStopSec must outlast the default --drain-timeout of 10 s"
    );
    assert!(unit_value("LimitNOFILE").parse::<u64>().unwrap() >= 1 << 20);

    // `systemd-analyze verify` checks every directive and that ExecStart is executable:
    // point it at the binary under test, in a copy of the unit.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("contrib");
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("ringpush.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/ringpush", env!("CARGO_BIN_EXE_ringpush")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/deps.sh installs it)");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
