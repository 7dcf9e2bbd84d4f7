//! Path parameters read leniently so that a bad value is refused with a 422
//! naming the parameter. (poem-openapi's `Path<i64>` refuses with a 400 that
//! names the parameter `param0`, its internal name, not `user_id`.)

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromParameter, ParseResult, Type};

use crate::error::ApiError;

/// A path parameter documented as an `int64` but taken as its raw text;
/// [`IntParam::parse`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntParam(pub String);

impl IntParam {
    /// The value as an `i64`, or a 422 naming `name`.
    pub fn parse(&self, name: &str) -> Result<i64, ApiError> {
        self.0
            .parse::<i64>()
            .map_err(|_| ApiError::field(name, "must be an integer from 1 to 9223372036854775807"))
    }
}

impl Type for IntParam {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        <i64 as Type>::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        <i64 as Type>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <i64 as Type>::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromParameter for IntParam {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}
