//! The resume scenario's run phase as the main thread drives it: park every client,
//! publish the messages they will miss, reconnect them all at once, wait until all have
//! caught up; and the figures it reports.
//!
//! Invariants:
//! - The stages only move forward (`ResumeStage`), and the publisher is joined before the
//!   clients are told to reconnect, so every message they must catch up on exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{Driver, ResumeDriver, ResumeStage};
use crate::report::Counters;
use crate::scenario::ResumePlan;
use crate::worker::{Phase, ResumeStep};
use crate::{broadcast, host};

impl Driver {
    /// The resume scenario's run phase: park every client, publish what they will miss,
    /// reconnect them all at once, wait until all have caught up.
    pub(crate) fn step_resume(&mut self, sum: &Counters, r: &ResumePlan) {
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
    pub(crate) fn json(&self, messages: u64, c: &Counters) -> serde_json::Value {
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

    pub(crate) fn line(&self, messages: u64, c: &Counters) -> String {
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
