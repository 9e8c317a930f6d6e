//! `SendQueue`: one connection's frames waiting for the send in flight, in order, and the
//! coalescing of the leading ones into the next send. The node's connections and the load
//! generator's keep their queue in it.
//!
//! The first frame of a queue does not live in the connection: a `Bytes` is four words,
//! and every connection would carry them while idle. It lives in the reactor thread's
//! `HEADS` slab, and the queue keeps its 4-byte key there; a queue, and so a connection
//! entry, costs 16 bytes whatever it holds.
//!
//! Invariants:
//! - An empty queue holds no heap memory and no `HEADS` entry: the first frame lives in
//!   `HEADS` exactly while the queue is not empty, and the spilled backlog is freed as soon
//!   as it empties. A queue is used and dropped on the thread of its reactor (a connection
//!   never leaves it), so its key always names its own thread's entry.
//! - `HEADS` holds memory only while frames are queued: it is replaced by an empty slab
//!   when its last entry leaves, so a broadcast to many connections does not keep its
//!   high-water mark of entries.
//! - `next_send` keeps the order: it takes the leading frames only, merging them up to the
//!   byte bound (a single frame larger than the bound goes alone).

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use slab::Slab;

/// `SendQueue::head` of an empty queue.
const NO_HEAD: u32 = u32::MAX;

/// Past this many slots an emptied `HEADS` is freed instead of kept for reuse.
const HEADS_KEPT_MAX: usize = 1024;

thread_local! {
    /// The first frame of each non-empty queue of this thread, by the queue's `head`.
    static HEADS: RefCell<Slab<Bytes>> = const { RefCell::new(Slab::new()) };
}

/// Puts a first frame into this thread's `HEADS`; returns its key.
fn head_insert(frame: Bytes) -> u32 {
    HEADS.with(|heads| heads.borrow_mut().insert(frame) as u32)
}

/// Takes the first frame `key` out of `HEADS`, giving its slot to `next` when there is
/// one (the backlog's next frame moves up without a new slot).
fn head_take(key: u32, next: Option<Bytes>) -> Bytes {
    HEADS.with(|heads| {
        let mut heads = heads.borrow_mut();
        if let Some(next) = next {
            return std::mem::replace(&mut heads[key as usize], next);
        }
        let frame = heads.remove(key as usize);
        if heads.is_empty() && heads.capacity() > HEADS_KEPT_MAX {
            *heads = Slab::new();
        }
        frame
    })
}

/// A connection's FIFO of frames. The first frame is kept by key in the thread's `HEADS`,
/// so a connection with one frame queued (one broadcast: the common case) allocates
/// nothing of its own; only a backlog spills into a boxed deque, which is freed as soon
/// as it empties.
pub struct SendQueue {
    /// Key of the first frame in `HEADS` (`NO_HEAD` when the queue is empty).
    head: u32,
    // Boxed on purpose: 8 bytes in every connection instead of a 32-byte empty deque.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

impl Default for SendQueue {
    fn default() -> SendQueue {
        SendQueue {
            head: NO_HEAD,
            rest: None,
        }
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        if self.head != NO_HEAD {
            // At thread exit `HEADS` may be gone already; its frames go with it.
            let _ = HEADS.try_with(|heads| heads.borrow_mut().try_remove(self.head as usize));
        }
    }
}

impl SendQueue {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        debug_assert!(self.head != NO_HEAD || self.rest.is_none());
        self.head == NO_HEAD
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        usize::from(self.head != NO_HEAD) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    /// Appends a frame.
    pub fn push_back(&mut self, frame: Bytes) {
        if self.head == NO_HEAD {
            self.head = head_insert(frame);
        } else {
            self.rest
                .get_or_insert_with(Default::default)
                .push_back(frame);
        }
    }

