//! Routing of upgrade requests: the one place that maps a request target to what a
//! connection does. `/echo` (or `--echo-path`) echoes; `/ws/<channel>` subscribes, with an
//! optional `?session=<id>&tab=<id>` binding; `/ws?format=json[&channel=…]` speaks the JSON
//! mode (PROTOCOL.md), subscribed at once to the query's channels, with the same optional
//! binding.

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
    /// JSON mode, subscribed at once to `channels` (in query order).
    Json {
        /// The query's `channel` parameters, valid and distinct.
        channels: Vec<Box<str>>,
        /// `(session, tab)` from the query, as for [`Route::Channel`].
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
    /// `/ws?format=json`.
    Json = 2,
}

impl RouteKind {
    /// The kind stored in a connection's `route` byte.
    pub fn from_u8(value: u8) -> RouteKind {
        match value {
            1 => RouteKind::Channel,
            2 => RouteKind::Json,
            _ => RouteKind::Echo,
        }
    }
}

/// Maps a request target (path and optional query) to a route. Unknown paths get 404;
/// invalid channel or session names get 400 before the upgrade. `/ws` without a `format`
/// parameter is 404; with a bad one (or more channels than `subscriptions_max`) 400.
pub fn route(
    target: &str,
    echo_path: &str,
    subscriptions_max: usize,
) -> Result<Route, HandshakeError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == echo_path {
        return Ok(Route::Echo);
    }
    if path == "/ws" {
        return match crate::json_proto::parse_query(query, subscriptions_max) {
            Ok(Some(channels)) => Ok(Route::Json {
                channels,
                session: session_of(query)?,
            }),
            Ok(None) => Err(HandshakeError::NotFound),
            Err(e) => Err(HandshakeError::BadRequest(e.reason())),
        };
    }
    let Some(channel) = path.strip_prefix("/ws/") else {
        return Err(HandshakeError::NotFound);
    };
    if !valid_name(channel) {
        return Err(HandshakeError::BadRequest("invalid channel name"));
    }
    Ok(Route::Channel {
        channel: channel.to_string(),
        session: session_of(query)?,
    })
}

/// The query's `session` and `tab`: both, a session alone (its default tab), or neither.
fn session_of(query: &str) -> Result<Option<(String, String)>, HandshakeError> {
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
    match (session, tab) {
        (Some(s), Some(t)) => Ok(Some((s, t))),
        // A session without a tab is one tab: the default one.
        (Some(s), None) => Ok(Some((s, "default".to_string()))),
        (None, Some(_)) => Err(HandshakeError::BadRequest("tab without session")),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_path_with_or_without_query() {
        assert_eq!(route("/echo", "/echo", 64), Ok(Route::Echo));
        assert_eq!(route("/echo?x=1", "/echo", 64), Ok(Route::Echo));
        assert_eq!(route("/", "/", 64), Ok(Route::Echo));
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(
            route("/echo/more", "/echo", 64),
            Err(HandshakeError::NotFound)
        );
        assert_eq!(route("/", "/echo", 64), Err(HandshakeError::NotFound));
        assert_eq!(route("/wsx/a", "/echo", 64), Err(HandshakeError::NotFound));
    }

    #[test]
    fn channels_and_sessions() {
        assert_eq!(
            route("/ws/news.eu:1-x_y", "/echo", 64),
            Ok(Route::Channel {
                channel: "news.eu:1-x_y".into(),
                session: None
            })
        );
        assert_eq!(
            route("/ws/c?session=u1&tab=t2&other=ignored", "/echo", 64),
            Ok(Route::Channel {
                channel: "c".into(),
                session: Some(("u1".into(), "t2".into()))
            })
        );
        assert_eq!(
            route("/ws/c?session=u1", "/echo", 64),
            Ok(Route::Channel {
                channel: "c".into(),
                session: Some(("u1".into(), "default".into()))
            })
        );
    }

    #[test]
    fn json_mode_reads_its_query() {
        assert_eq!(
            route("/ws?format=json&channel=a&channel=b", "/echo", 64),
            Ok(Route::Json {
                channels: vec!["a".into(), "b".into()],
                session: None,
            })
        );
        assert_eq!(
            route("/ws?format=json&session=u1&tab=t2&channel=a", "/echo", 64),
            Ok(Route::Json {
                channels: vec!["a".into()],
                session: Some(("u1".into(), "t2".into())),
            })
        );
        assert_eq!(
            route("/ws?format=json&tab=t2", "/echo", 64),
            Err(HandshakeError::BadRequest("tab without session"))
        );
        assert_eq!(route("/ws", "/echo", 64), Err(HandshakeError::NotFound));
        assert_eq!(
            route("/ws?format=xml", "/echo", 64),
            Err(HandshakeError::BadRequest("unknown format"))
        );
        assert_eq!(
            route("/ws?format=json&channel=a&channel=b", "/echo", 1),
            Err(HandshakeError::BadRequest("too many channels"))
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
                matches!(
                    route(target, "/echo", 64),
                    Err(HandshakeError::BadRequest(_))
                ),
                "{target}"
            );
        }
        let long = format!("/ws/{}", "a".repeat(129));
        assert!(matches!(
            route(&long, "/echo", 64),
            Err(HandshakeError::BadRequest(_))
        ));
        let max = format!("/ws/{}", "a".repeat(128));
        assert!(route(&max, "/echo", 64).is_ok());
    }
}
