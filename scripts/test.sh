#!/usr/bin/env bash
# The test command README.md names: every unit, property and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Two test binaries at a time: the integration suites open thousands of sockets each, and the
# machine this runs on has two cores.
cargo test --all-targets -- --test-threads=2
