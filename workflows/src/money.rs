//! Parsing money from user input, exactly.
//!
//! Amounts are decimal strings with at most two places, strictly positive
//! and below [`MAX_AMOUNT`]. Anything else is refused with a reason a
//! person can act on; nothing is rounded (Postgres' `numeric(18,2)` would
//! silently round 1.005 to 1.01, so the check must happen before).

use std::str::FromStr;

use rust_decimal::Decimal;

/// The largest single amount accepted: 1,000,000,000.00. Far below the
/// column's limit (10^16), so that balances cannot overflow either.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(1_215_752_192, 23, 0, false, 2);

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Empty input.
    #[error("must not be empty")]
    Empty,
    /// Not of the form `123` or `123.45`.
    #[error("must be a decimal number like \"19.99\" (digits, optionally a point and at most two decimals; no sign, exponent or spaces)")]
    Malformed,
    /// More than two decimal places.
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    /// Zero (including "0.00").
    #[error("must be greater than 0")]
    NotPositive,
    /// Above [`MAX_AMOUNT`].
    #[error("must not exceed 1000000000.00")]
    TooLarge,
}

/// Parses a user-supplied amount. Accepts `"19.99"`, `"20"`, `"0.5"`;
/// refuses signs, exponents, `NaN`, whitespace, more than two decimals,
/// zero and amounts above [`MAX_AMOUNT`]. The result has exactly two
/// decimal places.
pub fn parse_amount(input: &str) -> Result<Decimal, AmountError> {
    if input.is_empty() {
        return Err(AmountError::Empty);
    }
    let (int, frac) = match input.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (input, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(AmountError::Malformed);
    }
    if frac.is_some_and(|f| f.len() > 2) {
        return Err(AmountError::TooPrecise);
    }
    // Leading zeros aside, more than 10 integer digits is above the maximum.
    if int.trim_start_matches('0').len() > 10 {
        return Err(AmountError::TooLarge);
    }
    let mut value = Decimal::from_str(input).map_err(|_| AmountError::Malformed)?;
    if value.is_zero() {
        return Err(AmountError::NotPositive);
    }
    if value > MAX_AMOUNT {
        return Err(AmountError::TooLarge);
    }
    value.rescale(2);
    Ok(value)
}

/// Formats money with exactly two decimal places, as every response does.
pub fn format_amount(value: Decimal) -> String {
    let mut v = value;
    v.rescale(2);
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_amount_is_one_billion() {
        assert_eq!(MAX_AMOUNT.to_string(), "1000000000.00");
    }

    #[test]
    fn accepts_plain_amounts() {
        assert_eq!(parse_amount("19.99").unwrap().to_string(), "19.99");
        assert_eq!(parse_amount("20").unwrap().to_string(), "20.00");
        assert_eq!(parse_amount("0.5").unwrap().to_string(), "0.50");
        assert_eq!(parse_amount("0.01").unwrap().to_string(), "0.01");
        assert_eq!(parse_amount("1000000000.00").unwrap(), MAX_AMOUNT);
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        use AmountError::*;
        for (input, err) in [
            ("", Empty),
            ("0", NotPositive),
            ("0.00", NotPositive),
            ("-0.00", Malformed),
            ("-5", Malformed),
            ("+5", Malformed),
            ("1.005", TooPrecise),
            ("1e3", Malformed),
            ("NaN", Malformed),
            ("inf", Malformed),
            (" 1", Malformed),
            ("1.", Malformed),
            (".5", Malformed),
            ("1,00", Malformed),
            ("1000000000.01", TooLarge),
            ("99999999999999999999999999999999", TooLarge),
        ] {
            assert_eq!(parse_amount(input), Err(err), "input {input:?}");
        }
    }

    #[test]
    fn formats_with_two_places() {
        assert_eq!(format_amount(Decimal::new(425, 1)), "42.50");
        assert_eq!(format_amount(Decimal::ZERO), "0.00");
    }
}
