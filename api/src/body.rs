//! Reading request bodies: a size limit that holds with or without
//! `Content-Length`, and a JSON payload that names the offending field when
//! the body is refused (poem-openapi's own `Json<T>` reports only the type
//! that failed to parse, e.g. `failed to parse "CreateOrder"`).

use poem::web::headers::{ContentLength, HeaderMapExt};
use poem::{Endpoint, IntoResponse, Middleware, Request, RequestBody, Response};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use rust_decimal::Decimal;
use sagaflow_workflows::money::parse_amount;
use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError};

/// Middleware refusing bodies above `limit` bytes with 413. A declared
/// `Content-Length` above the limit is refused before reading; a body without
/// one (chunked) is read at most `limit + 1` bytes far.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    limit: usize,
}

impl BodyLimit {
    /// A limit of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            limit: self.limit,
        }
    }
}

/// The endpoint produced by [`BodyLimit`].
#[derive(Debug)]
pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let too_large = || ApiError::PayloadTooLarge { limit: self.limit };
        if let Some(ContentLength(len)) = req.headers().typed_get::<ContentLength>() {
            if usize::try_from(len).map_or(true, |len| len > self.limit) {
                return Err(too_large().into());
            }
        }
        let bytes =
            req.take_body()
                .into_bytes_limit(self.limit)
                .await
                .map_err(|err| match err {
                    poem::error::ReadBodyError::PayloadTooLarge => too_large(),
                    other => {
                        ApiError::BadRequest(format!("the request body could not be read: {other}"))
                    }
                })?;
        req.set_body(bytes);
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

/// A request type read from a JSON object, with every refused field named.
pub trait FromJsonObject: Sized + Send {
    /// The OpenAPI schema documenting the body.
    type Schema: Type;

    /// Reads and validates the object's members.
    fn from_object(fields: &mut Fields<'_>) -> Option<Self>;
}

/// A JSON request body of type `T`. Refusals: empty or malformed JSON, or a
/// body that is not an object → 400; missing, unknown or ill-typed members
/// and invalid values → 422 with each field named.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: FromJsonObject> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::Schema::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::Schema::register(registry);
    }
}

impl<T: FromJsonObject> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = body.take()?.into_vec().await?;
        Ok(Self(parse_json_body(&bytes)?))
    }
}

poem_openapi::impl_apirequest_for_payload!(JsonBody<T>, T: FromJsonObject);

/// Why text with a NUL character is refused: PostgreSQL cannot store it.
pub const NUL_REASON: &str = "must not contain NUL characters (U+0000)";

/// Refuses a text parameter holding a NUL character (PostgreSQL cannot
/// store or compare it) with a 422 naming `name`.
pub fn refuse_nul(name: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::field(name, NUL_REASON));
    }
    Ok(())
}

/// Parses `bytes` as a JSON object and reads a `T` from it.
pub fn parse_json_body<T: FromJsonObject>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "the request body is empty; send a JSON object".to_owned(),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|err| {
        ApiError::BadRequest(format!("the request body is not valid JSON: {err}"))
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::BadRequest(format!(
            "the request body must be a JSON object, not {}",
            kind_of(&value)
        )));
    };
    let mut fields = Fields {
        map: &map,
        seen: Vec::new(),
        errors: Vec::new(),
    };
    let parsed = T::from_object(&mut fields);
    for name in map.keys() {
        if !fields.seen.contains(&name.as_str()) {
            fields
                .errors
                .push(FieldError::new(name.clone(), "is not a known field"));
        }
    }
    match parsed {
        Some(value) if fields.errors.is_empty() => Ok(value),
        _ if fields.errors.is_empty() => Err(ApiError::Internal(
            "request parser failed without a reason".to_owned(),
        )),
        _ => Err(ApiError::Validation(fields.errors)),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The members of a JSON object being read; collects a [`FieldError`] for
/// each refused member.
#[derive(Debug)]
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// Records a refusal of `field`.
    pub fn refuse(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError::new(field, reason));
    }

    fn required(&mut self, name: &'static str) -> Option<&'a Value> {
        self.seen.push(name);
        match self.map.get(name) {
            None | Some(Value::Null) => {
                self.refuse(name, "is required");
                None
            }
            Some(value) => Some(value),
        }
    }

    /// A required member holding an integer that fits in an `i64`.
    pub fn int64(&mut self, name: &'static str) -> Option<i64> {
        let value = self.required(name)?;
        if let Some(n) = value.as_i64() {
            return Some(n);
        }
        let reason = match value {
            Value::Number(n) if n.is_u64() => "must be at most 9223372036854775807".to_owned(),
            Value::Number(_) => "must be a whole number (no fraction or exponent)".to_owned(),
            other => format!("must be an integer, not {}", kind_of(other)),
        };
        self.refuse(name, reason);
        None
    }

    /// A required member holding a string of 1 to `max` characters that is
    /// not blank.
    pub fn text(&mut self, name: &'static str, max: usize) -> Option<String> {
        let reason = match self.required(name)? {
            Value::String(s) if s.trim().is_empty() => "must not be blank".to_owned(),
            Value::String(s) if s.contains('\0') => NUL_REASON.to_owned(),
            Value::String(s) if s.chars().count() > max => {
                format!("must be at most {max} characters long")
            }
            Value::String(s) => return Some(s.clone()),
            other => format!("must be a string, not {}", kind_of(other)),
        };
        self.refuse(name, reason);
        None
    }

    /// A required member holding an amount of money as a decimal string,
    /// checked by [`parse_amount`]. JSON numbers are refused: their text is
    /// lost once parsed, and a binary float could round the amount.
    pub fn amount(&mut self, name: &'static str) -> Option<Decimal> {
        let reason = match self.required(name)? {
            Value::String(s) => match parse_amount(s) {
                Ok(amount) => return Some(amount),
                Err(err) => err.to_string(),
            },
            Value::Number(_) => {
                "must be a JSON string such as \"19.99\", not a JSON number (numbers are refused so that no amount is ever rounded)".to_owned()
            }
            other => format!("must be a string such as \"19.99\", not {}", kind_of(other)),
        };
        self.refuse(name, reason);
        None
    }
}

