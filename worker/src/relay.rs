//! The outbox relay: publishes outbox rows to Kafka and deletes them once
//! the broker acknowledged them (`acks=all`, idempotent producer).
//!
//! Rows are locked with `FOR UPDATE SKIP LOCKED` for the length of one
//! publish, so several relays share the work without publishing a row
//! twice in the common case. A crash between the broker's ack and the
//! delete publishes a batch again: every consumer dedupes by message id,
//! so that costs a duplicate message, never a duplicate effect.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;

use crate::sql::{all, exec};
use crate::wake::{self, Wakeups};
use crate::{WorkerConfig, WorkerError};

/// Publishes one batch of up to `batch` rows; returns how many.
pub async fn run_once(
    db: &DatabaseConnection,
    producer: &FutureProducer,
    batch: u32,
) -> Result<usize, WorkerError> {
    let tx = db.begin().await?;
    let rows = all(
        &tx,
        "SELECT id, topic, key, payload, headers FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        [i64::from(batch).into()],
    )
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut deliveries = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get("", "id")?;
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
            Ok(Ok(_)) => ids.push(id),
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
    exec(
        &tx,
        "DELETE FROM outbox WHERE id = ANY($1)",
        [ids.clone().into()],
    )
    .await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Relays until `shutdown`, woken by outbox notifications; a full batch
/// is followed by another pass at once.
pub async fn run(
    db: DatabaseConnection,
    producer: FutureProducer,
    cfg: WorkerConfig,
    mut wakeups: Wakeups,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        wakeups.outbox.borrow_and_update();
        match run_once(&db, &producer, cfg.relay_batch).await {
            Ok(n) if n >= usize::try_from(cfg.relay_batch).unwrap_or(usize::MAX) => continue,
            Ok(_) => wake::wait(&mut wakeups.outbox, cfg.poll_interval, &shutdown).await,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay pass failed; retrying");
                wake::wait(
                    &mut wakeups.outbox,
                    cfg.poll_interval.max(Duration::from_millis(500)),
                    &shutdown,
                )
                .await;
            }
        }
    }
}
