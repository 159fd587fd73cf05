use super::*;

use std::sync::Mutex;

#[test]
fn count_takes_what_is_asked_or_one_per_core_but_one() {
    assert_eq!(count(3), 3);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(count(0), cores.saturating_sub(1).max(1));
    assert_eq!(automatic(1), 1);
    assert_eq!(automatic(2), 1);
    assert_eq!(automatic(8), 7);
}

#[tokio::test]
async fn every_shard_listens_on_the_one_port_on_a_thread_of_its_own() {
    let (sockets, addr) = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(sockets.len(), 3);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let record = Arc::clone(&seen);
    let shards = start(
        sockets.into_iter().map(|s| vec![s]).collect(),
        move |index, listeners| {
            let record = Arc::clone(&record);
            let mut stopped = stopped.clone();
            async move {
                let name = std::thread::current().name().map(str::to_owned);
                let local = listeners[0].local_addr().unwrap();
                record.lock().unwrap().push((index, name, local));
                // Accept whatever comes until told to stop.
                loop {
                    tokio::select! {
                        _ = listeners[0].accept() => {}
                        _ = stopped.changed() => return,
                    }
                }
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(shards.len(), 3);
    // Listening before `start` returned: a connection is taken at once.
    tokio::net::TcpStream::connect(addr).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen.lock().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    for (i, (index, name, local)) in seen.iter().enumerate() {
        assert_eq!(*index, i);
        assert_eq!(name.as_deref(), Some(format!("clawgate-shard{i}").as_str()));
        assert_eq!(*local, addr);
    }
    stop.send_replace(true);
    shards.join().await;
}

#[test]
fn an_address_in_use_fails_the_bind_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let Err(e) = bind(addr, 2) else {
        panic!("bound a port another socket listens on");
    };
    assert!(
        e.to_string()
            .starts_with(&format!("cannot listen on {addr}: ")),
        "{e}"
    );
}

#[tokio::test]
async fn a_second_server_cannot_join_a_port_the_first_serves() {
    let (first, addr) = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let _listening: Vec<_> = first
        .into_iter()
        .map(|s| s.listen(BACKLOG).unwrap())
        .collect();
    for shards in [2, 1] {
        let Err(e) = bind(addr, shards) else {
            panic!("{shards} more shards joined a port another server listens on");
        };
        assert!(
            e.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{e}"
        );
    }
}
