//! The reactor skeleton, written once for every reactor thread: a node's client shards, its
//! admin shard and the load generator's workers. `Reactor<D, S>` runs the batch loop over a
//! ring driver `D` (`Ring`, or `FakeRing` in unit tests) and hands decoded events to a
//! service `S` (`Service`): the node's `NodeService` in its WebSocket client role
//! (`shard/client.rs`) or its admin HTTP role (`admin_service/service.rs`), and the load
//! generator's client (`loadgen/src/worker/`).
//!
//! What the skeleton owns, so no service repeats it: the completion dispatch; lending each
//! received buffer to `Service::on_data` and giving it back to the kernel even when the
//! connection is gone; re-arming a multishot recv that ended with data, and queueing one
//! that ended on ENOBUFS (`STARVED`) to re-arm a few at a time after the batch; resuming a
//! short send at its offset; flushing every connection that queued bytes during the batch
//! with one send each; dropping completions of a reused slot by generation. `conns.rs` holds
//! the connections part (`Conns`, the slab with the skeleton's flag bits).
//!
//! What a service decides: what bytes mean (`on_data`), what a finished or failed send
//! means, what ends a connection, when a dead slot is freed (`release`), what the next send
//! of a connection is (`next_send`), and its own operations (accept, connect, doorbells),
//! which it pushes in `before_flush`, the one hook that sees the driver.
//!
//! Invariants:
//! - Services push no SQE outside `before_flush`: every other outcome is recorded (dirty,
//!   starved, armed) and submitted by the skeleton after the batch.
//! - The skeleton sets and clears `RECV_ARMED` and `SEND_INFLIGHT` beside each push and
//!   completion, so a service's `release` can rely on them to free a slot only when none
//!   of its operations is in the kernel.
//! - A batch is handled in completion order, then `after_batch` runs once: the service's
//!   own submissions, the starved re-arms (at most a quarter of the buffers), the flush.
//! - Nothing on the per-event path allocates or dispatches dynamically: `Reactor` is
//!   monomorphised over its driver and service.

mod conns;
mod send_queue;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use bytes::Bytes;

pub use conns::{Conns, Slot, DIRTY, IO_FLAGS, RECV_ARMED, SEND_INFLIGHT, STARVED};
pub use send_queue::SendQueue;

use crate::ring::driver::Driver;
use crate::ring::{Completion, Owner, TickMode};

/// A count the skeleton reports to its service (the service keeps the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEvent {
    /// A multishot recv ended with data (a CQ overflow, say) and was armed again.
    RecvRearmed,
    /// A recv ended on ENOBUFS and waits for a buffer.
    Enobufs,
    /// This many bytes left in a send completion.
    BytesOut(usize),
}

/// What differs between reactors: the events of its connections, decoded.
///
/// Each hook that names a key is called only while that slot holds the occupant the
/// completion was for (stale generations are dropped before).
pub trait Service<D: Driver> {
    /// The service's connection (its slot in [`Conns`]).
    type Conn: Slot;

    /// The connections.
    fn conns(&mut self) -> &mut Conns<Self::Conn>;

    /// Bytes received for `key`, lent from a provided buffer until the call returns.
    fn on_data(&mut self, key: usize, data: &mut [u8]);

    /// The recv of a live, not yet dead connection ended for good: EOF (0) or `-errno`.
    fn on_recv_end(&mut self, key: usize, res: i32);

    /// The whole of `frame` left for `key` (already marked dirty, for its next send).
    fn on_sent(&mut self, key: usize, frame: Bytes);

    /// A send for live connection `key` failed (`res` ≤ 0).
    fn on_send_failed(&mut self, key: usize, res: i32, frame: Bytes);

    /// A send completed for a connection that is dead or gone: the frame is handed back.
    fn on_send_dropped(&mut self, frame: Bytes) {
        drop(frame);
    }

    /// An operation of dead connection `key` ended: free the slot if none is left.
    fn release(&mut self, key: usize);

    /// The next bytes to send for `key` (not dead, no send in flight), or None.
    fn next_send(&mut self, key: usize) -> Option<Bytes>;

    /// A count to keep.
    fn count(&mut self, event: IoEvent);

    /// The multishot accept completed: `res` is the new fd or `-errno`. Returns the owner
    /// of the connection to arm a recv for.
    fn on_accept(&mut self, res: i32, more: bool) -> Option<Owner> {
        let _ = (res, more);
        None
    }

