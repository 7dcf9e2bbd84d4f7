//! `/healthz`, `/readyz` and the start page at `/`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use poem_openapi::payload::{Html, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::{ApiTags, ReadinessProbe};

/// How long `/readyz` waits for Postgres and for the Kafka probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LiveStatus {
    /// The process is up and answering.
    Ok,
}

/// Body of `/healthz`.
#[derive(Debug, Clone, Object)]
pub struct Health {
    /// Always "ok": an answer at all means the process is alive.
    pub status: LiveStatus,
}

/// Readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Postgres and Kafka are both usable.
    Ready,
    /// At least one of them is not.
    NotReady,
}

/// Body of `/readyz`.
#[derive(Debug, Clone, Object)]
pub struct Readiness {
    /// "ready" when both dependencies are usable, else "not_ready".
    pub status: ReadyStatus,
    /// Whether `SELECT 1` on Postgres succeeded in time.
    pub postgres: bool,
    /// Whether the Kafka client reported the brokers reachable in time.
    pub kafka: bool,
}

/// Responses of `GET /healthz`.
#[derive(Debug, ApiResponse)]
pub enum HealthResponse {
    /// The process is alive.
    #[oai(status = 200)]
    Ok(Json<Health>),
}

/// Responses of `GET /readyz`.
#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
    /// Ready to take traffic.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: the body tells which dependency is failing. (This body
    /// is `application/json`, not a problem document, so that probes read
    /// the same shape either way.)
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// Health, readiness and the start page.
#[derive(Clone)]
pub struct HealthApi {
    db: DatabaseConnection,
    probe: Arc<dyn ReadinessProbe>,
}

impl fmt::Debug for HealthApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthApi").finish_non_exhaustive()
    }
}

impl HealthApi {
    /// Checks `db` and asks `probe` about Kafka.
    pub fn new(db: DatabaseConnection, probe: Arc<dyn ReadinessProbe>) -> Self {
        Self { db, probe }
    }

    async fn postgres_ready(&self) -> bool {
        let select = self.db.execute(Statement::from_string(
            self.db.get_database_backend(),
            "SELECT 1",
        ));
        match tokio::time::timeout(PROBE_TIMEOUT, select).await {
            Ok(Ok(_)) => true,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "readiness: Postgres check failed");
                false
            }
            Err(_) => {
                tracing::warn!("readiness: Postgres check timed out");
                false
            }
        }
    }

    async fn kafka_ready(&self) -> bool {
        tokio::time::timeout(PROBE_TIMEOUT, self.probe.kafka_ready())
            .await
            .unwrap_or(false)
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness
    ///
    /// 200 as long as the process answers; touches no dependency.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> HealthResponse {
        HealthResponse::Ok(Json(Health {
            status: LiveStatus::Ok,
        }))
    }

    /// Readiness
    ///
    /// 200 when Postgres answers `SELECT 1` and Kafka is reachable, else 503;
    /// each check gives up after 2 seconds.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self) -> ReadyResponse {
        let (postgres, kafka) = futures::join!(self.postgres_ready(), self.kafka_ready());
        if postgres && kafka {
            ReadyResponse::Ready(Json(Readiness {
                status: ReadyStatus::Ready,
                postgres,
                kafka,
            }))
        } else {
            ReadyResponse::NotReady(Json(Readiness {
                status: ReadyStatus::NotReady,
                postgres,
                kafka,
            }))
        }
    }

    /// The dashboard.
    #[oai(path = "/", method = "get", hidden)]
    async fn index(&self) -> Html<&'static str> {
        Html(crate::dashboard::INDEX_HTML)
    }
}
