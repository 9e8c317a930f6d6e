//! The io_uring boundary: the only module with `unsafe`.
//!
//! [`Ring`] wraps one shard's io_uring. Callers name operations by value (a listener fd, a
//! connection [`Owner`], a `Bytes` frame) and get typed [`Completion`]s back; the ring owns
//! every piece of memory an SQE points at until its CQE is reaped, so nothing outside this
//! module can free memory the kernel still reads or writes.
//!
//! This file holds `Ring`: set-up, pushing, submitting, reaping and the quiesce. `op.rs`
//! holds what crosses the boundary (`Owner`, `user_data` packing, `Completion`,
//! `InFlight`); `tick.rs` the periodic tick; `bufring.rs` the provided buffers;
//! `connect.rs` the load generator's connects; `driver.rs` the `Driver` trait.
//!
//! Invariants:
//! - `user_data` packs (op kind, slab key, generation); a completion for a reused slot is
//!   recognised by its generation and dropped by the caller. Every kind decodes to a named
//!   [`Completion`]: a doorbell failure, a submit error and an unknown kind each have their
//!   own variant, and none of them is ever reported as a cancel.
//! - A send's frame lives in `sends` from push until its CQE; the tick's timespec lives in
//!   `tick_ts` for the life of the ring.
//! - The ring counts what it has in the kernel (`sends`, `connects`, `recvs`, `accepts`,
//!   `tick_armed`); each is raised when the SQE is pushed and lowered when the completion
//!   that ends it is reaped, and [`Ring::quiesce`] waits for all of them to reach zero.
//! - Dropping the `IoUring` cancels nothing: every shard's file table holds a copy of every
//!   ring fd (rings are created before the unshare), so the ring context outlives this
//!   struct. Buffers and frames are therefore freed only after [`Ring::quiesce`] saw nothing
//!   of ours in flight; if it gives up, they are deliberately leaked.
//! - The tick never spins: on kernels without multishot timeouts (before 6.4) it is a
//!   one-shot timeout re-armed per expiry, and a tick that fails is re-armed only after a
//!   full tick interval has passed (the wait itself times out meanwhile).
//! - Pushing never fails: a full SQ is submitted, and what still does not fit waits in
//!   `backlog` for the next enter.

pub mod bufring;
pub mod connect;
pub mod driver;
#[cfg(test)]
pub mod fake;
mod op;
pub mod sys;
mod tick;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use crate::ring::bufring::BufRing;
use op::{pack, unpack, OpKind};
pub use op::{Completion, InFlight, Owner, GEN_MASK};
pub use tick::{TickMode, TICK_ENV};

/// How long [`Ring::quiesce`] waits, by default, for the kernel to give back every operation
/// of ours before it gives up and leaks the memory they point at.
pub const QUIESCE_MS: u64 = 1_000;
/// Longest single wait inside [`Ring::quiesce`]; the cancel is repeated after each.
const QUIESCE_WAIT_MS: u64 = 50;
/// Cap on enter retries after EINTR, so a signal storm cannot hold a push for ever.
const EINTR_RETRIES_MAX: u32 = 16;

/// Ring sizes; see README for the memory they pin.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries (size it for a whole shard's burst: one wait can return
    /// tens of thousands of CQEs).
    pub cq_entries: u32,
}

/// Why a ring could not be set up; each variant says what to change.
#[derive(Debug)]
pub enum RingError {
    /// The kernel refused the setup (EINVAL): SINGLE_ISSUER | DEFER_TASKRUN need Linux 6.1
    /// or later, and the entry counts have kernel maxima.
    FlagsRefused(io::Error),
    /// Ring memory is locked memory: RLIMIT_MEMLOCK without CAP_IPC_LOCK is too small.
    MemoryLocked(io::Error),
    /// Any other setup failure.
    Other(io::Error),
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingError::FlagsRefused(e) => write!(
                f,
                "the kernel refused the io_uring setup ({e}): SINGLE_ISSUER|DEFER_TASKRUN need \
                 Linux 6.1 or later, and rings take at most 32768 SQ / 65536 CQ entries \
                 (--sq-entries, --cq-entries)"
            ),
            RingError::MemoryLocked(e) => write!(
                f,
                "io_uring ring memory does not fit RLIMIT_MEMLOCK ({e}); lower --sq-entries / \
                 --cq-entries or --shards, raise `ulimit -l`, or grant CAP_IPC_LOCK"
            ),
            RingError::Other(e) => write!(f, "io_uring setup failed: {e}"),
        }
    }
}

