//! A connection's token check (issue 11): the upgrade's admission under `--auth`, before the
//! 101; what a connection may subscribe and publish to afterwards; its close 4003 at the
//! token's `exp` (its wheel deadline is clamped to it) and the JSON `refresh` that moves it.
//!
//! Invariants:
//! - With `--auth off` nothing changes: no token is read, the session comes from the query
//!   and `--client-publish` decides publishing, as before.
//! - With auth on the session (and tab) come only from a verified token's `sub` (and `tab`);
//!   the query's `session`/`tab` are dropped, so they can never displace a holder. An
//!   anonymous connection has no session and never publishes.
//! - A refusal is answered before the 101 with its status and `WWW-Authenticate`, counted
//!   by its label and logged through the shard's `LogBudget`; the log never holds a token.
//! - With auth on, `Core::access` holds the `Access` of each live connection by slab key
//!   (its grant or the anonymous scope), removed when the slot is freed (`maybe_release`);
//!   a connection without an entry may subscribe and publish nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::auth::keys::log_kid;
use crate::auth::{admit, find_credential, Access, AuthMode, Refusal, SUBPROTOCOL};
use crate::conn::end::End;
use crate::conn::{self, State};
use crate::http::handshake::{HandshakeError, TokenRefusal, Upgrade};
use crate::json_proto::ErrorCode;
use crate::route::{self, Route};
use crate::shard::{Core, TICK_MS};

/// Each live connection's `Access` by slab key, with auth on (`Core::access`). A vector by
/// key rather than a hash map: every connection has an entry once auth is on, slab keys are
/// dense, and an entry is 16 bytes here where a map's slot with its load factor took about
/// 50 at a million.
#[derive(Default)]
pub(crate) struct AccessByKey {
    by_key: Vec<Option<Access>>,
    count: usize,
}

impl AccessByKey {
    /// Connection `key`'s access, if it has one.
    pub(crate) fn get(&self, key: &usize) -> Option<&Access> {
        self.by_key.get(*key).and_then(Option::as_ref)
    }

    /// Sets connection `key`'s access.
    pub(crate) fn insert(&mut self, key: usize, access: Access) {
        if key >= self.by_key.len() {
            self.by_key.resize_with(key + 1, || None);
        }
        if self.by_key[key].replace(access).is_none() {
            self.count += 1;
        }
    }

    /// Forgets connection `key`'s access (its slot was freed).
    pub(crate) fn remove(&mut self, key: &usize) {
        if let Some(slot) = self.by_key.get_mut(*key) {
            if slot.take().is_some() {
                self.count -= 1;
            }
        }
    }

    /// Whether no connection has an entry (always so with auth off).
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Seconds since the Unix epoch, for token times.
fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The handshake's plain-data form of a token refusal.
pub(crate) fn handshake_error(refusal: Refusal) -> HandshakeError {
    HandshakeError::Token(TokenRefusal {
        index: refusal.slot() as u8,
        status: refusal.status(),
        message: refusal.message(),
        challenge: refusal.www_authenticate(),
    })
}

/// Routes an upgrade target. With auth on the query's `session` and `tab` are left out
/// before routing: the session comes from the token, and a client must not be refused (or
/// bound) for parameters the node ignores.
pub(crate) fn route_upgrade(
    mode: AuthMode,
    target: &str,
    echo_path: &str,
    subscriptions_max: usize,
) -> Result<Route, HandshakeError> {
    let Some((path, query)) = target.split_once('?').filter(|_| mode != AuthMode::Off) else {
        return route::route(target, echo_path, subscriptions_max);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            key != "session" && key != "tab"
        })
        .collect();
    route::route(
        &format!("{path}?{}", kept.join("&")),
        echo_path,
        subscriptions_max,
    )
}

/// The (session, tab) binding of a route that can carry one (raw and JSON mode).
fn route_session(route: &mut Route) -> Option<&mut Option<(String, String)>> {
    match route {
        Route::Channel { session, .. } | Route::Json { session, .. } => Some(session),
        Route::Echo => None,
    }
}

