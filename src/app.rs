//! Starts sagaflow's roles in this process and stops them together.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use sagaflow_api::{ApiConfig, ReadinessProbe};
use sagaflow_worker::{claim, participant, relay, replies, wake, KafkaProbe};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Which roles a process runs. `serve` runs them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The HTTP API.
    pub api: bool,
    /// Claim loops.
    pub worker: bool,
    /// The outbox relay.
    pub relay: bool,
    /// The funds participant.
    pub funds: bool,
    /// The reply consumer.
    pub replies: bool,
}

impl Roles {
    /// Every role, as `sagaflow serve` runs them.
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        relay: true,
        funds: true,
        replies: true,
    };

    /// The roles joined by `+` (`api+worker+relay+funds+replies`), as the
    /// process's connections name themselves to Postgres.
    pub fn label(&self) -> String {
        let named = [
            (self.api, "api"),
            (self.worker, "worker"),
            (self.relay, "relay"),
            (self.funds, "funds"),
            (self.replies, "replies"),
        ];
        let on: Vec<&str> = named
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        if on.is_empty() {
            "none".to_owned()
        } else {
            on.join("+")
        }
    }
}

/// The `application_name` of a process's query pool: `sagaflow`, then its
/// roles. `pg_stat_activity` and `sagaflow doctor` show it, so an operator
/// can tell which process holds a connection, a lock or the xmin horizon.
fn application_name(roles: Roles) -> String {
    format!("sagaflow {}", roles.label())
}

/// A running sagaflow process.
#[derive(Debug)]
pub struct Running {
    /// Where the API listens, if it runs.
    pub http_addr: Option<SocketAddr>,
    /// The process's query pool (migrations, the API's reads, retention);
    /// the roles run on a pool of their own (`connect_engine`).
    pub db: DatabaseConnection,
    /// The process's wake-ups: announce through it what was written
    /// outside the roles (a saga inserted by hand, say) to have it handled
    /// at once rather than at the next poll.
    pub announcer: wake::Announcer,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// A token that, once cancelled, stops every role.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every role and waits (up to `grace`) for them to finish.
    pub async fn stop(mut self, grace: Duration) {
        self.shutdown.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("roles did not stop within {grace:?}; aborting them");
            self.tasks.abort_all();
        }
    }

    /// Waits until a role ends on its own (it should not) or shutdown.
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

/// `/readyz`'s Kafka check: a metadata request through a producer.
#[derive(Debug)]
pub struct KafkaReadiness(KafkaProbe);

impl KafkaReadiness {
    /// A check against the cluster `kafka` describes.
    pub fn new(kafka: &sagaflow_worker::KafkaConfig) -> anyhow::Result<Self> {
        Ok(Self(KafkaProbe::new(kafka.producer()?)))
    }
}

impl ReadinessProbe for KafkaReadiness {
    fn kafka_ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.0.ready())
    }
}

/// The pool for the API's reads, migrations and the retention job:
/// `SAGAFLOW_DB_POOL_SIZE / 4` connections (at least 2), planned as
/// Postgres plans by default, since the saga list's optional filters need
/// plans made for the values given.
pub async fn connect(cfg: &Config) -> anyhow::Result<DatabaseConnection> {
    query_pool(cfg, "sagaflow", None).await
}

/// [`connect`]'s pool as a running service has it: its statements are
/// cut off after `SAGAFLOW_QUERY_STATEMENT_TIMEOUT_MS`, so that an API
/// request the database cannot answer in time fails with a 503 rather
/// than hanging.
pub async fn connect_serving(cfg: &Config) -> anyhow::Result<DatabaseConnection> {
    serving_pool(cfg, "sagaflow").await
}

/// [`connect_serving`]'s pool, its connections called `name`.
async fn serving_pool(cfg: &Config, name: &str) -> anyhow::Result<DatabaseConnection> {
    query_pool(cfg, name, millis(cfg.query_statement_timeout_ms)).await
}

/// The engine's pool (claim loops, relay, consumers, order placement):
/// `SAGAFLOW_DB_POOL_SIZE` connections whose statements Postgres plans as
/// `SAGAFLOW_ENGINE_PLANS` says (generic plans by default).
pub async fn connect_engine(cfg: &Config) -> anyhow::Result<DatabaseConnection> {
    engine_pool(cfg, "sagaflow").await
}

/// [`connect`]'s pool, its connections called `name`.
async fn query_pool(
    cfg: &Config,
    name: &str,
    statement_timeout: Option<Duration>,
) -> anyhow::Result<DatabaseConnection> {
    pool(cfg, cfg.query_pool_size(), &[], statement_timeout, name).await
}

