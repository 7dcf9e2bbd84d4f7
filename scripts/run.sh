#!/usr/bin/env bash
# Project run command: starts PostgreSQL + Kafka (scripts/services.sh) and
# runs the sagaflow server. Extra arguments are passed to `sagaflow serve`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

export PATH="$HOME/.cargo/bin:$PATH"
export DATABASE_URL="${DATABASE_URL:-postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"

scripts/services.sh start

locked=()
[ -f Cargo.lock ] && locked=(--locked)

exec cargo run --release "${locked[@]}" -- serve "$@"
