//! What a shard does for the skeleton's events that are not a connection's protocol: the
//! accept and its retry, admission and refusals, the shard's own submissions after a batch
//! (accept re-arm or cancel, doorbells), tick results, ring faults, the skeleton's counts,
//! and the outcome of a send. Both node services (`client.rs`, `admin_service/`) call these.
//!
//! Invariants:
//! - `before_flush` is the only place a shard pushes SQEs of its own; the skeleton pushes
//!   every recv and send.
//! - A refused socket never gets a slot: it is answered and closed at once.

use std::os::fd::RawFd;

use bytes::Bytes;

use super::state::Core;
use super::ACCEPT_RETRY_TICKS;
use crate::conn::end::End;
use crate::conn::{Conn, State};
use crate::http::handshake::HandshakeError;
use crate::reactor::IoEvent;
use crate::ring::driver::Driver;
use crate::ring::{sys, Completion, TickMode};

/// Why an accepted socket is turned away (`Core::refuse_socket`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The shard is draining: 503 "shutting down".
    ShuttingDown,
    /// The listener's share of connections is taken: 503.
    AtCapacity,
}

impl Core {
    /// The multishot accept completed. Keeps the accept armed (or schedules its retry from
    /// the timer) and returns the new socket, if there is one.
    pub(crate) fn accept_complete(&mut self, res: i32, more: bool) -> Option<RawFd> {
        if !more {
            self.accept_armed = false;
        }
        if res >= 0 {
            self.counters.accepted += 1;
            if !more && !self.stop_accepting {
                self.accept_retry_at = self.wheel.now();
            }
            return Some(res);
        }
        let errno = -res;
        if errno == libc::EMFILE || errno == libc::ENFILE {
            self.counters.accept_emfile += 1;
            self.log(format_args!(
                "event=accept_emfile errno={errno} (retrying from the timer)"
            ));
            self.accept_retry_at = self.wheel.now() + ACCEPT_RETRY_TICKS;
        } else if errno != libc::ECANCELED && !more {
            self.accept_retry_at = self.wheel.now() + 1;
        }
        None
    }

    /// Answers a socket it will not keep with `refusal` (a fresh socket's send buffer is
    /// empty, so a small response goes out whole) and closes it.
    pub(crate) fn refuse_socket(&mut self, fd: RawFd, refusal: Refusal) {
        let bytes = match refusal {
            Refusal::ShuttingDown => &self.refusal_shutdown,
            Refusal::AtCapacity => &self.refusal_busy,
        };
        let _ = sys::send_now(fd, bytes);
        sys::close(fd);
        match refusal {
            Refusal::ShuttingDown => {
                self.counters.refused[HandshakeError::ShuttingDown.slot()] += 1;
                self.log(format_args!("event=refused reason=shutting_down"));
            }
            Refusal::AtCapacity => {
                self.counters.refused_at_cap += 1;
                let open = self.conns.len();
                self.log(format_args!("event=refused reason=at_capacity open={open}"));
            }
        }
    }

    /// Whether the listener's share of connections is taken.
    pub(crate) fn full(&self) -> bool {
        self.conns.len() >= self.conns_max
    }

    /// Gives accepted socket `fd` a slot in `state` with its first deadline `ticks` away;
    /// returns its key (the skeleton arms its recv).
    pub(crate) fn admit(&mut self, fd: RawFd, state: State, ticks: u32) -> usize {
        let gen = self.conns.next_gen();
        let now = self.wheel.now();
        let mut conn = Conn::new(fd, gen, now);
        conn.state = state;
        let key = self.conns.insert(conn);
        if state == State::Handshake {
            let accepted_us = self.now_us();
            self.accepted_us.insert(key, accepted_us);
        }
        self.reset_rate(key);
        self.counters.open += 1;
        self.arm(key, now + ticks);
        key
    }

    /// The shard's own operations after a batch: the accept's retry or its end, and the
    /// doorbells of the other shards this batch sent messages to (submitted at once, so a
    /// waiting admin shard is answered before this batch's sends are queued).
    pub(crate) fn before_flush<D: Driver>(&mut self, ring: &mut D) {
        if self.accept_retry_at != 0
            && self.wheel.now() >= self.accept_retry_at
            && !self.accept_armed
        {
            self.accept_retry_at = 0;
            if let (Some(fd), false) = (self.listen_fd, self.stop_accepting) {
                ring.accept_multi(fd);
                self.accept_armed = true;
            }
        }
        if self.stop_accepting {
            self.stop_accepting = false;
            if self.accept_armed {
                ring.cancel_accept();
            }
            if let Some(fd) = self.listen_fd.take() {
                sys::close(fd);
            }
        }
        let mut rang = false;
        for (target, doorbell) in self.doorbells.iter_mut().enumerate() {
            if std::mem::take(doorbell) {
                ring.msg_ring(self.peers.ring_fds[target], target as u32, 1, 0);
                rang = true;
            }
        }
        if rang {
            ring.submit_now();
        }
    }

    /// A tick completed: true when it expired and the wheel should move; anything else
    /// is counted and logged (the ring re-arms it after one interval).
    pub(crate) fn tick_expired(&mut self, res: i32, more: bool, mode: TickMode) -> bool {
        if res == -libc::ETIME {
            return true;
        }
        self.counters.tick_errors += 1;
        self.log(format_args!(
            "event=tick_failed res={res} more={more} mode={mode:?} (re-armed after one \
             interval)"
        ));
        false
    }

    /// The completions no connection owns: failed doorbells, unknown op kinds, submit
    /// errors (counted and logged); cancels need nothing.
    pub(crate) fn ring_event(&mut self, completion: Completion) {
        match completion {
            Completion::DoorbellFailed { target, res } => {
                // The target still drains its inbox on its next tick, so the messages are
                // late by at most a tick, not lost.
                self.counters.doorbell_failures += 1;
                self.log(format_args!(
                    "event=doorbell_failed target={target} res={res} (its tick drains the inbox)"
                ));
            }
            Completion::Unknown { user_data, res } => {
                self.counters.ring_unknown_completions += 1;
                self.log(format_args!(
                    "event=unknown_completion user_data={user_data:#x} res={res}"
                ));
            }
            Completion::SubmitFailed { errno } => {
                self.counters.ring_submit_errors += 1;
                self.log(format_args!(
                    "event=submit_failed errno={errno} (the SQEs stay queued)"
                ));
            }
            _ => {}
        }
    }

    /// Counts what the skeleton reports.
    #[inline]
    pub(crate) fn count(&mut self, event: IoEvent) {
        match event {
            IoEvent::RecvRearmed => self.counters.recv_rearmed += 1,
            IoEvent::Enobufs => self.counters.enobufs += 1,
            IoEvent::BytesOut(n) => self.counters.bytes_out += n as u64,
        }
    }

    /// The whole of `frame` left for `key`.
    #[inline]
    pub(crate) fn sent(&mut self, key: usize, frame: &Bytes) {
        let c = &mut self.conns[key];
        c.queued_bytes = c.queued_bytes.saturating_sub(frame.len() as u32);
        self.retire(frame);
    }

    /// A send failed: the peer reset or vanished.
    pub(crate) fn send_failed(&mut self, key: usize, frame: &Bytes) {
        self.retire(frame);
        self.end(key, End::PeerGone);
    }

    /// Entering the ring failed: the loop ends.
    pub(crate) fn ring_failed(&mut self, e: std::io::Error) {
        crate::elog!("ringpush shard={} error=ring_enter {e}", self.index);
    }
}
