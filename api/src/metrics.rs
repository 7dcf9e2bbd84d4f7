//! `GET /metrics` in the Prometheus text format, and the HTTP timing
//! middleware.
//!
//! Counters and histograms are recorded where things happen (the worker's
//! steps, claims and consumers, this API's requests) into the process's
//! global `metrics` recorder, whose handle the binary passes in. What is a
//! property of the database rather than of this process (sagas by state,
//! the outbox backlog) is read at scrape time, so every process reports the
//! same truth.

use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi};
use sagaflow_entity::{SagaState, StateValues};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::error::{ApiError, ProblemJson};
use crate::queue_health::{queue_health, QueueHealth, TableHealth, Thresholds};
use crate::ApiTags;

/// The `/metrics` operation.
#[derive(Clone)]
pub struct MetricsApi {
    db: DatabaseConnection,
    handle: Option<PrometheusHandle>,
    thresholds: Thresholds,
}

impl std::fmt::Debug for MetricsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsApi")
            .field("recorder", &self.handle.is_some())
            .finish()
    }
}

/// Responses of `GET /metrics`.
#[derive(Debug, ApiResponse)]
pub enum MetricsResponse {
    /// The metrics, Prometheus text format 0.0.4.
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Ok(PlainText<String>),
    /// The server failed; the body carries a correlation id.
    #[oai(status = 500)]
    Internal(ProblemJson),
}

impl MetricsApi {
    /// Reads gauges from `db` and renders `handle` (no recorder: only the
    /// database gauges, written by hand); queue-health warnings are
    /// counted against `thresholds`.
    pub fn new(
        db: DatabaseConnection,
        handle: Option<PrometheusHandle>,
        thresholds: Thresholds,
    ) -> Self {
        Self {
            db,
            handle,
            thresholds,
        }
    }

    /// The gauges that describe the database, in the text format.
    async fn database_gauges(&self) -> Result<String, ApiError> {
        let pg = DbBackend::Postgres;
        let rows = self
            .db
            .query_all(Statement::from_string(
                pg,
                "SELECT state, count(*)::bigint AS n FROM saga_instances GROUP BY state",
            ))
            .await?;
        let mut text = String::from(
            "# HELP sagaflow_sagas Sagas by state, from the database.\n# TYPE sagaflow_sagas gauge\n",
        );
        for state in SagaState::ALL {
            let n = rows
                .iter()
                .find(|r| r.try_get::<String>("", "state").ok().as_deref() == Some(state.as_str()))
                .and_then(|r| r.try_get::<i64>("", "n").ok())
                .unwrap_or(0);
            text.push_str(&format!(
                "sagaflow_sagas{{state=\"{}\"}} {n}\n",
                state.as_str()
            ));
        }
        let health = queue_health(&self.db, &self.thresholds).await?;
        text.push_str(&format!(
            "# HELP sagaflow_outbox_backlog Outbox rows not yet published.\n# TYPE sagaflow_outbox_backlog gauge\n\
             sagaflow_outbox_backlog {}\n\
             # HELP sagaflow_outbox_oldest_age_seconds Age of the oldest unpublished outbox row.\n\
             # TYPE sagaflow_outbox_oldest_age_seconds gauge\n\
             sagaflow_outbox_oldest_age_seconds {}\n\
             # HELP sagaflow_outbox_set_aside Outbox rows Kafka refused for good, set aside in outbox_dead.\n\
             # TYPE sagaflow_outbox_set_aside gauge\n\
             sagaflow_outbox_set_aside {}\n",
            health.outbox.backlog, health.outbox.oldest_age_seconds, health.outbox.set_aside
        ));
        text.push_str(&queue_gauges(&health));
        Ok(text)
    }
}

/// Renders one figure of a table's health as a sample value.
type TableFigure = fn(&TableHealth) -> String;

