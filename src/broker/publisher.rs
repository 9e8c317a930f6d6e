//! The publisher thread: runs the publish script for each `PublishJob`, in queue order, on
//! its own Redis connection, and answers the asking shard with `ShardMsg::Brokered`.
//!
//! History reads (`JobTo::History`, `reader.rs`) take the same queue and connection and
//! are answered with `ShardMsg::BrokerRead`.
//!
//! Session messages (`JobTo::Sessions`: `/send` bodies and claims) are a plain PUBLISH on
//! `wire::SESSIONS_CHANNEL`, in the same queue order.
//!
//! Invariants:
//! - A job is answered exactly once when it asks for an answer: the position Redis gave,
//!   or a `BrokerFault` no later than its deadline (a job found past its deadline is failed
//!   without being sent; while there is no connection, jobs fail at once).
//! - After an I/O error or a timeout the connection is dropped (a late answer would be read
//!   as the next job's) and made again after a backoff wait; meanwhile jobs fail at once.
//! - The script runs only on a connection known to work: one idle for `IDLE_CHECK_MS`, or
//!   one older than the subscriber's last loss, answers a PING first; if it does not, the
//!   connection is made again at once for the job at hand, as it is when a job finds no
//!   connection while the subscriber thread has one (Redis is back before the backoff
//!   ended). So a Redis restart costs no publish that comes after it.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Script};

use super::reader;
use super::wire::{self, OriginTag};
use super::{connect, random_u64, Backoff, Broker, BrokerFault, JobTo, Outcome, PublishJob, Reach};
use crate::fanout::ShardMsg;
use crate::history::{Epoch, Position};

/// How often an idle thread looks at the shutdown flag.
const IDLE_POLL_MS: u64 = 100;

/// A connection unused for this long is PINGed before its next use, and while idle.
const IDLE_CHECK_MS: u64 = 1_000;

/// The thread's loop, until the node shuts down.
pub(super) fn run(mut reach: Reach, jobs: Receiver<PublishJob>) {
    let script = Script::new(wire::PUBLISH_SCRIPT);
    let history = Script::new(wire::HISTORY_SCRIPT);
    let broker = Arc::clone(&reach.broker);
    let mut link = Link {
        con: None,
        backoff: Backoff::new(random_u64()),
        ever_connected: false,
        retry_at: Instant::now(),
        last_used: Instant::now(),
        losses_seen: 0,
    };
    let stats = &broker.stats;
    loop {
        if reach.stopping() {
            return;
        }
        if link.con.is_none() && Instant::now() >= link.retry_at {
            link.connect(&broker);
        }
        let wait = match link.con {
            Some(_) => Duration::from_millis(IDLE_POLL_MS),
            None => link
                .retry_at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(IDLE_POLL_MS)),
        };
        let job = match jobs.recv_timeout(wait) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // An idle connection is checked now and then, so /healthz tells the truth.
                link.check(&broker, Instant::now() + broker.config.timeout);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        broker.publishes_queued.fetch_sub(1, Ordering::Relaxed);
        // A connection that may have gone stale is checked first (PING is harmless to
        // repeat; the script is not), and made again at once if it has.
        let lost_now = link.check(&broker, job.deadline);
        // Redis answers the subscriber again: no need to wait out the backoff for this job.
        let back = link.con.is_none() && stats.subscriber_up.load(Ordering::Relaxed);
        if link.con.is_none() && (lost_now || back) {
            link.connect(&broker);
        }
        if let JobTo::History {
            since,
            limit,
            ticket,
        } = job.to
        {
            let outcome = match link.con.as_mut() {
                None => Err(BrokerFault::Unreachable),
                Some(c) => reader::read(c, &history, &job.channel, since, limit, job.deadline),
            };
            match &outcome {
                Ok(_) => link.last_used = Instant::now(),
                Err(BrokerFault::Refused) => {}
                Err(fault) => link.lose(&broker, fault.reason()),
            }
            if let Some((shard, id)) = job.reply {
                let answer = ShardMsg::BrokerRead {
                    id,
                    ticket,
                    outcome,
                };
                reach.push(shard, answer);
                reach.ring_doorbells();
            }
            continue;
        }
        let outcome = match link.con.as_mut() {
            None => Err(BrokerFault::Unreachable),
            Some(c) => match publish(c, &script, &reach, &job) {
                Ok(position) => {
                    link.last_used = Instant::now();
                    Ok(position)
                }
                Err(fault) => {
                    if fault != BrokerFault::Refused {
                        // The connection's state is unknown: a late answer would be taken
                        // for the next job's.
                        link.lose(&broker, fault.reason());
                    }
                    Err(fault)
                }
            },
        };
        match outcome {
            Ok(_) => stats.publishes.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.publish_failures.fetch_add(1, Ordering::Relaxed),
        };
        if let Some((shard, seq)) = job.reply {
            reach.push(shard, ShardMsg::Brokered { seq, outcome });
            reach.ring_doorbells();
        }
    }
}

