//! The outbox relay: publishes outbox rows to Kafka and deletes them once
//! the broker acknowledged them (`acks=all`, idempotent producer).
//!
//! A pass deletes its rows (`FOR UPDATE SKIP LOCKED`, so several relays
//! share the work without publishing a row twice in the common case) in a
//! transaction that commits only once the broker acknowledged every one of
//! them. A crash between the broker's ack and the commit publishes a batch
//! again: every consumer dedupes by message id, so that costs a duplicate
//! message, never a duplicate effect.
//!
//! A row Kafka refuses for good (over the size limit, or a record the
//! broker calls invalid) would otherwise fail every pass and hold up every
//! row behind it. Such a row moves to `outbox_dead` in the pass's
//! transaction, with Kafka's answer, and the rest of the batch commits as
//! published. The broker answers a produce request for all the rows
//! librdkafka put in it (one too large, or one invalid, fails its
//! neighbours too), so a pass that gets such an answer is rolled back and
//! run again one row at a time, each acknowledged before the next is sent:
//! only a row refused on its own is set aside, and the others go out in
//! outbox order (those the first try published go twice; consumers
//! dedupe). Anything else that fails a row (the broker is away, the topic
//! is unknown or not ours to write) fails the pass and puts the whole batch
//! back: it concerns every row alike, and publishing resumes by itself once
//! it is fixed.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult, Statement};
use tokio_util::sync::CancellationToken;

use crate::session::Session;
use crate::sql::all;
use crate::wake::{self, Wakeups};
use crate::{WorkerConfig, WorkerError};

/// Takes up to `$1` outbox rows, oldest first, skipping rows another relay
/// holds: deletes them, in the transaction that stays open while they are
/// published. If publishing fails the transaction rolls back and the rows
/// are there again; nobody else can take them meanwhile (they are locked).
/// One statement instead of a `SELECT … FOR UPDATE` and a `DELETE`.
const TAKE_SQL: &str = "\
DELETE FROM outbox WHERE id = ANY(ARRAY( \
    SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
RETURNING id, message_id, topic, key, payload, headers, created_at";

/// Sets aside a row Kafka refused for good, as it was in the outbox. A
/// message id already set aside (a step's retry writes its command again
/// under the same id) is the same message: the second copy is dropped
/// rather than failing the pass.
const QUARANTINE_SQL: &str = "\
INSERT INTO outbox_dead (id, message_id, topic, key, payload, headers, created_at, error) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (message_id) DO NOTHING";

/// Whether Kafka refused this message, alone, for what it is, so that
/// sending it again is refused again. Errors about the topic (unknown, not
/// authorised, an invalid name) are not: they concern every row for that
/// topic, and are fixed by configuration without anyone touching the rows.
fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// Whether the broker's answer may be about another message of the same
/// produce request: a batch over the topic's `max.message.bytes` fails as a
/// whole, and the records beside an invalid one fail with
/// `InvalidDifferentRecord`.
fn refused_with_its_request(e: &KafkaError) -> bool {
    refused_for_good(e)
        || matches!(
            e,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageBatchTooLarge | RDKafkaErrorCode::InvalidDifferentRecord
            )
        )
}

/// How a pass sends its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// All at once; librdkafka batches them into produce requests.
    Batched,
    /// Each acknowledged before the next is sent, so that the broker's
    /// answer is about that row alone.
    OneByOne,
}

/// What a pass did with its rows.
#[derive(Debug, Default)]
struct Outcome {
    /// Rows the broker acknowledged.
    published: usize,
    /// Rows it refused for good, by position in the batch, with its answer.
    refused: Vec<(usize, String)>,
    /// A produce request was refused in a way that may concern rows Kafka
    /// would take alone: the pass is to be run again one row at a time.
    split: bool,
}

/// Publishes one batch of up to `batch` rows; returns how many left the
/// outbox (published, or set aside).
pub async fn run_once(
    session: &mut Session,
    producer: &FutureProducer,
    batch: u32,
) -> Result<usize, WorkerError> {
    match pass(session, producer, batch, Mode::Batched).await? {
        Some(n) => Ok(n),
        None => {
            tracing::warn!(
                "Kafka refused a produce request that may hold rows it would take alone; \
                 publishing the batch again one row at a time"
            );
            Ok(pass(session, producer, batch, Mode::OneByOne)
                .await?
                .unwrap_or(0))
        }
    }
}

