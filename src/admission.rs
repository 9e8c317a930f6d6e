//! Admission control: how many connections one client address may hold and open
//! ([`AddressTable`]: `--max-conns-per-ip`, `--connect-rate-per-ip`), and how many control
//! frames and data messages one connection may send ([`ConnRate`]: `--max-control-rate`,
//! `--max-message-rate`).
//!
//! The address table is node-wide: one `Arc<AddressTable>` shared by every shard, its map
//! split into [`STRIPES`] independently locked stripes. Each shard accepts on its own
//! SO_REUSEPORT listener and the kernel spreads one client's connections over the shards by
//! hashing its ports, so a per-shard budget (cap / shards) would refuse a client under its
//! cap whenever its connections landed unevenly, and admit N × budget when the budget is
//! rounded up. Only a shared count answers the cap exactly. A stripe is locked for one hash
//! lookup at accept and at close, never across I/O, so shards meet on it only when two
//! addresses of one stripe connect in the same few nanoseconds.
//!
//! Invariants:
//! - Memory is bounded: the table never holds more than `addresses_max` addresses. An address
//!   with live connections is never forgotten (its count must stay right); one without any is
//!   forgotten once its bucket has refilled, or earlier when its stripe is full. A new address
//!   that finds its stripe full of live addresses is refused `NodeFull` (503).
//! - IPv6 clients are keyed by their /64: one host usually holds a whole /64, so per-address
//!   keys would let it take 2^64 budgets.
//! - Every `Admit` is matched by exactly one `release` of the same address; the table does
//!   not know connections, only counts, so the caller keeps that pairing.
//! - Time is a parameter (`now_ms`, any monotonic millisecond clock), never read here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// How many independently locked parts the address table has.
pub const STRIPES: usize = 64;

/// The default cap on remembered addresses (`addresses_max`): a bucket is 33 bytes and the
/// maps keep their slack, ~66 bytes per address, so a full table is ~66 MiB
/// (`examples/admission_cost.rs`), and it only fills with that many distinct live clients.
pub const ADDRESSES_MAX_DEFAULT: usize = 1 << 20;

/// The `Retry-After` of a refusal for the per-address cap, in seconds: the address must wait
/// for one of its own connections to end, which the node cannot predict.
pub const CAP_RETRY_AFTER_S: u32 = 5;

/// A token, in the bucket's fixed-point unit.
const MILLI: u64 = 1000;

/// `--max-conns-per-ip` and `--connect-rate-per-ip`; 0 turns a limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// The most live connections one address may hold; 0 = no cap.
    pub conns_per_ip_max: u32,
    /// New connections per second one address may open, on average; 0 = no rate limit.
    pub connect_rate_per_s: u32,
    /// How many connections an address may open at once before the rate applies (the
    /// bucket's depth); 0 means the rate itself (one second's worth).
    pub connect_burst: u32,
    /// The most addresses remembered at once.
    pub addresses_max: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            conns_per_ip_max: 0,
            connect_rate_per_s: 0,
            connect_burst: 0,
            addresses_max: ADDRESSES_MAX_DEFAULT,
        }
    }
}

impl AdmissionConfig {
    /// Whether any per-address limit is on; when none is, the table is never touched.
    pub fn enabled(&self) -> bool {
        self.conns_per_ip_max > 0 || self.connect_rate_per_s > 0
    }
}

/// The answer to a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Counted as live; call [`AddressTable::release`] when it ends.
    Admit,
    /// Over the address's cap or rate: 429 with `Retry-After: retry_after_s`.
    TooMany {
        /// Which limit refused it.
        limit: PerIpLimit,
        /// Seconds after which a retry can succeed (at least 1).
        retry_after_s: u32,
    },
    /// The table cannot remember another address: 503.
    NodeFull,
}

/// The per-address limit behind a [`Decision::TooMany`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerIpLimit {
    /// `--max-conns-per-ip`.
    Conns,
    /// `--connect-rate-per-ip`.
    ConnectRate,
}

/// Every label [`Decision::label`] returns, so counters can start each at zero.
pub const ALL_LABELS: &[&str] = &[
    "too_many_per_ip",
    "connect_rate_per_ip",
    "address_table_full",
];

