//! JSON mode in a worker: the `subscribed` answers (offsets and epochs), and the resume
//! scenario's steps: park every connection (close it, keep its slot and offset), then
//! reopen them all and subscribe with `since`, and note when each has caught up.
//!
//! Invariants:
//! - A parked slot is in `Backoff` with `PARKED` and no deadline; only the reconnect step
//!   reopens it, and the close phase frees it.
//! - A resuming attempt sends its subscribes right after the 101 and expects the missed
//!   messages from sequence 0; it counts as caught up once, when the sequence reaches the
//!   number of messages published.

use std::sync::atomic::Ordering;

use ringpush::ws::{frame, OpCode};

use super::{Core, ResumeStep, Traffic};
use crate::conn::{self, State};
use crate::json::{self, Subscribed};
use crate::report;
use crate::target::Mode;

/// The id of the resubscribe to the scenario's channel (fillers follow from 2).
const RESUME_ID: u64 = 1;

impl Core {
    /// Whether attempts started now are a resume scenario's reconnects.
    pub(super) fn resuming(&self) -> bool {
        matches!(self.traffic, Traffic::Resume { .. }) && self.resume_step == ResumeStep::Reconnect
    }

    /// Follows the resume step the main thread set.
    pub(super) fn sync_resume(&mut self) {
        if !matches!(self.traffic, Traffic::Resume { .. }) {
            return;
        }
        let step = self.shared.resume_step();
        if step == self.resume_step {
            return;
        }
        self.resume_step = step;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        match step {
            ResumeStep::Hold => {}
            ResumeStep::Disconnect => {
                for key in keys {
                    let c = &mut self.conns[key];
                    if c.state == State::Open && !c.has(conn::CLOSE_SENT) {
                        c.flags |= conn::PARKED;
                        self.close_conn(key);
                    }
                }
            }
            ResumeStep::Reconnect => {
                for key in keys {
                    let c = &self.conns[key];
                    if c.state == State::Backoff && c.has(conn::PARKED) {
                        let owner = self.owner(key);
                        self.reopen.push_back(owner);
                    }
                }
            }
        }
        self.publish();
    }

    /// A resuming connection is open: subscribe to the scenario's channel with `since`,
    /// and to its fillers again.
    pub(super) fn resubscribe(&mut self, key: usize) {
        let Mode::Json(mode) = &self.plan.mode else {
            return;
        };
        let c = &self.conns[key];
        let epoch = self.resume_epoch.as_deref().unwrap_or("");
        let mut text = Vec::with_capacity(160);
        let mut frames = bytes::BytesMut::new();
        for k in 0..mode.channels_per_conn {
            text.clear();
            let channel = mode.channel_name(c.index, k);
            let since = (k == 0).then_some((epoch, c.since_offset));
            json::write_subscribe(&mut text, RESUME_ID + k as u64, &channel, since);
            frame::encode_into(
                &mut frames,
                true,
                OpCode::Text,
                &text,
                Some(self.rng.next_key()),
            );
        }
        self.push_frame(key, frames.freeze());
    }

    /// A `subscribed` answer on `key`.
    pub(super) fn subscribed(&mut self, key: usize, answer: Subscribed) {
        self.counters.json_subscribed += 1;
        if self.json_channel.as_deref() != Some(answer.channel.as_str()) {
            return;
        }
        if answer.id == Some(RESUME_ID) && self.resuming() {
            if answer.recovered {
                self.counters.resumes_recovered += 1;
            } else {
                self.counters.resumes_not_recovered += 1;
            }
        } else {
            match &self.resume_epoch {
                None => self.resume_epoch = Some(answer.epoch),
                Some(epoch) if *epoch != answer.epoch => self.counters.epoch_mismatches += 1,
                Some(_) => {}
            }
        }
        self.conns[key].since_offset = answer.offset;
    }

    /// After messages on `key`: a resuming client that now has every missed message has
    /// caught up.
    pub(super) fn check_caught_up(&mut self, key: usize) {
        let Traffic::Resume { messages } = self.traffic else {
            return;
        };
        if !self.resuming() {
            return;
        }
        let c = &mut self.conns[key];
        if c.has(conn::CAUGHT_UP) || c.seq_in.next() != Some(messages) {
            return;
        }
        c.flags |= conn::CAUGHT_UP;
        let now_ns = self.since_epoch_ns();
        let start_ns = self.shared.reconnect_ns.load(Ordering::Acquire);
        self.counters.caught_up += 1;
        self.counters.caught_up_last_ns = self.counters.caught_up_last_ns.max(now_ns);
        if let Some(hist) = self.hists.catch_up.as_mut() {
            report::record(hist, now_ns.saturating_sub(start_ns) / 1000);
        }
    }
}
