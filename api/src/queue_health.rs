//! Queue health: what `GET /queue-health`, the queue gauges of `/metrics`
//! and `sagaflow doctor` report about the tables that work like queues.
//!
//! sagaflow's hot tables (`saga_instances`, `saga_events`, `outbox`,
//! `inbox`) see many updates and deletes, so they live or die by
//! autovacuum; and autovacuum can only remove a dead row once no open
//! transaction can still see it (the *xmin horizon*). One forgotten
//! `idle in transaction` session therefore bloats every queue table and
//! slows every claim. This module reads the figures that show that early —
//! dead tuples and last (auto)vacuum per table, the oldest open transaction,
//! the outbox backlog, the inbox size and age — and turns them into
//! warnings with advice, by a pure function ([`assess`]) so the rules are
//! unit-tested without a database.
//!
//! Every query is cheap: table sizes are `pg_stat_user_tables` estimates,
//! the outbox (small by design) is counted, and the inbox's oldest row is a
//! `min(received_at)`, one index probe with the `inbox_received_at` index.

use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use crate::error::{ApiError, ProblemJson};
use crate::sagas::Operator;
use crate::ApiTags;

/// The tables whose vacuum health is reported: the ones that churn (the
/// report's query lists the same names in the same order).
pub const TABLES: [&str; 4] = ["saga_instances", "saga_events", "outbox", "inbox"];

/// How long the inbox keeps message ids when not configured otherwise:
/// the worker's trim default (`SAGAFLOW_INBOX_RETENTION_SECS`), i.e.
/// Kafka's default 7-day retention plus a day. The inbox-age warning adds
/// [`INBOX_SLACK`] on top, so a trim job that works never trips it.
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);

/// Grace on top of the inbox retention before an old inbox row counts as
/// "the trim job is not keeping up": the job runs periodically in small
/// batches, so right after a pass rows slightly older than the retention
/// may still be there.
pub const INBOX_SLACK: Duration = Duration::from_secs(24 * 3600);

/// Longest prefix of the oldest transaction's query that is reported (in
/// characters): enough to recognise it, short enough for a log line.
pub const QUERY_PREFIX_CHARS: usize = 120;

/// When a figure becomes a warning.
#[derive(Debug, Clone, PartialEq, Object, serde::Serialize)]
pub struct Thresholds {
    /// An open transaction older than this many seconds holds back vacuum
    /// on every table of the database (warning `xmin_horizon`).
    pub xmin_warn_seconds: u64,
    /// A table whose dead / (live + dead) tuples reach this ratio ...
    pub dead_ratio_warn: f64,
    /// ... and that has at least this many dead tuples (small tables are
    /// cheap to scan however bloated) gets warning `dead_tuples`.
    pub dead_tuples_min: i64,
    /// An outbox row waiting longer than this many seconds means the relay
    /// is not publishing (warning `outbox_backlog`).
    pub outbox_age_warn_seconds: u64,
    /// An inbox row older than this many seconds (the inbox retention plus
    /// a day of slack) means old rows are not trimmed (warning
    /// `inbox_not_trimmed`).
    pub inbox_age_warn_seconds: u64,
}

impl Thresholds {
    /// The defaults, with the inbox warning at `inbox_retention` plus
    /// [`INBOX_SLACK`].
    pub fn with_inbox_retention(inbox_retention: Duration) -> Self {
        Self {
            xmin_warn_seconds: 60,
            dead_ratio_warn: 0.2,
            dead_tuples_min: 10_000,
            outbox_age_warn_seconds: 60,
            inbox_age_warn_seconds: inbox_retention.saturating_add(INBOX_SLACK).as_secs(),
        }
    }
}

impl Default for Thresholds {
    /// xmin horizon 60 s (the held-xmin bench saw claims slow down within
    /// 30 s at full load); dead ratio 0.2 with at least 10,000 dead tuples;
    /// outbox 60 s; inbox [`DEFAULT_INBOX_RETENTION`] (8 days) + 1 day.
    fn default() -> Self {
        Self::with_inbox_retention(DEFAULT_INBOX_RETENTION)
    }
}

