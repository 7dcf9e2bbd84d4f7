//! Carries out the state machine's decisions: reads nothing, writes the new
//! state, the history and the effects (outbox rows, local actions) through
//! the caller's transaction, so that all of it commits or none of it does.

use chrono::{DateTime, Utc};
use sagaflow_entity::saga_instance::{self, OperatorRequest, Resolution};
use sagaflow_entity::{SagaState, StateValues};
use sagaflow_workflows::machine::{Clock, Effect, Event, Instance, RecordKind};
use sagaflow_workflows::messages::{CommandEnvelope, Topics};
use sagaflow_workflows::policy::Jitter;
use sagaflow_workflows::transition;
use sea_orm::ConnectionTrait;

use crate::session::Tx;
use crate::sql::{exec, traceparent};
use crate::{LocalContext, WorkerConfig, WorkerError};

/// What an advance recorded, for metrics once the transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advanced {
    pub recorded: Vec<RecordKind>,
}

impl Advanced {
    /// Counts what happened (call after the commit, so that a rolled-back
    /// transaction counts nothing). `waited` is how long the saga waited
    /// for the reply that this advance applied, if it applied one.
    pub(crate) fn observe(&self, saga_type: &str, step: i32, waited: Option<std::time::Duration>) {
        let t = saga_type.to_owned();
        for kind in &self.recorded {
            match kind {
                RecordKind::RetryScheduled => {
                    metrics::counter!("sagaflow_retries_total", "saga_type" => t.clone())
                        .increment(1)
                }
                RecordKind::TimedOut => {
                    metrics::counter!("sagaflow_timeouts_total", "saga_type" => t.clone())
                        .increment(1)
                }
                RecordKind::CompensationStarted => {
                    metrics::counter!("sagaflow_compensations_total", "saga_type" => t.clone())
                        .increment(1)
                }
                RecordKind::Completed
                | RecordKind::Compensated
                | RecordKind::Cancelled
                | RecordKind::Failed => metrics::counter!(
                    "sagaflow_sagas_finished_total",
                    "saga_type" => t.clone(),
                    "state" => kind.as_str()
                )
                .increment(1),
                RecordKind::ReplyReceived => {
                    if let Some(w) = waited {
                        metrics::histogram!(
                            "sagaflow_step_duration_seconds",
                            "saga_type" => t.clone(),
                            "step" => step.to_string()
                        )
                        .record(w.as_secs_f64());
                    }
                }
                _ => {}
            }
        }
    }
}

/// The order a saga is about, for spans and logs ("" if none).
pub(crate) fn order_no(row: &saga_instance::Model) -> &str {
    row.data
        .get("order_no")
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

fn instance_of(row: &saga_instance::Model) -> Instance {
    Instance {
        state: row.state,
        step: u32::try_from(row.current_step).unwrap_or(0),
        attempt: u32::try_from(row.attempt).unwrap_or(0),
        attempt_base: u32::try_from(row.attempt_base).unwrap_or(0),
        cancel_requested: row.cancel_requested,
        epoch: u32::try_from(row.epoch).unwrap_or(0),
        next_run_at: row.next_run_at.map(|t| t.with_timezone(&Utc)),
        deadline: row.deadline.map(|t| t.with_timezone(&Utc)),
        last_error: row.last_error.clone(),
        failure: row.failure_reason.clone(),
    }
}

fn clock(now: DateTime<Utc>) -> Clock {
    Clock {
        now,
        jitter: Jitter::from_ppm(rand::random::<u32>() % (Jitter::SCALE + 1)),
    }
}

/// Whether the saga has something to do right now, which this transaction
/// may as well do instead of leaving it to the next claim.
fn due_now(i: &Instance, now: DateTime<Utc>) -> bool {
    let runnable = i.state == SagaState::Running
        || (i.state == SagaState::Compensating && i.deadline.is_none());
    runnable && i.next_run_at.is_some_and(|t| t <= now)
}

/// The account and amount a funds command is about, read from the saga's
/// input.
#[derive(serde::Deserialize)]
struct FundsTarget {
    user_id: i64,
    #[serde(with = "rust_decimal::serde::str")]
    amount: rust_decimal::Decimal,
}

fn local_action<'a>(
    cfg: &'a WorkerConfig,
    row: &saga_instance::Model,
    name: &str,
) -> Result<&'a std::sync::Arc<dyn crate::LocalAction>, WorkerError> {
    cfg.actions.get(name).ok_or_else(|| WorkerError::Corrupt {
        saga_id: row.id,
        reason: format!("no local action {name} is registered"),
    })
}

