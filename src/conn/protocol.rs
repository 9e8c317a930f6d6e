//! A connection's protocol: the HTTP upgrade (or its refusal), then WebSocket frames through
//! the decoder, replies, client publishes, and the peer's close.
//!
//! Invariants:
//! - A request head or frame split across receives is the only thing a connection keeps
//!   between receives (`Partial`), and only while it is incomplete.
//! - Replies to one receive are encoded into one buffer and queued as one frame, which
//!   owns its memory: it never shares an allocation with other connections' replies, so
//!   `--max-pending` bounds what a reader that stalls can pin (`take_replies`).

use bytes::{Bytes, BytesMut};

use crate::admission::{ConnRate, Traffic};
use crate::conn::end::End;
use crate::conn::{self, json, Partial, State};
use crate::http::handshake::{self, HandshakeError};
use crate::route::{Route, RouteKind};
use crate::shard::Core;
use crate::ws::{frame, CloseCode, DataMode, Decoder, Event, OpCode};

/// Our ping payload: 4 bytes of send time (shard microseconds) and a 4-byte tag over that
/// time and the connection, keyed by a secret of this process.
pub(crate) const PING_PAYLOAD_BYTES: usize = 8;

/// The process's secret key for ping tags, drawn once (SipHash with random keys).
fn ping_key() -> &'static std::collections::hash_map::RandomState {
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(Default::default)
}

/// The tag of a ping sent at `sent_us` to the connection in slot `key`, generation `gen`.
fn ping_tag(key: usize, gen: u32, sent_us: u32) -> u32 {
    use std::hash::BuildHasher as _;
    ping_key().hash_one((key, gen, sent_us)) as u32
}

/// The payload of a ping sent now to (`key`, `gen`): the pong that answers it carries it
/// back, and only such a pong is timed (`ping_sent_us`). Nothing is stored per connection:
/// the tag lets the payload be re-validated.
pub(crate) fn ping_payload(key: usize, gen: u32, now_us: u32) -> [u8; PING_PAYLOAD_BYTES] {
    let mut payload = [0; PING_PAYLOAD_BYTES];
    payload[..4].copy_from_slice(&now_us.to_be_bytes());
    payload[4..].copy_from_slice(&ping_tag(key, gen, now_us).to_be_bytes());
    payload
}

/// The send time of the ping a pong payload answers, if it is a payload we made for this
/// connection; a pong the client chose (unsolicited, or with a made-up time) gives None.
fn ping_sent_us(key: usize, gen: u32, payload: &[u8]) -> Option<u32> {
    let payload = <[u8; PING_PAYLOAD_BYTES]>::try_from(payload).ok()?;
    let sent = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let tag = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    (tag == ping_tag(key, gen, sent)).then_some(sent)
}

/// The shard-wide reply buffer keeps at most this much capacity between receives.
const OUT_KEPT_BYTES_MAX: usize = 64 * 1024;

impl Core {
    /// Bytes arrived for `key` (unmasked in place by the decoder).
    pub(crate) fn on_data(&mut self, key: usize, data: &mut [u8]) {
        self.counters.bytes_in += data.len() as u64;
        let c = &self.conns[key];
        match c.state {
            State::Handshake => self.on_head(key, data),
            State::Open | State::Closing
                if c.has(conn::UPGRADED) && !c.has(conn::CLOSE_RECEIVED) =>
            {
                self.on_frames(key, data)
            }
            // Refused, lingering or dead: the peer's bytes no longer matter.
            _ => {}
        }
    }

