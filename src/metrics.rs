//! Prometheus text exposition (format 0.0.4) of every shard's counters, rendered by the
//! admin shard for `GET /metrics`. Names carry the `ringpush_` prefix; counters that
//! differ per shard carry a `shard` label (the admin shard is `shard="admin"`).

use std::fmt::Write as _;

use crate::history::HistoryStats;
use crate::http::admin_request::AdminError;
use crate::http::handshake::HandshakeError;
use crate::stats::{Buckets, Counters, BUCKET_BOUNDS_US, CLOSE_CODES};

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP ringpush_{name} {help}");
        let _ = writeln!(self.text, "# TYPE ringpush_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "ringpush_{name} {value}");
        } else {
            let _ = writeln!(self.text, "ringpush_{name}{{{labels}}} {value}");
        }
    }

    fn per_shard(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        shards: &[Counters],
        clients: usize,
        f: impl Fn(&Counters) -> u64,
    ) {
        self.family(name, kind, help);
        for (i, c) in shards.iter().enumerate() {
            let label = if i < clients {
                format!("shard=\"{i}\"")
            } else {
                "shard=\"admin\"".to_string()
            };
            self.sample(name, &label, f(c));
        }
    }

    fn histogram(&mut self, name: &str, help: &str, b: &Buckets) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in BUCKET_BOUNDS_US.iter().enumerate() {
            cumulative += b.counts[i];
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                self.text,
                "ringpush_{name}_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            self.text,
            "ringpush_{name}_bucket{{le=\"+Inf\"}} {}",
            b.count()
        );
        let _ = writeln!(self.text, "ringpush_{name}_sum {}", b.sum_us as f64 / 1e6);
        let _ = writeln!(self.text, "ringpush_{name}_count {}", b.count());
    }
}

