#!/usr/bin/env bash
# Builds the in-page host into host-wasm/www/pkg (JS glue + wasm) and the
# client into host-wasm/www/sdk, which the demo page loads and
# gathering-server serves at `/`. Needs no network once
# scripts/wasm-tools.sh has installed the tools and npm has the compiler
# in its cache.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/wasm-tools.sh
# No debug info in the page's wasm: half the download. The demo crate
# exports the page's apps; the page loads it as pkg/gathering_wasm.js.
CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --locked --release -p gathering-wasm-demo --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript \
  --out-dir host-wasm/www/pkg --out-name gathering_wasm \
  target/wasm32-unknown-unknown/release/gathering_wasm_demo.wasm
# The page's client: gathering-client (TypeScript, no runtime dependencies),
# compiled into host-wasm/www/sdk with the package's pinned compiler.
(cd host-wasm/client && npm ci --no-audit --no-fund --silent && npx tsc -p . --outDir ../www/sdk)
echo "built host-wasm/www/pkg and host-wasm/www/sdk"
