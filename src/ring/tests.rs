//! Unit tests of the ring boundary (`mod.rs`), kept beside it, out of the code's way.

use std::io::Write;
use std::os::unix::net::UnixStream;

use super::*;

fn test_ring() -> Ring {
    let cfg = RingConfig {
        sq_entries: 16,
        cq_entries: 64,
    };
    let mut ring = Ring::new(&cfg).expect("ring");
    ring.enable().expect("enable");
    ring.register_buffers(4, 4096).expect("buffers");
    ring
}

/// Submits and reaps until `want` says stop or `within` passes; returns what was reaped.
fn reap_for(
    ring: &mut Ring,
    within: Duration,
    want: impl Fn(&[Completion]) -> bool,
) -> Vec<Completion> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    while Instant::now() < deadline && !want(&all) {
        let ts = types::Timespec::from(Duration::from_millis(10));
        let args = types::SubmitArgs::new().timespec(&ts);
        ring.flush_backlog();
        let _ = ring.ring.submitter().submit_with_args(1, &args);
        ring.reap(&mut all);
    }
    all
}

#[test]
fn pack_and_unpack_round_trip() {
    for kind in [
        OpKind::Accept,
        OpKind::Recv,
        OpKind::Send,
        OpKind::Tick,
        OpKind::Cancel,
        OpKind::Msg,
        OpKind::Connect,
        OpKind::Doorbell,
    ] {
        let packed = pack(kind, 0xdead_beef, 0x12_3456);
        let (byte, key, gen) = unpack(packed);
        assert_eq!(OpKind::decode(byte), Some(kind));
        assert_eq!((key, gen), (0xdead_beef, 0x12_3456));
    }
    // Generations keep 24 bits; the kind byte is never overwritten by them.
    let (byte, _, gen) = unpack(pack(OpKind::Recv, 1, u32::MAX));
    assert_eq!((OpKind::decode(byte), gen), (Some(OpKind::Recv), GEN_MASK));
}

#[test]
fn issue_8_item_5_unknown_op_kinds_decode_to_none() {
    for byte in [0u8, 9, 0x7f, 0xff] {
        assert_eq!(OpKind::decode(byte), None, "byte {byte}");
    }
}

