#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then
# runs lints, the wasm build of the core, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain: wasm32 target"
rustup target list --installed | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

step "format and lints (unwrap/expect/panic are denied outside tests)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "core is sans-IO: builds for wasm32 and depends on no runtime"
cargo build -p gathering-core --target wasm32-unknown-unknown --locked
if cargo tree -p gathering-core -e normal --prefix none \
  | grep -E '^(tokio|async-std|smol|futures|async-channel|futures-timer|wasm-bindgen|warp) ' ; then
  echo "gathering-core must not depend on a runtime" >&2
  exit 1
fi

step "tests"
cargo test --workspace --locked
