//! PROXY protocol v1/v2 at every split point, `X-Forwarded-For` selection, CIDR matching, and a
//! proptest that no input panics the parsers.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Feeds every prefix of `bytes` and checks each is `Ok(None)` until the whole header.
fn parse_at_every_split(bytes: &[u8]) -> Result<Option<Parsed>, ProxyError> {
    for cut in 0..bytes.len() {
        match parse_proxy_header(&bytes[..cut]) {
            Ok(None) => {}
            Err(error) => return Err(error),
            Ok(Some(parsed)) => panic!("complete at {cut} of {}: {parsed:?}", bytes.len()),
        }
    }
    parse_proxy_header(bytes)
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
    let parsed = parse_proxy_header(line).unwrap().unwrap();
    assert_eq!(
        parsed.header,
        ProxyHeader::Proxied {
            source: sock("192.0.2.1:56324"),
            destination: sock("198.51.100.2:443")
        }
    );
    assert_eq!(&line[parsed.consumed..parsed.consumed + 3], b"GET");
    let head = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    assert_eq!(parse_at_every_split(head).unwrap().unwrap(), parsed);

    let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    let parsed = parse_at_every_split(six).unwrap().unwrap();
    assert_eq!(
        parsed.header,
        ProxyHeader::Proxied {
            source: sock("[2001:db8::1]:1"),
            destination: sock("[2001:db8::2]:65535")
        }
    );
    let unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    assert_eq!(
        parse_at_every_split(unknown).unwrap().unwrap().header,
        ProxyHeader::Local
    );
}

#[test]
fn v1_errors_name_the_rule() {
    let cases: &[(&[u8], ProxyError)] = &[
        (b"GET / HTTP/1.1\r\n", ProxyError::NotProxyProtocol),
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", ProxyError::V1Syntax),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", ProxyError::V1Syntax),
        (
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            ProxyError::V1Syntax,
        ),
        (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", ProxyError::V1Syntax),
        (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", ProxyError::V1Address),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ProxyError::V1Address),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", ProxyError::V1Port),
        (
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
            ProxyError::V1Port,
        ),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", ProxyError::V1Port),
        (b"PROXY TCP4 1.2.3.4\n", ProxyError::V1Syntax),
    ];
    for (input, expected) in cases {
        let got = parse_proxy_header(input);
        assert_eq!(got, Err(*expected), "{:?}", String::from_utf8_lossy(input));
    }
    let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
    assert_eq!(parse_proxy_header(&long), Err(ProxyError::V1LineTooLong));
    assert_eq!(
        parse_proxy_header(&long[..V1_LINE_BYTES_MAX - 1]),
        Ok(None),
        "still a prefix"
    );
}

#[test]
fn v2_inet_inet6_local_and_tlvs() {
    let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
    body.extend_from_slice(&56324u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&[0x04, 0x00, 0x02, b'i', b'd']); // a TLV, skipped
    let header = v2(1, 0x11, &body);
    let mut bytes = header.clone();
    bytes.extend_from_slice(b"GET");
    let parsed = parse_at_every_split(&header).unwrap().unwrap();
    assert_eq!(parsed, parse_proxy_header(&bytes).unwrap().unwrap());
    assert_eq!(parsed.consumed, header.len());
    assert_eq!(
        parsed.header,
        ProxyHeader::Proxied {
            source: sock("192.0.2.1:56324"),
            destination: sock("198.51.100.2:443")
        }
    );

    let mut body = Vec::new();
    body.extend_from_slice(&ip_octets("2001:db8::1"));
    body.extend_from_slice(&ip_octets("2001:db8::2"));
    body.extend_from_slice(&[0, 1, 0, 2]);
    let parsed = parse_at_every_split(&v2(1, 0x21, &body)).unwrap().unwrap();
    assert_eq!(
        parsed.header,
        ProxyHeader::Proxied {
            source: sock("[2001:db8::1]:1"),
            destination: sock("[2001:db8::2]:2")
        }
    );
    let local = v2(0, 0x00, &[]);
    assert_eq!(
        parse_at_every_split(&local).unwrap().unwrap().header,
        ProxyHeader::Local
    );
    let unix = v2(1, 0x31, &[0; 216]);
    assert_eq!(
        parse_proxy_header(&unix).unwrap().unwrap().header,
        ProxyHeader::Local
    );
}

fn ip_octets(text: &str) -> [u8; 16] {
    match ip(text) {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(_) => unreachable!(),
    }
}

