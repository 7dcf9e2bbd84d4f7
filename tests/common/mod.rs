//! Shared set-up for the integration tests: every test gets its own
//! database (created from `DATABASE_URL`'s server and migrated) and, where it
//! needs Kafka, its own topic prefix and consumer groups.
//!
//! The services come from `scripts/services.sh start` (the test command runs
//! it); nothing here is mocked.

#![allow(dead_code)]

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;

/// The server every test database is created on.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow".to_owned())
}

/// Kafka's bootstrap servers.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A fresh, migrated database of its own.
#[derive(Debug)]
pub struct TestDb {
    /// Its name (`sft_…`; `scripts/test.sh` drops leftovers before a run).
    pub name: String,
    /// A URL to it.
    pub url: String,
    /// A connection pool to it.
    pub conn: DatabaseConnection,
}

/// Creates and migrates a database for one test.
pub async fn fresh_database() -> TestDb {
    let server = server_url();
    let name = format!("sft_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(&server).await.expect("connect to the test Postgres server (run scripts/services.sh start)");
    admin
        .execute(Statement::from_string(admin.get_database_backend(), format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    admin.close().await.ok();
    let url = with_database(&server, &name);
    let conn = Database::connect(&url).await.expect("connect to test database");
    sagaflow_migration::Migrator::up(&conn, None).await.expect("migrate test database");
    TestDb { name, url, conn }
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, rest) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let cut = base.rfind('/').expect("DATABASE_URL has a database name");
    format!("{}/{db}{rest}", &base[..cut])
}

/// A topic prefix no other test uses.
pub fn topic_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