/// Body of requests that only carry a reason (a refund, an operator's
/// retry or cancel).
#[derive(Debug, Clone, poem_openapi::Object)]
pub struct ReasonRequest {
    /// Why (1-500 characters, not blank, no NUL); kept in the saga's
    /// history (and, for a refund, sent with `OrderRefunded`).
    // The pattern states what `Fields::text` checks: no NUL, and at least
    // one character outside Unicode's White_Space (what `str::trim` strips).
    #[oai(validator(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000]*[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    ))]
    pub reason: String,
}

/// A validated [`ReasonRequest`].
#[derive(Debug, Clone)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

impl FromJsonObject for Reason {
    type Schema = ReasonRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        Some(Self {
            reason: fields.text("reason", 500)?,
        })
    }
}

/// Who an operator action is recorded as when the body names no `actor`.
pub const DEFAULT_ACTOR: &str = "operator";

impl Fields<'_> {
    /// An optional member: absent or `null` gives `None` (and no error).
    fn optional(&mut self, name: &'static str) -> bool {
        self.seen.push(name);
        !matches!(self.map.get(name), None | Some(Value::Null))
    }

    /// An optional [`Fields::text`] member.
    pub fn optional_text(&mut self, name: &'static str, max: usize) -> Option<Option<String>> {
        if !self.optional(name) {
            return Some(None);
        }
        self.text(name, max).map(Some)
    }

    /// An optional [`Fields::choice`] member.
    pub fn optional_choice<T: sagaflow_entity::StateValues + Copy>(
        &mut self,
        name: &'static str,
    ) -> Option<Option<T>> {
        if !self.optional(name) {
            return Some(None);
        }
        self.choice(name).map(Some)
    }

    /// A required member holding one of `T`'s values.
    pub fn choice<T: sagaflow_entity::StateValues + Copy>(
        &mut self,
        name: &'static str,
    ) -> Option<T> {
        let value = self.required(name)?;
        if let Some(v) = value
            .as_str()
            .and_then(|s| T::ALL.iter().find(|v| v.as_str() == s))
        {
            return Some(*v);
        }
        let values: Vec<&str> = T::ALL.iter().map(|v| v.as_str()).collect();
        self.refuse(name, format!("must be one of {}", values.join(", ")));
        None
    }

    /// An optional member holding `true` or `false`.
    pub fn optional_bool(&mut self, name: &'static str) -> Option<Option<bool>> {
        if !self.optional(name) {
            return Some(None);
        }
        match self.map.get(name) {
            Some(Value::Bool(b)) => Some(Some(*b)),
            Some(other) => {
                let reason = format!("must be true or false, not {}", kind_of(other));
                self.refuse(name, reason);
                None
            }
            None => Some(None),
        }
    }

    /// An optional member holding an integer from 0 to `i64::MAX`.
    pub fn optional_count(&mut self, name: &'static str) -> Option<Option<i64>> {
        if !self.optional(name) {
            return Some(None);
        }
        let n = self.int64(name)?;
        if n < 0 {
            self.refuse(name, "must not be negative");
            return None;
        }
        Some(Some(n))
    }

    /// An optional member holding an RFC 3339 time.
    pub fn optional_time(
        &mut self,
        name: &'static str,
    ) -> Option<Option<chrono::DateTime<chrono::Utc>>> {
        if !self.optional(name) {
            return Some(None);
        }
        let reason = match self.map.get(name) {
            Some(Value::String(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => return Some(Some(t.with_timezone(&chrono::Utc))),
                Err(_) => "must be an RFC 3339 time, e.g. 2026-11-25T08:00:00Z".to_owned(),
            },
            Some(other) => format!("must be an RFC 3339 time string, not {}", kind_of(other)),
            None => return Some(None),
        };
        self.refuse(name, reason);
        None
    }
}