/// The publisher's connection and its reconnect state.
struct Link {
    con: Option<Connection>,
    backoff: Backoff,
    ever_connected: bool,
    /// No connect attempt before this (the backoff's wait).
    retry_at: Instant,
    /// The last exchange that worked.
    last_used: Instant,
    /// `Broker::subscriber_losses` as of the last exchange that worked.
    losses_seen: u64,
}

impl Link {
    fn connect(&mut self, broker: &Broker) {
        match connect(&broker.config) {
            Ok(c) => {
                self.con = Some(c);
                self.backoff.reset();
                if self.ever_connected {
                    broker.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.ever_connected = true;
                self.last_used = Instant::now();
                self.losses_seen = broker.subscriber_losses.load(Ordering::Relaxed);
                broker.stats.publisher_up.store(true, Ordering::Relaxed);
                crate::elog!("ringpush event=broker_connected role=publish");
            }
            Err(e) => {
                self.retry_at = Instant::now() + self.backoff.next_wait();
                crate::elog!("ringpush event=broker_connect_failed role=publish error={e}");
            }
        }
    }

    /// Drops the connection; the next attempt waits for the backoff.
    fn lose(&mut self, broker: &Broker, reason: &str) {
        self.con = None;
        broker.stats.publisher_up.store(false, Ordering::Relaxed);
        self.retry_at = Instant::now() + self.backoff.next_wait();
        crate::elog!(
            "ringpush event=broker_lost role=publish reason={}",
            reason.replace(' ', "_")
        );
    }

    /// PINGs the connection (answer by `deadline`) if it was idle for `IDLE_CHECK_MS` or
    /// the subscriber lost its own since; true when it did and the connection was lost.
    fn check(&mut self, broker: &Broker, deadline: Instant) -> bool {
        let losses = broker.subscriber_losses.load(Ordering::Relaxed);
        let stale = losses != self.losses_seen
            || self.last_used.elapsed() >= Duration::from_millis(IDLE_CHECK_MS);
        let Some(con) = self.con.as_mut().filter(|_| stale) else {
            return false;
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = con.set_read_timeout(Some(left));
        let _ = con.set_write_timeout(Some(left));
        match redis::cmd("PING").query::<String>(con) {
            Ok(_) => {
                self.last_used = Instant::now();
                self.losses_seen = losses;
                false
            }
            Err(_) => {
                self.lose(broker, "ping failed");
                // A lost connection is made again at once for the job at hand.
                self.retry_at = Instant::now();
                true
            }
        }
    }
}

/// Runs the script for one job within its deadline.
fn publish(con: &mut Connection, script: &Script, reach: &Reach, job: &PublishJob) -> Outcome {
    let left = job.deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(BrokerFault::Timeout);
    }
    let _ = con.set_read_timeout(Some(left));
    let _ = con.set_write_timeout(Some(left));
    if job.to == JobTo::Sessions {
        let answer: Result<i64, RedisError> = redis::cmd("PUBLISH")
            .arg(wire::SESSIONS_CHANNEL)
            .arg(&job.payload[..])
            .query(con);
        return match answer {
            Ok(_) => Ok(Position::UNKNOWN),
            Err(e) => Err(fault_of(&e)),
        };
    }
    let config = &reach.broker.config;
    // Only the admin shard (after the client shards) waits for the local counts; a JSON
    // publisher waits for the position alone.
    let admin = reach.peers.clients;
    let origin = job
        .reply
        .filter(|&(shard, _)| shard == admin)
        .map(|(_, seq)| OriginTag {
            node: reach.broker.node,
            seq,
        });
    let answer: Result<(String, u64), RedisError> = script
        .key(wire::meta_key(&job.channel))
        .key(wire::log_key(&job.channel))
        .arg(wire::epoch_candidate(random_u64()))
        .arg(wire::kind_code(job.kind))
        .arg(&job.payload[..])
        .arg(config.history_size)
        .arg(config.key_ttl_ms)
        .arg(wire::pubsub_channel(&job.channel))
        .arg(wire::origin_text(origin))
        .invoke(con);
    match answer {
        Ok((epoch, offset)) => match Epoch::parse(&epoch) {
            Some(epoch) => Ok(Position { epoch, offset }),
            None => Err(BrokerFault::Refused),
        },
        Err(e) => Err(fault_of(&e)),
    }
}

/// What a failed exchange means for the job and the connection.
pub(super) fn fault_of(e: &RedisError) -> BrokerFault {
    if e.is_timeout() {
        BrokerFault::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() {
        BrokerFault::Unreachable
    } else {
        crate::elog!("ringpush event=broker_refused error={e}");
        BrokerFault::Refused
    }
}
