//! What the load generator counts: per-worker [`Counters`] and latency histograms
//! ([`Hists`]), the publisher's figures, and the kinds of failure. How they are said (the
//! progress line, the spectra, the summary line and the JSON) is in `summary.rs`.
//!
//! Invariants:
//! - Every way a connection can fail has a [`Failure`] kind or a keyed count (handshake
//!   status, close code, protocol error), and [`Counters::errors`] sums all of them.
//! - Counters are only added, never reset; gauges (`open`, `connecting`...) are the one
//!   exception and are replaced, not summed over time.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

pub use crate::summary::{progress_line, Summary};

/// Why a connection attempt failed before it was open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// ECONNREFUSED: nothing listens on the destination.
    Refused,
    /// The TCP connect did not finish within --connect-timeout.
    TimedOut,
    /// Connected, but no 101 within --connect-timeout of the connect start.
    HandshakeTimeout,
    /// ECONNRESET or EPIPE before the 101.
    Reset,
    /// EADDRNOTAVAIL: no local port left for the (source, destination) pair.
    AddrUnavailable,
    /// EMFILE or ENFILE: the worker's file table (or the system's) is full.
    NoFds,
    /// ENETUNREACH, EHOSTUNREACH: no route.
    Unreachable,
    /// The server closed the connection before its 101.
    EofInHandshake,
    /// The server answered a status other than 101 (by code in `handshake_status`).
    HandshakeStatus,
    /// Sec-WebSocket-Accept missing or wrong.
    BadAccept,
    /// The response is not HTTP/1.1 or a header is broken.
    MalformedResponse,
    /// A 101 without `Upgrade: websocket` / `Connection: upgrade`.
    MissingUpgrade,
    /// A 101 with an extension this client never offered.
    UnexpectedExtension,
    /// The response head is too large.
    HeaderTooLarge,
    /// socket(2) or bind(2) failed for a reason not listed above.
    SocketError,
    /// Any other errno.
    Other,
}

impl Failure {
    /// Every kind, in output order.
    pub const ALL: [Failure; 16] = [
        Failure::Refused,
        Failure::TimedOut,
        Failure::HandshakeTimeout,
        Failure::Reset,
        Failure::AddrUnavailable,
        Failure::NoFds,
        Failure::Unreachable,
        Failure::EofInHandshake,
        Failure::HandshakeStatus,
        Failure::BadAccept,
        Failure::MalformedResponse,
        Failure::MissingUpgrade,
        Failure::UnexpectedExtension,
        Failure::HeaderTooLarge,
        Failure::SocketError,
        Failure::Other,
    ];

    /// The kind's name in output.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::TimedOut => "timed_out",
            Failure::HandshakeTimeout => "handshake_timeout",
            Failure::Reset => "reset",
            Failure::AddrUnavailable => "addr_unavailable",
            Failure::NoFds => "no_fds",
            Failure::Unreachable => "unreachable",
            Failure::EofInHandshake => "eof_in_handshake",
            Failure::HandshakeStatus => "handshake_status",
            Failure::BadAccept => "bad_accept",
            Failure::MalformedResponse => "malformed_response",
            Failure::MissingUpgrade => "missing_upgrade",
            Failure::UnexpectedExtension => "unexpected_extension",
            Failure::HeaderTooLarge => "header_too_large",
            Failure::SocketError => "socket_error",
            Failure::Other => "other",
        }
    }

    /// The kind of a failed connect or socket call, from its (positive) errno.
    pub fn from_errno(errno: i32) -> Failure {
        match errno {
            libc::ECONNREFUSED => Failure::Refused,
            libc::ETIMEDOUT | libc::ECANCELED => Failure::TimedOut,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => Failure::Reset,
            libc::EADDRNOTAVAIL | libc::EADDRINUSE => Failure::AddrUnavailable,
            libc::EMFILE | libc::ENFILE => Failure::NoFds,
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN => Failure::Unreachable,
            _ => Failure::Other,
        }
    }

    fn slot(self) -> usize {
        Failure::ALL
            .iter()
            .position(|&f| f == self)
            .expect("every kind is listed")
    }
}

