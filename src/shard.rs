//! One shard: a reactor thread that owns an io_uring, a listener, a file table, a slab of
//! connections and a timer wheel, and runs accept → handshake → recv → parse → dispatch →
//! send → timers → shutdown for every connection it accepted.
//!
//! Client shards hold WebSocket connections; the admin shard runs the same loop on the
//! admin listener and speaks plain HTTP (see `admin_service.rs`). Shards talk to each other only
//! through their inboxes (`fanout.rs`), each push followed by a MsgRingData doorbell.
//!
//! The loop reaps a whole batch of completions, handles each, then rings doorbells,
//! re-arms starved recvs and flushes every connection that queued bytes during the batch
//! (so all replies to one batch leave in one send per connection).
//!
//! Invariants:
//! - [`Core`] (everything but the ring) never pushes SQEs; it records what must be
//!   submitted (`dirty`, `starved`, `doorbells`) and the shard submits after the batch.
//! - A connection's slot is freed only when no operation of it is in the kernel.
//! - When the loop ends, every socket is shut down and `Ring::quiesce` cancels and reaps
//!   everything of this shard in the kernel before any fd is closed or buffer freed.
//! - The wheel follows the wall clock: a tick moves it by the ticks elapsed since `epoch`,
//!   and only a tick that expired (-ETIME) moves it at all.
//! - Nothing is queued after a connection's close frame (or HTTP refusal).

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use slab::Slab;

use crate::admin_service::AdminConn;
use crate::channels::Channels;
use crate::config::Config;
use crate::conn::end::End;
use crate::conn::{self, Conn, State};
use crate::fanout::{Fanout, Peers, Pending, PublishWindow, ShardMsg};
use crate::http::admin_request::AdminConfig;
use crate::http::handshake::{self, HandshakeError};
use crate::ring::driver::Driver;
use crate::ring::{sys, Completion, Owner, Ring, GEN_MASK, QUIESCE_MS};
use crate::route::RouteKind;
use crate::stats::{self, Counters};
use crate::timer::{Wheel, NEVER};
use crate::ws::{frame, Limits, OpCode, Role};

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
            Shard::start(setup).inspect_err(|_| shared.exited[index].store(true, Ordering::Release))
        },
        move |mut shard| {
            let report = shard.run();
            // The inbox goes with the shard: senders see it gone, then the admin shard
            // sees the flag and stops waiting for this shard's counts.
            drop(shard);
            shared_run.exited[index].store(true, Ordering::Release);
            report
        },
    )
}

/// A reactor over driver `D`: [`Ring`] in production, `FakeRing` in the unit tests. The
/// loop is monomorphised per driver, so the real path has no indirection.
struct Shard<D: Driver = Ring> {
    ring: D,
    core: Core,
    completions: Vec<Completion>,
}

impl Shard<Ring> {
    fn start(setup: Setup) -> Result<Shard<Ring>, String> {
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
        let mut core = Core::new(
            &setup.kind,
            i,
            setup.listen_fd,
            setup.conns_max,
            cfg,
            setup.shared,
        )
        .with_peers(setup.peers, setup.inbox);
        core.test_exit = failure == TestFailure::Run;
        Ok(Shard {
            ring,
            core,
            completions: Vec::with_capacity(1024),
        })
    }
}

impl<D: Driver> Shard<D> {
    fn run(&mut self) -> Report {
        let listen_fd = self.core.listen_fd.expect("listener at start");
        self.ring.accept_multi(listen_fd);
        self.core.accept_armed = true;
        self.ring.tick(Duration::from_millis(TICK_MS));
        loop {
            if let Err(e) = self.ring.submit_and_wait() {
                crate::elog!("ringpush shard={} error=ring_enter {e}", self.core.index);
                break;
            }
            self.batch();
            if self.core.finished() {
                break;
            }
        }
        // The listener stays open during a drain (late sockets hear the shutdown 503), and a
        // ring error leaves the accept armed: the quiesce cancels it with everything else,
        // so no connection is taken that nobody would serve.
        self.quiesce();
        self.core.accept_armed = false;
        self.core.close_everything();
        self.core.publish();
        self.core.report()
    }

