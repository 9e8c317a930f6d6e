//! Unit tests of the watermark half of `Channels`: marks, waiters, freed names and the
//! channel of each move.

use super::*;

/// A watermark for the tests: the offset alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct At(u64);

impl Mark for At {
    fn offset(&self) -> u64 {
        self.0
    }
}

#[test]
fn a_waiter_joins_once_the_mark_reaches_its_offset() {
    let mut ch = Channels::<At>::default();
    let id = ch.open("c");
    *ch.mark(id) = Some(At(3));
    let live = ch.join(1, id);
    let token = ch.wait(2, id, 5);
    assert_eq!(token.slot, WAITING);
    assert!(ch.has_waiting(id));
    let mut joined = Vec::new();
    *ch.mark(id) = Some(At(4));
    ch.promote(id, |key, sub| joined.push((key, sub)));
    assert!(joined.is_empty(), "offset 5 is not reached at 4");
    *ch.mark(id) = Some(At(5));
    ch.promote(id, |key, sub| joined.push((key, sub)));
    assert_eq!(
        joined,
        [(
            2,
            Subscription {
                channel: id,
                slot: 1
            }
        )],
        "it joins behind the live subscriber"
    );
    assert!(!ch.has_waiting(id));
    assert_eq!(ch.subscribers("c"), [1, 2]);
    assert_eq!(live.slot, 0);
}

#[test]
fn a_channel_with_only_a_waiter_lives_until_the_waiter_leaves() {
    let mut ch = Channels::<At>::default();
    let id = ch.open("w");
    *ch.mark(id) = Some(At(0));
    let token = ch.wait(7, id, 9);
    assert_eq!(ch.id("w"), Some(id));
    assert!(ch.take_freed().is_empty());
    assert_eq!(ch.unsubscribe(7, token), None);
    assert_eq!(ch.id("w"), None);
    assert!(ch.any_freed());
    assert_eq!(ch.take_freed(), [Box::<str>::from("w")]);
    assert!(!ch.any_freed(), "each freed name is reported once");
}

#[test]
fn a_walk_reports_the_channel_of_each_move() {
    let mut ch = Channels::<At>::default();
    let a = ch.open("a");
    let b = ch.open("b");
    let a1 = ch.join(1, a);
    ch.join(2, a);
    let b1 = ch.join(1, b);
    ch.join(3, b);
    let mut walk = ch
        .walk_start(Audience::Channel("a"))
        .expect("a has subscribers");
    assert_eq!(ch.walk_next(&mut walk), Some(1));
    // Key 1 leaves both channels during the walk: both moves are reported after it.
    assert_eq!(ch.unsubscribe(1, a1), None);
    assert_eq!(ch.unsubscribe(1, b1), None);
    let mut moves = Vec::new();
    ch.walk_end_in(|id, moved| moves.push((id, moved)));
    moves.sort_by_key(|&(id, _)| id);
    assert_eq!(
        moves,
        [
            (a, Moved { key: 2, slot: 0 }),
            (b, Moved { key: 3, slot: 0 })
        ]
    );
}
