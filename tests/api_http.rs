//! The HTTP API driven through `poem::test::TestClient` (and once through a
//! real socket) against a fresh, migrated Postgres database per test, with
//! the real Kafka readiness check (against the test broker, or a dead port).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use poem::endpoint::BoxEndpoint;
use poem::http::{HeaderValue, StatusCode};
use poem::test::{TestClient, TestRequestBuilder};
use poem::Body;
use sagaflow_api::ApiConfig;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use serde_json::{json, Value};

type Client = TestClient<BoxEndpoint<'static>>;

fn client(db: &DatabaseConnection, kafka_ready: bool) -> Client {
    TestClient::new(sagaflow_api::app(
        db.clone(),
        common::kafka_readiness(kafka_ready),
        ApiConfig::default(),
    ))
}

/// How the API of [`client`] (`ApiConfig::default()`) starts sagas.
fn default_start() -> sagaflow_api::placer::SagaStart {
    let cfg = ApiConfig::default();
    sagaflow_api::placer::SagaStart::new(
        Arc::new(sagaflow_workflows::Registry::builtin()),
        cfg.topics,
    )
}

async fn setup() -> (common::TestDb, Client) {
    let db = common::fresh_database().await;
    let cli = client(&db.conn, true);
    (db, cli)
}

/// A response's status, content type and JSON body (`Value::Null` when the
/// body is not JSON).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: poem::http::HeaderMap,
    content_type: String,
    body: Value,
    text: String,
}

async fn send(req: TestRequestBuilder<'_, BoxEndpoint<'static>>) -> Reply {
    let resp = req.send().await.0;
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = resp.content_type().unwrap_or_default().to_owned();
    let text = resp.into_body().into_string().await.expect("read body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        content_type,
        body,
        text,
    }
}

async fn post_json(cli: &Client, path: &str, body: Value) -> Reply {
    send(cli.post(path).body_json(&body)).await
}

/// Asserts an RFC 9457 problem with `status`, naming `field` in `errors`
/// when given.
#[track_caller]
fn assert_problem(reply: &Reply, status: StatusCode, field: Option<&str>, context: &str) {
    assert_eq!(
        reply.status, status,
        "{context}: status; body {}",
        reply.text
    );
    assert_eq!(
        reply.content_type, "application/problem+json",
        "{context}: content type"
    );
    let b = &reply.body;
    assert!(b["type"].is_string(), "{context}: type in {b}");
    assert!(b["title"].is_string(), "{context}: title in {b}");
    assert_eq!(
        b["status"],
        json!(status.as_u16()),
        "{context}: status member"
    );
    assert!(
        b["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{context}: detail in {b}"
    );
    if let Some(field) = field {
        let errors = b["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{context}: errors in {b}"));
        assert!(
            errors.iter().any(|e| e["field"] == field && e["reason"].as_str().is_some_and(|r| !r.is_empty())),
            "{context}: field {field} named in {b}"
        );
        assert!(
            b["detail"].as_str().unwrap_or_default().contains(field),
            "{context}: detail names {field}"
        );
    }
}

async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT count(*) AS n FROM {table}"),
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

/// Row counts of every table a request could write.
async fn counts(db: &DatabaseConnection) -> [i64; 5] {
    [
        count(db, "accounts").await,
        count(db, "ledger_entries").await,
        count(db, "orders").await,
        count(db, "saga_instances").await,
        count(db, "saga_events").await,
    ]
}

