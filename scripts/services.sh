#!/usr/bin/env bash
# Local service management for sagaflow: PostgreSQL + Apache Kafka (KRaft).
#
#   scripts/services.sh {start|stop|restart|status|install} [pg|kafka|all]
#
# `restart pg` / `restart kafka` stop and start one service (a clean stop:
# pg_ctl -m fast, SIGTERM to the broker); the other is left alone.
#
# Everything (data, logs, pid files, Kafka jars) lives under .sagaflow/ at the
# repository root. Nothing here touches the system PostgreSQL cluster.
#
# Ports can be overridden (e.g. for a second checkout on the same machine):
#   SAGAFLOW_PG_PORT (55432), SAGAFLOW_KAFKA_PORT (9092),
#   SAGAFLOW_KAFKA_CONTROLLER_PORT (9093)
#
# A second, independent pair of services (the fault suite, tests/faults.rs,
# runs its own so that it can restart them without disturbing anyone) needs
# its own ports and its own state directory:
#   SAGAFLOW_STATE_DIR (.sagaflow): where the PostgreSQL cluster (pg/), the
#     Kafka broker's data, config, logs and pid file (kafka/) and the lock
#     of this script live. A relative path is taken from the current
#     directory. The Kafka jars are shared by every state directory and
#     stay in .sagaflow/kafka/libs (downloaded once).
#   e.g. SAGAFLOW_STATE_DIR=.sagaflow/faults SAGAFLOW_PG_PORT=55433 \
#        SAGAFLOW_KAFKA_PORT=19092 SAGAFLOW_KAFKA_CONTROLLER_PORT=19093 \
#        scripts/services.sh start
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
STATE="${SAGAFLOW_STATE_DIR:-$ROOT/.sagaflow}"
case "$STATE" in
  /*) ;;
  *) STATE="$PWD/$STATE" ;;
esac
STATE="${STATE%/}"
# Downloads shared by every state directory (the Kafka jars).
SHARED="$ROOT/.sagaflow"

PG_PORT="${SAGAFLOW_PG_PORT:-55432}"
PG_DIR="$STATE/pg"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
PG_SOCK_DIR="$PG_DIR"
PG_USER=sagaflow
PG_PASSWORD=sagaflow
PG_DB=sagaflow
PG_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"

KAFKA_PORT="${SAGAFLOW_KAFKA_PORT:-9092}"
KAFKA_CTRL_PORT="${SAGAFLOW_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
KAFKA_POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_LOG4J="$ROOT/scripts/kafka/log4j2.properties"
KAFKA_DIR="$STATE/kafka"
KAFKA_DIST="$SHARED/kafka"
KAFKA_LIBS="$KAFKA_DIST/libs"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_OUT="$KAFKA_DIR/kafka.out"
KAFKA_LOG="$KAFKA_DIR/server.log"
KAFKA_START_TIMEOUT="${SAGAFLOW_KAFKA_START_TIMEOUT:-90}"
KAFKA_HEAP="${SAGAFLOW_KAFKA_HEAP:--Xms256m -Xmx512m}"

log() { echo "[services] $*"; }
die() { echo "[services] ERROR: $*" >&2; exit 1; }

usage() {
  echo "usage: $0 {start|stop|restart|status|install} [pg|kafka|all]" >&2
  exit 2
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; please install: $*"
  [ "$(id -u)" = 0 ] || die "need root to install packages: $*"
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

ensure_state_dir() {
  mkdir -p "$STATE"
  # Let the postgres OS user traverse into .sagaflow (no listing needed).
  chmod 755 "$STATE"
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------
pg_bin_dir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

pg_install() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
  fi
  PG_BIN="$(pg_bin_dir)" || die "PostgreSQL server binaries not found after install"
  id postgres >/dev/null 2>&1 || die "OS user 'postgres' is missing"
}

as_postgres() { runuser -u postgres -- "$@"; }

pg_is_running() {
  [ -f "$PG_DATA/PG_VERSION" ] || return 1
  local bin; bin="$(pg_bin_dir)" || return 1
  as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1 || return 1
  "$bin/pg_isready" -q -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres >/dev/null 2>&1
}

pg_write_config() {
  cat >"$PG_DATA/sagaflow.conf" <<EOF
# Managed by scripts/services.sh (rewritten on every start).
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
max_connections = 300
shared_buffers = 256MB
EOF
  grep -q "^include_if_exists = 'sagaflow.conf'" "$PG_DATA/postgresql.conf" ||
    echo "include_if_exists = 'sagaflow.conf'" >>"$PG_DATA/postgresql.conf"
  chown postgres:postgres "$PG_DATA/sagaflow.conf"
}

pg_init() {
  pg_install
  ensure_state_dir
  mkdir -p "$PG_DIR"
  chown -R postgres:postgres "$PG_DIR"
  chmod 755 "$PG_DIR"
  as_postgres test -w "$PG_DIR" ||
    die "OS user 'postgres' cannot write $PG_DIR (a parent folder of $ROOT is not traversable; try chmod o+x on it)"
  local sock="$PG_SOCK_DIR/.s.PGSQL.$PG_PORT"
  [ "${#sock}" -lt 104 ] || die "unix socket path too long (${#sock} chars): $sock; clone the repo to a shorter path"
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    log "pg: initdb $PG_DATA"
    rm -rf "$PG_DATA"
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
      { tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  fi
  pg_write_config
}

pg_psql_admin() {
  "$PG_BIN/psql" -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -q -X "$@"
}

pg_bootstrap_db() {
  pg_psql_admin <<EOF
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')
\gexec
EOF
}

pg_start() {
  if pg_is_running; then
    PG_BIN="$(pg_bin_dir)"
    log "pg: already running on 127.0.0.1:$PG_PORT"
  else
    pg_init
    if port_open 127.0.0.1 "$PG_PORT"; then
      # Another checkout's services (or a user's own server) may already
      # serve sagaflow here; using it beats failing. Anything else is a clash.
      if PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" "$PG_URL" -Atc \
          "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>/dev/null | grep -qx t; then
        log "pg: port $PG_PORT already serves $PG_URL (started elsewhere); using it"
        return 0
      fi
      die "pg: port $PG_PORT is already in use by another process"
    fi
    log "pg: starting on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
    # pg_ctl removes a stale postmaster.pid left over by a crash / kill -9, but
    # only once the old postmaster and its children are gone (after kill -9
    # its backends may linger for a few seconds), so retry for a while.
    local attempt
    for attempt in $(seq 1 30); do
      # 9>&-: the postmaster must not inherit (and keep) our lock fd.
      if as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null 2>&1 9>&-; then
        break
      fi
      if [ "$attempt" -lt 30 ] && tail -n 5 "$PG_LOG" 2>/dev/null | grep -q 'postmaster.pid" already exists'; then
        [ "$attempt" = 1 ] && log "pg: old postmaster still shutting down (crash?), retrying"
        sleep 1
        continue
      fi
      tail -n 30 "$PG_LOG" >&2 || true
      die "pg: failed to start"
    done
    local i
    for i in $(seq 1 60); do
      "$PG_BIN/pg_isready" -q -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres && break
      sleep 0.5
    done
    "$PG_BIN/pg_isready" -q -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres ||
      { tail -n 30 "$PG_LOG" >&2 || true; die "pg: not ready"; }
  fi
  pg_bootstrap_db
  log "pg: ready  $PG_URL"
}

pg_stop() {
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    log "pg: not initialised, nothing to stop"
    return 0
  fi
  local bin; bin="$(pg_bin_dir)" || { log "pg: not installed"; return 0; }
  if as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    log "pg: stopping"
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
    log "pg: stopped"
  else
    log "pg: not running"
  fi
}

pg_status() {
  if pg_is_running; then
    log "pg: running  $PG_URL"
  elif port_open 127.0.0.1 "$PG_PORT"; then
    log "pg: not started here, but port $PG_PORT is served by another process (another checkout?)"
  else
    log "pg: stopped"
    return 1
  fi
}

# --------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------
kafka_ensure_java() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
}

kafka_libs_ok() { # wanted-pom-sha256
  [ "$(cat "$KAFKA_LIBS/.pom.sha256" 2>/dev/null || true)" = "$1" ] &&
    ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1
}

kafka_install() {
  kafka_ensure_java
  ensure_state_dir
  mkdir -p "$KAFKA_DIR" "$KAFKA_DIST"
  local want
  want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  kafka_libs_ok "$want" && return 0
  # The jars are shared by every state directory, whose runs do not hold
  # each other's lock: one download at a time (fd 8 is closed again before
  # the broker starts).
  exec 8>"$KAFKA_DIST/install.lock"
  flock -w 600 8 || die "could not acquire $KAFKA_DIST/install.lock"
  if ! kafka_libs_ok "$want"; then
    command -v mvn >/dev/null || apt_install maven
    log "kafka: fetching jars with Maven into $KAFKA_LIBS"
    local tmp="$KAFKA_DIST/libs.tmp"
    rm -rf "$tmp"
    mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" >"$KAFKA_DIST/mvn.log" 2>&1 ||
      { tail -n 30 "$KAFKA_DIST/mvn.log" >&2; die "kafka: maven download failed"; }
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
  fi
  exec 8>&-
}

kafka_java() {
  java -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_DIR" \
    "$@"
}

kafka_write_config() {
  cat >"$KAFKA_PROPS" <<EOF
# Managed by scripts/services.sh (rewritten on every start).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
delete.topic.enable=true
EOF
}

kafka_init() {
  kafka_install
  kafka_write_config
  if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
    local cid
    cid="$(cat "$KAFKA_DIR/cluster.id" 2>/dev/null || true)"
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without
    # padding. One that starts with '-' (1 in 64) is taken for an option by
    # the storage tool's argument parser ("--cluster-id: expected one
    # argument"), so draw again until it does not.
    if [ -z "$cid" ] || [ "${cid#-}" != "$cid" ]; then
      cid=-
      while [ "${cid#-}" != "$cid" ]; do
        cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
      done
      echo "$cid" >"$KAFKA_DIR/cluster.id"
    fi
    log "kafka: formatting storage $KAFKA_DATA (cluster id $cid)"
    mkdir -p "$KAFKA_DATA"
    kafka_java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
      -t "$cid" -c "$KAFKA_PROPS" >"$KAFKA_DIR/format.log" 2>&1 ||
      { cat "$KAFKA_DIR/format.log" >&2; die "kafka: storage format failed"; }
  fi
}

kafka_pid() { # prints the pid of our running broker, fails if none
  local pid
  pid="$(cat "$KAFKA_PID" 2>/dev/null || true)"
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

kafka_is_running() {
  kafka_pid >/dev/null && port_open 127.0.0.1 "$KAFKA_PORT"
}

kafka_fail() {
  echo "----- tail of $KAFKA_LOG -----" >&2
  tail -n 40 "$KAFKA_LOG" >&2 2>/dev/null || true
  echo "----- tail of $KAFKA_OUT -----" >&2
  tail -n 20 "$KAFKA_OUT" >&2 2>/dev/null || true
  die "$*"
}

kafka_start() {
  if kafka_is_running; then
    log "kafka: already running (pid $(kafka_pid)) on $KAFKA_BOOTSTRAP"
    return 0
  fi
  local pid
  if pid="$(kafka_pid)"; then
    # Process alive but port not open: probably still starting up.
    log "kafka: process $pid alive but not serving yet, waiting"
  else
    rm -f "$KAFKA_PID"
    kafka_init
    if port_open 127.0.0.1 "$KAFKA_PORT" &&
      timeout 60 java -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --list >/dev/null 2>&1; then
      # A broker started elsewhere (e.g. another checkout) already answers.
      log "kafka: $KAFKA_BOOTSTRAP already answers as a Kafka broker (started elsewhere); using it"
      return 0
    fi
    if port_open 127.0.0.1 "$KAFKA_PORT" || port_open 127.0.0.1 "$KAFKA_CTRL_PORT"; then
      die "kafka: port $KAFKA_PORT or $KAFKA_CTRL_PORT already in use by another process"
    fi
    # The broker must not inherit our lock fd 9 (it would hold the lock forever).
    # Fresh log per run so the readiness check only sees this run's lines.
    [ -f "$KAFKA_LOG" ] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.prev"
    log "kafka: starting on $KAFKA_BOOTSTRAP (log: $KAFKA_LOG)"
    # shellcheck disable=SC2086
    (cd "$KAFKA_DIR" && exec nohup java $KAFKA_HEAP -XX:+UseG1GC \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_DIR" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" \
      >"$KAFKA_OUT" 2>&1 </dev/null 9>&-) &
    pid=$!
    echo "$pid" >"$KAFKA_PID"
  fi
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    kill -0 "$pid" 2>/dev/null || kafka_fail "kafka: broker process $pid exited during startup"
    if port_open 127.0.0.1 "$KAFKA_PORT" &&
      grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null; then
      break
    fi
    [ "$SECONDS" -lt "$deadline" ] ||
      kafka_fail "kafka: not ready after ${KAFKA_START_TIMEOUT}s (pid $pid still alive)"
    sleep 0.5
  done
  log "kafka: ready  bootstrap=$KAFKA_BOOTSTRAP (pid $pid)"
}

kafka_stop() {
  local pid
  if ! pid="$(kafka_pid)"; then
    rm -f "$KAFKA_PID"
    log "kafka: not running"
    return 0
  fi
  log "kafka: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "kafka: still alive after 30s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
  fi
  rm -f "$KAFKA_PID"
  log "kafka: stopped"
}

kafka_status() {
  if kafka_is_running; then
    log "kafka: running  bootstrap=$KAFKA_BOOTSTRAP (pid $(kafka_pid))"
  elif port_open 127.0.0.1 "$KAFKA_PORT"; then
    log "kafka: not started here, but port $KAFKA_PORT is served by another process (another checkout?)"
  else
    log "kafka: stopped"
    return 1
  fi
}

# --------------------------------------------------------------------------
main() {
  local cmd="${1:-}" target="${2:-all}"
  case "$target" in pg | kafka | all) ;; *) usage ;; esac
  local services=()
  case "$target" in
    pg) services=(pg) ;;
    kafka) services=(kafka) ;;
    all) services=(pg kafka) ;;
  esac

  case "$cmd" in
    start | stop | restart | install)
      ensure_state_dir
      # Serialise concurrent invocations (e.g. parallel test runs).
      exec 9>"$STATE/services.lock"
      if ! flock -n 9; then
        log "waiting for another services.sh run to finish (lock $STATE/services.lock)"
        flock -w 300 9 || die "could not acquire $STATE/services.lock"
      fi
      ;;
  esac

  local s rc=0
  case "$cmd" in
    start) for s in "${services[@]}"; do "${s}_start"; done ;;
    stop) for s in "${services[@]}"; do "${s}_stop"; done ;;
    restart)
      for s in "${services[@]}"; do "${s}_stop"; done
      for s in "${services[@]}"; do "${s}_start"; done
      ;;
    install)
      for s in "${services[@]}"; do "${s}_init"; done
      log "installed: ${services[*]}"
      ;;
    status)
      for s in "${services[@]}"; do "${s}_status" || rc=3; done
      return "$rc"
      ;;
    *) usage ;;
  esac
}

main "$@"
