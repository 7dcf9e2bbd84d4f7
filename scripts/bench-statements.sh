#!/usr/bin/env bash
# Statements per saga: runs scripts/bench.sh with its arguments under
# pg_stat_statements and writes, for each scenario database of the run, the
# statements it executed with their calls per saga (a consumer's or claim
# loop's batch size is sagas ÷ calls of its batch statement), rows per call,
# mean execution time and JIT compilation time per call. For the project's
# own cluster (scripts/services.sh).
#
#   scripts/bench-statements.sh scale-out --rounds 1
#   scripts/bench-statements.sh order-e2e --duration-s 30
#
# pg_stat_statements has to be preloaded, which takes a Postgres restart; if
# it was not, the script loads it for the run and unloads it after (another
# restart), so that later benchmarks measure the server as they always did.
# The run's databases are kept for the report and dropped after it.
# Output: a table on stdout and bench/results/statements/<UTC time>-<host>.tsv
# (STATEMENTS_OUT overrides the file).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
STATE="${SAGAFLOW_STATE_DIR:-$ROOT/.sagaflow}"
PG_DIR="$STATE/pg"
PG_PORT="${SAGAFLOW_PG_PORT:-55432}"
stamp="$(date -u +%Y-%m-%dT%H%M%SZ)"
out="${STATEMENTS_OUT:-bench/results/statements/$stamp-$(hostname -s).tsv}"

say() { echo "[statements] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"

scripts/services.sh start
[ -n "$pg_bin" ] || die "PostgreSQL binaries not found"
[ "$(id -u)" = 0 ] || die "needs root, to act as the cluster's superuser (postgres)"
# The cluster's superuser, over its socket, in database $1.
su_psql() {
  local db="$1"
  shift
  runuser -u postgres -- psql -h "$PG_DIR" -p "$PG_PORT" -d "$db" -X -q -v ON_ERROR_STOP=1 "$@"
}
restart_pg() {
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -m fast -w -t 60 restart >/dev/null
}

loaded_here=0
before=""
runs_dbs=()
bench_dbs() { su_psql postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'bench\_%' ORDER BY datname"; }
# The scenario databases the run made (and kept).
collect_runs_dbs() {
  runs_dbs=()
  while read -r db; do
    [ -n "$db" ] && ! grep -qxF "$db" <<<"$before" && runs_dbs+=("$db")
  done <<<"$(bench_dbs)"
  return 0
}
cleanup() {
  [ "${#runs_dbs[@]}" -gt 0 ] || [ -z "$before" ] || collect_runs_dbs
  for db in "${runs_dbs[@]}"; do
    su_psql postgres -c "DROP DATABASE IF EXISTS \"$db\"" || true
  done
  if [ "$loaded_here" = 1 ]; then
    say "unloading pg_stat_statements (restarting Postgres)"
    su_psql postgres -c "ALTER SYSTEM RESET shared_preload_libraries" && restart_pg || true
  fi
}
trap cleanup EXIT

preload="$(su_psql postgres -Atc "SHOW shared_preload_libraries")"
if [[ "$preload" != *pg_stat_statements* ]]; then
  [ -z "$preload" ] || die "shared_preload_libraries is '$preload'; add pg_stat_statements to it yourself"
  say "loading pg_stat_statements for this run (restarting Postgres)"
  su_psql postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
  loaded_here=1
  restart_pg
fi
su_psql postgres -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

before="$(bench_dbs)"
[ -n "$before" ] || before="-"
su_psql postgres -Atc "SELECT pg_stat_statements_reset()" >/dev/null
scripts/bench.sh "$@" --keep
collect_runs_dbs
[ "${#runs_dbs[@]}" -gt 0 ] || die "the run left no scenario database"

mkdir -p "$(dirname "$out")"
printf 'database\tsagas\tcalls\tcalls_per_saga\trows_per_call\tmean_exec_ms\tjit_ms_per_call\tstatement\n' >"$out"
for db in "${runs_dbs[@]}"; do
  sagas="$(su_psql "$db" -Atc "SELECT count(*) FROM saga_instances")"
  # Statements called at least once per 1,000 sagas, most called first.
  su_psql postgres -At -F $'\t' -c "
    SELECT '$db', $sagas, s.calls,
           round(s.calls::numeric / greatest($sagas, 1), 4),
           round(s.rows::numeric / s.calls, 1),
           round((s.total_exec_time / s.calls)::numeric, 3),
           round(((s.jit_generation_time + s.jit_inlining_time + s.jit_optimization_time
                   + s.jit_emission_time) / s.calls)::numeric, 3),
           left(regexp_replace(s.query, '\s+', ' ', 'g'), 110)
      FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
     WHERE d.datname = '$db' AND s.calls * 1000 >= greatest($sagas, 1)
     ORDER BY s.calls DESC, s.query" >>"$out"
done
column -t -s $'\t' "$out"
say "written: $out"
