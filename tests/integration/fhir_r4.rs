//! Structural validation of FHIR R4 Observations, written from the R4 specification
//! (hl7.org/fhir/R4/observation.html, datatypes.html, json.html): required elements, element
//! types, value formats, no empty or null values, no unknown members. Used on every Observation
//! the tests produce, so output that a FHIR server would reject fails here first.

use serde_json::{Map, Value};

/// Members of Observation (R4) this project may emit or receive back from a server.
const OBSERVATION_MEMBERS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "identifier",
    "basedOn",
    "partOf",
    "status",
    "category",
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

const STATUS_CODES: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];

/// Checks one Observation; returns every problem found (empty when valid).
pub fn observation_problems(observation: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = Checker {
        problems: &mut problems,
    };
    check.no_empty_values("Observation", observation);
    let Some(object) = observation.as_object() else {
        return vec!["not an object".into()];
    };
    for key in object.keys() {
        if !OBSERVATION_MEMBERS.contains(&key.as_str()) {
            check.fail(format!("unknown member {key}"));
        }
    }
    check.equal("resourceType", object.get("resourceType"), "Observation");
    if let Some(id) = object.get("id") {
        check.id("id", id);
    }
    match object.get("status").and_then(Value::as_str) {
        Some(status) if STATUS_CODES.contains(&status) => {}
        other => check.fail(format!(
            "status must be one of the ObservationStatus codes, found {other:?}"
        )),
    }
    match object.get("code") {
        Some(code) => check.codeable_concept("code", code),
        None => check.fail("code is required".into()),
    }
    check.array_of(object, "identifier", Checker::identifier);
    check.array_of(object, "category", Checker::codeable_concept);
    for reference in ["subject", "device", "encounter"] {
        if let Some(value) = object.get(reference) {
            check.reference(reference, value);
        }
    }
    if let Some(period) = object.get("effectivePeriod") {
        check.period("effectivePeriod", period);
    }
    if let Some(time) = object.get("effectiveDateTime") {
        check.date_time("effectiveDateTime", time);
    }
    if let Some(issued) = object.get("issued") {
        check.instant("issued", issued);
    }
    check.value_x("Observation", object);
    check.array_of(object, "component", |check, path, component| {
        let Some(component) = component.as_object() else {
            return check.fail(format!("{path} must be an object"));
        };
        for key in component.keys() {
            if key != "code" && !key.starts_with("value") && key != "extension" {
                check.fail(format!("{path}: unknown member {key}"));
            }
        }
        match component.get("code") {
            Some(code) => check.codeable_concept(&format!("{path}.code"), code),
            None => check.fail(format!("{path}.code is required")),
        }
        check.value_x(path, component);
    });
    problems
}

struct Checker<'p> {
    problems: &'p mut Vec<String>,
}

