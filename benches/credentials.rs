//! The per-call cost of credentials: injecting a cached secret, and
//! re-signing a request with SigV4, against a baseline of copying the
//! request's headers (which every call pays anyway), all in one run.
//!
//! Run: `cargo bench --bench credentials`. Read the ratios, not the
//! absolute times: these machines are shared and noisy.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use secrecy::SecretString;
use tokio::time::Instant;

use clawgate::credentials::cache::{Cache, Entry};
use clawgate::credentials::sigv4::{Payload, SigningScope, resign};
use clawgate::credentials::{
    AwsSession, Format, Placement, SecretCredential, SecretSource, SecretTiming, SecretValue,
};

fn agent_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("user-agent", "openclaw/1.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("authorization", "Bearer agent-dummy"),
        ("x-amz-date", "20261121T000000Z"),
        ("x-request-id", "2b6f0c1e-1d1f-4c53-9b1e-8d1f2a3b4c5d"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    headers
}

fn credentials(c: &mut Criterion) {
    // A tokio runtime only so that the cache's clock can be read.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let headers = agent_headers();
    let secret = SecretCredential {
        value: SecretValue::resolve(
            SecretSource::Env("T".into()),
            SecretTiming::default(),
            &|_| Some("sk-live-0123456789abcdef0123456789abcdef".into()),
        ),
        placement: Placement::Header(HeaderName::from_static("authorization")),
        format: Format::parse("Bearer {}").unwrap(),
    };
    let cache: Cache<String, SecretString> = Cache::default();
    let key = "secretsmanager:prod/api".to_owned();
    let fetch = || async {
        let now = Instant::now();
        Ok::<_, clawgate::credentials::CredentialError>(Entry {
            value: Arc::new(SecretString::from("sk-live-0123456789abcdef".to_owned())),
            refresh_at: now + Duration::from_secs(3600),
            fresh_until: now + Duration::from_secs(3600),
            usable_until: now + Duration::from_secs(3600),
        })
    };
    // The first get fetches (in a task of its own); every later one is a hit
    // that completes without yielding.
    runtime.block_on(cache.get(&key, fetch)).unwrap();
    let session = AwsSession {
        access_key_id: "ASIAEXAMPLEEXAMPLE01".into(),
        secret_access_key: SecretString::from(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
        ),
        session_token: SecretString::from("FwoGZXIvYXdzEXAMPLETOKEN".repeat(12)),
        expiration: SystemTime::now() + Duration::from_secs(900),
    };
    let scope = SigningScope {
        service: "s3".into(),
        region: "us-east-1".into(),
        time: SystemTime::now(),
    };
    let uri: Uri = "https://s3.us-east-1.amazonaws.com/reports/q1/summary.txt?x-id=GetObject"
        .parse()
        .unwrap();

    let mut group = c.benchmark_group("credentials");
    group.bench_function("baseline: copy the request headers", |b| {
        b.iter(|| black_box(headers.clone()));
    });
    group.bench_function("inject a cached secret", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            let mut query = None;
            let value = cache.get(&key, fetch).now_or_never().unwrap().unwrap();
            secret.inject(&value, &mut h, &mut query).unwrap();
            black_box(h)
        });
    });
    group.bench_function("re-sign with SigV4 (empty body)", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            resign(
                &Method::GET,
                &uri,
                &mut h,
                Payload::Bytes(b""),
                &session,
                &scope,
            )
            .unwrap();
            black_box(h)
        });
    });
    let body = vec![b'x'; 16 * 1024];
    group.bench_function("re-sign with SigV4 (16 KiB body hashed)", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            resign(
                &Method::PUT,
                &uri,
                &mut h,
                Payload::Bytes(&body),
                &session,
                &scope,
            )
            .unwrap();
            black_box(h)
        });
    });
    group.finish();
}

criterion_group!(benches, credentials);
criterion_main!(benches);
