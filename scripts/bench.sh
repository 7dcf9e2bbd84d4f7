#!/usr/bin/env bash
# Benchmarks: starts PostgreSQL + Kafka (scripts/services.sh), builds the
# harness in release mode and runs it; arguments go to sagaflow-bench
# (e.g. `scripts/bench.sh claim-1step --claim-sagas 50000`, `--help`).
# Results land in bench/results/ (JSON + SVG); see bench/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
export DATABASE_URL="${DATABASE_URL:-postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
# The engine's logs would bury the progress bars.
export RUST_LOG="${RUST_LOG:-warn}"

scripts/services.sh start
locked=()
[ -f Cargo.lock ] && locked=(--locked)
# The scale-out scenario starts `sagaflow` processes next to the harness.
cargo build --release "${locked[@]}" -p sagaflow-bench -p sagaflow --bins
exec target/release/sagaflow-bench "$@"
