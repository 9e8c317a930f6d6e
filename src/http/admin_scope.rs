//! Admin API scopes, sans-IO: the full admin token (`--admin-token`) and the publish-only
//! token (`--admin-publish-token`), and which endpoints a request's bearer token reaches.
//! Loading the tokens (literal, file, environment) is `auth::admin::load_token`.
//!
//! Invariants:
//! - Both tokens are compared in constant time (`admin_request::constant_time_eq`), and
//!   both are always compared, so the time does not tell which one a guess came close to.
//! - The publish token reaches `POST /publish`, `POST /send`, `POST /broadcast` and
//!   `/healthz`, never `/metrics`, `/history` or `/channels`: a leaked backend credential
//!   cannot read the node's state.
//! - An empty token, from any source, is a start-up error: `Bearer` with nothing after it
//!   must never authenticate.
//! - Without a full token the admin API stays open as before, whatever the publish token.

use super::headers::trim_whitespace;
use crate::http::admin_request::{constant_time_eq, Target};

/// What a request's bearer token lets it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminScope {
    /// Every endpoint: the full admin token, or no token configured at all.
    Full,
    /// `POST /publish`, `POST /send`, `POST /broadcast` and `/healthz`.
    PublishOnly,
}

impl AdminScope {
    /// Whether this scope reaches `target`.
    pub fn allows(self, target: &Target) -> bool {
        match self {
            Self::Full => true,
            // Listed one by one, so a new read endpoint is closed to it until named here.
            Self::PublishOnly => matches!(
                target,
                Target::Publish(_) | Target::Send(_) | Target::Broadcast | Target::Healthz
            ),
        }
    }
}

/// Why an admin request's token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminDenial {
    /// No single `Authorization: Bearer` carrying a configured token (401).
    Unauthorized,
    /// The publish token on an endpoint outside its scope (403).
    Forbidden,
}

impl AdminDenial {
    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
        }
    }

    /// The metric label (`reason="…"`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }
}

/// The configured admin tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminTokens {
    full: Option<Box<[u8]>>,
    publish: Option<Box<[u8]>>,
}

impl std::fmt::Debug for AdminTokens {
    /// Never prints a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTokens")
            .field("full", &self.full.is_some())
            .field("publish", &self.publish.is_some())
            .finish()
    }
}

impl AdminTokens {
    /// The tokens; an empty one is refused, and so is a publish token equal to the full one
    /// (the scope would depend on which check runs first).
    pub fn new(full: Option<Box<[u8]>>, publish: Option<Box<[u8]>>) -> Result<Self, String> {
        if full.as_deref().is_some_and(<[u8]>::is_empty)
            || publish.as_deref().is_some_and(<[u8]>::is_empty)
        {
            return Err("an admin token is empty".to_owned());
        }
        if full.is_some() && full == publish {
            return Err("--admin-publish-token must differ from --admin-token".to_owned());
        }
        if full.is_none() && publish.is_some() {
            return Err(
                "--admin-publish-token needs --admin-token: without it the admin API \
                 is open to everyone"
                    .to_owned(),
            );
        }
        Ok(AdminTokens { full, publish })
    }

    /// Whether any token is configured (else the admin API is open).
    pub fn is_open(&self) -> bool {
        self.full.is_none()
    }

    /// The scope of a request from its `Authorization` header values, for `target`.
    pub fn check<V: AsRef<[u8]>>(
        &self,
        authorization: &[V],
        target: &Target,
    ) -> Result<AdminScope, AdminDenial> {
        let single = match authorization {
            [value] => Some(value.as_ref()),
            _ => None,
        };
        let scope = self.scope(single)?;
        if scope.allows(target) {
            Ok(scope)
        } else {
            Err(AdminDenial::Forbidden)
        }
    }

    /// The scope of the request's one `Authorization` value (`None`: absent or repeated),
    /// before its target is known: the admin parser refuses a wrong token (401) before it
    /// routes, and checks [`AdminScope::allows`] once it knows the endpoint.
    pub fn scope(&self, authorization: Option<&[u8]>) -> Result<AdminScope, AdminDenial> {
        let Some(full) = &self.full else {
            return Ok(AdminScope::Full);
        };
        let presented = authorization
            .and_then(bearer)
            .ok_or(AdminDenial::Unauthorized)?;
        // Both comparisons always run, so timing does not say which token was near.
        let is_full = constant_time_eq(presented, full);
        let is_publish = self
            .publish
            .as_deref()
            .is_some_and(|publish| constant_time_eq(presented, publish));
        match (is_full, is_publish) {
            (true, _) => Ok(AdminScope::Full),
            (false, true) => Ok(AdminScope::PublishOnly),
            (false, false) => Err(AdminDenial::Unauthorized),
        }
    }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive), trimmed.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = trim_whitespace(value);
    let scheme_end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let (scheme, credentials) = value.split_at(scheme_end);
    scheme
        .eq_ignore_ascii_case(b"Bearer")
        .then(|| trim_whitespace(credentials))
}

#[cfg(test)]
#[path = "admin_scope_tests.rs"]
mod tests;