/// Vacuum health of one table, from `pg_stat_user_tables` (estimates kept
/// by the statistics system, not counts).
#[derive(Debug, Clone, PartialEq, Object, serde::Serialize)]
pub struct TableHealth {
    /// The table's name.
    pub table: String,
    /// Estimated live rows.
    pub live_tuples: i64,
    /// Estimated dead rows not yet vacuumed away.
    pub dead_tuples: i64,
    /// dead / (live + dead), 0 for an empty table.
    pub dead_ratio: f64,
    /// When autovacuum last finished on it; `null` if never.
    #[oai(nullable)]
    pub last_autovacuum: Option<DateTime<Utc>>,
    /// When a manual `VACUUM` last finished on it; `null` if never.
    #[oai(nullable)]
    pub last_vacuum: Option<DateTime<Utc>>,
    /// When autovacuum last analyzed it; `null` if never.
    #[oai(nullable)]
    pub last_autoanalyze: Option<DateTime<Utc>>,
}

/// The database's oldest open transaction that holds back the xmin horizon
/// (it has a snapshot or a transaction id).
#[derive(Debug, Clone, PartialEq, Object, serde::Serialize)]
pub struct OldestXact {
    /// Seconds since the transaction began.
    pub age_seconds: f64,
    /// Its backend's process id (for `pg_terminate_backend`).
    pub pid: i32,
    /// The client's `application_name` (empty when the client set none).
    pub application_name: String,
    /// The session's state, e.g. `idle in transaction` or `active`.
    pub state: String,
    /// The first 120 characters of its current or last query.
    pub query: String,
}

/// The outbox: messages committed but not yet published to Kafka.
#[derive(Debug, Clone, PartialEq, Object, serde::Serialize)]
pub struct OutboxHealth {
    /// Rows waiting (counted: the outbox is small when the relay runs).
    pub backlog: i64,
    /// Seconds the oldest row has waited; 0 when empty.
    pub oldest_age_seconds: f64,
    /// Rows Kafka refused for good, set aside in `outbox_dead` by the relay
    /// (`sagaflow outbox list`); their messages were never published.
    pub set_aside: i64,
}

/// The inbox: message ids kept to drop redeliveries, trimmed by age once
/// Kafka can no longer redeliver them.
#[derive(Debug, Clone, PartialEq, Object, serde::Serialize)]
pub struct InboxHealth {
    /// Estimated rows (`pg_stat_user_tables.n_live_tup`).
    pub rows: i64,
    /// Age in seconds of the oldest row; 0 when empty.
    pub oldest_age_seconds: f64,
    /// Whether an index leads with `received_at` (without it, both this
    /// figure and the trim job scan the whole inbox).
    pub received_at_indexed: bool,
}

/// One problem found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Serialize)]
pub struct Warning {
    /// Stable identifier: `xmin_horizon`, `dead_tuples`, `outbox_backlog`,
    /// `outbox_set_aside`, `inbox_not_trimmed` or `inbox_unindexed`.
    pub code: String,
    /// What is wrong, with the figures.
    pub message: String,
    /// One line of advice.
    pub advice: String,
}

/// Everything reported, and the warnings it raises.
#[derive(Debug, Clone, PartialEq, Object, serde::Serialize)]
pub struct QueueHealth {
    /// When the figures were read (the database's clock).
    pub checked_at: DateTime<Utc>,
    /// One entry per table of [`TABLES`], in that order.
    pub tables: Vec<TableHealth>,
    /// The oldest open transaction holding back vacuum; `null` if none.
    #[oai(nullable)]
    pub oldest_xact: Option<OldestXact>,
    /// The outbox backlog.
    pub outbox: OutboxHealth,
    /// The inbox's size and age.
    pub inbox: InboxHealth,
    /// The thresholds the warnings were computed with.
    pub thresholds: Thresholds,
    /// Every threshold crossed; empty when all is well.
    pub warnings: Vec<Warning>,
}

