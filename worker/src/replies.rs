//! The reply consumer: applies participants' replies to their sagas.
//!
//! In one transaction: the reply's id goes into the inbox (a duplicate
//! stops here), the saga row is locked, and the state machine decides; a
//! reply for an older attempt or a finished step is recorded as ignored and
//! changes nothing.

use rdkafka::producer::FutureProducer;
use sagaflow_entity::saga_instance;
use sagaflow_workflows::machine::Event;
use sagaflow_workflows::messages::ReplyEnvelope;
use sea_orm::{DatabaseConnection, EntityTrait, TransactionTrait};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::{self, Handled};
use crate::kafka::KafkaConfig;
use crate::sql::{inbox_insert, stmt};
use crate::{executor, WorkerConfig, WorkerError};

/// Inbox name of the reply consumer.
pub const CONSUMER: &str = "saga-replies";
/// Consumer group (after the configured prefix).
pub const GROUP: &str = "sagaflow-replies";

/// Applies one `saga.replies` message.
pub async fn handle(
    db: &DatabaseConnection,
    cfg: &WorkerConfig,
    payload: &[u8],
) -> Result<Handled, WorkerError> {
    let reply: ReplyEnvelope = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return Ok(Handled::DeadLetter(format!("not a saga reply: {e}"))),
    };
    let tx = db.begin().await?;
    let inserted = inbox_insert(&tx, CONSUMER, reply.message_id).await?;
    if !inserted {
        tx.commit().await?;
        return Ok(Handled::Duplicate);
    }
    let row = saga_instance::Entity::find()
        .from_raw_sql(stmt(
            "SELECT * FROM saga_instances WHERE id = $1 FOR UPDATE",
            [reply.saga_id.into()],
        ))
        .one(&tx)
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(Handled::DeadLetter(format!(
            "reply for unknown saga {}",
            reply.saga_id
        )));
    };
    let span = tracing::info_span!("saga_reply", saga_id = %row.id, saga_type = %row.saga_type,
        order_no = executor::order_no(&row), step = reply.step, attempt = reply.attempt);
    let event = Event::Reply {
        epoch: reply.epoch,
        step: reply.step,
        attempt: reply.attempt,
        compensation: reply.compensation,
        outcome: reply.outcome.into(),
    };
    // The row was last written when the command went out (the saga has
    // waited since), so this is the step's round trip.
    let waited = (row.deadline.is_some())
        .then(|| {
            (chrono::Utc::now() - row.updated_at.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .flatten();
    async {
        let advanced = executor::advance(&tx, cfg, &row, event, CONSUMER).await?;
        tx.commit().await?;
        advanced.observe(&row.saga_type, row.current_step, waited);
        Ok::<_, WorkerError>(())
    }
    .instrument(span)
    .await?;
    Ok(Handled::Applied)
}

/// Consumes `saga.replies` until `shutdown`.
pub async fn run(
    db: DatabaseConnection,
    kafka: KafkaConfig,
    producer: FutureProducer,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let consumer = kafka.consumer(GROUP)?;
    let topic = cfg.topics.saga_replies.clone();
    let dlq = cfg.topics.dead_letter.clone();
    consumer::run(consumer, topic, dlq, producer, shutdown, |payload| {
        let db = db.clone();
        let cfg = cfg.clone();
        async move { handle(&db, &cfg, &payload).await }
    })
    .await
}
