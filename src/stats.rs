//! Counters and latency histograms: each shard owns its own (no sharing on the hot path)
//! and publishes a copy of its counters once a second; the main thread sums them for the
//! stats line and, at exit, merges the histograms.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::http::admin_request::AdminError;
use crate::http::handshake::HandshakeError;

/// Close codes counted individually; anything else lands in the last slot.
pub const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 4001, 0,
];

/// Index of `code` in [`CLOSE_CODES`] (the last slot, 0, means "other"); a unit test
/// checks it against the table.
pub const fn close_code_slot(code: u16) -> usize {
    match code {
        1000 => 0,
        1001 => 1,
        1002 => 2,
        1003 => 3,
        1007 => 4,
        1008 => 5,
        1009 => 6,
        1010 => 7,
        1011 => 8,
        1012 => 9,
        4001 => 10,
        _ => CLOSE_CODES.len() - 1,
    }
}

/// Monotonic counters of one shard (or their sum over shards).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Connections currently held.
    pub open: u64,
    /// Connections accepted from the listener.
    pub accepted: u64,
    /// Upgrades completed.
    pub upgraded: u64,
    /// Handshakes refused, by reason (index: `HandshakeError::slot`).
    pub refused: Vec<u64>,
    /// Accepted sockets turned away at the connection cap.
    pub refused_at_cap: u64,
    /// Accept failures for lack of descriptors (EMFILE / ENFILE).
    pub accept_emfile: u64,
    /// Handshakes not finished within the deadline.
    pub handshake_timeouts: u64,
    /// Data messages received / sent.
    pub messages_in: u64,
    pub messages_out: u64,
    /// Payload and frame bytes received / sent on the wire.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Close frames sent / received, by code (index: `close_code_slot`).
    pub closes_sent: [u64; CLOSE_CODES.len()],
    pub closes_received: [u64; CLOSE_CODES.len()],
    /// Connections that ended without a close handshake (TCP EOF, reset, abort).
    pub aborted: u64,
    /// Multishot recv ended for lack of provided buffers.
    pub enobufs: u64,
    /// Multishot recv re-armed after ending without F_MORE.
    pub recv_rearmed: u64,
    /// Pings the node sent, pongs matched to them, and idle closes.
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub idle_closes: u64,
    /// Connections closed for exceeding --max-pending.
    pub slow_consumer_closes: u64,
    /// Protocol errors by the peer (each closed the connection).
    pub protocol_errors: u64,
    /// Publishes accepted (admin `/publish`, `/send`, and client publishes), counted by
    /// the shard that accepted them.
    pub publishes: u64,
    /// Frames handed to a subscriber's send queue by fan-out.
    pub deliveries: u64,
    /// Frames dropped for slow consumers (`--slow-consumer drop`).
    pub drops: u64,
    /// Data messages from subscribers ignored because `--client-publish` is off.
    pub client_messages_ignored: u64,
    /// Connections closed with 1009 because the shard's reassembly budget was spent.
    pub reassembly_budget_closes: u64,
    /// Bytes this shard holds reassembling fragmented messages (a gauge).
    pub reassembly_bytes: u64,
    /// Pings that got no pong before the connection was closed as idle.
    pub pings_lost: u64,
    /// Connections closed with 4001 because a newer one took their (session, tab).
    pub sessions_replaced: u64,
    /// Current channel subscriptions on this shard.
    pub subscriptions: u64,
    /// Admin requests answered, and refused by reason (index: `AdminError::slot`).
    pub admin_requests: u64,
    pub admin_refused: Vec<u64>,
    /// Cross-shard doorbells (MsgRingData) that failed; the target's tick drained its inbox.
    pub doorbell_failures: u64,
    /// Ring submissions that failed with an error other than EINTR, EBUSY or EAGAIN.
    pub ring_submit_errors: u64,
    /// Completions with an op kind no SQE of ours carries (a bug if ever non-zero).
    pub ring_unknown_completions: u64,
    /// Tick completions other than an expiry (-ETIME); each was re-armed one tick later.
    pub tick_errors: u64,
    /// Shutdowns whose ring still had operations in the kernel after the quiesce bound.
    pub ring_quiesce_timeouts: u64,
    /// Publishes and session claims refused because a target shard's inbox held
    /// `--max-shard-inbox` messages, counted by the sending shard.
    pub shard_inbox_full: u64,
    /// Clients closed with 1008 for publishing faster than `--client-publish-rate`.
    pub client_publish_rate_closes: u64,
    /// Admin publishes and sends answered 503 because the node is draining.
    pub admin_publishes_refused_draining: u64,
    /// Admin connections whose parsing paused because their queued answers reached
    /// --max-pending (counted once per pause).
    pub admin_paused: u64,
    /// Admin connections closed because their answers were not read: paused past
    /// --admin-request-timeout, or their request buffer filled while paused.
    pub admin_slow_reader_closes: u64,
    /// Admin connections that had completed no request, evicted (503) to make room for a
    /// new connection when the admin listener was full.
    pub admin_evicted: u64,
    /// Fan-out latency: publish accepted → last local send completed.
    pub fanout: Buckets,
    /// Server ping → pong round trip.
    pub ping_rtt: Buckets,
    /// Connections closed 4003 "token expired": their token's `exp` passed without a
    /// refresh.
    pub token_expired_closes: u64,
    /// Connections closed 1008 for sending more control frames a second than
    /// `--max-control-rate`.
    pub control_rate_closes: u64,
    /// Connections closed 1008 for sending more data messages a second than
    /// `--max-message-rate`.
    pub message_rate_closes: u64,
    /// Connections closed 4002 "reconnect elsewhere" by a `--drain-spread` drain.
    pub drain_closes: u64,
    /// Open connections a `--drain-spread` drain has yet to close (a gauge).
    pub drain_left: u64,
}

