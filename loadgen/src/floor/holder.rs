//! One floor holder: its own file table and listener, an acceptor thread that shares the
//! table, and the sends of every publish to the clients it holds.
//!
//! Invariants:
//! - The holder and its acceptor are the only threads of this file table, so every fd
//!   either of them names is valid for the other and for this holder's ring.
//! - A publish is reported only once each of its sends has completed in full (short sends
//!   are sent on from where they stopped) or failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use clap::ValueEnum;
use ringpush::http::handshake::{self, write_switching_protocols};
use ringpush::ring::{sys, Completion, Owner, Ring, RingConfig};

use super::{FloorServerArgs, Handshake, Publish};

/// How a publish reaches the clients.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// One blocking send(2) per client, in accept order.
    Plain,
    /// Every send queued as an SQE of the holder's io_uring, submitted in batches.
    Uring,
}

/// The holder's ring sizes: one CQ holds a whole holder's burst (a file table's worth).
const RING: RingConfig = RingConfig {
    sq_entries: 4096,
    cq_entries: 32_768,
};

/// Starts holder `index`; it reports on `ready` once its listener is open.
pub fn spawn(
    index: usize,
    args: FloorServerArgs,
    publishes: mpsc::Receiver<Publish>,
    connections: Arc<AtomicU64>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let spawned = std::thread::Builder::new()
        .name(format!("floor-holder-{index}"))
        .spawn(move || {
            let started = start(&args, connections);
            let (accepted, mut ring) = match started {
                Ok(parts) => {
                    let _ = ready.send(Ok(()));
                    parts
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mut streams: Vec<TcpStream> = Vec::new();
            while let Ok(publish) = publishes.recv() {
                streams.extend(accepted.try_iter());
                let failed = match ring.as_mut() {
                    Some(ring) => send_uring(ring, &streams, &publish.frame),
                    None => send_plain(&streams, &publish.frame),
                };
                let _ = publish.done.send((streams.len() as u64, failed));
            }
        });
    if let Err(e) = spawned {
        ringpush::elog!("floor-server: spawning holder {index}: {e}");
    }
}

/// Unshares the file table, opens the listener (and the ring) and starts the acceptor.
fn start(
    args: &FloorServerArgs,
    connections: Arc<AtomicU64>,
) -> Result<(mpsc::Receiver<TcpStream>, Option<Ring>), String> {
    sys::unshare_file_table().map_err(|e| format!("unshare(CLONE_FILES): {e}"))?;
    let listener = reuseport_listener(args.listen).map_err(|e| format!("{}: {e}", args.listen))?;
    let ring = match args.send {
        SendMode::Plain => None,
        SendMode::Uring => {
            let ring = Ring::new(&RING).map_err(|e| e.to_string())?;
            ring.enable()
                .map_err(|e| format!("enabling the ring: {e}"))?;
            Some(ring)
        }
    };
    let (tx, rx) = mpsc::channel();
    let handshake = args.handshake;
    // A thread spawned from here shares this thread's (unshared) file table.
    std::thread::Builder::new()
        .name("floor-acceptor".into())
        .spawn(move || accept_loop(&listener, handshake, &tx, &connections))
        .map_err(|e| format!("spawning an acceptor: {e}"))?;
    Ok((rx, ring))
}

/// A blocking SO_REUSEPORT listener, so that every holder owns one on the same port.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn accept_loop(
    listener: &TcpListener,
    handshake: Handshake,
    out: &mpsc::Sender<TcpStream>,
    connections: &AtomicU64,
) {
    let cfg = handshake::Config::default();
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        if handshake == Handshake::Ws && upgrade(&mut stream, &cfg, &mut buf).is_err() {
            continue;
        }
        connections.fetch_add(1, Ordering::Relaxed);
        if out.send(stream).is_err() {
            return;
        }
    }
}

/// Reads the upgrade request and answers 101; an invalid request closes the stream.
fn upgrade(stream: &mut TcpStream, cfg: &handshake::Config, buf: &mut Vec<u8>) -> Result<(), ()> {
    stream.set_nodelay(true).map_err(drop)?;
    buf.clear();
    let mut chunk = [0u8; 1024];
    let upgrade = loop {
        let n = stream.read(&mut chunk).map_err(drop)?;
        if n == 0 {
            return Err(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake::parse_request(buf, cfg, |_| Ok(())) {
            Ok(Some(upgrade)) => break upgrade,
            Ok(None) => {}
            Err(_) => return Err(()),
        }
    };
    let mut response = Vec::with_capacity(160);
    write_switching_protocols(&mut response, &upgrade.accept, None);
    stream.write_all(&response).map_err(drop)
}

/// One send(2) per client (std's write on a socket is send with MSG_NOSIGNAL); returns the
/// sends that failed.
fn send_plain(streams: &[TcpStream], frame: &[u8]) -> u64 {
    let mut failed = 0;
    for mut stream in streams {
        if stream.write_all(frame).is_err() {
            failed += 1;
        }
    }
    failed
}

/// Every send queued on the ring (the ring submits when its SQ fills), then completions
/// reaped until each send is whole; returns the sends that failed.
fn send_uring(ring: &mut Ring, streams: &[TcpStream], frame: &Bytes) -> u64 {
    for (key, stream) in streams.iter().enumerate() {
        let owner = Owner {
            key: key as u32,
            gen: 0,
        };
        ring.send(stream.as_raw_fd(), owner, frame.clone(), 0);
    }
    let mut pending = streams.len();
    let mut failed = 0;
    let mut done = Vec::new();
    while pending > 0 {
        if ring.submit_and_wait().is_err() {
            return failed + pending as u64;
        }
        ring.reap(&mut done);
        for completion in done.drain(..) {
            let Completion::Send {
                owner,
                res,
                frame,
                offset,
            } = completion
            else {
                continue;
            };
            let sent = offset + res.max(0) as usize;
            if res > 0 && sent < frame.len() {
                let fd = streams[owner.key as usize].as_raw_fd();
                ring.send(fd, owner, frame, sent);
                continue;
            }
            pending -= 1;
            if res <= 0 {
                failed += 1;
            }
        }
    }
    failed
}
