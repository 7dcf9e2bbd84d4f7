//! The engine when participants are slow, flaky, silent or crash, on the
//! real PostgreSQL and Kafka: timeouts, retries, stale replies, lease
//! recovery, the refund saga and the operator's cancel. Time is controlled
//! through short configured timeouts (`--saga-tuning`) and conditions are
//! awaited, never slept on.

mod common;

use std::time::Duration;

use common::{money_anomalies, TestApp};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use sagaflow::app::Roles;
use sagaflow_entity::saga_instance::Filed;
use sagaflow_entity::OperatorRequest;
use sagaflow_worker::session::Session;
use sagaflow_workflows::messages::{CommandEnvelope, ReplyEnvelope, ReplyOutcome};

const SETTLE: Duration = Duration::from_secs(40);

/// Every role but the funds participant: commands go out and nobody
/// answers until a test says so.
const NO_FUNDS: Roles = Roles {
    funds: false,
    ..Roles::ALL
};

/// Short deadlines so that timeouts fire within a test; compensations keep
/// trying long enough for a participant to be started.
const FAST: &str = r#"{
  "order_payment.debit": {
    "timeout_ms": 400,
    "retry": {"max_attempts": 3, "initial_backoff": 50, "max_backoff": 100},
    "compensation_timeout_ms": 500,
    "compensation_retry": {"max_attempts": 100, "initial_backoff": 50, "max_backoff": 200}
  }
}"#;

/// Deadlines far beyond the test, so only replies move the saga.
const PATIENT: &str = r#"{
  "order_payment.debit": {
    "timeout_ms": 60000,
    "retry": {"max_attempts": 3, "initial_backoff": 20, "max_backoff": 50}
  }
}"#;

async fn start(tuning: &str, roles: Roles) -> TestApp {
    TestApp::start_as(
        &["--saga-tuning", tuning, "--poll-interval-ms", "50"],
        roles,
    )
    .await
}

fn events(saga_id: &str, filter: &str) -> String {
    format!("SELECT count(*) FROM saga_events WHERE saga_id = '{saga_id}' AND {filter}")
}

async fn count(app: &TestApp, saga_id: &str, filter: &str) -> i64 {
    app.scalar_i64(&events(saga_id, filter)).await
}

async fn ledger(app: &TestApp, saga_id: &str, kind: &str) -> i64 {
    app.scalar_i64(&format!(
        "SELECT count(*) FROM ledger_entries WHERE saga_id = '{saga_id}' AND kind = '{kind}'"
    ))
    .await
}

async fn order_for(app: &TestApp, user_id: i64, amount: &str) -> (String, String) {
    let (status, order) = app.place_order(user_id, amount, None).await;
    assert_eq!(status, 201, "{order}");
    (
        order["order_no"].as_str().unwrap().to_owned(),
        order["saga_id"].as_str().unwrap().to_owned(),
    )
}

