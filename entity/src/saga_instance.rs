//! `saga_instances`: one row per saga, the state machine's only home.

use sea_orm::entity::prelude::*;
use sea_orm::{DbBackend, Statement};

use serde::{Deserialize, Serialize};

use crate::StateValues;

/// A saga instance's state. The transition function in `sagaflow-workflows`
/// is the only code that decides a new state; the worker and the reply
/// consumer write what it decides.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaState {
    /// A forward step is due at `next_run_at`. Entered on insert (API), on a
    /// step's success, and when a retry is scheduled; a worker claims it.
    #[sea_orm(string_value = "RUNNING")]
    Running,
    /// A forward command is out; `deadline` is set and `next_run_at` equals
    /// it. Left by the reply consumer, or by a worker when the deadline passes.
    #[sea_orm(string_value = "WAITING")]
    Waiting,
    /// Undoing completed steps in reverse order. With `deadline` set a
    /// compensation command is out; without, the next compensation is due at
    /// `next_run_at`.
    #[sea_orm(string_value = "COMPENSATING")]
    Compensating,
    /// Every step succeeded. Terminal.
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    /// A step failed and every completed step was compensated. Terminal.
    #[sea_orm(string_value = "COMPENSATED")]
    Compensated,
    /// Compensation itself gave up after its retries. Waits for an operator;
    /// terminal until a manual retry.
    #[sea_orm(string_value = "FAILED")]
    Failed,
    /// An operator cancelled the saga and its compensation finished. Terminal.
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    /// An operator closed a FAILED saga by hand, asserting what became of
    /// its money (`resolution`). Terminal.
    #[sea_orm(string_value = "RESOLVED")]
    Resolved,
}

impl SagaState {
    /// States a worker may claim: the partial index on `next_run_at` covers
    /// exactly these.
    pub const ACTIVE: [SagaState; 3] = [Self::Running, Self::Waiting, Self::Compensating];

    /// Whether the saga is still being driven by the engine.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

impl StateValues for SagaState {
    const ALL: &'static [Self] = &[
        Self::Running,
        Self::Waiting,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Failed,
        Self::Cancelled,
        Self::Resolved,
    ];
    fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Waiting => "WAITING",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Compensated => "COMPENSATED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Resolved => "RESOLVED",
        }
    }
}

/// What an operator asked of a saga; applied by the next worker that
/// claims it, before anything else happens to the saga.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperatorRequest {
    /// Compensate what was done, then end CANCELLED.
    #[sea_orm(string_value = "CANCEL")]
    Cancel,
    /// Run the current step (or compensation) again now, attempts reset.
    #[sea_orm(string_value = "RETRY")]
    Retry,
    /// Take a FAILED saga forward again, from the step whose compensation
    /// gave up, in a new epoch.
    #[sea_orm(string_value = "FORCE_FORWARD")]
    ForceForward,
    /// Close a FAILED saga as fixed outside the system (see [`Resolution`]).
    #[sea_orm(string_value = "RESOLVE")]
    Resolve,
}

impl StateValues for OperatorRequest {
    const ALL: &'static [Self] = &[Self::Cancel, Self::Retry, Self::ForceForward, Self::Resolve];
    fn as_str(&self) -> &'static str {
        match self {
            Self::Cancel => "CANCEL",
            Self::Retry => "RETRY",
            Self::ForceForward => "FORCE_FORWARD",
            Self::Resolve => "RESOLVE",
        }
    }
}

/// What an operator who marks a FAILED saga resolved asserts about its
/// money. `sagaflow verify` holds the ledger to it: the saga's own ledger
/// entries must net to what the assertion implies.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// No money stays moved by the saga: its ledger entries net to zero.
    /// The saga ends as if compensated (an order becomes FAILED).
    #[sea_orm(string_value = "NONE")]
    None,
    /// The saga's money movement stands, and its business outcome with it:
    /// the ledger shows the full movement and the saga ends as if completed
    /// (an order becomes PAID).
    #[sea_orm(string_value = "APPLIED")]
    Applied,
    /// The ledger keeps the full movement, but the operator settled it
    /// outside sagaflow (a bank transfer back, say): the saga ends as if
    /// compensated, and verify expects the movement to stay in the ledger.
    #[sea_orm(string_value = "SETTLED_OUTSIDE")]
    SettledOutside,
}

