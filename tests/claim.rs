//! The claim queries under contention, on a real Postgres: no saga is
//! handed to two workers, both plans walk the partial index without
//! sorting, a claim under lock skips what another holds and gives its
//! sagas back at once when its worker dies, a due event the machine
//! ignores does not leave a saga due at once, a worker whose lease was
//! taken over writes nothing, and a heartbeat keeps a lease for as long as
//! its worker lives.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{fresh_database, scalar_i64};
use sagaflow_worker::claim::{self, CLAIM_SQL, LOCK_DUE_SQL};
use sagaflow_worker::session::Session;
use sagaflow_worker::{WorkerConfig, WorkerError};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .expect(sql);
}

/// `due` sagas due now and `finished` completed ones, plus their orders'
/// accounts, inserted directly.
async fn seed(db: &DatabaseConnection, due: i64, finished: i64) {
    exec(
        db,
        "INSERT INTO accounts (user_id, balance) VALUES (1, 1000000)",
    )
    .await;
    let data = r#"'{"order_no":"x","user_id":1,"amount":"1.00"}'::jsonb"#;
    exec(
        db,
        &format!(
            "INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data, created_at) \
             SELECT gen_random_uuid(), 'order_payment', 1, 'RUNNING', now() - interval '1 second' + g * interval '1 microsecond', {data}, now() \
             FROM generate_series(1, {due}) g"
        ),
    )
    .await;
    exec(
        db,
        &format!(
            "INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data) \
             SELECT gen_random_uuid(), 'order_payment', 1, 'COMPLETED', NULL, {data} FROM generate_series(1, {finished})"
        ),
    )
    .await;
    exec(db, "ANALYZE saga_instances").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_racing_claimers_never_share_a_saga() {
    let db = fresh_database().await;
    seed(&db.conn, 3_000, 0).await;

    let mut claimers = tokio::task::JoinSet::new();
    for n in 0..3 {
        let conn = db.conn.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let rows =
                    claim::claim(&conn, &format!("claimer-{n}"), 25, Duration::from_secs(300))
                        .await
                        .unwrap();
                if rows.is_empty() {
                    return mine;
                }
                assert!(rows
                    .iter()
                    .all(|r| r.lease_owner.as_deref() == Some(format!("claimer-{n}").as_str())));
                mine.extend(rows.into_iter().map(|r| r.id));
            }
        });
    }
    let mut all = Vec::new();
    let mut per_claimer = Vec::new();
    while let Some(r) = claimers.join_next().await {
        let ids = r.unwrap();
        per_claimer.push(ids.len());
        all.extend(ids);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 3_000, "claims per claimer: {per_claimer:?}");
    assert_eq!(unique.len(), 3_000, "a saga was claimed twice");
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE lease_owner IS NULL"
        )
        .await,
        0
    );
}

fn plan_nodes<'a>(node: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    out.push(node);
    if let Some(children) = node["Plans"].as_array() {
        for c in children {
            plan_nodes(c, out);
        }
    }
}

/// Asserts that `sql` (with `values`) walks `saga_instances_due` and
/// sorts nothing, in a table of mostly finished sagas.
async fn assert_walks_the_due_index(sql: &str, values: Vec<sea_orm::Value>) {
    let db = fresh_database().await;
    // Mostly finished sagas, as in a table that has run for a while.
    seed(&db.conn, 200, 20_000).await;
    let row = db
        .conn
        .query_one(Statement::from_sql_and_values(
            db.conn.get_database_backend(),
            format!("EXPLAIN (FORMAT JSON) {sql}"),
            values,
        ))
        .await
        .unwrap()
        .unwrap();
    assert_plan_walks_the_due_index(&row.try_get_by_index(0).unwrap());
}

/// The same on the plan Postgres makes without the values, as the
/// engine's pool has it make (`SAGAFLOW_ENGINE_PLANS=generic`): `sql` is
/// prepared, and explained executing with `args` (SQL literals).
async fn assert_walks_the_due_index_on_a_generic_plan(
    db: &DatabaseConnection,
    sql: &str,
    args: &str,
) {
    let generic = ["SET LOCAL plan_cache_mode = force_generic_plan"];
    let plan = plan_on(db, &generic, sql, None, args).await;
    // A generic plan refers to the parameters; a custom one shows values.
    assert!(
        plan.to_string().contains("$1"),
        "not a generic plan: {plan}"
    );
    assert_plan_walks_the_due_index(&plan);
}

