//! `sagaflow verify` and `GET /verify` on a real Postgres: a consistent
//! database passes, and each kind of broken invariant is reported with the
//! account, order, saga or outbox row that breaks it.

mod common;

use std::process::Command;

use poem::http::StatusCode;
use poem::test::TestClient;
use sagaflow_api::ApiConfig;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .expect(sql);
}

fn cli(url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["verify", "--database-url", url])
        .output()
        .expect("run sagaflow verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_consistent_database_and_names_every_violation() {
    let db = common::fresh_database().await;
    // A consistent history: a deposit, a paid order with its debit.
    exec(
        &db.conn,
        "INSERT INTO accounts (user_id, balance) VALUES (1, 7.50)",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO ledger_entries (user_id, kind, amount, balance_after) VALUES (1, 'DEPOSIT', 10.00, 10.00)",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO saga_instances (id, saga_type, definition_version, state, data) \
         VALUES ('00000000-0000-0000-0000-00000000000a', 'order_payment', 1, 'COMPLETED', '{\"order_no\": \"ORD-OK\"}')",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO orders (order_no, user_id, amount, status, saga_id) \
         VALUES ('ORD-OK', 1, 2.50, 'PAID', '00000000-0000-0000-0000-00000000000a')",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) \
         VALUES (1, '00000000-0000-0000-0000-00000000000a', 'DEBIT', 2.50, 7.50)",
    )
    .await;
    let (code, out) = cli(&db.url);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all 12 invariants hold"), "{out}");

    // Now break one of each kind.
    exec(
        &db.conn,
        "UPDATE accounts SET balance = 8.50 WHERE user_id = 1",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO saga_instances (id, saga_type, definition_version, state, data) \
         VALUES ('00000000-0000-0000-0000-00000000000b', 'order_payment', 1, 'COMPLETED', '{\"order_no\": \"ORD-NODEBIT\"}')",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO orders (order_no, user_id, amount, status, saga_id) \
         VALUES ('ORD-NODEBIT', 1, 1.00, 'PAID', '00000000-0000-0000-0000-00000000000b')",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data) \
         VALUES ('00000000-0000-0000-0000-00000000000c', 'order_payment', 1, 'RUNNING', now() - interval '1 hour', '{}')",
    )
    .await;
    exec(
        &db.conn,
        "INSERT INTO outbox (message_id, topic, key, payload, created_at) \
         VALUES ('00000000-0000-0000-0000-00000000000d', 'funds.commands', 'k', '{}', now() - interval '1 hour')",
    )
    .await;
    // History of a saga that does not exist (no foreign key refuses it).
    exec(
        &db.conn,
        "INSERT INTO saga_events (saga_id, kind, to_state) \
         VALUES ('00000000-0000-0000-0000-00000000000e', 'CREATED', 'RUNNING')",
    )
    .await;

    let (code, out) = cli(&db.url);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "account 1: balance 8.50, ledger 7.50",
        "order ORD-NODEBIT: debits 0, refunds 0",
        "saga 00000000-0000-0000-0000-00000000000c: RUNNING due since",
        "outbox 00000000-0000-0000-0000-00000000000d: topic funds.commands",
        "saga 00000000-0000-0000-0000-00000000000c",
        "saga 00000000-0000-0000-0000-00000000000e: 1 history rows without their saga",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(
        !out.contains("ORD-OK"),
        "the consistent order is not reported:\n{out}"
    );

    // The API gives the same report to an operator only.
    let api = TestClient::new(sagaflow_api::app(
        db.conn.clone(),
        common::kafka_readiness(true),
        ApiConfig {
            admin_token: Some("verify-token".to_owned()),
            ..ApiConfig::default()
        },
    ));
    let resp = api.get("/verify").send().await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    let resp = api
        .get("/verify")
        .header("Authorization", "Bearer verify-token")
        .send()
        .await;
    resp.assert_status_is_ok();
    let report: serde_json::Value = resp.0.into_body().into_json().await.unwrap();
    assert_eq!(report["checks"], 12);
    let subjects: Vec<&str> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"account 1"), "{report}");
    assert!(subjects.contains(&"order ORD-NODEBIT"), "{report}");
    assert!(
        subjects.contains(&"outbox 00000000-0000-0000-0000-00000000000d"),
        "{report}"
    );
}
