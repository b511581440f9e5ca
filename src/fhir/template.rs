//! FHIR mapping templates (compat.md §9): a `CollectionFhir` of `CodeValueFhir` templates, read
//! with the original's Json.NET rules and checked strictly. Problems the original only found
//! while converting data (an unsupported `periodInterval`, a SampledData value without
//! `defaultPeriod`, a component without `value`) are reported when the template loads.

use rust_decimal::Decimal;

use crate::json::{JToken, Spanned, SpannedJson, parse_spanned};
use crate::template::{
    Members, TemplateError, matches_type_name, read_collection_items, read_container, read_string, scalar_text,
    start_token,
};

/// A validated FHIR mapping: `CodeValueFhir` templates looked up by type name, case-insensitively.
#[derive(Debug, Clone)]
pub struct FhirTemplateSet {
    templates: Vec<CodeValueTemplate>,
}

/// One `CodeValueFhir` template.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeValueTemplate {
    /// The Measurement type it maps.
    pub type_name: String,
    /// How Measurements are grouped into Observations.
    pub period_interval: PeriodInterval,
    /// `Observation.category`.
    pub category: Vec<CodeableConceptTemplate>,
    /// `Observation.code` codings (the service coding is added after them).
    pub codes: Vec<FhirCode>,
    /// `Observation.value[x]`.
    pub value: Option<ValueTemplate>,
    /// `Observation.component`.
    pub components: Vec<ComponentTemplate>,
}

/// A coding as written in a template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FhirCode {
    /// `Coding.code`.
    pub code: Option<String>,
    /// `Coding.system`.
    pub system: Option<String>,
    /// `Coding.display`.
    pub display: Option<String>,
}

/// A codeable concept as written in a template (`category`, CodeableConcept values).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CodeableConceptTemplate {
    /// `CodeableConcept.text`.
    pub text: Option<String>,
    /// `CodeableConcept.coding`.
    pub codes: Vec<FhirCode>,
}

/// A component: its codes and value.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentTemplate {
    /// Component codings (the service coding for the value name is added after them).
    pub codes: Vec<FhirCode>,
    /// The component's value.
    pub value: ValueTemplate,
}

/// Observation grouping (`periodInterval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodInterval {
    /// `-1`: one Observation per correlation id.
    CorrelationId,
    /// `0` (default): one Observation per instant.
    Single,
    /// `60`: one Observation per UTC clock hour.
    Hourly,
    /// `1440`: one Observation per UTC day.
    Daily,
}

/// A value mapping: which Measurement property feeds it, and as which FHIR type.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueTemplate {
    /// The Measurement property name; without one the value is never produced.
    pub value_name: Option<String>,
    /// The FHIR type and its settings.
    pub kind: ValueKind,
}

/// The four value types.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// `valueSampledData`: readings laid on a time grid.
    SampledData {
        /// Milliseconds between slots.
        default_period: Decimal,
        /// `origin.unit`.
        unit: Option<String>,
    },
    /// `valueQuantity`.
    Quantity {
        /// `Quantity.unit`.
        unit: String,
        /// `Quantity.system`.
        system: String,
        /// `Quantity.code`.
        code: String,
    },
    /// `valueString`.
    String,
    /// `valueCodeableConcept`: presence of a reading marks the concept.
    CodeableConcept {
        /// `CodeableConcept.text`.
        text: Option<String>,
        /// `CodeableConcept.coding`.
        codes: Vec<FhirCode>,
    },
}

impl FhirTemplateSet {
    /// Parses and validates a FHIR mapping template, reporting every error with its position.
    pub fn parse(text: &str) -> Result<Self, Vec<TemplateError>> {
        let root = parse_spanned(text).map_err(|(pos, message)| vec![TemplateError::at(pos, message)])?;
        let mut errors = Vec::new();
        let mut templates: Vec<CodeValueTemplate> = Vec::new();
        for item in read_collection_items(&root, "CollectionFhirTemplate", &mut errors) {
            let Some(template) = read_code_value(item, &mut errors) else {
                continue;
            };
            if templates
                .iter()
                .any(|t| t.type_name.eq_ignore_ascii_case(&template.type_name))
            {
                errors.push(TemplateError::at(
                    item.pos,
                    format!("Duplicate template defined for type name: '{}'", template.type_name),
                ));
            } else {
                templates.push(template);
            }
        }
        if errors.is_empty() {
            Ok(FhirTemplateSet { templates })
        } else {
            Err(errors)
        }
    }

