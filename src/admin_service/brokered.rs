//! Admin publishes through the broker (`--broker`): the request waits in `pending` under a
//! sequence number (`Core::broker_waits`) until Redis has accepted it (`ShardMsg::Brokered`,
//! with its epoch and offset) and every client shard has counted the copy the broker handed
//! back to this node (`ShardMsg::BrokerReply`).
//!
//! Invariants:
//! - A brokered publish is answered exactly once: 200 once Redis accepted it and the counts
//!   are in (or its deadline passed with the counts so far), 503 when Redis refused it, could
//!   not be reached, or did not answer by its deadline (`--broker-timeout`). A broadcast's
//!   channel is recorded in its broadcast instead: its count, or `"refused":true`.
//! - An entry of `broker_waits` names a live `pending` entry; both leave together.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::unavailable;
use crate::broker::{BrokerFault, Outcome};
use crate::fanout::Unsent;
use crate::shard::Core;

impl Core {
    /// Queues the brokered publish of waiting request `id` (its answer waits in `pending`).
    pub(super) fn admin_broker_publish(
        &mut self,
        id: u32,
        name: Box<str>,
        frame: Bytes,
    ) -> Result<(), Unsent> {
        let broker = Arc::clone(self.shared.broker.as_ref().expect("called with --broker"));
        let seq = broker.next_seq();
        let deadline = Instant::now() + broker.config.timeout;
        if let Some(p) = self.pending.get_mut(id as usize) {
            p.broker = Some((seq, deadline));
        }
        self.broker_waits.insert(seq, id);
        let sent = self.broker_publish(name, frame, Some(seq));
        if sent.is_err() {
            self.broker_waits.remove(&seq);
        }
        sent
    }

    /// The broker's outcome for the publish of sequence number `seq`.
    pub(crate) fn brokered(&mut self, seq: u32, outcome: Outcome) {
        let Some(&id) = self.broker_waits.get(&seq) else {
            // Answered already at its deadline.
            return;
        };
        match outcome {
            Ok(position) => {
                let Some(p) = self.pending.get_mut(id as usize) else {
                    return;
                };
                p.position = Some(position);
                // No local shard holds the channel: no copy comes back to count.
                let held = self
                    .shared
                    .broker
                    .as_ref()
                    .is_some_and(|b| b.is_subscribed(&p.name));
                if p.waiting == 0 || !held {
                    self.answer_publish(id);
                }
            }
            Err(fault) => self.refuse_brokered(id, fault),
        }
    }

    /// Answers every brokered publish past its deadline: with its counts so far when Redis
    /// accepted it, else 503. Called on every admin tick.
    pub(crate) fn broker_deadlines(&mut self) {
        if self.broker_waits.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<(u32, bool)> = self
            .broker_waits
            .values()
            .filter_map(|&id| {
                let p = self.pending.get(id as usize)?;
                let (_, deadline) = p.broker?;
                (now >= deadline).then_some((id, p.position.is_some()))
            })
            .collect();
        for (id, accepted) in due {
            if accepted {
                self.answer_publish(id);
            } else {
                self.refuse_brokered(id, BrokerFault::Timeout);
            }
        }
    }

    /// Answers waiting publish `id` 503 for `fault` (the connection stays).
    fn refuse_brokered(&mut self, id: u32, fault: BrokerFault) {
        let p = self.pending.remove(id as usize);
        if let Some((seq, _)) = p.broker {
            self.broker_waits.remove(&seq);
        }
        let reason = fault.reason();
        self.log(format_args!(
            "event=broker_publish_failed channel={} reason={}",
            p.name,
            reason.replace(' ', "_")
        ));
        if self.broadcast_refused(id) {
            return;
        }
        if !self.live(p.owner) {
            return;
        }
        let body = format!("{reason}: the publish did not reach Redis; retry later\n");
        let response = unavailable(&[("Retry-After", "1")], body.as_bytes(), p.keep_alive);
        let key = p.owner.key as usize;
        self.admin_ready(key, id, Bytes::from(response), !p.keep_alive);
        self.process_admin(key);
    }
}
