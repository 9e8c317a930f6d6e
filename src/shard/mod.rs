//! One shard: a reactor thread that owns an io_uring, a listener, a file table, a slab of
//! connections and a timer wheel, and runs accept → handshake → recv → parse → dispatch →
//! send → timers → shutdown for every connection it accepted.
//!
//! Client shards hold WebSocket connections; the admin shard runs the same loop on the
//! admin listener and speaks plain HTTP (see `admin_service/`). Shards talk to each other
//! only through their inboxes (`fanout.rs`), each push followed by a MsgRingData doorbell.
//! This file holds the thread and the loop (`Shard<D: Driver>`); `state.rs` holds the
//! shard's state without its ring (`Core`) and the connection life cycle; `tests.rs` drives
//! the loop on `FakeRing`.
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

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::config::Config;
use crate::conn::end::End;
use crate::conn::{self, State};
use crate::fanout::{Peers, ShardMsg};
use crate::ring::driver::Driver;
use crate::ring::{sys, Completion, Owner, Ring, QUIESCE_MS};
use crate::route::RouteKind;
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
mod admin_tests;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use state::Core;
