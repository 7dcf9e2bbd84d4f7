//! A loop's session against a real Postgres: it keeps its connection while
//! its transactions end cleanly, and a transaction that does not end
//! cleanly takes its connection, its locks and its writes with it.

mod common;

use std::time::{Duration, Instant};

use sagaflow_worker::session::{Session, Tx};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbErr, SqlErr, SqlxPostgresConnector,
    Statement, TransactionTrait,
};

async fn pid(tx: &Tx<'_>) -> i64 {
    common::scalar_i64(tx, "SELECT pg_backend_pid()::bigint").await
}

async fn run(db: &impl ConnectionTrait, sql: &str) {
    db.execute_unprepared(sql).await.expect(sql);
}

async fn scratch(db: &DatabaseConnection) {
    run(
        db,
        "CREATE TABLE scratch (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO scratch VALUES (1, 0)",
    )
    .await;
}

#[tokio::test]
async fn a_session_keeps_its_connection_while_its_transactions_end_cleanly() {
    let db = common::fresh_database().await;
    scratch(&db.conn).await;
    let mut session = Session::new(&db.conn);

    let tx = session.begin().await.unwrap();
    let first = pid(&tx).await;
    run(&tx, "UPDATE scratch SET v = 1").await;
    tx.commit().await.unwrap();

    let tx = session.begin().await.unwrap();
    assert_eq!(pid(&tx).await, first, "a commit gave the connection up");
    run(&tx, "UPDATE scratch SET v = 2").await;
    tx.rollback().await.unwrap();

    let tx = session.begin().await.unwrap();
    assert_eq!(pid(&tx).await, first, "a rollback gave the connection up");
    tx.commit().await.unwrap();
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT v::bigint FROM scratch").await,
        1,
        "the committed write is there and the rolled-back one is not"
    );
}

#[tokio::test]
async fn a_transaction_dropped_half_way_rolls_back_and_frees_its_locks_at_once() {
    let db = common::fresh_database().await;
    scratch(&db.conn).await;
    let mut session = Session::new(&db.conn);

    let tx = session.begin().await.unwrap();
    let dropped = pid(&tx).await;
    run(&tx, "UPDATE scratch SET v = 7 WHERE id = 1").await;
    drop(tx);

    // Had the row lock outlived the transaction, this would wait for it
    // and give up after the lock timeout.
    let other = db.conn.begin().await.unwrap();
    run(&other, "SET LOCAL lock_timeout = '10s'").await;
    run(&other, "UPDATE scratch SET v = 3 WHERE id = 1").await;
    other.commit().await.unwrap();
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT v::bigint FROM scratch").await,
        3,
        "the dropped transaction's write survived"
    );

    let tx = session.begin().await.unwrap();
    assert_ne!(
        pid(&tx).await,
        dropped,
        "the connection of a dropped transaction was used again"
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_failed_statement_is_reported_as_sea_orm_reports_it() {
    let db = common::fresh_database().await;
    scratch(&db.conn).await;
    let mut session = Session::new(&db.conn);

    let tx = session.begin().await.unwrap();
    let err = tx
        .execute(Statement::from_string(
            tx.get_database_backend(),
            "INSERT INTO scratch VALUES (1, 1)",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "{err:?}"
    );
    drop(tx);

    // The session goes on, on a connection of its own again.
    let tx = session.begin().await.unwrap();
    run(&tx, "INSERT INTO scratch VALUES (2, 2)").await;
    tx.commit().await.unwrap();
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT count(*) FROM scratch").await,
        2
    );
}

#[tokio::test]
async fn a_kept_connection_the_server_ended_is_replaced_without_a_failed_transaction() {
    let db = common::fresh_database().await;
    let mut session = Session::new(&db.conn);
    let tx = session.begin().await.unwrap();
    let ended = pid(&tx).await;
    tx.commit().await.unwrap();

    run(&db.conn, &format!("SELECT pg_terminate_backend({ended})")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::scalar_i64(
        &db.conn,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {ended}"),
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "the backend never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let tx = session
        .begin()
        .await
        .expect("the session did not replace a connection the server ended");
    assert_ne!(pid(&tx).await, ended);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_commit_after_a_failed_statement_rolls_back_and_says_so() {
    let db = common::fresh_database().await;
    scratch(&db.conn).await;
    let mut session = Session::new(&db.conn);

    let tx = session.begin().await.unwrap();
    let kept = pid(&tx).await;
    run(&tx, "INSERT INTO scratch VALUES (2, 2)").await;
    // A caller that swallows the error and goes on to commit.
    let _ = tx
        .execute_unprepared("INSERT INTO scratch VALUES (1, 1)")
        .await;
    let err = tx
        .commit()
        .await
        .expect_err("a commit of an aborted transaction reported success");
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT count(*) FROM scratch").await,
        1,
        "the write before the failed statement was committed"
    );

    // The rollback ended cleanly, so the connection stays.
    let tx = session.begin().await.unwrap();
    assert_eq!(pid(&tx).await, kept);
    tx.commit().await.unwrap();
}

/// A pool over `url` with `options`, as sagaflow builds its own.
fn pool_over(url: &str, options: PgPoolOptions) -> DatabaseConnection {
    let connect: PgConnectOptions = url.parse().unwrap();
    SqlxPostgresConnector::from_sqlx_postgres_pool(options.connect_lazy_with(connect))
}

#[tokio::test]
async fn a_connection_older_than_the_pools_lifetime_is_replaced() {
    let db = common::fresh_database().await;
    let lifetime = Duration::from_millis(300);
    let conn = pool_over(&db.url, PgPoolOptions::new().max_lifetime(lifetime));
    let mut session = Session::new(&conn);

    let tx = session.begin().await.unwrap();
    let old = pid(&tx).await;
    tx.commit().await.unwrap();
    let tx = session.begin().await.unwrap();
    assert_eq!(pid(&tx).await, old, "a young connection was replaced");
    tx.commit().await.unwrap();

    // The connection's age is what is under test: let it pass.
    tokio::time::sleep(lifetime).await;
    let tx = session.begin().await.unwrap();
    assert_ne!(
        pid(&tx).await,
        old,
        "a connection past its lifetime was kept"
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_costs_a_begin_the_pools_acquire_timeout() {
    // Accepts connections and says nothing, as a host gone without a reset
    // looks to its clients.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = mute.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = mute.accept().await {
            held.push(socket);
        }
    });
    let limit = Duration::from_millis(300);
    let conn = pool_over(
        &format!("postgres://sagaflow:sagaflow@127.0.0.1:{port}/sagaflow"),
        PgPoolOptions::new().acquire_timeout(limit),
    );
    let mut session = Session::new(&conn);

    // Without a limit of its own, `begin` would wait for as long as TCP does.
    let err = tokio::time::timeout(limit * 20, session.begin())
        .await
        .expect("begin did not give up within twenty acquire timeouts")
        .expect_err("a server that never answered gave a transaction");
    assert!(
        matches!(err, DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
        "{err:?}"
    );
    held.abort();
}
