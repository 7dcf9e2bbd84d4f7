#!/usr/bin/env bash
# Project test command: starts PostgreSQL + Kafka (scripts/services.sh) and
# runs the whole workspace test suite. Services are left running for reruns.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

export PATH="$HOME/.cargo/bin:$PATH"
export DATABASE_URL="${DATABASE_URL:-postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"

scripts/services.sh start

locked=()
[ -f Cargo.lock ] && locked=(--locked)

echo "[test] cargo test --workspace ${locked[*]} -- --test-threads=4"
rc=0
cargo test --workspace "${locked[@]}" -- --test-threads=4 || rc=$?

echo "[test] cargo exit status: $rc"
echo "[test] services left running; stop them with: scripts/services.sh stop"
exit "$rc"
