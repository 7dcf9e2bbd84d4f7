//! Local actions: steps and hooks that run inside the engine's own
//! transaction, looked up by the name a definition gives them. The order
//! sagas' hooks are built in ([`Actions::builtin`]); an embedding
//! application registers its own with [`Actions::register`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use sagaflow_entity::saga_instance;
use sagaflow_workflows::machine::Outcome;
use sagaflow_workflows::messages::{OrderEvent, Topics};
use sagaflow_workflows::order_payment::{
    OrderData, HOOK_MARK_CANCELLED, HOOK_MARK_FAILED, HOOK_MARK_PAID,
};
use sagaflow_workflows::order_refund::{HOOK_MARK_REFUNDED, HOOK_REFUND_ABANDONED};
use sagaflow_workflows::{Action, Registry};
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use uuid::Uuid;

use crate::sql::{one, traceparent};
use crate::WorkerError;

/// What a local action gets to work with.
#[derive(Debug, Clone, Copy)]
pub struct LocalContext<'a> {
    /// The transaction that also stores the saga's new state: whatever the
    /// action writes commits with it, or not at all.
    pub tx: &'a DatabaseTransaction,
    /// The saga as claimed (its `data` is the saga's input).
    pub saga: &'a saga_instance::Model,
    /// Topic names, for actions that publish through the outbox.
    pub topics: &'a Topics,
    /// For hooks: why the saga compensated, was cancelled or failed.
    pub reason: Option<&'a str>,
}

/// A named action run in the engine's transaction: a local step, a local
/// compensation or a terminal hook.
///
/// An `Err` rolls back the whole transaction (the saga is tried again when
/// its lease expires), so return an [`Outcome`] for what is a result:
/// `Rejected` (a business refusal: compensate) or `Failed` (transient:
/// retry per the step's policy). Hooks should return `Ok(Outcome::Ok)`;
/// their outcome is not used.
pub trait LocalAction: Send + Sync {
    /// Runs the action.
    fn run<'a>(&'a self, ctx: LocalContext<'a>) -> ActionFuture<'a>;
}

/// What [`LocalAction::run`] returns: write `Box::pin(async move { .. })`.
pub type ActionFuture<'a> = BoxFuture<'a, Result<Outcome, WorkerError>>;

