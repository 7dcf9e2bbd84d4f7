//! Places orders: the orders of concurrent `POST /orders` requests go to
//! Postgres together, in one statement and one commit.
//!
//! Each request hands its order to a lane (`SAGAFLOW_ORDER_LANES`, one by
//! default) and waits for its answer. A lane takes whatever orders are waiting when it is free (never
//! waiting to fill a batch, so a lone order goes at once) and inserts them
//! with their sagas and history rows in one statement. Under load the
//! batches grow by themselves, and the per-statement and per-commit work
//! (a round trip, the executor's set-up, every CHECK constraint's
//! expression, the WAL flush) is paid once per batch instead of once per
//! order. Every order is still durable before its request is answered.
//!
//! The statement also starts each order's payment saga: it runs the saga's
//! first transition ([`sagaflow_workflows::start`]) and writes the saga
//! already WAITING for its debit, with the debit command in the outbox,
//! exactly as a worker claiming the new saga would have written it. No claim
//! transaction stands between an order and its debit, and the relay, not a
//! claim loop, is the one woken. (A definition whose first round runs a
//! local action or hook would be written due now and left to the workers.)
//!
//! An order the batch statement did not insert (its user has no account,
//! or its idempotency key placed an order already) is placed again on its
//! own, which says precisely why; so is every order of a batch whose
//! statement failed.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sagaflow_entity::wake::Channel;
use sagaflow_entity::{column, order, SagaState, StateValues};
use sagaflow_workflows::machine::{Instance, Transition};
use sagaflow_workflows::messages::{traceparent, CommandEnvelope, OutboxMessage, Topics};
use sagaflow_workflows::money::format_amount;
use sagaflow_workflows::order_payment::{self, OrderData};
use sagaflow_workflows::{Registry, SagaDefinition};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, SqlErr, Statement};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::error::ApiError;
use crate::orders::NewOrder;

/// Most orders one statement inserts.
const MAX_BATCH: usize = 64;

/// The result of trying to place an order.
#[derive(Debug)]
pub enum Placed {
    /// Inserted, with its saga.
    New(order::Model),
    /// The key already placed an order.
    Existing(order::Model),
}

/// An order to place: the order, its request's idempotency key and the
/// request's fingerprint (both or neither).
#[derive(Debug, Clone)]
pub struct OrderRequest {
    /// The order.
    pub new: NewOrder,
    /// The request's `Idempotency-Key`.
    pub key: Option<String>,
    /// [`NewOrder::fingerprint`], when there is a key.
    pub fingerprint: Option<String>,
}

/// What [`place_all`] answers for one order. `Ok(None)`: try again with
/// fresh ids (a generated id collided, or the key's order vanished).
pub type PlaceResult = Result<Option<Placed>, ApiError>;

/// An order waiting in a lane, and where its answer goes.
struct Pending {
    request: OrderRequest,
    answer: oneshot::Sender<PlaceResult>,
}

/// How placed orders' payment sagas start: the definition the workers run
/// (with the deployment's tuning, which sets the first command's deadline)
/// and the topic the first command goes to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SagaStart {
    registry: Arc<Registry>,
    topics: Topics,
    wakes: Channel,
}

impl SagaStart {
    /// Starts sagas as `registry` defines them, sending to `topics`.
    pub fn new(registry: Arc<Registry>, topics: Topics) -> Self {
        let mut start = Self {
            registry,
            topics,
            wakes: Channel::Saga,
        };
        if start.first(Utc::now()).is_some() {
            start.wakes = Channel::Outbox;
        }
        start
    }

    fn definition(&self) -> Option<&SagaDefinition> {
        let version = i32::try_from(order_payment::VERSION).ok()?;
        self.registry.get(order_payment::SAGA_TYPE, version)
    }

    /// The first transition of sagas created at `now`, if the placing
    /// statement can make it (see the module docs).
    fn first(&self, now: DateTime<Utc>) -> Option<Transition> {
        self.definition()
            .and_then(|def| sagaflow_workflows::start(def, now))
    }

    /// Who must hear of a placed order: the relay, when the saga's first
    /// command is already in the outbox; the claim loops otherwise.
    pub fn wakes(&self) -> Channel {
        self.wakes
    }
}

/// Places orders in batches (see the module docs). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Placer {
    db: DatabaseConnection,
    start: SagaStart,
    /// Statements in flight at once.
    lane_count: usize,
    lanes: Arc<OnceLock<mpsc::Sender<Pending>>>,
}

impl std::fmt::Debug for Placer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placer").finish_non_exhaustive()
    }
}

