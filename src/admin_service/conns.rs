//! An admin connection's own state and its admission: the ordered response slots, the
//! pause while its answers wait unread, its request and drain deadlines, and the eviction of
//! connections that have completed no request when the listener is full. The requests
//! themselves are parsed and answered in `mod.rs`.

use super::*;

/// One request's place in its connection's response order.
pub(crate) enum AdminSlot {
    /// The response, and whether the connection closes after it.
    Ready(Bytes, bool),
    /// A request waiting for the client shards: a publish's `pending` id, or a tagged
    /// query or broadcast id (`channels::QUERY_SLOT_TAG`, `channels::BROADCAST_SLOT_TAG`).
    Waiting(u32),
}

/// What the admin shard keeps for one connection beside its slab entry: the `Conn` that
/// every client connection pays for does not grow for state only admin connections need.
#[derive(Default)]
pub(crate) struct AdminConn {
    /// Response order: one slot per request, and one per interim `100 Continue`.
    pub(super) slots: VecDeque<AdminSlot>,
    /// Tick by which the request in progress must be complete (its head, or once the head is
    /// in, its body); 0 while no request is in progress or parsing is held back.
    pub(super) request_due: u32,
    /// The head of the request in progress is complete: `request_due` is its body's.
    pub(super) head_done: bool,
    /// Tick by which a paused connection must have drained its answers; 0 while not paused.
    pub(super) drain_due: u32,
    /// A request of this connection was accepted: it is never evicted for a newcomer.
    pub(super) proven: bool,
}

/// Why `process_admin` stopped taking requests from a connection's buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stopped {
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

    pub(super) fn admin_proven(&self, key: usize) -> bool {
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
    pub(super) fn admin_next_due(&self, key: usize) -> u32 {
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
    pub(super) fn admin_slow_reader(&mut self, key: usize, why: &str) {
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
    pub(super) fn pending_for(&self, key: usize) -> bool {
        self.admin_conns
            .get(&key)
            .is_some_and(|a| !a.slots.is_empty())
    }

    /// Takes the next place in the connection's response order.
    pub(super) fn admin_slot(&mut self, key: usize, slot: AdminSlot) {
        self.admin_conns
            .entry(key)
            .or_default()
            .slots
            .push_back(slot);
        self.admin_flush(key);
    }

    /// Sends the ready responses at the front of the connection's order.
    pub(super) fn admin_flush(&mut self, key: usize) {
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
    pub(super) fn admin_closing(&self, key: usize) -> bool {
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
    pub(super) fn admin_held(&self, key: usize) -> Option<Stopped> {
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

    /// Sets the connection's request and drain deadlines after `process_admin` stopped.
    /// A request's clock starts at its first byte (or when the request before it completed)
    /// and restarts once, when its head is complete; arriving bytes never move it.
    pub(super) fn admin_deadlines(&mut self, key: usize, stopped: Stopped, completed: bool) {
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
}