    /// Removes the first frame.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        if self.head == NO_HEAD {
            return None;
        }
        let next = self.rest.as_mut().and_then(|rest| rest.pop_front());
        if self.rest.as_ref().is_some_and(|rest| rest.is_empty()) {
            self.rest = None;
        }
        let moved_up = next.is_some();
        let first = head_take(self.head, next);
        if !moved_up {
            self.head = NO_HEAD;
        }
        Some(first)
    }

    /// The byte lengths of the frames in order.
    fn lens(&self) -> impl Iterator<Item = usize> + '_ {
        let head = (self.head != NO_HEAD)
            .then(|| HEADS.with(|heads| heads.borrow()[self.head as usize].len()));
        head.into_iter()
            .chain(self.rest.iter().flat_map(|r| r.iter().map(Bytes::len)))
    }

    /// The frames in order (each a cheap clone of the queued `Bytes`).
    pub fn iter(&self) -> impl Iterator<Item = Bytes> + '_ {
        let head = (self.head != NO_HEAD)
            .then(|| HEADS.with(|heads| heads.borrow()[self.head as usize].clone()));
        head.into_iter()
            .chain(self.rest.iter().flat_map(|r| r.iter().cloned()))
    }

    /// Empties the queue, yielding its frames in order.
    pub fn take_all(&mut self) -> impl Iterator<Item = Bytes> {
        let head = (self.head != NO_HEAD).then(|| head_take(self.head, None));
        self.head = NO_HEAD;
        let rest = self.rest.take();
        head.into_iter()
            .chain(rest.into_iter().flat_map(|r| r.into_iter()))
    }

    /// The next send: the first frame alone, or the leading frames merged into one new
    /// buffer of at most `bytes_max` (the first frame always goes, whatever its size).
    /// `merged` sees each frame that goes into a merged buffer. None when empty.
    pub fn next_send(&mut self, bytes_max: usize, mut merged: impl FnMut(&Bytes)) -> Option<Bytes> {
        let mut count = 0;
        let mut total = 0;
        for len in self.lens() {
            if count > 0 && total + len > bytes_max {
                break;
            }
            total += len;
            count += 1;
        }
        if count <= 1 {
            return self.pop_front();
        }
        let mut out = BytesMut::with_capacity(total);
        for _ in 0..count {
            let f = self.pop_front().expect("counted above");
            out.extend_from_slice(&f);
            merged(&f);
        }
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn heads_held() -> (usize, usize) {
        HEADS.with(|heads| (heads.borrow().len(), heads.borrow().capacity()))
    }

    #[test]
    fn the_first_frame_is_held_by_the_thread_only_while_queued() {
        // Each test runs on a thread of its own, so `HEADS` is this test's.
        let mut queues: Vec<SendQueue> = (0..3000).map(|_| SendQueue::default()).collect();
        for q in &mut queues {
            q.push_back(frame(1));
            q.push_back(frame(2));
        }
        assert_eq!(heads_held().0, 3000, "one entry per non-empty queue");
        for q in &mut queues[..1000] {
            assert_eq!(q.pop_front().unwrap()[0], 1);
        }
        assert_eq!(heads_held().0, 3000, "the next frame takes the slot over");
        drop(queues.split_off(2000));
        assert_eq!(heads_held().0, 2000, "a dropped queue gives its entry back");
        for q in &mut queues {
            let _ = q.take_all().count();
        }
        assert_eq!(heads_held(), (0, 0), "an emptied large table is freed");
        assert_eq!(std::mem::size_of::<SendQueue>(), 16);
    }

    #[test]
    fn one_frame_lives_inline_and_a_backlog_spills_in_order() {
        let mut q = SendQueue::default();
        assert!(q.is_empty());
        q.push_back(frame(1));
        assert!(q.rest.is_none(), "a single frame allocates nothing");
        for n in 2..=5 {
            q.push_back(frame(n));
        }
        assert_eq!(q.len(), 5);
        let order: Vec<u8> = q.iter().map(|f| f[0]).collect();
        assert_eq!(order, [1, 2, 3, 4, 5]);
        for n in 1..=5 {
            assert_eq!(q.pop_front().unwrap()[0], n);
        }
        assert!(q.is_empty());
        assert!(q.rest.is_none(), "the spilled deque is freed once empty");
        assert!(q.pop_front().is_none());
    }

    #[test]
    fn take_all_empties_in_order() {
        let mut q = SendQueue::default();
        for n in 1..=3 {
            q.push_back(frame(n));
        }
        let all: Vec<u8> = q.take_all().map(|f| f[0]).collect();
        assert_eq!(all, [1, 2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn next_send_merges_leading_frames_up_to_the_bound_in_order() {
        let mut q = SendQueue::default();
        for n in 1..=4 {
            q.push_back(Bytes::from(vec![n; 3]));
        }
        let mut seen = Vec::new();
        let first = q.next_send(7, |f| seen.push(f[0])).unwrap();
        assert_eq!(
            &first[..],
            [1, 1, 1, 2, 2, 2],
            "a third frame would pass 7 bytes"
        );
        assert_eq!(seen, [1, 2], "each merged frame is reported");
        seen.clear();
        let rest = q.next_send(64, |f| seen.push(f[0])).unwrap();
        assert_eq!(&rest[..], [3, 3, 3, 4, 4, 4]);
        assert!(q.is_empty());
        assert!(q.rest.is_none(), "an emptied queue holds no heap memory");
        assert!(q.next_send(64, |_| {}).is_none());
    }

    #[test]
    fn next_send_sends_a_frame_over_the_bound_alone_and_unmerged() {
        let mut q = SendQueue::default();
        let big = Bytes::from(vec![9; 10]);
        q.push_back(big.clone());
        q.push_back(frame(1));
        let mut merged = 0;
        let out = q.next_send(4, |_| merged += 1).unwrap();
        assert_eq!(out.as_ptr(), big.as_ptr(), "the frame itself, not a copy");
        assert_eq!(merged, 0);
        assert_eq!(q.len(), 1);
    }
}