impl Placer {
    pub(crate) fn new(db: DatabaseConnection, start: SagaStart, lanes: usize) -> Self {
        Self {
            db,
            start,
            lane_count: lanes.max(1),
            lanes: Arc::new(OnceLock::new()),
        }
    }

    /// See [`SagaStart::wakes`].
    pub(crate) fn wakes(&self) -> Channel {
        self.start.wakes()
    }

    /// Places `new` (with its idempotency key and the request's
    /// fingerprint, if any). `Ok(None)`: try again with fresh ids.
    pub(crate) async fn place(&self, request: OrderRequest) -> PlaceResult {
        // The lanes start with the first order, on the runtime serving it.
        let lanes = self
            .lanes
            .get_or_init(|| spawn_lanes(self.db.clone(), self.start.clone(), self.lane_count));
        let (answer, answered) = oneshot::channel();
        lanes
            .send(Pending { request, answer })
            .await
            .map_err(|_| ApiError::Internal("the order placer stopped".into()))?;
        answered
            .await
            .map_err(|_| ApiError::Internal("the order placer dropped an order".into()))?
    }
}

/// Starts the lanes; they end once every [`Placer`] clone is gone.
fn spawn_lanes(db: DatabaseConnection, start: SagaStart, lanes: usize) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel::<Pending>(MAX_BATCH * lanes);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..lanes {
        let (db, start, rx) = (db.clone(), start.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                let batch = {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else {
                        return;
                    };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    batch
                };
                let (requests, answers): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|p| (p.request, p.answer)).unzip();
                for (answer, result) in answers
                    .into_iter()
                    .zip(place_all(&db, &start, requests).await)
                {
                    // The request may have gone away (client disconnected);
                    // its order stands either way.
                    answer.send(result).ok();
                }
            }
        });
    }
    tx
}

/// Places `requests` together, as the lanes do with the orders of
/// concurrent requests: one statement inserts every order it can, with its
/// saga started as `start` says; each
/// order it did not insert is placed again on its own, which says why.
/// Answers in the order of `requests`.
///
/// Only a statement the server refused for what it holds is retried order
/// by order; one it gave up on for want of time, locks or resources
/// (`sagaflow_entity::is_unavailable`) fails every order of the batch. When
/// the outcome is unknown (the connection broke after the statement was
/// sent, say), the statement may yet commit, and placing its orders again
/// would place an order without an idempotency key twice: every order of
/// the batch gets the error instead, as a single request would.
pub async fn place_all(
    db: &DatabaseConnection,
    start: &SagaStart,
    requests: Vec<OrderRequest>,
) -> Vec<PlaceResult> {
    metrics::histogram!("sagaflow_order_batch_size").record(requests.len() as f64);
    let rows: Vec<Row> = requests.iter().map(Row::of).collect();
    let mut inserted: std::collections::HashMap<Uuid, order::Model> = match insert(db, start, &rows)
        .await
    {
        Ok(inserted) => inserted.into_iter().map(|o| (o.saga_id, o)).collect(),
        Err(e) if refused_by_the_server(&e) && !sagaflow_entity::is_unavailable(&e) => {
            tracing::debug!(error = %e, orders = rows.len(), "order batch refused; placing its orders one by one");
            Default::default()
        }
        Err(e) => {
            // Placing the orders one by one would only wait out the same
            // trouble once per order.
            tracing::warn!(
                error = %e,
                orders = rows.len(),
                outcome_known = refused_by_the_server(&e),
                "order batch failed"
            );
            let unavailable = sagaflow_entity::is_unavailable(&e);
            let message = e.to_string();
            return requests
                .iter()
                .map(|_| {
                    let e = sea_orm::DbErr::Custom(message.clone());
                    Err(if unavailable {
                        ApiError::Unavailable(e)
                    } else {
                        ApiError::Database(e)
                    })
                })
                .collect();
        }
    };
    let mut results = Vec::with_capacity(requests.len());
    for (request, row) in requests.iter().zip(rows) {
        results.push(match inserted.remove(&row.saga_id) {
            Some(o) => Ok(Some(Placed::New(o))),
            None => place_one(db, start, request).await,
        });
    }
    results
}

/// Whether Postgres answered the statement with an error, which means a
/// statement run in a transaction of its own rolled back; any other error
/// (no connection, a connection lost mid-statement) leaves its outcome
/// unknown.
pub fn refused_by_the_server(err: &sea_orm::DbErr) -> bool {
    sagaflow_entity::server_error(err).is_some()
}

/// One order's row of the batch statement.
struct Row {
    order_no: String,
    saga_id: Uuid,
    user_id: i64,
    amount: Decimal,
    key: String,
    fingerprint: String,
    data: serde_json::Value,
    detail: serde_json::Value,
}

