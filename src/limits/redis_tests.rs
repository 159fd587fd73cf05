#![allow(clippy::unwrap_used, reason = "tests")]

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::super::resp::{Connection, RedisTarget, Reply};
use super::{FailureMode, Rate, share};

fn rate(count: u32, burst: u32) -> Rate {
    Rate {
        count: NonZeroU32::new(count).unwrap(),
        per: Duration::from_secs(60),
        burst: NonZeroU32::new(burst).unwrap(),
    }
}

#[test]
fn a_replica_share_splits_rate_and_burst_but_never_below_one() {
    assert_eq!(share(rate(90, 30), 3), rate(30, 10));
    assert_eq!(share(rate(2, 2), 3), rate(1, 1));
    assert_eq!(share(rate(5, 5), 1), rate(5, 5));
}

#[test]
fn failure_modes_and_targets_parse_and_credentials_in_a_url_are_refused() {
    assert_eq!("local".parse::<FailureMode>(), Ok(FailureMode::Local));
    assert_eq!("closed".parse::<FailureMode>(), Ok(FailureMode::Closed));
    assert!("sometimes".parse::<FailureMode>().is_err());
    assert_eq!(
        "redis://10.0.0.5".parse::<RedisTarget>(),
        Ok(RedisTarget::Tcp("10.0.0.5:6379".into()))
    );
    assert_eq!(
        "unix:///run/redis.sock".parse::<RedisTarget>(),
        Ok(RedisTarget::Unix("/run/redis.sock".into()))
    );
    let refused = "redis://user:hunter2@h:1"
        .parse::<RedisTarget>()
        .unwrap_err();
    assert!(!refused.contains("hunter2"), "{refused}");
    assert!("http://h".parse::<RedisTarget>().is_err());
}

#[tokio::test]
async fn replies_of_every_kind_are_read_from_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (mut peer, _) = listener.accept().await.unwrap();
        peer.write_all(
            b"*3\r\n:0\r\n:2\r\n:1500\r\n+OK\r\n-NOSCRIPT no script\r\n$-1\r\n$3\r\nabc\r\n",
        )
        .await
        .unwrap();
        // Keep the socket open until the client has read everything.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let mut conn = Connection::open(&RedisTarget::Unix(path)).await.unwrap();
    let ping: &[&[u8]] = &[b"PING"];
    assert_eq!(
        conn.command(ping).await.unwrap(),
        Reply::Array(Some(vec![Reply::Int(0), Reply::Int(2), Reply::Int(1500)]))
    );
    assert_eq!(
        conn.command(ping).await.unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        conn.command(ping).await.unwrap(),
        Reply::Error("NOSCRIPT no script".into())
    );
    assert_eq!(conn.command(ping).await.unwrap(), Reply::Bulk(None));
    assert_eq!(
        conn.command(ping).await.unwrap(),
        Reply::Bulk(Some(b"abc".to_vec()))
    );
    server.abort();
}
