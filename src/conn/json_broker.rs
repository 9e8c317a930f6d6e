//! JSON mode through the broker (`--broker`): subscriptions, resume and publishes whose
//! positions come from Redis, answered without the shard ever waiting for it.
//!
//! A `subscribe` on a channel whose position this shard knows (its watermark came from a
//! broker message or an earlier `Attached`) and without `since` is answered at once. Any
//! other waits: the connection holds a `WAITING` token (it keeps the channel, gets no
//! message) and a `BrokerJoin` under a ticket, and the subscriber thread answers
//! `ShardMsg::Attached` with the channel's position read after this node's subscription
//! was confirmed, plus the kept messages after `since`. That answer sits in the inbox in
//! order with the channel's messages, so:
//! - every message above the position arrives after it, and every one at or below it
//!   before it or is skipped by the watermark;
//! - a resume replays the kept messages in (since, watermark] and then joins the live list:
//!   no gap and no duplicate, whichever node the client was on before;
//! - a client ahead of this shard (since above the watermark, within the position) waits as
//!   `Ahead` does without a broker, and joins when the watermark reaches it.
//!
//! A waiting subscription gets its answer by `--broker-timeout` (`broker_join_deadlines`,
//! on every wheel step): when the position has not come by then (Redis down or slow), an
//! error 503 (`broker unreachable` or `broker timeout`), its token leaves the channel and
//! the connection stays; a later `subscribe` of that channel starts afresh.
//!
//! A `publish` is queued for the broker under a sequence number and answered `published`
//! (or error 503) when `ShardMsg::Brokered` comes back.

use std::time::Instant;

use bytes::BytesMut;

use crate::broker::{BrokerFault, HoldJob, Kept, Outcome};
use crate::channels::{Subscription, WAITING};
use crate::history::{Epoch, Position};
use crate::json_proto::{self as proto, ErrorCode, Recovery, Since};
use crate::ring::Owner;
use crate::shard::Core;

/// A JSON subscription waiting for its channel's position from the broker.
pub struct BrokerJoin {
    pub owner: Owner,
    /// The channel's id on this shard when the subscription started.
    pub channel: u32,
    pub id: Option<u64>,
    pub since: Option<Since>,
    /// `--broker-timeout` after the subscribe: answered error 503 by then at the latest.
    pub deadline: Instant,
}

/// A JSON publish waiting for the broker's answer.
pub struct BrokerPublish {
    pub owner: Owner,
    pub id: u64,
    pub channel: Box<str>,
}

impl Core {
    /// `subscribe` with `--broker`: at once when the position is known and nothing is to be
    /// replayed, else through a ticket (see the module doc). The caller has checked the
    /// token's scope, the duplicate and the subscription cap.
    pub(crate) fn json_subscribe_brokered(
        &mut self,
        key: usize,
        id: Option<u64>,
        name: &str,
        since: Option<Since>,
    ) {
        let cid = self.channels.open(name);
        let mark = self.attach(cid);
        let token = if since.is_none() && mark != Position::UNKNOWN {
            let epoch = mark.epoch.text();
            self.json_answer(|out: &mut BytesMut| {
                proto::encode_subscribed(
                    out,
                    id,
                    name,
                    epoch.as_str(),
                    mark.offset,
                    Recovery::NotRecovered,
                )
            });
            self.channels.join(key as u32, cid)
        } else {
            let ticket = self.broker_tickets;
            self.broker_tickets += 1;
            let owner = self.owner(key);
            let resume_from = since.as_ref().map(|s| s.offset);
            let broker = self.shared.broker.as_ref().expect("called with --broker");
            let join = BrokerJoin {
                owner,
                channel: cid,
                id,
                since,
                deadline: Instant::now() + broker.config.timeout,
            };
            self.broker_joins.insert(ticket, join);
            broker.hold(HoldJob::Position {
                shard: self.index,
                channel: name.into(),
                ticket,
                since: resume_from,
            });
            self.channels.wait(key as u32, cid, u64::MAX)
        };
        self.counters.subscriptions += 1;
        if let Some(j) = self.json_conns.get_mut(&key) {
            j.subs.push(token);
        }
    }