impl QueueHealth {
    /// Whether no threshold is crossed.
    pub fn is_healthy(&self) -> bool {
        self.warnings.is_empty()
    }

    /// The figures of `table`, if it is one of [`TABLES`].
    pub fn table(&self, table: &str) -> Option<&TableHealth> {
        self.tables.iter().find(|t| t.table == table)
    }
}

const TABLES_SQL: &str = "\
SELECT t.name AS table_name,
       COALESCE(s.n_live_tup, 0)::bigint AS live,
       COALESCE(s.n_dead_tup, 0)::bigint AS dead,
       CASE WHEN COALESCE(s.n_live_tup + s.n_dead_tup, 0) = 0 THEN 0::float8
            ELSE s.n_dead_tup::float8 / (s.n_live_tup + s.n_dead_tup) END AS ratio,
       s.last_autovacuum, s.last_vacuum, s.last_autoanalyze
FROM (VALUES (1, 'saga_instances'), (2, 'saga_events'), (3, 'outbox'), (4, 'inbox')) AS t(ord, name)
LEFT JOIN pg_stat_user_tables s ON s.relid = to_regclass(t.name)
ORDER BY t.ord";

/// Only this database's client sessions: on PostgreSQL 14+ a transaction
/// in another database does not hold back this one's user tables, and
/// autovacuum workers' snapshots are ignored by vacuum.
const OLDEST_XACT_SQL: &str = "\
SELECT pid, COALESCE(application_name, '') AS app, COALESCE(state, '') AS state,
       left(COALESCE(query, ''), $1) AS query,
       extract(epoch FROM now() - xact_start)::float8 AS age
FROM pg_stat_activity
WHERE datname = current_database()
  AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
  AND xact_start IS NOT NULL
  AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
ORDER BY xact_start
LIMIT 1";

const OUTBOX_SQL: &str = "\
SELECT count(*)::bigint AS n,
       COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age,
       (SELECT count(*) FROM outbox_dead)::bigint AS set_aside,
       now() AS checked_at
FROM outbox";

const INBOX_SQL: &str = "\
SELECT COALESCE(extract(epoch FROM now() - min(received_at)), 0)::float8 AS age,
       EXISTS (SELECT 1 FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = 'inbox'::regclass AND a.attname = 'received_at') AS indexed
FROM inbox";

