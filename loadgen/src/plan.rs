//! The run plan: the checks that turn the parsed command line ([`crate::cli::Cli`]) into a
//! [`Plan`] every thread reads, and the scenario parameters it carries.
//!
//! Invariants:
//! - A `Plan` is validated once, here: every worker's share fits its file table, every
//!   (source, destination) pair has the ports its share needs, sizes hold a timestamp.
//! - Nothing after `Plan::from_cli` rejects user input; workers only count failures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::addr::{host_header, parse_source_range, parse_ws_url, ports_per_pair, resolve};
use crate::cli::{CloseMode, Common, Format};
use crate::scenario::{Backoff, Scenario};
use crate::target::{check_channel, read_token_file, JsonMode, Mode};

/// Everything the workers and the publisher read: the validated command line.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What to do with connections.
    pub scenario: Scenario,
    /// Destination.
    pub dest: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Request target.
    pub path: String,
    /// The `Authorization` header of every upgrade (`--token-file`), if any.
    pub authorization: Option<String>,
    /// Source addresses, round-robin by connection index (empty: kernel's choice).
    pub sources: Vec<IpAddr>,
    /// Connections in total (churn: at once).
    pub connections: usize,
    /// Worker threads.
    pub workers: usize,
    /// Pin workers.
    pub pin: bool,
    /// Connection attempts per second in total (0: unlimited).
    pub rate: f64,
    /// Connects in progress per worker at most (the total split over workers).
    pub max_connecting: usize,
    /// Connect start to 101 deadline.
    pub connect_timeout: Duration,
    /// Reconnect after failures (churn always does).
    pub reconnect: Option<Backoff>,
    /// Backoff used by churn after failures when --reconnect is absent.
    pub backoff: Backoff,
    /// Scenario duration.
    pub duration: Duration,
    /// Idle hold between the ramp and the run.
    pub settle: Duration,
    /// Ramp deadline.
    pub ramp_timeout: Duration,
    /// Drain deadline.
    pub drain_timeout: Duration,
    /// How we close.
    pub close: CloseMode,
    /// Close handshake deadline.
    pub close_timeout: Duration,
    /// JSON summary.
    pub json: bool,
    /// Tolerated failures.
    pub max_errors: u64,
    /// Largest message from the server.
    pub max_message: usize,
    /// Buffer ring: count and size.
    pub recv_buffers: u16,
    /// Bytes per provided buffer.
    pub recv_buffer_bytes: u32,
    /// Ring sizes.
    pub sq_entries: u32,
    /// Completion queue size.
    pub cq_entries: u32,
    /// RNG seed.
    pub seed: u64,
    /// Progress interval (zero: off).
    pub progress: Duration,
    /// The node's pid, for its RSS.
    pub node_pid: Option<u32>,
    /// The SVG file to draw the run's charts into.
    pub plot: Option<std::path::PathBuf>,
    /// The client protocol.
    pub mode: Mode,
}

/// Descriptors each worker's file table keeps for things other than connections: stdio,
/// its ring, and the copies of other threads' descriptors taken at unshare time.
pub const RESERVED_FDS: usize = 64;

impl Plan {
    pub(crate) fn with_common(
        c: Common,
        scenario: Scenario,
        default_path: String,
        channel: &str,
    ) -> Result<Plan, String> {
        let mode = match c.format.unwrap_or(Format::Raw) {
            Format::Raw if c.channels_per_conn != 1 => {
                return Err("--channels-per-conn needs --format json".into())
            }
            Format::Raw => Mode::Raw,
            Format::Json => {
                if c.path.is_some() {
                    return Err(
                        "--format json builds the target (/ws?format=json&channel=…): \
                                drop --path"
                            .into(),
                    );
                }
                if c.channels_per_conn == 0 {
                    return Err("--channels-per-conn must be at least 1".into());
                }
                let mode = JsonMode::new(channel.to_string(), c.channels_per_conn, c.fillers);
                let last = mode.channel_name(c.connections as u64, c.channels_per_conn - 1);
                check_channel(&last)?;
                Mode::Json(mode)
            }
        };
        let (addr, url_path) = match &c.url {
            Some(url) => {
                let (host, path) = parse_ws_url(url)?;
                (host, Some(path))
            }
            None => (c.addr.clone(), None),
        };
        let path = match &mode {
            Mode::Raw => c.path.clone().or(url_path).unwrap_or(default_path),
            Mode::Json(json) => {
                if url_path.as_deref().is_some_and(|p| p != "/" && p != "/ws") {
                    return Err("--format json builds the target: give --url without a path".into());
                }
                json.target(0).into_owned()
            }
        };
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err(format!("invalid path {path:?}: it must start with '/'"));
        }
        let dest = resolve(&addr)?;
        if c.connections == 0 {
            return Err("-n/--connections must be at least 1".into());
        }
        if !(c.rate >= 0.0 && c.rate.is_finite()) {
            return Err("--rate must be a non-negative number".into());
        }
        if c.max_connecting == 0 {
            return Err("--max-connecting must be at least 1".into());
        }
        if !c.recv_buffers.is_power_of_two() || c.recv_buffers > 32_768 {
            return Err("--recv-buffers must be a power of two ≤ 32768".into());
        }
        let recv_buffer_bytes = u32::try_from(c.recv_buffer_bytes)
            .ok()
            .filter(|b| *b >= 256)
            .ok_or("--recv-buffer-bytes must be between 256 bytes and 4 GiB")?;

