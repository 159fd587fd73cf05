#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;

fn ip(text: &str) -> Host {
    Host::Ip(text.parse::<IpAddr>().unwrap())
}

#[test]
fn every_spelling_of_an_address_normalises_to_one() {
    let cases = [
        ("127.0.0.1", ip("127.0.0.1")),
        ("2130706433", ip("127.0.0.1")),
        ("0x7f000001", ip("127.0.0.1")),
        ("0X7F000001", ip("127.0.0.1")),
        ("017700000001", ip("127.0.0.1")),
        ("0177.0.0.1", ip("127.0.0.1")),
        ("0x7f.1", ip("127.0.0.1")),
        ("127.1", ip("127.0.0.1")),
        ("127.0.1", ip("127.0.0.1")),
        ("127.0.0.1.", ip("127.0.0.1")),
        ("0", ip("0.0.0.0")),
        ("0.0.0.0", ip("0.0.0.0")),
        ("169.254.169.254", ip("169.254.169.254")),
        ("0xa9fea9fe", ip("169.254.169.254")),
        ("[::1]", ip("::1")),
        ("::1", ip("::1")),
        ("[::ffff:127.0.0.1]", ip("::ffff:127.0.0.1")),
        ("[0:0:0:0:0:0:0:1]", ip("::1")),
        ("Example.COM.", Host::Name("example.com".into())),
        ("bücher.example", Host::Name("xn--bcher-kva.example".into())),
        (
            "XN--BCHER-KVA.example",
            Host::Name("xn--bcher-kva.example".into()),
        ),
        ("localhost", Host::Name("localhost".into())),
    ];
    for (raw, want) in cases {
        assert_eq!(normalise_host(raw), Ok(want), "{raw}");
    }
}

#[test]
fn numeric_hosts_that_are_no_address_are_refused() {
    for raw in [
        "256.0.0.1",
        "4294967296",
        "1.2.3.4.5",
        "1.2.3.256",
        "089",
        "example.123",
        "[127.0.0.1]",
        "[::1",
        "fe80::1%eth0",
        "",
        ".",
        "a..b",
        "exa mple.com",
        "a/b",
    ] {
        assert!(normalise_host(raw).is_err(), "{raw} should be refused");
    }
}

#[test]
fn refused_ranges_are_named() {
    let cases = [
        ("127.0.0.1", Some("loopback")),
        ("127.255.255.254", Some("loopback")),
        ("10.1.2.3", Some("private")),
        ("172.16.0.1", Some("private")),
        ("172.31.255.255", Some("private")),
        ("172.32.0.1", None),
        ("192.168.1.1", Some("private")),
        ("169.254.169.254", Some("link-local")),
        ("0.0.0.0", Some("unspecified")),
        ("0.1.2.3", Some("unspecified")),
        ("100.64.0.1", Some("carrier-grade NAT")),
        ("100.127.255.255", Some("carrier-grade NAT")),
        ("100.128.0.1", None),
        ("224.0.0.1", Some("multicast")),
        ("255.255.255.255", Some("reserved")),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("::ffff:127.0.0.1", Some("IPv4-mapped")),
        ("::ffff:8.8.8.8", Some("IPv4-mapped")),
        ("::127.0.0.1", Some("IPv4-compatible")),
        ("64:ff9b::7f00:1", Some("NAT64")),
        ("64:ff9b:1::a00:1", Some("NAT64")),
        ("fc00::1", Some("unique-local")),
        ("fd12:3456::1", Some("unique-local")),
        ("fe80::1", Some("link-local")),
        ("ff02::1", Some("multicast")),
        ("2606:4700:4700::1111", None),
    ];
    for (text, want) in cases {
        assert_eq!(blocked_range(text.parse().unwrap()), want, "{text}");
    }
}

#[test]
fn allow_private_opens_exactly_what_it_names() {
    let allow = AllowPrivate::parse(["127.0.0.0/8", "::1", "internal.example"]).unwrap();
    let name = Host::Name("api.example".into());
    assert!(allow.check(&name, "127.0.0.5".parse().unwrap()).is_ok());
    assert!(allow.check(&name, "::1".parse().unwrap()).is_ok());
    assert!(allow.check(&name, "10.0.0.1".parse().unwrap()).is_err());
    assert!(
        allow
            .check(&name, "::ffff:127.0.0.1".parse().unwrap())
            .is_err()
    );
    let internal = Host::Name("internal.example".into());
    assert!(allow.check(&internal, "10.0.0.1".parse().unwrap()).is_ok());
    assert!(allow.check(&name, "8.8.8.8".parse().unwrap()).is_ok());

    let none = AllowPrivate::default();
    let err = none
        .check_literal(&Host::Name("localhost".into()))
        .unwrap_err();
    assert_eq!(err.range, "loopback");
    assert!(
        none.check_literal(&Host::Name("a.localhost".into()))
            .is_err()
    );
    assert!(none.check_literal(&ip("169.254.169.254")).is_err());
    assert!(
        none.check_literal(&Host::Name("example.com".into()))
            .is_ok()
    );

    for bad in ["10.0.0.0/33", "::/129", "x/8", "1.2.3.4.5"] {
        assert!(AllowPrivate::parse([bad]).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_pinned_name_is_checked_like_any_other() {
    let pins: Pins = Arc::new(HashMap::from([(
        "rebind.test".to_owned(),
        vec!["8.8.8.8".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    )]));
    let host = Host::Name("rebind.test".into());
    let err = resolve_checked(&host, 443, &AllowPrivate::default(), &pins)
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Blocked(b) if b.range == "loopback"));
    let allow = AllowPrivate::parse(["127.0.0.1"]).unwrap();
    let addrs = resolve_checked(&host, 443, &allow, &pins).await.unwrap();
    assert_eq!(addrs.len(), 2);
    assert!(addrs.iter().all(|a| a.port() == 443));
}
