//! Local actions: steps and hooks that run inside the engine's own
//! transaction. The order sagas' hooks live here because they write the
//! `orders` table and `orders.events` through the outbox.

use sagaflow_entity::saga_instance;
use sagaflow_workflows::machine::Outcome;
use sagaflow_workflows::messages::{OrderEvent, Topics};
use sagaflow_workflows::order_payment::{
    OrderData, HOOK_MARK_CANCELLED, HOOK_MARK_FAILED, HOOK_MARK_PAID,
};
use sagaflow_workflows::order_refund::{HOOK_MARK_REFUNDED, HOOK_REFUND_ABANDONED};
use sagaflow_workflows::SagaDefinition;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use crate::sql::{exec, outbox_insert, traceparent};
use crate::WorkerError;

/// Runs a local step. No saga declares one yet; an unknown name is a
/// definition/runtime mismatch and fails the transaction.
pub(crate) async fn run_step<C: ConnectionTrait>(
    _db: &C,
    def: &SagaDefinition,
    action: &str,
    row: &saga_instance::Model,
    _data: &OrderData,
) -> Result<Outcome, WorkerError> {
    Err(WorkerError::Corrupt {
        saga_id: row.id,
        reason: format!(
            "{} v{} names unknown local step {action}",
            def.name, def.version
        ),
    })
}

/// Runs a terminal hook.
pub(crate) async fn run_hook<C: ConnectionTrait>(
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
            "UPDATE orders SET status = $1, failure_reason = $2, updated_at = now() \
             WHERE order_no = $3 AND saga_id = $4 AND status = 'PENDING'",
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
                    "UPDATE orders SET status = 'REFUNDED', updated_at = now() \
                     WHERE order_no = $1 AND refund_saga_id = $2 AND status = 'PAID'",
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
                    "UPDATE orders SET refund_saga_id = NULL, updated_at = now() \
                     WHERE order_no = $1 AND refund_saga_id = $2 AND status = 'PAID'",
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
    let res = exec(db, sql, values).await?;
    if res.rows_affected() != 1 {
        return Err(WorkerError::Corrupt {
            saga_id,
            reason: format!(
                "order {} is not in the status this saga expects; refusing to mark it {status}",
                data.order_no
            ),
        });
    }
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
    outbox_insert(
        db,
        event.message_id(),
        &topics.orders_events,
        event.order_no(),
        payload,
        headers,
    )
    .await?;
    Ok(())
}