/// Appends the broker families (`--broker`, issue 12) to an exposition from `render`.
pub fn render_broker(text: &mut String, stats: &crate::broker::BrokerStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = Out {
        text: std::mem::take(text),
    };
    let up = stats.publisher_up.load(Relaxed) && stats.subscriber_up.load(Relaxed);
    let families = [
        (
            "broker_up",
            "gauge",
            "1 while both broker connections (publish, subscribe) are up.",
            u64::from(up),
        ),
        (
            "broker_subscriptions",
            "gauge",
            "Channels this node is subscribed to on the broker.",
            stats.subscriptions.load(Relaxed),
        ),
        (
            "broker_reconnects_total",
            "counter",
            "Broker connections made again after one was lost.",
            stats.reconnects.load(Relaxed),
        ),
        (
            "broker_publishes_total",
            "counter",
            "Publishes the broker accepted.",
            stats.publishes.load(Relaxed),
        ),
        (
            "broker_publish_failures_total",
            "counter",
            "Publishes that did not reach the broker (answered 503, or dropped for clients).",
            stats.publish_failures.load(Relaxed),
        ),
        (
            "broker_messages_total",
            "counter",
            "Messages received from the broker.",
            stats.messages.load(Relaxed),
        ),
        (
            "broker_unreadable_total",
            "counter",
            "Messages received from the broker that were not ringpush's (not delivered).",
            stats.unreadable.load(Relaxed),
        ),
        (
            "broker_cluster_masters",
            "gauge",
            "Masters in the Redis Cluster's last slot map (0 with one Redis).",
            stats.cluster_masters.load(Relaxed),
        ),
        (
            "broker_cluster_masters_up",
            "gauge",
            "Redis Cluster masters this node's subscriber connection is up to.",
            stats.cluster_masters_up.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        o.family(name, kind, help);
        o.sample(name, "", value);
    }
    *text = o.text;
}

/// Appends the node-wide history families (issue 10) to an exposition from `render`.
pub fn render_history(text: &mut String, stats: &HistoryStats) {
    let mut o = Out {
        text: std::mem::take(text),
    };
    let gauges = [
        (
            "history_channels",
            "Channels with an epoch and offsets kept by the node.",
            stats.channels,
        ),
        (
            "history_entries",
            "Messages kept for resume, all channels.",
            stats.entries,
        ),
        (
            "history_bytes",
            "Bytes kept for resume (bounded by --history-memory).",
            stats.bytes,
        ),
    ];
    for (name, help, value) in gauges {
        o.family(name, "gauge", help);
        o.sample(name, "", value);
    }
    o.family(
        "history_evictions_total",
        "counter",
        "Kept messages evicted, by reason.",
    );
    for (reason, value) in ["size", "ttl", "memory", "channel"]
        .iter()
        .zip(stats.evictions)
    {
        o.sample(
            "history_evictions_total",
            &format!("reason=\"{reason}\""),
            value,
        );
    }
    o.family(
        "history_channels_dropped_total",
        "counter",
        "Channels forgotten (each starts a new epoch on its next use).",
    );
    o.sample("history_channels_dropped_total", "", stats.channels_dropped);
    o.family(
        "resumes_total",
        "counter",
        "JSON-mode subscribes with since, by result.",
    );
    o.sample(
        "resumes_total",
        "result=\"recovered\"",
        stats.replays_recovered,
    );
    o.sample(
        "resumes_total",
        "result=\"not_recovered\"",
        stats.replays_not_recovered,
    );
    o.family(
        "replayed_messages_total",
        "counter",
        "Messages replayed by recovered resumes.",
    );
    o.sample("replayed_messages_total", "", stats.replayed_messages);
    *text = o.text;
}

/// Renders the exposition for `shards` (client shards first, then the admin shard).
pub fn render(shards: &[Counters], clients: usize, draining: bool) -> String {
    let mut total = Counters::new();
    for c in shards {
        total.add(c);
    }
    let mut o = Out {
        text: String::with_capacity(8192),
    };
    o.per_shard(
        "connections_open",
        "gauge",
        "Connections currently held.",
        shards,
        clients,
        |c| c.open,
    );
    o.per_shard(
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        shards,
        clients,
        |c| c.accepted,
    );
    o.per_shard(
        "connections_upgraded_total",
        "counter",
        "WebSocket upgrades completed.",
        shards,
        clients,
        |c| c.upgraded,
    );
    o.per_shard(
        "subscriptions",
        "gauge",
        "Channel subscriptions held.",
        shards,
        clients,
        |c| c.subscriptions,
    );

    o.family(
        "connections_refused_total",
        "counter",
        "Connections refused before or at the upgrade, by reason.",
    );
    for (i, reason) in HandshakeError::ALL_REASONS.iter().enumerate() {
        o.sample(
            "connections_refused_total",
            &format!("reason=\"{reason}\""),
            total.refused.get(i).copied().unwrap_or(0),
        );
    }
    o.sample(
        "connections_refused_total",
        "reason=\"at_capacity\"",
        total.refused_at_cap,
    );

    o.family(
        "handshake_failures_total",
        "counter",
        "Upgrades that failed, by reason.",
    );
    for (i, reason) in HandshakeError::ALL_REASONS.iter().enumerate() {
        o.sample(
            "handshake_failures_total",
            &format!("reason=\"{reason}\""),
            total.refused.get(i).copied().unwrap_or(0),
        );
    }
    o.sample(
        "handshake_failures_total",
        "reason=\"timeout\"",
        total.handshake_timeouts,
    );

    o.family(
        "connections_closed_total",
        "counter",
        "Connections closed by the node, by reason.",
    );
    for (reason, value) in [
        ("aborted", total.aborted),
        ("idle", total.idle_closes),
        ("slow_consumer", total.slow_consumer_closes),
        ("protocol_error", total.protocol_errors),
        ("replaced", total.sessions_replaced),
        ("reassembly_budget", total.reassembly_budget_closes),
        ("token_expired", total.token_expired_closes),
        ("control_rate", total.control_rate_closes),
        ("message_rate", total.message_rate_closes),
    ] {
        o.sample(
            "connections_closed_total",
            &format!("reason=\"{reason}\""),
            value,
        );
    }
    for (name, help, codes) in [
        (
            "close_frames_sent_total",
            "Close frames sent, by code.",
            &total.closes_sent,
        ),
        (
            "close_frames_received_total",
            "Close frames received, by code.",
            &total.closes_received,
        ),
    ] {
        o.family(name, "counter", help);
        for (i, code) in CLOSE_CODES.iter().enumerate() {
            let label = if *code == 0 {
                "code=\"other\"".to_string()
            } else {
                format!("code=\"{code}\"")
            };
            o.sample(name, &label, codes[i]);
        }
    }
    o.per_shard(
        "messages_in_total",
        "counter",
        "Data messages received from clients.",
        shards,
        clients,
        |c| c.messages_in,
    );
    o.per_shard(
        "messages_out_total",
        "counter",
        "Echo replies sent.",
        shards,
        clients,
        |c| c.messages_out,
    );
    o.per_shard(
        "bytes_in_total",
        "counter",
        "Bytes received.",
        shards,
        clients,
        |c| c.bytes_in,
    );
    o.per_shard(
        "bytes_out_total",
        "counter",
        "Bytes sent.",
        shards,
        clients,
        |c| c.bytes_out,
    );
    o.per_shard(
        "publishes_total",
        "counter",
        "Publishes accepted (admin and client).",
        shards,
        clients,
        |c| c.publishes,
    );
    o.per_shard(
        "deliveries_total",
        "counter",
        "Messages handed to subscribers.",
        shards,
        clients,
        |c| c.deliveries,
    );
    o.per_shard(
        "drops_total",
        "counter",
        "Messages dropped for slow consumers.",
        shards,
        clients,
        |c| c.drops,
    );
    o.per_shard(
        "slow_consumer_closes_total",
        "counter",
        "Subscribers closed as slow consumers.",
        shards,
        clients,
        |c| c.slow_consumer_closes,
    );
    o.per_shard(
        "client_messages_ignored_total",
        "counter",
        "Client messages ignored (no --client-publish).",
        shards,
        clients,
        |c| c.client_messages_ignored,
    );
    o.per_shard(
        "reassembly_budget_closes_total",
        "counter",
        "Connections closed with 1009 because the shard's --reassembly-budget was spent.",
        shards,
        clients,
        |c| c.reassembly_budget_closes,
    );
    o.per_shard(
        "reassembly_bytes",
        "gauge",
        "Bytes held reassembling fragmented messages.",
        shards,
        clients,
        |c| c.reassembly_bytes,
    );
    o.per_shard(
        "buffer_ring_exhausted_total",
        "counter",
        "Multishot receives ended by an empty buffer ring.",
        shards,
        clients,
        |c| c.enobufs,
    );
    o.per_shard(
        "pings_sent_total",
        "counter",
        "Heartbeat pings sent.",
        shards,
        clients,
        |c| c.pings_sent,
    );
    o.per_shard(
        "pongs_received_total",
        "counter",
        "Pongs received.",
        shards,
        clients,
        |c| c.pongs_received,
    );
    o.per_shard(
        "pings_lost_total",
        "counter",
        "Pings that got no pong before the idle close.",
        shards,
        clients,
        |c| c.pings_lost,
    );
    o.per_shard(
        "idle_closes_total",
        "counter",
        "Connections closed for silence.",
        shards,
        clients,
        |c| c.idle_closes,
    );
    o.per_shard(
        "accept_emfile_total",
        "counter",
        "Accepts that failed for lack of descriptors.",
        shards,
        clients,
        |c| c.accept_emfile,
    );
    o.per_shard(
        "doorbell_failures_total",
        "counter",
        "Cross-shard doorbells that failed (the target's tick drained its inbox).",
        shards,
        clients,
        |c| c.doorbell_failures,
    );
    o.per_shard(
        "ring_submit_errors_total",
        "counter",
        "io_uring submissions that failed (other than EINTR, EBUSY, EAGAIN).",
        shards,
        clients,
        |c| c.ring_submit_errors,
    );
    o.per_shard(
        "ring_unknown_completions_total",
        "counter",
        "Completions of an unknown operation kind (a bug if non-zero).",
        shards,
        clients,
        |c| c.ring_unknown_completions,
    );
    o.per_shard(
        "tick_errors_total",
        "counter",
        "Timer tick completions that were not an expiry.",
        shards,
        clients,
        |c| c.tick_errors,
    );
    o.per_shard(
        "ring_quiesce_timeouts_total",
        "counter",
        "Shutdowns that left operations in the kernel past the bound (memory leaked).",
        shards,
        clients,
        |c| c.ring_quiesce_timeouts,
    );
    o.per_shard(
        "shard_inbox_full_total",
        "counter",
        "Publishes and session claims refused because a shard's inbox was full.",
        shards,
        clients,
        |c| c.shard_inbox_full,
    );
    o.per_shard(
        "client_publish_rate_closes_total",
        "counter",
        "Clients closed for publishing faster than --client-publish-rate.",
        shards,
        clients,
        |c| c.client_publish_rate_closes,
    );
    o.family(
        "admin_publishes_refused_draining_total",
        "counter",
        "Admin publishes and sends answered 503 during the drain.",
    );
    o.sample(
        "admin_publishes_refused_draining_total",
        "",
        total.admin_publishes_refused_draining,
    );
    o.family(
        "admin_requests_total",
        "counter",
        "Admin requests answered.",
    );
    o.sample("admin_requests_total", "", total.admin_requests);
    o.family(
        "admin_refused_total",
        "counter",
        "Admin requests refused, by reason.",
    );
    for (i, reason) in AdminError::ALL_REASONS.iter().enumerate() {
        o.sample(
            "admin_refused_total",
            &format!("reason=\"{reason}\""),
            total.admin_refused.get(i).copied().unwrap_or(0),
        );
    }
    o.family(
        "admin_paused_total",
        "counter",
        "Admin connections paused because their answers reached --max-pending unread.",
    );
    o.sample("admin_paused_total", "", total.admin_paused);
    o.family(
        "admin_slow_reader_closes_total",
        "counter",
        "Admin connections closed because their answers were not read in time.",
    );
    o.sample(
        "admin_slow_reader_closes_total",
        "",
        total.admin_slow_reader_closes,
    );
    o.family(
        "admin_evicted_total",
        "counter",
        "Admin connections without a completed request evicted for a new one (503).",
    );
    o.sample("admin_evicted_total", "", total.admin_evicted);
    o.histogram(
        "fanout_latency_seconds",
        "Publish accepted to last local send completed, per shard.",
        &total.fanout,
    );
    o.histogram(
        "ping_rtt_seconds",
        "Heartbeat ping to pong round trip.",
        &total.ping_rtt,
    );
    o.family(
        "log_lines_dropped_total",
        "counter",
        "Log lines dropped because stderr did not keep up (shards never wait on it).",
    );
    o.sample("log_lines_dropped_total", "", crate::log::dropped_lines());
    o.family("draining", "gauge", "1 while the node drains for shutdown.");
    o.sample("draining", "", u64::from(draining));
    o.family(
        "drain_closes_total",
        "counter",
        "Connections closed 4002 (reconnect elsewhere) by a --drain-spread drain.",
    );
    o.sample("drain_closes_total", "", total.drain_closes);
    o.family(
        "drain_left_connections",
        "gauge",
        "Open connections a --drain-spread drain has yet to close.",
    );
    o.sample("drain_left_connections", "", total.drain_left);
    o.text
}
