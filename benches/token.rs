//! Device token verification per second: what the handshake pays per connection before
//! a session exists (HS256 signature, then claims, app, device and times).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use longlink::token::{AppKey, Claims, TokenError};

const NOW: i64 = 1_800_000_000;

fn claims() -> Claims {
    Claims {
        sub: "device-0000042".into(),
        app: "demo".into(),
        uid: Some("user-7".into()),
        exp: NOW + 86_400,
        iat: NOW - 60,
        nbf: None,
    }
}

fn verify(c: &mut Criterion) {
    let key = AppKey::hs256(b"0123456789abcdef0123456789abcdef".to_vec());
    let good = key.sign(&claims());
    // Same length and shape, signed with another key: refused at the signature check.
    let forged = AppKey::hs256(b"another key of the same length!!".to_vec()).sign(&claims());

    let mut group = c.benchmark_group("token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_valid", |b| {
        b.iter(|| key.verify(black_box(&good), "demo", "device-0000042", NOW))
    });
    group.bench_function("verify_forged", |b| {
        b.iter(|| {
            let refused = key.verify(black_box(&forged), "demo", "device-0000042", NOW);
            assert_eq!(refused, Err(TokenError::Signature));
        })
    });
    group.bench_function("sign", |b| b.iter(|| key.sign(black_box(&claims()))));
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
