//! Unit tests of `history`: offsets under concurrent publishers, eviction by size, age and
//! memory across channels, exact and refused replays, epochs, and exact accounting.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;

fn config(size: usize) -> HistoryConfig {
    HistoryConfig {
        size,
        ..HistoryConfig::default()
    }
}

/// Publishes `text` on `channel` at `now` and returns its position.
fn put(history: &History, channel: &str, text: &str, now: Instant) -> Position {
    let payload = Bytes::copy_from_slice(text.as_bytes());
    let sent: Result<_, ()> = history.publish(channel, &payload, PayloadKind::Text, now, Ok);
    let (position, echoed) = sent.expect("an accepting closure");
    assert_eq!(position, echoed);
    position
}

/// Resumes and returns the outcome with the replayed (offset, text) pairs.
fn replayed(
    history: &History,
    channel: &str,
    epoch: &str,
    since: u64,
    upto: u64,
    now: Instant,
) -> (Replay, Vec<(u64, String)>) {
    let mut got = Vec::new();
    let outcome = history.resume(channel, epoch, since, upto, now, |offset, payload, _| {
        got.push((offset, String::from_utf8(payload.to_vec()).unwrap()));
    });
    (outcome, got)
}

#[test]
fn offsets_are_plus_one_per_publish_and_a_refusal_consumes_none() {
    let history = History::with_seed(config(0), 1);
    let now = Instant::now();
    let first = put(&history, "a", "x", now);
    assert_eq!(first.offset, 1);
    assert_eq!(put(&history, "a", "y", now).offset, 2);
    assert_eq!(put(&history, "b", "z", now).offset, 1);
    let refused: Result<(Position, ()), &str> =
        history.publish("a", &Bytes::new(), PayloadKind::Text, now, |_| Err("full"));
    assert_eq!(refused.unwrap_err(), "full");
    assert_eq!(put(&history, "a", "w", now).offset, 3);
    assert_eq!(
        history.position("a"),
        Some(Position {
            epoch: first.epoch,
            offset: 3
        })
    );
    assert_eq!(history.position("never"), None);
    assert_ne!(history.position("b").unwrap().epoch, first.epoch);
    // History off: nothing retained, nothing counted.
    assert_eq!(history.stats().entries, 0);
    assert_eq!(history.stats().bytes, 0);
}

