//! What the run looked like over time, for the charts: open connections, message rates and
//! the node's resident set, sampled by the main thread at a fixed interval.
//!
//! Invariants:
//! - At most [`SAMPLES_MAX`] samples are kept: past it every other sample is dropped and
//!   the interval doubles, so a long run costs bounded memory and still spans the run.
//! - A rate is the change of a summed counter between two samples over their distance in
//!   time; the first sample has no rate (0).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::host;
use crate::report::Counters;

/// Samples kept at most.
pub const SAMPLES_MAX: usize = 4096;

/// Interval between samples at the start of a run.
pub const INTERVAL_START: Duration = Duration::from_millis(250);

/// One point in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Connections open (upgraded, not closed).
    pub open: u64,
    /// Upgrades per second since the previous sample.
    pub connects_per_s: f64,
    /// Messages received per second since the previous sample.
    pub received_per_s: f64,
    /// Messages sent per second since the previous sample.
    pub sent_per_s: f64,
    /// The node's VmRSS, bytes (with `--node-pid`).
    pub node_rss_bytes: Option<u64>,
}

/// The samples of one run.
pub struct Timeline {
    started: Instant,
    interval: Duration,
    next_at: Duration,
    last: Option<(f64, u64, u64, u64)>,
    samples: Vec<Sample>,
}

impl Timeline {
    /// An empty timeline whose time 0 is `started`.
    pub fn new(started: Instant) -> Timeline {
        Timeline {
            started,
            interval: INTERVAL_START,
            next_at: Duration::ZERO,
            last: None,
            samples: Vec::new(),
        }
    }

    /// Takes a sample if the interval has passed since the last one.
    pub fn poll(&mut self, sum: &Counters, node_pid: Option<u32>) {
        let now = self.started.elapsed();
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.interval;
        let t_s = now.as_secs_f64();
        let (upgrades, received, sent) = (sum.upgrades, sum.msgs_in, sum.msgs_out);
        let rate = |now_count: u64, pick: fn(&(f64, u64, u64, u64)) -> u64| {
            self.last.as_ref().map_or(0.0, |last| {
                now_count.saturating_sub(pick(last)) as f64 / (t_s - last.0).max(1e-6)
            })
        };
        let sample = Sample {
            t_s,
            open: sum.open,
            connects_per_s: rate(upgrades, |l| l.1),
            received_per_s: rate(received, |l| l.2),
            sent_per_s: rate(sent, |l| l.3),
            node_rss_bytes: host::node_rss(node_pid),
        };
        self.last = Some((t_s, upgrades, received, sent));
        self.samples.push(sample);
        if self.samples.len() >= SAMPLES_MAX {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.interval *= 2;
        }
    }

    /// The samples as the JSON summary's `timeline` array.
    pub fn json(&self) -> Value {
        Value::Array(
            self.samples
                .iter()
                .map(|s| {
                    json!({
                        "t_s": s.t_s,
                        "open": s.open,
                        "connects_per_s": s.connects_per_s,
                        "received_per_s": s.received_per_s,
                        "sent_per_s": s.sent_per_s,
                        "node_rss_bytes": s.node_rss_bytes,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_over_time_and_memory_stays_bounded() {
        let mut timeline = Timeline::new(Instant::now() - Duration::from_secs(1));
        let mut sum = Counters::default();
        timeline.poll(&sum, None);
        assert_eq!(timeline.samples[0].received_per_s, 0.0);
        for i in 1..=3 * SAMPLES_MAX as u64 {
            sum.msgs_in = i * 100;
            timeline.next_at = Duration::ZERO;
            timeline.poll(&sum, None);
        }
        assert!(timeline.samples.len() < SAMPLES_MAX);
        assert!(timeline.interval > INTERVAL_START);
        assert!(timeline.samples.iter().all(|s| s.received_per_s >= 0.0));
        let times: Vec<f64> = timeline.samples.iter().map(|s| s.t_s).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
    }
}
