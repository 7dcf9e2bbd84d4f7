//! The scenarios. Each runs in a database of its own on the configured
//! server (created, migrated, dropped afterwards) and under a topic prefix
//! of its own, with sagaflow's engine in this process, and measures from
//! the database's own timestamps: a saga's `updated_at` is the start of the
//! transaction that finished it, an order's `created_at` that of the
//! transaction that accepted it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sagaflow::app::{Extensions, Roles, Running};
use sagaflow::config::Config;
use sagaflow_worker::{ActionFuture, LocalAction, LocalContext};
use sagaflow_workflows::machine::Outcome;
use sagaflow_workflows::{Action, Hooks, RetryPolicy, SagaDefinition, StepDef};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::report::{Check, Latency, ScenarioResult};
use crate::system::{backend_label, commits, scalar_i64, CpuSample, ProcessCpu};

/// Knobs shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Env {
    /// A URL of the server; scenario databases are made next to it.
    pub database_url: String,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Claim loops in the engine.
    pub workers: usize,
    /// Sagas per claim.
    pub claim_batch: u32,
    /// Kafka consumers per consuming role.
    pub consumers: usize,
    /// Postgres pool size of the engine.
    pub pool: u32,
    /// A bound on waiting for a scenario's sagas to finish.
    pub settle: Duration,
    /// Keep scenario databases instead of dropping them.
    pub keep: bool,
    /// Runtime threads of each `sagaflow` process a split layout starts
    /// (`TOKIO_WORKER_THREADS`); 0 leaves tokio's default, one per core.
    pub process_threads: usize,
}

/// A scenario's own database.
#[derive(Debug)]
pub struct BenchDb {
    name: String,
    pub(crate) url: String,
    pub(crate) conn: DatabaseConnection,
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, rest) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let cut = base.rfind('/').map_or(base.len(), |i| i);
    format!("{}/{db}{rest}", &base[..cut])
}

impl BenchDb {
    pub(crate) async fn create(env: &Env, scenario: &str) -> anyhow::Result<Self> {
        let name = format!(
            "bench_{}_{}",
            // A round's label ("scale-out #2") names its database too.
            scenario
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                })
                .collect::<String>(),
            chrono::Utc::now().format("%H%M%S")
        );
        let admin = Database::connect(&env.database_url)
            .await
            .context("connect to DATABASE_URL (start the services: scripts/services.sh start)")?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await.ok();
        let url = with_database(&env.database_url, &name);
        let conn = Database::connect(&url).await?;
        sagaflow::app::migrate(&conn).await?;
        Ok(BenchDb { name, url, conn })
    }

    pub(crate) async fn drop(self, env: &Env) -> anyhow::Result<()> {
        self.conn.close().await.ok();
        if env.keep {
            return Ok(());
        }
        let admin = Database::connect(&env.database_url).await?;
        // A plain DROP ends an autovacuum worker in the database itself;
        // WITH (FORCE) would refuse to (it is not the bench role's process
        // to terminate) and fail the whole run. FORCE is for what the
        // scenario may leave connected: a child process still closing.
        let plain = format!("DROP DATABASE IF EXISTS {}", self.name);
        if let Err(e) = admin.execute_unprepared(&plain).await {
            let forced = format!("{plain} WITH (FORCE)");
            if let Err(e2) = admin.execute_unprepared(&forced).await {
                eprintln!("could not drop database {}: {e}; {e2}", self.name);
            }
        }
        admin.close().await.ok();
        drop_topics(env, &self.name).await
    }
}

/// Deletes the topics of scenario database `name`: left behind, every
/// run's topics pile up on the broker (hundreds of partitions after a day
/// of runs) and cost it work in every later run.
async fn drop_topics(env: &Env, name: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .create()?;
    let topics = sagaflow_worker::Topics::with_prefix(&format!("{name}."));
    let names = topics.all();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // A topic the scenario never created is no failure of the run.
    for result in admin.delete_topics(&names, &opts).await? {
        if let Err((name, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                eprintln!("could not delete topic {name}: {code}");
            }
        }
    }
    Ok(())
}

/// The engine's configuration for a scenario database.
pub(crate) fn config(env: &Env, db: &BenchDb) -> anyhow::Result<Config> {
    let prefix = format!("{}.", db.name);
    Config::parse_from([
        "sagaflow-bench",
        "--database-url",
        &db.url,
        "--kafka-bootstrap-servers",
        &env.kafka,
        "--topic-prefix",
        &prefix,
        "--group-prefix",
        &prefix,
        "--listen",
        "127.0.0.1:0",
        "--insecure-no-admin-token",
        "--workers",
        &env.workers.to_string(),
        "--claim-batch",
        &env.claim_batch.to_string(),
        "--consumers",
        &env.consumers.to_string(),
        "--db-pool-size",
        &env.pool.to_string(),
        "--shutdown-grace-ms",
        "5000",
    ])
    .context("engine configuration")
}

