//! sagaflow's runtime: everything that moves sagas along.
//!
//! - [`claim`]: the worker pool. Locks a batch of due sagas with `SELECT …
//!   FOR UPDATE SKIP LOCKED` and advances all of them in that transaction
//!   (a batch that fails is redone saga by saga under leases). Due sagas
//!   are deadlines, retries, compensations, operator requests and sagas
//!   started due; an order's payment saga makes its first transition in
//!   the API's placing statement and is not claimed on its happy path.
//! - [`relay`]: the outbox relay, publishing outbox rows to Kafka with an
//!   idempotent producer and deleting them once acknowledged.
//! - [`participant`]: the funds participant, applying debit and refund
//!   commands exactly once (inbox + ledger uniqueness) and replying through
//!   the outbox.
//! - [`replies`]: the reply consumer, correlating replies to sagas and
//!   advancing them.
//! - [`maintenance`]: the retention job (finished sagas to the archive
//!   tables) and the inbox trim.
//!
//! Guarantees: a state change and the messages it causes commit in one
//! Postgres transaction; every consumer records the message id in its inbox
//! in the transaction of the effect; Kafka offsets are committed only after
//! that transaction committed. Nothing is held only in memory: a process
//! can die at any instruction and another one picks up from the tables.

pub mod claim;
pub mod consumer;
pub mod dlq;
mod executor;
pub mod kafka;
pub mod local;
pub mod maintenance;
pub mod participant;
pub mod relay;
pub mod replies;
pub mod session;
mod sql;
pub mod wake;

use std::time::Duration;

pub use kafka::{KafkaConfig, KafkaProbe};
pub use local::{ActionFuture, Actions, LocalAction, LocalContext};
pub use sagaflow_workflows::messages::Topics;

/// Settings of the worker-side roles.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This process's identity, written as the lease owner.
    pub worker_id: String,
    /// Concurrent claim loops in this process.
    pub workers: usize,
    /// Most sagas one claim takes.
    pub claim_batch: u32,
    /// How long a claim is exclusively this worker's; after that another
    /// worker may take the saga over.
    pub lease: Duration,
    /// Longest wait between two claims (or relay passes) when no
    /// notification arrives; bounds the delay of timers (retries,
    /// deadlines).
    pub poll_interval: Duration,
    /// Shortest time between the starts of two claim passes (all of the
    /// process's claim loops together) or two relay passes, unless the
    /// earlier pass was full: what arrives in between joins the next pass.
    /// A pass after a quiet spell starts at once. Zero: no spacing.
    pub pass_gap: Duration,
    /// Most outbox rows one relay pass publishes.
    pub relay_batch: u32,
    /// Topic names.
    pub topics: Topics,
    /// The saga definitions, with the configured tuning applied.
    pub registry: std::sync::Arc<sagaflow_workflows::Registry>,
    /// The local steps and hooks those definitions name.
    pub actions: std::sync::Arc<local::Actions>,
    /// Where this process announces that it wrote outbox rows.
    pub announcer: wake::Announcer,
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Postgres refused or failed a statement.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// Kafka refused or failed an operation.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Another writer changed the saga since it was read (a stale lease, or
    /// a reply that got there first). Nothing was written.
    #[error("saga {saga_id} changed under us (expected version {version})")]
    StaleSaga {
        /// The saga.
        saga_id: uuid::Uuid,
        /// The version this writer expected.
        version: i64,
    },
    /// A row holds something the code cannot interpret.
    #[error("saga {saga_id}: {reason}")]
    Corrupt {
        /// The saga.
        saga_id: uuid::Uuid,
        /// What is wrong.
        reason: String,
    },
    /// The worker was set up inconsistently (e.g. a definition names a
    /// local action nobody registered).
    #[error("configuration: {0}")]
    Config(String),
    /// Listening for Postgres notifications failed.
    #[error("listen: {0}")]
    Listen(#[from] sqlx::Error),
}

impl WorkerError {
    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        WorkerError::Kafka {
            context: context.into(),
            source,
        }
    }

    /// Whether doing the same again cannot succeed: the data is the
    /// problem (a saga or order in a state the engine refuses to advance
    /// from, a value Postgres rejects: SQLSTATE classes 22 and 23), not a
    /// connection, a broker or a race.
    pub fn is_permanent(&self) -> bool {
        match self {
            WorkerError::Corrupt { .. } | WorkerError::Config(_) => true,
            WorkerError::Db(e) => sagaflow_entity::server_error(e)
                .and_then(|e| e.code())
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
            _ => false,
        }
    }
}
