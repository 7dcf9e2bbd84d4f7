//! The loop every Kafka consumer of sagaflow shares: receive, apply in a
//! Postgres transaction (the handler's job), and only then store the
//! offset, which librdkafka commits in the background. Messages already
//! fetched are applied together, up to a batch, in one transaction, so a
//! busy partition costs one commit per batch and not per message. A message that cannot be parsed goes to the
//! dead-letter topic with the reason in its headers, and the consumer moves
//! on; so does one whose effect fails for good (`WorkerError::is_permanent`:
//! a saga that refuses its reply, a value Postgres rejects), found by
//! applying a refused batch again one message at a time. A batch whose
//! transaction fails for a transient reason is retried in place, so nothing
//! behind it is committed before it; meanwhile the consumer pauses its
//! partitions and keeps polling, so that an outage of Postgres longer than
//! `max.poll.interval.ms` does not take it out of its group.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

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

/// A message handed to a handler: its payload, and the span that continues
/// its producer's trace (the handler runs the message's work inside it).
#[derive(Debug)]
pub struct Incoming {
    /// The message's bytes.
    pub payload: Vec<u8>,
    /// `consume` span with the topic, partition, offset and trace id.
    pub span: tracing::Span,
}

/// Announces the outbox rows a committed batch wrote: any message it
/// applied may have written some (a reply, an event, the next command).
pub(crate) fn announce_outbox(announcer: &sagaflow_entity::wake::Announcer, handled: &[Handled]) {
    if handled.contains(&Handled::Applied) {
        announcer.announce(sagaflow_entity::wake::Channel::Outbox);
    }
}

/// Consumes `topic` until `shutdown`, applying what arrives in batches of
/// up to `max_batch` messages (whatever is already fetched, never waiting
/// to fill one) with `handle`, which applies a batch in one transaction and
/// says what it did with each message, in order.
pub(crate) async fn run<F, Fut>(
    consumer: StreamConsumer<LagContext>,
    topic: String,
    dead_letter: String,
    producer: FutureProducer,
    shutdown: CancellationToken,
    max_batch: usize,
    handle: F,
) -> Result<(), WorkerError>
where
    F: Fn(Vec<Incoming>) -> Fut,
    Fut: Future<Output = Result<Vec<Handled>, WorkerError>>,
{
    consumer
        .subscribe(&[&topic])
        .map_err(|e| WorkerError::kafka(format!("subscribe {topic}"), e))?;
    let mut poller = Poller {
        consumer: &consumer,
        held: Vec::new(),
        paused: TopicPartitionList::new(),
    };
    loop {
        let max = max_batch.max(1);
        let mut batch: Vec<BorrowedMessage<'_>> =
            poller.held.drain(..poller.held.len().min(max)).collect();
        if batch.is_empty() {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            match first {
                Ok(m) => batch.push(m),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "kafka receive failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            }
        }
        while batch.len() < max && poller.held.is_empty() {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m),
                _ => break,
            }
        }
        let applied = apply(&handle, &topic, &batch, &shutdown, &mut poller).await;
        poller.resume(&topic);
        let Some(outcomes) = applied? else {
            break;
        };
        // Store the next offset of each partition the batch touched;
        // librdkafka commits stored offsets every commit interval, on
        // rebalance and on close. A message to park that shutdown kept
        // from the dead-letter topic stops its partition's offset before
        // it: it is delivered again after the restart, and parked then.
        let mut unparked: Vec<i32> = Vec::new();
        let mut offsets = TopicPartitionList::new();
        for (msg, outcome) in batch.iter().zip(&outcomes) {
            if unparked.contains(&msg.partition()) {
                continue;
            }
            if let Handled::DeadLetter(reason) = outcome {
                if !dead_letter_publish(&producer, &dead_letter, msg, reason, &shutdown).await {
                    unparked.push(msg.partition());
                    continue;
                }
            }
            let next = Offset::Offset(msg.offset() + 1);
            let added = offsets.set_partition_offset(msg.topic(), msg.partition(), next);
            if added.is_err() {
                offsets
                    .add_partition_offset(msg.topic(), msg.partition(), next)
                    .ok();
            }
        }
        if let Err(e) = consumer.store_offsets(&offsets) {
            // The effects are committed and deduped by the inbox, so a lost
            // offset only means a harmless redelivery.
            tracing::warn!(%topic, error = %e, "storing offsets failed");
        }
        if !unparked.is_empty() {
            // Only shutdown stops parking; take nothing more (a later
            // message of that partition must not be stored past it).
            break;
        }
    }
    // Commit what was stored (what was applied) before leaving the group.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Harmless (the inbox dedupes what comes again), but worth seeing:
        // the group's next owner redelivers everything since the last commit.
        tracing::warn!(%topic, error = %e, "final offset commit failed");
    }
    Ok(())
}

