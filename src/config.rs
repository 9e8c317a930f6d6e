//! The node's configuration: every limit with its default, from the command line, the
//! environment (`RINGPUSH_*`) or a TOML file (`--config`), in that order of precedence
//! (`layers.rs`).

mod layers;

pub use layers::{env_name, key_of, print as print_effective, ENV_PREFIX};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::AuthMode;
pub use crate::log::LogFormat;

/// Policy for a subscriber that does not read fast enough.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close it with 1008 "slow consumer".
    Close,
    /// Drop the newest messages for it (counted) and keep it.
    Drop,
}

/// The version `--version` prints: the crate's, and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RINGPUSH_GIT_REVISION"),
    ")"
);

/// ringpush: a WebSocket push node on io_uring.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringpush", version = VERSION, about)]
pub struct Config {
    /// TOML file of settings: every flag has a key, its long name with `_` for `-`
    /// (`ping_interval = "30s"`). Precedence: flag, then environment (`RINGPUSH_` and the
    /// key in capitals), then this file, then the default.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML (the form --config reads, secrets
    /// masked) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Log line format on stderr: `text` or `json` (one object per line, for shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address every shard listens on (one SO_REUSEPORT listener per shard).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Reactor threads, each with its own io_uring, listener and file table
    /// (default: available cores).
    #[arg(long)]
    pub shards: Option<usize>,

    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// Connections the node holds at most, split evenly across shards and kept below each
    /// shard's file-table cap (default: as many as the file caps allow).
    #[arg(long)]
    pub max_conns: Option<usize>,

    /// Address of the admin HTTP listener (publish, send, metrics, healthz).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,

    /// Do not serve the demo page (`GET /demo` on the admin listener).
    #[arg(long)]
    pub no_demo: bool,

    /// Bearer token every admin request must carry (default: none required).
    #[arg(long)]
    pub admin_token: Option<String>,

    /// Time an admin request has from its first byte to its complete head, and again from
    /// its head to its complete body; past either it is answered 408 and the connection
    /// closed. A connection whose answers pile up unread must drain within it as well.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub admin_request_timeout: Duration,

    /// Publish data messages that clients send on /ws/<channel> to that channel.
    #[arg(long)]
    pub client_publish: bool,

    /// What happens to a subscriber whose queued bytes exceed --max-pending.
    #[arg(long, value_enum, default_value_t = SlowConsumer::Close)]
    pub slow_consumer: SlowConsumer,

    /// Path that echoes every data message (the conformance and round-trip target).
    #[arg(long, default_value = "/echo")]
    pub echo_path: String,

    /// Largest message accepted, in bytes (suffixes KiB, MiB); larger gets close 1009.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub max_message: usize,

    /// Memory each shard spends at most on reassembling fragmented messages (summed over
    /// its connections); past it the connection holding the most is closed with 1009.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub reassembly_budget: usize,

    /// Bytes queued for one connection at most; past it the connection is a slow consumer.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub max_pending: usize,

    /// Largest HTTP request head accepted for the upgrade (431 beyond).
    #[arg(long, default_value = "8KiB", value_parser = parse_bytes)]
    pub max_header_bytes: usize,

    /// Origins allowed to upgrade (repeatable; default: any). Others get 403.
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,

    /// Subprotocols the node speaks (repeatable), chosen in the client's order of offer.
    #[arg(long = "subprotocol")]
    pub subprotocols: Vec<String>,

    /// Time a client has to finish its upgrade before it is dropped.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Silence after which the node pings a client.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Silence (no frame, no pong) after which a client is closed.
    #[arg(long, default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time a peer has to answer our close before the TCP connection is dropped.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// Time shutdown waits for clients to answer close 1001 (with --drain-spread, counted
    /// from the end of the spread).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Window over which shutdown closes the open connections in an even trickle, each with
    /// 4002 "reconnect elsewhere" (0: all at once with 1001, as before).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub drain_spread: Duration,

    /// Interval between stats lines on stdout (0 disables them).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Provided receive buffers per shard (a power of two).
    #[arg(long, default_value_t = 64)]
    pub recv_buffers: u16,

    /// Size of each provided receive buffer.
    #[arg(long, default_value = "16KiB", value_parser = parse_bytes)]
    pub recv_buffer_bytes: usize,