/// The local actions a worker can run, by name.
#[derive(Clone, Default)]
pub struct Actions {
    map: BTreeMap<&'static str, Arc<dyn LocalAction>>,
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

/// One of the order sagas' built-in hooks.
struct OrderHook(&'static str);

impl LocalAction for OrderHook {
    fn run<'a>(&'a self, ctx: LocalContext<'a>) -> ActionFuture<'a> {
        Box::pin(async move {
            let data: OrderData = serde_json::from_value(ctx.saga.data.clone()).map_err(|e| {
                WorkerError::Corrupt {
                    saga_id: ctx.saga.id,
                    reason: format!("saga data: {e}"),
                }
            })?;
            run_hook(ctx.tx, ctx.topics, self.0, ctx.saga.id, &data, ctx.reason).await?;
            Ok(Outcome::Ok)
        })
    }
}

impl Actions {
    /// The hooks of the built-in order sagas.
    pub fn builtin() -> Self {
        let mut actions = Actions::default();
        for name in [
            HOOK_MARK_PAID,
            HOOK_MARK_FAILED,
            HOOK_MARK_CANCELLED,
            HOOK_MARK_REFUNDED,
            HOOK_REFUND_ABANDONED,
        ] {
            actions.map.insert(name, Arc::new(OrderHook(name)));
        }
        actions
    }

    /// Adds `action` under `name`; refuses a name that is taken.
    pub fn register(
        &mut self,
        name: &'static str,
        action: Arc<dyn LocalAction>,
    ) -> Result<(), WorkerError> {
        if self.map.contains_key(name) {
            return Err(WorkerError::Config(format!(
                "local action {name} is registered twice"
            )));
        }
        self.map.insert(name, action);
        Ok(())
    }

    /// The action called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn LocalAction>> {
        self.map.get(name)
    }

    /// Checks that every local step, compensation and hook that a
    /// registered definition names is here, so that a mismatch stops
    /// start-up instead of failing sagas one by one later.
    pub fn check_covers(&self, registry: &Registry) -> Result<(), WorkerError> {
        for def in registry.definitions() {
            let steps = def.steps.iter().flat_map(|s| {
                [Some(s.action), s.compensation.map(|c| c.action)]
                    .into_iter()
                    .flatten()
            });
            let locals = steps.filter_map(|a| match a {
                Action::Local(name) => Some(name),
                Action::Remote(_) => None,
            });
            let h = def.hooks;
            let hooks = [
                h.on_completed,
                h.on_compensated,
                h.on_cancelled,
                h.on_failed,
            ]
            .into_iter()
            .flatten();
            for name in locals.chain(hooks) {
                if self.get(name).is_none() {
                    return Err(WorkerError::Config(format!(
                        "saga {} v{} names local action {name}, which no worker registered",
                        def.name, def.version
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A hook's order update (parameters from `$6`) and the event it
/// announces (`$1` message id, `$2` topic, `$3` key, `$4` payload, `$5`
/// headers) in one statement: the event goes to the outbox only if the
/// order moved, and `moved` says whether it did.
macro_rules! with_event {
    ($update:literal) => {
        concat!(
            "WITH moved AS (",
            $update,
            " RETURNING 1), \
             event AS (INSERT INTO outbox (message_id, topic, key, payload, headers) \
                SELECT $1, $2, $3, $4, $5 FROM moved ON CONFLICT (message_id) DO NOTHING) \
             SELECT count(*) AS moved FROM moved"
        )
    };
}

/// Runs one of the order sagas' terminal hooks.
async fn run_hook<C: ConnectionTrait>(
    db: &C,
    topics: &Topics,
    action: &str,
    saga_id: Uuid,
    data: &OrderData,
    last_error: Option<&str>,
) -> Result<(), WorkerError> {
    let reason = last_error.unwrap_or("").to_owned();
    let order_no = data.order_no.clone();
    // Each hook moves the order from the one status its saga may find it
    // in; anything else means two writers disagree, and the saga stops.
    let pay = |status: &'static str, failure: Option<String>| {
        (
            status,
            with_event!(
                "UPDATE orders SET status = $6, failure_reason = $7, updated_at = now() \
                 WHERE order_no = $8 AND saga_id = $9 AND status = 'PENDING'"
            ),
            vec![
                status.into(),
                failure.into(),
                order_no.clone().into(),
                saga_id.into(),
            ],
        )
    };
    let refund = |status: &'static str, sql: &'static str| {
        (status, sql, vec![order_no.clone().into(), saga_id.into()])
    };
    let ((status, sql, values), event): ((&str, &str, Vec<sea_orm::Value>), OrderEvent) =
        match action {
            HOOK_MARK_PAID => (
                pay("PAID", None),
                OrderEvent::OrderPaid {
                    message_id: OrderEvent::message_id_for(saga_id, "OrderPaid"),
                    order_no: order_no.clone(),
                    user_id: data.user_id,
                    amount: data.amount,
                    saga_id,
                },
            ),
            HOOK_MARK_FAILED => (
                pay("FAILED", Some(reason.clone())),
                OrderEvent::OrderFailed {
                    message_id: OrderEvent::message_id_for(saga_id, "OrderFailed"),
                    order_no: order_no.clone(),
                    user_id: data.user_id,
                    saga_id,
                    reason,
                },
            ),
            HOOK_MARK_CANCELLED => (
                pay("CANCELLED", Some(reason.clone())),
                OrderEvent::OrderCancelled {
                    message_id: OrderEvent::message_id_for(saga_id, "OrderCancelled"),
                    order_no: order_no.clone(),
                    user_id: data.user_id,
                    saga_id,
                    reason,
                },
            ),
            HOOK_MARK_REFUNDED => (
                refund(
                    "REFUNDED",
                    with_event!(
                        "UPDATE orders SET status = 'REFUNDED', updated_at = now() \
                         WHERE order_no = $6 AND refund_saga_id = $7 AND status = 'PAID'"
                    ),
                ),
                OrderEvent::OrderRefunded {
                    message_id: OrderEvent::message_id_for(saga_id, "OrderRefunded"),
                    order_no: order_no.clone(),
                    user_id: data.user_id,
                    amount: data.amount,
                    saga_id,
                    reason: data.reason.clone().unwrap_or_default(),
                },
            ),
            HOOK_REFUND_ABANDONED => (
                // The order stays PAID and may be refunded again.
                refund(
                    "PAID (refund abandoned)",
                    with_event!(
                        "UPDATE orders SET refund_saga_id = NULL, updated_at = now() \
                         WHERE order_no = $6 AND refund_saga_id = $7 AND status = 'PAID'"
                    ),
                ),
                OrderEvent::OrderRefundFailed {
                    message_id: OrderEvent::message_id_for(saga_id, "OrderRefundFailed"),
                    order_no: order_no.clone(),
                    user_id: data.user_id,
                    saga_id,
                    reason,
                },
            ),
            other => {
                return Err(WorkerError::Corrupt {
                    saga_id,
                    reason: format!("unknown hook {other}"),
                })
            }
        };
    let payload = serde_json::to_value(&event).map_err(|e| WorkerError::Corrupt {
        saga_id,
        reason: format!("encode event: {e}"),
    })?;
    let headers = serde_json::json!({
        "message_id": event.message_id().to_string(),
        "saga_id": saga_id.to_string(),
        "type": event.kind(),
        "traceparent": traceparent(saga_id),
    });
    let mut params: Vec<sea_orm::Value> = vec![
        event.message_id().into(),
        topics.orders_events.clone().into(),
        event.order_no().to_owned().into(),
        payload.into(),
        headers.into(),
    ];
    params.extend(values);
    let moved: i64 = one(db, sql, params)
        .await?
        .map(|r| r.try_get("", "moved"))
        .transpose()?
        .unwrap_or(0);
    if moved != 1 {
        return Err(WorkerError::Corrupt {
            saga_id,
            reason: format!(
                "order {} is not in the status this saga expects; refusing to mark it {status}",
                data.order_no
            ),
        });
    }
    Ok(())
}
