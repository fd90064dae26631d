#!/usr/bin/env bash
# Builds the demo page's in-page host (installing the wasm tools if missing),
# then runs the server on its embedded defaults; arguments go to the server
# (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-web.sh
exec cargo run --locked --release -p gathering-native -- "$@"