async fn create_account(cli: &Client, user_id: i64) {
    let r = post_json(cli, "/accounts", json!({ "user_id": user_id })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn account_create_is_201_then_409() {
    let (db, cli) = setup().await;
    let r = post_json(&cli, "/accounts", json!({ "user_id": 42 })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], 42);
    assert_eq!(r.body["balance"], "0.00");
    assert!(r.body["created_at"].is_string());

    let again = post_json(&cli, "/accounts", json!({ "user_id": 42 })).await;
    assert_problem(&again, StatusCode::CONFLICT, None, "duplicate account");
    assert_eq!(count(&db.conn, "accounts").await, 1);
}

#[tokio::test]
async fn deposit_raises_balance_and_writes_a_ledger_row() {
    let (db, cli) = setup().await;
    create_account(&cli, 7).await;
    let r = post_json(&cli, "/accounts/7/deposits", json!({ "amount": "100" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], 7);
    assert_eq!(r.body["balance"], "100.00");
    assert_eq!(r.body["deposit"]["amount"], "100.00");
    assert!(r.body["deposit"]["id"].is_i64());
    assert!(r.body["deposit"]["created_at"].is_string());

    let r = post_json(&cli, "/accounts/7/deposits", json!({ "amount": "0.5" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["balance"], "100.50");

    let rows = db
        .conn
        .query_all(Statement::from_string(
            db.conn.get_database_backend(),
            "SELECT kind, amount::text AS amount, balance_after::text AS balance_after, saga_id IS NULL AS no_saga \
             FROM ledger_entries WHERE user_id = 7 ORDER BY id",
        ))
        .await
        .expect("ledger");
    let rows: Vec<(String, String, String, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "kind").unwrap(),
                r.try_get("", "amount").unwrap(),
                r.try_get("", "balance_after").unwrap(),
                r.try_get("", "no_saga").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("DEPOSIT".into(), "100.00".into(), "100.00".into(), true),
            ("DEPOSIT".into(), "0.50".into(), "100.50".into(), true),
        ]
    );
    let balance = db
        .conn
        .query_one(Statement::from_string(
            db.conn.get_database_backend(),
            "SELECT balance::text AS b FROM accounts WHERE user_id = 7",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(balance.try_get::<String>("", "b").unwrap(), "100.50");
}

#[tokio::test]
async fn deposit_to_unknown_account_is_404_and_overflow_is_422() {
    let (db, cli) = setup().await;
    let r = post_json(&cli, "/accounts/99/deposits", json!({ "amount": "1.00" })).await;
    assert_problem(&r, StatusCode::NOT_FOUND, None, "unknown account");

    create_account(&cli, 5).await;
    db.conn
        .execute(Statement::from_string(
            db.conn.get_database_backend(),
            "UPDATE accounts SET balance = 9999999999999999.00 WHERE user_id = 5",
        ))
        .await
        .unwrap();
    let before = counts(&db.conn).await;
    let r = post_json(&cli, "/accounts/5/deposits", json!({ "amount": "1.00" })).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("amount"),
        "balance overflow",
    );
    assert_eq!(
        counts(&db.conn).await,
        before,
        "overflowing deposit wrote nothing"
    );
    // Right up to the limit is fine.
    let r = post_json(&cli, "/accounts/5/deposits", json!({ "amount": "0.99" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["balance"], "9999999999999999.99");
}

#[tokio::test]
async fn get_account_shows_recent_entries_newest_first() {
    let (_db, cli) = setup().await;
    let r = send(cli.get("/accounts/3")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, None, "no account yet");

    create_account(&cli, 3).await;
    for i in 1..=22 {
        let r = post_json(
            &cli,
            "/accounts/3/deposits",
            json!({ "amount": format!("{i}.10") }),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let r = send(cli.get("/accounts/3")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user_id"], 3);
    // 1.10 + 2.10 + ... + 22.10 = 253 + 2.20
    assert_eq!(r.body["balance"], "255.20");
    assert!(r.body["created_at"].is_string() && r.body["updated_at"].is_string());
    let entries = r.body["recent_entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 20, "at most 20 entries");
    assert_eq!(entries[0]["amount"], "22.10", "newest first");
    assert_eq!(entries[0]["balance_after"], "255.20");
    assert_eq!(entries[0]["kind"], "DEPOSIT");
    assert!(entries[0]["saga_id"].is_null());
    assert_eq!(entries[19]["amount"], "3.10");
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "ids descending: {ids:?}"
    );
}

#[tokio::test]
async fn post_order_writes_order_saga_history_and_debit_together() {
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let before = counts(&db.conn).await;
    let r = post_json(&cli, "/orders", json!({ "user_id": 1, "amount": "19.9" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let order_no = r.body["order_no"].as_str().expect("order_no").to_owned();
    assert!(
        order_no.starts_with("ORD-") && order_no.len() == 36,
        "{order_no}"
    );
    assert_eq!(r.body["user_id"], 1);
    assert_eq!(r.body["amount"], "19.90");
    assert_eq!(r.body["status"], "PENDING");
    assert!(r.body["created_at"].is_string() && r.body["updated_at"].is_string());
    let saga_id = r.body["saga_id"].as_str().expect("saga_id").to_owned();

    let after = counts(&db.conn).await;
    assert_eq!(after[2], before[2] + 1, "one order");
    assert_eq!(after[3], before[3] + 1, "one saga");
    assert_eq!(after[4], before[4] + 2, "two saga events");
    assert_eq!(after[1], before[1], "no ledger entry yet");

    let backend = db.conn.get_database_backend();
    let saga = db
        .conn
        .query_one(Statement::from_string(
            backend,
            format!(
                "SELECT saga_type, definition_version, state, current_step, attempt, \
                 next_run_at = deadline AS until_deadline, \
                 deadline BETWEEN now() + interval '29 seconds' AND now() + interval '31 seconds' \
                     AS deadline_in_30s, \
                 lease_owner IS NULL AS unleased, data \
                 FROM saga_instances WHERE id = '{saga_id}'"
            ),
        ))
        .await
        .unwrap()
        .expect("saga row with the order's saga_id");
    assert_eq!(
        saga.try_get::<String>("", "saga_type").unwrap(),
        "order_payment"
    );
    assert_eq!(saga.try_get::<i32>("", "definition_version").unwrap(), 1);
    // Started by the placing statement: already waiting for its debit,
    // due again only when the debit's 30 s deadline passes.
    assert_eq!(saga.try_get::<String>("", "state").unwrap(), "WAITING");
    assert_eq!(saga.try_get::<i32>("", "current_step").unwrap(), 0);
    assert_eq!(saga.try_get::<i32>("", "attempt").unwrap(), 1);
    assert!(saga.try_get::<bool>("", "until_deadline").unwrap());
    assert!(saga.try_get::<bool>("", "deadline_in_30s").unwrap());
    assert!(saga.try_get::<bool>("", "unleased").unwrap());
    let data: Value = saga.try_get("", "data").unwrap();
    assert_eq!(
        data,
        json!({ "order_no": order_no, "user_id": 1, "amount": "19.90" })
    );

    let events = db
        .conn
        .query_all(Statement::from_string(
            backend,
            format!(
                "SELECT kind, from_state, to_state, step, attempt, actor, detail \
                 FROM saga_events WHERE saga_id = '{saga_id}' ORDER BY id"
            ),
        ))
        .await
        .unwrap();
    let row = |i: usize| {
        let e = &events[i];
        (
            e.try_get::<String>("", "kind").unwrap(),
            e.try_get::<Option<String>>("", "from_state").unwrap(),
            e.try_get::<String>("", "to_state").unwrap(),
            e.try_get::<i32>("", "attempt").unwrap(),
            e.try_get::<String>("", "actor").unwrap(),
        )
    };
    assert_eq!(events.len(), 2);
    assert_eq!(
        row(0),
        ("CREATED".into(), None, "RUNNING".into(), 0, "api".into())
    );
    let detail: Value = events[0].try_get("", "detail").unwrap();
    assert_eq!(detail["order_no"], order_no.as_str());
    assert_eq!(
        row(1),
        (
            "COMMAND_SENT".into(),
            Some("RUNNING".into()),
            "WAITING".into(),
            1,
            "api".into()
        )
    );
    let detail: Value = events[1].try_get("", "detail").unwrap();
    assert_eq!(detail["command"], "funds.debit");

    // The debit is in the outbox, keyed by the account, as a worker
    // claiming the saga would have written it.
    let command = db
        .conn
        .query_one(Statement::from_string(
            backend,
            "SELECT topic, key, payload, headers FROM outbox".to_owned(),
        ))
        .await
        .unwrap()
        .expect("the debit command in the outbox");
    assert_eq!(
        command.try_get::<String>("", "topic").unwrap(),
        "funds.commands"
    );
    assert_eq!(command.try_get::<String>("", "key").unwrap(), "1");
    let payload: Value = command.try_get("", "payload").unwrap();
    let expected_id = sagaflow_workflows::messages::CommandEnvelope::message_id_for(
        saga_id.parse().unwrap(),
        0,
        false,
    );
    assert_eq!(
        payload,
        json!({
            "message_id": expected_id.to_string(),
            "type": "funds.debit",
            "saga_id": saga_id,
            "epoch": 0,
            "step": 0,
            "attempt": 1,
            "compensation": false,
            "user_id": 1,
            "amount": "19.90",
        })
    );
    let headers: Value = command.try_get("", "headers").unwrap();
    assert_eq!(headers["type"], "funds.debit");
    assert_eq!(headers["attempt"], "1");
    let traceparent = headers["traceparent"].as_str().expect("traceparent");
    assert!(
        traceparent.starts_with(&format!("00-{}-", saga_id.replace('-', ""))),
        "{traceparent}"
    );

    let order = db
        .conn
        .query_one(Statement::from_string(
            backend,
            format!("SELECT saga_id::text AS s, idempotency_key IS NULL AS nokey FROM orders WHERE order_no = '{order_no}'"),
        ))
        .await
        .unwrap()
        .expect("order row");
    assert_eq!(order.try_get::<String>("", "s").unwrap(), saga_id);
    assert!(order.try_get::<bool>("", "nokey").unwrap());

    let got = send(cli.get(format!("/orders/{order_no}"))).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["order_no"], order_no.as_str());
    assert_eq!(got.body["amount"], "19.90");
    assert_eq!(got.body["status"], "PENDING");
    assert_eq!(got.body["saga_id"], saga_id.as_str());
    assert!(got.body["failure_reason"].is_null());

    let missing = send(cli.get("/orders/ORD-nope")).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, None, "unknown order");
}

#[tokio::test]
async fn post_order_is_one_transaction_and_db_errors_are_opaque_500s() {
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    // The third insert of the transaction fails: nothing of it may remain.
    db.conn
        .execute(Statement::from_string(
            db.conn.get_database_backend(),
            "DROP TABLE saga_events",
        ))
        .await
        .unwrap();
    let r = post_json(&cli, "/orders", json!({ "user_id": 1, "amount": "5.00" })).await;
    assert_problem(&r, StatusCode::INTERNAL_SERVER_ERROR, None, "db failure");
    assert!(
        r.body["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        r.text
    );
    let text = r.text.to_lowercase();
    for leak in [
        "saga_events",
        "relation \"",
        "does not exist",
        "sql",
        "insert",
        "postgres",
    ] {
        assert!(
            !text.contains(leak),
            "error body leaks {leak:?}: {}",
            r.text
        );
    }
    assert_eq!(count(&db.conn, "orders").await, 0, "order rolled back");
    assert_eq!(
        count(&db.conn, "saga_instances").await,
        0,
        "saga rolled back"
    );
    assert_eq!(count(&db.conn, "outbox").await, 0, "command rolled back");
}

/// The API's serving pool cuts a statement off after
/// `SAGAFLOW_QUERY_STATEMENT_TIMEOUT_MS`: a request held up by a lock, or
/// refused a connection, is answered 503 with `Retry-After` (a problem
/// that leaks nothing and names a correlation id), writes nothing, and
/// succeeds once the database answers again.
#[tokio::test]
async fn a_database_that_cannot_answer_is_a_503_with_retry_after_and_writes_nothing() {
    let db = common::fresh_database().await;
    let cfg = sagaflow::config::Config::parse_from([
        "sagaflow",
        "--database-url",
        &db.url,
        "--query-statement-timeout-ms",
        "300",
    ])
    .unwrap();
    let serving = sagaflow::app::connect_serving(&cfg).await.unwrap();
    let cli = client(&serving, true);
    create_account(&cli, 1).await;
    let order = json!({ "user_id": 1, "amount": "5.00" });

    // An operator's transaction holds the accounts table.
    let lock = db.conn.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Bounded, so that a request that waits on the lock fails the test
    // instead of hanging it.
    let (read, placed) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        (
            send(cli.get("/accounts/1")).await,
            post_json(&cli, "/orders", order.clone()).await,
        )
    })
    .await
    .expect("the requests waited on the lock past the statement timeout");
    lock.rollback().await.unwrap();
    for (what, r) in [("GET /accounts/1", &read), ("POST /orders", &placed)] {
        assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, None, what);
        assert_eq!(r.body["type"], "urn:sagaflow:problem:unavailable", "{what}");
        assert_eq!(
            r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1"),
            "{what}: Retry-After"
        );
        let id = r.body["correlation_id"].as_str().unwrap_or_default();
        assert!(r.text.contains(id) && !id.is_empty(), "{what}: {}", r.text);
        let text = r.text.to_lowercase();
        for leak in ["accounts", "statement", "timeout", "lock", "postgres"] {
            assert!(!text.contains(leak), "{what} leaks {leak:?}: {}", r.text);
        }
    }
    assert_eq!(counts(&db.conn).await[2..], [0, 0, 0], "nothing placed");
    assert_eq!(count(&db.conn, "outbox").await, 0, "no command");

    // The lock is gone: the same requests go through.
    assert_eq!(send(cli.get("/accounts/1")).await.status, StatusCode::OK);
    let r = post_json(&cli, "/orders", order).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // No connection to be had at all.
    serving.clone().close().await.unwrap();
    let r = send(cli.get("/sagas")).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, None, "closed pool");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
}

#[tokio::test]
async fn idempotency_key_replays_same_order_and_refuses_other_body() {
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let key = "order-attempt-1";
    let first = send(
        cli.post("/orders")
            .header("Idempotency-Key", key)
            .body_json(&json!({ "user_id": 1, "amount": "10.5" })),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    // Same request, amount written differently but equal.
    let again = send(
        cli.post("/orders")
            .header("Idempotency-Key", key)
            .body_json(&json!({ "user_id": 1, "amount": "10.50" })),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["order_no"], first.body["order_no"]);
    assert_eq!(again.body["saga_id"], first.body["saga_id"]);
    assert_eq!(again.body["amount"], "10.50");
    assert_eq!(count(&db.conn, "orders").await, 1);
    assert_eq!(count(&db.conn, "saga_instances").await, 1);
    assert_eq!(count(&db.conn, "saga_events").await, 2);
    assert_eq!(count(&db.conn, "outbox").await, 1, "one debit command");

    // The replay answers the order as it stands now.
    db.conn
        .execute(Statement::from_string(
            db.conn.get_database_backend(),
            "UPDATE orders SET status = 'PAID', updated_at = now()",
        ))
        .await
        .unwrap();
    let paid = send(
        cli.post("/orders")
            .header("Idempotency-Key", key)
            .body_json(&json!({ "user_id": 1, "amount": "10.50" })),
    )
    .await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    assert_eq!(paid.body["status"], "PAID");

    let before = counts(&db.conn).await;
    let other = send(
        cli.post("/orders")
            .header("Idempotency-Key", key)
            .body_json(&json!({ "user_id": 1, "amount": "11.00" })),
    )
    .await;
    assert_problem(&other, StatusCode::CONFLICT, None, "same key, other body");
    assert_eq!(counts(&db.conn).await, before);

    // Without a key, the same body places a new order each time.
    let k1 = post_json(&cli, "/orders", json!({ "user_id": 1, "amount": "10.50" })).await;
    let k2 = post_json(&cli, "/orders", json!({ "user_id": 1, "amount": "10.50" })).await;
    assert_eq!(
        (k1.status, k2.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(k1.body["order_no"], k2.body["order_no"]);
    assert_eq!(count(&db.conn, "orders").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_with_one_key_place_exactly_one_order() {
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let cli = Arc::new(cli);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cli = Arc::clone(&cli);
            tokio::spawn(async move {
                send(
                    cli.post("/orders")
                        .header("Idempotency-Key", "race-key")
                        .body_json(&json!({ "user_id": 1, "amount": "3.00" })),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    let mut order_nos = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("unexpected {other}: {}", r.text),
        }
        order_nos.insert(r.body["order_no"].as_str().expect("order_no").to_owned());
    }
    assert_eq!(created, 1, "exactly one 201");
    assert_eq!(order_nos.len(), 1, "every answer names the same order");
    assert_eq!(count(&db.conn, "orders").await, 1);
    assert_eq!(count(&db.conn, "saga_instances").await, 1);
    assert_eq!(count(&db.conn, "saga_events").await, 2);
    assert_eq!(count(&db.conn, "outbox").await, 1, "one debit command");
}

/// Orders placed together (as the API's lanes place concurrent requests)
/// get the answers each would get alone: new orders, an unknown user's
/// 422, a key used twice in the batch placing one order, a key of an
/// earlier order answering that order. The new ones go in by one
/// statement: they share its transaction's timestamp.
#[tokio::test]
async fn orders_placed_together_are_answered_as_if_placed_alone() {
    use sagaflow_api::orders::NewOrder;
    use sagaflow_api::placer::{place_all, OrderRequest, Placed};
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let earlier = send(
        cli.post("/orders")
            .header("Idempotency-Key", "k-old")
            .body_json(&json!({ "user_id": 1, "amount": "2.00" })),
    )
    .await;
    assert_eq!(earlier.status, StatusCode::CREATED, "{}", earlier.text);
    let order = |user_id: i64, key: Option<&str>| {
        let new = NewOrder {
            user_id,
            amount: "2.00".parse().unwrap(),
        };
        OrderRequest {
            new,
            key: key.map(str::to_owned),
            fingerprint: key.map(|_| new.fingerprint()),
        }
    };
    let results = place_all(
        &db.conn,
        &default_start(),
        vec![
            order(1, None),
            order(1, None),
            order(999, None),
            order(1, Some("k-new")),
            order(1, Some("k-new")),
            order(1, Some("k-old")),
            order(1, None),
        ],
    )
    .await;
    let new_order = |i: usize| match &results[i] {
        Ok(Some(Placed::New(o))) => o.clone(),
        other => panic!("order {i}: {other:?}"),
    };
    let existing = |i: usize| match &results[i] {
        Ok(Some(Placed::Existing(o))) => o.clone(),
        other => panic!("order {i}: {other:?}"),
    };
    let new: Vec<_> = [0, 1, 3, 6].into_iter().map(new_order).collect();
    match &results[2] {
        Err(e) => assert!(e.to_string().contains("user 999 has no account"), "{e}"),
        other => panic!("an unknown user's order: {other:?}"),
    }
    assert_eq!(existing(4).order_no, new[2].order_no, "k-new twice");
    assert_eq!(
        json!(existing(5).order_no),
        earlier.body["order_no"],
        "k-old"
    );
    assert!(
        new.iter().all(|o| o.created_at == new[0].created_at),
        "the new orders were not placed by one statement: {:?}",
        new.iter().map(|o| o.created_at).collect::<Vec<_>>()
    );
    assert_eq!(count(&db.conn, "orders").await, 5);
    assert_eq!(count(&db.conn, "saga_instances").await, 5);
    // CREATED and COMMAND_SENT, and the debit command, of each new order.
    assert_eq!(count(&db.conn, "saga_events").await, 10);
    assert_eq!(count(&db.conn, "outbox").await, 5);
}

/// A saga the placing statement cannot start (here: the API was given no
/// definition of it, as with one whose first step is local) is written as
/// before the statement started sagas: RUNNING, due now by the database's
/// clock, with no command, for a claim loop to take.
#[tokio::test]
async fn an_order_whose_saga_cannot_start_with_it_is_left_due_for_the_workers() {
    use sagaflow_api::orders::NewOrder;
    use sagaflow_api::placer::{place_all, OrderRequest, Placed, SagaStart};
    use sagaflow_entity::wake::Channel;
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let start = SagaStart::new(
        Arc::new(sagaflow_workflows::Registry::empty()),
        ApiConfig::default().topics,
    );
    assert_eq!(start.wakes(), Channel::Saga);
    assert_eq!(default_start().wakes(), Channel::Outbox);
    let order = OrderRequest {
        new: NewOrder {
            user_id: 1,
            amount: "3.00".parse().unwrap(),
        },
        key: None,
        fingerprint: None,
    };
    let saga_id = match &place_all(&db.conn, &start, vec![order]).await[..] {
        [Ok(Some(Placed::New(o)))] => o.saga_id,
        other => panic!("{other:?}"),
    };
    let saga = db
        .conn
        .query_one(Statement::from_string(
            db.conn.get_database_backend(),
            format!(
                "SELECT state, attempt, deadline IS NULL AS no_deadline, \
                 next_run_at BETWEEN now() - interval '1 minute' AND clock_timestamp() AS due \
                 FROM saga_instances WHERE id = '{saga_id}'"
            ),
        ))
        .await
        .unwrap()
        .expect("saga row");
    assert_eq!(saga.try_get::<String>("", "state").unwrap(), "RUNNING");
    assert_eq!(saga.try_get::<i32>("", "attempt").unwrap(), 0);
    assert!(saga.try_get::<bool>("", "no_deadline").unwrap());
    assert!(saga.try_get::<bool>("", "due").unwrap());
    assert_eq!(count(&db.conn, "saga_events").await, 1, "CREATED only");
    assert_eq!(count(&db.conn, "outbox").await, 0, "no command");
}

/// Only a batch Postgres refused is retried order by order. One whose
/// outcome is unknown (its connection gone before an answer) may yet have
/// committed, and placing its orders again could place an order without a
/// key twice: every order gets the error instead.
#[tokio::test]
async fn only_an_order_batch_the_server_refused_is_retried_order_by_order() {
    use sagaflow_api::orders::NewOrder;
    use sagaflow_api::placer::{place_all, refused_by_the_server, OrderRequest};
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let refused = db
        .conn
        .execute(Statement::from_string(
            db.conn.get_database_backend(),
            "SELECT 1 / 0",
        ))
        .await
        .unwrap_err();
    assert!(refused_by_the_server(&refused), "{refused:?}");
    let closed = sea_orm::Database::connect(&db.url).await.unwrap();
    closed.clone().close().await.unwrap();
    let unknown = closed
        .execute(Statement::from_string(
            closed.get_database_backend(),
            "SELECT 1",
        ))
        .await
        .unwrap_err();
    assert!(!refused_by_the_server(&unknown), "{unknown:?}");
    let order = || OrderRequest {
        new: NewOrder {
            user_id: 1,
            amount: "1.00".parse().unwrap(),
        },
        key: None,
        fingerprint: None,
    };
    let results = place_all(&closed, &default_start(), vec![order(), order(), order()]).await;
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert_eq!(count(&db.conn, "orders").await, 0);
}

/// One bad request: what is sent and what must come back.
struct Bad {
    what: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    key: Option<HeaderValue>,
    status: StatusCode,
    field: Option<&'static str>,
}

fn bad(
    what: &'static str,
    path: &'static str,
    body: &str,
    status: StatusCode,
    field: Option<&'static str>,
) -> Bad {
    Bad {
        what,
        path,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        key: None,
        status,
        field,
    }
}

#[tokio::test]
async fn every_bad_input_is_a_named_4xx_problem_and_writes_nothing() {
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let bad_request = StatusCode::BAD_REQUEST;
    let mut cases = Vec::new();
    // Amounts, on both endpoints that take one.
    for path in ["/orders", "/accounts/1/deposits"] {
        for (what, amount) in [
            ("zero", json!("0")),
            ("zero with places", json!("0.00")),
            ("negative", json!("-5.00")),
            ("negative zero", json!("-0.00")),
            ("three decimals", json!("1.005")),
            ("exponent", json!("1e3")),
            ("NaN", json!("NaN")),
            ("absurdly large", json!("99999999999999999999999999")),
            ("above maximum", json!("1000000000.01")),
            ("not a number", json!("abc")),
            ("empty", json!("")),
            ("spaces", json!(" 1.00")),
            ("JSON number", json!(19.99)),
            ("JSON integer", json!(20)),
            ("boolean", json!(true)),
            ("null", Value::Null),
        ] {
            let body = if path == "/orders" {
                json!({ "user_id": 1, "amount": amount })
            } else {
                json!({ "amount": amount })
            };
            cases.push(bad(
                what,
                path,
                &body.to_string(),
                unprocessable,
                Some("amount"),
            ));
        }
        cases.push(bad(
            "missing amount",
            path,
            r#"{"user_id": 1}"#,
            unprocessable,
            Some("amount"),
        ));
        cases.push(bad(
            "malformed JSON",
            path,
            r#"{"user_id": 1, "amount": "#,
            bad_request,
            None,
        ));
        cases.push(bad("empty body", path, "", bad_request, None));
        cases.push(bad("array body", path, "[]", bad_request, None));
        cases.push(bad("string body", path, r#""19.99""#, bad_request, None));
        cases.push(Bad {
            content_type: Some("text/plain"),
            ..bad(
                "text/plain",
                path,
                r#"{"user_id": 1, "amount": "1.00"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
            )
        });
        cases.push(Bad {
            content_type: None,
            ..bad(
                "no content type",
                path,
                r#"{"user_id": 1, "amount": "1.00"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
            )
        });
    }
    // user_id, on both endpoints that take one in the body.
    for path in ["/orders", "/accounts"] {
        for (what, user_id) in [
            ("user_id zero", json!(0)),
            ("user_id negative", json!(-3)),
            ("user_id string", json!("abc")),
            ("user_id numeric string", json!("1")),
            ("user_id fraction", json!(1.5)),
            ("user_id above i64", json!(9_223_372_036_854_775_808_u64)),
            ("user_id float exponent", json!(1e30)),
            ("user_id object", json!({})),
        ] {
            let body = if path == "/orders" {
                json!({ "user_id": user_id, "amount": "1.00" })
            } else {
                json!({ "user_id": user_id })
            };
            cases.push(bad(
                what,
                path,
                &body.to_string(),
                unprocessable,
                Some("user_id"),
            ));
        }
        let body = if path == "/orders" {
            r#"{"amount": "1.00"}"#
        } else {
            "{}"
        };
        cases.push(bad(
            "missing user_id",
            path,
            body,
            unprocessable,
            Some("user_id"),
        ));
    }
    cases.push(bad(
        "unknown field",
        "/accounts",
        r#"{"user_id": 9, "nickname": "x"}"#,
        unprocessable,
        Some("nickname"),
    ));
    cases.push(bad(
        "unknown user",
        "/orders",
        r#"{"user_id": 999, "amount": "1.00"}"#,
        unprocessable,
        Some("user_id"),
    ));
    cases.push(bad(
        "deposit path user_id",
        "/accounts/abc/deposits",
        r#"{"amount": "1.00"}"#,
        unprocessable,
        Some("user_id"),
    ));
    cases.push(bad(
        "deposit to nobody",
        "/accounts/2/deposits",
        r#"{"amount": "1.00"}"#,
        StatusCode::NOT_FOUND,
        None,
    ));
    let order = r#"{"user_id": 1, "amount": "1.00"}"#;
    for (what, key) in [
        ("empty key", HeaderValue::from_static("")),
        ("key with space", HeaderValue::from_static("a b")),
        (
            "key too long",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        ),
        (
            "key not ASCII",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        ),
        ("key with tab", HeaderValue::from_bytes(b"a\tb").unwrap()),
    ] {
        cases.push(Bad {
            key: Some(key),
            ..bad(
                what,
                "/orders",
                order,
                unprocessable,
                Some("Idempotency-Key"),
            )
        });
    }

    let before = counts(&db.conn).await;
    for case in &cases {
        let mut req = cli.post(case.path).body(case.body.clone());
        if let Some(ct) = case.content_type {
            req = req.content_type(ct);
        }
        if let Some(key) = &case.key {
            req = req.header("Idempotency-Key", key.clone());
        }
        let reply = send(req).await;
        assert_problem(
            &reply,
            case.status,
            case.field,
            &format!("{} on {}", case.what, case.path),
        );
        assert_eq!(
            counts(&db.conn).await,
            before,
            "{} on {} wrote nothing",
            case.what,
            case.path
        );
    }

    // A key of 255 visible characters is fine.
    let ok = send(
        cli.post("/orders")
            .header("Idempotency-Key", "k".repeat(255))
            .body(order)
            .content_type("application/json"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
}

#[tokio::test]
async fn reads_with_bad_paths_are_problems() {
    let (_db, cli) = setup().await;
    let r = send(cli.get("/accounts/abc")).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("user_id"),
        "non-integer user_id",
    );
    let r = send(cli.get("/accounts/0")).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("user_id"),
        "user ids start at 1",
    );
    let r = send(cli.get("/accounts/99999999999999999999")).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("user_id"),
        "user_id beyond i64",
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_with_or_without_content_length() {
    let (db, cli) = setup().await;
    create_account(&cli, 1).await;
    let limit = ApiConfig::default().body_limit_bytes;
    let big = format!(
        r#"{{"user_id": 1, "amount": "1.00", "pad": "{}"}}"#,
        "x".repeat(limit)
    );
    let before = counts(&db.conn).await;

    let declared = send(
        cli.post("/orders")
            .content_type("application/json")
            .header("content-length", big.len())
            .body(big.clone()),
    )
    .await;
    assert_problem(
        &declared,
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        "declared length",
    );

    // Chunked: no Content-Length, the body arrives as a stream.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = send(
        cli.post("/orders")
            .content_type("application/json")
            .body(Body::from_bytes_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_problem(
        &streamed,
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        "chunked body",
    );

    let deposit = send(
        cli.post("/accounts/1/deposits")
            .content_type("application/json")
            .body(big),
    )
    .await;
    assert_problem(&deposit, StatusCode::PAYLOAD_TOO_LARGE, None, "deposit");
    assert_eq!(counts(&db.conn).await, before);

    // Just under the limit is read (and here refused for its unknown field).
    let pad = limit - r#"{"user_id": 1, "amount": "1.00", "pad": ""}"#.len();
    let fits = format!(
        r#"{{"user_id": 1, "amount": "1.00", "pad": "{}"}}"#,
        "x".repeat(pad)
    );
    assert_eq!(fits.len(), limit);
    let r = send(
        cli.post("/orders")
            .content_type("application/json")
            .body(fits),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("pad"),
        "at the limit",
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let (_db, cli) = setup().await;
    let r = send(cli.get("/nope")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, None, "unknown route");
    let r = send(cli.get("/accounts/1/nope")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, None, "unknown sub-route");
    let r = send(cli.delete("/accounts")).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, None, "DELETE /accounts");
    let r = send(cli.put("/orders/ORD-1")).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, None, "PUT /orders/x");
}

#[tokio::test]
async fn healthz_and_readyz() {
    let db = common::fresh_database().await;
    let ready = client(&db.conn, true);
    let r = send(ready.get("/healthz")).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!({ "status": "ok" }))
    );
    let r = send(ready.get("/readyz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({ "status": "ready", "postgres": true, "kafka": true })
    );

    let no_kafka = client(&db.conn, false);
    let r = send(no_kafka.get("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body,
        json!({ "status": "not_ready", "postgres": true, "kafka": false })
    );

    // Postgres gone: closing a clone closes the shared pool.
    db.conn.clone().close().await.unwrap();
    let r = send(ready.get("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body,
        json!({ "status": "not_ready", "postgres": false, "kafka": true })
    );
    let r = send(ready.get("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK, "liveness does no I/O");
}

#[tokio::test]
async fn openapi_spec_docs_and_start_page() {
    let (_db, cli) = setup().await;
    let r = send(cli.get("/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    let paths = r.body["paths"].as_object().expect("paths");
    for p in [
        "/accounts",
        "/accounts/{user_id}",
        "/accounts/{user_id}/deposits",
        "/orders",
        "/orders/{order_no}",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.contains_key(p),
            "spec has {p}: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let create_order = &r.body["paths"]["/orders"]["post"];
    assert!(create_order["responses"]["422"]["content"]["application/problem+json"].is_object());
    let unavailable = &create_order["responses"]["503"];
    assert!(
        unavailable["content"]["application/problem+json"].is_object()
            && unavailable["headers"]["Retry-After"].is_object(),
        "POST /orders documents its 503: {unavailable}"
    );
    assert!(
        r.body["paths"]["/healthz"]["get"]["responses"]["503"].is_null(),
        "liveness touches no database, so documents no 503"
    );
    let params = create_order["parameters"].as_array().expect("parameters");
    assert!(params
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    assert!(r.body["components"]["schemas"]["Problem"].is_object());

    // Every operation, parameter and schema property is described.
    let mut undocumented = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            if op["summary"].as_str().unwrap_or("").is_empty()
                || op["description"].as_str().unwrap_or("").is_empty()
            {
                undocumented.push(format!("{method} {path}"));
            }
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["description"].as_str().unwrap_or("").is_empty() {
                    undocumented.push(format!("{method} {path} parameter {}", param["name"]));
                }
            }
        }
    }
    for (name, schema) in r.body["components"]["schemas"].as_object().unwrap() {
        for (field, prop) in schema["properties"].as_object().into_iter().flatten() {
            let described = prop["description"].as_str().is_some_and(|d| !d.is_empty())
                || prop["$ref"].is_string()
                || prop["allOf"].is_array();
            if !described {
                undocumented.push(format!("{name}.{field}"));
            }
        }
    }
    assert_eq!(
        undocumented,
        Vec::<String>::new(),
        "undocumented parts of the spec"
    );

    let docs = send(cli.get("/docs")).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.content_type.starts_with("text/html"));

    let index = send(cli.get("/")).await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.content_type.starts_with("text/html"));
    assert!(
        index.text.contains("sagaflow")
            && index.text.contains("href=\"/docs\"")
            && index.text.contains("href=\"/openapi.json\"")
            && index.text.contains("href=\"/metrics\"")
            && index.text.contains("src=\"/ui/app.js\"")
            && index.text.contains("href=\"/ui/app.css\"")
    );
    // The dashboard works offline: nothing on the page or in its assets
    // comes from another host.
    let script = send(cli.get("/ui/app.js")).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.content_type.starts_with("text/javascript"));
    let style = send(cli.get("/ui/app.css")).await;
    assert_eq!(style.status, StatusCode::OK);
    assert!(style.content_type.starts_with("text/css"));
    for (what, text) in [
        ("/", &index.text),
        ("/ui/app.js", &script.text),
        ("/ui/app.css", &style.text),
    ] {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "no CDN: {what} names another host"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_on_a_real_socket_and_refuses_big_chunked_bodies() {
    let db = common::fresh_database().await;
    let app = sagaflow_api::app(
        db.conn.clone(),
        common::kafka_readiness(true),
        ApiConfig::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = sagaflow_api::serve("127.0.0.1:0", app, async move {
        stopped.await.ok();
    })
    .await
    .expect("bind");
    let server = tokio::spawn(server);

    let limit = ApiConfig::default().body_limit_bytes;
    let (health, big) = tokio::task::spawn_blocking(move || {
        let exchange = |request: Vec<u8>| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(&request).expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).ok();
            String::from_utf8_lossy(&out).into_owned()
        };
        let health = exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec());
        let mut chunked = b"POST /accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b' '; 4096];
        for _ in 0..=(limit / chunk.len()) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(&chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        (health, exchange(chunked))
    })
    .await
    .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#"{"status":"ok"}"#), "{health}");
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert!(
        big.to_lowercase()
            .contains("content-type: application/problem+json"),
        "{big}"
    );

    stop.send(()).ok();
    server.await.expect("join").expect("server stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_a_4xx_never_a_500() {
    // PostgreSQL cannot store or compare U+0000; every way in is refused
    // before a query sees it (schemathesis found the first of these).
    let (db, cli) = setup().await;
    create_account(&cli, 7).await;
    let before = counts(&db.conn).await;
    for path in [
        "/orders/ORD%00x",
        "/sagas?order_no=a%00b",
        "/sagas?type=a%00b",
        "/sagas?state=%00",
    ] {
        let r = send(cli.get(path)).await;
        assert!(
            r.status.is_client_error(),
            "{path}: {} {}",
            r.status,
            r.text
        );
        assert!(
            r.content_type.starts_with("application/problem+json"),
            "{path}"
        );
    }
    let r = post_json(&cli, "/orders/ORD%00x/refund", json!({ "reason": "x" })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = post_json(
        &cli,
        "/orders/ORD-1/refund",
        json!({ "reason": "bad\u{0}reason" }),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("reason"),
        "NUL in a reason",
    );
    assert_eq!(counts(&db.conn).await, before, "nothing written");
}
