//! Unit tests of the reactor skeleton on [`FakeRing`], with a minimal echo service that
//! records every event it is handed: the skeleton alone decides the order of events, short
//! sends, ENOBUFS re-arms, stale generations and when a dead slot may be freed, whatever the
//! service. (The node's services have their own tests in `shard/tests.rs` and
//! `shard/admin_tests.rs`.)

use std::os::fd::RawFd;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::ring::fake::{FakeRing, Sqe, FAKE_FD_BASE};

/// One echo connection.
struct Echo {
    fd: RawFd,
    gen: u32,
    flags: u16,
    dead: bool,
    /// Bytes to echo, not yet handed to a send.
    queued: BytesMut,
}

impl Slot for Echo {
    fn fd(&self) -> RawFd {
        self.fd
    }
    fn gen(&self) -> u32 {
        self.gen
    }
    fn flags(&self) -> u16 {
        self.flags
    }
    fn flags_mut(&mut self) -> &mut u16 {
        &mut self.flags
    }
    fn is_dead(&self) -> bool {
        self.dead
    }
}

/// What the service was handed, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Data(usize, Vec<u8>),
    RecvEnd(usize, i32),
    Sent(usize, Vec<u8>),
    SendFailed(usize, i32),
    Dropped(Vec<u8>),
    Released(usize),
    Count(IoEvent),
}

#[derive(Default)]
struct EchoService {
    conns: Conns<Echo>,
    seen: Vec<Seen>,
}

impl EchoService {
    /// Ends `key` on the service's initiative: dead at once, freed once nothing is in flight.
    fn kill(&mut self, key: usize) {
        self.conns[key].dead = true;
        self.free_if_idle(key);
    }

    fn free_if_idle(&mut self, key: usize) {
        if !self.conns.has(key, RECV_ARMED | SEND_INFLIGHT) {
            self.conns.remove(key);
        }
    }
}

impl Service<FakeRing> for EchoService {
    type Conn = Echo;

    fn conns(&mut self) -> &mut Conns<Echo> {
        &mut self.conns
    }

    fn on_data(&mut self, key: usize, data: &mut [u8]) {
        self.seen.push(Seen::Data(key, data.to_vec()));
        self.conns[key].queued.extend_from_slice(data);
        self.conns.mark_dirty(key);
    }

    fn on_recv_end(&mut self, key: usize, res: i32) {
        self.seen.push(Seen::RecvEnd(key, res));
        self.kill(key);
    }

    fn on_sent(&mut self, key: usize, frame: Bytes) {
        self.seen.push(Seen::Sent(key, frame.to_vec()));
    }

    fn on_send_failed(&mut self, key: usize, res: i32, _frame: Bytes) {
        self.seen.push(Seen::SendFailed(key, res));
        self.kill(key);
    }

    fn on_send_dropped(&mut self, frame: Bytes) {
        self.seen.push(Seen::Dropped(frame.to_vec()));
    }

    fn release(&mut self, key: usize) {
        self.seen.push(Seen::Released(key));
        self.free_if_idle(key);
    }

    fn next_send(&mut self, key: usize) -> Option<Bytes> {
        let queued = &mut self.conns[key].queued;
        (!queued.is_empty()).then(|| queued.split().freeze())
    }

    fn count(&mut self, event: IoEvent) {
        self.seen.push(Seen::Count(event));
    }

    fn on_accept(&mut self, res: i32, _more: bool) -> Option<Owner> {
        let gen = self.conns.next_gen();
        let key = self.conns.insert(Echo {
            fd: res,
            gen,
            flags: 0,
            dead: false,
            queued: BytesMut::new(),
        });
        Some(self.conns.owner(key))
    }

    fn on_tick(&mut self, _res: i32, _more: bool, _mode: TickMode) {}

    fn on_ring_event(&mut self, _completion: Completion) {}

    fn before_flush(&mut self, _ring: &mut FakeRing) {}

    fn finished(&self) -> bool {
        false
    }

    fn on_ring_error(&mut self, _error: io::Error) {}
}

