//! The client's address behind a trusted proxy, sans-IO: the PROXY protocol v1 and v2 header
//! a load balancer writes before the request ([`parse_proxy_header`]), the right-most
//! untrusted `X-Forwarded-For` entry ([`client_from_forwarded_for`]), and the
//! `--trusted-proxy CIDR` list both are only believed from ([`TrustedProxies`]).
//!
//! Invariants:
//! - Only a peer inside a trusted range is believed; from anyone else a PROXY header is
//!   refused and `X-Forwarded-For` is ignored, since any client can write either.
//! - Parsing is bounded: a v1 line is at most [`V1_LINE_BYTES_MAX`] bytes (the spec's 107),
//!   a v2 header at most 16 + [`V2_BODY_BYTES_MAX`] bytes, and nothing is read past the
//!   header, whose length is returned so the rest belongs to the HTTP request.
//! - A short buffer is `Ok(None)` only while it is still a prefix of a valid header; bytes
//!   that cannot start one are an error at once, so a client cannot hold the parser open.
//! - IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4 peer) compare as the
//!   IPv4 address they map, both in the trusted list and in the results.

use super::headers::trim_whitespace;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest PROXY v1 line, CRLF included (the spec's bound for `TCP6`).
pub const V1_LINE_BYTES_MAX: usize = 107;

/// The longest PROXY v2 body (addresses and TLVs) accepted, in bytes. The spec allows 65535;
/// real balancers send a few hundred bytes of TLVs at most.
pub const V2_BODY_BYTES_MAX: usize = 1024;

/// The 12 bytes every PROXY v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What starts every PROXY v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The length of a v2 header before its body: signature, version/command, family, length.
const V2_HEAD_BYTES: usize = 16;

/// What a PROXY header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection was relayed for this client, to this address of the proxy.
    Proxied {
        /// The client's address: the one the limits and logs use.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The proxy speaks for itself (v2 `LOCAL`, e.g. a health check) or does not know the
    /// client (v1 `UNKNOWN`, v2 `UNSPEC`/`UNIX`): the socket's peer address stands.
    Local,
}

/// A parsed PROXY header and its length in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// What the header says.
    pub header: ProxyHeader,
    /// The header's length: the HTTP request starts after it.
    pub consumed: usize,
}

/// Why a PROXY header was refused. Each names the rule broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes start neither `PROXY ` nor the v2 signature.
    NotProxyProtocol,
    /// A v1 line without CRLF within [`V1_LINE_BYTES_MAX`] bytes.
    V1LineTooLong,
    /// A v1 line whose fields are missing, extra, or not `TCP4`/`TCP6`/`UNKNOWN`.
    V1Syntax,
    /// A v1 address that does not parse as the line's family.
    V1Address,
    /// A v1 port that is not a decimal 0-65535 without leading zeros.
    V1Port,
    /// A v2 version other than 2.
    V2Version,
    /// A v2 command other than `LOCAL` (0) or `PROXY` (1).
    V2Command,
    /// A v2 body longer than [`V2_BODY_BYTES_MAX`].
    V2TooLong,
    /// A v2 body shorter than its family's addresses.
    V2AddressTooShort,
}

impl ProxyError {
    /// A short snake_case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotProxyProtocol => "not_proxy_protocol",
            Self::V1LineTooLong => "v1_line_too_long",
            Self::V1Syntax => "v1_syntax",
            Self::V1Address => "v1_address",
            Self::V1Port => "v1_port",
            Self::V2Version => "v2_version",
            Self::V2Command => "v2_command",
            Self::V2TooLong => "v2_too_long",
            Self::V2AddressTooShort => "v2_address_too_short",
        }
    }
}

