//! The drain spread (`--drain-spread`): instead of closing every open connection at the
//! drain's first tick, a client shard closes them in an even trickle over the window, each
//! with 4002 "reconnect elsewhere", so the clients reconnect to the other nodes a few at a
//! time rather than all at once (no reconnect storm on the nodes that stay).
//!
//! The shard takes the list of its open connections when the drain starts (nothing new is
//! admitted during a drain) and, at each tick, closes as many as make its share so far:
//! after `k` of the window's `n` ticks, `total * k / n` of them. A tick that comes late (the
//! wheel follows the wall clock) closes the ones it owes at once, so the spread never ends
//! later than its window; a connection that ended on its own meanwhile is passed over.
//!
//! Invariants:
//! - Every connection open when the spread starts is closed 4002 by the window's last
//!   tick, unless it ended before its turn; none is closed twice (entries carry the
//!   generation, and only an `Open` connection is closed).
//! - `Counters::drain_left` is the number of entries not yet taken from the list.
//! - Without `--drain-spread` (0) nothing here runs: the drain closes everything 1001 at once.

use std::time::Instant;

use crate::conn::end::End;
use crate::conn::State;
use crate::ring::Owner;
use crate::shard::Core;

/// The state of one shard's spread; empty (and idle) unless a spread drain is under way.
#[derive(Default)]
pub(crate) struct Spread {
    /// The open connections at the drain's start still to be closed, the next one last.
    queue: Vec<Owner>,
    /// How many the list held at the start.
    total: usize,
    /// The tick the spread started on.
    start_tick: u32,
    /// The window in ticks; 0 while no spread runs.
    window_ticks: u32,
    /// When the spread started, for the end's log line.
    started_at: Option<Instant>,
}

/// How many of `total` connections are due after `elapsed_ticks` ticks of a window of
/// `window_ticks` (at least 1): an even share per tick, all of them on the last tick.
pub(crate) fn due_by(total: usize, elapsed_ticks: u32, window_ticks: u32) -> usize {
    let window = u64::from(window_ticks.max(1));
    let step = (u64::from(elapsed_ticks) + 1).min(window);
    (total as u64 * step / window) as usize
}

impl Core {
    /// Starts the spread over `window_ticks` ticks with the shard's open connections.
    pub(crate) fn spread_start(&mut self, window_ticks: u32) {
        let now = self.wheel.now();
        let mut queue: Vec<Owner> = self
            .conns
            .keys()
            .into_iter()
            .filter(|&key| self.conns[key].state == State::Open)
            .map(|key| self.owner(key))
            .collect();
        // The closes are taken from the end: reverse, so the oldest slots go first.
        queue.reverse();
        let total = queue.len();
        self.spread = Spread {
            queue,
            total,
            start_tick: now,
            window_ticks: window_ticks.max(1),
            started_at: Some(Instant::now()),
        };
        self.counters.drain_left = total as u64;
        self.log(format_args!(
            "event=drain_spread_start connections={total} spread_ms={}",
            self.cfg.drain_spread.as_millis()
        ));
        self.spread_step();
    }

    /// One tick of the spread: closes this tick's share, and logs the end once the list
    /// is empty.
    pub(crate) fn spread_step(&mut self) {
        let Some(started_at) = self.spread.started_at else {
            return;
        };
        let s = &self.spread;
        let elapsed = self.wheel.now().saturating_sub(s.start_tick);
        let due = due_by(s.total, elapsed, s.window_ticks);
        while self.spread.total - self.spread.queue.len() < due {
            let Some(owner) = self.spread.queue.pop() else {
                break;
            };
            if self.live(owner) && self.conns[owner.key as usize].state == State::Open {
                self.end(owner.key as usize, End::DrainSpread);
            }
        }
        self.counters.drain_left = self.spread.queue.len() as u64;
        if self.spread.queue.is_empty() {
            let total = self.spread.total;
            self.spread.started_at = None;
            self.log(format_args!(
                "event=drain_spread_end connections={total} elapsed_ms={}",
                started_at.elapsed().as_millis()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::due_by;

    #[test]
    fn the_share_grows_evenly_and_reaches_everyone_on_the_last_tick() {
        // 200 connections over 40 ticks: 5 a tick, all 200 by the 40th tick.
        assert_eq!(due_by(200, 0, 40), 5);
        assert_eq!(due_by(200, 19, 40), 100);
        assert_eq!(due_by(200, 39, 40), 200);
        // A late tick owes everything up to its own share, never more than all.
        assert_eq!(due_by(200, 500, 40), 200);
        // Fewer connections than ticks: at most one a tick, the last on the last tick.
        let per_tick: Vec<usize> = (0..4).map(|t| due_by(2, t, 4)).collect();
        assert_eq!(per_tick, [0, 1, 1, 2]);
        assert_eq!(due_by(0, 0, 40), 0);
    }
}
