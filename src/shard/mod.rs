//! One shard: a reactor thread that owns an io_uring, a listener, a file table, a slab of
//! connections and a timer wheel, and runs accept → handshake → recv → parse → dispatch →
//! send → timers → shutdown for every connection it accepted.
//!
//! Each shard is the reactor skeleton (`reactor::Reactor`) with the node's service
//! (`service.rs`, `NodeService<R>`) in a role: client shards in the WebSocket client role
//! (`client.rs`, `WebSocket`), the admin shard in the admin HTTP role (`admin_service/`,
//! `AdminHttp`). Both work on the shard's state without its ring (`state.rs`, `Core`:
//! connections, timers, channels, counters, and the life cycle they share;
//! `ring_events.rs`: accept, refusals, the shard's own submissions, ring faults). Shards
//! talk to each other only through their inboxes (`fanout.rs`), each push followed by a
//! MsgRingData doorbell. This file holds the thread: start-up, the run, and the quiesce at
//! its end; `tests.rs` and `admin_tests.rs` drive the shards on `FakeRing`.
//!
//! Invariants:
//! - [`Core`] (everything but the ring) pushes SQEs only from the services' `before_flush`
//!   (accept, doorbells); otherwise it records what must be submitted (dirty, starved,
//!   doorbells) and the skeleton submits after the batch.
//! - A connection's slot is freed only when no operation of it is in the kernel.
//! - When the loop ends, every socket is shut down and `Ring::quiesce` cancels and reaps
//!   everything of this shard in the kernel before any fd is closed or buffer freed.
//! - The wheel follows the wall clock: a tick moves it by the ticks elapsed since `epoch`,
//!   and only a tick that expired (-ETIME) moves it at all.
//! - Nothing is queued after a connection's close frame (or HTTP refusal).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::admin_service::AdminService;
use crate::admission::AddressTable;
use crate::auth::setup::NodeAuth;
use crate::config::Config;
use crate::fanout::{Peers, ShardMsg};
use crate::history::History;
use crate::http::proxy::TrustedProxies;
use crate::reactor::Reactor;
use crate::ring::driver::Driver;
use crate::ring::{sys, Ring, QUIESCE_MS};
use crate::stats::Counters;

/// Length of one timer tick.
pub const TICK_MS: u64 = 50;
/// Slots in the timer wheel: 2048 ticks of 50 ms cover 102 s, beyond the idle default.
const WHEEL_SLOTS: usize = 2048;
/// Log lines a shard prints per second at most; the rest are counted and summarised.
const LOG_LINES_PER_SEC_MAX: u32 = 20;
/// Ticks between retries of an accept that ended on EMFILE.
const ACCEPT_RETRY_TICKS: u32 = 2;
/// Ticks a client shard waits after its drain deadline for the completions of the
/// connections it aborted then (they arrive within milliseconds); past it the shard exits
/// anyway, so shutdown ends within --drain-timeout plus about a second.
const DRAIN_REAP_TICKS: u32 = 20;
/// Test hook: `RINGPUSH_TEST_FAIL_SHARD=<i>` makes shard `i` fail its start-up (as a
/// failed buffer registration would); `<i>:run` makes it leave its loop on its first tick
/// (as a ring error would). Unset in production; the tests of issue 8 use it.
const TEST_FAIL_SHARD_ENV: &str = "RINGPUSH_TEST_FAIL_SHARD";

/// How the test hook in [`TEST_FAIL_SHARD_ENV`] treats shard `index`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TestFailure {
    None,
    Start,
    Run,
}

fn test_failure(index: usize) -> TestFailure {
    let Ok(value) = std::env::var(TEST_FAIL_SHARD_ENV) else {
        return TestFailure::None;
    };
    let (shard, when) = value.split_once(':').unwrap_or((&value, "start"));
    match (shard.parse::<usize>(), when) {
        (Ok(i), "start") if i == index => TestFailure::Start,
        (Ok(i), "run") if i == index => TestFailure::Run,
        _ => TestFailure::None,
    }
}

