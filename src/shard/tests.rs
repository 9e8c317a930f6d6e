//! Unit tests of the client shard (the skeleton with `ClientService`) on [`FakeRing`]: no
//! kernel ring, no thread. Each test builds a client shard over the fake, scripts
//! completions, runs one batch at a time (`Reactor::batch`, the body of the real loop) and
//! checks what the shard pushed and what its connections hold. The harness builds the
//! admin shard too (`shard_harness::<AdminService>`, used by `admin_tests.rs`); the
//! skeleton's own tests, with a minimal service, are in `reactor/tests.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use clap::Parser;

use super::*;
use crate::admin_service::AdminHttp;
use crate::conn::end::End;
use crate::conn::{self, Conn, State};
use crate::fanout::{Census, CensusOf, Publish, Target};
use crate::history::{History, HistoryConfig};
use crate::ring::fake::{FakeRing, Sqe, FAKE_FD_BASE};
use crate::ring::Completion;
use crate::ring::Owner;
use crate::ws::{frame, OpCode};

/// The fake listener's descriptor (never a real file: see `FAKE_FD_BASE`).
const LISTEN_FD: RawFd = FAKE_FD_BASE - 1;
/// Size of each fake provided buffer.
const BUF_BYTES: usize = 4096;
const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";
const MASK: [u8; 4] = [1, 2, 3, 4];

/// A node role the harness can build a shard of.
pub(super) trait TestRole: Role {
    /// Its kind (which index it takes among the shards).
    const KIND: ShardKind;
}

impl TestRole for WebSocket {
    const KIND: ShardKind = ShardKind::Client;
}

impl TestRole for AdminHttp {
    const KIND: ShardKind = ShardKind::Admin;
}

/// A shard over a fake ring, with the sender of its inbox and the other shards' inboxes.
pub(super) struct Harness<R: TestRole = WebSocket> {
    pub(super) shard: Reactor<FakeRing, NodeService<R>>,
    pub(super) inbox: Sender<ShardMsg>,
    /// The other shards' inboxes, by shard index (this shard's own is `None`): kept open so
    /// messages to them are queued, and readable by the test.
    pub(super) peer_inboxes: Vec<Option<Receiver<ShardMsg>>>,
}

fn harness(buffers: u16) -> Harness {
    shard_harness(1, &[], buffers)
}

/// A shard of service `S` among `clients` client shards (the admin shard comes after them),
/// configured with the command-line flags `args`, over a fake ring of `buffers` buffers.
pub(super) fn shard_harness<R: TestRole>(
    clients: usize,
    args: &[&str],
    buffers: u16,
) -> Harness<R> {
    let kind = R::KIND;
    let cfg = Arc::new(Config::parse_from(
        std::iter::once("ringpush").chain(args.iter().copied()),
    ));
    let (index, shards) = match kind {
        ShardKind::Client => (0, clients),
        ShardKind::Admin => (clients, clients + 1),
    };
    let shared = Arc::new(Shared {
        shutdown: AtomicBool::new(false),
        exited: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        session_seq: AtomicU64::new(0),
        counters: (0..shards).map(|_| Mutex::new(Counters::new())).collect(),
        history: Arc::new(History::new(HistoryConfig::default())),
        auth: NodeAuth::load(&cfg).expect("the test's auth flags load"),
        addresses: AddressTable::new(cfg.admission()),
        trusted_proxies: TrustedProxies::parse(&cfg.trusted_proxies)
            .expect("the test's proxy flags parse"),
        broker: None,
    });
    let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            (tx, Some(rx))
        })
        .unzip();
    let rx = receivers[index].take().expect("this shard's inbox");
    let tx = senders[index].clone();
    let peers = Peers {
        inboxes: senders,
        ring_fds: (0..shards).map(|i| FAKE_FD_BASE - 2 - i as RawFd).collect(),
        clients,
        queued: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        inbox_max: 16,
    };
    let core = Core::new(index, LISTEN_FD, 16, cfg, shared).with_peers(Arc::new(peers), rx);
    let mut shard = Reactor::new(FakeRing::new(buffers, BUF_BYTES), NodeService::new(core));
    shard.ring.accept_multi(LISTEN_FD);
    shard.service.core.accept_armed = true;
    Harness {
        shard,
        inbox: tx,
        peer_inboxes: receivers,
    }
}

