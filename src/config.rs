//! One typed configuration, read from flags and `SAGAFLOW_*` environment
//! variables (flags win), validated at start-up. Defaults work with the
//! services `scripts/services.sh` starts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sagaflow_api::queue_health::Thresholds;
use sagaflow_worker::maintenance::{MaintenanceConfig, RetentionMode};
use sagaflow_worker::{Actions, KafkaConfig, Topics, WorkerConfig};
use sagaflow_workflows::{Registry, Tuning};

/// A secret that never shows up in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// `SAGAFLOW_SAGA_TUNING` as read. Whether its keys name real steps is
/// checked at start-up, once every saga (an embedding application's too) is
/// known. (A newtype: clap's derive cannot take a map type as a value.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuningArg(pub Tuning);

fn parse_tuning(json: &str) -> Result<TuningArg, String> {
    serde_json::from_str(json)
        .map(TuningArg)
        .map_err(|e| format!("not valid tuning JSON: {e}"))
}

/// What the retention job does with finished sagas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Retention {
    /// Move them, with their history, to the archive tables.
    Archive,
    /// Delete them with their history.
    Delete,
    /// Keep them in the hot table.
    Off,
}

/// How Postgres plans the engine's statements (its `plan_cache_mode` on
/// the engine's connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnginePlans {
    /// Plan each statement once per connection and reuse the plan. Every
    /// engine statement finds its rows by key (`= ANY($1)`, `unnest` of
    /// arrays joined on unique keys, the claim's partial index), so the
    /// plan does not depend on the values, and planning anew at each call
    /// was a third of the statements' time (bench/README, finding 25).
    ///
    /// These connections also turn sequential scans off
    /// (`enable_seqscan=off`). A plan made once is kept until the table's
    /// statistics change, and one made while a table was nearly empty (a
    /// new deployment, the outbox after a quiet spell) scans the whole
    /// table: cheapest for one page, and still in use when the table has
    /// grown to thousands of rows (bench/README, finding 33). Every engine
    /// statement has an index to use instead.
    Generic,
    /// Postgres's default: custom plans while they look cheaper. With
    /// array parameters they always do, so every call is planned again.
    Auto,
}