impl Row {
    /// `p`'s row, with fresh order number and saga id.
    fn of(p: &OrderRequest) -> Self {
        let new = &p.new;
        let order_no = format!("ORD-{}", Uuid::now_v7().simple());
        let data = OrderData {
            order_no: order_no.clone(),
            user_id: new.user_id,
            amount: new.amount,
            reason: None,
        };
        Row {
            detail: serde_json::json!({
                "order_no": order_no,
                "user_id": new.user_id,
                "amount": format_amount(new.amount),
            }),
            data: serde_json::to_value(&data).unwrap_or_default(),
            order_no,
            saga_id: Uuid::now_v7(),
            user_id: new.user_id,
            amount: new.amount,
            // Arrays cannot carry NULLs here; no key or fingerprint is ever
            // empty (a CHECK says so), so "" stands for none.
            key: p.key.clone().unwrap_or_default(),
            fingerprint: p.fingerprint.clone().unwrap_or_default(),
        }
    }
}

/// Inserts each order of `$5`–`$12` (one array per column) whose user has
/// an account and whose idempotency key is new, with its saga, the saga's
/// history and its first command, in one statement; returns the orders
/// inserted. The account test is a scalar subquery, one primary-key probe
/// per order: as `EXISTS` Postgres may hash all accounts for it. Rows go in
/// by key, so two lanes inserting the same keys lock them in the same order
/// and cannot deadlock.
///
/// Every saga of a batch starts at the same instant and so makes the same
/// first transition: its state (`$13`–`$17`; no `$16` means due now, by the
/// database's clock) and the history records after
/// its `CREATED` row (`$18`–`$21`) are the batch's; only its commands
/// (`$22`–`$27`, one row per command, with its saga's id) are its own. Rows
/// of an order that was not inserted are dropped by the joins on `src`.
const PLACE_SQL: &str = "\
    WITH v AS ( \
        SELECT * FROM unnest($5::text[], $6::bigint[], $7::numeric[], $8::uuid[], $9::text[], \
                             $10::text[], $11::jsonb[], $12::jsonb[]) \
            WITH ORDINALITY AS v(order_no, user_id, amount, saga_id, key, fingerprint, data, detail, n)), \
     new_order AS ( \
        INSERT INTO orders (order_no, user_id, amount, status, saga_id, idempotency_key, request_fingerprint) \
        SELECT order_no, user_id, amount, 'PENDING', saga_id, NULLIF(key, ''), NULLIF(fingerprint, '') \
        FROM v WHERE (SELECT true FROM accounts a WHERE a.user_id = v.user_id) ORDER BY key, n \
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING *), \
     src AS (SELECT v.saga_id AS id, v.data, v.detail, v.n FROM v JOIN new_order o ON o.saga_id = v.saga_id), \
     new_saga AS ( \
        INSERT INTO saga_instances (id, saga_type, definition_version, state, current_step, attempt, \
                                    next_run_at, deadline, data) \
        SELECT id, $1, $2, $13, $14, $15, COALESCE($16, now()), $17, data FROM src), \
     history AS ( \
        INSERT INTO saga_events (saga_id, kind, step, attempt, from_state, to_state, detail, actor) \
        SELECT s.id, h.kind, h.step, h.attempt, h.from_state, h.to_state, h.detail, $4 \
        FROM src s CROSS JOIN LATERAL ( \
            SELECT 'CREATED' AS kind, 0 AS step, 0 AS attempt, NULL::text AS from_state, \
                   $3::text AS to_state, s.detail AS detail, 0::bigint AS k \
            UNION ALL \
            SELECT r.kind, r.step, r.attempt, $3, $13, r.detail, r.k \
            FROM unnest($18::text[], $19::int[], $20::int[], $21::jsonb[]) \
                 WITH ORDINALITY AS r(kind, step, attempt, detail, k)) h \
        ORDER BY s.n, h.k), \
     commands AS ( \
        INSERT INTO outbox (message_id, topic, key, payload, headers) \
        SELECT m.message_id, m.topic, m.key, m.payload, m.headers \
        FROM unnest($22::uuid[], $23::uuid[], $24::text[], $25::text[], $26::jsonb[], $27::jsonb[]) \
             WITH ORDINALITY AS m(saga_id, message_id, topic, key, payload, headers, n) \
        JOIN src s ON s.id = m.saga_id ORDER BY m.n \
        ON CONFLICT (message_id) DO NOTHING) \
    SELECT * FROM new_order";

