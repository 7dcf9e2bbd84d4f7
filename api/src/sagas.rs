//! The operator's view of sagas: list with filters and keyset pagination,
//! one saga with its history, counts, and the two operator actions (retry,
//! cancel), which need the admin token.
//!
//! The actions only file a request on the saga's row (see
//! `sagaflow_entity::saga_instance::file_request`); the next worker that
//! claims the saga applies it before anything else, so an action racing a
//! worker can neither be lost nor half-applied.

use chrono::{DateTime, TimeZone, Utc};
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_entity::saga_instance::{self, Filed, OperatorRequest, Resolution};
use sagaflow_entity::wake::{Announcer, Channel};
use sagaflow_entity::{saga_event, SagaState, StateValues};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult, Statement,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::body::{Action, Bulk, JsonBody, Resolve};
use crate::bulk::BulkResponse;
use crate::error::{ApiError, FieldError, ProblemJson};
use crate::params::{CursorDoc, DateTimeDoc, LimitDoc, Raw, SortDoc, StateDoc, TextDoc, UuidDoc};
use crate::{utc, ApiTags};

/// Largest page of `GET /sagas`.
pub const MAX_LIMIT: u32 = LimitDoc::MAX;
/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;

/// A saga as the list and the detail page show it.
#[derive(Debug, Clone, Object)]
pub struct SagaView {
    /// The saga's id.
    pub id: Uuid,
    /// Its definition's name, e.g. `order_payment`.
    #[oai(rename = "type")]
    pub saga_type: String,
    /// The definition version it runs under (kept for its whole life).
    pub version: i32,
    /// RUNNING, WAITING, COMPENSATING, COMPLETED, COMPENSATED, FAILED,
    /// CANCELLED or RESOLVED.
    pub state: String,
    /// Forward: the step being run; compensating: the step being undone.
    pub current_step: i32,
    /// That step's name in the saga's definition (e.g. `debit`), when the
    /// definition is known to this server.
    #[oai(nullable)]
    pub step_name: Option<String>,
    /// Attempts made at that step in the current direction.
    pub attempt: i32,
    /// When a worker looks at it next (null when finished).
    #[oai(nullable)]
    pub next_run_at: Option<DateTime<Utc>>,
    /// While a command is out: when it counts as timed out.
    #[oai(nullable)]
    pub deadline: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// Why the saga compensates (or compensated).
    #[oai(nullable)]
    pub failure_reason: Option<String>,
    /// An operator's request that no worker has applied yet.
    #[oai(nullable)]
    pub operator_request: Option<String>,
    /// The reason given with that request.
    #[oai(nullable)]
    pub operator_reason: Option<String>,
    /// For a RESOLVED saga (or one with a resolve pending): the money
    /// effect the operator asserted (NONE, APPLIED, SETTLED_OUTSIDE).
    #[oai(nullable)]
    pub resolution: Option<String>,
    /// For a FAILED saga: how long it has waited for an operator, in
    /// seconds (since its compensation gave up).
    #[oai(nullable)]
    pub waited_seconds: Option<i64>,
    /// The order it is about, if any.
    #[oai(nullable)]
    pub order_no: Option<String>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<saga_instance::Model> for SagaView {
    fn from(s: saga_instance::Model) -> Self {
        Self {
            id: s.id,
            order_no: s
                .data
                .get("order_no")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            saga_type: s.saga_type,
            version: s.definition_version,
            state: s.state.as_str().to_owned(),
            current_step: s.current_step,
            step_name: None,
            attempt: s.attempt,
            next_run_at: s.next_run_at.map(utc),
            deadline: s.deadline.map(utc),
            last_error: s.last_error,
            failure_reason: s.failure_reason,
            operator_request: s.operator_request.map(|r| r.as_str().to_owned()),
            operator_reason: s.operator_reason,
            resolution: s.resolution.map(|r| r.as_str().to_owned()),
            // A FAILED saga's row is written only when it fails and when an
            // operator acts on it, so its last update is when it started
            // waiting.
            waited_seconds: (s.state == SagaState::Failed)
                .then(|| (Utc::now() - utc(s.updated_at)).num_seconds().max(0)),
            created_at: utc(s.created_at),
            updated_at: utc(s.updated_at),
        }
    }
}

/// One page of `GET /sagas`.
#[derive(Debug, Clone, Object)]
pub struct SagaPage {
    /// The sagas, in the order asked for.
    pub items: Vec<SagaView>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// One history row.
#[derive(Debug, Clone, Object)]
pub struct SagaEventView {
    /// Increasing with time.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened (CREATED, COMMAND_SENT, REPLY_RECEIVED, TIMED_OUT,
    /// RETRY_SCHEDULED, COMPENSATION_STARTED, OPERATOR_REQUEST, ...).
    pub kind: String,
    /// The step concerned.
    #[oai(nullable)]
    pub step: Option<i32>,
    /// The attempt concerned.
    #[oai(nullable)]
    pub attempt: Option<i32>,
    /// State before.
    #[oai(nullable)]
    pub from_state: Option<String>,
    /// State after.
    #[oai(nullable)]
    pub to_state: Option<String>,
    /// Who: `api`, a worker id, a consumer, or the operator.
    #[oai(nullable)]
    pub actor: Option<String>,
    /// Details (reasons, deadlines, outcomes).
    pub detail: serde_json::Value,
}

/// A saga with its input and full history.
#[derive(Debug, Clone, Object)]
pub struct SagaDetail {
    /// The saga.
    #[oai(flatten)]
    pub saga: SagaView,
    /// Its input.
    pub data: serde_json::Value,
    /// The worker holding it right now, if any.
    #[oai(nullable)]
    pub lease_owner: Option<String>,
    /// Until when that worker holds it.
    #[oai(nullable)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Its history, oldest first.
    pub events: Vec<SagaEventView>,
    /// When the retention job moved it (finished) to the archive tables;
    /// null while it is in the hot table.
    #[oai(nullable)]
    pub archived_at: Option<DateTime<Utc>>,
}

/// Counts of one saga type by state.
#[derive(Debug, Clone, Object)]
pub struct TypeCounts {
    /// The saga type.
    #[oai(rename = "type")]
    pub saga_type: String,
    /// Count per state (every state present, zeros included).
    pub by_state: std::collections::BTreeMap<String, i64>,
}

/// Sagas that finished in one minute.
#[derive(Debug, Clone, Object)]
pub struct MinuteCounts {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Sagas that completed.
    pub completed: i64,
    /// Sagas that compensated.
    pub compensated: i64,
    /// Sagas whose compensation gave up.
    pub failed: i64,
    /// Sagas cancelled by an operator.
    pub cancelled: i64,
}

/// `GET /sagas/stats`.
#[derive(Debug, Clone, Object)]
pub struct SagaStats {
    /// Count per state over all types (every state present).
    pub by_state: std::collections::BTreeMap<String, i64>,
    /// Count per type and state.
    pub by_type: Vec<TypeCounts>,
    /// The last 60 minutes, oldest first, one entry per minute.
    pub last_hour: Vec<MinuteCounts>,
}

/// Responses of `GET /sagas`.
#[derive(Debug, ApiResponse)]
pub enum ListResponse {
    /// A page of sagas.
    #[oai(status = 200)]
    Ok(Json<SagaPage>),
    /// A filter, `limit` or `cursor` is invalid; `errors` names it.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `GET /sagas/{id}`.
#[derive(Debug, ApiResponse)]
pub enum DetailResponse {
    /// The saga and its history.
    #[oai(status = 200)]
    Ok(Json<Box<SagaDetail>>),
    /// There is no such saga.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The id is not a UUID.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of `GET /sagas/stats`.
#[derive(Debug, ApiResponse)]
pub enum StatsResponse {
    /// The counts.
    #[oai(status = 200)]
    Ok(Json<SagaStats>),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Responses of the operator actions.
#[derive(Debug, ApiResponse)]
pub enum ActionResponse {
    /// The request is filed and the saga due now; a worker applies it
    /// within a moment (watch `state` and the history).
    #[oai(status = 202)]
    Accepted(Json<SagaView>),
    /// The body is not a JSON object.
    #[oai(status = 400)]
    BadRequest(ProblemJson),
    /// No or a wrong `Authorization: Bearer` token.
    #[oai(status = 401)]
    Unauthorized(ProblemJson),
    /// There is no such saga.
    #[oai(status = 404)]
    NotFound(ProblemJson),
    /// The saga is in a state the action does not apply to, or another
    /// request is pending; `detail` says which.
    #[oai(status = 409)]
    Conflict(ProblemJson),
    /// The body is larger than the server's limit.
    #[oai(status = 413)]
    PayloadTooLarge(ProblemJson),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(ProblemJson),
    /// `reason` (or the id) is invalid; `errors` names it.
    #[oai(status = 422)]
    Unprocessable(ProblemJson),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

/// Checks the admin token of operator calls.
#[derive(Clone)]
pub struct Operator {
    /// SHA-256 of the admin token; `None` lets operator calls through (only
    /// with the explicit insecure development flag).
    token_digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("token", &self.token_digest.map(|_| "[redacted]"))
            .finish()
    }
}

impl Operator {
    /// Operator calls need `admin_token` (`None`: open, insecure mode).
    pub fn new(admin_token: Option<&str>) -> Self {
        Self {
            token_digest: admin_token.map(digest),
        }
    }

