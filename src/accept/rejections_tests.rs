use super::*;

fn rejections() -> (Rejections, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _writer) = AuditLog::open(&dir.path().join("a.db")).unwrap();
    (Rejections::new(log), dir)
}

#[test]
fn caps_records_per_source_and_second_and_carries_the_count() {
    let (r, _dir) = rejections();
    let ip: IpAddr = "127.0.0.9".parse().unwrap();
    let other: IpAddr = "127.0.0.10".parse().unwrap();
    for _ in 0..REJECTIONS_PER_SECOND {
        assert_eq!(r.admit(ip, 100), Some(0));
    }
    for _ in 0..5 {
        assert_eq!(r.admit(ip, 100), None);
    }
    // Another source has its own budget.
    assert_eq!(r.admit(other, 100), Some(0));
    // The next second records again and reports what was suppressed.
    assert_eq!(r.admit(ip, 101), Some(5));
    assert_eq!(r.admit(ip, 101), Some(0));
}

#[test]
fn ipv6_sources_count_per_64_and_all_sources_share_a_budget() {
    let (r, _dir) = rejections();
    for i in 0..REJECTIONS_PER_SECOND {
        let ip: IpAddr = format!("2001:db8::{:x}", i + 1).parse().unwrap();
        assert!(r.admit(ip, 7).is_some());
    }
    let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
    assert_eq!(r.admit(same_64, 7), None);
    let mut recorded = 0;
    for i in 0..1000u32 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
        if r.admit(ip, 8).is_some() {
            recorded += 1;
        }
    }
    assert_eq!(recorded, REJECTIONS_PER_SECOND_IN_ALL);
}

#[test]
fn suppressed_counts_survive_a_refusal_and_mapped_ipv4_counts_as_ipv4() {
    let (r, _dir) = rejections();
    let ip: IpAddr = "127.0.0.9".parse().unwrap();
    for _ in 0..REJECTIONS_PER_SECOND + 3 {
        r.admit(ip, 1);
    }
    // Another second: exhaust the global budget with other sources first.
    for i in 0..REJECTIONS_PER_SECOND_IN_ALL {
        let other = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_1000 + i));
        assert!(r.admit(other, 2).is_some());
    }
    assert_eq!(r.admit(ip, 2), None, "over the global budget");
    // The three from second 1 and the one from second 2 are still owed.
    assert_eq!(r.admit(ip, 3), Some(4));

    let mapped: IpAddr = "::ffff:198.18.0.1".parse().unwrap();
    let mapped_other: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
    for _ in 0..REJECTIONS_PER_SECOND {
        assert!(r.admit(mapped, 9).is_some());
    }
    assert!(
        r.admit(mapped_other, 9).is_some(),
        "each IPv4 source has its own budget"
    );
}