/// The queue-health gauges (see [`crate::queue_health`]) in the text
/// format: per-table dead tuples, dead ratio and last autovacuum, the
/// oldest open transaction's age and whether it crosses the threshold, and
/// the inbox's size and age. (The outbox's are written with the older
/// outbox gauges.)
fn queue_gauges(h: &QueueHealth) -> String {
    let mut text = String::new();
    let per_table: [(&str, &str, TableFigure); 3] = [
        (
            "sagaflow_table_dead_tuples",
            "Estimated dead tuples not yet vacuumed away, by table (pg_stat_user_tables).",
            |t| t.dead_tuples.to_string(),
        ),
        (
            "sagaflow_table_dead_ratio",
            "Dead / (live + dead) tuples, by table; 0 for an empty table.",
            |t| t.dead_ratio.to_string(),
        ),
        (
            "sagaflow_table_last_autovacuum_timestamp_seconds",
            "Unix time autovacuum last finished on the table; 0 when never.",
            |t| t.last_autovacuum.map_or(0, |v| v.timestamp()).to_string(),
        ),
    ];
    for (name, help, value) in per_table {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for t in &h.tables {
            text.push_str(&format!("{name}{{table=\"{}\"}} {}\n", t.table, value(t)));
        }
    }
    let age = h.oldest_xact.as_ref().map_or(0.0, |x| x.age_seconds);
    let warning = u8::from(h.warnings.iter().any(|w| w.code == "xmin_horizon"));
    text.push_str(&format!(
        "# HELP sagaflow_db_oldest_xact_age_seconds Age of this database's oldest open transaction \
         holding back vacuum (xmin horizon); 0 when none.\n\
         # TYPE sagaflow_db_oldest_xact_age_seconds gauge\n\
         sagaflow_db_oldest_xact_age_seconds {age}\n\
         # HELP sagaflow_db_oldest_xact_warning 1 when the oldest open transaction is older than \
         the warning threshold ({} s), else 0.\n\
         # TYPE sagaflow_db_oldest_xact_warning gauge\n\
         sagaflow_db_oldest_xact_warning {warning}\n\
         # HELP sagaflow_inbox_rows Estimated inbox rows (pg_stat_user_tables).\n\
         # TYPE sagaflow_inbox_rows gauge\n\
         sagaflow_inbox_rows {}\n\
         # HELP sagaflow_inbox_oldest_age_seconds Age of the oldest inbox row; 0 when empty.\n\
         # TYPE sagaflow_inbox_oldest_age_seconds gauge\n\
         sagaflow_inbox_oldest_age_seconds {}\n",
        h.thresholds.xmin_warn_seconds, h.inbox.rows, h.inbox.oldest_age_seconds
    ));
    text
}

#[OpenApi(tag = "ApiTags::Health")]
impl MetricsApi {
    /// Prometheus metrics
    ///
    /// Sagas by state, the outbox backlog and the age of its oldest row,
    /// queue health (dead tuples, dead ratio and last autovacuum of the
    /// saga, outbox and inbox tables; the oldest open transaction's age and
    /// whether it crosses the warning threshold; inbox rows and oldest row
    /// age), all read from the database at scrape time, and this process's step
    /// durations by saga type and step, retries, timeouts, compensations,
    /// finished sagas, consumer lag per topic and partition, claim batch
    /// sizes and HTTP request durations.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self) -> poem::Result<MetricsResponse> {
        let mut text = self.database_gauges().await?;
        if let Some(h) = &self.handle {
            h.run_upkeep();
            text.push_str(&h.render());
        }
        Ok(MetricsResponse::Ok(PlainText(text)))
    }
}

/// Times every request into `sagaflow_http_request_duration_seconds`,
/// labelled by method, route (the path's first segment, so that ids do not
/// explode the label set) and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpTiming;

impl<E: Endpoint> Middleware<E> for HttpTiming {
    type Output = HttpTimingEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        HttpTimingEndpoint { inner: ep }
    }
}

/// The endpoint produced by [`HttpTiming`].
#[derive(Debug)]
pub struct HttpTimingEndpoint<E> {
    inner: E,
}

fn route_of(path: &str) -> &'static str {
    match path.split('/').nth(1).unwrap_or("") {
        "" => "/",
        "accounts" => "/accounts",
        "orders" => "/orders",
        "sagas" => "/sagas",
        "metrics" => "/metrics",
        "queue-health" => "/queue-health",
        "verify" => "/verify",
        "outbox" => "/outbox",
        "healthz" => "/healthz",
        "readyz" => "/readyz",
        "docs" | "openapi.json" => "/docs",
        "ui" => "/ui",
        _ => "other",
    }
}

impl<E: Endpoint> Endpoint for HttpTimingEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let method = req.method().to_string();
        let route = route_of(req.uri().path());
        let started = Instant::now();
        let result = self.inner.call(req).await;
        let status = match &result {
            Ok(_) => None,
            Err(e) => Some(e.status()),
        };
        let response = result.map(IntoResponse::into_response);
        let status = status
            .or_else(|| response.as_ref().ok().map(Response::status))
            .map(|s| s.as_u16().to_string())
            .unwrap_or_default();
        metrics::histogram!(
            "sagaflow_http_request_duration_seconds",
            "method" => method,
            "route" => route,
            "status" => status
        )
        .record(started.elapsed().as_secs_f64());
        response
    }
}
