//! Every way the node ends a connection, named once.
//!
//! A call site says only why a connection ends (`core.end(key, End::SlowConsumer)`); the
//! one `match` in [`End::spec`] decides what that means: the close code and reason the
//! peer reads, how the TCP connection then ends ([`Mode`]), the counter that counts it,
//! and the `event=` name of its log line (and when that line is printed).
//!
//! Invariants:
//! - A close frame we start carries a code that may appear on the wire (never 1005, 1006
//!   or 1015) and a reason of at most `CLOSE_REASON_BYTES_MAX` (123) bytes.
//! - No two ends share an `event=` name or a dedicated counter (the protocol errors are
//!   one end whatever their code); ends without a counter of their own are still counted
//!   by `closes_sent` (a frame) or `aborted` (an abort).
//! - Completing an end already under way is not a new end: the FIN once a closing
//!   connection's queue drains (`Core::next_send`) and the peer's EOF after our close
//!   (`Core::fin_when_drained`) finish it without passing through [`End`].

use std::fmt;

use crate::conn::{self, State};
use crate::shard::Core;
use crate::stats::{self, Counters};
use crate::ws::{frame, CloseCode, OpCode};

#[cfg(test)]
use crate::ws::close::CLOSE_REASON_BYTES_MAX;

/// Why the node ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// No frame from the peer for `--idle-timeout` (or our ping went unanswered).
    IdleTimeout,
    /// The node drains for shutdown: an open connection hears 1001.
    Shutdown,
    /// The drain deadline passed with the connection still open.
    DrainAbort,
    /// The node drains for shutdown while this connection is still in its handshake.
    DrainHandshake,
    /// The node drains with `--drain-spread`: this open connection's turn in the trickle
    /// came, and it hears 4002 "reconnect elsewhere" (reconnect now, to another node).
    DrainSpread,
    /// The peer let `--max-pending` bytes pile up unread (`--slow-consumer close`).
    SlowConsumer,
    /// A newer connection claimed this connection's (session, tab): 4001.
    Replaced,
    /// The peer broke a protocol rule; the code says which kind (1002, 1007, 1008, 1009).
    ProtocolError(CloseCode),
    /// The shard's partial messages exceed `--reassembly-budget` and this connection holds
    /// the most.
    ReassemblyBudget,
    /// The peer published faster than `--client-publish-rate`.
    PublishRate,
    /// A local shard's inbox had no room for the peer's publish.
    PublishQueueFull,
    /// The peer's close frame arrived (with its code, if it sent one): echo it unless ours
    /// is already out, then FIN once the answer is sent.
    PeerClose(Option<CloseCode>),
    /// The peer vanished without a close frame: EOF, reset, or a failed send. Ordinary for
    /// a push node (phones lose their network), so it is counted but not logged.
    PeerGone,
    /// The upgrade request was not complete within the handshake timeout.
    HandshakeTimeout,
    /// The handshake was refused: the queued HTTP refusal goes out, then FIN.
    HandshakeRefused,
    /// A close we started (or the peer's) did not complete within the close timeout.
    CloseTimeout,
    /// An admin connection's answers piled up unread.
    AdminSlowReader,
    /// A full admin listener evicted this connection, which never completed a request.
    AdminEvicted,
    /// An admin answer that closes the connection is queued: FIN once it is sent.
    AdminAnswered,
    /// An admin client ended its keep-alive connection (EOF): FIN once our answers drain.
    AdminPeerClosed,
    /// An admin connection stayed idle past `--idle-timeout` with nothing pending.
    AdminIdle,
    /// A JSON-mode command was longer than `json_proto::COMMAND_BYTES_MAX`: 1009.
    JsonCommandTooLarge,
    /// A JSON-mode client sent `json_proto::MALFORMED_COMMANDS_MAX` malformed commands in a
    /// row: 1008.
    JsonMalformedCommands,
    /// The connection's token expired without a refresh: 4003 "token expired".
    TokenExpired,
    /// The peer sent more control frames in a second than `--max-control-rate`: 1008.
    ControlRate,
    /// The peer sent more data messages in a second than `--max-message-rate`: 1008.
    MessageRate,
}

