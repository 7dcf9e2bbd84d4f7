//! The money and state invariants, checked against the database: what
//! `sagaflow verify` prints and `GET /verify` answers. Each check is one
//! query that returns the violating account, order or saga, so a clean
//! report is an empty list, and a dirty one says exactly where to look.

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use crate::error::{ApiError, ProblemJson};
use crate::sagas::Operator;
use crate::ApiTags;

/// How long a saga may be overdue, with no live lease, before it counts as
/// stuck; and how old an outbox row may be before it counts as undrained.
pub const STUCK_AFTER_SECONDS: i64 = 300;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Serialize)]
pub struct Violation {
    /// Which invariant (see [`CHECKS`]).
    pub check: String,
    /// What breaks it: `account 42`, `order ORD-…`, `saga …`, `outbox …`.
    pub subject: String,
    /// The figures that disagree.
    pub detail: String,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Serialize)]
pub struct Report {
    /// How many invariants were checked.
    pub checks: u32,
    /// Every violation found; empty when the system is consistent.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The invariants: a name and a query returning `(subject, detail)` rows,
/// one per violation.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "balance equals deposits - debits + refunds - refund voids, and is not negative",
        "SELECT 'account ' || a.user_id, 'balance ' || a.balance || ', ledger ' || COALESCE(SUM(CASE WHEN l.kind IN ('DEBIT', 'REFUND_VOID') THEN -l.amount ELSE l.amount END), 0) \
         FROM accounts a LEFT JOIN ledger_entries l ON l.user_id = a.user_id \
         GROUP BY a.user_id, a.balance \
         HAVING a.balance <> COALESCE(SUM(CASE WHEN l.kind IN ('DEBIT', 'REFUND_VOID') THEN -l.amount ELSE l.amount END), 0) OR a.balance < 0",
    ),
    (
        "a PAID order has exactly one debit of its amount and no refund of it",
        "SELECT 'order ' || o.order_no, 'debits ' || count(*) FILTER (WHERE l.kind = 'DEBIT') || ', refunds ' || count(*) FILTER (WHERE l.kind = 'REFUND') \
         FROM orders o LEFT JOIN ledger_entries l ON l.saga_id = o.saga_id \
         WHERE o.status = 'PAID' GROUP BY o.order_no, o.amount \
         HAVING count(*) FILTER (WHERE l.kind = 'DEBIT' AND l.amount = o.amount) <> 1 \
             OR count(*) FILTER (WHERE l.kind = 'DEBIT') <> 1 \
             OR count(*) FILTER (WHERE l.kind = 'REFUND') <> 0",
    ),
    (
        "a REFUNDED order has one debit and a refund saga that credited its amount back",
        "SELECT 'order ' || o.order_no, 'debits ' || (SELECT count(*) FROM ledger_entries l WHERE l.saga_id = o.saga_id AND l.kind = 'DEBIT') \
                || ', credited back ' || COALESCE((SELECT SUM(CASE l.kind WHEN 'REFUND' THEN l.amount ELSE -l.amount END) FROM ledger_entries l WHERE l.saga_id = o.refund_saga_id), 0) \
         FROM orders o WHERE o.status = 'REFUNDED' AND ( \
             (SELECT count(*) FROM ledger_entries l WHERE l.saga_id = o.saga_id AND l.kind = 'DEBIT') <> 1 \
          OR COALESCE((SELECT SUM(CASE l.kind WHEN 'REFUND' THEN l.amount ELSE -l.amount END) FROM ledger_entries l WHERE l.saga_id = o.refund_saga_id), 0) <> o.amount)",
    ),
    (
        "a FAILED or CANCELLED order nets to zero (unless an operator resolved it as settled outside)",
        "SELECT 'order ' || o.order_no, o.status || ' with net ' || SUM(CASE l.kind WHEN 'DEBIT' THEN l.amount ELSE -l.amount END) \
         FROM orders o JOIN ledger_entries l ON l.saga_id = o.saga_id \
         WHERE o.status IN ('FAILED', 'CANCELLED') \
           AND NOT EXISTS (SELECT 1 FROM saga_instances s WHERE s.id = o.saga_id AND s.resolution = 'SETTLED_OUTSIDE') \
           AND NOT EXISTS (SELECT 1 FROM saga_instances_archive s WHERE s.id = o.saga_id AND s.resolution = 'SETTLED_OUTSIDE') \
         GROUP BY o.order_no, o.status \
         HAVING SUM(CASE l.kind WHEN 'DEBIT' THEN l.amount ELSE -l.amount END) <> 0",
    ),
    (
        "a RESOLVED saga's ledger entries net to what the operator asserted",
        "SELECT 'saga ' || s.id, 'resolved as ' || s.resolution || ' but its ledger entries net to ' || COALESCE(n.net, 0) \
                || ' (expected ' || CASE s.resolution WHEN 'NONE' THEN 0 ELSE e.movement END || ')' \
         FROM (SELECT id, saga_type, data, state, resolution FROM saga_instances \
               UNION ALL SELECT id, saga_type, data, state, resolution FROM saga_instances_archive) s \
         CROSS JOIN LATERAL (SELECT COALESCE((s.data->>'amount')::numeric, 0) \
                                    * CASE s.saga_type WHEN 'order_refund' THEN -1 ELSE 1 END AS movement) e \
         LEFT JOIN LATERAL (SELECT SUM(CASE WHEN l.kind IN ('DEBIT', 'REFUND_VOID') THEN l.amount ELSE -l.amount END) AS net \
                            FROM ledger_entries l WHERE l.saga_id = s.id) n ON true \
         WHERE s.state = 'RESOLVED' \
           AND COALESCE(n.net, 0) <> CASE s.resolution WHEN 'NONE' THEN 0 ELSE e.movement END",
    ),
    (
        "a finished payment saga and its order agree",
        "SELECT 'saga ' || s.id, s.state || ' but order ' || o.order_no || ' is ' || o.status \
         FROM saga_instances s JOIN orders o ON o.saga_id = s.id \
         WHERE s.saga_type = 'order_payment' AND ( \
              ((s.state = 'COMPLETED' OR (s.state = 'RESOLVED' AND s.resolution = 'APPLIED')) AND o.status NOT IN ('PAID', 'REFUNDED')) \
           OR (s.state = 'RESOLVED' AND s.resolution <> 'APPLIED' AND o.status <> 'FAILED') \
           OR (s.state = 'COMPENSATED' AND o.status <> 'FAILED') \
           OR (s.state = 'CANCELLED' AND o.status <> 'CANCELLED') \
           OR (s.state IN ('RUNNING', 'WAITING', 'COMPENSATING', 'FAILED') AND o.status <> 'PENDING'))",
    ),
    (
        "a finished refund saga and its order agree",
        "SELECT 'saga ' || s.id, s.state || ' but order ' || o.order_no || ' is ' || o.status \
         FROM saga_instances s JOIN orders o ON o.order_no = s.data->>'order_no' \
         WHERE s.saga_type = 'order_refund' AND ( \
              ((s.state = 'COMPLETED' OR (s.state = 'RESOLVED' AND s.resolution = 'APPLIED')) AND (o.status <> 'REFUNDED' OR o.refund_saga_id IS DISTINCT FROM s.id)) \
           OR ((s.state IN ('COMPENSATED', 'CANCELLED') OR (s.state = 'RESOLVED' AND s.resolution <> 'APPLIED')) AND o.refund_saga_id = s.id))",
    ),
    (
        "every order has its payment saga (in the hot table or the archive)",
        "SELECT 'order ' || o.order_no, 'saga ' || o.saga_id || ' is missing' \
         FROM orders o WHERE NOT EXISTS (SELECT 1 FROM saga_instances s WHERE s.id = o.saga_id) \
                         AND NOT EXISTS (SELECT 1 FROM saga_instances_archive a WHERE a.id = o.saga_id)",
    ),
    (
        "every history row belongs to a saga (the history has no foreign key, for speed)",
        "SELECT 'saga ' || e.saga_id, count(*) || ' history rows without their saga' \
         FROM saga_events e WHERE NOT EXISTS (SELECT 1 FROM saga_instances s WHERE s.id = e.saga_id) \
         GROUP BY e.saga_id",
    ),
    (
        "no active saga is overdue without a live lease (stuck)",
        "SELECT 'saga ' || id, state || ' due since ' || next_run_at \
         FROM saga_instances \
         WHERE next_run_at < now() - make_interval(secs => $1) \
           AND (lease_expires_at IS NULL OR lease_expires_at < now())",
    ),
    (
        "the outbox drains (no message waits to be published)",
        "SELECT 'outbox ' || message_id, 'topic ' || topic || ', waiting since ' || created_at \
         FROM outbox WHERE created_at < now() - make_interval(secs => $1)",
    ),
    (
        "no outbox message was set aside unpublished (Kafka refused it for good)",
        "SELECT 'outbox ' || message_id, 'topic ' || topic || ', set aside at ' || failed_at || ': ' || error \
         FROM outbox_dead",
    ),
];

