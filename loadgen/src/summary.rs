//! How the load generator says what it counted: the progress line while it runs, and at
//! the end the percentile spectra, the one-line summary and the JSON summary, from the
//! summed [`Counters`] and merged [`Hists`] of `report.rs`.
//!
//! Invariants:
//! - Every figure printed comes from the counters and histograms as summed: nothing here
//!   counts or changes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::report::{Counters, Failure, Hists, PublishReport};

/// p50, p99, p99.9 and max of a histogram in µs.
fn quantiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p99": null, "p999": null, "max": null});
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// The percentile spectrum of a histogram in µs, `[[percentile, value], ...]` at
/// HdrHistogram's usual steps (5 per halving of the distance to 100 %), for the charts.
fn spectrum(h: &Histogram<u64>) -> Value {
    Value::Array(
        h.iter_quantiles(5)
            .map(|v| json!([v.quantile_iterated_to(), v.value_iterated_to()]))
            .collect(),
    )
}

fn map_u16(m: &BTreeMap<u16, u64>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<Map<String, Value>>(),
    )
}

/// Everything the final output needs.
pub struct Summary<'a> {
    /// Scenario name.
    pub scenario: &'static str,
    /// Connections asked for.
    pub target: usize,
    /// Workers used.
    pub workers: usize,
    /// Summed counters.
    pub counters: &'a Counters,
    /// Merged histograms.
    pub hists: &'a Hists,
    /// Broadcast publisher figures.
    pub publish: Option<&'a PublishReport>,
    /// Echo: messages sent but not answered by the end of the drain.
    pub unanswered: u64,
    /// Wall time from start to the last worker's exit.
    pub duration: Duration,
    /// Ramp: time until the main thread saw every connection settled.
    pub ramp: Option<Duration>,
    /// Run and drain phases together: the time messages flowed.
    pub traffic: Option<Duration>,
    /// Errors in all (counters, unanswered, publisher).
    pub errors: u64,
    /// Tolerated errors.
    pub max_errors: u64,
}

