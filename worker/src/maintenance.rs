//! Keeping the queue tables small: the retention job moves finished sagas
//! (with their history) out of the hot tables, and the inbox trim drops
//! message ids older than any redelivery Kafka can still make.
//!
//! Why it matters: the claim reads only the partial index of due sagas, but
//! every finished row still costs heap, vacuum and index upkeep, and
//! `saga_events` grows ten rows per saga. Both jobs work in small batches,
//! each its own short transaction, so they never hold the xmin horizon or
//! many locks; rows a worker or consumer has locked are skipped and taken
//! on a later pass. Every process running the job may start a pass; an
//! advisory lock lets one of them work at a time.

use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use tokio_util::sync::CancellationToken;

use crate::sql::{exec, one};

/// What happens to finished sagas past the retention age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// Moved to `saga_instances_archive` / `saga_events_archive`;
    /// `GET /sagas/{id}` still finds them.
    Archive,
    /// Deleted with their history.
    Delete,
    /// Kept in the hot table for ever.
    Off,
}

/// Settings of the maintenance jobs.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// What the retention job does.
    pub mode: RetentionMode,
    /// How long a finished saga stays in the hot table (counted from its
    /// last change, i.e. from when it finished).
    pub retain_finished: Duration,
    /// How long the inbox remembers a message id. Must exceed the longest
    /// time a message can be redelivered (the topics' retention): a
    /// duplicate older than this would be applied again.
    pub inbox_retention: Duration,
    /// Rows per transaction.
    pub batch: u32,
    /// Time between passes.
    pub interval: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            mode: RetentionMode::Archive,
            retain_finished: Duration::from_secs(7 * 24 * 3600),
            // Kafka's default log retention (7 days) plus a day of slack.
            inbox_retention: Duration::from_secs(8 * 24 * 3600),
            batch: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Finished sagas archived or deleted.
    pub sagas: u64,
    /// Inbox rows trimmed.
    pub inbox_rows: u64,
    /// Whether another process held the job's lock (this pass did nothing).
    pub skipped: bool,
}

/// Most batches one pass runs per job, so that a large backlog (the first
/// pass after enabling retention) is worked off over several passes rather
/// than in one long burst of I/O.
const MAX_BATCHES_PER_PASS: u32 = 100;

/// The advisory lock key of the maintenance jobs (`hashtext('sagaflow
/// maintenance')` would do as well; a constant is easier to find in
/// `pg_locks`).
pub const LOCK_KEY: i64 = 0x5a6a_f10e;

/// Up to `$2` sagas that finished more than `$1` ms ago, locked, oldest
/// first; rows a worker or consumer holds are left for a later pass.
macro_rules! victims {
    () => {
        "WITH victims AS ( \
            SELECT id FROM saga_instances \
            WHERE state IN ('COMPLETED', 'COMPENSATED', 'CANCELLED', 'RESOLVED') \
              AND updated_at < now() - $1 * interval '1 millisecond' \
            ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
    };
}

/// Moves the [`victims!`] with their history to the archive tables.
const ARCHIVE_SQL: &str = concat!(
    victims!(),
    ", moved_events AS ( \
        DELETE FROM saga_events e USING victims v WHERE e.saga_id = v.id RETURNING e.*), \
    archived_events AS ( \
        INSERT INTO saga_events_archive SELECT * FROM moved_events), \
    moved AS ( \
        DELETE FROM saga_instances s USING victims v WHERE s.id = v.id RETURNING s.*) \
    INSERT INTO saga_instances_archive SELECT m.*, now() FROM moved m"
);

/// Deletes the [`victims!`] with their history.
const DELETE_SQL: &str = concat!(
    victims!(),
    ", gone_events AS ( \
        DELETE FROM saga_events e USING victims v WHERE e.saga_id = v.id) \
    DELETE FROM saga_instances s USING victims v WHERE s.id = v.id"
);