impl Core {
    /// Admits an accepted upgrade under `--auth`, or refuses it (answered, counted, logged,
    /// and the connection ended) and returns false. On admission the upgrade is adjusted:
    /// the 101 echoes `ringpush.v1` for a token sent as a subprotocol, and the route's
    /// session is the token's (or none), never the query's.
    pub(crate) fn admit_upgrade(&mut self, key: usize, upgrade: &mut Upgrade<Route>) -> bool {
        let auth = &self.shared.auth;
        if auth.mode == AuthMode::Off {
            // No token is looked at, not even to find one: a `?token=` or `bearer.` offer
            // that would be malformed under auth changes nothing with it off.
            return true;
        }
        let query = upgrade.path.split_once('?').map_or("", |(_, query)| query);
        let channels: Vec<&str> = match &upgrade.route {
            Route::Channel { channel, .. } => vec![channel.as_str()],
            Route::Json { channels, .. } => channels.iter().map(|channel| &**channel).collect(),
            Route::Echo => Vec::new(),
        };
        let headers = &upgrade.headers;
        let scopes = &mut self.scopes;
        // The refused token's key id, for the log line (never the token).
        let mut kid = None;
        let decided = find_credential(query, &headers.subprotocols, &headers.authorization)
            .and_then(|credential| {
                let echo = credential.and_then(|credential| credential.echo());
                let verify = |token: &str| {
                    let verdict = auth.keys.verify(token, unix_now_s(), scopes);
                    if verdict.is_err() {
                        kid = log_kid(token);
                    }
                    verdict
                };
                let access = admit(auth.mode, &auth.anonymous, credential, verify, &channels)?;
                Ok((access, echo))
            });
        let (access, echo) = match decided {
            // Connections presenting equal tokens share one grant.
            Ok((Access::Token(grant), echo)) => {
                (Access::Token(self.grants.intern_arc(grant)), echo)
            }
            Ok(decided) => decided,
            Err(refusal) => {
                self.refuse_token(key, refusal, kid.as_deref());
                return false;
            }
        };
        if let Some(echo) = echo {
            upgrade.subprotocol = Some(SUBPROTOCOL.to_owned());
            debug_assert_eq!(echo, SUBPROTOCOL);
        }
        match &access {
            Access::Open => return true,
            Access::Anonymous(_) => {
                if let Some(session) = route_session(&mut upgrade.route) {
                    *session = None;
                }
            }
            Access::Token(grant) => {
                if let Some(session) = route_session(&mut upgrade.route) {
                    *session = Some(self.token_session(key, grant));
                }
            }
        }
        self.access.insert(key, access);
        true
    }

    /// The (session, tab) a token binds connection `key` to: its `sub`, and its `tab`
    /// claim or, without one, a tab of its own, so same-session connections of one user do
    /// not replace each other and no query can name a tab to displace.
    fn token_session(&self, key: usize, grant: &crate::auth::Grant) -> (String, String) {
        let tab = match &grant.tab {
            Some(tab) => tab.to_string(),
            None => format!("~{}.{key}.{}", self.index, self.conns[key].gen),
        };
        (grant.session.to_string(), tab)
    }

    /// Answers a token refusal before the upgrade: its status and challenge, counted by its
    /// label, logged within the shard's token log budget.
    fn refuse_token(&mut self, key: usize, refusal: Refusal, kid: Option<&str>) {
        let err = handshake_error(refusal);
        self.counters.refused[err.slot()] += 1;
        if let Some(suppressed) = self.token_log.admit(unix_now_s() as u32) {
            crate::elog!(
                "ringpush shard={} event=handshake_refused status={} reason={} kid={} \
                 suppressed={suppressed}",
                self.index,
                refusal.status(),
                refusal.label(),
                kid.unwrap_or("none")
            );
        }
        let mut response = Vec::with_capacity(256);
        err.write_refusal(&mut response);
        self.push_frame(key, Bytes::from(response));
        self.end(key, End::HandshakeRefused);
    }

    /// Whether connection `key` holds a token whose `exp` has passed.
    pub(crate) fn token_expired(&self, key: usize) -> bool {
        match self.access.get(&key) {
            Some(Access::Token(grant)) => grant.expires_at_s <= unix_now_s(),
            _ => false,
        }
    }