impl Decision {
    /// The stable metric and log label of a refusal (`reason="…"`); `None` for `Admit`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Admit => None,
            Self::TooMany {
                limit: PerIpLimit::Conns,
                ..
            } => Some(ALL_LABELS[0]),
            Self::TooMany {
                limit: PerIpLimit::ConnectRate,
                ..
            } => Some(ALL_LABELS[1]),
            Self::NodeFull => Some(ALL_LABELS[2]),
        }
    }

    /// The HTTP status of a refusal: 429 over a limit, 503 when the table is full.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::Admit => None,
            Self::TooMany { .. } => Some(429),
            Self::NodeFull => Some(503),
        }
    }
}

/// What the table knows of one address.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Connections admitted and not yet released.
    live: u32,
    /// Tokens in the connect bucket, in thousandths.
    tokens_milli: u32,
    /// When the bucket was last refilled, on the caller's clock.
    refilled_at_ms: u64,
}

/// An address as the table keys it: IPv4 as its IPv4-mapped IPv6 form, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

/// The node-wide per-address table.
#[derive(Debug)]
pub struct AddressTable {
    config: AdmissionConfig,
    stripes: Box<[Mutex<HashMap<u128, Entry>>]>,
    /// The most addresses one stripe holds.
    stripe_entries_max: usize,
}

