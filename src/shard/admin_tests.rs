//! Unit tests of the admin shard (the skeleton with `AdminService`) on [`FakeRing`]: the same
//! harness as the client tests (`tests.rs`), built behind two client shards whose
//! inboxes the test holds. Each test sends plain HTTP over a fake socket, plays the client
//! shards' part by hand (their counts arrive as `ShardMsg::Reply` plus a doorbell) and checks
//! the bytes the admin shard sends back.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use bytes::Bytes;

use super::tests::{shard_harness, Harness};
use super::*;
use crate::admin_service::AdminHttp;
use crate::conn::State;
use crate::http::admin_request::AdminError;
use crate::ring::fake::Sqe;
use crate::ring::Owner;

/// Client shards in front of the admin shard.
const CLIENTS: usize = 2;
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
const PUBLISH: &[u8] =
    b"POST /publish/news HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello";

fn admin(args: &[&str]) -> Harness<AdminHttp> {
    shard_harness(CLIENTS, args, 8)
}

impl Harness<AdminHttp> {
    /// Delivers `request` on `owner` and returns the response it sent, completing the send
    /// in full; panics if nothing was sent.
    fn ask(&mut self, owner: Owner, request: &[u8]) -> Bytes {
        self.shard.ring.recv(owner, request);
        self.shard.batch();
        self.answer(owner).expect("a response was sent")
    }

    /// Completes `owner`'s send in flight, if any, and returns its bytes.
    fn answer(&mut self, owner: Owner) -> Option<Bytes> {
        let out = self.shard.ring.send_pending(owner)?;
        self.shard.ring.send_done(owner, out.len() as i32);
        self.shard.batch();
        Some(out)
    }