impl std::error::Error for RingError {}

struct InflightSend {
    owner: Owner,
    frame: Bytes,
    offset: usize,
}

/// One shard's io_uring with the memory its in-flight operations point at.
pub struct Ring {
    // Dropping the io_uring cancels nothing (other file tables hold its fd): `Drop` runs
    // `quiesce` first, and leaks `bufs`, `sends` and `connects` if the kernel keeps them.
    ring: IoUring,
    bufs: Option<BufRing>,
    sends: Slab<InflightSend>,
    connects: Slab<connect::InflightConnect>,
    tick_ts: Box<types::Timespec>,
    backlog: VecDeque<squeue::Entry>,
    /// Armed multishot receives: raised by `recv_multi`, lowered by a Recv CQE without
    /// F_MORE.
    recvs: usize,
    /// Armed multishot accepts: raised by `accept_multi`, lowered by an Accept CQE without
    /// F_MORE.
    accepts: usize,
    /// True exactly while a Tick SQE is in the kernel (until its CQE without F_MORE).
    tick_armed: bool,
    tick_mode: TickMode,
    /// The tick's period, once [`Ring::tick`] was called.
    tick_every: Option<Duration>,
    /// When an ended tick is armed again (at the next enter, if already past).
    tick_rearm_at: Option<Instant>,
    /// Set by `quiesce`: nothing new is armed, the tick included.
    stopping: bool,
    /// Set when `quiesce` gave up: the memory in flight is leaked, never freed.
    leaked: bool,
    /// Completions reaped early (while retrying a submit) or made up by the ring itself
    /// (submit errors), handed out first by the next `reap`.
    events: Vec<Completion>,
    /// Scratch for `reap`: raw CQEs copied out before they are decoded.
    raw: Vec<(u64, i32, u32)>,
}

