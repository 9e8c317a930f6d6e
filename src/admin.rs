//! The admin listener's connections: plain HTTP/1.1 with keep-alive, served by the admin
//! shard's reactor. Requests are parsed by `http::admin`; publishes fan out through
//! `fanout.rs` and are answered once every client shard has reported its count.
//!
//! Invariants:
//! - Pipelined requests are handled as they arrive, several publishes of one connection may
//!   wait for their counts at once, and responses still leave in request order: each
//!   request takes a slot in the connection's `admin_slots` queue, and only the ready slots
//!   at its front are sent. At most `ADMIN_PIPELINE_MAX` slots wait per connection.
//! - After a response that closes the connection (`Connection: close`, or a refusal),
//!   nothing more is parsed or answered.
//! - The request buffer is bounded by the parser (head cap + body cap); anything beyond is
//!   answered with 431 or 413 and the connection is closed.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::{self, Partial, State};
use crate::fanout::{Pending, Publish, Target, Unsent};
use crate::http::admin::{self, AdminError, BodyKind};
use crate::http::response::write_response;
use crate::metrics;
use crate::shard::Core;
use crate::ws::{frame, OpCode};

/// Requests of one admin connection answered or waiting at once, at most.
const ADMIN_PIPELINE_MAX: usize = 64;

/// One request's place in its connection's response order.
pub(crate) enum AdminSlot {
    /// The response, and whether the connection closes after it.
    Ready(Bytes, bool),
    /// A publish waiting for the shards' counts (`pending` id).
    Waiting(u32),
}

impl Core {
    /// Bytes from an admin connection.
    pub(crate) fn on_admin(&mut self, key: usize, data: &mut [u8]) {
        let now = self.wheel.now();
        let closing = self.admin_closing(key);
        let c = &mut self.conns[key];
        c.last_seen = now;
        if c.has(conn::CLOSE_SENT) || closing {
            // An answer that closes the connection is queued: later bytes are not read.
            return;
        }
        let buffered = match c.partial.as_deref_mut() {
            Some(Partial::Head(buf)) => {
                buf.extend_from_slice(data);
                buf.len()
            }
            _ => {
                c.partial = Some(Box::new(Partial::Head(data.to_vec())));
                data.len()
            }
        };
        // Pipelined requests wait in this buffer while earlier ones are answered; bound it.
        if buffered > 2 * (self.admin_cfg.head_bytes_max + self.admin_cfg.body_bytes_max) {
            self.admin_refuse(key, &AdminError::BodyTooLarge);
            return;
        }
        self.process_admin(key);
    }

    /// Whether a request of this connection still waits for its answer.
    pub(crate) fn pending_for(&self, key: usize) -> bool {
        self.admin_slots.get(&key).is_some_and(|q| !q.is_empty())
    }

    /// Takes the next place in the connection's response order.
    fn admin_slot(&mut self, key: usize, slot: AdminSlot) {
        self.admin_slots.entry(key).or_default().push_back(slot);
        self.admin_flush(key);
    }

    /// Sends the ready responses at the front of the connection's order.
    fn admin_flush(&mut self, key: usize) {
        let Some(mut slots) = self.admin_slots.remove(&key) else {
            return;
        };
        while let Some(AdminSlot::Ready(..)) = slots.front() {
            let Some(AdminSlot::Ready(response, close)) = slots.pop_front() else {
                unreachable!("the front was just matched as ready");
            };
            self.push_frame(key, response);
            if close {
                self.end_admin(key);
                return;
            }
        }
        if !slots.is_empty() {
            self.admin_slots.insert(key, slots);
        }
    }

    /// Whether an answer that closes the connection is already queued.
    fn admin_closing(&self, key: usize) -> bool {
        match self.admin_slots.get(&key).and_then(|q| q.back()) {
            Some(AdminSlot::Ready(_, close)) => *close,
            Some(AdminSlot::Waiting(id)) => self
                .pending
                .get(*id as usize)
                .is_some_and(|p| !p.keep_alive),
            None => false,
        }
    }

    /// Whether the connection takes no further requests for now: it closes after an answer
    /// already queued, or too many answers are outstanding.
    fn admin_saturated(&self, key: usize) -> bool {
        self.admin_closing(key)
            || self
                .admin_slots
                .get(&key)
                .is_some_and(|q| q.len() >= ADMIN_PIPELINE_MAX)
    }

