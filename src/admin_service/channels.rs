//! The admin API's read-only views of channels: `GET /channels?prefix=P&limit=N`,
//! `GET /channels/<name>` and `GET /history/<name>?since=K&limit=M`.
//!
//! Subscriber counts live in each client shard's `Channels`, so a channels request is a
//! census: one `ShardMsg::Census` to every client shard through its inbox (bounded by
//! `--max-shard-inbox` like a publish: 503 when an inbox is full), answered by
//! `answer_census` on the client shard with its counts, summed here in the `queries` slab
//! (`census_reply`); the last answer writes the response. A shard that has exited counts as
//! answering with no channels. History is one node-wide store (`Shared::history`), so
//! `/history` is answered at once, on the admin shard, from one lock of that store. Under
//! `--broker` the history and positions are in Redis: `/history` and `/channels/<name>`
//! wait in `queries` for a read on the broker's publisher thread (`JobTo::History`,
//! answered `ShardMsg::BrokerRead`), 503 when it fails or passes `--broker-timeout`.
//!
//! Invariants:
//! - A listing is exact for the names it lists: each shard reports its `limit` smallest
//!   matching names, and a name among the node-wide `limit` smallest is among the `limit`
//!   smallest of every shard that has it, so every shard holding it reported it. `truncated`
//!   says more names matched.
//! - A query's id names its `queries` entry in the census messages; in its connection's
//!   response order it is `QUERY_SLOT_TAG | id`, so it cannot be taken for a publish's
//!   `pending` id or a broadcast's (`BROADCAST_SLOT_TAG`).
//! - A census never blocks a client shard for more than one pass over its channel index,
//!   and its reply holds at most `CHANNELS_LIMIT_MAX` names.
//! - A query with a Redis read is answered once both the census and the read are in, or
//!   at the read's deadline (`read_deadlines`, on every admin tick): never a hang.
//! - A history answer holds at most `HISTORY_LIMIT_MAX` messages and, past the first one,
//!   stays under `HISTORY_BODY_BYTES_MAX`; `truncated` says more are retained.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::broker::{BrokerFault, JobTo, PublishJob, ReadOutcome};
use crate::fanout::{Census, CensusOf, ShardMsg};
use crate::history::{Page, PayloadKind};
use crate::http::admin_request::valid_name;
use crate::http::response::write_response;
use crate::json_proto;
use crate::ring::Owner;
use crate::shard::Core;

use super::{unavailable, AdminSlot};

/// Tags a query id in its connection's response order (`AdminSlot::Waiting`).
pub(super) const QUERY_SLOT_TAG: u32 = 1 << 31;

/// Tags a broadcast id in its connection's response order (`AdminSlot::Waiting`).
pub(super) const BROADCAST_SLOT_TAG: u32 = 1 << 30;

/// A history answer stops adding messages once its body passes this many bytes (it always
/// holds at least one when any is retained after `since`), so one request cannot make the
/// node render the whole store.
pub const HISTORY_BODY_BYTES_MAX: usize = 4 << 20;

/// What a census request answers.
enum Asked {
    /// `GET /channels`: the first `limit` names.
    List { limit: usize },
    /// `GET /channels/<name>`.
    One(Box<str>),
    /// `GET /history/<name>` under `--broker` (no census: only the Redis read).
    History(Box<str>),
}

/// A query's history read from Redis (`--broker`), answered `ShardMsg::BrokerRead`.
struct ReadWait {
    /// The read's ticket: an answer under another one is a late answer to an earlier
    /// query of the same id.
    ticket: u32,
    /// `--broker-timeout` after the read was queued: 503 by then at the latest.
    deadline: Instant,
    /// Redis' answer, once in.
    outcome: Option<ReadOutcome>,
}

/// A channels request waiting for every client shard's census.
pub(crate) struct Query {
    owner: Owner,
    asked: Asked,
    keep_alive: bool,
    head_only: bool,
    /// Per client shard: whether its census is still awaited.
    waiting_on: Vec<bool>,
    waiting: usize,
    /// Subscribers by channel name, summed over the shards that answered.
    counts: BTreeMap<Box<str>, u64>,
    /// A shard had more matching names than the limit.
    truncated: bool,
    /// The Redis read of the channel's history, when the node has `--broker` and the
    /// request needs the channel's position.
    read: Option<ReadWait>,
}