    /// The broker's position of `channel` for ticket `ticket`: sets this shard's watermark
    /// if it had none and answers the waiting subscription.
    pub(crate) fn broker_attached(
        &mut self,
        channel: &str,
        ticket: u64,
        position: Position,
        kept: Vec<Kept>,
    ) {
        // Only an answer some subscription still waits for may set the watermark: a late
        // one, for a channel freed and opened again since, would name a position from
        // before this shard's new hold.
        let Some(join) = self.broker_joins.remove(&ticket) else {
            return;
        };
        let Some(cid) = self.channels.id(channel).filter(|&cid| cid == join.channel) else {
            return;
        };
        if !self.live(join.owner) {
            return;
        }
        let key = join.owner.key as usize;
        let Some(at) = self.json_conns.get(&key).and_then(|j| {
            j.subs
                .iter()
                .position(|s| s.channel == cid && s.slot == WAITING)
        }) else {
            return;
        };
        let mark = match self.channels.mark(cid) {
            Some(mark) => {
                // Only a shard that has seen no message of this epoch takes the position:
                // one that has keeps its watermark (at most the position), and the
                // messages between arrive after this answer.
                if *mark == Position::UNKNOWN || mark.epoch != position.epoch {
                    *mark = position;
                }
                *mark
            }
            None => return,
        };
        // The answer, the replay and the token, decided before the token changes.
        let epoch = mark.epoch.text();
        let (answer_offset, recovery, replay, joined) = match &join.since {
            None => (
                mark.offset,
                Recovery::NotRecovered,
                Vec::new(),
                Joined::Live,
            ),
            Some(since) => match resume(channel, since, mark, position, kept) {
                Resume::Replay(frames) => (mark.offset, Recovery::Recovered, frames, Joined::Live),
                Resume::Ahead => (since.offset, Recovery::Recovered, Vec::new(), Joined::Ahead),
                Resume::Lost => (
                    mark.offset,
                    Recovery::NotRecovered,
                    Vec::new(),
                    Joined::Live,
                ),
            },
        };
        self.json_answer(|out: &mut BytesMut| {
            proto::encode_subscribed(
                out,
                join.id,
                channel,
                epoch.as_str(),
                answer_offset,
                recovery,
            )
        });
        self.flush_out(key);
        for payload in replay {
            self.enqueue(key, payload);
        }
        // Join first, then leave the wait: the channel never looks empty in between.
        let token = match joined {
            Joined::Live => self.channels.join(key as u32, cid),
            Joined::Ahead => Subscription {
                channel: cid,
                slot: WAITING,
            },
        };
        self.channels.unwait(key as u32, cid);
        if joined == Joined::Ahead {
            self.channels.wait(key as u32, cid, answer_offset);
        }
        if let Some(j) = self.json_conns.get_mut(&key) {
            j.subs[at] = token;
        }
    }

    /// Answers error 503 every subscription whose position did not come by its deadline
    /// (Redis down or slow): its waiting token leaves the channel, the connection stays,
    /// and a later `subscribe` starts afresh. A late `Attached` finds no ticket.
    pub(crate) fn broker_join_deadlines(&mut self) {
        if self.broker_joins.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<u64> = self
            .broker_joins
            .iter()
            .filter(|(_, join)| now >= join.deadline)
            .map(|(&ticket, _)| ticket)
            .collect();
        let fault = match self.shared.broker.as_ref().is_some_and(|b| b.up()) {
            true => BrokerFault::Timeout,
            false => BrokerFault::Unreachable,
        };
        for ticket in due {
            let Some(join) = self.broker_joins.remove(&ticket) else {
                continue;
            };
            if !self.live(join.owner) {
                continue;
            }
            let key = join.owner.key as usize;
            let token = self.json_conns.get_mut(&key).and_then(|j| {
                let at = j
                    .subs
                    .iter()
                    .position(|s| s.channel == join.channel && s.slot == WAITING)?;
                Some(j.subs.swap_remove(at))
            });
            let Some(token) = token else {
                continue;
            };
            self.unsubscribe_token(key, token);
            self.detach_freed();
            self.json_error(join.id, ErrorCode::Busy, fault.reason());
            self.flush_out(key);
        }
    }

    /// Forgets the waiting subscription of `key` to channel `cid` (an `unsubscribe` before
    /// its answer came): a later subscription of the same connection gets its own answer.
    pub(crate) fn forget_broker_join(&mut self, key: usize, cid: u32) {
        if self.broker_joins.is_empty() {
            return;
        }
        let owner = self.owner(key);
        self.broker_joins
            .retain(|_, join| join.owner != owner || join.channel != cid);
    }

