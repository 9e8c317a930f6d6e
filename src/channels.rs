//! Channels and sessions of one shard: who gets a delivery, never how it is sent.
//!
//! `Channels` owns the channel slab, the name index and the sessions map. It speaks in
//! slab keys and `Owner`s and never touches a `Conn`: a connection stores the
//! `Subscription` token `subscribe` returns, and when `unsubscribe` swap-removes it the
//! `Moved` report names the subscriber that took its slot, so the caller (the connections
//! part) updates that connection's stored slot.
//!
//! Invariants:
//! - Subscribe and unsubscribe are O(1): a subscription is its channel id and its index in
//!   the channel's subscriber vector, and leaving swap-removes it. There is no other
//!   per-subscription state, so a subscription costs one `u32` here and the 8-byte token in
//!   the connection.
//! - A channel exists exactly while it has a subscriber slot: it is freed (and its name
//!   unindexed) when its last subscriber leaves, and a session's entry when its last tab
//!   unbinds.
//! - **Leaving during a walk is applied after it.** Between `walk_start` and `walk_end`
//!   nothing moves: `unsubscribe` writes a vacant mark into the leaver's slot instead of
//!   swap-removing it, and `unbind` marks the tab vacant; `walk_end` then removes the marks
//!   and reports the moves. So a delivery that closes a subscriber (a slow consumer closed
//!   by `enqueue`, whose close leaves its channel at once) cannot make the walk skip or
//!   repeat anyone, and needs no copy of the subscriber list. Walks do not nest.
//! - Per channel the shard keeps its watermark (`mark`: the history position it delivered
//!   or skipped up to, see history.rs) and the subscribers waiting for it to reach their
//!   resume offset (`wait`, `promote`). A channel exists while it has a subscriber slot or a
//!   waiter; the names of channels freed since the caller last asked are kept for it
//!   (`take_freed`), so it can release the history hold it took on the first subscriber.
//! - A (session, tab) is held by at most one live connection node-wide: `claim` names the
//!   local holders with an older claim sequence, which the caller closes.
//! - A session's name is kept once per shard however many connections it binds: a bound
//!   connection keeps the session's id (`bind_tab` returns it), and its tab is kept in the
//!   session's entry, with no string at all for a tab generated from the connection's own
//!   (shard, key, generation) ([`Tab::Generated`]). A session id is valid while the
//!   session has a tab; `unbind_id` takes it.

use std::collections::{BinaryHeap, HashMap};

use slab::Slab;

use crate::ring::Owner;

/// `Subscription::channel` of a connection that is not subscribed.
pub const NO_CHANNEL: u32 = u32::MAX;

/// A subscriber slot left during a walk, removed by `walk_end`.
const VACANT: u32 = u32::MAX;

/// `Subscription::slot` of a subscriber waiting for the channel's watermark (`wait`).
pub const WAITING: u32 = u32::MAX;

/// The token a subscribed connection stores: its channel and its slot in that channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Channel id on this shard (`NO_CHANNEL` when not subscribed).
    pub channel: u32,
    /// Index of the connection in the channel's subscriber vector.
    pub slot: u32,
}

impl Subscription {
    /// Not subscribed.
    pub const NONE: Subscription = Subscription {
        channel: NO_CHANNEL,
        slot: 0,
    };

    /// Whether this names a channel.
    pub fn is_some(&self) -> bool {
        self.channel != NO_CHANNEL
    }
}

/// A subscriber that a swap-remove moved: its stored slot is now `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Slab key of the connection that moved.
    pub key: u32,
    /// Its new index in the channel's subscriber vector.
    pub slot: u32,
}

/// Whom a walk visits.
#[derive(Clone, Copy, Debug)]
pub enum Audience<'a> {
    /// Every subscriber of the named channel.
    Channel(&'a str),
    /// Every connection bound to the named session (all tabs).
    Session(&'a str),
}

/// A walk in progress, from `walk_start`; `walk_next` advances `cursor`.
#[derive(Debug)]
pub struct Walk<'a> {
    audience: WalkOver<'a>,
    cursor: usize,
}

#[derive(Clone, Copy, Debug)]
enum WalkOver<'a> {
    Channel(u32),
    Session(u32, std::marker::PhantomData<&'a str>),
}

/// `Conn::session` of a connection bound to no session.
pub const NO_SESSION: u32 = u32::MAX;

