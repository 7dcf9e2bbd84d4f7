//! Local actions: steps and hooks that run inside the engine's own
//! transaction, looked up by the name a definition gives them. The order
//! sagas' hooks are built in ([`Actions::builtin`]); an embedding
//! application registers its own with [`Actions::register`].

use std::collections::{BTreeMap, BTreeSet};
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
use uuid::Uuid;

use crate::session::Tx;
use crate::sql::traceparent;
use crate::WorkerError;

/// What a local action gets to work with.
#[derive(Debug, Clone, Copy)]
pub struct LocalContext<'a> {
    /// The transaction that also stores the saga's new state: whatever the
    /// action writes commits with it, or not at all. It runs statements
    /// through [`sea_orm::ConnectionTrait`], as any sea-orm connection does.
    pub tx: &'a Tx<'a>,
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
    /// The names under which the built-in order hooks are registered.
    order_hooks: BTreeSet<&'static str>,
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

/// One of the order sagas' built-in hooks, run on its own. The engine
/// does not call this: it queues the hook's move in the batch's final
/// write instead ([`Actions::is_order_hook`]), and this is the same move
/// written by itself.
struct OrderHook(&'static str);

impl LocalAction for OrderHook {
    fn run<'a>(&'a self, ctx: LocalContext<'a>) -> ActionFuture<'a> {
        Box::pin(async move {
            let mut writes = crate::executor::Writes::default();
            writes.move_order(order_move(ctx.topics, self.0, ctx.saga, ctx.reason)?);
            writes.flush(ctx.tx).await?;
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
            actions.order_hooks.insert(name);
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

    /// Whether `name` is one of the built-in order hooks, whose move the
    /// engine queues in the batch's final write rather than running it as
    /// a statement of its own: one statement for a batch's orders instead
    /// of one per order (a name an embedder registered is always run).
    pub(crate) fn is_order_hook(&self, name: &str) -> bool {
        self.order_hooks.contains(name)
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

/// An order saga's hook's change to its order and the event announcing
/// it, as the batch's final write ([`crate::executor::Writes`]) applies
/// it, one statement for all of a batch's moves: the order moves only
/// from the one status its saga may find it in, and the event goes to
/// the outbox only if it did.
#[derive(Debug, Clone)]
pub(crate) struct OrderMove {
    pub saga_id: Uuid,
    pub order_no: String,
    /// What the order was to become, for the refusal.
    pub becomes: &'static str,
    /// The saga is the order's refund saga, not its payment saga.
    pub by_refund: bool,
    /// The one status the order may be in for the move.
    pub expect: &'static str,
    /// The new status; `None` keeps it.
    pub status: Option<&'static str>,
    /// The new failure reason (`Some(None)` clears it); `None` keeps it.
    pub failure: Option<Option<String>>,
    /// Whether the move clears the order's refund saga.
    pub clear_refund: bool,
    /// The event announcing the move, written only if the order moved.
    pub event: OrderEventRow,
}

/// An order event as an outbox row; its key is the order number.
#[derive(Debug, Clone)]
pub(crate) struct OrderEventRow {
    pub message_id: Uuid,
    pub topic: String,
    pub payload: serde_json::Value,
    pub headers: serde_json::Value,
}

/// What hook `action` of `saga` (an order saga) does to its order.
pub(crate) fn order_move(
    topics: &Topics,
    action: &str,
    saga: &saga_instance::Model,
    last_error: Option<&str>,
) -> Result<OrderMove, WorkerError> {
    let saga_id = saga.id;
    let corrupt = |reason: String| WorkerError::Corrupt { saga_id, reason };
    let data: OrderData = serde_json::from_value(saga.data.clone())
        .map_err(|e| corrupt(format!("saga data: {e}")))?;
    let reason = last_error.unwrap_or("").to_owned();
    let order_no = data.order_no.clone();
    let message_id = |kind: &str| OrderEvent::message_id_for(saga_id, kind);
    // (becomes, by_refund, expect, status, failure (outer None: left as
    // is), clear_refund, event)
    type Move = (
        &'static str,
        bool,
        &'static str,
        Option<&'static str>,
        Option<Option<String>>,
        bool,
        OrderEvent,
    );
    let (becomes, by_refund, expect, status, failure, clear_refund, event): Move = match action {
        HOOK_MARK_PAID => (
            "PAID",
            false,
            "PENDING",
            Some("PAID"),
            Some(None),
            false,
            OrderEvent::OrderPaid {
                message_id: message_id("OrderPaid"),
                order_no: order_no.clone(),
                user_id: data.user_id,
                amount: data.amount,
                saga_id,
            },
        ),
        HOOK_MARK_FAILED => (
            "FAILED",
            false,
            "PENDING",
            Some("FAILED"),
            Some(Some(reason.clone())),
            false,
            OrderEvent::OrderFailed {
                message_id: message_id("OrderFailed"),
                order_no: order_no.clone(),
                user_id: data.user_id,
                saga_id,
                reason,
            },
        ),
        HOOK_MARK_CANCELLED => (
            "CANCELLED",
            false,
            "PENDING",
            Some("CANCELLED"),
            Some(Some(reason.clone())),
            false,
            OrderEvent::OrderCancelled {
                message_id: message_id("OrderCancelled"),
                order_no: order_no.clone(),
                user_id: data.user_id,
                saga_id,
                reason,
            },
        ),
        HOOK_MARK_REFUNDED => (
            "REFUNDED",
            true,
            "PAID",
            Some("REFUNDED"),
            None,
            false,
            OrderEvent::OrderRefunded {
                message_id: message_id("OrderRefunded"),
                order_no: order_no.clone(),
                user_id: data.user_id,
                amount: data.amount,
                saga_id,
                reason: data.reason.clone().unwrap_or_default(),
            },
        ),
        // The order stays PAID and may be refunded again.
        HOOK_REFUND_ABANDONED => (
            "PAID (refund abandoned)",
            true,
            "PAID",
            None,
            None,
            true,
            OrderEvent::OrderRefundFailed {
                message_id: message_id("OrderRefundFailed"),
                order_no: order_no.clone(),
                user_id: data.user_id,
                saga_id,
                reason,
            },
        ),
        other => return Err(corrupt(format!("unknown hook {other}"))),
    };
    let payload =
        serde_json::to_value(&event).map_err(|e| corrupt(format!("encode event: {e}")))?;
    let headers = serde_json::json!({
        "message_id": event.message_id().to_string(),
        "saga_id": saga_id.to_string(),
        "type": event.kind(),
        "traceparent": traceparent(saga_id),
    });
    Ok(OrderMove {
        saga_id,
        becomes,
        by_refund,
        expect,
        status,
        failure,
        clear_refund,
        event: OrderEventRow {
            message_id: event.message_id(),
            topic: topics.orders_events.clone(),
            payload,
            headers,
        },
        order_no,
    })
}