impl Summary<'_> {
    /// Percentile spectra of every histogram, hdrhistogram's format.
    pub fn spectra(&self) -> String {
        let mut out = String::new();
        for (title, _, h) in self.hists.named() {
            out.push_str(&ringpush::stats::percentile_spectrum(title, h));
            out.push('\n');
        }
        if let Some(h) = self.publish.and_then(|p| p.publish_rtt.as_ref()) {
            out.push_str(&ringpush::stats::percentile_spectrum(
                "admin publish round trip (request to response)",
                h,
            ));
            out.push('\n');
        }
        out
    }

    /// Ramp: first connect start to last 101, as the workers timed it.
    fn ramp_span(&self) -> Option<Duration> {
        let c = self.counters;
        (c.ramp_first_ns != 0 && c.ramp_last_ns > c.ramp_first_ns)
            .then(|| Duration::from_nanos(c.ramp_last_ns - c.ramp_first_ns))
    }

    /// Connections opened per second over the ramp (first connect start to last 101).
    fn connect_rate(&self) -> Option<f64> {
        let span = self.ramp_span()?.as_secs_f64();
        (span > 0.0).then(|| self.counters.ramp_upgrades as f64 / span)
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let c = self.counters;
        let mut s = format!(
            "summary scenario={} target={} connected={} upgrades={} attempts={} failed={}",
            self.scenario,
            self.target,
            c.open_at_close,
            c.upgrades,
            c.attempts,
            c.failures_total()
        );
        for kind in Failure::ALL {
            let n = c.failed(kind);
            if n > 0 {
                let _ = write!(s, " {}={n}", kind.name());
            }
        }
        if let Some(rate) = self.connect_rate() {
            let _ = write!(s, " connects_per_s={rate:.0}");
        }
        let _ = write!(
            s,
            " closed_clean={} closed_by_server={} dropped={} proto_errors={} msgs_out={} \
             msgs_in={}",
            c.closed_clean,
            c.closed_by_server,
            c.dropped,
            c.protocol_errors.values().sum::<u64>(),
            c.msgs_out,
            c.msgs_in
        );
        if self.scenario == "echo" {
            let _ = write!(s, " unanswered={}", self.unanswered);
        }
        if c.json_subscribed > 0 || c.json_unreadable > 0 || !c.json_errors.is_empty() {
            let _ = write!(
                s,
                " json_subscribed={} json_errors={} json_unreadable={} json_pings={}",
                c.json_subscribed,
                c.json_errors.values().sum::<u64>(),
                c.json_unreadable,
                c.json_pings
            );
        }
        if matches!(self.scenario, "echo" | "broadcast" | "resume") {
            let _ = write!(
                s,
                " missing={} out_of_order={} duplicates={}",
                c.missing, c.out_of_order, c.duplicates
            );
        }
        if let Some(p) = self.publish {
            let _ = write!(s, " published={} acked={}", p.published, p.acked);
        }
        for (_, name, h) in self.hists.named() {
            if !h.is_empty() {
                let _ = write!(
                    s,
                    " {name}_p50_us={} {name}_p99_us={}",
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99)
                );
            }
        }
        let _ = write!(
            s,
            " errors={} max_errors={} duration_s={:.3}",
            self.errors,
            self.max_errors,
            self.duration.as_secs_f64()
        );
        s
    }

    /// The JSON summary.
    pub fn json(&self) -> Value {
        let c = self.counters;
        let failures: Map<String, Value> = Failure::ALL
            .iter()
            .map(|k| (k.name().to_string(), json!(c.failed(*k))))
            .collect();
        let protocol: Map<String, Value> = c
            .protocol_errors
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let latency: Map<String, Value> = self
            .hists
            .named()
            .into_iter()
            .map(|(_, name, h)| (name.to_string(), quantiles(h)))
            .collect();
        let spectra: Map<String, Value> = self
            .hists
            .named()
            .into_iter()
            .filter(|(_, _, h)| !h.is_empty())
            .map(|(_, name, h)| (name.to_string(), spectrum(h)))
            .collect();
        let mut v = json!({
            "scenario": self.scenario,
            "connections_target": self.target,
            "workers": self.workers,
            "connected": c.open_at_close,
            "upgrades": c.upgrades,
            "attempts": c.attempts,
            "tcp_connected": c.tcp_connected,
            "connect_failures": failures,
            "connect_failures_total": c.failures_total(),
            "handshake_status": map_u16(&c.handshake_status),
            "close_codes_received": map_u16(&c.close_codes),
            "closed_clean": c.closed_clean,
            "closed_abort": c.closed_abort,
            "closed_by_server": c.closed_by_server,
            "dropped": c.dropped,
            "close_timeouts": c.close_timeouts,
            "close_unanswered": c.close_unanswered,
            "protocol_errors": protocol,
            "send_errors": c.send_errors,
            "messages_sent": c.msgs_out,
            "messages_received": c.msgs_in,
            "bytes_sent": c.bytes_out,
            "bytes_received": c.bytes_in,
            "unanswered": self.unanswered,
            "missing": c.missing,
            "out_of_order": c.out_of_order,
            "duplicates": c.duplicates,
            "bad_payload": c.bad_payload,
            "enobufs": c.enobufs,
            "json": {
                "subscribed": c.json_subscribed,
                "errors": map_u16(&c.json_errors),
                "unreadable": c.json_unreadable,
                "pings": c.json_pings,
                "epoch_mismatches": c.epoch_mismatches,
            },
            "latency_us": latency,
            "spectrum_us": spectra,
            "connects_per_s": self.connect_rate(),
            "ramp_s": self.ramp_span().map(|d| d.as_secs_f64()),
            "ramp_settled_s": self.ramp.map(|d| d.as_secs_f64()),
            "traffic_s": self.traffic.map(|d| d.as_secs_f64()),
            "messages_received_per_s": self
                .traffic
                .map(|d| c.msgs_in as f64 / d.as_secs_f64().max(1e-9)),
            "errors": self.errors,
            "max_errors": self.max_errors,
            "duration_s": self.duration.as_secs_f64(),
        });
        if self.scenario == "churn" {
            v["opened"] = json!(c.upgrades);
            v["closed"] = json!(c.closed_clean + c.closed_abort);
            v["failed"] =
                json!(c.failures_total() + c.closed_by_server + c.dropped + c.close_timeouts);
        }
        if let Some(p) = self.publish {
            let status: BTreeMap<u16, u64> = p.status.clone();
            let errors: Map<String, Value> = p
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            v["publish"] = json!({
                "published": p.published,
                "acked": p.acked,
                "subscribers_reported": p.subscribers_reported,
                "last_subscribers": p.last_subscribers,
                "status": map_u16(&status),
                "errors": errors,
                "reconnects": p.reconnects,
                "rtt_us": p.publish_rtt.as_ref().map(quantiles),
                "acked_per_s": self
                    .traffic
                    .map(|d| p.acked as f64 / d.as_secs_f64().max(1e-9)),
            });
        }
        v
    }
}

/// The progress line: gauges now, rates since the last line.
pub fn progress_line(
    elapsed: Duration,
    phase: &str,
    now: &Counters,
    last: &Counters,
    interval: Duration,
) -> String {
    let secs = interval.as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
    format!(
        "[{:8.1}s] {phase:<8} open={} connecting={} closing={} backoff={} connects/s={:.0} \
         failed={} msgs_out/s={:.0} msgs_in/s={:.0} errors={}",
        elapsed.as_secs_f64(),
        now.open,
        now.connecting,
        now.closing,
        now.backoff,
        rate(now.upgrades, last.upgrades),
        now.failures_total(),
        rate(now.msgs_out, last.msgs_out),
        rate(now.msgs_in, last.msgs_in),
        now.errors(),
    )
}