    /// A connect completed (0 or `-errno`). Returns the owner to arm a recv for.
    fn on_connect(&mut self, owner: Owner, res: i32) -> Option<Owner> {
        let _ = (owner, res);
        None
    }

    /// The tick completed (`-ETIME` on an expiry; the driver re-arms it itself).
    fn on_tick(&mut self, res: i32, more: bool, mode: TickMode);

    /// A doorbell from another reactor: messages wait in the inbox.
    fn on_msg(&mut self) {}

    /// A completion no other hook takes: a cancel, a failed doorbell, an unknown op, a
    /// submit error.
    fn on_ring_event(&mut self, completion: Completion);

    /// After the batch, before the skeleton re-arms and flushes: the service's own
    /// operations (accept, connects, cancels, doorbells).
    fn before_flush(&mut self, ring: &mut D);

    /// Whether the loop is over.
    fn finished(&self) -> bool;

    /// Entering the ring failed; the loop ends after this.
    fn on_ring_error(&mut self, error: io::Error);
}

/// One reactor: its driver, its service and the batch buffer.
pub struct Reactor<D: Driver, S: Service<D>> {
    /// The ring (or the fake).
    pub ring: D,
    /// The service.
    pub service: S,
    completions: Vec<Completion>,
}

impl<D: Driver, S: Service<D>> Reactor<D, S> {
    /// A reactor over `ring` serving `service`.
    pub fn new(ring: D, service: S) -> Reactor<D, S> {
        Reactor {
            ring,
            service,
            completions: Vec::with_capacity(1024),
        }
    }

    /// Runs until the service says it is finished or the ring fails: `after_batch`, then
    /// wait, then the batch, so the service's first submissions go out with the first wait.
    pub fn run(&mut self) {
        loop {
            self.after_batch();
            if self.service.finished() {
                break;
            }
            if let Err(e) = self.ring.submit_and_wait() {
                self.service.on_ring_error(e);
                break;
            }
            self.handle_batch();
        }
    }

    /// One turn of the loop after an enter: reaps every completion, handles them in the
    /// order they completed, then submits what the batch asked for (`after_batch`).
    pub fn batch(&mut self) {
        self.handle_batch();
        self.after_batch();
    }

