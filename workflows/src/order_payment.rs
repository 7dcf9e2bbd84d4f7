//! The order-payment saga: debit the buyer's account through the funds
//! participant; on success the order is PAID, on refusal it is FAILED, and
//! any debit that may have happened is refunded before that.

use std::sync::OnceLock;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::definition::{Action, Compensation, Hooks, SagaDefinition, StepDef};
use crate::messages::CommandKind;
use crate::policy::RetryPolicy;

/// `saga_type` of order-payment instances.
pub const SAGA_TYPE: &str = "order_payment";
/// Current definition version; new instances start at it.
pub const VERSION: u32 = 1;

/// Local hook: order PAID and `OrderPaid` to `orders.events`.
pub const HOOK_MARK_PAID: &str = "order.mark_paid";
/// Local hook: order FAILED and `OrderFailed` to `orders.events`.
pub const HOOK_MARK_FAILED: &str = "order.mark_failed";
/// Local hook: order CANCELLED and `OrderCancelled` to `orders.events`.
pub const HOOK_MARK_CANCELLED: &str = "order.mark_cancelled";

/// The input of the order sagas (payment and refund), stored as
/// `saga_instances.data`; the funds commands carry its account and amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderData {
    /// The order being paid or refunded.
    pub order_no: String,
    /// The buyer, whose account is debited or credited.
    pub user_id: i64,
    /// The order's amount.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Why a refund was asked for; absent for payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The order-payment definition, version [`VERSION`], with its built-in
/// policies.
pub fn definition() -> &'static SagaDefinition {
    static DEF: OnceLock<SagaDefinition> = OnceLock::new();
    DEF.get_or_init(|| SagaDefinition {
        name: SAGA_TYPE,
        version: VERSION,
        steps: vec![StepDef {
            name: "debit",
            action: Action::Remote(CommandKind::FundsDebit),
            compensation: Some(Compensation {
                action: Action::Remote(CommandKind::FundsRefund),
                retry: RetryPolicy {
                    max_attempts: 10,
                    initial_backoff: Duration::from_millis(500),
                    max_backoff: Duration::from_secs(60),
                },
                timeout: Duration::from_secs(30),
            }),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(10),
            },
            timeout: Duration::from_secs(30),
        }],
        hooks: Hooks {
            on_completed: Some(HOOK_MARK_PAID),
            on_compensated: Some(HOOK_MARK_FAILED),
            on_cancelled: Some(HOOK_MARK_CANCELLED),
            on_failed: None,
        },
    })
}
