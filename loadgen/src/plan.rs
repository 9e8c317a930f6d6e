//! The run plan: the checks that turn the parsed command line ([`crate::cli::Cli`]) into a
//! [`Plan`] every thread reads, and the scenario parameters it carries.
//!
//! Invariants:
//! - A `Plan` is validated once, here: every worker's share fits its file table, every
//!   (source, destination) pair has the ports its share needs, sizes hold a timestamp.
//! - Nothing after `Plan::from_cli` rejects user input; workers only count failures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::cli::{Cli, CloseMode, Common, Format, Publisher, ScenarioCmd};
use crate::payload::STAMP_BYTES;
use crate::target::{check_channel, read_token_file, JsonMode, Mode};

/// What the scenario does with open connections.
#[derive(Clone, Debug)]
pub enum Scenario {
    /// Hold them.
    Connect,
    /// Send stamped messages and time the echoes.
    Echo(EchoPlan),
    /// Receive stamped messages from a publisher.
    Broadcast(BroadcastPlan),
    /// Open, hold for `lifetime`, close, reopen.
    Churn {
        /// Mean lifetime of an open connection.
        lifetime: Duration,
    },
    /// JSON mode: subscribe, disconnect, publish, reconnect with `since`.
    Resume(ResumePlan),
}

/// The resume scenario's parameters.
#[derive(Clone, Debug)]
pub struct ResumePlan {
    /// The publisher of the messages missed (admin API, `count` = the messages, unpaced).
    pub publish: BroadcastPlan,
    /// Messages published while the clients are away.
    pub messages: u64,
}

impl Scenario {
    /// The scenario's name in output.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Echo(_) => "echo",
            Scenario::Broadcast(_) => "broadcast",
            Scenario::Churn { .. } => "churn",
            Scenario::Resume(_) => "resume",
        }
    }
}

/// The echo scenario's parameters.
#[derive(Clone, Debug)]
pub struct EchoPlan {
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per second in total; 0 for closed loop.
    pub msg_rate: f64,
    /// Closed loop: messages in flight per connection.
    pub pipeline: u32,
    /// Text frames (hex stamp) rather than binary.
    pub text: bool,
}

/// The broadcast scenario's parameters.
#[derive(Clone, Debug)]
pub struct BroadcastPlan {
    /// The channel.
    pub channel: String,
    /// Who publishes.
    pub publisher: Publisher,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Publishes per second.
    pub msg_rate: f64,
    /// Payload bytes.
    pub size: usize,
    /// Stop after this many publishes.
    pub count: Option<u64>,
}

/// Reconnect policy: exponential backoff with full jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling before attempt `attempt` (1-based): `min(max, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << shift).min(self.max)
    }
}

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
/// Ports assumed usable per (source, destination) pair when the range cannot be read.
const PORTS_PER_PAIR_DEFAULT: usize = 28_000;
/// Source addresses at most (a /16 of loopback).
const SOURCES_MAX: usize = 65_536;

