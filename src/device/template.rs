//! Reading device-mapping templates (compat.md §2, §3) with Json.NET's rules: member names match
//! case-insensitively, unknown members are errors, required members are checked, `"true"` reads
//! as a boolean, and every problem is collected with its position.

use super::{ContentTemplate, TemplateKind, ValueTemplate};
use crate::expr::{Expression, Language};
use crate::json::{JToken, KeyDigest, Pos, Spanned, SpannedJson};
use crate::template::{
    Members, TemplateError, matches_type_name, read_bool, read_collection_items, read_container, read_string,
    scalar_text, start_token,
};

/// The fixed expressions of the IoT Hub template.
pub(super) const IOT_DEVICE_ID: &str = "$.SystemProperties.iothub-connection-device-id";
pub(super) const IOT_CREATION_TIME: &str = "$.Properties.iothub-creation-time-utc";
pub(super) const IOT_ENQUEUED_TIME: &str = "$.SystemProperties.iothub-enqueuedtime";
/// The fixed expressions of the IoT Central template.
pub(super) const IOT_CENTRAL_DEVICE_ID: &str = "$.deviceId";
pub(super) const IOT_CENTRAL_TIMESTAMP: &str = "$.enqueuedTime";

/// Reads the root `CollectionContent` container into templates, collecting every error.
pub(super) fn read_collection(root: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Vec<ContentTemplate> {
    read_collection_items(root, "CollectionContentTemplate", errors)
        .iter()
        .filter_map(|item| read_content_template(item, errors))
        .collect()
}

fn read_content_template(item: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<ContentTemplate> {
    let container = read_container(item, errors)?;
    let type_name = container.type_name.clone().unwrap_or_default();
    let type_pos = container.type_pos.unwrap_or(item.pos);
    let Some(kind) = [
        TemplateKind::JsonPath,
        TemplateKind::IotJsonPath,
        TemplateKind::IotCentralJsonPath,
        TemplateKind::Calculated,
    ]
    .into_iter()
    .find(|kind| matches_type_name(&type_name, kind.type_name())) else {
        errors.push(TemplateError::at(
            container.template.map_or(type_pos, |t| t.pos),
            format!("No match found for template type {type_name}."),
        ));
        return None;
    };
    let body = match container.template {
        Some(
            body @ Spanned {
                value: SpannedJson::Object(_),
                ..
            },
        ) => body,
        other => {
            errors.push(TemplateError::at(
                other.map_or(type_pos, |t| t.pos),
                format!(
                    "Expected an object for the template property value for template type {}.",
                    kind.container_name()
                ),
            ));
            return None;
        }
    };
    let before = errors.len();
    let template = read_template_body(kind, body, errors);
    (errors.len() == before).then_some(template).flatten()
}

/// `TemplateExpressionLanguage` through `StringEnumConverter`: names in any case, or 0 and 1.
fn read_language(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<Language> {
    let language = match &value.value {
        SpannedJson::String(name) => Language::parse(name.trim()),
        SpannedJson::Number(JToken::Integer(0)) => Some(Language::JsonPath),
        SpannedJson::Number(JToken::Integer(1)) => Some(Language::JmesPath),
        _ => None,
    };
    if language.is_none() {
        let shown = scalar_text(&value.value).unwrap_or_else(|| start_token(&value.value).to_string());
        errors.push(TemplateError::at(
            value.pos,
            format!("Error converting value \"{shown}\" to type 'TemplateExpressionLanguage'. Expected JsonPath or JmesPath."),
        ));
    }
    language
}

/// An expression as written in a template: its text, its language if given, and where it is.
struct RawExpression {
    text: String,
    language: Option<Language>,
    pos: Pos,
}

/// A plain string expression (the JSONPath-only templates).
fn read_path_string(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<RawExpression> {
    read_string(value, errors).map(|text| RawExpression {
        text,
        language: Some(Language::JsonPath),
        pos: value.pos,
    })
}

/// A CalculatedContent expression: a string, or `{"value": …, "language": …}` whose other members
/// are ignored (the original reads it without strict member handling).
fn read_calculated_expression(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<RawExpression> {
    match &value.value {
        SpannedJson::Object(_) => {
            // Other members of an expression object are ignored, so nothing is "unknown" here.
            let mut members = Members::new(value, "TemplateExpression")?;
            let text = members.require("Value").and_then(|text| read_string(text, errors));
            errors.append(&mut members.missing);
            let language = match members.take("Language") {
                Some(language) => Some(read_language(language, errors)?),
                None => None,
            };
            Some(RawExpression {
                text: text?,
                language,
                pos: value.pos,
            })
        }
        _ => read_string(value, errors).map(|text| RawExpression {
            text,
            language: None,
            pos: value.pos,
        }),
    }
}

fn compile(
    raw: RawExpression,
    default_language: Language,
    name: &str,
    errors: &mut Vec<TemplateError>,
) -> Option<Expression> {
    if raw.text.trim().is_empty() {
        errors.push(TemplateError::at(
            raw.pos,
            format!("An expression must be set for [{name}]"),
        ));
        return None;
    }
    Expression::compile(&raw.text, raw.language.unwrap_or(default_language))
        .map_err(|error| errors.push(TemplateError::at(raw.pos, error.to_string())))
        .ok()
}

fn read_template_body(
    kind: TemplateKind,
    body: &Spanned<SpannedJson>,
    errors: &mut Vec<TemplateError>,
) -> Option<ContentTemplate> {
    let mut members = Members::new(body, kind.class_name())?;
    let first_error = errors.len();
    let calculated = kind == TemplateKind::Calculated;
    let read_expression = |value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>| {
        if calculated {
            read_calculated_expression(value, errors)
        } else {
            read_path_string(value, errors)
        }
    };

    let type_name = members.require("TypeName").and_then(|v| read_string(v, errors));
    let type_match = members
        .require("TypeMatchExpression")
        .and_then(|v| read_expression(v, errors));
    let (device_id, timestamp) = match kind {
        TemplateKind::JsonPath | TemplateKind::Calculated => (
            members
                .require("DeviceIdExpression")
                .and_then(|v| read_expression(v, errors)),
            members
                .require("TimestampExpression")
                .and_then(|v| read_expression(v, errors)),
        ),
        // Fixed by the template type (`[JsonIgnore]` in the original): supplied values, of any
        // type, are skipped without an error.
        TemplateKind::IotJsonPath | TemplateKind::IotCentralJsonPath => {
            members.take("DeviceIdExpression");
            members.take("TimestampExpression");
            (None, None)
        }
    };
    let mut optional =
        |name: &str, errors: &mut Vec<TemplateError>| members.take(name).and_then(|v| read_expression(v, errors));
    let patient_id = optional("PatientIdExpression", errors);
    let encounter_id = optional("EncounterIdExpression", errors);
    let correlation_id = optional("CorrelationIdExpression", errors);
    let default_language = if calculated {
        match members.take("DefaultExpressionLanguage") {
            Some(value) => read_language(value, errors).unwrap_or(Language::JsonPath),
            None => Language::JsonPath,
        }
    } else {
        Language::JsonPath
    };
    let values_member = members.take("Values");
    let values_class = if calculated {
        "CalculatedFunctionValueExpression"
    } else {
        "JsonPathValueExpression"
    };
    let raw_values: Vec<(String, Option<RawExpression>, bool)> = match values_member {
        None if calculated => {
            // The original fails to load such a template (a NullReferenceException); say why.
            errors.push(TemplateError::at(
                body.pos,
                "Required property 'Values' not found in JSON.".into(),
            ));
            Vec::new()
        }
        None => Vec::new(),
        Some(Spanned {
            value: SpannedJson::Array(items),
            ..
        }) => items
            .iter()
            .filter_map(|item| {
                let Some(mut value_members) = Members::new(item, values_class) else {
                    errors.push(TemplateError::at(
                        item.pos,
                        format!(
                            "Expected an object for a value of type '{values_class}', found {}.",
                            item.value.type_name()
                        ),
                    ));
                    return None;
                };
                let name = value_members.require("ValueName").and_then(|v| read_string(v, errors));
                let expression = value_members
                    .require("ValueExpression")
                    .and_then(|v| read_expression(v, errors));
                let required = match value_members.take("Required") {
                    Some(flag) => read_bool(flag, errors).unwrap_or(false),
                    None => false,
                };
                let mut missing = value_members.finish(errors);
                errors.append(&mut missing);
                Some((name?, expression, required))
            })
            .collect(),
        Some(other) => {
            errors.push(TemplateError::at(
                other.pos,
                format!(
                    "Error reading values. Unexpected token: {}; expected an array.",
                    start_token(&other.value)
                ),
            ));
            Vec::new()
        }
    };
    let mut missing = members.finish(errors);
    // Json.NET's order: member errors as the reader meets them, then the missing required
    // members; expressions are compiled (and their errors reported) after that.
    errors[first_error..].sort_by_key(|error| error.pos);
    errors.append(&mut missing);

    let type_match = compile(type_match?, default_language, "TypeMatchExpression", errors);
    let (device_id, timestamps) = match kind {
        TemplateKind::IotJsonPath => (
            Some(fixed(IOT_DEVICE_ID)),
            vec![fixed(IOT_CREATION_TIME), fixed(IOT_ENQUEUED_TIME)],
        ),
        TemplateKind::IotCentralJsonPath => (Some(fixed(IOT_CENTRAL_DEVICE_ID)), vec![fixed(IOT_CENTRAL_TIMESTAMP)]),
        TemplateKind::JsonPath | TemplateKind::Calculated => (
            device_id.and_then(|raw| compile(raw, default_language, "DeviceIdExpression", errors)),
            timestamp
                .and_then(|raw| compile(raw, default_language, "TimestampExpression", errors))
                .into_iter()
                .collect(),
        ),
    };
    let optional_expression = |raw: Option<RawExpression>, name: &str, errors: &mut Vec<TemplateError>| match raw {
        // An empty optional expression is "not set", as in the original.
        Some(raw) if raw.text.trim().is_empty() => Some(None),
        Some(raw) => compile(raw, default_language, name, errors).map(Some),
        None => Some(None),
    };
    let patient_id = optional_expression(patient_id, "PatientIdExpression", errors);
    let encounter_id = optional_expression(encounter_id, "EncounterIdExpression", errors);
    let correlation_id = optional_expression(correlation_id, "CorrelationIdExpression", errors);
    let mut values = Vec::new();
    for (name, raw, required) in raw_values {
        match raw {
            // Missing: already reported. Empty and optional: the value is never produced.
            None => {}
            Some(raw) if raw.text.trim().is_empty() && !required => {}
            Some(raw) => {
                if let Some(expression) = compile(raw, default_language, &name, errors) {
                    values.push(ValueTemplate {
                        name: name.into(),
                        expression,
                        required,
                    });
                }
            }
        }
    }
    let type_match = type_match?;
    let type_match_keys = KeyDigest::of_names(type_match.required_keys().iter().map(String::as_str));
    Some(ContentTemplate {
        kind,
        type_name: type_name?.into(),
        type_match,
        type_match_keys,
        device_id: device_id?,
        timestamps,
        patient_id: patient_id?,
        encounter_id: encounter_id?,
        correlation_id: correlation_id?,
        values,
    })
}

fn fixed(path: &str) -> Expression {
    Expression::compile(path, Language::JsonPath).expect("the fixed IoT expressions are valid JSONPath")
}
