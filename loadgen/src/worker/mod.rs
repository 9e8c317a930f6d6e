//! One worker: a reactor thread that owns an io_uring, a file table, a provided-buffer ring,
//! a slab of client connections and a timer wheel, and runs connect → upgrade → recv →
//! parse → reply → send → timers → close for every connection of its share.
//!
//! The loop is the engine's reactor skeleton (`ringpush::reactor::Reactor`), the same one
//! the node's shards run; the worker's [`Core`] is its service (`Service<Ring>` below). After
//! each batch, before the skeleton re-arms starved receives and flushes, the service follows
//! the phase the main thread set, fires due timers, cancels and opens connections within the
//! pacing budget, and paces echo messages.
//!
//! `lifecycle.rs` holds a connection's life (connect, upgrade, end, backoff, deadlines,
//! phases); `traffic.rs` what flows on open connections (frames, echo, sends, JSON-mode
//! objects); `resume.rs` JSON mode's `subscribed` answers and the resume scenario's steps;
//! `phase.rs` the run's phases and the state shared with the main thread.
//!
//! Invariants:
//! - [`Core`] pushes SQEs only in `before_flush` (connects and their cancels); everything
//!   else it records (dirty, starved, `reopen`) for the skeleton or the next batch.
//! - A slot's socket is closed only when no operation of it is in the kernel
//!   (`Conn::busy`), so no completion names a closed socket.
//! - An ended attempt gets a fresh generation, so nothing pending for it (a starved
//!   receive, a wheel entry) can act on the slot's next attempt.
//! - Gauges in `counters` follow `set_state`: every state change goes through it.

mod lifecycle;
mod phase;
mod resume;
mod traffic;

pub use phase::{Phase, ResumeStep, Shared};

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringpush::reactor::{Conns, IoEvent, Reactor, Service};
use ringpush::ring::connect::{self, ConnectId};
use ringpush::ring::{sys, Completion, Owner, Ring, RingConfig, TickMode};
use ringpush::timer::Wheel;
use ringpush::ws::mask::MaskGen;
use ringpush::ws::{Limits, OpCode, Role};

use crate::conn::{self, Conn, State};
use crate::payload;
use crate::plan::Plan;
use crate::report::{self, Counters, Failure, Hists, Report};
use crate::scenario::Scenario;
use crate::target::Mode;

/// Timer tick when echo messages are paced (their schedule is per millisecond).
const TICK_PACED: Duration = Duration::from_millis(1);
/// Timer tick otherwise.
const TICK_DEFAULT: Duration = Duration::from_millis(10);
/// Slots in the timer wheel; later deadlines are re-checked at the horizon.
const WHEEL_SLOTS: usize = 4096;
/// Queued frames of one connection are merged into one send up to this many bytes.
const COALESCE_BYTES_MAX: usize = 64 * 1024;
/// Echo messages paced per batch at most, so a late loop catches up without stalling.
const PACED_PER_BATCH_MAX: u64 = 65_536;
/// How often a worker copies its counters for the main thread.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Connect pacing never bursts beyond this much of the per-worker rate.
const PACING_BURST: Duration = Duration::from_millis(100);
/// Extra time the close phase waits beyond --close-timeout before giving up on sockets.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Everything a worker thread needs.
pub struct Setup {
    /// Worker index.
    pub index: usize,
    /// The validated plan.
    pub plan: Arc<Plan>,
    /// Phase and counters.
    pub shared: Arc<Shared>,
    /// Core to pin to.
    pub core: Option<core_affinity::CoreId>,
}

/// Thread body: pins, takes its own file table, creates and enables its ring, registers
/// buffers, reports readiness on `ready` and runs until the close phase completes.
pub fn spawn(
    setup: Setup,
    ready: mpsc::Sender<Result<(), String>>,
) -> std::thread::JoinHandle<Option<Report>> {
    let name = format!("loadgen-worker-{}", setup.index);
    ringpush::reactor::spawn(
        name,
        ready,
        move || start(setup),
        |mut worker| run(&mut worker),
    )
}

/// A worker's reactor: the engine's skeleton over the real ring, with the load generator's
/// client as its service.
type Worker = Reactor<Ring, Core>;

fn start(setup: Setup) -> Result<Worker, String> {
    let i = setup.index;
    let plan = setup.plan;
    let ring_cfg = RingConfig {
        sq_entries: plan.sq_entries,
        cq_entries: plan.cq_entries,
    };
    let mut ring = Ring::new(&ring_cfg).map_err(|e| format!("worker {i}: {e}"))?;
    ring.adopt(
        &format!("ringpush-loadgen worker {i}"),
        setup.core,
        plan.recv_buffers,
        plan.recv_buffer_bytes as usize,
    )?;
    let mut core = Core::new(i, plan, setup.shared);
    // The main thread judges the ramp from published gauges: publish before it looks.
    core.publish();
    Ok(Reactor::new(ring, core))
}

