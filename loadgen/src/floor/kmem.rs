//! The kernel's memory as /proc shows it, for the memory floor: `Slab` and `SUnreclaim`
//! from /proc/meminfo and the slab caches a TCP socket lives in from /proc/slabinfo.
//!
//! Invariants:
//! - A sample is taken whole or not at all per source: an unreadable /proc/slabinfo (it
//!   needs root) leaves `caches` empty rather than failing the run.

use std::collections::BTreeMap;

/// The slab caches one TCP socket end occupies (its sock, inode, file and dentry).
pub const CACHES: [&str; 5] = ["TCP", "TCPv6", "sock_inode_cache", "filp", "dentry"];

/// One sample of the kernel's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// /proc/meminfo `Slab`, bytes.
    pub slab_bytes: u64,
    /// /proc/meminfo `SUnreclaim`, bytes.
    pub sunreclaim_bytes: u64,
    /// Bytes held by each of [`CACHES`] (objects × object size), when readable.
    pub caches: BTreeMap<String, u64>,
}

/// Samples /proc now.
pub fn sample() -> Sample {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    let mut s = parse_meminfo(&meminfo);
    s.caches = parse_slabinfo(&slabinfo);
    s
}

/// `Slab` and `SUnreclaim` of a /proc/meminfo text (kB lines), in bytes.
pub fn parse_meminfo(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(kb) = value.parse::<u64>() else {
            continue;
        };
        match name {
            "Slab:" => s.slab_bytes = kb * 1024,
            "SUnreclaim:" => s.sunreclaim_bytes = kb * 1024,
            _ => {}
        }
    }
    s
}

/// Bytes of each of [`CACHES`] in a /proc/slabinfo text (`name active num objsize ...`).
pub fn parse_slabinfo(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 || !CACHES.contains(&fields[0]) {
            continue;
        }
        if let (Ok(objects), Ok(size)) = (fields[2].parse::<u64>(), fields[3].parse::<u64>()) {
            out.insert(fields[0].to_string(), objects * size);
        }
    }
    out
}

/// The growth from `before` to `after` per connection (of `n`), as JSON.
pub fn growth(before: &Sample, after: &Sample, n: u64) -> serde_json::Value {
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n.max(1) as f64;
    let caches: serde_json::Map<String, serde_json::Value> = after
        .caches
        .iter()
        .map(|(name, bytes)| {
            let was = before.caches.get(name).copied().unwrap_or(0);
            (name.clone(), serde_json::json!(per(*bytes, was)))
        })
        .collect();
    serde_json::json!({
        "slab_bytes_per_connection": per(after.slab_bytes, before.slab_bytes),
        "sunreclaim_bytes_per_connection": per(after.sunreclaim_bytes, before.sunreclaim_bytes),
        "caches_bytes_per_connection": caches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slab_lines_and_socket_caches() {
        let meminfo =
            "MemTotal: 100 kB\nSlab:  2048 kB\nSReclaimable: 10 kB\nSUnreclaim: 1024 kB\n";
        let s = parse_meminfo(meminfo);
        assert_eq!(
            (s.slab_bytes, s.sunreclaim_bytes),
            (2048 * 1024, 1024 * 1024)
        );
        let slabinfo = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\n\
                        TCP 10 14 2368 13 8 : tunables 0 0 0\nkmalloc-64 5 5 64 64 1\n\
                        filp 100 128 192 21 1\n";
        let caches = parse_slabinfo(slabinfo);
        assert_eq!(caches.get("TCP"), Some(&(14 * 2368)));
        assert_eq!(caches.get("filp"), Some(&(128 * 192)));
        assert_eq!(caches.get("kmalloc-64"), None);
        let before = Sample {
            slab_bytes: 1000,
            sunreclaim_bytes: 500,
            caches: BTreeMap::from([("TCP".to_string(), 0)]),
        };
        let after = Sample {
            slab_bytes: 5000,
            sunreclaim_bytes: 2500,
            caches: BTreeMap::from([("TCP".to_string(), 2000)]),
        };
        let g = growth(&before, &after, 2);
        assert_eq!(g["slab_bytes_per_connection"], 2000.0);
        assert_eq!(g["sunreclaim_bytes_per_connection"], 1000.0);
        assert_eq!(g["caches_bytes_per_connection"]["TCP"], 1000.0);
    }
}
