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