    /// Checks `Authorization: Bearer <token>`. Both sides are hashed first,
    /// so the constant-time comparison does not leak the token's length.
    pub fn authorize(&self, req: &Request) -> Result<(), ApiError> {
        let Some(expected) = self.token_digest else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "operator calls need the header `Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`"
                        .to_owned(),
                )
            })?;
        if bool::from(digest(given.trim()).ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "the bearer token is not the admin token".to_owned(),
            ))
        }
    }
}

/// The `/sagas` operations.
#[derive(Debug, Clone)]
pub struct SagasApi {
    db: DatabaseConnection,
    operator: Operator,
    registry: std::sync::Arc<sagaflow_workflows::Registry>,
    announcer: Announcer,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn parse_uuid(raw: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::field(name, "must be a UUID"))
}

fn parse_time(raw: Option<&str>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|r| {
        DateTime::parse_from_rfc3339(r)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::field(name, "must be an RFC 3339 time, e.g. 2026-11-25T08:00:00Z")
            })
    })
    .transpose()
}

/// The cursor is the last item's `created_at` (µs since the epoch) and id:
/// the page after it holds what sorts strictly below (newest first) or
/// above (oldest first) that pair, so no item
/// is skipped or repeated, and sagas created meanwhile (which sort above)
/// do not shift the pages.
fn encode_cursor(s: &saga_instance::Model) -> String {
    format!("{}_{}", s.created_at.timestamp_micros(), s.id.simple())
}

fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::field("cursor", "is not a cursor this API returned");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    // Exactly what the documented pattern allows (`i64::from_str` would
    // also take a `+`, `Uuid::parse_str` hyphens and braces).
    let digits = micros.strip_prefix('-').unwrap_or(micros);
    let well_formed = (1..=16).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(bad());
    }
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = Utc.timestamp_micros(micros).single().ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

/// The sagas about order `$1`: its payment saga through the order row, and
/// any other saga whose input names it (refunds, an application's own
/// sagas) through the partial index `saga_instances_order_no`. Payment
/// sagas, the hot ones, and sagas naming no order stay out of that index,
/// so their writes do not maintain it.
const ORDER_SAGAS_SQL: &str = "\
SELECT saga_id AS id FROM orders WHERE order_no = $1 \
UNION ALL SELECT id FROM saga_instances WHERE saga_type <> 'order_payment' AND data->>'order_no' = $1";

/// `GET /sagas`, newest first; the cursor pages strictly below.
const LIST_NEWEST_SQL: &str = "SELECT * FROM saga_instances \
     WHERE ($1::text IS NULL OR state = $1) \
       AND ($2::text IS NULL OR saga_type = $2) \
       AND ($3::uuid[] IS NULL OR id = ANY($3)) \
       AND ($4::timestamptz IS NULL OR created_at >= $4) \
       AND ($5::timestamptz IS NULL OR created_at < $5) \
       AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7)) \
     ORDER BY created_at DESC, id DESC LIMIT $8";

