//! Redis Cluster routing for `--broker redis://HOST:PORT,HOST:PORT,...`: which mode the URL
//! asks for, the hash slot of a channel, and the slot map read from a cluster node
//! (`CLUSTER SLOTS`). Pure functions and one discovery call; the connections that use them
//! are in `publisher.rs` and `shards.rs`.
//!
//! Invariants:
//! - A comma list is a Redis Cluster (its seed nodes); a single address is one Redis.
//! - Every name of channel `C` (`ringpush:{C}:meta`, `:log` and the pub/sub channel
//!   `ringpush:{C}`) hashes to the slot of `{C}`'s hash tag, so the publish script's keys and
//!   its SPUBLISH are on one master, `master_of(channel_slot(C))`.
//! - A slot map covers what the cluster answered and nothing more: a slot no master
//!   serves has no owner, and a job for it fails as unreachable.

use super::BrokerConfig;

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// What `--broker` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerMode {
    /// One Redis: PUBLISH / SUBSCRIBE on one connection each.
    Single,
    /// A Redis Cluster: SPUBLISH / SSUBSCRIBE on the master owning each channel's slot.
    Cluster,
}

/// Splits `--broker` into its mode and one `redis://` URL per address. The first address
/// carries the scheme and any `user:password@`, which every address (and every master
/// found later) shares.
pub fn parse_seeds(url: &str) -> Result<(BrokerMode, Vec<String>), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("--broker {url}: only redis://HOST:PORT[,HOST:PORT...]"))?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(|host| format!("redis://{auth}{}", host.trim()))
        .collect();
    if hosts.split(',').any(|host| host.trim().is_empty()) {
        return Err(format!("--broker {url}: an empty address in the list"));
    }
    for seed in &seeds {
        redis::Client::open(seed.as_str()).map_err(|e| format!("--broker {url}: {e}"))?;
    }
    let mode = if seeds.len() > 1 {
        BrokerMode::Cluster
    } else {
        BrokerMode::Single
    };
    Ok((mode, seeds))
}

/// The `redis://` URL (with the seeds' `user:password@`) of a master at `host:port`.
pub fn master_url(seed: &str, host: &str, port: u16) -> String {
    let rest = seed.strip_prefix("redis://").unwrap_or(seed);
    let auth = rest.rsplit_once('@').map_or("", |(auth, _)| auth);
    let at = if auth.is_empty() { "" } else { "@" };
    format!("redis://{auth}{at}{host}:{port}")
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first `{`
/// and the next `}`, when not empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

/// The slot of channel `name` (of all three of its Redis names).
pub fn channel_slot(name: &str) -> u16 {
    key_slot(&super::wire::pubsub_channel(name))
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), the checksum Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Which master serves which slots, as one cluster node answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// `(first, last, master URL)`, inclusive ranges.
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// The URL of the master serving `slot`, if any does.
    pub fn master_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, url)| url.as_str())
    }

    /// Every master's URL once, in the order of their lowest slot.
    pub fn masters(&self) -> Vec<String> {
        let mut ranges = self.ranges.clone();
        ranges.sort();
        let mut masters: Vec<String> = Vec::new();
        for (_, _, url) in ranges {
            if !masters.contains(&url) {
                masters.push(url);
            }
        }
        masters
    }
}

/// Reads a `CLUSTER SLOTS` answer: per range `[first, last, [host, port, id, ...], replicas
/// ...]`. `None` for any other shape or an empty map.
pub fn parse_slots(value: &redis::Value, seed: &str) -> Option<SlotMap> {
    use redis::Value;
    let Value::Array(ranges) = value else {
        return None;
    };
    let mut map = SlotMap::default();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(host) => std::str::from_utf8(host).ok()?.to_string(),
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        let first = u16::try_from(*first).ok().filter(|&s| s < SLOTS)?;
        let last = u16::try_from(*last)
            .ok()
            .filter(|&s| s < SLOTS && s >= first)?;
        let url = master_url(seed, &host, u16::try_from(*port).ok()?);
        map.ranges.push((first, last, url));
    }
    (!map.ranges.is_empty()).then_some(map)
}

/// Asks each of `candidates` in turn for the slot map, until one answers. Each attempt is
/// bounded by `--broker-timeout`.
pub fn discover(config: &BrokerConfig, candidates: &[String]) -> redis::RedisResult<SlotMap> {
    let mut last = None;
    for url in candidates {
        let answer = super::connect_to(config, url).and_then(|mut con| {
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<redis::Value>(&mut con)
        });
        match answer {
            Ok(value) => match parse_slots(&value, &config.seeds[0]) {
                Some(map) => return Ok(map),
                None => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "unexpected answer to CLUSTER SLOTS",
                    )))
                }
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Io, "no cluster node to ask"))
    }))
}

/// The nodes to ask for the slot map: the seeds, then the masters known so far.
pub fn candidates(config: &BrokerConfig, known: Option<&SlotMap>) -> Vec<String> {
    let mut all = config.seeds.clone();
    for url in known.map(SlotMap::masters).unwrap_or_default() {
        if !all.contains(&url) {
            all.push(url);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value::{Array, BulkString, Int};

    #[test]
    fn slots_match_redis_cluster_hashing() {
        // The reference value of CRC16/XMODEM, and slots `CLUSTER KEYSLOT` gives.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot("foo"), 12_182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        let news = channel_slot("news");
        assert_eq!(key_slot(&super::super::wire::meta_key("news")), news);
        assert_eq!(key_slot(&super::super::wire::log_key("news")), news);
        assert_eq!(news, key_slot("news"));
    }

    #[test]
    fn a_comma_list_is_a_cluster_and_shares_the_first_address_auth() {
        let (mode, seeds) = parse_seeds("redis://127.0.0.1:7000").unwrap();
        assert_eq!(mode, BrokerMode::Single);
        assert_eq!(seeds, vec!["redis://127.0.0.1:7000"]);
        let (mode, seeds) = parse_seeds("redis://:pw@a:7000,b:7001").unwrap();
        assert_eq!(mode, BrokerMode::Cluster);
        assert_eq!(seeds, vec!["redis://:pw@a:7000", "redis://:pw@b:7001"]);
        assert_eq!(master_url(&seeds[0], "c", 7002), "redis://:pw@c:7002");
        assert_eq!(master_url("redis://a:1", "c", 2), "redis://c:2");
        assert!(parse_seeds("rediss://a:1").is_err());
        assert!(parse_seeds("redis://a:1,").is_err());
    }

    #[test]
    fn a_slots_answer_maps_every_slot_to_its_master() {
        let node = |host: &str, port: i64| {
            Array(vec![
                BulkString(host.as_bytes().to_vec()),
                Int(port),
                BulkString(b"id".to_vec()),
            ])
        };
        let answer = Array(vec![
            Array(vec![Int(5461), Int(10922), node("127.0.0.1", 7001)]),
            Array(vec![
                Int(0),
                Int(5460),
                node("127.0.0.1", 7000),
                node("x", 1),
            ]),
        ]);
        let map = parse_slots(&answer, "redis://seed:1").expect("parses");
        assert_eq!(map.master_of(0), Some("redis://127.0.0.1:7000"));
        assert_eq!(map.master_of(5461), Some("redis://127.0.0.1:7001"));
        assert_eq!(map.master_of(16_000), None);
        assert_eq!(
            map.masters(),
            vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert!(parse_slots(&Array(vec![]), "redis://seed:1").is_none());
        assert!(parse_slots(&Array(vec![Array(vec![Int(1)])]), "redis://seed:1").is_none());
    }
}
