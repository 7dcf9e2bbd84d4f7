//! held-xmin: claim-1step's workload in waves, twice in the same run —
//! once as it is, once with another session holding a `REPEATABLE READ`
//! transaction (with an xid and a snapshot) open from before the first
//! wave to after the last, so that nothing the run leaves dead in
//! `saga_instances` and its indexes can be removed (or marked dead in an
//! index) while it lasts.
//!
//! The claim loops here are the engine's, driven through
//! `sagaflow_worker::claim`'s public API (`lock_due`, then
//! `advance_locked` in the same transaction, as the engine's `run_once`
//! does), so that each claim statement can be timed on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use sagaflow_worker::session::Session;
use sagaflow_worker::{claim, WorkerConfig};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, IsolationLevel, Statement,
    TransactionTrait,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::report::{Check, Horizon, Latency, ScenarioResult};
use crate::scenario::{
    bar, config, db_now, extensions, insert_due, per, per_each, timeline, BenchDb, Env, Meter,
    ONE_STEP,
};
use crate::system::scalar_i64;

/// The size of each half.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Sagas per wave.
    pub wave: u64,
    /// Waves, each inserted once the last one was drained.
    pub waves: u64,
}

/// Both halves: the baseline, then the same work with the horizon held.
/// The second carries the held/baseline ratios in its notes.
pub async fn run(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<ScenarioResult>> {
    let base = half(env, "held-xmin-base", sizes, false).await?;
    let mut held = half(env, "held-xmin-held", sizes, true).await?;
    let ratio = |f: fn(&Latency) -> f64| match (&base.latency_ms, &held.latency_ms) {
        (Some(b), Some(h)) => format!("{:.2}", f(h) / f(b).max(1e-9)),
        _ => "—".to_owned(),
    };
    held.notes.push(format!(
        "held/baseline: sagas/s {:.2}, claim p50 {}, p99 {}, max {}",
        held.sagas_per_second / base.sagas_per_second.max(1e-9),
        ratio(|l| l.p50),
        ratio(|l| l.p99),
        ratio(|l| l.max)
    ));
    Ok(vec![base, held])
}

/// The engine's worker settings with the bench's sagas and actions, as
/// `sagaflow::app::start_extended` builds them.
fn worker_config(cfg: &sagaflow::config::Config) -> anyhow::Result<WorkerConfig> {
    let ext = extensions();
    let mut registry = sagaflow_workflows::Registry::builtin();
    for def in ext.definitions {
        registry.register(def)?;
    }
    let mut actions = sagaflow_worker::Actions::builtin();
    for (name, action) in ext.actions {
        actions.register(name, action)?;
    }
    let mut worker = cfg.worker();
    worker.registry = Arc::new(registry);
    worker.actions = Arc::new(actions);
    Ok(worker)
}

/// A session holding the xmin horizon: `BEGIN ISOLATION LEVEL REPEATABLE
/// READ`, an xid (`txid_current()`) and a snapshot (a read of the table),
/// then nothing until [`Holder::release`].
struct Holder {
    conn: DatabaseConnection,
    tx: DatabaseTransaction,
    xid: i64,
}

impl Holder {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let mut opts = sea_orm::ConnectOptions::new(url.to_owned());
        opts.max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        let conn = Database::connect(opts).await?;
        // Whatever the server's or role's default, this session is the
        // forgotten transaction the scenario is about.
        conn.execute_unprepared("SET idle_in_transaction_session_timeout = 0")
            .await?;
        let tx = conn
            .begin_with_config(Some(IsolationLevel::RepeatableRead), None)
            .await?;
        let xid = scalar_i64(&tx, "SELECT txid_current()").await?;
        scalar_i64(&tx, "SELECT count(*) FROM saga_instances").await?;
        Ok(Holder { conn, tx, xid })
    }

    /// Ends the transaction; fails if the server ended it first.
    async fn release(self) -> anyhow::Result<()> {
        // Still the same transaction: the server did not end it meanwhile.
        let xid = scalar_i64(&self.tx, "SELECT txid_current()").await?;
        anyhow::ensure!(xid == self.xid, "the holding transaction was replaced");
        self.tx.rollback().await?;
        self.conn.close().await.ok();
        Ok(())
    }
}

/// One claim loop: claim, time the claim statement, run the batch in one
/// transaction, until `stop`. Returns the claim times (µs) and how many
/// claims found nothing.
async fn claim_loop(
    db: DatabaseConnection,
    cfg: WorkerConfig,
    done: Arc<AtomicU64>,
    kick: Arc<Notify>,
    stop: CancellationToken,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut claims = Histogram::<u64>::new(3)?;
    let mut empty = 0;
    let mut session = Session::new(&db);
    while !stop.is_cancelled() {
        let tx = session.begin().await?;
        let started = Instant::now();
        let rows = claim::lock_due(&tx, &cfg.worker_id, cfg.claim_batch, cfg.lease).await?;
        claims.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        if rows.is_empty() {
            tx.commit().await?;
            empty += 1;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = kick.notified() => {}
                _ = tokio::time::sleep(cfg.poll_interval) => {}
            }
            continue;
        }
        let advanced = claim::advance_locked(tx, &cfg, &rows).await?;
        done.fetch_add(u64::try_from(advanced)?, Ordering::SeqCst);
    }
    Ok((claims, empty))
}