fn run(worker: &mut Worker) -> Report {
    worker.ring.tick(worker.service.tick);
    worker.run();
    let core = &mut worker.service;
    core.close_everything();
    core.publish();
    Report {
        counters: core.counters.clone(),
        hists: core.hists.clone(),
    }
}

impl Service<Ring> for Core {
    type Conn = Conn;

    #[inline]
    fn conns(&mut self) -> &mut Conns<Conn> {
        &mut self.conns
    }

    #[inline]
    fn on_data(&mut self, key: usize, data: &mut [u8]) {
        Core::on_data(self, key, data);
    }

    fn on_recv_end(&mut self, key: usize, res: i32) {
        self.recv_ended(key, res);
    }

    fn on_sent(&mut self, _key: usize, _frame: Bytes) {}

    fn on_send_failed(&mut self, key: usize, res: i32, _frame: Bytes) {
        if res < 0 {
            self.counters.send_errors += 1;
        }
        self.broken(key, -res);
    }

    fn release(&mut self, key: usize) {
        self.maybe_release(key);
    }

    #[inline]
    fn next_send(&mut self, key: usize) -> Option<Bytes> {
        Core::next_send(self, key)
    }

    #[inline]
    fn count(&mut self, event: IoEvent) {
        match event {
            IoEvent::RecvRearmed => self.counters.recv_rearmed += 1,
            IoEvent::Enobufs => self.counters.enobufs += 1,
            IoEvent::BytesOut(n) => self.counters.bytes_out += n as u64,
        }
    }

    fn on_connect(&mut self, owner: Owner, res: i32) -> Option<Owner> {
        let key = self.conns.live(owner)?;
        let now_us = self.now_us();
        let c = &mut self.conns[key];
        c.connect = None;
        if c.state == State::Dead {
            self.maybe_release(key);
            return None;
        }
        debug_assert_eq!(c.state, State::Connecting);
        if res < 0 {
            self.fail(key, Failure::from_errno(-res));
            return None;
        }
        let elapsed = now_us.wrapping_sub(c.started_us);
        self.counters.tcp_connected += 1;
        report::record(&mut self.hists.tcp_connect, u64::from(elapsed));
        self.set_state(key, State::Handshake);
        let request = self.request(key);
        self.push_frame(key, request);
        Some(owner)
    }

    // The ring re-arms the tick itself; the wheel follows the wall clock (`advance_timers`).
    fn on_tick(&mut self, _res: i32, _more: bool, _mode: TickMode) {}

    fn on_ring_event(&mut self, completion: Completion) {
        match completion {
            Completion::DoorbellFailed { res, .. } | Completion::Unknown { res, .. } => {
                ringpush::elog!(
                    "ringpush-loadgen worker={} error=ring_completion res={res}",
                    self.index
                );
            }
            Completion::SubmitFailed { errno } => {
                ringpush::elog!(
                    "ringpush-loadgen worker={} error=ring_submit errno={errno}",
                    self.index
                );
            }
            _ => {}
        }
    }

    /// Follows the phase the main thread set, fires due timers, cancels connects, opens
    /// connections within the pacing budget, paces echo messages, publishes counters.
    fn before_flush(&mut self, ring: &mut Ring) {
        self.sync_phase();
        self.sync_resume();
        self.advance_timers();
        for id in self.cancels.drain(..) {
            ring.cancel_connect(id);
        }
        self.open_more(ring);
        self.pace_echo();
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
        }
    }

    fn finished(&self) -> bool {
        Core::finished(self)
    }

    fn on_ring_error(&mut self, error: std::io::Error) {
        ringpush::elog!(
            "ringpush-loadgen worker={} error=ring_enter {error}",
            self.index
        );
    }
}

impl Core {
    /// Starts connection attempts: reopens first, then new connections of the share,
    /// within --max-connecting and the --rate budget.
    fn open_more(&mut self, ring: &mut Ring) {
        let core = self;
        if core.phase > Phase::Drain {
            return;
        }
        let mut budget = core
            .plan
            .max_connecting
            .saturating_sub(core.counters.connecting as usize) as u64;
        if core.rate > 0.0 {
            let allowed = (core.rate * core.pace_start.elapsed().as_secs_f64()) as u64;
            let burst = ((core.rate * PACING_BURST.as_secs_f64()) as u64).max(1);
            if allowed.saturating_sub(core.paced) > burst {
                core.paced = allowed - burst;
            }
            budget = budget.min(allowed.saturating_sub(core.paced));
        }
        while budget > 0 {
            let key = if let Some(owner) = core.reopen.pop_front() {
                match core.conns.live(owner) {
                    Some(key) if core.conns[key].state == State::Backoff => key,
                    _ => continue,
                }
            } else if core.may_open_new() {
                let index = core.index as u64 + core.started_new * core.plan.workers as u64;
                core.started_new += 1;
                // A new slot waits for its first attempt like one backing off for no time.
                core.counters.backoff += 1;
                core.conns.insert(Conn::new(index))
            } else {
                break;
            };
            budget -= 1;
            core.paced += 1;
            let Some((fd, owner)) = core.open_socket(key) else {
                continue;
            };
            let id = ring.connect(fd, &core.plan.dest, owner);
            core.conns[key].connect = Some(id);
        }
    }
}