impl Checker<'_> {
    fn fail(&mut self, problem: String) {
        self.problems.push(problem);
    }

    fn equal(&mut self, path: &str, value: Option<&Value>, expected: &str) {
        if value.and_then(Value::as_str) != Some(expected) {
            self.fail(format!("{path} must be {expected:?}, found {value:?}"));
        }
    }

    /// FHIR JSON: no nulls, no empty strings, objects or arrays; strings without surrounding
    /// white space.
    fn no_empty_values(&mut self, path: &str, value: &Value) {
        match value {
            Value::Null => self.fail(format!("{path} is null")),
            Value::String(text) if text.trim().is_empty() => self.fail(format!("{path} is an empty string")),
            Value::String(text) if text.trim() != text => self.fail(format!("{path} has surrounding white space")),
            Value::Array(items) if items.is_empty() => self.fail(format!("{path} is an empty array")),
            Value::Object(members) if members.is_empty() => self.fail(format!("{path} is an empty object")),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.no_empty_values(&format!("{path}[{index}]"), item);
                }
            }
            Value::Object(members) => {
                for (key, member) in members {
                    self.no_empty_values(&format!("{path}.{key}"), member);
                }
            }
            _ => {}
        }
    }

    fn array_of(&mut self, object: &Map<String, Value>, name: &str, mut each: impl FnMut(&mut Self, &str, &Value)) {
        match object.get(name) {
            None => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    each(self, &format!("{name}[{index}]"), item);
                }
            }
            Some(_) => self.fail(format!("{name} must be an array")),
        }
    }

    fn id(&mut self, path: &str, value: &Value) {
        let ok = value.as_str().is_some_and(|id| {
            (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        });
        if !ok {
            self.fail(format!("{path} is not a FHIR id: {value}"));
        }
    }

    fn string(&mut self, path: &str, value: Option<&Value>) {
        if let Some(value) = value
            && !value.is_string()
        {
            self.fail(format!("{path} must be a string"));
        }
    }

    fn uri(&mut self, path: &str, value: Option<&Value>) {
        self.string(path, value);
        if let Some(text) = value.and_then(Value::as_str)
            && text.chars().any(char::is_whitespace)
        {
            self.fail(format!("{path} is not a uri: {text:?}"));
        }
    }

    fn code(&mut self, path: &str, value: Option<&Value>) {
        self.string(path, value);
        if let Some(text) = value.and_then(Value::as_str)
            && (text.contains("  ") || text.contains(['\t', '\n', '\r']))
        {
            self.fail(format!("{path} is not a code: {text:?}"));
        }
    }

    fn coding(&mut self, path: &str, value: &Value) {
        let Some(coding) = value.as_object() else {
            return self.fail(format!("{path} must be an object"));
        };
        for key in coding.keys() {
            if !["system", "version", "code", "display", "userSelected"].contains(&key.as_str()) {
                self.fail(format!("{path}: unknown member {key}"));
            }
        }
        self.uri(&format!("{path}.system"), coding.get("system"));
        self.code(&format!("{path}.code"), coding.get("code"));
        self.string(&format!("{path}.display"), coding.get("display"));
    }

    fn codeable_concept(&mut self, path: &str, value: &Value) {
        let Some(concept) = value.as_object() else {
            return self.fail(format!("{path} must be an object"));
        };
        for key in concept.keys() {
            if key != "coding" && key != "text" {
                self.fail(format!("{path}: unknown member {key}"));
            }
        }
        self.array_of(concept, "coding", |check, inner, coding| {
            check.coding(&format!("{path}.{inner}"), coding)
        });
        self.string(&format!("{path}.text"), concept.get("text"));
    }

    fn identifier(&mut self, path: &str, value: &Value) {
        let Some(identifier) = value.as_object() else {
            return self.fail(format!("{path} must be an object"));
        };
        self.uri(&format!("{path}.system"), identifier.get("system"));
        self.string(&format!("{path}.value"), identifier.get("value"));
    }

    fn reference(&mut self, path: &str, value: &Value) {
        let ok = value
            .get("reference")
            .and_then(Value::as_str)
            .and_then(|reference| reference.split_once('/'))
            .is_some_and(|(kind, id)| {
                kind.chars().all(|c| c.is_ascii_alphabetic())
                    && !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            });
        if !ok {
            self.fail(format!("{path} is not a relative reference Type/id: {value}"));
        }
    }

    fn date_time(&mut self, path: &str, value: &Value) {
        if value.as_str().and_then(parse_date_time).is_none() {
            self.fail(format!("{path} is not a FHIR dateTime with a time zone: {value}"));
        }
    }

    fn instant(&mut self, path: &str, value: &Value) {
        self.date_time(path, value);
    }

    fn period(&mut self, path: &str, value: &Value) {
        let start = value.get("start").and_then(Value::as_str).and_then(parse_date_time);
        let end = value.get("end").and_then(Value::as_str).and_then(parse_date_time);
        match (start, end) {
            (Some(start), Some(end)) if start <= end => {}
            _ => self.fail(format!("{path} needs start <= end as dateTimes: {value}")),
        }
    }

    fn decimal(&mut self, path: &str, value: Option<&Value>) {
        if !value.is_some_and(Value::is_number) {
            self.fail(format!("{path} must be a JSON number, found {value:?}"));
        }
    }

    fn value_x(&mut self, path: &str, holder: &Map<String, Value>) {
        let values: Vec<(&String, &Value)> = holder.iter().filter(|(key, _)| key.starts_with("value")).collect();
        if values.len() > 1 {
            self.fail(format!("{path} has more than one value[x]"));
        }
        for (key, value) in values {
            let here = format!("{path}.{key}");
            match key.as_str() {
                "valueQuantity" => {
                    self.decimal(&format!("{here}.value"), value.get("value"));
                    self.string(&format!("{here}.unit"), value.get("unit"));
                    self.uri(&format!("{here}.system"), value.get("system"));
                    self.code(&format!("{here}.code"), value.get("code"));
                }
                "valueString" => self.string(&here, Some(value)),
                "valueCodeableConcept" => self.codeable_concept(&here, value),
                "valueSampledData" => self.sampled_data(&here, value),
                other => self.fail(format!("{path}: unexpected {other}")),
            }
        }
    }

    fn sampled_data(&mut self, path: &str, value: &Value) {
        match value.get("origin") {
            Some(origin) => self.decimal(&format!("{path}.origin.value"), origin.get("value")),
            None => self.fail(format!("{path}.origin is required")),
        }
        match value.get("period").and_then(Value::as_f64) {
            Some(period) if period > 0.0 => {}
            _ => self.fail(format!("{path}.period must be a positive decimal")),
        }
        match value.get("dimensions").and_then(Value::as_u64) {
            Some(dimensions) if dimensions >= 1 => {}
            _ => self.fail(format!("{path}.dimensions must be a positiveInt")),
        }
        if let Some(data) = value.get("data") {
            let ok = data.as_str().is_some_and(|data| {
                data.split(' ')
                    .all(|token| matches!(token, "E" | "U" | "L") || is_decimal(token))
            });
            if !ok {
                self.fail(format!(
                    "{path}.data must be decimals or E/U/L separated by single spaces"
                ));
            }
        }
    }
}