    /// Submission queue entries per shard ring.
    #[arg(long, default_value_t = 4096)]
    pub sq_entries: u32,

    /// Completion queue entries per shard ring.
    #[arg(long, default_value_t = 32768)]
    pub cq_entries: u32,

    /// Data messages one client may publish per second with --client-publish (counted per
    /// connection over one-second windows); past it the client is closed with 1008
    /// "publish rate".
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_publish_rate: u32,

    /// Cross-shard messages (publishes, session claims) waiting in one shard's inbox at
    /// most; a publish that finds an inbox full is refused (admin: 503, client publisher:
    /// close 1008 "publish queue full").
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_shard_inbox: u32,

    /// Subscriptions one JSON-mode connection may hold (query channels included); past
    /// it a subscribe is answered with error 429 and the connection stays.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,

    /// Messages kept per channel for resume (0: no history; offsets and epochs still
    /// count every publish).
    #[arg(long, default_value_t = 0)]
    pub history_size: usize,

    /// Age past which a kept message is gone (none: kept by size and memory only).
    #[arg(long, value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,

    /// Node-wide cap on the bytes history keeps (payloads plus a small overhead per
    /// entry); the oldest entries across channels go first.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub history_memory: usize,

    /// Join other nodes through Redis: `redis://HOST:PORT` (one Redis), or a comma list
    /// `redis://HOST:PORT,HOST:PORT,...` (the seed nodes of a Redis Cluster, with sharded
    /// pub/sub; each channel lives on the master owning its slot). Publishes go to
    /// Redis, which assigns offsets and epochs and keeps the history; each node subscribes
    /// to the channels its clients hold (default: none, the node stands alone).
    #[arg(long)]
    pub broker: Option<String>,

    /// File holding the broker's password (its first line; AUTH before anything else).
    #[arg(long)]
    pub broker_password_file: Option<PathBuf>,

    /// Environment variable holding the broker's password.
    #[arg(long)]
    pub broker_password_env: Option<String>,

    /// Longest a publish waits for the broker before it is answered 503; also the connect,
    /// read and write timeout of every broker connection.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub broker_timeout: Duration,

    /// Share the client and admin ports with other processes that already listen on them
    /// (SO_REUSEPORT across processes, e.g. an overlapping restart). Without it the node
    /// refuses to start when another process listens on either address.
    #[arg(long)]
    pub reuse_port_with_others: bool,

    /// File holding the full admin token (one trailing newline stripped); instead of
    /// --admin-token, so the token stays out of the process list.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,

    /// Environment variable holding the full admin token; instead of --admin-token.
    #[arg(long)]
    pub admin_token_env: Option<String>,

    /// Bearer token that may only publish (`POST /publish`, `/send`, `/broadcast`, and
    /// `/healthz`): 403 on `/metrics`, `/history` and `/channels`. Needs a full admin token.
    #[arg(long)]
    pub admin_publish_token: Option<String>,

    /// File holding the publish-only admin token (one trailing newline stripped).
    #[arg(long)]
    pub admin_publish_token_file: Option<PathBuf>,

    /// Environment variable holding the publish-only admin token.
    #[arg(long)]
    pub admin_publish_token_env: Option<String>,

    /// Whether clients need a signed token to connect: `off` (anyone, a warning at start-up),
    /// `optional` (a token is honoured; without one only --anonymous-channels), `required`.
    #[arg(long, default_value = "off", value_parser = parse_auth_mode)]
    pub auth: AuthMode,

    /// A token verification key file (repeatable): an HS256 secret, or an RS256 or ES256
    /// public key in PEM; its file name without extension is its `kid`.
    #[arg(long = "token-key")]
    pub token_keys: Vec<PathBuf>,

    /// An environment variable holding an HS256 token secret (repeatable); its name is its
    /// `kid`.
    #[arg(long = "token-key-env")]
    pub token_key_envs: Vec<String>,

    /// Channels a client without a token may subscribe to with --auth optional
    /// (comma-separated names, `prefix.*` or `*`).
    #[arg(long, value_delimiter = ',')]
    pub anonymous_channels: Vec<String>,

    /// Live connections one client address may hold (IPv6: per /64); beyond it 429 with
    /// `Retry-After` (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub max_conns_per_ip: u32,

