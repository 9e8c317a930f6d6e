//! The integration's no-gap, no-duplicate scheme (history.rs's module doc) simulated on
//! shards: watermarks, resumes behind and ahead of a shard, late attaches, and clients
//! moving between shard threads under a steady stream of publishes.

use std::sync::mpsc;
use std::thread;

use super::*;

fn config(size: usize) -> HistoryConfig {
    HistoryConfig {
        size,
        ..HistoryConfig::default()
    }
}

/// What a simulated shard's inbox carries.
enum ShardInput {
    Publish(Position, Bytes),
    /// A client (re)subscribing, resuming from (epoch, offset) when it saw messages before.
    Subscribe {
        client: usize,
        since: Option<(Epoch, u64)>,
    },
    /// The end of the run (each shard holds the other's sender, so none ends by itself).
    Stop,
}

/// A subscriber of a simulated shard: the last offset its client has seen.
struct Sub {
    client: usize,
    last: u64,
    delivered: u64,
}

/// One shard of the integration's scheme (see the module doc), simulated on channel "c":
/// a watermark, live subscribers, and those waiting for the watermark to reach their
/// `since`. Every delivery and replay asserts that the client's offsets are contiguous.
struct SimShard<'h> {
    history: &'h History,
    watermark: Option<Position>,
    live: Vec<Sub>,
    waiting: Vec<(Sub, u64)>,
    /// After this many deliveries a subscriber leaves to resubscribe elsewhere.
    moves_after: u64,
    resumes: u64,
    ahead: u64,
}

