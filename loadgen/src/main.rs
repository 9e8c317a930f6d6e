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

mod addr;
mod broadcast;
mod cli;
mod conn;
mod driver;
mod driver_resume;
mod host;
mod json;
mod payload;
mod plan;
mod plot;
mod report;
mod scenario;
mod summary;
mod target;
mod timeline;
mod worker;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use ringpush::ring::sys;

use crate::cli::Cli;
use crate::driver::{Driver, ResumeDriver, ResumeStage};
use crate::plan::Plan;
use crate::report::{Counters, Hists, PublishReport, Report, Summary};
use crate::scenario::Scenario;
use crate::worker::{Phase, Setup, Shared};

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
