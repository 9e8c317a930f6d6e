//! The admin listener's connections: plain HTTP/1.1 with keep-alive, served by the admin
//! shard's reactor. Requests are parsed by `http::admin_request`; publishes fan out through
//! `fanout.rs` and are answered once every client shard has reported its count.
//!
//! Publishers must always get through, so one admin client can take neither memory nor
//! every slot:
//! - Answers queued for a connection are bounded: once its queued bytes reach
//!   `--max-pending`, its requests are no longer parsed (their bytes wait in its buffer) until
//!   the queue falls to half of that; a connection that stays paused longer than
//!   `--admin-request-timeout`, or whose buffer passes its bound while paused, is closed
//!   (`admin_slow_reader_closes`).
//! - A request has `--admin-request-timeout` from its first byte to its complete head, and
//!   as long again from its head to its complete body; past either it is answered 408 and the
//!   connection closed. Bytes arriving do not move that deadline, only the idle one.
//! - When the listener is full, a new connection evicts the oldest connection that has not
//!   completed a request (503, `admin_evicted`); one that has completed a request (and so
//!   carried the token, when one is set) is never evicted. Only when every connection has
//!   completed a request is the newcomer refused with 503.
//!
//! Invariants:
//! - Pipelined requests are handled as they arrive, several publishes of one connection may
//!   wait for their counts at once, and responses still leave in request order: each
//!   request (and each interim `100 Continue`) takes a slot in the connection's
//!   `AdminConn::slots` queue, and only the ready slots at its front are sent. At most
//!   `ADMIN_PIPELINE_MAX` slots wait per connection.
//! - After a response that closes the connection (`Connection: close`, or a refusal),
//!   nothing more is parsed or answered.
//! - The request buffer is bounded (`ADMIN_BUFFER_REQUESTS_MAX` requests of the largest size
//!   the parser accepts); past it the connection is answered 413, or closed when paused.
//! - Every admin connection has an `AdminConn` from its accept to the release of its slot.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::end::End;
use crate::conn::{self, Partial, State};
use crate::fanout::{Pending, Publish, Target, Unsent};
use crate::http::admin_request::{self, AdminError, AdminRequest, BodyKind};
use crate::http::response::write_response;
use crate::metrics;
use crate::ring::sys;
use crate::shard::Core;
use crate::ws::{frame, OpCode};

/// Requests of one admin connection answered or waiting at once, at most.
const ADMIN_PIPELINE_MAX: usize = 64;

/// A connection's request buffer holds at most this many requests of the largest size
/// accepted (head cap plus body cap): room for pipelining, not for an unbounded backlog.
const ADMIN_BUFFER_REQUESTS_MAX: usize = 2;

/// Parsing of a paused connection resumes once its queued answers fall to this fraction
/// (1/n) of `--max-pending`, so it does not flap between paused and parsing on every send.
const ADMIN_RESUME_DIVISOR: usize = 2;

/// The unproven-connection queue is compacted once it holds this many times the connection
/// cap (its entries go stale as connections prove themselves or leave).
const ADMIN_UNPROVEN_COMPACT_FACTOR: usize = 2;

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One request's place in its connection's response order.
pub(crate) enum AdminSlot {
    /// The response, and whether the connection closes after it.
    Ready(Bytes, bool),
    /// A publish waiting for the shards' counts (`pending` id).
    Waiting(u32),
}

/// What the admin shard keeps for one connection beside its slab entry: the `Conn` that
/// every client connection pays for does not grow for state only admin connections need.
#[derive(Default)]
pub(crate) struct AdminConn {
    /// Response order: one slot per request, and one per interim `100 Continue`.
    slots: VecDeque<AdminSlot>,
    /// Tick by which the request in progress must be complete (its head, or once the head is
    /// in, its body); 0 while no request is in progress or parsing is held back.
    request_due: u32,
    /// The head of the request in progress is complete: `request_due` is its body's.
    head_done: bool,
    /// Tick by which a paused connection must have drained its answers; 0 while not paused.
    drain_due: u32,
    /// A request of this connection was accepted: it is never evicted for a newcomer.
    proven: bool,
}

/// Why `process_admin` stopped taking requests from a connection's buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The buffer is empty: no request is in progress.
    Drained,
    /// The buffer holds an incomplete request; `head_done` once its head is complete.
    Partial { head_done: bool },
    /// Its queued answers reached `--max-pending`: parsing waits for them to drain.
    Paused,
    /// `ADMIN_PIPELINE_MAX` answers are outstanding: parsing waits for publish counts.
    PipelineFull,
    /// The connection closes after an answer already queued: nothing more is parsed.
    Closing,
}

