//! The worker pool: claim due sagas, run their due step, repeat.
//!
//! A claim loop claims under lock: in one transaction it selects due rows
//! with `FOR UPDATE SKIP LOCKED`, runs each saga's due work, writes every
//! new state, history row and command, and commits. The row locks are the
//! claim: another loop skips the rows until the commit, and if this worker
//! dies its connection closes, the transaction rolls back and the sagas
//! are due again at once. Each saga is written once per step (not once to
//! lease it and again to advance it), and a batch costs one commit.
//!
//! Leases remain for what cannot be done under one lock. A batch that
//! fails rolls back whole; its sagas are then leased ([`claim_ids`]: the
//! lease moves `next_run_at` to its expiry and commits at once) and
//! advanced one by one, so that a saga whose step keeps failing waits for
//! its lease to run out instead of being claimed again at once, and no
//! separate reaper is needed. [`claim`] takes leases on whatever is due,
//! for tools and tests that drive the steps themselves.

use std::time::Duration;

use chrono::Utc;
use sagaflow_entity::saga_instance;
use sagaflow_workflows::machine::Event;
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::session::{Session, Tx};
use crate::sql::stmt;
use crate::wake::Wakeups;
use crate::{executor, WorkerConfig, WorkerError};

/// The claim statement. The inner `SELECT` walks the partial index
/// `saga_instances_due` (`next_run_at IS NOT NULL`, which the schema ties
/// to the states that can be due) in `next_run_at` order, so it needs no
/// sort and never looks at finished sagas. `id = ANY(ARRAY(…))` rather than
/// `id IN (…)`: the planner turns `IN` into a semi-join that sorts and
/// de-duplicates the claimed ids; the array form is an init-plan followed
/// by primary-key lookups.
pub const CLAIM_SQL: &str = "\
UPDATE saga_instances SET lease_owner = $1, lease_expires_at = $2, next_run_at = $2, \
       version = version + 1, updated_at = $3 \
WHERE id = ANY(ARRAY( \
    SELECT id FROM saga_instances \
    WHERE next_run_at <= $3 \
    ORDER BY next_run_at \
    LIMIT $4 \
    FOR UPDATE SKIP LOCKED)) \
RETURNING *";

/// The claim under lock, run inside the transaction that advances what it
/// returns: walks the partial index `saga_instances_due` in `next_run_at`
/// order (no sort, no finished saga) and locks up to `$2` rows due at
/// `$1`, skipping rows another transaction holds.
///
/// Due as of the earlier of `$1` (this process's clock) and the
/// transaction's start: the history rows the batch writes carry the
/// transaction's start time (`now()`), and a saga taken over when another
/// worker's lease ran out must not show a history row older than that.
pub const LOCK_DUE_SQL: &str = "\
SELECT * FROM saga_instances WHERE next_run_at <= LEAST($1, now()) ORDER BY next_run_at LIMIT $2 FOR UPDATE SKIP LOCKED";

/// [`CLAIM_SQL`] restricted to the sagas in `$5` (a batch that failed
/// under lock, leased to be advanced one by one).
pub const CLAIM_IDS_SQL: &str = "\
UPDATE saga_instances SET lease_owner = $1, lease_expires_at = $2, next_run_at = $2, \
       version = version + 1, updated_at = $3 \
WHERE id = ANY(ARRAY( \
    SELECT id FROM saga_instances \
    WHERE id = ANY($5) AND next_run_at <= $3 \
    LIMIT $4 \
    FOR UPDATE SKIP LOCKED)) \
RETURNING *";

/// Pushes the lease of the sagas in `$1` still held by `$2` to `$3`. It
/// does not bump `version`, so the holder's guarded write still matches;
/// a saga with an operator request pending is left to expire, so that the
/// request is picked up promptly.
pub const RENEW_SQL: &str = "\
UPDATE saga_instances SET lease_expires_at = $3, next_run_at = $3 \
WHERE id = ANY($1) AND lease_owner = $2 AND operator_request IS NULL";

/// What one pass of the loop did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClaimPass {
    /// Sagas claimed.
    pub claimed: usize,
    /// Sagas advanced and written.
    pub advanced: usize,
    /// Sagas another writer changed first (their work was dropped; the
    /// other writer's state stands).
    pub stale: usize,
    /// Sagas whose step failed; they become due again when the lease
    /// expires.
    pub failed: usize,
}

/// Claims up to `batch` due sagas for `owner`, leasing them for `lease`.
pub async fn claim(
    db: &DatabaseConnection,
    owner: &str,
    batch: u32,
    lease: Duration,
) -> Result<Vec<saga_instance::Model>, WorkerError> {
    take_leases(db, CLAIM_SQL, owner, batch, lease, None).await
}