fn reactor(buffers: u16) -> Reactor<FakeRing, EchoService> {
    Reactor::new(FakeRing::new(buffers, 64), EchoService::default())
}

/// Accepts one socket; returns the owner whose recv the skeleton armed.
fn connect(r: &mut Reactor<FakeRing, EchoService>) -> Owner {
    let fd = r.ring.accept();
    r.batch();
    match r.ring.pushed.last() {
        Some(Sqe::Recv { fd: armed, owner }) if *armed == fd => *owner,
        other => panic!("expected a recv armed for fd {fd}, got {other:?}"),
    }
}

#[test]
fn a_batch_is_handed_over_in_completion_order_and_flushed_in_one_send() {
    let mut r = reactor(8);
    let a = connect(&mut r);
    let b = connect(&mut r);
    r.ring.recv(b, b"1");
    r.ring.recv(a, b"2");
    r.ring.recv(b, b"3");
    r.batch();
    let (ka, kb) = (a.key as usize, b.key as usize);
    assert_eq!(
        r.service.seen,
        [
            Seen::Data(kb, b"1".to_vec()),
            Seen::Data(ka, b"2".to_vec()),
            Seen::Data(kb, b"3".to_vec()),
        ]
    );
    assert_eq!(r.ring.send_pending(b).as_deref(), Some(&b"13"[..]));
    assert_eq!(r.ring.sends_of(b), 1, "one send per connection per batch");
    assert_eq!(r.ring.send_pending(a).as_deref(), Some(&b"2"[..]));
    assert_eq!(
        r.ring.buffers_free(),
        8,
        "every buffer went back to the ring"
    );
}

#[test]
fn a_short_send_resumes_at_its_offset_before_anything_queued_after_it() {
    let mut r = reactor(8);
    let a = connect(&mut r);
    r.ring.recv(a, b"hello");
    r.batch();
    r.ring.recv(a, b"!");
    r.ring.send_done(a, 2);
    r.batch();
    assert!(r.ring.pushed.contains(&Sqe::Send {
        fd: FAKE_FD_BASE,
        owner: a,
        frame: Bytes::from_static(b"hello"),
        offset: 2,
    }));
    assert_eq!(
        r.ring.sends_of(a),
        1,
        "the queued byte waits for the resumed send"
    );
    assert_eq!(r.ring.send_done(a, 3), &b"llo"[..]);
    r.batch();
    assert_eq!(r.ring.send_pending(a).as_deref(), Some(&b"!"[..]));
    let key = a.key as usize;
    assert!(r.service.seen.contains(&Seen::Count(IoEvent::BytesOut(2))));
    assert!(r.service.seen.contains(&Seen::Sent(key, b"hello".to_vec())));
}

#[test]
fn enobufs_starves_receives_and_re_arms_them_a_few_per_batch_oldest_first() {
    // Four buffers: a budget of one re-arm per batch.
    let mut r = reactor(4);
    let owners: Vec<Owner> = (0..3).map(|_| connect(&mut r)).collect();
    r.ring.pushed.clear();
    for owner in &owners {
        r.ring.recv_end(*owner, -libc::ENOBUFS);
    }
    r.batch();
    let recvs = |r: &Reactor<FakeRing, EchoService>| -> Vec<Owner> {
        (r.ring.pushed.iter())
            .filter_map(|sqe| match sqe {
                Sqe::Recv { owner, .. } => Some(*owner),
                _ => None,
            })
            .collect()
    };
    assert_eq!(recvs(&r), [owners[0]], "the oldest first, one per batch");
    assert!(!r.service.conns.has(owners[0].key as usize, STARVED));
    assert!(r.service.conns.has(owners[1].key as usize, STARVED));
    r.batch();
    r.batch();
    assert_eq!(recvs(&r), owners);
    for owner in &owners {
        let key = owner.key as usize;
        assert!(r.service.conns.has(key, RECV_ARMED));
        assert!(!r.service.conns.has(key, STARVED));
    }
    let enobufs = (r.service.seen.iter())
        .filter(|s| **s == Seen::Count(IoEvent::Enobufs))
        .count();
    assert_eq!(enobufs, 3);
}

