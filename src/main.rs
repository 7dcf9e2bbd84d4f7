//! `sagaflow`: durable order-and-payment sagas on PostgreSQL and Kafka.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sagaflow::app::{self, Roles};
use sagaflow::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

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
    /// Apply pending schema migrations and exit.
    Migrate(Config),
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
        Command::Serve(config) => {
            init_tracing(config.log_format);
            let mut running = app::start(&config, Roles::ALL)
                .await
                .context("starting sagaflow")?;
            if let Some(addr) = running.http_addr {
                tracing::info!(
                    "sagaflow is serving on http://{addr} (API docs at http://{addr}/docs)"
                );
            }
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("shutting down"),
                _ = running.wait() => tracing::error!("a role stopped unexpectedly; shutting down"),
            }
            running.stop(Duration::from_secs(10)).await;
        }
    }
    Ok(())
}