/// State shared between the main thread and the shards.
pub struct Shared {
    /// Set by the main thread on SIGINT / SIGTERM.
    pub shutdown: AtomicBool,
    /// Per shard: set (Release) once its thread has left its loop and dropped its inbox, or
    /// failed to start. The admin shard waits for every client shard's flag, and counts an
    /// exited shard as having answered its waiting publishes with 0.
    pub exited: Vec<AtomicBool>,
    /// Orders (session, tab) claims node-wide: the highest sequence wins.
    pub session_seq: AtomicU64,
    /// Per shard: its counters as of its last publication (every tick).
    pub counters: Vec<Mutex<Counters>>,
    /// The node-wide sequencer and history store: every channel publish takes its offset
    /// here; JSON-mode resumes and the admin API's `/history` and `/channels/<name>` read it.
    pub history: Arc<History>,
    /// The admin tokens and the connection-token configuration, loaded at start-up.
    pub auth: NodeAuth,
    /// The node-wide per-address admission table (`--max-conns-per-ip`,
    /// `--connect-rate-per-ip`); never touched while both are off.
    pub addresses: AddressTable,
    /// The `--trusted-proxy` ranges.
    pub trusted_proxies: TrustedProxies,
    /// The Redis broker joining this node to others (`--broker`), if any.
    pub broker: Option<Arc<crate::broker::Broker>>,
}

/// What a shard hands back when it exits.
pub struct Report {
    /// Final counters.
    pub counters: Counters,
    /// Accept to 101 queued, µs.
    pub handshake_us: Histogram<u64>,
    /// Server ping to pong, µs.
    pub ping_rtt_us: Histogram<u64>,
    /// Publish accepted to last local send completed, µs.
    pub fanout_us: Histogram<u64>,
}

/// Whether a shard serves WebSocket clients or the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardKind {
    /// WebSocket clients on `--listen`.
    Client,
    /// Plain HTTP on `--admin`.
    Admin,
}

/// Everything a shard thread needs, prepared by the main thread before it unshares.
pub struct Setup {
    /// Shard index (the admin shard comes after the client shards).
    pub index: usize,
    /// Client or admin.
    pub kind: ShardKind,
    /// The shard's ring (created disabled; enabled in the thread).
    pub ring: Ring,
    /// This shard's listener.
    pub listen_fd: RawFd,
    /// Every other shard's listener: closed in this shard's table after the unshare.
    pub foreign_fds: Vec<RawFd>,
    /// Connections this shard holds at most.
    pub conns_max: usize,
    /// Core to pin to, if pinning.
    pub core: Option<core_affinity::CoreId>,
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Shared flags and counters.
    pub shared: Arc<Shared>,
    /// Every shard's inbox and ring fd.
    pub peers: Arc<Peers>,
    /// This shard's inbox.
    pub inbox: Receiver<ShardMsg>,
}