impl ProxyError {
    /// The refusal's body for a person: which rule the header broke.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotProxyProtocol => "bad PROXY protocol header: not a PROXY header",
            Self::V1LineTooLong => "bad PROXY protocol header: v1 line over 107 bytes",
            Self::V1Syntax => "bad PROXY protocol header: v1 syntax",
            Self::V1Address => "bad PROXY protocol header: v1 address",
            Self::V1Port => "bad PROXY protocol header: v1 port",
            Self::V2Version => "bad PROXY protocol header: v2 version",
            Self::V2Command => "bad PROXY protocol header: v2 command",
            Self::V2TooLong => "bad PROXY protocol header: v2 body too long",
            Self::V2AddressTooShort => "bad PROXY protocol header: v2 addresses too short",
        }
    }
}

/// Whether `buf` starts like a PROXY header (v1 `PROXY ` or the whole v2 signature): what
/// a peer outside `--trusted-proxy` is refused for.
pub fn looks_like_proxy_header(buf: &[u8]) -> bool {
    buf.starts_with(V1_PREFIX) || buf.starts_with(&V2_SIGNATURE)
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad PROXY protocol header: {}", self.label())
    }
}

impl std::error::Error for ProxyError {}

/// Parses a PROXY v1 or v2 header at the start of `buf`. `Ok(None)` asks for more bytes and
/// is returned only while `buf` can still become a valid header.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<Parsed>, ProxyError> {
    let v2_seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2_seen] == V2_SIGNATURE[..v2_seen] && !buf.is_empty() {
        return parse_v2(buf);
    }
    let v1_seen = buf.len().min(V1_PREFIX.len());
    if buf[..v1_seen] == V1_PREFIX[..v1_seen] {
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxyProtocol)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Parsed>, ProxyError> {
    let window = &buf[..buf.len().min(V1_LINE_BYTES_MAX)];
    let Some(cr) = window.windows(2).position(|pair| pair == b"\r\n") else {
        if window.len() >= V1_LINE_BYTES_MAX {
            return Err(ProxyError::V1LineTooLong);
        }
        // A bare LF inside the line can never become valid.
        if window.contains(&b'\n') {
            return Err(ProxyError::V1Syntax);
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&window[V1_PREFIX.len().min(cr)..cr])
        .map_err(|_| ProxyError::V1Syntax)?;
    if cr < V1_PREFIX.len() {
        return Err(ProxyError::V1Syntax);
    }
    let consumed = cr + 2;
    let mut fields = line.split(' ');
    let family = fields.next().ok_or(ProxyError::V1Syntax)?;
    if family == "UNKNOWN" {
        // The spec lets the rest of an UNKNOWN line be anything; the receiver ignores it.
        return Ok(Some(Parsed {
            header: ProxyHeader::Local,
            consumed,
        }));
    }
    let is_v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1Syntax),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Syntax);
    };
    let address = |text: &str| -> Result<IpAddr, ProxyError> {
        if is_v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| ProxyError::V1Address)
    };
    let source = SocketAddr::new(address(src)?, v1_port(sport)?);
    let destination = SocketAddr::new(address(dst)?, v1_port(dport)?);
    Ok(Some(Parsed {
        header: ProxyHeader::Proxied {
            source,
            destination,
        },
        consumed,
    }))
}

/// A v1 port: decimal, 0-65535, no sign and no leading zero (the spec's form).
fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(ProxyError::V1Port);
    }
    text.parse().map_err(|_| ProxyError::V1Port)
}