impl Core {
    /// A new admin connection (after `accepted` gave it a slot).
    pub(crate) fn admin_accepted(&mut self, key: usize) {
        self.admin_conns.insert(key, AdminConn::default());
        let owner = self.owner(key);
        self.admin_unproven.push_back(owner);
        if self.admin_unproven.len() > ADMIN_UNPROVEN_COMPACT_FACTOR * self.conns_max {
            let mut queue = std::mem::take(&mut self.admin_unproven);
            queue.retain(|o| self.live(*o) && !self.admin_proven(o.key as usize));
            self.admin_unproven = queue;
        }
    }

    fn admin_proven(&self, key: usize) -> bool {
        self.admin_conns.get(&key).is_some_and(|a| a.proven)
    }

    /// The listener is full: evicts the oldest open connection that has not completed a
    /// request, answering it 503, so a publisher's new connection gets its slot. Returns
    /// false when every connection has completed a request (the newcomer is refused).
    pub(crate) fn admin_evict_unproven(&mut self) -> bool {
        while let Some(owner) = self.admin_unproven.pop_front() {
            let key = owner.key as usize;
            if !self.live(owner) || self.admin_proven(key) {
                continue;
            }
            let c = &self.conns[key];
            if c.state != State::Open || c.has(conn::CLOSE_SENT) {
                continue;
            }
            if c.queue.is_empty() && !c.has(conn::SEND_INFLIGHT) {
                // Nothing of ours is queued or in flight, so this small answer goes out
                // whole and in order.
                let response = unavailable(
                    &[],
                    b"admin listener full; this connection completed no request",
                    false,
                );
                let _ = sys::send_now(c.fd, &response);
            }
            let open = self.conns.len();
            self.end_logged(key, End::AdminEvicted, Some(format_args!("open={open}")));
            return true;
        }
        false
    }

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
        let paused = self.admin_conns.get(&key).is_some_and(|a| a.drain_due != 0);
        // Pipelined requests wait in this buffer while earlier ones are answered; bound it.
        let buffer_bytes_max = ADMIN_BUFFER_REQUESTS_MAX
            * (self.admin_cfg.head_bytes_max + self.admin_cfg.body_bytes_max);
        if buffered > buffer_bytes_max {
            if paused {
                self.admin_slow_reader(key, "buffer_full");
            } else {
                self.admin_refuse(key, &AdminError::BodyTooLarge);
            }
            return;
        }
        if !paused {
            self.process_admin(key);
        }
    }

    /// A send of this admin connection completed: a paused connection whose answers have
    /// drained far enough takes requests again.
    pub(crate) fn admin_sent(&mut self, key: usize) {
        let resume_bytes = self.cfg.max_pending / ADMIN_RESUME_DIVISOR;
        if self.conns[key].queued_bytes as usize > resume_bytes {
            return;
        }
        let Some(a) = self.admin_conns.get_mut(&key) else {
            return;
        };
        if a.drain_due == 0 {
            return;
        }
        a.drain_due = 0;
        self.process_admin(key);
    }

    /// The admin connection's timer fired: a paused connection that did not drain is closed,
    /// a request not complete in time is answered 408, an idle connection is closed.
    pub(crate) fn admin_expire(&mut self, key: usize, now: u32) {
        let (request_due, drain_due) = self
            .admin_conns
            .get(&key)
            .map_or((0, 0), |a| (a.request_due, a.drain_due));
        if drain_due != 0 && now >= drain_due {
            self.admin_slow_reader(key, "drain_timeout");
            return;
        }
        if request_due != 0 && now >= request_due {
            self.admin_refuse(key, &AdminError::RequestTimeout);
            return;
        }
        let idle_at = self.conns[key].last_seen + self.ticks_idle;
        if now >= idle_at && request_due == 0 && drain_due == 0 && !self.pending_for(key) {
            self.end(key, End::AdminIdle);
            return;
        }
        let at = self.admin_next_due(key).max(now + 1);
        self.arm(key, at);
    }

    /// The connection's earliest deadline: idle, request, or drain.
    fn admin_next_due(&self, key: usize) -> u32 {
        let idle_at = self.conns[key].last_seen + self.ticks_idle;
        let Some(a) = self.admin_conns.get(&key) else {
            return idle_at;
        };
        [a.request_due, a.drain_due]
            .into_iter()
            .filter(|at| *at != 0)
            .fold(idle_at, u32::min)
    }

    /// Closes a connection whose answers pile up unread: its queue cannot take a refusal,
    /// so it is shut down at once.
    fn admin_slow_reader(&mut self, key: usize, why: &str) {
        let c = &self.conns[key];
        let queued = c.queued_bytes;
        let buffered = match c.partial.as_deref() {
            Some(Partial::Head(buf)) => buf.len(),
            _ => 0,
        };
        let detail = format_args!("why={why} queued_bytes={queued} buffered_bytes={buffered}");
        self.end_logged(key, End::AdminSlowReader, Some(detail));
    }

    /// Whether a request of this connection still waits for its answer.
    fn pending_for(&self, key: usize) -> bool {
        self.admin_conns
            .get(&key)
            .is_some_and(|a| !a.slots.is_empty())
    }

    /// Takes the next place in the connection's response order.
    fn admin_slot(&mut self, key: usize, slot: AdminSlot) {
        self.admin_conns
            .entry(key)
            .or_default()
            .slots
            .push_back(slot);
        self.admin_flush(key);
    }

    /// Sends the ready responses at the front of the connection's order.
    fn admin_flush(&mut self, key: usize) {
        let Some(a) = self.admin_conns.get_mut(&key) else {
            return;
        };
        let mut slots = std::mem::take(&mut a.slots);
        while let Some(AdminSlot::Ready(..)) = slots.front() {
            let Some(AdminSlot::Ready(response, close)) = slots.pop_front() else {
                unreachable!("the front was just matched as ready");
            };
            self.push_frame(key, response);
            if close {
                // Nothing is parsed after an answer that closes, so nothing follows it.
                debug_assert!(slots.is_empty());
                self.end(key, End::AdminAnswered);
                return;
            }
        }
        if let Some(a) = self.admin_conns.get_mut(&key) {
            a.slots = slots;
        }
    }

    /// Whether an answer that closes the connection is already queued.
    fn admin_closing(&self, key: usize) -> bool {
        match self.admin_conns.get(&key).and_then(|a| a.slots.back()) {
            Some(AdminSlot::Ready(_, close)) => *close,
            Some(AdminSlot::Waiting(id)) => self
                .pending
                .get(*id as usize)
                .is_some_and(|p| !p.keep_alive),
            None => false,
        }
    }

    /// Why the connection takes no further request for now, if it does not.
    fn admin_held(&self, key: usize) -> Option<Stopped> {
        let c = &self.conns[key];
        if self.admin_closing(key) || c.has(conn::CLOSE_SENT) || c.state != State::Open {
            return Some(Stopped::Closing);
        }
        if self
            .admin_conns
            .get(&key)
            .is_some_and(|a| a.slots.len() >= ADMIN_PIPELINE_MAX)
        {
            return Some(Stopped::PipelineFull);
        }
        if c.queued_bytes as usize >= self.cfg.max_pending {
            return Some(Stopped::Paused);
        }
        None
    }

    /// Answers every complete request in the connection's buffer, in order, until it is
    /// empty, incomplete, or the connection is held back; then sets its deadlines.
    fn process_admin(&mut self, key: usize) {
        let mut completed = false;
        let Some(mut part) = self.conns[key].partial.take() else {
            self.admin_deadlines(key, Stopped::Drained, completed);
            return;
        };
        let Partial::Head(buf) = &mut *part else {
            self.conns[key].partial = Some(part);
            return;
        };
        let mut used = 0;
        let stopped = loop {
            if used == buf.len() {
                break Stopped::Drained;
            }
            if let Some(held) = self.admin_held(key) {
                break held;
            }
            let rest = &buf[used..];
            let (request, request_bytes) = match admin_request::parse(rest, &self.admin_cfg) {
                Ok(None) => {
                    let head_done = admin_request::head_complete(rest);
                    let c = &mut self.conns[key];
                    if head_done
                        && !c.has(conn::CONTINUE_SENT)
                        && admin_request::expects_continue(rest)
                    {
                        // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits a
                        // second for this before sending the body. It takes its place in the
                        // response order, after the answers to earlier requests.
                        c.flags |= conn::CONTINUE_SENT;
                        self.admin_slot(key, AdminSlot::Ready(Bytes::from_static(CONTINUE), false));
                    }
                    break Stopped::Partial { head_done };
                }
                Ok(Some(parsed)) => parsed,
                Err(err) => {
                    self.admin_refuse(key, &err);
                    break Stopped::Closing;
                }
            };
            let publish_frame = match request.target {
                admin_request::Target::Publish(_) | admin_request::Target::Send(_) => {
                    let opcode = match request.kind {
                        BodyKind::Text => OpCode::Text,
                        BodyKind::Binary => OpCode::Binary,
                    };
                    // The one copy of the body: into the frame every subscriber shares.
                    Some(frame::encode(opcode, &rest[request.body.clone()]))
                }
                _ => None,
            };
            used += request_bytes;
            completed = true;
            self.conns[key].flags &= !conn::CONTINUE_SENT;
            self.admin_answer(key, request, publish_frame);
        };
        // One drain per call, not one per request: a long pipelined buffer is moved once.
        if stopped != Stopped::Closing {
            buf.drain(..used);
            if !buf.is_empty() {
                self.conns[key].partial = Some(part);
            }
        }
        self.admin_deadlines(key, stopped, completed);
    }

    /// Sets the connection's request and drain deadlines after `process_admin` stopped.
    /// A request's clock starts at its first byte (or when the request before it completed)
    /// and restarts once, when its head is complete; arriving bytes never move it.
    fn admin_deadlines(&mut self, key: usize, stopped: Stopped, completed: bool) {
        let now = self.wheel.now();
        let ticks = self.ticks_admin_request;
        let Some(a) = self.admin_conns.get_mut(&key) else {
            return;
        };
        let mut paused_now = false;
        match stopped {
            Stopped::Partial { head_done } => {
                if completed || a.request_due == 0 || (head_done && !a.head_done) {
                    a.request_due = now + ticks;
                    a.head_done = head_done;
                }
            }
            Stopped::Paused => {
                // The buffered requests are not being read: the drain deadline governs.
                a.request_due = 0;
                a.head_done = false;
                if a.drain_due == 0 {
                    a.drain_due = now + ticks;
                    paused_now = true;
                }
            }
            Stopped::Drained | Stopped::PipelineFull | Stopped::Closing => {
                a.request_due = 0;
                a.head_done = false;
            }
        }
        if paused_now {
            self.counters.admin_paused += 1;
            let queued = self.conns[key].queued_bytes;
            self.log(format_args!(
                "event=admin_paused queued_bytes={queued} (answers unread; parsing waits)"
            ));
        }
        let c = &self.conns[key];
        if stopped != Stopped::Closing && c.state == State::Open && !c.has(conn::CLOSE_SENT) {
            let at = self.admin_next_due(key);
            self.arm(key, at);
        }
    }

    /// Answers one accepted request, or starts its publish.
    fn admin_answer(&mut self, key: usize, request: AdminRequest, publish_frame: Option<Bytes>) {
        self.counters.admin_requests += 1;
        if let Some(a) = self.admin_conns.get_mut(&key) {
            a.proven = true;
        }
        let keep_alive = request.keep_alive;
        let mut response = Vec::new();
        match request.target {
            admin_request::Target::Metrics => {
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
            admin_request::Target::Healthz => {
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
            admin_request::Target::Publish(name) => {
                let frame = publish_frame.expect("publish has a frame");
                self.admin_publish(key, name, false, frame, keep_alive);
            }
            admin_request::Target::Send(name) => {
                let frame = publish_frame.expect("send has a frame");
                self.admin_publish(key, name, true, frame, keep_alive);
            }
        }
        if !response.is_empty() {
            self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), !keep_alive));
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
            let response = unavailable(&[], b"draining: the node is shutting down\n", false);
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
            let response = unavailable(
                &[("Retry-After", "1")],
                b"shard inbox full: the node is behind on publishes; retry later\n",
                keep_alive,
            );
            self.admin_ready(key, id, Bytes::from(response), !keep_alive);
        }
    }

    /// Puts the answer to waiting request `id` in its place and sends what is ready.
    fn admin_ready(&mut self, key: usize, id: u32, response: Bytes, close: bool) {
        if let Some(slot) = self.admin_conns.get_mut(&key).and_then(|a| {
            a.slots
                .iter_mut()
                .find(|s| matches!(s, AdminSlot::Waiting(w) if *w == id))
        }) {
            *slot = AdminSlot::Ready(response, close);
        }
        self.admin_flush(key);
    }

    fn admin_refuse(&mut self, key: usize, err: &AdminError) {
        self.counters.admin_refused[err.slot()] += 1;
        let status = err.status();
        self.log(format_args!(
            "event=admin_refused status={status} reason={}",
            err.reason()
        ));
        let mut response = Vec::new();
        err.write_response(&mut response);
        // In order, after the answers to the requests before it; then the connection closes.
        self.conns[key].partial = None;
        if let Some(a) = self.admin_conns.get_mut(&key) {
            a.request_due = 0;
            a.head_done = false;
        }
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
        admin_request::write_json_ok(
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

/// A 503 answer with a plain-text body (listener full, draining, an inbox full).
fn unavailable(headers: &[(&str, &str)], body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut response = Vec::new();
    write_response(
        &mut response,
        503,
        headers,
        Some("text/plain; charset=utf-8"),
        body,
        keep_alive,
    );
    response
}