impl StateValues for Resolution {
    const ALL: &'static [Self] = &[Self::None, Self::Applied, Self::SettledOutside];
    fn as_str(&self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Applied => "APPLIED",
            Self::SettledOutside => "SETTLED_OUTSIDE",
        }
    }
}

impl OperatorRequest {
    /// The states in which an operator may file this request: a cancel
    /// while the saga is active; a retry of a saga that is FAILED (its
    /// compensation gave up) or stuck waiting (WAITING, COMPENSATING); a
    /// force forward or a resolve only of a FAILED saga.
    pub fn allowed_in(self) -> &'static [SagaState] {
        match self {
            Self::Cancel => &[
                SagaState::Running,
                SagaState::Waiting,
                SagaState::Compensating,
            ],
            Self::Retry => &[
                SagaState::Failed,
                SagaState::Waiting,
                SagaState::Compensating,
            ],
            Self::ForceForward | Self::Resolve => &[SagaState::Failed],
        }
    }
}

/// How filing an operator request went.
#[derive(Debug, Clone, PartialEq)]
pub enum Filed {
    /// Filed; the saga is due now and the next worker applies it.
    Filed(Box<Model>),
    /// No such saga.
    NotFound,
    /// The saga is in a state the request does not apply to.
    WrongState(SagaState),
    /// Another request is pending and not applied yet.
    Pending(OperatorRequest),
}

/// Files `request` on saga `id` with `reason`, by `actor` (and, for a
/// resolve, the operator's `resolution`), and makes the saga due now, in
/// one statement guarded by its state, plus an `OPERATOR_REQUEST` history
/// row. The version bump makes a worker that holds the saga drop its work,
/// so a request racing a worker cannot be lost or half-applied: the next
/// claim applies it before anything else.
pub async fn file_request<C: ConnectionTrait>(
    conn: &C,
    id: Uuid,
    request: OperatorRequest,
    reason: &str,
    actor: &str,
    resolution: Option<Resolution>,
) -> Result<Filed, DbErr> {
    let filed = file_requests(conn, &[id], request, reason, actor, resolution).await?;
    if let Some(saga) = filed.into_iter().next() {
        return Ok(Filed::Filed(Box::new(saga)));
    }
    Ok(match Entity::find_by_id(id).one(conn).await? {
        None => Filed::NotFound,
        Some(Model {
            operator_request: Some(pending),
            ..
        }) => Filed::Pending(pending),
        Some(saga) => Filed::WrongState(saga.state),
    })
}

/// [`file_request`] on each of `ids` at once, in one statement: returns the
/// sagas it was filed on; those in a state the request does not apply to,
/// or with a request pending, are left alone.
pub async fn file_requests<C: ConnectionTrait>(
    conn: &C,
    ids: &[Uuid],
    request: OperatorRequest,
    reason: &str,
    actor: &str,
    resolution: Option<Resolution>,
) -> Result<Vec<Model>, DbErr> {
    let allowed: Vec<String> = request
        .allowed_in()
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    let detail = match resolution {
        Some(r) => {
            serde_json::json!({ "request": request.as_str(), "reason": reason, "resolution": r.as_str() })
        }
        None => serde_json::json!({ "request": request.as_str(), "reason": reason }),
    };
    Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH filed AS ( \
                 UPDATE saga_instances SET operator_request = $2, operator_reason = $3, next_run_at = now(), \
                        resolution = $5, version = version + 1, updated_at = now() \
                 WHERE id = ANY($1) AND state = ANY($4) AND operator_request IS NULL \
                 RETURNING *), \
             history AS ( \
                 INSERT INTO saga_events (saga_id, kind, step, attempt, from_state, to_state, detail, actor) \
                 SELECT id, 'OPERATOR_REQUEST', current_step, attempt, state, state, $6, $7 FROM filed) \
             SELECT * FROM filed",
            [
                ids.to_vec().into(),
                request.as_str().into(),
                reason.into(),
                allowed.into(),
                resolution.map(|r| r.as_str()).into(),
                detail.into(),
                actor.into(),
            ],
        ))
        .all(conn)
        .await
}