/// A timeout setting in milliseconds, 0 meaning none.
fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// [`connect_engine`]'s pool, its connections called `name` and `engine`.
async fn engine_pool(cfg: &Config, name: &str) -> anyhow::Result<DatabaseConnection> {
    pool(
        cfg,
        cfg.db_pool_size,
        cfg.engine_plans.settings(),
        millis(cfg.engine_statement_timeout_ms),
        &format!("{name} engine"),
    )
    .await
}

/// How long a pooled connection may sit idle before it is checked with a
/// round trip as it is handed out.
///
/// Why not on every hand-out, sqlx's default: the check is a round trip of
/// its own, and the pools hand out a connection for every batch of orders
/// placed and every read of the API, so checking each one cost a wake-up
/// of the server and of the process for nothing (bench/README, finding
/// 39). A connection in steady use has just proved itself; one that sat
/// idle long enough for the server to restart or a middlebox to drop it
/// is still checked, and one found broken is discarded and replaced before
/// any statement sees it. (The loops keep connections of their own, out
/// of the pools: `sagaflow_worker::session`.)
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// A pool whose connections call themselves `application_name`, unless
/// `DATABASE_URL` (or `PGAPPNAME`) names one already.
async fn pool(
    cfg: &Config,
    size: u32,
    settings: &'static [(&'static str, &'static str)],
    statement_timeout: Option<Duration>,
    application_name: &str,
) -> anyhow::Result<DatabaseConnection> {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};

    let options = PgConnectOptions::from_str(&cfg.database_url)
        .context("parsing DATABASE_URL")?
        .disable_statement_logging()
        // Startup options: set by the server as the connection opens, no
        // statement of their own.
        //
        // sagaflow's transactions last milliseconds; one left open (a hung
        // task, a bug) would hold the xmin horizon and let dead tuples pile
        // up in the queue tables, so the server ends it. See bench/README
        // "Held xmin horizon".
        .options([("idle_in_transaction_session_timeout", "60s")]);
    let mut options = wake::named(options, application_name).options(settings.iter().copied());
    if let Some(t) = statement_timeout {
        options = options.options([("statement_timeout", format!("{}ms", t.as_millis()))]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    // An error discards the connection; the pool opens
                    // another in its place.
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(
        pool,
    ))
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    sagaflow_migration::Migrator::up(db, None)
        .await
        .context("running migrations")
}

/// The process's metrics recorder, installed on first use; `/metrics`
/// renders it. (One per process: every app started in it shares it.)
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_batch_size".to_owned()), &sizes)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "histogram buckets refused; using summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only database gauges"
                );
            }
            handle
        })
        .clone()
}