/// Reads the figures from `db` and computes their warnings against
/// `thresholds`.
pub async fn queue_health<C: ConnectionTrait>(
    db: &C,
    thresholds: &Thresholds,
) -> Result<QueueHealth, DbErr> {
    let pg = DbBackend::Postgres;
    let rows = db.query_all(Statement::from_string(pg, TABLES_SQL)).await?;
    let mut tables = Vec::with_capacity(rows.len());
    for r in rows {
        let stamp = |col: &str| -> Result<Option<DateTime<Utc>>, DbErr> {
            Ok(r.try_get::<Option<DateTime<chrono::FixedOffset>>>("", col)?
                .map(|t| t.with_timezone(&Utc)))
        };
        tables.push(TableHealth {
            table: r.try_get("", "table_name")?,
            live_tuples: r.try_get("", "live")?,
            dead_tuples: r.try_get("", "dead")?,
            dead_ratio: r.try_get("", "ratio")?,
            last_autovacuum: stamp("last_autovacuum")?,
            last_vacuum: stamp("last_vacuum")?,
            last_autoanalyze: stamp("last_autoanalyze")?,
        });
    }

    let prefix = i32::try_from(QUERY_PREFIX_CHARS).unwrap_or(i32::MAX);
    let oldest_xact = db
        .query_one(Statement::from_sql_and_values(
            pg,
            OLDEST_XACT_SQL,
            [prefix.into()],
        ))
        .await?
        .map(|r| -> Result<OldestXact, DbErr> {
            Ok(OldestXact {
                age_seconds: r.try_get("", "age")?,
                pid: r.try_get("", "pid")?,
                application_name: r.try_get("", "app")?,
                state: r.try_get("", "state")?,
                query: r.try_get("", "query")?,
            })
        })
        .transpose()?;

    let outbox_row = db
        .query_one(Statement::from_string(pg, OUTBOX_SQL))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the outbox aggregate returned no row".to_owned()))?;
    let outbox = OutboxHealth {
        backlog: outbox_row.try_get("", "n")?,
        oldest_age_seconds: outbox_row.try_get("", "age")?,
        set_aside: outbox_row.try_get("", "set_aside")?,
    };
    let checked_at = outbox_row
        .try_get::<DateTime<chrono::FixedOffset>>("", "checked_at")?
        .with_timezone(&Utc);

    let inbox_row = db
        .query_one(Statement::from_string(pg, INBOX_SQL))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the inbox aggregate returned no row".to_owned()))?;
    let inbox = InboxHealth {
        rows: tables
            .iter()
            .find(|t| t.table == "inbox")
            .map_or(0, |t| t.live_tuples),
        oldest_age_seconds: inbox_row.try_get("", "age")?,
        received_at_indexed: inbox_row.try_get("", "indexed")?,
    };

    let mut health = QueueHealth {
        checked_at,
        tables,
        oldest_xact,
        outbox,
        inbox,
        thresholds: thresholds.clone(),
        warnings: Vec::new(),
    };
    health.warnings = assess(&health, thresholds);
    Ok(health)
}

/// An inbox smaller than this is cheap to scan even without an index on
/// `received_at`, so its absence is not worth a warning yet.
const UNINDEXED_INBOX_ROWS: i64 = 10_000;

