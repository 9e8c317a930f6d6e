//! The shard's provided-buffer ring: the only memory multishot recv writes into.
//!
//! Owns two anonymous mappings: the ring of `io_uring_buf` entries shared with the kernel,
//! and the buffers themselves. A buffer is owned by the kernel from the moment its entry is
//! published (tail store) until a CQE names its bid; it is then the shard's until
//! [`BufRing::consume`] either keeps it with the kernel (incremental consumption,
//! `IORING_CQE_F_BUF_MORE`) or publishes it again.
//!
//! Invariants: an idle connection holds no buffer (buffers belong to the shard, not to
//! connections); a chunk is handed out only inside `consume`, so no view outlives the
//! buffer's return to the kernel.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// `IOU_PBUF_RING_INC`: the kernel consumes a buffer incrementally (not exported by the crate).
const IOU_PBUF_RING_INC: u16 = 2;

/// A provided-buffer ring registered with one io_uring under one buffer group id.
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_bytes: usize,
    bufs: *mut u8,
    bufs_bytes: usize,
    buf_bytes: u32,
    count: u16,
    tail: u16,
    bgid: u16,
    /// Per bid: bytes the kernel has already filled and we have handled (incremental mode).
    offsets: Vec<u32>,
    incremental: bool,
}

// SAFETY: the mappings are reachable only through this BufRing, which moves to the shard
// thread before its ring is enabled and is used from that thread alone from then on.
unsafe impl Send for BufRing {}

fn map_anonymous(bytes: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched. The shard
    // owns it until `BufRing::drop` unmaps it, once no recv of the ring is in flight.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

impl BufRing {
    /// Maps `count` buffers of `buf_bytes` each (count a power of two, at most 32768),
    /// registers them as group `bgid`, and publishes them all to the kernel. Tries
    /// incremental consumption first and falls back to whole-buffer mode on older kernels.
    pub fn register(
        submitter: &Submitter<'_>,
        bgid: u16,
        count: u16,
        buf_bytes: u32,
    ) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two ≤ 32768",
            ));
        }
        let entries_bytes = (count as usize * std::mem::size_of::<BufRingEntry>()).max(4096);
        let bufs_bytes = count as usize * buf_bytes as usize;
        let entries = map_anonymous(entries_bytes)?.cast::<BufRingEntry>();
        let bufs = match map_anonymous(bufs_bytes) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `entries` was mapped above with this length and is not yet shared.
                unsafe { libc::munmap(entries.cast(), entries_bytes) };
                return Err(e);
            }
        };
        let mut ring = BufRing {
            entries,
            entries_bytes,
            bufs,
            bufs_bytes,
            buf_bytes,
            count,
            tail: 0,
            bgid,
            offsets: vec![0; count as usize],
            incremental: true,
        };
        // SAFETY: `entries` is a page-aligned mapping of `count` entries that this BufRing
        // owns and keeps mapped until drop, which happens only once no recv is in flight.
        let inc = unsafe {
            submitter.register_buf_ring_with_flags(entries as u64, count, bgid, IOU_PBUF_RING_INC)
        };
        if inc.is_err() {
            ring.incremental = false;
            // SAFETY: as above.
            unsafe { submitter.register_buf_ring_with_flags(entries as u64, count, bgid, 0)? };
        }
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Whether the kernel consumes buffers incrementally (IOU_PBUF_RING_INC accepted).
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// The buffer group id to name in RecvMulti.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Number of buffers in the group.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Bytes of buffer memory mapped (touched pages only count towards RSS).
    pub fn mapped_bytes(&self) -> usize {
        self.bufs_bytes + self.entries_bytes
    }

    fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: idx < count, inside the entries mapping. The kernel reads entries only up
        // to the published tail, and this slot lies past it until `publish`.
        let entry = unsafe { &mut *self.entries.add(idx) };
        // SAFETY: bid < count, so the buffer lies inside the `bufs` mapping.
        entry.set_addr(unsafe { self.bufs.add(bid as usize * self.buf_bytes as usize) } as u64);
        entry.set_len(self.buf_bytes);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.offsets[bid as usize] = 0;
    }

    fn publish(&mut self) {
        // SAFETY: the tail field lives in entry 0 of our mapping; the kernel reads it with
        // acquire semantics, so a release store publishes the entries written before it.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Hands the `len` bytes a recv CQE delivered into buffer `bid` to `f`, then settles the
    /// buffer: with `buf_more` (incremental mode) the kernel keeps filling it after these
    /// bytes; otherwise it goes back to the kernel once `f` returns.
    pub fn consume<R>(
        &mut self,
        bid: u16,
        len: usize,
        buf_more: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        assert!(bid < self.count, "kernel named an unknown buffer id");
        let offset = self.offsets[bid as usize] as usize;
        assert!(
            offset + len <= self.buf_bytes as usize,
            "recv result overruns its buffer"
        );
        // SAFETY: the CQE for `bid` transferred these `len` bytes at `offset` to us; the
        // kernel writes only past them (incremental) or not at all until we push `bid` back
        // below, after `f` has returned and the borrow has ended.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(
                self.bufs
                    .add(bid as usize * self.buf_bytes as usize + offset),
                len,
            )
        };
        let out = f(chunk);
        if buf_more && self.incremental {
            self.offsets[bid as usize] += len as u32;
        } else {
            self.push(bid);
            self.publish();
        }
        out
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `register` with these lengths. The Ring drops
        // its BufRing only after `Ring::quiesce` saw no recv of its own in the kernel (and
        // leaks it otherwise), so nothing can write into them any more.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_bytes);
            libc::munmap(self.bufs.cast(), self.bufs_bytes);
        }
    }
}
