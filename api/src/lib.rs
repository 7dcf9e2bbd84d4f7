//! sagaflow's HTTP API: accounts, deposits, orders (each order starts an
//! order-payment saga), health and readiness, the OpenAPI spec at
//! `/openapi.json`, Swagger UI at `/docs` and a start page at `/`.
//!
//! Every error leaves as RFC 9457 `application/problem+json` (see
//! [`error`]); money is `rust_decimal` end to end and is always answered
//! with exactly two decimal places.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use poem::endpoint::BoxEndpoint;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Route, Server};
use poem_openapi::{OpenApiService, Tags};
use sea_orm::DatabaseConnection;

pub mod accounts;
pub mod body;
pub mod bulk;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod metrics;
pub mod orders;
pub mod outbox;
pub mod params;
pub mod placer;
pub mod queue_health;
pub mod sagas;
pub mod spec;
pub mod verify;

pub use error::{ApiError, FieldError, Problem};

/// How long a graceful shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The API's settings.
#[derive(Clone)]
pub struct ApiConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Order-insert statements in flight at once (`SAGAFLOW_ORDER_LANES`).
    pub order_lanes: usize,
    /// The pool orders are placed through; the API's own pool when absent.
    /// `sagaflow` passes its engine pool, where Postgres plans the
    /// placement statement once per connection instead of at every call.
    pub placement_db: Option<DatabaseConnection>,
    /// Bearer token for operator calls; `None` leaves them open (the
    /// binary allows that only with its explicit insecure development
    /// flag). Never printed: the `Debug` output shows `[redacted]`.
    pub admin_token: Option<String>,
    /// The process's metrics recorder, rendered by `GET /metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The saga definitions the workers run (for step names, and to start
    /// an order's saga as they would); the built-in ones when absent.
    pub registry: Option<Arc<sagaflow_workflows::Registry>>,
    /// Where the API announces the sagas it started or made due, so that
    /// workers take them at once rather than at their next poll.
    pub announcer: sagaflow_entity::wake::Announcer,
    /// The topics the workers use: an order's saga sends its first command
    /// from the transaction that places the order, so an API process must
    /// be given the workers' prefix (and `registry` their tuning).
    pub topics: sagaflow_workflows::messages::Topics,
    /// When `/queue-health`, `/metrics` and the dashboard warn; `sagaflow`
    /// passes the ones `sagaflow doctor` uses, from its configuration.
    pub health_thresholds: queue_health::Thresholds,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            order_lanes: 1,
            placement_db: None,
            admin_token: None,
            metrics: None,
            registry: None,
            announcer: sagaflow_entity::wake::Announcer::default(),
            topics: sagaflow_workflows::messages::Topics::with_prefix(""),
            health_thresholds: queue_health::Thresholds::default(),
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("order_lanes", &self.order_lanes)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Tells `/readyz` whether Kafka is usable. Implemented by the binary (the
/// API itself never talks to Kafka).
pub trait ReadinessProbe: Send + Sync + 'static {
    /// `true` when the Kafka client can reach the brokers. `/readyz` waits
    /// at most [`health::PROBE_TIMEOUT`] for the answer.
    fn kafka_ready(&self) -> BoxFuture<'_, bool>;
}

/// Groups of operations in the OpenAPI document.
#[derive(Debug, Tags)]
pub enum ApiTags {
    /// Funds accounts: create, read, deposit.
    Accounts,
    /// Orders: create (starts the payment saga) and read.
    Orders,
    /// Sagas: list, read, counts, and the operator's retry and cancel.
    Sagas,
    /// Outbox messages Kafka refused for good and the relay set aside:
    /// list and requeue.
    Outbox,
    /// Liveness and readiness for orchestrators and load balancers.
    Health,
}