/// What an embedding application adds to the built-in sagas: its own
/// definitions and the local actions (steps, compensations, hooks) they
/// name.
#[derive(Default)]
pub struct Extensions {
    /// Saga definitions, registered next to the built-in ones.
    pub definitions: Vec<sagaflow_workflows::SagaDefinition>,
    /// Local actions by name.
    pub actions: Vec<(&'static str, Arc<dyn sagaflow_worker::LocalAction>)>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("definitions", &self.definitions)
            .field(
                "actions",
                &self.actions.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The registry (built-in sagas, `ext`'s, then `SAGAFLOW_SAGA_TUNING`) and
/// the local actions, checked against each other.
fn engine(
    cfg: &Config,
    ext: Extensions,
) -> anyhow::Result<(sagaflow_workflows::Registry, sagaflow_worker::Actions)> {
    let mut registry = sagaflow_workflows::Registry::builtin();
    for def in ext.definitions {
        registry
            .register(def)
            .context("registering a saga definition")?;
    }
    if let Some(tuning) = &cfg.saga_tuning {
        registry
            .tune(&tuning.0)
            .context("applying SAGAFLOW_SAGA_TUNING")?;
    }
    let mut actions = sagaflow_worker::Actions::builtin();
    for (name, action) in ext.actions {
        actions.register(name, action)?;
    }
    actions.check_covers(&registry)?;
    Ok((registry, actions))
}

/// Migrates, creates missing topics, and starts `roles`.
pub async fn start(cfg: &Config, roles: Roles) -> anyhow::Result<Running> {
    start_extended(cfg, roles, Extensions::default()).await
}

/// [`start`] with an application's own sagas and local actions.
pub async fn start_extended(
    cfg: &Config,
    roles: Roles,
    ext: Extensions,
) -> anyhow::Result<Running> {
    cfg.validate()?;
    // Before any role starts, so that nothing they record is dropped.
    let metrics = metrics_handle();
    let admin_token = if roles.api {
        cfg.api_admin_token()?
    } else {
        None
    };
    let (registry, actions) = engine(cfg, ext)?;
    let name = application_name(roles);
    {
        // Without the serving pool's statement timeout: a migration may
        // rewrite or index a large table.
        let db = query_pool(cfg, &name, None).await?;
        migrate(&db).await?;
        db.close().await.ok();
    }
    let db = serving_pool(cfg, &name).await?;
    let engine_db = engine_pool(cfg, &name).await?;
    let kafka = cfg.kafka();
    let topics = cfg.topics();
    kafka
        .ensure_topics(&topics)
        .await
        .context("creating Kafka topics")?;
    let producer = kafka.producer()?;
    let mut worker_cfg = cfg.worker();
    worker_cfg.registry = Arc::new(registry);
    worker_cfg.actions = Arc::new(actions);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    // Wake-ups: this process's own waiters at once, other processes by a
    // coalesced NOTIFY at most every SAGAFLOW_NOTIFY_GAP_MS.
    let announcer = wake::Announcer::default();
    worker_cfg.announcer = announcer.clone();
    {
        let stop = shutdown.clone();
        tasks.spawn(announcer.clone().run(
            db.clone(),
            Duration::from_millis(cfg.notify_gap_ms),
            async move { stop.cancelled().await },
        ));
    }
    let channels: Vec<wake::Channel> = [
        (roles.worker, wake::Channel::Saga),
        (roles.relay, wake::Channel::Outbox),
    ]
    .into_iter()
    .filter_map(|(on, channel)| on.then_some(channel))
    .collect();
    for channel in &channels {
        announcer.serve_locally(*channel);
    }
    let listener = wake::listen(
        cfg.database_url.clone(),
        format!("{name} listen"),
        &channels,
        announcer.clone(),
        shutdown.clone(),
    );
    let wakeups = wake::Wakeups::of(&announcer);
    tasks.spawn(async move {
        listener.await.ok();
    });
    if roles.worker {
        tasks.spawn(sagaflow_worker::maintenance::run(
            db.clone(),
            cfg.maintenance(),
            shutdown.clone(),
        ));
        tasks.spawn(claim::run(
            engine_db.clone(),
            worker_cfg.clone(),
            wakeups.clone(),
            shutdown.clone(),
        ));
    }
    if roles.relay {
        tasks.spawn(relay::run(
            engine_db.clone(),
            producer.clone(),
            worker_cfg.clone(),
            wakeups.clone(),
            shutdown.clone(),
        ));
    }
    // One consumer applies its partitions' messages one at a time, each in
    // its own transaction; several in the same group split the partitions.
    type Consume = fn(
        DatabaseConnection,
        sagaflow_worker::KafkaConfig,
        rdkafka::producer::FutureProducer,
        sagaflow_worker::WorkerConfig,
        CancellationToken,
    ) -> BoxFuture<'static, Result<(), sagaflow_worker::WorkerError>>;
    let consumers: [(bool, &'static str, Consume); 2] = [
        (roles.funds, "funds participant", |d, k, p, t, s| {
            Box::pin(participant::run(d, k, p, t, s))
        }),
        (roles.replies, "reply consumer", |d, k, p, t, s| {
            Box::pin(replies::run(d, k, p, t, s))
        }),
    ];
    for (on, what, consume) in consumers {
        for _ in 0..if on { cfg.consumers } else { 0 } {
            let fut = consume(
                engine_db.clone(),
                kafka.clone(),
                producer.clone(),
                worker_cfg.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                if let Err(e) = fut.await {
                    tracing::error!(error = %e, "{what} stopped");
                }
            });
        }
    }
    let mut http_addr = None;
    if roles.api {
        let probe: Arc<dyn ReadinessProbe> =
            Arc::new(KafkaReadiness(KafkaProbe::new(producer.clone())));
        let api_cfg = ApiConfig {
            body_limit_bytes: cfg.body_limit_bytes,
            order_lanes: cfg.order_lanes,
            placement_db: Some(engine_db.clone()),
            admin_token,
            metrics: Some(metrics),
            registry: Some(Arc::clone(&worker_cfg.registry)),
            announcer: announcer.clone(),
            topics: topics.clone(),
            health_thresholds: cfg.health_thresholds(),
        };
        let endpoint = sagaflow_api::app(db.clone(), probe, api_cfg);
        let stop = shutdown.clone();
        let (addr, server) =
            sagaflow_api::serve(&cfg.listen, endpoint, async move { stop.cancelled().await })
                .await
                .with_context(|| format!("listening on {} (SAGAFLOW_LISTEN)", cfg.listen))?;
        http_addr = Some(addr);
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    // Flush what the producer still holds when the process stops.
    let flush_producer = producer.clone();
    let flush_on = shutdown.clone();
    tasks.spawn(async move {
        flush_on.cancelled().await;
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            flush_producer.flush(Duration::from_secs(5)).ok();
        })
        .await
        .ok();
    });
    Ok(Running {
        http_addr,
        db,
        announcer,
        shutdown,
        tasks,
    })
}
