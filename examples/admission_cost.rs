//! What per-address admission costs in memory (issue 11): the node-wide address table at
//! one million connections from 1,000 addresses, and a table filled to its cap. Prints
//! figures, asserts nothing: `cargo run --release --example admission_cost`.
//!
//! Two parts cost memory: the table (`AddressTable`, one entry per address, shared by every
//! shard) and, per connection, the 16-byte address key each shard keeps by slab key
//! (`Core::admitted`) to give the slot back when the connection ends. The table's bytes are
//! its maps' reserved capacity (`AddressTable::heap_bytes`: hashbrown's buckets, one
//! key-value slot and one control byte each); the process's RSS growth is printed beside.

use std::net::{IpAddr, Ipv4Addr};

use ringpush::admission::{AddressTable, AdmissionConfig, Decision, ADDRESSES_MAX_DEFAULT};

/// The bytes a shard keeps per admitted connection (`Core::admitted`: one `u128`).
const PER_CONNECTION_KEY_BYTES: usize = std::mem::size_of::<u128>();

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn main() {
    let config = AdmissionConfig {
        conns_per_ip_max: 5000,
        connect_rate_per_s: 1_000_000,
        connect_burst: 1_000_000,
        ..AdmissionConfig::default()
    };

    // 1,000,000 connections from 1,000 addresses.
    let (addresses, per_address) = (1_000u32, 1_000u32);
    let before = rss_bytes();
    let table = AddressTable::new(config);
    for round in 0..per_address {
        for i in 0..addresses {
            let decision = table.try_admit(address(i), u64::from(round));
            assert_eq!(decision, Decision::Admit, "address {i}, connection {round}");
        }
    }
    let connections = (addresses * per_address) as usize;
    let table_bytes = table.heap_bytes();
    let keys_bytes = connections * PER_CONNECTION_KEY_BYTES;
    println!(
        "1,000,000 connections from 1,000 addresses: table {} addresses, {table_bytes} B \
         ({} B per address); per-connection keys {keys_bytes} B ({PER_CONNECTION_KEY_BYTES} B \
         each); total {} B = {:.1} B per connection; RSS growth {} B",
        table.addresses(),
        table_bytes / table.addresses(),
        table_bytes + keys_bytes,
        (table_bytes + keys_bytes) as f64 / connections as f64,
        rss_bytes().saturating_sub(before),
    );
    for round in 0..per_address {
        for i in 0..addresses {
            let _ = round;
            table.release(address(i));
        }
    }
    // Idle addresses are forgotten once their bucket has refilled (the once-a-second sweep).
    table.sweep(10_000_000);
    println!(
        "after every release and a sweep: {} addresses remembered, {} B reserved",
        table.addresses(),
        table.heap_bytes()
    );

    // The table at its cap: every address live at once (a node with that many clients).
    let before = rss_bytes();
    let full = AddressTable::new(config);
    let cap = ADDRESSES_MAX_DEFAULT as u32;
    let mut refused = 0u32;
    for i in 0..cap + cap / 8 {
        if full.try_admit(address(i), 0) != Decision::Admit {
            refused += 1;
        }
    }
    println!(
        "table at its cap ({cap} addresses): {} remembered, {refused} refused address_table_full, \
         {} B reserved ({} B per address); RSS growth {} B",
        full.addresses(),
        full.heap_bytes(),
        full.heap_bytes() / full.addresses().max(1),
        rss_bytes().saturating_sub(before),
    );
}
