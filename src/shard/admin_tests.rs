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
use crate::fanout::{Census, CensusOf, Target};
use crate::history::PayloadKind;
use crate::http::admin_request::AdminError;
use crate::ring::fake::Sqe;
use crate::ring::Owner;
use crate::ws::{frame, OpCode};

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

/// A request of `method` to `target` with a JSON or plain body.
fn request(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The census each client shard got (in shard order), with its doorbell.
fn censuses(h: &mut Harness<AdminHttp>) -> Vec<Arc<Census>> {
    let mut got = Vec::new();
    for (shard, inbox) in h.peer_inboxes[..CLIENTS].iter().enumerate() {
        let inbox = inbox.as_ref().expect("a client shard's inbox");
        let Ok(ShardMsg::Census(census)) = inbox.try_recv() else {
            panic!("client shard {shard} got no census");
        };
        assert_eq!(census.origin.0, CLIENTS, "answers go to the admin shard");
        got.push(census);
    }
    got
}

/// Client shard `from` answers census `id` with `channels`.
fn census_reply(h: &mut Harness<AdminHttp>, id: u32, from: usize, channels: &[(&str, u64)]) {
    let channels = channels.iter().map(|&(n, c)| (Box::from(n), c)).collect();
    let reply = ShardMsg::CensusReply {
        id,
        from,
        channels,
        truncated: false,
    };
    h.inbox.send(reply).expect("the inbox is open");
    h.shard.ring.doorbell();
    h.shard.batch();
}

fn body_of(out: &[u8]) -> &[u8] {
    let at = contains(out, b"\r\n\r\n").expect("a complete head");
    &out[at + 4..]
}

#[test]
fn a_channels_listing_sums_the_client_shards_censuses() {
    let mut h = admin(&[]);
    let owner = h.connect();
    h.shard
        .ring
        .recv(owner, &request("GET", "/channels?prefix=r.&limit=2", b""));
    h.shard.batch();
    assert_eq!(h.shard.ring.sends_of(owner), 0, "the answer waits");
    let asked = censuses(&mut h);
    let CensusOf::Prefix { prefix, limit } = &asked[0].of else {
        panic!("a prefix census: {:?}", asked[0]);
    };
    assert_eq!((&**prefix, *limit), ("r.", 2));
    let id = asked[0].origin.1;
    assert!(asked.iter().all(|c| c.origin.1 == id), "one query id");
    census_reply(&mut h, id, 0, &[("r.a", 1), ("r.b", 2)]);
    assert_eq!(
        h.shard.ring.sends_of(owner),
        0,
        "one shard has not answered"
    );
    // A repeated answer from the same shard is not counted twice.
    census_reply(&mut h, id, 0, &[("r.a", 1)]);
    assert_eq!(h.shard.ring.sends_of(owner), 0);
    census_reply(&mut h, id, 1, &[("r.b", 3), ("r.c", 1)]);
    let out = h.answer(owner).expect("the answer once both counted");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    assert_eq!(
        body_of(&out),
        concat!(
            r#"{"channels":[{"channel":"r.a","subscribers":1},"#,
            r#"{"channel":"r.b","subscribers":5}],"truncated":true}"#
        )
        .as_bytes()
    );
    assert!(h.shard.service.core.queries.is_empty());
    assert!(h.shard.service.core.live(owner), "keep-alive");
    // Censuses take places in the client shards' inboxes like publishes.
    let queued = &h.shard.service.core.peers.queued;
    assert_eq!(
        queued[0].load(Ordering::Relaxed),
        1,
        "the test never drained it"
    );
}

#[test]
fn a_census_counts_an_exited_shard_as_having_no_channels() {
    let mut h = admin(&[]);
    let owner = h.connect();
    h.shard
        .ring
        .recv(owner, &request("GET", "/channels/news", b""));
    h.shard.batch();
    let asked = censuses(&mut h);
    assert!(matches!(&asked[0].of, CensusOf::One(name) if &**name == "news"));
    let id = asked[0].origin.1;
    census_reply(&mut h, id, 0, &[("news", 4)]);
    h.shard.service.core.shared.exited[1].store(true, Ordering::Release);
    h.shard.ring.tick_expired();
    h.shard.batch();
    let out = h.answer(owner).expect("answered without shard 1");
    assert_eq!(body_of(&out), br#"{"channel":"news","subscribers":4}"#);
}

#[test]
fn a_broadcast_shares_one_frame_across_its_channels_and_sums_each() {
    let mut h = admin(&[]);
    let owner = h.connect();
    let body = br#"{"channels":["a","b"],"data":"hi"}"#;
    h.shard
        .ring
        .recv(owner, &request("POST", "/broadcast", body));
    h.shard.batch();
    let mut ids = Vec::new();
    let mut frames = Vec::new();
    for inbox in h.peer_inboxes[..CLIENTS].iter().flatten() {
        for channel in ["a", "b"] {
            let Ok(ShardMsg::Publish(publish)) = inbox.try_recv() else {
                panic!("no publish for {channel}");
            };
            assert!(matches!(&publish.target, Target::Channel(c) if &**c == channel));
            ids.push(publish.origin.expect("counted").1);
            frames.push(publish.frame.clone());
        }
    }
    assert_eq!(&frames[0][..], &frame::encode(OpCode::Text, b"hi")[..]);
    assert!(
        frames.iter().all(|f| f.as_ptr() == frames[0].as_ptr()),
        "one encoding shared by every channel and shard"
    );
    let (a, b) = (ids[0], ids[1]);
    assert_eq!(ids, [a, b, a, b], "one pending id per channel");
    for (id, from, count) in [(a, 0, 2), (b, 0, 0), (a, 1, 1)] {
        h.inbox
            .send(ShardMsg::Reply { id, from, count })
            .expect("open");
    }
    h.shard.ring.doorbell();
    h.shard.batch();
    assert_eq!(
        h.shard.ring.sends_of(owner),
        0,
        "channel b waits for shard 1"
    );
    h.inbox
        .send(ShardMsg::Reply {
            id: b,
            from: 1,
            count: 4,
        })
        .expect("open");
    h.shard.ring.doorbell();
    h.shard.batch();
    let out = h.answer(owner).expect("the answer");
    assert_eq!(
        body_of(&out),
        concat!(
            r#"{"channels":[{"channel":"a","subscribers":3},"#,
            r#"{"channel":"b","subscribers":4}],"subscribers":7}"#
        )
        .as_bytes()
    );
    let core = &h.shard.service.core;
    assert!(core.pending.is_empty() && core.broadcasts.is_empty());
    assert!(core.broadcast_parts.is_empty());
}

#[test]
fn a_broadcast_is_refused_whole_when_an_inbox_lacks_room_and_a_bad_body_keeps_the_connection() {
    let mut h = admin(&[]);
    let owner = h.connect();
    // The harness' inboxes hold 16: seventeen channels cannot all fit.
    let names: Vec<String> = (0..17).map(|i| format!("\"c{i}\"")).collect();
    let body = format!(r#"{{"channels":[{}],"data":"x"}}"#, names.join(","));
    let out = h.ask(owner, &request("POST", "/broadcast", body.as_bytes()));
    assert!(out.starts_with(b"HTTP/1.1 503"), "{out:?}");
    assert!(contains(&out, b"Retry-After: 1").is_some());
    for inbox in h.peer_inboxes[..CLIENTS].iter().flatten() {
        assert!(inbox.try_recv().is_err(), "nothing was sent");
    }
    let out = h.ask(
        owner,
        &request("POST", "/broadcast", br#"{"channels":["a"]}"#),
    );
    assert!(out.starts_with(b"HTTP/1.1 400"), "{out:?}");
    assert!(out.ends_with(b"exactly one of \"data\" and \"data_b64\" is needed\n"));
    assert!(h.shard.service.core.live(owner), "the connection stays");
    let slot = AdminError::InvalidBody("").slot();
    assert_eq!(h.shard.service.core.counters.admin_refused[slot], 1);
    assert!(h.shard.service.core.pending.is_empty());
}

#[test]
fn history_is_answered_from_the_shared_store_or_404() {
    let mut h = admin(&[]);
    let owner = h.connect();
    let out = h.ask(owner, &request("GET", "/history/news", b""));
    assert!(out.starts_with(b"HTTP/1.1 404"), "{out:?}");
    let history = Arc::clone(&h.shard.service.core.shared.history);
    let now = std::time::Instant::now();
    let sent: Result<_, ()> = history.publish(
        "news",
        &Bytes::from_static(b"x"),
        PayloadKind::Text,
        now,
        Ok,
    );
    let (position, _) = sent.expect("published");
    let out = h.ask(owner, &request("GET", "/history/news?since=0", b""));
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    let expected = format!(
        r#"{{"channel":"news","epoch":"{}","offset":1,"messages":[],"truncated":false}}"#,
        position.epoch
    );
    assert_eq!(
        body_of(&out),
        expected.as_bytes(),
        "history is off: nothing kept"
    );
    let out = h.ask(owner, &request("HEAD", "/history/news", b""));
    assert!(out.starts_with(b"HTTP/1.1 200") && body_of(&out).is_empty());
}

#[test]
fn a_publish_a_census_and_a_broadcast_pipelined_are_answered_in_request_order() {
    let mut h = admin(&[]);
    let owner = h.connect();
    // All three wait with id 0 in their own slab: the tags keep their slots apart.
    let mut pipelined = PUBLISH.to_vec();
    pipelined.extend_from_slice(&request("GET", "/channels", b""));
    pipelined.extend_from_slice(&request(
        "POST",
        "/broadcast",
        br#"{"channels":["b"],"data":"x"}"#,
    ));
    h.shard.ring.recv(owner, &pipelined);
    h.shard.batch();
    let core = &h.shard.service.core;
    assert_eq!(
        (
            core.pending.len(),
            core.queries.len(),
            core.broadcasts.len()
        ),
        (2, 1, 1)
    );
    let mut publish_ids = Vec::new();
    let mut census_id = None;
    for inbox in h.peer_inboxes[..CLIENTS].iter().flatten() {
        while let Ok(msg) = inbox.try_recv() {
            match msg {
                ShardMsg::Publish(p) => publish_ids.push(p.origin.expect("counted").1),
                ShardMsg::Census(c) => census_id = Some(c.origin.1),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let (news, b) = (publish_ids[0], publish_ids[1]);
    assert_eq!(publish_ids, [news, b, news, b]);
    assert_eq!(census_id, Some(0));
    // The answers arrive last request first.
    for from in 0..CLIENTS {
        h.inbox
            .send(ShardMsg::Reply {
                id: b,
                from,
                count: 2,
            })
            .expect("open");
    }
    h.shard.ring.doorbell();
    h.shard.batch();
    census_reply(&mut h, 0, 0, &[("news", 1)]);
    census_reply(&mut h, 0, 1, &[("b", 4)]);
    assert_eq!(
        h.shard.ring.sends_of(owner),
        0,
        "the publish is still waiting"
    );
    for from in 0..CLIENTS {
        h.inbox
            .send(ShardMsg::Reply {
                id: news,
                from,
                count: 1,
            })
            .expect("open");
    }
    h.shard.ring.doorbell();
    h.shard.batch();
    let out = h.answer(owner).expect("all three answers");
    let text = String::from_utf8(out.to_vec()).expect("ASCII");
    // The publish answer carries the channel's epoch and offset too (PROTOCOL.md).
    let publish_at = text
        .find(r#"{"channel":"news","subscribers":2,"epoch":""#)
        .expect("publish");
    let census_at = text
        .find(r#"{"channels":[{"channel":"b","subscribers":4},{"channel":"news","subscribers":1}]"#)
        .expect("census");
    let broadcast_at = text
        .find(r#"{"channels":[{"channel":"b","subscribers":4}],"subscribers":4}"#)
        .expect("broadcast");
    assert!(publish_at < census_at && census_at < broadcast_at, "{text}");
}
