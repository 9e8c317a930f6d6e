//! ringpush: a dedicated WebSocket push node on io_uring.
//!
//! The library holds the engine (reactor, ring boundary, codec, handshake) so that the
//! `ringpush` binary, the benches and the load generator share one implementation.

pub mod ws;
