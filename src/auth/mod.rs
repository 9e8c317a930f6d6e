//! Who may connect, subscribe and publish: signed connection tokens (JWT).
//!
//! The handshake finds the request's credential ([`extract::find_credential`]), [`admit`]
//! decides from `--auth` whether and how the token is checked ([`KeySet::verify`]), and the
//! connection keeps an [`Access`]: nothing for `--auth off`, the anonymous scope, or a
//! [`Grant`] (session, expiry, interned scope). Refusals come back as [`Refusal`] values that
//! know their status and metric label.
//!
//! Invariants:
//! - Nothing here does I/O or reads the clock: keys are loaded by `KeySet::load` at start-up,
//!   and time is a parameter.
//! - With auth on (`optional` or `required`), the session comes only from a token's `sub`; an
//!   anonymous connection has no session at all, so `?session=` can never displace a holder.
//! - With `--auth off` no token is looked at, even if one is sent.
//! - A token that is sent and fails is refused, even where an anonymous client would be let
//!   in: a client that tried to authenticate must learn that it failed.

pub mod admin;
pub mod extract;
pub mod keys;
pub mod refusal;
pub mod scope;
pub mod setup;

use std::sync::Arc;

pub use admin::{AdminDenial, AdminScope, AdminTokens};
pub use extract::{find_credential, Credential, TokenSource, SUBPROTOCOL};
pub use keys::{KeyAlgorithm, KeyError, KeySet, TokenKey, CLOCK_LEEWAY_S};
pub use refusal::{LogBudget, Refusal};
pub use scope::{Grant, GrantInterner, Interner, PatternError, Patterns, Scope, ScopeInterner};

/// The close code of a live connection whose token expired without a refresh.
pub const TOKEN_EXPIRED_CLOSE_CODE: u16 = 4003;

/// The close reason sent with [`TOKEN_EXPIRED_CLOSE_CODE`].
pub const TOKEN_EXPIRED_CLOSE_REASON: &str = "token expired";

/// `--auth`: whether connections need a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// No token is checked; anyone may subscribe to anything (a warning at start-up says so).
    #[default]
    Off,
    /// A valid token is honoured; a client without one gets `--anonymous-channels` only.
    Optional,
    /// Every connection needs a valid token.
    Required,
}

impl AuthMode {
    /// Parses the flag's value: `off`, `optional` or `required`.
    pub fn parse(value: &str) -> Option<AuthMode> {
        match value {
            "off" => Some(Self::Off),
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }
}

/// Checks the auth configuration at start-up: `--auth required` without a key would refuse
/// every client, and `--anonymous-channels` only means something with `--auth optional`.
/// The error is a sentence for the start-up failure.
pub fn check_config(mode: AuthMode, keys: &KeySet, anonymous: &Scope) -> Result<(), String> {
    match mode {
        AuthMode::Required | AuthMode::Optional if keys.is_empty() => Err(format!(
            "--auth {} needs at least one --token-key or --token-key-env",
            if mode == AuthMode::Required {
                "required"
            } else {
                "optional"
            }
        )),
        AuthMode::Off | AuthMode::Required if !anonymous.subscribe.is_empty() => {
            Err("--anonymous-channels needs --auth optional".to_owned())
        }
        _ => Ok(()),
    }
}

/// The line `--auth off` logs at start-up.
pub const AUTH_OFF_WARNING: &str =
    "warn=auth_off --auth off: anyone may subscribe to any channel and claim any session";

/// What an admitted connection may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// `--auth off`: every channel, the query's session, `--client-publish` as before.
    Open,
    /// `--auth optional` without a token: the anonymous scope, no session, no publishing.
    Anonymous(Arc<Scope>),
    /// A verified token (shared by the connections that presented equal ones).
    Token(Arc<Grant>),
}

impl Access {
    /// Whether the connection may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Anonymous(scope) => scope.may_subscribe(channel),
            Self::Token(grant) => grant.may_subscribe(channel),
        }
    }

    /// Whether the connection may publish to `channel`. With auth off the node-wide
    /// `--client-publish` switch decides, as before; with auth on only a `publish` claim does.
    pub fn may_publish(&self, channel: &str, client_publish: bool) -> bool {
        match self {
            Self::Open => client_publish,
            Self::Anonymous(_) => false,
            Self::Token(grant) => grant.may_publish(channel),
        }
    }

    /// The session and tab from the token, if any. `Open` answers `None` too: its session,
    /// if any, comes from the query as before.
    pub fn session(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Self::Token(grant) => Some((&grant.session, grant.tab.as_deref())),
            Self::Open | Self::Anonymous(_) => None,
        }
    }

    /// When the connection must be closed 4003, in seconds since the Unix epoch.
    pub fn expires_at_s(&self) -> Option<u64> {
        match self {
            Self::Token(grant) => Some(grant.expires_at_s),
            Self::Open | Self::Anonymous(_) => None,
        }
    }
}

/// Decides an upgrade: `credential` is what [`find_credential`] found, `verify` checks a
/// token (normally `|token| keys.verify(token, now_s, interner)`; it is only called when the
/// mode needs it), and `channels` are the channels the request subscribes to at once (the
/// `/ws/<channel>` path or JSON mode's `channel=` list), each of which must be allowed.
///
/// - `off`: `Open`, and the token, if any, is not looked at.
/// - `optional`: no token gives `Anonymous`, and a channel outside `--anonymous-channels`
///   is `Missing` (401); a valid token gives `Token`; a failing one its refusal.
/// - `required`: no token is `Missing` (401); a valid token gives `Token`; a failing one
///   its refusal.
///
/// With a token, a channel outside its `channels` claim is `ChannelNotAllowed` (403).
pub fn admit<'a>(
    mode: AuthMode,
    anonymous: &Arc<Scope>,
    credential: Option<Credential<'a>>,
    verify: impl FnOnce(&'a str) -> Result<Grant, Refusal>,
    channels: &[&str],
) -> Result<Access, Refusal> {
    let access = match (mode, credential) {
        (AuthMode::Off, _) => return Ok(Access::Open),
        (AuthMode::Required, None) => return Err(Refusal::Missing),
        (AuthMode::Optional, None) => {
            // A tokenless client asking for more than the anonymous channels is told a token
            // would help (401), not that a token forbade it (403).
            if channels
                .iter()
                .any(|channel| !anonymous.may_subscribe(channel))
            {
                return Err(Refusal::Missing);
            }
            return Ok(Access::Anonymous(Arc::clone(anonymous)));
        }
        (AuthMode::Optional | AuthMode::Required, Some(credential)) => {
            Access::Token(Arc::new(verify(credential.token)?))
        }
    };
    if channels
        .iter()
        .any(|channel| !access.may_subscribe(channel))
    {
        return Err(Refusal::ChannelNotAllowed);
    }
    Ok(access)
}

/// Replaces a live connection's grant by a fresh token's (JSON `{"op":"refresh"}`): the new
/// token must carry the same `sub` (else `SessionMismatch`), and every channel the
/// connection is subscribed to must stay allowed (else `ChannelNotAllowed`), so a refresh can
/// neither move a connection to another session nor keep a revoked channel.
pub fn refresh<'s>(
    current: &Grant,
    fresh: Grant,
    subscribed: impl IntoIterator<Item = &'s str>,
) -> Result<Grant, Refusal> {
    if fresh.session != current.session {
        return Err(Refusal::SessionMismatch);
    }
    if subscribed
        .into_iter()
        .any(|channel| !fresh.may_subscribe(channel))
    {
        return Err(Refusal::ChannelNotAllowed);
    }
    Ok(fresh)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
