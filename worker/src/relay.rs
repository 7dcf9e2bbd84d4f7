//! The outbox relay: publishes outbox rows to Kafka and deletes them once
//! the broker acknowledged them (`acks=all`, idempotent producer).
//!
//! A pass deletes its rows (`FOR UPDATE SKIP LOCKED`, so several relays
//! share the work without publishing a row twice in the common case) in a
//! transaction that commits only once the broker acknowledged every one of
//! them. A crash between the broker's ack and the commit publishes a batch
//! again: every consumer dedupes by message id, so that costs a duplicate
//! message, never a duplicate effect.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::DatabaseConnection;
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
RETURNING id, topic, key, payload, headers";

/// Publishes one batch of up to `batch` rows; returns how many.
pub async fn run_once(
    session: &mut Session,
    producer: &FutureProducer,
    batch: u32,
) -> Result<usize, WorkerError> {
    let tx = session.begin().await?;
    let mut rows = all(&tx, TAKE_SQL, [i64::from(batch).into()]).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    // RETURNING keeps no order; publish in the outbox's.
    let mut keyed = Vec::with_capacity(rows.len());
    for r in rows.drain(..) {
        keyed.push((r.try_get::<i64>("", "id")?, r));
    }
    keyed.sort_unstable_by_key(|(id, _)| *id);
    match publish(producer, &keyed).await {
        Ok(published) => {
            tx.commit().await?;
            Ok(published)
        }
        Err(e) => {
            // Puts the rows back now rather than when the server notices a
            // closed connection, and keeps the connection: during a broker
            // outage every pass fails here.
            if let Err(r) = tx.rollback().await {
                tracing::debug!(error = %r, "rolling back an unpublished batch failed");
            }
            Err(e)
        }
    }
}

/// Publishes `keyed` (outbox rows by id, in order) and waits for the
/// broker's acknowledgement of every one; returns how many.
async fn publish(
    producer: &FutureProducer,
    keyed: &[(i64, sea_orm::QueryResult)],
) -> Result<usize, WorkerError> {
    let mut published = 0;
    let mut deliveries = Vec::with_capacity(keyed.len());
    for (id, r) in keyed {
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
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| WorkerError::kafka(format!("enqueue outbox row {id}"), e))?;
        deliveries.push((id, delivery));
    }
    for (id, d) in deliveries {
        match d.await {
            Ok(Ok(_)) => published += 1,
            Ok(Err((e, _))) => {
                return Err(WorkerError::kafka(format!("publish outbox row {id}"), e))
            }
            Err(_) => {
                return Err(WorkerError::kafka(
                    format!("publish outbox row {id}"),
                    rdkafka::error::KafkaError::Canceled,
                ))
            }
        }
    }
    Ok(published)
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