/// Leases those of the sagas `ids` that are still due (and not locked by
/// anyone) to `owner` for `lease`.
pub async fn claim_ids(
    db: &DatabaseConnection,
    owner: &str,
    ids: Vec<uuid::Uuid>,
    lease: Duration,
) -> Result<Vec<saga_instance::Model>, WorkerError> {
    let batch = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    take_leases(db, CLAIM_IDS_SQL, owner, batch, lease, Some(ids)).await
}

async fn take_leases(
    db: &DatabaseConnection,
    sql: &str,
    owner: &str,
    batch: u32,
    lease: Duration,
    ids: Option<Vec<uuid::Uuid>>,
) -> Result<Vec<saga_instance::Model>, WorkerError> {
    let now = Utc::now();
    let mut values: Vec<sea_orm::Value> = vec![
        owner.into(),
        lease_until(now, lease).into(),
        now.into(),
        i64::from(batch).into(),
    ];
    values.extend(ids.map(Into::into));
    Ok(saga_instance::Entity::find()
        .from_raw_sql(stmt(sql, values))
        .all(db)
        .await?)
}

fn lease_until(now: chrono::DateTime<Utc>, lease: Duration) -> chrono::DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30))
}

/// Claims up to `batch` due sagas under lock in `tx` ([`LOCK_DUE_SQL`]),
/// each as if leased to `owner` for `lease`: `lease_owner` and
/// `next_run_at` of the returned rows are set to what a lease would have
/// written, in memory only. Advanced with [`advance_locked`], a saga then
/// behaves as a leased one would: it is written whatever its step did,
/// and a step that leaves it waiting without a time of its own (a due
/// event the machine ignores) leaves it due when the lease would have
/// run out, not at once. Nothing of this is written unless the
/// transaction commits the sagas' new states.
pub async fn lock_due<C: ConnectionTrait>(
    tx: &C,
    owner: &str,
    batch: u32,
    lease: Duration,
) -> Result<Vec<saga_instance::Model>, WorkerError> {
    let now = Utc::now();
    let mut rows = saga_instance::Entity::find()
        .from_raw_sql(stmt(LOCK_DUE_SQL, [now.into(), i64::from(batch).into()]))
        .all(tx)
        .await?;
    let until = lease_until(now, lease).fixed_offset();
    for row in &mut rows {
        row.lease_owner = Some(owner.to_owned());
        row.lease_expires_at = Some(until);
        row.next_run_at = Some(until);
    }
    Ok(rows)
}

/// Renews the leases `owner` holds on `ids` every third of `lease`
/// (heartbeat) until `done` is cancelled, so that a batch whose steps run
/// longer than one lease is not taken over while it is still being worked
/// on. Sagas already written (lease released) or taken over are untouched.
pub async fn keep_leases(
    db: DatabaseConnection,
    owner: String,
    ids: Vec<uuid::Uuid>,
    lease: Duration,
    done: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let until = lease_until(Utc::now(), lease);
        if let Err(e) = db
            .execute(stmt(
                RENEW_SQL,
                [ids.clone().into(), owner.clone().into(), until.into()],
            ))
            .await
        {
            // The next beat tries again; if none succeeds before expiry the
            // sagas are taken over, and this worker's writes are refused.
            tracing::warn!(%owner, error = %e, "lease renewal failed");
        }
    }
}

/// One iteration of the claim loop: claim a batch under lock and advance
/// it in the same transaction; if that fails, lease the batch and advance
/// its sagas one by one. Announces the outbox rows the advanced sagas
/// wrote once they committed.
pub async fn run_once(session: &mut Session, cfg: &WorkerConfig) -> Result<ClaimPass, WorkerError> {
    let pass = claim_and_advance(session, cfg).await?;
    if pass.advanced > 0 {
        cfg.announcer
            .announce(sagaflow_entity::wake::Channel::Outbox);
    }
    Ok(pass)
}

