//! The outbox relay against a real Postgres and Kafka: rows leave the
//! outbox only once the broker acknowledged them, in outbox order.

mod common;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use sagaflow_worker::relay;
use sagaflow_worker::session::Session;
use sea_orm::ConnectionTrait;

async fn outbox_rows(db: &sea_orm::DatabaseConnection, topic: &str, n: usize) {
    for i in 0..n {
        db.execute_unprepared(&format!(
            "INSERT INTO outbox (message_id, topic, key, payload, headers) \
             VALUES (gen_random_uuid(), '{topic}', 'k', '{{\"n\": {i}}}', '{{}}')"
        ))
        .await
        .unwrap();
    }
}

/// A producer that gives up on a message after 1.5 s.
fn impatient_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "1500")
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_broker_did_not_take_stays_in_the_outbox() {
    let db = common::fresh_database().await;
    outbox_rows(&db.conn, "relay-test.nowhere", 3).await;
    // Nothing listens on this port: every delivery times out.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let mut session = Session::new(&db.conn);
    let before = backend_pid(&mut session).await;
    let err = relay::run_once(&mut session, &impatient_producer(&dead), 10).await;
    assert!(err.is_err(), "a failed publish was reported as done");
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT count(*) FROM outbox").await,
        3,
        "rows the broker never acknowledged left the outbox"
    );
    // Rolled back rather than dropped: a broker outage fails every pass,
    // and should not cost each one a new connection.
    assert_eq!(
        backend_pid(&mut session).await,
        before,
        "a failed publish cost the relay its connection"
    );
}

/// The server process behind `session`'s connection.
async fn backend_pid(session: &mut Session) -> i64 {
    let tx = session.begin().await.unwrap();
    let pid = common::scalar_i64(&tx, "SELECT pg_backend_pid()::bigint").await;
    tx.commit().await.unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_batch_leaves_the_outbox_in_order() {
    let db = common::fresh_database().await;
    let prefix = common::topic_prefix();
    let kafka = sagaflow_worker::KafkaConfig {
        bootstrap_servers: common::kafka_bootstrap(),
        group_prefix: prefix.clone(),
        partitions: 1,
        replication: 1,
        session_timeout: Duration::from_secs(6),
        max_poll_interval: std::time::Duration::from_secs(300),
        linger: Duration::from_millis(1),
        commit_interval: Duration::from_millis(100),
        fetch_wait: Duration::from_millis(20),
        fetch_min_bytes: 1,
    };
    let topics = sagaflow_worker::Topics::with_prefix(&prefix);
    kafka.ensure_topics(&topics).await.unwrap();
    let topic = topics.orders_events.clone();
    outbox_rows(&db.conn, &topic, 5).await;
    let published = relay::run_once(&mut Session::new(&db.conn), &kafka.producer().unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(published, 5);
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT count(*) FROM outbox").await,
        0
    );
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the published rows within 30 s");
        // A consumer that subscribed before the broker listed the topic
        // reports it once; that is not what this test is about.
        let Ok(m) = m else { continue };
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        seen.push(v["n"].as_i64().unwrap());
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4], "published out of outbox order");
}