/// Body of an operator's action on one saga (retry, cancel, force
/// forward): a [`ReasonRequest`] and who asks.
#[derive(Debug, Clone, poem_openapi::Object)]
pub struct ActionRequest {
    /// Why; kept in the saga's history.
    #[oai(flatten)]
    pub reason: ReasonRequest,
    /// Who asks (1-100 characters, not blank, no NUL), recorded as the
    /// history row's actor; `operator` when absent. The admin token is
    /// shared, so this is what tells operators apart in the audit trail.
    #[oai(validator(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000]*[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    ))]
    #[oai(nullable)]
    pub actor: Option<String>,
}

/// A validated [`ActionRequest`].
#[derive(Debug, Clone)]
pub struct Action {
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

impl Action {
    /// Reads `reason` and `actor`; both are checked (and refused) even
    /// when the other is bad.
    fn read(fields: &mut Fields<'_>) -> Option<Self> {
        let reason = fields.text("reason", 500);
        let actor = fields.optional_text("actor", 100);
        Some(Self {
            reason: reason?,
            actor: actor?.unwrap_or_else(|| DEFAULT_ACTOR.to_owned()),
        })
    }
}

impl FromJsonObject for Action {
    type Schema = ActionRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        Self::read(fields)
    }
}

/// Body of `POST /sagas/{id}/resolve`: an [`ActionRequest`] and the money
/// effect asserted.
#[derive(Debug, Clone, poem_openapi::Object)]
pub struct ResolveRequest {
    /// What was done outside the system and why, and who resolves it.
    #[oai(flatten)]
    pub action: ActionRequest,
    /// The money effect the operator asserts: `NONE` (the saga's ledger
    /// entries net to zero; the order becomes FAILED), `APPLIED` (the
    /// movement stands and the order becomes PAID, or REFUNDED for a
    /// refund saga), `SETTLED_OUTSIDE` (the movement stays in the ledger
    /// but was settled outside sagaflow; the order becomes FAILED).
    /// `sagaflow verify` holds the ledger to it.
    #[oai(validator(pattern = "^(NONE|APPLIED|SETTLED_OUTSIDE)$"))]
    pub resolution: String,
}

/// A validated [`ResolveRequest`].
#[derive(Debug, Clone)]
pub struct Resolve {
    /// The action's reason and actor.
    pub action: Action,
    /// The asserted money effect.
    pub resolution: sagaflow_entity::Resolution,
}

impl FromJsonObject for Resolve {
    type Schema = ResolveRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        let action = Action::read(fields);
        let resolution = fields.choice("resolution");
        Some(Self {
            action: action?,
            resolution: resolution?,
        })
    }
}

