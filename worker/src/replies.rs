//! The reply consumer: applies participants' replies to their sagas.
//!
//! In one transaction per batch of replies: the batch's saga rows are
//! locked and the replies' ids go into the inbox, in one statement (a
//! duplicate stops here), the state machine decides for each reply in
//! turn, and at the end the orders the sagas' hooks move are moved in one
//! call and every new state, history row and command is written in one
//! statement. A reply
//! for a finished step or the other direction is recorded as ignored and
//! changes nothing. A reply its saga refuses for good (its order was
//! moved behind the saga's back, say) is parked in the dead-letter topic by
//! the consume loop rather than holding up the replies behind it.

use std::collections::{HashMap, HashSet};

use rdkafka::producer::FutureProducer;
use sagaflow_entity::saga_instance;
use sagaflow_workflows::machine::Event;
use sagaflow_workflows::messages::ReplyEnvelope;
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::{self, Handled, Incoming};
use crate::kafka::KafkaConfig;
use crate::session::{Session, Tx};
use crate::sql::{all, inbox_insert, stmt};
use crate::{executor, WorkerConfig, WorkerError};

/// Inbox name of the reply consumer.
pub const CONSUMER: &str = "saga-replies";
/// Consumer group (after the configured prefix).
pub const GROUP: &str = "sagaflow-replies";
/// Most replies applied in one transaction.
const BATCH: usize = 64;

/// Locks the sagas a batch of replies is about, in id order, before the
/// batch touches any of them, and records in the inbox the replies whose
/// saga it locked, in the same round trip. A claim loop never waits for a
/// saga row (it skips locked ones; its lease fallback locks in id order
/// too), so the two can wait for each other but never deadlock.
/// The rows it returns are what the batch's first reply for each saga
/// advances from, so no reply reads its saga a second time; each carries
/// `fresh`, the message ids the inbox had not seen.
///
/// `$1` the saga ids; `$2` the inbox's consumer; `$3`/`$4` each reply's
/// message and saga id; message ids are inserted in order (two consumers
/// recording overlapping batches in a rebalance queue rather than
/// deadlock), each once. Why one
/// statement is safe: the rows are locked before the inbox is written,
/// and a reply another transaction is applying waits on its saga's lock,
/// which hands over the row as that transaction left it (`FOR UPDATE`
/// rereads it), and then finds its message id taken.
const LOCK_SQL: &str = "\
WITH locked AS (SELECT * FROM saga_instances WHERE id = ANY($1) ORDER BY id FOR UPDATE), \
recorded AS ( \
    INSERT INTO inbox (consumer, message_id) \
    SELECT DISTINCT $2::text, r.message_id FROM unnest($3::uuid[], $4::uuid[]) AS r(message_id, saga_id) \
    WHERE r.saga_id IN (SELECT id FROM locked) ORDER BY r.message_id \
    ON CONFLICT DO NOTHING RETURNING message_id) \
SELECT locked.*, ARRAY(SELECT message_id FROM recorded) AS fresh FROM locked";

/// Runs [`LOCK_SQL`]: the locked sagas by id, and the message ids of
/// `replies` (message id, saga id) that the inbox recorded as new.
async fn lock_and_record(
    tx: &Tx<'_>,
    saga_ids: Vec<uuid::Uuid>,
    replies: Vec<(uuid::Uuid, uuid::Uuid)>,
) -> Result<
    (
        HashMap<uuid::Uuid, saga_instance::Model>,
        HashSet<uuid::Uuid>,
    ),
    WorkerError,
> {
    if saga_ids.is_empty() {
        return Ok((HashMap::new(), HashSet::new()));
    }
    let (message_ids, reply_sagas): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) =
        replies.into_iter().unzip();
    let rows = all(
        tx,
        LOCK_SQL,
        [
            saga_ids.into(),
            CONSUMER.into(),
            message_ids.into(),
            reply_sagas.into(),
        ],
    )
    .await?;
    let fresh = match rows.first() {
        Some(r) => r.try_get::<Vec<uuid::Uuid>>("", "fresh")?,
        None => Vec::new(),
    };
    let locked = rows
        .iter()
        .map(|r| saga_instance::Model::from_query_result(r, "").map(|row| (row.id, row)))
        .collect::<Result<_, _>>()?;
    Ok((locked, fresh.into_iter().collect()))
}

/// What to count once a batch committed.
type Observed = Vec<(executor::Advanced, String, i32, Option<std::time::Duration>)>;