/// The operator's pending request on `row`, as the event it stands for.
fn operator_event(row: &saga_instance::Model) -> Option<Event> {
    let reason = row.operator_reason.clone().unwrap_or_default();
    row.operator_request.map(|r| match r {
        OperatorRequest::Cancel => Event::Cancel { reason },
        OperatorRequest::Retry => Event::Retry { reason },
        OperatorRequest::ForceForward => Event::ForceForward { reason },
        // The resolution is filed with the request (a CHECK ties them);
        // the most cautious reading stands in should a row lack it.
        OperatorRequest::Resolve => Event::Resolve {
            reason,
            resolution: row.resolution.unwrap_or(Resolution::SettledOutside),
        },
    })
}

/// Applies `event` to the saga `row` (which the caller has locked or
/// leased at `row.version`), then keeps going while the saga has work due
/// now (local actions, the next step's command). Local actions and hooks
/// run through `db` at once; the saga's new state, history rows and
/// commands are left in `writes` for the caller to flush (with other
/// sagas' in a batch), where a row someone else changed since it was read
/// fails with [`WorkerError::StaleSaga`]. An operator's pending request on
/// the row is applied first, whatever `event` is, so that no path can skip
/// it.
pub(crate) async fn advance_into(
    db: &Tx<'_>,
    cfg: &WorkerConfig,
    row: &saga_instance::Model,
    event: Event,
    actor: &str,
    writes: &mut Writes,
) -> Result<Advanced, WorkerError> {
    let topics = &cfg.topics;
    let def = cfg
        .registry
        .get(&row.saga_type, row.definition_version)
        .ok_or_else(|| WorkerError::Corrupt {
            saga_id: row.id,
            reason: format!(
                "no definition {} v{}",
                row.saga_type, row.definition_version
            ),
        })?;
    let now = Utc::now();
    let before = instance_of(row);
    let mut cur = before.clone();
    // The request goes first; a claim's `Due` after it is redundant, since
    // the request's own round already runs whatever became due.
    let (mut event, mut then) = match operator_event(row) {
        Some(request) if event == Event::Due => (request, None),
        Some(request) => (request, Some(event)),
        None => (event, None),
    };
    let mut recorded = Vec::new();
    // Each round either waits (remote command out), finishes, or moves one
    // step; twice the steps plus slack bounds a definition's whole run.
    for _ in 0..(def.steps.len() * 2 + 6) {
        let t = transition(def, &cur, &event, clock(now));
        recorded.extend(t.history.iter().map(|r| r.kind));
        let mut next_event = None;
        for rec in &t.history {
            writes
                .history
                .push(row.id, rec, (cur.state, t.next.state), actor);
        }
        for effect in &t.effects {
            match effect {
                Effect::SendCommand { command, .. } => {
                    let target: FundsTarget =
                        serde_json::from_value(row.data.clone()).map_err(|e| {
                            WorkerError::Corrupt {
                                saga_id: row.id,
                                reason: format!(
                                    "saga data has no account and amount for {}: {e}",
                                    command.as_str()
                                ),
                            }
                        })?;
                    let target = (target.user_id, target.amount);
                    // Always a command: this arm is one.
                    if let Some(env) =
                        CommandEnvelope::for_effect(row.id, t.next.epoch, effect, target)
                    {
                        writes.send_command(topics, &env)?;
                    }
                }
                Effect::RunLocal {
                    step,
                    attempt,
                    compensation,
                    action,
                } => {
                    let ctx = LocalContext {
                        tx: db,
                        saga: row,
                        topics,
                        reason: None,
                    };
                    let outcome = local_action(cfg, row, action)?.run(ctx).await?;
                    next_event = Some(Event::Local {
                        step: *step,
                        attempt: *attempt,
                        compensation: *compensation,
                        outcome,
                    });
                }
                Effect::RunHook { action, .. } => {
                    let reason = t.next.failure.as_deref().or(t.next.last_error.as_deref());
                    if cfg.actions.is_order_hook(action) {
                        // A hook is the saga's last act, so nothing later
                        // in this advance reads what it writes.
                        writes.move_order(crate::local::order_move(topics, action, row, reason)?);
                        continue;
                    }
                    let ctx = LocalContext {
                        tx: db,
                        saga: row,
                        topics,
                        reason,
                    };
                    local_action(cfg, row, action)?.run(ctx).await?;
                }
            }
        }
        cur = t.next;
        event = match next_event {
            Some(e) => e,
            None if due_now(&cur, now) => Event::Due,
            None => match then.take() {
                Some(e) => e,
                None => break,
            },
        };
    }
    if cur != before || row.lease_owner.is_some() || row.operator_request.is_some() {
        writes.store(row, &cur);
    }
    Ok(Advanced { recorded })
}

