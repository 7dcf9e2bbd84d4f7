//! Queue health on a real Postgres: a transaction held open on another
//! connection shows up as the oldest open transaction (age, pid,
//! application_name) and, past the threshold, as an `xmin_horizon` warning
//! — in `queue_health`, in `/metrics`, behind the operator token in
//! `GET /queue-health`, and in `sagaflow doctor`'s report and exit status.

mod common;

use std::process::Command;
use std::time::Duration;

use poem::http::StatusCode;
use poem::test::TestClient;
use sagaflow_api::queue_health::{queue_health, QueueHealth, Thresholds, TABLES};
use sagaflow_api::ApiConfig;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, Statement, TransactionTrait,
};
use tokio::time::Instant;

const TOKEN: &str = "queue-health-token";

/// A session named `app` on `url` with a transaction that holds an xid
/// (so it holds back the xmin horizon) until it is dropped; and when that
/// transaction had its xid (after which the server's `xact_start` lies).
async fn hold_transaction(
    url: &str,
    app: &str,
) -> (DatabaseConnection, DatabaseTransaction, Instant) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let conn = Database::connect(format!("{url}{sep}application_name={app}"))
        .await
        .expect("connect the holding session");
    let tx = conn.begin().await.expect("begin");
    tx.execute(Statement::from_string(
        tx.get_database_backend(),
        "SELECT pg_current_xact_id()",
    ))
    .await
    .expect("take a transaction id");
    (conn, tx, Instant::now())
}

