use super::*;
use http_body_util::{BodyExt, Full};

#[tokio::test]
async fn counts_every_data_byte_and_passes_them_on() {
    let counter = Arc::new(AtomicU64::new(0));
    let body = CountingBody::new(
        Full::new(Bytes::from_static(b"hello world")),
        counter.clone(),
    );
    let collected = body.collect().await.unwrap().to_bytes();
    assert_eq!(&collected[..], b"hello world");
    assert_eq!(counter.load(Ordering::Relaxed), 11);
}

#[tokio::test]
async fn fails_once_the_deadline_has_passed() {
    let counter = Arc::new(AtomicU64::new(0));
    let body = CountingBody::guarded(
        Full::new(Bytes::from_static(b"late")),
        counter.clone(),
        Some(Instant::now()),
        (),
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let err = body.collect().await.unwrap_err();
    assert!(err.to_string().contains("total timeout"));
    assert_eq!(counter.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn drops_its_guard_with_the_body() {
    struct Flag(Arc<AtomicU64>);
    impl BodyGuard for Flag {}
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicU64::new(0));
    let body = CountingBody::guarded(
        Full::new(Bytes::from_static(b"x")),
        Arc::new(AtomicU64::new(0)),
        None,
        Flag(dropped.clone()),
    );
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(body);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[derive(Default)]
struct Events(Vec<&'static str>);
impl BodyGuard for &mut Events {
    fn finished(&mut self) {
        self.0.push("finished");
    }
    fn failed(&mut self) {
        self.0.push("failed");
    }
    fn deadline_passed(&mut self) {
        self.0.push("deadline");
    }
}

#[tokio::test]
async fn the_guard_hears_how_the_stream_ended() {
    let mut events = Events::default();
    let body = CountingBody::guarded(
        Full::new(Bytes::from_static(b"abc")),
        Arc::new(AtomicU64::new(0)),
        None,
        &mut events,
    );
    body.collect().await.unwrap();
    assert_eq!(events.0, vec!["finished"]);

    // Dropped before its end: nothing is reported, so the owner can call
    // it abandoned.
    let mut events = Events::default();
    drop(CountingBody::guarded(
        Full::new(Bytes::from_static(b"abc")),
        Arc::new(AtomicU64::new(0)),
        None,
        &mut events,
    ));
    assert!(events.0.is_empty());

    // An empty body is finished even if nobody polls it.
    let mut events = Events::default();
    drop(CountingBody::guarded(
        http_body_util::Empty::<Bytes>::new(),
        Arc::new(AtomicU64::new(0)),
        None,
        &mut events,
    ));
    assert_eq!(events.0, vec!["finished"]);
}

fn chunked(chunks: &[&'static [u8]]) -> ProxyBody {
    use http_body_util::{BodyExt, StreamBody};
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[tokio::test]
async fn a_prefix_reads_whole_frames_up_to_its_limit_and_gives_the_rest_back() {
    use http_body_util::BodyExt;
    let prefix = Prefix::read(chunked(&[b"abc", b"def", b"ghi"]), 4)
        .await
        .unwrap();
    assert_eq!(&prefix.bytes[..], b"abcdef");
    assert!(!prefix.is_complete());
    // Reading on to a larger limit continues where the first read stopped.
    let more = prefix.read_more(100).await.unwrap();
    assert_eq!(&more.bytes[..], b"abcdefghi");
    assert!(more.is_complete());
    let body = Prefix::into_body(more.bytes, more.rest, more.trailers);
    assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdefghi");
}

#[tokio::test]
async fn a_partly_read_body_is_passed_on_whole() {
    use http_body_util::BodyExt;
    let prefix = Prefix::read(chunked(&[b"12", b"34", b"56"]), 2)
        .await
        .unwrap();
    assert_eq!(&prefix.bytes[..], b"12");
    let body = Prefix::into_body(Bytes::from_static(b"XY"), prefix.rest, prefix.trailers);
    assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"XY3456");
}
