//! Extraction of Measurements from matched tokens: the original's `MeasurementExtractor`
//! (CalculatedContent) and `LegacyMeasurementExtractor` (the JSONPath-only types), including the
//! required/optional rules, stringification and timestamp conversion of Json.NET's `Value<T>()`.

use chrono::{DateTime, NaiveDate, Utc};
use compact_str::ToCompactString;

use super::{ContentTemplate, NormalizeError, TemplateKind};
use crate::expr::{Expression, ExpressionError, FieldLookup, JmesCache, Scope, Selected};
use crate::json::{JToken, format_double, parse_dotnet_datetime};
use crate::model::{Measurement, MeasurementProperty, MeasurementText};

impl ContentTemplate {
    /// Appends one Measurement per token the type match selects.
    pub(super) fn extract<'a>(
        &self,
        envelope: &'a JToken,
        envelope_view: &'a JmesCache,
        today: NaiveDate,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let matches = self
            .type_match
            .select_tokens(&Scope::cached(envelope, envelope_view))
            .map_err(|error| expression_failure(&self.type_match, error, "JsonTokens"))?;
        for matched in matches.iter() {
            let scope = match (self.kind, matched) {
                (TemplateKind::Calculated, Selected::Token(token)) => {
                    Scope::with_matched_token(envelope, token, envelope_view)
                }
                (TemplateKind::Calculated, Selected::Property(..)) => {
                    return Err(NormalizeError::expression(format!(
                        "The type match expression {} selected a property node, which cannot be added as matchedToken: Can not add Newtonsoft.Json.Linq.JProperty to Newtonsoft.Json.Linq.JObject.",
                        self.type_match.as_str()
                    )));
                }
                _ => Scope::of_selected(matched),
            };
            out.push(self.measurement(&scope, today)?);
        }
        Ok(())
    }

    fn measurement(&self, scope: &Scope<'_>, today: NaiveDate) -> Result<Measurement, NormalizeError> {
        let device_id = evaluate(
            scope,
            "DeviceIdExpression",
            true,
            std::slice::from_ref(&self.device_id),
            to_text,
        )?;
        let occurrence = evaluate(scope, "TimestampExpression", true, &self.timestamps, |found| {
            to_timestamp(found, today)
        })?;
        let correlation_id = match &self.correlation_id {
            Some(expression) => evaluate(
                scope,
                "CorrelationIdExpression",
                true,
                std::slice::from_ref(expression),
                to_text,
            )?,
            None => None,
        };
        let optional = |expression: &Option<Expression>, name: &str| match expression {
            Some(expression) => evaluate(scope, name, false, std::slice::from_ref(expression), to_text),
            None => Ok(None),
        };
        let patient_id = optional(&self.patient_id, "PatientIdExpression")?;
        let encounter_id = optional(&self.encounter_id, "EncounterIdExpression")?;
        let mut properties = Vec::with_capacity(self.values.len());
        for value in &self.values {
            if let Some(text) = evaluate(
                scope,
                &value.name,
                value.required,
                std::slice::from_ref(&value.expression),
                to_text,
            )? {
                properties.push(MeasurementProperty {
                    name: value.name.clone(),
                    value: text,
                });
            }
        }
        Ok(Measurement {
            type_name: self.type_name.clone(),
            occurrence_time_utc: occurrence.expect("a required value is present"),
            ingestion_time_utc: None,
            device_id: device_id.expect("a required value is present"),
            patient_id,
            encounter_id,
            correlation_id,
            properties,
        })
    }
}

/// A converted value that counts as missing for a required field.
trait Blank {
    fn is_blank(&self) -> bool;
}

impl Blank for MeasurementText {
    fn is_blank(&self) -> bool {
        self.chars().all(char::is_whitespace)
    }
}

impl Blank for DateTime<Utc> {
    fn is_blank(&self) -> bool {
        false
    }
}