/// Runs every check.
pub async fn verify<C: ConnectionTrait>(db: &C) -> Result<Report, DbErr> {
    let mut violations = Vec::new();
    for (check, sql) in CHECKS {
        let values: Vec<sea_orm::Value> = if sql.contains("$1") {
            vec![(STUCK_AFTER_SECONDS as f64).into()]
        } else {
            Vec::new()
        };
        let rows = db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                *sql,
                values,
            ))
            .await?;
        for r in rows {
            violations.push(Violation {
                check: (*check).to_owned(),
                subject: r.try_get_by_index::<Option<String>>(0)?.unwrap_or_default(),
                detail: r.try_get_by_index::<Option<String>>(1)?.unwrap_or_default(),
            });
        }
    }
    Ok(Report {
        checks: u32::try_from(CHECKS.len()).unwrap_or(u32::MAX),
        violations,
    })
}

impl Report {
    /// The report for a person: one line per violation, grouped by check.
    pub fn to_text(&self) -> String {
        if self.is_clean() {
            return format!("verify: all {} invariants hold\n", self.checks);
        }
        let mut out = format!(
            "verify: {} violation(s) of {} invariants\n",
            self.violations.len(),
            self.checks
        );
        let mut last = "";
        for v in &self.violations {
            if v.check != last {
                out.push_str(&format!("\n✗ {}\n", v.check));
                last = &v.check;
            }
            out.push_str(&format!("    {}: {}\n", v.subject, v.detail));
        }
        out
    }
}

/// Responses of `GET /verify`.
#[derive(Debug, ApiResponse)]
pub enum VerifyResponse {
    /// The report (clean or not; `violations` says which).
    #[oai(status = 200)]
    Ok(Json<Report>),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// The `/verify` operation.
#[derive(Debug, Clone)]
pub struct VerifyApi {
    db: DatabaseConnection,
    operator: Operator,
}

impl VerifyApi {
    /// Checks `db`; callers need the operator token `operator` checks.
    pub fn new(db: DatabaseConnection, operator: Operator) -> Self {
        Self { db, operator }
    }
}

#[OpenApi(tag = "ApiTags::Sagas")]
impl VerifyApi {
    /// Verify the invariants
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`): every
    /// money and state invariant, checked against the database now. An
    /// empty `violations` means consistent; otherwise each entry names the
    /// account, order or saga and the figures that disagree.
    #[oai(path = "/verify", method = "get", operation_id = "verify")]
    async fn verify(&self, req: &Request) -> poem::Result<VerifyResponse> {
        self.operator.authorize(req)?;
        let report = verify(&self.db).await.map_err(ApiError::from)?;
        Ok(VerifyResponse::Ok(Json(report)))
    }
}
