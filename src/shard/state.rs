//! The shard's state minus its ring (`Core`): connections, channels, timers, admin state and
//! counters, and the connection life cycle (`accepted`, `recv_ended`, `finish`, `abort`,
//! `maybe_release`, `expire`, `tick`, `start_drain`).
//!
//! Invariants:
//! - `Core` never pushes SQEs; it records what must be submitted (`dirty`, `starved`,
//!   `doorbells`) and the shard submits after the batch.
//! - A connection's slot is freed only when no operation of it is in the kernel.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
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
use crate::ring::{sys, Owner, GEN_MASK};
use crate::route::RouteKind;
use crate::stats::{self, Counters};
use crate::timer::{Wheel, NEVER};
use crate::ws::{frame, Limits, OpCode, Role};

use super::*;

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
    // Admin state (admin_service/).
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
    pub(super) test_exit: bool,
}

fn ticks(d: Duration) -> u32 {
    (d.as_millis() as u64)
        .div_ceil(TICK_MS)
        .clamp(1, u32::MAX as u64 / 4) as u32
}

impl Core {
    pub(super) fn new(
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

    pub(super) fn with_peers(mut self, peers: Arc<Peers>, inbox: Receiver<ShardMsg>) -> Core {
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

    pub(super) fn finished(&self) -> bool {
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
    pub(super) fn accepted(&mut self, fd: RawFd) -> Option<Owner> {
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
    pub(super) fn recv_ended(&mut self, key: usize, res: i32) {
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
    pub(super) fn tick(&mut self) {
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
    pub(super) fn tick_step(&mut self) {
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

    pub(super) fn expire(&mut self, key: usize, now: u32) {
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

    pub(super) fn start_drain(&mut self) {
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
    pub(super) fn close_everything(&mut self) {
        for c in self.conns.drain() {
            sys::shutdown(c.fd, libc::SHUT_RDWR);
            sys::close(c.fd);
        }
        if let Some(fd) = self.listen_fd.take() {
            sys::close(fd);
        }
        self.counters.open = 0;
    }

    pub(super) fn publish(&mut self) {
        if let Ok(mut slot) = self.shared.counters[self.index].lock() {
            slot.clone_from(&self.counters);
        }
    }

    pub(super) fn report(&mut self) -> Report {
        Report {
            counters: self.counters.clone(),
            handshake_us: self.handshake_us.clone(),
            ping_rtt_us: self.ping_rtt_us.clone(),
            fanout_us: self.fanout_us.clone(),
        }
    }
}
