//! `floor-connect`: the connect floor's client. It opens N plain TCP connections (no byte
//! sent) to a `floor-server --handshake none` through io_uring connects from `--workers`
//! threads, each with its own file table, waits until the server has accepted them all
//! (its `GET /stats`), holds them for --hold while the kernel's memory is sampled, and
//! prints one JSON line: the connect rate and the kernel memory per loopback pair.
//!
//! Invariants:
//! - Every socket stays open until the memory has been sampled: the workers hold theirs
//!   until the main thread releases them.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Args;
use ringpush::ring::{sys, Completion, Owner, Ring, RingConfig};

use super::kmem;

/// Options of `floor-connect`.
#[derive(Args, Debug, Clone)]
pub struct FloorConnectArgs {
    /// The floor server's listener.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub addr: SocketAddr,

    /// The floor server's admin listener (`GET /stats` counts what it accepted).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub stats: SocketAddr,

    /// Connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,

    /// Worker threads (default: enough file tables for -n).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Source address ranges (`127.0.1.1-127.0.1.254`), round-robin by connection.
    #[arg(long = "source")]
    pub sources: Vec<String>,

    /// Connects in flight per worker at most.
    #[arg(long, default_value_t = 512)]
    pub in_flight: usize,

    /// How long every connection is held before the memory sample.
    #[arg(long, value_parser = ringpush::config::parse_duration, default_value = "1s")]
    pub hold: Duration,
}

/// Runs the connect floor and prints its JSON line.
pub fn run(args: &FloorConnectArgs) -> Result<(), String> {
    if args.connections == 0 || args.in_flight == 0 {
        return Err("-n and --in-flight must be at least 1".into());
    }
    let mut sources = Vec::new();
    for spec in &args.sources {
        crate::addr::parse_source_range(spec, &mut sources)?;
    }
    let per_table = (sys::nofile_limit() as usize).saturating_sub(crate::plan::RESERVED_FDS);
    let workers = args
        .workers
        .unwrap_or_else(|| args.connections.div_ceil(per_table.max(1)))
        .max(1);
    if args.connections.div_ceil(workers) > per_table {
        return Err(format!(
            "{workers} workers hold at most {per_table} sockets each"
        ));
    }
    let sources = Arc::new(sources);
    let before = kmem::sample();
    let release = Arc::new(Barrier::new(workers + 1));
    let (done_tx, done_rx) = mpsc::channel();
    let started = Instant::now();
    for w in 0..workers {
        let share: Vec<usize> = (w..args.connections).step_by(workers).collect();
        let (args, sources, release, done) = (
            args.clone(),
            Arc::clone(&sources),
            Arc::clone(&release),
            done_tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("floor-connect-{w}"))
            .spawn(move || {
                let held = connect_share(&args, &sources, &share);
                let _ = done.send(held.as_ref().map(|h| h.1).map_err(Clone::clone));
                release.wait();
                drop(held);
            })
            .map_err(|e| format!("spawning a worker: {e}"))?;
    }
    drop(done_tx);
    let mut failed = 0u64;
    for result in done_rx.iter().take(workers) {
        failed += result?;
    }
    let connected = started.elapsed();
    let opened = args.connections as u64 - failed;
    let accepted = wait_accepted(args.stats, opened, Duration::from_secs(60))?;
    let accepted_at = started.elapsed();
    std::thread::sleep(args.hold);
    let after = kmem::sample();
    release.wait();
    let json = serde_json::json!({
        "scenario": "floor-connect",
        "connections": opened,
        "failed": failed,
        "accepted": accepted,
        "connect_s": connected.as_secs_f64(),
        "accept_s": accepted_at.as_secs_f64(),
        "connects_per_s": opened as f64 / accepted_at.as_secs_f64().max(1e-9),
        "kernel_per_pair": kmem::growth(&before, &after, opened),
    });
    println!("{json}");
    Ok(())
}

/// Connects one worker's share; returns the sockets and the connects that failed.
fn connect_share(
    args: &FloorConnectArgs,
    sources: &[IpAddr],
    share: &[usize],
) -> Result<(Vec<socket2::Socket>, u64), String> {
    sys::unshare_file_table().map_err(|e| format!("unshare(CLONE_FILES): {e}"))?;
    let cfg = RingConfig {
        sq_entries: 1024,
        cq_entries: 4096,
    };
    let mut ring = Ring::new(&cfg).map_err(|e| e.to_string())?;
    ring.enable()
        .map_err(|e| format!("enabling the ring: {e}"))?;
    let mut sockets = Vec::with_capacity(share.len());
    let (mut next, mut in_flight, mut failed) = (0, 0, 0u64);
    let mut done = Vec::new();
    while next < share.len() || in_flight > 0 {
        while next < share.len() && in_flight < args.in_flight {
            let index = share[next];
            next += 1;
            let source = (!sources.is_empty()).then(|| sources[index % sources.len()]);
            match open(source, &args.addr) {
                Ok(socket) => {
                    let owner = Owner {
                        key: sockets.len() as u32,
                        gen: 0,
                    };
                    ring.connect(socket.as_raw_fd(), &args.addr, owner);
                    sockets.push(socket);
                    in_flight += 1;
                }
                Err(_) => failed += 1,
            }
        }
        ring.submit_and_wait()
            .map_err(|e| format!("io_uring enter: {e}"))?;
        ring.reap(&mut done);
        for completion in done.drain(..) {
            if let Completion::Connect { res, .. } = completion {
                in_flight -= 1;
                if res < 0 {
                    failed += 1;
                }
            }
        }
    }
    Ok((sockets, failed))
}

/// A non-blocking TCP socket bound to `source` (any port) when given.
fn open(source: Option<IpAddr>, dest: &SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*dest),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_nonblocking(true)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(socket)
}

/// Polls the floor server's `GET /stats` until it counts `n` connections.
fn wait_accepted(stats: SocketAddr, n: u64, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = stats_connections(stats).map_err(|e| format!("GET /stats: {e}"))?;
        if seen >= n || Instant::now() >= deadline {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn stats_connections(stats: SocketAddr) -> std::io::Result<u64> {
    let mut stream = TcpStream::connect(stats)?;
    stream.write_all(b"GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    let mut buf = [0u8; 512];
    while !text.contains('}') {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["connections"].as_u64())
        .ok_or_else(|| std::io::Error::other("no connections count in /stats"))
}
