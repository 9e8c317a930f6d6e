//! The node: prepares every shard (rings first, then listeners, then threads that unshare
//! their file tables), waits for signals while printing stats lines, then drains and
//! prints the final figures.
//!
//! Invariant: every ring and every listener is created before any shard unshares, so each
//! shard's table holds every ring fd (cross-ring messages name the target by fd).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admission::AddressTable;
use crate::auth::setup::NodeAuth;
use crate::auth::{AuthMode, AUTH_OFF_WARNING};
use crate::broker::{Broker, BrokerConfig};
use crate::config::Config;
use crate::fanout::Peers;
use crate::history::{History, HistoryConfig};
use crate::http::proxy::TrustedProxies;
use crate::ring::{sys, Ring, RingConfig};
use crate::shard::{self, Setup, ShardKind, Shared};
use crate::stats::{self, Counters};

/// Descriptors each file table keeps in reserve beyond connections: stdio, listeners and
/// every shard's ring fd (all present in every table).
fn reserved_fds(shards: usize) -> u64 {
    32 + 2 * shards as u64
}

/// Writes a line to stdout, ignoring a closed pipe: the node's output is informational
/// and a vanished reader (`| head`) must not take the node down.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// As `say!` without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = write!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// Admin connections held at most (publishers are few and keep their connections).
const ADMIN_CONNS_MAX: usize = 1024;

/// Connections per shard: `--max-conns` split evenly, kept below the file-table cap.
pub fn conns_per_shard(max_conns: Option<usize>, shards: usize, nofile: u64) -> (usize, bool) {
    let table_cap = nofile.saturating_sub(reserved_fds(shards)).max(1) as usize;
    match max_conns {
        None => (table_cap, false),
        Some(max) => {
            let per = max.div_ceil(shards).max(1);
            if per > table_cap {
                (table_cap, true)
            } else {
                (per, false)
            }
        }
    }
}