    /// New connections one client address may open per second, on average (a token
    /// bucket); beyond it 429 with `Retry-After` (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub connect_rate_per_ip: u32,

    /// How many connections an address may open at once before --connect-rate-per-ip
    /// applies (the bucket's depth; 0: the rate itself).
    #[arg(long, default_value_t = 0)]
    pub connect_burst_per_ip: u32,

    /// A proxy range (CIDR or a bare address; repeatable) whose PROXY v1/v2 header or
    /// `X-Forwarded-For` names the client address; from anyone else a PROXY header is
    /// refused (400) and `X-Forwarded-For` ignored.
    #[arg(long = "trusted-proxy", value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<String>,

    /// Control frames (ping, pong, close) one connection may send per second; beyond it
    /// the connection is closed with 1008 "control rate" (0: no limit).
    #[arg(long, default_value_t = 100)]
    pub max_control_rate: u16,

    /// Data messages one connection may send per second; beyond it the connection is
    /// closed with 1008 "message rate" (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_message_rate: u16,
}

/// Checks one `--trusted-proxy` value (kept as text; `TrustedProxies::parse` reads them).
fn parse_trusted_proxy(value: &str) -> Result<String, String> {
    crate::http::proxy::Cidr::parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| e.to_string())
}

/// Parses `--auth`.
fn parse_auth_mode(value: &str) -> Result<AuthMode, String> {
    AuthMode::parse(value).ok_or_else(|| format!("--auth {value:?}: use off, optional or required"))
}

impl Config {
    /// The per-address admission limits of the flags.
    pub fn admission(&self) -> crate::admission::AdmissionConfig {
        crate::admission::AdmissionConfig {
            conns_per_ip_max: self.max_conns_per_ip,
            connect_rate_per_s: self.connect_rate_per_ip,
            connect_burst: self.connect_burst_per_ip,
            ..Default::default()
        }
    }

    /// The per-connection frame rate limits of the flags.
    pub fn rate_limits(&self) -> crate::admission::RateLimits {
        crate::admission::RateLimits {
            control_per_s: self.max_control_rate,
            messages_per_s: self.max_message_rate,
        }
    }

    /// The shard count: the flag, or the number of available cores.
    pub fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

/// The longest duration any flag takes, in seconds (one year). The timer wheel counts
/// 50 ms ticks in a `u32` and clamps a deadline at `u32::MAX / 4` ticks (about 621 days);
/// one year stays well inside it, and no timeout of this node needs more.
pub const DURATION_SECS_MAX: u64 = 365 * 24 * 3600;

/// Parses `500ms`, `5s`, `2m`, `1h` or a bare number of seconds, at most
/// [`DURATION_SECS_MAX`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (use ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    if secs > DURATION_SECS_MAX as f64 {
        return Err(format!(
            "duration too long: {s:?} (at most {DURATION_SECS_MAX}s, one year)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("not a duration: {s:?} ({e})"))
}

/// Parses `1048576`, `64KiB`, `1MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`: binary units).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: usize = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn issue_8_item_13_durations_past_a_year_are_refused_not_a_panic() {
        for huge in ["99999999999999999999", "1e400", "366d", "8761h", "31536001"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        let err = parse_duration("99999999999999999999").unwrap_err();
        assert!(err.contains("too long"), "{err}");
        assert_eq!(
            parse_duration("31536000"),
            Ok(Duration::from_secs(DURATION_SECS_MAX))
        );
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(DURATION_SECS_MAX))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("8KiB"), Ok(8192));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("1 zebibyte").is_err());
    }

    #[test]
    fn defaults_match_the_readme() {
        let cfg = Config::parse_from(["ringpush"]);
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.max_pending, 1 << 20);
        assert_eq!(cfg.max_message, 1 << 20);
        assert_eq!(cfg.reassembly_budget, 64 << 20);
        assert_eq!(cfg.max_header_bytes, 8 << 10);
        assert_eq!(cfg.handshake_timeout, Duration::from_secs(5));
        assert_eq!(cfg.ping_interval, Duration::from_secs(30));
        assert_eq!(cfg.idle_timeout, Duration::from_secs(75));
        assert_eq!(cfg.drain_timeout, Duration::from_secs(10));
        assert_eq!(cfg.drain_spread, Duration::ZERO);
        assert_eq!(cfg.admin_request_timeout, Duration::from_secs(10));
    }
}
