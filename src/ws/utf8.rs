//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! Owns the rule of RFC 6455 §8.1: an endpoint fails the connection as soon as it sees
//! bytes that cannot be valid UTF-8, even in the middle of a frame or a fragmented
//! message. Validation rides on `std::str::from_utf8`: its `error_len()` tells an invalid
//! sequence (`Some`, fail now) from one that is merely cut off at the end (`None`, carry
//! the cut-off bytes into the next chunk).
//!
//! Invariants:
//! - `carry[..carry_len]` is always a proper prefix of some valid multi-byte code point,
//!   so `carry_len` is at most 3 and the validator is 4 bytes.
//! - Every byte fed is looked at once, apart from the at most 3 carried bytes.

use std::fmt;
use std::str;

/// The longest proper prefix of a UTF-8 code point, in bytes.
const CARRY_BYTES_MAX: usize = 3;

/// Validates a stream of UTF-8 chunks, failing as soon as the stream cannot be valid.
#[derive(Default, Clone, Copy, Debug)]
pub struct Utf8Validator {
    /// The start of a code point cut off at the end of the last chunk.
    carry: [u8; CARRY_BYTES_MAX],
    /// How many bytes of `carry` are in use.
    carry_len: u8,
}

/// The bytes fed so far are not, and cannot become, valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utf8Error;

impl fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for Utf8Error {}

impl Utf8Validator {
    /// Checks the next chunk of the stream.
    ///
    /// Fails as soon as the bytes seen so far are not a prefix of valid UTF-8; a code
    /// point cut off at the end of `bytes` is remembered and completed by the next call.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Utf8Error> {
        let rest = self.complete_carry(bytes)?;
        let Some(rest) = rest else {
            return Ok(());
        };
        match str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(error) if error.error_len().is_some() => Err(Utf8Error),
            Err(error) => {
                // `error_len() == None` means the tail is a valid but unfinished code point.
                let tail = &rest[error.valid_up_to()..];
                debug_assert!(!tail.is_empty() && tail.len() <= CARRY_BYTES_MAX);
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Fails if the stream ended in the middle of a code point.
    pub fn finish(&self) -> Result<(), Utf8Error> {
        if self.is_clean() {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Whether no partial code point is being carried.
    pub fn is_clean(&self) -> bool {
        self.carry_len == 0
    }

    /// Completes a carried code point with the first bytes of `bytes`.
    ///
    /// Returns the bytes left after that code point, or `None` when `bytes` ran out before
    /// the code point was complete (the carry has then grown).
    fn complete_carry<'b>(&mut self, bytes: &'b [u8]) -> Result<Option<&'b [u8]>, Utf8Error> {
        let carry_len = usize::from(self.carry_len);
        if carry_len == 0 {
            return Ok(Some(bytes));
        }
        let needed = code_point_len(self.carry[0]);
        debug_assert!(carry_len < needed);
        let take = (needed - carry_len).min(bytes.len());
        let mut point = [0u8; 4];
        point[..carry_len].copy_from_slice(&self.carry[..carry_len]);
        point[carry_len..carry_len + take].copy_from_slice(&bytes[..take]);
        match str::from_utf8(&point[..carry_len + take]) {
            Ok(_) => {
                self.carry_len = 0;
                Ok(Some(&bytes[take..]))
            }
            Err(error) if error.error_len().is_some() => Err(Utf8Error),
            Err(_) => {
                // Still a valid prefix: `bytes` was too short to finish the code point.
                debug_assert_eq!(take, bytes.len());
                self.carry[carry_len..carry_len + take].copy_from_slice(bytes);
                self.carry_len += take as u8;
                Ok(None)
            }
        }
    }
}

/// The length of the code point that starts with `lead`, which the carry invariant
/// guarantees is a multi-byte lead byte.
fn code_point_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces cut at `cuts` and reports the outcome.
    fn feed_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut validator = Utf8Validator::default();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            validator.feed(&bytes[start..cut])?;
            start = cut;
        }
        validator.finish()
    }

    #[test]
    fn every_split_of_valid_text_is_accepted() {
        let text = "aé€𝄞 mixed ascii, 2, 3 and 4 byte code points ✓";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(feed_in_pieces(bytes, &[cut]), Ok(()), "cut at {cut}");
        }
        let all_cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(feed_in_pieces(bytes, &all_cuts), Ok(()));
    }

    #[test]
    fn every_split_agrees_with_std_on_invalid_text() {
        let samples: [&[u8]; 6] = [
            b"ok\xff",
            b"\xed\xa0\x80",         // A UTF-16 surrogate.
            b"\xf4\x90\x80\x80",     // Above U+10FFFF.
            b"\xc0\xaf",             // An overlong '/'.
            b"\xe2\x82",             // Cut off at the end.
            b"\xce\xba\xe1\xbd\xb9", // Valid, as a control.
        ];
        for sample in samples {
            let expected = str::from_utf8(sample).map(|_| ()).map_err(|_| Utf8Error);
            for cut in 0..=sample.len() {
                assert_eq!(
                    feed_in_pieces(sample, &[cut]),
                    expected,
                    "{sample:x?} at {cut}"
                );
            }
        }
    }

    #[test]
    fn fails_fast_on_an_impossible_prefix() {
        // 0xf4 0x90 can start no code point, so the error comes before the rest arrives.
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"abc\xf4"), Ok(()));
        assert!(!validator.is_clean());
        assert_eq!(validator.feed(b"\x90"), Err(Utf8Error));
    }

    #[test]
    fn unfinished_code_point_fails_at_finish() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"\xf0\x9d"), Ok(()));
        assert_eq!(validator.feed(b"\x84"), Ok(()));
        assert_eq!(validator.finish(), Err(Utf8Error));
        assert_eq!(validator.feed(b"\x9e"), Ok(()));
        assert_eq!(validator.finish(), Ok(()));
    }

    #[test]
    fn validator_stays_small() {
        assert!(std::mem::size_of::<Utf8Validator>() <= 4);
    }
}