/// How the TCP connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Send a close frame, then wait for the peer's (or the close deadline) before FIN.
    Graceful,
    /// Send a close frame, then FIN as soon as it is sent.
    Fail,
    /// No frame: shut the socket down both ways at once.
    Abort,
    /// Answer the peer's close frame with its own code (or an empty close if it sent
    /// none) unless ours is out already, then FIN once the answer is sent.
    Echo,
    /// The queued HTTP answer is the last thing sent: FIN once it is flushed.
    AfterAnswer,
    /// The peer stopped sending: FIN once the queue drains, with no deadline of its own.
    Drain,
    /// Nothing is owed to the peer: shut down and free the slot at once.
    Quiet,
}

/// When an end's log line is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Log {
    /// Never: the end is ordinary, its counter is enough.
    Never,
    /// Always (within the shard's log budget).
    Always,
    /// Only for a connection that completed its upgrade: an abort of a half-open socket is
    /// noise.
    IfUpgraded,
}

/// A counter that counts one kind of end (besides `closes_sent` or `aborted`); each
/// variant names its field in [`Counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    /// `idle_closes`.
    IdleCloses,
    /// `slow_consumer_closes`.
    SlowConsumerCloses,
    /// `sessions_replaced`.
    SessionsReplaced,
    /// `protocol_errors`.
    ProtocolErrors,
    /// `reassembly_budget_closes`.
    ReassemblyBudgetCloses,
    /// `client_publish_rate_closes`.
    ClientPublishRateCloses,
    /// `handshake_timeouts`.
    HandshakeTimeouts,
    /// `admin_slow_reader_closes`.
    AdminSlowReaderCloses,
    /// `admin_evicted`.
    AdminEvicted,
    /// `token_expired_closes`.
    TokenExpiredCloses,
    /// `control_rate_closes`.
    ControlRateCloses,
    /// `message_rate_closes`.
    MessageRateCloses,
    /// `drain_closes`.
    DrainCloses,
}

impl Counter {
    /// The counter's field in [`Counters`].
    pub(crate) fn field(self, counters: &mut Counters) -> &mut u64 {
        match self {
            Self::IdleCloses => &mut counters.idle_closes,
            Self::SlowConsumerCloses => &mut counters.slow_consumer_closes,
            Self::SessionsReplaced => &mut counters.sessions_replaced,
            Self::ProtocolErrors => &mut counters.protocol_errors,
            Self::ReassemblyBudgetCloses => &mut counters.reassembly_budget_closes,
            Self::ClientPublishRateCloses => &mut counters.client_publish_rate_closes,
            Self::HandshakeTimeouts => &mut counters.handshake_timeouts,
            Self::AdminSlowReaderCloses => &mut counters.admin_slow_reader_closes,
            Self::AdminEvicted => &mut counters.admin_evicted,
            Self::TokenExpiredCloses => &mut counters.token_expired_closes,
            Self::ControlRateCloses => &mut counters.control_rate_closes,
            Self::MessageRateCloses => &mut counters.message_rate_closes,
            Self::DrainCloses => &mut counters.drain_closes,
        }
    }
}

/// What one [`End`] means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The close frame's code: set for [`Mode::Graceful`] and [`Mode::Fail`], and for
    /// [`Mode::Echo`] when the peer sent one.
    pub code: Option<CloseCode>,
    /// The close frame's reason text (empty for a protocol error, as before).
    pub reason: &'static str,
    /// How the TCP connection ends.
    pub mode: Mode,
    /// The dedicated counter incremented, if any.
    pub counter: Option<Counter>,
    /// The `event=` name of the log line (and the end's label in tests).
    pub event: &'static str,
    /// When the log line is printed.
    pub log: Log,
}