    fn on_head(&mut self, key: usize, data: &mut [u8]) {
        let mut slot = self.conns[key].partial.take();
        let was_partial = slot.is_some();
        let mut new_head = None;
        let buf: &mut [u8] = match slot.as_deref_mut() {
            Some(Partial::Head(head)) => {
                head.extend_from_slice(data);
                head.as_mut_slice()
            }
            _ => data,
        };
        // A trusted proxy's PROXY header comes before the request; anyone else's is refused.
        let skip = match self.read_proxy_header(key, buf) {
            Ok(Some(skip)) => skip,
            Ok(None) => {
                if !was_partial {
                    self.conns[key].partial = Some(Box::new(Partial::Head(buf.to_vec())));
                } else {
                    self.conns[key].partial = slot;
                }
                return;
            }
            Err((err, detail)) => {
                let label = detail.map_or("untrusted_peer", |detail| detail.label());
                self.refuse_logged(key, &err, Some(format_args!("proxy_error={label}")));
                return;
            }
        };
        let buf = &mut buf[skip..];
        let echo_path = &self.cfg.echo_path;
        let subscriptions_max = self.cfg.max_subscriptions as usize;
        let mode = self.shared.auth.mode;
        let parsed = handshake::parse_request(buf, &self.hs_cfg, |path| {
            crate::conn::auth::route_upgrade(mode, path, echo_path, subscriptions_max)
        });
        match parsed {
            Ok(None) => {
                // A head kept after its PROXY header is kept without it.
                if !was_partial || skip > 0 {
                    new_head = Some(buf.to_vec());
                }
            }
            Ok(Some(mut upgrade)) => {
                if let Err(err) = self.admit_proxied(key, &upgrade.headers) {
                    self.refuse(key, &err);
                    return;
                }
                if !self.admit_upgrade(key, &mut upgrade) {
                    return;
                }
                let mut response = Vec::with_capacity(160);
                handshake::write_switching_protocols(
                    &mut response,
                    &upgrade.accept,
                    upgrade.subprotocol.as_deref(),
                );
                let now = self.wheel.now();
                if let Some(accepted_us) = self.accepted_us.remove(&key) {
                    let elapsed = self.now_us().wrapping_sub(accepted_us);
                    let _ = self.handshake_us.record(u64::from(elapsed).max(1));
                }
                self.counters.upgraded += 1;
                let c = &mut self.conns[key];
                c.state = State::Open;
                c.flags |= conn::UPGRADED;
                c.last_seen = now;
                self.push_frame(key, Bytes::from(response));
                match upgrade.route {
                    Route::Echo => self.conns[key].route = RouteKind::Echo as u8,
                    Route::Channel { channel, session } => {
                        self.conns[key].route = RouteKind::Channel as u8;
                        self.subscribe(key, &channel);
                        if let Some((session, tab)) = session {
                            self.bind_session(key, session, tab);
                        }
                    }
                    Route::Json { channels, session } => {
                        self.conns[key].route = RouteKind::Json as u8;
                        self.json_open(key, channels);
                        if let Some((session, tab)) = session {
                            self.bind_session(key, session, tab);
                        }
                    }
                }
                self.arm(key, now + self.ticks_ping);
                let rest = &mut buf[upgrade.header_bytes..];
                if !rest.is_empty() {
                    // Pipelined frames sent right behind the request belong to the stream.
                    self.on_frames(key, rest);
                }
                return;
            }
            Err(err) => {
                self.refuse(key, &err);
                return;
            }
        }
        self.conns[key].partial = match new_head {
            Some(head) => Some(Box::new(Partial::Head(head))),
            None => slot,
        };
    }

    /// Answers `err` before the upgrade (counted, logged within the shard's log budget)
    /// and ends the connection once the answer is sent.
    pub(crate) fn refuse(&mut self, key: usize, err: &HandshakeError) {
        self.refuse_logged(key, err, None);
    }

    /// As [`Core::refuse`], with `detail` at the end of the log line.
    pub(crate) fn refuse_logged(
        &mut self,
        key: usize,
        err: &HandshakeError,
        detail: Option<std::fmt::Arguments<'_>>,
    ) {
        self.counters.refused[err.slot()] += 1;
        let status = err.status();
        let reason = err.reason();
        match detail {
            Some(detail) => self.log(format_args!(
                "event=handshake_refused status={status} reason={reason} {detail}"
            )),
            None => self.log(format_args!(
                "event=handshake_refused status={status} reason={reason}"
            )),
        }
        let mut response = Vec::with_capacity(256);
        err.write_refusal(&mut response);
        self.push_frame(key, Bytes::from(response));
        self.end(key, End::HandshakeRefused);
    }