/// Applies a batch of `saga.replies` messages in one transaction, in order.
pub async fn handle_batch(
    session: &mut Session,
    cfg: &WorkerConfig,
    batch: Vec<Incoming>,
) -> Result<Vec<Handled>, WorkerError> {
    let parsed: Vec<Result<ReplyEnvelope, String>> = batch
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).map_err(|e| format!("not a saga reply: {e}")))
        .collect();
    let mut ids: Vec<uuid::Uuid> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|r| r.saga_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let replies: Vec<(uuid::Uuid, uuid::Uuid)> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|r| (r.message_id, r.saga_id)))
        .collect();
    let tx = session.begin().await?;
    let (mut locked, fresh) = lock_and_record(&tx, ids, replies).await?;
    // A reply to a saga that is not here (archived, unknown) is recorded,
    // if at all, on its own.
    let recorded: HashSet<uuid::Uuid> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .filter(|r| locked.contains_key(&r.saga_id))
        .map(|r| r.message_id)
        .collect();
    let mut inbox = Inbox { fresh, recorded };
    let mut handled = Vec::with_capacity(batch.len());
    let mut observed = Observed::new();
    let mut writes = Pending::default();
    for (m, reply) in batch.into_iter().zip(parsed) {
        handled.push(match reply {
            Err(reason) => Handled::DeadLetter(reason),
            Ok(reply) => {
                apply(
                    &tx,
                    cfg,
                    reply,
                    &mut locked,
                    &mut inbox,
                    &mut writes,
                    &mut observed,
                )
                .instrument(m.span)
                .await?
            }
        });
    }
    writes.writes.flush(&tx).await?;
    tx.commit().await?;
    for (advanced, saga_type, step, waited) in observed {
        advanced.observe(&saga_type, step, waited);
    }
    Ok(handled)
}

/// The new states, history rows and commands of the sagas this batch
/// advanced, written in one statement when the batch ends: one round trip
/// per batch, not one per reply.
#[derive(Debug, Default)]
struct Pending {
    writes: executor::Writes,
    /// The sagas with writes queued.
    sagas: HashSet<uuid::Uuid>,
}

impl Pending {
    /// Writes what is queued if `saga_id` is among it, so that a second
    /// reply for a saga in one batch reads what the first one wrote.
    async fn settle_for(&mut self, tx: &Tx<'_>, saga_id: uuid::Uuid) -> Result<(), WorkerError> {
        if self.sagas.contains(&saga_id) {
            self.writes.flush(tx).await?;
            self.sagas.clear();
        }
        Ok(())
    }
}

/// The batch's inbox marks: which message ids the batch recorded up front,
/// and which of those were new.
struct Inbox {
    recorded: HashSet<uuid::Uuid>,
    fresh: HashSet<uuid::Uuid>,
}

impl Inbox {
    /// Whether `message_id` is seen here for the first time (only the first
    /// of a batch's copies of a message is).
    async fn first(&mut self, tx: &Tx<'_>, message_id: uuid::Uuid) -> Result<bool, WorkerError> {
        if self.recorded.contains(&message_id) {
            return Ok(self.fresh.remove(&message_id));
        }
        Ok(inbox_insert(tx, CONSUMER, message_id).await?)
    }
}

async fn apply(
    tx: &Tx<'_>,
    cfg: &WorkerConfig,
    reply: ReplyEnvelope,
    locked: &mut HashMap<uuid::Uuid, saga_instance::Model>,
    inbox: &mut Inbox,
    pending: &mut Pending,
    observed: &mut Observed,
) -> Result<Handled, WorkerError> {
    // The locked row, as read, until a reply of this batch advanced the
    // saga; a later reply for it reads what that one wrote.
    let row = match locked.remove(&reply.saga_id) {
        Some(row) => Some(row),
        None => {
            pending.settle_for(tx, reply.saga_id).await?;
            saga_instance::Entity::find()
                .from_raw_sql(stmt(
                    "SELECT * FROM saga_instances WHERE id = $1 FOR UPDATE",
                    [reply.saga_id.into()],
                ))
                .one(tx)
                .await?
        }
    };
    let Some(row) = row else {
        // A late reply to a saga the retention job archived: the saga was
        // finished long ago, so the reply changes nothing, like any reply
        // to a finished saga.
        if tx
            .query_one(stmt(
                "SELECT 1 FROM saga_instances_archive WHERE id = $1",
                [reply.saga_id.into()],
            ))
            .await?
            .is_some()
        {
            tracing::info!(saga_id = %reply.saga_id, "reply for an archived saga ignored");
            return Ok(Handled::Duplicate);
        }
        return Ok(Handled::DeadLetter(format!(
            "reply for unknown saga {}",
            reply.saga_id
        )));
    };
    if !inbox.first(tx, reply.message_id).await? {
        return Ok(Handled::Duplicate);
    }
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
    let advanced = executor::advance_into(tx, cfg, &row, event, CONSUMER, &mut pending.writes)
        .instrument(span)
        .await?;
    pending.sagas.insert(row.id);
    observed.push((advanced, row.saga_type.clone(), row.current_step, waited));
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
    let session = tokio::sync::Mutex::new(Session::new(&db));
    consumer::run(consumer, topic, dlq, producer, shutdown, BATCH, |batch| {
        let (session, cfg) = (&session, &cfg);
        async move {
            let handled = handle_batch(&mut *session.lock().await, cfg, batch).await?;
            crate::consumer::announce_outbox(&cfg.announcer, &handled);
            Ok(handled)
        }
    })
    .await
}
