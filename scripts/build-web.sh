#!/usr/bin/env bash
# Builds the in-page host into host-wasm/www/pkg (JS glue + wasm), which the
# demo page loads and gathering-server serves at `/`. Needs no network once
# scripts/wasm-tools.sh has installed the tools.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/wasm-tools.sh
# No debug info in the page's wasm: half the download.
CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --locked --release -p gathering-wasm --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript \
  --out-dir host-wasm/www/pkg \
  target/wasm32-unknown-unknown/release/gathering_wasm.wasm
echo "built host-wasm/www/pkg"
