//! `Conns<C>`: one reactor's connections, as the skeleton sees them. It owns the
//! generational slab, the generation counter, the list of connections with bytes to flush
//! after the batch (`dirty`) and the queue of receives that ended on ENOBUFS and wait to be
//! re-armed (`starved`). The connection type `C` belongs to the service; the skeleton reads
//! it only through [`Slot`] and owns only the I/O flag bits below.
//!
//! Invariants:
//! - `RECV_ARMED` is set exactly while a multishot recv of the slot is in the kernel, and
//!   `SEND_INFLIGHT` exactly while a Send is; only the skeleton (`Reactor`) sets or clears
//!   them, always beside the push or the completion.
//! - `DIRTY` is set exactly while the key is in `dirty`, and `STARVED` exactly while its
//!   owner is in `starved`: a connection is listed at most once in each.
//! - A slot's generation changes with each occupant, and a generation is never 0, so an
//!   [`Owner`] of a freed or reused slot is never taken for the current occupant.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};
use std::os::fd::RawFd;

use slab::Slab;

use crate::ring::{Owner, GEN_MASK};

/// A multishot recv is armed for this connection.
pub const RECV_ARMED: u16 = 1 << 0;
/// A send is in the kernel.
pub const SEND_INFLIGHT: u16 = 1 << 1;
/// Listed in `dirty` (a flush is due after this batch).
pub const DIRTY: u16 = 1 << 6;
/// Listed in `starved`: its recv ended on ENOBUFS and waits to re-arm.
pub const STARVED: u16 = 1 << 9;
/// The flag bits the skeleton owns; a service uses only the others for its own flags.
pub const IO_FLAGS: u16 = RECV_ARMED | SEND_INFLIGHT | DIRTY | STARVED;

/// What the skeleton reads of a service's connection.
pub trait Slot {
    /// The socket.
    fn fd(&self) -> RawFd;
    /// The occupant's generation (the low 24 bits are significant).
    fn gen(&self) -> u32;
    /// The flag word; the bits in [`IO_FLAGS`] are the skeleton's.
    fn flags(&self) -> u16;
    /// The flag word, to change.
    fn flags_mut(&mut self) -> &mut u16;
    /// Whether the connection is shut down and only waits for its operations to end.
    fn is_dead(&self) -> bool;
}

/// Implements [`Slot`] for a connection type whose fields are named as the trait's methods
/// (`fd: RawFd`, `gen: u32`, `flags: u16`) and which is dead when `state == $dead`:
/// `impl_slot!(Conn, State::Dead);`.
#[macro_export]
macro_rules! impl_slot {
    ($conn:ty, $dead:expr) => {
        impl $crate::reactor::Slot for $conn {
            #[inline]
            fn fd(&self) -> std::os::fd::RawFd {
                self.fd
            }

            #[inline]
            fn gen(&self) -> u32 {
                self.gen
            }

            #[inline]
            fn flags(&self) -> u16 {
                self.flags
            }

            #[inline]
            fn flags_mut(&mut self) -> &mut u16 {
                &mut self.flags
            }

            #[inline]
            fn is_dead(&self) -> bool {
                self.state == $dead
            }
        }
    };
}

/// The connections of one reactor (see the module documentation).
pub struct Conns<C> {
    slab: Slab<C>,
    next_gen: u32,
    dirty: Vec<usize>,
    starved: VecDeque<Owner>,
}

impl<C> Default for Conns<C> {
    fn default() -> Conns<C> {
        Conns {
            slab: Slab::new(),
            next_gen: 1,
            dirty: Vec::new(),
            starved: VecDeque::new(),
        }
    }
}

impl<C: Slot> Conns<C> {
    /// No connections.
    pub fn new() -> Conns<C> {
        Conns::default()
    }

    /// A generation for the next occupant of a slot: never 0, wrapping within 24 bits.
    pub fn next_gen(&mut self) -> u32 {
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        gen
    }

    /// Stores a connection; returns its key.
    pub fn insert(&mut self, conn: C) -> usize {
        self.slab.insert(conn)
    }

