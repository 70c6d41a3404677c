#!/usr/bin/env bash
# The test command README.md names: every unit, property and integration test, and every
# benchmark run once in test mode (so benches keep compiling and running).
set -euo pipefail
cd "$(dirname "$0")/.."
# Two test threads: the integration suites open thousands of sockets each, and the machine this
# runs on has two cores. (An env var, not `-- --test-threads`: criterion benches reject the flag.)
export RUST_TEST_THREADS=2
cargo test --all-targets