    pub(crate) fn on_frames(&mut self, key: usize, data: &mut [u8]) {
        // Frame rates: counted in a copy of the connection's window, stored back after. A
        // connection that is closing is not counted: it is on its way out already.
        let limits = self.rate_limits;
        let counted = (limits.control_per_s > 0 || limits.messages_per_s > 0)
            && !self.conns[key].has(conn::CLOSE_SENT);
        let rate_before = if counted {
            self.load_rate(key)
        } else {
            ConnRate::default()
        };
        let mut rate = rate_before;
        let now_s = self.rate_now_s();
        let client_publish = self.client_may_publish(key);
        let now = self.wheel.now();
        let now_us = self.now_us();
        let c = &mut self.conns[key];
        c.last_seen = now;
        let ping_out = c.has(conn::PING_OUT);
        let gen = c.gen;
        c.flags &= !conn::PING_OUT;
        // A pong later than the idle close would have come is no answer to our ping.
        let rtt_us_max = u64::from(self.ticks_idle) * crate::shard::TICK_MS * 1000;
        let closing = c.has(conn::CLOSE_SENT);
        let route = RouteKind::from_u8(c.route);
        // Data nobody will read is checked and dropped as it arrives, not reassembled.
        let mode = match route {
            _ if closing => DataMode::Discard,
            RouteKind::Channel if !client_publish => DataMode::Discard,
            _ => DataMode::Keep,
        };
        let mut slot = c.partial.take();
        let mut local = Decoder::default();
        let decoder = match slot.as_deref_mut() {
            Some(Partial::Frames(d)) => d,
            _ => &mut local,
        };
        let held_before = decoder.buffered_bytes();
        let out = &mut self.out;
        let counters = &mut self.counters;
        let ping_rtt = &mut self.ping_rtt_us;
        let client_frames = &mut self.client_frames;
        let json_commands = &mut self.json_commands;
        let mut peer_close = None;
        let mut over_rate = None;
        let mut allow = |traffic: Traffic| {
            if over_rate.is_some() {
                return false;
            }
            let within = !counted || rate.allow(traffic, now_s, &limits);
            if !within {
                over_rate = Some(traffic);
            }
            within
        };
        let result = decoder.feed_with(data, &self.limits, mode, |event| {
            let traffic = match event {
                Event::Text(_) | Event::Binary(_) => Some(Traffic::Message),
                Event::Ping(_) | Event::Pong(_) => Some(Traffic::Control),
                // A close ends the connection anyway.
                Event::Close(..) => None,
            };
            // Past a limit the rest of the receive is still decoded, so the stream stays in
            // step for the close that follows, but nothing in it is acted on.
            if traffic.is_some_and(|traffic| !allow(traffic)) {
                return std::ops::ControlFlow::Continue(());
            }
            match event {
                Event::Text(payload) | Event::Binary(payload) => {
                    counters.messages_in += 1;
                    let opcode = if matches!(event, Event::Text(_)) {
                        OpCode::Text
                    } else {
                        OpCode::Binary
                    };
                    match route {
                        _ if closing => {}
                        RouteKind::Echo => {
                            frame::encode_into(out, true, opcode, payload, None);
                            counters.messages_out += 1;
                        }
                        RouteKind::Channel if client_publish => {
                            client_frames.push(frame::encode(opcode, payload));
                        }
                        RouteKind::Json => json_commands.push(json::parse(payload, opcode)),
                        _ => counters.client_messages_ignored += 1,
                    }
                }
                Event::Ping(payload) => {
                    if !closing {
                        frame::encode_into(out, true, OpCode::Pong, payload, None);
                    }
                }
                Event::Pong(payload) => {
                    counters.pongs_received += 1;
                    // Only the answer to our outstanding ping is timed: the payload must be
                    // one we made for this connection, or the client would choose the RTT.
                    let sent = ping_out.then(|| ping_sent_us(key, gen, payload)).flatten();
                    if let Some(sent) = sent {
                        let rtt = u64::from(now_us.wrapping_sub(sent)).max(1);
                        if rtt <= rtt_us_max {
                            let _ = ping_rtt.record(rtt);
                            counters.ping_rtt.record(rtt);
                        }
                    }
                }
                Event::Close(code, _reason) => {
                    peer_close = Some(code);
                    return std::ops::ControlFlow::Break(());
                }
            }
            std::ops::ControlFlow::Continue(())
        });
        // Stored only when a frame was counted: a connection that only ever sends a close
        // (or nothing) never grows the side table.
        if counted && rate != rate_before {
            self.store_rate(key, rate);
        }
        let held_after = decoder.buffered_bytes();
        let idle = decoder.is_idle();
        self.conns[key].partial = Partial::keep_frames(slot, local, idle);
        self.reassembly_bytes = (self.reassembly_bytes + held_after).saturating_sub(held_before);
        if held_after > held_before && self.reassembly_bytes > self.cfg.reassembly_budget {
            self.enforce_reassembly_budget();
        }
        self.counters.reassembly_bytes = self.reassembly_bytes as u64;
        if !self.json_commands.is_empty() {
            self.json_apply_commands(key);
        }
        if !self.out.is_empty() {
            let replies = self.take_replies();
            self.enqueue(key, replies);
        }
        if !self.client_frames.is_empty() {
            self.client_publish(key);
        }
        if let Err(err) = result {
            let code = CloseCode::from(&err);
            self.conns[key].partial = None;
            let detail = format_args!("close={} error={err}", code.0);
            self.end_logged(key, End::ProtocolError(code), Some(detail));
            return;
        }
        if let Some(code) = peer_close {
            self.end(key, End::PeerClose(code));
            return;
        }
        match over_rate {
            Some(Traffic::Control) => self.end(key, End::ControlRate),
            Some(Traffic::Message) => self.end(key, End::MessageRate),
            None => {}
        }
    }

