//! The per-address table (cap, rate, bounds, memory) and the per-connection rate window.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::*;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A refusal by the connect rate, which always asks for a retry within a second.
const RATE_REFUSED: Decision = Decision::TooMany {
    limit: PerIpLimit::ConnectRate,
    retry_after_s: 1,
};

fn config(cap: u32, rate: u32, burst: u32) -> AdmissionConfig {
    AdmissionConfig {
        conns_per_ip_max: cap,
        connect_rate_per_s: rate,
        connect_burst: burst,
        ..AdmissionConfig::default()
    }
}

#[test]
fn with_no_limit_the_table_is_never_touched() {
    let table = AddressTable::new(AdmissionConfig::default());
    for _ in 0..1000 {
        assert_eq!(table.try_admit(v4(1), 0), Decision::Admit);
    }
    assert_eq!(table.addresses(), 0);
    table.release(v4(1));
}

#[test]
fn the_cap_holds_per_address_and_frees_on_release() {
    let table = AddressTable::new(config(3, 0, 0));
    for _ in 0..3 {
        assert_eq!(table.try_admit(v4(1), 0), Decision::Admit);
    }
    let refused = table.try_admit(v4(1), 0);
    assert_eq!(
        refused,
        Decision::TooMany {
            limit: PerIpLimit::Conns,
            retry_after_s: CAP_RETRY_AFTER_S
        }
    );
    assert_eq!(
        table.try_admit(v4(2), 0),
        Decision::Admit,
        "another address"
    );
    table.release(v4(1));
    assert_eq!(table.try_admit(v4(1), 0), Decision::Admit);
    assert_eq!(table.live(v4(1)), 3);
    for _ in 0..3 {
        table.release(v4(1));
    }
    table.release(v4(2));
    assert_eq!(
        table.addresses(),
        0,
        "no rate to remember: forgotten at once"
    );
}

#[test]
fn the_connect_rate_is_a_token_bucket_with_a_burst() {
    let table = AddressTable::new(config(0, 10, 5));
    for _ in 0..5 {
        assert_eq!(table.try_admit(v4(1), 1000), Decision::Admit);
    }
    // Empty: one token comes back every 100 ms.
    assert_eq!(table.try_admit(v4(1), 1000), RATE_REFUSED);
    assert_eq!(
        table.try_admit(v4(2), 1000),
        Decision::Admit,
        "another address"
    );
    assert_eq!(table.try_admit(v4(1), 1099), RATE_REFUSED);
    assert_eq!(table.try_admit(v4(1), 1100), Decision::Admit);
    assert_eq!(table.try_admit(v4(1), 1100), RATE_REFUSED);
    // After a long pause the bucket holds the burst, not more.
    let later = 100_000;
    for _ in 0..5 {
        assert_eq!(table.try_admit(v4(1), later), Decision::Admit);
    }
    assert!(matches!(
        table.try_admit(v4(1), later),
        Decision::TooMany { .. }
    ));
}

#[test]
fn a_rate_refusal_never_asks_for_more_than_a_second() {
    // At least one token a second comes back, and one is all a connect needs.
    let table = AddressTable::new(config(0, 1, 1));
    assert_eq!(table.try_admit(v4(1), 0), Decision::Admit);
    assert_eq!(table.try_admit(v4(1), 0), RATE_REFUSED);
    assert_eq!(table.try_admit(v4(1), 999), RATE_REFUSED);
    assert_eq!(table.try_admit(v4(1), 1000), Decision::Admit);
}

#[test]
fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(address_key(a), address_key(b));
    assert_ne!(address_key(a), address_key(c));
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
    assert_eq!(
        address_key(mapped),
        address_key("10.1.2.3".parse().unwrap())
    );
    let table = AddressTable::new(config(1, 0, 0));
    assert_eq!(table.try_admit(a, 0), Decision::Admit);
    assert!(matches!(table.try_admit(b, 0), Decision::TooMany { .. }));
    assert_eq!(table.try_admit(c, 0), Decision::Admit);
    assert_eq!(
        table.try_admit(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        Decision::Admit
    );
}