#[test]
fn a_recv_that_ends_with_data_is_armed_again() {
    let mut r = reactor(4);
    let a = connect(&mut r);
    r.ring.recv(a, b"x");
    r.batch();
    r.ring.pushed.clear();
    // The multishot ends although the socket is fine (a CQ overflow, say).
    r.ring.recv_last(a, b"y");
    r.batch();
    assert!(r.ring.pushed.contains(&Sqe::Recv {
        fd: FAKE_FD_BASE,
        owner: a
    }));
    assert!(r.service.seen.contains(&Seen::Count(IoEvent::RecvRearmed)));
    assert!(r
        .service
        .seen
        .contains(&Seen::Data(a.key as usize, b"y".to_vec())));
    assert!(r.service.conns.has(a.key as usize, RECV_ARMED));
}

#[test]
fn a_stale_generation_reaches_neither_the_new_occupant_nor_the_service() {
    let mut r = reactor(8);
    let old = connect(&mut r);
    r.ring.recv_end(old, 0);
    r.batch();
    assert!(
        r.service.conns.live(old).is_none(),
        "EOF with nothing in flight frees it"
    );
    let new = connect(&mut r);
    assert_eq!(new.key, old.key, "the slot is reused");
    assert_ne!(new.gen, old.gen);
    r.service.seen.clear();
    // Late completions for the old occupant: data, the recv's end, a send.
    r.ring.recv(old, b"late");
    r.ring.recv_end(old, -libc::ECONNRESET);
    r.ring.complete(Completion::Send {
        owner: old,
        res: 4,
        frame: Bytes::from_static(b"gone"),
        offset: 0,
    });
    r.batch();
    assert_eq!(r.service.seen, [Seen::Dropped(b"gone".to_vec())]);
    assert_eq!(
        r.ring.buffers_free(),
        8,
        "the stale data's buffer came back"
    );
    let key = new.key as usize;
    assert!(
        r.service.conns.has(key, RECV_ARMED),
        "the new recv is untouched"
    );
    assert_eq!(r.ring.sends_of(new), 0);
}

#[test]
fn a_dead_connection_is_released_only_after_its_last_operation_ends() {
    let mut r = reactor(8);
    let a = connect(&mut r);
    let key = a.key as usize;
    r.ring.recv(a, b"bye");
    r.batch();
    assert_eq!(r.ring.sends_of(a), 1);
    // The service ends it with its recv armed and a send in flight.
    r.service.kill(key);
    assert!(
        r.service.conns.live(a).is_some(),
        "held while operations are out"
    );
    r.ring.send_done(a, 3);
    r.batch();
    assert_eq!(
        r.service.seen.last(),
        Some(&Seen::Released(key)),
        "the send's end releases"
    );
    assert!(r.service.seen.contains(&Seen::Dropped(b"bye".to_vec())));
    assert!(
        r.service.conns.live(a).is_some(),
        "the recv is still in the kernel"
    );
    r.ring.recv_end(a, -libc::ECANCELED);
    r.batch();
    assert!(
        r.service.conns.live(a).is_none(),
        "freed once nothing is in flight"
    );
    assert!(
        !r.service
            .seen
            .contains(&Seen::RecvEnd(key, -libc::ECANCELED)),
        "a dead connection's recv end is a release, not an event"
    );
}

#[test]
fn a_failed_send_is_handed_to_the_service() {
    let mut r = reactor(8);
    let a = connect(&mut r);
    r.ring.recv(a, b"x");
    r.batch();
    r.ring.send_done(a, -libc::EPIPE);
    r.batch();
    let key = a.key as usize;
    assert!(r
        .service
        .seen
        .contains(&Seen::SendFailed(key, -libc::EPIPE)));
    assert!(
        r.service.conns.live(a).is_some(),
        "its recv is still armed, so the slot waits"
    );
}