/// How data messages are read, by scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Traffic {
    /// Nothing is expected; messages are only counted.
    None,
    /// Echoes of our stamped messages (text: hex stamps).
    Echo { text: bool, closed_loop: bool },
    /// Stamped broadcasts.
    Broadcast,
    /// Stamped messages missed while away, replayed after a resume: `messages` of them.
    Resume { messages: u64 },
}

/// The worker minus its ring: connections, timers, pacing, counters.
struct Core {
    index: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    phase: Phase,
    conns: Conns<Conn>,
    wheel: Wheel,
    due: Vec<Owner>,
    tick: Duration,
    epoch: Instant,
    reopen: VecDeque<Owner>,
    cancels: Vec<ConnectId>,
    out: BytesMut,
    rng: MaskGen,
    limits: Limits,
    traffic: Traffic,
    /// JSON mode: the scenario's channel (None: raw mode).
    json_channel: Option<Box<str>>,
    /// JSON mode: a message's decoded payload, reused from one message to the next.
    scratch: Vec<u8>,
    /// Resume: the step this worker follows, and the scenario channel's epoch as the
    /// first `subscribed` of this worker said it.
    resume_step: ResumeStep,
    resume_epoch: Option<String>,
    /// Connections this worker opens (churn: holds at once).
    share: u64,
    /// New connection indices started so far.
    started_new: u64,
    /// Connect attempts per second for this worker (0: unpaced), and the pacing clock.
    rate: f64,
    pace_start: Instant,
    paced: u64,
    /// Echo pacing: messages per second for this worker, messages scheduled so far, the
    /// round-robin cursor and the payload template.
    echo_rate: f64,
    echo_sched: u64,
    echo_cursor: usize,
    echo_opcode: OpCode,
    template: Vec<u8>,
    run_start: Instant,
    run_start_ns: u64,
    churn_lifetime: Option<Duration>,
    ticks_connect: u32,
    ticks_close: u32,
    close_deadline: Option<Instant>,
    counters: Counters,
    hists: Hists,
    last_publish: Instant,
}

fn ticks(d: Duration, tick: Duration) -> u32 {
    (d.as_nanos().div_ceil(tick.as_nanos())).clamp(1, u128::from(u32::MAX / 4)) as u32
}

impl Core {
    fn new(index: usize, plan: Arc<Plan>, shared: Arc<Shared>) -> Core {
        let workers = plan.workers as f64;
        let (traffic, echo_rate, size, text) = match &plan.scenario {
            Scenario::Echo(e) => (
                Traffic::Echo {
                    text: e.text,
                    closed_loop: e.msg_rate == 0.0,
                },
                e.msg_rate / workers,
                e.size,
                e.text,
            ),
            Scenario::Broadcast(b) => (Traffic::Broadcast, 0.0, b.size, false),
            Scenario::Resume(r) => (
                Traffic::Resume {
                    messages: r.messages,
                },
                0.0,
                r.publish.size,
                false,
            ),
            _ => (Traffic::None, 0.0, 0, false),
        };
        let churn_lifetime = match plan.scenario {
            Scenario::Churn { lifetime, .. } => Some(lifetime),
            _ => None,
        };
        let tick = if echo_rate > 0.0 {
            TICK_PACED
        } else {
            TICK_DEFAULT
        };
        let share = plan.share(index) as u64;
        let now = Instant::now();
        let seed = plan.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Core {
            index,
            phase: shared.phase(),
            conns: Conns::new(),
            wheel: Wheel::new(WHEEL_SLOTS),
            due: Vec::new(),
            tick,
            epoch: now,
            reopen: VecDeque::new(),
            cancels: Vec::new(),
            out: BytesMut::new(),
            rng: MaskGen::new(seed),
            limits: Limits {
                role: Role::Client,
                message_bytes_max: plan.max_message,
            },
            traffic,
            json_channel: match &plan.mode {
                Mode::Json(json) => Some(json.channel.as_str().into()),
                Mode::Raw => None,
            },
            scratch: Vec::new(),
            resume_step: ResumeStep::Hold,
            resume_epoch: None,
            share,
            started_new: 0,
            rate: plan.rate / workers,
            pace_start: now,
            paced: 0,
            echo_rate,
            echo_sched: 0,
            echo_cursor: 0,
            echo_opcode: if text { OpCode::Text } else { OpCode::Binary },
            template: payload::template(size),
            run_start: now,
            run_start_ns: payload::now_ns(),
            churn_lifetime,
            ticks_connect: ticks(plan.connect_timeout, tick),
            ticks_close: ticks(plan.close_timeout, tick),
            close_deadline: None,
            counters: Counters::default(),
            hists: match traffic {
                Traffic::Resume { .. } => Hists::resume(),
                _ => Hists::new(
                    matches!(traffic, Traffic::Echo { .. }),
                    traffic == Traffic::Broadcast,
                ),
            },
            last_publish: now,
            plan,
            shared,
        }
    }