/// The inserts that start sagas, as two CTEs over `src(id, data,
/// detail)`: each saga (`$1` type, `$2` version, `$3` state, its `data`),
/// due at the database's `now()` like every timestamp the claim loop
/// compares, and its `CREATED` history row (its `detail`, `$4` actor). A
/// statement that starts sagas only if something else happened first
/// (orders were inserted, say) puts that first and selects the new sagas
/// from it as `src`.
#[macro_export]
macro_rules! start_saga_ctes {
    () => {
        "new_saga AS ( \
            INSERT INTO saga_instances (id, saga_type, definition_version, state, current_step, attempt, next_run_at, data) \
            SELECT id, $1, $2, $3, 0, 0, now(), data FROM src RETURNING id), \
         new_saga_event AS ( \
            INSERT INTO saga_events (saga_id, kind, step, attempt, from_state, to_state, detail, actor) \
            SELECT s.id, 'CREATED', 0, 0, NULL, $3, s.detail, $4 FROM src s JOIN new_saga USING (id)) "
    };
}

/// The parameters `$1`–`$4` of [`start_saga_ctes!`].
pub fn start_saga_values((saga_type, version): (&str, i32), actor: &str) -> Vec<sea_orm::Value> {
    vec![
        saga_type.into(),
        version.into(),
        SagaState::Running.as_str().into(),
        actor.into(),
    ]
}

/// Inserts a new saga instance of `saga_type` at `version`, its first step
/// due now, with `data` as its input, and its `CREATED` history row with
/// `detail`, written by `actor`, in one statement. Run it in the
/// transaction that also writes whatever the saga is about (the order,
/// say), so that neither exists without the other.
pub async fn insert_new<C: ConnectionTrait>(
    conn: &C,
    id: Uuid,
    saga: (&str, i32),
    data: Json,
    detail: Json,
    actor: &str,
) -> Result<(), DbErr> {
    let mut values = start_saga_values(saga, actor);
    values.extend([id.into(), data.into(), detail.into()]);
    conn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        concat!(
            "WITH src AS (SELECT $5::uuid AS id, $6::jsonb AS data, $7::jsonb AS detail), ",
            start_saga_ctes!(),
            "SELECT id FROM new_saga"
        ),
        values,
    ))
    .await?;
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_instances")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub saga_type: String,
    pub definition_version: i32,
    pub state: SagaState,
    pub current_step: i32,
    pub attempt: i32,
    /// `attempt` at the last operator retry; the policy counts from it.
    pub attempt_base: i32,
    pub cancel_requested: bool,
    /// Force-forward count: the fencing token on every command (see the
    /// state machine's `Instance::epoch`).
    pub epoch: i32,
    pub next_run_at: Option<DateTimeWithTimeZone>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTimeWithTimeZone>,
    pub deadline: Option<DateTimeWithTimeZone>,
    #[sea_orm(column_type = "JsonBinary")]
    pub data: Json,
    pub last_error: Option<String>,
    /// Why the saga compensates (see the state machine's `failure`).
    pub failure_reason: Option<String>,
    pub operator_request: Option<OperatorRequest>,
    pub operator_reason: Option<String>,
    /// The money effect an operator asserted when resolving the saga.
    pub resolution: Option<Resolution>,
    pub version: i64,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::saga_event::Entity")]
    SagaEvent,
}

impl Related<super::saga_event::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::SagaEvent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