/// A local step that does nothing: what is left is the engine's own cost.
#[derive(Debug)]
struct Noop;

impl LocalAction for Noop {
    fn run<'a>(&'a self, _ctx: LocalContext<'a>) -> ActionFuture<'a> {
        Box::pin(async { Ok(Outcome::Ok) })
    }
}

const NOOP: &str = "bench.noop";
const STEP_NAMES: [&str; 3] = ["one", "two", "three"];

/// `steps` local no-op steps, no compensations.
fn local_saga(name: &'static str, steps: usize) -> SagaDefinition {
    SagaDefinition {
        name,
        version: 1,
        steps: STEP_NAMES[..steps]
            .iter()
            .map(|step| StepDef {
                name: step,
                action: Action::Local(NOOP),
                compensation: None,
                retry: RetryPolicy::once(),
                timeout: Duration::from_secs(30),
            })
            .collect(),
        hooks: Hooks::default(),
    }
}

pub(crate) const ONE_STEP: &str = "bench_1step";
const THREE_STEPS: &str = "bench_3step";

pub(crate) fn extensions() -> Extensions {
    Extensions {
        definitions: vec![local_saga(ONE_STEP, 1), local_saga(THREE_STEPS, 3)],
        actions: vec![(NOOP, Arc::new(Noop))],
    }
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_owned());
    pb
}

/// Waits until no saga is due (every one finished), ticking `pb`; returns
/// how many status queries it made (they are commits of the database too).
async fn drain(
    db: &DatabaseConnection,
    total: u64,
    pb: &ProgressBar,
    within: Duration,
) -> anyhow::Result<u64> {
    let until = tokio::time::Instant::now() + within;
    let mut polls = 0;
    loop {
        // The claim's partial index holds exactly the unfinished sagas.
        let left = scalar_i64(
            db,
            "SELECT count(*) FROM saga_instances WHERE next_run_at IS NOT NULL",
        )
        .await?;
        polls += 1;
        let left = u64::try_from(left).unwrap_or(0);
        pb.set_position(total.saturating_sub(left));
        if left == 0 {
            return Ok(polls);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "{left} sagas still unfinished after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Database time now, as an RFC 3339 string the queries take back.
pub(crate) async fn db_now(db: &DatabaseConnection) -> anyhow::Result<String> {
    crate::system::scalar_text(
        db,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .await
}

/// Finished sagas per second in buckets since `t0`, and the span from `t0`
/// to the last one, in seconds.
pub(crate) async fn timeline(
    db: &DatabaseConnection,
    t0: &str,
) -> anyhow::Result<(Vec<(f64, f64)>, f64)> {
    let span: f64 = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT COALESCE(extract(epoch FROM max(updated_at) - $1::timestamptz), 0)::float8 \
             FROM saga_instances WHERE next_run_at IS NULL AND created_at >= $1::timestamptz - interval '1 minute' \
               AND updated_at >= $1::timestamptz",
            [t0.into()],
        ))
        .await?
        .context("no row")?
        .try_get_by_index(0)?;
    // About 60 buckets, none shorter than 100 ms.
    let bucket = (span / 60.0).max(0.1);
    let rows = db
        .query_all(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT floor(extract(epoch FROM updated_at - $1::timestamptz) / $2)::float8 AS b, count(*)::float8 AS n \
             FROM saga_instances WHERE next_run_at IS NULL AND created_at >= $1::timestamptz - interval '1 minute' \
               AND updated_at >= $1::timestamptz \
             GROUP BY b ORDER BY b",
            [t0.into(), bucket.into()],
        ))
        .await?;
    let mut points = Vec::with_capacity(rows.len());
    for r in rows {
        let b: f64 = r.try_get_by_index(0)?;
        let n: f64 = r.try_get_by_index(1)?;
        points.push(((b.max(0.0) + 0.5) * bucket, n / bucket));
    }
    Ok((points, span))
}

/// What every scenario measures around its run.
pub(crate) struct Meter {
    commits: i64,
    cpu: CpuSample,
    processes: Option<ProcessSampler>,
    by_process: (BTreeMap<String, u64>, u64),
}

/// What a run cost, as [`Meter`] measured it.
pub(crate) struct Measured {
    /// Commits of the scenario's database, less the harness's own.
    pub commits: u64,
    /// Machine-wide busy CPU, ms.
    pub cpu: u64,
    /// This process's CPU, ms.
    pub own: u64,
    /// CPU ms by kind of process ([`ProcessCpu`]).
    pub by_process: BTreeMap<String, u64>,
}

/// Samples [`ProcessCpu`] every second in a task of its own, so that a
/// process's CPU is read while it still exists; Postgres's processes are
/// labelled from `pg_stat_activity`, read on the scenario's connection.
struct ProcessSampler {
    /// Cancels the task when the sampler is finished or dropped (a run
    /// that fails part-way).
    stop: tokio_util::sync::DropGuard,
    task: tokio::task::JoinHandle<(ProcessCpu, u64)>,
}

const PROCESS_SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl ProcessSampler {
    async fn start(db: &DatabaseConnection) -> Self {
        let mut queries = 1;
        let cpu = sample(ProcessCpu::default(), postgres_processes(db).await).await;
        let stop = CancellationToken::new();
        let (db, until) = (db.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut cpu = cpu;
            loop {
                tokio::select! {
                    _ = until.cancelled() => break,
                    _ = tokio::time::sleep(PROCESS_SAMPLE_EVERY) => {}
                }
                queries += 1;
                cpu = sample(cpu, postgres_processes(&db).await).await;
            }
            // The last reading, as the run ends.
            let cpu = sample(cpu, postgres_processes(&db).await).await;
            (cpu, queries + 1)
        });
        ProcessSampler {
            stop: stop.drop_guard(),
            task,
        }
    }

    /// Takes a last sample and returns the CPU by kind of process and the
    /// statements the sampler ran on the scenario's database.
    async fn finish(self) -> (BTreeMap<String, u64>, u64) {
        drop(self.stop);
        match self.task.await {
            Ok((cpu, queries)) => (cpu.ms(), queries),
            Err(_) => (BTreeMap::new(), 0),
        }
    }
}

