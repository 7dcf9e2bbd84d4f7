//! Shared set-up for the integration tests: every test gets its own
//! database (created from `DATABASE_URL`'s server and migrated) and, where it
//! needs Kafka, its own topic prefix and consumer groups.
//!
//! The services come from `scripts/services.sh start` (the test command runs
//! it); nothing here is mocked.

#![allow(dead_code)]

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;

/// The engine's configuration for a test that calls the worker's
/// functions itself (no process, no relay): one claim loop, batches of
/// 10, a lease of 30 s, the built-in sagas and hooks, topics under
/// `prefix`.
pub fn worker_config(worker_id: &str, prefix: &str) -> sagaflow_worker::WorkerConfig {
    use std::time::Duration;
    sagaflow_worker::WorkerConfig {
        worker_id: worker_id.to_owned(),
        workers: 1,
        claim_batch: 10,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(100),
        pass_gap: Duration::ZERO,
        relay_batch: 10,
        topics: sagaflow_worker::Topics::with_prefix(prefix),
        registry: std::sync::Arc::new(sagaflow_workflows::Registry::builtin()),
        actions: std::sync::Arc::new(sagaflow_worker::Actions::builtin()),
        announcer: Default::default(),
    }
}

/// The server every test database is created on.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow".to_owned())
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
    let admin = Database::connect(&server)
        .await
        .expect("connect to the test Postgres server (run scripts/services.sh start)");
    admin
        .execute(Statement::from_string(
            admin.get_database_backend(),
            format!("CREATE DATABASE {name}"),
        ))
        .await
        .expect("create test database");
    admin.close().await.ok();
    let url = with_database(&server, &name);
    let conn = Database::connect(&url)
        .await
        .expect("connect to test database");
    sagaflow_migration::Migrator::up(&conn, None)
        .await
        .expect("migrate test database");
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

/// `/readyz`'s real Kafka check, against the test broker, or (when
/// `reachable` is false) against a port where no broker listens.
pub fn kafka_readiness(reachable: bool) -> std::sync::Arc<dyn sagaflow_api::ReadinessProbe> {
    let bootstrap = if reachable {
        kafka_bootstrap()
    } else {
        "127.0.0.1:1".to_owned()
    };
    let kafka = sagaflow_worker::KafkaConfig {
        bootstrap_servers: bootstrap,
        group_prefix: String::new(),
        partitions: 1,
        replication: 1,
        session_timeout: std::time::Duration::from_secs(6),
        max_poll_interval: std::time::Duration::from_secs(300),
        linger: std::time::Duration::from_millis(1),
        commit_interval: std::time::Duration::from_millis(100),
        fetch_wait: std::time::Duration::from_millis(20),
        fetch_min_bytes: 1,
    };
    std::sync::Arc::new(sagaflow::app::KafkaReadiness::new(&kafka).expect("kafka client"))
}