/// The commands transition `t` sends, for each saga of `rows`, as the
/// outbox columns `$22`–`$27` of [`PLACE_SQL`] (none without `t`).
fn commands(
    start: &SagaStart,
    t: Option<&Transition>,
    rows: &[Row],
) -> Result<[sea_orm::Value; 6], sea_orm::DbErr> {
    let mut out = Vec::new();
    let Some(t) = t else {
        return Ok(columns(&out));
    };
    for row in rows {
        let target = (row.user_id, row.amount);
        for effect in &t.effects {
            let Some(env) = CommandEnvelope::for_effect(row.saga_id, t.next.epoch, effect, target)
            else {
                continue;
            };
            let span = Uuid::new_v4().as_u64_pair().0;
            let msg = env
                .to_outbox(&start.topics, traceparent(row.saga_id, span))
                .map_err(|e| sea_orm::DbErr::Custom(format!("encode command: {e}")))?;
            out.push((row.saga_id, msg));
        }
    }
    Ok(columns(&out))
}

/// `commands`, one array per outbox column.
fn columns(out: &[(Uuid, OutboxMessage)]) -> [sea_orm::Value; 6] {
    [
        column(out, |(saga, _)| *saga),
        column(out, |(_, m)| m.message_id),
        column(out, |(_, m)| m.topic.clone()),
        column(out, |(_, m)| m.key.clone()),
        column(out, |(_, m)| m.payload.clone()),
        column(out, |(_, m)| m.headers.clone()),
    ]
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

async fn insert(
    db: &DatabaseConnection,
    start: &SagaStart,
    rows: &[Row],
) -> Result<Vec<order::Model>, sea_orm::DbErr> {
    let now = Utc::now();
    let first = start.first(now);
    let commands = commands(start, first.as_ref(), rows)?;
    let (next, records) = match &first {
        Some(t) => (t.next.clone(), &t.history[..]),
        None => (Instance::new(now), &[][..]),
    };
    let version = i32::try_from(order_payment::VERSION).unwrap_or(i32::MAX);
    let mut values: Vec<sea_orm::Value> = vec![
        order_payment::SAGA_TYPE.into(),
        version.into(),
        SagaState::Running.as_str().into(),
        "api".into(),
        column(rows, |r| r.order_no.clone()),
        column(rows, |r| r.user_id),
        column(rows, |r| r.amount),
        column(rows, |r| r.saga_id),
        column(rows, |r| r.key.clone()),
        column(rows, |r| r.fingerprint.clone()),
        column(rows, |r| r.data.clone()),
        column(rows, |r| r.detail.clone()),
        next.state.as_str().into(),
        to_i32(next.step).into(),
        to_i32(next.attempt).into(),
        // A saga left to the workers is due by the database's clock, which
        // is the one the claim compares with.
        first.as_ref().and(next.next_run_at).into(),
        next.deadline.into(),
        column(records, |r| r.kind.as_str().to_owned()),
        column(records, |r| to_i32(r.step)),
        column(records, |r| to_i32(r.attempt)),
        column(records, |r| r.detail.clone()),
    ];
    values.extend(commands);
    order::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Postgres,
            PLACE_SQL,
            values,
        ))
        .all(db)
        .await
}

/// Places one order on its own and says why it was not inserted, if it
/// was not: its key's earlier order, or its user has no account.
/// `Ok(None)`: nothing explains it (a generated id collided, or the key's
/// order vanished meanwhile); try again.
async fn place_one(db: &DatabaseConnection, start: &SagaStart, p: &OrderRequest) -> PlaceResult {
    let row = Row::of(p);
    match insert(db, start, std::slice::from_ref(&row)).await {
        Ok(mut inserted) => {
            if let Some(o) = inserted.pop() {
                return Ok(Some(Placed::New(o)));
            }
        }
        Err(err) => {
            return match err.sql_err() {
                Some(SqlErr::ForeignKeyConstraintViolation(_)) => Err(unknown_user(p.new.user_id)),
                Some(SqlErr::UniqueConstraintViolation(_)) => Ok(None),
                _ => Err(err.into()),
            }
        }
    }
    // ON CONFLICT waited for the other inserter to commit; this new
    // statement sees its row.
    if let Some(key) = &p.key {
        let existing = order::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT * FROM orders WHERE idempotency_key = $1",
                [key.clone().into()],
            ))
            .one(db)
            .await?;
        if let Some(o) = existing {
            return Ok(Some(Placed::Existing(o)));
        }
    }
    let account = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS x FROM accounts WHERE user_id = $1",
            [p.new.user_id.into()],
        ))
        .await?;
    match account {
        None => Err(unknown_user(p.new.user_id)),
        Some(_) => Ok(None),
    }
}

fn unknown_user(user_id: i64) -> ApiError {
    ApiError::field(
        "user_id",
        format!("user {user_id} has no account; create it with POST /accounts first"),
    )
}
