//! The pipelined admin publisher (`broadcast --in-flight K`, K > 1): HTTP/1.1 publishes on
//! one keep-alive connection written without waiting for each answer, at most K
//! unanswered, at --msg-rate (a rate above what the node answers means as fast as allowed).
//! A reader thread takes the answers, which HTTP/1.1 returns in request order.
//!
//! Invariants:
//! - `Window::unanswered` counts requests written and not yet answered; the writer waits
//!   while it is K, the reader lowers it once per answer (or to 0 when the connection fails).
//! - Every sequence number is written at most once; a broken connection is not reopened
//!   (the unanswered publishes may or may not have gone out), so what the subscribers miss
//!   is counted, not hidden by a retry.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broadcast::{pace, publish_head, read_response, IO_TIMEOUT};
use crate::report::PublishReport;
use crate::scenario::BroadcastPlan;
use crate::worker::{Phase, Shared};

/// How long the writer waits for a free slot before it looks at the phase again.
const SLOT_POLL: Duration = Duration::from_millis(20);

/// Requests in flight, shared by the writer and the reader.
#[derive(Default)]
struct Window {
    state: Mutex<WindowState>,
    freed: Condvar,
}

#[derive(Default)]
struct WindowState {
    /// When each unanswered request was written, oldest first.
    sent_at: VecDeque<Instant>,
    /// The connection failed: no answer will come.
    broken: bool,
    /// The writer is done: the reader stops once nothing is unanswered.
    writer_done: bool,
}

/// Publishes `plan.count` messages (or until the run phase ends) with at most `in_flight`
/// unanswered, filling `report`.
pub fn run(plan: &BroadcastPlan, in_flight: usize, shared: &Shared, report: &mut PublishReport) {
    let stream = match connect(plan) {
        Ok(stream) => stream,
        Err(e) => {
            ringpush::elog!("ringpush-loadgen publisher: connect to {}: {e}", plan.admin);
            *report.errors.entry("connect_refused").or_default() += 1;
            return;
        }
    };
    let window = Arc::new(Window::default());
    let reader = {
        let (window, stream) = (Arc::clone(&window), stream.try_clone());
        std::thread::Builder::new()
            .name("loadgen-answers".into())
            .spawn(move || match stream {
                Ok(stream) => read_answers(stream, &window),
                Err(e) => {
                    window.state.lock().expect("window").broken = true;
                    window.freed.notify_all();
                    let mut answers = PublishReport::default();
                    *answers.errors.entry("io").or_default() += 1;
                    ringpush::elog!("ringpush-loadgen publisher: {e}");
                    answers
                }
            })
            .expect("spawning the answer reader")
    };
    let head = publish_head(plan);
    let mut writer = stream;
    let mut request = Vec::with_capacity(head.len() + plan.size);
    pace(plan, shared, report, |body, report| {
        if !wait_for_slot(&window, in_flight, shared) {
            *report.errors.entry("io").or_default() += 1;
            return;
        }
        request.clear();
        request.extend_from_slice(&head);
        request.extend_from_slice(body);
        window
            .state
            .lock()
            .expect("window")
            .sent_at
            .push_back(Instant::now());
        if writer.write_all(&request).is_err() {
            let mut state = window.state.lock().expect("window");
            state.broken = true;
            *report.errors.entry("io").or_default() += 1;
        }
    });
    window.state.lock().expect("window").writer_done = true;
    window.freed.notify_all();
    let answers = reader.join().unwrap_or_default();
    merge(report, answers);
}

fn connect(plan: &BroadcastPlan) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&plan.admin, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Waits until fewer than `in_flight` requests are unanswered; false once the connection
/// is broken or the run phase ends while waiting.
fn wait_for_slot(window: &Window, in_flight: usize, shared: &Shared) -> bool {
    let mut state = window.state.lock().expect("window");
    loop {
        if state.broken {
            // Nothing more can be written: do not spin through the remaining sequence.
            drop(state);
            std::thread::sleep(SLOT_POLL);
            return false;
        }
        if state.sent_at.len() < in_flight {
            return true;
        }
        if shared.phase() != Phase::Run {
            return false;
        }
        state = window
            .freed
            .wait_timeout(state, SLOT_POLL)
            .expect("window")
            .0;
    }
}

/// The reader: one answer per request, in order, until the writer is done and nothing is
/// unanswered, or the connection fails.
fn read_answers(mut stream: TcpStream, window: &Window) -> PublishReport {
    let mut answers = PublishReport {
        publish_rtt: Some(ringpush::stats::latency_histogram()),
        ..PublishReport::default()
    };
    let mut buf = Vec::new();
    loop {
        {
            let state = window.state.lock().expect("window");
            if state.broken || (state.writer_done && state.sent_at.is_empty()) {
                return answers;
            }
        }
        let response = read_response(&mut stream, &mut buf);
        let mut state = window.state.lock().expect("window");
        let sent_at = state.sent_at.pop_front();
        match response {
            Ok(response) => {
                if let (Some(at), Some(rtt)) = (sent_at, answers.publish_rtt.as_mut()) {
                    crate::report::record(rtt, at.elapsed().as_micros() as u64);
                }
                count_answer(&mut answers, response.status, &response.body);
                if response.close {
                    state.broken = true;
                }
            }
            Err(e) => {
                if !state.broken {
                    ringpush::elog!("ringpush-loadgen publisher: reading answers: {e}");
                    *answers.errors.entry("io").or_default() += 1;
                }
                state.broken = true;
            }
        }
        drop(state);
        window.freed.notify_all();
    }
}

/// Counts one admin answer as `AdminSink` does: 200 with `subscribers`, or its status.
pub fn count_answer(report: &mut PublishReport, status: u16, body: &[u8]) {
    if status != 200 {
        *report.status.entry(status).or_default() += 1;
        return;
    }
    report.acked += 1;
    match serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("subscribers").and_then(Value::as_u64))
    {
        Some(n) => {
            report.subscribers_reported += n;
            report.last_subscribers = Some(n);
        }
        None => *report.errors.entry("bad_response").or_default() += 1,
    }
}

/// Adds the reader's counts to the writer's report.
fn merge(report: &mut PublishReport, answers: PublishReport) {
    report.acked += answers.acked;
    report.subscribers_reported += answers.subscribers_reported;
    report.last_subscribers = answers.last_subscribers.or(report.last_subscribers);
    for (status, n) in answers.status {
        *report.status.entry(status).or_default() += n;
    }
    for (kind, n) in answers.errors {
        *report.errors.entry(kind).or_default() += n;
    }
    if let (Some(mine), Some(theirs)) = (report.publish_rtt.as_mut(), answers.publish_rtt) {
        let _ = mine.add(theirs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_count_subscribers_statuses_and_bad_bodies() {
        let mut r = PublishReport::default();
        count_answer(&mut r, 200, br#"{"subscribers":7}"#);
        count_answer(&mut r, 200, br#"{"subscribers":3}"#);
        count_answer(&mut r, 503, b"{}");
        count_answer(&mut r, 200, b"not json");
        assert_eq!(r.acked, 3);
        assert_eq!(r.subscribers_reported, 10);
        assert_eq!(r.last_subscribers, Some(3));
        assert_eq!(r.status.get(&503), Some(&1));
        assert_eq!(r.errors.get("bad_response"), Some(&1));
        assert_eq!(r.errors(), 2);
    }
}
