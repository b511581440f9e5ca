//! The original's custom JMESPath functions (compat.md §4.5, decision P2).
//!
//! Arithmetic keeps Json.NET's integer/float typing: an integer result when both arguments are
//! integers (wrapping on overflow, as C# `unchecked` longs do), a double otherwise.

use std::sync::Arc;

use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, Variable};
use serde_json::Number;

use crate::json::JsonDate;

type Outcome = Result<Rcvar, JmespathError>;

/// Registers `add`, `subtract`, `multiply`, `divide`, `pow`, `insertString`, `fromUnixTimestamp`
/// and `fromUnixTimestampMs`.
pub fn register_custom_functions(runtime: &mut Runtime) {
    runtime.register_function("add", Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
        arithmetic("add", args, ctx, |a, b| Ok(Num::Int(a.wrapping_add(b))), |a, b| a + b)
    }));
    runtime.register_function("subtract", Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
        arithmetic("subtract", args, ctx, |a, b| Ok(Num::Int(a.wrapping_sub(b))), |a, b| a - b)
    }));
    runtime.register_function("multiply", Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
        arithmetic("multiply", args, ctx, |a, b| Ok(Num::Int(a.wrapping_mul(b))), |a, b| a * b)
    }));
    runtime.register_function("divide", Box::new(divide));
    runtime.register_function("pow", Box::new(pow));
    runtime.register_function("insertString", Box::new(insert_string));
    runtime.register_function("fromUnixTimestamp", Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
        from_unix("fromUnixTimestamp", 1000, args, ctx)
    }));
    runtime.register_function("fromUnixTimestampMs", Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
        from_unix("fromUnixTimestampMs", 1, args, ctx)
    }));
}

/// A JMESPath number as Json.NET types it.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn fail(ctx: &Context<'_>, message: String) -> JmespathError {
    JmespathError::from_ctx(ctx, ErrorReason::Parse(message))
}

fn expect_arity(name: &str, args: &[Rcvar], count: usize, ctx: &Context<'_>) -> Result<(), JmespathError> {
    if args.len() == count {
        Ok(())
    } else {
        Err(fail(
            ctx,
            format!("Error: invalid-arity, function {name} expects {count} arguments, got {}", args.len()),
        ))
    }
}

fn number_arg(name: &str, args: &[Rcvar], index: usize, ctx: &Context<'_>) -> Result<Num, JmespathError> {
    match &*args[index] {
        Variable::Number(number) if number.is_f64() => Ok(Num::Float(number.as_f64().unwrap_or(f64::NAN))),
        Variable::Number(number) => number
            .as_i64()
            .map(Num::Int)
            .ok_or_else(|| fail(ctx, format!("Error: function {name} argument {} is out of range", index + 1))),
        _ => Err(fail(
            ctx,
            format!(
                "Error: invalid-type, function {name} expects argument {} to be one of the following: Integer|Float",
                index + 1
            ),
        )),
    }
}

fn integer_arg(name: &str, args: &[Rcvar], index: usize, ctx: &Context<'_>) -> Result<i64, JmespathError> {
    match &*args[index] {
        Variable::Number(number) if !number.is_f64() => number
            .as_i64()
            .ok_or_else(|| fail(ctx, format!("Error: function {name} argument {} is out of range", index + 1))),
        _ => Err(fail(
            ctx,
            format!(
                "Error: invalid-type, function {name} expects argument {} to be one of the following: Integer",
                index + 1
            ),
        )),
    }
}

fn string_arg<'a>(name: &str, args: &'a [Rcvar], index: usize, ctx: &Context<'_>) -> Result<&'a str, JmespathError> {
    match &*args[index] {
        Variable::String(value) => Ok(value),
        _ => Err(fail(
            ctx,
            format!(
                "Error: invalid-type, function {name} expects argument {} to be one of the following: String",
                index + 1
            ),
        )),
    }
}

fn number_result(name: &str, value: Num, ctx: &Context<'_>) -> Outcome {
    match value {
        Num::Int(value) => Ok(Arc::new(Variable::Number(Number::from(value)))),
        Num::Float(value) => Number::from_f64(value)
            .map(|number| Arc::new(Variable::Number(number)))
            .ok_or_else(|| fail(ctx, format!("Error: function {name} produced a number that is not finite"))),
    }
}