/// Sagas' new states, their history rows and the commands they send,
/// written by [`Writes::flush`] in one statement however many sagas and
/// rows there are: one round trip for a whole claimed batch, or for a
/// batch of replies. The rows travel as array parameters, so the statement
/// text (and its prepared plan) never changes with their number. The
/// order hooks' moves, if any, go in one statement before it
/// ([`MOVE_ORDERS_SET_SQL`]).
#[derive(Debug, Default)]
pub(crate) struct Writes {
    history: History,
    outbox: Vec<serde_json::Value>,
    /// The order hooks' moves, in the order the sagas reached them.
    orders: Vec<crate::local::OrderMove>,
    /// (id, version read, new state) per saga.
    states: Vec<(uuid::Uuid, i64, Instance)>,
}

/// History rows, one typed array per column: unlike a JSON array of rows,
/// Postgres receives them without parsing (parsing the JSON form was 8 %
/// of its CPU in `claim-1step`).
#[derive(Debug, Default)]
struct History {
    saga_id: Vec<uuid::Uuid>,
    kind: Vec<String>,
    step: Vec<i32>,
    attempt: Vec<i32>,
    from_state: Vec<String>,
    to_state: Vec<String>,
    detail: Vec<serde_json::Value>,
    actor: Vec<String>,
}

impl History {
    fn push(
        &mut self,
        saga_id: uuid::Uuid,
        rec: &sagaflow_workflows::machine::Record,
        (from, to): (SagaState, SagaState),
        actor: &str,
    ) {
        self.saga_id.push(saga_id);
        self.kind.push(rec.kind.as_str().to_owned());
        self.step.push(to_i32(rec.step));
        self.attempt.push(to_i32(rec.attempt));
        self.from_state.push(from.as_str().to_owned());
        self.to_state.push(to.as_str().to_owned());
        self.detail.push(rec.detail.clone());
        self.actor.push(actor.to_owned());
    }

    fn is_empty(&self) -> bool {
        self.saga_id.is_empty()
    }

    /// The parameters `$1`–`$8` of [`effects_ctes!`].
    fn values(self) -> [sea_orm::Value; 8] {
        [
            self.saga_id.into(),
            self.kind.into(),
            self.step.into(),
            self.attempt.into(),
            self.from_state.into(),
            self.to_state.into(),
            self.detail.into(),
            self.actor.into(),
        ]
    }
}

