//! The dead-letter topic for operators: list what is parked there, and
//! replay messages to the topic they came from (after the bug that parked
//! them is fixed, say). Replaying is safe: every consumer dedupes by
//! message id, so a message that had in fact been applied changes nothing.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{KafkaConfig, Topics, WorkerError};

/// How long reading the dead-letter topic may wait for the broker.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A parked message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Where it sits in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Why it was parked.
    pub reason: String,
    /// The topic it came from.
    pub original_topic: String,
    /// `partition@offset` it had there.
    pub original_position: String,
    /// Set when this is a replayed message that was parked again.
    pub replayed_from: Option<String>,
    /// Its key, as text.
    pub key: String,
    /// Its payload, as (lossy) text.
    pub payload: String,
    /// Its headers other than the dead-letter ones, to be replayed with it.
    #[serde(skip)]
    headers: Vec<(String, Vec<u8>)>,
    #[serde(skip)]
    raw_key: Vec<u8>,
    #[serde(skip)]
    raw_payload: Vec<u8>,
}

fn header_text(headers: &[(String, Vec<u8>)], key: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Reads the whole dead-letter topic, oldest first per partition.
pub fn list(kafka: &KafkaConfig, topics: &Topics) -> Result<Vec<DeadLetter>, WorkerError> {
    let topic = topics.dead_letter.as_str();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        // Assigned, not subscribed: no group offsets are read or written.
        .set(
            "group.id",
            format!("{}sagaflow-dlq-reader", kafka.group_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("log_level", "4")
        .create()
        .map_err(|e| WorkerError::kafka("create dead-letter reader", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(|e| WorkerError::kafka(format!("metadata of {topic}"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, READ_TIMEOUT)
            .map_err(|e| WorkerError::kafka(format!("watermarks of {topic}/{p}"), e))?;
        if high > low {
            assignment
                .add_partition_offset(topic, *p, Offset::Offset(low))
                .map_err(|e| WorkerError::kafka("assign", e))?;
            ends.push((*p, high));
        }
    }
    let mut found = Vec::new();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| WorkerError::kafka(format!("assign {topic}"), e))?;
    let mut remaining = ends.clone();
    while !remaining.is_empty() {
        let msg = match consumer.poll(READ_TIMEOUT) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(WorkerError::kafka(format!("read {topic}"), e)),
            None => {
                return Err(WorkerError::Config(format!(
                    "{topic} stopped answering before its end"
                )))
            }
        };
        let headers: Vec<(String, Vec<u8>)> = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let text = |k: &str| header_text(&headers, k).unwrap_or_default();
        found.push(DeadLetter {
            partition: msg.partition(),
            offset: msg.offset(),
            reason: text("x-dlq-reason"),
            original_topic: text("x-dlq-original-topic"),
            original_position: format!(
                "{}@{}",
                text("x-dlq-original-partition"),
                text("x-dlq-original-offset")
            ),
            replayed_from: header_text(&headers, "x-dlq-replayed-from"),
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            payload: String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned(),
            headers: headers
                .iter()
                .filter(|(k, _)| !k.starts_with("x-dlq-"))
                .cloned()
                .collect(),
            raw_key: msg.key().unwrap_or_default().to_vec(),
            raw_payload: msg.payload().unwrap_or_default().to_vec(),
        });
        let (p, o) = (msg.partition(), msg.offset());
        remaining.retain(|(rp, high)| !(*rp == p && o + 1 >= *high));
    }
    found.sort_by_key(|d| (d.partition, d.offset));
    Ok(found)
}

/// Publishes `letters` again to the topics they came from, with their
/// original key and headers and an `x-dlq-replayed-from` header naming
/// their dead-letter position. Returns how many were sent; one that fails
/// stops the replay, and its error says how many went out before it.
pub async fn replay(kafka: &KafkaConfig, letters: &[DeadLetter]) -> Result<usize, WorkerError> {
    let producer = kafka.producer()?;
    let mut sent = 0;
    for d in letters {
        let from = format!("{}@{}", d.partition, d.offset);
        if d.original_topic.is_empty() {
            tracing::warn!(at = %from, "a dead letter without x-dlq-original-topic; not replayed");
            continue;
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in &d.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        headers = headers.insert(Header {
            key: "x-dlq-replayed-from",
            value: Some(from.as_bytes()),
        });
        producer
            .send(
                FutureRecord::to(&d.original_topic)
                    .key(&d.raw_key)
                    .payload(&d.raw_payload)
                    .headers(headers),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| {
                // The ones before it went out: say so, or an operator who
                // reruns the replay cannot tell what it would send twice.
                WorkerError::kafka(
                    format!("replay {from} (the {sent} before it in this replay were published)"),
                    e,
                )
            })?;
        sent += 1;
    }
    Ok(sent)
}