    /// `publish` with `--broker`: queued for Redis, answered when it comes back.
    pub(crate) fn json_publish_brokered(
        &mut self,
        key: usize,
        id: u64,
        name: Box<str>,
        frame: bytes::Bytes,
    ) {
        let broker = self.shared.broker.as_ref().expect("called with --broker");
        let seq = broker.next_seq();
        let owner = self.owner(key);
        let waiting = BrokerPublish {
            owner,
            id,
            channel: name.clone(),
        };
        self.broker_publishes.insert(seq, waiting);
        if self.broker_publish(name, frame, Some(seq)).is_err() {
            self.broker_publishes.remove(&seq);
            self.json_error(Some(id), ErrorCode::Busy, "broker queue full");
        }
    }

    /// The broker's outcome for a JSON publish of this shard.
    pub(crate) fn json_brokered(&mut self, seq: u32, outcome: Outcome) {
        let Some(waiting) = self.broker_publishes.remove(&seq) else {
            return;
        };
        if !self.live(waiting.owner) {
            return;
        }
        let key = waiting.owner.key as usize;
        match outcome {
            Ok(position) => {
                let epoch = position.epoch.text();
                self.json_answer(|out: &mut BytesMut| {
                    let (channel, offset) = (&waiting.channel, position.offset);
                    proto::encode_published(out, waiting.id, channel, epoch.as_str(), offset)
                });
            }
            Err(fault) => self.json_error(Some(waiting.id), ErrorCode::Busy, fault.reason()),
        }
        self.flush_out(key);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Joined {
    Live,
    Ahead,
}

/// What a resume from `since` gets, with this shard at `mark` and Redis at `position`.
enum Resume {
    /// Every message in (since, mark] was kept: their frames, in order.
    Replay(Vec<bytes::Bytes>),
    /// The client saw messages this shard has not delivered yet.
    Ahead,
    /// Another epoch, an offset never reached, or messages no longer kept.
    Lost,
}

fn resume(
    channel: &str,
    since: &Since,
    mark: Position,
    position: Position,
    kept: Vec<Kept>,
) -> Resume {
    if Epoch::parse(&since.epoch) != Some(mark.epoch) || since.offset > position.offset {
        return Resume::Lost;
    }
    if since.offset > mark.offset {
        return Resume::Ahead;
    }
    let wanted = mark.offset - since.offset;
    let frames: Vec<bytes::Bytes> = kept
        .into_iter()
        .filter(|(offset, _, _)| *offset > since.offset && *offset <= mark.offset)
        .enumerate()
        .take_while(|(i, (offset, _, _))| *offset == since.offset + 1 + *i as u64)
        .map(|(_, (offset, _, payload))| proto::message_frame(channel, offset, &payload))
        .collect();
    if frames.len() as u64 == wanted {
        Resume::Replay(frames)
    } else {
        Resume::Lost
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::history::PayloadKind;

    fn at(offset: u64) -> Position {
        Position {
            epoch: Epoch::parse("00000000000000aa").unwrap(),
            offset,
        }
    }

    fn since(epoch: &str, offset: u64) -> Since {
        Since {
            epoch: epoch.into(),
            offset,
        }
    }

    fn kept(offsets: std::ops::RangeInclusive<u64>) -> Vec<Kept> {
        offsets
            .map(|o| (o, PayloadKind::Text, Bytes::from(format!("m{o}"))))
            .collect()
    }

    const EPOCH: &str = "00000000000000aa";

    #[test]
    fn a_resume_replays_exactly_since_to_the_watermark() {
        // Redis is at 9, this shard has delivered up to 7: 4..=7 replayed, 8 and 9 live.
        match resume("c", &since(EPOCH, 3), at(7), at(9), kept(1..=9)) {
            Resume::Replay(frames) => {
                assert_eq!(frames.len(), 4);
                assert_eq!(frames[0], proto::message_frame("c", 4, b"m4"));
                assert_eq!(frames[3], proto::message_frame("c", 7, b"m7"));
            }
            _ => panic!("expected a replay"),
        }
        // Nothing missed: recovered with nothing to replay, even with history off.
        assert!(matches!(
            resume("c", &since(EPOCH, 7), at(7), at(9), Vec::new()),
            Resume::Replay(f) if f.is_empty()
        ));
    }

    #[test]
    fn a_client_ahead_of_the_shard_waits_and_the_rest_is_lost() {
        assert!(matches!(
            resume("c", &since(EPOCH, 8), at(7), at(9), kept(1..=9)),
            Resume::Ahead
        ));
        // Past Redis' offset, another epoch, or a message no longer kept: not recovered.
        for (s, kept) in [
            (since(EPOCH, 10), kept(1..=9)),
            (since("00000000000000bb", 3), kept(1..=9)),
            (since(EPOCH, 3), kept(6..=9)),
        ] {
            assert!(matches!(resume("c", &s, at(7), at(9), kept), Resume::Lost));
        }
    }
}
