//! Issue 13, operations: settings from a TOML file and the environment with the precedence
//! flag > environment > file > default, `--print-config` that reads back to the same
//! configuration, `--log-format json`, and `--version` naming the git revision. Real binary.

mod util;

use std::path::PathBuf;
use std::process::{Command, Output};

use util::{http_raw, Node};

fn ringpush(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringpush"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run ringpush")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file under the target directory, unique to this test.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config_file");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The value `--print-config` shows for `key` (its right-hand side, as written).
fn printed(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{config}"))
        .to_string()
}

#[test]
fn issue_13_print_config_reads_back_to_the_same_configuration() {
    let first = ringpush(
        &[
            "--print-config",
            "--ping-interval",
            "12s",
            "--max-conns",
            "1234",
            "--allow-origin",
            "https://a.example",
            "--allow-origin",
            "https://b.example",
            "--client-publish",
            "--slow-consumer",
            "drop",
            "--max-pending",
            "2MiB",
        ],
        &[],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first = text(&first.stdout);
    assert_eq!(printed(&first, "ping_interval"), "\"12s\"");
    assert_eq!(
        printed(&first, "allow_origin"),
        "[\"https://a.example\", \"https://b.example\"]"
    );
    assert_eq!(printed(&first, "client_publish"), "true");
    assert_eq!(
        printed(&first, "idle_timeout"),
        "\"75s\"",
        "defaults are printed too"
    );
    let saved = scratch("roundtrip.toml", &first);
    let second = ringpush(
        &["--print-config", "--config", saved.to_str().unwrap()],
        &[],
    );
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), first);
}

#[test]
fn issue_13_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let file = scratch(
        "precedence.toml",
        "ping_interval = \"3s\"\necho_path = \"/file\"\nmax_conns = 7\nno_pin = true\n",
    );
    let out = ringpush(
        &[
            "--print-config",
            "--config",
            file.to_str().unwrap(),
            "--ping-interval",
            "5s",
        ],
        &[
            ("RINGPUSH_PING_INTERVAL", "4s"),
            ("RINGPUSH_ECHO_PATH", "/env"),
            (
                "RINGPUSH_ALLOW_ORIGIN",
                "https://x.example, https://y.example",
            ),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = text(&out.stdout);
    assert_eq!(
        printed(&config, "ping_interval"),
        "\"5s\"",
        "flag over env and file"
    );
    assert_eq!(printed(&config, "echo_path"), "\"/env\"", "env over file");
    assert_eq!(printed(&config, "max_conns"), "\"7\"", "file over default");
    assert_eq!(printed(&config, "no_pin"), "true");
    assert_eq!(printed(&config, "idle_timeout"), "\"75s\"", "default");
    assert_eq!(
        printed(&config, "allow_origin"),
        "[\"https://x.example\", \"https://y.example\"]",
        "a list in the environment is comma-separated"
    );
}

#[test]
fn issue_13_a_typo_or_a_bad_value_in_the_file_stops_start_up_naming_it() {
    let typo = scratch("typo.toml", "ping_intervall = \"3s\"\n");
    let out = ringpush(&["--config", typo.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown key \"ping_intervall\""),
        "{}",
        text(&out.stderr)
    );

    let bad = scratch("bad.toml", "ping_interval = \"soon\"\n");
    let out = ringpush(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--ping-interval"),
        "{}",
        text(&out.stderr)
    );

    let table = scratch("table.toml", "[listen]\nport = 1\n");
    let out = ringpush(&["--config", table.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("listen: a table"),
        "{}",
        text(&out.stderr)
    );

    let out = ringpush(&["--config", "/nonexistent/ringpush.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/ringpush.toml"),
        "{}",
        text(&out.stderr)
    );

    let out = ringpush(&["--print-config"], &[("RINGPUSH_MAX_CONNS", "many")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad environment value is refused too"
    );
}

#[test]
fn issue_13_print_config_masks_secrets() {
    let out = ringpush(
        &["--print-config", "--admin-token", "s3cret-admin"],
        &[("RINGPUSH_ADMIN_PUBLISH_TOKEN", "s3cret-publish")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = text(&out.stdout);
    assert!(!config.contains("s3cret"), "{config}");
    assert!(
        config.contains("# admin_token = \"(secret, not printed)\""),
        "{config}"
    );
}

#[test]
fn issue_13_the_node_runs_from_a_config_file() {
    let file = scratch("run.toml", "echo_path = \"/from-file\"\n");
    let node = Node::start(&["--config", file.to_str().unwrap()]);
    let mut client = node.ws("/from-file");
    client.send(ringpush::ws::OpCode::Text, b"configured");
    assert_eq!(client.recv(), util::Msg::Text("configured".into()));
}

#[test]
fn issue_13_json_log_lines_are_one_object_each() {
    let node = Node::start(&["--log-format", "json"]);
    let warning = node.expect_log("anyone may");
    let warning: serde_json::Value = serde_json::from_str(&warning).expect("a JSON line");
    assert_eq!(warning["source"], "ringpush");
    assert!(
        warning["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')),
        "{warning}"
    );
    // A line from a reactor thread (written by the log thread): a refused upgrade.
    let _ = http_raw(node.addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    let refused = node.expect_log("handshake");
    let refused: serde_json::Value = serde_json::from_str(&refused).expect("a JSON line");
    assert!(refused["event"].as_str().is_some(), "{refused}");
    assert!(refused["shard"].as_i64().is_some(), "{refused}");
}

#[test]
fn issue_13_version_names_the_git_revision() {
    let out = ringpush(&["--version"], &[]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    assert!(
        version.starts_with(&format!("ringpush {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| text(&out.stdout).trim().to_string());
    // Built outside a git checkout (a source tarball), the revision is said to be unknown.
    let expected = format!("git {}", head.as_deref().unwrap_or("unknown"));
    assert!(version.contains(&expected), "{version} vs {expected}");
}