impl Plan {
    /// Validates the command line. Notes about choices made go to stderr; errors are
    /// user-facing messages.
    pub fn from_cli(cli: Cli) -> Result<Plan, String> {
        let (common, scenario, default_path) = match cli.scenario {
            ScenarioCmd::Connect(a) => {
                let path = match &a.channel {
                    Some(channel) => {
                        check_channel(channel)?;
                        format!("/ws/{channel}")
                    }
                    None => "/echo".to_string(),
                };
                let channel = a.channel.unwrap_or_else(|| "bench".into());
                return Plan::with_common(a.common, Scenario::Connect, path, &channel);
            }
            ScenarioCmd::Echo(a) => {
                let stamp_min = if a.text { 2 * STAMP_BYTES } else { STAMP_BYTES };
                if a.size < stamp_min {
                    return Err(format!(
                        "--size must be at least {stamp_min} bytes (the send timestamp and \
                         sequence number{})",
                        if a.text { " as hex digits" } else { "" }
                    ));
                }
                if !(a.msg_rate >= 0.0 && a.msg_rate.is_finite()) {
                    return Err("--msg-rate must be a non-negative number".into());
                }
                if a.msg_rate == 0.0 && a.pipeline == 0 {
                    return Err("closed loop (--msg-rate 0) needs --pipeline of 1 or more".into());
                }
                let plan = EchoPlan {
                    size: a.size,
                    msg_rate: a.msg_rate,
                    pipeline: a.pipeline,
                    text: a.text,
                };
                if a.common.format == Some(Format::Json) {
                    return Err(
                        "echo speaks raw mode only: the node does not echo in JSON mode".into(),
                    );
                }
                (a.common, Scenario::Echo(plan), "/echo".to_string())
            }
            ScenarioCmd::Broadcast(a) => {
                if a.size < STAMP_BYTES {
                    return Err(format!(
                        "--size must be at least {STAMP_BYTES} bytes (send timestamp and \
                         sequence number)"
                    ));
                }
                if !(a.msg_rate > 0.0 && a.msg_rate.is_finite()) {
                    return Err("--msg-rate must be a positive number".into());
                }
                check_channel(&a.channel)?;
                if a.publisher == Publisher::None && a.count.is_none() {
                    return Err("--publisher none needs --count: the number of messages \
                                another process publishes"
                        .into());
                }
                let admin = resolve(&a.admin).map_err(|e| format!("--admin: {e}"))?;
                let path = format!("/ws/{}", a.channel);
                let plan = BroadcastPlan {
                    channel: a.channel,
                    publisher: a.publisher,
                    admin,
                    admin_token: a.admin_token,
                    msg_rate: a.msg_rate,
                    size: a.size,
                    count: a.count,
                };
                let channel = plan.channel.clone();
                return Plan::with_common(a.common, Scenario::Broadcast(plan), path, &channel);
            }
            ScenarioCmd::Resume(a) => {
                if a.size < STAMP_BYTES {
                    return Err(format!(
                        "--size must be at least {STAMP_BYTES} bytes (send timestamp and \
                         sequence number)"
                    ));
                }
                if a.messages == 0 {
                    return Err("--messages must be at least 1".into());
                }
                if a.common.format == Some(Format::Raw) {
                    return Err("resume needs --format json: raw mode has no resume".into());
                }
                check_channel(&a.channel)?;
                let admin = resolve(&a.admin).map_err(|e| format!("--admin: {e}"))?;
                let mut common = a.common;
                common.format = Some(Format::Json);
                let plan = ResumePlan {
                    publish: BroadcastPlan {
                        channel: a.channel.clone(),
                        publisher: Publisher::Admin,
                        admin,
                        admin_token: a.admin_token,
                        // Unpaced: the messages go out back to back.
                        msg_rate: 1e9,
                        size: a.size,
                        count: Some(a.messages),
                    },
                    messages: a.messages,
                };
                return Plan::with_common(
                    common,
                    Scenario::Resume(plan),
                    String::new(),
                    &a.channel,
                );
            }
            ScenarioCmd::Plot(_) => return Err("plot draws saved runs; it runs no load".into()),
            ScenarioCmd::Churn(a) => {
                if a.lifetime.is_zero() {
                    return Err("--lifetime must be positive".into());
                }
                (
                    a.common,
                    Scenario::Churn {
                        lifetime: a.lifetime,
                    },
                    "/echo".to_string(),
                )
            }
        };
        Plan::with_common(common, scenario, default_path, "bench")
    }

    fn with_common(
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

/// Resolves `HOST:PORT`, preferring an IPv4 address (`localhost` may list ::1 first while
/// the node listens on 127.0.0.1).
fn resolve(addr: &str) -> Result<SocketAddr, String> {
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
fn host_header(given: &str, dest: &SocketAddr) -> String {
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

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
