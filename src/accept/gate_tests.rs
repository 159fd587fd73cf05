#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[tokio::test]
async fn the_oldest_is_dropped_per_source_and_overall() {
    let gate = Gate::new(4, 2, 1);
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    let (mut first, dropped) = gate.enter(a);
    assert_eq!(dropped, 0);
    let (_second, _) = gate.enter(a);
    // A third from the same source pushes out the first, not itself.
    let (_third, dropped) = gate.enter(a);
    assert_eq!(dropped, 1);
    tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted())
        .await
        .unwrap();
    let (_b1, _) = gate.enter(b);
    let (_b2, _) = gate.enter(b);
    assert_eq!(gate.pending(), 4);
    // The set is full: the newcomer gets in, the oldest overall leaves.
    let c: IpAddr = "::1".parse().unwrap();
    let (_c1, dropped) = gate.enter(c);
    assert_eq!(dropped, 1);
    assert_eq!(gate.pending(), 4);
    drop(_c1);
    assert_eq!(gate.pending(), 3);
}

#[tokio::test]
async fn ipv6_neighbours_in_one_64_share_a_cap() {
    let gate = Gate::new(100, 2, 1);
    let (_x, _) = gate.enter("2001:db8::1".parse().unwrap());
    let (_y, _) = gate.enter("2001:db8::2".parse().unwrap());
    let (_z, dropped) = gate.enter("2001:db8::3".parse().unwrap());
    assert_eq!(dropped, 1);
    let (_w, dropped) = gate.enter("2001:db8:0:1::1".parse().unwrap());
    assert_eq!(dropped, 0);
}