/// Runs the node until SIGINT or SIGTERM and a drain. Errors are user-facing messages.
pub fn run(cfg: Config) -> Result<(), String> {
    if cfg.admin_token.as_deref() == Some("") {
        return Err("--admin-token must not be empty".to_string());
    }
    let auth = NodeAuth::load(&cfg)?;
    let trusted_proxies =
        TrustedProxies::parse(&cfg.trusted_proxies).map_err(|e| format!("--trusted-proxy: {e}"))?;
    if auth.mode == AuthMode::Off {
        crate::elog!("ringpush {AUTH_OFF_WARNING}");
    }
    if !cfg.recv_buffers.is_power_of_two() {
        return Err(format!(
            "--recv-buffers {} is not a power of two",
            cfg.recv_buffers
        ));
    }
    let broker = broker_config(&cfg)?;
    let shards = cfg.shard_count();
    let nofile = sys::nofile_limit();
    let (per_shard, clamped) = conns_per_shard(cfg.max_conns, shards, nofile);
    if clamped {
        crate::elog!(
            "ringpush warn=max_conns_clamped per_shard={per_shard} \
             (RLIMIT_NOFILE={nofile} per file table; \
             use more --shards to hold more)"
        );
    }
    if !cfg.reuse_port_with_others {
        // Every listener uses SO_REUSEPORT (one per shard), which would also let this node
        // join another process's port silently and split the clients and publishes with it.
        for (addr, flag) in [(&cfg.listen, "--listen"), (&cfg.admin, "--admin")] {
            let taken = sys::someone_listens_on(addr)
                .map_err(|e| format!("probing {addr} ({flag}): {e}"))?;
            if taken {
                return Err(format!(
                    "another process already listens on {addr} ({flag}); stop it or choose \
                     another address (--reuse-port-with-others shares the port on purpose)"
                ));
            }
        }
    }
    sys::block_shutdown_signals().map_err(|e| format!("blocking signals: {e}"))?;

    // Rings first (every table copies every ring fd at its unshare), then listeners; the
    // admin shard is the last one.
    let ring_cfg = RingConfig {
        sq_entries: cfg.sq_entries,
        cq_entries: cfg.cq_entries,
    };
    let admin_ring_cfg = RingConfig {
        sq_entries: 256,
        cq_entries: 4096,
    };
    let total_shards = shards + 1;
    let mut rings = Vec::with_capacity(total_shards);
    for i in 0..total_shards {
        let rc = if i < shards {
            &ring_cfg
        } else {
            &admin_ring_cfg
        };
        rings.push(Ring::new(rc).map_err(|e| format!("shard {i}: {e}"))?);
    }
    // The broker threads' doorbell rings: created with the others, before any unshare.
    let broker_rings = match &broker {
        Some(_) => {
            let make = || Ring::new(&BROKER_RING).map_err(|e| format!("broker: {e}"));
            Some([make()?, make()?])
        }
        None => None,
    };
    let mut listeners = Vec::with_capacity(total_shards);
    let mut addr = cfg.listen;
    for i in 0..shards {
        let fd = sys::reuseport_listener(&addr).map_err(|e| format!("listening on {addr}: {e}"))?;
        if i == 0 {
            // Port 0 resolves once; every other shard joins the same port.
            addr = sys::local_addr(fd).map_err(|e| format!("getsockname: {e}"))?;
        }
        listeners.push(fd);
    }
    let admin_fd = sys::reuseport_listener(&cfg.admin)
        .map_err(|e| format!("admin listener on {}: {e}", cfg.admin))?;
    let admin_addr = sys::local_addr(admin_fd).map_err(|e| format!("getsockname: {e}"))?;
    listeners.push(admin_fd);
    let ring_fds: Vec<_> = rings.iter().map(Ring::fd).collect();

    let mut inboxes = Vec::with_capacity(total_shards);
    let mut receivers = Vec::with_capacity(total_shards);
    for _ in 0..total_shards {
        let (tx, rx) = mpsc::channel();
        inboxes.push(tx);
        receivers.push(rx);
    }
    let peers = Arc::new(Peers {
        inboxes,
        ring_fds: ring_fds.clone(),
        clients: shards,
        queued: (0..total_shards).map(|_| AtomicUsize::new(0)).collect(),
        inbox_max: cfg.max_shard_inbox as usize,
    });
    let (broker, broker_queues) = match broker {
        Some(config) => {
            let (broker, queues) = Broker::new(config, cfg.max_shard_inbox as usize);
            (Some(Arc::new(broker)), Some(queues))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        shutdown: AtomicBool::new(false),
        exited: (0..total_shards).map(|_| AtomicBool::new(false)).collect(),
        session_seq: AtomicU64::new(0),
        counters: (0..total_shards)
            .map(|_| Mutex::new(Counters::new()))
            .collect(),
        history: Arc::new(History::new(HistoryConfig {
            size: cfg.history_size,
            ttl: cfg.history_ttl,
            memory_bytes_max: cfg.history_memory,
            ..HistoryConfig::default()
        })),
        auth,
        addresses: AddressTable::new(cfg.admission()),
        trusted_proxies,
        broker,
    });
    let cores = if cfg.no_pin {
        Vec::new()
    } else {
        core_affinity::get_core_ids().unwrap_or_default()
    };
    // The shards see the bound address, so `--listen …:0` gives the demo page a real port.
    let cfg = Arc::new(Config {
        listen: addr,
        ..cfg
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(total_shards);
    for (i, (ring, inbox)) in rings.into_iter().zip(receivers).enumerate() {
        let admin = i == shards;
        let foreign_fds = listeners
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, fd)| *fd)
            .collect();
        let setup = Setup {
            index: i,
            kind: if admin {
                ShardKind::Admin
            } else {
                ShardKind::Client
            },
            ring,
            listen_fd: listeners[i],
            foreign_fds,
            conns_max: if admin { ADMIN_CONNS_MAX } else { per_shard },
            // The admin shard is not pinned: it must never sit alone on a client's core.
            core: (!cores.is_empty() && !admin).then(|| cores[i % cores.len()]),
            cfg: Arc::clone(&cfg),
            shared: Arc::clone(&shared),
            peers: Arc::clone(&peers),
            inbox,
        };
        handles.push(shard::spawn(setup, ready_tx.clone()));
    }
    drop(ready_tx);
    let mut failure = None;
    if let (Some(queues), Some(rings)) = (broker_queues, broker_rings) {
        // Before the listeners and rings are closed here: each broker thread copies this
        // file table (every ring fd) when it starts.
        if let Err(e) = crate::broker::spawn(&shared, &peers, queues, rings, &listeners) {
            failure = Some(e);
        }
    }
    for _ in 0..total_shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a shard thread died during start".to_string()),
        }
    }
    // Every shard has its own copy of the table now; the main thread's copies only keep
    // sockets and rings alive that the shards own.
    for fd in listeners.iter().chain(&ring_fds) {
        sys::close(*fd);
    }
    if let Some(e) = failure {
        // Said now, not after the other shards have stopped: they drain first.
        crate::elog!("ringpush: a shard failed to start; stopping the others");
        shared.shutdown.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let _ = join_within(handles, deadline, || {});
        return Err(e);
    }
    say!(
        "ringpush listening on {addr} admin {admin_addr} shards={shards} \
         conns_per_shard={per_shard} \
         max_conns={} echo_path={} pid={}",
        per_shard * shards,
        cfg.echo_path,
        std::process::id()
    );
    let _ = std::io::stdout().flush();

    let started = Instant::now();
    let mut stats_line = StatsLine::new(started);
    let poll = if cfg.stats_interval.is_zero() {
        Duration::from_secs(1)
    } else {
        cfg.stats_interval.min(Duration::from_secs(1))
    };
    let signal = loop {
        if let Some(sig) = sys::wait_signal(poll) {
            break sig;
        }
        stats_line.maybe_say(&cfg, &shared, Phase::Running);
    };
    if cfg.drain_spread.is_zero() {
        say!(
            "ringpush signal={signal} draining (timeout {:?})",
            cfg.drain_timeout
        );
    } else {
        say!(
            "ringpush signal={signal} draining (spread {:?}, then timeout {:?})",
            cfg.drain_spread,
            cfg.drain_timeout
        );
    }
    let _ = std::io::stdout().flush();
    shared.shutdown.store(true, Ordering::Relaxed);

    // Every shard ends by --drain-spread plus --drain-timeout plus about a second
    // (`DRAIN_REAP_TICKS`); the deadline here is a backstop, and a second signal cuts the
    // wait short. The stats lines go on during the drain, with its close rate.
    let deadline = Instant::now() + cfg.drain_spread + cfg.drain_timeout + SHUTDOWN_GRACE;
    let during_drain = || stats_line.maybe_say(&cfg, &shared, Phase::Draining);
    let (reports, left) = match join_within(handles, deadline, during_drain) {
        Joined::All(reports) => (reports, Vec::new()),
        Joined::Signal(sig, left) => {
            say!(
                "ringpush signal={sig} again: exiting at once without waiting for the drain \
                 (shards still draining: {left:?})"
            );
            say!("final uptime={}s {}", started.elapsed().as_secs(), {
                let mut sum = Counters::new();
                for c in &shared.counters {
                    sum.add(&c.lock().map(|c| c.clone()).unwrap_or_default());
                }
                sum.line()
            });
            std::process::exit(128 + sig);
        }
        Joined::Late(reports, left) => {
            crate::elog!(
                "ringpush warn=drain_overrun shards={left:?} did not stop within \
                 --drain-timeout + {SHUTDOWN_GRACE:?}; exiting without them"
            );
            (reports, left)
        }
    };
    let mut total = Counters::new();
    let mut handshake = stats::latency_histogram();
    let mut ping = stats::latency_histogram();
    let mut fanout = stats::latency_histogram();
    for report in reports {
        total.add(&report.counters);
        let _ = handshake.add(&report.handshake_us);
        let _ = ping.add(&report.ping_rtt_us);
        let _ = fanout.add(&report.fanout_us);
    }
    for &i in &left {
        // Their last published counters (every tick) stand in for their reports.
        total.add(
            &shared.counters[i]
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default(),
        );
    }
    say!(
        "final uptime={}s {}",
        started.elapsed().as_secs(),
        total.line()
    );
    say_raw!(
        "{}",
        stats::percentile_spectrum("handshake time", &handshake)
    );
    say_raw!("{}", stats::percentile_spectrum("ping round trip", &ping));
    say_raw!(
        "{}",
        stats::percentile_spectrum("fan-out latency (per shard)", &fanout)
    );
    let _ = std::io::stdout().flush();
    if !left.is_empty() {
        return Err(format!("shards {left:?} did not finish their drain"));
    }
    Ok(())
}

