//! Where a token travels in an upgrade request, read as pure functions over the query string
//! and raw header values: `?token=…`, the `Sec-WebSocket-Protocol` offer, or
//! `Authorization: Bearer …`.
//!
//! Browsers cannot set headers on a WebSocket, but they can offer subprotocols, so a browser
//! sends `new WebSocket(url, ["ringpush.v1", "bearer." + jwt])`. A JWT (base64url parts joined
//! by dots) is an RFC 6455 token as it stands. The node echoes [`SUBPROTOCOL`]: a browser
//! fails a connection whose 101 echoes none of its offers, and echoing `bearer.…` would copy
//! the credential into every proxy log. So the token form requires `ringpush.v1` beside it.
//!
//! Invariants:
//! - A token is taken from exactly one place; a second one anywhere is `Malformed`, so two
//!   layers (a proxy and a client) cannot disagree about who the client is.
//! - Only the characters of a compact JWT are accepted (`[A-Za-z0-9_-]` and exactly two
//!   dots); nothing is percent-decoded, since none of them needs it.
//! - Nothing here allocates: every answer borrows the request.

use super::refusal::Refusal;
use crate::http::trim_whitespace;

/// The subprotocol a client offers beside its `bearer.` token, and the one the node echoes.
pub const SUBPROTOCOL: &str = "ringpush.v1";

/// The prefix of the subprotocol that carries a token: `bearer.<jwt>`.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// The query parameter that carries a token.
pub const TOKEN_QUERY_KEY: &str = "token";

/// Where a token came from: for the log line, and to know what the 101 must echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `?token=…` in the request target.
    Query,
    /// `bearer.…` in `Sec-WebSocket-Protocol`; the 101 must echo [`SUBPROTOCOL`].
    Subprotocol,
    /// `Authorization: Bearer …`.
    Authorization,
}

/// A token found in a request, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential<'a> {
    /// The compact JWT, not yet verified.
    pub token: &'a str,
    /// Where it was found.
    pub source: TokenSource,
}

impl Credential<'_> {
    /// The subprotocol the 101 must carry for this credential, if any: [`SUBPROTOCOL`] for a
    /// token sent as a subprotocol, never the token itself.
    pub fn echo(&self) -> Option<&'static str> {
        (self.source == TokenSource::Subprotocol).then_some(SUBPROTOCOL)
    }
}

/// Whether `token` has the shape of a compact JWS: three base64url parts, the first two
/// non-empty. An empty signature is let through to be refused by its header's `alg`
/// (`none`), so the refusal names the attack.
pub fn well_formed(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        let base64url = part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !base64url || (part.is_empty() && parts < 3) {
            return false;
        }
    }
    parts == 3
}

/// The `token` parameter of a query string (the part after `?`, without it).
pub fn token_from_query(query: &str) -> Result<Option<&str>, Refusal> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != TOKEN_QUERY_KEY {
            continue;
        }
        if found.is_some() || !well_formed(value) {
            return Err(Refusal::Malformed);
        }
        found = Some(value);
    }
    Ok(found)
}

/// The `bearer.` token among the `Sec-WebSocket-Protocol` header values (each a comma list,
/// as sent). Offering a token without [`SUBPROTOCOL`] is malformed: the node could not
/// echo a protocol the browser accepts without echoing the token.
pub fn token_from_subprotocols<V: AsRef<[u8]>>(values: &[V]) -> Result<Option<&str>, Refusal> {
    let mut found = None;
    let mut offers_subprotocol = false;
    for value in values {
        for offer in value.as_ref().split(|&b| b == b',').map(trim_whitespace) {
            if offer == SUBPROTOCOL.as_bytes() {
                offers_subprotocol = true;
            }
            let Some(token) = offer.strip_prefix(BEARER_PROTOCOL_PREFIX.as_bytes()) else {
                continue;
            };
            let token = std::str::from_utf8(token).map_err(|_| Refusal::Malformed)?;
            if found.is_some() || !well_formed(token) {
                return Err(Refusal::Malformed);
            }
            found = Some(token);
        }
    }
    match found {
        Some(_) if !offers_subprotocol => Err(Refusal::Malformed),
        found => Ok(found),
    }
}

/// The token of an `Authorization: Bearer …` header (RFC 6750 §2.1). Another scheme is not
/// a token; more than one `Authorization` line is malformed.
pub fn token_from_authorization<V: AsRef<[u8]>>(values: &[V]) -> Result<Option<&str>, Refusal> {
    let value = match values {
        [] => return Ok(None),
        [value] => trim_whitespace(value.as_ref()),
        _ => return Err(Refusal::Malformed),
    };
    let scheme_end = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
    if !value[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = std::str::from_utf8(trim_whitespace(&value[scheme_end..]))
        .map_err(|_| Refusal::Malformed)?;
    if !well_formed(token) {
        return Err(Refusal::Malformed);
    }
    Ok(Some(token))
}

/// The one token of an upgrade request, from its query string and its raw
/// `Sec-WebSocket-Protocol` and `Authorization` header values (as
/// `http::upgrade_headers::UpgradeHeaders` keeps them, or borrowed slices). `Ok(None)` when
/// it carries none; `Malformed` when it carries more than one, or one of the wrong shape.
pub fn find_credential<'a, V: AsRef<[u8]>>(
    query: &'a str,
    subprotocol_values: &'a [V],
    authorization_values: &'a [V],
) -> Result<Option<Credential<'a>>, Refusal> {
    let found = [
        (token_from_query(query)?, TokenSource::Query),
        (
            token_from_subprotocols(subprotocol_values)?,
            TokenSource::Subprotocol,
        ),
        (
            token_from_authorization(authorization_values)?,
            TokenSource::Authorization,
        ),
    ];
    let mut credential = None;
    for (token, source) in found {
        let Some(token) = token else { continue };
        if credential.is_some() {
            return Err(Refusal::Malformed);
        }
        credential = Some(Credential { token, source });
    }
    Ok(credential)
}
