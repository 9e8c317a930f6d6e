//! Routing of upgrade requests: the one place that maps a request path to what a
//! connection does. Channels (`/ws/<channel>`) slot in here beside `/echo`.

use crate::http::handshake::HandshakeError;

/// What an upgraded connection does with the data messages it receives.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Echo every data message back with its opcode.
    Echo = 0,
}

impl Route {
    /// The route stored in a connection's `route` byte.
    pub fn from_u8(value: u8) -> Route {
        debug_assert_eq!(value, Route::Echo as u8, "only the echo route exists");
        Route::Echo
    }
}

/// Maps a request target (path and optional query) to a route; unknown paths get 404.
pub fn route(target: &str, echo_path: &str) -> Result<Route, HandshakeError> {
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    if path == echo_path {
        return Ok(Route::Echo);
    }
    Err(HandshakeError::NotFound)
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
    }
}
