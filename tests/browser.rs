//! The JavaScript client (`clients/js/`) against this binary: `node --test` runs the
//! client's unit tests (backoff and jitter, tab id, reconnect decisions on a fake socket)
//! and its browser suite, which drives Debian's headless chromium through playwright-core
//! and starts, restarts and cuts off real nodes (`clients/js/test/browser.test.mjs`).
//!
//! The suite's `--broker` test needs a `redis-server`: this test starts one
//! (`tests/util/redis_server.rs`) and names it in `RINGPUSH_REDIS_URL`.
//!
//! `scripts/browser-deps.sh` installs node, chromium and playwright-core, and
//! `scripts/deps.sh` redis-server; `scripts/test.sh` calls both first. Without them this
//! test fails and says so: it never skips. The demo page's screenshot is kept in
//! `target/tmp/browser/demo.png`.

mod util;

use std::path::Path;
use std::process::Command;

use util::redis_server::RedisServer;

/// What to run when a dependency is missing.
const INSTALL: &str = "run scripts/browser-deps.sh (scripts/test.sh does)";

#[test]
fn js_client_unit_and_browser_suites() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let playwright = dir.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "playwright-core is not installed in clients/js: {INSTALL}"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no chromium at {chromium}: {INSTALL}"
    );
    // Fails with a message when redis-server is missing.
    let redis = RedisServer::start();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let output = Command::new("node")
        .args(["--test", "test/unit.test.mjs", "test/browser.test.mjs"])
        .current_dir(&dir)
        .env("RINGPUSH_BIN", env!("CARGO_BIN_EXE_ringpush"))
        .env("CHROMIUM", &chromium)
        .env("RINGPUSH_REDIS_URL", redis.url())
        .env("BROWSER_ARTIFACTS", &artifacts)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The runner's summary: every test ran and passed, none was skipped or left out.
    let count = |key: &str| -> Option<u32> {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("# {key} "))?.trim().parse().ok())
    };
    assert_eq!(count("fail"), Some(0), "{stdout}");
    assert_eq!(count("skipped"), Some(0), "{stdout}");
    assert_eq!(count("todo"), Some(0), "{stdout}");
    let tests = count("tests").expect("a test count in node's summary");
    assert_eq!(count("pass"), Some(tests), "{stdout}");
    assert!(tests >= 16, "only {tests} tests ran:\n{stdout}");
    assert!(artifacts.join("demo.png").exists(), "no demo screenshot");
}
