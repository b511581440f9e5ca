//! Building Observations from Observation groups and merging new readings into existing ones
//! (compat.md §10–§11, decisions P5).

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::group::ObservationGroup;
use super::json::{Json, Object};
use super::sampled_data::{self, Reading};
use super::template::{CodeValueTemplate, CodeableConceptTemplate, FhirCode, ValueKind, ValueTemplate};
use super::{FhirError, FhirErrorKind, SERVICE_SYSTEM};
use crate::model::{format_round_trip, parse_utc_lenient};

/// The FHIR logical ids an Observation refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceIds {
    /// `Patient/{id}`.
    pub patient: String,
    /// `Device/{id}`.
    pub device: String,
    /// `Encounter/{id}`, when one was resolved.
    pub encounter: Option<String>,
}

/// The Observation identifier `{patient}.{device}.{type}.{segment}` in the service system.
pub fn identifier_value(ids: &ResourceIds, type_name: &str, group: &ObservationGroup) -> String {
    format!("{}.{}.{}.{}", ids.patient, ids.device, type_name, group.segment)
}

/// A resource id: lowercase hex SHA-256 of `"{system}_{value}"` (an empty system gives
/// `"_{value}"`), as the original computes Observation, Patient and Device ids.
pub fn hashed_id(system: Option<&str>, value: &str) -> String {
    let digest = Sha256::digest(format!("{}_{value}", system.unwrap_or("")).as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An Observation built or merged, and how many readings were superseded by a later one in a
/// Quantity or String window (decision P5).
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The Observation.
    pub observation: Json,
    /// Readings not used because a later reading of the same window won.
    pub superseded: usize,
}

/// The outcome of merging readings into an existing Observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// Nothing changed: no write is needed.
    Unchanged,
    /// The merged Observation, `status` set to `amended`.
    Changed(Built),
}

/// Members that come after each element of an Observation, in FHIR R4 order, for inserting an
/// element into an existing resource at its place.
const AFTER_CATEGORY: &[&str] = &[
    "code",
    "subject",
    "focus",
    "encounter",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveTiming",
    "effectiveInstant",
    "issued",
    "performer",
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
    "dataAbsentReason",
    "interpretation",
    "note",
    "bodySite",
    "method",
    "specimen",
    "device",
    "referenceRange",
    "hasMember",
    "derivedFrom",
    "component",
];
const AFTER_EFFECTIVE: &[&str] = &[
    "issued",
    "performer",
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
    "dataAbsentReason",
    "interpretation",
    "note",
    "bodySite",
    "method",
    "specimen",
    "device",
    "referenceRange",
    "hasMember",
    "derivedFrom",
    "component",
];
const AFTER_VALUE: &[&str] = &[
    "dataAbsentReason",
    "interpretation",
    "note",
    "bodySite",
    "method",
    "specimen",
    "device",
    "referenceRange",
    "hasMember",
    "derivedFrom",
    "component",
];

/// The value[x] member names of an Observation (or component).
const VALUE_MEMBERS: &[&str] = &[
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
];

/// Builds a new Observation for one window (compat.md §10).
pub fn build_observation(
    template: &CodeValueTemplate,
    group: &ObservationGroup,
    type_name: &str,
    ids: &ResourceIds,
    issued: DateTime<Utc>,
) -> Result<Built, FhirError> {
    let identifier = identifier_value(ids, type_name, group);
    let mut superseded = 0;
    let value = match &template.value {
        Some(value) => create_value(value, group, (group.start, group.end), &mut superseded)?,
        None => None,
    };
    let mut components = Vec::new();
    for component in &template.components {
        let Some(name) = component.value.value_name.as_deref() else {
            continue;
        };
        if let Some((key, value)) = create_value(&component.value, group, (group.start, group.end), &mut superseded)? {
            components.push(Json::Object(
                Object::new()
                    .with("code", resolve_code(name, &component.codes))
                    .with(key, value),
            ));
        }
    }
    let mut observation = Object::new()
        .with("resourceType", Json::str("Observation"))
        .with("id", Json::str(hashed_id(Some(SERVICE_SYSTEM), &identifier)))
        .with(
            "identifier",
            Json::Array(vec![Json::Object(
                Object::new()
                    .with("system", Json::str(SERVICE_SYSTEM))
                    .with("value", Json::str(identifier)),
            )]),
        )
        .with("status", Json::str("final"))
        .with("category", categories(&template.category))
        .with("code", resolve_code(type_name, &template.codes))
        .with("subject", reference("Patient", &ids.patient))
        .with(
            "encounter",
            ids.encounter.as_deref().map(|id| reference("Encounter", id)),
        )
        .with("effectivePeriod", period(group.start, group.end))
        .with("issued", Json::str(format_instant(issued)));
    if let Some((key, value)) = value {
        observation = observation.with(key, value);
    }
    observation = observation
        .with("device", reference("Device", &ids.device))
        .with("component", (!components.is_empty()).then_some(Json::Array(components)));
    Ok(Built {
        observation: Json::Object(observation),
        superseded,
    })
}