fn arithmetic(
    name: &str,
    args: &[Rcvar],
    ctx: &mut Context<'_>,
    integers: impl Fn(i64, i64) -> Result<Num, String>,
    floats: impl Fn(f64, f64) -> f64,
) -> Outcome {
    expect_arity(name, args, 2, ctx)?;
    let left = number_arg(name, args, 0, ctx)?;
    let right = number_arg(name, args, 1, ctx)?;
    let value = match (left, right) {
        (Num::Int(a), Num::Int(b)) => integers(a, b).map_err(|message| fail(ctx, message))?,
        (a, b) => Num::Float(floats(as_f64(a), as_f64(b))),
    };
    number_result(name, value, ctx)
}

fn as_f64(value: Num) -> f64 {
    match value {
        Num::Int(value) => value as f64,
        Num::Float(value) => value,
    }
}

/// True quotient (decision P2): `divide(40, 50)` is 0.8, `divide(10, 2)` is the integer 5, and a
/// zero divisor is an error.
fn divide(args: &[Rcvar], ctx: &mut Context<'_>) -> Outcome {
    expect_arity("divide", args, 2, ctx)?;
    let left = number_arg("divide", args, 0, ctx)?;
    let right = number_arg("divide", args, 1, ctx)?;
    if as_f64(right) == 0.0 {
        return Err(fail(ctx, "Error: function divide attempted to divide by zero".to_string()));
    }
    let value = match (left, right) {
        (Num::Int(a), Num::Int(b)) if a.checked_rem(b) == Some(0) => {
            a.checked_div(b).map_or(Num::Float(a as f64 / b as f64), Num::Int)
        }
        (a, b) => Num::Float(as_f64(a) / as_f64(b)),
    };
    number_result("divide", value, ctx)
}

/// `Math.Pow`; with two integers the result goes through `Convert.ToInt64`, which rounds half to
/// even and overflows outside the 64-bit range.
fn pow(args: &[Rcvar], ctx: &mut Context<'_>) -> Outcome {
    arithmetic(
        "pow",
        args,
        ctx,
        |a, b| {
            let power = (a as f64).powf(b as f64);
            let rounded = power.round_ties_even();
            if rounded.is_finite() && rounded >= -9_223_372_036_854_775_808.0 && rounded < 9_223_372_036_854_775_808.0 {
                Ok(Num::Int(rounded as i64))
            } else {
                Err("Error: function pow overflowed: Value was either too large or too small for an Int64.".to_string())
            }
        },
        f64::powf,
    )
}

/// `string.Insert` on UTF-16 code units, as .NET strings are indexed.
fn insert_string(args: &[Rcvar], ctx: &mut Context<'_>) -> Outcome {
    expect_arity("insertString", args, 3, ctx)?;
    let original = string_arg("insertString", args, 0, ctx)?;
    let inserted = string_arg("insertString", args, 1, ctx)?;
    let position = integer_arg("insertString", args, 2, ctx)?;
    let mut units: Vec<u16> = original.encode_utf16().collect();
    let index = usize::try_from(position)
        .ok()
        .filter(|&index| index <= units.len())
        .ok_or_else(|| {
            fail(
                ctx,
                format!(
                    "Error: function insertString position {position} is outside the string (length {}): Specified argument was out of the range of valid values. (Parameter 'startIndex')",
                    units.len()
                ),
            )
        })?;
    units.splice(index..index, inserted.encode_utf16());
    Ok(Arc::new(Variable::String(String::from_utf16_lossy(&units))))
}

/// Returns the UTC date as ISO text, which the evaluator reads back as a date token.
fn from_unix(name: &str, millis_per_unit: i64, args: &[Rcvar], ctx: &mut Context<'_>) -> Outcome {
    expect_arity(name, args, 1, ctx)?;
    let value = integer_arg(name, args, 0, ctx)?;
    let date = value
        .checked_mul(millis_per_unit)
        .and_then(JsonDate::from_unix_millis)
        .ok_or_else(|| {
            fail(
                ctx,
                format!("Error: function {name} argument {value} is outside the range of valid dates"),
            )
        })?;
    Ok(Arc::new(Variable::String(date.source().to_string())))
}