/// A FHIR decimal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_decimal(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    let (mantissa, exponent) = match digits.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (digits, None),
    };
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    all_digits(integer)
        && (integer == "0" || !integer.starts_with('0'))
        && fraction.is_none_or(all_digits)
        && exponent.is_none_or(|exponent| all_digits(exponent.trim_start_matches(['+', '-'])))
}

/// A FHIR dateTime with a time (these tests only produce full instants) and a zone.
pub fn parse_date_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&chrono::Utc))
}

#[test]
fn the_validator_rejects_what_r4_rejects() {
    let valid = serde_json::json!({
        "resourceType": "Observation", "id": "a.b-1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "hr"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2019-01-01T00:00:00.0000000Z", "end": "2019-01-01T00:59:59.9999999Z"},
        "issued": "2019-01-01T00:00:00+00:00",
        "valueSampledData": {"origin": {"value": 0}, "period": 1000, "dimensions": 1, "data": "1 E 2.5 -3"}
    });
    assert_eq!(observation_problems(&valid), Vec::<String>::new());
    let broken = [
        ("status", serde_json::json!("done")),
        ("code", serde_json::json!({"coding": []})),
        ("id", serde_json::json!("has space")),
        ("subject", serde_json::json!({"reference": "patient one"})),
        ("issued", serde_json::json!("2019-01-01T00:00:00")),
        (
            "effectivePeriod",
            serde_json::json!({"start": "2019-01-02T00:00:00Z", "end": "2019-01-01T00:00:00Z"}),
        ),
        (
            "valueSampledData",
            serde_json::json!({"origin": {"value": 0}, "period": 1000, "dimensions": 1, "data": "1  2"}),
        ),
        (
            "valueSampledData",
            serde_json::json!({"origin": {"value": 0}, "period": 0, "dimensions": 1, "data": "1"}),
        ),
        ("valueQuantity", serde_json::json!({"value": "72"})),
        ("valueString", serde_json::json!(" padded ")),
        ("unknownMember", serde_json::json!(1)),
    ];
    for (member, value) in broken {
        let mut observation = valid.clone();
        if member.starts_with("value") {
            observation.as_object_mut().unwrap().remove("valueSampledData");
        }
        observation[member] = value;
        assert!(
            !observation_problems(&observation).is_empty(),
            "{member} should be rejected"
        );
    }
    let mut no_status = valid.clone();
    no_status.as_object_mut().unwrap().remove("status");
    assert!(!observation_problems(&no_status).is_empty());
}
