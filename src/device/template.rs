//! Reading device-mapping templates (compat.md §2, §3) with Json.NET's rules: member names match
//! case-insensitively, unknown members are errors, required members are checked, `"true"` reads
//! as a boolean, and every problem is collected with its position.

use super::{ContentTemplate, TemplateError, TemplateKind, ValueTemplate};
use crate::expr::{Expression, Language};
use crate::json::{JToken, KeyDigest, Pos, Spanned, SpannedJson};

type Member = (Spanned<String>, Spanned<SpannedJson>);

/// The fixed expressions of the IoT Hub template.
pub(super) const IOT_DEVICE_ID: &str = "$.SystemProperties.iothub-connection-device-id";
pub(super) const IOT_CREATION_TIME: &str = "$.Properties.iothub-creation-time-utc";
pub(super) const IOT_ENQUEUED_TIME: &str = "$.SystemProperties.iothub-enqueuedtime";
/// The fixed expressions of the IoT Central template.
pub(super) const IOT_CENTRAL_DEVICE_ID: &str = "$.deviceId";
pub(super) const IOT_CENTRAL_TIMESTAMP: &str = "$.enqueuedTime";

/// True when `actual` names `expected` case-insensitively, with or without the `Template` suffix
/// (decision P10: the suffix is optional on every type name).
pub(super) fn matches_type_name(actual: &str, expected: &str) -> bool {
    let strip = |name: &str| {
        let lower = name.to_ascii_lowercase();
        lower.strip_suffix("template").map(str::to_string).unwrap_or(lower)
    };
    strip(actual) == strip(expected)
}

/// Reads the root `CollectionContent` container into templates, collecting every error.
pub(super) fn read_collection(root: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Vec<ContentTemplate> {
    let Some(container) = read_container(root, errors) else {
        return Vec::new();
    };
    if !container
        .type_name
        .as_deref()
        .is_some_and(|name| matches_type_name(name, "CollectionContentTemplate"))
    {
        errors.push(TemplateError::at(
            container.type_pos.unwrap_or(root.pos),
            format!(
                "Expected TemplateType value CollectionContentTemplate, actual {}.",
                container.type_name.as_deref().unwrap_or("Not Found")
            ),
        ));
        return Vec::new();
    }
    let Some(Spanned {
        value: SpannedJson::Array(items),
        ..
    }) = container.template
    else {
        errors.push(TemplateError::at(
            container.template.map_or(root.pos, |t| t.pos),
            "Expected an array for the template property value for template type CollectionContentTemplate.".into(),
        ));
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| read_content_template(item, errors))
        .collect()
}

/// `{"templateType": "…", "template": …}`; other members are ignored, as Json.NET ignores them.
struct Container<'a> {
    type_name: Option<String>,
    type_pos: Option<Pos>,
    template: Option<&'a Spanned<SpannedJson>>,
}

fn read_container<'a>(node: &'a Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<Container<'a>> {
    let SpannedJson::Object(members) = &node.value else {
        errors.push(TemplateError::at(
            node.pos,
            format!(
                "Expected a template object with templateType and template, found {}.",
                node.value.type_name()
            ),
        ));
        return None;
    };
    let find = |name: &str| {
        members
            .iter()
            .rev()
            .find(|(key, _)| key.value.eq_ignore_ascii_case(name))
    };
    let type_member = find("templateType");
    let type_name = match type_member.map(|(_, value)| &value.value) {
        None | Some(SpannedJson::Null) => None,
        Some(SpannedJson::String(name)) => Some(name.clone()),
        Some(other) => Some(scalar_text(other).unwrap_or_default()),
    };
    Some(Container {
        type_name,
        type_pos: type_member.map(|(_, value)| value.pos),
        template: find("template").map(|(_, value)| value),
    })
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

/// A JSON object being read into a C# class: members are claimed case-insensitively (the last
/// duplicate wins, as in Json.NET), and whatever is left is reported as unknown.
struct Members<'a> {
    object_pos: Pos,
    class: &'static str,
    members: &'a [Member],
    claimed: Vec<bool>,
    /// Missing required members: Json.NET notices them when the object ends, after the errors
    /// of its members.
    missing: Vec<TemplateError>,
}

