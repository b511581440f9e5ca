//! The original's custom JMESPath functions (compat.md §4.5, decision P2).
//!
//! Arithmetic keeps Json.NET's integer/float typing: an integer result when both arguments are
//! integers (wrapping on overflow, as C# `unchecked` longs do), a double otherwise. Doubles are
//! combined as exact decimals of their shortest text, so a unit conversion such as
//! ``multiply(`78`, `0.0254`)`` gives the documented `1.9812` rather than binary noise
//! (`1.9811999999999999`); values outside `decimal`'s range fall back to IEEE arithmetic.
//! Argument positions in messages count from 0, as the original's do.
//!
//! The functions work on [`Arg`]s and return [`Out`]s, so the same code serves the `jmespath`
//! crate's runtime (through [`register_custom_functions`]) and the direct evaluator of simple
//! expressions.

use std::borrow::Cow;
use std::sync::Arc;

use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, Variable};
use rust_decimal::Decimal;
use serde_json::Number;

use crate::json::JsonDate;
use crate::json::number::{EXACT_POWERS_OF_TEN, short_form, shortest_digits};

/// The custom functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Custom {
    /// `add(number, number)`.
    Add,
    /// `subtract(number, number)`.
    Subtract,
    /// `multiply(number, number)`.
    Multiply,
    /// `divide(number, number)`.
    Divide,
    /// `pow(number, number)`.
    Pow,
    /// `insertString(string, string, integer)`.
    InsertString,
    /// `appendString(string, string)`.
    AppendString,
    /// `fromUnixTimestamp(integer)`.
    FromUnixTimestamp,
    /// `fromUnixTimestampMs(integer)`.
    FromUnixTimestampMs,
}

impl Custom {
    /// Every custom function.
    pub const ALL: [Custom; 9] = [
        Custom::Add,
        Custom::Subtract,
        Custom::Multiply,
        Custom::Divide,
        Custom::Pow,
        Custom::InsertString,
        Custom::AppendString,
        Custom::FromUnixTimestamp,
        Custom::FromUnixTimestampMs,
    ];

    /// The name templates call it by.
    pub fn name(self) -> &'static str {
        match self {
            Custom::Add => "add",
            Custom::Subtract => "subtract",
            Custom::Multiply => "multiply",
            Custom::Divide => "divide",
            Custom::Pow => "pow",
            Custom::InsertString => "insertString",
            Custom::AppendString => "appendString",
            Custom::FromUnixTimestamp => "fromUnixTimestamp",
            Custom::FromUnixTimestampMs => "fromUnixTimestampMs",
        }
    }

    /// The function called `name`.
    pub fn named(name: &str) -> Option<Custom> {
        Custom::ALL.into_iter().find(|function| function.name() == name)
    }

    /// Number of arguments.
    pub fn arity(self) -> usize {
        match self {
            Custom::InsertString => 3,
            Custom::FromUnixTimestamp | Custom::FromUnixTimestampMs => 1,
            _ => 2,
        }
    }
}

/// An argument, as the functions distinguish them (Json.NET token types).
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    /// An integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// Anything else (null, boolean, array, object, or a number JMESPath cannot hold).
    Other,
}

/// A function result.
#[derive(Debug, Clone)]
pub enum Out {
    /// An integer.
    Int(i64),
    /// A finite double.
    Float(f64),
    /// A string.
    Str(String),
    /// A UTC date (the `fromUnixTimestamp` functions).
    Date(JsonDate),
}