/// A bound connection's tab. A tab named `~{shard}.{key}.{gen}` after its own connection
/// (the tab a token without a `tab` claim gets) is kept as `Generated`, with no string: it
/// matches exactly the same claimed tabs as the string would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tab {
    /// The tab `~{shard}.{owner.key}.{owner.gen}` of the connection holding it.
    Generated(u32),
    /// Any other tab.
    Named(Box<str>),
}

impl Tab {
    /// The tab `tab` held by `owner` on `shard`: `Generated` when it is the connection's
    /// own generated name.
    pub fn of(tab: &str, shard: usize, owner: Owner) -> Tab {
        if generated_is(tab, shard as u32, owner) {
            Tab::Generated(shard as u32)
        } else {
            Tab::Named(tab.into())
        }
    }

    /// Whether this tab, held by `owner`, is the tab named `tab`, whose generated form
    /// `parse_generated` found as `generated`.
    fn is(&self, tab: &str, generated: Option<(u32, Owner)>, owner: Owner) -> bool {
        match self {
            Tab::Generated(shard) => generated == Some((*shard, owner)),
            Tab::Named(name) => **name == *tab,
        }
    }
}

/// The (shard, owner) whose generated tab `tab` is, when it is one in exactly the form
/// `~{shard}.{key}.{gen}` is formatted (parsed once per claim, so a claim compares numbers
/// with each generated tab of the session).
fn parse_generated(tab: &str) -> Option<(u32, Owner)> {
    let mut parts = tab.strip_prefix('~')?.split('.');
    let mut number = || parts.next()?.parse::<u32>().ok();
    let (shard, key, gen) = (number()?, number()?, number()?);
    let owner = Owner { key, gen };
    generated_is(tab, shard, owner).then_some((shard, owner))
}

/// Whether `tab` is `~{shard}.{owner.key}.{owner.gen}`, compared as it is formatted (no
/// allocation).
fn generated_is(tab: &str, shard: u32, owner: Owner) -> bool {
    use std::fmt::Write;
    /// Consumes `rest` while the formatted text matches it.
    struct Matches<'a> {
        rest: &'a str,
    }
    impl Write for Matches<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.rest = self.rest.strip_prefix(s).ok_or(std::fmt::Error)?;
            Ok(())
        }
    }
    if !tab.starts_with('~') {
        return false;
    }
    let mut m = Matches { rest: tab };
    write!(m, "~{shard}.{}.{}", owner.key, owner.gen).is_ok() && m.rest.is_empty()
}

/// A shard's watermark of a channel (the node's history position; `()` where none is
/// kept): `promote` compares waiters' offsets with it.
pub trait Mark: Copy {
    /// The offset delivered or skipped up to.
    fn offset(&self) -> u64;
}

impl Mark for () {
    fn offset(&self) -> u64 {
        0
    }
}

/// A channel on one shard.
struct Channel<M> {
    /// Its name (the key in `index`).
    name: Box<str>,
    /// Slab keys of local subscribers (`VACANT` for a slot left during a walk).
    subs: Vec<u32>,
    /// The shard's watermark: the history position delivered or skipped up to (None
    /// until the caller sets it right after creating the channel).
    mark: Option<M>,
    /// Subscribers waiting for the watermark to reach their offset: (key, offset).
    waiting: Vec<(u32, u64)>,
}

/// A session with a bound connection on this shard: its name (the key in
/// `session_index`) and its tabs.
struct Session {
    name: Box<str>,
    tabs: Vec<SessionTab>,
}

/// A connection bound to a (session, tab) on this shard.
struct SessionTab {
    /// Tab id.
    tab: Tab,
    /// The connection (`owner.key == VACANT` for a tab unbound during a walk).
    owner: Owner,
    /// Its claim's sequence.
    seq: u64,
}

/// One shard's channels and sessions, with a watermark of type `M` per channel.
pub struct Channels<M: Mark = ()> {
    channels: Slab<Channel<M>>,
    index: HashMap<Box<str>, u32>,
    /// The sessions with a bound connection here, each once (its connections keep its id).
    sessions: Slab<Session>,
    session_index: HashMap<Box<str>, u32>,
    /// Whether a walk is in progress (between `walk_start` and `walk_end`).
    walking: bool,
    /// (channel, slot) pairs marked vacant during the walk.
    vacated: Vec<(u32, u32)>,
    /// Sessions (by id) with a tab marked vacant during the walk.
    unbound: Vec<u32>,
    /// Names of channels freed since the last `take_freed`.
    freed: Vec<Box<str>>,
}

