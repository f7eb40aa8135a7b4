//! Frame codec throughput: the encode and decode work a connection does per frame.
//!
//! - `encode/push`: `frame::encode` of a whole `ServerFrame` (the generic path).
//! - `encode/message_frame`: `Message::frame`, the per-device path of a push (shared body
//!   plus `seq`), which is what a fan-out pays once per device.
//! - `decode/*`: `Decoder::feed` over a buffer of back-to-back frames, fed whole and fed
//!   in 1,448-byte chunks (one TCP segment) so frames straddle reads.

mod common;
use common::push;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use longlink::frame::{self, Decoder};
use longlink::message::Message;
use longlink::proto::device::{
    Ack, ClientFrame, Ping, Push, ServerFrame, client_frame, server_frame,
};

/// Frames per decode batch.
const BATCH: usize = 1_000;
/// Bytes per read in the chunked decode: one Ethernet-MTU TCP segment.
const SEGMENT: usize = 1_448;
/// Frame size limit after `Welcome`.
const LIMIT: usize = 64 * 1024;

fn server_push(seq: u64) -> ServerFrame {
    ServerFrame { frame: Some(server_frame::Frame::Push(Push { seq, ..push() })) }
}

/// The frames a device mostly sends: heartbeats and acks.
fn client_frame(i: usize) -> ClientFrame {
    let frame = if i % 2 == 0 {
        client_frame::Frame::Ping(Ping { client_time_ms: 1_800_000_000_000 + i as i64 })
    } else {
        client_frame::Frame::Ack(Ack { seq: i as u64, ..Default::default() })
    };
    ClientFrame { frame: Some(frame) }
}

fn concat(frames: impl Iterator<Item = Bytes>) -> Vec<u8> {
    frames.flat_map(|f| f.to_vec()).collect()
}

fn encode(c: &mut Criterion) {
    let frame = server_push(42);
    let message = Message::new(push());
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(frame::encode(&frame).len() as u64));
    group.bench_function("push", |b| b.iter(|| frame::encode(black_box(&frame))));
    let mut seq = 0u64;
    group.bench_function("message_frame", |b| {
        b.iter(|| {
            seq += 1;
            message.frame(black_box(seq), false)
        })
    });
    group.finish();
}

/// Decodes `wire` in reads of `chunk` bytes; returns the frames seen.
fn decode_all<M: prost::Message + Default>(wire: &[u8], chunk: usize) -> usize {
    let mut decoder = Decoder::new(LIMIT);
    let mut frames = 0;
    for read in wire.chunks(chunk) {
        decoder
            .feed::<M, _>(read, |f| {
                black_box(f);
                frames += 1;
                true
            })
            .expect("valid frames");
    }
    frames
}

fn decode(c: &mut Criterion) {
    let client = concat((0..BATCH).map(|i| frame::encode(&client_frame(i))));
    let pushes = concat((0..BATCH as u64).map(|i| frame::encode(&server_push(i))));
    let mut group = c.benchmark_group("decode");
    for (name, wire, chunk) in
        [("client_whole", &client, client.len()), ("client_segments", &client, SEGMENT)]
    {
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(decode_all::<ClientFrame>(wire, chunk), BATCH))
        });
    }
    for (name, chunk) in [("push_whole", pushes.len()), ("push_segments", SEGMENT)] {
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(decode_all::<ServerFrame>(&pushes, chunk), BATCH))
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
