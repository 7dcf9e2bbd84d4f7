//! How a saga is declared: ordered steps with actions, compensations,
//! retry policies and timeouts.

use std::time::Duration;

use crate::messages::CommandKind;
use crate::policy::RetryPolicy;

/// What a step (or its compensation) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Runs inside the engine's own Postgres transaction, named so that the
    /// worker can find its implementation.
    Local(&'static str),
    /// A command sent through Kafka to a participant, answered on the reply
    /// topic. The participant must treat a repeated command (same message
    /// id) as one.
    Remote(CommandKind),
}

/// How a completed (or possibly completed) step is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compensation {
    /// The undoing action. A remote compensation must be safe to run for a
    /// step whose effect never happened (e.g. a refund with no debit).
    pub action: Action,
    /// Retries of the compensation; when they run out the saga is FAILED
    /// and waits for an operator.
    pub retry: RetryPolicy,
    /// How long a remote compensation may stay unanswered.
    pub timeout: Duration,
}

/// One step of a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDef {
    /// Name shown in history and metrics.
    pub name: &'static str,
    /// The forward action.
    pub action: Action,
    /// How to undo it, if it has an effect to undo.
    pub compensation: Option<Compensation>,
    /// Retries of the forward action (timeouts and transient failures).
    pub retry: RetryPolicy,
    /// How long a remote action may stay unanswered before it counts as a
    /// failed attempt.
    pub timeout: Duration,
}

/// Local actions run in the transaction that moves a saga into a terminal
/// state, e.g. to mark the order PAID and publish `OrderPaid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks {
    /// Runs when every step succeeded.
    pub on_completed: Option<&'static str>,
    /// Runs when compensation finished after a failure.
    pub on_compensated: Option<&'static str>,
    /// Runs when compensation finished after an operator's cancel.
    pub on_cancelled: Option<&'static str>,
    /// Runs when compensation gave up.
    pub on_failed: Option<&'static str>,
}

/// A saga type at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDefinition {
    /// Stored as `saga_type` on every instance.
    pub name: &'static str,
    /// Stored as `definition_version`; an instance keeps the version it
    /// started with.
    pub version: u32,
    /// The steps, run in order; compensated in reverse order.
    pub steps: Vec<StepDef>,
    /// Terminal-state hooks.
    pub hooks: Hooks,
}

impl SagaDefinition {
    /// The step at `index`, if there is one.
    pub fn step(&self, index: u32) -> Option<&StepDef> {
        usize::try_from(index).ok().and_then(|i| self.steps.get(i))
    }

    /// Number of steps, as the engine counts them.
    pub fn len(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX)
    }

    /// Whether the saga has no steps at all.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}
