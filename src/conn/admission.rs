//! A connection's client address and frame rates (issue 11): per-address admission
//! (`--max-conns-per-ip`, `--connect-rate-per-ip`) at accept or, from a `--trusted-proxy`
//! peer, once its PROXY header or its request names the client; the release of the address
//! slot when the connection's slab slot is freed; and the per-connection control and data
//! message rates (`--max-control-rate`, `--max-message-rate`).
//!
//! Invariants:
//! - A connection holds at most one address slot (`Core::admitted[key]`), taken once and
//!   given back exactly once: in `maybe_release`, when its slab slot is freed however it
//!   ended (close, reset, timeout, refusal, abort), or in `close_everything` at shutdown.
//!   A refused connection holds none.
//! - A peer outside `--trusted-proxy` is decided at accept, before any byte is read. A
//!   trusted peer holds no slot until its PROXY header (read before the request) or its
//!   request's `X-Forwarded-For` names the client; then the client is decided, before the
//!   token is verified.
//! - A PROXY header is read only from a trusted peer; from anyone else it is refused 400.
//! - None of this is in `Conn` (at its 96-byte cap): the address slots (16 bytes) and rate
//!   windows (6 bytes) are vectors indexed by slab key, grown only when a limit is on and
//!   a connection of that key uses it; `proxied` holds trusted peers' connections only
//!   until their client is known.

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::Instant;

use crate::admission::{address_key, ConnRate, Decision, PerIpLimit};
use crate::http::handshake::HandshakeError;
use crate::http::proxy::{self, ProxyError, ProxyHeader};
use crate::http::upgrade_headers::UpgradeHeaders;
use crate::ring::sys;
use crate::shard::{Core, TICK_MS};

/// The entry of `Core::admitted` for a connection that holds no address slot. No address
/// key is all ones: an IPv6 key has its low 64 bits clear, an IPv4 one its high 80.
pub(crate) const NO_ADDRESS: u128 = u128::MAX;

/// Wheel ticks in a second: the rate windows count whole seconds of the shard's wheel.
const TICKS_PER_S: u32 = (1000 / TICK_MS) as u32;

/// What a shard knows of a trusted peer's client before deciding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProxyWait {
    /// Nothing read yet: a PROXY header may come first. The peer's address.
    Header(IpAddr),
    /// The PROXY header named the client (or kept the peer, for `LOCAL`/`UNKNOWN`).
    Named(IpAddr),
    /// No PROXY header: the request's `X-Forwarded-For` decides. The peer's address.
    Forwarded(IpAddr),
}

/// The verdict on a fresh socket's address (`Core::address_at_accept`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AtAccept {
    /// No per-address limit and no trusted proxy: nothing to hold or read.
    Unlimited,
    /// Admitted: the address slot the connection now holds.
    Admitted(u128),
    /// A trusted proxy: the client is decided once its header or request names it.
    Deferred(IpAddr),
    /// Refused before the request is read: the answer.
    Refused(HandshakeError),
}

/// Milliseconds on one clock for every shard: the address table's token buckets are
/// shared, so their refill times must come from the same origin.
fn admission_now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The handshake answer to a refusing decision; `None` for `Admit`.
fn refusal(decision: Decision) -> Option<HandshakeError> {
    match decision {
        Decision::Admit => None,
        Decision::TooMany {
            limit: PerIpLimit::Conns,
            retry_after_s,
        } => Some(HandshakeError::TooManyPerIp { retry_after_s }),
        Decision::TooMany {
            limit: PerIpLimit::ConnectRate,
            retry_after_s,
        } => Some(HandshakeError::ConnectRatePerIp { retry_after_s }),
        Decision::NodeFull => Some(HandshakeError::AddressTableFull),
    }
}

impl Core {
    /// Decides the fresh socket `fd` by its peer address, before it has a slot.
    pub(crate) fn address_at_accept(&self, fd: RawFd) -> AtAccept {
        let shared = &self.shared;
        if !shared.addresses.config().enabled() && shared.trusted_proxies.is_empty() {
            return AtAccept::Unlimited;
        }
        // A socket reset before this call has no peer; its recv ends at once and frees it.
        let Ok(peer) = sys::peer_addr(fd) else {
            return AtAccept::Unlimited;
        };
        let peer = proxy::canonical_ip(peer.ip());
        if shared.trusted_proxies.contains(peer) {
            return AtAccept::Deferred(peer);
        }
        self.decide_address(peer)
    }

    /// Asks the node-wide table about client `ip`.
    fn decide_address(&self, ip: IpAddr) -> AtAccept {
        let table = &self.shared.addresses;
        if !table.config().enabled() {
            return AtAccept::Unlimited;
        }
        let key = address_key(ip);
        match refusal(table.try_admit_key(key, admission_now_ms())) {
            None => AtAccept::Admitted(key),
            Some(err) => AtAccept::Refused(err),
        }
    }