/// The warnings `health`'s figures raise against `t` (its own `warnings`
/// and `thresholds` are ignored). Pure, so the rules are tested without a
/// database.
pub fn assess(health: &QueueHealth, t: &Thresholds) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |code: &str, message: String, advice: String| {
        out.push(Warning {
            code: code.to_owned(),
            message,
            advice,
        });
    };
    if let Some(x) = &health.oldest_xact {
        if x.age_seconds >= t.xmin_warn_seconds as f64 {
            let app = if x.application_name.is_empty() {
                "no application_name".to_owned()
            } else {
                format!("application_name \"{}\"", x.application_name)
            };
            warn(
                "xmin_horizon",
                format!(
                    "a transaction has been open for {} (pid {}, {app}, {}; threshold {} s): vacuum \
                     cannot remove rows that died after it began, in any table; its query: {}",
                    human_age(x.age_seconds),
                    x.pid,
                    if x.state.is_empty() { "state unknown" } else { &x.state },
                    t.xmin_warn_seconds,
                    x.query
                ),
                if x.state.starts_with("idle in transaction") {
                    format!(
                        "end it (fix the client that leaves it open, or SELECT \
                         pg_terminate_backend({})) and set idle_in_transaction_session_timeout so \
                         it cannot recur",
                        x.pid
                    )
                } else {
                    format!(
                        "a long statement or batch: let it finish or SELECT pg_cancel_backend({}); \
                         bound such work with statement_timeout, or run it in short transactions",
                        x.pid
                    )
                },
            );
        }
    }
    for tb in &health.tables {
        if tb.dead_tuples >= t.dead_tuples_min && tb.dead_ratio >= t.dead_ratio_warn {
            let last = tb
                .last_autovacuum
                .map_or_else(|| "never".to_owned(), |v| v.to_rfc3339());
            warn(
                "dead_tuples",
                format!(
                    "{}: {} dead of {} rows (ratio {:.3}, threshold {}); last autovacuum {last}",
                    tb.table,
                    tb.dead_tuples,
                    tb.live_tuples.saturating_add(tb.dead_tuples),
                    tb.dead_ratio,
                    t.dead_ratio_warn
                ),
                format!(
                    "clear any xmin_horizon warning first (vacuum cannot remove rows an open \
                     transaction may see), then run VACUUM (VERBOSE) {0} and lower \
                     autovacuum_vacuum_scale_factor for {0} if autovacuum lags",
                    tb.table
                ),
            );
        }
    }
    if health.outbox.backlog > 0
        && health.outbox.oldest_age_seconds >= t.outbox_age_warn_seconds as f64
    {
        warn(
            "outbox_backlog",
            format!(
                "{} outbox message(s) waiting, the oldest for {} (threshold {} s)",
                health.outbox.backlog,
                human_age(health.outbox.oldest_age_seconds),
                t.outbox_age_warn_seconds
            ),
            "check that an outbox relay runs (`sagaflow serve` or `sagaflow relay`) and that it \
             reaches Kafka (GET /readyz, its log)"
                .to_owned(),
        );
    }
    if health.outbox.set_aside > 0 {
        warn(
            "outbox_set_aside",
            format!(
                "{} outbox message(s) refused by Kafka for good and set aside, never published",
                health.outbox.set_aside
            ),
            "`sagaflow outbox list` (or `GET /outbox/set-aside`, or the dashboard's queue health) \
             shows each one and Kafka's answer; fix the cause (e.g. raise the topic's \
             max.message.bytes and the producer's message.max.bytes for a message too large), \
             then `sagaflow outbox requeue` (or the dashboard's Requeue button)"
                .to_owned(),
        );
    }
    if health.inbox.oldest_age_seconds >= t.inbox_age_warn_seconds as f64 {
        warn(
            "inbox_not_trimmed",
            format!(
                "the oldest inbox row is {} old, beyond the retention plus slack of {} s; about {} rows",
                human_age(health.inbox.oldest_age_seconds),
                t.inbox_age_warn_seconds,
                health.inbox.rows
            ),
            "check that the worker's inbox trim job runs (its log) and that its retention matches \
             the Kafka topics' retention.ms"
                .to_owned(),
        );
    }
    if !health.inbox.received_at_indexed && health.inbox.rows >= UNINDEXED_INBOX_ROWS {
        warn(
            "inbox_unindexed",
            format!(
                "the inbox has about {} rows and no index on received_at",
                health.inbox.rows
            ),
            "apply the latest migrations (`sagaflow migrate`): they add the inbox_received_at \
             index that trimming and this report rely on"
                .to_owned(),
        );
    }
    out
}

/// `secs` for a person: `4.2 s`, `7m 03s`, `3h 05m`, `2d 04h`. (Integer
/// arithmetic on the whole seconds: no float arithmetic in this crate.)
pub fn human_age(secs: f64) -> String {
    let whole = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match whole {
        0..120 => format!("{secs:.1} s"),
        120..7_200 => format!("{}m {:02}s", whole / 60, whole % 60),
        7_200..172_800 => format!("{}h {:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d {:02}h", whole / 86_400, whole % 86_400 / 3600),
    }
}

