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
use clawgate::credentials::oauth::{
    self, ClientAuth, Endpoint, MintedToken, OAuthCredential, OAuthKey,
};
use clawgate::credentials::sigv4::{Payload, SigningScope, resign};
use clawgate::credentials::{
    AwsSession, Format, MintContext, Placement, SecretCredential, SecretSource, SecretTiming,
    SecretValue,
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
    bench_oauth(&mut group, &headers, &runtime);
    group.finish();
}

/// A cached `oauth2` token: the broker's lookup as it runs per call (the key
/// cloned, the call's context cloned into the fetch factory, the cache hit)
/// and the lookup plus injection. After warm-up no call mints.
fn bench_oauth(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    headers: &HeaderMap,
    runtime: &tokio::runtime::Runtime,
) {
    let credential = Arc::new(OAuthCredential {
        endpoint: Endpoint::Issuer("https://login.example".into()),
        client_id: "clawgate-billing".into(),
        auth: ClientAuth::SecretBasic(SecretValue::resolve(
            SecretSource::Env("S".into()),
            SecretTiming::default(),
            &|_| Some("client-secret".into()),
        )),
        bearer: None,
        refresh: None,
        scope: Some("invoices.read".into()),
        resources: vec!["https://api.billing.example/".into()],
        audience: None,
        placement: Placement::Header(HeaderName::from_static("authorization")),
        format: Format::parse("Bearer {}").unwrap(),
        refresh_margin: Duration::from_secs(60),
        safety_margin: Duration::from_secs(10),
        roots: Arc::default(),
        allow_private: Arc::default(),
        digest: [7; 32],
    });
    let cache: Cache<OAuthKey, MintedToken> = Cache::default();
    let ctx = MintContext {
        request_id: "01JDEXAMPLE0000000000000000".into(),
        agent: "research".into(),
        run: None,
        scope: "billing-api".into(),
    };
    let cache = &cache;
    let lookup = |credential: &Arc<OAuthCredential>, ctx: &MintContext| {
        let key = OAuthKey(Arc::clone(credential));
        let ctx = ctx.clone();
        async move {
            cache
                .get(&key, move || {
                    let _ctx = ctx.clone();
                    async {
                        let now = Instant::now();
                        Ok::<_, clawgate::credentials::CredentialError>(Entry {
                            value: Arc::new(MintedToken {
                                value: SecretString::from(
                                    "eyJhbGciOiJSUzI1NiJ9.payload.signature".repeat(8),
                                ),
                                granted_scope: Some("invoices.read".into()),
                                lifetime: Duration::from_secs(3600),
                            }),
                            refresh_at: now + Duration::from_secs(3540),
                            fresh_until: now + Duration::from_secs(3590),
                            usable_until: now + Duration::from_secs(3590),
                        })
                    }
                })
                .await
        }
    };
    runtime.block_on(lookup(&credential, &ctx)).unwrap();
    group.bench_function("cached oauth2 token lookup", |b| {
        b.iter(|| black_box(lookup(&credential, &ctx).now_or_never().unwrap().unwrap()));
    });
    group.bench_function("inject a cached oauth2 token", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            let mut query = None;
            let token = lookup(&credential, &ctx).now_or_never().unwrap().unwrap();
            oauth::inject(&credential, &token, &mut h, &mut query).unwrap();
            black_box(h)
        });
    });
    let before = cache
        .stats()
        .fetches
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..10_000 {
        black_box(lookup(&credential, &ctx).now_or_never().unwrap().unwrap());
    }
    let minted = cache
        .stats()
        .fetches
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    println!("oauth2: tokens minted per 10,000 cached calls after warm-up: {minted}");
    assert_eq!(minted, 0);
}

criterion_group!(benches, credentials);
criterion_main!(benches);