/// Thread body: pins, takes its own file table, enables the ring, registers buffers,
/// reports readiness on `ready` and runs the loop until shutdown completes.
pub fn spawn(
    setup: Setup,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::thread::JoinHandle<Option<Report>> {
    let name = match setup.kind {
        ShardKind::Client => format!("ringpush-shard-{}", setup.index),
        ShardKind::Admin => "ringpush-admin".to_string(),
    };
    let index = setup.index;
    let shared = Arc::clone(&setup.shared);
    let shared_run = Arc::clone(&setup.shared);
    crate::reactor::spawn(
        name,
        ready,
        move || {
            // A failed start drops the setup, inbox included, before the flag is set.
            start(setup).inspect_err(|_| shared.exited[index].store(true, Ordering::Release))
        },
        move |shard| {
            let report = match shard {
                Shard::Client(mut reactor) => run(&mut reactor),
                Shard::Admin(mut reactor) => run(&mut reactor),
            };
            // The inbox went with the shard: senders see it gone, then the admin shard
            // sees the flag and stops waiting for this shard's counts.
            shared_run.exited[index].store(true, Ordering::Release);
            report
        },
    )
}

/// A started shard: the reactor skeleton over the real ring with the service of its kind.
enum Shard {
    Client(Reactor<Ring, ClientService>),
    Admin(Reactor<Ring, AdminService>),
}

fn start(setup: Setup) -> Result<Shard, String> {
    // A shard never waits on stderr: its log lines are queued or dropped and counted.
    crate::log::never_block_this_thread();
    let i = setup.index;
    let cfg = setup.cfg;
    let mut ring = setup.ring;
    // Closed after the unshare `adopt` does: they are the other shards' listeners.
    let foreign_fds = setup.foreign_fds;
    ring.adopt(
        &format!("ringpush shard {i}"),
        setup.core,
        cfg.recv_buffers,
        cfg.recv_buffer_bytes,
    )?;
    for fd in &foreign_fds {
        sys::close(*fd);
    }
    let failure = test_failure(i);
    if failure == TestFailure::Start {
        return Err(format!(
            "ringpush shard {i}: start-up failed on purpose ({TEST_FAIL_SHARD_ENV})"
        ));
    }
    let mut core = Core::new(i, setup.listen_fd, setup.conns_max, cfg, setup.shared)
        .with_peers(setup.peers, setup.inbox);
    if failure == TestFailure::Run {
        core.test_exit = TestExit::OnTick;
    }
    Ok(match setup.kind {
        ShardKind::Client => Shard::Client(Reactor::new(ring, ClientService::new(core))),
        ShardKind::Admin => Shard::Admin(Reactor::new(ring, AdminService::new(core))),
    })
}

/// Runs a shard: arms the accept and the tick, runs the skeleton's loop, then ends every
/// operation in the kernel before any fd is closed or buffer freed, and reports.
fn run<D: Driver, R: Role>(reactor: &mut Reactor<D, NodeService<R>>) -> Report {
    let core = &mut reactor.service.core;
    let listen_fd = core.listen_fd.expect("listener at start");
    core.accept_armed = true;
    reactor.ring.accept_multi(listen_fd);
    reactor.ring.tick(Duration::from_millis(TICK_MS));
    reactor.run();
    // The listener stays open during a drain (late sockets hear the shutdown 503), and a
    // ring error leaves the accept armed: the quiesce cancels it with everything else,
    // so no connection is taken that nobody would serve.
    quiesce(reactor);
    let core = &mut reactor.service.core;
    core.accept_armed = false;
    core.close_everything();
    core.publish();
    core.report()
}

/// Ends every operation of this shard in the kernel before its memory is freed: shuts
/// every socket down (which ends its recv and send), then cancels and reaps for at most
/// `QUIESCE_MS`. Dropping the ring would cancel nothing, since every file table holds
/// its fd. If the kernel keeps something, the ring leaks its buffers and frames.
fn quiesce<D: Driver, R: Role>(reactor: &mut Reactor<D, NodeService<R>>) {
    let core = &reactor.service.core;
    for (_, c) in core.conns.iter() {
        sys::shutdown(c.fd, libc::SHUT_RDWR);
    }
    let index = core.index;
    match reactor.ring.quiesce(Duration::from_millis(QUIESCE_MS)) {
        Ok(()) => {}
        Err(left) => {
            reactor.service.core.counters.ring_quiesce_timeouts += 1;
            crate::elog!(
                "ringpush shard={index} error=ring_quiesce_gave_up {left} after \
                 {QUIESCE_MS} ms (its buffers and frames are leaked, not freed)"
            );
        }
    }
}

#[cfg(test)]
mod admin_tests;
mod client;
mod ring_events;
mod service;
mod spread;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use client::ClientService;
#[cfg(test)]
use client::WebSocket;
pub(crate) use ring_events::Refusal;
pub(crate) use service::{NodeService, Role};
pub(crate) use state::Core;
use state::TestExit;