/// The original's `EvalExpression<T>`: the first expression that yields a usable value wins; a
/// required field that yields nothing usable is an error saying why.
///
/// Always inlined: returned out of a call, the `Result<Option<T>, _>` is stored piecewise and
/// reloaded whole, which stalls store forwarding on every field of every Measurement.
#[inline(always)]
fn evaluate<T: Blank>(
    scope: &Scope<'_>,
    name: &str,
    required: bool,
    expressions: &[Expression],
    convert: impl Fn(&JToken) -> Result<Option<T>, String>,
) -> Result<Option<T>, NormalizeError> {
    let mut problems = Vec::new();
    for expression in expressions {
        // Plain field paths, the usual case, hand over a borrowed token without building a
        // `Selected`; everything else goes through `select_token`.
        let converted = match expression.lookup_field(scope) {
            FieldLookup::Found(token) => convert(token),
            FieldLookup::Missing => continue,
            FieldLookup::Other => match expression
                .select_token(scope)
                .map_err(|error| expression_failure(expression, error, "JsonToken"))?
            {
                None => continue,
                Some(Selected::Property(..)) => Err(cannot_cast("JProperty")),
                Some(Selected::Token(token)) => convert(&token),
            },
        };
        match converted {
            Ok(value) => {
                let missing = value.as_ref().is_none_or(Blank::is_blank);
                if required && missing {
                    problems.push(format!(
                        "A null or empty value was supplied for the required field [{name}]"
                    ));
                } else {
                    return Ok(value);
                }
            }
            Err(reason) => problems.push(format!(
                "Encountered an error while extracting value for [{name}] using expression {}: {reason}",
                expression.as_str()
            )),
        }
    }
    if !required {
        return Ok(None);
    }
    Err(NormalizeError::incompatible(if problems.is_empty() {
        let texts: Vec<&str> = expressions.iter().map(|e| e.as_str()).collect();
        format!(
            "Unable to extract required value for [{name}] using {}",
            texts.join(",")
        )
    } else {
        format!("Unable to extract required value for [{name}]. {}", problems.join(" "))
    }))
}

fn expression_failure(expression: &Expression, error: ExpressionError, what: &str) -> NormalizeError {
    let message = match (expression, error) {
        (Expression::JmesPath(_), ExpressionError::MultipleTokens(message)) => message,
        (Expression::JmesPath(_), other) => other.to_string(),
        (Expression::JsonPath(path), other) => {
            format!("Unable to retrieve {what} using expression {}: {other}", path.as_str())
        }
    };
    NormalizeError::expression(message)
}

fn cannot_cast(class: &str) -> String {
    format!("Cannot cast Newtonsoft.Json.Linq.{class} to Newtonsoft.Json.Linq.JToken.")
}

fn container_class(token: &JToken) -> Option<&'static str> {
    match token {
        JToken::Object(_) => Some("JObject"),
        JToken::Array(_) => Some("JArray"),
        _ => None,
    }
}

/// `Value<string>()`: strings verbatim, numbers in invariant form, `True`/`False`, dates as
/// `MM/dd/yyyy HH:mm:ss`; objects and arrays cannot convert.
fn to_text(token: &JToken) -> Result<Option<MeasurementText>, String> {
    Ok(match token {
        JToken::Null => None,
        JToken::String(text) => Some(text.clone()),
        JToken::Integer(value) => Some(value.to_compact_string()),
        JToken::BigInteger(digits) => Some(digits.clone()),
        JToken::Float(value) => Some(format_double(*value)),
        JToken::Bool(true) => Some("True".into()),
        JToken::Bool(false) => Some("False".into()),
        JToken::Date(date) => Some(date.to_general_string().into()),
        other => return Err(cannot_cast(container_class(other).unwrap_or("JValue"))),
    })
}

/// `Value<DateTime?>()`: dates as they are, strings through `DateTime.Parse`; numbers are
/// rejected (use `fromUnixTimestamp`).
fn to_timestamp(token: &JToken, today: NaiveDate) -> Result<Option<DateTime<Utc>>, String> {
    match token {
        JToken::Null => Ok(None),
        JToken::Date(date) => Ok(Some(date.to_utc())),
        JToken::String(text) => parse_dotnet_datetime(text, Some(today))
            .map(|date| Some(date.to_utc()))
            .ok_or_else(|| format!("String '{text}' was not recognized as a valid DateTime.")),
        JToken::Integer(_) => Err("Invalid cast from 'Int64' to 'DateTime'.".to_string()),
        JToken::Float(_) => Err("Invalid cast from 'Double' to 'DateTime'.".to_string()),
        JToken::Bool(_) => Err("Invalid cast from 'Boolean' to 'DateTime'.".to_string()),
        JToken::BigInteger(_) => Err("Object must implement IConvertible.".to_string()),
        other => Err(cannot_cast(container_class(other).unwrap_or("JValue"))),
    }
}
