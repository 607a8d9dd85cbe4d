//! The hub protocol codecs on the hot path: encoding one server-to-client invocation (done once per protocol per
//! group send) and decoding one client invocation, for JSON and MessagePack, with a 64-byte payload.
//!
//! `cargo bench --bench codec`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hubmesh::protocol::{NoPayload, Outgoing, Protocol};

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_invocation");
    group.throughput(Throughput::Elements(1));
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let arguments = (PAYLOAD,);
        let message: Outgoing<'_, (&str,), NoPayload> = Outgoing::Invocation {
            invocation_id: None,
            target: "msg",
            arguments: &arguments,
        };
        let mut out = Vec::with_capacity(256);
        group.bench_function(protocol.name(), |b| {
            b.iter(|| {
                out.clear();
                let encoded = protocol.encode(black_box(&message), &mut out);
                black_box((encoded, out.len()))
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_invocation");
    group.throughput(Throughput::Elements(1));
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let arguments = ("room", PAYLOAD);
        let mut record = Vec::new();
        let message: Outgoing<'_, (&str, &str), NoPayload> = Outgoing::Invocation {
            invocation_id: Some("1"),
            target: "SendToGroup",
            arguments: &arguments,
        };
        if let Err(error) = protocol.encode(&message, &mut record) {
            eprintln!("cannot build the {} record: {error}", protocol.name());
            continue;
        }
        group.bench_function(protocol.name(), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(record.as_slice());
                black_box(protocol.decode(&mut buf, 32 * 1024))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
