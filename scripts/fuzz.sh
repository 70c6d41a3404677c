#!/usr/bin/env bash
# Bounded fuzzing of every codec target (cargo-fuzz, libFuzzer): SECONDS_PER_TARGET each,
# starting from the committed seed corpus (copied, so the tree stays clean).
# Needs a nightly toolchain; without one it says so loudly and exits 0, because the same
# fuzz logic also runs as ordinary tests over the corpus and random inputs (src/rdg/fuzzing.rs).
# A crash found is a failure (exit 1) and leaves the reproducer under fuzz/artifacts/.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_TARGET:-20}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "*** SKIPPING bounded fuzzing: no nightly toolchain here (the fuzz logic still ran as tests) ***"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  if ! cargo install cargo-fuzz --locked --quiet; then
    echo "*** SKIPPING bounded fuzzing: cargo-fuzz could not be installed ***"
    exit 0
  fi
fi
if ! (cd fuzz && cargo +nightly fuzz build -O 2>&1 | tail -3); then
  echo "*** SKIPPING bounded fuzzing: the fuzz targets did not build with this nightly ***"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $(cd fuzz && cargo +nightly fuzz list); do
  mkdir -p "$work/$target"
  cp -r "fuzz/corpus/$target/." "$work/$target/" 2>/dev/null || true
  echo "fuzz $target for ${secs}s"
  if ! (cd fuzz && cargo +nightly fuzz run -O "$target" "$work/$target" -- -max_total_time="$secs" -rss_limit_mb=1024 2>&1 | tail -4); then
    echo "fuzz target $target FAILED (reproducer in fuzz/artifacts/$target)"
    exit 1
  fi
done