/// Polls `queue_health` until its oldest transaction is at least `age`
/// old (deadline 30 s); returns that report and how long the hold had
/// lasted, by this process's clock, before it was read.
async fn await_xact_age(
    db: &DatabaseConnection,
    thresholds: &Thresholds,
    held_since: Instant,
    age: Duration,
) -> (QueueHealth, Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = held_since.elapsed();
        let h = queue_health(db, thresholds).await.expect("queue_health");
        if h.oldest_xact
            .as_ref()
            .is_some_and(|x| Duration::from_secs_f64(x.age_seconds) >= age)
        {
            return (h, held);
        }
        assert!(
            Instant::now() < deadline,
            "no open transaction of {age:?} reported: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_transaction_is_the_oldest_and_warns_past_the_threshold() {
    let db = common::fresh_database().await;
    let low = Thresholds {
        xmin_warn_seconds: 1,
        ..Thresholds::default()
    };

    let before = queue_health(&db.conn, &low).await.expect("queue_health");
    assert!(before.oldest_xact.is_none(), "{before:?}");
    assert!(before.is_healthy(), "{:?}", before.warnings);
    let tables: Vec<&str> = before.tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(tables, TABLES);
    assert_eq!((before.outbox.backlog, before.inbox.rows), (0, 0));

    let (holder, tx, held_since) = hold_transaction(&db.url, "qh-holder").await;
    let (h, held) = await_xact_age(&db.conn, &low, held_since, Duration::from_secs(2)).await;
    let x = h.oldest_xact.as_ref().expect("oldest transaction");
    assert!(
        Duration::from_secs_f64(x.age_seconds) + Duration::from_millis(50) >= held,
        "reported {} s, held {held:?}",
        x.age_seconds
    );
    assert_eq!(x.application_name, "qh-holder");
    assert_eq!(x.state, "idle in transaction");
    assert!(x.query.contains("pg_current_xact_id"), "{}", x.query);
    let codes: Vec<&str> = h.warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(codes, ["xmin_horizon"], "{:?}", h.warnings);
    assert!(h.warnings[0].message.contains("qh-holder"));
    assert!(h.warnings[0]
        .advice
        .contains(&format!("pg_terminate_backend({})", x.pid)));

    // The default threshold (300 s) is not crossed yet.
    let calm = queue_health(&db.conn, &Thresholds::default())
        .await
        .expect("queue_health");
    assert!(calm.oldest_xact.is_some());
    assert!(calm.is_healthy(), "{:?}", calm.warnings);

    tx.rollback().await.expect("rollback");
    holder.close().await.ok();
    let after = queue_health(&db.conn, &low).await.expect("queue_health");
    assert!(after.oldest_xact.is_none(), "{after:?}");
    assert!(after.is_healthy(), "{:?}", after.warnings);
}

fn app(db: &DatabaseConnection) -> TestClient<poem::endpoint::BoxEndpoint<'static>> {
    TestClient::new(sagaflow_api::app(
        db.clone(),
        common::kafka_readiness(true),
        ApiConfig {
            admin_token: Some(TOKEN.to_owned()),
            ..ApiConfig::default()
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_queue_health_gauges() {
    let db = common::fresh_database().await;
    let resp = app(&db.conn).get("/metrics").send().await;
    resp.assert_status_is_ok();
    let text = resp.0.into_body().into_string().await.unwrap();
    for table in TABLES {
        for gauge in [
            "sagaflow_table_dead_tuples",
            "sagaflow_table_dead_ratio",
            "sagaflow_table_last_autovacuum_timestamp_seconds",
        ] {
            let series = format!("{gauge}{{table=\"{table}\"}} ");
            assert!(text.contains(&series), "no {series:?} in:\n{text}");
        }
    }
    for line in [
        "sagaflow_db_oldest_xact_age_seconds 0\n",
        "sagaflow_db_oldest_xact_warning 0\n",
        "sagaflow_outbox_backlog 0\n",
        "sagaflow_outbox_oldest_age_seconds 0\n",
        "sagaflow_outbox_set_aside 0\n",
        "sagaflow_inbox_rows 0\n",
        "sagaflow_inbox_oldest_age_seconds 0\n",
        "sagaflow_table_last_autovacuum_timestamp_seconds{table=\"inbox\"} 0\n",
        "sagaflow_sagas{state=\"RUNNING\"} 0\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // Every metric is declared once (Prometheus refuses duplicates).
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let declared = types.len();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), declared, "a metric is declared twice:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_health_endpoint_is_for_operators() {
    let db = common::fresh_database().await;
    let api = app(&db.conn);
    let resp = api.get("/queue-health").send().await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    resp.assert_content_type("application/problem+json");
    let resp = api
        .get("/queue-health")
        .header("Authorization", "Bearer not-the-token")
        .send()
        .await;
    resp.assert_status(StatusCode::UNAUTHORIZED);

    let body = report(&api).await;
    let tables: Vec<&str> = body["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, TABLES, "{body}");
    assert_eq!(body["tables"][0]["dead_tuples"], 0, "{body}");
    assert!(body["tables"][0]["last_autovacuum"].is_null(), "{body}");
    assert!(body["oldest_xact"].is_null(), "{body}");
    assert_eq!(body["outbox"]["backlog"], 0, "{body}");
    assert_eq!(body["inbox"]["rows"], 0, "{body}");
    assert_eq!(body["thresholds"]["xmin_warn_seconds"], 60, "{body}");
    assert_eq!(body["warnings"], serde_json::json!([]), "{body}");
    assert!(body["checked_at"].is_string(), "{body}");

    // The operation is in the spec, with its 401.
    let spec = api.get("/openapi.json").send().await;
    let spec: serde_json::Value = spec.0.into_body().into_json().await.unwrap();
    assert!(spec["paths"]["/queue-health"]["get"]["responses"]["401"].is_object());
}

/// The inbox-age warning of `/queue-health` and `/metrics` follows the
/// thresholds the process was given (`sagaflow` passes the inbox retention
/// it trims at, as `doctor` uses), not the built-in 8 days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_warn_at_the_configured_thresholds() {
    let db = common::fresh_database().await;
    db.conn
        .execute(Statement::from_string(
            db.conn.get_database_backend(),
            "INSERT INTO inbox (consumer, message_id, received_at) \
             VALUES ('funds', gen_random_uuid(), now() - interval '2 days')",
        ))
        .await
        .expect("an inbox row two days old");
    let get = |thresholds: Thresholds| {
        let api = TestClient::new(sagaflow_api::app(
            db.conn.clone(),
            common::kafka_readiness(true),
            ApiConfig {
                admin_token: Some(TOKEN.to_owned()),
                health_thresholds: thresholds,
                ..ApiConfig::default()
            },
        ));
        async move {
            let body = report(&api).await;
            let metrics = api.get("/metrics").send().await;
            metrics.assert_status_is_ok();
            let text = metrics.0.into_body().into_string().await.unwrap();
            (body, text)
        }
    };
    let codes = |body: &serde_json::Value| -> Vec<String> {
        body["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .map(|w| w["code"].as_str().unwrap().to_owned())
            .collect()
    };

    let (body, _) = get(Thresholds::default()).await;
    assert!(
        !codes(&body).contains(&"inbox_not_trimmed".to_owned()),
        "{body}"
    );

    // An hour's retention: the row is a day past it plus the day of slack.
    let configured = Thresholds {
        xmin_warn_seconds: 7,
        ..Thresholds::with_inbox_retention(Duration::from_secs(3600))
    };
    let (body, metrics) = get(configured).await;
    assert!(
        codes(&body).contains(&"inbox_not_trimmed".to_owned()),
        "{body}"
    );
    assert_eq!(
        body["thresholds"]["inbox_age_warn_seconds"],
        3600 + 24 * 3600,
        "{body}"
    );
    assert_eq!(body["thresholds"]["xmin_warn_seconds"], 7, "{body}");
    assert!(metrics.contains("warning threshold (7 s)"), "{metrics}");
}

/// `GET /queue-health` as the operator: the report, answered 200.
async fn report(api: &TestClient<poem::endpoint::BoxEndpoint<'static>>) -> serde_json::Value {
    let resp = api
        .get("/queue-health")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.0.into_body().into_json().await.unwrap()
}

/// Runs `sagaflow doctor` on `url` with `extra` arguments; returns its
/// exit status, stdout and stderr.
fn doctor(url: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["doctor", "--database-url", url])
        .args(extra)
        .env_remove("SAGAFLOW_XMIN_WARN_SECONDS")
        .output()
        .expect("run sagaflow doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_exits_1_naming_a_held_transaction_and_0_when_healthy() {
    let db = common::fresh_database().await;
    let (code, out, err) = doctor(&db.url, &["--xmin-warn-seconds", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no warnings"), "{out}");
    assert!(out.contains("oldest open transaction: none"), "{out}");

    let (holder, tx, held_since) = hold_transaction(&db.url, "qh-doctor-holder").await;
    await_xact_age(
        &db.conn,
        &Thresholds::default(),
        held_since,
        Duration::from_secs(2),
    )
    .await;
    let (code, out, err) = doctor(&db.url, &["--xmin-warn-seconds", "1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("[xmin_horizon]"), "{out}");
    assert!(out.contains("qh-doctor-holder"), "{out}");
    assert!(out.contains("advice: end it"), "{out}");

    // The same figures as JSON; the threshold from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["doctor", "--json", "--database-url", &db.url])
        .env("SAGAFLOW_XMIN_WARN_SECONDS", "1")
        .output()
        .expect("run sagaflow doctor --json");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        report["oldest_xact"]["application_name"], "qh-doctor-holder",
        "{report}"
    );
    assert_eq!(report["warnings"][0]["code"], "xmin_horizon", "{report}");

    // Under the default threshold the held transaction is reported, not
    // warned about.
    let (code, out, err) = doctor(&db.url, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("qh-doctor-holder"), "{out}");

    tx.rollback().await.expect("rollback");
    holder.close().await.ok();
    let (code, out, err) = doctor(&db.url, &["--xmin-warn-seconds", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no warnings"), "{out}");
}

#[tokio::test]
async fn doctor_exits_2_when_it_cannot_reach_the_database() {
    let missing = common::with_database(
        &common::server_url(),
        &format!("sft_missing_{}", uuid::Uuid::new_v4().simple()),
    );
    let (code, out, err) = doctor(&missing, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("connecting to Postgres"), "{err}");
}

/// The outbox messages the relay set aside, behind the operator token: the
/// listing shows each without its payload (only its size), a requeue puts
/// it back at the end of the outbox and takes it off the list, and a
/// second requeue of it, or an id that is no id, is a problem naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_requeue_set_aside_outbox_messages() {
    let db = common::fresh_database().await;
    let api = app(&db.conn);
    let message_id = uuid::Uuid::new_v4();
    db.conn
        .execute(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO outbox_dead (id, message_id, topic, key, payload, headers, created_at, error) \
             VALUES (7, $1, 'orders.events', 'k', jsonb_build_object('blob', repeat('x', 1000)), \
                     '{}'::jsonb, now() - interval '1 minute', 'MessageSizeTooLarge (broker)')",
            [message_id.into()],
        ))
        .await
        .unwrap();
    let bearer = format!("Bearer {TOKEN}");
    for (method, path) in [
        ("GET", "/outbox/set-aside"),
        ("POST", "/outbox/set-aside/7/requeue"),
        ("POST", "/outbox/set-aside/requeue"),
    ] {
        let req = match method {
            "GET" => api.get(path),
            _ => api
                .post(path)
                .body_json(&serde_json::json!({ "topic": "orders.events" })),
        };
        let resp = req.send().await;
        resp.assert_status(StatusCode::UNAUTHORIZED);
        resp.assert_content_type("application/problem+json");
    }
    let count = |table: &str| {
        let sql = format!("SELECT count(*) FROM {table}");
        let conn = db.conn.clone();
        async move { common::scalar_i64(&conn, &sql).await }
    };

    let resp = api
        .get("/outbox/set-aside")
        .header("Authorization", &bearer)
        .send()
        .await;
    resp.assert_status_is_ok();
    let body: serde_json::Value = resp.0.into_body().into_json().await.unwrap();
    assert_eq!(body["total"], 1, "{body}");
    let item = &body["items"][0];
    assert_eq!(item["id"], 7, "{body}");
    assert_eq!(item["message_id"], message_id.to_string(), "{body}");
    assert_eq!(item["topic"], "orders.events", "{body}");
    assert_eq!(item["error"], "MessageSizeTooLarge (broker)", "{body}");
    assert!(item["payload_bytes"].as_i64().unwrap() > 1000, "{body}");
    assert!(item["payload"].is_null(), "the payload is not sent: {body}");

    let resp = api
        .post("/outbox/set-aside/7/requeue")
        .header("Authorization", &bearer)
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_json(serde_json::json!({ "requeued": [7] }))
        .await;
    assert_eq!(count("outbox_dead").await, 0);
    let back = db
        .conn
        .query_one(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT message_id FROM outbox",
        ))
        .await
        .unwrap()
        .expect("the message is back in the outbox");
    assert_eq!(back.try_get_by_index::<uuid::Uuid>(0).unwrap(), message_id);

    let resp = api
        .get("/outbox/set-aside")
        .header("Authorization", &bearer)
        .send()
        .await;
    resp.assert_json(serde_json::json!({ "items": [], "total": 0 }))
        .await;
    let resp = api
        .post("/outbox/set-aside/7/requeue")
        .header("Authorization", &bearer)
        .send()
        .await;
    resp.assert_status(StatusCode::NOT_FOUND);
    let text = resp.0.into_body().into_string().await.unwrap();
    assert!(text.contains("no outbox message 7 is set aside"), "{text}");
    for path in ["/outbox/set-aside/x/requeue", "/outbox/set-aside/0/requeue"] {
        let resp = api.post(path).header("Authorization", &bearer).send().await;
        resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
        resp.assert_content_type("application/problem+json");
        let body: serde_json::Value = resp.0.into_body().into_json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "id", "{path}: {body}");
    }
    assert_eq!(count("outbox").await, 1, "the 404 wrote nothing");

    // A whole topic at once, in the old order; another topic's stays.
    db.conn
        .execute_unprepared(
            "INSERT INTO outbox_dead (id, message_id, topic, key, payload, headers, created_at, error) \
             SELECT id, gen_random_uuid(), topic, 'k', '{}'::jsonb, '{}'::jsonb, now(), 'InvalidRecord' \
               FROM (VALUES (9, 'orders.events'), (8, 'orders.events'), (10, 'funds.commands')) v(id, topic)",
        )
        .await
        .unwrap();
    let requeue_topic = |body: serde_json::Value| {
        api.post("/outbox/set-aside/requeue")
            .header("Authorization", &bearer)
            .body_json(&body)
            .send()
    };
    let resp = requeue_topic(serde_json::json!({ "topic": "orders.events" })).await;
    resp.assert_status_is_ok();
    resp.assert_json(serde_json::json!({ "requeued": [8, 9] }))
        .await;
    assert_eq!(count("outbox_dead").await, 1, "funds.commands' stays");
    assert_eq!(count("outbox").await, 3);
    let resp = requeue_topic(serde_json::json!({ "topic": "orders.events" })).await;
    resp.assert_status(StatusCode::NOT_FOUND);
    let text = resp.0.into_body().into_string().await.unwrap();
    assert!(
        text.contains("no outbox message for topic orders.events"),
        "{text}"
    );
    for body in [
        serde_json::json!({ "topic": "no spaces" }),
        serde_json::json!({}),
    ] {
        let resp = requeue_topic(body.clone()).await;
        resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
        let problem: serde_json::Value = resp.0.into_body().into_json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "topic", "{body}: {problem}");
    }
}