/// Counters of one worker (or their sum).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Gauge: connects and handshakes in progress.
    pub connecting: u64,
    /// Gauge: open (upgraded) connections.
    pub open: u64,
    /// Gauge: connections in their close handshake.
    pub closing: u64,
    /// Gauge: connections waiting out a reconnect backoff.
    pub backoff: u64,
    /// Gauge: connections shut down and waiting for their operations to leave the kernel.
    pub releasing: u64,
    /// Gauge: connections of the ramp not started yet.
    pub unstarted: u64,
    /// The phase the worker had seen when it published these counters (not summed: the
    /// sum keeps the lowest).
    pub phase_seen: u8,
    /// Ramp: the first attempt and the last upgrade, ns since `Shared::epoch` (the sum
    /// keeps the earliest first and the latest last; 0: none).
    pub ramp_first_ns: u64,
    pub ramp_last_ns: u64,
    /// Upgrades during the ramp.
    pub ramp_upgrades: u64,
    /// Open connections when the close phase began.
    pub open_at_close: u64,
    /// Connection attempts started (socket + connect).
    pub attempts: u64,
    /// TCP connects that succeeded.
    pub tcp_connected: u64,
    /// Handshakes that ended in a valid 101 (connections opened).
    pub upgrades: u64,
    /// Connections that ended with a full close handshake.
    pub closed_clean: u64,
    /// Connections we reset on purpose (--close abort).
    pub closed_abort: u64,
    /// Failed attempts by kind (index: position in `Failure::ALL`).
    pub failures: [u64; Failure::ALL.len()],
    /// Handshake responses by status code (101 included).
    pub handshake_status: BTreeMap<u16, u64>,
    /// Close frames received by code (1005: a close frame without a code).
    pub close_codes: BTreeMap<u16, u64>,
    /// Open connections the server closed with a close frame we did not ask for.
    pub closed_by_server: u64,
    /// Open connections that ended without a close frame (EOF or reset).
    pub dropped: u64,
    /// Our close frame got no answer (close frame and FIN) within --close-timeout.
    pub close_timeouts: u64,
    /// Our close frame was answered by a FIN without a close frame.
    pub close_unanswered: u64,
    /// Protocol errors by the server, by rule broken.
    pub protocol_errors: BTreeMap<String, u64>,
    /// Sends that failed (informational: the connection's end is counted by its state).
    pub send_errors: u64,
    /// Data messages sent and received.
    pub msgs_out: u64,
    pub msgs_in: u64,
    /// Bytes sent and received on the wire (handshakes included).
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Messages skipped by the sequence (net of late arrivals), out of order, duplicated.
    pub missing: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Data messages without a readable stamp.
    pub bad_payload: u64,
    /// Multishot receives ended for lack of buffers, and re-armed after ending early.
    pub enobufs: u64,
    pub recv_rearmed: u64,
    /// JSON mode: `subscribed` answers received.
    pub json_subscribed: u64,
    /// JSON mode: `error` objects received, by code.
    pub json_errors: BTreeMap<u16, u64>,
    /// JSON mode: text messages that are no object of the protocol.
    pub json_unreadable: u64,
    /// JSON mode: application-level pings answered.
    pub json_pings: u64,
    /// JSON mode: `subscribed` answers whose epoch differs from the first one this worker
    /// saw for the scenario's channel (one channel has one epoch node-wide).
    pub epoch_mismatches: u64,
    /// Resume: resubscribes answered `recovered:true` / `recovered:false`.
    pub resumes_recovered: u64,
    pub resumes_not_recovered: u64,
    /// Resume: clients that received every missed message, and when the last one did (ns
    /// since `Shared::epoch`; the sum keeps the latest).
    pub caught_up: u64,
    pub caught_up_last_ns: u64,
}

impl Counters {
    /// Counts a failed attempt.
    pub fn fail(&mut self, kind: Failure) {
        self.failures[kind.slot()] += 1;
    }

    /// Failed attempts of one kind.
    pub fn failed(&self, kind: Failure) -> u64 {
        self.failures[kind.slot()]
    }

