//! The main thread's driver: the phase machine every worker follows (ramp → run → drain →
//! close) and what the main thread records on the way (ramp time, memory held, the
//! publisher's report).
//!
//! Invariants:
//! - Only the driver changes the phase (and the resume step), and neither goes backwards.
//! - The broadcast publisher has been joined before `Close`, so `Shared::published` is
//!   final when the workers count what never arrived.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::plan::Plan;
use crate::report::{Counters, PublishReport};
use crate::scenario::Scenario;
use crate::worker::{Phase, ResumeStep, Shared};
use crate::{broadcast, cli, host, target};

/// The main thread's view of the run.
pub(crate) struct Driver {
    pub(crate) plan: Arc<Plan>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) started: Instant,
    pub(crate) phase: Phase,
    pub(crate) phase_since: Instant,
    pub(crate) ramp: Option<Duration>,
    pub(crate) settled_at: Option<Instant>,
    pub(crate) traffic_start: Option<Instant>,
    pub(crate) traffic: Option<Duration>,
    pub(crate) subscribers: u64,
    pub(crate) publisher: Option<JoinHandle<PublishReport>>,
    pub(crate) publish: Option<PublishReport>,
    pub(crate) interrupts: u32,
    pub(crate) mem_before: host::MemSample,
    pub(crate) mem_held: Option<(host::MemSample, u64)>,
    pub(crate) resume: ResumeDriver,
}

/// Where the main thread is in the resume scenario's run phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResumeStage {
    /// Not started (or not the resume scenario).
    Idle,
    /// Waiting for every connection to be closed and parked.
    Disconnecting,
    /// The publisher is sending the messages the clients miss.
    Publishing,
    /// Every client is reconnecting with `since`; waiting until all have caught up.
    Reconnecting,
    /// All caught up (or the drain timeout passed).
    Done,
}

/// The resume scenario's figures as the main thread sees them.
pub(crate) struct ResumeDriver {
    pub(crate) stage: ResumeStage,
    /// Clients parked, hence expected to resume.
    pub(crate) parked: u64,
    /// The node's largest VmRSS sampled (every poll) while the clients resumed.
    pub(crate) rss_peak: Option<u64>,
    /// The node's VmHWM once all caught up: its largest RSS since it started.
    pub(crate) rss_high_water: Option<u64>,
    /// Reconnect signal → the last client caught up (None: not all did).
    pub(crate) catch_up: Option<Duration>,
}

impl Driver {
    pub(crate) fn set(&mut self, phase: Phase) {
        if phase <= self.phase {
            return;
        }
        if self.phase == Phase::Run && self.mem_held.is_none() {
            // Every connection is still held: the memory they cost is in use now.
            let open = self.shared.sum().open;
            self.mem_held = Some((host::sample(self.plan.node_pid), open));
        }
        if phase >= Phase::Drain {
            // The publisher stops on any phase past Run; wait for it so that the number
            // of messages published is final before the workers settle their counts.
            self.shared.set_phase(phase.min(Phase::Drain));
            if let Some(publisher) = self.publisher.take() {
                match publisher.join() {
                    Ok(report) => self.publish = Some(report),
                    Err(_) => ringpush::elog!("ringpush-loadgen: the publisher thread panicked"),
                }
            }
        }
        self.shared.set_phase(phase);
        if phase == Phase::Run {
            self.traffic_start = Some(Instant::now());
        }
        if phase >= Phase::Close && self.traffic.is_none() {
            self.traffic = self.traffic_start.map(|t| t.elapsed());
        }
        self.phase = phase;
        self.phase_since = Instant::now();
    }

    pub(crate) fn interrupt(&mut self) {
        self.interrupts += 1;
        if self.interrupts == 1 && self.phase < Phase::Close {
            ringpush::elog!(
                "ringpush-loadgen: interrupted, closing connections (again to stop now)"
            );
            self.set(Phase::Close);
        } else {
            self.set(Phase::Stop);
        }
    }

