//! ringpush: a dedicated WebSocket push node on io_uring.
//!
//! The library holds the engine (reactor, ring boundary, codec, handshake) so that the
//! `ringpush` binary, the benches and the load generator share one implementation.

/// Writes a line to stderr, ignoring a closed pipe: a vanished log reader must not take
/// the node down (`eprintln!` would panic). On a reactor thread the line is queued and
/// never waited for (see `log.rs`): a stalled stderr drops and counts lines instead.
#[macro_export]
macro_rules! elog {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

pub mod admin_service;
pub mod admission;
pub mod auth;
pub mod broker;
pub mod channels;
pub mod config;
pub mod conn;
pub mod fanout;
pub mod history;
pub mod http;
pub mod json_proto;
pub mod log;
pub mod metrics;
pub mod node;
pub mod reactor;
pub mod ring;
pub mod route;
pub mod shard;
pub mod stats;
pub mod timer;
pub mod ws;
