//! The command line as clap parses it: one subcommand per scenario, each with the common
//! connection options. It holds no checks beyond clap's own: `plan.rs` turns it into the
//! validated [`crate::plan::Plan`] every thread reads.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ringpush::config::{parse_bytes, parse_duration};

/// ringpush-loadgen: drives a ringpush node (or any RFC 6455 server) over io_uring.
///
/// The target is `--url ws://HOST:PORT/PATH`, or `--addr HOST:PORT` with `--path`.
/// Progress goes to stderr once a second; latency spectra and a summary go to stdout.
/// The exit status is 1 when more than `--max-errors` failures were counted, 2 on bad
/// arguments or setup failure.
#[derive(Parser, Debug)]
#[command(name = "ringpush-loadgen", version, about, long_about)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: ScenarioCmd,
}

/// One subcommand per scenario.
#[derive(Subcommand, Debug)]
pub enum ScenarioCmd {
    /// Open N connections, hold them for --duration, close them; report connect latency
    /// (connect start to 101 parsed) and every failure by kind. Default path: /echo.
    Connect(ConnectArgs),
    /// N connections on /echo sending --size-byte messages at --msg-rate in total (0: each
    /// connection keeps --pipeline messages in flight); per-message round-trip histogram.
    Echo(EchoArgs),
    /// N subscribers on /ws/<channel>; a publisher (admin HTTP API or one extra WebSocket)
    /// publishes at --msg-rate; per-message delivery latency, missing and reordered messages.
    Broadcast(BroadcastArgs),
    /// Connections that open at --rate, live --lifetime each and close, up to N at once;
    /// counts opened, closed and failed connections (leak detection). With --channels K
    /// each connection joins one of K channels (subscription churn).
    Churn(ChurnArgs),
    /// JSON mode: N clients subscribe to --channel, disconnect, --messages are published
    /// through the admin API, then all reconnect at once with `since`; reports the time
    /// until every client has every missed message (contiguous, no duplicate).
    Resume(ResumeArgs),
    /// Draws saved runs (their `--json` summaries) in one SVG chart, one line per run:
    /// latency spectra, RSS against connections, or messages per second over time.
    Plot(PlotArgs),
    /// The fan-out floor: accepts and upgrades clients with the node's codec, and sends
    /// each admin publish to all of them with plain send(2) or batched io_uring sends.
    FloorServer(crate::floor::FloorServerArgs),
    /// The connect and memory floors: N plain TCP connects to `floor-server --handshake
    /// none`, the rate until all are accepted and the kernel memory per pair (JSON line).
    FloorConnect(crate::floor::connect::FloorConnectArgs),
}

/// What `plot` draws.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChartKind {
    /// Latency by percentile on a log axis (50 %, 90 %, 99 %, 99.9 %, ...).
    Spectrum,
    /// The node's RSS against open connections (runs with --node-pid).
    Rss,
    /// Messages received per second over time.
    Rate,
}

/// Options of `plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The chart.
    #[arg(long, value_enum, default_value_t = ChartKind::Spectrum)]
    pub chart: ChartKind,

    /// The latency a spectrum shows: delivery, rtt, catch_up, connect, tcp_connect
    /// (default: the run's main one).
    #[arg(long)]
    pub latency: Option<String>,

    /// Chart title (default: what it shows).
    #[arg(long)]
    pub title: Option<String>,

    /// The SVG file to write.
    #[arg(short, long)]
    pub out: std::path::PathBuf,

    /// Runs: `LABEL=FILE` or `FILE` (labelled by its name); a FILE is a JSON summary or a
    /// saved stdout whose last JSON line is one.
    #[arg(required = true)]
    pub runs: Vec<String>,
}

/// The client protocol the connections speak (PROTOCOL.md).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `GET /ws/<channel>` (or --path): bare payloads, one channel.
    Raw,
    /// `GET /ws?format=json&channel=…`: JSON objects, --channels-per-conn channels.
    Json,
}

/// How the filler channels of a JSON-mode connection are named.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fillers {
    /// `<channel>.2` … `<channel>.N`, the same for every connection: each filler is one
    /// channel with every connection subscribed (the cost of a subscription).
    Shared,
    /// `<channel>.<connection index>.2` …: every filler is a channel of its own with one
    /// subscriber, like a per-user inbox (the cost of a subscription and of a channel).
    Distinct,
}

/// How the load generator ends a connection it chooses to end.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Send close 1000, wait for the server's close and its FIN.
    Graceful,
    /// Reset the TCP connection (SO_LINGER 0): no close frame, no TIME_WAIT here.
    Abort,
}

