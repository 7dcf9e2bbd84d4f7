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

# The operator calls need an admin token. Without one in the environment,
# make a random one once and keep it (readable by this user only) so the
# dashboard's retry and cancel work on a fresh machine too.
if [ -z "${SAGAFLOW_ADMIN_TOKEN:-}" ]; then
  token_file=.sagaflow/admin-token
  if [ ! -s "$token_file" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file")
  fi
  SAGAFLOW_ADMIN_TOKEN="$(cat "$token_file")"
  export SAGAFLOW_ADMIN_TOKEN
  echo "[run] admin token (for the dashboard's retry/cancel): $SAGAFLOW_ADMIN_TOKEN  (kept in $token_file)"
fi

locked=()
[ -f Cargo.lock ] && locked=(--locked)

exec cargo run --release "${locked[@]}" -- serve "$@"