#[test]
fn issue_8_item_5_failed_doorbell_is_reported_as_doorbell_failure() {
    let mut ring = test_ring();
    let (a, _b) = UnixStream::pair().expect("socketpair");
    // A socket is not a ring: the kernel refuses the MsgRingData (EBADFD).
    ring.msg_ring(a.as_raw_fd(), 3, 1, 0);
    ring.submit_now();
    let got = reap_for(&mut ring, Duration::from_secs(2), |c| !c.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    match got[0] {
        Completion::DoorbellFailed { target, res } => {
            assert_eq!(target, 3);
            assert!(res < 0, "res {res}");
        }
        ref other => panic!("a failed doorbell came back as {other:?}"),
    }
}

#[test]
fn issue_8_item_1_tick_probe_and_forced_oneshot_keep_time() {
    let mut ring = test_ring();
    // This machine's kernel (6.18) has multishot timeouts; the switch forces the other.
    assert_eq!(ring.probe_tick(Some("oneshot")), TickMode::Oneshot);
    let every = Duration::from_millis(20);
    ring.tick(every);
    let start = Instant::now();
    let mut expiries = 0;
    let mut all = Vec::new();
    while start.elapsed() < Duration::from_millis(400) {
        ring.submit_and_wait().expect("enter");
        all.clear();
        ring.reap(&mut all);
        for c in &all {
            match c {
                Completion::Tick { res, more } => {
                    assert_eq!((*res, *more), (-libc::ETIME, false));
                    expiries += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // One expiry per 20 ms, re-armed each time: about 20 in 400 ms, never a spin.
    assert!(
        (8..=22).contains(&expiries),
        "{expiries} expiries in 400 ms"
    );
    assert!(ring.in_flight().tick || ring.tick_rearm_at.is_some());
    assert_eq!(ring.quiesce(Duration::from_secs(1)), Ok(()));
}

#[test]
fn issue_8_item_1_a_failing_tick_is_counted_and_never_spins() {
    let mut ring = test_ring();
    assert_eq!(ring.probe_tick(None), TickMode::Multishot);
    let every = Duration::from_millis(50);
    ring.tick_every = Some(every);
    ring.tick_mode = TickMode::Oneshot;
    // A timeout the kernel refuses (an undefined flag bit), as 6.1 refuses MULTISHOT.
    let ts: *const types::Timespec = &*ring.tick_ts;
    let bad = opcode::Timeout::new(ts)
        .flags(types::TimeoutFlags::from_bits_retain(1 << 30))
        .build()
        .user_data(pack(OpKind::Tick, 0, 0));
    ring.tick_armed = true;
    ring.push(bad);
    let start = Instant::now();
    let (mut failed, mut expired) = (0, 0);
    let mut all = Vec::new();
    while start.elapsed() < Duration::from_millis(300) {
        ring.submit_and_wait().expect("enter");
        all.clear();
        ring.reap(&mut all);
        for c in &all {
            match c {
                Completion::Tick { res, .. } if *res == -libc::ETIME => expired += 1,
                Completion::Tick { .. } => failed += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(failed, 1, "the refused tick is reported once");
    // Re-armed one interval after the failure, then every 50 ms: a few, not thousands.
    assert!((2..=6).contains(&expired), "{expired} expiries in 300 ms");
    assert_eq!(ring.quiesce(Duration::from_secs(1)), Ok(()));
}

#[test]
fn issue_8_item_15_quiesce_cancels_a_blocked_send_and_an_armed_recv() {
    let mut ring = test_ring();
    let (a, b) = UnixStream::pair().expect("socketpair");
    // Fill `a`'s send buffer so that the ring's send blocks: the peer never reads.
    a.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0u8; 64 * 1024];
    let mut filled = 0usize;
    for _ in 0..10_000 {
        match (&a).write(&chunk) {
            Ok(n) => filled += n,
            Err(_) => break,
        }
    }
    assert!(filled > 0);
    let owner = Owner { key: 7, gen: 1 };
    ring.recv_multi(a.as_raw_fd(), owner);
    ring.send(a.as_raw_fd(), owner, Bytes::from(vec![1u8; 256 * 1024]), 0);
    ring.tick(Duration::from_millis(50));
    ring.submit_now();
    // Nothing but the tick completes by itself: the peer neither writes nor reads.
    let early = reap_for(&mut ring, Duration::from_millis(100), |_| false);
    assert!(
        early.iter().all(|c| matches!(c, Completion::Tick { .. })),
        "{early:?}"
    );
    let armed = ring.in_flight();
    assert_eq!((armed.sends, armed.recvs, armed.tick), (1, 1, true));
    let start = Instant::now();
    assert_eq!(ring.quiesce(Duration::from_secs(1)), Ok(()));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(ring.in_flight().is_empty(), "{}", ring.in_flight());
    drop(ring);
    drop(b);
}

/// Ops of this ring listed by the kernel's fdinfo for `fd` (poll-armed sends and recvs).
fn kernel_poll_ops(fd: RawFd) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
    info.lines()
        .skip_while(|l| !l.starts_with("PollList"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn issue_8_item_15_dropping_the_ring_leaves_nothing_in_the_kernel() {
    let mut ring = test_ring();
    let (a, _b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        if (&a).write(&chunk).is_err() {
            break;
        }
    }
    let owner = Owner { key: 7, gen: 1 };
    ring.recv_multi(a.as_raw_fd(), owner);
    ring.send(a.as_raw_fd(), owner, Bytes::from(vec![1u8; 256 * 1024]), 0);
    ring.submit_now();
    // Another shard's file table holds every ring fd; a dup stands in for it here.
    // SAFETY: dup(2) of a valid fd touches no memory; the new fd is closed below.
    let other_table = unsafe { libc::dup(ring.fd()) };
    assert!(other_table >= 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while kernel_poll_ops(other_table).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(kernel_poll_ops(other_table).len(), 2, "recv and send armed");
    drop(ring);
    let left = kernel_poll_ops(other_table);
    sys::close(other_table);
    assert!(
        left.is_empty(),
        "the kernel still holds ops after the Ring (and its buffers) were dropped: {left:?}"
    );
}
