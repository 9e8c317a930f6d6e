//! `floor-server`: the floor the node is measured against. It accepts and upgrades
//! WebSocket clients with the node's own handshake and codec functions, holds them, and on
//! each admin `POST /publish/<channel>` sends one pre-encoded binary frame of the body to
//! every client and nothing else: no channels, no queues, no metrics. `--send plain` sends
//! with one blocking `send(2)` per client; `--send uring` queues every send of a holder as
//! SQEs of one io_uring (the node's `Ring`) and submits them in batches. With
//! `--handshake none` it only accepts and holds (the connect floor; no byte is read).
//!
//! Layout: `--threads` holders, each with its own file table (`unshare(CLONE_FILES)`, so
//! that more than RLIMIT_NOFILE sockets fit) and its own SO_REUSEPORT listener; each holder
//! spawns one acceptor thread that shares its table, accepts and upgrades, and hands the
//! stream over. One admin thread answers `POST /publish/<channel>` (200 with
//! `{"subscribers":N}` once every holder has sent) and `GET /stats` (`{"connections":N}`).
//!
//! Invariants:
//! - A socket is only ever used by threads of the file table it was accepted into.
//! - The publish answer is written after every holder has handed every send to the kernel,
//!   as the node answers after every shard has queued the frame.

mod admin;
pub mod connect;
mod holder;
mod kmem;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};

use clap::{Args, ValueEnum};
use ringpush::ring::sys;

pub use holder::SendMode;

/// What a holder does with a connection once accepted.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Read the upgrade request and answer 101 (the fan-out floor).
    Ws,
    /// Accept and hold; read nothing (the connect and memory floors).
    None,
}

/// Options of `floor-server`.
#[derive(Args, Debug, Clone)]
pub struct FloorServerArgs {
    /// The WebSocket (or plain TCP) listener.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// The admin listener (`POST /publish/<channel>`, `GET /stats`).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub admin: SocketAddr,

    /// How a publish is sent: plain send(2) per client, or batched io_uring sends.
    #[arg(long, value_enum, default_value_t = SendMode::Plain)]
    pub send: SendMode,

    /// Upgrade clients (ws) or only accept them (none).
    #[arg(long, value_enum, default_value_t = Handshake::Ws)]
    pub handshake: Handshake,

    /// Holder threads, each with its own file table and listener (the node's --shards).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// A publish handed to every holder: the encoded frame and where to report.
pub struct Publish {
    /// The whole WebSocket frame, encoded once.
    pub frame: bytes::Bytes,
    /// Each holder answers with the clients it sent to and the sends that failed.
    pub done: mpsc::Sender<(u64, u64)>,
}

/// Runs the floor server until SIGINT or SIGTERM.
pub fn serve(args: &FloorServerArgs) -> Result<(), String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    sys::block_shutdown_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let connections = Arc::new(AtomicU64::new(0));
    let mut holders = Vec::with_capacity(args.threads);
    let (ready_tx, ready_rx) = mpsc::channel();
    for index in 0..args.threads {
        let (tx, rx) = mpsc::channel::<Publish>();
        holder::spawn(
            index,
            args.clone(),
            rx,
            Arc::clone(&connections),
            ready_tx.clone(),
        );
        holders.push(tx);
    }
    drop(ready_tx);
    for _ in 0..args.threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a holder thread died during start".into()),
        }
    }
    let admin = std::net::TcpListener::bind(args.admin)
        .map_err(|e| format!("--admin {}: {e}", args.admin))?;
    let counted = Arc::clone(&connections);
    std::thread::Builder::new()
        .name("floor-admin".into())
        .spawn(move || admin::serve(admin, holders, counted))
        .map_err(|e| format!("spawning the admin thread: {e}"))?;
    ringpush::elog!(
        "floor-server listen={} admin={} send={:?} handshake={:?} threads={} pid={}",
        args.listen,
        args.admin,
        args.send,
        args.handshake,
        args.threads,
        std::process::id()
    );
    loop {
        if sys::wait_signal(std::time::Duration::from_millis(200)).is_some() {
            ringpush::elog!(
                "floor-server stopping connections={}",
                connections.load(std::sync::atomic::Ordering::Relaxed)
            );
            return Ok(());
        }
    }
}