    /// Records the accept's verdict for the connection now in slot `key`; a refusal is
    /// answered at once (the slot lingers only to send it and read the peer's EOF).
    pub(crate) fn settle_address(&mut self, key: usize, verdict: AtAccept) {
        match verdict {
            AtAccept::Unlimited => {}
            AtAccept::Admitted(address) => self.hold_address(key, address),
            AtAccept::Deferred(peer) => {
                self.proxied.insert(key, ProxyWait::Header(peer));
            }
            AtAccept::Refused(err) => self.refuse(key, &err),
        }
    }

    fn hold_address(&mut self, key: usize, address: u128) {
        if self.admitted.len() <= key {
            self.admitted.resize(key + 1, NO_ADDRESS);
        }
        debug_assert_eq!(
            self.admitted[key], NO_ADDRESS,
            "one address slot per connection"
        );
        self.admitted[key] = address;
    }

    /// Gives back the address slot of the connection in `key`, if it holds one; the slab
    /// slot is being freed.
    pub(crate) fn release_address(&mut self, key: usize) {
        if !self.proxied.is_empty() {
            self.proxied.remove(&key);
        }
        if let Some(slot) = self.admitted.get_mut(key) {
            let address = std::mem::replace(slot, NO_ADDRESS);
            if address != NO_ADDRESS {
                self.shared.addresses.release_key(address);
            }
        }
    }

    /// Reads a PROXY header at the start of a request head `buf`: `Ok(Some(n))` when the
    /// HTTP request starts `n` bytes in, `Ok(None)` when a trusted peer's header is still
    /// incomplete, `Err` for a header that is refused (400).
    pub(crate) fn read_proxy_header(
        &mut self,
        key: usize,
        buf: &[u8],
    ) -> Result<Option<usize>, (HandshakeError, Option<ProxyError>)> {
        let Some(&ProxyWait::Header(peer)) = self.proxied.get(&key) else {
            if !self.proxied.contains_key(&key) && proxy::looks_like_proxy_header(buf) {
                return Err((HandshakeError::ProxyHeaderUntrusted, None));
            }
            return Ok(Some(0));
        };
        let (wait, consumed) = match proxy::parse_proxy_header(buf) {
            Ok(None) => return Ok(None),
            Ok(Some(parsed)) => {
                let client = match parsed.header {
                    ProxyHeader::Proxied { source, .. } => proxy::canonical_ip(source.ip()),
                    ProxyHeader::Local => peer,
                };
                (ProxyWait::Named(client), parsed.consumed)
            }
            // The header is optional: a plain request names its client in X-Forwarded-For.
            Err(ProxyError::NotProxyProtocol) => (ProxyWait::Forwarded(peer), 0),
            Err(err) => {
                return Err((HandshakeError::ProxyHeaderInvalid(err.message()), Some(err)));
            }
        };
        self.proxied.insert(key, wait);
        Ok(Some(consumed))
    }

    /// A trusted peer's request is complete: decides the client its PROXY header or
    /// `X-Forwarded-For` names. Connections decided at accept pass through.
    pub(crate) fn admit_proxied(
        &mut self,
        key: usize,
        headers: &UpgradeHeaders,
    ) -> Result<(), HandshakeError> {
        let Some(wait) = self.proxied.remove(&key) else {
            return Ok(());
        };
        let client = match wait {
            ProxyWait::Named(client) => client,
            ProxyWait::Header(peer) | ProxyWait::Forwarded(peer) => {
                let trusted = &self.shared.trusted_proxies;
                proxy::client_from_forwarded_for(peer, &headers.forwarded_for, trusted)
                    .map_err(|_| HandshakeError::BadRequest("malformed X-Forwarded-For"))?
            }
        };
        match self.decide_address(client) {
            AtAccept::Admitted(address) => self.hold_address(key, address),
            AtAccept::Refused(err) => return Err(err),
            AtAccept::Unlimited | AtAccept::Deferred(_) => {}
        }
        Ok(())
    }

    /// Forgets idle addresses whose bucket has refilled (shard 0, once a second): the
    /// table's expiry, so addresses that stopped connecting do not stay.
    pub(crate) fn sweep_addresses(&self) {
        let table = &self.shared.addresses;
        if table.config().connect_rate_per_s > 0 {
            table.sweep(admission_now_ms());
        }
    }

    /// The rate window of connection `key`, to be counted against and stored back with
    /// [`Core::store_rate`].
    pub(crate) fn load_rate(&self, key: usize) -> ConnRate {
        self.conn_rates.get(key).copied().unwrap_or_default()
    }

    /// Stores connection `key`'s rate window.
    pub(crate) fn store_rate(&mut self, key: usize, rate: ConnRate) {
        if self.conn_rates.len() <= key {
            self.conn_rates.resize(key + 1, ConnRate::default());
        }
        self.conn_rates[key] = rate;
    }

    /// A new occupant of slot `key` starts with a fresh rate window.
    pub(crate) fn reset_rate(&mut self, key: usize) {
        if let Some(rate) = self.conn_rates.get_mut(key) {
            *rate = ConnRate::default();
        }
    }

    /// The second of the shard's wheel, for the rate windows.
    pub(crate) fn rate_now_s(&self) -> u32 {
        self.wheel.now() / TICKS_PER_S
    }
}