impl<R: TestRole> Harness<R> {
    /// Accepts one socket and returns the owner its recv was armed for.
    pub(super) fn connect(&mut self) -> Owner {
        let fd = self.shard.ring.accept();
        self.shard.batch();
        match self.shard.ring.pushed.last() {
            Some(Sqe::Recv { fd: armed, owner }) if *armed == fd => *owner,
            other => panic!("expected a recv armed for fd {fd}, got {other:?}"),
        }
    }

    /// Connects and upgrades one socket to /echo; returns its owner and the 101 (still in
    /// flight: the test completes it).
    fn upgraded(&mut self) -> (Owner, Bytes) {
        self.upgraded_to(REQUEST)
    }

    /// Connects and upgrades one socket with `request`.
    fn upgraded_to(&mut self, request: &[u8]) -> (Owner, Bytes) {
        let owner = self.connect();
        self.shard.ring.recv(owner, request);
        self.shard.batch();
        let response = self
            .shard
            .ring
            .send_pending(owner)
            .expect("the 101 is sent");
        assert!(response.starts_with(b"HTTP/1.1 101"));
        (owner, response)
    }

    pub(super) fn conn(&self, owner: Owner) -> &Conn {
        let core = &self.shard.service.core;
        assert!(core.live(owner), "{owner:?} is not live");
        &core.conns[owner.key as usize]
    }

    /// The Recv SQEs pushed since the log was last cleared.
    fn recvs_pushed(&self) -> Vec<Owner> {
        let recvs = self.shard.ring.pushed.iter().filter_map(|sqe| match sqe {
            Sqe::Recv { owner, .. } => Some(*owner),
            _ => None,
        });
        recvs.collect()
    }
}

fn text(payload: &[u8]) -> Bytes {
    frame::encode_masked(OpCode::Text, payload, MASK)
}

#[test]
fn upgrade_then_echo_round_trip() {
    let mut h = harness(8);
    let (owner, response) = h.upgraded();
    assert_eq!(
        h.shard.ring.send_done(owner, response.len() as i32),
        response
    );
    h.shard.batch();
    assert_eq!(h.shard.ring.sends_of(owner), 0, "nothing else to send");
    assert_eq!(h.conn(owner).state, State::Open);

    h.shard.ring.recv(owner, &text(b"hello"));
    h.shard.batch();
    let echoed = h.shard.ring.send_pending(owner).expect("the echo is sent");
    assert_eq!(echoed, frame::encode(OpCode::Text, b"hello"));
    h.shard.ring.send_done(owner, echoed.len() as i32);
    h.shard.batch();
    assert_eq!(h.shard.ring.sends_of(owner), 0);
    assert_eq!(h.shard.service.core.counters.upgraded, 1);
    assert_eq!(
        h.shard.ring.buffers_free(),
        8,
        "every buffer went back to the ring"
    );
}

#[test]
fn completions_are_handled_in_order_within_a_batch() {
    let mut h = harness(8);
    let owner = h.connect();
    h.shard.ring.pushed.clear();
    // Three completions in one batch: the request split in two, then a frame. Only handled
    // in this order do they upgrade and then echo.
    let (head, tail) = REQUEST.split_at(20);
    h.shard.ring.recv(owner, head);
    h.shard.ring.recv(owner, tail);
    h.shard.ring.recv(owner, &text(b"one"));
    h.shard.batch();
    // All replies to one batch leave in one send: the 101, then the echo.
    let sends: Vec<&Sqe> = (h.shard.ring.pushed.iter())
        .filter(|sqe| matches!(sqe, Sqe::Send { .. }))
        .collect();
    assert_eq!(sends.len(), 1, "one send per connection per batch");
    let out = h.shard.ring.send_pending(owner).expect("a send in flight");
    let echo = frame::encode(OpCode::Text, b"one");
    assert!(out.starts_with(b"HTTP/1.1 101"));
    assert!(out.ends_with(&echo));
}