/// Upper bounds (µs) of the Prometheus histogram buckets; the last bucket is +Inf.
pub const BUCKET_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A cumulative-friendly latency histogram for the metrics endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct Buckets {
    /// Per bucket (non-cumulative) counts; index 15 is +Inf.
    pub counts: [u64; BUCKET_BOUNDS_US.len() + 1],
    /// Sum of all samples, µs.
    pub sum_us: u64,
}

impl Buckets {
    /// Records one sample in µs.
    pub fn record(&mut self, us: u64) {
        let i = BUCKET_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKET_BOUNDS_US.len());
        self.counts[i] += 1;
        self.sum_us += us;
    }

    /// Adds another set of buckets.
    pub fn add(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Counters {
    /// Zeroed counters with every labelled vector sized.
    pub fn new() -> Counters {
        Counters {
            refused: vec![0; HandshakeError::COUNT],
            admin_refused: vec![0; AdminError::COUNT],
            ..Default::default()
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.open += other.open;
        self.accepted += other.accepted;
        self.upgraded += other.upgraded;
        if self.refused.len() < other.refused.len() {
            self.refused.resize(other.refused.len(), 0);
        }
        for (a, b) in self.refused.iter_mut().zip(&other.refused) {
            *a += b;
        }
        self.refused_at_cap += other.refused_at_cap;
        self.accept_emfile += other.accept_emfile;
        self.handshake_timeouts += other.handshake_timeouts;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for i in 0..CLOSE_CODES.len() {
            self.closes_sent[i] += other.closes_sent[i];
            self.closes_received[i] += other.closes_received[i];
        }
        self.aborted += other.aborted;
        self.enobufs += other.enobufs;
        self.recv_rearmed += other.recv_rearmed;
        self.pings_sent += other.pings_sent;
        self.pongs_received += other.pongs_received;
        self.idle_closes += other.idle_closes;
        self.slow_consumer_closes += other.slow_consumer_closes;
        self.protocol_errors += other.protocol_errors;
        self.publishes += other.publishes;
        self.deliveries += other.deliveries;
        self.drops += other.drops;
        self.client_messages_ignored += other.client_messages_ignored;
        self.reassembly_budget_closes += other.reassembly_budget_closes;
        self.reassembly_bytes += other.reassembly_bytes;
        self.pings_lost += other.pings_lost;
        self.sessions_replaced += other.sessions_replaced;
        self.subscriptions += other.subscriptions;
        self.admin_requests += other.admin_requests;
        if self.admin_refused.len() < other.admin_refused.len() {
            self.admin_refused.resize(other.admin_refused.len(), 0);
        }
        for (a, b) in self.admin_refused.iter_mut().zip(&other.admin_refused) {
            *a += b;
        }
        self.doorbell_failures += other.doorbell_failures;
        self.ring_submit_errors += other.ring_submit_errors;
        self.ring_unknown_completions += other.ring_unknown_completions;
        self.tick_errors += other.tick_errors;
        self.ring_quiesce_timeouts += other.ring_quiesce_timeouts;
        self.shard_inbox_full += other.shard_inbox_full;
        self.client_publish_rate_closes += other.client_publish_rate_closes;
        self.admin_publishes_refused_draining += other.admin_publishes_refused_draining;
        self.admin_paused += other.admin_paused;
        self.admin_slow_reader_closes += other.admin_slow_reader_closes;
        self.admin_evicted += other.admin_evicted;
        self.fanout.add(&other.fanout);
        self.ping_rtt.add(&other.ping_rtt);
        self.token_expired_closes += other.token_expired_closes;
        self.control_rate_closes += other.control_rate_closes;
        self.message_rate_closes += other.message_rate_closes;
        self.drain_closes += other.drain_closes;
        self.drain_left += other.drain_left;
    }

    /// The one-line summary printed every --stats-interval.
    pub fn line(&self) -> String {
        let mut s = format!(
            "open={} accepted={} upgraded={} refused={} msgs_in={} msgs_out={} bytes_in={} \
             bytes_out={} publishes={} deliveries={} drops={} enobufs={} pings={} pongs={} \
             idle_closes={} slow_closes={} proto_errors={} aborted={}",
            self.open,
            self.accepted,
            self.upgraded,
            self.refused.iter().sum::<u64>() + self.refused_at_cap,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.publishes,
            self.deliveries,
            self.drops,
            self.enobufs,
            self.pings_sent,
            self.pongs_received,
            self.idle_closes,
            self.slow_consumer_closes,
            self.protocol_errors,
            self.aborted,
        );
        let mut refused = String::new();
        for (i, n) in self.refused.iter().enumerate().filter(|(_, n)| **n > 0) {
            let _ = write!(refused, "{}:{n},", HandshakeError::ALL_REASONS[i]);
        }
        if self.refused_at_cap > 0 {
            let _ = write!(refused, "at_cap:{},", self.refused_at_cap);
        }
        if !refused.is_empty() {
            let _ = write!(s, " refused_by={}", refused.trim_end_matches(','));
        }
        for (label, codes) in [
            ("closes_sent", &self.closes_sent),
            ("closes_recv", &self.closes_received),
        ] {
            let mut by = String::new();
            for (i, n) in codes.iter().enumerate().filter(|(_, n)| **n > 0) {
                let code = CLOSE_CODES[i];
                if code == 0 {
                    let _ = write!(by, "other:{n},");
                } else {
                    let _ = write!(by, "{code}:{n},");
                }
            }
            if !by.is_empty() {
                let _ = write!(s, " {label}={}", by.trim_end_matches(','));
            }
        }
        s
    }
}

/// A latency histogram in microseconds, three significant figures. It grows with the
/// largest value recorded instead of being sized for an hour up front: a fixed-range one is
/// 188 KiB of touched memory, and every shard holds three (at 53 shards that was 30 MB).
pub fn latency_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("three significant figures are valid");
    h.auto(true);
    h
}

/// Writes `hist` in hdrhistogram's percentile-distribution format (values in ms).
pub fn percentile_spectrum(title: &str, hist: &Histogram<u64>) -> String {
    let mut out = format!("# {title} (ms), {} samples\n", hist.len());
    out.push_str("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if hist.is_empty() {
        out.push_str("#[Mean    =        0.000, StdDeviation   =        0.000]\n");
        out.push_str("#[Max     =        0.000, Total count    =            0]\n");
        return out;
    }
    let mut total = 0u64;
    for v in hist.iter_quantiles(1) {
        total += v.count_since_last_iteration();
        let p = v.quantile_iterated_to();
        let inverse = if p < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - p))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {inverse}",
            v.value_iterated_to() as f64 / 1000.0,
            p,
            total,
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        hist.mean() / 1000.0,
        hist.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        hist.max() as f64 / 1000.0,
        hist.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        (2 * 10u64.pow(u32::from(hist.sigfig()))).next_power_of_two()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counted_close_code_has_its_own_slot() {
        for (i, &code) in CLOSE_CODES.iter().enumerate() {
            assert_eq!(close_code_slot(code), i, "{code}");
        }
        // Anything not counted individually, and "no code", land in the last slot.
        for code in [0, 1004, 1005, 1013, 3000, 4000, 4999] {
            assert_eq!(close_code_slot(code), CLOSE_CODES.len() - 1, "{code}");
        }
    }
}
