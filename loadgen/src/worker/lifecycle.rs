//! A connection's life in a worker: socket and connect, upgrade request and 101, the end
//! of an attempt (failure, drop, close handshake, reset), reconnect backoff, deadlines,
//! and the phases the main thread sets.
//!
//! Invariants:
//! - Every end goes through `kill`/`abort` (socket shut down, state `Dead`), then
//!   `maybe_release` closes the socket once nothing of it is in the kernel and either
//!   backs off (`RETRY`, while reconnects are allowed) or frees the slot.
//! - Each end is counted once, where it is detected, never at release.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringpush::http::client::{client_key, parse_response, ClientHandshakeError};
use ringpush::http::handshake::accept_key;
use ringpush::reactor::{SendQueue, DIRTY};
use ringpush::ring::{connect, sys, Owner};
use ringpush::timer::{Deadline, NEVER};
use ringpush::ws::{frame, CloseCode};

use super::{ticks, Core, Phase, Traffic, CLOSE_GRACE};
use crate::cli::{CloseMode, Publisher};
use crate::conn::{self, Partial, State};
use crate::payload::{self, SeqTracker};
use crate::report::{self, Failure};
use crate::scenario::Scenario;

impl Core {
    /// Creates the socket of an attempt for slot `key` and prepares the slot; returns what
    /// the connect needs, or None when the socket could not be made (counted).
    pub(super) fn open_socket(&mut self, key: usize) -> Option<(RawFd, Owner)> {
        self.counters.attempts += 1;
        if self.phase == Phase::Ramp && self.counters.ramp_first_ns == 0 {
            self.counters.ramp_first_ns = self.since_epoch_ns();
        }
        let source = self.plan.source(self.conns[key].index);
        let fd = match connect::client_socket(source, &self.plan.dest) {
            Ok(fd) => fd,
            Err(e) => {
                let kind = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => Failure::NoFds,
                    Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL) => Failure::AddrUnavailable,
                    _ => Failure::SocketError,
                };
                self.counters.fail(kind);
                self.end_attempt(key, true);
                return None;
            }
        };
        let gen = self.conns.next_gen();
        let mut nonce = [0u8; 16];
        for chunk in nonce.chunks_exact_mut(4) {
            chunk.copy_from_slice(&self.rng.next_key());
        }
        let started = self.now_us();
        let c = &mut self.conns[key];
        c.fd = fd;
        c.gen = gen;
        // Only a pending flush survives into the new attempt (the key stays listed).
        c.flags &= DIRTY;
        c.started_us = started;
        c.nonce = nonce;
        c.seq_out = 0;
        c.seq_in = SeqTracker::default();
        self.set_state(key, State::Connecting);
        let at = self.wheel.now() + self.ticks_connect;
        self.arm(key, at);
        Some((fd, self.owner(key)))
    }

    /// The upgrade request of the slot's current attempt.
    pub(super) fn request(&self, key: usize) -> Bytes {
        let c = &self.conns[key];
        let target = self.plan.target(c.index, self.resuming());
        let key = client_key(c.nonce);
        let mut request = Vec::with_capacity(128 + target.len() + self.plan.host.len());
        ringpush::http::client::write_client_request_with(
            &mut request,
            &self.plan.host,
            &target,
            &key,
            &[],
            &self.plan.upgrade_headers(),
        );
        Bytes::from(request)
    }

    /// An attempt failed before the connection was open.
    pub(super) fn fail(&mut self, key: usize, kind: Failure) {
        self.counters.fail(kind);
        if self.retry_allowed() {
            self.conns[key].flags |= conn::RETRY;
        }
        self.kill(key);
    }

    /// Shuts the slot's socket down (or cancels its connect) and releases it once idle.
    pub(super) fn kill(&mut self, key: usize) {
        self.shut(key, libc::SHUT_RDWR);
    }

    /// Resets the connection (no close handshake, no FIN): with SO_LINGER 0 the close
    /// sends a RST, and shutting down only the read side ends the armed recv without
    /// sending anything first.
    pub(super) fn abort(&mut self, key: usize) {
        let fd = self.conns[key].fd;
        let state = self.conns[key].state;
        if fd >= 0 && state != State::Connecting && state != State::Dead {
            let _ = connect::set_linger_reset(fd);
            self.shut(key, libc::SHUT_RD);
        } else {
            self.kill(key);
        }
    }

    pub(super) fn shut(&mut self, key: usize, how: libc::c_int) {
        let c = &self.conns[key];
        if c.state == State::Dead {
            return;
        }
        if c.state == State::Connecting {
            if let Some(id) = c.connect {
                self.cancels.push(id);
            }
        } else if c.fd >= 0 {
            sys::shutdown(c.fd, how);
        }
        self.set_state(key, State::Dead);
        self.maybe_release(key);
    }

    /// An I/O error (or EOF, `errno` 0) on a connection.
    pub(super) fn broken(&mut self, key: usize, errno: i32) {
        match self.conns[key].state {
            State::Handshake => {
                let kind = if errno == 0 {
                    Failure::EofInHandshake
                } else {
                    match Failure::from_errno(errno) {
                        Failure::TimedOut => Failure::Other,
                        kind => kind,
                    }
                };
                self.fail(key, kind);
            }
            State::Open => {
                self.counters.dropped += 1;
                if self.retry_allowed() {
                    self.conns[key].flags |= conn::RETRY;
                }
                self.kill(key);
            }
            State::Closing => {
                if !self.conns[key].has(conn::CLOSE_RECEIVED) {
                    self.counters.close_unanswered += 1;
                }
                self.kill(key);
            }
            State::Connecting | State::Dead | State::Backoff => self.kill(key),
        }
    }

    /// Frees the socket once no operation of it is in the kernel; then the slot either
    /// waits out a backoff (RETRY) or is freed.
    pub(super) fn maybe_release(&mut self, key: usize) {
        let c = &self.conns[key];
        debug_assert_eq!(c.state, State::Dead);
        if c.busy() {
            return;
        }
        let retry = c.has(conn::RETRY);
        self.end_attempt(key, retry);
    }

    /// Closes the slot's socket (if any) and backs off or frees the slot.
    pub(super) fn end_attempt(&mut self, key: usize, retry: bool) {
        let gen = self.conns.next_gen();
        let parked = self.conns[key].has(conn::PARKED) && self.phase < Phase::Close;
        let c = &mut self.conns[key];
        if c.fd >= 0 {
            sys::close(c.fd);
            c.fd = -1;
        }
        c.queue = SendQueue::default();
        c.partial = None;
        // A new generation makes every reference to the ended attempt stale (a starved
        // receive waiting to re-arm, a wheel entry); only a pending flush stays listed.
        c.flags &= DIRTY;
        c.gen = gen;
        if parked {
            // Resume: the slot keeps its index and offset, without a deadline (a fresh
            // timer, so no entry of the ended attempt holds it), until the reconnect.
            c.flags |= conn::PARKED;
            c.timer = Deadline::default();
            self.set_state(key, State::Backoff);
        } else if retry && self.retry_allowed() {
            let backoff = self.plan.reconnect.unwrap_or(self.plan.backoff);
            let c = &mut self.conns[key];
            c.attempts = c.attempts.saturating_add(1);
            let ceiling = backoff.ceiling(u32::from(c.attempts));
            let delay_ns = self.random_u64() % (ceiling.as_nanos() as u64).max(1);
            self.set_state(key, State::Backoff);
            let at = self.wheel.now() + ticks(Duration::from_nanos(delay_ns), self.tick);
            self.arm(key, at);
        } else {
            self.remove(key);
        }
    }

    /// Ends an open connection on our initiative, as --close says.
    pub(super) fn close_conn(&mut self, key: usize) {
        match self.plan.close {
            CloseMode::Graceful => {
                let c = &self.conns[key];
                if c.has(conn::CLOSE_SENT) {
                    return;
                }
                let frame = frame::encode_close_masked(CloseCode::NORMAL, "", self.rng.next_key());
                self.push_frame(key, frame);
                self.conns[key].flags |= conn::CLOSE_SENT;
                self.set_state(key, State::Closing);
                let at = self.wheel.now() + self.ticks_close;
                self.arm(key, at);
            }
            CloseMode::Abort => {
                self.counters.closed_abort += 1;
                self.abort(key);
            }
        }
    }

    /// The multishot recv ended with EOF (0) or an error.
    pub(super) fn recv_ended(&mut self, key: usize, res: i32) {
        match self.conns[key].state {
            State::Dead => self.maybe_release(key),
            State::Closing if self.conns[key].has(conn::CLOSE_RECEIVED) => {
                // The close handshake is complete and the server's FIN (or reset) arrived.
                self.counters.closed_clean += 1;
                self.kill(key);
            }
            _ => self.broken(key, -res),
        }
    }

    /// Bytes arrived for `key`.
    pub(super) fn on_data(&mut self, key: usize, data: &mut [u8]) {
        self.counters.bytes_in += data.len() as u64;
        let c = &self.conns[key];
        match c.state {
            State::Handshake => self.on_head(key, data),
            State::Open | State::Closing
                if c.has(conn::UPGRADED) && !c.has(conn::CLOSE_RECEIVED) =>
            {
                self.on_frames(key, data)
            }
            _ => {}
        }
    }

    pub(super) fn on_head(&mut self, key: usize, data: &mut [u8]) {
        let mut slot = self.conns[key].partial.take();
        let was_partial = slot.is_some();
        let expected = accept_key(client_key(self.conns[key].nonce).as_bytes());
        let mut new_head = None;
        let buf: &mut [u8] = match slot.as_deref_mut() {
            Some(Partial::Head(head)) => {
                head.extend_from_slice(data);
                head.as_mut_slice()
            }
            _ => data,
        };
        match parse_response(buf, &expected) {
            Ok(None) => {
                if !was_partial {
                    new_head = Some(Box::new(Partial::Head(buf.to_vec())));
                }
            }
            Ok(Some(handshake)) if handshake.subprotocol.is_some() => {
                // We offered none, so the server may not pick one (RFC 6455 §4.1).
                self.fail(key, Failure::MalformedResponse);
            }
            Ok(Some(handshake)) => {
                self.upgraded(key);
                let rest = &mut buf[handshake.header_bytes..];
                if !rest.is_empty() {
                    // Frames the server pushed right behind its 101.
                    self.on_frames(key, rest);
                }
            }
            Err(err) => {
                let kind = match err {
                    ClientHandshakeError::Status(status) => {
                        *self.counters.handshake_status.entry(status).or_default() += 1;
                        Failure::HandshakeStatus
                    }
                    ClientHandshakeError::BadAccept => Failure::BadAccept,
                    ClientHandshakeError::Malformed => Failure::MalformedResponse,
                    ClientHandshakeError::MissingUpgrade => Failure::MissingUpgrade,
                    ClientHandshakeError::UnexpectedExtension => Failure::UnexpectedExtension,
                    ClientHandshakeError::HeaderTooLarge => Failure::HeaderTooLarge,
                };
                self.fail(key, kind);
            }
        }
        if let Some(head) = new_head {
            self.conns[key].partial = Some(head);
        } else if was_partial
            && self.conns.contains(key)
            && self.conns[key].state == State::Handshake
        {
            // Still incomplete: keep accumulating.
            self.conns[key].partial = slot;
        }
    }

    /// The 101 arrived: the connection is open.
    pub(super) fn upgraded(&mut self, key: usize) {
        let elapsed = self.now_us().wrapping_sub(self.conns[key].started_us);
        report::record(&mut self.hists.upgrade, u64::from(elapsed));
        self.counters.upgrades += 1;
        if self.phase == Phase::Ramp {
            self.counters.ramp_upgrades += 1;
            self.counters.ramp_last_ns = self.since_epoch_ns();
        }
        *self.counters.handshake_status.entry(101).or_default() += 1;
        self.set_state(key, State::Open);
        let lifetime = self.churn_lifetime.map(|mean| {
            // Uniform over [0.5, 1.5) of the mean, so churned connections do not move in
            // lockstep.
            let unit = (self.random_u64() >> 11) as f64 / (1u64 << 53) as f64;
            mean.mul_f64(0.5 + unit)
        });
        let ramp = self.phase == Phase::Ramp;
        let c = &mut self.conns[key];
        c.attempts = 0;
        c.flags |= conn::UPGRADED;
        c.seq_in = match self.traffic {
            // A subscriber open before publishing starts must see every message from 0;
            // one that (re)joined later starts at whatever comes first.
            Traffic::Broadcast if !ramp => SeqTracker::from_first(),
            // A resuming client must get every message published while it was away.
            _ => SeqTracker::expecting(0),
        };
        match lifetime {
            Some(life) => {
                let at = self.wheel.now() + ticks(life, self.tick);
                self.arm(key, at);
            }
            None => c.timer.at = NEVER,
        }
        if let Traffic::Echo {
            closed_loop: true, ..
        } = self.traffic
        {
            if self.phase == Phase::Run {
                self.start_closed_loop(key);
            }
        }
        if self.resuming() {
            self.resubscribe(key);
        }
    }

    /// Follows the main thread's phase.
    pub(super) fn sync_phase(&mut self) {
        let phase = self.shared.phase();
        if phase == self.phase {
            return;
        }
        self.phase = phase;
        self.follow_phase(phase);
        // The main thread waits for every worker to have seen a phase before it judges
        // the counters of that phase.
        self.publish();
    }

    pub(super) fn follow_phase(&mut self, phase: Phase) {
        match phase {
            Phase::Ramp => {}
            Phase::Run => {
                self.run_start = Instant::now();
                self.run_start_ns = payload::now_ns();
                if let Traffic::Echo {
                    closed_loop: true, ..
                } = self.traffic
                {
                    let keys: Vec<usize> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| c.state == State::Open)
                        .map(|(k, _)| k)
                        .collect();
                    for key in keys {
                        self.start_closed_loop(key);
                    }
                }
            }
            Phase::Drain => {}
            Phase::Close => self.start_close(),
            Phase::Stop => {
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    if self.conns.contains(key) && self.conns[key].state != State::Backoff {
                        self.abort(key);
                    }
                }
            }
        }
    }

    /// The close phase: count what is open, settle the broadcast tail, close everything.
    pub(super) fn start_close(&mut self) {
        self.counters.open_at_close = self.counters.open;
        self.close_deadline = Some(Instant::now() + self.plan.close_timeout + CLOSE_GRACE);
        self.reopen.clear();
        if matches!(self.traffic, Traffic::Broadcast | Traffic::Resume { .. }) {
            // Messages published after a subscriber's last one never arrived.
            let published = self.shared.published.load(Ordering::Acquire);
            // Subscribing only, the other process is started once every connection here is
            // open, so one that saw nothing missed every message.
            let subscribe_only = matches!(
                &self.plan.scenario,
                Scenario::Broadcast(b) if b.publisher == Publisher::None
            );
            for (_, c) in self.conns.iter().filter(|(_, c)| c.state == State::Open) {
                match c.seq_in.next() {
                    Some(next) => self.counters.missing += published.saturating_sub(next),
                    None if subscribe_only => self.counters.missing += published,
                    None => {}
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if !self.conns.contains(key) {
                continue;
            }
            let c = &mut self.conns[key];
            c.flags &= !conn::RETRY;
            match c.state {
                State::Connecting | State::Handshake => self.kill(key),
                State::Open => self.close_conn(key),
                State::Backoff => self.remove(key),
                State::Closing | State::Dead => {}
            }
        }
    }

    /// Advances the wheel to the wall clock and handles every due deadline.
    pub(super) fn advance_timers(&mut self) {
        let target = (self.epoch.elapsed().as_nanos() / self.tick.as_nanos()) as u32 + 1;
        while self.wheel.now() < target {
            let mut due = std::mem::take(&mut self.due);
            self.wheel.advance(&mut due);
            for owner in due.drain(..) {
                if let Some(key) = self.live_key(owner) {
                    self.expire(key);
                }
            }
            self.due = due;
        }
    }

    /// A wheel entry of `key` fired: acts on its deadline if it is the live one and due.
    pub(super) fn expire(&mut self, key: usize) {
        let owner = self.owner(key);
        if !self.wheel.due(owner, &mut self.conns[key].timer) {
            return;
        }
        let c = &mut self.conns[key];
        c.timer.at = NEVER;
        match c.state {
            State::Connecting => self.fail(key, Failure::TimedOut),
            State::Handshake => self.fail(key, Failure::HandshakeTimeout),
            // Only churned connections have a deadline while open: their life is over.
            State::Open => self.close_conn(key),
            State::Closing => {
                self.counters.close_timeouts += 1;
                self.abort(key);
            }
            State::Backoff => {
                let owner = self.owner(key);
                self.reopen.push_back(owner);
            }
            State::Dead => {}
        }
    }
}