/// Merges a window's readings into an existing Observation (compat.md §11.5): category
/// replaced, values merged (SampledData slot by slot, others replaced), components matched by
/// the service coding, effective period widened. Identity, code and `issued` are kept.
pub fn merge_observation(
    template: &CodeValueTemplate,
    group: &ObservationGroup,
    existing: &Json,
) -> Result<Merged, FhirError> {
    let Some(existing_object) = existing.as_object() else {
        return Err(not_supported("The existing Observation is not a JSON object."));
    };
    let mut merged = existing_object.clone();
    let observation_period = effective_period(existing_object)?;
    let mut superseded = 0;

    merged.remove("category");
    if let Some(category) = categories(&template.category) {
        merged.set_ordered("category", category, AFTER_CATEGORY);
    }

    if let Some(value) = &template.value
        && let Some(readings) = value.value_name.as_deref().and_then(|name| group.readings(name))
    {
        let existing_value = value_member(&merged);
        let new_value = merge_value(
            value,
            readings,
            group,
            observation_period,
            existing_value,
            &mut superseded,
        )?;
        remove_value(&mut merged);
        merged.set_ordered(value_key(&value.kind), new_value, AFTER_VALUE);
    }

    for component in &template.components {
        let Some(name) = component.value.value_name.as_deref() else {
            continue;
        };
        let Some(readings) = group.readings(name) else { continue };
        let mut list: Vec<Json> = merged
            .get("component")
            .and_then(Json::as_array)
            .map(<[Json]>::to_vec)
            .unwrap_or_default();
        match list.iter().position(|entry| has_service_coding(entry, name)) {
            Some(index) => {
                let mut entry = list[index].as_object().cloned().unwrap_or_default();
                let new_value = merge_value(
                    &component.value,
                    readings,
                    group,
                    observation_period,
                    value_member(&entry),
                    &mut superseded,
                )?;
                remove_value(&mut entry);
                entry.set(value_key(&component.value.kind), new_value);
                list[index] = Json::Object(entry);
            }
            None => {
                // As in the original, a component new to the Observation is laid on the existing
                // Observation's period.
                if let Some(new_value) =
                    value_from_readings(&component.value, readings, observation_period, &mut superseded)?
                {
                    list.push(Json::Object(
                        Object::new()
                            .with("code", resolve_code(name, &component.codes))
                            .with(value_key(&component.value.kind), new_value),
                    ));
                }
            }
        }
        merged.set("component", Json::Array(list));
    }

    let start = observation_period.0.min(group.start);
    let end = observation_period.1.max(group.end);
    merged.remove("effectiveDateTime");
    merged.set_ordered("effectivePeriod", period(start, end), AFTER_EFFECTIVE);

    let mut merged = Json::Object(merged);
    if merged == *existing {
        return Ok(Merged::Unchanged);
    }
    if let Some(object) = merged.as_object_mut() {
        object.set("status", Json::str("amended"));
    }
    Ok(Merged::Changed(Built {
        observation: merged,
        superseded,
    }))
}

