//! What flows on open connections: frames from the server (decoded in place from the
//! provided buffer), pongs and close answers, echo messages (paced open loop or closed
//! loop) and the coalesced sends that carry them.
//!
//! Invariants:
//! - A message is stamped when it is queued: with its scheduled time (open loop) or the
//!   current time (closed loop), never later, so queueing shows up in the round trip.
//! - Frames queued for one connection during a batch leave in one send, up to
//!   `COALESCE_BYTES_MAX`.

use std::ops::ControlFlow;

use bytes::Bytes;
use ringpush::ws::{frame, CloseCode, Decoder, Event, OpCode};

use super::{Core, Phase, Traffic, COALESCE_BYTES_MAX, PACED_PER_BATCH_MAX};
use crate::conn::{self, Partial, State};
use crate::json::{self, Server};
use crate::payload::{self, Seen, SeqTracker};
use crate::report::{self, Counters, Hists};
use crate::scenario::Scenario;

impl Core {
    pub(super) fn on_frames(&mut self, key: usize, data: &mut [u8]) {
        let now_ns = payload::now_ns();
        let run = self.phase == Phase::Run;
        let traffic = self.traffic;
        let payload_bytes = self.template.len();
        let c = &mut self.conns[key];
        let closing = c.has(conn::CLOSE_SENT);
        let mut slot = c.partial.take();
        let mut local = Decoder::default();
        let decoder = match slot.as_deref_mut() {
            Some(Partial::Frames(d)) => d,
            _ => &mut local,
        };
        let mut tracker = c.seq_in;
        let counters = &mut self.counters;
        let hists = &mut self.hists;
        let out = &mut self.out;
        let rng = &mut self.rng;
        let mut replies_due = 0u32;
        let mut peer_close = None;
        let json_mode = self.json_channel.is_some();
        let scratch = &mut self.scratch;
        let mut answers = Vec::new();
        let result = decoder.feed(data, &self.limits, |event| {
            match event {
                Event::Text(body) if json_mode => match json::parse(body, scratch) {
                    Server::Message { payload, .. } => {
                        counters.msgs_in += 1;
                        judge(
                            traffic,
                            payload,
                            now_ns,
                            payload_bytes,
                            &mut tracker,
                            counters,
                            hists,
                        );
                    }
                    Server::Ping => {
                        counters.json_pings += 1;
                        if !closing {
                            let key = Some(rng.next_key());
                            frame::encode_into(out, true, OpCode::Text, json::PONG, key);
                        }
                    }
                    Server::Subscribed(answer) => answers.push(answer),
                    Server::Error { code, .. } => {
                        *counters.json_errors.entry(code).or_default() += 1;
                    }
                    Server::OtherOp => {}
                    Server::Unreadable => counters.json_unreadable += 1,
                },
                Event::Text(body) | Event::Binary(body) => {
                    counters.msgs_in += 1;
                    let echoed = judge(
                        traffic,
                        body,
                        now_ns,
                        payload_bytes,
                        &mut tracker,
                        counters,
                        hists,
                    );
                    if echoed && run && !closing {
                        if let Traffic::Echo {
                            closed_loop: true, ..
                        } = traffic
                        {
                            replies_due += 1;
                        }
                    }
                }
                Event::Ping(body) => {
                    if !closing {
                        frame::encode_into(out, true, OpCode::Pong, body, Some(rng.next_key()));
                    }
                }
                Event::Pong(_) => {}
                Event::Close(code, _reason) => {
                    peer_close = Some(code);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        let idle = decoder.is_idle();
        let c = &mut self.conns[key];
        c.partial = Partial::keep_frames(slot, local, idle);
        c.seq_in = tracker;
        for answer in answers {
            self.subscribed(key, answer);
        }
        self.check_caught_up(key);
        if !self.out.is_empty() {
            let pongs = self.out.split().freeze();
            self.push_frame(key, pongs);
        }
        for _ in 0..replies_due {
            self.send_echo(key, now_ns);
        }
        if let Err(err) = result {
            let name = format!("{err:?}");
            let name = name.split('(').next().unwrap_or("unknown").to_string();
            *self.counters.protocol_errors.entry(name).or_default() += 1;
            self.conns[key].partial = None;
            if self.retry_allowed() {
                self.conns[key].flags |= conn::RETRY;
            }
            self.abort(key);
            return;
        }
        if let Some(code) = peer_close {
            self.peer_closed(key, code);
        }
    }

    /// The server's close frame arrived: answer it (echoing its code) unless it answers
    /// ours, then wait for the server's FIN.
    pub(super) fn peer_closed(&mut self, key: usize, code: Option<CloseCode>) {
        let number = code.map_or(1005, |c| c.0);
        *self.counters.close_codes.entry(number).or_default() += 1;
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_RECEIVED;
        c.partial = None;
        if c.has(conn::CLOSE_SENT) {
            return;
        }
        self.counters.closed_by_server += 1;
        let reply = match code {
            Some(code) => frame::encode_close_masked(code, "", self.rng.next_key()),
            None => frame::encode_masked(OpCode::Close, &[], self.rng.next_key()),
        };
        self.push_frame(key, reply);
        if self.retry_allowed() {
            self.conns[key].flags |= conn::RETRY;
        }
        self.conns[key].flags |= conn::CLOSE_SENT;
        self.set_state(key, State::Closing);
        let at = self.wheel.now() + self.ticks_close;
        self.arm(key, at);
    }

    /// Queues one stamped echo message.
    pub(super) fn send_echo(&mut self, key: usize, stamp_ns: u64) {
        let text = self.echo_opcode == OpCode::Text;
        let c = &mut self.conns[key];
        let seq = c.seq_out;
        c.seq_out += 1;
        payload::write_stamp(&mut self.template, stamp_ns, seq, text);
        frame::encode_into(
            &mut self.out,
            true,
            self.echo_opcode,
            &self.template,
            Some(self.rng.next_key()),
        );
        let frame = self.out.split().freeze();
        self.counters.msgs_out += 1;
        self.push_frame(key, frame);
    }

    /// Closed loop: the first --pipeline messages of a connection.
    pub(super) fn start_closed_loop(&mut self, key: usize) {
        let pipeline = match &self.plan.scenario {
            Scenario::Echo(e) => e.pipeline,
            _ => 0,
        };
        let now = payload::now_ns();
        for _ in 0..pipeline {
            self.send_echo(key, now);
        }
    }

    /// Open loop: sends the messages due by now, each stamped with its scheduled time so
    /// that a late sender shows up in the latencies (no coordinated omission).
    pub(super) fn pace_echo(&mut self) {
        if self.phase != Phase::Run || self.echo_rate <= 0.0 {
            return;
        }
        let due = (self.echo_rate * self.run_start.elapsed().as_secs_f64()) as u64;
        let mut n = due.saturating_sub(self.echo_sched).min(PACED_PER_BATCH_MAX);
        while n > 0 {
            let Some(key) = self.next_open() else {
                // Nothing open to send on: those messages are skipped, not queued.
                self.echo_sched = due;
                return;
            };
            let offset_ns = (self.echo_sched as f64 * 1e9 / self.echo_rate) as u64;
            self.send_echo(key, self.run_start_ns + offset_ns);
            self.echo_sched += 1;
            n -= 1;
        }
    }

    /// The next open connection after the round-robin cursor.
    pub(super) fn next_open(&mut self) -> Option<usize> {
        if self.counters.open == 0 {
            return None;
        }
        let cap = self.conns.capacity();
        for _ in 0..cap {
            let key = self.echo_cursor % cap;
            self.echo_cursor = key + 1;
            if let Some(c) = self.conns.get(key) {
                if c.state == State::Open && !c.has(conn::CLOSE_SENT) {
                    return Some(key);
                }
            }
        }
        None
    }

    /// The next send for `key` (not dead, no send in flight: the skeleton checks),
    /// coalescing queued frames.
    pub(super) fn next_send(&mut self, key: usize) -> Option<Bytes> {
        self.conns[key].queue.next_send(COALESCE_BYTES_MAX, |_| {})
    }
}

/// Judges one data message's payload (both modes): its stamp, its bytes, its latency and
/// its place in the sequence. Returns whether it was a stamped message of the scenario.
fn judge(
    traffic: Traffic,
    body: &[u8],
    now_ns: u64,
    payload_bytes: usize,
    tracker: &mut SeqTracker,
    counters: &mut Counters,
    hists: &mut Hists,
) -> bool {
    let (text, hist) = match traffic {
        Traffic::Echo { text, .. } => (text, hists.rtt.as_mut()),
        Traffic::Broadcast => (false, hists.delivery.as_mut()),
        // Replayed messages waited on purpose: their catch-up is timed per client instead.
        Traffic::Resume { .. } => (false, None),
        Traffic::None => return false,
    };
    let Some((sent_ns, seq)) = payload::read_stamp(body, text) else {
        counters.bad_payload += 1;
        return false;
    };
    if !payload::intact(body, payload_bytes, text) {
        // Timed and sequenced all the same, but the bytes are not ours.
        counters.bad_payload += 1;
    }
    if let Some(hist) = hist {
        report::record(hist, now_ns.saturating_sub(sent_ns) / 1000);
    }
    match tracker.observe(seq) {
        Seen::InOrder => {}
        Seen::Gap(n) => counters.missing += n,
        Seen::Late => {
            counters.out_of_order += 1;
            counters.missing = counters.missing.saturating_sub(1);
        }
        Seen::Duplicate => counters.duplicates += 1,
    }
    true
}