#[test]
fn a_short_send_resumes_at_its_offset_and_frames_keep_their_order() {
    let mut h = harness(8);
    let (owner, response) = h.upgraded();
    // While the 101 is in flight, two frames arrive and their echoes queue behind it.
    h.shard.ring.recv(owner, &text(b"first"));
    h.shard.ring.recv(owner, &text(b"second"));
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&h.shard.ring.send_done(owner, 10));
    h.shard.batch();
    h.shard.ring.pushed.clear();
    assert_eq!(h.shard.ring.sends_of(owner), 1, "one send at a time");
    let rest = h.shard.ring.send_pending(owner).expect("the resumed send");
    assert_eq!(
        rest,
        response.slice(10..),
        "resumed where the kernel stopped"
    );
    // Another short send of the resumed part, then the rest.
    wire.extend_from_slice(&h.shard.ring.send_done(owner, 5));
    h.shard.batch();
    let rest = h.shard.ring.send_pending(owner).expect("the resumed send");
    wire.extend_from_slice(&h.shard.ring.send_done(owner, rest.len() as i32));
    h.shard.batch();
    // Then the two echoes, in order.
    while let Some(next) = h.shard.ring.send_pending(owner) {
        wire.extend_from_slice(&h.shard.ring.send_done(owner, next.len() as i32));
        h.shard.batch();
    }
    let mut expected = BytesMut::from(&response[..]);
    expected.extend_from_slice(&frame::encode(OpCode::Text, b"first"));
    expected.extend_from_slice(&frame::encode(OpCode::Text, b"second"));
    assert_eq!(wire, expected);
    assert_eq!(
        h.shard.service.core.counters.bytes_out,
        expected.len() as u64
    );
}

#[test]
fn enobufs_starves_and_rearms_within_the_buffer_budget_losing_no_data() {
    // Four buffers: the shard re-arms at most one starved recv per batch.
    let mut h = harness(4);
    let owners: Vec<Owner> = (0..3).map(|_| h.connect()).collect();
    h.shard.ring.pushed.clear();
    let (head, tail) = REQUEST.split_at(30);
    for &owner in &owners {
        h.shard.ring.recv(owner, head);
        h.shard.ring.recv_end(owner, -libc::ENOBUFS);
    }
    h.shard.batch();
    assert_eq!(h.shard.service.core.counters.enobufs, 3);
    assert_eq!(
        h.recvs_pushed(),
        vec![owners[0]],
        "the oldest first, one per batch"
    );
    assert!(!h.conn(owners[0]).has(conn::STARVED));
    assert!(h.conn(owners[1]).has(conn::STARVED));
    assert!(h.conn(owners[2]).has(conn::STARVED));
    h.shard.batch();
    assert_eq!(h.recvs_pushed(), vec![owners[0], owners[1]]);
    h.shard.batch();
    assert_eq!(h.recvs_pushed(), owners);
    for &owner in &owners {
        assert!(h.conn(owner).has(conn::RECV_ARMED));
        assert!(!h.conn(owner).has(conn::STARVED));
    }
    // The halves received before the ENOBUFS were kept: the rest completes each upgrade.
    for &owner in &owners {
        h.shard.ring.recv(owner, tail);
        h.shard.batch();
        let response = h.shard.ring.send_pending(owner).expect("the 101");
        assert!(response.starts_with(b"HTTP/1.1 101"));
    }
    assert_eq!(h.shard.service.core.counters.upgraded, 3);
}

