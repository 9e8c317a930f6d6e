//! The admin listener's connections: plain HTTP/1.1 with keep-alive, served by the admin
//! shard's reactor. Requests are parsed by `http::admin_request`; publishes fan out through
//! `fanout.rs` and are answered once every client shard has reported its count. The channel
//! views (`/channels`, `/history`) are in `channels.rs`, `/broadcast` in `broadcast.rs`.
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

use crate::broker::wire::SessionNote;
use crate::conn::end::End;
use crate::conn::{self, Partial, State};
use crate::fanout::{frame_kind, frame_payload, CensusOf, Pending, Publish, Target, Unsent};
use crate::http::admin_request::{self, AdminError, AdminRequest, BodyKind};
use crate::http::demo::{self, Demo};
use crate::http::response::write_response;
use crate::metrics;
use crate::ring::sys;
use crate::shard::Core;
use crate::ws::{frame, OpCode};

mod broadcast;
mod brokered;
mod channels;
mod conns;
mod service;

pub(crate) use broadcast::BroadcastWait;
pub(crate) use channels::Query;

use conns::Stopped;
pub(crate) use conns::{AdminConn, AdminSlot};
#[cfg(test)]
pub(crate) use service::AdminHttp;
pub(crate) use service::AdminService;

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

impl Core {
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
            let body = &rest[request.body.clone()];
            self.admin_answer(key, request, publish_frame, body);
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

    /// Answers one accepted request (whose body is `body`), or starts its publish.
    fn admin_answer(
        &mut self,
        key: usize,
        request: AdminRequest,
        publish_frame: Option<Bytes>,
        body: &[u8],
    ) {
        self.counters.admin_requests += 1;
        // A demo file needs no token, so fetching one proves nothing: such a connection
        // stays evictable like one that has not completed a request.
        let public = matches!(request.target, admin_request::Target::Demo(_));
        if let Some(a) = self.admin_conns.get_mut(&key).filter(|_| !public) {
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
                let broker_up = self.shared.broker.as_ref().map(|b| b.up());
                let (status, body): (u16, &[u8]) = match (self.draining.is_some(), broker_up) {
                    (true, _) => (503, b"draining\n"),
                    (false, None) => (200, b"ok\n"),
                    (false, Some(true)) => (200, b"ok broker=up\n"),
                    (false, Some(false)) => (503, b"broker=down\n"),
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
            admin_request::Target::History {
                channel,
                since,
                limit,
            } => {
                let head_only = request.head_only;
                self.admin_history(key, &channel, since, limit, head_only, keep_alive);
            }
            admin_request::Target::Channels { prefix, limit } => {
                let of = CensusOf::Prefix {
                    prefix: prefix.into(),
                    limit,
                };
                self.admin_channels(key, of, request.head_only, keep_alive);
            }
            admin_request::Target::Channel(name) => {
                let of = CensusOf::One(name.into());
                self.admin_channels(key, of, request.head_only, keep_alive);
            }
            admin_request::Target::Broadcast => self.admin_broadcast(key, body, keep_alive),
            admin_request::Target::Demo(asset) => {
                let ws_port = match self.admin_cfg.demo {
                    Demo::Served { ws_port } => ws_port,
                    // The parser routes no demo path while it is off.
                    Demo::Off => 0,
                };
                demo::write(&mut response, asset, ws_port, request.head_only, keep_alive);
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
        if self.refused_while_draining(key) {
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
            position: None,
            broker: None,
        }) as u32;
        self.admin_slot(key, AdminSlot::Waiting(id));
        let origin = Some((self.index, id));
        let sent = if session {
            if let Some(broker) = &self.shared.broker {
                // The other nodes' connections of the session get it through Redis; the
                // answer counts this node's (the only ones known here).
                broker.publish_session(&SessionNote::Send {
                    node: broker.node,
                    session: name.clone(),
                    kind: frame_kind(&frame),
                    payload: frame_payload(&frame),
                });
            }
            self.publish_to_clients(Publish {
                target: Target::Session(name),
                frame,
                accepted: Instant::now(),
                origin,
                position: None,
                json: Default::default(),
                brokered: false,
            })
        } else {
            // The channel's next offset, kept in the pending request for the answer.
            if self.shared.broker.is_some() {
                self.admin_broker_publish(id, name, frame)
            } else {
                self.publish_channel(name, frame, origin).map(|_| ())
            }
        };
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
        // A brokered publish is answered once Redis has accepted it, too.
        if p.waiting > 0 || (p.broker.is_some() && p.position.is_none()) {
            return;
        }
        self.answer_publish(id);
    }

    /// Answers waiting publish `id` with its counts so far and its position.
    pub(super) fn answer_publish(&mut self, id: u32) {
        let p = self.pending.remove(id as usize);
        if let Some((seq, _)) = p.broker {
            self.broker_waits.remove(&seq);
        }
        if self.broadcast_counted(id, p.count) {
            return;
        }
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
        match p.position {
            Some(position) => {
                // `name` is a valid name: nothing to escape.
                let body = format!(
                    "{{\"channel\":\"{}\",\"subscribers\":{},\"epoch\":\"{}\",\"offset\":{}}}",
                    p.name, p.count, position.epoch, position.offset
                );
                let json = Some("application/json");
                write_response(&mut response, 200, &[], json, body.as_bytes(), p.keep_alive);
            }
            None => admin_request::write_json_ok(
                &mut response,
                kind,
                &p.name,
                count_key,
                p.count,
                p.keep_alive,
            ),
        }
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
        if self.pending.is_empty() && self.queries.is_empty() {
            return;
        }
        self.drain_inbox();
        self.census_exited(&gone);
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
        let mut text = metrics::render(&shards, self.peers.clients, self.draining.is_some());
        metrics::render_history(&mut text, &self.shared.history.stats());
        if let Some(broker) = &self.shared.broker {
            metrics::render_broker(&mut text, &broker.stats);
        }
        text
    }
}

/// A 503 answer with a plain-text body (listener full, draining, an inbox full).
pub(super) fn unavailable(headers: &[(&str, &str)], body: &[u8], keep_alive: bool) -> Vec<u8> {
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
