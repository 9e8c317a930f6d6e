//! The shard's state minus its ring (`Core`): connections, channels, timers, admin state and
//! counters, and the parts of the connection life cycle both node services share
//! (`accept_complete`, `admit`, `refuse_socket`, `recv_ended`, `finish`, `abort`,
//! `maybe_release`, `advance`, `tick_end`, the shard's own submissions in `before_flush`).
//!
//! Invariants:
//! - `Core` pushes SQEs only in `before_flush` (accept, doorbells), which the skeleton calls
//!   after a batch; the rest it records (dirty, starved, doorbells).
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

use crate::admin_service::{AdminConn, BroadcastWait, Query};
use crate::admission::{ConnRate, RateLimits};
use crate::auth::refusal::LOG_LINES_PER_S_DEFAULT;
use crate::auth::{GrantInterner, LogBudget, ScopeInterner};
use crate::channels::Channels;
use crate::config::Config;
use crate::conn::admission::ProxyWait;
use crate::conn::end::End;
use crate::conn::json::JsonConn;
use crate::conn::{self, Conn, State};
use crate::fanout::{Fanout, Peers, Pending, PublishWindow, ShardMsg};
use crate::history::Position;
use crate::http::admin_request::AdminConfig;
use crate::http::demo::Demo;
use crate::http::handshake::{self, HandshakeError};
use crate::json_proto::{Command, CommandError};
use crate::reactor::Conns;
use crate::ring::{sys, Owner};
use crate::stats::{self, Counters};
use crate::timer::Wheel;
use crate::ws::{Limits, Role};

use super::*;

/// The test hook that stops a shard's loop as a ring error would (`TEST_FAIL_SHARD_ENV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TestExit {
    /// Not asked for (production).
    No,
    /// Stop at the next tick, logging `event=shard_stopped`.
    OnTick,
    /// The tick logged it: the loop ends.
    Now,
}

/// A service's handling of a connection whose deadline came (`Core::advance`).
pub(crate) type Expire = fn(&mut Core, usize, u32);

/// The shard minus its ring: connection state, channels, timers, counters.
pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) listen_fd: Option<RawFd>,
    pub(crate) accept_armed: bool,
    pub(crate) accept_retry_at: u32,
    pub(crate) stop_accepting: bool,
    /// The connections (the skeleton's part: slab, generations, dirty and starved lists).
    pub(crate) conns: Conns<Conn>,
    pub(crate) conns_max: usize,
    /// The connections' timers; an entry is a slab key (see timer.rs).
    pub(crate) wheel: Wheel<u32>,
    pub(crate) due: Vec<u32>,
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
    /// The drain's deadline tick: with `--drain-spread`, the end of the spread plus
    /// `--drain-timeout`; without, the drain's start plus `--drain-timeout`.
    pub(crate) draining: Option<u32>,
    /// A `--drain-spread` drain's progress (`spread.rs`).
    pub(crate) spread: super::spread::Spread,
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
    pub(crate) channels: Channels<Position>,
    pub(crate) fanouts: HashMap<usize, Fanout>,
    pub(crate) merged: HashMap<usize, Vec<usize>>,
    pub(crate) client_frames: Vec<Bytes>,
    // Admin state (admin_service/).
    pub(crate) pending: Slab<Pending>,
    /// Admin shard: channels requests waiting for the client shards' censuses.
    pub(crate) queries: Slab<Query>,
    /// Admin shard: broadcasts waiting for their channels' counts.
    pub(crate) broadcasts: Slab<BroadcastWait>,
    /// Admin shard: `pending` id of each channel's publish of a broadcast → (broadcast id,
    /// its index among the broadcast's channels).
    pub(crate) broadcast_parts: HashMap<u32, (u32, usize)>,
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
    /// Client shards: each JSON-mode connection's subscriptions and malformed-command count
    /// (by slab key; removed when the slot is freed).
    pub(crate) json_conns: HashMap<usize, JsonConn>,
    /// Shard-relative microseconds at accept of each connection still in its handshake
    /// (the handshake latency), by slab key: removed at the upgrade or when the slot is
    /// freed, so an open connection keeps nothing here.
    pub(crate) accepted_us: HashMap<usize, u32>,
    /// The JSON commands of the receive being handled, parsed in the decoder's callback.
    pub(crate) json_commands: Vec<Result<Command, CommandError>>,
    /// Admin shard: (request, shard) counts of gone shards met under the history's lock,
    /// answered once it is released (`fanout.rs`).
    pub(crate) gone_counts: Vec<(u32, usize)>,
    /// Admin shard, with `--broker`: the `pending` id of each brokered publish by its
    /// sequence number (the id the broker's messages carry back).
    pub(crate) broker_waits: HashMap<u32, u32>,
    /// Client shards, with `--broker`: JSON subscriptions waiting for their channel's
    /// position, by ticket (`conn/json_broker.rs`), and the next ticket.
    pub(crate) broker_joins: HashMap<u64, crate::conn::json_broker::BrokerJoin>,
    pub(crate) broker_tickets: u64,
    /// Client shards, with `--broker`: JSON publishes waiting for Redis, by sequence number.
    pub(crate) broker_publishes: HashMap<u32, crate::conn::json_broker::BrokerPublish>,
    /// Test hook: leave the loop on the next tick, as on a ring error.
    pub(super) test_exit: TestExit,
    /// Client shards, with auth on: what each live connection may do (its token's grant or
    /// the anonymous scope), by slab key; removed when the slot is freed.
    pub(crate) access: crate::conn::auth::AccessByKey,
    /// The token scopes this shard's connections hold, shared per equal claims.
    pub(crate) scopes: ScopeInterner,
    /// The token grants this shard's connections hold, shared per equal tokens.
    pub(crate) grants: GrantInterner,
    /// The token refusals' log lines (at most a few a second).
    pub(crate) token_log: LogBudget,
    /// Client shards, with a per-address limit on: the address slot each connection holds
    /// in `Shared::addresses`, by slab key (`conn::admission::NO_ADDRESS` for none); given
    /// back when the slot is freed.
    pub(crate) admitted: Vec<u128>,
    /// Client shards: connections from a `--trusted-proxy` peer whose client is not
    /// decided yet (by slab key).
    pub(crate) proxied: HashMap<usize, ProxyWait>,
    /// Client shards: each connection's control-frame and message counts in the current
    /// second, by slab key (grown when a connection first sends a counted frame).
    pub(crate) conn_rates: Vec<ConnRate>,
    /// `--max-control-rate` and `--max-message-rate`.
    pub(crate) rate_limits: RateLimits,
}