/// Trims up to `batch` inbox rows older than the inbox retention.
const TRIM_INBOX_SQL: &str = "\
DELETE FROM inbox WHERE ctid = ANY(ARRAY( \
    SELECT ctid FROM inbox WHERE received_at < now() - $1 * interval '1 millisecond' \
    ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))";

fn millis(d: Duration) -> sea_orm::Value {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).into()
}

/// Runs `sql` (with the age `$1` and batch `$2`) in one transaction that
/// holds the job's advisory lock; `None` if another process holds it.
async fn batch(
    db: &DatabaseConnection,
    sql: &str,
    age: Duration,
    size: u32,
) -> Result<Option<u64>, DbErr> {
    let tx = db.begin().await?;
    // No statement timeout for the batch (`set_config(…, true)` is `SET
    // LOCAL`): a running service's pool cuts statements off after
    // SAGAFLOW_QUERY_STATEMENT_TIMEOUT_MS, meant for API requests, and a
    // large SAGAFLOW_MAINTENANCE_BATCH would fail every pass against it.
    // The batch waits on no lock (SKIP LOCKED); only its size bounds it.
    let locked = one(
        &tx,
        "SELECT pg_try_advisory_xact_lock($1) AS l, set_config('statement_timeout', '0', true)",
        [LOCK_KEY.into()],
    )
    .await?
    .and_then(|r| r.try_get::<bool>("", "l").ok())
    .unwrap_or(false);
    if !locked {
        return Ok(None);
    }
    let n = exec(&tx, sql, [millis(age), i64::from(size).into()])
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Some(n))
}

/// Runs `sql` batch after batch until one comes back short (or the
/// per-pass bound is reached); the rows it touched, or `None` if another
/// process holds the jobs' lock.
async fn drain(
    db: &DatabaseConnection,
    sql: &str,
    age: Duration,
    size: u32,
) -> Result<Option<u64>, DbErr> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_PASS {
        let Some(n) = batch(db, sql, age, size).await? else {
            return Ok(None);
        };
        total += n;
        if n < u64::from(size) {
            break;
        }
    }
    Ok(Some(total))
}

/// One pass of both jobs.
pub async fn pass(db: &DatabaseConnection, cfg: &MaintenanceConfig) -> Result<PassReport, DbErr> {
    let skipped = PassReport {
        skipped: true,
        ..PassReport::default()
    };
    let retention = match cfg.mode {
        RetentionMode::Archive => Some(ARCHIVE_SQL),
        RetentionMode::Delete => Some(DELETE_SQL),
        RetentionMode::Off => None,
    };
    let sagas = match retention {
        Some(sql) => match drain(db, sql, cfg.retain_finished, cfg.batch).await? {
            Some(n) => n,
            None => return Ok(skipped),
        },
        None => 0,
    };
    let Some(inbox_rows) = drain(db, TRIM_INBOX_SQL, cfg.inbox_retention, cfg.batch).await? else {
        return Ok(PassReport { sagas, ..skipped });
    };
    Ok(PassReport {
        sagas,
        inbox_rows,
        skipped: false,
    })
}

/// Runs a pass every `cfg.interval` (the first one at once) until
/// `shutdown`. A failed pass is logged and tried again at the next
/// interval: the jobs only ever delete what is safe to delete, so a pass
/// cut short leaves nothing half done.
pub async fn run(db: DatabaseConnection, cfg: MaintenanceConfig, shutdown: CancellationToken) {
    loop {
        match pass(&db, &cfg).await {
            Ok(r) => {
                metrics::counter!("sagaflow_retention_sagas_total").increment(r.sagas);
                metrics::counter!("sagaflow_inbox_trimmed_total").increment(r.inbox_rows);
                if r.sagas > 0 || r.inbox_rows > 0 {
                    tracing::info!(
                        sagas = r.sagas,
                        inbox_rows = r.inbox_rows,
                        mode = ?cfg.mode,
                        "maintenance pass"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "maintenance pass failed; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}
