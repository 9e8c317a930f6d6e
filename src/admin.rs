//! The admin listener's connections: plain HTTP/1.1 with keep-alive, served by the admin
//! shard's reactor. Requests are parsed by `http::admin`; publishes fan out through
//! `fanout.rs` and are answered once every client shard has reported its count.
//!
//! Invariants:
//! - One request per connection is in progress at a time: while a publish waits for the
//!   shards' counts, later pipelined requests stay in the connection's buffer, so responses
//!   go out in request order.
//! - The request buffer is bounded by the parser (head cap + body cap); anything beyond is
//!   answered with 431 or 413 and the connection is closed.

use std::time::Instant;

use bytes::Bytes;

use crate::conn::{self, Partial, State};
use crate::fanout::{Pending, Publish, Target};
use crate::http::admin::{self, AdminError, BodyKind};
use crate::http::response::write_response;
use crate::metrics;
use crate::shard::Core;
use crate::ws::{frame, OpCode};

impl Core {
    /// Bytes from an admin connection.
    pub(crate) fn on_admin(&mut self, key: usize, data: &mut [u8]) {
        let now = self.wheel.now();
        let c = &mut self.conns[key];
        c.last_seen = now;
        match c.partial.as_deref_mut() {
            Some(Partial::Head(buf)) => buf.extend_from_slice(data),
            _ => c.partial = Some(Box::new(Partial::Head(data.to_vec()))),
        }
        self.process_admin(key);
    }

    /// Whether a publish of this connection is waiting for shard counts.
    pub(crate) fn pending_for(&self, key: usize) -> bool {
        let owner = self.owner(key);
        self.pending.iter().any(|(_, p)| p.owner == owner)
    }

    /// Answers every complete request in the connection's buffer, in order.
    fn process_admin(&mut self, key: usize) {
        loop {
            if self.pending_for(key) {
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
                    let wants_continue = expects_continue(buf);
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
                self.push_frame(key, Bytes::from(response));
                if !keep_alive {
                    self.end_admin(key);
                    return;
                }
            }
        }
    }

    /// Sends a publish or session send to every client shard; the answer waits for their
    /// counts (`admin_reply`).
    fn admin_publish(
        &mut self,
        key: usize,
        name: String,
        session: bool,
        frame: Bytes,
        keep_alive: bool,
    ) {
        let name: Box<str> = name.into();
        let owner = self.owner(key);
        let id = self.pending.insert(Pending {
            owner,
            name: name.clone(),
            session,
            waiting: self.peers.clients,
            count: 0,
            keep_alive,
        }) as u32;
        let target = if session {
            Target::Session(name)
        } else {
            Target::Channel(name)
        };
        self.publish_to_clients(Publish {
            target,
            frame,
            accepted: Instant::now(),
            origin: Some((self.index, id)),
        });
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
        self.push_frame(key, Bytes::from(response));
        self.end_admin(key);
    }

    /// A client shard's count for admin request `id`; the last one answers the request.
    pub(crate) fn admin_reply(&mut self, id: u32, count: u64) {
        let Some(p) = self.pending.get_mut(id as usize) else {
            return;
        };
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
        self.push_frame(key, Bytes::from(response));
        if p.keep_alive {
            self.process_admin(key);
        } else {
            self.end_admin(key);
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

/// Whether `buf` holds a complete request head that asks for `100 Continue`.
fn expects_continue(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    buf[..end].split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        line[..colon].eq_ignore_ascii_case(b"expect")
            && line[colon + 1..]
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_continue_is_recognised_only_in_a_complete_head() {
        let head = b"POST /publish/c HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n";
        assert!(expects_continue(head));
        assert!(!expects_continue(&head[..head.len() - 2]));
        assert!(!expects_continue(
            b"POST /publish/c HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
    }
}