/// The broker threads' rings: doorbells only.
const BROKER_RING: RingConfig = RingConfig {
    sq_entries: 64,
    cq_entries: 256,
};

/// The broker's settings from `--broker*` and the history flags, checked before anything
/// starts; `None` without `--broker`.
fn broker_config(cfg: &Config) -> Result<Option<BrokerConfig>, String> {
    let Some(url) = &cfg.broker else {
        if cfg.broker_password_file.is_some() || cfg.broker_password_env.is_some() {
            return Err("--broker-password-file/-env need --broker".to_string());
        }
        return Ok(None);
    };
    let (mode, seeds) = crate::broker::cluster::parse_seeds(url)?;
    let password = match (&cfg.broker_password_file, &cfg.broker_password_env) {
        (Some(_), Some(_)) => {
            return Err("give --broker-password-file or --broker-password-env, not both".into())
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--broker-password-file {}: {e}", path.display()))?;
            Some(text.lines().next().unwrap_or("").to_string())
        }
        (None, Some(var)) => Some(
            std::env::var(var)
                .map_err(|_| format!("--broker-password-env {var}: the variable is not set"))?,
        ),
        (None, None) => None,
    };
    if password.as_deref() == Some("") {
        return Err("the broker password is empty".to_string());
    }
    if cfg.broker_timeout.is_zero() {
        return Err("--broker-timeout must be above 0".to_string());
    }
    let key_ttl_ms = cfg
        .history_ttl
        .map_or(crate::broker::KEY_TTL_DEFAULT_MS, |ttl| {
            (ttl.as_millis() as u64).max(1)
        });
    Ok(Some(BrokerConfig {
        url: url.clone(),
        mode,
        seeds,
        password,
        timeout: cfg.broker_timeout,
        history_size: cfg.history_size,
        key_ttl_ms,
    }))
}

