//! Errors at the crate boundary and their RFC 9457 `application/problem+json`
//! form.
//!
//! Every 4xx and 5xx response of the API is a [`Problem`]. Handlers fail with
//! an [`ApiError`]; poem's own errors (unknown route, wrong method, bad
//! content type, ...) are turned into problems by [`ProblemLayer`], which
//! wraps the whole application.

use std::fmt;

use poem::http::{header, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::Object;

/// The media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One field of a request that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct FieldError {
    /// The offending field: a JSON member of the body (e.g. `amount`), a path
    /// parameter (e.g. `user_id`) or a header (e.g. `Idempotency-Key`).
    pub field: String,
    /// Why the value was refused, in words a person can act on.
    pub reason: String,
}

impl FieldError {
    /// A refusal of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

/// Every way the API can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be read at all (malformed JSON, empty body, ...).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed request whose fields were refused.
    #[error("invalid request: {}", join(.0))]
    Validation(Vec<FieldError>),
    /// An operator call without the right bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The addressed resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (duplicate account,
    /// idempotency key reused for another request, ...).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A database call failed. Its text goes to the log only.
    #[error("database error: {0}")]
    Database(sea_orm::DbErr),
    /// The database could not answer now (down, out of connections, too
    /// slow, or a lock held too long) and did nothing of the request
    /// (`sagaflow_entity::is_unavailable`): the same request may succeed
    /// in a moment. A connection lost mid-request, whose outcome is
    /// unknown, is a [`ApiError::Database`] instead. Its text goes to the
    /// log only.
    #[error("database unavailable: {0}")]
    Unavailable(sea_orm::DbErr),
    /// A bug or an impossible state. Its text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if sagaflow_entity::is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

/// Seconds a client is asked to wait (`Retry-After`) before it repeats a
/// request the database could not answer: connection trouble and lock
/// waits mostly clear within a second or two, and an earlier retry only
/// adds load to a server that is struggling.
pub const RETRY_AFTER_SECS: u32 = 1;

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// A validation error about a single field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, reason)])
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Bind { .. } | Self::Database(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The problem document sent to the client. Server-side failures are
    /// logged here with a fresh correlation id, and only that id is sent.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::BadRequest(detail) => {
                Problem::new("bad-request", StatusCode::BAD_REQUEST, detail.clone())
            }
            Self::Validation(errors) => Problem::validation(errors.clone()),
            Self::Unauthorized(detail) => {
                Problem::new("unauthorized", StatusCode::UNAUTHORIZED, detail.clone())
            }
            Self::NotFound(detail) => {
                Problem::new("not-found", StatusCode::NOT_FOUND, detail.clone())
            }
            Self::Conflict(detail) => {
                Problem::new("conflict", StatusCode::CONFLICT, detail.clone())
            }
            Self::PayloadTooLarge { .. } => Problem::new(
                "payload-too-large",
                StatusCode::PAYLOAD_TOO_LARGE,
                self.to_string(),
            ),
            Self::Unavailable(_) => Problem::unavailable(self),
            Self::Bind { .. } | Self::Database(_) | Self::Internal(_) => Problem::internal(self),
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        let mut response = ProblemJson(self.to_problem()).into_response();
        match self {
            Self::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    poem::http::HeaderValue::from_static("Bearer realm=\"sagaflow operator\""),
                );
            }
            Self::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
            }
            _ => {}
        }
        response
    }
}

/// An RFC 9457 problem document, sent as `application/problem+json` with
/// every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct Problem {
    /// A URI identifying the kind of problem, e.g.
    /// `urn:sagaflow:problem:validation`. Stable: clients may branch on it.
    #[oai(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem (the HTTP reason phrase).
    pub title: String,
    /// The HTTP status code, repeated for convenience.
    pub status: u16,
    /// What went wrong with this request, for a person to read.
    pub detail: String,
    /// For validation problems: each refused field and why.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldError>>,
    /// For server errors: quote this id when reporting the problem; the
    /// server's log holds the details under it.
    #[oai(skip_serializing_if_is_none)]
    pub correlation_id: Option<String>,
}