impl<'a> Members<'a> {
    fn new(node: &'a Spanned<SpannedJson>, class: &'static str) -> Option<Self> {
        match &node.value {
            SpannedJson::Object(members) => Some(Members {
                object_pos: node.pos,
                class,
                members,
                claimed: vec![false; members.len()],
                missing: Vec::new(),
            }),
            _ => None,
        }
    }

    /// The member named `name` (any case), or `None` when absent or null.
    fn take(&mut self, name: &str) -> Option<&'a Spanned<SpannedJson>> {
        let mut found = None;
        for (index, (key, value)) in self.members.iter().enumerate() {
            if key.value.eq_ignore_ascii_case(name) {
                self.claimed[index] = true;
                found = Some(value);
            }
        }
        found.filter(|value| !matches!(value.value, SpannedJson::Null))
    }

    /// A required member: records Json.NET's message when it is missing or null.
    fn require(&mut self, name: &str) -> Option<&'a Spanned<SpannedJson>> {
        let present = self.members.iter().any(|(key, _)| key.value.eq_ignore_ascii_case(name));
        let value = self.take(name);
        if value.is_none() {
            let message = if present {
                format!("Required property '{name}' expects a value but got null.")
            } else {
                format!("Required property '{name}' not found in JSON.")
            };
            self.missing.push(TemplateError::at(self.object_pos, message));
        }
        value
    }

    /// Reports every member nobody claimed, and returns the missing required members.
    fn finish(self, errors: &mut Vec<TemplateError>) -> Vec<TemplateError> {
        for ((key, _), claimed) in self.members.iter().zip(&self.claimed) {
            if !claimed {
                errors.push(TemplateError::at(
                    key.pos,
                    format!(
                        "Could not find member '{}' on object of type '{}'.",
                        key.value, self.class
                    ),
                ));
            }
        }
        self.missing
    }
}

/// The text Json.NET assigns to a string property from a scalar.
fn scalar_text(value: &SpannedJson) -> Option<String> {
    match value {
        SpannedJson::String(text) => Some(text.clone()),
        SpannedJson::Number(JToken::Float(value)) => Some(crate::json::format_double(*value)),
        SpannedJson::Number(number) => Some(number.to_json()),
        SpannedJson::Bool(true) => Some("True".to_string()),
        SpannedJson::Bool(false) => Some("False".to_string()),
        _ => None,
    }
}

fn read_string(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<String> {
    let text = scalar_text(&value.value);
    if text.is_none() {
        errors.push(TemplateError::at(
            value.pos,
            format!("Error reading string. Unexpected token: {}.", start_token(&value.value)),
        ));
    }
    text
}

fn start_token(value: &SpannedJson) -> &'static str {
    match value {
        SpannedJson::Object(_) => "StartObject",
        SpannedJson::Array(_) => "StartArray",
        other => other.type_name(),
    }
}

/// Json.NET's conversion to `bool`: booleans, `"true"`/`"false"` in any case, and numbers.
fn read_bool(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<bool> {
    let result = match &value.value {
        SpannedJson::Bool(flag) => Some(*flag),
        SpannedJson::String(text) if text.trim().eq_ignore_ascii_case("true") => Some(true),
        SpannedJson::String(text) if text.trim().eq_ignore_ascii_case("false") => Some(false),
        SpannedJson::Number(JToken::Integer(number)) => Some(*number != 0),
        SpannedJson::Number(JToken::Float(number)) => Some(*number != 0.0),
        _ => None,
    };
    if result.is_none() {
        let shown = scalar_text(&value.value).unwrap_or_else(|| start_token(&value.value).to_string());
        errors.push(TemplateError::at(
            value.pos,
            format!("Could not convert string to boolean: {shown}."),
        ));
    }
    result
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
        // Fixed by the template type; supplying them is an unknown member, as in the original.
        TemplateKind::IotJsonPath | TemplateKind::IotCentralJsonPath => (None, None),
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
                        name,
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
        type_name: type_name?,
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
