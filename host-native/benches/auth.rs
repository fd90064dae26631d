//! What checking a token costs a join: `Jwt::authenticate` (header, HS256
//! signature, claims, expiry, gathering) on one thread, against joining
//! open. `cargo bench -p gathering-native --bench auth`; `BENCH_SMOKE=1`
//! for a seconds-long smoke run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use gathering_core::GatheringId;
use gathering_native::{Authenticator, Credentials, Jwt};
use warp::http::HeaderMap;

fn main() {
    let n = if std::env::var_os("BENCH_SMOKE").is_some() {
        1_000
    } else {
        200_000
    };
    let jwt = Jwt::new(b"a secret of the benchmark");
    let token = jwt
        .mint_for("Ada", "player", "spring-open", Duration::from_secs(3600))
        .unwrap();
    let id = GatheringId::parse("spring-open").unwrap();
    let headers = HeaderMap::new();
    let credentials = Credentials {
        token: Some(&token),
        headers: &headers,
    };
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            black_box(jwt.authenticate(black_box(&credentials), &id).unwrap());
        }
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    println!(
        "token check: {:.2} us per join (best of 5 rounds of {n}; token of {} bytes)",
        best * 1e6,
        token.len()
    );
}
