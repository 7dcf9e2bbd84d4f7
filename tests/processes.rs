//! Each role as its own OS process (`sagaflow api`, two `sagaflow worker`s,
//! `sagaflow relay`, `sagaflow participant funds`) on the real services:
//! orders are paid across processes, and a worker stopped with SIGTERM
//! while orders flow exits within its grace period holding no lease, while
//! the other worker finishes the work. Each process's connections name
//! their roles in `pg_stat_activity`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

/// Child processes, killed (SIGKILL) when the test ends, however it ends.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn spawn(role: &[&str], common_args: &[String], log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(role)
        .args(common_args)
        .env("RUST_LOG", "info,sqlx=warn,sea_orm=warn")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn sagaflow")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_run_as_separate_processes_and_a_worker_stops_cleanly() {
    let db = common::fresh_database().await;
    let prefix = common::topic_prefix();
    let port = common::free_port();
    let logs =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("processes-{}", db.name));
    std::fs::create_dir_all(&logs).unwrap();
    let args: Vec<String> = [
        "--database-url",
        &db.url,
        "--kafka-bootstrap-servers",
        &common::kafka_bootstrap(),
        "--topic-prefix",
        &prefix,
        "--group-prefix",
        &prefix,
        "--kafka-session-timeout-ms",
        "6000",
        "--poll-interval-ms",
        "50",
        "--db-pool-size",
        "8",
        "--admin-token",
        common::ADMIN_TOKEN,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--shutdown-grace-ms",
        "8000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut procs = Processes(Vec::new());
    // The API creates the topics before the consumers subscribe.
    procs
        .0
        .push(("api".into(), spawn(&["api"], &args, &logs.join("api.log"))));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let until = tokio::time::Instant::now() + SETTLE;
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            tokio::time::Instant::now() < until,
            "api never ready; see {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, role) in [
        ("worker-a", &["worker"][..]),
        ("worker-b", &["worker"][..]),
        ("relay", &["relay"][..]),
        ("funds", &["participant", "funds"][..]),
    ] {
        procs.0.push((
            name.into(),
            spawn(role, &args, &logs.join(format!("{name}.log"))),
        ));
    }

    let post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post("/accounts".into(), serde_json::json!({"user_id": 1})).await,
        201
    );
    assert_eq!(
        post(
            "/accounts/1/deposits".into(),
            serde_json::json!({"amount": "1000.00"})
        )
        .await,
        201
    );
    let orders = 200;
    let mut placing = tokio::task::JoinSet::new();
    for _ in 0..orders {
        placing.spawn(post(
            "/orders".into(),
            serde_json::json!({"user_id": 1, "amount": "1.00"}),
        ));
    }

    // Once work is flowing, stop worker A the way an orchestrator does.
    let paid = "SELECT count(*) FROM orders WHERE status = 'PAID'";
    let until = tokio::time::Instant::now() + SETTLE;
    while common::scalar_i64(&db.conn, paid).await < 20 {
        assert!(
            tokio::time::Instant::now() < until,
            "nothing paid; see {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = &mut procs.0[1].1;
    let pid = a.id();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped_by = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = a.try_wait().unwrap() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < stopped_by,
            "worker A ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "worker A exited with {status}");
    assert_eq!(
        common::scalar_i64(
            &db.conn,
            &format!("SELECT count(*) FROM saga_instances WHERE lease_owner LIKE '%:{pid}:%'")
        )
        .await,
        0,
        "worker A left a lease held"
    );

    while let Some(r) = placing.join_next().await {
        assert_eq!(r.unwrap(), 201);
    }
    let until = tokio::time::Instant::now() + SETTLE;
    while common::scalar_i64(&db.conn, paid).await < orders {
        assert!(
            tokio::time::Instant::now() < until,
            "not all orders paid; see {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        common::scalar_i64(
            &db.conn,
            "SELECT (balance * 100)::bigint FROM accounts WHERE user_id = 1"
        )
        .await,
        80_000
    );
    assert_eq!(
        common::money_anomalies(&db.conn).await,
        Vec::<String>::new()
    );

    // An operator reading pg_stat_activity (or `sagaflow doctor`) can tell
    // which process and pool a connection belongs to.
    let names: Vec<String> = {
        use sea_orm::{ConnectionTrait, Statement};
        let rows = db
            .conn
            .query_all(Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                format!(
                    "SELECT DISTINCT application_name FROM pg_stat_activity \
                     WHERE datname = '{}' AND application_name LIKE 'sagaflow%' ORDER BY 1",
                    db.name
                ),
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<String>("", "application_name").unwrap())
            .collect()
    };
    for expected in [
        "sagaflow api",
        "sagaflow api engine",
        "sagaflow funds engine",
        "sagaflow relay engine",
        "sagaflow relay listen",
        "sagaflow worker+replies engine",
        "sagaflow worker+replies listen",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no connection named {expected:?} among {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("sagaflow funds listen")),
        "a participant listens on nothing, so it opens no LISTEN connection: {names:?}"
    );
}
