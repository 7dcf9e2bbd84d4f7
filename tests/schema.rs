//! The schema and the Rust enums tell the same story: every state column's
//! `CHECK` constraint lists exactly the values of its enum in `entity/`.

mod common;

use std::collections::BTreeSet;

use sagaflow_entity::{
    LedgerKind, OperatorRequest, OrderStatus, Resolution, SagaState, StateValues,
};
use sea_orm::{ConnectionTrait, Statement};

/// The quoted values in the `CHECK (col IN (...))` constraint on
/// `table`.`column`.
async fn check_values(
    db: &sea_orm::DatabaseConnection,
    table: &str,
    column: &str,
) -> BTreeSet<String> {
    let rows = db
        .query_all(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c \
             JOIN pg_class t ON t.oid = c.conrelid \
             WHERE t.relname = $1 AND c.contype = 'c' AND pg_get_constraintdef(c.oid) LIKE 'CHECK ((' || $2 || ' = ANY%'",
            [table.into(), column.into()],
        ))
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "exactly one IN-list CHECK on {table}.{column}"
    );
    let def: String = rows[0].try_get("", "def").unwrap();
    def.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn rust_values<T: StateValues>() -> BTreeSet<String> {
    T::ALL.iter().map(|v| v.as_str().to_owned()).collect()
}

#[tokio::test]
async fn state_enums_match_the_check_constraints() {
    let db = common::fresh_database().await;
    assert_eq!(
        check_values(&db.conn, "saga_instances", "state").await,
        rust_values::<SagaState>()
    );
    assert_eq!(
        check_values(&db.conn, "orders", "status").await,
        rust_values::<OrderStatus>()
    );
    assert_eq!(
        check_values(&db.conn, "ledger_entries", "kind").await,
        rust_values::<LedgerKind>()
    );
    assert_eq!(
        check_values(&db.conn, "saga_instances", "operator_request").await,
        rust_values::<OperatorRequest>()
    );
    assert_eq!(
        check_values(&db.conn, "saga_instances", "resolution").await,
        rust_values::<Resolution>()
    );
}

/// The column names and types of `table`, in order.
async fn columns(db: &sea_orm::DatabaseConnection, table: &str) -> Vec<(String, String)> {
    db.query_all(Statement::from_sql_and_values(
        db.get_database_backend(),
        "SELECT column_name::text AS name, data_type::text AS ty FROM information_schema.columns \
         WHERE table_name = $1 ORDER BY ordinal_position",
        [table.into()],
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| (r.try_get("", "name").unwrap(), r.try_get("", "ty").unwrap()))
    .collect()
}

/// The retention job moves rows with `SELECT *`: a migration that adds a
/// column to a hot table must add it to its archive too, in the same place.
#[tokio::test]
async fn archive_tables_have_the_hot_tables_columns_in_order() {
    let db = common::fresh_database().await;
    let mut hot = columns(&db.conn, "saga_instances").await;
    hot.push(("archived_at".into(), "timestamp with time zone".into()));
    assert_eq!(columns(&db.conn, "saga_instances_archive").await, hot);
    assert_eq!(
        columns(&db.conn, "saga_events_archive").await,
        columns(&db.conn, "saga_events").await
    );
}

#[tokio::test]
async fn the_database_refuses_bad_states() {
    let db = common::fresh_database().await;
    let refused = |sql: &'static str| {
        let conn = db.conn.clone();
        async move {
            let r = conn
                .execute(Statement::from_string(
                    conn.get_database_backend(),
                    sql.to_owned(),
                ))
                .await;
            assert!(r.is_err(), "the database accepted: {sql}");
        }
    };
    let ok = |sql: &'static str| {
        let conn = db.conn.clone();
        async move {
            conn.execute(Statement::from_string(
                conn.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .expect(sql);
        }
    };
    ok("INSERT INTO accounts (user_id, balance) VALUES (1, 10)").await;
    refused("UPDATE accounts SET balance = -0.01 WHERE user_id = 1").await;
    refused("INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) VALUES (1, NULL, 'DEPOSIT', 0, 10)").await;
    refused("INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) VALUES (1, NULL, 'DEBIT', 1, 9)").await;
    ok("INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) VALUES (1, '00000000-0000-0000-0000-000000000001', 'DEBIT', 1, 9)").await;
    refused("INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) VALUES (1, '00000000-0000-0000-0000-000000000001', 'DEBIT', 1, 8)").await;
    refused("INSERT INTO orders (order_no, user_id, amount, saga_id) VALUES ('o1', 1, -5, gen_random_uuid())").await;
    refused("INSERT INTO orders (order_no, user_id, amount, status, saga_id) VALUES ('o1', 1, 5, 'SHIPPED', gen_random_uuid())").await;
    refused("INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data) VALUES (gen_random_uuid(), 't', 1, 'RUNNING', NULL, '{}')").await;
    refused("INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data) VALUES (gen_random_uuid(), 't', 1, 'COMPLETED', now(), '{}')").await;
    refused("INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data) VALUES (gen_random_uuid(), 't', 1, 'PAUSED', now(), '{}')").await;
}