    /// Nanoseconds since the shared epoch (at least 1, so 0 can mean "never").
    fn since_epoch_ns(&self) -> u64 {
        (self.shared.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn now_us(&self) -> u32 {
        self.epoch.elapsed().as_micros() as u32
    }

    fn random_u64(&mut self) -> u64 {
        let a = u32::from_le_bytes(self.rng.next_key());
        let b = u32::from_le_bytes(self.rng.next_key());
        (u64::from(a) << 32) | u64::from(b)
    }

    /// The slot `owner` names, if it still holds the same attempt.
    fn live_key(&self, owner: Owner) -> Option<usize> {
        self.conns.live(owner)
    }

    fn owner(&self, key: usize) -> Owner {
        self.conns.owner(key)
    }

    fn retry_allowed(&self) -> bool {
        (self.plan.reconnect.is_some() || self.churn_lifetime.is_some())
            && self.phase < Phase::Close
    }

    fn may_open_new(&self) -> bool {
        match self.churn_lifetime {
            Some(_) => self.phase == Phase::Run && (self.conns.len() as u64) < self.share,
            None => self.phase == Phase::Ramp && self.started_new < self.share,
        }
    }

    fn finished(&self) -> bool {
        match self.phase {
            Phase::Stop => true,
            Phase::Close => {
                self.conns.is_empty() || self.close_deadline.is_some_and(|d| Instant::now() >= d)
            }
            _ => false,
        }
    }

    /// Moves `key` to `state`, keeping the gauges right.
    fn set_state(&mut self, key: usize, state: State) {
        let old = std::mem::replace(&mut self.conns[key].state, state);
        if let Some(g) = gauge(&mut self.counters, old) {
            *g -= 1;
        }
        if let Some(g) = gauge(&mut self.counters, state) {
            *g += 1;
        }
    }

    /// Frees a slot for good.
    fn remove(&mut self, key: usize) {
        let state = self.conns[key].state;
        if let Some(g) = gauge(&mut self.counters, state) {
            *g -= 1;
        }
        let c = self.conns.remove(key);
        debug_assert!(!c.busy());
        debug_assert_eq!(c.fd, -1);
    }

    /// Sets the slot's deadline; adds a wheel entry only when it moves earlier.
    fn arm(&mut self, key: usize, at: u32) {
        let owner = self.owner(key);
        self.wheel.arm(owner, &mut self.conns[key].timer, at);
    }

    fn mark_dirty(&mut self, key: usize) {
        self.conns.mark_dirty(key);
    }

    /// Appends a frame to the connection's queue; nothing goes after our close frame.
    fn push_frame(&mut self, key: usize, frame: Bytes) {
        let c = &mut self.conns[key];
        if c.has(conn::CLOSE_SENT) {
            return;
        }
        c.queue.push_back(frame);
        self.mark_dirty(key);
    }

    /// Closes every socket still held (the close phase timed out, or a hard stop).
    fn close_everything(&mut self) {
        for c in self.conns.drain() {
            if c.fd >= 0 {
                let _ = connect::set_linger_reset(c.fd);
                sys::close(c.fd);
            }
        }
        self.counters.releasing = 0;
        self.counters.connecting = 0;
        self.counters.open = 0;
        self.counters.closing = 0;
        self.counters.backoff = 0;
    }

    /// Copies the counters for the main thread.
    fn publish(&mut self) {
        self.last_publish = Instant::now();
        self.counters.phase_seen = self.phase as u8;
        self.counters.unstarted = match self.churn_lifetime {
            Some(_) => 0,
            None => self.share.saturating_sub(self.started_new),
        };
        if let Ok(mut slot) = self.shared.counters[self.index].lock() {
            slot.clone_from(&self.counters);
        }
    }
}

/// The gauge a state is counted in, if any.
fn gauge(counters: &mut Counters, state: State) -> Option<&mut u64> {
    match state {
        State::Connecting | State::Handshake => Some(&mut counters.connecting),
        State::Open => Some(&mut counters.open),
        State::Closing => Some(&mut counters.closing),
        State::Backoff => Some(&mut counters.backoff),
        State::Dead => Some(&mut counters.releasing),
    }
}