/// [`ProcessCpu::sample`] off the runtime's worker threads: reading every
/// `/proc/<pid>/stat` blocks, and those threads run the API and the roles
/// being measured.
async fn sample(mut cpu: ProcessCpu, backends: HashMap<u32, String>) -> ProcessCpu {
    tokio::task::spawn_blocking(move || {
        cpu.sample(&backends);
        cpu
    })
    .await
    .unwrap_or_default()
}

/// Postgres's processes by pid, labelled by [`backend_label`]; empty if the
/// query fails (the breakdown then lumps them together).
async fn postgres_processes(db: &DatabaseConnection) -> HashMap<u32, String> {
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT pid, COALESCE(backend_type, ''), COALESCE(application_name, '') FROM pg_stat_activity",
        ))
        .await
        .unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            let pid: i32 = r.try_get_by_index(0).ok()?;
            let kind: String = r.try_get_by_index(1).ok()?;
            let app: String = r.try_get_by_index(2).ok()?;
            Some((u32::try_from(pid).ok()?, backend_label(&kind, &app)))
        })
        .collect()
}

impl Meter {
    pub(crate) async fn start(db: &DatabaseConnection) -> anyhow::Result<Self> {
        Ok(Meter {
            commits: commits(db).await?,
            cpu: CpuSample::now(),
            processes: Some(ProcessSampler::start(db).await),
            by_process: (BTreeMap::new(), 0),
        })
    }

    /// Takes the last per-process reading now, before processes that the
    /// run started are stopped (their CPU vanishes from `/proc` with them).
    pub(crate) async fn stop_sampling(&mut self) {
        if let Some(p) = self.processes.take() {
            self.by_process = p.finish().await;
        }
    }

    /// Stops the engine (its backends report their commits as they exit),
    /// then reads the counters.
    async fn finish(
        self,
        db: &DatabaseConnection,
        engine: Running,
        own_queries: u64,
    ) -> anyhow::Result<Measured> {
        self.finish_after(db, engine.stop(Duration::from_secs(5)), own_queries)
            .await
    }

    /// [`Meter::finish`] for a load that `stop` ends (and whose
    /// connections it closes) other than the engine.
    pub(crate) async fn finish_after(
        mut self,
        db: &DatabaseConnection,
        stop: impl std::future::Future<Output = ()>,
        own_queries: u64,
    ) -> anyhow::Result<Measured> {
        self.stop_sampling().await;
        let (by_process, sampler_queries) = self.by_process;
        let cpu = CpuSample::now();
        stop.await;
        // Exiting backends flush their statistics as they go; give the
        // last of them a moment (a figure's accuracy, not a test's pass).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let after = commits(db).await?;
        let (machine, own) = self.cpu.ms_until(cpu);
        let ours = i64::try_from(own_queries + sampler_queries + 1).unwrap_or(0);
        let commits = u64::try_from(after - self.commits - ours).unwrap_or(0);
        Ok(Measured {
            commits,
            cpu: machine,
            own,
            by_process,
        })
    }
}