const FUNDS_ONLY: Roles = Roles {
    api: false,
    worker: false,
    relay: false,
    funds: true,
    replies: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_participant_times_out_retries_then_compensates() {
    let mut app = start(FAST, NO_FUNDS).await;
    app.funded_account(1, "50.00").await;
    let (order_no, saga) = order_for(&app, 1, "20.00").await;

    // Three attempts, each timing out, then compensation starts.
    app.await_scalar(
        &events(&saga, "kind = 'COMPENSATION_STARTED'"),
        SETTLE,
        |n| n == 1,
    )
    .await;
    assert_eq!(
        count(
            &app,
            &saga,
            "kind = 'COMMAND_SENT' AND NOT (detail ? 'compensation')"
        )
        .await,
        3,
        "one command per allowed attempt"
    );
    assert!(count(&app, &saga, "kind = 'TIMED_OUT' AND attempt <= 3").await >= 3);
    assert_eq!(
        count(
            &app,
            &saga,
            "kind = 'RETRY_SCHEDULED' AND NOT (detail ? 'compensation')"
        )
        .await,
        2
    );
    assert_eq!(app.order(&order_no).await["status"], "PENDING");

    // The participant comes back: it works off the backlog in order (the
    // debit, possibly applied, then the refund that undoes it).
    app.start_roles(FUNDS_ONLY).await;
    let order = app.settled_order(&order_no, SETTLE).await;
    assert_eq!(order["status"], "FAILED");
    assert_eq!(order["failure_reason"], "timed out");
    app.await_saga_state(&saga, "COMPENSATED", SETTLE).await;
    assert_eq!(app.account(1).await["balance"], "50.00");
    let debits = ledger(&app, &saga, "DEBIT").await;
    assert!(debits <= 1);
    assert_eq!(ledger(&app, &saga, "REFUND").await, debits);
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_its_saga_cannot_apply_is_parked_and_the_replies_behind_it_still_land() {
    use sea_orm::ConnectionTrait;
    let mut app = start(PATIENT, NO_FUNDS).await;
    app.funded_account(1, "50.00").await;
    app.funded_account(2, "50.00").await;
    let (stuck_order, stuck) = order_for(&app, 1, "10.00").await;
    app.await_scalar(&events(&stuck, "kind = 'COMMAND_SENT'"), SETTLE, |n| n == 1)
        .await;
    // Someone moves the order behind its saga's back: marking it PAID
    // will be refused, for this reply and any copy of it.
    app.db
        .conn
        .execute_unprepared(&format!(
            "UPDATE orders SET status = 'CANCELLED' WHERE order_no = '{stuck_order}'"
        ))
        .await
        .unwrap();

    app.start_roles(FUNDS_ONLY).await;
    // The reply consumer does not retry the refused reply forever: an
    // order placed after it is paid.
    let (next_order, _) = order_for(&app, 2, "10.00").await;
    let next = app.settled_order(&next_order, SETTLE).await;
    assert_eq!(next["status"], "PAID");
    // The refused reply is parked with the reason, and its saga is as it
    // was: waiting, for its timeout or an operator.
    let parked = {
        let (kafka, topics) = (app.config.kafka(), app.config.topics());
        tokio::task::spawn_blocking(move || sagaflow_worker::dlq::list(&kafka, &topics))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].original_topic, app.topic("saga.replies"));
    assert!(
        parked[0].reason.contains("cannot be applied") && parked[0].payload.contains(&stuck),
        "{parked:?}"
    );
    app.await_saga_state(&stuck, "WAITING", SETTLE).await;
    assert_eq!(count(&app, &stuck, "kind = 'REPLY_RECEIVED'").await, 0);
    assert_eq!(app.order(&stuck_order).await["status"], "CANCELLED");
    app.stop().await;
}

/// The test plays the funds participant: a consumer of `funds.commands`
/// and a producer of `saga.replies`.
struct FakeParticipant {
    commands: StreamConsumer,
    producer: FutureProducer,
    replies: String,
}

impl FakeParticipant {
    fn new(app: &TestApp) -> Self {
        let commands: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", common::kafka_bootstrap())
            .set("group.id", format!("{}fake-funds", app.prefix))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        commands.subscribe(&[&app.topic("funds.commands")]).unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", common::kafka_bootstrap())
            .create()
            .unwrap();
        FakeParticipant {
            commands,
            producer,
            replies: app.topic("saga.replies"),
        }
    }

    async fn next_command(&self) -> (CommandEnvelope, Vec<u8>) {
        // A consumer that subscribed before the broker's metadata listed
        // the new topic reports "unknown topic or partition" once, then
        // carries on: a transient error here is not the test's subject.
        let next = async {
            loop {
                match self.commands.recv().await {
                    Ok(m) => break m,
                    Err(e) => eprintln!("fake participant: kafka error, still waiting: {e}"),
                }
            }
        };
        let m = tokio::time::timeout(SETTLE, next)
            .await
            .expect("a command within the deadline");
        let payload = m.payload().unwrap().to_vec();
        (serde_json::from_slice(&payload).unwrap(), payload)
    }

    async fn reply(&self, reply: &ReplyEnvelope) {
        let payload = serde_json::to_vec(reply).unwrap();
        let key = reply.saga_id.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.replies).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("publish reply");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_retry_and_stale_replies_are_ignored() {
    let app = start(PATIENT, NO_FUNDS).await;
    app.funded_account(2, "30.00").await;
    let fake = FakeParticipant::new(&app);
    let (order_no, saga) = order_for(&app, 2, "12.50").await;
    let transient = |cmd: &CommandEnvelope| {
        ReplyEnvelope::answering(
            cmd,
            ReplyOutcome::Failed {
                reason: "ledger busy".into(),
            },
        )
    };

    let (first, _) = fake.next_command().await;
    assert_eq!(first.attempt, 1);
    fake.reply(&transient(&first)).await;

    let (second, _) = fake.next_command().await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.message_id, first.message_id,
        "a retry keeps the command's id"
    );
    // A late transient failure of attempt 1 (delivered again, under a new
    // id) says nothing about attempt 2, which is out: it changes nothing.
    let mut stale = transient(&first);
    stale.message_id = uuid::Uuid::new_v4();
    fake.reply(&stale).await;
    app.await_scalar(
        &events(&saga, "kind = 'REPLY_IGNORED' AND attempt = 1"),
        SETTLE,
        |n| n == 1,
    )
    .await;
    assert_eq!(app.order(&order_no).await["status"], "PENDING");
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 0);
    fake.reply(&transient(&second)).await;

    // The third attempt goes to the real participant code.
    let (third, payload) = fake.next_command().await;
    assert_eq!(third.attempt, 3);
    participant(&app, &payload).await;

    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    app.await_saga_state(&saga, "COMPLETED", SETTLE).await;
    assert_eq!(
        count(
            &app,
            &saga,
            "kind = 'REPLY_RECEIVED' AND attempt = 3 AND detail->'outcome'->>'outcome' = 'OK'"
        )
        .await,
        1
    );
    assert_eq!(count(&app, &saga, "kind = 'RETRY_SCHEDULED'").await, 2);
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);
    assert_eq!(app.account(2).await["balance"], "17.50");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_workers_saga_completes_once_after_its_lease_expires() {
    let no_worker = Roles {
        worker: false,
        ..Roles::ALL
    };
    let mut app = start(PATIENT, no_worker).await;
    app.funded_account(3, "10.00").await;
    let (order_no, _) = order_for(&app, 3, "4.00").await;
    // A payment saga starts with its order, and needs no worker to finish.
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    // A refund saga is started due, for a worker to claim.
    let (status, body) = post_refund(
        &app,
        &order_no,
        serde_json::json!({ "reason": "lease expiry" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let saga = body["refund_saga_id"].as_str().unwrap().to_owned();

    // A worker claims the saga and dies mid-step: its task is aborted
    // while it holds the lease, which it never releases.
    let db = app.db.conn.clone();
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let doomed = tokio::spawn(async move {
        let rows =
            sagaflow_worker::claim::claim(&db, "doomed-worker", 10, Duration::from_millis(800))
                .await
                .unwrap();
        claimed_tx.send(rows).ok();
        std::future::pending::<()>().await;
    });
    let rows = claimed_rx.await.unwrap();
    doomed.abort();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id.to_string(), saga);
    let expiry = rows[0].lease_expires_at.unwrap();

    app.start_roles(Roles {
        api: false,
        worker: true,
        relay: false,
        funds: false,
        replies: false,
    })
    .await;
    app.await_saga_state(&saga, "COMPLETED", SETTLE).await;
    assert_eq!(app.order(&order_no).await["status"], "REFUNDED");
    // The live worker took the saga only once the dead one's lease ran out.
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{saga}' AND kind = 'COMMAND_SENT' \
             AND created_at >= '{}'::timestamptz",
            expiry.to_rfc3339()
        ))
        .await,
        1
    );
    assert_eq!(count(&app, &saga, "kind = 'COMMAND_SENT'").await, 1);
    assert_eq!(count(&app, &saga, "actor = 'doomed-worker'").await, 0);
    assert_eq!(ledger(&app, &saga, "REFUND").await, 1);
    assert_eq!(app.account(3).await["balance"], "10.00");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

