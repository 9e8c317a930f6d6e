//! The payload mask of RFC 6455 §5.3 and a fast source of mask keys.
//!
//! Owns the XOR transform applied to every client-to-server payload byte:
//! `byte[i] ^= key[i % 4]`, where `i` counts from the start of the frame payload. A frame
//! may arrive in pieces, so every function takes the `offset` of its first byte within the
//! payload and rotates the key to match.
//!
//! Invariants:
//! - `unmask` and `unmask_scalar` give identical results for every length and offset
//!   (tested below); `unmask` only changes how many bytes each step touches.
//! - Masking is its own inverse, so the same functions mask outgoing client frames.
//! - Safe code only: words are built with `u64::from_ne_bytes`, never by casting pointers.

/// The bytes `unmask` handles in one step.
const WORD_BYTES: usize = 8;

/// XORs `buf` with `key` in place, a word at a time; `offset` is the position of `buf[0]`
/// within the frame payload.
///
/// The leading bytes up to an 8-byte boundary and the trailing bytes that do not fill a
/// word are done one at a time; the aligned middle is done with one `u64` XOR per word.
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    // Bytes before the first aligned address go one by one, so that the words below are
    // aligned loads on targets where unaligned ones cost extra. `align_offset` may answer
    // `usize::MAX` when it cannot tell, which `min` turns into "all bytes scalar".
    let head_len = buf.as_ptr().align_offset(WORD_BYTES).min(buf.len());
    let (head, body) = buf.split_at_mut(head_len);
    unmask_scalar(head, key, 0);

    let key = rotate(key, head_len);
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = body.chunks_exact_mut(WORD_BYTES);
    for chunk in &mut words {
        let mut bytes = [0u8; WORD_BYTES];
        bytes.copy_from_slice(chunk);
        let value = u64::from_ne_bytes(bytes) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    // A whole number of words has passed, so the key phase is unchanged for the tail.
    unmask_scalar(words.into_remainder(), key, 0);
}

/// XORs `buf` with `key` in place one byte at a time; the reference for `unmask`.
pub fn unmask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) % 4];
    }
}

/// Returns the key as seen from `offset` bytes into the payload.
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let shift = offset % 4;
    [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ]
}

/// A xorshift64* generator of mask keys.
///
/// RFC 6455 §5.3 asks for keys an intermediary cannot predict; the load generator only
/// needs keys that vary, cheaply, and a reproducible run from a seed. This is not a
/// cryptographic source and must not be used where unpredictability matters.
#[derive(Clone, Debug)]
pub struct MaskGen(u64);

impl MaskGen {
    /// A fixed non-zero state used when the seed is zero, which xorshift cannot leave.
    const SEED_ZERO_REPLACEMENT: u64 = 0x9e37_79b9_7f4a_7c15;
    /// The xorshift64* output multiplier (Vigna, "An experimental exploration of
    /// Marsaglia's xorshift generators, scrambled").
    const MULTIPLIER: u64 = 0x2545_f491_4f6c_dd1d;

    /// Starts a generator from `seed`; a zero seed is replaced by a fixed non-zero one.
    pub fn new(seed: u64) -> Self {
        if seed == 0 {
            MaskGen(Self::SEED_ZERO_REPLACEMENT)
        } else {
            MaskGen(seed)
        }
    }

    /// Returns the next 4-byte key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        // The high half of the product is the better-mixed half.
        let high = (x.wrapping_mul(Self::MULTIPLIER) >> 32) as u32;
        high.to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn word_unmask_matches_scalar_for_all_lengths_and_offsets() {
        // A larger backing buffer lets each slice start at every alignment too.
        let source: Vec<u8> = (0..216u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..200 {
            for offset in 0..4 {
                for start in 0..WORD_BYTES {
                    let mut fast = source.clone();
                    let mut slow = source.clone();
                    unmask(&mut fast[start..start + len], KEY, offset);
                    unmask_scalar(&mut slow[start..start + len], KEY, offset);
                    assert_eq!(fast, slow, "len {len} offset {offset} start {start}");
                }
            }
        }
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut payload, KEY, 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_whole() {
        let mut whole = *b"a payload that arrives in several pieces";
        let mut pieces = whole;
        unmask(&mut whole, KEY, 0);
        let (first, rest) = pieces.split_at_mut(3);
        let (second, third) = rest.split_at_mut(10);
        unmask(first, KEY, 0);
        unmask(second, KEY, 3);
        unmask(third, KEY, 13);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn mask_gen_is_reproducible_and_varies() {
        let mut a = MaskGen::new(42);
        let mut b = MaskGen::new(42);
        let keys: Vec<[u8; 4]> = (0..64).map(|_| a.next_key()).collect();
        assert!(keys.iter().all(|key| *key == b.next_key()));
        assert!(keys.windows(2).all(|pair| pair[0] != pair[1]));
        let mut zero = MaskGen::new(0);
        assert_ne!(zero.next_key(), zero.next_key());
    }
}