impl<M: Mark> Default for Channels<M> {
    fn default() -> Channels<M> {
        Channels {
            channels: Slab::new(),
            index: HashMap::new(),
            sessions: Slab::new(),
            session_index: HashMap::new(),
            walking: false,
            vacated: Vec::new(),
            unbound: Vec::new(),
            freed: Vec::new(),
        }
    }
}

impl Channels {
    /// No channels, no sessions.
    pub fn new() -> Channels {
        Channels::default()
    }
}

impl<M: Mark> Channels<M> {
    /// Up to `limit` channels whose names start with `prefix`, in byte order of their
    /// names, with their subscriber counts; and whether more matched. One pass over the
    /// channels keeping the `limit` smallest names in a heap: O(channels × log limit).
    pub fn census(&self, prefix: &str, limit: usize) -> (Vec<(Box<str>, u64)>, bool) {
        let mut smallest: BinaryHeap<(&str, u32)> = BinaryHeap::with_capacity(limit + 1);
        let mut truncated = false;
        for (name, &id) in self.index.iter().filter(|(n, _)| n.starts_with(prefix)) {
            smallest.push((name, id));
            if smallest.len() > limit {
                smallest.pop();
                truncated = true;
            }
        }
        let listed = (smallest.into_sorted_vec().into_iter())
            .map(|(name, id)| (Box::from(name), self.count_of(id)))
            .collect();
        (listed, truncated)
    }

    /// Subscribers of `name` on this shard (0 when it has none).
    pub fn subscriber_count(&self, name: &str) -> u64 {
        self.index.get(name).map_or(0, |&id| self.count_of(id))
    }

    /// Subscribers of channel `id`, not counting slots left during a walk.
    fn count_of(&self, id: u32) -> u64 {
        let subs = &self.channels[id as usize].subs;
        subs.iter().filter(|&&key| key != VACANT).count() as u64
    }

    /// Subscribes `key` to `name`, creating the channel on first use.
    pub fn subscribe(&mut self, key: u32, name: &str) -> Subscription {
        let id = self.open(name);
        self.join(key, id)
    }

    /// The id of channel `name`, created (with no subscriber and no mark) when missing:
    /// the caller subscribes or waits on it at once.
    pub fn open(&mut self, name: &str) -> u32 {
        match self.index.get(name) {
            Some(&id) => id,
            None => {
                let id = self.channels.insert(Channel {
                    name: name.into(),
                    subs: Vec::new(),
                    mark: None,
                    waiting: Vec::new(),
                }) as u32;
                self.index.insert(name.into(), id);
                id
            }
        }
    }

    /// The id of channel `name`, if it exists on this shard.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// The watermark of channel `id`, which must exist.
    pub fn mark(&mut self, id: u32) -> &mut Option<M> {
        &mut self.channels[id as usize].mark
    }

    /// Adds `key` to the subscribers of channel `id`, which must exist.
    pub fn join(&mut self, key: u32, id: u32) -> Subscription {
        let subs = &mut self.channels[id as usize].subs;
        subs.push(key);
        Subscription {
            channel: id,
            slot: subs.len() as u32 - 1,
        }
    }

    /// Takes a subscription out of its channel. Outside a walk the last subscriber takes
    /// the freed slot and is reported; during a walk the slot is marked vacant and the
    /// move, if any, is reported by `walk_end`.
    pub fn unsubscribe(&mut self, key: u32, sub: Subscription) -> Option<Moved> {
        debug_assert!(sub.is_some());
        let (id, slot) = (sub.channel, sub.slot);
        let channel = &mut self.channels[id as usize];
        if slot == WAITING {
            channel.waiting.retain(|&(waiter, _)| waiter != key);
            self.free_if_empty(id);
            return None;
        }
        debug_assert_eq!(channel.subs[slot as usize], key);
        if self.walking {
            channel.subs[slot as usize] = VACANT;
            self.vacated.push((id, slot));
            return None;
        }
        self.remove_slot(id, slot)
    }

    /// Removes a slot (swap-remove) and frees the channel once empty.
    fn remove_slot(&mut self, id: u32, slot: u32) -> Option<Moved> {
        let channel = &mut self.channels[id as usize];
        channel.subs.swap_remove(slot as usize);
        let moved = channel
            .subs
            .get(slot as usize)
            .map(|&key| Moved { key, slot });
        self.free_if_empty(id);
        moved
    }

