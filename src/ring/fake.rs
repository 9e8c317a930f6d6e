//! [`FakeRing`]: a [`Driver`] over memory, so the reactor gets unit tests without a kernel
//! ring or a thread.
//!
//! It records every operation pushed ([`Sqe`]) and holds each send's frame until the test
//! completes it; the test scripts completions in any order it likes (accepts, recv data
//! through fake provided buffers, short sends, ENOBUFS, EOF, stale generations, tick
//! expiries, doorbells) and the reactor reaps them on its next batch, exactly as it would
//! reap CQEs.
//!
//! Invariants:
//! - No `unsafe`, no system call: the fake never touches a descriptor. The descriptors it
//!   hands out start at [`FAKE_FD_BASE`], above the process's RLIMIT_NOFILE, so the
//!   reactor's own `shutdown`/`close` of them fails with EBADF and cannot hit a real file.
//! - A provided buffer is taken when the test delivers data into it and comes back when the
//!   reactor has consumed it, as with the kernel's buffer ring.
//! - `in_flight` counts what the reactor armed and the test has not ended yet: a recv until
//!   a completion without `more`, a send until its completion.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;

use crate::ring::driver::Driver;
use crate::ring::{Completion, InFlight, Owner, TickMode};

/// First descriptor number the fake hands out: above any RLIMIT_NOFILE this machine allows,
/// so no real file can have it.
pub const FAKE_FD_BASE: RawFd = 1_000_000;

/// An operation the reactor pushed, as the fake recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sqe {
    /// A multishot accept on a listener.
    Accept { listen_fd: RawFd },
    /// A cancel of the multishot accept.
    CancelAccept,
    /// A multishot recv for `owner`.
    Recv { fd: RawFd, owner: Owner },
    /// A send of `frame[offset..]`.
    Send {
        fd: RawFd,
        owner: Owner,
        frame: Bytes,
        offset: usize,
    },
    /// The periodic tick.
    Tick { every: Duration },
    /// A doorbell to another reactor.
    Msg { target: u32, data: u64 },
}

/// A send the reactor pushed and the test has not completed yet.
struct PendingSend {
    owner: Owner,
    frame: Bytes,
    offset: usize,
}

/// An in-memory ring: records pushes, replays scripted completions.
pub struct FakeRing {
    /// Every operation pushed, oldest first; tests inspect and may clear it.
    pub pushed: Vec<Sqe>,
    /// Calls to `submit_now` and `submit_and_wait`.
    pub submits: usize,
    /// Completions the next `reap` hands over, in this order.
    ready: VecDeque<Completion>,
    /// Sends in flight, oldest first.
    sends: Vec<PendingSend>,
    /// Provided buffers, their size, and which of them are free (oldest first).
    bufs: Vec<Vec<u8>>,
    buf_bytes: usize,
    free: VecDeque<u16>,
    recvs: usize,
    accepts: usize,
    tick_armed: bool,
    next_fd: RawFd,
}

impl FakeRing {
    /// A fake ring with `count` provided buffers of `buf_bytes` each.
    pub fn new(count: u16, buf_bytes: usize) -> FakeRing {
        FakeRing {
            pushed: Vec::new(),
            submits: 0,
            ready: VecDeque::new(),
            sends: Vec::new(),
            bufs: vec![vec![0; buf_bytes]; count as usize],
            buf_bytes,
            free: (0..count).collect(),
            recvs: 0,
            accepts: 0,
            tick_armed: false,
            next_fd: FAKE_FD_BASE,
        }
    }

    /// Queues a completion as is (for stale generations or anything unusual).
    pub fn complete(&mut self, completion: Completion) {
        self.ready.push_back(completion);
    }

    /// Queues an accepted socket and returns its (fake) descriptor.
    pub fn accept(&mut self) -> RawFd {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.complete(Completion::Accept {
            res: fd,
            more: true,
        });
        fd
    }

    /// Queues `data` arriving for `owner` in one provided buffer, the multishot staying
    /// armed. Panics if the data does not fit a buffer or none is free (the test should
    /// script an ENOBUFS then).
    pub fn recv(&mut self, owner: Owner, data: &[u8]) {
        self.recv_more(owner, data, true);
    }