#[test]
fn v2_errors_name_the_rule() {
    let mut bad_version = v2(1, 0x11, &[0; 12]);
    bad_version[12] = 0x11;
    assert_eq!(parse_proxy_header(&bad_version), Err(ProxyError::V2Version));
    assert_eq!(
        parse_proxy_header(&bad_version[..13]),
        Err(ProxyError::V2Version)
    );
    let mut bad_command = v2(1, 0x11, &[0; 12]);
    bad_command[12] = 0x22;
    assert_eq!(parse_proxy_header(&bad_command), Err(ProxyError::V2Command));
    let short = v2(1, 0x11, &[0; 11]);
    assert_eq!(
        parse_proxy_header(&short),
        Err(ProxyError::V2AddressTooShort)
    );
    let short6 = v2(1, 0x21, &[0; 35]);
    assert_eq!(
        parse_proxy_header(&short6),
        Err(ProxyError::V2AddressTooShort)
    );
    let mut too_long = v2(1, 0x11, &[]);
    too_long[14..16].copy_from_slice(&((V2_BODY_BYTES_MAX + 1) as u16).to_be_bytes());
    assert_eq!(parse_proxy_header(&too_long), Err(ProxyError::V2TooLong));
    assert_eq!(parse_proxy_header(&V2_SIGNATURE[..5]), Ok(None));
    assert_eq!(parse_proxy_header(b""), Ok(None));
    assert_eq!(
        parse_proxy_header(b"\r\n\r\nX"),
        Err(ProxyError::NotProxyProtocol)
    );
}

#[test]
fn cidr_ranges_for_ipv4_and_ipv6() {
    let ten = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(ten.contains(ip("10.255.0.1")));
    assert!(!ten.contains(ip("11.0.0.1")));
    assert!(ten.contains(ip("::ffff:10.1.2.3")), "mapped IPv4 is IPv4");
    assert!(!ten.contains(ip("::a00:1")));
    let host = Cidr::parse("127.0.0.1").unwrap();
    assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
    let all4 = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all4.contains(ip("8.8.8.8")) && !all4.contains(ip("::1")));
    let v6 = Cidr::parse("fd00::/8").unwrap();
    assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
    let all6 = Cidr::parse("::/0").unwrap();
    assert!(all6.contains(ip("2001:db8::1")) && !all6.contains(ip("1.2.3.4")));
    assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "x/8",
        "",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn forwarded_for_takes_the_right_most_untrusted_entry() {
    let trusted = TrustedProxies::parse(&["10.0.0.0/8", "fd00::/8"]).unwrap();
    let xff = |values: &[&str], peer: &str| {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        client_from_forwarded_for(ip(peer), &values, &trusted)
    };
    // An untrusted peer's header is ignored, whatever it says.
    assert_eq!(xff(&["1.1.1.1"], "203.0.113.9"), Ok(ip("203.0.113.9")));
    assert_eq!(xff(&["garbage"], "203.0.113.9"), Ok(ip("203.0.113.9")));
    // A spoofed left-most entry does not win over what the trusted proxy saw.
    assert_eq!(
        xff(&["6.6.6.6, 198.51.100.7, 10.1.1.1"], "10.0.0.1"),
        Ok(ip("198.51.100.7"))
    );
    // Lines form one list; ports and brackets are read.
    assert_eq!(
        xff(&["6.6.6.6", "198.51.100.7:4711 , fd00::3"], "10.0.0.1"),
        Ok(ip("198.51.100.7"))
    );
    assert_eq!(
        xff(&["[2001:db8::7]:443"], "fd00::1"),
        Ok(ip("2001:db8::7"))
    );
    // Every entry trusted: the left-most; none at all: the peer.
    assert_eq!(xff(&["10.9.9.9, 10.1.1.1"], "10.0.0.1"), Ok(ip("10.9.9.9")));
    assert_eq!(xff(&[], "10.0.0.1"), Ok(ip("10.0.0.1")));
    assert_eq!(xff(&[" , "], "10.0.0.1"), Ok(ip("10.0.0.1")));
    // Garbage left of the client is never read; at or right of it, it is an error.
    assert_eq!(
        xff(&["garbage, 198.51.100.7"], "10.0.0.1"),
        Ok(ip("198.51.100.7"))
    );
    assert_eq!(
        xff(&["198.51.100.7, unknown"], "10.0.0.1"),
        Err(ForwardedError::Malformed)
    );
    assert_eq!(
        xff(&["1.1.1.1"], "::ffff:10.0.0.1"),
        Ok(ip("1.1.1.1")),
        "a mapped peer is trusted as IPv4"
    );
    assert!(TrustedProxies::default().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn no_input_panics_the_proxy_parser(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(parsed)) = parse_proxy_header(&bytes) {
            prop_assert!(parsed.consumed <= bytes.len());
        }
    }

    #[test]
    fn no_v2_body_panics_the_parser(
        command in 0u8..3,
        family in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let header = v2(command, family, &body);
        if let Ok(Some(parsed)) = parse_proxy_header(&header) {
            prop_assert_eq!(parsed.consumed, header.len());
        }
    }

    #[test]
    fn v1_lines_round_trip(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in any::<u16>(),
                           q in any::<u16>()) {
        let (src, dst) = (IpAddr::from(a), IpAddr::from(b));
        let line = format!("PROXY TCP4 {src} {dst} {p} {q}\r\n");
        let parsed = parse_proxy_header(line.as_bytes()).unwrap().unwrap();
        prop_assert_eq!(parsed.header, ProxyHeader::Proxied {
            source: SocketAddr::new(src, p),
            destination: SocketAddr::new(dst, q),
        });
    }

    #[test]
    fn no_header_panics_forwarded_for(values in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..60), 0..4)) {
        let trusted = TrustedProxies::parse(&["0.0.0.0/0"]).unwrap();
        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let _ = client_from_forwarded_for(ip("10.0.0.1"), &values, &trusted);
    }
}