impl Core {
    /// Starts a census of every client shard for `GET /channels` (`prefix`, `limit`) or
    /// `GET /channels/<name>`; the answer waits for their counts.
    pub(super) fn admin_channels(
        &mut self,
        key: usize,
        of: CensusOf,
        head_only: bool,
        keep_alive: bool,
    ) {
        let (clients, me) = (self.peers.clients, self.index);
        let targets = (0..clients).filter(move |&t| t != me);
        for target in targets.clone() {
            if !self.reserve(target) {
                for undo in (0..target).filter(|&t| t != me) {
                    self.release(undo);
                }
                self.counters.shard_inbox_full += 1;
                self.log(format_args!(
                    "event=shard_inbox_full target={target} msg=census"
                ));
                let response = unavailable(
                    &[("Retry-After", "1")],
                    b"shard inbox full: the node is behind; retry later\n",
                    keep_alive,
                );
                self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), !keep_alive));
                return;
            }
        }
        let (asked, read) = match &of {
            CensusOf::Prefix { limit, .. } => (Asked::List { limit: *limit }, None),
            // Under --broker the channel's epoch and offset are in Redis.
            CensusOf::One(name) => (Asked::One(name.clone()), Some((name.clone(), u64::MAX, 0))),
        };
        let id = self.queries.insert(Query {
            owner: self.owner(key),
            asked,
            keep_alive,
            head_only,
            waiting_on: vec![true; clients],
            waiting: clients,
            counts: BTreeMap::new(),
            truncated: false,
            read: None,
        }) as u32;
        debug_assert!(id < BROADCAST_SLOT_TAG, "ids stay below the tags");
        if let Some((name, since, limit)) = read {
            if !self.start_read(id, name, since, limit) {
                for undo in targets.clone() {
                    self.release(undo);
                }
                self.queries.remove(id as usize);
                self.admin_slot(key, AdminSlot::Ready(broker_full(keep_alive), !keep_alive));
                return;
            }
        }
        self.admin_slot(key, AdminSlot::Waiting(QUERY_SLOT_TAG | id));
        let census = Arc::new(Census {
            of,
            origin: (self.index, id),
        });
        for target in targets {
            let sent = self.send_to(target, ShardMsg::Census(Arc::clone(&census)));
            if sent.is_err() {
                // A gone shard has no channels left.
                self.census_reply(id, target, Vec::new(), false);
            }
        }
    }

    /// Client shard: counts the subscribers the census asks about and answers the admin
    /// shard.
    pub(crate) fn answer_census(&mut self, census: &Census) {
        let (channels, truncated) = match &census.of {
            CensusOf::Prefix { prefix, limit } => self.channels.census(prefix, *limit),
            CensusOf::One(name) => {
                let count = self.channels.subscriber_count(name);
                (vec![(name.clone(), count)], false)
            }
        };
        let (origin, id) = census.origin;
        let from = self.index;
        let reply = ShardMsg::CensusReply {
            id,
            from,
            channels,
            truncated,
        };
        // A gone admin shard has no one left to answer: nothing to do.
        let _ = self.send_to(origin, reply);
    }

    /// Client shard `from`'s census for query `id`; the last one answers the request. A
    /// census from a shard already counted (answered for as gone) is ignored.
    pub(crate) fn census_reply(
        &mut self,
        id: u32,
        from: usize,
        channels: Vec<(Box<str>, u64)>,
        truncated: bool,
    ) {
        let Some(q) = self.queries.get_mut(id as usize) else {
            return;
        };
        if !std::mem::take(&mut q.waiting_on[from]) {
            return;
        }
        for (name, count) in channels {
            *q.counts.entry(name).or_default() += count;
        }
        q.truncated |= truncated;
        q.waiting -= 1;
        self.finish_query(id);
    }

    /// Answers query `id` once every census and its Redis read (if any) are in.
    fn finish_query(&mut self, id: u32) {
        let Some(q) = self.queries.get(id as usize) else {
            return;
        };
        let reading = q.read.as_ref().is_some_and(|r| r.outcome.is_none());
        if q.waiting > 0 || reading {
            return;
        }
        let q = self.queries.remove(id as usize);
        if !self.live(q.owner) {
            return;
        }
        let key = q.owner.key as usize;
        let (head_only, keep_alive) = (q.head_only, q.keep_alive);
        let page = match q.read.and_then(|r| r.outcome) {
            Some(Err(fault)) => {
                let body = format!(
                    "{}: the read did not reach Redis; retry later\n",
                    fault.reason()
                );
                let response = unavailable(&[("Retry-After", "1")], body.as_bytes(), keep_alive);
                self.admin_ready(key, QUERY_SLOT_TAG | id, Bytes::from(response), !keep_alive);
                self.process_admin(key);
                return;
            }
            Some(Ok(page)) => page,
            None => None,
        };
        let response = match &q.asked {
            Asked::List { limit } => {
                let body = list_json(&q.counts, *limit, q.truncated);
                json_response(200, &body, head_only, keep_alive)
            }
            Asked::One(name) => {
                let count = q.counts.get(name).copied().unwrap_or(0);
                let page = match self.shared.broker {
                    Some(_) => page,
                    None => self.shared.history.read(name, u64::MAX, 0, Instant::now()),
                };
                json_response(
                    200,
                    &one_json(name, count, page.as_ref()),
                    head_only,
                    keep_alive,
                )
            }
            Asked::History(channel) => match page {
                None => no_history(head_only, keep_alive),
                Some(page) => {
                    json_response(200, &history_json(channel, &page), head_only, keep_alive)
                }
            },
        };
        self.admin_ready(key, QUERY_SLOT_TAG | id, response, !keep_alive);
        // Requests held back by the pipeline cap may go on now.
        self.process_admin(key);
    }

    /// Queues the Redis read of `channel`'s history for query `id` (`--broker`); false
    /// when the broker's queue is full. Without a broker there is nothing to read: true.
    fn start_read(&mut self, id: u32, channel: Box<str>, since: u64, limit: usize) -> bool {
        let Some(broker) = self.shared.broker.as_ref().map(Arc::clone) else {
            return true;
        };
        let ticket = broker.next_seq();
        let deadline = Instant::now() + broker.config.timeout;
        let job = PublishJob {
            to: JobTo::History {
                since,
                limit,
                ticket,
            },
            channel,
            payload: Bytes::new(),
            kind: PayloadKind::Binary,
            deadline,
            reply: Some((self.index, id)),
        };
        if let Some(q) = self.queries.get_mut(id as usize) {
            q.read = Some(ReadWait {
                ticket,
                deadline,
                outcome: None,
            });
        }
        if !broker.publish(job) {
            self.counters.shard_inbox_full += 1;
            self.log(format_args!(
                "event=shard_inbox_full target=broker msg=history"
            ));
            return false;
        }
        true
    }

    /// The broker's answer to query `id`'s history read under `ticket`.
    pub(crate) fn broker_read(&mut self, id: u32, ticket: u32, outcome: ReadOutcome) {
        let Some(read) = self
            .queries
            .get_mut(id as usize)
            .and_then(|q| q.read.as_mut())
            .filter(|r| r.ticket == ticket && r.outcome.is_none())
        else {
            // Answered already at its deadline.
            return;
        };
        read.outcome = Some(outcome);
        self.finish_query(id);
    }

    /// Answers 503 every query whose Redis read is past its deadline (admin tick).
    pub(crate) fn read_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .queries
            .iter_mut()
            .filter_map(|(id, q)| {
                let read = q.read.as_mut().filter(|r| r.outcome.is_none())?;
                (now >= read.deadline).then(|| {
                    read.outcome = Some(Err(BrokerFault::Timeout));
                    id as u32
                })
            })
            .collect();
        for id in due {
            self.finish_query(id);
        }
    }

    /// Answers for exited client shards in every census still waiting for them.
    pub(super) fn census_exited(&mut self, gone: &[usize]) {
        let ids: Vec<u32> = self.queries.iter().map(|(id, _)| id as u32).collect();
        for id in ids {
            for &shard in gone {
                self.census_reply(id, shard, Vec::new(), false);
            }
        }
    }

    /// `GET /history/<channel>`: the channel's position and its retained messages after
    /// `since`; 404 when the node (or, under `--broker`, Redis) has no entry for the
    /// channel. Answered at once from the node's store, or under `--broker` once the
    /// publisher thread has read Redis (503 by `--broker-timeout` when it cannot).
    pub(super) fn admin_history(
        &mut self,
        key: usize,
        channel: &str,
        since: u64,
        limit: usize,
        head_only: bool,
        keep_alive: bool,
    ) {
        if self.shared.broker.is_some() {
            let id = self.queries.insert(Query {
                owner: self.owner(key),
                asked: Asked::History(channel.into()),
                keep_alive,
                head_only,
                waiting_on: Vec::new(),
                waiting: 0,
                counts: BTreeMap::new(),
                truncated: false,
                read: None,
            }) as u32;
            debug_assert!(id < BROADCAST_SLOT_TAG, "ids stay below the tags");
            if !self.start_read(id, channel.into(), since, limit) {
                self.queries.remove(id as usize);
                self.admin_slot(key, AdminSlot::Ready(broker_full(keep_alive), !keep_alive));
                return;
            }
            self.admin_slot(key, AdminSlot::Waiting(QUERY_SLOT_TAG | id));
            return;
        }
        let page = self
            .shared
            .history
            .read(channel, since, limit, Instant::now());
        let response = match page {
            None => no_history(head_only, keep_alive),
            Some(page) => json_response(200, &history_json(channel, &page), head_only, keep_alive),
        };
        self.admin_slot(key, AdminSlot::Ready(response, !keep_alive));
    }

    /// Gives back a place `reserve` took in `target`'s inbox.
    fn release(&self, target: usize) {
        self.peers.queued[target].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The 404 of a channel without history.
fn no_history(head_only: bool, keep_alive: bool) -> Bytes {
    let mut response = Vec::new();
    let body: &[u8] = if head_only {
        b""
    } else {
        b"no history: the node has no entry for this channel\n"
    };
    let media = Some("text/plain; charset=utf-8");
    write_response(&mut response, 404, &[], media, body, keep_alive);
    Bytes::from(response)
}

/// The 503 of a read the broker's queue had no room for.
fn broker_full(keep_alive: bool) -> Bytes {
    let body = b"broker queue full: the node is behind; retry later\n";
    Bytes::from(unavailable(&[("Retry-After", "1")], body, keep_alive))
}

/// A complete JSON answer (the body left out for a `HEAD`).
pub(super) fn json_response(status: u16, body: &[u8], head_only: bool, keep_alive: bool) -> Bytes {
    let mut response = Vec::with_capacity(body.len() + 128);
    let body = if head_only { &b""[..] } else { body };
    let media = Some("application/json");
    write_response(&mut response, status, &[], media, body, keep_alive);
    Bytes::from(response)
}

/// `{"channels":[{"channel":"A","subscribers":N},…],"truncated":B}`: the first `limit`
/// names with subscribers, in byte order.
fn list_json(counts: &BTreeMap<Box<str>, u64>, limit: usize, truncated: bool) -> Vec<u8> {
    let mut live = counts.iter().filter(|(_, &count)| count > 0);
    let mut body = String::from(r#"{"channels":["#);
    for (at, (name, count)) in live.by_ref().take(limit).enumerate() {
        debug_assert!(valid_name(name), "names need no JSON escaping");
        let comma = if at == 0 { "" } else { "," };
        let _ = write!(
            body,
            r#"{comma}{{"channel":"{name}","subscribers":{count}}}"#
        );
    }
    let truncated = truncated || live.next().is_some();
    let _ = write!(body, r#"],"truncated":{truncated}}}"#);
    body.into_bytes()
}

/// `{"channel":"A","subscribers":N}`, plus `"epoch"`, `"offset"`, `"history_entries"` and
/// (when any is retained) `"history_oldest_offset"` when the history store knows it.
fn one_json(name: &str, count: u64, page: Option<&Page>) -> Vec<u8> {
    debug_assert!(valid_name(name), "names need no JSON escaping");
    let mut body = format!(r#"{{"channel":"{name}","subscribers":{count}"#);
    if let Some(page) = page {
        let (epoch, offset) = (page.position.epoch.text(), page.position.offset);
        let _ = write!(
            body,
            r#","epoch":"{}","offset":{offset},"history_entries":{}"#,
            epoch.as_str(),
            page.retained
        );
        if let Some(oldest) = page.oldest_offset {
            let _ = write!(body, r#","history_oldest_offset":{oldest}"#);
        }
    }
    body.push('}');
    body.into_bytes()
}

/// `{"channel":"A","epoch":"E","offset":K,"messages":[…],"truncated":B}` (plus
/// `"oldest_offset"` when any message is retained), each message the object a JSON-mode
/// subscriber receives: `{"channel":"A","offset":K,"data":"…"}` or `"data_b64"`.
fn history_json(channel: &str, page: &Page) -> Vec<u8> {
    debug_assert!(valid_name(channel), "names need no JSON escaping");
    let mut body = BytesMut::new();
    let head = format!(
        r#"{{"channel":"{channel}","epoch":"{}","offset":{}"#,
        page.position.epoch.text().as_str(),
        page.position.offset
    );
    body.extend_from_slice(head.as_bytes());
    if let Some(oldest) = page.oldest_offset {
        body.extend_from_slice(format!(r#","oldest_offset":{oldest}"#).as_bytes());
    }
    body.extend_from_slice(br#","messages":["#);
    let mut cut = false;
    for (at, entry) in page.entries.iter().enumerate() {
        if at > 0 {
            if body.len() >= HISTORY_BODY_BYTES_MAX {
                cut = true;
                break;
            }
            body.extend_from_slice(b",");
        }
        json_proto::encode_message(&mut body, channel, entry.offset, &entry.payload);
    }
    let truncated = cut || page.more;
    body.extend_from_slice(format!(r#"],"truncated":{truncated}}}"#).as_bytes());
    body.to_vec()
}

#[cfg(test)]
#[path = "channels_tests.rs"]
mod tests;