    /// Queues `data` arriving for `owner` with the multishot ending there (`more` false),
    /// as the kernel does on a CQ overflow: the reactor must arm it again.
    pub fn recv_last(&mut self, owner: Owner, data: &[u8]) {
        self.recv_more(owner, data, false);
    }

    fn recv_more(&mut self, owner: Owner, data: &[u8], more: bool) {
        assert!(data.len() <= self.buf_bytes, "recv data overruns a buffer");
        let bid = self.free.pop_front().expect("a free provided buffer");
        self.bufs[bid as usize][..data.len()].copy_from_slice(data);
        self.complete(Completion::Recv {
            owner,
            res: data.len() as i32,
            more,
            bid: Some(bid),
            buf_more: false,
        });
    }

    /// Queues the end of `owner`'s multishot recv with `res` (0 for EOF, a negative errno
    /// such as `-ENOBUFS` otherwise).
    pub fn recv_end(&mut self, owner: Owner, res: i32) {
        self.complete(Completion::Recv {
            owner,
            res,
            more: false,
            bid: None,
            buf_more: false,
        });
    }

    /// Queues the completion of `owner`'s oldest send with `res` bytes sent (fewer than
    /// asked for a short send, a negative errno for a failure). Returns the bytes that
    /// left, `frame[offset..offset + res]`; panics if `owner` has no send in flight.
    pub fn send_done(&mut self, owner: Owner, res: i32) -> Bytes {
        let at = self
            .sends
            .iter()
            .position(|s| s.owner == owner)
            .expect("a send in flight for this owner");
        let s = self.sends.remove(at);
        let sent = if res > 0 {
            s.frame.slice(s.offset..s.offset + res as usize)
        } else {
            Bytes::new()
        };
        self.complete(Completion::Send {
            owner: s.owner,
            res,
            frame: s.frame,
            offset: s.offset,
        });
        sent
    }

    /// Sends in flight for `owner`.
    pub fn sends_of(&self, owner: Owner) -> usize {
        self.sends.iter().filter(|s| s.owner == owner).count()
    }

    /// The bytes `owner`'s oldest send in flight still has to send.
    pub fn send_pending(&self, owner: Owner) -> Option<Bytes> {
        self.sends
            .iter()
            .find(|s| s.owner == owner)
            .map(|s| s.frame.slice(s.offset..))
    }

    /// Queues an expiry of the periodic tick.
    pub fn tick_expired(&mut self) {
        self.complete(Completion::Tick {
            res: -libc::ETIME,
            more: true,
        });
    }

    /// Queues a doorbell from another reactor.
    pub fn doorbell(&mut self) {
        self.complete(Completion::Msg { data: 1, res: 0 });
    }

    /// Provided buffers not lent to a completion.
    pub fn buffers_free(&self) -> usize {
        self.free.len()
    }
}

impl Driver for FakeRing {
    fn accept_multi(&mut self, listen_fd: RawFd) {
        self.accepts += 1;
        self.pushed.push(Sqe::Accept { listen_fd });
    }

    fn cancel_accept(&mut self) {
        self.pushed.push(Sqe::CancelAccept);
    }

    fn recv_multi(&mut self, fd: RawFd, owner: Owner) {
        self.recvs += 1;
        self.pushed.push(Sqe::Recv { fd, owner });
    }

    fn send(&mut self, fd: RawFd, owner: Owner, frame: Bytes, offset: usize) {
        assert!(offset < frame.len(), "a send has bytes left to send");
        self.pushed.push(Sqe::Send {
            fd,
            owner,
            frame: frame.clone(),
            offset,
        });
        self.sends.push(PendingSend {
            owner,
            frame,
            offset,
        });
    }

    fn tick(&mut self, every: Duration) {
        self.tick_armed = true;
        self.pushed.push(Sqe::Tick { every });
    }

    fn tick_mode(&self) -> TickMode {
        TickMode::Multishot
    }