#[test]
fn a_stale_generation_is_dropped_and_never_touches_the_new_occupant() {
    let mut h = harness(8);
    let (old, response) = h.upgraded();
    // The old connection is reset: its send fails, then its recv ends.
    h.shard.ring.send_done(old, -libc::ECONNRESET);
    h.shard.batch();
    assert!(h.shard.service.core.live(old), "the recv is still armed");
    h.shard.ring.recv_end(old, 0);
    h.shard.batch();
    assert!(!h.shard.service.core.live(old), "the slot is freed");
    let new = h.connect();
    assert_eq!(new.key, old.key, "the slot is reused");
    assert_ne!(new.gen, old.gen);
    let bytes_in = h.shard.service.core.counters.bytes_in;
    h.shard.ring.pushed.clear();
    // Late completions for the old occupant: data, a send, the end of its recv.
    h.shard.ring.recv(old, &text(b"stale"));
    h.shard.ring.complete(Completion::Send {
        owner: old,
        res: response.len() as i32,
        frame: response,
        offset: 0,
    });
    h.shard.ring.recv_end(old, 0);
    h.shard.batch();
    assert_eq!(
        h.shard.service.core.counters.bytes_in, bytes_in,
        "no byte reached the new one"
    );
    assert!(
        h.shard.ring.pushed.is_empty(),
        "nothing was pushed for either"
    );
    let c = h.conn(new);
    assert_eq!(c.state, State::Handshake);
    assert!(c.has(conn::RECV_ARMED));
    assert!(!c.has(conn::SEND_INFLIGHT));
    assert_eq!(
        h.shard.ring.buffers_free(),
        8,
        "the stale data's buffer went back"
    );
    // The new occupant still works.
    h.shard.ring.recv(new, REQUEST);
    h.shard.batch();
    assert!(h.shard.ring.send_pending(new).is_some());
}

#[test]
fn a_drain_frees_no_slot_until_its_send_and_recv_complete() {
    let mut h = harness(8);
    let (owner, response) = h.upgraded();
    let key = owner.key as usize;
    // The main thread asks for shutdown; the next tick starts the drain.
    h.shard
        .service
        .core
        .shared
        .shutdown
        .store(true, Ordering::Relaxed);
    h.shard.ring.tick_expired();
    h.shard.batch();
    assert!(h.shard.service.core.draining.is_some());
    assert_eq!(
        h.conn(owner).state,
        State::Closing,
        "a close frame is queued"
    );
    assert!(
        h.conn(owner).has(conn::SEND_INFLIGHT),
        "the 101 is still in flight"
    );
    // The drain deadline passes: the connection is aborted with both ops in the kernel.
    h.shard.service.core.end(key, End::DrainAbort);
    assert_eq!(h.shard.service.core.conns[key].state, State::Dead);
    assert!(
        h.shard.service.core.live(owner),
        "not freed while the send is in flight"
    );
    h.shard.ring.send_done(owner, response.len() as i32);
    h.shard.batch();
    assert!(
        h.shard.service.core.live(owner),
        "not freed while the recv is armed"
    );
    assert_eq!(
        h.shard.ring.sends_of(owner),
        0,
        "nothing sent after the abort"
    );
    h.shard.ring.recv_end(owner, 0);
    h.shard.batch();
    assert!(
        !h.shard.service.core.live(owner),
        "freed once nothing is in flight"
    );
    assert_eq!(h.shard.service.core.counters.open, 0);
    assert!(
        crate::reactor::Service::<FakeRing>::finished(&h.shard.service),
        "the drained shard is done"
    );
    assert_eq!(h.shard.ring.in_flight().sends, 0);
    assert_eq!(h.shard.ring.in_flight().recvs, 0);
}

#[test]
fn a_doorbell_with_an_empty_inbox_is_harmless_and_a_failed_tick_is_counted() {
    let mut h = harness(8);
    h.shard.ring.doorbell();
    h.shard.ring.complete(Completion::Tick {
        res: -libc::EINVAL,
        more: false,
    });
    h.shard.batch();
    assert_eq!(h.shard.service.core.counters.tick_errors, 1);
}

