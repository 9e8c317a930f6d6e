//! ringpush-loadgen: the load generator of ringpush, on the node's own io_uring `Ring` and
//! WebSocket codec.
//!
//! The main thread validates the plan, starts one pinned worker per share (each with its
//! own ring and file table), then drives the phases every worker follows: ramp (open every
//! connection) → run (hold, echo, broadcast or churn for --duration) → drain (wait for
//! outstanding echoes and deliveries) → close. It prints a progress line every second on
//! stderr and, at the end, the latency spectra, a summary line and (--json) a JSON summary
//! on stdout.
//!
//! The resume scenario runs its own steps inside the run phase (`step_resume`): park every
//! client, publish the messages they will miss, reconnect them all, wait for the last one
//! to catch up.
//!
//! Invariants:
//! - Only the main thread changes the phase (and the resume step), and neither goes
//!   backwards.
//! - The broadcast publisher has returned before `Close`, so `Shared::published` is final
//!   when the workers count what never arrived. With `--publisher none` no publisher runs
//!   and `Shared::published` holds the --count expected from elsewhere from `Run` on.

mod broadcast;
mod cli;
mod conn;
mod host;
mod json;
mod payload;
mod plan;
mod plot;
mod report;
mod summary;
mod target;
mod timeline;
mod worker;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use ringpush::ring::sys;

use crate::cli::Cli;
use crate::plan::{Plan, ResumePlan, Scenario};
use crate::report::{Counters, Hists, PublishReport, Report, Summary};
use crate::worker::{Phase, ResumeStep, Setup, Shared};