    fn handle_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.completions);
        self.ring.reap(&mut batch);
        for completion in batch.drain(..) {
            self.handle(completion);
        }
        self.completions = batch;
    }

    fn handle(&mut self, completion: Completion) {
        match completion {
            Completion::Accept { res, more } => {
                if let Some(owner) = self.service.on_accept(res, more) {
                    self.arm_recv(owner);
                }
            }
            Completion::Connect { owner, res } => {
                if let Some(owner) = self.service.on_connect(owner, res) {
                    self.arm_recv(owner);
                }
            }
            Completion::Recv {
                owner,
                res,
                more,
                bid,
                buf_more,
            } => self.recv_complete(owner, res, more, bid, buf_more),
            Completion::Send {
                owner,
                res,
                frame,
                offset,
            } => self.send_complete(owner, res, frame, offset),
            Completion::Tick { res, more } => {
                let mode = self.ring.tick_mode();
                self.service.on_tick(res, more, mode);
            }
            Completion::Msg { .. } => self.service.on_msg(),
            other => self.service.on_ring_event(other),
        }
    }

    /// Arms a multishot recv for `owner` (whose recv is not armed).
    fn arm_recv(&mut self, owner: Owner) {
        let conns = self.service.conns();
        let key = owner.key as usize;
        debug_assert!(!conns.has(key, RECV_ARMED), "a second recv armed");
        *conns[key].flags_mut() |= RECV_ARMED;
        let fd = conns[key].fd();
        self.ring.recv_multi(fd, owner);
    }

    fn recv_complete(
        &mut self,
        owner: Owner,
        res: i32,
        more: bool,
        bid: Option<u16>,
        buf_more: bool,
    ) {
        let live = self.service.conns().live(owner);
        if res > 0 {
            let bid = bid.expect("a recv with data names its buffer");
            let service = &mut self.service;
            // The buffer goes back to the kernel even when the connection is gone.
            self.ring.consume(bid, res as usize, buf_more, |data| {
                if let Some(key) = live {
                    service.on_data(key, data);
                }
            });
        }
        let Some(key) = live else {
            return;
        };
        if more {
            return;
        }
        let conns = self.service.conns();
        debug_assert!(
            conns.has(key, RECV_ARMED),
            "a recv ended that the connection did not arm"
        );
        *conns[key].flags_mut() &= !RECV_ARMED;
        let dead = conns[key].is_dead();
        if res > 0 {
            // The multishot ended for a reason other than EOF or an error (for example a CQ
            // overflow): arm it again so no data is left unread.
            if dead {
                self.service.release(key);
            } else {
                self.service.count(IoEvent::RecvRearmed);
                self.arm_recv(owner);
            }
            return;
        }
        if res == -libc::ENOBUFS {
            self.service.count(IoEvent::Enobufs);
            if dead {
                self.service.release(key);
            } else {
                self.service.conns().starve(owner);
            }
            return;
        }
        if dead {
            self.service.release(key);
        } else {
            self.service.on_recv_end(key, res);
        }
    }

    fn send_complete(&mut self, owner: Owner, res: i32, frame: Bytes, offset: usize) {
        let Some(key) = self.service.conns().live(owner) else {
            self.service.on_send_dropped(frame);
            return;
        };
        let conns = self.service.conns();
        debug_assert!(
            conns.has(key, SEND_INFLIGHT),
            "a send completed that the connection did not have in flight"
        );
        *conns[key].flags_mut() &= !SEND_INFLIGHT;
        if conns[key].is_dead() {
            self.service.on_send_dropped(frame);
            self.service.release(key);
            return;
        }
        if res <= 0 {
            self.service.on_send_failed(key, res, frame);
            return;
        }
        self.service.count(IoEvent::BytesOut(res as usize));
        let sent = offset + res as usize;
        if sent < frame.len() {
            // A short send: resume where the kernel stopped, keeping the queue order.
            let conns = self.service.conns();
            *conns[key].flags_mut() |= SEND_INFLIGHT;
            let fd = conns[key].fd();
            self.ring.send(fd, owner, frame, sent);
            return;
        }
        self.service.conns().mark_dirty(key);
        self.service.on_sent(key, frame);
    }

    /// After a batch: the service's own operations, then the starved receives a few at a
    /// time (oldest first, so a burst does not turn into an ENOBUFS storm), then one send
    /// per connection that queued bytes.
    pub fn after_batch(&mut self) {
        self.service.before_flush(&mut self.ring);
        let budget = (self.ring.buffer_count() as usize / 4).max(1);
        for _ in 0..budget {
            let Some(next) = self.service.conns().pop_starved() else {
                break;
            };
            let Some(key) = next else {
                continue;
            };
            if self.service.conns()[key].is_dead() {
                self.service.release(key);
                continue;
            }
            let owner = self.service.conns().owner(key);
            self.arm_recv(owner);
        }
        let mut dirty = self.service.conns().take_dirty();
        for key in dirty.drain(..) {
            let conns = self.service.conns();
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            *c.flags_mut() &= !DIRTY;
            if c.flags() & SEND_INFLIGHT != 0 || c.is_dead() {
                continue;
            }
            if let Some(frame) = self.service.next_send(key) {
                let conns = self.service.conns();
                debug_assert!(!conns.has(key, SEND_INFLIGHT));
                *conns[key].flags_mut() |= SEND_INFLIGHT;
                let fd = conns[key].fd();
                let owner = conns.owner(key);
                self.ring.send(fd, owner, frame, 0);
            }
        }
        self.service.conns().put_dirty(dirty);
    }
}

/// Spawns thread `name`: runs `start` (pinning, unshare, ring set-up), sends its outcome on
/// `ready`, and on success runs `run` on what `start` built, returning its report. Start-up
/// happens inside the thread because a ring is driven by the thread that enables it and the
/// file table is per thread.
pub fn spawn<S, R>(
    name: String,
    ready: Sender<Result<(), String>>,
    start: impl FnOnce() -> Result<S, String> + Send + 'static,
    run: impl FnOnce(S) -> R + Send + 'static,
) -> JoinHandle<Option<R>>
where
    R: Send + 'static,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let state = match start() {
                Ok(state) => state,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            Some(run(state))
        })
        .expect("spawning a reactor thread")
}