/// One pass in `mode`; `None` when it was rolled back to be run again one
/// row at a time.
async fn pass(
    session: &mut Session,
    producer: &FutureProducer,
    batch: u32,
    mode: Mode,
) -> Result<Option<usize>, WorkerError> {
    let tx = session.begin().await?;
    let mut rows = all(&tx, TAKE_SQL, [i64::from(batch).into()]).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Some(0));
    }
    // RETURNING keeps no order; publish in the outbox's.
    let mut keyed = Vec::with_capacity(rows.len());
    for r in rows.drain(..) {
        keyed.push((r.try_get::<i64>("", "id")?, r));
    }
    keyed.sort_unstable_by_key(|(id, _)| *id);
    let outcome = publish(producer, &keyed, mode).await;
    match outcome {
        Ok(outcome) if !outcome.split => {
            for (at, error) in &outcome.refused {
                let (id, row) = &keyed[*at];
                quarantine(&tx, *id, row, error).await?;
            }
            tx.commit().await?;
            Ok(Some(outcome.published + outcome.refused.len()))
        }
        result => {
            // Puts the rows back now rather than when the server notices a
            // closed connection, and keeps the connection: during a broker
            // outage every pass fails here.
            if let Err(r) = tx.rollback().await {
                tracing::debug!(error = %r, "rolling back an unpublished batch failed");
            }
            result.map(|_| None)
        }
    }
}

/// Writes a row the broker refused to `outbox_dead` (it is already gone
/// from `outbox`: the pass deleted it).
async fn quarantine(
    tx: &impl ConnectionTrait,
    id: i64,
    row: &QueryResult,
    error: &str,
) -> Result<(), WorkerError> {
    let message_id: uuid::Uuid = row.try_get("", "message_id")?;
    let topic: String = row.try_get("", "topic")?;
    let values = [
        id.into(),
        message_id.into(),
        topic.clone().into(),
        row.try_get::<String>("", "key")?.into(),
        row.try_get::<serde_json::Value>("", "payload")?.into(),
        row.try_get::<serde_json::Value>("", "headers")?.into(),
        row.try_get::<chrono::DateTime<chrono::FixedOffset>>("", "created_at")?
            .into(),
        error.into(),
    ];
    let written = tx
        .execute(Statement::from_sql_and_values(
            tx.get_database_backend(),
            QUARANTINE_SQL,
            values,
        ))
        .await?
        .rows_affected();
    if written == 1 {
        tracing::error!(
            outbox_id = id,
            %message_id,
            topic,
            error,
            "Kafka refused an outbox message for good; set aside in outbox_dead \
             (`sagaflow outbox list`, `sagaflow outbox requeue`)"
        );
    } else {
        tracing::warn!(
            outbox_id = id,
            %message_id,
            topic,
            error,
            "Kafka refused a copy of an outbox message already set aside; dropped it"
        );
    }
    Ok(())
}

/// Publishes `keyed` (outbox rows by id, in order) in `mode` and waits
/// for the broker's answer to every one.
async fn publish(
    producer: &FutureProducer,
    keyed: &[(i64, QueryResult)],
    mode: Mode,
) -> Result<Outcome, WorkerError> {
    let mut outcome = Outcome::default();
    let mut deliveries = Vec::with_capacity(keyed.len());
    for (at, (id, r)) in keyed.iter().enumerate() {
        let id = *id;
        let topic: String = r.try_get("", "topic")?;
        let key: String = r.try_get("", "key")?;
        let payload: serde_json::Value = r.try_get("", "payload")?;
        let headers: serde_json::Value = r.try_get("", "headers")?;
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let mut kafka_headers = OwnedHeaders::new();
        if let Some(map) = headers.as_object() {
            for (k, v) in map {
                let value = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                kafka_headers = kafka_headers.insert(Header {
                    key: k,
                    value: Some(value.as_bytes()),
                });
            }
        }
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&body)
            .headers(kafka_headers);
        match producer.send_result(record) {
            Ok(delivery) if mode == Mode::OneByOne => {
                answered(&mut outcome, (at, id, delivery), mode).await?
            }
            Ok(delivery) => deliveries.push((at, id, delivery)),
            // librdkafka checks each message's size before it queues it:
            // this answer is about this row alone.
            Err((e, _)) if refused_for_good(&e) => outcome.refused.push((at, e.to_string())),
            Err((e, _)) => return Err(WorkerError::kafka(format!("enqueue outbox row {id}"), e)),
        }
    }
    for sent in deliveries {
        answered(&mut outcome, sent, mode).await?;
    }
    Ok(outcome)
}