pub(crate) fn per(n: u64, sagas: u64) -> f64 {
    n as f64 / sagas.max(1) as f64
}

/// [`per`] of each entry.
pub(crate) fn per_each(by: &BTreeMap<String, u64>, sagas: u64) -> BTreeMap<String, f64> {
    by.iter()
        .map(|(k, v)| (k.clone(), per(*v, sagas)))
        .collect()
}

/// A backlog of `n` sagas of `saga_type` inserted at once (after
/// `finished` old finished ones, for the table-size case), drained by the
/// engine's claim loops.
pub async fn backlog(
    env: &Env,
    name: &str,
    description: String,
    saga_type: &'static str,
    n: u64,
    finished: u64,
) -> anyhow::Result<ScenarioResult> {
    let db = BacklogDb::create(env, name, finished).await?;
    let r = db.round(env, name, description, saga_type, n).await;
    db.drop(env).await?;
    r
}

/// A database drained of backlogs any number of times: made (and filled
/// with `finished` old finished sagas) once, so that rounds against two
/// of them can alternate at the cost of one fill each.
pub struct BacklogDb {
    db: BenchDb,
    finished: u64,
}

impl BacklogDb {
    /// A fresh database for scenario `name`, with `finished` old finished
    /// sagas (and their history) in it.
    pub async fn create(env: &Env, name: &str, finished: u64) -> anyhow::Result<Self> {
        let db = BenchDb::create(env, name).await?;
        if finished > 0 {
            prefill(&db.conn, finished).await?;
        }
        Ok(BacklogDb { db, finished })
    }

    /// One round: an engine (claim loops only) drains `n` new sagas of
    /// `saga_type`, inserted at once. The sagas of earlier rounds stay as
    /// finished rows, so each round finds the table a little larger.
    pub async fn round(
        &self,
        env: &Env,
        name: &str,
        description: String,
        saga_type: &'static str,
        n: u64,
    ) -> anyhow::Result<ScenarioResult> {
        let db = &self.db;
        let completed_sql = format!(
            "SELECT count(*) FROM saga_instances WHERE saga_type = '{saga_type}' AND state = 'COMPLETED'"
        );
        let before = scalar_i64(&db.conn, &completed_sql).await?;
        let engine = sagaflow::app::start_extended(
            &config(env, db)?,
            Roles {
                api: false,
                worker: true,
                relay: false,
                funds: false,
                replies: false,
            },
            extensions(),
        )
        .await?;
        let meter = Meter::start(&db.conn).await?;
        insert_due(&db.conn, saga_type, n).await?;
        engine
            .announcer
            .announce(sagaflow_worker::wake::Channel::Saga);
        let t0 = db_now(&db.conn).await?;
        let pb = bar(n, name);
        let polls = drain(&db.conn, n, &pb, env.settle).await?;
        pb.finish_and_clear();
        let m = meter.finish(&db.conn, engine, polls + 1).await?;
        let (timeline, seconds) = timeline(&db.conn, &t0).await?;
        let completed = u64::try_from(scalar_i64(&db.conn, &completed_sql).await? - before)?;
        let checks = vec![Check {
            what: "every saga COMPLETED".to_owned(),
            ok: completed == n,
            detail: format!("{completed} of {n}"),
        }];
        Ok(ScenarioResult {
            name: name.to_owned(),
            description,
            params: json!({
                "sagas": n, "saga_type": saga_type, "finished_sagas_already_in_table": self.finished,
                "workers": env.workers, "claim_batch": env.claim_batch, "pool": env.pool,
            }),
            sagas: completed,
            seconds,
            sagas_per_second: completed as f64 / seconds.max(1e-6),
            per_pgbench_commit: None,
            latency_ms: None,
            commits_per_saga: per(m.commits, completed),
            cpu_ms_per_saga: per(m.cpu, completed),
            process_cpu_ms_per_saga: per(m.own, completed),
            cpu_ms_per_saga_by_process: per_each(&m.by_process, completed),
            timeline,
            checks,
            notes: Vec::new(),
            horizon: None,
        })
    }

    /// Vacuums and analyzes what a round's drain changed, outside the
    /// measured time. Left to autovacuum (and autoanalyze, which `VACUUM`
    /// alone leaves due), the clean-up runs during the next round's drain,
    /// in this database or the other, which then shares the machine with
    /// it: the second drain of every round read 6-15 % slower than the
    /// first, whichever table it drained (finding 34).
    pub async fn settle(&self) -> anyhow::Result<()> {
        for table in ["saga_instances", "saga_events"] {
            self.db
                .conn
                .execute_unprepared(&format!("VACUUM (ANALYZE) {table}"))
                .await?;
        }
        Ok(())
    }

