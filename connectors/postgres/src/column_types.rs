//! The column types `create_table` gives a batch's fields.

use ferry_api::{Record, Value};

/// Whether a number written as `text` survives a double: at most 15
/// significant digits and an exponent a double has.
pub(crate) fn fits_a_double(text: &str) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|&b| b == b'0')
        .count();
    digits <= 15
        && text
            .parse::<f64>()
            .is_ok_and(|f| f.is_finite() && (f != 0.0 || digits == 0))
}

/// The part of a name PostgreSQL keeps: 63 bytes (on a character boundary).
pub(crate) fn identifier_prefix(name: &str) -> &str {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The column type `create_table` gives a field, from the batch's values.
pub(crate) fn column_type(batch: &[&Record], field: &str) -> &'static str {
    let (mut int, mut float, mut bool_, mut text, mut nested) = (false, false, false, false, false);
    let mut big = false;
    for r in batch {
        match r.value.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.is_i64() => int = true,
            // Past bigint, or more digits than a double keeps (numbers are
            // kept as exact text): numeric holds it.
            Some(Value::Number(n)) if !n.to_string().contains(['.', 'e', 'E']) => big = true,
            Some(Value::Number(n)) if !fits_a_double(&n.to_string()) => big = true,
            Some(Value::Number(_)) => float = true,
            Some(Value::Bool(_)) => bool_ = true,
            Some(Value::String(_)) => text = true,
            Some(_) => nested = true,
        }
    }
    match (int, float, bool_, text, nested) {
        (_, _, _, _, true) => "jsonb",
        (_, _, false, false, _) if big => "numeric",
        (true, false, false, false, _) => "bigint",
        (_, true, false, false, _) => "double precision",
        (false, false, true, false, _) => "boolean",
        _ => "text",
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_columns_hold_their_numbers_exactly() {
        for (text, fits) in [
            ("12.5", true),
            ("0.000123", true),
            ("1e300", true),
            ("123456789012345.6", false),
            ("123456789012345678901234567890.123", false),
            ("1e400", false),
            ("1.0e-400", false),
            ("0.0", true),
        ] {
            assert_eq!(fits_a_double(text), fits, "{text}");
        }
        assert_eq!(identifier_prefix(&"x".repeat(70)).len(), 63);
        assert_eq!(
            identifier_prefix(&format!("{}é", "x".repeat(62))),
            "x".repeat(62)
        );
    }
}
