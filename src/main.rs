//! `sagaflow`: durable order-and-payment sagas on PostgreSQL and Kafka.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sagaflow::app::{self, Roles};
use sagaflow::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: perf over order-e2e put a quarter
/// of this process's CPU in glibc's malloc and free (JSON values, SQL
/// parameters, Kafka payloads are all short-lived allocations).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "Durable order-and-payment sagas on PostgreSQL and Apache Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: HTTP API, claim workers, outbox relay,
    /// funds participant and reply consumer. Migrates the schema first.
    Serve(Config),
    /// Only the HTTP API (and dashboard).
    Api(Config),
    /// Only the saga workers: claim loops and the reply consumer.
    Worker(Config),
    /// Only the outbox relay.
    Relay(Config),
    /// Only a participant.
    #[command(subcommand)]
    Participant(ParticipantCommand),
    /// Apply pending schema migrations and exit.
    Migrate(Config),
    /// Look at and replay the dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Look at and requeue outbox messages Kafka refused for good (too
    /// large, say), which the relay set aside so that the rest is published.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Check the money and state invariants against the database; print
    /// the report and exit 1 if any is violated.
    Verify(VerifyArgs),
    /// Check queue health (dead tuples and vacuum of the saga, outbox and
    /// inbox tables, the oldest open transaction, the outbox backlog, the
    /// inbox's age) and print it with advice. Exits 0 when healthy, 1 when
    /// any warning is raised, 2 when the database cannot be reached or read.
    Doctor(DoctorArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print every parked message: where it came from, why, and what it is.
    List(ListArgs),
    /// Publish parked messages again to the topics they came from.
    Replay(DlqReplayArgs),
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Print every message set aside: its topic, key, Kafka's answer, size.
    List(ListArgs),
    /// Put set-aside messages back at the end of the outbox, once what made
    /// Kafka refuse them is fixed; one Kafka still refuses is set aside
    /// again.
    Requeue(OutboxRequeueArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all", "topic"])))]
struct OutboxRequeueArgs {
    /// The outbox id of a message to requeue (as `outbox list` shows it);
    /// repeat for several.
    #[arg(long = "id", value_name = "ID")]
    id: Vec<i64>,
    /// Requeue every message set aside.
    #[arg(long)]
    all: bool,
    /// Requeue every message set aside for this topic (its full name, as
    /// `outbox list` shows it).
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Args)]
struct DlqReplayArgs {
    /// A dead-letter position to replay, as PARTITION@OFFSET (as `dlq list`
    /// shows it); repeat for several.
    #[arg(
        long = "at",
        value_name = "PARTITION@OFFSET",
        required_unless_present = "all"
    )]
    at: Vec<String>,
    /// Replay every parked message.
    #[arg(long, conflicts_with = "at")]
    all: bool,
    #[command(flatten)]
    config: Config,
}

/// Prints the dead letters (the command's output).
#[allow(clippy::print_stdout)]
fn print_dead_letters(
    letters: &[sagaflow_worker::dlq::DeadLetter],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(letters)?);
        return Ok(());
    }
    if letters.is_empty() {
        println!("the dead-letter topic is empty");
    }
    for d in letters {
        let payload: String = d.payload.chars().take(160).collect();
        println!(
            "{}@{}  from {} {}{}\n    reason:  {}\n    key:     {}\n    payload: {}",
            d.partition,
            d.offset,
            d.original_topic,
            d.original_position,
            d.replayed_from
                .as_deref()
                .map(|r| format!(" (replayed from {r})"))
                .unwrap_or_default(),
            d.reason,
            d.key,
            payload
        );
    }
    Ok(())
}

/// Prints the outbox rows the relay set aside (the command's output).
#[allow(clippy::print_stdout)]
fn print_set_aside(
    rows: &[sagaflow_entity::outbox_dead::Summary],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let shown: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "message_id": r.message_id,
                    "topic": r.topic,
                    "key": r.key,
                    "payload_bytes": r.payload_bytes,
                    "created_at": r.created_at,
                    "failed_at": r.failed_at,
                    "error": r.error,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no outbox message is set aside");
    }
    for r in rows {
        println!(
            "{}  {} to {} key {}\n    error:   {}\n    payload: {} bytes, written {}, set aside {}",
            r.id, r.message_id, r.topic, r.key, r.error, r.payload_bytes, r.created_at, r.failed_at
        );
    }
    Ok(())
}

async fn dead_letters(config: &Config) -> anyhow::Result<Vec<sagaflow_worker::dlq::DeadLetter>> {
    let (kafka, topics) = (config.kafka(), config.topics());
    tokio::task::spawn_blocking(move || sagaflow_worker::dlq::list(&kafka, &topics))
        .await?
        .context("reading the dead-letter topic")
}

#[derive(Debug, Subcommand)]
enum ParticipantCommand {
    /// The funds participant: applies debits, refunds and credits.
    Funds(Config),
}

/// Runs `roles` until SIGINT/SIGTERM or until one of them stops.
async fn run(config: Config, roles: Roles) -> anyhow::Result<()> {
    init_tracing(config.log_format);
    let mut running = app::start(&config, roles)
        .await
        .context("starting sagaflow")?;
    if let Some(addr) = running.http_addr {
        tracing::info!("sagaflow is serving on http://{addr} (API docs at http://{addr}/docs)");
    }
    let unexpected = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            false
        }
        _ = running.wait() => {
            tracing::error!("a role stopped unexpectedly; shutting down");
            true
        }
    };
    running
        .stop(Duration::from_millis(config.shutdown_grace_ms))
        .await;
    tracing::info!("stopped");
    // A non-zero exit, so that a supervisor restarting failed processes
    // (systemd's Restart=on-failure, a container's restart policy) brings
    // the missing role back.
    if unexpected {
        anyhow::bail!("a role stopped unexpectedly (its error is logged above)");
    }
    Ok(())
}

