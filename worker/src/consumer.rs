//! The loop every Kafka consumer of sagaflow shares: receive, apply in a
//! Postgres transaction (the handler's job), and only then commit the
//! offset. A message that cannot be parsed goes to the dead-letter topic
//! with the reason in its headers, and the consumer moves on. A message
//! whose transaction fails for a transient reason is retried in place, so
//! nothing behind it is committed before it.

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::kafka::LagContext;
use crate::WorkerError;

/// What a handler did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Its effect committed.
    Applied,
    /// Its id was already in the inbox: nothing to do.
    Duplicate,
    /// It cannot be processed, ever: park it in the dead-letter topic.
    DeadLetter(String),
}

/// Consumes `topic` until `shutdown`, applying each message with `handle`.
pub(crate) async fn run<F, Fut>(
    consumer: StreamConsumer<LagContext>,
    topic: String,
    dead_letter: String,
    producer: FutureProducer,
    shutdown: CancellationToken,
    handle: F,
) -> Result<(), WorkerError>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Handled, WorkerError>>,
{
    consumer
        .subscribe(&[&topic])
        .map_err(|e| WorkerError::kafka(format!("subscribe {topic}"), e))?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "kafka receive failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let payload = msg.payload().map(<[u8]>::to_vec).unwrap_or_default();
        // Continue the producer's trace: the span carries its trace id, and
        // whatever the handler logs or sends inherits it.
        let trace_id = header(&msg, "traceparent")
            .and_then(|tp| tp.split('-').nth(1).map(str::to_owned))
            .unwrap_or_default();
        let span = tracing::info_span!("consume", %topic, partition = msg.partition(), offset = msg.offset(), trace_id = %trace_id);
        let mut backoff = Duration::from_millis(50);
        let outcome = loop {
            match handle(payload.clone()).instrument(span.clone()).await {
                Ok(h) => break Some(h),
                Err(e) => {
                    tracing::warn!(%topic, partition = msg.partition(), offset = msg.offset(), error = %e,
                        "applying message failed; retrying it before anything behind it");
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let Some(outcome) = outcome else { break };
        if let Handled::DeadLetter(reason) = &outcome {
            dead_letter_publish(&producer, &dead_letter, &msg, reason, &shutdown).await;
        }
        if let Err(e) = consumer.commit_message(&msg, CommitMode::Async) {
            // The effect is committed and deduped by the inbox, so a lost
            // offset commit only means a harmless redelivery.
            tracing::warn!(%topic, error = %e, "offset commit failed");
        }
    }
    // Flush offsets of what was applied before leaving the group.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(%topic, error = %e, "final offset commit");
    }
    Ok(())
}

/// A header's value as text.
fn header(msg: &BorrowedMessage<'_>, key: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

async fn dead_letter_publish(
    producer: &FutureProducer,
    dead_letter: &str,
    msg: &BorrowedMessage<'_>,
    reason: &str,
    shutdown: &CancellationToken,
) {
    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), %reason,
        "message moved to the dead-letter topic");
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "x-dlq-reason",
            value: Some(reason.as_bytes()),
        })
        .insert(Header {
            key: "x-dlq-original-topic",
            value: Some(msg.topic().as_bytes()),
        })
        .insert(Header {
            key: "x-dlq-original-partition",
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: "x-dlq-original-offset",
            value: Some(offset.as_bytes()),
        });
    if let Some(h) = msg.headers() {
        for i in 0..h.count() {
            let header = h.get(i);
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let payload = msg.payload().unwrap_or_default();
    let key = msg.key().unwrap_or_default();
    // Parking the message must not be skipped, or it would be lost once the
    // offset moves on: retry until the broker takes it.
    loop {
        let record = FutureRecord::to(dead_letter)
            .payload(payload)
            .key(key)
            .headers(headers.clone());
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(error = %e, "publishing to the dead-letter topic failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}
