#!/usr/bin/env bash
# Installs what building and testing the in-page host needs, only if missing:
# the wasm32 target and wasm-bindgen-cli at exactly the version Cargo.toml pins.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
version=$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)".*/\1/p' Cargo.toml)
if [ -z "$version" ]; then
  echo "Cargo.toml's [workspace.dependencies] must pin wasm-bindgen with =X.Y.Z" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  # Not --locked: its lock file names a crate version this registry lacks.
  echo "installing wasm-bindgen-cli $version (a few minutes, once)" >&2
  cargo install wasm-bindgen-cli --version "$version" --force
fi
