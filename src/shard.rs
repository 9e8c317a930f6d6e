//! One shard: a reactor thread that owns an io_uring, a listener, a file table, a slab of
//! connections and a timer wheel, and runs accept → handshake → recv → parse → reply →
//! send → timers → shutdown for every connection it accepted.
//!
//! The loop reaps a whole batch of completions, handles each, then re-arms starved recvs
//! and flushes every connection that queued bytes during the batch (so all replies to one
//! batch leave in one send per connection).
//!
//! Invariants:
//! - [`Core`] (everything but the ring) never pushes SQEs; it records what must be
//!   submitted (`dirty`, `starved`) and the shard submits after the batch.
//! - A connection's slot is freed only when no operation of it is in the kernel.
//! - Nothing is queued after a connection's close frame (or HTTP refusal).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use slab::Slab;

use crate::config::Config;
use crate::conn::{self, Conn, Partial, State};
use crate::http::handshake::{self, HandshakeError};
use crate::ring::{sys, Completion, Owner, Ring, GEN_MASK};
use crate::route::{self, Route};
use crate::stats::{self, Counters};
use crate::timer::{Wheel, NEVER};
use crate::ws::{frame, CloseCode, Decoder, Event, Limits, OpCode, Role};

/// Length of one timer tick.
pub const TICK_MS: u64 = 50;
/// Slots in the timer wheel: 2048 ticks of 50 ms cover 102 s, beyond the idle default.
const WHEEL_SLOTS: usize = 2048;
/// Replies queued for one connection are merged into one send up to this many bytes.
const COALESCE_BYTES_MAX: usize = 64 * 1024;
/// Log lines a shard prints per second at most; the rest are counted and summarised.
const LOG_LINES_PER_SEC_MAX: u32 = 20;
/// Ticks between retries of an accept that ended on EMFILE.
const ACCEPT_RETRY_TICKS: u32 = 2;

/// State shared between the main thread and the shards: the shutdown flag and a copy of
/// each shard's counters, refreshed once a second.
pub struct Shared {
    /// Set by the main thread on SIGINT / SIGTERM.
    pub shutdown: AtomicBool,
    /// Per shard: its counters as of its last publication.
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
}

/// Everything a shard thread needs, prepared by the main thread before it unshares.
pub struct Setup {
    /// Shard index.
    pub index: usize,
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
}

/// How a close we start ends the TCP connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CloseMode {
    /// Wait for the peer's close frame (or the close deadline), then FIN.
    Graceful,
    /// FIN as soon as our close frame is sent (the peer broke a rule or is too slow).
    Fail,
}

/// Thread body: pins, takes its own file table, enables the ring, registers buffers,
/// reports readiness on `ready` and runs the loop until shutdown completes.
pub fn spawn(
    setup: Setup,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::thread::JoinHandle<Option<Report>> {
    let name = format!("ringpush-shard-{}", setup.index);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut shard = match Shard::start(setup) {
                Ok(shard) => shard,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            Some(shard.run())
        })
        .expect("spawning a shard thread")
}

struct Shard {
    ring: Ring,
    core: Core,
    completions: Vec<Completion>,
}

impl Shard {
    fn start(setup: Setup) -> Result<Shard, String> {
        let i = setup.index;
        if let Some(core) = setup.core {
            if !core_affinity::set_for_current(core) {
                eprintln!("ringpush shard={i} warn=pin_failed core={}", core.id);
            }
        }
        sys::unshare_file_table()
            .map_err(|e| format!("shard {i}: unshare(CLONE_FILES) failed: {e}"))?;
        for fd in &setup.foreign_fds {
            sys::close(*fd);
        }
        let mut ring = setup.ring;
        ring.enable()
            .map_err(|e| format!("shard {i}: enabling the io_uring failed: {e}"))?;
        let cfg = setup.cfg;
        let buf_bytes = u32::try_from(cfg.recv_buffer_bytes)
            .map_err(|_| "recv buffer too large".to_string())?;
        ring.register_buffers(cfg.recv_buffers, buf_bytes)
            .map_err(|e| {
                format!(
                    "shard {i}: registering {} provided buffers of {} bytes failed: {e} \
                 (--recv-buffers must be a power of two ≤ 32768; kernel ≥ 5.19)",
                    cfg.recv_buffers, cfg.recv_buffer_bytes
                )
            })?;
        if !ring.bufs().incremental() {
            eprintln!("ringpush shard={i} note=buffer_ring_whole_buffers (kernel lacks IOU_PBUF_RING_INC)");
        }
        let core = Core::new(i, setup.listen_fd, setup.conns_max, cfg, setup.shared);
        Ok(Shard {
            ring,
            core,
            completions: Vec::with_capacity(1024),
        })
    }