#[test]
fn the_table_is_bounded_and_forgets_idle_addresses_first() {
    let table = AddressTable::new(AdmissionConfig {
        addresses_max: STRIPES * 2,
        ..config(10, 1, 1)
    });
    let address = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    // Fill the table with live addresses.
    let mut live = Vec::new();
    for i in 0..10_000 {
        match table.try_admit(address(i), 0) {
            Decision::Admit => live.push(address(i)),
            Decision::NodeFull => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(table.addresses() <= STRIPES * 2, "{}", table.addresses());
    assert!(live.len() >= STRIPES, "{}", live.len());
    // Their connections end: the addresses stay (their buckets are not full yet) but give
    // way to new ones.
    for ip in &live {
        table.release(*ip);
    }
    for i in 10_000..20_000 {
        assert_ne!(table.try_admit(address(i), 0), Decision::NodeFull, "{i}");
        table.release(address(i));
    }
    assert!(table.addresses() <= STRIPES * 2);
    // Once the buckets refill, a sweep forgets every idle address.
    table.sweep(10_000);
    assert_eq!(table.addresses(), 0);
}

#[test]
fn shards_share_one_count() {
    let table = Arc::new(AddressTable::new(config(1000, 0, 0)));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                (0..500)
                    .filter(|_| table.try_admit(v4(7), 0) == Decision::Admit)
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 1000, "exactly the cap, node-wide");
    assert_eq!(table.live(v4(7)), 1000);
}

/// The memory figure of the issue: one million connections from 1,000 addresses. Prints the
/// table's reserved bytes per address and per connection (`--nocapture` shows them).
#[test]
fn a_million_connections_from_a_thousand_addresses_cost_little() {
    let table = AddressTable::new(config(2000, 100_000, 100_000));
    let addresses = 1000u32;
    let per_address = 1000u32;
    for i in 0..addresses * per_address {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i % addresses));
        assert_eq!(table.try_admit(ip, u64::from(i / 1000)), Decision::Admit);
    }
    assert_eq!(table.addresses(), addresses as usize);
    let bytes = table.heap_bytes();
    let per_entry = bytes / addresses as usize;
    println!(
        "address table: {bytes} B reserved for {addresses} addresses ({per_entry} B per address, \
         {:.3} B per connection at 1,000,000), entry slot {} B",
        bytes as f64 / 1e6,
        size_of::<(u128, Entry)>() + 1
    );
    assert!(per_entry <= 256, "{per_entry} B per address");
    assert!(bytes <= 256 * 1024, "{bytes} B");
}

#[test]
fn the_connection_rate_window_is_six_bytes_and_counts_per_second() {
    assert_eq!(size_of::<ConnRate>(), 6);
    let limits = RateLimits {
        control_per_s: 3,
        messages_per_s: 2,
    };
    let mut rate = ConnRate::default();
    for _ in 0..3 {
        assert!(rate.allow(Traffic::Control, 10, &limits));
    }
    assert!(
        !rate.allow(Traffic::Control, 10, &limits),
        "fourth ping in one second"
    );
    assert!(
        rate.allow(Traffic::Message, 10, &limits),
        "messages count apart"
    );
    assert!(rate.allow(Traffic::Message, 10, &limits));
    assert!(!rate.allow(Traffic::Message, 10, &limits));
    assert!(rate.allow(Traffic::Control, 11, &limits), "a new second");
    let off = RateLimits::default();
    let mut rate = ConnRate::default();
    for _ in 0..100_000 {
        assert!(rate.allow(Traffic::Control, 1, &off));
    }
}

#[test]
fn refusals_carry_their_limit_label_and_status() {
    let table = AddressTable::new(config(1, 0, 0));
    assert_eq!(table.try_admit(v4(1), 0).label(), None);
    let over = table.try_admit(v4(1), 0);
    assert_eq!(
        (over.label(), over.status()),
        (Some("too_many_per_ip"), Some(429))
    );
    assert_eq!(RATE_REFUSED.label(), Some("connect_rate_per_ip"));
    assert_eq!(
        (Decision::NodeFull.label(), Decision::NodeFull.status()),
        (Some("address_table_full"), Some(503))
    );
    assert_eq!(ALL_LABELS.len(), 3);
}

#[test]
fn a_burst_of_zero_is_one_second_of_the_rate() {
    let table = AddressTable::new(config(0, 4, 0));
    for _ in 0..4 {
        assert_eq!(table.try_admit(v4(1), 0), Decision::Admit);
    }
    assert_eq!(table.try_admit(v4(1), 0), RATE_REFUSED);
}

#[test]
fn keys_and_addresses_reach_the_same_entry() {
    let table = AddressTable::new(config(1, 0, 0));
    let key = address_key(v4(9));
    assert_eq!(table.try_admit_key(key, 0), Decision::Admit);
    assert!(matches!(
        table.try_admit(v4(9), 0),
        Decision::TooMany { .. }
    ));
    table.release_key(key);
    assert_eq!(table.live(v4(9)), 0);
}
