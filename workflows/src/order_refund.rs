//! The after-sale refund of a PAID order: credit the amount back to the
//! buyer through the funds participant; the order becomes REFUNDED.
//!
//! The credit has a compensation although a refund is rarely undone: if
//! every attempt goes unanswered the saga cannot know whether the credit
//! happened, so it sends `funds.credit_void`, which takes a credit that did
//! happen back (if the money is still there) and fences one that did not,
//! so that a late credit cannot land after the saga gave up. The order then
//! stays PAID and may be refunded again.

use std::sync::OnceLock;
use std::time::Duration;

use crate::definition::{Action, Compensation, Hooks, SagaDefinition, StepDef};
use crate::messages::CommandKind;
use crate::policy::RetryPolicy;

/// `saga_type` of refund instances.
pub const SAGA_TYPE: &str = "order_refund";
/// Current definition version; new instances start at it.
pub const VERSION: u32 = 1;

/// Local hook: order REFUNDED and `OrderRefunded` to `orders.events`.
pub const HOOK_MARK_REFUNDED: &str = "order.mark_refunded";
/// Local hook: the refund was undone; the order stays PAID, may be
/// refunded again, and `OrderRefundFailed` goes to `orders.events`.
pub const HOOK_REFUND_ABANDONED: &str = "order.refund_abandoned";

/// The refund definition, version [`VERSION`], with its built-in policies.
pub fn definition() -> &'static SagaDefinition {
    static DEF: OnceLock<SagaDefinition> = OnceLock::new();
    DEF.get_or_init(|| SagaDefinition {
        name: SAGA_TYPE,
        version: VERSION,
        steps: vec![StepDef {
            name: "credit",
            action: Action::Remote(CommandKind::FundsCredit),
            compensation: Some(Compensation {
                action: Action::Remote(CommandKind::FundsCreditVoid),
                retry: RetryPolicy {
                    max_attempts: 10,
                    initial_backoff: Duration::from_millis(500),
                    max_backoff: Duration::from_secs(60),
                },
                timeout: Duration::from_secs(30),
            }),
            // A refund is owed: try for a good while before giving up.
            retry: RetryPolicy {
                max_attempts: 8,
                initial_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(30),
            },
            timeout: Duration::from_secs(30),
        }],
        hooks: Hooks {
            on_completed: Some(HOOK_MARK_REFUNDED),
            on_compensated: Some(HOOK_REFUND_ABANDONED),
            on_cancelled: Some(HOOK_REFUND_ABANDONED),
            on_failed: None,
        },
    })
}