/// How often the main thread looks at the workers' counters.
const POLL: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let cli::ScenarioCmd::Plot(args) = &cli.scenario {
        return match plot::plot_command(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                ringpush::elog!("ringpush-loadgen plot: {e}");
                ExitCode::from(2)
            }
        };
    }
    let plan = match Plan::from_cli(cli) {
        Ok(plan) => Arc::new(plan),
        Err(e) => {
            ringpush::elog!("ringpush-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    match run(plan) {
        Ok(code) => code,
        Err(e) => {
            ringpush::elog!("ringpush-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// The main thread's view of the run.
struct Driver {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    started: Instant,
    phase: Phase,
    phase_since: Instant,
    ramp: Option<Duration>,
    settled_at: Option<Instant>,
    traffic_start: Option<Instant>,
    traffic: Option<Duration>,
    subscribers: u64,
    publisher: Option<JoinHandle<PublishReport>>,
    publish: Option<PublishReport>,
    interrupts: u32,
    mem_before: host::MemSample,
    mem_held: Option<(host::MemSample, u64)>,
    resume: ResumeDriver,
}

/// Where the main thread is in the resume scenario's run phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResumeStage {
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
struct ResumeDriver {
    stage: ResumeStage,
    /// Clients parked, hence expected to resume.
    parked: u64,
    /// The node's largest VmRSS sampled (every poll) while the clients resumed.
    rss_peak: Option<u64>,
    /// The node's VmHWM once all caught up: its largest RSS since it started.
    rss_high_water: Option<u64>,
    /// Reconnect signal → the last client caught up (None: not all did).
    catch_up: Option<Duration>,
}

fn run(plan: Arc<Plan>) -> Result<ExitCode, String> {
    sys::block_shutdown_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let churn = matches!(plan.scenario, Scenario::Churn { .. });
    let first = if churn { Phase::Run } else { Phase::Ramp };
    let shared = Arc::new(Shared::new(plan.workers, first));
    let sources = match (plan.sources.first(), plan.sources.last()) {
        (Some(a), Some(b)) if plan.sources.len() > 1 => {
            format!("{a}..{b} ({} addresses)", plan.sources.len())
        }
        (Some(a), _) => a.to_string(),
        _ => "kernel".to_string(),
    };
    ringpush::elog!(
        "ringpush-loadgen scenario={} target={} dest={} path={} workers={} sources={sources} \
         rate={} pid={}",
        plan.scenario.name(),
        plan.connections,
        plan.dest,
        plan.path,
        plan.workers,
        if plan.rate > 0.0 {
            format!("{}/s", plan.rate)
        } else {
            "unlimited".into()
        },
        std::process::id()
    );

    let mem_before = host::sample(plan.node_pid);
    let cores = if plan.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(plan.workers);
    for i in 0..plan.workers {
        let setup = Setup {
            index: i,
            plan: Arc::clone(&plan),
            shared: Arc::clone(&shared),
            core: (!cores.is_empty()).then(|| cores[i % cores.len()]),
        };
        handles.push(worker::spawn(setup, ready_tx.clone()));
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..plan.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker thread died during start".to_string()),
        }
    }
    if let Some(e) = failure {
        shared.set_phase(Phase::Stop);
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }

    let now = Instant::now();
    let mut driver = Driver {
        plan: Arc::clone(&plan),
        shared: Arc::clone(&shared),
        started: now,
        phase: first,
        phase_since: now,
        ramp: None,
        settled_at: None,
        traffic_start: None,
        traffic: None,
        subscribers: 0,
        publisher: None,
        publish: None,
        interrupts: 0,
        mem_before,
        mem_held: None,
        resume: ResumeDriver {
            stage: ResumeStage::Idle,
            parked: 0,
            rss_peak: None,
            rss_high_water: None,
            catch_up: None,
        },
    };
    let mut last_line = now;
    let mut last_counters = Counters::default();
    let mut timeline = timeline::Timeline::new(driver.started);
    loop {
        if sys::wait_signal(POLL).is_some() {
            driver.interrupt();
        }
        let sum = shared.sum();
        driver.step(&sum);
        timeline.poll(&sum, plan.node_pid);
        if !plan.progress.is_zero() && last_line.elapsed() >= plan.progress {
            let interval = last_line.elapsed();
            last_line = Instant::now();
            let mut line = report::progress_line(
                driver.started.elapsed(),
                driver.phase.name(),
                &sum,
                &last_counters,
                interval,
            );
            if matches!(plan.scenario, Scenario::Broadcast(_) | Scenario::Resume(_)) {
                let published = shared.published.load(std::sync::atomic::Ordering::Acquire);
                line.push_str(&format!(" published={published}"));
            }
            if matches!(plan.scenario, Scenario::Resume(_)) {
                line.push_str(&format!(
                    " parked={} caught_up={}",
                    driver.resume.parked, sum.caught_up
                ));
            }
            ringpush::elog!("{line}");
            last_counters = sum;
        }
        if driver.phase >= Phase::Close && handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }

    let mut counters = Counters::default();
    let rtt = matches!(plan.scenario, Scenario::Echo(_));
    let delivery = matches!(plan.scenario, Scenario::Broadcast(_));
    let mut hists = match plan.scenario {
        Scenario::Resume(_) => Hists::resume(),
        _ => Hists::new(rtt, delivery),
    };
    let mut lost_workers = 0;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Some(Report {
                counters: c,
                hists: hs,
            })) => {
                counters.add(&c);
                hists.add(&hs);
            }
            _ => {
                ringpush::elog!(
                    "ringpush-loadgen: worker {i} ended abnormally; its figures are lost"
                );
                lost_workers += 1;
            }
        }
    }
    let duration = driver.started.elapsed();
    let unanswered = if rtt {
        counters.msgs_out.saturating_sub(counters.msgs_in)
    } else {
        0
    };
    let publish = driver.publish.take();
    let errors = counters.errors()
        + unanswered
        + publish.as_ref().map_or(0, PublishReport::errors)
        + lost_workers;
    let summary = Summary {
        scenario: plan.scenario.name(),
        target: plan.connections,
        workers: plan.workers,
        counters: &counters,
        hists: &hists,
        publish: publish.as_ref(),
        unanswered,
        duration,
        ramp: driver.ramp,
        traffic: driver.traffic,
        errors,
        max_errors: plan.max_errors,
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", summary.spectra());
    let _ = writeln!(out, "{}", summary.line());
    if let Some((held, connections)) = &driver.mem_held {
        let _ = writeln!(
            out,
            "{}",
            host::growth_line(&driver.mem_before, held, *connections)
        );
    }
    if let Scenario::Resume(r) = &plan.scenario {
        let _ = writeln!(out, "{}", driver.resume.line(r.messages, &counters));
    }
    if plan.json || plan.plot.is_some() {
        let mut json = summary.json();
        json["timeline"] = timeline.json();
        if let Some((held, connections)) = &driver.mem_held {
            json["memory"] = host::growth(&driver.mem_before, held, *connections);
        }
        if delivery {
            let published = shared.published.load(std::sync::atomic::Ordering::Acquire);
            json["subscribers"] = serde_json::json!(driver.subscribers);
            json["deliveries_expected"] = serde_json::json!(published * driver.subscribers);
        }
        if let Scenario::Resume(r) = &plan.scenario {
            json["resume"] = driver.resume.json(r.messages, &counters);
        }
        if plan.json {
            let _ = writeln!(out, "{json}");
        }
        if let Some(path) = &plan.plot {
            if let Err(e) = plot::plot_run(path, &json) {
                ringpush::elog!("ringpush-loadgen: --plot {}: {e}", path.display());
            }
        }
    }
    let _ = out.flush();
    Ok(if errors > plan.max_errors {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

impl Driver {
    fn set(&mut self, phase: Phase) {
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

    fn interrupt(&mut self) {
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
    fn step(&mut self, sum: &Counters) {
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

impl Driver {
    /// The resume scenario's run phase: park every client, publish what they will miss,
    /// reconnect them all at once, wait until all have caught up.
    fn step_resume(&mut self, sum: &Counters, r: &ResumePlan) {
        match self.resume.stage {
            ResumeStage::Idle | ResumeStage::Done => {}
            ResumeStage::Disconnecting => {
                if sum.open + sum.connecting + sum.closing + sum.releasing > 0 {
                    return;
                }
                self.resume.parked = sum.backoff;
                self.resume.stage = ResumeStage::Publishing;
                self.publisher = Some(broadcast::spawn(
                    Arc::clone(&self.plan),
                    r.publish.clone(),
                    Arc::clone(&self.shared),
                ));
            }
            ResumeStage::Publishing => {
                if !self.publisher.as_ref().is_none_or(|p| p.is_finished()) {
                    return;
                }
                if let Some(publisher) = self.publisher.take() {
                    match publisher.join() {
                        Ok(report) => self.publish = Some(report),
                        Err(_) => {
                            ringpush::elog!("ringpush-loadgen: the publisher thread panicked")
                        }
                    }
                }
                self.subscribers = self.resume.parked;
                self.resume.stage = ResumeStage::Reconnecting;
                self.phase_since = Instant::now();
                self.shared.set_resume_step(ResumeStep::Reconnect);
            }
            ResumeStage::Reconnecting => {
                if let Some(rss) = host::node_rss(self.plan.node_pid) {
                    self.resume.rss_peak = Some(self.resume.rss_peak.map_or(rss, |p| p.max(rss)));
                }
                let all = sum.caught_up >= self.resume.parked;
                if !all && self.phase_since.elapsed() < self.plan.drain_timeout {
                    return;
                }
                if all {
                    let start = self
                        .shared
                        .reconnect_ns
                        .load(std::sync::atomic::Ordering::Acquire);
                    self.resume.catch_up = Some(Duration::from_nanos(
                        sum.caught_up_last_ns.saturating_sub(start),
                    ));
                }
                self.resume.rss_high_water = host::node_rss_high_water(self.plan.node_pid);
                self.resume.stage = ResumeStage::Done;
                self.set(Phase::Drain);
            }
        }
    }
}

impl ResumeDriver {
    fn json(&self, messages: u64, c: &Counters) -> serde_json::Value {
        serde_json::json!({
            "clients": self.parked,
            "messages": messages,
            "recovered": c.resumes_recovered,
            "not_recovered": c.resumes_not_recovered,
            "caught_up": c.caught_up,
            "catch_up_ms": self.catch_up.map(|d| d.as_secs_f64() * 1000.0),
            "node_rss_peak_bytes": self.rss_peak,
            "node_rss_high_water_bytes": self.rss_high_water,
        })
    }

    fn line(&self, messages: u64, c: &Counters) -> String {
        format!(
            "resume clients={} messages={messages} recovered={} not_recovered={} caught_up={} \
             catch_up_ms={} node_rss_peak_bytes={} node_rss_high_water_bytes={}",
            self.parked,
            c.resumes_recovered,
            c.resumes_not_recovered,
            c.caught_up,
            self.catch_up
                .map_or("n/a".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0)),
            self.rss_peak.map_or("n/a".into(), |b| b.to_string()),
            self.rss_high_water.map_or("n/a".into(), |b| b.to_string()),
        )
    }
}