#[test]
fn a_doorbell_delivers_a_publish_to_the_channel_subscribers_only() {
    let mut h = harness(8);
    let channel_request = String::from_utf8(REQUEST.to_vec())
        .expect("ASCII")
        .replace("/echo", "/ws/news");
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let (owner, response) = h.upgraded_to(channel_request.as_bytes());
        h.shard.ring.send_done(owner, response.len() as i32);
        subscribers.push(owner);
    }
    let (echo, response) = h.upgraded();
    h.shard.ring.send_done(echo, response.len() as i32);
    h.shard.batch();
    assert_eq!(h.shard.service.core.counters.subscriptions, 2);
    // Another shard queues a publish, then rings this shard's doorbell.
    let frame = frame::encode(OpCode::Text, b"news");
    let publish = Publish {
        target: Target::Channel("news".into()),
        frame: frame.clone(),
        accepted: Instant::now(),
        origin: None,
        position: None,
        json: Default::default(),
        brokered: false,
    };
    h.shard.service.core.peers.queued[0].fetch_add(1, Ordering::Relaxed);
    h.inbox
        .send(ShardMsg::Publish(Arc::new(publish)))
        .expect("the inbox is open");
    h.shard.ring.doorbell();
    h.shard.batch();
    for &owner in &subscribers {
        assert_eq!(h.shard.ring.send_pending(owner), Some(frame.clone()));
    }
    assert_eq!(
        h.shard.ring.send_pending(echo),
        None,
        "the echo connection subscribed to nothing"
    );
    assert_eq!(
        h.shard.service.core.peers.queued[0].load(Ordering::Relaxed),
        0
    );
}

#[test]
fn an_eof_before_the_upgrade_frees_the_slot_at_once() {
    let mut h = harness(8);
    let owner = h.connect();
    h.shard.ring.recv(owner, &REQUEST[..10]);
    h.shard.ring.recv_end(owner, 0);
    h.shard.batch();
    assert!(
        !h.shard.service.core.live(owner),
        "nothing of it is in flight any more"
    );
    assert_eq!(h.shard.service.core.counters.open, 0);
    assert_eq!(h.shard.ring.in_flight().recvs, 0);
    assert_eq!(h.shard.ring.buffers_free(), 8);
}

#[test]
fn a_census_is_answered_with_the_local_subscriber_counts() {
    // Client shard 0; the inbox of shard 1, read by the test, stands for the admin shard.
    let mut h: Harness = shard_harness(2, &[], 8);
    for channel in ["r.b", "r.a", "r.b", "news"] {
        let request = String::from_utf8(REQUEST.to_vec())
            .expect("ASCII")
            .replace("/echo", &format!("/ws/{channel}"));
        let (owner, response) = h.upgraded_to(request.as_bytes());
        h.shard.ring.send_done(owner, response.len() as i32);
    }
    h.shard.batch();
    let ask = |h: &mut Harness, of| {
        h.shard.service.core.peers.queued[0].fetch_add(1, Ordering::Relaxed);
        let census = Census { of, origin: (1, 7) };
        h.inbox
            .send(ShardMsg::Census(Arc::new(census)))
            .expect("the inbox is open");
        h.shard.ring.doorbell();
        h.shard.batch();
        let admin = h.peer_inboxes[1].as_ref().expect("the admin shard's inbox");
        match admin.try_recv() {
            Ok(ShardMsg::CensusReply {
                id: 7,
                from: 0,
                channels,
                truncated,
            }) => (channels, truncated),
            other => panic!("expected a census reply, got {other:?}"),
        }
    };
    let of = CensusOf::Prefix {
        prefix: "r.".into(),
        limit: 1,
    };
    let (channels, truncated) = ask(&mut h, of);
    assert_eq!(channels, [("r.a".into(), 1)]);
    assert!(truncated, "r.b matched too");
    let (channels, truncated) = ask(&mut h, CensusOf::One("r.b".into()));
    assert_eq!((channels, truncated), (vec![("r.b".into(), 2)], false));
    assert_eq!(
        h.shard.service.core.peers.queued[0].load(Ordering::Relaxed),
        0,
        "each census gave its inbox place back"
    );
}
