//! What an idle connection costs in a shard's own structures (issue 14): the structures the
//! node keeps per connection, built the way a shard builds them for a million idle
//! subscribed connections, each measured by the process's RSS growth (touched pages, as
//! the node's RSS counts them). Prints figures, asserts nothing:
//! `cargo run --release --example conn_cost`.
//!
//! Per idle subscribed connection: its slab entry (`Conn`), one timer-wheel entry (a `u32`
//! slab key), one `u32` in its channel's subscriber vector. A token connection adds its tab
//! in the session's entry and its `Core::access` entry (an `Arc` of a grant shared by equal
//! tokens, in a vector by slab key). With a per-address limit on, a shard also keeps a `u128` address key per slab
//! key (`Core::admitted`, see `examples/admission_cost.rs`). The kernel's socket memory is
//! not in these figures (the bench scripts report it).

use std::sync::Arc;

use ringpush::auth::{Access, Grant, Scope};
use ringpush::channels::{Channels, Tab};
use ringpush::conn::Conn;
use ringpush::reactor::Conns;
use ringpush::timer::Wheel;

/// Connections on the one shard measured.
const CONNS: usize = 1_000_000;
/// The shard's wheel size and the heartbeat interval in ticks (30 s of 50 ms ticks).
const WHEEL_SLOTS: usize = 2048;
const TICKS_PING: u32 = 600;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Runs `build`, printing what RSS grew by, per connection.
fn measure(what: &str, build: impl FnOnce()) {
    let rss = rss_bytes();
    build();
    let grown = rss_bytes() as f64 - rss as f64;
    println!(
        "  {what:<44} {:>6.1} B per connection",
        grown / CONNS as f64
    );
}

fn main() {
    println!("size_of::<Conn>() = {} B", std::mem::size_of::<Conn>());
    println!("{CONNS} idle connections on one shard:");
    let mut conns: Conns<Conn> = Conns::default();
    let mut channels = Channels::new();
    let mut wheel: Wheel<u32> = Wheel::new(WHEEL_SLOTS);
    // `Core::access` is a vector of `Option<Access>` by slab key.
    let mut access: Vec<Option<Access>> = Vec::new();
    // A fresh slab hands out keys 0, 1, 2, ...: the list is built before measuring.
    let keys: Vec<usize> = (0..CONNS).collect();
    measure("slab entries (Conn)", || {
        for &expected in &keys {
            let gen = conns.next_gen();
            assert_eq!(conns.insert(Conn::new(-1, gen, 1)), expected);
        }
    });
    measure("timer wheel (one u32 entry each)", || {
        for (i, &key) in keys.iter().enumerate() {
            // Connections arrive over a ramp, so their heartbeats spread over the ticks.
            let at = 1 + (i as u32 % TICKS_PING);
            let timer = &mut conns.get_mut(key).expect("inserted").timer;
            wheel.arm(key as u32, timer, at);
        }
    });
    measure("channel subscriber vector (one u32 each)", || {
        for &key in &keys {
            let sub = channels.subscribe(key as u32, "bench");
            conns.get_mut(key).expect("inserted").sub = sub;
        }
    });
    println!("with the same HS256 token (no `tab` claim), as scripts/bench-auth.sh:");
    let grant = Arc::new(Grant {
        session: "bench-user".into(),
        tab: None,
        expires_at_s: u64::MAX,
        scope: Arc::new(Scope::default()),
    });
    measure("session tab (generated, no string)", || {
        for (seq, &key) in keys.iter().enumerate() {
            let owner = conns.owner(key);
            let id = channels.bind_tab("bench-user", Tab::Generated(0), owner, seq as u64);
            conns.get_mut(key).expect("inserted").session = id;
        }
    });
    measure("Core::access entry (shared grant)", || {
        for _ in &keys {
            access.push(Some(Access::Token(Arc::clone(&grant))));
        }
    });
    println!(
        "(hash tables and vectors double: a figure at a count just past a doubling is up \
         to twice the one just before it)"
    );
}
