//! The frame codec: encoding and decoding the frames of the message path (a client's
//! Send, the Message push a recipient gets) in both wire formats (protobuf and proto3
//! JSON), 100-byte bodies, plus the edge's forwarding of a pushed Message. Rates are
//! frames per second.
//!
//! `cargo bench -p natter-proto --bench codec`

use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use natter_proto::{
    codec::{Encoded, WireFormat},
    v1::{self, ClientFrame, ServerFrame, client_frame, server_frame},
};
use serde::{Serialize, de::DeserializeOwned};

fn body() -> Bytes {
    Bytes::from((0..100u8).collect::<Vec<u8>>())
}

fn send_frame() -> ClientFrame {
    ClientFrame {
        id: 4_242,
        body: Some(client_frame::Body::Send(v1::Send {
            client_msg_id: "0190c1d2-7a3b-7c4d-8e5f-a6b7c8d9e0f1".into(),
            to_user: 1_234_567_890,
            kind: v1::MessageKind::Binary as i32,
            body: body(),
            ..Default::default()
        })),
    }
}

fn message_frame() -> ServerFrame {
    ServerFrame {
        id: 0,
        body: Some(server_frame::Body::Message(v1::Message {
            conversation_id: "d.1234567890.9876543210".into(),
            seq: 123_456,
            message_id: 7_654_321_987_654,
            sender_user: 1_234_567_890,
            sender_device: 55,
            client_msg_id: "0190c1d2-7a3b-7c4d-8e5f-a6b7c8d9e0f1".into(),
            kind: v1::MessageKind::Binary as i32,
            body: body(),
            reply_to_seq: 0,
            created_at_ms: 1_700_000_000_000,
            event: None,
            withheld: false,
            media: None,
            call: None,
            deleted: false,
        })),
    }
}

/// Benches decoding `frame` (encoded once, outside the timed part) in `format`.
fn decode<M>(g: &mut BenchmarkGroup<'_, WallTime>, format: WireFormat, what: &str, frame: &M)
where
    M: prost::Message + Serialize + DeserializeOwned + Default,
{
    let name = format!("decode {what}/{}", format.subprotocol());
    match format.encode(frame) {
        Encoded::Binary(bytes) => g.bench_function(name, |b| {
            b.iter(|| {
                format
                    .decode_binary::<M>(std::hint::black_box(&bytes))
                    .expect("a frame we encoded decodes")
            })
        }),
        Encoded::Text(text) => g.bench_function(name, |b| {
            b.iter(|| {
                format
                    .decode_text::<M>(std::hint::black_box(&text))
                    .expect("a frame we encoded decodes")
            })
        }),
    };
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for format in [WireFormat::Proto, WireFormat::Json] {
        let name = format.subprotocol();
        let send = send_frame();
        let message = message_frame();
        g.bench_function(format!("encode Send/{name}"), |b| {
            b.iter(|| format.encode(std::hint::black_box(&send)))
        });
        g.bench_function(format!("encode Message/{name}"), |b| {
            b.iter(|| format.encode(std::hint::black_box(&message)))
        });
        decode::<ClientFrame>(&mut g, format, "Send", &send);
        // What a client does with every push it receives.
        decode::<ServerFrame>(&mut g, format, "Message", &message);
        // The edge forwards pushes to binary connections as is and transcodes for JSON.
        let pushed = match WireFormat::Proto.encode(&message) {
            Encoded::Binary(bytes) => bytes,
            Encoded::Text(_) => unreachable!("the proto format encodes to binary"),
        };
        g.bench_function(format!("forward pushed Message/{name}"), |b| {
            b.iter(|| {
                format
                    .transcode::<ServerFrame>(std::hint::black_box(pushed.clone()))
                    .expect("a frame we encoded transcodes")
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