    /// One turn of the loop after an enter: reaps every completion, handles them in the
    /// order they completed, then submits what the batch asked for (`after_batch`).
    fn batch(&mut self) {
        let mut batch = std::mem::take(&mut self.completions);
        self.ring.reap(&mut batch);
        for completion in batch.drain(..) {
            self.handle(completion);
        }
        self.completions = batch;
        self.after_batch();
    }

    fn handle(&mut self, completion: Completion) {
        match completion {
            Completion::Accept { res, more } => self.accept_complete(res, more),
            Completion::Recv {
                owner,
                res,
                more,
                bid,
                buf_more,
            } => self.recv_complete(owner, res, more, bid, buf_more),
            Completion::Send {
                owner,
                res,
                frame,
                offset,
            } => self.send_complete(owner, res, frame, offset),
            // The ring re-arms the tick itself; only an expiry moves the wheel, and it moves
            // to the wall clock, so a late or merged tick does not make deadlines drift.
            Completion::Tick { res, .. } if res == -libc::ETIME => self.core.tick(),
            Completion::Tick { res, more } => {
                self.core.counters.tick_errors += 1;
                let mode = self.ring.tick_mode();
                self.core.log(format_args!(
                    "event=tick_failed res={res} more={more} mode={mode:?} (re-armed after \
                     one interval)"
                ));
            }
            // A doorbell from another shard: its messages wait in our inbox.
            Completion::Msg { .. } => self.core.drain_inbox(),
            Completion::DoorbellFailed { target, res } => {
                // The target still drains its inbox on its next tick, so the messages are
                // late by at most a tick, not lost.
                self.core.counters.doorbell_failures += 1;
                self.core.log(format_args!(
                    "event=doorbell_failed target={target} res={res} (its tick drains the inbox)"
                ));
            }
            Completion::Unknown { user_data, res } => {
                self.core.counters.ring_unknown_completions += 1;
                self.core.log(format_args!(
                    "event=unknown_completion user_data={user_data:#x} res={res}"
                ));
            }
            Completion::SubmitFailed { errno } => {
                self.core.counters.ring_submit_errors += 1;
                self.core.log(format_args!(
                    "event=submit_failed errno={errno} (the SQEs stay queued)"
                ));
            }
            Completion::Cancel { .. } | Completion::Connect { .. } => {}
        }
    }

    /// Ends every operation of this shard in the kernel before its memory is freed: shuts
    /// every socket down (which ends its recv and send), then cancels and reaps for at most
    /// `QUIESCE_MS`. Dropping the ring would cancel nothing, since every file table holds
    /// its fd. If the kernel keeps something, the ring leaks its buffers and frames.
    fn quiesce(&mut self) {
        for (_, c) in self.core.conns.iter() {
            sys::shutdown(c.fd, libc::SHUT_RDWR);
        }
        let index = self.core.index;
        match self.ring.quiesce(Duration::from_millis(QUIESCE_MS)) {
            Ok(()) => {}
            Err(left) => {
                self.core.counters.ring_quiesce_timeouts += 1;
                crate::elog!(
                    "ringpush shard={index} error=ring_quiesce_gave_up {left} after \
                     {QUIESCE_MS} ms (its buffers and frames are leaked, not freed)"
                );
            }
        }
    }

    fn accept_complete(&mut self, res: i32, more: bool) {
        if !more {
            self.core.accept_armed = false;
        }
        if res >= 0 {
            if let Some(owner) = self.core.accepted(res) {
                debug_assert!(self.core.conns[owner.key as usize].has(conn::RECV_ARMED));
                self.ring.recv_multi(res, owner);
            }
            if !more && !self.core.stop_accepting {
                self.core.accept_retry_at = self.core.wheel.now();
            }
            return;
        }
        let errno = -res;
        if errno == libc::EMFILE || errno == libc::ENFILE {
            self.core.counters.accept_emfile += 1;
            self.core.log(format_args!(
                "event=accept_emfile errno={errno} (retrying from the timer)"
            ));
            self.core.accept_retry_at = self.core.wheel.now() + ACCEPT_RETRY_TICKS;
        } else if errno != libc::ECANCELED && !more {
            self.core.accept_retry_at = self.core.wheel.now() + 1;
        }
    }

