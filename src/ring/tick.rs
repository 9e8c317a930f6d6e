//! The ring's periodic tick: probing whether the kernel has multishot timeouts (Linux 6.4),
//! arming the tick in the mode chosen, and re-arming it after an expiry or a failure.
//!
//! Invariants:
//! - The tick never spins: a one-shot tick is re-armed per expiry, and a tick that failed
//!   is re-armed only after a full interval (the wait itself times out meanwhile).
//! - `tick_ts` is a box owned by the ring for its whole life: the kernel copies it at
//!   submission, and it never moves.

use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::{pack, OpKind, Ring};

/// The environment variable that forces the tick's mode (`oneshot` or `multishot`); unset
/// or `auto`, the kernel is probed. A test and compatibility switch, not a tuning knob.
pub const TICK_ENV: &str = "RINGPUSH_TICK";
/// Key of the start-up probe's timeout (real ticks use key 0).
const PROBE_KEY: u32 = 1;

/// How the shard's periodic tick is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickMode {
    /// One multishot timeout for the ring's life (Linux 6.4 and later).
    Multishot,
    /// A one-shot timeout re-armed after each expiry (Linux 6.1 to 6.3, or forced with
    /// `RINGPUSH_TICK=oneshot`).
    Oneshot,
}

impl Ring {
    /// Chooses how the tick is armed: `forced` (`"oneshot"` or `"multishot"`, from
    /// `RINGPUSH_TICK`) wins; otherwise a multishot timeout of 1 µs that fires once is
    /// submitted on this fresh ring, and EINVAL means the kernel predates them (6.4).
    /// Call on an enabled ring with nothing in flight.
    pub fn probe_tick(&mut self, forced: Option<&str>) -> TickMode {
        debug_assert!(self.in_flight().is_empty(), "the probe needs a quiet ring");
        self.tick_mode = match forced {
            Some("oneshot") => TickMode::Oneshot,
            Some("multishot") => TickMode::Multishot,
            _ => self.probe_multishot_timeout(),
        };
        self.tick_mode
    }

    fn probe_multishot_timeout(&mut self) -> TickMode {
        *self.tick_ts = types::Timespec::new().nsec(1_000);
        let ts: *const types::Timespec = &*self.tick_ts;
        // The kernel copies the timespec at submission; `tick_ts` lives as long as the ring.
        let entry = opcode::Timeout::new(ts)
            .count(1)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(pack(OpKind::Tick, PROBE_KEY, 0));
        self.push(entry);
        self.flush_backlog();
        let bound = types::Timespec::new().sec(1);
        let args = types::SubmitArgs::new().timespec(&bound);
        let mut verdict = None;
        // A fresh ring posts nothing but the probe's completion; the bound covers a kernel
        // that never answers (then the one-shot tick, which every kernel has, is used).
        for _ in 0..4 {
            let _ = self.ring.submitter().submit_with_args(1, &args);
            for cqe in self.ring.completion() {
                if cqe.user_data() == pack(OpKind::Tick, PROBE_KEY, 0) && !cqueue::more(cqe.flags())
                {
                    verdict = Some(cqe.result());
                }
            }
            if verdict.is_some() {
                break;
            }
        }
        match verdict {
            Some(res) if res == -libc::ETIME => TickMode::Multishot,
            _ => TickMode::Oneshot,
        }
    }

    /// How the tick is armed (after [`Ring::adopt`] or [`Ring::probe_tick`]).
    pub fn tick_mode(&self) -> TickMode {
        self.tick_mode
    }

    /// Arms the periodic tick every `every`, in the mode [`Ring::probe_tick`] chose. The
    /// ring keeps it armed from then on: a one-shot tick is re-armed after each expiry and a
    /// multishot one when it ends; a tick that failed is re-armed one interval later.
    pub fn tick(&mut self, every: Duration) {
        debug_assert!(!self.stopping, "nothing is armed after quiesce");
        self.tick_every = Some(every);
        self.arm_tick();
    }

    fn arm_tick(&mut self) {
        debug_assert!(!self.tick_armed, "one tick at a time");
        let Some(every) = self.tick_every else {
            return;
        };
        self.tick_rearm_at = None;
        *self.tick_ts = types::Timespec::from(every);
        let ts: *const types::Timespec = &*self.tick_ts;
        // `tick_ts` is a Box owned by the Ring for its whole life; the kernel copies it at
        // submission time and the box never moves.
        let timeout = opcode::Timeout::new(ts).count(0);
        let timeout = match self.tick_mode {
            TickMode::Multishot => timeout.flags(types::TimeoutFlags::MULTISHOT),
            TickMode::Oneshot => timeout,
        };
        let entry = timeout.build().user_data(pack(OpKind::Tick, 0, 0));
        self.tick_armed = true;
        self.push(entry);
    }

    /// Books a Tick CQE that ends the tick: an expiry is re-armed at the next enter, a
    /// multishot tick the kernel refused (EINVAL: before 6.4) falls back to one-shot, and
    /// any other failure waits one full interval, so that a failing tick never spins.
    pub(super) fn tick_ended(&mut self, res: i32) {
        debug_assert!(self.tick_armed, "a tick ended that was not armed");
        self.tick_armed = false;
        let Some(every) = self.tick_every else {
            return;
        };
        let now = Instant::now();
        self.tick_rearm_at = Some(if res == -libc::ETIME {
            now
        } else if res == -libc::EINVAL && self.tick_mode == TickMode::Multishot {
            self.tick_mode = TickMode::Oneshot;
            now
        } else {
            now + every
        });
    }

    /// Re-arms an ended tick once it is due; returns when a pending re-arm is due otherwise.
    pub(super) fn rearm_tick_if_due(&mut self) -> Option<Instant> {
        let at = self.tick_rearm_at?;
        if self.stopping || self.tick_armed {
            return None;
        }
        if Instant::now() >= at {
            self.arm_tick();
            return None;
        }
        Some(at)
    }
}
