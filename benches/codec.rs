//! Codec micro-benchmarks: unmasking, decoding small masked frames, encoding small frames.
//!
//! The sizes follow the push node's traffic: small client frames (pings, acks,
//! subscriptions) dominate decoding, and small server frames dominate encoding, so those
//! are counted in frames per second; unmasking is counted in bytes per second across the
//! sizes a receive buffer sees.

use std::hint::black_box;
use std::ops::ControlFlow;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use ringpush::ws::frame::{self, OpCode, Role};
use ringpush::ws::mask::{self, MaskGen};
use ringpush::ws::{Decoder, Event, Limits};

/// The payload of the small frames in the parse and encode groups.
const SMALL_PAYLOAD_BYTES: usize = 32;
/// How many small frames one iteration handles.
const FRAMES_PER_ITER: usize = 1000;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size_bytes in [16usize, 1024, 64 * 1024] {
        let mut buf = vec![0x5a; size_bytes];
        group.throughput(Throughput::Bytes(size_bytes as u64));
        group.bench_with_input(BenchmarkId::new("word", size_bytes), &size_bytes, |b, _| {
            b.iter(|| mask::unmask(black_box(&mut buf), black_box(KEY), 0))
        });
        group.bench_with_input(
            BenchmarkId::new("scalar", size_bytes),
            &size_bytes,
            |b, _| b.iter(|| mask::unmask_scalar(black_box(&mut buf), black_box(KEY), 0)),
        );
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut keys = MaskGen::new(7);
    let mut frames = BytesMut::new();
    let payload = [0x42u8; SMALL_PAYLOAD_BYTES];
    for _ in 0..FRAMES_PER_ITER {
        frame::encode_into(
            &mut frames,
            true,
            OpCode::Binary,
            &payload,
            Some(keys.next_key()),
        );
    }
    let mut input = frames.to_vec();
    let limits = Limits {
        role: Role::Server,
        message_bytes_max: 1 << 20,
    };

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(FRAMES_PER_ITER as u64));
    group.bench_function("masked_binary_32B", |b| {
        // Unmasking in place twice restores the masked bytes, and binary payloads are not
        // checked, so the same buffer can be fed again without a copy per iteration.
        let mut decoder = Decoder::default();
        b.iter(|| {
            let mut bytes_seen = 0usize;
            let result = decoder.feed(&mut input, &limits, |event| {
                if let Event::Binary(payload) = event {
                    bytes_seen += payload.len();
                }
                ControlFlow::Continue(())
            });
            debug_assert!(result.is_ok());
            black_box(bytes_seen)
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let payload = [0x42u8; SMALL_PAYLOAD_BYTES];
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(FRAMES_PER_ITER as u64));
    group.bench_function("bytes_32B", |b| {
        b.iter(|| {
            for _ in 0..FRAMES_PER_ITER {
                black_box(frame::encode(OpCode::Binary, black_box(&payload)));
            }
        })
    });
    group.bench_function("coalesced_32B", |b| {
        let mut dst = BytesMut::with_capacity(FRAMES_PER_ITER * (SMALL_PAYLOAD_BYTES + 2));
        b.iter(|| {
            dst.clear();
            for _ in 0..FRAMES_PER_ITER {
                frame::encode_into(&mut dst, true, OpCode::Binary, black_box(&payload), None);
            }
            black_box(dst.len())
        })
    });
    group.finish();
}

criterion_group!(benches, unmask, parse, encode);
criterion_main!(benches);