async fn post_refund(
    app: &TestApp,
    order_no: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = app
        .http
        .post(format!("{}/orders/{order_no}/refund", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_order_is_refunded_once() {
    let app = TestApp::start().await;
    app.funded_account(4, "100.00").await;
    let (order_no, _) = order_for(&app, 4, "30.00").await;
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    assert_eq!(app.account(4).await["balance"], "70.00");

    let reason = serde_json::json!({ "reason": "item arrived broken" });
    let (status, body) = post_refund(&app, &order_no, reason.clone()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "PAID");
    let refund_saga = body["refund_saga_id"]
        .as_str()
        .expect("refund saga id")
        .to_owned();
    let (status, body) = post_refund(&app, &order_no, reason.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains(&refund_saga),
        "{body}"
    );

    app.await_saga_state(&refund_saga, "COMPLETED", SETTLE)
        .await;
    let order = app.order(&order_no).await;
    assert_eq!(order["status"], "REFUNDED");
    assert_eq!(order["refund_saga_id"], refund_saga.as_str());
    assert_eq!(app.account(4).await["balance"], "100.00");
    assert_eq!(ledger(&app, &refund_saga, "REFUND").await, 1);
    let (status, body) = post_refund(&app, &order_no, reason.clone()).await;
    assert_eq!(status, 409, "a refunded order again: {body}");
    assert_eq!(app.account(4).await["balance"], "100.00");

    // Only PAID orders can be refunded; the request itself is checked.
    let (failed_no, _) = order_for(&app, 4, "500.00").await;
    assert_eq!(
        app.settled_order(&failed_no, SETTLE).await["status"],
        "FAILED"
    );
    let (status, body) = post_refund(&app, &failed_no, reason.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("FAILED"),
        "{body}"
    );
    let (status, _) = post_refund(&app, "ORD-nope", reason).await;
    assert_eq!(status, 404);
    let (status, body) = post_refund(&app, &failed_no, serde_json::json!({ "reason": "  " })).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "reason");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_instances WHERE saga_type = 'order_refund'")
            .await,
        1
    );
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_while_waiting_refunds_the_debit_exactly_once() {
    let mut app = start(PATIENT, NO_FUNDS).await;
    app.funded_account(5, "40.00").await;
    let (order_no, saga) = order_for(&app, 5, "15.00").await;
    app.await_saga_state(&saga, "WAITING", SETTLE).await;
    // Wait for the debit to be on Kafka (the relay deletes what it sent),
    // so the participant will see it before the refund.
    app.await_scalar("SELECT count(*) FROM outbox", SETTLE, |n| n == 0)
        .await;

    let saga_id: uuid::Uuid = saga.parse().unwrap();
    let filed = sagaflow_entity::saga_instance::file_request(
        &app.db.conn,
        saga_id,
        OperatorRequest::Cancel,
        "customer called",
        "test-operator",
        None,
    )
    .await
    .unwrap();
    assert!(matches!(filed, Filed::Filed(_)), "{filed:?}");
    app.await_scalar(
        &events(&saga, "kind = 'COMMAND_SENT' AND detail ? 'compensation'"),
        SETTLE,
        |n| n == 1,
    )
    .await;

    // The participant now takes the debit, then gives it back.
    app.start_roles(FUNDS_ONLY).await;
    let order = app.settled_order(&order_no, SETTLE).await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["failure_reason"], "cancelled: customer called");
    app.await_saga_state(&saga, "CANCELLED", SETTLE).await;
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);
    assert_eq!(ledger(&app, &saga, "REFUND").await, 1);
    assert_eq!(app.account(5).await["balance"], "40.00");
    assert_eq!(count(&app, &saga, "kind = 'CANCEL_REQUESTED'").await, 1);
    assert_eq!(
        count(&app, &saga, "kind = 'OPERATOR_REQUEST' AND actor = 'test-operator' AND detail->>'reason' = 'customer called'").await,
        1
    );
    // The debit's OK arrived after the cancel and changed nothing.
    app.await_scalar(&events(&saga, "kind = 'REPLY_IGNORED'"), SETTLE, |n| n == 1)
        .await;
    // A finished saga takes no more requests.
    let again = sagaflow_entity::saga_instance::file_request(
        &app.db.conn,
        saga_id,
        OperatorRequest::Cancel,
        "twice",
        "test-operator",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        again,
        Filed::WrongState(sagaflow_entity::SagaState::Cancelled)
    );
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compensation_that_never_succeeds_ends_failed_for_an_operator() {
    // One quick debit attempt, then two refund attempts, nobody home. The
    // refund's deadline leaves room for a loaded machine to answer once the
    // participant is back (each round trip crosses the relay twice).
    let tuning = r#"{
      "order_payment.debit": {
        "timeout_ms": 200,
        "retry": {"max_attempts": 1, "initial_backoff": 0, "max_backoff": 0},
        "compensation_timeout_ms": 1500,
        "compensation_retry": {"max_attempts": 2, "initial_backoff": 20, "max_backoff": 50}
      }
    }"#;
    let mut app = start(tuning, NO_FUNDS).await;
    app.funded_account(6, "10.00").await;
    let (order_no, saga) = order_for(&app, 6, "3.00").await;

    app.await_saga_state(&saga, "FAILED", SETTLE).await;
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_instances WHERE id = '{saga}' AND next_run_at IS NULL \
             AND last_error = 'compensation timed out' AND failure_reason = 'timed out'"
        ))
        .await,
        1,
        "a FAILED saga says why and is not due again"
    );
    assert_eq!(
        count(
            &app,
            &saga,
            "kind = 'COMMAND_SENT' AND detail ? 'compensation'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&app, &saga, "kind = 'FAILED' AND to_state = 'FAILED'").await,
        1
    );
    // The order waits with it: nothing claims the money is back.
    assert_eq!(app.order(&order_no).await["status"], "PENDING");
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 0);

    // The operator brings the participant back and retries: the
    // compensation resumes with fresh attempts and the saga ends.
    app.start_roles(FUNDS_ONLY).await;
    // Retry once the participant is up: it has worked off the debit and
    // the refund that went unanswered (two command ids in its inbox).
    app.await_scalar(
        "SELECT count(*) FROM inbox WHERE consumer = 'funds'",
        SETTLE,
        |n| n == 2,
    )
    .await;
    let filed = sagaflow_entity::saga_instance::file_request(
        &app.db.conn,
        saga.parse().unwrap(),
        OperatorRequest::Retry,
        "participant is back",
        "test-operator",
        None,
    )
    .await
    .unwrap();
    assert!(matches!(filed, Filed::Filed(_)), "{filed:?}");
    app.await_saga_state(&saga, "COMPENSATED", SETTLE).await;
    assert_eq!(
        app.settled_order(&order_no, SETTLE).await["status"],
        "FAILED"
    );
    assert_eq!(count(&app, &saga, "kind = 'MANUAL_RETRY'").await, 1);
    assert_eq!(app.account(6).await["balance"], "10.00");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