/// Who publishes in the broadcast scenario.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publisher {
    /// `POST /publish/<channel>` on the node's admin API (HTTP/1.1 keep-alive).
    Admin,
    /// One extra WebSocket on /ws/<channel> sending data messages (node --client-publish).
    Client,
    /// Nobody in this process: the subscribers wait for --count messages published by
    /// another process with the same stamps (another load generator on another node of a
    /// --broker group), up to --drain-timeout.
    None,
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target URL, ws://HOST:PORT/PATH (sets --addr and --path).
    #[arg(long)]
    pub url: Option<String>,

    /// Node address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,

    /// Request path (default: /echo; /ws/<channel> for broadcast).
    #[arg(long)]
    pub path: Option<String>,

    /// Connections (for churn: connections open at once at most).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,

    /// Worker threads, each with its own io_uring and file table (default: the number of
    /// cores, raised so each worker's share fits its file table).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Do not pin worker threads to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// Source addresses to bind, spread round-robin: `127.0.1.1-127.0.4.254`, a single
    /// address, or a comma-separated list of either (default: the kernel's choice; for a
    /// loopback target with more connections than one address has ports, 127.0.1.x).
    #[arg(long = "source", value_delimiter = ',')]
    pub sources: Vec<String>,

    /// Connection attempts per second in total, reconnects included (0: as fast as
    /// --max-connecting allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Connects and handshakes in progress at most, over all workers (each gets its share).
    /// More than the node's listen backlogs hold only turns into SYN retransmits.
    #[arg(long, default_value_t = 1024)]
    pub max_connecting: usize,

    /// Time from connect start to the 101 before the attempt counts as timed out.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Reopen connections that fail or that the server ends, after an exponential backoff
    /// with full jitter (churn always reopens).
    #[arg(long)]
    pub reconnect: bool,

    /// First reconnect backoff ceiling (each further failure doubles it).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Largest reconnect backoff.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// How long the scenario runs once every connection is open (connect: the hold;
    /// churn: the whole run).
    #[arg(long, visible_alias = "hold", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Hold every connection idle this long after the ramp, before the scenario's traffic
    /// starts (memory is then sampled at its end rather than at the end of the run).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Longest wait for every connection to open before the scenario starts anyway.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub ramp_timeout: Duration,

    /// Longest wait after the last message for outstanding echoes or deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How connections end (at the end of the run, and each churned connection).
    #[arg(long, value_enum, default_value_t = CloseMode::Graceful)]
    pub close: CloseMode,

    /// Time the server has to answer our close frame and FIN before we reset.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// Print the summary as JSON on stdout (the last line).
    #[arg(long)]
    pub json: bool,

    /// Failures tolerated before the exit status turns 1.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,

    /// Largest message accepted from the server.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    pub max_message: usize,

    /// Provided receive buffers per worker (a power of two).
    #[arg(long, default_value_t = 64)]
    pub recv_buffers: u16,

    /// Size of each provided receive buffer.
    #[arg(long, default_value = "16KiB", value_parser = parse_bytes)]
    pub recv_buffer_bytes: usize,

    /// Submission queue entries per worker ring.
    #[arg(long, default_value_t = 4096)]
    pub sq_entries: u32,

    /// Completion queue entries per worker ring.
    #[arg(long, default_value_t = 32768)]
    pub cq_entries: u32,

    /// Seed for handshake keys, mask keys and jitter (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Interval of the progress line on stderr (0 disables it).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub progress: Duration,

    /// Client protocol: raw (`/ws/<channel>`, bare payloads) or json (`/ws?format=json`,
    /// see PROTOCOL.md). Default: raw (json for resume).
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// JSON mode: channels each connection subscribes to through the upgrade's query. The
    /// first is the scenario's channel (so a publish on it reaches every connection), the
    /// others are fillers named as --fillers says.
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: usize,

    /// JSON mode: how filler channels are named.
    #[arg(long, value_enum, default_value_t = Fillers::Shared)]
    pub fillers: Fillers,

    /// Pid of the node under test: its VmRSS is sampled before the first connection and
    /// while all are held, and the growth per connection reported (with the host's
    /// MemAvailable and Slab, which are reported without it too).
    #[arg(long)]
    pub node_pid: Option<u32>,

    /// File holding a connection token (a JWT; one trailing newline stripped), sent as
    /// `Authorization: Bearer <token>` on every upgrade, for a node with `--auth`.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,

    /// Also draw this run's charts into an SVG file: its main latency spectrum, messages
    /// received per second, and (with --node-pid) RSS against open connections.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

/// `connect`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Channel to subscribe to: raw mode connects to /ws/<channel> (instead of /echo),
    /// JSON mode subscribes to it first (default: bench).
    #[arg(long)]
    pub channel: Option<String>,
}

/// `echo`.
#[derive(Args, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Message payload size in bytes (at least 16, or 32 with --text).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages per second over all connections (0: closed loop, see --pipeline).
    #[arg(long, default_value_t = 10_000.0)]
    pub msg_rate: f64,
    /// Closed loop (--msg-rate 0): messages each connection keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Send text frames (the stamp as hex digits) instead of binary ones.
    #[arg(long)]
    pub text: bool,
}

/// `broadcast`.
#[derive(Args, Debug)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Channel to subscribe to and publish on.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Who publishes.
    #[arg(long, value_enum, default_value_t = Publisher::Admin)]
    pub publisher: Publisher,
    /// Address of the node's admin API.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Bearer token for the admin API.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Publishes per second.
    #[arg(long, default_value_t = 10.0)]
    pub msg_rate: f64,
    /// Payload size in bytes (at least 16: send timestamp and sequence number).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Publish exactly this many messages, then drain (instead of for --duration).
    #[arg(long)]
    pub count: Option<u64>,
    /// Admin publisher: requests written before their answers arrive, at most (HTTP/1.1
    /// pipelining on one connection; 1 waits for each answer).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
}

/// `resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Channel the clients subscribe to and resume.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Address of the node's admin API.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Bearer token for the admin API.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Messages published while the clients are away (the node's --history-size must keep
    /// them).
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Payload size in bytes (at least 16: send timestamp and sequence number).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

/// `churn`.
#[derive(Args, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Mean life of a connection once open (each is drawn from 0.5x to 1.5x this).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub lifetime: Duration,
    /// Spread the connections over this many channels: the i-th connection opened (reopens
    /// count, so joins cycle through every channel) subscribes to `<channel>.<i mod K>`,
    /// raw mode on /ws/<channel>.<i mod K>, JSON mode through the query (default: none,
    /// raw mode on --path, /echo unless given).
    #[arg(long, value_name = "K")]
    pub channels: Option<u64>,
    /// The stem of the --channels names.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}