    /// `at`, or the tick of the connection's token expiry if that comes first, so the one
    /// deadline a connection keeps also fires at its `exp` (then `token_expired` decides).
    /// A connection that is closing keeps its close deadline.
    pub(crate) fn clamp_to_token_expiry(&self, key: usize, at: u32) -> u32 {
        if self.access.is_empty() {
            return at;
        }
        let c = &self.conns[key];
        if c.state != State::Open || c.has(conn::CLOSE_SENT) {
            return at;
        }
        let Some(Access::Token(grant)) = self.access.get(&key) else {
            return at;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let left_ms = (grant.expires_at_s * 1000).saturating_sub(now_ms);
        let left_ticks = left_ms.div_ceil(TICK_MS).min(u64::from(u32::MAX / 4)) as u32;
        at.min(self.wheel.now().saturating_add(left_ticks.max(1)))
    }

    /// JSON `{"op":"refresh","id":N,"token":"…"}`: a fresh token for the same `sub` that
    /// still allows every subscribed channel replaces the grant (`refreshed` with its
    /// `exp`); anything else is an error and the old expiry stands.
    pub(crate) fn json_refresh(&mut self, key: usize, id: u64, token: &str) {
        if self.shared.auth.mode == AuthMode::Off {
            self.json_error(Some(id), ErrorCode::BadRequest, "unsupported op");
            return;
        }
        let auth = &self.shared.auth;
        let fresh = auth.keys.verify(token, unix_now_s(), &mut self.scopes);
        let refreshed = match (self.access.get(&key), fresh) {
            (Some(Access::Token(current)), Ok(fresh)) => {
                let subscribed: Vec<&str> = self
                    .json_conns
                    .get(&key)
                    .map(|j| {
                        j.subs
                            .iter()
                            .map(|sub| self.channels.name(sub.channel))
                            .collect()
                    })
                    .unwrap_or_default();
                crate::auth::refresh(current, fresh, subscribed)
            }
            // An anonymous connection has no session a token could continue.
            (_, Ok(_)) => Err(Refusal::SessionMismatch),
            (_, Err(refusal)) => Err(refusal),
        };
        match refreshed {
            Ok(grant) => {
                let exp = grant.expires_at_s;
                let grant = self.grants.intern(grant);
                self.access.insert(key, Access::Token(grant));
                self.json_answer(|out| {
                    let answer = format!(r#"{{"op":"refreshed","id":{id},"exp":{exp}}}"#);
                    out.extend_from_slice(answer.as_bytes());
                });
            }
            Err(refusal) => {
                let code = if refusal.status() == 403 {
                    ErrorCode::Forbidden
                } else {
                    ErrorCode::Unauthorized
                };
                self.json_error(Some(id), code, refusal.label());
            }
        }
    }

    /// Whether the raw-mode connection `key` may publish what it sends to its channel:
    /// `--client-publish` with auth off; with auth on only a token's `publish` claim.
    pub(crate) fn client_may_publish(&self, key: usize) -> bool {
        let sub = self.conns[key].sub;
        if self.shared.auth.mode == AuthMode::Off {
            return self.cfg.client_publish;
        }
        sub.is_some() && self.may_publish(key, self.channels.name(sub.channel))
    }

    /// Whether connection `key` may publish to `channel`: `--client-publish` with auth off,
    /// else its access (a token's `publish` claim; never anonymously).
    pub(crate) fn may_publish(&self, key: usize, channel: &str) -> bool {
        if self.shared.auth.mode == AuthMode::Off {
            return self.cfg.client_publish;
        }
        self.access
            .get(&key)
            .is_some_and(|access| access.may_publish(channel, self.cfg.client_publish))
    }

    /// Whether connection `key` may subscribe to `channel` (JSON `subscribe`): always with
    /// auth off, else within its token's `channels` claim or `--anonymous-channels`.
    pub(crate) fn may_subscribe(&self, key: usize, channel: &str) -> bool {
        self.shared.auth.mode == AuthMode::Off
            || self
                .access
                .get(&key)
                .is_some_and(|access| access.may_subscribe(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::{handshake_error, route_upgrade};
    use crate::auth::refusal::ALL_LABELS;
    use crate::auth::AuthMode;
    use crate::auth::Refusal;
    use crate::http::handshake::{ADMISSION_REASONS_START, ALL_REASONS, TOKEN_REASONS_START};
    use crate::route::Route;

    #[test]
    fn with_auth_on_the_query_session_and_tab_are_ignored_by_the_router() {
        let open = route_upgrade(AuthMode::Off, "/ws/news?tab=t1", "/echo", 64);
        assert!(
            open.is_err(),
            "a tab without a session is still refused with auth off"
        );
        let target = "/ws/news?session=alice&tab=t1&token=x";
        assert_eq!(
            route_upgrade(AuthMode::Required, target, "/echo", 64),
            Ok(Route::Channel {
                channel: "news".into(),
                session: None
            })
        );
        assert_eq!(
            route_upgrade(AuthMode::Off, target, "/echo", 64),
            Ok(Route::Channel {
                channel: "news".into(),
                session: Some(("alice".into(), "t1".into()))
            })
        );
    }

    #[test]
    fn a_token_refusal_keeps_its_label_status_and_challenge_in_the_handshake() {
        assert_eq!(
            &ALL_REASONS[TOKEN_REASONS_START..ADMISSION_REASONS_START],
            ALL_LABELS
        );
        let all = [
            Refusal::Missing,
            Refusal::Malformed,
            Refusal::WrongAlgorithm,
            Refusal::UnknownKey,
            Refusal::BadSignature,
            Refusal::Expired,
            Refusal::NotYetValid,
            Refusal::ChannelNotAllowed,
            Refusal::SessionMismatch,
        ];
        assert_eq!(all.len(), Refusal::COUNT);
        for refusal in all {
            let err = handshake_error(refusal);
            assert_eq!(err.reason(), refusal.label());
            assert_eq!(err.status(), refusal.status());
            let mut response = Vec::new();
            err.write_refusal(&mut response);
            let response = String::from_utf8(response).unwrap();
            let challenge = format!("WWW-Authenticate: {}\r\n", refusal.www_authenticate());
            assert!(response.contains(&challenge), "{response}");
        }
    }
}
