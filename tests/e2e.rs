//! The order-payment saga end to end, on the real PostgreSQL and Kafka that
//! `scripts/services.sh` starts: HTTP in, Kafka between the saga and the
//! funds participant, Postgres as the record.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{money_anomalies, TestApp};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sea_orm::ConnectionTrait;

const SETTLE: Duration = Duration::from_secs(30);

fn consumer_for(app: &TestApp, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .set("group.id", format!("{}{group}", app.prefix))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("test consumer")
}

/// Reads `topic` from the start until `want` messages matched `keep`.
async fn read_topic(
    app: &TestApp,
    topic: &str,
    want: usize,
    keep: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = consumer_for(app, &format!("reader-{}", uuid::Uuid::new_v4()));
    consumer.subscribe(&[topic]).unwrap();
    let mut found = Vec::new();
    let until = tokio::time::Instant::now() + SETTLE;
    while found.len() < want {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {want} messages on {topic}",
            found.len()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await {
            if keep(&m) {
                found.push(m.detach());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_debits_once_and_publishes_order_paid() {
    let app = TestApp::start().await;
    app.funded_account(1, "100.00").await;

    let (status, order) = app.place_order(1, "19.99", None).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "PENDING");
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    let saga_id = order["saga_id"].as_str().unwrap().to_owned();

    let settled = app.settled_order(&order_no, SETTLE).await;
    assert_eq!(settled["status"], "PAID", "{settled}");
    assert_eq!(settled["amount"], "19.99");

    let account = app.account(1).await;
    assert_eq!(account["balance"], "80.01");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM ledger_entries WHERE kind = 'DEBIT'")
            .await,
        1
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_instances WHERE id = '{saga_id}' AND state = 'COMPLETED' AND next_run_at IS NULL AND lease_owner IS NULL"
        ))
        .await,
        1
    );
    for kind in ["CREATED", "COMMAND_SENT", "REPLY_RECEIVED", "COMPLETED"] {
        assert_eq!(
            app.scalar_i64(&format!(
                "SELECT count(*) FROM saga_events WHERE saga_id = '{saga_id}' AND kind = '{kind}'"
            ))
            .await,
            1,
            "history row {kind}"
        );
    }

    let topic = app.topic("orders.events");
    let events = read_topic(&app, &topic, 1, |m| m.key() == Some(order_no.as_bytes())).await;
    let event: serde_json::Value = serde_json::from_slice(events[0].payload().unwrap()).unwrap();
    assert_eq!(event["type"], "OrderPaid");
    assert_eq!(event["order_no"], order_no.as_str());
    assert_eq!(event["amount"], "19.99");
    let traceparent = header_text(&events[0], "traceparent").expect("traceparent header");
    assert!(traceparent.starts_with("00-"));

    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn insufficient_funds_fails_the_order_and_leaves_the_balance() {
    let app = TestApp::start().await;
    app.funded_account(2, "5.00").await;

    let (status, order) = app.place_order(2, "10.00", None).await;
    assert_eq!(status, 201, "{order}");
    let order_no = order["order_no"].as_str().unwrap();
    let settled = app.settled_order(order_no, SETTLE).await;
    assert_eq!(settled["status"], "FAILED", "{settled}");
    assert!(
        settled["failure_reason"]
            .as_str()
            .unwrap_or("")
            .contains("insufficient funds"),
        "{settled}"
    );
    assert_eq!(app.account(2).await["balance"], "5.00");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM ledger_entries WHERE kind <> 'DEPOSIT'")
            .await,
        0
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_instances WHERE state = 'COMPENSATED'")
            .await,
        1
    );
    let topic = app.topic("orders.events");
    let events = read_topic(&app, &topic, 1, |m| m.key() == Some(order_no.as_bytes())).await;
    let event: serde_json::Value = serde_json::from_slice(events[0].payload().unwrap()).unwrap();
    assert_eq!(event["type"], "OrderFailed");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_makes_one_order_and_one_debit() {
    let app = TestApp::start().await;
    app.funded_account(3, "50.00").await;

    let (s1, first) = app.place_order(3, "12.50", Some("checkout-42")).await;
    let (s2, again) = app.place_order(3, "12.50", Some("checkout-42")).await;
    assert_eq!(s1, 201);
    assert!(s2 == 200 || s2 == 201, "{s2}");
    assert_eq!(first["order_no"], again["order_no"]);
    let (s3, other) = app.place_order(3, "99.00", Some("checkout-42")).await;
    assert_eq!(s3, 409, "{other}");

    let settled = app
        .settled_order(first["order_no"].as_str().unwrap(), SETTLE)
        .await;
    assert_eq!(settled["status"], "PAID");
    // asked again after it settled: still the same order, not a new one
    let (_, later) = app.place_order(3, "12.50", Some("checkout-42")).await;
    assert_eq!(later["order_no"], first["order_no"]);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM orders").await, 1);
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_instances").await,
        1
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM ledger_entries WHERE kind = 'DEBIT'")
            .await,
        1
    );
    assert_eq!(app.account(3).await["balance"], "37.50");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_on_fifty_pay_exactly_fifty() {
    let app = TestApp::start().await;
    app.funded_account(4, "50.00").await;

    let mut placing = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let http = app.http.clone();
        let url = format!("{}/orders", app.base);
        placing.spawn(async move {
            let r = http
                .post(url)
                .json(&serde_json::json!({ "user_id": 4, "amount": "1.00" }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<serde_json::Value>().await.unwrap()["order_no"]
                .as_str()
                .unwrap()
                .to_owned()
        });
    }
    let mut order_nos = Vec::new();
    while let Some(r) = placing.join_next().await {
        order_nos.push(r.unwrap());
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let pending = app
            .scalar_i64("SELECT count(*) FROM orders WHERE status = 'PENDING'")
            .await;
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{pending} orders still PENDING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .await,
        50
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM orders WHERE status = 'FAILED'")
            .await,
        150
    );
    assert_eq!(app.account(4).await["balance"], "0.00");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM ledger_entries WHERE kind = 'DEBIT'")
            .await,
        50
    );
    // the ledger never shows a negative balance at any point
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM ledger_entries WHERE balance_after < 0")
            .await,
        0
    );
    assert_eq!(order_nos.iter().collect::<HashSet<_>>().len(), 200);
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

/// Waits until consumer group `group` has committed past `offset` on
/// `topic`/`partition`, i.e. it has applied the message at `offset`.
async fn await_committed(app: &TestApp, group: &str, topic: &str, partition: i32, offset: i64) {
    let probe = consumer_for(app, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let until = tokio::time::Instant::now() + SETTLE;
    loop {
        let committed = probe
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .unwrap();
        if let Some(Offset::Offset(o)) = committed
            .find_partition(topic, partition)
            .map(|p| p.offset())
        {
            if o > offset {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "group {group} never committed past {topic}/{partition}@{offset}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_command_and_reply_change_nothing() {
    let app = TestApp::start().await;
    app.funded_account(5, "30.00").await;
    let (_, order) = app.place_order(5, "10.00", None).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");

    let commands = app.topic("funds.commands");
    let replies = app.topic("saga.replies");
    let command = read_topic(&app, &commands, 1, |_| true).await.remove(0);
    let reply = read_topic(&app, &replies, 1, |_| true).await.remove(0);
    let events_before = app.scalar_i64("SELECT count(*) FROM saga_events").await;
    let ledger_before = app.scalar_i64("SELECT count(*) FROM ledger_entries").await;
    let inbox_before = app.scalar_i64("SELECT count(*) FROM inbox").await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .create()
        .unwrap();
    for m in [&command, &reply] {
        let mut headers = OwnedHeaders::new();
        for h in m.headers().unwrap().iter() {
            headers = headers.insert(h);
        }
        let delivery = producer
            .send(
                FutureRecord::to(m.topic())
                    .key(m.key().unwrap())
                    .payload(m.payload().unwrap())
                    .headers(headers)
                    .partition(m.partition()),
                Duration::from_secs(10),
            )
            .await
            .expect("republish");
        let (partition, offset) = (delivery.partition, delivery.offset);
        let group = if m.topic() == commands {
            "sagaflow-funds"
        } else {
            "sagaflow-replies"
        };
        await_committed(&app, group, m.topic(), partition, offset).await;
    }

    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM ledger_entries").await,
        ledger_before
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_events").await,
        events_before
    );
    assert_eq!(app.account(5).await["balance"], "20.00");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM inbox").await,
        inbox_before
    );
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

/// The value of `m`'s header `key`, as text.
fn header_text(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    m.headers()
        .expect("message headers")
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_are_dead_lettered_and_consumers_keep_going() {
    let app = TestApp::start().await;
    let commands = app.topic("funds.commands");
    let replies = app.topic("saga.replies");
    let dead_letter = app.topic("sagaflow.dlq");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .create()
        .unwrap();
    let poison: [(&str, &[u8], &str); 2] = [
        (&commands, b"\xff not json at all", "sagaflow-funds"),
        (&replies, br#"{"saga_id": 42}"#, "sagaflow-replies"),
    ];
    for (topic, payload, group) in poison {
        let delivery = producer
            .send(
                FutureRecord::to(topic)
                    .key("poison")
                    .payload(payload)
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .expect("publish poison");
        // The consumer committed past it: it did not stall on the message.
        await_committed(&app, group, topic, delivery.partition, delivery.offset).await;
    }

    let parked = read_topic(&app, &dead_letter, 2, |_| true).await;
    let mut origins: Vec<(String, Vec<u8>)> = parked
        .iter()
        .map(|m| {
            let header = |key: &str| header_text(m, key);
            assert!(
                header("x-dlq-reason").is_some_and(|r| !r.is_empty()),
                "dead letter without a reason"
            );
            (
                header("x-dlq-original-topic").unwrap(),
                m.payload().unwrap().to_vec(),
            )
        })
        .collect();
    origins.sort();
    let mut expected: Vec<(String, Vec<u8>)> = poison
        .iter()
        .map(|(t, p, _)| ((*t).to_owned(), p.to_vec()))
        .collect();
    expected.sort();
    assert_eq!(origins, expected);

    // And the saga still runs end to end behind the poison.
    app.funded_account(6, "10.00").await;
    let (_, order) = app.place_order(6, "4.00", None).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    assert_eq!(app.account(6).await["balance"], "6.00");
    app.stop().await;
}

/// A message the broker took but whose dead-letter copy (its own headers
/// plus the parking ones) the service's producer cannot send whole is
/// parked truncated, saying so, and the consumer goes on: retrying the
/// whole copy would hold its partition up for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_too_large_to_park_whole_is_parked_truncated() {
    let app = TestApp::start().await;
    let commands = app.topic("funds.commands");
    let dead_letter = app.topic("sagaflow.dlq");
    // Above the service producer's 1,000,000-byte `message.max.bytes`,
    // below the broker's default limit (1,048,588).
    let size = 1_040_000;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; size];
    let delivery = producer
        .send(
            FutureRecord::to(&commands)
                .key("huge")
                .payload(&payload)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("publish the huge message");
    let (partition, offset) = (delivery.partition, delivery.offset);
    await_committed(&app, "sagaflow-funds", &commands, partition, offset).await;

    let parked = read_topic(&app, &dead_letter, 1, |_| true).await;
    let m = &parked[0];
    let header = |key: &str| header_text(m, key);
    assert_eq!(
        header("x-dlq-original-topic").as_deref(),
        Some(commands.as_str())
    );
    assert_eq!(
        header("x-dlq-original-offset"),
        Some(delivery.offset.to_string())
    );
    assert!(header("x-dlq-reason").is_some_and(|r| r.contains("not a funds command")));
    let note = header("x-dlq-truncated").expect("x-dlq-truncated");
    assert!(note.contains(&format!("payload of {size} bytes")), "{note}");
    assert_eq!(
        m.payload().unwrap(),
        &payload[..sagaflow_worker::consumer::DEAD_LETTER_KEPT_BYTES]
    );

    // The participant still answers what comes behind it.
    app.funded_account(7, "10.00").await;
    let (_, order) = app.place_order(7, "4.00", None).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    app.stop().await;
}

/// Writes outbox rows with `sql` and wakes the relay, as a process that
/// wrote them would.
async fn write_outbox<const N: usize>(app: &TestApp, sql: &str, values: [sea_orm::Value; N]) {
    app.db
        .conn
        .execute(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            sql,
            values,
        ))
        .await
        .unwrap();
    app.db
        .conn
        .execute_unprepared(&format!(
            "SELECT pg_notify('{}', '')",
            sagaflow_entity::wake::OUTBOX_CHANNEL
        ))
        .await
        .unwrap();
}

/// Waits until the relay has emptied the outbox, then lists what it set
/// aside with `sagaflow outbox list --json`.
async fn set_aside_once_drained(app: &TestApp) -> Vec<serde_json::Value> {
    app.await_scalar("SELECT count(*) FROM outbox", SETTLE, |n| n == 0)
        .await;
    serde_json::from_str(&cli_ok(app, &["outbox", "list", "--json"])).unwrap()
}

/// An outbox row Kafka refuses for good (larger than the producer may
/// send) leaves the outbox for `outbox_dead` with Kafka's answer, and the
/// row written after it is published: before, it failed every pass and
/// held up every message behind it. Queue health warns, and a requeued row
/// Kafka still refuses is set aside again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outbox_row_kafka_refuses_is_set_aside_and_the_rest_published() {
    let app = TestApp::start().await;
    let events = app.topic("orders.events");
    let (huge, small) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    // One statement, so the relay sees both rows in one pass, huge first.
    write_outbox(
        &app,
        "INSERT INTO outbox (message_id, topic, key, payload) VALUES \
         ($1, $3, 'huge', jsonb_build_object('blob', repeat('x', 1100000))), \
         ($2, $3, 'small', '{\"after\": \"huge\"}'::jsonb)",
        [huge.into(), small.into(), events.clone().into()],
    )
    .await;

    let published = read_topic(&app, &events, 1, |m| m.key() == Some(&b"small"[..])).await;
    assert_eq!(published[0].payload(), Some(&br#"{"after":"huge"}"#[..]));
    let rows = set_aside_once_drained(&app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["message_id"], huge.to_string());
    assert_eq!(rows[0]["topic"], events.as_str());
    assert!(rows[0]["payload_bytes"].as_u64().unwrap() > 1_100_000);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("MessageSizeTooLarge"),
        "{rows:?}"
    );
    let health = sagaflow_api::queue_health::queue_health(
        &app.db.conn,
        &sagaflow_api::queue_health::Thresholds::default(),
    )
    .await
    .unwrap();
    assert_eq!(health.outbox.set_aside, 1);
    assert!(
        health.warnings.iter().any(|w| w.code == "outbox_set_aside"),
        "{:?}",
        health.warnings
    );

    // Requeued, it goes to the end of the outbox under a new id, and the
    // relay, which Kafka still refuses it to, sets it aside again.
    let first_id = rows[0]["id"].as_i64().unwrap();
    cli_ok(&app, &["outbox", "requeue", "--id", &first_id.to_string()]);
    let again = app
        .await_scalar(
            &format!("SELECT COALESCE(max(id), 0) FROM outbox_dead WHERE message_id = '{huge}'"),
            SETTLE,
            |id| id > first_id,
        )
        .await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM outbox_dead").await, 1);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM outbox").await, 0);
    // An id that is not set aside is an error that names it.
    let out = cli(&app, &["outbox", "requeue", "--id", &first_id.to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("[{first_id}]")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM outbox_dead WHERE id = {again}"
        ))
        .await,
        1
    );
    // `--all` takes every row set aside, `--topic` those of one topic.
    let mut last = again;
    for which in [
        vec!["--all"],
        vec!["--topic", "elsewhere"],
        vec!["--topic", &events],
    ] {
        let mut args = vec!["outbox", "requeue"];
        args.extend(&which);
        cli_ok(&app, &args);
        if which == ["--topic", "elsewhere"] {
            assert_eq!(
                app.scalar_i64(&format!(
                    "SELECT count(*) FROM outbox_dead WHERE id = {last}"
                ))
                .await,
                1,
                "another topic's requeue left it"
            );
            continue;
        }
        last = app
            .await_scalar(
                &format!(
                    "SELECT COALESCE(max(id), 0) FROM outbox_dead WHERE message_id = '{huge}'"
                ),
                SETTLE,
                |id| id > last,
            )
            .await;
    }
    assert_eq!(app.scalar_i64("SELECT count(*) FROM outbox_dead").await, 1);
    assert_set_aside_fails_verify_then_clear(&app).await;
    app.stop().await;
}

/// `verify` counts a message set aside as one never published; clears
/// `outbox_dead` afterwards, so that the check every test ends with passes.
async fn assert_set_aside_fails_verify_then_clear(app: &TestApp) {
    let report = sagaflow_api::verify::verify(&app.db.conn).await.unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.check.starts_with("no outbox message was set aside")),
        "{report:?}"
    );
    app.db
        .conn
        .execute_unprepared("DELETE FROM outbox_dead")
        .await
        .unwrap();
}