/// `GET /sagas`, oldest first; the cursor pages strictly above.
const LIST_OLDEST_SQL: &str = "SELECT * FROM saga_instances \
     WHERE ($1::text IS NULL OR state = $1) \
       AND ($2::text IS NULL OR saga_type = $2) \
       AND ($3::uuid[] IS NULL OR id = ANY($3)) \
       AND ($4::timestamptz IS NULL OR created_at >= $4) \
       AND ($5::timestamptz IS NULL OR created_at < $5) \
       AND ($6::timestamptz IS NULL OR (created_at, id) > ($6, $7)) \
     ORDER BY created_at, id LIMIT $8";

/// The value of `r`, or `None` with its field errors added to `errors`.
fn keep<T>(r: Result<T, ApiError>, errors: &mut Vec<FieldError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(ApiError::Validation(mut e)) => {
            errors.append(&mut e);
            None
        }
        Err(other) => {
            errors.push(FieldError::new("query", other.to_string()));
            None
        }
    }
}

fn all_states() -> std::collections::BTreeMap<String, i64> {
    SagaState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect()
}

#[derive(Debug, FromQueryResult)]
struct CountRow {
    saga_type: String,
    state: String,
    n: i64,
}

#[derive(Debug, FromQueryResult)]
struct MinuteRow {
    minute: DateTime<Utc>,
    kind: String,
    n: i64,
}

impl SagasApi {
    /// Operations on `db`; operator calls are checked by `operator`; step
    /// names come from `registry`.
    pub fn new(
        db: DatabaseConnection,
        operator: Operator,
        registry: std::sync::Arc<sagaflow_workflows::Registry>,
    ) -> Self {
        Self {
            db,
            operator,
            registry,
            announcer: Announcer::default(),
        }
    }

    /// Announces the requests it files (each makes its saga due) to
    /// `announcer`, so that a worker applies them at once.
    pub fn announcing(mut self, announcer: Announcer) -> Self {
        self.announcer = announcer;
        self
    }

    /// The view of `s`, with its step's name.
    fn view(&self, s: saga_instance::Model) -> SagaView {
        let name = self
            .registry
            .get(&s.saga_type, s.definition_version)
            .and_then(|d| d.step(u32::try_from(s.current_step).ok()?))
            .map(|step| step.name.to_owned());
        SagaView {
            step_name: name,
            ..s.into()
        }
    }

    async fn act(
        &self,
        req: &Request,
        id: &str,
        request: OperatorRequest,
        body: Action,
        resolution: Option<Resolution>,
    ) -> Result<ActionResponse, ApiError> {
        self.operator.authorize(req)?;
        let id = parse_uuid(id, "id")?;
        let what = match request {
            OperatorRequest::Cancel => "cancel",
            OperatorRequest::Retry => "retry",
            OperatorRequest::ForceForward => "force forward",
            OperatorRequest::Resolve => "resolve",
        };
        let filed = saga_instance::file_request(
            &self.db,
            id,
            request,
            &body.reason,
            &body.actor,
            resolution,
        )
        .await?;
        match filed {
            Filed::Filed(saga) => {
                self.announcer.announce(Channel::Saga);
                Ok(ActionResponse::Accepted(Json(self.view(*saga))))
            }
            Filed::NotFound if archived(&self.db, id).await? => Err(ApiError::Conflict(format!(
                "saga {id} is finished and archived; {what} applies only to sagas in the hot table"
            ))),
            Filed::NotFound => Err(ApiError::NotFound(format!("there is no saga {id}"))),
            Filed::Pending(p) => Err(ApiError::Conflict(format!(
                "saga {id} already has a {} request that no worker has applied yet; wait a moment",
                p.as_str()
            ))),
            Filed::WrongState(state) => {
                let allowed: Vec<&str> = request.allowed_in().iter().map(|s| s.as_str()).collect();
                let hint = match (request, state) {
                    (OperatorRequest::Cancel, SagaState::Failed) => {
                        "; its compensation gave up: retry it, force it forward or resolve it instead"
                    }
                    (OperatorRequest::Retry, SagaState::Running) => "; it is already due to run",
                    (
                        OperatorRequest::ForceForward | OperatorRequest::Resolve,
                        SagaState::Waiting | SagaState::Compensating,
                    ) => "; to run its current step again, retry it",
                    _ => "",
                };
                Err(ApiError::Conflict(format!(
                    "saga {id} is {}; {what} applies only to {}{hint}",
                    state.as_str(),
                    allowed.join(", ")
                )))
            }
        }
    }
}