    fn run(&mut self) -> Report {
        let listen_fd = self.core.listen_fd.expect("listener at start");
        self.ring.accept_multi(listen_fd);
        self.core.accept_armed = true;
        self.ring.tick(Duration::from_millis(TICK_MS));
        loop {
            if let Err(e) = self.ring.submit_and_wait() {
                eprintln!("ringpush shard={} error=ring_enter {e}", self.core.index);
                break;
            }
            let mut batch = std::mem::take(&mut self.completions);
            self.ring.reap(&mut batch);
            for completion in batch.drain(..) {
                self.handle(completion);
            }
            self.completions = batch;
            self.after_batch();
            if self.core.finished() {
                break;
            }
        }
        self.core.close_everything();
        self.core.publish();
        self.core.report()
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
            Completion::Tick { more, .. } => {
                self.core.tick();
                if !more {
                    self.ring.tick(Duration::from_millis(TICK_MS));
                }
            }
            Completion::Cancel { .. } | Completion::Msg { .. } => {}
        }
    }

    fn accept_complete(&mut self, res: i32, more: bool) {
        if !more {
            self.core.accept_armed = false;
        }
        if res >= 0 {
            if let Some(owner) = self.core.accepted(res) {
                self.ring.recv_multi(res, owner);
            }
            if !more && self.core.draining.is_none() {
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
            self.ring
                .bufs()
                .consume(bid, res as usize, buf_more, |data| {
                    if live {
                        core.on_data(owner.key as usize, data);
                    }
                });
        }
        if !live {
            return;
        }
        let key = owner.key as usize;
        if more {
            return;
        }
        core.conns[key].flags &= !conn::RECV_ARMED;
        if res > 0 {
            // The multishot ended for a reason other than EOF or an error (for example a CQ
            // overflow): arm it again so no data is left unread.
            if core.conns[key].state != State::Dead {
                core.counters.recv_rearmed += 1;
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
            return;
        }
        let key = owner.key as usize;
        let core = &mut self.core;
        core.conns[key].flags &= !conn::SEND_INFLIGHT;
        if core.conns[key].state == State::Dead {
            core.maybe_release(key);
            return;
        }
        if res <= 0 {
            let errno = -res;
            core.abort(key, format_args!("event=send_failed errno={errno}"));
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
        core.mark_dirty(key);
    }

    fn after_batch(&mut self) {
        let core = &mut self.core;
        if core.accept_retry_at != 0
            && core.wheel.now() >= core.accept_retry_at
            && !core.accept_armed
        {
            core.accept_retry_at = 0;
            if let (Some(fd), None) = (core.listen_fd, core.draining) {
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
        // Re-arm starved receives a few at a time, oldest first, so a burst does not turn
        // into an ENOBUFS storm.
        let budget = (self.ring.bufs().count() as usize / 4).max(1);
        for _ in 0..budget {
            let Some(owner) = core.starved.pop_front() else {
                break;
            };
            if !core.live(owner) {
                continue;
            }
            let key = owner.key as usize;
            if core.conns[key].state == State::Dead {
                core.maybe_release(key);
                continue;
            }
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
                self.ring.send(fd, owner, frame, 0);
            }
        }
        core.dirty = dirty;
    }
}

/// The shard minus its ring: connection state, timers, counters.
struct Core {
    index: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    listen_fd: Option<RawFd>,
    accept_armed: bool,
    accept_retry_at: u32,
    stop_accepting: bool,
    conns: Slab<Conn>,
    conns_max: usize,
    next_gen: u32,
    wheel: Wheel,
    due: Vec<Owner>,
    dirty: Vec<usize>,
    starved: VecDeque<Owner>,
    out: BytesMut,
    epoch: Instant,
    counters: Counters,
    handshake_us: Histogram<u64>,
    ping_rtt_us: Histogram<u64>,
    hs_cfg: handshake::Config,
    limits: Limits,
    refusal_busy: Vec<u8>,
    draining: Option<u32>,
    ticks_handshake: u32,
    ticks_ping: u32,
    ticks_idle: u32,
    ticks_close: u32,
    log_budget: u32,
    log_suppressed: u64,
}

fn ticks(d: Duration) -> u32 {
    (d.as_millis() as u64)
        .div_ceil(TICK_MS)
        .clamp(1, u32::MAX as u64 / 4) as u32
}

impl Core {
    fn new(
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
        let mut refusal_busy = Vec::new();
        HandshakeError::Overloaded.write_refusal(&mut refusal_busy);
        Core {
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
            epoch: Instant::now(),
            counters: Counters::new(),
            handshake_us: stats::latency_histogram(),
            ping_rtt_us: stats::latency_histogram(),
            hs_cfg,
            limits: Limits {
                role: Role::Server,
                message_bytes_max: cfg.max_message,
            },
            refusal_busy,
            draining: None,
            ticks_handshake: ticks(cfg.handshake_timeout),
            ticks_ping: ticks(cfg.ping_interval),
            ticks_idle: ticks(cfg.idle_timeout),
            ticks_close: ticks(cfg.close_timeout),
            log_budget: LOG_LINES_PER_SEC_MAX,
            log_suppressed: 0,
            cfg,
            shared,
        }
    }

    fn now_us(&self) -> u32 {
        self.epoch.elapsed().as_micros() as u32
    }

    /// Prints one log line, at most `LOG_LINES_PER_SEC_MAX` a second (hostile clients must
    /// not turn the log into the bottleneck); the rest are counted.
    fn log(&mut self, args: std::fmt::Arguments<'_>) {
        if self.log_budget == 0 {
            self.log_suppressed += 1;
            return;
        }
        self.log_budget -= 1;
        eprintln!("ringpush shard={} {args}", self.index);
    }

    /// Whether `owner` still names the slot's current occupant.
    fn live(&self, owner: Owner) -> bool {
        self.conns
            .get(owner.key as usize)
            .is_some_and(|c| c.gen & GEN_MASK == owner.gen)
    }

    fn owner(&self, key: usize) -> Owner {
        Owner {
            key: key as u32,
            gen: self.conns[key].gen & GEN_MASK,
        }
    }

    fn finished(&self) -> bool {
        match self.draining {
            Some(end) => self.conns.is_empty() || self.wheel.now() > end + self.ticks_close,
            None => false,
        }
    }

    /// A new socket from the listener: refused at the cap, else given a slot and a
    /// handshake deadline. Returns the owner to arm its recv for.
    fn accepted(&mut self, fd: RawFd) -> Option<Owner> {
        self.counters.accepted += 1;
        if self.draining.is_some() || self.conns.len() >= self.conns_max {
            // A fresh socket's send buffer is empty, so this small response goes out whole.
            let _ = sys::send_now(fd, &self.refusal_busy);
            sys::close(fd);
            self.counters.refused_at_cap += 1;
            let open = self.conns.len();
            self.log(format_args!("event=refused reason=at_capacity open={open}"));
            return None;
        }
        let _ = sys::set_nodelay(fd);
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        let now = self.wheel.now();
        let key = self.conns.insert(Conn::new(fd, gen, self.now_us(), now));
        self.conns[key].flags |= conn::RECV_ARMED;
        self.counters.open += 1;
        self.arm(key, now + self.ticks_handshake);
        Some(self.owner(key))
    }

    /// Sets the connection's deadline; adds a wheel entry only when it moves earlier.
    fn arm(&mut self, key: usize, at: u32) {
        let owner = self.owner(key);
        let c = &mut self.conns[key];
        c.deadline = at;
        if c.wheel_at == 0 || at < c.wheel_at {
            c.wheel_at = self.wheel.schedule(owner, at);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.has(conn::DIRTY) {
            c.flags |= conn::DIRTY;
            self.dirty.push(key);
        }
    }

    /// Bytes arrived for `key` (unmasked in place by the decoder).
    fn on_data(&mut self, key: usize, data: &mut [u8]) {
        self.counters.bytes_in += data.len() as u64;
        let c = &self.conns[key];
        match c.state {
            State::Handshake => self.on_head(key, data),
            State::Open | State::Closing
                if c.has(conn::UPGRADED) && !c.has(conn::CLOSE_RECEIVED) =>
            {
                self.on_frames(key, data)
            }
            // Refused, lingering or dead: the peer's bytes no longer matter.
            _ => {}
        }
    }

    fn on_head(&mut self, key: usize, data: &mut [u8]) {
        let mut slot = self.conns[key].partial.take();
        let was_partial = slot.is_some();
        let mut new_head = None;
        let echo_path = &self.cfg.echo_path;
        let buf: &mut [u8] = match slot.as_deref_mut() {
            Some(Partial::Head(head)) => {
                head.extend_from_slice(data);
                head.as_mut_slice()
            }
            _ => data,
        };
        match handshake::parse_request(buf, &self.hs_cfg, |path| route::route(path, echo_path)) {
            Ok(None) => {
                if !was_partial {
                    new_head = Some(buf.to_vec());
                }
            }
            Ok(Some(upgrade)) => {
                let mut response = Vec::with_capacity(160);
                handshake::write_switching_protocols(
                    &mut response,
                    &upgrade.accept,
                    upgrade.subprotocol.as_deref(),
                );
                let now = self.wheel.now();
                let elapsed = self.now_us().wrapping_sub(self.conns[key].accepted_us);
                let _ = self.handshake_us.record(u64::from(elapsed).max(1));
                self.counters.upgraded += 1;
                let c = &mut self.conns[key];
                c.state = State::Open;
                c.flags |= conn::UPGRADED;
                c.route = upgrade.route as u8;
                c.last_seen = now;
                self.enqueue(key, Bytes::from(response));
                self.arm(key, now + self.ticks_ping);
                let rest = &mut buf[upgrade.header_bytes..];
                if !rest.is_empty() {
                    // Pipelined frames sent right behind the request belong to the stream.
                    self.on_frames(key, rest);
                }
                return;
            }
            Err(err) => {
                self.refuse(key, &err);
                return;
            }
        }
        self.conns[key].partial = match new_head {
            Some(head) => Some(Box::new(Partial::Head(head))),
            None => slot,
        };
    }

    fn refuse(&mut self, key: usize, err: &HandshakeError) {
        self.counters.refused[stats::refusal_slot(err)] += 1;
        let status = err.status();
        self.log(format_args!(
            "event=handshake_refused status={status} reason={}",
            err.reason()
        ));
        let mut response = Vec::with_capacity(256);
        err.write_refusal(&mut response);
        self.enqueue(key, Bytes::from(response));
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_SENT | conn::FIN_AFTER_FLUSH;
        c.state = State::Closing;
        let at = self.wheel.now() + self.ticks_close;
        self.arm(key, at);
    }

    fn on_frames(&mut self, key: usize, data: &mut [u8]) {
        let now = self.wheel.now();
        let now_us = self.now_us();
        let c = &mut self.conns[key];
        c.last_seen = now;
        let ping_out = c.has(conn::PING_OUT);
        c.flags &= !conn::PING_OUT;
        let closing = c.has(conn::CLOSE_SENT);
        let route = Route::from_u8(c.route);
        let mut slot = c.partial.take();
        let mut local = Decoder::default();
        let decoder = match slot.as_deref_mut() {
            Some(Partial::Frames(d)) => d,
            _ => &mut local,
        };
        let out = &mut self.out;
        let counters = &mut self.counters;
        let ping_rtt = &mut self.ping_rtt_us;
        let mut peer_close = None;
        let result = decoder.feed(data, &self.limits, |event| {
            match event {
                Event::Text(payload) | Event::Binary(payload) => {
                    counters.messages_in += 1;
                    let opcode = if matches!(event, Event::Text(_)) {
                        OpCode::Text
                    } else {
                        OpCode::Binary
                    };
                    if !closing && route == Route::Echo {
                        frame::encode_into(out, true, opcode, payload, None);
                        counters.messages_out += 1;
                    }
                }
                Event::Ping(payload) => {
                    if !closing {
                        frame::encode_into(out, true, OpCode::Pong, payload, None);
                    }
                }
                Event::Pong(payload) => {
                    counters.pongs_received += 1;
                    if let (true, Ok(sent)) = (ping_out, <[u8; 8]>::try_from(payload)) {
                        let rtt = now_us.wrapping_sub(u64::from_be_bytes(sent) as u32);
                        let _ = ping_rtt.record(u64::from(rtt).max(1));
                    }
                }
                Event::Close(code, _reason) => {
                    peer_close = Some(code);
                    return std::ops::ControlFlow::Break(());
                }
            }
            std::ops::ControlFlow::Continue(())
        });
        let idle = decoder.is_idle();
        if slot.is_some() {
            if idle {
                slot = None;
            }
        } else if !idle {
            slot = Some(Box::new(Partial::Frames(local)));
        }
        self.conns[key].partial = slot;
        if !self.out.is_empty() {
            let replies = self.out.split().freeze();
            self.enqueue(key, replies);
        }
        if let Err(err) = result {
            self.counters.protocol_errors += 1;
            let code = CloseCode::from(&err);
            self.log(format_args!(
                "event=protocol_error close={} error={err}",
                code.0
            ));
            self.conns[key].partial = None;
            self.close_with(key, code, "", CloseMode::Fail);
            return;
        }
        if let Some(code) = peer_close {
            self.peer_closed(key, code);
        }
    }

    /// The peer's close frame arrived: answer it (echoing its code) unless we already sent
    /// ours, and FIN once the answer is out.
    fn peer_closed(&mut self, key: usize, code: Option<CloseCode>) {
        self.counters.closes_received[stats::close_code_slot(code.map_or(0, |c| c.0))] += 1;
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_RECEIVED;
        c.partial = None;
        if !c.has(conn::CLOSE_SENT) {
            let reply = match code {
                Some(code) => frame::encode_close(code, ""),
                None => frame::encode(OpCode::Close, &[]),
            };
            self.counters.closes_sent[stats::close_code_slot(code.map_or(0, |c| c.0))] += 1;
            self.push_frame(key, reply);
            let at = self.wheel.now() + self.ticks_close;
            self.arm(key, at);
        }
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_SENT | conn::FIN_AFTER_FLUSH;
        c.state = State::Closing;
        self.mark_dirty(key);
    }

    /// Queues our close frame; nothing is queued after it.
    fn close_with(&mut self, key: usize, code: CloseCode, reason: &str, mode: CloseMode) {
        let c = &mut self.conns[key];
        if c.has(conn::CLOSE_SENT) {
            return;
        }
        c.flags |= conn::CLOSE_SENT;
        if mode == CloseMode::Fail {
            c.flags |= conn::FIN_AFTER_FLUSH;
        }
        c.state = State::Closing;
        self.counters.closes_sent[stats::close_code_slot(code.0)] += 1;
        self.push_frame(key, frame::encode_close(code, reason));
        let at = self.wheel.now() + self.ticks_close;
        self.arm(key, at);
    }

    /// Appends a frame to the queue without the --max-pending check (control frames).
    fn push_frame(&mut self, key: usize, frame: Bytes) {
        let c = &mut self.conns[key];
        c.queued_bytes = c.queued_bytes.saturating_add(frame.len() as u32);
        c.queue.push_back(frame);
        self.mark_dirty(key);
    }

    /// Queues data for a connection, enforcing --max-pending: past it the connection is a
    /// slow consumer, its queue is dropped and it is closed with 1008.
    fn enqueue(&mut self, key: usize, frame: Bytes) {
        let c = &mut self.conns[key];
        if c.has(conn::CLOSE_SENT) {
            return;
        }
        if c.queued_bytes as usize + frame.len() > self.cfg.max_pending {
            let dropped: usize = c.queue.drain(..).map(|f| f.len()).sum();
            c.queued_bytes = c.queued_bytes.saturating_sub(dropped as u32);
            self.counters.slow_consumer_closes += 1;
            let pending = self.cfg.max_pending;
            self.log(format_args!(
                "event=slow_consumer max_pending={pending} dropped_bytes={dropped}"
            ));
            self.close_with(key, CloseCode::POLICY, "slow consumer", CloseMode::Fail);
            return;
        }
        self.push_frame(key, frame);
    }

    /// The next send for `key`, coalescing queued frames, or the FIN once drained.
    fn next_send(&mut self, key: usize) -> Option<(RawFd, Owner, Bytes)> {
        let owner = self.owner(key);
        let c = &mut self.conns[key];
        if c.has(conn::SEND_INFLIGHT) || c.state == State::Dead {
            return None;
        }
        if c.queue.is_empty() {
            if c.has(conn::FIN_AFTER_FLUSH) && c.state != State::Linger {
                sys::shutdown(c.fd, libc::SHUT_WR);
                c.state = State::Linger;
                if !c.has(conn::RECV_ARMED) && !self.starved.contains(&owner) {
                    // The peer already sent EOF: nothing left to wait for.
                    self.finish(key);
                }
            }
            return None;
        }
        let frame = if c.queue.len() > 1 && c.queue[0].len() < COALESCE_BYTES_MAX {
            let mut total = 0;
            let mut count = 0;
            for f in &c.queue {
                if count > 0 && total + f.len() > COALESCE_BYTES_MAX {
                    break;
                }
                total += f.len();
                count += 1;
            }
            if count == 1 {
                c.queue.pop_front().expect("queue is not empty")
            } else {
                let mut merged = BytesMut::with_capacity(total);
                for f in c.queue.drain(..count) {
                    merged.extend_from_slice(&f);
                }
                merged.freeze()
            }
        } else {
            c.queue.pop_front().expect("queue is not empty")
        };
        if c.queue.is_empty() && c.queue.capacity() > 4 {
            // Give back a burst's queue memory: an idle connection holds none.
            c.queue = VecDeque::new();
        }
        c.flags |= conn::SEND_INFLIGHT;
        Some((c.fd, owner, frame))
    }

    /// The multishot recv ended with EOF (0) or an error.
    fn recv_ended(&mut self, key: usize, res: i32) {
        let state = self.conns[key].state;
        match state {
            State::Dead => self.maybe_release(key),
            State::Linger => self.finish(key),
            State::Closing if res == 0 => {
                // The peer finished sending; once our queue drains we FIN and are done.
                let c = &mut self.conns[key];
                c.flags |= conn::FIN_AFTER_FLUSH;
                if c.queue.is_empty() && !c.has(conn::SEND_INFLIGHT) {
                    self.finish(key);
                } else {
                    self.mark_dirty(key);
                }
            }
            _ => {
                let what = if res == 0 {
                    "eof".to_string()
                } else {
                    format!("errno={}", -res)
                };
                self.abort(key, format_args!("event=peer_gone state={state:?} {what}"));
            }
        }
    }

    /// A clean end: the close handshake (or refusal) is complete.
    fn finish(&mut self, key: usize) {
        let c = &mut self.conns[key];
        sys::shutdown(c.fd, libc::SHUT_RDWR);
        c.state = State::Dead;
        self.maybe_release(key);
    }

    /// An abnormal end: shut the socket down both ways (which also ends an armed recv).
    fn abort(&mut self, key: usize, why: std::fmt::Arguments<'_>) {
        let c = &mut self.conns[key];
        if c.state == State::Dead {
            return;
        }
        let upgraded = c.has(conn::UPGRADED);
        sys::shutdown(c.fd, libc::SHUT_RDWR);
        c.state = State::Dead;
        self.counters.aborted += 1;
        if upgraded {
            self.log(why);
        }
        self.maybe_release(key);
    }

    /// Frees the slot once no operation of it is in the kernel.
    fn maybe_release(&mut self, key: usize) {
        let c = &self.conns[key];
        debug_assert_eq!(c.state, State::Dead);
        if c.has(conn::RECV_ARMED) || c.has(conn::SEND_INFLIGHT) {
            return;
        }
        let c = self.conns.remove(key);
        sys::close(c.fd);
        self.counters.open -= 1;
    }

    /// One timer tick: expire due connections, publish counters once a second, start the
    /// drain when the main thread asks for it.
    fn tick(&mut self) {
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
                eprintln!(
                    "ringpush shard={} event=log_suppressed lines={}",
                    self.index, self.log_suppressed
                );
                self.log_suppressed = 0;
            }
            self.log_budget = LOG_LINES_PER_SEC_MAX;
            self.publish();
        }
        if self.draining.is_none() && self.shared.shutdown.load(Ordering::Relaxed) {
            self.start_drain();
        }
        if let Some(end) = self.draining {
            if now == end {
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                let left = keys.len();
                self.log(format_args!("event=drain_timeout aborting={left}"));
                for key in keys {
                    self.abort(key, format_args!("event=drain_abort"));
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
                self.counters.handshake_timeouts += 1;
                self.log(format_args!("event=handshake_timeout"));
                self.abort(key, format_args!("event=handshake_timeout"));
            }
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
                    self.counters.idle_closes += 1;
                    self.close_with(
                        key,
                        CloseCode::GOING_AWAY,
                        "idle timeout",
                        CloseMode::Graceful,
                    );
                } else {
                    let payload = u64::from(now_us).to_be_bytes();
                    c.flags |= conn::PING_OUT;
                    let at = c.last_seen + self.ticks_idle;
                    self.counters.pings_sent += 1;
                    self.push_frame(key, frame::encode(OpCode::Ping, &payload));
                    self.arm(key, at);
                }
            }
            State::Closing | State::Linger => {
                let state = c.state;
                self.abort(key, format_args!("event=close_timeout state={state:?}"));
            }
            State::Dead => {}
        }
    }

    fn start_drain(&mut self) {
        let now = self.wheel.now();
        self.draining = Some(now + ticks(self.cfg.drain_timeout));
        self.stop_accepting = true;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns[key].state {
                State::Open => self.close_with(
                    key,
                    CloseCode::GOING_AWAY,
                    "server shutting down",
                    CloseMode::Graceful,
                ),
                State::Handshake => self.abort(key, format_args!("event=drain_handshake")),
                _ => {}
            }
        }
    }

    fn close_everything(&mut self) {
        for c in self.conns.drain() {
            sys::close(c.fd);
        }
        if let Some(fd) = self.listen_fd.take() {
            sys::close(fd);
        }
        self.counters.open = 0;
    }

    fn publish(&self) {
        if let Ok(mut slot) = self.shared.counters[self.index].lock() {
            slot.clone_from(&self.counters);
        }
    }

    fn report(&mut self) -> Report {
        Report {
            counters: self.counters.clone(),
            handshake_us: self.handshake_us.clone(),
            ping_rtt_us: self.ping_rtt_us.clone(),
        }
    }
}