/// The value[x] member of an Observation or component: its name and value.
fn value_member(holder: &Object) -> Option<(&'static str, &Json)> {
    VALUE_MEMBERS
        .iter()
        .find_map(|member| holder.get(member).map(|value| (*member, value)))
}

fn remove_value(holder: &mut Object) {
    for member in VALUE_MEMBERS {
        holder.remove(member);
    }
}

fn not_supported(message: &str) -> FhirError {
    FhirError::new(FhirErrorKind::NotSupported, message)
}

/// The existing effective time as a `(start, end)` window: `effectivePeriod` or
/// `effectiveDateTime`; times without an offset are UTC.
fn effective_period(observation: &Object) -> Result<(DateTime<Utc>, DateTime<Utc>), FhirError> {
    let time = |value: Option<&Json>| value.and_then(Json::as_str).and_then(parse_utc_lenient);
    if let Some(period) = observation.get("effectivePeriod") {
        return match (time(period.get("start")), time(period.get("end"))) {
            (Some(start), Some(end)) => Ok((start, end)),
            _ => Err(not_supported(
                "The existing Observation's effectivePeriod needs a start and an end.",
            )),
        };
    }
    if let Some(instant) = time(observation.get("effectiveDateTime")) {
        return Ok((instant, instant));
    }
    Err(not_supported(
        "The existing Observation has no effectivePeriod or effectiveDateTime to merge into.",
    ))
}

fn has_service_coding(component: &Json, value_name: &str) -> bool {
    component
        .get("code")
        .and_then(|code| code.get("coding"))
        .and_then(Json::as_array)
        .is_some_and(|codings| {
            codings.iter().any(|coding| {
                coding.get("system").and_then(Json::as_str) == Some(SERVICE_SYSTEM)
                    && coding.get("code").and_then(Json::as_str) == Some(value_name)
            })
        })
}

fn value_key(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::SampledData { .. } => "valueSampledData",
        ValueKind::Quantity { .. } => "valueQuantity",
        ValueKind::String => "valueString",
        ValueKind::CodeableConcept { .. } => "valueCodeableConcept",
    }
}

/// A new value[x] for `window`, or `None` when the group has no readings for it.
fn create_value(
    value: &ValueTemplate,
    group: &ObservationGroup,
    window: (DateTime<Utc>, DateTime<Utc>),
    superseded: &mut usize,
) -> Result<Option<(&'static str, Json)>, FhirError> {
    let Some(readings) = value.value_name.as_deref().and_then(|name| group.readings(name)) else {
        return Ok(None);
    };
    value_from_readings(value, readings, window, superseded).map(|json| json.map(|json| (value_key(&value.kind), json)))
}

fn value_from_readings(
    value: &ValueTemplate,
    readings: &[Reading],
    window: (DateTime<Utc>, DateTime<Utc>),
    superseded: &mut usize,
) -> Result<Option<Json>, FhirError> {
    Ok(match &value.kind {
        ValueKind::SampledData { default_period, unit } => Some(sampled_data_value(
            *default_period,
            unit.as_deref(),
            sampled_data_string(
                readings,
                window.0,
                window.1,
                sampled_data::period_delta(*default_period),
            )?,
        )),
        ValueKind::Quantity { unit, system, code } => {
            let text = latest(readings, superseded);
            let number = parse_dotnet_decimal(text).ok_or_else(|| {
                FhirError::new(
                    FhirErrorKind::InvalidQuantityFhirValue,
                    format!("Error encountered processing value: {text}."),
                )
            })?;
            Some(Json::Object(
                Object::new()
                    .with("value", Json::decimal(number))
                    .with("unit", fhir_string(unit))
                    .with("system", fhir_string(system))
                    .with("code", fhir_string(code)),
            ))
        }
        ValueKind::String => fhir_string(latest(readings, superseded)),
        ValueKind::CodeableConcept { text, codes } => Some(codeable_concept(text.as_deref(), codes)),
    })
}

/// The latest reading's value (decision P5: the others of the window are superseded).
fn latest<'r>(readings: &'r [Reading], superseded: &mut usize) -> &'r str {
    *superseded += readings.len().saturating_sub(1);
    readings.last().map_or("", |(_, value)| value.as_str())
}

