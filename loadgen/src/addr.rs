//! Addresses on the command line: `HOST:PORT` resolution, the Host header, `ws://` URLs,
//! source address ranges and the local port range.
//!
//! Invariants:
//! - Every function here is pure apart from name resolution and reading the port range;
//!   errors are user-facing messages naming the option.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Ports assumed usable per (source, destination) pair when the range cannot be read.
const PORTS_PER_PAIR_DEFAULT: usize = 28_000;
/// Source addresses at most (a /16 of loopback).
const SOURCES_MAX: usize = 65_536;

/// Resolves `HOST:PORT`, preferring an IPv4 address (`localhost` may list ::1 first while
/// the node listens on 127.0.0.1).
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let all: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

/// The Host header: the name as given, or the resolved address.
pub fn host_header(given: &str, dest: &SocketAddr) -> String {
    if given.bytes().all(|b| b.is_ascii_graphic()) && !given.is_empty() {
        given.to_string()
    } else {
        dest.to_string()
    }
}

/// Splits `ws://HOST[:PORT][/PATH]` into `HOST:PORT` and the path (default `/`).
pub fn parse_ws_url(url: &str) -> Result<(String, String), String> {
    let rest = if let Some(rest) = url.strip_prefix("ws://") {
        rest
    } else if url.starts_with("wss://") {
        return Err("wss:// is not supported: the load generator speaks plain TCP".into());
    } else {
        return Err(format!(
            "--url must look like ws://host:port/path, not {url:?}"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err(format!("--url {url:?} has no host"));
    }
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    let hostport = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((hostport, path))
}

/// Appends the addresses of `spec` (`A`, or `A-B` for IPv4, inclusive) to `out`.
pub fn parse_source_range(spec: &str, out: &mut Vec<IpAddr>) -> Result<(), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(());
    }
    let bad = || format!("invalid --source {spec:?} (use 127.0.1.1-127.0.4.254 or one address)");
    match spec.split_once('-') {
        None => out.push(spec.parse().map_err(|_| bad())?),
        Some((a, b)) => {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b {
                return Err(bad());
            }
            if (b - a) as usize + out.len() >= SOURCES_MAX {
                return Err(format!("--source: more than {SOURCES_MAX} addresses"));
            }
            for ip in a..=b {
                let ip = Ipv4Addr::from(ip);
                let last = ip.octets()[3];
                // Skip network and broadcast-looking hosts of each /24.
                if last == 0 || last == 255 {
                    continue;
                }
                out.push(IpAddr::V4(ip));
            }
        }
    }
    Ok(())
}

/// Ports per (source, destination) pair, from `net.ipv4.ip_local_port_range`.
pub fn ports_per_pair() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<usize>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            (hi >= lo).then(|| hi - lo + 1)
        })
        .unwrap_or(PORTS_PER_PAIR_DEFAULT)
}