    /// Frees channel `id` when it has neither subscribers nor waiters.
    fn free_if_empty(&mut self, id: u32) {
        let channel = &self.channels[id as usize];
        if channel.subs.is_empty() && channel.waiting.is_empty() {
            let channel = self.channels.remove(id as usize);
            self.index.remove(&channel.name);
            self.freed.push(channel.name);
        }
    }

    /// Names of the channels freed since the last call (each had a mark set, or was
    /// created and left within one call of the caller).
    pub fn take_freed(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.freed)
    }

    /// Whether a channel was freed since the last `take_freed` (no allocation).
    pub fn any_freed(&self) -> bool {
        !self.freed.is_empty()
    }

    /// Makes `key` wait on channel `id` (which must exist) until its watermark reaches
    /// `offset`; the token it stores has slot `WAITING`.
    pub fn wait(&mut self, key: u32, id: u32, offset: u64) -> Subscription {
        self.channels[id as usize].waiting.push((key, offset));
        Subscription {
            channel: id,
            slot: WAITING,
        }
    }

    /// Takes `key` out of channel `id`'s waiters without freeing the channel (the caller
    /// has just joined it, or waits again).
    pub fn unwait(&mut self, key: u32, id: u32) {
        if let Some(channel) = self.channels.get_mut(id as usize) {
            channel.waiting.retain(|&(waiter, _)| waiter != key);
        }
    }

    /// Whether channel `id` has waiters.
    pub fn has_waiting(&self, id: u32) -> bool {
        self.channels
            .get(id as usize)
            .is_some_and(|c| !c.waiting.is_empty())
    }

    /// Joins every waiter of channel `id` whose offset the watermark has reached, calling
    /// `joined` with each one's key and new token. Not during a walk.
    pub fn promote(&mut self, id: u32, mut joined: impl FnMut(u32, Subscription)) {
        debug_assert!(!self.walking);
        let Some(channel) = self.channels.get_mut(id as usize) else {
            return;
        };
        let Some(mark) = channel.mark else {
            return;
        };
        let mut i = 0;
        while i < channel.waiting.len() {
            let (key, offset) = channel.waiting[i];
            if offset <= mark.offset() {
                channel.waiting.swap_remove(i);
                channel.subs.push(key);
                let slot = channel.subs.len() as u32 - 1;
                joined(key, Subscription { channel: id, slot });
            } else {
                i += 1;
            }
        }
    }

    /// The key holding slot `slot` of channel `id`, if any.
    pub fn holder(&self, id: u32, slot: u32) -> Option<u32> {
        self.channels
            .get(id as usize)?
            .subs
            .get(slot as usize)
            .copied()
    }

    /// The subscribers of `name` (empty when there is no such channel). During a walk it
    /// may hold `u32::MAX` for slots left since `walk_start`.
    pub fn subscribers(&self, name: &str) -> &[u32] {
        match self.index.get(name) {
            Some(&id) => &self.channels[id as usize].subs,
            None => &[],
        }
    }

    /// The name of channel `id`, which must exist.
    pub fn name(&self, id: u32) -> &str {
        &self.channels[id as usize].name
    }

    /// Channels on this shard.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Sessions with at least one tab bound on this shard.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Records `owner` as the holder of (session, tab) with claim sequence `seq`.
    pub fn bind(&mut self, session: &str, tab: &str, owner: Owner, seq: u64) -> u32 {
        self.bind_tab(session, Tab::Named(tab.into()), owner, seq)
    }

    /// As `bind`, with the tab already in its kept form. Returns the session's id, which
    /// the connection keeps for `unbind_id` (the session's name is kept once per shard).
    pub fn bind_tab(&mut self, session: &str, tab: Tab, owner: Owner, seq: u64) -> u32 {
        let id = match self.session_index.get(session) {
            Some(&id) => id,
            None => {
                let id = self.sessions.insert(Session {
                    name: session.into(),
                    tabs: Vec::new(),
                }) as u32;
                self.session_index.insert(session.into(), id);
                id
            }
        };
        self.sessions[id as usize]
            .tabs
            .push(SessionTab { tab, owner, seq });
        id
    }

    /// Forgets `owner`'s binding to `session`; other tabs of the session stay. During a
    /// walk the tab is marked vacant and removed by `walk_end`.
    pub fn unbind(&mut self, session: &str, owner: Owner) {
        if let Some(&id) = self.session_index.get(session) {
            self.unbind_id(id, owner);
        }
    }

    /// As `unbind`, by the id `bind_tab` returned.
    pub fn unbind_id(&mut self, id: u32, owner: Owner) {
        let Some(s) = self.sessions.get_mut(id as usize) else {
            return;
        };
        if self.walking {
            for t in s.tabs.iter_mut().filter(|t| t.owner == owner) {
                t.owner.key = VACANT;
            }
            self.unbound.push(id);
            return;
        }
        s.tabs.retain(|t| t.owner != owner);
        self.drop_if_unbound(id);
    }

    /// Frees session `id` if it has no tab left.
    fn drop_if_unbound(&mut self, id: u32) {
        if self
            .sessions
            .get(id as usize)
            .is_some_and(|s| s.tabs.is_empty())
        {
            let s = self.sessions.remove(id as usize);
            self.session_index.remove(&s.name);
        }
    }

    /// Local holders of (session, tab) whose claim is older than `seq`: the caller closes
    /// them (the newest claim wins).
    pub fn claim(&self, session: &str, tab: &str, seq: u64) -> Vec<Owner> {
        let Some(&id) = self.session_index.get(session) else {
            return Vec::new();
        };
        let generated = parse_generated(tab);
        self.sessions[id as usize]
            .tabs
            .iter()
            .filter(|t| t.owner.key != VACANT && t.seq < seq && t.tab.is(tab, generated, t.owner))
            .map(|t| t.owner)
            .collect()
    }

    /// Starts a walk over `audience`; None when it has no one on this shard. Until
    /// `walk_end`, leaving is deferred (see the module doc).
    pub fn walk_start<'a>(&mut self, audience: Audience<'a>) -> Option<Walk<'a>> {
        debug_assert!(!self.walking, "walks do not nest");
        let over = match audience {
            Audience::Channel(name) => WalkOver::Channel(*self.index.get(name)?),
            Audience::Session(session) => {
                WalkOver::Session(*self.session_index.get(session)?, std::marker::PhantomData)
            }
        };
        self.walking = true;
        Some(Walk {
            audience: over,
            cursor: 0,
        })
    }

    /// The next slab key of the walk, skipping those that left during it.
    pub fn walk_next(&self, walk: &mut Walk<'_>) -> Option<u32> {
        debug_assert!(self.walking);
        loop {
            let i = walk.cursor;
            walk.cursor += 1;
            let key = match walk.audience {
                WalkOver::Channel(id) => *self.channels[id as usize].subs.get(i)?,
                WalkOver::Session(id, _) => self.sessions.get(id as usize)?.tabs.get(i)?.owner.key,
            };
            if key != VACANT {
                return Some(key);
            }
        }
    }

    /// Ends the walk: applies the leaves it deferred, calling `moved` for each subscriber
    /// whose slot changed.
    pub fn walk_end(&mut self, mut moved: impl FnMut(Moved)) {
        self.walk_end_in(|_, m| moved(m));
    }

    /// As `walk_end`, also naming the channel of each move (a connection with several
    /// subscriptions finds the token to fix by it).
    pub fn walk_end_in(&mut self, mut moved: impl FnMut(u32, Moved)) {
        debug_assert!(self.walking);
        self.walking = false;
        // Highest slot first within a channel: every slot above the one being removed is
        // then already gone, so the subscriber a swap-remove moves is never a vacant mark.
        let mut vacated = std::mem::take(&mut self.vacated);
        vacated.sort_unstable_by(|a, b| b.cmp(a));
        for &(id, slot) in &vacated {
            if let Some(m) = self.remove_slot(id, slot) {
                debug_assert_ne!(m.key, VACANT);
                moved(id, m);
            }
        }
        vacated.clear();
        self.vacated = vacated;
        for id in std::mem::take(&mut self.unbound) {
            if let Some(s) = self.sessions.get_mut(id as usize) {
                s.tabs.retain(|t| t.owner.key != VACANT);
                self.drop_if_unbound(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key: u32) -> Owner {
        Owner { key, gen: 1 }
    }

    #[test]
    fn subscribe_and_unsubscribe_report_the_moved_slot() {
        let mut ch = Channels::new();
        let a = ch.subscribe(10, "news");
        let b = ch.subscribe(11, "news");
        let c = ch.subscribe(12, "news");
        assert_eq!(
            (a.channel, b.channel, c.channel),
            (a.channel, a.channel, a.channel)
        );
        assert_eq!((a.slot, b.slot, c.slot), (0, 1, 2));
        assert_eq!(ch.subscribers("news"), &[10, 11, 12]);
        // The last subscriber takes the freed slot, and the caller is told.
        assert_eq!(ch.unsubscribe(10, a), Some(Moved { key: 12, slot: 0 }));
        assert_eq!(ch.subscribers("news"), &[12, 11]);
        // Removing the last slot moves no one.
        assert_eq!(ch.unsubscribe(11, b), None);
        assert_eq!(ch.subscribers("news"), &[12]);
    }

    #[test]
    fn a_channel_is_freed_when_its_last_subscriber_leaves() {
        let mut ch = Channels::new();
        let a = ch.subscribe(1, "a");
        let b = ch.subscribe(2, "b");
        assert_eq!(ch.channel_count(), 2);
        assert_eq!(ch.unsubscribe(1, a), None);
        assert_eq!(ch.channel_count(), 1);
        assert!(ch.subscribers("a").is_empty());
        assert_eq!(ch.name(b.channel), "b");
        // A new channel of the same name starts empty.
        let again = ch.subscribe(3, "a");
        assert_eq!(again.slot, 0);
        assert_eq!(ch.subscribers("a"), &[3]);
    }

    #[test]
    fn sessions_newest_claim_wins_and_unbind_removes_only_its_tab() {
        let mut ch = Channels::new();
        ch.bind("s", "t1", owner(1), 1);
        ch.bind("s", "t2", owner(2), 2);
        // A newer claim of t1 names the older holder of t1 only.
        assert_eq!(ch.claim("s", "t1", 3), vec![owner(1)]);
        // An older claim names no one: the newest wins.
        assert!(ch.claim("s", "t2", 1).is_empty());
        assert!(ch.claim("other", "t1", 9).is_empty());
        ch.bind("s", "t1", owner(3), 3);
        ch.unbind("s", owner(1));
        assert!(ch.claim("s", "t1", 3).is_empty());
        assert_eq!(ch.claim("s", "t1", 4), vec![owner(3)]);
        assert_eq!(ch.claim("s", "t2", 4), vec![owner(2)]);
        ch.unbind("s", owner(2));
        ch.unbind("s", owner(3));
        assert_eq!(ch.session_count(), 0);
    }

    #[test]
    fn leaving_during_a_walk_is_applied_after_it() {
        let mut ch = Channels::new();
        let subs: Vec<Subscription> = (0..5).map(|k| ch.subscribe(k, "c")).collect();
        let mut stored: Vec<u32> = subs.iter().map(|s| s.slot).collect();
        let mut walk = ch
            .walk_start(Audience::Channel("c"))
            .expect("channel exists");
        let mut seen = Vec::new();
        while let Some(key) = ch.walk_next(&mut walk) {
            seen.push(key);
            // Every visited subscriber with an even key leaves as it is visited, and the
            // first one also makes a later subscriber (4) leave before it is visited.
            if key % 2 == 0 {
                let sub = Subscription {
                    channel: subs[0].channel,
                    slot: stored[key as usize],
                };
                assert_eq!(
                    ch.unsubscribe(key, sub),
                    None,
                    "nothing moves during a walk"
                );
            }
            if key == 0 {
                let sub = Subscription {
                    channel: subs[0].channel,
                    slot: stored[4],
                };
                assert_eq!(ch.unsubscribe(4, sub), None);
            }
        }
        // Everyone was visited once, in order, except 4, which left before its turn.
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(ch.subscribers("c").len(), 5, "the walk saw no removal");
        ch.walk_end(|m| stored[m.key as usize] = m.slot);
        let mut left: Vec<u32> = ch.subscribers("c").to_vec();
        for (slot, &key) in left.iter().enumerate() {
            assert_eq!(stored[key as usize], slot as u32, "moves were reported");
        }
        left.sort_unstable();
        assert_eq!(left, vec![1, 3]);
        // Leaving is immediate again once the walk has ended.
        let sub = Subscription {
            channel: subs[0].channel,
            slot: stored[1],
        };
        ch.unsubscribe(1, sub);
        assert_eq!(ch.subscribers("c"), &[3]);
    }

    #[test]
    fn a_channel_emptied_during_a_walk_is_freed_after_it() {
        let mut ch = Channels::new();
        let a = ch.subscribe(7, "c");
        let mut walk = ch
            .walk_start(Audience::Channel("c"))
            .expect("channel exists");
        assert_eq!(ch.walk_next(&mut walk), Some(7));
        ch.unsubscribe(7, a);
        assert_eq!(ch.walk_next(&mut walk), None);
        assert_eq!(ch.channel_count(), 1);
        ch.walk_end(|m| panic!("no one is left to move: {m:?}"));
        assert_eq!(ch.channel_count(), 0);
        assert!(ch.walk_start(Audience::Channel("c")).is_none());
    }

    #[test]
    fn unbinding_during_a_session_walk_is_applied_after_it() {
        let mut ch = Channels::new();
        ch.bind("s", "t1", owner(1), 1);
        ch.bind("s", "t2", owner(2), 2);
        let mut walk = ch
            .walk_start(Audience::Session("s"))
            .expect("session exists");
        assert_eq!(ch.walk_next(&mut walk), Some(1));
        ch.unbind("s", owner(1));
        ch.unbind("s", owner(2));
        assert_eq!(ch.walk_next(&mut walk), None, "2 left before its turn");
        assert_eq!(ch.session_count(), 1);
        ch.walk_end(|_| {});
        assert_eq!(ch.session_count(), 0);
    }

    #[test]
    fn census_lists_the_smallest_matching_names_with_their_counts() {
        let mut ch = Channels::new();
        for (key, name) in [
            (1, "room.b"),
            (2, "room.a"),
            (3, "room.b"),
            (4, "news"),
            (5, "room.c"),
        ] {
            ch.subscribe(key, name);
        }
        let listed = |v: Vec<(Box<str>, u64)>| -> Vec<(String, u64)> {
            v.into_iter().map(|(n, c)| (n.into(), c)).collect()
        };
        let (all, truncated) = ch.census("", 10);
        assert!(!truncated);
        assert_eq!(
            listed(all),
            [
                ("news".into(), 1),
                ("room.a".into(), 1),
                ("room.b".into(), 2),
                ("room.c".into(), 1)
            ]
        );
        let (two, truncated) = ch.census("room.", 2);
        assert!(truncated, "room.c matched too");
        assert_eq!(listed(two), [("room.a".into(), 1), ("room.b".into(), 2)]);
        let (none, truncated) = ch.census("room.", 0);
        assert!(none.is_empty() && truncated);
        assert_eq!(ch.census("x", 5), (vec![], false));
        assert_eq!(ch.subscriber_count("room.b"), 2);
        assert_eq!(ch.subscriber_count("gone"), 0);
        // A subscriber leaving during a walk is no longer counted.
        let sub = ch.subscribe(6, "news");
        let mut walk = ch
            .walk_start(Audience::Channel("news"))
            .expect("news exists");
        assert!(ch.walk_next(&mut walk).is_some());
        ch.unsubscribe(6, sub);
        assert_eq!(ch.subscriber_count("news"), 1);
        ch.walk_end(|_| {});
        assert_eq!(ch.subscriber_count("news"), 1);
    }

    #[test]
    fn a_generated_tab_is_kept_without_a_string_and_matches_exactly_its_name() {
        let own = Owner { key: 5, gen: 3 };
        assert_eq!(Tab::of("~2.5.3", 2, own), Tab::Generated(2));
        assert_eq!(Tab::of("~2.5.4", 2, own), Tab::Named("~2.5.4".into()));
        let mut ch = Channels::new();
        let id = ch.bind_tab("s", Tab::of("~2.5.3", 2, own), own, 1);
        assert_eq!(ch.claim("s", "~2.5.3", 2), vec![own]);
        assert!(ch.claim("s", "~2.5.3", 1).is_empty(), "not an older claim");
        for other in [
            "~2.5.3 ", "~2.5.", "~2.5.30", "~02.5.3", "2.5.3", "~3.5.3", "",
        ] {
            assert!(ch.claim("s", other, 2).is_empty(), "{other:?}");
        }
        // A second connection of the session shares its entry; the last unbind frees it.
        ch.bind("s", "t", owner(9), 3);
        assert_eq!(ch.session_count(), 1);
        ch.unbind_id(id, own);
        assert_eq!(ch.claim("s", "t", 4), vec![owner(9)]);
        ch.unbind("s", owner(9));
        assert_eq!(ch.session_count(), 0);
    }
}

#[cfg(test)]
#[path = "channels_mark_tests.rs"]
mod mark_tests;
