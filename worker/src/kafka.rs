//! Kafka clients as sagaflow configures them: an idempotent producer with
//! `acks=all`, consumers with manual offset commits, topic creation at
//! start-up, and a readiness probe.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Statistics};

use crate::{Topics, WorkerError};

/// How to reach and use the Kafka cluster.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Prefix of every consumer group id (lets tests and tenants share a
    /// cluster).
    pub group_prefix: String,
    /// Partitions of each topic sagaflow creates.
    pub partitions: i32,
    /// Replication factor of each topic sagaflow creates.
    pub replication: i32,
    /// Consumer `session.timeout.ms`: how fast a dead consumer's partitions
    /// move to a live one.
    pub session_timeout: Duration,
    /// Consumer `max.poll.interval.ms`: how long a consumer may go without
    /// polling before librdkafka leaves the group for it.
    pub max_poll_interval: Duration,
    /// Producer `linger.ms`: how long the producer waits to fill a batch.
    pub linger: Duration,
    /// Consumer `auto.commit.interval.ms`: how often the offsets stored
    /// for applied messages are committed.
    pub commit_interval: Duration,
    /// Consumer `fetch.wait.max.ms`: the longest the broker holds a fetch
    /// that has less than `fetch_min_bytes` to return.
    pub fetch_wait: Duration,
    /// Consumer `fetch.min.bytes`: how much a fetch waits for (up to
    /// `fetch_wait`) before the broker answers it.
    pub fetch_min_bytes: u32,
}

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", "sagaflow")
            // librdkafka's own logs go through the `log` crate; keep them quiet
            // unless something is wrong.
            .set("log_level", "4");
        c
    }

    /// The producer every role shares: idempotent, `acks=all`, and a
    /// short linger (see `SAGAFLOW_KAFKA_LINGER_MS`) so that a busy relay
    /// batches without delaying a quiet one.
    pub fn producer(&self) -> Result<FutureProducer, WorkerError> {
        self.base()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("message.timeout.ms", "15000")
            .create()
            .map_err(|e| WorkerError::kafka("create producer", e))
    }

    /// A consumer in group `<prefix><group>` that commits, every
    /// `commit_interval` and when it loses partitions or stops, only the
    /// offsets its loop stored after applying their messages.
    pub fn consumer(&self, group: &str) -> Result<StreamConsumer<LagContext>, WorkerError> {
        self.base()
            // librdkafka reports each assigned partition's lag in its
            // statistics; LagContext turns them into a gauge.
            .set("statistics.interval.ms", "5000")
            .set("group.id", format!("{}{group}", self.group_prefix))
            // librdkafka commits stored offsets in the background; the
            // consume loop stores one only once its message's effect has
            // committed in Postgres, so this never commits past anything
            // unapplied, and costs one request per interval instead of
            // one per batch.
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval.as_millis().max(1).to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 4).max(100).to_string(),
            )
            .set("fetch.wait.max.ms", self.fetch_wait.as_millis().to_string())
            .set("fetch.min.bytes", self.fetch_min_bytes.max(1).to_string())
            .set("isolation.level", "read_committed")
            .create_with_context(LagContext)
            .map_err(|e| WorkerError::kafka(format!("create consumer {group}"), e))
    }

    /// Creates sagaflow's topics where they are missing; existing ones are
    /// left as they are.
    pub async fn ensure_topics(&self, topics: &Topics) -> Result<(), WorkerError> {
        let admin: AdminClient<DefaultClientContext> = self
            .base()
            .create()
            .map_err(|e| WorkerError::kafka("create admin client", e))?;
        let new: Vec<NewTopic<'_>> = topics
            .all()
            .into_iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| WorkerError::kafka("create topics", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(WorkerError::kafka(
                        format!("create topic {name}"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Answers "is Kafka reachable?" for `/readyz`.
#[derive(Clone)]
pub struct KafkaProbe {
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaProbe")
    }
}

impl KafkaProbe {
    /// A probe that asks the cluster's metadata through `producer`.
    pub fn new(producer: FutureProducer) -> Self {
        KafkaProbe { producer }
    }

    /// Whether a broker answers a metadata request within two seconds.
    pub async fn ready(&self) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| !m.brokers().is_empty())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

/// A consumer context that publishes librdkafka's per-partition consumer
/// lag (messages between the committed offset and the high watermark) as
/// the `sagaflow_consumer_lag` gauge.
#[derive(Debug, Clone, Copy, Default)]
pub struct LagContext;

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's "unknown" (e.g. a partition not assigned here).
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "sagaflow_consumer_lag",
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}