/// One debit attempt and two quick refund attempts, so that a saga nobody
/// answers is FAILED within a few seconds. The debit's deadline leaves a
/// loaded machine room for the round trip of the forced debit (relay,
/// Kafka, reply consumer) that the tests answer.
const GIVES_UP: &str = r#"{
  "order_payment.debit": {
    "timeout_ms": 2500,
    "retry": {"max_attempts": 1, "initial_backoff": 0, "max_backoff": 0},
    "compensation_timeout_ms": 200,
    "compensation_retry": {"max_attempts": 2, "initial_backoff": 20, "max_backoff": 50}
  }
}"#;

/// A saga FAILED with its three commands (one debit, two refunds) in the
/// fake participant's hands and none applied.
async fn failed_saga(
    app: &TestApp,
    fake: &FakeParticipant,
    user_id: i64,
) -> (String, String, Vec<Vec<u8>>) {
    app.funded_account(user_id, "10.00").await;
    let (order_no, saga) = order_for(app, user_id, "3.00").await;
    let mut commands = Vec::new();
    for expected in ["funds.debit", "funds.refund", "funds.refund"] {
        let (cmd, payload) = fake.next_command().await;
        assert_eq!(cmd.kind.as_str(), expected);
        assert_eq!(cmd.epoch, 0);
        commands.push(payload);
    }
    app.await_saga_state(&saga, "FAILED", SETTLE).await;
    (order_no, saga, commands)
}

async fn participant(app: &TestApp, payload: &[u8]) {
    sagaflow_worker::participant::handle(
        &mut Session::new(&app.db.conn),
        &app.config.topics(),
        payload,
    )
    .await
    .unwrap();
}

async fn force_forward(app: &TestApp, saga: &str) {
    let filed = sagaflow_entity::saga_instance::file_request(
        &app.db.conn,
        saga.parse().unwrap(),
        OperatorRequest::ForceForward,
        "the debit went through",
        "test-operator",
        None,
    )
    .await
    .unwrap();
    assert!(matches!(filed, Filed::Filed(_)), "{filed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_saga_forced_forward_is_paid_and_its_old_refunds_are_fenced() {
    let app = start(GIVES_UP, NO_FUNDS).await;
    let fake = FakeParticipant::new(&app);
    let (order_no, saga, old) = failed_saga(&app, &fake, 21).await;
    // The debit did land, late: after the saga had given it up.
    participant(&app, &old[0]).await;
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);

    force_forward(&app, &saga).await;
    let (again, payload) = fake.next_command().await;
    assert_eq!(
        (again.kind.as_str(), again.epoch, again.attempt),
        ("funds.debit", 1, 1)
    );
    participant(&app, &payload).await;
    app.await_saga_state(&saga, "COMPLETED", SETTLE).await;
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    assert_eq!(count(&app, &saga, "kind = 'FORCED_FORWARD'").await, 1);

    // The refunds sent before the force reach the participant now: they
    // must not undo the debit the PAID order rests on.
    participant(&app, &old[1]).await;
    participant(&app, &old[2]).await;
    assert_eq!(ledger(&app, &saga, "REFUND").await, 0);
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);
    assert_eq!(app.account(21).await["balance"], "7.00");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forcing_forward_a_saga_whose_debit_was_refunded_ends_compensated() {
    let app = start(GIVES_UP, NO_FUNDS).await;
    let fake = FakeParticipant::new(&app);
    let (order_no, saga, old) = failed_saga(&app, &fake, 22).await;
    // Both the debit and a refund landed after the saga gave up.
    participant(&app, &old[0]).await;
    participant(&app, &old[1]).await;
    assert_eq!(ledger(&app, &saga, "REFUND").await, 1);

    force_forward(&app, &saga).await;
    let (again, payload) = fake.next_command().await;
    assert_eq!((again.kind.as_str(), again.epoch), ("funds.debit", 1));
    // Refused, since the money went back: the step nets to nothing, so the
    // saga ends COMPENSATED with no further refund.
    participant(&app, &payload).await;
    app.await_saga_state(&saga, "COMPENSATED", SETTLE).await;
    assert_eq!(
        app.settled_order(&order_no, SETTLE).await["status"],
        "FAILED"
    );
    assert_eq!(
        count(
            &app,
            &saga,
            "kind = 'REPLY_RECEIVED' AND detail->'outcome'->>'reason' LIKE '%already reversed%'"
        )
        .await,
        1
    );
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);
    assert_eq!(ledger(&app, &saga, "REFUND").await, 1);
    assert_eq!(app.account(22).await["balance"], "10.00");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