    /// Drops the database (unless the bench keeps them).
    pub async fn drop(self, env: &Env) -> anyhow::Result<()> {
        self.db.drop(env).await
    }
}

/// `n` sagas of `saga_type`, due now, in one statement (one transaction:
/// the claim loops see the whole backlog at once).
pub(crate) async fn insert_due<C: ConnectionTrait>(
    db: &C,
    saga_type: &str,
    n: u64,
) -> anyhow::Result<()> {
    db.execute_unprepared(&format!(
        "INSERT INTO saga_instances (id, saga_type, definition_version, state, next_run_at, data) \
         SELECT gen_random_uuid(), '{saga_type}', 1, 'RUNNING', now(), '{{}}'::jsonb FROM generate_series(1, {n})"
    ))
    .await?;
    Ok(())
}

/// `rows` finished sagas, created a day ago, with a history row each, as
/// a table that has run for a while holds them.
async fn prefill(db: &DatabaseConnection, rows: u64) -> anyhow::Result<()> {
    const CHUNK: u64 = 100_000;
    let pb = bar(rows, "prefill");
    let mut done = 0;
    while done < rows {
        let n = CHUNK.min(rows - done);
        db.execute_unprepared(&format!(
            "WITH s AS (\
               INSERT INTO saga_instances (id, saga_type, definition_version, state, current_step, next_run_at, data, created_at, updated_at) \
               SELECT gen_random_uuid(), 'order_payment', 1, 'COMPLETED', 1, NULL, \
                      jsonb_build_object('order_no', 'ORD-OLD-' || g, 'user_id', 1, 'amount', '1.00'), \
                      now() - interval '1 day', now() - interval '1 day' \
               FROM generate_series(1, {n}) g RETURNING id) \
             INSERT INTO saga_events (saga_id, kind, step, attempt, from_state, to_state, detail, actor) \
             SELECT id, 'COMPLETED', 1, 0, 'WAITING', 'COMPLETED', 'null'::jsonb, 'bench' FROM s"
        ))
        .await?;
        done += n;
        pb.set_position(done);
    }
    pb.set_message("VACUUM ANALYZE");
    db.execute_unprepared("VACUUM ANALYZE saga_instances")
        .await?;
    db.execute_unprepared("VACUUM ANALYZE saga_events").await?;
    pb.finish_and_clear();
    Ok(())
}

/// The roles as OS processes of their own (`sagaflow worker`, `sagaflow
/// participant funds`, `sagaflow relay`), the way a deployment scales out.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// `sagaflow worker` processes (claim loops and reply consumers).
    pub workers: usize,
    /// `sagaflow participant funds` processes.
    pub participants: usize,
}

/// Child processes, killed when dropped, however the scenario ends.
#[derive(Debug)]
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Split {
    fn spawn(self, env: &Env, db: &BenchDb, name: &str) -> anyhow::Result<Children> {
        // The release `sagaflow` binary next to this one (scripts/bench.sh
        // builds both).
        let bin = std::env::current_exe()?
            .parent()
            .context("no directory of the harness binary")?
            .join("sagaflow");
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: build it with `cargo build --release --bin sagaflow` (scripts/bench.sh does)",
            bin.display()
        );
        let logs = std::env::temp_dir().join(format!("sagaflow-bench-{}", db.name));
        std::fs::create_dir_all(&logs)?;
        let prefix = format!("{}.", db.name);
        // The same claim loops and consumers in all as one process has, so
        // that the comparison is of the layout, not of more pollers.
        let workers = env.workers.div_ceil(self.workers.max(1));
        let consumers = env
            .consumers
            .div_ceil(self.workers.max(self.participants).max(1));
        let common: Vec<String> = [
            "--database-url",
            &db.url,
            "--kafka-bootstrap-servers",
            &env.kafka,
            "--topic-prefix",
            &prefix,
            "--group-prefix",
            &prefix,
            "--workers",
            &workers.to_string(),
            "--claim-batch",
            &env.claim_batch.to_string(),
            "--consumers",
            &consumers.to_string(),
            "--db-pool-size",
            &env.pool.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut children = Children(Vec::new());
        let roles = std::iter::repeat_n(&["worker"][..], self.workers)
            .chain(std::iter::repeat_n(
                &["participant", "funds"][..],
                self.participants,
            ))
            .chain(std::iter::once(&["relay"][..]));
        for (n, role) in roles.enumerate() {
            let log = std::fs::File::create(logs.join(format!("{n}-{}.log", role.join("-"))))?;
            children.0.push(
                std::process::Command::new(&bin)
                    .args(role)
                    .args(&common)
                    .env("RUST_LOG", "warn")
                    .envs(
                        (env.process_threads > 0)
                            .then(|| ("TOKIO_WORKER_THREADS", env.process_threads.to_string())),
                    )
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("start sagaflow {} for {name}", role.join(" ")))?,
            );
        }
        Ok(children)
    }
}

