//! The publisher thread: runs the publish script for each `PublishJob`, in queue order, on
//! its own Redis connection, and answers the asking shard with `ShardMsg::Brokered`.
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

use super::cluster::{self, SlotMap};
use super::reader;
use super::wire::{self, OriginTag};
use super::{
    connect_to, random_u64, Backoff, Broker, BrokerFault, BrokerMode, JobTo, Outcome, PublishJob,
    Reach,
};
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
    let mut links = Links::new(&broker);
    let stats = &broker.stats;
    loop {
        if reach.stopping() {
            return;
        }
        let wait = links.connect_due(&broker);
        stats
            .publisher_up
            .store(links.up(&broker), Ordering::Relaxed);
        let job = match jobs.recv_timeout(wait) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // An idle connection is checked now and then, so /healthz tells the truth.
                links.check_all(&broker, Instant::now() + broker.config.timeout);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        broker.publishes_queued.fetch_sub(1, Ordering::Relaxed);
        if let JobTo::History {
            since,
            limit,
            ticket,
        } = job.to
        {
            let outcome = links.read_history(&broker, &history, &job, since, limit);
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
        let outcome = links.publish(&broker, &script, &reach, &job);
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

/// Why one attempt at a job failed.
enum Failure {
    /// The job's answer: no retry.
    Fault(BrokerFault),
    /// A cluster node answered MOVED, ASK, TRYAGAIN or CLUSTERDOWN: the slot map is stale.
    Redirected,
}

/// The publisher's connections: one to the single Redis, or one per cluster master with
/// the slot map that routes each channel's script to its master.
struct Links {
    links: Vec<Link>,
    /// The cluster's slot map; `None` in single mode, and in a cluster until discovered
    /// (again, after a redirect or a lost master).
    slots: Option<SlotMap>,
    /// No discovery before this (the backoff's wait after a failed one).
    discover_at: Instant,
    backoff: Backoff,
}

impl Links {
    fn new(broker: &Broker) -> Links {
        let mut links = Links {
            links: Vec::new(),
            slots: None,
            discover_at: Instant::now(),
            backoff: Backoff::new(random_u64()),
        };
        if broker.config.mode == BrokerMode::Single {
            links.link(&broker.config.seeds[0]);
        }
        links
    }

    /// The link to `url`, made (not yet connected) when there is none.
    fn link(&mut self, url: &str) -> &mut Link {
        let at = match self.links.iter().position(|l| l.url == url) {
            Some(at) => at,
            None => {
                self.links.push(Link::new(url));
                self.links.len() - 1
            }
        };
        &mut self.links[at]
    }

    /// Discovers the slot map when due and connects every link whose backoff ended; the
    /// longest the thread may wait for a job before it should look again.
    fn connect_due(&mut self, broker: &Broker) -> Duration {
        if broker.config.mode == BrokerMode::Cluster && self.slots.is_none() {
            self.discover(broker);
        }
        let now = Instant::now();
        let mut wait = Duration::from_millis(IDLE_POLL_MS);
        for link in &mut self.links {
            if link.con.is_none() && now >= link.retry_at {
                link.connect(broker);
            }
            if link.con.is_none() {
                wait = wait.min(link.retry_at.saturating_duration_since(now));
            }
        }
        wait
    }

    /// Reads the slot map from the seeds or a known master (once the backoff allows) and
    /// keeps one link per master.
    fn discover(&mut self, broker: &Broker) {
        if Instant::now() < self.discover_at {
            return;
        }
        let candidates = cluster::candidates(&broker.config, self.slots.as_ref());
        match cluster::discover(&broker.config, &candidates) {
            Ok(map) => {
                self.backoff.reset();
                let masters = map.masters();
                self.links.retain(|l| masters.contains(&l.url));
                for url in &masters {
                    self.link(url);
                }
                crate::elog!(
                    "ringpush event=broker_slots role=publish masters={}",
                    masters.len()
                );
                self.slots = Some(map);
            }
            Err(e) => {
                self.discover_at = Instant::now() + self.backoff.next_wait();
                crate::elog!("ringpush event=broker_connect_failed role=publish error={e}");
            }
        }
    }

    /// Every link is connected (and, in a cluster, the slot map known).
    fn up(&self, broker: &Broker) -> bool {
        let mapped = broker.config.mode == BrokerMode::Single || self.slots.is_some();
        mapped && !self.links.is_empty() && self.links.iter().all(|l| l.con.is_some())
    }

    /// PINGs every idle connection (answers by `deadline`).
    fn check_all(&mut self, broker: &Broker, deadline: Instant) {
        let mut lost = false;
        for link in &mut self.links {
            lost |= link.check(broker, deadline);
        }
        if lost && broker.config.mode == BrokerMode::Cluster {
            self.slots = None;
        }
    }

    /// The URL of the node that takes `job`: the single Redis, the master owning the
    /// channel's slot, or for session messages any master (ordinary PUBLISH reaches every
    /// node of a cluster), a connected one first.
    fn route(&mut self, broker: &Broker, job: &PublishJob) -> Option<String> {
        if broker.config.mode == BrokerMode::Single {
            return Some(broker.config.seeds[0].clone());
        }
        if self.slots.is_none() {
            self.discover(broker);
        }
        let slots = self.slots.as_ref()?;
        match job.to {
            JobTo::Channel | JobTo::History { .. } => slots
                .master_of(cluster::channel_slot(&job.channel))
                .map(str::to_string),
            JobTo::Sessions => self
                .links
                .iter()
                .find(|l| l.con.is_some())
                .map(|l| l.url.clone())
                .or_else(|| slots.masters().into_iter().next()),
        }
    }

    /// Runs `job` on its node; a redirect re-reads the slot map and tries once more.
    fn publish(
        &mut self,
        broker: &Broker,
        script: &Script,
        reach: &Reach,
        job: &PublishJob,
    ) -> Outcome {
        for _ in 0..2 {
            match self.publish_once(broker, script, reach, job) {
                Ok(position) => return Ok(position),
                Err(Failure::Fault(fault)) => return Err(fault),
                Err(Failure::Redirected) if broker.config.mode == BrokerMode::Single => {
                    // One address given, but it is a cluster node: list the cluster's
                    // nodes (two or more, or the one twice) to route by slot.
                    return Err(BrokerFault::Refused);
                }
                Err(Failure::Redirected) => {
                    self.slots = None;
                    self.discover_at = Instant::now();
                }
            }
        }
        Err(BrokerFault::Unreachable)
    }

    fn publish_once(
        &mut self,
        broker: &Broker,
        script: &Script,
        reach: &Reach,
        job: &PublishJob,
    ) -> Result<Position, Failure> {
        self.run_once(broker, job, |con| publish(con, script, reach, job))
    }

    /// Reads a channel's history on its node (one attempt: a read is not worth a retry
    /// past a redirect; the view answers 503 and may be asked again).
    fn read_history(
        &mut self,
        broker: &Broker,
        script: &Script,
        job: &PublishJob,
        since: u64,
        limit: usize,
    ) -> super::ReadOutcome {
        let read = |con: &mut Connection| {
            reader::read(con, script, &job.channel, since, limit, job.deadline)
                .map_err(Failure::Fault)
        };
        match self.run_once(broker, job, read) {
            Ok(page) => Ok(page),
            Err(Failure::Fault(fault)) => Err(fault),
            Err(Failure::Redirected) => {
                if broker.config.mode == BrokerMode::Cluster {
                    self.slots = None;
                    self.discover_at = Instant::now();
                }
                Err(BrokerFault::Unreachable)
            }
        }
    }

    /// Runs `exchange` on the connection of the node that takes `job`, keeping the link's
    /// state (a failed exchange other than a refusal drops the connection).
    fn run_once<T>(
        &mut self,
        broker: &Broker,
        job: &PublishJob,
        exchange: impl FnOnce(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let cluster = broker.config.mode == BrokerMode::Cluster;
        let url = self
            .route(broker, job)
            .ok_or(Failure::Fault(BrokerFault::Unreachable))?;
        let link = self.link(&url);
        // A connection that may have gone stale is checked first (PING is harmless to
        // repeat; the script is not), and made again at once if it has.
        let lost_now = link.check(broker, job.deadline);
        // Redis answers the subscriber again: no need to wait out the backoff for this job.
        let back = link.con.is_none() && broker.stats.subscriber_up.load(Ordering::Relaxed);
        if link.con.is_none() && (lost_now || back) {
            link.connect(broker);
        }
        let Some(con) = link.con.as_mut() else {
            return Err(Failure::Fault(BrokerFault::Unreachable));
        };
        let answer = exchange(con);
        match &answer {
            Ok(_) => link.last_used = Instant::now(),
            Err(Failure::Fault(fault)) if *fault != BrokerFault::Refused => {
                // The connection's state is unknown: a late answer would be taken for the
                // next job's.
                link.lose(broker, fault.reason());
            }
            Err(_) => {}
        }
        if cluster && matches!(answer, Err(Failure::Fault(BrokerFault::Unreachable))) {
            // A lost master may have been replaced: read the slot map again.
            self.slots = None;
        }
        answer
    }
}

/// The publisher's connection and its reconnect state.
struct Link {
    /// The node this link connects to.
    url: String,
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
    fn new(url: &str) -> Link {
        Link {
            url: url.to_string(),
            con: None,
            backoff: Backoff::new(random_u64()),
            ever_connected: false,
            retry_at: Instant::now(),
            last_used: Instant::now(),
            losses_seen: 0,
        }
    }

    fn connect(&mut self, broker: &Broker) {
        match connect_to(&broker.config, &self.url) {
            Ok(c) => {
                self.con = Some(c);
                self.backoff.reset();
                if self.ever_connected {
                    broker.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.ever_connected = true;
                self.last_used = Instant::now();
                self.losses_seen = broker.subscriber_losses.load(Ordering::Relaxed);
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
fn publish(
    con: &mut Connection,
    script: &Script,
    reach: &Reach,
    job: &PublishJob,
) -> Result<Position, Failure> {
    let left = job.deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(Failure::Fault(BrokerFault::Timeout));
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
            Err(e) => Err(failure_of(&e)),
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
        .arg(wire::publish_command(config.mode))
        .invoke(con);
    match answer {
        Ok((epoch, offset)) => match Epoch::parse(&epoch) {
            Some(epoch) => Ok(Position { epoch, offset }),
            None => Err(Failure::Fault(BrokerFault::Refused)),
        },
        Err(e) => Err(failure_of(&e)),
    }
}

/// A redirect, or what the failed exchange means for the job and the connection.
fn failure_of(e: &RedisError) -> Failure {
    if e.is_cluster_error() {
        crate::elog!("ringpush event=broker_redirected error={e}");
        Failure::Redirected
    } else {
        Failure::Fault(fault_of(e))
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