fn stamp_text(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

impl QueueHealth {
    /// The report for a person (what `sagaflow doctor` prints): the
    /// figures, then one block per warning with its advice.
    pub fn to_text(&self) -> String {
        let t = &self.thresholds;
        let mut out = format!(
            "queue health at {}\n\n",
            self.checked_at.format("%Y-%m-%d %H:%M:%SZ")
        );
        out.push_str(&format!(
            "{:<16} {:>12} {:>10} {:>6}  {:<21} {:<21} {:<21}\n",
            "table",
            "live (est.)",
            "dead",
            "ratio",
            "last autovacuum",
            "last vacuum",
            "last autoanalyze"
        ));
        for tb in &self.tables {
            out.push_str(&format!(
                "{:<16} {:>12} {:>10} {:>6.3}  {:<21} {:<21} {:<21}\n",
                tb.table,
                tb.live_tuples,
                tb.dead_tuples,
                tb.dead_ratio,
                stamp_text(tb.last_autovacuum),
                stamp_text(tb.last_vacuum),
                stamp_text(tb.last_autoanalyze)
            ));
        }
        out.push('\n');
        match &self.oldest_xact {
            None => out.push_str(&format!(
                "oldest open transaction: none (warn at {} s)\n",
                t.xmin_warn_seconds
            )),
            Some(x) => out.push_str(&format!(
                "oldest open transaction: {} (warn at {} s), pid {}, application_name \"{}\", {}\n    query: {}\n",
                human_age(x.age_seconds),
                t.xmin_warn_seconds,
                x.pid,
                x.application_name,
                x.state,
                x.query.replace('\n', " ")
            )),
        }
        out.push_str(&format!(
            "outbox: {} waiting, oldest {} (warn at {} s); {} set aside\n",
            self.outbox.backlog,
            human_age(self.outbox.oldest_age_seconds),
            t.outbox_age_warn_seconds,
            self.outbox.set_aside
        ));
        out.push_str(&format!(
            "inbox: about {} rows, oldest {} (warn at {}), received_at index: {}\n\n",
            self.inbox.rows,
            human_age(self.inbox.oldest_age_seconds),
            human_age(t.inbox_age_warn_seconds as f64),
            if self.inbox.received_at_indexed {
                "yes"
            } else {
                "MISSING"
            }
        ));
        if self.warnings.is_empty() {
            out.push_str("no warnings\n");
        } else {
            out.push_str(&format!("{} warning(s):\n", self.warnings.len()));
            for w in &self.warnings {
                out.push_str(&format!(
                    "\n✗ [{}] {}\n    advice: {}\n",
                    w.code, w.message, w.advice
                ));
            }
        }
        out
    }
}

/// Responses of `GET /queue-health`.
#[derive(Debug, ApiResponse)]
pub enum QueueHealthResponse {
    /// The figures and their warnings (healthy or not; `warnings` says).
    #[oai(status = 200)]
    Ok(Json<QueueHealth>),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// The `/queue-health` operation.
#[derive(Debug, Clone)]
pub struct QueueHealthApi {
    db: DatabaseConnection,
    operator: Operator,
    thresholds: Thresholds,
}

impl QueueHealthApi {
    /// Reads `db` and warns past `thresholds`; callers need the operator
    /// token `operator` checks (the report names sessions and shows their
    /// queries).
    pub fn new(db: DatabaseConnection, operator: Operator, thresholds: Thresholds) -> Self {
        Self {
            db,
            operator,
            thresholds,
        }
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl QueueHealthApi {
    /// Queue health
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`): dead
    /// tuples and last (auto)vacuum of `saga_instances`, `saga_events`,
    /// `outbox` and `inbox`; the oldest open transaction holding back
    /// vacuum (its age, pid, application_name, state and query); the outbox
    /// backlog; the inbox's size and oldest row; and a warning with advice
    /// for every threshold crossed (same as `sagaflow doctor`).
    #[oai(path = "/queue-health", method = "get", operation_id = "queue_health")]
    async fn queue_health(&self, req: &Request) -> poem::Result<QueueHealthResponse> {
        self.operator.authorize(req)?;
        let health = queue_health(&self.db, &self.thresholds)
            .await
            .map_err(ApiError::from)?;
        Ok(QueueHealthResponse::Ok(Json(health)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, live: i64, dead: i64, ratio: f64) -> TableHealth {
        TableHealth {
            table: name.to_owned(),
            live_tuples: live,
            dead_tuples: dead,
            dead_ratio: ratio,
            last_autovacuum: None,
            last_vacuum: None,
            last_autoanalyze: None,
        }
    }

    fn healthy() -> QueueHealth {
        QueueHealth {
            checked_at: DateTime::<Utc>::UNIX_EPOCH,
            tables: TABLES.iter().map(|t| table(t, 1_000, 10, 0.01)).collect(),
            oldest_xact: Some(OldestXact {
                age_seconds: 0.5,
                pid: 4242,
                application_name: "psql".to_owned(),
                state: "idle in transaction".to_owned(),
                query: "SELECT 1".to_owned(),
            }),
            outbox: OutboxHealth {
                backlog: 3,
                oldest_age_seconds: 0.2,
                set_aside: 0,
            },
            inbox: InboxHealth {
                rows: 1_000,
                oldest_age_seconds: 3_600.0,
                received_at_indexed: true,
            },
            thresholds: Thresholds::default(),
            warnings: Vec::new(),
        }
    }

    fn codes(h: &QueueHealth, t: &Thresholds) -> Vec<String> {
        assess(h, t).into_iter().map(|w| w.code).collect()
    }

    #[test]
    fn the_query_reads_every_table_in_order() {
        let at: Vec<usize> = TABLES
            .iter()
            .map(|t| TABLES_SQL.find(&format!("'{t}'")).expect(t))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let t = Thresholds::default();
        assert_eq!(t.xmin_warn_seconds, 60);
        assert_eq!(t.dead_ratio_warn, 0.2);
        assert_eq!(t.dead_tuples_min, 10_000);
        assert_eq!(t.outbox_age_warn_seconds, 60);
        assert_eq!(t.inbox_age_warn_seconds, 9 * 24 * 3600);
        let short = Thresholds::with_inbox_retention(Duration::from_secs(3600));
        assert_eq!(short.inbox_age_warn_seconds, 25 * 3600);
    }

    #[test]
    fn healthy_figures_raise_nothing() {
        assert!(assess(&healthy(), &Thresholds::default()).is_empty());
        let mut idle = healthy();
        idle.oldest_xact = None;
        idle.outbox = OutboxHealth {
            backlog: 0,
            oldest_age_seconds: 0.0,
            set_aside: 0,
        };
        assert!(assess(&idle, &Thresholds::default()).is_empty());
    }

    #[test]
    fn any_row_set_aside_is_a_warning_that_says_how_to_requeue() {
        let mut h = healthy();
        h.outbox.set_aside = 2;
        let w = assess(&h, &Thresholds::default());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].code, "outbox_set_aside");
        assert!(
            w[0].message.starts_with("2 outbox message(s)"),
            "{}",
            w[0].message
        );
        assert!(
            w[0].advice.contains("sagaflow outbox requeue"),
            "{}",
            w[0].advice
        );
    }

    #[test]
    fn an_old_transaction_is_named_with_its_pid_and_application() {
        let mut h = healthy();
        if let Some(x) = h.oldest_xact.as_mut() {
            x.age_seconds = 60.0;
        }
        let w = assess(&h, &Thresholds::default());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].code, "xmin_horizon");
        assert!(w[0].message.contains("pid 4242"), "{}", w[0].message);
        assert!(w[0].message.contains("\"psql\""), "{}", w[0].message);
        assert!(w[0].message.contains("idle in transaction"));
        assert!(w[0].advice.contains("pg_terminate_backend(4242)"));
        // Just under the threshold: nothing.
        if let Some(x) = h.oldest_xact.as_mut() {
            x.age_seconds = 59.9;
        }
        assert!(codes(&h, &Thresholds::default()).is_empty());
        // A low threshold catches a young one.
        let low = Thresholds {
            xmin_warn_seconds: 0,
            ..Thresholds::default()
        };
        assert_eq!(codes(&h, &low), ["xmin_horizon"]);
    }

    #[test]
    fn dead_tuples_need_both_the_ratio_and_the_count() {
        let t = Thresholds::default();
        let mut h = healthy();
        h.tables[1] = table("saga_events", 1_000, 9_999, 0.909);
        assert!(codes(&h, &t).is_empty(), "too few dead tuples to matter");
        h.tables[1] = table("saga_events", 1_000_000, 50_000, 0.047);
        assert!(codes(&h, &t).is_empty(), "ratio below 0.2");
        h.tables[1] = table("saga_events", 40_000, 10_000, 0.2);
        let w = assess(&h, &t);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].code, "dead_tuples");
        assert!(w[0].message.starts_with("saga_events: 10000 dead of 50000"));
        assert!(w[0].message.contains("last autovacuum never"));
        assert!(w[0].advice.contains("VACUUM (VERBOSE) saga_events"));
    }

    #[test]
    fn a_stale_outbox_warns_but_an_empty_one_does_not() {
        let t = Thresholds::default();
        let mut h = healthy();
        h.outbox.oldest_age_seconds = 60.0;
        assert_eq!(codes(&h, &t), ["outbox_backlog"]);
        h.outbox.backlog = 0;
        assert!(codes(&h, &t).is_empty());
    }

    #[test]
    fn the_inbox_warns_past_retention_and_without_its_index() {
        let t = Thresholds::with_inbox_retention(Duration::from_secs(24 * 3600));
        let mut h = healthy();
        h.inbox.oldest_age_seconds = (2 * 24 * 3600) as f64;
        assert_eq!(codes(&h, &t), ["inbox_not_trimmed"]);
        h.inbox.oldest_age_seconds = 60.0;
        h.inbox.received_at_indexed = false;
        assert!(codes(&h, &t).is_empty(), "a small inbox scans cheaply");
        h.inbox.rows = 10_000;
        assert_eq!(codes(&h, &t), ["inbox_unindexed"]);
    }

    #[test]
    fn every_crossed_threshold_is_reported_in_order() {
        let mut h = healthy();
        if let Some(x) = h.oldest_xact.as_mut() {
            x.age_seconds = 1e6;
        }
        h.tables[0] = table("saga_instances", 10_000, 90_000, 0.9);
        h.tables[2] = table("outbox", 0, 20_000, 1.0);
        h.outbox.oldest_age_seconds = 120.0;
        h.inbox.oldest_age_seconds = 1e7;
        assert_eq!(
            codes(&h, &Thresholds::default()),
            [
                "xmin_horizon",
                "dead_tuples",
                "dead_tuples",
                "outbox_backlog",
                "inbox_not_trimmed"
            ]
        );
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(human_age(4.25), "4.2 s");
        assert_eq!(human_age(-1.0), "-1.0 s");
        assert_eq!(human_age(423.0), "7m 03s");
        assert_eq!(human_age(11_100.0), "3h 05m");
        assert_eq!(human_age(187_200.0), "2d 04h");
        assert_eq!(human_age(f64::NAN), "NaN s");
    }

    #[test]
    fn the_text_report_lists_figures_and_advice() {
        let mut h = healthy();
        let text = h.to_text();
        assert!(text.contains("no warnings"), "{text}");
        let busy = QueueHealth {
            oldest_xact: Some(OldestXact {
                age_seconds: 400.0,
                state: "active".to_owned(),
                ..h.oldest_xact.clone().expect("a transaction")
            }),
            ..healthy()
        };
        let w = assess(&busy, &Thresholds::default());
        assert!(w[0].advice.contains("pg_cancel_backend(4242)"), "{w:?}");
        assert!(text.contains("saga_instances"), "{text}");
        assert!(text.contains("application_name \"psql\""), "{text}");
        h.oldest_xact = None;
        h.outbox.oldest_age_seconds = 61.0;
        h.warnings = assess(&h, &h.thresholds);
        let text = h.to_text();
        assert!(text.contains("oldest open transaction: none"), "{text}");
        assert!(text.contains("1 warning(s):"), "{text}");
        assert!(text.contains("✗ [outbox_backlog]"), "{text}");
        assert!(
            text.contains("    advice: check that an outbox relay runs"),
            "{text}"
        );
    }
}