/// Merges a window's readings into an existing value[x] (of an Observation or a component whose
/// Observation covers `observation_period`). SampledData is merged slot by slot; the other types
/// are replaced by the window's value. The existing value must be of the template's type.
fn merge_value(
    value: &ValueTemplate,
    readings: &[Reading],
    group: &ObservationGroup,
    observation_period: (DateTime<Utc>, DateTime<Utc>),
    existing: Option<(&'static str, &Json)>,
    superseded: &mut usize,
) -> Result<Json, FhirError> {
    let key = value_key(&value.kind);
    let existing_value = match existing {
        Some((found, json)) if found == key => json,
        _ => {
            // The original's texts: SampledData and CodeableConcept name the type found.
            let expected = firely_type_name(key);
            let actual = existing.map_or("null", |(found, _)| firely_type_name(found));
            return Err(not_supported(&match value.kind {
                ValueKind::SampledData { .. } | ValueKind::CodeableConcept { .. } => format!(
                    "Element existingValue expected to be of type Hl7.Fhir.Model.{expected}. Actual type is {actual}."
                ),
                ValueKind::Quantity { .. } | ValueKind::String => {
                    format!("Element existingValue expected to be of type Hl7.Fhir.Model.{expected}.")
                }
            }));
        }
    };
    let ValueKind::SampledData { default_period, .. } = &value.kind else {
        let replacement = value_from_readings(value, readings, (group.start, group.end), superseded)?;
        return Ok(replacement.unwrap_or(Json::Null));
    };
    if existing_value
        .get("dimensions")
        .and_then(json_decimal)
        .is_some_and(|dimensions| dimensions > Decimal::ONE)
    {
        return Err(not_supported(
            "Existing Hl7.Fhir.Model.SampledData value has more than 1 dimension.",
        ));
    }
    // The stored data lies on the stored period's grid from the Observation's start. (The
    // original re-reads it with the template's defaultPeriod, which corrupts stored data after
    // the template's period changes; origin, period and dimensions are kept either way.)
    let stored_period = existing_value
        .get("period")
        .and_then(json_decimal)
        .unwrap_or(*default_period);
    let delta = sampled_data::period_delta(stored_period);
    let (observation_start, observation_end) = observation_period;
    let old = existing_value
        .get("data")
        .and_then(Json::as_str)
        .map(|data| sampled_data::parse(data, observation_start, delta))
        .unwrap_or_default();
    let merged = sampled_data::merge(&old, readings);
    let start = observation_start.min(group.start);
    let end = observation_end.max(group.end);
    let mut updated = existing_value.as_object().cloned().unwrap_or_default();
    updated.set("data", Json::str(sampled_data_string(&merged, start, end, delta)?));
    Ok(Json::Object(updated))
}

/// The Firely class name of a value[x] member's type, as the original's messages show it.
fn firely_type_name(member: &str) -> &str {
    match member {
        "valueString" => "FhirString",
        "valueBoolean" => "FhirBoolean",
        "valueDateTime" => "FhirDateTime",
        other => other.strip_prefix("value").unwrap_or(other),
    }
}

/// A JSON number as a decimal.
fn json_decimal(value: &Json) -> Option<Decimal> {
    match value {
        Json::Number(text) if text.contains(['e', 'E']) => Decimal::from_scientific(text).ok(),
        Json::Number(text) => text.parse().ok(),
        _ => None,
    }
}

/// The data string of `[start, end]`, unless it would have more than
/// [`sampled_data::MAX_SLOTS`] slots.
fn sampled_data_string<S: AsRef<str>>(
    readings: &[(DateTime<Utc>, S)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period: TimeDelta,
) -> Result<String, FhirError> {
    let slots = sampled_data::slot_count(start, end, period);
    if slots > sampled_data::MAX_SLOTS {
        return Err(not_supported(&format!(
            "SampledData of {slots} slots is larger than the {} allowed; the template's defaultPeriod is too short for its periodInterval, or the existing Observation's effectivePeriod is too long.",
            sampled_data::MAX_SLOTS
        )));
    }
    Ok(sampled_data::build(readings, start, end, period))
}

fn sampled_data_value(period: Decimal, unit: Option<&str>, data: String) -> Json {
    Json::Object(
        Object::new()
            .with(
                "origin",
                Json::Object(
                    Object::new()
                        .with("value", Json::integer(0))
                        .with("unit", unit.and_then(fhir_string)),
                ),
            )
            .with("period", Json::decimal(period))
            .with("dimensions", Json::integer(1))
            .with("data", Json::str(data)),
    )
}

/// A FHIR string: trimmed (as Firely writes strings), absent when empty (FHIR forbids `""`).
fn fhir_string(text: &str) -> Option<Json> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| Json::str(trimmed))
}