/// Calls `function`; errors carry the original's texts.
pub fn call(function: Custom, args: &[Arg<'_>]) -> Result<Out, String> {
    let name = function.name();
    if args.len() != function.arity() {
        return Err(format!(
            "Incorrect number of arguments provided to function {name}. Expected {} but received {}",
            function.arity(),
            args.len()
        ));
    }
    let out = match function {
        Custom::Add => arithmetic(name, args, i64::wrapping_add, Decimal::checked_add, |a, b| a + b)?,
        Custom::Subtract => arithmetic(name, args, i64::wrapping_sub, Decimal::checked_sub, |a, b| a - b)?,
        Custom::Multiply => arithmetic(name, args, i64::wrapping_mul, Decimal::checked_mul, |a, b| a * b)?,
        Custom::Divide => divide(args)?,
        Custom::Pow => pow(args)?,
        Custom::InsertString => insert_string(args)?,
        Custom::AppendString => Out::Str(format!("{}{}", string_arg(name, args, 0)?, string_arg(name, args, 1)?)),
        Custom::FromUnixTimestamp => from_unix(name, 1000, args)?,
        Custom::FromUnixTimestampMs => from_unix(name, 1, args)?,
    };
    match out {
        Out::Float(value) if !value.is_finite() => {
            Err(format!("Error: function {name} produced a number that is not finite"))
        }
        out => Ok(out),
    }
}

/// Registers the custom functions with the crate's runtime.
pub fn register_custom_functions(runtime: &mut Runtime) {
    for function in Custom::ALL {
        runtime.register_function(
            function.name(),
            Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| {
                let args: Vec<Arg<'_>> = args.iter().map(|arg| variable_arg(arg)).collect();
                match call(function, &args) {
                    Ok(out) => Ok(out_variable(out)),
                    // Carried in a `Parse` reason so the exact text reaches the caller.
                    Err(message) => Err(JmespathError::from_ctx(ctx, ErrorReason::Parse(message))),
                }
            }),
        );
    }
}

fn variable_arg(variable: &Rcvar) -> Arg<'_> {
    match &**variable {
        Variable::Number(number) if number.is_f64() => Arg::Float(number.as_f64().unwrap_or(f64::NAN)),
        Variable::Number(number) => number.as_i64().map_or(Arg::Other, Arg::Int),
        Variable::String(text) => Arg::Str(Cow::Borrowed(text)),
        _ => Arg::Other,
    }
}

fn out_variable(out: Out) -> Rcvar {
    match out {
        Out::Int(value) => Arc::new(Variable::Number(Number::from(value))),
        Out::Float(value) => Arc::new(Number::from_f64(value).map_or(Variable::Null, Variable::Number)),
        Out::Str(text) => Arc::new(Variable::String(text)),
        Out::Date(date) => super::jmespath::created_date(date),
    }
}

/// A number as Json.NET types it.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn number_arg(name: &str, args: &[Arg<'_>], index: usize) -> Result<Num, String> {
    match args[index] {
        Arg::Int(value) => Ok(Num::Int(value)),
        Arg::Float(value) => Ok(Num::Float(value)),
        _ => Err(format!(
            "Error: invalid-type, function {name} expects argument {index} to be one of the following: Integer|Float"
        )),
    }
}