/// The broker answers a produce request for every row librdkafka put in it:
/// on a topic whose `max.message.bytes` one row exceeds, the rows beside it
/// are refused too. The relay then publishes the batch again a row at a
/// time, and sets aside only the row refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_row_the_broker_refuses_alone_is_set_aside() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let app = TestApp::start().await;
    let tiny = app.topic("tiny");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&tiny, 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", "10000")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let big = uuid::Uuid::new_v4();
    // One statement: the relay takes the three rows in one pass, and
    // librdkafka sends them to the one partition in one request.
    write_outbox(
        &app,
        "INSERT INTO outbox (message_id, topic, key, payload) VALUES \
         (gen_random_uuid(), $2, 'k', '{\"n\": 1}'::jsonb), \
         ($1, $2, 'k', jsonb_build_object('blob', repeat('x', 20000))), \
         (gen_random_uuid(), $2, 'k', '{\"n\": 3}'::jsonb)",
        [big.into(), tiny.clone().into()],
    )
    .await;

    let rows = set_aside_once_drained(&app).await;
    assert_eq!(rows.len(), 1, "only the big row: {rows:?}");
    assert_eq!(rows[0]["message_id"], big.to_string());
    assert!(
        rows[0]["error"].as_str().unwrap().contains("TooLarge"),
        "{rows:?}"
    );
    // Both small rows were published, first before third (a copy of one
    // the refused request's first try did publish may come too).
    let seen = std::sync::Mutex::new(HashSet::new());
    let firsts = read_topic(&app, &tiny, 2, |m| {
        seen.lock()
            .unwrap()
            .insert(m.payload().unwrap_or_default().to_vec())
    })
    .await;
    let payloads: Vec<&[u8]> = firsts.iter().map(|m| m.payload().unwrap()).collect();
    assert_eq!(payloads, [&br#"{"n":1}"#[..], &br#"{"n":3}"#[..]]);
    assert_set_aside_fails_verify_then_clear(&app).await;
    app.stop().await;
}

/// The member ids of consumer group `group` (under the app's prefix).
fn group_members(app: &TestApp, group: &str) -> Vec<String> {
    let client: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .create()
        .unwrap();
    let name = format!("{}{group}", app.prefix);
    let list = client
        .fetch_group_list(Some(&name), Duration::from_secs(10))
        .unwrap();
    let mut ids: Vec<String> = list
        .groups()
        .iter()
        .flat_map(|g| g.members().iter().map(|m| m.id().to_owned()))
        .collect();
    ids.sort();
    ids
}

/// How a test keeps the funds participant from applying its batch.
enum Outage {
    /// The inbox table renamed away: every try fails at once
    /// (`relation does not exist`).
    Renamed,
    /// The inbox table locked by another session: every try waits until
    /// the engine's statement timeout (1 s here) cancels it.
    Locked,
}

/// While Postgres refuses a consumer's batch for a reason that may pass,
/// the consumer retries the batch in place and keeps polling its paused
/// partitions. Refused for longer than `max.poll.interval.ms` (7 s here),
/// it is still the same member of its group afterwards; a consumer that
/// stopped polling was taken out and joined again under a new member id.
/// Once the outage ends the order is paid, once, and the partitions fetch
/// again.
async fn a_consumer_retries_through(outage: Outage) {
    let max_poll = Duration::from_secs(7);
    let app = TestApp::start_with(&[
        "--kafka-max-poll-interval-ms",
        &max_poll.as_millis().to_string(),
        "--engine-statement-timeout-ms",
        "1000",
    ])
    .await;
    app.funded_account(11, "10.00").await;
    let (_, first) = app.place_order(11, "1.00", None).await;
    let first = first["order_no"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_order(&first, SETTLE).await["status"], "PAID");
    let before = group_members(&app, "sagaflow-funds");
    assert_eq!(before.len(), 1, "{before:?}");

    let lock = match outage {
        Outage::Renamed => {
            app.db
                .conn
                .execute_unprepared("ALTER TABLE inbox RENAME TO inbox_away")
                .await
                .unwrap();
            None
        }
        Outage::Locked => {
            use sea_orm::TransactionTrait;
            let tx = app.db.conn.begin().await.unwrap();
            tx.execute_unprepared("LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            Some(tx)
        }
    };
    let (_, second) = app.place_order(11, "2.00", None).await;
    let second = second["order_no"].as_str().unwrap().to_owned();
    // The command reaches the participant, which cannot record it: the
    // outbox empties while the order waits.
    app.await_scalar("SELECT count(*) FROM outbox", SETTLE, |n| n == 0)
        .await;
    // The outage itself: longer than the consumer may go without polling.
    tokio::time::sleep(max_poll + Duration::from_secs(3)).await;
    assert_eq!(app.order(&second).await["status"], "PENDING");
    match lock {
        Some(tx) => tx.commit().await.unwrap(),
        None => app
            .db
            .conn
            .execute_unprepared("ALTER TABLE inbox_away RENAME TO inbox")
            .await
            .map(|_| ())
            .unwrap(),
    }

    assert_eq!(app.settled_order(&second, SETTLE).await["status"], "PAID");
    // The partitions were resumed: an order placed after the outage, on
    // whichever partition, is paid too.
    let (_, third) = app.place_order(11, "3.00", None).await;
    let third = third["order_no"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_order(&third, SETTLE).await["status"], "PAID");
    assert_eq!(app.account(11).await["balance"], "4.00");
    assert_eq!(group_members(&app, "sagaflow-funds"), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_retrying_through_an_outage_stays_in_its_group() {
    a_consumer_retries_through(Outage::Renamed).await;
}

/// A statement that would wait for good (a lock an operator holds) is
/// cancelled at the engine's statement timeout and retried, polling in
/// between, instead of hanging its consumer out of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_waiting_on_a_held_lock_stays_in_its_group() {
    a_consumer_retries_through(Outage::Locked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_report_sagas_steps_claims_lag_and_requests() {
    let app = TestApp::start().await;
    app.funded_account(8, "10.00").await;
    let (_, order) = app.place_order(8, "2.50", None).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    // A payment saga starts with its order, so its happy path claims
    // nothing; a refund saga is started due, and a claim loop takes it.
    let refund = app
        .http
        .post(format!("{}/orders/{order_no}/refund", app.base))
        .json(&serde_json::json!({ "reason": "metrics" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), 202);
    let refund: serde_json::Value = refund.json().await.unwrap();
    let refund_saga = refund["refund_saga_id"].as_str().unwrap().to_owned();
    app.await_saga_state(&refund_saga, "COMPLETED", SETTLE)
        .await;

    let scrape = || async {
        let r = app
            .http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain")));
        r.text().await.unwrap()
    };
    // librdkafka reports lag every 5 s; everything else is there at once.
    // Wait for this test's own consumers: the series are process-wide, and
    // another test's lag may be reported first.
    let own_lag = format!("sagaflow_consumer_lag{{topic=\"{}", app.topic(""));
    let until = tokio::time::Instant::now() + SETTLE;
    let text = loop {
        let text = scrape().await;
        if text.contains(&own_lag) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no consumer lag in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Database gauges are this test's own database: exact.
    assert!(
        text.contains("sagaflow_sagas{state=\"COMPLETED\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("sagaflow_sagas{state=\"FAILED\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("sagaflow_outbox_backlog "), "{text}");
    assert!(
        text.contains("sagaflow_outbox_oldest_age_seconds "),
        "{text}"
    );
    // Process-wide series (shared with the tests running beside this one).
    for series in [
        "sagaflow_step_duration_seconds_bucket{saga_type=\"order_payment\",step=\"0\"",
        "sagaflow_claim_batch_size_bucket",
        "sagaflow_sagas_finished_total{saga_type=\"order_payment\",state=\"COMPLETED\"}",
        "sagaflow_http_request_duration_seconds_bucket{method=\"POST\",route=\"/orders\",status=\"201\"",
        &own_lag,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    app.stop().await;
}

/// Runs the `sagaflow` binary with `args` against the app's database,
/// broker, topics and consumer groups.
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(args)
        .args(["--database-url", &app.db.url])
        .args(["--kafka-bootstrap-servers", &common::kafka_bootstrap()])
        .args(["--topic-prefix", &app.prefix, "--group-prefix", &app.prefix])
        .output()
        .expect("run sagaflow")
}

/// [`cli`], which must succeed: what it printed.
fn cli_ok(app: &TestApp, args: &[&str]) -> String {
    let out = cli(app, args);
    assert!(
        out.status.success(),
        "sagaflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_list_and_replay_dead_letters() {
    let app = TestApp::start().await;
    let commands = app.topic("funds.commands");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&commands)
                .key("k-1")
                .payload(&b"{\"type\": \"funds.teleport\"}"[..]),
            Duration::from_secs(10),
        )
        .await
        .expect("publish");
    let (partition, offset) = (delivery.partition, delivery.offset);
    await_committed(&app, "sagaflow-funds", &commands, partition, offset).await;

    let listed: serde_json::Value =
        serde_json::from_str(&cli_ok(&app, &["dlq", "list", "--json"])).unwrap();
    let parked = listed.as_array().unwrap();
    assert_eq!(parked.len(), 1, "{listed}");
    assert_eq!(parked[0]["original_topic"], commands.as_str());
    assert_eq!(parked[0]["key"], "k-1");
    assert!(parked[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not a funds command"));
    let at = format!("{}@{}", parked[0]["partition"], parked[0]["offset"]);
    let text = cli_ok(&app, &["dlq", "list"]);
    assert!(
        text.contains(&at) && text.contains("funds.teleport"),
        "{text}"
    );

    // Replayed, it goes back to funds.commands, is refused again, and is
    // parked a second time, marked as a replay.
    cli_ok(&app, &["dlq", "replay", "--at", &at]);
    let until = tokio::time::Instant::now() + SETTLE;
    let again = loop {
        let listed: serde_json::Value =
            serde_json::from_str(&cli_ok(&app, &["dlq", "list", "--json"])).unwrap();
        if listed.as_array().unwrap().len() == 2 {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "replay never parked again: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(again[1]["replayed_from"], at.as_str(), "{again}");
    assert_eq!(again[1]["key"], "k-1");
    app.stop().await;
}

/// Counts that any effect would change: ledger rows, history rows, inbox
/// rows, the money in all accounts, paid orders.
async fn snapshot(app: &TestApp) -> (i64, i64, i64, i64, i64) {
    (
        app.scalar_i64("SELECT count(*) FROM ledger_entries").await,
        app.scalar_i64("SELECT count(*) FROM saga_events").await,
        app.scalar_i64("SELECT count(*) FROM inbox").await,
        app.scalar_i64("SELECT (sum(balance) * 100)::bigint FROM accounts")
            .await,
        app.scalar_i64("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .await,
    )
}

/// Every message on `topic`, from the start to the high watermark of each
/// partition as it is now.
fn read_all(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for p in meta.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        left += high - low;
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while left > 0 {
        let m = consumer
            .poll(Duration::from_secs(10))
            .expect("a message before the watermark")
            .unwrap();
        out.push(m.detach());
        left -= 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn republishing_every_command_and_reply_of_a_run_changes_nothing() {
    let app = TestApp::start().await;
    for user in 1..=5 {
        app.funded_account(user, "10.00").await;
    }
    let mut orders = Vec::new();
    for n in 0..30 {
        // Each account can pay for 3 of its 6 orders of 3.00.
        let (status, order) = app.place_order(1 + n % 5, "3.00", None).await;
        assert_eq!(status, 201, "{order}");
        orders.push(order["order_no"].as_str().unwrap().to_owned());
    }
    for o in &orders {
        app.settled_order(o, SETTLE).await;
    }
    let before = snapshot(&app).await;
    assert_eq!(before.4, 15, "3 paid orders per account");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_bootstrap())
        .create()
        .unwrap();
    for (name, group) in [
        ("funds.commands", "sagaflow-funds"),
        ("saga.replies", "sagaflow-replies"),
    ] {
        let topic = app.topic(name);
        let all = read_all(&topic);
        assert!(all.len() >= 30, "{topic}: {} messages", all.len());
        let mut last = std::collections::HashMap::new();
        for m in &all {
            let mut headers = OwnedHeaders::new();
            for h in m
                .headers()
                .map(|h| h.iter().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                headers = headers.insert(h);
            }
            let d = producer
                .send(
                    FutureRecord::to(&topic)
                        .key(m.key().unwrap_or_default())
                        .payload(m.payload().unwrap_or_default())
                        .headers(headers)
                        .partition(m.partition()),
                    Duration::from_secs(10),
                )
                .await
                .expect("republish");
            last.insert(d.partition, d.offset);
        }
        for (partition, offset) in last {
            await_committed(&app, group, &topic, partition, offset).await;
        }
    }
    assert_eq!(snapshot(&app).await, before, "a duplicate had an effect");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}
