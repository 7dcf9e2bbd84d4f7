//! Parameters read leniently so that a bad value is refused with a 422
//! naming the parameter, while the OpenAPI document still states exactly
//! what is accepted (type, format, enum, range, length, pattern).
//!
//! poem-openapi's typed parameters (`Path<i64>`, `Query<Uuid>`, ...) refuse
//! a bad value with a 400 that names the parameter by its internal name
//! (`param0`), and a plain `String` parameter documents a bare string, so a
//! client (or schemathesis) reading the spec would expect values the server
//! refuses. [`Raw`] takes the text and documents the schema of its [`Doc`].

use std::borrow::Cow;
use std::marker::PhantomData;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};
use sagaflow_entity::{SagaState, StateValues};
use serde_json::Value;

use crate::error::ApiError;

/// What a [`Raw`] parameter documents.
pub trait Doc: Send + Sync + 'static {
    /// The schema's name in poem-openapi's registry (never registered as a
    /// component; schemas are inlined).
    const NAME: &'static str;
    /// The schema the parameter accepts.
    fn schema() -> MetaSchema;
}

/// A parameter taken as its raw text, documented as `D` says; the handler
/// checks it and answers a 422 naming it.
#[derive(Debug)]
pub struct Raw<D>(pub String, PhantomData<D>);

impl<D> Raw<D> {
    /// The raw text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text of an optional parameter, if it was sent (even empty:
    /// its schema decides whether that is acceptable).
    pub fn given(param: Option<Self>) -> Option<String> {
        param.map(|p| p.0)
    }
}

impl<D: Doc> Type for Raw<D> {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        Cow::Borrowed(D::NAME)
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(D::schema()))
    }

    fn register(_registry: &mut Registry) {}

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl<D: Doc> ParseFromParameter for Raw<D> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned(), PhantomData))
    }
}

/// A user id: an `int64` from 1.
#[derive(Debug)]
pub struct UserId;

impl Doc for UserId {
    const NAME: &'static str = "integer(int64)";
    fn schema() -> MetaSchema {
        MetaSchema {
            minimum: Some(1.0),
            ..MetaSchema::new_with_format("integer", "int64")
        }
    }
}

/// A path parameter documented as an `int64` from 1; [`IntParam::parse`]
/// reads it.
pub type IntParam = Raw<UserId>;

impl IntParam {
    /// The value as an `i64`, or a 422 naming `name`.
    pub fn parse(&self, name: &str) -> Result<i64, ApiError> {
        self.0
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ApiError::field(name, "must be an integer from 1 to 9223372036854775807")
            })
    }
}

/// A UUID.
#[derive(Debug)]
pub struct UuidDoc;

impl Doc for UuidDoc {
    const NAME: &'static str = "string(uuid)";
    fn schema() -> MetaSchema {
        MetaSchema::new_with_format("string", "uuid")
    }
}

/// An RFC 3339 time.
#[derive(Debug)]
pub struct DateTimeDoc;

impl Doc for DateTimeDoc {
    const NAME: &'static str = "string(date-time)";
    fn schema() -> MetaSchema {
        MetaSchema::new_with_format("string", "date-time")
    }
}

/// One of the saga states.
#[derive(Debug)]
pub struct StateDoc;

impl Doc for StateDoc {
    const NAME: &'static str = "SagaState";
    fn schema() -> MetaSchema {
        MetaSchema {
            enum_items: SagaState::ALL
                .iter()
                .map(|s| Value::from(s.as_str()))
                .collect(),
            ..MetaSchema::new("string")
        }
    }
}

/// The order of a saga list: `newest` or `oldest` first (by creation).
#[derive(Debug)]
pub struct SortDoc;

impl SortDoc {
    /// The accepted values.
    pub const VALUES: [&'static str; 2] = ["newest", "oldest"];
}

impl Doc for SortDoc {
    const NAME: &'static str = "SagaOrder";
    fn schema() -> MetaSchema {
        MetaSchema {
            enum_items: Self::VALUES.iter().map(|s| Value::from(*s)).collect(),
            ..MetaSchema::new("string")
        }
    }
}

/// Free text that may be empty (an empty filter is no filter) but holds
/// no NUL, which PostgreSQL cannot store or compare.
#[derive(Debug)]
pub struct TextDoc;

impl Doc for TextDoc {
    const NAME: &'static str = "string(no NUL)";
    fn schema() -> MetaSchema {
        MetaSchema {
            pattern: Some("^[^\\u0000]*$".to_owned()),
            ..MetaSchema::new("string")
        }
    }
}

/// A `next_cursor` from an earlier page: the last item's `created_at` in
/// µs since the epoch and its id.
#[derive(Debug)]
pub struct CursorDoc;

impl CursorDoc {
    /// What a cursor looks like; [`CursorDoc::schema`] documents it and the
    /// handler checks it.
    pub const PATTERN: &'static str = "^-?[0-9]{1,16}_[0-9a-fA-F]{32}$";
}

impl Doc for CursorDoc {
    const NAME: &'static str = "Cursor";
    fn schema() -> MetaSchema {
        MetaSchema {
            pattern: Some(Self::PATTERN.to_owned()),
            ..MetaSchema::new("string")
        }
    }
}

/// A page size.
#[derive(Debug)]
pub struct LimitDoc;

impl LimitDoc {
    /// The largest page.
    pub const MAX: u32 = 500;
}

impl Doc for LimitDoc {
    const NAME: &'static str = "integer(page size)";
    fn schema() -> MetaSchema {
        MetaSchema {
            minimum: Some(1.0),
            maximum: Some(f64::from(Self::MAX)),
            ..MetaSchema::new_with_format("integer", "int32")
        }
    }
}

/// An `Idempotency-Key`: 1-255 visible ASCII characters.
#[derive(Debug)]
pub struct IdempotencyKeyDoc;

impl Doc for IdempotencyKeyDoc {
    const NAME: &'static str = "IdempotencyKey";
    fn schema() -> MetaSchema {
        MetaSchema {
            min_length: Some(1),
            max_length: Some(255),
            pattern: Some("^[!-~]+$".to_owned()),
            ..MetaSchema::new("string")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_is_a_positive_integer() {
        let p = |s: &str| IntParam::parse_from_parameter(s).unwrap().parse("user_id");
        assert_eq!(p("42").unwrap(), 42);
        for bad in ["0", "-1", "x", "", "9223372036854775808"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schemas_say_what_is_accepted() {
        let state = StateDoc::schema();
        assert_eq!(state.enum_items.len(), SagaState::ALL.len());
        assert_eq!(LimitDoc::schema().maximum, Some(500.0));
        assert_eq!(UuidDoc::schema().format, Some("uuid"));
        assert_eq!(IdempotencyKeyDoc::schema().max_length, Some(255));
    }
}