/// Keeps a consumer polling while a batch is retried in place. librdkafka
/// takes a consumer that has not polled for `max.poll.interval.ms` out of
/// its group, and its partitions then move (and come back) for nothing;
/// polling its paused partitions keeps it in. Paused, they fetch nothing
/// more, and what they had fetched is discarded, to be fetched again after
/// the last message the loop received. A message that arrives all the same
/// (from a partition assigned meanwhile) is held for the next batch, never
/// dropped: a later offset stored past it would lose it.
struct Poller<'c> {
    consumer: &'c StreamConsumer<LagContext>,
    /// Received while a batch was retried; they start the next batch.
    held: Vec<BorrowedMessage<'c>>,
    /// Every partition paused since the last resume, assigned now or not.
    paused: TopicPartitionList,
}

impl<'c> Poller<'c> {
    /// Pauses the partitions the consumer has now that are not paused yet
    /// (a rebalance may have assigned some since the last pause).
    fn pause(&mut self, topic: &str) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "reading the assignment to pause it failed");
                return;
            }
        };
        let mut fresh = TopicPartitionList::new();
        for p in assignment.elements() {
            if self
                .paused
                .find_partition(p.topic(), p.partition())
                .is_none()
            {
                fresh.add_partition(p.topic(), p.partition());
            }
        }
        if fresh.count() == 0 {
            return;
        }
        match self.consumer.pause(&fresh) {
            Ok(()) => {
                for p in fresh.elements() {
                    self.paused.add_partition(p.topic(), p.partition());
                }
            }
            Err(e) => tracing::warn!(%topic, error = %e, "pausing partitions failed"),
        }
    }

    /// Waits `pause`, polling meanwhile; `false` if shutdown came first.
    async fn wait(&mut self, pause: Duration, shutdown: &CancellationToken, topic: &str) -> bool {
        self.pause(topic);
        let consumer = self.consumer;
        let until = tokio::time::sleep(pause);
        tokio::pin!(until);
        // A waiting `recv` polls once and then sleeps until a message
        // comes; a fresh one every second is a poll every second.
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = &mut until => return true,
                _ = every_second.tick() => {}
                m = consumer.recv() => match m {
                    Ok(m) => {
                        self.held.push(m);
                        // From a partition assigned since the last pause.
                        self.pause(topic);
                    }
                    Err(e) => tracing::debug!(%topic, error = %e, "kafka receive failed while paused"),
                },
            }
        }
    }

    /// Resumes every partition a retry paused. All of them, not only those
    /// assigned now: librdkafka keeps an application's pause on a partition
    /// across a rebalance, so one revoked while paused would come back
    /// paused for good.
    fn resume(&mut self, topic: &str) {
        if self.paused.count() == 0 {
            return;
        }
        match self.consumer.resume(&self.paused) {
            Ok(()) => self.paused = TopicPartitionList::new(),
            // Kept, and tried again after the next batch.
            Err(e) => tracing::error!(%topic, error = %e, "resuming partitions failed"),
        }
    }
}

/// How a handler's tries at some messages ended.
enum Tried {
    /// Applied (or found duplicate, or to be parked), one answer each.
    Answered(Vec<Handled>),
    /// Failed for good: the data is the problem (`is_permanent`).
    Refused(WorkerError),
    /// Shutdown came first.
    Stopped,
}