    fn recv_complete(
        &mut self,
        owner: Owner,
        res: i32,
        more: bool,
        bid: Option<u16>,
        buf_more: bool,
    ) {
        let core = &mut self.core;
        let live = core.live(owner);
        if res > 0 {
            let bid = bid.expect("a recv with data names its buffer");
            // The buffer goes back to the kernel even when the connection is gone.
            self.ring.consume(bid, res as usize, buf_more, |data| {
                if live {
                    core.on_data(owner.key as usize, data);
                }
            });
        }
        if !live || more {
            return;
        }
        let key = owner.key as usize;
        debug_assert!(
            core.conns[key].has(conn::RECV_ARMED),
            "a recv ended that the connection did not arm"
        );
        core.conns[key].flags &= !conn::RECV_ARMED;
        if res > 0 {
            // The multishot ended for a reason other than EOF or an error (for example a CQ
            // overflow): arm it again so no data is left unread.
            if core.conns[key].state != State::Dead {
                core.counters.recv_rearmed += 1;
                debug_assert!(!core.conns[key].has(conn::RECV_ARMED));
                core.conns[key].flags |= conn::RECV_ARMED;
                self.ring.recv_multi(core.conns[key].fd, owner);
            } else {
                core.maybe_release(key);
            }
            return;
        }
        if res == -libc::ENOBUFS {
            core.counters.enobufs += 1;
            if core.conns[key].state != State::Dead {
                core.conns[key].flags |= conn::STARVED;
                core.starved.push_back(owner);
            } else {
                core.maybe_release(key);
            }
            return;
        }
        core.recv_ended(key, res);
    }

    fn send_complete(&mut self, owner: Owner, res: i32, frame: Bytes, offset: usize) {
        if !self.core.live(owner) {
            self.core.retire(&frame);
            return;
        }
        let key = owner.key as usize;
        let core = &mut self.core;
        debug_assert!(
            core.conns[key].has(conn::SEND_INFLIGHT),
            "a send completed that the connection did not have in flight"
        );
        core.conns[key].flags &= !conn::SEND_INFLIGHT;
        if core.conns[key].state == State::Dead {
            core.retire(&frame);
            core.maybe_release(key);
            return;
        }
        if res <= 0 {
            core.retire(&frame);
            // A send that fails means the peer reset or vanished.
            core.end(key, End::PeerGone);
            return;
        }
        core.counters.bytes_out += res as u64;
        let sent = offset + res as usize;
        if sent < frame.len() {
            // A short send: resume where the kernel stopped, keeping the queue order.
            core.conns[key].flags |= conn::SEND_INFLIGHT;
            self.ring.send(core.conns[key].fd, owner, frame, sent);
            return;
        }
        let c = &mut core.conns[key];
        c.queued_bytes = c.queued_bytes.saturating_sub(frame.len() as u32);
        let admin = c.route == RouteKind::Admin as u8;
        core.retire(&frame);
        core.mark_dirty(key);
        if admin {
            // A paused admin connection takes requests again once its answers drain.
            core.admin_sent(key);
        }
    }

