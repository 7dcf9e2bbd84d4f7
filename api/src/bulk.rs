//! `POST /sagas/bulk`: one operator action over every saga a filter
//! matches. A dry run counts; the real run re-counts under row locks and
//! acts only if the count is the one the operator confirmed, then files
//! every request in one statement, each exactly as a single action would.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use sagaflow_entity::saga_instance;
use sagaflow_entity::StateValues;
use sea_orm::{DatabaseConnection, DbBackend, FromQueryResult, Statement, TransactionTrait};
use uuid::Uuid;

use crate::body::{Bulk, BulkFilter};
use crate::error::{ApiError, ProblemJson};

/// Most sagas one bulk call acts on: a larger set is refused (narrow the
/// filter), so that one call stays one short transaction.
pub const MAX_BULK: i64 = 10_000;

/// How many matching ids a dry run shows.
const SAMPLE: i64 = 20;

/// What a bulk call found and did.
#[derive(Debug, Clone, Object)]
pub struct BulkResult {
    /// Whether this was only a count.
    pub dry_run: bool,
    /// The action.
    pub action: String,
    /// Sagas the filter matches.
    pub matched: i64,
    /// Of those, the ones the action applies to (right state, no request
    /// pending): what a real run acts on. Pass it as `expected_count`.
    pub applicable: i64,
    /// Of the matched ones, those with another request still pending.
    pub pending: i64,
    /// Sagas the action was filed on (0 in a dry run).
    pub filed: i64,
    /// Up to 20 of the applicable sagas (dry run) or of the filed ones,
    /// oldest first.
    pub sample: Vec<Uuid>,
}

/// Responses of `POST /sagas/bulk`.
#[derive(Debug, ApiResponse)]
pub enum BulkResponse {
    /// The count (dry run) or what was filed.
    #[oai(status = 200)]
    Ok(Json<BulkResult>),
    /// The body is not a JSON object.
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// The filter now matches a different number of applicable sagas than
    /// `expected_count`; nothing was done.
    #[oai(status = 409)]
    Conflict(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// A member is invalid, or the filter matches more than 10,000
    /// applicable sagas; `errors` says which.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// The filter's WHERE clause over `$1`..`$6`; `$7` is the states the
/// action applies to.
const WHERE: &str = "($1::text IS NULL OR state = $1) \
    AND ($2::text IS NULL OR saga_type = $2) \
    AND ($3::int IS NULL OR current_step = $3) \
    AND ($4::text IS NULL OR strpos(lower(last_error), lower($4)) > 0) \
    AND ($5::timestamptz IS NULL OR created_at >= $5) \
    AND ($6::timestamptz IS NULL OR created_at < $6)";

fn values(f: &BulkFilter, allowed: Vec<String>) -> Vec<sea_orm::Value> {
    vec![
        f.state.map(|s| s.as_str()).into(),
        f.saga_type.clone().into(),
        f.step.into(),
        f.error_contains.clone().into(),
        f.created_after.into(),
        f.created_before.into(),
        allowed.into(),
    ]
}

#[derive(Debug, FromQueryResult)]
struct Counts {
    matched: i64,
    applicable: i64,
    pending: i64,
}

#[derive(Debug, FromQueryResult)]
struct Id {
    id: Uuid,
}

/// A saga the action applies to: in a state it is allowed in (`$7`), with
/// no request pending.
const APPLICABLE: &str = "state = ANY($7) AND operator_request IS NULL";

/// The sagas the filter matches and the action applies to, in the order
/// and with the lock `tail` says.
async fn applicable_ids(
    tx: &sea_orm::DatabaseTransaction,
    filter: &BulkFilter,
    allowed: Vec<String>,
    tail: &str,
) -> Result<Vec<Uuid>, ApiError> {
    Ok(Id::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("SELECT id FROM saga_instances WHERE {WHERE} AND {APPLICABLE} {tail}"),
        values(filter, allowed),
    ))
    .all(tx)
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect())
}

/// Runs `bulk` against `db`.
pub async fn run(db: &DatabaseConnection, bulk: Bulk) -> Result<BulkResult, ApiError> {
    let pg = DbBackend::Postgres;
    let allowed: Vec<String> = bulk
        .request
        .allowed_in()
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    let tx = db.begin().await?;
    let counts = Counts::find_by_statement(Statement::from_sql_and_values(
        pg,
        format!(
            "SELECT count(*)::bigint AS matched, \
                    count(*) FILTER (WHERE {APPLICABLE})::bigint AS applicable, \
                    count(*) FILTER (WHERE operator_request IS NOT NULL)::bigint AS pending \
             FROM saga_instances WHERE {WHERE}"
        ),
        values(&bulk.filter, allowed.clone()),
    ))
    .one(&tx)
    .await?
    .unwrap_or(Counts {
        matched: 0,
        applicable: 0,
        pending: 0,
    });
    let mut result = BulkResult {
        dry_run: bulk.dry_run,
        action: bulk.request.as_str().to_owned(),
        matched: counts.matched,
        applicable: counts.applicable,
        pending: counts.pending,
        filed: 0,
        sample: Vec::new(),
    };
    if bulk.dry_run {
        result.sample = applicable_ids(
            &tx,
            &bulk.filter,
            allowed,
            &format!("ORDER BY created_at, id LIMIT {SAMPLE}"),
        )
        .await?;
        return Ok(result);
    }
    if counts.applicable > MAX_BULK {
        return Err(ApiError::field(
            "filter",
            format!(
                "matches {} sagas the action applies to, more than {MAX_BULK} per call; narrow it (e.g. with created_before)",
                counts.applicable
            ),
        ));
    }
    // Lock what the action applies to, then count again: what the
    // operator confirmed must be what is acted on.
    let ids = applicable_ids(&tx, &bulk.filter, allowed, "ORDER BY id FOR UPDATE").await?;
    let found = i64::try_from(ids.len()).unwrap_or(i64::MAX);
    if Some(found) != bulk.expected_count {
        return Err(ApiError::Conflict(format!(
            "the filter now matches {found} saga(s) the action applies to, not expected_count {}; nothing was done: run a dry run again",
            bulk.expected_count.unwrap_or_default()
        )));
    }
    let mut filed = saga_instance::file_requests(
        &tx,
        &ids,
        bulk.request,
        &bulk.action.reason,
        &bulk.action.actor,
        bulk.resolution,
    )
    .await?;
    tx.commit().await?;
    filed.sort_by_key(|s| (s.created_at, s.id));
    result.filed = i64::try_from(filed.len()).unwrap_or(i64::MAX);
    result.sample = filed
        .iter()
        .take(usize::try_from(SAMPLE).unwrap_or(0))
        .map(|s| s.id)
        .collect();
    Ok(result)
}