    /// The template for a Measurement type, matched case-insensitively.
    pub fn get(&self, type_name: &str) -> Option<&CodeValueTemplate> {
        self.templates
            .iter()
            .find(|t| t.type_name.eq_ignore_ascii_case(type_name))
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// True when the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

const CODE_VALUE: &str = "CodeValueFhirTemplate";

fn read_code_value(item: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<CodeValueTemplate> {
    let container = read_container(item, errors)?;
    let type_pos = container.type_pos.unwrap_or(item.pos);
    let type_name = container.type_name.as_deref().unwrap_or_default();
    if !matches_type_name(type_name, CODE_VALUE) {
        errors.push(TemplateError::at(
            type_pos,
            format!("Expected TemplateType value {CODE_VALUE}, actual {type_name}."),
        ));
        return None;
    }
    let body = match container.template {
        Some(
            body @ Spanned {
                value: SpannedJson::Object(_),
                ..
            },
        ) => body,
        _ => {
            errors.push(TemplateError::at(
                type_pos,
                format!("Expected an object for the template property value for template type {CODE_VALUE}."),
            ));
            return None;
        }
    };
    let first_error = errors.len();
    let mut members = Members::new(body, CODE_VALUE)?;
    let type_name = members.require("TypeName").and_then(|v| read_string(v, errors));
    if let Some(name) = type_name.as_deref().filter(|name| name.trim().is_empty()) {
        errors.push(TemplateError::at(
            item.pos,
            format!("Empty type name is not allowed: '{name}'"),
        ));
    }
    let period_interval = match members.take("PeriodInterval") {
        Some(value) => read_period_interval(value, errors),
        None => Some(PeriodInterval::Single),
    };
    let category = match members.take("Category") {
        Some(value) => read_list(value, "FhirCodeableConcept", errors, read_codeable_concept),
        None => Some(Vec::new()),
    };
    let codes = members
        .require("Codes")
        .and_then(|value| read_list(value, "FhirCode", errors, read_code));
    let value = match members.take("Value") {
        Some(value) => read_value(value, errors).map(Some),
        None => Some(None),
    };
    let components = match members.take("Components") {
        Some(value) => read_list(value, "CodeValueMapping", errors, read_component),
        None => Some(Vec::new()),
    };
    let mut missing = members.finish(errors);
    errors[first_error..].sort_by_key(|error| error.pos);
    errors.append(&mut missing);
    if errors.len() > first_error {
        return None;
    }
    Some(CodeValueTemplate {
        type_name: type_name?,
        period_interval: period_interval?,
        category: category?,
        codes: codes?,
        value: value?,
        components: components?,
    })
}

/// An array of objects, each read by `read`; `null` is an empty list.
fn read_list<T>(
    value: &Spanned<SpannedJson>,
    class: &'static str,
    errors: &mut Vec<TemplateError>,
    read: impl Fn(&Spanned<SpannedJson>, Members<'_>, &mut Vec<TemplateError>) -> Option<T>,
) -> Option<Vec<T>> {
    let SpannedJson::Array(items) = &value.value else {
        errors.push(TemplateError::at(
            value.pos,
            format!(
                "Error reading a list of {class}. Unexpected token: {}.",
                start_token(&value.value)
            ),
        ));
        return None;
    };
    let mut list = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        let Some(members) = Members::new(item, class) else {
            errors.push(TemplateError::at(
                item.pos,
                format!(
                    "Expected an object of type '{class}', found {}.",
                    item.value.type_name()
                ),
            ));
            ok = false;
            continue;
        };
        match read(item, members, errors) {
            Some(entry) => list.push(entry),
            None => ok = false,
        }
    }
    ok.then_some(list)
}

fn optional_string(members: &mut Members<'_>, name: &str, errors: &mut Vec<TemplateError>) -> Option<Option<String>> {
    match members.take(name) {
        Some(value) => read_string(value, errors).map(Some),
        None => Some(None),
    }
}

fn read_code(_: &Spanned<SpannedJson>, mut members: Members<'_>, errors: &mut Vec<TemplateError>) -> Option<FhirCode> {
    let code = optional_string(&mut members, "Code", errors);
    let system = optional_string(&mut members, "System", errors);
    let display = optional_string(&mut members, "Display", errors);
    let mut missing = members.finish(errors);
    errors.append(&mut missing);
    Some(FhirCode {
        code: code?,
        system: system?,
        display: display?,
    })
}

fn read_codeable_concept(
    _: &Spanned<SpannedJson>,
    mut members: Members<'_>,
    errors: &mut Vec<TemplateError>,
) -> Option<CodeableConceptTemplate> {
    let text = optional_string(&mut members, "Text", errors);
    let codes = match members.take("Codes") {
        Some(value) => read_list(value, "FhirCode", errors, read_code),
        None => Some(Vec::new()),
    };
    let mut missing = members.finish(errors);
    errors.append(&mut missing);
    Some(CodeableConceptTemplate {
        text: text?,
        codes: codes?,
    })
}

fn read_component(
    item: &Spanned<SpannedJson>,
    mut members: Members<'_>,
    errors: &mut Vec<TemplateError>,
) -> Option<ComponentTemplate> {
    let codes = members
        .require("Codes")
        .and_then(|value| read_list(value, "FhirCode", errors, read_code));
    let value = match members.take("Value") {
        Some(value) => read_value(value, errors),
        None => {
            // The original fails on every Observation built from such a component.
            errors.push(TemplateError::at(item.pos, "A component needs a value.".to_string()));
            None
        }
    };
    let mut missing = members.finish(errors);
    errors.append(&mut missing);
    Some(ComponentTemplate {
        codes: codes?,
        value: value?,
    })
}

/// `ObservationPeriodInterval`: the numbers -1, 0, 60, 1440 or their names, in any case.
fn read_period_interval(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<PeriodInterval> {
    let interval = match &value.value {
        SpannedJson::Number(JToken::Integer(-1)) => Some(PeriodInterval::CorrelationId),
        SpannedJson::Number(JToken::Integer(0)) => Some(PeriodInterval::Single),
        SpannedJson::Number(JToken::Integer(60)) => Some(PeriodInterval::Hourly),
        SpannedJson::Number(JToken::Integer(1440)) => Some(PeriodInterval::Daily),
        SpannedJson::String(name) => match name.trim().to_ascii_lowercase().as_str() {
            "correlationid" | "-1" => Some(PeriodInterval::CorrelationId),
            "single" | "0" => Some(PeriodInterval::Single),
            "hourly" | "60" => Some(PeriodInterval::Hourly),
            "daily" | "1440" => Some(PeriodInterval::Daily),
            _ => None,
        },
        _ => None,
    };
    if interval.is_none() {
        let shown = scalar_text(&value.value).unwrap_or_else(|| start_token(&value.value).to_string());
        errors.push(TemplateError::at(
            value.pos,
            format!(
                "ObservationPeriodInterval {shown} is not supported. Use -1 (CorrelationId), 0 (Single), 60 (Hourly) or 1440 (Daily)."
            ),
        ));
    }
    interval
}

/// A `FhirValueType`: `valueType` (looked up as `ValueType` or `valueType` only, as the original
/// does) picks the subclass; other members not used by it are ignored.
fn read_value(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<ValueTemplate> {
    let SpannedJson::Object(pairs) = &value.value else {
        errors.push(TemplateError::at(
            value.pos,
            format!("Expected a value object, found {}.", value.value.type_name()),
        ));
        return None;
    };
    let member = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key.value.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .filter(|value| !matches!(value.value, SpannedJson::Null))
    };
    let Some((_, kind_value)) = pairs
        .iter()
        .rev()
        .find(|(key, _)| key.value == "ValueType" || key.value == "valueType")
    else {
        errors.push(TemplateError::at(
            value.pos,
            "Property ValueType is missing.".to_string(),
        ));
        return None;
    };
    let kind_name = scalar_text(&kind_value.value).unwrap_or_default();
    let text = |name: &str, errors: &mut Vec<TemplateError>| member(name).and_then(|v| read_string(v, errors));
    let value_name = text("ValueName", errors);
    let kind = match kind_name.to_ascii_lowercase().as_str() {
        "sampleddata" => {
            let Some(period) = member("DefaultPeriod") else {
                errors.push(TemplateError::at(
                    value.pos,
                    "A SampledData value needs defaultPeriod (milliseconds between samples).".to_string(),
                ));
                return None;
            };
            let default_period = read_decimal(period, errors)?;
            if default_period <= Decimal::ZERO {
                errors.push(TemplateError::at(
                    period.pos,
                    format!("defaultPeriod must be a positive number of milliseconds, found {default_period}."),
                ));
                return None;
            }
            ValueKind::SampledData {
                default_period,
                unit: text("Unit", errors),
            }
        }
        "quantity" => {
            let required = |name: &str, errors: &mut Vec<TemplateError>| {
                let found = text(name, errors);
                if found.is_none() {
                    errors.push(TemplateError::at(
                        value.pos,
                        format!("Required property '{name}' not found in JSON."),
                    ));
                }
                found
            };
            let unit = required("Unit", errors);
            let system = required("System", errors);
            let code = required("Code", errors);
            ValueKind::Quantity {
                unit: unit?,
                system: system?,
                code: code?,
            }
        }
        "string" => ValueKind::String,
        "codeableconcept" => {
            let codes = match member("Codes") {
                Some(codes) => read_list(codes, "FhirCode", errors, read_code)?,
                None => {
                    errors.push(TemplateError::at(
                        value.pos,
                        "A CodeableConcept value needs codes.".to_string(),
                    ));
                    return None;
                }
            };
            ValueKind::CodeableConcept {
                text: text("Text", errors),
                codes,
            }
        }
        _ => {
            errors.push(TemplateError::at(
                kind_value.pos,
                format!("{kind_name} is not a value type: use SampledData, Quantity, String or CodeableConcept."),
            ));
            return None;
        }
    };
    Some(ValueTemplate { value_name, kind })
}

/// A `decimal`: a JSON number (its text, so `1000.0` keeps its scale) or a numeric string.
fn read_decimal(value: &Spanned<SpannedJson>, errors: &mut Vec<TemplateError>) -> Option<Decimal> {
    let parsed = match &value.value {
        SpannedJson::Number(JToken::Integer(number)) => Some(Decimal::from(*number)),
        SpannedJson::Number(JToken::Float(number)) => Decimal::from_scientific(&format!("{number:e}")).ok(),
        SpannedJson::String(text) => text.trim().parse::<Decimal>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        let shown = scalar_text(&value.value).unwrap_or_else(|| start_token(&value.value).to_string());
        errors.push(TemplateError::at(
            value.pos,
            format!("Could not convert {shown} to a decimal."),
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOOD_PRESSURE: &str = r#"{
  "templateType": "CollectionFhir",
  "template": [
    {
      "templateType": "CodeValueFhir",
      "template": {
        "codes": [{ "code": "85354-9", "system": "http://loinc.org", "display": "Blood pressure panel" }],
        "periodInterval": 60,
        "typeName": "bloodpressure",
        "category": [{ "text": "Vital signs", "codes": [{ "code": "vital-signs", "system": "http://terminology.hl7.org/CodeSystem/observation-category" }] }],
        "components": [
          {
            "codes": [{ "code": "8480-6", "system": "http://loinc.org", "display": "Systolic blood pressure" }],
            "value": { "defaultPeriod": 5000, "unit": "mmHg", "valueName": "systolic", "valueType": "SampledData" }
          },
          {
            "codes": [{ "code": "8462-4", "system": "http://loinc.org", "display": "Diastolic blood pressure" }],
            "value": { "valueName": "diastolic", "valueType": "Quantity", "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" }
          }
        ]
      }
    }
  ]
}"#;

    #[test]
    fn reads_a_complete_template() {
        let set = FhirTemplateSet::parse(BLOOD_PRESSURE).unwrap();
        let template = set.get("BloodPressure").unwrap();
        assert_eq!(template.period_interval, PeriodInterval::Hourly);
        assert_eq!(template.codes[0].code.as_deref(), Some("85354-9"));
        assert_eq!(template.category[0].codes[0].code.as_deref(), Some("vital-signs"));
        assert_eq!(template.components.len(), 2);
        assert_eq!(
            template.components[0].value.kind,
            ValueKind::SampledData {
                default_period: Decimal::from(5000),
                unit: Some("mmHg".into())
            }
        );
        assert!(set.get("heartrate").is_none());
    }

    #[test]
    fn reports_every_problem_with_positions() {
        let text = r#"{"templateType":"CollectionFhir","template":[
 {"templateType":"CodeValueFhir","template":{"typeName":"a","codez":[],"periodInterval":30}},
 {"templateType":"CodeValueFhir","template":{"typeName":"b","codes":[],"value":{"valueName":"x"}}},
 {"templateType":"CodeValueFhir","template":{"typeName":"c","codes":[],"value":{"valueType":"Integer"}}},
 {"templateType":"CodeValueFhir","template":{"typeName":"d","codes":[],"value":{"valueType":"Quantity","unit":"u"}}},
 {"templateType":"Nope","template":{}}
]}"#;
        let errors = FhirTemplateSet::parse(text).unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.pos, e.message)).collect();
        assert_eq!(
            messages,
            [
                "2:61: Could not find member 'codez' on object of type 'CodeValueFhirTemplate'.",
                "2:89: ObservationPeriodInterval 30 is not supported. Use -1 (CorrelationId), 0 (Single), 60 (Hourly) or 1440 (Daily).",
                "2:45: Required property 'Codes' not found in JSON.",
                "3:80: Property ValueType is missing.",
                "4:93: Integer is not a value type: use SampledData, Quantity, String or CodeableConcept.",
                "5:80: Required property 'System' not found in JSON.",
                "5:80: Required property 'Code' not found in JSON.",
                "6:18: Expected TemplateType value CodeValueFhirTemplate, actual Nope.",
            ]
        );
    }

    #[test]
    fn type_names_must_be_unique_and_not_blank() {
        let text = r#"{"templateType":"CollectionFhir","template":[
 {"templateType":"CodeValueFhir","template":{"typeName":"hr","codes":[]}},
 {"templateType":"CodeValueFhir","template":{"typeName":"HR","codes":[]}},
 {"templateType":"CodeValueFhir","template":{"typeName":" ","codes":[]}}
]}"#;
        let errors = FhirTemplateSet::parse(text).unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.pos, e.message)).collect();
        assert_eq!(
            messages,
            [
                "3:2: Duplicate template defined for type name: 'HR'",
                "4:2: Empty type name is not allowed: ' '"
            ]
        );
    }

    #[test]
    fn root_errors_use_the_original_texts() {
        let errors = FhirTemplateSet::parse(r#"{"templateType":"CollectionContent","template":[]}"#).unwrap_err();
        assert_eq!(
            errors[0].message,
            "Expected TemplateType value CollectionFhirTemplate, actual CollectionContent."
        );
        let errors = FhirTemplateSet::parse(r#"{"templateType":"CollectionFhirTemplate","template":{}}"#).unwrap_err();
        assert_eq!(
            errors[0].message,
            "Expected an array for the template property value for template type CollectionFhirTemplate."
        );
        assert!(FhirTemplateSet::parse(r#"{"templateType":"collectionfhir","template":[]}"#).is_ok());
    }
}