impl Ring {
    /// Creates a disabled ring (SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN | SUBMIT_ALL).
    /// Create every ring before any thread unshares its file table, so that every table
    /// holds every ring's fd (cross-ring messages need the target fd in the sender's table),
    /// then call [`Ring::enable`] from the thread that will drive it.
    pub fn new(cfg: &RingConfig) -> Result<Ring, RingError> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_submit_all()
            .setup_r_disabled()
            .setup_cqsize(cfg.cq_entries)
            .build(cfg.sq_entries)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => RingError::FlagsRefused(e),
                Some(libc::ENOMEM) | Some(libc::EPERM) => RingError::MemoryLocked(e),
                _ => RingError::Other(e),
            })?;
        Ok(Ring {
            ring,
            bufs: None,
            sends: Slab::new(),
            connects: Slab::new(),
            tick_ts: Box::new(types::Timespec::new()),
            backlog: VecDeque::new(),
            recvs: 0,
            accepts: 0,
            tick_armed: false,
            tick_mode: TickMode::Multishot,
            tick_every: None,
            tick_rearm_at: None,
            stopping: false,
            leaked: false,
            events: Vec::new(),
            raw: Vec::new(),
        })
    }

    /// The ring's fd (the target of cross-ring messages).
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Enables the ring for the calling thread, which becomes its single issuer.
    pub fn enable(&self) -> io::Result<()> {
        self.ring.submitter().register_enable_rings()
    }

    /// Makes the calling thread this ring's driver, as every shard and load generator worker
    /// does at start: pins it to `core` (a warning if that fails), gives it its own file
    /// table, enables the ring for it (single issuer) and registers `count` provided buffers
    /// of `buf_bytes`. `who` names the thread in errors (`"shard 3"`).
    pub fn adopt(
        &mut self,
        who: &str,
        core: Option<core_affinity::CoreId>,
        count: u16,
        buf_bytes: usize,
    ) -> Result<(), String> {
        if let Some(core) = core {
            if !core_affinity::set_for_current(core) {
                crate::elog!("{who}: warn=pin_failed core={}", core.id);
            }
        }
        sys::unshare_file_table()
            .map_err(|e| format!("{who}: unshare(CLONE_FILES) failed: {e}"))?;
        self.enable()
            .map_err(|e| format!("{who}: enabling the io_uring failed: {e}"))?;
        let bytes =
            u32::try_from(buf_bytes).map_err(|_| format!("{who}: receive buffers too large"))?;
        self.register_buffers(count, bytes).map_err(|e| {
            format!(
                "{who}: registering {count} provided buffers of {buf_bytes} bytes failed: {e} \
                 (the count must be a power of two ≤ 32768; kernel ≥ 5.19)"
            )
        })?;
        if !self.bufs().incremental() {
            crate::elog!("{who}: note=buffer_ring_whole_buffers (kernel lacks IOU_PBUF_RING_INC)");
        }
        let forced = std::env::var(TICK_ENV).ok();
        if self.probe_tick(forced.as_deref()) == TickMode::Oneshot {
            crate::elog!(
                "{who}: note=tick=oneshot (multishot timeouts need Linux 6.4, or {TICK_ENV} \
                 forced it)"
            );
        }
        Ok(())
    }

    /// Registers the shard's provided-buffer ring as group 0.
    pub fn register_buffers(&mut self, count: u16, buf_bytes: u32) -> io::Result<()> {
        let bufs = BufRing::register(&self.ring.submitter(), 0, count, buf_bytes)?;
        self.bufs = Some(bufs);
        Ok(())
    }

    /// The provided-buffer ring. Panics if [`Ring::register_buffers`] was not called.
    pub fn bufs(&mut self) -> &mut BufRing {
        self.bufs
            .as_mut()
            .expect("buffers registered at shard start")
    }

    /// Sends in flight (frames the kernel may still read).
    pub fn sends_in_flight(&self) -> usize {
        self.sends.len()
    }

    /// Everything of ours the kernel still holds.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            sends: self.sends.len(),
            recvs: self.recvs,
            accepts: self.accepts,
            tick: self.tick_armed,
            connects: self.connects.len(),
        }
    }

    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: every entry built in this module points only at memory the Ring owns until
        // the matching CQE is reaped (see each builder), or at nothing.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            return;
        }
        // SQ full: hand what we have to the kernel and try once more; otherwise queue.
        self.submit_named();
        // SAFETY: as above.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    /// Submits without waiting and names every outcome: EINTR is retried, EBUSY and EAGAIN
    /// (completions pending, or the kernel short of memory) are met by reaping what is there
    /// into `events` and trying once more, and anything else becomes a
    /// [`Completion::SubmitFailed`] for the caller to count. Returns whether it submitted.
    fn submit_named(&mut self) -> bool {
        let mut retried_busy = false;
        for _ in 0..EINTR_RETRIES_MAX {
            match self.ring.submit() {
                Ok(_) => return true,
                Err(e) => match e.raw_os_error().unwrap_or(0) {
                    libc::EINTR => continue,
                    libc::EBUSY | libc::EAGAIN if !retried_busy => {
                        retried_busy = true;
                        let mut early = std::mem::take(&mut self.events);
                        self.reap_kernel(&mut early);
                        self.events = early;
                    }
                    libc::EBUSY | libc::EAGAIN => return false,
                    errno => {
                        self.events.push(Completion::SubmitFailed { errno });
                        return false;
                    }
                },
            }
        }
        false
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: as in `push`: the entry's memory is owned by the Ring.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.backlog.push_front(entry);
                if !self.submit_named() || self.ring.submission().is_full() {
                    return;
                }
            }
        }
    }

    /// Arms multishot accept on a listener.
    pub fn accept_multi(&mut self, listen_fd: RawFd) {
        debug_assert!(!self.stopping, "nothing is armed after quiesce");
        let entry = opcode::AcceptMulti::new(types::Fd(listen_fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(pack(OpKind::Accept, 0, 0));
        self.accepts += 1;
        // No memory is referenced: multishot accept returns no peer address.
        self.push(entry);
    }

    /// Cancels the multishot accept (shutdown: stop accepting).
    pub fn cancel_accept(&mut self) {
        let entry = opcode::AsyncCancel::new(pack(OpKind::Accept, 0, 0))
            .build()
            .user_data(pack(OpKind::Cancel, 0, 0));
        self.push(entry);
    }

    /// Arms multishot recv for a connection into the shard's buffer group.
    pub fn recv_multi(&mut self, fd: RawFd, owner: Owner) {
        debug_assert!(!self.stopping, "nothing is armed after quiesce");
        self.recvs += 1;
        let bgid = self.bufs().bgid();
        let entry = opcode::RecvMulti::new(types::Fd(fd), bgid)
            .build()
            .user_data(pack(OpKind::Recv, owner.key, owner.gen));
        // The kernel writes only into provided buffers, which the BufRing owns.
        self.push(entry);
    }

    /// Sends `frame[offset..]` on `fd`. The frame is held by the ring until the completion,
    /// which hands it back.
    pub fn send(&mut self, fd: RawFd, owner: Owner, frame: Bytes, offset: usize) {
        debug_assert!(!self.stopping, "nothing is armed after quiesce");
        debug_assert!(offset < frame.len());
        let len = (frame.len() - offset).min(u32::MAX as usize) as u32;
        let ptr = frame[offset..].as_ptr();
        let slot = self.sends.insert(InflightSend {
            owner,
            frame,
            offset,
        });
        // The SQE points into `frame`, now owned by `self.sends[slot]` until the Send CQE
        // for `slot` is reaped in `reap`; Bytes' heap storage does not move with the struct.
        let entry = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(pack(OpKind::Send, slot as u32, 0));
        self.push(entry);
    }

    /// Posts a 56-bit message into another ring's CQ (no memory is referenced). Success
    /// posts nothing here; a failure comes back as [`Completion::DoorbellFailed`] naming
    /// `target` (the caller's index for that ring).
    pub fn msg_ring(&mut self, target_ring_fd: RawFd, target: u32, data: u64, res: i32) {
        debug_assert!(data >> 56 == 0, "cross-ring payload is 56 bits");
        let entry = opcode::MsgRingData::new(
            types::Fd(target_ring_fd),
            res,
            pack(OpKind::Msg, 0, 0) | data,
            None,
        )
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(pack(OpKind::Doorbell, target, 0));
        self.push(entry);
    }

    /// Hands every queued SQE to the kernel now, without waiting (used so that replies and
    /// doorbells leave before a long run of sends is queued behind them).
    pub fn submit_now(&mut self) {
        self.flush_backlog();
        self.submit_named();
    }

    /// Submits everything queued and waits for at least one completion (or, while the tick
    /// waits to be re-armed, at most until it is due). EINTR is retried; EBUSY and EAGAIN
    /// return at once so the caller reaps first.
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        let wait_until = self.rearm_tick_if_due();
        self.flush_backlog();
        let bound = wait_until.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            types::Timespec::from(left.max(Duration::from_millis(1)))
        });
        loop {
            let entered = match &bound {
                Some(ts) => {
                    let args = types::SubmitArgs::new().timespec(ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submit_and_wait(1),
            };
            match entered {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error().unwrap_or(0) {
                    libc::EINTR => continue,
                    libc::EBUSY | libc::EAGAIN | libc::ETIME => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Moves every available completion into `out`, typed, returning each send's frame.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.events);
        self.reap_kernel(out);
    }

    fn reap_kernel(&mut self, out: &mut Vec<Completion>) {
        let mut raw = std::mem::take(&mut self.raw);
        {
            let mut cq = self.ring.completion();
            cq.sync();
            raw.extend((&mut cq).map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
        }
        for (user_data, res, flags) in raw.drain(..) {
            out.push(self.decode(user_data, res, flags));
        }
        self.raw = raw;
    }

    /// Types one CQE and books the end of the operation it completes.
    fn decode(&mut self, user_data: u64, res: i32, flags: u32) -> Completion {
        let (byte, key, gen) = unpack(user_data);
        let more = cqueue::more(flags);
        let Some(kind) = OpKind::decode(byte) else {
            debug_assert!(false, "a CQE with unknown op kind {byte}: {user_data:#x}");
            return Completion::Unknown { user_data, res };
        };
        match kind {
            OpKind::Accept => {
                if !more {
                    debug_assert!(self.accepts > 0, "an accept ended that was not armed");
                    self.accepts = self.accepts.saturating_sub(1);
                }
                Completion::Accept { res, more }
            }
            OpKind::Recv => {
                if !more {
                    debug_assert!(self.recvs > 0, "a recv ended that was not armed");
                    self.recvs = self.recvs.saturating_sub(1);
                }
                Completion::Recv {
                    owner: Owner { key, gen },
                    res,
                    more,
                    bid: cqueue::buffer_select(flags),
                    buf_more: cqueue::buffer_more(flags),
                }
            }
            OpKind::Send => {
                let sent = self
                    .sends
                    .try_remove(key as usize)
                    .expect("a Send CQE names a send in flight");
                Completion::Send {
                    owner: sent.owner,
                    res,
                    frame: sent.frame,
                    offset: sent.offset,
                }
            }
            OpKind::Tick => {
                debug_assert_eq!(key, 0, "the probe's CQE is consumed by the probe");
                if !more {
                    self.tick_ended(res);
                }
                Completion::Tick { res, more }
            }
            OpKind::Connect => connect::complete(&mut self.connects, key, res),
            OpKind::Msg => Completion::Msg {
                data: user_data & ((1 << 56) - 1),
                res,
            },
            OpKind::Doorbell => Completion::DoorbellFailed { target: key, res },
            OpKind::Cancel => Completion::Cancel { res },
        }
    }

    /// Ends everything of ours in the kernel before its memory is freed: stops re-arming,
    /// cancels every request of this ring (IORING_ASYNC_CANCEL_ANY, repeated) and reaps
    /// until no send, recv, accept, connect or tick is in flight, for at most `bound`.
    /// Returns what was still in flight when it gave up; the ring then leaks its buffers and
    /// frames on drop rather than free memory the kernel may still touch. Shut sockets down
    /// first: that ends their receives and sends without waiting for the cancel.
    pub fn quiesce(&mut self, bound: Duration) -> Result<(), InFlight> {
        self.stopping = true;
        self.tick_rearm_at = None;
        let deadline = Instant::now() + bound;
        let mut reaped = Vec::new();
        loop {
            reaped.clear();
            self.reap(&mut reaped);
            let left = self.in_flight();
            if left.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                self.leaked = true;
                return Err(left);
            }
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(pack(OpKind::Cancel, 0, 0));
            self.push(entry);
            self.flush_backlog();
            let wait = (deadline - now).min(Duration::from_millis(QUIESCE_WAIT_MS));
            let ts = types::Timespec::from(wait);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.leaked && !self.in_flight().is_empty() {
            if let Err(left) = self.quiesce(Duration::from_millis(QUIESCE_MS)) {
                crate::elog!("ringpush error=ring_quiesce_gave_up {left} (leaking its memory)");
            }
        }
        if self.leaked {
            // The kernel may still write into the buffers or read the frames: never free
            // them. This happens at most once per ring, at exit.
            std::mem::forget(self.bufs.take());
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::take(&mut self.connects));
        }
    }
}

#[cfg(test)]
mod tests;