fn parse_v2(buf: &[u8]) -> Result<Option<Parsed>, ProxyError> {
    if buf.len() < V2_HEAD_BYTES {
        // Judge the version and command as soon as their byte is here.
        if let Some(&version_command) = buf.get(12) {
            check_v2_version_command(version_command)?;
        }
        return Ok(None);
    }
    let version_command = buf[12];
    let family = buf[13];
    let body_bytes = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let is_proxy = check_v2_version_command(version_command)?;
    if body_bytes > V2_BODY_BYTES_MAX {
        return Err(ProxyError::V2TooLong);
    }
    let consumed = V2_HEAD_BYTES + body_bytes;
    if buf.len() < consumed {
        return Ok(None);
    }
    let body = &buf[V2_HEAD_BYTES..consumed];
    if !is_proxy {
        return Ok(Some(Parsed {
            header: ProxyHeader::Local,
            consumed,
        }));
    }
    // The high nibble is the address family, the low one the transport; only TCP
    // (STREAM, 1) over INET (1) or INET6 (2) carries an address this node uses.
    let header = match family {
        0x11 => {
            let addresses: &[u8; 12] = body
                .get(..12)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyError::V2AddressTooShort)?;
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addresses[at],
                    addresses[at + 1],
                    addresses[at + 2],
                    addresses[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 => {
            let addresses: &[u8; 36] = body
                .get(..36)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyError::V2AddressTooShort)?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UNIX and datagram families: the spec says to accept the connection and use
        // the real peer address.
        _ => ProxyHeader::Local,
    };
    Ok(Some(Parsed { header, consumed }))
}

/// Checks the version/command byte; answers whether the command is `PROXY`.
fn check_v2_version_command(byte: u8) -> Result<bool, ProxyError> {
    if byte >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    match byte & 0x0f {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ProxyError::V2Command),
    }
}

/// `ip` as an IPv4 address when it is an IPv4-mapped IPv6 one.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `--trusted-proxy` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_bits: u8,
}

/// Why a `--trusted-proxy` value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid CIDR {:?}: an address, or address/prefix-length",
            self.0
        )
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (a single host). Host bits set
    /// under the prefix are refused: `10.0.0.1/8` is more likely a typo than a range.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let error = || CidrError(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical_ip(address.parse::<IpAddr>().map_err(|_| error())?);
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| error())?
            }
            Some(_) => return Err(error()),
        };
        if prefix_bits > width {
            return Err(error());
        }
        let cidr = Cidr {
            network,
            prefix_bits,
        };
        if bits(network) & !cidr.mask() != 0 {
            return Err(error());
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_ipv4() == self.network.is_ipv4() && bits(ip) & self.mask() == bits(self.network)
    }

    fn mask(&self) -> u128 {
        let width: u32 = if self.network.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix_bits);
        let all: u128 = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all.checked_shr(host_bits).map_or(0, |m| m << host_bits) & all
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The `--trusted-proxy` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

impl TrustedProxies {
    /// Parses every `--trusted-proxy` value.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<TrustedProxies, CidrError> {
        let ranges = values
            .iter()
            .map(|value| Cidr::parse(value.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { ranges })
    }

    /// Whether no proxy is trusted (then every header naming a client is ignored).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip))
    }
}

/// Why `X-Forwarded-For` could not name the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedError {
    /// An entry at or right of the client's is not an IP address (with an optional port).
    Malformed,
}

/// The client's address from a connection's `peer` and its `X-Forwarded-For` header values
/// (every line, in order, as one list). From an untrusted peer the header is ignored and
/// the peer is the client. From a trusted one, entries are read right to left and the first
/// one outside `trusted` is the client: each proxy appends the address it saw, so everything
/// left of the first untrusted entry was written by someone the node does not trust. When
/// every entry is trusted the left-most is the client; an empty header leaves the peer.
pub fn client_from_forwarded_for<V: AsRef<[u8]>>(
    peer: IpAddr,
    values: &[V],
    trusted: &TrustedProxies,
) -> Result<IpAddr, ForwardedError> {
    let peer = canonical_ip(peer);
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    let mut client = peer;
    let entries = values
        .iter()
        .rev()
        .flat_map(|value| value.as_ref().rsplit(|&b| b == b','));
    for entry in entries {
        let entry = trim_whitespace(entry);
        if entry.is_empty() {
            continue;
        }
        client = forwarded_ip(entry).ok_or(ForwardedError::Malformed)?;
        if !trusted.contains(client) {
            return Ok(client);
        }
    }
    Ok(client)
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1` or `[2001:db8::1]:80`.
fn forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(canonical_ip(socket.ip()));
    }
    None
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