    fn after_batch(&mut self) {
        let core = &mut self.core;
        if core.accept_retry_at != 0
            && core.wheel.now() >= core.accept_retry_at
            && !core.accept_armed
        {
            core.accept_retry_at = 0;
            if let (Some(fd), false) = (core.listen_fd, core.stop_accepting) {
                self.ring.accept_multi(fd);
                core.accept_armed = true;
            }
        }
        if core.stop_accepting {
            core.stop_accepting = false;
            if core.accept_armed {
                self.ring.cancel_accept();
            }
            if let Some(fd) = core.listen_fd.take() {
                sys::close(fd);
            }
        }
        let mut rang = false;
        for (target, ring) in core.doorbells.iter_mut().enumerate() {
            if std::mem::take(ring) {
                self.ring
                    .msg_ring(core.peers.ring_fds[target], target as u32, 1, 0);
                rang = true;
            }
        }
        if rang {
            // Other shards (the admin shard waiting for a publish count) act on these now,
            // not after this batch's sends have been queued and submitted.
            self.ring.submit_now();
        }
        // Re-arm starved receives a few at a time, oldest first, so a burst does not turn
        // into an ENOBUFS storm.
        let budget = (self.ring.buffer_count() as usize / 4).max(1);
        for _ in 0..budget {
            let Some(owner) = core.starved.pop_front() else {
                break;
            };
            if !core.live(owner) {
                continue;
            }
            let key = owner.key as usize;
            core.conns[key].flags &= !conn::STARVED;
            if core.conns[key].state == State::Dead {
                core.maybe_release(key);
                continue;
            }
            debug_assert!(!core.conns[key].has(conn::RECV_ARMED));
            core.conns[key].flags |= conn::RECV_ARMED;
            self.ring.recv_multi(core.conns[key].fd, owner);
        }
        let mut dirty = std::mem::take(&mut core.dirty);
        for key in dirty.drain(..) {
            if let Some(c) = core.conns.get_mut(key) {
                c.flags &= !conn::DIRTY;
            } else {
                continue;
            }
            if let Some((fd, owner, frame)) = core.next_send(key) {
                debug_assert!(core.conns[key].has(conn::SEND_INFLIGHT));
                self.ring.send(fd, owner, frame, 0);
            }
        }
        core.dirty = dirty;
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;

/// The shard minus its ring: connection state, channels, timers, counters.
pub(crate) struct Core {
    pub(crate) kind: ShardKind,
    pub(crate) index: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) listen_fd: Option<RawFd>,
    pub(crate) accept_armed: bool,
    pub(crate) accept_retry_at: u32,
    pub(crate) stop_accepting: bool,
    pub(crate) conns: Slab<Conn>,
    pub(crate) conns_max: usize,
    pub(crate) next_gen: u32,
    pub(crate) wheel: Wheel,
    pub(crate) due: Vec<Owner>,
    pub(crate) dirty: Vec<usize>,
    pub(crate) starved: VecDeque<Owner>,
    pub(crate) out: BytesMut,
    /// Bytes held by decoders reassembling messages; may overestimate (buffers dropped with
    /// their connection elsewhere are not subtracted) until `enforce_reassembly_budget`
    /// recounts.
    pub(crate) reassembly_bytes: usize,
    pub(crate) epoch: Instant,
    pub(crate) counters: Counters,
    pub(crate) handshake_us: Histogram<u64>,
    pub(crate) ping_rtt_us: Histogram<u64>,
    pub(crate) fanout_us: Histogram<u64>,
    pub(crate) hs_cfg: handshake::Config,
    pub(crate) admin_cfg: AdminConfig,
    pub(crate) limits: Limits,
    pub(crate) refusal_busy: Vec<u8>,
    /// The 503 a socket accepted during the drain gets (`HandshakeError::ShuttingDown`).
    pub(crate) refusal_shutdown: Vec<u8>,
    pub(crate) draining: Option<u32>,
    pub(crate) ticks_handshake: u32,
    pub(crate) ticks_ping: u32,
    pub(crate) ticks_idle: u32,
    pub(crate) ticks_close: u32,
    pub(crate) log_budget: u32,
    pub(crate) log_suppressed: u64,
    // Fan-out state (fanout.rs).
    pub(crate) peers: Arc<Peers>,
    pub(crate) inbox: Option<Receiver<ShardMsg>>,
    pub(crate) doorbells: Vec<bool>,
    pub(crate) channels: Channels,
    pub(crate) fanouts: HashMap<usize, Fanout>,
    pub(crate) merged: HashMap<usize, Vec<usize>>,
    pub(crate) client_frames: Vec<Bytes>,
    // Admin state (admin_service.rs).
    pub(crate) pending: Slab<Pending>,
    pub(crate) admin_conns: HashMap<usize, AdminConn>,
    /// Admin connections in accept order that may not have completed a request yet: the
    /// eviction candidates when the admin listener is full (stale entries are skipped).
    pub(crate) admin_unproven: VecDeque<Owner>,
    pub(crate) ticks_admin_request: u32,
    /// Admin shard: client shards already seen exited (logged once each).
    pub(crate) shards_gone: Vec<bool>,
    /// Client shards: the current `--client-publish-rate` window of each connection that
    /// published (by slab key; removed when the slot is freed).
    pub(crate) publish_windows: HashMap<usize, PublishWindow>,
    /// Test hook: leave the loop on the next tick, as on a ring error.
    test_exit: bool,
}

fn ticks(d: Duration) -> u32 {
    (d.as_millis() as u64)
        .div_ceil(TICK_MS)
        .clamp(1, u32::MAX as u64 / 4) as u32
}

impl Core {
    fn new(
        kind: &ShardKind,
        index: usize,
        listen_fd: RawFd,
        conns_max: usize,
        cfg: Arc<Config>,
        shared: Arc<Shared>,
    ) -> Core {
        let hs_cfg = handshake::Config {
            header_bytes_max: cfg.max_header_bytes,
            allow_origins: cfg.allow_origins.clone(),
            subprotocols: cfg.subprotocols.clone(),
        };
        let admin_cfg = AdminConfig {
            head_bytes_max: cfg.max_header_bytes,
            body_bytes_max: cfg.max_message,
            token: cfg.admin_token.clone(),
        };
        let mut refusal_busy = Vec::new();
        HandshakeError::Overloaded.write_refusal(&mut refusal_busy);
        let mut refusal_shutdown = Vec::new();
        HandshakeError::ShuttingDown.write_refusal(&mut refusal_shutdown);
        Core {
            kind: *kind,
            index,
            listen_fd: Some(listen_fd),
            accept_armed: false,
            accept_retry_at: 0,
            stop_accepting: false,
            conns: Slab::new(),
            conns_max,
            next_gen: 1,
            wheel: Wheel::new(WHEEL_SLOTS),
            due: Vec::new(),
            dirty: Vec::new(),
            starved: VecDeque::new(),
            out: BytesMut::new(),
            reassembly_bytes: 0,
            epoch: Instant::now(),
            counters: Counters::new(),
            handshake_us: stats::latency_histogram(),
            ping_rtt_us: stats::latency_histogram(),
            fanout_us: stats::latency_histogram(),
            hs_cfg,
            admin_cfg,
            limits: Limits {
                role: Role::Server,
                message_bytes_max: cfg.max_message,
            },
            refusal_busy,
            refusal_shutdown,
            draining: None,
            ticks_handshake: ticks(cfg.handshake_timeout),
            ticks_ping: ticks(cfg.ping_interval),
            ticks_idle: ticks(cfg.idle_timeout),
            ticks_close: ticks(cfg.close_timeout),
            log_budget: LOG_LINES_PER_SEC_MAX,
            log_suppressed: 0,
            peers: Arc::new(Peers::default()),
            inbox: None,
            doorbells: Vec::new(),
            channels: Channels::new(),
            fanouts: HashMap::new(),
            merged: HashMap::new(),
            client_frames: Vec::new(),
            pending: Slab::new(),
            admin_conns: HashMap::new(),
            admin_unproven: VecDeque::new(),
            ticks_admin_request: ticks(cfg.admin_request_timeout),
            shards_gone: Vec::new(),
            publish_windows: HashMap::new(),
            test_exit: false,
            cfg,
            shared,
        }
    }