impl AddressTable {
    /// An empty table for `config`.
    pub fn new(config: AdmissionConfig) -> AddressTable {
        AddressTable {
            config,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            stripe_entries_max: config.addresses_max.div_ceil(STRIPES).max(1),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Decides a new connection from `ip` at `now_ms`. On `Admit` the connection is counted
    /// live until `release`.
    pub fn try_admit(&self, ip: IpAddr, now_ms: u64) -> Decision {
        self.try_admit_key(address_key(ip), now_ms)
    }

    /// As [`AddressTable::try_admit`], by [`address_key`]: a caller that keeps the 16-byte
    /// key per connection (to release it) need not keep the address too.
    pub fn try_admit_key(&self, key: u128, now_ms: u64) -> Decision {
        if !self.config.enabled() {
            return Decision::Admit;
        }
        let mut stripe = self.lock(key);
        if !stripe.contains_key(&key) && stripe.len() >= self.stripe_entries_max {
            self.evict(&mut stripe, now_ms);
            if stripe.len() >= self.stripe_entries_max {
                return Decision::NodeFull;
            }
        }
        let burst_milli = self.burst_milli();
        let entry = stripe.entry(key).or_insert(Entry {
            live: 0,
            tokens_milli: burst_milli,
            refilled_at_ms: now_ms,
        });
        let cap = self.config.conns_per_ip_max;
        if cap > 0 && entry.live >= cap {
            return Decision::TooMany {
                limit: PerIpLimit::Conns,
                retry_after_s: CAP_RETRY_AFTER_S,
            };
        }
        let rate = u64::from(self.config.connect_rate_per_s);
        if rate > 0 {
            self.refill(entry, now_ms);
            if u64::from(entry.tokens_milli) < MILLI {
                let missing_milli = MILLI - u64::from(entry.tokens_milli);
                // `rate` tokens a second is `rate` thousandths a millisecond.
                let wait_ms = missing_milli.div_ceil(rate);
                let retry_after_s = wait_ms.div_ceil(1000).max(1);
                return Decision::TooMany {
                    limit: PerIpLimit::ConnectRate,
                    retry_after_s: u32::try_from(retry_after_s).unwrap_or(u32::MAX),
                };
            }
            entry.tokens_milli -= MILLI as u32;
        }
        entry.live += 1;
        Decision::Admit
    }

    /// Ends a connection admitted from `ip`.
    pub fn release(&self, ip: IpAddr) {
        self.release_key(address_key(ip));
    }

    /// As [`AddressTable::release`], by [`address_key`].
    pub fn release_key(&self, key: u128) {
        if !self.config.enabled() {
            return;
        }
        let mut stripe = self.lock(key);
        let Some(entry) = stripe.get_mut(&key) else {
            debug_assert!(false, "release of an address the table does not hold");
            return;
        };
        debug_assert!(entry.live > 0, "more releases than admits");
        entry.live = entry.live.saturating_sub(1);
        // An address with no rate to remember is forgotten at once.
        if entry.live == 0 && self.config.connect_rate_per_s == 0 {
            stripe.remove(&key);
        }
    }

    /// How many live connections the table counts for `ip`.
    pub fn live(&self, ip: IpAddr) -> u32 {
        let key = address_key(ip);
        self.lock(key).get(&key).map_or(0, |entry| entry.live)
    }

    /// How many addresses the table remembers.
    pub fn addresses(&self) -> usize {
        self.stripes.iter().map(|stripe| lock(stripe).len()).sum()
    }

    /// The heap bytes the table's maps have reserved (capacity, not length), by the
    /// hashbrown layout: one key-value slot plus one control byte per bucket.
    pub fn heap_bytes(&self) -> usize {
        let slot = size_of::<(u128, Entry)>() + 1;
        self.stripes
            .iter()
            .map(|stripe| {
                let capacity = lock(stripe).capacity();
                // hashbrown keeps buckets at a power of two, at most 7/8 full.
                let buckets = if capacity == 0 {
                    0
                } else {
                    (capacity * 8 / 7).next_power_of_two()
                };
                buckets * slot
            })
            .sum()
    }

    /// Forgets every address with no live connection whose bucket has refilled.
    pub fn sweep(&self, now_ms: u64) {
        for stripe in self.stripes.iter() {
            let mut stripe = lock(stripe);
            self.forget_idle(&mut stripe, now_ms);
        }
    }

    fn lock(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Entry>> {
        // The low bits of an IPv4 address and the high bits of a /64 vary most.
        let mixed = (key as u64) ^ ((key >> 64) as u64);
        let mixed = mixed ^ (mixed >> 29) ^ (mixed >> 47);
        lock(&self.stripes[(mixed as usize) % STRIPES])
    }

    fn burst_milli(&self) -> u32 {
        let burst = match self.config.connect_burst {
            0 => self.config.connect_rate_per_s,
            burst => burst,
        };
        let burst = u64::from(burst.max(1));
        u32::try_from(burst * MILLI).unwrap_or(u32::MAX)
    }

    fn refill(&self, entry: &mut Entry, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(entry.refilled_at_ms);
        let gained = elapsed_ms.saturating_mul(u64::from(self.config.connect_rate_per_s));
        let tokens = (u64::from(entry.tokens_milli) + gained).min(u64::from(self.burst_milli()));
        entry.tokens_milli = tokens as u32;
        entry.refilled_at_ms = now_ms;
    }

    /// Makes room in a full stripe: first the idle addresses whose bucket has refilled (they
    /// have nothing to remember), then every idle address (losing their rate history, which
    /// errs towards admitting).
    fn evict(&self, stripe: &mut HashMap<u128, Entry>, now_ms: u64) {
        self.forget_idle(stripe, now_ms);
        if stripe.len() >= self.stripe_entries_max {
            stripe.retain(|_, entry| entry.live > 0);
        }
    }

    fn forget_idle(&self, stripe: &mut HashMap<u128, Entry>, now_ms: u64) {
        let burst_milli = self.burst_milli();
        stripe.retain(|_, entry| {
            if entry.live > 0 {
                return true;
            }
            self.refill(entry, now_ms);
            entry.tokens_milli < burst_milli
        });
    }
}

/// Locks a stripe, going on through a poisoned lock: the map is updated in single steps, so a
/// panic elsewhere cannot leave it half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one frame counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Ping, pong or close (`--max-control-rate`).
    Control,
    /// A whole text or binary message (`--max-message-rate`).
    Message,
}

/// `--max-control-rate` and `--max-message-rate`, per connection per second; 0 = off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Control frames a connection may send per second.
    pub control_per_s: u16,
    /// Data messages a connection may send per second.
    pub messages_per_s: u16,
}

/// One connection's frame counts in the current second: 6 bytes, so it fits in `Conn`.
///
/// A fixed one-second window, not a bucket: a client can send up to twice a limit across a
/// window boundary, which a policy limit (close 1008 beyond it) tolerates, and it costs two
/// counters and the window's second instead of a timestamp per counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRate {
    /// The low 16 bits of the second the counts belong to.
    window_s: u16,
    control: u16,
    messages: u16,
}

const _: () = assert!(size_of::<ConnRate>() == 6);

impl ConnRate {
    /// Counts one frame of `traffic` at second `now_s` (any clock in seconds, e.g. the shard's
    /// tick / 20) and answers whether it is within `limits`. A `false` means close 1008.
    pub fn allow(&mut self, traffic: Traffic, now_s: u32, limits: &RateLimits) -> bool {
        let window_s = now_s as u16;
        if window_s != self.window_s {
            *self = ConnRate {
                window_s,
                control: 0,
                messages: 0,
            };
        }
        let (count, limit) = match traffic {
            Traffic::Control => (&mut self.control, limits.control_per_s),
            Traffic::Message => (&mut self.messages, limits.messages_per_s),
        };
        *count = count.saturating_add(1);
        limit == 0 || *count <= limit
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
