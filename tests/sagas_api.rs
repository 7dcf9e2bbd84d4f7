//! The operator's saga API on a real Postgres: filters, keyset pagination
//! while sagas keep arriving, the admin token, wrong-state conflicts, and
//! an operator's request racing a worker that holds the saga.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use poem::endpoint::BoxEndpoint;
use poem::http::StatusCode;
use poem::test::TestClient;
use sagaflow_api::ApiConfig;
use sagaflow_entity::saga_instance;
use sagaflow_worker::claim;
use sagaflow_worker::session::Session;
use sagaflow_worker::{WorkerConfig, WorkerError};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{json, Value};
use uuid::Uuid;

const TOKEN: &str = "s3cret-operator-token";

fn client(db: &DatabaseConnection) -> TestClient<BoxEndpoint<'static>> {
    TestClient::new(sagaflow_api::app(
        db.clone(),
        common::kafka_readiness(true),
        ApiConfig {
            admin_token: Some(TOKEN.to_owned()),
            ..ApiConfig::default()
        },
    ))
}

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .expect(sql);
}

/// A saga of `saga_type` about `order_no`, inserted as the API would (a
/// payment saga with its order, a refund saga recorded on its order), then
/// put into `state` (finished states have no due time).
async fn saga(db: &DatabaseConnection, saga_type: &str, order_no: &str, state: &str) -> Uuid {
    let id = Uuid::now_v7();
    saga_instance::insert_new(
        db,
        id,
        (saga_type, 1),
        json!({ "order_no": order_no, "user_id": 1, "amount": "1.00" }),
        json!({}),
        "test",
    )
    .await
    .unwrap();
    exec(
        db,
        "INSERT INTO accounts (user_id) VALUES (1) ON CONFLICT DO NOTHING",
    )
    .await;
    match saga_type {
        "order_payment" => {
            exec(
                db,
                &format!(
                    "INSERT INTO orders (order_no, user_id, amount, status, saga_id) \
                     VALUES ('{order_no}', 1, 1.00, 'PENDING', '{id}')"
                ),
            )
            .await
        }
        "order_refund" => {
            exec(
                db,
                &format!("UPDATE orders SET refund_saga_id = '{id}' WHERE order_no = '{order_no}'"),
            )
            .await
        }
        // An application's own saga: nothing but its input names the order.
        _ => {}
    }
    let due = if matches!(state, "RUNNING" | "WAITING" | "COMPENSATING") {
        "now()"
    } else {
        "NULL"
    };
    let deadline = if state == "WAITING" {
        "now() + interval '1 hour'"
    } else {
        "NULL"
    };
    exec(
        db,
        &format!(
            "UPDATE saga_instances SET state = '{state}', next_run_at = {due}, deadline = {deadline} WHERE id = '{id}'"
        ),
    )
    .await;
    id
}

