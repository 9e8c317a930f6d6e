//! The demo page on the admin listener (`GET /demo`, off with `--no-demo`): one static page,
//! its script and the JavaScript client library it imports as a user would
//! (`clients/js/`), all embedded in the binary.
//!
//! Invariants:
//! - The files hold no secret (never an admin token), so they are served without the admin
//!   token: a browser following a link cannot send one. What the page does, it does over
//!   the WebSocket listener with a connection token its user types in, if the node wants one.
//! - The only thing filled in at serve time is the WebSocket listener's port, a number.
//! - Nothing here touches a file descriptor: answers are appended to a caller-owned `Vec`.

use crate::http::response::write_response;

/// Whether the admin listener serves the demo, and where the page's WebSocket points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demo {
    /// `--no-demo`: `/demo` is an unknown path (404) like any other.
    Off,
    /// `/demo` is served; the page connects to `ws_port` on the host it was loaded from.
    Served {
        /// The port of `--listen`.
        ws_port: u16,
    },
}

/// One of the demo's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoAsset {
    /// `/demo`: the page.
    Page,
    /// `/demo/demo.js`: the page's script.
    Script,
    /// `/demo/ringpush.js`: the client library, byte for byte as in `clients/js/`.
    Client,
}

/// The page; `WS_PORT_MARK` stands for the WebSocket listener's port.
const PAGE: &str = include_str!("../../clients/js/demo/index.html");

/// The page's script.
const SCRIPT: &str = include_str!("../../clients/js/demo/demo.js");

/// The client library.
const CLIENT: &str = include_str!("../../clients/js/ringpush.js");

/// The placeholder in `PAGE` replaced by the `--listen` port.
const WS_PORT_MARK: &str = "__RINGPUSH_WS_PORT__";

/// The page may load scripts only from the admin listener itself, connect only to
/// WebSockets, and may not be framed (the admin origin is worth clickjacking).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                   connect-src ws: wss:; img-src 'self' data:; frame-ancestors 'none'";

/// The demo file a path names, if any (the query is already removed).
pub fn route(path: &str) -> Option<DemoAsset> {
    match path {
        "/demo" | "/demo/" => Some(DemoAsset::Page),
        "/demo/demo.js" => Some(DemoAsset::Script),
        "/demo/ringpush.js" => Some(DemoAsset::Client),
        _ => None,
    }
}

/// Appends the 200 answer for `asset` (its head only for `HEAD`).
pub fn write(dst: &mut Vec<u8>, asset: DemoAsset, ws_port: u16, head_only: bool, keep_alive: bool) {
    let (content_type, body) = match asset {
        DemoAsset::Page => (
            "text/html; charset=utf-8",
            PAGE.replace(WS_PORT_MARK, &ws_port.to_string()),
        ),
        DemoAsset::Script => ("text/javascript; charset=utf-8", SCRIPT.to_owned()),
        DemoAsset::Client => ("text/javascript; charset=utf-8", CLIENT.to_owned()),
    };
    let body = if head_only { "" } else { body.as_str() };
    let headers = [
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", CSP),
    ];
    write_response(
        dst,
        200,
        &headers,
        Some(content_type),
        body.as_bytes(),
        keep_alive,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_gets_the_listen_port_and_imports_the_served_library() {
        let mut out = Vec::new();
        write(&mut out, DemoAsset::Page, 18080, false, true);
        let text = String::from_utf8(out).expect("the page is UTF-8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content=\"18080\""), "{text}");
        assert!(!text.contains(WS_PORT_MARK));
        assert!(text.contains("src=\"/demo/demo.js\""));
        assert!(SCRIPT.contains("from \"/demo/ringpush.js\""));
    }

    #[test]
    fn only_the_three_paths_are_demo_files() {
        assert_eq!(route("/demo"), Some(DemoAsset::Page));
        assert_eq!(route("/demo/"), Some(DemoAsset::Page));
        assert_eq!(route("/demo/ringpush.js"), Some(DemoAsset::Client));
        assert_eq!(route("/demo/demo.js"), Some(DemoAsset::Script));
        assert_eq!(route("/demo/../metrics"), None);
        assert_eq!(route("/demox"), None);
    }

    #[test]
    fn head_gets_no_body() {
        let mut out = Vec::new();
        write(&mut out, DemoAsset::Client, 1, true, false);
        let text = String::from_utf8(out).expect("ASCII head");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Connection: close"));
    }
}