/// Applies `batch` with `handle`. A batch that fails for good is applied
/// again one message per call, and a message that fails for good alone is
/// dead-lettered with the reason, so that one message cannot hold up the
/// partition behind it. `None`: shutdown came first.
async fn apply<F, Fut>(
    handle: &F,
    topic: &str,
    batch: &[BorrowedMessage<'_>],
    shutdown: &CancellationToken,
    poller: &mut Poller<'_>,
) -> Result<Option<Vec<Handled>>, WorkerError>
where
    F: Fn(Vec<Incoming>) -> Fut,
    Fut: Future<Output = Result<Vec<Handled>, WorkerError>>,
{
    let refused = match tried(handle, topic, batch, shutdown, poller).await? {
        Tried::Answered(h) => return Ok(Some(h)),
        Tried::Stopped => return Ok(None),
        Tried::Refused(e) if batch.len() == 1 => return Ok(Some(vec![refusal(topic, &e)])),
        Tried::Refused(e) => e,
    };
    tracing::warn!(%topic, messages = batch.len(), error = %refused,
        "a batch cannot be applied; applying its messages one by one");
    let mut answers = Vec::with_capacity(batch.len());
    for one in batch.chunks(1) {
        match tried(handle, topic, one, shutdown, poller).await? {
            Tried::Answered(h) => answers.extend(h),
            Tried::Refused(e) => answers.push(refusal(topic, &e)),
            Tried::Stopped => return Ok(None),
        }
    }
    Ok(Some(answers))
}

/// Calls `handle` with `msgs` until it answers or fails for good, backing
/// off between tries while it fails for a reason that may pass (the
/// database unreachable): nothing behind them is committed meanwhile, and
/// `poller` keeps the consumer in its group.
async fn tried<F, Fut>(
    handle: &F,
    topic: &str,
    msgs: &[BorrowedMessage<'_>],
    shutdown: &CancellationToken,
    poller: &mut Poller<'_>,
) -> Result<Tried, WorkerError>
where
    F: Fn(Vec<Incoming>) -> Fut,
    Fut: Future<Output = Result<Vec<Handled>, WorkerError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        let incoming = msgs.iter().map(|m| incoming(topic, m)).collect();
        match handle(incoming).await {
            Ok(h) if h.len() == msgs.len() => return Ok(Tried::Answered(h)),
            Ok(h) => {
                return Err(WorkerError::Corrupt {
                    saga_id: uuid::Uuid::nil(),
                    reason: format!(
                        "a {topic} handler answered {} of {} messages",
                        h.len(),
                        msgs.len()
                    ),
                })
            }
            Err(e) if e.is_permanent() => return Ok(Tried::Refused(e)),
            Err(e) => {
                tracing::warn!(%topic, partition = msgs[0].partition(), offset = msgs[0].offset(),
                    messages = msgs.len(), error = %e,
                    "applying messages failed; retrying them before anything behind them");
                if !poller.wait(backoff, shutdown, topic).await {
                    return Ok(Tried::Stopped);
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The dead letter of a message its handler refused for good.
fn refusal(topic: &str, err: &WorkerError) -> Handled {
    tracing::warn!(%topic, error = %err, "a message cannot be applied; parking it");
    Handled::DeadLetter(format!("cannot be applied: {err}"))
}

/// Continues the producer's trace: the span carries its trace id, and
/// whatever the handler logs or sends inherits it.
fn incoming(topic: &str, msg: &BorrowedMessage<'_>) -> Incoming {
    let trace_id = header(msg, "traceparent")
        .and_then(|tp| tp.split('-').nth(1).map(str::to_owned))
        .unwrap_or_default();
    Incoming {
        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        span: tracing::info_span!("consume", %topic, partition = msg.partition(), offset = msg.offset(), trace_id = %trace_id),
    }
}

/// A header's value as text.
fn header(msg: &BorrowedMessage<'_>, key: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Most payload bytes a dead letter keeps of a message too large to be
/// parked whole (its copy carries headers the original did not).
pub const DEAD_LETTER_KEPT_BYTES: usize = 64 * 1024;

/// Parks `msg` in `dead_letter` with `reason`, retrying until the broker
/// takes it; `false` if shutdown came first (the message is not parked,
/// so its offset must not be stored). A message too large for the
/// producer once the dead-letter headers are added is parked truncated to
/// [`DEAD_LETTER_KEPT_BYTES`], without its own headers, and says so in
/// `x-dlq-truncated`: retrying the whole copy could never succeed and would
/// hold up its partition for good.
async fn dead_letter_publish(
    producer: &FutureProducer,
    dead_letter: &str,
    msg: &BorrowedMessage<'_>,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), %reason,
        "message moved to the dead-letter topic");
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let parking = OwnedHeaders::new()
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
    let mut headers = parking.clone();
    if let Some(h) = msg.headers() {
        for i in 0..h.count() {
            let header = h.get(i);
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let mut payload = msg.payload().unwrap_or_default();
    let key = msg.key().unwrap_or_default();
    let mut truncated = false;
    // Parking the message must not be skipped, or it would be lost once the
    // offset moves on: retry until the broker takes it.
    loop {
        let record = FutureRecord::to(dead_letter)
            .payload(payload)
            .key(key)
            .headers(headers.clone());
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                if !truncated =>
            {
                truncated = true;
                let whole = payload.len();
                payload = &payload[..whole.min(DEAD_LETTER_KEPT_BYTES)];
                let note = format!(
                    "payload of {whole} bytes, first {} kept; the message's own headers dropped",
                    payload.len()
                );
                tracing::warn!(
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    bytes = whole,
                    "too large to park whole; parking it truncated"
                );
                headers = parking.clone().insert(Header {
                    key: "x-dlq-truncated",
                    value: Some(note.as_bytes()),
                });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "publishing to the dead-letter topic failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}