async fn claim_and_advance(
    session: &mut Session,
    cfg: &WorkerConfig,
) -> Result<ClaimPass, WorkerError> {
    let tx = session.begin().await?;
    let rows = lock_due(&tx, &cfg.worker_id, cfg.claim_batch, cfg.lease).await?;
    let mut pass = ClaimPass {
        claimed: rows.len(),
        ..ClaimPass::default()
    };
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(pass);
    }
    metrics::histogram!("sagaflow_claim_batch_size").record(rows.len() as f64);
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
    // Something in the batch failed (a local action, a write) and the
    // batch rolled back whole: lease its sagas and go one by one, so that
    // only the saga at fault waits for its lease to expire.
    let failure = match advance_locked(tx, cfg, &rows).await {
        Ok(advanced) => {
            pass.advanced = advanced;
            return Ok(pass);
        }
        Err(e) => e,
    };
    let db = session.db().clone();
    let leased = claim_ids(&db, &cfg.worker_id, ids, cfg.lease).await?;
    if let [row] = &rows[..] {
        // A batch of one already ran its saga's step, which failed: the
        // lease alone makes it wait, without running the step again.
        tracing::warn!(saga_id = %row.id, error = %failure, "step failed; the saga is retried when its lease expires");
        pass.failed = leased.len();
        return Ok(pass);
    }
    tracing::debug!(error = %failure, "batch failed; advancing its sagas one by one");
    let rows = leased;
    let done = CancellationToken::new();
    let _stop_heartbeat = done.clone().drop_guard();
    tokio::spawn(keep_leases(
        db.clone(),
        cfg.worker_id.clone(),
        rows.iter().map(|r| r.id).collect(),
        cfg.lease,
        done,
    ));
    for row in rows {
        match process(session, cfg, &row).await {
            Ok(()) => pass.advanced += 1,
            Err(WorkerError::StaleSaga { saga_id, .. }) => {
                tracing::debug!(%saga_id, "saga changed while claimed; dropping this worker's attempt");
                pass.stale += 1;
            }
            Err(e) => {
                tracing::warn!(saga_id = %row.id, error = %e, "step failed; the saga is retried when its lease expires");
                pass.failed += 1;
            }
        }
    }
    Ok(pass)
}

/// Locks the claimed rows still leased to this worker at the version the
/// claim left them at (`FOR UPDATE`: nobody can change them until this
/// transaction ends, so none can turn stale half-way), in id order, as the
/// reply consumer locks its batches, so that the two never deadlock.
const LOCK_SQL: &str = "\
SELECT id, version FROM saga_instances WHERE id = ANY($1) AND lease_owner = $2 ORDER BY id FOR UPDATE";

/// Runs the due work of a whole leased batch in one transaction: one lock
/// statement, each saga's effects, then every new state, history row and
/// command in one statement, and one commit. A saga changed since the
/// claim (an operator's request, a takeover) is left out and counted
/// stale; any error rolls the whole batch back.
pub async fn process_batch(
    session: &mut Session,
    cfg: &WorkerConfig,
    rows: &[saga_instance::Model],
) -> Result<ClaimPass, WorkerError> {
    let tx = session.begin().await?;
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
    let locked: std::collections::HashMap<uuid::Uuid, i64> =
        crate::sql::all(&tx, LOCK_SQL, [ids.into(), cfg.worker_id.clone().into()])
            .await?
            .iter()
            .filter_map(|r| Some((r.try_get("", "id").ok()?, r.try_get("", "version").ok()?)))
            .collect();
    let (current, changed): (Vec<_>, Vec<_>) = rows
        .iter()
        .partition(|row| locked.get(&row.id) == Some(&row.version));
    for row in &changed {
        tracing::debug!(saga_id = %row.id, "saga changed since the claim; leaving it");
    }
    let current: Vec<saga_instance::Model> = current.into_iter().cloned().collect();
    Ok(ClaimPass {
        advanced: advance_locked(tx, cfg, &current).await?,
        stale: changed.len(),
        ..ClaimPass::default()
    })
}

/// Runs the due work of `rows`, which `tx` holds locked at the versions
/// they carry: each saga's effects, then every new state, history row and
/// command in one statement, and the commit. Returns how many sagas were
/// advanced (all of them, or an error and nothing committed).
pub async fn advance_locked(
    tx: Tx<'_>,
    cfg: &WorkerConfig,
    rows: &[saga_instance::Model],
) -> Result<usize, WorkerError> {
    let done = match advance_all(&tx, cfg, rows).await {
        Ok(done) => done,
        Err(e) => {
            // Roll back before returning: a dropped transaction's rollback
            // is only as prompt as its connection's close, and until then
            // its row locks would hide the batch from the caller's fallback
            // (a SKIP LOCKED lease of the same sagas).
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rolling back a failed batch");
            }
            return Err(e);
        }
    };
    tx.commit().await?;
    for (row, advanced) in &done {
        advanced.observe(&row.saga_type, row.current_step, None);
    }
    Ok(done.len())
}

