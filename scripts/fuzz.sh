#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) on its
# corpus in fuzz/corpus/, installing the nightly toolchain and cargo-fuzz if
# missing. New inputs libFuzzer finds go to a scratch copy, so the corpus in
# the repository changes only by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
export PATH="$HOME/.cargo/bin:$PATH"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in decode gathering hall; do
  mkdir -p "$scratch/$target"
  (cd fuzz && cargo +nightly fuzz run "$target" "$scratch/$target" ../fuzz/corpus/"$target" -- \
    -max_total_time="$seconds" -max_len=512 -print_final_stats=1 2>&1 | tail -15)
done