/// The history rows (`$1`–`$8`, a [`History`]) and outbox rows (`$9`) of
/// a [`Writes`], each inserted in array order (the relay publishes in
/// outbox id order). A message id already in the outbox is left alone:
/// the same message written twice is published once.
macro_rules! effects_ctes {
    () => {
        "history AS ( \
            INSERT INTO saga_events (saga_id, kind, step, attempt, from_state, to_state, detail, actor) \
            SELECT saga_id, kind, step, attempt, from_state, to_state, detail, actor \
            FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], \
                        $7::jsonb[], $8::text[]) \
                 WITH ORDINALITY AS r(saga_id, kind, step, attempt, from_state, to_state, detail, actor, n) \
            ORDER BY n), \
         commands AS ( \
            INSERT INTO outbox (message_id, topic, key, payload, headers) \
            SELECT (m->>'message_id')::uuid, m->>'topic', m->>'key', m->'payload', m->'headers' \
            FROM jsonb_array_elements($9) WITH ORDINALITY AS r(m, n) ORDER BY n \
            ON CONFLICT (message_id) DO NOTHING) "
    };
}

/// A batch's order moves, none two of one order, as one set: the orders
/// that are where their moves expect them move, the events of those go
/// to the outbox in array order, and the 1-based positions of the others
/// come back in order. Why not `sagaflow_move_orders` (migration
/// `m20261130_000009`, kept for workers of the version before during a
/// rolling upgrade): it runs each move's two statements through PL/pgSQL, which
/// starts an executor and reads the tables' CHECK constraints anew for
/// every order, 7.6 % of the machine's CPU in order-e2e (bench/README
/// finding 38); a set is one of each per batch. The engine's
/// connections plan it without sequential scans (`SAGAFLOW_ENGINE_PLANS`),
/// so its join is an index probe of `orders` per move, the plan finding
/// 27 could not get.
///
/// `$1`–`$13`: order number (also the event's key), saga id, by refund,
/// expected status, new status (empty: kept), set failure, failure,
/// failure is null, clear refund, and the event's message id, topic,
/// payload and headers.
const MOVE_ORDERS_SET_SQL: &str = "\
WITH m AS ( \
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::bool[], $4::text[], $5::text[], $6::bool[], \
                         $7::text[], $8::bool[], $9::bool[], $10::uuid[], $11::text[], $12::jsonb[], \
                         $13::jsonb[]) \
        WITH ORDINALITY AS m(order_no, saga_id, by_refund, expect, status, set_failure, failure, \
                             failure_null, clear_refund, message_id, topic, payload, headers, n)), \
moved AS ( \
    UPDATE orders o \
       SET status = COALESCE(NULLIF(m.status, ''), o.status), \
           failure_reason = CASE WHEN NOT m.set_failure THEN o.failure_reason \
                                 WHEN m.failure_null THEN NULL ELSE m.failure END, \
           refund_saga_id = CASE WHEN m.clear_refund THEN NULL ELSE o.refund_saga_id END, \
           updated_at = now() \
      FROM m \
     WHERE o.order_no = m.order_no AND o.status = m.expect \
       AND (CASE WHEN m.by_refund THEN o.refund_saga_id ELSE o.saga_id END) = m.saga_id \
    RETURNING m.n), \
events AS ( \
    INSERT INTO outbox (message_id, topic, key, payload, headers) \
    SELECT m.message_id, m.topic, m.order_no, m.payload, m.headers FROM m \
     WHERE m.n IN (SELECT n FROM moved) ORDER BY m.n \
    ON CONFLICT (message_id) DO NOTHING) \
SELECT n::int AS n FROM m WHERE m.n NOT IN (SELECT n FROM moved) ORDER BY m.n";

/// History and outbox rows with no saga state to write.
const EFFECTS_SQL: &str = concat!("WITH ", effects_ctes!(), "SELECT 1");