    /// The main thread asks for shutdown; the admin shard starts its drain on its next tick.
    fn drain(&mut self) {
        self.shard
            .service
            .core
            .shared
            .shutdown
            .store(true, Ordering::Relaxed);
        self.shard.ring.tick_expired();
        self.shard.batch();
        assert!(self.shard.service.core.draining.is_some());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn healthz_is_200_then_503_once_the_shard_drains() {
    let mut h = admin(&[]);
    let owner = h.connect();
    let out = h.ask(owner, HEALTHZ);
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    assert!(out.ends_with(b"\r\n\r\nok\n"), "{out:?}");
    assert!(h.shard.service.core.live(owner), "keep-alive");
    h.drain();
    // The same keep-alive connection asks again during the drain.
    let out = h.ask(owner, HEALTHZ);
    assert!(out.starts_with(b"HTTP/1.1 503"), "{out:?}");
    assert!(out.ends_with(b"\r\n\r\ndraining\n"), "{out:?}");
    assert_eq!(h.shard.service.core.counters.admin_requests, 2);
}

#[test]
fn two_pipelined_requests_are_answered_in_order_in_one_send() {
    let mut h = admin(&[]);
    let owner = h.connect();
    h.shard.ring.pushed.clear();
    let mut both = HEALTHZ.to_vec();
    both.extend_from_slice(METRICS);
    h.shard.ring.recv(owner, &both);
    h.shard.batch();
    let sends = (h.shard.ring.pushed.iter())
        .filter(|sqe| matches!(sqe, Sqe::Send { .. }))
        .count();
    assert_eq!(sends, 1, "both answers leave in one send");
    let out = h.answer(owner).expect("the answers");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    let healthz_end = contains(&out, b"\r\n\r\nok\n").expect("the healthz answer");
    let metrics_at = contains(&out[healthz_end..], b"HTTP/1.1 200").expect("the metrics answer");
    assert!(contains(&out[healthz_end + metrics_at..], b"version=0.0.4").is_some());
    assert_eq!(h.shard.ring.sends_of(owner), 0, "nothing else to send");
    assert_eq!(h.shard.service.core.counters.admin_requests, 2);
}

#[test]
fn a_publish_is_answered_with_the_sum_of_the_client_shards_counts() {
    let mut h = admin(&[]);
    let owner = h.connect();
    h.shard.ring.pushed.clear();
    h.shard.ring.recv(owner, PUBLISH);
    h.shard.batch();
    assert_eq!(
        h.shard.ring.sends_of(owner),
        0,
        "the answer waits for the counts"
    );
    // Each client shard got the publish and its doorbell.
    let mut id = None;
    for (shard, inbox) in h.peer_inboxes[..CLIENTS].iter().enumerate() {
        let inbox = inbox.as_ref().expect("a client shard's inbox");
        let Ok(ShardMsg::Publish(publish)) = inbox.try_recv() else {
            panic!("client shard {shard} got no publish");
        };
        let (origin, pending) = publish.origin.expect("the admin shard asks for a count");
        assert_eq!(origin, CLIENTS, "the admin shard's index");
        assert_eq!(
            *id.get_or_insert(pending),
            pending,
            "one request id for all"
        );
        assert!(h.shard.ring.pushed.contains(&Sqe::Msg {
            target: shard as u32,
            data: 1
        }));
    }
    let id = id.expect("a request id");
    // The first count arrives: still waiting for the other shard.
    let reply = |from, count| ShardMsg::Reply { id, from, count };
    h.inbox.send(reply(0, 2)).expect("the inbox is open");
    h.shard.ring.doorbell();
    h.shard.batch();
    assert_eq!(
        h.shard.ring.sends_of(owner),
        0,
        "one shard has not counted yet"
    );
    h.inbox.send(reply(1, 3)).expect("the inbox is open");
    h.shard.ring.doorbell();
    h.shard.batch();
    let out = h.answer(owner).expect("the answer once both counted");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    // The channel's first publish: offset 1, in the channel's epoch (PROTOCOL.md).
    let body = String::from_utf8_lossy(&out);
    let body = &body[body.find("\r\n\r\n").expect("a head") + 4..];
    let epoch = body
        .strip_prefix(r#"{"channel":"news","subscribers":5,"epoch":""#)
        .and_then(|rest| rest.strip_suffix(r#"","offset":1}"#))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(epoch.len(), 16, "{body}");
    assert!(h.shard.service.core.pending.is_empty());
    assert!(h.shard.service.core.live(owner), "keep-alive");
}

#[test]
fn a_publish_while_draining_is_refused_503_and_sent_nowhere() {
    let mut h = admin(&[]);
    let owner = h.connect();
    h.drain();
    let out = h.ask(owner, PUBLISH);
    assert!(out.starts_with(b"HTTP/1.1 503"), "{out:?}");
    assert!(
        out.ends_with(b"draining: the node is shutting down\n"),
        "{out:?}"
    );
    assert_eq!(
        h.shard
            .service
            .core
            .counters
            .admin_publishes_refused_draining,
        1
    );
    for inbox in h.peer_inboxes[..CLIENTS].iter().flatten() {
        assert!(inbox.try_recv().is_err(), "no client shard got the publish");
    }
    assert!(h.shard.service.core.pending.is_empty());
}

#[test]
fn a_request_head_that_never_completes_is_answered_408() {
    let mut h = admin(&["--admin-request-timeout", "100ms"]);
    let owner = h.connect();
    h.shard.ring.recv(owner, &HEALTHZ[..20]);
    h.shard.batch();
    assert_eq!(h.shard.ring.sends_of(owner), 0, "the head is not complete");
    // The wheel follows the wall clock: let the timeout pass, a tick at a time.
    let mut out = None;
    for _ in 0..40 {
        thread::sleep(Duration::from_millis(TICK_MS));
        h.shard.ring.tick_expired();
        h.shard.batch();
        out = h.shard.ring.send_pending(owner);
        if out.is_some() {
            break;
        }
    }
    let out = out.expect("a 408 within two seconds");
    assert!(out.starts_with(b"HTTP/1.1 408"), "{out:?}");
    let slot = AdminError::RequestTimeout.slot();
    assert_eq!(h.shard.service.core.counters.admin_refused[slot], 1);
    assert_eq!(
        h.conn(owner).state,
        State::Closing,
        "it closes after the 408"
    );
}