    fn with_peers(mut self, peers: Arc<Peers>, inbox: Receiver<ShardMsg>) -> Core {
        self.doorbells = vec![false; peers.ring_fds.len()];
        self.shards_gone = vec![false; peers.clients];
        self.peers = peers;
        self.inbox = Some(inbox);
        self
    }

    pub(crate) fn now_us(&self) -> u32 {
        self.epoch.elapsed().as_micros() as u32
    }

    /// Prints one log line, at most `LOG_LINES_PER_SEC_MAX` a second (hostile clients must
    /// not turn the log into the bottleneck); the rest are counted.
    pub(crate) fn log(&mut self, args: std::fmt::Arguments<'_>) {
        if self.log_budget == 0 {
            self.log_suppressed += 1;
            return;
        }
        self.log_budget -= 1;
        crate::elog!("ringpush shard={} {args}", self.index);
    }

    /// Whether `owner` still names the slot's current occupant.
    pub(crate) fn live(&self, owner: Owner) -> bool {
        self.conns
            .get(owner.key as usize)
            .is_some_and(|c| c.gen & GEN_MASK == owner.gen)
    }

    pub(crate) fn owner(&self, key: usize) -> Owner {
        Owner {
            key: key as u32,
            gen: self.conns[key].gen & GEN_MASK,
        }
    }