/// The new states of a batch (`$10`), each guarded by the version its writer
/// read; releases the lease and clears a consumed operator request. `$11`,
/// the ids again as an array, is what lets the planner find the rows
/// through the primary key: joined only on an expression of the JSON, it
/// hashed a sequential scan of the whole table (1 ms per reply at a few
/// thousand sagas, the largest single cost of order-e2e).
const STORE_BATCH_SQL: &str = concat!(
    "WITH ",
    effects_ctes!(),
    ", stored AS ( \
        UPDATE saga_instances s SET state = v->>'state', current_step = (v->>'step')::int, \
           attempt = (v->>'attempt')::int, attempt_base = (v->>'attempt_base')::int, \
           epoch = (v->>'epoch')::int, cancel_requested = (v->>'cancel_requested')::boolean, \
           next_run_at = (v->>'next_run_at')::timestamptz, deadline = (v->>'deadline')::timestamptz, \
           last_error = v->>'last_error', failure_reason = v->>'failure', \
           lease_owner = NULL, lease_expires_at = NULL, operator_request = NULL, operator_reason = NULL, \
           version = s.version + 1, updated_at = now() \
        FROM jsonb_array_elements($10) AS r(v) \
        WHERE s.id = ANY($11) AND s.id = (v->>'id')::uuid AND s.version = (v->>'version')::bigint \
        RETURNING s.id) \
    SELECT id FROM stored"
);

/// One saga's new state, as [`STORE_BATCH_SQL`] writes it, with plain
/// parameters: a flush of a single saga (a claim or a batch of replies
/// that found one) is common, and for one row this costs a third of the
/// JSON form.
const STORE_ONE_SQL: &str = concat!(
    "WITH ",
    effects_ctes!(),
    ", stored AS ( \
        UPDATE saga_instances SET state = $10, current_step = $11, attempt = $12, attempt_base = $13, \
           epoch = $14, cancel_requested = $15, next_run_at = $16, deadline = $17, last_error = $18, \
           failure_reason = $19, lease_owner = NULL, lease_expires_at = NULL, \
           operator_request = NULL, operator_reason = NULL, version = version + 1, updated_at = now() \
        WHERE id = $20 AND version = $21 \
        RETURNING id) \
    SELECT id FROM stored"
);