/// Each saga's effects, then every write in one statement, through `tx`.
async fn advance_all<'r>(
    tx: &Tx<'_>,
    cfg: &WorkerConfig,
    rows: &'r [saga_instance::Model],
) -> Result<Vec<(&'r saga_instance::Model, executor::Advanced)>, WorkerError> {
    let mut writes = executor::Writes::default();
    let mut done = Vec::with_capacity(rows.len());
    for row in rows {
        let span = tracing::info_span!("saga_step", saga_id = %row.id, saga_type = %row.saga_type,
            order_no = executor::order_no(row), step = row.current_step, attempt = row.attempt);
        let advanced =
            executor::advance_into(tx, cfg, row, Event::Due, &cfg.worker_id, &mut writes)
                .instrument(span)
                .await?;
        done.push((row, advanced));
    }
    writes.flush(tx).await?;
    Ok(done)
}

/// Runs the due work of one claimed saga in its own transaction: a batch
/// of one, so that it too locks its row before anything else (a saga's
/// row lock is always the first lock a transaction about it takes;
/// without that, a step that ran a hook, which updates the order row, and
/// then wrote the saga could deadlock with a reply holding the saga row
/// and wanting the order row, which Postgres breaks only after
/// `deadlock_timeout`, 1 s). Fails with [`WorkerError::StaleSaga`],
/// writing nothing, if the saga changed since `row` was claimed (another
/// worker took it over, or a reply advanced it).
pub async fn process(
    session: &mut Session,
    cfg: &WorkerConfig,
    row: &saga_instance::Model,
) -> Result<(), WorkerError> {
    let pass = process_batch(session, cfg, std::slice::from_ref(row)).await?;
    if pass.stale > 0 {
        return Err(WorkerError::StaleSaga {
            saga_id: row.id,
            version: row.version,
        });
    }
    Ok(())
}

/// Runs `cfg.workers` claim loops until `shutdown`. A notification of a new
/// saga wakes one loop, not all of them (each woken loop would claim, and
/// all but one would find nothing: wasted statements and commits, the more
/// so with several processes); a loop that found a full batch claims again
/// at once and wakes a sibling to share what is left. Every loop also
/// claims after the poll interval, which is how timers come due. Other
/// passes start at least `cfg.pass_gap` apart (all loops together), so
/// sagas started meanwhile are claimed together.
pub async fn run(
    db: DatabaseConnection,
    cfg: WorkerConfig,
    wakeups: Wakeups,
    shutdown: CancellationToken,
) {
    let kick = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (kick, mut rx, shutdown) = (kick.clone(), wakeups.saga.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = rx.changed() => {
                        if r.is_err() {
                            break;
                        }
                        kick.notify_one();
                    }
                }
            }
        });
    }
    let pacer = crate::wake::Pacer::new(cfg.pass_gap);
    for n in 0..cfg.workers.max(1) {
        let pacer = pacer.clone();
        let db = db.clone();
        let cfg = cfg.clone();
        let kick = kick.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut session = Session::new(&db);
            while !shutdown.is_cancelled() {
                let pause = match run_once(&mut session, &cfg).await {
                    Ok(pass)
                        if pass.claimed
                            >= usize::try_from(cfg.claim_batch).unwrap_or(usize::MAX) =>
                    {
                        kick.notify_one();
                        continue;
                    }
                    Ok(_) => cfg.poll_interval,
                    Err(e) => {
                        tracing::warn!(worker = n, error = %e, "claim failed");
                        cfg.poll_interval.max(Duration::from_millis(500))
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = kick.notified() => {}
                }
                pacer.pace(&shutdown).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Hand back whatever this process still holds (a saga whose step
    // failed keeps its lease until expiry otherwise), so that another
    // worker takes it at once instead of after the lease.
    match db
        .execute(stmt(RELEASE_SQL, [cfg.worker_id.clone().into()]))
        .await
    {
        Ok(r) if r.rows_affected() > 0 => {
            tracing::info!(
                released = r.rows_affected(),
                "handed back leased sagas on shutdown"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not hand back leases; they expire on their own")
        }
    }
}

/// Releases every lease `$1` holds and makes those sagas due now; the
/// version bump voids any write this worker might still attempt. A leased
/// saga is always due at its lease's end, so `next_run_at IS NOT NULL`
/// only lets the statement walk `saga_instances_due` (active sagas)
/// instead of the whole table.
pub const RELEASE_SQL: &str = "\
UPDATE saga_instances SET lease_owner = NULL, lease_expires_at = NULL, next_run_at = now(), \
       version = version + 1, updated_at = now() \
WHERE lease_owner = $1 AND next_run_at IS NOT NULL";