/// How orders arrive.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `concurrency` clients, each placing its next order once the last
    /// is PAID or FAILED, for `duration` (or until `orders` were placed).
    Closed {
        /// Clients.
        concurrency: usize,
        /// How long to place orders.
        duration: Duration,
        /// Stop after this many orders.
        orders: Option<u64>,
    },
    /// `rate` orders per second, whatever the answers, for `duration`.
    Open {
        /// Orders per second.
        rate: u32,
        /// How long.
        duration: Duration,
    },
}

/// Orders through the HTTP API, paid through Kafka and the funds
/// participant, over `accounts` accounts holding `balance` each.
#[allow(clippy::too_many_arguments)]
pub async fn orders(
    env: &Env,
    name: &str,
    description: String,
    accounts: u64,
    balance: &str,
    load: Load,
    split: Option<Split>,
) -> anyhow::Result<ScenarioResult> {
    let db = BenchDb::create(env, name).await?;
    let cfg = config(env, &db)?;
    // Split: this process serves only the API; the other roles run as
    // `sagaflow` processes of their own.
    let roles = match split {
        None => Roles::ALL,
        Some(_) => Roles {
            api: true,
            worker: false,
            relay: false,
            funds: false,
            replies: false,
        },
    };
    let engine = sagaflow::app::start(&cfg, roles).await?;
    let processes = match split {
        Some(split) => Some(split.spawn(env, &db, name)?),
        None => None,
    };
    let addr = engine.http_addr.context("the API did not start")?;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    // One account more than the load uses, for the warm-up order.
    open_accounts(&http, &base, accounts + 1, balance).await?;
    warm_up(&http, &base, &db.conn, accounts + 1, env.settle).await?;

    let mut meter = Meter::start(&db.conn).await?;
    let t0 = db_now(&db.conn).await?;
    let placed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let pb = bar(0, name);
    let watcher = watcher_connection(&db.url).await?;
    place(
        &watcher, &http, &base, accounts, load, &placed, &refused, &pb,
    )
    .await?;
    watcher.close().await.ok();
    let total = placed.load(Ordering::SeqCst);
    pb.set_length(total);
    let polls = drain(&db.conn, total, &pb, env.settle).await?;
    pb.finish_and_clear();
    meter.stop_sampling().await;
    // The processes' backends report their commits as they exit.
    drop(processes);
    let m = meter.finish(&db.conn, engine, polls + 1).await?;
    let (timeline, seconds) = timeline(&db.conn, &t0).await?;

    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let rows = db
        .conn
        .query_all(Statement::from_string(
            db.conn.get_database_backend(),
            format!(
                "SELECT (extract(epoch FROM updated_at - created_at) * 1000000)::bigint FROM orders \
                 WHERE status = 'PAID' AND user_id <= {accounts}"
            ),
        ))
        .await?;
    for r in rows {
        let micros: i64 = r.try_get_by_index(0)?;
        hist.record(u64::try_from(micros).unwrap_or(0))?;
    }
    let counts = |status: &'static str| {
        let db = &db.conn;
        async move {
            scalar_i64(
                db,
                &format!(
                    "SELECT count(*) FROM orders WHERE status = '{status}' AND user_id <= {accounts}"
                ),
            )
            .await
        }
    };
    let (paid, failed) = (counts("PAID").await?, counts("FAILED").await?);
    let report = sagaflow_api::verify::verify(&db.conn).await?;
    let negative = scalar_i64(&db.conn, "SELECT count(*) FROM accounts WHERE balance < 0").await?;
    let refused_http = refused.load(Ordering::SeqCst);
    // A saga that applied two answers, or moved its money twice, would have
    // been processed twice (the ledger's unique key makes the second
    // impossible; this says so with a figure).
    let twice = scalar_i64(
        &db.conn,
        "SELECT count(*) FROM (SELECT saga_id FROM saga_events WHERE kind = 'REPLY_RECEIVED' \
         GROUP BY saga_id HAVING count(*) > 1 \
         UNION SELECT saga_id FROM ledger_entries WHERE saga_id IS NOT NULL \
         GROUP BY saga_id, kind HAVING count(*) > 1) t",
    )
    .await?;
    let checks = vec![
        Check {
            what: "every accepted order PAID or FAILED".to_owned(),
            ok: u64::try_from(paid + failed)? == total,
            detail: format!("{paid} PAID + {failed} FAILED of {total} accepted"),
        },
        Check {
            what: "no request refused".to_owned(),
            ok: refused_http == 0,
            detail: format!("{refused_http} non-201 answers"),
        },
        Check {
            what: "nothing processed twice".to_owned(),
            ok: twice == 0,
            detail: format!("{twice} sagas with more than one debit or applied reply"),
        },
        Check {
            what: "sagaflow verify clean, no overdraft".to_owned(),
            ok: report.is_clean() && negative == 0,
            detail: format!(
                "{} violations, {negative} negative balances",
                report.violations.len()
            ),
        },
    ];
    db.drop(env).await?;
    let sagas = u64::try_from(paid + failed)?;
    let params = match load {
        Load::Closed {
            concurrency,
            duration,
            orders,
        } => json!({
            "mode": "closed", "concurrency": concurrency, "duration_s": duration.as_secs(),
            "orders": orders, "accounts": accounts, "balance": balance,
        }),
        Load::Open { rate, duration } => json!({
            "mode": "open", "rate_per_s": rate, "duration_s": duration.as_secs(),
            "accounts": accounts, "balance": balance,
        }),
    };
    Ok(ScenarioResult {
        name: name.to_owned(),
        description,
        params: json!({
            "load": params, "workers": env.workers, "claim_batch": env.claim_batch,
            "consumers": env.consumers, "pool": env.pool,
            "processes": split.map(|p| json!({
                "worker": p.workers, "participant_funds": p.participants, "relay": 1,
                "api": "the harness",
                "runtime_threads": (env.process_threads > 0).then_some(env.process_threads),
            })),
        }),
        sagas,
        seconds,
        sagas_per_second: sagas as f64 / seconds.max(1e-6),
        per_pgbench_commit: None,
        latency_ms: Latency::from_micros(&hist),
        commits_per_saga: per(m.commits, sagas),
        cpu_ms_per_saga: per(m.cpu, sagas),
        process_cpu_ms_per_saga: per(m.own, sagas),
        cpu_ms_per_saga_by_process: per_each(&m.by_process, sagas),
        timeline,
        checks,
        notes: vec![format!("{failed} orders refused for insufficient funds")],
        horizon: None,
    })
}