/// The claim statement with literal arguments, under `EXPLAIN (ANALYZE,
/// BUFFERS)`, with one batch of fresh sagas due, all rolled back. On a
/// session of its own that ends afterwards: an idle backend keeps its
/// statistics (here, the rolled-back rows as dead tuples) for up to 10 s,
/// one that exits sends them at once.
async fn explain_claim(url: &str, batch: u32) -> anyhow::Result<String> {
    let db = Database::connect(url).await?;
    let tx = db.begin().await?;
    insert_due(&tx, ONE_STEP, u64::from(batch)).await?;
    let sql = claim::LOCK_DUE_SQL
        .replace("$1", "now()")
        .replace("$2", &batch.to_string());
    let rows = tx
        .query_all(Statement::from_string(
            tx.get_database_backend(),
            format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"),
        ))
        .await?;
    tx.rollback().await?;
    db.close().await.ok();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

/// The `Buffers:` figures of the first plan node whose line contains
/// `node`.
fn buffers_after(plan: &str, node: &str) -> String {
    plan.lines()
        .skip_while(|l| !l.contains(node))
        .find_map(|l| l.trim().strip_prefix("Buffers: "))
        .unwrap_or("—")
        .to_owned()
}

/// The table's dead tuples and the horizon, now (statistics as reported
/// so far: read after the load's backends exited).
async fn observe(db: &DatabaseConnection) -> anyhow::Result<Horizon> {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT n_dead_tup, n_live_tup, autovacuum_count, \
                    pg_relation_size('saga_instances'), pg_relation_size('saga_instances_due'), \
                    (SELECT COALESCE(max(greatest(age(backend_xmin), age(backend_xid))), 0)::bigint \
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()), \
                    (SELECT COALESCE(extract(epoch FROM max(now() - xact_start)), 0)::float8 \
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)) \
             FROM pg_stat_user_tables WHERE relname = 'saga_instances'",
        ))
        .await?
        .context("no statistics for saga_instances")?;
    Ok(Horizon {
        held: false,
        waves: 0,
        claims: 0,
        empty_claims: 0,
        dead_tuples: row.try_get_by_index(0)?,
        live_tuples: row.try_get_by_index(1)?,
        autovacuums: row.try_get_by_index(2)?,
        table_bytes: row.try_get_by_index(3)?,
        due_index_bytes: row.try_get_by_index(4)?,
        xmin_age_xids: row.try_get_by_index(5)?,
        oldest_xact_s: row.try_get_by_index(6)?,
        dead_after_vacuum: Vec::new(),
        explain: Vec::new(),
    })
}

/// Runs `VACUUM saga_instances` and returns what it left dead (PG 15
/// reports the tuples it found dead but not yet removable).
async fn vacuum(db: &DatabaseConnection) -> anyhow::Result<i64> {
    // Let the statistics of the EXPLAIN's session, which just exited,
    // arrive first, so that they are not added on top of VACUUM's figure.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    db.execute_unprepared("VACUUM saga_instances").await?;
    scalar_i64(
        db,
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'saga_instances'",
    )
    .await
}

