//! The io_uring boundary: the only module with `unsafe`.
//!
//! [`Ring`] wraps one shard's io_uring. Callers name operations by value (a listener fd, a
//! connection [`Owner`], a `Bytes` frame) and get typed [`Completion`]s back; the ring owns
//! every piece of memory an SQE points at until its CQE is reaped, so nothing outside this
//! module can free memory the kernel still reads or writes.
//!
//! Invariants:
//! - `user_data` packs (op kind, slab key, generation); a completion for a reused slot is
//!   recognised by its generation and dropped by the caller.
//! - A send's frame lives in `sends` from push until its CQE; a multishot timeout's timespec
//!   lives in `tick_ts` for the life of the ring.
//! - Pushing never fails: a full SQ is submitted, and what still does not fit waits in
//!   `backlog` for the next enter.

pub mod bufring;
pub mod connect;
pub mod sys;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use crate::ring::bufring::BufRing;

/// Identifies a connection slot: its slab key and the generation of its current occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Slab key of the connection.
    pub key: u32,
    /// Generation of the slot's occupant (24 bits are carried in `user_data`).
    pub gen: u32,
}

/// Generations are carried in 24 bits of `user_data`.
pub const GEN_MASK: u32 = 0x00ff_ffff;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Tick = 4,
    Cancel = 5,
    Msg = 6,
    Connect = 7,
}

fn pack(kind: OpKind, key: u32, gen: u32) -> u64 {
    ((kind as u64) << 56) | (((gen & GEN_MASK) as u64) << 32) | key as u64
}

fn unpack(user_data: u64) -> (u8, u32, u32) {
    (
        (user_data >> 56) as u8,
        user_data as u32,
        ((user_data >> 32) as u32) & GEN_MASK,
    )
}

/// A reaped completion, typed by the operation that produced it.
#[derive(Debug)]
pub enum Completion {
    /// Multishot accept: `res` is the new fd or a negative errno.
    Accept { res: i32, more: bool },
    /// Multishot recv for `owner`: `res` bytes in buffer `bid`, 0 at EOF, or a negative errno.
    Recv {
        owner: Owner,
        res: i32,
        more: bool,
        bid: Option<u16>,
        buf_more: bool,
    },
    /// A send of `frame[offset..]` finished: `res` bytes were sent, or a negative errno.
    Send {
        owner: Owner,
        res: i32,
        frame: Bytes,
        offset: usize,
    },
    /// The periodic tick fired (`res` is -ETIME) or ended (`more` false).
    Tick { res: i32, more: bool },
    /// An async cancel finished.
    Cancel { res: i32 },
    /// A message from another ring (MsgRingData): its 64-bit payload, carried in `user_data`
    /// minus the op byte, and `res` as the sender chose it.
    Msg { data: u64, res: i32 },
    /// An outgoing connect for `owner` finished: 0 when connected, or a negative errno
    /// (`-ECANCELED` after [`Ring::cancel_connect`]). See `connect.rs`.
    Connect { owner: Owner, res: i32 },
}

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
    // Field order matters: the io_uring is dropped (and its requests cancelled) before the
    // buffers and frames it may still reference.
    ring: IoUring,
    bufs: Option<BufRing>,
    sends: Slab<InflightSend>,
    connects: Slab<connect::InflightConnect>,
    tick_ts: Box<types::Timespec>,
    backlog: VecDeque<squeue::Entry>,
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
        let _ = self.ring.submit();
        // SAFETY: as above.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: as in `push`: the entry's memory is owned by the Ring.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.backlog.push_front(entry);
                if self.ring.submit().is_err() {
                    return;
                }
                if self.ring.submission().is_full() {
                    return;
                }
            }
        }
    }

    /// Arms multishot accept on a listener.
    pub fn accept_multi(&mut self, listen_fd: RawFd) {
        let entry = opcode::AcceptMulti::new(types::Fd(listen_fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(pack(OpKind::Accept, 0, 0));
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

    /// Arms the shard's periodic tick (a multishot timeout that never ends by itself).
    pub fn tick(&mut self, every: Duration) {
        *self.tick_ts = types::Timespec::from(every);
        let ts: *const types::Timespec = &*self.tick_ts;
        // `tick_ts` is a Box owned by the Ring for its whole life; the kernel reads it at
        // submission time and the box never moves or changes while armed.
        let entry = opcode::Timeout::new(ts)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(pack(OpKind::Tick, 0, 0));
        self.push(entry);
    }

    /// Posts a 56-bit message into another ring's CQ (no memory is referenced).
    pub fn msg_ring(&mut self, target_ring_fd: RawFd, data: u64, res: i32) {
        debug_assert!(data >> 56 == 0, "cross-ring payload is 56 bits");
        let entry = opcode::MsgRingData::new(
            types::Fd(target_ring_fd),
            res,
            pack(OpKind::Msg, 0, 0) | data,
            None,
        )
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(pack(OpKind::Cancel, 0, 0));
        self.push(entry);
    }

    /// Hands every queued SQE to the kernel now, without waiting (used so that replies and
    /// doorbells leave before a long run of sends is queued behind them).
    pub fn submit_now(&mut self) {
        self.flush_backlog();
        let _ = self.ring.submit();
    }

    /// Submits everything queued and waits for at least one completion. EINTR is retried;
    /// EBUSY (CQ overflowed) returns at once so the caller reaps first.
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        self.flush_backlog();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves every available completion into `out`, typed, returning each send's frame.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let (res, flags) = (cqe.result(), cqe.flags());
            let (kind, key, gen) = unpack(cqe.user_data());
            let more = cqueue::more(flags);
            let completion = match kind {
                k if k == OpKind::Accept as u8 => Completion::Accept { res, more },
                k if k == OpKind::Recv as u8 => Completion::Recv {
                    owner: Owner { key, gen },
                    res,
                    more,
                    bid: cqueue::buffer_select(flags),
                    buf_more: cqueue::buffer_more(flags),
                },
                k if k == OpKind::Send as u8 => {
                    let sent = self.sends.remove(key as usize);
                    Completion::Send {
                        owner: sent.owner,
                        res,
                        frame: sent.frame,
                        offset: sent.offset,
                    }
                }
                k if k == OpKind::Tick as u8 => Completion::Tick { res, more },
                k if k == OpKind::Connect as u8 => connect::complete(&mut self.connects, key, res),
                k if k == OpKind::Msg as u8 => Completion::Msg {
                    data: cqe.user_data() & ((1 << 56) - 1),
                    res,
                },
                _ => Completion::Cancel { res },
            };
            out.push(completion);
        }
    }
}