    /// All failed attempts.
    pub fn failures_total(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// Every failure of every kind, each counted once: attempts, ends we did not ask for,
    /// protocol errors, and messages lost, reordered, duplicated or corrupted.
    pub fn errors(&self) -> u64 {
        self.failures_total()
            + self.closed_by_server
            + self.dropped
            + self.close_timeouts
            + self.close_unanswered
            + self.protocol_errors.values().sum::<u64>()
            + self.missing
            + self.out_of_order
            + self.duplicates
            + self.bad_payload
            + self.json_errors.values().sum::<u64>()
            + self.json_unreadable
            + self.epoch_mismatches
            + self.resumes_not_recovered
    }

    /// Adds `other` into `self` (gauges too: the sum over workers).
    pub fn add(&mut self, other: &Counters) {
        self.phase_seen = self.phase_seen.min(other.phase_seen);
        self.connecting += other.connecting;
        self.open += other.open;
        self.closing += other.closing;
        self.backoff += other.backoff;
        self.releasing += other.releasing;
        self.unstarted += other.unstarted;
        self.open_at_close += other.open_at_close;
        if other.ramp_first_ns != 0 {
            self.ramp_first_ns = match self.ramp_first_ns {
                0 => other.ramp_first_ns,
                mine => mine.min(other.ramp_first_ns),
            };
        }
        self.ramp_last_ns = self.ramp_last_ns.max(other.ramp_last_ns);
        self.ramp_upgrades += other.ramp_upgrades;
        self.attempts += other.attempts;
        self.tcp_connected += other.tcp_connected;
        self.upgrades += other.upgrades;
        self.closed_clean += other.closed_clean;
        self.closed_abort += other.closed_abort;
        for (a, b) in self.failures.iter_mut().zip(&other.failures) {
            *a += b;
        }
        for (k, v) in &other.handshake_status {
            *self.handshake_status.entry(*k).or_default() += v;
        }
        for (k, v) in &other.close_codes {
            *self.close_codes.entry(*k).or_default() += v;
        }
        self.closed_by_server += other.closed_by_server;
        self.dropped += other.dropped;
        self.close_timeouts += other.close_timeouts;
        self.close_unanswered += other.close_unanswered;
        for (k, v) in &other.protocol_errors {
            *self.protocol_errors.entry(k.clone()).or_default() += v;
        }
        self.send_errors += other.send_errors;
        self.msgs_out += other.msgs_out;
        self.msgs_in += other.msgs_in;
        self.bytes_out += other.bytes_out;
        self.bytes_in += other.bytes_in;
        self.missing += other.missing;
        self.out_of_order += other.out_of_order;
        self.duplicates += other.duplicates;
        self.bad_payload += other.bad_payload;
        self.enobufs += other.enobufs;
        self.recv_rearmed += other.recv_rearmed;
        self.json_subscribed += other.json_subscribed;
        for (k, v) in &other.json_errors {
            *self.json_errors.entry(*k).or_default() += v;
        }
        self.json_unreadable += other.json_unreadable;
        self.json_pings += other.json_pings;
        self.epoch_mismatches += other.epoch_mismatches;
        self.resumes_recovered += other.resumes_recovered;
        self.resumes_not_recovered += other.resumes_not_recovered;
        self.caught_up += other.caught_up;
        self.caught_up_last_ns = self.caught_up_last_ns.max(other.caught_up_last_ns);
    }
}

/// The latency histograms of one worker (or their merge), in µs.
#[derive(Clone, Debug)]
pub struct Hists {
    /// Connect start → TCP connected.
    pub tcp_connect: Histogram<u64>,
    /// Connect start → 101 parsed.
    pub upgrade: Histogram<u64>,
    /// Echo: scheduled send → echo received.
    pub rtt: Option<Histogram<u64>>,
    /// Broadcast: publisher's stamp → delivery.
    pub delivery: Option<Histogram<u64>>,
    /// Resume: reconnect signal → the client has every missed message.
    pub catch_up: Option<Histogram<u64>>,
}

impl Hists {
    /// Empty histograms; `rtt` and `delivery` only where the scenario measures them.
    pub fn new(rtt: bool, delivery: bool) -> Hists {
        let h = ringpush::stats::latency_histogram;
        Hists {
            tcp_connect: h(),
            upgrade: h(),
            rtt: rtt.then(h),
            delivery: delivery.then(h),
            catch_up: None,
        }
    }