    /// Frees slot `key` (nothing of it may be in the kernel).
    pub fn remove(&mut self, key: usize) -> C {
        let c = self.slab.remove(key);
        debug_assert!(
            c.flags() & (RECV_ARMED | SEND_INFLIGHT) == 0,
            "a slot is freed with an operation in the kernel"
        );
        c
    }

    /// The key `owner` names, if the slot still holds that occupant.
    #[inline]
    pub fn live(&self, owner: Owner) -> Option<usize> {
        let key = owner.key as usize;
        self.slab
            .get(key)
            .is_some_and(|c| c.gen() & GEN_MASK == owner.gen)
            .then_some(key)
    }

    /// The owner of slot `key`'s current occupant.
    #[inline]
    pub fn owner(&self, key: usize) -> Owner {
        Owner {
            key: key as u32,
            gen: self.slab[key].gen() & GEN_MASK,
        }
    }

    /// Whether slot `key`'s flag `flag` is set.
    #[inline]
    pub fn has(&self, key: usize, flag: u16) -> bool {
        self.slab[key].flags() & flag != 0
    }

    /// Lists `key` for a flush after this batch (once).
    #[inline]
    pub fn mark_dirty(&mut self, key: usize) {
        let flags = self.slab[key].flags_mut();
        if *flags & DIRTY == 0 {
            *flags |= DIRTY;
            self.dirty.push(key);
        }
    }

    /// Queues `owner`'s receive, which ended on ENOBUFS, for a re-arm after a batch.
    pub(crate) fn starve(&mut self, owner: Owner) {
        let key = owner.key as usize;
        *self.slab[key].flags_mut() |= STARVED;
        self.starved.push_back(owner);
    }

    /// Takes the oldest starved receive: None when the queue is empty; `Some(None)` when its
    /// slot was freed or reused since (a stale entry, dropped); `Some(Some(key))` with the
    /// connection's `STARVED` flag cleared otherwise.
    pub(crate) fn pop_starved(&mut self) -> Option<Option<usize>> {
        let owner = self.starved.pop_front()?;
        let key = self.live(owner);
        if let Some(key) = key {
            *self.slab[key].flags_mut() &= !STARVED;
        }
        Some(key)
    }

    /// Hands out the dirty list (to give back with [`Conns::put_dirty`]), so the flush can
    /// mark connections dirty again without a new allocation.
    pub(crate) fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// Takes the (drained) dirty list back.
    pub(crate) fn put_dirty(&mut self, list: Vec<usize>) {
        debug_assert!(list.is_empty());
        if self.dirty.is_empty() {
            self.dirty = list;
        }
    }

    /// The connection in slot `key`, if any.
    #[inline]
    pub fn get(&self, key: usize) -> Option<&C> {
        self.slab.get(key)
    }

    /// The connection in slot `key`, if any, to change.
    #[inline]
    pub fn get_mut(&mut self, key: usize) -> Option<&mut C> {
        self.slab.get_mut(key)
    }

    /// Whether slot `key` is occupied.
    #[inline]
    pub fn contains(&self, key: usize) -> bool {
        self.slab.contains(key)
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Slots the slab has room for without growing (a bound for walking keys in turn).
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every connection with its key.
    pub fn iter(&self) -> slab::Iter<'_, C> {
        self.slab.iter()
    }

    /// Every key, copied, so the caller may end connections while it walks them.
    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    /// Empties the slab (at exit, once nothing is in the kernel), yielding every connection.
    pub fn drain(&mut self) -> slab::Drain<'_, C> {
        self.dirty.clear();
        self.starved.clear();
        self.slab.drain()
    }
}

impl<C> Index<usize> for Conns<C> {
    type Output = C;

    #[inline]
    fn index(&self, key: usize) -> &C {
        &self.slab[key]
    }
}

impl<C> IndexMut<usize> for Conns<C> {
    #[inline]
    fn index_mut(&mut self, key: usize) -> &mut C {
        &mut self.slab[key]
    }
}
