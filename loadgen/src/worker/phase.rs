//! The run's phases and the state the main thread, the workers and the publisher share:
//! the main thread moves every thread through [`Phase`]s and reads the counters each worker
//! publishes.
//!
//! Invariants:
//! - The phase is one atomic byte the main thread writes and each worker reads after every
//!   batch; a worker publishes its counters when it sees a new phase, and [`Shared::sum`]
//!   reports the lowest phase any worker had seen, so the main thread judges a phase only
//!   once every worker is in it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::report::Counters;

/// The run's phases, set by the main thread, followed by every worker.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Open every connection of the share (churn skips this).
    Ramp = 0,
    /// The scenario's traffic: hold, echo, receive broadcasts, churn.
    Run = 1,
    /// No new messages; wait for outstanding echoes and deliveries.
    Drain = 2,
    /// Close every connection and exit.
    Close = 3,
    /// Reset everything and exit now (a second interrupt).
    Stop = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Ramp,
            1 => Phase::Run,
            2 => Phase::Drain,
            3 => Phase::Close,
            _ => Phase::Stop,
        }
    }

    /// The phase's name in the progress line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Ramp => "ramp",
            Phase::Run => "run",
            Phase::Drain => "drain",
            Phase::Close => "close",
            Phase::Stop => "stop",
        }
    }
}

/// The resume scenario's steps within `Phase::Run`, set by the main thread.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResumeStep {
    /// Connected and subscribed; nothing to do yet.
    Hold = 0,
    /// Close every connection, keeping each slot and its offset (parked).
    Disconnect = 1,
    /// Reopen every parked slot and subscribe with `since`.
    Reconnect = 2,
}

/// State shared by the main thread, the workers and the publisher.
pub struct Shared {
    /// The current [`Phase`].
    pub phase: AtomicU8,
    /// Broadcast: sequence numbers the publisher has used (final before `Close`).
    pub published: AtomicU64,
    /// Per worker: its counters as of its last publication.
    pub counters: Vec<Mutex<Counters>>,
    /// The common origin of the workers' ramp timestamps.
    pub epoch: Instant,
    /// Resume: the current [`ResumeStep`].
    pub resume_step: AtomicU8,
    /// Resume: when the reconnect began, ns since `epoch` (set before the step).
    pub reconnect_ns: AtomicU64,
}

impl Shared {
    /// Fresh shared state for `workers` workers, in the given first phase.
    pub fn new(workers: usize, first: Phase) -> Shared {
        Shared {
            phase: AtomicU8::new(first as u8),
            published: AtomicU64::new(0),
            counters: (0..workers)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
            epoch: Instant::now(),
            resume_step: AtomicU8::new(ResumeStep::Hold as u8),
            reconnect_ns: AtomicU64::new(0),
        }
    }

    /// The resume scenario's current step.
    pub fn resume_step(&self) -> ResumeStep {
        match self.resume_step.load(Ordering::Acquire) {
            0 => ResumeStep::Hold,
            1 => ResumeStep::Disconnect,
            _ => ResumeStep::Reconnect,
        }
    }

    /// Moves the resume scenario to `step`; a reconnect records its start first.
    pub fn set_resume_step(&self, step: ResumeStep) {
        if step == ResumeStep::Reconnect {
            let ns = (self.epoch.elapsed().as_nanos() as u64).max(1);
            self.reconnect_ns.store(ns, Ordering::Release);
        }
        self.resume_step.store(step as u8, Ordering::Release);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves every thread to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The sum of every worker's last published counters; its `phase_seen` is the
    /// lowest phase any worker had seen when it published.
    pub fn sum(&self) -> Counters {
        let mut sum = Counters {
            phase_seen: u8::MAX,
            ..Counters::default()
        };
        for c in &self.counters {
            if let Ok(c) = c.lock() {
                sum.add(&c);
            }
        }
        sum
    }
}
