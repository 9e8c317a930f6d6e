//! Memory figures of the host and of the node under test, read from /proc: the node's
//! resident set (`--node-pid`) and the kernel's MemAvailable and Slab, sampled before the
//! first connection and again while every connection is held.
//!
//! Both ends of a loopback run live on this host, so kernel figures per connection cover a
//! pair of sockets (the node's and ours), and MemAvailable also moves with the load
//! generator's own allocations; the node's RSS is the node's alone.

use serde_json::{json, Value};

/// One sample; a figure is None when /proc did not provide it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemSample {
    /// The node's VmRSS, bytes.
    pub node_rss: Option<u64>,
    /// MemAvailable, bytes.
    pub available: Option<u64>,
    /// Slab (kernel object caches), bytes.
    pub slab: Option<u64>,
}

/// Reads a `Name:   N kB` line from a /proc file, in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The node's VmRSS in bytes, if its pid is known and /proc says.
pub fn node_rss(node_pid: Option<u32>) -> Option<u64> {
    node_status_field(node_pid, "VmRSS")
}

/// The node's VmHWM in bytes: the largest resident set it has had since it started.
pub fn node_rss_high_water(node_pid: Option<u32>) -> Option<u64> {
    node_status_field(node_pid, "VmHWM")
}

fn node_status_field(node_pid: Option<u32>, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node_pid?)).ok()?;
    kb_field(&status, name)
}

/// Samples the host, and the node if its pid is known.
pub fn sample(node_pid: Option<u32>) -> MemSample {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let node_rss = node_pid.and_then(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        kb_field(&status, "VmRSS")
    });
    MemSample {
        node_rss,
        available: kb_field(&meminfo, "MemAvailable"),
        slab: kb_field(&meminfo, "Slab"),
    }
}

/// The JSON report of two samples around `connections` held connections.
pub fn growth(before: &MemSample, held: &MemSample, connections: u64) -> Value {
    let per = |delta: Option<i64>| -> Value {
        match (delta, connections) {
            (Some(d), n) if n > 0 => json!(d as f64 / n as f64),
            _ => Value::Null,
        }
    };
    let diff = |a: Option<u64>, b: Option<u64>| Some(b? as i64 - a? as i64);
    let rss = diff(before.node_rss, held.node_rss);
    let available_drop = diff(held.available, before.available);
    let slab = diff(before.slab, held.slab);
    json!({
        "connections": connections,
        "node_rss_before_bytes": before.node_rss,
        "node_rss_held_bytes": held.node_rss,
        "node_rss_per_conn_bytes": per(rss),
        "mem_available_drop_bytes": available_drop,
        "mem_available_drop_per_conn_bytes": per(available_drop),
        "slab_growth_bytes": slab,
        "slab_growth_per_conn_bytes": per(slab),
    })
}

/// A one-line rendering of [`growth`] for the summary.
pub fn growth_line(before: &MemSample, held: &MemSample, connections: u64) -> String {
    let v = growth(before, held, connections);
    let f = |k: &str| match v[k].as_f64() {
        Some(x) => format!("{x:.0}"),
        None => "n/a".into(),
    };
    format!(
        "memory connections={connections} node_rss_per_conn_bytes={} \
         mem_available_drop_per_conn_bytes={} slab_growth_per_conn_bytes={} \
         node_rss_before_bytes={} node_rss_held_bytes={}",
        f("node_rss_per_conn_bytes"),
        f("mem_available_drop_per_conn_bytes"),
        f("slab_growth_per_conn_bytes"),
        before.node_rss.map_or("n/a".into(), |b| b.to_string()),
        held.node_rss.map_or("n/a".into(), |b| b.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kb_fields() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\nSlab: 7 kB\n";
        assert_eq!(kb_field(text, "MemAvailable"), Some(1_024_000));
        assert_eq!(kb_field(text, "Slab"), Some(7 * 1024));
        assert_eq!(kb_field(text, "Missing"), None);
    }

    #[test]
    fn growth_per_connection() {
        let before = MemSample {
            node_rss: Some(1_000_000),
            available: Some(10_000_000),
            slab: Some(100),
        };
        let held = MemSample {
            node_rss: Some(1_200_000),
            available: Some(9_000_000),
            slab: Some(100_100),
        };
        let v = growth(&before, &held, 1000);
        assert_eq!(v["node_rss_per_conn_bytes"], json!(200.0));
        assert_eq!(v["mem_available_drop_per_conn_bytes"], json!(1000.0));
        assert_eq!(v["slab_growth_per_conn_bytes"], json!(100.0));
        assert_eq!(
            growth(&before, &held, 0)["node_rss_per_conn_bytes"],
            Value::Null
        );
    }
}
