//! The reflection guard's scan cost per KiB of response, for 1, 10 and 100
//! injected values (each searched in its ~15 encodings), against passing the
//! same chunks through untouched; and the one-time cost of compiling the
//! needles of a call (a cache miss).
//!
//! Run: `cargo bench --bench reflection`. `cargo test --benches` runs each once.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use clawgate::response::reflect::{Needles, Scanner};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use secrecy::SecretString;

/// A JSON response body like an API's: 64 KiB, no injected value in it.
fn body() -> Vec<u8> {
    let item = r#"{"id":1234567,"name":"widget-ABCDEFGH","tags":["a","b"],"url":"https://api.example.com/v1/items/1234567","token_type":"bearer","note":"nothing secret here"},"#;
    let mut out = b"[".to_vec();
    while out.len() < 64 * 1024 {
        out.extend_from_slice(item.as_bytes());
    }
    out.truncate(64 * 1024);
    out
}

fn values(n: usize) -> Vec<Arc<SecretString>> {
    (0..n)
        .map(|i| {
            Arc::new(SecretString::from(format!(
                "sk-live-{i:04}-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
            )))
        })
        .collect()
}

fn scan(c: &mut Criterion) {
    let body = body();
    let mut group = c.benchmark_group("reflection_scan");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for chunk in [1024usize, 16 * 1024] {
        let chunks: Vec<Bytes> = body.chunks(chunk).map(Bytes::copy_from_slice).collect();
        group.bench_function(BenchmarkId::new("pass_through", chunk), |b| {
            b.iter(|| {
                let mut n = 0;
                for c in &chunks {
                    n += black_box(c.clone()).len();
                }
                n
            })
        });
        for count in [1usize, 10, 100] {
            let needles = Arc::new(Needles::new(&values(count)).unwrap());
            let id = format!("{count}_values_chunk_{chunk}");
            group.bench_function(BenchmarkId::new("scan", id), |b| {
                b.iter(|| {
                    let mut scanner = Scanner::new(Arc::clone(&needles));
                    let mut n = 0;
                    for c in &chunks {
                        n += scanner.push(c.clone()).0.len();
                    }
                    n + scanner.finish().0.len()
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("reflection_compile");
    for count in [1usize, 10, 100] {
        let values = values(count);
        group.bench_function(BenchmarkId::from_parameter(count), |b| {
            b.iter(|| Needles::new(black_box(&values)).unwrap().len())
        });
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
