//! Routing of upgrade requests: the one place that maps a request target to what a
//! connection does. `/echo` (or `--echo-path`) echoes; `/ws/<channel>` subscribes, with an
//! optional `?session=<id>&tab=<id>` binding.

use crate::http::handshake::HandshakeError;

/// Channel names, session ids and tab ids share one rule, `[A-Za-z0-9_.:-]{1,128}`, with
/// the admin API (`/publish/<channel>`, `/send/<session>`).
pub use crate::http::admin_request::{valid_name, NAME_BYTES_MAX};

/// What an upgraded connection does with the data messages it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Echo every data message back with its opcode.
    Echo,
    /// Subscribed to `channel`, optionally bound to a (session, tab).
    Channel {
        /// The channel name.
        channel: String,
        /// `(session, tab)` from the query, if both were given.
        session: Option<(String, String)>,
    },
}

/// The kind of route a connection stores in its `route` byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `/echo`.
    Echo = 0,
    /// `/ws/<channel>`.
    Channel = 1,
}

impl RouteKind {
    /// The kind stored in a connection's `route` byte.
    pub fn from_u8(value: u8) -> RouteKind {
        match value {
            1 => RouteKind::Channel,
            _ => RouteKind::Echo,
        }
    }
}

/// Maps a request target (path and optional query) to a route. Unknown paths get 404;
/// invalid channel or session names get 400 before the upgrade.
pub fn route(target: &str, echo_path: &str) -> Result<Route, HandshakeError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == echo_path {
        return Ok(Route::Echo);
    }
    let Some(channel) = path.strip_prefix("/ws/") else {
        return Err(HandshakeError::NotFound);
    };
    if !valid_name(channel) {
        return Err(HandshakeError::BadRequest("invalid channel name"));
    }
    let (mut session, mut tab) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "session" => &mut session,
            "tab" => &mut tab,
            _ => continue,
        };
        if !valid_name(value) {
            return Err(HandshakeError::BadRequest("invalid session or tab id"));
        }
        if slot.replace(value.to_string()).is_some() {
            return Err(HandshakeError::BadRequest("repeated session or tab"));
        }
    }
    let session = match (session, tab) {
        (Some(s), Some(t)) => Some((s, t)),
        // A session without a tab is one tab: the default one.
        (Some(s), None) => Some((s, "default".to_string())),
        (None, Some(_)) => return Err(HandshakeError::BadRequest("tab without session")),
        (None, None) => None,
    };
    Ok(Route::Channel {
        channel: channel.to_string(),
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_path_with_or_without_query() {
        assert_eq!(route("/echo", "/echo"), Ok(Route::Echo));
        assert_eq!(route("/echo?x=1", "/echo"), Ok(Route::Echo));
        assert_eq!(route("/", "/"), Ok(Route::Echo));
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(route("/echo/more", "/echo"), Err(HandshakeError::NotFound));
        assert_eq!(route("/", "/echo"), Err(HandshakeError::NotFound));
        assert_eq!(route("/wsx/a", "/echo"), Err(HandshakeError::NotFound));
    }

    #[test]
    fn channels_and_sessions() {
        assert_eq!(
            route("/ws/news.eu:1-x_y", "/echo"),
            Ok(Route::Channel {
                channel: "news.eu:1-x_y".into(),
                session: None
            })
        );
        assert_eq!(
            route("/ws/c?session=u1&tab=t2&other=ignored", "/echo"),
            Ok(Route::Channel {
                channel: "c".into(),
                session: Some(("u1".into(), "t2".into()))
            })
        );
        assert_eq!(
            route("/ws/c?session=u1", "/echo"),
            Ok(Route::Channel {
                channel: "c".into(),
                session: Some(("u1".into(), "default".into()))
            })
        );
    }

    #[test]
    fn bad_names_are_400() {
        for target in [
            "/ws/",
            "/ws/a b",
            "/ws/a/b",
            "/ws/%41",
            "/ws/ünï",
            "/ws/c?session=a/b",
            "/ws/c?tab=x",
        ] {
            assert!(
                matches!(route(target, "/echo"), Err(HandshakeError::BadRequest(_))),
                "{target}"
            );
        }
        let long = format!("/ws/{}", "a".repeat(129));
        assert!(matches!(
            route(&long, "/echo"),
            Err(HandshakeError::BadRequest(_))
        ));
        let max = format!("/ws/{}", "a".repeat(128));
        assert!(route(&max, "/echo").is_ok());
    }
}