        let mut sources = Vec::new();
        for spec in &c.sources {
            parse_source_range(spec, &mut sources)?;
        }
        let ports = ports_per_pair();
        // connect(2) looks for a free port among one parity of the range first and only
        // then the other, each lookup a hash probe: past half the range of a (source,
        // destination) pair every connect scans thousands of used ports, and a 100k ramp
        // fell from 40k/s to 500/s. Keep each source within its fast half.
        let fast_ports = (ports / 2).max(1000);
        let needed_sources = c.connections.div_ceil(fast_ports * 9 / 10);
        if sources.is_empty() && needed_sources > 1 {
            if dest.ip().is_loopback() && dest.is_ipv4() {
                // Loopback has a /8 of addresses: give each block of connections its own
                // source so no (source, destination) pair runs short of ports.
                let count = needed_sources.next_power_of_two().clamp(4, 254);
                for host in 1..=count as u8 {
                    sources.push(IpAddr::V4(Ipv4Addr::new(127, 0, 1, host)));
                }
                ringpush::elog!(
                    "ringpush-loadgen note: {} connections are more than one (source, \
                     destination) pair connects quickly (~{fast_ports} of its {ports} ports); \
                     binding sources 127.0.1.1-127.0.1.{count} (choose with --source)",
                    c.connections
                );
            } else {
                return Err(format!(
                    "{} connections need at least {needed_sources} source addresses (about \
                     {fast_ports} fast ports per (source, destination) pair): pass --source",
                    c.connections
                ));
            }
        }
        if !sources.is_empty() {
            let per_source = c.connections.div_ceil(sources.len());
            if per_source > ports {
                return Err(format!(
                    "{per_source} connections per source address exceed the {ports} local \
                     ports of a (source, destination) pair: give more --source addresses"
                ));
            }
            if per_source > fast_ports {
                ringpush::elog!(
                    "ringpush-loadgen warning: {per_source} connections per source address \
                     are past the ~{fast_ports} a (source, destination) pair connects quickly; \
                     expect slow connects late in the ramp (give more --source addresses)"
                );
            }
            if sources.iter().any(|s| s.is_ipv4() != dest.is_ipv4()) {
                return Err("--source and the destination must be the same address family".into());
            }
        }

        let nofile = ringpush::ring::sys::nofile_limit() as usize;
        let per_table = nofile.saturating_sub(RESERVED_FDS).max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let needed_workers = c.connections.div_ceil(per_table);
        let workers = match c.workers {
            Some(0) => return Err("--workers must be at least 1".into()),
            Some(w) if w < needed_workers => {
                return Err(format!(
                    "{} connections need at least {needed_workers} workers: each worker's file \
                     table holds {per_table} sockets (RLIMIT_NOFILE {nofile})",
                    c.connections
                ))
            }
            Some(w) => w,
            None => cores.max(needed_workers),
        };
        let seed = c.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ u64::from(std::process::id()).rotate_left(32)
        });
        let backoff = Backoff {
            base: c.backoff_base.max(Duration::from_millis(1)),
            max: c.backoff_max.max(c.backoff_base),
        };
        Ok(Plan {
            scenario,
            host: host_header(&addr, &dest),
            dest,
            path,
            authorization: c.token_file.as_deref().map(read_token_file).transpose()?,
            sources,
            connections: c.connections,
            workers,
            pin: !c.no_pin,
            rate: c.rate,
            max_connecting: c.max_connecting.div_ceil(workers),
            connect_timeout: c.connect_timeout.max(Duration::from_millis(1)),
            reconnect: c.reconnect.then_some(backoff),
            backoff,
            duration: c.duration,
            settle: c.settle,
            ramp_timeout: c.ramp_timeout,
            drain_timeout: c.drain_timeout,
            close: c.close,
            close_timeout: c.close_timeout.max(Duration::from_millis(1)),
            json: c.json,
            max_errors: c.max_errors,
            max_message: c.max_message,
            recv_buffers: c.recv_buffers,
            recv_buffer_bytes,
            sq_entries: c.sq_entries,
            cq_entries: c.cq_entries,
            seed,
            progress: c.progress,
            node_pid: c.node_pid,
            plot: c.plot,
            mode,
        })
    }

    /// The extra header lines of every upgrade request (the token, if any).
    pub fn upgrade_headers(&self) -> Vec<(&'static str, &str)> {
        self.authorization
            .as_deref()
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect()
    }

    /// Connections worker `w` owns: the indices `i < connections` with `i % workers == w`.
    pub fn share(&self, w: usize) -> usize {
        let (n, k) = (self.connections, self.workers);
        n / k + usize::from(w < n % k)
    }

    /// The source address for connection index `i`, if sources are bound.
    pub fn source(&self, index: u64) -> Option<IpAddr> {
        (!self.sources.is_empty())
            .then(|| self.sources[(index % self.sources.len() as u64) as usize])
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