/// POSTs `body` to `path` as the operator; the status and the JSON body.
async fn operator_post(
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

async fn verify_report(app: &TestApp) -> Vec<(String, String)> {
    sagaflow_api::verify::verify(&app.db.conn)
        .await
        .unwrap()
        .violations
        .into_iter()
        .map(|v| (v.check, v.subject))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_saga_marked_resolved_ends_as_the_operator_asserts_and_verify_holds_it_to_that() {
    let app = start(GIVES_UP, NO_FUNDS).await;
    let fake = FakeParticipant::new(&app);
    // Saga A: the debit landed after the saga gave up; support refunded the
    // buyer by bank transfer, so the debit stays in the ledger.
    let (order_a, saga_a, old_a) = failed_saga(&app, &fake, 31).await;
    participant(&app, &old_a[0]).await;
    // Saga B: the debit landed too, but the operator wrongly asserts that
    // no money stayed moved.
    let (order_b, saga_b, old_b) = failed_saga(&app, &fake, 32).await;
    participant(&app, &old_b[0]).await;
    // Saga C: the debit landed and the buyer keeps the goods.
    let (order_c, saga_c, old_c) = failed_saga(&app, &fake, 33).await;
    participant(&app, &old_c[0]).await;

    // The needs-attention queue: FAILED, oldest first, with the failing
    // step, the last error and how long each has waited.
    let r = app
        .http
        .get(format!("{}/sagas?state=FAILED", app.base))
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = r.json().await.unwrap();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [saga_a.as_str(), saga_b.as_str(), saga_c.as_str()]);
    let first = &page["items"][0];
    assert_eq!(first["step_name"], "debit");
    assert_eq!(first["last_error"], "compensation timed out");
    assert!(first["waited_seconds"].as_i64().unwrap() >= 0, "{first}");

    // A bad assertion is refused with the values it may take.
    let (status, body) = operator_post(
        &app,
        &format!("/sagas/{saga_a}/resolve"),
        serde_json::json!({ "reason": "refunded by bank transfer", "resolution": "MAYBE" }),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "resolution");

    for (saga, resolution, actor) in [
        (&saga_a, "SETTLED_OUTSIDE", "alice"),
        (&saga_b, "NONE", "bob"),
        (&saga_c, "APPLIED", "carol"),
    ] {
        let (status, body) = operator_post(
            &app,
            &format!("/sagas/{saga}/resolve"),
            serde_json::json!({ "reason": "ticket 42", "resolution": resolution, "actor": actor }),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["resolution"], resolution);
    }
    for saga in [&saga_a, &saga_b, &saga_c] {
        app.await_saga_state(saga, "RESOLVED", SETTLE).await;
    }
    assert_eq!(
        app.settled_order(&order_a, SETTLE).await["status"],
        "FAILED"
    );
    assert_eq!(
        app.settled_order(&order_b, SETTLE).await["status"],
        "FAILED"
    );
    assert_eq!(app.settled_order(&order_c, SETTLE).await["status"], "PAID");
    assert_eq!(
        count(
            &app,
            &saga_a,
            "kind = 'OPERATOR_REQUEST' AND actor = 'alice' AND detail->>'resolution' = 'SETTLED_OUTSIDE'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app,
            &saga_a,
            "kind = 'RESOLVED' AND to_state = 'RESOLVED' AND detail->>'reason' = 'ticket 42'"
        )
        .await,
        1
    );

    // Verify accepts A's debit (settled outside) and C's (applied), and
    // names B: its ledger nets to 3.00, not the zero the operator asserted.
    let violations = verify_report(&app).await;
    let subject_b = format!("saga {saga_b}");
    assert!(
        violations
            .iter()
            .any(|(check, subject)| check.starts_with("a RESOLVED saga") && *subject == subject_b),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .all(|(_, subject)| *subject == subject_b || *subject == format!("order {order_b}")),
        "only B is wrong: {violations:?}"
    );

    // A resolved saga is final.
    let (status, body) = operator_post(
        &app,
        &format!("/sagas/{saga_a}/force-forward"),
        serde_json::json!({ "reason": "changed my mind" }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("RESOLVED"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_action_counts_first_and_acts_only_on_the_confirmed_count() {
    let app = start(GIVES_UP, NO_FUNDS).await;
    let fake = FakeParticipant::new(&app);
    let (order_a, saga_a, _) = failed_saga(&app, &fake, 41).await;
    let (order_b, saga_b, _) = failed_saga(&app, &fake, 42).await;
    // A saga the filter matches but the action does not apply to.
    app.funded_account(43, "100.00").await;
    let (_, done) = order_for(&app, 43, "1.00").await;
    let (cmd, payload) = fake.next_command().await;
    assert_eq!(cmd.kind.as_str(), "funds.debit");
    participant(&app, &payload).await;
    app.await_saga_state(&done, "COMPLETED", SETTLE).await;

    let bulk = |dry_run: bool, expected: Option<i64>| {
        let mut body = serde_json::json!({
            "action": "RESOLVE",
            "resolution": "NONE",
            "reason": "participant outage 2026-11-25: no debit happened",
            "actor": "dave",
            "type": "order_payment",
            "dry_run": dry_run,
        });
        if let Some(n) = expected {
            body["expected_count"] = n.into();
        }
        operator_post(&app, "/sagas/bulk", body)
    };
    let (status, dry) = bulk(true, None).await;
    assert_eq!(status, 200, "{dry}");
    // The COMPLETED saga matches the filter; a resolve does not apply to it.
    assert_eq!(
        (dry["matched"].as_i64(), dry["applicable"].as_i64()),
        (Some(3), Some(2)),
        "{dry}"
    );
    let (_, by_error) = operator_post(
        &app,
        "/sagas/bulk",
        serde_json::json!({ "action": "RETRY", "reason": "r", "error_contains": "COMPENSATION TIMED" }),
    )
    .await;
    assert_eq!(
        (by_error["matched"].as_i64(), by_error["dry_run"].as_bool()),
        (Some(2), Some(true)),
        "{by_error}"
    );
    assert_eq!(dry["filed"], 0);
    let mut sample: Vec<String> = serde_json::from_value(dry["sample"].clone()).unwrap();
    sample.sort();
    let mut both = vec![saga_a.clone(), saga_b.clone()];
    both.sort();
    assert_eq!(sample, both);
    // Nothing was filed by the dry run.
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_instances WHERE operator_request IS NOT NULL")
            .await,
        0
    );

    // A real run must quote the count; a stale count does nothing.
    let (status, body) = bulk(false, None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "expected_count");
    let (status, body) = bulk(false, Some(1)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("matches 2"),
        "{body}"
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_instances WHERE operator_request IS NOT NULL")
            .await,
        0
    );

    let (status, done_bulk) = bulk(false, Some(2)).await;
    assert_eq!(status, 200, "{done_bulk}");
    assert_eq!(done_bulk["filed"], 2);
    for (saga, order) in [(&saga_a, &order_a), (&saga_b, &order_b)] {
        app.await_saga_state(saga, "RESOLVED", SETTLE).await;
        assert_eq!(app.settled_order(order, SETTLE).await["status"], "FAILED");
        assert_eq!(
            count(&app, saga, "kind = 'OPERATOR_REQUEST' AND actor = 'dave'").await,
            1
        );
    }
    // The debits never happened, so the assertion holds.
    assert_eq!(verify_report(&app).await, Vec::<(String, String)>::new());
    // And there is nothing left to act on.
    let (_, again) = bulk(true, None).await;
    assert_eq!(again["applicable"], 0, "{again}");
    app.stop().await;
}

/// An application's own local action: writes a note in the engine's
/// transaction; `refuse` makes it refuse instead (a business rejection).
struct Note {
    note: &'static str,
    refuse: bool,
}

impl sagaflow_worker::LocalAction for Note {
    fn run<'a>(
        &'a self,
        ctx: sagaflow_worker::LocalContext<'a>,
    ) -> sagaflow_worker::ActionFuture<'a> {
        use sea_orm::ConnectionTrait;
        Box::pin(async move {
            if self.refuse {
                return Ok(sagaflow_workflows::machine::Outcome::Rejected {
                    reason: format!("{} refused", self.note),
                });
            }
            ctx.tx
                .execute(sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "INSERT INTO wrap_notes (saga_id, note) VALUES ($1, $2)",
                    [ctx.saga.id.into(), self.note.into()],
                ))
                .await?;
            Ok(sagaflow_workflows::machine::Outcome::Ok)
        })
    }
}

/// A saga of the test's own: a local step (with a local compensation),
/// then the funds debit, then a local step that refuses when the amount is
/// 13.00; hooks note how it ended.
fn gift_wrap() -> sagaflow_workflows::SagaDefinition {
    use sagaflow_workflows::messages::CommandKind;
    use sagaflow_workflows::{Action, Compensation, Hooks, RetryPolicy, SagaDefinition, StepDef};
    let once = RetryPolicy::once();
    let local = |name, compensation| StepDef {
        name,
        action: Action::Local(name),
        compensation,
        retry: once,
        timeout: Duration::from_secs(5),
    };
    SagaDefinition {
        name: "gift_wrap",
        version: 1,
        steps: vec![
            local(
                "wrap.reserve",
                Some(Compensation {
                    action: Action::Local("wrap.release"),
                    retry: once,
                    timeout: Duration::from_secs(5),
                }),
            ),
            StepDef {
                name: "debit",
                action: Action::Remote(CommandKind::FundsDebit),
                compensation: Some(Compensation {
                    action: Action::Remote(CommandKind::FundsRefund),
                    retry: RetryPolicy {
                        max_attempts: 5,
                        initial_backoff: Duration::from_millis(50),
                        max_backoff: Duration::from_millis(100),
                    },
                    timeout: Duration::from_secs(5),
                }),
                retry: once,
                timeout: Duration::from_secs(30),
            },
            local("wrap.check", None),
        ],
        hooks: Hooks {
            on_completed: Some("wrap.done"),
            on_compensated: Some("wrap.undone"),
            on_cancelled: Some("wrap.undone"),
            on_failed: None,
        },
    }
}

/// Refuses when the saga's amount is 13.00, notes "checked" otherwise.
struct Check;

impl sagaflow_worker::LocalAction for Check {
    fn run<'a>(
        &'a self,
        ctx: sagaflow_worker::LocalContext<'a>,
    ) -> sagaflow_worker::ActionFuture<'a> {
        let unlucky = ctx.saga.data["amount"] == "13.00";
        Box::pin(async move {
            Note {
                note: "checked",
                refuse: unlucky,
            }
            .run(ctx)
            .await
        })
    }
}

