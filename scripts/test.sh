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

# The dashboard's browser test (tests/browser.rs) drives Debian's headless
# Chromium through chromedriver; install both when missing.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  command -v apt-get >/dev/null || { echo "[test] ERROR: apt-get not found; please install chromium and chromium-driver" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "[test] ERROR: need root to install chromium and chromium-driver" >&2; exit 1; }
  echo "[test] apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  echo "[test] apt-get install chromium chromium-driver"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

# tests/fuzz_http.rs runs schemathesis (PyPI) from a project-local
# virtualenv; Debian's python3 needs python3-venv for that.
SCHEMATHESIS_VERSION=4.32.5
venv=.sagaflow/venv
if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "[test] ERROR: need root to install python3-venv" >&2; exit 1; }
    echo "[test] apt-get install python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "[test] installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  mkdir -p .sagaflow
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# Each integration test makes its own database (sft_*) and topics (t<12 hex>.*);
# drop what earlier runs left behind so they don't pile up.
stale_dbs=$(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'sft\_%'" 2>/dev/null || true)
for db in $stale_dbs; do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
done
[ -z "$stale_dbs" ] || echo "[test] dropped $(echo "$stale_dbs" | wc -l) test database(s) of earlier runs"
if [ -d .sagaflow/kafka/libs ] && [ "$KAFKA_BOOTSTRAP_SERVERS" = "127.0.0.1:9092" ]; then
  java -cp '.sagaflow/kafka/libs/*' org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" \
    --delete --if-exists --topic 't[0-9a-f]{12}\..*' >/dev/null 2>&1 || true
fi

locked=()
[ -f Cargo.lock ] && locked=(--locked)

echo "[test] cargo test --workspace ${locked[*]} -- --test-threads=4"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
# pipefail makes the pipeline's status cargo's whenever cargo fails.
cargo test --workspace "${locked[@]}" -- --test-threads=4 2>&1 | tee "$log" || rc=$?

# One closing line for the whole suite (cargo prints one per test binary,
# the last of which is often a crate's empty doc-test run).
passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) n += $i } END { print n + 0 }' "$log")
echo "[test] cargo exit status: $rc"
# A green run's test databases hold nothing anyone needs, and hundreds of
# them slow autovacuum (and so any benchmark) on this server; a red run's
# stay for inspection until the next run.
if [ "$rc" -eq 0 ]; then
  for db in $(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'sft\_%'" 2>/dev/null || true); do
    psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
fi
echo "[test] services left running; stop them with: scripts/services.sh stop"
echo "suite: ${passed:-0} passed, ${failed:-0} failed"
exit "$rc"
