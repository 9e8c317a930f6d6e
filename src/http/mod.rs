//! HTTP/1.1: the WebSocket upgrade handshake (server and client side) and the response writer
//! it shares with the admin API.
//!
//! Everything under `http/` is sans-IO: functions read from byte slices and append to buffers the
//! caller owns, and none of them touches a file descriptor.

pub mod admin_error;
pub mod admin_request;
pub mod admin_scope;
pub mod client;
pub mod demo;
pub mod handshake;
mod headers;
pub use headers::trim_whitespace;
pub mod proxy;
pub mod response;
pub mod upgrade_headers;
