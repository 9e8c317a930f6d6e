//! History reads on the publisher thread (`JobTo::History`): `GET /history/<channel>` and
//! the epoch and offset of `GET /channels/<name>` under `--broker`, read from the channel's
//! `meta` hash and `log` stream by one script (`wire::HISTORY_SCRIPT`) that changes nothing.
//!
//! Invariants:
//! - A read runs within its job's deadline, like a publish (the connection's read and write
//!   timeouts end there), and is never retried: a read is harmless to repeat, but the
//!   asker has its own deadline and answers 503 by it.
//! - The page holds what `History::read` would give for the same `since` and `limit`:
//!   the channel's position, the oldest kept offset, the number kept, at most `limit`
//!   entries after `since` in offset order, and whether more follow.

use std::time::{Duration, Instant};

use redis::{Connection, Script, Value};

use super::wire;
use super::{BrokerFault, ReadOutcome};

/// Runs the history script for `channel` by `deadline`.
pub(super) fn read(
    con: &mut Connection,
    script: &Script,
    channel: &str,
    since: u64,
    limit: usize,
    deadline: Instant,
) -> ReadOutcome {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(BrokerFault::Timeout);
    }
    let _ = con.set_read_timeout(Some(left));
    let _ = con.set_write_timeout(Some(left));
    let answer: Result<Value, redis::RedisError> = script
        .key(wire::meta_key(channel))
        .key(wire::log_key(channel))
        .arg(wire::history_since(since))
        .arg(limit)
        .invoke(con);
    match answer {
        Ok(value) => wire::parse_history(value, limit).ok_or(BrokerFault::Refused),
        Err(e) => Err(super::publisher::fault_of(&e)),
    }
}
