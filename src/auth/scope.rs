//! What one authenticated connection may do, in the few bytes it keeps: [`Grant`] (session,
//! tab, expiry, and an `Arc` of its [`Scope`]), and the per-shard [`ScopeInterner`] that makes
//! every connection with the same claims share one `Scope`.
//!
//! A token's claims are parsed, checked and dropped during the handshake; what stays is the
//! session (which the sessions map needs anyway), the expiry (a timer wheel slot), and one
//! pointer to an interned `Scope`. A hundred thousand connections holding tokens minted from
//! the same few templates therefore cost a few `Scope`s per shard, not a hundred thousand.
//!
//! Invariants:
//! - A `Patterns` is sorted and free of duplicates, so two equal lists in any order intern to
//!   one `Scope`, and lookups are binary searches.
//! - A pattern is a channel name (`[A-Za-z0-9_.:-]{1,128}`), a `prefix.*` whose prefix is
//!   such a name, or `*` alone (every channel). Nothing else is accepted.
//! - An `Interner` (`ScopeInterner`, and `GrantInterner` for whole grants) holds each value
//!   it handed out at most once; `sweep` drops those no connection holds any more, and
//!   `intern` sweeps whenever the table has doubled since the last sweep, so its size stays
//!   within twice the live distinct values (plus a floor).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

// One rule for channel names, session ids and tab ids, shared with `route.rs` and the admin
// API: `[A-Za-z0-9_.:-]{1,128}`.
pub use crate::http::admin_request::{valid_name, NAME_BYTES_MAX};

/// The most patterns one claim list (`channels` or `publish`) may carry.
pub const PATTERNS_MAX: usize = 256;

/// The table size below which `ScopeInterner` never sweeps.
const INTERNER_SWEEP_FLOOR: usize = 64;

/// Why a list of channel patterns was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternError {
    /// A pattern is not a channel name, a `prefix.*` or `*`.
    Invalid(String),
    /// The list has more than [`PATTERNS_MAX`] patterns.
    TooMany,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(pattern) => write!(
                f,
                "invalid channel pattern {pattern:?}: a name, `prefix.*` or `*`"
            ),
            Self::TooMany => write!(f, "more than {PATTERNS_MAX} channel patterns"),
        }
    }
}

impl std::error::Error for PatternError {}

/// A set of channel patterns: exact names and prefixes, each sorted and deduplicated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Patterns {
    /// Exact channel names.
    exact: Box<[Box<str>]>,
    /// Prefixes, each ending in `.` (from `prefix.*`), or empty (from `*`, every channel).
    prefixes: Box<[Box<str>]>,
}

impl Patterns {
    /// The empty set: no channel matches.
    pub fn none() -> Patterns {
        Patterns::default()
    }

    /// Parses a list of patterns, refusing anything but names, `prefix.*` and `*`.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Patterns, PatternError> {
        if list.len() > PATTERNS_MAX {
            return Err(PatternError::TooMany);
        }
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for pattern in list {
            let pattern = pattern.as_ref();
            if pattern == "*" {
                prefixes.push(Box::<str>::from(""));
            } else if let Some(prefix) = pattern.strip_suffix(".*") {
                if !valid_name(prefix) {
                    return Err(PatternError::Invalid(pattern.to_owned()));
                }
                // The dot stays in the prefix, so `news.*` matches `news.eu` but not `newsy`.
                prefixes.push(Box::<str>::from(&pattern[..pattern.len() - 1]));
            } else if valid_name(pattern) {
                exact.push(Box::<str>::from(pattern));
            } else {
                return Err(PatternError::Invalid(pattern.to_owned()));
            }
        }
        exact.sort_unstable();
        exact.dedup();
        prefixes.sort_unstable();
        prefixes.dedup();
        Ok(Patterns {
            exact: exact.into(),
            prefixes: prefixes.into(),
        })
    }

    /// Whether `channel` is one of the exact names or starts with one of the prefixes.
    pub fn matches(&self, channel: &str) -> bool {
        self.exact
            .binary_search_by(|name| (**name).cmp(channel))
            .is_ok()
            || self
                .prefixes
                .iter()
                .any(|prefix| channel.len() > prefix.len() && channel.starts_with(&**prefix))
    }

    /// Whether no channel matches.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The heap bytes this set owns (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        let strings =
            |list: &[Box<str>]| size_of_val(list) + list.iter().map(|s| s.len()).sum::<usize>();
        strings(&self.exact) + strings(&self.prefixes)
    }
}

/// What a connection may subscribe to and publish to. Interned per shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The `channels` claim (or `--anonymous-channels`).
    pub subscribe: Patterns,
    /// The `publish` claim; empty when absent, so a token without it publishes nowhere.
    pub publish: Patterns,
}

impl Scope {
    /// Whether the connection may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.matches(channel)
    }

    /// Whether the connection may publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.matches(channel)
    }
}

/// One shard's table of the scopes its connections hold, so equal claims share one `Arc`.
pub type ScopeInterner = Interner<Scope>;

/// One shard's table of the grants its connections hold: connections presenting equal
/// tokens (same `sub`, `tab`, `exp` and scope) share one `Arc<Grant>`.
pub type GrantInterner = Interner<Grant>;

/// One shard's table of shared values (scopes, grants), so equal values share one `Arc`.
#[derive(Debug)]
pub struct Interner<T> {
    values: HashSet<Arc<T>>,
    /// The table size at which `intern` next sweeps.
    sweep_at: usize,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            values: HashSet::new(),
            sweep_at: INTERNER_SWEEP_FLOOR,
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    /// The shared `Arc` for a value equal to `value`, adding it if none is held.
    pub fn intern(&mut self, value: T) -> Arc<T> {
        if let Some(shared) = self.values.get(&value) {
            return Arc::clone(shared);
        }
        self.insert(Arc::new(value))
    }

    /// As `intern`, for a value already in an `Arc` (kept when no equal one is held).
    pub fn intern_arc(&mut self, value: Arc<T>) -> Arc<T> {
        if let Some(shared) = self.values.get(&*value) {
            return Arc::clone(shared);
        }
        self.insert(value)
    }

    fn insert(&mut self, shared: Arc<T>) -> Arc<T> {
        if self.values.len() >= self.sweep_at {
            self.sweep();
            self.sweep_at = (self.values.len() * 2).max(INTERNER_SWEEP_FLOOR);
        }
        self.values.insert(Arc::clone(&shared));
        shared
    }

    /// Drops every value that only this table still holds.
    pub fn sweep(&mut self) {
        self.values.retain(|value| Arc::strong_count(value) > 1);
    }

    /// How many distinct values the table holds.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the table holds no value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What a connection keeps of a verified token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The session (`sub`): the only source of the session when auth is on.
    pub session: Box<str>,
    /// The tab (`tab`), if the token names one; the caller's default tab otherwise.
    pub tab: Option<Box<str>>,
    /// When the token expires (`exp`), in seconds since the Unix epoch: the connection is
    /// closed 4003 then unless a refresh moved it.
    pub expires_at_s: u64,
    /// The channels the connection may subscribe and publish to, shared per shard.
    pub scope: Arc<Scope>,
}

impl Grant {
    /// Whether the connection may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.scope.may_subscribe(channel)
    }

    /// Whether the connection may publish to `channel` (the `publish` claim).
    pub fn may_publish(&self, channel: &str) -> bool {
        self.scope.may_publish(channel)
    }
}

#[cfg(test)]
#[path = "scope_tests.rs"]
mod tests;
