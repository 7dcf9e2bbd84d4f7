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
use crate::ApiTags;

/// The `/metrics` operation.
#[derive(Clone)]
pub struct MetricsApi {
    db: DatabaseConnection,
    handle: Option<PrometheusHandle>,
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
    /// database gauges, written by hand).
    pub fn new(db: DatabaseConnection, handle: Option<PrometheusHandle>) -> Self {
        Self { db, handle }
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
        let outbox = self
            .db
            .query_one(Statement::from_string(
                pg,
                "SELECT count(*)::bigint AS n, \
                        COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age \
                 FROM outbox",
            ))
            .await?;
        let (n, age) = outbox
            .map(|r| {
                (
                    r.try_get("", "n").unwrap_or(0_i64),
                    r.try_get("", "age").unwrap_or(0.0_f64),
                )
            })
            .unwrap_or_default();
        text.push_str(&format!(
            "# HELP sagaflow_outbox_backlog Outbox rows not yet published.\n# TYPE sagaflow_outbox_backlog gauge\n\
             sagaflow_outbox_backlog {n}\n\
             # HELP sagaflow_outbox_oldest_age_seconds Age of the oldest unpublished outbox row.\n\
             # TYPE sagaflow_outbox_oldest_age_seconds gauge\n\
             sagaflow_outbox_oldest_age_seconds {age}\n"
        ));
        Ok(text)
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl MetricsApi {
    /// Prometheus metrics
    ///
    /// Sagas by state, the outbox backlog and the age of its oldest row
    /// (read from the database at scrape time), and this process's step
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