fn coding(code: &FhirCode) -> Option<Json> {
    let object = Object::new()
        .with("system", code.system.as_deref().and_then(fhir_string))
        .with("code", code.code.as_deref().and_then(fhir_string))
        .with("display", code.display.as_deref().and_then(fhir_string));
    let empty = object.iter().next().is_none();
    (!empty).then_some(Json::Object(object))
}

fn codeable_concept(text: Option<&str>, codes: &[FhirCode]) -> Json {
    let codings: Vec<Json> = codes.iter().filter_map(coding).collect();
    Json::Object(
        Object::new()
            .with("coding", (!codings.is_empty()).then_some(Json::Array(codings)))
            .with("text", text.and_then(fhir_string)),
    )
}

/// `Observation.code` (or a component's): the template codings, then the service coding for
/// `name`, with `name` as text.
fn resolve_code(name: &str, codes: &[FhirCode]) -> Json {
    let mut codings: Vec<Json> = codes.iter().filter_map(coding).collect();
    codings.push(Json::Object(
        Object::new()
            .with("system", Json::str(SERVICE_SYSTEM))
            .with("code", fhir_string(name))
            .with("display", fhir_string(name)),
    ));
    Json::Object(
        Object::new()
            .with("coding", Json::Array(codings))
            .with("text", fhir_string(name)),
    )
}

fn categories(categories: &[CodeableConceptTemplate]) -> Option<Json> {
    let list: Vec<Json> = categories
        .iter()
        .map(|category| codeable_concept(category.text.as_deref(), &category.codes))
        .filter(|concept| concept.as_object().is_some_and(|object| object.iter().next().is_some()))
        .collect();
    (!list.is_empty()).then_some(Json::Array(list))
}

fn reference(resource: &str, id: &str) -> Json {
    Json::Object(Object::new().with("reference", Json::str(format!("{resource}/{id}"))))
}

fn period(start: DateTime<Utc>, end: DateTime<Utc>) -> Json {
    Json::Object(
        Object::new()
            .with("start", Json::str(format_round_trip(start)))
            .with("end", Json::str(format_round_trip(end))),
    )
}

/// `issued` as Firely writes a UTC `DateTimeOffset`: `yyyy-MM-ddTHH:mm:ss.FFFFFFF+00:00`.
fn format_instant(time: DateTime<Utc>) -> String {
    let text = crate::model::format_utc(time);
    format!("{}+00:00", text.trim_end_matches('Z'))
}

