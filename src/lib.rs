//! ringpush: a dedicated WebSocket push node on io_uring.
//!
//! The library holds the engine (reactor, ring boundary, codec, handshake) so that the
//! `ringpush` binary, the benches and the load generator share one implementation.

/// Writes a line to stderr, ignoring a closed pipe: a vanished log reader must not take
/// the node down (`eprintln!` would panic).
#[macro_export]
macro_rules! elog {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod admin;
pub mod config;
pub mod conn;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod node;
pub mod reactor;
pub mod ring;
pub mod route;
pub mod shard;
pub mod stats;
pub mod timer;
pub mod ws;