async fn open_accounts(
    http: &reqwest::Client,
    base: &str,
    accounts: u64,
    balance: &str,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    for user_id in 1..=accounts {
        let (http, base, balance) = (http.clone(), base.to_owned(), balance.to_owned());
        let permit = sem.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            http.post(format!("{base}/accounts"))
                .json(&json!({ "user_id": user_id }))
                .send()
                .await?
                .error_for_status()?;
            http.post(format!("{base}/accounts/{user_id}/deposits"))
                .json(&json!({ "amount": balance }))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Places one order on `user_id` (an account the load does not use) and
/// waits until it is PAID or FAILED: the consumers have joined their
/// groups and every stage has run once before the clock starts. Without
/// it, an open-loop run's first two seconds (orders waiting ~1.2 s for
/// the consumer groups) made its p99.
async fn warm_up(
    http: &reqwest::Client,
    base: &str,
    db: &DatabaseConnection,
    user_id: u64,
    settle: Duration,
) -> anyhow::Result<()> {
    let order: serde_json::Value = http
        .post(format!("{base}/orders"))
        .json(&json!({ "user_id": user_id, "amount": "1.00" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let order_no = order["order_no"]
        .as_str()
        .context("the warm-up order has no number")?
        .to_owned();
    let until = tokio::time::Instant::now() + settle;
    loop {
        let row = db
            .query_one(Statement::from_sql_and_values(
                db.get_database_backend(),
                "SELECT status FROM orders WHERE order_no = $1",
                [order_no.clone().into()],
            ))
            .await?;
        let status: Option<String> = row.map(|r| r.try_get_by_index(0)).transpose()?;
        if status.as_deref().is_some_and(|s| s != "PENDING") {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "the warm-up order {order_no} did not finish within {settle:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Places one order of 1.00 for `user_id`; its number if accepted.
async fn place_one(
    http: &reqwest::Client,
    url: &str,
    user_id: u64,
    placed: &AtomicU64,
    refused: &AtomicU64,
) -> Option<String> {
    let answer = match http
        .post(url)
        .json(&json!({ "user_id": user_id, "amount": "1.00" }))
        .send()
        .await
    {
        Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
            r.json::<serde_json::Value>().await.ok()
        }
        _ => None,
    };
    match answer.and_then(|o| o["order_no"].as_str().map(str::to_owned)) {
        Some(no) => {
            placed.fetch_add(1, Ordering::SeqCst);
            Some(no)
        }
        None => {
            refused.fetch_add(1, Ordering::SeqCst);
            None
        }
    }
}

/// The closed loop's watcher gets a connection of its own that plans each
/// lookup for its actual order numbers: with a generic plan (what a
/// prepared statement falls back to) its lookup cost ~3 ms, which made the
/// harness one of the server's largest users.
async fn watcher_connection(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut opts = sea_orm::ConnectOptions::new(url.to_owned());
    opts.max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(opts).await?;
    db.execute_unprepared("SET plan_cache_mode = force_custom_plan")
        .await?;
    Ok(db)
}

/// Tells closed-loop clients when their order finished: one query every
/// 20 ms for orders that left PENDING since the last look, instead of
/// every client polling the API.
#[derive(Debug, Default)]
struct Finished {
    waiting: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
}

impl Finished {
    fn wait_for(&self, order_no: String) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(order_no, tx);
        }
        rx
    }

    /// Until `stop`: looks up the orders being waited for (by their
    /// unique number, so it costs as many index lookups as clients) and
    /// wakes the clients of those that finished.
    async fn watch(&self, db: &DatabaseConnection, stop: &CancellationToken) -> anyhow::Result<()> {
        while !stop.is_cancelled() {
            let waiting: Vec<String> = self
                .waiting
                .lock()
                .map(|w| w.keys().cloned().collect())
                .unwrap_or_default();
            if !waiting.is_empty() {
                let rows = db
                    .query_all(Statement::from_sql_and_values(
                        db.get_database_backend(),
                        // One primary-key probe per order whatever the
                        // statistics (a join on the array was planned as a
                        // scan of orders while the table was young).
                        "SELECT n FROM unnest($1::text[]) AS t(n) \
                         WHERE (SELECT status FROM orders WHERE order_no = t.n) <> 'PENDING'",
                        [waiting.into()],
                    ))
                    .await?;
                for r in rows {
                    let no: String = r.try_get_by_index(0)?;
                    let tx = self.waiting.lock().ok().and_then(|mut w| w.remove(&no));
                    if let Some(tx) = tx {
                        tx.send(()).ok();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn place(
    db: &DatabaseConnection,
    http: &reqwest::Client,
    base: &str,
    accounts: u64,
    load: Load,
    placed: &Arc<AtomicU64>,
    refused: &Arc<AtomicU64>,
    pb: &ProgressBar,
) -> anyhow::Result<()> {
    let url = format!("{base}/orders");
    let next = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(Finished::default());
    match load {
        Load::Closed {
            concurrency,
            duration,
            orders,
        } => {
            let until = tokio::time::Instant::now() + duration;
            let limit = orders.unwrap_or(u64::MAX);
            let mut clients = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (http, url, next) = (http.clone(), url.clone(), next.clone());
                let (placed, refused, pb) = (placed.clone(), refused.clone(), pb.clone());
                let finished = finished.clone();
                clients.spawn(async move {
                    while tokio::time::Instant::now() < until {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= limit {
                            break;
                        }
                        pb.inc_length(1);
                        // Closed over the whole saga: the next order goes
                        // in once this one is PAID or FAILED.
                        if let Some(no) =
                            place_one(&http, &url, n % accounts + 1, &placed, &refused).await
                        {
                            finished.wait_for(no).await.ok();
                            pb.inc(1);
                        }
                    }
                });
            }
            let stop = CancellationToken::new();
            let watcher = {
                let (finished, db, stop) = (finished.clone(), db.clone(), stop.clone());
                tokio::spawn(async move { finished.watch(&db, &stop).await })
            };
            while clients.join_next().await.is_some() {}
            stop.cancel();
            watcher.await??;
        }
        Load::Open { rate, duration } => {
            let until = tokio::time::Instant::now() + duration;
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = tokio::task::JoinSet::new();
            while tokio::time::Instant::now() < until {
                tick.tick().await;
                let n = next.fetch_add(1, Ordering::SeqCst);
                let (http, url) = (http.clone(), url.clone());
                let (placed, refused, pb) = (placed.clone(), refused.clone(), pb.clone());
                inflight.spawn(async move {
                    pb.inc_length(1);
                    place_one(&http, &url, n % accounts + 1, &placed, &refused).await;
                });
                while let Some(r) = inflight.try_join_next() {
                    r?;
                }
            }
            while let Some(r) = inflight.join_next().await {
                r?;
            }
        }
    }
    Ok(())
}
