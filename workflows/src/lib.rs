//! The saga engine's pure core.
//!
//! Nothing in this crate does I/O. A saga is a [`SagaDefinition`]: ordered
//! steps, each with an action, an optional compensation, a retry policy and a
//! timeout. [`transition`] takes an instance's state, an [`Event`] and the
//! current time and returns the next state, the [`Effect`]s to carry out and
//! the history to record. The worker (`sagaflow-worker`) reads a row, calls
//! `transition`, and writes the result and the effects (outbox rows, local
//! steps) in one Postgres transaction; the property tests in
//! `tests/machine_props.rs` drive it with random event sequences.
//!
//! Also here because they are pure and shared by the API and the worker: the
//! wire format of every Kafka message ([`messages`]) and money parsing
//! ([`money`]).

pub mod definition;
pub mod machine;
pub mod messages;
pub mod money;
pub mod order_payment;
pub mod order_refund;
pub mod policy;
pub mod registry;

pub use definition::{Action, Compensation, Hooks, SagaDefinition, StepDef};
pub use machine::{start, transition, Effect, Event, Instance, Record, RecordKind, Transition};
pub use policy::RetryPolicy;
pub use registry::{Registry, StepTuning, Tuning, TuningError};