/// `decimal.Parse(text, CultureInfo.InvariantCulture)` (`NumberStyles.Number`), as .NET's
/// number parser scans: leading white space then an optional sign (no white space after it);
/// digits with `,` group separators after the first digit and one decimal point; then white space
/// and, if none led, a sign, in any order; trailing NULs are ignored. White space is only
/// U+0009–U+000D and U+0020. No exponent. The scale is kept (`98.60`).
pub fn parse_dotnet_decimal(text: &str) -> Option<Decimal> {
    let is_white = |c: char| c == ' ' || ('\u{9}'..='\u{d}').contains(&c);
    let sign_of = |c: char| match c {
        '-' => Some(true),
        '+' => Some(false),
        _ => None,
    };
    let mut chars = text.chars().peekable();
    while chars.next_if(|&c| is_white(c)).is_some() {}
    let mut negative = chars.next_if(|&c| sign_of(c).is_some()).and_then(sign_of);
    let (mut integer, mut fraction) = (String::new(), String::new());
    let mut seen_point = false;
    while let Some(&c) = chars.peek() {
        match c {
            '0'..='9' if seen_point => fraction.push(c),
            '0'..='9' => integer.push(c),
            ',' if !seen_point && !integer.is_empty() => {}
            '.' if !seen_point => seen_point = true,
            _ => break,
        }
        chars.next();
    }
    if integer.is_empty() && fraction.is_empty() {
        return None;
    }
    while let Some(&c) = chars.peek() {
        if is_white(c) {
        } else if let (None, Some(sign)) = (negative, sign_of(c)) {
            negative = Some(sign);
        } else {
            break;
        }
        chars.next();
    }
    if !chars.all(|c| c == '\0') {
        return None;
    }
    let digits = format!(
        "{}{}{}",
        if integer.is_empty() { "0" } else { &integer },
        if fraction.is_empty() { "" } else { "." },
        fraction
    );
    let mut number: Decimal = digits.parse().ok()?;
    if negative == Some(true) && !number.is_zero() {
        number.set_sign_negative(true);
    }
    Some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_UNDERSCORE_ABC: &str = "999d81eb05d9aee77afd778f5525fa09e35c8f56adc487f2533460a480993efd";
    const SHA256_X_UNDERSCORE_ABC: &str = "52b0ba5cdfee57a2890142317adbbc31f619f611a28a64e913017c13d781cfb6";

    #[test]
    fn ids_are_sha256_of_system_and_value() {
        let id = hashed_id(Some(SERVICE_SYSTEM), "p.d.heartrate.20190101000000Z.20190101005959Z");
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // Known SHA-256 digests of "_abc" and of "x_abc" (computed with sha256sum).
        assert_eq!(hashed_id(None, "abc"), SHA256_UNDERSCORE_ABC);
        assert_eq!(hashed_id(Some("x"), "abc"), SHA256_X_UNDERSCORE_ABC);
    }

    #[test]
    fn parses_decimals_like_dotnet() {
        let ok = |text: &str| parse_dotnet_decimal(text).map(|d| d.to_string());
        assert_eq!(ok("72").as_deref(), Some("72"));
        assert_eq!(ok("98.60").as_deref(), Some("98.60"));
        assert_eq!(ok(" 72 ").as_deref(), Some("72"));
        assert_eq!(ok("72-").as_deref(), Some("-72"));
        assert_eq!(ok("+1,000.5").as_deref(), Some("1000.5"));
        assert_eq!(ok(".5").as_deref(), Some("0.5"));
        assert_eq!(ok("5.").as_deref(), Some("5"));
        assert_eq!(ok("-0").as_deref(), Some("0"));
        // The trailing sign may follow white space, and white space may follow it.
        assert_eq!(ok("5 -").as_deref(), Some("-5"));
        assert_eq!(ok(" 5 - ").as_deref(), Some("-5"));
        assert_eq!(ok("1,000 +").as_deref(), Some("1000"));
        assert_eq!(ok("5,,0").as_deref(), Some("50"));
        assert_eq!(ok("\t5\r\n").as_deref(), Some("5"));
        assert_eq!(ok("5\0\0").as_deref(), Some("5"));
        for bad in [
            "1e3", "NaN", "Infinity", "abc", "", "-", "1.2.3", "--1", "(1)", "1 2", ",1", ".", "- 5", "-5-", "5 - -",
            "\u{a0}5", "5\u{a0}", "5\0x",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_is_written_like_firely() {
        let time = parse_utc_lenient("2023-03-13T22:46:05.1234567Z").unwrap();
        assert_eq!(format_instant(time), "2023-03-13T22:46:05.1234567+00:00");
        let time = parse_utc_lenient("2023-03-13T22:46:05Z").unwrap();
        assert_eq!(format_instant(time), "2023-03-13T22:46:05+00:00");
    }
}