fn ticks(d: Duration) -> u32 {
    (d.as_millis() as u64)
        .div_ceil(TICK_MS)
        .clamp(1, u32::MAX as u64 / 4) as u32
}

impl Core {
    pub(super) fn new(
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
            tokens: shared.auth.admin_tokens.clone(),
            demo: if cfg.no_demo {
                Demo::Off
            } else {
                Demo::Served {
                    ws_port: cfg.listen.port(),
                }
            },
        };
        let mut refusal_busy = Vec::new();
        HandshakeError::Overloaded.write_refusal(&mut refusal_busy);
        let mut refusal_shutdown = Vec::new();
        HandshakeError::ShuttingDown.write_refusal(&mut refusal_shutdown);
        Core {
            index,
            listen_fd: Some(listen_fd),
            accept_armed: false,
            accept_retry_at: 0,
            stop_accepting: false,
            conns: Conns::new(),
            conns_max,
            wheel: Wheel::new(WHEEL_SLOTS),
            due: Vec::new(),
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
            spread: super::spread::Spread::default(),
            ticks_handshake: ticks(cfg.handshake_timeout),
            ticks_ping: ticks(cfg.ping_interval),
            ticks_idle: ticks(cfg.idle_timeout),
            ticks_close: ticks(cfg.close_timeout),
            log_budget: LOG_LINES_PER_SEC_MAX,
            log_suppressed: 0,
            peers: Arc::new(Peers::default()),
            inbox: None,
            doorbells: Vec::new(),
            channels: Channels::default(),
            fanouts: HashMap::new(),
            merged: HashMap::new(),
            client_frames: Vec::new(),
            pending: Slab::new(),
            queries: Slab::new(),
            broadcasts: Slab::new(),
            broadcast_parts: HashMap::new(),
            admin_conns: HashMap::new(),
            admin_unproven: VecDeque::new(),
            ticks_admin_request: ticks(cfg.admin_request_timeout),
            shards_gone: Vec::new(),
            publish_windows: HashMap::new(),
            json_conns: HashMap::new(),
            accepted_us: HashMap::new(),
            json_commands: Vec::new(),
            gone_counts: Vec::new(),
            broker_waits: HashMap::new(),
            broker_joins: HashMap::new(),
            broker_tickets: 0,
            broker_publishes: HashMap::new(),
            test_exit: TestExit::No,
            access: Default::default(),
            scopes: ScopeInterner::default(),
            grants: GrantInterner::default(),
            token_log: LogBudget::new(LOG_LINES_PER_S_DEFAULT),
            admitted: Vec::new(),
            proxied: HashMap::new(),
            conn_rates: Vec::new(),
            rate_limits: cfg.rate_limits(),
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

    /// The `--drain-spread` window in ticks; 0 without a spread.
    pub(crate) fn spread_ticks(&self) -> u32 {
        if self.cfg.drain_spread.is_zero() {
            0
        } else {
            ticks(self.cfg.drain_spread)
        }
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
        self.conns.live(owner).is_some()
    }

    pub(crate) fn owner(&self, key: usize) -> Owner {
        self.conns.owner(key)
    }

    /// Whether the loop is over, as far as the shard's own state says: a test hook asked,
    /// or the drain has started and `drained` (the service's own condition) holds.
    pub(crate) fn finished(&self, drained: impl FnOnce(&Core, u32) -> bool) -> bool {
        if self.test_exit == TestExit::Now {
            return true;
        }
        match self.draining {
            Some(end) => drained(self, end),
            None => false,
        }
    }

    /// Sets the connection's deadline; adds a wheel entry only when it moves earlier.
    pub(crate) fn arm(&mut self, key: usize, at: u32) {
        let at = self.clamp_to_token_expiry(key, at);
        self.wheel.arm(key as u32, &mut self.conns[key].timer, at);
    }

    /// The multishot recv ended with EOF (0) or an error.
    pub(crate) fn recv_ended(&mut self, key: usize, res: i32) {
        match self.conns[key].state {
            State::Dead => self.maybe_release(key),
            State::Linger => self.finish(key),
            // The peer finished sending; once our queue drains we FIN and are done.
            State::Closing if res == 0 => self.fin_when_drained(key),
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
        if !self.access.is_empty() {
            self.access.remove(&key);
        }
        if !self.json_conns.is_empty() {
            self.json_conns.remove(&key);
        }
        if !self.accepted_us.is_empty() {
            self.accepted_us.remove(&key);
        }
        self.release_address(key);
        let mut c = self.conns.remove(key);
        for frame in c.queue.take_all() {
            self.retire(&frame);
        }
        sys::close(c.fd);
        self.counters.open -= 1;
    }

    /// A tick expired: advance the wheel to the wall clock (one step per `TICK_MS` elapsed
    /// since `epoch`, however many expiries that took). `expire` is the service's handling
    /// of a connection whose wheel entry came due, `stepped` what it does after each step.
    pub(crate) fn advance(&mut self, expire: Expire, stepped: fn(&mut Core, u32)) {
        let target = (self.epoch.elapsed().as_millis() / u128::from(TICK_MS)) as u32 + 1;
        while self.wheel.now() < target {
            self.tick_step(expire);
            stepped(self, self.wheel.now());
        }
    }

    /// The end of a tick, after the service's own work: the test hook's log line, the
    /// counters published, and the drain started when the main thread asks. Returns
    /// whether the drain started now.
    pub(crate) fn tick_end(&mut self) -> bool {
        if self.test_exit == TestExit::OnTick {
            self.test_exit = TestExit::Now;
            self.log(format_args!(
                "event=shard_stopped reason=test_hook ({TEST_FAIL_SHARD_ENV})"
            ));
        }
        self.publish();
        if self.draining.is_none() && self.shared.shutdown.load(Ordering::Relaxed) {
            let now = self.wheel.now();
            // --drain-timeout counts from the end of the spread: every connection closed
            // in the trickle has the whole timeout for its close handshake.
            self.draining = Some(now + self.spread_ticks() + ticks(self.cfg.drain_timeout));
            return true;
        }
        false
    }

    /// One step of the wheel: expire due connections, refill the log budget each second.
    fn tick_step(&mut self, expire: Expire) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(&mut due);
        let now = self.wheel.now();
        for entry in due.drain(..) {
            let key = entry as usize;
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if self.wheel.due(entry, &mut c.timer) {
                expire(self, key, now);
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
    }

    /// The deadlines every service shares: the handshake's and the close handshake's.
    pub(crate) fn expire_unopened(&mut self, key: usize) {
        match self.conns[key].state {
            State::Handshake => {
                self.end(key, End::HandshakeTimeout);
            }
            state @ (State::Closing | State::Linger) => {
                self.end_logged(
                    key,
                    End::CloseTimeout,
                    Some(format_args!("state={state:?}")),
                );
            }
            State::Open | State::Dead => {}
        }
    }

    /// Closes every socket and the listener. Runs after the shard's quiesce, so no operation
    /// of ours refers to them any more, and each socket was shut down before its close.
    pub(super) fn close_everything(&mut self) {
        for address in std::mem::take(&mut self.admitted) {
            if address != crate::conn::admission::NO_ADDRESS {
                self.shared.addresses.release_key(address);
            }
        }
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