    fn finished(&self) -> bool {
        if self.test_exit {
            return true;
        }
        let Some(end) = self.draining else {
            return false;
        };
        match self.kind {
            ShardKind::Client => self.conns.is_empty() || self.wheel.now() > end + DRAIN_REAP_TICKS,
            // The admin listener answers (healthz 503, publishes 503) until every client
            // shard has exited, however it ended: drained, stopped on a ring error, or never
            // started. Requests still waiting count exited shards as 0 (`count_exited_shards`).
            ShardKind::Admin => {
                self.shared.exited[..self.peers.clients]
                    .iter()
                    .all(|done| done.load(Ordering::Acquire))
                    && self.pending.is_empty()
            }
        }
    }

    /// A new socket from the listener: refused at the cap, else given a slot and a
    /// deadline. Returns the owner to arm its recv for.
    fn accepted(&mut self, fd: RawFd) -> Option<Owner> {
        self.counters.accepted += 1;
        if self.draining.is_some() && self.kind == ShardKind::Client {
            // A fresh socket's send buffer is empty, so this small response goes out whole.
            let _ = sys::send_now(fd, &self.refusal_shutdown);
            sys::close(fd);
            self.counters.refused[HandshakeError::ShuttingDown.slot()] += 1;
            self.log(format_args!("event=refused reason=shutting_down"));
            return None;
        }
        // A full admin listener makes room by evicting a connection that has not completed
        // a request, so a publisher is never locked out by sockets that only hold slots. The
        // evicted slot is freed once its recv ends, so the slab may briefly hold a few more
        // than the cap; the connections still open never exceed it.
        let full = self.conns.len() >= self.conns_max
            && !(self.kind == ShardKind::Admin && self.admin_evict_unproven());
        if full {
            // A fresh socket's send buffer is empty, so this small response goes out whole.
            let _ = sys::send_now(fd, &self.refusal_busy);
            sys::close(fd);
            self.counters.refused_at_cap += 1;
            let open = self.conns.len();
            self.log(format_args!("event=refused reason=at_capacity open={open}"));
            return None;
        }
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        let now = self.wheel.now();
        let key = self.conns.insert(Conn::new(fd, gen, self.now_us(), now));
        self.conns[key].flags |= conn::RECV_ARMED;
        self.counters.open += 1;
        match self.kind {
            ShardKind::Client => self.arm(key, now + self.ticks_handshake),
            ShardKind::Admin => {
                let c = &mut self.conns[key];
                c.state = State::Open;
                c.route = RouteKind::Admin as u8;
                self.arm(key, now + self.ticks_idle);
                self.admin_accepted(key);
            }
        }
        Some(self.owner(key))
    }