impl End {
    /// The whole table: code, reason, mode, counter and log event of each end.
    pub(crate) const fn spec(self) -> Spec {
        use Counter as C;
        use Log::{Always, IfUpgraded, Never};
        use Mode::{Abort, AfterAnswer, Drain, Echo, Fail, Graceful, Quiet};
        const fn frame(
            code: CloseCode,
            reason: &'static str,
            mode: Mode,
            counter: Option<Counter>,
            event: &'static str,
            log: Log,
        ) -> Spec {
            Spec {
                code: Some(code),
                reason,
                mode,
                counter,
                event,
                log,
            }
        }
        const fn bare(mode: Mode, counter: Option<Counter>, event: &'static str, log: Log) -> Spec {
            Spec {
                code: None,
                reason: "",
                mode,
                counter,
                event,
                log,
            }
        }
        let away = CloseCode::GOING_AWAY;
        let policy = CloseCode::POLICY;
        match self {
            Self::IdleTimeout => frame(
                away,
                "idle timeout",
                Graceful,
                Some(C::IdleCloses),
                "idle_timeout",
                Never,
            ),
            Self::Shutdown => frame(
                away,
                "server shutting down",
                Graceful,
                None,
                "shutdown",
                Never,
            ),
            Self::DrainAbort => bare(Abort, None, "drain_abort", IfUpgraded),
            Self::DrainHandshake => bare(Abort, None, "drain_handshake", IfUpgraded),
            Self::DrainSpread => frame(
                CloseCode::RECONNECT_ELSEWHERE,
                "reconnect elsewhere",
                Graceful,
                Some(C::DrainCloses),
                "drain_spread",
                Never,
            ),
            Self::SlowConsumer => frame(
                policy,
                "slow consumer",
                Fail,
                Some(C::SlowConsumerCloses),
                "slow_consumer",
                Always,
            ),
            Self::Replaced => frame(
                CloseCode::REPLACED,
                "replaced",
                Graceful,
                Some(C::SessionsReplaced),
                "replaced",
                Never,
            ),
            Self::ProtocolError(code) => frame(
                code,
                "",
                Fail,
                Some(C::ProtocolErrors),
                "protocol_error",
                Always,
            ),
            Self::ReassemblyBudget => frame(
                CloseCode::TOO_BIG,
                "reassembly budget",
                Fail,
                Some(C::ReassemblyBudgetCloses),
                "reassembly_budget",
                Always,
            ),
            Self::PublishRate => frame(
                policy,
                "publish rate",
                Fail,
                Some(C::ClientPublishRateCloses),
                "client_publish_rate",
                Always,
            ),
            Self::PublishQueueFull => frame(
                policy,
                "publish queue full",
                Fail,
                None,
                "publish_queue_full",
                Never,
            ),
            Self::PeerClose(code) => Spec {
                code,
                reason: "",
                mode: Echo,
                counter: None,
                event: "peer_close",
                log: Never,
            },
            Self::PeerGone => bare(Abort, None, "peer_gone", Never),
            Self::HandshakeTimeout => bare(
                Abort,
                Some(C::HandshakeTimeouts),
                "handshake_timeout",
                Always,
            ),
            Self::HandshakeRefused => bare(AfterAnswer, None, "handshake_refused", Never),
            Self::CloseTimeout => bare(Abort, None, "close_timeout", IfUpgraded),
            Self::AdminSlowReader => bare(
                Abort,
                Some(C::AdminSlowReaderCloses),
                "admin_slow_reader",
                Always,
            ),
            Self::AdminEvicted => bare(Abort, Some(C::AdminEvicted), "admin_evicted", Always),
            Self::AdminAnswered => bare(AfterAnswer, None, "admin_answered", Never),
            Self::AdminPeerClosed => bare(Drain, None, "admin_peer_closed", Never),
            Self::AdminIdle => bare(Quiet, None, "admin_idle", Never),
            Self::JsonCommandTooLarge => frame(
                CloseCode::TOO_BIG,
                "command too large",
                Fail,
                None,
                "json_command_too_large",
                Never,
            ),
            Self::JsonMalformedCommands => frame(
                policy,
                "malformed commands",
                Fail,
                None,
                "json_malformed_commands",
                Never,
            ),
            Self::TokenExpired => frame(
                CloseCode(crate::auth::TOKEN_EXPIRED_CLOSE_CODE),
                crate::auth::TOKEN_EXPIRED_CLOSE_REASON,
                Graceful,
                Some(C::TokenExpiredCloses),
                "token_expired",
                Never,
            ),
            Self::ControlRate => frame(
                policy,
                "control rate",
                Fail,
                Some(C::ControlRateCloses),
                "control_rate",
                Always,
            ),
            Self::MessageRate => frame(
                policy,
                "message rate",
                Fail,
                Some(C::MessageRateCloses),
                "message_rate",
                Always,
            ),
        }
    }
}

impl Core {
    /// Ends connection `key` for reason `end`, as [`End::spec`] says.
    pub(crate) fn end(&mut self, key: usize, end: End) {
        self.end_logged(key, end, None);
    }