async fn start_gift_wrap(app: &TestApp, user_id: i64, amount: &str) -> String {
    let id = uuid::Uuid::now_v7();
    let data = serde_json::json!({ "order_no": "none", "user_id": user_id, "amount": amount });
    sagaflow_entity::saga_instance::insert_new(
        &app.db.conn,
        id,
        ("gift_wrap", 1),
        data,
        serde_json::json!({}),
        "test",
    )
    .await
    .unwrap();
    id.to_string()
}

async fn notes(app: &TestApp, saga: &str) -> Vec<String> {
    use sea_orm::ConnectionTrait;
    app.db
        .conn
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT note FROM wrap_notes WHERE saga_id = '{saga}' ORDER BY id"),
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "note").unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_applications_own_saga_runs_local_and_remote_steps() {
    let note = |note, refuse| -> std::sync::Arc<dyn sagaflow_worker::LocalAction> {
        std::sync::Arc::new(Note { note, refuse })
    };
    let ext = sagaflow::app::Extensions {
        definitions: vec![gift_wrap()],
        actions: vec![
            ("wrap.reserve", note("reserved", false)),
            ("wrap.release", note("released", false)),
            ("wrap.check", std::sync::Arc::new(Check)),
            ("wrap.done", note("done", false)),
            ("wrap.undone", note("undone", false)),
        ],
    };
    let app = TestApp::start_extended(&["--poll-interval-ms", "50"], Roles::ALL, ext).await;
    use sea_orm::ConnectionTrait;
    app.db
        .conn
        .execute_unprepared(
            "CREATE TABLE wrap_notes (id BIGSERIAL PRIMARY KEY, saga_id UUID NOT NULL, note TEXT NOT NULL)",
        )
        .await
        .unwrap();
    app.funded_account(7, "20.00").await;

    // All three steps succeed: reserve, debit through Kafka, check.
    let ok = start_gift_wrap(&app, 7, "5.00").await;
    app.await_saga_state(&ok, "COMPLETED", SETTLE).await;
    assert_eq!(notes(&app, &ok).await, ["reserved", "checked", "done"]);
    assert_eq!(ledger(&app, &ok, "DEBIT").await, 1);

    // The last step refuses: the debit is refunded, then the local
    // reservation released, in reverse order, and the saga COMPENSATED.
    let unlucky = start_gift_wrap(&app, 7, "13.00").await;
    app.await_saga_state(&unlucky, "COMPENSATED", SETTLE).await;
    assert_eq!(
        notes(&app, &unlucky).await,
        ["reserved", "released", "undone"]
    );
    assert_eq!(ledger(&app, &unlucky, "DEBIT").await, 1);
    assert_eq!(ledger(&app, &unlucky, "REFUND").await, 1);
    assert_eq!(app.account(7).await["balance"], "15.00");
    app.stop().await;
}