/// Waits for the broker's answer to one sent row and records it.
async fn answered(
    outcome: &mut Outcome,
    (at, id, delivery): (usize, i64, rdkafka::producer::DeliveryFuture),
    mode: Mode,
) -> Result<(), WorkerError> {
    match delivery.await {
        Ok(Ok(_)) => outcome.published += 1,
        Ok(Err((e, _))) if refused_with_its_request(&e) => match mode {
            // Alone in its request, the answer is about this row: even a
            // batch too large (a message over the topic's segment size).
            Mode::OneByOne => outcome.refused.push((at, e.to_string())),
            // Keep waiting for the others: the pass is rolled back and run
            // again only once nothing of it is in flight.
            Mode::Batched => outcome.split = true,
        },
        Ok(Err((e, _))) => return Err(WorkerError::kafka(format!("publish outbox row {id}"), e)),
        Err(_) => {
            return Err(WorkerError::kafka(
                format!("publish outbox row {id}"),
                KafkaError::Canceled,
            ))
        }
    }
    Ok(())
}

/// Relays until `shutdown`, woken by outbox notifications; a full batch
/// is followed by another pass at once, any other pass by the next at
/// least `cfg.pass_gap` after it began.
pub async fn run(
    db: DatabaseConnection,
    producer: FutureProducer,
    cfg: WorkerConfig,
    mut wakeups: Wakeups,
    shutdown: CancellationToken,
) {
    let pacer = wake::Pacer::new(cfg.pass_gap);
    let mut session = Session::new(&db);
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        wakeups.outbox.borrow_and_update();
        match run_once(&mut session, &producer, cfg.relay_batch).await {
            Ok(n) if n >= usize::try_from(cfg.relay_batch).unwrap_or(usize::MAX) => failures = 0,
            Ok(_) => {
                failures = 0;
                wake::wait(&mut wakeups.outbox, cfg.poll_interval, &shutdown).await;
                pacer.pace(&shutdown).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = retry_pause(failures, cfg.poll_interval);
                tracing::warn!(error = %e, retry_in = ?pause, "outbox relay pass failed; retrying");
                // Not woken by new outbox rows: while Kafka or Postgres
                // fails, every commit anywhere would otherwise start
                // another pass that takes and rolls back the same batch.
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// The pause after the `failures`-th failed pass in a row: half a second
/// (or the poll interval, if longer), doubling up to 5 s (or the poll
/// interval).
fn retry_pause(failures: u32, poll_interval: Duration) -> Duration {
    let first = poll_interval.max(Duration::from_millis(500));
    let most = poll_interval.max(Duration::from_secs(5));
    first
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_the_message_itself_sets_it_aside() {
        let production = KafkaError::MessageProduction;
        assert!(refused_for_good(&production(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(refused_for_good(&production(
            RDKafkaErrorCode::InvalidRecord
        )));
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(!refused_for_good(&production(code)), "{code:?}");
        }
        assert!(!refused_for_good(&KafkaError::Canceled));
        // The broker's answers that may be about a neighbour in the same
        // request split the pass; a topic's or the broker's trouble does not.
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidDifferentRecord,
        ] {
            assert!(refused_with_its_request(&production(code)), "{code:?}");
        }
        assert!(!refused_for_good(&production(
            RDKafkaErrorCode::InvalidDifferentRecord
        )));
        assert!(!refused_with_its_request(&production(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }

    #[test]
    fn a_failing_relay_backs_off_from_half_a_second_to_five() {
        let poll = Duration::from_millis(100);
        let pauses: Vec<u128> = (1..=6).map(|n| retry_pause(n, poll).as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(retry_pause(u32::MAX, poll), Duration::from_secs(5));
        // A poll interval longer than both bounds is the pause throughout.
        let slow = Duration::from_secs(30);
        assert_eq!(retry_pause(1, slow), slow);
        assert_eq!(retry_pause(9, slow), slow);
    }
}