    /// Sets the connection's deadline; adds a wheel entry only when it moves earlier.
    pub(crate) fn arm(&mut self, key: usize, at: u32) {
        let owner = self.owner(key);
        let c = &mut self.conns[key];
        c.deadline = at;
        if c.wheel_at == 0 || at < c.wheel_at {
            c.wheel_at = self.wheel.schedule(owner, at);
        }
    }

    /// The multishot recv ended with EOF (0) or an error.
    fn recv_ended(&mut self, key: usize, res: i32) {
        let state = self.conns[key].state;
        let admin = self.conns[key].route == RouteKind::Admin as u8;
        match state {
            State::Dead => self.maybe_release(key),
            State::Linger => self.finish(key),
            // The peer finished sending; once our queue drains we FIN and are done.
            State::Closing if res == 0 => self.fin_when_drained(key),
            State::Open if admin && res == 0 => self.end(key, End::AdminPeerClosed),
            _ => {
                // The peer went without a close frame (EOF or reset).
                self.end(key, End::PeerGone);
            }
        }
    }

    /// A clean end: the close handshake (or refusal) is complete.
    pub(crate) fn finish(&mut self, key: usize) {
        self.leave(key);
        let c = &mut self.conns[key];
        sys::shutdown(c.fd, libc::SHUT_RDWR);
        c.state = State::Dead;
        self.maybe_release(key);
    }

    /// An abnormal end: shut the socket down both ways (which also ends an armed recv).
    /// `why` is logged when given and the connection was upgraded. Called through
    /// [`Core::end`], which decides `why`.
    pub(crate) fn abort(&mut self, key: usize, why: Option<std::fmt::Arguments<'_>>) {
        let c = &mut self.conns[key];
        if c.state == State::Dead {
            return;
        }
        let upgraded = c.has(conn::UPGRADED);
        sys::shutdown(c.fd, libc::SHUT_RDWR);
        c.state = State::Dead;
        self.counters.aborted += 1;
        if let (true, Some(why)) = (upgraded, why) {
            self.log(why);
        }
        self.leave(key);
        self.maybe_release(key);
    }

    /// Frees the slot once no operation of it is in the kernel.
    pub(crate) fn maybe_release(&mut self, key: usize) {
        let c = &self.conns[key];
        debug_assert_eq!(c.state, State::Dead);
        if c.has(conn::RECV_ARMED) || c.has(conn::SEND_INFLIGHT) {
            return;
        }
        if !self.admin_conns.is_empty() {
            self.admin_conns.remove(&key);
        }
        if !self.publish_windows.is_empty() {
            self.publish_windows.remove(&key);
        }
        let mut c = self.conns.remove(key);
        for frame in c.queue.take_all() {
            self.retire(&frame);
        }
        sys::close(c.fd);
        self.counters.open -= 1;
    }

    /// A tick expired: advance the wheel to the wall clock (one step per `TICK_MS` elapsed
    /// since `epoch`, however many expiries that took), then drain the inbox (in case a
    /// doorbell was lost), publish counters, and start the drain when the main thread asks.
    fn tick(&mut self) {
        let target = (self.epoch.elapsed().as_millis() / u128::from(TICK_MS)) as u32 + 1;
        while self.wheel.now() < target {
            self.tick_step();
        }
        self.drain_inbox();
        if self.kind == ShardKind::Admin {
            self.count_exited_shards();
        }
        if self.test_exit {
            self.log(format_args!(
                "event=shard_stopped reason=test_hook ({TEST_FAIL_SHARD_ENV})"
            ));
        }
        self.publish();
        if self.draining.is_none() && self.shared.shutdown.load(Ordering::Relaxed) {
            self.start_drain();
        }
    }