/// One half: `sizes.waves` waves of `sizes.wave` one-step sagas, each
/// inserted once the last was drained, through `env.workers` timed claim
/// loops; with `hold`, under a transaction held open throughout.
async fn half(env: &Env, name: &str, sizes: Sizes, hold: bool) -> anyhow::Result<ScenarioResult> {
    let db = BenchDb::create(env, name).await?;
    let cfg = config(env, &db)?;
    let worker = worker_config(&cfg)?;
    let pool = sagaflow::app::connect_engine(&cfg).await?;
    let holder = match hold {
        true => Some(Holder::open(&db.url).await?),
        false => None,
    };
    let total = sizes.wave * sizes.waves;
    let meter = Meter::start(&db.conn).await?;
    let t0 = db_now(&db.conn).await?;
    let (done, kick, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Notify::new()),
        CancellationToken::new(),
    );
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..env.workers.max(1) {
        loops.spawn(claim_loop(
            pool.clone(),
            worker.clone(),
            done.clone(),
            kick.clone(),
            stop.clone(),
        ));
    }
    let pb = bar(total, name);
    let started = Instant::now();
    let mut wave_seconds = Vec::new();
    for w in 1..=sizes.waves {
        let wave_started = Instant::now();
        insert_due(&db.conn, ONE_STEP, sizes.wave).await?;
        kick.notify_waiters();
        let until = tokio::time::Instant::now() + env.settle;
        while done.load(Ordering::SeqCst) < w * sizes.wave {
            if let Some(r) = loops.try_join_next() {
                r??;
                anyhow::bail!("a claim loop stopped");
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < until,
                "wave {w} unfinished after {:?}",
                env.settle
            );
            pb.set_position(done.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wave_seconds.push(wave_started.elapsed().as_secs_f64());
    }
    let wall = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    stop.cancel();
    let mut claims = Histogram::<u64>::new(3)?;
    let mut empty_claims = 0;
    while let Some(r) = loops.join_next().await {
        let (h, e) = r??;
        claims.add(h)?;
        empty_claims += e;
    }
    // The waves' inserts are the harness's commits.
    let m = meter
        .finish_after(
            &db.conn,
            async {
                pool.close().await.ok();
            },
            sizes.waves,
        )
        .await?;
    let (timeline, seconds) = timeline(&db.conn, &t0).await?;
    let completed = u64::try_from(
        scalar_i64(
            &db.conn,
            &format!("SELECT count(*) FROM saga_instances WHERE saga_type = '{ONE_STEP}' AND state = 'COMPLETED'"),
        )
        .await?,
    )?;
    let mut horizon = observe(&db.conn).await?;
    horizon.held = hold;
    horizon.waves = sizes.waves;
    horizon.claims = claims.len();
    horizon.empty_claims = empty_claims;
    let mut checks = vec![Check {
        what: "every saga COMPLETED".to_owned(),
        ok: completed == total,
        detail: format!("{completed} of {total}"),
    }];
    let label = if hold { "horizon held" } else { "at the end" };
    horizon.explain.push((
        label.to_owned(),
        explain_claim(&db.url, env.claim_batch).await?,
    ));
    horizon
        .dead_after_vacuum
        .push((label.to_owned(), vacuum(&db.conn).await?));
    if let Some(holder) = holder {
        let released = holder.release().await;
        checks.push(Check {
            what: "the transaction held the horizon through the run".to_owned(),
            ok: released.is_ok() && horizon.oldest_xact_s >= wall,
            detail: match released {
                Ok(()) => format!(
                    "oldest transaction {:.1} s old at the end of a {wall:.1} s run, xmin age {} xids",
                    horizon.oldest_xact_s, horizon.xmin_age_xids
                ),
                Err(e) => format!("{e:#}"),
            },
        });
        // The first claim after the release visits every dead entry once
        // more and marks it dead in the index; the second skips them.
        for label in ["released, 1st claim", "released, 2nd claim"] {
            horizon.explain.push((
                label.to_owned(),
                explain_claim(&db.url, env.claim_batch).await?,
            ));
        }
        horizon
            .dead_after_vacuum
            .push(("released".to_owned(), vacuum(&db.conn).await?));
    }
    db.drop(env).await?;

    let latency_ms = Latency::from_micros(&claims);
    let mut notes = vec![format!(
        "latency = one claim statement ({} claims, {empty_claims} found nothing); \
         waves of {} sagas took {} s; at the end: {} dead / {} live tuples in saga_instances \
         ({} autovacuums), heap {} MiB, due index {} MiB, oldest transaction {:.1} s, xmin age {} xids",
        claims.len(),
        sizes.wave,
        wave_seconds
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        horizon.dead_tuples,
        horizon.live_tuples,
        horizon.autovacuums,
        horizon.table_bytes >> 20,
        horizon.due_index_bytes >> 20,
        horizon.oldest_xact_s,
        horizon.xmin_age_xids,
    )];
    for (label, plan) in &horizon.explain {
        notes.push(format!(
            "EXPLAIN claim ({label}): all {} · due index scan {} · {}",
            buffers_after(plan, "Limit"),
            buffers_after(plan, "using saga_instances_due"),
            plan.lines()
                .find(|l| l.starts_with("Execution Time"))
                .unwrap_or_default()
        ));
    }
    for (label, dead) in &horizon.dead_after_vacuum {
        notes.push(format!(
            "VACUUM saga_instances ({label}): {dead} dead tuples not removable"
        ));
    }
    Ok(ScenarioResult {
        name: name.to_owned(),
        description: format!(
            "claim-1step in {} waves of {} sagas (each inserted once the last was drained), claims timed one by one{}",
            sizes.waves,
            sizes.wave,
            if hold {
                ", with another session's REPEATABLE READ transaction (xid + snapshot) open throughout"
            } else {
                ""
            }
        ),
        params: json!({
            "wave": sizes.wave, "waves": sizes.waves, "saga_type": ONE_STEP, "held": hold,
            "workers": env.workers, "claim_batch": env.claim_batch, "pool": env.pool,
        }),
        sagas: completed,
        seconds,
        sagas_per_second: completed as f64 / seconds.max(1e-6),
        per_pgbench_commit: None,
        latency_ms,
        commits_per_saga: per(m.commits, completed),
        cpu_ms_per_saga: per(m.cpu, completed),
        process_cpu_ms_per_saga: per(m.own, completed),
        cpu_ms_per_saga_by_process: per_each(&m.by_process, completed),
        timeline,
        checks,
        notes,
        horizon: Some(horizon),
    })
}