#[tokio::test]
async fn a_saga_naming_an_unregistered_action_or_step_does_not_start() {
    // Refused before it connects to anything.
    let config = sagaflow::config::Config::parse_from([
        "sagaflow",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        common::ADMIN_TOKEN,
    ])
    .unwrap();
    let ext = sagaflow::app::Extensions {
        definitions: vec![gift_wrap()],
        actions: Vec::new(),
    };
    let err = sagaflow::app::start_extended(&config, Roles::ALL, ext)
        .await
        .expect_err("must refuse to start");
    assert!(format!("{err:#}").contains("wrap.reserve"), "{err:#}");

    // Tuning that names no step, or is not JSON, is refused just as early.
    let tuned = |json: &str| {
        sagaflow::config::Config::parse_from([
            "sagaflow",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "--admin-token",
            common::ADMIN_TOKEN,
            "--saga-tuning",
            json,
        ])
    };
    let config = tuned(r#"{"order_payment.teleport": {"timeout_ms": 5}}"#).unwrap();
    let err = sagaflow::app::start(&config, Roles::ALL)
        .await
        .expect_err("unknown step");
    assert!(
        format!("{err:#}").contains("order_payment.teleport"),
        "{err:#}"
    );
    let err = tuned("{not json").expect_err("bad JSON");
    assert!(err.to_string().contains("not valid tuning JSON"), "{err}");

    // Serving the API without an admin token is refused, unless the
    // insecure development flag says so.
    let open = |flags: &[&str]| {
        let mut args = vec![
            "sagaflow",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ];
        args.extend_from_slice(flags);
        sagaflow::config::Config::parse_from(args).unwrap()
    };
    for flags in [&[][..], &["--admin-token", "  "][..]] {
        let err = sagaflow::app::start(&open(flags), Roles::ALL)
            .await
            .expect_err("no token");
        assert!(
            format!("{err:#}").contains("SAGAFLOW_ADMIN_TOKEN is required"),
            "{err:#}"
        );
    }
    assert_eq!(
        open(&["--insecure-no-admin-token"])
            .api_admin_token()
            .unwrap(),
        None
    );
}

/// A local step that fails (an error, not a refusal) for sagas whose data
/// says `"poison": true`, as an action whose database is down would.
struct Brittle;

impl sagaflow_worker::LocalAction for Brittle {
    fn run<'a>(
        &'a self,
        ctx: sagaflow_worker::LocalContext<'a>,
    ) -> sagaflow_worker::ActionFuture<'a> {
        let poison = ctx.saga.data["poison"] == true;
        Box::pin(async move {
            if poison {
                return Err(sagaflow_worker::WorkerError::Corrupt {
                    saga_id: ctx.saga.id,
                    reason: "the action's store is down".to_owned(),
                });
            }
            Ok(sagaflow_workflows::machine::Outcome::Ok)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_saga_in_a_claimed_batch_does_not_hold_back_the_others() {
    use sea_orm::TransactionTrait;
    let app = one_claim_batch_app("brittle", Default::default(), NO_FUNDS).await;
    // All in one transaction: the claim loop sees them at once and takes
    // them in one batch.
    let mut ids = Vec::new();
    let tx = app.db.conn.begin().await.unwrap();
    for n in 0..8 {
        let id = uuid::Uuid::now_v7();
        sagaflow_entity::saga_instance::insert_new(
            &tx,
            id,
            ("brittle", 1),
            serde_json::json!({ "poison": n == 3 }),
            serde_json::json!({}),
            "test",
        )
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    app.await_scalar(
        "SELECT count(*) FROM saga_instances WHERE saga_type = 'brittle' AND state = 'COMPLETED'",
        SETTLE,
        |n| n == 7,
    )
    .await;
    assert_stopped_where_it_was(&app, ids[3]).await;
    app.stop().await;
}

/// An app whose one claim loop takes batches of up to 16 sagas, with a
/// lease far longer than a test, and saga type `name` v1: one local step
/// (`Brittle`, which fails for data with `"poison": true`), then `hooks`.
/// A saga that fails in a batch can only stay behind by its lease, so the
/// others finish only if the failure does not take them down with it.
async fn one_claim_batch_app(
    name: &'static str,
    hooks: sagaflow_workflows::Hooks,
    roles: Roles,
) -> TestApp {
    use sagaflow_workflows::{Action, RetryPolicy, SagaDefinition, StepDef};
    let def = SagaDefinition {
        name,
        version: 1,
        steps: vec![StepDef {
            name: "touch",
            action: Action::Local("brittle.touch"),
            compensation: None,
            retry: RetryPolicy::once(),
            timeout: Duration::from_secs(5),
        }],
        hooks,
    };
    let ext = sagaflow::app::Extensions {
        definitions: vec![def],
        actions: vec![("brittle.touch", std::sync::Arc::new(Brittle))],
    };
    TestApp::start_extended(
        &[
            "--workers",
            "1",
            "--claim-batch",
            "16",
            "--lease-ms",
            "600000",
        ],
        roles,
        ext,
    )
    .await
}

/// The saga failed in its batch: it keeps its lease until it expires,
/// and nothing of its attempt stays.
async fn assert_stopped_where_it_was(app: &TestApp, id: uuid::Uuid) {
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_instances WHERE id = '{id}' AND state = 'RUNNING' \
             AND lease_owner IS NOT NULL"
        ))
        .await,
        1,
        "saga {id} keeps its lease"
    );
    assert_eq!(count(app, &id.to_string(), "kind <> 'CREATED'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_order_hook_in_a_claimed_batch_stops_only_its_saga() {
    use sagaflow_workflows::order_payment::HOOK_MARK_PAID;
    use sea_orm::{ConnectionTrait, TransactionTrait};
    // One local step, then the built-in hook that marks the order PAID,
    // for a batch of sagas the claim loop takes in one transaction. No
    // relay: the orders' events stay in the outbox for the test to read.
    let hooks = sagaflow_workflows::Hooks {
        on_completed: Some(HOOK_MARK_PAID),
        ..Default::default()
    };
    let roles = Roles {
        relay: false,
        ..NO_FUNDS
    };
    let app = one_claim_batch_app("quick_pay", hooks, roles).await;
    app.funded_account(7, "100.00").await;
    let orders: Vec<(String, uuid::Uuid)> = (0..8)
        .map(|n| (format!("QP-{}-{n}", app.prefix), uuid::Uuid::now_v7()))
        .collect();
    let tx = app.db.conn.begin().await.unwrap();
    for (n, (order_no, id)) in orders.iter().enumerate() {
        // Someone moved order 3 behind its saga's back.
        let status = if n == 3 { "CANCELLED" } else { "PENDING" };
        tx.execute_unprepared(&format!(
            "INSERT INTO orders (order_no, user_id, amount, status, saga_id) \
             VALUES ('{order_no}', 7, 1.00, '{status}', '{id}')"
        ))
        .await
        .unwrap();
        sagaflow_entity::saga_instance::insert_new(
            &tx,
            *id,
            ("quick_pay", 1),
            serde_json::json!({ "order_no": order_no, "user_id": 7, "amount": "1.00" }),
            serde_json::json!({}),
            "test",
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    app.await_scalar(
        "SELECT count(*) FROM saga_instances WHERE saga_type = 'quick_pay' AND state = 'COMPLETED'",
        SETTLE,
        |n| n == 7,
    )
    .await;
    let events = app.topic("orders.events");
    for (n, (order_no, id)) in orders.iter().enumerate() {
        let status = app.order(order_no).await["status"].clone();
        let announced = app
            .scalar_i64(&format!(
                "SELECT count(*) FROM outbox WHERE topic = '{events}' AND key = '{order_no}' \
                 AND payload->>'type' = 'OrderPaid'"
            ))
            .await;
        if n == 3 {
            assert_eq!(status, "CANCELLED");
            assert_eq!(announced, 0, "a refused move announces nothing");
            assert_stopped_where_it_was(&app, *id).await;
        } else {
            assert_eq!(status, "PAID", "order {n}");
            assert_eq!(announced, 1, "order {n} is announced once");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_answer_to_an_earlier_attempt_completes_the_saga() {
    // Attempt 1 goes unanswered past its deadline, so attempt 2 goes out;
    // then the participant works off its backlog and answers attempt 1.
    let tuning = r#"{
      "order_payment.debit": {
        "timeout_ms": 1500,
        "retry": {"max_attempts": 4, "initial_backoff": 20, "max_backoff": 50}
      }
    }"#;
    let app = start(tuning, NO_FUNDS).await;
    app.funded_account(23, "10.00").await;
    let fake = FakeParticipant::new(&app);
    let (order_no, saga) = order_for(&app, 23, "4.00").await;
    let (first, payload) = fake.next_command().await;
    let (second, _) = fake.next_command().await;
    assert_eq!((first.attempt, second.attempt), (1, 2));
    participant(&app, &payload).await;

    // The debit happened, so the order is PAID: no timeout-then-refund.
    assert_eq!(app.settled_order(&order_no, SETTLE).await["status"], "PAID");
    app.await_saga_state(&saga, "COMPLETED", SETTLE).await;
    assert_eq!(
        count(
            &app,
            &saga,
            "kind = 'REPLY_RECEIVED' AND (detail->>'answers_attempt')::int = 1"
        )
        .await,
        1
    );
    assert_eq!(count(&app, &saga, "kind = 'COMPENSATION_STARTED'").await, 0);
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);
    assert_eq!(ledger(&app, &saga, "REFUND").await, 0);
    assert_eq!(app.account(23).await["balance"], "6.00");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}

/// The funds participant records a whole batch's inbox rows before it
/// processes the first command. A debit and its refunds arriving in one
/// batch must still meet as they do one by one: the refund undoes the
/// debit, and a refund ahead of its debit fences the debit off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_debit_and_its_refund_in_one_participant_batch_settle_as_one_by_one() {
    use sagaflow_worker::consumer::{Handled, Incoming};
    let batch = |payloads: Vec<&Vec<u8>>| -> Vec<Incoming> {
        payloads
            .into_iter()
            .map(|p| Incoming {
                payload: p.clone(),
                span: tracing::Span::none(),
            })
            .collect()
    };
    let app = start(GIVES_UP, NO_FUNDS).await;
    let fake = FakeParticipant::new(&app);
    let topics = app.config.topics();

    // Debit, then both refunds, in one batch: taken, then given back once.
    let (_, saga, cmds) = failed_saga(&app, &fake, 31).await;
    let handled = sagaflow_worker::participant::handle_batch(
        &mut Session::new(&app.db.conn),
        &topics,
        batch(vec![&cmds[0], &cmds[1], &cmds[2]]),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            handled[..],
            [Handled::Applied, Handled::Applied, Handled::Applied]
        ),
        "{handled:?}"
    );
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 1);
    assert_eq!(ledger(&app, &saga, "REFUND").await, 1);
    assert_eq!(app.account(31).await["balance"], "10.00");

    // A refund ahead of its debit in one batch: nothing to give back, and
    // the late debit is fenced off.
    let (_, saga, cmds) = failed_saga(&app, &fake, 32).await;
    sagaflow_worker::participant::handle_batch(
        &mut Session::new(&app.db.conn),
        &topics,
        batch(vec![&cmds[1], &cmds[0]]),
    )
    .await
    .unwrap();
    assert_eq!(ledger(&app, &saga, "DEBIT").await, 0);
    assert_eq!(ledger(&app, &saga, "REFUND").await, 0);
    assert_eq!(app.account(32).await["balance"], "10.00");
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
    app.stop().await;
}