#[test]
fn concurrent_publishers_see_their_channel_in_offset_order() {
    let history = Arc::new(History::with_seed(config(16), 2));
    let (tx, rx) = mpsc::channel::<(usize, u64)>();
    let threads = 4;
    let per_thread = 2_000;
    let channels = 3;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let history = Arc::clone(&history);
            let tx = tx.clone();
            thread::spawn(move || {
                let payload = Bytes::from_static(b"p");
                for i in 0..per_thread {
                    let channel = (t + i) % channels;
                    let name = format!("c{channel}");
                    let sent: Result<_, ()> =
                        history.publish(&name, &payload, PayloadKind::Text, Instant::now(), |p| {
                            // The inbox push: it runs under the channel's lock.
                            tx.send((channel, p.offset)).unwrap();
                            Ok(())
                        });
                    sent.unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for worker in workers {
        worker.join().unwrap();
    }
    let mut last = vec![0u64; channels];
    let mut total = 0;
    for (channel, offset) in rx {
        assert_eq!(offset, last[channel] + 1, "channel {channel} out of order");
        last[channel] = offset;
        total += 1;
    }
    assert_eq!(total, threads * per_thread);
    assert_eq!(last.iter().sum::<u64>(), (threads * per_thread) as u64);
    assert_eq!(history.stats().entries, (channels * 16) as u64);
}

#[test]
fn a_retained_range_replays_exactly_and_in_order() {
    let history = History::with_seed(config(5), 3);
    let now = Instant::now();
    let mut epoch = None;
    for i in 1..=8 {
        epoch = Some(put(&history, "a", &format!("m{i}"), now).epoch);
    }
    let epoch = epoch.unwrap().text();
    let epoch = epoch.as_str();
    // Entries 4..=8 are retained (size 5).
    let (outcome, got) = replayed(&history, "a", epoch, 3, 8, now);
    assert_eq!(outcome, Replay::Recovered { replayed: 5 });
    let want: Vec<_> = (4..=8).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, want);
    // A watermark below the last offset bounds the replay.
    let (outcome, got) = replayed(&history, "a", epoch, 5, 6, now);
    assert_eq!(outcome, Replay::Recovered { replayed: 1 });
    assert_eq!(got, vec![(6, "m6".to_string())]);
    // Nothing missed: recovered with nothing to replay.
    assert_eq!(
        replayed(&history, "a", epoch, 8, 8, now).0,
        Replay::Recovered { replayed: 0 }
    );
    // The client is ahead of this shard's watermark.
    assert_eq!(replayed(&history, "a", epoch, 7, 6, now).0, Replay::Ahead);
    let stats = history.stats();
    assert_eq!(stats.replays_recovered, 4);
    assert_eq!(stats.replayed_messages, 6);
    assert_eq!(stats.evictions[Eviction::Size as usize], 3);
}

#[test]
fn evicted_foreign_and_impossible_positions_are_not_recovered() {
    let history = History::with_seed(config(5), 4);
    let now = Instant::now();
    let mut last = None;
    for i in 1..=8 {
        last = Some(put(&history, "a", &format!("m{i}"), now));
    }
    let current = last.unwrap();
    let epoch = current.epoch.text();
    let lost = Replay::NotRecovered {
        current: Some(current),
    };
    // Offset 3 was evicted by size: (2, 8] cannot be replayed.
    assert_eq!(
        replayed(&history, "a", epoch.as_str(), 2, 8, now),
        (lost, vec![])
    );
    for foreign in ["", "0000000000000000", "not-an-epoch", "ABCDEF0123456789"] {
        assert_eq!(
            replayed(&history, "a", foreign, 7, 8, now),
            (lost, vec![]),
            "{foreign}"
        );
    }
    // An offset the channel never reached.
    assert_eq!(
        replayed(&history, "a", epoch.as_str(), 9, 8, now),
        (lost, vec![])
    );
    let none = Replay::NotRecovered { current: None };
    assert_eq!(replayed(&history, "zz", epoch.as_str(), 0, 0, now).0, none);
    assert_eq!(history.stats().replays_not_recovered, 7);
    assert_eq!(history.stats().replays_recovered, 0);
}

#[test]
fn history_off_still_recovers_a_client_that_missed_nothing() {
    let history = History::with_seed(config(0), 5);
    let now = Instant::now();
    let p = put(&history, "a", "x", now);
    let epoch = p.epoch.text();
    assert_eq!(
        replayed(&history, "a", epoch.as_str(), 1, 1, now).0,
        Replay::Recovered { replayed: 0 }
    );
    let lost = Replay::NotRecovered { current: Some(p) };
    assert_eq!(replayed(&history, "a", epoch.as_str(), 0, 1, now).0, lost);
}

#[test]
fn entries_older_than_the_ttl_are_gone() {
    let history = History::with_seed(
        HistoryConfig {
            size: 100,
            ttl: Some(Duration::from_secs(10)),
            ..HistoryConfig::default()
        },
        6,
    );
    let t0 = Instant::now();
    let epoch = put(&history, "a", "old", t0).epoch.text();
    put(&history, "a", "new", t0 + Duration::from_secs(6));
    let at = |s| t0 + Duration::from_secs(s);
    assert_eq!(
        replayed(&history, "a", epoch.as_str(), 0, 2, at(9)).0,
        Replay::Recovered { replayed: 2 }
    );
    // At 10 s the first entry is expired even before any sweep: (0, 2] is lost, (1, 2] is not.
    assert!(matches!(
        replayed(&history, "a", epoch.as_str(), 0, 2, at(10)).0,
        Replay::NotRecovered { .. }
    ));
    assert_eq!(
        replayed(&history, "a", epoch.as_str(), 1, 2, at(10)).1,
        vec![(2, "new".to_string())]
    );
    history.sweep(at(10));
    let stats = history.stats();
    assert_eq!(
        (stats.entries, stats.evictions[Eviction::Ttl as usize]),
        (1, 1)
    );
    // A publish also drops expired entries at the front.
    put(&history, "a", "newer", at(17));
    let stats = history.stats();
    assert_eq!(
        (stats.entries, stats.evictions[Eviction::Ttl as usize]),
        (1, 2)
    );
    assert_eq!(stats.bytes as usize, entry_bytes(5));
}

#[test]
fn the_memory_cap_evicts_the_oldest_entries_across_channels() {
    let cap = 10 * entry_bytes(10);
    let history = History::with_seed(
        HistoryConfig {
            size: 1000,
            memory_bytes_max: cap,
            ..HistoryConfig::default()
        },
        7,
    );
    let now = Instant::now();
    // Interleave three channels (likely in different lock shards): 15 entries of 10 bytes.
    let names = ["alpha", "beta", "gamma"];
    for i in 0..15 {
        put(&history, names[i % 3], "0123456789", now);
    }
    let stats = history.stats();
    assert_eq!(stats.entries, 10);
    assert_eq!(stats.bytes as usize, cap);
    assert_eq!(stats.evictions[Eviction::Memory as usize], 5);
    // The five oldest went: alpha 1, beta 1, gamma 1, alpha 2, beta 2.
    for (name, first_kept) in [("alpha", 3), ("beta", 3), ("gamma", 2)] {
        let epoch = history.position(name).unwrap().epoch.text();
        let lost = replayed(&history, name, epoch.as_str(), first_kept - 2, 5, now).0;
        assert!(matches!(lost, Replay::NotRecovered { .. }), "{name}");
        let kept = replayed(&history, name, epoch.as_str(), first_kept - 1, 5, now).0;
        assert_eq!(
            kept,
            Replay::Recovered {
                replayed: 5 - (first_kept - 1)
            },
            "{name}"
        );
    }
}

#[test]
fn the_payload_is_shared_not_copied() {
    let history = History::with_seed(config(4), 8);
    let frame = Bytes::from(vec![7u8; 1000]);
    let payload = frame.slice(10..);
    let now = Instant::now();
    let sent: Result<_, ()> = history.publish("a", &payload, PayloadKind::Binary, now, Ok);
    let epoch = sent.unwrap().0.epoch.text();
    let mut seen = None;
    history.resume("a", epoch.as_str(), 0, 1, now, |_, replay, kind| {
        seen = Some((replay.as_ptr(), kind));
    });
    assert_eq!(seen, Some((payload.as_ptr(), PayloadKind::Binary)));
}

#[test]
fn a_dropped_channel_starts_a_new_epoch_but_never_while_held() {
    let history = History::with_seed(
        HistoryConfig {
            size: 10,
            idle_channels_max: 1,
            idle_ttl: Duration::from_secs(60),
            ..HistoryConfig::default()
        },
        9,
    );
    let t0 = Instant::now();
    let at = |s| t0 + Duration::from_secs(s);
    let held = history.attach("held", t0);
    assert_eq!(held.offset, 0);
    put(&history, "held", "x", t0);
    let idle = put(&history, "idle", "x", t0);
    // Idle for 60 s but retaining an entry: kept.
    history.sweep(at(61));
    assert_eq!(history.position("idle"), Some(idle));
    // Retaining an entry, only the cap drops it: fill its lock shard's share of
    // `idle_channels_max` with channels nobody holds.
    let mut dropped = false;
    for i in 0..(LOCK_SHARDS * 4) {
        put(&history, &format!("other{i}"), "x", at(62));
        if history.position("idle").is_none() {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the least recently used unheld channel is dropped at the cap"
    );
    let stats = history.stats();
    assert_eq!(stats.evictions[Eviction::Channel as usize], 1);
    assert!(stats.channels_dropped >= 1);
    // Its next use starts a new epoch at offset 1; a resume with the old epoch fails.
    let again = put(&history, "idle", "y", at(63));
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, idle.epoch);
    let old = idle.epoch.text();
    assert!(matches!(
        replayed(&history, "idle", old.as_str(), 1, 1, at(63)).0,
        Replay::NotRecovered { .. }
    ));
    // The held channel survived the cap and the sweep with its epoch and offsets.
    history.sweep(at(1000));
    assert_eq!(
        history.position("held"),
        Some(Position {
            epoch: held.epoch,
            offset: 1
        })
    );
    history.detach("held", at(1000));
    // Once released, empty and idle past `idle_ttl`, a sweep drops it.
    let empty = History::with_seed(config(0), 10);
    let p = empty.attach("c", t0);
    empty.detach("c", t0);
    empty.sweep(at(59));
    assert_eq!(empty.position("c"), Some(p));
    empty.sweep(at(300));
    assert_eq!(empty.position("c"), None);
}

#[test]
fn accounting_returns_to_zero() {
    let history = History::with_seed(
        HistoryConfig {
            size: 3,
            ttl: Some(Duration::from_secs(1)),
            memory_bytes_max: 1000,
            idle_channels_max: 8,
            idle_ttl: Duration::from_secs(1),
        },
        11,
    );
    let t0 = Instant::now();
    for i in 0..200 {
        put(&history, &format!("c{}", i % 17), &"z".repeat(i % 50), t0);
    }
    assert!(history.stats().bytes <= 1000);
    history.sweep(t0 + Duration::from_secs(2));
    let stats = history.stats();
    assert_eq!((stats.entries, stats.bytes, stats.channels), (0, 0, 0));
    for index in 0..LOCK_SHARDS {
        let shard = history.lock(index);
        assert!(shard.oldest.is_empty() && shard.channels.is_empty() && shard.unheld == 0);
        assert_eq!(history.heads[index].load(Ordering::Relaxed), u64::MAX);
    }
}

#[test]
fn epochs_round_trip_and_differ() {
    let history = History::with_seed(config(0), 12);
    let a = history.next_epoch();
    let b = history.next_epoch();
    assert_ne!(a, b);
    assert_eq!(Epoch::parse(a.text().as_str()), Some(a));
    assert_eq!(a.to_string().len(), 16);
    assert_eq!(Epoch::parse("+123456789abcdef"), None);
    assert_eq!(Epoch::parse("0123456789abcde"), None);
    let other = History::new(config(0));
    assert_ne!(other.next_epoch(), History::new(config(0)).next_epoch());
}

/// The (offset, text) pairs of a page.
fn texts(page: &Page) -> Vec<(u64, String)> {
    (page.entries.iter())
        .map(|e| (e.offset, String::from_utf8(e.payload.to_vec()).unwrap()))
        .collect()
}

#[test]
fn read_pages_through_the_retained_entries_after_since() {
    let history = History::with_seed(config(3), 7);
    let now = Instant::now();
    assert_eq!(
        history.read("a", 0, 10, now),
        None,
        "no entry, nothing created"
    );
    assert_eq!(history.position("a"), None);
    for text in ["m1", "m2", "m3", "m4", "m5"] {
        put(&history, "a", text, now);
    }
    let page = history.read("a", 0, 10, now).expect("the channel exists");
    assert_eq!(page.position.offset, 5);
    assert_eq!(page.position, history.position("a").unwrap());
    assert_eq!((page.oldest_offset, page.retained), (Some(3), 3));
    assert_eq!(
        texts(&page),
        [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]
    );
    assert!(!page.more);
    let page = history.read("a", 3, 1, now).unwrap();
    assert_eq!(texts(&page), [(4, "m4".into())]);
    assert!(page.more, "offset 5 follows");
    let page = history.read("a", 5, 10, now).unwrap();
    assert!(page.entries.is_empty() && !page.more);
    let page = history.read("a", 0, 0, now).unwrap();
    assert!(page.entries.is_empty() && page.more);
    assert_eq!(page.retained, 3);
    // Payloads are views of the published bytes, not copies.
    let payload = Bytes::from_static(b"shared");
    let sent: Result<_, ()> = history.publish("b", &payload, PayloadKind::Binary, now, Ok);
    sent.unwrap();
    let page = history.read("b", 0, 1, now).unwrap();
    assert_eq!(page.entries[0].payload.as_ptr(), payload.as_ptr());
    assert_eq!(page.entries[0].kind, PayloadKind::Binary);
}

#[test]
fn read_skips_expired_entries_and_reports_a_channel_without_history() {
    let ttl = Duration::from_secs(10);
    let history = History::with_seed(
        HistoryConfig {
            size: 10,
            ttl: Some(ttl),
            ..HistoryConfig::default()
        },
        8,
    );
    let start = Instant::now();
    put(&history, "a", "old", start);
    put(&history, "a", "new", start + Duration::from_secs(5));
    let page = history
        .read("a", 0, 10, start + Duration::from_secs(12))
        .unwrap();
    assert_eq!(texts(&page), [(2, "new".into())]);
    assert_eq!((page.oldest_offset, page.retained), (Some(2), 1));
    let page = history
        .read("a", 0, 10, start + Duration::from_secs(20))
        .unwrap();
    assert_eq!((page.oldest_offset, page.retained), (None, 0));
    assert!(page.entries.is_empty() && !page.more);
    assert_eq!(page.position.offset, 2);
    // History off: the position is known, nothing is retained.
    let off = History::with_seed(config(0), 9);
    put(&off, "c", "x", start);
    let page = off.read("c", 0, 10, start).unwrap();
    assert_eq!(
        (page.position.offset, page.retained, page.more),
        (1, 0, false)
    );
}

#[test]
fn read_with_no_room_says_more_only_when_an_entry_follows_since() {
    let history = History::with_seed(config(5), 10);
    let now = Instant::now();
    for text in ["a", "b", "c"] {
        put(&history, "x", text, now);
    }
    assert!(
        history.read("x", 2, 0, now).unwrap().more,
        "offset 3 follows 2"
    );
    assert!(!history.read("x", 3, 0, now).unwrap().more);
    assert!(!history.read("x", u64::MAX, 0, now).unwrap().more);
    assert_eq!(
        texts(&history.read("x", 1, 5, now).unwrap()),
        [(2, "b".into()), (3, "c".into())]
    );
}
