//! Frame codec throughput: encode and decode at 1 KiB (the AWS payload size)
//! and 64 KiB (a negotiated Airlock size), with and without the SHA-256 digest.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use airlock_proto::{decode, DecodeOptions, Frame, MessageType, PayloadType};
use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (64 * 1024, "64KiB")];

fn frame(len: usize) -> Frame {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    Frame::new(
        MessageType::OutputStreamData,
        42,
        0,
        PayloadType::OUTPUT,
        Bytes::from(payload),
    )
}

fn encode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (len, name) in SIZES {
        let f = frame(len);
        g.throughput(Throughput::Bytes(f.encoded_len() as u64));
        for digest in [true, false] {
            let id = BenchmarkId::new(if digest { "digest" } else { "no_digest" }, name);
            let mut buf = BytesMut::with_capacity(f.encoded_len());
            g.bench_function(id, |b| {
                b.iter(|| {
                    buf.clear();
                    black_box(&f).encode_into(&mut buf, digest);
                    black_box(buf.len())
                })
            });
        }
    }
    g.finish();
}

fn decode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (len, name) in SIZES {
        let f = frame(len);
        for digest in [true, false] {
            let raw = f.encode(digest);
            let opts = DecodeOptions {
                verify_digest: digest,
                ..DecodeOptions::default()
            };
            g.throughput(Throughput::Bytes(raw.len() as u64));
            let id = BenchmarkId::new(if digest { "digest" } else { "no_digest" }, name);
            g.bench_function(id, |b| {
                b.iter(|| decode(black_box(raw.clone()), &opts).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encode_bench, decode_bench);
criterion_main!(benches);