async fn get(cli: &TestClient<BoxEndpoint<'static>>, path: &str) -> (StatusCode, Value) {
    let resp = cli.get(path).send().await.0;
    let status = resp.status();
    let text = resp.into_body().into_string().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn act(
    cli: &TestClient<BoxEndpoint<'static>>,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = cli.post(path).body_json(&body);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.0;
    let status = resp.status();
    let text = resp.into_body().into_string().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly_the_matching_sagas() {
    let db = common::fresh_database().await;
    let cli = client(&db.conn);
    let failed = saga(&db.conn, "order_payment", "ORD-1", "FAILED").await;
    let waiting = saga(&db.conn, "order_payment", "ORD-2", "WAITING").await;
    let refund = saga(&db.conn, "order_refund", "ORD-1", "COMPLETED").await;
    let own = saga(&db.conn, "loyalty_points", "ORD-1", "COMPLETED").await;

    let (status, page) = get(&cli, "/sagas?state=FAILED").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), [failed.to_string()]);
    assert_eq!(page["items"][0]["order_no"], "ORD-1");
    assert_eq!(page["items"][0]["type"], "order_payment");
    assert_eq!(
        page["items"][0]["step_name"], "debit",
        "named from the definition"
    );
    assert_eq!(page["next_cursor"], Value::Null);

    let (_, page) = get(&cli, "/sagas?order_no=ORD-1").await;
    assert_eq!(
        ids(&page),
        [own.to_string(), refund.to_string(), failed.to_string()],
        "the order's payment saga (through the order row), its refund and an \
         application's saga naming it (through the partial index), newest first"
    );
    let (_, page) = get(&cli, "/sagas?type=order_payment&order_no=ORD-2").await;
    assert_eq!(ids(&page), [waiting.to_string()]);
    let (_, page) = get(&cli, "/sagas?type=order_refund&state=FAILED").await;
    assert_eq!(ids(&page), Vec::<String>::new());

    exec(
        &db.conn,
        &format!(
            "UPDATE saga_instances SET created_at = '2026-01-01T00:00:00Z' WHERE id = '{failed}'"
        ),
    )
    .await;
    let (_, page) = get(&cli, "/sagas?created_before=2026-06-01T00:00:00Z").await;
    assert_eq!(ids(&page), [failed.to_string()]);
    let (_, page) = get(&cli, "/sagas?created_after=2026-06-01T00:00:00Z").await;
    assert_eq!(
        ids(&page),
        [own.to_string(), refund.to_string(), waiting.to_string()]
    );

    for (query, field) in [
        ("state=DONE", "state"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("cursor=garbage", "cursor"),
        ("created_after=yesterday", "created_after"),
    ] {
        let (status, body) = get(&cli, &format!("/sagas?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }

    let (status, detail) = get(&cli, &format!("/sagas/{failed}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["state"], "FAILED");
    assert_eq!(detail["data"]["order_no"], "ORD-1");
    assert_eq!(detail["events"][0]["kind"], "CREATED");
    let (status, _) = get(&cli, &format!("/sagas/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&cli, "/sagas/not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, stats) = get(&cli, "/sagas/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["by_state"]["FAILED"], 1);
    assert_eq!(stats["by_state"]["WAITING"], 1);
    assert_eq!(stats["by_state"]["RUNNING"], 0);
    assert_eq!(stats["last_hour"].as_array().unwrap().len(), 60);
    let payment = stats["by_type"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "order_payment")
        .unwrap();
    assert_eq!(payment["by_state"]["FAILED"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_never_skip_or_repeat_while_sagas_arrive() {
    let db = common::fresh_database().await;
    let cli = client(&db.conn);
    let mut existing = HashSet::new();
    for n in 0..95 {
        existing.insert(
            saga(&db.conn, "order_payment", &format!("ORD-{n}"), "COMPLETED")
                .await
                .to_string(),
        );
    }
    // Many sagas share a created_at: the id breaks the tie.
    exec(
        &db.conn,
        "UPDATE saga_instances SET created_at = date_trunc('second', created_at)",
    )
    .await;

    let arriving = {
        let conn = db.conn.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                saga(&conn, "order_payment", &format!("NEW-{n}"), "RUNNING").await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/sagas?limit=10&cursor={c}"),
            None => "/sagas?limit=10".to_owned(),
        };
        let (status, page) = get(&cli, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    arriving.await.unwrap();
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a saga was repeated across pages");
    assert!(
        existing.is_subset(&unique),
        "a saga that existed before paging was skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_need_the_token_and_the_right_state() {
    let db = common::fresh_database().await;
    let cli = client(&db.conn);
    let waiting = saga(&db.conn, "order_payment", "ORD-W", "WAITING").await;
    let failed = saga(&db.conn, "order_payment", "ORD-F", "FAILED").await;
    let completed = saga(&db.conn, "order_payment", "ORD-C", "COMPLETED").await;
    let running = saga(&db.conn, "order_payment", "ORD-R", "RUNNING").await;
    let reason = json!({ "reason": "customer called" });

    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = act(
            &cli,
            &format!("/sagas/{waiting}/cancel"),
            token,
            reason.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(body["type"], "urn:sagaflow:problem:unauthorized");
    }
    let (status, _) = act(
        &cli,
        &format!("/sagas/{failed}/force-forward"),
        None,
        reason.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = act(
        &cli,
        &format!("/sagas/{failed}/retry"),
        Some("s3cret"),
        reason.clone(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a prefix of the token is not the token"
    );
    assert_eq!(
        common::scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE operator_request IS NOT NULL"
        )
        .await,
        0,
        "refused calls wrote nothing"
    );

    for (path, why) in [
        (format!("/sagas/{completed}/cancel"), "COMPLETED"),
        (format!("/sagas/{completed}/retry"), "COMPLETED"),
        (
            format!("/sagas/{failed}/cancel"),
            "retry it, force it forward or resolve it instead",
        ),
        (format!("/sagas/{running}/retry"), "already due"),
        (
            format!("/sagas/{waiting}/force-forward"),
            "applies only to FAILED; to run its current step again, retry it",
        ),
        (format!("/sagas/{completed}/force-forward"), "COMPLETED"),
    ] {
        let (status, body) = act(&cli, &path, Some(TOKEN), reason.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(why),
            "{path}: {body}"
        );
    }
    let (status, body) = act(
        &cli,
        &format!("/sagas/{waiting}/cancel"),
        Some(TOKEN),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "reason");
    let (status, _) = act(
        &cli,
        &format!("/sagas/{}/cancel", Uuid::new_v4()),
        Some(TOKEN),
        reason.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = act(
        &cli,
        &format!("/sagas/{waiting}/cancel"),
        Some(TOKEN),
        reason.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["operator_request"], "CANCEL");
    assert_eq!(body["operator_reason"], "customer called");
    let (status, body) = act(
        &cli,
        &format!("/sagas/{waiting}/retry"),
        Some(TOKEN),
        reason.clone(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "one request at a time: {body}"
    );
    let (status, body) = act(
        &cli,
        &format!("/sagas/{failed}/retry"),
        Some(TOKEN),
        reason.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        body["next_run_at"].is_string(),
        "a FAILED saga with a retry is due: {body}"
    );

    let (_, detail) = get(&cli, &format!("/sagas/{failed}")).await;
    let request = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "OPERATOR_REQUEST")
        .expect("history row");
    assert_eq!(request["actor"], "operator");
    assert_eq!(request["detail"]["reason"], "customer called");
    assert_eq!(request["detail"]["request"], "RETRY");

    let forced = saga(&db.conn, "order_payment", "ORD-FF", "FAILED").await;
    let (status, body) = act(
        &cli,
        &format!("/sagas/{forced}/force-forward"),
        Some(TOKEN),
        reason.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["operator_request"], "FORCE_FORWARD");
    assert!(body["next_run_at"].is_string(), "due now: {body}");
}

fn worker(id: &str) -> WorkerConfig {
    common::worker_config(id, "race-test.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_worker_is_applied_exactly_once() {
    let db = common::fresh_database().await;
    exec(
        &db.conn,
        "INSERT INTO accounts (user_id, balance) VALUES (1, 10)",
    )
    .await;
    let cli = client(&db.conn);
    let id = saga(&db.conn, "order_payment", "ORD-X", "RUNNING").await;

    // Worker A holds the saga and is about to send the debit when the
    // operator's cancel lands.
    let held = claim::claim(&db.conn, "worker-a", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let (status, body) = act(
        &cli,
        &format!("/sagas/{id}/cancel"),
        Some(TOKEN),
        json!({ "reason": "race" }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let err = claim::process(&mut Session::new(&db.conn), &worker("worker-a"), &held[0])
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::StaleSaga { .. }), "{err}");
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT count(*) FROM outbox").await,
        0,
        "A wrote nothing"
    );

    // The next claim (due now) applies the cancel before anything else.
    let next = claim::claim(&db.conn, "worker-b", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    claim::process(&mut Session::new(&db.conn), &worker("worker-b"), &next[0])
        .await
        .unwrap();
    let (_, detail) = get(&cli, &format!("/sagas/{id}")).await;
    // Nothing was sent, so nothing needs undoing: CANCELLED at once.
    assert_eq!(detail["state"], "CANCELLED", "{detail}");
    assert_eq!(detail["operator_request"], Value::Null);
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "CANCEL_REQUESTED").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"COMMAND_SENT"), "{kinds:?}");
    assert_eq!(
        common::scalar_i64(&db.conn, "SELECT count(*) FROM outbox").await,
        1,
        "only the OrderCancelled event"
    );
    assert_eq!(
        common::scalar_i64(
            &db.conn,
            "SELECT count(*) FROM orders WHERE status = 'CANCELLED'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_parameters_are_documented_as_strictly_as_they_are_checked() {
    let db = common::fresh_database().await;
    let cli = client(&db.conn);
    let (_, spec) = get(&cli, "/openapi.json").await;
    let params = spec["paths"]["/sagas"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .clone();
    let schema = |name: &str| {
        params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))["schema"]
            .clone()
    };
    assert_eq!(schema("state")["enum"].as_array().unwrap().len(), 8);
    assert_eq!(
        schema("order")["enum"],
        serde_json::json!(["newest", "oldest"])
    );
    assert_eq!(schema("created_after")["format"], "date-time");
    assert_eq!(schema("limit")["maximum"], 500.0);
    assert!(schema("cursor")["pattern"].is_string());

    // A typed filter sent empty is as wrong as any other bad value; an
    // empty text filter is no filter.
    for (query, field) in [
        ("state=", "state"),
        ("limit=", "limit"),
        ("created_after=", "created_after"),
        ("cursor=", "cursor"),
        ("cursor=%2B1_00000000000000000000000000000000", "cursor"),
    ] {
        let (status, body) = get(&cli, &format!("/sagas?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }
    let (status, _) = get(&cli, "/sagas?type=&order_no=").await;
    assert_eq!(status, StatusCode::OK);
}