    /// Answers every complete request in the connection's buffer, in order.
    fn process_admin(&mut self, key: usize) {
        loop {
            if self.admin_saturated(key) {
                return;
            }
            let c = &mut self.conns[key];
            if c.has(conn::CLOSE_SENT) || c.state != State::Open {
                return;
            }
            let Some(mut part) = c.partial.take() else {
                return;
            };
            let Partial::Head(buf) = &mut *part else {
                return;
            };
            let (request, used) = match admin::parse(buf, &self.admin_cfg) {
                Ok(None) => {
                    let wants_continue = admin::expects_continue(buf);
                    let c = &mut self.conns[key];
                    c.partial = Some(part);
                    if wants_continue && !c.has(conn::CONTINUE_SENT) {
                        // curl sends `Expect: 100-continue` for bodies over 1 KiB and
                        // waits a second for this before sending the body.
                        c.flags |= conn::CONTINUE_SENT;
                        self.push_frame(key, Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                    }
                    return;
                }
                Ok(Some(parsed)) => parsed,
                Err(err) => {
                    self.admin_refuse(key, &err);
                    return;
                }
            };
            let publish_frame = match request.target {
                admin::Target::Publish(_) | admin::Target::Send(_) => {
                    let opcode = match request.kind {
                        BodyKind::Text => OpCode::Text,
                        BodyKind::Binary => OpCode::Binary,
                    };
                    // The one copy of the body: into the frame every subscriber shares.
                    Some(frame::encode(opcode, &buf[request.body.clone()]))
                }
                _ => None,
            };
            buf.drain(..used);
            self.conns[key].flags &= !conn::CONTINUE_SENT;
            if !buf.is_empty() {
                self.conns[key].partial = Some(part);
            }
            self.counters.admin_requests += 1;
            let keep_alive = request.keep_alive;
            let mut response = Vec::new();
            match request.target {
                admin::Target::Metrics => {
                    let body = self.render_metrics();
                    let body = if request.head_only { "" } else { body.as_str() };
                    write_response(
                        &mut response,
                        200,
                        &[],
                        Some("text/plain; version=0.0.4; charset=utf-8"),
                        body.as_bytes(),
                        keep_alive,
                    );
                }
                admin::Target::Healthz => {
                    let (status, body): (u16, &[u8]) = if self.draining.is_some() {
                        (503, b"draining\n")
                    } else {
                        (200, b"ok\n")
                    };
                    let body = if request.head_only { &b""[..] } else { body };
                    write_response(
                        &mut response,
                        status,
                        &[],
                        Some("text/plain"),
                        body,
                        keep_alive,
                    );
                }
                admin::Target::Publish(name) => {
                    let frame = publish_frame.expect("publish has a frame");
                    self.admin_publish(key, name, false, frame, keep_alive);
                }
                admin::Target::Send(name) => {
                    let frame = publish_frame.expect("send has a frame");
                    self.admin_publish(key, name, true, frame, keep_alive);
                }
            }
            if !response.is_empty() {
                self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), !keep_alive));
            }
        }
    }

    /// Sends a publish or session send to every client shard; the answer waits for their
    /// counts (`admin_reply`). While the node drains it is answered 503 at once (some client
    /// shards may be gone already), and 503 when a client shard's inbox is full.
    fn admin_publish(
        &mut self,
        key: usize,
        name: String,
        session: bool,
        frame: Bytes,
        keep_alive: bool,
    ) {
        if self.draining.is_some() {
            self.counters.admin_publishes_refused_draining += 1;
            self.log(format_args!("event=admin_publish_refused reason=draining"));
            let mut response = Vec::new();
            write_response(
                &mut response,
                503,
                &[],
                Some("text/plain; charset=utf-8"),
                b"draining: the node is shutting down\n",
                false,
            );
            self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), true));
            return;
        }
        let name: Box<str> = name.into();
        let owner = self.owner(key);
        let clients = self.peers.clients;
        let id = self.pending.insert(Pending {
            owner,
            name: name.clone(),
            session,
            waiting_on: vec![true; clients],
            waiting: clients,
            count: 0,
            keep_alive,
        }) as u32;
        let target = if session {
            Target::Session(name)
        } else {
            Target::Channel(name)
        };
        self.admin_slot(key, AdminSlot::Waiting(id));
        let sent = self.publish_to_clients(Publish {
            target,
            frame,
            accepted: Instant::now(),
            origin: Some((self.index, id)),
        });
        if sent == Err(Unsent::Full) {
            // Nothing was sent to any shard: answer now, keeping the connection.
            self.pending.remove(id as usize);
            let mut response = Vec::new();
            write_response(
                &mut response,
                503,
                &[("Retry-After", "1")],
                Some("text/plain; charset=utf-8"),
                b"shard inbox full: the node is behind on publishes; retry later\n",
                keep_alive,
            );
            self.admin_ready(key, id, Bytes::from(response), !keep_alive);
        }
    }

    /// Puts the answer to waiting request `id` in its place and sends what is ready.
    fn admin_ready(&mut self, key: usize, id: u32, response: Bytes, close: bool) {
        if let Some(slot) = self.admin_slots.get_mut(&key).and_then(|q| {
            q.iter_mut()
                .find(|s| matches!(s, AdminSlot::Waiting(w) if *w == id))
        }) {
            *slot = AdminSlot::Ready(response, close);
        }
        self.admin_flush(key);
    }

    /// Close after the queued response: FIN once it is sent.
    fn end_admin(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags |= conn::CLOSE_SENT | conn::FIN_AFTER_FLUSH;
        c.state = State::Closing;
        c.partial = None;
        let at = self.wheel.now() + self.ticks_close;
        self.arm(key, at);
        self.mark_dirty(key);
    }

    fn admin_refuse(&mut self, key: usize, err: &AdminError) {
        let slot = AdminError::ALL_REASONS
            .iter()
            .position(|r| *r == err.reason())
            .unwrap_or(0);
        if let Some(n) = self.counters.admin_refused.get_mut(slot) {
            *n += 1;
        }
        let status = err.status();
        self.log(format_args!(
            "event=admin_refused status={status} reason={}",
            err.reason()
        ));
        let mut response = Vec::new();
        err.write_response(&mut response);
        // In order, after the answers to the requests before it; then the connection closes.
        self.conns[key].partial = None;
        self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), true));
    }

    /// Client shard `from`'s count for admin request `id`; the last one answers the request.
    /// A count from a shard already counted (answered for as gone) is ignored.
    pub(crate) fn admin_reply(&mut self, id: u32, from: usize, count: u64) {
        let Some(p) = self.pending.get_mut(id as usize) else {
            return;
        };
        if !std::mem::take(&mut p.waiting_on[from]) {
            return;
        }
        p.count += count;
        p.waiting -= 1;
        if p.waiting > 0 {
            return;
        }
        let p = self.pending.remove(id as usize);
        if !self.live(p.owner) {
            return;
        }
        let key = p.owner.key as usize;
        let mut response = Vec::new();
        let (kind, count_key) = if p.session {
            ("session", "connections")
        } else {
            ("channel", "subscribers")
        };
        admin::write_json_ok(
            &mut response,
            kind,
            &p.name,
            count_key,
            p.count,
            p.keep_alive,
        );
        self.admin_ready(key, id, Bytes::from(response), !p.keep_alive);
        // Requests held back by the pipeline cap may go on now.
        self.process_admin(key);
    }

    /// Answers for client shards that have exited, in every request still waiting for
    /// them: each counts as 0 connections. Called on every admin tick.
    pub(crate) fn count_exited_shards(&mut self) {
        let clients = self.peers.clients;
        let mut gone = Vec::new();
        for i in 0..clients {
            // Acquire: every reply the shard sent before exiting is in the inbox now.
            if self.shared.exited[i].load(Ordering::Acquire) {
                gone.push(i);
            }
        }
        if gone.is_empty() {
            return;
        }
        for &i in &gone {
            if !std::mem::replace(&mut self.shards_gone[i], true) && self.draining.is_none() {
                self.log(format_args!(
                    "event=shard_gone shard={i} (publishes count it as 0 connections)"
                ));
            }
        }
        if self.pending.is_empty() {
            return;
        }
        self.drain_inbox();
        let ids: Vec<u32> = self.pending.iter().map(|(id, _)| id as u32).collect();
        for id in ids {
            for &i in &gone {
                self.admin_reply(id, i, 0);
            }
        }
    }

    fn render_metrics(&mut self) -> String {
        let mut shards = Vec::with_capacity(self.shared.counters.len());
        for (i, slot) in self.shared.counters.iter().enumerate() {
            if i == self.index {
                shards.push(self.counters.clone());
            } else {
                shards.push(slot.lock().map(|c| c.clone()).unwrap_or_default());
            }
        }
        metrics::render(&shards, self.peers.clients, self.draining.is_some())
    }
}
