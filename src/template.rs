//! Shared machinery for reading mapping templates the way the original's Json.NET deserializer
//! reads them: containers (`{"templateType", "template"}`), case-insensitive member names, unknown
//! members as errors, required members checked at the end of their object, scalar conversions
//! (`"true"` is a boolean, numbers are strings), and every problem collected with its position.

use std::fmt;

use crate::json::{JToken, Pos, Spanned, SpannedJson};

type Member = (Spanned<String>, Spanned<SpannedJson>);

/// A problem in a template, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Position in the template text.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl TemplateError {
    /// An error at `pos`.
    pub fn at(pos: Pos, message: String) -> Self {
        TemplateError { pos, message }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// True when `actual` names `expected` case-insensitively, with or without the `Template` suffix
/// (decision P10: the suffix is optional on every type name).
pub(crate) fn matches_type_name(actual: &str, expected: &str) -> bool {
    let strip = |name: &str| {
        let lower = name.to_ascii_lowercase();
        lower.strip_suffix("template").map(str::to_string).unwrap_or(lower)
    };
    strip(actual) == strip(expected)
}

/// Checks a root collection container (`CollectionContent`, `CollectionFhir`) and returns its
/// items; errors use the original's texts with `expected` as the type name.
pub(crate) fn read_collection_items<'a>(
    root: &'a Spanned<SpannedJson>,
    expected: &str,
    errors: &mut Vec<TemplateError>,
) -> &'a [Spanned<SpannedJson>] {
    let Some(container) = read_container(root, errors) else {
        return &[];
    };
    if !container
        .type_name
        .as_deref()
        .is_some_and(|name| matches_type_name(name, expected))
    {
        errors.push(TemplateError::at(
            container.type_pos.unwrap_or(root.pos),
            format!(
                "Expected TemplateType value {expected}, actual {}.",
                container.type_name.as_deref().unwrap_or("Not Found")
            ),
        ));
        return &[];
    }
    match container.template {
        Some(Spanned {
            value: SpannedJson::Array(items),
            ..
        }) => items,
        other => {
            errors.push(TemplateError::at(
                other.map_or(root.pos, |t| t.pos),
                format!("Expected an array for the template property value for template type {expected}."),
            ));
            &[]
        }
    }
}

/// `{"templateType": "…", "template": …}`; other members are ignored, as Json.NET ignores them.
pub(crate) struct Container<'a> {
    pub type_name: Option<String>,
    pub type_pos: Option<Pos>,
    pub template: Option<&'a Spanned<SpannedJson>>,
}

pub(crate) fn read_container<'a>(
    node: &'a Spanned<SpannedJson>,
    errors: &mut Vec<TemplateError>,
) -> Option<Container<'a>> {
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

/// A JSON object being read into a C# class: members are claimed case-insensitively (the last
/// duplicate wins, as in Json.NET), and whatever is left is reported as unknown.
pub(crate) struct Members<'a> {
    object_pos: Pos,
    class: &'static str,
    members: &'a [Member],
    claimed: Vec<bool>,
    /// Missing required members: Json.NET notices them when the object ends, after the errors
    /// of its members.
    pub missing: Vec<TemplateError>,
}

impl<'a> Members<'a> {
    pub fn new(node: &'a Spanned<SpannedJson>, class: &'static str) -> Option<Self> {
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
    pub fn take(&mut self, name: &str) -> Option<&'a Spanned<SpannedJson>> {
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
    pub fn require(&mut self, name: &str) -> Option<&'a Spanned<SpannedJson>> {
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
    pub fn finish(self, errors: &mut Vec<TemplateError>) -> Vec<TemplateError> {
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
pub(crate) fn scalar_text(value: &SpannedJson) -> Option<String> {
    match value {
        SpannedJson::String(text) => Some(text.clone()),
        SpannedJson::Number(JToken::Float(value)) => Some(crate::json::format_double(*value).into()),
        SpannedJson::Number(number) => Some(number.to_json()),
        SpannedJson::Bool(true) => Some("True".to_string()),
        SpannedJson::Bool(false) => Some("False".to_string()),
        _ => None,
    }
}

pub(crate) fn read_string(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<String> {
    let text = scalar_text(&value.value);
    if text.is_none() {
        errors.push(TemplateError::at(
            value.pos,
            format!("Error reading string. Unexpected token: {}.", start_token(&value.value)),
        ));
    }
    text
}

pub(crate) fn start_token(value: &SpannedJson) -> &'static str {
    match value {
        SpannedJson::Object(_) => "StartObject",
        SpannedJson::Array(_) => "StartArray",
        other => other.type_name(),
    }
}

/// Json.NET's conversion to `bool`: booleans, `"true"`/`"false"` in any case, and numbers.
pub(crate) fn read_bool(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<bool> {
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