/// Body of `POST /sagas/bulk`: an operator action over every saga a filter
/// matches. A dry run (the default) only counts; the real run must quote
/// the count it expects, so that it acts on what the operator saw.
#[derive(Debug, Clone, poem_openapi::Object)]
pub struct BulkRequest {
    /// The action: `RETRY`, `FORCE_FORWARD`, `RESOLVE` or `CANCEL`.
    #[oai(validator(pattern = "^(CANCEL|RETRY|FORCE_FORWARD|RESOLVE)$"))]
    pub action: String,
    /// Why (kept in each saga's history), and who acts.
    #[oai(flatten)]
    pub request: ActionRequest,
    /// For `RESOLVE` (and only for it): the asserted money effect, as in
    /// `POST /sagas/{id}/resolve`.
    #[oai(validator(pattern = "^(NONE|APPLIED|SETTLED_OUTSIDE)$"))]
    #[oai(nullable)]
    pub resolution: Option<String>,
    /// Only sagas in this state.
    #[oai(validator(
        pattern = "^(RUNNING|WAITING|COMPENSATING|COMPLETED|COMPENSATED|FAILED|CANCELLED|RESOLVED)$"
    ))]
    #[oai(nullable)]
    pub state: Option<String>,
    /// Only sagas of this type.
    #[oai(
        rename = "type",
        validator(max_length = 200, pattern = r"^[^\u0000]*$")
    )]
    #[oai(nullable)]
    pub saga_type: Option<String>,
    /// Only sagas at this step (the failing step, for FAILED ones).
    #[oai(validator(minimum(value = "0"), maximum(value = "2147483647")))]
    #[oai(nullable)]
    pub step: Option<i64>,
    /// Only sagas whose last error contains this text (case-insensitive).
    #[oai(validator(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$"))]
    #[oai(nullable)]
    pub error_contains: Option<String>,
    /// Only sagas created at or after this time.
    #[oai(nullable)]
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only sagas created before this time.
    #[oai(nullable)]
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Count only (default `true`).
    #[oai(nullable)]
    pub dry_run: Option<bool>,
    /// Required when `dry_run` is `false`: how many sagas the operator
    /// expects the action to apply to (the dry run's `applicable`). If the
    /// filter matches a different number by then, nothing is done and the
    /// answer is 409.
    #[oai(validator(minimum(value = "0")))]
    #[oai(nullable)]
    pub expected_count: Option<i64>,
}

/// Which sagas a bulk action looks at.
#[derive(Debug, Clone, Default)]
pub struct BulkFilter {
    /// State.
    pub state: Option<sagaflow_entity::SagaState>,
    /// Saga type.
    pub saga_type: Option<String>,
    /// Current step.
    pub step: Option<i32>,
    /// Substring of the last error.
    pub error_contains: Option<String>,
    /// Created at or after.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// A validated [`BulkRequest`].
#[derive(Debug, Clone)]
pub struct Bulk {
    /// What to file on each saga.
    pub request: sagaflow_entity::OperatorRequest,
    /// Reason and actor.
    pub action: Action,
    /// For a resolve: the asserted money effect.
    pub resolution: Option<sagaflow_entity::Resolution>,
    /// Which sagas.
    pub filter: BulkFilter,
    /// Count only.
    pub dry_run: bool,
    /// The count the operator confirmed.
    pub expected_count: Option<i64>,
}

impl FromJsonObject for Bulk {
    type Schema = BulkRequest;

    fn from_object(fields: &mut Fields<'_>) -> Option<Self> {
        use sagaflow_entity::{OperatorRequest, Resolution, SagaState};
        let request = fields.choice::<OperatorRequest>("action");
        let action = Action::read(fields);
        let resolution = fields.optional_choice::<Resolution>("resolution");
        let state = fields.optional_choice::<SagaState>("state");
        let saga_type = fields.optional_text("type", 200);
        let step = if fields.optional("step") {
            match fields.int64("step").map(i32::try_from) {
                Some(Ok(n)) if n >= 0 => Some(Some(n)),
                Some(_) => {
                    fields.refuse("step", "must be an integer from 0 to 2147483647");
                    None
                }
                None => None,
            }
        } else {
            Some(None)
        };
        let error_contains = fields.optional_text("error_contains", 200);
        let created_after = fields.optional_time("created_after");
        let created_before = fields.optional_time("created_before");
        let dry_run = fields.optional_bool("dry_run");
        let expected_count = fields.optional_count("expected_count");
        let (request, resolution, dry_run, expected_count) = (
            request?,
            resolution?,
            dry_run?.unwrap_or(true),
            expected_count?,
        );
        match (request, resolution) {
            (OperatorRequest::Resolve, None) => {
                fields.refuse("resolution", "is required when action is RESOLVE");
                return None;
            }
            (OperatorRequest::Resolve, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                fields.refuse("resolution", "is only for action RESOLVE");
                return None;
            }
        }
        if !dry_run && expected_count.is_none() {
            fields.refuse(
                "expected_count",
                "is required when dry_run is false: run a dry run first and pass its applicable count",
            );
            return None;
        }
        Some(Self {
            request,
            action: action?,
            resolution,
            filter: BulkFilter {
                state: state?,
                saga_type: saga_type?,
                step: step?,
                error_contains: error_contains?,
                created_after: created_after?,
                created_before: created_before?,
            },
            dry_run,
            expected_count,
        })
    }
}
