//! Log lines to stderr without ever blocking a reactor thread.
//!
//! A shard that writes to a stalled stderr (a full pipe nobody reads) would stop serving
//! every connection it holds. So reactor threads mark themselves with
//! [`never_block_this_thread`], and their lines go through a bounded queue to one writer
//! thread: when the queue is full the line is dropped and counted, and the count is written
//! before the next line that gets through (`event=log_dropped lines=N`) and exported as
//! `ringpush_log_lines_dropped_total`. Other threads (start-up, the main thread's final
//! report, the load generator) write directly, as before.
//!
//! With `--log-format json` every line becomes one JSON object (`json.rs`), converted
//! where it is written (the writer thread for a reactor's line), never on a reactor.
//!
//! Invariants:
//! - A thread marked non-blocking never waits on stderr or on the queue: `try_send` only.
//! - `QUEUED_LINES` counts lines handed to the writer and not yet written, so [`flush`] can
//!   wait for them (bounded in time) before the process exits.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines waiting for the writer thread at most; past it lines are dropped and counted.
/// Shards print at most a few dozen lines a second each, so this only fills when stderr
/// stalls.
pub const LOG_QUEUE_LINES_MAX: usize = 1024;

mod json;

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `ringpush event=name key=value ...` lines.
    Text,
    /// One JSON object per line: `ts`, `source`, then every `key=value` of the text line
    /// (numbers as numbers), and any other words as `msg`.
    Json,
}

/// Whether lines are written as JSON (set once by [`start`]).
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Lines dropped since the process started (exported in /metrics).
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);
/// Lines dropped and not yet reported on stderr.
static UNREPORTED_LINES: AtomicU64 = AtomicU64::new(0);
/// Lines queued for the writer and not yet written.
static QUEUED_LINES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread must never block on logging (a reactor thread).
    static NON_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Starts the writer thread now (from the main thread, so it is neither pinned to a
/// shard's core nor sharing a shard's file table). Without this call it starts with the
/// first queued line.
pub fn start(format: LogFormat) {
    JSON_LINES.store(format == LogFormat::Json, Ordering::Relaxed);
    let _ = queue();
}

/// Marks the calling thread as a reactor: from now on its lines are queued, never written
/// in place, and dropped (counted) when the queue is full.
pub fn never_block_this_thread() {
    NON_BLOCKING.with(|flag| flag.set(true));
}

/// Writes one line (the `elog!` macro): queued on a reactor thread, written at once on any
/// other. A closed or failing stderr is ignored: a vanished log reader must not take the
/// node down.
pub fn line(args: std::fmt::Arguments<'_>) {
    if !NON_BLOCKING.with(Cell::get) {
        write_line(&mut std::io::stderr().lock(), &args.to_string());
        return;
    }
    let Some(queue) = queue() else {
        count_dropped();
        return;
    };
    QUEUED_LINES.fetch_add(1, Ordering::AcqRel);
    if queue.try_send(args.to_string()).is_err() {
        QUEUED_LINES.fetch_sub(1, Ordering::AcqRel);
        count_dropped();
    }
}

/// Lines dropped because stderr did not keep up, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

/// Waits until every queued line is written, or `within` has passed (stderr may be stalled
/// for good), then reports lines dropped and not yet reported. Called before exit.
pub fn flush(within: Duration) {
    let deadline = Instant::now() + within;
    while QUEUED_LINES.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if QUEUED_LINES.load(Ordering::Acquire) == 0 {
        report_dropped(&mut std::io::stderr().lock());
    }
}

fn count_dropped() {
    DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
    UNREPORTED_LINES.fetch_add(1, Ordering::Relaxed);
}

fn report_dropped(out: &mut impl std::io::Write) {
    let dropped = UNREPORTED_LINES.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        write_line(out, &format!("ringpush event=log_dropped lines={dropped}"));
    }
}

/// The queue to the writer thread, started on first use; None if the thread could not be
/// spawned (then every queued line counts as dropped).
fn queue() -> Option<&'static SyncSender<String>> {
    static QUEUE: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = sync_channel(LOG_QUEUE_LINES_MAX);
            std::thread::Builder::new()
                .name("ringpush-log".to_string())
                .spawn(move || write_lines(rx))
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// The writer thread: the only place a reactor's line can wait on stderr.
fn write_lines(lines: Receiver<String>) {
    for line in lines {
        let mut err = std::io::stderr().lock();
        report_dropped(&mut err);
        write_line(&mut err, &line);
        drop(err);
        QUEUED_LINES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes one line in the configured format; a failing stderr is ignored.
fn write_line(out: &mut impl std::io::Write, line: &str) {
    if JSON_LINES.load(Ordering::Relaxed) {
        let _ = writeln!(out, "{}", json::line(line, std::time::SystemTime::now()));
    } else {
        let _ = writeln!(out, "{line}");
    }
}