/// The operator token every [`TestApp`] runs with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A TCP port nobody listens on right now, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A topic prefix no other test uses.
pub fn topic_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A whole sagaflow process (API, workers, relay, participant, reply
/// consumer) on its own database, topics and consumer groups, the API on
/// an ephemeral port.
pub struct TestApp {
    /// The database.
    pub db: TestDb,
    /// Topic and group prefix.
    pub prefix: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The configuration it runs with.
    pub config: sagaflow::config::Config,
    running: Option<sagaflow::app::Running>,
    /// Roles started later with [`TestApp::start_roles`] (other
    /// "processes" on the same database and topics).
    extra: Vec<sagaflow::app::Running>,
}

impl TestApp {
    /// Starts every role.
    pub async fn start() -> TestApp {
        Self::start_with(&[]).await
    }

    /// Starts every role with extra command-line settings.
    pub async fn start_with(extra: &[&str]) -> TestApp {
        Self::start_as(extra, sagaflow::app::Roles::ALL).await
    }

    /// Starts `roles` (the API always) with extra command-line settings.
    pub async fn start_as(extra: &[&str], roles: sagaflow::app::Roles) -> TestApp {
        Self::start_extended(extra, roles, sagaflow::app::Extensions::default()).await
    }

    /// [`TestApp::start_as`] with an application's own sagas and actions.
    pub async fn start_extended(
        extra: &[&str],
        roles: sagaflow::app::Roles,
        ext: sagaflow::app::Extensions,
    ) -> TestApp {
        let db = fresh_database().await;
        let prefix = topic_prefix();
        let mut args = vec![
            "sagaflow".to_owned(),
            "--database-url".into(),
            db.url.clone(),
            "--kafka-bootstrap-servers".into(),
            kafka_bootstrap(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--group-prefix".into(),
            prefix.clone(),
            "--kafka-session-timeout-ms".into(),
            "6000".into(),
            "--db-pool-size".into(),
            "16".into(),
            "--admin-token".into(),
            ADMIN_TOKEN.into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = sagaflow::config::Config::parse_from(args).expect("test config");
        let roles = sagaflow::app::Roles { api: true, ..roles };
        let running = sagaflow::app::start_extended(&config, roles, ext)
            .await
            .expect("start sagaflow");
        let addr = running.http_addr.expect("API runs");
        TestApp {
            db,
            prefix,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            config,
            running: Some(running),
            extra: Vec::new(),
        }
    }

    /// Starts `roles` in another "process" on the same database, topics
    /// and consumer groups (e.g. a funds participant that was down).
    pub async fn start_roles(&mut self, roles: sagaflow::app::Roles) {
        let running = sagaflow::app::start(&self.config, roles)
            .await
            .expect("start extra roles");
        self.extra.push(running);
    }

    /// Stops every role.
    pub async fn stop(mut self) {
        for r in self.extra.drain(..) {
            r.stop(std::time::Duration::from_secs(15)).await;
        }
        if let Some(r) = self.running.take() {
            r.stop(std::time::Duration::from_secs(15)).await;
        }
    }

    /// Waits (up to `within`) until `sql`, a query returning one bigint,
    /// returns a value for which `ok` holds; returns that value.
    pub async fn await_scalar(
        &self,
        sql: &str,
        within: std::time::Duration,
        ok: impl Fn(i64) -> bool,
    ) -> i64 {
        let until = tokio::time::Instant::now() + within;
        loop {
            let v = self.scalar_i64(sql).await;
            if ok(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "`{sql}` still {v} after {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `within`) until the saga `saga_id` is in `state`.
    pub async fn await_saga_state(&self, saga_id: &str, state: &str, within: std::time::Duration) {
        let sql = format!(
            "SELECT count(*) FROM saga_instances WHERE id = '{saga_id}' AND state = '{state}'"
        );
        self.await_scalar(&sql, within, |n| n == 1).await;
    }

    /// The full name of topic `name` (e.g. `funds.commands`).
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// POSTs `body` to `path` and asserts a 201.
    async fn post_created(&self, path: &str, body: serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "POST {path}: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// `POST /accounts` and a deposit of `amount` (if not "0").
    pub async fn funded_account(&self, user_id: i64, amount: &str) {
        self.post_created("/accounts", serde_json::json!({ "user_id": user_id }))
            .await;
        if amount != "0" {
            self.post_created(
                &format!("/accounts/{user_id}/deposits"),
                serde_json::json!({ "amount": amount }),
            )
            .await;
        }
    }

    /// `POST /orders`; returns the status code and the body.
    pub async fn place_order(
        &self,
        user_id: i64,
        amount: &str,
        key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(format!("{}/orders", self.base))
            .json(&serde_json::json!({ "user_id": user_id, "amount": amount }));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `GET /orders/{order_no}`.
    pub async fn order(&self, order_no: &str) -> serde_json::Value {
        self.http
            .get(format!("{}/orders/{order_no}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /accounts/{user_id}`.
    pub async fn account(&self, user_id: i64) -> serde_json::Value {
        self.http
            .get(format!("{}/accounts/{user_id}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to `within`) until the order leaves PENDING; returns it.
    pub async fn settled_order(
        &self,
        order_no: &str,
        within: std::time::Duration,
    ) -> serde_json::Value {
        let until = tokio::time::Instant::now() + within;
        loop {
            let o = self.order(order_no).await;
            if o["status"] != "PENDING" {
                return o;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "order {order_no} still PENDING after {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A scalar from SQL.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        scalar_i64(&self.db.conn, sql).await
    }
}

/// A single `bigint` from `sql` (cast your count or sum to bigint), on a
/// pool or inside a transaction.
pub async fn scalar_i64(db: &impl ConnectionTrait, sql: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .expect(sql)
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("bigint column")
}

/// Checks ARCHITECTURE.md's money invariants on `db` and returns every
/// violation found (empty when the books balance).
pub async fn money_anomalies(db: &DatabaseConnection) -> Vec<String> {
    // The same checks `sagaflow verify` and `GET /verify` run.
    sagaflow_api::verify::verify(db)
        .await
        .expect("verify")
        .violations
        .into_iter()
        .map(|v| format!("{}: {}: {}", v.check, v.subject, v.detail))
        .collect()
}
