//! Why a token, or a connection's use of it, was refused: [`Refusal`], with the HTTP status a
//! handshake answers, the stable label its counter and log line carry, and the
//! `WWW-Authenticate` challenge of RFC 6750 §3.
//!
//! Invariants:
//! - Labels never change once released: dashboards and alerts key on them.
//! - Every variant but the two about scope (`ChannelNotAllowed`, `SessionMismatch`) is a 401:
//!   a different token could succeed. Those two are 403: the token is valid, the request is
//!   outside it.

use std::fmt;

/// Every label [`Refusal::label`] returns, in [`Refusal::slot`] order, so counters can start
/// each label at zero.
pub const ALL_LABELS: &[&str] = &[
    "token_missing",
    "token_malformed",
    "token_wrong_algorithm",
    "token_unknown_key",
    "token_bad_signature",
    "token_expired",
    "token_not_yet_valid",
    "channel_not_allowed",
    "token_session_mismatch",
];

/// Why a connection was refused by the token check, before or after its upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Auth is required (or the channel is not anonymous) and the request carries no token.
    Missing,
    /// The token is not three base64url parts, its header or claims are not the JSON expected
    /// (`sub` and `exp` are required), a claim breaks the name rules, or it came twice.
    Malformed,
    /// The header's `alg` is `none`, unknown, or one no configured key uses (an HS256 token
    /// against a node that holds only public keys is refused here: key confusion).
    WrongAlgorithm,
    /// The header's `kid` names no configured key (a removed key, after rotation).
    UnknownKey,
    /// No key of the token's algorithm verifies its signature.
    BadSignature,
    /// The token's `exp` has passed.
    Expired,
    /// The token's `nbf` (or `iat`) is later than now plus the clock leeway.
    NotYetValid,
    /// A channel the request names is outside the token's `channels` (or `publish`) claim.
    ChannelNotAllowed,
    /// A refresh token names another `sub` than the connection's.
    SessionMismatch,
}

impl Refusal {
    /// How many labels there are: the length of the per-reason counters.
    pub const COUNT: usize = ALL_LABELS.len();

    /// This refusal's index in [`ALL_LABELS`].
    pub const fn slot(self) -> usize {
        match self {
            Self::Missing => 0,
            Self::Malformed => 1,
            Self::WrongAlgorithm => 2,
            Self::UnknownKey => 3,
            Self::BadSignature => 4,
            Self::Expired => 5,
            Self::NotYetValid => 6,
            Self::ChannelNotAllowed => 7,
            Self::SessionMismatch => 8,
        }
    }

    /// The stable metric label (`reason="…"`) and log `reason=` value.
    pub const fn label(self) -> &'static str {
        ALL_LABELS[self.slot()]
    }

    /// The HTTP status of the refusal before the upgrade; the JSON error code after it.
    pub const fn status(self) -> u16 {
        match self {
            Self::ChannelNotAllowed | Self::SessionMismatch => 403,
            _ => 401,
        }
    }

    /// A one-line description for a person: the refusal's body or JSON `reason`.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Missing => "a token is required",
            Self::Malformed => "malformed token",
            Self::WrongAlgorithm => "token algorithm not accepted",
            Self::UnknownKey => "token key id not known",
            Self::BadSignature => "token signature does not verify",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::ChannelNotAllowed => "channel not allowed by the token",
            Self::SessionMismatch => "a refresh token must carry the same sub",
        }
    }

    /// The `WWW-Authenticate` value a 401 carries (RFC 6750 §3): no error code when no token
    /// came, `invalid_token` otherwise; 403s carry `insufficient_scope`.
    pub const fn www_authenticate(self) -> &'static str {
        match self {
            Self::Missing => "Bearer realm=\"ringpush\"",
            Self::ChannelNotAllowed | Self::SessionMismatch => {
                "Bearer realm=\"ringpush\", error=\"insufficient_scope\""
            }
            _ => "Bearer realm=\"ringpush\", error=\"invalid_token\"",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Refusal {}

/// The refusal log lines a shard writes per second by default.
pub const LOG_LINES_PER_S_DEFAULT: u32 = 10;

/// Rate-limits one shard's refusal log lines, so a flood of bad tokens cannot flood the log:
/// at most `lines_per_s` lines in each second, the rest counted and reported by the next
/// line that is written (`suppressed=N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBudget {
    lines_per_s: u32,
    window_s: u32,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// A budget of `lines_per_s` lines a second.
    pub const fn new(lines_per_s: u32) -> LogBudget {
        LogBudget {
            lines_per_s,
            window_s: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at second `now_s`: `Some(n)` with the number of lines
    /// suppressed since the last one written (to print as `suppressed=n`), or `None`, in
    /// which case the line is counted and not written.
    pub fn admit(&mut self, now_s: u32) -> Option<u64> {
        if now_s != self.window_s {
            self.window_s = now_s;
            self.logged = 0;
        }
        if self.logged >= self.lines_per_s {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_writes_a_few_lines_a_second_and_counts_the_rest() {
        let mut budget = LogBudget::new(2);
        assert_eq!(budget.admit(5), Some(0));
        assert_eq!(budget.admit(5), Some(0));
        for _ in 0..1000 {
            assert_eq!(budget.admit(5), None);
        }
        assert_eq!(
            budget.admit(6),
            Some(1000),
            "the next line reports the suppressed"
        );
        assert_eq!(budget.admit(6), Some(0));
        assert_eq!(budget.admit(6), None);
    }
}