/// The whole HTTP application: API, spec, Swagger UI and start page, with
/// the body limit and problem+json errors applied to every route.
pub fn app(
    db: DatabaseConnection,
    probe: Arc<dyn ReadinessProbe>,
    cfg: ApiConfig,
) -> BoxEndpoint<'static> {
    let operator = sagas::Operator::new(cfg.admin_token.as_deref());
    let registry = cfg
        .registry
        .clone()
        .unwrap_or_else(|| Arc::new(sagaflow_workflows::Registry::builtin()));
    let service = OpenApiService::new(
        (
            accounts::AccountsApi::new(db.clone()),
            orders::OrdersApi::new(
                db.clone(),
                cfg.placement_db.clone().unwrap_or_else(|| db.clone()),
                cfg.announcer.clone(),
                placer::SagaStart::new(Arc::clone(&registry), cfg.topics.clone()),
                cfg.order_lanes,
            ),
            sagas::SagasApi::new(db.clone(), operator.clone(), registry)
            .announcing(cfg.announcer.clone()),
            verify::VerifyApi::new(db.clone(), operator.clone()),
            outbox::OutboxApi::new(db.clone(), operator.clone()),
            queue_health::QueueHealthApi::new(db.clone(), operator, cfg.health_thresholds.clone()),
            metrics::MetricsApi::new(db.clone(), cfg.metrics.clone(), cfg.health_thresholds),
            health::HealthApi::new(db, probe),
        ),
        "sagaflow",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Durable order-and-payment sagas on PostgreSQL and Apache Kafka. Create a funds account, \
         deposit money, then place orders: each order starts a saga that debits the buyer's \
         account and marks the order PAID (or FAILED, with any debit refunded).\n\n\
         Money is always a decimal string with at most two decimal places (e.g. \"19.99\") and is \
         answered with exactly two. Every error is an RFC 9457 `application/problem+json` document.",
    );
    let mut doc = spec::close_request_bodies(&service.spec());
    spec::document_unavailable(&mut doc);
    let allowed = spec::AllowedMethods::from_spec(&doc);
    let spec_json = doc.to_string();
    let spec_endpoint = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(spec_json.clone())
    });
    let docs = service.swagger_ui();
    Route::new()
        .at("/openapi.json", spec_endpoint)
        .nest("/docs", docs)
        .nest("/ui", dashboard::assets())
        .nest("/", service)
        .with(body::BodyLimit::new(cfg.body_limit_bytes))
        .with(error::ProblemLayer)
        .with(allowed)
        .with(metrics::HttpTiming)
        .boxed()
}

/// Binds `addr` (e.g. `"127.0.0.1:0"`), and returns the bound address and a
/// future that serves `app` until `shutdown` resolves (then waits up to
/// [`SHUTDOWN_GRACE`] for requests in flight).
pub async fn serve(
    addr: &str,
    app: BoxEndpoint<'static>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, BoxFuture<'static, std::io::Result<()>>), ApiError> {
    let bind_error = |source| ApiError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let acceptor = TcpListener::bind(addr.to_owned())
        .into_acceptor()
        .await
        .map_err(bind_error)?;
    let local = acceptor
        .local_addr()
        .iter()
        .find_map(|a| a.as_socket_addr().copied())
        .ok_or_else(|| bind_error(std::io::Error::other("the listener has no socket address")))?;
    let server = Server::new_with_acceptor(acceptor);
    let fut = async move {
        server
            .run_with_graceful_shutdown(app, shutdown, Some(SHUTDOWN_GRACE))
            .await
    };
    Ok((local, Box::pin(fut)))
}

/// An entity timestamp as UTC, as every response shows it.
pub(crate) fn utc(t: sea_orm::prelude::DateTimeWithTimeZone) -> chrono::DateTime<chrono::Utc> {
    t.with_timezone(&chrono::Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_admin_token() {
        let cfg = ApiConfig {
            admin_token: Some("hunter2".to_owned()),
            ..ApiConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert_eq!(cfg.body_limit_bytes, 65_536);
    }

    #[test]
    fn json_bodies_name_every_refused_field() {
        use body::parse_json_body;
        use orders::NewOrder;
        let fields = |body: &str| match parse_json_body::<NewOrder>(body.as_bytes()) {
            Err(ApiError::Validation(errors)) => {
                errors.into_iter().map(|e| e.field).collect::<Vec<_>>()
            }
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(
            fields(r#"{"user_id": "x", "amount": 1.5, "extra": 1}"#),
            ["user_id", "amount", "extra"]
        );
        assert_eq!(fields(r#"{}"#), ["user_id", "amount"]);
        assert!(matches!(
            parse_json_body::<NewOrder>(b" "),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json_body::<NewOrder>(b"{"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json_body::<NewOrder>(b"null"),
            Err(ApiError::BadRequest(_))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse_json_body::<NewOrder>(deep.as_bytes()),
            Err(ApiError::BadRequest(_))
        ));
        let ok = parse_json_body::<NewOrder>(br#"{"user_id": 3, "amount": "7.5"}"#).expect("valid");
        assert_eq!((ok.user_id, ok.amount.to_string()), (3, "7.50".to_owned()));
    }
}