    /// Ends connection `key` for reason `end`; `detail` follows `event=<name>` on the log
    /// line, when the end logs at all.
    pub(crate) fn end_logged(&mut self, key: usize, end: End, detail: Option<fmt::Arguments<'_>>) {
        let spec = end.spec();
        if let Some(counter) = spec.counter {
            *counter.field(&mut self.counters) += 1;
        }
        let event = spec.event;
        if spec.log == Log::Always {
            match detail {
                Some(detail) => self.log(format_args!("event={event} {detail}")),
                None => self.log(format_args!("event={event}")),
            }
        }
        match (spec.mode, spec.code) {
            (Mode::Graceful | Mode::Fail, Some(code)) => {
                self.close_frame(key, code, spec.reason, spec.mode);
            }
            (Mode::Abort, _) if spec.log == Log::IfUpgraded => match detail {
                Some(detail) => self.abort(key, Some(format_args!("event={event} {detail}"))),
                None => self.abort(key, Some(format_args!("event={event}"))),
            },
            (Mode::Abort, _) => self.abort(key, None),
            (Mode::Echo, code) => self.echo_close(key, code),
            (Mode::AfterAnswer, _) => self.close_after_answer(key),
            (Mode::Drain, _) => self.fin_when_drained(key),
            (Mode::Quiet, _) => self.finish(key),
            (Mode::Graceful | Mode::Fail, None) => {
                unreachable!("the table gives every close frame a code")
            }
        }
    }

    /// Queues our close frame; nothing is queued after it. [`Mode::Fail`] FINs once it is
    /// sent; [`Mode::Graceful`] waits for the peer's close frame or the close deadline.
    fn close_frame(&mut self, key: usize, code: CloseCode, reason: &str, mode: Mode) {
        debug_assert!(code.is_valid_on_wire(), "the node never sends {code}");
        let c = &mut self.conns[key];
        if c.has(conn::CLOSE_SENT) {
            return;
        }
        c.flags |= conn::CLOSE_SENT;
        if mode == Mode::Fail {
            c.flags |= conn::FIN_AFTER_FLUSH;
        }
        c.state = State::Closing;
        self.counters.closes_sent[stats::close_code_slot(code.0)] += 1;
        self.push_frame(key, frame::encode_close(code, reason));
        self.leave(key);
        let at = self.wheel.now() + self.ticks_close;
        self.arm(key, at);
    }

    /// The peer's close frame arrived: answer it (echoing its code) unless we already sent
    /// ours, and FIN once the answer is out.
    fn echo_close(&mut self, key: usize, code: Option<CloseCode>) {
        let slot = stats::close_code_slot(code.map_or(0, |c| c.0));
        self.counters.closes_received[slot] += 1;
        self.leave(key);
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_RECEIVED;
        c.partial = None;
        if !c.has(conn::CLOSE_SENT) {
            let reply = match code {
                Some(code) => frame::encode_close(code, ""),
                None => frame::encode(OpCode::Close, &[]),
            };
            self.counters.closes_sent[slot] += 1;
            self.push_frame(key, reply);
            let at = self.wheel.now() + self.ticks_close;
            self.arm(key, at);
        }
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_SENT | conn::FIN_AFTER_FLUSH;
        c.state = State::Closing;
        self.mark_dirty(key);
    }

    /// The peer stopped sending: FIN once our queue drains (at once if it is empty). Also
    /// how a close already under way completes on the peer's EOF.
    pub(crate) fn fin_when_drained(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags |= conn::FIN_AFTER_FLUSH;
        c.state = State::Closing;
        if c.queue.is_empty() && !c.has(conn::SEND_INFLIGHT) {
            self.finish(key);
        } else {
            self.mark_dirty(key);
        }
    }

    /// The queued HTTP answer (a refusal, or an admin answer that closes) is the last
    /// thing sent: FIN once it is flushed, within the close deadline.
    fn close_after_answer(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_SENT | conn::FIN_AFTER_FLUSH;
        c.state = State::Closing;
        c.partial = None;
        let at = self.wheel.now() + self.ticks_close;
        self.arm(key, at);
        self.mark_dirty(key);
    }
}

#[cfg(test)]
#[path = "end_tests.rs"]
mod tests;