fn assert_plan_walks_the_due_index(plan: &serde_json::Value) {
    let mut nodes = Vec::new();
    plan_nodes(&plan[0]["Plan"], &mut nodes);
    let types: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["Node Type"].as_str())
        .collect();
    assert!(!types.contains(&"Sort"), "claim plan sorts: {types:?}");
    assert!(
        nodes
            .iter()
            .any(|n| n["Node Type"] == "Index Scan" && n["Index Name"] == "saga_instances_due"),
        "claim plan does not use saga_instances_due: {plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_walks_the_partial_index_without_sorting() {
    assert_walks_the_due_index(
        CLAIM_SQL,
        vec![
            "w".into(),
            chrono::Utc::now().into(),
            chrono::Utc::now().into(),
            32i64.into(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_under_lock_walks_the_partial_index_without_sorting() {
    assert_walks_the_due_index(LOCK_DUE_SQL, vec![chrono::Utc::now().into(), 32i64.into()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_claims_walk_the_partial_index_on_a_generic_plan_too() {
    let db = fresh_database().await;
    seed(&db.conn, 200, 20_000).await;
    assert_walks_the_due_index_on_a_generic_plan(&db.conn, LOCK_DUE_SQL, "now(), 32").await;
    assert_walks_the_due_index_on_a_generic_plan(&db.conn, CLAIM_SQL, "'w', now(), now(), 32")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_pool_plans_generically_and_the_query_pool_as_postgres_does() {
    let db = fresh_database().await;
    let config = |plans: Option<&str>| {
        let mut args = vec!["sagaflow", "--database-url", &db.url];
        if let Some(p) = plans {
            args.extend(["--engine-plans", p]);
        }
        sagaflow::config::Config::parse_from(args).unwrap()
    };
    let mode = |conn: DatabaseConnection| async move {
        let row = conn
            .query_one(Statement::from_string(
                conn.get_database_backend(),
                "SHOW plan_cache_mode",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<String>(0).unwrap()
    };
    let cfg = config(None);
    let engine = sagaflow::app::connect_engine(&cfg).await.unwrap();
    assert_eq!(mode(engine).await, "force_generic_plan");
    let query = sagaflow::app::connect(&cfg).await.unwrap();
    assert_eq!(mode(query).await, "auto");
    let engine = sagaflow::app::connect_engine(&config(Some("auto")))
        .await
        .unwrap();
    assert_eq!(mode(engine).await, "auto");
}

/// The engine pool's statements (and so the loops' kept sessions, opened
/// with its settings) are cut off at `SAGAFLOW_ENGINE_STATEMENT_TIMEOUT_MS`;
/// the query pool's are not, and 0 lifts the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_statements_are_cut_off_at_the_configured_timeout() {
    let db = fresh_database().await;
    let config = |ms: &str| {
        sagaflow::config::Config::parse_from([
            "sagaflow",
            "--database-url",
            &db.url,
            "--engine-statement-timeout-ms",
            ms,
        ])
        .unwrap()
    };
    let sleep = |conn: DatabaseConnection| async move {
        conn.execute(Statement::from_string(
            conn.get_database_backend(),
            "SELECT pg_sleep(0.5)",
        ))
        .await
    };
    let engine = sagaflow::app::connect_engine(&config("200")).await.unwrap();
    let err = sleep(engine).await.unwrap_err();
    assert_eq!(
        sagaflow_entity::server_error(&err)
            .and_then(|e| e.code())
            .as_deref(),
        Some("57014"),
        "{err}"
    );
    sleep(sagaflow::app::connect(&config("200")).await.unwrap())
        .await
        .unwrap();
    sleep(sagaflow::app::connect_engine(&config("0")).await.unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_under_lock_skips_what_another_holds_and_a_dead_claimer_gives_back_at_once() {
    let db = fresh_database().await;
    seed(&db.conn, 30, 0).await;
    let lease = Duration::from_secs(30);
    // Each claimer gets a connection of its own, as the pool gives them.
    let (a_conn, b_conn, c_conn) = (
        sea_orm::Database::connect(&db.url).await.unwrap(),
        sea_orm::Database::connect(&db.url).await.unwrap(),
        sea_orm::Database::connect(&db.url).await.unwrap(),
    );
    let a = a_conn.begin().await.unwrap();
    let held = claim::lock_due(&a, "a", 10, lease).await.unwrap();
    assert_eq!(held.len(), 10);
    // B claims while A still holds its rows: it must neither wait for A
    // nor get any of A's sagas.
    let b = b_conn.begin().await.unwrap();
    let other = tokio::time::timeout(Duration::from_secs(10), claim::lock_due(&b, "b", 10, lease))
        .await
        .expect("a claim under lock waited for rows another claim holds")
        .unwrap();
    assert_eq!(other.len(), 10);
    let held_ids: HashSet<_> = held.iter().map(|r| r.id).collect();
    assert!(
        other.iter().all(|r| !held_ids.contains(&r.id)),
        "two claims under lock got the same saga"
    );
    // A dies: its transaction ends without a commit. Its sagas are due
    // again at once (no lease to wait out), and come first, being the
    // earliest due.
    a.rollback().await.unwrap();
    a_conn.close().await.unwrap();
    let c = c_conn.begin().await.unwrap();
    let again = claim::lock_due(&c, "c", 10, lease).await.unwrap();
    assert_eq!(
        again.iter().map(|r| r.id).collect::<HashSet<_>>(),
        held_ids,
        "the dead claimer's sagas were not claimable at once"
    );
    // Nothing was written by any claim: the lease fields are in memory.
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE lease_owner IS NOT NULL OR version <> 0"
        )
        .await,
        0
    );
    c.rollback().await.unwrap();
    b.rollback().await.unwrap();
}

/// The history rows a batch writes carry its transaction's start time, so
/// a claim must not take a saga that fell due after that: a saga taken
/// over from a dead worker would show history older than the lease it
/// waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_under_lock_takes_nothing_that_fell_due_after_its_transaction_began() {
    let db = fresh_database().await;
    seed(&db.conn, 1, 0).await;
    exec(
        &db.conn,
        "UPDATE saga_instances SET next_run_at = now() + interval '1 hour'",
    )
    .await;
    let conn = sea_orm::Database::connect(&db.url).await.unwrap();
    let lease = Duration::from_secs(30);

    let tx = conn.begin().await.unwrap();
    let began: chrono::DateTime<chrono::Utc> = tx
        .query_one(Statement::from_string(
            tx.get_database_backend(),
            "SELECT now() AS t",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "t")
        .unwrap();
    // The saga falls due just after the transaction began ...
    let due = began + chrono::Duration::milliseconds(20);
    db.conn
        .execute(Statement::from_sql_and_values(
            db.conn.get_database_backend(),
            "UPDATE saga_instances SET next_run_at = $1",
            [due.into()],
        ))
        .await
        .unwrap();
    // ... and this process's clock passes that time before the claim.
    while chrono::Utc::now() <= due {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let late = claim::lock_due(&tx, "late", 10, lease).await.unwrap();
    assert!(
        late.is_empty(),
        "claimed a saga that fell due after the claim's transaction began"
    );
    tx.rollback().await.unwrap();

    // A transaction begun after it fell due takes it.
    let tx = conn.begin().await.unwrap();
    assert_eq!(
        claim::lock_due(&tx, "next", 10, lease).await.unwrap().len(),
        1
    );
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_event_the_machine_ignores_leaves_the_saga_due_when_a_lease_would_end() {
    let db = fresh_database().await;
    // A WAITING saga whose deadline is an hour away but which is due now
    // (as a hand-edited row could be): the machine ignores its due event.
    exec(
        &db.conn,
        "INSERT INTO saga_instances (id, saga_type, definition_version, state, current_step, next_run_at, deadline, data) \
         VALUES (gen_random_uuid(), 'order_payment', 1, 'WAITING', 0, now() - interval '1 second', \
                 now() + interval '1 hour', '{\"order_no\":\"x\",\"user_id\":1,\"amount\":\"1.00\"}'::jsonb)",
    )
    .await;
    let cfg = worker_config("worker-a");
    let pass = claim::run_once(&mut Session::new(&db.conn), &cfg)
        .await
        .unwrap();
    assert_eq!((pass.claimed, pass.advanced), (1, 1));
    // Written once, with the lease's time as its next run: not due again
    // at once (a claim loop would spin on it), but not left for an hour
    // either.
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE state = 'WAITING' AND version = 1 \
               AND lease_owner IS NULL \
               AND next_run_at BETWEEN now() + interval '20 seconds' AND now() + interval '40 seconds'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_events WHERE kind = 'EVENT_IGNORED'"
        )
        .await,
        1
    );
    let again = claim::run_once(&mut Session::new(&db.conn), &cfg)
        .await
        .unwrap();
    assert_eq!(again.claimed, 0, "the saga was due again at once");
}

fn worker_config(id: &str) -> WorkerConfig {
    common::worker_config(id, "claim-test.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_writes_nothing() {
    let db = fresh_database().await;
    seed(&db.conn, 1, 0).await;

    // Worker A claims with a lease that has already run out when B looks.
    let stale = claim::claim(&db.conn, "worker-a", 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    let fresh = claim::claim(&db.conn, "worker-b", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1, "the expired lease is claimable again");
    assert_eq!(stale[0].id, fresh[0].id);

    let err = claim::process(
        &mut Session::new(&db.conn),
        &worker_config("worker-a"),
        &stale[0],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WorkerError::StaleSaga { .. }), "{err}");
    assert_eq!(scalar_i64(&db.conn, "SELECT count(*) FROM outbox").await, 0);
    assert_eq!(
        scalar_i64(&db.conn, "SELECT count(*) FROM saga_events").await,
        0
    );

    claim::process(
        &mut Session::new(&db.conn),
        &worker_config("worker-b"),
        &fresh[0],
    )
    .await
    .unwrap();
    assert_eq!(scalar_i64(&db.conn, "SELECT count(*) FROM outbox").await, 1);
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE state = 'WAITING' AND lease_owner IS NULL"
        )
        .await,
        1
    );
}

/// `lease_expires_at` of the only saga, as microseconds since the epoch.
async fn lease_expiry(db: &DatabaseConnection) -> i64 {
    scalar_i64(
        db,
        "SELECT (extract(epoch FROM lease_expires_at) * 1000000)::bigint FROM saga_instances",
    )
    .await
}

/// Waits until the database's clock is past `micros` (since the epoch).
async fn await_db_clock_past(db: &DatabaseConnection, micros: i64) {
    let sql = format!("SELECT (now() > to_timestamp({micros} / 1000000.0))::int::bigint");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while scalar_i64(db, &sql).await == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "clock never passed {micros}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_the_lease_until_its_worker_stops() {
    let db = fresh_database().await;
    seed(&db.conn, 1, 0).await;
    let lease = Duration::from_millis(600);
    let claimed = claim::claim(&db.conn, "worker-a", 1, lease).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let first_expiry = lease_expiry(&db.conn).await;

    let done = tokio_util::sync::CancellationToken::new();
    let beat = tokio::spawn(claim::keep_leases(
        db.conn.clone(),
        "worker-a".to_owned(),
        vec![claimed[0].id],
        lease,
        done.clone(),
    ));
    // Past the first lease's end, the saga is still A's: renewed, not free.
    await_db_clock_past(&db.conn, first_expiry).await;
    assert!(
        lease_expiry(&db.conn).await > first_expiry,
        "lease not renewed"
    );
    let taken = claim::claim(&db.conn, "worker-b", 1, lease).await.unwrap();
    assert!(taken.is_empty(), "a renewed lease was taken over");
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE lease_owner = 'worker-a' AND version = 1"
        )
        .await,
        1,
        "renewal must not bump the version A's write is guarded by"
    );

    // Once A stops beating, its last lease runs out and B takes over.
    done.cancel();
    beat.await.unwrap();
    await_db_clock_past(&db.conn, lease_expiry(&db.conn).await).await;
    let taken = claim::claim(&db.conn, "worker-b", 1, lease).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].lease_owner.as_deref(), Some("worker-b"));
}

/// A local step that always fails (an error, as when its store is down)
/// and counts its runs.
#[derive(Debug, Default)]
struct AlwaysFails(std::sync::atomic::AtomicUsize);

impl sagaflow_worker::LocalAction for AlwaysFails {
    fn run<'a>(
        &'a self,
        ctx: sagaflow_worker::LocalContext<'a>,
    ) -> sagaflow_worker::ActionFuture<'a> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            Err(WorkerError::Corrupt {
                saga_id: ctx.saga.id,
                reason: "the action's store is down".to_owned(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_saga_claimed_alone_runs_once_then_waits_out_its_lease() {
    use sagaflow_workflows::{Action, Hooks, RetryPolicy, SagaDefinition, StepDef};
    let db = fresh_database().await;
    let mut registry = sagaflow_workflows::Registry::builtin();
    registry
        .register(SagaDefinition {
            name: "doomed",
            version: 1,
            steps: vec![StepDef {
                name: "fail",
                action: Action::Local("doomed.fail"),
                compensation: None,
                retry: RetryPolicy::once(),
                timeout: Duration::from_secs(5),
            }],
            hooks: Hooks::default(),
        })
        .unwrap();
    let action = std::sync::Arc::new(AlwaysFails::default());
    let mut actions = sagaflow_worker::Actions::builtin();
    actions.register("doomed.fail", action.clone()).unwrap();
    let cfg = WorkerConfig {
        registry: std::sync::Arc::new(registry),
        actions: std::sync::Arc::new(actions),
        ..worker_config("worker-a")
    };
    sagaflow_entity::saga_instance::insert_new(
        &db.conn,
        uuid::Uuid::now_v7(),
        ("doomed", 1),
        serde_json::json!({}),
        serde_json::json!({}),
        "test",
    )
    .await
    .unwrap();

    let pass = claim::run_once(&mut Session::new(&db.conn), &cfg)
        .await
        .unwrap();
    assert_eq!((pass.claimed, pass.advanced, pass.failed), (1, 0, 1));
    assert_eq!(
        action.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the failed step ran again in the same pass"
    );
    // Leased, due when the lease ends, nothing of the attempt kept.
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE state = 'RUNNING' AND lease_owner = 'worker-a' \
               AND next_run_at > now() + interval '20 seconds'"
        )
        .await,
        1,
        "the failed saga was not leased"
    );
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_events WHERE kind <> 'CREATED'"
        )
        .await,
        0
    );
    let again = claim::run_once(&mut Session::new(&db.conn), &cfg)
        .await
        .unwrap();
    assert_eq!(again.claimed, 0, "a leased saga was claimed again at once");
    assert_eq!(action.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The plan of `sql` (prepared with the parameter types `params`, or
/// Postgres's inferred ones, and explained executing with `args`, SQL
/// literals) on one connection of `pool` after the statements of `setup`,
/// as Postgres makes it there.
async fn plan_on(
    pool: &DatabaseConnection,
    setup: &[&str],
    sql: &str,
    params: Option<&str>,
    args: &str,
) -> serde_json::Value {
    // One connection for the setup, PREPARE and EXPLAIN EXECUTE.
    let tx = pool.begin().await.unwrap();
    for s in setup {
        tx.execute_unprepared(s).await.unwrap();
    }
    let params = params.map(|p| format!("({p})")).unwrap_or_default();
    tx.execute_unprepared(&format!("PREPARE probe{params} AS {sql}"))
        .await
        .unwrap();
    let row = tx
        .query_one(Statement::from_string(
            tx.get_database_backend(),
            format!("EXPLAIN (FORMAT JSON) EXECUTE probe({args})"),
        ))
        .await
        .unwrap()
        .unwrap();
    // A prepared statement outlives the transaction that made it, and the
    // pool may hand this connection to the next call.
    tx.execute_unprepared("DEALLOCATE probe").await.unwrap();
    tx.rollback().await.unwrap();
    row.try_get_by_index(0).unwrap()
}

/// A generic plan is kept until the table's statistics change, so one made
/// while `saga_instances` was empty would scan the whole table at every
/// batch long after it has grown (bench/README, finding 33). The engine's
/// connections plan the reply consumer's lookup of a batch's sagas by key
/// through the primary key even then; a generic plan with Postgres's other
/// defaults (the engine's connections until finding 33) scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_pool_finds_a_batchs_sagas_by_index_even_in_an_empty_table() {
    let db = fresh_database().await;
    let cfg =
        sagaflow::config::Config::parse_from(["sagaflow", "--database-url", &db.url]).unwrap();
    let lookup = "SELECT * FROM saga_instances WHERE id = ANY($1) ORDER BY id FOR UPDATE";
    let args = "ARRAY[gen_random_uuid()]";
    let node_types = |plan: &serde_json::Value| -> Vec<String> {
        let mut nodes = Vec::new();
        plan_nodes(&plan[0]["Plan"], &mut nodes);
        nodes
            .iter()
            .map(|n| format!("{} {}", n["Node Type"], n["Index Name"]))
            .collect()
    };

    let engine = sagaflow::app::connect_engine(&cfg).await.unwrap();
    let plan = plan_on(&engine, &[], lookup, Some("uuid[]"), args).await;
    assert!(
        plan.to_string().contains("$1"),
        "not a generic plan: {plan}"
    );
    let types = node_types(&plan);
    assert!(
        types.iter().all(|t| !t.contains("Seq Scan")),
        "the engine's plan scans the table: {types:?}"
    );
    assert!(
        types.iter().any(|t| t.contains("saga_instances_pkey")),
        "the engine's plan does not use the primary key: {types:?}"
    );

    let query = sagaflow::app::connect(&cfg).await.unwrap();
    let generic = ["SET LOCAL plan_cache_mode = force_generic_plan"];
    let types = node_types(&plan_on(&query, &generic, lookup, Some("uuid[]"), args).await);
    assert!(
        types.iter().any(|t| t.contains("Seq Scan")),
        "a generic plan with sequential scans allowed should scan the empty table, which is what the engine avoids: {types:?}"
    );
}