const NONE: Roles = Roles {
    api: false,
    worker: false,
    relay: false,
    funds: false,
    replies: false,
};

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: Config,
}

/// `sagaflow doctor`'s exit status when a warning is raised (0: healthy).
const DOCTOR_WARNINGS: i32 = 1;
/// `sagaflow doctor`'s exit status when the database cannot be reached or
/// read (clap's usage errors are 2 as well).
const DOCTOR_UNREACHABLE: i32 = 2;

/// Runs `sagaflow doctor` and returns its exit status.
async fn doctor(args: &DoctorArgs) -> i32 {
    let thresholds = args.config.health_thresholds();
    let health = match app::connect(&args.config).await {
        Ok(db) => sagaflow_api::queue_health::queue_health(&db, &thresholds)
            .await
            .context("reading queue health"),
        Err(e) => Err(e),
    };
    let health = match health {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("sagaflow doctor: {e:#}");
            return DOCTOR_UNREACHABLE;
        }
    };
    match print_health(&health, args.json) {
        Ok(()) if health.is_healthy() => 0,
        Ok(()) => DOCTOR_WARNINGS,
        Err(e) => {
            tracing::error!("sagaflow doctor: {e:#}");
            DOCTOR_UNREACHABLE
        }
    }
}

/// Prints the queue-health report (the command's output).
#[allow(clippy::print_stdout)]
fn print_health(
    health: &sagaflow_api::queue_health::QueueHealth,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(health)?);
    } else {
        print!("{}", health.to_text());
    }
    Ok(())
}

/// Prints the report (the command's output) and says whether it is clean.
#[allow(clippy::print_stdout)]
fn print_report(report: &sagaflow_api::verify::Report, json: bool) -> anyhow::Result<bool> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(report.is_clean())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    // Logs go to stderr: stdout is the output of commands such as `verify`.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate(config) => {
            init_tracing(config.log_format);
            let db = app::connect(&config).await?;
            app::migrate(&db).await?;
            tracing::info!("schema is up to date");
        }
        Command::Dlq(DlqCommand::List(args)) => {
            init_tracing(args.config.log_format);
            print_dead_letters(&dead_letters(&args.config).await?, args.json)?;
        }
        Command::Dlq(DlqCommand::Replay(args)) => {
            init_tracing(args.config.log_format);
            let letters = dead_letters(&args.config).await?;
            let chosen: Vec<_> = if args.all {
                letters
            } else {
                let mut chosen = Vec::new();
                for at in &args.at {
                    let found = letters
                        .iter()
                        .find(|d| format!("{}@{}", d.partition, d.offset) == *at)
                        .with_context(|| {
                            format!("no dead letter at {at} (see `sagaflow dlq list`)")
                        })?;
                    chosen.push(found.clone());
                }
                chosen
            };
            let sent = sagaflow_worker::dlq::replay(&args.config.kafka(), &chosen).await?;
            tracing::info!(sent, "replayed dead letters to their original topics");
        }
        Command::Outbox(OutboxCommand::List(args)) => {
            init_tracing(args.config.log_format);
            let db = app::connect(&args.config).await?;
            let rows = sagaflow_entity::outbox_dead::list(&db, None)
                .await
                .context("reading outbox_dead")?;
            print_set_aside(&rows, args.json)?;
        }
        Command::Outbox(OutboxCommand::Requeue(args)) => {
            init_tracing(args.config.log_format);
            let db = app::connect(&args.config).await?;
            use sagaflow_entity::outbox_dead::Requeue;
            let which = match (&args.topic, args.all) {
                (Some(topic), _) => Requeue::Topic(topic.clone()),
                (None, true) => Requeue::All,
                (None, false) => Requeue::Ids(args.id.clone()),
            };
            let moved = sagaflow_entity::outbox_dead::requeue(&db, which)
                .await
                .context("requeueing set-aside outbox messages")?;
            let missing: Vec<i64> = args
                .id
                .iter()
                .filter(|i| !moved.contains(i))
                .copied()
                .collect();
            tracing::info!(
                requeued = moved.len(),
                ?moved,
                "requeued set-aside outbox messages"
            );
            anyhow::ensure!(
                missing.is_empty(),
                "not set aside (see `sagaflow outbox list`): {missing:?}"
            );
        }
        Command::Verify(args) => {
            init_tracing(args.config.log_format);
            let db = app::connect(&args.config).await?;
            let report = sagaflow_api::verify::verify(&db)
                .await
                .context("running the checks")?;
            if !print_report(&report, args.json)? {
                std::process::exit(1);
            }
        }
        Command::Doctor(args) => {
            init_tracing(args.config.log_format);
            let status = doctor(&args).await;
            if status != 0 {
                std::process::exit(status);
            }
        }
        Command::Serve(config) => run(config, Roles::ALL).await?,
        Command::Api(config) => run(config, Roles { api: true, ..NONE }).await?,
        Command::Worker(config) => {
            run(
                config,
                Roles {
                    worker: true,
                    replies: true,
                    ..NONE
                },
            )
            .await?
        }
        Command::Relay(config) => {
            run(
                config,
                Roles {
                    relay: true,
                    ..NONE
                },
            )
            .await?
        }
        Command::Participant(ParticipantCommand::Funds(config)) => {
            run(
                config,
                Roles {
                    funds: true,
                    ..NONE
                },
            )
            .await?
        }
    }
    Ok(())
}