    /// Empty histograms of the resume scenario: connects and catch-up (replayed messages
    /// waited on purpose, so their delivery latency means nothing).
    pub fn resume() -> Hists {
        Hists {
            catch_up: Some(ringpush::stats::latency_histogram()),
            ..Hists::new(false, false)
        }
    }

    /// Merges `other` into `self`.
    pub fn add(&mut self, other: &Hists) {
        let _ = self.tcp_connect.add(&other.tcp_connect);
        let _ = self.upgrade.add(&other.upgrade);
        if let (Some(a), Some(b)) = (&mut self.rtt, &other.rtt) {
            let _ = a.add(b);
        }
        if let (Some(a), Some(b)) = (&mut self.delivery, &other.delivery) {
            let _ = a.add(b);
        }
        if let (Some(a), Some(b)) = (&mut self.catch_up, &other.catch_up) {
            let _ = a.add(b);
        }
    }

    /// Every histogram the scenario measures, with its title and JSON name.
    pub fn named(&self) -> Vec<(&'static str, &'static str, &Histogram<u64>)> {
        let mut out = vec![
            (
                "tcp connect (connect start to connected)",
                "tcp_connect",
                &self.tcp_connect,
            ),
            (
                "connect latency (connect start to 101 parsed)",
                "connect",
                &self.upgrade,
            ),
        ];
        if let Some(h) = &self.rtt {
            out.push(("echo round trip (scheduled send to echo)", "rtt", h));
        }
        if let Some(h) = &self.delivery {
            out.push((
                "broadcast delivery (publish stamp to receive)",
                "delivery",
                h,
            ));
        }
        if let Some(h) = &self.catch_up {
            out.push((
                "resume catch-up (reconnect to every missed message)",
                "catch_up",
                h,
            ));
        }
        out
    }
}

/// Records `us` (at least 1 µs, the lowest value a histogram tells apart). The histograms
/// grow with the largest value (see `ringpush::stats::latency_histogram`).
pub fn record(hist: &mut Histogram<u64>, us: u64) {
    let _ = hist.record(us.max(1));
}

/// What a worker hands back when it exits.
pub struct Report {
    /// Final counters.
    pub counters: Counters,
    /// Final histograms.
    pub hists: Hists,
}

/// The publisher's own figures (broadcast).
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    /// Messages handed to the node (sequence numbers used).
    pub published: u64,
    /// Publishes the node acknowledged (admin: 200).
    pub acked: u64,
    /// Sum of the `subscribers` the node reported per publish (admin only).
    pub subscribers_reported: u64,
    /// The `subscribers` of the last publish (admin only).
    pub last_subscribers: Option<u64>,
    /// Responses other than 200, by status.
    pub status: BTreeMap<u16, u64>,
    /// Publisher failures by kind (connect, io, bad_response).
    pub errors: BTreeMap<&'static str, u64>,
    /// Publisher connections opened after the first.
    pub reconnects: u64,
    /// Admin request → response, µs.
    pub publish_rtt: Option<Histogram<u64>>,
}

impl PublishReport {
    /// Publisher failures (non-200 answers and I/O errors).
    pub fn errors(&self) -> u64 {
        self.status.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_sum_every_kind() {
        let mut c = Counters::default();
        c.fail(Failure::Refused);
        c.fail(Failure::Refused);
        c.fail(Failure::HandshakeStatus);
        *c.handshake_status.entry(503).or_default() += 1;
        c.dropped += 1;
        *c.protocol_errors
            .entry("MaskedServerFrame".into())
            .or_default() += 1;
        c.missing += 2;
        assert_eq!(c.failed(Failure::Refused), 2);
        assert_eq!(c.errors(), 7);
        let mut sum = Counters::default();
        sum.add(&c);
        sum.add(&c);
        assert_eq!(sum.errors(), 14);
        assert_eq!(sum.handshake_status[&503], 2);
    }

    #[test]
    fn errno_kinds() {
        assert_eq!(Failure::from_errno(libc::ECONNREFUSED), Failure::Refused);
        assert_eq!(
            Failure::from_errno(libc::EADDRNOTAVAIL),
            Failure::AddrUnavailable
        );
        assert_eq!(Failure::from_errno(libc::EMFILE), Failure::NoFds);
        assert_eq!(Failure::from_errno(libc::EIO), Failure::Other);
    }
}