    /// The shard holds more than `--reassembly-budget` in partial messages: close the
    /// connections holding the most with 1009 until it fits again.
    ///
    /// The running total is recounted first: it does not subtract buffers dropped with
    /// their connection (aborts, releases), so it can only overestimate. Each recount walks
    /// the slab, which happens only when the budget looks spent.
    fn enforce_reassembly_budget(&mut self) {
        let budget = self.cfg.reassembly_budget;
        for _ in 0..self.conns.len() {
            let mut total = 0;
            let mut largest: Option<(usize, usize)> = None;
            for (key, c) in self.conns.iter() {
                let Some(Partial::Frames(decoder)) = c.partial.as_deref() else {
                    continue;
                };
                let held = decoder.buffered_bytes();
                total += held;
                if held > largest.map_or(0, |(_, most)| most) {
                    largest = Some((key, held));
                }
            }
            self.reassembly_bytes = total;
            let Some((key, held)) = largest.filter(|_| total > budget) else {
                return;
            };
            if let Some(Partial::Frames(decoder)) = self.conns[key].partial.as_deref_mut() {
                // The framing state stays: the rest of the message is read in discard mode.
                decoder.discard_message();
            }
            self.reassembly_bytes = total - held;
            let detail =
                format_args!("close=1009 held_bytes={held} shard_bytes={total} budget={budget}");
            self.end_logged(key, End::ReassemblyBudget, Some(detail));
        }
    }

    /// Takes the replies encoded into the shard-wide `out` buffer as one frame that pins no
    /// more memory than it is charged for (`enqueue` charges its length).
    ///
    /// Splitting `out` would hand out a view of a shared allocation: a 127-byte pong split
    /// off a buffer that just carried a 1 MiB echo keeps the whole megabyte alive for as
    /// long as it waits in a full socket. So replies that fill less than half of `out` are
    /// copied into an allocation of their exact size and `out` is reused; replies that fill
    /// at least half of it take the buffer whole (pinning at most twice their length, the
    /// slack of `Vec` doubling), and the next batch starts a fresh one.
    pub(crate) fn take_replies(&mut self) -> Bytes {
        let replies = if self.out.len() * 2 < self.out.capacity() {
            let copy = Bytes::copy_from_slice(&self.out);
            self.out.clear();
            copy
        } else {
            std::mem::take(&mut self.out).freeze()
        };
        if self.out.capacity() > OUT_KEPT_BYTES_MAX {
            // A burst of large replies must not leave a large buffer behind for good.
            self.out = BytesMut::new();
        }
        debug_assert!(self.out.is_empty());
        replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_ping_payload_for_this_connection_is_timed() {
        let payload = ping_payload(7, 3, 123_456);
        assert_eq!(ping_sent_us(7, 3, &payload), Some(123_456));
        // Another connection, or a later occupant of the slot, cannot use it.
        assert_eq!(ping_sent_us(8, 3, &payload), None);
        assert_eq!(ping_sent_us(7, 4, &payload), None);
        // A client that picks the time (or any payload) is not timed.
        let mut forged = payload;
        forged[3] ^= 1;
        assert_eq!(ping_sent_us(7, 3, &forged), None);
        assert_eq!(ping_sent_us(7, 3, &1u64.to_be_bytes()), None);
        assert_eq!(ping_sent_us(7, 3, &payload[..7]), None);
    }
}