/// Whether saga `id` is in the archive tables.
async fn archived<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<bool, ApiError> {
    Ok(db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM saga_instances_archive WHERE id = $1",
            [id.into()],
        ))
        .await?
        .is_some())
}

#[OpenApi(tag = "ApiTags::Sagas")]
impl SagasApi {
    /// List sagas
    ///
    /// Newest first (oldest first for `state=FAILED`, the needs-attention
    /// queue, unless `order` says otherwise), filtered by any of `state`,
    /// `type`, `order_no`, `created_after` and `created_before`. Finished
    /// sagas the retention job archived are not listed (`GET /sagas/{id}`
    /// still finds them). Pages are keyset-paginated:
    /// pass the returned `next_cursor` as `cursor` for the next page; no
    /// saga is skipped or repeated across pages, however many are created
    /// meanwhile.
    #[oai(path = "/sagas", method = "get", operation_id = "listSagas")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        /// Only sagas in this state.
        state: Query<Option<Raw<StateDoc>>>,
        /// Only sagas of this type (e.g. `order_payment`).
        #[oai(name = "type")]
        saga_type: Query<Option<Raw<TextDoc>>>,
        /// Only sagas about this order: its payment saga, its refunds, and
        /// any other saga whose input names it.
        order_no: Query<Option<Raw<TextDoc>>>,
        /// Only sagas created at or after this RFC 3339 time.
        created_after: Query<Option<Raw<DateTimeDoc>>>,
        /// Only sagas created before this RFC 3339 time.
        created_before: Query<Option<Raw<DateTimeDoc>>>,
        /// Page size, 1-500 (default 50).
        limit: Query<Option<Raw<LimitDoc>>>,
        /// `next_cursor` of the previous page (pass the same `order`).
        cursor: Query<Option<Raw<CursorDoc>>>,
        /// `newest` or `oldest` first, by creation; default `newest`, or
        /// `oldest` when `state` is FAILED.
        order: Query<Option<Raw<SortDoc>>>,
    ) -> poem::Result<ListResponse> {
        let mut errors = Vec::new();
        // A typed parameter sent empty is refused like any other bad value;
        // an empty text filter (`?type=`) is no filter.
        let text = |q: Option<Raw<TextDoc>>| Raw::given(q).filter(|s| !s.is_empty());
        let (created_after, created_before, limit, cursor) = (
            Raw::given(created_after.0),
            Raw::given(created_before.0),
            Raw::given(limit.0),
            Raw::given(cursor.0),
        );
        let state = Raw::given(state.0);
        let oldest_first = match Raw::given(order.0).as_deref() {
            None => state.as_deref() == Some(SagaState::Failed.as_str()),
            Some("oldest") => true,
            Some("newest") => false,
            Some(_) => {
                errors.push(FieldError::new(
                    "order",
                    format!("must be one of {}", SortDoc::VALUES.join(", ")),
                ));
                false
            }
        };
        let saga_type = text(saga_type.0);
        let order_no = text(order_no.0);
        for (name, value) in [("type", &saga_type), ("order_no", &order_no)] {
            if let Some(Err(ApiError::Validation(mut e))) =
                value.as_deref().map(|v| crate::body::refuse_nul(name, v))
            {
                errors.append(&mut e);
            }
        }
        if let Some(s) = &state {
            if !SagaState::ALL.iter().any(|v| v.as_str() == s) {
                let states: Vec<&str> = SagaState::ALL.iter().map(|v| v.as_str()).collect();
                errors.push(FieldError::new(
                    "state",
                    format!("must be one of {}", states.join(", ")),
                ));
            }
        }
        let after = keep(
            parse_time(created_after.as_deref(), "created_after"),
            &mut errors,
        );
        let before = keep(
            parse_time(created_before.as_deref(), "created_before"),
            &mut errors,
        );
        let limit = keep(
            match limit.as_deref() {
                None => Ok(DEFAULT_LIMIT),
                Some(raw) => raw
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::field(
                            "limit",
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    }),
            },
            &mut errors,
        );
        let cursor = keep(
            cursor.as_deref().map(decode_cursor).transpose(),
            &mut errors,
        );
        let (Some(after), Some(before), Some(limit), Some(cursor)) = (after, before, limit, cursor)
        else {
            return Err(ApiError::Validation(errors).into());
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors).into());
        }
        let of_order: Option<Vec<Uuid>> = match &order_no {
            None => None,
            Some(no) => Some(
                self.db
                    .query_all(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        ORDER_SAGAS_SQL,
                        [no.clone().into()],
                    ))
                    .await
                    .map_err(ApiError::from)?
                    .iter()
                    .filter_map(|r| r.try_get::<Uuid>("", "id").ok())
                    .collect(),
            ),
        };
        let rows = saga_instance::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                if oldest_first {
                    LIST_OLDEST_SQL
                } else {
                    LIST_NEWEST_SQL
                },
                [
                    state.into(),
                    saga_type.into(),
                    of_order.into(),
                    after.into(),
                    before.into(),
                    cursor.map(|c| c.0).into(),
                    cursor.map(|c| c.1).into(),
                    i64::from(limit + 1).into(),
                ],
            ))
            .all(&self.db)
            .await
            .map_err(ApiError::from)?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        let mut rows = rows;
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = if more {
            rows.last().map(encode_cursor)
        } else {
            None
        };
        Ok(ListResponse::Ok(Json(SagaPage {
            items: rows.into_iter().map(|r| self.view(r)).collect(),
            next_cursor,
        })))
    }

    /// Saga counts
    ///
    /// Sagas by state, by type and state, and how many completed,
    /// compensated, failed and were cancelled in each of the last 60
    /// minutes.
    #[oai(path = "/sagas/stats", method = "get", operation_id = "sagaStats")]
    async fn stats(&self) -> poem::Result<StatsResponse> {
        let pg = DbBackend::Postgres;
        let counts = CountRow::find_by_statement(Statement::from_string(
            pg,
            "SELECT saga_type, state, count(*)::bigint AS n FROM saga_instances GROUP BY 1, 2 ORDER BY 1, 2",
        ))
        .all(&self.db)
        .await
        .map_err(ApiError::from)?;
        let mut by_state = all_states();
        let mut by_type: Vec<TypeCounts> = Vec::new();
        for c in counts {
            *by_state.entry(c.state.clone()).or_default() += c.n;
            match by_type.iter_mut().find(|t| t.saga_type == c.saga_type) {
                Some(t) => *t.by_state.entry(c.state).or_default() += c.n,
                None => {
                    let mut states = all_states();
                    states.insert(c.state, c.n);
                    by_type.push(TypeCounts {
                        saga_type: c.saga_type,
                        by_state: states,
                    });
                }
            }
        }
        let minutes = MinuteRow::find_by_statement(Statement::from_string(
            pg,
            "SELECT date_trunc('minute', created_at) AS minute, kind, count(*)::bigint AS n \
             FROM saga_events \
             WHERE kind IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED') \
               AND created_at >= date_trunc('minute', now()) - interval '59 minutes' \
             GROUP BY 1, 2",
        ))
        .all(&self.db)
        .await
        .map_err(ApiError::from)?;
        let now = self
            .db
            .query_one(Statement::from_string(
                pg,
                "SELECT date_trunc('minute', now()) AS minute",
            ))
            .await
            .map_err(ApiError::from)?
            .and_then(|r| r.try_get::<DateTime<Utc>>("", "minute").ok())
            .unwrap_or_else(Utc::now);
        let last_hour = (0..60)
            .rev()
            .map(|back| {
                let minute = now - chrono::Duration::minutes(back);
                let n = |kind: &str| {
                    minutes
                        .iter()
                        .filter(|m| m.minute == minute && m.kind == kind)
                        .map(|m| m.n)
                        .sum()
                };
                MinuteCounts {
                    minute,
                    completed: n("COMPLETED"),
                    compensated: n("COMPENSATED"),
                    failed: n("FAILED"),
                    cancelled: n("CANCELLED"),
                }
            })
            .collect();
        Ok(StatsResponse::Ok(Json(SagaStats {
            by_state,
            by_type,
            last_hour,
        })))
    }

    /// Read a saga
    ///
    /// The saga, its input and its whole history, oldest event first.
    #[oai(path = "/sagas/:id", method = "get", operation_id = "getSaga")]
    async fn get(
        &self,
        /// The saga's id.
        id: Path<Raw<UuidDoc>>,
    ) -> poem::Result<DetailResponse> {
        let id = parse_uuid(id.0.as_str(), "id")?;
        // The archive has the hot table's columns in the same order, plus
        // archived_at; a saga is in exactly one of the two.
        let Some(row) = self
            .db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT s.*, NULL::timestamptz AS archived_at FROM saga_instances s WHERE s.id = $1 \
                 UNION ALL SELECT a.* FROM saga_instances_archive a WHERE a.id = $1 LIMIT 1",
                [id.into()],
            ))
            .await
            .map_err(ApiError::from)?
        else {
            return Err(ApiError::NotFound(format!("there is no saga {id}")).into());
        };
        let saga = saga_instance::Model::from_query_result(&row, "").map_err(ApiError::from)?;
        let archived_at: Option<DateTime<Utc>> =
            row.try_get("", "archived_at").map_err(ApiError::from)?;
        let events = saga_event::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                // Both tables: the retention job may move the saga between
                // this statement and the one above.
                "SELECT * FROM saga_events WHERE saga_id = $1 \
                 UNION ALL SELECT * FROM saga_events_archive WHERE saga_id = $1 ORDER BY id",
                [id.into()],
            ))
            .all(&self.db)
            .await
            .map_err(ApiError::from)?;
        Ok(DetailResponse::Ok(Json(Box::new(SagaDetail {
            data: saga.data.clone(),
            lease_owner: saga.lease_owner.clone(),
            lease_expires_at: saga.lease_expires_at.map(utc),
            archived_at,
            saga: self.view(saga),
            events: events
                .into_iter()
                .map(|e| SagaEventView {
                    id: e.id,
                    at: utc(e.created_at),
                    kind: e.kind,
                    step: e.step,
                    attempt: e.attempt,
                    from_state: e.from_state,
                    to_state: e.to_state,
                    actor: e.actor,
                    detail: e.detail,
                })
                .collect(),
        }))))
    }

    /// Retry a saga
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). A
    /// FAILED saga (its compensation gave up) resumes compensating; a saga
    /// stuck in WAITING or COMPENSATING runs its current step again now.
    /// Either way the step's attempts start over. Recorded in the history
    /// with the reason. To take a FAILED saga forward instead, see
    /// `force-forward`.
    #[oai(path = "/sagas/:id/retry", method = "post", operation_id = "retrySaga")]
    async fn retry(
        &self,
        req: &Request,
        /// The saga's id.
        id: Path<Raw<UuidDoc>>,
        body: JsonBody<Action>,
    ) -> poem::Result<ActionResponse> {
        Ok(self
            .act(req, id.0.as_str(), OperatorRequest::Retry, body.0, None)
            .await?)
    }

    /// Force a FAILED saga forward
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). A
    /// FAILED saga (its compensation gave up) runs forward again from the
    /// step whose compensation gave up, with fresh attempts, and goes on to
    /// COMPLETED (an order becomes PAID) if the participants agree. It is
    /// safe whatever happened meanwhile: a participant refuses the forward
    /// command if it had undone the step after all (the saga then
    /// compensates again), and refuses any compensation sent before the
    /// force. Recorded in the history with the reason. Only FAILED sagas;
    /// anything else is a 409.
    #[oai(
        path = "/sagas/:id/force-forward",
        method = "post",
        operation_id = "forceForwardSaga"
    )]
    async fn force_forward(
        &self,
        req: &Request,
        /// The saga's id.
        id: Path<Raw<UuidDoc>>,
        body: JsonBody<Action>,
    ) -> poem::Result<ActionResponse> {
        Ok(self
            .act(
                req,
                id.0.as_str(),
                OperatorRequest::ForceForward,
                body.0,
                None,
            )
            .await?)
    }

    /// Cancel a saga
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). An
    /// active saga (RUNNING, WAITING, COMPENSATING) undoes what it did
    /// (e.g. refunds a debit) and ends CANCELLED; its order becomes
    /// CANCELLED. Recorded in the history with the reason.
    #[oai(
        path = "/sagas/:id/cancel",
        method = "post",
        operation_id = "cancelSaga"
    )]
    async fn cancel(
        &self,
        req: &Request,
        /// The saga's id.
        id: Path<Raw<UuidDoc>>,
        body: JsonBody<Action>,
    ) -> poem::Result<ActionResponse> {
        Ok(self
            .act(req, id.0.as_str(), OperatorRequest::Cancel, body.0, None)
            .await?)
    }

    /// Mark a FAILED saga resolved
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). For
    /// a FAILED saga the operator fixed outside the system: it ends
    /// RESOLVED, recording the reason, the actor and the money effect the
    /// operator asserts (`resolution`). Its order follows the assertion
    /// (`APPLIED`: PAID, or REFUNDED for a refund saga; otherwise FAILED,
    /// or the refund abandoned). `sagaflow verify` then checks the saga's
    /// ledger entries against the assertion. Applied by the next worker,
    /// like every operator request; only FAILED sagas, anything else is a
    /// 409.
    #[oai(
        path = "/sagas/:id/resolve",
        method = "post",
        operation_id = "resolveSaga"
    )]
    async fn resolve(
        &self,
        req: &Request,
        /// The saga's id.
        id: Path<Raw<UuidDoc>>,
        body: JsonBody<Resolve>,
    ) -> poem::Result<ActionResponse> {
        let Resolve { action, resolution } = body.0;
        Ok(self
            .act(
                req,
                id.0.as_str(),
                OperatorRequest::Resolve,
                action,
                Some(resolution),
            )
            .await?)
    }

    /// Act on many sagas
    ///
    /// Operator call (`Authorization: Bearer <SAGAFLOW_ADMIN_TOKEN>`). Files
    /// one action (`RETRY`, `FORCE_FORWARD`, `RESOLVE`, `CANCEL`) on every
    /// saga the filter matches and the action applies to, as if each were
    /// sent alone. By default a dry run: it only counts (`applicable`) and
    /// shows a sample. The real run (`dry_run: false`) must pass that count
    /// as `expected_count`; if the filter then matches a different number,
    /// nothing is done and the answer is 409, so an operator never acts on
    /// sagas they have not counted. At most 10,000 sagas per call.
    #[oai(path = "/sagas/bulk", method = "post", operation_id = "bulkSagaAction")]
    async fn bulk(&self, req: &Request, body: JsonBody<Bulk>) -> poem::Result<BulkResponse> {
        self.operator.authorize(req)?;
        let result = crate::bulk::run(&self.db, body.0).await?;
        if result.filed > 0 {
            self.announcer.announce(Channel::Saga);
        }
        Ok(BulkResponse::Ok(Json(result)))
    }
}