/// How long shutdown waits for the shards beyond --drain-timeout before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How the wait for the shard threads ended.
enum Joined {
    /// Every shard finished (the reports of those that ran).
    All(Vec<shard::Report>),
    /// A SIGINT or SIGTERM arrived first; the indices of the shards still running.
    Signal(i32, Vec<usize>),
    /// The deadline passed: the reports so far and the shards still running.
    Late(Vec<shard::Report>, Vec<usize>),
}

/// Whether the node runs or drains, for the stats line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
}

/// The stats line printed every --stats-interval, with the rates since the previous one.
struct StatsLine {
    started: Instant,
    last_at: Instant,
    last_deliveries: u64,
    last_drain_closes: u64,
}

impl StatsLine {
    fn new(started: Instant) -> StatsLine {
        StatsLine {
            started,
            last_at: started,
            last_deliveries: 0,
            last_drain_closes: 0,
        }
    }

    /// Prints the line if --stats-interval has passed since the last one. While draining
    /// it ends with the drain's close rate (`drain_closes_per_s`), its closes so far and
    /// the connections a spread has yet to close.
    fn maybe_say(&mut self, cfg: &Config, shared: &Shared, phase: Phase) {
        if cfg.stats_interval.is_zero() || self.last_at.elapsed() < cfg.stats_interval {
            return;
        }
        let secs = self.last_at.elapsed().as_secs_f64();
        self.last_at = Instant::now();
        let mut sum = Counters::new();
        for c in &shared.counters {
            sum.add(&c.lock().map(|c| c.clone()).unwrap_or_default());
        }
        let rate = sum.deliveries.saturating_sub(self.last_deliveries) as f64 / secs;
        self.last_deliveries = sum.deliveries;
        let mut drain = String::new();
        if phase == Phase::Draining {
            let closes = sum.drain_closes.saturating_sub(self.last_drain_closes) as f64 / secs;
            drain = format!(
                " drain_closes_per_s={closes:.0} drain_closes={} drain_left={}",
                sum.drain_closes, sum.drain_left
            );
        }
        self.last_drain_closes = sum.drain_closes;
        say!(
            "stats t={}s rss_bytes={} deliveries_per_s={rate:.0} {}{drain}",
            self.started.elapsed().as_secs(),
            sys::rss_bytes(),
            sum.line()
        );
        let _ = std::io::stdout().flush();
    }
}

/// Joins the shard threads until `deadline`, polling so that a second signal is seen and
/// calling `between` after each poll.
fn join_within(
    mut handles: Vec<std::thread::JoinHandle<Option<shard::Report>>>,
    deadline: Instant,
    mut between: impl FnMut(),
) -> Joined {
    let mut reports = Vec::with_capacity(handles.len());
    let mut running: Vec<usize> = (0..handles.len()).collect();
    let mut slots: Vec<Option<_>> = handles.drain(..).map(Some).collect();
    loop {
        running.retain(|&i| {
            let done = slots[i].as_ref().is_some_and(|h| h.is_finished());
            if done {
                if let Some(Ok(Some(report))) = slots[i].take().map(|h| h.join()) {
                    reports.push(report);
                }
            }
            !done
        });
        if running.is_empty() {
            return Joined::All(reports);
        }
        if Instant::now() >= deadline {
            return Joined::Late(reports, running);
        }
        if let Some(sig) = sys::wait_signal(Duration::from_millis(50)) {
            return Joined::Signal(sig, running);
        }
        between();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_stays_below_each_file_table() {
        assert_eq!(conns_per_shard(None, 2, 20_000), (20_000 - 36, false));
        assert_eq!(conns_per_shard(Some(1000), 2, 20_000), (500, false));
        assert_eq!(
            conns_per_shard(Some(1_000_000), 2, 20_000),
            (20_000 - 36, true)
        );
    }
}