impl EnginePlans {
    /// The settings of the engine's connections: `plan_cache_mode`, and
    /// with generic plans `enable_seqscan`.
    pub fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            EnginePlans::Generic => &[
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
            ],
            EnginePlans::Auto => &[("plan_cache_mode", "auto")],
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything a sagaflow process can be told.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow"
    )]
    pub database_url: String,

    /// Most connections in this process's engine pool (order placement,
    /// lease renewals, a failed batch's saga-by-saga retry). Each claim
    /// loop, consumer and relay keeps one connection of its own besides,
    /// with the same settings. The API's reads, migrations and the
    /// retention job use a second pool of a quarter of that (at least 2),
    /// whose statements Postgres plans as usual.
    #[arg(long, env = "SAGAFLOW_DB_POOL_SIZE", default_value_t = 32)]
    pub db_pool_size: u32,

    /// How Postgres plans the engine pool's statements: `generic` plans
    /// each once per connection; `auto` is Postgres's default, which plans
    /// statements with array parameters at every call. On two cores
    /// `generic` gave 5-10 % more orders/s in closed loop and 2-4 % less
    /// CPU per order in open loop (bench/README, finding 25).
    #[arg(long, env = "SAGAFLOW_ENGINE_PLANS", value_enum, default_value_t = EnginePlans::Generic)]
    pub engine_plans: EnginePlans,

    /// Longest a statement of the engine pool (claims, relay, consumers,
    /// order placement) may run, in milliseconds; 0 for no limit. Those
    /// statements take milliseconds; one that waits (on a lock an operator
    /// holds, say) fails after this, and its loop retries it, polling Kafka
    /// in between, instead of hanging its consumer past
    /// `max.poll.interval.ms`.
    #[arg(
        long,
        env = "SAGAFLOW_ENGINE_STATEMENT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub engine_statement_timeout_ms: u64,

    /// Longest a statement of a running service's query pool (the API's
    /// reads and operator writes, the retention job) may run, in
    /// milliseconds; 0 for no limit. A request that waits longer (on a
    /// lock, or on a server too busy to answer) gets a 503 with
    /// `Retry-After` instead of holding its connection and its client.
    /// Migrations and the CLI's commands (`verify`, `doctor`, `outbox`)
    /// run without it.
    #[arg(
        long,
        env = "SAGAFLOW_QUERY_STATEMENT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub query_statement_timeout_ms: u64,

    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// Address the HTTP API listens on.
    #[arg(long, env = "SAGAFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Bearer token for the operator calls (`POST /sagas/{id}/retry`,
    /// `/cancel`). Required to serve the API, unless
    /// --insecure-no-admin-token. Never logged.
    #[arg(long, env = "SAGAFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Development only: serve without an admin token, leaving the
    /// operator calls (retry, cancel) open to anyone who can reach the API.
    #[arg(long, env = "SAGAFLOW_INSECURE_NO_ADMIN_TOKEN")]
    pub insecure_no_admin_token: bool,

    /// Concurrent claim loops (saga workers) in this process.
    #[arg(long, env = "SAGAFLOW_WORKERS", default_value_t = 4)]
    pub workers: usize,

    /// Kafka consumers per consuming role (funds participant, reply
    /// consumer) in this process, all in that role's group: each applies
    /// its partitions' messages in order, one transaction per batch. One
    /// consumer takes every partition's messages into the same batch, so
    /// it commits less per message than several splitting them (on two
    /// cores, 1 gave 1.5 times the orders/s of 3); raise it, up to the
    /// partition count, when one core per consumer is free.
    #[arg(long, env = "SAGAFLOW_CONSUMERS", default_value_t = 1)]
    pub consumers: usize,

    /// Most sagas one claim takes (and advances in one transaction). 256
    /// drained 100,000 one-step sagas about a seventh faster than 128 on
    /// two cores; 512 was no better by its ratio to pgbench (bench/README
    /// finding 36).
    #[arg(long, env = "SAGAFLOW_CLAIM_BATCH", default_value_t = 256)]
    pub claim_batch: u32,

    /// How long a claimed saga belongs to its worker, in milliseconds; a
    /// dead worker's sagas are taken over after that.
    #[arg(long, env = "SAGAFLOW_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// Longest wait between polls when no notification arrives, in
    /// milliseconds; bounds how late a retry or timeout fires.
    #[arg(long, env = "SAGAFLOW_POLL_INTERVAL_MS", default_value_t = 250)]
    pub poll_interval_ms: u64,

    /// Shortest gap between two wake-up NOTIFYs this process sends to
    /// others (announcements in between are coalesced into the next one);
    /// the extra delay a new saga or outbox row can wait for a worker or
    /// relay in another process while announcements come faster than
    /// that (the first after a quiet spell goes at once). Waiters in this
    /// process wake at once, and nothing is sent on a channel a role of
    /// this process waits on. Each NOTIFY costs a transaction of the sender
    /// and of every listening backend: with roles split over five
    /// processes, 20 ms rather than 5 took database transactions per order
    /// from 4.1 to 3.1-3.2 and CPU per order from 6.1 to 5.5-6.0 ms
    /// (bench/README, finding 19).
    #[arg(long, env = "SAGAFLOW_NOTIFY_GAP_MS", default_value_t = 20)]
    pub notify_gap_ms: u64,

    /// Shortest time between the starts of two claim passes (all claim
    /// loops of the process together) or two outbox relay passes, in
    /// milliseconds, unless the earlier pass was full. Orders arriving
    /// meanwhile join the next pass instead of each paying a transaction
    /// of its own; after a quiet spell a pass starts at once. Off (0) by
    /// default: 10 ms cut commits per order by 11-20 % and CPU by 4 %, but
    /// cost 8-10 ms of p50 at 100 orders/s (bench/README, finding 24). For
    /// a deployment bound by database commits rather than latency.
    #[arg(long, env = "SAGAFLOW_PASS_GAP_MS", default_value_t = 0)]
    pub pass_gap_ms: u64,

    /// Most outbox rows one relay pass publishes.
    #[arg(long, env = "SAGAFLOW_RELAY_BATCH", default_value_t = 256)]
    pub relay_batch: u32,

    /// What the worker's retention job does with sagas that finished
    /// (COMPLETED, COMPENSATED, CANCELLED, RESOLVED; never FAILED) longer
    /// than `SAGAFLOW_RETENTION_AFTER_SECS` ago.
    #[arg(long, env = "SAGAFLOW_RETENTION", value_enum, default_value_t = Retention::Archive)]
    pub retention: Retention,

    /// How long a finished saga stays in the hot table, in seconds.
    #[arg(long, env = "SAGAFLOW_RETENTION_AFTER_SECS", default_value_t = 7 * 24 * 3600)]
    pub retention_after_secs: u64,

    /// How long the inbox remembers a message id, in seconds. Keep it
    /// above the Kafka topics' retention (7 days by default): a message
    /// redelivered after its id was trimmed would be applied again.
    #[arg(long, env = "SAGAFLOW_INBOX_RETENTION_SECS", default_value_t = 8 * 24 * 3600)]
    pub inbox_retention_secs: u64,

    /// Warn when a transaction holding back vacuum has been open this many
    /// seconds: in `sagaflow doctor`, `GET /queue-health`, `/metrics` and
    /// the dashboard alike.
    #[arg(long, env = "SAGAFLOW_XMIN_WARN_SECONDS", default_value_t = 60)]
    pub xmin_warn_seconds: u64,

    /// Rows per maintenance transaction (retention, inbox trim).
    #[arg(long, env = "SAGAFLOW_MAINTENANCE_BATCH", default_value_t = 1000)]
    pub maintenance_batch: u32,

    /// Time between maintenance passes, in milliseconds.
    #[arg(
        long,
        env = "SAGAFLOW_MAINTENANCE_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub maintenance_interval_ms: u64,

    /// Prefix of every topic name (e.g. `staging.`).
    #[arg(long, env = "SAGAFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Prefix of every consumer group id.
    #[arg(long, env = "SAGAFLOW_GROUP_PREFIX", default_value = "")]
    pub group_prefix: String,

    /// Partitions of each topic sagaflow creates at start-up.
    #[arg(long, env = "SAGAFLOW_TOPIC_PARTITIONS", default_value_t = 3)]
    pub topic_partitions: i32,

    /// Replication factor of each topic sagaflow creates.
    #[arg(long, env = "SAGAFLOW_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    /// Kafka consumer session timeout, in milliseconds.
    #[arg(
        long,
        env = "SAGAFLOW_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_session_timeout_ms: u64,

    /// Longest a Kafka consumer may go without polling before it is taken
    /// out of its group, in milliseconds (librdkafka
    /// `max.poll.interval.ms`; at least the session timeout). A consumer
    /// retrying a batch while Postgres is away keeps polling its paused
    /// partitions between tries, so this bounds one try (its statements,
    /// or waiting for a connection), not an outage.
    #[arg(
        long,
        env = "SAGAFLOW_KAFKA_MAX_POLL_INTERVAL_MS",
        default_value_t = 300_000
    )]
    pub kafka_max_poll_interval_ms: u64,

    /// How long the Kafka producer waits to fill a batch, in milliseconds
    /// (librdkafka `linger.ms`). Longer batches cost latency on every
    /// message; see bench/README.md for the measured trade-off.
    #[arg(long, env = "SAGAFLOW_KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u64,

    /// How often a consumer commits the offsets of what it has applied, in
    /// milliseconds (librdkafka `auto.commit.interval.ms` over offsets
    /// stored only after their batch's transaction committed); also on
    /// rebalance and shutdown. A crash redelivers at most this much, which
    /// the inbox drops. One offset commit per batch cost the broker more
    /// than any other request but fetches (bench/README, finding 26).
    #[arg(
        long,
        env = "SAGAFLOW_KAFKA_COMMIT_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub kafka_commit_interval_ms: u64,

    /// Longest a consumer's fetch waits at the broker for
    /// `SAGAFLOW_KAFKA_FETCH_MIN_BYTES`, in milliseconds (librdkafka
    /// `fetch.wait.max.ms`): what a message can wait on a quiet topic.
    #[arg(long, env = "SAGAFLOW_KAFKA_FETCH_WAIT_MS", default_value_t = 20)]
    pub kafka_fetch_wait_ms: u64,

    /// Bytes a consumer's fetch waits for before the broker answers it
    /// (librdkafka `fetch.min.bytes`); 1 answers as soon as anything
    /// arrives.
    #[arg(long, env = "SAGAFLOW_KAFKA_FETCH_MIN_BYTES", default_value_t = 1)]
    pub kafka_fetch_min_bytes: u32,

    /// How long a stopping process (SIGTERM, Ctrl-C) waits for in-flight
    /// work — steps, messages, HTTP requests — before aborting it, in
    /// milliseconds. Leases of anything aborted expire on their own.
    #[arg(long, env = "SAGAFLOW_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, env = "SAGAFLOW_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,

    /// Order-insert statements the API runs at once. Orders arriving while
    /// every lane is busy go together in the next statement, so fewer
    /// lanes mean bigger batches and fewer commits per order (on two
    /// cores 1 lane beat 4 on latency and CPU, bench/README finding 23);
    /// raise it when one statement at a time cannot keep up.
    #[arg(long, env = "SAGAFLOW_ORDER_LANES", default_value_t = 1)]
    pub order_lanes: usize,

    /// Per-step overrides of the sagas' retry policies and timeouts, as a
    /// JSON object keyed "<saga_type>.<step>", e.g.
    /// '{"order_payment.debit": {"timeout_ms": 5000, "retry": {"max_attempts": 5,
    /// "initial_backoff": 200, "max_backoff": 10000}}}'. Fields: retry,
    /// timeout_ms, compensation_retry, compensation_timeout_ms (times in ms).
    #[arg(long, env = "SAGAFLOW_SAGA_TUNING", value_name = "JSON", value_parser = parse_tuning)]
    pub saga_tuning: Option<TuningArg>,

    /// Log format.
    #[arg(long, env = "SAGAFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parses a [`Config`] alone, for callers that build one from arguments