impl Problem {
    /// A problem of kind `slug` (becomes `urn:sagaflow:problem:{slug}`).
    pub fn new(slug: &str, status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:sagaflow:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
            correlation_id: None,
        }
    }

    /// A 422 naming every refused field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("the request was refused: {one}"),
            _ => format!("the request was refused: {}", join(&errors)),
        };
        Self {
            errors: Some(errors),
            ..Self::new("validation", StatusCode::UNPROCESSABLE_ENTITY, detail)
        }
    }

    /// A 500 with a new correlation id; `cause` is logged under that id and
    /// never sent.
    pub fn internal(cause: &dyn fmt::Display) -> Self {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        tracing::error!(correlation_id = %correlation_id, error = %cause, "request failed");
        Self::correlated(
            "internal",
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server failed to handle the request; quote correlation id {correlation_id} when reporting it"),
            correlation_id,
        )
    }

    /// A 503 for a request the database could not answer now, with a new
    /// correlation id; `cause` is logged (as a warning: the fault is the
    /// database's, and `/readyz` and the server log say more) under that
    /// id and never sent.
    pub fn unavailable(cause: &dyn fmt::Display) -> Self {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        tracing::warn!(correlation_id = %correlation_id, error = %cause, "database unavailable");
        Self::correlated(
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the database is unavailable or too busy to answer; retry in \
                 {RETRY_AFTER_SECS} s (correlation id {correlation_id})"
            ),
            correlation_id,
        )
    }

    fn correlated(slug: &str, status: StatusCode, detail: String, correlation_id: String) -> Self {
        Self {
            correlation_id: Some(correlation_id),
            ..Self::new(slug, status, detail)
        }
    }
}

/// A [`Problem`] as an `application/problem+json` payload.
#[derive(Debug, Clone)]
pub struct ProblemJson(pub Problem);

impl From<ApiError> for ProblemJson {
    fn from(err: ApiError) -> Self {
        Self(err.to_problem())
    }
}

impl Payload for ProblemJson {
    const CONTENT_TYPE: &'static str = PROBLEM_CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        Problem::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

impl IntoResponse for ProblemJson {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Response::builder()
            .status(status)
            .content_type(PROBLEM_CONTENT_TYPE)
            .body(self.0.to_json_string())
    }
}

/// Middleware that makes every error leave as `application/problem+json`:
/// `Err`s of the inner endpoint (poem's and ours) are converted, and any
/// 4xx/5xx response that is not JSON is rewritten.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemLayer;

impl<E: Endpoint> Middleware<E> for ProblemLayer {
    type Output = ProblemEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ProblemEndpoint { inner: ep }
    }
}

/// The endpoint produced by [`ProblemLayer`].
#[derive(Debug)]
pub struct ProblemEndpoint<E> {
    inner: E,
}

impl<E: Endpoint> Endpoint for ProblemEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let resp = match self.inner.call(req).await {
            Ok(resp) => resp.into_response(),
            Err(err) => problem_from_poem_error(err, &method, &path),
        };
        Ok(ensure_problem(resp).await)
    }
}

/// Converts any poem error into a problem response.
fn problem_from_poem_error(err: poem::Error, method: &poem::http::Method, path: &str) -> Response {
    use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError};
    use poem_openapi::error::{ContentTypeError, ParseParamError, ParseRequestPayloadError};

    let status = err.status();
    if err.is::<ApiError>() || !(status.is_client_error() || status.is_server_error()) {
        return err.into_response();
    }
    let problem = if let Some(e) = err.downcast_ref::<ParseParamError>() {
        Problem::validation(vec![FieldError::new(e.name, e.reason.clone())])
    } else if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        Problem::new(
            "bad-request",
            StatusCode::BAD_REQUEST,
            format!("the request body could not be parsed: {}", e.reason),
        )
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        let detail = match e {
            ContentTypeError::NotSupported { content_type } => {
                format!("Content-Type `{content_type}` is not supported; send the body as `application/json`")
            }
            ContentTypeError::ExpectContentType => {
                "the request has no Content-Type header; send the body as `application/json`"
                    .to_owned()
            }
        };
        Problem::new(
            "unsupported-media-type",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            detail,
        )
    } else if err.is::<NotFoundError>() {
        Problem::new(
            "not-found",
            StatusCode::NOT_FOUND,
            format!("there is no resource at {path}"),
        )
    } else if err.is::<MethodNotAllowedError>() {
        Problem::new(
            "method-not-allowed",
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )
    } else if let Some(ReadBodyError::PayloadTooLarge) = err.downcast_ref::<ReadBodyError>() {
        Problem::new(
            "payload-too-large",
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        )
    } else {
        if status.is_server_error() {
            Problem::internal(&err)
        } else {
            Problem::new("http", status, err.to_string())
        }
    };
    ProblemJson(problem).into_response()
}

/// Rewrites a 4xx/5xx response whose body is not JSON into a problem.
async fn ensure_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .map(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == PROBLEM_CONTENT_TYPE || ct == "application/json"
        })
        .unwrap_or(false);
    if is_json {
        return resp;
    }
    let problem = if status.is_server_error() {
        Problem::internal(&format_args!("{status} response without a problem body"))
    } else {
        let text = resp.into_body().into_string().await.unwrap_or_default();
        let detail = if text.is_empty() || text.len() > 500 {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        Problem::new("http", status, detail)
    };
    ProblemJson(problem).into_response()
}