    fn msg_ring(&mut self, _target_ring_fd: RawFd, target: u32, data: u64, _res: i32) {
        self.pushed.push(Sqe::Msg { target, data });
    }

    fn submit_now(&mut self) {
        self.submits += 1;
    }

    fn submit_and_wait(&mut self) -> io::Result<()> {
        self.submits += 1;
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        for completion in self.ready.drain(..) {
            match &completion {
                Completion::Recv { more: false, .. } => self.recvs -= 1,
                Completion::Accept { more: false, .. } => self.accepts -= 1,
                _ => {}
            }
            out.push(completion);
        }
    }

    fn quiesce(&mut self, _bound: Duration) -> Result<(), InFlight> {
        // Cancelling everything: the frames and buffers come back at once.
        self.ready.clear();
        self.sends.clear();
        self.recvs = 0;
        self.accepts = 0;
        self.tick_armed = false;
        Ok(())
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            sends: self.sends.len(),
            recvs: self.recvs,
            accepts: self.accepts,
            tick: self.tick_armed,
            connects: 0,
        }
    }

    fn consume<R>(
        &mut self,
        bid: u16,
        len: usize,
        buf_more: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        assert!(!buf_more, "the fake models whole-buffer consumption only");
        assert!(!self.free.contains(&bid), "a buffer consumed twice");
        let out = f(&mut self.bufs[bid as usize][..len]);
        self.free.push_back(bid);
        out
    }

    fn buffer_count(&self) -> u16 {
        self.bufs.len() as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Owner = Owner { key: 3, gen: 7 };

    #[test]
    fn a_recv_lends_a_buffer_until_it_is_consumed() {
        let mut ring = FakeRing::new(2, 16);
        ring.recv_multi(FAKE_FD_BASE, OWNER);
        ring.recv(OWNER, b"abc");
        assert_eq!(ring.buffers_free(), 1);
        let mut out = Vec::new();
        ring.reap(&mut out);
        let Some(Completion::Recv {
            res,
            bid: Some(bid),
            more: true,
            ..
        }) = out.pop()
        else {
            panic!("a recv completion with data");
        };
        let data = ring.consume(bid, res as usize, false, |data| data.to_vec());
        assert_eq!(data, b"abc");
        assert_eq!(ring.buffers_free(), 2);
        assert_eq!(ring.in_flight().recvs, 1, "the multishot stays armed");
        ring.recv_end(OWNER, -libc::ENOBUFS);
        ring.reap(&mut out);
        assert_eq!(ring.in_flight().recvs, 0, "a recv without more has ended");
    }

    #[test]
    fn a_short_send_hands_back_the_frame_and_its_offset() {
        let mut ring = FakeRing::new(1, 16);
        ring.send(FAKE_FD_BASE, OWNER, Bytes::from_static(b"0123456789"), 4);
        assert_eq!(ring.in_flight().sends, 1);
        assert_eq!(ring.send_pending(OWNER).as_deref(), Some(&b"456789"[..]));
        assert_eq!(&ring.send_done(OWNER, 2)[..], b"45");
        assert_eq!(ring.in_flight().sends, 0);
        let mut out = Vec::new();
        ring.reap(&mut out);
        match out.as_slice() {
            [Completion::Send {
                owner,
                res: 2,
                frame,
                offset: 4,
            }] => {
                assert_eq!(*owner, OWNER);
                assert_eq!(&frame[..], b"0123456789");
            }
            other => panic!("expected one send completion, got {other:?}"),
        }
    }

    #[test]
    fn completions_are_reaped_in_the_order_they_were_scripted() {
        let mut ring = FakeRing::new(1, 16);
        ring.tick_expired();
        ring.doorbell();
        let fd = ring.accept();
        assert!(fd >= FAKE_FD_BASE);
        let mut out = Vec::new();
        ring.reap(&mut out);
        assert!(matches!(
            out.as_slice(),
            [
                Completion::Tick { .. },
                Completion::Msg { .. },
                Completion::Accept { .. }
            ]
        ));
    }
}