/// (the binary flattens it into its own command line instead).
#[derive(Debug, clap::Parser)]
struct Standalone {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Reads the configuration from `args` (the first is the program name)
    /// and the environment, as the binary would.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        Standalone::try_parse_from(args).map(|s| s.config)
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Rejects values that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError(s.to_owned()));
        if self.workers == 0 {
            return bad("SAGAFLOW_WORKERS must be at least 1");
        }
        if self.consumers == 0 || self.consumers > 256 {
            return bad("SAGAFLOW_CONSUMERS must be between 1 and 256");
        }
        if self.pass_gap_ms > 1_000 {
            return bad("SAGAFLOW_PASS_GAP_MS must be at most 1000");
        }
        if self.order_lanes == 0 || self.order_lanes > 64 {
            return bad("SAGAFLOW_ORDER_LANES must be between 1 and 64");
        }
        if self.claim_batch == 0 || self.claim_batch > 10_000 {
            return bad("SAGAFLOW_CLAIM_BATCH must be between 1 and 10000");
        }
        if self.lease_ms < 1_000 {
            return bad("SAGAFLOW_LEASE_MS must be at least 1000");
        }
        if self.poll_interval_ms == 0 {
            return bad("SAGAFLOW_POLL_INTERVAL_MS must be at least 1");
        }
        if self.relay_batch == 0 {
            return bad("SAGAFLOW_RELAY_BATCH must be at least 1");
        }
        if self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms {
            return bad(
                "SAGAFLOW_KAFKA_MAX_POLL_INTERVAL_MS must be at least SAGAFLOW_KAFKA_SESSION_TIMEOUT_MS",
            );
        }
        if self.topic_partitions < 1 || self.topic_replication < 1 {
            return bad(
                "SAGAFLOW_TOPIC_PARTITIONS and SAGAFLOW_TOPIC_REPLICATION must be at least 1",
            );
        }
        if self.maintenance_batch == 0 || self.maintenance_batch > 100_000 {
            return bad("SAGAFLOW_MAINTENANCE_BATCH must be between 1 and 100000");
        }
        if self.maintenance_interval_ms < 100 {
            return bad("SAGAFLOW_MAINTENANCE_INTERVAL_MS must be at least 100");
        }
        if self.inbox_retention_secs < 3600 {
            return bad("SAGAFLOW_INBOX_RETENTION_SECS must be at least 3600 (an hour)");
        }
        if self.xmin_warn_seconds == 0 {
            return bad("SAGAFLOW_XMIN_WARN_SECONDS must be at least 1");
        }
        if self.db_pool_size < 2 {
            return bad("SAGAFLOW_DB_POOL_SIZE must be at least 2");
        }
        Ok(())
    }

    /// The admin token the API checks, or why the API must not start: an
    /// empty or missing token is refused unless the insecure development
    /// flag says otherwise.
    pub fn api_admin_token(&self) -> Result<Option<String>, ConfigError> {
        match &self.admin_token {
            Some(t) if !t.expose().trim().is_empty() => Ok(Some(t.expose().trim().to_owned())),
            _ if self.insecure_no_admin_token => Ok(None),
            _ => Err(ConfigError(
                "SAGAFLOW_ADMIN_TOKEN is required to serve the API (operator calls use it); \
                 set it to a long random secret, or pass --insecure-no-admin-token for local development"
                    .to_owned(),
            )),
        }
    }

    /// Topic names under the configured prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }

    /// The worker roles' settings.
    pub fn worker(&self) -> WorkerConfig {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        WorkerConfig {
            worker_id: format!(
                "{host}:{}:{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            workers: self.workers,
            claim_batch: self.claim_batch,
            lease: Duration::from_millis(self.lease_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            pass_gap: Duration::from_millis(self.pass_gap_ms),
            relay_batch: self.relay_batch,
            topics: self.topics(),
            registry: Arc::new(Registry::builtin()),
            actions: Arc::new(Actions::builtin()),
            announcer: sagaflow_worker::wake::Announcer::default(),
        }
    }

    /// When queue health warns: the xmin threshold as configured, and the
    /// inbox-age warning at the trim job's retention plus a day, so that
    /// `doctor` and a serving process's `/queue-health` agree.
    pub fn health_thresholds(&self) -> Thresholds {
        Thresholds {
            xmin_warn_seconds: self.xmin_warn_seconds,
            ..Thresholds::with_inbox_retention(Duration::from_secs(self.inbox_retention_secs))
        }
    }

    /// The retention and inbox trim jobs' settings.
    pub fn maintenance(&self) -> MaintenanceConfig {
        MaintenanceConfig {
            mode: match self.retention {
                Retention::Archive => RetentionMode::Archive,
                Retention::Delete => RetentionMode::Delete,
                Retention::Off => RetentionMode::Off,
            },
            retain_finished: Duration::from_secs(self.retention_after_secs),
            inbox_retention: Duration::from_secs(self.inbox_retention_secs),
            batch: self.maintenance_batch,
            interval: Duration::from_millis(self.maintenance_interval_ms),
        }
    }

    /// Most connections of the pool for the API's reads, migrations and
    /// the retention job: a quarter of the engine's, at least 2.
    pub fn query_pool_size(&self) -> u32 {
        (self.db_pool_size / 4).max(2)
    }

    /// The Kafka clients' settings.
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self.kafka_bootstrap_servers.clone(),
            group_prefix: self.group_prefix.clone(),
            partitions: self.topic_partitions,
            replication: self.topic_replication,
            session_timeout: Duration::from_millis(self.kafka_session_timeout_ms),
            max_poll_interval: Duration::from_millis(self.kafka_max_poll_interval_ms),
            linger: Duration::from_millis(self.kafka_linger_ms),
            commit_interval: Duration::from_millis(self.kafka_commit_interval_ms),
            fetch_wait: Duration::from_millis(self.kafka_fetch_wait_ms),
            fetch_min_bytes: self.kafka_fetch_min_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's configuration table is where operators look: every
    /// setting has its row there, with its variable and its flag.
    #[test]
    fn every_setting_has_a_row_in_the_readme_configuration_table() {
        use clap::CommandFactory;
        let readme = include_str!("../README.md");
        let table: Vec<&str> = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a ## Configuration section")
            .lines()
            .filter(|l| l.starts_with("| `"))
            .collect();
        let mut missing = Vec::new();
        for arg in Standalone::command().get_arguments() {
            let (Some(env), Some(flag)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let env = env.to_string_lossy();
            let row = format!("| `{env}` | `--{flag}` |");
            if !table.iter().any(|l| l.starts_with(&row)) {
                missing.push(row);
            }
        }
        assert!(missing.is_empty(), "README rows missing: {missing:#?}");
    }

    fn parsed(extra: &[&str]) -> Config {
        let mut args = vec!["sagaflow"];
        args.extend_from_slice(extra);
        Config::parse_from(args).expect("arguments parse")
    }

    #[test]
    fn order_lanes_outside_one_to_sixty_four_are_refused_by_name() {
        for lanes in ["0", "65"] {
            let err = parsed(&["--order-lanes", lanes]).validate().unwrap_err();
            assert!(
                err.to_string().contains("SAGAFLOW_ORDER_LANES"),
                "{lanes}: {err}"
            );
        }
        for lanes in ["1", "64"] {
            parsed(&["--order-lanes", lanes])
                .validate()
                .unwrap_or_else(|e| panic!("{lanes}: {e}"));
        }
    }

    #[test]
    fn a_max_poll_interval_under_the_session_timeout_is_refused_by_name() {
        let err = parsed(&[
            "--kafka-session-timeout-ms",
            "10000",
            "--kafka-max-poll-interval-ms",
            "9999",
        ])
        .validate()
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("SAGAFLOW_KAFKA_MAX_POLL_INTERVAL_MS"),
            "{err}"
        );
        let kafka = parsed(&["--kafka-max-poll-interval-ms", "10000"]);
        kafka.validate().unwrap();
        assert_eq!(kafka.kafka().max_poll_interval, Duration::from_secs(10));
        assert_eq!(
            parsed(&[]).kafka().max_poll_interval,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn health_thresholds_follow_the_inbox_retention_and_the_xmin_setting() {
        let t = parsed(&["--inbox-retention-secs", "7200", "--xmin-warn-seconds", "5"])
            .health_thresholds();
        assert_eq!(t.inbox_age_warn_seconds, 7200 + 24 * 3600);
        assert_eq!(t.xmin_warn_seconds, 5);
        // Unset, they are the defaults every reader of queue health knows.
        assert_eq!(parsed(&[]).health_thresholds(), Thresholds::default());
        let err = parsed(&["--xmin-warn-seconds", "0"])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("SAGAFLOW_XMIN_WARN_SECONDS"),
            "{err}"
        );
    }
}
