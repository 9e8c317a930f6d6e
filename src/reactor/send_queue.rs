//! `SendQueue`: one connection's frames waiting for the send in flight, in order, and the
//! coalescing of the leading ones into the next send. The node's connections and the load
//! generator's keep their queue in it.
//!
//! Invariants:
//! - An empty queue holds no heap memory: the first frame lives inline and the spilled
//!   backlog is freed as soon as it empties.
//! - `next_send` keeps the order: it takes the leading frames only, merging them up to the
//!   byte bound (a single frame larger than the bound goes alone).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A connection's FIFO of frames. The first frame lives inline, so a connection with one
/// frame queued (one broadcast: the common case) allocates nothing; only a backlog spills
/// into a boxed deque, which is freed as soon as it empties.
#[derive(Default)]
pub struct SendQueue {
    head: Option<Bytes>,
    // Boxed on purpose: 8 bytes in every connection instead of a 32-byte empty deque.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

impl SendQueue {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        debug_assert!(self.head.is_some() || self.rest.is_none());
        self.head.is_none()
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    /// Appends a frame.
    pub fn push_back(&mut self, frame: Bytes) {
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest
                .get_or_insert_with(Default::default)
                .push_back(frame);
        }
    }

    /// Removes the first frame.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let first = self.head.take()?;
        if let Some(rest) = &mut self.rest {
            self.head = rest.pop_front();
            if rest.is_empty() {
                self.rest = None;
            }
        }
        Some(first)
    }

    /// The frames in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.head
            .iter()
            .chain(self.rest.iter().flat_map(|r| r.iter()))
    }

    /// Empties the queue, yielding its frames in order.
    pub fn take_all(&mut self) -> impl Iterator<Item = Bytes> {
        let SendQueue { head, rest } = std::mem::take(self);
        head.into_iter()
            .chain(rest.into_iter().flat_map(|r| r.into_iter()))
    }

    /// The next send: the first frame alone, or the leading frames merged into one new
    /// buffer of at most `bytes_max` (the first frame always goes, whatever its size).
    /// `merged` sees each frame that goes into a merged buffer. None when empty.
    pub fn next_send(&mut self, bytes_max: usize, mut merged: impl FnMut(&Bytes)) -> Option<Bytes> {
        let mut count = 0;
        let mut total = 0;
        for f in self.iter() {
            if count > 0 && total + f.len() > bytes_max {
                break;
            }
            total += f.len();
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