    /// Moves the run on when its phase is done.
    pub(crate) fn step(&mut self, sum: &Counters) {
        let in_phase = self.phase_since.elapsed();
        if sum.phase_seen < self.phase as u8 {
            // Some worker has not yet published counters of this phase.
            return;
        }
        match self.phase {
            Phase::Ramp => {
                if self.ramp.is_none() {
                    let settled = sum.connecting + sum.backoff + sum.releasing + sum.unstarted == 0;
                    let timed_out = in_phase >= self.plan.ramp_timeout;
                    if !(settled || timed_out) {
                        return;
                    }
                    if !settled {
                        ringpush::elog!(
                            "ringpush-loadgen: ramp timeout after {:?}: {} open, {} still \
                             connecting, {} backing off, {} not started",
                            self.plan.ramp_timeout,
                            sum.open,
                            sum.connecting,
                            sum.backoff,
                            sum.unstarted
                        );
                    }
                    self.ramp = Some(in_phase);
                    self.settled_at = Some(Instant::now());
                }
                if self
                    .settled_at
                    .is_some_and(|at| at.elapsed() < self.plan.settle)
                {
                    return;
                }
                let resume = matches!(self.plan.scenario, Scenario::Resume(_));
                if resume {
                    // Every client must know its channel's offset before it leaves.
                    let channels = match &self.plan.mode {
                        target::Mode::Json(json) => json.channels_per_conn as u64,
                        target::Mode::Raw => 1,
                    };
                    let subscribed = sum.json_subscribed >= sum.open * channels;
                    if !subscribed && in_phase < self.plan.ramp_timeout {
                        return;
                    }
                }
                if (resume || !self.plan.settle.is_zero()) && self.mem_held.is_none() {
                    self.mem_held = Some((host::sample(self.plan.node_pid), sum.open));
                }
                self.subscribers = sum.open;
                self.set(Phase::Run);
                if resume {
                    self.resume.stage = ResumeStage::Disconnecting;
                    self.shared.set_resume_step(ResumeStep::Disconnect);
                }
                if let Scenario::Broadcast(b) = &self.plan.scenario {
                    if b.publisher == cli::Publisher::None {
                        // Subscribe only: another process publishes the --count messages,
                        // which the drain phase waits for and the close counts as missing.
                        let expected = b.count.unwrap_or(0);
                        self.shared
                            .published
                            .store(expected, std::sync::atomic::Ordering::Release);
                        return;
                    }
                    self.publisher = Some(broadcast::spawn(
                        Arc::clone(&self.plan),
                        b.clone(),
                        Arc::clone(&self.shared),
                    ));
                }
            }
            Phase::Run => {
                if let Scenario::Resume(r) = &self.plan.scenario {
                    let r = r.clone();
                    self.step_resume(sum, &r);
                    return;
                }
                let count_done = match &self.plan.scenario {
                    Scenario::Broadcast(b) if b.count.is_some() => {
                        self.publisher.as_ref().is_none_or(|p| p.is_finished())
                    }
                    _ => false,
                };
                let time_done = match &self.plan.scenario {
                    // With --count the run lasts until every message is out.
                    Scenario::Broadcast(b) if b.count.is_some() => false,
                    _ => in_phase >= self.plan.duration,
                };
                if !(count_done || time_done) {
                    return;
                }
                match self.plan.scenario {
                    Scenario::Echo(_) | Scenario::Broadcast(_) | Scenario::Resume(_) => {
                        self.set(Phase::Drain)
                    }
                    Scenario::Connect | Scenario::Churn { .. } => self.set(Phase::Close),
                }
            }
            Phase::Drain => {
                let complete = match &self.plan.scenario {
                    Scenario::Echo(_) => sum.msgs_in >= sum.msgs_out,
                    Scenario::Broadcast(_) | Scenario::Resume(_) => {
                        // The publisher has been joined (or, subscribing only, the expected
                        // count stored), so this is final.
                        let published = self
                            .shared
                            .published
                            .load(std::sync::atomic::Ordering::Acquire);
                        sum.msgs_in >= published * self.subscribers
                    }
                    _ => true,
                };
                if complete || in_phase >= self.plan.drain_timeout {
                    self.set(Phase::Close);
                }
            }
            Phase::Close | Phase::Stop => {}
        }
    }
}