    /// One step of the wheel: expire due connections, refill the log budget each second,
    /// abort what is left when the drain deadline comes.
    fn tick_step(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(&mut due);
        let now = self.wheel.now();
        for owner in due.drain(..) {
            if self.live(owner) {
                self.expire(owner.key as usize, now);
            }
        }
        self.due = due;
        if now % (1000 / TICK_MS as u32) == 0 {
            if self.log_suppressed > 0 {
                crate::elog!(
                    "ringpush shard={} event=log_suppressed lines={}",
                    self.index,
                    self.log_suppressed
                );
                self.log_suppressed = 0;
            }
            self.log_budget = LOG_LINES_PER_SEC_MAX;
        }
        if let Some(end) = self.draining {
            if now == end && self.kind == ShardKind::Client {
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                let left = keys.len();
                self.log(format_args!("event=drain_timeout aborting={left}"));
                for key in keys {
                    self.end(key, End::DrainAbort);
                }
            }
        }
    }

    fn expire(&mut self, key: usize, now: u32) {
        let now_us = self.now_us();
        let c = &mut self.conns[key];
        if c.wheel_at != now {
            return;
        }
        c.wheel_at = 0;
        if c.deadline == NEVER {
            return;
        }
        if now < c.deadline {
            let at = c.deadline;
            self.arm(key, at);
            return;
        }
        match c.state {
            State::Handshake => {
                self.end(key, End::HandshakeTimeout);
            }
            State::Open if c.route == RouteKind::Admin as u8 => self.admin_expire(key, now),
            State::Open => {
                let ping_out = c.has(conn::PING_OUT);
                let next = c.last_seen
                    + if ping_out {
                        self.ticks_idle
                    } else {
                        self.ticks_ping
                    };
                if now < next {
                    self.arm(key, next);
                } else if ping_out || now >= c.last_seen + self.ticks_idle {
                    if ping_out {
                        self.counters.pings_lost += 1;
                    }
                    self.end(key, End::IdleTimeout);
                } else {
                    let payload = crate::conn::protocol::ping_payload(key, c.gen, now_us);
                    c.flags |= conn::PING_OUT;
                    let at = c.last_seen + self.ticks_idle;
                    self.counters.pings_sent += 1;
                    self.push_frame(key, frame::encode(OpCode::Ping, &payload));
                    self.arm(key, at);
                }
            }
            State::Closing | State::Linger => {
                let state = c.state;
                self.end_logged(
                    key,
                    End::CloseTimeout,
                    Some(format_args!("state={state:?}")),
                );
            }
            State::Dead => {}
        }
    }

    fn start_drain(&mut self) {
        let now = self.wheel.now();
        self.draining = Some(now + ticks(self.cfg.drain_timeout));
        if self.kind == ShardKind::Admin {
            // The admin listener keeps answering (healthz says 503) until the clients are
            // drained; `finished` ends it.
            return;
        }
        if self.cfg.reuse_port_with_others {
            // Another process shares the port (an overlapping restart): close the listener
            // so the kernel sends every new client there.
            self.stop_accepting = true;
        }
        // Otherwise the listener stays open until the shard exits: a client that connects
        // during the drain hears 503 "shutting down" (`accepted`), not a reset.
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns[key].state {
                State::Open => self.end(key, End::Shutdown),
                State::Handshake => self.end(key, End::DrainHandshake),
                _ => {}
            }
        }
    }

    /// Closes every socket and the listener. Runs after `Shard::quiesce`, so no operation
    /// of ours refers to them any more, and each socket was shut down before its close.
    fn close_everything(&mut self) {
        for c in self.conns.drain() {
            sys::shutdown(c.fd, libc::SHUT_RDWR);
            sys::close(c.fd);
        }
        if let Some(fd) = self.listen_fd.take() {
            sys::close(fd);
        }
        self.counters.open = 0;
    }

    fn publish(&mut self) {
        if let Ok(mut slot) = self.shared.counters[self.index].lock() {
            slot.clone_from(&self.counters);
        }
    }

    fn report(&mut self) -> Report {
        Report {
            counters: self.counters.clone(),
            handshake_us: self.handshake_us.clone(),
            ping_rtt_us: self.ping_rtt_us.clone(),
            fanout_us: self.fanout_us.clone(),
        }
    }
}