impl<'h> SimShard<'h> {
    fn new(history: &'h History, moves_after: u64) -> SimShard<'h> {
        SimShard {
            history,
            watermark: None,
            live: Vec::new(),
            waiting: Vec::new(),
            moves_after,
            resumes: 0,
            ahead: 0,
        }
    }

    /// Handles one inbox input; returns the subscribes of clients that moved away.
    fn handle(&mut self, input: ShardInput) -> Vec<ShardInput> {
        let mut moved = Vec::new();
        match input {
            ShardInput::Stop => {}
            ShardInput::Subscribe { client, since } => self.subscribe(client, since),
            ShardInput::Publish(position, payload) => {
                let Some(w) = self.watermark.as_mut() else {
                    return moved;
                };
                if position.epoch != w.epoch || position.offset <= w.offset {
                    return moved;
                }
                w.offset = position.offset;
                let epoch = w.epoch;
                assert_eq!(payload, Bytes::from(position.offset.to_string()));
                let mut index = 0;
                while index < self.live.len() {
                    let sub = &mut self.live[index];
                    let client = sub.client;
                    assert_eq!(position.offset, sub.last + 1, "client {client}: live gap");
                    sub.last = position.offset;
                    sub.delivered += 1;
                    if sub.delivered == self.moves_after {
                        let sub = self.live.swap_remove(index);
                        let since = Some((epoch, sub.last));
                        moved.push(ShardInput::Subscribe { client, since });
                        continue;
                    }
                    index += 1;
                }
                let (ready, waiting): (Vec<_>, Vec<_>) = self
                    .waiting
                    .drain(..)
                    .partition(|&(_, since)| since <= position.offset);
                self.waiting = waiting;
                self.live.extend(ready.into_iter().map(|(sub, _)| sub));
            }
        }
        moved
    }

    fn subscribe(&mut self, client: usize, since: Option<(Epoch, u64)>) {
        let history = self.history;
        let w = *self
            .watermark
            .get_or_insert_with(|| history.attach("c", Instant::now()));
        let Some((epoch, offset)) = since else {
            let sub = Sub {
                client,
                last: w.offset,
                delivered: 0,
            };
            self.live.push(sub);
            return;
        };
        self.resumes += 1;
        assert_eq!(epoch, w.epoch, "an attached channel keeps its epoch");
        let mut sub = Sub {
            client,
            last: offset,
            delivered: 0,
        };
        let text = epoch.text();
        let now = Instant::now();
        let outcome = history.resume("c", text.as_str(), offset, w.offset, now, |o, _, _| {
            assert_eq!(o, sub.last + 1, "client {client}: replay gap or duplicate");
            sub.last = o;
        });
        match outcome {
            Replay::Recovered { .. } => self.live.push(sub),
            Replay::Ahead => {
                self.ahead += 1;
                self.waiting.push((sub, offset));
            }
            Replay::NotRecovered { .. } => panic!("client {client}: history was kept"),
        }
    }

    /// The last offset `client` has seen here, if it is subscribed here.
    fn last_of(&self, client: usize) -> Option<u64> {
        let waiting = self.waiting.iter().map(|(sub, _)| sub);
        self.live
            .iter()
            .chain(waiting)
            .find(|sub| sub.client == client)
            .map(|sub| sub.last)
    }
}

/// Publishes offsets `range` on "c", returning each publish as both shards' inbox input.
fn publish_inputs(history: &History, range: std::ops::RangeInclusive<u64>) -> Vec<Position> {
    range
        .map(|n| {
            let payload = Bytes::from(n.to_string());
            let sent: Result<_, ()> =
                history.publish("c", &payload, PayloadKind::Text, Instant::now(), Ok);
            sent.unwrap().0
        })
        .collect()
}

fn input(position: Position) -> ShardInput {
    ShardInput::Publish(position, Bytes::from(position.offset.to_string()))
}

#[test]
fn a_client_ahead_of_its_new_shard_waits_for_the_watermark_and_one_behind_is_replayed() {
    let history = History::with_seed(config(100), 14);
    let mut a = SimShard::new(&history, u64::MAX);
    let mut b = SimShard::new(&history, u64::MAX);
    a.handle(ShardInput::Subscribe {
        client: 0,
        since: None,
    });
    b.handle(ShardInput::Subscribe {
        client: 1,
        since: None,
    });
    let epoch = history.position("c").unwrap().epoch;
    let published = publish_inputs(&history, 1..=6);
    // Shard A has handled all six publishes, shard B only three.
    for &position in &published {
        a.handle(input(position));
    }
    for &position in &published[..3] {
        b.handle(input(position));
    }
    // Client 0 moves from A (seen 6) to B (watermark 3): ahead, it waits.
    a.live.clear();
    b.handle(ShardInput::Subscribe {
        client: 0,
        since: Some((epoch, 6)),
    });
    assert_eq!(b.ahead, 1);
    // Client 1 moves from B (seen 3) to A (watermark 6): 4..=6 replayed.
    b.live.retain(|sub| sub.client != 1);
    a.handle(ShardInput::Subscribe {
        client: 1,
        since: Some((epoch, 3)),
    });
    assert_eq!(a.last_of(1), Some(6));
    for &position in &published[3..] {
        b.handle(input(position));
    }
    let seventh = publish_inputs(&history, 7..=7)[0];
    a.handle(input(seventh));
    b.handle(input(seventh));
    // Each saw 7 exactly once, after everything before it (contiguity is asserted inside).
    assert_eq!((a.last_of(1), b.last_of(0)), (Some(7), Some(7)));
    assert_eq!((a.resumes, b.resumes), (1, 1));
    // Shard C's inbox held 1..=7 before its first subscriber: attached at 7, it skips them.
    let mut c = SimShard::new(&history, u64::MAX);
    c.handle(ShardInput::Subscribe {
        client: 2,
        since: None,
    });
    for &position in published.iter().chain([&seventh]) {
        c.handle(input(position));
    }
    let eighth = publish_inputs(&history, 8..=8)[0];
    c.handle(input(eighth));
    assert_eq!(c.last_of(2), Some(8));
}

#[test]
fn the_watermark_scheme_has_no_gap_and_no_duplicate_while_clients_move_between_shards() {
    let history = Arc::new(History::with_seed(config(100_000), 13));
    let (to_a, inbox_a) = mpsc::channel();
    let (to_b, inbox_b) = mpsc::channel();
    let run = |inbox: mpsc::Receiver<ShardInput>, other: mpsc::Sender<ShardInput>, moves| {
        let history = Arc::clone(&history);
        thread::spawn(move || {
            let mut shard = SimShard::new(&history, moves);
            for input in inbox {
                let stop = matches!(input, ShardInput::Stop);
                for moved in shard.handle(input) {
                    let _ = other.send(moved);
                }
                if stop {
                    break;
                }
            }
            shard.resumes
        })
    };
    let shard_a = run(inbox_a, to_b.clone(), 7);
    let shard_b = run(inbox_b, to_a.clone(), 11);
    for client in 0..20 {
        let shard = if client % 2 == 0 { &to_a } else { &to_b };
        let subscribe = ShardInput::Subscribe {
            client,
            since: None,
        };
        shard.send(subscribe).unwrap();
    }
    for n in 1..=20_000u64 {
        let payload = Bytes::from(n.to_string());
        let sent: Result<_, mpsc::SendError<ShardInput>> = history.publish(
            "c",
            &payload,
            PayloadKind::Text,
            Instant::now(),
            |position| {
                to_a.send(ShardInput::Publish(position, payload.clone()))?;
                to_b.send(ShardInput::Publish(position, payload.clone()))
            },
        );
        assert_eq!(sent.unwrap().0.offset, n);
        if n % 64 == 0 {
            thread::yield_now();
        }
    }
    to_a.send(ShardInput::Stop).unwrap();
    to_b.send(ShardInput::Stop).unwrap();
    let resumes_a = shard_a.join().expect("shard a found a gap or duplicate");
    let resumes_b = shard_b.join().expect("shard b found a gap or duplicate");
    assert!(
        resumes_a + resumes_b > 0,
        "clients moved between the shards"
    );
    let stats = history.stats();
    assert_eq!(stats.replays_not_recovered, 0);
    assert_eq!(stats.replays_recovered, resumes_a + resumes_b);
}