/// Applies `orders` with [`MOVE_ORDERS_SET_SQL`], in rounds of distinct
/// orders (two moves of one order in a batch go one round after the
/// other, as one by one). Fails with [`WorkerError::Corrupt`] naming the
/// first move refused: the flush ends there and the caller rolls back, so
/// the rounds after it need not run.
async fn move_orders<C: ConnectionTrait>(
    db: &C,
    orders: &[crate::local::OrderMove],
) -> Result<(), WorkerError> {
    use sagaflow_entity::column;
    let rounds = crate::sql::rounds_by(orders, |m| m.order_no.as_str());
    for round in 0..rounds.iter().max().map_or(0, |r| r + 1) {
        let members: Vec<&crate::local::OrderMove> = orders
            .iter()
            .zip(&rounds)
            .filter_map(|(m, &r)| (r == round).then_some(m))
            .collect();
        let refused = crate::sql::one(
            db,
            MOVE_ORDERS_SET_SQL,
            [
                column(&members, |m| m.order_no.clone()),
                column(&members, |m| m.saga_id),
                column(&members, |m| m.by_refund),
                column(&members, |m| m.expect.to_owned()),
                column(&members, |m| m.status.unwrap_or_default().to_owned()),
                column(&members, |m| m.failure.is_some()),
                column(&members, |m| {
                    m.failure.clone().flatten().unwrap_or_default()
                }),
                column(&members, |m| matches!(m.failure, Some(None))),
                column(&members, |m| m.clear_refund),
                column(&members, |m| m.event.message_id),
                column(&members, |m| m.event.topic.clone()),
                column(&members, |m| m.event.payload.clone()),
                column(&members, |m| m.event.headers.clone()),
            ],
        )
        .await?
        .map(|r| r.try_get::<i32>("", "n"))
        .transpose()?;
        if let Some(n) = refused {
            let Some(m) = usize::try_from(n - 1).ok().and_then(|i| members.get(i)) else {
                return Err(WorkerError::Corrupt {
                    saga_id: uuid::Uuid::nil(),
                    reason: format!("the order moves answered position {n} of {}", members.len()),
                });
            };
            return Err(WorkerError::Corrupt {
                saga_id: m.saga_id,
                reason: format!(
                    "order {} is not in the status this saga expects; refusing to mark it {}",
                    m.order_no, m.becomes
                ),
            });
        }
    }
    Ok(())
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl Writes {
    /// Queues `i` as the new state of `row`, if `row` is still at the
    /// version it was read at when flushed.
    fn store(&mut self, row: &saga_instance::Model, i: &Instance) {
        self.states.push((row.id, row.version, i.clone()));
    }

    /// Queues `env` for the outbox.
    fn send_command(&mut self, topics: &Topics, env: &CommandEnvelope) -> Result<(), WorkerError> {
        let row = env
            .to_outbox(topics, traceparent(env.saga_id))
            .and_then(serde_json::to_value)
            .map_err(|e| WorkerError::Corrupt {
                saga_id: env.saga_id,
                reason: format!("encode command: {e}"),
            })?;
        self.outbox.push(row);
        Ok(())
    }

    /// Queues an order hook's move.
    pub(crate) fn move_order(&mut self, m: crate::local::OrderMove) {
        self.orders.push(m);
    }

    /// Writes everything queued: the order moves in one call, then the
    /// rest in one statement. Fails with [`WorkerError::Corrupt`] if an
    /// order was not in the status its hook expects (two writers
    /// disagree; the saga must stop rather than overwrite it), and with
    /// [`WorkerError::StaleSaga`] if any saga changed since it was read;
    /// either way the caller must roll back, which takes everything else
    /// this wrote back too.
    pub(crate) async fn flush<C: ConnectionTrait>(&mut self, db: &C) -> Result<(), WorkerError> {
        let orders = std::mem::take(&mut self.orders);
        if !orders.is_empty() {
            move_orders(db, &orders).await?;
        }
        let history = std::mem::take(&mut self.history);
        let outbox = std::mem::take(&mut self.outbox);
        let states = std::mem::take(&mut self.states);
        let no_effects = history.is_empty() && outbox.is_empty();
        let mut values: Vec<sea_orm::Value> = history.values().into();
        values.push(serde_json::Value::Array(outbox).into());
        let written: std::collections::HashSet<uuid::Uuid> = match &states[..] {
            [] => {
                if !no_effects {
                    exec(db, EFFECTS_SQL, values).await?;
                }
                return Ok(());
            }
            [(id, version, i)] => crate::sql::all(
                db,
                STORE_ONE_SQL,
                values.into_iter().chain([
                    i.state.as_str().into(),
                    to_i32(i.step).into(),
                    to_i32(i.attempt).into(),
                    to_i32(i.attempt_base).into(),
                    to_i32(i.epoch).into(),
                    i.cancel_requested.into(),
                    i.next_run_at.into(),
                    i.deadline.into(),
                    i.last_error.clone().into(),
                    i.failure.clone().into(),
                    (*id).into(),
                    (*version).into(),
                ]),
            )
            .await?
            .iter()
            .filter_map(|r| r.try_get::<uuid::Uuid>("", "id").ok())
            .collect(),
            many => {
                let rows: Vec<serde_json::Value> = many
                    .iter()
                    .map(|(id, version, i)| {
                        serde_json::json!({
                            "id": id,
                            "version": version,
                            "state": i.state.as_str(),
                            "step": i.step,
                            "attempt": i.attempt,
                            "attempt_base": i.attempt_base,
                            "epoch": i.epoch,
                            "cancel_requested": i.cancel_requested,
                            "next_run_at": i.next_run_at,
                            "deadline": i.deadline,
                            "last_error": i.last_error,
                            "failure": i.failure,
                        })
                    })
                    .collect();
                let ids: Vec<uuid::Uuid> = many.iter().map(|(id, _, _)| *id).collect();
                crate::sql::all(
                    db,
                    STORE_BATCH_SQL,
                    values
                        .into_iter()
                        .chain([serde_json::Value::Array(rows).into(), ids.into()]),
                )
                .await?
                .iter()
                .filter_map(|r| r.try_get::<uuid::Uuid>("", "id").ok())
                .collect()
            }
        };
        match states.iter().find(|(id, _, _)| !written.contains(id)) {
            None => Ok(()),
            Some((saga_id, version, _)) => Err(WorkerError::StaleSaga {
                saga_id: *saga_id,
                version: *version,
            }),
        }
    }
}