fn integer_arg(name: &str, args: &[Arg<'_>], index: usize) -> Result<i64, String> {
    match args[index] {
        Arg::Int(value) => Ok(value),
        _ => Err(format!(
            "Error: invalid-type, function {name} expects argument {index} to be one of the following: Integer"
        )),
    }
}

fn string_arg<'a>(name: &str, args: &'a [Arg<'_>], index: usize) -> Result<&'a str, String> {
    match &args[index] {
        Arg::Str(value) => Ok(value),
        _ => Err(format!(
            "Error: invalid-type, function {name} expects argument {index} to be one of the following: String"
        )),
    }
}

fn arithmetic(
    name: &str,
    args: &[Arg<'_>],
    integers: impl Fn(i64, i64) -> i64,
    decimals: impl Fn(Decimal, Decimal) -> Option<Decimal>,
    floats: impl Fn(f64, f64) -> f64,
) -> Result<Out, String> {
    let left = number_arg(name, args, 0)?;
    let right = number_arg(name, args, 1)?;
    Ok(match (left, right) {
        (Num::Int(a), Num::Int(b)) => Out::Int(integers(a, b)),
        (a, b) => Out::Float(decimal_op(a, b, &decimals).unwrap_or_else(|| floats(as_f64(a), as_f64(b)))),
    })
}

/// The operation on exact decimals of both operands, when they and the result fit `decimal`.
fn decimal_op(a: Num, b: Num, op: impl Fn(Decimal, Decimal) -> Option<Decimal>) -> Option<f64> {
    Some(decimal_to_f64(op(to_decimal(a)?, to_decimal(b)?)?))
}

/// The decimal with the same digits as the shortest text of `value` (what `Decimal::from_scientific`
/// makes of `{value:e}`); `None` beyond `decimal`'s 28 digits of scale or 96 bits of mantissa.
fn to_decimal(value: Num) -> Option<Decimal> {
    match value {
        Num::Int(value) => Some(Decimal::from(value)),
        // An integral double below 2^53 (zero included) is its own shortest form.
        Num::Float(value) if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 => {
            Some(Decimal::from(value as i64))
        }
        Num::Float(value) if value.is_finite() => {
            // value = ±mantissa × 10^exponent
            let (mantissa, exponent) = match short_form(value.abs()) {
                Some((mantissa, exponent)) => (i128::from(mantissa), exponent),
                None => {
                    let (digits, scale) = shortest_digits(value.abs());
                    let digits = digits.as_bytes();
                    let mantissa = digits
                        .iter()
                        .fold(0i128, |sum, digit| sum * 10 + i128::from(digit - b'0'));
                    (mantissa, scale - digits.len() as i32)
                }
            };
            // Beyond 96 bits of mantissa or 28 digits of scale there is no such decimal.
            let decimal = if exponent >= 0 {
                let mantissa = mantissa.checked_mul(10i128.checked_pow(exponent as u32)?)?;
                Decimal::try_from_i128_with_scale(mantissa, 0).ok()?
            } else {
                Decimal::try_from_i128_with_scale(mantissa, exponent.unsigned_abs()).ok()?
            };
            Some(if value < 0.0 { -decimal } else { decimal })
        }
        Num::Float(_) => None,
    }
}

/// The nearest double. Mantissas below 2^53 with scales up to 22 convert exactly and divide
/// with one correctly rounded operation; others are divided exactly in integers.
fn decimal_to_f64(value: Decimal) -> f64 {
    let mantissa = value.mantissa();
    let scale = value.scale();
    if mantissa.unsigned_abs() < (1u128 << 53) && (scale as usize) < EXACT_POWERS_OF_TEN.len() {
        return mantissa as f64 / EXACT_POWERS_OF_TEN[scale as usize];
    }
    if mantissa == 0 {
        return 0.0;
    }
    let magnitude = nearest_double(mantissa.unsigned_abs(), scale);
    if mantissa < 0 { -magnitude } else { magnitude }
}

/// The double nearest to `mantissa` / 10^`scale`, for a decimal's mantissa (nonzero, below 2^96)
/// and scale (at most 28), rounding ties to even.
///
/// As 10^scale = 5^scale × 2^scale, it is the nearest double to `mantissa` / 5^scale, scaled by
/// an exact power of two. The mantissa is shifted to fill 127 bits, so dividing it by 5^scale
/// (below 2^66) leaves a quotient of more than 60 bits; its top 53 bits, the bits below them
/// and whether the division left a remainder decide the rounding.
fn nearest_double(mantissa: u128, scale: u32) -> f64 {
    let shift = mantissa.leading_zeros() - 1;
    let dividend = mantissa << shift;
    let divisor = 5u128.pow(scale);
    let quotient = dividend / divisor;
    let inexact = quotient * divisor != dividend;
    let dropped = (128 - quotient.leading_zeros()) - 53;
    let mut significand = (quotient >> dropped) as u64;
    let below = quotient & ((1 << dropped) - 1);
    let half = 1 << (dropped - 1);
    if below > half || (below == half && (inexact || significand & 1 == 1)) {
        significand += 1;
    }
    let exponent = dropped as i32 - shift as i32 - scale as i32;
    significand as f64 * f64::from_bits(((1023 + exponent) as u64) << 52)
}

fn as_f64(value: Num) -> f64 {
    match value {
        Num::Int(value) => value as f64,
        Num::Float(value) => value,
    }
}

/// True quotient (decision P2): `divide(40, 50)` is 0.8, `divide(10, 2)` is the integer 5, and a
/// zero divisor is an error.
fn divide(args: &[Arg<'_>]) -> Result<Out, String> {
    let left = number_arg("divide", args, 0)?;
    let right = number_arg("divide", args, 1)?;
    if as_f64(right) == 0.0 {
        return Err("Error: function divide attempted to divide by zero".to_string());
    }
    Ok(match (left, right) {
        (Num::Int(a), Num::Int(b)) if a.checked_rem(b) == Some(0) => {
            a.checked_div(b).map_or(Out::Float(a as f64 / b as f64), Out::Int)
        }
        (a, b) => Out::Float(decimal_op(a, b, Decimal::checked_div).unwrap_or_else(|| as_f64(a) / as_f64(b))),
    })
}

/// `Math.Pow`; with two integers the result goes through `Convert.ToInt64`, which rounds half to
/// even and overflows outside the 64-bit range.
fn pow(args: &[Arg<'_>]) -> Result<Out, String> {
    let left = number_arg("pow", args, 0)?;
    let right = number_arg("pow", args, 1)?;
    Ok(match (left, right) {
        (Num::Int(a), Num::Int(b)) => {
            let rounded = (a as f64).powf(b as f64).round_ties_even();
            if !(rounded.is_finite() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&rounded)) {
                return Err(
                    "Error: function pow overflowed: Value was either too large or too small for an Int64.".to_string(),
                );
            }
            Out::Int(rounded as i64)
        }
        (a, b) => Out::Float(as_f64(a).powf(as_f64(b))),
    })
}

/// `string.Insert` on UTF-16 code units, as .NET strings are indexed.
fn insert_string(args: &[Arg<'_>]) -> Result<Out, String> {
    let original = string_arg("insertString", args, 0)?;
    let inserted = string_arg("insertString", args, 1)?;
    let position = integer_arg("insertString", args, 2)?;
    let mut units: Vec<u16> = original.encode_utf16().collect();
    let index = usize::try_from(position)
        .ok()
        .filter(|&index| index <= units.len())
        .ok_or_else(|| {
            format!(
                "Error: function insertString position {position} is outside the string (length {}): Specified argument was out of the range of valid values. (Parameter 'startIndex')",
                units.len()
            )
        })?;
    units.splice(index..index, inserted.encode_utf16());
    Ok(Out::Str(String::from_utf16_lossy(&units)))
}

/// A UTC date from seconds (or milliseconds) since the Unix epoch.
fn from_unix(name: &str, millis_per_unit: i64, args: &[Arg<'_>]) -> Result<Out, String> {
    let value = integer_arg(name, args, 0)?;
    value
        .checked_mul(millis_per_unit)
        .and_then(JsonDate::from_unix_millis)
        .map(Out::Date)
        .ok_or_else(|| format!("Error: function {name} argument {value} is outside the range of valid dates"))
}

#[cfg(test)]
mod tests {
    use crate::expr::{Expression, Language, Scope};
    use crate::json::{JToken, parse_token};

    /// Evaluates `expression` against `data`, returning the single result as JSON (dates as
    /// `G` text) or the error message.
    fn run(expression: &str, data: &str) -> Result<String, String> {
        let compiled = Expression::compile(expression, Language::JmesPath).map_err(|e| e.to_string())?;
        let data = parse_token(data).unwrap();
        let result = compiled.select_token(&Scope::new(&data)).map_err(|e| e.to_string())?;
        Ok(match result.as_ref().and_then(|r| r.as_token()) {
            Some(JToken::Date(date)) => format!("date {}", date.to_general_string()),
            Some(token) => token.to_json(),
            None => "nothing".to_string(),
        })
    }

    fn with(left: &str, right: &str) -> String {
        format!(r#"{{"left":{left},"right":{right}}}"#)
    }

    #[test]
    fn integer_arithmetic_wraps_like_csharp_longs() {
        let max = i64::MAX.to_string();
        let min = i64::MIN.to_string();
        assert_eq!(run("add(left, right)", &with("-1", "100")).unwrap(), "99");
        assert_eq!(run("add(left, right)", &with("0", &max)).unwrap(), max);
        assert_eq!(run("subtract(left, right)", &with(&max, &max)).unwrap(), "0");
        assert_eq!(run("subtract(left, right)", &with("0", &min)).unwrap(), min);
        assert_eq!(run("multiply(left, right)", &with("-1", "100")).unwrap(), "-100");
        assert_eq!(run("add(left, right)", &with(&max, "1")).unwrap(), min);
    }

    #[test]
    fn float_arithmetic_is_decimal_exact() {
        assert_eq!(run("add(left, right)", &with("-1.0", "10.5")).unwrap(), "9.5");
        assert_eq!(run("subtract(left, right)", &with("1", "10.5")).unwrap(), "-9.5");
        assert_eq!(run("multiply(left, right)", &with("100", "0.5")).unwrap(), "50.0");
        assert_eq!(run("add(left, right)", &with("0.1", "0.2")).unwrap(), "0.3");
        let height = r#"{"matchedToken":{"height":"78"}}"#;
        assert_eq!(
            run("multiply(to_number(matchedToken.height), `0.0254`)", height).unwrap(),
            "1.9812"
        );
        // Beyond decimal's range, IEEE arithmetic.
        assert_eq!(run("multiply(left, right)", &with("1e300", "10.0")).unwrap(), "1e301");
    }

    /// The direct conversion makes the decimal that parsing the shortest scientific text makes,
    /// and fails where that parse fails.
    #[test]
    fn decimals_of_doubles_match_their_shortest_text() {
        use rust_decimal::Decimal;

        use super::{Num, to_decimal};
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut values = vec![
            98.6,
            -98.6,
            333.0,
            -4.0,
            9007199254740991.0,
            9007199254740992.0,
            1e22,
            0.45359237,
            1e28,
            1e29,
            7.9e28,
            8e28,
            1e-28,
            1.5e-28,
            1e-29,
            5e-324,
            1e300,
        ];
        for _ in 0..20_000 {
            crate::test_support::xorshift(&mut state);
            values.push(f64::from_bits(state));
            // Readings as devices send them: a few digits at an ordinary magnitude.
            let sign = if state.is_multiple_of(2) { "" } else { "-" };
            let digits = state % 10u64.pow(1 + (state >> 8) as u32 % 15);
            values.push(format!("{sign}{digits}e-{}", (state >> 32) % 34).parse().unwrap());
        }
        for value in values.into_iter().filter(|value| value.is_finite() && *value != 0.0) {
            let expected = Decimal::from_scientific(&format!("{value:e}")).ok();
            let actual = to_decimal(Num::Float(value));
            assert_eq!(actual, expected, "{value:e}");
            if let (Some(actual), Some(expected)) = (actual, expected) {
                assert_eq!(
                    (actual.mantissa(), actual.scale()),
                    (expected.mantissa(), expected.scale()),
                    "{value:e}"
                );
            }
        }
    }

    /// Decimals convert to the double nearest to them, as reading their text does: random
    /// decimals of every length and scale, quotients as `divide` makes them, and decimals
    /// exactly halfway between two doubles (ties go to the even one).
    #[test]
    fn decimals_convert_to_the_nearest_double() {
        use rust_decimal::Decimal;

        use super::decimal_to_f64;
        let mut decimals = Vec::new();
        let mut state: u64 = 0x853c_49e6_748f_ea9b;
        for _ in 0..20_000 {
            crate::test_support::xorshift(&mut state);
            let mantissa = (i128::from(state) << 32 | i128::from(state >> 16)) % 10i128.pow(1 + (state % 28) as u32);
            let mantissa = if state.is_multiple_of(3) { -mantissa } else { mantissa };
            decimals.push(Decimal::from_i128_with_scale(mantissa, (state >> 58) as u32 % 29));
            let dividend = Decimal::from(state % 1_000_000_007) / Decimal::from(1 + (state >> 40) % 1000);
            decimals.push(dividend / Decimal::from(1 + (state >> 20) % 97));
        }
        for above in [1, 3, 5, 7] {
            // (2^54 + above) / 2: halfway between the doubles 2^53 + above / 2 ± 1/2.
            decimals.push(Decimal::from_i128_with_scale(((1i128 << 54) + above) * 5, 1));
        }
        for decimal in decimals {
            assert_eq!(
                decimal_to_f64(decimal),
                decimal.to_string().parse::<f64>().unwrap(),
                "{decimal}"
            );
        }
    }

    #[test]
    fn divide_is_a_true_quotient() {
        assert_eq!(run("divide(`40`, `50`)", "{}").unwrap(), "0.8");
        assert_eq!(run("divide(`10`, `2`)", "{}").unwrap(), "5");
        assert_eq!(run("divide(left, right)", &with("100", "-1")).unwrap(), "-100");
        assert_eq!(run("divide(left, right)", &with("100", "25.0")).unwrap(), "4.0");
        assert_eq!(run("divide(`1`, `3`)", "{}").unwrap(), "0.3333333333333333");
        for zero in ["0", "0.0"] {
            let error = run("divide(left, right)", &with("100", zero)).unwrap_err();
            assert!(error.contains("divide by zero"), "{error}");
        }
    }

    #[test]
    fn pow_rounds_integers_and_overflows() {
        assert_eq!(run("pow(left, right)", &with("0", "0")).unwrap(), "1");
        assert_eq!(run("pow(left, right)", &with("10", "2")).unwrap(), "100");
        assert_eq!(run("pow(left, right)", &with("10", "-1")).unwrap(), "0");
        assert_eq!(run("pow(left, right)", &with("100", "-2.0")).unwrap(), "0.0001");
        let error = run("pow(left, right)", &with(&i64::MAX.to_string(), "10")).unwrap_err();
        assert!(error.contains("too large"), "{error}");
        assert!(run("pow(`40`, `50`)", "{}").is_err());
    }

    #[test]
    fn type_errors_use_the_original_text() {
        for bad in [r#""bad""#, "[[[0,0,0],[0,0,0]]]", r#"{"value":1}"#] {
            for function in ["add", "subtract", "multiply", "divide", "pow"] {
                let error = run(&format!("{function}(left, right)"), &with(bad, "100")).unwrap_err();
                assert_eq!(
                    error,
                    format!(
                        "Error: invalid-type, function {function} expects argument 0 to be one of the following: Integer|Float"
                    )
                );
            }
        }
    }

    #[test]
    fn insert_and_append_strings() {
        let data = r#"{"original":"suess","toInsert":"cc","pos":2}"#;
        assert_eq!(
            run("insertString(original, toInsert, pos)", data).unwrap(),
            r#""success""#
        );
        assert_eq!(
            run("insertString('myString', '!!', length('myString'))", "{}").unwrap(),
            r#""myString!!""#
        );
        assert_eq!(run("insertString('ppy', 'ha', `0`)", "{}").unwrap(), r#""happy""#);
        assert!(
            run("insertString('myString', '!!', `9`)", "{}")
                .unwrap_err()
                .contains("out of the range")
        );
        assert!(run("insertString('ppy', 'ha', `-1`)", "{}").is_err());
        assert!(
            run("insertString('text', 'x', `1.5`)", "{}")
                .unwrap_err()
                .contains("argument 2")
        );
        assert!(
            run("insertString(`6`, 'x', `0`)", "{}")
                .unwrap_err()
                .contains("argument 0")
        );
        // UTF-16 positions, as .NET counts them.
        assert_eq!(run("insertString('😀b', 'a', `2`)", "{}").unwrap(), r#""😀ab""#);
        assert_eq!(
            run("appendString('sample ', 'text')", "{}").unwrap(),
            r#""sample text""#
        );
    }

    #[test]
    fn unix_timestamps_become_dates() {
        assert_eq!(run("fromUnixTimestamp(`0`)", "{}").unwrap(), "date 01/01/1970 00:00:00");
        assert_eq!(
            run("fromUnixTimestamp(`1625677200`)", "{}").unwrap(),
            "date 07/07/2021 17:00:00"
        );
        assert_eq!(
            run("fromUnixTimestamp(`-1`)", "{}").unwrap(),
            "date 12/31/1969 23:59:59"
        );
        assert_eq!(
            run("fromUnixTimestampMs(`1626799080000`)", "{}").unwrap(),
            "date 07/20/2021 16:38:00"
        );
        assert_eq!(
            run("fromUnixTimestampMs(`-1000`)", "{}").unwrap(),
            "date 12/31/1969 23:59:59"
        );
        assert!(run("fromUnixTimestamp('badData')", "{}").is_err());
        assert!(run("fromUnixTimestamp(`1.5`)", "{}").is_err());
        assert!(run("fromUnixTimestamp(`999999999999999`)", "{}").is_err());
    }

    #[test]
    fn arity_is_checked_when_the_template_loads() {
        for expression in [
            "add()",
            "add(left",
            "divide(left, right, up)",
            "fromUnixTimestamp(timestamp, extraParam)",
            "insertString(original, toInsert)",
            "insertString(original, toInsert, pos, extraParam)",
        ] {
            assert!(
                Expression::compile(expression, Language::JmesPath).is_err(),
                "{expression}"
            );
        }
    }
}
